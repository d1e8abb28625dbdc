//! The server runs jobs against the simulated pool: run now, cancel mid-backup, a
//! disabled job does not fire, a stop cancels what outlives its grace.

mod common;

use std::time::Duration;

use common::{ADMIN_PASSWORD, TestServer, assert_error, pinned_client};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xenvault_repo::{BackendOptions, InitOptions, KdfParams, Repository, Secret};
use xenvault_server::{Server, ServerConfig};
use xenvault_sim::faults::Faults;
use xenvault_sim::{SimConfig, SimHandle, Simulator};
use xenvault_types::metadata::BackupRun;

const PASSPHRASE: &str = "repository passphrase";
const VM: &str = "debian-web";
/// How often a test looks again while it waits for the server to get somewhere.
const POLL: Duration = Duration::from_millis(100);

struct Env {
    server: TestServer,
    sim: SimHandle,
    admin: String,
    operator: String,
    repo_location: String,
    _dirs: Vec<tempfile::TempDir>,
}

/// A simulator, a server (stopping after `grace`) with the simulator's pool and a new
/// local repository registered, and admin and operator tokens.
async fn env(grace_secs: u64) -> Env {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(sim_dir.path())).await.expect("simulator");
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_owned(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        shutdown_timeout_secs: grace_secs,
        ..ServerConfig::default()
    };
    let started = Server::start(config).await.expect("server starts");
    let http = pinned_client(started.fingerprint());
    let server = TestServer { url: started.url(), server: started, http, data_dir };
    let admin = server.token("admin").await;
    let operator = server.token("operator").await;

    let pin = xenvault_tls::pem_fingerprint_sha256(sim.cert_pem.as_bytes()).unwrap();
    let pool = json!({"name": "sim", "url": sim.url, "password": sim.password, "fingerprint": pin});
    let added = server.with_token(Method::POST, "/api/pools", &admin).json(&pool).send().await.unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let (repo_dir, repo_location) = new_repository().await;
    let repo = json!({"name": "local", "location": repo_location, "passphrase": PASSPHRASE});
    let added = server.with_token(Method::POST, "/api/repositories", &admin).json(&repo).send().await.unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    Env { server, sim, admin, operator, repo_location, _dirs: vec![sim_dir, repo_dir] }
}

/// A new local repository (in a temporary directory) and its location.
async fn new_repository() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(&location, &BackendOptions::default(), options).await.expect("init");
    (dir, location)
}

