//! Whole-archive compression (`use_compression=true|gzip|zstd` on export) and its
//! detection on import.

use std::io::{self, Read, Write};

use flate2::Compression as GzLevel;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The value of xapi's `use_compression` query parameter: `true` and `gzip` mean
    /// gzip, `zstd` zstd, anything else none.
    pub fn from_query(value: &str) -> Compression {
        match value {
            "true" | "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// A writer that compresses what goes through it; [`Compressor::finish`] writes the
/// compressed stream's trailer.
pub enum Compressor<W: Write> {
    Plain(W),
    Gzip(GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// gzip and zstd at their command-line tools' default levels (6 and 3), which is
    /// what xapi runs.
    pub fn new(out: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Compressor::Plain(out),
            Compression::Gzip => Compressor::Gzip(GzEncoder::new(out, GzLevel::new(6))),
            Compression::Zstd => Compressor::Zstd(zstd::Encoder::new(out, 3)?),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Looks at the first bytes of `input` and undoes gzip or zstd compression if it
/// finds their magic; a plain tar passes through. Also returns what it detected.
pub fn decompress<'a, R: Read + 'a>(mut input: R) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &magic[..got];
    let whole = io::Cursor::new(head.to_vec()).chain(input);
    Ok(if head.starts_with(&GZIP_MAGIC) {
        (Box::new(MultiGzDecoder::new(whole)), Compression::Gzip)
    } else if head == ZSTD_MAGIC {
        (Box::new(zstd::Decoder::new(whole)?), Compression::Zstd)
    } else {
        (Box::new(whole), Compression::None)
    })
}
