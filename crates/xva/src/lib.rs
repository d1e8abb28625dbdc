//! XVA archives (xapi's VM export format, `export_vsn` 2): a tar holding `ova.xml` (the
//! VM's metadata as one XML-RPC value) and then every disk in 1 MiB chunks, each chunk
//! followed by a checksum file.
//!
//! - [`XvaWriter`] streams an archive exactly as xapi writes one: V7 tar headers, disks
//!   in lexicographic order of their `Ref:N`, all-zero chunks skipped except the first
//!   and the last, `.xxhash` (or legacy `.checksum`) files, keep-alive chunks.
//! - [`XvaReader`] streams one back: parses `ova.xml`, then yields each disk's chunks
//!   with their disk offsets after verifying their checksums.
//! - [`Compressor`] and [`decompress`] handle `use_compression=true|gzip|zstd`.

mod compress;
mod ova;
mod reader;
mod tarfmt;
mod writer;

pub use compress::{Compression, Compressor, decompress};
pub use ova::{OvaObject, OvaVersion, ova_xml};
pub use reader::{Chunk, DiskInfo, XvaReader};
pub use writer::{WriterOptions, XvaWriter};

/// Disks travel in chunks of this size (the last one of a disk may be shorter).
pub const CHUNK_SIZE: u64 = 1024 * 1024;
/// The first member of every XVA.
pub const OVA_XML: &str = "ova.xml";

/// How chunk checksums are written: current xapi writes XXH64, older xapi SHA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// `Ref:N/%08d.xxhash`: XXH64 (seed 0) as 16 uppercase hex digits.
    Xxhash,
    /// `Ref:N/%08d.checksum`: SHA-1 as 40 lowercase hex digits.
    Sha1,
}

impl ChecksumKind {
    pub fn extension(self) -> &'static str {
        match self {
            ChecksumKind::Xxhash => ".xxhash",
            ChecksumKind::Sha1 => ".checksum",
        }
    }

    /// The checksum file's text for `data`, as xapi formats it.
    pub fn compute(self, data: &[u8]) -> String {
        match self {
            ChecksumKind::Xxhash => format!("{:016X}", xxhash_rust::xxh64::xxh64(data, 0)),
            ChecksumKind::Sha1 => {
                use sha1::Digest;
                hex::encode(sha1::Sha1::digest(data))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("truncated XVA: {0}")]
    Truncated(String),
    #[error("corrupt XVA: {0}")]
    Corrupt(String),
    #[error("bad ova.xml: {0}")]
    Metadata(String),
    #[error("checksum mismatch for {name}: archive says {stored:?}, data hashes to {computed:?}")]
    ChecksumMismatch { name: String, stored: String, computed: String },
    /// A caller's mistake: disks out of order, more data than the disk size...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
