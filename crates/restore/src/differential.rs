//! Differential restore over an existing disk: find where the disk differs from the
//! restore point, then send one dynamic VHD whose blocks mark only those sectors present.
//! xapi's VHD import (vhd-tool) writes only the sectors whose bitmap bit is set, so the
//! host writes about as much as changed, though the wire carries whole 2 MiB blocks.
//!
//! Where it differs, best first:
//! - CBT: the disk has CBT on and the restore point's snapshot VDI still exists (the
//!   engine keeps the last one as `cbt_metadata`): `VDI.list_changed_blocks(snapshot,
//!   disk)` names the 64 KiB blocks written since; nothing of the disk is read. For an
//!   older restore point whose snapshot is gone, the snapshot of another point serves,
//!   adding where the two points differ (from their chunk ids, then their sectors).
//! - hash: the disk is streamed from the host and each repository chunk hashed with the
//!   repository's chunk-id key; only chunks whose id differs are read from the restore
//!   point, and compared sector by sector so only differing sectors are written.

use crate::disk::{StoredDisk, Writing};
use crate::export::{VHD_BLOCK, unless_cancelled};
use crate::{Error, Result};
use futures::StreamExt;
use std::ops::Range;
use tokio_util::sync::CancellationToken;
use xenvault_fsread::ReadAt;
use xenvault_repo::crypto::ChunkId;
use xenvault_repo::{DiskReader, DiskRecord, Manifest, Repository};
use xenvault_types::progress::{Phase, Task};
use xenvault_types::ranges::RangeSet;
use xenvault_vhd::{DynamicWriter, SECTOR_SIZE};
use xenvault_xapi::{Client, DiskFormat, Ref, Value};
use xenvault_xapi_wire::cbt::BLOCK_SIZE as CBT_BLOCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Cbt,
    Hash,
}

/// The ranges of a disk to write, and how they were found.
#[derive(Debug)]
pub(crate) struct Plan {
    pub method: Method,
    pub reason: String,
    /// Sector-aligned, increasing, disjoint byte ranges.
    pub ranges: Vec<Range<u64>>,
    /// Bytes of the disk read from the host to find them.
    pub bytes_compared: u64,
}

/// The disk a differential restore writes over.
pub(crate) struct Target<'a> {
    /// The VDI's reference.
    pub vdi: &'a str,
    /// The restore point being restored, and its disk.
    pub point: &'a Manifest,
    pub disk: &'a StoredDisk<'a>,
    /// The snapshot VDI the restore point's disk was read from (empty when unknown).
    pub snapshot_vdi_uuid: &'a str,
}

/// How many other restore points of the disk are tried for a surviving CBT snapshot.
const OTHER_POINTS_TRIED: usize = 8;

/// Where the target differs from the restore point read by `reader`.
pub(crate) async fn plan(
    client: &Client,
    repo: &Repository,
    target: &Target<'_>,
    reader: &DiskReader,
    writing: &Writing<'_>,
) -> Result<Plan> {
    // Hosts older than XenServer 7.3 have no CBT at all.
    let reason = match client.call("VDI.get_cbt_enabled", &[Value::from(target.vdi)]).await.map(|v| v.as_bool()) {
        Err(e) => format!("CBT is unavailable ({e})"),
        Ok(Some(true)) => match cbt_plan(client, repo, target, reader).await? {
            Some((ranges, reason)) => {
                return Ok(Plan { method: Method::Cbt, reason, ranges, bytes_compared: 0 });
            }
            None => "no restore point of the disk has its CBT snapshot left".to_owned(),
        },
        Ok(_) => "CBT is off on the disk".to_owned(),
    };
    let task = writing.task(target.point, target.disk, Phase::Compare, reader.size());
    let (ranges, bytes_compared) = differing_sectors(client, repo, target.vdi, reader, &task, writing.cancel).await?;
    Ok(Plan { method: Method::Hash, reason: format!("{reason}: compared chunk hashes"), ranges, bytes_compared })
}

/// With CBT on: the ranges to write and how they were found, from the restore point's own
/// snapshot, else another point's; None when no snapshot serves.
async fn cbt_plan(
    client: &Client,
    repo: &Repository,
    target: &Target<'_>,
    reader: &DiskReader,
) -> Result<Option<(Vec<Range<u64>>, String)>> {
    match cbt_changes(client, target.vdi, target.snapshot_vdi_uuid, reader.size()).await? {
        Ok(ranges) => {
            Ok(Some((ranges, format!("CBT since the restore point's snapshot {}", target.snapshot_vdi_uuid))))
        }
        Err(why_not) => {
            let via = via_other_point(client, repo, target, reader).await?;
            Ok(via.map(|(ranges, how)| (ranges, format!("{why_not}; {how}"))))
        }
    }
}

