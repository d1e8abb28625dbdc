//! Executes one run of a job: resolves its selection now, backs each VM up through the
//! engine (with the job's settings, a timeout and retries per VM), records the task tree
//! (run → VM → disk, and steps) through a [`RunSink`], applies the schedule's retention
//! after a successful run only, and stops cleanly when cancelled.
//!
//! Settings that change the run: a speed limit shared by all its reads, offline backups
//! (shut down, back up, start again: [`crate::offline`]), snapshot-only runs that keep
//! rolling snapshots instead of writing restore points ([`crate::snapshot_only`]), the
//! compression level of the chunks written, and the days new restore points stay locked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xenvault_engine::job::{self, BackupOptions, LockAfterBackup};
use xenvault_engine::report::{Status, VmReport};
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::throttle::RateLimit;
use xenvault_pool::host::Host;
use xenvault_pool::records::Vm;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::forget::{Forget, ForgetOptions};
use xenvault_repo::select::SelectError;
use xenvault_types::metadata::BackupRun;
use xenvault_types::progress::{Event, Progress};

use crate::model::{
    Job, JobKind, Level, Retention, Run, RunStatus, RunTotals, Schedule, Settings, SnapshotOnly, Task, TaskKind,
    TaskStatus,
};
use crate::offline::{self, Before};
use crate::snapshot_only;

/// Where a run's record goes (the catalog). Failures to record are the sink's to log: a
/// backup does not fail because its history could not be written.
pub trait RunSink: Send + Sync + 'static {
    fn save_run(&self, run: &Run) -> impl Future<Output = ()> + Send;
    /// Inserts or replaces the task with this id.
    fn save_task(&self, task: &Task) -> impl Future<Output = ()> + Send;
    /// Live progress of the run's disks (called often; keep it cheap).
    fn progress(&self, run_id: &str, event: &Event);
    /// Ids of the runs the schedule of the job made: retention counts their restore points.
    fn runs_of_schedule(&self, job_id: &str, schedule_id: &str) -> impl Future<Output = Vec<String>> + Send;
}

/// The pool and repository a job runs against (snapshot-only jobs need no repository).
pub struct Target<'a> {
    pub host: &'a Host,
    pub store: Option<&'a Store>,
}

/// What backing up VMs needs: both.
#[derive(Clone, Copy)]
pub struct BackupTarget<'a> {
    pub host: &'a Host,
    pub store: &'a Store,
}

/// What a run did: its final record and its task tree.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run: Run,
    pub tasks: Vec<Task>,
}

/// Runs `run` (created by the caller, e.g. queued in the catalog) of a backup job, or of a
/// pool-metadata job ([`crate::pool_metadata`]). The schedule gives the level and the
/// retention (none for a manual run: no retention).
pub async fn run_backup<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    target: Target<'_>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    match job.kind {
        JobKind::PoolMetadata => return crate::pool_metadata::run(job, schedule, run, target, sink, cancel).await,
        JobKind::Mirror | JobKind::ConfigBackup => {
            let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
            let why = match job.kind {
                JobKind::Mirror => "a mirror job copies between two repositories: run it with mirror::run",
                _ => "a config-backup job backs up the server's configuration: run it with config_backup::run",
            };
            frame.settle(&mut run, Err(why.into()));
            return frame.end(run).await;
        }
        JobKind::Backup | JobKind::BackupXva | JobKind::Sequence => {}
    }
    let level = run.level.or(schedule.map(|s| s.level)).unwrap_or_default();
    run.level = Some(level);
    let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
    let run_cancel = frame.cancel.clone();
    let recorder = &mut frame.recorder;
    let result = match check_settings(&job.settings, target.store).await {
        Err(e) => Err(e),
        Ok(speed_limit) => match job.settings.snapshot_only {
            Some(rolling) => {
                let schedule_id = schedule.map_or(snapshot_only::MANUAL, |s| s.id.as_str());
                roll_snapshots(job, schedule_id, rolling, &run, &target, &run_cancel, recorder)
                    .await
                    .map(|totals| (totals, Vec::new()))
            }
            None => match target.store {
                Some(store) => {
                    let target = BackupTarget { host: target.host, store };
                    back_up_vms(job, level, &run, &target, speed_limit, &sink, &run_cancel, recorder)
                        .await
                        .map(|reports| (totals(&reports), reports))
                }
                None => Err("the job has no repository to back up into".into()),
            },
        },
    };
    let (result, reports) = match result {
        Ok((run_totals, reports)) => (Ok(run_totals), reports),
        Err(e) => (Err(e), Vec::new()),
    };
    frame.settle(&mut run, result);
    // Snapshot-only runs keep their own count of snapshots; they make no restore points.
    if job.settings.snapshot_only.is_none()
        && let Some(store) = target.store
    {
        let backed_up: Vec<String> = reports.into_iter().map(|r| r.vm_uuid).collect();
        retention_after_success(job, schedule, &backed_up, &run, store, &sink, &mut frame.recorder).await;
    }
    frame.end(run).await
}

