//! Whole-VM restore to a pool from the VM metadata the engine stored with the restore
//! point ([`VmMetadata`]): as a new VM (or template), or over the
//! original VM, optionally writing only what differs (see [`crate::differential`]).

pub use crate::differential::Method;
use crate::disk::{
    Created, Guard, Identity, NULL_REF, StoredDisk, Writing, call_str, check_fits, create_vbd, create_vdi, fill_new,
    overwrite, restored_name, stored_disks, vm_metadata,
};
use crate::{Error, Result};
use serde_json::Value as Json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_pool::host::by_uuid;
use xenvault_pool::inventory;
use xenvault_repo::{Manifest, Repository};
use xenvault_types::metadata::{VifInfo, VmMetadata};
use xenvault_types::progress::Progress;
use xenvault_xapi::{Client, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    AsNew,
    Overwrite,
}

/// The MAC addresses of a VM restored as new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Macs {
    /// The stored MACs, unless the original VM still exists (then fresh ones, so the two never clash).
    #[default]
    Auto,
    /// The stored MACs even when the original VM exists (it is being replaced).
    Keep,
    /// Always fresh MACs.
    New,
}

impl std::str::FromStr for Macs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Macs::Auto),
            "keep" => Ok(Macs::Keep),
            "new" => Ok(Macs::New),
            other => Err(format!("unknown MAC handling {other:?} (auto, keep, new)")),
        }
    }
}

/// Parses `OLD=NEW` (an SR or network mapping).
pub fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => Ok((old.to_owned(), new.to_owned())),
        _ => Err(format!("{s:?}: expected OLD=NEW")),
    }
}

#[derive(Debug, Clone, Default)]
pub struct VmRestoreOptions {
    pub mode: Mode,
    /// Write only blocks that differ from the target disk (with [`Mode::Overwrite`]).
    pub differential: bool,
    /// SR uuid for new disks whose SR `sr_map` does not name (default: the original disk's
    /// SR when it still exists, else the pool's default SR).
    pub sr: Option<String>,
    pub as_template: bool,
    /// New disks: stored SR uuid -> target SR uuid.
    pub sr_map: Vec<(String, String)>,
    /// New VIFs: stored network uuid or name label -> target network uuid.
    pub network_map: Vec<(String, String)>,
    pub macs: Macs,
    /// Start the VM once restored.
    pub start: bool,
    /// Stops the restore: a new VM is removed with its disks; overwritten disks are put
    /// back as they were (and a VM the restore shut down is started again).
    pub cancel: CancellationToken,
    /// Who asked for the restore, carried into the report.
    pub identity: Identity,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskRestore {
    pub position: String,
    pub vdi_uuid: String,
    pub size: u64,
    /// Disk bytes the host writes (differential: only the sectors that differ).
    pub bytes_written: u64,
    /// Bytes sent to the host: a VHD carries whole 2 MiB blocks, of which the host writes
    /// only the sectors marked present.
    pub bytes_sent: u64,
    /// Bytes of the target disk read to find what differs (none with CBT).
    pub bytes_compared: u64,
    /// Differential only: how the differences were found, and why that way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method_reason: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VmRestoreReport {
    pub restore_point: String,
    #[serde(flatten)]
    pub identity: Identity,
    pub mode: Mode,
    pub differential: bool,
    pub vm_uuid: String,
    pub name_label: String,
    pub disks: Vec<DiskRestore>,
    /// What was not restored as stored (a VIF whose network is missing, an unused mapping).
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// The original VM's power state before an overwrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_state_before: Option<String>,
    /// The restored VM's power state at the end (after the start that was asked for).
    pub power_state_after: Option<String>,
}

pub(crate) fn invalid(what: impl Into<String>) -> Error {
    Error::Metadata(what.into())
}

pub(crate) async fn call(client: &Client, method: &str, args: &[Value]) -> Result<Value> {
    Ok(client.call(method, args).await?)
}

pub(crate) async fn call_ref(client: &Client, method: &str, args: &[Value]) -> Result<String> {
    let v = call(client, method, args).await?;
    v.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("{method} returned {v:?}")))
}

