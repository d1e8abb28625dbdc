//! `xenvault lock` and `backup --lock-days` through the binary against SeaweedFS's S3
//! gateway with object lock: the retention each restore point's objects get, read back
//! through the library.

// The storage servers are the repository tests' own, shared rather than copied.
#[path = "../../repo/tests/common/mod.rs"]
mod common;
mod standalone_sim;

use chrono::{Duration, Utc};
use common::object_lock;
use standalone_sim::StandaloneSim;
use std::process::Command;
use xenvault_repo::backend::{self, ObjectStore, RetentionMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_lock_days_locks_each_new_restore_point_on_s3() {
    let server = common::s3();
    let endpoint = server.options().s3_endpoint.expect("endpoint");
    let url = format!("s3://{}/repo", object_lock::object_lock_bucket(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = StandaloneSim::start(&dir.path().join("sim"), &["--blank-disks-mib", "4"]);
    let sim_url = sim.url.clone();

    let password = dir.path().join("pool.password");
    std::fs::write(&password, "xenvault").expect("password file");
    let xenvault = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_xenvault"))
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
    let url = format!("s3://{}/repo", object_lock::object_lock_bucket(&endpoint));
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
        let output = Command::new(env!("CARGO_BIN_EXE_xenvault"))
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
    assert_eq!(report["mode"], "governance", "{report}");

    let backend = backend::open(&url, &server.options()).expect("open");
    let retention = backend.retention(&format!("snapshots/{id}")).await.expect("retention");
    let retention = retention.unwrap_or_else(|| panic!("the restore point's manifest is not locked"));
    assert_eq!(retention.mode, RetentionMode::Governance);
    assert!(retention.until > Utc::now() + Duration::hours(23), "{retention:?}");
    assert!(backend.retention("config").await.expect("retention").is_some(), "the config is locked too");

    // A governance retention may be extended.
    xenvault(&["lock", id, "--days", "2"]);
    let extended = backend.retention(&format!("snapshots/{id}")).await.expect("retention");
    assert!(extended.is_some_and(|r| r.until > retention.until + Duration::hours(23)), "{extended:?}");
}
