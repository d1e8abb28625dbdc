//! What a backup job did, per VM and per disk: the `--json` document and the summary.

use serde::Serialize;
use xenvault_repo::retention::LockReport;
use xenvault_types::units;

use crate::strategy::{Level, Strategy, Transport};

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: String,
    pub run_id: String,
    pub pool: String,
    pub repository: String,
    pub level: Level,
    pub started: String,
    pub duration_secs: f64,
    pub vms: Vec<VmReport>,
    pub totals: Totals,
    /// The object lock given to the new restore points (`BackupOptions::lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockReport>,
    /// Why the new restore points, stored, could not be locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub vms_ok: usize,
    pub vms_failed: usize,
    pub bytes_read: u64,
    pub bytes_changed: u64,
    pub bytes_stored: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub vm_uuid: String,
    pub vm_name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The level actually used (INC/DIFF become FULL when nothing to build on exists).
    pub level: Level,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReport>,
    pub disks: Vec<DiskReport>,
    pub excluded_disks: Vec<ExcludedDisk>,
    /// Snapshots of earlier runs this run removed (interrupted runs, superseded bases).
    pub cleaned_snapshots: Vec<String>,
    /// Things that went wrong without failing the backup (post command, clean-up).
    pub warnings: Vec<String>,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub uuid: String,
    pub quiesce_requested: bool,
    pub quiesced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What became of the snapshot: kept as the next base (with or without its data) or removed.
    pub kept_as: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExcludedDisk {
    pub position: String,
    pub vdi_uuid: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub position: String,
    pub vdi_uuid: String,
    pub snapshot_vdi_uuid: String,
    pub name: String,
    pub size: u64,
    pub strategy: Strategy,
    pub transport: Transport,
    /// Why this strategy: the choice, or the fallback and its cause.
    pub reason: String,
    /// Bytes received from the host.
    pub bytes_read: u64,
    /// Bytes known to have changed since the base, at `changed_granularity`
    /// (the whole disk for a full read without a base).
    pub bytes_changed: u64,
    pub changed_granularity: u64,
    /// Bytes written to the repository (after dedup and compression).
    pub bytes_stored: u64,
    /// Logical bytes of the disk image per stored byte.
    pub dedup_ratio: f64,
    pub duration_secs: f64,
    pub throughput_bytes_per_sec: f64,
    pub attempts: u32,
}

impl JobReport {
    pub fn compute_totals(&mut self) {
        let mut totals = Totals::default();
        for vm in &self.vms {
            match vm.status {
                Status::Ok => totals.vms_ok += 1,
                Status::Failed => totals.vms_failed += 1,
            }
            for disk in &vm.disks {
                totals.bytes_read += disk.bytes_read;
                totals.bytes_changed += disk.bytes_changed;
                totals.bytes_stored += disk.bytes_stored;
            }
        }
        self.totals = totals;
    }

    /// Human summary, one block per VM, one line per disk.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        // Disk columns line up across the whole report; names are shown whole.
        let disks = || self.vms.iter().flat_map(|vm| &vm.disks);
        let position_width = disks().map(|d| d.position.chars().count()).max().unwrap_or(0);
        let name_width = disks().map(|d| d.name.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for vm in &self.vms {
            let _ = writeln!(
                out,
                "{} ({}): {} level {}{}{}",
                vm.vm_name,
                vm.vm_uuid,
                match vm.status {
                    Status::Ok => "ok",
                    Status::Failed => "FAILED",
                },
                vm.level,
                vm.restore_point.as_deref().map(|id| format!(", restore point {id}")).unwrap_or_default(),
                vm.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
            );
            if let Some(note) = vm.snapshot.as_ref().and_then(|s| s.note.as_ref()) {
                let _ = writeln!(out, "  snapshot: {note}");
            }
            for disk in &vm.disks {
                let _ = writeln!(
                    out,
                    "  disk {:<position_width$} {:<name_width$} {:>9} {:<9} read {:>9} changed {:>9} stored {:>9} in {:.2}s ({}/s) - {}",
                    disk.position,
                    disk.name,
                    units::bytes(disk.size),
                    disk.strategy,
                    units::bytes(disk.bytes_read),
                    units::bytes(disk.bytes_changed),
                    units::bytes(disk.bytes_stored),
                    disk.duration_secs,
                    units::bytes(disk.throughput_bytes_per_sec as u64),
                    disk.reason,
                );
            }
            for warning in &vm.warnings {
                let _ = writeln!(out, "  warning: {warning}");
            }
            for disk in &vm.excluded_disks {
                let _ = writeln!(out, "  disk {} {} excluded: {}", disk.position, disk.name, disk.reason);
            }
        }
        let _ = writeln!(
            out,
            "{} VM(s) ok, {} failed; read {}, changed {}, stored {} in {:.1}s",
            self.totals.vms_ok,
            self.totals.vms_failed,
            units::bytes(self.totals.bytes_read),
            units::bytes(self.totals.bytes_changed),
            units::bytes(self.totals.bytes_stored),
            self.duration_secs,
        );
        if let Some(lock) = &self.lock {
            let until = lock.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let _ = writeln!(
                out,
                "locked {} restore point(s) in {} mode until {until}",
                lock.restore_points.len(),
                lock.mode
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(position: &str, name: &str) -> DiskReport {
        DiskReport {
            position: position.into(),
            vdi_uuid: String::new(),
            snapshot_vdi_uuid: String::new(),
            name: name.into(),
            size: 1 << 30,
            strategy: Strategy::Cbt,
            transport: Transport::Nbd,
            reason: "changed blocks".into(),
            bytes_read: 0,
            bytes_changed: 0,
            changed_granularity: 65536,
            bytes_stored: 0,
            dedup_ratio: 1.0,
            duration_secs: 1.0,
            throughput_bytes_per_sec: 0.0,
            attempts: 1,
        }
    }

    /// Long disk names are shown whole and the columns after them still line up.
    #[test]
    fn summary_shows_whole_disk_names_aligned() {
        let long = "database volume for the accounting system";
        let vm = VmReport {
            vm_uuid: "u".into(),
            vm_name: "db01".into(),
            status: Status::Ok,
            error: None,
            level: Level::Full,
            level_reason: None,
            restore_point: None,
            snapshot: None,
            disks: vec![disk("0", "sys"), disk("12", long)],
            excluded_disks: Vec::new(),
            cleaned_snapshots: Vec::new(),
            warnings: Vec::new(),
            duration_secs: 1.0,
        };
        let report = JobReport {
            job_id: String::new(),
            run_id: String::new(),
            pool: String::new(),
            repository: String::new(),
            level: Level::Full,
            started: String::new(),
            duration_secs: 1.0,
            vms: vec![vm],
            totals: Totals::default(),
            lock: None,
            lock_error: None,
        };
        let summary = report.summary();
        let lines: Vec<&str> = summary.lines().filter(|l| l.starts_with("  disk ")).collect();
        assert!(lines[1].contains(long), "{summary}");
        let size_at: Vec<Option<usize>> = lines.iter().map(|l| l.find("1.0 GiB")).collect();
        assert!(size_at[0].is_some() && size_at[0] == size_at[1], "{summary}");
    }
}
