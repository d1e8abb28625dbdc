//! Reading one disk from the host with one strategy and feeding the repository. A
//! failure before anything is written makes the strategy unusable (fall back); a
//! failure while writing needs a new restore point try (the writer cannot be undone).

use futures::TryStreamExt;
use xenvault_nbd::MultiReader;
use xenvault_xapi::DiskFormat;

use crate::error::Error;
use crate::store::{DiskSink, Point};
use crate::strategy::cbt::{self, CBT_BLOCK};
use crate::strategy::{Attempt, BaseSnapshotVdi, Strategy, Transport};
use crate::throttle::{RateLimit, limited};
use xenvault_pool::host::{Host, changed_blocks};
use xenvault_pool::records::{NbdInfo, Vdi};
use xenvault_types::progress::Task;
use xenvault_types::ranges::RangeSet;

/// One disk to read: the new snapshot, what it can build on, where to read it.
pub struct DiskTarget {
    pub name: String,
    pub vdi_uuid: String,
    pub snapshot: Vdi,
    pub base_snapshot: Option<BaseSnapshotVdi>,
    pub base_record: Option<xenvault_repo::DiskRecord>,
    /// Ranges the base lost (whole chunks): read from the snapshot whatever changed.
    pub heal: Vec<std::ops::Range<u64>>,
    pub nbd: Vec<NbdInfo>,
    pub nbd_connections: usize,
    /// The job's speed limit, shared with its other reads.
    pub speed_limit: Option<RateLimit>,
}

pub struct Outcome {
    pub record: xenvault_repo::DiskRecord,
    pub bytes_read: u64,
    pub bytes_changed: u64,
    pub granularity: u64,
}

pub enum Failure {
    /// This strategy cannot work here (and why): try the next one. Nothing was written.
    Unusable(String),
    /// The transfer broke after the disk writer started (a cut export): the restore
    /// point must be started again.
    Retry(Error),
    /// Nothing else will do better: the disk, and the VM, fail.
    Fatal(Error),
}

/// Errors before the writer exists make the strategy unusable; after, they need a new try.
fn before_writing(e: Error) -> Failure {
    if e.is_fatal() { Failure::Fatal(e) } else { Failure::Unusable(e.to_string()) }
}

fn while_writing(e: Error) -> Failure {
    if e.is_fatal() { Failure::Fatal(e) } else { Failure::Retry(e) }
}

