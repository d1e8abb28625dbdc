//! Garbage collection, safe while backups and copies run (docs/reliability.md has the
//! argument in full).
//!
//! A pass first *marks*: packs no restore point references are *condemned* in a
//! generation object `gc/<id>`, stamped with a time at which it was already durable.
//! Backups write their lock, then read the condemned lists, and never deduplicate against
//! a condemned pack; so a backup that started after a generation's stamp (plus a clock-skew
//! margin) cannot come to depend on its packs.
//!
//! Then it *sweeps*, in this order: (a) list the live locks; (b) only then read the
//! restore points again; (c) delete a condemned pack only if no live backup lock in (a)
//! started before its generation's stamp plus the margin, and no restore point in (b)
//! references it. A backup commits its manifest before it removes its lock, so any backup
//! missing from (a) that could have used the pack is visible in (b). A referenced pack is
//! taken out of its generation again.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::lock::{LockGuard, LockKind, live_locks, remove_stale_locks};
use crate::pack::{DATA_PREFIX, INDEX_PREFIX, PackName};
use crate::repository::{CONDEMNED_PREFIX, DAMAGED_PREFIX, DamagedChunk, Repository};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Clock skew tolerated between backup clients and the gc host.
const SKEW_SECONDS: i64 = 60;
const MAX_GENERATION_LEN: usize = 64 << 20;
/// Temporary files of interrupted writes older than this are garbage (a live write of
/// one pack takes seconds).
const TEMP_FILE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// One gc generation: packs found unreferenced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condemned {
    /// A moment at which this generation was durable; `None` until then (a generation
    /// without a time is stamped by the next pass, which sees it stored).
    pub time: Option<DateTime<Utc>>,
    pub packs: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub packs_total: usize,
    pub packs_referenced: usize,
    pub packs_condemned: usize,
    pub packs_deleted: usize,
    /// Stored bytes (pack data and index) the deleted packs took.
    pub bytes_deleted: u64,
    /// Condemned packs waiting for backups that started before their generation.
    pub packs_waiting: usize,
    /// Stored bytes the waiting packs take.
    pub bytes_waiting: u64,
    /// Condemned packs a restore point committed meanwhile references: kept.
    pub packs_rescued: usize,
    pub chunks_referenced: usize,
    pub backups_running: usize,
    /// Lock objects of dead or stuck runs removed.
    pub stale_locks_removed: usize,
    /// Temporary files of interrupted writes removed.
    pub temp_files_removed: usize,
}

/// The chunk ids restore points reference (pages and data chunks).
#[derive(Default)]
struct References {
    manifests: HashSet<String>,
    chunks: HashSet<ChunkId>,
}

