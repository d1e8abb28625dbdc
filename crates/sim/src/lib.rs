//! xenvault-sim: a XenAPI pool simulator that speaks xapi's wire protocols (XML-RPC,
//! JSON-RPC, the HTTP transfer handlers, NBD with TLS) over sparse copy-on-write
//! disks with changed block tracking. Tests start it in-process with
//! [`Simulator::start`]; `xenvault sim serve` runs it standalone.
//!
//! Simulator-only calls (not in xapi; int64 arguments as decimal strings):
//! `sim.write(session, vdi, offset, base64)`, `sim.scribble(session, vdi, percent,
//! write_size, seed)`, `sim.sha256(session, vdi)`, `sim.inject_fault(session,
//! method, code, [params], times)`, `sim.clear_faults(session)`,
//! `sim.set_cut(session, "http"|"nbd", bytes)`, `sim.set_latency(session, ms)`,
//! `sim.set_bandwidth(session, bytes_per_second)` (`""` clears a limit),
//! `sim.crash_on_boot(session, vm_name_glob_or_uuid, seconds)`.
//!
//! Boots: `VM.start` (and reboots) give the VM a new domain (`domid`,
//! `VM_metrics.start_time`); when its boot disk's file system carries xe-guest-utilities the
//! guest agent reports after [`SimConfig::guest_agent_delay`] (`VM_guest_metrics` with the
//! disk's `/etc/os-release`); a halted VM loses its guest metrics, as in xapi.
//!
//! The demo pool: hosts `xenvault-sim-1` (master, the listen address) and
//! `xenvault-sim-2` (127.0.0.2 when listening on 127.0.0.1: transfers of its local
//! disks get a 302 there), a shared SR and a local SR per host, an `nbd` network
//! whose PIFs have 127.0.0.1, VMs `debian-web` (running, tools with
//! `feature-quiesce`, root + LVM data disk on the shared SR), `win-fileserver`
//! (running on host 2, no tools, GPT+NTFS disk on host 2's local SR), the template
//! `Debian 12 template` and `debian-clone` cloned from it, and [`SimConfig::fleet_vms`]
//! more clones of it. With
//! [`DemoDisks::Fixtures`] the disks hold xenvault-fixtures' file systems and
//! their manifests stay in `STATE_DIR/fixtures/*.manifest.json`.

mod boot;
mod cbt;
pub mod client;
mod datamodel;
mod db;
mod db_restore;
mod dump;
mod error;
pub mod faults;
mod http;
mod methods;
mod nbd;
mod persist;
mod records;
mod seed;
mod server;
mod state;
mod storage;
mod tls;
mod wire;

pub use error::ApiError;
pub use faults::{BootCrash, CallFault, Faults};
pub use seed::DemoDisks;
pub use server::{SimError, SimHandle, Simulator};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pool database, disks and certificate live here; reused on restart.
    pub state_dir: PathBuf,
    /// HTTP(S) address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// root's password.
    pub password: String,
    /// Serve plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// NBD port (xapi uses 10809; 0 picks a free one), on the listen address.
    pub nbd_port: u16,
    /// What the demo VMs' disks hold on first start.
    pub demo_disks: DemoDisks,
    /// Faults active from the start.
    pub faults: Faults,
    /// Answer `VM.snapshot_with_quiesce` with `MESSAGE_REMOVED`, as xapi ≥ 24 does.
    pub quiesce_removed: bool,
    /// How long after a start the guest agent of a VM whose boot disk carries guest tools
    /// reports (guest metrics appear).
    pub guest_agent_delay: Duration,
    /// Halted VMs `fleet-0001`... (tag `fleet`) cloned from the template on first start:
    /// a large pool whose disks share the template's data.
    pub fleet_vms: usize,
}

impl SimConfig {
    /// Defaults for tests: loopback, any ports, password `xenvault`, HTTPS,
    /// small blank demo disks.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SimConfig {
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password: DEFAULT_PASSWORD.to_owned(),
            plain_http: false,
            nbd_port: 0,
            demo_disks: DemoDisks::Blank(16 << 20),
            faults: Faults::default(),
            quiesce_removed: false,
            fleet_vms: 0,
            guest_agent_delay: Duration::from_millis(500),
        }
    }
}

pub const DEFAULT_PASSWORD: &str = "xenvault";
