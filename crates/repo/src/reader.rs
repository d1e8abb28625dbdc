//! Reading restore points: random access for NBD serving and file-level restore, and
//! sequential reads in disk order (see `ordered`) for restores and exports.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::manifest::DiskRecord;
use crate::ordered::OrderedChunks;
use crate::repository::Repository;
use crate::writer::parse_page;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Decoded index pages and chunks kept for small random reads.
const PAGE_CACHE: usize = 64;
const CHUNK_CACHE: usize = 8;

type Chunk = Arc<Vec<u8>>;

pub struct DiskReader {
    repo: Repository,
    disk: DiskRecord,
    pages: Mutex<HashMap<u64, Arc<Vec<ChunkId>>>>,
    chunks: Mutex<Vec<(u64, Chunk)>>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreStats {
    pub bytes: u64,
    pub bytes_zero: u64,
    pub seconds: f64,
}

impl DiskReader {
    pub async fn new(repo: &Repository, disk: &DiskRecord) -> Result<Self> {
        repo.ensure_index().await?;
        let expected_pages = disk.slot_count().div_ceil(disk.page_slots.max(1) as u64);
        if disk.chunk_size == 0 || disk.page_slots == 0 || disk.pages.len() as u64 != expected_pages {
            return Err(Error::corrupt(format!("disk {}", disk.name), "page list does not match disk size"));
        }
        Ok(DiskReader {
            repo: repo.clone(),
            disk: disk.clone(),
            pages: Mutex::new(HashMap::new()),
            chunks: Mutex::new(Vec::new()),
        })
    }

    pub fn size(&self) -> u64 {
        self.disk.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.disk.chunk_size as u64
    }

    pub fn disk(&self) -> &DiskRecord {
        &self.disk
    }

    fn chunk_len(&self, slot: u64) -> usize {
        (self.disk.size - slot * self.chunk_size()).min(self.chunk_size()) as usize
    }

    /// The ids of index page `page` (holes for a zero page).
    pub async fn page(&self, page: u64) -> Result<Arc<Vec<ChunkId>>> {
        if let Some(p) = self.pages.lock().unwrap_or_else(|p| p.into_inner()).get(&page) {
            return Ok(p.clone());
        }
        let ids = Arc::new(load_page(&self.repo, &self.disk, page).await?);
        let mut cache = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PAGE_CACHE {
            cache.clear();
        }
        cache.insert(page, ids.clone());
        Ok(ids)
    }

    pub async fn chunk_id(&self, slot: u64) -> Result<ChunkId> {
        let per = self.disk.page_slots as u64;
        let page = self.page(slot / per).await?;
        page.get((slot % per) as usize).copied().ok_or_else(|| Error::Invalid(format!("slot {slot} out of range")))
    }

    /// Plaintext of chunk slot `slot`; `None` for a hole (zeros).
    pub async fn read_slot(&self, slot: u64) -> Result<Option<Chunk>> {
        let id = self.chunk_id(slot).await?;
        if id.is_zero() {
            return Ok(None);
        }
        let data = self.repo.read_chunk(&id).await?;
        if data.len() != self.chunk_len(slot) {
            return Err(Error::corrupt(format!("chunk {id}"), "length does not match its slot"));
        }
        Ok(Some(Arc::new(data)))
    }

    async fn cached_slot(&self, slot: u64) -> Result<Option<Chunk>> {
        if let Some((_, c)) = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(s, _)| *s == slot) {
            return Ok(Some(c.clone()));
        }
        let got = self.read_slot(slot).await?;
        if let Some(c) = &got {
            let mut cache = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CHUNK_CACHE {
                cache.remove(0);
            }
            cache.push((slot, c.clone()));
        }
        Ok(got)
    }

