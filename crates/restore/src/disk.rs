//! Restore of one stored disk to a pool: over an existing VDI (optionally writing only
//! what differs, see [`crate::differential`]) or into a new VDI, optionally attached to a
//! VM. Also the disk pieces whole-VM restore uses: creating and filling VDIs, overwriting
//! them, and removing what a failed restore created.

use crate::export::{VHD_BLOCK, present_units, unless_cancelled, vhd_size, write_vhd};
use crate::vm::{DiskRestore, call, call_ref, invalid, to_value};
use crate::{Error, RepoDisk, Result};
use bytes::Bytes;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_pool::host::by_uuid;
use xenvault_repo::{DiskReader, DiskRecord, Manifest, Repository};
use xenvault_types::metadata::{DiskInfo, VmMetadata};
use xenvault_types::progress::{Key, Phase, Progress, Task};
use xenvault_xapi::{Client, DiskFormat, ImportTarget, Ref, Value};

pub(crate) const NULL_REF: &str = "OpaqueRef:NULL";

/// Where [`restore_disk`] writes.
#[derive(Debug, Clone)]
pub enum DiskTarget {
    /// Over this VDI (uuid); it must have the stored disk's size.
    Existing { vdi_uuid: String },
    /// Into a new VDI on this SR (uuid), named `name_label` (default: "<original label>
    /// (restored <restore point time>)"), optionally attached to a VM.
    New { sr_uuid: String, name_label: Option<String>, attach: Option<Attach> },
}

/// A VBD for the new VDI.
#[derive(Debug, Clone)]
pub struct Attach {
    pub vm_uuid: String,
    /// The VBD's userdevice ("1", "2", ...); it must be free on the VM.
    pub userdevice: String,
    /// Plug the VBD when the VM is running (otherwise the VM sees it from its next start).
    pub plug: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DiskRestoreOptions {
    /// Over an existing VDI: write only what differs from it.
    pub differential: bool,
    /// Over an existing VDI: write even when a running VM has it attached.
    pub force: bool,
    /// Stops the restore: a new VDI is removed, an existing one put back as it was.
    pub cancel: CancellationToken,
    /// Who asked for the restore, carried into the report.
    pub identity: Identity,
}

/// The job and run a restore belongs to, as the caller (a scheduler, a service) names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskRestoreReport {
    pub restore_point: String,
    #[serde(flatten)]
    pub identity: Identity,
    /// The VDI the stored disk was backed up from.
    pub source_vdi_uuid: String,
    /// Whether the target VDI was created by this restore.
    pub created: bool,
    pub name_label: String,
    pub sr_uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vbd_uuid: Option<String>,
    /// Whether the new VBD was plugged into the running VM.
    pub plugged: bool,
    #[serde(flatten)]
    pub disk: DiskRestore,
}

/// What the restore point says about one of its disks.
pub(crate) struct StoredDisk<'a> {
    pub record: &'a DiskRecord,
    pub position: String,
    /// From the VM metadata (empty for a restore point that has none, e.g. `backup-image`).
    pub info: DiskInfo,
}

/// The VM metadata of restore point `m`; None when it is not a VM's.
pub(crate) fn vm_metadata(m: &Manifest) -> Result<Option<VmMetadata>> {
    VmMetadata::from_value(&m.metadata).map_err(|e| Error::Metadata(format!("restore point {}: {e}", m.short_id())))
}

/// The restore point's disks with what `meta` says about each.
pub(crate) fn stored_disks<'a>(m: &'a Manifest, meta: Option<&VmMetadata>) -> Vec<StoredDisk<'a>> {
    let info = |record: &DiskRecord| meta.and_then(|meta| meta.disk(&record.uuid)).cloned().unwrap_or_default();
    m.disks
        .iter()
        .map(|record| StoredDisk { record, position: record.position.to_string(), info: info(record) })
        .collect()
}

/// "<label> (restored <restore point time>)": the default name of what a restore creates.
pub(crate) fn restored_name(label: &str, m: &Manifest) -> String {
    format!("{label} (restored {})", m.time.format("%Y-%m-%d %H:%M"))
}

