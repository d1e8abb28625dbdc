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
