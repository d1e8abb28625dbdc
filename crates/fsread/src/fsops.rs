//! What every file system gets on top of `stat`/`list`/`read_at`: streaming reads,
//! walking, glob search and extraction to the host with modes and mtimes.

use crate::{Entry, EntryKind, Error, FileSystem, join, normalize};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deeper than any sane tree: stops cycles in corrupt directories.
const MAX_DEPTH: usize = 512;
const CHUNK: usize = 1 << 20;

/// Streams a file; `Seek` is cheap (reads are positional).
pub struct FileReader<'a> {
    fs: &'a dyn FileSystem,
    entry: Entry,
    pos: u64,
}

impl FileReader<'_> {
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fs.read_at(&self.entry, self.pos, buf).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.entry.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

/// Depth-first walk below a directory (parents before children), see [`walk`](dyn FileSystem::walk).
pub struct Walk<'a> {
    fs: &'a dyn FileSystem,
    stack: Vec<(Entry, usize)>,
    error: Option<Error>,
}

impl Iterator for Walk<'_> {
    type Item = Result<Entry, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let (entry, depth) = self.stack.pop()?;
        if entry.kind == EntryKind::Dir {
            if depth >= MAX_DEPTH {
                return Some(Err(too_deep(&entry.path)));
            }
            match self.fs.list(&entry.path) {
                Ok(children) => self.stack.extend(children.into_iter().rev().map(|c| (c, depth + 1))),
                Err(e) => self.error = Some(e),
            }
        }
        Some(Ok(entry))
    }
}

fn too_deep(path: &str) -> Error {
    Error::Corrupt { what: "directory tree", detail: format!("deeper than {MAX_DEPTH} levels at {path}") }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Devices, FIFOs and sockets, which are not recreated.
    pub skipped: u64,
    pub bytes: u64,
}

impl dyn FileSystem + '_ {
    /// Streams the regular file at `path`.
    pub fn open(&self, path: &str) -> Result<FileReader<'_>, Error> {
        let entry = self.stat(path)?;
        if entry.kind != EntryKind::File {
            return Err(Error::NotAFile(entry.path));
        }
        Ok(FileReader { fs: self, entry, pos: 0 })
    }

    /// The whole file in memory (for small files).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.open(path)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Everything below `path` (not `path` itself), parents before children.
    pub fn walk(&self, path: &str) -> Walk<'_> {
        let (stack, error) = match self.list(path) {
            Ok(children) => (children.into_iter().rev().map(|c| (c, 1)).collect(), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Walk { fs: self, stack, error }
    }

    /// Entries whose path (when `pattern` has a `/`) or name matches the glob: `*` and `?`
    /// stay within one component, `**` crosses them. E.g. `*.conf`, `/home/**/*.txt`.
    pub fn find(&self, pattern: &str) -> Result<Vec<Entry>, Error> {
        let by_path = pattern.contains('/');
        let pattern = if by_path { normalize_glob(pattern) } else { pattern.to_string() };
        let mut out = Vec::new();
        for entry in self.walk("/") {
            let entry = entry?;
            let subject = if by_path { &entry.path } else { &entry.name };
            if glob_match(&pattern, subject) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Writes the file, symlink or directory tree at `path` to `dest` (which becomes that
    /// entry), with permissions and modification times; holes stay holes. Nothing already
    /// there is overwritten or followed: an existing directory is filled, anything else
    /// (a file, a symlink, even to a directory) is refused with [`Error::Exists`].
    pub fn extract(&self, path: &str, dest: &Path) -> Result<ExtractStats, Error> {
        let entry = self.stat(path)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut stats = ExtractStats::default();
        self.extract_entry(&entry, dest, 0, &mut stats)?;
        Ok(stats)
    }

    fn extract_entry(&self, entry: &Entry, dest: &Path, depth: usize, stats: &mut ExtractStats) -> Result<(), Error> {
        match entry.kind {
            EntryKind::Dir => {
                if depth >= MAX_DEPTH {
                    return Err(too_deep(&entry.path));
                }
                make_dir(dest)?;
                for child in self.list(&entry.path)? {
                    if child.name.is_empty()
                        || child.name == "."
                        || child.name == ".."
                        || child.name.contains(['/', '\0'])
                    {
                        return Err(Error::UnsafeName(child.path));
                    }
                    self.extract_entry(&child, &dest.join(&child.name), depth + 1, stats)?;
                }
                // Last, so a read-only directory could still be filled.
                let dir =
                    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dest)?;
                set_meta(&dir, entry)?;
                stats.dirs += 1;
            }
            EntryKind::File => {
                let out = OpenOptions::new().write(true).create_new(true).open(dest).map_err(|e| exists(e, dest))?;
                let mut buf = vec![0u8; CHUNK];
                let mut pos = 0;
                while pos < entry.size {
                    let want = (entry.size - pos).min(CHUNK as u64) as usize;
                    let n = self.read_at(entry, pos, &mut buf[..want])?;
                    if n == 0 {
                        return Err(Error::Corrupt {
                            what: "file",
                            detail: format!("{} ends at {pos} of {} bytes", entry.path, entry.size),
                        });
                    }
                    write_sparse(&out, &buf[..n], pos)?;
                    pos += n as u64;
                }
                out.set_len(entry.size)?;
                set_meta(&out, entry)?;
                stats.files += 1;
                stats.bytes += entry.size;
            }
            EntryKind::Symlink => {
                let target = entry.symlink_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, dest).map_err(|e| exists(e, dest))?;
                stats.symlinks += 1;
            }
            EntryKind::Other => stats.skipped += 1,
        }
        Ok(())
    }
}

/// Creates directory `dest`, or takes a directory already there, never a symlink to one.
fn make_dir(dest: &Path) -> Result<(), Error> {
    match fs::create_dir(dest) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs::symlink_metadata(dest)?.is_dir() => Ok(()),
        other => other.map_err(|e| exists(e, dest)),
    }
}

