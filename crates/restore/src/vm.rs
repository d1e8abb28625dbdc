//! Whole-VM restore to a pool from the records the engine stored with the restore point
//! (`metadata.vm`, format `xenvault-vm/1`): as a new VM (or template), or over the
//! original VM, optionally writing only what differs (see [`crate::differential`]).

pub use crate::differential::Method;
use crate::disk::{
    Created, NULL_REF, StoredDisk, call_str, create_vbd, create_vdi, fill_new, overwrite, restored_name, stored_disks,
};
use crate::{Error, Result};
use serde_json::Value as Json;
use xenvault_repo::{Manifest, Repository};
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
    pub mode: Mode,
    pub differential: bool,
    pub vm_uuid: String,
    pub name_label: String,
    pub disks: Vec<DiskRestore>,
    /// What was not restored as stored (a VIF whose network is missing, an unused mapping).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Called with the disk bytes done since the last call.
pub type Progress = crate::export::Progress;

/// Logs in to a registered pool (the uploads need the XenAPI client itself).
pub async fn connect(login: &xenvault_engine::config::PoolLogin) -> Result<Client> {
    use xenvault_engine::config::TlsTrust;
    let tls = match &login.entry.tls {
        TlsTrust::Verify => xenvault_xapi::TlsMode::SystemRoots,
        TlsTrust::Insecure => xenvault_xapi::TlsMode::Insecure,
        TlsTrust::Fingerprint(hex) => xenvault_xapi::TlsMode::pin_sha256_hex(hex)?,
    };
    let client = Client::builder(login.entry.url.as_str()).tls(tls).build()?;
    client.login_with_password(&login.entry.user, &login.password).await?;
    Ok(client)
}

pub(crate) fn invalid(what: impl Into<String>) -> Error {
    Error::Metadata(what.into())
}

pub(crate) fn text<'a>(j: &'a Json, key: &str) -> &'a str {
    j.get(key).and_then(Json::as_str).unwrap_or_default()
}

pub(crate) async fn call(client: &Client, method: &str, args: &[Value]) -> Result<Value> {
    Ok(client.call(method, args).await?)
}

pub(crate) async fn call_ref(client: &Client, method: &str, args: &[Value]) -> Result<String> {
    let v = call(client, method, args).await?;
    v.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("{method} returned {v:?}")))
}

