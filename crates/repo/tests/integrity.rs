//! Repository integrity on a local directory: verify checks what is stored even when this
//! host's cache holds good copies, key slots and the config survive the loss of one copy and
//! tell damage from a wrong passphrase, KDF parameters are bounded, objects are private.

mod common;

use std::path::Path;
use xenvault_repo::backend::{self, Backend, ObjectStore};
use xenvault_repo::keys::Secret;
use xenvault_repo::{Error, Repository, SourceInfo};

use common::CHUNK;

fn secret() -> Secret {
    Secret::passphrase("integrity")
}

/// This host's cache of the repository at `location` sits beside it.
fn cached(location: &str) -> backend::BackendOptions {
    backend::BackendOptions { cache_dir: Some(format!("{location}.cache").into()), ..Default::default() }
}

async fn new_repo(location: &str) -> Repository {
    let opts = common::small_repo_options(secret());
    Repository::init(location, &cached(location), opts).await.expect("init")
}

async fn open(location: &str) -> xenvault_repo::Result<Repository> {
    Repository::open(location, &cached(location), Some(&secret())).await
}

/// Distinct, incompressible content for each seed.
fn image(seed: u8, chunks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks * CHUNK);
    let mut counter = 0u64;
    while out.len() < chunks * CHUNK {
        out.extend_from_slice(blake3::hash(&[&[seed][..], &counter.to_le_bytes()].concat()).as_bytes());
        counter += 1;
    }
    out
}

async fn backup(repo: &Repository, source: &str, image: &[u8]) -> String {
    let info = SourceInfo { id: source.into(), kind: "image".into(), name: source.into() };
    let session = repo.start_backup(info).await.expect("start backup");
    let mut w = session.disk_writer(0, "disk0", "", image.len() as u64, None).await.expect("disk writer");
    w.write(0, image).await.expect("write");
    w.finish().await.expect("finish disk");
    session.commit(serde_json::Value::Null, vec![]).await.expect("commit").id
}

fn backend_of(location: &str) -> Backend {
    backend::open(location, &Default::default()).expect("backend")
}

async fn flip_byte(backend: &Backend, object: &str, at: usize) {
    let mut data = backend.get(object).await.expect("get").to_vec();
    let at = at.min(data.len() - 1);
    data[at] ^= 0x01;
    backend.put(object, data.into()).await.expect("put");
}

/// A bit flipped in a stored manifest and in a stored pack index, while this host's cache
/// holds good copies of both: verify sees both, names the point, rebuilds the index; the
/// damaged point is then "damaged", not "not found".
#[tokio::test]
async fn verify_checks_the_store_not_a_warm_cache() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("repo").display().to_string();
    let repo = new_repo(&location).await;
    let (a, b) = (image(1, 6), image(2, 6));
    let id_a = backup(&repo, "a", &a).await;
    let id_b = backup(&repo, "b", &b).await;
    // Warm: every manifest and index is in the cache now.
    assert_eq!(repo.restore_points().await.unwrap().len(), 2);
    repo.refresh_index().await.unwrap();

    let store = backend_of(&location);
    flip_byte(&store, &format!("snapshots/{id_a}"), 40).await;
    let index = store.list("index/").await.unwrap().into_iter().next().expect("an index").path;
    flip_byte(&store, &index, 40).await;

    let report = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(report.found_damage(), "{report:?}");
    let damaged: Vec<&String> = report.damaged_restore_points.keys().collect();
    assert_eq!(damaged, [&id_a], "only a's manifest is damaged: {report:?}");
    assert!(report.damaged_restore_points[&id_a][0].contains("manifest unreadable"), "{report:?}");
    let pack = index.trim_start_matches("index/");
    assert!(
        report.damaged_indexes.iter().any(|d| pack.ends_with(&d.pack) && d.rebuilt),
        "the index is reported and rebuilt from its pack: {report:?}"
    );

    // The cached copy of the manifest was dropped: this host now sees what is stored.
    match repo.restore_point(&id_a).await {
        Err(e @ Error::RestorePointDamaged { .. }) => assert!(e.to_string().contains(&id_a), "{e}"),
        other => panic!("expected a damaged restore point, got {:?}", other.map(|m| m.id)),
    }
    let fresh = open(&location).await.unwrap();
    assert!(matches!(fresh.restore_point(&id_a[..8]).await, Err(Error::RestorePointDamaged { .. })));
    assert!(matches!(fresh.restore_point("ffffffff").await, Err(Error::RestorePointNotFound(_))));
    assert_eq!(fresh.restore_point(&id_b).await.unwrap().id, id_b);
    let again = xenvault_repo::verify::verify(
        &fresh,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(again.damaged_indexes.is_empty(), "the index stays rebuilt: {again:?}");
}

#[tokio::test]
async fn verify_refuses_a_meaningless_sample() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo").display().to_string()).await;
    for pct in [0.0, -1.0, 100.5, f64::NAN, f64::INFINITY] {
        let r = xenvault_repo::verify::verify(
            &repo,
            Some(pct),
            xenvault_types::progress::HiddenProgress::shared(),
            &Default::default(),
        )
        .await;
        assert!(matches!(r, Err(Error::Invalid(_))), "sample {pct} must be refused");
    }
    assert!(
        xenvault_repo::verify::verify(
            &repo,
            Some(100.0),
            xenvault_types::progress::HiddenProgress::shared(),
            &Default::default()
        )
        .await
        .is_ok()
    );
}

