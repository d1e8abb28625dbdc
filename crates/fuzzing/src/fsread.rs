//! Disk images through every file-system reader: partition tables (MBR, GPT), LVM2 and
//! ext2/3/4, XFS, NTFS and FAT, walked and read with bounded work.

use std::io;
use std::sync::{Arc, Once};

use xenvault_fsread::{EntryKind, FileSystem, ReadAt, open_fs, probe};

/// The input is the head of the image; past it, the image reads as zeros up to this size,
/// so seeds keep only their non-zero head (file systems check their size against it).
const IMAGE_SIZE: u64 = 1 << 30;
/// Entries visited per file system: enough for the seeds' trees, bounded for hostile ones.
const MAX_ENTRIES: usize = 512;
/// Bytes read per file and per file system.
const MAX_FILE_READ: usize = 64 << 10;
const MAX_FS_READ: usize = 1 << 20;

/// A disk image: the bytes given, then zeros.
struct ZeroTail(Vec<u8>);

impl ReadAt for ZeroTail {
    fn size(&self) -> u64 {
        IMAGE_SIZE.max(self.0.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.size().saturating_sub(offset) as usize);
        let buf = &mut buf[..want];
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.0.len());
        let head = (self.0.len() - start).min(want);
        buf[..head].copy_from_slice(&self.0[start..start + head]);
        buf[head..].fill(0);
        Ok(want)
    }
}

/// The input as a whole disk: every volume `probe` finds, each file system walked.
pub fn disk(data: &[u8]) {
    walk_image(image(data), true);
}

/// The input as one volume holding a file system, walked.
pub fn volume(data: &[u8]) {
    walk_image(image(data), false);
}

/// What [`disk`] (`whole_disk`) or [`volume`] do with an image: the entries walked.
pub fn walk_image(image: Arc<dyn ReadAt>, whole_disk: bool) -> usize {
    checked(|| {
        if !whole_disk {
            return open_fs(image).map_or(0, |fs| walk(&*fs));
        }
        let Ok(volumes) = probe(image) else { return 0 };
        volumes.iter().filter_map(|v| v.open().ok()).map(|fs| walk(&*fs)).sum()
    })
}

/// The image `disk` and `volume` read: `data`, then zeros up to the image size.
pub fn image(data: &[u8]) -> Arc<dyn ReadAt> {
    Arc::new(ZeroTail(data.to_vec()))
}

/// Lists directories depth first and reads the head of every file (one read each: some
/// readers resolve the path again on every read), within the bounds.
fn walk(fs: &dyn FileSystem) -> usize {
    let (mut seen, mut read) = (0, 0);
    let mut buf = vec![0; MAX_FILE_READ];
    for entry in fs.walk("/").take(MAX_ENTRIES) {
        seen += 1;
        if let Ok(entry) = entry
            && entry.kind == EntryKind::File
            && read < MAX_FS_READ
        {
            read += fs.read_at(&entry, 0, &mut buf).unwrap_or(0);
        }
    }
    seen
}

thread_local! {
    static OWN_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, failing if any panic raised in our own code, even one that a reader caught.
///
/// The readers turn panics of the third-party ext4, NTFS and FAT crates on malformed data
/// into errors (`catch_unwind`). libFuzzer's panic hook would abort on those too, so this
/// hook lets panics located in a third-party crate pass and marks every other one, which
/// `f`'s caller then turns into a failure: a panic in our code is a bug even when caught.
fn checked<T>(f: impl FnOnce() -> T) -> T {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let third_party = info.location().is_some_and(|l| l.file().contains("/.cargo/registry/"));
            if !third_party {
                OWN_PANIC.with(|p| p.set(true));
                previous(info);
            }
        }));
    });
    OWN_PANIC.with(|p| p.set(false));
    let out = f();
    assert!(!OWN_PANIC.with(|p| p.get()), "a panic in our code (see above), even if it was caught");
    out
}
