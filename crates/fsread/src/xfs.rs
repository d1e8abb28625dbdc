//! XFS, read-only, written here (no crate exists): superblock, v2/v3 inodes, short-form,
//! block, leaf and node directories (by scanning their data blocks: no hash lookups
//! needed), extent lists and extent btrees, inline and remote symlinks. Paths are resolved
//! from the root inode, so the AG inode btrees are never read.

use crate::fsops::resolve;
use crate::source::{ReadAt, read_vec};
use crate::{Entry, EntryKind, Error, FileSystem, FsType, join, normalize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt { what: "XFS file system", detail: detail.into() }
}

fn be16(b: &[u8], at: usize) -> Result<u16, Error> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or_else(|| corrupt("structure truncated"))
}

fn be32(b: &[u8], at: usize) -> Result<u32, Error> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| corrupt("structure truncated"))
}

fn be64(b: &[u8], at: usize) -> Result<u64, Error> {
    Ok(u64::from(be32(b, at)?) << 32 | u64::from(be32(b, at + 4)?))
}

struct Superblock {
    block_size: u64,
    inode_size: u64,
    ag_blocks: u64,
    ag_count: u64,
    ag_blklog: u32,
    inopb_log: u32,
    dir_block_size: u64,
    root_ino: u64,
    v5: bool,
    ftype: bool,
}

impl Superblock {
    fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.get(..4) != Some(b"XFSB") {
            return Err(corrupt("bad superblock magic"));
        }
        let block_size = u64::from(be32(b, 4)?);
        let version = be16(b, 100)? & 0xf;
        let inode_size = u64::from(be16(b, 104)?);
        let block_log = u32::from(b[120]);
        let inopb_log = u32::from(b[123]);
        let ag_blklog = u32::from(b[124]);
        let dir_blklog = u32::from(b[192]);
        let v5 = version == 5;
        let sane = (512..=65536).contains(&block_size)
            && Some(block_size) == 1u64.checked_shl(block_log)
            && (256..=2048).contains(&inode_size)
            && inode_size.is_power_of_two()
            && Some(block_size / inode_size) == 1u64.checked_shl(inopb_log)
            && (1..=31).contains(&ag_blklog)
            && dir_blklog <= 8
            && (4..=5).contains(&version);
        if !sane {
            return Err(corrupt("superblock geometry is inconsistent"));
        }
        let ftype = if v5 { be32(b, 216)? & 0x1 != 0 } else { be32(b, 200)? & 0x200 != 0 };
        Ok(Self {
            block_size,
            inode_size,
            ag_blocks: u64::from(be32(b, 84)?),
            ag_count: u64::from(be32(b, 88)?),
            ag_blklog,
            inopb_log,
            dir_block_size: block_size << dir_blklog,
            root_ino: be64(b, 56)?,
            v5,
            ftype,
        })
    }

    /// Byte offset of a file system block number (AG number in the high bits).
    fn fsb_to_byte(&self, fsb: u64) -> Result<u64, Error> {
        let ag = fsb >> self.ag_blklog;
        let bno = fsb & ((1 << self.ag_blklog) - 1);
        if ag >= self.ag_count || bno >= self.ag_blocks {
            return Err(corrupt(format!("block {fsb} is outside the file system")));
        }
        Ok((ag * self.ag_blocks + bno) * self.block_size)
    }

    fn inode_byte(&self, ino: u64) -> Result<u64, Error> {
        let ag_bits = self.ag_blklog + self.inopb_log;
        let ag = ino >> ag_bits;
        let agino = ino & ((1 << ag_bits) - 1);
        let block = self
            .fsb_to_byte((ag << self.ag_blklog) | (agino >> self.inopb_log))
            .map_err(|_| corrupt(format!("inode {ino} is outside the file system")))?;
        Ok(block + (agino & ((1 << self.inopb_log) - 1)) * self.inode_size)
    }
}

/// A mapping of file blocks `[offset, offset + count)` to disk blocks from `block`.
#[derive(Clone, Copy, Debug)]
struct Extent {
    offset: u64,
    block: u64,
    count: u64,
    unwritten: bool,
}

fn parse_extent(rec: &[u8]) -> Result<Extent, Error> {
    let l0 = be64(rec, 0)?;
    let l1 = be64(rec, 8)?;
    Ok(Extent {
        unwritten: l0 >> 63 != 0,
        offset: (l0 & ((1 << 63) - 1)) >> 9,
        block: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        count: l1 & ((1 << 21) - 1),
    })
}

const FMT_LOCAL: u8 = 1;
const FMT_EXTENTS: u8 = 2;
const FMT_BTREE: u8 = 3;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;

