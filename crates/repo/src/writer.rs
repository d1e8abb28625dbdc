//! Writing restore points.
//!
//! A [`BackupSession`] holds the repository lock and the pack builder shared by its disks;
//! each disk goes through a [`DiskWriter`]: chunks are hashed, checked against the index,
//! compressed and encrypted on blocking worker threads (a bounded number in flight), new
//! ones are appended to packs that upload in the background. The manifest is written last,
//! after every pack and index it references is stored.

use crate::crypto::{ChunkId, is_zero};
use crate::error::{Error, Result};
use crate::lock::{LockGuard, LockKind};
use crate::manifest::{DiskRecord, DiskStats, MANIFEST_VERSION, Manifest, SourceInfo};
use crate::pack::{PackBuilder, chunk_aad};
use crate::repository::Repository;
use crate::source::BlockSource;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use xenvault_types::progress::Task;

/// Pack uploads in flight per session (each holds one pack in memory).
const UPLOADS_IN_FLIGHT: usize = 3;
/// Bytes of chunks being processed at once, whatever the chunk size.
const BYTES_IN_FLIGHT: usize = 48 << 20;

pub use crate::manifest::DiskStats as WriteStats;

/// Collects new chunks into packs and uploads them.
struct Packer {
    repo: Repository,
    /// zstd level of the chunks and index pages this session writes.
    zstd_level: i32,
    state: Mutex<PackerState>,
    permits: Arc<Semaphore>,
    uploads: tokio::sync::Mutex<JoinSet<Result<()>>>,
    /// Read buffers of finished chunks, and of chunks that arrive by `write`.
    buffers: BufferPool,
}

struct PackerState {
    current: Option<PackBuilder>,
    /// The next pack's buffer, made on the async side (see `keep_spare`).
    spare: Option<PackBuilder>,
    /// Ids in the current pack or in uploads not yet indexed.
    pending: HashSet<ChunkId>,
}

impl Packer {
    fn new(repo: Repository) -> Self {
        Packer {
            zstd_level: repo.config().zstd_level,
            repo,
            state: Mutex::new(PackerState { current: None, spare: None, pending: HashSet::new() }),
            permits: Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT)),
            uploads: tokio::sync::Mutex::new(JoinSet::new()),
            buffers: BufferPool::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PackerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `id` needs no storing (already in the repository or on its way).
    fn known(&self, id: &ChunkId) -> bool {
        self.state().pending.contains(id) || self.repo.has_usable_chunk(id)
    }

    /// Claims `id` for the caller to store; false when it needs no storing (stored, or
    /// claimed by another worker). Claiming before sealing means a chunk met twice at
    /// once is compressed once.
    fn claim(&self, id: ChunkId) -> bool {
        let mut st = self.state();
        if st.pending.contains(&id) || self.repo.has_usable_chunk(&id) {
            return false;
        }
        st.pending.insert(id);
        true
    }

    /// Appends a claimed chunk's sealed blob to the current pack; returns the pack when
    /// that filled it (the caller uploads it). A copy of compressed bytes, under the lock.
    fn append(&self, id: ChunkId, sealed: &[u8], raw_len: u32) -> Result<Option<PackBuilder>> {
        let pack_size = self.repo.config().pack_size as usize;
        let mut st = self.state();
        if st.current.is_none() {
            st.current = Some(match st.spare.take() {
                Some(spare) => spare,
                None => PackBuilder::new(pack_size + pack_size / 8)?,
            });
        }
        let Some(current) = st.current.as_mut() else { return Err(Error::Task("no pack to append to".into())) };
        current.add(id, sealed, raw_len);
        Ok(if current.len() >= pack_size { st.current.take() } else { None })
    }

    /// Seals and stores the whole object `content` with id `id` unless it is known.
    async fn add(self: &Arc<Self>, id: ChunkId, content: &[u8]) -> Result<()> {
        if !self.claim(id) {
            return Ok(());
        }
        let sealed = self.repo.crypto().seal_at(&chunk_aad(&id), content, Some(self.zstd_level))?;
        if let Some(full) = self.append(id, &sealed, content.len() as u32)? {
            self.upload(full).await?;
        }
        Ok(())
    }