/// A JSON value (a stored record, a spec) as a XenAPI value.
pub fn to_value(j: &Json) -> Result<Value> {
    xenvault_xapi::wire::jsonrpc::from_json(j).map_err(|e| invalid(format!("stored record: {e}")))
}

/// Restores the VM of restore point `m` to the pool `client` is logged in to. A restore
/// as new that fails removes the VM, VBDs and VDIs it created ([`Error::CleanedUp`]).
pub async fn restore_vm(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    opts: &VmRestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<VmRestoreReport> {
    let started = std::time::Instant::now();
    let meta = vm_metadata(m)?
        .ok_or_else(|| invalid(format!("restore point {} holds no VM records (not a VM backup?)", m.short_id())))?;
    let original = by_uuid(client, "VM", &meta.vm.uuid).await?;
    let disks = stored_disks(m, Some(&meta));
    let power_state_before = match (opts.mode, &original) {
        (Mode::Overwrite, Some(_)) => inventory::vm_state(client, &meta.vm.uuid).await?.map(|vm| vm.power_state),
        _ => None,
    };
    let writing = Writing { progress: &progress, cancel: &opts.cancel };
    let (vm_uuid, name_label, written, warnings) = match opts.mode {
        Mode::AsNew => {
            let mut new = NewVm::check(client, &meta, opts).await?;
            match new.create(repo, m, &disks, original.is_some(), &writing).await {
                Ok((vm_uuid, name, written)) => (vm_uuid, name, written, new.warnings),
                Err(e) => return Err(new.made.undo(client, e).await),
            }
        }
        Mode::Overwrite => {
            let vm = original.ok_or_else(|| {
                invalid(format!("the original VM {} no longer exists: restore it as a new VM", meta.vm.uuid))
            })?;
            let written = restore_over(client, repo, m, &vm, &disks, opts.differential, &writing).await?;
            let mut warnings = Vec::new();
            if !opts.sr_map.is_empty() || !opts.network_map.is_empty() {
                warnings.push("SR and network mappings apply to restores as a new VM: ignored".to_owned());
            }
            (call_str(client, "VM.get_uuid", &vm).await?, meta.vm.name_label.clone(), written, warnings)
        }
    };
    if opts.start {
        inventory::start_vm(client, &vm_uuid).await?;
    }
    let power_state_after = inventory::vm_state(client, &vm_uuid).await?.map(|vm| vm.power_state);
    Ok(VmRestoreReport {
        restore_point: m.id.clone(),
        identity: opts.identity.clone(),
        mode: opts.mode,
        differential: opts.differential,
        vm_uuid,
        name_label,
        disks: written,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
        power_state_before,
        power_state_after,
    })
}

/// The `VM.create` argument for a new VM named `name` from a VM's stored record: the whole
/// record, so fields xenvault does not name (boot, PV, NVRAM, ...) come back too, without
/// what belongs to the original VM (identity, devices, power state, family).
pub fn new_vm_spec(stored: &serde_json::Map<String, Json>, name: &str, as_template: bool) -> Json {
    let mut spec = stored.clone();
    for k in [
        "uuid",
        "VBDs",
        "VIFs",
        "snapshots",
        "consoles",
        "power_state",
        "resident_on",
        "metrics",
        "guest_metrics",
        "parent",
        "children",
    ] {
        spec.remove(k);
    }
    spec.insert("name_label".into(), Json::from(name));
    spec.insert("is_a_template".into(), Json::from(as_template));
    Json::Object(spec)
}

/// A restore as a new VM: where its disks and VIFs go, and what it created so far.
struct NewVm<'a> {
    client: &'a Client,
    meta: &'a VmMetadata,
    opts: &'a VmRestoreOptions,
    /// Stored SR uuid -> target SR reference.
    srs: Vec<(String, String)>,
    /// For disks `srs` does not place.
    sr: Option<String>,
    /// Stored network uuid or name label -> target network reference.
    networks: Vec<(String, String)>,
    made: Created,
    warnings: Vec<String>,
}

