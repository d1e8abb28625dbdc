//! The web UI end to end: a server, the simulated pool and a local repository, driven from
//! Debian's chromium by tests/ui/web-ui.mjs (playwright-core). The script logs in, adds the
//! pool (confirming its certificate's fingerprint) and the repository, creates a job, follows
//! a run's live feed while this side finishes the run, browses a restore point (a real
//! backup of the simulator's demo VM) and downloads a file, restores the VM as a new one,
//! and checks that an operator cannot edit a job. Screenshots of each step go to target/ui-screenshots/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{ADMIN_PASSWORD, start};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use xenvault_catalog::{Catalog, LogLevel, Role};
use xenvault_engine::job::{self as engine, BackupOptions};
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::{Level, Requested};
use xenvault_fixtures::DiskManifest;
use xenvault_jobs::model::{Job, Run, RunStatus, RunTotals, Task, TaskKind, TaskStatus, Trigger};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_repo::{BackendOptions, InitOptions, KdfParams, Repository, Secret};
use xenvault_sim::{DemoDisks, SimConfig, SimHandle, Simulator};

const PASSPHRASE: &str = "repository passphrase";
const OPERATOR_PASSWORD: &str = "operator password";
const GIB: u64 = 1 << 30;
/// What the script prints once the run page follows the live run.
const WATCHING: &str = "watching-live-run";
/// The simulator's demo VM with real file systems (xenvault-fixtures).
const VM: &str = "debian-web";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn job(name: &str) -> Job {
    serde_json::from_value(json!({"name": name, "pool": "sim", "repository": "local",
        "schedules": [{"cron": "0 1 * * *", "timezone": "Europe/Berlin"}]}))
    .expect("job")
}

fn run(job_id: &str, status: RunStatus) -> Run {
    let now = chrono::Utc::now();
    Run {
        id: String::new(),
        job_id: job_id.into(),
        schedule_id: None,
        parent_run_id: None,
        trigger: Trigger::Schedule,
        status,
        level: Some(xenvault_jobs::model::Level::Inc),
        scheduled_for: Some(now),
        queued_at: now - chrono::Duration::minutes(3),
        started_at: Some(now - chrono::Duration::minutes(3)),
        finished_at: status.is_finished().then_some(now),
        totals: RunTotals::default(),
        error: (status == RunStatus::Failed).then(|| "web01: the pool refused the snapshot".to_owned()),
    }
}

/// A disk task under `vm`, read by `strategy`, `read` of `total` bytes so far.
fn disk(run_id: &str, id: &str, vm: &str, name: &str, strategy: &str, reason: &str, read: u64) -> Task {
    let mut task = Task::started(id.into(), run_id, Some(vm), TaskKind::Disk, name);
    task.strategy = Some(strategy.into());
    task.reason = Some(reason.into());
    task.bytes_total = Some(GIB);
    task.bytes_read = read;
    task
}

/// A failed run of job "flaky" (the dashboard lists failures first) and a running run of
/// "nightly" whose VM has two disks part-way; returns the running run and its tasks.
async fn seed_history(catalog: &Catalog) -> (Run, Vec<Task>) {
    let flaky = catalog.create_job(job("flaky")).await.unwrap();
    catalog.create_run(run(&flaky.id, RunStatus::Failed)).await.unwrap();
    let nightly = catalog.create_job(job("nightly")).await.unwrap();
    let live = catalog.create_run(run(&nightly.id, RunStatus::Running)).await.unwrap();
    let mut vm = Task::started("vm".into(), &live.id, None, TaskKind::Vm, "web01");
    vm.subject = Some("0f4c3e2a-web01".into());
    let tasks = vec![
        vm,
        disk(&live.id, "d0", "vm", "0 root", "cbt-nbd", "changed blocks since the last restore point", GIB / 4),
        disk(&live.id, "d1", "vm", "1 data", "full", "changed block tracking was off", GIB / 8),
    ];
    for task in &tasks {
        catalog.save_task(task).await.unwrap();
    }
    catalog.append_log(&live.id, Some("vm"), LogLevel::Info, "snapshot taken").await.unwrap();
    (live, tasks)
}

/// The runner's side of the live run: both disks read, the VM and the run succeed.
async fn finish(catalog: &Catalog, mut live: Run, tasks: Vec<Task>) {
    for mut task in tasks.into_iter().rev() {
        task.status = TaskStatus::Success;
        task.finished_at = Some(chrono::Utc::now());
        if task.kind == TaskKind::Disk {
            task.bytes_read = GIB;
            task.bytes_stored = GIB / 3;
        }
        catalog.save_task(&task).await.unwrap();
    }
    catalog.append_log(&live.id, Some("d1"), LogLevel::Info, "disk 1 read").await.unwrap();
    live.status = RunStatus::Success;
    live.finished_at = Some(chrono::Utc::now());
    live.totals = RunTotals { vms: 1, vms_ok: 1, vms_failed: 0, bytes_read: 2 * GIB, bytes_stored: 2 * GIB / 3 };
    catalog.update_run(&live).await.unwrap();
}

