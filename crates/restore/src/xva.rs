//! XVA export of a whole VM restore point: `ova.xml` rebuilt from the records the engine
//! stored (VM, VBDs, VDIs, SRs, VIFs, networks), then every disk's data.

use crate::{Error, RepoDisk, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use xenvault_repo::{DiskReader, Manifest, Repository};
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

/// Writes the XVA of restore point `m` to `out`. Blocking: call from `spawn_blocking`.
pub fn export_xva(
    repo: &Repository,
    m: &Manifest,
    out: impl Write,
    progress: Option<crate::export::Progress>,
) -> Result<u64> {
    let handle = tokio::runtime::Handle::current();
    let meta = m.metadata.get("vm").filter(|v| v.get("format").and_then(Json::as_str) == Some("xenvault-vm/1"));
    let meta = meta.ok_or_else(|| Error::Metadata(format!("restore point {} holds no VM records", m.short_id())))?;
    let snapshot = meta
        .get("snapshot")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::Metadata("no VM snapshot record".into()))?;
    let empty = serde_json::Map::new();
    let section = |name: &str| meta.get(name).and_then(Json::as_object).unwrap_or(&empty);
    let mut vm = snapshot.clone();
    vm.insert("is_a_snapshot".into(), Json::from(false));
    vm.insert("snapshot_of".into(), Json::from("OpaqueRef:NULL"));
    vm.insert("VBDs".into(), Json::from(section("VBD").keys().cloned().collect::<Vec<_>>()));
    vm.insert("VIFs".into(), Json::from(section("VIF").keys().cloned().collect::<Vec<_>>()));
    if let Some(name) = meta.get("vm").and_then(|v| v.get("name_label")) {
        vm.insert("name_label".into(), name.clone());
    }
    let mut order: Vec<(&str, String, Json)> = vec![("VM", text(meta, "vm_ref"), Json::Object(vm))];
    for class in ["VBD", "VDI", "SR", "VIF", "network"] {
        for (r, rec) in section(class) {
            order.push((class, r.clone(), rec.clone()));
        }
    }
    let mut ids: HashMap<String, String> =
        order.iter().enumerate().map(|(n, (_, r, _))| (r.clone(), format!("Ref:{n}"))).collect();
    ids.insert(text(meta, "snapshot_ref"), "Ref:0".into());
    for (_, r, rec) in order.iter_mut() {
        if let Some(vbd) = rec.as_object_mut().filter(|_| section("VBD").contains_key(r.as_str())) {
            vbd.insert("VM".into(), Json::from(text(meta, "vm_ref")));
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
            let stored = m.metadata.get("backup").and_then(|b| b.get("disks")).and_then(Json::as_array);
            let original =
                stored.and_then(|d| d.iter().find(|e| e.get("snapshot_vdi_uuid").and_then(Json::as_str) == Some(uuid)));
            let original = original.and_then(|e| e.get("vdi_uuid")).and_then(Json::as_str).unwrap_or(uuid);
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
            let len = (reader.size() - slot * cs).min(cs);
            match handle.block_on(reader.read_slot(slot))? {
                Some(data) => w.write(&data)?,
                None => w.write_zeros(len)?,
            }
            if let Some(p) = &progress {
                p(len);
            }
        }
        total += disk.reader().size();
    }
    w.finish()?;
    Ok(total)
}

fn text(j: &Json, key: &str) -> String {
    j.get(key).and_then(Json::as_str).unwrap_or_default().to_owned()
}
