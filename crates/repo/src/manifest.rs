//! Restore points. A manifest names, per disk, the index pages that list the chunk id of
//! every chunk slot; pages are content-addressed chunks themselves, so unchanged pages are
//! shared between restore points and every restore point is complete on its own.
//!
//! Disks are identified by their position (a VM disk's VBD userdevice, an image's place
//! on the command line), unique within a restore point; manifests list them sorted by it.
//! Manifests written before positions were recorded still open: [`Manifest::settle`]
//! derives the positions from what they stored (see there).

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
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
    /// Where the disk sits: the VM's VBD userdevice (as a number), or the image's place
    /// among those backed up together. `None` only while reading a manifest written
    /// before positions were recorded, until [`Manifest::settle`] derives it.
    #[serde(default)]
    pub position: Option<u32>,
    /// A name for people (the VBD userdevice as written, or the image's file name).
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
    /// Chunk slots of the disk; none when a damaged record says chunk size 0 (readers refuse it).
    pub fn slot_count(&self) -> u64 {
        if self.chunk_size == 0 { 0 } else { self.size.div_ceil(u64::from(self.chunk_size)) }
    }

    pub fn seconds(&self) -> f64 {
        (self.finished - self.started).num_milliseconds() as f64 / 1000.0
    }

    /// The disk's position (`u32::MAX` for a record not yet settled, which sorts last).
    pub fn position(&self) -> u32 {
        self.position.unwrap_or(u32::MAX)
    }

    /// "position 5 (name 5, uuid …, 10.0 GiB)": how errors and listings name a disk.
    pub fn describe(&self) -> String {
        let uuid = if self.uuid.is_empty() { String::new() } else { format!(", uuid {}", self.uuid) };
        format!("position {} (name {:?}{uuid}, {} bytes)", self.position(), self.name, self.size)
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
        // Saturating: a damaged manifest may list sizes that add up past u64.
        self.disks.iter().fold(0, |total, d| total.saturating_add(d.size))
    }

    /// The one disk `which` names: a number is a position (never an index into the list),
    /// anything else a VDI uuid or a name. `None` means the disk at the lowest position.
    /// Every command and API that picks a disk of a restore point goes through here.
    pub fn disk(&self, which: Option<&str>) -> Result<&DiskRecord> {
        let not_found = |why: String| Error::DiskNotFound(format!("{why}; restore point {} has {}", self.short_id(), self.disk_list()));
        let Some(which) = which else {
            return self.disks.iter().min_by_key(|d| d.position()).ok_or_else(|| not_found("no disk given".into()));
        };
        if let Ok(position) = which.parse::<u32>() {
            return self.disks.iter().find(|d| d.position == Some(position)).ok_or_else(|| not_found(format!("no disk at position {position}")));
        }
        let mut hits = self.disks.iter().filter(|d| (!d.uuid.is_empty() && d.uuid == which) || d.name == which);
        match (hits.next(), hits.next()) {
            (Some(d), None) => Ok(d),
            (Some(_), Some(_)) => Err(not_found(format!("{which:?} names several disks: choose by position"))),
            (None, _) => Err(not_found(format!("no disk with uuid or name {which:?}"))),
        }
    }

    /// The disks, one per line, as `disk` errors list them.
    pub fn disk_list(&self) -> String {
        match self.disks.len() {
            0 => "no disks".into(),
            n => format!("{n} disk(s):{}", self.disks.iter().map(|d| format!("\n  {}", d.describe())).collect::<String>()),
        }
    }

    /// Completes a manifest just read: derives the positions an older manifest lacks and
    /// sorts the disks by position. Older VM restore points named each disk by its VBD
    /// userdevice, so when every name is a distinct number those are the positions; image
    /// restore points stored their disks in command-line order, so otherwise the place in
    /// the list is the position.
    pub fn settle(&mut self) {
        if self.disks.iter().any(|d| d.position.is_none()) {
            let names: Option<Vec<u32>> = self.disks.iter().map(|d| d.name.parse().ok()).collect();
            let distinct = names.as_ref().is_some_and(|n| n.iter().collect::<std::collections::BTreeSet<_>>().len() == n.len());
            for (i, d) in self.disks.iter_mut().enumerate() {
                let derived = names.as_ref().filter(|_| distinct).and_then(|n| n.get(i).copied());
                d.position.get_or_insert(derived.unwrap_or(i as u32));
            }
        }
        self.disks.sort_by_key(DiskRecord::position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(position: Option<u32>, name: &str, uuid: &str) -> DiskRecord {
        let t = Utc::now();
        DiskRecord { position, name: name.into(), uuid: uuid.into(), size: 1 << 20, chunk_size: 1 << 16, page_slots: 16, pages: vec![], stats: DiskStats::default(), started: t, finished: t }
    }

    fn manifest(disks: Vec<DiskRecord>) -> Manifest {
        let t = Utc::now();
        let mut m = Manifest { version: MANIFEST_VERSION, id: "0123456789abcdef".into(), time: t, source: SourceInfo::default(), metadata: serde_json::Value::Null, tags: vec![], disks, base: None, finished: t };
        m.settle();
        m
    }

    #[test]
    fn a_number_is_a_position_never_an_index() {
        let m = manifest(vec![disk(Some(5), "5", "uuid-5"), disk(Some(0), "0", "uuid-0")]);
        assert_eq!(m.disks.iter().map(DiskRecord::position).collect::<Vec<_>>(), [0, 5], "sorted by position");
        assert_eq!(m.disk(Some("5")).unwrap().uuid, "uuid-5");
        assert_eq!(m.disk(Some("0")).unwrap().uuid, "uuid-0");
        assert_eq!(m.disk(Some("uuid-5")).unwrap().name, "5");
        assert_eq!(m.disk(None).unwrap().uuid, "uuid-0", "the default is the lowest position");
        let err = m.disk(Some("1")).unwrap_err().to_string();
        assert!(err.contains("no disk at position 1") && err.contains("position 0 (name \"0\", uuid uuid-0") && err.contains("position 5 ("), "{err}");
        assert!(m.disk(Some("xvdz")).unwrap_err().to_string().contains("no disk with uuid or name \"xvdz\""));
    }

    #[test]
    fn a_name_shared_by_two_disks_is_ambiguous() {
        let m = manifest(vec![disk(Some(0), "disk.img", ""), disk(Some(1), "disk.img", "")]);
        assert!(m.disk(Some("disk.img")).unwrap_err().to_string().contains("names several disks"));
        assert_eq!(manifest(vec![]).disk(None).unwrap_err().to_string(), "disk not found: no disk given; restore point 01234567 has no disks");
    }

    #[test]
    fn old_manifests_get_positions_from_what_they_stored() {
        // VM restore points named each disk by its userdevice, in the order the disks finished.
        let m = manifest(vec![disk(None, "5", "b"), disk(None, "0", "a")]);
        assert_eq!(m.disks.iter().map(|d| (d.position, d.uuid.as_str())).collect::<Vec<_>>(), [(Some(0), "a"), (Some(5), "b")]);
        // Image restore points: in command-line order.
        let m = manifest(vec![disk(None, "b.img", ""), disk(None, "a.img", "")]);
        assert_eq!(m.disk(Some("0")).unwrap().name, "b.img");
        assert_eq!(m.disk(Some("1")).unwrap().name, "a.img");
        // The stored form without positions still reads.
        let mut json = serde_json::to_value(disk(Some(3), "3", "")).unwrap();
        json.as_object_mut().unwrap().remove("position");
        assert_eq!(serde_json::from_value::<DiskRecord>(json).unwrap().position, None);
    }
}
