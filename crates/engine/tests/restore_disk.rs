//! Restore of one disk on the simulator: into a new VDI on another SR (attached to a VM),
//! differentially over an existing VDI, and the targets it refuses.

mod common;

use common::{VM, call_str, count, guest_write, pool, scribble_and_back_up, sha256};
use xenvault_restore::Error;
use xenvault_restore::disk::{Attach, DiskRestoreOptions, DiskTarget, restore_disk};
use xenvault_restore::vm::Method;
use xenvault_types::progress::HiddenProgress;
use xenvault_xapi::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_restore_to_new_and_existing_vdis() {
    let p = pool().await;
    let (client, sim, repo) = (&p.client, &p.sim, &p.repo);
    let original = p.host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    let m = scribble_and_back_up(&p).await;
    let stored = &m.disks[0];
    let expected = sha256(sim, &stored.uuid).await;
    let source_vdi = call_str(client, "VDI.get_by_uuid", &[&stored.uuid]).await;
    let source_sr = call_str(client, "VDI.get_SR", &[&source_vdi]).await;
    let label = call_str(client, "VDI.get_name_label", &[&source_vdi]).await;
    let local = client.call("SR.get_by_name_label", &[Value::from("Local storage")]).await.unwrap();
    let other_sr =
        local.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).find(|s| *s != source_sr).unwrap();
    let other_sr_uuid = call_str(client, "SR.get_uuid", &[&other_sr]).await;

    // A new VDI on another SR, attached to the running VM without plugging it.
    let attach = Attach { vm_uuid: original.uuid.clone(), userdevice: "5".into(), plug: false };
    let target = DiskTarget::New { sr_uuid: other_sr_uuid.clone(), name_label: None, attach: Some(attach) };
    let new = restore_disk(client, repo, &m, None, &target, &DiskRestoreOptions::default(), HiddenProgress::shared())
        .await
        .unwrap();
    println!("{}", serde_json::to_string(&new).unwrap());
    assert!(new.created);
    assert_eq!(new.sr_uuid, other_sr_uuid);
    assert!(new.name_label.starts_with(&format!("{label} (restored ")), "{}", new.name_label);
    assert_eq!(new.source_vdi_uuid, stored.uuid);
    assert_eq!(sha256(sim, &new.disk.vdi_uuid).await, expected);
    let vbd = call_str(client, "VBD.get_by_uuid", &[new.vbd_uuid.as_deref().unwrap()]).await;
    assert_eq!(call_str(client, "VBD.get_userdevice", &[&vbd]).await, "5");
    assert_eq!(call_str(client, "VBD.get_VM", &[&vbd]).await, original.reference);
    assert!(!new.plugged);
    assert_eq!(
        client.call("VBD.get_currently_attached", &[Value::from(vbd.as_str())]).await.unwrap().as_bool(),
        Some(false)
    );

    // Asked to, the VBD is plugged into the running VM.
    let attach = Attach { vm_uuid: original.uuid.clone(), userdevice: "6".into(), plug: true };
    let target =
        DiskTarget::New { sr_uuid: other_sr_uuid.clone(), name_label: Some("plugged".into()), attach: Some(attach) };
    let plugged =
        restore_disk(client, repo, &m, None, &target, &DiskRestoreOptions::default(), HiddenProgress::shared())
            .await
            .unwrap();
    assert_eq!(plugged.name_label, "plugged");
    assert!(plugged.plugged);
    let vbd = call_str(client, "VBD.get_by_uuid", &[plugged.vbd_uuid.as_deref().unwrap()]).await;
    assert_eq!(
        client.call("VBD.get_currently_attached", &[Value::from(vbd.as_str())]).await.unwrap().as_bool(),
        Some(true)
    );

    // The same userdevice again is refused before anything is created.
    let vdis = count(client, "VDI").await;
    let attach = Attach { vm_uuid: original.uuid.clone(), userdevice: "5".into(), plug: false };
    let target =
        DiskTarget::New { sr_uuid: other_sr_uuid.clone(), name_label: Some("again".into()), attach: Some(attach) };
    let err = restore_disk(client, repo, &m, None, &target, &DiskRestoreOptions::default(), HiddenProgress::shared())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Target(_)) && err.to_string().contains("userdevice 5"), "{err}");
    assert_eq!(count(client, "VDI").await, vdis);

    // A guest write to the new disk, then a differential restore over it: the new VDI has
    // no CBT, so chunk hashes find the 4 KiB written, and only those are written back.
    guest_write(sim, &new.disk.vdi_uuid, (2 << 20) + 4096, 4096, 7).await;
    assert_ne!(sha256(sim, &new.disk.vdi_uuid).await, expected);
    let target = DiskTarget::Existing { vdi_uuid: new.disk.vdi_uuid.clone() };
    let opts = DiskRestoreOptions { differential: true, force: false, ..Default::default() };
    let over = restore_disk(client, repo, &m, None, &target, &opts, HiddenProgress::shared()).await.unwrap();
    assert!(!over.created);
    assert_eq!(over.disk.method, Some(Method::Hash), "{:?}", over.disk.method_reason);
    assert_eq!((over.disk.bytes_written, over.disk.bytes_compared), (4096, stored.size));
    assert_eq!(sha256(sim, &new.disk.vdi_uuid).await, expected);

    // Forced over the running VM's own disk: CBT since the backup's snapshot sees nothing
    // changed, so nothing is written.
    let target = DiskTarget::Existing { vdi_uuid: stored.uuid.clone() };
    let opts = DiskRestoreOptions { differential: true, force: true, ..Default::default() };
    let forced = restore_disk(client, repo, &m, None, &target, &opts, HiddenProgress::shared()).await.unwrap();
    assert_eq!(forced.disk.method, Some(Method::Cbt), "{:?}", forced.disk.method_reason);
    assert_eq!((forced.disk.bytes_written, forced.disk.bytes_compared), (0, 0));
    assert_eq!(sha256(sim, &stored.uuid).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_restore_refuses_wrong_targets_and_cleans_up() {
    let p = pool().await;
    let (client, sim, repo) = (&p.client, &p.sim, &p.repo);
    let m = scribble_and_back_up(&p).await;
    let stored = &m.disks[0];
    let sr_uuid = call_str(
        client,
        "SR.get_uuid",
        &[&call_str(client, "VDI.get_SR", &[&call_str(client, "VDI.get_by_uuid", &[&stored.uuid]).await]).await],
    )
    .await;
    let opts = DiskRestoreOptions::default();
    let m = &m;
    let refused = |target: DiskTarget, opts: DiskRestoreOptions| async move {
        restore_disk(client, repo, m, None, &target, &opts, HiddenProgress::shared()).await.unwrap_err()
    };

    // The original disk is attached to the running VM.
    let err = refused(DiskTarget::Existing { vdi_uuid: stored.uuid.clone() }, opts.clone()).await;
    assert!(matches!(err, Error::Target(_)) && err.to_string().contains("attached to the running VM"), "{err}");

    // A VDI of another size.
    let spec = serde_json::json!({
        "name_label": "small", "name_description": "", "SR": call_str(client, "SR.get_by_uuid", &[&sr_uuid]).await,
        "virtual_size": 1 << 20, "type": "user", "sharable": false, "read_only": false,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    });
    let small = client.call("VDI.create", &[xenvault_xapi::wire::jsonrpc::from_json(&spec).unwrap()]).await.unwrap();
    let small = call_str(client, "VDI.get_uuid", &[small.as_str().unwrap()]).await;
    let err = refused(
        DiskTarget::Existing { vdi_uuid: small },
        DiskRestoreOptions { differential: true, force: true, ..Default::default() },
    )
    .await;
    assert!(matches!(err, Error::Target(_)) && err.to_string().contains("sizes must match"), "{err}");

    // No such SR, no such disk.
    let vdis = count(client, "VDI").await;
    let err = refused(
        DiskTarget::New { sr_uuid: "00000000-0000-4000-8000-000000000000".into(), name_label: None, attach: None },
        opts.clone(),
    )
    .await;
    assert!(err.to_string().contains("no SR with uuid"), "{err}");
    let err = restore_disk(
        client,
        repo,
        m,
        Some("9"),
        &DiskTarget::New { sr_uuid: sr_uuid.clone(), name_label: None, attach: None },
        &opts,
        HiddenProgress::shared(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no disk at position 9"), "{err}");

    // An import cut short: the new VDI is removed again.
    sim.call("sim.set_cut", vec![Value::from("http"), Value::from((64u64 << 10).to_string())]).await.unwrap();
    let err = refused(DiskTarget::New { sr_uuid, name_label: None, attach: None }, opts).await;
    assert!(
        matches!(err, Error::CleanedUp { .. }) && err.to_string().contains("removed what the restore had created: VDI"),
        "{err}"
    );
    assert_eq!(count(client, "VDI").await, vdis);
}