struct Inode {
    ino: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    format: u8,
    nextents: u64,
    /// The data fork (inline data, extent records or btree root).
    fork: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> EntryKind {
        match self.mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File,
            S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }
}

/// Deepest extent btree accepted; real ones are a few levels.
const MAX_BTREE_LEVEL: u16 = 8;
/// Directory data lives below 32 GiB of directory address space; leaf and free-index
/// blocks sit above it and are not needed for scanning.
const DIR_LEAF_OFFSET: u64 = 32 << 30;
const EXTENT_CACHE: usize = 256;

pub(crate) struct XfsFs {
    source: Arc<dyn ReadAt>,
    sb: Superblock,
    extents: Mutex<HashMap<u64, Arc<Vec<Extent>>>>,
}

impl XfsFs {
    pub(crate) fn open(source: Arc<dyn ReadAt>) -> Result<Self, Error> {
        let sb = Superblock::parse(&read_vec(&*source, 0, 512)?)?;
        let fs = Self { source, sb, extents: Mutex::new(HashMap::new()) };
        let root = fs.inode(fs.sb.root_ino)?;
        if root.kind() != EntryKind::Dir {
            return Err(corrupt("root inode is not a directory"));
        }
        Ok(fs)
    }

    fn inode(&self, ino: u64) -> Result<Inode, Error> {
        let size = self.sb.inode_size as usize;
        let b = read_vec(&*self.source, self.sb.inode_byte(ino)?, size)?;
        if b.get(..2) != Some(b"IN") {
            return Err(corrupt(format!("inode {ino} has a bad magic number")));
        }
        let version = b[4];
        let core = if version >= 3 { 176 } else { 100 };
        let flags2 = if version >= 3 { be64(&b, 120)? } else { 0 };
        let (mtime, mtime_nsec) = if flags2 & (1 << 3) != 0 {
            // bigtime: nanoseconds since 1901-12-13 (-2^31 s).
            let ns = be64(&b, 40)?;
            ((ns / 1_000_000_000) as i64 - (1 << 31), (ns % 1_000_000_000) as u32)
        } else {
            (i64::from(be32(&b, 40)? as i32), be32(&b, 44)?)
        };
        let nextents = if flags2 & (1 << 4) != 0 { be64(&b, 24)? } else { u64::from(be32(&b, 76)?) };
        let forkoff = usize::from(b[82]) * 8;
        let fork_end = if forkoff > 0 { core + forkoff } else { size };
        let fork = b.get(core..fork_end).ok_or_else(|| corrupt(format!("inode {ino} fork offset")))?.to_vec();
        Ok(Inode {
            ino,
            mode: be16(&b, 2)?,
            uid: be32(&b, 8)?,
            gid: be32(&b, 12)?,
            size: be64(&b, 56)?,
            mtime,
            mtime_nsec,
            format: b[5],
            nextents,
            fork,
        })
    }

    /// The inode's extents sorted by file offset (cached: btrees cost reads).
    fn extent_map(&self, inode: &Inode) -> Result<Arc<Vec<Extent>>, Error> {
        if let Some(map) = self.extents.lock().ok().and_then(|m| m.get(&inode.ino).cloned()) {
            return Ok(map);
        }
        let mut out = Vec::new();
        match inode.format {
            FMT_EXTENTS => {
                let n = inode.nextents as usize;
                if n * 16 > inode.fork.len() {
                    return Err(corrupt(format!("inode {}: {n} extents do not fit its fork", inode.ino)));
                }
                for rec in inode.fork.chunks_exact(16).take(n) {
                    out.push(parse_extent(rec)?);
                }
            }
            FMT_BTREE => {
                let level = be16(&inode.fork, 0)?;
                let numrecs = usize::from(be16(&inode.fork, 2)?);
                let maxrecs = (inode.fork.len() - 4) / 16;
                if level == 0 || level > MAX_BTREE_LEVEL || numrecs > maxrecs {
                    return Err(corrupt(format!("inode {}: bad extent btree root", inode.ino)));
                }
                for i in 0..numrecs {
                    let ptr = be64(&inode.fork, 4 + maxrecs * 8 + i * 8)?;
                    self.btree_block(ptr, level - 1, &mut out)?;
                }
            }
            _ => {}
        }
        // Byte offsets of file blocks are computed as u64: an extent past that is corrupt.
        if out.iter().any(|e| (e.offset + e.count).checked_mul(self.sb.block_size).is_none()) {
            return Err(corrupt(format!("inode {}: an extent lies past the largest file offset", inode.ino)));
        }
        out.sort_by_key(|e| e.offset);
        let map = Arc::new(out);
        if let Ok(mut cache) = self.extents.lock() {
            if cache.len() >= EXTENT_CACHE {
                cache.clear();
            }
            cache.insert(inode.ino, map.clone());
        }
        Ok(map)
    }

