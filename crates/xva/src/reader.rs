//! Streaming XVA reader.

use std::io::Read;

use xenvault_xapi_wire::Value;

use crate::ova::parse_ova_xml;
use crate::tarfmt::{Member, padding, read_exact, read_header, skip};
use crate::{CHUNK_SIZE, ChecksumKind, Error, OVA_XML, OvaObject, OvaVersion, Result};

/// Largest `ova.xml` accepted: generous for big VMs, bounded for hostile input.
const MAX_OVA_XML: u64 = 64 * 1024 * 1024;
/// A checksum file holds 16 or 40 hex digits; anything much longer is not one.
const MAX_CHECKSUM_FILE: u64 = 128;

/// A disk as `ova.xml` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The archive-local reference, `Ref:N`: the chunks' directory.
    pub reference: String,
    /// `virtual_size` of the VDI record, when present and valid.
    pub size: Option<u64>,
}

/// Data of one disk at `offset`. Chunks come in increasing offset order per disk, and
/// the disks in the archive's (lexicographic) order; the skipped all-zero chunks are
/// not yielded, so a target must start zero-filled.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub disk: &'a str,
    pub offset: u64,
    pub data: &'a [u8],
}

struct DiskCursor {
    reference: String,
    size: u64,
    /// Index (name) of the previous chunk and whether it was an empty keep-alive.
    last: Option<(u64, bool)>,
    /// Disk offset following the previous chunk.
    end: u64,
}

/// Reads an XVA tar (decompress it first with [`crate::decompress`]).
pub struct XvaReader<R> {
    input: R,
    version: OvaVersion,
    objects: Vec<OvaObject>,
    disk: Option<DiskCursor>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> XvaReader<R> {
    /// Reads and parses `ova.xml`, which must be the first member.
    pub fn new(mut input: R) -> Result<Self> {
        let member = read_header(&mut input)?.ok_or_else(|| Error::Corrupt("empty archive".into()))?;
        if member.name != OVA_XML {
            return Err(Error::Corrupt(format!("first member is {:?}, not ova.xml", member.name)));
        }
        if member.size > MAX_OVA_XML {
            return Err(Error::Metadata(format!("ova.xml of {} bytes is too large", member.size)));
        }
        // Grows with the data actually read, not with the size the header claims.
        let mut text = Vec::new();
        (&mut input).take(member.size).read_to_end(&mut text)?;
        if (text.len() as u64) < member.size {
            return Err(Error::Truncated("end of input inside ova.xml".into()));
        }
        skip(&mut input, padding(member.size) as u64, OVA_XML)?;
        let text = String::from_utf8(text).map_err(|_| Error::Metadata("not UTF-8".into()))?;
        let (version, objects) = parse_ova_xml(&text)?;
        if version.export_vsn < 1 {
            return Err(Error::Metadata(format!(
                "export_vsn {} archives carry no chunk checksums",
                version.export_vsn
            )));
        }
        Ok(XvaReader { input, version, objects, disk: None, buf: Vec::new(), done: false })
    }

    pub fn version(&self) -> &OvaVersion {
        &self.version
    }

    pub fn objects(&self) -> &[OvaObject] {
        &self.objects
    }

    /// The VDIs `ova.xml` describes, in the order their data comes.
    pub fn disks(&self) -> Vec<DiskInfo> {
        let mut disks: Vec<DiskInfo> = self
            .objects
            .iter()
            .filter(|o| o.class == "VDI")
            .map(|o| DiskInfo { reference: o.id.clone(), size: virtual_size(&o.snapshot) })
            .collect();
        disks.sort_by(|a, b| a.reference.cmp(&b.reference));
        disks
    }

    /// The next chunk of disk data, its checksum verified; `None` after the last one.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>> {
        while !self.done {
            if let Some(offset) = self.read_chunk()? {
                let disk = self.disk.as_ref().map_or("", |d| d.reference.as_str());
                return Ok(Some(Chunk { disk, offset, data: &self.buf }));
            }
        }
        Ok(None)
    }

    /// Reads one chunk and its checksum into `buf`; its disk offset unless it was an
    /// empty keep-alive or the end of the archive.
    fn read_chunk(&mut self) -> Result<Option<u64>> {
        let Some(member) = read_header(&mut self.input)? else {
            self.end_disk()?;
            self.done = true;
            return Ok(None);
        };
        let (reference, index) = split_chunk_name(&member.name)?;
        if self.disk.as_ref().is_none_or(|d| d.reference != reference) {
            self.start_disk(reference)?;
        }
        let Some(disk) = self.disk.as_mut() else {
            return Err(Error::Corrupt(format!("chunk {} outside any disk", member.name)));
        };
        let offset = next_offset(disk, index, &member.name)?;
        let end = offset.checked_add(member.size).filter(|&end| end <= disk.size);
        let Some(end) = end.filter(|_| member.size <= CHUNK_SIZE) else {
            return Err(Error::Corrupt(format!(
                "chunk {} of {} bytes at disk offset {offset} does not fit the disk ({} bytes)",
                member.name, member.size, disk.size
            )));
        };
        // At most CHUNK_SIZE, checked above.
        self.buf.resize(member.size as usize, 0);
        read_exact(&mut self.input, &mut self.buf, &member.name)?;
        skip(&mut self.input, padding(member.size) as u64, &member.name)?;
        verify_checksum(&mut self.input, &member, &self.buf)?;
        disk.last = Some((index, member.size == 0));
        disk.end = end;
        Ok((member.size > 0).then_some(offset))
    }

