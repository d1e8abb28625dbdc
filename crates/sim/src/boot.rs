//! What happens after a VM starts: a new domain, the guest agent reporting when the boot
//! disk carries guest tools, and the crashes faults ask for.
//!
//! Whether a guest has tools is decided as a boot would see it: the file systems of the
//! VM's boot disk are read (with xenvault-fsread) for xe-guest-utilities' daemon; its
//! guest metrics then carry the distribution from that disk's `/etc/os-release`.

use crate::db::{NULL_REF, new_ref, now_date, str_map};
use crate::error::{ApiError, ApiResult};
use crate::methods::{Args, vdi, vm};
use crate::records;
use crate::state::{SharedSim, State};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use xenvault_fsread::{Content, EntryKind, FileSystem, ReadAt};
use xenvault_xapi_wire::Value;

/// The `VM.*` calls that boot a new domain.
pub const BOOTS: &[&str] = &["start", "start_on", "clean_reboot", "hard_reboot"];

/// xe-guest-utilities' daemon, which writes the guest metrics to xenstore.
const AGENT: &str = "/usr/sbin/xe-daemon";

/// What the Linux guest agent reports in `other` (xapi reads the features there).
const LINUX_FEATURES: &[(&str, &str)] = &[
    ("feature-shutdown", "1"),
    ("feature-poweroff", "1"),
    ("feature-reboot", "1"),
    ("feature-suspend", "1"),
    ("feature-balloon", "1"),
    ("has-vendor-device", "0"),
];

/// One boot of a VM: later steps act only while this domain is still the one running.
#[derive(Debug, Clone)]
struct Domain {
    vm: String,
    domid: i64,
}

impl Domain {
    fn running(&self, st: &State) -> bool {
        let field = |name| st.db.field("VM", &self.vm, name).ok();
        field("power_state").and_then(Value::as_str) == Some("Running")
            && field("domid").and_then(Value::as_i64) == Some(self.domid)
    }
}

/// A new domain for `vm`: the next domid, and `VM_metrics.start_time` now.
pub fn new_domain(st: &mut State, vm: &str) -> ApiResult<i64> {
    st.last_domid += 1;
    let metrics = st.db.str_field("VM", vm, "metrics")?;
    if st.db.exists("VM_metrics", &metrics) {
        st.db.update("VM_metrics", &metrics, |r| {
            r.insert("start_time".into(), now_date());
            r.insert("last_updated".into(), now_date());
        })?;
    }
    Ok(st.last_domid)
}

/// The highest domid in a loaded pool, for [`new_domain`] to go on from.
pub fn highest_domid(st: &State) -> i64 {
    st.db
        .objects()
        .filter(|(_, o)| o.class == "VM")
        .filter_map(|(_, o)| o.fields.get("domid")?.as_i64())
        .fold(0, i64::max)
}

/// A halted VM's guest metrics go (xapi destroys them with the domain).
pub fn forget_guest_metrics(st: &mut State, vm: &str) -> ApiResult<()> {
    let metrics = st.db.str_field("VM", vm, "guest_metrics")?;
    if metrics == NULL_REF || metrics.is_empty() {
        return Ok(());
    }
    if st.db.exists("VM_guest_metrics", &metrics) {
        st.db.remove(&metrics);
    }
    st.db.set("VM", vm, "guest_metrics", Value::from(NULL_REF))
}

/// `VM.start` and the reboots: the power change, then the boot runs on in the background.
pub async fn start(sim: &SharedSim, name: &str, args: &Args<'_>) -> ApiResult<Value> {
    let (result, domain) = sim.with(|st| {
        let result =
            vm::call(st, name, args, &sim.runtime).unwrap_or_else(|| Err(ApiError::method_unknown(args.method)))?;
        let vm = args.str(1)?.to_owned();
        let domid = st.db.field("VM", &vm, "domid")?.as_i64().unwrap_or(-1);
        Ok((result, Domain { vm, domid }))
    })?;
    tokio::spawn(boot(sim.clone(), domain));
    Ok(result)
}

enum Step {
    Crash,
    Report(GuestOs),
}

/// The guest agent's report after the configured delay, and a crash when a fault asks
/// for one, in time order; each only while the domain started is still running.
async fn boot(sim: SharedSim, domain: Domain) {
    let started = Instant::now();
    let crash = {
        let st = sim.lock();
        let field = |name| st.db.str_field("VM", &domain.vm, name).unwrap_or_default();
        st.faults.boot_crash(&field("name_label"), &field("uuid"))
    };
    let (reader, vm) = (sim.clone(), domain.vm.clone());
    let agent = tokio::task::spawn_blocking(move || guest_agent(&reader, &vm)).await.ok().flatten();
    // A crash at the same moment as the report wins: the agent never gets to say anything.
    let mut steps: Vec<(Duration, Step)> = crash.map(|after| (after, Step::Crash)).into_iter().collect();
    if let Some(os) = agent {
        steps.push((sim.runtime.guest_agent_delay, Step::Report(os)));
    }
    steps.sort_by_key(|(at, _)| *at);
    for (at, step) in steps {
        tokio::time::sleep_until(started + at).await;
        let outcome = sim.with(|st| {
            if !domain.running(st) {
                return Ok(false);
            }
            match &step {
                Step::Crash => {
                    // As with actions_after_crash = destroy: the domain is gone, the VM halted.
                    let host = st.db.str_field("VM", &domain.vm, "resident_on")?;
                    vm::set_power(st, &domain.vm, "Halted", &host)?;
                    Ok(false)
                }
                Step::Report(os) => report(st, &domain.vm, os).map(|()| true),
            }
        });
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!("booting {}: {e}", domain.vm);
                return;
            }
        }
    }
}

