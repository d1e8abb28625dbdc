//! The repository as the engine uses it: restore points of VMs, their history, and a
//! disk sink that turns "changed ranges over a base" into the whole chunks the
//! repository writer takes (reading the unchanged rest of a chunk from the base restore
//! point, locally, instead of from the host).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;
use xenvault_repo::writer::BackupSession;
use xenvault_repo::{DiskReader, DiskRecord, Manifest, Repository, SourceInfo};

use crate::error::Error;
use crate::strategy::Level;
use xenvault_pool::records::Vm;
use xenvault_types::metadata::VmMetadata;

/// `SourceInfo::kind` of a VM restore point.
pub const SOURCE_KIND: &str = "xen-vm";
/// Tag prefix giving a restore point's level.
const LEVEL_TAG: &str = "level:";

pub struct Store {
    repo: Repository,
}

/// An earlier restore point of a VM.
#[derive(Debug, Clone)]
pub struct PastPoint {
    pub id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub level: Level,
    pub disks: Vec<PastDisk>,
}

#[derive(Debug, Clone)]
pub struct PastDisk {
    pub vdi_uuid: String,
    pub snapshot_vdi_uuid: String,
    pub record: DiskRecord,
}

impl Store {
    pub async fn open(
        location: &str,
        backend: &xenvault_repo::backend::BackendOptions,
        passphrase: Option<&str>,
    ) -> Result<Self, Error> {
        let secret = passphrase.map(xenvault_repo::keys::Secret::passphrase);
        Ok(Self { repo: Repository::open(location, backend, secret.as_ref()).await? })
    }