/// Restores the disk of restore point `m` that `which` names (see [`Manifest::disk`]) to
/// `target`. A new VDI is removed again when the restore fails.
pub async fn restore_disk(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    which: Option<&str>,
    target: &DiskTarget,
    opts: &DiskRestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<DiskRestoreReport> {
    let record = m.disk(which)?;
    let meta = vm_metadata(m)?;
    let stored = stored_disks(m, meta.as_ref())
        .into_iter()
        .find(|d| std::ptr::eq(d.record, record))
        .ok_or_else(|| Error::Metadata(format!("disk {} is not among the restore point's disks", record.describe())))?;
    let (vdi, done, vbd) = match target {
        DiskTarget::Existing { vdi_uuid } => {
            let vdi = by_uuid(client, "VDI", vdi_uuid)
                .await?
                .ok_or_else(|| Error::Target(format!("no VDI with uuid {vdi_uuid}")))?;
            if !opts.force {
                refuse_if_in_use(client, &vdi, vdi_uuid).await?;
            }
            check_fits(client, &stored, &vdi).await?;
            let writing = Writing { progress: &progress, cancel: &opts.cancel };
            let guard = Guard::take(client, &vdi, &writing).await?;
            let done = match overwrite(client, repo, m, &stored, &vdi, opts.differential, &writing).await {
                Ok(done) => done,
                Err(e) => return Err(guard.put_back(client, e).await),
            };
            guard.release(client).await;
            (vdi, done, None)
        }
        DiskTarget::New { sr_uuid, name_label, attach } => {
            // Everything named is checked before anything is created.
            let sr = by_uuid(client, "SR", sr_uuid)
                .await?
                .ok_or_else(|| Error::Target(format!("no SR with uuid {sr_uuid}")))?;
            let vm = match attach {
                Some(a) => Some((check_attach(client, a).await?, a)),
                None => None,
            };
            let label = match name_label {
                Some(l) => l.clone(),
                None => restored_name(&stored_label(&stored), m),
            };
            let mut made = Created::default();
            let result = async {
                let vdi = create_vdi(client, &sr, &label, &stored.info.name_description, stored.record.size, &mut made)
                    .await?;
                let writing = Writing { progress: &progress, cancel: &opts.cancel };
                let done = fill_new(client, repo, m, &stored, &vdi, &writing).await?;
                let vbd = match vm {
                    Some((vm, a)) => Some(attach_vdi(client, &vm, &vdi, a, &mut made).await?),
                    None => None,
                };
                Ok((vdi, done, vbd))
            }
            .await;
            match result {
                Ok(r) => r,
                Err(e) => return Err(made.undo(client, e).await),
            }
        }
    };
    let name_label = call_str(client, "VDI.get_name_label", &vdi).await?;
    let sr = call_ref(client, "VDI.get_SR", &[Value::from(vdi.as_str())]).await?;
    let (vbd_uuid, plugged) = vbd.unzip();
    Ok(DiskRestoreReport {
        restore_point: m.id.clone(),
        identity: opts.identity.clone(),
        source_vdi_uuid: stored.record.uuid.clone(),
        created: matches!(target, DiskTarget::New { .. }),
        name_label,
        sr_uuid: call_str(client, "SR.get_uuid", &sr).await?,
        vbd_uuid,
        plugged: plugged.unwrap_or(false),
        disk: done,
    })
}

/// The stored disk's name: its VDI's label, else the restore point's name for it.
fn stored_label(d: &StoredDisk<'_>) -> String {
    match d.info.name_label.as_str() {
        "" => d.record.name.clone(),
        l => l.to_owned(),
    }
}

/// A string field read with a getter such as `VDI.get_uuid`.
pub(crate) async fn call_str(client: &Client, getter: &str, reference: &str) -> Result<String> {
    let v = call(client, getter, &[Value::from(reference)]).await?;
    v.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("{getter} returned {v:?}")))
}

/// Refuses a VDI that a running VM has attached: writing under a running guest corrupts
/// its file systems.
async fn refuse_if_in_use(client: &Client, vdi: &str, vdi_uuid: &str) -> Result<()> {
    let vbds = call(client, "VDI.get_VBDs", &[Value::from(vdi)]).await?;
    for vbd in vbds.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let attached = call(client, "VBD.get_currently_attached", &[Value::from(vbd)]).await?.as_bool() == Some(true);
        let vm = call_ref(client, "VBD.get_VM", &[Value::from(vbd)]).await?;
        if attached && call_str(client, "VM.get_power_state", &vm).await? == "Running" {
            let (name, uuid) =
                (call_str(client, "VM.get_name_label", &vm).await?, call_str(client, "VM.get_uuid", &vm).await?);
            return Err(Error::Target(format!(
                "VDI {vdi_uuid} is attached to the running VM {name:?} ({uuid}): shut the VM down, or force the restore"
            )));
        }
    }
    Ok(())
}

