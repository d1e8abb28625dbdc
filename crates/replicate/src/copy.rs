//! Moving one disk from a source snapshot onto a replica's VDI: the whole disk into a new
//! VDI, or only what changed since the previous replication snapshot, found (best first)
//! by CBT, by the host's VHD delta, or by comparing the whole disk with the replica.

use futures::StreamExt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use xenvault_pool::host::{Host, changed_blocks};
use xenvault_pool::records::Vdi;
use xenvault_restore::differential::{push_differing_sectors, upload_ranges};
use xenvault_types::progress::{Key, Phase, Progress, Task};
use xenvault_types::ranges::RangeSet;
use xenvault_xapi::{DiskFormat, ImportTarget, Ref};

use crate::Error;
use crate::nbd_disk::NbdDisk;
use crate::report::{DiskReplication, Method};

/// Compared at a time in a full compare.
const COMPARE_PIECE: u64 = 2 << 20;

/// One disk to write: the source snapshot's VDI and the replica's.
pub(crate) struct DiskJob<'a> {
    pub source: &'a Host,
    pub target: &'a Host,
    pub vm_uuid: &'a str,
    pub label: String,
    pub position: &'a str,
    /// The live VDI the snapshot was taken of (the report names it).
    pub origin: &'a Vdi,
    pub snapshot: &'a Vdi,
    pub replica: &'a Vdi,
    pub nbd_connections: usize,
    pub progress: Arc<dyn Progress>,
    pub cancel: &'a CancellationToken,
}

