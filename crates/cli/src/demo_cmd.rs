//! `xenvault demo`: the main job end to end on a simulated pool, nothing to set up; with
//! `--server`, the service over that pool with a sample daily job.

use anyhow::{Context, anyhow};
use clap::Subcommand;
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::JobReport;
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::Level;
use xenvault_jobs::model::{Job, Run, RunStatus};
use xenvault_pool::config::{ConfigStore, PoolEntry, ServerTrust};
use xenvault_pool::{Host, Value};
use xenvault_sim::{DemoDisks, SimConfig, Simulator};
use xenvault_types::units;

/// Used when XENVAULT_PASSPHRASE is not set: the demo repository is not a secret.
const DEMO_PASSPHRASE: &str = "xenvault-demo";
const POOL: &str = "demo";
/// With --server, when XENVAULT_ADMIN_PASSWORD is not set at the first start.
const DEMO_ADMIN_PASSWORD: &str = "xenvault-demo";
/// The names the server knows the demo's repository and job by.
const REPOSITORY: &str = "demo";
const JOB: &str = "demo-daily";
/// How often the demo looks at its first run while waiting for it to end.
const RUN_POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand)]
pub enum Commands {
    /// Start a simulated pool, back up every VM (full), write 1% into the disks, back up
    /// again (CBT + NBD incremental), verify both restore points, and summarise.
    ///
    /// With --server: run `xenvault server` over the simulated pool instead, with the pool
    /// and repository registered and a daily job over every VM, run once now; it serves
    /// the API and the web UI until Ctrl-C. A second start in the same directory reuses all.
    Demo {
        /// Where the simulated pool, the repository and the configuration (and with
        /// --server the server's catalog) live.
        #[arg(long, default_value = ".demo")]
        dir: PathBuf,
        /// Run the service (scheduled jobs, API, web UI) over the simulated pool.
        #[arg(long)]
        server: bool,
        /// The server's address (with --server).
        #[arg(long, default_value = xenvault_server::config::DEFAULT_LISTEN, requires = "server")]
        listen: SocketAddr,
    },
}

pub async fn run(command: Commands) -> anyhow::Result<ExitCode> {
    let Commands::Demo { dir, server, listen } = command;
    std::fs::create_dir_all(&dir)?;
    if server {
        return run_server(&dir, listen).await;
    }
    let sim = start_sim(&dir, None).await?;

    let passphrase = passphrase();
    let store = open_or_init(&dir.join("repo"), &passphrase).await?;
    println!("== repository {}", store.location());

    let configs = ConfigStore::at(dir.join("config.toml"));
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim.cert_pem)
        .ok_or_else(|| anyhow::anyhow!("the simulator's certificate is not PEM"))?;
    let entry =
        PoolEntry { url: sim.url.clone(), user: sim.user.clone(), tls: ServerTrust::pin_sha256_hex(&fingerprint)? };
    configs.add_pool(POOL, entry, &sim.password)?;
    let host = Host::connect(&configs.login(POOL, None)?).await?;
    println!("== pool {POOL:?} registered in {} (certificate pinned)", configs.path().display());

    let result = demo(&host, &store).await;
    host.logout().await;
    sim.stop().await;
    result
}

