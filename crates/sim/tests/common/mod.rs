//! Shared helpers: an in-process simulator with small blank disks, an RPC client,
//! HTTP transfers and external tools.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, SimHandle, Simulator};
use xenvault_xapi_wire::Value;

pub const DISK: u64 = 8 << 20;

pub async fn start(dir: &Path, plain_http: bool) -> SimHandle {
    let mut config = SimConfig::new(dir);
    config.plain_http = plain_http;
    config.demo_disks = xenvault_sim::DemoDisks::Blank(DISK);
    Simulator::start(config).await.expect("simulator starts")
}

pub async fn login(sim: &SimHandle) -> SimClient {
    SimClient::login(&sim.url, &sim.password).await.expect("login")
}

/// An HTTP client (the tests talk plain HTTP; rustls still wants a provider).
pub fn http() -> reqwest::Client {
    http_with(reqwest::redirect::Policy::default())
}

pub fn http_with(redirects: reqwest::redirect::Policy) -> reqwest::Client {
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).redirect(redirects).build().unwrap()
}

pub async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

pub fn s(v: &Value) -> String {
    v.as_str().expect("string value").to_owned()
}

/// The VM of that name and its first disk.
pub async fn first_vdi(c: &SimClient, vm_name: &str) -> (String, String) {
    let vms = c.call("VM.get_by_name_label", vec![vm_name.into()]).await.unwrap();
    let vm = s(&vms.as_array().unwrap()[0]);
    let vbds = c.call("VM.get_VBDs", vec![vm.clone().into()]).await.unwrap();
    let vbd = s(&vbds.as_array().unwrap()[0]);
    let vdi = s(&c.call("VBD.get_VDI", vec![vbd.into()]).await.unwrap());
    (vm, vdi)
}

/// The snapshot of `vdi` inside snapshot VM `snap`.
pub async fn snapshot_vdi(c: &SimClient, snap: &str, vdi: &str) -> String {
    let vbds = c.call("VM.get_VBDs", vec![snap.into()]).await.unwrap();
    for vbd in vbds.as_array().unwrap() {
        let d = s(&c.call("VBD.get_VDI", vec![vbd.clone()]).await.unwrap());
        if s(&c.call("VDI.get_snapshot_of", vec![d.clone().into()]).await.unwrap()) == vdi {
            return d;
        }
    }
    panic!("no snapshot of {vdi} in {snap}");
}

pub async fn write(c: &SimClient, vdi: &str, offset: u64, data: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    c.call("sim.write", vec![vdi.into(), offset.to_string().into(), b64.into()]).await.unwrap();
}

pub async fn sha256(c: &SimClient, vdi: &str) -> String {
    s(&c.call("sim.sha256", vec![vdi.into()]).await.unwrap())
}

/// A session ref for HTTP handlers and NBD (plain-HTTP simulator).
pub async fn session(url: &str, password: &str) -> String {
    use xenvault_xapi_wire::jsonrpc;
    let body = jsonrpc::encode_call(
        "session.login_with_password",
        &["root".into(), password.into()],
        1,
        jsonrpc::JsonRpcVersion::V1,
    );
    let answer = http().post(format!("{url}/jsonrpc")).body(body).send().await.unwrap();
    s(&jsonrpc::decode_response(&answer.bytes().await.unwrap()).unwrap().unwrap())
}

/// GET a transfer into a file; returns the response headers.
pub async fn download(url: &str, to: &Path) -> reqwest::header::HeaderMap {
    let r = get(url).await;
    assert_eq!(r.status(), 200, "GET {url}");
    let headers = r.headers().clone();
    std::fs::write(to, r.bytes().await.unwrap()).unwrap();
    headers
}

pub async fn upload(url: &str, from: &Path) -> reqwest::Response {
    let data = std::fs::read(from).unwrap();
    http().put(url).body(data).send().await.unwrap()
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running plain-HTTP simulator, a logged-in client, a session for transfers,
/// the demo Linux VM with its root disk, and a scratch folder.
pub struct Setup {
    pub sim: SimHandle,
    pub c: SimClient,
    pub sid: String,
    pub vm: String,
    pub vdi: String,
    pub work: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Setup {
        let state = tempfile::tempdir().unwrap();
        let sim = start(state.path(), true).await;
        let c = login(&sim).await;
        let sid = session(&sim.url, &sim.password).await;
        let (vm, vdi) = first_vdi(&c, "debian-web").await;
        Setup { sim, c, sid, vm, vdi, work: tempfile::tempdir().unwrap(), _state: state }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.work.path().join(name)
    }
}
