//! `mirror` between real repositories: local directories and SeaweedFS (S3), with shared
//! chunk ids and with a target of its own key. Ten restore points of three VMs, whose disks
//! share some chunks (all VMs, one VM) and hold some of their own.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::CHUNK;
use tokio_util::sync::CancellationToken;
use xenvault_repo::backend::{BackendOptions, RetentionMode};
use xenvault_repo::mirror::{MirrorLock, MirrorOptions, MirrorReport, mirror};
use xenvault_repo::prune::KeepPolicy;
use xenvault_repo::{DiskReader, Error, Repository, Secret, SourceInfo};
use xenvault_types::progress::{Event, HiddenProgress, Phase, Progress};

const SLOTS: usize = 12;

/// One restore point: VM (uuid, name), job and its disk.
struct Point {
    vm: &'static str,
    job: &'static str,
    image: Vec<u8>,
}

/// Chunks 0-3 shared by every VM, 4-7 by the VM's points, 8-10 the point's own, 11 zeros.
fn image(vm: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOTS * CHUNK);
    for slot in 0..SLOTS {
        let seed = match slot {
            0..4 => String::new(),
            4..8 => vm.to_string(),
            8..11 => format!("{vm}/{n}"),
            _ => {
                out.resize(out.len() + CHUNK, 0);
                continue;
            }
        };
        let mut block = Vec::with_capacity(CHUNK);
        let mut counter = 0u64;
        while block.len() < CHUNK {
            let input = [seed.as_bytes(), &(slot as u64).to_le_bytes(), &counter.to_le_bytes()].concat();
            block.extend_from_slice(blake3::hash(&input).as_bytes());
            counter += 1;
        }
        out.extend_from_slice(&block);
    }
    out
}

/// Ten restore points, oldest first: web 4 (nightly), db 3 (nightly), mail 3 (hourly).
fn points() -> Vec<Point> {
    let plan = [("web", "nightly", 4), ("db", "nightly", 3), ("mail", "hourly", 3)];
    let mut out = Vec::new();
    for (vm, job, count) in plan {
        for n in 0..count {
            out.push(Point { vm, job, image: image(vm, n) });
        }
    }
    out
}

/// Distinct non-zero chunks (by content) of `images`: what an empty target lacks.
fn distinct_chunks<'a>(images: impl IntoIterator<Item = &'a Vec<u8>>) -> HashSet<&'a [u8]> {
    images.into_iter().flat_map(|i| i.chunks(CHUNK)).filter(|c| c.iter().any(|&b| b != 0)).collect()
}

fn secret(name: &str) -> Secret {
    Secret::passphrase(format!("mirror test {name}"))
}

async fn init(location: &str, backend: &BackendOptions, name: &str, ids_from: Option<&Repository>) -> Repository {
    let mut options = common::small_repo_options(secret(name));
    options.chunk_ids_from = ids_from.cloned();
    Repository::init(location, backend, options).await.expect("init")
}

/// The source repository with [`points`]; returns it and the ids in the same order.
async fn source(dir: &std::path::Path) -> (Repository, Vec<String>, Vec<Point>) {
    let repo = init(dir.join("src").to_str().unwrap(), &BackendOptions::default(), "src", None).await;
    let points = points();
    let mut ids = Vec::new();
    for p in &points {
        let info = SourceInfo { id: format!("UUID-{}", p.vm), kind: "vm".into(), name: p.vm.into() };
        let session = repo.start_backup(info).await.expect("start");
        let mut w = session.disk_writer(0, "xvda", "", p.image.len() as u64, None).await.expect("writer");
        w.write(0, &p.image).await.expect("write");
        w.finish().await.expect("finish");
        let metadata = serde_json::json!({"backup": {"level": "full", "job_id": p.job}});
        ids.push(session.commit(metadata, vec![]).await.expect("commit").id);
    }
    (repo, ids, points)
}

async fn run(src: &Repository, dst: &Repository, options: &MirrorOptions) -> MirrorReport {
    mirror(src, dst, options, HiddenProgress::shared(), &CancellationToken::new()).await.expect("mirror")
}

fn verified() -> MirrorOptions {
    MirrorOptions { verify: true, ..Default::default() }
}

/// Every listed point restores byte-exactly from `dst`.
async fn assert_restores(dst: &Repository, ids: &[String], all: &[(String, &Point)]) {
    for id in ids {
        let point = all.iter().find(|(i, _)| i == id).map(|(_, p)| p).expect("known id");
        let m = dst.restore_point(id).await.expect("mirrored point");
        let reader = DiskReader::new(dst, &m.disks[0]).await.expect("reader");
        let mut buf = vec![0u8; reader.size() as usize];
        reader.read_at(0, &mut buf).await.expect("restore");
        assert!(buf == point.image, "{id} restores other bytes from the mirror");
    }
}