/// The distribution the guest agent reports, from `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq)]
struct GuestOs {
    name: String,
    distro: String,
    major: String,
    minor: String,
}

/// Guest metrics as xe-guest-utilities write them, with an IP per attached VIF.
fn report(st: &mut State, vm: &str, os: &GuestOs) -> ApiResult<()> {
    let mut networks = Vec::new();
    for vif in st.db.refs_field("VM", vm, "VIFs")? {
        let vif = st.db.get("VIF", &vif)?;
        if vif.get("currently_attached").and_then(Value::as_bool) == Some(true) {
            let device = vif.get("device").and_then(Value::as_str).unwrap_or("0").to_owned();
            let host_part = 10 + device.parse::<u8>().unwrap_or(0) % 200;
            networks.push((format!("{device}/ip"), format!("192.168.122.{host_part}")));
        }
    }
    let mut record = records::vm_guest_metrics(&os.name, &os.distro, LINUX_FEATURES);
    let version = [("name", &os.name), ("distro", &os.distro), ("major", &os.major), ("minor", &os.minor)];
    record.insert("os_version".into(), str_map(version.iter().map(|(k, v)| (*k, v.as_str()))));
    record.insert("networks".into(), str_map(networks.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    record.insert("last_updated".into(), now_date());
    let metrics = new_ref();
    st.db.insert("VM_guest_metrics", metrics.clone(), record);
    st.db.set("VM", vm, "guest_metrics", Value::from(metrics))
}

/// The guest OS when a file system of the VM's boot disk holds the guest agent.
fn guest_agent(sim: &SharedSim, vm: &str) -> Option<GuestOs> {
    let source = boot_disk(sim, vm)?;
    let volumes = xenvault_fsread::probe(Arc::new(source)).ok()?;
    volumes.iter().filter(|v| matches!(v.content, Content::FileSystem(_))).find_map(|volume| {
        let fs: Box<dyn FileSystem> = volume.open().ok()?;
        let agent = fs.stat(AGENT).ok()?;
        (agent.kind == EntryKind::File).then(|| os_release(&fs.read("/etc/os-release").unwrap_or_default()))
    })
}

/// `/etc/os-release` fields (`KEY="value"` lines) as the agent reports them.
fn os_release(text: &[u8]) -> GuestOs {
    let text = String::from_utf8_lossy(text);
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let version = field("VERSION_ID");
    let mut numbers = version.split('.');
    let major = numbers.next().unwrap_or_default().to_owned();
    // "12" is 12.0; no VERSION_ID at all says nothing.
    let minor = numbers.next().unwrap_or(if major.is_empty() { "" } else { "0" }).to_owned();
    GuestOs { name: field("PRETTY_NAME"), distro: field("ID"), major, minor }
}

/// The disk the VM boots from: its bootable disk VBD, else the one at the lowest position.
fn boot_disk(sim: &SharedSim, vm: &str) -> Option<DiskSource> {
    let st = sim.lock();
    let mut disks: Vec<(bool, i64, String)> = st
        .db
        .refs_field("VM", vm, "VBDs")
        .ok()?
        .iter()
        .filter_map(|vbd| {
            let rec = st.db.get("VBD", vbd).ok()?;
            let text = |name| rec.get(name).and_then(Value::as_str).unwrap_or_default();
            if text("type") != "Disk" || rec.get("empty").and_then(Value::as_bool) == Some(true) {
                return None;
            }
            let bootable = rec.get("bootable").and_then(Value::as_bool) == Some(true);
            Some((!bootable, text("userdevice").parse().unwrap_or(i64::MAX), text("VDI").to_owned()))
        })
        .collect();
    disks.sort();
    let vdi_ref = disks.into_iter().map(|(_, _, v)| v).find(|v| st.db.exists("VDI", v))?;
    let disk = vdi::disk_id(&st, &vdi_ref).ok()?;
    let size = st.storage.size(&disk).ok()?;
    Some(DiskSource { sim: sim.clone(), disk, size })
}

/// A VDI's guest-visible bytes, read under the state lock one request at a time.
struct DiskSource {
    sim: SharedSim,
    disk: String,
    size: u64,
}

impl ReadAt for DiskSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(self.size - offset).unwrap_or(usize::MAX));
        let Some(part) = buf.get_mut(..n) else { return Ok(0) };
        self.sim.lock().storage.read(&self.disk, offset, part)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields() {
        let os = os_release(b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n");
        assert_eq!(
            os,
            GuestOs {
                name: "Debian GNU/Linux 12 (bookworm)".into(),
                distro: "debian".into(),
                major: "12".into(),
                minor: "0".into()
            }
        );
        let os = os_release(b"ID=\"rocky\"\nVERSION_ID=9.3\n");
        assert_eq!((os.distro.as_str(), os.major.as_str(), os.minor.as_str()), ("rocky", "9", "3"));
        assert_eq!(os_release(b"\xff\xfe"), GuestOs::default());
    }
}
