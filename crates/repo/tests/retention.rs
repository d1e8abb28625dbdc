//! Immutable restore points against SeaweedFS's S3 gateway, which implements object lock:
//! a bucket created with `x-amz-bucket-object-lock-enabled`, retention put by us, and a
//! version delete (signed by curl, an independent client) that the server must refuse.

mod common;

use std::process::Command;

use bytes::Bytes;
use chrono::{Duration, Utc};
use xenvault_repo::backend::{self, BackendError, BackendKind, ObjectStore, RetentionMode};
use xenvault_repo::retention::{lock_restore_points, referenced_objects};
use xenvault_repo::{Error, InitOptions, KdfParams, Repository, Secret, SourceInfo};

const CHUNK: usize = 64 << 10;

/// One signed S3 request with curl (`--aws-sigv4`); returns (status, response headers).
fn curl(method: &str, url: &str, headers: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-X", method]);
    if method == "HEAD" {
        command.arg("-I");
    }
    command.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"]).arg(format!(
        "{}:{}",
        common::S3_ACCESS_KEY,
        common::S3_SECRET_KEY
    ));
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (head, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), head.to_string())
}

/// The version id of the current version of `key` in `bucket`.
fn version_id(endpoint: &str, bucket: &str, key: &str) -> String {
    let (status, headers) = curl("HEAD", &format!("{endpoint}/{bucket}/{key}"), &[]);
    assert_eq!(status, 200, "HEAD {key}: {headers}");
    headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-amz-version-id:").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no version id for {key}: {headers}"))
}

fn delete_version(endpoint: &str, bucket: &str, key: &str) -> u16 {
    let version = version_id(endpoint, bucket, key);
    curl("DELETE", &format!("{endpoint}/{bucket}/{key}?versionId={version}"), &[]).0
}

/// A fresh bucket created with object lock enabled.
fn object_lock_bucket(endpoint: &str) -> String {
    let bucket = format!("xv-lock-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (status, headers) = curl("PUT", &format!("{endpoint}/{bucket}"), &["x-amz-bucket-object-lock-enabled: true"]);
    assert_eq!(status, 200, "create a bucket with object lock: {headers}");
    bucket
}

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

    // The command line: `--all` now means `kept` only (`other` lost its manifest), and a
    // governance retention may be extended.
    let output = Command::new(common::xenvault_bin())
        .args(["lock", "--all", "--days", "2", "--json", "--repo", &url])
        .envs(server.env())
        .env("XENVAULT_PASSPHRASE", "lock test")
        .output()
        .expect("run xenvault lock");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(cli["restore_points"], serde_json::json!([kept.id]));
    assert_eq!(cli["mode"], "governance");
    let extended = locked_backend.retention(&format!("snapshots/{}", kept.id)).await.expect("retention");
    assert!(extended.is_some_and(|r| r.until > until + Duration::hours(23)), "{extended:?}");
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

/// `xenvault sim serve` as a child process, killed on drop.
struct Simulator(std::process::Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_lock_days_locks_each_new_restore_point_on_s3() {
    use std::io::BufRead;
    let server = common::s3();
    let endpoint = server.options().s3_endpoint.expect("endpoint");
    let url = format!("s3://{}/repo", object_lock_bucket(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let state = dir.path().join("sim");
    let mut child = Command::new(common::xenvault_bin())
        .args(["sim", "serve", "--listen", &format!("127.0.0.1:{port}"), "--nbd-port", "0", "--blank-disks-mib", "4"])
        .arg("--state-dir")
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the simulator");
    let stdout = child.stdout.take().expect("simulator stdout");
    let _simulator = Simulator(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("simulator output");
    let sim_url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected {line:?}")).to_owned();

    let password = dir.path().join("pool.password");
    std::fs::write(&password, "xenvault").expect("password file");
    let xenvault = |args: &[&str]| {
        let output = Command::new(common::xenvault_bin())
            .args(args)
            .envs(server.env())
            .env("XENVAULT_PASSPHRASE", "lock test")
            .env("XENVAULT_CONFIG", dir.path().join("config.toml"))
            .env("XENVAULT_CACHE_DIR", dir.path().join("cache"))
            .output()
            .expect("run xenvault");
        assert!(output.status.success(), "xenvault {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    xenvault(&[
        "pool",
        "add",
        "sim",
        "--url",
        &sim_url,
        "--insecure",
        "--password-file",
        password.to_str().expect("utf-8"),
    ]);
    xenvault(&["init", "--repo", &url, "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
    let stdout =
        xenvault(&["backup", "--pool", "sim", "--vm", "debian-web", "--repo", &url, "--lock-days", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON report");
    let id = report["vms"][0]["restore_point"].as_str().unwrap_or_else(|| panic!("no restore point: {report}"));
    assert_eq!(report["lock"]["restore_points"], serde_json::json!([id]), "{report}");
    assert_eq!(report["lock"]["mode"], "governance", "{report}");
    assert!(report["lock"]["objects"].as_u64().is_some_and(|n| n > 2), "{report}");

    let backend = backend::open(&url, &server.options()).expect("open");
    let retention = backend.retention(&format!("snapshots/{id}")).await.expect("retention");
    let retention = retention.unwrap_or_else(|| panic!("the new restore point's manifest is not locked"));
    assert_eq!(retention.mode, RetentionMode::Governance);
    assert!(retention.until > Utc::now() + Duration::hours(23), "{retention:?}");
}

/// Credentials from a profile in a shared credentials file, none in the environment: the
/// `xenvault` binary stores a restore point and locks it (the retention requests are
/// signed with the chain that signs the stores), and the lock reads back as set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_file_credentials_store_and_lock_on_s3() {
    let server = common::s3();
    let endpoint = server.options().s3_endpoint.expect("endpoint");
    let url = format!("s3://{}/repo", object_lock_bucket(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[xenvault-lock]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            common::S3_ACCESS_KEY,
            common::S3_SECRET_KEY
        ),
    )
    .expect("credentials file");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, (0..4u32 << 16).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).expect("image");
    let xenvault = |args: &[&str]| {
        let output = Command::new(common::xenvault_bin())
            .args(args)
            .args(["--repo", &url])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("HOME", dir.path())
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_PROFILE", "xenvault-lock")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("XENVAULT_PASSPHRASE", "lock test")
            .env("XENVAULT_CACHE_DIR", dir.path().join("cache"))
            .output()
            .expect("run xenvault");
        assert!(output.status.success(), "xenvault {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    xenvault(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
    xenvault(&["backup-image", image.to_str().expect("utf-8"), "--source-id", "disk"]);
    let stdout = xenvault(&["lock", "--all", "--days", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON report");
    let id = report["restore_points"][0].as_str().unwrap_or_else(|| panic!("nothing locked: {report}"));

    let backend = backend::open(&url, &server.options()).expect("open");
    let retention = backend.retention(&format!("snapshots/{id}")).await.expect("retention");
    let retention = retention.unwrap_or_else(|| panic!("the restore point's manifest is not locked"));
    assert_eq!(retention.mode, RetentionMode::Governance);
    assert!(retention.until > Utc::now() + Duration::hours(23), "{retention:?}");
    assert!(backend.retention("config").await.expect("retention").is_some(), "the config is locked too");
}
