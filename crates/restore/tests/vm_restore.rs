//! Whole-VM restore on the simulator: as a new VM, over the original, and differential
//! (by CBT and by chunk hashes); each gives disks whose `sim.sha256` equals the restore
//! point's, and a differential writes what changed, as CBT on the target confirms.

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
use xenvault_restore::vm::{DiskRestore, Method, Mode, VmRestoreOptions, VmRestoreReport, restore_vm};
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

/// A simulated pool, logged-in clients and an empty repository.
struct Pool {
    dir: tempfile::TempDir,
    _sim: xenvault_sim::SimHandle,
    host: Host,
    client: xenvault_xapi::Client,
    sim: SimClient,
    repo: xenvault_repo::Repository,
    store: Store,
}

async fn pool() -> Pool {
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
    Pool { dir, _sim: sim_handle, host, client, sim, repo, store }
}

/// Backs up the VM; returns the restore point.
async fn back_up(p: &Pool, level: Level) -> xenvault_repo::Manifest {
    let backup = BackupOptions { selectors: vec![Selector::NameOrUuid(VM.into())], level, strategy: Requested::Auto, ..Default::default() };
    let report = job::backup(&p.host, &p.store, &backup, Arc::new(NoProgress)).await.unwrap().vms.into_iter().next().unwrap();
    assert!(matches!(report.status, Status::Ok), "{:?}", report.error);
    p.repo.snapshot(report.restore_point.as_deref().unwrap()).await.unwrap()
}

async fn vdis_of(host: &Host, vm: &xenvault_engine::records::Vm) -> Vec<xenvault_engine::records::Vdi> {
    host.disks(vm).await.unwrap().into_iter().map(|(_, vdi)| vdi).collect()
}

/// A guest writes `len` pseudo-random bytes at `offset` (CBT sees it).
async fn guest_write(sim: &SimClient, vdi_uuid: &str, offset: u64, len: usize, seed: u64) {
    let data = base64::engine::general_purpose::STANDARD.encode(xenvault_fixtures::random_bytes(seed, "guest", len));
    let args = vec![Value::from(vdi_uuid), Value::from(offset.to_string()), Value::from(data)];
    sim.call("sim.write", args).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_new_over_the_original_and_from_xva() {
    let p = pool().await;
    let (host, client, sim, repo) = (&p.host, &p.client, &p.sim, &p.repo);
    let original = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let m = back_up(&p, Level::Full).await;
    let expected = digests_of(host, sim, &original.uuid).await;

    // As a new VM, beside the original.
    let opts = VmRestoreOptions { mode: Mode::AsNew, differential: false, sr: None, as_template: false };
    let new = restore_vm(client, repo, &m, &opts, None).await.unwrap();
    assert_ne!(new.vm_uuid, original.uuid);
    assert_eq!(digests_of(host, sim, &new.vm_uuid).await, expected);
    let new_vm = host.vms().await.unwrap().into_iter().find(|v| v.uuid == new.vm_uuid).unwrap();
    assert_eq!(new_vm.vifs.len(), original.vifs.len());
    let mac = |vif: &str| {
        let (host, vif) = (&host, vif.to_owned());
        async move { host.record("VIF", &vif).await.unwrap().get("MAC").and_then(Value::as_str).unwrap().to_owned() }
    };
    if let (Some(a), Some(b)) = (original.vifs.first(), new_vm.vifs.first()) {
        assert_ne!(mac(a).await, mac(b).await, "the new VM took the original's MAC");
    }

    // A guest write, then a full overwrite: every byte is sent and written.
    let vdis = vdis_of(host, &original).await;
    for vdi in &vdis {
        guest_write(sim, &vdi.uuid, 3 << 20, 8192, 1).await;
    }
    assert_ne!(digests_of(host, sim, &original.uuid).await, expected);
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: false, sr: None, as_template: false };
    let full = restore_vm(client, repo, &m, &opts, None).await.unwrap();
    assert_eq!(full.vm_uuid, original.uuid);
    assert!(full.disks.iter().all(|d| d.bytes_written == d.size && d.bytes_sent == d.size && d.method.is_none()), "{:?}", full.disks);
    assert_eq!(digests_of(host, sim, &original.uuid).await, expected);

    // An XVA export of the restore point imports into the pool with the same disks.
    let xva = p.dir.path().join("vm.xva");
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
    assert_eq!(digests_of(host, sim, &imported.uuid).await, expected);
}