/// Reads one disk with one strategy into a new disk writer of `point`. `task` starts at
/// the disk size; a strategy that reads less (changed blocks, a delta) sets what it will
/// read once it knows, so the task ends at 100%.
pub async fn read_disk(
    host: &Host,
    point: &Point,
    target: &DiskTarget,
    attempt: &Attempt,
    task: &Task,
) -> Result<Outcome, Failure> {
    let size = target.snapshot.virtual_size;
    let base = || {
        let snapshot = target.base_snapshot.as_ref().ok_or_else(|| Failure::Unusable("no base snapshot".into()))?;
        let record = target.base_record.as_ref().ok_or_else(|| Failure::Unusable("no base restore point".into()))?;
        Ok::<_, Failure>((snapshot, record))
    };
    match (attempt.strategy, attempt.transport) {
        (Strategy::Cbt, _) => {
            let (base, base_record) = base()?;
            let changed = changed_blocks(host.client(), &base.reference, &target.snapshot.reference)
                .await
                .map_err(|e| Failure::Unusable(format!("VDI.list_changed_blocks: {e}")))?;
            let mut ranges = cbt::changed_ranges(changed.changed_blocks(), CBT_BLOCK, size);
            let changed_bytes = ranges.bytes();
            // What the base restore point lost is read again with the changes.
            ranges.extend(target.heal.iter().cloned());
            let ranges = ranges.aligned(1, size);
            task.set_total(ranges.bytes());
            let pool = crate::nbd_pool::connect(&target.nbd, target.nbd_connections).await.map_err(before_writing)?;
            let sink = point
                .disk_sink(&target.name, &target.vdi_uuid, size, Some(base_record))
                .await
                .map_err(while_writing)?;
            let read =
                nbd_ranges(&pool, ranges, &sink, task, target.speed_limit.as_ref()).await.map_err(while_writing)?;
            pool.close().await;
            let record = sink.finish().await.map_err(while_writing)?;
            Ok(Outcome { record, bytes_read: read, bytes_changed: changed_bytes, granularity: CBT_BLOCK })
        }
        (Strategy::Vhd, _) => {
            let (base, base_record) = base()?;
            if !target.heal.is_empty() {
                return Err(Failure::Unusable("a VHD delta cannot re-read what the base restore point lost".into()));
            }
            let body = host
                .export_raw_vdi(&target.snapshot.reference, DiskFormat::Vhd, Some(&base.reference))
                .await
                .map_err(|e| before_writing(e.into()))?;
            let body = limited(body, target.speed_limit.as_ref());
            let sink = point
                .disk_sink(&target.name, &target.vdi_uuid, size, Some(base_record))
                .await
                .map_err(while_writing)?;
            let delta =
                crate::strategy::vhd::read_delta(body, &target.snapshot, &sink, task).await.map_err(while_writing)?;
            let record = sink.finish().await.map_err(while_writing)?;
            Ok(Outcome { record, bytes_read: delta.read, bytes_changed: delta.changed, granularity: delta.block })
        }
        (Strategy::FullRead, transport) => {
            let sink;
            let read = if transport == Transport::Nbd {
                let pool =
                    crate::nbd_pool::connect(&target.nbd, target.nbd_connections).await.map_err(before_writing)?;
                sink = point.disk_sink(&target.name, &target.vdi_uuid, size, None).await.map_err(while_writing)?;
                let whole = std::iter::once(0..size).collect();
                let read =
                    nbd_ranges(&pool, whole, &sink, task, target.speed_limit.as_ref()).await.map_err(while_writing)?;
                pool.close().await;
                read
            } else {
                let body = host
                    .export_raw_vdi(&target.snapshot.reference, DiskFormat::Raw, None)
                    .await
                    .map_err(|e| before_writing(e.into()))?;
                let body = limited(body, target.speed_limit.as_ref());
                sink = point.disk_sink(&target.name, &target.vdi_uuid, size, None).await.map_err(while_writing)?;
                crate::strategy::full::read_raw(body, &target.snapshot, &sink, task).await.map_err(while_writing)?
            };
            let record = sink.finish().await.map_err(while_writing)?;
            // Against an earlier restore point, "changed" is what the repository did not have.
            let changed = if target.base_record.is_some() { record.stats.bytes_new } else { size };
            Ok(Outcome { record, bytes_read: read, bytes_changed: changed, granularity: point.chunk_size() })
        }
    }
}

/// Pieces read ahead of the sink (on top of the reader's own requests in flight).
const READ_AHEAD: usize = 16;

/// Reads `ranges` over the reader's connections (pieces arrive in offset order, as
/// the sink needs); returns the bytes read. Reading goes on while the sink waits for
/// the repository (hashing, compressing, a pack upload), through a bounded queue. The
/// speed limit holds the reader back, and with it the requests in flight.
async fn nbd_ranges(
    reader: &MultiReader,
    ranges: RangeSet,
    sink: &DiskSink,
    task: &Task,
    speed_limit: Option<&RateLimit>,
) -> Result<u64, Error> {
    let (queue, mut arrived) = tokio::sync::mpsc::channel(READ_AHEAD);
    let read = async move {
        let mut pieces = reader.read_ranges(ranges.into_vec().into_iter().map(|r| (r.start, r.end - r.start)));
        while let Some(piece) = pieces.try_next().await? {
            if let Some(limit) = speed_limit {
                limit.take(piece.1.len() as u64).await;
            }
            if queue.send(piece).await.is_err() {
                break; // The sink failed; its error is the one reported.
            }
        }
        Ok::<_, Error>(())
    };
    let store = async {
        let mut total = 0u64;
        while let Some((offset, data)) = arrived.recv().await {
            let len = data.len() as u64;
            total += len;
            sink.write(offset, data).await?;
            task.advance(len);
        }
        Ok(total)
    };
    let ((), total) = futures::future::try_join(read, store).await?;
    Ok(total)
}
