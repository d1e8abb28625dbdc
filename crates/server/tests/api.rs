//! The API against the simulated pool: pools (pinning), repositories, jobs, metrics, and a
//! run's live feed.

mod common;

use chrono::Timelike;
use common::{assert_error, start};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xenvault_catalog::Catalog;
use xenvault_jobs::model::{Run, RunStatus, RunTotals, Task, TaskKind, TaskStatus, Trigger};
use xenvault_repo::{BackendOptions, InitOptions, KdfParams, Repository, Secret};
use xenvault_sim::{SimConfig, SimHandle, Simulator};

const PASSPHRASE: &str = "repository passphrase";

fn hex_only(text: &str) -> String {
    text.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_lowercase()
}

/// A simulator in its own directory, and its certificate's SHA-256 fingerprint.
async fn simulator() -> (tempfile::TempDir, SimHandle, String) {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(sim_dir.path())).await.expect("simulator");
    let pin = xenvault_tls::pem_fingerprint_sha256(sim.cert_pem.as_bytes()).unwrap();
    (sim_dir, sim, pin)
}

/// A new local repository (fast key derivation) and its location.
async fn new_repository() -> (tempfile::TempDir, String) {
    let repo_dir = tempfile::tempdir().unwrap();
    let location = repo_dir.path().to_str().unwrap().to_owned();
    let options = InitOptions {
        secret: Some(Secret::passphrase(PASSPHRASE)),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(&location, &BackendOptions::default(), options).await.expect("init");
    (repo_dir, location)
}

#[tokio::test]
async fn pools_repositories_jobs_and_metrics() {
    let (_sim_dir, sim, sim_pin) = simulator().await;
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
    let (_repo_dir, location) = new_repository().await;
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
    // Settings no run could honour are refused when saved, not at every run.
    for (setting, value, said) in [
        ("compression_level", json!(99), "compression level 99 is out of range"),
        ("speed_limit_bytes_per_sec", json!(0), "speed limit must be at least"),
        ("vm_concurrency", json!(0), "vm_concurrency must be at least 1"),
        ("immutability_days", json!(0), "immutability days must be at least 1"),
        ("snapshot_only", json!({"keep": 0}), "keep at least one snapshot"),
    ] {
        let mut unusable = job.clone();
        unusable["settings"] = json!({ setting: value });
        let refused = post("/api/jobs", &admin, unusable).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{setting}");
        let message = refused.json::<Value>().await.unwrap()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(said), "{setting}: {message}");
    }
    // A snapshot-only job writes to no repository: it needs none registered.
    let mut rolling = job.clone();
    rolling["name"] = json!("rolling");
    rolling["repository"] = json!("");
    rolling["settings"] = json!({"snapshot_only": {"keep": 3}});
    let rolling = post("/api/jobs", &admin, rolling).await.unwrap();
    assert_eq!(rolling.status(), StatusCode::CREATED, "{}", rolling.text().await.unwrap());
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

/// Waits for a run to finish; returns its status.
async fn finished(server: &common::TestServer, token: &str, id: &str) -> String {
    loop {
        let detail = server.get_json(&format!("/api/runs/{id}"), token).await;
        match detail["run"]["status"].as_str().unwrap() {
            "queued" | "running" => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            done => return done.to_owned(),
        }
    }
}

/// Names and reasons of the listed VMs, in the order listed.
fn protection(listing: &Value) -> Vec<(String, Option<String>)> {
    let vms = listing["vms"].as_array().unwrap();
    vms.iter().map(|vm| (vm["name"].as_str().unwrap().to_owned(), vm["reason"].as_str().map(str::to_owned))).collect()
}

#[tokio::test]
async fn the_dashboard_and_job_form_routes_protection_preview_daily_figures_and_schedules() {
    let (_sim_dir, sim, pin) = simulator().await;
    let server = start().await;
    let admin = server.token("admin").await;
    let operator = server.token("operator").await;
    let reader = server.token("read-only").await;
    let post = |path: &str, token: &str, body: Value| server.with_token(Method::POST, path, token).json(&body).send();
    let pool = json!({"name": "sim", "url": sim.url, "password": sim.password, "fingerprint": pin});
    assert_eq!(post("/api/pools", &admin, pool).await.unwrap().status(), StatusCode::CREATED);
    let (_repo_dir, location) = new_repository().await;
    let repo = json!({"name": "local", "location": location, "passphrase": PASSPHRASE});
    assert_eq!(post("/api/repositories", &admin, repo).await.unwrap().status(), StatusCode::CREATED);

    // The preview: what a selection matches now, a VM the pool lacks refused.
    let preview =
        |pool: &str, token: &str, selection: Value| post(&format!("/api/pools/{pool}/preview"), token, selection);
    let matched: Value =
        preview("sim", &operator, json!({"smart": {"tags": ["demo"]}})).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = matched.as_array().unwrap().iter().map(|vm| vm["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["debian-web"]);
    let everything: Value = preview("sim", &operator, json!({"smart": {}})).await.unwrap().json().await.unwrap();
    assert_eq!(everything.as_array().unwrap().len(), 3, "{everything}");
    let missing = preview("sim", &operator, json!({"vms": ["no-such-vm"]})).await.unwrap();
    assert!(assert_error(missing, StatusCode::BAD_REQUEST, "invalid").await.contains("no-such-vm"));
    assert_error(preview("nowhere", &operator, json!({})).await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    assert_error(preview("sim", &reader, json!({})).await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;

    // Before any backup: every VM unprotected, the one in a job for want of a restore point.
    let job = json!({"name": "demo", "pool": "sim", "repository": "local", "selection": {"smart": {"tags": ["demo"]}},
        "schedules": [{"cron": "0 2 * * *", "timezone": "Europe/Berlin"}]});
    assert_eq!(post("/api/jobs", &admin, job).await.unwrap().status(), StatusCode::CREATED);
    let before = server.get_json("/api/vms", &reader).await;
    assert_eq!(before["days"], 2);
    assert_eq!(before["problems"], json!([]));
    let listed = protection(&before);
    assert_eq!(listed.len(), 3, "{before}");
    assert!(listed.contains(&("debian-web".into(), Some("no restore point".into()))), "{listed:?}");
    assert!(listed.contains(&("win-fileserver".into(), Some("in no job".into()))), "{listed:?}");
    assert_eq!(before["vms"][0]["protected"], false);

    // After a run: the demo VM is protected by its new restore point and listed last.
    let run: Value = post("/api/jobs/demo/run", &operator, json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(finished(&server, &reader, run["id"].as_str().unwrap()).await, "success");
    let after = server.get_json("/api/vms?days=1", &reader).await;
    let demo = after["vms"].as_array().unwrap().last().unwrap();
    assert_eq!((demo["name"].as_str(), demo["protected"].as_bool()), (Some("debian-web"), Some(true)), "{after}");
    assert_eq!(demo["jobs"][0]["name"], "demo");
    assert_eq!(demo["newest"]["repository"], "local");
    assert!(protection(&after)[..2].iter().all(|(_, reason)| reason.is_some()), "{after}");
    let too_long = server.with_token(Method::GET, "/api/vms?days=0", &reader).send().await.unwrap();
    assert_error(too_long, StatusCode::BAD_REQUEST, "invalid").await;

    // Per day: 30 days, today's holding the run.
    let days = server.get_json("/api/stats/daily?utc_offset_minutes=-600", &reader).await;
    let days = days.as_array().unwrap();
    assert_eq!(days.len(), 30);
    let today = days.last().unwrap();
    assert_eq!((today["runs"].as_u64(), today["failed"].as_u64()), (Some(1), Some(0)), "{today}");
    // The simulator's blank disks are read but store next to nothing.
    assert!(today["bytes_read"].as_u64().unwrap() > 0, "{today}");
    assert!(days[..29].iter().all(|d| d["runs"] == 0), "only today has runs");
    for bad in ["days=0", "days=367", "utc_offset_minutes=900", "utc_offset_minutes=-98690745", "days=lots"] {
        let refused = server.with_token(Method::GET, &format!("/api/stats/daily?{bad}"), &reader).send().await.unwrap();
        assert_error(refused, StatusCode::BAD_REQUEST, "invalid").await;
    }

    // Schedules in words with their next times; a bad line or zone is refused.
    let next = |query: &str| server.with_token(Method::GET, &format!("/api/schedules/next?{query}"), &reader).send();
    let daily: Value = next("cron=0+2+*+*+*&timezone=Europe/Berlin").await.unwrap().json().await.unwrap();
    assert_eq!(daily["description"], "At 02:00.");
    let times: Vec<chrono::DateTime<chrono::Utc>> = serde_json::from_value(daily["next"].clone()).unwrap();
    assert_eq!(times.len(), 5);
    for pair in times.windows(2) {
        let hours = (pair[1] - pair[0]).num_hours();
        assert!((23..=25).contains(&hours), "a day apart: {times:?}");
    }
    // 02:00 in Berlin is 00:00 or 01:00 UTC (summer or winter time).
    assert!(times.iter().all(|t| t.hour() <= 1 && t.minute() == 0 && t.second() == 0), "{times:?}");
    let every5: Value = next("cron=*/5+*+*+*+*&timezone=UTC&count=3").await.unwrap().json().await.unwrap();
    assert_eq!(every5["description"], "At every 5 minutes.");
    let times: Vec<chrono::DateTime<chrono::Utc>> = serde_json::from_value(every5["next"].clone()).unwrap();
    assert!(times.len() == 3 && times.windows(2).all(|p| (p[1] - p[0]).num_seconds() == 300), "{times:?}");
    let sundays: Value = next("cron=0+3+*+*+SUN&timezone=UTC").await.unwrap().json().await.unwrap();
    assert_eq!(sundays["description"], "At 03:00, on Sunday.");
    for bad in
        ["cron=61+2+*+*+*&timezone=UTC", "cron=0+2+*+*+*&timezone=Mars/Olympus", "cron=0+2+*+*+*&timezone=UTC&count=0"]
    {
        assert_error(next(bad).await.unwrap(), StatusCode::BAD_REQUEST, "invalid").await;
    }
    server.server.shutdown().await;
}
