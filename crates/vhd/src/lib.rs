//! VHD (Microsoft Virtual Hard Disk 1.0) images: fixed, dynamic and differencing.
//!
//! - [`VhdReader`] reads a VHD file (Read + Seek) after validating its structure;
//!   [`Layered`] stacks a differencing disk on its parent.
//! - [`VhdStreamReader`] reads a dynamic or differencing VHD from a non-seekable
//!   stream (an HTTP import body) and yields the data it holds in file order.
//! - [`DynamicWriter`] streams a dynamic or differencing VHD laid out exactly as xapi
//!   exports one; [`FixedWriter`] streams a fixed VHD. Both know their output size up
//!   front, so it can be sent as a Content-Length.
//!
//! Every structure read from input is checked before it is used: bad input gives an
//! [`Error`], never a panic or an allocation sized by unchecked input.

mod format;
mod reader;
mod stream;
mod writer;

use std::io::{self, Read, Seek, SeekFrom};

pub use format::{
    BAT_UNUSED, DiskType, DynamicHeader, FOOTER_COOKIE, FOOTER_SIZE, Footer, Geometry, HEADER_COOKIE, HEADER_SIZE,
    NO_DATA_OFFSET, PLATFORM_MACX, ParentLocator, VHD_EPOCH_UNIX,
};
pub use reader::{Layered, VhdReader};
pub use stream::{Extent, VhdStreamReader};
pub use writer::{DynamicWriter, FixedWriter, ParentInfo, WriterOptions};

pub const SECTOR_SIZE: u64 = 512;
/// Block size of the dynamic VHDs xapi, qemu and vhd-util write.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 * 1024 * 1024;
/// Largest disk a VHD may describe (xapi answers `VDI_TOO_LARGE` past it).
pub const MAX_DISK_SIZE: u64 = 2040 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{what}: bad cookie {found:?}, expected {expected:?}")]
    BadCookie { what: &'static str, found: String, expected: String },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { what: &'static str, stored: u32, computed: u32 },
    #[error("truncated VHD: {0}")]
    Truncated(String),
    #[error("corrupt VHD: {0}")]
    Corrupt(String),
    #[error("unsupported VHD: {0}")]
    Unsupported(String),
    /// A caller's mistake: reading past the disk end, writing blocks out of order...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Random access to a disk image's contents: lets a differencing disk read the
/// sectors it does not hold from whatever stands for its parent.
pub trait ReadAt {
    /// Fills `buf` with the disk's bytes at `offset`; the range lies within `size()`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The disk's size in bytes. A child may be larger than its parent (the disk was
    /// resized after the parent was taken): past the parent's end, it reads zeros.
    fn size(&self) -> u64;
}

/// Reads `buf` at `offset` from `parent`, zeros past the parent's end.
pub(crate) fn read_parent(parent: &mut dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<()> {
    let inside = parent.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    let (head, tail) = buf.split_at_mut(inside);
    if !head.is_empty() {
        parent.read_exact_at(offset, head)?;
    }
    tail.fill(0);
    Ok(())
}

/// A raw image (a plain file) as a [`ReadAt`] parent.
pub struct RawDisk<R> {
    inner: R,
    size: u64,
}

impl<R: Read + Seek> RawDisk<R> {
    pub fn new(mut inner: R) -> Result<Self> {
        let size = inner.seek(SeekFrom::End(0))?;
        Ok(RawDisk { inner, size })
    }
}

impl<R: Read + Seek> ReadAt for RawDisk<R> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.seek(SeekFrom::Start(offset))?;
        read_exact(&mut self.inner, buf, "raw parent image")
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// A parent that is all zeros (what a dynamic disk's absent sectors read as).
pub struct Zeros;

impl ReadAt for Zeros {
    fn read_exact_at(&mut self, _offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn size(&self) -> u64 {
        u64::MAX
    }
}

/// `read_exact` reporting a short read as a truncated VHD.
pub(crate) fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated(format!("end of input inside {what}")),
        _ => Error::Io(e),
    })
}
