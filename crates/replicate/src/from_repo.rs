//! Replication from a repository (`--source repo`): the replica is brought to the newest
//! restore point of its VM, so the pool is read once, by the backup, for both. The first
//! run restores the point as a new VM and marks it as the replica; later runs snapshot the
//! replica and write each stored disk onto the replica's disk with a differential restore
//! (only the sectors that differ), reverting the replica when that fails.

use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use xenvault_pool::Value;
use xenvault_pool::host::{Host, by_uuid};
use xenvault_repo::{Manifest, Repository};
use xenvault_restore::disk::{DiskRestoreOptions, DiskTarget, Identity, restore_disk};
use xenvault_restore::vm::{Macs, Mode as RestoreMode, VmRestoreOptions, restore_vm};
use xenvault_types::progress::Progress;

use crate::replicate::{prune_replica_snapshots, replicas_of, roll_back, snapshot_replica};
use crate::report::{DiskReplication, Kind, Method, ReplicationReport, Status, VmReplication};
use crate::{Error, tags};

#[derive(Debug, Clone, Default)]
pub struct RepoReplicateOptions {
    /// Source VMs by uuid or name, as the restore points name them.
    pub vms: Vec<String>,
    /// The SR (uuid) on the target pool for a new replica's disks.
    pub target_sr: String,
    /// Snapshots kept per replica (at least 1).
    pub keep: usize,
    pub job_id: String,
    pub run_id: Option<String>,
    /// A new replica's VIFs: stored network uuid or name -> target network uuid.
    pub network_map: Vec<(String, String)>,
    pub cancel: CancellationToken,
}

/// Brings the replica of each VM to its newest restore point in `repo`.
pub async fn replicate_from_repo(
    repo: &Repository,
    target: &Host,
    options: &RepoReplicateOptions,
    progress: Arc<dyn Progress>,
) -> Result<ReplicationReport, Error> {
    let (started_at, started) = (chrono::Utc::now(), Instant::now());
    if options.keep == 0 {
        return Err(Error::Refused("keep must be at least 1".into()));
    }
    if by_uuid(target.client(), "SR", &options.target_sr).await?.is_none() {
        return Err(Error::Refused(format!("the target pool has no SR with uuid {}", options.target_sr)));
    }
    let points = repo.restore_points().await?;
    let run_id = options.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut vms = Vec::new();
    for wanted in &options.vms {
        let newest = points
            .iter()
            .filter(|m| m.source.id.eq_ignore_ascii_case(wanted) || &m.source.name == wanted)
            .max_by_key(|m| m.time);
        let t = Instant::now();
        let mut report = match newest {
            Some(m) => {
                let mut report = VmReplication::new(&m.source.id, &m.source.name);
                report.source_point = m.id.clone();
                let identity = Identity { job_id: Some(options.job_id.clone()), run_id: Some(run_id.clone()) };
                if let Err(e) = replicate_point(repo, target, m, options, identity, &progress, &mut report).await {
                    (report.status, report.error) = (Status::Failed, Some(e.to_string()));
                }
                report
            }
            None => {
                let mut report = VmReplication::new("", wanted);
                (report.status, report.error) =
                    (Status::Failed, Some(format!("the repository has no restore point of a VM {wanted:?}")));
                report
            }
        };
        report.duration_secs = t.elapsed().as_secs_f64();
        vms.push(report);
    }
    Ok(ReplicationReport {
        job_id: options.job_id.clone(),
        run_id,
        source: repo.location().to_owned(),
        target_pool: target.pool_name.clone(),
        target_sr: options.target_sr.clone(),
        started: started_at.to_rfc3339(),
        duration_secs: started.elapsed().as_secs_f64(),
        vms,
    })
}

