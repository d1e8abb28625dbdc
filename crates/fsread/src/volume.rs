//! Finding volumes on a disk (MBR, GPT, LVM2) and the file system on each.

use crate::lvm;
use crate::source::{Cached, Mapped, ReadAt, read_vec};
use crate::{Error, FileSystem};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext2, ext3 or ext4.
    Ext,
    Xfs,
    Ntfs,
    /// FAT12, FAT16 or FAT32.
    Fat,
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsType::Ext => "ext4",
            FsType::Xfs => "xfs",
            FsType::Ntfs => "ntfs",
            FsType::Fat => "fat",
        })
    }
}

/// What a volume holds, judged from its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    FileSystem(FsType),
    /// Its logical volumes follow it in [`probe`]'s list.
    LvmPhysicalVolume,
    Swap,
    /// An LV that cannot be read (other PV, unsupported segment type): the reason.
    Unreadable(String),
    Unknown,
}

/// A partition (`p1`, `p5`: Linux numbering), a logical volume (`vg/lv`) or the whole
/// disk (`disk`) when it has no partition table.
#[derive(Clone)]
pub struct Volume {
    pub name: String,
    /// Human description: table and partition type, or the LV.
    pub description: String,
    /// Byte offset on the disk; None for LVs (they may be in pieces).
    pub offset: Option<u64>,
    pub size: u64,
    pub content: Content,
    source: Option<Arc<dyn ReadAt>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("content", &self.content)
            .finish()
    }
}

impl Volume {
    /// The volume's bytes.
    pub fn source(&self) -> Result<Arc<dyn ReadAt>, Error> {
        match (&self.source, &self.content) {
            (Some(s), _) => Ok(s.clone()),
            (None, Content::Unreadable(why)) => Err(Error::Unsupported(format!("{}: {why}", self.name))),
            (None, _) => Err(Error::Unsupported(format!("{} cannot be read", self.name))),
        }
    }

    /// Opens the file system on this volume.
    pub fn open(&self) -> Result<Box<dyn FileSystem>, Error> {
        match &self.content {
            Content::FileSystem(t) => open_as(*t, self.source()?),
            Content::Unreadable(why) => Err(Error::Unsupported(format!("{}: {why}", self.name))),
            _ => Err(Error::UnknownFileSystem),
        }
    }
}

/// Lists the volumes of a disk: partitions of an MBR (with logical partitions) or GPT
/// table, the LVs of any LVM2 PV (whole disk or partition), or the whole disk. Reads go
/// through a metadata cache, so pass the raw source.
pub fn probe(disk: Arc<dyn ReadAt>) -> Result<Vec<Volume>, Error> {
    let disk: Arc<dyn ReadAt> = Arc::new(Cached::new(disk));
    let mut out = Vec::new();
    let whole = detect(&*disk)?;
    let parts = if whole == Content::Unknown { partitions(&*disk)? } else { None };
    match parts {
        Some(parts) => {
            for p in parts {
                let source: Arc<dyn ReadAt> = Arc::new(Mapped::slice(disk.clone(), p.offset, p.size));
                add_volume(&mut out, p.name, p.description, Some(p.offset), source)?;
            }
        }
        None => add_volume(&mut out, "disk".into(), "whole disk".into(), Some(0), disk)?,
    }
    Ok(out)
}

/// Detects and opens the file system that fills `source` (a partition or LV image).
pub fn open_fs(source: Arc<dyn ReadAt>) -> Result<Box<dyn FileSystem>, Error> {
    let source: Arc<dyn ReadAt> = Arc::new(Cached::new(source));
    match detect(&*source)? {
        Content::FileSystem(t) => open_as(t, source),
        _ => Err(Error::UnknownFileSystem),
    }
}

fn open_as(t: FsType, source: Arc<dyn ReadAt>) -> Result<Box<dyn FileSystem>, Error> {
    Ok(match t {
        FsType::Ext => Box::new(crate::ext::ExtFs::open(source)?),
        FsType::Xfs => Box::new(crate::xfs::XfsFs::open(source)?),
        FsType::Ntfs => Box::new(crate::ntfs::NtfsFs::open(source)?),
        FsType::Fat => Box::new(crate::fat::FatFs::open(source)?),
    })
}

fn add_volume(
    out: &mut Vec<Volume>,
    name: String,
    description: String,
    offset: Option<u64>,
    source: Arc<dyn ReadAt>,
) -> Result<(), Error> {
    let content = detect(&*source)?;
    let size = source.size();
    let is_pv = content == Content::LvmPhysicalVolume;
    out.push(Volume { name, description, offset, size, content, source: Some(source.clone()) });
    if is_pv {
        for lv in lvm::logical_volumes(source)? {
            let (content, source) = match lv.source {
                Ok(s) => (detect(&*s)?, Some(s)),
                Err(why) => (Content::Unreadable(why), None),
            };
            out.push(Volume {
                name: format!("{}/{}", lv.vg, lv.name),
                description: format!("LVM2 logical volume {} in VG {}", lv.name, lv.vg),
                offset: None,
                size: lv.size,
                content,
                source,
            });
        }
    }
    Ok(())
}

/// Judges a volume by its signatures.
pub(crate) fn detect(src: &dyn ReadAt) -> Result<Content, Error> {
    let len = src.size().min(8192) as usize;
    let head = read_vec(src, 0, len)?;
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    Ok(if lvm::label_sector(&head).is_some() {
        Content::LvmPhysicalVolume
    } else if at(0, b"XFSB") {
        Content::FileSystem(FsType::Xfs)
    } else if at(3, b"NTFS    ") {
        Content::FileSystem(FsType::Ntfs)
    } else if at(1080, &[0x53, 0xef]) {
        Content::FileSystem(FsType::Ext)
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Content::Swap
    } else if at(510, &[0x55, 0xaa]) && (at(54, b"FAT") || at(82, b"FAT32")) && fat_bpb_sane(&head) {
        Content::FileSystem(FsType::Fat)
    } else {
        Content::Unknown
    })
}

