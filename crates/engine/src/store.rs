//! The repository as the engine uses it: restore points of VMs, their history, and a
//! disk sink that turns "changed ranges over a base" into the whole chunks the
//! repository writer takes (reading the unchanged rest of a chunk from the base restore
//! point, locally, instead of from the host).

use bytes::Bytes;
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
        Ok(DiskSink {
            chunk: writer.chunk_size(),
            size,
            state: Mutex::new(SinkState { writer, base: base_reader, pending: None }),
        })
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
pub struct DiskSink {
    chunk: u64,
    size: u64,
    state: Mutex<SinkState>,
}

struct SinkState {
    writer: xenvault_repo::DiskWriter,
    base: Option<DiskReader>,
    /// The chunk being assembled: its start and its bytes (base bytes filled at flush).
    pending: Option<PendingChunk>,
}

struct PendingChunk {
    start: u64,
    data: Vec<u8>,
    /// Ranges (relative to `start`) already written, ascending.
    filled: Vec<(usize, usize)>,
}

/// Data the host sends past the end of the disk (a malformed NBD reply, XVA or VHD) is an
/// error, not a write outside the image.
fn within_disk(offset: u64, len: usize, size: u64) -> Result<(), Error> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Protocol(format!("{len} bytes at offset {offset} go past the end of the {size}-byte disk"))),
    }
}

impl DiskSink {
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), Error> {
        within_disk(offset, data.len(), self.size)?;
        let mut state = self.state.lock().await;
        let mut at = offset;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let start = at / self.chunk * self.chunk;
            let len = (self.size - start).min(self.chunk);
            let within = (at - start) as usize;
            let take = rest.len().min(len as usize - within);
            let (piece, tail) = rest.split_at(take);
            if state.pending.as_ref().is_some_and(|p| p.start != start) {
                state.flush().await?;
            }
            if state.pending.is_none() && within == 0 && take as u64 == len {
                state.writer.write(start, piece).await?;
            } else {
                let pending = state.pending.get_or_insert_with(|| PendingChunk {
                    start,
                    data: vec![0; len as usize],
                    filled: Vec::new(),
                });
                if let Some(slot) = pending.data.get_mut(within..within + take) {
                    slot.copy_from_slice(piece);
                }
                pending.filled.push((within, within + take));
            }
            at += take as u64;
            rest = tail;
        }
        Ok(())
    }

    pub async fn finish(self) -> Result<DiskRecord, Error> {
        let mut state = self.state.into_inner();
        state.flush().await?;
        Ok(state.writer.finish().await?)
    }
}

impl SinkState {
    /// Completes the pending chunk from the base and writes it.
    async fn flush(&mut self) -> Result<(), Error> {
        let Some(mut pending) = self.pending.take() else { return Ok(()) };
        // Without a base, the unwritten parts stay zeros.
        if let Some(base) = &self.base {
            let mut gaps = Vec::new();
            let mut cursor = 0;
            for &(from, to) in &pending.filled {
                if from > cursor {
                    gaps.push((cursor, from));
                }
                cursor = cursor.max(to);
            }
            if cursor < pending.data.len() {
                gaps.push((cursor, pending.data.len()));
            }
            if !gaps.is_empty() {
                // One read of the base chunk, however many gaps: it is decrypted once.
                let mut original = vec![0u8; pending.data.len()];
                base.read_at(pending.start, &mut original).await?;
                for (from, to) in gaps {
                    if let (Some(dst), Some(src)) = (pending.data.get_mut(from..to), original.get(from..to)) {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
        self.writer.write(pending.start, &pending.data).await?;
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

    #[test]
    fn writes_must_stay_inside_the_disk() {
        assert!(within_disk(0, 4096, 4096).is_ok());
        assert!(within_disk(4096, 0, 4096).is_ok());
        let past = within_disk(4096, 1, 4096).expect_err("one byte past the end");
        assert!(past.to_string().contains("1 bytes at offset 4096 go past the end of the 4096-byte disk"), "{past}");
        assert!(within_disk(u64::MAX, 2, u64::MAX).is_err());
    }
}
