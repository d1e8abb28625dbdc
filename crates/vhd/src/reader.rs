//! Random-access reader of VHD files.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use crate::format::{FOOTER_SIZE, HEADER_SIZE};
use crate::{
    BAT_UNUSED, DiskType, DynamicHeader, Error, Footer, MAX_DISK_SIZE, ReadAt, Result, SECTOR_SIZE, Zeros, read_exact,
    read_parent,
};

/// Bounds on the block size we accept: the spec fixes none, real tools use 512 KiB
/// (Virtual PC) or 2 MiB. They bound the BAT (at most ~4M entries) and block buffers.
const MIN_BLOCK_SIZE: u32 = 512 * 1024;
const MAX_BLOCK_SIZE: u32 = 32 * 1024 * 1024;

/// Checks the footer's size and, for sparse disks, the header against it. Returns the
/// number of BAT entries that cover the disk (tools may declare more, for growth).
pub(crate) fn check_geometry(footer: &Footer, header: Option<&DynamicHeader>) -> Result<u32> {
    if footer.current_size > MAX_DISK_SIZE {
        return Err(Error::Unsupported(format!(
            "disk size {} exceeds the VHD maximum of {MAX_DISK_SIZE} bytes",
            footer.current_size
        )));
    }
    let Some(header) = header else { return Ok(0) };
    let bs = header.block_size;
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(Error::Unsupported(format!("block size {bs}")));
    }
    let needed = footer.current_size.div_ceil(u64::from(bs));
    if u64::from(header.max_table_entries) < needed {
        return Err(Error::Corrupt(format!(
            "BAT has {} entries but a disk of {} bytes needs {needed}",
            header.max_table_entries, footer.current_size
        )));
    }
    // needed <= MAX_DISK_SIZE / MIN_BLOCK_SIZE fits in u32.
    u32::try_from(needed).map_err(|_| Error::Corrupt("BAT too large".into()))
}