/// One copy of the config and of each key slot may be lost or damaged; all copies damaged
/// is damage, never "wrong passphrase"; a wrong passphrase stays one.
#[tokio::test]
async fn config_and_key_slots_survive_one_damaged_copy() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("repo").display().to_string();
    let repo = new_repo(&location).await;
    let data = image(3, 3);
    let id = backup(&repo, "a", &data).await;
    let store = backend_of(&location);
    let slot = repo.key_slots().await.unwrap().pop().expect("a slot");
    let [primary, copy] = slot.object_names();
    assert!(store.exists(&copy).await.unwrap() && store.exists("config.copy").await.unwrap());

    // A flipped digit keeps the JSON well-formed: the checksum tells.
    let text = String::from_utf8(store.get(&primary).await.unwrap().to_vec()).unwrap();
    let digit = if slot.wrapped.starts_with('0') { "1" } else { "0" };
    let flipped = text.replacen(&slot.wrapped, &format!("{digit}{}", &slot.wrapped[1..]), 1);
    store.put(&primary, flipped.into_bytes().into()).await.unwrap();
    store.put("config", b"{ not json".to_vec().into()).await.unwrap();
    let reopened = open(&location).await.expect("opens from the second copies");
    assert_eq!(reopened.restore_point(&id).await.unwrap().id, id);
    let wrong = Repository::open(&location, &Default::default(), Some(&Secret::passphrase("nope"))).await;
    assert!(matches!(wrong, Err(Error::WrongKey)), "a wrong passphrase is still one: {:?}", wrong.err());

    store.put(&copy, b"garbage".to_vec().into()).await.unwrap();
    let e = open(&location).await.err().expect("no intact slot left");
    assert!(matches!(e, Error::KeySlotsDamaged(_)) && e.is_damage(), "{e}");
    store.put("config.copy", b"garbage".to_vec().into()).await.unwrap();
    let e = open(&location).await.err().expect("no intact config left");
    assert!(e.is_damage(), "{e}");
}

/// A repository written before copies and checksums (one plain JSON config and slot) opens.
#[tokio::test]
async fn a_repository_with_single_copies_opens() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("repo").display().to_string();
    let repo = new_repo(&location).await;
    let id = backup(&repo, "a", &image(4, 2)).await;
    let store = backend_of(&location);
    for object in ["config".to_string(), repo.key_slots().await.unwrap()[0].object_names()[0].clone()] {
        let mut json: serde_json::Value = serde_json::from_slice(&store.get(&object).await.unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("checksum").expect("written with a checksum");
        store.put(&object, serde_json::to_vec_pretty(&json).unwrap().into()).await.unwrap();
    }
    store.delete("config.copy").await.unwrap();
    for copy in store.list("keycopies/").await.unwrap() {
        store.delete(&copy.path).await.unwrap();
    }
    assert_eq!(open(&location).await.expect("old layout opens").restore_point(&id).await.unwrap().id, id);
}

/// verify rewrites a damaged copy of the config or a key slot from the intact one (and
/// reports it), and gives a repository of the single-copy layout its second copies.
#[tokio::test]
async fn verify_repairs_damaged_copies_and_adds_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("repo").display().to_string();
    let repo = new_repo(&location).await;
    let store = backend_of(&location);
    let [primary, copy] = repo.key_slots().await.unwrap()[0].object_names();
    store.put("config.copy", b"{}".to_vec().into()).await.unwrap();
    store.put(&primary, b"garbage".to_vec().into()).await.unwrap();
    let report = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(report.found_damage(), "{report:?}");
    assert_eq!(report.damaged_key_objects, ["config.copy".to_string(), primary.clone()], "{report:?}");
    let again = xenvault_repo::verify::verify(
        &repo,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(!again.found_damage(), "repaired: {again:?}");

    // Lose the other copies now: the repaired ones carry the repository.
    store.put("config", b"garbage".to_vec().into()).await.unwrap();
    store.delete(&copy).await.unwrap();
    let reopened = open(&location).await.expect("opens from the repaired copies");
    let report = xenvault_repo::verify::verify(
        &reopened,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.damaged_key_objects, ["config".to_string()], "a missing copy is no damage: {report:?}");
    assert!(store.exists(&copy).await.unwrap(), "the missing slot copy is written again");
}

/// A hostile repository raises its slot's Argon2 cost: open refuses at once (no 100 GiB
/// allocation, no endless loop) and says the slot is damaged.
#[tokio::test]
async fn hostile_kdf_parameters_are_refused_when_opening() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("repo").display().to_string();
    let repo = new_repo(&location).await;
    let store = backend_of(&location);
    let names = repo.key_slots().await.unwrap()[0].object_names();
    for (field, value) in [("memory_kib", 100u64 << 20), ("iterations", u32::MAX as u64)] {
        for object in &names {
            let mut json: serde_json::Value = serde_json::from_slice(&store.get(object).await.unwrap()).unwrap();
            let slot = json.as_object_mut().unwrap();
            slot.remove("checksum");
            slot["kdf"][field] = value.into();
            store.put(object, serde_json::to_vec(&json).unwrap().into()).await.unwrap();
        }
        let e = open(&location).await.err().expect("refused");
        assert!(matches!(e, Error::KeySlotsDamaged(_)) && e.to_string().contains("KDF"), "{e}");
    }
}

/// Objects, directories and key slots of a local repository are private to their owner.
#[tokio::test]
async fn local_objects_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = new_repo(&root.display().to_string()).await;
    backup(&repo, "a", &image(5, 2)).await;
    fn walk(path: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        out.push((path.to_path_buf(), mode));
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), out);
            }
        }
    }
    let mut all = Vec::new();
    walk(&root, &mut all);
    assert!(all.len() > 8, "objects written: {all:?}");
    for (path, mode) in all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{path:?} is {mode:o}");
    }
}
