//! The restore commands' contract through the real `xenvault` binary, against one simulated
//! pool shared by every test of this file: `restore vm` (as new, over the original,
//! differential, as a template, onto another SR), `export` in every format to a file and to
//! stdout, `files ls|get`, `serve-nbd` (plain and TLS), and the exit codes of bad input.
//! Disks are compared with the simulator's `sim.sha256`, exports with qemu-img, NBD with
//! nbdinfo/nbdcopy, files with the fixtures' manifest of what the simulated disk holds.

mod sim_pool;
mod standalone_sim;

use sha2::{Digest, Sha256};
use sim_pool::{fails, json, no_panic, ok, text};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use xenvault_fixtures::{DiskManifest, EntryKind, FsManifest};
use xenvault_sim::client::SimClient;
use xenvault_sim::{DemoDisks, SimConfig, SimHandle, Simulator};
use xenvault_xapi_wire::Value;

const PASS: &str = "restore cli passphrase";
/// The smallest demo VM with real file systems: one 256 MiB disk, GPT with FAT32 (p1) and NTFS (p2).
const VM: &str = "win-fileserver";
const DISK_SIZE: u64 = 256 << 20;
/// The documented exit codes (crates/cli/src/exit.rs; clap's usage error).
const FAILURE: i32 = 1;
const USAGE: i32 = 2;
const AUTH: i32 = 5;

/// The simulated pool, registered as `sim` (certificate pinned), a repository, and one
/// restore point of `VM`.
struct Pool {
    runtime: tokio::runtime::Runtime,
    sim: SimHandle,
    client: SimClient,
    dir: PathBuf,
    config: PathBuf,
    repo: String,
    id: String,
    vm_uuid: String,
    vdi_uuid: String,
    disk_sha256: String,
    manifest: DiskManifest,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::start)
}

fn sha256_hex(data: impl Read) -> String {
    let mut hasher = Sha256::new();
    let mut reader = BufReader::with_capacity(1 << 20, data);
    loop {
        let buf = reader.fill_buf().unwrap();
        if buf.is_empty() {
            break;
        }
        hasher.update(buf);
        let n = buf.len();
        reader.consume(n);
    }
    hex::encode(hasher.finalize())
}

