//! Runs jobs. At start the enabled jobs go into the scheduler, runs a crash left behind
//! get their snapshots removed, missed runs are caught up once, and the scheduler is driven
//! on the system clock. Each run is recorded in the catalog (task tree, log, live progress
//! for the runs feed); the API's "run now" and "cancel" go through here too. A job never
//! runs twice at once (the scheduler's claim, and the catalog refuses a second unfinished
//! run). On stop, running runs get the configured time to finish, then are cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xenvault_catalog::{Catalog, LogLevel, RunQuery};
use xenvault_engine::store::Store;
use xenvault_jobs::config_backup;
use xenvault_jobs::mirror::{self, Repositories};
use xenvault_jobs::model::{Job, JobKind, Level, OnFailure, Run, RunStatus, RunTotals, Schedule, Task, Trigger};
use xenvault_jobs::runner::{self, BackupTarget, Outcome, RunSink, Target};
use xenvault_jobs::scheduler::{Claim, Decision, RunningJobs, Scheduler, SharedScheduler, SystemClock};
use xenvault_node::{cleanup, planner, record};
use xenvault_notify::{Delivery, Notifier};
use xenvault_pool::Host;
use xenvault_repo::Repository;
use xenvault_types::progress::{Event, Progress, Tally};

use crate::AppState;
use crate::api::connections::pool_login;
use crate::api::restore_points::repository;
use crate::error::{ApiError, ApiResult};

/// A run going now: how to cancel it and how far it is.
#[derive(Clone)]
struct LiveRun {
    cancel: CancellationToken,
    progress: Arc<Tally>,
}

pub struct Executor {
    catalog: Arc<Catalog>,
    scheduler: SharedScheduler,
    running: RunningJobs,
    live: Mutex<HashMap<String, LiveRun>>,
    /// How many runs are going, for the stop to wait on.
    live_count: watch::Sender<usize>,
    notifier: Notifier,
    /// Stops the scheduler: nothing new starts once the server is stopping.
    stopping: CancellationToken,
    /// Catch-up fires found at load, started once the executor runs.
    catch_up: Mutex<Vec<Decision>>,
}

impl Executor {
    /// Loads the enabled jobs into a scheduler and finds the runs missed while the server
    /// was down (started by [`Executor::run`]).
    pub async fn load(catalog: Arc<Catalog>, notifier: Notifier) -> Result<Arc<Executor>, xenvault_catalog::Error> {
        let running = RunningJobs::default();
        let mut scheduler = Scheduler::new(running.clone());
        let now = Utc::now();
        for job in catalog.jobs().await? {
            if let Err(e) = scheduler.set_job(&job, now) {
                tracing::error!(job = %job.name, "job left out of the schedule: {e}");
            }
        }
        let catch_up = scheduler.catch_up(&catalog.last_fired().await?, now);
        Ok(Arc::new(Executor {
            catalog,
            scheduler: SharedScheduler::new(scheduler),
            running,
            live: Mutex::new(HashMap::new()),
            live_count: watch::Sender::new(0),
            notifier,
            stopping: CancellationToken::new(),
            catch_up: Mutex::new(catch_up),
        }))
    }

    /// In the background: cleans what `interrupted` runs left on their pools, starts the
    /// missed runs, then drives the scheduler until the server stops.
    pub fn run(self: &Arc<Self>, state: AppState, interrupted: Vec<Run>) {
        let this = self.clone();
        tokio::spawn(async move {
            for run in &interrupted {
                this.clean_after_crash(&state, run).await;
            }
            let catch_up = std::mem::take(&mut *lock(&this.catch_up));
            for decision in catch_up {
                this.decided(&state, decision);
            }
            let on_decision = {
                let this = this.clone();
                move |decision| this.decided(&state, decision)
            };
            xenvault_jobs::scheduler::drive(
                this.scheduler.clone(),
                Arc::new(SystemClock),
                on_decision,
                this.stopping.clone(),
            )
            .await;
        });
    }

    /// A job was created or changed: its schedules fire from now on (none when disabled).
    pub fn job_changed(&self, job: &Job) -> ApiResult<()> {
        self.scheduler.set_job(job, Utc::now()).map_err(|e| ApiError::invalid(e.to_string()))
    }