    pub fn from_repository(repo: Repository) -> Self {
        Self { repo }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn location(&self) -> &str {
        self.repo.location()
    }

    pub fn chunk_size(&self) -> u64 {
        u64::from(self.repo.config().chunk_size)
    }

    /// Restore points of the VM, newest first.
    pub async fn history(&self, vm_uuid: &str) -> Result<Vec<PastPoint>, Error> {
        let mut points: Vec<PastPoint> = self
            .repo
            .restore_points()
            .await?
            .into_iter()
            .filter(|m| m.source.kind == SOURCE_KIND && m.source.id == vm_uuid)
            .filter_map(|m| past_point(&m))
            .collect();
        points.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        Ok(points)
    }

    /// SHA-256 (hex) of a disk of a restore point, rebuilt from the repository.
    pub async fn disk_sha256(&self, id: &str, disk: &str) -> Result<String, Error> {
        use sha2::Digest;
        let manifest = self.repo.restore_point(id).await?;
        let record = manifest.disk(Some(disk))?;
        let reader = DiskReader::new(&self.repo, record).await?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < record.size {
            let len = (record.size - offset).min(buf.len() as u64) as usize;
            let piece = buf.get_mut(..len).unwrap_or_default();
            reader.read_at(offset, piece).await?;
            hasher.update(&*piece);
            offset += len as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// A new restore point of `vm`, built on `base`, its chunks compressed at `zstd_level`
    /// (the repository's own when none).
    pub async fn start(&self, vm: &Vm, base: Option<&str>, zstd_level: Option<i32>) -> Result<Point, Error> {
        let source = SourceInfo { id: vm.uuid.clone(), kind: SOURCE_KIND.into(), name: vm.name_label.clone() };
        let mut session = self.repo.start_backup(source).await?;
        if let Some(base) = base {
            session.set_base(base);
        }
        if let Some(level) = zstd_level {
            session.set_zstd_level(level)?;
        }
        Ok(Point { session, repo: self.repo.clone() })
    }
}

fn past_point(manifest: &Manifest) -> Option<PastPoint> {
    let level = manifest.tags.iter().find_map(|t| t.strip_prefix(LEVEL_TAG)).and_then(|l| l.parse().ok())?;
    // Without readable metadata the snapshots are unknown: the disks are read whole again.
    let metadata = VmMetadata::from_value(&manifest.metadata).ok().flatten();
    let entries = metadata.map(|m| m.disks).unwrap_or_default();
    let disks = manifest
        .disks
        .iter()
        .map(|record| PastDisk {
            vdi_uuid: record.uuid.clone(),
            snapshot_vdi_uuid: entries
                .iter()
                .find(|e| e.vdi_uuid == record.uuid)
                .map(|e| e.snapshot_vdi_uuid.clone())
                .unwrap_or_default(),
            record: record.clone(),
        })
        .collect();
    Some(PastPoint { id: manifest.id.clone(), time: manifest.time, level, disks })
}

/// A restore point being written.
pub struct Point {
    session: BackupSession,
    repo: Repository,
}

impl Point {
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.repo.config().chunk_size)
    }

    /// A sink for the disk at VBD `userdevice`, which becomes its position and name.
    pub async fn disk_sink(
        &self,
        userdevice: &str,
        vdi_uuid: &str,
        size: u64,
        base: Option<&DiskRecord>,
    ) -> Result<DiskSink, Error> {
        let position = userdevice_position(userdevice)?;
        let writer = self.session.disk_writer(position, userdevice, vdi_uuid, size, base).await?;
        let base_reader = match base {
            Some(record) => Some(DiskReader::new(&self.repo, record).await?),
            None => None,
        };
        Ok(DiskSink::new(writer, size, base_reader))
    }

    /// Publishes the restore point; returns its id.
    pub async fn commit(self, metadata: &VmMetadata) -> Result<String, Error> {
        let tags = vec![SOURCE_KIND.to_owned(), format!("{LEVEL_TAG}{}", metadata.backup.level)];
        Ok(self.session.commit(metadata.to_value(), tags).await?.id)
    }

    pub async fn abort(self) {
        if let Err(e) = self.session.abort().await {
            tracing::warn!("could not release the repository lock: {e}");
        }
    }
}

/// The disk number a VBD userdevice stands for: xapi keeps numbers ("0", "5"), but also
/// accepts device names, where `xvdb`, `sdb` and `hdb` are all disk 1.
fn userdevice_position(userdevice: &str) -> Result<u32, Error> {
    if let Ok(n) = userdevice.parse() {
        return Ok(n);
    }
    let letters = ["xvd", "sd", "hd"].iter().find_map(|p| userdevice.strip_prefix(p));
    match letters.map(str::as_bytes) {
        Some([letter @ b'a'..=b'p']) => Ok(u32::from(letter - b'a')),
        _ => Err(Error::Protocol(format!("VBD userdevice {userdevice:?} is not a disk position"))),
    }
}

/// Takes disk data in ascending offsets, in pieces of any size (HTTP bodies, NBD
/// replies, VHD extents, XVA chunks), and hands the repository whole chunks: the parts
/// of a chunk not written come from the base image, or are zeros without a base.
///
/// Completing a chunk from the base (reading, decrypting and decompressing the base
/// chunk) runs on its own task, several at once, so scattered changes (one CBT block in
/// a bigger chunk) do not wait for one base chunk after another; chunks still reach the
/// writer in disk order.
pub struct DiskSink {
    chunk: u64,
    size: u64,
    state: Mutex<SinkState>,
}

struct SinkState {
    writer: xenvault_repo::DiskWriter,
    base: Option<Arc<DiskReader>>,
    /// The chunk being assembled: its start and its bytes (base bytes filled at flush).
    pending: Option<PendingChunk>,
    /// Chunks waiting for the writer, in disk order: ready ones, and ones being completed
    /// from the base.
    queued: FuturesOrdered<BoxFuture<'static, Result<(u64, Bytes), Error>>>,
    /// Most chunks queued at once (each being completed from the base holds two chunks).
    max_merges: usize,
}

struct PendingChunk {
    start: u64,
    data: Vec<u8>,
    /// Ranges (relative to `start`) already written, ascending.
    filled: Vec<(usize, usize)>,
}

impl PendingChunk {
    /// The ranges (relative to `start`) no write covered.
    fn gaps(&self) -> Vec<(usize, usize)> {
        let mut gaps = Vec::new();
        let mut cursor = 0;
        for &(from, to) in &self.filled {
            if from > cursor {
                gaps.push((cursor, from));
            }
            cursor = cursor.max(to);
        }
        if cursor < self.data.len() {
            gaps.push((cursor, self.data.len()));
        }
        gaps
    }

