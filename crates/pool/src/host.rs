//! The pool as the engine sees it: typed calls over the XenAPI client.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use xenvault_xapi::{Client, Compression, DiskFormat, Ref, TlsMode};
use xenvault_xapi_wire::Value;

use crate::config::{PoolLogin, TlsTrust};
use crate::error::Error;
use crate::records::{self, NbdInfo, Vbd, Vdi, Vm};
use crate::selection::HostName;

/// A logged-in session on a pool master.
pub struct Host {
    client: Client,
    pub pool_name: String,
}

#[derive(Debug, Serialize)]
pub struct PoolSummary {
    pub pool_name: String,
    pub pool_uuid: String,
    pub master: String,
    pub hosts: usize,
    pub vms: usize,
    pub api_version: String,
}

/// A disk export body as it arrives.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>>;

/// Body pieces buffered between the network and a blocking parser.
const BODY_DEPTH: usize = 8;

/// Hands `body` to a synchronous parser (VHD, XVA) running on a blocking thread: the
/// reader for that thread, and the future that pumps the body into it (resolving to
/// the bytes received). Bounded channels keep memory flat.
pub fn blocking_body(mut body: ByteStream) -> (BlockingBody, impl std::future::Future<Output = Result<u64, Error>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(BODY_DEPTH);
    let pump = async move {
        let mut read = 0u64;
        loop {
            match body.try_next().await {
                Ok(Some(data)) => {
                    read += data.len() as u64;
                    if tx.send(Ok(data)).await.is_err() {
                        break; // the parser stopped: its own error says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return Err(e);
                }
            }
        }
        Ok(read)
    };
    (BlockingBody { rx, current: bytes::Bytes::new() }, pump)
}

/// Blocking `Read` over the body pieces [`blocking_body`] pumps.
pub struct BlockingBody {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl std::io::Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let piece = self.current.split_to(n);
        if let Some(target) = buf.get_mut(..n) {
            target.copy_from_slice(&piece);
        }
        Ok(n)
    }
}

fn vref(s: &str) -> Value {
    Value::from(s)
}

impl Host {
    /// Logs in to the pool master with the stored credentials and TLS trust.
    pub async fn connect(login: &PoolLogin) -> Result<Self, Error> {
        let tls = match &login.entry.tls {
            TlsTrust::Verify => TlsMode::SystemRoots,
            TlsTrust::Insecure => TlsMode::Insecure,
            TlsTrust::Fingerprint(hex) => TlsMode::pin_sha256_hex(hex)?,
        };
        let client = Client::builder(login.entry.url.as_str()).tls(tls).build()?;
        client.login_with_password(&login.entry.user, &login.password).await?;
        Ok(Self { client, pool_name: login.name.clone() })
    }

