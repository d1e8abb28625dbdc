//! Opening, creating and unlocking a repository; sealed object I/O; the chunk index.

use crate::backend::{BackendOptions, ObjectStore};
use crate::cache::Cache;
use crate::crypto::{ChunkId, Crypto, MasterKey};
use crate::error::{Error, Result};
use crate::index::{ChunkIndex, Location};
use crate::keys::{
    CONFIG_COPY_OBJECT, CONFIG_OBJECT, Encryption, FORMAT_VERSION, KEY_COPIES_PREFIX, KEYS_PREFIX, KdfParams, KeySlot,
    RepoConfig, Secret, from_checked_json, slot_object_names, to_checked_json,
};
use crate::manifest::{MAX_MANIFEST_LEN, Manifest, RESTORE_POINTS_PREFIX};
use crate::pack::{INDEX_PREFIX, PackEntry, PackName, chunk_aad, open_index};
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Objects below these prefixes never change once written: safe to cache.
///
/// Ordinary reads trust a cached copy: it holds the sealed bytes as stored and is
/// authenticated (AEAD bound to the object's name) on every open, so it is exactly what
/// was written. Damage the store suffers after caching is `verify`'s to find: it reads
/// with [`Source::Store`].
const IMMUTABLE: [&str; 2] = [RESTORE_POINTS_PREFIX, INDEX_PREFIX];
/// `tags/<id>`: the tags of a restore point as last changed by `tag`. Manifests are
/// immutable (cached, maybe object-locked, named in snapshots' other-config), so the
/// changed tags live beside them, in an object that is never cached.
const TAGS_PREFIX: &str = "tags/";
const MAX_TAGS_LEN: usize = 1 << 20;
pub const DAMAGED_PREFIX: &str = "damaged/";
pub const CONDEMNED_PREFIX: &str = "gc/";
const MAX_SMALL_OBJECT: usize = 64 << 20;
/// Parallel GETs when loading many small objects.
const FETCH_CONCURRENCY: usize = 16;

pub struct InitOptions {
    pub encryption: Encryption,
    pub secret: Option<Secret>,
    pub kdf: KdfParams,
    pub chunk_size: u32,
    pub page_slots: u32,
    pub pack_size: u32,
    pub zstd_level: i32,
    /// Share chunk ids with this repository (so `copy` between them moves only missing chunks).
    pub chunk_ids_from: Option<Repository>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encryption: Encryption::Aes256Gcm,
            secret: None,
            kdf: KdfParams::default(),
            chunk_size: 256 << 10,
            page_slots: 1024,
            pack_size: 16 << 20,
            zstd_level: 1,
            chunk_ids_from: None,
        }
    }
}

/// Where reads of immutable objects (manifests, pack indexes) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The local cache when it holds the object, else the store (then cached).
    Cache,
    /// The store only: what verify checks. A cached copy that differs from the stored one
    /// is evicted, so this host stops hiding the damage.
    Store,
}

/// A chunk that verify found bad: excluded from the index so the next backup stores it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DamagedChunk {
    pub id: ChunkId,
    pub pack: String,
}

#[derive(Default)]
pub(crate) struct IndexState {
    pub chunks: ChunkIndex,
    loaded: HashSet<PackName>,
    /// Packs gc has condemned: readable, but never deduplicated against.
    pub condemned: HashSet<PackName>,
    damaged: HashSet<DamagedChunk>,
}

pub(crate) struct Inner {
    store: Store,
    config: RepoConfig,
    crypto: Arc<Crypto>,
    master: MasterKey,
    cache: Option<Cache>,
    index: RwLock<IndexState>,
    index_loaded: tokio::sync::Mutex<bool>,
}

