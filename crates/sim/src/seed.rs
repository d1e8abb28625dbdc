//! The demo pool made on first start: two hosts, local and shared SRs, networks
//! (one for NBD), a Linux VM (MBR+ext4 root, LVM data disk, guest tools), a
//! Windows-like VM (GPT+NTFS, no tools), a Linux template and a VM cloned from it, and
//! optionally a fleet of more clones (halted, tagged `fleet`) for scale tests.

use crate::db::{NULL_REF, new_ref};
use crate::error::{ApiError, ApiResult};
use crate::methods::{devices, vdi, vm};
use crate::records;
use crate::state::State;
use crate::storage::BLOCK;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use xenvault_xapi_wire::Value;

/// What the demo VMs' disks hold.
#[derive(Debug, Clone)]
pub enum DemoDisks {
    /// Real file systems from xenvault-fixtures (built once into the state dir).
    Fixtures,
    /// Empty disks of this size (fast, for tests that bring their own data).
    Blank(u64),
}

const GIB: i64 = 1 << 30;

/// The tag every fleet VM carries, for a selection to match them all.
const FLEET_TAG: &str = "fleet";

/// Seeds `st` with the demo pool and `fleet_vms` clones of the template; `addresses` are
/// where the two hosts listen.
pub fn seed(
    st: &mut State,
    addresses: [&str; 2],
    disks: &DemoDisks,
    fleet_vms: usize,
    state_dir: &Path,
) -> ApiResult<()> {
    let images = match disks {
        DemoDisks::Fixtures => Some(
            xenvault_fixtures::build_demo_disks(&state_dir.join("fixtures"))
                .map_err(|e| ApiError::internal(format!("building demo disks: {e}")))?,
        ),
        DemoDisks::Blank(_) => None,
    };
    let db = &mut st.db;
    let hosts: Vec<String> = (1..=2)
        .zip(addresses)
        .map(|(n, address)| {
            let metrics = new_ref();
            db.insert("host_metrics", metrics.clone(), records::host_metrics(64 * GIB));
            let host = new_ref();
            db.insert("host", host.clone(), records::host(&format!("xenvault-sim-{n}"), address, &metrics));
            host
        })
        .collect();
    let master = hosts[0].clone();

    let shared_sr = new_ref();
    db.insert("SR", shared_sr.clone(), records::sr("Shared NFS storage", "nfs", true, 2048 * GIB));
    let mut local_srs = Vec::new();
    for host in &hosts {
        let sr = new_ref();
        db.insert("SR", sr.clone(), records::sr("Local storage", "ext", false, 512 * GIB));
        for target in [&sr, &shared_sr] {
            let pbd = new_ref();
            db.insert("PBD", pbd.clone(), records::pbd(host, target));
            db.add_to_set("SR", target, "PBDs", &pbd)?;
            db.add_to_set("host", host, "PBDs", &pbd)?;
        }
        local_srs.push(sr);
    }
    let pool = new_ref();
    db.insert("pool", pool, records::pool(&master, &shared_sr));

    // eth0: management; eth1: the NBD network, on loopback so clients can reach it.
    let management = new_ref();
    db.insert("network", management.clone(), records::network("Pool-wide network associated with eth0", "xenbr0", &[]));
    let nbd = new_ref();
    db.insert("network", nbd.clone(), records::network("NBD network", "xenbr1", &["nbd"]));
    let internal = new_ref();
    db.insert("network", internal, records::network("Host internal management network", "xenapi", &[]));
    for ((n, host), address) in hosts.iter().enumerate().zip(addresses) {
        for (device, network, ip, mgmt) in [("eth0", &management, address, true), ("eth1", &nbd, "127.0.0.1", false)] {
            let pif = new_ref();
            let mac = format!("52:54:00:00:0{n}:{}", if mgmt { "01" } else { "02" });
            db.insert("PIF", pif.clone(), records::pif(host, network, device, ip, &mac, mgmt));
            db.add_to_set("host", host, "PIFs", &pif)?;
            db.add_to_set("network", network, "PIFs", &pif)?;
        }
    }
    for (n, host) in hosts.iter().enumerate() {
        let dom0 = add_vm(st, &format!("Control domain on host: xenvault-sim-{}", n + 1), false)?;
        st.db.update("VM", &dom0, |r| {
            r.insert("is_control_domain".into(), Value::Bool(true));
            r.insert("domid".into(), Value::Int(0));
        })?;
        vm::set_power(st, &dom0, "Running", host)?;
        st.db.set("host", host, "control_domain", Value::from(dom0))?;
    }

    let blank = match disks {
        DemoDisks::Blank(size) => *size,
        DemoDisks::Fixtures => 0,
    };
    let disk = |img: Option<&xenvault_fixtures::DemoDisk>| {
        (img.map(|d| d.path.clone()), img.map_or(blank, |d| d.manifest.size))
    };

    // Linux VM on the shared SR, running on the master, tools reporting quiesce.
    let linux = add_vm(st, "debian-web", false)?;
    let (root_path, root_size) = disk(images.as_ref().map(|i| &i.linux_root));
    add_disk(st, &linux, "debian-web root", &shared_sr, root_size, root_path.as_deref(), "0", true)?;
    let (data_path, data_size) = disk(images.as_ref().map(|i| &i.linux_data));
    add_disk(st, &linux, "debian-web data", &shared_sr, data_size, data_path.as_deref(), "1", false)?;
    add_vif(st, &linux, &management, "52:54:00:12:34:01")?;
    let tools = vm::add_guest_metrics(st, "Debian GNU/Linux 12 (bookworm)", "debian", &[("feature-quiesce", "1")]);
    st.db.set("VM", &linux, "guest_metrics", Value::from(tools))?;
    st.db.add_to_set("VM", &linux, "tags", "demo")?;
    vm::set_power(st, &linux, "Running", &master)?;

    // Windows-like VM on the second host's local SR: no guest tools.
    let windows = add_vm(st, "win-fileserver", false)?;
    let (win_path, win_size) = disk(images.as_ref().map(|i| &i.windows));
    add_disk(st, &windows, "win-fileserver C:", &local_srs[1], win_size, win_path.as_deref(), "0", true)?;
    add_vif(st, &windows, &management, "52:54:00:12:34:02")?;
    st.db.update("VM", &windows, |r| {
        r.insert("platform".into(), crate::db::str_map([("viridian", "true"), ("device_id", "0002")]));
    })?;
    vm::set_power(st, &windows, "Running", &hosts[1])?;

    // A Linux template holding a copy of the root disk, and a VM cloned from it.
    let template = add_vm(st, "Debian 12 template", true)?;
    add_disk(st, &template, "Debian 12 template root", &shared_sr, root_size, root_path.as_deref(), "0", true)?;
    add_vif(st, &template, &management, "52:54:00:12:34:03")?;
    let clone = crate::methods::vm::clone_of(st, &template, "debian-clone")?;
    st.db.set("VM", &clone, "is_a_template", Value::Bool(false))?;
    // As VM.clone does in xapi: new records, the disks shared copy-on-write (no data copied).
    for n in 1..=fleet_vms {
        let vm = crate::methods::vm::clone_of(st, &template, &format!("fleet-{n:04}"))?;
        st.db.set("VM", &vm, "is_a_template", Value::Bool(false))?;
        st.db.add_to_set("VM", &vm, "tags", FLEET_TAG)?;
    }
    // The images now live in the disk store; their manifests stay for tests to read.
    for image in images.iter().flat_map(|i| [&i.linux_root, &i.linux_data, &i.windows]) {
        std::fs::remove_file(&image.path)?;
    }
    Ok(())
}

