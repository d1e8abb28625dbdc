//! End-to-end tests of the repository on a local directory.

use crate::crypto::fill_random;
use crate::keys::{Encryption, KdfParams, Secret};
use crate::manifest::SourceInfo;
use crate::repository::{InitOptions, Repository};
use crate::source::{BlockSource, RawFileSource};
use std::path::Path;
use std::sync::Arc;

pub(crate) const FAST_KDF: KdfParams = KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 };
pub(crate) const MARKER: &[u8] = b"XENVAULT-PLAINTEXT-MARKER-7f3a9c";

pub(crate) fn secret() -> Secret {
    Secret::passphrase("correct horse")
}

pub(crate) async fn new_repo(dir: &Path, chunk_size: u32) -> Repository {
    let opts = InitOptions {
        secret: Some(secret()),
        kdf: FAST_KDF,
        chunk_size,
        page_slots: 64,
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(dir.to_str().unwrap(), &Default::default(), opts).await.unwrap()
}

/// An image with zeros, random data, repeated data and a plaintext marker.
pub(crate) fn make_image(path: &Path, size: usize) -> Vec<u8> {
    let mut img = vec![0u8; size];
    let quarter = size / 4;
    fill_random(&mut img[quarter..2 * quarter]).unwrap();
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    for (i, b) in img[2 * quarter..3 * quarter].iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
    for i in 0..8 {
        let at = 3 * quarter + i * 1000 + 17;
        img[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    // odd tail: the last chunk is short
    std::fs::write(path, &img).unwrap();
    img
}

pub(crate) fn source(id: &str) -> SourceInfo {
    SourceInfo { id: id.into(), kind: "image".into(), name: id.into() }
}

pub(crate) async fn backup_file(repo: &Repository, path: &Path, id: &str) -> crate::Manifest {
    let src: Arc<dyn BlockSource> = Arc::new(RawFileSource::open(path).unwrap());
    let session = repo.start_backup(source(id)).await.unwrap();
    let mut w = session.disk_writer(0, "disk0", "", src.size(), None).await.unwrap();
    w.write_source(src).await.unwrap();
    w.finish().await.unwrap();
    session.commit(serde_json::json!({"file": path}), vec![]).await.unwrap()
}

pub(crate) async fn restore(repo: &Repository, id: &str, out: &Path) -> Vec<u8> {
    let m = repo.restore_point(id).await.unwrap();
    let reader = crate::DiskReader::new(repo, &m.disks[0]).await.unwrap();
    reader
        .restore_to_file(
            out,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();
    std::fs::read(out).unwrap()
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(all_files(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_byte_identical_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let img_path = dir.path().join("a.img");
    let img = make_image(&img_path, (3 << 20) + 12345);
    let m = backup_file(&repo, &img_path, "a").await;
    let st = &m.disks[0].stats;
    assert!(st.bytes_zero >= (700 << 10), "zeros are holes: {st:?}");
    assert!(st.bytes_stored < st.bytes_new, "repeated data compresses: {st:?}");
    assert_eq!(restore(&repo, &m.id[..8], &dir.path().join("out.img")).await, img);
    for f in all_files(&repo_dir) {
        let data = std::fs::read(&f).unwrap();
        assert!(!data.windows(MARKER.len()).any(|w| w == MARKER), "marker in {f:?}");
    }
    // A second backup of the same image stores nothing new.
    let m2 = backup_file(&repo, &img_path, "a").await;
    assert_eq!(m2.disks[0].stats.chunks_new, 0);
    assert_eq!(m2.disks[0].pages, m.disks[0].pages);
    // Random access.
    let reader = crate::DiskReader::new(&repo, &m2.disks[0]).await.unwrap();
    let mut buf = vec![0u8; 200_000];
    reader.read_at(1_000_000, &mut buf).await.unwrap();
    assert_eq!(buf, img[1_000_000..1_200_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_ranges_incremental_equals_new_image() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo"), 64 << 10).await;
    let img_path = dir.path().join("a.img");
    let mut img = make_image(&img_path, 9 << 20);
    let base = backup_file(&repo, &img_path, "vm").await;
    // Change a few scattered blocks, zero one chunk.
    let changes = [100u64..5000, (5 << 20)..((5 << 20) + 10), ((9 << 20) - 3)..(9 << 20)];
    for r in &changes {
        fill_random(&mut img[r.start as usize..r.end as usize]).unwrap();
    }
    img[(2 << 20)..(2 << 20) + (64 << 10)].fill(0);
    let mut session = repo.start_backup(source("vm")).await.unwrap();
    session.set_base(&base.id);
    let mut w = session.disk_writer(0, "disk0", "", img.len() as u64, Some(&base.disks[0])).await.unwrap();
    let mut ranges = w.chunk_ranges(&changes);
    ranges.push((2 << 20)..(2 << 20) + (64 << 10));
    ranges.sort_by_key(|r| r.start);
    for r in ranges {
        w.write(r.start, &img[r.start as usize..r.end as usize]).await.unwrap();
    }
    let rec = w.finish().await.unwrap();
    assert_eq!(rec.stats.bytes_read, 4 * (64 << 10), "only changed chunks were given");
    assert!(rec.stats.chunks_inherited > 100);
    let inc = session.commit(serde_json::Value::Null, vec!["inc".into()]).await.unwrap();
    assert_eq!(restore(&repo, &inc.id, &dir.path().join("inc.img")).await, img);
    // The base is untouched and still complete.
    let base_img = std::fs::read(&img_path).unwrap();
    assert_eq!(restore(&repo, &base.id, &dir.path().join("base.img")).await, base_img);
    // Unchanged pages are shared.
    let shared = inc.disks[0].pages.iter().zip(&base.disks[0].pages).filter(|(a, b)| a == b).count();
    assert!(shared >= inc.disks[0].pages.len() - 3, "{shared} pages shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_is_refused_and_unencrypted_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    new_repo(&path, 1 << 20).await;
    let err = Repository::open(path.to_str().unwrap(), &Default::default(), Some(&Secret::passphrase("nope")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, crate::Error::WrongKey), "{err}");
    let err = Repository::open(path.to_str().unwrap(), &Default::default(), None).await.err().unwrap();
    assert!(matches!(err, crate::Error::KeyNeeded), "{err}");
    assert!(Repository::open(path.to_str().unwrap(), &Default::default(), Some(&secret())).await.is_ok());

    let plain = dir.path().join("plain");
    let opts = InitOptions { encryption: Encryption::None, ..Default::default() };
    Repository::init(plain.to_str().unwrap(), &Default::default(), opts).await.unwrap();
    let repo = Repository::open(plain.to_str().unwrap(), &Default::default(), None).await.unwrap();
    let img_path = dir.path().join("p.img");
    let img = make_image(&img_path, 2 << 20);
    let m = backup_file(&repo, &img_path, "p").await;
    assert_eq!(restore(&repo, &m.id, &dir.path().join("p.out")).await, img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slots_add_remove_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let repo = new_repo(&path, 1 << 20).await;
    let second = Secret::passphrase("second");
    let slot = repo.add_key(&second, FAST_KDF, "ops").await.unwrap();
    let loc = path.to_str().unwrap();
    assert!(Repository::open(loc, &Default::default(), Some(&second)).await.is_ok());
    let first = repo.slot_for(&secret()).await.unwrap();
    repo.remove_key(&first.id).await.unwrap();
    assert!(matches!(Repository::open(loc, &Default::default(), Some(&secret())).await, Err(crate::Error::WrongKey)));
    assert!(repo.remove_key(&slot.id).await.is_err(), "last slot stays");
}

/// Flips one byte inside the stored blob of the first data chunk of `m`.
async fn damage_first_chunk(repo: &Repository, repo_dir: &Path, m: &crate::Manifest) -> crate::crypto::ChunkId {
    let reader = crate::DiskReader::new(repo, &m.disks[0]).await.unwrap();
    let mut slot = 0;
    let id = loop {
        let id = reader.chunk_id(slot).await.unwrap();
        if !id.is_zero() {
            break id;
        }
        slot += 1;
    };
    let loc = repo.locate(&id).unwrap();
    let file = repo_dir.join(loc.pack.data_object());
    let mut data = std::fs::read(&file).unwrap();
    data[loc.offset as usize + 20] ^= 0x40;
    std::fs::write(&file, data).unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_damaged_restore_points_and_next_backup_heals() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let a = dir.path().join("a.img");
    let img = make_image(&a, 2 << 20);
    let s1 = backup_file(&repo, &a, "a").await;
    let s2 = backup_file(&repo, &a, "a2").await;
    let c = dir.path().join("c.img");
    let mut other = vec![0u8; 1 << 20];
    fill_random(&mut other).unwrap();
    std::fs::write(&c, &other).unwrap();
    let s3 = backup_file(&repo, &c, "c").await;
    assert!(
        !crate::verify::verify(&repo, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap()
            .found_damage()
    );

    damage_first_chunk(&repo, &repo_dir, &s1).await;
    let report =
        crate::verify::verify(&repo, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap();
    assert!(report.found_damage());
    assert_eq!(report.bad_chunks.len(), 1, "{report:?}");
    let named: Vec<&String> = report.damaged_restore_points.keys().collect();
    let mut expected = vec![&s1.id, &s2.id];
    expected.sort();
    assert_eq!(named, expected, "exactly the restore points using the chunk");
    assert!(!report.damaged_restore_points.contains_key(&s3.id));

    // The next backup of the same data stores the chunk again: every restore point heals.
    let s4 = backup_file(&repo, &a, "a").await;
    assert_eq!(s4.disks[0].stats.chunks_new, 1);
    let report =
        crate::verify::verify(&repo, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap();
    assert!(!report.found_damage(), "{report:?}");
    assert_eq!(report.superseded, 1);
    assert_eq!(restore(&repo, &s1.id, &dir.path().join("s1.img")).await, img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_pack_index_is_rebuilt_from_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let a = dir.path().join("a.img");
    let img = make_image(&a, 1 << 20);
    let s1 = backup_file(&repo, &a, "a").await;
    let index_dir = repo_dir.join("index");
    let victim = std::fs::read_dir(&index_dir).unwrap().next().unwrap().unwrap().path();
    let mut data = std::fs::read(&victim).unwrap();
    data[30] ^= 1;
    std::fs::write(&victim, &data).unwrap();
    let fresh = Repository::open(repo_dir.to_str().unwrap(), &Default::default(), Some(&secret())).await.unwrap();
    let report =
        crate::verify::verify(&fresh, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap();
    // Reported (the store damaged an object) but nothing is lost: no bad chunk, no damaged point.
    assert!(report.damaged_indexes.len() == 1 && report.damaged_indexes[0].rebuilt, "{report:?}");
    assert!(report.bad_chunks.is_empty() && report.damaged_restore_points.is_empty(), "{report:?}");
    assert!(
        !crate::verify::verify(&fresh, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap()
            .found_damage(),
        "rebuilt for good"
    );
    assert_eq!(restore(&fresh, &s1.id, &dir.path().join("o.img")).await, img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_keep_the_right_restore_points() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let mut images = Vec::new();
    let mut snaps = Vec::new();
    for i in 0..3 {
        let p = dir.path().join(format!("{i}.img"));
        images.push(make_image(&p, 1 << 20));
        snaps.push(backup_file(&repo, &p, "vm").await);
    }
    let all = repo.restore_points().await.unwrap();
    let plan = crate::prune::plan(&all, &crate::prune::KeepPolicy { last: 1, ..Default::default() }).unwrap();
    assert_eq!(plan.keep, vec![snaps[2].id.clone()]);
    let packs_before = std::fs::read_dir(repo_dir.join("index")).unwrap().count();
    let pack_bytes = async || {
        let mut total = 0;
        for prefix in [crate::pack::DATA_PREFIX, crate::pack::INDEX_PREFIX] {
            total += repo.store().list(prefix).await.unwrap().iter().map(|(_, size)| size).sum::<u64>();
        }
        total
    };
    let bytes_before = pack_bytes().await;
    // Changed tags show in the listing and go with their restore point.
    let tags = vec!["kept".to_string()];
    for id in [&plan.remove[0], &snaps[2].id] {
        repo.set_tags(id, &tags).await.unwrap();
    }
    assert!(
        repo.restore_points()
            .await
            .unwrap()
            .iter()
            .all(|m| (m.tags == tags) == (m.id == plan.remove[0] || m.id == snaps[2].id))
    );
    for id in &plan.remove {
        repo.delete_restore_point(id).await.unwrap();
    }
    let report = crate::gc::gc(&repo).await.unwrap();
    assert!(report.packs_deleted > 0, "{report:?}");
    assert_eq!(report.bytes_deleted, bytes_before - pack_bytes().await, "{report:?}");
    let packs_after = std::fs::read_dir(repo_dir.join("index")).unwrap().count();
    assert!(packs_after < packs_before);
    assert!(
        !crate::verify::verify(&repo, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap()
            .found_damage()
    );
    assert_eq!(restore(&repo, &snaps[2].id, &dir.path().join("o.img")).await, images[2]);
    assert_eq!(repo.restore_points().await.unwrap().len(), 1);
    assert!(repo_dir.join("tags").join(&snaps[2].id).exists());
    assert!(!repo_dir.join("tags").join(&plan.remove[0]).exists(), "tags of a forgotten restore point left");
    assert_eq!(repo.restore_point("latest").await.unwrap().tags, tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_while_a_backup_runs_never_deletes_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let old = dir.path().join("old.img");
    let old_img = make_image(&old, 2 << 20);
    let gone = backup_file(&repo, &old, "old").await;

    // A backup in progress has uploaded packs but not published its manifest.
    let running = dir.path().join("run.img");
    let mut run_img = vec![0u8; 3 << 20];
    fill_random(&mut run_img).unwrap();
    std::fs::write(&running, &run_img).unwrap();
    let session = repo.start_backup(source("run")).await.unwrap();
    let mut w = session.disk_writer(0, "disk0", "", run_img.len() as u64, None).await.unwrap();
    w.write(0, &run_img).await.unwrap();
    w.finish().await.unwrap();

    // Meanwhile the old restore point is forgotten and gc runs.
    repo.delete_restore_point(&gone.id).await.unwrap();
    let r = crate::gc::gc(&repo).await.unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert!(r.packs_waiting > 0 && r.bytes_waiting > 0 && r.backups_running == 1, "{r:?}");

    // A backup starting now must not reuse chunks of condemned packs.
    let again = backup_file(&repo, &old, "old").await;
    assert!(again.disks[0].stats.chunks_new > 0, "condemned chunks are stored again");

    let m = session.commit(serde_json::Value::Null, vec![]).await.unwrap();
    let r = crate::gc::gc(&repo).await.unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    assert_eq!(restore(&repo, &m.id, &dir.path().join("r.img")).await, run_img);
    assert_eq!(restore(&repo, &again.id, &dir.path().join("o.img")).await, old_img);
    assert!(
        !crate::verify::verify(&repo, None, xenvault_types::progress::HiddenProgress::shared(), &Default::default())
            .await
            .unwrap()
            .found_damage()
    );
}

/// A restore that loaded its index before gc deleted one copy of chunks stored twice (the
/// copy gc's own index did not choose) finds the other copy instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_an_older_index_survives_gc_of_a_duplicate_copy() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = new_repo(&repo_dir, 64 << 10).await;
    let image = dir.path().join("img");
    let mut img = vec![0u8; 3 << 20];
    fill_random(&mut img).unwrap();
    std::fs::write(&image, &img).unwrap();

    // First copy: packs of a backup that gc condemns before it commits.
    let session = repo.start_backup(source("vm")).await.unwrap();
    let mut w = session.disk_writer(0, "disk0", "", img.len() as u64, None).await.unwrap();
    w.write(0, &img).await.unwrap();
    w.finish().await.unwrap();
    let r = crate::gc::gc(&repo).await.unwrap();
    assert!(r.packs_waiting > 0, "{r:?}");
    let first = session.commit(serde_json::Value::Null, vec![]).await.unwrap();

    // A reader opens it now: the condemned packs hold the only copy.
    let reader_repo = Repository::open(repo_dir.to_str().unwrap(), &Default::default(), Some(&secret())).await.unwrap();
    let reader = crate::DiskReader::new(&reader_repo, &first.disks[0]).await.unwrap();

    // A later backup stores the chunks again (never into condemned packs); gc then deletes
    // the condemned copy, which the reader's index still points at.
    backup_file(&repo, &image, "vm").await;
    let r = crate::gc::gc(&repo).await.unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");

    let out = dir.path().join("out");
    reader
        .restore_to_file(
            &out,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), img);
    let slot = reader.read_slot(1).await.unwrap().unwrap();
    assert_eq!(slot.as_slice(), &img[64 << 10..128 << 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_only_missing_chunks_reencrypted() {
    let dir = tempfile::tempdir().unwrap();
    let src = new_repo(&dir.path().join("src"), 64 << 10).await;
    let a = dir.path().join("a.img");
    let img = make_image(&a, 2 << 20);
    let s1 = backup_file(&src, &a, "a").await;
    let s2 = backup_file(&src, &a, "a").await;

    // A target with its own keys: everything is read and re-sealed.
    let other = new_repo(&dir.path().join("other"), 1 << 20).await;
    let r = crate::copy::copy(
        &src,
        &other,
        std::slice::from_ref(&s1.id),
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.copied, vec![s1.id.clone()]);
    assert_eq!(restore(&other, &s1.id, &dir.path().join("o1.img")).await, img);

    // A target sharing chunk ids: the second copy reads nothing.
    let opts = InitOptions {
        secret: Some(Secret::passphrase("t")),
        kdf: FAST_KDF,
        chunk_size: 64 << 10,
        page_slots: 64,
        pack_size: 1 << 20,
        chunk_ids_from: Some(src.clone()),
        ..Default::default()
    };
    let mirror =
        Repository::init(dir.path().join("mirror").to_str().unwrap(), &Default::default(), opts).await.unwrap();
    let r1 = crate::copy::copy(
        &src,
        &mirror,
        std::slice::from_ref(&s1.id),
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(r1.chunks_read > 0);
    let r2 = crate::copy::copy(
        &src,
        &mirror,
        &[s1.id.clone(), s2.id.clone()],
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(r2.skipped, vec![s1.id.clone()]);
    assert_eq!(r2.chunks_read, 0);
    assert_eq!(restore(&mirror, &s2.id, &dir.path().join("o2.img")).await, img);
    for f in all_files(&dir.path().join("mirror")) {
        let data = std::fs::read(&f).unwrap();
        assert!(!data.windows(MARKER.len()).any(|w| w == MARKER), "marker in {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhd_images_back_up_like_their_raw_content() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo"), 64 << 10).await;
    let raw = dir.path().join("a.raw");
    let img = make_image(&raw, 6 << 20);
    let vhd = dir.path().join("a.vhd");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"])
        .arg(&raw)
        .arg(&vhd)
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let src = crate::open_image(&vhd, crate::ImageFormat::Vhd).unwrap();
    assert_eq!(src.size(), img.len() as u64);
    assert!(src.allocated().unwrap().is_some(), "opened as a VHD");
    let session = repo.start_backup(source("vhd")).await.unwrap();
    let mut w = session.disk_writer(0, "disk0", "", src.size(), None).await.unwrap();
    w.write_source(src).await.unwrap();
    w.finish().await.unwrap();
    let m = session.commit(serde_json::Value::Null, vec![]).await.unwrap();
    assert_eq!(restore(&repo, &m.id, &dir.path().join("o.raw")).await, img);
}