    /// Makes the next pack's buffer here, on the async side: made by the worker that fills
    /// a pack, 18 MiB buffers land in each worker thread's own malloc arena, and a backup's
    /// RSS grew from ~115 to ~430 MiB.
    fn keep_spare(&self) -> Result<()> {
        let pack_size = self.repo.config().pack_size as usize;
        let mut st = self.state();
        if st.spare.is_none() {
            st.spare = Some(PackBuilder::new(pack_size + pack_size / 8)?);
        }
        Ok(())
    }

    async fn upload(self: &Arc<Self>, pack: PackBuilder) -> Result<()> {
        self.keep_spare()?;
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| Error::Task(e.to_string()))?;
        let mut uploads = self.uploads.lock().await;
        // Surface a failed upload early instead of at commit.
        while let Some(done) = uploads.try_join_next() {
            done??;
        }
        let packer = self.clone();
        uploads.spawn(async move {
            let _permit = permit;
            let repo = &packer.repo;
            let crypto = repo.crypto().clone();
            let (name, data, index, entries) = tokio::task::spawn_blocking(move || pack.finish(&crypto)).await??;
            // Data before index: an index never points at a pack that is not there.
            repo.store().put(&name.data_object(), data).await?;
            repo.publish(&name.index_object(), index).await?;
            let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
            repo.write_index().chunks.add_pack(&name, entries);
            let mut st = packer.state();
            for id in &ids {
                st.pending.remove(id);
            }
            Ok(())
        });
        Ok(())
    }

    /// Uploads the last partial pack and waits for every upload.
    async fn flush(self: &Arc<Self>) -> Result<()> {
        let last = self.state().current.take();
        if let Some(pack) = last.filter(|p| !p.is_empty()) {
            self.upload(pack).await?;
        }
        let mut uploads = self.uploads.lock().await;
        while let Some(done) = uploads.join_next().await {
            done??;
        }
        self.state().pending.clear();
        Ok(())
    }
}

/// The zstd levels a backup session may write at: the negative ones are zstd's fast
/// levels (`zstd --fast=N`), for backups bound by the CPU; 0 is zstd's default, 3.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// One restore point being written. Create disk writers, finish them, then `commit`.
pub struct BackupSession {
    repo: Repository,
    lock: LockGuard,
    packer: Arc<Packer>,
    source: SourceInfo,
    disks: Arc<Mutex<Vec<Option<DiskRecord>>>>,
    base: Option<String>,
}

impl Repository {
    /// Starts a restore point of `source`. The lock is written before the index is read,
    /// so gc keeps everything this backup may deduplicate against (see `gc`).
    pub async fn start_backup(&self, source: SourceInfo) -> Result<BackupSession> {
        let lock = LockGuard::acquire(self, LockKind::Backup).await?;
        if let Err(e) = self.refresh_index().await {
            let _ = lock.release().await;
            return Err(e);
        }
        Ok(BackupSession {
            repo: self.clone(),
            lock,
            packer: Arc::new(Packer::new(self.clone())),
            source,
            disks: Arc::new(Mutex::new(Vec::new())),
            base: None,
        })
    }
}

impl BackupSession {
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Writes this restore point's chunks at zstd `level` (one of [`ZSTD_LEVELS`]) instead
    /// of the repository's own; only before the first disk writer.
    pub fn set_zstd_level(&mut self, level: i32) -> Result<()> {
        if !ZSTD_LEVELS.contains(&level) {
            return Err(Error::Invalid(format!(
                "zstd level {level} is out of range: {} to {}",
                ZSTD_LEVELS.start(),
                ZSTD_LEVELS.end()
            )));
        }
        let packer = Arc::get_mut(&mut self.packer)
            .ok_or_else(|| Error::Invalid("the zstd level is set before the first disk writer".into()))?;
        packer.zstd_level = level;
        Ok(())
    }

