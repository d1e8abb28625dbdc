//! Setup shared by the restore tests on the simulator: a pool, clients, a repository,
//! guest writes and disk digests. The engine's restore tests include this module and back
//! the demo VM up on top of it (restore does not depend on the engine).
#![allow(dead_code)] // each test file uses its own part

use base64::Engine;
use std::collections::BTreeMap;
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::host::Host;
use xenvault_sim::client::SimClient;
use xenvault_sim::{SimConfig, Simulator};
use xenvault_xapi::Value;

pub const VM: &str = "debian-web";

pub async fn digests_of(host: &Host, sim: &SimClient, vm_uuid: &str) -> BTreeMap<String, String> {
    let vm = host.vms().await.unwrap().into_iter().find(|v| v.uuid == vm_uuid).unwrap();
    let mut out = BTreeMap::new();
    for (vbd, vdi) in host.disks(&vm).await.unwrap() {
        out.insert(vbd.userdevice, sha256(sim, &vdi.uuid).await);
    }
    out
}

/// A simulated pool, logged-in clients and an empty repository.
pub struct Pool {
    pub dir: tempfile::TempDir,
    /// Keeps the simulator running.
    pub server: xenvault_sim::SimHandle,
    pub host: Host,
    pub client: xenvault_xapi::Client,
    pub sim: SimClient,
    pub repo: xenvault_repo::Repository,
}

pub async fn pool() -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let sim_handle = Simulator::start(SimConfig::new(dir.path().join("sim"))).await.unwrap();
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&sim_handle.cert_pem).unwrap();
    let login = PoolLogin {
        name: "test".into(),
        entry: PoolEntry {
            url: sim_handle.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(&fingerprint).unwrap(),
        },
        password: sim_handle.password.clone(),
    };
    let host = Host::connect(&login).await.unwrap();
    let client = xenvault_pool::host::connect(&login).await.unwrap();
    let sim = SimClient::login(&sim_handle.url, &sim_handle.password).await.unwrap();
    let options = xenvault_repo::InitOptions {
        secret: Some(xenvault_repo::keys::Secret::passphrase("test")),
        kdf: xenvault_repo::keys::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    let repo = xenvault_repo::Repository::init(dir.path().join("repo").to_str().unwrap(), &Default::default(), options)
        .await
        .unwrap();
    Pool { dir, server: sim_handle, host, client, sim, repo }
}

pub async fn vdis_of(host: &Host, vm: &xenvault_pool::records::Vm) -> Vec<xenvault_pool::records::Vdi> {
    host.disks(vm).await.unwrap().into_iter().map(|(_, vdi)| vdi).collect()
}

/// A guest writes `len` pseudo-random bytes at `offset` (CBT sees it).
pub async fn guest_write(sim: &SimClient, vdi_uuid: &str, offset: u64, len: usize, seed: u64) {
    let data = base64::engine::general_purpose::STANDARD.encode(xenvault_fixtures::random_bytes(seed, "guest", len));
    let args = vec![Value::from(vdi_uuid), Value::from(offset.to_string()), Value::from(data)];
    sim.call("sim.write", args).await.unwrap();
}

/// A XenAPI call's string answer (a reference, uuid or field).
pub async fn call_str(client: &xenvault_xapi::Client, method: &str, args: &[&str]) -> String {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    let v = client.call(method, &args).await.unwrap();
    v.as_str().unwrap_or_else(|| panic!("{method} returned {v:?}")).to_owned()
}

/// How many objects of `class` the pool holds.
pub async fn count(client: &xenvault_xapi::Client, class: &str) -> usize {
    client.call(&format!("{class}.get_all"), &[]).await.unwrap().as_array().unwrap().len()
}

/// The simulator's SHA-256 of a VDI's content.
pub async fn sha256(sim: &SimClient, vdi_uuid: &str) -> String {
    sim.call("sim.sha256", vec![Value::from(vdi_uuid)]).await.unwrap().as_str().unwrap().to_owned()
}

/// Fills `percent` of a disk with pseudo-random 64 KiB writes.
pub async fn scribble(sim: &SimClient, vdi_uuid: &str, percent: u32, seed: u64) {
    let args = vec![
        Value::from(vdi_uuid),
        Value::from(percent.to_string()),
        Value::from("65536"),
        Value::from(seed.to_string()),
    ];
    sim.call("sim.scribble", args).await.unwrap();
}
