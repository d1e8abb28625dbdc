//! FAT12/16/32 through the `fatfs` crate, opened over a `Cursor` whose writes fail. Its
//! `FileSystem` borrows the cursor in every `File`/`Dir`, so each call opens it afresh
//! (the boot sector and FAT come from the metadata cache).

use crate::source::{Cursor, ReadAt};
use crate::{Entry, EntryKind, Error, FileSystem, FsType, components, join, normalize};
use fatfs::{DirEntry, FsOptions};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

type Fs = fatfs::FileSystem<Cursor>;

pub(crate) struct FatFs {
    source: Arc<dyn ReadAt>,
}

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt { what: "FAT file system", detail: detail.into() }
}

impl FatFs {
    pub(crate) fn open(source: Arc<dyn ReadAt>) -> Result<Self, Error> {
        let fs = Self { source };
        fs.with(|_| Ok(()))?;
        Ok(fs)
    }

    /// Runs `f` on a freshly opened file system; a panic inside the crate on bad input
    /// becomes an error.
    fn with<T>(&self, f: impl FnOnce(&Fs) -> Result<T, Error>) -> Result<T, Error> {
        crate::guarded("FAT file system", || {
            let fs = Fs::new(Cursor::new(self.source.clone()), FsOptions::new().oem_cp_converter(&Cp850))
                .map_err(|e| corrupt(format!("boot sector: {e}")))?;
            f(&fs)
        })
    }
}

/// Short (8.3) names are in an OEM code page; Linux and mtools default to 850, and
/// fatfs would otherwise turn every non-ASCII byte into U+FFFD.
#[derive(Debug)]
struct Cp850;

const CP850_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u{ad}±‗¾¶§÷¸°¨·¹³²■\u{a0}";

impl fatfs::OemCpConverter for Cp850 {
    fn decode(&self, oem_char: u8) -> char {
        match oem_char.checked_sub(0x80) {
            None => char::from(oem_char),
            Some(i) => CP850_HIGH.chars().nth(usize::from(i)).unwrap_or(char::REPLACEMENT_CHARACTER),
        }
    }
    fn encode(&self, uni_char: char) -> Option<u8> {
        if uni_char.is_ascii() {
            return u8::try_from(uni_char).ok();
        }
        CP850_HIGH.chars().position(|c| c == uni_char).and_then(|i| u8::try_from(i + 0x80).ok())
    }
}

fn io_err(path: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(path.to_string()),
        _ => corrupt(format!("{path}: {e}")),
    }
}

fn entry(parent: &str, e: &DirEntry<'_, Cursor>) -> Entry {
    let name = e.file_name();
    let dir = e.is_dir();
    let m = e.modified();
    let days = days_from_civil(i64::from(m.date.year), i64::from(m.date.month), i64::from(m.date.day));
    // mtools and Linux write local time; we treat it as UTC, as images built here use.
    let secs = days * 86_400 + i64::from(m.time.hour) * 3600 + i64::from(m.time.min) * 60 + i64::from(m.time.sec);
    Entry {
        path: join(parent, &name),
        name,
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size: if dir { 0 } else { e.len() },
        mode: match (dir, e.attributes().contains(fatfs::FileAttributes::READ_ONLY)) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        },
        uid: 0,
        gid: 0,
        mtime: secs,
        mtime_nsec: u32::from(m.time.millis) * 1_000_000,
        symlink_target: None,
        id: 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn root_entry() -> Entry {
    Entry {
        name: String::new(),
        path: "/".into(),
        kind: EntryKind::Dir,
        size: 0,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        symlink_target: None,
        id: 0,
    }
}

fn rel(path: &str) -> String {
    components(path).collect::<Vec<_>>().join("/")
}

fn list_in(fs: &Fs, path: &str) -> Result<Vec<Entry>, Error> {
    let root = fs.root_dir();
    let dir = if path == "/" { root } else { root.open_dir(&rel(path)).map_err(io_err(path))? };
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(io_err(path))?;
        let name = e.file_name();
        if name != "." && name != ".." {
            out.push(entry(path, &e));
        }
    }
    Ok(out)
}

impl FileSystem for FatFs {
    fn fs_type(&self) -> FsType {
        FsType::Fat
    }

    fn stat(&self, path: &str) -> Result<Entry, Error> {
        let path = normalize(path);
        let Some((parent, name)) = path.rsplit_once('/').filter(|(_, n)| !n.is_empty()) else {
            return Ok(root_entry());
        };
        let parent = if parent.is_empty() { "/" } else { parent };
        self.with(|fs| {
            list_in(fs, parent)?
                .into_iter()
                .find(|e| e.name.to_lowercase() == name.to_lowercase())
                .ok_or_else(|| Error::NotFound(path.clone()))
        })
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>, Error> {
        let path = normalize(path);
        if self.stat(&path)?.kind != EntryKind::Dir {
            return Err(Error::NotADirectory(path));
        }
        self.with(|fs| list_in(fs, &path))
    }

    fn read_at(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if offset >= entry.size {
            return Ok(0);
        }
        self.with(|fs| {
            let err = io_err(&entry.path);
            let mut file = fs.root_dir().open_file(&rel(&entry.path)).map_err(&err)?;
            file.seek(SeekFrom::Start(offset)).map_err(&err)?;
            let want = buf.len().min((entry.size - offset) as usize);
            let mut done = 0;
            while done < want {
                let n = file.read(&mut buf[done..want]).map_err(&err)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_days() {
        assert_eq!(super::days_from_civil(1970, 1, 1), 0);
        assert_eq!(super::days_from_civil(2023, 1, 1), 19_358);
    }
}
