//! The VM metadata stored with each restore point (written by the engine, read by restore).
//!
//! Typed fields say what the VM, its disks and VIFs were and how the backup ran: what
//! restore, the catalog and the front ends read. The XenAPI records themselves are kept
//! too ([`XapiRecords`]): `VM.create` and an XVA re-export need every field of them,
//! including ones xenvault does not know (HVM boot, PV args, NVRAM, fields of newer xapi
//! releases), and a typed copy of those would drop whatever it does not name.
//!
//! Layouts: version 2 is this type. Version 1 (no `version` key; the records under
//! `vm` with `format: "xenvault-vm/1"`, the run under `backup`) is read and converted.
//! Fields may be added without a new version; a reader refuses versions it does not know.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The layout [`VmMetadata`] writes.
pub const VERSION: u32 = 2;
/// The `format` marker of version 1's record section.
const V1_FORMAT: &str = "xenvault-vm/1";
/// The MTU xapi gives a VIF created without one.
const DEFAULT_MTU: u64 = 1500;

/// One XenAPI object record as xapi returned it (field name → value).
pub type Record = Map<String, Value>;

/// Everything stored about a VM restore point besides its disk data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmMetadata {
    pub version: u32,
    pub vm: VmInfo,
    /// The disks backed up, in device order.
    pub disks: Vec<DiskInfo>,
    pub vifs: Vec<VifInfo>,
    pub backup: BackupRun,
    /// Set when the restore point was made from an XVA export (it can be written as one again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xva: Option<XvaArchive>,
    pub records: XapiRecords,
}

/// The VM as it was when backed up (its live record, not the snapshot's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub is_a_template: bool,
    pub memory_static_min: u64,
    pub memory_static_max: u64,
    pub memory_dynamic_min: u64,
    pub memory_dynamic_max: u64,
    pub vcpus_max: u64,
    pub vcpus_at_startup: u64,
    pub platform: BTreeMap<String, String>,
    pub other_config: BTreeMap<String, String>,
    pub tags: Vec<String>,
}

/// One disk of the restore point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The VBD userdevice ("0", "1", ...): the disk's position in the restore point.
    pub position: String,
    /// The VM's VDI that was backed up.
    pub vdi_uuid: String,
    /// The snapshot VDI that was read (the CBT base of a later differential restore).
    pub snapshot_vdi_uuid: String,
    pub name_label: String,
    pub name_description: String,
    /// Virtual size in bytes.
    pub size: u64,
    pub sr_uuid: String,
    pub sr_name: String,
    pub bootable: bool,
    /// How the disk was read, and why that way.
    pub strategy: String,
    pub reason: String,
}

/// One network interface of the VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VifInfo {
    pub device: String,
    pub mac: String,
    pub mtu: u64,
    pub network_uuid: String,
    pub network_name: String,
}

/// The run that made the restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRun {
    pub level: Level,
    /// The job the run belongs to (version 1: the run's own id).
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    /// The pool's registered name.
    #[serde(default)]
    pub pool: Option<String>,
    /// The host the VM ran on.
    #[serde(default)]
    pub host: Option<String>,
}

/// What an XVA export held besides disk data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XvaArchive {
    pub ova_xml: String,
    /// `Ref:N` of each disk in the archive → the disk's position in the restore point.
    pub disks: BTreeMap<String, String>,
}

/// The XenAPI records of the VM, its snapshot and their devices, keyed by reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct XapiRecords {
    pub vm_ref: String,
    pub vm: Record,
    pub snapshot_ref: String,
    pub snapshot: Record,
    /// The snapshot's VBDs, VDIs and their SRs.
    #[serde(rename = "VBD")]
    pub vbds: BTreeMap<String, Record>,
    #[serde(rename = "VDI")]
    pub vdis: BTreeMap<String, Record>,
    #[serde(rename = "SR")]
    pub srs: BTreeMap<String, Record>,
    /// The VM's VIFs and their networks.
    #[serde(rename = "VIF")]
    pub vifs: BTreeMap<String, Record>,
    #[serde(rename = "network")]
    pub networks: BTreeMap<String, Record>,
}

/// How the engine read one disk, the part of [`DiskInfo`] the records do not say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskBackup {
    pub position: String,
    pub vdi_uuid: String,
    pub snapshot_vdi_uuid: String,
    pub strategy: String,
    pub reason: String,
}