async fn demo(host: &Host, store: &Store) -> anyhow::Result<ExitCode> {
    let bars = crate::progress::Bars::new(false);
    let mut options = BackupOptions { selectors: vec![Selector::All], level: Level::Full, ..Default::default() };

    println!("== full backup of every VM");
    let full = job::backup(host, store, &options, bars.clone()).await?;
    bars.clear();
    print!("{}", full.summary());
    let full_digests = digests(host, &full).await?;

    println!("== guests write 1% of every disk (scattered 4 KiB writes)");
    for (seed, vdi) in full_digests.keys().enumerate() {
        let args = vec![Value::from(vdi.as_str()), "1".into(), "4096".into(), Value::from(seed.to_string())];
        host.call("sim.scribble", args).await?;
    }

    println!("== incremental backup of every VM");
    options.level = Level::Inc;
    let incremental = job::backup(host, store, &options, bars.clone()).await?;
    bars.clear();
    print!("{}", incremental.summary());
    let inc_digests = digests(host, &incremental).await?;

    println!("== verifying: every disk of both restore points rebuilt from the repository");
    let mut bad = 0;
    for (report, expected) in [(&full, &full_digests), (&incremental, &inc_digests)] {
        bad += verify(store, report, expected).await?;
    }
    println!("\n== summary (per VM and disk: strategy, read from the host vs changed, stored, time)");
    let rows: Vec<Vec<String>> = [&full, &incremental]
        .iter()
        .flat_map(|report| report.vms.iter())
        .flat_map(|vm| {
            vm.disks.iter().map(move |disk| {
                vec![
                    vm.level.to_string(),
                    vm.vm_name.clone(),
                    disk.position.to_string(),
                    disk.strategy.to_string(),
                    units::bytes(disk.bytes_read),
                    units::bytes(disk.bytes_changed),
                    units::bytes(disk.bytes_stored),
                    format!("{:.2} s", disk.duration_secs),
                ]
            })
        })
        .collect();
    crate::output::table(
        &["LEVEL", "VM", "DISK", "STRATEGY", "READ", "CHANGED", "STORED", "TIME"],
        &rows,
        &[2, 4, 5, 6, 7],
    );
    let failed = full.totals.vms_failed + incremental.totals.vms_failed;
    if failed > 0 || bad > 0 {
        println!("{failed} VM backup(s) failed, {bad} disk(s) did not verify");
        return Ok(ExitCode::from(crate::exit::FAILURE));
    }
    // A hint that works as typed: the binary by its full path, the repository by an absolute one.
    let binary = binary();
    let repo = std::path::absolute(store.location())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| store.location().to_owned());
    let secret = if crate::environment::var("XENVAULT_PASSPHRASE").is_some() {
        String::new()
    } else {
        format!("XENVAULT_PASSPHRASE={DEMO_PASSPHRASE:?} ")
    };
    println!("all restore points verified; list them with:\n  {secret}{binary} snapshots --repo {repo}");
    Ok(ExitCode::SUCCESS)
}

/// The simulated pool in DIR/sim, on `listen` (any free loopback port when none).
async fn start_sim(dir: &Path, listen: Option<SocketAddr>) -> anyhow::Result<xenvault_sim::SimHandle> {
    println!("== starting the simulated pool in {}", dir.join("sim").display());
    let mut config = SimConfig { demo_disks: DemoDisks::Fixtures, ..SimConfig::new(dir.join("sim")) };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let sim = Simulator::start(config).await?;
    println!("   listening on {}", sim.url);
    Ok(sim)
}

fn passphrase() -> String {
    crate::environment::var("XENVAULT_PASSPHRASE").unwrap_or_else(|| {
        println!(
            "   repository passphrase: {DEMO_PASSPHRASE:?} (the demo's fixed one; set XENVAULT_PASSPHRASE to choose)"
        );
        DEMO_PASSPHRASE.to_owned()
    })
}

/// This binary by its full path, so printed hints work as typed.
fn binary() -> String {
    std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "xenvault".into())
}

