//! Exports of a stored disk to a stream: raw, dynamic VHD and qcow2. Zero ranges of the
//! restore point (holes) are left out of the sparse formats.

use crate::{Error, RepoDisk, Result};
use std::io::Write;
use std::ops::Range;
use tokio_util::sync::CancellationToken;
use xenvault_repo::DiskReader;
use xenvault_repo::ordered::{OrderedChunks, SlotData};
use xenvault_types::progress::Task;

/// xapi's VHD block size (crates/vhd writes only this one).
pub const VHD_BLOCK: u64 = 2 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Vhd,
    Qcow2,
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "vhd" => Ok(DiskFormat::Vhd),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!("unknown disk format {other:?} (raw, vhd, qcow2)")),
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportStats {
    /// Bytes of the disk.
    pub disk_bytes: u64,
    /// Disk bytes read from the repository (the rest were holes).
    pub data_bytes: u64,
    /// Bytes written to the output.
    pub output_bytes: u64,
    pub seconds: f64,
}

/// A `Write` that counts what passes through.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Which `unit`-sized, `unit`-aligned ranges of the disk hold stored data. `unit` must be
/// a multiple of the repository's chunk size or divide it.
pub(crate) fn present_units(disk: &RepoDisk, handle: &tokio::runtime::Handle, unit: u64) -> Result<Vec<u64>> {
    let reader = disk.reader();
    let cs = reader.chunk_size();
    let per_page = u64::from(reader.disk().page_slots);
    let mut present = Vec::new();
    for page in 0..reader.disk().pages.len() as u64 {
        let ids = handle.block_on(reader.page(page))?;
        for (i, id) in ids.iter().enumerate() {
            if id.is_zero() {
                continue;
            }
            let slot = page * per_page + i as u64;
            let first = slot * cs / unit;
            let last = ((slot + 1) * cs).min(reader.size()).div_ceil(unit);
            for u in first..last {
                if present.last().is_none_or(|&p| p < u) {
                    present.push(u);
                }
            }
        }
    }
    Ok(present)
}

/// Reads increasing pieces of the disk from one ordered, read-ahead stream of its chunks.
struct InOrder {
    chunks: OrderedChunks,
    current: Option<SlotData>,
}

impl InOrder {
    /// Streams the chunks under the `unit`-sized pieces `units` (increasing).
    fn new(reader: &DiskReader, handle: &tokio::runtime::Handle, units: &[u64], unit: u64) -> Result<Self> {
        let cs = reader.chunk_size();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for &u in units {
            let start = u.saturating_mul(unit) / cs;
            let end = u.saturating_add(1).saturating_mul(unit).min(reader.size()).div_ceil(cs);
            match ranges.last_mut() {
                Some(last) if start <= last.end => last.end = last.end.max(end),
                _ => ranges.push(start..end),
            }
        }
        let chunks = {
            let _runtime = handle.enter();
            reader.chunks_in_order(ranges)?
        };
        Ok(InOrder { chunks, current: None })
    }

    /// The next chunk of the stream.
    fn next(&mut self) -> Result<Option<SlotData>> {
        Ok(self.chunks.blocking_next().transpose()?)
    }

