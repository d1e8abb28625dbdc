//! Health checks of restore points.
//!
//! The boot check restores the point as a temporary VM without network (no VIFs) on a
//! chosen SR, starts it and waits for its guest agent to report (guest metrics): a pass,
//! with the time to boot. A VM that had no guest agent when it was backed up passes the
//! weaker check of staying up for a while; one that halts, restarts or stays silent when
//! its agent used to report fails. The temporary VM and its disks are removed whatever
//! happened, cancellation included.
//!
//! The no-boot check opens every volume of every disk of the point with the file-system
//! readers and walks its metadata: cheap enough after every backup, it finds file
//! systems that cannot be read back.

use crate::disk::{Identity, NULL_REF, vm_metadata};
use crate::vm::{Macs, Mode, VmRestoreOptions, call, call_ref, invalid, restore_vm};
use crate::{Error, RepoDisk, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use xenvault_fsread::{Content, FileSystem};
use xenvault_repo::{DiskReader, Manifest, Repository};
use xenvault_types::progress::Progress;
use xenvault_xapi::{Client, Value};

/// `other_config` key marking a temporary VM, with the restore point id as value.
pub const MARKER: &str = "xenvault-health-check";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    /// Passed only the weaker check (booted and stayed up; no guest agent to ask).
    WeakPass,
    Fail,
}

impl Outcome {
    pub fn passed(self) -> bool {
        self != Outcome::Fail
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::WeakPass => "weak pass",
            Outcome::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone)]
pub struct BootCheckOptions {
    /// SR uuid for the temporary disks (default: as a restore chooses).
    pub sr: Option<String>,
    /// How long the guest agent may take to report.
    pub timeout: Duration,
    /// A VM without a guest agent passes (weakly) once it has stayed running this long.
    pub stay_running: Duration,
    /// How often the VM is looked at while it boots.
    pub poll: Duration,
    /// Stops the check; the temporary VM is still removed.
    pub cancel: CancellationToken,
    pub identity: Identity,
}

