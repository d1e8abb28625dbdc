//! A source disk read over NBD (the engine's connections) as the random-access source the
//! restore crate's VHD writer reads from, on its blocking thread.

use futures::TryStreamExt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::runtime::Handle;
use xenvault_nbd::MultiReader;

#[derive(Clone)]
pub(crate) struct NbdDisk {
    reader: Arc<MultiReader>,
    size: u64,
    handle: Handle,
    /// Bytes read so far (what the source pool sent).
    read: Arc<AtomicU64>,
}

impl NbdDisk {
    pub fn new(reader: MultiReader, size: u64) -> Self {
        NbdDisk { reader: Arc::new(reader), size, handle: Handle::current(), read: Arc::default() }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Reads `len` bytes at `offset` (async callers).
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), xenvault_nbd::Error> {
        let len = buf.len() as u64;
        let mut pieces = self.reader.read_ranges(std::iter::once((offset, len)));
        while let Some((at, data)) = pieces.try_next().await? {
            let start = usize::try_from(at - offset).unwrap_or(usize::MAX);
            if let Some(slot) = buf.get_mut(start..start + data.len()) {
                slot.copy_from_slice(&data);
            }
        }
        self.read.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the connections once no copy of this handle is left.
    pub async fn close(self) {
        if let Ok(reader) = Arc::try_unwrap(self.reader) {
            reader.close().await;
        }
    }
}

impl xenvault_fsread::ReadAt for NbdDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(self.size - offset).unwrap_or(usize::MAX));
        let Some(part) = buf.get_mut(..n) else { return Ok(0) };
        self.handle.block_on(self.read(offset, part)).map_err(io::Error::other)?;
        Ok(n)
    }
}
