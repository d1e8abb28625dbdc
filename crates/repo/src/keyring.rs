//! The keys that open a repository, as reports: list, add, remove, change.

use crate::error::{Error, Result};
use crate::keys::{KdfParams, KeySlot, Secret};
use crate::repository::Repository;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A key slot, without its wrapped key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    /// `passphrase` or `key-file`.
    pub kind: &'static str,
    pub label: String,
    pub created: DateTime<Utc>,
}

impl From<&KeySlot> for KeyInfo {
    fn from(slot: &KeySlot) -> Self {
        KeyInfo { id: slot.id.clone(), kind: slot.kind(), label: slot.label.clone(), created: slot.created }
    }
}

/// A key replaced by another (the slot of the old secret removed once the new one is stored).
#[derive(Debug, Clone, Serialize)]
pub struct KeyChange {
    pub removed: KeyInfo,
    pub added: KeyInfo,
}

pub async fn list(repo: &Repository) -> Result<Vec<KeyInfo>> {
    Ok(repo.key_slots().await?.iter().map(KeyInfo::from).collect())
}

pub async fn add(repo: &Repository, secret: &Secret, params: KdfParams, label: &str) -> Result<KeyInfo> {
    Ok(KeyInfo::from(&repo.add_key(secret, params, label).await?))
}

/// Removes slot `id` (never the last one).
pub async fn remove(repo: &Repository, id: &str) -> Result<KeyInfo> {
    let slot = repo.key_slots().await?.into_iter().find(|s| s.id == id);
    let slot = slot.ok_or_else(|| Error::Invalid(format!("no key slot {id}")))?;
    repo.remove_key(id).await?;
    Ok(KeyInfo::from(&slot))
}

/// Replaces the slot `current` opens by one `new` opens, with the same label.
pub async fn change(repo: &Repository, current: &Secret, new: &Secret, params: KdfParams) -> Result<KeyChange> {
    let old = repo.slot_for(current).await?;
    let added = repo.add_key(new, params, &old.label).await?;
    repo.remove_key(&old.id).await?;
    Ok(KeyChange { removed: KeyInfo::from(&old), added: KeyInfo::from(&added) })
}
