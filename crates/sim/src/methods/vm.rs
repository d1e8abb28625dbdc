//! `VM.*`: snapshot (and with quiesce), clone, copy, create, destroy, revert and the power
//! state machine, with xapi's `VM_BAD_POWER_STATE` on a wrong state and
//! `OPERATION_BLOCKED` on an operation named in `blocked_operations`.

use super::{Args, devices, vdi};
use crate::db::{NULL_REF, Record, empty_map, epoch_date, new_ref, new_uuid, now_date, string_list};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::state::{Runtime, State};
use std::collections::BTreeMap;
use xenvault_xapi_wire::Value;

pub fn call(st: &mut State, name: &str, args: &Args, rt: &Runtime) -> Option<ApiResult<Value>> {
    Some(match name {
        "snapshot" => (|| {
            // ignore_vdis was added later with default [].
            args.expect_one_of(&[3, 4])?;
            let vm = args.reference(st, 1, "VM")?;
            let ignore = if args.len() == 4 { string_list(args.value(3)?) } else { Vec::new() };
            copy_vm(st, &vm, args.str(2)?, Kind::Snapshot, &ignore).map(Value::from)
        })(),
        "snapshot_with_quiesce" => (|| {
            args.expect(3)?;
            let vm = args.reference(st, 1, "VM")?;
            if rt.quiesce_removed {
                return Err(ApiError::new("MESSAGE_REMOVED", Vec::<String>::new()));
            }
            require_state(&vm, &power_state(st, &vm)?, &["Running"])?;
            check_quiesce(st, &vm)?;
            let snap = copy_vm(st, &vm, args.str(2)?, Kind::Snapshot, &[])?;
            st.db.update("VM", &snap, |r| {
                if let Some(Value::Struct(info)) = r.get_mut("snapshot_info") {
                    info.insert("quiesced".into(), Value::from("true"));
                }
            })?;
            Ok(Value::from(snap))
        })(),
        "clone" => (|| {
            args.expect(3)?;
            let vm = args.reference(st, 1, "VM")?;
            require_halted(st, &vm)?;
            copy_vm(st, &vm, args.str(2)?, Kind::Clone, &[]).map(Value::from)
        })(),
        "provision" => (|| {
            args.expect(2)?;
            args.reference(st, 1, "VM")?;
            Ok(Value::from(""))
        })(),
        "copy" => (|| {
            args.expect(4)?;
            let vm = args.reference(st, 1, "VM")?;
            require_halted(st, &vm)?;
            let sr = args.optional_reference(st, 3, "SR")?;
            copy_vm(st, &vm, args.str(2)?, Kind::Copy(sr), &[]).map(Value::from)
        })(),
        "destroy" => (|| {
            args.expect(2)?;
            let vm = args.reference(st, 1, "VM")?;
            destroy(st, &vm)?;
            Ok(Value::from(""))
        })(),
        "create" => (|| {
            args.expect(2)?;
            create(st, args.map(1)?).map(Value::from)
        })(),
        "revert" => (|| {
            args.expect(2)?;
            let snapshot = args.reference(st, 1, "VM")?;
            revert(st, &snapshot).map(|()| Value::from(""))
        })(),
        "start" | "start_on" | "resume" | "resume_on" | "unpause" | "shutdown" | "clean_shutdown" | "hard_shutdown"
        | "suspend" | "pause" | "clean_reboot" | "hard_reboot" => power(st, name, args),
        _ => return None,
    })
}

fn power_state(st: &State, vm: &str) -> ApiResult<String> {
    st.db.str_field("VM", vm, "power_state")
}

/// `VM_BAD_POWER_STATE [vm, "allowed, states", actual]` unless `state` is allowed.
pub fn require_state(vm: &str, state: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&state) {
        return Ok(());
    }
    let expected = allowed.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>().join(", ");
    Err(ApiError::bad_power_state(vm, &expected, &state.to_lowercase()))
}

/// clone and copy: halted, or suspended for snapshots.
fn require_halted(st: &State, vm: &str) -> ApiResult<()> {
    let allowed: &[&str] =
        if st.db.bool_field("VM", vm, "is_a_snapshot")? { &["Halted", "Suspended"] } else { &["Halted"] };
    require_state(vm, &power_state(st, vm)?, allowed)
}

