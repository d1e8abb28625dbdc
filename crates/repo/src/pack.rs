//! Pack files: many sealed chunks in one object, so that 64 KiB chunks do not mean
//! millions of objects. Layout of `data/<xx>/<pack>`:
//! `blob* || sealed pack index || u32 LE length of the sealed pack index`.
//! The same sealed pack index is also stored alone as `index/<pack>`, so clients load the
//! index without touching packs and a lost index object can be rebuilt from its pack.

use crate::crypto::{ChunkId, Crypto, random_hex};
use crate::error::{Error, Result};

pub const DATA_PREFIX: &str = "data/";
pub const INDEX_PREFIX: &str = "index/";
const MAGIC: &[u8; 8] = b"XVPACK01";
const ENTRY_LEN: usize = 32 + 4 + 4 + 4;
/// A pack index never lists more entries than this (16 MiB of index), guarding allocations.
const MAX_ENTRIES: usize = 1 << 18;

/// Random 128-bit pack name (hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackName(pub String);

impl PackName {
    pub fn random() -> Result<Self> {
        Ok(PackName(random_hex(16)?))
    }

    pub fn data_object(&self) -> String {
        let shard = self.0.get(..2).unwrap_or("00");
        format!("{DATA_PREFIX}{shard}/{}", self.0)
    }

    pub fn index_object(&self) -> String {
        format!("{INDEX_PREFIX}{}", self.0)
    }

    /// Associated data the pack index is sealed with.
    pub fn index_aad(&self) -> Vec<u8> {
        format!("packindex/{}", self.0).into_bytes()
    }

    /// Parses the pack name out of a `data/` or `index/` object name.
    pub fn from_object(object: &str) -> Option<Self> {
        let name = object.rsplit('/').next()?;
        (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| PackName(name.to_string()))
    }
}

/// Where a chunk lives inside its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

/// Chunk aad: the id itself, so a blob moved to another id's slot fails authentication.
pub fn chunk_aad(id: &ChunkId) -> [u8; 38] {
    let mut aad = [0u8; 38];
    aad[..6].copy_from_slice(b"chunk/");
    aad[6..].copy_from_slice(&id.0);
    aad
}

/// Accumulates sealed blobs into one pack.
pub struct PackBuilder {
    pub name: PackName,
    pub data: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(capacity: usize) -> Result<Self> {
        Ok(PackBuilder { name: PackName::random()?, data: Vec::with_capacity(capacity), entries: Vec::new() })
    }

    pub fn add(&mut self, id: ChunkId, sealed: &[u8], raw_len: u32) -> PackEntry {
        let entry = PackEntry { id, offset: self.data.len() as u32, len: sealed.len() as u32, raw_len };
        self.data.extend_from_slice(sealed);
        self.entries.push(entry);
        entry
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Finishes the pack: its name, the pack bytes, the sealed index bytes and the entries.
    pub fn finish(mut self, crypto: &Crypto) -> Result<FinishedPack> {
        let index = seal_index(crypto, &self.name, &self.entries)?;
        self.data.extend_from_slice(&index);
        self.data.extend_from_slice(&(index.len() as u32).to_le_bytes());
        Ok((self.name, self.data, index, self.entries))
    }
}

/// A finished pack: (name, pack bytes, sealed index bytes, entries).
pub type FinishedPack = (PackName, Vec<u8>, Vec<u8>, Vec<PackEntry>);

pub fn seal_index(crypto: &Crypto, pack: &PackName, entries: &[PackEntry]) -> Result<Vec<u8>> {
    let mut plain = Vec::with_capacity(MAGIC.len() + 4 + entries.len() * ENTRY_LEN);
    plain.extend_from_slice(MAGIC);
    plain.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        plain.extend_from_slice(&e.id.0);
        plain.extend_from_slice(&e.offset.to_le_bytes());
        plain.extend_from_slice(&e.len.to_le_bytes());
        plain.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    // Ids are random-looking: compression would not pay.
    crypto.seal(&pack.index_aad(), &plain, false)
}

pub fn open_index(crypto: &Crypto, pack: &PackName, sealed: &[u8]) -> Result<Vec<PackEntry>> {
    let object = pack.index_object();
    let plain = crypto.open(&pack.index_aad(), sealed, MAGIC.len() + 4 + MAX_ENTRIES * ENTRY_LEN)?;
    let bad = |why: &str| Error::corrupt(object.clone(), why.to_string());
    let rest = plain.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("bad magic"))?;
    let (count, body) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| bad("truncated"))?) as usize;
    if body.len() != count * ENTRY_LEN {
        return Err(bad("entry count does not match length"));
    }
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let entries = body
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            PackEntry { id: ChunkId(id), offset: u32_at(e, 32), len: u32_at(e, 36), raw_len: u32_at(e, 40) }
        })
        .collect();
    Ok(entries)
}

/// Recovers the sealed index from the tail of a whole pack (to rebuild `index/<pack>`).
pub fn index_from_pack_tail(pack: &PackName, data: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::corrupt(pack.data_object(), why.to_string());
    let split = data.len().checked_sub(4).ok_or_else(|| bad("too short"))?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&data[split..]);
    let len = u32::from_le_bytes(len) as usize;
    let start = split.checked_sub(len).ok_or_else(|| bad("bad index length"))?;
    Ok(data[start..split].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn pack_index_round_trip_and_tail_recovery() {
        let crypto = Crypto::new(&MasterKey::generate().unwrap(), true, 1);
        let mut b = PackBuilder::new(1024).unwrap();
        let id = crypto.chunk_id(b"abc");
        let sealed = crypto.seal(&chunk_aad(&id), b"abc", true).unwrap();
        let e = b.add(id, &sealed, 3);
        let (name, data, index, entries) = b.finish(&crypto).unwrap();
        assert_eq!(entries, vec![e]);
        assert_eq!(open_index(&crypto, &name, &index).unwrap(), entries);
        assert_eq!(index_from_pack_tail(&name, &data).unwrap(), index);
        let blob = &data[e.offset as usize..(e.offset + e.len) as usize];
        assert_eq!(crypto.open(&chunk_aad(&id), blob, 3).unwrap(), b"abc");
        let other = PackName::random().unwrap();
        assert!(open_index(&crypto, &other, &index).is_err(), "index bound to its pack name");
        assert_eq!(PackName::from_object(&name.data_object()), Some(name));
    }
}
