//! A backup job: for each selected VM (several at once), clean what earlier runs left,
//! snapshot, read each disk (several at once) with the best strategy, commit one restore
//! point, and keep exactly one base snapshot for the next incremental.

use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::report::{DiskReport, ExcludedDisk, JobReport, SnapshotReport, Status, VmReport};
use crate::selection::{self, SelectOptions, Selector};
use crate::store::{PastPoint, Point, Store};
use crate::strategy::{self, Attempt, BaseDisk, BaseSnapshotVdi, DiskFacts, Level, Requested};
use crate::throttle::{self, RateLimit};
use crate::transfer::{self, DiskTarget};
use xenvault_pool::host::Host;
use xenvault_pool::hygiene::{self, TAG_BASE, TAG_RESTORE_POINT};
use xenvault_pool::records::{HostName, Vbd, Vdi, Vm};
use xenvault_pool::snapshot;
use xenvault_repo::backend::RetentionMode;
use xenvault_repo::retention::lock_restore_points;
use xenvault_repo::writer::ZSTD_LEVELS;
use xenvault_types::metadata::{BackupRun, DiskBackup, VmMetadata, XapiRecords, XvaArchive};
use xenvault_types::progress::{Key, Phase, Progress, Task};

/// Restore point tries per disk beyond the first, when transfers break mid-way.
const MAX_RETRIES: usize = 3;

/// Marker in a VDI name that keeps the disk out of backups (as Xen Orchestra does).
pub const NOBAK: &str = "[NOBAK]";

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub selectors: Vec<Selector>,
    pub select: SelectOptions,
    pub level: Level,
    pub strategy: Requested,
    /// Full backup from an XVA export (re-exportable as an XVA); COPY or FULL only.
    pub xva: bool,
    pub quiesce: bool,
    pub pre_cmd: Option<String>,
    pub post_cmd: Option<String>,
    /// Device positions (VBD userdevice) to leave out.
    pub exclude_disks: Vec<String>,
    pub vm_concurrency: usize,
    pub disk_concurrency: usize,
    /// NBD connections per disk.
    pub nbd_connections: usize,
    /// How long a VM's backup waits for another backup of the same VM to finish
    /// before it is skipped (see [`crate::vm_lock`]).
    pub vm_lock_wait: Duration,
    /// Cancels the job: VMs not started are skipped, running transfers stop, their
    /// snapshots are removed and nothing more is committed.
    pub cancel: CancellationToken,
    /// The job this run belongs to (a scheduler's job), kept with every restore point
    /// and in the report; default: the run id.
    pub job_id: Option<String>,
    /// This run's id, kept with every restore point and in the report; it also marks the
    /// snapshots and VM locks the run takes, so it must be new for each run. Default: a
    /// new uuid.
    pub run_id: Option<String>,
    /// Make each new restore point immutable for a while once the run is over (S3 object
    /// lock); a repository that cannot lock fails the run before any snapshot.
    pub lock: Option<LockAfterBackup>,
    /// Bytes per second read from the pool by the whole job (every VM, disk and connection).
    pub speed_limit: Option<RateLimit>,
    /// zstd level of the chunks written (one of [`ZSTD_LEVELS`]); the repository's own when none.
    pub zstd_level: Option<i32>,
}

/// The object lock a run gives its restore points.
#[derive(Debug, Clone, Copy)]
pub struct LockAfterBackup {
    pub days: u32,
    pub mode: RetentionMode,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            selectors: Vec::new(),
            select: SelectOptions::default(),
            level: Level::Inc,
            strategy: Requested::Auto,
            xva: false,
            quiesce: false,
            pre_cmd: None,
            post_cmd: None,
            exclude_disks: Vec::new(),
            vm_concurrency: 2,
            disk_concurrency: 2,
            nbd_connections: 4,
            vm_lock_wait: Duration::from_secs(60),
            cancel: CancellationToken::new(),
            job_id: None,
            run_id: None,
            lock: None,
            speed_limit: None,
            zstd_level: None,
        }
    }
}

struct Ctx<'a> {
    host: &'a Host,
    /// The pool's hosts, to record which one a VM ran on.
    hosts: Vec<HostName>,
    store: &'a Store,
    options: &'a BackupOptions,
    job_id: String,
    run_id: String,
    progress: Arc<dyn Progress>,
}

