//! When jobs run. [`Scheduler`] is the decision logic over explicit instants (so tests
//! step through days without waiting); [`drive`] runs it against a [`Clock`].
//!
//! Rules: a schedule fires at each instant its cron line names in its time zone; a job
//! never runs twice at once (a fire while it runs is skipped); schedules of one job firing
//! at the same instant make one run, at the deepest level among them (a weekly full wins
//! over the five-minute incremental); after a restart, a schedule whose latest instant
//! passed while the server was down fires once (`catch_up_missed`), however many it missed.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cron::CronSchedule;
use crate::error::Error;
use crate::model::{Job, JobKind, Level, Trigger};

/// The time source of the scheduler: the system clock in service, a [`ManualClock`] in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= when`.
    fn sleep_until(&self, when: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, when: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Short naps: the wall clock may be set or the machine suspended meanwhile.
            const NAP: std::time::Duration = std::time::Duration::from_secs(30);
            while let Ok(left) = (when - Utc::now()).to_std() {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(NAP)).await;
            }
        })
    }
}

/// A clock that moves only when told to.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock { now: watch::Sender::new(start) }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, when: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, which outlives this future.
            let _ = changes.wait_for(|now| *now >= when).await;
        })
    }
}

/// A schedule firing: one run to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub job_id: String,
    pub schedule_id: String,
    pub level: Level,
    /// The instant the schedule named (a catch-up fire names the missed one).
    pub scheduled_for: DateTime<Utc>,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The job was still running.
    Running,
    /// Another schedule of the job fired at the same instant and ran instead.
    SameInstant { ran: String },
}

#[derive(Debug)]
pub enum Decision {
    /// Start this run; dropping the claim lets the job run again.
    Start(Fire, Claim),
    Skipped(Fire, Skip),
}

/// The jobs running now, shared by the scheduler and whatever else starts runs (the
/// API's "run now", sequences), so no job runs twice at once.
#[derive(Debug, Clone, Default)]
pub struct RunningJobs(Arc<Mutex<HashSet<String>>>);

impl RunningJobs {
    /// Marks the job running, or `None` when it already is.
    pub fn claim(&self, job_id: &str) -> Option<Claim> {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(job_id.to_owned()).then(|| Claim { running: self.clone(), job_id: job_id.to_owned() })
    }

    pub fn is_running(&self, job_id: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(job_id)
    }
}

/// A job marked running; released when dropped.
#[derive(Debug)]
pub struct Claim {
    running: RunningJobs,
    job_id: String,
}

impl Claim {
    pub fn job_id(&self) -> &str {
        &self.job_id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.running.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.job_id);
    }
}

struct Entry {
    schedule_id: String,
    level: Level,
    cron: CronSchedule,
    next: Option<DateTime<Utc>>,
}

struct JobEntry {
    catch_up: bool,
    schedules: Vec<Entry>,
}

pub struct Scheduler {
    jobs: BTreeMap<String, JobEntry>,
    running: RunningJobs,
}

impl Scheduler {
    pub fn new(running: RunningJobs) -> Self {
        Scheduler { jobs: BTreeMap::new(), running }
    }

    /// Adds or replaces a job; its schedules fire from after `now`. A disabled job (or
    /// schedule) is left out. Sequences fire like any job.
    pub fn set_job(&mut self, job: &Job, now: DateTime<Utc>) -> Result<(), Error> {
        self.jobs.remove(&job.id);
        if !job.enabled {
            return Ok(());
        }
        let mut schedules = Vec::new();
        for schedule in job.schedules.iter().filter(|s| s.enabled) {
            let cron = CronSchedule::parse(&schedule.cron, &schedule.timezone)?;
            let next = cron.next_after(now);
            let level = if job.kind == JobKind::BackupXva { Level::Full } else { schedule.level };
            schedules.push(Entry { schedule_id: schedule.id.clone(), level, cron, next });
        }
        self.jobs.insert(job.id.clone(), JobEntry { catch_up: job.settings.catch_up_missed, schedules });
        Ok(())
    }

    pub fn remove_job(&mut self, job_id: &str) {
        self.jobs.remove(job_id);
    }