impl<'a> NewVm<'a> {
    /// Resolves the SR and network targets, refusing unknown ones before anything is created.
    async fn check(client: &'a Client, meta: &'a VmMetadata, opts: &'a VmRestoreOptions) -> Result<Self> {
        let mut warnings = Vec::new();
        let mut srs = Vec::new();
        for (from, to) in &opts.sr_map {
            let target = by_uuid(client, "SR", to)
                .await?
                .ok_or_else(|| Error::Target(format!("SR mapping {from}={to}: no SR with uuid {to}")))?;
            if !meta.disks.iter().any(|d| &d.sr_uuid == from) {
                warnings.push(format!("SR mapping {from}={to}: the restore point has no disk on SR {from}"));
            }
            srs.push((from.clone(), target));
        }
        let mut networks = Vec::new();
        for (from, to) in &opts.network_map {
            let target = by_uuid(client, "network", to)
                .await?
                .ok_or_else(|| Error::Target(format!("network mapping {from}={to}: no network with uuid {to}")))?;
            if !meta.vifs.iter().any(|v| &v.network_uuid == from || &v.network_name == from) {
                warnings
                    .push(format!("network mapping {from}={to}: the restore point has no VIF on a network {from:?}"));
            }
            networks.push((from.clone(), target));
        }
        let sr = match &opts.sr {
            Some(uuid) => Some(
                by_uuid(client, "SR", uuid).await?.ok_or_else(|| Error::Target(format!("no SR with uuid {uuid}")))?,
            ),
            None => None,
        };
        Ok(NewVm { client, meta, opts, srs, sr, networks, made: Created::default(), warnings })
    }

