//! What a job is and what its runs record: the types the catalog stores, the API serves and
//! job files (TOML) are written in. Durations are whole seconds, sizes bytes, times UTC.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A backup job: what to back up (selection), where (pool, repository), when (schedules),
/// how (settings) and whom to tell (notifications).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Assigned by the catalog when the job is created; job files leave it out.
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub kind: JobKind,
    /// The pool's name as registered with the server (not used by sequences).
    #[serde(default)]
    pub pool: String,
    /// The repository's name as registered with the server (not used by sequences).
    #[serde(default)]
    pub repository: String,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub notifications: Notifications,
    /// The jobs a `sequence` runs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<Sequence>,
    /// Where a `mirror` job copies its repository's restore points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

impl Job {
    /// What the job's kind needs and what it cannot use, refused when the job is saved and
    /// again before a run (the registered pool and repositories are the caller's to check).
    pub fn check_kind(&self) -> Result<(), String> {
        let smart = self.selection.smart.is_some();
        match (self.kind, &self.mirror) {
            (JobKind::Mirror, None) => Err("a mirror job needs `mirror` (its target repository)".into()),
            (JobKind::Mirror, Some(mirror)) if mirror.target.is_empty() => {
                Err("a mirror job needs the name of its target repository (`mirror.target`)".into())
            }
            (JobKind::Mirror, Some(mirror)) if mirror.target == self.repository => {
                Err(format!("a mirror job's target must be another repository than its source {:?}", self.repository))
            }
            (JobKind::Mirror, _) if smart => {
                Err("a mirror job selects restore points by VM (`selection.vms`), not by smart selection".into())
            }
            (JobKind::Mirror | JobKind::PoolMetadata | JobKind::ConfigBackup, _)
                if self.settings.snapshot_only.is_some() =>
            {
                Err("snapshot-only is a setting of backup jobs".into())
            }
            (JobKind::PoolMetadata, _) if smart || !self.selection.vms.is_empty() => {
                Err("a pool-metadata job backs up the pool's database: it selects no VMs".into())
            }
            (JobKind::ConfigBackup, _) if smart || !self.selection.vms.is_empty() || !self.pool.is_empty() => {
                Err("a config-backup job backs up the server's own configuration: it has no pool and selects no VMs"
                    .into())
            }
            (JobKind::Mirror, _) => Ok(()),
            (_, Some(_)) => Err("`mirror` is for mirror jobs only".into()),
            _ => Ok(()),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Image backup of the VMs' disks (CBT + NBD when possible).
    #[default]
    Backup,
    /// Full backup from an XVA export, re-exportable as an XVA.
    BackupXva,
    /// Runs other jobs one after the other.
    Sequence,
    /// Copies restore points of its repository to another repository (`mirror`): only
    /// missing chunks move; the schedule's retention is the target's.
    Mirror,
    /// Backs up the pool's database (`/pool/xmldbdump`) into its repository.
    PoolMetadata,
    /// Backs up xenvault's own configuration (server config, catalog, keys), sealed with
    /// the server's configuration backup passphrase, into its repository.
    ConfigBackup,
}

/// Which VMs a job covers, resolved at every run so VMs created later are picked up.
/// `vms` names VMs one by one; `smart` matches by properties. Both may be given: the job
/// covers the union, minus the exclusions of `smart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// VM name labels or uuids; a name must match exactly one VM.
    #[serde(default)]
    pub vms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<SmartSelection>,
}

/// VMs of the job's pool matching every given criterion (an empty list matches all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmartSelection {
    /// Hosts (name or uuid) the VMs run on, or have affinity to when halted.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A VM matches when it has at least one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub power_states: Vec<PowerState>,
    /// VM name labels or uuids left out.
    #[serde(default)]
    pub exclude_vms: Vec<String>,
    /// VMs with any of these tags are left out.
    #[serde(default)]
    pub exclude_tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Halted,
    Paused,
    Suspended,
}

impl PowerState {
    /// Whether xapi's `power_state` value (e.g. "Running") is this state.
    pub fn matches(self, xapi_value: &str) -> bool {
        let name = match self {
            PowerState::Running => "running",
            PowerState::Halted => "halted",
            PowerState::Paused => "paused",
            PowerState::Suspended => "suspended",
        };
        xapi_value.eq_ignore_ascii_case(name)
    }
}

/// When a job runs, at which level, and how many of the restore points it made are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Stable within the job; restore points record it so retention counts per schedule.
    /// Job files may leave it out (the catalog assigns one).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six with seconds first.
    pub cron: String,
    /// IANA time zone the cron line is read in, e.g. "Europe/Berlin".
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub level: Level,
    #[serde(default)]
    pub retention: Retention,
}

fn utc() -> String {
    "UTC".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A full read that starts a new chain.
    Full,
    /// Changes since the last restore point (forever incremental).
    #[default]
    Inc,
    /// Changes since the last full.
    Diff,
}

/// How many restore points of one VM made by one schedule are kept: the newest `last`,
/// and the newest of each of the last N days, weeks, months and years (GFS). All zero
/// keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// VMs backed up at once.
    pub vm_concurrency: u32,
    /// Disks of one VM read at once.
    pub disk_concurrency: u32,
    /// NBD connections per disk.
    pub nbd_connections: u32,
    /// A VM's backup (one try) is cancelled after this long.
    pub vm_timeout_secs: Option<u64>,
    /// The whole run is cancelled after this long.
    pub job_timeout_secs: Option<u64>,
    /// Bytes per second read from the pool, across the job.
    pub speed_limit_bytes_per_sec: Option<u64>,
    /// Tries per VM beyond the first when its backup fails.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff_secs: u64,
    /// Shut the VM down cleanly, back it up, and start it again.
    pub offline: bool,
    pub quiesce: bool,
    /// Shell commands run before and after each VM's snapshot.
    pub pre_command: Option<String>,
    pub post_command: Option<String>,
    /// Keep rolling snapshots on the pool instead of writing to a repository.
    pub snapshot_only: Option<SnapshotOnly>,
    /// zstd level of the repository's chunks (the repository's own when unset).
    pub compression_level: Option<i32>,
    /// Days new restore points stay locked against deletion (S3 object lock).
    pub immutability_days: Option<u32>,
    /// A run the scheduler missed while the server was down runs once at start.
    pub catch_up_missed: bool,
}

