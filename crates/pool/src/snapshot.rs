//! Taking and removing our VM snapshots.

use xenvault_xapi_wire::Value;

use crate::error::Error;
use crate::host::Host;
use crate::hygiene::{RUN_KEYS, TAG_JOB, TAG_SNAPSHOT, TAG_SNAPSHOT_INTENT, TAG_SNAPSHOT_VM};
use crate::records::{self, Vm};

/// A snapshot we made, and how.
#[derive(Debug, Clone)]
pub struct Taken {
    pub vm: Vm,
    pub quiesced: bool,
    /// Why a requested quiesce did not happen.
    pub note: Option<String>,
}

/// Snapshots `vm`, quiesced if asked and the guest supports it, else plain (and says
/// so), then tags it as ours before anything else can fail. The intent is on the VM
/// before the call (see [`TAG_SNAPSHOT_INTENT`]) and goes once the tags are on.
pub async fn take(host: &Host, vm: &Vm, job_id: &str, quiesce: bool) -> Result<Taken, Error> {
    let name = format!("[xenvault] {} {}", vm.name_label, chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    // Fresh: the cleanup before this run may have rewritten the pending intents.
    let mut intents = intents(&host.vm(&vm.reference).await?);
    intents.push(Intent { name: name.clone(), at: chrono::Utc::now() });
    write_intents(host, vm, &intents).await?;
    let args = || vec![Value::from(vm.reference.as_str()), Value::from(name.as_str())];
    let (reference, quiesced, note) = if quiesce {
        match host.call("VM.snapshot_with_quiesce", args()).await {
            Ok(r) => (r, true, None),
            Err(e) if e.xapi_code().is_some() => {
                let note = format!("quiesced snapshot refused ({e}): plain snapshot taken");
                (host.call("VM.snapshot", args()).await?, false, Some(note))
            }
            Err(e) => return Err(e),
        }
    } else {
        (host.call("VM.snapshot", args()).await?, false, None)
    };
    let reference = reference
        .as_str()
        .filter(|r| r.starts_with("OpaqueRef:"))
        .ok_or_else(|| Error::Protocol(format!("VM.snapshot returned {reference:?}")))?
        .to_owned();
    let tagged = async {
        host.add_to_other_config("VM", &reference, TAG_SNAPSHOT, "1").await?;
        host.add_to_other_config("VM", &reference, TAG_JOB, job_id).await?;
        for key in RUN_KEYS {
            host.call("VM.remove_from_other_config", vec![Value::from(reference.as_str()), Value::from(key)]).await?;
        }
        forget_intent(host, vm, &name).await?;
        host.vm(&reference).await
    };
    match tagged.await {
        Ok(vm) => Ok(Taken { vm, quiesced, note }),
        Err(e) => {
            destroy(host, &reference).await;
            Err(e)
        }
    }
}

/// Removes a snapshot VM and its snapshot disks, never a VDI that is not a snapshot
/// (a shared ISO, a disk of the live VM). Best effort: a failure is logged, and the
/// next run's hygiene finds the snapshot by its tag.
pub async fn destroy(host: &Host, snapshot: &str) {
    if let Err(e) = try_destroy(host, snapshot).await {
        tracing::warn!("could not remove snapshot {snapshot}: {e}");
    }
}

async fn try_destroy(host: &Host, snapshot: &str) -> Result<(), Error> {
    let vm = host.vm(snapshot).await?;
    if !vm.is_a_snapshot {
        return Err(Error::Protocol(format!("{snapshot} is not a snapshot: not removing it")));
    }
    let mut vdis: Vec<String> = host.disks(&vm).await?.into_iter().map(|(vbd, _)| vbd.vdi).collect();
    // Metadata-only VDIs lost their VBD: they carry the snapshot's uuid instead.
    for (reference, record) in records::all_records(&host.call("VDI.get_all_records", vec![]).await?) {
        let vdi = records::Vdi::parse(&reference, record);
        if vdi.other_config.get(TAG_SNAPSHOT_VM) == Some(&vm.uuid) && !vdis.contains(&reference) {
            vdis.push(reference);
        }
    }
    host.call("VM.destroy", vec![Value::from(snapshot)]).await?;
    for vdi in vdis {
        destroy_snapshot_vdi(host, &vdi).await?;
    }
    Ok(())
}

/// Destroys one snapshot VDI (data or CBT metadata); refuses a VDI that is not a snapshot.
pub async fn destroy_snapshot_vdi(host: &Host, vdi: &str) -> Result<(), Error> {
    match host.vdi(vdi).await {
        Ok(record) if record.is_a_snapshot => host.call("VDI.destroy", vec![Value::from(vdi)]).await.map(drop),
        Ok(_) => Ok(()),
        // Already gone (destroyed with its VM by the host): nothing to do.
        Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Frees the data of a snapshot's disks, keeping their CBT logs: `VDI.data_destroy`
/// wants the VDI without VBDs, so each VDI is tagged with the snapshot first (to be
/// found when the snapshot goes) and its VBD removed. Returns the failures.
pub async fn keep_cbt_metadata_only(host: &Host, snapshot: &Vm) -> Vec<String> {
    let mut failures = Vec::new();
    let disks = match host.disks(snapshot).await {
        Ok(disks) => disks,
        Err(e) => return vec![format!("reading the snapshot's disks: {e}")],
    };
    for (vbd, vdi) in disks {
        let freed = async {
            host.add_to_other_config("VDI", &vdi.reference, TAG_SNAPSHOT_VM, &snapshot.uuid).await?;
            host.call("VBD.destroy", vec![Value::from(vbd.reference.as_str())]).await?;
            host.call("VDI.data_destroy", vec![Value::from(vdi.reference.as_str())]).await
        };
        if let Err(e) = freed.await {
            failures.push(format!("VDI.data_destroy of {}: {e}", vdi.uuid));
        }
    }
    failures
}

/// How long an intent without its snapshot is kept: xapi goes on creating a snapshot
/// after its client is gone (a killed run), so it may appear after the next run looked.
/// Past this no `VM.snapshot` task is still running.
pub const INTENT_PENDING_FOR: chrono::Duration = chrono::Duration::hours(24);

/// A snapshot about to be taken, recorded on the VM (see [`TAG_SNAPSHOT_INTENT`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Intent {
    pub name: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The intents recorded on `vm`, oldest first. A value that is not a list (a bare
/// name, as earlier versions wrote) is one intent of unknown age.
pub fn intents(vm: &Vm) -> Vec<Intent> {
    match vm.other_config.get(TAG_SNAPSHOT_INTENT) {
        None => Vec::new(),
        Some(value) => serde_json::from_str(value)
            .unwrap_or_else(|_| vec![Intent { name: value.clone(), at: chrono::DateTime::UNIX_EPOCH }]),
    }
}

/// Records `intents` on `vm`, removing the key when there are none. The VM lock is
/// held, so no other run rewrites the list meanwhile.
async fn write_intents(host: &Host, vm: &Vm, intents: &[Intent]) -> Result<(), Error> {
    if intents.is_empty() {
        return host
            .call(
                "VM.remove_from_other_config",
                vec![Value::from(vm.reference.as_str()), Value::from(TAG_SNAPSHOT_INTENT)],
            )
            .await
            .map(drop);
    }
    let value =
        serde_json::to_string(intents).map_err(|e| Error::Protocol(format!("encoding the snapshot intents: {e}")))?;
    host.add_to_other_config("VM", &vm.reference, TAG_SNAPSHOT_INTENT, &value).await
}

/// Drops the intent named `name`, keeping the others (pending ones of killed runs).
async fn forget_intent(host: &Host, vm: &Vm, name: &str) -> Result<(), Error> {
    let mut intents = intents(&host.vm(&vm.reference).await?);
    intents.retain(|i| i.name != name);
    write_intents(host, vm, &intents).await
}

/// Untagged snapshots killed runs left between `VM.snapshot` and tagging: those of
/// `vm` named as one of its recorded intents. An intent whose snapshot is not there
/// stays while xapi may still be creating it ([`INTENT_PENDING_FOR`]); the rest go
/// with [`remove_left_by_intent`].
pub async fn left_by_intent(host: &Host, vm: &Vm) -> Result<Vec<Vm>, Error> {
    let intents = intents(vm);
    let mut list = Vec::new();
    if intents.is_empty() {
        return Ok(list);
    }
    for reference in &vm.snapshots {
        match host.vm(reference).await {
            Ok(s) if intents.iter().any(|i| i.name == s.name_label) && !crate::hygiene::is_ours(&s.other_config) => {
                list.push(s)
            }
            Ok(_) => {}
            Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(list)
}

/// Removes what [`left_by_intent`] found, then the intents that are settled: matched,
/// or too old for their snapshot still to appear.
pub async fn remove_left_by_intent(host: &Host, vm: &Vm, left: &[Vm]) -> Result<(), Error> {
    for snapshot in left {
        try_destroy(host, &snapshot.reference).await?;
    }
    let now = chrono::Utc::now();
    let recorded = intents(vm);
    let pending: Vec<Intent> = recorded
        .iter()
        .filter(|i| !left.iter().any(|s| s.name_label == i.name) && now - i.at < INTENT_PENDING_FOR)
        .cloned()
        .collect();
    if pending != recorded {
        write_intents(host, vm, &pending).await?;
    }
    Ok(())
}

/// Our snapshots of `vm` (every one tagged by us, whatever its state).
pub async fn ours(host: &Host, vm: &Vm) -> Result<Vec<Vm>, Error> {
    let mut list = Vec::new();
    for reference in &vm.snapshots {
        match host.vm(reference).await {
            Ok(snapshot) if crate::hygiene::is_ours(&snapshot.other_config) => list.push(snapshot),
            Ok(_) => {}
            Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(list)
}

/// The snapshot VDIs of a snapshot VM, keyed by the live VDI they were taken from.
pub async fn disks_by_origin(host: &Host, snapshot: &Vm) -> Result<Vec<(String, records::Vdi)>, Error> {
    let mut out = Vec::new();
    for (_, vdi) in host.disks(snapshot).await? {
        out.push((vdi.snapshot_of.clone(), vdi));
    }
    Ok(out)
}