/// The byte ranges (64 KiB blocks) written to `vdi` since the snapshot VDI
/// `snapshot_uuid`; `Ok(Err(why))` when CBT cannot tell. Only transport failures are errors.
async fn cbt_changes(
    client: &Client,
    vdi: &str,
    snapshot_uuid: &str,
    size: u64,
) -> Result<std::result::Result<Vec<Range<u64>>, String>> {
    if snapshot_uuid.is_empty() {
        return Ok(Err("the restore point names no snapshot VDI".into()));
    }
    let Some(snapshot) = xenvault_pool::host::by_uuid(client, "VDI", snapshot_uuid).await? else {
        return Ok(Err(format!("the snapshot VDI {snapshot_uuid} is gone")));
    };
    let changed = match xenvault_pool::host::changed_blocks(client, &snapshot, vdi).await {
        Ok(changed) => changed,
        Err(e) => return Ok(Err(format!("VDI.list_changed_blocks from {snapshot_uuid} failed ({e})"))),
    };
    if changed.block_count() < size.div_ceil(CBT_BLOCK) {
        return Ok(Err(format!("the CBT bitmap covers {} blocks of a {size}-byte disk", changed.block_count())));
    }
    Ok(Ok(changed.ranges().map(|r| r.start.min(size)..r.end.min(size)).filter(|r| !r.is_empty()).collect()))
}

/// CBT through another restore point `other` of the disk whose snapshot survives (the
/// engine keeps only the newest): the disk differs from this point at most where it
/// changed since `other`'s snapshot, or where `other` differs from this point, which the
/// two points' chunk ids tell (differing chunks compared by sector). Reads no target.
async fn via_other_point(
    client: &Client,
    repo: &Repository,
    target: &Target<'_>,
    reader: &DiskReader,
) -> Result<Option<(Vec<Range<u64>>, String)>> {
    let ours = reader.disk();
    let candidates: Vec<Manifest> = repo
        .restore_points()
        .await?
        .into_iter()
        .rev()
        .filter(|m| m.id != target.point.id)
        .filter(|m| m.disks.iter().any(|d| same_layout(d, ours)))
        .take(OTHER_POINTS_TRIED)
        .collect();
    for other in &candidates {
        // Another point whose metadata does not read names no snapshot: it is passed over.
        let meta = crate::disk::vm_metadata(other).ok().flatten();
        let snapshot = meta.as_ref().and_then(|m| m.disk(&ours.uuid)).map_or("", |d| d.snapshot_vdi_uuid.as_str());
        let Ok(since) = cbt_changes(client, target.vdi, snapshot, reader.size()).await? else { continue };
        let Some(record) = other.disks.iter().find(|d| same_layout(d, ours)) else { continue };
        let theirs = DiskReader::new(repo, record).await?;
        let between = differing_points(reader, &theirs).await?;
        let reason = format!(
            "CBT since restore point {}'s snapshot {snapshot}, and where the two restore points differ",
            other.short_id()
        );
        let mut changed = between;
        changed.extend(since);
        return Ok(Some((changed.into_vec(), reason)));
    }
    Ok(None)
}

/// The same disk, cut into chunks the same way.
fn same_layout(a: &DiskRecord, b: &DiskRecord) -> bool {
    a.uuid == b.uuid && a.size == b.size && a.chunk_size == b.chunk_size && a.page_slots == b.page_slots
}

/// The sectors where two restore points of one disk (same layout) differ: equal index
/// pages are skipped, chunks with different ids compared sector by sector.
async fn differing_points(a: &DiskReader, b: &DiskReader) -> Result<RangeSet> {
    let per_page = u64::from(a.disk().page_slots);
    let mut ranges = RangeSet::new();
    for (page, (pa, pb)) in a.disk().pages.iter().zip(&b.disk().pages).enumerate() {
        if pa == pb {
            continue;
        }
        let (ids_a, ids_b) = (a.page(page as u64).await?, b.page(page as u64).await?);
        for (n, (ia, ib)) in ids_a.iter().zip(ids_b.iter()).enumerate() {
            if ia != ib {
                let slot = page as u64 * per_page + n as u64;
                let (ca, cb) = (a.read_slot(slot).await?, b.read_slot(slot).await?);
                let len = (a.size() - slot * a.chunk_size()).min(a.chunk_size()) as usize;
                push_differing_sectors(
                    &mut ranges,
                    slot * a.chunk_size(),
                    len,
                    ca.as_deref().map(Vec::as_slice),
                    cb.as_deref().map(Vec::as_slice),
                );
            }
        }
    }
    Ok(ranges)
}

