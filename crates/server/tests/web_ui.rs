//! The web UI end to end: a server, the simulated pool and a local repository, driven by
//! playwright-core from Debian's chromium, and firefox-esr for the admin path too. Script
//! tests/ui/web-ui.mjs logs in, adds the pool (confirming its certificate's fingerprint) and
//! the repository, creates a job, follows a run's live feed while this side finishes the
//! run, browses a restore point (a real backup of the simulator's demo VM) and downloads a
//! file, restores the VM as a new one, adds a second repository and a mirror job to it from
//! the job form and runs it (the restore points arrive there), and checks that an operator
//! cannot edit a job.
//! tests/ui/restore-ui.mjs, as an operator: verify now, disk exports, instant access, and
//! restores as new (network mapped), of a disk, and over the original. Screenshots of each
//! step go to target/ui-screenshots/ (restore/ and firefox/ for those).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{ADMIN_PASSWORD, TestServer, assert_error, start};
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
/// The mirror job's target repository's.
const MIRROR_PASSPHRASE: &str = "offsite passphrase";
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

/// Root's login to the simulator, its certificate pinned.
fn sim_login(sim: &SimHandle, fingerprint: &str) -> PoolLogin {
    PoolLogin {
        name: "sim".into(),
        entry: PoolEntry {
            url: sim.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(fingerprint).unwrap(),
        },
        password: sim.password.clone(),
    }
}

