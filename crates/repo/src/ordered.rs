//! Sequential reads of a disk in disk order, as fast as the store allows: chunks that sit
//! close together in one pack are fetched with one ranged read, several reads are in flight,
//! their chunks are opened (authenticated, decompressed, re-hashed) on all cores, and the
//! results come out in order with bounded memory.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::manifest::DiskRecord;
use crate::pack::PackName;
use crate::reader::load_page;
use crate::repository::Repository;
use bytes::Bytes;
use futures::StreamExt;
use std::ops::Range;

/// Plaintext bytes one ranged read covers at most (its sealed bytes are no more than that).
const READ_BYTES: u64 = 8 << 20;
/// Ranged reads being fetched or opened at once.
const READS_IN_FLIGHT: usize = 6;
/// Other chunks this close together in a pack are read through rather than split off.
const MAX_GAP: u64 = 256 << 10;
/// Plaintext bytes opened by one blocking job, so that one read's chunks use every core.
const OPEN_JOB_BYTES: u64 = 2 << 20;
/// Opened reads waiting for the consumer.
const QUEUE: usize = 2;

/// One chunk slot of a disk.
#[derive(Debug, Clone)]
pub struct SlotData {
    pub slot: u64,
    /// Disk offset of the slot.
    pub offset: u64,
    /// Bytes of the slot: the chunk size, less for the disk's last chunk.
    pub len: usize,
    /// The authenticated plaintext; `None` for a hole (zeros).
    pub data: Option<Bytes>,
}

/// Slots of a disk in increasing order, produced by a background task (stopped on drop).
pub struct OrderedChunks {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<SlotData>>>,
    pending: std::vec::IntoIter<SlotData>,
    /// Slots still expected, front first: an early end of the producer is an error.
    expected: std::collections::VecDeque<Range<u64>>,
    producer: tokio::task::JoinHandle<()>,
}

