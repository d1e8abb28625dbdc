//! Disk data paths checked with real tools: CBT after guest writes, CoW snapshots,
//! VHD exports against qemu-img, delta VHDs applied on their base, qemu-made VHD
//! imports, NBD reads with TLS, persistence and faults.

mod common;

use common::*;
use std::process::Command;

#[tokio::test]
async fn cbt_reports_exactly_the_written_blocks_and_snapshots_are_cow() {
    let t = Setup::new().await;
    let (c, vm, vdi) = (&t.c, t.vm.clone(), t.vdi.clone());
    c.call("VDI.enable_cbt", vec![vdi.clone().into()]).await.unwrap();
    let s1 = s(&c.call("VM.snapshot", vec![vm.clone().into(), "s1".into()]).await.unwrap());
    let before = sha256(c, &vdi).await;
    // Block 2 and 3 (crossing), block 100, and block 5 rewritten with its own (zero) bytes.
    write(c, &vdi, 2 * 65536 + 100, &[7u8; 65536]).await;
    write(c, &vdi, 100 * 65536, b"x").await;
    write(c, &vdi, 5 * 65536, &[0u8; 512]).await;
    let s2 = s(&c.call("VM.snapshot", vec![vm.clone().into(), "s2".into()]).await.unwrap());
    let (v1, v2) = (snapshot_vdi(c, &s1, &vdi).await, snapshot_vdi(c, &s2, &vdi).await);
    assert_eq!(sha256(c, &v1).await, before, "snapshot keeps its data after writes");
    assert_eq!(sha256(c, &v2).await, sha256(c, &vdi).await);

    let bitmap = c.call("VDI.list_changed_blocks", vec![v1.clone().into(), v2.clone().into()]).await.unwrap();
    use base64::Engine;
    let bits = base64::engine::general_purpose::STANDARD.decode(s(&bitmap)).unwrap();
    assert_eq!(bits.len() as u64, DISK / 65536 / 8);
    let set: Vec<usize> = (0..bits.len() * 8).filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0).collect();
    assert_eq!(set, vec![2, 3, 5, 100]);

    // data_destroy keeps the chain usable; disabling CBT breaks it.
    let no_cbt = c.call("VDI.data_destroy", vec![vdi.clone().into()]).await.unwrap_err().to_string();
    assert!(no_cbt.contains("OPERATION_NOT_ALLOWED"), "{no_cbt}");
    c.call("VDI.data_destroy", vec![v1.clone().into()]).await.unwrap_err(); // still has a VBD
    let vbds = c.call("VDI.get_VBDs", vec![v1.clone().into()]).await.unwrap();
    for vbd in vbds.as_array().unwrap() {
        c.call("VBD.destroy", vec![vbd.clone()]).await.unwrap();
    }
    c.call("VDI.data_destroy", vec![v1.clone().into()]).await.unwrap();
    assert_eq!(s(&c.call("VDI.get_type", vec![v1.clone().into()]).await.unwrap()), "cbt_metadata");
    c.call("VDI.list_changed_blocks", vec![v1.clone().into(), v2.clone().into()]).await.unwrap();
    c.call("VDI.disable_cbt", vec![vdi.clone().into()]).await.unwrap();
    c.call("VDI.enable_cbt", vec![vdi.clone().into()]).await.unwrap();
    let s3 = s(&c.call("VM.snapshot", vec![vm.into(), "s3".into()]).await.unwrap());
    let v3 = snapshot_vdi(c, &s3, &vdi).await;
    let broken = c.call("VDI.list_changed_blocks", vec![v2.into(), v3.into()]).await.unwrap_err().to_string();
    assert!(broken.contains("SR_BACKEND_FAILURE_460"), "{broken}");
    let snap_cbt = c.call("VDI.data_destroy", vec![vdi.into()]).await.unwrap_err().to_string();
    assert!(snap_cbt.contains("OPERATION_NOT_ALLOWED"), "{snap_cbt}");
}