impl Settings {
    /// What no run could honour, refused when the job is saved and again before a run.
    pub fn check(&self) -> Result<(), String> {
        use xenvault_repo::writer::ZSTD_LEVELS;
        let counts = [
            ("vm_concurrency", self.vm_concurrency),
            ("disk_concurrency", self.disk_concurrency),
            ("nbd_connections", self.nbd_connections),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if let Some(SnapshotOnly { keep: 0 }) = self.snapshot_only {
            return Err("snapshot-only jobs keep at least one snapshot (keep = 0)".into());
        }
        if let Some(level) = self.compression_level.filter(|l| !ZSTD_LEVELS.contains(l)) {
            return Err(format!(
                "compression level {level} is out of range: zstd levels are {} to {}",
                ZSTD_LEVELS.start(),
                ZSTD_LEVELS.end()
            ));
        }
        if self.immutability_days == Some(0) {
            return Err("immutability days must be at least 1".into());
        }
        if self.speed_limit_bytes_per_sec == Some(0) {
            return Err("a speed limit must be at least 1 byte per second".into());
        }
        if self.vm_timeout_secs == Some(0) || self.job_timeout_secs == Some(0) {
            return Err("a timeout must be at least 1 second".into());
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            vm_concurrency: 2,
            disk_concurrency: 2,
            nbd_connections: 4,
            vm_timeout_secs: None,
            job_timeout_secs: None,
            speed_limit_bytes_per_sec: None,
            retries: 0,
            retry_backoff_secs: 60,
            offline: false,
            quiesce: false,
            pre_command: None,
            post_command: None,
            snapshot_only: None,
            compression_level: None,
            immutability_days: None,
            catch_up_missed: true,
        }
    }
}

/// Snapshot-only jobs keep the newest `keep` snapshots each schedule made of each VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotOnly {
    pub keep: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    pub when: NotifyWhen,
    /// Addresses that get the run's report by email.
    pub email: Vec<String>,
    /// URL the run's result is POSTed to as JSON.
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyWhen {
    Always,
    /// Runs that did not fully succeed (partial, failed, cancelled, interrupted).
    #[default]
    Failure,
    Never,
}

/// A mirror job's target and filters. The job's `repository` is the source and
/// `selection.vms` (names or uuids) narrows it to those VMs' restore points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The registered repository the restore points are copied to (its own key and retention).
    pub target: String,
    /// Only the newest restore point of each VM.
    #[serde(default)]
    pub latest: bool,
    /// Only restore points made by this backup job (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_job: Option<String>,
    /// Verify the mirrored restore points on the target after each run.
    #[serde(default = "yes")]
    pub verify: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Job ids, run in this order.
    pub jobs: Vec<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Stop,
    Continue,
}

/// One execution of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub job_id: String,
    /// The schedule that fired it (none when started by hand).
    pub schedule_id: Option<String>,
    /// The sequence run that started it.
    pub parent_run_id: Option<String>,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub level: Option<Level>,
    /// The instant the schedule fired for (for catch-up runs, the missed one).
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub totals: RunTotals,
    /// Why the run as a whole failed (per-VM errors are in its tasks).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    /// A run missed while the server was down, run once at start.
    CatchUp,
    Manual,
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Success,
    /// Some VMs failed, others succeeded.
    Partial,
    Failed,
    Cancelled,
    /// The server stopped (crash, kill) while the run was going.
    Interrupted,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunTotals {
    pub vms: u32,
    pub vms_ok: u32,
    pub vms_failed: u32,
    pub bytes_read: u64,
    pub bytes_stored: u64,
}

/// A node of a run's task tree: the run, a VM, a disk, or a step (snapshot, transfer,
/// commit, retention, notification). Stored flat; `parent_id` links the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub run_id: String,
    pub parent_id: Option<String>,
    pub kind: TaskKind,
    /// What the task is about: the VM's name, the disk's position and name, the step.
    pub name: String,
    /// VM uuid (VM tasks), VDI uuid (disk tasks).
    pub subject: Option<String>,
    pub status: TaskStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes this task will read, when known (for progress).
    pub bytes_total: Option<u64>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// How a disk was read (e.g. "cbt-nbd", "vhd-delta", "full").
    pub strategy: Option<String>,
    /// Why that strategy or level was used.
    pub reason: Option<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// The scale-out node that ran this VM's backup (none when the server ran it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Task {
    /// A task that starts now.
    pub fn started(id: String, run_id: &str, parent_id: Option<&str>, kind: TaskKind, name: &str) -> Self {
        Task {
            id,
            run_id: run_id.to_owned(),
            parent_id: parent_id.map(str::to_owned),
            kind,
            name: name.to_owned(),
            subject: None,
            status: TaskStatus::Running,
            started_at: Some(Utc::now()),
            finished_at: None,
            bytes_total: None,
            bytes_read: 0,
            bytes_stored: 0,
            strategy: None,
            reason: None,
            warnings: Vec::new(),
            errors: Vec::new(),
            node: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Run,
    Vm,
    Disk,
    Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Success,
    Failed,
    Skipped,
    Cancelled,
    Interrupted,
}