    /// Records which restore point this one was written against (informational only).
    pub fn set_base(&mut self, base_id: &str) {
        self.base = Some(base_id.to_string());
    }

    /// A writer for the disk at `position` (see [`DiskRecord::position`]), of `size` bytes.
    /// With `base`, slots never written inherit the base disk's chunks (changed-block
    /// incrementals); without, they are zeros.
    pub async fn disk_writer(
        &self,
        position: u32,
        name: &str,
        uuid: &str,
        size: u64,
        base: Option<&DiskRecord>,
    ) -> Result<DiskWriter> {
        let cfg = self.repo.config();
        if let Some(b) = base
            && (b.size != size || b.chunk_size != cfg.chunk_size || b.page_slots != cfg.page_slots)
        {
            return Err(Error::Invalid(format!(
                "base disk {} has size {} / chunk size {}: cannot inherit into size {size} / chunk size {}",
                b.name, b.size, b.chunk_size, cfg.chunk_size
            )));
        }
        self.packer.keep_spare()?;
        let slot = {
            let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
            disks.push(None);
            disks.len() - 1
        };
        let chunk_size = cfg.chunk_size as u64;
        let page_slots = cfg.page_slots as u64;
        let slots = size.div_ceil(chunk_size);
        let page_count = slots.div_ceil(page_slots) as usize;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let max_jobs = (BYTES_IN_FLIGHT / cfg.chunk_size as usize).clamp(2, cores * 4);
        Ok(DiskWriter {
            repo: self.repo.clone(),
            packer: self.packer.clone(),
            disks: self.disks.clone(),
            slot,
            position,
            name: name.to_string(),
            uuid: uuid.to_string(),
            size,
            chunk_size,
            page_slots,
            base_pages: base.map(|b| b.pages.clone()),
            pages: vec![ChunkId::ZERO; page_count],
            open_pages: BTreeMap::new(),
            next_page: 0,
            cursor: 0,
            partial: Vec::new(),
            jobs: FuturesUnordered::new(),
            max_jobs,
            stats: DiskStats::default(),
            started: Utc::now(),
            progress: None,
        })
    }

    /// Publishes the restore point: waits for every pack, then writes the manifest.
    pub async fn commit(self, metadata: serde_json::Value, tags: Vec<String>) -> Result<Manifest> {
        let id = crate::crypto::random_hex(16)?;
        let time = self.lock.record.started;
        self.publish(id, time, metadata, tags).await
    }

    /// Publishes a restore point copied from another repository under its original identity.
    pub(crate) async fn commit_copy(self, original: &Manifest) -> Result<Manifest> {
        let (id, time) = (original.id.clone(), original.time);
        self.publish(id, time, original.metadata.clone(), original.tags.clone()).await
    }

    async fn publish(
        self,
        id: String,
        time: chrono::DateTime<Utc>,
        metadata: serde_json::Value,
        tags: Vec<String>,
    ) -> Result<Manifest> {
        self.packer.flush().await?;
        let disks = std::mem::take(&mut *self.disks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut disks = disks
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid("a disk writer was not finished".into()))?;
        // Stored by position whatever order the disks finished in, so a position names one disk.
        disks.sort_by_key(|d| d.position);
        if let Some(twice) = disks.windows(2).find(|w| w[0].position == w[1].position) {
            return Err(Error::Invalid(format!(
                "two disks at position {}: {} and {}",
                twice[0].position, twice[0].name, twice[1].name
            )));
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id,
            time,
            source: self.source,
            metadata,
            tags,
            disks,
            base: self.base,
            finished: Utc::now(),
        };
        // A lock that went stale may no longer have kept gc from deleting packs this
        // restore point references: then it must not appear.
        self.lock.ensure_held().await?;
        self.repo.write_manifest(&manifest).await?;
        self.lock.release().await?;
        Ok(manifest)
    }

    /// Gives up: uploaded packs stay until gc collects them; the lock goes.
    pub async fn abort(self) -> Result<()> {
        self.lock.release().await
    }

