//! Random-access byte sources: the disk, slices of it (partitions), mapped extents (LVs),
//! a metadata cache, and a `Read + Seek` adapter for crates that want one.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

/// A read-only random-access source, e.g. a disk image in a backup repository.
pub trait ReadAt: Send + Sync {
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the source.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match std::os::unix::fs::FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

/// Fills `buf` completely or fails with `UnexpectedEof`.
pub fn read_exact_at(src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let n = src.read_at(offset, buf)?;
    if n < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {} bytes at {offset} is past the end ({} bytes)", buf.len(), src.size()),
        ));
    }
    Ok(())
}

/// Reads `len` bytes at `offset` into a new buffer.
pub(crate) fn read_vec(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    read_exact_at(src, offset, &mut buf)?;
    Ok(buf)
}

/// Pieces of a volume: (offset in volume, offset in the inner source, length).
#[derive(Clone)]
pub(crate) struct Mapped {
    inner: Arc<dyn ReadAt>,
    segments: Vec<(u64, u64, u64)>,
    size: u64,
}

impl Mapped {
    /// A contiguous slice, as for a partition.
    pub(crate) fn slice(inner: Arc<dyn ReadAt>, offset: u64, len: u64) -> Self {
        Self { inner, segments: vec![(0, offset, len)], size: len }
    }

    pub(crate) fn new(inner: Arc<dyn ReadAt>, mut segments: Vec<(u64, u64, u64)>, size: u64) -> Self {
        segments.sort_unstable();
        Self { inner, segments, size }
    }
}

impl ReadAt for Mapped {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let seg = self.segments.iter().find(|(start, _, len)| pos >= *start && pos - start < *len);
            let Some(&(start, inner_off, len)) = seg else {
                // Unmapped range (should not happen for valid LVs): reads as zeros.
                let next = self.segments.iter().map(|s| s.0).filter(|&s| s > pos).min().unwrap_or(self.size);
                let n = ((next - pos) as usize).min(want - done);
                buf[done..done + n].fill(0);
                done += n;
                continue;
            };
            let n = ((start + len - pos) as usize).min(want - done);
            let got = self.inner.read_at(inner_off + (pos - start), &mut buf[done..done + n])?;
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }
}

const CACHE_BLOCK: u64 = 64 * 1024;
const CACHE_BLOCKS: usize = 1024;

/// Caches small reads (metadata: superblocks, inodes, directories, extent trees) in 64 KiB
/// blocks, since every read of the underlying repository is expensive. Large reads (file
/// data) bypass the cache so they do not evict metadata.
pub struct Cached {
    inner: Arc<dyn ReadAt>,
    blocks: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl Cached {
    pub fn new(inner: Arc<dyn ReadAt>) -> Self {
        Self { inner, blocks: Mutex::new(HashMap::new()) }
    }

    fn block(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blocks.lock().ok().and_then(|m| m.get(&index).cloned()) {
            return Ok(b);
        }
        let start = index * CACHE_BLOCK;
        let mut data = vec![0; CACHE_BLOCK.min(self.inner.size().saturating_sub(start)) as usize];
        let n = self.inner.read_at(start, &mut data)?;
        data.truncate(n);
        let data = Arc::new(data);
        if let Ok(mut map) = self.blocks.lock() {
            if map.len() >= CACHE_BLOCKS {
                // Crude but bounded: metadata working sets are small.
                map.clear();
            }
            map.insert(index, data.clone());
        }
        Ok(data)
    }
}

impl ReadAt for Cached {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() as u64 >= CACHE_BLOCK {
            return self.inner.read_at(offset, buf);
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = self.block(pos / CACHE_BLOCK)?;
            let within = (pos % CACHE_BLOCK) as usize;
            let Some(avail) = block.get(within..) else { break };
            let n = avail.len().min(buf.len() - done);
            if n == 0 {
                break;
            }
            buf[done..done + n].copy_from_slice(&avail[..n]);
            done += n;
        }
        Ok(done)
    }
}

/// `Read + Seek` (and a `Write` that always fails) over a source, for the ext4, NTFS and
/// FAT crates. Nothing is ever written: the FAT crate only needs the trait bound.
#[derive(Clone)]
pub(crate) struct Cursor {
    src: Arc<dyn ReadAt>,
    pos: u64,
}

impl Cursor {
    pub(crate) fn new(src: Arc<dyn ReadAt>) -> Self {
        Self { src, pos: 0 }
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.src.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

impl Write for Cursor {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "file systems are opened read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ext4_view::Ext4Read for Cursor {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(read_exact_at(&*self.src, start_byte, dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_reads_across_segments_and_stops_at_end() {
        let disk: Arc<dyn ReadAt> = Arc::new((0..100u8).collect::<Vec<_>>());
        let lv = Mapped::new(disk, vec![(5, 10, 5), (0, 50, 5)], 10);
        let mut buf = [0; 12];
        assert_eq!(lv.read_at(3, &mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], &[53, 54, 10, 11, 12, 13, 14]);
    }

    #[test]
    fn cache_returns_same_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let cached = Cached::new(Arc::new(data.clone()));
        let mut buf = [0; 100];
        cached.read_at(65_500, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[65_500..65_600]);
        assert_eq!(cached.read_at(299_990, &mut buf).unwrap(), 10);
    }
}
