//! Runs of jobs against the in-process simulator and a local repository: the task tree,
//! live progress, selection resolved at run time, retention per schedule applied after a
//! successful run only, and cancellation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use xenvault_engine::store::Store;
use xenvault_jobs::model::{
    Job, Level, PowerState, Retention, Run, RunStatus, Schedule, Selection, SmartSelection, Task, TaskKind, TaskStatus,
    Trigger,
};
use xenvault_jobs::runner::{self, RunSink, Target};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::host::Host;
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, SimHandle, Simulator};
use xenvault_types::progress::Event;

struct Env {
    _dir: tempfile::TempDir,
    _sim: SimHandle,
    sim: SimClient,
    host: Host,
    store: Store,
}

async fn env() -> Env {
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
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo_dir = dir.path().join("repo");
    let repo = xenvault_repo::Repository::init(repo_dir.to_str().unwrap(), &Default::default(), options).await.unwrap();
    let client = SimClient::login(&sim.url, &sim.password).await.unwrap();
    Env { _dir: dir, _sim: sim, sim: client, host, store: Store::from_repository(repo) }
}

/// What the catalog would hold.
#[derive(Default)]
struct MemorySink {
    runs: Mutex<BTreeMap<String, Run>>,
    tasks: Mutex<BTreeMap<String, Task>>,
    events: Mutex<Vec<Event>>,
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
    fn tasks_of(&self, run_id: &str) -> Vec<Task> {
        self.tasks.lock().unwrap().values().filter(|t| t.run_id == run_id).cloned().collect()
    }
}

fn schedule(id: &str, last: u32) -> Schedule {
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

fn job(selection: Selection) -> Job {
    let mut job: Job =
        toml::from_str("id = \"job-1\"\nname = \"web\"\npool = \"sim\"\nrepository = \"local\"").unwrap();
    job.selection = selection;
    job.schedules = vec![schedule("daily", 1), schedule("weekly", 2)];
    job
}

fn debian_web() -> Selection {
    Selection { vms: vec!["debian-web".into()], smart: None }
}

fn new_run(job: &Job, schedule: Option<&str>) -> Run {
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
    async fn run(&self, job: &Job, schedule: Option<&str>, sink: &Arc<MemorySink>) -> runner::Outcome {
        self.run_cancelled_by(job, schedule, sink, CancellationToken::new()).await
    }

    async fn run_cancelled_by(
        &self,
        job: &Job,
        schedule: Option<&str>,
        sink: &Arc<MemorySink>,
        cancel: CancellationToken,
    ) -> runner::Outcome {
        let run = new_run(job, schedule);
        sink.save_run(&run).await;
        let schedule = schedule.map(|id| job.schedules.iter().find(|s| s.id == id).unwrap());
        let target = Target { host: &self.host, store: &self.store };
        runner::run_backup(job, schedule, run, target, sink.clone(), cancel).await
    }

    /// Writes random data over a tenth of the disk (the seeded disks are empty).
    async fn scribble(&self, vdi_uuid: &str, seed: u64) {
        let args = [vdi_uuid, "10", "4096", &seed.to_string()].map(xenvault_xapi_wire::Value::from).to_vec();
        self.sim.call("sim.scribble", args).await.unwrap();
    }

    async fn points_of_vm(&self) -> Vec<xenvault_repo::Manifest> {
        let points = self.store.repository().restore_points().await.unwrap();
        points.into_iter().filter(|m| m.source.name == "debian-web").collect()
    }
}

#[tokio::test]
async fn a_run_records_its_task_tree_and_applies_its_schedules_retention() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let job = job(debian_web());

    let first = env.run(&job, Some("daily"), &sink).await;
    assert_eq!(first.run.status, RunStatus::Success, "{:?}", first.tasks);
    assert_eq!((first.run.totals.vms, first.run.totals.vms_ok), (1, 1));
    // The tree the catalog got: run → VM → its two disks, plus the retention step.
    let tasks = sink.tasks_of(&first.run.id);
    let root = tasks.iter().find(|t| t.kind == TaskKind::Run).unwrap();
    assert_eq!(root.status, TaskStatus::Success);
    let vm = tasks.iter().find(|t| t.kind == TaskKind::Vm).unwrap();
    assert_eq!(
        (vm.name.as_str(), vm.parent_id.as_deref(), vm.status),
        ("debian-web", Some(&*root.id), TaskStatus::Success)
    );
    let disks: Vec<&Task> = tasks.iter().filter(|t| t.kind == TaskKind::Disk).collect();
    assert_eq!(disks.len(), 2);
    assert!(disks.iter().all(|d| d.parent_id.as_deref() == Some(&*vm.id) && d.strategy.is_some()));
    for (seed, disk) in disks.iter().enumerate() {
        env.scribble(disk.subject.as_deref().unwrap(), seed as u64).await;
    }
    assert!(tasks.iter().any(|t| t.kind == TaskKind::Step && t.name.contains("retention")));
    assert_eq!(sink.runs.lock().unwrap()[&first.run.id].status, RunStatus::Success);

    // A second daily run (over changed disks): "last 1" leaves only its own restore point.
    let second = env.run(&job, Some("daily"), &sink).await;
    assert_eq!(second.run.status, RunStatus::Success);
    assert!(second.run.totals.bytes_read > 0 && second.run.totals.bytes_stored > 0, "{:?}", second.run.totals);
    assert!(sink.events.lock().unwrap().iter().any(|e| matches!(e, Event::Progressed { done, .. } if *done > 0)));
    let points = env.points_of_vm().await;
    assert_eq!(points.len(), 1);
    let step = sink.tasks_of(&second.run.id).into_iter().find(|t| t.kind == TaskKind::Step).unwrap();
    assert_eq!(step.status, TaskStatus::Success);
    assert!(step.reason.as_deref().unwrap().starts_with("1 restore points removed"), "{step:?}");

    // Weekly runs count only their own points: the daily one stays.
    for _ in 0..3 {
        assert_eq!(env.run(&job, Some("weekly"), &sink).await.run.status, RunStatus::Success);
    }
    let ids: Vec<String> = env.points_of_vm().await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3, "one daily and the two newest weekly points: {ids:?}");
    assert!(ids.contains(&points[0].id));

    // A manual run has no schedule, so no retention.
    let manual = env.run(&job, None, &sink).await;
    assert_eq!(manual.run.status, RunStatus::Success);
    assert_eq!(env.points_of_vm().await.len(), 4);
    assert!(manual.tasks.iter().all(|t| t.kind != TaskKind::Step));
}