    /// Stops early on purpose (a cancelled copy): the chunks already packed are uploaded
    /// and indexed first, so a rerun before the next gc finds them stored and sends none again.
    pub(crate) async fn abort_keeping_chunks(self) -> Result<()> {
        let flushed = self.packer.flush().await;
        self.lock.release().await?;
        flushed
    }
}

enum JobInput {
    Data(Vec<u8>),
    /// A chunk already stored in this repository (copying between repositories).
    Known(ChunkId),
    Source {
        source: Arc<dyn BlockSource>,
        offset: u64,
        len: usize,
    },
}

enum Outcome {
    Zero,
    Known,
    /// Stored as `stored` sealed bytes; `full` is the pack this chunk filled.
    New {
        stored: u64,
        full: Option<PackBuilder>,
    },
}

struct JobResult {
    slot: u64,
    len: u64,
    id: ChunkId,
    outcome: Outcome,
}

struct OpenPage {
    ids: Vec<ChunkId>,
    /// Slots written in this restore point; the others inherit `ids` from the base.
    rewritten: Vec<bool>,
    pending: usize,
    written: usize,
}

/// Writes one disk of a restore point. Data must arrive in increasing offset order, in
/// whole chunks (a chunk may arrive in several pieces, but completely).
pub struct DiskWriter {
    repo: Repository,
    packer: Arc<Packer>,
    disks: Arc<Mutex<Vec<Option<DiskRecord>>>>,
    /// This disk's entry in `disks`.
    slot: usize,
    position: u32,
    name: String,
    uuid: String,
    size: u64,
    chunk_size: u64,
    page_slots: u64,
    base_pages: Option<Vec<ChunkId>>,
    pages: Vec<ChunkId>,
    open_pages: BTreeMap<u64, OpenPage>,
    /// Pages below this one are final.
    next_page: u64,
    /// Every byte below this offset was submitted or will never be written.
    cursor: u64,
    /// Start of a chunk that arrived only partly so far.
    partial: Vec<u8>,
    jobs: FuturesUnordered<JoinHandle<Result<JobResult>>>,
    max_jobs: usize,
    stats: DiskStats,
    started: chrono::DateTime<Utc>,
    progress: Option<Task>,
}

impl DiskWriter {
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `task` counts the disk bytes written (the write order's, so it ends at the size).
    pub fn set_progress(&mut self, task: Task) {
        self.progress = Some(task);
    }

    /// Expands byte ranges to whole chunks and merges them: what a changed-block
    /// incremental must read and `write`.
    pub fn chunk_ranges(&self, ranges: &[std::ops::Range<u64>]) -> Vec<std::ops::Range<u64>> {
        align_ranges(ranges, self.chunk_size, self.size)
    }

    fn chunk_len(&self, slot: u64) -> u64 {
        (self.size - slot * self.chunk_size).min(self.chunk_size)
    }

    /// Writes `data` at `offset` (≥ the end of the previous write).
    pub async fn write(&mut self, offset: u64, mut data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(Error::Invalid(format!("write at {offset}+{} past the disk end {}", data.len(), self.size)));
        }
        let buffered_end = self.cursor + self.partial.len() as u64;
        if offset < buffered_end || (!self.partial.is_empty() && offset != buffered_end) {
            return Err(Error::Invalid(format!(
                "write at {offset}: writes must move forward and complete every chunk they start (at {buffered_end})"
            )));
        }
        if offset > self.cursor {
            if !offset.is_multiple_of(self.chunk_size) {
                return Err(Error::Invalid(format!("write at {offset} does not start a chunk")));
            }
            self.skip_to(offset).await?;
        }
        while !data.is_empty() {
            let slot = self.cursor / self.chunk_size;
            let want = (self.chunk_len(slot) as usize) - self.partial.len();
            let (head, rest) = data.split_at(want.min(data.len()));
            if self.partial.is_empty() {
                self.partial = self.packer.buffers.take(0);
                self.partial.reserve_exact(want);
            }
            self.partial.extend_from_slice(head);
            data = rest;
            if self.partial.len() == self.chunk_len(slot) as usize {
                let chunk = std::mem::take(&mut self.partial);
                self.submit(slot, JobInput::Data(chunk)).await?;
            }
        }
        Ok(())
    }

