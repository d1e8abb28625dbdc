//! The repository's stored formats: packs and their indexes, chunks, manifests, the
//! repository config and key slots.
//!
//! Sealed objects are authenticated (AES-256-GCM, or a checksum without encryption), so
//! random bytes stop at authentication. Each target therefore feeds the input twice: as
//! the object as stored, and as the plaintext behind the seal (sealed here with a fixed
//! key), which reaches the parsers that only a key holder, or a bug of ours, could feed.

use xenvault_repo::Secret;
use xenvault_repo::crypto::{Aead, ChunkId, Crypto, KEY_LEN, MasterKey};
use xenvault_repo::index::ChunkIndex;
use xenvault_repo::keys::{CONFIG_OBJECT, KEYS_PREFIX, Kdf, KeySlot, RepoConfig, from_checked_json};
use xenvault_repo::manifest::{MAX_MANIFEST_LEN, Manifest};
use xenvault_repo::pack::{PackName, chunk_aad, index_from_pack_tail, open_index};

/// The fixed key: encryption half, then chunk-id half.
const KEY: [u8; MasterKey::LEN] = [0x42; MasterKey::LEN];
/// Largest chunk plaintext, as a repository with 1 MiB chunks allows.
const MAX_CHUNK: usize = 1 << 20;

/// The fixed master key every repository target uses.
pub fn master() -> MasterKey {
    MasterKey::from_bytes(&KEY).expect("a key of the right length")
}

/// The fixed-key context every repository target opens objects with.
pub fn crypto() -> Crypto {
    Crypto::new(&master(), true, 1)
}

/// The cipher under `crypto()`: seals and opens the plaintext behind any object.
pub fn aead() -> Aead {
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&KEY[..KEY_LEN]);
    Aead::new(&key)
}

/// `plaintext` sealed for `name` as the repository seals it; its first byte is the
/// encoding flag (raw or zstd), so the input also picks the decoder.
pub fn seal(name: &[u8], plaintext: &[u8]) -> Vec<u8> {
    aead().seal(name, plaintext).expect("sealing in memory")
}

/// The pack every input is read as.
pub fn pack_name() -> PackName {
    PackName("0123456789abcdef0123456789abcdef".into())
}

/// The input as a pack file (verify's whole-pack check, its index recovered from the
/// tail), and as the plaintext of a pack index and of a chunk.
pub fn pack(data: &[u8]) {
    let crypto = crypto();
    let name = pack_name();
    if let Ok(sealed) = index_from_pack_tail(&name, data) {
        check_pack(&crypto, &name, &sealed, data);
    }
    check_pack(&crypto, &name, &seal(&name.index_aad(), data), data);
    let id = ChunkId([7; 32]);
    if let Ok(plain) = crypto.open(&chunk_aad(&id), &seal(&chunk_aad(&id), data), MAX_CHUNK) {
        assert!(plain.len() <= MAX_CHUNK, "chunk larger than allowed");
    }
}

/// Opens the pack index and every chunk it lists, as `verify` does, and loads the
/// entries into a chunk index.
fn check_pack(crypto: &Crypto, name: &PackName, sealed_index: &[u8], data: &[u8]) {
    let Ok(entries) = open_index(crypto, name, sealed_index) else {
        return;
    };
    for e in &entries {
        let range = e.offset as usize..(e.offset as usize).saturating_add(e.len as usize);
        if let Some(blob) = data.get(range)
            && let Ok(plain) = crypto.open(&chunk_aad(&e.id), blob, MAX_CHUNK)
        {
            crypto.chunk_id(&plain);
        }
    }
    let mut index = ChunkIndex::default();
    index.add_pack(name, entries.iter().copied());
    index.merge();
    for e in &entries {
        assert!(index.locate(&e.id).is_some(), "an indexed chunk is not found");
    }
}

/// The input as a stored manifest and as a manifest's plaintext (JSON), then what every
/// reader of a restore point derives from its disks.
pub fn manifest(data: &[u8]) {
    let crypto = crypto();
    let name = Manifest::object_name("fuzz");
    let _ = crypto.open(name.as_bytes(), data, MAX_MANIFEST_LEN);
    let Ok(plain) = crypto.open(name.as_bytes(), &seal(name.as_bytes(), data), MAX_MANIFEST_LEN) else {
        return;
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&plain) else {
        return;
    };
    let _ = manifest.total_size();
    let _ = manifest.short_id();
    for disk in &manifest.disks {
        let _ = disk.slot_count();
        let _ = disk.seconds();
        let _ = disk.describe();
    }
}

/// The input as the repository config and as a key slot (checksummed JSON, read as the
/// repository reads them), the slot opened with a key file and, when its Argon2 cost is
/// small, with a passphrase.
pub fn keys(data: &[u8]) {
    if let Ok(config) = from_checked_json::<RepoConfig>(CONFIG_OBJECT, data)
        && config.validate().is_ok()
        && let Some(hexed) = &config.plain_master
    {
        let _ = hex::decode(hexed).ok().and_then(|bytes| MasterKey::from_bytes(&bytes));
    }
    let Ok(slot) = from_checked_json::<KeySlot>(&format!("{KEYS_PREFIX}fuzz"), data) else {
        return;
    };
    let _ = slot.open(&Secret::key_file(b"fuzz key file".to_vec()));
    let cheap = match &slot.kdf {
        Kdf::Argon2id { memory_kib, iterations, parallelism, .. } => {
            *memory_kib <= 64 && *iterations <= 2 && *parallelism <= 2
        }
        Kdf::KeyFile { .. } => true,
    };
    if cheap {
        let _ = slot.open(&Secret::passphrase("fuzz"));
    }
}
