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
