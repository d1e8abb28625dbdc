//! The API against the simulated pool: pools (pinning), repositories, jobs, metrics, and a
//! run's live feed.

mod common;

use common::{assert_error, start};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xenvault_catalog::Catalog;
use xenvault_jobs::model::{Run, RunStatus, RunTotals, Task, TaskKind, TaskStatus, Trigger};
use xenvault_repo::{BackendOptions, InitOptions, KdfParams, Repository, Secret};
use xenvault_sim::{SimConfig, Simulator};

const PASSPHRASE: &str = "repository passphrase";

fn hex_only(text: &str) -> String {
    text.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_lowercase()
}

#[tokio::test]
async fn pools_repositories_jobs_and_metrics() {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(sim_dir.path())).await.expect("simulator");
    let sim_pin = xenvault_tls::pem_fingerprint_sha256(sim.cert_pem.as_bytes()).unwrap();
    let server = start().await;
    let admin = server.token("admin").await;
    let operator = server.token("operator").await;
    let post = |path: &str, token: &str, body: Value| server.with_token(Method::POST, path, token).json(&body).send();

    // The simulator's self-signed certificate is not trusted: the answer names it to pin.
    let pool = json!({"name": "sim", "url": sim.url, "password": sim.password});
    let message = assert_error(
        post("/api/pools", &admin, pool.clone()).await.unwrap(),
        StatusCode::CONFLICT,
        "untrusted_certificate",
    )
    .await;
    assert!(hex_only(&message).contains(&sim_pin), "{message} does not name {sim_pin}");
    let mut wrong = pool.clone();
    wrong["fingerprint"] = json!(sim_pin);
    wrong["password"] = json!("not the password");
    assert_error(post("/api/pools", &admin, wrong).await.unwrap(), StatusCode::BAD_REQUEST, "pool_login_refused").await;
    let mut pinned = pool.clone();
    pinned["fingerprint"] = json!(sim_pin);
    let added = post("/api/pools", &admin, pinned).await.unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let listed = server.get_json("/api/pools", &operator).await;
    assert_eq!(listed[0]["tls"], "fingerprint");
    assert_eq!(listed[0]["has_password"], true);
    assert!(!listed.to_string().contains(&sim.password), "{listed}");
    let check: Value = post("/api/pools/sim/test", &operator, json!({})).await.unwrap().json().await.unwrap();
    assert!(check["vms"].as_u64().unwrap() > 0, "{check}");

    // A repository is added once it opens with the passphrase.
    let repo_dir = tempfile::tempdir().unwrap();
    let location = repo_dir.path().to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(&location, &BackendOptions::default(), options).await.expect("init");
    let wrong = json!({"name": "local", "location": location, "passphrase": "nope"});
    assert_error(
        post("/api/repositories", &admin, wrong).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "repository_unusable",
    )
    .await;
    let repo = json!({"name": "local", "location": location, "passphrase": PASSPHRASE});
    let added = post("/api/repositories", &admin, repo).await.unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["restore_points"], 0);
    let secrets = std::fs::read(server.data_dir.path().join(xenvault_catalog::SQLITE_FILE)).unwrap();
    for secret in [PASSPHRASE, sim.password.as_str()] {
        assert!(!secrets.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret:?} stored in clear");
    }

    // Jobs: cron lines are checked; operators may not change jobs.
    let mut job = json!({"name": "nightly", "pool": "sim", "repository": "local", "selection": {"vms": ["web01"]},
        "schedules": [{"cron": "61 2 * * *", "timezone": "Europe/Berlin", "retention": {"last": 7}}]});
    assert_error(post("/api/jobs", &admin, job.clone()).await.unwrap(), StatusCode::BAD_REQUEST, "invalid").await;
    job["schedules"][0]["cron"] = json!("0 2 * * *");
    for (field, unknown) in [("pool", "nowhere"), ("repository", "")] {
        let mut stray = job.clone();
        stray[field] = json!(unknown);
        let refused = post("/api/jobs", &admin, stray).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let message = refused.json::<Value>().await.unwrap()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("is not registered"), "{message}");
    }
    assert_error(post("/api/jobs", &operator, job.clone()).await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;
    let created: Value = post("/api/jobs", &admin, job.clone()).await.unwrap().json().await.unwrap();
    assert!(!created["id"].as_str().unwrap().is_empty() && !created["schedules"][0]["id"].as_str().unwrap().is_empty());
    assert_error(post("/api/jobs", &admin, job).await.unwrap(), StatusCode::CONFLICT, "conflict").await;
    let disabled: Value = post("/api/jobs/nightly/disable", &admin, json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(disabled["enabled"], false);
    assert_eq!(
        server.get_json(&format!("/api/jobs/{}", created["id"].as_str().unwrap()), &operator).await["enabled"],
        false
    );
    let in_use = server.with_token(Method::DELETE, "/api/pools/sim", &admin).send().await.unwrap();
    assert_error(in_use, StatusCode::CONFLICT, "conflict").await;

    let metrics = server.with_token(Method::GET, "/metrics", &operator).send().await.unwrap();
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("xenvault_job_enabled{job=\"nightly\"} 0\n"), "{metrics}");
    assert!(metrics.contains("xenvault_runs_running 0\n"), "{metrics}");
    server.server.shutdown().await;
}

