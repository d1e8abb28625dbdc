//! Typed views of the XenAPI records the engine reads. Unknown fields are ignored and
//! missing ones take xapi's defaults, so a newer or older xapi still parses.

use std::collections::BTreeMap;
use xenvault_xapi_wire::Value;

pub const NULL_REF: &str = "OpaqueRef:NULL";

fn text(record: &Value, key: &str) -> String {
    record.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn flag(record: &Value, key: &str) -> bool {
    record.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn int(record: &Value, key: &str) -> i64 {
    record.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn refs(record: &Value, key: &str) -> Vec<String> {
    record
        .get(key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn string_map(record: &Value, key: &str) -> BTreeMap<String, String> {
    record
        .get(key)
        .and_then(Value::as_struct)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
        .unwrap_or_default()
}

/// `(ref, record)` pairs of a `get_all_records` answer.
pub fn all_records(answer: &Value) -> Vec<(String, &Value)> {
    answer.as_struct().map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect()).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub reference: String,
    pub uuid: String,
    pub name_label: String,
    pub is_a_template: bool,
    pub is_a_snapshot: bool,
    pub is_control_domain: bool,
    pub power_state: String,
    pub resident_on: String,
    pub affinity: String,
    pub tags: Vec<String>,
    pub other_config: BTreeMap<String, String>,
    pub vbds: Vec<String>,
    pub vifs: Vec<String>,
    pub snapshots: Vec<String>,
    pub snapshot_of: String,
    pub snapshot_time: String,
}

impl Vm {
    pub fn parse(reference: &str, record: &Value) -> Self {
        Self {
            reference: reference.to_owned(),
            uuid: text(record, "uuid"),
            name_label: text(record, "name_label"),
            is_a_template: flag(record, "is_a_template"),
            is_a_snapshot: flag(record, "is_a_snapshot"),
            is_control_domain: flag(record, "is_control_domain"),
            power_state: text(record, "power_state"),
            resident_on: text(record, "resident_on"),
            affinity: text(record, "affinity"),
            tags: refs(record, "tags"),
            other_config: string_map(record, "other_config"),
            vbds: refs(record, "VBDs"),
            vifs: refs(record, "VIFs"),
            snapshots: refs(record, "snapshots"),
            snapshot_of: text(record, "snapshot_of"),
            snapshot_time: text(record, "snapshot_time"),
        }
    }
}

/// A host as selection needs it: its reference, uuid and name.
#[derive(Debug, Clone)]
pub struct HostName {
    pub reference: String,
    pub uuid: String,
    pub name_label: String,
}

#[derive(Debug, Clone)]
pub struct Vbd {
    pub reference: String,
    pub vdi: String,
    pub userdevice: String,
    pub kind: String,
}

impl Vbd {
    pub fn parse(reference: &str, record: &Value) -> Self {
        Self {
            reference: reference.to_owned(),
            vdi: text(record, "VDI"),
            userdevice: text(record, "userdevice"),
            kind: text(record, "type"),
        }
    }

    pub fn is_disk(&self) -> bool {
        self.kind.eq_ignore_ascii_case("disk") && self.vdi != NULL_REF && !self.vdi.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Vdi {
    pub reference: String,
    pub uuid: String,
    pub name_label: String,
    pub virtual_size: u64,
    pub kind: String,
    pub sr: String,
    pub is_a_snapshot: bool,
    pub snapshot_of: String,
    pub cbt_enabled: bool,
    pub other_config: BTreeMap<String, String>,
}

impl Vdi {
    pub fn parse(reference: &str, record: &Value) -> Self {
        Self {
            reference: reference.to_owned(),
            uuid: text(record, "uuid"),
            name_label: text(record, "name_label"),
            virtual_size: u64::try_from(int(record, "virtual_size")).unwrap_or(0),
            kind: text(record, "type"),
            sr: text(record, "SR"),
            is_a_snapshot: flag(record, "is_a_snapshot"),
            snapshot_of: text(record, "snapshot_of"),
            cbt_enabled: flag(record, "cbt_enabled"),
            other_config: string_map(record, "other_config"),
        }
    }

    /// A snapshot whose data was freed by `VDI.data_destroy`: only its CBT log remains.
    pub fn is_cbt_metadata(&self) -> bool {
        self.kind == "cbt_metadata"
    }
}

/// One `VDI.get_nbd_info` entry.
#[derive(Debug, Clone)]
pub struct NbdInfo {
    pub address: String,
    pub port: u16,
    pub cert: String,
    pub exportname: String,
    pub subject: String,
}

impl NbdInfo {
    pub fn parse_list(answer: &Value) -> Vec<Self> {
        answer
            .as_array()
            .unwrap_or_default()
            .iter()
            .map(|entry| Self {
                address: text(entry, "address"),
                port: u16::try_from(int(entry, "port")).unwrap_or(10809),
                cert: text(entry, "cert"),
                exportname: text(entry, "exportname"),
                subject: text(entry, "subject"),
            })
            .filter(|e| !e.address.is_empty())
            .collect()
    }
}

/// A XenAPI value as JSON, for the restore point's source metadata.
pub use xenvault_xapi_wire::jsonrpc::to_json;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, Value)]) -> Value {
        Value::Struct(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn xml_rpc_strings_parse_as_ints_and_bools() {
        let vdi = Vdi::parse(
            "OpaqueRef:1",
            &record(&[
                ("virtual_size", Value::from("1048576")),
                ("cbt_enabled", Value::from(true)),
                ("type", Value::from("cbt_metadata")),
            ]),
        );
        assert_eq!(vdi.virtual_size, 1 << 20);
        assert!(vdi.cbt_enabled && vdi.is_cbt_metadata());
    }
}
