//! Calls every class has in xapi: `get_all`, `get_all_records`, `get_by_uuid`,
//! `get_by_name_label`, `get_record`, a getter per field, setters for writable
//! fields and add/remove for writable maps and sets.

use super::{Args, records_of};
use crate::db::string_list;
use crate::error::{ApiError, ApiResult};
use crate::state::State;
use xenvault_xapi_wire::Value;

/// Fields with a setter (xapi's read-write fields that a backup tool touches).
fn writable(class: &str, field: &str) -> bool {
    const COMMON: &[&str] = &["name_label", "name_description", "other_config", "tags"];
    let specific: &[&str] = match class {
        "VM" => &[
            "is_a_template",
            "affinity",
            "VCPUs_max",
            "VCPUs_at_startup",
            "actions_after_shutdown",
            "actions_after_reboot",
            "actions_after_crash",
            "PV_bootloader",
            "PV_kernel",
            "PV_ramdisk",
            "PV_args",
            "HVM_boot_policy",
            "HVM_boot_params",
            "platform",
            "xenstore_data",
            "blocked_operations",
            "memory_static_max",
            "memory_static_min",
            "memory_dynamic_max",
            "memory_dynamic_min",
            "ha_restart_priority",
            "suspend_SR",
            "start_delay",
            "shutdown_delay",
            "order",
            "user_version",
            "bios_strings",
            "NVRAM",
            "domain_type",
            "HVM_shadow_multiplier",
            "PCI_bus",
        ],
        "VDI" => &["sm_config", "xenstore_data", "sharable", "read_only", "on_boot", "allow_caching", "managed"],
        "VBD" => &["userdevice", "bootable", "mode", "type", "unpluggable", "qos_algorithm_params"],
        "VIF" => &["qos_algorithm_params", "locking_mode", "ipv4_allowed", "ipv6_allowed"],
        "SR" => &["sm_config", "physical_size", "shared"],
        "pool" => {
            &["default_SR", "suspend_image_SR", "crash_dump_SR", "gui_config", "health_check_config", "restrictions"]
        }
        "host" => &["logging", "address", "hostname"],
        "network" => &["MTU", "purpose", "default_locking_mode"],
        "PIF" => &["disallow_unplug", "primary_address_type", "properties"],
        "task" => &["status", "progress", "result", "error_info"],
        _ => &[],
    };
    COMMON.contains(&field) || specific.contains(&field)
}