/// A backup run whose VMs are backed up elsewhere (scale-out nodes taking them from a
/// queue, each with [`back_up_vm_task`]): the same frame as [`run_backup`] (running, root
/// task, timeout, status from totals, end) and the schedule's retention after a success.
/// `work` gets the root task's id and the run's cancellation; it hands the VMs out, waits
/// for them, and returns the run's totals and the uuids of the VMs it backed up.
pub async fn run_distributed<S, W, F>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    store: &Store,
    sink: Arc<S>,
    cancel: CancellationToken,
    work: W,
) -> Outcome
where
    S: RunSink,
    W: FnOnce(String, CancellationToken) -> F,
    F: Future<Output = Result<(RunTotals, Vec<String>), String>>,
{
    run.level = Some(run.level.or(schedule.map(|s| s.level)).unwrap_or_default());
    let mut frame = Frame::start(job, &mut run, &sink, &cancel).await;
    let result = match (job.kind, check_settings(&job.settings, Some(store)).await) {
        (JobKind::Backup | JobKind::BackupXva, Ok(_)) if job.settings.snapshot_only.is_none() => {
            work(frame.recorder.root_id(), frame.cancel.clone()).await
        }
        (_, Err(e)) => Err(e),
        _ => Err("only backup jobs are handed out to scale-out nodes".into()),
    };
    let (result, backed_up) = match result {
        Ok((totals, backed_up)) => (Ok(totals), backed_up),
        Err(e) => (Err(e), Vec::new()),
    };
    frame.settle(&mut run, result);
    retention_after_success(job, schedule, &backed_up, &run, store, &sink, &mut frame.recorder).await;
    frame.end(run).await
}

/// The schedule's retention over the VMs `backed_up`, when the run succeeded (a manual
/// run, or a schedule that keeps everything, removes nothing).
async fn retention_after_success<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    backed_up: &[String],
    run: &Run,
    store: &Store,
    sink: &Arc<S>,
    recorder: &mut Recorder<S>,
) {
    if run.status == RunStatus::Success
        && let Some(schedule) = schedule.filter(|s| !s.retention.keeps_everything())
    {
        let points = points_of_schedule(job, schedule, backed_up, store, sink.as_ref()).await;
        retention_step(schedule, run, store.repository(), points, recorder).await;
    }
}