/// Data chunks stored in `dst`, every pack counted (referenced or not): verify reads them
/// all; minus one index page per committed point (each of these disks has one, all distinct).
async fn stored_data_chunks(dst: &Repository) -> u64 {
    let report = xenvault_repo::verify::verify(dst, None, HiddenProgress::shared(), &CancellationToken::new())
        .await
        .expect("verify");
    assert!(!report.found_damage(), "{report:?}");
    report.chunks_checked - report.restore_points_checked as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mirror_with_shared_ids_sends_only_missing_chunks_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (src, ids, points) = source(dir.path()).await;
    let all: Vec<(String, &Point)> = ids.iter().cloned().zip(points.iter()).collect();
    let dst = init(dir.path().join("dst").to_str().unwrap(), &BackendOptions::default(), "dst", Some(&src)).await;

    // The newest of web, by name.
    let web = MirrorOptions { vms: vec!["web".into()], latest: true, ..verified() };
    let r = run(&src, &dst, &web).await;
    assert!(r.chunk_ids_shared);
    assert_eq!((r.selected.clone(), r.copied.clone()), (vec![ids[3].clone()], vec![ids[3].clone()]));
    let sent: Vec<&Vec<u8>> = vec![&points[3].image];
    assert_eq!(r.chunks_sent as usize, distinct_chunks(sent.clone()).len());
    assert_eq!(r.chunks_read, r.chunks_sent, "by id, only missing chunks are read");
    assert_eq!(r.bytes_sent, r.chunks_sent * CHUNK as u64);

    // Job hourly (mail's three) and db by uuid in another case: web's shared chunks stay home.
    let r = run(&src, &dst, &MirrorOptions { job: Some("hourly".into()), ..verified() }).await;
    assert_eq!(r.copied, ids[7..10]);
    let r2 = run(&src, &dst, &MirrorOptions { vms: vec!["uuid-db".into()], latest: true, ..verified() }).await;
    assert_eq!(r2.copied, [ids[6].clone()]);
    let before: Vec<&Vec<u8>> = [3, 7, 8, 9, 6].iter().map(|&n| &points[n].image).collect();
    let after = distinct_chunks(points.iter().map(|p| &p.image));
    let missing = after.len() - distinct_chunks(before).len();

    // Everything: only what the target lacks moves; verified on the target.
    let r = run(&src, &dst, &verified()).await;
    assert_eq!(r.selected, ids);
    assert_eq!(r.skipped, [3, 6, 7, 8, 9].map(|n| ids[n].clone()));
    assert_eq!(r.chunks_sent as usize, missing, "{r:?}");
    let v = r.verify.as_ref().expect("verify ran");
    assert!(!v.found_damage() && v.restore_points_checked == 10 && v.chunks_checked > 0, "{v:?}");
    assert_restores(&dst, &ids, &all).await;

    let again = run(&src, &dst, &verified()).await;
    assert_eq!((again.copied.len(), again.skipped.len(), again.chunks_sent, again.chunks_read), (0, 10, 0, 0));
    assert_eq!(stored_data_chunks(&dst).await as usize, after.len(), "each chunk stored once");

    // A local directory has no object lock: refused before anything moves.
    let empty = init(dir.path().join("empty").to_str().unwrap(), &BackendOptions::default(), "e", None).await;
    let lock = MirrorOptions { lock: Some(MirrorLock { days: 1, mode: RetentionMode::Governance }), ..verified() };
    let refused = mirror(&src, &empty, &lock, HiddenProgress::shared(), &CancellationToken::new()).await;
    assert!(matches!(refused, Err(Error::Backend(_))), "{refused:?}");
    assert!(empty.restore_points().await.unwrap().is_empty());
}

/// Cancels the mirror once `after` bytes of disk were copied.
struct CancelAfter {
    copied: AtomicU64,
    after: u64,
    cancel: CancellationToken,
}

