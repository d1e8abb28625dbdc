//! Shared by the test binaries: a certtool PKI, disk images, our server on loopback and external
//! peers (qemu-nbd, nbdkit) as child processes.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use xenvault_nbd::fuzzing::MemoryExport;
use xenvault_nbd::{ConnectOptions, Export, ExportResolver, Refusal, ServerConfig, ServerTrust, TlsOptions};

pub const EXPORT: &str =
    "/3f5e1a52-7c1e-4d8e-9a47-0d7f0c6a1b2c?session_id=OpaqueRef:7d4b7d35-5b7e-4ab0-a9a5-4a7c0b3d0e11";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// ca-cert.pem, server-cert.pem (CN and SAN localhost / 127.0.0.1), server-key.pem (RSA: qemu wants
/// key encipherment, and ring rejects some of gnutls's EC key encodings): the layout
/// qemu's tls-creds-x509, nbdkit and libnbd read from a directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let certtool = |args: &[&str]| run(Command::new("certtool").args(args).arg("--no-text").current_dir(d));
        std::fs::write(d.join("ca.info"), "cn = xenvault test CA\nca\ncert_signing_key\nexpiration_days = 2\n")
            .unwrap();
        std::fs::write(d.join("server.info"), "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 2\n").unwrap();
        let private_key =
            |file| certtool(&["--generate-privkey", "--key-type", "rsa", "--bits", "2048", "--outfile", file]);
        private_key("ca-key.pem");
        certtool(&[
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
            "--outfile",
            "ca-cert.pem",
        ]);
        private_key("server-key.pem");
        certtool(&[
            "--generate-certificate",
            "--load-ca-certificate",
            "ca-cert.pem",
            "--load-ca-privkey",
            "ca-key.pem",
            "--load-privkey",
            "server-key.pem",
            "--template",
            "server.info",
            "--outfile",
            "server-cert.pem",
        ]);
        Pki { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path().join(name)).unwrap()
    }

    pub fn client_tls(&self, trust_file: &str) -> TlsOptions {
        TlsOptions { server_name: "localhost".into(), trust: ServerTrust::PemPinOrCa(self.pem(trust_file)) }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_file_iter(self.path().join("server-cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path().join("server-key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Arc::new(config)
    }
}

/// 8 MiB: a byte pattern with a 1 MiB zero run in the middle and a zero tail.
pub fn disk_bytes() -> Vec<u8> {
    let mut data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    data[3 << 20..4 << 20].fill(0);
    data[7 << 20..].fill(0);
    data
}

/// Writes `data` as a raw file, leaving all-zero MiBs as holes (so qemu-nbd reports them).
pub fn sparse_file(dir: &Path, data: &[u8]) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("disk.raw");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(data.len() as u64).unwrap();
    for (i, mib) in data.chunks(1 << 20).enumerate() {
        if mib.iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start((i as u64) << 20)).unwrap();
            f.write_all(mib).unwrap();
        }
    }
    path
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits until `port` accepts connections.
pub fn spawn_listening(cmd: &mut Command, port: u16) -> Peer {
    let mut peer =
        Peer(cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}")));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(peer.0.try_wait().unwrap().is_none(), "{cmd:?} exited early");
        assert!(Instant::now() < deadline, "{cmd:?} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

/// qemu-nbd serving `file` read-only over TLS with `connections` shared connections.
pub fn qemu_nbd_tls(pki: &Pki, file: &Path, name: &str, connections: u32) -> (Peer, u16) {
    let port = free_port();
    let tls = format!("tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=off", pki.path().display());
    let peer = spawn_listening(
        Command::new("qemu-nbd")
            .args(["--object", &tls, "--tls-creds", "tls0", "-b", "127.0.0.1", "-p", &port.to_string(), "-x", name])
            .args(["-f", "raw", "--persistent", "--read-only", "-e", &connections.to_string()])
            .arg(file),
        port,
    );
    (peer, port)
}

/// Resolves only `EXPORT`, like the simulator checking the VDI and session of every connect.
pub struct Named(pub Arc<dyn Export>);

impl ExportResolver for Named {
    fn resolve<'a>(&'a self, name: &'a str) -> futures::future::BoxFuture<'a, Result<Arc<dyn Export>, Refusal>> {
        Box::pin(async move {
            if name == EXPORT { Ok(self.0.clone()) } else { Err(Refusal(format!("no such VDI or session: {name}"))) }
        })
    }
}

/// Our server on an ephemeral loopback port; stops when the returned sender is dropped.
pub async fn start_server(
    config: ServerConfig,
    export: Arc<dyn Export>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(xenvault_nbd::serve(listener, config, Arc::new(Named(export)), async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Our server in xapi's behaviour with TLS required, serving `data` as `EXPORT`.
pub async fn start_xapi_over_tls(pki: &Pki, data: &[u8]) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_server(ServerConfig::xapi(Some(pki.server_config())), memory(data, false)).await
}

pub fn memory(data: &[u8], writable: bool) -> Arc<MemoryExport> {
    Arc::new(MemoryExport::new(data.to_vec(), writable))
}

pub fn options(addr: SocketAddr, name: &str) -> ConnectOptions {
    ConnectOptions::new(addr.ip().to_string(), addr.port(), name)
}
