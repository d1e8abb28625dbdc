//! Differential restore over an existing disk: find where the disk differs from the
//! restore point, then send one dynamic VHD whose blocks mark only those sectors present.
//! xapi's VHD import (vhd-tool) writes only the sectors whose bitmap bit is set, so the
//! host writes about as much as changed, though the wire carries whole 2 MiB blocks.
//!
//! Where it differs, best first:
//! - CBT: the restore point's snapshot VDI still exists (the engine keeps the last one as
//!   `cbt_metadata`) and the disk has CBT on: `VDI.list_changed_blocks(snapshot, disk)`
//!   names the 64 KiB blocks written since; nothing of the disk is read.
//! - hash: the disk is streamed from the host and each repository chunk hashed with the
//!   repository's chunk-id key; only chunks whose id differs are read from the restore
//!   point, and compared sector by sector so only differing sectors are written.

use crate::export::VHD_BLOCK;
use crate::{Error, RepoDisk, Result};
use futures::StreamExt;
use std::ops::Range;
use xenvault_repo::crypto::ChunkId;
use xenvault_repo::{DiskReader, Repository};
use xenvault_vhd::{DynamicWriter, SECTOR_SIZE};
use xenvault_xapi::{Client, DiskFormat, Ref, Value};
use xenvault_xapi_wire::cbt::{BLOCK_SIZE as CBT_BLOCK, ChangedBlocks};

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

/// Appends `r` to increasing disjoint ranges, merging it with the last when they touch.
fn push_range(ranges: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => ranges.push(r),
    }
}

/// Where the VDI `vdi` differs from the restore point read by `reader`, whose disk was
/// backed up from the snapshot VDI `snapshot_uuid` (empty when unknown).
pub(crate) async fn plan(
    client: &Client,
    repo: &Repository,
    vdi: &str,
    snapshot_uuid: &str,
    reader: &DiskReader,
    progress: Option<&crate::export::Progress>,
) -> Result<Plan> {
    let reason = match changed_since_snapshot(client, vdi, snapshot_uuid, reader.size()).await? {
        Ok((ranges, reason)) => {
            if let Some(p) = progress {
                p(reader.size());
            }
            return Ok(Plan { method: Method::Cbt, reason, ranges, bytes_compared: 0 });
        }
        Err(why_not) => why_not,
    };
    let (ranges, bytes_compared) = differing_sectors(client, repo, vdi, reader, progress).await?;
    Ok(Plan { method: Method::Hash, reason, ranges, bytes_compared })
}

