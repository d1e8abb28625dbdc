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
assert "VM.snapshot" in s.xenapi.system.listMethods()
s.xenapi.session.logout()
print("ok")
"#;

#[tokio::test]
async fn python_sdk_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), false).await;
    let (url, password) = (sim.url.clone(), sim.password.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("python3").args(["-c", SDK_SCRIPT, &url, &password]))
    })
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

#[tokio::test]
async fn jsonrpc_versions_and_malformed_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), true).await;
    let url = format!("{}/jsonrpc", sim.url);
    let (status, v1) = post(&url, r#"{"method":"session.login_with_password","params":["root","xenvault"],"id":7}"#).await;
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
