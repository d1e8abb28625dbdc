//! What the runner tests share: the in-process simulator, a local repository, a sink
//! that keeps what the catalog would, jobs and runs.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use xenvault_engine::store::Store;
use xenvault_jobs::model::{Job, Level, Retention, Run, RunStatus, Schedule, Selection, Task, Trigger};
use xenvault_jobs::runner::{self, RunSink, Target};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::host::Host;
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, SimHandle, Simulator};
use xenvault_types::progress::Event;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim_handle: SimHandle,
    pub sim: SimClient,
    pub host: Host,
    pub store: Store,
}

pub async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path().join("sim"))).await.unwrap();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim.cert_pem).unwrap();
    let login = PoolLogin {
        name: "test".into(),
        entry: PoolEntry {
            url: sim.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(&fingerprint).unwrap(),
        },
        password: sim.password.clone(),
    };
    let host = Host::connect(&login).await.unwrap();
    let store = new_store(dir.path().join("repo").to_str().unwrap(), &Default::default()).await;
    let client = SimClient::login(&sim.url, &sim.password).await.unwrap();
    Env { dir, sim_handle: sim, sim: client, host, store }
}

/// A new repository at `location` (passphrase "test", a cheap KDF).
pub async fn new_store(location: &str, backend: &xenvault_repo::BackendOptions) -> Store {
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Store::from_repository(xenvault_repo::Repository::init(location, backend, options).await.unwrap())
}

/// What the catalog would hold.
#[derive(Default)]
pub struct MemorySink {
    pub runs: Mutex<BTreeMap<String, Run>>,
    pub tasks: Mutex<BTreeMap<String, Task>>,
    pub events: Mutex<Vec<Event>>,
}

impl RunSink for MemorySink {
    async fn save_run(&self, run: &Run) {
        self.runs.lock().unwrap().insert(run.id.clone(), run.clone());
    }

    async fn save_task(&self, task: &Task) {
        self.tasks.lock().unwrap().insert(task.id.clone(), task.clone());
    }

    fn progress(&self, _run_id: &str, event: &Event) {
        self.events.lock().unwrap().push(event.clone());
    }

    async fn runs_of_schedule(&self, job_id: &str, schedule_id: &str) -> Vec<String> {
        let runs = self.runs.lock().unwrap();
        runs.values()
            .filter(|r| r.job_id == job_id && r.schedule_id.as_deref() == Some(schedule_id))
            .map(|r| r.id.clone())
            .collect()
    }
}

impl MemorySink {
    pub fn tasks_of(&self, run_id: &str) -> Vec<Task> {
        self.tasks.lock().unwrap().values().filter(|t| t.run_id == run_id).cloned().collect()
    }
}

pub fn schedule(id: &str, last: u32) -> Schedule {
    Schedule {
        id: id.into(),
        name: id.into(),
        cron: "0 1 * * *".into(),
        timezone: "UTC".into(),
        enabled: true,
        level: Level::Inc,
        retention: Retention { last, ..Default::default() },
    }
}

pub fn job(selection: Selection) -> Job {
    let mut job: Job =
        toml::from_str("id = \"job-1\"\nname = \"web\"\npool = \"sim\"\nrepository = \"local\"").unwrap();
    job.selection = selection;
    job.schedules = vec![schedule("daily", 1), schedule("weekly", 2)];
    job
}

pub fn debian_web() -> Selection {
    Selection { vms: vec!["debian-web".into()], smart: None }
}

pub fn new_run(job: &Job, schedule: Option<&str>) -> Run {
    Run {
        id: uuid::Uuid::new_v4().to_string(),
        job_id: job.id.clone(),
        schedule_id: schedule.map(str::to_owned),
        parent_run_id: None,
        trigger: if schedule.is_some() { Trigger::Schedule } else { Trigger::Manual },
        status: RunStatus::Queued,
        level: None,
        scheduled_for: None,
        queued_at: Utc::now(),
        started_at: None,
        finished_at: None,
        totals: Default::default(),
        error: None,
    }
}

impl Env {
    pub async fn run(&self, job: &Job, schedule: Option<&str>, sink: &Arc<MemorySink>) -> runner::Outcome {
        self.run_cancelled_by(job, schedule, sink, CancellationToken::new()).await
    }

    pub async fn run_cancelled_by(
        &self,
        job: &Job,
        schedule: Option<&str>,
        sink: &Arc<MemorySink>,
        cancel: CancellationToken,
    ) -> runner::Outcome {
        // As the server does: a snapshot-only job gets no repository.
        let store = job.settings.snapshot_only.is_none().then_some(&self.store);
        self.run_into(store, job, schedule, sink, cancel).await
    }

    /// A run of `job` backing up into `store`.
    pub async fn run_into(
        &self,
        store: Option<&Store>,
        job: &Job,
        schedule: Option<&str>,
        sink: &Arc<MemorySink>,
        cancel: CancellationToken,
    ) -> runner::Outcome {
        let run = new_run(job, schedule);
        sink.save_run(&run).await;
        let schedule = schedule.map(|id| job.schedules.iter().find(|s| s.id == id).unwrap());
        let target = Target { host: &self.host, store };
        runner::run_backup(job, schedule, run, target, sink.clone(), cancel).await
    }

    /// The VM named `name`, as the pool has it now.
    pub async fn vm(&self, name: &str) -> xenvault_pool::records::Vm {
        self.host.vms().await.unwrap().into_iter().find(|v| v.name_label == name).unwrap()
    }

    /// Writes random data over a tenth of the disk (the seeded disks are empty).
    pub async fn scribble(&self, vdi_uuid: &str, seed: u64) {
        let args = [vdi_uuid, "10", "4096", &seed.to_string()].map(xenvault_xapi_wire::Value::from).to_vec();
        self.sim.call("sim.scribble", args).await.unwrap();
    }

    pub async fn points_of_vm(&self) -> Vec<xenvault_repo::Manifest> {
        let points = self.store.repository().restore_points().await.unwrap();
        points.into_iter().filter(|m| m.source.name == "debian-web").collect()
    }
}