fn fat_bpb_sane(boot: &[u8]) -> bool {
    let bytes_per_sector = boot.get(11..13).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let per_cluster = boot.get(13).copied().unwrap_or(0);
    let fats = boot.get(16).copied().unwrap_or(0);
    matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) && per_cluster.is_power_of_two() && (1..=2).contains(&fats)
}

struct Partition {
    name: String,
    description: String,
    offset: u64,
    size: u64,
}

const SECTOR: u64 = 512;

/// GPT if its header is there, else MBR (with EBR chains), else None.
fn partitions(disk: &dyn ReadAt) -> Result<Option<Vec<Partition>>, Error> {
    if disk.size() < 2 * SECTOR {
        return Ok(None);
    }
    let head = read_vec(disk, 0, 2 * SECTOR as usize)?;
    if &head[512..520] == b"EFI PART" {
        return gpt(disk, &head[512..]).map(Some);
    }
    if head[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    mbr(disk, &head[..512]).map(Some)
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> Error {
    Error::Corrupt { what, detail: detail.into() }
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// The four entries of an MBR or EBR: (type, start sector, sectors).
fn mbr_entries(sector: &[u8]) -> Vec<(u8, u64, u64)> {
    (0..4)
        .map(|i| {
            let e = 446 + 16 * i;
            (sector.get(e + 4).copied().unwrap_or(0), u64::from(le32(sector, e + 8)), u64::from(le32(sector, e + 12)))
        })
        .collect()
}

fn mbr(disk: &dyn ReadAt, mbr: &[u8]) -> Result<Vec<Partition>, Error> {
    let disk_sectors = disk.size() / SECTOR;
    let check = |start: u64, len: u64| {
        if start + len > disk_sectors {
            Err(corrupt("MBR partition table", format!("partition at sector {start} + {len} runs past the disk")))
        } else {
            Ok(())
        }
    };
    let mut out = Vec::new();
    for (i, (ty, start, len)) in mbr_entries(mbr).into_iter().enumerate() {
        if ty == 0 || len == 0 {
            continue;
        }
        check(start, len)?;
        if matches!(ty, 0x05 | 0x0f | 0x85) {
            // Logical partitions: a chain of EBRs, each with the partition (relative to the
            // EBR) and a link to the next EBR (relative to the extended partition).
            let mut ebr = start;
            for number in 5..5 + 128 {
                let sector = read_vec(disk, ebr * SECTOR, SECTOR as usize)?;
                if sector[510..512] != [0x55, 0xaa] {
                    return Err(corrupt("MBR extended partition", format!("no EBR signature at sector {ebr}")));
                }
                let entries = mbr_entries(&sector);
                let (lty, lstart, llen) = entries[0];
                if lty != 0 && llen != 0 {
                    check(ebr + lstart, llen)?;
                    out.push(Partition {
                        name: format!("p{number}"),
                        description: format!("MBR logical partition, type {lty:#04x}"),
                        offset: (ebr + lstart) * SECTOR,
                        size: llen * SECTOR,
                    });
                }
                let (nty, nstart, _) = entries[1];
                if nty == 0 || nstart == 0 {
                    break;
                }
                ebr = start + nstart;
            }
            continue;
        }
        out.push(Partition {
            name: format!("p{}", i + 1),
            description: format!("MBR partition, type {ty:#04x}"),
            offset: start * SECTOR,
            size: len * SECTOR,
        });
    }
    Ok(out)
}

fn gpt(disk: &dyn ReadAt, header: &[u8]) -> Result<Vec<Partition>, Error> {
    let header_len = (le32(header, 12) as usize).clamp(92, 512);
    let mut h = header[..header_len].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != le32(header, 16) {
        return Err(corrupt("GPT header", "checksum mismatch"));
    }
    let entries_lba = le64(header, 72);
    let count = le32(header, 80) as usize;
    let entry_size = le32(header, 84) as usize;
    if count > 4096 || !(128..=4096).contains(&entry_size) {
        return Err(corrupt("GPT header", format!("{count} entries of {entry_size} bytes")));
    }
    let table = read_vec(disk, entries_lba * SECTOR, count * entry_size)?;
    if crc32fast::hash(&table) != le32(header, 88) {
        return Err(corrupt("GPT partition array", "checksum mismatch"));
    }
    let disk_sectors = disk.size() / SECTOR;
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(entry_size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first || last >= disk_sectors {
            return Err(corrupt("GPT partition array", format!("entry {} spans sectors {first}..={last}", i + 1)));
        }
        let name: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        out.push(Partition {
            name: format!("p{}", i + 1),
            description: format!("GPT partition {:?}, type {}", String::from_utf16_lossy(&name), guid(&e[..16])),
            offset: first * SECTOR,
            size: (last - first + 1) * SECTOR,
        });
    }
    Ok(out)
}

/// A GUID in its usual text form (first three fields little-endian) with a known name.
fn guid(b: &[u8]) -> String {
    let text = format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02X}")).collect::<String>()
    );
    let known = match text.as_str() {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => " (EFI system)",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => " (Microsoft basic data)",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => " (Microsoft reserved)",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => " (Linux file system)",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => " (Linux LVM)",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => " (Linux swap)",
        _ => "",
    };
    format!("{text}{known}")
}
