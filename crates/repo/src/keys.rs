//! Repository config and key slots: the random master key is wrapped (AES-256-GCM) by a
//! key-encryption key derived from a passphrase (Argon2id, parameters recorded in the slot)
//! or from a key file.
//!
//! Losing either loses every restore point, so each is stored twice (`config` and
//! `config.copy`, `keys/ID` and `keycopies/ID`) with a BLAKE3 checksum of its own: a copy
//! that does not parse or fails its checksum is damage and the other copy is used; only a
//! well-formed slot whose AEAD fails means a wrong passphrase. Objects written before
//! copies and checksums existed (one copy, no checksum) keep opening.

use crate::crypto::{Aead, KEY_LEN, MasterKey, fill_random, random_hex};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

pub const CONFIG_OBJECT: &str = "config";
pub const CONFIG_COPY_OBJECT: &str = "config.copy";
pub const KEYS_PREFIX: &str = "keys/";
/// Second copies of the key slots, under the same file names as in `keys/`.
pub const KEY_COPIES_PREFIX: &str = "keycopies/";
pub const FORMAT_VERSION: u32 = 1;
const CHECKSUM_FIELD: &str = "checksum";

/// Bounds of Argon2id parameters, at init and when reading a slot from the store: a
/// hostile repository must not make opening it allocate without limit or run for hours.
pub const MAX_KDF_MEMORY_MIB: u32 = 2048;
pub const MAX_KDF_ITERATIONS: u32 = 64;
pub const MAX_KDF_PARALLELISM: u32 = 16;

/// JSON of `value` carrying a BLAKE3 checksum of its canonical form.
pub fn to_checked_json<T: Serialize>(object: &str, value: &T) -> Result<Vec<u8>> {
    let json_error = |e| Error::Json { object: object.into(), source: e };
    let mut v = serde_json::to_value(value).map_err(json_error)?;
    let sum = canonical_checksum(&v)?;
    v.as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("{object} is not a JSON object")))?
        .insert(CHECKSUM_FIELD.into(), sum.into());
    serde_json::to_vec_pretty(&v).map_err(json_error)
}

/// Reads what [`to_checked_json`] wrote, or an older object without a checksum (second
/// copies always have one): anything that does not parse or fails its checksum is damage.
pub fn from_checked_json<T: DeserializeOwned>(object: &str, raw: &[u8]) -> Result<T> {
    let damaged = |why: String| Error::corrupt(object, why);
    let mut v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| damaged(format!("not JSON: {e}")))?;
    let sum = v.as_object_mut().ok_or_else(|| damaged("not a JSON object".into()))?.remove(CHECKSUM_FIELD);
    let second_copy = object == CONFIG_COPY_OBJECT || object.starts_with(KEY_COPIES_PREFIX);
    match sum {
        None if second_copy => return Err(damaged("second copy without its checksum".into())),
        None => {}
        Some(serde_json::Value::String(s)) if s == canonical_checksum(&v)? => {}
        Some(_) => return Err(damaged("checksum does not match its content".into())),
    }
    serde_json::from_value(v).map_err(|e| damaged(e.to_string()))
}

fn canonical_checksum(v: &serde_json::Value) -> Result<String> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Json { object: "(checksum)".into(), source: e })?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    Aes256Gcm,
    None,
}

/// The only plaintext object: what a client needs to read everything else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub encryption: Encryption,
    /// Bytes per chunk slot of a disk; a power of two between 64 KiB and 16 MiB.
    pub chunk_size: u32,
    /// Chunk ids per index page.
    pub page_slots: u32,
    /// Target size of a pack file.
    pub pack_size: u32,
    pub zstd_level: i32,
    /// Unencrypted repositories keep their (non-secret) key material here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_master: Option<String>,
}

impl RepoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(self.version));
        }
        let ok_chunk = self.chunk_size.is_power_of_two() && (64 << 10..=16 << 20).contains(&self.chunk_size);
        if !ok_chunk || !(64..=1 << 20).contains(&self.page_slots) || self.pack_size < self.chunk_size {
            return Err(Error::corrupt(CONFIG_OBJECT, "invalid chunk, page or pack size"));
        }
        Ok(())
    }
}

/// How a key slot derives its key-encryption key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kdf {
    Argon2id { memory_kib: u32, iterations: u32, parallelism: u32, salt: String },
    KeyFile { salt: String },
}

