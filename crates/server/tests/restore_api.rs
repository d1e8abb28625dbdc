//! Restore points and restores through the API, against the in-process simulator whose demo
//! VM has real file systems (xenvault-fixtures) and a local repository holding a real
//! backup of it: listing and filtering, browsing the ext4 root, file and archive downloads
//! compared with the fixtures' manifest, paths that try to leave the file system, a disk
//! restore tracked to success, and a cancelled one that leaves nothing behind.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use common::{TestServer, assert_error, start};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::{Level, Requested};
use xenvault_fixtures::{DiskManifest, EntryKind};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_repo::{InitOptions, KdfParams, Repository, Secret};
use xenvault_sim::client::SimClient;
use xenvault_sim::{DemoDisks, SimConfig, Simulator};
use xenvault_xapi::Value as XapiValue;

const PASSPHRASE: &str = "repository passphrase";
const VM: &str = "debian-web";
/// The demo VM with a GPT disk: FAT32 EFI partition and NTFS.
const WINDOWS_VM: &str = "win-fileserver";
const JOB: &str = "nightly-job-id";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn sim_sha256(sim: &SimClient, vdi_uuid: &str) -> String {
    sim.call("sim.sha256", vec![XapiValue::from(vdi_uuid)]).await.unwrap().as_str().unwrap().to_owned()
}

async fn vdi_count(client: &xenvault_xapi::Client) -> usize {
    client.call("VDI.get_all", &[]).await.unwrap().as_array().unwrap().len()
}

/// The files below `dir` of the root file system's manifest: member name ("etc/hostname")
/// → sha256.
fn manifest_files(manifest: &DiskManifest, volume: &str, dir: &str) -> BTreeMap<String, String> {
    let fs = manifest.volumes.iter().find(|v| v.name == volume).and_then(|v| v.fs.as_ref()).expect("volume with files");
    fs.files
        .iter()
        .filter(|f| f.kind == EntryKind::File && f.path.starts_with(&format!("{dir}/")))
        .map(|f| (f.path.trim_start_matches('/').to_owned(), f.sha256.clone().expect("file digest")))
        .collect()
}