/// The backup level of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A standalone full read that neither uses nor moves the incremental chain.
    Copy,
    /// A full read that starts a new chain.
    Full,
    /// Changes since the last restore point (the default: forever incremental).
    Inc,
    /// Changes since the last FULL.
    Diff,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Copy => "copy",
            Level::Full => "full",
            Level::Inc => "inc",
            Level::Diff => "diff",
        })
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "copy" => Ok(Level::Copy),
            "full" => Ok(Level::Full),
            "inc" | "incremental" => Ok(Level::Inc),
            "diff" | "differential" => Ok(Level::Diff),
            other => Err(format!("unknown level {other:?} (copy, full, inc, diff)")),
        }
    }
}

/// Why stored metadata could not be read as a VM's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Written by a newer xenvault, in a layout this one does not know.
    NewerVersion(u32),
    /// It says it is VM metadata but does not parse as such.
    Malformed(String),
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::NewerVersion(v) => {
                write!(f, "VM metadata version {v} was written by a newer xenvault (this one reads up to {VERSION})")
            }
            MetadataError::Malformed(why) => write!(f, "malformed VM metadata: {why}"),
        }
    }
}

impl std::error::Error for MetadataError {}

impl VmMetadata {
    /// The metadata of a backup: the typed fields derived from `records` and `disks`.
    pub fn from_records(
        records: XapiRecords,
        disks: Vec<DiskBackup>,
        backup: BackupRun,
        xva: Option<XvaArchive>,
    ) -> Self {
        let vm = VmInfo::of(&records.vm);
        let disks = disks.into_iter().map(|d| DiskInfo::of(d, &records)).collect();
        let mut vifs: Vec<VifInfo> = records.vifs.values().map(|vif| VifInfo::of(vif, &records.networks)).collect();
        vifs.sort_by(|a, b| (a.device.len(), &a.device).cmp(&(b.device.len(), &b.device)));
        VmMetadata { version: VERSION, vm, disks, vifs, backup, xva, records }
    }

    /// Reads a restore point's metadata, of either layout. `Ok(None)`: it is not a VM's
    /// (e.g. a `backup-image` restore point).
    pub fn from_value(value: &Value) -> Result<Option<Self>, MetadataError> {
        let malformed = |e: serde_json::Error| MetadataError::Malformed(e.to_string());
        match value.get("version") {
            Some(v) => match v.as_u64() {
                Some(n) if n > u64::from(VERSION) => {
                    Err(MetadataError::NewerVersion(u32::try_from(n).unwrap_or(u32::MAX)))
                }
                Some(_) => Self::deserialize(value).map(Some).map_err(malformed),
                None => Err(MetadataError::Malformed(format!("version {v} is not a number"))),
            },
            None if value.pointer("/vm/format").is_some() => {
                V1::deserialize(value).map_err(malformed)?.convert().map(Some)
            }
            None => Ok(None),
        }
    }

