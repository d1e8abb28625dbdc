//! `xenvault demo --server` as a newcomer runs it: the binary starts the simulated pool and a
//! server, registers both, creates the sample daily job and runs it once; the API then shows
//! the job and its successful first run. SIGTERM stops it cleanly, and a second start in the
//! same directory reuses everything without a second run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::Client;
use serde_json::Value;

/// Only a guard against a hung demo: building the fixture disks and the first backup take
/// far less.
const READY_DEADLINE: Duration = Duration::from_secs(600);

/// A running demo, stopped (SIGKILL) if the test fails before it stops it.
struct Demo {
    child: Child,
    /// What it printed up to and including its `== ready` block.
    printed: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(dir: &std::path::Path) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenvault"))
            .args(["demo", "--server", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .env_remove("XENVAULT_PASSPHRASE")
            .env_remove("XENVAULT_ADMIN_PASSWORD")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xenvault demo --server");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo { child, printed: Vec::new() };
        loop {
            let line = received.recv_timeout(READY_DEADLINE).unwrap_or_else(|e| {
                panic!("the demo did not get ready ({e}); it printed:\n{}", demo.printed.join("\n"))
            });
            let ready = line.starts_with("Ctrl-C stops");
            demo.printed.push(line);
            if ready {
                return demo;
            }
        }
    }

    /// The value printed after `label` in the ready block (`   web UI       https://...`).
    fn field(&self, label: &str) -> String {
        self.printed
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", self.printed.join("\n")))
            .to_owned()
    }

    fn said(&self, text: &str) -> bool {
        self.printed.iter().any(|l| l.contains(text))
    }

    /// Sends SIGTERM and returns whether it exited successfully.
    fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        self.child.wait().expect("wait for the demo").success()
    }
}

/// The demo's API as its printed token and fingerprint reach it.
struct Api {
    http: Client,
    url: String,
    token: String,
}

impl Api {
    fn of(demo: &Demo) -> Api {
        let pin = xenvault_tls::parse_sha256_fingerprint(&demo.field("fingerprint")).expect("printed fingerprint");
        let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::PinSha256(pin)).expect("tls");
        let token = demo
            .printed
            .iter()
            .find_map(|l| l.split("XENVAULT_TOKEN=").nth(1))
            .unwrap_or_else(|| panic!("no token in:\n{}", demo.printed.join("\n")))
            .trim()
            .to_owned();
        Api {
            http: Client::builder().use_preconfigured_tls(tls).build().expect("client"),
            url: demo.field("web UI"),
            token,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// The demo job and its runs.
    async fn job_and_runs(&self) -> (Value, Value) {
        let jobs = self.get("/api/jobs").await;
        let jobs = jobs.as_array().expect("job list");
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let job = jobs[0].clone();
        let runs = self.get(&format!("/api/runs?job={}", job["id"].as_str().unwrap())).await;
        (job, runs)
    }
}

#[tokio::test]
async fn demo_server_runs_the_sample_job_and_restarts_idempotently() {
    let dir = tempfile::tempdir().unwrap();

    let demo = Demo::start(dir.path());
    assert_eq!(demo.field("login"), "admin", "{:?}", demo.printed);
    let api = Api::of(&demo);
    let (job, runs) = api.job_and_runs().await;
    assert_eq!(job["name"], "demo-daily");
    assert_eq!(job["enabled"], true);
    assert_eq!(job["schedules"][0]["cron"], "0 2 * * *");
    assert_eq!(job["schedules"][0]["retention"]["daily"], 7);
    assert_eq!(runs["total"], 1, "{runs}");
    let run = &runs["runs"][0];
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["trigger"], "manual");
    // debian-web, win-fileserver and debian-clone; the template is not a VM to back up.
    assert_eq!(run["totals"]["vms"], 3, "{run}");
    assert_eq!(run["totals"]["vms_ok"], 3, "{run}");
    let points = api.get("/api/repositories/demo/restore-points").await;
    assert!(points.to_string().contains("debian-web"), "{points}");
    let pools = api.get("/api/pools").await;
    assert_eq!(pools[0]["tls"], "fingerprint", "{pools}");
    assert!(demo.terminate(), "the demo did not exit successfully on SIGTERM");

    let again = Demo::start(dir.path());
    for reused in ["pool \"demo\" already registered", "repository \"demo\" already registered", "already exists"] {
        assert!(again.said(reused), "{reused:?} not in:\n{}", again.printed.join("\n"));
    }
    let api = Api::of(&again);
    let (job_again, runs) = api.job_and_runs().await;
    assert_eq!(job_again["id"], job["id"]);
    assert_eq!(runs["total"], 1, "a second start ran the job again: {runs}");
    assert_eq!(api.get("/api/pools").await.as_array().map(Vec::len), Some(1));
    assert!(again.terminate(), "the second demo did not exit successfully on SIGTERM");
}
