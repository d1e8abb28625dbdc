//! RPC shapes: the official Python SDK (XML-RPC over HTTPS) and raw JSON-RPC 1.0 /
//! 2.0 bodies, failures and malformed requests.

mod common;

use common::*;
use std::process::Command;

const SDK_SCRIPT: &str = r#"
import sys, XenAPI
url, password = sys.argv[1], sys.argv[2]
s = XenAPI.Session(url, ignore_ssl=True)
try:
    s.xenapi.login_with_password("root", "wrong")
    raise SystemExit("bad password accepted")
except XenAPI.Failure as e:
    assert e.details[0] == "SESSION_AUTHENTICATION_FAILED", e.details
s.xenapi.login_with_password("root", password, "2.21", "test")
pool = list(s.xenapi.pool.get_all_records().values())[0]
assert pool["master"].startswith("OpaqueRef:"), pool
vms = s.xenapi.VM.get_all_records()
names = {v["name_label"] for v in vms.values()}
assert {"debian-web", "win-fileserver", "Debian 12 template", "debian-clone"} <= names, names
vm = s.xenapi.VM.get_by_name_label("debian-web")[0]
rec = s.xenapi.VM.get_record(vm)
assert rec["power_state"] == "Running" and rec["is_a_snapshot"] is False
vdi = s.xenapi.VBD.get_VDI(rec["VBDs"][0])
assert isinstance(s.xenapi.VDI.get_virtual_size(vdi), str)  # int64 travels as a string
s.xenapi.VM.add_to_other_config(vm, "k", "v")
try:
    s.xenapi.VM.add_to_other_config(vm, "k", "v")
    raise SystemExit("duplicate key accepted")
except XenAPI.Failure as e:
    assert e.details[0] == "MAP_DUPLICATE_KEY", e.details
s.xenapi.VM.remove_from_other_config(vm, "k")
s.xenapi.VM.add_tags(vm, "t1")
assert "t1" in s.xenapi.VM.get_tags(vm)
snap = s.xenapi.VM.snapshot(vm, "sdk-snap")
srec = s.xenapi.VM.get_record(snap)
assert srec["is_a_snapshot"] and srec["snapshot_of"] == vm and srec["is_a_template"]
assert snap in s.xenapi.VM.get_snapshots(vm)
win = s.xenapi.VM.get_by_name_label("win-fileserver")[0]
for call, args, code in [
    (s.xenapi.VM.snapshot_with_quiesce, (win, "q"), "VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED"),
    (s.xenapi.VM.start, (vm, False, False), "VM_BAD_POWER_STATE"),
    (s.xenapi.VM.get_record, ("OpaqueRef:nope",), "HANDLE_INVALID"),
    (s.xenapi.VM.get_by_uuid, ("nope",), "UUID_INVALID"),
    (s.xenapi.VM.frobnicate, (vm,), "MESSAGE_METHOD_UNKNOWN"),
    (s.xenapi.VM.get_record, (vm, "extra"), "MESSAGE_PARAMETER_COUNT_MISMATCH"),
    (s.xenapi.VDI.data_destroy, (s.xenapi.VBD.get_VDI(srec["VBDs"][0]),), "VDI_NO_CBT_METADATA"),
]:
    try:
        call(*args)
        raise SystemExit("%s succeeded" % code)
    except XenAPI.Failure as e:
        assert e.details[0] == code, (code, e.details)
try:
    s.xenapi.VM.clean_shutdown(win)
    raise SystemExit("clean shutdown of a VM without guest tools accepted")
except XenAPI.Failure as e:
    assert e.details == ["VM_LACKS_FEATURE", win], e.details
try:
    s.xenapi.VM.hard_shutdown(win)
    s.xenapi.VM.hard_shutdown(win)
    raise SystemExit("shutdown of a halted VM accepted")
except XenAPI.Failure as e:
    assert e.details == ["VM_BAD_POWER_STATE", win, "paused, suspended, running", "halted"], e.details
