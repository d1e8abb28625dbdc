//! A replication run from a pool: for each selected VM (holding the engine's VM lock, so
//! no backup snapshots it meanwhile), clean what earlier runs left, snapshot it, then make
//! a new replica (full) or bring the existing one up to date (incremental), and keep the
//! new snapshot as the next run's base.

use futures::StreamExt;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xenvault_engine::selection::{self, SelectOptions, Selector};
use xenvault_pool::Value;
use xenvault_pool::host::{Host, by_uuid};
use xenvault_pool::hygiene::{RUN_KEYS, TAG_JOB, TAG_SNAPSHOT, TAG_SNAPSHOT_VM};
use xenvault_pool::records::{self, Vbd, Vdi, Vm};
use xenvault_pool::snapshot;
use xenvault_restore::disk::{Created, create_vbd, create_vdi};
use xenvault_restore::vm::{new_vm_spec, to_value};
use xenvault_types::progress::Progress;

use crate::copy::DiskJob;
use crate::report::{Kind, ReplicationReport, Status, VmReplication};
use crate::{Error, tags};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The first run makes the replica, later runs write only what changed onto it.
    #[default]
    Incremental,
    /// Every run makes a new replica.
    Full,
}

#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    pub selectors: Vec<Selector>,
    /// The SR (uuid) on the target pool that new replicas' disks go to.
    pub target_sr: String,
    pub mode: Mode,
    /// Full: replicas kept per VM; incremental: snapshots kept per replica (at least 1).
    pub keep: usize,
    /// The job that keeps the replicas: a VM has one replica chain per job.
    pub job_id: String,
    /// This run's id (marks the snapshots and VM locks it takes); default: a new uuid.
    pub run_id: Option<String>,
    /// New replicas' VIFs: source network uuid or name -> target network uuid (default:
    /// the target's network of the same uuid, else of the same name, else none).
    pub network_map: Vec<(String, String)>,
    pub nbd_connections: usize,
    pub vm_concurrency: usize,
    /// How long a VM waits for a backup of it to finish before it is skipped.
    pub vm_lock_wait: Duration,
    pub cancel: CancellationToken,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            selectors: Vec::new(),
            target_sr: String::new(),
            mode: Mode::Incremental,
            keep: 2,
            job_id: "replication".into(),
            run_id: None,
            network_map: Vec::new(),
            nbd_connections: 4,
            vm_concurrency: 2,
            vm_lock_wait: Duration::from_secs(60),
            cancel: CancellationToken::new(),
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub source: &'a Host,
    pub target: &'a Host,
    pub sr: String,
    pub options: &'a ReplicateOptions,
    pub run_id: String,
    pub progress: Arc<dyn Progress>,
}

/// Replicates the selected VMs of `source` to `target` (the same pool's [`Host`] for a
/// replica on another SR of it). Per-VM failures are in the report.
pub async fn replicate(
    source: &Host,
    target: &Host,
    options: &ReplicateOptions,
    progress: Arc<dyn Progress>,
) -> Result<ReplicationReport, Error> {
    let (started_at, started) = (chrono::Utc::now(), Instant::now());
    if options.keep == 0 {
        return Err(Error::Refused("keep must be at least 1".into()));
    }
    let sr = by_uuid(target.client(), "SR", &options.target_sr)
        .await?
        .ok_or_else(|| Error::Refused(format!("the target pool has no SR with uuid {}", options.target_sr)))?;
    let vms = source.vms().await?;
    let hosts = source.hosts().await?;
    let selected = selection::select(&vms, &hosts, &options.selectors, SelectOptions::default())?;
    let run_id = options.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ctx = Ctx { source, target, sr, options, run_id, progress };
    let mut reports: Vec<VmReplication> = futures::stream::iter(selected.iter())
        .map(|vm| replicate_vm(&ctx, vm))
        .buffer_unordered(options.vm_concurrency.max(1))
        .collect()
        .await;
    reports.sort_by(|a, b| a.vm_name.cmp(&b.vm_name).then_with(|| a.vm_uuid.cmp(&b.vm_uuid)));
    Ok(ReplicationReport {
        job_id: options.job_id.clone(),
        run_id: ctx.run_id.clone(),
        source: source.pool_name.clone(),
        target_pool: target.pool_name.clone(),
        target_sr: options.target_sr.clone(),
        started: started_at.to_rfc3339(),
        duration_secs: started.elapsed().as_secs_f64(),
        vms: reports,
    })
}

