//! Block sources: what a backup reads a disk from.

use crate::error::{Error, Result};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A disk to back up, readable at any offset from any thread.
pub trait BlockSource: Send + Sync {
    /// Virtual size of the disk in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; reads past the end are an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Ranges that may hold data; everything else reads as zeros. `None`: all of it.
    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
}

/// A raw disk image file (or block device).
pub struct RawFileSource {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
}

impl RawFileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| Error::Io { path: path.to_path_buf(), source: e };
        let file = std::fs::File::open(path).map_err(io)?;
        // seek(End) also gives block devices their size, where metadata says 0.
        let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(RawFileSource { file, path: path.to_path_buf(), size })
    }
}

impl BlockSource for RawFileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::Io { path: self.path.clone(), source: e })
    }

    /// The data extents of a sparse image file, so its holes are never read.
    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        let io = |e| Error::Io { path: self.path.clone(), source: e };
        if !self.file.metadata().map_err(io)?.is_file() {
            return Ok(None);
        }
        data_extents(&self.file, self.size).map_err(io)
    }
}

/// Ranges holding data per SEEK_DATA / SEEK_HOLE; `None` when the file system cannot tell.
fn data_extents(file: &std::fs::File, size: u64) -> std::io::Result<Option<Vec<Range<u64>>>> {
    use std::os::fd::AsRawFd;
    // Some(position), or None for ENXIO: no data (or hole) at or after `at`.
    let seek = |at: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let at = libc::off_t::try_from(at).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek only moves the position of a descriptor this file owns; reads use pread.
        let got = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        match u64::try_from(got) {
            Ok(pos) => Ok(Some(pos)),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) }
            }
        }
    };
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(start)) if start < size => start,
            Ok(_) => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            return Ok(None);
        }
        extents.push(start..end);
        at = end;
    }
    Ok(Some(extents))
}

/// A fixed or dynamic VHD file; its block allocation table tells which ranges to read.
pub struct VhdFileSource {
    reader: std::sync::Mutex<xenvault_vhd::VhdReader<std::fs::File>>,
    path: PathBuf,
    size: u64,
    allocated: Vec<Range<u64>>,
}

impl VhdFileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |e: xenvault_vhd::Error| Error::Invalid(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let reader = xenvault_vhd::VhdReader::open(file).map_err(bad)?;
        if reader.disk_type() == xenvault_vhd::DiskType::Differencing {
            return Err(Error::Invalid(format!(
                "{} is a differencing VHD: back up its chain through the engine instead",
                path.display()
            )));
        }
        let size = reader.disk_size();
        let bs = reader.block_size();
        let allocated = reader.present_blocks().map(|b| (b as u64 * bs)..((b as u64 + 1) * bs).min(size)).collect();
        Ok(VhdFileSource { reader: std::sync::Mutex::new(reader), path: path.to_path_buf(), size, allocated })
    }
}

impl BlockSource for VhdFileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.read_at(offset, buf).map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))
    }

    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        Ok(Some(self.allocated.clone()))
    }
}

/// Opens an image file by its content: a VHD (footer cookie `conectix`) or raw.
pub fn open_image(path: &Path) -> Result<std::sync::Arc<dyn BlockSource>> {
    let io = |e| Error::Io { path: path.to_path_buf(), source: e };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
    let mut cookie = [0u8; 8];
    let is_vhd = len >= 512 && file.read_exact_at(&mut cookie, len - 512).is_ok() && &cookie == b"conectix";
    Ok(if is_vhd { std::sync::Arc::new(VhdFileSource::open(path)?) } else { std::sync::Arc::new(RawFileSource::open(path)?) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_raw_image_lists_only_its_data_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(256 << 20).unwrap();
        let written = [(1u64 << 20, 4096u64), (100 << 20, 10_000), ((256 << 20) - 512, 512)];
        for &(at, len) in &written {
            file.write_all_at(&vec![0xa5; len as usize], at).unwrap();
        }
        let source = RawFileSource::open(&path).unwrap();
        let extents = source.allocated().unwrap().expect("ext4 and tmpfs report holes");
        assert!(extents.windows(2).all(|w| w[0].end < w[1].start), "{extents:?}");
        for (at, len) in written {
            assert!(extents.iter().any(|e| e.start <= at && at + len <= e.end), "{at}+{len} not in {extents:?}");
        }
        let covered: u64 = extents.iter().map(|e| e.end - e.start).sum();
        assert!(covered <= 4 << 20, "{covered} bytes listed as data: {extents:?}");

        let empty = dir.path().join("empty.img");
        std::fs::File::create(&empty).unwrap().set_len(1 << 30).unwrap();
        assert_eq!(RawFileSource::open(&empty).unwrap().allocated().unwrap(), Some(vec![]));
    }
}
