//! Torture tests of the repository: backups ∥ forget+prune ∥ copy ∥ verify on one
//! repository with a model of which restore points must exist, and (through the
//! `xenvault` binary, see `bench/torture/crash-loop.sh`) kill -9 at random points.
//!
//! Short forms run in CI; the long forms are `bench/torture/*.sh` (rounds and iterations
//! come from the environment). Each prints its figures on stderr.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use xenvault_repo::BackendOptions;
use xenvault_repo::keys::Secret;
use xenvault_repo::{DiskReader, Error, Repository, SourceInfo};

use common::CHUNK;
const IMAGE_CHUNKS: usize = 24;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn secret() -> Secret {
    Secret::passphrase("torture")
}

async fn new_repo(location: &str, backend: &BackendOptions) -> Repository {
    let opts = common::small_repo_options(secret());
    Repository::init(location, backend, opts).await.expect("init")
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }
}

fn seed() -> u64 {
    let seed = std::env::var("TORTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("torture seed {seed} (TORTURE_SEED={seed} repeats the choices)");
    seed | 1
}

/// What must be in a repository: every committed restore point not forgotten.
#[derive(Default)]
struct Model {
    /// id → (source, BLAKE3 of the image)
    committed: Mutex<BTreeMap<String, (String, blake3::Hash)>>,
    forgotten: Mutex<HashSet<String>>,
}

impl Model {
    fn commit(&self, id: &str, source: &str, digest: blake3::Hash) {
        self.committed.lock().unwrap().insert(id.to_string(), (source.to_string(), digest));
    }

    fn forget(&self, id: &str) {
        self.forgotten.lock().unwrap().insert(id.to_string());
    }

    fn is_forgotten(&self, id: &str) -> bool {
        self.forgotten.lock().unwrap().contains(id)
    }

    /// Committed points not forgotten (they must restore exactly).
    fn expected(&self) -> Vec<(String, blake3::Hash)> {
        let forgotten = self.forgotten.lock().unwrap();
        let committed = self.committed.lock().unwrap();
        committed.iter().filter(|(id, _)| !forgotten.contains(*id)).map(|(id, (_, d))| (id.clone(), *d)).collect()
    }

    fn committed_count(&self) -> usize {
        self.committed.lock().unwrap().len()
    }
}

async fn backup(repo: &Repository, source: &str, image: &[u8]) -> xenvault_repo::Result<String> {
    let info = SourceInfo { id: source.into(), kind: "image".into(), name: source.into() };
    let session = repo.start_backup(info).await?;
    let mut w = session.disk_writer(0, "disk0", "", image.len() as u64, None).await?;
    w.write(0, image).await?;
    w.finish().await?;
    Ok(session.commit(serde_json::Value::Null, vec![]).await?.id)
}

async fn restore_digest(repo: &Repository, id: &str) -> xenvault_repo::Result<blake3::Hash> {
    let m = repo.restore_point(id).await?;
    let reader = DiskReader::new(repo, &m.disks[0]).await?;
    let mut buf = vec![0u8; reader.size() as usize];
    reader.read_at(0, &mut buf).await?;
    Ok(blake3::hash(&buf))
}

/// Forgets all but the newest `keep` points of each source (recording them in the model
/// first), then runs gc.
async fn forget_and_prune(repo: &Repository, model: &Model, keep: u32) -> xenvault_repo::Result<usize> {
    repo.refresh_index().await?;
    let all = repo.restore_points().await?;
    let policy = xenvault_repo::prune::KeepPolicy { last: keep, ..Default::default() };
    let plan = xenvault_repo::prune::plan(&all, &policy)?;
    for id in &plan.remove {
        model.forget(id);
        repo.delete_restore_point(id).await?;
    }
    match xenvault_repo::gc::gc(repo).await {
        Ok(r) => Ok(r.packs_deleted),
        Err(Error::Locked(_)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Every expected point restores byte-exactly; returns the ids that do not.
async fn lost_points(repo: &Repository, backend: &BackendOptions, model: &Model) -> Vec<String> {
    let fresh = Repository::open(repo.location(), backend, Some(&secret())).await.expect("reopen");
    fresh.refresh_index().await.expect("index");
    let mut lost = Vec::new();
    for (id, digest) in model.expected() {
        match restore_digest(&fresh, &id).await {
            Ok(d) if d == digest => {}
            Ok(_) => lost.push(format!("{id}: restores different bytes")),
            Err(e) => lost.push(format!("{id}: {e}")),
        }
    }
    lost
}

/// Backups of two sources ∥ a forget+prune loop ∥ copy into a second repository (with its
/// own prune loop) ∥ verify. Every other prune of the first repository waits for a moment
/// when neither source is backing up (as between scheduled jobs): gc deletes only then, a
/// live backup lock keeps condemned packs, and the run must delete some. Afterwards every
/// committed point that was not forgotten restores exactly in both repositories and verify
/// finds nothing.
async fn backups_prune_copy_verify(backend_name: &str, location_a: &str, location_b: &str, backend: &BackendOptions) {
    let rounds = env_number("TORTURE_ROUNDS", 15);
    let mut rng = Rng(seed());
    let (a, b) = (new_repo(location_a, backend).await, new_repo(location_b, backend).await);
    let (model_a, model_b) = (Model::default(), Model::default());
    let backups_done = AtomicBool::new(false);
    // Backups hold it shared; a prune that takes it alone runs in a gap between backups.
    let backup_gap = tokio::sync::RwLock::new(());
    let [prunes, packs_deleted, packs_deleted_in_gaps, copies, verifies, copy_failures, checks] =
        std::array::from_fn(|_| AtomicUsize::new(0));
    let seeds: Vec<u64> = (0..5).map(|_| rng.next() | 1).collect();

    // Every operation opens the repository anew, as a separate process would: nothing is
    // shared through one in-memory index.
    let open = |repo: &Repository| {
        let location = repo.location().to_string();
        async move { Repository::open(&location, backend, Some(&secret())).await.expect("open") }
    };
    let backup_loop = |source: &'static str, seed: u64| {
        let (a, model_a, open, backup_gap) = (&a, &model_a, &open, &backup_gap);
        async move {
            let mut rng = Rng(seed);
            let mut image = vec![0u8; IMAGE_CHUNKS * CHUNK];
            rng.fill(&mut image);
            for _ in 0..rounds {
                // A few changed chunks: the rest deduplicates against packs that prune may
                // be condemning right now.
                for _ in 0..3 {
                    let at = rng.below(IMAGE_CHUNKS as u64) as usize * CHUNK;
                    rng.fill(&mut image[at..at + CHUNK]);
                }
                let running = backup_gap.read().await;
                let id =
                    backup(&open(a).await, source, &image).await.unwrap_or_else(|e| panic!("backup of {source}: {e}"));
                drop(running);
                model_a.commit(&id, source, blake3::hash(&image));
                // Gaps between backups, as between scheduled jobs: moments without locks.
                tokio::time::sleep(std::time::Duration::from_millis(rng.below(60))).await;
            }
        }
    };
    let prune_a = async {
        let mut rng = Rng(seeds[2]);
        while !backups_done.load(Ordering::SeqCst) {
            let in_gap = prunes.load(Ordering::SeqCst) % 2 == 1;
            let gap = if in_gap { Some(backup_gap.write().await) } else { None };
            let deleted =
                forget_and_prune(&open(&a).await, &model_a, 2 + rng.below(5) as u32).await.expect("prune of a");
            drop(gap);
            packs_deleted.fetch_add(deleted, Ordering::SeqCst);
            if in_gap {
                packs_deleted_in_gaps.fetch_add(deleted, Ordering::SeqCst);
            }
            prunes.fetch_add(1, Ordering::SeqCst);
        }
    };
    let copy_and_prune_b = async {
        let mut rng = Rng(seeds[3]);
        while !backups_done.load(Ordering::SeqCst) {
            let candidates = model_a.expected();
            if let Some((id, digest)) = candidates.get(rng.below(candidates.len().max(1) as u64) as usize).cloned() {
                match xenvault_repo::copy::copy(
                    &open(&a).await,
                    &open(&b).await,
                    std::slice::from_ref(&id),
                    xenvault_types::progress::HiddenProgress::shared(),
                    &Default::default(),
                )
                .await
                {
                    Ok(r) => {
                        for copied in r.copied {
                            model_b.commit(&copied, "copy", digest);
                        }
                        copies.fetch_add(1, Ordering::SeqCst);
                    }
                    // The source point went away while it was being copied.
                    Err(_) if model_a.is_forgotten(&id) => {
                        copy_failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("copy of {id}, not forgotten: {e}"),
                }
            }
            forget_and_prune(&open(&b).await, &model_b, 3).await.expect("prune of b");
        }
    };
    let verify_a = async {
        while !backups_done.load(Ordering::SeqCst) {
            xenvault_repo::verify::verify(
                &open(&a).await,
                None,
                xenvault_types::progress::HiddenProgress::shared(),
                &Default::default(),
            )
            .await
            .expect("verify runs");
            verifies.fetch_add(1, Ordering::SeqCst);
        }
    };
    // Most points are forgotten before the end: check them while they must exist.
    let check_a = async {
        let mut rng = Rng(seeds[4]);
        let mut lost = Vec::new();
        while !backups_done.load(Ordering::SeqCst) {
            let candidates = model_a.expected();
            let Some((id, digest)) = candidates.get(rng.below(candidates.len().max(1) as u64) as usize).cloned() else {
                tokio::task::yield_now().await;
                continue;
            };
            let restored = restore_digest(&open(&a).await, &id).await;
            if !model_a.is_forgotten(&id) {
                match restored {
                    Ok(d) if d == digest => {}
                    Ok(_) => lost.push(format!("{id}: restores different bytes")),
                    Err(e) => lost.push(format!("{id}: {e}")),
                }
            }
            checks.fetch_add(1, Ordering::SeqCst);
        }
        lost
    };
    let backups = async {
        tokio::join!(backup_loop("vm-a", seeds[0]), backup_loop("vm-b", seeds[1]));
        backups_done.store(true, Ordering::SeqCst);
    };
    let ((), (), (), (), mut lost_a) = tokio::join!(backups, prune_a, copy_and_prune_b, verify_a, check_a);

    lost_a.extend(lost_points(&a, backend, &model_a).await);
    let lost_b = lost_points(&b, backend, &model_b).await;
    eprintln!(
        "torture concurrency ({backend_name}): {rounds} rounds x 2 sources; a: {} points committed, {} expected, {} lost; \
         b: {} copied, {} expected, {} lost; {} prunes ({} packs deleted, {} of them in gaps between backups), {} copies ({} of forgotten points failed), {} verifies, {} checks",
        model_a.committed_count(),
        model_a.expected().len(),
        lost_a.len(),
        model_b.committed_count(),
        model_b.expected().len(),
        lost_b.len(),
        prunes.load(Ordering::SeqCst),
        packs_deleted.load(Ordering::SeqCst),
        packs_deleted_in_gaps.load(Ordering::SeqCst),
        copies.load(Ordering::SeqCst),
        copy_failures.load(Ordering::SeqCst),
        verifies.load(Ordering::SeqCst),
        checks.load(Ordering::SeqCst),
    );
    assert!(lost_a.is_empty() && lost_b.is_empty(), "committed restore points lost: a {lost_a:?}, b {lost_b:?}");
    assert!(packs_deleted.load(Ordering::SeqCst) > 0, "gc deleted no pack while the backups ran");
    for repo in [&a, &b] {
        let fresh = Repository::open(repo.location(), backend, Some(&secret())).await.expect("reopen");
        let report = xenvault_repo::verify::verify(
            &fresh,
            None,
            xenvault_types::progress::HiddenProgress::shared(),
            &Default::default(),
        )
        .await
        .expect("verify");
        assert!(!report.found_damage(), "verify after the run: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_prune_copy_verify_lose_nothing_local() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    backups_prune_copy_verify("local", a.to_str().unwrap(), b.to_str().unwrap(), &BackendOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_prune_copy_verify_lose_nothing_s3() {
    let server = common::s3();
    backups_prune_copy_verify("s3", &server.url("torture-a"), &server.url("torture-b"), &server.options()).await;
}