/// `demo --server`: the simulated pool, the repository and a server (catalog in DIR/server),
/// the pool, repository and job registered through the API unless a previous start did,
/// the job's first run, then serving until SIGTERM or Ctrl-C.
async fn run_server(dir: &Path, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let data_dir = dir.join("server");
    std::fs::create_dir_all(&data_dir)?;
    // The pool is registered by its URL: the simulator keeps its port across starts.
    let sim_address_file = data_dir.join("sim-address");
    let sim_address = match std::fs::read_to_string(&sim_address_file) {
        Ok(text) => Some(text.trim().parse().with_context(|| format!("{} is damaged", sim_address_file.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("reading {}: {e}", sim_address_file.display())),
    };
    let sim = start_sim(dir, sim_address).await.with_context(|| match sim_address {
        Some(address) => format!(
            "the simulated pool keeps its address {address} across starts (the server registered it there; \
             {} holds it): free that port, or remove {} to start over",
            sim_address_file.display(),
            dir.display()
        ),
        None => "starting the simulated pool".to_owned(),
    })?;
    std::fs::write(&sim_address_file, sim.addr.to_string())?;
    let passphrase = passphrase();
    let store = open_or_init(&dir.join("repo"), &passphrase).await?;
    let repo_location = std::path::absolute(store.location())?.display().to_string();
    println!("== repository {repo_location}");

    let admin_password =
        crate::environment::var("XENVAULT_ADMIN_PASSWORD").unwrap_or_else(|| DEMO_ADMIN_PASSWORD.to_owned());
    let config = xenvault_server::ServerConfig {
        listen,
        data_dir: data_dir.clone(),
        admin_password: Some(admin_password.clone()),
        ..Default::default()
    };
    let server = xenvault_server::Server::start(config).await.context("starting the server")?;
    println!("== server listening on {} (catalog in {})", server.url(), data_dir.display());
    // Polled from here on, so a stop asked for during the setup is seen too.
    let stop = crate::server_cmds::stop_signal();
    tokio::pin!(stop);
    let setup = async {
        let api = DemoApi::connect(&server, &data_dir, &admin_password).await?;
        let pin = xenvault_tls::pem_fingerprint_sha256(sim.cert_pem.as_bytes())
            .context("reading the simulated pool's certificate")?;
        register(&api, &sim, &pin, &repo_location, &passphrase).await?;
        let job = sample_job(&api).await?;
        first_run(&api, &job).await?;
        anyhow::Ok(api.token)
    };
    let setup_or_stop = tokio::select! {
        token = setup => token.map(Some),
        stopped = &mut stop => stopped.map(|()| None),
    };
    let outcome = match setup_or_stop {
        Ok(Some(token)) => {
            print_ready(&server, &admin_password, &token);
            (&mut stop).await
        }
        other => other.map(drop),
    };
    eprintln!("stopping the server and the simulated pool");
    server.shutdown().await;
    sim.stop().await;
    outcome.map(|()| ExitCode::SUCCESS)
}

/// The demo's admin client of its own server: an API token kept in DATA_DIR/demo-token
/// (made through the admin's web login when missing or no longer valid).
struct DemoApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl DemoApi {
    async fn connect(server: &xenvault_server::Server, data_dir: &Path, admin_password: &str) -> anyhow::Result<Self> {
        let pin = xenvault_tls::parse_sha256_fingerprint(server.fingerprint())?;
        let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::PinSha256(pin))?;
        let http = reqwest::Client::builder().use_preconfigured_tls(tls).build()?;
        let mut api = DemoApi { http, base: server.url(), token: String::new() };
        let token_file = data_dir.join("demo-token");
        if let Ok(token) = std::fs::read_to_string(&token_file) {
            api.token = token.trim().to_owned();
            if api.request(Method::GET, "/api/jobs").send().await?.status() != StatusCode::UNAUTHORIZED {
                return Ok(api);
            }
        }
        api.token = api.new_token(admin_password).await?;
        write_private(&token_file, &api.token)?;
        Ok(api)
    }

    async fn new_token(&self, admin_password: &str) -> anyhow::Result<String> {
        let user = xenvault_server::FIRST_ADMIN;
        let login = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"user": user, "password": admin_password}))
            .send()
            .await?;
        if login.status() != StatusCode::OK {
            anyhow::bail!(
                "logging in to the demo server as {user:?} failed ({}): give its password in XENVAULT_ADMIN_PASSWORD",
                login.status()
            );
        }
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .ok_or_else(|| anyhow!("the server's login answer set no session cookie"))?
            .to_owned();
        let session: Json = login.json().await?;
        let csrf = session["csrf_token"].as_str().ok_or_else(|| anyhow!("the login answer has no csrf_token"))?;
        let created = self
            .http
            .post(format!("{}/api/tokens", self.base))
            .header("cookie", cookie)
            .header(xenvault_server::CSRF_HEADER, csrf)
            .json(&json!({"name": "demo", "role": "admin"}))
            .send()
            .await?;
        let created: Json = checked(created).await?.json().await?;
        created["secret"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("the new token's answer has no secret"))
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// The answer's JSON; an error answer is an error naming the call and the server's message.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<T> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = checked(request.send().await?).await.with_context(|| format!("{method} {path}"))?;
        Ok(response.json().await?)
    }
}

