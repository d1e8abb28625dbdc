//! `mirror`: keeps a second repository supplied with restore points of this one (all, or
//! the newest per VM; by VM and job), through `copy`'s chunk path: only chunks the target
//! lacks are stored, matched by id when both repositories derive ids with the same key and
//! by content (decrypted, re-hashed with the target's key) otherwise. The target keeps its
//! own key and its own retention; mirrored points can be locked there and are verified
//! from what the target stores.
//!
//! Resuming: restore points the target has are skipped; a cancelled mirror stores the
//! chunks it packed before it stops, and a rerun finds them in the target's index (until a
//! gc of the target condemns them: docs/reliability.md, "Copy and mirror").

use crate::backend::RetentionMode;
use crate::copy::{CopyReport, copy_point};
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::forget::{Forget, ForgetOptions, ForgetReport};
use crate::manifest::Manifest;
use crate::pack::PackName;
use crate::prune::KeepPolicy;
use crate::reader::DiskReader;
use crate::repository::{Repository, Source};
use crate::retention::LockReport;
use crate::select::{self, SelectError};
use crate::verify::{BadChunk, DamagedIndex, check_pack, check_page, stored_pack_sizes};
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_types::progress::{Key, Phase, Progress, Task};

/// Whole packs verified at once (each is held in memory while checked).
const PACKS_IN_FLIGHT: usize = 2;

