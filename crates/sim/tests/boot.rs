//! Boots on the demo pool with real file systems: a new domain per start, the guest agent
//! reporting only for the Linux VM whose disk carries xe-guest-utilities, crashes and
//! refused starts from faults.

mod common;

use common::s;
use std::time::Duration;
use xenvault_sim::client::SimClient;
use xenvault_sim::{DemoDisks, SimConfig, Simulator};
use xenvault_xapi_wire::Value;

const NULL: &str = "OpaqueRef:NULL";

async fn vm(c: &SimClient, name: &str) -> String {
    let vms = c.call("VM.get_by_name_label", vec![name.into()]).await.unwrap();
    s(&vms.as_array().unwrap()[0])
}

async fn get(c: &SimClient, field: &str, vm: &str) -> Value {
    c.call(&format!("VM.get_{field}"), vec![vm.into()]).await.unwrap()
}

/// Polls until `done` holds for the VM's record (a boot runs in the background), at most 30 s.
async fn until(c: &SimClient, vm: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let record = c.call("VM.get_record", vec![vm.into()]).await.unwrap();
        if done(&record) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{vm}: never {what}");
}

fn field<'a>(record: &'a Value, name: &str) -> &'a str {
    record.as_struct().and_then(|r| r.get(name)).and_then(Value::as_str).unwrap_or_default()
}

fn domid(record: &Value) -> i64 {
    record.as_struct().and_then(|r| r.get("domid")).and_then(Value::as_i64).unwrap()
}

async fn power(c: &SimClient, call: &str, vm: &str) -> Result<Value, xenvault_xapi::Error> {
    let args = if call == "start" { vec![vm.into(), false.into(), false.into()] } else { vec![vm.into()] };
    c.call(&format!("VM.{call}"), args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agents_report_from_disks_with_tools_and_faults_stop_boots() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        demo_disks: DemoDisks::Fixtures,
        guest_agent_delay: Duration::from_millis(300),
        ..SimConfig::new(dir.path())
    };
    let sim = Simulator::start(config).await.unwrap();
    let c = SimClient::login(&sim.url, &sim.password).await.unwrap();
    let (linux, windows) = (vm(&c, "debian-web").await, vm(&c, "win-fileserver").await);
    let seeded_domid = domid(&c.call("VM.get_record", vec![linux.clone().into()]).await.unwrap());
    assert!(seeded_domid > 0);

    // Halted: no domain, no guest metrics (xapi destroys them with the domain).
    for vm in [&linux, &windows] {
        power(&c, "hard_shutdown", vm).await.unwrap();
        assert_eq!(get(&c, "domid", vm).await.as_i64(), Some(-1));
        assert_eq!(s(&get(&c, "guest_metrics", vm).await), NULL);
    }

    // Windows first: by the time the Linux agent has reported, Windows' would have too.
    power(&c, "start", &windows).await.unwrap();
    power(&c, "start", &linux).await.unwrap();
    let started = c.call("VM.get_record", vec![linux.clone().into()]).await.unwrap();
    assert_eq!(field(&started, "power_state"), "Running");
    assert!(domid(&started) > seeded_domid, "a new domain: {started:?}");
    let metrics = field(&started, "metrics").to_owned();
    let start_time = c.call("VM_metrics.get_start_time", vec![metrics.into()]).await.unwrap();
    assert_ne!(start_time, Value::DateTime("19700101T00:00:00Z".into()));

    let reported = until(&c, &linux, "reported guest metrics", |r| field(r, "guest_metrics") != NULL).await;
    let gm = c.call("VM_guest_metrics.get_record", vec![field(&reported, "guest_metrics").into()]).await.unwrap();
    let gm = gm.as_struct().unwrap();
    let os = gm["os_version"].as_struct().unwrap();
    assert_eq!(os["name"].as_str(), Some("Debian GNU/Linux 12 (bookworm)"));
    assert_eq!((os["distro"].as_str(), os["major"].as_str()), (Some("debian"), Some("12")));
    assert!(gm["networks"].as_struct().unwrap().contains_key("0/ip"), "{gm:?}");
    assert_eq!(gm["PV_drivers_detected"].as_bool(), Some(true));
    // No tools on the Windows disk: running, silent; a clean shutdown needs the agent.
    let windows_now = c.call("VM.get_record", vec![windows.clone().into()]).await.unwrap();
    assert_eq!((field(&windows_now, "power_state"), field(&windows_now, "guest_metrics")), ("Running", NULL));
    let refused = power(&c, "clean_shutdown", &windows).await.unwrap_err().to_string();
    assert!(refused.contains("VM_LACKS_FEATURE"), "{refused}");

    // A reboot is a new domain whose agent reports again.
    let before = domid(&reported);
    power(&c, "clean_reboot", &linux).await.unwrap();
    let rebooted = c.call("VM.get_record", vec![linux.clone().into()]).await.unwrap();
    assert!(domid(&rebooted) > before);
    until(&c, &linux, "reported after the reboot", |r| field(r, "guest_metrics") != NULL).await;

    // A VM made to crash 1 s after start: its agent reports, then the domain is gone.
    c.call("sim.crash_on_boot", vec!["debian-w*".into(), "1".into()]).await.unwrap();
    power(&c, "hard_shutdown", &linux).await.unwrap();
    power(&c, "start", &linux).await.unwrap();
    let crashed = until(&c, &linux, "crashed", |r| field(r, "power_state") == "Halted").await;
    assert_eq!((domid(&crashed), field(&crashed, "guest_metrics")), (-1, NULL));
    assert_eq!(field(&crashed, "resident_on"), NULL);

    // A start xapi refuses: the VM stays halted.
    c.call("sim.clear_faults", vec![]).await.unwrap();
    let fault = vec!["VM.start".into(), "BOOTLOADER_FAILED".into(), Value::from(vec![linux.as_str()]), "1".into()];
    c.call("sim.inject_fault", fault).await.unwrap();
    let refused = power(&c, "start", &linux).await.unwrap_err().to_string();
    assert!(refused.contains("BOOTLOADER_FAILED"), "{refused}");
    assert_eq!(s(&get(&c, "power_state", &linux).await), "Halted");
    sim.stop().await;
}
