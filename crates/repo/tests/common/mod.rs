//! Real storage servers for the repository tests (and the CLI's, which include this file),
//! started on free loopback ports the first time a test asks for one and shared by every
//! test of the test binary: SeaweedFS (S3) and Azurite (Azure Blob), installed by
//! `tests/services/install.sh`.
//!
//! A server that cannot start fails the test with its log: CI installs them, so a missing
//! server is a broken setup, not a reason to skip.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xenvault_repo::InitOptions;
use xenvault_repo::backend::BackendOptions;
use xenvault_repo::keys::{KdfParams, Secret};

pub mod file_servers;
pub mod object_lock;

/// Chunk size of the small repositories the tests create.
pub const CHUNK: usize = 64 << 10;

/// A small, quick repository: 64 KiB chunks, 64-slot pages, 256 KiB packs, a cheap KDF.
pub fn small_repo_options(secret: Secret) -> InitOptions {
    InitOptions {
        secret: Some(secret),
        kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        chunk_size: CHUNK as u32,
        page_slots: 64,
        pack_size: 256 << 10,
        ..Default::default()
    }
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

pub const S3_ACCESS_KEY: &str = "xenvault-test-key";
pub const S3_SECRET_KEY: &str = "xenvault-test-secret";
pub const S3_BUCKET: &str = "xenvault-test";
/// Azurite's fixed development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const AZURE_CONTAINER: &str = "xenvault-test";

/// The workspace's `tests/services` folder (servers' node modules and helper scripts).
pub fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/services")
}

/// A fresh, unique name for one test's repository inside a shared bucket or directory.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// A server process tied to this test process. A small shell runs it and, when our end of
/// its stdin closes, kills it and removes its directory: that happens on drop, and also when
/// the test binary exits or is killed (statics are never dropped).
struct ServerProcess {
    name: &'static str,
    child: Child,
    guard: Option<ChildStdin>,
    dir: PathBuf,
}

const SUPERVISOR: &str = r#"dir=$1; shift
exec 3<&0
"$@" >"$dir/server.log" 2>&1 </dev/null 3<&- &
pid=$!
{ read -r _ <&3; kill "$pid" 2>/dev/null; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; rm -rf "$dir"; } &
wait "$pid""#;