    fn start_disk(&mut self, reference: &str) -> Result<()> {
        self.end_disk()?;
        if let Some(previous) = &self.disk
            && previous.reference.as_str() >= reference
        {
            return Err(Error::Corrupt(format!(
                "disk {reference} comes after {}: disks must be in lexicographic order",
                previous.reference
            )));
        }
        let object = self.objects.iter().find(|o| o.class == "VDI" && o.id == reference).ok_or_else(|| {
            Error::Corrupt(format!("chunks for {reference}, which ova.xml does not describe as a VDI"))
        })?;
        // Without a size, chunk offsets could not be bounded.
        let size = virtual_size(&object.snapshot)
            .ok_or_else(|| Error::Metadata(format!("VDI {reference} has no valid virtual_size")))?;
        self.disk = Some(DiskCursor { reference: reference.to_owned(), size, last: None, end: 0 });
        Ok(())
    }

    /// xapi always writes a disk's last chunk, so a complete disk ends at its size.
    fn end_disk(&self) -> Result<()> {
        match &self.disk {
            Some(DiskCursor { reference, size, end, .. }) if end != size => {
                Err(Error::Truncated(format!("disk {reference} ends at byte {end} of {size}")))
            }
            _ => Ok(()),
        }
    }

    pub fn into_inner(self) -> R {
        self.input
    }
}

fn virtual_size(record: &Value) -> Option<u64> {
    record.get("virtual_size")?.as_i64().and_then(|s| u64::try_from(s).ok())
}

/// `Ref:N/00000012` into (`Ref:N`, 12).
fn split_chunk_name(name: &str) -> Result<(&str, u64)> {
    let bad = || Error::Corrupt(format!("unexpected member {name:?} where a disk chunk belongs"));
    let (reference, number) = name.rsplit_once('/').ok_or_else(bad)?;
    if reference.is_empty() || number.is_empty() || number.len() > 19 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok((reference, number.parse().map_err(|_| bad())?))
}

/// Where a chunk goes. Like xapi's importer, position follows the stream: chunk names
/// skipped since the previous chunk stand for 1 MiB of zeros each. A keep-alive (an
/// empty chunk) may be followed by a chunk with the same name (or, as xapi writes
/// it, the next name): either way no zeros are skipped.
fn next_offset(disk: &DiskCursor, index: u64, name: &str) -> Result<u64> {
    let skipped = match disk.last {
        None => index,
        Some((last, _)) if index > last => index - last - 1,
        Some((last, true)) if index == last => 0,
        Some(_) => {
            return Err(Error::Corrupt(format!("chunk {name} is out of order")));
        }
    };
    skipped
        .checked_mul(CHUNK_SIZE)
        .and_then(|gap| disk.end.checked_add(gap))
        .ok_or_else(|| Error::Corrupt(format!("chunk {name} lies beyond any disk size")))
}

/// Reads the checksum member that must follow `chunk` and compares its text exactly.
fn verify_checksum(input: &mut impl Read, chunk: &Member, data: &[u8]) -> Result<()> {
    let member =
        read_header(input)?.ok_or_else(|| Error::Corrupt(format!("chunk {} has no checksum file", chunk.name)))?;
    let kind = [ChecksumKind::Xxhash, ChecksumKind::Sha1]
        .into_iter()
        .find(|k| member.name.strip_suffix(k.extension()) == Some(chunk.name.as_str()))
        .ok_or_else(|| {
            Error::Corrupt(format!("chunk {} is followed by {:?}, not its checksum file", chunk.name, member.name))
        })?;
    if member.size > MAX_CHECKSUM_FILE {
        return Err(Error::Corrupt(format!("checksum file {} of {} bytes", member.name, member.size)));
    }
    let mut stored = vec![0u8; member.size as usize];
    read_exact(input, &mut stored, &member.name)?;
    skip(input, padding(member.size) as u64, &member.name)?;
    let computed = kind.compute(data);
    if stored != computed.as_bytes() {
        return Err(Error::ChecksumMismatch {
            name: chunk.name.clone(),
            stored: String::from_utf8_lossy(&stored).into_owned(),
            computed,
        });
    }
    Ok(())
}
