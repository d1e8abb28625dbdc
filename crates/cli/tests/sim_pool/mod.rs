//! A standalone simulated pool (blank disks) registered as pool `sim` in a scratch config,
//! and the `xenvault` binary run against it. Each test starts its own: fault injection
//! (cuts) and database restores change the whole pool.

#![allow(dead_code)] // each test binary uses a different part of this module

use crate::standalone_sim::StandaloneSim;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xenvault_sim::client::SimClient;
use xenvault_xapi_wire::Value;

/// Passphrase of the repositories `init_repo` creates unless told otherwise.
pub const PASSPHRASE: &str = "cli test passphrase";

/// The simulator and the scratch directory of one test.
pub struct Pool {
    pub dir: PathBuf,
    pub sim: StandaloneSim,
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails on a panic message whatever the exit code: no input may make the binary panic.
pub fn no_panic(out: &Output, what: &str) {
    assert!(!text(&out.stderr).contains("panicked"), "{what} panicked:\n{}", text(&out.stderr));
}

/// The command's stdout; fails the test on a non-zero exit or a panic.
pub fn ok(out: Output, what: &str) -> String {
    no_panic(&out, what);
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The stderr of a command that must exit with `code` (and not panic).
pub fn fails(out: Output, code: i32, what: &str) -> String {
    no_panic(&out, what);
    assert_eq!(out.status.code(), Some(code), "{what}\nstdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    text(&out.stderr)
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Files below `dir` (none when it does not exist).
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

impl Pool {
    /// A fresh simulator whose VMs have blank disks of `disk_mib` MiB, registered as `sim`.
    pub fn start(name: &str, disk_mib: u64) -> Pool {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sim = StandaloneSim::start(&dir.join("sim"), &["--blank-disks-mib", &disk_mib.to_string()]);
        let pool = Pool { dir, sim };
        let password = pool.dir.join("pool.password");
        std::fs::write(&password, xenvault_sim::DEFAULT_PASSWORD).unwrap();
        let add =
            ["pool", "add", "sim", "--url", &pool.sim.url, "--insecure", "--password-file", password.to_str().unwrap()];
        ok(pool.run(&add), "pool add");
        pool
    }

    /// `xenvault` with this test's config and cache, and [`PASSPHRASE`].
    pub fn xenvault(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xenvault"));
        command
            .args(args)
            .env("XENVAULT_PASSPHRASE", PASSPHRASE)
            .env("XENVAULT_CONFIG", self.dir.join("config.toml"))
            .env("XENVAULT_CACHE_DIR", self.dir.join("cache"))
            .env_remove("XENVAULT_REPO")
            .env_remove("XENVAULT_TO_PASSPHRASE")
            .env_remove("XENVAULT_POOL_PASSWORD");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.xenvault(args).output().expect("run xenvault")
    }

    /// [`Pool::run`] with more environment variables (`(name, value)`).
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.xenvault(args).envs(env.iter().copied()).output().expect("run xenvault")
    }

    /// A new local repository `name` under the test's directory, opened with `passphrase`.
    pub fn init_repo(&self, name: &str, passphrase: &str) -> String {
        let repo = self.dir.join(name).to_str().unwrap().to_owned();
        let init = ["init", "--repo", &repo, "--kdf-memory-mib", "1", "--kdf-iterations", "1"];
        ok(self.run_with(&init, &[("XENVAULT_PASSPHRASE", passphrase)]), "init");
        repo
    }

    /// `backup --json` of `vm` into `repo`: the VM's report (status ok asserted).
    pub fn backup(&self, vm: &str, repo: &str) -> serde_json::Value {
        let report = json(&ok(self.run(&["backup", "--pool", "sim", "--vm", vm, "--repo", repo, "--json"]), "backup"));
        let vm = report["vms"][0].clone();
        assert_eq!(vm["status"], "ok", "{report}");
        vm
    }

    pub async fn client(&self) -> SimClient {
        SimClient::login(&self.sim.url, xenvault_sim::DEFAULT_PASSWORD).await.expect("log in to the simulator")
    }

    /// A simulator call with string parameters (the session is added by the client).
    pub async fn call(&self, method: &str, params: &[&str]) -> Value {
        let params = params.iter().map(|p| Value::from(*p)).collect();
        self.client().await.call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn call_str(&self, method: &str, params: &[&str]) -> String {
        let value = self.call(method, params).await;
        value.as_str().unwrap_or_else(|| panic!("{method} returned {value:?}")).to_owned()
    }
}
