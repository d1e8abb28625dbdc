//! Whole-VM restore to a pool from the records the engine stored with the restore point
//! (`metadata.vm`, format `xenvault-vm/1`): as a new VM (or template), or over the
//! original VM, optionally writing only what differs (see [`crate::differential`]).

pub use crate::differential::Method;
use crate::export::{VHD_BLOCK, present_units, vhd_size, write_vhd};
use crate::{Error, RepoDisk, Result};
use bytes::Bytes;
use serde_json::Value as Json;
use std::sync::Arc;
use xenvault_repo::{DiskReader, DiskRecord, Manifest, Repository};
use xenvault_xapi::{Client, DiskFormat, ImportTarget, Ref, Value};

const NULL_REF: &str = "OpaqueRef:NULL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    AsNew,
    Overwrite,
}

#[derive(Debug, Clone)]
pub struct VmRestoreOptions {
    pub mode: Mode,
    /// Write only blocks that differ from the target disk (with [`Mode::Overwrite`]).
    pub differential: bool,
    /// SR uuid for new disks (default: the original disk's SR when it still exists, else the pool's default SR).
    pub sr: Option<String>,
    pub as_template: bool,
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

fn invalid(what: impl Into<String>) -> Error {
    Error::Metadata(what.into())
}

pub(crate) fn text<'a>(j: &'a Json, key: &str) -> &'a str {
    j.get(key).and_then(Json::as_str).unwrap_or_default()
}

async fn call(client: &Client, method: &str, args: &[Value]) -> Result<Value> {
    Ok(client.call(method, args).await?)
}

async fn call_ref(client: &Client, method: &str, args: &[Value]) -> Result<String> {
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

fn to_value(j: &Json) -> Result<Value> {
    xenvault_xapi::wire::jsonrpc::from_json(j).map_err(|e| invalid(format!("stored record: {e}")))
}

/// What the restore point says about one of its disks.
struct StoredDisk<'a> {
    record: &'a DiskRecord,
    position: String,
    /// The snapshot VDI the disk was read from (the CBT base of a differential restore).
    snapshot_vdi_uuid: String,
    vdi: Json,
    vbd: Option<Json>,
}

/// The engine's record of how disk `disk_uuid` was backed up (`metadata.backup.disks`).
pub(crate) fn backup_entry<'a>(m: &'a Manifest, disk_uuid: &str) -> Option<&'a Json> {
    let disks = m.metadata.get("backup")?.get("disks")?.as_array()?;
    disks.iter().find(|e| text(e, "vdi_uuid") == disk_uuid)
}

fn stored_disks<'a>(m: &'a Manifest, meta: &Json) -> Result<Vec<StoredDisk<'a>>> {
    let empty = serde_json::Map::new();
    let vdis = meta.get("VDI").and_then(Json::as_object).unwrap_or(&empty);
    let vbds = meta.get("VBD").and_then(Json::as_object).unwrap_or(&empty);
    let mut out = Vec::new();
    for record in &m.disks {
        let entry = backup_entry(m, &record.uuid);
        let snap_uuid = entry.map(|e| text(e, "snapshot_vdi_uuid")).unwrap_or_default();
        let found = vdis.iter().find(|(_, v)| !snap_uuid.is_empty() && text(v, "uuid") == snap_uuid);
        let (vdi_ref, vdi) = found.map(|(r, v)| (r.as_str(), v.clone())).unwrap_or((NULL_REF, Json::Null));
        let vbd = vbds.values().find(|b| vdi_ref != NULL_REF && text(b, "VDI") == vdi_ref).cloned();
        let position = entry.map(|e| text(e, "position").to_owned()).unwrap_or_else(|| record.name.clone());
        out.push(StoredDisk { record, position, snapshot_vdi_uuid: snap_uuid.to_owned(), vdi, vbd });
    }
    Ok(out)
}

