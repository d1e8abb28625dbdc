//! Streaming XVA writer.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::tarfmt::{write_end, write_header, write_padding};
use crate::{CHUNK_SIZE, ChecksumKind, Error, OVA_XML, Result};

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub checksum: ChecksumKind,
    /// After this long without output, write an empty keep-alive chunk (xapi: 5 s) so
    /// that idle-connection timeouts do not cut a long run of skipped zero chunks.
    pub keepalive: Option<Duration>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { checksum: ChecksumKind::Xxhash, keepalive: Some(Duration::from_secs(5)) }
    }
}

struct Disk {
    reference: String,
    size: u64,
    /// Disk bytes received so far.
    received: u64,
    /// The chunk being filled (at most [`CHUNK_SIZE`]).
    chunk: Vec<u8>,
    /// Each keep-alive takes the name of the chunk it precedes, so xapi names every
    /// later chunk one higher (its importer places data by position, not by name).
    name_shift: u64,
}

/// Writes an XVA: `ova.xml`, then each disk's data fed in order through
/// [`XvaWriter::begin_disk`] and [`XvaWriter::write`]/[`XvaWriter::write_zeros`],
/// then [`XvaWriter::finish`]. Memory use is one chunk.
pub struct XvaWriter<W: Write> {
    out: W,
    options: WriterOptions,
    last_output: Instant,
    previous_reference: Option<String>,
    disk: Option<Disk>,
}

impl<W: Write> XvaWriter<W> {
    /// Writes the `ova.xml` member; `mtime` (Unix seconds) is its tar time stamp (xapi
    /// uses the export time; chunk members get 0).
    pub fn new(mut out: W, ova_xml: &str, mtime: u64, options: WriterOptions) -> Result<Self> {
        let size = ova_xml.len() as u64;
        write_header(&mut out, OVA_XML, size, mtime)?;
        out.write_all(ova_xml.as_bytes())?;
        write_padding(&mut out, size)?;
        Ok(XvaWriter { out, options, last_output: Instant::now(), previous_reference: None, disk: None })
    }

    /// Starts the next disk, `reference` being its `Ref:N` in `ova.xml`. Disks must come
    /// in lexicographic order of their references (`Ref:10` before `Ref:2`).
    pub fn begin_disk(&mut self, reference: &str, size: u64) -> Result<()> {
        self.check_disk_complete()?;
        if self.previous_reference.as_deref().is_some_and(|p| p >= reference) {
            return Err(Error::InvalidArgument(format!(
                "disk {reference} after {:?}: disks go in lexicographic order",
                self.previous_reference
            )));
        }
        if reference.is_empty() || reference.contains('/') {
            return Err(Error::InvalidArgument(format!("bad disk reference {reference:?}")));
        }
        self.previous_reference = Some(reference.to_owned());
        self.disk = Some(Disk {
            reference: reference.to_owned(),
            size,
            received: 0,
            chunk: Vec::with_capacity(CHUNK_SIZE.min(size) as usize),
            name_shift: 0,
        });
        Ok(())
    }

