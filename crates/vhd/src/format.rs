//! On-disk structures of the VHD format (Microsoft Virtual Hard Disk spec 1.0): the
//! 512-byte footer, the 1024-byte dynamic disk header and its parent locators. All
//! fields are big-endian; both structures carry a one's-complement checksum.

use uuid::Uuid;

use crate::{Error, Result, SECTOR_SIZE};

pub const FOOTER_SIZE: usize = 512;
pub const HEADER_SIZE: usize = 1024;
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Format version of both footer and header.
const FORMAT_VERSION: u32 = 0x0001_0000;
/// The footer's data offset of a fixed disk, and the header's (unused) data offset.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Bit 1 of the footer's features is reserved and "must always be set".
const FEATURES_RESERVED: u32 = 2;
/// BAT entry of a block that has no data in this file.
pub const BAT_UNUSED: u32 = u32::MAX;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01T00:00:00Z).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;
/// Platform code of a parent locator holding a `file://` URI (the one xapi writes).
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");

const FOOTER_CHECKSUM_AT: usize = 64;
const HEADER_CHECKSUM_AT: usize = 36;
const LOCATORS_AT: usize = 576;
const LOCATOR_SIZE: usize = 24;
const UNICODE_NAME_AT: usize = 64;
const UNICODE_NAME_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
}

/// Cylinders, heads and sectors per track, as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The spec's appendix "CHS calculation", as xapi's vhd library implements it
    /// (it switches to 255 sectors per track only strictly above 65535*16*63 sectors).
    pub fn for_size(disk_size: u64) -> Geometry {
        let total = (disk_size / SECTOR_SIZE).min(65535 * 16 * 255);
        let (spt, heads, cyl_times_heads) = if total > 65535 * 16 * 63 {
            (255, 16, total / 255)
        } else {
            let mut spt = 17;
            let mut cth = total / spt;
            let mut heads = cth.div_ceil(1024).max(4);
            if cth >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cth = total / spt;
            }
            if cth >= heads * 1024 {
                spt = 63;
                heads = 16;
                cth = total / spt;
            }
            (spt, heads, cth)
        };
        Geometry {
            // Bounded by the clamp above: at most 65535 cylinders, 16 heads, 255 sectors.
            cylinders: u16::try_from(cyl_times_heads / heads).unwrap_or(u16::MAX),
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    /// Size in bytes that CHS-based readers (Virtual PC, qemu for most creators) assume.
    pub fn size(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track) * SECTOR_SIZE
    }
}

/// The 512-byte footer at the end of every VHD (copied at offset 0 in dynamic ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    /// Offset of the dynamic header; [`NO_DATA_OFFSET`] for fixed disks.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    pub creator_application: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: u32,
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub unique_id: Uuid,
    pub saved_state: bool,
}