    /// The stored form, for the restore point's manifest.
    pub fn to_value(&self) -> Value {
        // Plain structs and string-keyed maps: serialising cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The disk backed up from VDI `vdi_uuid`.
    pub fn disk(&self, vdi_uuid: &str) -> Option<&DiskInfo> {
        self.disks.iter().find(|d| d.vdi_uuid == vdi_uuid)
    }
}

impl BackupRun {
    /// Only the run of a restore point's metadata (either layout): what listings filter
    /// on, without reading the records. None when it is not a VM's.
    pub fn of(metadata: &Value) -> Option<Self> {
        metadata.get("backup").and_then(|b| Self::deserialize(b).ok())
    }
}

impl VmInfo {
    fn of(vm: &Record) -> Self {
        VmInfo {
            uuid: text(vm, "uuid"),
            name_label: text(vm, "name_label"),
            name_description: text(vm, "name_description"),
            is_a_template: vm.get("is_a_template").and_then(Value::as_bool).unwrap_or(false),
            memory_static_min: int(vm, "memory_static_min"),
            memory_static_max: int(vm, "memory_static_max"),
            memory_dynamic_min: int(vm, "memory_dynamic_min"),
            memory_dynamic_max: int(vm, "memory_dynamic_max"),
            vcpus_max: int(vm, "VCPUs_max"),
            vcpus_at_startup: int(vm, "VCPUs_at_startup"),
            platform: string_map(vm, "platform"),
            other_config: string_map(vm, "other_config"),
            tags: vm
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        }
    }
}

impl DiskInfo {
    fn of(backup: DiskBackup, records: &XapiRecords) -> Self {
        let vdi = records
            .vdis
            .iter()
            .find(|(_, v)| !backup.snapshot_vdi_uuid.is_empty() && text(v, "uuid") == backup.snapshot_vdi_uuid);
        let vbd = vdi.and_then(|(vdi_ref, _)| {
            records.vbds.values().find(|b| b.get("VDI").and_then(Value::as_str) == Some(vdi_ref))
        });
        let vdi = vdi.map(|(_, v)| v);
        let sr = vdi.and_then(|v| v.get("SR")).and_then(Value::as_str).and_then(|r| records.srs.get(r));
        let field = |record: Option<&Record>, key: &str| record.map(|r| text(r, key)).unwrap_or_default();
        DiskInfo {
            name_label: field(vdi, "name_label"),
            name_description: field(vdi, "name_description"),
            size: vdi.map(|v| int(v, "virtual_size")).unwrap_or_default(),
            sr_uuid: field(sr, "uuid"),
            sr_name: field(sr, "name_label"),
            bootable: vbd.and_then(|b| b.get("bootable")).and_then(Value::as_bool).unwrap_or(false),
            position: backup.position,
            vdi_uuid: backup.vdi_uuid,
            snapshot_vdi_uuid: backup.snapshot_vdi_uuid,
            strategy: backup.strategy,
            reason: backup.reason,
        }
    }
}

impl VifInfo {
    fn of(vif: &Record, networks: &BTreeMap<String, Record>) -> Self {
        let network = vif.get("network").and_then(Value::as_str).and_then(|r| networks.get(r));
        VifInfo {
            device: text(vif, "device"),
            mac: text(vif, "MAC"),
            mtu: Some(int(vif, "MTU")).filter(|&m| m > 0).unwrap_or(DEFAULT_MTU),
            network_uuid: network.map(|n| text(n, "uuid")).unwrap_or_default(),
            network_name: network.map(|n| text(n, "name_label")).unwrap_or_default(),
        }
    }
}

/// Version 1: the records under `vm`, the run and its disks under `backup`.
#[derive(Deserialize)]
struct V1 {
    vm: V1Records,
    backup: V1Backup,
    #[serde(default)]
    xva: Option<XvaArchive>,
}

#[derive(Deserialize)]
struct V1Records {
    format: String,
    #[serde(flatten)]
    records: XapiRecords,
}

#[derive(Deserialize)]
struct V1Backup {
    #[serde(flatten)]
    run: BackupRun,
    #[serde(default)]
    disks: Vec<DiskBackup>,
}

impl V1 {
    fn convert(self) -> Result<VmMetadata, MetadataError> {
        if self.vm.format != V1_FORMAT {
            return Err(MetadataError::Malformed(format!("unknown record format {:?}", self.vm.format)));
        }
        Ok(VmMetadata::from_records(self.vm.records, self.backup.disks, self.backup.run, self.xva))
    }
}

fn text(record: &Record, key: &str) -> String {
    record.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// An integer field: a JSON number, or the decimal string XML-RPC carries int64 as.
fn int(record: &Record, key: &str) -> u64 {
    match record.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or_default(),
        Some(Value::String(s)) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

fn string_map(record: &Record, key: &str) -> BTreeMap<String, String> {
    let entries = record.get(key).and_then(Value::as_object).into_iter().flatten();
    entries.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata of an XVA restore point written by xenvault f6c2395 (layout 1), as
    /// in the repository under crates/restore/tests/data/format-v1.
    const V1_XVA: &str = include_str!("../tests/data/metadata-v1-xva.json");

    fn v1() -> Value {
        serde_json::from_str(V1_XVA).unwrap()
    }

    #[test]
    fn layout_1_is_read_with_nothing_lost() {
        let stored = v1();
        let m = VmMetadata::from_value(&stored).unwrap().expect("VM metadata");
        assert_eq!(m.version, VERSION);
        assert_eq!(m.vm.name_label, "debian-web");
        assert_eq!((m.vm.memory_static_max, m.vm.vcpus_max), (2 << 30, 2));
        assert_eq!(m.vm.platform.get("acpi").map(String::as_str), Some("1"));
        assert_eq!(m.vm.tags, ["demo"]);
        assert!(!m.vm.is_a_template);
        let positions: Vec<&str> = m.disks.iter().map(|d| d.position.as_str()).collect();
        assert_eq!(positions, ["0", "1"]);
        let root = &m.disks[0];
        assert_eq!(root.vdi_uuid, "9863cddb-0a85-4678-a6e8-e5fbb3d7da1b");
        assert_eq!(root.snapshot_vdi_uuid, "60e45c83-7b69-48cb-b127-d9921036b94b");
        assert_eq!((root.name_label.as_str(), root.size, root.bootable), ("debian-web root", 8 << 20, true));
        assert_eq!((root.sr_name.as_str(), root.strategy.as_str()), ("Shared NFS storage", "full-read"));
        assert!(!root.sr_uuid.is_empty());
        assert!(!m.disks[1].bootable);
        assert_eq!(m.vifs.len(), 1);
        let vif = &m.vifs[0];
        assert_eq!((vif.device.as_str(), vif.mac.as_str(), vif.mtu), ("0", "52:54:00:12:34:01", 1500));
        assert_eq!(vif.network_name, "Pool-wide network associated with eth0");
        assert_eq!(m.backup.level, Level::Copy);
        assert_eq!(m.backup.job_id.as_deref(), Some("76a4586f-4ee7-49bd-a17e-523b052b34f5"));
        assert_eq!((m.backup.pool.as_deref(), m.backup.host.as_deref()), (Some("sim"), Some("xenvault-sim-1")));
        let xva = m.xva.as_ref().expect("an XVA point");
        assert!(xva.ova_xml.starts_with("<value>"));
        assert_eq!(xva.disks.values().collect::<Vec<_>>().len(), 2);
        // The records stay whole: every stored field of every class.
        let records = stored.get("vm").unwrap();
        assert_eq!(serde_json::to_value(&m.records.vm).unwrap(), records["vm"]);
        assert_eq!(serde_json::to_value(&m.records.snapshot).unwrap(), records["snapshot"]);
        for (class, ours) in [
            ("VBD", &m.records.vbds),
            ("VDI", &m.records.vdis),
            ("SR", &m.records.srs),
            ("VIF", &m.records.vifs),
            ("network", &m.records.networks),
        ] {
            assert_eq!(serde_json::to_value(ours).unwrap(), records[class], "{class}");
        }
        assert_eq!(m.records.vm_ref, records["vm_ref"].as_str().unwrap());
    }

    #[test]
    fn layout_2_round_trips() {
        let m = VmMetadata::from_value(&v1()).unwrap().unwrap();
        let stored = m.to_value();
        assert_eq!(stored["version"], VERSION);
        assert_eq!(VmMetadata::from_value(&stored).unwrap(), Some(m));
        assert_eq!(BackupRun::of(&stored).unwrap().host.as_deref(), Some("xenvault-sim-1"));
        assert_eq!(BackupRun::of(&v1()).unwrap().level, Level::Copy);
    }

    #[test]
    fn other_metadata_is_not_a_vm_and_bad_metadata_is_refused() {
        for other in [Value::Null, serde_json::json!({"files": ["/tmp/disk.img"]})] {
            assert_eq!(VmMetadata::from_value(&other), Ok(None));
            assert!(BackupRun::of(&other).is_none());
        }
        let mut newer = VmMetadata::from_value(&v1()).unwrap().unwrap().to_value();
        newer["version"] = Value::from(VERSION + 1);
        assert_eq!(VmMetadata::from_value(&newer), Err(MetadataError::NewerVersion(VERSION + 1)));
        let mut broken = v1();
        broken["backup"]["level"] = Value::from("sideways");
        let err = VmMetadata::from_value(&broken).unwrap_err();
        assert!(matches!(err, MetadataError::Malformed(ref why) if why.contains("sideways")), "{err}");
        let mut unknown = v1();
        unknown["vm"]["format"] = Value::from("xenvault-vm/9");
        assert!(matches!(VmMetadata::from_value(&unknown), Err(MetadataError::Malformed(_))));
    }

    #[test]
    fn integers_read_from_json_numbers_and_xmlrpc_strings() {
        let record: Record = serde_json::from_value(serde_json::json!({"a": 5, "b": "17", "c": "x"})).unwrap();
        assert_eq!((int(&record, "a"), int(&record, "b"), int(&record, "c"), int(&record, "d")), (5, 17, 0, 0));
    }
}