    /// Fills `buf` with the disk's bytes at `offset`; offsets must not go backwards.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            while self.current.as_ref().is_none_or(|c| c.offset + c.len as u64 <= at) {
                self.current = Some(
                    self.next()?.ok_or_else(|| Error::Task(format!("disk read at {at} past the planned chunks")))?,
                );
            }
            let Some(c) = &self.current else { continue };
            let within =
                at.checked_sub(c.offset).ok_or_else(|| Error::Task(format!("disk read at {at} went backwards")))?
                    as usize;
            let n = (c.len - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match &c.data {
                Some(d) => {
                    out.copy_from_slice(d.get(within..within + n).ok_or_else(|| Error::Task("short chunk".into()))?)
                }
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}

/// Writes a dynamic VHD of the disk holding only the 2 MiB `blocks` (increasing); returns
/// the disk bytes read. Blocking. `task` counts the disk's bytes, the blocks left out
/// (zeros) as passed, so it ends at the disk's size.
pub fn write_vhd(
    disk: &RepoDisk,
    blocks: &[u64],
    out: impl Write,
    task: &Task,
    cancel: &CancellationToken,
) -> Result<u64> {
    let handle = tokio::runtime::Handle::current();
    let reader = disk.reader();
    let size = reader.size();
    let mut source = InOrder::new(reader, &handle, blocks, VHD_BLOCK)?;
    let blocks = blocks.iter().map(|&b| u32::try_from(b)).collect::<Result<Vec<_>, _>>();
    let blocks = blocks.map_err(|_| Error::Unsupported("disk too large for a VHD".into()))?;
    let mut w = xenvault_vhd::DynamicWriter::dynamic(out, size, blocks.iter().copied(), Default::default())?;
    let mut buf = vec![0u8; VHD_BLOCK as usize];
    let mut read = 0;
    for &b in &blocks {
        unless_cancelled(cancel)?;
        let offset = u64::from(b) * VHD_BLOCK;
        let len = size.saturating_sub(offset).min(VHD_BLOCK) as usize;
        let block = &mut buf[..len];
        source.read(offset, block)?;
        w.write_block(b, block)?;
        read += len as u64;
        task.reach(offset + len as u64);
    }
    w.finish()?;
    task.reach(size);
    Ok(read)
}

/// Stops blocking work once `cancel` fires.
pub(crate) fn unless_cancelled(cancel: &CancellationToken) -> Result<()> {
    if cancel.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
}

/// Size of the VHD [`write_vhd`] writes.
pub fn vhd_size(disk_size: u64, blocks: usize) -> u64 {
    xenvault_vhd::DynamicWriter::<std::io::Sink>::output_size(disk_size, blocks as u64)
}

/// Writes the disk to `out` in `format`; `task` goes to the disk's size. Blocking: call
/// from `spawn_blocking`.
pub fn export(
    disk: &RepoDisk,
    format: DiskFormat,
    out: impl Write,
    task: &Task,
    cancel: &CancellationToken,
) -> Result<ExportStats> {
    let started = std::time::Instant::now();
    let handle = tokio::runtime::Handle::current();
    let reader = disk.reader();
    let size = reader.size();
    let mut out = Counting { inner: std::io::BufWriter::with_capacity(1 << 20, out), count: 0 };
    let mut stats = ExportStats { disk_bytes: size, ..Default::default() };
    match format {
        DiskFormat::Raw => {
            let zeros = vec![0u8; reader.chunk_size() as usize];
            let mut chunks = {
                let _runtime = handle.enter();
                reader.all_chunks_in_order()?
            };
            while let Some(s) = chunks.blocking_next().transpose()? {
                unless_cancelled(cancel)?;
                match &s.data {
                    Some(data) => {
                        out.write_all(data)?;
                        stats.data_bytes += s.len as u64;
                    }
                    None => out.write_all(zeros.get(..s.len).unwrap_or(&zeros))?,
                }
                task.advance(s.len as u64);
            }
        }
        DiskFormat::Vhd => {
            let present = present_units(disk, &handle, VHD_BLOCK)?;
            stats.data_bytes = write_vhd(disk, &present, &mut out, task, cancel)?;
        }
        DiskFormat::Qcow2 => {
            use crate::qcow2::CLUSTER;
            let present = present_units(disk, &handle, CLUSTER)?;
            let mut source = InOrder::new(reader, &handle, &present, CLUSTER)?;
            let mut w = crate::qcow2::Qcow2Writer::new(&mut out, size, &present)?;
            let mut buf = vec![0u8; CLUSTER as usize];
            for &c in &present {
                unless_cancelled(cancel)?;
                let offset = c * CLUSTER;
                let cluster = &mut buf[..size.saturating_sub(offset).min(CLUSTER) as usize];
                source.read(offset, cluster)?;
                w.write_cluster(c, cluster)?;
                stats.data_bytes += cluster.len() as u64;
                task.reach(offset + cluster.len() as u64);
            }
            w.finish()?;
            task.reach(size);
        }
    }
    out.flush()?;
    stats.output_bytes = out.count;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}
