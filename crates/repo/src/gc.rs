//! Garbage collection, safe while backups run.
//!
//! Two phases. Phase 1 *condemns* the packs no restore point references, in a generation
//! object `gc/<id>` stamped with its time. A backup writes its lock before it reads the
//! condemned lists and never deduplicates against a condemned pack, so a backup that
//! started after a generation cannot come to depend on its packs. Phase 2 deletes a
//! condemned pack only when it is still unreferenced and no live backup lock is older than
//! its generation (plus a clock-skew margin): backups that might have picked one of its
//! chunks before it was condemned have then either published (and the reference is seen)
//! or died. Without running backups both phases happen in one run.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::lock::{LockGuard, LockKind, live_locks};
use crate::pack::{DATA_PREFIX, INDEX_PREFIX, PackName};
use crate::repository::{CONDEMNED_PREFIX, DAMAGED_PREFIX, DamagedChunk, Repository};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// Clock skew tolerated between backup clients and the gc host.
const SKEW_SECONDS: i64 = 60;
const MAX_GENERATION_LEN: usize = 64 << 20;

/// One gc generation: packs found unreferenced at `time`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condemned {
    pub time: DateTime<Utc>,
    pub packs: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub packs_total: usize,
    pub packs_referenced: usize,
    pub packs_condemned: usize,
    pub packs_deleted: usize,
    /// Condemned packs waiting for backups that started before their generation.
    pub packs_waiting: usize,
    pub chunks_referenced: usize,
    pub backups_running: usize,
}

/// Collects the chunk ids every restore point references (pages and data chunks).
async fn referenced_chunks(repo: &Repository) -> Result<HashSet<ChunkId>> {
    let (good, bad) = repo.snapshots_checked().await?;
    if let Some((id, e)) = bad.into_iter().next() {
        return Err(Error::Invalid(format!(
            "restore point {id} is unreadable ({e}); gc would not know what it references: forget it first"
        )));
    }
    let mut refs = HashSet::new();
    for m in &good {
        for disk in &m.disks {
            for page in disk.pages.iter().filter(|p| !p.is_zero()) {
                if !refs.insert(*page) {
                    continue; // a shared page: its chunks are already in
                }
                match repo.read_chunk(page).await {
                    Ok(raw) => refs.extend(raw.chunks_exact(32).filter_map(ChunkId::from_slice)),
                    // A lost page references nothing that could still be read.
                    Err(e) if e.is_damage() => tracing::warn!("restore point {}: {e}", m.id),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    refs.remove(&ChunkId::ZERO);
    Ok(refs)
}

pub async fn gc(repo: &Repository) -> Result<GcReport> {
    let lock = LockGuard::acquire(repo, LockKind::Gc).await?;
    let result = run(repo, &lock).await;
    lock.release().await?;
    result
}

async fn run(repo: &Repository, own: &LockGuard) -> Result<GcReport> {
    let mut report = GcReport::default();
    let locks = live_locks(repo).await?;
    if locks.iter().any(|(_, l)| l.kind == LockKind::Gc && l.started < own.record.started) {
        return Err(Error::Locked("another gc is running".into()));
    }
    repo.refresh_index().await?;
    let referenced = referenced_chunks(repo).await?;
    report.chunks_referenced = referenced.len();
    let damaged = repo.load_damaged().await?;

    let data: HashSet<PackName> =
        repo.store().list(DATA_PREFIX).await?.iter().filter_map(|(n, _)| PackName::from_object(n)).collect();
    let indexed: HashSet<PackName> =
        repo.store().list(INDEX_PREFIX).await?.iter().filter_map(|(n, _)| PackName::from_object(n)).collect();
    let mut unused = BTreeSet::new();
    for pack in data.union(&indexed) {
        let used = match repo.pack_entries(pack).await {
            // A chunk stored twice keeps only the copy the index chose (live packs first).
            Ok(entries) => entries.iter().any(|e| {
                referenced.contains(&e.id)
                    && !damaged.contains(&DamagedChunk { id: e.id, pack: pack.0.clone() })
                    && repo.locate(&e.id).is_some_and(|l| l.pack == *pack)
            }),
            // No readable index: nothing can reference this pack's chunks.
            Err(e) if e.is_damage() => false,
            Err(e) => return Err(e),
        };
        if used {
            report.packs_referenced += 1;
        } else {
            unused.insert(pack.clone());
        }
    }
    report.packs_total = data.union(&indexed).count();

    // Phase 1: a new generation for unused packs not condemned yet.
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
        let g = Condemned { time: Utc::now(), packs: fresh };
        let name = format!("{CONDEMNED_PREFIX}{}", crate::crypto::random_hex(8)?);
        repo.put_json(&name, &g, true).await?;
        generations.push((name, g));
    }

    // Phase 2: locks are listed after every generation is written.
    let backups: Vec<DateTime<Utc>> =
        live_locks(repo).await?.into_iter().filter(|(_, l)| l.kind == LockKind::Backup).map(|(_, l)| l.started).collect();
    report.backups_running = backups.len();
    let mut deleted = HashSet::new();
    for (name, g) in generations {
        let cutoff = g.time + Duration::seconds(SKEW_SECONDS);
        let may_delete = backups.iter().all(|started| *started > cutoff);
        let mut keep = Vec::new();
        for p in g.packs {
            let pack = PackName(p);
            if !unused.contains(&pack) {
                continue; // referenced again (by a backup that was running): forget the sentence
            }
            if may_delete {
                // The index goes first: nobody may find a chunk in a pack that is going away.
                repo.delete(&pack.index_object()).await?;
                repo.store().delete(&pack.data_object()).await?;
                report.packs_deleted += 1;
                deleted.insert(pack.0);
            } else {
                report.packs_waiting += 1;
                keep.push(pack.0);
            }
        }
        if keep.is_empty() {
            repo.store().delete(&name).await?;
        } else {
            repo.put_json(&name, &Condemned { time: g.time, packs: keep }, true).await?;
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