impl Ctx<'_> {
    /// The name of the host `vm` runs on (none when it is halted), kept with its restore points.
    fn host_of(&self, vm: &Vm) -> Option<&str> {
        self.hosts.iter().find(|h| h.reference == vm.resident_on).map(|h| h.name_label.as_str())
    }
}

/// The VM records the selectors may match. VMs named by uuid are read one by one: a
/// service backs up one VM per call, and listing every VM of a large pool for each was
/// quadratic (8 s before the first snapshot over 1,000 VMs). Anything else lists the pool;
/// so does a uuid the pool lacks, for the selection's error to list what there is.
async fn candidate_vms(host: &Host, selectors: &[Selector]) -> Result<Vec<Vm>, Error> {
    let mut vms = Vec::new();
    for selector in selectors {
        let uuid = match selector {
            Selector::NameOrUuid(wanted) if uuid::Uuid::parse_str(wanted).is_ok() => wanted,
            _ => return Ok(host.vms().await?),
        };
        match xenvault_pool::host::by_uuid(host.client(), "VM", uuid).await? {
            Some(reference) => vms.push(host.vm(&reference).await?),
            None => return Ok(host.vms().await?),
        }
    }
    Ok(vms)
}

/// Runs a backup job; per-VM failures are in the report, not an `Err`.
pub async fn backup(
    host: &Host,
    store: &Store,
    options: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<JobReport, Error> {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    if let Some(level) = options.zstd_level.filter(|l| !ZSTD_LEVELS.contains(l)) {
        return Err(Error::Config(format!(
            "compression level {level} is out of range: zstd levels are {} to {}",
            ZSTD_LEVELS.start(),
            ZSTD_LEVELS.end()
        )));
    }
    if options.lock.is_some() {
        store.repository().backend().require_object_lock().await.map_err(xenvault_repo::Error::from)?;
    }
    let vms = candidate_vms(host, &options.selectors).await?;
    let hosts = host.hosts().await?;
    let selected = selection::select(&vms, &hosts, &options.selectors, options.select)?;
    let run_id = options.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let job_id = options.job_id.clone().unwrap_or_else(|| run_id.clone());
    let ctx = Ctx { host, hosts, store, options, job_id, run_id, progress };
    let vms: Vec<VmReport> = futures::stream::iter(selected.iter())
        .map(|vm| backup_vm(&ctx, vm))
        .buffer_unordered(options.vm_concurrency.max(1))
        .collect()
        .await;
    let mut report = JobReport {
        job_id: ctx.job_id.clone(),
        run_id: ctx.run_id.clone(),
        pool: host.pool_name.clone(),
        repository: store.location().to_owned(),
        level: options.level,
        started: started_at.to_rfc3339(),
        duration_secs: started.elapsed().as_secs_f64(),
        vms,
        totals: Default::default(),
        lock: None,
        lock_error: None,
    };
    report.vms.sort_by(|a, b| a.vm_name.cmp(&b.vm_name).then_with(|| a.vm_uuid.cmp(&b.vm_uuid)));
    report.compute_totals();
    if let Some(lock) = options.lock {
        let ids: Vec<String> = report.vms.iter().filter_map(|v| v.restore_point.clone()).collect();
        let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.days));
        match lock_restore_points(store.repository(), &ids, lock.mode, until).await {
            Ok(locked) => report.lock = Some(locked),
            Err(e) => {
                report.lock_error =
                    Some(format!("the restore points {} are stored but not locked: {e}", ids.join(", ")))
            }
        }
    }
    Ok(report)
}

