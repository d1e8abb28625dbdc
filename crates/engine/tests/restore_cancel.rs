//! Restores cancelled in the middle of their upload leave the pool as it was: a restore as
//! a new VM, or to a new VDI, removes what it created; an overwrite puts the disks back
//! and starts the VM again if it had shut it down.

mod common;

use common::{CancelMidway, VM, count, digests_of, guest_write, pool, scribble_and_back_up, vdis_of};
use tokio_util::sync::CancellationToken;
use xenvault_restore::disk::{DiskRestoreOptions, DiskTarget, restore_disk};
use xenvault_restore::vm::{Mode, VmRestoreOptions, restore_vm};
use xenvault_types::progress::Phase;
use xenvault_xapi::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cancelled_mid_upload_leaves_the_pool_as_it_was() {
    let p = pool().await;
    let (host, client, sim, repo) = (&p.host, &p.client, &p.sim, &p.repo);
    let m = scribble_and_back_up(&p).await;
    let original = host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let backed_up = digests_of(host, sim, &original.uuid).await;
    let vdis = vdis_of(host, &original).await;
    let objects = || async {
        [count(client, "VM").await, count(client, "VDI").await, count(client, "VBD").await, count(client, "VIF").await]
    };
    let before = objects().await;

    // As a new VM: the VM and the disks made so far go.
    let watch = CancelMidway::new(Phase::Restore, CancellationToken::new());
    let opts = VmRestoreOptions { cancel: watch.cancel.clone(), ..Default::default() };
    let err = restore_vm(client, repo, &m, &opts, watch.clone()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(err.to_string().contains("removed what the restore had created"), "{err}");
    assert!(!err.to_string().contains("could NOT"), "{err}");
    assert!(watch.cancelled_at().done < watch.cancelled_at().total);
    assert_eq!(objects().await, before, "VMs, VDIs, VBDs, VIFs");

    // To a new VDI: it goes.
    let watch = CancelMidway::new(Phase::Restore, CancellationToken::new());
    let sr = common::call_str(client, "VDI.get_SR", &[vdis[0].reference.as_str()]).await;
    let sr_uuid = common::call_str(client, "SR.get_uuid", &[sr.as_str()]).await;
    let target = DiskTarget::New { sr_uuid, name_label: None, attach: None };
    let opts = DiskRestoreOptions { cancel: watch.cancel.clone(), ..Default::default() };
    let err = restore_disk(client, repo, &m, None, &target, &opts, watch.clone()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    watch.cancelled_at();
    assert_eq!(objects().await, before, "VMs, VDIs, VBDs, VIFs");

    // Over the VM, whose disks the guest changed since the backup: they stay as they are.
    for (n, vdi) in vdis.iter().enumerate() {
        guest_write(sim, &vdi.uuid, 1 << 20, 3 << 20, 40 + n as u64).await;
    }
    let state = |vm: String| async move {
        client.call("VM.get_power_state", &[Value::from(vm.as_str())]).await.unwrap().as_str().unwrap().to_owned()
    };
    let (power, current) = (state(original.reference.clone()).await, digests_of(host, sim, &original.uuid).await);
    let watch = CancelMidway::new(Phase::Restore, CancellationToken::new());
    let opts = VmRestoreOptions { mode: Mode::Overwrite, cancel: watch.cancel.clone(), ..Default::default() };
    let err = restore_vm(client, repo, &m, &opts, watch.clone()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(err.to_string().contains("put back as it was"), "{err}");
    assert!(!err.to_string().contains("could NOT"), "{err}");
    watch.cancelled_at();
    assert_eq!(digests_of(host, sim, &original.uuid).await, current, "the disks are as they were");
    assert_eq!(state(original.reference.clone()).await, power, "the VM is as it was");
    assert_eq!(objects().await, before, "the snapshots taken before writing are gone");

    // Not cancelled, the same overwrite restores the restore point.
    let opts = VmRestoreOptions { mode: Mode::Overwrite, ..Default::default() };
    restore_vm(client, repo, &m, &opts, xenvault_types::progress::HiddenProgress::shared()).await.unwrap();
    assert_eq!(digests_of(host, sim, &original.uuid).await, backed_up);
    assert_eq!(objects().await, before);
}
