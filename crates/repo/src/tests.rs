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
    Repository::init(dir.to_str().unwrap(), opts).await.unwrap()
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
    let mut w = session.disk_writer("disk0", "", src.size(), None).await.unwrap();
    w.write_source(src).await.unwrap();
    w.finish().await.unwrap();
    session.commit(serde_json::json!({"file": path}), vec![]).await.unwrap()
}

pub(crate) async fn restore(repo: &Repository, id: &str, out: &Path) -> Vec<u8> {
    let m = repo.snapshot(id).await.unwrap();
    let reader = crate::DiskReader::new(repo, &m.disks[0]).await.unwrap();
    reader.restore_to_file(out, None).await.unwrap();
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
    let mut w = session.disk_writer("disk0", "", img.len() as u64, Some(&base.disks[0])).await.unwrap();
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
    let err = Repository::open(path.to_str().unwrap(), Some(&Secret::passphrase("nope"))).await.err().unwrap();
    assert!(matches!(err, crate::Error::WrongKey), "{err}");
    let err = Repository::open(path.to_str().unwrap(), None).await.err().unwrap();
    assert!(matches!(err, crate::Error::KeyNeeded), "{err}");
    assert!(Repository::open(path.to_str().unwrap(), Some(&secret())).await.is_ok());

    let plain = dir.path().join("plain");
    let opts = InitOptions { encryption: Encryption::None, ..Default::default() };
    Repository::init(plain.to_str().unwrap(), opts).await.unwrap();
    let repo = Repository::open(plain.to_str().unwrap(), None).await.unwrap();
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
    assert!(Repository::open(loc, Some(&second)).await.is_ok());
    let first = repo.slot_for(&secret()).await.unwrap();
    repo.remove_key(&first.id).await.unwrap();
    assert!(matches!(Repository::open(loc, Some(&secret())).await, Err(crate::Error::WrongKey)));
    assert!(repo.remove_key(&slot.id).await.is_err(), "last slot stays");
}