impl DiskJob<'_> {
    fn task(&self, phase: Phase, total: u64) -> Task {
        let key = Key::new(Some(self.vm_uuid), self.position.parse().ok(), phase);
        Task::start(self.progress.clone(), key, self.label.clone(), total)
    }

    fn report(&self, method: Method, reason: String, started: Instant) -> DiskReplication {
        DiskReplication {
            position: self.position.to_owned(),
            source_vdi_uuid: self.origin.uuid.clone(),
            replica_vdi_uuid: self.replica.uuid.clone(),
            size: self.snapshot.virtual_size,
            method,
            reason,
            bytes_read: 0,
            bytes_written: 0,
            bytes_sent: 0,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The source snapshot over NBD (TLS as the host offers), or why not.
    async fn nbd(&self) -> Result<NbdDisk, String> {
        let endpoints = self.source.nbd_info(&self.snapshot.reference).await.map_err(|e| e.to_string())?;
        if endpoints.is_empty() {
            return Err("the host offers no NBD for the disk (no network with an NBD purpose)".into());
        }
        let reader = xenvault_engine::nbd_pool::connect(&endpoints, self.nbd_connections)
            .await
            .map_err(|e| format!("NBD connection failed: {e}"))?;
        Ok(NbdDisk::new(reader, self.snapshot.virtual_size))
    }

    /// Writes `ranges` of the source snapshot onto the replica's VDI; fills the byte counts.
    async fn send_ranges(
        &self,
        disk: NbdDisk,
        ranges: Vec<Range<u64>>,
        out: &mut DiskReplication,
    ) -> Result<(), Error> {
        let task = self.task(Phase::Restore, ranges.iter().map(|r| r.end - r.start).sum());
        let sent =
            upload_ranges(self.target.client(), &self.replica.reference, disk.clone(), ranges, task, self.cancel).await;
        out.bytes_read += disk.bytes_read();
        disk.close().await;
        let sent = sent?;
        (out.bytes_written, out.bytes_sent) = (sent.written, sent.sent);
        Ok(())
    }

    /// The whole source snapshot into the new (empty) replica VDI: over NBD, else as a raw
    /// HTTP export streamed into the import.
    pub async fn full(&self) -> Result<DiskReplication, Error> {
        let started = Instant::now();
        let size = self.snapshot.virtual_size;
        let mut out = match self.nbd().await {
            Ok(disk) => {
                let mut out = self.report(Method::Full, "the whole disk into a new VDI, read over NBD".into(), started);
                self.send_ranges(disk, vec![0..size], &mut out).await?;
                out
            }
            Err(why) => {
                let reason = format!("{why}: the whole disk streamed from a raw HTTP export");
                let mut out = self.report(Method::Full, reason, started);
                let body = self.source.export_raw_vdi(&self.snapshot.reference, DiskFormat::Raw, None).await?;
                let replica = Ref::new(&self.replica.reference);
                self.target.client().import_raw_vdi(ImportTarget::Vdi(&replica), DiskFormat::Raw, body, size).await?;
                (out.bytes_read, out.bytes_written, out.bytes_sent) = (size, size, size);
                out
            }
        };
        out.seconds = started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Only what changed since `base` (the previous replication snapshot's VDI of this
    /// disk, `None` when there is none) onto the replica's VDI.
    pub async fn update(&self, base: Option<&Vdi>) -> Result<DiskReplication, Error> {
        let started = Instant::now();
        let mut notes = Vec::new();
        let nbd = match self.nbd().await {
            Ok(disk) => Some(disk),
            Err(why) => {
                notes.push(why);
                None
            }
        };
        let Some(base) = base else {
            notes.push("no snapshot of the previous replication is left for this disk".into());
            return self.compare(nbd, notes, started).await;
        };
        match (self.cbt_ranges(base).await, nbd.clone()) {
            (Ok(ranges), Some(disk)) => {
                let reason = format!("CBT since the previous replication snapshot {}, read over NBD", base.uuid);
                let mut out = self.report(Method::Cbt, reason, started);
                self.send_ranges(disk, ranges, &mut out).await?;
                out.seconds = started.elapsed().as_secs_f64();
                return Ok(out);
            }
            (Ok(_), None) => notes.push("CBT knows the changes, but they cannot be read without NBD".into()),
            (Err(why), _) => notes.push(why),
        }
        if base.is_cbt_metadata() {
            notes.push("the previous snapshot kept no data (VDI.data_destroy), so there is no VHD delta".into());
            return self.compare(nbd, notes, started).await;
        }
        if let Some(disk) = nbd {
            disk.close().await;
        }
        self.vhd_delta(base, notes, started).await
    }

    /// The changed ranges CBT reports between `base` and the new snapshot, or why it cannot.
    async fn cbt_ranges(&self, base: &Vdi) -> Result<Vec<Range<u64>>, String> {
        if !self.origin.cbt_enabled {
            return Err("CBT is off on the disk".into());
        }
        let size = self.snapshot.virtual_size;
        let changed = changed_blocks(self.source.client(), &base.reference, &self.snapshot.reference)
            .await
            .map_err(|e| format!("VDI.list_changed_blocks failed ({e})"))?;
        let block = xenvault_xapi_wire::cbt::BLOCK_SIZE;
        if changed.block_count() < size.div_ceil(block) {
            return Err(format!("the CBT bitmap covers {} blocks of a {size}-byte disk", changed.block_count()));
        }
        Ok(changed.ranges().map(|r| r.start.min(size)..r.end.min(size)).filter(|r| !r.is_empty()).collect())
    }

    /// The host's VHD of what differs from `base`, passed through into the replica's VDI
    /// (the host writes the blocks it holds).
    async fn vhd_delta(&self, base: &Vdi, notes: Vec<String>, started: Instant) -> Result<DiskReplication, Error> {
        let snapshot = Ref::new(&self.snapshot.reference);
        let body =
            self.source.client().export_raw_vdi(&snapshot, DiskFormat::Vhd, Some(&Ref::new(&base.reference))).await?;
        let Some(length) = body.content_length() else {
            let mut notes = notes;
            notes.push("the host sent the VHD delta without a length".into());
            return self.compare(None, notes, started).await;
        };
        let reason = format!("{}: the host's VHD delta since snapshot {}", notes.join("; "), base.uuid);
        let mut out = self.report(Method::VhdDelta, reason, started);
        let replica = Ref::new(&self.replica.reference);
        self.target.client().import_raw_vdi(ImportTarget::Vdi(&replica), DiskFormat::Vhd, body, length).await?;
        (out.bytes_read, out.bytes_written, out.bytes_sent) = (length, length, length);
        out.seconds = started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Reads the whole source snapshot and the replica's disk, and writes the sectors
    /// where they differ.
    async fn compare(
        &self,
        nbd: Option<NbdDisk>,
        notes: Vec<String>,
        started: Instant,
    ) -> Result<DiskReplication, Error> {
        let Some(disk) = nbd else {
            return Err(Error::Refused(format!(
                "disk {} cannot be updated: {}; and a full compare reads the source over NBD",
                self.position,
                notes.join("; ")
            )));
        };
        let size = self.snapshot.virtual_size;
        let reason = format!("{}: compared the whole disk with the replica", notes.join("; "));
        let mut out = self.report(Method::Compare, reason, started);
        let task = self.task(Phase::Compare, size);
        let mut replica = self.target.export_raw_vdi(&self.replica.reference, DiskFormat::Raw, None).await?;
        let (mut ranges, mut pending) = (RangeSet::new(), bytes::BytesMut::new());
        let mut source = vec![0u8; COMPARE_PIECE as usize];
        for start in (0..size).step_by(COMPARE_PIECE as usize) {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let len = (size - start).min(COMPARE_PIECE) as usize;
            while pending.len() < len {
                match replica.next().await.transpose()? {
                    Some(data) => pending.extend_from_slice(&data),
                    None => return Err(Error::Protocol(format!("the replica's disk {} ended early", self.position))),
                }
            }
            let theirs = pending.split_to(len);
            let ours = source.get_mut(..len).unwrap_or_default();
            disk.read(start, ours).await?;
            push_differing_sectors(&mut ranges, start, len, Some(ours), Some(&theirs));
            task.advance(len as u64);
        }
        drop(task);
        self.send_ranges(disk, ranges.into_vec(), &mut out).await?;
        out.seconds = started.elapsed().as_secs_f64();
        Ok(out)
    }
}
