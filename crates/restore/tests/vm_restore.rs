//! Whole-VM restore on the simulator: as a new VM, over the original, and differential;
//! each gives disks whose `sim.sha256` equals the restore point's.

use base64::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;
use xenvault_engine::config::{PoolEntry, PoolLogin, TlsTrust};
use xenvault_engine::host::Host;
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::Status;
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::{Level, Requested};
use xenvault_engine::transfer::NoProgress;
use xenvault_restore::vm::{Mode, VmRestoreOptions, restore_vm};
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, Simulator};
use xenvault_xapi::Value;

const VM: &str = "debian-web";

async fn digests_of(host: &Host, sim: &SimClient, vm_uuid: &str) -> BTreeMap<String, String> {
    let vm = host.vms().await.unwrap().into_iter().find(|v| v.uuid == vm_uuid).unwrap();
    let mut out = BTreeMap::new();
    for (vbd, vdi) in host.disks(&vm).await.unwrap() {
        let d = sim.call("sim.sha256", vec![Value::from(vdi.uuid.as_str())]).await.unwrap();
        out.insert(vbd.userdevice, d.as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_new_over_the_original_and_differential() {
    let dir = tempfile::tempdir().unwrap();
    let sim_handle = Simulator::start(SimConfig::new(dir.path().join("sim"))).await.unwrap();
    let fingerprint = xenvault_engine::config::fingerprint_of_pem(&sim_handle.cert_pem).unwrap();
    let login = PoolLogin {
        name: "test".into(),
        entry: PoolEntry { url: sim_handle.url.clone(), user: "root".into(), tls: TlsTrust::Fingerprint(fingerprint) },
        password: sim_handle.password.clone(),
    };
    let host = Host::connect(&login).await.unwrap();
    let client = xenvault_restore::vm::connect(&login).await.unwrap();
    let sim = SimClient::login(&sim_handle.url, &sim_handle.password).await.unwrap();
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = xenvault_repo::Repository::init(dir.path().join("repo").to_str().unwrap(), &Default::default(), options).await.unwrap();
    let store = Store::from_repository(repo.clone());

    let original = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let backup = BackupOptions { selectors: vec![Selector::NameOrUuid(VM.into())], level: Level::Full, strategy: Requested::Auto, ..Default::default() };
    let report = job::backup(&host, &store, &backup, Arc::new(NoProgress)).await.unwrap().vms.into_iter().next().unwrap();
    assert!(matches!(report.status, Status::Ok), "{:?}", report.error);
    let expected = digests_of(&host, &sim, &original.uuid).await;
    let m = repo.snapshot(report.restore_point.as_deref().unwrap()).await.unwrap();

    // As a new VM, beside the original.
    let opts = VmRestoreOptions { mode: Mode::AsNew, differential: false, sr: None, as_template: false };
    let new = restore_vm(&client, &repo, &m, &opts, None).await.unwrap();
    assert_ne!(new.vm_uuid, original.uuid);
    assert_eq!(digests_of(&host, &sim, &new.vm_uuid).await, expected);
    let new_vm = host.vms().await.unwrap().into_iter().find(|v| v.uuid == new.vm_uuid).unwrap();
    assert_eq!(new_vm.vifs.len(), original.vifs.len());
    let mac = |vif: &str| {
        let (host, vif) = (&host, vif.to_owned());
        async move { host.record("VIF", &vif).await.unwrap().get("MAC").and_then(Value::as_str).unwrap().to_owned() }
    };
    if let (Some(a), Some(b)) = (original.vifs.first(), new_vm.vifs.first()) {
        assert_ne!(mac(a).await, mac(b).await, "the new VM took the original's MAC");
    }

    // Change a few KiB of each of the original's disks (in one 2 MiB VHD block, the
    // granularity of an import), then restore differentially over it.
    let (_, vdis): (Vec<_>, Vec<_>) = host.disks(&original).await.unwrap().into_iter().unzip();
    let guest_write = base64::engine::general_purpose::STANDARD.encode([0xa5u8; 8192]);
    for vdi in &vdis {
        let args = vec![Value::from(vdi.uuid.as_str()), Value::from((3u64 << 20).to_string()), Value::from(guest_write.as_str())];
        sim.call("sim.write", args).await.unwrap();
    }
    assert_ne!(digests_of(&host, &sim, &original.uuid).await, expected);
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: true, sr: None, as_template: false };
    let diff = restore_vm(&client, &repo, &m, &opts, None).await.unwrap();
    assert_eq!(diff.vm_uuid, original.uuid);
    assert_eq!(digests_of(&host, &sim, &original.uuid).await, expected);
    for d in &diff.disks {
        assert_eq!(d.bytes_written, 2 << 20, "differential wrote {} of {}", d.bytes_written, d.size);
    }

    // Nothing differs now: a second differential writes nothing; a full overwrite writes everything.
    let again = restore_vm(&client, &repo, &m, &opts, None).await.unwrap();
    assert!(again.disks.iter().all(|d| d.bytes_written == 0), "{:?}", again.disks);
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: false, sr: None, as_template: false };
    let full = restore_vm(&client, &repo, &m, &opts, None).await.unwrap();
    assert!(full.disks.iter().all(|d| d.bytes_written == d.size));
    assert_eq!(digests_of(&host, &sim, &original.uuid).await, expected);
    println!("{}", serde_json::to_string(&diff).unwrap());

    // An XVA export of the restore point imports into the pool with the same disks.
    let xva = dir.path().join("vm.xva");
    let (r, mm, path) = (repo.clone(), m.clone(), xva.clone());
    tokio::task::spawn_blocking(move || xenvault_restore::xva::export_xva(&r, &mm, std::fs::File::create(&path).unwrap(), None))
        .await
        .unwrap()
        .unwrap();
    let pool = client.call("pool.get_all", &[]).await.unwrap();
    let pool = pool.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let sr = client.call("pool.get_default_SR", &[Value::from(pool.as_str())]).await.unwrap();
    let sr = xenvault_xapi::Ref::new(sr.as_str().unwrap());
    let len = std::fs::metadata(&xva).unwrap().len();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(std::fs::read(&xva).unwrap()))]);
    let vms = client.import_vm(&sr, body, len, Default::default()).await.unwrap();
    let imported = host.vm(vms[0].as_ref()).await.unwrap();
    assert_eq!(digests_of(&host, &sim, &imported.uuid).await, expected);
}
