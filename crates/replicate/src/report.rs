//! What a replication run did, per VM and per disk (the command line prints it, `--json`
//! serialises it, the job runner turns it into tasks).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ReplicationReport {
    pub job_id: String,
    pub run_id: String,
    /// Where the data came from: a pool's name, or a repository's location.
    pub source: String,
    pub target_pool: String,
    pub target_sr: String,
    pub started: String,
    pub duration_secs: f64,
    pub vms: Vec<VmReplication>,
}

impl ReplicationReport {
    pub fn failed(&self) -> usize {
        self.vms.iter().filter(|v| v.status == Status::Failed).count()
    }

    /// One line per VM, for people.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for vm in &self.vms {
            let what = match (&vm.status, &vm.error) {
                (Status::Failed, Some(e)) => format!("FAILED: {e}"),
                (Status::UpToDate, _) => "up to date".to_owned(),
                _ => format!(
                    "{} replica {} ({}): read {} B from the source, wrote {} B to the replica in {:.1} s",
                    vm.kind.map_or("", Kind::label),
                    vm.replica_name,
                    vm.replica_uuid,
                    vm.bytes_read(),
                    vm.bytes_written(),
                    vm.duration_secs
                ),
            };
            out.push_str(&format!("{} ({}): {what}\n", vm.vm_name, vm.vm_uuid));
            for d in &vm.disks {
                out.push_str(&format!("  disk {} {}: {}\n", d.position, d.method.label(), d.reason));
            }
            for w in &vm.warnings {
                out.push_str(&format!("  warning: {w}\n"));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// From a repository: the replica already holds the newest restore point.
    UpToDate,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A new replica.
    Full,
    /// The existing replica brought up to date.
    Incremental,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VmReplication {
    pub vm_uuid: String,
    pub vm_name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    pub replica_uuid: String,
    pub replica_name: String,
    /// The source snapshot (pool source) or restore point (repository source) copied.
    pub source_point: String,
    /// The replica's snapshot taken before an incremental update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_snapshot: Option<String>,
    /// The update failed and the replica was reverted to `replica_snapshot`.
    pub rolled_back: bool,
    pub disks: Vec<DiskReplication>,
    /// Replicas (full mode) and replica snapshots removed by retention.
    pub removed: Vec<String>,
    /// Our snapshots of the source VM that earlier runs left, removed.
    pub cleaned_snapshots: Vec<String>,
    pub warnings: Vec<String>,
    pub duration_secs: f64,
}

impl VmReplication {
    pub(crate) fn new(vm_uuid: &str, vm_name: &str) -> Self {
        VmReplication {
            vm_uuid: vm_uuid.to_owned(),
            vm_name: vm_name.to_owned(),
            status: Status::Ok,
            error: None,
            kind: None,
            replica_uuid: String::new(),
            replica_name: String::new(),
            source_point: String::new(),
            replica_snapshot: None,
            rolled_back: false,
            disks: Vec::new(),
            removed: Vec::new(),
            cleaned_snapshots: Vec::new(),
            warnings: Vec::new(),
            duration_secs: 0.0,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes_read).sum()
    }

    pub fn bytes_written(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes_written).sum()
    }
}

/// How the changes of a disk were found and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The whole disk copied into a new VDI.
    Full,
    /// CBT changed blocks since the previous replication snapshot, read over NBD.
    Cbt,
    /// The host's VHD of the differences to the previous snapshot, passed through.
    VhdDelta,
    /// The whole source disk compared with the replica's, differing sectors written.
    Compare,
    /// A restore point written onto the replica (differential restore).
    Repository,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Full => "full copy",
            Method::Cbt => "CBT",
            Method::VhdDelta => "VHD delta",
            Method::Compare => "full compare",
            Method::Repository => "from the repository",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReplication {
    pub position: String,
    pub source_vdi_uuid: String,
    pub replica_vdi_uuid: String,
    pub size: u64,
    pub method: Method,
    /// Why this method (and why not the better ones).
    pub reason: String,
    /// Bytes read from the source (pool disks, or the repository's restore point).
    pub bytes_read: u64,
    /// Disk bytes the target host writes (the sectors marked present; for a VHD delta
    /// passed through, the VHD's size, an upper bound).
    pub bytes_written: u64,
    /// Bytes sent to the target host (a VHD carries whole 2 MiB blocks).
    pub bytes_sent: u64,
    pub seconds: f64,
}
