//! `xenvault server` killed with SIGKILL in the middle of backup runs, at random instants
//! (the seed is printed), against a standalone simulator slowed down so that a run lasts a
//! few seconds. After each restart the run is "interrupted", the server has removed every
//! snapshot the run left and the VM's backup lock, and the repository verifies; after the
//! last one the next run succeeds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};

use standalone_sim::StandaloneSim;

mod standalone_sim;

const VM: &str = "debian-web";
const PASSPHRASE: &str = "crash test";
const ADMIN_PASSWORD: &str = "crash-test-admin";
/// Runs killed mid-way that the test wants.
const KILLS: usize = 10;
/// Only guards against a hung server; a run takes seconds.
const DEADLINE: Duration = Duration::from_secs(180);

/// `xenvault server` as a child process, killed on drop, with a signed-in session.
struct ServerProcess {
    child: Child,
    url: String,
    http: Client,
    cookie: String,
    csrf: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    async fn start(data_dir: &Path) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenvault"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("XENVAULT_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("XENVAULT_SERVER_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let (mut fingerprint, mut url) = (None, None);
        for line in BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok) {
            if let Some(f) = line.strip_prefix("certificate SHA-256 fingerprint ") {
                fingerprint = Some(f.to_owned());
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        let (fingerprint, url) = (fingerprint.expect("fingerprint printed"), url.expect("address printed"));
        let pin = xenvault_tls::parse_sha256_fingerprint(&fingerprint).expect("fingerprint");
        let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::PinSha256(pin)).expect("TLS");
        let http = Client::builder().use_preconfigured_tls(tls).build().expect("client");
        let login = http
            .post(format!("{url}/api/auth/login"))
            .json(&json!({"user": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("log in");
        assert!(login.status().is_success(), "log in: {}", login.status());
        let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let session: Value = login.json().await.unwrap();
        let csrf = session["csrf_token"].as_str().expect("csrf token").to_owned();
        ServerProcess { child, url, http, cookie, csrf }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .header(xenvault_server::CSRF_HEADER, &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    async fn run(&self, id: &str) -> Value {
        self.call(Method::GET, &format!("/api/runs/{id}"), None).await
    }

    /// Waits until run `id` has ended; returns it.
    async fn finished(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let run = self.run(id).await;
            if !["queued", "running"].contains(&run["run"]["status"].as_str().unwrap_or_default()) {
                return run;
            }
            assert!(started.elapsed() < DEADLINE, "run {id} did not end: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the line the start-up clean-up writes in an interrupted run's log.
    async fn clean_up_line(&self, id: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.call(Method::GET, &format!("/api/runs/{id}/log"), None).await;
            let line = log.as_array().into_iter().flatten().find_map(|line| {
                let message = line["message"].as_str().unwrap_or_default();
                message.starts_with("interrupted:").then(|| message.to_owned())
            });
            if let Some(line) = line {
                return line;
            }
            assert!(started.elapsed() < DEADLINE, "run {id} was never cleaned up: {log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

/// xorshift64*: random kill instants without a dependency; the seed is printed.
struct Instants(u64);

impl Instants {
    fn next_fraction(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn verify(repo: &str, dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_xenvault"))
        .args(["verify", "--repo", repo])
        .env("XENVAULT_PASSPHRASE", PASSPHRASE)
        .env("XENVAULT_CACHE_DIR", dir.join("cli-cache"))
        .output()
        .expect("run verify");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "verify: {}\n{}", text(&out.stdout), text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_run_marks_it_interrupted_cleans_the_pool_and_keeps_the_repository() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("server-crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Two 64 MiB disks read at 32 MiB/s, every call 20 ms slower: a full run takes seconds.
    let sim = StandaloneSim::start(
        &dir.join("sim"),
        &["--blank-disks-mib", "64", "--bandwidth", &(32u64 << 20).to_string(), "--latency-ms", "20"],
    );
    let repo = dir.join("repo").to_str().unwrap().to_owned();
    let init = Command::new(env!("CARGO_BIN_EXE_xenvault"))
        .args(["init", "--repo", &repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"])
        .env("XENVAULT_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));

    let data_dir = dir.join("server");
    let mut server = ServerProcess::start(&data_dir).await;
    let pool = json!({"name": "sim", "url": sim.url, "user": "root", "password": xenvault_sim::DEFAULT_PASSWORD,
        "fingerprint": sim.fingerprint()});
    server.call(Method::POST, "/api/pools", Some(pool)).await;
    let repository = json!({"name": "local", "location": repo, "passphrase": PASSPHRASE});
    server.call(Method::POST, "/api/repositories", Some(repository)).await;
    let job = json!({"name": "crash", "pool": "sim", "repository": "local", "selection": {"vms": [VM]},
        "schedules": [{"name": "daily", "cron": "0 2 * * *", "timezone": "UTC"}]});
    let job_id = server.call(Method::POST, "/api/jobs", Some(job)).await["id"].as_str().unwrap().to_owned();
    let run_now = format!("/api/jobs/{job_id}/run");
    let full_run_now = format!("{run_now}?level=full");

    // The first run, uninterrupted, says how long a full run takes.
    let started = Instant::now();
    let first = server.call(Method::POST, &full_run_now, None).await;
    let first = server.finished(first["id"].as_str().unwrap()).await;
    assert_eq!(first["run"]["status"], "success", "{first}");
    let full_run = started.elapsed();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("kill instants: seed {seed}, a full run took {full_run:?}");
    let mut instants = Instants(seed);
    let mut kills = 0;
    let mut finished_before_the_kill = 0;
    while kills < KILLS {
        assert!(finished_before_the_kill < KILLS, "runs kept ending before the kill");
        let run = server.call(Method::POST, &full_run_now, None).await;
        let run_id = run["id"].as_str().unwrap().to_owned();
        let delay = full_run.mul_f64(0.9 * instants.next_fraction());
        tokio::time::sleep(delay).await;
        server.kill();
        server = ServerProcess::start(&data_dir).await;

        let status = server.run(&run_id).await["run"]["status"].as_str().unwrap().to_owned();
        if status == "success" {
            finished_before_the_kill += 1;
            continue;
        }
        kills += 1;
        assert_eq!(status, "interrupted", "run {run_id} killed after {delay:?}");
        let cleaned = server.clean_up_line(&run_id).await;
        assert!(!cleaned.contains("not cleaned"), "killed after {delay:?}: {cleaned}");
        println!("killed after {delay:?}: {cleaned}");
        let vms = sim.vms().await;
        let left: Vec<_> = vms
            .iter()
            .filter(|vm| vm.is_our_snapshot() && vm.other_config.get("xenvault.job") == Some(&run_id))
            .map(|vm| &vm.uuid)
            .collect();
        assert!(left.is_empty(), "killed after {delay:?}: snapshots of the run left: {left:?}");
        let untagged: Vec<_> =
            vms.iter().filter(|vm| vm.is_a_snapshot && vm.name_label.starts_with("[xenvault]")).collect();
        assert!(
            untagged.iter().all(|vm| vm.other_config.contains_key("xenvault.snapshot")),
            "killed after {delay:?}: a snapshot being taken was left untagged"
        );
        let lock = vms.iter().find(|vm| vm.name_label == VM).and_then(|vm| vm.backup_lock().map(str::to_owned));
        assert_eq!(lock, None, "killed after {delay:?}: the dead run's VM lock is left");
        verify(&repo, &dir);
    }

    // The next run, incremental, builds on what is there and succeeds.
    let next = server.call(Method::POST, &run_now, None).await;
    let next = server.finished(next["id"].as_str().unwrap()).await;
    assert_eq!(next["run"]["status"], "success", "{next}");
    verify(&repo, &dir);
    // A run killed after its commit left a whole restore point: every point belongs to a
    // run that succeeded or was interrupted, and each succeeded run has its point.
    let points = server.call(Method::GET, "/api/repositories/local/restore-points?limit=1000", None).await;
    let points = points["restore_points"].as_array().expect("restore points");
    for point in points {
        let run = server.run(point["run_id"].as_str().expect("run id")).await;
        let status = run["run"]["status"].as_str().unwrap_or_default();
        assert!(["success", "interrupted"].contains(&status), "{point}: its run {run}");
    }
    assert!(points.len() >= 2 + finished_before_the_kill, "{points:?}");
    assert_eq!(points[0]["run_id"], next["run"]["id"], "the newest point is the last run's");
    println!("{kills} kills, {finished_before_the_kill} runs ended before their kill, {} restore points", points.len());
}
