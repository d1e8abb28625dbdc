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

    /// Encrypts `buf[from + NONCE_LEN..]` in place: the NONCE_LEN bytes at `from` receive
    /// the nonce, the tag is appended.
    fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>, from: usize) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        buf[from..from + NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[from + NONCE_LEN..],
            )
            .map_err(|_| Error::Invalid("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&[0; NONCE_LEN]);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(aad, &mut buf, 0)?;
        Ok(buf)
    }

    /// Decrypts and authenticates; `None` when the data or key is wrong.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let len = self.open_in(aad, sealed, &mut buf)?.len();
        buf.truncate(len);
        Some(buf)
    }

    /// [`Aead::open`] decrypting in `buf` (its old content replaced, its capacity reused).
    fn open_in<'a>(&self, aad: &[u8], sealed: &[u8], buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        buf.clear();
        buf.extend_from_slice(&sealed[NONCE_LEN..]);
        let plain = self.key.open_in_place(nonce, Aad::from(aad), buf).ok()?;
        Some(plain)
    }
}

thread_local! {
    // Reusing a zstd context per thread saves its allocation on every chunk.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // Where a sealed blob is decrypted: reused, so opening a chunk allocates nothing.
    static OPEN_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Appends the decompressed zstd `frame` (at most `max_len` bytes) to `out`, written
/// straight into its spare capacity (never zeroed first).
fn decompress_into(frame: &[u8], max_len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = match &mut *slot {
            Some(context) => context,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        let start = out.len();
        // The frame says how long it is (our frames do): room for exactly that, so a caller
        // that planned its buffer never sees it reallocated.
        let room = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(declared)) if declared > max_len as u64 => {
                return Err(std::io::Error::other("larger than allowed"));
            }
            Ok(Some(declared)) => declared as usize,
            _ => max_len,
        };
        out.reserve(room);
        let written = context.decompress_to_buffer(frame, &mut cursor_at(out, start))?;
        if written > max_len {
            out.truncate(start);
            return Err(std::io::Error::other("larger than allowed"));
        }
        Ok(())
    })
}

/// Writes through this go to `out[at..]`, into its spare capacity, and set its length.
fn cursor_at(out: &mut Vec<u8>, at: usize) -> std::io::Cursor<&mut Vec<u8>> {
    let mut cursor = std::io::Cursor::new(out);
    cursor.set_position(at as u64);
    cursor
}

/// Sampled bytes whose entropy decides whether a chunk is worth compressing.
const PROBE_SAMPLES: usize = 16;
const PROBE_SAMPLE_LEN: usize = 256;
/// Bits per byte above which a chunk is taken as already compressed or encrypted: such
/// data measures ~7.95 on 4 KiB samples, executables and text stay below 7.
const INCOMPRESSIBLE_BITS: f64 = 7.5;