/// xapi (before VSS was removed) needs guest tools reporting `feature-quiesce`
/// or `feature-snapshot` in the guest metrics.
fn check_quiesce(st: &State, vm: &str) -> ApiResult<()> {
    let metrics = st.db.str_field("VM", vm, "guest_metrics")?;
    let has_feature =
        st.db.field("VM_guest_metrics", &metrics, "other").ok().and_then(Value::as_struct).is_some_and(|other| {
            ["feature-quiesce", "feature-snapshot"].iter().any(|f| other.get(*f).and_then(Value::as_str) == Some("1"))
        });
    if has_feature { Ok(()) } else { Err(ApiError::new("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED", [vm])) }
}

/// A clean shutdown or reboot asks the guest, through its PV drivers: xapi refuses
/// with `VM_LACKS_FEATURE` when no guest tools report in (no guest metrics).
fn check_cooperative(st: &State, vm: &str) -> ApiResult<()> {
    let metrics = st.db.str_field("VM", vm, "guest_metrics")?;
    if st.db.exists("VM_guest_metrics", &metrics) { Ok(()) } else { Err(ApiError::new("VM_LACKS_FEATURE", [vm])) }
}

fn power(st: &mut State, name: &str, args: &Args) -> ApiResult<Value> {
    let expected_arity: &[usize] = match name {
        "start" | "resume" => &[4],
        "start_on" | "resume_on" => &[5],
        _ => &[2],
    };
    args.expect_one_of(expected_arity)?;
    let vm = args.reference(st, 1, "VM")?;
    let rec = st.db.get("VM", &vm)?;
    if rec.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::operation_not_allowed("This operation is not allowed on a control domain"));
    }
    if rec.get("is_a_snapshot").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::new("VM_IS_SNAPSHOT", [vm.as_str(), name]));
    }
    if rec.get("is_a_template").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::new("VM_IS_TEMPLATE", [vm.as_str(), name]));
    }
    // xapi checks the user's blocks first (Xapi_vm_lifecycle.check_operation_error).
    if let Some(reason) = rec.get("blocked_operations").and_then(Value::as_struct).and_then(|b| b.get(name)) {
        let reason = reason.as_str().unwrap_or_default();
        return Err(ApiError::new("OPERATION_BLOCKED", [vm.as_str(), reason]));
    }
    let state = power_state(st, &vm)?;
    // Allowed states in xapi's order (Xapi_vm_lifecycle.allowed_power_states).
    let (from, to): (&[&str], &str) = match name {
        "start" | "start_on" => (&["Halted"], "Running"),
        "resume" | "resume_on" => (&["Suspended"], "Running"),
        "unpause" => (&["Paused"], "Running"),
        "pause" => (&["Running"], "Paused"),
        "suspend" => (&["Running"], "Suspended"),
        "clean_shutdown" | "clean_reboot" => (&["Running"], "Halted"),
        "hard_reboot" => (&["Paused", "Running"], "Halted"),
        _ => (&["Paused", "Suspended", "Running"], "Halted"),
    };
    require_state(&vm, &state, from)?;
    if name.starts_with("clean_") {
        check_cooperative(st, &vm)?;
    }
    let host = if name.ends_with("_on") { args.reference(st, 4, "host")? } else { super::session::master_host(st) };
    if name.ends_with("reboot") {
        // The old domain goes and a new one boots (new domid, guest agent reporting again).
        set_power(st, &vm, "Halted", &host)?;
        set_power(st, &vm, "Running", &host)?;
    } else {
        set_power(st, &vm, to, &host)?;
    }
    Ok(Value::from(""))
}

