//! xenvault's own configuration backup, the "lost my backup appliance" case: a server with
//! a pool, a repository, a backup job with runs and restore points, and a config-backup job
//! run by the server; `xenvault server backup-config` while it runs; then the server is
//! gone, `xenvault server restore-config` fills a fresh data directory, and the server
//! started on it has the same jobs, run history, restore points and certificate, exports a
//! restore point byte for byte as before, and backs up again with the restored secrets. A
//! wrong passphrase and a data directory in use are refused and change nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sim_pool::{PASSPHRASE, Pool, fails, json, ok};
use xenvault_server::{Server, ServerConfig};

mod sim_pool;
mod standalone_sim;

const VM: &str = "debian-web";
const CONFIG_PASSPHRASE: &str = "config backup passphrase";
const ADMIN_PASSWORD: &str = "config-backup-admin";
/// Only guards against a hung run; a run of 8 MiB disks takes a second.
const DEADLINE: Duration = Duration::from_secs(120);

/// A signed-in web session on an in-process server.
struct Api {
    url: String,
    http: Client,
    cookie: String,
    csrf: String,
}

impl Api {
    async fn login(server: &Server) -> Api {
        let pin = xenvault_tls::parse_sha256_fingerprint(server.fingerprint()).expect("fingerprint");
        let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::PinSha256(pin)).expect("TLS");
        let http = Client::builder().use_preconfigured_tls(tls).build().expect("client");
        let url = server.url();
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
        Api { url, http, cookie, csrf }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .header(xenvault_server::CSRF_HEADER, &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(response.status().is_success(), "{method} {path}: {}", response.status());
        response
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let text = self.send(method, path, body).await.text().await.unwrap();
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    async fn get(&self, path: &str) -> Value {
        self.call(Method::GET, path, None).await
    }

    /// Runs job `id` now and waits for the run to end; returns it with its tasks.
    async fn run_job(&self, id: &str) -> Value {
        let run = self.call(Method::POST, &format!("/api/jobs/{id}/run"), None).await;
        let run_id = run["id"].as_str().expect("run id").to_owned();
        let started = Instant::now();
        loop {
            let detail = self.get(&format!("/api/runs/{run_id}")).await;
            if !["queued", "running"].contains(&detail["run"]["status"].as_str().unwrap_or_default()) {
                return detail;
            }
            assert!(started.elapsed() < DEADLINE, "run {run_id} did not end: {detail}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_job(&self, job: Value) -> String {
        self.call(Method::POST, "/api/jobs", Some(job)).await["id"].as_str().expect("job id").to_owned()
    }

    /// SHA-256 of disk 0 of restore point `id`, exported raw.
    async fn export_sha256(&self, id: &str) -> String {
        let path = format!("/api/repositories/local/restore-points/{id}/disks/0/export?format=raw");
        let bytes = self.send(Method::GET, &path, None).await.bytes().await.expect("the exported disk");
        hex::encode(Sha256::digest(&bytes))
    }

    /// The VM's restore points in the repository, newest first.
    async fn vm_points(&self) -> Value {
        self.get(&format!("/api/repositories/local/restore-points?vm={VM}&limit=1000")).await["restore_points"].clone()
    }

    /// What the restored server must show the same: jobs, runs (id and status), restore points.
    async fn picture(&self) -> (Value, Vec<(String, String)>, Value) {
        let runs = self.get("/api/runs?limit=100").await;
        let runs = runs["runs"].as_array().expect("runs").iter();
        let runs = runs.map(|r| (r["id"].as_str().unwrap().to_owned(), r["status"].as_str().unwrap().to_owned()));
        (self.get("/api/jobs").await, runs.collect(), self.vm_points().await)
    }
}

fn listening_anywhere(mut config: ServerConfig) -> ServerConfig {
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

/// `xenvault server list-config --json`.
fn config_backups(pool: &Pool, repo: &str) -> Vec<Value> {
    let listed = json(&ok(pool.run(&["server", "list-config", "--repo", repo, "--json"]), "list-config"));
    listed.as_array().expect("a list").clone()
}

fn restore_config(pool: &Pool, repo: &str, data_dir: &Path, passphrase: &str) -> std::process::Output {
    let args = ["server", "restore-config", "--repo", repo, "--json", "--data-dir", data_dir.to_str().unwrap()];
    pool.run_with(&args, &[("XENVAULT_CONFIG_PASSPHRASE", passphrase)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_dir_restored_from_a_config_backup_shows_the_same_jobs_history_and_restore_points() {
    let pool = Pool::start("config-backup-cli", 8);
    let repo = pool.init_repo("repo", PASSPHRASE);
    let passphrase_file = pool.dir.join("config-backup.passphrase");
    std::fs::write(&passphrase_file, format!("{CONFIG_PASSPHRASE}\n")).unwrap();
    let data_dir = pool.dir.join("server");
    let settings = ServerConfig {
        data_dir: data_dir.clone(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        config_backup_passphrase_file: Some(passphrase_file),
        ..listening_anywhere(ServerConfig::default())
    };
    let server = Server::start(settings).await.expect("server starts");
    let fingerprint = server.fingerprint().to_owned();
    let api = Api::login(&server).await;
    let sim = json!({"name": "sim", "url": pool.sim.url, "user": "root", "password": xenvault_sim::DEFAULT_PASSWORD,
        "fingerprint": pool.sim.fingerprint()});
    api.call(Method::POST, "/api/pools", Some(sim)).await;
    let local = json!({"name": "local", "location": repo, "passphrase": PASSPHRASE});
    api.call(Method::POST, "/api/repositories", Some(local)).await;
    let backup_job = api
        .create_job(json!({"name": "nightly", "pool": "sim", "repository": "local", "selection": {"vms": [VM]},
            "schedules": [{"name": "daily", "cron": "0 2 * * *"}]}))
        .await;
    for _ in 0..2 {
        assert_eq!(api.run_job(&backup_job).await["run"]["status"], "success");
    }
    // The server's own config-backup job: a restore point of its kind, its step says what it holds.
    let config_job = api
        .create_job(json!({"name": "appliance", "kind": "config-backup", "repository": "local",
            "schedules": [{"name": "hourly", "cron": "0 * * * *", "retention": {"last": 24}}]}))
        .await;
    let config_run = api.run_job(&config_job).await;
    assert_eq!(config_run["run"]["status"], "success", "{config_run}");
    let step = config_run["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "configuration").unwrap();
    assert!(step["reason"].as_str().unwrap().contains("2 jobs"), "{step}");
    let by_job = config_backups(&pool, &repo);
    assert_eq!(by_job.len(), 1, "{by_job:?}");
    assert!(by_job[0]["tags"].as_array().unwrap().contains(&json!(format!("job:{config_job}"))));

    // The command-line backup while the server runs: every run has ended, so the restored
    // history is exactly this one.
    let backed_up = ok(
        pool.run_with(
            &["server", "backup-config", "--data-dir", data_dir.to_str().unwrap(), "--repo", &repo, "--json"],
            &[("XENVAULT_CONFIG_PASSPHRASE", CONFIG_PASSPHRASE)],
        ),
        "backup-config",
    );
    let backed_up = json(&backed_up);
    assert_eq!(backed_up["info"]["contents"]["jobs"], 2, "{backed_up}");
    assert_eq!(backed_up["info"]["contents"]["runs"], 3, "{backed_up}");
    let listed = config_backups(&pool, &repo);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["id"], backed_up["restore_point"], "the newest is listed last");
    let text = ok(pool.run(&["server", "list-config", "--repo", &repo]), "list-config");
    assert!(text.contains("2 jobs"), "{text}");

    let before = api.picture().await;
    let points = before.2.as_array().expect("restore points");
    assert_eq!(points.len(), 2, "{points:?}");
    let point = points[0]["id"].as_str().unwrap().to_owned();
    let exported = api.export_sha256(&point).await;
    // The appliance is lost.
    server.shutdown().await;
    drop(api);

    // Refused, changing nothing: the wrong passphrase (exit 5), a data directory in use (2).
    let fresh = pool.dir.join("restored");
    let wrong = fails(restore_config(&pool, &repo, &fresh, "not the passphrase"), 5, "wrong passphrase");
    assert!(wrong.contains("passphrase is wrong"), "{wrong}");
    assert!(!fresh.exists(), "a refused restore made {}", fresh.display());
    let in_use = fails(restore_config(&pool, &repo, &data_dir, CONFIG_PASSPHRASE), 2, "data dir in use");
    assert!(in_use.contains("not empty"), "{in_use}");

    let report = json(&ok(restore_config(&pool, &repo, &fresh, CONFIG_PASSPHRASE), "restore-config"));
    assert_eq!((&report["contents"]["jobs"], &report["contents"]["runs"]), (&json!(2), &json!(3)), "{report}");
    let settings_file = report["settings_file"].as_str().expect("settings file");
    let restored_settings = ServerConfig::load(Path::new(settings_file), true).expect("restored settings");
    assert_eq!(restored_settings.data_dir, fresh);
    let server = Server::start(listening_anywhere(restored_settings)).await.expect("restored server starts");
    assert!(server.first_admin().is_none(), "the users came back: no first admin made");
    assert_eq!(server.fingerprint(), fingerprint, "the same certificate: clients' pins hold");
    let api = Api::login(&server).await;
    assert_eq!(api.picture().await, before, "jobs, runs and restore points as they were");
    assert_eq!(api.export_sha256(&point).await, exported, "the restore point reads back the same");
    // The restored secrets (pool password, repository passphrase) work: the job backs up again.
    assert_eq!(api.run_job(&backup_job).await["run"]["status"], "success");
    assert_eq!(api.vm_points().await.as_array().unwrap().len(), 3);
    server.shutdown().await;
}