/// The 64 KiB CBT blocks a write touches.
fn cbt_blocks(writes: &[(u64, usize)]) -> Vec<u64> {
    let mut blocks: Vec<u64> = writes.iter().flat_map(|&(at, len)| at / 65536..(at + len as u64).div_ceil(65536)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// A differential restore of `m` over the VM, watched by CBT: a `VDI.snapshot` of each
/// disk just before, then `VDI.list_changed_blocks(snapshot, disk)` tells which 64 KiB
/// blocks the restore wrote (per disk, in `vdis` order).
async fn differential_watched(p: &Pool, m: &xenvault_repo::Manifest, vdis: &[xenvault_engine::records::Vdi]) -> (VmRestoreReport, Vec<Vec<u64>>) {
    let cbt_on = |v: &xenvault_engine::records::Vdi| {
        let (client, vdi) = (&p.client, v.reference.clone());
        async move { client.call("VDI.get_cbt_enabled", &[Value::from(vdi.as_str())]).await.unwrap().as_bool() == Some(true) }
    };
    let mut probes = Vec::new();
    for v in vdis {
        let probe = match cbt_on(v).await {
            true => Some(p.client.call("VDI.snapshot", &[Value::from(v.reference.as_str())]).await.unwrap().as_str().unwrap().to_owned()),
            false => None,
        };
        probes.push(probe);
    }
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: true, sr: None, as_template: false };
    let report = restore_vm(&p.client, &p.repo, m, &opts, None).await.unwrap();
    println!("{}", serde_json::to_string(&report.disks).unwrap());
    let mut written = Vec::new();
    for (v, probe) in vdis.iter().zip(probes) {
        let Some(probe) = probe else {
            written.push(Vec::new());
            continue;
        };
        let bitmap = p.client.call("VDI.list_changed_blocks", &[Value::from(probe.as_str()), Value::from(v.reference.as_str())]).await.unwrap();
        let changed = xenvault_xapi_wire::cbt::ChangedBlocks::decode(bitmap.as_str().unwrap()).unwrap();
        written.push(changed.changed_blocks().collect());
        p.client.call("VDI.destroy", &[Value::from(probe.as_str())]).await.unwrap();
    }
    (report, written)
}

fn disk_of<'a>(report: &'a VmRestoreReport, vdi: &xenvault_engine::records::Vdi) -> &'a DiskRestore {
    report.disks.iter().find(|d| d.vdi_uuid == vdi.uuid).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_restore_writes_what_changed() {
    let p = pool().await;
    let (host, sim) = (&p.host, &p.sim);
    let vm = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let vdis = vdis_of(host, &vm).await;
    for (n, vdi) in vdis.iter().enumerate() {
        let args = vec![Value::from(vdi.uuid.as_str()), Value::from("40"), Value::from("65536"), Value::from(n.to_string())];
        sim.call("sim.scribble", args).await.unwrap();
    }
    // The full backup leaves its snapshot as CBT metadata: the base of the CBT method.
    let first = back_up(&p, Level::Full).await;
    let first_digests = digests_of(host, sim, &vm.uuid).await;
    let write_all = |writes: &'static [(u64, usize)], seed: u64| {
        let vdis = vdis.clone();
        async move {
            for vdi in &vdis {
                for (n, &(at, len)) in writes.iter().enumerate() {
                    guest_write(sim, &vdi.uuid, at, len, seed + n as u64).await;
                }
            }
        }
    };

    // CBT: the changed 64 KiB blocks are written, the disk is not read.
    const GUEST_1: &[(u64, usize)] = &[((3 << 20) + 4096, 8192), ((5 << 20) + 62 * 1024, 4096)];
    write_all(GUEST_1, 10).await;
    let (report, written) = differential_watched(&p, &first, &vdis).await;
    assert_eq!(digests_of(host, sim, &vm.uuid).await, first_digests);
    for (vdi, written) in vdis.iter().zip(&written) {
        let d = disk_of(&report, vdi);
        assert_eq!(d.method, Some(Method::Cbt), "{:?}", d.method_reason);
        assert_eq!(d.bytes_compared, 0);
        assert_eq!(written, &cbt_blocks(GUEST_1));
        assert_eq!(d.bytes_written, 3 * 65536, "12 KiB changed in three 64 KiB blocks");
        // Two 2 MiB VHD blocks (3 MiB and 5 MiB) carry them.
        assert_eq!(d.bytes_sent, xenvault_vhd::DynamicWriter::<std::io::Sink>::output_size(d.size, 2));
    }

    // An incremental backup; its snapshot replaces the first one as the CBT base.
    const GUEST_2: &[(u64, usize)] = &[((7 << 20) + 512, 4096), ((9 << 20) + 60 * 1024, 12288)];
    write_all(GUEST_2, 20).await;
    let second = back_up(&p, Level::Inc).await;
    let second_digests = digests_of(host, sim, &vm.uuid).await;
    assert_ne!(second_digests, first_digests);

    // The older restore point: its snapshot is gone, the newer point's serves. The disk
    // has not changed since that snapshot, and the two points differ in exactly the
    // 16 KiB the guest wrote (found from chunk ids, then sector by sector): only those
    // are written, and the disk is not read.
    let (report, written) = differential_watched(&p, &first, &vdis).await;
    assert_eq!(digests_of(host, sim, &vm.uuid).await, first_digests);
    for (vdi, written) in vdis.iter().zip(&written) {
        let d = disk_of(&report, vdi);
        assert_eq!(d.method, Some(Method::Cbt), "{:?}", d.method_reason);
        let reason = d.method_reason.as_deref().unwrap();
        assert!(reason.contains("is gone") && reason.contains(second.short_id()), "{reason}");
        assert_eq!(d.bytes_compared, 0);
        assert_eq!(d.bytes_written, 4096 + 12288);
        assert_eq!(written, &cbt_blocks(GUEST_2));
    }

    // Back to the latest point with CBT: since its snapshot, only the blocks the last
    // restore wrote changed.
    let (report, written) = differential_watched(&p, &second, &vdis).await;
    assert_eq!(digests_of(host, sim, &vm.uuid).await, second_digests);
    for (vdi, written) in vdis.iter().zip(&written) {
        let d = disk_of(&report, vdi);
        assert_eq!(d.method, Some(Method::Cbt), "{:?}", d.method_reason);
        assert_eq!(d.bytes_written, cbt_blocks(GUEST_2).len() as u64 * 65536);
        assert_eq!(written, &cbt_blocks(GUEST_2));
    }

    // No CBT snapshot left: chunk hashes of the streamed disk find exactly the 4 KiB the
    // guest wrote, and CBT (still on) sees only those written.
    for vdi in &vdis {
        let snapshot = second.metadata["backup"]["disks"].as_array().unwrap().iter().find(|e| e["vdi_uuid"] == vdi.uuid.as_str()).unwrap()["snapshot_vdi_uuid"].as_str().unwrap();
        let snapshot = p.client.call("VDI.get_by_uuid", &[Value::from(snapshot)]).await.unwrap();
        p.client.call("VDI.destroy", &[snapshot]).await.unwrap();
    }
    const GUEST_3: &[(u64, usize)] = &[(12 << 20, 4096)];
    write_all(GUEST_3, 30).await;
    let (report, written) = differential_watched(&p, &second, &vdis).await;
    assert_eq!(digests_of(host, sim, &vm.uuid).await, second_digests);
    for (vdi, written) in vdis.iter().zip(&written) {
        let d = disk_of(&report, vdi);
        assert_eq!(d.method, Some(Method::Hash));
        assert!(d.method_reason.as_deref().unwrap().contains("no restore point"), "{:?}", d.method_reason);
        assert_eq!((d.bytes_written, d.bytes_compared), (4096, d.size));
        assert_eq!(written, &cbt_blocks(GUEST_3));
    }

    // CBT off: hashes again.
    for vdi in &vdis {
        p.client.call("VDI.disable_cbt", &[Value::from(vdi.reference.as_str())]).await.unwrap();
    }
    let (report, _) = differential_watched(&p, &first, &vdis).await;
    assert_eq!(digests_of(host, sim, &vm.uuid).await, first_digests);
    for d in &report.disks {
        assert_eq!(d.method, Some(Method::Hash));
        assert!(d.method_reason.as_deref().unwrap().contains("CBT is off"), "{:?}", d.method_reason);
        assert_eq!(d.bytes_written, 4096 + 12288);
    }

    // Nothing differs: nothing written, a VHD without blocks sent.
    let (report, _) = differential_watched(&p, &first, &vdis).await;
    for d in &report.disks {
        assert_eq!((d.bytes_written, d.bytes_compared), (0, d.size));
        assert_eq!(d.bytes_sent, xenvault_vhd::DynamicWriter::<std::io::Sink>::output_size(d.size, 0));
    }
}