#[tokio::test]
async fn vhd_exports_match_raw_and_deltas_apply_on_their_base() {
    let t = Setup::new().await;
    let (c, sid, vm, vdi, sim) = (&t.c, &t.sid, t.vm.clone(), t.vdi.clone(), &t.sim);
    let p = |n: &str| t.path(n);
    write(c, &vdi, 0, &[1u8; 3 << 20]).await;
    let s1 = s(&c.call("VM.snapshot", vec![vm.clone().into(), "s1".into()]).await.unwrap());
    c.call("sim.scribble", vec![vdi.clone().into(), "10".into(), "4096".into(), "7".into()]).await.unwrap();
    let s2 = s(&c.call("VM.snapshot", vec![vm.into(), "s2".into()]).await.unwrap());
    let (v1, v2) = (snapshot_vdi(c, &s1, &vdi).await, snapshot_vdi(c, &s2, &vdi).await);

    let url = |q: String| format!("{}/export_raw_vdi?session_id={sid}&{q}", sim.url);
    let h = download(&url(format!("vdi={v2}&format=raw")), &p("v2.raw")).await;
    assert!(h.get("task-id").is_some() && h.get("content-disposition").is_some() && h.get("content-length").is_none());
    download(&url(format!("vdi={v2}&format=vhd")), &p("v2.vhd")).await;
    download(&url(format!("vdi={v1}&format=raw")), &p("v1.raw")).await;
    download(&url(format!("vdi={v2}&format=vhd&base={v1}")), &p("delta.vhd")).await;
    download(&url(format!("vdi={v2}&format=raw&base={v1}")), &p("delta.raw")).await;
    run(Command::new("qemu-img").args(["compare", "-f", "vpc", "-F", "raw"]).arg(p("v2.vhd")).arg(p("v2.raw")));
    let info = run(Command::new("vhdiinfo").arg(p("delta.vhd")));
    assert!(info.to_lowercase().contains("differential"), "{info}");
    assert_eq!(std::fs::metadata(p("delta.raw")).unwrap().len(), DISK);

    // The delta VHD imported onto a clone of the base gives the newer disk.
    let copy = s(&c.call("VDI.clone", vec![v1.clone().into()]).await.unwrap());
    let r =
        upload(&format!("{}/import_raw_vdi?session_id={sid}&vdi={copy}&format=vhd", sim.url), &p("delta.vhd")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(c, &copy).await, sha256(c, &v2).await);

    // A VHD made by qemu-img imports into a new VDI (sr_id=) byte-exactly.
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"])
        .arg(p("v2.raw"))
        .arg(p("qemu.vhd")));
    let sr = s(&c.call("VDI.get_SR", vec![v2.clone().into()]).await.unwrap());
    let r = upload(&format!("{}/import_raw_vdi?session_id={sid}&sr_id={sr}&format=vhd", sim.url), &p("qemu.vhd")).await;
    assert_eq!(r.status(), 200);
    let task = r.headers().get("task-id").unwrap().to_str().unwrap().to_owned();
    let result = s(&c.call("task.get_result", vec![task.into()]).await.unwrap());
    let new_vdi = result.trim_start_matches("<value>").trim_end_matches("</value>").to_owned();
    assert_eq!(sha256(c, &new_vdi).await, sha256(c, &v2).await);
}

