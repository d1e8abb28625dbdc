//! Block sources: what a backup reads a disk from.

use crate::error::{Error, Result};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A disk to back up, readable at any offset from any thread.
pub trait BlockSource: Send + Sync {
    /// Virtual size of the disk in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; reads past the end are an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Ranges that may hold data; everything else reads as zeros. `None`: all of it.
    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
}

/// A raw disk image file (or block device).
pub struct RawFileSource {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
}

impl RawFileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let (file, size) = open_disk_file(path)?;
        Ok(RawFileSource { file, path: path.to_path_buf(), size })
    }
}

/// Opens a file that can hold a disk, with its size: a non-empty regular file or a block
/// device. A directory or character device has no size to speak of (a directory's end
/// offset is huge, `/dev/zero` never ends), an empty file holds no disk, and a FIFO would
/// block the open itself: the type is checked before opening.
fn open_disk_file(path: &Path) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::FileTypeExt;
    let io = |e| Error::Io { path: path.to_path_buf(), source: e };
    let kind = std::fs::metadata(path).map_err(io)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file or block device" };
        return Err(Error::Invalid(format!("{} is {what}: give a disk image file or a block device", path.display())));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    // seek(End) also gives block devices their size, where metadata says 0.
    let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
    if size == 0 {
        return Err(Error::Invalid(format!("{} is empty: there is no disk to back up", path.display())));
    }
    Ok((file, size))
}

impl BlockSource for RawFileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::Io { path: self.path.clone(), source: e })
    }

    /// The data extents of a sparse image file, so its holes are never read.
    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        let io = |e| Error::Io { path: self.path.clone(), source: e };
        if !self.file.metadata().map_err(io)?.is_file() {
            return Ok(None);
        }
        data_extents(&self.file, self.size).map_err(io)
    }
}

/// Ranges holding data per SEEK_DATA / SEEK_HOLE; `None` when the file system cannot tell.
fn data_extents(file: &std::fs::File, size: u64) -> std::io::Result<Option<Vec<Range<u64>>>> {
    use std::os::fd::AsRawFd;
    // Some(position), or None for ENXIO: no data (or hole) at or after `at`.
    let seek = |at: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let at = libc::off_t::try_from(at).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek only moves the position of a descriptor this file owns; reads use pread.
        #[allow(unsafe_code)]
        let got = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        match u64::try_from(got) {
            Ok(pos) => Ok(Some(pos)),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) }
            }
        }
    };
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(start)) if start < size => start,
            Ok(_) => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            return Ok(None);
        }
        extents.push(start..end);
        at = end;
    }
    Ok(Some(extents))
}

/// A fixed or dynamic VHD file; its block allocation table tells which ranges to read.
pub struct VhdFileSource {
    reader: std::sync::Mutex<xenvault_vhd::VhdReader<std::fs::File>>,
    path: PathBuf,
    size: u64,
    allocated: Vec<Range<u64>>,
}

impl VhdFileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |e: xenvault_vhd::Error| Error::Invalid(format!("{}: {e}", path.display()));
        let (file, _) = open_disk_file(path)?;
        let reader = xenvault_vhd::VhdReader::open(file).map_err(bad)?;
        if reader.disk_type() == xenvault_vhd::DiskType::Differencing {
            return Err(Error::Invalid(format!(
                "{} is a differencing VHD: back up its chain through the engine instead",
                path.display()
            )));
        }
        let size = reader.disk_size();
        let bs = reader.block_size();
        let allocated = reader.present_blocks().map(|b| (b as u64 * bs)..((b as u64 + 1) * bs).min(size)).collect();
        Ok(VhdFileSource { reader: std::sync::Mutex::new(reader), path: path.to_path_buf(), size, allocated })
    }
}

impl BlockSource for VhdFileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.read_at(offset, buf).map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))
    }

    fn allocated(&self) -> Result<Option<Vec<Range<u64>>>> {
        Ok(Some(self.allocated.clone()))
    }
}

/// How [`open_image`] reads an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// By its content: a VHD by its footer, raw when nothing says otherwise.
    #[default]
    Auto,
    /// The bytes as they are, whatever they look like.
    Raw,
    Vhd,
}

impl std::str::FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ImageFormat::Auto),
            "raw" => Ok(ImageFormat::Raw),
            "vhd" => Ok(ImageFormat::Vhd),
            other => Err(format!("unknown image format {other:?}: auto, raw or vhd")),
        }
    }
}

const VHD_COOKIE: &[u8; 8] = b"conectix";
/// Leading magic of image formats we do not read: storing one as raw would back up the
/// container instead of the disk in it.
const FOREIGN_MAGIC: [(&[u8], &str); 4] = [
    (b"QFI\xfb", "a qcow2 image"),
    (b"vhdxfile", "a VHDX image"),
    (b"KDMV", "a VMDK image"),
    (b"conectix", "a VHD whose footer is missing or damaged"),
];