    /// Fills the gaps from the base's chunk at the same place (zeros where the base has a hole).
    async fn complete(mut self, base: &DiskReader, gaps: Vec<(usize, usize)>) -> Result<(u64, Bytes), Error> {
        let slot = self.start / base.chunk_size();
        if let Some(original) = base.read_slot(slot).await? {
            for (from, to) in gaps {
                if let (Some(dst), Some(src)) = (self.data.get_mut(from..to), original.get(from..to)) {
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok((self.start, Bytes::from(self.data)))
    }
}

/// Data the host sends past the end of the disk (a malformed NBD reply, XVA or VHD) is an
/// error, not a write outside the image.
fn within_disk(offset: u64, len: usize, size: u64) -> Result<(), Error> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Protocol(format!("{len} bytes at offset {offset} go past the end of the {size}-byte disk"))),
    }
}

/// Chunks completed from the base at once: enough to keep every core busy decompressing
/// while the writer compresses.
fn merges_in_flight() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).clamp(2, 16) * 2
}

impl DiskSink {
    fn new(writer: xenvault_repo::DiskWriter, size: u64, base: Option<DiskReader>) -> Self {
        let chunk = writer.chunk_size();
        let state = SinkState {
            writer,
            base: base.map(Arc::new),
            pending: None,
            queued: FuturesOrdered::new(),
            max_merges: merges_in_flight(),
        };
        DiskSink { chunk, size, state: Mutex::new(state) }
    }

    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), Error> {
        within_disk(offset, data.len(), self.size)?;
        let mut state = self.state.lock().await;
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let start = at / self.chunk * self.chunk;
            let len = (self.size - start).min(self.chunk);
            let within = (at - start) as usize;
            let take = rest.len().min(len as usize - within);
            let piece = rest.split_to(take);
            if state.pending.as_ref().is_some_and(|p| p.start != start) {
                state.flush().await?;
            }
            if state.pending.is_none() && within == 0 && take as u64 == len {
                state.emit(start, piece).await?;
            } else {
                let pending = state.pending.get_or_insert_with(|| PendingChunk {
                    start,
                    data: vec![0; len as usize],
                    filled: Vec::new(),
                });
                if let Some(slot) = pending.data.get_mut(within..within + take) {
                    slot.copy_from_slice(&piece);
                }
                pending.filled.push((within, within + take));
            }
            at += take as u64;
        }
        Ok(())
    }

    pub async fn finish(self) -> Result<DiskRecord, Error> {
        let mut state = self.state.into_inner();
        state.flush().await?;
        while !state.queued.is_empty() {
            state.write_next().await?;
        }
        Ok(state.writer.finish().await?)
    }
}

