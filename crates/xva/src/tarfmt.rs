//! The tar framing xapi uses: V7 headers (no ustar magic, type flag NUL), mode 0400,
//! uid/gid 0, data padded to 512 bytes, two zero blocks at the end.

use std::io::{self, Read, Write};

use crate::{Error, Result};

pub(crate) const BLOCK: usize = 512;
const CHECKSUM_FIELD: std::ops::Range<usize> = 148..156;

/// Writes one member's header; the caller then writes `size` bytes and [`write_padding`].
pub(crate) fn write_header(out: &mut impl Write, name: &str, size: u64, mtime: u64) -> Result<()> {
    let mut header = tar::Header::new_old();
    let field = &mut header.as_old_mut().name;
    if name.len() >= field.len() {
        return Err(Error::InvalidArgument(format!("tar member name {name:?} is too long")));
    }
    field[..name.len()].copy_from_slice(name.as_bytes());
    header.set_mode(0o400);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(mtime);
    // ocaml-tar's V7 headers mark regular files with NUL, not '0'.
    header.as_old_mut().linkflag = [0];
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    Ok(())
}

pub(crate) fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

pub(crate) fn write_padding(out: &mut impl Write, size: u64) -> Result<()> {
    out.write_all(&[0u8; BLOCK][..padding(size)])?;
    Ok(())
}

pub(crate) fn write_end(out: &mut impl Write) -> Result<()> {
    out.write_all(&[0u8; 2 * BLOCK])?;
    Ok(())
}

/// A member's header as read.
pub(crate) struct Member {
    pub name: String,
    pub size: u64,
}

/// Reads the next regular file's header, skipping directory entries (re-packed
/// archives have them). `None` at the end-of-archive marker.
pub(crate) fn read_header(input: &mut impl Read) -> Result<Option<Member>> {
    loop {
        let mut block = [0u8; BLOCK];
        read_exact(input, &mut block, "a tar header")?;
        if block.iter().all(|&b| b == 0) {
            // The end-of-archive marker is two zero blocks; one alone means a cut.
            read_exact(input, &mut block, "the end-of-archive marker")?;
            if block.iter().any(|&b| b != 0) {
                return Err(Error::Corrupt("a zero block followed by data".into()));
            }
            return Ok(None);
        }
        let header = tar::Header::from_byte_slice(&block);
        let stored = header.cksum().map_err(|e| Error::Corrupt(format!("tar header checksum field: {e}")))?;
        let computed: u32 =
            block.iter().enumerate().map(|(i, &b)| if CHECKSUM_FIELD.contains(&i) { 32 } else { u32::from(b) }).sum();
        if stored != computed {
            return Err(Error::Corrupt(format!(
                "tar header checksum {stored} does not match its content ({computed})"
            )));
        }
        let size = header.entry_size().map_err(|e| Error::Corrupt(format!("tar member size: {e}")))?;
        let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                return Ok(Some(Member { name, size }));
            }
            tar::EntryType::Directory => {
                let total = size.checked_add(padding(size) as u64);
                skip(input, total.unwrap_or(u64::MAX), &name)?;
            }
            other => {
                return Err(Error::Corrupt(format!(
                    "tar member {name:?} has unsupported type {:?}",
                    other.as_byte() as char
                )));
            }
        }
    }
}

pub(crate) fn read_exact(input: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated(format!("end of input inside {what}")),
        _ => Error::Io(e),
    })
}

pub(crate) fn skip(input: &mut impl Read, n: u64, what: &str) -> Result<()> {
    let copied = io::copy(&mut input.take(n), &mut io::sink())?;
    if copied < n {
        return Err(Error::Truncated(format!("end of input inside {what}")));
    }
    Ok(())
}
