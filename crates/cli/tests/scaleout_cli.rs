//! Scale-out (issue 17): one `xenvault server` in scale-out mode plans a backup run of 60
//! simulated VMs into the PostgreSQL catalog's queue, three `xenvault node` processes back
//! them up into one SeaweedFS S3 repository, and one node is killed with SIGKILL while it
//! holds VMs. Its leases expire, the other nodes take its VMs, clean what it left on the
//! pool, and back them up: the run succeeds with every VM backed up exactly once (one
//! restore point per VM for the run), no snapshot of the run remains on the pool, the API
//! names the node of every VM, and the repository verifies, though gc (prune) ran over
//! and over while the nodes wrote.

#[path = "../../catalog/tests/common/mod.rs"]
#[allow(dead_code, unused_macros)]
mod catalogs;
mod standalone_sim;
#[path = "../../repo/tests/common/mod.rs"]
mod storage;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};
use standalone_sim::StandaloneSim;

const VMS: usize = 60;
const PASSPHRASE: &str = "scale out";
const ADMIN_PASSWORD: &str = "scale-out-admin";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Short leases: a killed node's VMs go back to the queue within seconds.
const LEASE_SECS: &str = "3";
/// Only guards against a hung run.
const DEADLINE: Duration = Duration::from_secs(600);

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `xenvault server` with a signed-in session.
struct Api {
    _server: Process,
    url: String,
    http: Client,
    cookie: String,
    csrf: String,
}

