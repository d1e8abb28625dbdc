//! `VDI.*`: create, destroy, clone, snapshot, copy, resize, changed block tracking
//! (enable, disable, list_changed_blocks, data_destroy) and `get_nbd_info`, with the
//! checks and error codes of xapi's `Xapi_vdi.check_operation_error` and of SM.

use super::Args;
use crate::db::{NULL_REF, new_ref, new_uuid, now_date, string_list};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::state::{Runtime, SharedSim, State};
use crate::storage::BLOCK;
use std::time::{Duration, Instant};
use xenvault_xapi_wire::Value;

pub fn call(st: &mut State, name: &str, args: &Args, rt: &Runtime) -> Option<ApiResult<Value>> {
    Some(match name {
        "create" => create_call(st, args),
        "destroy" => (|| {
            args.expect(2)?;
            let vdi = args.reference(st, 1, "VDI")?;
            destroy(st, &vdi)?;
            Ok(Value::from(""))
        })(),
        "forget" => (|| {
            args.expect(2)?;
            let vdi = args.reference(st, 1, "VDI")?;
            forget(st, &vdi)?;
            Ok(Value::from(""))
        })(),
        "snapshot" | "clone" => (|| {
            // driver_params was added later and defaults to {}.
            args.expect_one_of(&[2, 3])?;
            let vdi = args.reference(st, 1, "VDI")?;
            let new = if name == "snapshot" { snapshot(st, &vdi)? } else { clone(st, &vdi)? };
            Ok(Value::from(new))
        })(),
        "copy" => (|| {
            // (vdi, sr) originally; base_vdi and into_vdi were added with defaults.
            args.expect_one_of(&[3, 5])?;
            let vdi = args.reference(st, 1, "VDI")?;
            let sr = args.optional_reference(st, 2, "SR")?;
            let into = if args.len() == 5 { args.optional_reference(st, 4, "VDI")? } else { None };
            Ok(Value::from(copy(st, &vdi, sr.as_deref(), into.as_deref())?))
        })(),
        "resize" => (|| {
            args.expect(3)?;
            let vdi = args.reference(st, 1, "VDI")?;
            reject_cbt_metadata(st, &vdi)?;
            let size = u64::try_from(args.int(2)?).map_err(|_| ApiError::field_type("size"))?;
            let disk = disk_id(st, &vdi)?;
            st.storage.resize(&disk, size)?;
            st.cbt.resize(&disk, size);
            st.db.set("VDI", &vdi, "virtual_size", Value::Int(size as i64))?;
            refresh_utilisation(st, &vdi)?;
            Ok(Value::from(""))
        })(),
        "enable_cbt" | "disable_cbt" => (|| {
            args.expect(2)?;
            let vdi = args.reference(st, 1, "VDI")?;
            set_cbt(st, &vdi, name == "enable_cbt")?;
            Ok(Value::from(""))
        })(),
        "list_changed_blocks" => (|| {
            args.expect(3)?;
            let from = args.reference(st, 1, "VDI")?;
            let to = args.reference(st, 2, "VDI")?;
            let bitmap = st.cbt.changed_between(&disk_id(st, &from)?, &disk_id(st, &to)?)?;
            Ok(Value::from(xenvault_xapi_wire::cbt::encode_bitmap(&bitmap)))
        })(),
        "get_nbd_info" => (|| {
            args.expect(2)?;
            let vdi = args.reference(st, 1, "VDI")?;
            nbd_info(st, &vdi, args.str(0)?, rt)
        })(),
        _ => return None,
    })
}

/// The storage id of a VDI's data (its `location`, as on a file SR).
pub fn disk_id(st: &State, vdi: &str) -> ApiResult<String> {
    st.db.str_field("VDI", vdi, "location")
}

