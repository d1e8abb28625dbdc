//! Restore points. A manifest names, per disk, the index pages that list the chunk id of
//! every chunk slot; pages are content-addressed chunks themselves, so unchanged pages are
//! shared between restore points and every restore point is complete on its own.
//!
//! Disks are identified by their position (a VM disk's VBD userdevice, an image's place
//! on the command line), unique within a restore point; manifests list them sorted by it.
//! Manifests written before positions were recorded still open: reading one derives the
//! positions from what it stored (see [`settle_disks`]).

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

pub const RESTORE_POINTS_PREFIX: &str = "snapshots/";
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
    /// among those backed up together; unique within a restore point.
    #[serde(default = "unrecorded")]
    pub position: u32,
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

    /// "position 5 (name 5, uuid …, 10.0 GiB)": how errors and listings name a disk.
    pub fn describe(&self) -> String {
        let uuid = if self.uuid.is_empty() { String::new() } else { format!(", uuid {}", self.uuid) };
        format!("position {} (name {:?}{uuid}, {} bytes)", self.position, self.name, self.size)
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
    /// Sorted by position.
    #[serde(deserialize_with = "settled_disks")]
    pub disks: Vec<DiskRecord>,
    /// The restore point this one was written against (informational: nothing depends on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub finished: DateTime<Utc>,
}

impl Manifest {
    pub fn object_name(id: &str) -> String {
        format!("{RESTORE_POINTS_PREFIX}{id}")
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
        let not_found = |why: String| {
            Error::DiskNotFound(format!("{why}; restore point {} has {}", self.short_id(), self.disk_list()))
        };
        let Some(which) = which else {
            return self.disks.iter().min_by_key(|d| d.position).ok_or_else(|| not_found("no disk given".into()));
        };
        if let Ok(position) = which.parse::<u32>() {
            return self
                .disks
                .iter()
                .find(|d| d.position == position)
                .ok_or_else(|| not_found(format!("no disk at position {position}")));
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
            n => format!(
                "{n} disk(s):{}",
                self.disks.iter().map(|d| format!("\n  {}", d.describe())).collect::<String>()
            ),
        }
    }
}

/// The position of a disk read from a manifest written before positions were recorded,
/// until [`settle_disks`] derives it.
fn unrecorded() -> u32 {
    u32::MAX
}

fn settled_disks<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<DiskRecord>, D::Error> {
    let mut disks = Vec::<DiskRecord>::deserialize(d)?;
    settle_disks(&mut disks);
    Ok(disks)
}

/// Derives the positions an older manifest lacks, then sorts the disks by position. Older VM
/// restore points named each disk by its VBD userdevice, so when every name is a distinct
/// number those are the positions; image restore points stored their disks in
/// command-line order, so otherwise the place in the list is the position.
fn settle_disks(disks: &mut [DiskRecord]) {
    if disks.iter().any(|d| d.position == unrecorded()) {
        let names: Option<Vec<u32>> = disks.iter().map(|d| d.name.parse().ok()).collect();
        let distinct =
            names.as_ref().is_some_and(|n| n.iter().collect::<std::collections::BTreeSet<_>>().len() == n.len());
        for (i, d) in disks.iter_mut().enumerate() {
            let derived = names.as_ref().filter(|_| distinct).and_then(|n| n.get(i).copied());
            d.position = derived.unwrap_or(i as u32);
        }
    }
    disks.sort_by_key(|d| d.position);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(position: u32, name: &str, uuid: &str) -> DiskRecord {
        let t = Utc::now();
        DiskRecord {
            position,
            name: name.into(),
            uuid: uuid.into(),
            size: 1 << 20,
            chunk_size: 1 << 16,
            page_slots: 16,
            pages: vec![],
            stats: DiskStats::default(),
            started: t,
            finished: t,
        }
    }

    /// The manifest as a repository reads it back, with `position` left out when `old`.
    fn manifest(disks: Vec<DiskRecord>, old: bool) -> Manifest {
        let t = Utc::now();
        let m = Manifest {
            version: MANIFEST_VERSION,
            id: "0123456789abcdef".into(),
            time: t,
            source: SourceInfo::default(),
            metadata: serde_json::Value::Null,
            tags: vec![],
            disks,
            base: None,
            finished: t,
        };
        let mut json = serde_json::to_value(&m).unwrap();
        for d in json["disks"].as_array_mut().unwrap().iter_mut().filter(|_| old) {
            d.as_object_mut().unwrap().remove("position");
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_number_is_a_position_never_an_index() {
        let m = manifest(vec![disk(5, "5", "uuid-5"), disk(0, "0", "uuid-0")], false);
        assert_eq!(m.disks.iter().map(|d| d.position).collect::<Vec<_>>(), [0, 5], "sorted by position");
        assert_eq!(m.disk(Some("5")).unwrap().uuid, "uuid-5");
        assert_eq!(m.disk(Some("0")).unwrap().uuid, "uuid-0");
        assert_eq!(m.disk(Some("uuid-5")).unwrap().name, "5");
        assert_eq!(m.disk(None).unwrap().uuid, "uuid-0", "the default is the lowest position");
        let err = m.disk(Some("1")).unwrap_err().to_string();
        assert!(
            err.contains("no disk at position 1")
                && err.contains("position 0 (name \"0\", uuid uuid-0")
                && err.contains("position 5 ("),
            "{err}"
        );
        assert!(m.disk(Some("xvdz")).unwrap_err().to_string().contains("no disk with uuid or name \"xvdz\""));
    }

    #[test]
    fn a_name_shared_by_two_disks_is_ambiguous() {
        let m = manifest(vec![disk(0, "disk.img", ""), disk(1, "disk.img", "")], false);
        assert!(m.disk(Some("disk.img")).unwrap_err().to_string().contains("names several disks"));
        assert_eq!(
            manifest(vec![], false).disk(None).unwrap_err().to_string(),
            "disk not found: no disk given; restore point 01234567 has no disks"
        );
    }

    #[test]
    fn old_manifests_get_positions_from_what_they_stored() {
        // VM restore points named each disk by its userdevice, in the order the disks finished.
        let m = manifest(vec![disk(9, "5", "b"), disk(9, "0", "a")], true);
        assert_eq!(m.disks.iter().map(|d| (d.position, d.uuid.as_str())).collect::<Vec<_>>(), [(0, "a"), (5, "b")]);
        // Image restore points: in command-line order, whatever the names.
        let m = manifest(vec![disk(9, "b.img", ""), disk(9, "a.img", "")], true);
        assert_eq!(m.disk(Some("0")).unwrap().name, "b.img");
        assert_eq!(m.disk(Some("1")).unwrap().name, "a.img");
        let m = manifest(vec![disk(9, "7", ""), disk(9, "7", "")], true);
        assert_eq!(
            m.disks.iter().map(|d| d.position).collect::<Vec<_>>(),
            [0, 1],
            "names that are not distinct positions"
        );
    }
}
