//! Whole-VM restore on the simulator: as a new VM, over the original, and differential
//! (by CBT and by chunk hashes); each gives disks whose `sim.sha256` equals the restore
//! point's, and a differential writes what changed, as CBT on the target confirms.

mod common;

use common::{
    Pool, VM, back_up, call_str, count, digests_of, guest_write, pool, scribble, scribble_and_back_up, vdis_of,
};
use xenvault_engine::strategy::Level;
use xenvault_restore::Error;
use xenvault_restore::vm::{DiskRestore, Macs, Method, Mode, VmRestoreOptions, VmRestoreReport, restore_vm};
use xenvault_types::metadata::VmMetadata;
use xenvault_types::progress::{HiddenProgress, Phase, Task};
use xenvault_xapi::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_new_over_the_original_and_from_xva() {
    let p = pool().await;
    let (host, client, sim, repo) = (&p.host, &p.client, &p.sim, &p.repo);
    let original = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let m = back_up(&p, Level::Full).await;
    let expected = digests_of(host, sim, &original.uuid).await;

    // As a new VM, beside the original.
    let opts = VmRestoreOptions { mode: Mode::AsNew, differential: false, ..Default::default() };
    let new = restore_vm(client, repo, &m, &opts, HiddenProgress::shared()).await.unwrap();
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
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: false, ..Default::default() };
    let full = restore_vm(client, repo, &m, &opts, HiddenProgress::shared()).await.unwrap();
    assert_eq!(full.vm_uuid, original.uuid);
    assert!(
        full.disks.iter().all(|d| d.bytes_written == d.size && d.bytes_sent == d.size && d.method.is_none()),
        "{:?}",
        full.disks
    );
    assert_eq!(digests_of(host, sim, &original.uuid).await, expected);

    // An XVA export of the restore point imports into the pool with the same disks.
    let xva = p.dir.path().join("vm.xva");
    let (r, mm, path) = (repo.clone(), m.clone(), xva.clone());
    tokio::task::spawn_blocking(move || {
        xenvault_restore::xva::export_xva(
            &r,
            &mm,
            std::fs::File::create(&path).unwrap(),
            &Task::hidden(Phase::Export),
            &Default::default(),
        )
    })
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
    let mut blocks: Vec<u64> =
        writes.iter().flat_map(|&(at, len)| at / 65536..(at + len as u64).div_ceil(65536)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// A differential restore of `m` over the VM, watched by CBT: a `VDI.snapshot` of each
/// disk just before, then `VDI.list_changed_blocks(snapshot, disk)` tells which 64 KiB
/// blocks the restore wrote (per disk, in `vdis` order).
async fn differential_watched(
    p: &Pool,
    m: &xenvault_repo::Manifest,
    vdis: &[xenvault_pool::records::Vdi],
) -> (VmRestoreReport, Vec<Vec<u64>>) {
    let cbt_on = |v: &xenvault_pool::records::Vdi| {
        let (client, vdi) = (&p.client, v.reference.clone());
        async move {
            client.call("VDI.get_cbt_enabled", &[Value::from(vdi.as_str())]).await.unwrap().as_bool() == Some(true)
        }
    };
    let mut probes = Vec::new();
    for v in vdis {
        let probe = match cbt_on(v).await {
            true => Some(
                p.client
                    .call("VDI.snapshot", &[Value::from(v.reference.as_str())])
                    .await
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            false => None,
        };
        probes.push(probe);
    }
    let opts = VmRestoreOptions { mode: Mode::Overwrite, differential: true, ..Default::default() };
    let report = restore_vm(&p.client, &p.repo, m, &opts, HiddenProgress::shared()).await.unwrap();
    println!("{}", serde_json::to_string(&report.disks).unwrap());
    let mut written = Vec::new();
    for (v, probe) in vdis.iter().zip(probes) {
        let Some(probe) = probe else {
            written.push(Vec::new());
            continue;
        };
        let bitmap = p
            .client
            .call("VDI.list_changed_blocks", &[Value::from(probe.as_str()), Value::from(v.reference.as_str())])
            .await
            .unwrap();
        let changed = xenvault_xapi_wire::cbt::ChangedBlocks::decode(bitmap.as_str().unwrap()).unwrap();
        written.push(changed.changed_blocks().collect());
        p.client.call("VDI.destroy", &[Value::from(probe.as_str())]).await.unwrap();
    }
    (report, written)
}

fn disk_of<'a>(report: &'a VmRestoreReport, vdi: &xenvault_pool::records::Vdi) -> &'a DiskRestore {
    report.disks.iter().find(|d| d.vdi_uuid == vdi.uuid).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_restore_writes_what_changed() {
    let p = pool().await;
    let (host, sim) = (&p.host, &p.sim);
    let vm = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let vdis = vdis_of(host, &vm).await;
    for (n, vdi) in vdis.iter().enumerate() {
        scribble(sim, &vdi.uuid, 40, n as u64).await;
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
    let stored = VmMetadata::from_value(&second.metadata).unwrap().expect("VM metadata");
    for vdi in &vdis {
        let snapshot = stored.disk(&vdi.uuid).unwrap().snapshot_vdi_uuid.as_str();
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

/// The network uuid and MAC of each VIF of a VM.
async fn vifs_of(client: &xenvault_xapi::Client, vm_uuid: &str) -> Vec<(String, String)> {
    let vm = call_str(client, "VM.get_by_uuid", &[vm_uuid]).await;
    let mut out = Vec::new();
    for vif in client.call("VM.get_VIFs", &[Value::from(vm.as_str())]).await.unwrap().as_array().unwrap() {
        let vif = vif.as_str().unwrap();
        let network = call_str(client, "VIF.get_network", &[vif]).await;
        out.push((
            call_str(client, "network.get_uuid", &[&network]).await,
            call_str(client, "VIF.get_MAC", &[vif]).await,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_mapping_and_mac_handling() {
    let p = pool().await;
    let (client, repo) = (&p.client, &p.repo);
    let original = p.host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let [(management, mac)] = <[_; 1]>::try_from(vifs_of(client, &original.uuid).await).unwrap();
    let management_name =
        call_str(client, "network.get_name_label", &[&call_str(client, "network.get_by_uuid", &[&management]).await])
            .await;
    let nbd = client.call("network.get_by_name_label", &[Value::from("NBD network")]).await.unwrap();
    let nbd = call_str(client, "network.get_uuid", &[nbd.as_array().unwrap()[0].as_str().unwrap()]).await;
    let m = back_up(&p, Level::Full).await;

    // Mapped by uuid; the stored MAC kept though the original VM exists.
    let opts = VmRestoreOptions {
        network_map: vec![(management.clone(), nbd.clone())],
        macs: Macs::Keep,
        ..Default::default()
    };
    let kept = restore_vm(client, repo, &m, &opts, HiddenProgress::shared()).await.unwrap();
    assert_eq!(vifs_of(client, &kept.vm_uuid).await, vec![(nbd.clone(), mac.clone())]);
    assert!(kept.warnings.is_empty(), "{:?}", kept.warnings);

    // Mapped by name; a fresh MAC.
    let opts =
        VmRestoreOptions { network_map: vec![(management_name, nbd.clone())], macs: Macs::New, ..Default::default() };
    let fresh = restore_vm(client, repo, &m, &opts, HiddenProgress::shared()).await.unwrap();
    let [(network, new_mac)] = <[_; 1]>::try_from(vifs_of(client, &fresh.vm_uuid).await).unwrap();
    assert_eq!(network, nbd);
    assert_ne!(new_mac, mac);

    // Targets that do not exist are refused before anything is created.
    let before = (count(client, "VM").await, count(client, "VDI").await);
    let missing = "00000000-0000-4000-8000-000000000000".to_owned();
    let bad_network =
        VmRestoreOptions { network_map: vec![(management.clone(), missing.clone())], ..Default::default() };
    let bad_sr = VmRestoreOptions { sr_map: vec![("any".into(), missing.clone())], ..Default::default() };
    for (opts, expected) in [(bad_network, "no network with uuid"), (bad_sr, "no SR with uuid")] {
        let err = restore_vm(client, repo, &m, &opts, HiddenProgress::shared()).await.unwrap_err();
        assert!(matches!(err, Error::Target(_)) && err.to_string().contains(expected), "{err}");
    }
    assert_eq!((count(client, "VM").await, count(client, "VDI").await), before);

    // A restore point whose network this pool lacks: the VIF is left out and reported.
    let mut foreign = m.clone();
    let mut stored = VmMetadata::from_value(&m.metadata).unwrap().expect("VM metadata");
    for vif in &mut stored.vifs {
        (vif.network_uuid, vif.network_name) = (missing.clone(), "gone".into());
    }
    foreign.metadata = stored.to_value();
    let report =
        restore_vm(client, repo, &foreign, &VmRestoreOptions::default(), HiddenProgress::shared()).await.unwrap();
    assert!(vifs_of(client, &report.vm_uuid).await.is_empty());
    assert!(
        report.warnings.iter().any(|w| w.contains("not restored") && w.contains("\"gone\"")),
        "{:?}",
        report.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restore_as_new_removes_what_it_created() {
    let p = pool().await;
    let (client, sim) = (&p.client, &p.sim);
    let m = scribble_and_back_up(&p).await;
    let objects = || async {
        [count(client, "VM").await, count(client, "VDI").await, count(client, "VBD").await, count(client, "VIF").await]
    };
    let before = objects().await;

    // The first disk's import is cut short.
    sim.call("sim.set_cut", vec![Value::from("http"), Value::from((64u64 << 10).to_string())]).await.unwrap();
    let err =
        restore_vm(client, &p.repo, &m, &VmRestoreOptions::default(), HiddenProgress::shared()).await.unwrap_err();
    sim.call("sim.set_cut", vec![Value::from("http"), Value::from("")]).await.unwrap();
    let message = err.to_string();
    assert!(matches!(err, Error::CleanedUp { .. }), "{message}");
    assert!(
        message.contains("removed what the restore had created: VBD")
            || message.contains("removed what the restore had created: VM"),
        "{message}"
    );
    assert!(!message.contains("could NOT"), "{message}");
    assert_eq!(objects().await, before);

    // The last step fails, after every disk was written: all of it goes.
    let fault = vec![
        Value::from("VIF.create"),
        Value::from("INTERNAL_ERROR"),
        Value::Array(vec![Value::from("injected")]),
        Value::from("1"),
    ];
    sim.call("sim.inject_fault", fault).await.unwrap();
    let err =
        restore_vm(client, &p.repo, &m, &VmRestoreOptions::default(), HiddenProgress::shared()).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("INTERNAL_ERROR") && message.contains("removed"), "{message}");
    assert_eq!(message.matches("VDI ").count(), m.disks.len(), "{message}");
    assert_eq!(objects().await, before);
}