    /// Marks whole chunks in `offset..offset+len` as zeros (e.g. discarded blocks).
    pub async fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(self.chunk_size)
            || (!len.is_multiple_of(self.chunk_size) && offset + len != self.size)
        {
            return Err(Error::Invalid("write_zeroes must cover whole chunks".into()));
        }
        if offset < self.cursor || !self.partial.is_empty() {
            return Err(Error::Invalid(format!("write_zeroes at {offset}: writes must move forward")));
        }
        let mut at = offset;
        while at < offset + len {
            let slot = at / self.chunk_size;
            self.skip_to(at).await?;
            self.submit(slot, JobInput::Data(Vec::new())).await?;
            at += self.chunk_len(slot);
        }
        Ok(())
    }

    /// Sets the chunk at `offset` to `id`, which the caller checked is stored here.
    pub(crate) async fn write_known(&mut self, offset: u64, id: ChunkId) -> Result<()> {
        if !offset.is_multiple_of(self.chunk_size) || offset < self.cursor || !self.partial.is_empty() {
            return Err(Error::Invalid(format!("write_known at {offset}: not the next chunk")));
        }
        self.skip_to(offset).await?;
        self.submit(offset / self.chunk_size, JobInput::Known(id)).await
    }

    /// Backs up a whole source (or its allocated ranges): the reads happen on the workers.
    pub async fn write_source(&mut self, source: Arc<dyn BlockSource>) -> Result<()> {
        if source.size() != self.size {
            return Err(Error::Invalid(format!("source size {} is not the disk size {}", source.size(), self.size)));
        }
        let ranges = match source.allocated()? {
            Some(r) => align_ranges(&r, self.chunk_size, self.size),
            None => vec![0..self.size],
        };
        for range in ranges {
            let mut at = range.start.max(self.cursor);
            while at < range.end {
                let slot = at / self.chunk_size;
                let len = self.chunk_len(slot);
                self.skip_to(at).await?;
                self.submit(slot, JobInput::Source { source: source.clone(), offset: at, len: len as usize }).await?;
                at += len;
            }
        }
        Ok(())
    }

    async fn skip_to(&mut self, offset: u64) -> Result<()> {
        if offset > self.cursor {
            self.cursor = offset;
            self.finalize_ready().await?;
        }
        Ok(())
    }

    async fn submit(&mut self, slot: u64, input: JobInput) -> Result<()> {
        let page = slot / self.page_slots;
        if !self.open_pages.contains_key(&page) {
            let ids = self.load_base_page(page).await?;
            let rewritten = vec![false; ids.len()];
            self.open_pages.insert(page, OpenPage { ids, rewritten, pending: 0, written: 0 });
        }
        if let Some(p) = self.open_pages.get_mut(&page) {
            p.pending += 1;
            p.written += 1;
            if let Some(slot) = p.rewritten.get_mut((slot % self.page_slots) as usize) {
                *slot = true;
            }
        }
        while self.jobs.len() >= self.max_jobs {
            self.complete_one().await?;
        }
        let len = self.chunk_len(slot);
        let packer = self.packer.clone();
        self.jobs.push(tokio::task::spawn_blocking(move || process_chunk(&packer, slot, len, input)));
        self.cursor = (slot + 1) * self.chunk_size;
        self.finalize_ready().await
    }

    /// The base restore point's ids for `page`, or holes.
    async fn load_base_page(&self, page: u64) -> Result<Vec<ChunkId>> {
        let first = page * self.page_slots;
        let count = (self.size.div_ceil(self.chunk_size) - first).min(self.page_slots) as usize;
        let base_id = self.base_pages.as_ref().and_then(|p| p.get(page as usize)).copied().unwrap_or_default();
        if base_id.is_zero() {
            return Ok(vec![ChunkId::ZERO; count]);
        }
        let raw = self.repo.read_chunk(&base_id).await?;
        parse_page(&raw, count).ok_or_else(|| Error::corrupt(format!("index page {base_id}"), "wrong length"))
    }

    async fn complete_one(&mut self) -> Result<()> {
        let Some(done) = self.jobs.next().await else { return Ok(()) };
        let r = done??;
        self.stats.bytes_read += r.len;
        match r.outcome {
            Outcome::Zero => self.stats.bytes_zero += r.len,
            Outcome::Known => self.stats.chunks_reused += 1,
            Outcome::New { stored, full } => {
                self.stats.chunks_new += 1;
                self.stats.bytes_new += r.len;
                self.stats.bytes_stored += stored;
                if let Some(pack) = full {
                    self.packer.upload(pack).await?;
                }
            }
        }
        let page = r.slot / self.page_slots;
        let at = (r.slot % self.page_slots) as usize;
        let p = self.open_pages.get_mut(&page).ok_or_else(|| Error::Task("chunk of a closed page".into()))?;
        if let Some(x) = p.ids.get_mut(at) {
            *x = r.id;
        }
        p.pending -= 1;
        if let Some(task) = &self.progress {
            task.advance(r.len);
        }
        Ok(())
    }

    /// Closes every page that lies wholly below the cursor and has no chunk in flight.
    async fn finalize_ready(&mut self) -> Result<()> {
        let page_bytes = self.page_slots * self.chunk_size;
        while (self.next_page as usize) < self.pages.len() {
            let page = self.next_page;
            let page_end = ((page + 1) * page_bytes).min(self.size);
            if page_end > self.cursor {
                return Ok(());
            }
            let first = page * self.page_slots;
            let count = (self.size.div_ceil(self.chunk_size) - first).min(self.page_slots);
            let inherited = self.base_pages.as_ref().and_then(|p| p.get(page as usize)).copied();
            let id = match self.open_pages.get(&page) {
                None => {
                    if let Some(id) = inherited.filter(|id| !id.is_zero()) {
                        self.refuse_lost_base(id, first, "index page")?;
                        self.stats.chunks_inherited += count;
                    }
                    inherited.unwrap_or_default()
                }
                Some(p) if p.pending > 0 => return Ok(()),
                Some(p) => {
                    for (n, id) in
                        p.ids.iter().enumerate().filter(|(n, id)| !id.is_zero() && p.rewritten.get(*n) == Some(&false))
                    {
                        self.refuse_lost_base(*id, first + n as u64, "chunk")?;
                    }
                    if inherited.is_some() {
                        self.stats.chunks_inherited += count - p.written as u64;
                    }
                    let ids = p.ids.clone();
                    self.open_pages.remove(&page);
                    self.store_page(&ids).await?
                }
            };
            if let Some(slot) = self.pages.get_mut(page as usize) {
                *slot = id;
            }
            self.next_page += 1;
        }
        Ok(())
    }

    /// An incremental never references what the repository lost (see `base_damage`).
    fn refuse_lost_base(&self, id: ChunkId, slot: u64, what: &str) -> Result<()> {
        if self.packer.known(&id) {
            return Ok(());
        }
        Err(Error::corrupt(
            format!("{what} {id} of the base of disk {} (at offset {})", self.name, slot * self.chunk_size),
            "damaged or missing: it must be written again, not inherited",
        ))
    }

    async fn store_page(&self, ids: &[ChunkId]) -> Result<ChunkId> {
        if ids.iter().all(ChunkId::is_zero) {
            return Ok(ChunkId::ZERO);
        }
        let content: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let id = self.repo.crypto().chunk_id(&content);
        self.packer.add(id, &content).await?;
        Ok(id)
    }

    /// Stops this disk early (a cancelled copy): the chunks already submitted are still
    /// packed, so the session can keep them for a rerun; no page is written.
    pub(crate) async fn drain(mut self) -> Result<()> {
        while !self.jobs.is_empty() {
            self.complete_one().await?;
        }
        Ok(())
    }

    /// Finishes the disk: waits for its chunks and closes every page.
    pub async fn finish(mut self) -> Result<DiskRecord> {
        if !self.partial.is_empty() {
            return Err(Error::Invalid(format!(
                "the chunk at {} was only partly written ({} bytes)",
                self.cursor,
                self.partial.len()
            )));
        }
        self.cursor = self.size;
        while !self.jobs.is_empty() {
            self.complete_one().await?;
            self.finalize_ready().await?;
        }
        self.finalize_ready().await?;
        if (self.next_page as usize) < self.pages.len() {
            return Err(Error::Task("pages left open at the end of a disk".into()));
        }
        let record = DiskRecord {
            position: self.position,
            name: self.name,
            uuid: self.uuid,
            size: self.size,
            chunk_size: self.chunk_size as u32,
            page_slots: self.page_slots as u32,
            pages: self.pages,
            stats: self.stats,
            started: self.started,
            finished: Utc::now(),
        };
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = disks.get_mut(self.slot) {
            *slot = Some(record.clone());
        }
        Ok(record)
    }
}

