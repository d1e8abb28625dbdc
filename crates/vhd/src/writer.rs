//! Streaming VHD writers.

use std::io::{self, Write};
use std::ops::Range;

use uuid::Uuid;

use crate::format::{FOOTER_SIZE, HEADER_SIZE, bitmap_size};
use crate::{
    BAT_UNUSED, DEFAULT_BLOCK_SIZE, DiskType, DynamicHeader, Error, Footer, MAX_DISK_SIZE, NO_DATA_OFFSET,
    PLATFORM_MACX, ParentLocator, Result, SECTOR_SIZE,
};

/// Where xapi puts the header and the BAT; the sector between them is reserved for the
/// parent locator's data, which xapi leaves zero-filled.
const HEADER_OFFSET: u64 = FOOTER_SIZE as u64;
const LOCATOR_OFFSET: u64 = HEADER_OFFSET + HEADER_SIZE as u64;
const BAT_OFFSET: u64 = LOCATOR_OFFSET + SECTOR_SIZE;

/// Identity of the VHD being written.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// The footer's unique id (xapi makes a fresh one for every export).
    pub unique_id: Uuid,
    /// The footer's time stamp, seconds since 2000-01-01 (xapi writes 0).
    pub timestamp: u32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { unique_id: Uuid::new_v4(), timestamp: 0 }
    }
}

/// The base a differencing VHD refers to.
#[derive(Debug, Clone)]
pub struct ParentInfo {
    /// The unique id in the parent VHD's footer.
    pub unique_id: Uuid,
    /// The parent file's modification time, seconds since 2000-01-01.
    pub timestamp: u32,
    /// The parent's path on the host, e.g. `/var/run/sr-mount/SR/VDI.vhd`: xapi stores
    /// it as the unicode name and in a `MacX` locator as `file://PATH`.
    pub path: String,
}

/// Writes a dynamic or differencing VHD as a stream, in xapi's layout: footer copy at
/// 0, header at 512, BAT at 2048, then the present blocks in disk order, each a sector
/// bitmap (fully set, as xapi writes it, or only the chosen sectors) and the block's
/// 2 MiB, then the footer.
pub struct DynamicWriter<W: Write> {
    out: W,
    footer: [u8; FOOTER_SIZE],
    disk_size: u64,
    /// Present block indices, increasing; `next` indexes the one expected next.
    present: Vec<u32>,
    next: usize,
    bitmap: Vec<u8>,
    full_bitmap: Vec<u8>,
}

impl<W: Write> DynamicWriter<W> {
    /// Size in bytes of the VHD that holds `present_blocks` blocks of a disk of
    /// `disk_size` bytes: what a Content-Length must say.
    pub fn output_size(disk_size: u64, present_blocks: u64) -> u64 {
        let entries = disk_size.div_ceil(u64::from(DEFAULT_BLOCK_SIZE));
        let bat = (entries * 4).next_multiple_of(SECTOR_SIZE);
        let block = bitmap_size(DEFAULT_BLOCK_SIZE) + u64::from(DEFAULT_BLOCK_SIZE);
        // Saturating: absurd arguments give an absurd size, not an overflow panic.
        present_blocks.saturating_mul(block).saturating_add(BAT_OFFSET + bat + FOOTER_SIZE as u64)
    }

    /// Starts a dynamic VHD (disk type 3) and writes everything up to the first block.
    pub fn dynamic(
        out: W,
        disk_size: u64,
        present_blocks: impl IntoIterator<Item = u32>,
        options: WriterOptions,
    ) -> Result<Self> {
        Self::start(out, disk_size, present_blocks, options, None)
    }

    /// Starts a differencing VHD (disk type 4) whose blocks replace the parent's.
    pub fn differencing(
        out: W,
        disk_size: u64,
        present_blocks: impl IntoIterator<Item = u32>,
        options: WriterOptions,
        parent: &ParentInfo,
    ) -> Result<Self> {
        Self::start(out, disk_size, present_blocks, options, Some(parent))
    }