impl Default for BootCheckOptions {
    fn default() -> Self {
        BootCheckOptions {
            sr: None,
            timeout: Duration::from_secs(300),
            stay_running: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            cancel: CancellationToken::new(),
            identity: Identity::default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BootCheckReport {
    pub restore_point: String,
    pub vm_name: String,
    pub outcome: Outcome,
    /// What passed, or why it failed.
    pub reason: String,
    /// From VM.start to the guest agent's first report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_boot: Option<f64>,
    /// The OS the guest agent reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<String>,
    /// Whether the VM had a guest agent reporting when it was backed up.
    pub agent_expected: bool,
    pub temporary_vm_uuid: String,
    pub restore_seconds: f64,
    pub seconds: f64,
    /// The temporary VM and disks that could not be removed (empty: all gone).
    pub left_behind: Vec<String>,
}

/// Restores `m` as a temporary VM, boots it and judges the boot (see the module docs).
/// An error means the check could not run (the restore failed, cancelled); a VM that
/// does not boot is a report with [`Outcome::Fail`].
pub async fn boot_check(
    client: &Client,
    repo: &Repository,
    m: &Manifest,
    opts: &BootCheckOptions,
    progress: Arc<dyn Progress>,
) -> Result<BootCheckReport> {
    let started = Instant::now();
    let meta = vm_metadata(m)?
        .ok_or_else(|| invalid(format!("restore point {} holds no VM records (not a VM backup?)", m.short_id())))?;
    let agent_expected = meta.records.vm.get("guest_metrics").and_then(|g| g.as_str()).is_some_and(|g| g != NULL_REF);
    let restore = VmRestoreOptions {
        mode: Mode::AsNew,
        sr: opts.sr.clone(),
        macs: Macs::New,
        cancel: opts.cancel.clone(),
        identity: opts.identity.clone(),
        ..Default::default()
    };
    let restored = restore_vm(client, repo, m, &restore, progress).await?;
    let restore_seconds = started.elapsed().as_secs_f64();
    let vm = call_ref(client, "VM.get_by_uuid", &[Value::from(restored.vm_uuid.as_str())]).await?;
    let judged = tokio::select! {
        judged = judge(client, &vm, m, &meta.vm.name_label, agent_expected, opts) => judged,
        () = opts.cancel.cancelled() => Err(Error::Cancelled),
    };
    let left_behind = remove_vm(client, &vm).await;
    let verdict = match judged {
        Ok(v) => v,
        Err(e) if left_behind.is_empty() => return Err(e),
        Err(e) => {
            let cleanup = format!("could NOT remove the temporary VM's {}", left_behind.join(", "));
            return Err(Error::CleanedUp { source: Box::new(e), cleanup });
        }
    };
    Ok(BootCheckReport {
        restore_point: m.id.clone(),
        vm_name: meta.vm.name_label.clone(),
        outcome: verdict.outcome,
        reason: verdict.reason,
        seconds_to_boot: verdict.seconds_to_boot,
        guest_os: verdict.guest_os,
        agent_expected,
        temporary_vm_uuid: restored.vm_uuid,
        restore_seconds,
        seconds: started.elapsed().as_secs_f64(),
        left_behind,
    })
}

struct Verdict {
    outcome: Outcome,
    reason: String,
    seconds_to_boot: Option<f64>,
    guest_os: Option<String>,
}

impl Verdict {
    fn fail(reason: String) -> Self {
        Verdict { outcome: Outcome::Fail, reason, seconds_to_boot: None, guest_os: None }
    }
}

/// Prepares the temporary VM (named, marked, without VIFs), starts it and watches it.
async fn judge(
    client: &Client,
    vm: &str,
    m: &Manifest,
    name: &str,
    agent_expected: bool,
    opts: &BootCheckOptions,
) -> Result<Verdict> {
    let label = format!("{name} (health check of {})", m.short_id());
    call(client, "VM.set_name_label", &[vm.into(), label.as_str().into()]).await?;
    call(client, "VM.add_to_other_config", &[vm.into(), MARKER.into(), m.id.as_str().into()]).await?;
    let vifs = call(client, "VM.get_VIFs", &[vm.into()]).await?;
    for vif in vifs.as_array().into_iter().flatten() {
        call(client, "VIF.destroy", std::slice::from_ref(vif)).await?;
    }
    let start = Instant::now();
    if let Err(e) = client.call("VM.start", &[vm.into(), false.into(), false.into()]).await {
        return Ok(Verdict::fail(format!("the VM did not start: {e}")));
    }
    let domid = record(client, vm).await?.domid;
    let wait = if agent_expected { opts.timeout } else { opts.stay_running.min(opts.timeout) };
    loop {
        let now = record(client, vm).await?;
        let after = start.elapsed().as_secs_f64();
        if now.power_state != "Running" {
            return Ok(Verdict::fail(format!("the VM stopped ({}) {after:.0} s after it started", now.power_state)));
        }
        if now.domid != domid {
            return Ok(Verdict::fail(format!("the VM restarted (domain {domid}, then {}): a crash?", now.domid)));
        }
        if now.guest_metrics != NULL_REF {
            let guest_os = guest_os(client, &now.guest_metrics).await?;
            let reason = format!("the guest agent reported {after:.1} s after the start");
            return Ok(Verdict { outcome: Outcome::Pass, reason, seconds_to_boot: Some(after), guest_os });
        }
        if start.elapsed() >= wait {
            let waited = wait.as_secs();
            return Ok(if agent_expected {
                Verdict::fail(format!(
                    "the guest agent did not report within {waited} s (it did when the VM was backed up)"
                ))
            } else {
                Verdict {
                    outcome: Outcome::WeakPass,
                    reason: format!(
                        "started and stayed running for {waited} s (no guest agent to report: the weaker check)"
                    ),
                    seconds_to_boot: None,
                    guest_os: None,
                }
            });
        }
        tokio::time::sleep(opts.poll).await;
    }
}

struct VmNow {
    power_state: String,
    domid: i64,
    guest_metrics: String,
}

async fn record(client: &Client, vm: &str) -> Result<VmNow> {
    let r = call(client, "VM.get_record", &[vm.into()]).await?;
    let field = |name: &str| r.as_struct().and_then(|s| s.get(name)).cloned().unwrap_or(Value::from(""));
    Ok(VmNow {
        power_state: field("power_state").as_str().unwrap_or_default().to_owned(),
        domid: field("domid").as_i64().unwrap_or(-1),
        guest_metrics: field("guest_metrics").as_str().unwrap_or(NULL_REF).to_owned(),
    })
}

/// `os_version["name"]` of the guest metrics, when there is one.
async fn guest_os(client: &Client, metrics: &str) -> Result<Option<String>> {
    let version = call(client, "VM_guest_metrics.get_os_version", &[metrics.into()]).await?;
    Ok(version.as_struct().and_then(|v| v.get("name")).and_then(Value::as_str).map(str::to_owned))
}

/// Halts and destroys the temporary VM with its disks; returns what could not be removed.
async fn remove_vm(client: &Client, vm: &str) -> Vec<String> {
    let mut left = Vec::new();
    let mut vdis = Vec::new();
    match call(client, "VM.get_VBDs", &[vm.into()]).await {
        Ok(vbds) => {
            for vbd in vbds.as_array().into_iter().flatten() {
                match call(client, "VBD.get_VDI", std::slice::from_ref(vbd)).await {
                    Ok(Value::Str(vdi)) if vdi != NULL_REF => vdis.push(vdi),
                    Ok(_) => {}
                    Err(e) => left.push(format!("VBD {vbd:?} ({e})")),
                }
            }
        }
        Err(e) => left.push(format!("VM {vm} ({e})")),
    }
    let halted = matches!(call(client, "VM.get_power_state", &[vm.into()]).await, Ok(Value::Str(s)) if s == "Halted");
    if !halted && let Err(e) = call(client, "VM.hard_shutdown", &[vm.into()]).await {
        tracing::warn!("health check: stopping the temporary VM {vm}: {e}");
    }
    if let Err(e) = call(client, "VM.destroy", &[vm.into()]).await {
        left.push(format!("VM {vm} ({e})"));
    }
    for vdi in vdis {
        if let Err(e) = call(client, "VDI.destroy", &[vdi.as_str().into()]).await {
            left.push(format!("VDI {vdi} ({e})"));
        }
    }
    left
}

/// One volume the no-boot check looked at.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VolumeCheck {
    /// The disk's position in the restore point.
    pub disk: String,
    pub volume: String,
    /// `ext4`, `xfs`, ..., `lvm-pv`, `swap`, `unknown`.
    pub content: String,
    /// Entries walked (files, directories, links).
    pub entries: u64,
    /// Why the volume or its file system could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NoBootReport {
    pub restore_point: String,
    pub vm_name: String,
    pub outcome: Outcome,
    pub reason: String,
    pub volumes: Vec<VolumeCheck>,
    pub seconds: f64,
}

/// Opens every volume of every disk of `m` and walks each file system's whole tree:
/// fails when one cannot be read; a weak pass when no file system was found at all.
pub async fn no_boot_check(repo: &Repository, m: &Manifest, cancel: &CancellationToken) -> Result<NoBootReport> {
    let started = Instant::now();
    let mut volumes = Vec::new();
    for disk in &m.disks {
        crate::export::unless_cancelled(cancel)?;
        let reader = Arc::new(DiskReader::new(repo, disk).await?);
        let source = RepoDisk::new(reader, tokio::runtime::Handle::current());
        let (position, cancel) = (disk.position.to_string(), cancel.clone());
        let checked = tokio::task::spawn_blocking(move || check_disk(source, &position, &cancel)).await??;
        volumes.extend(checked);
    }
    let broken: Vec<String> =
        volumes.iter().filter_map(|v| v.error.as_ref().map(|e| format!("disk {} {}: {e}", v.disk, v.volume))).collect();
    let file_systems = volumes.iter().filter(|v| v.error.is_none() && v.entries > 0).count();
    let (outcome, reason) = match (broken.is_empty(), file_systems) {
        (false, _) => (Outcome::Fail, format!("unreadable: {}", broken.join("; "))),
        (true, 0) => (Outcome::WeakPass, "no file system found to read (blank or unknown disks)".to_owned()),
        (true, n) => (Outcome::Pass, format!("{n} file system(s) read to the end")),
    };
    let vm_name = vm_metadata(m).ok().flatten().map(|meta| meta.vm.name_label).unwrap_or_else(|| m.source.name.clone());
    Ok(NoBootReport {
        restore_point: m.id.clone(),
        vm_name,
        outcome,
        reason,
        volumes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The volumes of one disk, each file system walked (on a blocking thread).
fn check_disk(source: RepoDisk, position: &str, cancel: &CancellationToken) -> Result<Vec<VolumeCheck>> {
    let check = |volume: &str, content: String, error: Option<String>| VolumeCheck {
        disk: position.to_owned(),
        volume: volume.to_owned(),
        content,
        entries: 0,
        error,
    };
    let found = match xenvault_fsread::probe(Arc::new(source)) {
        Ok(found) => found,
        Err(e) => return Ok(vec![check("disk", "unknown".into(), Some(format!("partition table: {e}")))]),
    };
    let mut out = Vec::new();
    for volume in &found {
        crate::export::unless_cancelled(cancel)?;
        let info = crate::files::VolumeInfo::from(volume);
        let mut result = check(&volume.name, info.content.clone(), None);
        match &volume.content {
            Content::FileSystem(_) => match volume.open() {
                Ok(fs) => match walk(&*fs, cancel) {
                    Ok(n) => result.entries = n,
                    Err(e) => result.error = Some(e.to_string()),
                },
                Err(e) => result.error = Some(e.to_string()),
            },
            Content::Unreadable(why) => result.error = Some(why.clone()),
            Content::LvmPhysicalVolume | Content::Swap | Content::Unknown => {}
        }
        out.push(result);
    }
    Ok(out)
}

/// Entries below `/`, every directory listed (which reads its inodes or records).
fn walk(fs: &dyn FileSystem, cancel: &CancellationToken) -> Result<u64> {
    let mut entries = 0;
    for entry in fs.walk("/") {
        entry?;
        entries += 1;
        if entries % 4096 == 0 {
            crate::export::unless_cancelled(cancel)?;
        }
    }
    Ok(entries)
}
