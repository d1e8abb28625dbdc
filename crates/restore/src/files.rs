//! File-level restore: the volumes of a stored disk, and listing, searching and
//! extracting files of one of its file systems, in userspace and read-only.

use crate::{Error, RepoDisk, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xenvault_fsread::{Content, Entry, EntryKind, ExtractStats, FileSystem, Volume};

/// A volume of a stored disk, as `xenvault files` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub description: String,
    pub offset: Option<u64>,
    pub size: u64,
    /// `ext4`, `xfs`, `ntfs`, `fat`, `lvm-pv`, `swap`, `unknown` or `unreadable: why`.
    pub content: String,
}

impl From<&Volume> for VolumeInfo {
    fn from(v: &Volume) -> Self {
        let content = match &v.content {
            Content::FileSystem(t) => t.to_string(),
            Content::LvmPhysicalVolume => "lvm-pv".into(),
            Content::Swap => "swap".into(),
            Content::Unreadable(why) => format!("unreadable: {why}"),
            Content::Unknown => "unknown".into(),
        };
        VolumeInfo { name: v.name.clone(), description: v.description.clone(), offset: v.offset, size: v.size, content }
    }
}

/// Runs blocking file system work (each read waits on the repository) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// The volumes (partitions, LVs, or the whole disk) of a stored disk.
pub async fn volumes(disk: RepoDisk) -> Result<Vec<VolumeInfo>> {
    blocking(move || Ok(xenvault_fsread::probe(Arc::new(disk))?.iter().map(VolumeInfo::from).collect())).await
}

/// One file system of a stored disk, opened read-only.
#[derive(Clone)]
pub struct StoredFs {
    fs: Arc<dyn FileSystem>,
    volume: VolumeInfo,
}

impl StoredFs {
    /// Opens the file system on volume `partition` (`p1`, `vg/lv`, `disk`), or when none
    /// is named, the largest volume holding a file system we read.
    pub async fn open(disk: RepoDisk, partition: Option<String>) -> Result<StoredFs> {
        let disk_name = disk.reader().disk().name.clone();
        blocking(move || {
            let vols = xenvault_fsread::probe(Arc::new(disk))?;
            let names = || vols.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ");
            let volume = match &partition {
                Some(name) => vols.iter().find(|v| &v.name == name).ok_or_else(|| Error::NoSuchVolume {
                    disk: disk_name.clone(),
                    name: name.clone(),
                    available: names(),
                })?,
                None => vols
                    .iter()
                    .filter(|v| matches!(v.content, Content::FileSystem(_)))
                    .max_by_key(|v| v.size)
                    .ok_or_else(|| Error::NoFileSystem(disk_name.clone()))?,
            };
            let fs: Arc<dyn FileSystem> = Arc::from(volume.open()?);
            Ok(StoredFs { fs, volume: VolumeInfo::from(volume) })
        })
        .await
    }

    /// The file system itself, for synchronous work on a blocking thread (e.g. streaming an archive).
    pub fn file_system(&self) -> Arc<dyn FileSystem> {
        self.fs.clone()
    }

    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let (fs, path) = (self.fs.clone(), path.to_string());
        blocking(move || Ok(fs.stat(&path)?)).await
    }

    /// Entries of directory `path`, sorted by name; `path` itself when it is not a directory.
    pub async fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let (fs, path) = (self.fs.clone(), path.to_string());
        blocking(move || {
            let entry = fs.stat(&path)?;
            if entry.kind != EntryKind::Dir {
                return Ok(vec![entry]);
            }
            let mut entries = fs.list(&path)?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
        .await
    }

    /// Entries matching a glob (`*`, `?`, `**`): a pattern with a `/` matches whole paths,
    /// a bare one matches names anywhere.
    pub async fn find(&self, pattern: &str) -> Result<Vec<Entry>> {
        let (fs, pattern) = (self.fs.clone(), pattern.to_string());
        blocking(move || Ok(fs.find(&pattern)?)).await
    }

    /// Extracts the file or directory tree `path` to `dest` with permissions, timestamps
    /// and symlinks; holes stay sparse.
    pub async fn extract(&self, path: &str, dest: &Path) -> Result<ExtractStats> {
        let (fs, path, dest) = (self.fs.clone(), path.to_string(), PathBuf::from(dest));
        blocking(move || Ok(fs.extract(&path, &dest)?)).await
    }

    /// Streams regular file `path` into `out` (e.g. stdout); returns its size.
    pub async fn copy_file<W: std::io::Write + Send + 'static>(&self, path: &str, mut out: W) -> Result<u64> {
        let (fs, path) = (self.fs.clone(), path.to_string());
        blocking(move || {
            let copied = std::io::copy(&mut fs.open(&path)?, &mut out)?;
            out.flush()?;
            Ok(copied)
        })
        .await
    }

    /// The bytes of file `path` (for small files: `files cat`).
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let (fs, path) = (self.fs.clone(), path.to_string());
        blocking(move || Ok(fs.read(&path)?)).await
    }
}