    /// Fills `buf` with the disk's bytes at `offset` (random access).
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.disk.size) {
            return Err(Error::Invalid(format!("read at {offset}+{} past the disk end", buf.len())));
        }
        let cs = self.chunk_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let slot = at / cs;
            let within = (at % cs) as usize;
            let n = (self.chunk_len(slot) - within).min(buf.len() - done);
            match self.cached_slot(slot).await? {
                Some(c) => buf[done..done + n].copy_from_slice(&c[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// The slots in `ranges` (increasing, non-overlapping) in disk order, read ahead in
    /// parallel with bounded memory; every chunk is authenticated. Needs a Tokio runtime.
    pub fn chunks_in_order(&self, ranges: impl IntoIterator<Item = Range<u64>>) -> Result<OrderedChunks> {
        OrderedChunks::start(self.repo.clone(), self.disk.clone(), ranges.into_iter().collect())
    }

    /// Every slot of the disk in order (see [`Self::chunks_in_order`]).
    pub fn all_chunks_in_order(&self) -> Result<OrderedChunks> {
        self.chunks_in_order(std::iter::once(0..self.disk.slot_count()))
    }

    /// Restores the whole disk into `path` (created or truncated): holes stay sparse in a
    /// regular file and are written as zeros to a device or pipe. `task` goes to the
    /// disk's size.
    pub async fn restore_to_file(
        &self,
        path: &Path,
        task: xenvault_types::progress::Task,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<RestoreStats> {
        let cancel = cancel.clone();
        let started = std::time::Instant::now();
        let path = path.to_path_buf();
        let io = {
            let path = path.clone();
            move |e| Error::Io { path: path.clone(), source: e }
        };
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(&io)?;
        let kind = file.metadata().map_err(&io)?.file_type();
        let is_regular = kind.is_file();
        // Pipes and character devices take neither positioned writes nor fsync.
        let is_stream = !is_regular && !kind.is_block_device();
        if is_regular {
            file.set_len(self.disk.size).map_err(&io)?;
        }
        let zeros = vec![0u8; if is_regular { 0 } else { self.chunk_size() as usize }];
        let mut chunks = self.all_chunks_in_order()?;
        let mut stats = tokio::task::spawn_blocking(move || {
            let mut stats = RestoreStats::default();
            let mut written = Writeback::default();
            while let Some(got) = chunks.blocking_next() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let s = got?;
                let bytes = match &s.data {
                    Some(data) => data,
                    None if is_regular => {
                        stats.bytes_zero += s.len as u64;
                        &[][..]
                    }
                    None => zeros.get(..s.len).unwrap_or(&zeros),
                };
                if is_stream {
                    (&file).write_all(bytes).map_err(&io)?;
                } else {
                    file.write_all_at(bytes, s.offset).map_err(&io)?;
                    written.add(&file, s.offset + s.len as u64);
                }
                stats.bytes += s.len as u64;
                task.advance(s.len as u64);
            }
            if !is_stream {
                file.sync_all().map_err(&io)?;
            }
            Ok::<_, Error>(stats)
        })
        .await??;
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }
}

/// Bytes written before the disk is asked to start writing them back.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Starts writeback of a restore as it goes, so the closing fsync finds little left to
/// write and dirty pages stay bounded.
#[derive(Default)]
struct Writeback {
    flushed: u64,
}

impl Writeback {
    /// Everything below `end` has been written.
    fn add(&mut self, file: &std::fs::File, end: u64) {
        if end < self.flushed + WRITEBACK_STEP {
            return;
        }
        use std::os::fd::AsRawFd;
        let (Ok(from), Ok(len)) = (i64::try_from(self.flushed), i64::try_from(end - self.flushed)) else { return };
        // SAFETY: only schedules writeback of this file's own pages. A failure is harmless:
        // the closing fsync still writes everything.
        #[allow(unsafe_code)]
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        self.flushed = end;
    }
}

/// Reads index page `page` of `disk`: the ids of its slots (holes for a zero page).
pub(crate) async fn load_page(repo: &Repository, disk: &DiskRecord, page: u64) -> Result<Vec<ChunkId>> {
    let first = page * disk.page_slots as u64;
    let count = (disk.slot_count().saturating_sub(first)).min(disk.page_slots as u64) as usize;
    let id = *disk.pages.get(page as usize).ok_or_else(|| Error::Invalid(format!("page {page} out of range")))?;
    if id.is_zero() {
        return Ok(vec![ChunkId::ZERO; count]);
    }
    let raw = repo.read_chunk(&id).await?;
    parse_page(&raw, count).ok_or_else(|| Error::corrupt(format!("index page {id}"), "wrong length"))
}