/// Moves a VM to `state`, updating residency and device attachment. A VM that comes up
/// gets a new domain (domid, `VM_metrics.start_time`); one that goes down loses its
/// domain and its guest metrics, as xapi's `force_state_reset` does.
pub fn set_power(st: &mut State, vm: &str, state: &str, host: &str) -> ApiResult<()> {
    let running = state == "Running" || state == "Paused";
    let domid = match st.db.field("VM", vm, "domid")?.as_i64() {
        Some(domid) if running && domid >= 0 => domid,
        _ if running => crate::boot::new_domain(st, vm)?,
        _ => {
            crate::boot::forget_guest_metrics(st, vm)?;
            -1
        }
    };
    let old_host = st.db.str_field("VM", vm, "resident_on")?;
    if st.db.exists("host", &old_host) {
        st.db.remove_from_set("host", &old_host, "resident_VMs", vm)?;
    }
    let resident = if running { host } else { NULL_REF };
    if running && st.db.exists("host", host) {
        st.db.add_to_set("host", host, "resident_VMs", vm)?;
    }
    st.db.update("VM", vm, |r| {
        r.insert("power_state".into(), Value::from(state));
        r.insert("resident_on".into(), Value::from(resident));
        r.insert("domid".into(), Value::Int(domid));
    })?;
    for class in ["VBD", "VIF"] {
        for device in st.db.refs_field("VM", vm, &format!("{class}s"))? {
            st.db.set(class, &device, "currently_attached", Value::Bool(running))?;
        }
    }
    Ok(())
}

enum Kind {
    Snapshot,
    Clone,
    /// Full copy, to this SR or each disk's own SR.
    Copy(Option<String>),
}

/// Snapshot, clone and copy: a new VM record with new VBDs, VIFs and VDIs.
fn copy_vm(st: &mut State, vm: &str, new_name: &str, kind: Kind, ignore_vdis: &[String]) -> ApiResult<String> {
    let src = st.db.get("VM", vm)?.clone();
    if src.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::operation_not_allowed("This operation is not allowed on a control domain"));
    }
    let is_snapshot = matches!(kind, Kind::Snapshot);
    let src_template = src.get("is_a_template").and_then(Value::as_bool).unwrap_or(false);
    let (reference, uuid) = (new_ref(), new_uuid());
    let metrics = copy_object(st, "VM_metrics", src.get("metrics"))?;
    let guest_metrics = copy_object(st, "VM_guest_metrics", src.get("guest_metrics"))?;
    let rec: Record = super::with_fields(
        src.clone(),
        [
            ("uuid", Value::from(uuid)),
            ("name_label", Value::from(new_name)),
            ("power_state", Value::from("Halted")),
            ("resident_on", Value::from(NULL_REF)),
            ("domid", Value::Int(-1)),
            ("VBDs", Value::Array(Vec::new())),
            ("VIFs", Value::Array(Vec::new())),
            ("consoles", Value::Array(Vec::new())),
            ("snapshots", Value::Array(Vec::new())),
            ("children", Value::Array(Vec::new())),
            ("current_operations", empty_map()),
            ("is_a_snapshot", Value::Bool(is_snapshot)),
            // Snapshots are templates in xapi, and so are clones of templates.
            ("is_a_template", Value::Bool(is_snapshot || src_template)),
            ("snapshot_of", Value::from(if is_snapshot { vm } else { NULL_REF })),
            ("snapshot_time", if is_snapshot { now_date() } else { epoch_date() }),
            ("snapshot_info", if is_snapshot { snapshot_info(&src) } else { empty_map() }),
            ("parent", Value::from(if is_snapshot { NULL_REF } else { vm })),
            ("metrics", Value::from(metrics)),
            ("guest_metrics", Value::from(guest_metrics)),
        ],
    );
    st.db.insert("VM", reference.clone(), rec);
    if is_snapshot {
        st.db.add_to_set("VM", vm, "snapshots", &reference)?;
    }
    for vbd in src.get("VBDs").map(string_list).unwrap_or_default() {
        let vbd_rec = st.db.get("VBD", &vbd)?.clone();
        let old_vdi = vbd_rec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
        let is_disk = vbd_rec.get("type").and_then(Value::as_str) == Some("Disk");
        if ignore_vdis.contains(&old_vdi) {
            continue;
        }
        let new_vdi = if is_disk && st.db.exists("VDI", &old_vdi) {
            match &kind {
                Kind::Snapshot => vdi::snapshot(st, &old_vdi)?,
                Kind::Clone => vdi::clone(st, &old_vdi)?,
                Kind::Copy(sr) => vdi::copy(st, &old_vdi, sr.as_deref(), None)?,
            }
        } else {
            NULL_REF.to_owned()
        };
        let mut spec: BTreeMap<String, Value> = vbd_rec.clone();
        spec.insert("VM".into(), Value::from(reference.as_str()));
        spec.insert("VDI".into(), Value::from(new_vdi.as_str()));
        spec.insert("empty".into(), Value::Bool(new_vdi == NULL_REF));
        devices::create_vbd(st, &spec)?;
    }
    for vif in src.get("VIFs").map(string_list).unwrap_or_default() {
        let mut spec: BTreeMap<String, Value> = st.db.get("VIF", &vif)?.clone();
        spec.insert("VM".into(), Value::from(reference.as_str()));
        if !is_snapshot {
            spec.insert("MAC".into(), Value::from(devices::random_mac()));
        }
        devices::create_vif(st, &spec)?;
    }
    if !is_snapshot {
        st.db.add_to_set("VM", vm, "children", &reference)?;
    }
    Ok(reference)
}

