//! Repository config and key slots: the random master key is wrapped (AES-256-GCM) by a
//! key-encryption key derived from a passphrase (Argon2id, parameters recorded in the slot)
//! or from a key file.

use crate::crypto::{Aead, KEY_LEN, MasterKey, fill_random, random_hex};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const CONFIG_OBJECT: &str = "config";
pub const KEYS_PREFIX: &str = "keys/";
pub const FORMAT_VERSION: u32 = 1;

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

    pub fn object_name(&self) -> String {
        format!("{KEYS_PREFIX}{}", self.id)
    }

    pub fn kind(&self) -> &'static str {
        match self.kdf {
            Kdf::Argon2id { .. } => "passphrase",
            Kdf::KeyFile { .. } => "key-file",
        }
    }
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
}
