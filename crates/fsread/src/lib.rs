//! Read-only, file-level access to disk images: partition tables (MBR with logical
//! partitions, GPT), LVM2 linear volumes, and ext2/3/4, XFS, NTFS and FAT file systems.
//!
//! ```no_run
//! # fn main() -> Result<(), xenvault_fsread::Error> {
//! use std::sync::Arc;
//! let disk = Arc::new(std::fs::File::open("disk.raw").map_err(xenvault_fsread::Error::Io)?);
//! let volumes = xenvault_fsread::probe(disk)?;        // p1, p5, vg/lv, ...
//! let fs = volumes[0].open()?;                         // Box<dyn FileSystem>
//! for e in fs.list("/etc")? { println!("{} {}", e.name, e.size); }
//! fs.extract("/home", std::path::Path::new("/tmp/restore/home"))?;
//! # Ok(()) }
//! ```

mod ext;
mod fat;
mod fsops;
mod lvm;
mod ntfs;
mod source;
mod volume;
mod xfs;

pub use fsops::{ExtractStats, FileReader, glob_match};
pub use source::{Cached, ReadAt, read_exact_at};
pub use volume::{Content, FsType, Volume, open_fs, probe};

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("not a regular file: {0}")]
    NotAFile(String),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("no known file system on this volume")]
    UnknownFileSystem,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("no volume named {0:?} (see probe)")]
    NoSuchVolume(String),
    #[error("refusing unsafe name {0:?} while extracting")]
    UnsafeName(String),
    #[error("{0} already exists: extraction neither overwrites nor follows what is there")]
    Exists(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs, sockets: listed, never extracted.
    Other,
}

/// A directory entry with its metadata. File systems without POSIX metadata (FAT, NTFS)
/// report mode 0755 for directories, 0644 for files (0444 when read-only), uid/gid 0.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Entry {
    pub name: String,
    /// Absolute path inside the file system, e.g. `/etc/hostname`.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky, without file type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch (UTC).
    pub mtime: i64,
    pub mtime_nsec: u32,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub symlink_target: Option<String>,
    /// File system's own id (inode or MFT record number) for fast reopening.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) id: u64,
}

/// A mounted-in-userspace, read-only file system. Paths are `/`-separated and absolute
/// (a missing leading `/` is accepted). Symlinks are never followed: `stat` describes the
/// link itself.
///
/// Walking, searching, streaming reads and extraction are in the provided methods on
/// `dyn FileSystem` (see [`fsops`](crate::FileReader)).
pub trait FileSystem: Send + Sync {
    fn fs_type(&self) -> FsType;
    fn stat(&self, path: &str) -> Result<Entry, Error>;
    /// Entries of a directory, without `.` and `..`.
    fn list(&self, path: &str) -> Result<Vec<Entry>, Error>;
    /// Reads file bytes at `offset` (of the file `entry` from `stat`/`list`); holes read as
    /// zeros without touching the disk. Returns 0 at the end of the file.
    fn read_at(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;
}

/// Runs `f`, turning a panic inside a third-party reader on malformed data into an error.
pub(crate) fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Corrupt { what, detail: "the reader failed on malformed data".into() }))
}

/// Splits an absolute or relative path into its components, ignoring empty ones and `.`.
pub(crate) fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// `/a/b` from a parent path and a name.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') { format!("{parent}{name}") } else { format!("{parent}/{name}") }
}

/// Normalised absolute path (`/` for the root), `..` resolved lexically.
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in components(path) {
        if c == ".." {
            parts.pop();
        } else {
            parts.push(c);
        }
    }
    format!("/{}", parts.join("/"))
}