/// Tags the demo VM prod and backs it up (full) into the repository, as a job's run would.
async fn back_up_demo_vm(sim: &SimHandle, fingerprint: &str, repo: Repository) {
    let host = xenvault_pool::Host::connect(&sim_login(sim, fingerprint)).await.unwrap();
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

/// The simulated pool (with real file systems), a server and a local repository holding a
/// full backup of the demo VM (tagged prod), as both browser tests start.
struct Bench {
    sim_dir: tempfile::TempDir,
    sim: SimHandle,
    sim_pin: String,
    server: TestServer,
    _repo_dir: tempfile::TempDir,
    location: String,
}

async fn bench() -> Bench {
    assert!(
        workspace().join("tests/ui/node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
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
    Bench { sim_dir, sim, sim_pin, server, _repo_dir: repo_dir, location }
}

impl Bench {
    /// Runs tests/ui/`script` in node with the server's address, the demo VM's name, the
    /// screenshot folder target/ui-screenshots/`shots` and `vars`; `on_line` sees each line
    /// it prints as it comes. Fails the test when the script fails; returns what it printed.
    async fn run_script(
        &self,
        script: &str,
        shots: &str,
        vars: &[(&str, &str)],
        mut on_line: impl AsyncFnMut(&str),
    ) -> String {
        let mut command = tokio::process::Command::new("node");
        command
            .arg(script)
            .current_dir(workspace().join("tests/ui"))
            .env("XV_URL", &self.server.url)
            .env("XV_SCREENSHOTS", workspace().join("target/ui-screenshots").join(shots))
            .env("XV_VM", VM);
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command
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
        while let Some(line) = lines.next_line().await.unwrap() {
            output.push_str(&line);
            output.push('\n');
            on_line(&line).await;
        }
        let status = child.wait().await.unwrap();
        let errors = errors.await.unwrap();
        assert!(status.success(), "tests/ui/{script} failed ({status}):\n{output}\n{errors}");
        output
    }

    /// A session on the simulator, as root.
    async fn sim_host(&self) -> xenvault_pool::Host {
        xenvault_pool::Host::connect(&sim_login(&self.sim, &self.sim_pin)).await.unwrap()
    }
}

#[tokio::test]
async fn a_new_admin_sets_up_backups_in_the_browser_and_an_operator_cannot_edit_a_job() {
    admin_and_operator("chromium").await;
}

#[tokio::test]
async fn the_admin_and_operator_paths_work_in_firefox() {
    admin_and_operator("firefox").await;
}

/// tests/ui/web-ui.mjs in `browser` (chromium or firefox), its screenshots in
/// target/ui-screenshots (chromium) or its subfolder firefox.
async fn admin_and_operator(browser: &str) {
    assert!(
        browser == "chromium" || Path::new("/usr/bin/firefox-esr").exists(),
        "the Firefox browser test needs Debian's firefox-esr: run scripts/setup.sh"
    );
    let bench = bench().await;
    // The runner's side, through the same catalog (SQLite, WAL: two connections).
    let catalog = Catalog::open(bench.server.data_dir.path(), None).await.unwrap();
    catalog.create_user("oscar", OPERATOR_PASSWORD, Role::Operator).await.unwrap();
    let (live, tasks) = seed_history(&catalog).await;

    let hostname_sha256 = expected_hostname_sha256(bench.sim_dir.path());
    // The mirror job's target: another repository with its own passphrase.
    let offsite_dir = tempfile::tempdir().unwrap();
    let offsite = offsite_dir.path().to_str().unwrap().to_owned();
    let offsite_options = InitOptions {
        secret: Some(Secret::passphrase(MIRROR_PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let offsite_repo = Repository::init(&offsite, &BackendOptions::default(), offsite_options).await.expect("init");
    let vars = [
        ("XV_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("XV_OPERATOR_PASSWORD", OPERATOR_PASSWORD),
        ("XV_SIM_URL", bench.sim.url.as_str()),
        ("XV_SIM_PASSWORD", bench.sim.password.as_str()),
        ("XV_SIM_FINGERPRINT", bench.sim_pin.as_str()),
        ("XV_REPO", bench.location.as_str()),
        ("XV_PASSPHRASE", PASSPHRASE),
        ("XV_HOSTNAME_SHA256", hostname_sha256.as_str()),
        ("XV_BROWSER", browser),
        ("XV_MIRROR_REPO", offsite.as_str()),
        ("XV_MIRROR_PASSPHRASE", MIRROR_PASSPHRASE),
    ];
    let shots = if browser == "chromium" { "" } else { browser };
    let mut pending = Some((live, tasks));
    let output = bench
        .run_script("web-ui.mjs", shots, &vars, async |line| {
            if line == WATCHING
                && let Some((live, tasks)) = pending.take()
            {
                finish(&catalog, live, tasks).await;
            }
        })
        .await;
    assert!(pending.is_none(), "the script never followed the live run:\n{output}");
    let mirrored = offsite_repo.restore_points().await.expect("the mirror's restore points");
    assert!(
        mirrored.iter().any(|m| m.source.name == VM),
        "the mirror job copied the VM's restore points: {mirrored:?}"
    );
    bench.server.server.shutdown().await;
}

/// The reference of the simulator's VM or network named `name`.
async fn by_name(host: &xenvault_pool::Host, class: &str, name: &str) -> String {
    let found = host.call(&format!("{class}.get_by_name_label"), vec![name.into()]).await.unwrap();
    found.as_array().and_then(|refs| refs.first()).and_then(|r| r.as_str()).expect(name).to_owned()
}

/// The sha256 of the demo VM's root disk (position 0), as the simulator computes it.
async fn root_disk_sha256(host: &xenvault_pool::Host) -> (String, String) {
    let vm = host.vm(&by_name(host, "VM", VM).await).await.unwrap();
    let (_, root) =
        host.disks(&vm).await.unwrap().into_iter().find(|(vbd, _)| vbd.userdevice == "0").expect("root disk");
    let digest = host.call("sim.sha256", vec![root.reference.as_str().into()]).await.unwrap();
    (root.reference, digest.as_str().expect("sha256").to_owned())
}

/// Flips 64 bytes a third into the repository's largest pack: a chunk there no longer authenticates.
fn damage_largest_pack(repository: &Path) {
    let packs = std::fs::read_dir(repository.join("data"))
        .unwrap()
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().map(|pack| pack.unwrap().path()));
    let largest = packs.max_by_key(|pack| std::fs::metadata(pack).unwrap().len()).expect("a pack");
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 3;
    for byte in &mut bytes[middle..middle + 64] {
        *byte = !*byte;
    }
    std::fs::write(&largest, bytes).unwrap();
}

#[tokio::test]
async fn an_operator_verifies_exports_serves_and_restores_from_the_restore_page() {
    let bench = bench().await;
    let catalog = Catalog::open(bench.server.data_dir.path(), None).await.unwrap();
    catalog.create_user("oscar", OPERATOR_PASSWORD, Role::Operator).await.unwrap();
    let admin = bench.server.token("admin").await;
    let pool =
        json!({"name": "sim", "url": bench.sim.url, "password": bench.sim.password, "fingerprint": bench.sim_pin});
    let repository = json!({"name": "local", "location": bench.location, "passphrase": PASSPHRASE});
    for (path, body) in [("/api/pools", pool), ("/api/repositories", repository)] {
        let added = bench.server.with_token(reqwest::Method::POST, path, &admin).json(&body).send().await.unwrap();
        assert_eq!(added.status(), reqwest::StatusCode::CREATED, "{path}: {}", added.text().await.unwrap());
    }
    // The routes the page adds: nothing verified yet, verify is not for read-only users,
    // and the pool's targets name the network the script maps to.
    let verify = "/api/repositories/local/verify";
    let never = bench.server.with_token(reqwest::Method::GET, verify, &admin).send().await.unwrap();
    assert_error(never, reqwest::StatusCode::NOT_FOUND, "never_verified").await;
    let read_only = bench.server.token("read-only").await;
    let refused = bench.server.with_token(reqwest::Method::POST, verify, &read_only).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let targets = bench.server.get_json("/api/pools/sim/targets", &read_only).await;
    assert!(targets["networks"].as_array().unwrap().iter().any(|n| n["name"] == "NBD network"), "{targets}");
    // The disk as backed up; then written over, so the restore over the original has work.
    let host = bench.sim_host().await;
    let (root, backed_up) = root_disk_sha256(&host).await;
    host.call("sim.scribble", vec![root.as_str().into(), "3".into(), "65536".into(), "7".into()]).await.unwrap();
    assert_ne!(root_disk_sha256(&host).await.1, backed_up, "the scribble changed the disk");

    let marker = tempfile::tempdir().unwrap();
    let marker = marker.path().join("damaged");
    let vars = [
        ("XV_OPERATOR_PASSWORD", OPERATOR_PASSWORD),
        ("XV_DISK0_SHA256", backed_up.as_str()),
        ("XV_DAMAGED_MARKER", marker.to_str().unwrap()),
    ];
    let mut new_vm = None;
    bench
        .run_script("restore-ui.mjs", "restore", &vars, async |line| {
            if let Some(uuid) = line.strip_prefix("new-vm ") {
                new_vm = Some(uuid.to_owned());
            } else if line == "damage-a-pack" {
                damage_largest_pack(Path::new(&bench.location));
                std::fs::write(&marker, b"").unwrap();
            }
        })
        .await;

    // The original's disk holds what was backed up again.
    assert_eq!(root_disk_sha256(&host).await.1, backed_up, "the restore over the original put the disk back");
    // The VM restored as new has its interface on the network the page mapped it to.
    let new_vm = new_vm.expect("the script names the VM restored as new");
    let vm = host.call("VM.get_by_uuid", vec![new_vm.as_str().into()]).await.unwrap();
    let vifs = host.call("VM.get_VIFs", vec![vm]).await.unwrap();
    let vif = vifs.as_array().and_then(|v| v.first()).expect("the restored VM has a VIF").clone();
    let network = host.call("VIF.get_network", vec![vif]).await.unwrap();
    assert_eq!(network.as_str(), Some(by_name(&host, "network", "NBD network").await.as_str()));
    // The last verify's result is kept: the damage.
    let last = bench.server.get_json(verify, &admin).await;
    assert_eq!(last["status"], "damaged", "{last}");
    assert!(last["bad_chunks"].as_u64().unwrap() > 0, "{last}");
    host.logout().await;
    bench.server.server.shutdown().await;
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
