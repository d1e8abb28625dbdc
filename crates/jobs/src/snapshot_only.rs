//! Snapshot-only jobs: rolling snapshots on the pool, no repository. Each run snapshots
//! every VM of the selection and keeps the newest `keep` snapshots this job and schedule
//! made of it, destroying older ones with their disks.
//!
//! These snapshots carry their own tags, not the engine's (`xenvault.snapshot`): the
//! engine's hygiene and the server's crash cleanup remove snapshots with those, and a
//! rolling snapshot is meant to stay.

use xenvault_engine::Value;
use xenvault_pool::host::Host;
use xenvault_pool::hygiene::RUN_KEYS;
use xenvault_pool::records::Vm;
use xenvault_pool::snapshot;

/// On a rolling snapshot: the job that made it.
pub const TAG_JOB: &str = "xenvault.rolling.job";
/// On a rolling snapshot: the schedule that made it ([`MANUAL`] for runs started by hand).
pub const TAG_SCHEDULE: &str = "xenvault.rolling.schedule";
/// On a rolling snapshot: when it was taken (RFC 3339, milliseconds): xapi's
/// `snapshot_time` has whole seconds, too coarse to order runs close together.
pub const TAG_TAKEN: &str = "xenvault.rolling.taken";
/// The schedule tag of a run started by hand.
pub const MANUAL: &str = "manual";

/// What one VM's run did.
#[derive(Debug, Clone)]
pub struct Rolled {
    /// The new snapshot's name label and uuid.
    pub name: String,
    pub uuid: String,
    /// Older snapshots of this job and schedule destroyed (uuids).
    pub removed: Vec<String>,
    /// Snapshots of this job and schedule there now, the new one included.
    pub kept: usize,
}

/// Snapshots `vm`, tags the snapshot as this job's and schedule's, then destroys all but
/// the newest `keep` of them.
pub async fn roll(host: &Host, vm: &Vm, job_id: &str, schedule_id: &str, keep: u32) -> Result<Rolled, String> {
    let taken = chrono::Utc::now();
    let name = format!("[xenvault rolling] {} {}", vm.name_label, taken.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    let created = host
        .call("VM.snapshot", vec![Value::from(vm.reference.as_str()), Value::from(name.as_str())])
        .await
        .map_err(|e| format!("VM.snapshot: {e}"))?;
    let reference = created
        .as_str()
        .filter(|r| r.starts_with("OpaqueRef:"))
        .ok_or_else(|| format!("VM.snapshot returned {created:?}"))?
        .to_owned();
    let tagged = async {
        let stamp = taken.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for (key, value) in [(TAG_JOB, job_id), (TAG_SCHEDULE, schedule_id), (TAG_TAKEN, stamp.as_str())] {
            host.add_to_other_config("VM", &reference, key, value).await?;
        }
        // xapi copies the VM's other_config: a backup's lock on the VM is not the snapshot's.
        for key in RUN_KEYS {
            host.call("VM.remove_from_other_config", vec![Value::from(reference.as_str()), Value::from(key)]).await?;
        }
        host.vm(&reference).await
    };
    let snap = match tagged.await {
        Ok(snap) => snap,
        Err(e) => {
            snapshot::destroy(host, &reference).await;
            return Err(format!("tagging the snapshot: {e}"));
        }
    };

    let mine = rolling_snapshots(host, vm, job_id, schedule_id).await?;
    let mut removed = Vec::new();
    for old in mine.iter().skip(keep as usize) {
        snapshot::destroy(host, &old.reference).await;
        removed.push(old.uuid.clone());
    }
    // What is there now: a snapshot that could not be destroyed is still counted.
    let kept = rolling_snapshots(host, vm, job_id, schedule_id).await?.len();
    Ok(Rolled { name, uuid: snap.uuid, removed, kept })
}

/// The rolling snapshots of `vm` this job and schedule made, newest first.
pub async fn rolling_snapshots(host: &Host, vm: &Vm, job_id: &str, schedule_id: &str) -> Result<Vec<Vm>, String> {
    let vm = host.vm(&vm.reference).await.map_err(|e| format!("reading the VM: {e}"))?;
    let mut mine = Vec::new();
    for reference in &vm.snapshots {
        match host.vm(reference).await {
            Ok(snap)
                if snap.other_config.get(TAG_JOB).is_some_and(|j| j == job_id)
                    && snap.other_config.get(TAG_SCHEDULE).is_some_and(|s| s == schedule_id) =>
            {
                mine.push(snap)
            }
            Ok(_) => {}
            // Destroyed meanwhile (by another run, by hand).
            Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => {}
            Err(e) => return Err(format!("reading snapshot {reference}: {e}")),
        }
    }
    // RFC 3339 with a fixed format and UTC: text order is time order.
    mine.sort_by(|a, b| b.other_config.get(TAG_TAKEN).cmp(&a.other_config.get(TAG_TAKEN)));
    Ok(mine)
}