/// A cheap look at `plain` (byte entropy of 16 spread samples, ~4 KiB): false when it
/// looks compressed or encrypted already, so zstd is not even tried. Short inputs always
/// get tried.
pub fn worth_compressing(plain: &[u8]) -> bool {
    if plain.len() < PROBE_SAMPLES * PROBE_SAMPLE_LEN * 4 {
        return true;
    }
    let mut counts = [0u32; 256];
    let step = plain.len() / PROBE_SAMPLES;
    for sample in plain.chunks(step).take(PROBE_SAMPLES) {
        for &b in &sample[..PROBE_SAMPLE_LEN] {
            counts[b as usize] += 1;
        }
    }
    let total = (PROBE_SAMPLES * PROBE_SAMPLE_LEN) as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total;
            -p * p.log2()
        })
        .sum();
    bits < INCOMPRESSIBLE_BITS
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
        let mut buf = Vec::with_capacity(NONCE_LEN + 1 + plaintext.len() + TAG_LEN);
        self.seal_into(name, plaintext, zstd_level, &mut buf)?;
        Ok(buf)
    }

    /// Appends the sealed blob of `plaintext` to `out`: compressed (at `zstd_level`, when
    /// the probe says it may pay and it saves ≥ 1/32) straight into `out`, then encrypted
    /// there in place. Nothing is zeroed or copied on the way.
    pub fn seal_into(&self, name: &[u8], plaintext: &[u8], zstd_level: Option<i32>, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.reserve(NONCE_LEN + 1 + plaintext.len() + TAG_LEN);
        if self.aead.is_some() {
            out.extend_from_slice(&[0; NONCE_LEN]);
        }
        let body = out.len();
        out.push(FLAG_ZSTD);
        let packed = match zstd_level {
            Some(level) if worth_compressing(plaintext) => Self::compress_into(level, plaintext, out)?,
            _ => false,
        };
        if !packed {
            out.truncate(body);
            out.push(FLAG_RAW);
            out.extend_from_slice(plaintext);
        }
        match &self.aead {
            Some(aead) => aead.seal_in_place(name, out, start),
            None => {
                let sum = plain_sum(name, &out[body..]);
                out.extend_from_slice(&sum);
                Ok(())
            }
        }
    }

    /// Appends the zstd frame of `plain` to `out`; false (and `out` as it was) when it
    /// would not save ≥ 1/32.
    fn compress_into(level: i32, plain: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let start = out.len();
        let limit = plain.len() - plain.len() / 32;
        let written = COMPRESSOR.with(|cell| -> Result<Option<usize>> {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                let c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::Invalid(format!("zstd level {level}: {e}")))?;
                *slot = Some((level, c));
            }
            let Some((_, c)) = slot.as_mut() else { return Ok(None) };
            // An error here means "did not fit": store raw instead.
            Ok(c.compress_to_buffer(plain, &mut cursor_at(out, start)).ok())
        })?;
        match written {
            Some(n) if n <= limit => Ok(true),
            _ => {
                out.truncate(start);
                Ok(false)
            }
        }
    }

    /// Authenticates, decrypts and decompresses object `name`; at most `max_len` bytes out.
    pub fn open(&self, name: &[u8], sealed: &[u8], max_len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_into(name, sealed, max_len, &mut out)?;
        Ok(out)
    }

    /// [`Crypto::open`] appending the plaintext to `out`: decrypted in a reused per-thread
    /// buffer, decompressed straight into `out`.
    pub fn open_into(&self, name: &[u8], sealed: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<()> {
        let object = || String::from_utf8_lossy(name).into_owned();
        match &self.aead {
            Some(aead) => OPEN_SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let inner = aead
                    .open_in(name, sealed, &mut scratch)
                    .ok_or_else(|| Error::corrupt(object(), "authentication failed (damaged or wrong key)"))?;
                unpack(inner, max_len, out).map_err(|why| Error::corrupt(object(), why))
            }),
            None => {
                let split =
                    sealed.len().checked_sub(PLAIN_SUM_LEN).ok_or_else(|| Error::corrupt(object(), "too short"))?;
                let (body, sum) = sealed.split_at(split);
                if plain_sum(name, body) != sum {
                    return Err(Error::corrupt(object(), "checksum mismatch"));
                }
                unpack(body, max_len, out).map_err(|why| Error::corrupt(object(), why))
            }
        }
    }
}

/// Appends the payload of an authenticated `flag || payload` to `out`.
fn unpack(inner: &[u8], max_len: usize, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    match inner.split_first() {
        Some((&FLAG_RAW, payload)) => {
            if payload.len() > max_len {
                return Err("larger than allowed".into());
            }
            out.extend_from_slice(payload);
            Ok(())
        }
        Some((&FLAG_ZSTD, frame)) => decompress_into(frame, max_len, out).map_err(|e| format!("zstd: {e}")),
        _ => Err("unknown encoding flag".into()),
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
    fn sealed_blobs_append_after_what_a_buffer_holds_and_open_the_same_way() {
        for encrypt in [true, false] {
            let c = crypto(encrypt);
            let text = b"ext4 inode table, libc.so.6, /usr/share/doc ".repeat(2000);
            let mut random = vec![0u8; 1 << 16];
            fill_random(&mut random).unwrap();
            let mut pack = b"previous blobs".to_vec();
            for (plain, level) in [(&text, Some(-5)), (&text, Some(3)), (&random, Some(1)), (&text, None)] {
                let at = pack.len();
                c.seal_into(b"chunk/x", plain, level, &mut pack).unwrap();
                assert_eq!(&pack[..14], b"previous blobs", "earlier content untouched");
                let blob = &pack[at..];
                assert_eq!(blob.len() < plain.len(), level.is_some() && plain == &text, "compressed only when it pays");
                let mut out = b"head".to_vec();
                c.open_into(b"chunk/x", blob, plain.len(), &mut out).unwrap();
                assert_eq!(&out[..4], b"head");
                assert_eq!(&out[4..], &plain[..]);
                let short = c.open_into(b"chunk/x", blob, plain.len() - 1, &mut Vec::new());
                assert!(short.unwrap_err().is_damage(), "a blob larger than allowed is refused");
            }
        }
    }

    #[test]
    fn the_probe_skips_compressed_data_and_keeps_compressible_data() {
        let mut random = vec![0u8; 256 << 10];
        fill_random(&mut random).unwrap();
        assert!(!worth_compressing(&random));
        assert!(worth_compressing(&b"kernel config libc.so.6 ".repeat(10_000)));
        // Mostly random with a compressible half: compressible.
        random[..128 << 10].fill(7);
        assert!(worth_compressing(&random));
        assert!(worth_compressing(&random[..1000]), "short inputs are always tried");
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