    /// Appends disk data.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.disk_with_room(data.len() as u64)?;
        while !data.is_empty() {
            let Some(disk) = self.disk.as_mut() else {
                break;
            };
            let room = (chunk_len(disk) - disk.chunk.len() as u64) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            disk.chunk.extend_from_slice(now);
            disk.received += now.len() as u64;
            data = rest;
            self.flush_full_chunk()?;
        }
        Ok(())
    }

    /// Appends `len` zero bytes; whole zero chunks are skipped without being built.
    pub fn write_zeros(&mut self, mut len: u64) -> Result<()> {
        self.disk_with_room(len)?;
        while len > 0 {
            let Some(disk) = self.disk.as_mut() else {
                break;
            };
            let index = disk.received / CHUNK_SIZE;
            let whole_chunk = disk.chunk.is_empty() && len >= chunk_len(disk);
            let first_or_last = index == 0 || disk.received + CHUNK_SIZE >= disk.size;
            if whole_chunk && !first_or_last {
                self.maybe_keepalive(index)?;
                if let Some(disk) = self.disk.as_mut() {
                    disk.received += CHUNK_SIZE;
                }
                len -= CHUNK_SIZE;
                continue;
            }
            let room = chunk_len(disk) - disk.chunk.len() as u64;
            let step = room.min(len);
            disk.chunk.resize(disk.chunk.len() + step as usize, 0);
            disk.received += step;
            len -= step;
            self.flush_full_chunk()?;
        }
        Ok(())
    }

    /// Ends the archive after checking the last disk is complete.
    pub fn finish(mut self) -> Result<W> {
        self.check_disk_complete()?;
        write_end(&mut self.out)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn disk_with_room(&mut self, len: u64) -> Result<&mut Disk> {
        let disk =
            self.disk.as_mut().ok_or_else(|| Error::InvalidArgument("disk data written before begin_disk".into()))?;
        if disk.received.checked_add(len).is_none_or(|end| end > disk.size) {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes more than disk {} holds ({} of {} written)",
                disk.reference, disk.received, disk.size
            )));
        }
        Ok(disk)
    }

    fn check_disk_complete(&self) -> Result<()> {
        match &self.disk {
            Some(d) if d.received < d.size => {
                Err(Error::InvalidArgument(format!("disk {} has {} of its {} bytes", d.reference, d.received, d.size)))
            }
            _ => Ok(()),
        }
    }

    /// Emits the current chunk once it is full (or reaches the disk end).
    fn flush_full_chunk(&mut self) -> Result<()> {
        let Some(disk) = self.disk.as_ref() else {
            return Ok(());
        };
        if (disk.chunk.len() as u64) < chunk_len(disk) {
            return Ok(());
        }
        let start = disk.received - disk.chunk.len() as u64;
        let index = start / CHUNK_SIZE;
        let first_or_last = index == 0 || disk.received == disk.size;
        if !first_or_last {
            self.maybe_keepalive(index)?;
        }
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let mut chunk = std::mem::take(&mut disk.chunk);
        if first_or_last || !is_zero(&chunk) {
            let name = chunk_name(disk, index);
            self.write_member(&name, &chunk)?;
        }
        chunk.clear();
        if let Some(disk) = self.disk.as_mut() {
            disk.chunk = chunk;
        }
        Ok(())
    }

    /// xapi's keep-alive: before a chunk that is neither first nor last, if nothing
    /// was written for too long, an empty chunk under that chunk's name.
    fn maybe_keepalive(&mut self, index: u64) -> Result<()> {
        let Some(limit) = self.options.keepalive else {
            return Ok(());
        };
        if self.last_output.elapsed() <= limit {
            return Ok(());
        }
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let name = chunk_name(disk, index);
        disk.name_shift += 1;
        self.write_member(&name, &[])
    }

    /// A chunk member and its checksum member.
    fn write_member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let kind = self.options.checksum;
        let sum = kind.compute(data);
        for (member, bytes) in [(name.to_owned(), data), (format!("{name}{}", kind.extension()), sum.as_bytes())] {
            write_header(&mut self.out, &member, bytes.len() as u64, 0)?;
            self.out.write_all(bytes)?;
            write_padding(&mut self.out, bytes.len() as u64)?;
        }
        self.last_output = Instant::now();
        Ok(())
    }
}

/// Length of the chunk being filled: 1 MiB, or what is left of the disk.
fn chunk_len(disk: &Disk) -> u64 {
    let start = disk.received - disk.chunk.len() as u64;
    CHUNK_SIZE.min(disk.size - start)
}

fn chunk_name(disk: &Disk, index: u64) -> String {
    format!("{}/{:08}", disk.reference, index + disk.name_shift)
}

fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed-size pieces vectorises; a byte loop with early exit does not.
    let (pieces, tail) = data.as_chunks::<64>();
    pieces.iter().all(|p| p.iter().fold(0u8, |acc, &b| acc | b) == 0) && tail.iter().all(|&b| b == 0)
}
