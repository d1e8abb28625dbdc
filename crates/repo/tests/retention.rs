//! Immutable restore points against SeaweedFS's S3 gateway, which implements object lock:
//! a bucket created with `x-amz-bucket-object-lock-enabled`, retention put by us, and a
//! version delete (signed by curl, an independent client) that the server must refuse.

mod common;

use bytes::Bytes;
use chrono::{Duration, Utc};
use common::object_lock::{delete_version, object_lock_bucket};
use xenvault_repo::backend::{self, BackendError, BackendKind, ObjectStore, RetentionMode};
use xenvault_repo::retention::{lock_restore_points, referenced_objects};
use xenvault_repo::{Error, InitOptions, KdfParams, Repository, Secret, SourceInfo};

const CHUNK: usize = 64 << 10;

/// A 5 MiB disk of incompressible data and a hole, cut so that it needs two index pages
/// (64 slots each) and several packs.
async fn backup(repo: &Repository, name: &str) -> xenvault_repo::Manifest {
    let mut disk = vec![0u8; 80 * CHUNK];
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
    for byte in disk.iter_mut().take(70 * CHUNK) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let session = repo
        .start_backup(SourceInfo { id: name.into(), kind: "image".into(), name: name.into() })
        .await
        .expect("start backup");
    let mut writer = session.disk_writer(0, "xvda", "", disk.len() as u64, None).await.expect("disk writer");
    writer.write(0, &disk).await.expect("write");
    writer.finish().await.expect("finish disk");
    session.commit(serde_json::Value::Null, vec![]).await.expect("commit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_restore_point_survives_version_delete_on_seaweedfs() {
    let server = common::s3();
    let options = server.options();
    let endpoint = options.s3_endpoint.clone().expect("endpoint");

    // The shared test bucket was created without object lock.
    let plain = backend::open(&server.url("plain"), &options).expect("open");
    assert!(!plain.supports_object_lock().await.expect("ask plain bucket"));
    assert!(matches!(plain.require_object_lock().await, Err(BackendError::ObjectLockDisabled { .. })));

    let bucket = object_lock_bucket(&endpoint);
    let url = format!("s3://{bucket}/repo");
    let locked_backend = backend::open(&url, &options).expect("open");
    assert_eq!(locked_backend.kind(), BackendKind::S3);
    assert!(locked_backend.supports_object_lock().await.expect("ask locked bucket"));

    let init = InitOptions {
        secret: Some(Secret::passphrase("lock test")),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        chunk_size: CHUNK as u32,
        page_slots: 64,
        pack_size: 1 << 20,
        ..Default::default()
    };
    let repo = Repository::init(&url, &options, init).await.expect("init");
    let kept = backup(&repo, "kept").await;
    let other = backup(&repo, "other").await;

    let until = Utc::now() + Duration::days(1);
    let report =
        lock_restore_points(&repo, &[kept.id[..8].to_string()], RetentionMode::Governance, until).await.expect("lock");
    assert_eq!(report.restore_points, std::slice::from_ref(&kept.id));
    let objects = referenced_objects(&repo, std::slice::from_ref(&kept)).await.expect("enumerate");
    assert_eq!(report.objects, objects.len());
    assert!(report.packs >= 2, "the disk spans several packs: {report:?}");
    assert!(objects.contains("config") && objects.iter().any(|o| o.starts_with("keys/")));

    for object in &objects {
        let retention = locked_backend.retention(object).await.expect("get retention");
        let retention = retention.unwrap_or_else(|| panic!("{object} has no retention"));
        assert_eq!(retention.mode, RetentionMode::Governance);
        assert_eq!(retention.until.timestamp(), until.timestamp());
    }

    // The server refuses to delete a locked version, and the restore point stays whole.
    let manifest_key = format!("repo/snapshots/{}", kept.id);
    let pack_key = format!("repo/{}", objects.iter().find(|o| o.starts_with("data/")).expect("a pack"));
    for key in [&manifest_key, &pack_key] {
        let status = delete_version(&endpoint, &bucket, key);
        assert!(!(200..300).contains(&status), "deleting locked {key} answered {status}");
    }
    let reopened = Repository::open(&url, &options, Some(&Secret::passphrase("lock test"))).await.expect("reopen");
    assert_eq!(reopened.restore_point(&kept.id).await.expect("still there").id, kept.id);
    let report = xenvault_repo::verify::verify(
        &reopened,
        None,
        xenvault_types::progress::HiddenProgress::shared(),
        &Default::default(),
    )
    .await
    .expect("verify");
    assert!(!report.found_damage(), "{report:?}");

    // The unlocked restore point's manifest is not protected: the same delete succeeds.
    let other_key = format!("repo/snapshots/{}", other.id);
    assert!(locked_backend.retention(&format!("snapshots/{}", other.id)).await.expect("retention").is_none());
    assert_eq!(delete_version(&endpoint, &bucket, &other_key), 204);

    // Every restore point still listed is `kept` (`other` lost its manifest), and a
    // governance retention may be extended.
    let listed: Vec<String> = reopened.restore_points().await.expect("list").into_iter().map(|m| m.id).collect();
    assert_eq!(listed, std::slice::from_ref(&kept.id));
    let later = until + Duration::days(1);
    lock_restore_points(&reopened, &listed, RetentionMode::Governance, later).await.expect("extend");
    let extended = locked_backend.retention(&format!("snapshots/{}", kept.id)).await.expect("retention");
    assert!(extended.is_some_and(|r| r.until.timestamp() == later.timestamp()), "{extended:?}");

    // Retention on something that does not exist is a typed error, not a silent success.
    let missing = locked_backend.retain("snapshots/none", RetentionMode::Governance, until).await;
    assert!(matches!(missing, Err(BackendError::NotFound { .. })), "{missing:?}");
    // A date in the past is refused before asking the server.
    let past = locked_backend.retain("config", RetentionMode::Governance, Utc::now() - Duration::hours(1)).await;
    assert!(matches!(past, Err(BackendError::Config { .. })), "{past:?}");
}

#[tokio::test]
async fn local_directory_has_no_object_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("raw");
    let backend = backend::open(raw.to_str().expect("utf-8"), &Default::default()).expect("open");
    backend.put("config", Bytes::from_static(b"x")).await.expect("put");
    assert!(!backend.supports_object_lock().await.expect("ask"));
    let until = Utc::now() + Duration::days(1);
    let err = backend.retain("config", RetentionMode::Compliance, until).await;
    assert!(matches!(err, Err(BackendError::Unsupported { .. })), "{err:?}");

    let location = dir.path().join("repo");
    let repo = Repository::init(
        location.to_str().expect("utf-8"),
        &Default::default(),
        InitOptions { encryption: xenvault_repo::Encryption::None, ..Default::default() },
    )
    .await
    .expect("init");
    let err = lock_restore_points(&repo, &["latest".into()], RetentionMode::Governance, until).await;
    assert!(matches!(err, Err(Error::Backend(BackendError::Unsupported { .. }))), "{err:?}");
}