/// A disk whose size is not a multiple of the 2 MiB VHD block: the last block is partial.
#[tokio::test]
async fn vhd_export_of_a_disk_with_a_partial_last_block() {
    let t = Setup::new().await;
    let (c, sid, sim) = (&t.c, &t.sid, &t.sim);
    let size: u64 = (4 << 20) + 1_638_400;
    let sr = s(&c.call("VDI.get_SR", vec![t.vdi.clone().into()]).await.unwrap());
    let mut rec = std::collections::BTreeMap::new();
    for (k, v) in [("SR", sr.as_str()), ("name_label", "odd size"), ("type", "user")] {
        rec.insert(k.to_owned(), xenvault_xapi_wire::Value::from(v));
    }
    rec.insert("virtual_size".to_owned(), xenvault_xapi_wire::Value::Int(size as i64));
    rec.insert("sharable".to_owned(), false.into());
    rec.insert("read_only".to_owned(), false.into());
    rec.insert("other_config".to_owned(), xenvault_xapi_wire::Value::Struct(Default::default()));
    let vdi = s(&c.call("VDI.create", vec![xenvault_xapi_wire::Value::Struct(rec)]).await.unwrap());
    write(c, &vdi, 100, &[3u8; 4096]).await;
    write(c, &vdi, size - 512, &[9u8; 512]).await;

    let url = |q: &str| format!("{}/export_raw_vdi?session_id={sid}&vdi={vdi}&{q}", sim.url);
    download(&url("format=raw"), &t.path("odd.raw")).await;
    download(&url("format=vhd"), &t.path("odd.vhd")).await;
    assert_eq!(std::fs::metadata(t.path("odd.raw")).unwrap().len(), size);
    let vhd = std::fs::read(t.path("odd.vhd")).unwrap();
    // Footer copy at 0, header, BAT, blocks 0 and 2 (bitmap sector + a whole 2 MiB), footer.
    assert_eq!(vhd.len() as u64, 2048 + 512 + 2 * (512 + (2 << 20)) + 512);
    let footer = &vhd[vhd.len() - 512..];
    assert_eq!(u64::from_be_bytes(footer[48..56].try_into().unwrap()), size, "current size");
    run(Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(t.path("odd.vhd"))
        .arg(t.path("odd.raw")));
    let info = run(Command::new("vhdiinfo").arg(t.path("odd.vhd")));
    assert!(info.contains(&size.to_string()), "{info}");
}

#[tokio::test]
async fn nbd_with_tls_reads_what_the_raw_export_holds() {
    let t = Setup::new().await;
    let (c, sid, vdi, sim, work) = (&t.c, &t.sid, t.vdi.clone(), &t.sim, &t.work);
    c.call("sim.scribble", vec![vdi.clone().into(), "20".into(), "65536".into(), "3".into()]).await.unwrap();
    let raw = work.path().join("disk.raw");
    download(&format!("{}/export_raw_vdi?session_id={sid}&vdi={vdi}&format=raw", sim.url), &raw).await;

    let infos = c.call("VDI.get_nbd_info", vec![vdi.clone().into()]).await.unwrap();
    let info = &infos.as_array().unwrap()[0];
    let get = |k: &str| s(info.get(k).unwrap());
    let pki = work.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    std::fs::write(pki.join("ca-cert.pem"), get("cert")).unwrap();
    let export = get("exportname");
    let port = info.get("port").unwrap().as_i64().unwrap();
    assert_eq!(port, i64::from(sim.nbd_port));
    let out = work.path().join("nbd.raw");
    // libnbd falls back from GO to EXPORT_NAME, as it must with xapi-nbd.
    let name = export.trim_start_matches('/').replace('?', "%3F").replace(':', "%3A").replace('=', "%3D");
    let uri = format!(
        "nbds://{}:{port}/{name}?tls-certificates={}&tls-hostname={}",
        get("address"),
        pki.display(),
        get("subject")
    );
    let out2 = out.clone();
    tokio::task::spawn_blocking(move || run(Command::new("nbdcopy").arg(&uri).arg(&out2))).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&raw).unwrap());
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), true).await;
    let c = login(&sim).await;
    let (vm, vdi) = first_vdi(&c, "debian-web").await;
    write(&c, &vdi, 12345, b"persisted").await;
    c.call("VDI.enable_cbt", vec![vdi.clone().into()]).await.unwrap();
    let snap = s(&c.call("VM.snapshot", vec![vm.clone().into(), "kept".into()]).await.unwrap());
    let digest = sha256(&c, &vdi).await;
    let cert = sim.cert_pem.clone();
    sim.stop().await;

    let sim = start(dir.path(), true).await;
    assert_eq!(sim.cert_pem, cert);
    let c = login(&sim).await;
    assert_eq!(sha256(&c, &vdi).await, digest);
    assert_eq!(s(&c.call("VM.get_name_label", vec![snap.clone().into()]).await.unwrap()), "kept");
    assert_eq!(c.call("VDI.get_cbt_enabled", vec![vdi.into()]).await.unwrap().as_bool(), Some(true));
    let snaps = c.call("VM.get_snapshots", vec![vm.into()]).await.unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn faults_fail_calls_and_cut_transfers() {
    let t = Setup::new().await;
    let (c, sid, vm, vdi, sim) = (&t.c, &t.sid, t.vm.clone(), t.vdi.clone(), &t.sim);
    let params: Vec<xenvault_xapi_wire::Value> = vec!["OpaqueRef:x".into()];
    c.call("sim.inject_fault", vec!["VM.snapshot".into(), "SR_FULL".into(), params.into(), "1".into()]).await.unwrap();
    let e = c.call("VM.snapshot", vec![vm.clone().into(), "a".into()]).await.unwrap_err().to_string();
    assert!(e.contains("SR_FULL"), "{e}");
    c.call("VM.snapshot", vec![vm.into(), "b".into()]).await.unwrap();

    c.call("sim.set_cut", vec!["http".into(), "100000".into()]).await.unwrap();
    // The cut may come before or after the headers: either way no complete body.
    let url = format!("{}/export_raw_vdi?session_id={sid}&vdi={vdi}&format=raw", sim.url);
    if let Ok(r) = http().get(&url).send().await {
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "a cut transfer must not look complete");
    }
    c.call("sim.clear_faults", vec![]).await.unwrap();
}