fn run(job_id: &str) -> Run {
    Run {
        id: String::new(),
        job_id: job_id.into(),
        schedule_id: None,
        parent_run_id: None,
        trigger: Trigger::Manual,
        status: RunStatus::Running,
        level: None,
        scheduled_for: None,
        queued_at: chrono::Utc::now(),
        started_at: Some(chrono::Utc::now()),
        finished_at: None,
        totals: RunTotals::default(),
        error: None,
    }
}

/// Reads server-sent events until the stream ends: (event name, data) pairs.
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
            Some((field("event: ")?, serde_json::from_str(&field("data: ")?).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn the_live_feed_follows_a_run_until_it_finishes_and_the_history_keeps_it() {
    let server = start().await;
    let reader = server.token("read-only").await;
    // The runner's side, through the same catalog (SQLite, WAL: two connections).
    let catalog = Catalog::open(server.data_dir.path(), None).await.unwrap();
    let job = serde_json::from_value(json!({"name": "j", "pool": "p", "repository": "r"})).unwrap();
    let job = catalog.create_job(job).await.unwrap();
    let mut run = catalog.create_run(run(&job.id)).await.unwrap();
    let mut task = Task::started("t1".into(), &run.id, None, TaskKind::Vm, "web01");
    catalog.save_task(&task).await.unwrap();
    catalog.append_log(&run.id, Some("t1"), xenvault_catalog::LogLevel::Info, "snapshot taken").await.unwrap();

    let feed = server.with_token(Method::GET, &format!("/api/runs/{}/events", run.id), &reader).send().await.unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    assert!(feed.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let reading = tokio::spawn(events(feed));

    task.bytes_read = 4096;
    task.status = TaskStatus::Success;
    catalog.save_task(&task).await.unwrap();
    catalog.append_log(&run.id, Some("t1"), xenvault_catalog::LogLevel::Info, "disk 0 read").await.unwrap();
    run.status = RunStatus::Success;
    run.finished_at = Some(chrono::Utc::now());
    run.totals.bytes_read = 4096;
    catalog.update_run(&run).await.unwrap();

    let events = reading.await.unwrap();
    let logs: Vec<&str> =
        events.iter().filter(|(e, _)| e == "log").map(|(_, d)| d["message"].as_str().unwrap()).collect();
    assert_eq!(logs, ["snapshot taken", "disk 0 read"]);
    let (last, detail) = events.last().unwrap();
    assert_eq!(last, "run", "the feed ends with the finished run");
    assert_eq!(detail["run"]["status"], "success");
    assert_eq!(detail["tasks"][0]["bytes_read"], 4096);

    let page = server.get_json(&format!("/api/runs?job={}&status=success", job.id), &reader).await;
    assert_eq!(page["total"], 1);
    let log = server.get_json(&format!("/api/runs/{}/log?after=1", run.id), &reader).await;
    assert_eq!(log.as_array().unwrap().len(), 1);
    let missing = server.with_token(Method::GET, "/api/runs/nope/events", &reader).send().await.unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    server.server.shutdown().await;
}