/// What every kind of run shares: the run marked running with its root task, the job's
/// timeout, and the record of how it ended.
pub(crate) struct Frame<S: RunSink> {
    pub(crate) recorder: Recorder<S>,
    /// Cancelled by the caller, or when the job's timeout passes.
    pub(crate) cancel: CancellationToken,
    caller: CancellationToken,
    timeout: Option<Duration>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl<S: RunSink> Frame<S> {
    pub(crate) async fn start(job: &Job, run: &mut Run, sink: &Arc<S>, cancel: &CancellationToken) -> Self {
        run.status = RunStatus::Running;
        run.started_at = Some(Utc::now());
        sink.save_run(run).await;
        let root = Task::started(new_id(), &run.id, None, TaskKind::Run, &job.name);
        sink.save_task(&root).await;
        // The job's timeout cancels like a user would; the run then says why.
        let run_cancel = cancel.child_token();
        let timeout = job.settings.job_timeout_secs.map(Duration::from_secs);
        let timer = timeout.map(|limit| {
            let token = run_cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                token.cancel();
            })
        });
        Frame {
            recorder: Recorder { sink: sink.clone(), tasks: vec![root] },
            cancel: run_cancel,
            caller: cancel.clone(),
            timeout,
            timer,
        }
    }

    /// Sets the run's status from what the work returned: its totals, or why it failed.
    pub(crate) fn settle(&mut self, run: &mut Run, result: Result<RunTotals, String>) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        let timed_out = self.cancel.is_cancelled() && !self.caller.is_cancelled();
        match result {
            Err(e) => {
                run.status = RunStatus::Failed;
                run.error = Some(e);
            }
            Ok(run_totals) => {
                run.totals = run_totals;
                run.status = match (run.totals.vms_ok, run.totals.vms_failed) {
                    _ if self.caller.is_cancelled() => RunStatus::Cancelled,
                    (_, 0) if !timed_out => RunStatus::Success,
                    (0, _) => RunStatus::Failed,
                    _ => RunStatus::Partial,
                };
                if timed_out {
                    let limit = self.timeout.unwrap_or_default().as_secs();
                    run.error = Some(format!("the job took longer than its timeout ({limit} s)"));
                }
            }
        }
    }

    /// Closes the run's root task and stores the finished run.
    pub(crate) async fn end(mut self, mut run: Run) -> Outcome {
        run.finished_at = Some(Utc::now());
        self.recorder.finish_root(&run).await;
        self.recorder.sink.save_run(&run).await;
        Outcome { run, tasks: self.recorder.tasks }
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Refuses settings the run cannot honour before any VM is touched; the speed limit the
/// whole run shares (on a scale-out node: the VMs that node backs up at once).
pub async fn check_settings(settings: &Settings, store: Option<&Store>) -> Result<Option<RateLimit>, String> {
    settings.check()?;
    if settings.snapshot_only.is_some() {
        return Ok(None);
    }
    if let Some(days) = settings.immutability_days {
        let Some(store) = store else { return Err("the job has no repository".into()) };
        store.repository().backend().require_object_lock().await.map_err(|e| {
            format!("the job keeps restore points immutable for {days} days, but the repository cannot: {e}")
        })?;
    }
    settings.speed_limit_bytes_per_sec.map(RateLimit::new).transpose().map_err(|e| e.to_string())
}

/// Keeps the task tree in memory (for the outcome and notifications) and in the sink.
pub(crate) struct Recorder<S: RunSink> {
    sink: Arc<S>,
    tasks: Vec<Task>,
}

impl<S: RunSink> Recorder<S> {
    pub(crate) fn root_id(&self) -> String {
        self.tasks[0].id.clone()
    }

    pub(crate) async fn save(&mut self, task: Task) {
        self.sink.save_task(&task).await;
        match self.tasks.iter_mut().find(|t| t.id == task.id) {
            Some(slot) => *slot = task,
            None => self.tasks.push(task),
        }
    }

    async fn finish_root(&mut self, run: &Run) {
        let mut root = self.tasks[0].clone();
        root.status = match run.status {
            RunStatus::Success | RunStatus::Partial => TaskStatus::Success,
            RunStatus::Cancelled => TaskStatus::Cancelled,
            RunStatus::Interrupted => TaskStatus::Interrupted,
            _ => TaskStatus::Failed,
        };
        root.finished_at = run.finished_at;
        root.bytes_read = run.totals.bytes_read;
        root.bytes_stored = run.totals.bytes_stored;
        root.errors.extend(run.error.clone());
        self.save(root).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn back_up_vms<S: RunSink>(
    job: &Job,
    level: Level,
    run: &Run,
    target: &BackupTarget<'_>,
    speed_limit: Option<RateLimit>,
    sink: &Arc<S>,
    cancel: &CancellationToken,
    recorder: &mut Recorder<S>,
) -> Result<Vec<VmReport>, String> {
    if job.kind == JobKind::Sequence {
        return Err("a sequence runs other jobs; run it with run_sequence".into());
    }
    let vms = crate::selection::resolve(target.host, &job.selection).await.map_err(|e| e.to_string())?;
    let root_id = recorder.root_id();
    // VM tasks start as they are reached; each VM records its own subtree when it ends.
    let progress = forward_progress(sink, run);
    let concurrency = job.settings.vm_concurrency.max(1) as usize;
    let outcomes: Vec<(VmReport, Vec<Task>)> = futures::stream::iter(vms.iter())
        .map(|vm| {
            let vm_run = VmRun { job, level, run, parent_id: &root_id };
            back_up_vm_task(vm_run, vm, *target, speed_limit.clone(), progress.clone(), sink, cancel)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut reports = Vec::new();
    for (report, tasks) in outcomes {
        recorder.tasks.extend(tasks);
        reports.push(report);
    }
    Ok(reports)
}

/// Which run a VM is backed up for, and where its task goes.
#[derive(Clone, Copy)]
pub struct VmRun<'a> {
    pub job: &'a Job,
    pub level: Level,
    pub run: &'a Run,
    /// The run's root task.
    pub parent_id: &'a str,
}

/// One VM of a run as a task under the run's root task: started, backed up with the job's
/// settings (offline, timeout, retries), then its result with a task per disk and step,
/// all recorded through `sink`. What the server's runs and the scale-out nodes share.
pub async fn back_up_vm_task<S: RunSink>(
    vm_run: VmRun<'_>,
    vm: &Vm,
    target: BackupTarget<'_>,
    speed_limit: Option<RateLimit>,
    progress: Arc<dyn Progress>,
    sink: &Arc<S>,
    cancel: &CancellationToken,
) -> (VmReport, Vec<Task>) {
    let VmRun { job, level, run, parent_id } = vm_run;
    let mut task = Task::started(new_id(), &run.id, Some(parent_id), TaskKind::Vm, &vm.name_label);
    task.subject = Some(vm.uuid.clone());
    sink.save_task(&task).await;
    let (report, steps) = back_up_vm(job, level, run, vm, &target, speed_limit, progress, cancel).await;
    let mut tasks = vm_tasks(task, &report);
    tasks.extend(step_tasks(&tasks[0], steps));
    for t in &tasks {
        sink.save_task(t).await;
    }
    (report, tasks)
}

/// A finished step under a task, said in the run's log by its name: beside a VM's backup
/// (offline shutdown and start, the lock), after a mirror (retention, lock, verify).
pub(crate) struct Step {
    name: String,
    error: Option<String>,
}

impl Step {
    pub(crate) fn done(name: impl Into<String>) -> Self {
        Step { name: name.into(), error: None }
    }

    pub(crate) fn failed(name: impl Into<String>, error: String) -> Self {
        Step { name: name.into(), error: Some(error) }
    }
}

/// One VM, offline if the job says so: shut down before its backup and started again
/// after it, whatever became of the backup (failed, cancelled, timed out).
#[allow(clippy::too_many_arguments)]
async fn back_up_vm(
    job: &Job,
    level: Level,
    run: &Run,
    vm: &Vm,
    target: &BackupTarget<'_>,
    speed_limit: Option<RateLimit>,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> (VmReport, Vec<Step>) {
    if !job.settings.offline {
        return try_vm(job, level, run, vm, target, speed_limit, progress, cancel).await;
    }
    let host = target.host;
    let before = offline::shut_down(host, vm, offline::CLEAN_SHUTDOWN_TIMEOUT, cancel).await;
    let mut steps = Vec::new();
    let shut_down = match before {
        Ok(Before::AlreadyHalted) => {
            steps.push(Step::done("offline: the VM was halted already: backed up as it is, not started"));
            false
        }
        Ok(Before::ShutDown) => {
            steps.push(Step::done("offline: the VM was shut down cleanly for its backup"));
            true
        }
        Err(e) if offline::halted_after_failure(host, vm).await => {
            // It halted all the same: start it again, back nothing up.
            steps.push(Step::failed("offline: clean shutdown", e.clone()));
            let mut report = failed_report(job, vm, level, e);
            let started = offline::start(host, vm).await;
            steps.push(started_step(started, &mut report));
            return (report, steps);
        }
        Err(e) => {
            steps.push(Step::failed("offline: clean shutdown (the VM was left running)", e.clone()));
            return (failed_report(job, vm, level, e), steps);
        }
    };
    let (mut report, mut backup_steps) = try_vm(job, level, run, vm, target, speed_limit, progress, cancel).await;
    steps.append(&mut backup_steps);
    if shut_down {
        let started = offline::start(host, vm).await;
        steps.push(started_step(started, &mut report));
    }
    (report, steps)
}

/// The step of starting the VM again; a VM left down fails, however its backup went.
fn started_step(started: Result<(), String>, report: &mut VmReport) -> Step {
    match started {
        Ok(()) => Step::done("offline: the VM was started again"),
        Err(e) => {
            report.status = Status::Failed;
            report.error = Some(match report.error.take() {
                Some(earlier) => format!("{earlier}; {e}"),
                None => e.clone(),
            });
            Step::failed("offline: start the VM again", e)
        }
    }
}

/// One VM: tries until it succeeds, the tries run out, or the run is cancelled; each try
/// is cancelled after the job's per-VM timeout.
#[allow(clippy::too_many_arguments)]
async fn try_vm(
    job: &Job,
    level: Level,
    run: &Run,
    vm: &Vm,
    target: &BackupTarget<'_>,
    speed_limit: Option<RateLimit>,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> (VmReport, Vec<Step>) {
    let settings = &job.settings;
    let lock = settings.immutability_days.map(|days| LockAfterBackup { days, mode: RetentionMode::Governance });
    let mut warnings = Vec::new();
    let mut attempt = 0;
    loop {
        let try_cancel = cancel.child_token();
        let options = BackupOptions {
            selectors: vec![Selector::NameOrUuid(vm.uuid.clone())],
            level: engine_level(job, level),
            xva: job.kind == JobKind::BackupXva,
            quiesce: settings.quiesce,
            pre_cmd: settings.pre_command.clone(),
            post_cmd: settings.post_command.clone(),
            vm_concurrency: 1,
            disk_concurrency: settings.disk_concurrency.max(1) as usize,
            nbd_connections: settings.nbd_connections.max(1) as usize,
            cancel: try_cancel.clone(),
            job_id: Some(job.id.clone()),
            run_id: Some(run.id.clone()),
            lock,
            speed_limit: speed_limit.clone(),
            zstd_level: settings.compression_level,
            ..Default::default()
        };
        let backup = job::backup(target.host, target.store, &options, progress.clone());
        let timed = async {
            match settings.vm_timeout_secs {
                Some(secs) => {
                    tokio::pin!(backup);
                    tokio::select! {
                        result = &mut backup => (result, false),
                        _ = tokio::time::sleep(Duration::from_secs(secs)) => {
                            // Cancel, then let the engine remove its snapshot and commit nothing.
                            try_cancel.cancel();
                            (backup.await, true)
                        }
                    }
                }
                None => (backup.await, false),
            }
        };
        let (result, timed_out) = timed.await;
        let mut steps = Vec::new();
        let mut report = match result {
            Ok(mut job_report) if !job_report.vms.is_empty() => {
                let mut report = job_report.vms.remove(0);
                if let Some(locked) = job_report.lock.filter(|l| !l.restore_points.is_empty()) {
                    steps.push(Step::done(format!(
                        "restore point locked until {} ({:?} mode, {} objects)",
                        locked.until.format("%Y-%m-%d %H:%M UTC"),
                        locked.mode,
                        locked.objects
                    )));
                }
                // Stored but not immutable: not what the job promises.
                if let Some(e) = job_report.lock_error {
                    report.status = Status::Failed;
                    report.error = Some(e.clone());
                    steps.push(Step::failed("lock the restore point", e));
                }
                report
            }
            Ok(_) => failed_report(job, vm, level, "the VM is no longer in the pool".into()),
            Err(e) => failed_report(job, vm, level, e.to_string()),
        };
        if timed_out {
            report.status = Status::Failed;
            report.error = Some(format!(
                "timed out after {} s ({})",
                settings.vm_timeout_secs.unwrap_or_default(),
                report.error.as_deref().unwrap_or("cancelled")
            ));
        }
        let failed = matches!(report.status, Status::Failed);
        if !failed || attempt >= settings.retries || cancel.is_cancelled() {
            report.warnings.splice(0..0, warnings);
            return (report, steps);
        }
        // Exponential backoff, cut short by cancellation.
        let wait = settings.retry_backoff_secs.saturating_mul(1 << attempt.min(16));
        warnings.push(format!("try {} failed: {}", attempt + 1, report.error.as_deref().unwrap_or("unknown error")));
        attempt += 1;
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
    }
}

fn engine_level(job: &Job, level: Level) -> xenvault_types::metadata::Level {
    use xenvault_types::metadata::Level as Engine;
    match (job.kind, level) {
        (JobKind::BackupXva, _) | (_, Level::Full) => Engine::Full,
        (_, Level::Inc) => Engine::Inc,
        (_, Level::Diff) => Engine::Diff,
    }
}

fn failed_report(job: &Job, vm: &Vm, level: Level, error: String) -> VmReport {
    VmReport {
        vm_uuid: vm.uuid.clone(),
        vm_name: vm.name_label.clone(),
        status: Status::Failed,
        error: Some(error),
        level: engine_level(job, level),
        level_reason: None,
        restore_point: None,
        snapshot: None,
        disks: Vec::new(),
        excluded_disks: Vec::new(),
        cleaned_snapshots: Vec::new(),
        warnings: Vec::new(),
        duration_secs: 0.0,
    }
}

/// The VM's task (finished) and one task per disk, from the engine's report.
fn vm_tasks(mut vm_task: Task, report: &VmReport) -> Vec<Task> {
    let now = Utc::now();
    vm_task.status = match report.status {
        Status::Ok => TaskStatus::Success,
        Status::Failed => TaskStatus::Failed,
    };
    vm_task.finished_at = Some(now);
    vm_task.reason = report.level_reason.clone();
    vm_task.warnings = report.warnings.clone();
    vm_task.errors = report.error.iter().cloned().collect();
    vm_task.bytes_read = report.disks.iter().map(|d| d.bytes_read).sum();
    vm_task.bytes_stored = report.disks.iter().map(|d| d.bytes_stored).sum();
    let mut tasks = vec![vm_task.clone()];
    for disk in &report.disks {
        let name = format!("disk {} {}", disk.position, disk.name);
        let mut task = Task::started(new_id(), &vm_task.run_id, Some(&vm_task.id), TaskKind::Disk, &name);
        task.started_at = vm_task.started_at;
        task.finished_at = Some(now);
        task.status = TaskStatus::Success;
        task.subject = Some(disk.vdi_uuid.clone());
        task.bytes_total = Some(disk.size);
        task.bytes_read = disk.bytes_read;
        task.bytes_stored = disk.bytes_stored;
        task.strategy = Some(disk.strategy.to_string());
        task.reason = Some(disk.reason.clone());
        tasks.push(task);
    }
    tasks
}

/// The steps of a VM, finished, under its task.
pub(crate) fn step_tasks(vm_task: &Task, steps: Vec<Step>) -> Vec<Task> {
    steps
        .into_iter()
        .map(|step| {
            let mut task = Task::started(new_id(), &vm_task.run_id, Some(&vm_task.id), TaskKind::Step, &step.name);
            task.finished_at = vm_task.finished_at;
            task.status = if step.error.is_some() { TaskStatus::Failed } else { TaskStatus::Success };
            task.errors.extend(step.error);
            task
        })
        .collect()
}

/// A snapshot-only run: each VM snapshotted and its older rolling snapshots of this job
/// and schedule destroyed (one VM task each, the snapshot and removals as its steps).
async fn roll_snapshots<S: RunSink>(
    job: &Job,
    schedule_id: &str,
    rolling: SnapshotOnly,
    run: &Run,
    target: &Target<'_>,
    cancel: &CancellationToken,
    recorder: &mut Recorder<S>,
) -> Result<RunTotals, String> {
    if job.kind == JobKind::Sequence {
        return Err("a sequence runs other jobs; run it with run_sequence".into());
    }
    let vms = crate::selection::resolve(target.host, &job.selection).await.map_err(|e| e.to_string())?;
    let root_id = recorder.root_id();
    let sink = recorder.sink.clone();
    let outcomes: Vec<Vec<Task>> = futures::stream::iter(vms.iter())
        .map(|vm| {
            let (root_id, sink) = (root_id.clone(), sink.clone());
            async move {
                let mut task = Task::started(new_id(), &run.id, Some(&root_id), TaskKind::Vm, &vm.name_label);
                task.subject = Some(vm.uuid.clone());
                sink.save_task(&task).await;
                let rolled = match cancel.is_cancelled() {
                    true => Err("cancelled before its snapshot".to_owned()),
                    false => snapshot_only::roll(target.host, vm, &job.id, schedule_id, rolling.keep).await,
                };
                task.finished_at = Some(Utc::now());
                let mut steps = Vec::new();
                match rolled {
                    Ok(rolled) => {
                        task.status = TaskStatus::Success;
                        task.reason = Some(format!(
                            "rolling snapshot {} taken; {} of this job and schedule kept (keep {})",
                            rolled.uuid, rolled.kept, rolling.keep
                        ));
                        if rolled.kept > rolling.keep as usize {
                            task.warnings.push(format!(
                                "{} snapshots of this job and schedule remain, more than {}: some could not be destroyed",
                                rolled.kept, rolling.keep
                            ));
                        }
                        steps.push(Step::done(format!("snapshot {} ({}) taken", rolled.name, rolled.uuid)));
                        if !rolled.removed.is_empty() {
                            steps.push(Step::done(format!(
                                "older snapshots destroyed with their disks: {}",
                                rolled.removed.join(", ")
                            )));
                        }
                    }
                    Err(e) => {
                        task.status = TaskStatus::Failed;
                        task.errors.push(e);
                    }
                }
                let mut tasks = vec![task];
                tasks.extend(step_tasks(&tasks[0], steps));
                for t in &tasks {
                    sink.save_task(t).await;
                }
                tasks
            }
        })
        .buffer_unordered(job.settings.vm_concurrency.max(1) as usize)
        .collect()
        .await;
    let mut totals = RunTotals { vms: outcomes.len() as u32, ..Default::default() };
    for tasks in outcomes {
        match tasks[0].status {
            TaskStatus::Success => totals.vms_ok += 1,
            _ => totals.vms_failed += 1,
        }
        recorder.tasks.extend(tasks);
    }
    Ok(totals)
}

fn totals(reports: &[VmReport]) -> RunTotals {
    let mut totals = RunTotals { vms: reports.len() as u32, ..Default::default() };
    for report in reports {
        match report.status {
            Status::Ok => totals.vms_ok += 1,
            Status::Failed => totals.vms_failed += 1,
        }
        totals.bytes_read += report.disks.iter().map(|d| d.bytes_read).sum::<u64>();
        totals.bytes_stored += report.disks.iter().map(|d| d.bytes_stored).sum::<u64>();
    }
    totals
}

/// Engine progress of `run`, forwarded to the sink.
pub(crate) fn forward_progress<S: RunSink>(sink: &Arc<S>, run: &Run) -> Arc<dyn Progress> {
    Arc::new(Forward { sink: sink.clone(), run_id: run.id.clone() })
}

/// Engine progress, forwarded to the sink under the run's id.
struct Forward<S: RunSink> {
    sink: Arc<S>,
    run_id: String,
}

impl<S: RunSink> Progress for Forward<S> {
    fn event(&self, event: &Event) {
        self.sink.progress(&self.run_id, event);
    }
}

/// Removes the restore points `points` (those a schedule made) that the schedule's
/// retention no longer keeps, then collects the garbage; recorded as a step of the run.
pub(crate) async fn retention_step<S: RunSink>(
    schedule: &Schedule,
    run: &Run,
    repo: &xenvault_repo::Repository,
    points: Result<Vec<xenvault_repo::Manifest>, SelectError>,
    recorder: &mut Recorder<S>,
) {
    let name = format!("retention of schedule {}", schedule_label(schedule));
    let mut task = Task::started(new_id(), &run.id, Some(&recorder.root_id()), TaskKind::Step, &name);
    recorder.save(task.clone()).await;
    let forgotten = match points {
        Ok(points) => forget_and_prune(repo, &points, &schedule.retention).await,
        Err(e) => Err(e),
    };
    match forgotten {
        Ok((removed, freed)) => {
            task.status = TaskStatus::Success;
            task.reason = Some(format!("{removed} restore points removed, {freed} bytes freed"));
        }
        Err(e) => {
            task.status = TaskStatus::Failed;
            task.errors.push(e.to_string());
        }
    }
    task.finished_at = Some(Utc::now());
    recorder.save(task).await;
}

fn schedule_label(schedule: &Schedule) -> &str {
    if schedule.name.is_empty() { &schedule.id } else { &schedule.name }
}

/// The restore points of the backed-up VMs that this schedule's runs of the job made.
/// Counted per VM and per schedule, so a weekly full's retention never removes the
/// five-minute incrementals' points.
async fn points_of_schedule<S: RunSink>(
    job: &Job,
    schedule: &Schedule,
    backed_up: &[String],
    store: &Store,
    sink: &S,
) -> Result<Vec<xenvault_repo::Manifest>, SelectError> {
    let runs = sink.runs_of_schedule(&job.id, &schedule.id).await;
    Ok(store
        .repository()
        .restore_points()
        .await?
        .into_iter()
        .filter(|m| backed_up.contains(&m.source.id))
        .filter(|m| {
            BackupRun::of(&m.metadata).is_some_and(|b| {
                b.job_id.as_deref() == Some(&job.id) && b.run_id.as_ref().is_some_and(|id| runs.contains(id))
            })
        })
        .collect())
}

/// The points of `points` that `retention` no longer keeps go through the repository's
/// `forget` (removal, then garbage collection): how many, and the bytes freed.
async fn forget_and_prune(
    repo: &xenvault_repo::Repository,
    points: &[xenvault_repo::Manifest],
    retention: &Retention,
) -> Result<(usize, u64), SelectError> {
    let plan = xenvault_repo::prune::plan(points, &keep_policy(retention))?;
    if plan.remove.is_empty() {
        return Ok((0, 0));
    }
    let options = ForgetOptions { forget: Forget::Named(plan.remove), dry_run: false, prune: true };
    let report = xenvault_repo::forget::forget(repo, &options).await?;
    Ok((report.remove.len(), report.prune.map_or(0, |gc| gc.bytes_deleted)))
}

pub(crate) fn keep_policy(r: &Retention) -> xenvault_repo::prune::KeepPolicy {
    xenvault_repo::prune::KeepPolicy {
        last: r.last,
        hourly: r.hourly,
        daily: r.daily,
        weekly: r.weekly,
        monthly: r.monthly,
        yearly: r.yearly,
    }
}
