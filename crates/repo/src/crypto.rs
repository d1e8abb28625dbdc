//! Chunk identity, compression and authenticated encryption of every stored object.
//!
//! Stored object layout (a "sealed blob"):
//! - encrypted: `nonce(12) || AES-256-GCM(flag || payload) || tag(16)`, with the object's
//!   name as associated data so a blob cannot be swapped for another one;
//! - unencrypted repository: `flag || payload || BLAKE3(name || flag || payload)[..16]`.
//!
//! `flag` is 0 for a raw payload and 1 for a zstd frame.

use crate::error::{Error, Result};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::cell::RefCell;
use std::fmt;
use zeroize::Zeroize;

pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const PLAIN_SUM_LEN: usize = 16;
const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Keyed BLAKE3 of a chunk's plaintext; all zeros means "all-zero chunk, never stored".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The first 8 bytes, the key of the compact in-memory index.
    pub fn prefix(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::Invalid(format!("not a chunk id: {s:?}")))?;
        Ok(ChunkId(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ChunkId(b.try_into().ok()?))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The random secret of a repository, wrapped by key slots.
#[derive(Clone)]
pub struct MasterKey {
    pub encryption: [u8; KEY_LEN],
    pub chunk_id: [u8; KEY_LEN],
}

impl MasterKey {
    pub const LEN: usize = 2 * KEY_LEN;

    pub fn generate() -> Result<Self> {
        let mut k = MasterKey { encryption: [0; KEY_LEN], chunk_id: [0; KEY_LEN] };
        fill_random(&mut k.encryption)?;
        fill_random(&mut k.chunk_id)?;
        Ok(k)
    }

    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.encryption);
        v.extend_from_slice(&self.chunk_id);
        zeroize::Zeroizing::new(v)
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut k = MasterKey { encryption: [0; KEY_LEN], chunk_id: [0; KEY_LEN] };
        k.encryption.copy_from_slice(&b[..KEY_LEN]);
        k.chunk_id.copy_from_slice(&b[KEY_LEN..]);
        Some(k)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.encryption.zeroize();
        self.chunk_id.zeroize();
    }
}

pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new().fill(buf).map_err(|_| Error::Invalid("the system random generator failed".into()))
}

pub fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    fill_random(&mut b)?;
    Ok(hex::encode(b))
}

/// AES-256-GCM with random nonces: `seal` output is `nonce || ciphertext || tag`.
pub struct Aead {
    key: LessSafeKey,
}

