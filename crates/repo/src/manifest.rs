//! Restore points. A manifest names, per disk, the index pages that list the chunk id of
//! every chunk slot; pages are content-addressed chunks themselves, so unchanged pages are
//! shared between restore points and every restore point is complete on its own.

use crate::crypto::ChunkId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
pub const MANIFEST_VERSION: u32 = 1;
/// Manifests are small; this guards decompression of a hostile object.
pub const MAX_MANIFEST_LEN: usize = 256 << 20;

/// What was backed up (a VM, an image file, ...). `id` groups restore points for retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SourceInfo {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes the writer received (or read from the source).
    pub bytes_read: u64,
    /// Bytes of all-zero chunks (holes).
    pub bytes_zero: u64,
    /// Plaintext bytes of chunks that were not yet stored.
    pub bytes_new: u64,
    /// Bytes those new chunks took once compressed and encrypted.
    pub bytes_stored: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    /// Slots inherited unread from the base restore point (changed-block incrementals).
    pub chunks_inherited: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskRecord {
    /// Position-independent name (e.g. "xvda" or the VBD device).
    pub name: String,
    #[serde(default)]
    pub uuid: String,
    pub size: u64,
    pub chunk_size: u32,
    pub page_slots: u32,
    /// One id per index page; `ZERO` for a page whose slots are all holes.
    pub pages: Vec<ChunkId>,
    pub stats: DiskStats,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}

impl DiskRecord {
    pub fn slot_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size as u64)
    }

    pub fn seconds(&self) -> f64 {
        (self.finished - self.started).num_milliseconds() as f64 / 1000.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub id: String,
    pub time: DateTime<Utc>,
    pub source: SourceInfo,
    /// Opaque to the repository (VM record, tool versions, ...).
    #[serde(default)]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub tags: Vec<String>,
    pub disks: Vec<DiskRecord>,
    /// The restore point this one was written against (informational: nothing depends on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub finished: DateTime<Utc>,
}

impl Manifest {
    pub fn object_name(id: &str) -> String {
        format!("{SNAPSHOTS_PREFIX}{id}")
    }

    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    pub fn total_size(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }

    /// Finds a disk by name, uuid, or position.
    pub fn disk(&self, which: &str) -> Option<&DiskRecord> {
        self.disks
            .iter()
            .find(|d| d.name == which || (!d.uuid.is_empty() && d.uuid == which))
            .or_else(|| which.parse::<usize>().ok().and_then(|i| self.disks.get(i)))
    }
}
