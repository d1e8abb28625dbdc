//! XVA export of a whole VM restore point: `ova.xml` rebuilt from the records the engine
//! stored (VM, VBDs, VDIs, SRs, VIFs, networks), then every disk's data.

use crate::{Error, RepoDisk, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use xenvault_repo::{DiskReader, Manifest, Repository};
use xenvault_types::progress::Task;
use xenvault_xva::{OvaObject, OvaVersion, XvaWriter, ova_xml};

/// Known references become archive ids (`Ref:N`); other references become NULL, as xapi does.
fn rename_refs(j: &Json, ids: &HashMap<String, String>) -> Json {
    match j {
        Json::String(s) if s.starts_with("OpaqueRef:") => {
            Json::from(ids.get(s).cloned().unwrap_or_else(|| "OpaqueRef:NULL".into()))
        }
        Json::Array(a) => {
            Json::Array(a.iter().map(|v| rename_refs(v, ids)).filter(|v| v != "OpaqueRef:NULL").collect())
        }
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), rename_refs(v, ids))).collect()),
        other => other.clone(),
    }
}

/// Writes the XVA of restore point `m` to `out`; `task` goes to the disks' total size.
/// Blocking: call from `spawn_blocking`.
pub fn export_xva(
    repo: &Repository,
    m: &Manifest,
    out: impl Write,
    task: &Task,
    cancel: &CancellationToken,
) -> Result<u64> {
    let handle = tokio::runtime::Handle::current();
    let meta = crate::disk::vm_metadata(m)?
        .ok_or_else(|| Error::Metadata(format!("restore point {} holds no VM records", m.short_id())))?;
    let records = &meta.records;
    if records.snapshot.is_empty() {
        return Err(Error::Metadata("no VM snapshot record".into()));
    }
    let mut vm = records.snapshot.clone();
    vm.insert("is_a_snapshot".into(), Json::from(false));
    vm.insert("snapshot_of".into(), Json::from("OpaqueRef:NULL"));
    vm.insert("VBDs".into(), Json::from(records.vbds.keys().cloned().collect::<Vec<_>>()));
    vm.insert("VIFs".into(), Json::from(records.vifs.keys().cloned().collect::<Vec<_>>()));
    vm.insert("name_label".into(), Json::from(meta.vm.name_label.as_str()));
    let mut order: Vec<(&str, String, Json)> = vec![("VM", records.vm_ref.clone(), Json::Object(vm))];
    let sections = [
        ("VBD", &records.vbds),
        ("VDI", &records.vdis),
        ("SR", &records.srs),
        ("VIF", &records.vifs),
        ("network", &records.networks),
    ];
    for (class, section) in sections {
        for (r, rec) in section {
            order.push((class, r.clone(), Json::Object(rec.clone())));
        }
    }
    let mut ids: HashMap<String, String> =
        order.iter().enumerate().map(|(n, (_, r, _))| (r.clone(), format!("Ref:{n}"))).collect();
    ids.insert(records.snapshot_ref.clone(), "Ref:0".into());
    for (_, r, rec) in order.iter_mut() {
        if let Some(vbd) = rec.as_object_mut().filter(|_| records.vbds.contains_key(r.as_str())) {
            vbd.insert("VM".into(), Json::from(records.vm_ref.as_str()));
        }
    }
    let mut objects = Vec::new();
    let mut disks = Vec::new();
    for (class, r, rec) in &order {
        let id = ids.get(r).cloned().unwrap_or_default();
        let snapshot = xenvault_xapi_wire::jsonrpc::from_json(&rename_refs(rec, &ids))
            .map_err(|e| Error::Metadata(e.to_string()))?;
        objects.push(OvaObject { class: (*class).to_owned(), id: id.clone(), snapshot });
        if *class == "VDI" {
            let uuid = rec.get("uuid").and_then(Json::as_str).unwrap_or_default();
            let original =
                meta.disks.iter().find(|d| d.snapshot_vdi_uuid == uuid).map_or(uuid, |d| d.vdi_uuid.as_str());
            let record = m
                .disks
                .iter()
                .find(|d| d.uuid == original)
                .ok_or_else(|| Error::Metadata(format!("VDI {uuid} is not in the restore point")))?;
            disks.push((id, record));
        }
    }
    disks.sort_by(|a, b| a.0.cmp(&b.0));
    let version = OvaVersion {
        hostname: "xenvault".into(),
        date: m.time.format("%Y-%m-%d").to_string(),
        product_version: "8.3.0".into(),
        product_brand: "XCP-ng".into(),
        build_number: "xenvault".into(),
        xapi_major: 24,
        xapi_minor: 19,
        export_vsn: 2,
    };
    let mtime = u64::try_from(m.time.timestamp()).unwrap_or(0);
    let mut w = XvaWriter::new(out, &ova_xml(&version, &objects), mtime, Default::default())?;
    let mut total = 0;
    for (id, record) in disks {
        let reader = Arc::new(handle.block_on(DiskReader::new(repo, record))?);
        let disk = RepoDisk::new(reader.clone(), handle.clone());
        w.begin_disk(&id, reader.size())?;
        let cs = reader.chunk_size();
        for slot in 0..record.slot_count() {
            crate::export::unless_cancelled(cancel)?;
            let len = (reader.size() - slot * cs).min(cs);
            match handle.block_on(reader.read_slot(slot))? {
                Some(data) => w.write(&data)?,
                None => w.write_zeros(len)?,
            }
            task.advance(len);
        }
        total += disk.reader().size();
    }
    w.finish()?;
    Ok(total)
}