impl Api {
    async fn start(config: &Path, env: &[(&'static str, String)]) -> Api {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenvault"))
            .args(["server", "--config"])
            .arg(config)
            .env("XENVAULT_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        let server = Process(child);
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
        Api { _server: server, url, http, cookie, csrf }
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
}

/// The VM tasks of a run (as the API gives them).
fn vm_tasks(run: &Value) -> Vec<&Value> {
    run["tasks"].as_array().expect("tasks").iter().filter(|t| t["kind"] == "vm").collect()
}

fn node(catalog: &str, name: &str, data_dir: &Path, env: &[(&'static str, String)]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_xenvault"))
        .args(["node", "--catalog", catalog, "--name", name, "--concurrency", "2", "--lease-secs", LEASE_SECS])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cache-dir")
        .arg(data_dir.join(format!("cache-{name}")))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a node");
    Process(child)
}

/// A quarter of each fleet VM's disk written with its own random data: the nodes then
/// write packs (blank disks store none), which gc running alongside must not lose.
async fn fill_fleet_disks(url: &str) {
    use xenvault_xapi_wire::Value as X;
    let client = xenvault_sim::client::SimClient::login(url, xenvault_sim::DEFAULT_PASSWORD).await.expect("log in");
    let records = |answer: X| match answer {
        X::Struct(map) => map,
        other => panic!("expected records: {other:?}"),
    };
    let vms = records(client.call("VM.get_all_records", vec![]).await.expect("VMs"));
    let fleet: Vec<&String> = vms
        .iter()
        .filter(|(_, vm)| {
            vm.get("tags").and_then(X::as_array).is_some_and(|t| t.iter().any(|t| t.as_str() == Some("fleet")))
        })
        .map(|(reference, _)| reference)
        .collect();
    assert_eq!(fleet.len(), VMS);
    let vbds = records(client.call("VBD.get_all_records", vec![]).await.expect("VBDs"));
    let mut filled = 0;
    for vbd in vbds.values() {
        let field = |name: &str| vbd.get(name).and_then(X::as_str).unwrap_or_default().to_owned();
        if field("type") == "Disk" && fleet.contains(&&field("VM")) {
            filled += 1;
            let params = vec![field("VDI").into(), "25".into(), "65536".into(), filled.to_string().into()];
            client.call("sim.scribble", params).await.expect("sim.scribble");
        }
    }
    assert_eq!(filled, VMS, "one disk per fleet VM");
}

fn xenvault(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xenvault"))
        .args(args)
        .env("XENVAULT_PASSPHRASE", PASSPHRASE)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run xenvault")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_back_up_sixty_vms_once_each_and_take_over_a_killed_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = catalogs::postgres().await;
    let catalogs::Location::Postgres(catalog_url) = &catalog.location else { unreachable!() };
    let s3 = storage::s3();
    let env = s3.env();
    let repo = s3.url("scale-out");
    let init = xenvault(&["init", "--repo", &repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"], &env);
    assert!(init.status.success(), "init: {}", text(&init.stderr));
    // 60 halted clones of a 4 MiB template disk, each transfer slowed so a run lasts seconds.
    let sim = StandaloneSim::start(
        &dir.path().join("sim"),
        &["--blank-disks-mib", "4", "--fleet-vms", &VMS.to_string(), "--latency-ms", "20"],
    );

    fill_fleet_disks(&sim.url).await;

    let data_dir = dir.path().join("server");
    let config = dir.path().join("server.toml");
    let settings = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncatalog = {catalog_url:?}\nscale_out = true\nnode_name = \"planner\"\n",
        data_dir.display().to_string()
    );
    std::fs::write(&config, settings).unwrap();
    let api = Api::start(&config, &env).await;
    let pool = json!({"name": "sim", "url": sim.url, "user": "root", "password": xenvault_sim::DEFAULT_PASSWORD,
        "fingerprint": sim.fingerprint()});
    api.call(Method::POST, "/api/pools", Some(pool)).await;
    let (endpoint, region) = (&env.iter().find(|(k, _)| *k == "AWS_ENDPOINT_URL").unwrap().1, "us-east-1");
    let repository = json!({"name": "s3", "location": repo, "passphrase": PASSPHRASE, "s3_endpoint": endpoint,
        "s3_region": region});
    api.call(Method::POST, "/api/repositories", Some(repository)).await;
    // Retries as a real job has them: the simulator's NBD server now and then drops a
    // greeting when many disks of one SR are opened at once.
    let job = json!({"name": "fleet", "pool": "sim", "repository": "s3", "selection": {"smart": {"tags": ["fleet"]}},
        "settings": {"retries": 2, "retry_backoff_secs": 1}});
    let job_id = api.call(Method::POST, "/api/jobs", Some(job)).await["id"].as_str().unwrap().to_owned();

    // The nodes read the sealed secrets with the server's key, from its data directory.
    let mut nodes: BTreeMap<&str, Process> =
        NODES.iter().map(|name| (*name, node(catalog_url, name, &data_dir, &env))).collect();
    // Garbage collection runs over and over while the nodes write: packs not referenced yet
    // are condemned, and the two-phase rule must keep every one a backup commits.
    let stop_gc = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (stop, repo, env) = (stop_gc.clone(), repo.clone(), env.clone());
        std::thread::spawn(move || {
            let mut passes = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let prune = xenvault(&["prune", "--repo", &repo], &env);
                assert!(prune.status.success(), "prune: {}", text(&prune.stderr));
                passes += 1;
            }
            passes
        })
    };
    let run = api.call(Method::POST, &format!("/api/jobs/{job_id}/run?level=full"), None).await;
    let run_id = run["id"].as_str().unwrap().to_owned();

    // Kill node-a once it holds VMs and others have finished some.
    let started = Instant::now();
    let victim = NODES[0];
    let held_by_victim = loop {
        let detail = api.run(&run_id).await;
        let tasks = vm_tasks(&detail);
        let held: Vec<String> = tasks
            .iter()
            .filter(|t| t["node"] == victim && t["status"] == "running")
            .map(|t| t["subject"].as_str().unwrap().to_owned())
            .collect();
        let done = tasks.iter().filter(|t| t["status"] == "success").count();
        if !held.is_empty() && done >= 4 {
            break held;
        }
        let status = detail["run"]["status"].as_str().unwrap_or_default();
        assert!(["queued", "running"].contains(&status), "the run ended before a node could be killed: {detail}");
        assert!(started.elapsed() < DEADLINE, "node {victim} never held a VM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nodes.remove(victim); // SIGKILL on drop
    println!("killed {victim} holding {held_by_victim:?}");

    let detail = loop {
        let detail = api.run(&run_id).await;
        if !["queued", "running"].contains(&detail["run"]["status"].as_str().unwrap_or_default()) {
            break detail;
        }
        assert!(started.elapsed() < DEADLINE, "run {run_id} did not end: {}", detail["run"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_gc.store(true, std::sync::atomic::Ordering::SeqCst);
    let gc_passes = gc.join().expect("the gc loop");
    println!("the run took {:?}; {gc_passes} gc passes ran meanwhile", started.elapsed());
    assert!(gc_passes >= 2, "gc ran {gc_passes} times during the run");
    let failed: Vec<_> = vm_tasks(&detail).into_iter().filter(|t| t["status"] == "failed").collect();
    assert_eq!(detail["run"]["status"], "success", "{}\nfailed: {failed:?}", detail["run"]);
    assert_eq!(detail["run"]["totals"]["vms"], VMS, "{}", detail["run"]);
    assert_eq!(detail["run"]["totals"]["vms_ok"], VMS, "{}", detail["run"]);
    let stored = detail["run"]["totals"]["bytes_stored"].as_u64().unwrap_or_default();
    println!("{stored} bytes stored");
    // A quarter of 4 MiB scribbled at random offsets (some overlap): well over 512 KiB each.
    assert!(stored >= (VMS as u64) << 19, "each VM stores its own data: {stored}");

    // Every VM has one successful task, run by a named node; the killed node's VMs were
    // taken over (their tasks on it interrupted, a success on another node).
    let tasks = vm_tasks(&detail);
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks.iter().filter(|t| t["status"] == "success") {
        *by_node.entry(task["node"].as_str().expect("every VM task names its node").to_owned()).or_default() += 1;
    }
    println!("VMs backed up per node: {by_node:?}");
    assert_eq!(by_node.values().sum::<usize>(), VMS, "{by_node:?}");
    for uuid in &held_by_victim {
        let of_vm: Vec<_> = tasks.iter().filter(|t| t["subject"] == uuid.as_str()).collect();
        assert!(
            of_vm.iter().any(|t| t["node"] == victim && t["status"] == "interrupted"),
            "VM {uuid}: the killed node's task is not interrupted: {of_vm:?}"
        );
        let ok: Vec<_> = of_vm.iter().filter(|t| t["status"] == "success").collect();
        assert_eq!(ok.len(), 1, "VM {uuid}: {of_vm:?}");
        assert_ne!(ok[0]["node"], victim, "VM {uuid}: {of_vm:?}");
    }
    let log = api.call(Method::GET, &format!("/api/runs/{run_id}/log"), None).await;
    let take_overs = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["message"].as_str().unwrap_or_default().contains(&format!("node {victim} lost it")))
        .count();
    assert!(take_overs >= held_by_victim.len(), "{log}");

    // Exactly one restore point per VM for the run: nothing committed twice, none missing.
    let points = xenvault(&["snapshots", "--repo", &repo, "--json"], &env);
    assert!(points.status.success(), "snapshots: {}", text(&points.stderr));
    let points: Value = serde_json::from_slice(&points.stdout).expect("snapshots --json");
    let mut per_vm: BTreeMap<String, usize> = BTreeMap::new();
    for point in points.as_array().expect("a list") {
        if point.to_string().contains(&run_id) {
            *per_vm.entry(point["source"]["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(per_vm.len(), VMS, "{per_vm:?}");
    assert!(per_vm.values().all(|n| *n == 1), "{per_vm:?}");

    // Nothing of the run is left on the pool: no snapshot it tagged or was taking, no lock.
    let vms = sim.vms().await;
    let left: Vec<_> = vms
        .iter()
        .filter(|vm| vm.is_our_snapshot() && !vm.other_config.contains_key("xenvault.base"))
        .map(|vm| (&vm.name_label, &vm.other_config))
        .collect();
    assert!(left.is_empty(), "snapshots left: {left:?}");
    let locked: Vec<_> = vms.iter().filter(|vm| vm.backup_lock().is_some()).map(|vm| &vm.name_label).collect();
    assert!(locked.is_empty(), "backup locks left: {locked:?}");

    let verify = xenvault(&["verify", "--repo", &repo], &env);
    assert!(verify.status.success(), "verify: {}\n{}", text(&verify.stdout), text(&verify.stderr));
    drop(nodes);
    drop(catalog);
}
