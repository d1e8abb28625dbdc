//! `GET /export` and `PUT /import`: a VM (or snapshot) as an XVA, like xapi's
//! export_vsn 2: `ova.xml` with the VM, its VBDs, VDIs, VIFs, networks and SRs
//! under archive-local `Ref:N` ids, then every disk in checksummed 1 MiB chunks.

use super::raw::{BodyReader, ChunkWriter, content_length};
use super::{BodySender, Params, begin, export_headers, fail, stream_body};
use crate::db::{NULL_REF, Record, new_ref};
use crate::error::{ApiError, ApiResult};
use crate::methods::{devices, task, vdi};
use crate::state::SharedSim;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use xenvault_xapi_wire::Value;
use xenvault_xva::{
    CHUNK_SIZE, Compression, Compressor, OvaObject, OvaVersion, WriterOptions, XvaReader, XvaWriter, decompress,
    ova_xml,
};

fn xva_error(e: xenvault_xva::Error) -> ApiError {
    ApiError::new("IMPORT_ERROR", [e.to_string()])
}

/// A disk to stream: archive id, storage id, size.
struct DiskPlan {
    id: String,
    disk: String,
    size: u64,
}

/// The objects of one VM export, refs renamed `Ref:N`, and its disks.
fn plan_export(st: &crate::state::State, vm: &str) -> ApiResult<(Vec<OvaObject>, Vec<DiskPlan>)> {
    let vm_rec = st.db.get("VM", vm)?;
    let mut order: Vec<(&'static str, String)> = vec![("VM", vm.to_owned())];
    let add = |class: &'static str, r: &str, order: &mut Vec<(&'static str, String)>| {
        if r != NULL_REF && st.db.exists(class, r) && !order.iter().any(|(_, o)| o == r) {
            order.push((class, r.to_owned()));
        }
    };
    let guest_metrics = st.db.str_field("VM", vm, "guest_metrics")?;
    add("VM_guest_metrics", &guest_metrics, &mut order);
    for vbd in crate::db::string_list(vm_rec.get("VBDs").unwrap_or(&Value::Array(Vec::new()))) {
        add("VBD", &vbd, &mut order);
        let vdi_ref = st.db.str_field("VBD", &vbd, "VDI")?;
        add("VDI", &vdi_ref, &mut order);
        if st.db.exists("VDI", &vdi_ref) {
            add("SR", &st.db.str_field("VDI", &vdi_ref, "SR")?, &mut order);
        }
    }
    for vif in crate::db::string_list(vm_rec.get("VIFs").unwrap_or(&Value::Array(Vec::new()))) {
        add("VIF", &vif, &mut order);
        add("network", &st.db.str_field("VIF", &vif, "network")?, &mut order);
    }
    let ids: HashMap<&str, String> =
        order.iter().enumerate().map(|(n, (_, r))| (r.as_str(), format!("Ref:{n}"))).collect();
    let mut objects = Vec::new();
    let mut disks = Vec::new();
    for (class, r) in &order {
        let rec = exported(class, st.db.get(class, r)?.clone());
        let id = ids.get(r.as_str()).cloned().unwrap_or_default();
        objects.push(OvaObject {
            class: (*class).to_owned(),
            id: id.clone(),
            snapshot: rename_refs(&Value::Struct(rec), &ids),
        });
        if *class == "VDI" {
            let disk = vdi::disk_id(st, r)?;
            disks.push(DiskPlan { id, size: st.storage.size(&disk)?, disk });
        }
    }
    disks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((objects, disks))
}