/// Opens an image file (or block device) as `format` says. `Auto` takes a file with a VHD
/// footer as a VHD and refuses what looks like an image of another kind, or a file named
/// `.vhd` that is none: those are refused rather than stored as raw bytes.
pub fn open_image(path: &Path, format: ImageFormat) -> Result<std::sync::Arc<dyn BlockSource>> {
    let (file, len) = open_disk_file(path)?;
    let mut cookie = [0u8; 8];
    let footer = len >= 512 && file.read_exact_at(&mut cookie, len - 512).is_ok() && &cookie == VHD_COOKIE;
    let refuse = |what: &str| {
        Error::Invalid(format!("{} is {what}: the raw format stores its bytes as they are", path.display()))
    };
    match format {
        ImageFormat::Raw => return Ok(std::sync::Arc::new(RawFileSource::open(path)?)),
        ImageFormat::Vhd if !footer => return Err(refuse("not a VHD (no footer)")),
        _ if footer => return Ok(std::sync::Arc::new(VhdFileSource::open(path)?)),
        _ => {}
    }
    let mut head = [0u8; 8];
    let head = match file.read_at(&mut head, 0) {
        Ok(n) => head.get(..n).unwrap_or_default(),
        Err(e) => return Err(Error::Io { path: path.to_path_buf(), source: e }),
    };
    if let Some((_, what)) = FOREIGN_MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Err(refuse(what));
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("vhd")) {
        return Err(refuse("named .vhd but is not a VHD (no footer)"));
    }
    Ok(std::sync::Arc::new(RawFileSource::open(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_raw_image_lists_only_its_data_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(256 << 20).unwrap();
        let written = [(1u64 << 20, 4096u64), (100 << 20, 10_000), ((256 << 20) - 512, 512)];
        for &(at, len) in &written {
            file.write_all_at(&vec![0xa5; len as usize], at).unwrap();
        }
        let source = RawFileSource::open(&path).unwrap();
        let extents = source.allocated().unwrap().expect("ext4 and tmpfs report holes");
        assert!(extents.windows(2).all(|w| w[0].end < w[1].start), "{extents:?}");
        for (at, len) in written {
            assert!(extents.iter().any(|e| e.start <= at && at + len <= e.end), "{at}+{len} not in {extents:?}");
        }
        let covered: u64 = extents.iter().map(|e| e.end - e.start).sum();
        assert!(covered <= 4 << 20, "{covered} bytes listed as data: {extents:?}");

        let empty = dir.path().join("empty.img");
        std::fs::File::create(&empty).unwrap().set_len(1 << 30).unwrap();
        assert_eq!(RawFileSource::open(&empty).unwrap().allocated().unwrap(), Some(vec![]));
    }

    fn refused(path: &Path, format: ImageFormat, says: &str) {
        let err = open_image(path, format).err().unwrap_or_else(|| panic!("{} opened as {format:?}", path.display()));
        assert!(err.to_string().contains(says), "{err}");
    }

    #[test]
    fn what_holds_no_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        refused(dir.path(), ImageFormat::Auto, "is a directory");
        refused(dir.path(), ImageFormat::Raw, "is a directory");
        refused(Path::new("/dev/zero"), ImageFormat::Raw, "not a regular file or block device");
        let empty = dir.path().join("empty.img");
        std::fs::File::create(&empty).unwrap();
        refused(&empty, ImageFormat::Raw, "is empty");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        refused(&fifo, ImageFormat::Raw, "not a regular file or block device");
    }

    #[test]
    fn images_that_are_not_what_they_seem_are_refused_unless_raw() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, head: &[u8]| {
            let path = dir.path().join(name);
            let mut data = vec![0x5a; 64 << 10];
            data[..head.len()].copy_from_slice(head);
            std::fs::write(&path, data).unwrap();
            path
        };
        // A dynamic VHD keeps a footer copy at its start: that without the real footer is a cut VHD.
        let cut = write("cut.vhd", VHD_COOKIE);
        refused(&cut, ImageFormat::Auto, "footer is missing or damaged");
        refused(&cut, ImageFormat::Vhd, "not a VHD");
        let noise = write("noise.vhd", b"");
        refused(&noise, ImageFormat::Auto, "named .vhd but is not a VHD");
        refused(&write("disk.img", b"QFI\xfb"), ImageFormat::Auto, "a qcow2 image");
        for path in [&cut, &noise] {
            assert_eq!(open_image(path, ImageFormat::Raw).unwrap().size(), 64 << 10);
        }
        let plain = write("plain.img", b"");
        assert_eq!(open_image(&plain, ImageFormat::Auto).unwrap().size(), 64 << 10);
    }
}