    /// The logged-in client, for queries such as [`crate::inventory`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, Error> {
        Ok(self.client.call(method, &args).await?)
    }

    /// `GET /export` of a VM or snapshot as an uncompressed XVA.
    pub async fn export_vm(&self, vm: &str) -> Result<ByteStream, Error> {
        let download = self.client.export_vm(&Ref::new(vm), Compression::None).await?;
        Ok(download.map_err(Error::from).boxed())
    }

    /// `GET /export_raw_vdi` of a VDI, whole or (with `base`) as a delta.
    pub async fn export_raw_vdi(&self, vdi: &str, format: DiskFormat, base: Option<&str>) -> Result<ByteStream, Error> {
        let base = base.map(Ref::new);
        let download = self.client.export_raw_vdi(&Ref::new(vdi), format, base.as_ref()).await?;
        Ok(download.map_err(Error::from).boxed())
    }

    pub async fn logout(&self) {
        if let Err(e) = self.client.logout().await {
            tracing::debug!("logout: {e}");
        }
    }

    pub async fn describe(&self) -> Result<PoolSummary, Error> {
        let pools = self.call("pool.get_all_records", vec![]).await?;
        let (_, pool) = records::all_records(&pools)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol("the pool has no pool record".into()))?;
        let master = pool.get("master").and_then(Value::as_str).unwrap_or_default().to_owned();
        let host = self.call("host.get_record", vec![vref(&master)]).await?;
        let api_version = format!(
            "{}.{}",
            host.get("API_version_major").and_then(Value::as_i64).unwrap_or(0),
            host.get("API_version_minor").and_then(Value::as_i64).unwrap_or(0)
        );
        Ok(PoolSummary {
            pool_name: pool.get("name_label").and_then(Value::as_str).unwrap_or_default().to_owned(),
            pool_uuid: pool.get("uuid").and_then(Value::as_str).unwrap_or_default().to_owned(),
            master: host.get("name_label").and_then(Value::as_str).unwrap_or_default().to_owned(),
            hosts: self.hosts().await?.len(),
            vms: self
                .vms()
                .await?
                .iter()
                .filter(|v| !v.is_a_template && !v.is_a_snapshot && !v.is_control_domain)
                .count(),
            api_version,
        })
    }

    pub async fn vms(&self) -> Result<Vec<Vm>, Error> {
        let all = self.call("VM.get_all_records", vec![]).await?;
        Ok(records::all_records(&all).into_iter().map(|(r, v)| Vm::parse(&r, v)).collect())
    }

    pub async fn hosts(&self) -> Result<Vec<HostName>, Error> {
        let all = self.call("host.get_all_records", vec![]).await?;
        Ok(records::all_records(&all)
            .into_iter()
            .map(|(reference, v)| HostName {
                reference,
                uuid: v.get("uuid").and_then(Value::as_str).unwrap_or_default().to_owned(),
                name_label: v.get("name_label").and_then(Value::as_str).unwrap_or_default().to_owned(),
            })
            .collect())
    }

    pub async fn record(&self, class: &str, reference: &str) -> Result<Value, Error> {
        self.call(&format!("{class}.get_record"), vec![vref(reference)]).await
    }

    pub async fn vm(&self, reference: &str) -> Result<Vm, Error> {
        Ok(Vm::parse(reference, &self.record("VM", reference).await?))
    }

    pub async fn vdi(&self, reference: &str) -> Result<Vdi, Error> {
        Ok(Vdi::parse(reference, &self.record("VDI", reference).await?))
    }

    /// The VDI with this uuid, or None when it no longer exists.
    pub async fn vdi_by_uuid(&self, uuid: &str) -> Result<Option<Vdi>, Error> {
        match self.call("VDI.get_by_uuid", vec![vref(uuid)]).await {
            Ok(reference) => {
                let reference = reference.as_str().unwrap_or_default().to_owned();
                Ok(Some(self.vdi(&reference).await?))
            }
            Err(e) if e.xapi_code() == Some("UUID_INVALID") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VBD records of a VM; VBDs removed meanwhile (with their VDI) are skipped.
    pub async fn vbds(&self, vm: &Vm) -> Result<Vec<(String, Value)>, Error> {
        let mut out = Vec::new();
        for reference in &vm.vbds {
            match self.record("VBD", reference).await {
                Ok(record) => out.push((reference.clone(), record)),
                Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The disk VBDs of a VM with their VDIs, in device order.
    pub async fn disks(&self, vm: &Vm) -> Result<Vec<(Vbd, Vdi)>, Error> {
        let mut disks = Vec::new();
        for (vbd_ref, record) in self.vbds(vm).await? {
            let vbd = Vbd::parse(&vbd_ref, &record);
            if vbd.is_disk() {
                let vdi = self.vdi(&vbd.vdi).await?;
                disks.push((vbd, vdi));
            }
        }
        disks.sort_by_key(|(vbd, _)| (vbd.userdevice.parse::<u32>().unwrap_or(u32::MAX), vbd.userdevice.clone()));
        Ok(disks)
    }

    pub async fn add_to_other_config(&self, class: &str, reference: &str, key: &str, value: &str) -> Result<(), Error> {
        // add_to_other_config fails on an existing key: remove it first.
        let _ = self.call(&format!("{class}.remove_from_other_config"), vec![vref(reference), vref(key)]).await;
        self.call(&format!("{class}.add_to_other_config"), vec![vref(reference), vref(key), vref(value)])
            .await
            .map(drop)
    }

    pub async fn nbd_info(&self, vdi: &str) -> Result<Vec<NbdInfo>, Error> {
        Ok(NbdInfo::parse_list(&self.call("VDI.get_nbd_info", vec![vref(vdi)]).await?))
    }

    /// Records a restore to a new pool needs: the VM, its VBDs, VDIs, VIFs, networks and SRs.
    pub async fn vm_metadata(&self, vm: &Vm, snapshot: &Vm) -> Result<serde_json::Value, Error> {
        let mut vbds = BTreeMap::new();
        let mut vdis = BTreeMap::new();
        let mut srs = BTreeMap::new();
        for (vbd_ref, vbd) in self.vbds(snapshot).await? {
            let vdi_ref = vbd.get("VDI").and_then(Value::as_str).unwrap_or(records::NULL_REF).to_owned();
            if vdi_ref != records::NULL_REF {
                let vdi = self.record("VDI", &vdi_ref).await?;
                if let Some(sr_ref) = vdi.get("SR").and_then(Value::as_str)
                    && !srs.contains_key(sr_ref)
                {
                    srs.insert(sr_ref.to_owned(), records::to_json(&self.record("SR", sr_ref).await?));
                }
                vdis.insert(vdi_ref, records::to_json(&vdi));
            }
            vbds.insert(vbd_ref, records::to_json(&vbd));
        }
        let mut vifs = BTreeMap::new();
        let mut networks = BTreeMap::new();
        for vif_ref in &vm.vifs {
            let vif = self.record("VIF", vif_ref).await?;
            if let Some(net_ref) = vif.get("network").and_then(Value::as_str)
                && !networks.contains_key(net_ref)
            {
                networks.insert(net_ref.to_owned(), records::to_json(&self.record("network", net_ref).await?));
            }
            vifs.insert(vif_ref.clone(), records::to_json(&vif));
        }
        Ok(serde_json::json!({
            "format": "xenvault-vm/1",
            "vm_ref": vm.reference,
            "vm": records::to_json(&self.record("VM", &vm.reference).await?),
            "snapshot_ref": snapshot.reference,
            "snapshot": records::to_json(&self.record("VM", &snapshot.reference).await?),
            "VBD": vbds,
            "VDI": vdis,
            "VIF": vifs,
            "network": networks,
            "SR": srs,
        }))
    }
}