/// A reference by uuid, or None when no such object exists.
pub(crate) async fn by_uuid(client: &Client, class: &str, uuid: &str) -> Result<Option<String>> {
    if uuid.is_empty() {
        return Ok(None);
    }
    match client.call(&format!("{class}.get_by_uuid"), &[Value::from(uuid)]).await {
        Ok(v) => Ok(v.as_str().map(str::to_owned)),
        Err(e) if e.to_string().contains("UUID_INVALID") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn to_value(j: &Json) -> Result<Value> {
    xenvault_xapi::wire::jsonrpc::from_json(j).map_err(|e| invalid(format!("stored record: {e}")))
}

/// Restores the VM of restore point `m` to the pool `client` is logged in to. A restore
/// as new that fails removes the VM, VBDs and VDIs it created ([`Error::CleanedUp`]).
pub async fn restore_vm(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    opts: &VmRestoreOptions,
    progress: Option<Progress>,
) -> Result<VmRestoreReport> {
    let started = std::time::Instant::now();
    let meta = m
        .metadata
        .get("vm")
        .filter(|v| text(v, "format") == "xenvault-vm/1")
        .ok_or_else(|| invalid(format!("restore point {} holds no VM records (not a VM backup?)", m.short_id())))?;
    let vm_record = meta.get("vm").filter(|v| v.is_object()).ok_or_else(|| invalid("no VM record"))?;
    let original = by_uuid(client, "VM", text(vm_record, "uuid")).await?;
    let disks = stored_disks(m);
    let (vm_uuid, name_label, written, warnings) = match opts.mode {
        Mode::AsNew => {
            let mut new = NewVm::check(client, meta, opts).await?;
            match new.create(repo, m, vm_record, &disks, original.is_some(), &progress).await {
                Ok((vm_uuid, name, written)) => (vm_uuid, name, written, new.warnings),
                Err(e) => return Err(new.made.undo(client, e).await),
            }
        }
        Mode::Overwrite => {
            let vm = original.ok_or_else(|| {
                invalid(format!("the original VM {} no longer exists: restore --as-new", text(vm_record, "uuid")))
            })?;
            let written = restore_over(client, repo, m, &vm, &disks, opts.differential, &progress).await?;
            let mut warnings = Vec::new();
            if !opts.sr_map.is_empty() || !opts.network_map.is_empty() {
                warnings.push("SR and network mappings apply to restores as a new VM: ignored".to_owned());
            }
            (call_str(client, "VM.get_uuid", &vm).await?, text(vm_record, "name_label").to_owned(), written, warnings)
        }
    };
    Ok(VmRestoreReport {
        restore_point: m.id.clone(),
        mode: opts.mode,
        differential: opts.differential,
        vm_uuid,
        name_label,
        disks: written,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A restore as a new VM: where its disks and VIFs go, and what it created so far.
struct NewVm<'a> {
    client: &'a Client,
    meta: &'a Json,
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
    async fn check(client: &'a Client, meta: &'a Json, opts: &'a VmRestoreOptions) -> Result<Self> {
        let mut warnings = Vec::new();
        let stored = |class: &str| {
            meta.get(class).and_then(Json::as_object).map(|o| o.values().collect::<Vec<_>>()).unwrap_or_default()
        };
        let (stored_srs, stored_networks) = (stored("SR"), stored("network"));
        let mut srs = Vec::new();
        for (from, to) in &opts.sr_map {
            let target = by_uuid(client, "SR", to)
                .await?
                .ok_or_else(|| Error::Target(format!("SR mapping {from}={to}: no SR with uuid {to}")))?;
            if !stored_srs.iter().any(|s| text(s, "uuid") == from) {
                warnings.push(format!("SR mapping {from}={to}: the restore point has no disk on SR {from}"));
            }
            srs.push((from.clone(), target));
        }
        let mut networks = Vec::new();
        for (from, to) in &opts.network_map {
            let target = by_uuid(client, "network", to)
                .await?
                .ok_or_else(|| Error::Target(format!("network mapping {from}={to}: no network with uuid {to}")))?;
            if !stored_networks.iter().any(|n| text(n, "uuid") == from || text(n, "name_label") == from) {
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
        vm_record: &Json,
        disks: &[StoredDisk<'_>],
        original_exists: bool,
        progress: &Option<Progress>,
    ) -> Result<(String, String, Vec<DiskRestore>)> {
        let client = self.client;
        let name = restored_name(text(vm_record, "name_label"), m);
        let mut spec = vm_record.as_object().cloned().unwrap_or_default();
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
        spec.insert("name_label".into(), Json::from(name.clone()));
        spec.insert("is_a_template".into(), Json::from(self.opts.as_template));
        let vm = call_ref(client, "VM.create", &[to_value(&Json::Object(spec))?]).await?;
        self.made.vm = Some(vm.clone());
        let mut written = Vec::new();
        for d in disks {
            let sr = self.sr_of(d).await?;
            let label = match text(&d.vdi, "name_label") {
                "" => format!("{name} disk {}", d.position),
                l => l.to_owned(),
            };
            let vdi = create_vdi(client, &sr, &label, text(&d.vdi, "name_description"), d.record.size, &mut self.made)
                .await?;
            written.push(fill_new(client, repo, d, &vdi, progress).await?);
            let bootable = d.vbd.as_ref().and_then(|b| b.get("bootable")).and_then(Json::as_bool).unwrap_or(false);
            create_vbd(client, &vm, &vdi, &d.position, bootable, &mut self.made).await?;
        }
        self.create_vifs(&vm, original_exists).await?;
        Ok((call_str(client, "VM.get_uuid", &vm).await?, name, written))
    }

    /// The SR for a new disk: mapped, else `sr`, else the original SR when it still
    /// exists, else the pool's default SR.
    async fn sr_of(&self, d: &StoredDisk<'_>) -> Result<String> {
        let stored =
            self.meta.get("SR").and_then(|s| s.get(text(&d.vdi, "SR"))).map(|s| text(s, "uuid")).unwrap_or_default();
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

    /// The network for a VIF on stored network `net`: mapped (by uuid, then name), else
    /// the same uuid, else the same name.
    async fn network_of(&self, net: &Json) -> Result<Option<String>> {
        let (uuid, name) = (text(net, "uuid"), text(net, "name_label"));
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
        let empty = serde_json::Map::new();
        let networks = self.meta.get("network").and_then(Json::as_object).unwrap_or(&empty);
        for vif in self.meta.get("VIF").and_then(Json::as_object).unwrap_or(&empty).values() {
            let net = networks.get(text(vif, "network")).unwrap_or(&Json::Null);
            let Some(network) = self.network_of(net).await? else {
                let (uuid, name) = (text(net, "uuid"), text(net, "name_label"));
                let warning = format!(
                    "VIF {} (MAC {}) not restored: no network {name:?} ({uuid}) in the pool; map it to one",
                    text(vif, "device"),
                    text(vif, "MAC")
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
                "device": text(vif, "device"), "network": network, "VM": vm, "MAC": if keep { text(vif, "MAC") } else { "" },
                "MTU": vif.get("MTU").cloned().unwrap_or(Json::from(1500)), "other_config": {},
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
/// first). Differential: finds what differs and sends only that.
async fn restore_over(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    vm: &str,
    disks: &[StoredDisk<'_>],
    differential: bool,
    progress: &Option<Progress>,
) -> Result<Vec<DiskRestore>> {
    let state = call(client, "VM.get_power_state", &[Value::from(vm)]).await?;
    match state.as_str() {
        Some("Halted") => {}
        Some("Running") => {
            if client.call("VM.clean_shutdown", &[Value::from(vm)]).await.is_err() {
                call(client, "VM.hard_shutdown", &[Value::from(vm)]).await?;
            }
        }
        other => return Err(invalid(format!("the VM is {other:?}: it must be halted or running to be overwritten"))),
    }
    let mut out = Vec::new();
    for d in disks {
        let vdi = by_uuid(client, "VDI", &d.record.uuid).await?.ok_or_else(|| {
            invalid(format!("the VM's disk {} ({}) no longer exists: restore --as-new", d.position, d.record.uuid))
        })?;
        out.push(overwrite(client, repo, m, d, &vdi, differential, progress).await?);
    }
    Ok(out)
}