async fn replicate_vm(ctx: &Ctx<'_>, vm: &Vm) -> VmReplication {
    let started = Instant::now();
    let mut report = VmReplication::new(&vm.uuid, &vm.name_label);
    let result = async {
        if ctx.options.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let lock = xenvault_engine::vm_lock::acquire(ctx.source, vm, &ctx.run_id, ctx.options.vm_lock_wait).await?;
        let result = match ctx.source.vm(&vm.reference).await {
            Ok(vm) => run_vm(ctx, &vm, &mut report).await,
            Err(e) => Err(e.into()),
        };
        lock.release(ctx.source).await;
        result
    }
    .await;
    if let Err(e) = result {
        report.status = Status::Failed;
        report.error = Some(e.to_string());
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report
}

/// The replicas of source VM `vm_uuid` that job `job` keeps on `target`, newest first
/// (failed-over ones too: the caller decides).
pub async fn replicas_of(target: &Host, vm_uuid: &str, job: &str) -> Result<Vec<Vm>, Error> {
    let mut found: Vec<Vm> = target
        .vms()
        .await?
        .into_iter()
        .filter(|v| !v.is_a_snapshot && v.other_config.get(tags::REPLICA_OF).map(String::as_str) == Some(vm_uuid))
        .filter(|v| v.other_config.get(tags::REPLICA_JOB).map(String::as_str) == Some(job))
        .collect();
    found.sort_by(|a, b| replicated_at(b).cmp(replicated_at(a)));
    Ok(found)
}

fn replicated_at(vm: &Vm) -> &str {
    vm.other_config.get(tags::REPLICATED_AT).map_or("", String::as_str)
}

async fn run_vm(ctx: &Ctx<'_>, vm: &Vm, report: &mut VmReplication) -> Result<(), Error> {
    let (source, options) = (ctx.source, ctx.options);
    // A snapshot taken by a run killed before it could tag it.
    let untagged = snapshot::left_by_intent(source, vm).await?;
    snapshot::remove_left_by_intent(source, vm, &untagged).await?;
    report.cleaned_snapshots.extend(untagged.into_iter().map(|s| s.uuid));

    let replica = match options.mode {
        Mode::Full => None,
        Mode::Incremental => replicas_of(ctx.target, &vm.uuid, &options.job_id).await?.into_iter().next(),
    };
    if let Some(r) = &replica
        && let Some(when) = r.other_config.get(tags::FAILED_OVER)
    {
        return Err(Error::Refused(format!(
            "replica {} ({}) was failed over at {when}: it is no longer updated",
            r.name_label, r.uuid
        )));
    }
    // Our replication snapshots: the base the replica holds stays, the rest goes.
    let base = base_and_cleanup(ctx, vm, replica.as_ref(), report).await?;

    let disks: Vec<(Vbd, Vdi)> = source.disks(vm).await?;
    for (_, vdi) in disks.iter().filter(|(_, vdi)| !vdi.cbt_enabled) {
        if let Err(e) = source.call("VDI.enable_cbt", vec![vdi.reference.as_str().into()]).await {
            report.warnings.push(format!("could not enable CBT on {}: {e}", vdi.uuid));
        }
    }
    if options.cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let taken = snapshot::take(source, vm, &ctx.run_id, false).await?.vm;
    report.source_point = taken.uuid.clone();
    let result = async {
        retag(source, &taken, &options.job_id).await?;
        // Fresh records: CBT may have been turned on above.
        let disks = source.disks(vm).await?;
        match replica {
            Some(replica) => update(ctx, vm, &taken, &disks, base.as_ref(), &replica, report).await,
            None => full(ctx, vm, &taken, &disks, report).await,
        }
    }
    .await;
    match result {
        Ok(replica_uuid) => {
            settle(ctx, &taken, &replica_uuid, report).await;
            Ok(())
        }
        Err(e) => {
            snapshot::destroy(source, &taken.reference).await;
            Err(e)
        }
    }
}

/// The snapshot of `vm` the replica holds (its VDIs by the live VDI they copy), after
/// removing our other replication snapshots of this job (left by failed runs, superseded).
async fn base_and_cleanup(
    ctx: &Ctx<'_>,
    vm: &Vm,
    replica: Option<&Vm>,
    report: &mut VmReplication,
) -> Result<Option<BTreeMap<String, Vdi>>, Error> {
    let job = ctx.options.job_id.as_str();
    let mut ours = Vec::new();
    for reference in &vm.snapshots {
        let snapshot = ctx.source.vm(reference).await?;
        if snapshot.other_config.get(tags::REPLICATION).map(String::as_str) == Some(job) {
            ours.push(snapshot);
        }
    }
    ours.sort_by(|a, b| b.snapshot_time.cmp(&a.snapshot_time));
    let holds = |s: &Vm| {
        replica.is_some_and(|r| s.other_config.get(tags::REPLICATION_BASE).map(String::as_str) == Some(&r.uuid))
    };
    let base = ours.iter().position(holds).map(|i| ours.remove(i));
    for stale in ours {
        snapshot::destroy(ctx.source, &stale.reference).await;
        report.cleaned_snapshots.push(stale.uuid);
    }
    let Some(base) = base else { return Ok(None) };
    Ok(Some(snapshot_vdis(ctx.source, &base).await?))
}

/// The VDIs of one of our snapshots, keyed by the live VDI each copies: attached ones,
/// and metadata-only ones (`VDI.data_destroy` took their VBDs; they carry the snapshot's uuid).
async fn snapshot_vdis(host: &Host, snapshot: &Vm) -> Result<BTreeMap<String, Vdi>, Error> {
    let mut vdis: BTreeMap<String, Vdi> =
        host.disks(snapshot).await?.into_iter().map(|(_, vdi)| (vdi.snapshot_of.clone(), vdi)).collect();
    for (reference, record) in records::all_records(&host.call("VDI.get_all_records", vec![]).await?) {
        let vdi = Vdi::parse(&reference, record);
        if vdi.other_config.get(TAG_SNAPSHOT_VM) == Some(&snapshot.uuid) {
            vdis.entry(vdi.snapshot_of.clone()).or_insert(vdi);
        }
    }
    Ok(vdis)
}

/// A replication snapshot leaves the backups' snapshot tags for ours, so a backup's
/// hygiene never takes it for one of its own.
async fn retag(host: &Host, snapshot: &Vm, job: &str) -> Result<(), Error> {
    host.add_to_other_config("VM", &snapshot.reference, tags::REPLICATION, job).await?;
    for key in [TAG_SNAPSHOT, TAG_JOB] {
        host.call("VM.remove_from_other_config", vec![snapshot.reference.as_str().into(), key.into()]).await?;
    }
    Ok(())
}

/// The name of a new replica: the VM's, the job's and the date.
fn replica_name(vm: &Vm, job: &str) -> String {
    format!("{} - {job} - {}", vm.name_label, chrono::Utc::now().format("%Y-%m-%d %H:%M"))
}

/// A new replica of `vm` from `snap`: the VM record, its disks filled from the snapshot,
/// its VIFs. Everything created is removed again when something fails. Returns its uuid.
async fn full(
    ctx: &Ctx<'_>,
    vm: &Vm,
    snap: &Vm,
    live_disks: &[(Vbd, Vdi)],
    report: &mut VmReplication,
) -> Result<String, Error> {
    report.kind = Some(Kind::Full);
    let client = ctx.target.client();
    let records = ctx.source.vm_records(vm, snap).await?;
    let name = replica_name(vm, &ctx.options.job_id);
    let spec = replica_spec(&records.vm, &name, &vm.uuid, &ctx.options.job_id, &snap.snapshot_time);
    let mut made = Created::default();
    let created = async {
        let replica = call_ref(ctx.target, "VM.create", vec![to_value(&spec)?]).await?;
        made.vm = Some(replica.clone());
        for (vbd, snapshot_vdi) in ctx.source.disks(snap).await? {
            let origin = live_disks
                .iter()
                .find(|(_, live)| live.reference == snapshot_vdi.snapshot_of)
                .map(|(_, live)| live)
                .ok_or_else(|| {
                    Error::Protocol(format!("snapshot VDI {} copies no disk of the VM", snapshot_vdi.uuid))
                })?;
            let bootable = records.vbds.get(&vbd.reference).and_then(|r| r.get("bootable")).and_then(Json::as_bool);
            let vdi = create_vdi(client, &ctx.sr, &origin.name_label, "", snapshot_vdi.virtual_size, &mut made).await?;
            create_vbd(client, &replica, &vdi, &vbd.userdevice, bootable.unwrap_or(false), &mut made).await?;
            let replica_vdi = ctx.target.vdi(&vdi).await?;
            let job = disk_job(ctx, vm, &vbd.userdevice, origin, &snapshot_vdi, &replica_vdi);
            report.disks.push(job.full().await?);
        }
        report.warnings.extend(create_vifs(ctx, &replica, &records.vifs, &records.networks).await?);
        Ok::<_, Error>(replica)
    }
    .await;
    let replica = match created {
        Ok(replica) => replica,
        Err(e) => return Err(Error::Restore(made.undo(client, e.into_restore()).await)),
    };
    report.replica_uuid = ctx.target.vm(&replica).await?.uuid;
    report.replica_name = name;
    report.removed.extend(retention(ctx, &vm.uuid).await);
    Ok(report.replica_uuid.clone())
}

impl Error {
    /// As the restore crate's error, for its clean-up to wrap.
    fn into_restore(self) -> xenvault_restore::Error {
        match self {
            Error::Restore(e) => e,
            other => xenvault_restore::Error::Target(other.to_string()),
        }
    }
}

fn disk_job<'a>(
    ctx: &'a Ctx<'_>,
    vm: &'a Vm,
    position: &'a str,
    origin: &'a Vdi,
    snapshot: &'a Vdi,
    replica: &'a Vdi,
) -> DiskJob<'a> {
    DiskJob {
        source: ctx.source,
        target: ctx.target,
        vm_uuid: &vm.uuid,
        label: format!("{} disk {position} (replication)", vm.name_label),
        position,
        origin,
        snapshot,
        replica,
        nbd_connections: ctx.options.nbd_connections,
        progress: ctx.progress.clone(),
        cancel: &ctx.options.cancel,
    }
}