impl Progress for CancelAfter {
    fn event(&self, event: &Event) {
        if let Event::Progressed { key, .. } = event
            && key.phase == Phase::Copy
            && self.copied.fetch_add(CHUNK as u64, Ordering::Relaxed) + CHUNK as u64 >= self.after
        {
            self.cancel.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_mirror_resumes_without_sending_a_chunk_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (src, ids, points) = source(dir.path()).await;
    let all: Vec<(String, &Point)> = ids.iter().cloned().zip(points.iter()).collect();
    let missing = distinct_chunks(points.iter().map(|p| &p.image)).len() as u64;
    let dst = init(dir.path().join("dst").to_str().unwrap(), &BackendOptions::default(), "dst", None).await;

    // Cancelled in the middle of the fifth restore point's disk.
    let cancel = CancellationToken::new();
    let progress = Arc::new(CancelAfter {
        copied: AtomicU64::new(0),
        after: (4 * SLOTS + 8) as u64 * CHUNK as u64,
        cancel: cancel.clone(),
    });
    let cut = mirror(&src, &dst, &verified(), progress, &cancel).await;
    assert!(matches!(cut, Err(Error::Cancelled)), "{cut:?}");
    assert_eq!(dst.restore_points().await.unwrap().len(), 4, "four restore points committed before the cancel");
    let committed: Vec<&Vec<u8>> = points[..4].iter().map(|p| &p.image).collect();
    let at_cancel = stored_data_chunks(&dst).await;
    assert!(
        at_cancel > distinct_chunks(committed).len() as u64,
        "the fifth point's chunks packed before the cancel are stored: {at_cancel}"
    );

    let resumed = run(&src, &dst, &verified()).await;
    assert_eq!(resumed.skipped, ids[..4]);
    assert_eq!(resumed.copied, ids[4..]);
    assert!(!resumed.chunk_ids_shared && resumed.chunks_read >= resumed.chunks_sent);
    assert_eq!(at_cancel + resumed.chunks_sent, missing, "the resumed mirror sent only what had not arrived");
    assert_eq!(stored_data_chunks(&dst).await, missing, "the target's store received every chunk once");
    assert!(!resumed.found_damage(), "{:?}", resumed.verify);
    assert_restores(&dst, &ids, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_to_seaweedfs_with_its_own_key_and_retention() {
    let server = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (src, ids, points) = source(dir.path()).await;
    let all: Vec<(String, &Point)> = ids.iter().cloned().zip(points.iter()).collect();
    let dst = init(&server.url("mirror"), &server.options(), "s3 target", None).await;
    let missing = distinct_chunks(points.iter().map(|p| &p.image));

    let r = run(&src, &dst, &verified()).await;
    assert!(!r.chunk_ids_shared);
    assert_eq!(r.copied, ids);
    assert_eq!(r.chunks_sent as usize, missing.len(), "{r:?}");
    let missing_bytes: u64 = missing.iter().map(|c| c.len() as u64).sum();
    assert_eq!(r.bytes_sent, missing_bytes);
    let data_objects: u64 = dst.backend().list("data/").await.expect("list packs").iter().map(|o| o.size).sum();
    println!(
        "mirror figure: 10 restore points to SeaweedFS, another key: {} chunks read from the source, {} sent \
         = the target's {} missing chunks; {} bytes sent = {} missing bytes; {} bytes sealed in chunks, \
         {} bytes of packs stored (with index pages and pack indexes)",
        r.chunks_read,
        r.chunks_sent,
        missing.len(),
        r.bytes_sent,
        missing_bytes,
        r.bytes_stored,
        data_objects
    );
    assert!(!r.found_damage() && r.verify.as_ref().is_some_and(|v| v.restore_points_checked == 10));
    assert_restores(&dst, &ids, &all).await;
    let again = run(&src, &dst, &verified()).await;
    assert_eq!((again.chunks_sent, again.copied.len()), (0, 0));

    // The target's own retention: keep 2 per VM there.
    let keep = MirrorOptions { retention: Some(KeepPolicy { last: 2, ..Default::default() }), ..verified() };
    let r = run(&src, &dst, &keep).await;
    let forget = r.forget.as_ref().expect("retention applied");
    let gone = [0, 1, 4, 7].map(|n| ids[n].clone());
    assert_eq!(forget.remove.iter().collect::<HashSet<_>>(), gone.iter().collect::<HashSet<_>>());
    assert!(forget.prune.as_ref().is_some_and(|gc| gc.packs_total > 0));
    let left: HashSet<String> = dst.restore_points().await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(left.len(), 6);
    assert_eq!(r.verify.as_ref().map(|v| v.restore_points_checked), Some(6));
    // Mirrored again with the same retention: what the target would drop at once is not sent.
    let r = run(&src, &dst, &keep).await;
    assert_eq!((r.copied.len(), r.not_kept.len(), r.chunks_read), (0, 4, 0));
    let left_ids: Vec<String> = left.into_iter().collect();
    assert_restores(&dst, &left_ids, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_locks_the_mirrored_points_on_an_object_lock_bucket() {
    let server = common::s3();
    let options = server.options();
    let bucket = common::object_lock::object_lock_bucket(options.s3_endpoint.as_deref().expect("endpoint"));
    let dir = tempfile::tempdir().unwrap();
    let (src, ids, _) = source(dir.path()).await;
    let dst = init(&format!("s3://{bucket}/mirror"), &options, "locked", None).await;
    let lock = MirrorOptions {
        latest: true,
        lock: Some(MirrorLock { days: 1, mode: RetentionMode::Governance }),
        ..Default::default()
    };
    let r = run(&src, &dst, &lock).await;
    let latest = [3, 6, 9].map(|n| ids[n].clone());
    assert_eq!(r.copied, latest);
    let locked = r.lock.as_ref().expect("locked");
    assert_eq!(locked.restore_points, latest);
    assert!(locked.packs > 0);
    let manifest = xenvault_repo::Manifest::object_name(&ids[9]);
    let retention = dst.backend().retention(&manifest).await.expect("retention");
    assert!(retention.is_some_and(|r| r.mode == RetentionMode::Governance), "{manifest}");
}