/// Adds the sectors of `len` bytes at `start` where `a` and `b` differ (`None`: zeros).
pub fn push_differing_sectors(ranges: &mut RangeSet, start: u64, len: usize, a: Option<&[u8]>, b: Option<&[u8]>) {
    let sector = SECTOR_SIZE as usize;
    for at in (0..len).step_by(sector) {
        let end = (at + sector).min(len);
        let (sa, sb) = (a.and_then(|a| a.get(at..end)), b.and_then(|b| b.get(at..end)));
        let differs = match (sa, sb) {
            (Some(x), Some(y)) => x != y,
            (Some(x), None) | (None, Some(x)) => x.iter().any(|&v| v != 0),
            (None, None) => false,
        };
        if differs {
            ranges.insert(start + at as u64..start + end as u64);
        }
    }
}

/// A chunk being hashed on a blocking thread: its id, and the chunk back.
type Hashing = tokio::task::JoinHandle<(ChunkId, Vec<u8>)>;

/// Streams `vdi` and returns the sectors where it differs from the restore point, and the
/// bytes read. Chunk ids (keyed hashes) find the differing chunks; hashing runs on a
/// blocking thread while the next chunk arrives.
async fn differing_sectors(
    client: &Client,
    repo: &Repository,
    vdi: &str,
    reader: &DiskReader,
    task: &Task,
    cancel: &CancellationToken,
) -> Result<(Vec<Range<u64>>, u64)> {
    let mut body = client.export_raw_vdi(&Ref::new(vdi), DiskFormat::Raw, None).await?;
    let (size, cs) = (reader.size(), reader.chunk_size());
    let mut pending: Option<(u64, Hashing)> = None;
    let mut leftover = bytes::Bytes::new();
    let mut ranges = RangeSet::new();
    let mut read = 0u64;
    for slot in 0..reader.disk().slot_count() {
        unless_cancelled(cancel)?;
        let len = (size - slot * cs).min(cs) as usize;
        let mut chunk = Vec::with_capacity(len);
        while chunk.len() < len {
            if leftover.is_empty() {
                leftover = match body.next().await.transpose()? {
                    Some(b) => b,
                    None => {
                        return Err(Error::Metadata(format!(
                            "the host sent {} of {size} bytes of VDI {vdi}",
                            read + chunk.len() as u64
                        )));
                    }
                };
            }
            let take = (len - chunk.len()).min(leftover.len());
            chunk.extend_from_slice(&leftover.split_to(take));
        }
        read += len as u64;
        let hasher = repo.clone();
        let hashed = tokio::task::spawn_blocking(move || (hasher.chunk_id_of(&chunk), chunk));
        if let Some((done, job)) = pending.replace((slot, hashed)) {
            let (id, data) = job.await?;
            compare_chunk(reader, done, id, &data, &mut ranges).await?;
        }
        task.advance(len as u64);
    }
    if let Some((done, job)) = pending {
        let (id, data) = job.await?;
        compare_chunk(reader, done, id, &data, &mut ranges).await?;
    }
    Ok((ranges.into_vec(), read))
}

/// Adds the sectors of chunk `slot` where the disk's `current` content (whose id is `id`)
/// differs from the restore point's.
async fn compare_chunk(
    reader: &DiskReader,
    slot: u64,
    id: ChunkId,
    current: &[u8],
    ranges: &mut RangeSet,
) -> Result<()> {
    if reader.chunk_id(slot).await? != id {
        let stored = reader.read_slot(slot).await?;
        push_differing_sectors(
            ranges,
            slot * reader.chunk_size(),
            current.len(),
            Some(current),
            stored.as_deref().map(Vec::as_slice),
        );
    }
    Ok(())
}

/// What a differential upload cost.
pub struct Sent {
    /// Disk bytes the host writes (sectors marked present).
    pub written: u64,
    /// VHD bytes on the wire.
    pub sent: u64,
}

