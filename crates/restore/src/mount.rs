//! A stored file system mounted read-only through FUSE: the kernel asks for names,
//! attributes and bytes, which come from the repository as they are read.

use crate::files::StoredFs;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use xenvault_fsread::{Entry, EntryKind, FileSystem};

/// A restore point never changes: the kernel may cache what it learnt for long.
const TTL: Duration = Duration::from_secs(3600);

/// Inode numbers handed to the kernel, by path (the root is inode 1).
#[derive(Default)]
struct Inodes {
    by_path: HashMap<String, u64>,
    entries: Vec<Entry>,
}

impl Inodes {
    fn number(&mut self, entry: Entry) -> u64 {
        if let Some(&ino) = self.by_path.get(&entry.path) {
            return ino;
        }
        self.entries.push(entry.clone());
        let ino = self.entries.len() as u64;
        self.by_path.insert(entry.path, ino);
        ino
    }

    fn get(&self, ino: INodeNo) -> Option<&Entry> {
        let index = usize::try_from(ino.0).ok()?.checked_sub(1)?;
        self.entries.get(index)
    }
}

struct MountedFs {
    fs: Arc<dyn FileSystem>,
    inodes: Mutex<Inodes>,
}

fn errno(e: &xenvault_fsread::Error) -> Errno {
    match e {
        xenvault_fsread::Error::NotFound(_) => Errno::ENOENT,
        xenvault_fsread::Error::NotADirectory(_) => Errno::ENOTDIR,
        other => {
            tracing::warn!("mount: {other}");
            Errno::EIO
        }
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File | EntryKind::Other => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
    }
}

fn attr(ino: u64, e: &Entry) -> FileAttr {
    let mtime = match u64::try_from(e.mtime) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, e.mtime_nsec.min(999_999_999)),
        Err(_) => UNIX_EPOCH,
    };
    FileAttr {
        ino: INodeNo(ino),
        size: e.size,
        blocks: e.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(e.kind),
        // Read-only whatever the stored bits say; the kernel checks them (default_permissions).
        perm: (e.mode & 0o7555) as u16,
        nlink: if e.kind == EntryKind::Dir { 2 } else { 1 },
        uid: e.uid,
        gid: e.gid,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl MountedFs {
    fn entry(&self, ino: INodeNo) -> Result<Entry, Errno> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner()).get(ino).cloned().ok_or(Errno::ENOENT)
    }

    fn number(&self, entry: Entry) -> u64 {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner()).number(entry)
    }

    fn child_path(parent: &Entry, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        Ok(format!("{}/{name}", parent.path.trim_end_matches('/')))
    }

    fn read_range(&self, e: &Entry, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let len = e.size.saturating_sub(offset).min(size.into());
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Errno::EINVAL)?];
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            match self.fs.read_at(e, offset + done as u64, rest).map_err(|e| errno(&e))? {
                0 => break,
                n => done += n,
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}

impl Filesystem for MountedFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .entry(parent)
            .and_then(|p| Self::child_path(&p, name))
            .and_then(|path| self.fs.stat(&path).map_err(|e| errno(&e)));
        match found {
            Ok(e) => reply.entry(&TTL, &attr(self.number(e.clone()), &e), fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry(ino) {
            Ok(e) => reply.attr(&TTL, &attr(ino.0, &e)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino).map(|e| e.symlink_target) {
            Ok(Some(target)) => reply.data(target.as_bytes()),
            Ok(None) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.entry(ino).and_then(|e| self.read_range(&e, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    /// Extended attributes are not read from the stored file systems.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.entry(ino).and_then(|dir| self.fs.list(&dir.path).map_err(|e| errno(&e)));
        let children = match listed {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![(ino.0, FileType::Directory, ".".to_owned()), (ino.0, FileType::Directory, "..".to_owned())];
        for e in children {
            let (kind, name) = (file_type(e.kind), e.name.clone());
            all.push((self.number(e), kind, name));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (n, (number, kind, name)) in all.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(number), n as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted restore point file system; unmounted on [`Mount::unmount`] or drop.
pub struct Mount {
    session: fuser::BackgroundSession,
}

impl Mount {
    /// Whether the file system was unmounted from outside (`umount`, `fusermount -u`).
    pub fn ended(&self) -> bool {
        self.session.guard.is_finished()
    }

    pub fn unmount(self) -> io::Result<()> {
        self.session.umount_and_join()
    }
}

/// Mounts `fs` read-only on `mountpoint` (an existing directory). Needs /dev/fuse and the
/// right to mount (root, or fusermount3).
pub fn mount(fs: &StoredFs, mountpoint: &Path, name: &str) -> io::Result<Mount> {
    let fs = fs.file_system();
    let root = fs.stat("/").map_err(io::Error::other)?;
    let mut inodes = Inodes::default();
    inodes.number(root);
    let mounted = MountedFs { fs, inodes: Mutex::new(inodes) };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(name.to_owned()),
        MountOption::Subtype("xenvault".into()),
    ];
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(mounted, mountpoint, &config)?;
    Ok(Mount { session })
}
