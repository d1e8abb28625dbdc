//! Notifications reach real receivers on loopback: an SMTP sink (Python aiosmtpd, STARTTLS
//! and implicit TLS) and an HTTP receiver that fails before it accepts.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use serde_json::Value;
use tokio::sync::Mutex;
use xenvault_jobs::model::*;
use xenvault_notify::{Channel, Delivery, Notifier, SmtpSecurity, SmtpSettings};

/// A job whose name needs escaping in HTML.
const JOB_NAME: &str = "nightly <prod> & \"web\"";

fn job(when: NotifyWhen, email: &[&str], webhook: Option<String>) -> Job {
    let mut job: Job = toml::from_str(&format!("name = {JOB_NAME:?}\npool = \"prod\"\nrepository = \"main\"")).unwrap();
    job.id = "job-1".into();
    job.notifications = Notifications { when, email: email.iter().map(|s| s.to_string()).collect(), webhook };
    job
}

fn run(status: RunStatus) -> Run {
    let at = |minute| Utc.with_ymd_and_hms(2026, 3, 29, 1, minute, 5).unwrap();
    Run {
        id: "run-7".into(),
        job_id: "job-1".into(),
        schedule_id: Some("daily".into()),
        parent_run_id: None,
        trigger: Trigger::Schedule,
        status,
        level: Some(Level::Inc),
        scheduled_for: Some(at(0)),
        queued_at: at(0),
        started_at: Some(at(0)),
        finished_at: Some(at(4)),
        totals: RunTotals { vms: 2, vms_ok: 1, vms_failed: 1, bytes_read: 3 << 30, bytes_stored: 512 << 20 },
        error: None,
    }
}

/// The task tree of a partial run: web01 backed up by CBT, db01 failed on its disk.
fn tasks() -> Vec<Task> {
    let task = |id: &str, parent: Option<&str>, kind, name: &str, status| {
        let mut task = Task::started(id.into(), "run-7", parent, kind, name);
        task.status = status;
        task
    };
    let root = task("t0", None, TaskKind::Run, JOB_NAME, TaskStatus::Failed);
    let mut web = task("t1", Some("t0"), TaskKind::Vm, "web01", TaskStatus::Success);
    web.bytes_read = 2 << 30;
    web.bytes_stored = 512 << 20;
    web.warnings.push("guest tools missing: not quiesced".into());
    let mut web_disk = task("t2", Some("t1"), TaskKind::Disk, "0 xvda", TaskStatus::Success);
    web_disk.strategy = Some("cbt-nbd".into());
    let mut db = task("t3", Some("t0"), TaskKind::Vm, "db01", TaskStatus::Failed);
    db.bytes_read = 1 << 30;
    let mut db_disk = task("t4", Some("t3"), TaskKind::Disk, "1 xvdb", TaskStatus::Failed);
    db_disk.strategy = Some("full".into());
    db_disk.errors.push("NBD read failed at <offset 4096> & gave up".into());
    let mut retention = task("t5", Some("t0"), TaskKind::Step, "retention", TaskStatus::Success);
    retention.warnings.push("2 restore points kept past the count: locked".into());
    vec![root, web, web_disk, db, db_disk, retention]
}

/// The SMTP sink, stopped when dropped.
struct SmtpSink {
    child: Child,
    starttls_port: u16,
    tls_port: u16,
    out_dir: tempfile::TempDir,
    ca_file: PathBuf,
    _pki: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let pki = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_pki(pki.path());
        let out_dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([&cert, &key, out_dir.path()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ports: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!("the SMTP sink did not start (is aiosmtpd installed? scripts/setup.sh installs it): {line:?}")
        });
        let port = |name: &str| ports[name].as_u64().unwrap() as u16;
        SmtpSink { starttls_port: port("starttls"), tls_port: port("tls"), child, out_dir, ca_file: ca, _pki: pki }
    }

    fn settings(&self, security: SmtpSecurity) -> SmtpSettings {
        let port = if security == SmtpSecurity::Tls { self.tls_port } else { self.starttls_port };
        SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            from: "xenvault <backup@example.com>".into(),
            username: None,
            password: None,
            security,
            ca_file: Some(self.ca_file.clone()),
            accept_invalid_certs: false,
        }
    }

    /// The messages received, in order.
    fn messages(&self) -> Vec<Value> {
        (1..)
            .map(|n| self.out_dir.path().join(format!("{n}.json")))
            .take_while(|path| path.exists())
            .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
            .collect()
    }
}

