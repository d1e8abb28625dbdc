//! What the binary's tests share: `xenvault sim serve` as a child process, and the pool's VM
//! records as the simulator holds them.

#![allow(dead_code)] // Each test binary uses its own part.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use xenvault_sim::client::SimClient;
use xenvault_xapi_wire::Value;

/// A standalone simulator (`xenvault sim serve`), killed on drop.
pub struct StandaloneSim {
    child: Child,
    pub url: String,
    pub state_dir: PathBuf,
}

impl Drop for StandaloneSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StandaloneSim {
    /// Starts it on a free loopback port with its state in `state_dir` and the extra
    /// `args` (faults, disk sizes), and returns once it listens.
    pub fn start(state_dir: &Path, args: &[&str]) -> StandaloneSim {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenvault"))
            .args(["sim", "serve", "--listen", &format!("127.0.0.1:{port}"), "--nbd-port", "0"])
            .args(args)
            .arg("--state-dir")
            .arg(state_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the simulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("simulator output");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected {line:?}")).to_owned();
        StandaloneSim { child, url, state_dir: state_dir.to_owned() }
    }

    /// SHA-256 fingerprint of its certificate (kept in its state dir), for clients to pin.
    pub fn fingerprint(&self) -> String {
        let pem = std::fs::read_to_string(self.state_dir.join("cert.pem")).expect("the simulator's certificate");
        xenvault_tls::pem_fingerprint_sha256(pem.as_bytes()).expect("fingerprint")
    }

    /// Every VM record of the pool (snapshots and templates too).
    pub async fn vms(&self) -> Vec<VmRecord> {
        let client = SimClient::login(&self.url, xenvault_sim::DEFAULT_PASSWORD).await.expect("log in");
        let all = client.call("VM.get_all_records", vec![]).await.expect("VM.get_all_records");
        let Value::Struct(records) = all else { panic!("VM.get_all_records: {all:?}") };
        records
            .values()
            .map(|record| {
                let text = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                let other_config = match record.get("other_config") {
                    Some(Value::Struct(map)) => {
                        map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                    }
                    _ => BTreeMap::new(),
                };
                VmRecord {
                    uuid: text("uuid"),
                    name_label: text("name_label"),
                    is_a_snapshot: record.get("is_a_snapshot").and_then(Value::as_bool) == Some(true),
                    other_config,
                }
            })
            .collect()
    }
}

pub struct VmRecord {
    pub uuid: String,
    pub name_label: String,
    pub is_a_snapshot: bool,
    pub other_config: BTreeMap<String, String>,
}

impl VmRecord {
    /// A snapshot we tagged, or one we were taking (named by us, not tagged yet).
    pub fn is_our_snapshot(&self) -> bool {
        self.is_a_snapshot
            && (self.other_config.contains_key("xenvault.snapshot") || self.name_label.starts_with("[xenvault]"))
    }

    pub fn backup_lock(&self) -> Option<&str> {
        self.other_config.get("xenvault.backup_lock").map(String::as_str)
    }
}