pub(crate) fn parse_bat(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// True when bit `sector` (most significant bit first) of a sector bitmap is set.
pub(crate) fn bit_is_set(bitmap: &[u8], sector: u64) -> bool {
    usize::try_from(sector / 8).ok().and_then(|i| bitmap.get(i)).is_some_and(|byte| byte & (0x80 >> (sector % 8)) != 0)
}

/// A validated VHD file.
pub struct VhdReader<R> {
    inner: R,
    footer: Footer,
    header: Option<DynamicHeader>,
    /// BAT entries covering the disk (sector offsets, or [`BAT_UNUSED`]).
    bat: Vec<u32>,
    /// The sector bitmap of `bitmap_block`, kept because reads are mostly sequential.
    bitmap: Vec<u8>,
    bitmap_block: Option<usize>,
}

impl<R: Read + Seek> VhdReader<R> {
    /// Reads and validates footer, header and BAT: cookies, checksums, sizes, and that
    /// every block lies inside the file without overlapping metadata or another block.
    pub fn open(mut inner: R) -> Result<Self> {
        let file_size = inner.seek(SeekFrom::End(0))?;
        let footer_at = file_size
            .checked_sub(FOOTER_SIZE as u64)
            .ok_or_else(|| Error::Truncated(format!("{file_size} bytes is smaller than a footer")))?;
        let mut buf = [0u8; FOOTER_SIZE];
        inner.seek(SeekFrom::Start(footer_at))?;
        read_exact(&mut inner, &mut buf, "footer")?;
        let footer = Footer::parse(&buf)?;
        let mut reader =
            VhdReader { inner, footer, header: None, bat: Vec::new(), bitmap: Vec::new(), bitmap_block: None };
        match reader.footer.disk_type {
            DiskType::Fixed => {
                check_geometry(&reader.footer, None)?;
                if reader.footer.current_size > footer_at {
                    return Err(Error::Truncated(format!(
                        "fixed disk of {} bytes in a file of {file_size} bytes",
                        reader.footer.current_size
                    )));
                }
            }
            DiskType::Dynamic | DiskType::Differencing => reader.load_sparse_metadata(footer_at)?,
        }
        Ok(reader)
    }

    fn load_sparse_metadata(&mut self, footer_at: u64) -> Result<()> {
        let data_offset = self.footer.data_offset;
        if data_offset.checked_add(HEADER_SIZE as u64).is_none_or(|end| end > footer_at) {
            return Err(Error::Corrupt(format!("dynamic header offset {data_offset} lies outside the file")));
        }
        let mut buf = [0u8; HEADER_SIZE];
        self.inner.seek(SeekFrom::Start(data_offset))?;
        read_exact(&mut self.inner, &mut buf, "dynamic header")?;
        let header = DynamicHeader::parse(&buf)?;
        let entries = check_geometry(&self.footer, Some(&header))?;
        let bat_len = u64::from(entries) * 4;
        if header.table_offset.checked_add(bat_len).is_none_or(|end| end > footer_at) {
            return Err(Error::Corrupt(format!(
                "BAT at offset {} with {entries} entries lies outside the file",
                header.table_offset
            )));
        }
        // Bounded by the file size just checked.
        let mut bat_bytes = vec![0u8; bat_len as usize];
        self.inner.seek(SeekFrom::Start(header.table_offset))?;
        read_exact(&mut self.inner, &mut bat_bytes, "BAT")?;
        let bat = parse_bat(&bat_bytes);

        let block_span = header.bitmap_size() + u64::from(header.block_size);
        let mut regions: Vec<(u64, u64, Option<usize>)> = vec![
            (data_offset, data_offset + HEADER_SIZE as u64, None),
            (header.table_offset, header.table_offset + bat_len, None),
        ];
        for (index, &entry) in bat.iter().enumerate() {
            if entry == BAT_UNUSED {
                continue;
            }
            let start = u64::from(entry) * SECTOR_SIZE;
            let end = start + block_span;
            if end > footer_at {
                return Err(Error::Corrupt(format!(
                    "block {index} at offset {start} extends past the data area ({footer_at} bytes)"
                )));
            }
            regions.push((start, end, Some(index)));
        }
        regions.sort_unstable();
        for pair in regions.windows(2) {
            if let [(_, end_a, a), (start_b, _, b)] = pair
                && start_b < end_a
            {
                let name = |r: &Option<usize>| r.map_or("metadata".to_string(), |i| format!("block {i}"));
                return Err(Error::Corrupt(format!("{} overlaps {}", name(b), name(a))));
            }
        }
        self.bitmap = vec![0u8; header.bitmap_size() as usize];
        self.header = Some(header);
        self.bat = bat;
        Ok(())
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header; `None` for a fixed disk.
    pub fn header(&self) -> Option<&DynamicHeader> {
        self.header.as_ref()
    }

    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    /// Virtual size of the disk in bytes.
    pub fn disk_size(&self) -> u64 {
        self.footer.current_size
    }

    /// Bytes per block; fixed disks are described as one block per 2 MiB.
    pub fn block_size(&self) -> u64 {
        u64::from(self.header.as_ref().map_or(crate::DEFAULT_BLOCK_SIZE, |h| h.block_size))
    }

    /// Indices of the blocks that hold data in this file (all of them for a fixed disk).
    pub fn present_blocks(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        if self.header.is_none() {
            let blocks = self.footer.current_size.div_ceil(self.block_size());
            return Box::new((0..blocks).map_while(|b| u32::try_from(b).ok()));
        }
        Box::new(
            self.bat.iter().enumerate().filter(|(_, e)| **e != BAT_UNUSED).filter_map(|(i, _)| u32::try_from(i).ok()),
        )
    }

    /// Disk byte ranges of `block` whose sectors this file holds (sector bitmap bits
    /// set), clipped to the disk size. For a differencing disk, everything else comes
    /// from the parent.
    pub fn allocated_ranges(&mut self, block: u32) -> Result<Vec<Range<u64>>> {
        let bs = self.block_size();
        let start = u64::from(block) * bs;
        let end = (start + bs).min(self.footer.current_size);
        if start >= end {
            return Ok(Vec::new());
        }
        if self.header.is_none() {
            return Ok(std::iter::once(start..end).collect());
        }
        if self.block_offset(start).is_none() {
            return Ok(Vec::new());
        }
        self.load_bitmap(block as usize)?;
        Ok(sector_runs(&self.bitmap, start, end, bs).filter(|(_, set)| *set).map(|(r, _)| r).collect())
    }

    /// Reads disk bytes at `offset`; sectors this file does not hold read as zeros
    /// (for a differencing disk, use [`Layered`] to read them from the parent).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at_with_parent(offset, buf, &mut Zeros)
    }

    /// Reads disk bytes at `offset`, taking the sectors a differencing disk does not
    /// hold from `parent`. A dynamic disk's absent sectors are zeros.
    pub fn read_at_with_parent(&mut self, offset: u64, buf: &mut [u8], parent: &mut dyn ReadAt) -> Result<()> {
        let end =
            offset.checked_add(buf.len() as u64).filter(|&end| end <= self.footer.current_size).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "read of {} bytes at {offset} past the disk end ({})",
                    buf.len(),
                    self.footer.current_size
                ))
            })?;
        if self.header.is_none() {
            self.inner.seek(SeekFrom::Start(offset))?;
            return read_exact(&mut self.inner, buf, "fixed disk data");
        }
        let differencing = self.footer.disk_type == DiskType::Differencing;
        let bs = self.block_size();
        let mut pos = offset;
        while pos < end {
            let block = (pos / bs) as usize;
            let block_end = ((pos / bs + 1) * bs).min(end);
            let out = &mut buf[(pos - offset) as usize..(block_end - offset) as usize];
            match self.block_offset(pos) {
                None if differencing => read_parent(parent, pos, out)?,
                None => out.fill(0),
                Some(data_at) => {
                    self.load_bitmap(block)?;
                    for (run, set) in sector_runs(&self.bitmap, pos, block_end, bs) {
                        let out = &mut buf[(run.start - offset) as usize..(run.end - offset) as usize];
                        if set {
                            self.inner.seek(SeekFrom::Start(data_at + run.start % bs))?;
                            read_exact(&mut self.inner, out, "block data")?;
                        } else if differencing {
                            read_parent(parent, run.start, out)?;
                        } else {
                            out.fill(0);
                        }
                    }
                }
            }
            pos = block_end;
        }
        Ok(())
    }

    /// File offset of the data of the block holding disk offset `pos`, if present.
    fn block_offset(&self, pos: u64) -> Option<u64> {
        let header = self.header.as_ref()?;
        let entry = *self.bat.get(usize::try_from(pos / u64::from(header.block_size)).ok()?)?;
        (entry != BAT_UNUSED).then(|| u64::from(entry) * SECTOR_SIZE + header.bitmap_size())
    }

    fn load_bitmap(&mut self, block: usize) -> Result<()> {
        if self.bitmap_block == Some(block) {
            return Ok(());
        }
        let entry = self.bat.get(block).copied().unwrap_or(BAT_UNUSED);
        self.inner.seek(SeekFrom::Start(u64::from(entry) * SECTOR_SIZE))?;
        self.bitmap_block = None;
        read_exact(&mut self.inner, &mut self.bitmap, "sector bitmap")?;
        self.bitmap_block = Some(block);
        Ok(())
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read + Seek> ReadAt for VhdReader<R> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }

    fn size(&self) -> u64 {
        self.disk_size()
    }
}

