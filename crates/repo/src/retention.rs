//! Immutable restore points: S3 object-lock retention on every object a restore point
//! needs to be restored (its manifest, the index pages and data chunks it references,
//! hence their packs and pack indexes, plus the repository config and key slots without
//! which nothing decrypts). Objects shared with other restore points are locked too: that
//! only extends their retention, which object lock never lets us shorten anyway.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backend::RetentionMode;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::reader::DiskReader;
use crate::repository::Repository;

/// Retention requests in flight at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    /// Full ids of the restore points locked.
    pub restore_points: Vec<String>,
    pub mode: RetentionMode,
    pub until: DateTime<Utc>,
    /// Objects given retention (manifests, packs, pack indexes, config, key slots).
    pub objects: usize,
    pub packs: usize,
}

/// Locks the restore points `ids` (ids, unique prefixes or "latest") until `until`, through
/// the backend `repo` was opened on. Everything is enumerated before the first object is
/// locked, so a damaged restore point fails without a partial lock.
pub async fn lock_restore_points(
    repo: &Repository,
    ids: &[String],
    mode: RetentionMode,
    until: DateTime<Utc>,
) -> Result<LockReport> {
    let backend = repo.backend();
    backend.require_object_lock().await?;
    let mut manifests = Vec::new();
    for id in ids {
        let manifest = repo.restore_point(id).await?;
        if !manifests.iter().any(|m: &Manifest| m.id == manifest.id) {
            manifests.push(manifest);
        }
    }
    let objects = referenced_objects(repo, &manifests).await?;
    let packs = objects.iter().filter(|o| o.starts_with(crate::pack::DATA_PREFIX)).count();
    futures::stream::iter(objects.iter())
        .map(|object| backend.retain(object, mode, until))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(LockReport {
        restore_points: manifests.into_iter().map(|m| m.id).collect(),
        mode,
        until,
        objects: objects.len(),
        packs,
    })
}

/// Names of every object the restore points `manifests` need to be restored.
pub async fn referenced_objects(repo: &Repository, manifests: &[Manifest]) -> Result<BTreeSet<String>> {
    let mut objects: BTreeSet<String> = repo.key_objects().await?.into_iter().collect();
    let mut chunks: BTreeSet<ChunkId> = BTreeSet::new();
    for manifest in manifests {
        objects.insert(Manifest::object_name(&manifest.id));
        for disk in &manifest.disks {
            let reader = DiskReader::new(repo, disk).await?;
            for (number, page_id) in disk.pages.iter().enumerate() {
                if page_id.is_zero() || !chunks.insert(*page_id) {
                    continue; // a hole, or a page shared with a disk already walked
                }
                chunks.extend(reader.page(number as u64).await?.iter().filter(|id| !id.is_zero()));
            }
        }
    }
    for id in &chunks {
        let location = repo.locate(id).ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
        objects.insert(location.pack.data_object());
        objects.insert(location.pack.index_object());
    }
    Ok(objects)
}