/// Argon2id cost; the default takes ~0.3 s and 64 MiB here.
#[derive(Debug, Clone, Copy)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// Refuses parameters beyond the bounds (or below what Argon2id accepts).
    pub fn validate(&self) -> Result<()> {
        let KdfParams { memory_kib, iterations, parallelism } = *self;
        if memory_kib / 1024 > MAX_KDF_MEMORY_MIB {
            return Err(Error::Invalid(format!(
                "Argon2 memory {} MiB is over the limit of {MAX_KDF_MEMORY_MIB} MiB",
                memory_kib / 1024
            )));
        }
        if !(1..=MAX_KDF_ITERATIONS).contains(&iterations) {
            return Err(Error::Invalid(format!(
                "Argon2 iterations must be 1 to {MAX_KDF_ITERATIONS}, not {iterations}"
            )));
        }
        if !(1..=MAX_KDF_PARALLELISM).contains(&parallelism) {
            return Err(Error::Invalid(format!(
                "Argon2 parallelism must be 1 to {MAX_KDF_PARALLELISM}, not {parallelism}"
            )));
        }
        if memory_kib < 8 * parallelism {
            return Err(Error::Invalid(format!("Argon2 memory must be at least {} KiB", 8 * parallelism)));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub label: String,
    pub kdf: Kdf,
    /// hex of `nonce || AES-256-GCM(master key) || tag`
    pub wrapped: String,
}

/// A secret that opens a key slot.
#[derive(Clone)]
pub enum Secret {
    Passphrase(Zeroizing<String>),
    KeyFile(Zeroizing<Vec<u8>>),
}

impl Secret {
    pub fn passphrase(s: impl Into<String>) -> Self {
        Secret::Passphrase(Zeroizing::new(s.into()))
    }

    pub fn key_file(content: Vec<u8>) -> Self {
        Secret::KeyFile(Zeroizing::new(content))
    }
}

fn slot_aad(id: &str) -> Vec<u8> {
    format!("xenvault key slot {id}").into_bytes()
}

fn derive_kek(kdf: &Kdf, secret: &Secret) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>> {
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    match (kdf, secret) {
        (Kdf::Argon2id { memory_kib, iterations, parallelism, salt }, Secret::Passphrase(p)) => {
            let bounds = KdfParams { memory_kib: *memory_kib, iterations: *iterations, parallelism: *parallelism };
            bounds.validate().map_err(|e| Error::corrupt("key slot", format!("refusing its KDF parameters: {e}")))?;
            let salt = hex::decode(salt).map_err(|_| Error::corrupt("key slot", "bad salt"))?;
            let params = argon2::Params::new(*memory_kib, *iterations, *parallelism, Some(KEY_LEN))
                .map_err(|e| Error::corrupt("key slot", format!("argon2 parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), &salt, kek.as_mut())
                .map_err(|e| Error::corrupt("key slot", format!("argon2: {e}")))?;
        }
        (Kdf::KeyFile { salt }, Secret::KeyFile(bytes)) => {
            // A key file holds ≥ 32 random bytes: no stretching needed, only domain separation.
            let mut h = blake3::Hasher::new_derive_key("xenvault 2026 key file kek");
            h.update(salt.as_bytes());
            h.update(bytes);
            kek.copy_from_slice(h.finalize().as_bytes());
        }
        _ => return Ok(None),
    }
    Ok(Some(kek))
}

impl KeySlot {
    /// Wraps `master` under `secret` in a new slot.
    pub fn create(master: &MasterKey, secret: &Secret, params: KdfParams, label: &str) -> Result<Self> {
        params.validate()?;
        let id = random_hex(8)?;
        let salt = random_hex(16)?;
        let kdf = match secret {
            Secret::Passphrase(_) => Kdf::Argon2id {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
                salt,
            },
            Secret::KeyFile(_) => Kdf::KeyFile { salt },
        };
        let kek = derive_kek(&kdf, secret)?.ok_or(Error::KeyNeeded)?;
        let wrapped = Aead::new(&kek).seal(&slot_aad(&id), &master.to_bytes())?;
        Ok(KeySlot { id, created: chrono::Utc::now(), label: label.to_string(), kdf, wrapped: hex::encode(wrapped) })
    }

    /// The master key if `secret` opens this slot.
    pub fn open(&self, secret: &Secret) -> Result<Option<MasterKey>> {
        let Some(kek) = derive_kek(&self.kdf, secret)? else { return Ok(None) };
        let wrapped = hex::decode(&self.wrapped).map_err(|_| Error::corrupt("key slot", "bad hex"))?;
        let Some(plain) = Aead::new(&kek).open(&slot_aad(&self.id), &wrapped) else { return Ok(None) };
        let plain = Zeroizing::new(plain);
        Ok(MasterKey::from_bytes(&plain))
    }

    /// Where the slot and its second copy are stored.
    pub fn object_names(&self) -> [String; 2] {
        slot_object_names(&self.id)
    }

    pub fn kind(&self) -> &'static str {
        match self.kdf {
            Kdf::Argon2id { .. } => "passphrase",
            Kdf::KeyFile { .. } => "key-file",
        }
    }
}

pub fn slot_object_names(id: &str) -> [String; 2] {
    [format!("{KEYS_PREFIX}{id}"), format!("{KEY_COPIES_PREFIX}{id}")]
}

/// Creates a new random key file's content (hex text, so it survives copy and paste).
pub fn new_key_file_content() -> Result<Vec<u8>> {
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(raw.as_mut())?;
    Ok(hex::encode(raw.as_ref()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 };

    #[test]
    fn passphrase_slot_opens_only_with_its_passphrase() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::create(&master, &Secret::passphrase("right"), FAST, "").unwrap();
        let opened = slot.open(&Secret::passphrase("right")).unwrap().unwrap();
        assert_eq!(opened.to_bytes(), master.to_bytes());
        assert!(slot.open(&Secret::passphrase("wrong")).unwrap().is_none());
        assert!(slot.open(&Secret::KeyFile(Zeroizing::new(b"right".to_vec()))).unwrap().is_none());
    }

    #[test]
    fn key_file_slot() {
        let master = MasterKey::generate().unwrap();
        let file = new_key_file_content().unwrap();
        let slot = KeySlot::create(&master, &Secret::KeyFile(Zeroizing::new(file.clone())), FAST, "x").unwrap();
        let json = serde_json::to_string(&slot).unwrap();
        let back: KeySlot = serde_json::from_str(&json).unwrap();
        assert!(back.open(&Secret::KeyFile(Zeroizing::new(file))).unwrap().is_some());
        assert!(back.open(&Secret::KeyFile(Zeroizing::new(b"00".to_vec()))).unwrap().is_none());
    }

    #[test]
    fn checked_json_tells_damage_and_reads_old_objects() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::create(&master, &Secret::passphrase("p"), FAST, "l").unwrap();
        let json = to_checked_json("keys/x", &slot).unwrap();
        let back: KeySlot = from_checked_json("keys/x", &json).unwrap();
        assert_eq!(back.wrapped, slot.wrapped);
        // One hex digit of the wrapped key changed: still well-formed JSON, caught by the checksum.
        let text = String::from_utf8(json).unwrap();
        let digit = if slot.wrapped.starts_with('0') { "1" } else { "0" };
        let flipped = text.replacen(&slot.wrapped, &format!("{digit}{}", &slot.wrapped[1..]), 1);
        let e = from_checked_json::<KeySlot>("keys/x", flipped.as_bytes()).unwrap_err();
        assert!(e.is_damage(), "{e}");
        let old = serde_json::to_vec(&slot).unwrap();
        assert!(from_checked_json::<KeySlot>("keys/x", &old).is_ok(), "a slot without checksum still reads");
    }

    #[test]
    fn kdf_bounds_at_creation_and_when_read() {
        let master = MasterKey::generate().unwrap();
        let huge = KdfParams { memory_kib: u32::MAX, ..FAST };
        assert!(matches!(KeySlot::create(&master, &Secret::passphrase("p"), huge, ""), Err(Error::Invalid(_))));
        let forever = KdfParams { iterations: u32::MAX, ..FAST };
        assert!(matches!(KeySlot::create(&master, &Secret::passphrase("p"), forever, ""), Err(Error::Invalid(_))));
        // A hostile store raises a stored slot's cost: opening refuses before deriving.
        let mut slot = KeySlot::create(&master, &Secret::passphrase("p"), FAST, "").unwrap();
        if let Kdf::Argon2id { memory_kib, .. } = &mut slot.kdf {
            *memory_kib = 100 << 20;
        }
        let opened = slot.open(&Secret::passphrase("p"));
        assert!(opened.as_ref().is_err_and(Error::is_damage), "{:?}", opened.err());
    }
}