/// xapi keeps the source's power state in the snapshot's `snapshot_info`.
fn snapshot_info(src: &Record) -> Value {
    let state = src.get("power_state").and_then(Value::as_str).unwrap_or("Halted");
    crate::db::str_map([("power-state-at-snapshot", state)])
}

/// A copy of a metrics object (snapshots and clones get their own).
fn copy_object(st: &mut State, class: &'static str, reference: Option<&Value>) -> ApiResult<String> {
    let reference = reference.and_then(Value::as_str).unwrap_or(NULL_REF);
    let Ok(rec) = st.db.get(class, reference) else { return Ok(NULL_REF.to_owned()) };
    let rec = super::with_fields(rec.clone(), [("uuid", Value::from(new_uuid()))]);
    let new = new_ref();
    st.db.insert(class, new.clone(), rec);
    Ok(new)
}

pub fn destroy(st: &mut State, vm: &str) -> ApiResult<()> {
    let rec = st.db.get("VM", vm)?.clone();
    if rec.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::operation_not_allowed("This operation is not allowed on a control domain"));
    }
    let state = rec.get("power_state").and_then(Value::as_str).unwrap_or("Halted");
    require_state(vm, state, &["Halted", "Suspended"])?;
    for vbd in rec.get("VBDs").map(string_list).unwrap_or_default() {
        devices::remove_vbd(st, &vbd)?;
    }
    for vif in rec.get("VIFs").map(string_list).unwrap_or_default() {
        devices::remove_vif(st, &vif)?;
    }
    for class in ["VM_metrics", "VM_guest_metrics"] {
        let field = if class == "VM_metrics" { "metrics" } else { "guest_metrics" };
        if let Some(r) = rec.get(field).and_then(Value::as_str)
            && st.db.exists(class, r)
        {
            st.db.remove(r);
        }
    }
    for field in ["snapshot_of", "parent"] {
        let other = rec.get(field).and_then(Value::as_str).unwrap_or(NULL_REF);
        if st.db.exists("VM", other) {
            st.db.remove_from_set("VM", other, if field == "parent" { "children" } else { "snapshots" }, vm)?;
        }
    }
    st.db.remove(vm);
    Ok(())
}

/// `VM.create`: a halted VM from the given fields over xapi's defaults.
fn create(st: &mut State, spec: &BTreeMap<String, Value>) -> ApiResult<String> {
    let name = spec.get("name_label").and_then(Value::as_str).unwrap_or("");
    let metrics = new_ref();
    st.db.insert("VM_metrics", metrics.clone(), records::vm_metrics());
    let mut rec = records::vm(name, false, &metrics, NULL_REF);
    const SKIP: &[&str] = &[
        "uuid",
        "power_state",
        "VBDs",
        "VIFs",
        "snapshots",
        "metrics",
        "guest_metrics",
        "resident_on",
        "is_a_snapshot",
        "snapshot_of",
        "consoles",
        "children",
        "is_control_domain",
        "domid",
    ];
    for (k, v) in spec {
        if rec.contains_key(k) && !SKIP.contains(&k.as_str()) {
            rec.insert(k.clone(), v.clone());
        }
    }
    let reference = new_ref();
    st.db.insert("VM", reference.clone(), rec);
    Ok(reference)
}