try:
    s.xenapi.VM.snapshot(vm)
except XenAPI.Failure as e:
    assert e.details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "1"], e.details
q = s.xenapi.VM.snapshot_with_quiesce(vm, "quiesced")
assert s.xenapi.VM.get_is_a_snapshot(q)
task = s.xenapi.Async.VM.clone(s.xenapi.VM.get_by_name_label("debian-clone")[0], "async-clone")
import time
for _ in range(100):
    if s.xenapi.task.get_status(task) != "pending": break
    time.sleep(0.05)
assert s.xenapi.task.get_status(task) == "success"
assert s.xenapi.task.get_result(task).startswith("<value>OpaqueRef:")
ev = getattr(s.xenapi.event, "from")(["vm"], "", 0.0)
assert ev["events"] and all(e["class"] == "vm" for e in ev["events"]), ev["events"][:1]
s.xenapi.VM.set_name_description(vm, "changed")
ev2 = getattr(s.xenapi.event, "from")(["vm"], ev["token"], 1.0)
assert [e["ref"] for e in ev2["events"]] == [vm] and ev2["events"][0]["operation"] == "mod", ev2
counts = ev2["valid_ref_counts"]
assert counts["vm"] >= 4 and all(type(n) is int for n in counts.values()), counts  # int32: <i4>
# Created and destroyed between two calls: xapi reports neither the add nor the del.
t = s.xenapi.task.create("short-lived", "")
s.xenapi.task.destroy(t)
ev3 = getattr(s.xenapi.event, "from")(["task"], ev2["token"], 0.0)
assert t not in [e["ref"] for e in ev3["events"]], ev3["events"]
# The deprecated but still used register/next/unregister and get_current_id.
first = int(s.xenapi.event.get_current_id())
s.xenapi.event.register(["vm"])
s.xenapi.VM.set_name_description(vm, "changed again")
nxt = s.xenapi.event.next()
assert [(e["ref"], e["operation"]) for e in nxt] == [(vm, "mod")], nxt
assert int(nxt[0]["id"]) > first and int(s.xenapi.event.get_current_id()) >= int(nxt[0]["id"])
s.xenapi.event.unregister(["vm"])
# Like xapi: a bare list (no status struct), synchronous names, only calls the class has.
methods = s.system.listMethods()
assert "VM.snapshot" in methods and "VM.get_all_records" in methods and "event.next" in methods, methods[:5]
assert "session.get_all_records" not in methods and not [m for m in methods if m.startswith("Async.")]
s.xenapi.session.logout()
print("ok")
"#;

#[tokio::test]
async fn python_sdk_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), false).await;
    let (url, password) = (sim.url.clone(), sim.password.clone());
    let out =
        tokio::task::spawn_blocking(move || run(Command::new("python3").args(["-c", SDK_SCRIPT, &url, &password])))
            .await
            .unwrap();
    assert_eq!(out.trim(), "ok");
    sim.stop().await;
}

async fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let r = http().post(url).body(body.to_owned()).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// xapi's HTTP server picks handlers by the longest path prefix (Xen Orchestra posts
/// XML-RPC to `/xmlrpc` and downloads from `/export/` and `/export_raw_vdi/`).
#[tokio::test]
async fn handlers_match_by_path_prefix_like_xapi() {
    let setup = Setup::new().await;
    let url = setup.sim.url.clone();
    let login = r#"<?xml version="1.0"?><methodCall><methodName>session.login_with_password</methodName><params><param><value>root</value></param><param><value>xenvault</value></param></params></methodCall>"#;
    for path in ["/", "/RPC2", "/json", "/xmlrpc"] {
        let r = http().post(format!("{url}{path}")).body(login).send().await.unwrap();
        assert_eq!(r.status(), 200, "POST {path}");
        assert_eq!(r.headers()["content-type"], "text/xml", "POST {path}");
        assert!(r.text().await.unwrap().contains("<value>Success</value>"), "POST {path}");
    }
    for path in ["/jsonrpc", "/json", "/"] {
        let r = http()
            .request(reqwest::Method::OPTIONS, format!("{url}{path}"))
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "OPTIONS {path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(r.headers()["access-control-allow-headers"], "content-type, X-Requested-With");
        assert_eq!(r.headers()["access-control-allow-methods"], "PUT");
    }
    assert_eq!(get(&format!("{url}/no_such_handler")).await.status(), 403);

    let sid = &setup.sid;
    let want = sha256(&setup.c, &setup.vdi).await;
    for path in ["/export_raw_vdi", "/export_raw_vdi/", "/export_raw_vdi/disk.raw"] {
        let r = get(&format!("{url}{path}?session_id={sid}&vdi={}&format=raw", setup.vdi)).await;
        assert_eq!(r.status(), 200, "GET {path}");
        let body = r.bytes().await.unwrap();
        let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        assert_eq!(got, want, "GET {path}");
    }
    let raw = setup.path("disk.raw");
    download(&format!("{url}/export_raw_vdi/?session_id={sid}&vdi={}&format=raw", setup.vdi), &raw).await;
    let sr = s(&setup.c.call("VDI.get_SR", vec![setup.vdi.clone().into()]).await.unwrap());
    let r = upload(&format!("{url}/import_raw_vdi/?session_id={sid}&sr_id={sr}&format=raw"), &raw).await;
    assert_eq!(r.status(), 200, "PUT /import_raw_vdi/");

    let snap = s(&setup.c.call("VM.snapshot", vec![setup.vm.clone().into(), "prefix".into()]).await.unwrap());
    let xva = setup.path("vm.xva");
    for path in ["/export", "/export/", "/export/vm.xva"] {
        download(&format!("{url}{path}?session_id={sid}&ref={snap}"), &xva).await;
        let r = upload(&format!("{url}/import/?session_id={sid}&sr_id={sr}"), &xva).await;
        assert_eq!(r.status(), 200, "PUT /import/ of GET {path}");
    }
    setup.sim.stop().await;
}

#[tokio::test]
async fn jsonrpc_versions_and_malformed_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), true).await;
    let url = format!("{}/jsonrpc", sim.url);
    let (status, v1) =
        post(&url, r#"{"method":"session.login_with_password","params":["root","xenvault"],"id":7}"#).await;
    assert_eq!(status, 200);
    assert!(v1["error"].is_null() && v1["id"] == 7, "{v1}");
    let session = v1["result"].as_str().unwrap().to_owned();

    let call = format!(r#"{{"jsonrpc":"2.0","method":"VDI.get_all_records","params":["{session}"],"id":"a"}}"#);
    let (_, v2) = post(&url, &call).await;
    let any = v2["result"].as_object().unwrap().values().next().unwrap().clone();
    assert!(any["virtual_size"].is_number(), "JSON-RPC ints are numbers: {any}");

    let bad = r#"{"jsonrpc":"2.0","method":"VM.get_all","params":["OpaqueRef:bad"],"id":1}"#;
    let (_, e2) = post(&url, bad).await;
    assert_eq!(e2["error"]["message"], "SESSION_INVALID");
    assert_eq!(e2["error"]["data"][0], "OpaqueRef:bad");
    let (_, e1) = post(&url, r#"{"method":"VM.get_all","params":["OpaqueRef:bad"],"id":2}"#).await;
    assert_eq!(e1["error"][0], "SESSION_INVALID");
    assert!(e1["result"].is_null());

    for body in ["{not json", r#"{"method":"VM.get_all","params":[],"id":null}"#] {
        assert_eq!(post(&url, body).await.0, 500, "{body}");
    }
    let r = http().post(format!("{}/", sim.url)).body("<methodCall><oops").send().await.unwrap();
    assert_eq!(r.status(), 500);
    let r = get(&format!("{}/export_raw_vdi?session_id=OpaqueRef:bad&vdi=x", sim.url)).await;
    assert_eq!(r.status(), 401);
    sim.stop().await;
}