/// The 2 MiB VHD blocks the ranges touch.
fn blocks_of(ranges: &[Range<u64>]) -> Vec<u32> {
    let mut blocks: Vec<u32> = Vec::new();
    for r in ranges {
        for b in r.start / VHD_BLOCK..r.end.div_ceil(VHD_BLOCK) {
            // A VHD describes at most 2040 GiB, so indices fit (the writer checks the size).
            let b = u32::try_from(b).unwrap_or(u32::MAX);
            if blocks.last() != Some(&b) {
                blocks.push(b);
            }
        }
    }
    blocks
}

/// Sends the content of `ranges` of `disk` (a restore point's disk, or any disk read
/// from blocking threads, as replication's NBD source) into `vdi` as one VHD import;
/// `task` counts the bytes of `ranges`, which must be sector-aligned, increasing and
/// disjoint.
pub async fn upload_ranges(
    client: &Client,
    vdi: &str,
    disk: impl ReadAt + 'static,
    ranges: Vec<Range<u64>>,
    task: Task,
    cancel: &CancellationToken,
) -> Result<Sent> {
    let size = disk.size();
    let blocks = blocks_of(&ranges);
    let sent = DynamicWriter::<std::io::Sink>::output_size(size, blocks.len() as u64);
    let cancel = cancel.clone();
    let written = crate::disk::upload(client, vdi, DiskFormat::Vhd, sent, move |out| {
        write_ranges(&disk, &blocks, &ranges, out, &task, &cancel)
    })
    .await?;
    Ok(Sent { written, sent })
}

/// Writes a dynamic VHD holding the disk's sectors in `ranges` (the other sectors of
/// its blocks are zeros, marked absent). Blocking.
fn write_ranges(
    disk: &impl ReadAt,
    blocks: &[u32],
    ranges: &[Range<u64>],
    out: impl std::io::Write,
    task: &Task,
    cancel: &CancellationToken,
) -> Result<u64> {
    let size = disk.size();
    let mut w = DynamicWriter::dynamic(out, size, blocks.iter().copied(), Default::default())?;
    let mut written = 0;
    let mut pending = ranges.iter().peekable();
    let mut buf = Vec::new();
    for &b in blocks {
        unless_cancelled(cancel)?;
        let start = u64::from(b) * VHD_BLOCK;
        let end = (start + VHD_BLOCK).min(size);
        buf.clear();
        buf.resize((end - start) as usize, 0);
        let mut sectors = Vec::new();
        while let Some(r) = pending.peek() {
            let (from, to) = (r.start.max(start), r.end.min(end));
            if from < to {
                let piece = buf
                    .get_mut((from - start) as usize..(to - start) as usize)
                    .ok_or_else(|| Error::Metadata("range outside its block".into()))?;
                if disk.read_at(from, piece).map_err(read_error)? < piece.len() {
                    return Err(Error::Metadata(format!("the disk ended before byte {to} of {size}")));
                }
                task.advance(to - from);
                let sector = |at: u64| u32::try_from((at - start) / SECTOR_SIZE).unwrap_or(u32::MAX);
                sectors.push(sector(from)..sector(to.next_multiple_of(SECTOR_SIZE)));
            }
            if r.end > end {
                break;
            }
            pending.next();
        }
        written += w.write_block_sectors(b, &buf, &sectors)?;
    }
    w.finish()?;
    Ok(written)
}

/// A read error of the disk written from; the repository's own (damage, a wrong key)
/// keeps its kind through [`crate::RepoDisk`]'s I/O error.
fn read_error(e: std::io::Error) -> Error {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<xenvault_repo::Error>() {
            Ok(repo) => Error::Repo(*repo),
            Err(other) => Error::Io(std::io::Error::new(kind, other)),
        },
        None => Error::Io(kind.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_map_to_blocks() {
        let r: RangeSet = [0..512, 512..1024, 4096..4096, (2 << 20) - 512..(2 << 20) + 512, 9 << 20..(9 << 20) + 4096]
            .into_iter()
            .collect();
        assert_eq!(blocks_of(r.ranges()), vec![0, 1, 4]);
    }

    #[test]
    fn sectors_compare_with_holes_as_zeros() {
        let a = vec![0u8; 2048];
        let mut b = a.clone();
        b[600] = 1;
        b[2047] = 1;
        let mut r = RangeSet::new();
        push_differing_sectors(&mut r, 4096, 2048, Some(&a), Some(&b));
        push_differing_sectors(&mut r, 8192, 2048, None, Some(&a));
        push_differing_sectors(&mut r, 16384, 1024, Some(&b[..1024]), None);
        assert_eq!(r.ranges(), [4096 + 512..4096 + 1024, 4096 + 1536..4096 + 2048, 16384 + 512..16384 + 1024]);
    }
}