const XXHASH_CHECK: &str = r#"
import sys, tarfile, xxhash
names = []
with tarfile.open(sys.argv[1]) as t:
    members = t.getmembers()
    assert members[0].name == "ova.xml", members[0].name
    import re, xmlrpc.client
    ova = re.sub(r"^<\?xml[^>]*>", "", t.extractfile("ova.xml").read().decode())
    (doc,), _ = xmlrpc.client.loads("<methodResponse><params><param>%s</param></params></methodResponse>" % ova)
    (vm,) = [o["snapshot"] for o in doc["objects"] if o["class"] == "VM"]
    # Like xapi: the snapshot is exported as a plain (template) VM, not as a snapshot.
    assert vm["is_a_snapshot"] is False and vm["snapshot_of"] == "OpaqueRef:NULL", vm
    assert vm["is_a_template"] is True and vm["power_state"] == "Halted", vm
    for m in members:
        if m.name.endswith(".xxhash"):
            data = t.extractfile(m.name[:-len(".xxhash")]).read()
            assert t.extractfile(m).read().decode() == "%016X" % xxhash.xxh64(data).intdigest(), m.name
            names.append(m.name)
assert names
print(len(names))
"#;

#[tokio::test]
async fn xva_export_reimports_to_identical_disks() {
    let t = Setup::new().await;
    let (c, sid, vm, vdi, sim) = (&t.c, &t.sid, t.vm.clone(), t.vdi.clone(), &t.sim);
    let p = |n: &str| t.path(n);
    c.call("sim.scribble", vec![vdi.clone().into(), "5".into(), "65536".into(), "11".into()]).await.unwrap();
    let snap = s(&c.call("VM.snapshot", vec![vm.into(), "for-xva".into()]).await.unwrap());
    let snap_vdi = snapshot_vdi(c, &snap, &vdi).await;
    let digest = sha256(c, &snap_vdi).await;

    for compression in ["false", "zstd"] {
        let file = p(&format!("vm-{compression}.xva"));
        download(&format!("{}/export?session_id={sid}&ref={snap}&use_compression={compression}", sim.url), &file).await;
        if compression == "false" {
            let f = file.clone();
            tokio::task::spawn_blocking(move || run(Command::new("python3").arg("-c").arg(XXHASH_CHECK).arg(&f)))
                .await
                .unwrap();
        }
        let r = upload(&format!("{}/import?session_id={sid}", sim.url), &file).await;
        assert_eq!(r.status(), 200);
        let task = r.headers().get("task-id").unwrap().to_str().unwrap().to_owned();
        let result = s(&c.call("task.get_result", vec![task.into()]).await.unwrap());
        let new_vm = result
            .split("OpaqueRef:")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .map(|r| format!("OpaqueRef:{r}"))
            .unwrap();
        let vbds = c.call("VM.get_VBDs", vec![new_vm.clone().into()]).await.unwrap();
        let mut digests = Vec::new();
        for vbd in vbds.as_array().unwrap() {
            let d = s(&c.call("VBD.get_VDI", vec![vbd.clone()]).await.unwrap());
            digests.push(sha256(c, &d).await);
        }
        assert!(digests.contains(&digest), "{compression}: {digests:?}");
        assert_eq!(digests.len(), 2);
    }

    // A flipped byte inside a chunk fails the import and leaves no VM behind.
    let mut bytes = std::fs::read(p("vm-false.xva")).unwrap();
    let vms_before = c.call("VM.get_all", vec![]).await.unwrap().as_array().unwrap().len();
    let name = bytes.windows(9).position(|w| w == b"/00000000").expect("first chunk member");
    let data_start = name / 512 * 512 + 512;
    bytes[data_start + 10] ^= 0xff;
    std::fs::write(p("bad.xva"), &bytes).unwrap();
    let r = upload(&format!("{}/import?session_id={sid}", sim.url), &p("bad.xva")).await;
    assert_eq!(r.status(), 500);
    assert_eq!(c.call("VM.get_all", vec![]).await.unwrap().as_array().unwrap().len(), vms_before);
}