/// Splits the disk range `start..end` (inside one block) into runs of sectors whose
/// bitmap bits are equal: `(range, bit set)`.
pub(crate) fn sector_runs(
    bitmap: &[u8],
    start: u64,
    end: u64,
    block_size: u64,
) -> impl Iterator<Item = (Range<u64>, bool)> + '_ {
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let set = bit_is_set(bitmap, (pos % block_size) / SECTOR_SIZE);
        let mut next = ((pos / SECTOR_SIZE + 1) * SECTOR_SIZE).min(end);
        while next < end && bit_is_set(bitmap, (next % block_size) / SECTOR_SIZE) == set {
            next = (next + SECTOR_SIZE).min(end);
        }
        let run = pos..next;
        pos = next;
        Some((run, set))
    })
}

/// A differencing disk read through to its parent (a raw image, a [`VhdReader`], or
/// another `Layered` for a longer chain).
pub struct Layered<C, P> {
    child: VhdReader<C>,
    parent: P,
}

impl<C: Read + Seek, P: ReadAt> Layered<C, P> {
    pub fn new(child: VhdReader<C>, parent: P) -> Self {
        Layered { child, parent }
    }

    pub fn child(&self) -> &VhdReader<C> {
        &self.child
    }

    pub fn disk_size(&self) -> u64 {
        self.child.disk_size()
    }

    pub fn into_parts(self) -> (VhdReader<C>, P) {
        (self.child, self.parent)
    }
}

impl<C: Read + Seek, P: ReadAt> ReadAt for Layered<C, P> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.child.read_at_with_parent(offset, buf, &mut self.parent)
    }

    fn size(&self) -> u64 {
        self.child.disk_size()
    }
}