/// What xapi's export (without snapshot metadata, not preserving the power state)
/// writes instead of the live record: the VM comes out as a plain halted VM, even when
/// it is a snapshot, so an import never creates a snapshot; VBDs come out unplugged.
fn exported(class: &str, mut rec: Record) -> Record {
    let mut reset = |field: &str, v: Value| {
        rec.insert(field.to_owned(), v);
    };
    let none = || Value::Array(Vec::new());
    let null = || Value::from(NULL_REF);
    match class {
        "VM" => {
            reset("power_state", Value::from("Halted"));
            reset("suspend_VDI", null());
            reset("is_a_snapshot", Value::Bool(false));
            reset("snapshot_of", null());
            reset("snapshots", none());
            reset("snapshot_time", crate::db::epoch_date());
            reset("transportable_snapshot_id", Value::from(""));
            reset("parent", null());
            reset("current_operations", crate::db::empty_map());
            reset("allowed_operations", none());
            reset("crash_dumps", none());
            reset("consoles", none());
            reset("protection_policy", null());
            reset("blobs", crate::db::empty_map());
        }
        "VBD" => {
            reset("currently_attached", Value::Bool(false));
            reset("current_operations", crate::db::empty_map());
            reset("allowed_operations", none());
        }
        _ => {}
    }
    rec
}

/// Refs to exported objects become their `Ref:N`; any other ref becomes NULL.
fn rename_refs(v: &Value, ids: &HashMap<&str, String>) -> Value {
    match v {
        Value::Str(s) if s.starts_with("OpaqueRef:") => {
            Value::from(ids.get(s.as_str()).cloned().unwrap_or_else(|| NULL_REF.to_owned()))
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| rename_refs(i, ids)).collect()),
        Value::Struct(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), rename_refs(v, ids))).collect()),
        other => other.clone(),
    }
}

pub async fn export(State(sim): State<SharedSim>, Query(q): Query<Params>) -> Response {
    let task_ref = match begin(&sim, &q, "VM.export") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let prepared = (|| {
        let st = sim.lock();
        let wanted =
            q.get("ref").or_else(|| q.get("uuid")).ok_or_else(|| ApiError::internal("Missing ref query parameter"))?;
        let vm = if st.db.exists("VM", wanted) { wanted.clone() } else { st.db.by_uuid("VM", wanted)? };
        crate::methods::vm::require_state(&vm, &st.db.str_field("VM", &vm, "power_state")?, &["Halted", "Suspended"])?;
        let (objects, disks) = plan_export(&st, &vm)?;
        let host = crate::methods::session::master_host(&st);
        let hostname = st.db.str_field("host", &host, "hostname").unwrap_or_default();
        let uuid = st.db.str_field("VM", &vm, "uuid")?;
        Ok((objects, disks, hostname, uuid))
    })();
    let (objects, disks, hostname, uuid) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&sim, &task_ref, e),
    };
    let compression = Compression::from_query(q.get("use_compression").map(String::as_str).unwrap_or("false"));
    let version = OvaVersion {
        hostname,
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        product_version: "8.3.0".into(),
        product_brand: "XCP-ng".into(),
        build_number: "cloud".into(),
        xapi_major: 24,
        xapi_minor: 19,
        export_vsn: 2,
    };
    let xml = ova_xml(&version, &objects);
    let headers = export_headers(&task_ref, "application/octet-stream", &format!("{uuid}.xva"));
    let (sim2, task2) = (sim.clone(), task_ref.clone());
    let body = stream_body(&sim, task_ref, move |out| send_xva(&sim2, &task2, &xml, &disks, compression, out));
    (StatusCode::OK, headers, body).into_response()
}

fn send_xva(
    sim: &SharedSim,
    task_ref: &str,
    xml: &str,
    disks: &[DiskPlan],
    compression: Compression,
    out: &mut BodySender,
) -> ApiResult<()> {
    let sink = ChunkWriter { out, buf: Vec::new() };
    let compressor = Compressor::new(sink, compression)?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let mut writer = XvaWriter::new(compressor, xml, now, WriterOptions::default()).map_err(xva_error)?;
    let total: u64 = disks.iter().map(|d| d.size).sum::<u64>().max(1);
    let mut done = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    for d in disks {
        writer.begin_disk(&d.id, d.size).map_err(xva_error)?;
        let mut offset = 0;
        while offset < d.size {
            let n = (d.size - offset).min(CHUNK_SIZE) as usize;
            sim.lock().storage.read(&d.disk, offset, &mut buf[..n])?;
            writer.write(&buf[..n]).map_err(xva_error)?;
            offset += n as u64;
            done += n as u64;
            if task::is_cancelling(sim, task_ref) {
                return Err(ApiError::new("TASK_CANCELLED", [task_ref]));
            }
            task::set_progress(sim, task_ref, done as f64 / total as f64);
        }
    }
    let compressor = writer.finish().map_err(xva_error)?;
    let mut sink = compressor.finish()?;
    sink.flush().map_err(ApiError::from)
}