thread_local! {
    // Each worker thread seals into its own buffer, reused from chunk to chunk.
    static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Worker side: read, detect zeros, hash, skip known chunks, compress and encrypt, append
/// to the pack.
fn process_chunk(packer: &Packer, slot: u64, len: u64, input: JobInput) -> Result<JobResult> {
    let data = match input {
        JobInput::Data(d) if d.is_empty() => {
            return Ok(JobResult { slot, len, id: ChunkId::ZERO, outcome: Outcome::Zero });
        }
        JobInput::Data(d) => d,
        JobInput::Known(id) => return Ok(JobResult { slot, len, id, outcome: Outcome::Known }),
        JobInput::Source { source, offset, len } => {
            let mut buf = packer.buffers.take(len);
            if let Err(e) = source.read_at(offset, &mut buf) {
                packer.buffers.give(buf);
                return Err(e);
            }
            buf
        }
    };
    let result = store_chunk(packer, slot, len, &data);
    packer.buffers.give(data);
    result
}

fn store_chunk(packer: &Packer, slot: u64, len: u64, data: &[u8]) -> Result<JobResult> {
    if is_zero(data) {
        return Ok(JobResult { slot, len, id: ChunkId::ZERO, outcome: Outcome::Zero });
    }
    let crypto = packer.repo.crypto();
    let id = crypto.chunk_id(data);
    if !packer.claim(id) {
        return Ok(JobResult { slot, len, id, outcome: Outcome::Known });
    }
    SEALED.with(|cell| {
        let mut sealed = cell.borrow_mut();
        sealed.clear();
        crypto.seal_into(&chunk_aad(&id), data, Some(packer.zstd_level), &mut sealed)?;
        let full = packer.append(id, &sealed, len as u32)?;
        Ok(JobResult { slot, len, id, outcome: Outcome::New { stored: sealed.len() as u64, full } })
    })
}

/// Chunk-sized read buffers handed from finished jobs to new ones, so that a backup does
/// not allocate (and the kernel does not zero) a fresh buffer per chunk.
#[derive(Default)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept at most: the jobs in flight of a few disks.
const POOLED_BUFFERS: usize = 64;

impl BufferPool {
    /// A buffer of `len` bytes, its content whatever it last held.
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOLED_BUFFERS && buf.capacity() > 0 {
            free.push(buf);
        }
    }
}

pub(crate) fn parse_page(raw: &[u8], count: usize) -> Option<Vec<ChunkId>> {
    if raw.len() != count * 32 {
        return None;
    }
    raw.chunks_exact(32).map(ChunkId::from_slice).collect()
}

/// Expands ranges to chunk boundaries (clipped to `size`), sorted and merged.
fn align_ranges(ranges: &[std::ops::Range<u64>], chunk: u64, size: u64) -> Vec<std::ops::Range<u64>> {
    ranges.iter().cloned().collect::<xenvault_types::ranges::RangeSet>().aligned(chunk, size).into_vec()
}