    pub fn job_removed(&self, job_id: &str) {
        self.scheduler.remove_job(job_id);
    }

    /// Starts a run of `job` now (at `level`, else the default); a conflict when it runs.
    pub async fn run_now(self: &Arc<Self>, state: &AppState, job: Job, level: Option<Level>) -> ApiResult<Run> {
        let claim = self
            .running
            .claim(&job.id)
            .ok_or_else(|| ApiError::conflict(format!("job {} is already running", job.name)))?;
        let run = self.catalog.create_run(queued_run(&job, None, Trigger::Manual, level, None, None)).await?;
        self.spawn(state, job, None, run.clone(), claim);
        Ok(run)
    }

    /// Cancels a run going on this server; false when it is not going here.
    pub fn cancel(&self, run_id: &str) -> bool {
        match lock(&self.live).get(run_id) {
            Some(live) => {
                live.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The latest progress of a running run's disks (none when it is not running here).
    pub fn progress(&self, run_id: &str) -> Option<Vec<xenvault_catalog::WorkProgress>> {
        lock(&self.live).get(run_id).map(|live| crate::api::work_progress(&live.progress))
    }

    /// No new runs; running ones get `grace` to finish, then are cancelled (the engine
    /// removes their snapshots and commits nothing). Returns once all have ended.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.cancel();
        let mut count = self.live_count.subscribe();
        if tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await.is_ok() {
            return;
        }
        let going: Vec<(String, LiveRun)> = lock(&self.live).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (run_id, live) in going {
            let message = format!("the server is stopping: cancelled after {} s of grace", grace.as_secs());
            self.log(&run_id, LogLevel::Warning, &message).await;
            live.cancel.cancel();
        }
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Starts a scheduled or caught-up run; a skipped fire is only logged.
    fn decided(self: &Arc<Self>, state: &AppState, decision: Decision) {
        let (fire, claim) = match decision {
            Decision::Start(fire, claim) => (fire, claim),
            Decision::Skipped(fire, why) => {
                tracing::info!(job = %fire.job_id, schedule = %fire.schedule_id, "fire skipped: {why:?}");
                return;
            }
        };
        let this = self.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let job = match this.catalog.job(&fire.job_id).await {
                Ok(job) => job,
                Err(e) => return tracing::error!(job = %fire.job_id, "scheduled run not started: {e}"),
            };
            let schedule = job.schedules.iter().find(|s| s.id == fire.schedule_id).cloned();
            let run = queued_run(
                &job,
                Some(fire.schedule_id.clone()),
                fire.trigger,
                Some(fire.level),
                Some(fire.scheduled_for),
                None,
            );
            match this.catalog.create_run(run).await {
                Ok(run) => this.spawn(&state, job, schedule, run, claim),
                Err(e) => tracing::error!(job = %job.name, "scheduled run not started: {e}"),
            }
        });
    }

    /// Registers the run (so it can be cancelled at once) and executes it in the background.
    fn spawn(self: &Arc<Self>, state: &AppState, job: Job, schedule: Option<Schedule>, run: Run, claim: Claim) {
        let live = self.register(&run.id, None);
        let this = self.clone();
        let state = state.clone();
        // The engine's backup future is not `Send` for every lifetime it borrows (its VMs
        // are a stream over borrowed records), so `tokio::spawn` refuses it: the run is
        // driven by a blocking-pool thread of the same runtime instead.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                match job.kind {
                    JobKind::Sequence => this.run_sequence(&state, &job, run, &live).await,
                    _ => {
                        this.run_job(&state, &job, schedule.as_ref(), run, &live).await;
                    }
                }
                drop(claim);
            })
        });
    }

    fn register(&self, run_id: &str, parent: Option<&CancellationToken>) -> LiveRun {
        let cancel = parent.map_or_else(CancellationToken::new, CancellationToken::child_token);
        let live = LiveRun { cancel, progress: Tally::new() };
        let mut runs = lock(&self.live);
        runs.insert(run_id.to_owned(), live.clone());
        self.live_count.send_replace(runs.len());
        live
    }

    fn unregister(&self, run_id: &str) {
        let mut runs = lock(&self.live);
        runs.remove(run_id);
        self.live_count.send_replace(runs.len());
    }

    /// One run: connects to what the job works on (pool and repository, the mirror's two
    /// repositories, or a config backup's repository), runs it, notifies.
    async fn run_job(&self, state: &AppState, job: &Job, schedule: Option<&Schedule>, run: Run, live: &LiveRun) -> Run {
        let run_id = run.id.clone();
        let sink = Arc::new(CatalogSink { catalog: self.catalog.clone(), progress: live.progress.clone() });
        let outcome = if job.kind == JobKind::Mirror {
            match mirror_repositories(state, job).await {
                Ok((source, target)) => {
                    let repos = Repositories { source: &source, target: &target };
                    mirror::run(job, schedule, run, repos, sink, live.cancel.clone()).await
                }
                Err(message) => self.failed_before_start(run, message).await,
            }
        } else if job.kind == JobKind::ConfigBackup {
            match repository(state, &job.repository).await {
                Ok(repo) => {
                    let sealed = crate::config_backup::sealed_for_run(&state.config, &state.catalog);
                    config_backup::run(job, schedule, run, &repo, sealed, sink, live.cancel.clone()).await
                }
                Err(e) => self.failed_before_start(run, format!("repository {}: {}", job.repository, e.message)).await,
            }
        } else {
            match connect(state, job).await {
                Ok((host, store)) => {
                    let cancel = live.cancel.clone();
                    let outcome = match store.as_ref().filter(|_| self.hands_out(job)) {
                        Some(store) => {
                            let target = BackupTarget { host: &host, store };
                            planner::run_queued(&self.catalog, job, schedule, run, target, sink, cancel).await
                        }
                        None => {
                            let target = Target { host: &host, store: store.as_ref() };
                            runner::run_backup(job, schedule, run, target, sink, cancel).await
                        }
                    };
                    host.logout().await;
                    outcome
                }
                Err(message) => self.failed_before_start(run, message).await,
            }
        };
        self.notify(job, &outcome).await;
        self.unregister(&run_id);
        outcome.run
    }

    /// Whether the job's VMs are handed out to scale-out nodes (the server plans its runs
    /// for them): image and XVA backups on a server in scale-out mode.
    fn hands_out(&self, job: &Job) -> bool {
        self.catalog.owner().is_some()
            && matches!(job.kind, JobKind::Backup | JobKind::BackupXva)
            && job.settings.snapshot_only.is_none()
    }

    /// A run that could not start (pool or repository unusable): failed, saying why.
    async fn failed_before_start(&self, mut run: Run, message: String) -> Outcome {
        let now = Utc::now();
        run.status = RunStatus::Failed;
        run.started_at = Some(now);
        run.finished_at = Some(now);
        run.error = Some(message.clone());
        self.save_run(&run).await;
        self.log(&run.id, LogLevel::Error, &message).await;
        Outcome { run, tasks: Vec::new() }
    }

    /// Runs the member jobs in order, each as a run of its own under this one; a member
    /// that does not succeed stops the rest unless the sequence says continue.
    async fn run_sequence(&self, state: &AppState, job: &Job, mut run: Run, live: &LiveRun) {
        run.status = RunStatus::Running;
        run.started_at = Some(Utc::now());
        self.save_run(&run).await;
        let (members, on_failure) = match &job.sequence {
            Some(sequence) => (sequence.jobs.clone(), sequence.on_failure),
            None => (Vec::new(), OnFailure::Stop),
        };
        let (mut succeeded, mut failed) = (0, 0);
        for member in &members {
            if live.cancel.is_cancelled() {
                break;
            }
            match self.run_member(state, &run, member, live).await {
                Ok(child) => {
                    add_totals(&mut run.totals, &child.totals);
                    let level = if child.status == RunStatus::Success { LogLevel::Info } else { LogLevel::Warning };
                    let message = format!("member job {member}: run {} {:?}", child.id, child.status);
                    self.log(&run.id, level, &message).await;
                    if child.status == RunStatus::Success {
                        succeeded += 1;
                        continue;
                    }
                }
                Err(message) => self.log(&run.id, LogLevel::Error, &format!("member job {member}: {message}")).await,
            }
            failed += 1;
            if on_failure == OnFailure::Stop {
                self.log(&run.id, LogLevel::Warning, "the sequence stops at the first failure").await;
                break;
            }
        }
        run.status = match (succeeded, failed) {
            _ if live.cancel.is_cancelled() => RunStatus::Cancelled,
            (_, 0) => RunStatus::Success,
            (0, _) => RunStatus::Failed,
            _ => RunStatus::Partial,
        };
        run.finished_at = Some(Utc::now());
        self.save_run(&run).await;
        self.notify(job, &Outcome { run: run.clone(), tasks: Vec::new() }).await;
        self.unregister(&run.id);
    }

    /// One member of a sequence, as a run whose parent is the sequence's run.
    async fn run_member(&self, state: &AppState, parent: &Run, member_id: &str, live: &LiveRun) -> Result<Run, String> {
        let member = self.catalog.job(member_id).await.map_err(|e| e.to_string())?;
        if member.kind == JobKind::Sequence {
            return Err("is a sequence itself: sequences run backup jobs only".into());
        }
        let claim = self.running.claim(&member.id).ok_or("is already running")?;
        let run = queued_run(&member, None, Trigger::Sequence, None, None, Some(parent.id.clone()));
        let run = self.catalog.create_run(run).await.map_err(|e| e.to_string())?;
        let child_live = self.register(&run.id, Some(&live.cancel));
        let run = self.run_job(state, &member, None, run, &child_live).await;
        drop(claim);
        Ok(run)
    }

    /// Sends the job's notifications about a finished run and logs each delivery.
    async fn notify(&self, job: &Job, outcome: &Outcome) {
        for delivery in self.notifier.run_finished(job, &outcome.run, &outcome.tasks).await {
            let (level, message) = delivery_line(&delivery);
            self.log(&outcome.run.id, level, &message).await;
        }
    }

    /// After a crash: removes the snapshots `run` left on its pool (those it tagged and
    /// had not made a base, and those it was taking, found by their intent on VMs it held
    /// the backup lock of), and says so in its log.
    async fn clean_after_crash(&self, state: &AppState, run: &Run) {
        let job = match self.catalog.job(&run.job_id).await {
            // Only backups take snapshots.
            Ok(job) if matches!(job.kind, JobKind::Backup | JobKind::BackupXva) => job,
            Ok(_) => return,
            Err(e) => {
                let message = format!("the pool was not cleaned after the interruption: job {}: {e}", run.job_id);
                return self.log(&run.id, LogLevel::Warning, &message).await;
            }
        };
        let message = match remove_left_snapshots(state, &job, &run.id).await {
            Ok(removed) if removed.is_empty() => {
                (LogLevel::Info, "interrupted: no snapshot of this run was left".into())
            }
            Ok(removed) => (
                LogLevel::Info,
                format!(
                    "interrupted: removed the snapshots this run left on pool {}: {}",
                    job.pool,
                    removed.join(", ")
                ),
            ),
            Err(e) => (LogLevel::Warning, format!("interrupted: the pool {} was not cleaned: {e}", job.pool)),
        };
        self.log(&run.id, message.0, &message.1).await;
    }

    async fn save_run(&self, run: &Run) {
        if let Err(e) = self.catalog.update_run(run).await {
            tracing::error!(run = %run.id, "recording the run: {e}");
        }
    }

    async fn log(&self, run_id: &str, level: LogLevel, message: &str) {
        if let Err(e) = self.catalog.append_log(run_id, None, level, message).await {
            tracing::error!(run = %run_id, "writing the run's log ({message}): {e}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn queued_run(
    job: &Job,
    schedule_id: Option<String>,
    trigger: Trigger,
    level: Option<Level>,
    scheduled_for: Option<DateTime<Utc>>,
    parent_run_id: Option<String>,
) -> Run {
    Run {
        id: String::new(),
        job_id: job.id.clone(),
        schedule_id,
        parent_run_id,
        trigger,
        status: RunStatus::Queued,
        level,
        scheduled_for,
        queued_at: Utc::now(),
        started_at: None,
        finished_at: None,
        totals: RunTotals::default(),
        error: None,
    }
}

fn add_totals(sum: &mut RunTotals, more: &RunTotals) {
    sum.vms += more.vms;
    sum.vms_ok += more.vms_ok;
    sum.vms_failed += more.vms_failed;
    sum.bytes_read += more.bytes_read;
    sum.bytes_stored += more.bytes_stored;
}

fn delivery_line(delivery: &Delivery) -> (LogLevel, String) {
    let what = format!("notification by {:?} to {}", delivery.channel, delivery.target).to_lowercase();
    match &delivery.error {
        None => (LogLevel::Info, format!("{what}: delivered ({} tries)", delivery.attempts)),
        Some(e) => (LogLevel::Warning, format!("{what}: not delivered after {} tries: {e}", delivery.attempts)),
    }
}

/// The job's pool, logged in, and its repository (none for snapshot-only jobs), opened
/// with its passphrase.
async fn connect(state: &AppState, job: &Job) -> Result<(Host, Option<Store>), String> {
    let login = pool_login(state, &job.pool).await.map_err(|e| format!("pool {}: {}", job.pool, e.message))?;
    let store = match job.settings.snapshot_only {
        Some(_) => None,
        None => {
            let repo = repository(state, &job.repository)
                .await
                .map_err(|e| format!("repository {}: {}", job.repository, e.message))?;
            Some(Store::from_repository(repo))
        }
    };
    let host = Host::connect(&login).await.map_err(|e| format!("logging in to pool {}: {e}", job.pool))?;
    Ok((host, store))
}

/// A mirror job's source (`repository`) and target repositories, opened.
async fn mirror_repositories(state: &AppState, job: &Job) -> Result<(Repository, Repository), String> {
    let target_name = job.mirror.as_ref().map(|m| m.target.as_str()).ok_or("the job has no mirror target")?;
    let open = |name: &str| {
        let name = name.to_owned();
        async move { repository(state, &name).await.map_err(|e| format!("repository {name}: {}", e.message)) }
    };
    Ok((open(&job.repository).await?, open(target_name).await?))
}

/// Removes the snapshots run `run_id` of `job` left; returns their uuids.
async fn remove_left_snapshots(state: &AppState, job: &Job, run_id: &str) -> Result<Vec<String>, String> {
    let login = pool_login(state, &job.pool).await.map_err(|e| e.message)?;
    let host = Host::connect(&login).await.map_err(|e| e.to_string())?;
    let result = cleanup::remove_snapshots_of_run(&host, run_id, None).await.map_err(|e| e.to_string());
    host.logout().await;
    result
}

/// Records a run in the catalog; live progress stays in memory for the runs feed.
struct CatalogSink {
    catalog: Arc<Catalog>,
    progress: Arc<Tally>,
}

impl RunSink for CatalogSink {
    async fn save_run(&self, run: &Run) {
        if let Err(e) = self.catalog.update_run(run).await {
            tracing::error!(run = %run.id, "recording the run: {e}");
        }
    }

    async fn save_task(&self, task: &Task) {
        record::save_task(&self.catalog, task).await;
    }

    fn progress(&self, _run_id: &str, event: &Event) {
        self.progress.event(event);
    }

    async fn runs_of_schedule(&self, job_id: &str, schedule_id: &str) -> Vec<String> {
        const PAGE: u32 = 1000;
        let mut ids = Vec::new();
        let mut query = RunQuery { job_id: Some(job_id.to_owned()), limit: Some(PAGE), ..Default::default() };
        loop {
            let page = match self.catalog.runs(&query).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(job = %job_id, "listing the runs of schedule {schedule_id}: {e}");
                    return ids;
                }
            };
            let count = page.runs.len() as u64;
            ids.extend(page.runs.into_iter().filter(|r| r.schedule_id.as_deref() == Some(schedule_id)).map(|r| r.id));
            if count < u64::from(PAGE) {
                return ids;
            }
            query.offset = Some(query.offset.unwrap_or(0) + count);
        }
    }
}