fn add_vm(st: &mut State, name: &str, template: bool) -> ApiResult<String> {
    let metrics = new_ref();
    st.db.insert("VM_metrics", metrics.clone(), records::vm_metrics());
    let vm = new_ref();
    st.db.insert("VM", vm.clone(), records::vm(name, template, &metrics, NULL_REF));
    Ok(vm)
}

#[allow(clippy::too_many_arguments)]
fn add_disk(
    st: &mut State,
    vm: &str,
    name: &str,
    sr: &str,
    size: u64,
    image: Option<&Path>,
    userdevice: &str,
    bootable: bool,
) -> ApiResult<()> {
    let vdi_ref = vdi::create(st, name, sr, size, "user")?;
    if let Some(path) = image {
        load_image(st, &vdi_ref, path)?;
    }
    let spec: BTreeMap<String, Value> = [
        ("VM", Value::from(vm)),
        ("VDI", Value::from(vdi_ref.as_str())),
        ("userdevice", Value::from(userdevice)),
        ("bootable", Value::Bool(bootable)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    devices::create_vbd(st, &spec)?;
    Ok(())
}

fn add_vif(st: &mut State, vm: &str, network: &str, mac: &str) -> ApiResult<()> {
    let spec: BTreeMap<String, Value> = [
        ("VM", Value::from(vm)),
        ("network", Value::from(network)),
        ("MAC", Value::from(mac)),
        ("device", Value::from("0")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    devices::create_vif(st, &spec)?;
    Ok(())
}

/// Copies a raw image into a VDI, skipping zero blocks (the disk stays sparse).
fn load_image(st: &mut State, vdi_ref: &str, path: &Path) -> ApiResult<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(BLOCK) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if buf[..n].iter().any(|&b| b != 0) {
            vdi::write_guest(st, vdi_ref, offset, &buf[..n])?;
        }
        offset += n as u64;
    }
    vdi::finish_writes(st, vdi_ref)
}
