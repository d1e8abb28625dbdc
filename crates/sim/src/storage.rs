//! Disk contents: sparse and copy-on-write. All disks share one slot file of 64 KiB
//! slots; each disk maps its block numbers to slots. Snapshots and clones copy only
//! the map (instant, no data), a write to a shared slot copies it first, unwritten
//! blocks read as zeros and cost nothing. Data stays on disk, maps in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Storage granularity, equal to the CBT block so a write marks exactly its blocks.
pub const BLOCK: u64 = 64 * 1024;

#[derive(Debug, Default, Clone)]
struct Disk {
    size: u64,
    blocks: BTreeMap<u64, u64>,
}

pub struct Storage {
    dir: PathBuf,
    slots: File,
    refcounts: Vec<u32>,
    free: Vec<u64>,
    disks: HashMap<String, Disk>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Storage {
    /// Opens (or creates) the store in `dir`, reloading every disk map.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join("maps"))?;
        let slots =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("slots.dat"))?;
        let slot_count = slots.metadata()?.len().div_ceil(BLOCK);
        let mut store = Storage {
            dir: dir.to_owned(),
            slots,
            refcounts: vec![0; usize::try_from(slot_count).map_err(|e| invalid(e.to_string()))?],
            free: Vec::new(),
            disks: HashMap::new(),
        };
        for entry in fs::read_dir(dir.join("maps"))? {
            let path = entry?.path();
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
            if path.extension().and_then(|e| e.to_str()) != Some("map") {
                continue;
            }
            let disk = read_map(&path)?;
            for &slot in disk.blocks.values() {
                match store.refcounts.get_mut(slot as usize) {
                    Some(rc) => *rc += 1,
                    None => return Err(invalid(format!("{}: slot {slot} beyond the slot file", path.display()))),
                }
            }
            store.disks.insert(id, disk);
        }
        store.free = (0..slot_count).filter(|&s| store.refcounts[s as usize] == 0).rev().collect();
        Ok(store)
    }

    pub fn size(&self, id: &str) -> io::Result<u64> {
        Ok(self.disk(id)?.size)
    }

    fn disk(&self, id: &str) -> io::Result<&Disk> {
        self.disks.get(id).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no disk {id}")))
    }

    pub fn create(&mut self, id: &str, size: u64) -> io::Result<()> {
        self.disks.insert(id.to_owned(), Disk { size, blocks: BTreeMap::new() });
        self.save(id)
    }

    /// A new disk sharing all data of `src` (snapshot, clone).
    pub fn share(&mut self, src: &str, dst: &str) -> io::Result<()> {
        let disk = self.disk(src)?.clone();
        for &slot in disk.blocks.values() {
            self.refcounts[slot as usize] += 1;
        }
        self.disks.insert(dst.to_owned(), disk);
        self.save(dst)
    }

    /// Drops a disk's data (destroy, data_destroy).
    pub fn remove(&mut self, id: &str) -> io::Result<()> {
        if let Some(disk) = self.disks.remove(id) {
            for slot in disk.blocks.into_values() {
                self.release(slot);
            }
        }
        match fs::remove_file(self.map_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn resize(&mut self, id: &str, size: u64) -> io::Result<()> {
        let blocks = size.div_ceil(BLOCK);
        let disk = self.disks.get_mut(id).ok_or_else(|| invalid(format!("no disk {id}")))?;
        disk.size = size;
        let dropped: Vec<u64> = disk.blocks.split_off(&blocks).into_values().collect();
        for slot in dropped {
            self.release(slot);
        }
        self.save(id)
    }

    fn release(&mut self, slot: u64) {
        if let Some(rc) = self.refcounts.get_mut(slot as usize) {
            *rc = rc.saturating_sub(1);
            if *rc == 0 {
                self.free.push(slot);
            }
        }
    }

    fn allocate(&mut self) -> u64 {
        if let Some(slot) = self.free.pop() {
            self.refcounts[slot as usize] = 1;
            return slot;
        }
        self.refcounts.push(1);
        self.refcounts.len() as u64 - 1
    }

    /// Bytes of data a disk holds (its `physical_utilisation`).
    pub fn allocated(&self, id: &str) -> u64 {
        self.disks.get(id).map_or(0, |d| d.blocks.len() as u64 * BLOCK)
    }

    /// Whether block `index` (of `BLOCK` bytes) holds data.
    pub fn is_allocated(&self, id: &str, index: u64) -> bool {
        self.disks.get(id).is_some_and(|d| d.blocks.contains_key(&index))
    }

    /// Whether block `index` of `a` is unchanged since `b` shared its data: both
    /// map it to the same slot (or both have a hole). A block written since, even
    /// with the same bytes, differs, as in a VHD chain.
    pub fn same_block(&self, a: &str, b: &str, index: u64) -> bool {
        let slot = |id: &str| self.disks.get(id).and_then(|d| d.blocks.get(&index).copied());
        slot(a) == slot(b)
    }

    /// Reads `buf.len()` bytes at `offset`; holes read as zeros.
    pub fn read(&self, id: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let disk = self.disk(id)?;
        check_range(disk.size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (index, within) = (pos / BLOCK, pos % BLOCK);
            let n = ((BLOCK - within) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match disk.blocks.get(&index) {
                Some(&slot) => self.slots.read_exact_at(chunk, slot * BLOCK + within)?,
                None => chunk.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` (a guest write); returns the blocks touched, for CBT.
    /// Call [`Storage::persist`] after a batch of writes.
    pub fn write(&mut self, id: &str, offset: u64, data: &[u8]) -> io::Result<Vec<u64>> {
        check_range(self.disk(id)?.size, offset, data.len())?;
        let mut touched = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (index, within) = (pos / BLOCK, pos % BLOCK);
            let n = ((BLOCK - within) as usize).min(data.len() - done);
            self.write_block(id, index, within, &data[done..done + n])?;
            touched.push(index);
            done += n;
        }
        Ok(touched)
    }

    fn write_block(&mut self, id: &str, index: u64, within: u64, chunk: &[u8]) -> io::Result<()> {
        let current = self.disk(id)?.blocks.get(&index).copied();
        let whole = chunk.len() as u64 == BLOCK;
        if whole && chunk.iter().all(|&b| b == 0) {
            // A block written with zeros becomes a hole again: keeps disks sparse.
            if let Some(slot) = current {
                self.unmap(id, index);
                self.release(slot);
            }
            return Ok(());
        }
        match current {
            Some(slot) if self.refcounts[slot as usize] == 1 => {
                self.slots.write_all_at(chunk, slot * BLOCK + within)?;
            }
            _ => {
                // Copy-on-write: the old block (or zeros) merged with the new bytes.
                let mut block = vec![0u8; BLOCK as usize];
                if let Some(slot) = current {
                    self.slots.read_exact_at(&mut block, slot * BLOCK)?;
                }
                block[within as usize..within as usize + chunk.len()].copy_from_slice(chunk);
                let slot = self.allocate();
                self.slots.write_all_at(&block, slot * BLOCK)?;
                if let Some(d) = self.disks.get_mut(id) {
                    d.blocks.insert(index, slot);
                }
                if let Some(old) = current {
                    self.release(old);
                }
            }
        }
        Ok(())
    }

    fn unmap(&mut self, id: &str, index: u64) {
        if let Some(d) = self.disks.get_mut(id) {
            d.blocks.remove(&index);
        }
    }

    fn map_path(&self, id: &str) -> PathBuf {
        self.dir.join("maps").join(format!("{id}.map"))
    }

    /// Persists one disk's map after writes.
    pub fn persist(&self, id: &str) -> io::Result<()> {
        self.save(id)
    }

    /// Persists one disk's map (atomically: write then rename).
    fn save(&self, id: &str) -> io::Result<()> {
        let disk = self.disk(id)?;
        let mut bytes = Vec::with_capacity(8 + disk.blocks.len() * 16);
        bytes.extend_from_slice(&disk.size.to_le_bytes());
        for (index, slot) in &disk.blocks {
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(&slot.to_le_bytes());
        }
        let path = self.map_path(id);
        let tmp = path.with_extension("tmp");
        File::create(&tmp)?.write_all(&bytes)?;
        fs::rename(tmp, path)
    }
}

fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(invalid(format!("range {offset}+{len} is outside the disk ({size} bytes)"))),
    }
}

fn read_map(path: &Path) -> io::Result<Disk> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let corrupt = || invalid(format!("{}: corrupt disk map", path.display()));
    let (head, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    if rest.len() % 16 != 0 {
        return Err(corrupt());
    }
    let mut blocks = BTreeMap::new();
    for pair in rest.chunks_exact(16) {
        let (index, slot) = pair.split_at(8);
        let index = u64::from_le_bytes(index.try_into().map_err(|_| corrupt())?);
        let slot = u64::from_le_bytes(slot.try_into().map_err(|_| corrupt())?);
        blocks.insert(index, slot);
    }
    Ok(Disk { size: u64::from_le_bytes(*head), blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write_keeps_snapshot_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path()).unwrap();
        s.create("a", 1 << 20).unwrap();
        s.write("a", 100, b"hello").unwrap();
        s.share("a", "snap").unwrap();
        s.write("a", 100, b"world").unwrap();
        s.persist("a").unwrap();
        let mut buf = [0u8; 5];
        s.read("snap", 100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        s.read("a", 100, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        drop(s);
        let s = Storage::open(dir.path()).unwrap();
        s.read("snap", 100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(s.allocated("a"), BLOCK);
        assert!(s.read("a", (1 << 20) - 2, &mut buf).is_err());
    }
}