impl Footer {
    /// A footer as xapi's vhd library creates it: creator `caml` version 1, host OS 0,
    /// only the reserved feature bit, original size = current size.
    pub fn xapi(disk_type: DiskType, current_size: u64, data_offset: u64, unique_id: Uuid, timestamp: u32) -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            data_offset,
            timestamp,
            creator_application: *b"caml",
            creator_version: 1,
            creator_host_os: 0,
            original_size: current_size,
            current_size,
            geometry: Geometry::for_size(current_size),
            disk_type,
            unique_id,
            saved_state: false,
        }
    }

    pub fn parse(buf: &[u8; FOOTER_SIZE]) -> Result<Footer> {
        check_structure("footer", buf, FOOTER_COOKIE, FOOTER_CHECKSUM_AT, 12)?;
        let raw_type = be_u32(buf, 60);
        let disk_type =
            DiskType::from_u32(raw_type).ok_or_else(|| Error::Unsupported(format!("disk type {raw_type}")))?;
        let mut creator_application = [0; 4];
        creator_application.copy_from_slice(&buf[28..32]);
        Ok(Footer {
            features: be_u32(buf, 8),
            data_offset: be_u64(buf, 16),
            timestamp: be_u32(buf, 24),
            creator_application,
            creator_version: be_u32(buf, 32),
            creator_host_os: be_u32(buf, 36),
            original_size: be_u64(buf, 40),
            current_size: be_u64(buf, 48),
            geometry: Geometry {
                cylinders: u16::from_be_bytes([buf[56], buf[57]]),
                heads: buf[58],
                sectors_per_track: buf[59],
            },
            disk_type,
            unique_id: Uuid::from_bytes(array16(buf, 68)),
            saved_state: buf[84] != 0,
        })
    }

    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut buf = [0u8; FOOTER_SIZE];
        buf[..8].copy_from_slice(FOOTER_COOKIE);
        put_u32(&mut buf, 8, self.features);
        put_u32(&mut buf, 12, FORMAT_VERSION);
        put_u64(&mut buf, 16, self.data_offset);
        put_u32(&mut buf, 24, self.timestamp);
        buf[28..32].copy_from_slice(&self.creator_application);
        put_u32(&mut buf, 32, self.creator_version);
        put_u32(&mut buf, 36, self.creator_host_os);
        put_u64(&mut buf, 40, self.original_size);
        put_u64(&mut buf, 48, self.current_size);
        buf[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        buf[58] = self.geometry.heads;
        buf[59] = self.geometry.sectors_per_track;
        put_u32(&mut buf, 60, self.disk_type.to_u32());
        buf[68..84].copy_from_slice(self.unique_id.as_bytes());
        buf[84] = u8::from(self.saved_state);
        let sum = checksum(&buf);
        put_u32(&mut buf, FOOTER_CHECKSUM_AT, sum);
        buf
    }
}

/// One of the eight parent locators of a differencing disk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// Platform code, e.g. [`PLATFORM_MACX`]; 0 when unused.
    pub platform_code: u32,
    /// Space reserved for the locator's data, as stored (sectors per the spec; some
    /// writers store bytes).
    pub data_space: u32,
    /// Length of the locator's data in bytes.
    pub data_length: u32,
    /// File offset of the locator's data.
    pub data_offset: u64,
}

/// The 1024-byte header of dynamic and differencing disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// File offset of the block allocation table.
    pub table_offset: u64,
    pub max_table_entries: u32,
    /// Bytes of disk data per block (2 MiB by default).
    pub block_size: u32,
    pub parent_unique_id: Uuid,
    /// Modification time of the parent file, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// The parent's file name (UTF-16 big-endian on disk, at most 256 code units).
    pub parent_unicode_name: String,
    pub parent_locators: [ParentLocator; 8],
}

impl DynamicHeader {
    pub fn parse(buf: &[u8; HEADER_SIZE]) -> Result<DynamicHeader> {
        check_structure("dynamic header", buf, HEADER_COOKIE, HEADER_CHECKSUM_AT, 24)?;
        let name_units: Vec<u16> = buf[UNICODE_NAME_AT..UNICODE_NAME_AT + UNICODE_NAME_LEN]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let mut parent_locators = [ParentLocator::default(); 8];
        for (i, loc) in parent_locators.iter_mut().enumerate() {
            let at = LOCATORS_AT + i * LOCATOR_SIZE;
            *loc = ParentLocator {
                platform_code: be_u32(buf, at),
                data_space: be_u32(buf, at + 4),
                data_length: be_u32(buf, at + 8),
                data_offset: be_u64(buf, at + 16),
            };
        }
        Ok(DynamicHeader {
            table_offset: be_u64(buf, 16),
            max_table_entries: be_u32(buf, 28),
            block_size: be_u32(buf, 32),
            parent_unique_id: Uuid::from_bytes(array16(buf, 40)),
            parent_timestamp: be_u32(buf, 56),
            parent_unicode_name: String::from_utf16_lossy(&name_units),
            parent_locators,
        })
    }

