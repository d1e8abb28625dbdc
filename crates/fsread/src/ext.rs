//! ext2/3/4 through the `ext4-view` crate. Its `Ext4` is not `Send` (it uses `Rc`), so
//! each call loads it afresh over the cached source: the superblock and group descriptors
//! come from the metadata cache, so this costs memory copies, not disk reads.

use crate::source::{Cursor, ReadAt};
use crate::{Entry, EntryKind, Error, FileSystem, FsType, join, normalize};
use ext4_view::{Ext4, Ext4Error, Metadata};
use std::sync::Arc;

thread_local! {
    /// The file last read on this thread, keyed by (source address, path): sequential
    /// `read_at` calls continue where it stopped instead of re-walking its block map
    /// (`ext4_view::File::seek_to` is linear in the offset). Not `Send`, so per thread.
    static OPEN_FILE: std::cell::RefCell<Option<((usize, String), ext4_view::File)>> =
        const { std::cell::RefCell::new(None) };
}

pub(crate) struct ExtFs {
    source: Arc<dyn ReadAt>,
}

impl ExtFs {
    pub(crate) fn open(source: Arc<dyn ReadAt>) -> Result<Self, Error> {
        let fs = Self { source };
        fs.with(|_| Ok(()))?;
        Ok(fs)
    }

    fn load(&self) -> Result<Ext4, Error> {
        Ext4::load(Box::new(Cursor::new(self.source.clone()))).map_err(|e| map_err(e, "/"))
    }

    /// Loads the file system and runs `f` on it, panics in the crate becoming errors.
    fn with<T>(&self, f: impl FnOnce(&Ext4) -> Result<T, Error>) -> Result<T, Error> {
        crate::guarded("ext2/3/4 file system", || f(&self.load()?))
    }
}

fn map_err(e: Ext4Error, path: &str) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound(path.to_string()),
        Ext4Error::NotADirectory => Error::NotADirectory(path.to_string()),
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => Error::NotAFile(path.to_string()),
        Ext4Error::Incompatible(i) => Error::Unsupported(format!("ext4 feature: {i}")),
        other => Error::Corrupt { what: "ext2/3/4 file system", detail: format!("{path}: {other}") },
    }
}

fn entry(fs: &Ext4, path: &str, meta: &Metadata) -> Result<Entry, Error> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_regular_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    let symlink_target = match kind {
        EntryKind::Symlink => {
            let target = fs.read_link(path).map_err(|e| map_err(e, path))?;
            Some(String::from_utf8_lossy(target.as_ref()).into_owned())
        }
        _ => None,
    };
    let mtime = meta.modified();
    Ok(Entry {
        name: path.rsplit('/').next().unwrap_or_default().to_string(),
        path: path.to_string(),
        kind,
        size: if kind == EntryKind::Dir { 0 } else { meta.len() },
        mode: u32::from(meta.mode()) & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: mtime.seconds(),
        mtime_nsec: mtime.nanoseconds(),
        symlink_target,
        id: 0,
    })
}

impl FileSystem for ExtFs {
    fn fs_type(&self) -> FsType {
        FsType::Ext
    }

    fn stat(&self, path: &str) -> Result<Entry, Error> {
        let path = normalize(path);
        self.with(|fs| {
            let meta = fs.symlink_metadata(path.as_str()).map_err(|e| map_err(e, &path))?;
            entry(fs, &path, &meta)
        })
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>, Error> {
        let path = normalize(path);
        self.with(|fs| {
            let mut out = Vec::new();
            for item in fs.read_dir(path.as_str()).map_err(|e| map_err(e, &path))? {
                let item = item.map_err(|e| map_err(e, &path))?;
                let name = String::from_utf8_lossy(item.file_name().as_ref()).into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let child = join(&path, &name);
                let meta = item.metadata().map_err(|e| map_err(e, &child))?;
                out.push(entry(fs, &child, &meta)?);
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn read_at(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if offset >= entry.size {
            return Ok(0);
        }
        let err = |e| map_err(e, &entry.path);
        // The cached file holds a clone of the source Arc, so its address stays unique.
        let key = (Arc::as_ptr(&self.source).cast::<()>() as usize, entry.path.clone());
        let cached = OPEN_FILE.with(|c| c.borrow_mut().take()).filter(|(k, f)| *k == key && f.position() == offset);
        let mut file = match cached {
            Some((_, file)) => file,
            None => self.with(|fs| {
                let mut file = fs.open(entry.path.as_str()).map_err(err)?;
                // Costs a walk over the blocks before `offset`, hence the cache.
                file.seek_to(offset).map_err(err)?;
                Ok(file)
            })?,
        };
        let done = crate::guarded("ext2/3/4 file system", || {
            let mut done = 0;
            while done < buf.len() {
                let n = file.read_bytes(&mut buf[done..]).map_err(err)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })?;
        OPEN_FILE.with(|c| *c.borrow_mut() = Some((key, file)));
        Ok(done)
    }
}