/// Fields `VM.revert` leaves as they are on the VM (xapi's `do_not_copy`, and what makes
/// the snapshot a snapshot: xapi copies the VM's record kept at snapshot time instead).
const NOT_REVERTED: &[&str] = &[
    "uuid",
    "name_label",
    "name_description",
    "power_state",
    "parent",
    "children",
    "current_operations",
    "allowed_operations",
    "metrics",
    "guest_metrics",
    "resident_on",
    "domid",
    "snapshots",
    "tags",
    "consoles",
    "VBDs",
    "VIFs",
    "suspend_VDI",
    "is_a_snapshot",
    "is_a_template",
    "snapshot_of",
    "snapshot_time",
    "snapshot_info",
];

/// `VM.revert(snapshot)`: the VM the snapshot is of gets its disks back as clones of the
/// snapshot's VDIs (xapi's way on SRs without `VDI.revert`: the disks' refs and uuids
/// change), its VIFs and fields as they were, and the snapshot as parent. Its own disks
/// that the snapshot has copies of are destroyed; the others are left unattached.
fn revert(st: &mut State, snapshot: &str) -> ApiResult<()> {
    let snap = st.db.get("VM", snapshot)?.clone();
    let vm = snap.get("snapshot_of").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
    if snap.get("is_a_snapshot").and_then(Value::as_bool) != Some(true) || !st.db.exists("VM", &vm) {
        return Err(ApiError::new("VM_REVERT_FAILED", [snapshot, vm.as_str()]));
    }
    require_state(&vm, &power_state(st, &vm)?, &["Halted", "Suspended"])?;
    let snap_vbds = snap.get("VBDs").map(string_list).unwrap_or_default();
    let copied: Vec<String> = snap_vbds
        .iter()
        .filter_map(|vbd| st.db.str_field("VBD", vbd, "VDI").ok())
        .filter_map(|vdi| st.db.str_field("VDI", &vdi, "snapshot_of").ok())
        .collect();
    let current = st.db.get("VM", &vm)?.clone();
    for vbd in current.get("VBDs").map(string_list).unwrap_or_default() {
        let vdi = st.db.str_field("VBD", &vbd, "VDI")?;
        devices::remove_vbd(st, &vbd)?;
        if copied.contains(&vdi) {
            vdi::destroy(st, &vdi)?;
        }
    }
    for vif in current.get("VIFs").map(string_list).unwrap_or_default() {
        devices::remove_vif(st, &vif)?;
    }
    for vbd in snap_vbds {
        let mut spec = st.db.get("VBD", &vbd)?.clone();
        let old_vdi = spec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
        let new_vdi = if st.db.exists("VDI", &old_vdi) { vdi::clone(st, &old_vdi)? } else { NULL_REF.to_owned() };
        spec.insert("VM".into(), Value::from(vm.as_str()));
        spec.insert("VDI".into(), Value::from(new_vdi.as_str()));
        spec.insert("empty".into(), Value::Bool(new_vdi == NULL_REF));
        devices::create_vbd(st, &spec)?;
    }
    for vif in snap.get("VIFs").map(string_list).unwrap_or_default() {
        let mut spec = st.db.get("VIF", &vif)?.clone();
        spec.insert("VM".into(), Value::from(vm.as_str()));
        devices::create_vif(st, &spec)?;
    }
    st.db.update("VM", &vm, |r| {
        for (k, v) in snap.iter().filter(|(k, _)| !NOT_REVERTED.contains(&k.as_str())) {
            r.insert(k.clone(), v.clone());
        }
        r.insert("parent".into(), Value::from(snapshot));
    })?;
    set_power(st, &vm, "Halted", NULL_REF)
}

/// `VM.clone` for the seed: a halted copy sharing the disks.
pub fn clone_of(st: &mut State, vm: &str, name: &str) -> ApiResult<String> {
    copy_vm(st, vm, name, Kind::Clone, &[])
}

/// A new guest-metrics record with `other` features (tools present).
pub fn add_guest_metrics(st: &mut State, os: &str, distro: &str, features: &[(&str, &str)]) -> String {
    let r = new_ref();
    st.db.insert("VM_guest_metrics", r.clone(), records::vm_guest_metrics(os, distro, features));
    r
}
