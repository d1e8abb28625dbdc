//! Exports of a stored disk to a stream: raw, dynamic VHD and qcow2. Zero ranges of the
//! restore point (holes) are left out of the sparse formats.

use crate::{Error, RepoDisk, Result};
use std::io::Write;
use std::sync::Arc;

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

/// Called with the number of disk bytes done since the last call.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

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
    let slots = reader.disk().slot_count();
    let mut present = Vec::new();
    for slot in 0..slots {
        if !handle.block_on(reader.chunk_id(slot))?.is_zero() {
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

/// Writes a dynamic VHD of the disk holding only the 2 MiB `blocks` (increasing); returns
/// the disk bytes read. Blocking.
pub fn write_vhd(disk: &RepoDisk, blocks: &[u64], out: impl Write, progress: Option<&Progress>) -> Result<u64> {
    let handle = tokio::runtime::Handle::current();
    let reader = disk.reader();
    let size = reader.size();
    let blocks = blocks.iter().map(|&b| u32::try_from(b)).collect::<Result<Vec<_>, _>>();
    let blocks = blocks.map_err(|_| Error::Unsupported("disk too large for a VHD".into()))?;
    let mut w = xenvault_vhd::DynamicWriter::dynamic(out, size, blocks.iter().copied(), Default::default())?;
    let mut read = 0;
    for &b in &blocks {
        let offset = u64::from(b) * VHD_BLOCK;
        let mut buf = vec![0u8; (size - offset).min(VHD_BLOCK) as usize];
        handle.block_on(reader.read_at(offset, &mut buf))?;
        w.write_block(b, &buf)?;
        read += buf.len() as u64;
        if let Some(p) = progress {
            p(buf.len() as u64);
        }
    }
    w.finish()?;
    Ok(read)
}

/// Size of the VHD [`write_vhd`] writes.
pub fn vhd_size(disk_size: u64, blocks: usize) -> u64 {
    xenvault_vhd::DynamicWriter::<std::io::Sink>::output_size(disk_size, blocks as u64)
}

/// Writes the disk to `out` in `format`. Blocking: call from `spawn_blocking`.
pub fn export(disk: &RepoDisk, format: DiskFormat, out: impl Write, progress: Option<Progress>) -> Result<ExportStats> {
    let started = std::time::Instant::now();
    let handle = tokio::runtime::Handle::current();
    let reader = disk.reader().clone();
    let size = reader.size();
    let read = |offset: u64, len: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        handle.block_on(reader.read_at(offset, &mut buf))?;
        if let Some(p) = &progress {
            p(len);
        }
        Ok(buf)
    };
    let mut out = Counting { inner: std::io::BufWriter::with_capacity(1 << 20, out), count: 0 };
    let mut stats = ExportStats { disk_bytes: size, ..Default::default() };
    match format {
        DiskFormat::Raw => {
            let cs = reader.chunk_size();
            let zeros = vec![0u8; cs as usize];
            for slot in 0..reader.disk().slot_count() {
                let offset = slot * cs;
                let len = (size - offset).min(cs);
                if handle.block_on(reader.chunk_id(slot))?.is_zero() {
                    out.write_all(zeros.get(..len as usize).unwrap_or(&zeros))?;
                    if let Some(p) = &progress {
                        p(len);
                    }
                } else {
                    out.write_all(&read(offset, len)?)?;
                    stats.data_bytes += len;
                }
            }
        }
        DiskFormat::Vhd => {
            let present = present_units(disk, &handle, VHD_BLOCK)?;
            stats.data_bytes = write_vhd(disk, &present, &mut out, progress.as_ref())?;
        }
        DiskFormat::Qcow2 => {
            let present = present_units(disk, &handle, crate::qcow2::CLUSTER)?;
            let mut w = crate::qcow2::Qcow2Writer::new(&mut out, size, &present)?;
            for &c in &present {
                let offset = c * crate::qcow2::CLUSTER;
                let len = (size - offset).min(crate::qcow2::CLUSTER);
                w.write_cluster(c, &read(offset, len)?)?;
                stats.data_bytes += len;
            }
            w.finish()?;
        }
    }
    out.flush()?;
    stats.output_bytes = out.count;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}