async fn backup_vm(ctx: &Ctx<'_>, vm: &Vm) -> VmReport {
    let started = Instant::now();
    let mut report = VmReport {
        vm_uuid: vm.uuid.clone(),
        vm_name: vm.name_label.clone(),
        status: Status::Ok,
        error: None,
        level: ctx.options.level,
        level_reason: None,
        restore_point: None,
        snapshot: None,
        disks: Vec::new(),
        excluded_disks: Vec::new(),
        cleaned_snapshots: Vec::new(),
        warnings: Vec::new(),
        duration_secs: 0.0,
    };
    if let Err(e) = locked_run_vm(ctx, vm, &mut report).await {
        report.status = Status::Failed;
        report.error = Some(e.to_string());
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report
}

/// One disk chosen for backup, with its snapshot and what it can build on.
struct DiskWork {
    vbd: Vbd,
    source: Vdi,
    snapshot: Vdi,
    base: Option<BaseDisk>,
    base_record: Option<xenvault_repo::DiskRecord>,
    /// Ranges of the base the repository lost: read again, never inherited.
    heal: Vec<std::ops::Range<u64>>,
    /// Why the base is used only in part, or not at all (said in the disk's reason).
    base_note: Option<String>,
    cbt_reenabled: bool,
}

/// Runs the VM's backup holding its lock, on a fresh record of the VM.
async fn locked_run_vm(ctx: &Ctx<'_>, vm: &Vm, report: &mut VmReport) -> Result<(), Error> {
    if ctx.options.cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let acquiring = crate::vm_lock::acquire(ctx.host, vm, &ctx.run_id, ctx.options.vm_lock_wait);
    let lock = unless_cancelled(&ctx.options.cancel, acquiring).await.ok_or(Error::Cancelled)??;
    if let Some(holder) = &lock.took_over {
        report.warnings.push(format!("took over the backup lock of a run that is gone: {holder}"));
    }
    let result = match ctx.host.vm(&vm.reference).await {
        Ok(vm) => run_vm(ctx, &vm, report).await,
        Err(e) => Err(e.into()),
    };
    lock.release(ctx.host).await;
    result
}

async fn run_vm(ctx: &Ctx<'_>, vm: &Vm, report: &mut VmReport) -> Result<(), Error> {
    let host = ctx.host;
    let options = ctx.options;

    // A snapshot taken by a run killed before it could tag it.
    let untagged = snapshot::left_by_intent(host, vm).await?;
    snapshot::remove_left_by_intent(host, vm, &untagged).await?;
    report.cleaned_snapshots.extend(untagged.into_iter().map(|s| s.uuid));

    // What earlier runs left: the base to build on, and leftovers to remove.
    let cleanup = hygiene::sort_out(snapshot::ours(host, vm).await?, &ctx.run_id);
    for stale in &cleanup.remove {
        snapshot::destroy(host, &stale.reference).await;
        report.cleaned_snapshots.push(stale.uuid.clone());
    }

    let history = ctx.store.history(&vm.uuid).await?;
    let (level, base_point) = effective_level(options.level, &history);
    report.level = level;
    if level != options.level {
        report.level_reason = Some(format!("{} requested but no restore point to build on: full", options.level));
    }

    let mut disks = Vec::new();
    for (vbd, vdi) in host.disks(vm).await? {
        if let Some(reason) = exclusion(&vbd, &vdi, &options.exclude_disks) {
            report.excluded_disks.push(ExcludedDisk {
                position: vbd.userdevice.clone(),
                vdi_uuid: vdi.uuid.clone(),
                name: vdi.name_label.clone(),
                reason,
            });
        } else {
            disks.push((vbd, vdi));
        }
    }

    // CBT must be on before the snapshot for the snapshot to serve as a CBT base.
    let mut cbt_turned_on = Vec::new();
    let wants_cbt = level != Level::Copy && matches!(options.strategy, Requested::Auto | Requested::Cbt);
    if wants_cbt {
        for (_, vdi) in disks.iter_mut().filter(|(_, vdi)| !vdi.cbt_enabled) {
            match host.call("VDI.enable_cbt", vec![vdi.reference.as_str().into()]).await {
                Ok(_) => {
                    vdi.cbt_enabled = true;
                    cbt_turned_on.push(vdi.uuid.clone());
                }
                Err(e) => report.warnings.push(format!("could not enable CBT on {}: {e}", vdi.uuid)),
            }
        }
    }

    let hook_ctx =
        |snapshot_uuid| crate::hooks::HookContext { pool: &host.pool_name, job_id: &ctx.job_id, vm, snapshot_uuid };
    if options.cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(cmd) = &options.pre_cmd {
        crate::hooks::run("pre", cmd, &hook_ctx(None)).await?;
    }
    let taken = snapshot::take(host, vm, &ctx.run_id, options.quiesce).await;
    if let Some(cmd) = &options.post_cmd {
        let uuid = taken.as_ref().ok().map(|t| t.vm.uuid.as_str());
        if let Err(e) = crate::hooks::run("post", cmd, &hook_ctx(uuid)).await {
            report.warnings.push(e.to_string());
        }
    }
    let taken = taken?;
    report.snapshot = Some(SnapshotReport {
        uuid: taken.vm.uuid.clone(),
        quiesce_requested: options.quiesce,
        quiesced: taken.quiesced,
        note: taken.note.clone(),
        kept_as: "removed".into(),
    });

    // From here on, any failure removes the snapshot we made.
    match back_up_snapshot(
        ctx,
        vm,
        &taken.vm,
        level,
        &history,
        base_point,
        cleanup.keep.as_ref(),
        disks,
        &cbt_turned_on,
        report,
    )
    .await
    {
        Ok(keep) => {
            let kept_as = settle_snapshots(ctx, &taken.vm, cleanup.keep.as_ref(), keep, report).await;
            if let Some(s) = report.snapshot.as_mut() {
                s.kept_as = kept_as;
            }
            Ok(())
        }
        Err(e) => {
            snapshot::destroy(host, &taken.vm.reference).await;
            Err(e)
        }
    }
}

/// The stored VM records without this run's lock and intent (see [`hygiene::RUN_KEYS`]).
fn without_run_keys(records: &mut XapiRecords) {
    for record in [&mut records.vm, &mut records.snapshot] {
        if let Some(config) = record.get_mut("other_config").and_then(|c| c.as_object_mut()) {
            for key in hygiene::RUN_KEYS {
                config.remove(key);
            }
        }
    }
}

/// What the restore point stores about the VM, its disks as `reports` say, and this run.
fn vm_metadata(
    ctx: &Ctx<'_>,
    vm: &Vm,
    level: Level,
    records: XapiRecords,
    reports: &[DiskReport],
    xva: Option<XvaArchive>,
) -> VmMetadata {
    let disks = reports
        .iter()
        .map(|d| DiskBackup {
            position: d.position.clone(),
            vdi_uuid: d.vdi_uuid.clone(),
            snapshot_vdi_uuid: d.snapshot_vdi_uuid.clone(),
            strategy: d.strategy.to_string(),
            reason: d.reason.clone(),
        })
        .collect();
    let run = BackupRun {
        level,
        job_id: Some(ctx.job_id.clone()),
        run_id: Some(ctx.run_id.clone()),
        pool: Some(ctx.host.pool_name.clone()),
        host: ctx.host_of(vm).map(str::to_owned),
    };
    VmMetadata::from_records(records, disks, run, xva)
}

/// `work`'s output, or None once `cancel` fires (`work` is dropped: its transfers stop).
async fn unless_cancelled<T>(cancel: &CancellationToken, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        () = cancel.cancelled() => None,
    }
}

