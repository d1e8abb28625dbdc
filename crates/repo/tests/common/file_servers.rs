//! File servers for the `nfs://` and `smb://` locations: nfs-ganesha (NFSv4.1, the VFS
//! back end) and Samba's smbd, from Debian's packages (installed by scripts/setup.sh), run
//! as root on free loopback ports with every file of theirs in a private directory. A
//! server can serve a data directory of the test's, so that a test can stop it and start
//! another on the same data.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use xenvault_repo::backend::BackendOptions;

use super::{ServerProcess, StorageServer, free_ports};

pub const SMB_USER: &str = "root";
pub const SMB_PASSWORD: &str = "xenvault-test-smb";
/// The share's name, and the NFS export's path in the pseudo file system.
pub const SHARE: &str = "repo";

/// A file server serving `data` on `port`; dropping it stops the server.
pub struct FileServer {
    pub port: u16,
    _process: ServerProcess,
}

impl FileServer {
    fn running(mut process: ServerProcess, port: u16) -> FileServer {
        process.wait_for("accept connections", || {
            TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| e.to_string())
        });
        FileServer { port, _process: process }
    }
}

/// nfs-ganesha exporting `data` as `/repo` on `port`.
pub fn ganesha(data: &Path, port: u16) -> FileServer {
    let data = data.to_owned();
    let process = ServerProcess::spawn("nfs-ganesha", "ganesha.nfsd", |dir| {
        let recovery = dir.join("recovery");
        std::fs::create_dir_all(&recovery).unwrap_or_else(|e| panic!("cannot create {recovery:?}: {e}"));
        // NFSv4 only (no rpcbind, MOUNT or NLM here), no grace period (a fresh server
        // would refuse opens for 90 s), root not squashed (the tests run as root).
        let config = format!(
            "NFS_CORE_PARAM {{ NFS_Port = {port}; Bind_addr = 127.0.0.1; Protocols = 4; Enable_NLM = false; \
             Enable_RQUOTA = false; Enable_UDP = false; }}\n\
             NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {recovery}; }}\n\
             EXPORT {{ Export_Id = 1; Path = {data}; Pseudo = /{SHARE}; Access_Type = RW; Squash = No_Root_Squash; \
             SecType = sys; Protocols = 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
            recovery = recovery.display(),
            data = data.display(),
        );
        let path = dir.join("ganesha.conf");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
        ["-F", "-f", &path.display().to_string(), "-L", "/dev/stderr", "-p", &dir.join("pid").display().to_string()]
            .map(String::from)
            .to_vec()
    });
    FileServer::running(process, port)
}

/// smbd sharing `data` as `repo` on `port`, with [`SMB_USER`] (whose password is
/// [`SMB_PASSWORD`]) its one account.
pub fn samba(data: &Path, port: u16) -> FileServer {
    let data = data.to_owned();
    let mut config_path = PathBuf::new();
    let process = ServerProcess::spawn("Samba (smbd)", "smbd", |dir| {
        let sub = |name: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {path:?}: {e}"));
            path.display().to_string()
        };
        let config = format!(
            "[global]\n smb ports = {port}\n interfaces = lo\n bind interfaces only = yes\n disable netbios = yes\n \
             server role = standalone server\n map to guest = never\n passdb backend = tdbsam:{private}/passdb.tdb\n \
             private dir = {private}\n state directory = {state}\n cache directory = {cache}\n lock directory = {lock}\n \
             pid directory = {pid}\n ncalrpc dir = {rpc}\n log file = {log}/smbd.log\n\
             [{SHARE}]\n path = {data}\n read only = no\n",
            private = sub("private"),
            state = sub("state"),
            cache = sub("cache"),
            lock = sub("lock"),
            pid = sub("pid"),
            rpc = sub("rpc"),
            log = sub("log"),
            data = data.display(),
        );
        config_path = dir.join("smb.conf");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("cannot write {config_path:?}: {e}"));
        ["-F", "--no-process-group", "--debug-stdout", "-s", &config_path.display().to_string()]
            .map(String::from)
            .to_vec()
    });
    let added = Command::new("smbpasswd")
        .args(["-c", &config_path.display().to_string(), "-s", "-a", SMB_USER])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(format!("{SMB_PASSWORD}\n{SMB_PASSWORD}\n").as_bytes())?;
            }
            child.wait_with_output()
        });
    match added {
        Ok(output) if output.status.success() => {}
        Ok(output) => process.fail(&format!("smbpasswd failed: {}", String::from_utf8_lossy(&output.stderr))),
        Err(e) => process.fail(&format!("cannot run smbpasswd: {e}")),
    }
    FileServer::running(process, port)
}

/// A data directory that outlives the servers started on it (removed on drop).
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("data directory")
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The shared nfs-ganesha server of this test binary.
pub fn nfs() -> &'static StorageServer {
    static SERVER: OnceLock<(tempfile::TempDir, StorageServer)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let data = data_dir();
            let server = ganesha(data.path(), free_ports(1)[0]);
            let storage = StorageServer {
                scheme: "nfs",
                bucket: leak(format!("127.0.0.1:{}/{SHARE}", server.port)),
                options: BackendOptions::default(),
                env: Vec::new(),
                _process: server._process,
            };
            (data, storage)
        })
        .1
}

/// The shared Samba server of this test binary.
pub fn smb() -> &'static StorageServer {
    static SERVER: OnceLock<(tempfile::TempDir, StorageServer)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let data = data_dir();
            let server = samba(data.path(), free_ports(1)[0]);
            let storage = StorageServer {
                scheme: "smb",
                bucket: leak(format!("{SMB_USER}@127.0.0.1:{}/{SHARE}", server.port)),
                options: smb_options(SMB_PASSWORD),
                env: vec![("XENVAULT_SMB_PASSWORD", SMB_PASSWORD.to_string())],
                _process: server._process,
            };
            (data, storage)
        })
        .1
}

/// Backend options with an SMB password.
pub fn smb_options(password: &str) -> BackendOptions {
    BackendOptions { smb_password: Some(password.to_string()), ..BackendOptions::default() }
}