    fn btree_block(&self, fsb: u64, level: u16, out: &mut Vec<Extent>) -> Result<(), Error> {
        let bs = self.sb.block_size as usize;
        let b = read_vec(&*self.source, self.sb.fsb_to_byte(fsb)?, bs)?;
        let magic = b.get(..4).unwrap_or_default();
        let hdr = match magic {
            b"BMA3" => 72,
            b"BMAP" => 24,
            _ => return Err(corrupt(format!("extent btree block {fsb}: bad magic"))),
        };
        let numrecs = usize::from(be16(&b, 6)?);
        if be16(&b, 4)? != level || out.len() > 1 << 24 {
            return Err(corrupt(format!("extent btree block {fsb}: wrong level or too many extents")));
        }
        if level == 0 {
            for i in 0..numrecs {
                out.push(parse_extent(
                    b.get(hdr + i * 16..hdr + i * 16 + 16).ok_or_else(|| corrupt("btree leaf overflows"))?,
                )?);
            }
        } else {
            let maxrecs = (bs - hdr) / 16;
            if numrecs > maxrecs {
                return Err(corrupt(format!("extent btree block {fsb}: {numrecs} records")));
            }
            for i in 0..numrecs {
                self.btree_block(be64(&b, hdr + maxrecs * 8 + i * 8)?, level - 1, out)?;
            }
        }
        Ok(())
    }