#[tokio::test]
async fn retention_waits_for_a_fully_successful_run() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    // Two VMs; the pre command fails for the Windows one.
    let mut job = job(Selection { vms: vec!["debian-web".into(), "win-fileserver".into()], smart: None });
    job.settings.pre_command = Some("test \"$XENVAULT_VM_NAME\" != win-fileserver".into());
    job.settings.retries = 1;
    job.settings.retry_backoff_secs = 0;

    for _ in 0..2 {
        let outcome = env.run(&job, Some("daily"), &sink).await;
        assert_eq!(outcome.run.status, RunStatus::Partial);
        assert_eq!((outcome.run.totals.vms_ok, outcome.run.totals.vms_failed), (1, 1));
        let failed = outcome.tasks.iter().find(|t| t.kind == TaskKind::Vm && t.status == TaskStatus::Failed).unwrap();
        assert_eq!(failed.name, "win-fileserver");
        assert!(!failed.errors.is_empty());
        // The retry is said.
        assert!(failed.warnings.iter().any(|w| w.starts_with("try 1 failed")), "{failed:?}");
        assert!(outcome.tasks.iter().all(|t| t.kind != TaskKind::Step));
    }
    // "last 1" was not applied: both points of debian-web are there.
    assert_eq!(env.points_of_vm().await.len(), 2);
}

#[tokio::test]
async fn a_cancelled_run_commits_nothing_and_a_bad_selection_fails_the_run() {
    let env = env().await;
    let sink = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = env.run_cancelled_by(&job(debian_web()), Some("daily"), &sink, cancel).await;
    assert_eq!(outcome.run.status, RunStatus::Cancelled);
    assert!(env.points_of_vm().await.is_empty());

    let missing = job(Selection { vms: vec!["no-such-vm".into()], smart: None });
    let outcome = env.run(&missing, Some("daily"), &sink).await;
    assert_eq!(outcome.run.status, RunStatus::Failed);
    assert!(outcome.run.error.as_deref().unwrap().contains("no-such-vm"), "{:?}", outcome.run.error);
    assert_eq!(sink.runs.lock().unwrap()[&outcome.run.id].status, RunStatus::Failed);
}

#[tokio::test]
async fn smart_selection_is_resolved_against_the_pool_as_it_is() {
    let env = env().await;
    let names = |vms: Vec<xenvault_pool::records::Vm>| vms.into_iter().map(|v| v.name_label).collect::<Vec<_>>();
    let smart = |s: SmartSelection| Selection { vms: Vec::new(), smart: Some(s) };

    let running = smart(SmartSelection { power_states: vec![PowerState::Running], ..Default::default() });
    let found = names(xenvault_jobs::selection::resolve(&env.host, &running).await.unwrap());
    assert_eq!(found, ["debian-web", "win-fileserver"]);

    let tagged = smart(SmartSelection { tags: vec!["demo".into()], ..Default::default() });
    assert_eq!(names(xenvault_jobs::selection::resolve(&env.host, &tagged).await.unwrap()), ["debian-web"]);

    let excluded = smart(SmartSelection {
        power_states: vec![PowerState::Running],
        exclude_tags: vec!["demo".into()],
        ..Default::default()
    });
    assert_eq!(names(xenvault_jobs::selection::resolve(&env.host, &excluded).await.unwrap()), ["win-fileserver"]);

    let halted =
        smart(SmartSelection { power_states: vec![PowerState::Halted], exclude_vms: vec![], ..Default::default() });
    let found = names(xenvault_jobs::selection::resolve(&env.host, &halted).await.unwrap());
    assert!(!found.contains(&"debian-web".to_owned()), "{found:?}");
}