impl Env {
    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.server.with_token(Method::POST, path, token).json(&body).send().await.unwrap()
    }

    async fn create_job(&self, job: Value) -> Value {
        let created = self.post("/api/jobs", &self.admin, job).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        created.json().await.unwrap()
    }

    async fn run_now(&self, job: &str) -> Value {
        let started = self.post(&format!("/api/jobs/{job}/run"), &self.operator, json!({})).await;
        assert_eq!(started.status(), StatusCode::ACCEPTED);
        started.json().await.unwrap()
    }

    async fn run(&self, id: &str) -> Value {
        self.server.get_json(&format!("/api/runs/{id}"), &self.operator).await
    }

    /// Waits for the run to finish; returns it with its task tree.
    async fn finished(&self, id: &str) -> Value {
        loop {
            let detail = self.run(id).await;
            if !matches!(detail["run"]["status"].as_str(), Some("queued" | "running")) {
                return detail;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn log(&self, id: &str) -> Vec<String> {
        let lines = self.server.get_json(&format!("/api/runs/{id}/log"), &self.operator).await;
        lines.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_owned()).collect()
    }
}

async fn restore_points(location: &str) -> Vec<xenvault_repo::Manifest> {
    let secret = Secret::passphrase(PASSPHRASE);
    let repo = Repository::open(location, &BackendOptions::default(), Some(&secret)).await.unwrap();
    repo.restore_points().await.unwrap()
}

/// Uuids of the snapshots on the pool tagged as ours.
async fn tagged_snapshots(sim: &SimHandle) -> Vec<String> {
    let client = xenvault_sim::client::SimClient::login(&sim.url, &sim.password).await.unwrap();
    let all = client.call("VM.get_all_records", vec![]).await.unwrap();
    let records = all.as_struct().expect("VM records").clone();
    records
        .values()
        .filter(|r| r.get("is_a_snapshot").and_then(|v| v.as_bool()) == Some(true))
        .filter(|r| r.get("other_config").and_then(|c| c.get(xenvault_pool::hygiene::TAG_SNAPSHOT)).is_some())
        .map(|r| r.get("uuid").and_then(|v| v.as_str()).unwrap_or_default().to_owned())
        .collect()
}

fn backup_job(name: &str) -> Value {
    json!({"name": name, "pool": "sim", "repository": "local", "selection": {"vms": [VM]},
        "schedules": [{"cron": "0 3 * * *"}]})
}

#[tokio::test]
async fn run_now_makes_a_restore_point_naming_the_job_and_the_run() {
    let env = env(30).await;
    let job = env.create_job(backup_job("nightly")).await;
    let run = env.run_now("nightly").await;
    assert_eq!(run["trigger"], "manual");
    let id = run["id"].as_str().unwrap();
    let again = env.post("/api/jobs/nightly/run", &env.operator, json!({})).await;
    assert_error(again, StatusCode::CONFLICT, "conflict").await;

    let detail = env.finished(id).await;
    assert_eq!(detail["run"]["status"], "success", "{detail:#}\n{:#?}", env.log(id).await);
    assert_eq!(detail["run"]["totals"]["vms_ok"], 1);
    assert!(detail["tasks"].as_array().unwrap().iter().any(|t| t["kind"] == "disk" && t["status"] == "success"));
    let log = env.log(id).await;
    assert!(log.iter().any(|l| l.starts_with(&format!("vm {VM}: success"))), "{log:#?}");

    let points = restore_points(&env.repo_location).await;
    assert_eq!(points.len(), 1);
    let backup = BackupRun::of(&points[0].metadata).expect("backup run in the metadata");
    assert_eq!(backup.job_id.as_deref(), job["id"].as_str());
    assert_eq!(backup.run_id.as_deref(), Some(id));
    let reader = env.server.token("read-only").await;
    let refused = env.post("/api/jobs/nightly/run", &reader, json!({})).await;
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    env.server.server.shutdown().await;
}

#[tokio::test]
async fn a_mirror_job_copies_the_backups_to_a_second_repository() {
    let env = env(30).await;
    env.create_job(backup_job("nightly")).await;
    let backup = env.run_now("nightly").await;
    let backup = env.finished(backup["id"].as_str().unwrap()).await;
    assert_eq!(backup["run"]["status"], "success", "{backup:#}");

    // A repository of its own (its own master key, though the passphrase is the same).
    let (_target_dir, target_location) = new_repository().await;
    let target = json!({"name": "offsite", "location": target_location, "passphrase": PASSPHRASE});
    assert_eq!(env.post("/api/repositories", &env.admin, target).await.status(), StatusCode::CREATED);
    env.create_job(json!({"name": "to-offsite", "kind": "mirror", "repository": "local",
        "mirror": {"target": "offsite"}, "schedules": [{"cron": "0 5 * * *"}]}))
        .await;

    let run = env.run_now("to-offsite").await;
    let id = run["id"].as_str().unwrap();
    let detail = env.finished(id).await;
    assert_eq!(detail["run"]["status"], "success", "{detail:#}\n{:#?}", env.log(id).await);
    let copied: Vec<String> = restore_points(&target_location).await.into_iter().map(|m| m.id).collect();
    let source: Vec<String> = restore_points(&env.repo_location).await.into_iter().map(|m| m.id).collect();
    assert_eq!(copied.len(), 1);
    assert_eq!(copied, source, "the mirror keeps restore point ids");
    // The protection overview counts only the backup job as covering the VM.
    let vms = env.server.get_json("/api/vms", &env.operator).await;
    let vm = vms["vms"].as_array().unwrap().iter().find(|v| v["name"] == VM).expect("the VM").clone();
    let jobs: Vec<&str> = vm["jobs"].as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["nightly"]);
    env.server.server.shutdown().await;
}