    /// Serialises the header. Fails when the parent name exceeds 256 UTF-16 units.
    pub fn to_bytes(&self) -> Result<[u8; HEADER_SIZE]> {
        let mut buf = [0u8; HEADER_SIZE];
        buf[..8].copy_from_slice(HEADER_COOKIE);
        put_u64(&mut buf, 8, NO_DATA_OFFSET);
        put_u64(&mut buf, 16, self.table_offset);
        put_u32(&mut buf, 24, FORMAT_VERSION);
        put_u32(&mut buf, 28, self.max_table_entries);
        put_u32(&mut buf, 32, self.block_size);
        buf[40..56].copy_from_slice(self.parent_unique_id.as_bytes());
        put_u32(&mut buf, 56, self.parent_timestamp);
        let units: Vec<u16> = self.parent_unicode_name.encode_utf16().collect();
        if units.len() * 2 > UNICODE_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "parent name is {} UTF-16 units long, the header holds 256",
                units.len()
            )));
        }
        for (i, u) in units.iter().enumerate() {
            let at = UNICODE_NAME_AT + 2 * i;
            buf[at..at + 2].copy_from_slice(&u.to_be_bytes());
        }
        for (i, loc) in self.parent_locators.iter().enumerate() {
            let at = LOCATORS_AT + i * LOCATOR_SIZE;
            put_u32(&mut buf, at, loc.platform_code);
            put_u32(&mut buf, at + 4, loc.data_space);
            put_u32(&mut buf, at + 8, loc.data_length);
            put_u64(&mut buf, at + 16, loc.data_offset);
        }
        let sum = checksum(&buf);
        put_u32(&mut buf, HEADER_CHECKSUM_AT, sum);
        Ok(buf)
    }

    /// Bytes of the sector bitmap in front of each block's data, padded to a sector.
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }
}

pub(crate) fn bitmap_size(block_size: u32) -> u64 {
    (u64::from(block_size) / SECTOR_SIZE).div_ceil(8).next_multiple_of(SECTOR_SIZE)
}

/// One's complement of the byte sum, the checksum field counting as zero.
fn checksum_skipping(buf: &[u8], checksum_at: usize) -> u32 {
    let sum = buf
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Checksum of a buffer whose checksum field is still zero.
fn checksum(buf: &[u8]) -> u32 {
    !buf.iter().fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
}

/// Cookie, checksum and format version, checked in that order so that the error says
/// what is most likely wrong (not a VHD at all, damaged, or a newer format).
fn check_structure(
    what: &'static str,
    buf: &[u8],
    cookie: &'static [u8; 8],
    checksum_at: usize,
    version_at: usize,
) -> Result<()> {
    let found = &buf[..8];
    if found != cookie {
        return Err(Error::BadCookie {
            what,
            found: String::from_utf8_lossy(found).into_owned(),
            expected: String::from_utf8_lossy(cookie).into_owned(),
        });
    }
    let stored = be_u32(buf, checksum_at);
    let computed = checksum_skipping(buf, checksum_at);
    if stored != computed {
        return Err(Error::BadChecksum { what, stored, computed });
    }
    let version = be_u32(buf, version_at);
    if version != FORMAT_VERSION {
        return Err(Error::Unsupported(format!("{what} version {version:#010x}")));
    }
    Ok(())
}

// Fixed offsets into fixed-size structures: these slices cannot go out of bounds.
fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    (u64::from(be_u32(buf, at)) << 32) | u64::from(be_u32(buf, at + 4))
}

fn array16(buf: &[u8], at: usize) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&buf[at..at + 16]);
    out
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_chs_algorithm() {
        // 20480 sectors: 17 sectors per track, 4 heads, 1204 / 4 cylinders.
        let g = Geometry::for_size(10 << 20);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let big = Geometry::for_size(3 << 40);
        assert_eq!((big.cylinders, big.heads, big.sectors_per_track), (65535, 16, 255));
    }

    #[test]
    fn footer_round_trips_and_detects_corruption() {
        let f = Footer::xapi(DiskType::Dynamic, 10 << 20, 512, Uuid::from_u128(7), 0);
        let mut bytes = f.to_bytes();
        assert_eq!(Footer::parse(&bytes).ok(), Some(f));
        bytes[100] ^= 1;
        assert!(matches!(Footer::parse(&bytes), Err(Error::BadChecksum { .. })));
    }
}