    fn start(
        mut out: W,
        disk_size: u64,
        present_blocks: impl IntoIterator<Item = u32>,
        options: WriterOptions,
        parent: Option<&ParentInfo>,
    ) -> Result<Self> {
        check_disk_size(disk_size)?;
        let block_size = u64::from(DEFAULT_BLOCK_SIZE);
        let entries = disk_size.div_ceil(block_size);
        let present: Vec<u32> = present_blocks.into_iter().collect();
        if let Some(pair) = present.windows(2).find(|p| p[0] >= p[1]) {
            return Err(Error::InvalidArgument(format!(
                "present blocks must be strictly increasing ({} then {})",
                pair[0], pair[1]
            )));
        }
        if let Some(&last) = present.last()
            && u64::from(last) >= entries
        {
            return Err(Error::InvalidArgument(format!("block {last} is past the end of a disk of {entries} blocks")));
        }

        let disk_type = if parent.is_some() { DiskType::Differencing } else { DiskType::Dynamic };
        let footer = Footer::xapi(disk_type, disk_size, HEADER_OFFSET, options.unique_id, options.timestamp).to_bytes();
        let mut header = DynamicHeader {
            table_offset: BAT_OFFSET,
            // At most MAX_DISK_SIZE / 2 MiB, which fits.
            max_table_entries: entries as u32,
            block_size: DEFAULT_BLOCK_SIZE,
            parent_unique_id: Uuid::nil(),
            parent_timestamp: 0,
            parent_unicode_name: String::new(),
            parent_locators: [ParentLocator::default(); 8],
        };
        if let Some(parent) = parent {
            let uri_len = "file://".len() + parent.path.len();
            header.parent_unique_id = parent.unique_id;
            header.parent_timestamp = parent.timestamp;
            header.parent_unicode_name = parent.path.clone();
            header.parent_locators[0] = ParentLocator {
                platform_code: PLATFORM_MACX,
                // One sector, stored in sectors as the spec says.
                data_space: 1,
                data_length: u32::try_from(uri_len)
                    .map_err(|_| Error::InvalidArgument("parent path too long".into()))?,
                data_offset: LOCATOR_OFFSET,
            };
        }

        let bat_size = (entries * 4).next_multiple_of(SECTOR_SIZE);
        let block_span = bitmap_size(DEFAULT_BLOCK_SIZE) + block_size;
        let first_block = BAT_OFFSET + bat_size;
        let mut bat = vec![0xFFu8; bat_size as usize];
        for (n, &block) in present.iter().enumerate() {
            let sector = (first_block + n as u64 * block_span) / SECTOR_SIZE;
            let entry = u32::try_from(sector)
                .ok()
                .filter(|&s| s != BAT_UNUSED)
                .ok_or_else(|| Error::InvalidArgument("disk too large for a VHD".into()))?;
            let at = block as usize * 4;
            bat[at..at + 4].copy_from_slice(&entry.to_be_bytes());
        }

        out.write_all(&footer)?;
        out.write_all(&header.to_bytes()?)?;
        out.write_all(&[0u8; SECTOR_SIZE as usize])?;
        out.write_all(&bat)?;
        Ok(DynamicWriter {
            out,
            footer,
            disk_size,
            present,
            next: 0,
            bitmap: vec![0; bitmap_size(DEFAULT_BLOCK_SIZE) as usize],
            full_bitmap: vec![0xFF; bitmap_size(DEFAULT_BLOCK_SIZE) as usize],
        })
    }

    /// Size in bytes of the whole VHD being written.
    pub fn total_size(&self) -> u64 {
        Self::output_size(self.disk_size, self.present.len() as u64)
    }

    /// The block index expected by the next [`Self::write_block`], if any.
    pub fn next_block(&self) -> Option<u32> {
        self.present.get(self.next).copied()
    }

    /// Writes the next present block with every sector present. `data` is the block's
    /// disk content: 2 MiB, or up to the disk end for the last block of a disk whose size
    /// is not a multiple of it (the rest of the block is written as zeros).
    pub fn write_block(&mut self, index: u32, data: &[u8]) -> Result<()> {
        self.check_block(index, data)?;
        self.out.write_all(&self.full_bitmap)?;
        self.write_data(data)
    }

    /// Writes the next present block with only the sectors in `sectors` (ranges of sector
    /// numbers within the block) marked present: a reader takes the other sectors from
    /// the parent (zeros for a dynamic disk) and xapi's import skips them, so only the
    /// chosen sectors are written. `data` is as for [`Self::write_block`]; what it holds
    /// outside `sectors` is carried but never used. Returns the bytes the sectors cover.
    pub fn write_block_sectors(&mut self, index: u32, data: &[u8], sectors: &[Range<u32>]) -> Result<u64> {
        self.check_block(index, data)?;
        let in_block = data.len() as u64 / SECTOR_SIZE;
        self.bitmap.fill(0);
        let mut covered = 0;
        for range in sectors {
            if range.start > range.end || u64::from(range.end) > in_block {
                return Err(Error::InvalidArgument(format!(
                    "sectors {range:?} of block {index}, which has {in_block} sectors"
                )));
            }
            for sector in range.clone() {
                let bit = 0x80 >> (sector % 8);
                // In bounds: sector < in_block <= bits of the bitmap.
                if let Some(byte) = self.bitmap.get_mut((sector / 8) as usize)
                    && *byte & bit == 0
                {
                    *byte |= bit;
                    covered += SECTOR_SIZE;
                }
            }
        }
        self.out.write_all(&self.bitmap)?;
        self.write_data(data)?;
        Ok(covered)
    }