/// The level a run really has, and the restore point an incremental builds on.
fn effective_level(requested: Level, history: &[PastPoint]) -> (Level, Option<&PastPoint>) {
    // `history` is newest first; COPY restore points are outside the chain.
    let base = match requested {
        Level::Copy | Level::Full => return (requested, None),
        Level::Inc => history.iter().find(|p| p.level != Level::Copy),
        Level::Diff => history.iter().find(|p| p.level == Level::Full),
    };
    match base {
        Some(point) => (requested, Some(point)),
        None => (Level::Full, None),
    }
}

fn exclusion(vbd: &Vbd, vdi: &Vdi, excluded_positions: &[String]) -> Option<String> {
    if excluded_positions.iter().any(|p| p == &vbd.userdevice) {
        Some(format!("device position {} excluded", vbd.userdevice))
    } else if vdi.name_label.contains(NOBAK) {
        Some(format!("{NOBAK} in the VDI name"))
    } else {
        None
    }
}

/// What to do with the new snapshot once its restore point is committed.
enum Keep {
    /// Remove it (COPY, DIFF: the chain's base does not move).
    Remove,
    /// Make it the base; `data` false frees its data with `VDI.data_destroy`.
    Base { restore_point: String, data: bool },
}

#[allow(clippy::too_many_arguments)]
async fn back_up_snapshot(
    ctx: &Ctx<'_>,
    vm: &Vm,
    snap: &Vm,
    level: Level,
    history: &[PastPoint],
    base_point: Option<&PastPoint>,
    base_snapshot: Option<&Vm>,
    disks: Vec<(Vbd, Vdi)>,
    cbt_turned_on: &[String],
    report: &mut VmReport,
) -> Result<Keep, Error> {
    let host = ctx.host;
    let snapshot_disks = snapshot::disks_by_origin(host, snap).await?;
    if base_point.is_some() {
        // What verify recorded as damaged since this process loaded the index.
        ctx.store.repository().refresh_index().await?;
    }
    let mut work = Vec::new();
    for (vbd, source) in disks {
        let snapshot = snapshot_disks
            .iter()
            .find(|(origin, _)| *origin == source.reference)
            .map(|(_, vdi)| vdi.clone())
            .ok_or_else(|| Error::Protocol(format!("the snapshot has no copy of VDI {}", source.uuid)))?;
        let (mut base, mut base_record) = match base_point {
            Some(point) => base_of(host, history, point, &source, base_snapshot).await?,
            None => (None, None),
        };
        let (mut heal, mut base_note) = (Vec::new(), None);
        if let (Some(record), Some(point)) = (&base_record, base_point) {
            let damage = ctx.store.repository().base_damage(record).await?;
            if !damage.lost_pages.is_empty() {
                base_note = Some(format!(
                    "restore point {} lost {} index page(s) of this disk: nothing of it is inherited",
                    point.id,
                    damage.lost_pages.len()
                ));
                (base, base_record) = (None, None);
            } else if !damage.is_empty() {
                base_note = Some(format!(
                    "{} damaged or missing chunk range(s) of restore point {} ({} bytes) read again from the snapshot",
                    damage.lost_chunks.len(),
                    point.id,
                    damage.bytes()
                ));
                heal = damage.ranges();
            }
        }
        let cbt_reenabled = cbt_turned_on.contains(&source.uuid);
        work.push(DiskWork { vbd, source, snapshot, base, base_record, heal, base_note, cbt_reenabled });
    }
    // Snapshot copies of excluded disks are dropped at once (as Xen Orchestra does for [NOBAK]).
    for (origin, vdi) in &snapshot_disks {
        if !work.iter().any(|w| &w.source.reference == origin)
            && let Err(e) = snapshot::destroy_snapshot_vdi(host, &vdi.reference).await
        {
            report.warnings.push(format!("could not drop the snapshot of excluded VDI {}: {e}", vdi.uuid));
        }
    }

    let mut records = host.vm_records(vm, snap).await?;
    without_run_keys(&mut records);
    if ctx.options.xva {
        let (id, disks) = back_up_xva(ctx, vm, snap, level, &work, records).await?;
        report.restore_point = Some(id);
        report.disks = disks;
        return Ok(if level == Level::Copy { Keep::Remove } else { keep_base(ctx, &work, report) });
    }
    let mut failures: Vec<Vec<(Attempt, String)>> = vec![Vec::new(); work.len()];
    let (id, disk_reports) = loop {
        let point = ctx.store.start(vm, base_point.map(|p| p.id.as_str()), ctx.options.zstd_level).await?;
        let transfers = futures::stream::iter(work.iter().zip(failures.iter()))
            .map(|(disk, failed)| back_up_disk(ctx, &point, vm, level, disk, failed))
            .buffered(ctx.options.disk_concurrency.max(1))
            .collect::<Vec<Result<(DiskReport, xenvault_repo::DiskRecord), DiskError>>>();
        let Some(results) = unless_cancelled(&ctx.options.cancel, transfers).await else {
            point.abort().await;
            return Err(Error::Cancelled);
        };
        let mut retry = false;
        let mut reports = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok((report, _)) => reports.push(report),
                Err(DiskError::Fatal(e)) => {
                    point.abort().await;
                    return Err(e);
                }
                Err(DiskError::Retry(e)) => {
                    retry = true;
                    if let Some(list) = failures.get_mut(index) {
                        list.push((e.attempt, e.error));
                    }
                }
            }
        }
        if !retry {
            reports.sort_by_key(|d| d.position.parse::<u32>().unwrap_or(u32::MAX));
            let metadata = vm_metadata(ctx, vm, level, records.clone(), &reports, None);
            break (point.commit(&metadata).await?, reports);
        }
        point.abort().await;
        if failures.iter().map(Vec::len).sum::<usize>() > MAX_RETRIES * work.len().max(1) {
            return Err(Error::Protocol("the disk transfers kept failing".into()));
        }
    };
    report.restore_point = Some(id.clone());
    report.disks = disk_reports;

    Ok(match level {
        Level::Copy | Level::Diff => Keep::Remove,
        Level::Full | Level::Inc => keep_base(ctx, &work, report),
    })
}

