//! Reader of a dynamic or differencing VHD arriving as a non-seekable stream.

use std::io::{self, Read};

use crate::format::{FOOTER_SIZE, HEADER_SIZE};
use crate::reader::{check_geometry, parse_bat, sector_runs};
use crate::{BAT_UNUSED, DiskType, DynamicHeader, Error, Footer, Result, SECTOR_SIZE, read_exact};

/// Largest piece of data one [`Extent`] carries: bounds the reader's buffer.
const MAX_EXTENT: usize = 1024 * 1024;
/// The BAT is read in pieces of this size, keeping only its present entries.
const BAT_PIECE: usize = 64 * 1024;

/// A run of disk data the VHD holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Extent<'a> {
    /// Disk offset of `data`.
    pub offset: u64,
    pub data: &'a [u8],
}

struct BlockCursor {
    /// Disk offset of the block's first byte.
    disk_start: u64,
    /// Bytes of the block's data area consumed from the stream so far.
    consumed: u64,
}

/// Reads footer copy, header and BAT, then the blocks in file order, yielding the
/// sectors they hold as [`Extent`]s (in increasing file order, which is increasing disk
/// order for the files xapi and qemu write). Fails when the layout would need seeking
/// backwards, when the stream ends early, or when the trailing footer is missing.
pub struct VhdStreamReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    footer: Footer,
    footer_bytes: [u8; FOOTER_SIZE],
    header: DynamicHeader,
    /// (file offset, block index) of the present blocks, by file offset.
    blocks: Vec<(u64, u32)>,
    next_block: usize,
    cursor: Option<BlockCursor>,
    bitmap: Vec<u8>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> VhdStreamReader<R> {
    pub fn new(mut inner: R) -> Result<Self> {
        let mut footer_bytes = [0u8; FOOTER_SIZE];
        read_exact(&mut inner, &mut footer_bytes, "footer copy")?;
        let footer = Footer::parse(&footer_bytes).map_err(|e| match e {
            Error::BadCookie { found, expected, .. } => {
                Error::BadCookie { what: "footer copy at offset 0 (a fixed VHD cannot be streamed)", found, expected }
            }
            e => e,
        })?;
        if footer.disk_type == DiskType::Fixed {
            return Err(Error::Unsupported("a fixed VHD cannot be read as a stream".into()));
        }
        let mut reader = VhdStreamReader {
            inner,
            pos: FOOTER_SIZE as u64,
            footer,
            footer_bytes,
            header: DynamicHeader {
                table_offset: 0,
                max_table_entries: 0,
                block_size: 0,
                parent_unique_id: uuid::Uuid::nil(),
                parent_timestamp: 0,
                parent_unicode_name: String::new(),
                parent_locators: Default::default(),
            },
            blocks: Vec::new(),
            next_block: 0,
            cursor: None,
            bitmap: Vec::new(),
            buf: Vec::new(),
            done: false,
        };
        reader.skip_to(reader.footer.data_offset, "dynamic header")?;
        let mut header_bytes = [0u8; HEADER_SIZE];
        reader.read(&mut header_bytes, "dynamic header")?;
        reader.header = DynamicHeader::parse(&header_bytes)?;
        let entries = check_geometry(&reader.footer, Some(&reader.header))?;
        reader.read_bat(entries)?;
        reader.bitmap = vec![0; reader.header.bitmap_size() as usize];
        reader.buf = vec![0; (reader.header.block_size as usize).min(MAX_EXTENT)];
        Ok(reader)
    }

    fn read_bat(&mut self, entries: u32) -> Result<()> {
        self.skip_to(self.header.table_offset, "BAT")?;
        let mut remaining = u64::from(entries) * 4;
        let mut piece = vec![0u8; BAT_PIECE];
        let mut index = 0u32;
        while remaining > 0 {
            let n = remaining.min(BAT_PIECE as u64) as usize;
            self.read(&mut piece[..n], "BAT")?;
            for entry in parse_bat(&piece[..n]) {
                if entry != BAT_UNUSED {
                    self.blocks.push((u64::from(entry) * SECTOR_SIZE, index));
                }
                index += 1;
            }
            remaining -= n as u64;
        }
        self.blocks.sort_unstable();
        let span = self.header.bitmap_size() + u64::from(self.header.block_size);
        let mut end_of_previous = self.pos;
        for &(start, index) in &self.blocks {
            if start < end_of_previous {
                return Err(Error::Unsupported(format!(
                    "block {index} at offset {start} overlaps earlier data or needs seeking backwards"
                )));
            }
            end_of_previous = start + span;
        }
        Ok(())
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    pub fn header(&self) -> &DynamicHeader {
        &self.header
    }

    pub fn disk_size(&self) -> u64 {
        self.footer.current_size
    }

    /// Indices of the present blocks, in the order their data will come.
    pub fn present_blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.blocks.iter().map(|&(_, index)| index)
    }

    /// The next run of sectors the VHD holds (at most 1 MiB), or `None` at the end,
    /// once the trailing footer has been checked.
    pub fn next_extent(&mut self) -> Result<Option<Extent<'_>>> {
        let block_size = u64::from(self.header.block_size);
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(cursor) = &self.cursor else {
                self.start_next_block()?;
                continue;
            };
            let (disk_start, consumed) = (cursor.disk_start, cursor.consumed);
            // The last block may reach past the disk end: its tail is padding.
            let data_end = (disk_start + block_size).min(self.footer.current_size);
            let pos = disk_start + consumed;
            if pos >= data_end {
                self.skip(block_size - consumed, "block padding")?;
                self.cursor = None;
                continue;
            }
            let limit = data_end.min(pos + self.buf.len() as u64);
            // pos < limit, so there is always a first run.
            let Some((run, set)) = sector_runs(&self.bitmap, pos, limit, block_size).next() else {
                return Err(Error::Corrupt(format!("empty sector run at disk offset {pos}")));
            };
            let len = run.end - run.start;
            if let Some(cursor) = &mut self.cursor {
                cursor.consumed += len;
            }
            if set {
                read_exact(&mut self.inner, &mut self.buf[..len as usize], "block data")?;
                self.pos += len;
                return Ok(Some(Extent { offset: run.start, data: &self.buf[..len as usize] }));
            }
            self.skip(len, "block data")?;
        }
    }

    fn start_next_block(&mut self) -> Result<()> {
        let Some(&(file_offset, index)) = self.blocks.get(self.next_block) else {
            self.check_trailing_footer()?;
            self.done = true;
            return Ok(());
        };
        self.next_block += 1;
        self.skip_to(file_offset, "block")?;
        let mut bitmap = std::mem::take(&mut self.bitmap);
        let read = self.read(&mut bitmap, "sector bitmap");
        self.bitmap = bitmap;
        read?;
        self.cursor =
            Some(BlockCursor { disk_start: u64::from(index) * u64::from(self.header.block_size), consumed: 0 });
        Ok(())
    }

    /// Reads to the end of the stream: its last 512 bytes must repeat the footer.
    fn check_trailing_footer(&mut self) -> Result<()> {
        let mut tail = Vec::with_capacity(FOOTER_SIZE + BAT_PIECE);
        let mut piece = vec![0u8; BAT_PIECE];
        loop {
            let n = match self.inner.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            tail.extend_from_slice(&piece[..n]);
            if tail.len() > FOOTER_SIZE {
                tail.drain(..tail.len() - FOOTER_SIZE);
            }
        }
        if tail.len() < FOOTER_SIZE {
            return Err(Error::Truncated("stream ends without the trailing footer".into()));
        }
        if tail != self.footer_bytes {
            return Err(Error::Corrupt("trailing footer differs from the copy at the start".into()));
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        read_exact(&mut self.inner, buf, what)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip_to(&mut self, offset: u64, what: &str) -> Result<()> {
        let gap = offset.checked_sub(self.pos).ok_or_else(|| {
            Error::Unsupported(format!(
                "{what} at offset {offset} lies before the stream position {}: needs seeking backwards",
                self.pos
            ))
        })?;
        self.skip(gap, what)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(Error::Truncated(format!("end of input before {what}")));
        }
        Ok(())
    }
}