/// Polls a restore until it is no longer running.
async fn finished(server: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let restore = server.get_json(&format!("/api/restores/{id}"), token).await;
        if restore["status"] != "running" {
            return restore;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("restore {id} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_points_browse_download_and_tracked_restores() {
    // The simulated pool with real file systems on the demo VM's disks, and a backup of it.
    let dir = tempfile::tempdir().unwrap();
    let sim_dir = dir.path().join("sim");
    let sim_handle =
        Simulator::start(SimConfig { demo_disks: DemoDisks::Fixtures, ..SimConfig::new(&sim_dir) }).await.unwrap();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim_handle.cert_pem).unwrap();
    let login = PoolLogin {
        name: "sim".into(),
        entry: PoolEntry {
            url: sim_handle.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(&fingerprint).unwrap(),
        },
        password: sim_handle.password.clone(),
    };
    let host = xenvault_pool::Host::connect(&login).await.unwrap();
    let client = xenvault_pool::host::connect(&login).await.unwrap();
    let sim = SimClient::login(&sim_handle.url, &sim_handle.password).await.unwrap();
    let location = dir.path().join("repo").to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = Repository::init(&location, &Default::default(), options).await.unwrap();
    let backup = BackupOptions {
        selectors: vec![Selector::NameOrUuid(VM.into()), Selector::NameOrUuid(WINDOWS_VM.into())],
        level: Level::Full,
        strategy: Requested::Auto,
        job_id: Some(JOB.into()),
        ..Default::default()
    };
    let store = Store::from_repository(repo.clone());
    let report = job::backup(&host, &store, &backup, xenvault_types::progress::HiddenProgress::shared()).await.unwrap();
    let point_of = |name: &str| {
        let vm = report.vms.iter().find(|vm| vm.vm_name == name).expect("the VM was backed up");
        vm.restore_point.clone().unwrap_or_else(|| panic!("{name}: {:?}", vm.error))
    };
    let (point_id, windows_point) = (point_of(VM), point_of(WINDOWS_VM));
    let point = repo.restore_point(&point_id).await.unwrap();
    let root_disk = point.disks.iter().min_by_key(|d| d.position).unwrap();
    let backed_up_sha = sim_sha256(&sim, &root_disk.uuid).await;
    let fixture = |name: &str| -> DiskManifest {
        let path = sim_dir.join("fixtures").join(format!("{name}.manifest.json"));
        serde_json::from_slice(&std::fs::read(&path).expect("fixtures manifest")).unwrap()
    };
    let (root_manifest, windows_manifest) = (fixture("linux-root"), fixture("windows"));

    // The server knows the pool and the repository.
    let server = start().await;
    let admin = server.token("admin").await;
    let operator = server.token("operator").await;
    let reader = server.token("read-only").await;
    let post = |path: &str, token: &str, body: Value| server.with_token(Method::POST, path, token).json(&body).send();
    let pool =
        json!({"name": "sim", "url": sim_handle.url, "password": sim_handle.password, "fingerprint": fingerprint});
    assert_eq!(post("/api/pools", &admin, pool).await.unwrap().status(), StatusCode::CREATED);
    let repository = json!({"name": "local", "location": location, "passphrase": PASSPHRASE});
    assert_eq!(post("/api/repositories", &admin, repository).await.unwrap().status(), StatusCode::CREATED);

    // Listing and filters.
    let points = "/api/repositories/local/restore-points";
    assert_eq!(server.get_json(points, &reader).await["total"], 2);
    let page = server.get_json(&format!("{points}?vm={VM}"), &reader).await;
    assert_eq!(page["total"], 1, "{page}");
    let listed = &page["restore_points"][0];
    assert_eq!(listed["id"], point_id.as_str());
    assert_eq!((listed["vm_name"].as_str(), listed["level"].as_str()), (Some(VM), Some("full")));
    assert_eq!(listed["job_id"], JOB);
    assert_eq!(listed["size"], point.total_size());
    let positions: Vec<u64> =
        listed["disks"].as_array().unwrap().iter().map(|d| d["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, point.disks.iter().map(|d| u64::from(d.position)).collect::<Vec<_>>());
    for (filter, total) in [
        (format!("vm={}", point.source.id), 1),
        (format!("job={JOB}"), 2),
        (format!("job={JOB}&vm={WINDOWS_VM}"), 1),
        ("tag=level:full".to_owned(), 2),
        ("tag=nope".to_owned(), 0),
        ("job=another".to_owned(), 0),
        ("vm=no-such-vm".to_owned(), 0),
        ("since=2100-01-01T00:00:00Z".to_owned(), 0),
        ("until=2100-01-01T00:00:00Z".to_owned(), 2),
    ] {
        let page = server.get_json(&format!("{points}?{filter}"), &reader).await;
        assert_eq!(page["total"], total, "{filter}: {page}");
    }
    let beyond = server.get_json(&format!("{points}?limit=1&offset=2"), &reader).await;
    assert_eq!((beyond["total"].as_u64(), beyond["restore_points"].as_array().unwrap().len()), (Some(2), 0));
    let second = server.get_json(&format!("{points}?limit=1&offset=1"), &reader).await;
    assert_eq!(second["restore_points"].as_array().unwrap().len(), 1);
    let bad = server.with_token(Method::GET, &format!("{points}?since=yesterday"), &reader).send().await.unwrap();
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid").await;
    let detail = server.get_json(&format!("{points}/{}", &point_id[..8]), &reader).await;
    assert_eq!(detail["id"], point_id.as_str());
    assert_eq!(detail["restorable_as_vm"], true);
    let missing = server.with_token(Method::GET, &format!("{points}/ffffffff"), &reader).send().await.unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    let missing =
        server.with_token(Method::GET, "/api/repositories/nope/restore-points", &reader).send().await.unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;

    // Browsing the root disk: its volumes, then the ext4 root file system.
    let disk = format!("{points}/{point_id}/disks/{}", root_disk.position);
    let volumes = server.get_json(&format!("{disk}/volumes"), &reader).await;
    let p1 = volumes.as_array().unwrap().iter().find(|v| v["name"] == "p1").expect("p1");
    assert_eq!((p1["content"].as_str(), p1["browsable"].as_bool()), (Some("ext4"), Some(true)));
    assert!(volumes.as_array().unwrap().iter().any(|v| v["content"] == "swap"), "{volumes}");
    let root = format!("{disk}/volumes/p1");
    let etc = server.get_json(&format!("{root}/entries?path=/etc"), &reader).await;
    let hostname = etc.as_array().unwrap().iter().find(|e| e["name"] == "hostname").expect("hostname");
    assert_eq!((hostname["kind"].as_str(), hostname["size"].as_u64()), (Some("file"), Some(11)));
    let expected_etc = manifest_files(&root_manifest, "p1", "/etc");
    let listed_files = etc.as_array().unwrap().iter().filter(|e| e["kind"] == "file").count();
    let direct_files = expected_etc.keys().filter(|name| name.matches('/').count() == 1).count();
    assert_eq!(listed_files, direct_files, "{etc}");

    // One file's bytes, as the fixture wrote them; downloads need the operator role.
    let root_fs = root_manifest.volumes.iter().find(|v| v.name == "p1").and_then(|v| v.fs.as_ref()).unwrap();
    let largest = root_fs.files.iter().filter(|f| f.kind == EntryKind::File).max_by_key(|f| f.size).unwrap();
    let (largest, largest_sha) = (largest.path.clone(), largest.sha256.clone().unwrap());
    let file_url =
        format!("{root}/files?path={}", url::form_urlencoded::byte_serialize(largest.as_bytes()).collect::<String>());
    let get_file = |token: &str| server.with_token(Method::GET, &file_url, token).send();
    assert_error(get_file(&reader).await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;
    let download = get_file(&operator).await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["content-type"], "application/octet-stream");
    let disposition = download.headers()["content-disposition"].to_str().unwrap().to_owned();
    let name = largest.rsplit('/').next().unwrap();
    assert!(disposition.starts_with("attachment;") && disposition.contains(name), "{disposition}");
    assert_eq!(sha256_hex(&download.bytes().await.unwrap()), largest_sha, "{largest}");

    // /etc as tar and as zip: every file of the fixture, byte for byte.
    let tar = server.with_token(Method::GET, &format!("{root}/archive?path=/etc"), &operator).send().await.unwrap();
    assert_eq!(tar.status(), StatusCode::OK);
    assert_eq!(tar.headers()["content-type"], "application/x-tar");
    assert!(tar.headers()["content-disposition"].to_str().unwrap().contains("etc.tar"));
    let tar = tar.bytes().await.unwrap();
    let mut from_tar = BTreeMap::new();
    for member in tar::Archive::new(tar.as_ref()).entries().unwrap() {
        let mut member = member.unwrap();
        if member.header().entry_type() == tar::EntryType::Regular {
            let name = member.path().unwrap().to_str().unwrap().to_owned();
            let mut bytes = Vec::new();
            member.read_to_end(&mut bytes).unwrap();
            from_tar.insert(name, sha256_hex(&bytes));
        }
    }
    assert_eq!(from_tar, expected_etc);
    let zip = server
        .with_token(Method::GET, &format!("{root}/archive?path=/etc&format=zip"), &operator)
        .send()
        .await
        .unwrap();
    assert_eq!(zip.status(), StatusCode::OK);
    assert_eq!(zip.headers()["content-type"], "application/zip");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip.bytes().await.unwrap())).unwrap();
    let mut from_zip = BTreeMap::new();
    for n in 0..zip.len() {
        let mut member = zip.by_index(n).unwrap();
        if member.is_file() && !member.is_symlink() {
            let mut bytes = Vec::new();
            member.read_to_end(&mut bytes).unwrap();
            from_zip.insert(member.name().to_owned(), sha256_hex(&bytes));
        }
    }
    assert_eq!(from_zip, expected_etc);

    // The Windows disk's NTFS partition: its largest file, byte for byte.
    let windows_disk = format!("{points}/{windows_point}/disks/0");
    let volumes = server.get_json(&format!("{windows_disk}/volumes"), &reader).await;
    let ntfs = volumes.as_array().unwrap().iter().find(|v| v["content"] == "ntfs").expect("an NTFS volume");
    let ntfs_name = ntfs["name"].as_str().unwrap();
    let ntfs_files = windows_manifest.volumes.iter().find(|v| v.name == ntfs_name).and_then(|v| v.fs.as_ref()).unwrap();
    let biggest = ntfs_files.files.iter().filter(|f| f.kind == EntryKind::File).max_by_key(|f| f.size).unwrap();
    let parent = biggest.path.rsplit_once('/').map(|(dir, _)| if dir.is_empty() { "/" } else { dir }).unwrap();
    let encode = |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let ntfs_root = format!("{windows_disk}/volumes/{ntfs_name}");
    let listed = server.get_json(&format!("{ntfs_root}/entries?path={}", encode(parent)), &reader).await;
    let name = biggest.path.rsplit('/').next().unwrap();
    let seen = listed.as_array().unwrap().iter().find(|e| e["name"] == name).expect("listed");
    assert_eq!(seen["size"], biggest.size);
    let url = format!("{ntfs_root}/files?path={}", encode(&biggest.path));
    let bytes = server.with_token(Method::GET, &url, &operator).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(Some(sha256_hex(&bytes)), biggest.sha256, "{}", biggest.path);

    // Paths that try to leave the file system, and ones that are not there.
    for bad in ["/etc/../../x", "..", "../etc/hostname"] {
        for endpoint in ["entries", "files", "archive"] {
            let url = format!("{root}/{endpoint}?path={bad}");
            let answer = server.with_token(Method::GET, &url, &operator).send().await.unwrap();
            assert_error(answer, StatusCode::BAD_REQUEST, "invalid_path").await;
        }
    }
    let answer =
        server.with_token(Method::GET, &format!("{root}/files?path=/etc/nope"), &operator).send().await.unwrap();
    assert_error(answer, StatusCode::NOT_FOUND, "not_found").await;
    let answer = server.with_token(Method::GET, &format!("{root}/files?path=/etc"), &operator).send().await.unwrap();
    assert_error(answer, StatusCode::BAD_REQUEST, "not_a_file").await;
    let answer =
        server.with_token(Method::GET, &format!("{root}/archive?path=/etc/hostname"), &operator).send().await.unwrap();
    assert_error(answer, StatusCode::BAD_REQUEST, "not_a_directory").await;
    let answer = server.with_token(Method::GET, &format!("{disk}/volumes/p9/entries"), &reader).send().await.unwrap();
    assert_error(answer, StatusCode::NOT_FOUND, "not_found").await;

    // A disk restored into a new VDI, tracked to success; its bytes are the backup's.
    let sr = client.call("SR.get_by_name_label", &[XapiValue::from("Local storage")]).await.unwrap();
    let sr = sr.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let sr_uuid =
        client.call("SR.get_uuid", &[XapiValue::from(sr.as_str())]).await.unwrap().as_str().unwrap().to_owned();
    let request = json!({"kind": "disk", "repository": "local", "restore_point": point_id, "pool": "sim",
        "disk": root_disk.position.to_string(), "sr": sr_uuid, "name_label": "restored by the API"});
    let refused = post("/api/restores", &reader, request.clone()).await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let mut unconfirmed = request.clone();
    unconfirmed["vdi"] = json!(root_disk.uuid);
    unconfirmed.as_object_mut().unwrap().remove("sr");
    unconfirmed.as_object_mut().unwrap().remove("name_label");
    let refused = post("/api/restores", &operator, unconfirmed).await.unwrap();
    assert_error(refused, StatusCode::BAD_REQUEST, "confirmation_required").await;
    let started = post("/api/restores", &operator, request.clone()).await.unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let started: Value = started.json().await.unwrap();
    assert_eq!((started["status"].as_str(), started["kind"].as_str()), (Some("running"), Some("disk")));
    let done = finished(&server, &reader, started["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    let new_vdi = done["report"]["vdi_uuid"].as_str().expect("the new VDI");
    assert_eq!(done["report"]["name_label"], "restored by the API");
    assert_eq!(sim_sha256(&sim, new_vdi).await, backed_up_sha);
    assert!(done["progress"].as_array().unwrap().iter().any(|p| p["phase"] == "restore" && p["done"] == p["total"]));

    // Files: /etc extracted into the server's restore root, byte for byte.
    let files = |destination: &str| {
        json!({"kind": "files", "repository": "local", "restore_point": point_id,
            "disk": root_disk.position.to_string(), "volume": "p1", "path": "/etc", "destination": destination})
    };
    let restore_root = server.data_dir.path().join("restores");
    let started: Value = post("/api/restores", &operator, files("extracted/etc")).await.unwrap().json().await.unwrap();
    let done = finished(&server, &reader, started["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["report"]["files"], expected_etc.len());
    assert_eq!(done["report"]["destination"], restore_root.join("extracted/etc").to_str().unwrap());
    for (name, sha) in &expected_etc {
        let local = restore_root.join("extracted").join(name);
        assert_eq!(&sha256_hex(&std::fs::read(&local).unwrap()), sha, "{name}");
    }
    let mut outside = files("again");
    outside["path"] = json!("/etc/../..");
    assert_error(post("/api/restores", &operator, outside).await.unwrap(), StatusCode::BAD_REQUEST, "invalid_path")
        .await;
    // An operator writes only inside the restore root: not elsewhere on the server, not over
    // an earlier restore, and not through a link (restored trees carry links).
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for destination in [elsewhere.join("etc").to_str().unwrap(), "../elsewhere/etc", "extracted/./../x", ""] {
        let refused = post("/api/restores", &operator, files(destination)).await.unwrap();
        assert_error(refused, StatusCode::BAD_REQUEST, "invalid").await;
    }
    std::os::unix::fs::symlink(&elsewhere, restore_root.join("link")).unwrap();
    for destination in ["extracted/etc", "link/etc"] {
        let refused = post("/api/restores", &operator, files(destination)).await.unwrap();
        assert_error(refused, StatusCode::BAD_REQUEST, "restore_target").await;
    }
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through the link");
    let started_template = json!({"kind": "vm", "repository": "local", "restore_point": point_id, "pool": "sim",
        "as_template": true, "start": true});
    assert_error(post("/api/restores", &operator, started_template).await.unwrap(), StatusCode::BAD_REQUEST, "invalid")
        .await;

    // Cancelled while it runs (every pool call is slowed down to a second, so it is still
    // going when the cancel comes): the VDI it made is removed again.
    let vdis = vdi_count(&client).await;
    sim.call("sim.set_latency", vec![XapiValue::from("1000")]).await.unwrap();
    let started: Value = post("/api/restores", &operator, request).await.unwrap().json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    let cancel = post(&format!("/api/restores/{id}/cancel"), &operator, json!({})).await.unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let done = finished(&server, &reader, &id).await;
    sim.call("sim.set_latency", vec![XapiValue::from("0")]).await.unwrap();
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(vdi_count(&client).await, vdis, "the cancelled restore's VDI was removed");
    let again = post(&format!("/api/restores/{id}/cancel"), &operator, json!({})).await.unwrap();
    assert_error(again, StatusCode::CONFLICT, "conflict").await;

    // Both stay in the history; the audit log names who did what.
    let history = server.get_json("/api/restores", &reader).await;
    assert_eq!(history["total"], 3, "{history}");
    assert_eq!(server.get_json("/api/restores?status=cancelled", &reader).await["total"], 1);
    let audit = server.get_json("/api/audit", &admin).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["restore-point.download", "restore-point.archive", "restore.start", "restore.cancel"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    server.server.shutdown().await;
}