/// The `VM.create` argument of a replica: the source VM's record, renamed, marked as a
/// replica of `vm_uuid` by `job`, start blocked, without references into the source pool.
pub(crate) fn replica_spec(
    stored: &serde_json::Map<String, Json>,
    name: &str,
    vm_uuid: &str,
    job: &str,
    replicated_at: &str,
) -> Json {
    let mut spec = new_vm_spec(stored, name, false);
    let Some(fields) = spec.as_object_mut() else { return spec };
    for field in ["affinity", "suspend_SR", "suspend_VDI", "appliance", "snapshot_schedule", "protection_policy"] {
        fields.insert(field.into(), Json::from(records::NULL_REF));
    }
    let mut other: serde_json::Map<String, Json> =
        fields.get("other_config").and_then(Json::as_object).cloned().unwrap_or_default();
    other.retain(|k, _| !RUN_KEYS.contains(&k.as_str()) && !k.starts_with("xenvault."));
    other.insert(tags::REPLICA_OF.into(), Json::from(vm_uuid));
    other.insert(tags::REPLICA_JOB.into(), Json::from(job));
    other.insert(tags::REPLICATED_AT.into(), Json::from(replicated_at));
    fields.insert("other_config".into(), Json::Object(other));
    let blocked: serde_json::Map<String, Json> =
        tags::BLOCKED.iter().map(|op| ((*op).to_owned(), Json::from(tags::START_BLOCKED))).collect();
    fields.insert("blocked_operations".into(), Json::Object(blocked));
    let mut labels: Vec<Json> = fields.get("tags").and_then(Json::as_array).cloned().unwrap_or_default();
    if !labels.iter().any(|t| t == tags::REPLICA_TAG) {
        labels.push(Json::from(tags::REPLICA_TAG));
    }
    fields.insert("tags".into(), Json::Array(labels));
    spec
}

