//! What a pool holds, for someone choosing what to back up or where to restore: VMs,
//! SRs, networks and hosts as serialisable lists, and name-or-uuid lookups whose
//! errors list the candidates.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use xenvault_xapi::Client;
use xenvault_xapi_wire::Value;

use crate::error::Error;
use crate::records::{self, Vbd, Vdi, Vm};

/// A kind of pool object that can be named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Vm,
    Sr,
    Network,
    Host,
    Vdi,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Vm => "VM",
            Kind::Sr => "SR",
            Kind::Network => "network",
            Kind::Host => "host",
            Kind::Vdi => "VDI",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.class())
    }
}

/// One object a lookup could have meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub uuid: String,
    pub name: String,
}

/// Candidates shown in an error; the rest are counted.
const CANDIDATES_SHOWN: usize = 20;

fn listing(candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return "there are none".into();
    }
    let mut text = candidates
        .iter()
        .take(CANDIDATES_SHOWN)
        .map(|c| format!("{} ({})", c.name, c.uuid))
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > CANDIDATES_SHOWN {
        text += &format!(" and {} more", candidates.len() - CANDIDATES_SHOWN);
    }
    text
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("no {kind} matches {wanted:?}; candidates: {}", listing(.candidates))]
    NoMatch { kind: Kind, wanted: String, candidates: Vec<Candidate> },
    #[error("{wanted:?} matches {} {kind}s: {}; give a uuid", .candidates.len(), listing(.candidates))]
    Ambiguous { kind: Kind, wanted: String, candidates: Vec<Candidate> },
}

/// The uuid of the one candidate whose uuid (any case) or exact name is `wanted`.
pub fn choose(kind: Kind, wanted: &str, candidates: Vec<Candidate>) -> Result<String, LookupError> {
    if let Some(c) = candidates.iter().find(|c| c.uuid.eq_ignore_ascii_case(wanted)) {
        return Ok(c.uuid.clone());
    }
    let named: Vec<&Candidate> = candidates.iter().filter(|c| c.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok(one.uuid.clone()),
        [] => Err(LookupError::NoMatch { kind, wanted: wanted.to_owned(), candidates }),
        many => Err(LookupError::Ambiguous {
            kind,
            wanted: wanted.to_owned(),
            candidates: many.iter().map(|c| (*c).clone()).collect(),
        }),
    }
}

/// The uuid of the `kind` object named or identified by `wanted`. VMs are real VMs
/// (no templates, snapshots or control domains), VDIs are not snapshots.
pub async fn resolve(client: &Client, kind: Kind, wanted: &str) -> Result<String, Error> {
    let all = all_records(client, kind.class()).await?;
    let candidates = records::all_records(&all)
        .into_iter()
        .filter(|(_, r)| match kind {
            Kind::Vm => is_real_vm(&Vm::parse("", r)),
            Kind::Vdi => !flag(r, "is_a_snapshot"),
            _ => true,
        })
        .map(|(_, r)| Candidate { uuid: text(r, "uuid"), name: text(r, "name_label") })
        .collect();
    Ok(choose(kind, wanted, candidates)?)
}

/// The newest restore point of a VM, as the inventory shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LastRestorePoint {
    pub id: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub uuid: String,
    pub name: String,
    pub power_state: String,
    /// The host it runs on (empty when halted).
    pub host: String,
    pub tags: Vec<String>,
    pub disks: usize,
    /// Sum of its disks' virtual sizes.
    pub size: u64,
    /// Filled by [`add_restore_points`] when a repository is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_restore_point: Option<LastRestorePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SrInfo {
    pub uuid: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub used: u64,
    pub shared: bool,
    /// The pool's default SR (where new disks go unless told otherwise).
    pub default: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    pub uuid: String,
    pub name: String,
    pub bridge: String,
    /// `nbd` / `insecure_nbd` mark the networks NBD backups read through.
    pub purpose: Vec<String>,
    pub vifs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub uuid: String,
    pub name: String,
    pub address: String,
    pub enabled: bool,
    pub master: bool,
    pub running_vms: usize,
}