impl Aead {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // A 32-byte key is always valid for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!());
        Aead { key: LessSafeKey::new(unbound) }
    }

    /// Encrypts `buf[NONCE_LEN..]` in place; the first NONCE_LEN bytes receive the nonce.
    fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf[NONCE_LEN..])
            .map_err(|_| Error::Invalid("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&[0; NONCE_LEN]);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(aad, &mut buf)?;
        Ok(buf)
    }

    /// Decrypts and authenticates; `None` when the data or key is wrong.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

thread_local! {
    // Reusing a zstd context per thread saves its allocation on every chunk.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses one zstd frame of at most `max_len` bytes with this thread's context.
fn decompress(frame: &[u8], max_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = match &mut *slot {
            Some(context) => context,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        context.decompress(frame, max_len)
    })
}

/// Everything a worker needs to turn plaintext into stored bytes and back.
pub struct Crypto {
    aead: Option<Aead>,
    id_key: [u8; KEY_LEN],
    zstd_level: i32,
}

impl Crypto {
    /// `encrypt = false` only for repositories created with `--encryption none`.
    pub fn new(master: &MasterKey, encrypt: bool, zstd_level: i32) -> Self {
        Crypto { aead: encrypt.then(|| Aead::new(&master.encryption)), id_key: master.chunk_id, zstd_level }
    }

    pub fn encrypted(&self) -> bool {
        self.aead.is_some()
    }

    pub fn id_key(&self) -> &[u8; KEY_LEN] {
        &self.id_key
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// Compresses (unless it does not pay) and seals `plaintext` for object `name`.
    pub fn seal(&self, name: &[u8], plaintext: &[u8], compress: bool) -> Result<Vec<u8>> {
        self.seal_at(name, plaintext, compress.then_some(self.zstd_level))
    }

    /// [`Crypto::seal`] compressing at `zstd_level` (none: stored raw).
    pub fn seal_at(&self, name: &[u8], plaintext: &[u8], zstd_level: Option<i32>) -> Result<Vec<u8>> {
        let head = if self.aead.is_some() { NONCE_LEN } else { 0 };
        let mut buf = Vec::with_capacity(head + 1 + plaintext.len() + TAG_LEN);
        buf.resize(head, 0);
        buf.push(FLAG_ZSTD);
        let packed = match zstd_level {
            Some(level) => Self::compress_into(level, plaintext, &mut buf)?,
            None => false,
        };
        if !packed {
            buf.truncate(head);
            buf.push(FLAG_RAW);
            buf.extend_from_slice(plaintext);
        }
        match &self.aead {
            Some(aead) => aead.seal_in_place(name, &mut buf)?,
            None => {
                let sum = plain_sum(name, &buf);
                buf.extend_from_slice(&sum);
            }
        }
        Ok(buf)
    }

    /// Appends the zstd frame of `plain` to `out`; false when it would not save ≥ 1/32.
    fn compress_into(level: i32, plain: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let start = out.len();
        let limit = plain.len() - plain.len() / 32;
        out.resize(start + limit, 0);
        let written = COMPRESSOR.with(|cell| -> Result<Option<usize>> {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                let c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::Invalid(format!("zstd level {level}: {e}")))?;
                *slot = Some((level, c));
            }
            let Some((_, c)) = slot.as_mut() else { return Ok(None) };
            // An error here means "did not fit in the limit": store raw instead.
            Ok(c.compress_to_buffer(plain, &mut out[start..]).ok())
        })?;
        match written {
            Some(n) => {
                out.truncate(start + n);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Authenticates, decrypts and decompresses object `name`; at most `max_len` bytes out.
    pub fn open(&self, name: &[u8], sealed: &[u8], max_len: usize) -> Result<Vec<u8>> {
        let object = || String::from_utf8_lossy(name).into_owned();
        let mut inner = match &self.aead {
            Some(aead) => aead
                .open(name, sealed)
                .ok_or_else(|| Error::corrupt(object(), "authentication failed (damaged or wrong key)"))?,
            None => {
                let split =
                    sealed.len().checked_sub(PLAIN_SUM_LEN).ok_or_else(|| Error::corrupt(object(), "too short"))?;
                let (body, sum) = sealed.split_at(split);
                if plain_sum(name, body) != sum {
                    return Err(Error::corrupt(object(), "checksum mismatch"));
                }
                body.to_vec()
            }
        };
        match inner.first() {
            Some(&FLAG_RAW) => {
                inner.remove(0);
                if inner.len() > max_len {
                    return Err(Error::corrupt(object(), "larger than allowed"));
                }
                Ok(inner)
            }
            Some(&FLAG_ZSTD) => {
                decompress(&inner[1..], max_len).map_err(|e| Error::corrupt(object(), format!("zstd: {e}")))
            }
            _ => Err(Error::corrupt(object(), "unknown encoding flag")),
        }
    }
}

fn plain_sum(name: &[u8], body: &[u8]) -> [u8; PLAIN_SUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name);
    h.update(body);
    let mut out = [0u8; PLAIN_SUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..PLAIN_SUM_LEN]);
    out
}

/// True when every byte is zero (such chunks are holes, never stored).
pub fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed blocks vectorises; early exit per block keeps data chunks cheap.
    let mut blocks = data.chunks_exact(256);
    blocks.by_ref().all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0) && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto(encrypt: bool) -> Crypto {
        Crypto::new(&MasterKey::generate().unwrap(), encrypt, 1)
    }

    #[test]
    fn seal_open_round_trip_with_and_without_encryption() {
        for encrypt in [true, false] {
            let c = crypto(encrypt);
            let text = b"hello hello hello hello hello hello hello hello".repeat(100);
            let sealed = c.seal(b"chunk/x", &text, true).unwrap();
            assert!(sealed.len() < text.len() / 2, "compressible data is compressed");
            assert_eq!(c.open(b"chunk/x", &sealed, 1 << 20).unwrap(), text);
            assert!(c.open(b"chunk/y", &sealed, 1 << 20).is_err() || !encrypt);
            let mut bad = sealed.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 1;
            assert!(c.open(b"chunk/x", &bad, 1 << 20).unwrap_err().is_damage());
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let c = crypto(true);
        let mut data = vec![0u8; 65536];
        fill_random(&mut data).unwrap();
        let sealed = c.seal(b"n", &data, true).unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 1 + data.len() + TAG_LEN);
        assert_eq!(c.open(b"n", &sealed, data.len()).unwrap(), data);
    }

    #[test]
    fn ids_are_keyed() {
        let (a, b) = (crypto(true), crypto(true));
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[0u8; 13]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[100] = 1;
        assert!(!is_zero(&v));
    }
}