/// A CA (what clients trust) and the sink's certificate for 127.0.0.1, signed by it, as a
/// mail server has: the CA file, the certificate and its key.
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "notify test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn email_over_starttls_is_a_readable_report_in_text_and_html() {
    let sink = SmtpSink::start();
    let mut smtp = sink.settings(SmtpSecurity::Starttls);
    smtp.username = Some("backup".into());
    smtp.password = Some("secret".into());
    let notifier = Notifier::new(Some(smtp));
    let job = job(NotifyWhen::Failure, &["ops@example.com", "Backup Team <team@example.com>"], None);

    let deliveries = notifier.run_finished(&job, &run(RunStatus::Partial), &tasks()).await;

    assert_eq!(
        deliveries,
        [Delivery {
            channel: Channel::Email,
            target: "ops@example.com, Backup Team <team@example.com>".into(),
            ok: true,
            error: None,
            attempts: 1
        }]
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message["tls"], true, "STARTTLS was used");
    assert_eq!(message["authenticated"], true);
    assert_eq!(message["mail_from"], "backup@example.com");
    assert_eq!(message["rcpt_tos"], serde_json::json!(["ops@example.com", "team@example.com"]));
    assert_eq!(message["content_type"], "multipart/alternative");
    assert_eq!(message["subject"], format!("[xenvault] {JOB_NAME}: partial (1 of 2 VMs backed up)"));

    let text = message["text"].as_str().expect("a text part");
    for expected in [
        format!("Job {JOB_NAME} (job-1): partial"),
        "Started: 2026-03-29 01:00:05 UTC".into(),
        "Finished: 2026-03-29 01:04:05 UTC".into(),
        "Duration: 4 min 00 s".into(),
        "VMs: 1 backed up, 1 failed, 2 in all".into(),
        "[ok]      web01: read 2.0 GiB, stored 512.0 MiB (cbt-nbd)".into(),
        "    warning: guest tools missing: not quiesced".into(),
        "[FAILED]  db01: read 1.0 GiB, stored 0 B (full)".into(),
        "    error: 1 xvdb: NBD read failed at <offset 4096> & gave up".into(),
        "warning: retention: 2 restore points kept past the count: locked".into(),
    ] {
        assert!(text.contains(&expected), "text part lacks {expected:?}:\n{text}");
    }

    let html = message["html"].as_str().expect("an HTML part");
    for expected in [
        "<h2>nightly &lt;prod&gt; &amp; &quot;web&quot;: <span style=\"color: #9a6700\">partial</span></h2>",
        "<td>web01</td><td style=\"color: #1a7f37\">Success</td><td align=\"right\">2.0 GiB</td>",
        "<td>cbt-nbd</td>",
        "error: 1 xvdb: NBD read failed at &lt;offset 4096&gt; &amp; gave up",
        "<th align=\"left\">Duration</th><td>4 min 00 s</td>",
    ] {
        assert!(html.contains(expected), "HTML part lacks {expected:?}:\n{html}");
    }
    assert!(!html.contains("<prod>") && !html.contains("<offset"), "unescaped text in HTML:\n{html}");
}

#[tokio::test]
async fn email_over_implicit_tls_and_a_certificate_refused_without_trust() {
    let sink = SmtpSink::start();
    let success = run(RunStatus::Success);
    let job = job(NotifyWhen::Always, &["ops@example.com"], None);

    let deliveries = Notifier::new(Some(sink.settings(SmtpSecurity::Tls))).run_finished(&job, &success, &tasks()).await;
    assert!(deliveries[0].ok, "{deliveries:?}");
    assert_eq!(sink.messages()[0]["tls"], true);
    assert!(sink.messages()[0]["subject"].as_str().unwrap().contains(": success ("));

    // The sink's certificate is self-signed: without its CA file the system roots refuse it.
    let mut untrusted = sink.settings(SmtpSecurity::Starttls);
    untrusted.ca_file = None;
    let deliveries = Notifier::new(Some(untrusted.clone())).run_finished(&job, &success, &tasks()).await;
    let error = deliveries[0].error.as_deref().expect("refused");
    assert!(!deliveries[0].ok && error.contains("certificate"), "{error}");
    assert_eq!(sink.messages().len(), 1, "nothing more was sent");

    untrusted.accept_invalid_certs = true;
    let deliveries = Notifier::new(Some(untrusted)).run_finished(&job, &success, &tasks()).await;
    assert!(deliveries[0].ok, "{deliveries:?}");
    assert_eq!(sink.messages().len(), 2);
}

#[tokio::test]
async fn bad_addresses_and_a_missing_smtp_server_are_failed_deliveries() {
    let failed = run(RunStatus::Failed);
    let deliveries =
        Notifier::new(None).run_finished(&job(NotifyWhen::Failure, &["ops@example.com"], None), &failed, &[]).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].attempts, 0);
    assert!(deliveries[0].error.as_deref().unwrap().contains("no SMTP server is configured"), "{deliveries:?}");

    let sink = SmtpSink::start();
    let notifier = Notifier::new(Some(sink.settings(SmtpSecurity::Starttls)));
    let deliveries = notifier.run_finished(&job(NotifyWhen::Failure, &["not an address"], None), &failed, &[]).await;
    assert!(deliveries[0].error.as_deref().unwrap().contains("recipient address \"not an address\""), "{deliveries:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn when_decides_whether_anything_is_sent() {
    let receiver = Receiver::start(Vec::new()).await;
    let notifier = Notifier::new(None);
    let hook = Some(receiver.url.clone());
    for (when, status, sent) in [
        (NotifyWhen::Failure, RunStatus::Success, false),
        (NotifyWhen::Failure, RunStatus::Cancelled, true),
        (NotifyWhen::Never, RunStatus::Failed, false),
        (NotifyWhen::Always, RunStatus::Success, true),
    ] {
        let deliveries = notifier.run_finished(&job(when, &[], hook.clone()), &run(status), &tasks()).await;
        assert_eq!(deliveries.len(), usize::from(sent), "{when:?} {status:?}: {deliveries:?}");
    }
    assert_eq!(receiver.bodies.lock().await.len(), 2);
}

