//! Changed block tracking as SMAPIv1 keeps it: one log per VDI with a bitmap of the
//! 64 KiB blocks written while that VDI was the live leaf, and parent/child links.
//! A snapshot takes over the live log and the VDI starts a fresh one; the changes
//! between two snapshots are the union of the logs walking child links from the
//! older to the newer. Disabling CBT unlinks the chain, so later queries fail.

use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use xenvault_xapi_wire::cbt::ChangedBlocks;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CbtLog {
    pub size: u64,
    pub parent: Option<String>,
    pub child: Option<String>,
    pub changed: BTreeSet<u64>,
}

/// All CBT logs, keyed by VDI uuid.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CbtLogs {
    logs: BTreeMap<String, CbtLog>,
}

fn changed_blocks_error(opterr: &str) -> ApiError {
    ApiError::sr_backend(460, "Failed to calculate changed blocks for given VDIs.", opterr)
}

impl CbtLogs {
    pub fn has_log(&self, vdi: &str) -> bool {
        self.logs.contains_key(vdi)
    }

    pub fn enable(&mut self, vdi: &str, size: u64) {
        self.logs.entry(vdi.to_owned()).or_insert_with(|| CbtLog { size, ..CbtLog::default() });
    }

    /// Deletes the live log and cuts the parent's link to it.
    pub fn disable(&mut self, vdi: &str) {
        if let Some(log) = self.logs.remove(vdi)
            && let Some(parent) = log.parent.and_then(|p| self.logs.get_mut(&p))
        {
            parent.child = None;
        }
    }

    /// Records a guest write on a VDI (no-op without CBT).
    pub fn record_write(&mut self, vdi: &str, blocks: impl IntoIterator<Item = u64>) {
        if let Some(log) = self.logs.get_mut(vdi) {
            log.changed.extend(blocks);
        }
    }

    pub fn resize(&mut self, vdi: &str, size: u64) {
        if let Some(log) = self.logs.get_mut(vdi) {
            log.size = size;
        }
    }

    /// The live VDI's log moves to the snapshot; the VDI gets a new empty log.
    pub fn snapshot(&mut self, vdi: &str, snapshot: &str) {
        let Some(mut log) = self.logs.remove(vdi) else { return };
        if let Some(parent) = log.parent.as_ref().and_then(|p| self.logs.get_mut(p)) {
            parent.child = Some(snapshot.to_owned());
        }
        let fresh = CbtLog {
            size: log.size,
            parent: Some(snapshot.to_owned()),
            child: log.child.take(),
            changed: BTreeSet::new(),
        };
        log.child = Some(vdi.to_owned());
        self.logs.insert(snapshot.to_owned(), log);
        self.logs.insert(vdi.to_owned(), fresh);
    }

    /// A VDI destroyed (not data_destroy): its bitmap folds into its child's.
    pub fn delete(&mut self, vdi: &str) {
        let Some(log) = self.logs.remove(vdi) else { return };
        if let Some(parent) = log.parent.as_ref().and_then(|p| self.logs.get_mut(p)) {
            parent.child = log.child.clone();
        }
        if let Some(child) = log.child.as_ref().and_then(|c| self.logs.get_mut(c)) {
            child.parent = log.parent.clone();
            child.changed.extend(log.changed);
        }
    }

    /// The bitmap (MSB first, one bit per 64 KiB block) of blocks changed from
    /// `from` to `to`, failing like SM when they are not on one chain.
    pub fn changed_between(&self, from: &str, to: &str) -> ApiResult<Vec<u8>> {
        if from == to {
            return Err(changed_blocks_error("Source and target VDI are same"));
        }
        let unrelated = || changed_blocks_error("Source and target VDI are unrelated");
        if !self.has_log(from) || !self.has_log(to) {
            return Err(unrelated());
        }
        let mut merged: BTreeSet<u64> = BTreeSet::new();
        let mut current = from;
        // Bounded walk: a corrupt cycle cannot hang the server.
        for _ in 0..=self.logs.len() {
            let Some(next) = self.logs.get(current).and_then(|l| l.child.as_deref()) else { break };
            let Some(log) = self.logs.get(next) else { break };
            merged.extend(&log.changed);
            if next == to {
                return Ok(bitmap(log.size, &merged));
            }
            current = next;
        }
        Err(unrelated())
    }
}

/// Blocks of a disk as xapi's bitmap (most significant bit first).
pub fn bitmap(size: u64, blocks: &BTreeSet<u64>) -> Vec<u8> {
    let mut map = ChangedBlocks::for_disk_size(size);
    for &b in blocks {
        map.mark(b);
    }
    map.bitmap().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_union_and_break() {
        let mut c = CbtLogs::default();
        c.enable("v", 1 << 20);
        c.snapshot("v", "s1");
        c.record_write("v", [0, 3]);
        c.snapshot("v", "s2");
        c.record_write("v", [15]);
        c.snapshot("v", "s3");
        assert_eq!(c.changed_between("s1", "s2").unwrap(), vec![0b1001_0000, 0]);
        assert_eq!(c.changed_between("s1", "s3").unwrap(), vec![0b1001_0000, 1]);
        assert_eq!(c.changed_between("s2", "v").unwrap(), vec![0, 1]);
        assert!(c.changed_between("s3", "s1").is_err());
        // Destroying a middle snapshot keeps the answer over the remaining chain.
        c.delete("s2");
        assert_eq!(c.changed_between("s1", "s3").unwrap(), vec![0b1001_0000, 1]);
        c.disable("v");
        c.enable("v", 1 << 20);
        c.snapshot("v", "s4");
        assert_eq!(c.changed_between("s3", "s4").unwrap_err().code, "SR_BACKEND_FAILURE_460");
    }
}