fn sha256_file(path: &Path) -> String {
    sha256_hex(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

impl Pool {
    fn start() -> Pool {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("restore-cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let config = SimConfig { demo_disks: DemoDisks::Fixtures, ..SimConfig::new(dir.join("sim")) };
        let sim = runtime.block_on(Simulator::start(config)).unwrap();
        let client = runtime.block_on(SimClient::login(&sim.url, &sim.password)).unwrap();
        let manifest_path = sim.state_dir.join("fixtures/windows.manifest.json");
        let manifest: DiskManifest = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        let mut pool = Pool {
            runtime,
            client,
            config: dir.join("config.toml"),
            repo: dir.join("repo").to_str().unwrap().to_owned(),
            dir,
            id: String::new(),
            vm_uuid: String::new(),
            vdi_uuid: String::new(),
            disk_sha256: String::new(),
            manifest,
            sim,
        };
        let fingerprint = xenvault_pool::config::fingerprint_of_pem(&pool.sim.cert_pem).unwrap();
        let url = pool.sim.url.clone();
        let file = pool.dir.join("sim.password");
        std::fs::write(&file, &pool.sim.password).unwrap();
        ok(
            pool.run(&[
                "pool",
                "add",
                "sim",
                "--url",
                &url,
                "--fingerprint",
                &fingerprint,
                "--password-file",
                file.to_str().unwrap(),
            ]),
            "pool add",
        );
        ok(pool.run(&["init", "--repo", &pool.repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"]), "init");
        let report =
            json(&ok(pool.run(&["backup", "--pool", "sim", "--vm", VM, "--repo", &pool.repo, "--json"]), "backup"));
        let vm = &report["vms"][0];
        assert_eq!(vm["status"], "ok", "{report}");
        pool.id = vm["restore_point"].as_str().unwrap().to_owned();
        pool.vm_uuid = vm["vm_uuid"].as_str().unwrap().to_owned();
        pool.vdi_uuid = vm["disks"][0]["vdi_uuid"].as_str().unwrap().to_owned();
        // Nothing writes to the simulated disk after the snapshot: it holds what was backed up.
        pool.disk_sha256 = pool.sha256(&pool.vdi_uuid);
        pool
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xenvault"));
        cmd.args(args)
            .env("XENVAULT_PASSPHRASE", PASS)
            .env("XENVAULT_CONFIG", &self.config)
            .env("XENVAULT_CACHE_DIR", self.dir.join("cache"))
            .env("XENVAULT_REPO", &self.repo)
            .env_remove("XENVAULT_POOL_PASSWORD");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run xenvault")
    }

    fn run_with_passphrase(&self, args: &[&str], passphrase: &str) -> Output {
        self.command(args).env("XENVAULT_PASSPHRASE", passphrase).output().expect("run xenvault")
    }

    /// A fresh scratch directory for one test.
    fn scratch(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn call(&self, method: &str, params: &[&str]) -> Value {
        let params = params.iter().map(|p| Value::from(*p)).collect();
        self.runtime.block_on(self.client.call(method, params)).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn call_str(&self, method: &str, params: &[&str]) -> String {
        self.call(method, params).as_str().unwrap_or_else(|| panic!("{method} returned no string")).to_owned()
    }

    fn refs(&self, method: &str, params: &[&str]) -> Vec<String> {
        let v = self.call(method, params);
        v.as_array()
            .unwrap_or_else(|| panic!("{method}: {v:?}"))
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    fn sha256(&self, vdi_uuid: &str) -> String {
        self.call_str("sim.sha256", &[vdi_uuid])
    }

    fn vm_ref(&self, uuid: &str) -> String {
        self.call_str("VM.get_by_uuid", &[uuid])
    }

    /// The VDI uuids of a VM's disks, by device position.
    fn disks(&self, vm_uuid: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for vbd in self.refs("VM.get_VBDs", &[&self.vm_ref(vm_uuid)]) {
            if self.call_str("VBD.get_type", &[&vbd]) != "Disk" {
                continue;
            }
            let vdi = self.call_str("VBD.get_VDI", &[&vbd]);
            out.insert(self.call_str("VBD.get_userdevice", &[&vbd]), self.call_str("VDI.get_uuid", &[&vdi]));
        }
        out
    }

    fn macs(&self, vm_uuid: &str) -> BTreeSet<String> {
        self.refs("VM.get_VIFs", &[&self.vm_ref(vm_uuid)])
            .iter()
            .map(|vif| self.call_str("VIF.get_MAC", &[vif]))
            .collect()
    }

    fn sr_of(&self, vdi_uuid: &str) -> String {
        let vdi = self.call_str("VDI.get_by_uuid", &[vdi_uuid]);
        let sr = self.call_str("VDI.get_SR", &[&vdi]);
        self.call_str("SR.get_uuid", &[&sr])
    }

    /// `restore vm` with `extra` flags: the JSON report, checked against the contract, and
    /// every restored disk checked against the backed-up one.
    fn restore_vm(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["restore", "vm", &self.id, "--repo", &self.repo, "--pool", "sim", "--json"];
        args.extend(extra);
        let report = json(&ok(self.run(&args), &format!("restore vm {extra:?}")));
        assert_eq!(report["restore_point"], self.id.as_str(), "{report}");
        assert_eq!(report["differential"], extra.contains(&"--differential"), "{report}");
        assert_eq!(report["mode"], if extra.contains(&"--overwrite") { "overwrite" } else { "as-new" }, "{report}");
        assert!(report["seconds"].as_f64().is_some() && report["name_label"].is_string(), "{report}");
        let vm_uuid = report["vm_uuid"].as_str().unwrap();
        let disks = report["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 1, "{report}");
        let on_pool = self.disks(vm_uuid);
        for d in disks {
            let (position, vdi) = (d["position"].as_str().unwrap(), d["vdi_uuid"].as_str().unwrap());
            assert_eq!(on_pool.get(position).map(String::as_str), Some(vdi), "{report}");
            assert_eq!(d["size"], DISK_SIZE, "{report}");
            assert!(d["bytes_written"].as_u64().is_some_and(|n| n <= DISK_SIZE), "{report}");
            assert_eq!(self.sha256(vdi), self.disk_sha256, "disk {position} after restore vm {extra:?}");
        }
        report
    }

    /// Overwrites 8 KiB of the original disk as the guest would.
    fn guest_write(&self) {
        let data = "paWl".repeat(2730); // 8190 bytes of 0xa5, base64
        self.call("sim.write", &[&self.vdi_uuid, &(3u64 << 20).to_string(), &data]);
        assert_ne!(self.sha256(&self.vdi_uuid), self.disk_sha256);
    }
}

#[test]
fn restore_vm_as_new_as_template_onto_an_sr_over_the_original_and_differential() {
    let p = pool();
    let original_macs = p.macs(&p.vm_uuid);
    assert!(!original_macs.is_empty());

    let new = p.restore_vm(&["--as-new"]);
    let new_uuid = new["vm_uuid"].as_str().unwrap();
    assert_ne!(new_uuid, p.vm_uuid);
    assert_eq!(p.call("VM.get_is_a_template", &[&p.vm_ref(new_uuid)]), Value::Bool(false));
    let new_macs = p.macs(new_uuid);
    assert_eq!(new_macs.len(), original_macs.len());
    assert!(
        new_macs.is_disjoint(&original_macs),
        "the original still exists: {new_macs:?} must be fresh MACs, not {original_macs:?}"
    );

    let template = p.restore_vm(&["--as-template"]);
    let template_uuid = template["vm_uuid"].as_str().unwrap();
    assert!(template_uuid != new_uuid && template_uuid != p.vm_uuid);
    assert_eq!(p.call("VM.get_is_a_template", &[&p.vm_ref(template_uuid)]), Value::Bool(true));

    // Onto an SR other than the original's (a local SR of host 2): the shared SR.
    let original_sr = p.sr_of(&p.vdi_uuid);
    let shared = p
        .refs("SR.get_all", &[])
        .into_iter()
        .find(|sr| p.call("SR.get_shared", &[sr]) == Value::Bool(true))
        .expect("the demo pool has a shared SR");
    let shared_uuid = p.call_str("SR.get_uuid", &[&shared]);
    assert_ne!(shared_uuid, original_sr);
    let moved = p.restore_vm(&["--as-new", "--sr", &shared_uuid]);
    assert_eq!(p.sr_of(moved["disks"][0]["vdi_uuid"].as_str().unwrap()), shared_uuid);
    assert_eq!(p.sr_of(new["disks"][0]["vdi_uuid"].as_str().unwrap()), original_sr, "without --sr: the original SR");
    let mapped = p.restore_vm(&["--sr-map", &format!("{original_sr}={shared_uuid}")]);
    assert_eq!(p.sr_of(mapped["disks"][0]["vdi_uuid"].as_str().unwrap()), shared_uuid, "--sr-map");
    let kept = p.restore_vm(&["--macs", "keep"]);
    assert_eq!(p.macs(kept["vm_uuid"].as_str().unwrap()), original_macs, "--macs keep");

    // Over the original, differentially and in full, after guest writes.
    p.guest_write();
    let diff = p.restore_vm(&["--overwrite", "--yes", "--differential"]);
    assert_eq!(diff["vm_uuid"], p.vm_uuid.as_str());
    assert_eq!(diff["disks"][0]["vdi_uuid"], p.vdi_uuid.as_str());
    p.guest_write();
    let full = p.restore_vm(&["--overwrite", "--yes"]);
    assert_eq!(full["vm_uuid"], p.vm_uuid.as_str());
    assert_eq!(full["disks"][0]["bytes_written"], DISK_SIZE);
    assert_eq!(p.macs(&p.vm_uuid), original_macs, "overwriting keeps the VM's own MACs");
}

#[test]
fn restore_disk_into_a_new_vdi_and_differentially_over_it() {
    let p = pool();
    let sr = p.sr_of(&p.vdi_uuid);
    let base = ["restore", "disk", p.id.as_str(), "--disk", "0", "--pool", "sim", "--json"];
    let args = [&base[..], &["--sr", sr.as_str(), "--name", "restored by the cli test"]].concat();
    let new = json(&ok(p.run(&args), "restore disk --sr"));
    assert_eq!(new["created"], true, "{new}");
    assert_eq!(new["name_label"], "restored by the cli test", "{new}");
    assert_eq!(new["sr_uuid"], sr.as_str(), "{new}");
    let vdi = new["vdi_uuid"].as_str().unwrap().to_owned();
    assert_ne!(vdi, p.vdi_uuid);
    assert_eq!(p.sha256(&vdi), p.disk_sha256);

    // 8 KiB written over the new disk, then only what differs is written back.
    p.call("sim.write", &[&vdi, &(5u64 << 20).to_string(), &"paWl".repeat(2730)]);
    assert_ne!(p.sha256(&vdi), p.disk_sha256);
    let args = [&base[..], &["--vdi", vdi.as_str(), "--differential"]].concat();
    let diff = json(&ok(p.run(&args), "restore disk --vdi --differential"));
    assert_eq!(diff["created"], false, "{diff}");
    assert_eq!(diff["vdi_uuid"], vdi.as_str(), "{diff}");
    assert!(diff["method"].is_string(), "{diff}");
    let written = diff["bytes_written"].as_u64().unwrap();
    assert!((8190..=64 << 10).contains(&written), "8 KiB changed, {written} written: {diff}");
    assert_eq!(p.sha256(&vdi), p.disk_sha256);

    fails(p.run(&base), USAGE, "restore disk without --vdi or --sr");
    let args = [&base[..], &["--sr", sr.as_str(), "--attach", p.vm_uuid.as_str()]].concat();
    fails(p.run(&args), USAGE, "restore disk --attach without --device");
    let args = [&base[..], &["--vdi", "00000000-0000-0000-0000-000000000000"]].concat();
    fails(p.run(&args), FAILURE, "restore disk over a VDI that does not exist");
}

/// Checks an XVA (a tar stream) with Python: every chunk against its checksum file, then
/// the disk reassembled from its 1 MiB chunks (missing ones are zeros); prints its SHA-256.
const XVA_CHECK: &str = r#"
import hashlib, re, sys, tarfile, xxhash
size = int(sys.argv[1])
chunks, last, names = {}, None, []
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for m in tar:
        names.append(m.name)
        data = tar.extractfile(m).read() if m.isfile() else b""
        if m.name.endswith(".xxhash"):
            assert data.decode().strip().upper() == xxhash.xxh64(last).hexdigest().upper(), m.name
        elif m.name.endswith(".checksum"):
            assert data.decode().strip() == hashlib.sha1(last).hexdigest(), m.name
        elif re.fullmatch(r"Ref:\d+/\d{8}", m.name):
            last = data
            if data:
                chunks[int(m.name.split("/")[1])] = data
assert names[0] == "ova.xml", names[:3]
disk = hashlib.sha256()
for n in range((size + (1 << 20) - 1) >> 20):
    disk.update(chunks.get(n, bytes(min(1 << 20, size - (n << 20)))))
print(disk.hexdigest())
"#;

fn check_xva(xva: impl Read) -> String {
    let mut python = Command::new("python3")
        .args(["-c", XVA_CHECK, &DISK_SIZE.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = python.stdin.take().unwrap();
    let mut xva = xva;
    std::io::copy(&mut xva, &mut stdin).unwrap();
    drop(stdin);
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "the XVA does not check: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// `export ... --to -` with its stdout streamed to `consume`.
fn export_stdout<T>(p: &Pool, format: &str, consume: impl FnOnce(&mut dyn Read) -> T) -> T {
    let mut child = p
        .command(&["export", &p.id, "--disk", "0", "--format", format, "--to", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = consume(child.stdout.as_mut().unwrap());
    ok(child.wait_with_output().unwrap(), &format!("export {format} to stdout"));
    result
}

#[test]
fn export_every_format_to_a_file_and_to_stdout() {
    let p = pool();
    let dir = p.scratch("export");
    let file = |f: &str| dir.join(format!("disk.{f}"));
    let path = |f: &str| file(f).to_str().unwrap().to_owned();
    for format in ["raw", "vhd", "qcow2", "xva"] {
        let out =
            ok(p.run(&["export", &p.id, "--disk", "0", "--format", format, "--to", &path(format), "--json"]), format);
        assert_eq!(json(&out)["to"], path(format).as_str(), "{out}");
    }
    let raw = path("raw");
    assert_eq!(sha256_file(&file("raw")), p.disk_sha256, "raw export");
    tool("qemu-img", &["compare", "-f", "vpc", "-F", "raw", &path("vhd"), &raw]);
    tool("qemu-img", &["compare", "-f", "qcow2", "-F", "raw", &path("qcow2"), &raw]);
    tool("qemu-img", &["check", "-f", "qcow2", &path("qcow2")]);
    tool("vhdiinfo", &[&path("vhd")]);
    assert_eq!(check_xva(std::fs::File::open(file("xva")).unwrap()), p.disk_sha256, "XVA export");

    // The same through stdout.
    assert_eq!(export_stdout(p, "raw", |out| sha256_hex(out)), p.disk_sha256, "raw to stdout");
    for format in ["vhd", "qcow2"] {
        let piped = dir.join(format!("stdout.{format}"));
        export_stdout(p, format, |out| std::io::copy(out, &mut std::fs::File::create(&piped).unwrap()).unwrap());
        let fmt = if format == "vhd" { "vpc" } else { format };
        tool("qemu-img", &["compare", "-f", fmt, "-F", "raw", piped.to_str().unwrap(), &raw]);
    }
    assert_eq!(export_stdout(p, "xva", |out| check_xva(out)), p.disk_sha256, "XVA to stdout");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every entry of a file system's manifest, as found under `root` (an extraction or a mount).
fn check_tree(root: &Path, fs: &FsManifest, label: &str) {
    use std::os::unix::fs::MetadataExt;
    for f in &fs.files {
        let local = root.join(f.path.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&local).unwrap_or_else(|e| panic!("{label}:{}: {e}", f.path));
        match f.kind {
            EntryKind::File => {
                assert_eq!(meta.len(), f.size, "{label}:{}", f.path);
                assert_eq!(Some(sha256_file(&local)), f.sha256, "{label}:{}", f.path);
                if let Some(mtime) = f.mtime {
                    assert_eq!(meta.mtime(), mtime, "{label}:{}", f.path);
                }
            }
            EntryKind::Dir => assert!(meta.is_dir(), "{label}:{}", f.path),
            EntryKind::Symlink => {
                assert_eq!(std::fs::read_link(&local).unwrap().to_str(), f.target.as_deref(), "{label}:{}", f.path)
            }
        }
    }
}

#[test]
fn files_ls_and_get_match_what_the_disk_holds() {
    let p = pool();
    let dir = p.scratch("files");
    let fields: BTreeSet<&str> =
        ["name", "path", "kind", "size", "mode", "uid", "gid", "mtime", "mtime_nsec", "symlink_target"].into();
    for volume in &p.manifest.volumes {
        let Some(fs) = &volume.fs else { continue };
        let part = volume.name.as_str();
        // Every directory lists (JSON, the contract's fields) at least its manifest children.
        let dirs =
            std::iter::once("/").chain(fs.files.iter().filter(|f| f.kind == EntryKind::Dir).map(|f| f.path.as_str()));
        for d in dirs {
            let listing = json(&ok(p.run(&["files", "ls", &p.id, "--disk", "0", "--partition", part, d, "--json"]), d));
            let listed: BTreeMap<&str, &serde_json::Value> =
                listing.as_array().unwrap().iter().map(|e| (e["path"].as_str().unwrap(), e)).collect();
            for e in listed.values() {
                let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
                assert!(keys.is_subset(&fields) && keys.len() >= fields.len() - 1, "{part}:{d}: {e}");
            }
            let parent = |path: &str| {
                path.rsplit_once('/').map(|(p, _)| if p.is_empty() { "/" } else { p }).unwrap_or("/").to_owned()
            };
            for f in fs.files.iter().filter(|f| parent(&f.path) == d) {
                let e = listed.get(f.path.as_str()).unwrap_or_else(|| panic!("{part}:{d} lacks {}: {listing}", f.path));
                let kind = match f.kind {
                    EntryKind::File => "file",
                    EntryKind::Dir => "dir",
                    EntryKind::Symlink => "symlink",
                };
                assert_eq!(e["kind"], kind, "{part}:{}", f.path);
                if f.kind == EntryKind::File {
                    assert_eq!(e["size"], f.size, "{part}:{}", f.path);
                }
                if let Some(mtime) = f.mtime {
                    assert_eq!(e["mtime"], mtime, "{part}:{}", f.path);
                }
            }
        }
        // The whole tree extracts byte-identically.
        let dest = dir.join(part);
        let stats = json(&ok(
            p.run(&[
                "files",
                "get",
                &p.id,
                "--disk",
                "0",
                "--partition",
                part,
                "/",
                "--to",
                dest.to_str().unwrap(),
                "--json",
            ]),
            part,
        ));
        assert_eq!(stats["files"], fs.files.iter().filter(|f| f.kind == EntryKind::File).count(), "{stats}");
        check_tree(&dest, fs, part);
    }
    // One file, to a file name; the default volume is the largest file system (NTFS, p2).
    let ntfs = p.manifest.volumes.iter().find(|v| v.name == "p2").and_then(|v| v.fs.as_ref()).unwrap();
    let wanted = ntfs.files.iter().find(|f| f.path.ends_with("installer.msi")).unwrap();
    let one = dir.join("installer.msi");
    ok(
        p.run(&["files", "get", &p.id, "--disk", "0", &wanted.path, "--to", one.to_str().unwrap()]),
        "files get one file",
    );
    assert_eq!(Some(sha256_file(&one)), wanted.sha256);
    // `ls` of a file lists the file itself.
    let listing = json(&ok(p.run(&["files", "ls", &p.id, "--disk", "0", &wanted.path, "--json"]), "ls of a file"));
    assert_eq!(listing.as_array().map(Vec::len), Some(1), "{listing}");
    assert_eq!(
        (&listing[0]["path"], &listing[0]["kind"], &listing[0]["size"]),
        (&wanted.path.as_str().into(), &"file".into(), &wanted.size.into())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A command running until interrupted (`serve-nbd`, `mount`): its first stdout line (the
/// URL, the mount notice), its further lines, and a stop by SIGINT.
struct Foreground {
    child: Child,
    first: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Foreground {
    fn serve_nbd(p: &Pool, extra: &[&str]) -> Foreground {
        let mut args = vec!["serve-nbd", &p.id, "--disk", "0", "--listen", "127.0.0.1:0"];
        args.extend(extra);
        let mut child = p.command(&args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let first = Self::line(&mut stdout);
        Foreground { child, first, stdout }
    }

    fn line(stdout: &mut BufReader<std::process::ChildStdout>) -> String {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "serve-nbd ended early");
        line.trim_end().to_owned()
    }

    /// Stops the server the way an operator does (Ctrl-C): it must exit 0.
    fn stop(mut self) {
        tool("kill", &["-INT", &self.child.id().to_string()]);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve-nbd exited with {status}");
    }
}

/// A failed test must not leave a server running.
impl Drop for Foreground {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What nbdinfo and nbdcopy read from `url`: the size and the SHA-256 of the content.
fn read_nbd(url: &str) -> (u64, String) {
    let size = tool("nbdinfo", &["--size", url]).trim().parse().unwrap();
    let mut copy = Command::new("nbdcopy").args([url, "-"]).stdout(Stdio::piped()).spawn().unwrap();
    let digest = sha256_hex(copy.stdout.take().unwrap());
    assert!(copy.wait().unwrap().success(), "nbdcopy {url}");
    (size, digest)
}

fn refused(url: &str) {
    let out = Command::new("nbdinfo").args(["--size", url]).output().unwrap();
    assert!(!out.status.success(), "{url} was served: {}", text(&out.stdout));
}

#[test]
fn serve_nbd_plain_and_over_tls() {
    let p = pool();
    let plain = Foreground::serve_nbd(p, &[]);
    assert!(plain.first.starts_with("nbd://127.0.0.1:"), "{}", plain.first);
    assert_eq!(read_nbd(&plain.first), (DISK_SIZE, p.disk_sha256.clone()));
    plain.stop();

    // A self-signed certificate: the fingerprint and PEM are printed for the client to trust.
    let dir = p.scratch("nbd-tls");
    let mut own = Foreground::serve_nbd(p, &["--tls"]);
    assert!(own.first.starts_with("nbds://127.0.0.1:"), "{}", own.first);
    let fingerprint = Foreground::line(&mut own.stdout);
    let mut pem = String::new();
    while !pem.contains("-----END CERTIFICATE-----") {
        pem += &Foreground::line(&mut own.stdout);
        pem.push('\n');
    }
    let expected = xenvault_pool::config::fingerprint_of_pem(&pem).unwrap();
    assert_eq!(fingerprint, format!("certificate sha256 {expected}"));
    let self_signed = dir.join("self-signed");
    std::fs::create_dir_all(&self_signed).unwrap();
    std::fs::write(self_signed.join("ca-cert.pem"), &pem).unwrap();
    let trusting = |url: &str, pki: &Path| format!("{url}?tls-certificates={}", pki.display());
    assert_eq!(read_nbd(&trusting(&own.first, &self_signed)), (DISK_SIZE, p.disk_sha256.clone()));
    refused(&own.first.replacen("nbds://", "nbd://", 1));

    // A CA-signed certificate from certtool (RSA key in PKCS#1 PEM after a text dump), given
    // as files. (certtool's EC keys carry a 33-byte scalar that ring refuses.)
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let f = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    std::fs::write(f("ca.info"), "cn = xenvault test CA\nca\ncert_signing_key\nexpiration_days = 30\n").unwrap();
    std::fs::write(
        f("server.info"),
        "organization = xenvault\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
    )
    .unwrap();
    for key in ["ca-key.pem", "server-key.pem"] {
        tool("certtool", &["--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", &f(key)]);
    }
    tool(
        "certtool",
        &[
            "--generate-self-signed",
            "--load-privkey",
            &f("ca-key.pem"),
            "--template",
            &f("ca.info"),
            "--outfile",
            &f("ca-cert.pem"),
        ],
    );
    tool(
        "certtool",
        &[
            "--generate-certificate",
            "--load-privkey",
            &f("server-key.pem"),
            "--load-ca-certificate",
            &f("ca-cert.pem"),
            "--load-ca-privkey",
            &f("ca-key.pem"),
            "--template",
            &f("server.info"),
            "--outfile",
            &f("server-cert.pem"),
        ],
    );
    let signed = Foreground::serve_nbd(p, &["--tls-cert", &f("server-cert.pem"), "--tls-key", &f("server-key.pem")]);
    assert!(signed.first.starts_with("nbds://"), "{}", signed.first);
    assert_eq!(read_nbd(&trusting(&signed.first, &pki)), (DISK_SIZE, p.disk_sha256.clone()));
    // Each server is trusted only through its own certificate.
    refused(&trusting(&signed.first, &self_signed));
    refused(&trusting(&own.first, &pki));
    signed.stop();
    own.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_exits_with_the_documented_codes() {
    let p = pool();
    let dir = p.scratch("errors");
    let unknown = "0123456789abcdef0123456789abcdef";
    let to = dir.join("out.raw");
    let to = to.to_str().unwrap();
    let id = p.id.as_str();

    // Unknown restore point, disk, volume, path: failures naming what is wrong.
    for args in [
        vec!["restore", "vm", unknown, "--repo", &p.repo, "--pool", "sim", "--json"],
        vec!["files", "ls", unknown, "--disk", "0", "--json"],
        vec!["export", unknown, "--disk", "0", "--format", "raw", "--to", to],
    ] {
        assert!(fails(p.run(&args), FAILURE, &args.join(" ")).contains("not found"));
    }
    for args in [
        vec!["files", "ls", id, "--disk", "7", "--json"],
        vec!["files", "get", id, "--disk", "7", "/x", "--to", to],
        vec!["export", id, "--disk", "7", "--format", "qcow2", "--to", to],
        vec!["serve-nbd", id, "--disk", "7", "--listen", "127.0.0.1:0"],
    ] {
        assert!(fails(p.run(&args), FAILURE, &args.join(" ")).contains("no disk at position 7"));
    }
    assert!(!Path::new(to).exists(), "a failed export left a file");
    let err = fails(p.run(&["files", "ls", id, "--disk", "0", "--partition", "p9", "--json"]), FAILURE, "partition p9");
    assert!(err.contains("p9") && err.contains("p1, p2"), "{err}");
    let err = fails(
        p.run(&["files", "get", id, "--disk", "0", "--partition", "p2", "/no such file", "--to", to]),
        FAILURE,
        "missing file",
    );
    assert!(err.contains("/no such file"), "{err}");
    let err = fails(
        p.run(&["restore", "vm", id, "--repo", &p.repo, "--pool", "sim", "--sr", unknown]),
        FAILURE,
        "unknown SR",
    );
    assert!(err.contains(unknown), "{err}");
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let err = fails(
        p.run(&["serve-nbd", id, "--listen", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", missing]),
        FAILURE,
        "missing cert",
    );
    assert!(err.contains("missing.pem"), "{err}");
    // Immutability asked of a repository that cannot give it: refused before any snapshot.
    let snapshots = || json(&ok(p.run(&["snapshots", "--json"]), "snapshots")).as_array().map(Vec::len);
    let before = snapshots();
    let err = fails(
        p.run(&["backup", "--pool", "sim", "--vm", VM, "--repo", &p.repo, "--lock-days", "1"]),
        FAILURE,
        "--lock-days on a directory",
    );
    assert!(err.contains("--lock-days") && err.contains("object lock"), "{err}");
    assert_eq!(snapshots(), before, "no restore point may be made");

    // Wrong passphrase and refused pool credentials: AUTH.
    for args in [
        vec!["restore", "vm", id, "--repo", &p.repo, "--pool", "sim", "--json"],
        vec!["files", "ls", id, "--disk", "0", "--json"],
        vec!["export", id, "--disk", "0", "--format", "vhd", "--to", to],
        vec!["serve-nbd", id, "--disk", "0", "--listen", "127.0.0.1:0"],
    ] {
        assert!(fails(p.run_with_passphrase(&args, "wrong"), AUTH, &args.join(" ")).contains("wrong passphrase"));
    }
    let refused = p
        .command(&["restore", "vm", id, "--repo", &p.repo, "--pool", "sim", "--json"])
        .env("XENVAULT_POOL_PASSWORD", "wrong")
        .output()
        .unwrap();
    fails(refused, AUTH, "refused pool credentials");

    // Contradictory or malformed arguments: usage.
    for args in [
        vec!["restore", "vm", id, "--pool", "sim", "--differential"],
        vec!["restore", "vm", id, "--pool", "sim", "--overwrite", "--as-new"],
        vec!["restore", "vm", id, "--pool", "sim", "--overwrite", "--as-template"],
        vec!["restore", "vm", id, "--pool", "sim", "--overwrite", "--sr", unknown],
        vec!["restore", "vm", id, "--pool", "sim", "--overwrite", "--sr-map", "a=b"],
        vec!["restore", "vm", id, "--pool", "sim", "--sr-map", "no-equals-sign"],
        vec!["restore", "vm", id, "--pool", "sim", "--macs", "random"],
        vec!["export", id, "--format", "vmdk", "--to", to],
        vec!["serve-nbd", id, "--tls-cert", to],
        vec!["serve-nbd", id, "--tls", "--tls-cert", to, "--tls-key", to],
        vec!["backup", "--pool", "sim", "--vm", VM, "--lock-mode", "compliance"],
        vec!["backup", "--pool", "sim", "--vm", VM, "--lock-days", "0"],
    ] {
        fails(p.run(&args), USAGE, &args.join(" "));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mount_shows_the_files_the_disk_holds() {
    let p = pool();
    if !Path::new("/dev/fuse").exists() {
        eprintln!("\n!!! SKIPPED mount test: /dev/fuse does not exist here (no FUSE) !!!\n");
        return;
    }
    let dir = p.scratch("mount");
    let mountpoint = dir.join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mnt = mountpoint.to_str().unwrap();
    let mut child = p
        .command(&["mount", &p.id, "--disk", "0", "--partition", "p2", mnt])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    if !line.starts_with("mounted") {
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("mounting on"), "mount failed before mounting: {err}");
        eprintln!("\n!!! SKIPPED mount test: FUSE mounting is not possible here: {err} !!!\n");
        return;
    }
    let mounted = Foreground { child, first: line, stdout };
    let ntfs = p.manifest.volumes.iter().find(|v| v.name == "p2").and_then(|v| v.fs.as_ref()).unwrap();
    check_tree(&mountpoint, ntfs, "mounted p2");
    assert!(std::fs::write(mountpoint.join("new file"), b"x").is_err(), "the mount is writable");
    mounted.stop();
    assert_eq!(std::fs::read_dir(&mountpoint).unwrap().count(), 0, "still mounted after Ctrl-C");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `pool add|edit|remove` log in before saving and never store what fails; the inventory
/// lists what restores need, by name and uuid.
#[test]
fn pools_are_checked_before_saving_and_list_their_inventory() {
    let p = pool();
    let dir = p.scratch("pools");
    let config = dir.join("config.toml");
    let run = |args: &[&str], password: &str| {
        p.command(args).env("XENVAULT_CONFIG", &config).env("XENVAULT_POOL_PASSWORD", password).output().unwrap()
    };
    let url = p.sim.url.as_str();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&p.sim.cert_pem).unwrap();
    let password = p.sim.password.as_str();
    let listed = || json(&ok(run(&["pool", "list", "--json"], password), "pool list")).as_array().unwrap().len();

    let err = fails(
        run(&["pool", "add", "lab", "--url", url, "--fingerprint", &fingerprint], "wrong"),
        AUTH,
        "wrong password",
    );
    assert_eq!(err.matches("SESSION_AUTHENTICATION_FAILED").count(), 1, "the cause said once: {err}");
    fails(run(&["pool", "add", "lab", "--url", "not a url", "--insecure"], password), USAGE, "not a url");
    fails(run(&["pool", "add", "lab", "--url", "ftp://host", "--insecure"], password), USAGE, "not http(s)");
    // A self-signed certificate and no terminal to ask on: refused, naming the fingerprint to pin.
    let err = fails(run(&["pool", "add", "lab", "--url", url], password), USAGE, "untrusted certificate");
    assert!(err.contains(&fingerprint) && err.contains("--fingerprint"), "{err}");
    assert_eq!(listed(), 0, "a failed pool add saved something");

    let out = ok(run(&["pool", "add", "lab", "--url", url, "--insecure"], password), "pool add --insecure");
    assert!(out.contains("lab") && out.contains("insecure"), "{out}");
    fails(run(&["pool", "edit", "lab", "--fingerprint", &"ab".repeat(32)], password), FAILURE, "edit to a wrong pin");
    ok(run(&["pool", "edit", "lab", "--fingerprint", &fingerprint], password), "pool edit --fingerprint");
    let pools = json(&ok(run(&["pool", "list", "--json"], password), "pool list"));
    assert_eq!(pools[0]["tls"]["sha256"], fingerprint.as_str(), "{pools}");
    let out = ok(run(&["pool", "check", "lab"], password), "pool check");
    assert!(!out.contains("pool lab: ("), "empty pool name printed: {out}");
    ok(run(&["pool", "remove", "lab"], password), "pool remove");
    fails(run(&["pool", "remove", "lab"], password), USAGE, "pool remove twice");
    assert_eq!(listed(), 0);

    // Inventory of the shared pool, with the newest restore point of each VM.
    let vms = json(&ok(p.run(&["pool", "vms", "sim", "--json", "--repo", &p.repo]), "pool vms"));
    let vm =
        vms.as_array().unwrap().iter().find(|v| v["uuid"] == p.vm_uuid.as_str()).unwrap_or_else(|| panic!("{vms}"));
    assert_eq!(vm["name"], VM, "{vm}");
    assert_eq!(vm["size"], DISK_SIZE, "{vm}");
    assert!(vm["power_state"].is_string() && vm["last_restore_point"]["id"].is_string(), "{vm}");
    let table = ok(p.run(&["pool", "vms", "sim"]), "pool vms table");
    assert!(table.starts_with("NAME") && table.contains(VM) && table.contains(&p.vm_uuid), "{table}");
    let srs = json(&ok(p.run(&["pool", "srs", "sim", "--json"]), "pool srs"));
    let sr_uuid = p.sr_of(&p.vdi_uuid);
    assert!(srs.as_array().unwrap().iter().any(|s| s["uuid"] == sr_uuid.as_str()), "{srs}");
    let hosts = json(&ok(p.run(&["pool", "hosts", "sim", "--json"]), "pool hosts"));
    assert_eq!(hosts.as_array().unwrap().iter().filter(|h| h["master"] == true).count(), 1, "{hosts}");
    let networks = json(&ok(p.run(&["pool", "networks", "sim", "--json"]), "pool networks"));
    assert!(
        networks.as_array().unwrap().iter().all(|n| n["uuid"].is_string() && n["bridge"].is_string()),
        "{networks}"
    );

    // Names work where uuids do; a name that matches nothing lists the candidates.
    let sr_name = srs.as_array().unwrap().iter().find(|s| s["uuid"] == sr_uuid.as_str()).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = ["restore", "disk", p.id.as_str(), "--disk", "0", "--pool", "sim", "--json"];
    let by_name = p.run(&[&base[..], &["--sr", sr_name.as_str()]].concat());
    match srs.as_array().unwrap().iter().filter(|s| s["name"] == sr_name.as_str()).count() {
        1 => assert_eq!(json(&ok(by_name, "restore disk --sr NAME"))["sr_uuid"], sr_uuid.as_str()),
        n => {
            let err = fails(by_name, FAILURE, "ambiguous SR name");
            assert!(err.contains(&format!("matches {n} SRs")) && err.contains(&sr_uuid), "{err}");
        }
    }
    let err = fails(p.run(&[&base[..], &["--sr", "no such SR"]].concat()), FAILURE, "unknown SR name");
    assert!(err.contains("no SR matches \"no such SR\"") && err.contains(&sr_uuid), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Overwriting a VM asks first (here, without a terminal, it needs --yes) and reports the
/// VM's power state; --start starts what was restored.
#[test]
fn overwrite_needs_confirmation_and_start_starts() {
    let p = pool();
    let args = ["restore", "vm", p.id.as_str(), "--pool", "sim", "--overwrite", "--json"];
    let before = p.sha256(&p.vdi_uuid);
    let err = fails(p.run(&args), USAGE, "--overwrite without --yes");
    assert!(err.contains("--yes") && err.contains(VM), "{err}");
    assert_eq!(p.sha256(&p.vdi_uuid), before, "refused overwrite changed the disk");
    let report = json(&ok(p.run(&[&args[..], &["--yes", "--differential"]].concat()), "--overwrite --yes"));
    assert!(report["power_state_before"].is_string() && report["power_state_after"].is_string(), "{report}");
    let started = json(&ok(
        p.run(&["restore", "vm", p.id.as_str(), "--pool", "sim", "--as-new", "--start", "--json"]),
        "--start",
    ));
    assert_eq!(started["power_state_after"], "Running", "{started}");
}

/// Restore points chosen by VM name, `latest` per VM, and prefixes long enough to be sure.
#[test]
fn restore_points_by_vm_name_and_safe_prefixes() {
    let p = pool();
    let ids = |extra: &[&str]| -> Vec<String> {
        let list = json(&ok(p.run(&[&["snapshots", "--json"][..], extra].concat()), "snapshots"));
        list.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    assert!(ids(&["--source", VM]).contains(&p.id), "by VM name");
    assert_eq!(ids(&["--source", VM]), ids(&["--source", &p.vm_uuid.to_uppercase()]), "name and uuid (any case) agree");
    assert!(ids(&["--source", "no such VM"]).is_empty());
    assert_eq!(ids(&["--source", VM, "--latest", "1"]).len(), 1);
    assert!(ids(&["--since", "2000-01-01", "--until", "2000-01-02"]).is_empty(), "time range");
    assert!(ids(&["--host", "sim"]).contains(&p.id), "by the pool it was backed up from");
    assert!(ids(&["--host", "no such host"]).is_empty());
    let table = ok(p.run(&["snapshots", "--source", VM]), "snapshots table");
    assert!(table.starts_with("ID") && table.contains(&p.id[..8]), "{table}");

    let one = &p.id[..1];
    let err = fails(p.run(&["files", "volumes", one, "--json"]), USAGE, "one-character prefix");
    assert!(err.contains("too short") && err.contains(&p.id[..8]), "{err}");
    ok(p.run(&["files", "volumes", &p.id[..6], "--json"]), "six-character prefix");
    ok(p.run(&["files", "volumes", "latest", "--source", VM, "--json"]), "latest of a VM");
    let err = fails(
        p.run(&["files", "volumes", "latest", "--source", "no such VM", "--json"]),
        FAILURE,
        "latest of an unknown VM",
    );
    assert!(err.contains("no such VM"), "{err}");
}

#[test]
fn completions_and_man_pages() {
    let p = pool();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(p.run(&["completions", shell]), shell);
        assert!(script.contains("xenvault") && script.contains("snapshots"), "{shell}: {script}");
    }
    let dir = p.scratch("man");
    ok(p.run(&["man", "--dir", dir.to_str().unwrap()]), "man");
    let page = std::fs::read_to_string(dir.join("xenvault.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("snapshots"), "{page}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// restic habits: `dump` a file to stdout, `diff` two restore points, `stats`, `unlock`,
/// `files ls -l` with mode strings and dates.
#[test]
fn dump_diff_stats_unlock_and_long_listings() {
    let p = pool();
    let ntfs = p.manifest.volumes.iter().find(|v| v.name == "p2").and_then(|v| v.fs.as_ref()).unwrap();
    let wanted = ntfs.files.iter().find(|f| f.path.ends_with("installer.msi")).unwrap();
    let out = p.run(&["dump", &p.id, &wanted.path]);
    no_panic(&out, "dump");
    assert!(out.status.success(), "dump: {}", text(&out.stderr));
    assert_eq!(Some(sha256_hex(&out.stdout[..])), wanted.sha256);

    let same = json(&ok(p.run(&["diff", &p.id, &p.id, "--partition", "p2", "--json"]), "diff"));
    assert_eq!(same["changes"].as_array().map(Vec::len), Some(0), "{same}");
    assert_eq!(same["unchanged"], ntfs.files.len(), "{same}");
    let err = fails(p.run(&["diff", &p.id, &p.id[..1], "--json"]), USAGE, "diff with a one-character id");
    assert!(err.contains("too short"), "{err}");

    let stats = json(&ok(p.run(&["stats", "--json"]), "stats"));
    let vm = stats["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == p.vm_uuid.as_str())
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(vm["restore_points"].as_u64() >= Some(1) && vm["logical_bytes"].as_u64() >= Some(DISK_SIZE), "{stats}");
    assert!(stats["dedup_ratio"].as_f64().is_some_and(|r| r > 1.0), "{stats}");
    let unlocked = json(&ok(p.run(&["unlock", "--json"]), "unlock"));
    assert!(unlocked["removed"].is_u64() && unlocked["live"].is_array(), "{unlocked}");

    let dir = wanted.path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap();
    let long = ok(p.run(&["files", "ls", "-l", &p.id, "--partition", "p2", dir, "--utc"]), "ls -l");
    let line = long.lines().find(|l| l.ends_with(&wanted.path)).unwrap_or_else(|| panic!("{long}"));
    assert!(line.starts_with("-r") && line.contains(" UTC "), "mode string and date expected: {line}");
    let short = ok(p.run(&["files", "ls", &p.id, "--partition", "p2", dir]), "ls");
    assert!(short.lines().any(|l| l == wanted.path), "{short}");
}

/// `forget --dry-run` names each restore point's VM and time and what would happen to it.
#[test]
fn forget_dry_run_shows_vm_and_time() {
    let p = pool();
    let before = json(&ok(p.run(&["snapshots", "--json"]), "snapshots")).as_array().map(Vec::len);
    let out = ok(p.run(&["forget", "--source", VM, "--keep-last", "1", "--dry-run", "--utc"]), "forget --dry-run");
    let kept = out.lines().find(|l| l.starts_with("keep")).unwrap_or_else(|| panic!("{out}"));
    assert!(kept.contains(VM) && kept.contains(" UTC") && kept.contains(" last "), "{out}");
    assert!(out.starts_with("ACTION") && out.contains("1 kept"), "{out}");
    assert!(out.lines().filter(|l| l.starts_with("would remove")).all(|l| l.contains(" no rule ")), "{out}");
    let plan = json(&ok(
        p.run(&["forget", "--source", VM, "--keep-last", "1", "--keep-daily", "1", "--dry-run", "--json"]),
        "forget --json",
    ));
    let newest = plan["keep"][0].as_str().unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(plan["reasons"][newest], serde_json::json!(["last", "daily"]), "{plan}");
    assert_eq!(
        json(&ok(p.run(&["snapshots", "--json"]), "snapshots")).as_array().map(Vec::len),
        before,
        "a dry run removed something"
    );
}

/// A backup of a VM name that matches nothing lists the VMs there are.
#[test]
fn unknown_vm_lists_the_candidates() {
    let p = pool();
    let out = p.run(&["backup", "--pool", "sim", "--vm", "no such VM", "--repo", &p.repo]);
    no_panic(&out, "backup of an unknown VM");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no VM matches \"no such VM\"") && err.contains(&format!("{VM} ({})", p.vm_uuid)), "{err}");
}

/// `tag` changes what `snapshots --tag` finds and leaves the stored manifest untouched.
#[test]
fn tag_adds_and_removes_without_rewriting_the_manifest() {
    let p = pool();
    let manifest = Path::new(&p.repo).join("snapshots").join(&p.id);
    let stored = std::fs::read(&manifest).unwrap();
    let tagged = |tag: &str| -> Vec<String> {
        let list = json(&ok(p.run(&["snapshots", "--tag", tag, "--json"]), "snapshots --tag"));
        list.as_array().unwrap().iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect()
    };
    let added = json(&ok(p.run(&["tag", &p.id, "--add", "tag-test", "--add", "kept", "--json"]), "tag --add"));
    assert!(
        added["tags"].as_array().is_some_and(|t| t.contains(&"tag-test".into()) && t.contains(&"kept".into())),
        "{added}"
    );
    assert_eq!(tagged("tag-test"), vec![p.id.clone()]);
    let out = ok(p.run(&["tag", &p.id, "--remove", "tag-test", "--remove", "kept"]), "tag --remove");
    assert!(out.contains("tags") && !out.contains("tag-test"), "{out}");
    assert!(tagged("tag-test").is_empty());
    assert_eq!(std::fs::read(&manifest).unwrap(), stored, "the manifest was rewritten");
    fails(p.run(&["tag", &p.id]), USAGE, "tag without a change");
}