    /// Creates the VM, its disks and VIFs; returns its uuid, name and disks.
    async fn create(
        &mut self,
        repo: &Repository,
        m: &Manifest,
        disks: &[StoredDisk<'_>],
        original_exists: bool,
        writing: &Writing<'_>,
    ) -> Result<(String, String, Vec<DiskRestore>)> {
        let client = self.client;
        let name = restored_name(&self.meta.vm.name_label, m);
        let spec = new_vm_spec(&self.meta.records.vm, &name, self.opts.as_template);
        let vm = call_ref(client, "VM.create", &[to_value(&spec)?]).await?;
        self.made.vm = Some(vm.clone());
        let mut written = Vec::new();
        for d in disks {
            let sr = self.sr_of(d).await?;
            let label = match d.info.name_label.as_str() {
                "" => format!("{name} disk {}", d.position),
                l => l.to_owned(),
            };
            let vdi = create_vdi(client, &sr, &label, &d.info.name_description, d.record.size, &mut self.made).await?;
            written.push(fill_new(client, repo, m, d, &vdi, writing).await?);
            create_vbd(client, &vm, &vdi, &d.position, d.info.bootable, &mut self.made).await?;
        }
        self.create_vifs(&vm, original_exists).await?;
        Ok((call_str(client, "VM.get_uuid", &vm).await?, name, written))
    }

    /// The SR for a new disk: mapped, else `sr`, else the original SR when it still
    /// exists, else the pool's default SR.
    async fn sr_of(&self, d: &StoredDisk<'_>) -> Result<String> {
        let stored = d.info.sr_uuid.as_str();
        if let Some((_, sr)) = self.srs.iter().find(|(from, _)| from == stored) {
            return Ok(sr.clone());
        }
        if let Some(sr) = &self.sr {
            return Ok(sr.clone());
        }
        match by_uuid(self.client, "SR", stored).await? {
            Some(sr) => Ok(sr),
            None => default_sr(self.client).await,
        }
    }

    /// The network for a stored VIF: mapped (by network uuid, then name), else the same
    /// uuid, else the same name.
    async fn network_of(&self, vif: &VifInfo) -> Result<Option<String>> {
        let (uuid, name) = (vif.network_uuid.as_str(), vif.network_name.as_str());
        let mapped = self
            .networks
            .iter()
            .find(|(from, _)| from == uuid)
            .or_else(|| self.networks.iter().find(|(from, _)| from == name));
        if let Some((_, network)) = mapped {
            return Ok(Some(network.clone()));
        }
        if let Some(network) = by_uuid(self.client, "network", uuid).await? {
            return Ok(Some(network));
        }
        let named = call(self.client, "network.get_by_name_label", &[Value::from(name)]).await?;
        Ok(named.as_array().and_then(|n| n.first()).and_then(Value::as_str).map(str::to_owned))
    }

    /// The stored VIFs; a VIF whose network is not found is left out, with a warning.
    async fn create_vifs(&mut self, vm: &str, original_exists: bool) -> Result<()> {
        for vif in &self.meta.vifs {
            let Some(network) = self.network_of(vif).await? else {
                let warning = format!(
                    "VIF {} (MAC {}) not restored: no network {:?} ({}) in the pool; map it to one",
                    vif.device, vif.mac, vif.network_name, vif.network_uuid
                );
                tracing::warn!("{warning}");
                self.warnings.push(warning);
                continue;
            };
            let keep = match self.opts.macs {
                Macs::Auto => !original_exists,
                Macs::Keep => true,
                Macs::New => false,
            };
            let spec = serde_json::json!({
                "device": vif.device, "network": network, "VM": vm, "MAC": if keep { vif.mac.as_str() } else { "" },
                "MTU": vif.mtu, "other_config": {},
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            });
            call_ref(self.client, "VIF.create", &[to_value(&spec)?]).await?;
        }
        Ok(())
    }
}

async fn default_sr(client: &Client) -> Result<String> {
    let pools = call(client, "pool.get_all", &[]).await?;
    let pool = pools
        .as_array()
        .and_then(|p| p.first())
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no pool object"))?
        .to_owned();
    let sr = call_ref(client, "pool.get_default_SR", &[Value::from(pool.as_str())]).await?;
    if sr == NULL_REF {
        return Err(Error::Target("the original SR is gone and the pool has no default SR: choose an SR".into()));
    }
    Ok(sr)
}

/// Writes each stored disk over the VM's disk of the same VDI uuid (the VM is shut down
/// first). Differential: finds what differs and sends only that. A restore that stops
/// half-way puts every disk back as it was and starts the VM again if it shut it down.
async fn restore_over(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    vm: &str,
    disks: &[StoredDisk<'_>],
    differential: bool,
    writing: &Writing<'_>,
) -> Result<Vec<DiskRestore>> {
    let mut targets = Vec::new();
    for d in disks {
        let vdi = by_uuid(client, "VDI", &d.record.uuid).await?.ok_or_else(|| {
            invalid(format!(
                "the VM's disk {} ({}) no longer exists: restore it as a new VM",
                d.position, d.record.uuid
            ))
        })?;
        check_fits(client, d, &vdi).await?;
        targets.push((d, vdi));
    }
    crate::export::unless_cancelled(writing.cancel)?;
    let state = call(client, "VM.get_power_state", &[Value::from(vm)]).await?;
    let was_running = match state.as_str() {
        Some("Halted") => false,
        Some("Running") => {
            if client.call("VM.clean_shutdown", &[Value::from(vm)]).await.is_err() {
                call(client, "VM.hard_shutdown", &[Value::from(vm)]).await?;
            }
            true
        }
        other => return Err(invalid(format!("the VM is {other:?}: it must be halted or running to be overwritten"))),
    };
    let (mut guards, mut begun) = (Vec::new(), 0);
    let written = async {
        for (_, vdi) in &targets {
            guards.push(Guard::take(client, vdi, writing).await?);
        }
        let mut out = Vec::new();
        for (d, vdi) in &targets {
            begun += 1;
            out.push(overwrite(client, repo, m, d, vdi, differential, writing).await?);
        }
        Ok(out)
    }
    .await;
    match written {
        Ok(out) => {
            for guard in guards {
                guard.release(client).await;
            }
            Ok(out)
        }
        Err(mut error) => {
            // Disks not begun are as they were: their snapshots just go.
            for (n, guard) in guards.into_iter().enumerate() {
                if n < begun {
                    error = guard.put_back(client, error).await;
                } else {
                    guard.release(client).await;
                }
            }
            if was_running
                && let Err(e) = call(client, "VM.start", &[Value::from(vm), false.into(), false.into()]).await
            {
                error =
                    Error::CleanedUp { source: Box::new(error), cleanup: format!("could NOT start the VM again: {e}") };
            }
            Err(error)
        }
    }
}