/// An HTTP receiver answering each POST with the next status of its script (200 once the
/// script is used up), keeping the bodies it accepted.
struct Receiver {
    url: String,
    posts: Arc<AtomicU32>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

#[derive(Clone)]
struct ReceiverState {
    script: Arc<Vec<StatusCode>>,
    posts: Arc<AtomicU32>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(script: Vec<StatusCode>) -> Receiver {
        let state = ReceiverState { script: Arc::new(script), posts: Arc::default(), bodies: Arc::default() };
        let receiver = Receiver { url: String::new(), posts: state.posts.clone(), bodies: state.bodies.clone() };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, ..receiver }
    }
}

async fn receive(State(state): State<ReceiverState>, Json(body): Json<Value>) -> StatusCode {
    let post = state.posts.fetch_add(1, Ordering::SeqCst) as usize;
    let status = state.script.get(post).copied().unwrap_or(StatusCode::OK);
    if status.is_success() {
        state.bodies.lock().await.push(body);
    }
    status
}

#[tokio::test]
async fn webhook_is_retried_after_a_503_and_carries_the_result() {
    let receiver = Receiver::start(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let job = job(NotifyWhen::Failure, &[], Some(receiver.url.clone()));

    let deliveries = Notifier::new(None).run_finished(&job, &run(RunStatus::Partial), &tasks()).await;

    assert_eq!(
        deliveries,
        [Delivery { channel: Channel::Webhook, target: receiver.url.clone(), ok: true, error: None, attempts: 2 }]
    );
    assert_eq!(receiver.posts.load(Ordering::SeqCst), 2);
    let bodies = receiver.bodies.lock().await;
    let body = &bodies[0];
    assert_eq!(body["job"], serde_json::json!({"id": "job-1", "name": JOB_NAME, "kind": "backup"}));
    assert_eq!(body["run"]["id"], "run-7");
    assert_eq!(body["run"]["status"], "partial");
    assert_eq!(body["run"]["totals"]["vms_failed"], 1);
    assert_eq!(body["vms"][0]["name"], "web01");
    assert_eq!(body["vms"][0]["strategies"], serde_json::json!(["cbt-nbd"]));
    assert_eq!(body["vms"][1]["status"], "failed");
    assert_eq!(body["vms"][1]["errors"][0], "1 xvdb: NBD read failed at <offset 4096> & gave up");
    assert_eq!(body["warnings"][0], "retention: 2 restore points kept past the count: locked");
    assert!(body.get("notifications").is_none() && body["job"].get("notifications").is_none());
}

#[tokio::test]
async fn webhook_4xx_is_final_and_5xx_gives_up_after_three_tries() {
    let refusing = Receiver::start(vec![StatusCode::NOT_FOUND]).await;
    let job = job(NotifyWhen::Always, &[], Some(refusing.url.clone()));
    let deliveries = Notifier::new(None).run_finished(&job, &run(RunStatus::Success), &[]).await;
    assert_eq!(deliveries[0].attempts, 1);
    assert!(deliveries[0].error.as_deref().unwrap().contains("404 Not Found"), "{deliveries:?}");
    assert_eq!(refusing.posts.load(Ordering::SeqCst), 1);

    let failing = Receiver::start(vec![StatusCode::BAD_GATEWAY; 5]).await;
    let job = self::job(NotifyWhen::Always, &[], Some(failing.url.clone()));
    let deliveries = Notifier::new(None).run_finished(&job, &run(RunStatus::Success), &[]).await;
    assert_eq!((deliveries[0].ok, deliveries[0].attempts), (false, 3));
    assert!(deliveries[0].error.as_deref().unwrap().contains("502 Bad Gateway"), "{deliveries:?}");
    assert_eq!(failing.posts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn webhook_connection_errors_are_retried_and_bad_urls_refused() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let deliveries =
        Notifier::new(None).run_finished(&job(NotifyWhen::Always, &[], Some(url)), &run(RunStatus::Success), &[]).await;
    assert_eq!((deliveries[0].ok, deliveries[0].attempts), (false, 3));
    let error = deliveries[0].error.as_deref().unwrap();
    assert!(error.contains("POST failed") && error.to_lowercase().contains("refused"), "{error}");

    for (url, expected) in [("ftp://example.com/x", "scheme \"ftp\""), ("not a url", "webhook URL \"not a url\"")] {
        let job = job(NotifyWhen::Always, &[], Some(url.into()));
        let deliveries = Notifier::new(None).run_finished(&job, &run(RunStatus::Success), &[]).await;
        assert_eq!(deliveries[0].attempts, 0);
        assert!(deliveries[0].error.as_deref().unwrap().contains(expected), "{deliveries:?}");
    }
}