/// The VM to attach to, after checking that it exists and the userdevice is free.
async fn check_attach(client: &Client, a: &Attach) -> Result<String> {
    let vm = by_uuid(client, "VM", &a.vm_uuid)
        .await?
        .ok_or_else(|| Error::Target(format!("no VM with uuid {}", a.vm_uuid)))?;
    let vbds = call(client, "VM.get_VBDs", &[Value::from(vm.as_str())]).await?;
    for vbd in vbds.as_array().into_iter().flatten().filter_map(Value::as_str) {
        if call_str(client, "VBD.get_userdevice", vbd).await? == a.userdevice {
            return Err(Error::Target(format!("VM {} already has a disk at userdevice {}", a.vm_uuid, a.userdevice)));
        }
    }
    Ok(vm)
}

/// Creates the VBD of `vdi` on `vm`, plugs it when asked and the VM runs; returns its uuid
/// and whether it was plugged.
async fn attach_vdi(client: &Client, vm: &str, vdi: &str, a: &Attach, made: &mut Created) -> Result<(String, bool)> {
    let vbd = create_vbd(client, vm, vdi, &a.userdevice, false, made).await?;
    let plug = a.plug && call_str(client, "VM.get_power_state", vm).await? == "Running";
    if plug {
        call(client, "VBD.plug", &[Value::from(vbd.as_str())]).await?;
    }
    Ok((call_str(client, "VBD.get_uuid", &vbd).await?, plug))
}

/// What a restore created in the pool, to remove when it fails.
#[derive(Default)]
pub struct Created {
    pub vm: Option<String>,
    pub vbds: Vec<String>,
    pub vdis: Vec<String>,
}

impl Created {
    /// Removes what was created (VBDs, then the VM with its VIFs, then the VDIs) and
    /// returns `error` saying so, and naming what could not be removed.
    pub async fn undo(self, client: &Client, error: Error) -> Error {
        if self.vm.is_none() && self.vbds.is_empty() && self.vdis.is_empty() {
            return error;
        }
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let steps = self
            .vbds
            .iter()
            .map(|r| ("VBD", r))
            .chain(self.vm.iter().map(|r| ("VM", r)))
            .chain(self.vdis.iter().map(|r| ("VDI", r)));
        for (class, reference) in steps {
            let uuid =
                call_str(client, &format!("{class}.get_uuid"), reference).await.unwrap_or_else(|_| reference.clone());
            match client.call(&format!("{class}.destroy"), &[Value::from(reference.as_str())]).await {
                Ok(_) => removed.push(format!("{class} {uuid}")),
                Err(e) => left.push(format!("{class} {uuid} ({e})")),
            }
        }
        tracing::warn!(error = %error, removed = ?removed, left = ?left, "restore failed: removed what it created");
        let mut cleanup = format!("removed what the restore had created: {}", removed.join(", "));
        if !left.is_empty() {
            cleanup.push_str(&format!("; could NOT remove: {}", left.join(", ")));
        }
        Error::CleanedUp { source: Box::new(error), cleanup }
    }
}

/// Creates an empty user VDI on `sr`.
pub async fn create_vdi(
    client: &Client,
    sr: &str,
    label: &str,
    description: &str,
    size: u64,
    made: &mut Created,
) -> Result<String> {
    let spec = serde_json::json!({
        "name_label": label, "name_description": description, "SR": sr,
        "virtual_size": size, "type": "user", "sharable": false, "read_only": false,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    });
    let vdi = call_ref(client, "VDI.create", &[to_value(&spec)?]).await?;
    made.vdis.push(vdi.clone());
    Ok(vdi)
}

/// Creates a read-write disk VBD (not plugged).
pub async fn create_vbd(
    client: &Client,
    vm: &str,
    vdi: &str,
    userdevice: &str,
    bootable: bool,
    made: &mut Created,
) -> Result<String> {
    let spec = serde_json::json!({
        "VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": bootable,
        "mode": "RW", "type": "Disk", "empty": false, "unpluggable": false, "other_config": {},
        "qos_algorithm_type": "", "qos_algorithm_params": {},
    });
    let vbd = call_ref(client, "VBD.create", &[to_value(&spec)?]).await?;
    made.vbds.push(vbd.clone());
    Ok(vbd)
}

/// Where a restore's disk writes report, and what stops them.
pub(crate) struct Writing<'a> {
    pub progress: &'a Arc<dyn Progress>,
    pub cancel: &'a CancellationToken,
}

