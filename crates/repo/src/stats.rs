//! What a repository holds, per VM (source): restore points, the disk bytes they
//! describe, and what storing them took, so the deduplication is visible.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::Manifest;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStats {
    pub id: String,
    pub name: String,
    pub restore_points: usize,
    /// Disk bytes the restore points describe (each counted whole).
    pub logical_bytes: u64,
    /// Bytes the backups added to the repository (new chunks, compressed and encrypted).
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoStats {
    pub restore_points: usize,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// logical / stored: how many bytes of restorable disk each stored byte gives back.
    pub dedup_ratio: f64,
    pub sources: Vec<SourceStats>,
}

fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 { 0.0 } else { logical as f64 / stored as f64 }
}

/// Sums `points` per source. Stored bytes come from each backup's own report, so data
/// a prune removed since is still counted.
pub fn stats(points: &[Manifest]) -> RepoStats {
    let mut by_source: BTreeMap<String, SourceStats> = BTreeMap::new();
    for m in points {
        let s = by_source.entry(m.source.id.to_ascii_lowercase()).or_default();
        s.id.clone_from(&m.source.id);
        s.name.clone_from(&m.source.name);
        s.restore_points += 1;
        s.logical_bytes += m.total_size();
        s.stored_bytes += m.disks.iter().map(|d| d.stats.bytes_stored).sum::<u64>();
    }
    let sources: Vec<SourceStats> = by_source.into_values().collect();
    let logical_bytes = sources.iter().map(|s| s.logical_bytes).sum();
    let stored_bytes = sources.iter().map(|s| s.stored_bytes).sum();
    RepoStats {
        restore_points: points.len(),
        logical_bytes,
        stored_bytes,
        dedup_ratio: ratio(logical_bytes, stored_bytes),
        sources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(vm: &str, size: u64, stored: u64) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": format!("{vm}{stored}"), "time": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:00Z",
            "source": {"id": vm, "type": "vm", "name": format!("name of {vm}")},
            "disks": [{
                "name": "0", "size": size, "chunk_size": 65536, "page_slots": 0, "pages": [],
                "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:00Z",
                "stats": {"bytes_read": size, "bytes_zero": 0, "bytes_new": stored, "bytes_stored": stored,
                          "chunks_new": 0, "chunks_reused": 0, "chunks_inherited": 0},
            }],
        }))
        .unwrap()
    }

    #[test]
    fn sums_per_vm_and_overall() {
        let s = stats(&[point("a", 100, 50), point("A", 100, 0), point("b", 40, 30)]);
        assert_eq!((s.restore_points, s.logical_bytes, s.stored_bytes), (3, 240, 80));
        assert!((s.dedup_ratio - 3.0).abs() < 1e-9);
        assert_eq!(s.sources.len(), 2, "a source's uuid in any case is one source");
        assert_eq!((s.sources[0].restore_points, s.sources[0].stored_bytes), (2, 50));
    }
}