/// The new snapshot as the next base. Metadata-only is enough when the next run can
/// use CBT + NBD; otherwise it keeps its data for a VHD delta.
fn keep_base(ctx: &Ctx<'_>, work: &[DiskWork], report: &VmReport) -> Keep {
    let cbt_ready = !work.is_empty()
        && work.iter().all(|w| w.source.cbt_enabled)
        && ctx.options.strategy != Requested::Vhd
        && report.disks.iter().all(|d| d.transport == strategy::Transport::Nbd);
    let restore_point = report.restore_point.clone().unwrap_or_default();
    Keep::Base { restore_point, data: !cbt_ready }
}

/// The whole snapshot as one XVA export: disks stored, `ova.xml` kept in the manifest.
async fn back_up_xva(
    ctx: &Ctx<'_>,
    vm: &Vm,
    snap: &Vm,
    level: Level,
    work: &[DiskWork],
    records: XapiRecords,
) -> Result<(String, Vec<DiskReport>), Error> {
    let origin: BTreeMap<String, String> =
        work.iter().map(|w| (w.snapshot.uuid.clone(), w.source.uuid.clone())).collect();
    let total: u64 = work.iter().map(|w| w.snapshot.virtual_size).sum();
    let mut tries = 0;
    loop {
        tries += 1;
        let point = ctx.store.start(vm, None, ctx.options.zstd_level).await?;
        let key = Key::new(Some(&vm.uuid), None, Phase::BackupXva);
        let task = Task::start(ctx.progress.clone(), key, format!("{} (XVA)", vm.name_label), total);
        let result = unless_cancelled(&ctx.options.cancel, async {
            let body = throttle::limited(ctx.host.export_vm(&snap.reference).await?, ctx.options.speed_limit.as_ref());
            crate::xva::store(body, &point, &origin, &task).await
        })
        .await;
        drop(task);
        let Some(result) = result else {
            point.abort().await;
            return Err(Error::Cancelled);
        };
        let (stored, xva) = match result {
            Ok(done) => done,
            Err(e) => {
                point.abort().await;
                if e.is_fatal() || tries > MAX_RETRIES {
                    return Err(e);
                }
                tracing::warn!("{}: XVA export try {tries} failed: {e}", vm.name_label);
                continue;
            }
        };
        let reports: Vec<DiskReport> = stored
            .iter()
            .map(|disk| DiskReport {
                position: disk.name.clone(),
                vdi_uuid: disk.record.uuid.clone(),
                snapshot_vdi_uuid: disk.snapshot_vdi_uuid.clone(),
                name: work
                    .iter()
                    .find(|w| w.snapshot.uuid == disk.snapshot_vdi_uuid)
                    .map(|w| w.source.name_label.clone())
                    .unwrap_or_default(),
                size: disk.size,
                strategy: strategy::Strategy::FullRead,
                transport: strategy::Transport::HttpXva,
                reason: format!(
                    "XVA backup (level {level}): the snapshot exported whole; all-zero chunks skipped by the host"
                ),
                bytes_read: disk.bytes_read,
                bytes_changed: disk.size,
                changed_granularity: xenvault_xva::CHUNK_SIZE,
                bytes_stored: disk.record.stats.bytes_stored,
                dedup_ratio: disk.size as f64 / disk.record.stats.bytes_stored.max(1) as f64,
                duration_secs: disk.seconds,
                throughput_bytes_per_sec: disk.bytes_read as f64 / disk.seconds.max(1e-6),
                attempts: tries as u32,
            })
            .collect();
        let metadata = vm_metadata(ctx, vm, level, records, &reports, Some(xva));
        let id = point.commit(&metadata).await?;
        return Ok((id, reports));
    }
}