    fn check_block(&self, index: u32, data: &[u8]) -> Result<()> {
        let expected = self.next_block();
        if expected != Some(index) {
            return Err(Error::InvalidArgument(format!(
                "block {index} written, the next present block is {expected:?}"
            )));
        }
        let block_size = u64::from(DEFAULT_BLOCK_SIZE);
        let start = u64::from(index) * block_size;
        let len = (self.disk_size - start).min(block_size);
        if data.len() as u64 != len {
            return Err(Error::InvalidArgument(format!("block {index} needs {len} bytes of data, got {}", data.len())));
        }
        Ok(())
    }

    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        write_zeros(&mut self.out, u64::from(DEFAULT_BLOCK_SIZE) - data.len() as u64)?;
        self.next += 1;
        Ok(())
    }

    /// Writes the footer after checking that every present block was written.
    pub fn finish(mut self) -> Result<W> {
        if let Some(missing) = self.next_block() {
            return Err(Error::InvalidArgument(format!("finished before block {missing} was written")));
        }
        self.out.write_all(&self.footer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a fixed VHD (the raw disk followed by a footer) as a stream: write the disk
/// bytes through [`Write`], then call [`FixedWriter::finish`].
pub struct FixedWriter<W: Write> {
    out: W,
    footer: [u8; FOOTER_SIZE],
    disk_size: u64,
    written: u64,
}

impl<W: Write> FixedWriter<W> {
    pub fn output_size(disk_size: u64) -> u64 {
        disk_size.saturating_add(FOOTER_SIZE as u64)
    }

    pub fn new(out: W, disk_size: u64, options: WriterOptions) -> Result<Self> {
        check_disk_size(disk_size)?;
        let footer = Footer::xapi(DiskType::Fixed, disk_size, NO_DATA_OFFSET, options.unique_id, options.timestamp);
        Ok(FixedWriter { out, footer: footer.to_bytes(), disk_size, written: 0 })
    }

    /// Writes the footer after checking that the whole disk was written.
    pub fn finish(mut self) -> Result<W> {
        if self.written != self.disk_size {
            return Err(Error::InvalidArgument(format!(
                "finished after {} of {} disk bytes",
                self.written, self.disk_size
            )));
        }
        self.out.write_all(&self.footer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for FixedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.disk_size - self.written;
        if buf.len() as u64 > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("write of {} bytes past the disk end ({room} bytes left)", buf.len()),
            ));
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn check_disk_size(disk_size: u64) -> Result<()> {
    if !disk_size.is_multiple_of(SECTOR_SIZE) || disk_size > MAX_DISK_SIZE {
        return Err(Error::InvalidArgument(format!(
            "disk size {disk_size} must be a multiple of 512 and at most {MAX_DISK_SIZE}"
        )));
    }
    Ok(())
}

fn write_zeros(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let step = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..step])?;
        n -= step as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields xapi's vhd-tool sets that no reader tool shows.
    #[test]
    fn differencing_layout_matches_xapi() {
        let parent =
            ParentInfo { unique_id: Uuid::from_u128(9), timestamp: 77, path: "/var/run/sr-mount/s/v.vhd".into() };
        let options = WriterOptions { unique_id: Uuid::from_u128(3), timestamp: 0 };
        let w = DynamicWriter::differencing(Vec::new(), 4 << 20, [1], options, &parent).unwrap();
        let bytes = w.out.clone();
        let footer = Footer::parse(bytes[..FOOTER_SIZE].try_into().unwrap()).unwrap();
        assert_eq!(&footer.creator_application, b"caml");
        assert_eq!((footer.creator_version, footer.creator_host_os, footer.features), (1, 0, 2));
        assert_eq!((footer.data_offset, footer.timestamp, footer.disk_type), (512, 0, DiskType::Differencing));
        let header = DynamicHeader::parse(bytes[512..1536].try_into().unwrap()).unwrap();
        assert_eq!((header.table_offset, header.max_table_entries, header.block_size), (2048, 2, 2 << 20));
        assert_eq!((header.parent_unique_id, header.parent_timestamp), (parent.unique_id, 77));
        assert_eq!(header.parent_unicode_name, parent.path);
        let locator = header.parent_locators[0];
        assert_eq!(locator.platform_code, PLATFORM_MACX);
        assert_eq!((locator.data_space, locator.data_offset), (1, 1536));
        assert_eq!(locator.data_length as usize, "file://".len() + parent.path.len());
        // xapi leaves the locator's sector zero-filled; block 1 is the first block.
        assert!(bytes[1536..2048].iter().all(|&b| b == 0));
        assert_eq!(&bytes[2048..2056], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 5]);
        assert_eq!(w.total_size(), 2048 + 512 + 512 + (2 << 20) + 512);
    }
}