/// Slows the simulator's transfers, starts a run and waits until its snapshot exists.
async fn start_slow_run(env: &Env, job: &str) -> String {
    env.sim.set_faults(Faults { bandwidth: Some(256 * 1024), ..Default::default() });
    env.create_job(backup_job(job)).await;
    let id = env.run_now(job).await["id"].as_str().unwrap().to_owned();
    while tagged_snapshots(&env.sim).await.is_empty() {
        let status = env.run(&id).await["run"]["status"].clone();
        assert!(status == "queued" || status == "running", "the run ended ({status}) before its snapshot");
        tokio::time::sleep(POLL).await;
    }
    id
}

#[tokio::test]
async fn a_run_cancelled_mid_backup_leaves_no_snapshot_and_commits_nothing() {
    let env = env(30).await;
    let id = start_slow_run(&env, "slow").await;
    let cancelled = env.post(&format!("/api/runs/{id}/cancel"), &env.operator, json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    let detail = env.finished(&id).await;
    assert_eq!(detail["run"]["status"], "cancelled", "{detail:#}");
    assert_eq!(tagged_snapshots(&env.sim).await, Vec::<String>::new());
    assert!(restore_points(&env.repo_location).await.is_empty());
    let again = env.post(&format!("/api/runs/{id}/cancel"), &env.operator, json!({})).await;
    assert_error(again, StatusCode::CONFLICT, "conflict").await;
    let missing = env.post("/api/runs/no-such-run/cancel", &env.operator, json!({})).await;
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    env.server.server.shutdown().await;
}

#[tokio::test]
async fn a_stop_cancels_the_runs_that_outlive_its_grace() {
    let env = env(0).await;
    let id = start_slow_run(&env, "slow").await;
    env.server.server.shutdown().await;
    let catalog = xenvault_catalog::Catalog::open(env.server.data_dir.path(), None).await.unwrap();
    let detail = catalog.run(&id).await.unwrap();
    let log: Vec<String> = catalog.run_logs(&id, None, 1000).await.unwrap().into_iter().map(|l| l.message).collect();
    assert_eq!(detail.run.status, xenvault_jobs::model::RunStatus::Cancelled, "{log:#?}");
    assert!(log.iter().any(|l| l.contains("the server is stopping")), "{log:#?}");
    assert_eq!(tagged_snapshots(&env.sim).await, Vec::<String>::new());
    assert!(restore_points(&env.repo_location).await.is_empty());
}

#[tokio::test]
async fn a_disabled_job_does_not_fire() {
    let env = env(30).await;
    let every_second = |name: &str, enabled: bool| {
        json!({"name": name, "enabled": enabled, "pool": "sim", "repository": "local",
            "selection": {"vms": ["no such vm"]}, "schedules": [{"cron": "* * * * * *"}]})
    };
    let disabled = env.create_job(every_second("disabled", false)).await;
    // The control job fires each second: once it has run twice, the disabled one had
    // its chances.
    let control = env.create_job(every_second("control", true)).await;
    let runs_of = |job: &Value| format!("/api/runs?job={}", job["id"].as_str().unwrap());
    while env.server.get_json(&runs_of(&control), &env.operator).await["total"].as_u64().unwrap() < 2 {
        tokio::time::sleep(POLL).await;
    }
    let page = env.server.get_json(&runs_of(&control), &env.operator).await;
    assert_eq!(page["runs"][0]["trigger"], "schedule");
    assert_eq!(env.server.get_json(&runs_of(&disabled), &env.operator).await["total"], 0);
    env.server.server.shutdown().await;
}
