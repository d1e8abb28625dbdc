//! A stored disk as a synchronous random-access source for the file system readers.

use std::io;
use std::sync::Arc;
use tokio::runtime::Handle;
use xenvault_repo::DiskReader;

/// A disk of a restore point, readable with [`xenvault_fsread::ReadAt`]. Reads are
/// authenticated chunk by chunk by the repository. Use it only from blocking threads
/// (`spawn_blocking`): each read waits on the async reader through `handle`.
#[derive(Clone)]
pub struct RepoDisk {
    reader: Arc<DiskReader>,
    handle: Handle,
}

impl RepoDisk {
    pub fn new(reader: Arc<DiskReader>, handle: Handle) -> Self {
        RepoDisk { reader, handle }
    }

    pub fn reader(&self) -> &Arc<DiskReader> {
        &self.reader
    }
}

impl xenvault_fsread::ReadAt for RepoDisk {
    fn size(&self) -> u64 {
        self.reader.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.reader.size();
        if offset >= size {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let Some(part) = buf.get_mut(..n) else { return Ok(0) };
        self.handle.block_on(self.reader.read_at(offset, part)).map_err(io::Error::other)?;
        Ok(n)
    }
}
