//! NTFS through the `ntfs` crate. Files are addressed by MFT record number; times and
//! attributes come from $STANDARD_INFORMATION (the $FILE_NAME copies in directory indexes
//! go stale), sizes from the unnamed $DATA attribute.

use crate::fsops::resolve;
use crate::source::{Cursor, ReadAt};
use crate::{Entry, EntryKind, Error, FileSystem, FsType, join, normalize};
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek};
use std::io::SeekFrom;
use std::sync::Arc;

const ROOT_RECORD: u64 = 5;
/// Records below this are NTFS's own metadata files ($MFT, $Bitmap, ...).
const FIRST_USER_RECORD: u64 = 16;
/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF: u64 = 116_444_736_000_000_000;

pub(crate) struct NtfsFs {
    source: Arc<dyn ReadAt>,
    ntfs: Ntfs,
}

fn corrupt(detail: impl std::fmt::Display) -> Error {
    Error::Corrupt { what: "NTFS file system", detail: detail.to_string() }
}

fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    crate::guarded("NTFS file system", f)
}

impl NtfsFs {
    pub(crate) fn open(source: Arc<dyn ReadAt>) -> Result<Self, Error> {
        guarded(|| {
            let mut cur = Cursor::new(source.clone());
            let mut ntfs = Ntfs::new(&mut cur).map_err(corrupt)?;
            ntfs.read_upcase_table(&mut cur).map_err(corrupt)?;
            Ok(Self { source, ntfs })
        })
    }

    fn cursor(&self) -> Cursor {
        Cursor::new(self.source.clone())
    }

    /// (record number, path with names as stored: lookups ignore case) of `path`.
    fn lookup(&self, path: &str) -> Result<(u64, String), Error> {
        let mut cur = self.cursor();
        resolve((ROOT_RECORD, "/".to_string()), path, |(dir, stored_dir), name, walked| {
            let file = self.ntfs.file(&mut cur, *dir).map_err(corrupt)?;
            if !file.is_directory() {
                return Err(Error::NotADirectory(walked.rsplit_once('/').map_or("/", |p| p.0).to_string()));
            }
            let index = file.directory_index(&mut cur).map_err(corrupt)?;
            let mut finder = index.finder();
            let Some(found) = NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut cur, name) else {
                return Ok(None);
            };
            let found = found.map_err(corrupt)?;
            let stored = match found.key() {
                Some(Ok(key)) => key.name().to_string_lossy(),
                _ => name.to_string(),
            };
            Ok(Some((found.file_reference().file_record_number(), join(stored_dir, &stored))))
        })
    }

    fn entry(&self, cur: &mut Cursor, record: u64, path: String, name: String) -> Result<Entry, Error> {
        let file = self.ntfs.file(cur, record).map_err(corrupt)?;
        let info = file.info().map_err(corrupt)?;
        let dir = file.is_directory();
        let size = if dir { 0 } else { data_len(&file, cur)? };
        let t = info.modification_time().nt_timestamp();
        let read_only = info.file_attributes().contains(NtfsFileAttributeFlags::READ_ONLY);
        Ok(Entry {
            name,
            path,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size,
            mode: if dir {
                0o755
            } else if read_only {
                0o444
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: (t as i64 - EPOCH_DIFF as i64).div_euclid(10_000_000),
            mtime_nsec: (t % 10_000_000) as u32 * 100,
            symlink_target: None,
            id: record,
        })
    }
}

fn data_len(file: &NtfsFile<'_>, cur: &mut Cursor) -> Result<u64, Error> {
    match file.data(cur, "") {
        None => Ok(0),
        Some(item) => Ok(item.map_err(corrupt)?.to_attribute().map_err(corrupt)?.value_length()),
    }
}

impl FileSystem for NtfsFs {
    fn fs_type(&self) -> FsType {
        FsType::Ntfs
    }

    fn stat(&self, path: &str) -> Result<Entry, Error> {
        let path = normalize(path);
        guarded(|| {
            let (record, path) = self.lookup(&path)?;
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            self.entry(&mut self.cursor(), record, path, name)
        })
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>, Error> {
        let path = normalize(path);
        guarded(|| {
            let (record, _) = self.lookup(&path)?;
            let mut cur = self.cursor();
            let dir = self.ntfs.file(&mut cur, record).map_err(corrupt)?;
            if !dir.is_directory() {
                return Err(Error::NotADirectory(path.clone()));
            }
            let index = dir.directory_index(&mut cur).map_err(corrupt)?;
            let mut entries = index.entries();
            let mut found = Vec::new();
            while let Some(e) = entries.next(&mut cur) {
                let e = e.map_err(corrupt)?;
                let Some(key) = e.key() else { continue };
                let key = key.map_err(corrupt)?;
                let child = e.file_reference().file_record_number();
                // DOS 8.3 aliases duplicate Win32 names; low records are NTFS metadata.
                if key.namespace() == NtfsFileNamespace::Dos || child < FIRST_USER_RECORD || child == record {
                    continue;
                }
                found.push((child, key.name().to_string_lossy()));
            }
            let mut out = found
                .into_iter()
                .map(|(child, name)| self.entry(&mut cur, child, join(&path, &name), name))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn read_at(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if offset >= entry.size {
            return Ok(0);
        }
        guarded(|| {
            let mut cur = self.cursor();
            let file = self.ntfs.file(&mut cur, entry.id).map_err(corrupt)?;
            let item = file.data(&mut cur, "").ok_or_else(|| Error::NotAFile(entry.path.clone()))?.map_err(corrupt)?;
            let attr = item.to_attribute().map_err(corrupt)?;
            let mut value = attr.value(&mut cur).map_err(corrupt)?;
            value.seek(&mut cur, SeekFrom::Start(offset)).map_err(corrupt)?;
            let want = buf.len().min((entry.size - offset) as usize);
            let mut done = 0;
            while done < want {
                let n = value.read(&mut cur, &mut buf[done..want]).map_err(corrupt)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })
    }
}
