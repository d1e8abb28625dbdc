//! Executes one run of a job: resolves its selection now, backs each VM up through the
//! engine (with the job's settings, a timeout and retries per VM), records the task tree
//! (run → VM → disk, and steps) through a [`RunSink`], applies the schedule's retention
//! after a successful run only, and stops cleanly when cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::{Status, VmReport};
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_pool::host::Host;
use xenvault_pool::records::Vm;
use xenvault_types::metadata::BackupRun;
use xenvault_types::progress::{Event, Progress};

use crate::model::{Job, JobKind, Level, Retention, Run, RunStatus, RunTotals, Schedule, Task, TaskKind, TaskStatus};

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

/// The pool and repository a backup job runs against.
pub struct Target<'a> {
    pub host: &'a Host,
    pub store: &'a Store,
}

/// What a run did: its final record and its task tree.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run: Run,
    pub tasks: Vec<Task>,
}

/// Runs `run` (created by the caller, e.g. queued in the catalog) of a backup job. The
/// schedule gives the level and the retention (none for a manual run: no retention).
pub async fn run_backup<S: RunSink>(
    job: &Job,
    schedule: Option<&Schedule>,
    mut run: Run,
    target: Target<'_>,
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Outcome {
    let level = run.level.or(schedule.map(|s| s.level)).unwrap_or_default();
    run.level = Some(level);
    run.status = RunStatus::Running;
    run.started_at = Some(Utc::now());
    sink.save_run(&run).await;
    let root = Task::started(new_id(), &run.id, None, TaskKind::Run, &job.name);
    sink.save_task(&root).await;
    let mut recorder = Recorder { sink: sink.clone(), tasks: vec![root] };

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

    let result = back_up_vms(job, level, &run, &target, &sink, &run_cancel, &mut recorder).await;
    if let Some(timer) = timer {
        timer.abort();
    }
    let timed_out = run_cancel.is_cancelled() && !cancel.is_cancelled();
    match result {
        Err(e) => {
            run.status = RunStatus::Failed;
            run.error = Some(e);
        }
        Ok(reports) => {
            run.totals = totals(&reports);
            run.status = match (run.totals.vms_ok, run.totals.vms_failed) {
                _ if cancel.is_cancelled() => RunStatus::Cancelled,
                (_, 0) if !timed_out => RunStatus::Success,
                (0, _) => RunStatus::Failed,
                _ => RunStatus::Partial,
            };
            if timed_out {
                run.error =
                    Some(format!("the job took longer than its timeout ({} s)", timeout.unwrap_or_default().as_secs()));
            }
            if run.status == RunStatus::Success
                && let Some(schedule) = schedule.filter(|s| !s.retention.keeps_everything())
            {
                apply_retention(job, schedule, &reports, &run, target.store, &sink, &mut recorder).await;
            }
        }
    }
    run.finished_at = Some(Utc::now());
    recorder.finish_root(&run).await;
    sink.save_run(&run).await;
    Outcome { run, tasks: recorder.tasks }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Keeps the task tree in memory (for the outcome and notifications) and in the sink.
struct Recorder<S: RunSink> {
    sink: Arc<S>,
    tasks: Vec<Task>,
}

impl<S: RunSink> Recorder<S> {
    fn root_id(&self) -> String {
        self.tasks[0].id.clone()
    }

    async fn save(&mut self, task: Task) {
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

async fn back_up_vms<S: RunSink>(
    job: &Job,
    level: Level,
    run: &Run,
    target: &Target<'_>,
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
    let progress: Arc<dyn Progress> = Arc::new(Forward { sink: sink.clone(), run_id: run.id.clone() });
    let concurrency = job.settings.vm_concurrency.max(1) as usize;
    let outcomes: Vec<(VmReport, Vec<Task>)> = futures::stream::iter(vms.iter())
        .map(|vm| {
            let progress = progress.clone();
            let root_id = root_id.clone();
            async move {
                let mut task = Task::started(new_id(), &run.id, Some(&root_id), TaskKind::Vm, &vm.name_label);
                task.subject = Some(vm.uuid.clone());
                sink.save_task(&task).await;
                let report = back_up_vm(job, level, run, vm, target, progress, cancel).await;
                let tasks = vm_tasks(task, &report);
                for t in &tasks {
                    sink.save_task(t).await;
                }
                (report, tasks)
            }
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

/// One VM: tries until it succeeds, the tries run out, or the run is cancelled; each try
/// is cancelled after the job's per-VM timeout.
async fn back_up_vm(
    job: &Job,
    level: Level,
    run: &Run,
    vm: &Vm,
    target: &Target<'_>,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> VmReport {
    let settings = &job.settings;
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
        let mut report = match result {
            Ok(mut job_report) if !job_report.vms.is_empty() => job_report.vms.remove(0),
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
            return report;
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

/// Forgets the restore points of the backed-up VMs that this schedule made and its
/// retention no longer keeps, then collects the garbage. Counted per VM and per schedule,
/// so a weekly full's retention never removes the five-minute incrementals' points.
async fn apply_retention<S: RunSink>(
    job: &Job,
    schedule: &Schedule,
    reports: &[VmReport],
    run: &Run,
    store: &Store,
    sink: &Arc<S>,
    recorder: &mut Recorder<S>,
) {
    let name = format!("retention of schedule {}", schedule_label(schedule));
    let mut task = Task::started(new_id(), &run.id, Some(&recorder.root_id()), TaskKind::Step, &name);
    recorder.save(task.clone()).await;
    match forget_and_prune(job, schedule, reports, store, sink.as_ref()).await {
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

async fn forget_and_prune<S: RunSink>(
    job: &Job,
    schedule: &Schedule,
    reports: &[VmReport],
    store: &Store,
    sink: &S,
) -> Result<(usize, u64), xenvault_repo::Error> {
    let runs = sink.runs_of_schedule(&job.id, &schedule.id).await;
    let repo = store.repository();
    let points: Vec<xenvault_repo::Manifest> = repo
        .restore_points()
        .await?
        .into_iter()
        .filter(|m| reports.iter().any(|r| m.source.id == r.vm_uuid))
        .filter(|m| {
            BackupRun::of(&m.metadata).is_some_and(|b| {
                b.job_id.as_deref() == Some(&job.id) && b.run_id.as_ref().is_some_and(|id| runs.contains(id))
            })
        })
        .collect();
    let plan = xenvault_repo::prune::plan(&points, &keep_policy(&schedule.retention))?;
    for id in &plan.remove {
        repo.delete_restore_point(id).await?;
    }
    if plan.remove.is_empty() {
        return Ok((0, 0));
    }
    let gc = xenvault_repo::gc::gc(repo).await?;
    Ok((plan.remove.len(), gc.bytes_deleted))
}

fn keep_policy(r: &Retention) -> xenvault_repo::prune::KeepPolicy {
    xenvault_repo::prune::KeepPolicy {
        last: r.last,
        hourly: r.hourly,
        daily: r.daily,
        weekly: r.weekly,
        monthly: r.monthly,
        yearly: r.yearly,
    }
}
