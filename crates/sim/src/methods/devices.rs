//! `VBD.*` and `VIF.*`: create, destroy, plug, unplug, keeping the VM, VDI and
//! network back-links in step; `network.create` and `network.destroy` (internal
//! networks, without PIFs).

use super::Args;
use crate::db::{NULL_REF, new_ref};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::state::State;
use xenvault_xapi_wire::Value;

pub fn call(st: &mut State, class: &str, name: &str, args: &Args) -> Option<ApiResult<Value>> {
    Some(match (class, name) {
        ("VBD", "create") => (|| {
            args.expect(2)?;
            create_vbd(st, args.map(1)?).map(Value::from)
        })(),
        ("VIF", "create") => (|| {
            args.expect(2)?;
            create_vif(st, args.map(1)?).map(Value::from)
        })(),
        ("network", "create") => (|| {
            args.expect(2)?;
            Ok(Value::from(create_network(st, args.map(1)?)))
        })(),
        ("network", "destroy") => (|| {
            args.expect(2)?;
            let network = args.reference(st, 1, "network")?;
            // Xapi_network.destroy: a network still used by a VIF or a PIF stays.
            for (field, code) in [("VIFs", "NETWORK_CONTAINS_VIF"), ("PIFs", "NETWORK_CONTAINS_PIF")] {
                let users = st.db.refs_field("network", &network, field)?;
                if !users.is_empty() {
                    return Err(ApiError::new(code, users));
                }
            }
            st.db.remove(&network);
            Ok(Value::from(""))
        })(),
        (_, "destroy") => (|| {
            args.expect(2)?;
            let device = args.reference(st, 1, class)?;
            if st.db.bool_field(class, &device, "currently_attached")? {
                let uuid = st.db.str_field(class, &device, "uuid")?;
                let vm = st.db.str_field(class, &device, "VM")?;
                let vm_uuid = st.db.str_field("VM", &vm, "uuid").unwrap_or_default();
                return Err(ApiError::operation_not_allowed(format!("{class} '{uuid}' still attached to '{vm_uuid}'")));
            }
            if class == "VBD" {
                remove_vbd(st, &device)?
            } else {
                remove_vif(st, &device)?
            }
            Ok(Value::from(""))
        })(),
        (_, "plug" | "unplug" | "unplug_force") => (|| {
            args.expect(2)?;
            let device = args.reference(st, 1, class)?;
            let vm = st.db.str_field(class, &device, "VM")?;
            let power = st.db.str_field("VM", &vm, "power_state")?;
            if power != "Running" {
                return Err(ApiError::bad_power_state(&vm, "running", &power.to_lowercase()));
            }
            let plug = name == "plug";
            if st.db.bool_field(class, &device, "currently_attached")? == plug {
                let code = if plug { "DEVICE_ALREADY_ATTACHED" } else { "DEVICE_ALREADY_DETACHED" };
                return Err(ApiError::new(code, [device.as_str()]));
            }
            st.db.set(class, &device, "currently_attached", Value::Bool(plug))?;
            Ok(Value::from(""))
        })(),
        _ => return None,
    })
}

fn text<'a>(rec: &'a std::collections::BTreeMap<String, Value>, key: &str, default: &'a str) -> &'a str {
    rec.get(key).and_then(Value::as_str).unwrap_or(default)
}