impl SinkState {
    /// Completes the pending chunk from the base (on its own task) and queues it.
    async fn flush(&mut self) -> Result<(), Error> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let gaps = pending.gaps();
        // Without a base, the unwritten parts stay zeros.
        match self.base.clone().filter(|_| !gaps.is_empty()) {
            Some(base) => {
                // The base chunk is read on its own task; dropping the sink drops the handle and stops it.
                let (merge, handle) = async move { pending.complete(&base, gaps).await }.remote_handle();
                tokio::spawn(merge);
                self.enqueue(handle.boxed()).await
            }
            None => self.emit(pending.start, Bytes::from(pending.data)).await,
        }
    }

    /// Hands a whole chunk on, after the chunks queued before it.
    async fn emit(&mut self, start: u64, data: Bytes) -> Result<(), Error> {
        self.write_ready().await?;
        if self.queued.is_empty() {
            Ok(self.writer.write(start, &data).await?)
        } else {
            self.enqueue(futures::future::ready(Ok((start, data))).boxed()).await
        }
    }

    /// Queues a chunk, writes what is complete, and waits while too many are queued.
    async fn enqueue(&mut self, chunk: BoxFuture<'static, Result<(u64, Bytes), Error>>) -> Result<(), Error> {
        self.queued.push_back(chunk);
        self.write_ready().await?;
        while self.queued.len() > self.max_merges {
            self.write_next().await?;
        }
        Ok(())
    }

    /// Writes the queued chunks that are complete, up to the first still being merged.
    async fn write_ready(&mut self) -> Result<(), Error> {
        while let Some(Some(done)) = self.queued.next().now_or_never() {
            let (start, data) = done?;
            self.writer.write(start, &data).await?;
        }
        Ok(())
    }

    /// Waits for the oldest queued chunk and writes it.
    async fn write_next(&mut self) -> Result<(), Error> {
        if let Some(done) = self.queued.next().await {
            let (start, data) = done?;
            self.writer.write(start, &data).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userdevices_become_positions() {
        assert_eq!(userdevice_position("0").unwrap(), 0);
        assert_eq!(userdevice_position("5").unwrap(), 5);
        assert_eq!(userdevice_position("xvdb").unwrap(), 1);
        assert_eq!(userdevice_position("hda").unwrap(), 0);
        assert!(userdevice_position("xvdz").is_err());
        assert!(userdevice_position("autodetect").is_err());
    }

    /// Scattered writes over a base: many chunks completed from the base at once (holes
    /// included), whole chunks between them, two index pages, a partial last chunk; the
    /// result must read back exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scattered_writes_over_a_base_read_back_exactly() {
        const CHUNK: u64 = 64 << 10;
        let size = 70 * CHUNK + 1000;
        let dir = tempfile::tempdir().unwrap();
        let options = xenvault_repo::InitOptions {
            secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
            kdf: xenvault_repo::keys::KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 },
            chunk_size: CHUNK as u32,
            page_slots: 64,
            ..Default::default()
        };
        let location = dir.path().join("repo");
        let repo = Repository::init(location.to_str().unwrap(), &Default::default(), options).await.unwrap();
        let source = SourceInfo { id: "vm".into(), kind: SOURCE_KIND.into(), name: "vm".into() };
        // The base: bytes that say where they are, except chunks 3 and 9 (holes).
        let mut image: Vec<u8> = (0..size).map(|i| (i / 7 % 251) as u8).collect();
        for hole in [3, 9] {
            image[(hole * CHUNK) as usize..((hole + 1) * CHUNK) as usize].fill(0);
        }
        let session = repo.start_backup(source.clone()).await.unwrap();
        let sink = DiskSink::new(session.disk_writer(0, "0", "vdi", size, None).await.unwrap(), size, None);
        sink.write(0, Bytes::from(image.clone())).await.unwrap();
        sink.finish().await.unwrap();
        let base = session.commit(serde_json::Value::Null, Vec::new()).await.unwrap();

        let mut session = repo.start_backup(source).await.unwrap();
        session.set_base(&base.id);
        let record = base.disk(None).unwrap();
        let writer = session.disk_writer(0, "0", "vdi", size, Some(record)).await.unwrap();
        let sink = DiskSink::new(writer, size, Some(DiskReader::new(&repo, record).await.unwrap()));
        let mut writes: Vec<(u64, u64)> = (0..68).map(|n| (n * CHUNK + (n * 4096) % CHUNK, 4096)).collect();
        writes.retain(|&(at, _)| !(10 * CHUNK..13 * CHUNK).contains(&at));
        writes.extend([(10 * CHUNK, 2 * CHUNK), (12 * CHUNK + 100, CHUNK), (70 * CHUNK + 10, 20)]);
        writes.sort();
        for (n, &(at, len)) in writes.iter().enumerate() {
            let data = vec![n as u8 + 1; len as usize];
            image[at as usize..(at + len) as usize].copy_from_slice(&data);
            sink.write(at, Bytes::from(data)).await.unwrap();
        }
        let written = sink.finish().await.unwrap();
        assert_eq!(written.stats.chunks_inherited, 2, "only chunks 68 and 69 are left as they were");

        session.commit(serde_json::Value::Null, Vec::new()).await.unwrap();
        let reader = DiskReader::new(&repo, &written).await.unwrap();
        let mut back = vec![0u8; size as usize];
        reader.read_at(0, &mut back).await.unwrap();
        let first_difference = back.iter().zip(&image).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "restored bytes differ");
    }

    #[test]
    fn writes_must_stay_inside_the_disk() {
        assert!(within_disk(0, 4096, 4096).is_ok());
        assert!(within_disk(4096, 0, 4096).is_ok());
        let past = within_disk(4096, 1, 4096).expect_err("one byte past the end");
        assert!(past.to_string().contains("1 bytes at offset 4096 go past the end of the 4096-byte disk"), "{past}");
        assert!(within_disk(u64::MAX, 2, u64::MAX).is_err());
    }
}
