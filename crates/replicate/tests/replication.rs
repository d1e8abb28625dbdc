//! Replication between two simulated pools: a full replica equal to the source, an
//! incremental after a scattered change that writes only the changed blocks, an update cut
//! midway that leaves the replica reverted to its last good state, then test and failover.

#[path = "../../restore/tests/common/mod.rs"]
mod common;

use common::{Pool, VM, guest_write, pool, sha256};
use std::collections::BTreeMap;
use xenvault_engine::selection::Selector;
use xenvault_replicate::replica::{self, FailoverOptions};
use xenvault_replicate::report::Kind;
use xenvault_replicate::{Method, ReplicateOptions, Status, replicate};
use xenvault_types::progress::HiddenProgress;
use xenvault_xapi::Value;

async fn shared_sr(p: &Pool) -> String {
    let srs = xenvault_pool::inventory::srs(&p.client).await.unwrap();
    srs.into_iter().find(|s| s.shared).expect("a shared SR").uuid
}

/// The source VM's disks: position -> (VDI uuid, digest).
async fn source_digests(p: &Pool) -> BTreeMap<String, (String, String)> {
    let vm = p.host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let mut out = BTreeMap::new();
    for (vbd, vdi) in p.host.disks(&vm).await.unwrap() {
        out.insert(vbd.userdevice, (vdi.uuid.clone(), sha256(&p.sim, &vdi.uuid).await));
    }
    out
}

/// The replica's disks: position -> digest.
async fn replica_digests(p: &Pool, uuid: &str) -> BTreeMap<String, String> {
    let info = replica::list(&p.host, None).await.unwrap().into_iter().find(|r| r.uuid == uuid).unwrap();
    let mut out = BTreeMap::new();
    for d in info.disks {
        out.insert(d.position, sha256(&p.sim, &d.vdi_uuid).await);
    }
    out
}

fn digests_only(source: &BTreeMap<String, (String, String)>) -> BTreeMap<String, String> {
    source.iter().map(|(k, (_, d))| (k.clone(), d.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_incremental_rollback_test_and_failover_across_pools() {
    let (source, target) = (pool().await, pool().await);
    let options = ReplicateOptions {
        selectors: vec![Selector::NameOrUuid(VM.into())],
        target_sr: shared_sr(&target).await,
        keep: 2,
        job_id: "dr".into(),
        ..Default::default()
    };
    let before = source_digests(&source).await;
    for (n, (uuid, _)) in before.values().enumerate() {
        guest_write(&source.sim, uuid, 1 << 20, 256 << 10, n as u64).await;
    }

    // Full: a new replica on the other pool, equal to the source, tagged and blocked.
    let report = replicate(&source.host, &target.host, &options, HiddenProgress::shared()).await.unwrap();
    eprint!("full: {}", report.summary());
    let vm = &report.vms[0];
    assert_eq!(vm.status, Status::Ok, "{:?}", vm.error);
    assert_eq!(vm.kind, Some(Kind::Full));
    let replica_uuid = vm.replica_uuid.clone();
    let full_digests = digests_only(&source_digests(&source).await);
    assert_eq!(replica_digests(&target, &replica_uuid).await, full_digests);
    let listed = replica::list(&target.host, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, "dr");
    assert!(listed[0].name_label.starts_with(&format!("{VM} - dr - ")), "{}", listed[0].name_label);
    let reference = target.client.call("VM.get_by_uuid", &[Value::from(replica_uuid.as_str())]).await.unwrap();
    let started = target.client.call("VM.start", &[reference.clone(), false.into(), false.into()]).await;
    let refused = started.expect_err("a replica's start is blocked").to_string();
    assert!(refused.contains("OPERATION_BLOCKED"), "{refused}");

    // Incremental after a scattered change: CBT, only the changed blocks written.
    let disks = source_digests(&source).await;
    let size: u64 = vm.disks.iter().map(|d| d.size).sum();
    for (n, (uuid, _)) in disks.values().enumerate() {
        for k in 0..3u64 {
            guest_write(&source.sim, uuid, k * (5 << 20) + 4096, 64 << 10, 10 + n as u64 * 3 + k).await;
        }
    }
    let report = replicate(&source.host, &target.host, &options, HiddenProgress::shared()).await.unwrap();
    eprint!("incremental: {}", report.summary());
    let vm = &report.vms[0];
    assert_eq!(vm.status, Status::Ok, "{:?}", vm.error);
    assert_eq!((vm.kind, vm.replica_uuid.as_str()), (Some(Kind::Incremental), replica_uuid.as_str()));
    assert!(vm.disks.iter().all(|d| d.method == Method::Cbt), "{:#?}", vm.disks);
    assert!(
        vm.bytes_read() <= size / 10 && vm.bytes_written() <= size / 10,
        "{} {} of {size}",
        vm.bytes_read(),
        vm.bytes_written()
    );
    assert!(vm.bytes_written() >= 64 << 10);
    let good = digests_only(&source_digests(&source).await);
    assert_eq!(replica_digests(&target, &replica_uuid).await, good);

    // An update cut midway (the target's import): the replica is reverted to its last good state.
    for (n, (uuid, _)) in disks.values().enumerate() {
        guest_write(&source.sim, uuid, 3 << 20, 1 << 20, 40 + n as u64).await;
    }
    target.sim.call("sim.set_cut", vec![Value::from("http"), Value::from("300000")]).await.unwrap();
    let report = replicate(&source.host, &target.host, &options, HiddenProgress::shared()).await.unwrap();
    let vm = &report.vms[0];
    assert_eq!(vm.status, Status::Failed);
    assert!(vm.rolled_back, "{:?}", vm.error);
    assert!(vm.error.as_deref().unwrap_or_default().contains("reverted"), "{:?}", vm.error);
    assert_eq!(replica_digests(&target, &replica_uuid).await, good);
    // Once the cut is gone the next run brings it up to date.
    target.sim.call("sim.set_cut", vec![Value::from("http"), Value::from("")]).await.unwrap();
    let report = replicate(&source.host, &target.host, &options, HiddenProgress::shared()).await.unwrap();
    assert_eq!(report.vms[0].status, Status::Ok, "{:?}", report.vms[0].error);
    assert_eq!(replica_digests(&target, &replica_uuid).await, digests_only(&source_digests(&source).await));
    let info = replica::list(&target.host, None).await.unwrap().remove(0);
    assert!(info.snapshots.len() <= 2, "{:?}", info.snapshots);

    // Test: a clone boots on an isolated network and goes; the replica is untouched.
    let vms_before = common::count(&target.client, "VM").await;
    let tested = replica::test(&target.host, &replica_uuid).await.unwrap();
    assert!(tested.started && tested.cleaned_up && tested.replica_untouched, "{tested:?}");
    assert_eq!(tested.power_state, "Running");
    assert_eq!(common::count(&target.client, "VM").await, vms_before);

    // Failover: start allowed, started, and no further update touches it.
    let failed_over =
        replica::failover(&target.host, &replica_uuid, &FailoverOptions { start: true, ..Default::default() })
            .await
            .unwrap();
    assert_eq!(failed_over.power_state, "Running");
    let report = replicate(&source.host, &target.host, &options, HiddenProgress::shared()).await.unwrap();
    assert_eq!(report.vms[0].status, Status::Failed);
    assert!(report.vms[0].error.as_deref().unwrap_or_default().contains("failed over"), "{:?}", report.vms[0].error);
}
