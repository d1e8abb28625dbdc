//! `xenvault healthcheck` against a standalone simulator with real file systems: the
//! Linux VM (guest tools on its disk) passes, the Windows-like VM (none) passes the weaker
//! check, a VM made to crash or refused a start fails (exit 3), and the temporary VM
//! and its disks are gone after each; `--no-boot` reads every file system and fails on
//! one corrupted on purpose.

mod sim_pool;
mod standalone_sim;

use sim_pool::{PASSPHRASE, Pool, fails, json, ok};
use standalone_sim::StandaloneSim;
use std::path::PathBuf;
use xenvault_xapi_wire::Value;

/// The objects a health check must leave as they were: VM and VDI uuids.
async fn inventory(pool: &Pool) -> (Vec<String>, Vec<String>) {
    let uuids = |all: Value| {
        let mut uuids: Vec<String> = match all {
            Value::Struct(records) => {
                records.values().filter_map(|r| r.as_struct()?.get("uuid")?.as_str().map(str::to_owned)).collect()
            }
            other => panic!("get_all_records: {other:?}"),
        };
        uuids.sort();
        uuids
    };
    (uuids(pool.call("VM.get_all_records", &[]).await), uuids(pool.call("VDI.get_all_records", &[]).await))
}

fn fixtures_pool(name: &str) -> Pool {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Real file systems (the Linux root carries xe-guest-utilities); the agent reports quickly.
    let sim = StandaloneSim::start(&dir.join("sim"), &["--guest-agent-delay-ms", "300"]);
    let pool = Pool { dir, sim };
    let password = pool.dir.join("pool.password");
    std::fs::write(&password, xenvault_sim::DEFAULT_PASSWORD).unwrap();
    let add =
        ["pool", "add", "sim", "--url", &pool.sim.url, "--insecure", "--password-file", password.to_str().unwrap()];
    ok(pool.run(&add), "pool add");
    pool
}

fn healthcheck(pool: &Pool, repo: &str, point: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["healthcheck", point, "--repo", repo, "--json"];
    args.extend_from_slice(extra);
    pool.run(&args)
}

const BOOT: &[&str] = &["--pool", "sim", "--timeout", "30", "--run-for", "2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_and_no_boot_checks_of_linux_windows_and_broken_points() {
    let pool = fixtures_pool("health-cli");
    let repo = pool.init_repo("repo", PASSPHRASE);
    let linux = pool.backup("debian-web", &repo)["restore_point"].as_str().unwrap().to_owned();
    let windows = pool.backup("win-fileserver", &repo)["restore_point"].as_str().unwrap().to_owned();
    let before = inventory(&pool).await;

    // Linux: the guest agent reports from the restored disk.
    let report = json(&ok(healthcheck(&pool, &repo, &linux, BOOT), "linux health check"));
    assert_eq!(report["outcome"], "pass", "{report}");
    assert_eq!(report["guest_os"], "Debian GNU/Linux 12 (bookworm)", "{report}");
    assert_eq!(report["agent_expected"], true, "{report}");
    let to_boot = report["seconds_to_boot"].as_f64().unwrap();
    assert!(to_boot > 0.0 && to_boot < 30.0, "{report}");
    assert_eq!(report["left_behind"], serde_json::json!([]), "{report}");
    assert_eq!(inventory(&pool).await, before, "the temporary VM and its disks are gone");

    // Windows-like: no tools on its disk, so it only stays up: the weaker check.
    let report = json(&ok(healthcheck(&pool, &repo, &windows, BOOT), "windows health check"));
    assert_eq!(report["outcome"], "weak-pass", "{report}");
    assert!(report["reason"].as_str().unwrap().contains("stayed running for 2 s"), "{report}");
    assert!(report.get("seconds_to_boot").is_none(), "{report}");
    assert_eq!(inventory(&pool).await, before);

    // A VM made to crash as soon as it starts: a fail, exit 3, cleaned up.
    pool.call("sim.crash_on_boot", &["*health check*", "0"]).await;
    let out = healthcheck(&pool, &repo, &linux, BOOT);
    let report = json(&sim_pool::text(&out.stdout));
    fails(out, 3, "crashing VM");
    assert_eq!(report["outcome"], "fail", "{report}");
    assert!(report["reason"].as_str().unwrap().contains("stopped (Halted)"), "{report}");
    assert_eq!(inventory(&pool).await, before);

    // A start xapi refuses: a fail naming the error.
    pool.call("sim.clear_faults", &[]).await;
    let fault = [Value::from("VM.start"), "BOOTLOADER_FAILED".into(), Value::from(vec!["boot"]), "1".into()];
    pool.client().await.call("sim.inject_fault", fault.to_vec()).await.unwrap();
    let out = healthcheck(&pool, &repo, &windows, BOOT);
    let text = sim_pool::text(&out.stdout);
    fails(out, 3, "refused start");
    assert!(json(&text)["reason"].as_str().unwrap().contains("BOOTLOADER_FAILED"), "{text}");
    assert_eq!(inventory(&pool).await, before);

    // No boot: every file system of both points reads to the end.
    let report = json(&ok(healthcheck(&pool, &repo, &linux, &["--no-boot"]), "no-boot linux"));
    assert_eq!(report["outcome"], "pass", "{report}");
    let volumes: Vec<&str> =
        report["volumes"].as_array().unwrap().iter().map(|v| v["volume"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["p1", "p5", "disk", "vgdata/home", "vgdata/srv"], "{report}");
    let report = json(&ok(healthcheck(&pool, &repo, &windows, &["--no-boot"]), "no-boot windows"));
    assert_eq!(report["outcome"], "pass", "{report}");

    // The root file system's group descriptors overwritten in the VM, then backed up again.
    let manifest: serde_json::Value =
        json(&std::fs::read_to_string(pool.sim.state_dir.join("fixtures/linux-root.manifest.json")).unwrap());
    let p1 = manifest["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "p1").unwrap();
    let descriptors = p1["offset"].as_u64().unwrap() + 4096;
    let root_vdi = pool.backup("debian-web", &repo)["disks"][0]["vdi_uuid"].as_str().unwrap().to_owned();
    use base64::Engine;
    let garbage = base64::engine::general_purpose::STANDARD.encode([0x5au8; 4096]);
    pool.call("sim.write", &[&root_vdi, &descriptors.to_string(), &garbage]).await;
    let broken = pool.backup("debian-web", &repo)["restore_point"].as_str().unwrap().to_owned();
    let out = healthcheck(&pool, &repo, &broken, &["--no-boot"]);
    let text = sim_pool::text(&out.stdout);
    fails(out, 3, "no-boot of a corrupted file system");
    let report = json(&text);
    assert_eq!(report["outcome"], "fail", "{report}");
    let bad: Vec<&serde_json::Value> =
        report["volumes"].as_array().unwrap().iter().filter(|v| v.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!((bad[0]["disk"].as_str(), bad[0]["volume"].as_str()), (Some("0"), Some("p1")), "{report}");

    // Text output, and usage errors.
    let out = ok(pool.run(&["healthcheck", &linux, "--repo", &repo, "--no-boot"]), "no-boot text");
    assert!(out.starts_with("pass of "), "{out}");
    let err = fails(pool.run(&["healthcheck", &linux, "--repo", &repo]), 2, "no pool");
    assert!(err.contains("--pool"), "{err}");
}