/// Which restore points to mirror and what to do on the target afterwards.
#[derive(Debug, Clone, Default)]
pub struct MirrorOptions {
    /// VMs (uuid, any case, or name as stored); empty: every VM.
    pub vms: Vec<String>,
    /// Only restore points of this backup job.
    pub job: Option<String>,
    /// Only the newest restore point of each VM (among those the filters keep).
    pub latest: bool,
    /// The target's retention, applied to the selected VMs' restore points on the target.
    pub retention: Option<KeepPolicy>,
    /// Object-lock the mirrored restore points on the target.
    pub lock: Option<MirrorLock>,
    /// Verify the mirrored restore points on the target afterwards.
    pub verify: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct MirrorLock {
    pub days: u32,
    pub mode: RetentionMode,
}

#[derive(Debug, Default, Serialize)]
pub struct MirrorReport {
    /// Restore points the filters selected, oldest first.
    pub selected: Vec<String>,
    /// Sent to the target in this run.
    pub copied: Vec<String>,
    /// Already on the target (an earlier mirror or copy).
    pub skipped: Vec<String>,
    /// Selected, but the target's retention would remove them at once: not sent.
    pub not_kept: Vec<String>,
    /// True when missing chunks were found by id (both repositories derive chunk ids with
    /// the same key); false when every chunk was read and re-hashed with the target's key.
    pub chunk_ids_shared: bool,
    /// Chunks read from the source (by content: all of the copied points' data chunks).
    pub chunks_read: u64,
    /// Data chunks the target lacked and stored, their bytes before and after sealing.
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub bytes_stored: u64,
    pub forget: Option<ForgetReport>,
    pub lock: Option<LockReport>,
    pub verify: Option<MirrorVerify>,
}

impl MirrorReport {
    /// Whether the verify pass found the mirrored restore points damaged on the target.
    pub fn found_damage(&self) -> bool {
        self.verify.as_ref().is_some_and(MirrorVerify::found_damage)
    }
}

/// What the verify pass over the mirrored restore points found on the target: their
/// packs read back, authenticated, decrypted and re-hashed; their pages walked.
#[derive(Debug, Default, Serialize)]
pub struct MirrorVerify {
    pub restore_points_checked: usize,
    pub packs_checked: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub bad_chunks: Vec<BadChunk>,
    pub damaged_indexes: Vec<DamagedIndex>,
    /// Restore point id → what is wrong with it.
    pub damaged_restore_points: BTreeMap<String, Vec<String>>,
}

impl MirrorVerify {
    pub fn found_damage(&self) -> bool {
        !self.bad_chunks.is_empty() || !self.damaged_indexes.is_empty() || !self.damaged_restore_points.is_empty()
    }
}

fn repo_error(e: SelectError) -> Error {
    match e {
        SelectError::Repo(e) => e,
        other => Error::Invalid(other.to_string()),
    }
}

/// The restore points of `points` that `options` select, oldest first.
pub fn select(points: Vec<Manifest>, options: &MirrorOptions) -> Vec<Manifest> {
    let of_vms: Vec<Manifest> = points
        .into_iter()
        .filter(|m| options.vms.is_empty() || options.vms.iter().any(|vm| select::is_of_source(m, vm)))
        .collect();
    let filter = select::Filter {
        job: options.job.clone(),
        latest_per_source: options.latest.then_some(1),
        ..Default::default()
    };
    filter.apply(of_vms)
}

/// Mirrors the restore points `options` select from `src` to `dst`, then applies the
/// target's retention, locks and verifies what was mirrored. Cancelled, it stops with
/// [`Error::Cancelled`]: restore points copied before stay, and so do the chunks of the one
/// it was copying.
pub async fn mirror(
    src: &Repository,
    dst: &Repository,
    options: &MirrorOptions,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<MirrorReport> {
    if let Some(lock) = options.lock {
        if lock.days == 0 {
            return Err(Error::Invalid("lock the mirrored restore points for at least 1 day".into()));
        }
        // Refused before anything moves, not after.
        dst.backend().require_object_lock().await?;
    }
    let selected = select(src.restore_points().await?, options);
    let on_target = dst.restore_points().await?;
    let present: HashSet<&str> = on_target.iter().map(|m| m.id.as_str()).collect();
    let kept = match &options.retention {
        Some(policy) => Some(kept_by_retention(&on_target, &selected, policy, &options.vms)?),
        None => None,
    };
    let mut report = MirrorReport {
        selected: selected.iter().map(|m| m.id.clone()).collect(),
        chunk_ids_shared: dst.shares_chunk_ids_with(src),
        ..Default::default()
    };
    let mut copied = CopyReport::default();
    for m in &selected {
        if present.contains(m.id.as_str()) {
            report.skipped.push(m.id.clone());
        } else if kept.as_ref().is_some_and(|kept| !kept.contains(&m.id)) {
            report.not_kept.push(m.id.clone());
        } else {
            copy_point(src, dst, m, &progress, cancel, &mut copied).await?;
            report.copied.push(m.id.clone());
        }
    }
    report.chunks_read = copied.chunks_read;
    report.chunks_sent = copied.chunks_new;
    report.bytes_sent = copied.bytes_new;
    report.bytes_stored = copied.bytes_stored;

    if let Some(policy) = &options.retention {
        report.forget = Some(apply_retention(dst, policy, &options.vms).await?);
    }
    let remaining: HashSet<String> = dst.restore_points().await?.into_iter().map(|m| m.id).collect();
    let mirrored: Vec<Manifest> = selected.into_iter().filter(|m| remaining.contains(&m.id)).collect();
    if let Some(lock) = options.lock
        && !mirrored.is_empty()
    {
        let ids: Vec<String> = mirrored.iter().map(|m| m.id.clone()).collect();
        let until = Utc::now() + chrono::Duration::days(i64::from(lock.days));
        report.lock = Some(crate::retention::lock_restore_points(dst, &ids, lock.mode, until).await?);
    }
    if options.verify {
        // The target's own manifests: with another key, their pages differ from the source's.
        let ids: HashSet<&str> = mirrored.iter().map(|m| m.id.as_str()).collect();
        let checked: Vec<Manifest> =
            dst.restore_points().await?.into_iter().filter(|m| ids.contains(m.id.as_str())).collect();
        report.verify = Some(verify_points(dst, &checked, progress, cancel).await?);
    }
    Ok(report)
}

/// The ids among the target's restore points and the selected ones that the target's
/// retention keeps, so that a point it would remove right away is not sent at all.
fn kept_by_retention(
    on_target: &[Manifest],
    selected: &[Manifest],
    policy: &KeepPolicy,
    vms: &[String],
) -> Result<HashSet<String>> {
    let in_scope = |m: &&Manifest| vms.is_empty() || vms.iter().any(|vm| select::is_of_source(m, vm));
    let mut all: Vec<Manifest> = on_target.iter().filter(in_scope).cloned().collect();
    let known: HashSet<String> = all.iter().map(|m| m.id.clone()).collect();
    all.extend(selected.iter().filter(|m| !known.contains(&m.id)).cloned());
    Ok(crate::prune::plan(&all, policy)?.keep.into_iter().collect())
}

/// `forget` with `policy` on the target (per selected VM, or over every VM), then one gc.
async fn apply_retention(dst: &Repository, policy: &KeepPolicy, vms: &[String]) -> Result<ForgetReport> {
    let scopes: Vec<Option<String>> = match vms {
        [] => vec![None],
        vms => vms.iter().cloned().map(Some).collect(),
    };
    let mut merged = ForgetReport {
        keep: Vec::new(),
        remove: Vec::new(),
        reasons: BTreeMap::new(),
        entries: Vec::new(),
        dry_run: false,
        prune: None,
    };
    for source in scopes {
        let options =
            ForgetOptions { forget: Forget::Policy { policy: *policy, source }, dry_run: false, prune: false };
        let report = crate::forget::forget(dst, &options).await.map_err(repo_error)?;
        merged.keep.extend(report.keep);
        merged.remove.extend(report.remove);
        merged.reasons.extend(report.reasons);
        merged.entries.extend(report.entries);
    }
    merged.prune = Some(crate::gc::gc(dst).await?);
    Ok(merged)
}

/// Checks what the target stores for `points`: every page walked (a chunk the index
/// cannot find damages the point), every pack they use read back and re-hashed.
async fn verify_points(
    dst: &Repository,
    points: &[Manifest],
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<MirrorVerify> {
    // What the stored indexes say, not what this host cached.
    dst.load_index(Source::Store).await?;
    let mut verify = MirrorVerify { restore_points_checked: points.len(), ..Default::default() };
    let mut verdicts: HashMap<ChunkId, Vec<String>> = HashMap::new();
    let mut chunks: BTreeSet<ChunkId> = BTreeSet::new();
    for m in points {
        let mut problems = Vec::new();
        for disk in &m.disks {
            let reader = DiskReader::new(dst, disk).await?;
            for (n, page) in disk.pages.iter().enumerate().filter(|(_, p)| !p.is_zero()) {
                if !verdicts.contains_key(page) {
                    let verdict = check_page(dst, page).await?;
                    if verdict.is_empty() {
                        chunks.insert(*page);
                        chunks.extend(reader.page(n as u64).await?.iter().filter(|id| !id.is_zero()));
                    }
                    verdicts.insert(*page, verdict);
                }
                for p in verdicts.get(page).into_iter().flatten() {
                    problems.push(format!("disk {} page {n}: {p}", disk.name));
                }
            }
        }
        if !problems.is_empty() {
            verify.damaged_restore_points.insert(m.id.clone(), problems);
        }
    }
    let packs: BTreeSet<PackName> = chunks.iter().filter_map(|id| dst.locate(id)).map(|l| l.pack).collect();
    let sizes = stored_pack_sizes(dst).await?;
    verify.packs_checked = packs.len();
    let total = packs.iter().filter_map(|p| sizes.get(p)).sum();
    let task = Task::start(progress, Key::new(None, None, Phase::Verify), "verify the mirror", total);
    let checks: Vec<Result<crate::verify::PackCheck>> = futures::stream::iter(packs)
        .map(|pack| {
            let (task, sizes) = (&task, &sizes);
            async move {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let check = check_pack(dst, &pack, sizes.contains_key(&pack)).await;
                task.advance(sizes.get(&pack).copied().unwrap_or(0));
                check
            }
        })
        .buffer_unordered(PACKS_IN_FLIGHT)
        .collect()
        .await;
    for check in checks {
        let check = check?;
        verify.chunks_checked += check.chunks;
        verify.bytes_checked += check.bytes;
        verify.bad_chunks.extend(check.bad);
        verify.damaged_indexes.extend(check.damaged_index);
    }
    Ok(verify)
}