/// The base of one disk: its image in the base restore point, and our older snapshot
/// of the VDI if it is still on the host and safe to diff against.
async fn base_of(
    host: &Host,
    history: &[PastPoint],
    point: &PastPoint,
    source: &Vdi,
    base_snapshot: Option<&Vm>,
) -> Result<(Option<BaseDisk>, Option<xenvault_repo::DiskRecord>), Error> {
    let Some(past) = point.disks.iter().find(|d| d.vdi_uuid == source.uuid) else {
        return Ok((None, None));
    };
    // The snapshot must be from this restore point or an older one: what changed since
    // the snapshot then covers everything that changed since the restore point.
    let made_from = base_snapshot
        .and_then(|s| s.other_config.get(TAG_RESTORE_POINT))
        .and_then(|id| history.iter().find(|p| &p.id == id))
        .filter(|p| p.time <= point.time);
    let snapshot_uuid = made_from
        .and_then(|p| p.disks.iter().find(|d| d.vdi_uuid == source.uuid))
        .map(|d| d.snapshot_vdi_uuid.as_str())
        .filter(|uuid| !uuid.is_empty());
    let snapshot_vdi =
        match snapshot_uuid {
            Some(uuid) => host.vdi_by_uuid(uuid).await?.filter(|vdi| vdi.snapshot_of == source.reference).map(|vdi| {
                BaseSnapshotVdi { has_data: !vdi.is_cbt_metadata(), reference: vdi.reference, uuid: vdi.uuid }
            }),
            None => None,
        };
    let base = BaseDisk { restore_point: point.id.clone(), snapshot_vdi };
    Ok((Some(base), Some(past.record.clone())))
}