/// What a generic call is about: the call kind and the field it names.
enum Op<'a> {
    GetAllRecords,
    GetAll,
    GetByUuid,
    GetByNameLabel,
    GetRecord,
    Get(&'a str),
    Set(&'a str),
    AddToMap(&'a str),
    RemoveFromMap(&'a str),
    AddToSet(&'a str),
    RemoveFromSet(&'a str),
}

fn parse<'a>(class: &str, name: &'a str) -> Option<Op<'a>> {
    // The datamodel's fields say which getters, setters and add/remove calls exist.
    let fields = crate::datamodel::fields(class);
    let is_map = |f: &str| matches!(fields.get(f), Some(Value::Struct(_)));
    let is_set = |f: &str| matches!(fields.get(f), Some(Value::Array(_)));
    let op = match name {
        "get_all_records" => Op::GetAllRecords,
        "get_all" => Op::GetAll,
        "get_by_uuid" => Op::GetByUuid,
        "get_by_name_label" if fields.contains_key("name_label") => Op::GetByNameLabel,
        "get_record" => Op::GetRecord,
        _ => {
            if let Some(f) = name.strip_prefix("get_").filter(|f| fields.contains_key(*f)) {
                Op::Get(f)
            } else if let Some(f) = name.strip_prefix("set_").filter(|f| fields.contains_key(*f)) {
                Op::Set(f)
            } else if let Some(f) = name.strip_prefix("add_to_").filter(|f| is_map(f)) {
                Op::AddToMap(f)
            } else if let Some(f) = name.strip_prefix("remove_from_").filter(|f| is_map(f)) {
                Op::RemoveFromMap(f)
            } else if name == "add_tags" {
                Op::AddToSet("tags")
            } else if name == "remove_tags" {
                Op::RemoveFromSet("tags")
            } else if let Some(f) = name.strip_prefix("add_").filter(|f| is_set(f)) {
                Op::AddToSet(f)
            } else if let Some(f) = name.strip_prefix("remove_").filter(|f| is_set(f)) {
                Op::RemoveFromSet(f)
            } else {
                return None;
            }
        }
    };
    match op {
        Op::Set(f) | Op::AddToMap(f) | Op::RemoveFromMap(f) | Op::AddToSet(f) | Op::RemoveFromSet(f)
            if !writable(class, f) =>
        {
            None
        }
        op => Some(op),
    }
}

pub fn handles(class: &str, name: &str) -> bool {
    parse(class, name).is_some()
}

pub fn call(st: &mut State, class: &'static str, name: &str, args: &Args) -> ApiResult<Value> {
    let op = parse(class, name).ok_or_else(|| ApiError::method_unknown(args.method))?;
    match op {
        Op::GetAllRecords => {
            args.expect(1)?;
            let refs = st.db.all_of(class);
            Ok(records_of(st, class, &refs))
        }
        Op::GetAll => {
            args.expect(1)?;
            Ok(Value::from(st.db.all_of(class)))
        }
        Op::GetByUuid => {
            args.expect(2)?;
            Ok(Value::from(st.db.by_uuid(class, args.str(1)?)?))
        }
        Op::GetByNameLabel => {
            args.expect(2)?;
            Ok(Value::from(st.db.find(class, "name_label", args.str(1)?)))
        }
        Op::GetRecord => {
            args.expect(2)?;
            Ok(Value::Struct(st.db.get(class, args.str(1)?)?.clone()))
        }
        Op::Get(f) => {
            args.expect(2)?;
            Ok(st.db.field(class, args.str(1)?, f)?.clone())
        }
        Op::Set(f) => {
            args.expect(3)?;
            let r = args.reference(st, 1, class)?;
            let value = conform(st.db.field(class, &r, f)?, args.value(2)?.clone(), f)?;
            st.db.set(class, &r, f, value)?;
            Ok(Value::from(""))
        }
        Op::AddToMap(f) => {
            args.expect(4)?;
            let r = args.reference(st, 1, class)?;
            let (key, value) = (args.str(2)?.to_owned(), args.value(3)?.clone());
            if st.db.field(class, &r, f)?.get(&key).is_some() {
                // xapi refuses to overwrite a key with add_to_*.
                return Err(ApiError::new("MAP_DUPLICATE_KEY", [class, f, r.as_str(), key.as_str()]));
            }
            st.db.update(class, &r, |rec| {
                if let Some(Value::Struct(m)) = rec.get_mut(f) {
                    m.insert(key, value);
                }
            })?;
            Ok(Value::from(""))
        }
        Op::RemoveFromMap(f) => {
            args.expect(3)?;
            let r = args.reference(st, 1, class)?;
            let key = args.str(2)?.to_owned();
            st.db.update(class, &r, |rec| {
                if let Some(Value::Struct(m)) = rec.get_mut(f) {
                    m.remove(&key);
                }
            })?;
            Ok(Value::from(""))
        }
        Op::AddToSet(f) => {
            args.expect(3)?;
            let r = args.reference(st, 1, class)?;
            st.db.add_to_set(class, &r, f, args.str(2)?)?;
            Ok(Value::from(""))
        }
        Op::RemoveFromSet(f) => {
            args.expect(3)?;
            let r = args.reference(st, 1, class)?;
            st.db.remove_from_set(class, &r, f, args.str(2)?)?;
            Ok(Value::from(""))
        }
    }
}

/// Coerces a new value to the type the field already has (XML-RPC sends int64 as
/// strings), refusing a value of another shape.
fn conform(current: &Value, new: Value, field: &str) -> ApiResult<Value> {
    let bad = || ApiError::field_type(field);
    Ok(match current {
        Value::Int(_) => Value::Int(new.as_i64().ok_or_else(bad)?),
        Value::Bool(_) => Value::Bool(new.as_bool().ok_or_else(bad)?),
        Value::Double(_) => match new {
            Value::Double(d) => Value::Double(d),
            Value::Int(i) => Value::Double(i as f64),
            Value::Str(s) => Value::Double(s.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        Value::Str(_) => Value::Str(new.as_str().ok_or_else(bad)?.to_owned()),
        Value::Array(_) => Value::from(string_list(&new)),
        Value::Struct(_) if new.as_struct().is_some() => new,
        Value::DateTime(_) if new.as_str().is_some() => new,
        _ => return Err(bad()),
    })
}
