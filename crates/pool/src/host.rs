//! A logged-in pool: typed calls over the XenAPI client.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use xenvault_types::metadata::{Record, XapiRecords};
use xenvault_xapi::{Client, Compression, DiskFormat, Ref};
use xenvault_xapi_wire::Value;
use xenvault_xapi_wire::cbt::ChangedBlocks;

use crate::config::PoolLogin;
use crate::error::Error;
use crate::records::{self, HostName, NbdInfo, Vbd, Vdi, Vm};

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

/// Logs in to the pool master with the stored credentials and TLS trust: the bare
/// client, for callers that drive XenAPI themselves (restore's uploads).
pub async fn connect(login: &PoolLogin) -> Result<Client, Error> {
    let client = Client::builder(login.entry.url.as_str()).tls(login.entry.tls.clone()).build()?;
    client.login_with_password(&login.entry.user, &login.password).await?;
    Ok(client)
}

/// The reference of the `class` object with this uuid, or None when there is none
/// (xapi answers `UUID_INVALID`).
pub async fn by_uuid(client: &Client, class: &str, uuid: &str) -> Result<Option<String>, Error> {
    if uuid.is_empty() {
        return Ok(None);
    }
    match client.call(&format!("{class}.get_by_uuid"), &[vref(uuid)]).await {
        Ok(reference) => reference
            .as_str()
            .map(|r| Some(r.to_owned()))
            .ok_or_else(|| Error::Protocol(format!("{class}.get_by_uuid returned {reference:?}"))),
        Err(e) if e.failure().is_some_and(|f| f.code == "UUID_INVALID") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The 64 KiB blocks of a disk that changed between the snapshot VDI `from` and the VDI
/// `to` (`VDI.list_changed_blocks`, both references).
pub async fn changed_blocks(client: &Client, from: &str, to: &str) -> Result<ChangedBlocks, Error> {
    let answer = client.call("VDI.list_changed_blocks", &[vref(from), vref(to)]).await?;
    answer
        .as_str()
        .ok_or_else(|| format!("not a string: {answer:?}"))
        .and_then(|text| ChangedBlocks::decode(text).map_err(|e| e.to_string()))
        .map_err(|e| Error::Protocol(format!("VDI.list_changed_blocks returned no bitmap ({e})")))
}

fn vref(s: &str) -> Value {
    Value::from(s)
}

impl Host {
    /// Logs in to the pool master with the stored credentials and TLS trust.
    pub async fn connect(login: &PoolLogin) -> Result<Self, Error> {
        Ok(Self { client: connect(login).await?, pool_name: login.name.clone() })
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
        match by_uuid(&self.client, "VDI", uuid).await? {
            Some(reference) => Ok(Some(self.vdi(&reference).await?)),
            None => Ok(None),
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
    pub async fn vm_records(&self, vm: &Vm, snapshot: &Vm) -> Result<XapiRecords, Error> {
        let mut out = XapiRecords {
            vm_ref: vm.reference.clone(),
            vm: stored(&self.record("VM", &vm.reference).await?),
            snapshot_ref: snapshot.reference.clone(),
            snapshot: stored(&self.record("VM", &snapshot.reference).await?),
            ..Default::default()
        };
        for (vbd_ref, vbd) in self.vbds(snapshot).await? {
            let vdi_ref = vbd.get("VDI").and_then(Value::as_str).unwrap_or(records::NULL_REF).to_owned();
            if vdi_ref != records::NULL_REF {
                let vdi = self.record("VDI", &vdi_ref).await?;
                if let Some(sr_ref) = vdi.get("SR").and_then(Value::as_str)
                    && !out.srs.contains_key(sr_ref)
                {
                    out.srs.insert(sr_ref.to_owned(), stored(&self.record("SR", sr_ref).await?));
                }
                out.vdis.insert(vdi_ref, stored(&vdi));
            }
            out.vbds.insert(vbd_ref, stored(&vbd));
        }
        for vif_ref in &vm.vifs {
            let vif = self.record("VIF", vif_ref).await?;
            if let Some(net_ref) = vif.get("network").and_then(Value::as_str)
                && !out.networks.contains_key(net_ref)
            {
                out.networks.insert(net_ref.to_owned(), stored(&self.record("network", net_ref).await?));
            }
            out.vifs.insert(vif_ref.clone(), stored(&vif));
        }
        Ok(out)
    }
}

/// A record as stored in restore-point metadata (JSON; a non-struct answer stores as empty).
fn stored(record: &Value) -> Record {
    match records::to_json(record) {
        serde_json::Value::Object(fields) => fields,
        _ => Record::new(),
    }
}