impl ServerProcess {
    /// Starts `program` with the arguments `args` builds from the server's own directory
    /// (where it may also write configuration).
    fn spawn(name: &'static str, program: &str, args: impl FnOnce(&Path) -> Vec<String>) -> ServerProcess {
        let dir = std::env::temp_dir().join(unique("xenvault-server"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{name}: cannot create {dir:?}: {e}"));
        let args = args(&dir);
        let mut child = Command::new("bash")
            .args(["-c", SUPERVISOR, "bash"])
            .arg(&dir)
            .arg(program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // A group of its own: smbd run without its own group signals the whole group
            // it is in when it stops, which would otherwise be cargo and the test command.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run bash to start {program}: {e}"));
        let guard = child.stdin.take();
        ServerProcess { name, child, guard, dir }
    }

    /// Panics with the server's log: the message a broken CI setup needs.
    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!(
            "{} did not start: {what}\n(install the test servers with tests/services/install.sh)\n--- server log ---\n{tail}",
            self.name
        );
    }

    /// Retries `probe` until it succeeds; fails early if the server exits.
    fn wait_for(&mut self, what: &str, mut probe: impl FnMut() -> Result<(), String>) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < STARTUP_TIMEOUT {
            match probe() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("{what}: the server exited ({status})"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.fail(&format!("{what}: no success within {STARTUP_TIMEOUT:?} (last: {last})"));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (all held open together so none repeats).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free loopback port: {e}")))
        .collect();
    listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect()
}

/// One plain HTTP/1.1 request; returns the status code and body. Enough for the servers'
/// unauthenticated admin endpoints, without an HTTP client dependency.
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {:?}", response.lines().next()))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A running storage server and how to reach it, from the library (`options`) and
/// from the `xenvault` binary (`env`).
pub struct StorageServer {
    scheme: &'static str,
    bucket: &'static str,
    options: BackendOptions,
    env: Vec<(&'static str, String)>,
    _process: ServerProcess,
}

impl StorageServer {
    /// A fresh repository location in the shared bucket or container.
    pub fn url(&self, name: &str) -> String {
        format!("{}://{}/{}", self.scheme, self.bucket, unique(name))
    }

    pub fn options(&self) -> BackendOptions {
        self.options.clone()
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env.clone()
    }
}

/// The shared SeaweedFS server (master, volume, filer and S3 gateway in one process).
pub fn s3() -> &'static StorageServer {
    static SERVER: OnceLock<StorageServer> = OnceLock::new();
    SERVER.get_or_init(start_seaweedfs)
}

fn start_seaweedfs() -> StorageServer {
    let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = free_ports(8)[..] else {
        panic!("could not reserve 8 loopback ports");
    };
    let mut process = ServerProcess::spawn("SeaweedFS (weed)", "weed", |dir| {
        let config = dir.join("s3.json");
        let identities = format!(
            r#"{{"identities":[{{"name":"xenvault","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(&config, identities).unwrap_or_else(|e| panic!("cannot write {config:?}: {e}"));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("cannot create {data:?}: {e}"));
        vec![
            "server".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.volumeSizeLimitMB=64".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            "-volume.max=64".into(), // each bucket (a collection) takes volumes of its own: 16 ran out with five buckets
            "-filer".into(),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            // Side servers on fixed default ports would collide with other test binaries.
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", config.display()),
        ]
    });

    // A bucket is a directory under /buckets in the filer; a free volume is what writes need.
    process.wait_for("create the bucket through the filer", || {
        match http(filer, "POST", &format!("/buckets/{S3_BUCKET}/"))? {
            (200..=299, _) => Ok(()),
            (status, body) => Err(format!("filer answered {status}: {body}")),
        }
    });
    process.wait_for("assign a writable volume", || match http(master, "GET", "/dir/assign")? {
        (200, body) if body.contains("\"fid\"") => Ok(()),
        (status, body) => Err(format!("master answered {status}: {body}")),
    });
    process.wait_for("answer on the S3 port", || http(s3, "GET", "/").map(drop));
    let endpoint = format!("http://127.0.0.1:{s3}");
    StorageServer {
        scheme: "s3",
        bucket: S3_BUCKET,
        options: BackendOptions {
            s3_endpoint: Some(endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_access_key: Some(S3_ACCESS_KEY.into()),
            s3_secret_key: Some(S3_SECRET_KEY.into()),
            ..BackendOptions::default()
        },
        env: vec![
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
        ],
        _process: process,
    }
}

/// The shared Azurite blob server, with the test container created.
pub fn azurite() -> &'static StorageServer {
    static SERVER: OnceLock<StorageServer> = OnceLock::new();
    SERVER.get_or_init(start_azurite)
}

fn start_azurite() -> StorageServer {
    let services = services_dir();
    let main_js = services.join("node_modules/azurite/dist/src/blob/main.js");
    let [port] = free_ports(1)[..] else { panic!("could not reserve a loopback port") };
    let mut process = ServerProcess::spawn("Azurite", "node", |dir| {
        vec![
            main_js.display().to_string(),
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            dir.join("data").display().to_string(),
            "--silent".into(),
            "--disableTelemetry".into(),
            "--skipApiVersionCheck".into(),
        ]
    });
    if !main_js.exists() {
        process.fail(&format!("{} is missing", main_js.display()));
    }
    let endpoint = format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}");
    process.wait_for("accept connections", || {
        TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| e.to_string())
    });
    let output = Command::new("node")
        .arg(services.join("create-container.js"))
        .args([&endpoint, AZURE_ACCOUNT, AZURE_KEY, AZURE_CONTAINER])
        .output()
        .unwrap_or_else(|e| process.fail(&format!("cannot run node: {e}")));
    if !output.status.success() {
        process.fail(&format!("create the container: {}", String::from_utf8_lossy(&output.stderr)));
    }
    StorageServer {
        scheme: "azblob",
        bucket: AZURE_CONTAINER,
        options: BackendOptions {
            azure_endpoint: Some(endpoint.clone()),
            azure_account: Some(AZURE_ACCOUNT.into()),
            azure_key: Some(AZURE_KEY.into()),
            ..BackendOptions::default()
        },
        env: vec![
            ("AZURE_STORAGE_ENDPOINT", endpoint),
            ("AZURE_STORAGE_ACCOUNT", AZURE_ACCOUNT.into()),
            ("AZURE_STORAGE_KEY", AZURE_KEY.into()),
        ],
        _process: process,
    }
}
