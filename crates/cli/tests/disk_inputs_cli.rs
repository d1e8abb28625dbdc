//! Picking the right disk and refusing bad inputs, through the real `xenvault` binary:
//! `--disk N` means the disk at position N (the VBD userdevice) in every restore point of
//! a VM with disks at positions 0 and 5, whatever order its incrementals stored them in,
//! and an N that is no position is refused with the list of disks; `backup-image` refuses
//! what holds no disk or is not what it seems; `files get` neither follows nor overwrites
//! what exists at `--to`, and `--to -` is stdout.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, Simulator};
use xenvault_xapi_wire::Value;

const PASS: &str = "disk inputs passphrase";
const FAILURE: i32 = 1;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output, what: &str) -> String {
    assert!(!text(&out.stderr).contains("panicked"), "{what} panicked:\n{}", text(&out.stderr));
    assert!(out.status.success(), "{what}: exit {:?}\nstderr: {}", out.status.code(), text(&out.stderr));
    text(&out.stdout)
}

/// A command that must fail with exit 1 and no panic; returns its stderr.
fn fails(out: Output, what: &str) -> String {
    assert!(!text(&out.stderr).contains("panicked"), "{what} panicked:\n{}", text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(FAILURE),
        "{what}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The binary with a repository, configuration and cache of its own under `dir`.
struct Cli {
    dir: PathBuf,
    repo: String,
}

impl Cli {
    fn new(name: &str) -> Cli {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cli = Cli { repo: dir.join("repo").to_str().unwrap().to_owned(), dir };
        ok(cli.run(&["init", "--repo", &cli.repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"]), "init");
        cli
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xenvault"))
            .args(args)
            .env("XENVAULT_PASSPHRASE", PASS)
            .env("XENVAULT_CONFIG", self.dir.join("config.toml"))
            .env("XENVAULT_CACHE_DIR", self.dir.join("cache"))
            .env("XENVAULT_REPO", &self.repo)
            .env_remove("XENVAULT_POOL_PASSWORD")
            .output()
            .expect("run xenvault")
    }

    fn point_count(&self) -> usize {
        let list: serde_json::Value =
            serde_json::from_str(&ok(self.run(&["snapshots", "--json"]), "snapshots")).unwrap();
        list.as_array().unwrap().len()
    }
}

struct Sim {
    runtime: tokio::runtime::Runtime,
    client: SimClient,
}

impl Sim {
    fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.runtime.block_on(self.client.call(method, params)).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn text(&self, method: &str, params: &[&str]) -> String {
        let v = self.call(method, params.iter().map(|p| Value::from(*p)).collect());
        v.as_str().unwrap_or_else(|| panic!("{method}: {v:?}")).to_owned()
    }

    /// Overwrites `len` bytes at `offset` of a disk with `byte`, as the guest would.
    fn write(&self, vdi_uuid: &str, offset: u64, len: usize, byte: u8) {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(vec![byte; len]);
        self.text("sim.write", &[vdi_uuid, &offset.to_string(), &data]);
    }
}

#[test]
fn disk_positions_select_the_same_disk_in_every_restore_point() {
    let cli = Cli::new("disk-positions");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sim = runtime.block_on(Simulator::start(SimConfig::new(cli.dir.join("sim")))).unwrap();
    let client = runtime.block_on(SimClient::login(&sim.url, &sim.password)).unwrap();
    let pool = Sim { runtime, client };
    let password = cli.dir.join("sim.password");
    std::fs::write(&password, &sim.password).unwrap();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim.cert_pem).unwrap();
    ok(
        cli.run(&[
            "pool",
            "add",
            "sim",
            "--url",
            &sim.url,
            "--fingerprint",
            &fingerprint,
            "--password-file",
            password.to_str().unwrap(),
        ]),
        "pool add",
    );

    // The VM's disk at position 0, and a second one of another size at position 5.
    let vms = pool.call("VM.get_by_name_label", vec![Value::from("win-fileserver")]);
    let vm = vms.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let vbds = pool.call("VM.get_VBDs", vec![Value::from(vm.as_str())]);
    let vbd0 = vbds
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .find(|v| pool.text("VBD.get_userdevice", &[v]) == "0")
        .unwrap();
    let vdi0 = pool.text("VBD.get_VDI", &[&vbd0]);
    let sr = pool.text("VDI.get_SR", &[&vdi0]);
    let spec = serde_json::json!({
        "name_label": "data at 5", "name_description": "", "SR": sr, "virtual_size": 8 << 20, "type": "user",
        "sharable": false, "read_only": false, "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    });
    let vdi5 = pool
        .call("VDI.create", vec![xenvault_xapi_wire::jsonrpc::from_json(&spec).unwrap()])
        .as_str()
        .unwrap()
        .to_owned();
    let spec = serde_json::json!({
        "VM": vm, "VDI": vdi5, "userdevice": "5", "bootable": false, "mode": "RW", "type": "Disk", "empty": false,
        "unpluggable": false, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
    });
    pool.call("VBD.create", vec![xenvault_xapi_wire::jsonrpc::from_json(&spec).unwrap()]);
    let uuids = [pool.text("VDI.get_uuid", &[&vdi0]), pool.text("VDI.get_uuid", &[&vdi5])];

    // A full backup and incrementals, each after guest writes to both disks.
    let mut points = Vec::new();
    for round in 0..4u8 {
        pool.write(&uuids[0], u64::from(round) << 20, 4096, 0x10 + round);
        pool.write(&uuids[1], u64::from(round) << 20, 8192, 0x50 + round);
        let report: serde_json::Value = serde_json::from_str(&ok(
            cli.run(&["backup", "--pool", "sim", "--vm", "win-fileserver", "--json"]),
            "backup",
        ))
        .unwrap();
        let vm = &report["vms"][0];
        assert_eq!(vm["status"], "ok", "{report}");
        if round > 0 {
            assert_eq!(vm["level"], "inc", "{report}");
        }
        // Nothing writes after the snapshot: the disks hold what was backed up.
        let sums = uuids.clone().map(|u| pool.text("sim.sha256", &[&u]));
        points.push((vm["restore_point"].as_str().unwrap().to_owned(), sums));
    }

    let list: serde_json::Value = serde_json::from_str(&ok(cli.run(&["snapshots", "--json"]), "snapshots")).unwrap();
    for m in list.as_array().unwrap() {
        let positions: Vec<_> =
            m["disks"].as_array().unwrap().iter().map(|d| d["position"].as_u64().unwrap()).collect();
        assert_eq!(positions, [0, 5], "stored sorted by position: {m}");
    }
    let exported = |id: &str, disk: Option<&str>| {
        let mut args = vec!["export", id, "--format", "raw", "--to", "-"];
        args.extend(disk.map(|d| ["--disk", d]).iter().flatten());
        let out = cli.run(&args);
        assert!(out.status.success(), "export {disk:?}: {}", text(&out.stderr));
        sha256(&out.stdout)
    };
    for (id, [sum0, sum5]) in &points {
        assert_eq!(&exported(id, Some("5")), sum5, "--disk 5 of {id}");
        assert_eq!(&exported(id, Some("0")), sum0, "--disk 0 of {id}");
        assert_eq!(&exported(id, None), sum0, "no --disk: the lowest position, of {id}");
        assert_eq!(&exported(id, Some(&uuids[1])), sum5, "--disk <uuid> of {id}");
        let image = cli.run(&["restore-image", id, "--disk", "5", "--to", "-"]);
        assert!(image.status.success(), "restore-image --disk 5: {}", text(&image.stderr));
        assert_eq!(&sha256(&image.stdout), sum5, "restore-image --disk 5 --to - of {id}");
    }

    // A number that is no position is refused, naming every disk; in every command taking --disk.
    let id = points[0].0.as_str();
    let scratch = cli.dir.join("never");
    let to = scratch.to_str().unwrap();
    for args in [
        vec!["export", id, "--disk", "1", "--format", "raw", "--to", to],
        vec!["restore-image", id, "--disk", "1", "--to", to],
        vec!["files", "ls", id, "--disk", "1"],
        vec!["files", "volumes", id, "--disk", "1"],
        vec!["serve-nbd", id, "--disk", "1", "--listen", "127.0.0.1:0"],
        vec!["mount", id, "--disk", "1", to],
        vec!["restore", "disk", id, "--disk", "1", "--pool", "sim", "--sr", "00000000-0000-4000-8000-000000000000"],
    ] {
        let err = fails(cli.run(&args), &format!("{args:?}"));
        assert!(err.contains("no disk at position 1"), "{args:?}: {err}");
        for (position, uuid) in [("0", &uuids[0]), ("5", &uuids[1])] {
            assert!(err.contains(&format!("position {position} (name \"{position}\", uuid {uuid}")), "{args:?}: {err}");
        }
    }
    assert!(!scratch.exists(), "a refused command wrote its output");
    assert!(!Path::new("-").exists(), "--to - created a file named -");
}

#[test]
fn backup_image_refuses_what_holds_no_disk_or_is_not_what_it_seems() {
    let cli = Cli::new("backup-image-inputs");
    let dir = cli.dir.join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, head: &[u8], len: usize| {
        let path = dir.join(name);
        let mut data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
        data[..head.len()].copy_from_slice(head);
        std::fs::write(&path, data).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let empty = file("empty.img", b"", 0);
    let noise = file("noise.vhd", b"", 1 << 20);
    // A dynamic VHD starts with a copy of its footer: without the footer at its end, it is cut.
    let cut = file("cut.vhd", b"conectix", 1 << 20);
    let qcow2 = file("disk.img", b"QFI\xfb", 1 << 20);
    let good = file("good.img", b"", 1 << 20);
    let directory = dir.to_str().unwrap().to_owned();
    for (path, says) in [
        (&directory, "is a directory"),
        (&"/dev/zero".to_owned(), "not a regular file or block device"),
        (&empty, "is empty"),
        (&noise, "named .vhd but is not a VHD"),
        (&cut, "footer is missing or damaged"),
        (&qcow2, "a qcow2 image"),
    ] {
        let err = fails(cli.run(&["backup-image", path]), path);
        assert!(err.contains(says), "{path}: {err}");
        // A bad file among good ones stores nothing.
        fails(cli.run(&["backup-image", &good, path]), path);
    }
    assert_eq!(cli.point_count(), 0, "a refused backup-image committed a restore point");
    for path in [&noise, &cut] {
        ok(cli.run(&["backup-image", "--format", "raw", path]), path);
    }
    let err = fails(cli.run(&["backup-image", "--format", "vhd", &good]), "--format vhd of a raw image");
    assert!(err.contains("not a VHD"), "{err}");
    assert_eq!(cli.point_count(), 2);
}

#[test]
fn files_get_never_follows_or_overwrites_and_dash_is_stdout() {
    let cli = Cli::new("files-get-to");
    let mut tree = xenvault_fixtures::Tree::new();
    tree.file("/etc/hostname", "stored\n", 0o644, xenvault_fixtures::DEFAULT_MTIME);
    tree.file("/etc/motd", "hello\n", 0o644, xenvault_fixtures::DEFAULT_MTIME);
    let image = cli.dir.join("fs.img");
    xenvault_fixtures::fat_image(&image, 16 << 20, None, &tree).unwrap();
    ok(cli.run(&["backup-image", image.to_str().unwrap()]), "backup-image");
    let get = |path: &str, to: &Path| cli.run(&["files", "get", "latest", path, "--to", to.to_str().unwrap()]);

    let out = cli.run(&["files", "get", "latest", "/etc/hostname", "--to", "-"]);
    assert_eq!(ok(out, "files get --to -"), "stored\n");
    assert!(!Path::new("-").exists() && !cli.dir.join("-").exists(), "--to - created a file named -");

    let victim = cli.dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = cli.dir.join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let err = fails(get("/etc/hostname", &link), "files get onto a symlink");
    assert!(err.contains("already exists"), "{err}");
    fails(get("/etc/hostname", &victim), "files get onto a file");
    let inside = cli.dir.join("etc");
    std::fs::create_dir(&inside).unwrap();
    std::os::unix::fs::symlink(&victim, inside.join("hostname")).unwrap();
    fails(get("/etc", &inside), "files get of a tree holding a symlink");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

    let fresh = cli.dir.join("fresh");
    ok(get("/etc", &fresh), "files get to a new directory");
    assert_eq!(std::fs::read_to_string(fresh.join("hostname")).unwrap(), "stored\n");
}