impl OrderedChunks {
    /// Starts reading `ranges` of slots (increasing, non-overlapping, inside the disk).
    /// Needs a Tokio runtime context.
    pub(crate) fn start(repo: Repository, disk: DiskRecord, ranges: Vec<Range<u64>>) -> Result<Self> {
        let slots = disk.slot_count();
        let mut end = 0;
        for r in &ranges {
            if r.start < end || r.start > r.end || r.end > slots {
                return Err(Error::Invalid(format!("slot ranges must increase inside the disk's {slots} slots")));
            }
            end = r.end;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let expected = ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        let producer = tokio::spawn(async move {
            let plan = std::sync::Arc::new(Planner { repo, disk });
            let pages: Vec<_> = ranges.into_iter().flat_map(|r| plan.page_spans(r)).collect();
            let reads = futures::stream::iter(pages)
                .then({
                    let plan = plan.clone();
                    move |span| {
                        let plan = plan.clone();
                        async move { plan.plan(span).await }
                    }
                })
                .flat_map(|planned| futures::stream::iter(split_results(planned)));
            let opened = reads
                .map(move |read| {
                    let plan = plan.clone();
                    async move { load(&plan.repo, &plan.disk, read?).await }
                })
                .buffered(READS_IN_FLIGHT);
            let mut opened = std::pin::pin!(opened);
            while let Some(got) = opened.next().await {
                let failed = got.is_err();
                if tx.send(got).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(OrderedChunks { rx, pending: Vec::new().into_iter(), expected, producer })
    }

    /// The next slot, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<SlotData>> {
        loop {
            if let Some(ready) = self.ready() {
                return ready;
            }
            let got = self.rx.recv().await;
            if let Some(err) = self.refill(got) {
                return Some(Err(err));
            }
        }
    }

    /// [`Self::next`] for a thread outside the runtime (e.g. inside `spawn_blocking`).
    pub fn blocking_next(&mut self) -> Option<Result<SlotData>> {
        loop {
            if let Some(ready) = self.ready() {
                return ready;
            }
            let got = self.rx.blocking_recv();
            if let Some(err) = self.refill(got) {
                return Some(Err(err));
            }
        }
    }

    /// A slot already at hand, or the end; `None` when more must be received.
    fn ready(&mut self) -> Option<Option<Result<SlotData>>> {
        if let Some(s) = self.pending.next() {
            return Some(Some(self.check_order(s)));
        }
        self.expected.is_empty().then_some(None)
    }

    fn check_order(&mut self, s: SlotData) -> Result<SlotData> {
        let front = self.expected.front_mut().ok_or_else(|| Error::Task("ordered read produced extra slots".into()))?;
        if front.start != s.slot {
            return Err(Error::Task(format!("ordered read produced slot {} instead of {}", s.slot, front.start)));
        }
        front.start += 1;
        if front.is_empty() {
            self.expected.pop_front();
        }
        Ok(s)
    }

    fn refill(&mut self, got: Option<Result<Vec<SlotData>>>) -> Option<Error> {
        match got {
            Some(Ok(slots)) => {
                self.pending = slots.into_iter();
                None
            }
            Some(Err(e)) => {
                self.expected.clear();
                Some(e)
            }
            None => {
                self.expected.clear();
                Some(Error::Task("ordered read stopped before the last slot".into()))
            }
        }
    }
}

impl Drop for OrderedChunks {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

/// A run of slots whose stored chunks sit close together in one pack: one ranged read.
struct Read {
    first_slot: u64,
    /// Per slot: the chunk and its bytes within the read, or `None` for a hole.
    slots: Vec<Option<(ChunkId, Range<usize>)>>,
    pack: Option<PackName>,
    span: Range<u64>,
    data_bytes: u64,
}

impl Read {
    fn new(first_slot: u64) -> Self {
        Read { first_slot, slots: Vec::new(), pack: None, span: 0..0, data_bytes: 0 }
    }

    /// True when chunk `loc` joins this read without making it too large or sparse.
    fn takes(&self, loc: &Location, chunk_size: u64) -> bool {
        let Some(pack) = &self.pack else { return true };
        let (start, end) = (loc.offset as u64, loc.offset as u64 + loc.len as u64);
        *pack == loc.pack
            && self.data_bytes + chunk_size <= READ_BYTES
            && start >= self.span.start
            && start <= self.span.end + MAX_GAP
            && end.max(self.span.end) - self.span.start <= READ_BYTES
    }

    fn add(&mut self, id: ChunkId, loc: Location, chunk_size: u64) {
        let (start, end) = (loc.offset as u64, loc.offset as u64 + loc.len as u64);
        if self.pack.is_none() {
            self.span = start..end;
            self.pack = Some(loc.pack);
        }
        self.span.end = self.span.end.max(end);
        let within = (start - self.span.start) as usize..(end - self.span.start) as usize;
        self.slots.push(Some((id, within)));
        self.data_bytes += chunk_size;
    }
}

struct Planner {
    repo: Repository,
    disk: DiskRecord,
}

impl Planner {
    /// `(page, slots)` pieces of a slot range, one per index page it touches.
    fn page_spans(&self, range: Range<u64>) -> Vec<(u64, Range<u64>)> {
        let per = self.disk.page_slots.max(1) as u64;
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let page = at / per;
            let end = ((page + 1) * per).min(range.end);
            out.push((page, at..end));
            at = end;
        }
        out
    }

    /// The reads covering `slots` of index page `page`.
    async fn plan(&self, (page, slots): (u64, Range<u64>)) -> Result<Vec<Read>> {
        let ids = load_page(&self.repo, &self.disk, page).await?;
        let first = page * self.disk.page_slots as u64;
        let cs = self.disk.chunk_size as u64;
        let mut reads = Vec::new();
        let mut current = Read::new(slots.start);
        for slot in slots {
            let index = (slot - first) as usize;
            let id = *ids.get(index).ok_or_else(|| Error::Invalid(format!("slot {slot} out of range")))?;
            if id.is_zero() {
                current.slots.push(None);
                continue;
            }
            let loc = self.repo.locate(&id).ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
            if !current.takes(&loc, cs) {
                reads.push(std::mem::replace(&mut current, Read::new(slot)));
            }
            current.add(id, loc, cs);
        }
        reads.push(current);
        Ok(reads)
    }
}

fn split_results(planned: Result<Vec<Read>>) -> Vec<Result<Read>> {
    match planned {
        Ok(reads) => reads.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e)],
    }
}

/// Fetches one read and opens its chunks in parallel blocking jobs.
async fn load(repo: &Repository, disk: &DiskRecord, read: Read) -> Result<Vec<SlotData>> {
    let sealed = match &read.pack {
        Some(pack) => match repo.read_pack_range(pack, read.span.start, read.span.end - read.span.start).await {
            Ok(sealed) => Bytes::from(sealed),
            // The pack went (gc kept another copy of its chunks): read them one by one.
            Err(e) if e.is_damage() => return load_one_by_one(repo, disk, read).await,
            Err(e) => return Err(e),
        },
        None => Bytes::new(),
    };
    let chunks: Vec<(usize, ChunkId, Range<usize>)> =
        read.slots.iter().enumerate().filter_map(|(i, s)| s.clone().map(|(id, r)| (i, id, r))).collect();
    let per_job = (OPEN_JOB_BYTES / disk.chunk_size.max(1) as u64).max(1) as usize;
    let chunk_size = disk.chunk_size as usize;
    let jobs = chunks.chunks(per_job).map(|job| {
        let (job, sealed, opener) = (job.to_vec(), sealed.clone(), repo.chunk_opener());
        tokio::task::spawn_blocking(move || {
            // One buffer for the job's chunks, decompressed straight into it; the slots are
            // slices of it.
            let mut plain = Vec::with_capacity(job.len() * chunk_size);
            let mut spans: Vec<(usize, Range<usize>)> = Vec::with_capacity(job.len());
            let mut last: Option<(ChunkId, Range<usize>)> = None;
            for (i, id, range) in job {
                // A chunk repeated in a row (a pattern-filled disk) is opened once.
                let span = match &last {
                    Some((seen, span)) if *seen == id => span.clone(),
                    _ => {
                        let part = sealed
                            .get(range)
                            .ok_or_else(|| Error::corrupt(format!("chunk {id}"), "outside its read"))?;
                        let start = plain.len();
                        opener.open_into(&id, part, &mut plain)?;
                        start..plain.len()
                    }
                };
                last = Some((id, span.clone()));
                spans.push((i, span));
            }
            let plain = Bytes::from(plain);
            Ok::<_, Error>(spans.into_iter().map(|(i, span)| (i, plain.slice(span))).collect::<Vec<_>>())
        })
    });
    let opened = futures::future::try_join_all(jobs).await?;
    let mut data: Vec<Option<Bytes>> = vec![None; read.slots.len()];
    for (i, plain) in opened.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten() {
        if let Some(d) = data.get_mut(i) {
            *d = Some(plain);
        }
    }
    into_slots(disk, &read, data)
}

/// `load` through `Repository::read_chunk`, which finds the copies that are left.
async fn load_one_by_one(repo: &Repository, disk: &DiskRecord, read: Read) -> Result<Vec<SlotData>> {
    let mut data = Vec::with_capacity(read.slots.len());
    for slot in &read.slots {
        data.push(match slot {
            Some((id, _)) => Some(Bytes::from(repo.read_chunk(id).await?)),
            None => None,
        });
    }
    into_slots(disk, &read, data)
}

/// The slots of `read` with their opened chunks (`None`: a hole), lengths checked.
fn into_slots(disk: &DiskRecord, read: &Read, data: Vec<Option<Bytes>>) -> Result<Vec<SlotData>> {
    let cs = disk.chunk_size as u64;
    let mut out = Vec::with_capacity(data.len());
    for (i, plain) in data.into_iter().enumerate() {
        let slot = read.first_slot + i as u64;
        let offset = slot * cs;
        let len = (disk.size.saturating_sub(offset)).min(cs) as usize;
        if let (Some(p), Some(Some((id, _)))) = (&plain, read.slots.get(i))
            && p.len() != len
        {
            return Err(Error::corrupt(format!("chunk {id}"), "length does not match its slot"));
        }
        out.push(SlotData { slot, offset, len, data: plain });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "ordered_tests.rs"]
mod tests;
