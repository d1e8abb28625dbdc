//! Interop against the simulator (started in-process): the official Python SDK over
//! XML-RPC and Xen Orchestra's `xen-api` over JSON-RPC run tests/interop/*; our own client
//! runs the same CBT flow over both transports, pinned to the simulator's certificate, and
//! moves disks through the HTTP handlers.

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine;
use futures::StreamExt;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use xenvault_sim::{DemoDisks, SimConfig, SimHandle, Simulator};
use xenvault_xapi::wire::cbt::{BLOCK_SIZE, ChangedBlocks};
use xenvault_xapi::{Client, ClientBuilder, DiskFormat, Error, ImportTarget, Ref, ServerTrust, Transport, Value};

const DISK_SIZE: u64 = 8 << 20;

async fn start_sim() -> (SimHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = SimConfig::new(dir.path());
    config.demo_disks = DemoDisks::Blank(DISK_SIZE);
    let sim = Simulator::start(config).await.expect("simulator starts");
    (sim, dir)
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

/// Runs an interop script and returns its JSON report.
async fn run_script(program: &str, script: &str, sim: &SimHandle) -> serde_json::Value {
    let output = tokio::process::Command::new(program)
        .current_dir(interop_dir())
        .arg(script)
        .args([&sim.url, &sim.user, &sim.password])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    assert!(output.status.success(), "{script} failed ({})\n{stdout}\n{stderr}", output.status);
    report.unwrap_or_else(|| panic!("{script} printed no JSON report\n{stdout}\n{stderr}"))
}

/// The blocks the scripts write (see `writes_for` there), computed here independently.
fn expected_blocks(size: u64) -> Vec<u64> {
    let writes = guest_writes(size);
    let blocks: BTreeSet<u64> =
        writes.iter().flat_map(|(off, len)| off / BLOCK_SIZE..=(off + len - 1) / BLOCK_SIZE).collect();
    blocks.into_iter().collect()
}

/// Inside one block, across a block edge (and a block boundary at 10), the last sector.
fn guest_writes(size: u64) -> Vec<(u64, u64)> {
    vec![(0, 4096), (3 * BLOCK_SIZE + 100, BLOCK_SIZE), (10 * BLOCK_SIZE - 1, 2), (size - 512, 512)]
}

/// What every report must show: the bitmap decodes (with our decoder too) to exactly the
/// written blocks, and covers the disk.
fn check_report(report: &serde_json::Value) {
    let size = report["virtual_size"].as_u64().expect("virtual_size");
    let expected = expected_blocks(size);
    let changed: Vec<u64> = serde_json::from_value(report["changed"].clone()).expect("changed");
    assert_eq!(changed, expected, "client-side decoding: {report}");
    let bitmap = report["bitmap"].as_str().expect("bitmap");
    let ours = ChangedBlocks::decode(bitmap).expect("our decoder");
    assert_eq!(ours.changed_blocks().collect::<Vec<_>>(), expected);
    assert!(ours.block_count() * BLOCK_SIZE >= size, "bitmap shorter than the disk");
    assert_eq!(report["base_type"], "cbt_metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_xml_rpc_sees_exactly_the_written_blocks() {
    let (sim, _dir) = start_sim().await;
    let report = run_script("python3", "xenapi_sdk_cbt.py", &sim).await;
    check_report(&report);
}

/// The interop npm packages (scripts/setup.sh normally installed them already).
async fn npm_packages() {
    let dir = interop_dir();
    if !dir.join("node_modules/xen-api").exists() || !dir.join("node_modules/vhd-lib").exists() {
        let status = tokio::process::Command::new("npm")
            .current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .status()
            .await
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/interop failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_records_have_exactly_the_datamodel_fields() {
    let (sim, _dir) = start_sim().await;
    let table = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sim/datamodel/fields.tsv");
    let output = tokio::process::Command::new("python3")
        .current_dir(interop_dir())
        .arg("xenapi_sdk_records.py")
        .args([&sim.url, &sim.user, &sim.password])
        .arg(&table)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("\"problem_count\": 0"), "{stdout}");
}

/// Xen Orchestra's client and vhd-lib: snapshot, exports with and without a trailing
/// slash, imports, and a full + delta VHD chain rebuilt by VhdSynthetic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xo_xen_api_and_vhd_lib_rebuild_a_delta_and_move_disks_and_vms() {
    npm_packages().await;
    let (sim, _dir) = start_sim().await;
    let report = run_script("node", "xen_api_delta.mjs", &sim).await;
    let checks = report["checks"].as_object().expect("checks");
    assert!(checks.len() >= 10, "{report}");
    assert!(checks.values().all(|c| c == true), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xo_xen_api_over_json_rpc_sees_exactly_the_written_blocks() {
    npm_packages().await;
    let (sim, _dir) = start_sim().await;
    let report = run_script("node", "xen_api_cbt.mjs", &sim).await;
    check_report(&report);
    // Over JSON-RPC an int64 is a number, not XML-RPC's string.
    assert_eq!(report["virtual_size_type"], "number");
}

/// A client logged in over `transport`, pinned to the simulator's certificate.
async fn logged_in(sim: &SimHandle, transport: Transport) -> Client {
    logged_in_with(sim, pinned_builder(sim).transport(transport)).await
}

/// Settings that trust exactly the simulator's certificate.
fn pinned_builder(sim: &SimHandle) -> ClientBuilder {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(sim.cert_pem.as_bytes()).expect("simulator certificate");
    let pin = xenvault_xapi::fingerprint_sha256(der.as_ref());
    Client::builder(&sim.url).tls(ServerTrust::pin_sha256_hex(&pin).expect("pin"))
}

async fn logged_in_with(sim: &SimHandle, builder: ClientBuilder) -> Client {
    let c = builder.build().expect("client");
    c.login_with_password(&sim.user, &sim.password).await.expect("login");
    c
}

/// A call that must succeed.
async fn ok(c: &Client, method: &str, params: &[Value]) -> Value {
    c.call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn ok_ref(c: &Client, method: &str, params: &[Value]) -> Ref {
    Ref::from_value(&ok(c, method, params).await).expect("a reference")
}

async fn ok_text(c: &Client, method: &str, params: &[Value]) -> String {
    let v = ok(c, method, params).await;
    v.as_str().map(str::to_owned).unwrap_or_else(|| panic!("{method}: expected a string, got {v:?}"))
}

/// The disks plugged into a VM.
async fn vm_disks(c: &Client, vm: &Ref) -> Vec<Ref> {
    let mut disks = Vec::new();
    for vbd in ok(c, "VM.get_VBDs", &[vm.into()]).await.as_array().unwrap_or_default() {
        let vdi = ok_ref(c, "VBD.get_VDI", std::slice::from_ref(vbd)).await;
        if !vdi.is_null() {
            disks.push(vdi);
        }
    }
    disks
}

/// A non-template VM with a disk (the first by name), and that disk.
async fn vm_with_disk(c: &Client) -> (Ref, Ref) {
    let mut candidates = Vec::new();
    for (vm, rec) in c.get_all_records("VM").await.expect("VMs") {
        let flag = |k: &str| rec.get(k).and_then(Value::as_bool) == Some(true);
        if flag("is_a_template") || flag("is_a_snapshot") || flag("is_control_domain") {
            continue;
        }
        if let Some(vdi) = vm_disks(c, &vm).await.into_iter().next() {
            let name = rec.get("name_label").and_then(Value::as_str).unwrap_or_default();
            candidates.push((name.to_owned(), vm, vdi));
        }
    }
    candidates.sort();
    let (_, vm, vdi) = candidates.into_iter().next().expect("a VM with a disk");
    (vm, vdi)
}

/// Snapshots `vm`; returns the snapshot VM and its copy of `vdi`.
async fn snapshot(c: &Client, vm: &Ref, label: &str, vdi: &Ref) -> (Ref, Ref) {
    let snap = ok_ref(c, "VM.snapshot", &[vm.into(), label.into()]).await;
    for d in vm_disks(c, &snap).await {
        if ok_text(c, "VDI.get_snapshot_of", &[(&d).into()]).await == vdi.as_str() {
            return (snap, d);
        }
    }
    panic!("snapshot {label} has no copy of {vdi}");
}

async fn download_sha256(mut download: xenvault_xapi::Download) -> (String, u64) {
    let mut hash = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = download.next().await {
        let chunk = chunk.expect("download chunk");
        len += chunk.len() as u64;
        hash.update(&chunk);
    }
    (hex::encode(hash.finalize()), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_over_both_transports_with_a_pinned_certificate() {
    let (sim, _dir) = start_sim().await;
    for transport in [Transport::JsonRpc, Transport::XmlRpc] {
        let c = logged_in(&sim, transport).await;
        let (vm, vdi) = vm_with_disk(&c).await;
        ok(&c, "VDI.enable_cbt", &[(&vdi).into()]).await;
        let size = ok(&c, "VDI.get_virtual_size", &[(&vdi).into()]).await;
        let size = size.as_i64().and_then(|s| u64::try_from(s).ok()).expect("int64 size");
        let (_, base) = snapshot(&c, &vm, "ours-base", &vdi).await;
        for (i, (offset, len)) in guest_writes(size).into_iter().enumerate() {
            let data = vec![u8::try_from(i + 1).unwrap_or(1); usize::try_from(len).unwrap_or(0)];
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            ok(&c, "sim.write", &[(&vdi).into(), offset.to_string().into(), b64.into()]).await;
        }
        let (_, incr) = snapshot(&c, &vm, "ours-incr", &vdi).await;
        // xapi refuses data_destroy while a VBD (the snapshot VM's) still uses the VDI.
        for vbd in ok(&c, "VDI.get_VBDs", &[(&base).into()]).await.as_array().unwrap_or_default() {
            ok(&c, "VBD.destroy", std::slice::from_ref(vbd)).await;
        }
        ok(&c, "VDI.data_destroy", &[(&base).into()]).await;
        let bitmap = ok_text(&c, "VDI.list_changed_blocks", &[(&base).into(), (&incr).into()]).await;
        let changed = ChangedBlocks::decode(&bitmap).expect("bitmap");
        let changed: Vec<u64> = changed.changed_blocks().collect();
        assert_eq!(changed, expected_blocks(size), "{transport:?}");

        // A full raw export of the newer snapshot is its content byte for byte.
        let want = ok_text(&c, "sim.sha256", &[(&incr).into()]).await;
        let export = c.export_raw_vdi(&incr, DiskFormat::Raw, None).await.expect("export");
        let (got, len) = download_sha256(export).await;
        assert_eq!((got.as_str(), len), (want.as_str(), size), "{transport:?} raw export");

        // ...and imported into a new VDI of the same SR it is the same disk again.
        let sr = ok_ref(&c, "VDI.get_SR", &[(&incr).into()]).await;
        let export = c.export_raw_vdi(&incr, DiskFormat::Raw, None).await.expect("export");
        let new_vdi =
            c.import_raw_vdi(ImportTarget::Sr(&sr), DiskFormat::Raw, export, size).await.expect("import_raw_vdi");
        let copy = ok_text(&c, "sim.sha256", &[(&new_vdi).into()]).await;
        assert_eq!(copy, want, "{transport:?} imported copy");

        let (_, dump_len) = download_sha256(c.pool_xmldbdump().await.expect("xmldbdump")).await;
        assert!(dump_len > 0);
        c.logout().await.expect("logout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_transport_and_relogin_against_the_simulator() {
    let (sim, _dir) = start_sim().await;
    let c = logged_in(&sim, Transport::Auto).await;
    assert_eq!(c.transport_in_use(), Some(Transport::JsonRpc));
    // Log the session out behind the client's back: the next call must log in again.
    let stale = c.session().expect("session");
    c.call_raw("session.logout", &[stale.clone().into()]).await.expect("logout");
    let pools = c.get_all_records("pool").await.expect("call after re-login");
    assert_eq!(pools.len(), 1);
    assert_ne!(c.session(), Some(stale));

    let err = c.call("VM.no_such_call", &[]).await.expect_err("unknown method");
    assert!(err.is_failure("MESSAGE_METHOD_UNKNOWN"), "{err:?}");
    let err = c.get_by_uuid("VM", "not-a-uuid").await.expect_err("unknown uuid");
    assert!(err.is_failure("UUID_INVALID"), "{err:?}");

    // An async call through a task.
    let (vm, _) = vm_with_disk(&c).await;
    let mut progress = Vec::new();
    let params = [(&vm).into(), "async".into()];
    let snap = c.call_and_wait("VM.snapshot", &params, |p| progress.push(p), None).await;
    let snap = Ref::from_value(&snap.expect("Async.VM.snapshot")).expect("snapshot ref");
    let is_snapshot = ok(&c, "VM.get_is_a_snapshot", &[(&snap).into()]).await;
    assert_eq!(is_snapshot.as_bool(), Some(true));
    assert_eq!(progress.last(), Some(&1.0));

    let batch = c.event_from(&["vm"], "", std::time::Duration::from_secs(1)).await;
    let batch = batch.expect("events");
    assert!(!batch.token.is_empty());
    assert!(batch.events.iter().any(|e| e.reference == snap), "the new snapshot is in the events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xva_export_and_import_round_trip() {
    let (sim, _dir) = start_sim().await;
    let c = logged_in(&sim, Transport::Auto).await;
    let (vm, vdi) = vm_with_disk(&c).await;
    ok(&c, "sim.write", &[(&vdi).into(), "65536".into(), "eGVudmF1bHQ=".into()]).await;
    let (snap_vm, snap_vdi) = snapshot(&c, &vm, "xva", &vdi).await;
    let want = ok_text(&c, "sim.sha256", &[(&snap_vdi).into()]).await;
    let sr = ok_ref(&c, "VDI.get_SR", &[(&vdi).into()]).await;

    for compression in [xenvault_xapi::Compression::None, xenvault_xapi::Compression::Zstd] {
        let mut xva = Vec::new();
        let mut export = c.export_vm(&snap_vm, compression).await.expect("export");
        while let Some(chunk) = export.next().await {
            xva.extend_from_slice(&chunk.expect("XVA chunk"));
        }
        let len = xva.len() as u64;
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(xva))]);
        let vms = c.import_vm(&sr, body, len, Default::default()).await.expect("import");
        assert_eq!(vms.len(), 1, "{compression:?}");
        let mut hashes = Vec::new();
        for disk in vm_disks(&c, &vms[0]).await {
            hashes.push(ok_text(&c, "sim.sha256", &[(&disk).into()]).await);
        }
        assert!(hashes.contains(&want), "{compression:?}: imported disks {hashes:?}, want {want}");
    }
}

/// A host that sends an export's headers and then nothing (the simulator's bandwidth fault
/// holds back each 1 MiB chunk for about 4 s) ends the download with a typed stall error
/// after the idle timeout instead of hanging; transfers that keep moving are not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_export_fails_after_the_idle_timeout() {
    let (sim, _dir) = start_sim().await;
    let idle = std::time::Duration::from_secs(1);
    let c = logged_in_with(&sim, pinned_builder(&sim).transfer_idle_timeout(idle)).await;
    let (_, vdi) = vm_with_disk(&c).await;

    ok(&c, "sim.set_bandwidth", &["262144".into()]).await;
    let mut export = c.export_raw_vdi(&vdi, DiskFormat::Raw, None).await.expect("the headers come");
    let err = export.next().await.expect("an item").expect_err("no data within the idle time");
    assert!(matches!(err, Error::Stalled { .. }), "{err:?}");
    let host = sim.url.trim_end_matches('/');
    assert_eq!(err.to_string(), format!("no data from {host} for 1 s during export_raw_vdi of vdi={vdi}, format=raw"));
    drop(export);

    // At full speed the same limit lets an export and an import through.
    ok(&c, "sim.set_bandwidth", &["".into()]).await;
    let want = ok_text(&c, "sim.sha256", &[(&vdi).into()]).await;
    let sr = ok_ref(&c, "VDI.get_SR", &[(&vdi).into()]).await;
    let size = ok(&c, "VDI.get_virtual_size", &[(&vdi).into()]).await;
    let size = size.as_i64().and_then(|s| u64::try_from(s).ok()).expect("size");
    let export = c.export_raw_vdi(&vdi, DiskFormat::Raw, None).await.expect("export");
    let copy = c
        .import_raw_vdi(ImportTarget::Sr(&sr), DiskFormat::Raw, export, size)
        .await
        .expect("import_raw_vdi under the idle limit");
    assert_eq!(ok_text(&c, "sim.sha256", &[(&copy).into()]).await, want);
}