impl Writing<'_> {
    /// A task of `phase` over stored disk `d` of restore point `m`, sized `total`.
    pub fn task(&self, m: &Manifest, d: &StoredDisk<'_>, phase: Phase, total: u64) -> Task {
        let what = match phase {
            Phase::Compare => " (compare)",
            _ => "",
        };
        let label = format!("{} disk {}{what}", m.source.name, d.position);
        Task::start(self.progress.clone(), Key::disk(&m.source.id, d.record.position, phase), label, total)
    }
}

/// Fills a new VDI, which reads as zeros, with the blocks the restore point holds.
pub(crate) async fn fill_new(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    d: &StoredDisk<'_>,
    vdi: &str,
    writing: &Writing<'_>,
) -> Result<DiskRestore> {
    let t = std::time::Instant::now();
    let reader = Arc::new(DiskReader::new(repo, d.record).await?);
    let disk = RepoDisk::new(reader, tokio::runtime::Handle::current());
    let blocks = {
        let disk = disk.clone();
        tokio::task::spawn_blocking(move || present_units(&disk, &tokio::runtime::Handle::current(), VHD_BLOCK))
            .await??
    };
    let bytes_sent = vhd_size(d.record.size, blocks.len());
    let task = writing.task(m, d, Phase::Restore, d.record.size);
    let cancel = writing.cancel.clone();
    let bytes_written =
        upload(client, vdi, DiskFormat::Vhd, bytes_sent, move |out| write_vhd(&disk, &blocks, out, &task, &cancel))
            .await?;
    Ok(DiskRestore {
        position: d.position.clone(),
        vdi_uuid: call_str(client, "VDI.get_uuid", vdi).await?,
        size: d.record.size,
        bytes_written,
        bytes_sent,
        bytes_compared: 0,
        method: None,
        method_reason: None,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Refuses a VDI that has not the stored disk's size (before anything is changed).
pub(crate) async fn check_fits(client: &Client, d: &StoredDisk<'_>, vdi: &str) -> Result<()> {
    let size = call(client, "VDI.get_virtual_size", &[Value::from(vdi)]).await?;
    let size = size.as_i64().and_then(|s| u64::try_from(s).ok()).or_else(|| size.as_str().and_then(|s| s.parse().ok()));
    if size != Some(d.record.size) {
        let vdi_uuid = call_str(client, "VDI.get_uuid", vdi).await?;
        let size = size.map_or_else(|| "of unknown size".to_owned(), |s| format!("{s} bytes"));
        return Err(Error::Target(format!(
            "VDI {vdi_uuid} is {size}, disk {} of the restore point is {} bytes: sizes must match (restore to a new VDI instead)",
            d.position, d.record.size
        )));
    }
    Ok(())
}

/// Writes stored disk `d` of restore point `point` over `vdi`, which must have its size
/// ([`check_fits`]). Differential: finds what differs and sends only that.
pub(crate) async fn overwrite(
    client: &Client,
    repo: &Repository,
    point: &Manifest,
    d: &StoredDisk<'_>,
    vdi: &str,
    differential: bool,
    writing: &Writing<'_>,
) -> Result<DiskRestore> {
    let t = std::time::Instant::now();
    let vdi_uuid = call_str(client, "VDI.get_uuid", vdi).await?;
    let reader = Arc::new(DiskReader::new(repo, d.record).await?);
    let disk = RepoDisk::new(reader.clone(), tokio::runtime::Handle::current());
    let mut done = DiskRestore {
        position: d.position.clone(),
        vdi_uuid,
        size: d.record.size,
        bytes_written: d.record.size,
        bytes_sent: d.record.size,
        bytes_compared: 0,
        method: None,
        method_reason: None,
        seconds: 0.0,
    };
    if differential {
        let target = crate::differential::Target { vdi, point, disk: d, snapshot_vdi_uuid: &d.info.snapshot_vdi_uuid };
        let plan = crate::differential::plan(client, repo, &target, &reader, writing).await?;
        tracing::info!(disk = %d.position, method = ?plan.method, reason = %plan.reason, ranges = plan.ranges.len(), "differential restore");
        let task = writing.task(point, d, Phase::Restore, plan.ranges.iter().map(|r| r.end - r.start).sum());
        let sent = crate::differential::upload_ranges(client, vdi, disk, plan.ranges, task, writing.cancel).await?;
        (done.bytes_written, done.bytes_sent, done.bytes_compared) = (sent.written, sent.sent, plan.bytes_compared);
        (done.method, done.method_reason) = (Some(plan.method), Some(plan.reason));
    } else {
        let task = writing.task(point, d, Phase::Restore, d.record.size);
        upload_raw(client, vdi, disk, task, writing.cancel).await?;
    }
    done.seconds = t.elapsed().as_secs_f64();
    Ok(done)
}

/// Pipes a blocking writer into an upload body.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams what `produce` writes (on a blocking thread) as the body of an import; returns
/// what `produce` returns. When `produce` fails (or is cancelled) the body ends in an
/// error, so the host drops the import rather than taking a short disk.
pub(crate) async fn upload(
    client: &Client,
    vdi: &str,
    format: DiskFormat,
    length: u64,
    produce: impl FnOnce(&mut std::io::BufWriter<ChannelWriter>) -> Result<u64> + Send + 'static,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let abort = tx.clone();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter { tx });
        let produced = produce(&mut out).and_then(|n| Ok(std::io::Write::flush(&mut out).map(|()| n)?));
        if let Err(e) = &produced {
            // The import may be gone already (then nobody reads this).
            let _ = abort.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        produced
    });
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let reference = Ref::new(vdi);
    let sent = client.import_raw_vdi(ImportTarget::Vdi(&reference), format, body, length).await;
    let produced = writer.await?;
    match (sent, produced) {
        (_, Err(Error::Cancelled)) => Err(Error::Cancelled),
        // A failed import drops the body: the writer then fails with a broken pipe, which
        // says less than the import's own error.
        (Err(e), _) => Err(e.into()),
        (Ok(_), produced) => produced,
    }
}

async fn upload_raw(client: &Client, vdi: &str, disk: RepoDisk, task: Task, cancel: &CancellationToken) -> Result<u64> {
    let size = disk.reader().size();
    let cancel = cancel.clone();
    upload(client, vdi, DiskFormat::Raw, size, move |out| {
        crate::export::export(&disk, crate::export::DiskFormat::Raw, out, &task, &cancel)?;
        Ok(size)
    })
    .await
}

/// A snapshot of a VDI about to be overwritten: an overwrite that stops half-way
/// (cancelled, failed) copies it back, so the disk is as it was. Taken once nothing
/// else can refuse the restore; a cancel before it leaves the disk untouched. An SR
/// that cannot snapshot gets an unguarded overwrite (and a failure says so).
pub(crate) struct Guard {
    vdi: String,
    snapshot: Result<String, String>,
}

impl Guard {
    pub async fn take(client: &Client, vdi: &str, writing: &Writing<'_>) -> Result<Self> {
        unless_cancelled(writing.cancel)?;
        let no_params = Value::Struct(Default::default());
        let snapshot = call_ref(client, "VDI.snapshot", &[Value::from(vdi), no_params]).await.map_err(|e| {
            tracing::warn!(vdi, error = %e, "no snapshot before the overwrite: a failure leaves the disk half written");
            e.to_string()
        });
        Ok(Guard { vdi: vdi.to_owned(), snapshot })
    }

    /// The overwrite is done: the snapshot goes.
    pub async fn release(self, client: &Client) {
        let Ok(snapshot) = self.snapshot else { return };
        if let Err(e) = client.call("VDI.destroy", &[Value::from(snapshot.as_str())]).await {
            tracing::warn!(%snapshot, error = %e, "could not remove the snapshot taken before the overwrite");
        }
    }

    /// The overwrite stopped with `error`: the disk gets its content back from the
    /// snapshot, which then goes. When that fails, the snapshot stays and the error names it.
    pub async fn put_back(self, client: &Client, error: Error) -> Error {
        let uuid = call_str(client, "VDI.get_uuid", &self.vdi).await.unwrap_or_else(|_| self.vdi.clone());
        let cleanup = match &self.snapshot {
            Err(why) => format!("VDI {uuid} may be half written (no snapshot could be taken before: {why})"),
            Ok(snapshot) => {
                let copied = async {
                    let sr = call_ref(client, "VDI.get_SR", &[Value::from(self.vdi.as_str())]).await?;
                    let args = [snapshot.as_str(), &sr, NULL_REF, &self.vdi].map(Value::from);
                    call(client, "VDI.copy", &args).await
                };
                match copied.await {
                    Ok(_) => {
                        self.release(client).await;
                        format!("VDI {uuid} was put back as it was before the restore")
                    }
                    Err(e) => {
                        let kept =
                            call_str(client, "VDI.get_uuid", snapshot).await.unwrap_or_else(|_| snapshot.clone());
                        format!(
                            "could NOT put VDI {uuid} back ({e}): its content before the restore is in snapshot VDI {kept}"
                        )
                    }
                }
            }
        };
        tracing::warn!(error = %error, "{cleanup}");
        Error::CleanedUp { source: Box::new(error), cleanup }
    }
}
