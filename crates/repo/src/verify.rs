//! `verify`: reads packs back, authenticates, decrypts and re-hashes every chunk (or a
//! random share of packs), and names exactly the restore points that damage touches.
//! Bad chunks are recorded under `damaged/`, which takes them out of the index: the next
//! backup that meets the same data stores it again, healing every restore point using it.
//!
//! verify checks what is stored, never this host's cache: manifests and pack indexes are
//! read from the store (a cached copy that differs is dropped), so a warm cache cannot
//! hide damage. A damaged pack index is rebuilt from the copy at the pack's tail.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::pack::{DATA_PREFIX, INDEX_PREFIX, PackEntry, PackName, chunk_aad, open_index};
use crate::repository::{DAMAGED_PREFIX, DamagedChunk, Repository, Source};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_types::progress::{Key, Phase, Progress, Task};

/// Whole packs checked at once (each is held in memory while checked).
const PACKS_IN_FLIGHT: usize = 2;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub packs_total: usize,
    pub packs_checked: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Bad chunks found in this run and not known before.
    pub bad_chunks: Vec<BadChunk>,
    /// Pack index objects that were unreadable (rebuilt from their pack when it could be).
    pub damaged_indexes: Vec<DamagedIndex>,
    /// Damaged copies of the config or of key slots (rewritten from their intact copy).
    pub damaged_key_objects: Vec<String>,
    /// Bad copies already recorded whose chunk has a good copy or is no longer used.
    pub superseded: usize,
    /// Restore point id → what is wrong with it.
    pub damaged_restore_points: BTreeMap<String, Vec<String>>,
    pub restore_points_checked: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BadChunk {
    pub id: ChunkId,
    pub pack: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedIndex {
    pub pack: String,
    pub reason: String,
    /// True when the index was rebuilt from the pack's own copy (nothing lost).
    pub rebuilt: bool,
}

impl VerifyReport {
    pub fn found_damage(&self) -> bool {
        !self.bad_chunks.is_empty()
            || !self.damaged_indexes.is_empty()
            || !self.damaged_key_objects.is_empty()
            || !self.damaged_restore_points.is_empty()
    }
}

/// Rejects a sample share outside (0, 100] (and NaN): it would check nothing meaningful.
pub fn check_sample_percent(percent: f64) -> Result<()> {
    if percent > 0.0 && percent <= 100.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!("sample share must be a percentage in (0, 100], not {percent}")))
    }
}

/// Checks the repository; `sample_percent` limits the pack check to a random share.
/// Progress counts the bytes of the packs checked.
pub async fn verify(
    repo: &Repository,
    sample_percent: Option<f64>,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<VerifyReport> {
    if let Some(pct) = sample_percent {
        check_sample_percent(pct)?;
    }
    // What the stored indexes say, not what this host cached.
    repo.load_index(Source::Store).await?;
    let mut report = VerifyReport { damaged_key_objects: repo.repair_key_objects().await?, ..Default::default() };
    let known_damaged = repo.load_damaged().await?;
    let packs: Vec<PackName> =
        repo.store().list(INDEX_PREFIX).await?.iter().filter_map(|(n, _)| PackName::from_object(n)).collect();
    let present = stored_pack_sizes(repo).await?;
    report.packs_total = packs.len();
    let chosen: Vec<PackName> = match sample_percent {
        Some(pct) => {
            let mut picked: Vec<PackName> = packs.iter().filter(|_| random_below(pct)).cloned().collect();
            if picked.is_empty() {
                picked.extend(packs.first().cloned());
            }
            picked
        }
        None => packs.clone(),
    };
    report.packs_checked = chosen.len();
    let total = chosen.iter().filter_map(|p| present.get(p)).sum();
    let task = Task::start(progress, Key::new(None, None, Phase::Verify), "verify", total);
    let results: Vec<Result<PackCheck>> = futures::stream::iter(chosen)
        .map(|pack| {
            let size = present.get(&pack).copied();
            let task = &task;
            async move {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let r = check_pack(repo, &pack, size.is_some()).await;
                task.advance(size.unwrap_or(0));
                r
            }
        })
        .buffer_unordered(PACKS_IN_FLIGHT)
        .collect()
        .await;
    let mut new_bad = Vec::new();
    for r in results {
        let PackCheck { chunks, bytes, bad, damaged_index } = r?;
        report.chunks_checked += chunks;
        report.bytes_checked += bytes;
        report.damaged_indexes.extend(damaged_index);
        for b in bad {
            let key = DamagedChunk { id: b.id, pack: b.pack.clone() };
            if known_damaged.contains(&key) {
                report.superseded += 1;
            } else {
                new_bad.push(b);
            }
        }
    }
    if !new_bad.is_empty() {
        let list: Vec<DamagedChunk> = new_bad.iter().map(|b| DamagedChunk { id: b.id, pack: b.pack.clone() }).collect();
        // Once recorded, the bad copies leave the index: what is left is what restore points can use.
        repo.put_json(&format!("{DAMAGED_PREFIX}{}", crate::crypto::random_hex(8)?), &list, true).await?;
    }
    report.bad_chunks = new_bad;
    // Picks up rebuilt pack indexes too.
    repo.refresh_index().await?;
    check_snapshots(repo, &mut report).await?;
    Ok(report)
}

fn random_below(percent: f64) -> bool {
    let mut b = [0u8; 4];
    if crate::crypto::fill_random(&mut b).is_err() {
        return true;
    }
    (u32::from_le_bytes(b) as f64 / u32::MAX as f64) * 100.0 < percent
}

/// What checking one pack found.
#[derive(Default)]
pub(crate) struct PackCheck {
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
    pub(crate) bad: Vec<BadChunk>,
    pub(crate) damaged_index: Option<DamagedIndex>,
}

pub(crate) async fn check_pack(repo: &Repository, pack: &PackName, present: bool) -> Result<PackCheck> {
    let crypto = repo.crypto().clone();
    let mut check = PackCheck::default();
    let entries: Vec<PackEntry> = match repo.pack_entries_from(pack, Source::Store).await {
        Ok(e) => e,
        // Listed but gone now: gc deleted this pack meanwhile (index first); rebuilding
        // the index would bring back an index without its pack.
        Err(e) if e.is_damage() && repo.store().get(&pack.index_object()).await?.is_none() => return Ok(check),
        Err(e) if e.is_damage() => {
            // The index object is unreadable: rebuild it from the copy at the pack's tail.
            let rebuilt = match present {
                true => match rebuild_index(repo, pack).await {
                    Ok(entries) => Some(entries),
                    Err(e) if e.is_damage() => None,
                    Err(e) => return Err(e),
                },
                false => None,
            };
            check.damaged_index =
                Some(DamagedIndex { pack: pack.0.clone(), reason: e.to_string(), rebuilt: rebuilt.is_some() });
            // Not rebuilt: its chunks stay out of the index, so the restore points using them are named.
            let Some(entries) = rebuilt else { return Ok(check) };
            entries
        }
        Err(e) => return Err(e),
    };
    check.chunks = entries.len() as u64;
    let bad_all = |reason: &str| -> Vec<BadChunk> {
        entries.iter().map(|e| BadChunk { id: e.id, pack: pack.0.clone(), reason: reason.to_string() }).collect()
    };
    let data = match present {
        true => repo.store().get(&pack.data_object()).await?,
        false => None,
    };
    let Some(data) = data else {
        return Ok(PackCheck { bad: bad_all("pack file missing"), ..check });
    };
    let max = repo.max_chunk_len();
    let pack_name = pack.0.clone();
    tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        let mut bytes = 0u64;
        for e in &entries {
            let range = e.offset as usize..(e.offset as usize).saturating_add(e.len as usize);
            let reason = match data.get(range) {
                None => Some("blob lies past the end of the pack".to_string()),
                Some(blob) => match crypto.open(&chunk_aad(&e.id), blob, max) {
                    Err(err) => Some(err.to_string()),
                    Ok(plain) if crypto.chunk_id(&plain) != e.id => Some("content does not match its id".into()),
                    Ok(plain) if plain.len() != e.raw_len as usize => Some("length does not match the index".into()),
                    Ok(plain) => {
                        bytes += plain.len() as u64;
                        None
                    }
                },
            };
            if let Some(reason) = reason {
                bad.push(BadChunk { id: e.id, pack: pack_name.clone(), reason });
            }
        }
        Ok(PackCheck { bytes, bad, ..check })
    })
    .await?
}

