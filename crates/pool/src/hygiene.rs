//! Our snapshots on the host: how they are tagged, and which ones must go. Only one
//! base per VM survives a run, so the host never accumulates a growing chain.

use std::collections::BTreeMap;

use crate::records::Vm;

/// Set on every snapshot the engine creates, before anything else is done with it.
pub const TAG_SNAPSHOT: &str = "xenvault.snapshot";
/// The job that made the snapshot.
pub const TAG_JOB: &str = "xenvault.job";
/// Set once the restore point made from the snapshot is committed: the next incremental's base.
pub const TAG_BASE: &str = "xenvault.base";
/// On a snapshot VDI: the uuid of our snapshot VM it belonged to. Set before its VBD
/// goes (`VDI.data_destroy` needs that), so the VDI is still found and removed with it.
pub const TAG_SNAPSHOT_VM: &str = "xenvault.snapshot_vm";
/// The restore point made from the snapshot.
pub const TAG_RESTORE_POINT: &str = "xenvault.restore_point";
/// On the source VM, written before `VM.snapshot` and removed once the snapshot is
/// tagged: the snapshots being taken (a JSON list of name and time, see
/// [`crate::snapshot::Intent`]). A run killed in between leaves an untagged snapshot of
/// that name, which a later run finds by it, even one xapi finishes after that run looked.
pub const TAG_SNAPSHOT_INTENT: &str = "xenvault.snapshot_intent";
/// On the source VM: the backup holding it (one backup of a VM at a time, see the
/// engine's `vm_lock`).
pub const LOCK_KEY: &str = "xenvault.backup_lock";
/// Keys of a running backup on the source VM. xapi copies `other_config` into a
/// snapshot, so they are removed from our snapshots and from the stored VM records:
/// a VM restored from a restore point must not look locked.
pub const RUN_KEYS: [&str; 2] = [LOCK_KEY, TAG_SNAPSHOT_INTENT];

pub fn is_ours(other_config: &BTreeMap<String, String>) -> bool {
    other_config.get(TAG_SNAPSHOT).is_some_and(|v| v == "1")
}

pub fn is_base(other_config: &BTreeMap<String, String>) -> bool {
    is_ours(other_config) && other_config.get(TAG_BASE).is_some_and(|v| v == "1")
}

/// What to do with our existing snapshots of a VM before a new run.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// The base to build on, if any: the newest committed snapshot.
    pub keep: Option<Vm>,
    /// Left by interrupted runs (never committed) or superseded bases.
    pub remove: Vec<Vm>,
}

/// Sorts our snapshots of one VM into the one base kept and those to remove.
/// `current_job` protects the snapshot a concurrent step of this same job just made.
pub fn sort_out(snapshots: Vec<Vm>, current_job: &str) -> Cleanup {
    let mut cleanup = Cleanup::default();
    let mut bases: Vec<Vm> = Vec::new();
    for snapshot in snapshots.into_iter().filter(|s| is_ours(&s.other_config)) {
        if is_base(&snapshot.other_config) {
            bases.push(snapshot);
        } else if snapshot.other_config.get(TAG_JOB).map(String::as_str) != Some(current_job) {
            cleanup.remove.push(snapshot);
        }
    }
    // xapi's snapshot_time is ISO 8601 in one format, so text order is time order.
    bases.sort_by(|a, b| a.snapshot_time.cmp(&b.snapshot_time));
    cleanup.keep = bases.pop();
    cleanup.remove.extend(bases);
    cleanup
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvault_xapi_wire::Value;

    fn snap(uuid: &str, time: &str, tags: &[(&str, &str)]) -> Vm {
        let other: BTreeMap<String, Value> = tags.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        let record: BTreeMap<String, Value> = [
            ("uuid".to_owned(), Value::from(uuid)),
            ("snapshot_time".to_owned(), Value::DateTime(time.to_owned())),
            ("other_config".to_owned(), Value::Struct(other)),
        ]
        .into_iter()
        .collect();
        Vm::parse(uuid, &Value::Struct(record))
    }

    #[test]
    fn keeps_newest_base_only_and_leaves_foreign_snapshots() {
        let s = vec![
            snap("old-base", "20261101T00:00:00Z", &[(TAG_SNAPSHOT, "1"), (TAG_BASE, "1")]),
            snap("new-base", "20261102T00:00:00Z", &[(TAG_SNAPSHOT, "1"), (TAG_BASE, "1")]),
            snap("crashed", "20261103T00:00:00Z", &[(TAG_SNAPSHOT, "1"), (TAG_JOB, "j0")]),
            snap("running", "20261103T00:00:00Z", &[(TAG_SNAPSHOT, "1"), (TAG_JOB, "j1")]),
            snap("user", "20261103T00:00:00Z", &[]),
        ];
        let c = sort_out(s, "j1");
        assert_eq!(c.keep.map(|v| v.uuid).as_deref(), Some("new-base"));
        let mut removed: Vec<_> = c.remove.into_iter().map(|v| v.uuid).collect();
        removed.sort();
        assert_eq!(removed, ["crashed", "old-base"]);
    }
}