/// The response when it succeeded, else an error with the server's message.
async fn checked(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    match response.status().is_success() {
        true => Ok(response),
        false => Err(crate::job_cmds::answer_error(response).await),
    }
}

/// A file only its owner may read (it holds a secret).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Registers the simulated pool (its certificate pinned) and the repository, unless they are.
async fn register(
    api: &DemoApi,
    sim: &xenvault_sim::SimHandle,
    pin: &str,
    repo_location: &str,
    passphrase: &str,
) -> anyhow::Result<()> {
    let pools: Vec<Json> = api.call(Method::GET, "/api/pools", None).await?;
    match pools.iter().find(|p| p["name"] == POOL) {
        Some(pool) if pool["url"] == sim.url.as_str() => println!("== pool {POOL:?} already registered"),
        Some(pool) => {
            anyhow::bail!("the server's pool {POOL:?} is at {}, not at the simulator's {}", pool["url"], sim.url)
        }
        None => {
            let pool =
                json!({"name": POOL, "url": sim.url, "user": sim.user, "password": sim.password, "fingerprint": pin});
            let _: Json = api.call(Method::POST, "/api/pools", Some(pool)).await?;
            println!("== pool {POOL:?} registered (certificate SHA-256 {pin} pinned)");
        }
    }
    let repositories: Vec<Json> = api.call(Method::GET, "/api/repositories", None).await?;
    if repositories.iter().any(|r| r["name"] == REPOSITORY) {
        println!("== repository {REPOSITORY:?} already registered");
    } else {
        let repository = json!({"name": REPOSITORY, "location": repo_location, "passphrase": passphrase});
        let _: Json = api.call(Method::POST, "/api/repositories", Some(repository)).await?;
        println!("== repository {REPOSITORY:?} registered");
    }
    Ok(())
}

/// The sample job: every VM of the pool (new ones picked up at each run), nightly at 02:00
/// UTC, forever incremental, keeping 7 daily and 4 weekly restore points per VM.
async fn sample_job(api: &DemoApi) -> anyhow::Result<Job> {
    let jobs: Vec<Job> = api.call(Method::GET, "/api/jobs", None).await?;
    if let Some(job) = jobs.into_iter().find(|j| j.name == JOB) {
        println!("== job {JOB:?} already exists");
        return Ok(job);
    }
    let job = json!({
        "name": JOB,
        "pool": POOL,
        "repository": REPOSITORY,
        "selection": {"smart": {}},
        "schedules": [{
            "name": "nightly",
            "cron": "0 2 * * *",
            "timezone": "UTC",
            "level": "inc",
            "retention": {"daily": 7, "weekly": 4},
        }],
    });
    let job: Job = api.call(Method::POST, "/api/jobs", Some(job)).await?;
    println!("== job {JOB:?} created: every VM, daily at 02:00 UTC, incremental, keeps 7 daily and 4 weekly");
    Ok(job)
}