impl References {
    /// Adds what the restore points stored now reference (those already seen are
    /// immutable: only new ones are read). Restore points forgotten since stay in: a
    /// superset only keeps more. Refreshes the index after listing them: a manifest is
    /// stored after its packs, so every page it lists is then findable, and a page that
    /// is not is really lost (not merely newer than the index).
    async fn update(&mut self, repo: &Repository) -> Result<()> {
        let (good, bad) = repo.restore_points_checked().await?;
        repo.refresh_index().await?;
        if let Some((id, e)) = bad.into_iter().next() {
            return Err(Error::Invalid(format!(
                "restore point {id} is unreadable ({e}); gc would not know what it references: forget it first"
            )));
        }
        for m in good {
            if !self.manifests.insert(m.id.clone()) {
                continue;
            }
            for disk in &m.disks {
                for page in disk.pages.iter().filter(|p| !p.is_zero()) {
                    if !self.chunks.insert(*page) {
                        continue; // a shared page: its chunks are already in
                    }
                    match repo.read_chunk(page).await {
                        Ok(raw) => self.chunks.extend(raw.chunks_exact(32).filter_map(ChunkId::from_slice)),
                        // A lost page references nothing that could still be read.
                        Err(e) if e.is_damage() => tracing::warn!("restore point {}: {e}", m.id),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.chunks.remove(&ChunkId::ZERO);
        Ok(())
    }

    /// True when the index's copy of a referenced chunk is in `pack` (a chunk stored
    /// twice needs only the copy the index chose, live packs first).
    async fn use_pack(&self, repo: &Repository, pack: &PackName, damaged: &HashSet<DamagedChunk>) -> Result<bool> {
        match repo.pack_entries(pack).await {
            Ok(entries) => Ok(entries.iter().any(|e| {
                self.chunks.contains(&e.id)
                    && !damaged.contains(&DamagedChunk { id: e.id, pack: pack.0.clone() })
                    && repo.locate(&e.id).is_some_and(|l| l.pack == *pack)
            })),
            // No readable index: nothing can reference this pack's chunks.
            Err(e) if e.is_damage() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

pub async fn gc(repo: &Repository) -> Result<GcReport> {
    let lock = LockGuard::acquire(repo, LockKind::Gc).await?;
    let result = run(repo, &lock).await;
    lock.release().await?;
    result
}

async fn run(repo: &Repository, own: &LockGuard) -> Result<GcReport> {
    let mut report = GcReport::default();
    // One gc at a time: the earliest lock (ties broken by name) goes on.
    let first_gc = live_locks(repo)
        .await?
        .into_iter()
        .filter(|(_, l)| l.kind == LockKind::Gc)
        .map(|(name, l)| (l.started, name))
        .min();
    if first_gc.is_some_and(|(_, name)| name != own.name()) {
        return Err(Error::Locked("another gc is running".into()));
    }
    report.stale_locks_removed = remove_stale_locks(repo).await?;
    report.temp_files_removed = repo.store().remove_temp_files(TEMP_FILE_AGE).await?;

    // Mark.
    let mut refs = References::default();
    refs.update(repo).await?;
    let damaged = repo.load_damaged().await?;
    let data_objects = repo.store().list(DATA_PREFIX).await?;
    let index_objects = repo.store().list(INDEX_PREFIX).await?;
    let data: HashSet<PackName> = data_objects.iter().filter_map(|(n, _)| PackName::from_object(n)).collect();
    let indexed: HashSet<PackName> = index_objects.iter().filter_map(|(n, _)| PackName::from_object(n)).collect();
    // Stored bytes per pack, data and index together (a pack listed after this takes 0).
    let mut pack_bytes: HashMap<String, u64> = HashMap::new();
    for (name, size) in data_objects.iter().chain(&index_objects) {
        if let Some(pack) = PackName::from_object(name) {
            *pack_bytes.entry(pack.0).or_default() += size;
        }
    }
    let mut unused = BTreeSet::new();
    for pack in data.union(&indexed) {
        if refs.use_pack(repo, pack, &damaged).await? {
            report.packs_referenced += 1;
        } else {
            unused.insert(pack.clone());
        }
    }
    report.packs_total = data.union(&indexed).count();

    let mut generations = Vec::new();
    for (name, _) in repo.store().list(CONDEMNED_PREFIX).await? {
        if let Some(g) = repo.get_json::<Condemned>(&name, MAX_GENERATION_LEN).await? {
            generations.push((name, g));
        }
    }
    let already: HashSet<String> = generations.iter().flat_map(|(_, g)| g.packs.iter().cloned()).collect();
    let fresh: Vec<String> = unused.iter().filter(|p| !already.contains(&p.0)).map(|p| p.0.clone()).collect();
    if !fresh.is_empty() {
        report.packs_condemned = fresh.len();
        let name = format!("{CONDEMNED_PREFIX}{}", crate::crypto::random_hex(8)?);
        let g = Condemned { time: None, packs: fresh };
        repo.put_json(&name, &g, true).await?;
        generations.push((name, g));
    }
    let mut stamped = Vec::new();
    for (name, mut g) in generations {
        let time = match g.time {
            Some(t) => t,
            None => {
                // Stored (written above or found in the listing): now is a time it was durable.
                let now = Utc::now();
                g.time = Some(now);
                repo.put_json(&name, &g, true).await?;
                now
            }
        };
        stamped.push((name, time, g.packs));
    }

    // Sweep: (a) locks, then (b) restore points, then (c) delete.
    let backups: Vec<DateTime<Utc>> = live_locks(repo)
        .await?
        .into_iter()
        .filter(|(_, l)| l.kind == LockKind::Backup)
        .map(|(_, l)| l.started)
        .collect();
    report.backups_running = backups.len();
    refs.update(repo).await?;
    report.chunks_referenced = refs.chunks.len();
    let damaged = repo.load_damaged().await?;
    let mut deleted = HashSet::new();
    for (name, time, packs) in stamped {
        let may_delete = backups.iter().all(|started| *started > time + Duration::seconds(SKEW_SECONDS));
        let mut keep = Vec::new();
        for p in &packs {
            let pack = PackName(p.clone());
            if refs.use_pack(repo, &pack, &damaged).await? {
                report.packs_rescued += 1;
            } else if may_delete {
                // The index goes first: nobody may find a chunk in a pack that is going away.
                repo.delete(&pack.index_object()).await?;
                repo.store().delete(&pack.data_object()).await?;
                report.packs_deleted += 1;
                report.bytes_deleted += pack_bytes.get(&pack.0).copied().unwrap_or(0);
                deleted.insert(pack.0);
            } else {
                report.packs_waiting += 1;
                report.bytes_waiting += pack_bytes.get(&pack.0).copied().unwrap_or(0);
                keep.push(pack.0);
            }
        }
        if keep.is_empty() {
            repo.store().delete(&name).await?;
        } else if keep.len() != packs.len() {
            repo.put_json(&name, &Condemned { time: Some(time), packs: keep }, true).await?;
        }
    }
    forget_damage_records(repo, &deleted).await?;
    Ok(report)
}

/// Drops `damaged/` records of packs that no longer exist.
async fn forget_damage_records(repo: &Repository, deleted: &HashSet<String>) -> Result<()> {
    if deleted.is_empty() {
        return Ok(());
    }
    for (name, _) in repo.store().list(DAMAGED_PREFIX).await? {
        let Some(list) = repo.get_json::<Vec<DamagedChunk>>(&name, MAX_GENERATION_LEN).await? else { continue };
        let left: Vec<DamagedChunk> = list.iter().filter(|d| !deleted.contains(&d.pack)).cloned().collect();
        if left.is_empty() {
            repo.store().delete(&name).await?;
        } else if left.len() != list.len() {
            repo.put_json(&name, &left, true).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::new_repo;

    /// Temporary files of interrupted writes go once old; a fresh one (maybe a write in
    /// progress) stays.
    #[tokio::test]
    async fn gc_removes_old_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = new_repo(&root, 64 << 10).await;
        let temp = root.join(".tmp");
        std::fs::create_dir_all(&temp).unwrap();
        let old = std::fs::File::create(temp.join("old")).unwrap();
        old.set_modified(std::time::SystemTime::now() - 2 * super::TEMP_FILE_AGE).unwrap();
        std::fs::write(temp.join("fresh"), b"x").unwrap();
        let report = super::gc(&repo).await.unwrap();
        assert_eq!(report.temp_files_removed, 1, "{report:?}");
        assert!(!temp.join("old").exists() && temp.join("fresh").exists());
    }
}
