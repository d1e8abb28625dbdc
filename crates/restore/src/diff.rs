//! Which files differ between the same file system in two restore points: added,
//! removed and modified paths, found by walking both trees with the file-system
//! readers. Like restic's `diff`, a file counts as modified when its type, size, mode,
//! owner, modification time or link target differ (contents are not read).

use serde::Serialize;
use std::collections::BTreeMap;
use xenvault_fsread::Entry;

use crate::Result;
use crate::files::StoredFs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub path: String,
    pub change: Change,
    /// For a modified path: which attributes differ (`size`, `mtime`, `mode`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
    /// Size in the newer restore point (0 when removed).
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub changes: Vec<FileChange>,
    pub added: usize,
    pub removed: usize,
    pub modified: usize,
    pub unchanged: usize,
}

/// Every entry below `/`, by path.
async fn walk(fs: &StoredFs) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut pending = vec!["/".to_owned()];
    while let Some(dir) = pending.pop() {
        for e in fs.list(&dir).await? {
            if e.kind == xenvault_fsread::EntryKind::Dir {
                pending.push(e.path.clone());
            }
            out.insert(e.path.clone(), e);
        }
    }
    Ok(out)
}

fn differences(a: &Entry, b: &Entry) -> Vec<&'static str> {
    [
        (a.kind != b.kind, "type"),
        (a.size != b.size && a.kind != xenvault_fsread::EntryKind::Dir, "size"),
        ((a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) && a.kind != xenvault_fsread::EntryKind::Dir, "mtime"),
        (a.mode != b.mode, "mode"),
        ((a.uid, a.gid) != (b.uid, b.gid), "owner"),
        (a.symlink_target != b.symlink_target, "target"),
    ]
    .into_iter()
    .filter_map(|(differs, what)| differs.then_some(what))
    .collect()
}

/// What changed from `old` to `new` (the same file system in two restore points).
pub async fn diff(old: &StoredFs, new: &StoredFs) -> Result<DiffReport> {
    let (before, after) = (walk(old).await?, walk(new).await?);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (path, b) in &after {
        match before.get(path) {
            None => {
                changes.push(FileChange { path: path.clone(), change: Change::Added, what: Vec::new(), size: b.size })
            }
            Some(a) => {
                let what = differences(a, b);
                if what.is_empty() {
                    unchanged += 1;
                } else {
                    changes.push(FileChange { path: path.clone(), change: Change::Modified, what, size: b.size });
                }
            }
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        changes.push(FileChange { path: path.clone(), change: Change::Removed, what: Vec::new(), size: 0 });
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let count = |c: Change| changes.iter().filter(|x| x.change == c).count();
    Ok(DiffReport {
        added: count(Change::Added),
        removed: count(Change::Removed),
        modified: count(Change::Modified),
        unchanged,
        changes,
    })
}