/// The source VM's VIFs on the replica, on the mapped network, else the target's network
/// of the same uuid or name; a VIF with no network there is left out (returned warnings).
pub(crate) async fn create_vifs(
    ctx: &Ctx<'_>,
    replica: &str,
    vifs: &BTreeMap<String, serde_json::Map<String, Json>>,
    networks: &BTreeMap<String, serde_json::Map<String, Json>>,
) -> Result<Vec<String>, Error> {
    let mut warnings = Vec::new();
    for vif in vifs.values() {
        let text =
            |r: &serde_json::Map<String, Json>, k: &str| r.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
        let network = networks.get(&text(vif, "network"));
        let (uuid, name) = network.map(|n| (text(n, "uuid"), text(n, "name_label"))).unwrap_or_default();
        let Some(target_network) = network_on_target(ctx.target, &ctx.options.network_map, &uuid, &name).await? else {
            warnings.push(format!(
                "VIF {} (MAC {}) not replicated: no network {name:?} ({uuid}) in the target pool; map it to one",
                text(vif, "device"),
                text(vif, "MAC")
            ));
            continue;
        };
        let spec = json!({
            "device": text(vif, "device"), "network": target_network, "VM": replica, "MAC": text(vif, "MAC"),
            "MTU": vif.get("MTU").cloned().unwrap_or(Json::from(1500)), "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
        });
        call_ref(ctx.target, "VIF.create", vec![to_value(&spec)?]).await?;
    }
    Ok(warnings)
}