/// A strategy tried on a disk and how it failed, carried into the next try.
pub struct DiskFailure {
    attempt: Attempt,
    error: String,
}

async fn back_up_disk(
    ctx: &Ctx<'_>,
    point: &Point,
    vm: &Vm,
    level: Level,
    disk: &DiskWork,
    failed: &[(Attempt, String)],
) -> Result<(DiskReport, xenvault_repo::DiskRecord), DiskError> {
    let host = ctx.host;
    let nbd = host.nbd_info(&disk.snapshot.reference).await.unwrap_or_default();
    let facts = DiskFacts {
        level,
        requested: ctx.options.strategy,
        base: disk.base.clone(),
        cbt_enabled: disk.source.cbt_enabled,
        cbt_reenabled: disk.cbt_reenabled,
        nbd_available: !nbd.is_empty(),
    };
    let plan = strategy::plan(&facts);
    let mut notes: Vec<String> = disk.base_note.iter().cloned().chain(plan.notes.iter().cloned()).collect();
    let mut fallback_notes = plan.fallback_notes.clone();
    for (attempt, error) in failed {
        notes.push(format!("{} broke mid-transfer: {error}", attempt.strategy.label()));
        notes.append(&mut fallback_notes);
    }
    let target = DiskTarget {
        name: disk.vbd.userdevice.clone(),
        vdi_uuid: disk.source.uuid.clone(),
        snapshot: disk.snapshot.clone(),
        base_snapshot: disk.base.as_ref().and_then(|b| b.snapshot_vdi.clone()),
        base_record: disk.base_record.clone(),
        heal: disk.heal.clone(),
        nbd,
        nbd_connections: ctx.options.nbd_connections,
        speed_limit: ctx.options.speed_limit.clone(),
    };
    // A strategy that broke twice mid-transfer gives way to the next one.
    let attempts = plan.attempts.iter().filter(|a| failed.iter().filter(|(f, _)| f == *a).count() < 2);
    for attempt in attempts {
        let started = Instant::now();
        let key = Key::new(Some(&vm.uuid), disk.vbd.userdevice.parse().ok(), Phase::Backup);
        let label = format!("{} disk {} ({})", vm.name_label, disk.vbd.userdevice, attempt.strategy.label());
        let task = Task::start(ctx.progress.clone(), key, label, disk.snapshot.virtual_size);
        let read = transfer::read_disk(host, point, &target, attempt, &task).await;
        drop(task);
        match read {
            Ok(outcome) => {
                let seconds = started.elapsed().as_secs_f64();
                let stats = &outcome.record.stats;
                let report = DiskReport {
                    position: disk.vbd.userdevice.clone(),
                    vdi_uuid: disk.source.uuid.clone(),
                    snapshot_vdi_uuid: disk.snapshot.uuid.clone(),
                    name: disk.source.name_label.clone(),
                    size: disk.snapshot.virtual_size,
                    strategy: attempt.strategy,
                    transport: attempt.transport,
                    reason: strategy::reason(&notes, attempt),
                    bytes_read: outcome.bytes_read,
                    bytes_changed: outcome.bytes_changed,
                    changed_granularity: outcome.granularity,
                    bytes_stored: stats.bytes_stored,
                    dedup_ratio: disk.snapshot.virtual_size as f64 / stats.bytes_stored.max(1) as f64,
                    duration_secs: seconds,
                    throughput_bytes_per_sec: outcome.bytes_read as f64 / seconds.max(1e-6),
                    attempts: failed.len() as u32 + 1,
                };
                return Ok((report, outcome.record));
            }
            Err(transfer::Failure::Unusable(why)) => {
                notes.push(format!("{} failed: {why}", attempt.strategy.label()));
                notes.append(&mut fallback_notes);
            }
            Err(transfer::Failure::Retry(e)) => {
                return Err(DiskError::Retry(DiskFailure { attempt: attempt.clone(), error: e.to_string() }));
            }
            Err(transfer::Failure::Fatal(e)) => return Err(DiskError::Fatal(e)),
        }
    }
    Err(DiskError::Fatal(Error::Protocol(format!(
        "no strategy could read disk {} ({}): {}",
        disk.vbd.userdevice,
        disk.source.uuid,
        notes.join("; ")
    ))))
}

