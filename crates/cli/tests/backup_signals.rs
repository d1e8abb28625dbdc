//! `xenvault backup` interrupted by SIGINT mid-transfer, against a standalone simulator
//! slowed by its bandwidth fault: exit 130, no snapshot of ours left on the pool, no VM
//! lock, no live repository lock, nothing committed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use standalone_sim::StandaloneSim;
use xenvault_sim::client::SimClient;

mod standalone_sim;

const VM: &str = "debian-web";
const PASSPHRASE: &str = "signals";

fn xenvault(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xenvault"));
    command
        .env("XENVAULT_PASSPHRASE", PASSPHRASE)
        .env("XENVAULT_CONFIG", dir.join("config.toml"))
        .env("XENVAULT_CACHE_DIR", dir.join("cache"));
    command
}

fn ok(out: Output, what: &str) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{what}: exit {:?}\n{}\n{}", out.status.code(), text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// A simulator whose transfers run at `bandwidth` bytes/s and whose calls take
/// `latency_ms` more, a registered pool, a repository.
fn setup(name: &str, bandwidth: u64, latency_ms: u64) -> (PathBuf, StandaloneSim, String) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sim = StandaloneSim::start(
        &dir.join("sim"),
        &["--blank-disks-mib", "64", "--bandwidth", &bandwidth.to_string(), "--latency-ms", &latency_ms.to_string()],
    );
    let password = dir.join("pool.password");
    std::fs::write(&password, xenvault_sim::DEFAULT_PASSWORD).unwrap();
    ok(
        xenvault(&dir)
            .args(["pool", "add", "sim", "--url", &sim.url, "--insecure", "--password-file"])
            .arg(&password)
            .output()
            .unwrap(),
        "pool add",
    );
    let repo = dir.join("repo").to_str().unwrap().to_owned();
    ok(
        xenvault(&dir)
            .args(["init", "--repo", &repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"])
            .output()
            .unwrap(),
        "init",
    );
    (dir, sim, repo)
}

fn live_locks(repo: &str) -> usize {
    std::fs::read_dir(Path::new(repo).join("locks")).map(|d| d.count()).unwrap_or(0)
}

/// Snapshots on the pool named as ours or tagged as ours, and the VM's backup lock.
async fn leftovers(sim: &StandaloneSim) -> (Vec<String>, Option<String>) {
    let vms = sim.vms().await;
    let snapshots = vms.iter().filter(|vm| vm.is_our_snapshot()).map(|vm| vm.uuid.clone()).collect();
    let lock = vms.iter().find(|vm| vm.name_label == VM).and_then(|vm| vm.backup_lock()).map(str::to_owned);
    (snapshots, lock)
}

/// `xenvault backup` of the VM, returned once its transfer runs.
async fn start_backup(dir: &Path, repo: &str) -> Child {
    let mut backup = xenvault(dir)
        .args(["backup", "--pool", "sim", "--vm", VM, "--repo", repo, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The repository lock appears when the restore point starts: the transfer is next.
    let started = Instant::now();
    while live_locks(repo) == 0 {
        assert!(backup.try_wait().unwrap().is_none(), "the backup ended before its transfer began");
        assert!(started.elapsed() < Duration::from_secs(120), "the backup never started its transfer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    backup
}

fn interrupt(child: &Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_transfer_cleans_up_and_exits_130() {
    // 2 × 64 MiB at 4 MiB/s: the transfer lasts about half a minute.
    let (dir, sim, repo) = setup("backup-sigint", 4 << 20, 0);
    let backup = start_backup(&dir, &repo).await;
    let (during, _) = leftovers(&sim).await;
    assert_eq!(during.len(), 1, "the running backup's snapshot: {during:?}");
    interrupt(&backup);
    let out = backup.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("snapshot"), "says what it cleans: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON report");
    assert!(report["vms"][0]["error"].as_str().unwrap_or_default().contains("cancelled"), "{report}");

    let (snapshots, lock) = leftovers(&sim).await;
    assert!(snapshots.is_empty(), "snapshots left: {snapshots:?}");
    assert_eq!(lock, None, "the VM's backup lock is released");
    assert_eq!(live_locks(&repo), 0, "the repository lock is released");
    let listed = ok(xenvault(&dir).args(["snapshots", "--repo", &repo, "--json"]).output().unwrap(), "snapshots");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "nothing committed: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_quits_at_once_and_the_next_run_cleans_up() {
    // Slow calls: the cleanup after the first signal is still running at the second.
    let (dir, sim, repo) = setup("backup-sigint-twice", 4 << 20, 300);
    let backup = start_backup(&dir, &repo).await;
    interrupt(&backup);
    tokio::time::sleep(Duration::from_millis(200)).await;
    interrupt(&backup);
    let out = backup.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("forced exit"), "{stderr}");

    let client = SimClient::login(&sim.url, xenvault_sim::DEFAULT_PASSWORD).await.unwrap();
    client.call("sim.clear_faults", vec![]).await.unwrap();
    let report = ok(
        xenvault(&dir).args(["backup", "--pool", "sim", "--vm", VM, "--repo", &repo, "--json"]).output().unwrap(),
        "backup",
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["vms"][0]["status"], "ok", "{report}");
    let (snapshots, lock) = leftovers(&sim).await;
    assert_eq!(snapshots.len(), 1, "only the new base is left: {snapshots:?} ({report})");
    assert_eq!(lock, None);
}
