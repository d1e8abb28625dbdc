//! A repository written by xenvault f6c2395 (restore-point metadata layout 1, see
//! tests/data/format-v1/README.md) opens with today's code: its restore points list, every
//! disk reads back exactly, the XVA point writes an XVA again, and the VM restores into a
//! simulated pool with its VM record fields and VIF.

mod common;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xenvault_repo::{DiskReader, Manifest, Repository};
use xenvault_restore::RepoDisk;
use xenvault_restore::export::{DiskFormat, export};
use xenvault_restore::vm::{VmRestoreOptions, restore_vm};
use xenvault_types::metadata::{Level, VmMetadata};
use xenvault_types::progress::{HiddenProgress, Phase, Task};
use xenvault_xapi::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v1")
}

/// One line of expected.txt: what a disk of a restore point holds.
struct Expected {
    label: String,
    id: String,
    position: String,
    sha256: String,
}

fn expected() -> Vec<Expected> {
    let text = std::fs::read_to_string(data().join("expected.txt")).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            Expected { label: f[0].into(), id: f[1].into(), position: f[2].into(), sha256: f[3].into() }
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The checked-in repository, opened from a copy (opening may write locks and caches).
async fn open(scratch: &Path) -> Repository {
    copy_dir(&data().join("repo"), &scratch.join("repo"));
    let passphrase = std::fs::read_to_string(data().join("passphrase")).unwrap();
    let secret = xenvault_repo::keys::Secret::passphrase(passphrase);
    Repository::open(scratch.join("repo").to_str().unwrap(), &Default::default(), Some(&secret)).await.unwrap()
}

async fn point(repo: &Repository, e: &Expected) -> Manifest {
    repo.restore_point(&e.id).await.unwrap_or_else(|err| panic!("{} {}: {err}", e.label, e.id))
}

async fn raw_sha256(repo: &Repository, m: &Manifest, position: &str) -> String {
    let reader = Arc::new(DiskReader::new(repo, m.disk(Some(position)).unwrap()).await.unwrap());
    let disk = RepoDisk::new(reader, tokio::runtime::Handle::current());
    let raw = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        export(&disk, DiskFormat::Raw, &mut out, &Task::hidden(Phase::Export), &Default::default()).map(|_| out)
    })
    .await
    .unwrap()
    .unwrap();
    hex::encode(sha2::Sha256::digest(&raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_1_points_list_and_every_disk_reads_back_exactly() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = open(scratch.path()).await;
    let expected = expected();
    let mut ids: Vec<String> = repo.restore_points().await.unwrap().into_iter().map(|m| m.id).collect();
    let mut wanted: Vec<String> = expected.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    wanted.sort();
    wanted.dedup();
    assert_eq!(ids, wanted);

    for e in &expected {
        let m = point(&repo, e).await;
        assert_eq!(raw_sha256(&repo, &m, &e.position).await, e.sha256, "{} disk {}", e.label, e.position);
        let meta = VmMetadata::from_value(&m.metadata).unwrap();
        let Some(meta) = meta else {
            assert_eq!(e.label, "image", "only the backup-image point has no VM metadata");
            continue;
        };
        let level = match e.label.as_str() {
            "full" => Level::Full,
            "inc" => Level::Inc,
            _ => Level::Copy,
        };
        assert_eq!(meta.backup.level, level);
        assert_eq!((meta.vm.name_label.as_str(), meta.vm.uuid.as_str()), ("debian-web", m.source.id.as_str()));
        assert_eq!(meta.backup.pool.as_deref(), Some("sim"));
        assert_eq!(meta.xva.is_some(), e.label == "xva");
        let disk = meta.disks.iter().find(|d| d.position == e.position).unwrap();
        assert_eq!(disk.vdi_uuid, m.disk(Some(&e.position)).unwrap().uuid);
        let strategy = if e.label == "inc" { "cbt" } else { "full-read" };
        assert_eq!((disk.strategy.as_str(), disk.size), (strategy, 8 << 20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_1_xva_point_writes_an_xva_again() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = open(scratch.path()).await;
    let e = expected().into_iter().find(|e| e.label == "xva").unwrap();
    let m = point(&repo, &e).await;
    let xva = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        xenvault_restore::xva::export_xva(&repo, &m, &mut out, &Task::hidden(Phase::Export), &Default::default())
            .map(|_| out)
    })
    .await
    .unwrap()
    .unwrap();
    let reader = xenvault_xva::XvaReader::new(std::io::Cursor::new(xva)).unwrap();
    let names: Vec<String> = reader
        .objects()
        .iter()
        .filter(|o| o.class == "VM")
        .map(|o| o.snapshot.get("name_label").and_then(Value::as_str).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["debian-web"]);
    assert_eq!(reader.disks().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_1_vm_restores_into_a_pool_with_its_record_and_vif() {
    let p = common::pool().await;
    let repo = open(p.dir.path()).await;
    let expected = expected();
    let inc: Vec<&Expected> = expected.iter().filter(|e| e.label == "inc").collect();
    let m = point(&repo, inc[0]).await;
    let stored = VmMetadata::from_value(&m.metadata).unwrap().unwrap();

    let report =
        restore_vm(&p.client, &repo, &m, &VmRestoreOptions::default(), HiddenProgress::shared()).await.unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let vm = common::call_str(&p.client, "VM.get_by_uuid", &[&report.vm_uuid]).await;
    let record = p.client.call("VM.get_record", &[Value::from(vm.as_str())]).await.unwrap();
    let field = |name: &str| record.get(name).cloned().unwrap_or_else(|| panic!("no {name} in {record:?}"));
    assert!(field("name_label").as_str().unwrap().starts_with("debian-web (restored "), "{record:?}");
    let number = |name: &str| match field(name) {
        Value::Int(n) => n as u64,
        Value::Str(s) => s.parse().unwrap(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(number("memory_static_max"), stored.vm.memory_static_max);
    assert_eq!(number("memory_dynamic_max"), stored.vm.memory_dynamic_max);
    assert_eq!(number("VCPUs_max"), stored.vm.vcpus_max);
    assert_eq!(field("name_description").as_str(), Some(stored.vm.name_description.as_str()));
    let platform: Vec<(String, String)> = match field("platform") {
        Value::Struct(m) => m.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned())).collect(),
        other => panic!("platform: {other:?}"),
    };
    assert_eq!(platform, stored.vm.platform.clone().into_iter().collect::<Vec<_>>());
    assert!(!stored.vm.platform.is_empty());

    // The VIF: same device, MAC (the original VM is not in this pool) and MTU, on the network of the same name.
    let vifs = p.client.call("VM.get_VIFs", &[Value::from(vm.as_str())]).await.unwrap();
    let vifs = vifs.as_array().unwrap();
    assert_eq!(vifs.len(), 1);
    let vif = p.client.call("VIF.get_record", &[vifs[0].clone()]).await.unwrap();
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    assert_eq!((text(&vif, "device"), text(&vif, "MAC")), ("0".to_owned(), "52:54:00:12:34:01".to_owned()));
    let network = common::call_str(&p.client, "network.get_name_label", &[&text(&vif, "network")]).await;
    assert_eq!(network, "Pool-wide network associated with eth0");

    // Disks at the same positions, holding what was backed up.
    assert_eq!(report.disks.len(), inc.len());
    for e in inc {
        let disk = report.disks.iter().find(|d| d.position == e.position).unwrap();
        assert_eq!(common::sha256(&p.sim, &disk.vdi_uuid).await, e.sha256, "disk {}", e.position);
    }
}