    /// At start: the fires missed while the server was down, at most one per job (the
    /// deepest level among its schedules that missed an instant). `last_fired` gives, per
    /// (job, schedule), the latest instant a run was made for (the catalog's runs); a
    /// schedule that never fired has nothing to catch up.
    pub fn catch_up(
        &mut self,
        last_fired: &BTreeMap<(String, String), DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Vec<Decision> {
        let mut fires = Vec::new();
        for (job_id, job) in &self.jobs {
            if !job.catch_up {
                continue;
            }
            for entry in &job.schedules {
                let Some(last) = last_fired.get(&(job_id.clone(), entry.schedule_id.clone())) else { continue };
                if let Some(missed) = entry.cron.latest_at_or_before(now).filter(|missed| missed > last) {
                    fires.push(Fire {
                        job_id: job_id.clone(),
                        schedule_id: entry.schedule_id.clone(),
                        level: entry.level,
                        scheduled_for: missed,
                        trigger: Trigger::CatchUp,
                    });
                }
            }
        }
        self.decide(fires)
    }

    /// The next instant some schedule fires at.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.jobs.values().flat_map(|j| j.schedules.iter().filter_map(|e| e.next)).min()
    }

    /// The fires due at `now`, each schedule once even if the clock jumped over several
    /// of its instants; their schedules move on to the first instant after `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Decision> {
        let mut fires = Vec::new();
        for (job_id, job) in &mut self.jobs {
            for entry in &mut job.schedules {
                let Some(first) = entry.next.filter(|at| *at <= now) else { continue };
                // A clock that jumped over several instants fires once, for the latest.
                let at = entry.cron.latest_at_or_before(now).filter(|latest| *latest > first).unwrap_or(first);
                fires.push(Fire {
                    job_id: job_id.clone(),
                    schedule_id: entry.schedule_id.clone(),
                    level: entry.level,
                    scheduled_for: at,
                    trigger: Trigger::Schedule,
                });
                entry.next = entry.cron.next_after(now);
            }
        }
        self.decide(fires)
    }

    /// One run per job among `fires` (deepest level first), none for a running job.
    fn decide(&self, mut fires: Vec<Fire>) -> Vec<Decision> {
        fires.sort_by_key(|f| (f.job_id.clone(), depth(f.level), f.scheduled_for));
        let mut decisions: Vec<Decision> = Vec::new();
        let mut chosen: BTreeMap<String, String> = BTreeMap::new();
        for fire in fires {
            if let Some(ran) = chosen.get(&fire.job_id) {
                let ran = ran.clone();
                decisions.push(Decision::Skipped(fire, Skip::SameInstant { ran }));
                continue;
            }
            chosen.insert(fire.job_id.clone(), fire.schedule_id.clone());
            match self.running.claim(&fire.job_id) {
                Some(claim) => decisions.push(Decision::Start(fire, claim)),
                None => decisions.push(Decision::Skipped(fire, Skip::Running)),
            }
        }
        decisions
    }
}

/// Full before differential before incremental.
fn depth(level: Level) -> u8 {
    match level {
        Level::Full => 0,
        Level::Diff => 1,
        Level::Inc => 2,
    }
}

/// A scheduler shared with the API, which adds, changes and removes jobs while [`drive`]
/// runs it.
#[derive(Clone)]
pub struct SharedScheduler {
    inner: Arc<Mutex<Scheduler>>,
    changed: Arc<Notify>,
}

impl SharedScheduler {
    pub fn new(scheduler: Scheduler) -> Self {
        SharedScheduler { inner: Arc::new(Mutex::new(scheduler)), changed: Arc::new(Notify::new()) }
    }

    pub fn set_job(&self, job: &Job, now: DateTime<Utc>) -> Result<(), Error> {
        self.lock().set_job(job, now)?;
        self.changed.notify_one();
        Ok(())
    }

    pub fn remove_job(&self, job_id: &str) {
        self.lock().remove_job(job_id);
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wakes at each fire instant and hands the decisions to `on_decision` (which starts the
/// run, keeping the claim until it ends), until `stop` is cancelled.
pub async fn drive(
    scheduler: SharedScheduler,
    clock: Arc<dyn Clock>,
    on_decision: impl Fn(Decision) + Send,
    stop: CancellationToken,
) {
    loop {
        let decisions = scheduler.lock().due(clock.now());
        for decision in decisions {
            on_decision(decision);
        }
        let next = scheduler.lock().next_wake();
        let wake = async {
            match next {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = scheduler.changed.notified() => {}
            _ = wake => {}
        }
    }
}