pub async fn import(State(sim): State<SharedSim>, Query(q): Query<Params>, headers: HeaderMap, body: Body) -> Response {
    let task_ref = match begin(&sim, &q, "VM.import") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if content_length(&headers).is_none() {
        return fail(&sim, &task_ref, ApiError::internal("import needs a Content-Length"));
    }
    let sr = {
        let st = sim.lock();
        match q.get("sr_id") {
            Some(sr) if st.db.exists("SR", sr) => Ok(sr.clone()),
            Some(sr) => Err(ApiError::handle_invalid("SR", sr)),
            None => st
                .db
                .all_of("pool")
                .first()
                .map(|p| st.db.str_field("pool", p, "default_SR"))
                .unwrap_or_else(|| Err(ApiError::internal("no pool"))),
        }
    };
    let sr = match sr {
        Ok(sr) => sr,
        Err(e) => return fail(&sim, &task_ref, e),
    };
    let cut = sim.lock().faults.cut_http_after;
    let reader = BodyReader::new(body, cut);
    let sim2 = sim.clone();
    let outcome = tokio::task::spawn_blocking(move || receive_xva(&sim2, &sr, reader))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e)));
    match outcome {
        Ok(vm) => {
            task::complete(&sim, &task_ref, Ok(Value::from(vec![vm])));
            let mut h = HeaderMap::new();
            if let Ok(v) = task_ref.parse() {
                h.insert("task-id", v);
            }
            (StatusCode::OK, h).into_response()
        }
        Err(e) => fail(&sim, &task_ref, e),
    }
}

/// Creates the VM, its disks and devices from `ova.xml`, then fills the disks.
/// On a bad archive the half-made objects are removed again.
fn receive_xva(sim: &SharedSim, sr: &str, body: BodyReader) -> ApiResult<String> {
    let (input, _) = decompress(body)?;
    let mut reader = XvaReader::new(input).map_err(xva_error)?;
    let objects = reader.objects().to_vec();
    let (vm, disk_vdis) = sim.with(|st| create_objects(st, sr, &objects))?;
    let filled = (|| {
        while let Some(chunk) = reader.next_chunk().map_err(xva_error)? {
            let target = disk_vdis
                .get(chunk.disk)
                .ok_or_else(|| ApiError::new("IMPORT_ERROR", [format!("chunk for unknown disk {}", chunk.disk)]))?;
            let (offset, data) = (chunk.offset, chunk.data);
            sim.with(|st| vdi::write_guest(st, target, offset, data))?;
        }
        sim.with(|st| {
            for v in disk_vdis.values() {
                vdi::finish_writes(st, v)?;
            }
            Ok(())
        })
    })();
    if let Err(e) = filled {
        let _ = sim.with(|st| {
            crate::methods::vm::destroy(st, &vm)?;
            for v in disk_vdis.values() {
                vdi::destroy(st, v)?;
            }
            Ok(())
        });
        return Err(e);
    }
    Ok(vm)
}