/// Tags the demo VM prod and backs it up (full) into the repository, as a job's run would.
async fn back_up_demo_vm(sim: &SimHandle, fingerprint: &str, repo: Repository) {
    let login = PoolLogin {
        name: "sim".into(),
        entry: PoolEntry {
            url: sim.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(fingerprint).unwrap(),
        },
        password: sim.password.clone(),
    };
    let host = xenvault_pool::Host::connect(&login).await.unwrap();
    // The job the admin creates selects the VMs tagged prod.
    let vm = host.call("VM.get_by_name_label", vec![VM.into()]).await.unwrap();
    let vm = vm.as_array().and_then(|refs| refs.first()).expect("the demo VM").clone();
    host.call("VM.add_tags", vec![vm, "prod".into()]).await.unwrap();
    let backup = BackupOptions {
        selectors: vec![Selector::NameOrUuid(VM.into())],
        level: Level::Full,
        strategy: Requested::Auto,
        ..Default::default()
    };
    let progress = xenvault_types::progress::HiddenProgress::shared();
    let report = engine::backup(&host, &Store::from_repository(repo), &backup, progress).await.unwrap();
    assert!(report.vms[0].restore_point.is_some(), "the backup made a restore point");
}

/// The sha256 the fixtures recorded for /etc/hostname of the demo VM's root file system.
fn expected_hostname_sha256(sim_dir: &Path) -> String {
    let manifest = std::fs::read(sim_dir.join("fixtures/linux-root.manifest.json")).expect("fixtures manifest");
    let manifest: DiskManifest = serde_json::from_slice(&manifest).unwrap();
    let root = manifest.volumes.iter().find(|v| v.name == "p1").and_then(|v| v.fs.as_ref()).expect("p1 files");
    let hostname = root.files.iter().find(|f| f.path == "/etc/hostname").expect("/etc/hostname");
    hostname.sha256.clone().expect("digest")
}

#[tokio::test]
async fn a_new_admin_sets_up_backups_in_the_browser_and_an_operator_cannot_edit_a_job() {
    let script_dir = workspace().join("tests/ui");
    assert!(
        script_dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the web UI test needs Debian's chromium and tests/ui/node_modules: run scripts/setup.sh"
    );
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig { demo_disks: DemoDisks::Fixtures, ..SimConfig::new(sim_dir.path()) })
        .await
        .expect("simulator");
    let sim_pin = xenvault_tls::pem_fingerprint_sha256(sim.cert_pem.as_bytes()).unwrap();
    let server = start().await;
    let repo_dir = tempfile::tempdir().unwrap();
    let location = repo_dir.path().to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = Repository::init(&location, &BackendOptions::default(), options).await.expect("init");
    back_up_demo_vm(&sim, &sim_pin, repo).await;
    // The runner's side, through the same catalog (SQLite, WAL: two connections).
    let catalog = Catalog::open(server.data_dir.path(), None).await.unwrap();
    catalog.create_user("oscar", OPERATOR_PASSWORD, Role::Operator).await.unwrap();
    let (live, tasks) = seed_history(&catalog).await;

    let screenshots = workspace().join("target/ui-screenshots");
    let mut child = tokio::process::Command::new("node")
        .arg("web-ui.mjs")
        .current_dir(&script_dir)
        .env("XV_URL", &server.url)
        .env("XV_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("XV_OPERATOR_PASSWORD", OPERATOR_PASSWORD)
        .env("XV_SIM_URL", &sim.url)
        .env("XV_SIM_PASSWORD", &sim.password)
        .env("XV_SIM_FINGERPRINT", &sim_pin)
        .env("XV_REPO", &location)
        .env("XV_PASSPHRASE", PASSPHRASE)
        .env("XV_SCREENSHOTS", &screenshots)
        .env("XV_VM", VM)
        .env("XV_HOSTNAME_SHA256", expected_hostname_sha256(sim_dir.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = String::new();
    let mut pending = Some((live, tasks));
    while let Some(line) = lines.next_line().await.unwrap() {
        output.push_str(&line);
        output.push('\n');
        if line == WATCHING
            && let Some((live, tasks)) = pending.take()
        {
            finish(&catalog, live, tasks).await;
        }
    }
    let status = child.wait().await.unwrap();
    let errors = errors.await.unwrap();
    assert!(status.success(), "tests/ui/web-ui.mjs failed ({status}):\n{output}\n{errors}");
    assert!(pending.is_none(), "the script never followed the live run:\n{output}");
    server.server.shutdown().await;
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_revalidated_by_its_etag() {
    let server = start().await;
    let page = server.request(reqwest::Method::GET, "/").send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let headers = page.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(page.text().await.unwrap().contains("/ui/app.js"));

    let etag = headers["etag"].to_str().unwrap();
    let again = server.request(reqwest::Method::GET, "/").header("if-none-match", etag).send().await.unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::NOT_MODIFIED);
    let script = server.request(reqwest::Method::GET, "/ui/pages/jobs.js").send().await.unwrap();
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_ne!(script.headers()["etag"], etag, "each file has its own tag");
    let missing = server.request(reqwest::Method::GET, "/ui/../Cargo.toml").send().await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    server.server.shutdown().await;
}
