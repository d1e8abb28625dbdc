//! A restore point's disk out of the server, checked with real third-party readers: exported
//! as raw (byte for byte), VHD and qcow2 (qemu-img compare against the original image), and
//! served over NBD by instant access, plain and with TLS, read back whole by libnbd's
//! nbdcopy; an export name nobody was given is refused, and a stopped one is gone.

mod common;

use std::path::Path;

use common::{TestServer, assert_error, start};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xenvault_repo::image::{ImageBackupOptions, backup_images};
use xenvault_repo::{ImageFormat, InitOptions, KdfParams, Repository, Secret};

const PASSPHRASE: &str = "repository passphrase";
const MIB: usize = 1 << 20;

/// 20 MiB: data, an 8 MiB hole, data again, and a short tail, so the sparse formats leave
/// something out and the last block is partial.
fn disk_image() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes: Vec<u8> = (0..20 * MIB + 4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    bytes[4 * MIB..12 * MIB].fill(0);
    bytes
}

/// Runs a command, failing the test with its output when it fails.
async fn run(program: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(program).args(args).output().await.unwrap_or_else(|e| {
        panic!("{program} did not start ({e}): apt-get install qemu-utils libnbd-bin (scripts/setup.sh)")
    })
}

async fn succeeds(program: &str, args: &[&str]) {
    let output = run(program, args).await;
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The server with the repository registered, holding `image` as a restore point; returns
/// the server, an operator token and the restore point's id.
async fn server_with_image(dir: &Path, image: &Path) -> (TestServer, String, String) {
    let location = dir.join("repo").to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = Repository::init(&location, &Default::default(), options).await.unwrap();
    let backup = ImageBackupOptions {
        files: vec![image.to_owned()],
        format: ImageFormat::Raw,
        source_id: Some("imported-disk".into()),
        tags: Vec::new(),
    };
    let report = backup_images(&repo, &backup, xenvault_types::progress::HiddenProgress::shared()).await.unwrap();
    let server = start().await;
    let admin = server.token("admin").await;
    let repository = json!({"name": "local", "location": location, "passphrase": PASSPHRASE});
    let added = server.with_token(Method::POST, "/api/repositories", &admin).json(&repository).send().await.unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let operator = server.token("operator").await;
    (server, operator, report.snapshot.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_exported_as_raw_vhd_and_qcow2_equals_the_backed_up_image() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.raw");
    let image = disk_image();
    std::fs::write(&original, &image).unwrap();
    let (server, operator, point) = server_with_image(dir.path(), &original).await;
    let export = format!("/api/repositories/local/restore-points/{point}/disks/0/export");

    let raw = server.with_token(Method::GET, &format!("{export}?format=raw"), &operator).send().await.unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.headers()["content-length"], image.len().to_string().as_str());
    let disposition = raw.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.contains("original.raw-disk0-") && disposition.contains(".raw\""), "{disposition}");
    assert!(raw.bytes().await.unwrap() == image, "the raw export differs from the image");

    for (format, driver) in [("vhd", "vpc"), ("qcow2", "qcow2")] {
        let answer =
            server.with_token(Method::GET, &format!("{export}?format={format}"), &operator).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{format}");
        let path = dir.path().join(format!("export.{format}"));
        let bytes = answer.bytes().await.unwrap();
        assert!(bytes.len() < image.len(), "{format}: the hole is left out ({} bytes)", bytes.len());
        std::fs::write(&path, &bytes).unwrap();
        let (path, original) = (path.to_str().unwrap(), original.to_str().unwrap());
        succeeds("qemu-img", &["compare", "-f", driver, "-F", "raw", path, original]).await;
    }

    let reader = server.token("read-only").await;
    let refused = server.with_token(Method::GET, &format!("{export}?format=raw"), &reader).send().await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let unknown = server.with_token(Method::GET, &format!("{export}?format=vmdk"), &operator).send().await.unwrap();
    assert_error(unknown, StatusCode::BAD_REQUEST, "invalid").await;
    let no_disk = format!("/api/repositories/local/restore-points/{point}/disks/7/export?format=raw");
    let missing = server.with_token(Method::GET, &no_disk, &operator).send().await.unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    server.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_access_serves_the_disk_over_nbd_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.raw");
    let image = disk_image();
    std::fs::write(&original, &image).unwrap();
    let (server, operator, point) = server_with_image(dir.path(), &original).await;
    let start_access = |tls: bool| {
        let body = json!({"repository": "local", "restore_point": &point[..8], "disk": 0, "tls": tls});
        server.with_token(Method::POST, "/api/instant-access", &operator).json(&body).send()
    };

    let plain = start_access(false).await.unwrap();
    assert_eq!(plain.status(), StatusCode::CREATED);
    let plain: Value = plain.json().await.unwrap();
    let url = plain["url"].as_str().unwrap().to_owned();
    let export = plain["export"].as_str().unwrap();
    assert!(url.starts_with("nbd://127.0.0.1:") && url.ends_with(export) && export.len() == 32, "{plain}");
    assert_eq!(
        (plain["restore_point"].as_str(), plain["size"].as_u64()),
        (Some(point.as_str()), Some(image.len() as u64))
    );
    let copy = dir.path().join("nbd.raw");
    succeeds("nbdcopy", &[&url, copy.to_str().unwrap()]).await;
    assert!(std::fs::read(&copy).unwrap() == image, "the disk read over NBD differs from the image");
    // Another name on the same port is refused.
    let guessed = format!("{}/{}", url.rsplit_once('/').unwrap().0, "0".repeat(32));
    assert!(!run("nbdinfo", &[&guessed]).await.status.success(), "{guessed} was answered");

    let tls = start_access(true).await.unwrap();
    assert_eq!(tls.status(), StatusCode::CREATED);
    let tls: Value = tls.json().await.unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    std::fs::write(pki.join("ca-cert.pem"), tls["certificate_pem"].as_str().unwrap()).unwrap();
    let tls_url = format!("{}?tls-certificates={}", tls["url"].as_str().unwrap(), pki.display());
    assert!(tls_url.starts_with("nbds://"), "{tls_url}");
    let tls_copy = dir.path().join("nbds.raw");
    succeeds("nbdcopy", &[&tls_url, tls_copy.to_str().unwrap()]).await;
    assert!(std::fs::read(&tls_copy).unwrap() == image, "the disk read over NBD with TLS differs from the image");

    let listed = server.get_json("/api/instant-access", &operator).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let reader = server.token("read-only").await;
    let refused = server.with_token(Method::GET, "/api/instant-access", &reader).send().await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;

    let stop = |id: &str| server.with_token(Method::DELETE, &format!("/api/instant-access/{id}"), &operator).send();
    let id = plain["id"].as_str().unwrap();
    assert_eq!(stop(id).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(!run("nbdinfo", &[&url]).await.status.success(), "{url} still answers after the stop");
    assert_error(stop(id).await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let listed = server.get_json("/api/instant-access", &operator).await;
    assert_eq!(listed[0]["id"], tls["id"], "{listed}");

    let body = json!({"repository": "local", "restore_point": point, "disk": 3});
    let no_disk = server.with_token(Method::POST, "/api/instant-access", &operator).json(&body).send().await.unwrap();
    assert_error(no_disk, StatusCode::NOT_FOUND, "not_found").await;
    server.server.shutdown().await;
}