/// Runs the job now and waits for the run to end, unless a run of it already succeeded.
async fn first_run(api: &DemoApi, job: &Job) -> anyhow::Result<()> {
    let done: Json = api.call(Method::GET, &format!("/api/runs?job={}&status=success&limit=1", job.id), None).await?;
    if done["total"].as_u64().unwrap_or(0) > 0 {
        println!("== the job has run successfully before: not running it again now");
        return Ok(());
    }
    let run: Run = api.call(Method::POST, &format!("/api/jobs/{}/run", job.id), Some(json!({}))).await?;
    println!("== running it once now (run {}; the web UI shows it live)", run.id);
    let run = loop {
        let detail: Json = api.call(Method::GET, &format!("/api/runs/{}", run.id), None).await?;
        let run: Run = serde_json::from_value(detail["run"].clone())?;
        if run.status.is_finished() {
            break run;
        }
        tokio::time::sleep(RUN_POLL).await;
    };
    let status = serde_json::to_value(run.status)?;
    let error = run.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    println!(
        "   run {} {}{error}: {}/{} VMs backed up, {} stored",
        run.id,
        status.as_str().unwrap_or_default(),
        run.totals.vms_ok,
        run.totals.vms,
        units::bytes(run.totals.bytes_stored)
    );
    if run.status != RunStatus::Success {
        println!("   its log: the web UI's Runs page, or `xenvault job logs {}`", run.id);
    }
    Ok(())
}

fn print_ready(server: &xenvault_server::Server, admin_password: &str, token: &str) {
    let (url, fingerprint, binary) = (server.url(), server.fingerprint(), binary());
    let connect = format!("--server {url} --fingerprint {fingerprint}");
    println!("== ready");
    println!("   web UI       {url}");
    println!("   fingerprint  {fingerprint} (the self-signed certificate the browser will ask about)");
    println!("   login        {} / {admin_password}", xenvault_server::FIRST_ADMIN);
    println!("   API token    export XENVAULT_TOKEN={token}");
    println!("   try          {binary} job list {connect}");
    println!("                {binary} job history {JOB} {connect}");
    println!("                {binary} job run {JOB} --follow {connect}");
    println!("Ctrl-C stops the server and the simulated pool.");
}

async fn open_or_init(path: &Path, passphrase: &str) -> anyhow::Result<Store> {
    let location = path.to_str().ok_or_else(|| anyhow::anyhow!("the demo directory must be UTF-8"))?;
    let backend = xenvault_repo::backend::BackendOptions::default();
    if let Ok(store) = Store::open(location, &backend, Some(passphrase)).await {
        return Ok(store);
    }
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase(passphrase)),
        ..Default::default()
    };
    Ok(Store::from_repository(xenvault_repo::Repository::init(location, &backend, options).await?))
}

/// sim.sha256 of every backed-up disk now (the snapshot was just taken: same content).
async fn digests(host: &Host, report: &JobReport) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for disk in report.vms.iter().flat_map(|vm| &vm.disks) {
        let digest = host.call("sim.sha256", vec![Value::from(disk.vdi_uuid.as_str())]).await?;
        out.insert(disk.vdi_uuid.clone(), digest.as_str().unwrap_or_default().to_owned());
    }
    Ok(out)
}

/// Rebuilds each disk of each restore point; returns how many differ.
async fn verify(store: &Store, report: &JobReport, expected: &BTreeMap<String, String>) -> anyhow::Result<usize> {
    let mut bad = 0;
    for vm in &report.vms {
        let Some(id) = &vm.restore_point else { continue };
        for disk in &vm.disks {
            let digest = store.disk_sha256(id, &disk.position).await?;
            let ok = expected.get(&disk.vdi_uuid) == Some(&digest);
            println!(
                "   {} {} disk {}: {}",
                id.get(..8).unwrap_or(id),
                vm.vm_name,
                disk.position,
                if ok { "ok" } else { "DIFFERS" }
            );
            bad += usize::from(!ok);
        }
    }
    Ok(bad)
}
