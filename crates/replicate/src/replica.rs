//! Replicas on a pool: listing them, failing one over (it becomes the VM: start unblocked,
//! networks mapped, optionally started, no update touches it again) and testing one (a
//! clone boots on a new network without PIFs, then goes; the replica is not touched).

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use xenvault_pool::Value;
use xenvault_pool::host::{Host, by_uuid};
use xenvault_pool::inventory;
use xenvault_pool::records::Vm;

use crate::replicate::{call_ref, destroy_vm};
use crate::{Error, tags};

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaInfo {
    pub uuid: String,
    pub name_label: String,
    /// The source VM's uuid.
    pub replica_of: String,
    pub job_id: String,
    /// When the source snapshot (or restore point) the replica holds was taken.
    pub replicated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_over: Option<String>,
    pub power_state: String,
    /// Snapshots kept to revert an update.
    pub snapshots: Vec<String>,
    pub disks: Vec<ReplicaDisk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaDisk {
    pub position: String,
    pub vdi_uuid: String,
    pub size: u64,
}

/// The replicas on `target` (of the source VM `of`, uuid, when given), by name.
pub async fn list(target: &Host, of: Option<&str>) -> Result<Vec<ReplicaInfo>, Error> {
    let mut out = Vec::new();
    for vm in target.vms().await? {
        let Some(source) = vm.other_config.get(tags::REPLICA_OF) else { continue };
        if vm.is_a_snapshot || of.is_some_and(|of| of != source) {
            continue;
        }
        out.push(info(target, &vm).await?);
    }
    out.sort_by(|a, b| a.name_label.cmp(&b.name_label).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(out)
}

async fn info(target: &Host, vm: &Vm) -> Result<ReplicaInfo, Error> {
    let tag = |k: &str| vm.other_config.get(k).cloned();
    let mut snapshots = Vec::new();
    for reference in &vm.snapshots {
        let s = target.vm(reference).await?;
        if s.other_config.contains_key(tags::REPLICA_SNAPSHOT) {
            snapshots.push(s.uuid);
        }
    }
    let disks = target
        .disks(vm)
        .await?
        .into_iter()
        .map(|(vbd, vdi)| ReplicaDisk { position: vbd.userdevice, vdi_uuid: vdi.uuid, size: vdi.virtual_size })
        .collect();
    Ok(ReplicaInfo {
        uuid: vm.uuid.clone(),
        name_label: vm.name_label.clone(),
        replica_of: tag(tags::REPLICA_OF).unwrap_or_default(),
        job_id: tag(tags::REPLICA_JOB).unwrap_or_default(),
        replicated_at: tag(tags::REPLICATED_AT).unwrap_or_default(),
        restore_point: tag(tags::REPLICA_RESTORE_POINT),
        failed_over: tag(tags::FAILED_OVER),
        power_state: vm.power_state.clone(),
        snapshots,
        disks,
    })
}

/// The replica with uuid `uuid`, or a refusal saying what it is instead.
async fn replica(target: &Host, uuid: &str) -> Result<Vm, Error> {
    let reference = by_uuid(target.client(), "VM", uuid)
        .await?
        .ok_or_else(|| Error::Refused(format!("the pool has no VM with uuid {uuid}")))?;
    let vm = target.vm(&reference).await?;
    if vm.is_a_snapshot || !vm.other_config.contains_key(tags::REPLICA_OF) {
        return Err(Error::Refused(format!("VM {} ({uuid}) is not a replica", vm.name_label)));
    }
    Ok(vm)
}

#[derive(Debug, Clone, Default)]
pub struct FailoverOptions {
    /// Network uuid or name the replica's VIFs are on -> network uuid to move them to.
    pub network_map: Vec<(String, String)>,
    pub start: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub uuid: String,
    pub name_label: String,
    pub replica_of: String,
    pub failed_over: String,
    /// VIF device -> network uuid it was moved to.
    pub networks_mapped: BTreeMap<String, String>,
    pub power_state: String,
}

/// Fails `uuid` over: start unblocked, VIFs moved as mapped, marked so no replication
/// updates it again, then started when asked.
pub async fn failover(target: &Host, uuid: &str, options: &FailoverOptions) -> Result<FailoverReport, Error> {
    let vm = replica(target, uuid).await?;
    if let Some(when) = vm.other_config.get(tags::FAILED_OVER) {
        return Err(Error::Refused(format!("replica {uuid} was failed over already, at {when}")));
    }
    let mut mapped = Vec::new();
    for (from, to) in &options.network_map {
        let network = by_uuid(target.client(), "network", to)
            .await?
            .ok_or_else(|| Error::Refused(format!("network mapping {from}={to}: no network with uuid {to}")))?;
        mapped.push((from.clone(), network, to.clone()));
    }
    let when = chrono::Utc::now().to_rfc3339();
    // Marked first: from here on no update writes over what the failed-over VM does.
    target.add_to_other_config("VM", &vm.reference, tags::FAILED_OVER, &when).await?;
    for op in tags::BLOCKED {
        target.call("VM.remove_from_blocked_operations", vec![vm.reference.as_str().into(), op.into()]).await?;
    }
    let mut networks_mapped = BTreeMap::new();
    for vif in &vm.vifs {
        let record = target.record("VIF", vif).await?;
        let field = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let network = field("network");
        let (net_uuid, net_name) = (
            target
                .call("network.get_uuid", vec![network.as_str().into()])
                .await?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            target
                .call("network.get_name_label", vec![network.as_str().into()])
                .await?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let Some((_, new_network, new_uuid)) =
            mapped.iter().find(|(from, _, _)| *from == net_uuid || *from == net_name)
        else {
            continue;
        };
        move_vif(target, &vm.reference, vif, &field("device"), &field("MAC"), new_network).await?;
        networks_mapped.insert(field("device"), new_uuid.clone());
    }
    if options.start {
        inventory::start_vm(target.client(), uuid).await?;
    }
    let fresh = target.vm(&vm.reference).await?;
    Ok(FailoverReport {
        uuid: uuid.to_owned(),
        name_label: fresh.name_label,
        replica_of: vm.other_config.get(tags::REPLICA_OF).cloned().unwrap_or_default(),
        failed_over: when,
        networks_mapped,
        power_state: fresh.power_state,
    })
}

/// Re-creates VIF `vif` of `vm` (same device; `mac` empty: a new one) on `network`.
async fn move_vif(target: &Host, vm: &str, vif: &str, device: &str, mac: &str, network: &str) -> Result<(), Error> {
    target.call("VIF.destroy", vec![vif.into()]).await?;
    let spec: BTreeMap<String, Value> = [
        ("device", Value::from(device)),
        ("network", Value::from(network)),
        ("VM", Value::from(vm)),
        ("MAC", Value::from(mac)),
        ("MTU", Value::Int(1500)),
        ("other_config", Value::Struct(BTreeMap::new())),
        ("qos_algorithm_type", Value::from("")),
        ("qos_algorithm_params", Value::Struct(BTreeMap::new())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    call_ref(target, "VIF.create", vec![Value::Struct(spec)]).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub replica_uuid: String,
    pub clone_uuid: String,
    /// The network made for the test (no PIF: nothing outside can be reached).
    pub network_uuid: String,
    pub started: bool,
    /// The clone's power state once started.
    pub power_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds_to_start: f64,
    /// The clone, its disks and the network were removed again.
    pub cleaned_up: bool,
    /// The replica's disks and snapshots are the same before and after.
    pub replica_untouched: bool,
}

/// Boots a clone of replica `uuid` on a new isolated network, then removes the clone and
/// the network. A start that fails is in the report, not an `Err`.
pub async fn test(target: &Host, uuid: &str) -> Result<TestReport, Error> {
    let vm = replica(target, uuid).await?;
    let before = chain(target, &vm).await?;
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S");
    let network_spec: BTreeMap<String, Value> = [
        ("name_label", Value::from(format!("xenvault replica test {stamp}"))),
        ("name_description", Value::from(format!("isolated network of a test of replica {uuid}"))),
        ("MTU", Value::Int(1500)),
        ("other_config", Value::Struct(BTreeMap::new())),
        ("tags", Value::Array(Vec::new())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let network = call_ref(target, "network.create", vec![Value::Struct(network_spec)]).await?;
    let network_uuid =
        target.call("network.get_uuid", vec![network.as_str().into()]).await?.as_str().unwrap_or_default().to_owned();
    let name = format!("[xenvault test] {} {stamp}", vm.name_label);
    let clone = match call_ref(target, "VM.clone", vec![vm.reference.as_str().into(), name.into()]).await {
        Ok(clone) => clone,
        Err(e) => {
            let _ = target.call("network.destroy", vec![network.as_str().into()]).await;
            return Err(e);
        }
    };
    let started_at = Instant::now();
    let booted = boot_isolated(target, &clone, uuid, &network).await;
    let seconds_to_start = started_at.elapsed().as_secs_f64();
    let clone_vm = target.vm(&clone).await?;
    let clone_uuid = clone_vm.uuid.clone();
    let power_state = clone_vm.power_state.clone();
    let cleaned = async {
        if power_state != "Halted" {
            target.call("VM.hard_shutdown", vec![clone.as_str().into()]).await?;
        }
        destroy_vm(target, &target.vm(&clone).await?).await?;
        target.call("network.destroy", vec![network.as_str().into()]).await?;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = &cleaned {
        tracing::warn!(clone = %clone_uuid, error = %e, "could not remove the test clone");
    }
    let after = chain(target, &target.vm(&vm.reference).await?).await?;
    Ok(TestReport {
        replica_uuid: uuid.to_owned(),
        clone_uuid,
        network_uuid,
        started: booted.is_ok(),
        power_state,
        error: booted.err().map(|e| e.to_string()),
        seconds_to_start,
        cleaned_up: cleaned.is_ok(),
        replica_untouched: before == after,
    })
}

/// Moves the clone's VIFs to `network`, unblocks and unmarks it, and starts it.
async fn boot_isolated(target: &Host, clone: &str, replica_uuid: &str, network: &str) -> Result<(), Error> {
    let vm = target.vm(clone).await?;
    target.call("VM.remove_from_other_config", vec![clone.into(), tags::REPLICA_OF.into()]).await?;
    target.add_to_other_config("VM", clone, tags::REPLICA_TEST, replica_uuid).await?;
    target.call("VM.set_blocked_operations", vec![clone.into(), Value::Struct(BTreeMap::new())]).await?;
    for vif in &vm.vifs {
        let record = target.record("VIF", vif).await?;
        let device = record.get("device").and_then(Value::as_str).unwrap_or("0").to_owned();
        move_vif(target, clone, vif, &device, "", network).await?;
    }
    target.call("VM.start", vec![clone.into(), false.into(), false.into()]).await?;
    Ok(())
}

/// What a test must leave as it was: the replica's disks (VDI uuids) and snapshots.
async fn chain(target: &Host, vm: &Vm) -> Result<(Vec<String>, Vec<String>), Error> {
    let disks = target.disks(vm).await?.into_iter().map(|(_, vdi)| vdi.uuid).collect();
    Ok((disks, vm.snapshots.clone()))
}