/// The target network for a source network (uuid, name): mapped, else the same uuid,
/// else the same name.
pub(crate) async fn network_on_target(
    target: &Host,
    map: &[(String, String)],
    uuid: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    let mapped = map.iter().find(|(from, _)| from == uuid).or_else(|| map.iter().find(|(from, _)| from == name));
    if let Some((from, to)) = mapped {
        let network = by_uuid(target.client(), "network", to).await?;
        return network
            .map(Some)
            .ok_or_else(|| Error::Refused(format!("network mapping {from}={to}: no network with uuid {to}")));
    }
    if let Some(network) = by_uuid(target.client(), "network", uuid).await? {
        return Ok(Some(network));
    }
    let named = target.call("network.get_by_name_label", vec![name.into()]).await?;
    Ok(named.as_array().and_then(|n| n.first()).and_then(Value::as_str).map(str::to_owned))
}

pub(crate) async fn call_ref(host: &Host, method: &str, args: Vec<Value>) -> Result<String, Error> {
    let answer = host.call(method, args).await?;
    answer.as_str().map(str::to_owned).ok_or_else(|| Error::Protocol(format!("{method} returned {answer:?}")))
}

/// Brings `replica` to the content of `snap`: snapshot the replica, write what changed
/// since `base` onto each of its disks, and revert it to that snapshot when this fails.
async fn update(
    ctx: &Ctx<'_>,
    vm: &Vm,
    snap: &Vm,
    live_disks: &[(Vbd, Vdi)],
    base: Option<&BTreeMap<String, Vdi>>,
    replica: &Vm,
    report: &mut VmReplication,
) -> Result<String, Error> {
    report.kind = Some(Kind::Incremental);
    (report.replica_uuid, report.replica_name) = (replica.uuid.clone(), replica.name_label.clone());
    let replica_disks: BTreeMap<String, Vdi> =
        ctx.target.disks(replica).await?.into_iter().map(|(vbd, vdi)| (vbd.userdevice, vdi)).collect();
    // Everything is checked before the replica is touched.
    let mut work = Vec::new();
    for (vbd, snapshot_vdi) in ctx.source.disks(snap).await? {
        let origin = live_disks
            .iter()
            .find(|(_, live)| live.reference == snapshot_vdi.snapshot_of)
            .map(|(_, live)| live.clone())
            .ok_or_else(|| Error::Protocol(format!("snapshot VDI {} copies no disk of the VM", snapshot_vdi.uuid)))?;
        let target = replica_disks
            .get(&vbd.userdevice)
            .filter(|t| t.virtual_size == snapshot_vdi.virtual_size)
            .cloned()
            .ok_or_else(|| {
                Error::Refused(format!(
                    "replica {} has no disk of {} bytes at position {}: the VM's disks changed, replicate it in full mode",
                    replica.uuid, snapshot_vdi.virtual_size, vbd.userdevice
                ))
            })?;
        let base_vdi = base.and_then(|b| b.get(&origin.reference)).cloned();
        work.push((vbd.userdevice, origin, snapshot_vdi, target, base_vdi));
    }
    let guard = snapshot_replica(ctx.target, replica).await?;
    report.replica_snapshot = Some(guard.uuid.clone());
    let written = async {
        for (position, origin, snapshot_vdi, target, base_vdi) in &work {
            if ctx.options.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let job = disk_job(ctx, vm, position, origin, snapshot_vdi, target);
            report.disks.push(job.update(base_vdi.as_ref()).await?);
        }
        ctx.target.add_to_other_config("VM", &replica.reference, tags::REPLICATED_AT, &snap.snapshot_time).await?;
        Ok(())
    }
    .await;
    if let Err(e) = written {
        return Err(roll_back(ctx.target, &guard, e, report).await);
    }
    report.removed.extend(prune_replica_snapshots(ctx.target, replica, ctx.options.keep).await);
    Ok(replica.uuid.clone())
}