fn reject_cbt_metadata(st: &State, vdi: &str) -> ApiResult<()> {
    if st.db.str_field("VDI", vdi, "type")? == "cbt_metadata" {
        return Err(ApiError::new("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
    }
    Ok(())
}

/// Active VBDs (attached or reserved) block destroy, like xapi's `VDI_IN_USE`.
fn attached_vbds(st: &State, vdi: &str) -> ApiResult<Vec<String>> {
    Ok(st
        .db
        .refs_field("VDI", vdi, "VBDs")?
        .into_iter()
        .filter(|vbd| st.db.bool_field("VBD", vbd, "currently_attached").unwrap_or(false))
        .collect())
}

fn create_call(st: &mut State, args: &Args) -> ApiResult<Value> {
    args.expect(2)?;
    let rec = args.map(1)?;
    let sr = rec.get("SR").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
    st.db.get("SR", &sr)?;
    let size = rec.get("virtual_size").and_then(Value::as_i64).ok_or_else(|| ApiError::field_type("virtual_size"))?;
    let size = u64::try_from(size).map_err(|_| ApiError::field_type("virtual_size"))?;
    let vdi_type = rec.get("type").and_then(Value::as_str).unwrap_or("user");
    if vdi_type == "cbt_metadata" {
        return Err(ApiError::new("VDI_INCOMPATIBLE_TYPE", ["", "cbt_metadata"]));
    }
    let name = rec.get("name_label").and_then(Value::as_str).unwrap_or("");
    let vdi = create(st, name, &sr, size, vdi_type)?;
    st.db.update("VDI", &vdi, |r| {
        for key in ["name_description", "sharable", "read_only", "other_config", "xenstore_data", "sm_config", "tags"] {
            if let Some(v) = rec.get(key) {
                r.insert(key.to_owned(), v.clone());
            }
        }
    })?;
    Ok(Value::from(vdi))
}

/// A new empty VDI of `size` bytes on `sr`.
pub fn create(st: &mut State, name: &str, sr: &str, size: u64, vdi_type: &str) -> ApiResult<String> {
    let rec = records::vdi(name, sr, i64::try_from(size).map_err(|_| ApiError::field_type("virtual_size"))?, vdi_type);
    let reference = new_ref();
    let disk = rec.get("location").and_then(Value::as_str).unwrap_or_default().to_owned();
    st.storage.create(&disk, size)?;
    st.db.insert("VDI", reference.clone(), rec);
    st.db.add_to_set("SR", sr, "VDIs", &reference)?;
    Ok(reference)
}

/// A new VDI record sharing `vdi`'s data (no copy: copy-on-write).
fn derive(st: &mut State, vdi: &str, sr: &str, is_snapshot: bool) -> ApiResult<String> {
    reject_cbt_metadata(st, vdi)?;
    let src = st.db.get("VDI", vdi)?.clone();
    let (reference, uuid) = (new_ref(), new_uuid());
    let src_disk = disk_id(st, vdi)?;
    st.storage.share(&src_disk, &uuid)?;
    let mut rec = super::with_fields(
        src,
        [
            ("uuid", Value::from(uuid.clone())),
            ("location", Value::from(uuid.clone())),
            ("SR", Value::from(sr)),
            ("VBDs", Value::Array(Vec::new())),
            ("snapshots", Value::Array(Vec::new())),
            ("current_operations", crate::db::empty_map()),
            ("is_a_snapshot", Value::Bool(is_snapshot)),
            ("snapshot_of", Value::from(if is_snapshot { vdi } else { NULL_REF })),
            ("snapshot_time", if is_snapshot { now_date() } else { crate::db::epoch_date() }),
            ("cbt_enabled", Value::Bool(false)),
        ],
    );
    if is_snapshot && st.cbt.has_log(&src_disk) {
        st.cbt.snapshot(&src_disk, &uuid);
        rec.insert("cbt_enabled".into(), Value::Bool(true));
    }
    st.db.insert("VDI", reference.clone(), rec);
    st.db.add_to_set("SR", sr, "VDIs", &reference)?;
    if is_snapshot {
        st.db.add_to_set("VDI", vdi, "snapshots", &reference)?;
    }
    Ok(reference)
}

pub fn snapshot(st: &mut State, vdi: &str) -> ApiResult<String> {
    let sr = st.db.str_field("VDI", vdi, "SR")?;
    derive(st, vdi, &sr, true)
}

pub fn clone(st: &mut State, vdi: &str) -> ApiResult<String> {
    let sr = st.db.str_field("VDI", vdi, "SR")?;
    derive(st, vdi, &sr, false)
}

/// A full copy into a new VDI on `sr` (or into an existing VDI).
pub fn copy(st: &mut State, vdi: &str, sr: Option<&str>, into: Option<&str>) -> ApiResult<String> {
    reject_cbt_metadata(st, vdi)?;
    let Some(into) = into else {
        let sr = match sr {
            Some(sr) => sr.to_owned(),
            None => st.db.str_field("VDI", vdi, "SR")?,
        };
        return derive(st, vdi, &sr, false);
    };
    let (src, dst) = (disk_id(st, vdi)?, disk_id(st, into)?);
    let size = st.storage.size(&src)?;
    if st.storage.size(&dst)? < size {
        return Err(ApiError::new("VDI_TOO_SMALL", [into.to_owned(), size.to_string()]));
    }
    let mut buf = vec![0u8; BLOCK as usize];
    for index in 0..size.div_ceil(BLOCK) {
        if !st.storage.is_allocated(&src, index) && !st.storage.is_allocated(&dst, index) {
            continue;
        }
        let offset = index * BLOCK;
        let n = (size - offset).min(BLOCK) as usize;
        st.storage.read(&src, offset, &mut buf[..n])?;
        write_guest(st, into, offset, &buf[..n])?;
    }
    finish_writes(st, into)?;
    Ok(into.to_owned())
}

/// A guest write: data lands in storage and CBT notes the blocks.
/// Call [`finish_writes`] after a batch.
pub fn write_guest(st: &mut State, vdi: &str, offset: u64, data: &[u8]) -> ApiResult<()> {
    let disk = disk_id(st, vdi)?;
    let touched = st.storage.write(&disk, offset, data)?;
    st.cbt.record_write(&disk, touched);
    Ok(())
}

pub fn finish_writes(st: &mut State, vdi: &str) -> ApiResult<()> {
    st.storage.persist(&disk_id(st, vdi)?)?;
    st.dirty = true;
    refresh_utilisation(st, vdi)
}

pub fn refresh_utilisation(st: &mut State, vdi: &str) -> ApiResult<()> {
    let used = st.storage.allocated(&disk_id(st, vdi)?);
    st.db.set("VDI", vdi, "physical_utilisation", Value::Int(used as i64))
}

pub fn destroy(st: &mut State, vdi: &str) -> ApiResult<()> {
    if !attached_vbds(st, vdi)?.is_empty() {
        return Err(ApiError::new("VDI_IN_USE", [vdi, "destroy"]));
    }
    let disk = disk_id(st, vdi)?;
    st.cbt.delete(&disk);
    st.storage.remove(&disk)?;
    forget(st, vdi)
}

/// Removes the record and its links (the data is dealt with by the caller).
fn forget(st: &mut State, vdi: &str) -> ApiResult<()> {
    let rec = st.db.get("VDI", vdi)?.clone();
    for vbd in rec.get("VBDs").map(string_list).unwrap_or_default() {
        super::devices::remove_vbd(st, &vbd)?;
    }
    let sr = rec.get("SR").and_then(Value::as_str).unwrap_or(NULL_REF);
    if st.db.exists("SR", sr) {
        st.db.remove_from_set("SR", sr, "VDIs", vdi)?;
    }
    let parent = rec.get("snapshot_of").and_then(Value::as_str).unwrap_or(NULL_REF);
    if st.db.exists("VDI", parent) {
        st.db.remove_from_set("VDI", parent, "snapshots", vdi)?;
    }
    st.db.remove(vdi);
    Ok(())
}

fn set_cbt(st: &mut State, vdi: &str, enable: bool) -> ApiResult<()> {
    reject_cbt_metadata(st, vdi)?;
    if st.db.bool_field("VDI", vdi, "is_a_snapshot")? {
        return Err(ApiError::operation_not_allowed(format!("VDI is a snapshot: {vdi}")));
    }
    let vdi_type = st.db.str_field("VDI", vdi, "type")?;
    if vdi_type != "user" && vdi_type != "system" {
        return Err(ApiError::new("VDI_INCOMPATIBLE_TYPE", [vdi, vdi_type.as_str()]));
    }
    if st.db.bool_field("VDI", vdi, "cbt_enabled")? == enable {
        return Ok(());
    }
    let disk = disk_id(st, vdi)?;
    if enable {
        let size = st.storage.size(&disk)?;
        st.cbt.enable(&disk, size);
    } else {
        st.cbt.disable(&disk);
    }
    st.db.set("VDI", vdi, "cbt_enabled", Value::Bool(enable))
}

/// How long xapi waits for a VDI's VBDs to go before `data_destroy` fails.
const DATA_DESTROY_WAIT: Duration = Duration::from_secs(4);

/// `VDI.data_destroy`: drops a CBT snapshot's data, keeping its CBT log; the VDI
/// becomes `cbt_metadata`. Waits like xapi for the VDI's VBDs to be destroyed.
pub async fn data_destroy(sim: &SharedSim, args: &Args<'_>) -> ApiResult<Value> {
    args.expect(2)?;
    let vdi = sim.with(|st| {
        let vdi = args.reference(st, 1, "VDI")?;
        if st.db.str_field("VDI", &vdi, "type")? == "cbt_metadata" {
            return Ok(None);
        }
        if !st.db.bool_field("VDI", &vdi, "is_a_snapshot")? {
            return Err(ApiError::operation_not_allowed(format!("VDI is not a snapshot: {vdi}")));
        }
        if !st.db.bool_field("VDI", &vdi, "cbt_enabled")? {
            return Err(ApiError::new("VDI_NO_CBT_METADATA", [vdi.as_str()]));
        }
        Ok(Some(vdi))
    })?;
    let Some(vdi) = vdi else { return Ok(Value::from("")) };
    let deadline = Instant::now() + DATA_DESTROY_WAIT;
    loop {
        let vbds = sim.lock().db.refs_field("VDI", &vdi, "VBDs")?;
        if vbds.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new("VDI_IN_USE", [vdi.as_str(), "data_destroy"]));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.with(|st| {
        let disk = disk_id(st, &vdi)?;
        st.storage.remove(&disk)?;
        st.db.update("VDI", &vdi, |r| {
            r.insert("type".into(), Value::from("cbt_metadata"));
            r.insert("physical_utilisation".into(), Value::Int(0));
        })?;
        Ok(Value::from(""))
    })
}

/// `VDI.get_nbd_info`: one entry per IP of each attached PIF on an `nbd` or
/// `insecure_nbd` network, on every host with an attached PBD for the VDI's SR.
fn nbd_info(st: &State, vdi: &str, session: &str, rt: &Runtime) -> ApiResult<Value> {
    reject_cbt_metadata(st, vdi)?;
    let sr = st.db.str_field("VDI", vdi, "SR")?;
    let uuid = st.db.str_field("VDI", vdi, "uuid")?;
    let nbd_networks: Vec<String> = st
        .db
        .all_of("network")
        .into_iter()
        .filter(|n| {
            st.db
                .field("network", n, "purpose")
                .map(|p| string_list(p).iter().any(|p| p == "nbd" || p == "insecure_nbd"))
                .unwrap_or(false)
        })
        .collect();
    let mut entries = Vec::new();
    for pbd in st.db.find("PBD", "SR", &sr) {
        if !st.db.bool_field("PBD", &pbd, "currently_attached")? {
            continue;
        }
        let host = st.db.str_field("PBD", &pbd, "host")?;
        for pif in st.db.find("PIF", "host", &host) {
            let attached = st.db.bool_field("PIF", &pif, "currently_attached")?;
            if !attached || !nbd_networks.contains(&st.db.str_field("PIF", &pif, "network")?) {
                continue;
            }
            let mut ips = vec![st.db.str_field("PIF", &pif, "IP")?];
            ips.extend(st.db.refs_field("PIF", &pif, "IPv6")?);
            for ip in ips.into_iter().filter(|ip| !ip.is_empty()) {
                entries.push(Value::Struct(
                    [
                        ("address", Value::from(ip)),
                        ("port", Value::Int(i64::from(rt.nbd_port))),
                        ("cert", Value::from(rt.cert_pem.as_str())),
                        ("exportname", Value::from(format!("/{uuid}?session_id={session}"))),
                        ("subject", Value::from(rt.cert_subject.as_str())),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                ));
            }
        }
    }
    Ok(Value::Array(entries))
}