/// `create_new` and `symlink` fail on anything at `dest`, a dangling symlink included.
fn exists(e: io::Error, dest: &Path) -> Error {
    if e.kind() == io::ErrorKind::AlreadyExists { Error::Exists(dest.display().to_string()) } else { Error::Io(e) }
}

/// Writes `data` at `pos` skipping all-zero 4 KiB blocks, so holes stay holes (the
/// final `set_len` covers a zero tail).
fn write_sparse(out: &File, data: &[u8], pos: u64) -> io::Result<()> {
    const BLOCK: usize = 4096;
    let mut run_start = None;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let zero = block.iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i * BLOCK),
            (true, Some(start)) => {
                out.write_all_at(&data[start..i * BLOCK], pos + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        out.write_all_at(&data[start..], pos + start as u64)?;
    }
    Ok(())
}

fn set_meta(file: &File, entry: &Entry) -> Result<(), Error> {
    file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))?;
    let mtime = system_time(entry.mtime, entry.mtime_nsec);
    file.set_times(FileTimes::new().set_modified(mtime).set_accessed(mtime))?;
    Ok(())
}

fn system_time(secs: i64, nsec: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nsec));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn normalize_glob(pattern: &str) -> String {
    if pattern.starts_with('/') { pattern.to_string() } else { join("/", pattern) }
}

/// Glob match: `*` any run within a component, `**` any run across components, `?` one
/// character other than `/`. Dynamic programming, so no exponential blow-up.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    enum Tok {
        Star,
        DoubleStar,
        One,
        Lit(char),
    }
    let p: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' if p.get(i + 1) == Some(&'*') => {
                toks.push(Tok::DoubleStar);
                i += 1;
                // `**/` also matches zero directories.
                if p.get(i + 1) == Some(&'/') {
                    i += 1;
                }
            }
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::One),
            c => toks.push(Tok::Lit(c)),
        }
        i += 1;
    }
    let t: Vec<char> = text.chars().collect();
    // row[j]: tokens so far match t[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for tok in &toks {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match tok {
                Tok::Star => row[j] || (j > 0 && next[j - 1] && t[j - 1] != '/'),
                Tok::DoubleStar => row[j] || (j > 0 && next[j - 1]),
                Tok::One => j > 0 && row[j - 1] && t[j - 1] != '/',
                Tok::Lit(c) => j > 0 && row[j - 1] && t[j - 1] == *c,
            };
        }
        row = next;
    }
    row[t.len()]
}

/// Resolves `path` component by component with a per-directory lookup, for readers that
/// work on ids. Symlinks inside the path are not followed.
pub(crate) fn resolve<T: Clone>(
    root: T,
    path: &str,
    mut lookup: impl FnMut(&T, &str, &str) -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    let path = normalize(path);
    let mut cur = root;
    let mut walked = String::new();
    for name in crate::components(&path) {
        walked = join(if walked.is_empty() { "/" } else { &walked }, name);
        cur = lookup(&cur, name, &walked)?.ok_or_else(|| Error::NotFound(walked.clone()))?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.txt", "a b.txt"));
        assert!(!glob_match("*.txt", "dir/a.txt"));
        assert!(glob_match("/home/**/*.txt", "/home/alice/x/y.txt"));
        assert!(glob_match("/home/**/*.txt", "/home/y.txt"));
        assert!(glob_match("/etc/host?ame", "/etc/hostname"));
        assert!(!glob_match("/etc/*", "/etc/ssh/sshd_config"));
        assert!(glob_match(&"*".repeat(50), &"a".repeat(200)));
    }
}
