//! The in-memory chunk index: chunk id → (pack, offset, length), 24 bytes per chunk.
//!
//! Only a 12-byte id prefix is kept (a false match needs ~2^48 chunks to become likely);
//! readers authenticate every blob against the full id, so a prefix clash cannot return
//! wrong data. Memory: 24 bytes per unique chunk, up to 48 while a batch is merged (the
//! sorted vector is rebuilt), plus ~200 bytes per pack (~1 byte per chunk). At the default
//! 256 KiB chunks 1 TiB of unique data costs 96 MiB (192 MiB at a merge), so 1 GiB of RAM
//! holds the index of ~5 TiB of unique data (~10 TiB between merges); at 1 MiB chunks, 4x
//! that. Past that limit the index would have to move to disk, which it does not yet.

use crate::crypto::ChunkId;
use crate::pack::{PackEntry, PackName};
use std::collections::HashMap;

const KEY_LEN: usize = 12;
/// Recent insertions go to a hash map, folded into the sorted vector in batches.
const MERGE_AT: usize = 1 << 16;

type Key = [u8; KEY_LEN];

fn key(id: &ChunkId) -> Key {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&id.0[..KEY_LEN]);
    k
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    pack: u32,
    offset: u32,
    len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackName,
    pub offset: u32,
    pub len: u32,
}

#[derive(Default)]
pub struct ChunkIndex {
    packs: Vec<PackName>,
    pack_numbers: HashMap<PackName, u32>,
    sorted: Vec<(Key, Slot)>,
    recent: HashMap<Key, Slot>,
}

impl ChunkIndex {
    pub fn add_pack(&mut self, pack: &PackName, entries: impl IntoIterator<Item = PackEntry>) {
        let number = match self.pack_numbers.get(pack) {
            Some(&n) => n,
            None => {
                let n = self.packs.len() as u32;
                self.packs.push(pack.clone());
                self.pack_numbers.insert(pack.clone(), n);
                n
            }
        };
        // The latest location of an id wins: callers add condemned packs first, live ones after.
        for e in entries {
            self.recent.insert(key(&e.id), Slot { pack: number, offset: e.offset, len: e.len });
        }
        if self.recent.len() >= MERGE_AT {
            self.merge();
        }
    }

    /// Folds recent insertions into the sorted vector (call after bulk loading).
    pub fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        // Recent entries first and a stable sort: dedup then keeps the newer location.
        let mut merged: Vec<(Key, Slot)> = self.recent.drain().collect();
        merged.append(&mut self.sorted);
        merged.sort_by_key(|e| e.0);
        merged.dedup_by(|later, earlier| later.0 == earlier.0);
        merged.shrink_to_fit();
        self.sorted = merged;
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.slot(id).is_some()
    }

    fn slot(&self, id: &ChunkId) -> Option<Slot> {
        let k = key(id);
        if let Some(s) = self.recent.get(&k) {
            return Some(*s);
        }
        self.sorted.binary_search_by(|e| e.0.cmp(&k)).ok().map(|i| self.sorted[i].1)
    }

    pub fn locate(&self, id: &ChunkId) -> Option<Location> {
        let s = self.slot(id)?;
        let pack = self.packs.get(s.pack as usize)?.clone();
        Some(Location { pack, offset: s.offset, len: s.len })
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Approximate heap use, for reports.
    pub fn memory_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<(Key, Slot)>()
            + self.recent.capacity() * (std::mem::size_of::<(Key, Slot)>() + 8)
            + self.packs.len() * 96
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn lookup_before_and_after_merge() {
        let mut idx = ChunkIndex::default();
        let p = PackName::random().unwrap();
        idx.add_pack(&p, (1..=3).map(|n| PackEntry { id: id(n), offset: n as u32 * 10, len: 5, raw_len: 5 }));
        assert_eq!(idx.locate(&id(2)).unwrap().offset, 20);
        idx.merge();
        assert_eq!(idx.locate(&id(3)).unwrap(), Location { pack: p, offset: 30, len: 5 });
        assert!(!idx.contains(&id(4)));
        assert_eq!(idx.len(), 3);
        let q = PackName::random().unwrap();
        idx.add_pack(&q, [PackEntry { id: id(3), offset: 7, len: 5, raw_len: 5 }]);
        idx.merge();
        assert_eq!(idx.locate(&id(3)).unwrap().pack, q, "newer location wins");
        assert_eq!(idx.len(), 3);
    }
}