/// A handle on an open (unlocked) repository; cheap to clone.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl Repository {
    /// Creates a repository at `location` (a path, `s3://bucket/prefix`, `azblob://container/prefix`).
    pub async fn init(location: &str, backend: &BackendOptions, opts: InitOptions) -> Result<Self> {
        Self::init_cached(Arc::new(crate::backend::open(location, backend)?), opts, backend.cache_dir.as_deref()).await
    }

    /// Creates a repository on `backend` (any [`ObjectStore`], e.g. one a test wraps).
    pub async fn init_on(backend: Arc<dyn ObjectStore>, opts: InitOptions) -> Result<Self> {
        Self::init_cached(backend, opts, None).await
    }

    /// Creates with this host's cache of immutable objects under `cache_dir`, if any.
    async fn init_cached(backend: Arc<dyn ObjectStore>, opts: InitOptions, cache_dir: Option<&Path>) -> Result<Self> {
        let store = Store::on(backend);
        if store.get(CONFIG_OBJECT).await?.is_some() || store.get(CONFIG_COPY_OBJECT).await?.is_some() {
            return Err(Error::AlreadyExists(store.location().to_string()));
        }
        let master = match &opts.chunk_ids_from {
            Some(other) => {
                let mut m = MasterKey::generate()?;
                m.chunk_id = other.inner.master.chunk_id;
                m
            }
            None => MasterKey::generate()?,
        };
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: crate::crypto::random_hex(16)?,
            created: chrono::Utc::now(),
            encryption: opts.encryption,
            chunk_size: opts.chunk_size,
            page_slots: opts.page_slots,
            pack_size: opts.pack_size,
            zstd_level: opts.zstd_level,
            plain_master: (opts.encryption == Encryption::None).then(|| hex::encode(master.to_bytes().as_slice())),
        };
        config
            .validate()
            .map_err(|_| Error::Invalid("chunk size must be a power of two from 64 KiB to 16 MiB".into()))?;
        if opts.encryption == Encryption::Aes256Gcm {
            let secret = opts.secret.as_ref().ok_or(Error::KeyNeeded)?;
            let slot = KeySlot::create(&master, secret, opts.kdf, "initial")?;
            put_copies(&store, &slot.object_names(), &slot).await?;
        }
        // The config goes last: a half-created repository is not a repository.
        put_copies(&store, &[CONFIG_COPY_OBJECT, CONFIG_OBJECT], &config).await?;
        Ok(Self::assemble(store, config, master, cache_dir))
    }

    /// Opens and unlocks the repository at `location`.
    pub async fn open(location: &str, backend: &BackendOptions, secret: Option<&Secret>) -> Result<Self> {
        Self::open_cached(Arc::new(crate::backend::open(location, backend)?), secret, backend.cache_dir.as_deref())
            .await
    }

    /// Opens and unlocks the repository on `backend` (any [`ObjectStore`]).
    pub async fn open_on(backend: Arc<dyn ObjectStore>, secret: Option<&Secret>) -> Result<Self> {
        Self::open_cached(backend, secret, None).await
    }

    /// Opens with this host's cache of immutable objects under `cache_dir`, if any.
    async fn open_cached(
        backend: Arc<dyn ObjectStore>,
        secret: Option<&Secret>,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let store = Store::on(backend);
        let config: RepoConfig = read_copies(&store, &[CONFIG_OBJECT, CONFIG_COPY_OBJECT])
            .await?
            .ok_or_else(|| Error::NotARepository(store.location().to_string()))?;
        config.validate()?;
        let master = match config.encryption {
            Encryption::None => {
                let hexed = config.plain_master.as_deref().unwrap_or_default();
                let bytes = hex::decode(hexed).map_err(|_| Error::corrupt(CONFIG_OBJECT, "bad key material"))?;
                MasterKey::from_bytes(&bytes).ok_or_else(|| Error::corrupt(CONFIG_OBJECT, "bad key material"))?
            }
            Encryption::Aes256Gcm => {
                let secret = secret.ok_or(Error::KeyNeeded)?;
                unlock(&store, secret).await?
            }
        };
        Ok(Self::assemble(store, config, master, cache_dir))
    }

    fn assemble(store: Store, config: RepoConfig, master: MasterKey, cache_dir: Option<&Path>) -> Self {
        let crypto = Arc::new(Crypto::new(&master, config.encryption == Encryption::Aes256Gcm, config.zstd_level));
        // A cache that cannot open costs speed only.
        let cache = cache_dir.and_then(|dir| match Cache::open(dir, &config.id) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("running without the local cache: {e}");
                None
            }
        });
        Repository {
            inner: Arc::new(Inner {
                store,
                config,
                crypto,
                master,
                cache,
                index: RwLock::new(IndexState::default()),
                index_loaded: tokio::sync::Mutex::new(false),
            }),
        }
    }

    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    pub fn location(&self) -> &str {
        self.inner.store.location()
    }

    /// The storage this repository was opened on (object lock, retention).
    pub fn backend(&self) -> &dyn ObjectStore {
        self.inner.store.backend().as_ref()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn crypto(&self) -> &Arc<Crypto> {
        &self.inner.crypto
    }

    /// The id a chunk holding `data` has here (the zero id for all zeros, never stored):
    /// compares content with a restore point without reading the restore point.
    pub fn chunk_id_of(&self, data: &[u8]) -> ChunkId {
        if crate::crypto::is_zero(data) { ChunkId::ZERO } else { self.inner.crypto.chunk_id(data) }
    }

    /// True when both repositories derive chunk ids with the same key.
    pub fn shares_chunk_ids_with(&self, other: &Repository) -> bool {
        self.inner.master.chunk_id == other.inner.master.chunk_id
    }

    /// Largest plaintext a chunk or index page can have.
    pub(crate) fn max_chunk_len(&self) -> usize {
        let c = &self.inner.config;
        (c.chunk_size as usize).max(c.page_slots as usize * 32)
    }

    // ---- sealed objects ----

    /// Raw stored bytes of `name`; immutable objects come from `source`.
    pub(crate) async fn fetch_from(&self, name: &str, source: Source) -> Result<Option<Vec<u8>>> {
        let cache = self.inner.cache.as_ref().filter(|_| IMMUTABLE.iter().any(|p| name.starts_with(p)));
        let Some(cache) = cache else { return self.inner.store.get(name).await };
        let cached = cache.get(name)?;
        if source == Source::Cache && cached.is_some() {
            return Ok(cached);
        }
        let got = self.inner.store.get(name).await?;
        match (&got, cached) {
            (Some(data), None) if source == Source::Cache => cache.put(name, data)?,
            (got, Some(cached)) if got.as_ref() != Some(&cached) => {
                tracing::warn!("{name} as stored differs from this host's cached copy: dropping the cached copy");
                cache.remove(name)?;
            }
            _ => {}
        }
        Ok(got)
    }

    /// Stores `data` under `name`, remembering immutable objects in the cache.
    pub(crate) async fn publish(&self, name: &str, data: Vec<u8>) -> Result<()> {
        if let Some(cache) = self.inner.cache.as_ref().filter(|_| IMMUTABLE.iter().any(|p| name.starts_with(p))) {
            cache.put(name, &data)?;
        }
        self.inner.store.put(name, data).await
    }

    pub(crate) async fn put_json<T: Serialize>(&self, name: &str, value: &T, compress: bool) -> Result<()> {
        let plain = serde_json::to_vec(value).map_err(|e| Error::Json { object: name.into(), source: e })?;
        let sealed = self.inner.crypto.seal(name.as_bytes(), &plain, compress)?;
        self.publish(name, sealed).await
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, name: &str, max: usize) -> Result<Option<T>> {
        self.get_json_from(name, max, Source::Cache).await
    }

    async fn get_json_from<T: DeserializeOwned>(&self, name: &str, max: usize, source: Source) -> Result<Option<T>> {
        let Some(sealed) = self.fetch_from(name, source).await? else { return Ok(None) };
        let plain = self.inner.crypto.open(name.as_bytes(), &sealed, max)?;
        from_json(name, &plain).map(Some)
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        if let Some(cache) = &self.inner.cache {
            cache.remove(name)?;
        }
        self.inner.store.delete(name).await
    }

    // ---- restore points ----

    /// All restore points, oldest first. Unreadable manifests are reported, not skipped
    /// silently: use `restore_points_checked` to see them.
    pub async fn restore_points(&self) -> Result<Vec<Manifest>> {
        let (good, bad) = self.restore_points_checked().await?;
        if let Some((name, e)) = bad.into_iter().next() {
            tracing::warn!("restore point {name} is unreadable: {e}");
        }
        Ok(good)
    }

    /// (readable manifests oldest first, (id, error) of unreadable ones).
    pub async fn restore_points_checked(&self) -> Result<(Vec<Manifest>, Vec<(String, Error)>)> {
        self.restore_points_from(Source::Cache).await
    }

    pub(crate) async fn restore_points_from(&self, source: Source) -> Result<(Vec<Manifest>, Vec<(String, Error)>)> {
        let names: Vec<String> =
            self.inner.store.list(RESTORE_POINTS_PREFIX).await?.into_iter().map(|(n, _)| n).collect();
        if let Some(cache) = &self.inner.cache {
            cache.retain(RESTORE_POINTS_PREFIX, &names.iter().cloned().collect())?;
        }
        let results: Vec<(String, Result<Option<Manifest>>)> = futures::stream::iter(names)
            .map(|name| async move {
                let r = self.get_json_from::<Manifest>(&name, MAX_MANIFEST_LEN, source).await;
                (name, r)
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (name, r) in results {
            let id = name.trim_start_matches(RESTORE_POINTS_PREFIX).to_string();
            match r {
                Ok(Some(m)) if m.id == id => good.push(m),
                Ok(Some(_)) => bad.push((id, Error::corrupt(name, "manifest id does not match its name"))),
                Ok(None) => {}
                Err(e) => bad.push((id, e)),
            }
        }
        good.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        self.apply_changed_tags(&mut good).await?;
        Ok((good, bad))
    }

    /// Replaces the tags of the restore points whose tags were changed since they were
    /// written. An unreadable `tags/` object leaves the manifest's own tags (with a warning).
    async fn apply_changed_tags(&self, points: &mut [Manifest]) -> Result<()> {
        for (name, _) in self.inner.store.list(TAGS_PREFIX).await? {
            let Some(m) = points.iter_mut().find(|m| name.strip_prefix(TAGS_PREFIX) == Some(m.id.as_str())) else {
                continue;
            };
            match self.get_json::<Vec<String>>(&name, MAX_TAGS_LEN).await {
                Ok(Some(tags)) => m.tags = tags,
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "the changed tags of restore point {} are unreadable ({e}): showing its original tags",
                    m.id
                ),
            }
        }
        Ok(())
    }

    /// Sets the tags of a restore point, leaving its manifest as it is.
    pub async fn set_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        self.put_json(&format!("{TAGS_PREFIX}{id}"), &tags, true).await
    }

    /// The restore point whose id is or starts with `prefix` ("latest" for the newest
    /// readable one). A point whose manifest exists but cannot be read is damage, not
    /// "not found".
    pub async fn restore_point(&self, prefix: &str) -> Result<Manifest> {
        let (good, bad) = self.restore_points_checked().await?;
        if prefix == "latest" {
            for (id, e) in &bad {
                tracing::warn!("restore point {id} is unreadable: {e}");
            }
            return good.into_iter().last().ok_or_else(|| Error::RestorePointNotFound(prefix.into()));
        }
        let mut hits = good.into_iter().filter(|m| m.id.starts_with(prefix));
        let mut damaged = bad.into_iter().filter(|(id, _)| id.starts_with(prefix));
        match (hits.next(), hits.next(), damaged.next()) {
            (Some(m), None, None) => Ok(m),
            (None, None, Some((id, e))) if damaged.next().is_none() => {
                Err(Error::RestorePointDamaged { id, reason: e.to_string() })
            }
            (None, None, None) => Err(Error::RestorePointNotFound(prefix.into())),
            _ => Err(Error::AmbiguousSnapshot(prefix.into())),
        }
    }

    pub(crate) async fn write_manifest(&self, m: &Manifest) -> Result<()> {
        self.put_json(&Manifest::object_name(&m.id), m, true).await
    }

    /// Removes a restore point (its data goes at the next `prune`).
    pub async fn delete_restore_point(&self, id: &str) -> Result<()> {
        self.delete(&Manifest::object_name(id)).await?;
        self.delete(&format!("{TAGS_PREFIX}{id}")).await
    }

    // ---- key slots ----

    /// The key slots with at least one intact copy (damaged ones are logged).
    pub async fn key_slots(&self) -> Result<Vec<KeySlot>> {
        let (mut out, damaged) = read_slots(&self.inner.store).await?;
        for e in damaged {
            tracing::warn!("{e}");
        }
        out.sort_by_key(|s| s.created);
        Ok(out)
    }

    /// Rewrites each damaged or missing copy of the config and of every key slot from an
    /// intact copy (so one copy can be lost again); returns the copies that were damaged.
    /// A missing copy is no damage: repositories written before copies existed gain them.
    pub(crate) async fn repair_key_objects(&self) -> Result<Vec<String>> {
        let store = &self.inner.store;
        let mut ids = std::collections::BTreeSet::new();
        for prefix in [KEYS_PREFIX, KEY_COPIES_PREFIX] {
            ids.extend(
                store.list(prefix).await?.into_iter().filter_map(|(n, _)| n.strip_prefix(prefix).map(str::to_string)),
            );
        }
        let mut damaged = repair_copies::<RepoConfig>(store, &[CONFIG_OBJECT, CONFIG_COPY_OBJECT]).await?;
        for id in ids {
            damaged.extend(repair_copies::<KeySlot>(store, &slot_object_names(&id)).await?);
        }
        Ok(damaged)
    }

    /// Every stored object holding the config or a key slot, all copies (e.g. to lock them).
    pub async fn key_objects(&self) -> Result<Vec<String>> {
        let mut out = vec![CONFIG_OBJECT.to_string()];
        if self.inner.store.get(CONFIG_COPY_OBJECT).await?.is_some() {
            out.push(CONFIG_COPY_OBJECT.to_string());
        }
        for prefix in [KEYS_PREFIX, KEY_COPIES_PREFIX] {
            out.extend(self.inner.store.list(prefix).await?.into_iter().map(|(n, _)| n));
        }
        Ok(out)
    }

    pub async fn add_key(&self, secret: &Secret, params: KdfParams, label: &str) -> Result<KeySlot> {
        if self.inner.config.encryption == Encryption::None {
            return Err(Error::Invalid("an unencrypted repository has no keys".into()));
        }
        let master = self.inner.master.clone();
        let (secret, label) = (secret.clone(), label.to_string());
        let slot = tokio::task::spawn_blocking(move || KeySlot::create(&master, &secret, params, &label)).await??;
        put_copies(&self.inner.store, &slot.object_names(), &slot).await?;
        Ok(slot)
    }

    /// Removes a key slot; the last one cannot go (the repository would be lost).
    pub async fn remove_key(&self, id: &str) -> Result<()> {
        let slots = self.key_slots().await?;
        if !slots.iter().any(|s| s.id == id) {
            return Err(Error::Invalid(format!("no key slot {id}")));
        }
        if slots.len() < 2 {
            return Err(Error::Invalid("refusing to remove the last key slot".into()));
        }
        for name in slot_object_names(id) {
            self.inner.store.delete(&name).await?;
        }
        Ok(())
    }

    /// The key slot `secret` opens (to change that passphrase).
    pub async fn slot_for(&self, secret: &Secret) -> Result<KeySlot> {
        for slot in self.key_slots().await? {
            let (s, sec) = (slot.clone(), secret.clone());
            if tokio::task::spawn_blocking(move || s.open(&sec)).await??.is_some() {
                return Ok(slot);
            }
        }
        Err(Error::WrongKey)
    }

    // ---- chunk index ----

    /// Loads new pack indexes (and the damaged / condemned lists) into memory.
    pub async fn refresh_index(&self) -> Result<()> {
        self.load_index(Source::Cache).await
    }

    /// Loads the indexes (from `source`; all of them again from the store) into memory.
    pub(crate) async fn load_index(&self, source: Source) -> Result<()> {
        let mut loaded_once = self.inner.index_loaded.lock().await;
        let damaged = self.load_damaged().await?;
        let condemned = self.load_condemned().await?;
        let names = self.inner.store.list(INDEX_PREFIX).await?;
        let present: HashSet<String> = names.iter().map(|(n, _)| n.clone()).collect();
        if let Some(cache) = &self.inner.cache {
            cache.retain(INDEX_PREFIX, &present)?;
        }
        let rebuild = {
            let st = self.read_index();
            source == Source::Store
                || st.damaged != damaged
                || st.condemned != condemned
                || st.loaded.iter().any(|p| !present.contains(&p.index_object()))
        };
        let todo: Vec<PackName> = {
            let st = self.read_index();
            names
                .iter()
                .filter_map(|(n, _)| PackName::from_object(n))
                .filter(|p| rebuild || !st.loaded.contains(p))
                .collect()
        };
        let mut fresh = if rebuild { IndexState::default() } else { std::mem::take(&mut *self.write_index()) };
        fresh.damaged = damaged;
        fresh.condemned = condemned;
        let loaded: Vec<Option<(PackName, Vec<PackEntry>)>> = futures::stream::iter(todo)
            .map(|pack| async move {
                match self.pack_entries_from(&pack, source).await {
                    Ok(e) => Ok(Some((pack, e))),
                    // A damaged index is like a lost pack (verify rebuilds it); retried next refresh.
                    Err(e) if e.is_damage() => {
                        tracing::warn!("{e}");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let mut loaded: Vec<(PackName, Vec<PackEntry>)> = loaded.into_iter().flatten().collect();
        // Condemned packs first: the index keeps the last location it sees for an id.
        loaded.sort_by_key(|(p, _)| !fresh.condemned.contains(p));
        for (pack, entries) in loaded {
            let damaged = &fresh.damaged;
            let usable =
                entries.into_iter().filter(|e| !damaged.contains(&DamagedChunk { id: e.id, pack: pack.0.clone() }));
            fresh.chunks.add_pack(&pack, usable);
            fresh.loaded.insert(pack);
        }
        fresh.chunks.merge();
        *self.write_index() = fresh;
        *loaded_once = true;
        Ok(())
    }

    /// Loads the index once; later calls are free.
    pub async fn ensure_index(&self) -> Result<()> {
        if *self.inner.index_loaded.lock().await {
            return Ok(());
        }
        self.refresh_index().await
    }

    pub(crate) fn read_index(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.inner.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries of one pack, from its index object.
    pub(crate) async fn pack_entries(&self, pack: &PackName) -> Result<Vec<PackEntry>> {
        self.pack_entries_from(pack, Source::Cache).await
    }

    pub(crate) async fn pack_entries_from(&self, pack: &PackName, source: Source) -> Result<Vec<PackEntry>> {
        let name = pack.index_object();
        let sealed = self.fetch_from(&name, source).await?.ok_or_else(|| Error::corrupt(&name, "missing"))?;
        let crypto = self.inner.crypto.clone();
        let pack = pack.clone();
        tokio::task::spawn_blocking(move || open_index(&crypto, &pack, &sealed)).await?
    }

    pub(crate) async fn load_damaged(&self) -> Result<HashSet<DamagedChunk>> {
        let mut out = HashSet::new();
        for (name, _) in self.inner.store.list(DAMAGED_PREFIX).await? {
            if let Some(list) = self.get_json::<Vec<DamagedChunk>>(&name, MAX_SMALL_OBJECT).await? {
                out.extend(list);
            }
        }
        Ok(out)
    }

    pub(crate) async fn load_condemned(&self) -> Result<HashSet<PackName>> {
        let mut out = HashSet::new();
        for (name, _) in self.inner.store.list(CONDEMNED_PREFIX).await? {
            if let Some(g) = self.get_json::<crate::gc::Condemned>(&name, MAX_SMALL_OBJECT).await? {
                out.extend(g.packs.into_iter().map(PackName));
            }
        }
        Ok(out)
    }

    /// Where chunk `id` is stored, if anywhere.
    pub fn locate(&self, id: &ChunkId) -> Option<Location> {
        self.read_index().chunks.locate(id)
    }

    /// True when a backup may reference `id` without storing it again.
    pub(crate) fn has_usable_chunk(&self, id: &ChunkId) -> bool {
        let st = self.read_index();
        st.chunks.locate(id).is_some_and(|l| !st.condemned.contains(&l.pack))
    }

    /// Reads, authenticates and decompresses one chunk (or index page).
    pub async fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        if id.is_zero() {
            return Err(Error::Invalid("the zero chunk is never stored".into()));
        }
        let loc = self.locate(id).ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
        let sealed = match self.read_pack_range(&loc.pack, loc.offset as u64, loc.len as u64).await {
            Ok(sealed) => sealed,
            Err(e) if e.is_damage() => match self.relocate(id, &loc.pack).await? {
                Some(again) => self.read_pack_range(&again.pack, again.offset as u64, again.len as u64).await?,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let (opener, id) = (self.chunk_opener(), *id);
        tokio::task::spawn_blocking(move || opener.open(&id, &sealed)).await?
    }

    /// Another copy of chunk `id` than the one in `gone`, after reloading the index: gc may
    /// delete one copy of a chunk stored twice (keeping the copy its own index chose) after
    /// this handle loaded its index, so a reader that finds its pack gone looks again.
    pub(crate) async fn relocate(&self, id: &ChunkId, gone: &PackName) -> Result<Option<Location>> {
        self.refresh_index().await?;
        Ok(self.locate(id).filter(|l| l.pack != *gone))
    }

    /// `len` stored bytes of a pack's data object from `offset` (one or more sealed chunks).
    pub(crate) async fn read_pack_range(&self, pack: &PackName, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.store.get_range(&pack.data_object(), offset, len).await
    }

    /// Opens sealed chunks on any thread.
    pub(crate) fn chunk_opener(&self) -> ChunkOpener {
        ChunkOpener { crypto: self.inner.crypto.clone(), max_len: self.max_chunk_len() }
    }

    /// Memory held by the chunk index (for reports).
    pub fn index_memory(&self) -> usize {
        self.read_index().chunks.memory_bytes()
    }
}

/// Authenticates stored chunks: what every read of chunk content goes through.
#[derive(Clone)]
pub(crate) struct ChunkOpener {
    crypto: Arc<Crypto>,
    max_len: usize,
}

impl ChunkOpener {
    /// Decrypts (authenticating), decompresses and re-hashes the sealed chunk `id`.
    pub(crate) fn open(&self, id: &ChunkId, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        self.open_into(id, sealed, &mut plain)?;
        Ok(plain)
    }

    /// [`Self::open`] appending the plaintext to `out` (decompressed straight into it).
    pub(crate) fn open_into(&self, id: &ChunkId, sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        self.crypto.open_into(&chunk_aad(id), sealed, self.max_len, out).map_err(|e| match e {
            // The aad is binary: name the chunk by its hex id instead.
            Error::Corrupt { reason, .. } => Error::corrupt(format!("chunk {id}"), reason),
            other => other,
        })?;
        // Decryption authenticates; re-hashing also catches an unencrypted repository's damage.
        if self.crypto.chunk_id(&out[start..]) != *id {
            out.truncate(start);
            return Err(Error::corrupt(format!("chunk {id}"), "content does not match its id"));
        }
        Ok(())
    }
}

/// Writes `value` (with its checksum) under each of `names`, in order.
async fn put_copies<T: Serialize>(store: &Store, names: &[impl AsRef<str>], value: &T) -> Result<()> {
    for name in names {
        store.put(name.as_ref(), to_checked_json(name.as_ref(), value)?).await?;
    }
    Ok(())
}

/// The first intact copy among `names`: `None` when none exists, damage when every copy
/// that exists is damaged.
async fn read_copies<T: DeserializeOwned>(store: &Store, names: &[impl AsRef<str>]) -> Result<Option<T>> {
    let mut damage = None;
    for name in names {
        let Some(raw) = store.get(name.as_ref()).await? else { continue };
        match from_checked_json(name.as_ref(), &raw) {
            Ok(v) => return Ok(Some(v)),
            Err(e) => {
                tracing::warn!("{e}; reading its other copy");
                damage.get_or_insert(e);
            }
        }
    }
    damage.map_or(Ok(None), Err)
}

/// Rewrites the damaged or missing ones among the copies `names` from an intact one;
/// returns the damaged ones.
async fn repair_copies<T: Serialize + DeserializeOwned>(
    store: &Store,
    names: &[impl AsRef<str>],
) -> Result<Vec<String>> {
    let (mut intact, mut rewrite, mut damaged) = (None, Vec::new(), Vec::new());
    for name in names.iter().map(AsRef::as_ref) {
        match store.get(name).await? {
            None => rewrite.push(name),
            Some(raw) => match from_checked_json::<T>(name, &raw) {
                Ok(v) => intact = Some(v),
                Err(e) if e.is_damage() => {
                    tracing::warn!("{e}");
                    damaged.push(name.to_string());
                    rewrite.push(name);
                }
                Err(e) => return Err(e),
            },
        }
    }
    if let Some(value) = intact
        && let Err(e) = put_copies(store, &rewrite, &value).await
    {
        // A read-only store (a mount, a locked bucket) still verifies.
        tracing::warn!("could not rewrite {}: {e}", rewrite.join(", "));
    }
    Ok(damaged)
}

/// (key slots with an intact copy, the damage of those without one).
async fn read_slots(store: &Store) -> Result<(Vec<KeySlot>, Vec<Error>)> {
    let mut ids = std::collections::BTreeSet::new();
    for prefix in [KEYS_PREFIX, KEY_COPIES_PREFIX] {
        ids.extend(
            store.list(prefix).await?.into_iter().filter_map(|(n, _)| n.strip_prefix(prefix).map(str::to_string)),
        );
    }
    let (mut slots, mut damaged) = (Vec::new(), Vec::new());
    for id in ids {
        match read_copies::<KeySlot>(store, &slot_object_names(&id)).await {
            Ok(Some(slot)) => slots.push(slot),
            Ok(None) => {}
            Err(e) if e.is_damage() => damaged.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok((slots, damaged))
}

/// The master key from the first slot `secret` opens. A well-formed slot that does not
/// open means a wrong secret; when none opens and some slot is damaged, that is reported.
async fn unlock(store: &Store, secret: &Secret) -> Result<MasterKey> {
    let (slots, mut damaged) = read_slots(store).await?;
    if slots.is_empty() && damaged.is_empty() {
        return Err(Error::corrupt(KEYS_PREFIX, "no key slots"));
    }
    for slot in slots {
        let (secret, id) = (secret.clone(), slot.id.clone());
        match tokio::task::spawn_blocking(move || slot.open(&secret)).await? {
            Ok(Some(master)) => return Ok(master),
            Ok(None) => {}
            Err(e) if e.is_damage() => damaged.push(Error::corrupt(format!("key slot {id}"), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    if damaged.is_empty() {
        return Err(Error::WrongKey);
    }
    Err(Error::KeySlotsDamaged(damaged.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
}

pub(crate) fn from_json<T: DeserializeOwned>(object: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::Json { object: object.into(), source: e })
}