enum DiskError {
    /// The restore point must be tried again; this strategy failed mid-transfer.
    Retry(DiskFailure),
    Fatal(Error),
}

/// After a commit: the new snapshot becomes the base (or goes), and older bases go.
async fn settle_snapshots(
    ctx: &Ctx<'_>,
    snap: &Vm,
    old_base: Option<&Vm>,
    keep: Keep,
    report: &mut VmReport,
) -> String {
    let host = ctx.host;
    match keep {
        Keep::Remove => {
            snapshot::destroy(host, &snap.reference).await;
            "removed (the chain's base does not move)".into()
        }
        Keep::Base { restore_point, data } => {
            let mut kept = "base with data (for a VHD delta)".to_owned();
            if !data {
                let failures = snapshot::keep_cbt_metadata_only(host, snap).await;
                if failures.is_empty() {
                    kept = "base, CBT metadata only (VDI.data_destroy)".into();
                }
                report.warnings.extend(failures);
            }
            let tagged = async {
                host.add_to_other_config("VM", &snap.reference, TAG_RESTORE_POINT, &restore_point).await?;
                host.add_to_other_config("VM", &snap.reference, TAG_BASE, "1").await
            };
            if let Err(e) = tagged.await {
                report.warnings.push(format!("could not mark the snapshot as base: {e}"));
                snapshot::destroy(host, &snap.reference).await;
                return "removed (could not be marked as base)".into();
            }
            if let Some(old) = old_base {
                snapshot::destroy(host, &old.reference).await;
                report.cleaned_snapshots.push(old.uuid.clone());
            }
            kept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobak_and_positions_exclude() {
        let vbd = |d: &str| Vbd { reference: "r".into(), vdi: "v".into(), userdevice: d.into(), kind: "Disk".into() };
        let vdi = |n: &str| {
            let record = xenvault_xapi_wire::Value::Struct(
                [("name_label".to_owned(), xenvault_xapi_wire::Value::from(n))].into_iter().collect(),
            );
            Vdi::parse("OpaqueRef:v", &record)
        };
        assert!(exclusion(&vbd("1"), &vdi("data"), &["1".into()]).is_some());
        assert!(exclusion(&vbd("0"), &vdi("scratch [NOBAK]"), &[]).is_some());
        assert!(exclusion(&vbd("0"), &vdi("root"), &["1".into()]).is_none());
    }
}