/// Takes the snapshot of `replica` an update can be reverted to.
pub(crate) async fn snapshot_replica(target: &Host, replica: &Vm) -> Result<Vm, Error> {
    let name =
        format!("[xenvault replica] {} {}", replica.name_label, chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    let reference = call_ref(target, "VM.snapshot", vec![replica.reference.as_str().into(), name.into()]).await?;
    target.add_to_other_config("VM", &reference, tags::REPLICA_SNAPSHOT, "1").await?;
    Ok(target.vm(&reference).await?)
}

/// After a failed update: the replica back to `guard` (`VM.revert`), and the error saying so.
pub(crate) async fn roll_back(target: &Host, guard: &Vm, error: Error, report: &mut VmReplication) -> Error {
    match target.call("VM.revert", vec![guard.reference.as_str().into()]).await {
        Ok(_) => {
            report.rolled_back = true;
            tracing::warn!(error = %error, snapshot = %guard.uuid, "replica update failed: reverted");
            Error::Refused(format!(
                "{error}; the replica was reverted to its snapshot {} (its last good state)",
                guard.uuid
            ))
        }
        Err(e) => Error::Refused(format!(
            "{error}; the replica could NOT be reverted to its snapshot {} ({e}): revert it by hand",
            guard.uuid
        )),
    }
}

/// Removes the oldest snapshots of `replica` beyond `keep`; returns their uuids.
pub(crate) async fn prune_replica_snapshots(target: &Host, replica: &Vm, keep: usize) -> Vec<String> {
    let mut snapshots = Vec::new();
    let Ok(fresh) = target.vm(&replica.reference).await else { return Vec::new() };
    for reference in &fresh.snapshots {
        if let Ok(s) = target.vm(reference).await
            && s.other_config.contains_key(tags::REPLICA_SNAPSHOT)
        {
            snapshots.push(s);
        }
    }
    snapshots.sort_by(|a, b| b.snapshot_time.cmp(&a.snapshot_time).then_with(|| b.name_label.cmp(&a.name_label)));
    let mut removed = Vec::new();
    for old in snapshots.into_iter().skip(keep) {
        snapshot::destroy(target, &old.reference).await;
        removed.push(old.uuid);
    }
    removed
}

/// Full mode: removes the oldest replicas of the VM beyond `keep` (with their disks and snapshots).
async fn retention(ctx: &Ctx<'_>, vm_uuid: &str) -> Vec<String> {
    let Ok(replicas) = replicas_of(ctx.target, vm_uuid, &ctx.options.job_id).await else { return Vec::new() };
    let mut removed = Vec::new();
    for old in replicas.into_iter().filter(|r| !r.other_config.contains_key(tags::FAILED_OVER)).skip(ctx.options.keep) {
        match destroy_vm(ctx.target, &old).await {
            Ok(()) => removed.push(old.uuid),
            Err(e) => tracing::warn!(replica = %old.uuid, error = %e, "could not remove an old replica"),
        }
    }
    removed
}

/// Destroys a halted VM with its snapshots and disks.
pub(crate) async fn destroy_vm(host: &Host, vm: &Vm) -> Result<(), Error> {
    for snapshot in &vm.snapshots {
        snapshot::destroy(host, snapshot).await;
    }
    let vdis: Vec<String> = host.disks(vm).await?.into_iter().map(|(_, vdi)| vdi.reference).collect();
    host.call("VM.destroy", vec![vm.reference.as_str().into()]).await?;
    for vdi in vdis {
        host.call("VDI.destroy", vec![vdi.into()]).await?;
    }
    Ok(())
}

/// After a successful copy: the new snapshot becomes the base of the next incremental
/// (metadata-only when CBT over NBD will do, as backups keep theirs), the old base goes.
async fn settle(ctx: &Ctx<'_>, snap: &Vm, replica: &str, report: &mut VmReplication) {
    let source = ctx.source;
    if ctx.options.mode == Mode::Full {
        snapshot::destroy(source, &snap.reference).await;
        return;
    }
    let cbt_ready = !report.disks.is_empty()
        && report.disks.iter().all(|d| d.method != crate::report::Method::VhdDelta)
        && source.disks(snap).await.is_ok_and(|disks| disks.iter().all(|(_, vdi)| vdi.cbt_enabled));
    if cbt_ready {
        report.warnings.extend(snapshot::keep_cbt_metadata_only(source, snap).await);
    }
    if let Err(e) = source.add_to_other_config("VM", &snap.reference, tags::REPLICATION_BASE, replica).await {
        report.warnings.push(format!("could not mark snapshot {} as the next base: {e}", snap.uuid));
        return;
    }
    // The old base: the job's other snapshot left on the VM.
    let Ok(vm) = source.vm(&snap.snapshot_of).await else { return };
    for reference in vm.snapshots.iter().filter(|r| **r != snap.reference) {
        if let Ok(s) = source.vm(reference).await
            && s.other_config.get(tags::REPLICATION) == Some(&ctx.options.job_id)
        {
            snapshot::destroy(source, reference).await;
            report.cleaned_snapshots.push(s.uuid);
        }
    }
}