pub fn create_vbd(st: &mut State, rec: &std::collections::BTreeMap<String, Value>) -> ApiResult<String> {
    let vm = text(rec, "VM", NULL_REF);
    st.db.get("VM", vm)?;
    let vdi = text(rec, "VDI", NULL_REF);
    let empty = rec.get("empty").and_then(Value::as_bool).unwrap_or(false);
    if !empty {
        st.db.get("VDI", vdi)?;
    }
    let userdevice = match text(rec, "userdevice", "autodetect") {
        "autodetect" | "" => next_free_device(st, vm)?,
        d => d.to_owned(),
    };
    let bootable = rec.get("bootable").and_then(Value::as_bool).unwrap_or(false);
    let mut fields = records::vbd(vm, if empty { NULL_REF } else { vdi }, &userdevice, bootable, false);
    for key in ["mode", "type", "empty", "other_config", "unpluggable", "qos_algorithm_type", "qos_algorithm_params"] {
        if let Some(v) = rec.get(key) {
            fields.insert(key.to_owned(), v.clone());
        }
    }
    let reference = new_ref();
    st.db.insert("VBD", reference.clone(), fields);
    st.db.add_to_set("VM", vm, "VBDs", &reference)?;
    if !empty {
        st.db.add_to_set("VDI", vdi, "VBDs", &reference)?;
    }
    Ok(reference)
}

fn next_free_device(st: &State, vm: &str) -> ApiResult<String> {
    let used: Vec<String> = st
        .db
        .refs_field("VM", vm, "VBDs")?
        .iter()
        .filter_map(|v| st.db.str_field("VBD", v, "userdevice").ok())
        .collect();
    Ok((0..16).map(|n| n.to_string()).find(|d| !used.contains(d)).unwrap_or_else(|| "16".into()))
}

/// A network without PIFs (xapi names its bridge `xapi<N>`), with the given fields.
fn create_network(st: &mut State, spec: &std::collections::BTreeMap<String, Value>) -> String {
    let bridge = format!("xapi{}", st.db.all_of("network").len());
    let mut fields = records::network(text(spec, "name_label", ""), &bridge, &[]);
    for key in ["name_description", "MTU", "other_config", "tags"] {
        if let Some(v) = spec.get(key) {
            fields.insert(key.to_owned(), v.clone());
        }
    }
    let reference = new_ref();
    st.db.insert("network", reference.clone(), fields);
    reference
}

pub fn create_vif(st: &mut State, rec: &std::collections::BTreeMap<String, Value>) -> ApiResult<String> {
    let vm = text(rec, "VM", NULL_REF);
    st.db.get("VM", vm)?;
    let network = text(rec, "network", NULL_REF);
    st.db.get("network", network)?;
    let mac = match text(rec, "MAC", "") {
        "" => random_mac(),
        m => m.to_owned(),
    };
    let mut fields = records::vif(vm, network, text(rec, "device", "0"), &mac, false);
    for key in ["MTU", "other_config", "qos_algorithm_type", "qos_algorithm_params", "locking_mode"] {
        if let Some(v) = rec.get(key) {
            fields.insert(key.to_owned(), v.clone());
        }
    }
    let reference = new_ref();
    st.db.insert("VIF", reference.clone(), fields);
    st.db.add_to_set("VM", vm, "VIFs", &reference)?;
    st.db.add_to_set("network", network, "VIFs", &reference)?;
    Ok(reference)
}

/// A locally administered unicast MAC, as xapi generates for new VIFs.
pub fn random_mac() -> String {
    let b: [u8; 5] = rand::random();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", 0x02, b[0], b[1], b[2], b[3], b[4])
}

pub fn remove_vbd(st: &mut State, vbd: &str) -> ApiResult<()> {
    remove_device(st, "VBD", vbd, ("VDI", "VDI"))
}

pub fn remove_vif(st: &mut State, vif: &str) -> ApiResult<()> {
    remove_device(st, "VIF", vif, ("network", "network"))
}

/// Destroys a VBD or VIF and its entries in the VM's and the other end's sets
/// (`other` is that end's field on the device and its class).
fn remove_device(st: &mut State, class: &str, device: &str, other: (&str, &str)) -> ApiResult<()> {
    let set = format!("{class}s");
    for (field, owner_class) in [("VM", "VM"), other] {
        let owner = st.db.str_field(class, device, field)?;
        if st.db.exists(owner_class, &owner) {
            st.db.remove_from_set(owner_class, &owner, &set, device)?;
        }
    }
    st.db.remove(device);
    Ok(())
}