fn text(record: &Value, key: &str) -> String {
    record.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn flag(record: &Value, key: &str) -> bool {
    record.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn size(record: &Value, key: &str) -> u64 {
    record.get(key).and_then(Value::as_i64).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

fn is_real_vm(vm: &Vm) -> bool {
    !vm.is_a_template && !vm.is_a_snapshot && !vm.is_control_domain
}

async fn all_records(client: &Client, class: &str) -> Result<Value, Error> {
    Ok(client.call(&format!("{class}.get_all_records"), &[]).await?)
}

/// ref → name_label of every host.
async fn host_names(client: &Client) -> Result<BTreeMap<String, String>, Error> {
    let all = all_records(client, "host").await?;
    Ok(records::all_records(&all).into_iter().map(|(r, v)| (r, text(v, "name_label"))).collect())
}

/// The pool's VMs (no templates, snapshots or control domains), sorted by name.
pub async fn vms(client: &Client) -> Result<Vec<VmInfo>, Error> {
    let (vms, vbds, vdis, hosts) = (
        all_records(client, "VM").await?,
        all_records(client, "VBD").await?,
        all_records(client, "VDI").await?,
        host_names(client).await?,
    );
    let vbds: BTreeMap<String, Vbd> =
        records::all_records(&vbds).into_iter().map(|(r, v)| (r.clone(), Vbd::parse(&r, v))).collect();
    let vdis: BTreeMap<String, Vdi> =
        records::all_records(&vdis).into_iter().map(|(r, v)| (r.clone(), Vdi::parse(&r, v))).collect();
    let mut list: Vec<VmInfo> = records::all_records(&vms)
        .into_iter()
        .map(|(r, v)| Vm::parse(&r, v))
        .filter(is_real_vm)
        .map(|vm| {
            let disks: Vec<&Vdi> = vm
                .vbds
                .iter()
                .filter_map(|r| vbds.get(r))
                .filter(|vbd| vbd.is_disk())
                .filter_map(|vbd| vdis.get(&vbd.vdi))
                .collect();
            VmInfo {
                host: hosts.get(&vm.resident_on).cloned().unwrap_or_default(),
                disks: disks.len(),
                size: disks.iter().map(|d| d.virtual_size).sum(),
                uuid: vm.uuid,
                name: vm.name_label,
                power_state: vm.power_state,
                tags: vm.tags,
                last_restore_point: None,
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

/// Sets each VM's newest restore point among `points`: (VM uuid, restore point) pairs.
pub fn add_restore_points<'a>(vms: &mut [VmInfo], points: impl IntoIterator<Item = (&'a str, LastRestorePoint)>) {
    let points: Vec<_> = points.into_iter().collect();
    for vm in vms {
        vm.last_restore_point = points
            .iter()
            .filter(|(uuid, _)| uuid.eq_ignore_ascii_case(&vm.uuid))
            .max_by_key(|(_, point)| point.time)
            .map(|(_, point)| point.clone());
    }
}

/// The pool's SRs, sorted by name.
pub async fn srs(client: &Client) -> Result<Vec<SrInfo>, Error> {
    let pools = all_records(client, "pool").await?;
    let default_sr = records::all_records(&pools).first().map(|(_, p)| text(p, "default_SR")).unwrap_or_default();
    let all = all_records(client, "SR").await?;
    let mut list: Vec<SrInfo> = records::all_records(&all)
        .into_iter()
        .map(|(r, v)| SrInfo {
            uuid: text(v, "uuid"),
            name: text(v, "name_label"),
            kind: text(v, "type"),
            size: size(v, "physical_size"),
            used: size(v, "physical_utilisation"),
            shared: flag(v, "shared"),
            default: r == default_sr,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

/// The pool's networks, sorted by name.
pub async fn networks(client: &Client) -> Result<Vec<NetworkInfo>, Error> {
    let all = all_records(client, "network").await?;
    let mut list: Vec<NetworkInfo> = records::all_records(&all)
        .into_iter()
        .map(|(_, v)| {
            let list_of = |key| v.get(key).and_then(Value::as_array).unwrap_or_default();
            NetworkInfo {
                uuid: text(v, "uuid"),
                name: text(v, "name_label"),
                bridge: text(v, "bridge"),
                purpose: list_of("purpose").iter().filter_map(|p| p.as_str().map(str::to_owned)).collect(),
                vifs: list_of("VIFs").len(),
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

/// The pool's hosts, sorted by name.
pub async fn hosts(client: &Client) -> Result<Vec<HostInfo>, Error> {
    let pools = all_records(client, "pool").await?;
    let master = records::all_records(&pools).first().map(|(_, p)| text(p, "master")).unwrap_or_default();
    let all = all_records(client, "host").await?;
    let mut list: Vec<HostInfo> = records::all_records(&all)
        .into_iter()
        .map(|(r, v)| HostInfo {
            uuid: text(v, "uuid"),
            name: text(v, "name_label"),
            address: text(v, "address"),
            enabled: flag(v, "enabled"),
            master: r == master,
            running_vms: v.get("resident_VMs").and_then(Value::as_array).map_or(0, |vms| vms.len()),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

/// A VM as a restore over it needs to show: what it is called and whether it runs.
#[derive(Debug, Clone, Serialize)]
pub struct VmState {
    pub uuid: String,
    pub name: String,
    pub power_state: String,
}

async fn vm_ref(client: &Client, uuid: &str) -> Result<Option<String>, Error> {
    match client.call("VM.get_by_uuid", &[Value::from(uuid)]).await {
        Ok(r) => Ok(r.as_str().map(str::to_owned)),
        Err(e) if e.failure().is_some_and(|f| f.code == "UUID_INVALID") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn vm_state_of(client: &Client, reference: &str) -> Result<VmState, Error> {
    let record = client.call("VM.get_record", &[Value::from(reference)]).await?;
    Ok(VmState {
        uuid: text(&record, "uuid"),
        name: text(&record, "name_label"),
        power_state: text(&record, "power_state"),
    })
}

/// The VM with this uuid, or None when the pool has no such VM.
pub async fn vm_state(client: &Client, uuid: &str) -> Result<Option<VmState>, Error> {
    match vm_ref(client, uuid).await? {
        Some(reference) => Ok(Some(vm_state_of(client, &reference).await?)),
        None => Ok(None),
    }
}

/// Starts a halted VM (not paused, no forced placement).
pub async fn start_vm(client: &Client, uuid: &str) -> Result<(), Error> {
    let reference = vm_ref(client, uuid).await?.ok_or_else(|| LookupError::NoMatch {
        kind: Kind::Vm,
        wanted: uuid.to_owned(),
        candidates: Vec::new(),
    })?;
    client.call("VM.start", &[Value::from(reference.as_str()), Value::from(false), Value::from(false)]).await?;
    Ok(())
}

/// The VMs (not snapshots) a VDI is attached to, with their power states.
pub async fn vdi_users(client: &Client, vdi_uuid: &str) -> Result<Vec<VmState>, Error> {
    let vdi = match client.call("VDI.get_by_uuid", &[Value::from(vdi_uuid)]).await {
        Ok(r) => r.as_str().unwrap_or_default().to_owned(),
        Err(e) if e.failure().is_some_and(|f| f.code == "UUID_INVALID") => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let vbds = client.call("VDI.get_VBDs", &[Value::from(vdi.as_str())]).await?;
    let mut users = Vec::new();
    for vbd in vbds.as_array().unwrap_or_default().iter().filter_map(Value::as_str) {
        let vm = client.call("VBD.get_VM", &[Value::from(vbd)]).await?;
        let vm = vm.as_str().unwrap_or_default();
        let snapshot = client.call("VM.get_is_a_snapshot", &[Value::from(vm)]).await?;
        if !snapshot.as_bool().unwrap_or(false) {
            users.push(vm_state_of(client, vm).await?);
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uuid: &str, name: &str) -> Candidate {
        Candidate { uuid: uuid.into(), name: name.into() }
    }

    #[test]
    fn choose_by_uuid_or_unique_name_and_list_candidates() {
        let all = vec![c("AAAA-1", "web"), c("bbbb-2", "db"), c("cccc-3", "db")];
        assert_eq!(choose(Kind::Vm, "aaaa-1", all.clone()).unwrap(), "AAAA-1");
        assert_eq!(choose(Kind::Vm, "web", all.clone()).unwrap(), "AAAA-1");
        let ambiguous = choose(Kind::Sr, "db", all.clone()).unwrap_err().to_string();
        assert!(
            ambiguous.contains("matches 2 SRs") && ambiguous.contains("bbbb-2") && ambiguous.contains("cccc-3"),
            "{ambiguous}"
        );
        let none = choose(Kind::Network, "mail", all).unwrap_err().to_string();
        assert!(none.contains("no network matches \"mail\"") && none.contains("web (AAAA-1)"), "{none}");
        assert!(choose(Kind::Vm, "x", vec![]).unwrap_err().to_string().contains("there are none"));
    }
}