#[tokio::test]
async fn nbd_refuses_bad_sessions_and_cuts_when_told() {
    let t = Setup::new().await;
    let (c, vdi, work) = (&t.c, t.vdi.clone(), &t.work);
    let infos = c.call("VDI.get_nbd_info", vec![vdi.into()]).await.unwrap();
    let info = &infos.as_array().unwrap()[0];
    let get = |k: &str| s(info.get(k).unwrap());
    let pki = work.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    std::fs::write(pki.join("ca-cert.pem"), get("cert")).unwrap();
    let port = info.get("port").unwrap().as_i64().unwrap();
    let uri = |export: &str| {
        let name = export.trim_start_matches('/').replace('?', "%3F").replace(':', "%3A").replace('=', "%3D");
        format!(
            "nbds://{}:{port}/{name}?tls-certificates={}&tls-hostname={}",
            get("address"),
            pki.display(),
            get("subject")
        )
    };
    let nbdcopy = |uri: String, out: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            Command::new("nbdcopy").arg(uri).arg(out).output().unwrap().status.success()
        })
        .await
        .unwrap()
    };
    let export = get("exportname");
    let forged =
        format!("{}OpaqueRef:00000000-0000-0000-0000-000000000000", export.split("OpaqueRef:").next().unwrap());
    assert!(!nbdcopy(uri(&forged), work.path().join("a.raw")).await, "a bad session must be refused");
    c.call("sim.set_cut", vec!["nbd".into(), "1048576".into()]).await.unwrap();
    assert!(!nbdcopy(uri(&export), work.path().join("b.raw")).await, "a cut connection must fail the copy");
    c.call("sim.set_cut", vec!["nbd".into(), "".into()]).await.unwrap();
    assert!(nbdcopy(uri(&export), work.path().join("c.raw")).await);
}

#[tokio::test]
async fn transfers_of_another_hosts_local_disk_are_redirected() {
    let t = Setup::new().await;
    let (c, sid, sim) = (&t.c, &t.sid, &t.sim);
    let (_, win_vdi) = first_vdi(c, "win-fileserver").await;
    write(c, &win_vdi, 4096, b"on host 2").await;
    let url = format!("{}/export_raw_vdi?session_id={sid}&vdi={win_vdi}&format=raw", sim.url);
    let no_follow = http_with(reqwest::redirect::Policy::none());
    let r = no_follow.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers().get("location").unwrap().to_str().unwrap().to_owned();
    assert!(location.starts_with("http://127.0.0.2:"), "{location}");
    // Followed, the transfer works and carries the disk.
    let body = get(&url).await.bytes().await.unwrap();
    assert_eq!(body.len() as u64, DISK);
    assert_eq!(&body[4096..4105], b"on host 2");
}