    /// Reads file bytes at `offset`: mapped blocks from disk, holes and unwritten extents
    /// as zeros. Does not stop at the inode size (directories read whole blocks).
    fn read_mapped(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let map = self.extent_map(inode)?;
        let bs = self.sb.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let fblock = pos / bs;
            // Last extent starting at or before this block.
            let idx = map.partition_point(|e| e.offset <= fblock);
            let ext = idx.checked_sub(1).and_then(|i| map.get(i)).filter(|e| fblock < e.offset + e.count);
            let n = match ext {
                Some(e) if !e.unwritten => {
                    let end = (e.offset + e.count) * bs;
                    let n = ((end - pos) as usize).min(buf.len() - done);
                    let disk = self.sb.fsb_to_byte(e.block + fblock - e.offset)? + pos % bs;
                    crate::read_exact_at(&*self.source, disk, &mut buf[done..done + n])?;
                    n
                }
                _ => {
                    let next = match ext {
                        Some(e) => (e.offset + e.count) * bs,
                        None => map.get(idx).map_or(u64::MAX, |e| e.offset * bs),
                    };
                    let n = (next.saturating_sub(pos) as usize).min(buf.len() - done).max(1);
                    buf[done..done + n].fill(0);
                    n
                }
            };
            done += n;
        }
        Ok(())
    }

    /// (name, inode) of each directory entry except `.` and `..`.
    fn dir_entries(&self, dir: &Inode) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::new();
        match dir.format {
            FMT_LOCAL => {
                let f = &dir.fork;
                let count = usize::from(*f.first().ok_or_else(|| corrupt("empty short-form directory"))?);
                let wide = f.get(1).copied().unwrap_or(0) > 0;
                let ino_len = if wide { 8 } else { 4 };
                let mut pos = 2 + ino_len;
                for _ in 0..count {
                    let len = usize::from(*f.get(pos).ok_or_else(|| corrupt("short-form directory overflows"))?);
                    let name = f.get(pos + 3..pos + 3 + len).ok_or_else(|| corrupt("short-form name overflows"))?;
                    let at = pos + 3 + len + usize::from(self.sb.ftype);
                    let ino = if wide { be64(f, at)? } else { u64::from(be32(f, at)?) };
                    out.push((String::from_utf8_lossy(name).into_owned(), ino));
                    pos = at + ino_len;
                }
            }
            FMT_EXTENTS | FMT_BTREE => {
                let dbs = self.sb.dir_block_size;
                let fsb_per_dir = dbs / self.sb.block_size;
                let map = self.extent_map(dir)?;
                let leaf_block = DIR_LEAF_OFFSET / self.sb.block_size;
                let mut block = vec![0u8; dbs as usize];
                for e in map.iter().filter(|e| e.offset < leaf_block) {
                    let first = e.offset.div_ceil(fsb_per_dir) * fsb_per_dir;
                    let end = (e.offset + e.count).min(leaf_block);
                    for start in (first..end).step_by(fsb_per_dir as usize) {
                        self.read_mapped(dir, start * self.sb.block_size, &mut block)?;
                        self.data_block_entries(&block, &mut out)?;
                    }
                }
            }
            f => return Err(corrupt(format!("directory inode {} has data fork format {f}", dir.ino))),
        }
        out.retain(|(n, _)| n != "." && n != "..");
        Ok(out)
    }

    fn data_block_entries(&self, b: &[u8], out: &mut Vec<(String, u64)>) -> Result<(), Error> {
        let (hdr, single) = match b.get(..4).unwrap_or_default() {
            b"XDB3" => (64, true),
            b"XDD3" => (64, false),
            b"XD2B" => (16, true),
            b"XD2D" => (16, false),
            _ => return Err(corrupt("bad directory data block magic")),
        };
        let end = if single {
            // Block form: leaf entries and a tail (count, stale) follow the data.
            let count = be32(b, b.len() - 8)? as usize;
            b.len().checked_sub(8 + count * 8).ok_or_else(|| corrupt("directory block tail"))?
        } else {
            b.len()
        };
        let mut pos = hdr;
        while pos + 8 <= end {
            if be16(b, pos)? == 0xffff {
                let len = usize::from(be16(b, pos + 2)?);
                if len == 0 || len % 8 != 0 {
                    return Err(corrupt("bad free entry in directory block"));
                }
                pos += len;
                continue;
            }
            let ino = be64(b, pos)?;
            let len = usize::from(*b.get(pos + 8).ok_or_else(|| corrupt("directory entry overflows"))?);
            let name = b.get(pos + 9..pos + 9 + len).ok_or_else(|| corrupt("directory name overflows"))?;
            out.push((String::from_utf8_lossy(name).into_owned(), ino));
            pos += (8 + 1 + len + usize::from(self.sb.ftype) + 2).next_multiple_of(8);
        }
        Ok(())
    }

    fn symlink_target(&self, inode: &Inode) -> Result<String, Error> {
        let len = inode.size as usize;
        if len > 4096 {
            return Err(corrupt(format!("symlink inode {} is {len} bytes", inode.ino)));
        }
        let bytes = if inode.format == FMT_LOCAL {
            inode.fork.get(..len).ok_or_else(|| corrupt("inline symlink overflows"))?.to_vec()
        } else {
            // Remote: v5 blocks start with a 56-byte header.
            let hdr = if self.sb.v5 { 56 } else { 0 };
            let bs = self.sb.block_size as usize;
            let mut out = Vec::new();
            let mut block = vec![0u8; bs];
            let mut i = 0;
            while out.len() < len {
                self.read_mapped(inode, (i * bs) as u64, &mut block)?;
                let take = (len - out.len()).min(bs - hdr);
                out.extend_from_slice(&block[hdr..hdr + take]);
                i += 1;
            }
            out
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn entry(&self, inode: &Inode, path: String, name: String) -> Result<Entry, Error> {
        let kind = inode.kind();
        let symlink_target = if kind == EntryKind::Symlink { Some(self.symlink_target(inode)?) } else { None };
        Ok(Entry {
            name,
            path,
            kind,
            size: if kind == EntryKind::Dir { 0 } else { inode.size },
            mode: u32::from(inode.mode & 0o7777),
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            mtime_nsec: inode.mtime_nsec,
            symlink_target,
            id: inode.ino,
        })
    }

    fn lookup(&self, path: &str) -> Result<u64, Error> {
        resolve(self.sb.root_ino, path, |&dir, name, walked| {
            let inode = self.inode(dir)?;
            if inode.kind() != EntryKind::Dir {
                return Err(Error::NotADirectory(walked.rsplit_once('/').map_or("/", |p| p.0).to_string()));
            }
            Ok(self.dir_entries(&inode)?.into_iter().find(|(n, _)| n == name).map(|(_, ino)| ino))
        })
    }
}

impl FileSystem for XfsFs {
    fn fs_type(&self) -> FsType {
        FsType::Xfs
    }

    fn stat(&self, path: &str) -> Result<Entry, Error> {
        let path = normalize(path);
        let inode = self.inode(self.lookup(&path)?)?;
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        self.entry(&inode, path, name)
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>, Error> {
        let path = normalize(path);
        let dir = self.inode(self.lookup(&path)?)?;
        if dir.kind() != EntryKind::Dir {
            return Err(Error::NotADirectory(path));
        }
        let mut out = self
            .dir_entries(&dir)?
            .into_iter()
            .map(|(name, ino)| self.entry(&self.inode(ino)?, join(&path, &name), name))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_at(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if offset >= entry.size {
            return Ok(0);
        }
        let inode = self.inode(entry.id)?;
        if inode.kind() != EntryKind::File {
            return Err(Error::NotAFile(entry.path.clone()));
        }
        let n = buf.len().min((inode.size - offset.min(inode.size)) as usize);
        self.read_mapped(&inode, offset, &mut buf[..n])?;
        Ok(n)
    }
}