async fn replicate_point(
    repo: &Repository,
    target: &Host,
    m: &Manifest,
    options: &RepoReplicateOptions,
    identity: Identity,
    progress: &Arc<dyn Progress>,
    report: &mut VmReplication,
) -> Result<(), Error> {
    let client = target.client();
    let Some(replica) = replicas_of(target, &m.source.id, &options.job_id).await?.into_iter().next() else {
        report.kind = Some(Kind::Full);
        let restore = VmRestoreOptions {
            mode: RestoreMode::AsNew,
            sr: Some(options.target_sr.clone()),
            network_map: options.network_map.clone(),
            macs: Macs::Keep,
            cancel: options.cancel.clone(),
            identity,
            ..Default::default()
        };
        let restored = restore_vm(client, repo, m, &restore, progress.clone()).await?;
        report.warnings.extend(restored.warnings);
        report.disks = restored
            .disks
            .iter()
            .map(|d| DiskReplication {
                position: d.position.clone(),
                source_vdi_uuid: m.disk(Some(&d.position)).map(|r| r.uuid.clone()).unwrap_or_default(),
                replica_vdi_uuid: d.vdi_uuid.clone(),
                size: d.size,
                method: Method::Repository,
                reason: format!("restore point {} restored as a new VM", m.short_id()),
                bytes_read: d.bytes_written,
                bytes_written: d.bytes_written,
                bytes_sent: d.bytes_sent,
                seconds: d.seconds,
            })
            .collect();
        let name = format!("{} - {} - {}", m.source.name, options.job_id, chrono::Utc::now().format("%Y-%m-%d %H:%M"));
        let marked = mark_as_replica(target, &restored.vm_uuid, &name, m, &options.job_id).await;
        if let Err(e) = marked {
            if let Some(vm) = by_uuid(client, "VM", &restored.vm_uuid).await? {
                crate::replicate::destroy_vm(target, &target.vm(&vm).await?).await?;
            }
            return Err(e);
        }
        (report.replica_uuid, report.replica_name) = (restored.vm_uuid, name);
        return Ok(());
    };
    (report.replica_uuid, report.replica_name) = (replica.uuid.clone(), replica.name_label.clone());
    if let Some(when) = replica.other_config.get(tags::FAILED_OVER) {
        return Err(Error::Refused(format!(
            "replica {} was failed over at {when}: it is no longer updated",
            replica.uuid
        )));
    }
    if replica.other_config.get(tags::REPLICA_RESTORE_POINT) == Some(&m.id) {
        report.status = Status::UpToDate;
        return Ok(());
    }
    report.kind = Some(Kind::Incremental);
    let replica_disks = target.disks(&replica).await?;
    let mut work = Vec::new();
    for record in &m.disks {
        let position = record.position.to_string();
        let vdi = replica_disks
            .iter()
            .find(|(vbd, vdi)| vbd.userdevice == position && vdi.virtual_size == record.size)
            .map(|(_, vdi)| vdi.uuid.clone())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "replica {} has no disk of {} bytes at position {position}: remove it to replicate anew",
                    replica.uuid, record.size
                ))
            })?;
        work.push((position, record.uuid.clone(), vdi));
    }
    let guard = snapshot_replica(target, &replica).await?;
    report.replica_snapshot = Some(guard.uuid.clone());
    let restore = DiskRestoreOptions { differential: true, force: true, cancel: options.cancel.clone(), identity };
    let written = async {
        for (position, source_vdi_uuid, vdi_uuid) in &work {
            let target_disk = DiskTarget::Existing { vdi_uuid: vdi_uuid.clone() };
            let done = restore_disk(client, repo, m, Some(position), &target_disk, &restore, progress.clone()).await?;
            let d = done.disk;
            report.disks.push(DiskReplication {
                position: position.clone(),
                source_vdi_uuid: source_vdi_uuid.clone(),
                replica_vdi_uuid: vdi_uuid.clone(),
                size: d.size,
                method: Method::Repository,
                reason: format!(
                    "restore point {} written differentially ({}; {} bytes of the replica compared)",
                    m.short_id(),
                    d.method_reason.unwrap_or_default(),
                    d.bytes_compared
                ),
                bytes_read: d.bytes_written,
                bytes_written: d.bytes_written,
                bytes_sent: d.bytes_sent,
                seconds: d.seconds,
            });
        }
        target.add_to_other_config("VM", &replica.reference, tags::REPLICA_RESTORE_POINT, &m.id).await?;
        target.add_to_other_config("VM", &replica.reference, tags::REPLICATED_AT, &m.time.to_rfc3339()).await?;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = written {
        return Err(roll_back(target, &guard, e, report).await);
    }
    report.removed.extend(prune_replica_snapshots(target, &replica, options.keep).await);
    Ok(())
}

/// Names, tags and blocks a VM restored from `m` as the replica job `job` keeps.
async fn mark_as_replica(target: &Host, vm_uuid: &str, name: &str, m: &Manifest, job: &str) -> Result<(), Error> {
    let vm = by_uuid(target.client(), "VM", vm_uuid)
        .await?
        .ok_or_else(|| Error::Protocol(format!("the restored VM {vm_uuid} is gone")))?;
    let at = m.time.to_rfc3339();
    target.call("VM.set_name_label", vec![vm.as_str().into(), name.into()]).await?;
    for (key, value) in [
        (tags::REPLICA_OF, m.source.id.as_str()),
        (tags::REPLICA_JOB, job),
        (tags::REPLICATED_AT, at.as_str()),
        (tags::REPLICA_RESTORE_POINT, m.id.as_str()),
    ] {
        target.add_to_other_config("VM", &vm, key, value).await?;
    }
    let blocked: std::collections::BTreeMap<String, Value> =
        tags::BLOCKED.iter().map(|op| ((*op).to_owned(), Value::from(tags::START_BLOCKED))).collect();
    target.call("VM.set_blocked_operations", vec![vm.as_str().into(), Value::Struct(blocked)]).await?;
    target.call("VM.add_tags", vec![vm.as_str().into(), tags::REPLICA_TAG.into()]).await?;
    Ok(())
}