fn text<'a>(rec: &'a Value, key: &str) -> &'a str {
    rec.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn create_objects(
    st: &mut crate::state::State,
    sr: &str,
    objects: &[OvaObject],
) -> ApiResult<(String, HashMap<String, String>)> {
    let vm_obj =
        objects.iter().find(|o| o.class == "VM").ok_or_else(|| ApiError::new("IMPORT_ERROR", ["no VM in ova.xml"]))?;
    let mut spec: BTreeMap<String, Value> = vm_obj.snapshot.as_struct().cloned().unwrap_or_default();
    // An imported snapshot becomes a template, as xapi does.
    let was_snapshot = spec.get("is_a_snapshot").and_then(Value::as_bool).unwrap_or(false);
    let vm = new_ref();
    let metrics = new_ref();
    st.db.insert("VM_metrics", metrics.clone(), crate::records::vm_metrics());
    let mut rec: Record = crate::records::vm(text(&vm_obj.snapshot, "name_label"), false, &metrics, NULL_REF);
    const KEEP: &[&str] = &[
        "name_description",
        "other_config",
        "tags",
        "is_a_template",
        "memory_static_max",
        "memory_static_min",
        "memory_dynamic_max",
        "memory_dynamic_min",
        "VCPUs_max",
        "VCPUs_at_startup",
        "HVM_boot_policy",
        "HVM_boot_params",
        "platform",
        "PV_args",
        "PV_bootloader",
        "actions_after_shutdown",
        "actions_after_reboot",
        "actions_after_crash",
        "blocked_operations",
        "xenstore_data",
        "domain_type",
        "NVRAM",
        "bios_strings",
    ];
    for key in KEEP {
        if let Some(v) = spec.remove(*key) {
            rec.insert((*key).to_owned(), v);
        }
    }
    if was_snapshot {
        rec.insert("is_a_template".into(), Value::Bool(true));
    }
    st.db.insert("VM", vm.clone(), rec);

    let mut vdis: HashMap<String, String> = HashMap::new();
    for o in objects.iter().filter(|o| o.class == "VDI") {
        let size = o.snapshot.get("virtual_size").and_then(Value::as_i64).unwrap_or(0);
        let size = u64::try_from(size).map_err(|_| ApiError::new("IMPORT_ERROR", ["bad virtual_size"]))?;
        let vdi_type = match text(&o.snapshot, "type") {
            "" | "cbt_metadata" => "user",
            t => t,
        };
        let new = vdi::create(st, text(&o.snapshot, "name_label"), sr, size, vdi_type)?;
        vdis.insert(o.id.clone(), new);
    }
    for o in objects.iter().filter(|o| o.class == "VBD") {
        let mut spec: BTreeMap<String, Value> = o.snapshot.as_struct().cloned().unwrap_or_default();
        let vdi_ref = vdis.get(text(&o.snapshot, "VDI")).cloned().unwrap_or_else(|| NULL_REF.to_owned());
        spec.insert("empty".into(), Value::Bool(vdi_ref == NULL_REF));
        spec.insert("VDI".into(), Value::from(vdi_ref));
        spec.insert("VM".into(), Value::from(vm.as_str()));
        devices::create_vbd(st, &spec)?;
    }
    let networks: HashMap<&str, &Value> =
        objects.iter().filter(|o| o.class == "network").map(|o| (o.id.as_str(), &o.snapshot)).collect();
    for o in objects.iter().filter(|o| o.class == "VIF") {
        // Networks are matched by bridge, else the first network of the pool.
        let bridge = networks.get(text(&o.snapshot, "network")).map(|n| text(n, "bridge")).unwrap_or_default();
        let network = st
            .db
            .find("network", "bridge", bridge)
            .into_iter()
            .next()
            .or_else(|| st.db.all_of("network").into_iter().next())
            .ok_or_else(|| ApiError::new("IMPORT_ERROR", ["no network to attach a VIF to"]))?;
        let mut spec: BTreeMap<String, Value> = o.snapshot.as_struct().cloned().unwrap_or_default();
        spec.insert("VM".into(), Value::from(vm.as_str()));
        spec.insert("network".into(), Value::from(network));
        devices::create_vif(st, &spec)?;
    }
    Ok((vm, vdis))
}