/// The 64 KiB blocks written to `vdi` since the snapshot, with why CBT could be used;
/// `Ok(Err(reason))` when it cannot. Only transport failures are errors.
async fn changed_since_snapshot(
    client: &Client,
    vdi: &str,
    snapshot_uuid: &str,
    size: u64,
) -> Result<std::result::Result<(Vec<Range<u64>>, String), String>> {
    let enabled = client.call("VDI.get_cbt_enabled", &[Value::from(vdi)]).await?;
    if enabled.as_bool() != Some(true) {
        return Ok(Err("CBT is off on the disk: compared chunk hashes".into()));
    }
    if snapshot_uuid.is_empty() {
        return Ok(Err("the restore point names no snapshot VDI: compared chunk hashes".into()));
    }
    let Some(snapshot) = crate::vm::by_uuid(client, "VDI", snapshot_uuid).await? else {
        return Ok(Err(format!(
            "the restore point's snapshot VDI {snapshot_uuid} is gone: compared chunk hashes"
        )));
    };
    let answer = match client.call("VDI.list_changed_blocks", &[Value::from(snapshot.as_str()), Value::from(vdi)]).await {
        Ok(a) => a,
        Err(e) => return Ok(Err(format!("VDI.list_changed_blocks failed ({e}): compared chunk hashes"))),
    };
    let Some(changed) = answer.as_str().and_then(|b| ChangedBlocks::decode(b).ok()) else {
        return Ok(Err(format!("VDI.list_changed_blocks returned no bitmap ({answer:?}): compared chunk hashes")));
    };
    if changed.block_count() < size.div_ceil(CBT_BLOCK) {
        return Ok(Err(format!(
            "the CBT bitmap covers {} blocks of a {size}-byte disk: compared chunk hashes",
            changed.block_count()
        )));
    }
    let ranges: Vec<_> = changed.ranges().map(|r| r.start.min(size)..r.end.min(size)).filter(|r| !r.is_empty()).collect();
    let reason = format!("CBT since the restore point's snapshot {snapshot_uuid}: {} blocks of 64 KiB changed", changed.changed_count());
    Ok(Ok((ranges, reason)))
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
    progress: Option<&crate::export::Progress>,
) -> Result<(Vec<Range<u64>>, u64)> {
    let mut body = client.export_raw_vdi(&Ref::new(vdi), DiskFormat::Raw, None).await?;
    let (size, cs) = (reader.size(), reader.chunk_size());
    let mut pending: Option<(u64, Hashing)> = None;
    let mut leftover = bytes::Bytes::new();
    let mut ranges = Vec::new();
    let mut read = 0u64;
    for slot in 0..reader.disk().slot_count() {
        let len = (size - slot * cs).min(cs) as usize;
        let mut chunk = Vec::with_capacity(len);
        while chunk.len() < len {
            if leftover.is_empty() {
                leftover = match body.next().await.transpose()? {
                    Some(b) => b,
                    None => return Err(Error::Metadata(format!("the host sent {} of {size} bytes of VDI {vdi}", read + chunk.len() as u64))),
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
        if let Some(p) = progress {
            p(len as u64);
        }
    }
    if let Some((done, job)) = pending {
        let (id, data) = job.await?;
        compare_chunk(reader, done, id, &data, &mut ranges).await?;
    }
    Ok((ranges, read))
}

/// Adds the sectors of chunk `slot` where the disk's `current` content (whose id is `id`)
/// differs from the restore point's.
async fn compare_chunk(reader: &DiskReader, slot: u64, id: ChunkId, current: &[u8], ranges: &mut Vec<Range<u64>>) -> Result<()> {
    if reader.chunk_id(slot).await? == id {
        return Ok(());
    }
    let start = slot * reader.chunk_size();
    let stored = reader.read_slot(slot).await?;
    let sector = SECTOR_SIZE as usize;
    for (n, theirs) in current.chunks(sector).enumerate() {
        let at = n * sector;
        let ours = stored.as_ref().and_then(|s| s.get(at..at + theirs.len()));
        let differs = match ours {
            Some(ours) => ours != theirs,
            None => theirs.iter().any(|&b| b != 0),
        };
        if differs {
            push_range(ranges, start + at as u64..start + (at + theirs.len()) as u64);
        }
    }
    Ok(())
}

/// What a differential upload cost.
pub(crate) struct Sent {
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

/// Sends the restore point's content of `ranges` into `vdi` as one VHD import.
pub(crate) async fn upload_ranges(client: &Client, vdi: &str, disk: RepoDisk, ranges: Vec<Range<u64>>) -> Result<Sent> {
    let size = disk.reader().size();
    let blocks = blocks_of(&ranges);
    let sent = DynamicWriter::<std::io::Sink>::output_size(size, blocks.len() as u64);
    let written = crate::vm::upload(client, vdi, DiskFormat::Vhd, sent, move |mut out| {
        let written = write_ranges(&disk, &blocks, &ranges, &mut out)?;
        std::io::Write::flush(&mut out)?;
        Ok(written)
    })
    .await?;
    Ok(Sent { written, sent })
}

/// Writes a dynamic VHD holding the restore point's sectors in `ranges` (the other
/// sectors of its blocks are zeros, marked absent). Blocking.
fn write_ranges(disk: &RepoDisk, blocks: &[u32], ranges: &[Range<u64>], out: impl std::io::Write) -> Result<u64> {
    let handle = tokio::runtime::Handle::current();
    let reader = disk.reader();
    let size = reader.size();
    let mut w = DynamicWriter::dynamic(out, size, blocks.iter().copied(), Default::default())?;
    let mut written = 0;
    let mut pending = ranges.iter().peekable();
    let mut buf = Vec::new();
    for &b in blocks {
        let start = u64::from(b) * VHD_BLOCK;
        let end = (start + VHD_BLOCK).min(size);
        buf.clear();
        buf.resize((end - start) as usize, 0);
        let mut sectors = Vec::new();
        while let Some(r) = pending.peek() {
            let (from, to) = (r.start.max(start), r.end.min(end));
            if from < to {
                let piece = buf.get_mut((from - start) as usize..(to - start) as usize).ok_or_else(|| Error::Metadata("range outside its block".into()))?;
                handle.block_on(reader.read_at(from, piece))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_map_to_blocks() {
        let mut r = Vec::new();
        push_range(&mut r, 0..512);
        push_range(&mut r, 512..1024);
        push_range(&mut r, 4096..4096);
        push_range(&mut r, (2 << 20) - 512..(2 << 20) + 512);
        push_range(&mut r, 9 << 20..(9 << 20) + 4096);
        assert_eq!(r, vec![0..1024, (2 << 20) - 512..(2 << 20) + 512, 9 << 20..(9 << 20) + 4096]);
        assert_eq!(blocks_of(&r), vec![0, 1, 4]);
    }
}