/// Restores `index/<pack>` from the sealed copy at the end of the pack.
/// The data packs the store holds now, with their sizes.
pub(crate) async fn stored_pack_sizes(repo: &Repository) -> Result<HashMap<PackName, u64>> {
    let listed = repo.store().list(DATA_PREFIX).await?;
    Ok(listed.iter().filter_map(|(n, size)| Some((PackName::from_object(n)?, *size))).collect())
}

async fn rebuild_index(repo: &Repository, pack: &PackName) -> Result<Vec<PackEntry>> {
    let data =
        repo.store().get(&pack.data_object()).await?.ok_or_else(|| Error::corrupt(pack.data_object(), "missing"))?;
    let sealed = crate::pack::index_from_pack_tail(pack, &data)?;
    let entries = open_index(repo.crypto(), pack, &sealed)?;
    repo.delete(&pack.index_object()).await?;
    repo.publish(&pack.index_object(), sealed).await?;
    tracing::warn!("rebuilt the damaged index of pack {} from the pack itself", pack.0);
    Ok(entries)
}

/// Walks every restore point: a page or chunk that no good copy backs damages it.
async fn check_snapshots(repo: &Repository, report: &mut VerifyReport) -> Result<()> {
    let (good, bad) = repo.restore_points_from(Source::Store).await?;
    for (id, e) in bad {
        report.damaged_restore_points.entry(id).or_default().push(format!("manifest unreadable: {e}"));
    }
    // Verdict per page id, shared between restore points.
    let mut pages: HashMap<ChunkId, Vec<String>> = HashMap::new();
    for m in &good {
        report.restore_points_checked += 1;
        let mut problems = Vec::new();
        for disk in &m.disks {
            for (n, page) in disk.pages.iter().enumerate() {
                if page.is_zero() {
                    continue;
                }
                if !pages.contains_key(page) {
                    let verdict = check_page(repo, page).await?;
                    pages.insert(*page, verdict);
                }
                for p in pages.get(page).into_iter().flatten() {
                    problems.push(format!("disk {} page {n}: {p}", disk.name));
                }
            }
        }
        if !problems.is_empty() {
            report.damaged_restore_points.insert(m.id.clone(), problems);
        }
    }
    Ok(())
}

pub(crate) async fn check_page(repo: &Repository, page: &ChunkId) -> Result<Vec<String>> {
    let raw = match repo.read_chunk(page).await {
        Ok(r) => r,
        Err(e) if e.is_damage() => return Ok(vec![format!("index page unreadable: {e}")]),
        Err(e) => return Err(e),
    };
    let mut missing = 0usize;
    let mut first = None;
    for id in raw.chunks_exact(32).filter_map(ChunkId::from_slice) {
        if !id.is_zero() && repo.locate(&id).is_none() {
            missing += 1;
            first.get_or_insert(id);
        }
    }
    Ok(match first {
        Some(id) => vec![format!("{missing} chunk(s) damaged or missing, first {id}")],
        None => Vec::new(),
    })
}