/// Restores the VM of restore point `m` to the pool `client` is logged in to.
pub async fn restore_vm(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    opts: &VmRestoreOptions,
    progress: Option<Progress>,
) -> Result<VmRestoreReport> {
    let started = std::time::Instant::now();
    let meta = m.metadata.get("vm").filter(|v| text(v, "format") == "xenvault-vm/1").ok_or_else(|| {
        invalid(format!("restore point {} holds no VM records (not a VM backup?)", m.short_id()))
    })?;
    let vm_record = meta.get("vm").filter(|v| v.is_object()).ok_or_else(|| invalid("no VM record"))?;
    let original = by_uuid(client, "VM", text(vm_record, "uuid")).await?;
    let disks = stored_disks(m, meta)?;
    let (vm_ref, name_label, written) = match opts.mode {
        Mode::AsNew => restore_as_new(client, repo, m, meta, vm_record, &disks, original.is_some(), opts, &progress).await?,
        Mode::Overwrite => {
            let vm = original.ok_or_else(|| invalid(format!("the original VM {} no longer exists: restore --as-new", text(vm_record, "uuid"))))?;
            let written = restore_over(client, repo, m, &vm, &disks, opts.differential, &progress).await?;
            (vm, text(vm_record, "name_label").to_owned(), written)
        }
    };
    let vm_uuid = call(client, "VM.get_uuid", &[Value::from(vm_ref.as_str())]).await?.as_str().unwrap_or_default().to_owned();
    Ok(VmRestoreReport {
        restore_point: m.id.clone(),
        mode: opts.mode,
        differential: opts.differential,
        vm_uuid,
        name_label,
        disks: written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn restore_as_new(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    meta: &Json,
    vm_record: &Json,
    disks: &[StoredDisk<'_>],
    original_exists: bool,
    opts: &VmRestoreOptions,
    progress: &Option<Progress>,
) -> Result<(String, String, Vec<DiskRestore>)> {
    let name = format!("{} (restored {})", text(vm_record, "name_label"), m.time.format("%Y-%m-%d %H:%M"));
    let mut spec = vm_record.as_object().cloned().unwrap_or_default();
    for k in ["uuid", "VBDs", "VIFs", "snapshots", "consoles", "power_state", "resident_on", "metrics", "guest_metrics", "parent", "children"] {
        spec.remove(k);
    }
    spec.insert("name_label".into(), Json::from(name.clone()));
    spec.insert("is_a_template".into(), Json::from(opts.as_template));
    let vm = call_ref(client, "VM.create", &[to_value(&Json::Object(spec))?]).await?;
    let chosen_sr = match &opts.sr {
        Some(uuid) => Some(by_uuid(client, "SR", uuid).await?.ok_or_else(|| invalid(format!("no SR with uuid {uuid}")))?),
        None => None,
    };
    let srs = meta.get("SR").and_then(Json::as_object);
    let mut written = Vec::new();
    for d in disks {
        let sr = match &chosen_sr {
            Some(sr) => sr.clone(),
            None => {
                let stored_sr = srs.and_then(|s| s.get(text(&d.vdi, "SR"))).map(|s| text(s, "uuid")).unwrap_or_default();
                match by_uuid(client, "SR", stored_sr).await? {
                    Some(sr) => sr,
                    None => default_sr(client).await?,
                }
            }
        };
        let label = match text(&d.vdi, "name_label") {
            "" => format!("{name} disk {}", d.position),
            l => l.to_owned(),
        };
        let vdi_spec = serde_json::json!({
            "name_label": label, "name_description": text(&d.vdi, "name_description"), "SR": sr,
            "virtual_size": d.record.size, "type": "user", "sharable": false, "read_only": false,
            "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
        });
        let vdi = call_ref(client, "VDI.create", &[to_value(&vdi_spec)?]).await?;
        // A new VDI reads as zeros: send only the blocks the restore point holds.
        let t = std::time::Instant::now();
        let reader = Arc::new(DiskReader::new(repo, d.record).await?);
        let disk = RepoDisk::new(reader, tokio::runtime::Handle::current());
        let blocks = {
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || present_units(&disk, &tokio::runtime::Handle::current(), VHD_BLOCK)).await??
        };
        let bytes_sent = vhd_size(d.record.size, blocks.len());
        let bytes_written = upload_blocks(client, &vdi, disk, blocks, progress).await?;
        let vdi_uuid = call(client, "VDI.get_uuid", &[Value::from(vdi.as_str())]).await?.as_str().unwrap_or_default().to_owned();
        written.push(DiskRestore {
            position: d.position.clone(),
            vdi_uuid,
            size: d.record.size,
            bytes_written,
            bytes_sent,
            bytes_compared: 0,
            method: None,
            method_reason: None,
            seconds: t.elapsed().as_secs_f64(),
        });
        let vbd = d.vbd.clone().unwrap_or(Json::Null);
        let vbd_spec = serde_json::json!({
            "VM": vm, "VDI": vdi, "userdevice": d.position, "bootable": vbd.get("bootable").and_then(Json::as_bool).unwrap_or(false),
            "mode": "RW", "type": "Disk", "empty": false, "unpluggable": false, "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
        });
        call_ref(client, "VBD.create", &[to_value(&vbd_spec)?]).await?;
    }
    create_vifs(client, meta, &vm, original_exists).await?;
    Ok((vm, name, written))
}

async fn default_sr(client: &Client) -> Result<String> {
    let pools = call(client, "pool.get_all", &[]).await?;
    let pool = pools.as_array().and_then(|p| p.first()).and_then(Value::as_str).ok_or_else(|| invalid("no pool object"))?.to_owned();
    let sr = call_ref(client, "pool.get_default_SR", &[Value::from(pool.as_str())]).await?;
    if sr == NULL_REF {
        return Err(invalid("the original SR is gone and the pool has no default SR: give --sr"));
    }
    Ok(sr)
}

/// VIFs on the same networks (by uuid, else by name); fresh MACs while the original VM
/// still exists, so the two never clash.
async fn create_vifs(client: &Client, meta: &Json, vm: &str, original_exists: bool) -> Result<()> {
    let empty = serde_json::Map::new();
    let networks = meta.get("network").and_then(Json::as_object).unwrap_or(&empty);
    for vif in meta.get("VIF").and_then(Json::as_object).unwrap_or(&empty).values() {
        let Some(net) = networks.get(text(vif, "network")) else { continue };
        let mut network = by_uuid(client, "network", text(net, "uuid")).await?;
        if network.is_none() {
            let named = call(client, "network.get_by_name_label", &[Value::from(text(net, "name_label"))]).await?;
            network = named.as_array().and_then(|n| n.first()).and_then(Value::as_str).map(str::to_owned);
        }
        let Some(network) = network else {
            tracing::warn!("network {:?} not found: VIF {} not restored", text(net, "name_label"), text(vif, "device"));
            continue;
        };
        let mac = if original_exists { "" } else { text(vif, "MAC") };
        let spec = serde_json::json!({
            "device": text(vif, "device"), "network": network, "VM": vm, "MAC": mac,
            "MTU": vif.get("MTU").cloned().unwrap_or(Json::from(1500)), "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
        });
        call_ref(client, "VIF.create", &[to_value(&spec)?]).await?;
    }
    Ok(())
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
        let t = std::time::Instant::now();
        let vdi = by_uuid(client, "VDI", &d.record.uuid)
            .await?
            .ok_or_else(|| invalid(format!("the VM's disk {} ({}) no longer exists: restore --as-new", d.position, d.record.uuid)))?;
        let size = call(client, "VDI.get_virtual_size", &[Value::from(vdi.as_str())]).await?;
        if size.as_i64().and_then(|s| u64::try_from(s).ok()) != Some(d.record.size) {
            return Err(invalid(format!("disk {} is now {size:?} bytes, the restore point's is {}", d.position, d.record.size)));
        }
        let reader = Arc::new(DiskReader::new(repo, d.record).await?);
        let disk = RepoDisk::new(reader.clone(), tokio::runtime::Handle::current());
        let mut done = DiskRestore {
            position: d.position.clone(),
            vdi_uuid: d.record.uuid.clone(),
            size: d.record.size,
            bytes_written: d.record.size,
            bytes_sent: d.record.size,
            bytes_compared: 0,
            method: None,
            method_reason: None,
            seconds: 0.0,
        };
        if differential {
            let target = crate::differential::Target { vdi: &vdi, point: m, snapshot_vdi_uuid: &d.snapshot_vdi_uuid };
            let plan = crate::differential::plan(client, repo, &target, &reader, progress.as_ref()).await?;
            tracing::info!(disk = %d.position, method = ?plan.method, reason = %plan.reason, ranges = plan.ranges.len(), "differential restore");
            let sent = crate::differential::upload_ranges(client, &vdi, disk, plan.ranges).await?;
            (done.bytes_written, done.bytes_sent, done.bytes_compared) = (sent.written, sent.sent, plan.bytes_compared);
            (done.method, done.method_reason) = (Some(plan.method), Some(plan.reason));
        } else {
            upload_raw(client, &vdi, disk, progress).await?;
        }
        done.seconds = t.elapsed().as_secs_f64();
        out.push(done);
    }
    Ok(out)
}

/// Pipes a blocking writer into an upload body.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams what `produce` writes (on a blocking thread) as the body of an import.
pub(crate) async fn upload(
    client: &Client,
    vdi: &str,
    format: DiskFormat,
    length: u64,
    produce: impl FnOnce(std::io::BufWriter<ChannelWriter>) -> Result<u64> + Send + 'static,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let writer = tokio::task::spawn_blocking(move || produce(std::io::BufWriter::with_capacity(1 << 20, ChannelWriter { tx })));
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let reference = Ref::new(vdi);
    let sent = client.import_raw_vdi(ImportTarget::Vdi(&reference), format, body, length).await;
    let produced = writer.await??;
    sent?;
    Ok(produced)
}

async fn upload_blocks(client: &Client, vdi: &str, disk: RepoDisk, blocks: Vec<u64>, progress: &Option<Progress>) -> Result<u64> {
    let length = vhd_size(disk.reader().size(), blocks.len());
    let progress = progress.clone();
    upload(client, vdi, DiskFormat::Vhd, length, move |mut out| {
        let n = write_vhd(&disk, &blocks, &mut out, progress.as_ref())?;
        std::io::Write::flush(&mut out)?;
        Ok(n)
    })
    .await
}

async fn upload_raw(client: &Client, vdi: &str, disk: RepoDisk, progress: &Option<Progress>) -> Result<u64> {
    let size = disk.reader().size();
    let progress = progress.clone();
    upload(client, vdi, DiskFormat::Raw, size, move |mut out| {
        crate::export::export(&disk, crate::export::DiskFormat::Raw, &mut out, progress)?;
        std::io::Write::flush(&mut out)?;
        Ok(size)
    })
    .await
}

