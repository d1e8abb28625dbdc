//! Secrets at rest (pool passwords, repository passphrases, SMTP passwords): sealed with
//! AES-256-GCM under a key kept in a file of the data directory (mode 0600), not in the
//! database, so a copy of the database (or a PostgreSQL dump) alone reveals no secret.
//! Each secret is bound to where it is stored (its associated data names the row), so a
//! sealed value copied to another row does not open.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

pub const KEY_FILE: &str = "catalog.key";
const KEY_LEN: usize = 32;

pub(crate) struct SecretKey {
    key: LessSafeKey,
    /// The key file's bytes: a configuration backup carries them so its sealed secrets open.
    raw: [u8; KEY_LEN],
}

impl SecretKey {
    /// Reads `dir/catalog.key`, creating it (0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        let key_error = |message: String| Error::Key { path: path.display().to_string(), message };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&path).map_err(|e| key_error(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(key_error(format!("readable by others (mode {:o}): chmod 600 it", mode & 0o777)));
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(&path).map_err(key_error)?,
            Err(e) => return Err(key_error(e.to_string())),
        };
        let bytes: [u8; KEY_LEN] =
            bytes.try_into().map_err(|b: Vec<u8>| key_error(format!("{} bytes, expected {KEY_LEN}", b.len())))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| key_error("unusable key".into()))?;
        Ok(SecretKey { key: LessSafeKey::new(key), raw: bytes })
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }

    /// Writes `raw` as `dir/catalog.key` (0600, whole or not at all). A different key
    /// already there is replaced only when `replace`: it is what opens that catalog's secrets.
    pub fn install(dir: &Path, raw: &[u8], replace: bool) -> Result<()> {
        let path = dir.join(KEY_FILE);
        let key_error = |message: String| Error::Key { path: path.display().to_string(), message };
        if raw.len() != KEY_LEN {
            return Err(key_error(format!("{} bytes, expected {KEY_LEN}", raw.len())));
        }
        match std::fs::read(&path) {
            Ok(existing) if existing == raw => return Ok(()),
            Ok(_) if !replace => {
                return Err(Error::Conflict(format!(
                    "{} already holds another key (the secrets of the catalog it belongs to)",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_error(e.to_string())),
        }
        let partial = dir.join(format!("{KEY_FILE}.partial"));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut file| file.write_all(raw).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&partial, &path));
        written.map_err(|e| key_error(e.to_string()))
    }

    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, context: &str, secret: &str) -> Result<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut sealed)
            .map_err(|_| Error::Invalid("sealing a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<String> {
        let damaged =
            || Error::Corrupt(format!("the secret of {context} does not open with this data directory's {KEY_FILE}"));
        if sealed.len() < NONCE_LEN {
            return Err(damaged());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut buffer = ciphertext.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer).map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }
}

fn create_key(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let key = random_bytes::<KEY_LEN>().map_err(|e| e.to_string())?.to_vec();
    // create_new: of two servers starting at once, one writes the key, the other reads it.
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            file.write_all(&key).and_then(|()| file.sync_all()).map_err(|e| e.to_string())?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut raw = [0u8; N];
    SystemRandom::new().fill(&mut raw).map_err(|_| Error::Invalid("the system gave no random numbers".into()))?;
    Ok(raw)
}

/// A random token of 32 bytes, URL-safe base64.
pub(crate) fn random_token() -> Result<String> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// SHA-256 of a high-entropy token (API token, session id), hex: what the catalog stores.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_opens_only_in_its_own_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal("pool:prod", "hunter2").unwrap();
        assert_eq!(key.open("pool:prod", &sealed).unwrap(), "hunter2");
        assert!(matches!(key.open("pool:test", &sealed), Err(Error::Corrupt(_))));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same file gives the same key.
        let again = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("pool:prod", &sealed).unwrap(), "hunter2");
    }
}
