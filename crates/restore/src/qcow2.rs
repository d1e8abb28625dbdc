//! A streaming qcow2 (version 3) writer: everything is laid out up front from the list of
//! present clusters, then written in one pass: header, refcount table, refcount blocks,
//! L1 table, L2 tables, data clusters. Absent clusters stay unallocated (read as zeros).

use crate::{Error, Result};
use std::io::Write;

pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 16-bit refcounts (refcount_order 4), the qemu default.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const ENTRIES_PER_TABLE: u64 = CLUSTER / 8;
/// L1/L2 flag: the cluster's refcount is exactly one (may be written in place).
const COPIED: u64 = 1 << 63;
const HEADER_LENGTH: u32 = 104;

/// Writes a qcow2 image of a disk of `size` bytes whose present clusters are known.
pub struct Qcow2Writer<W: Write> {
    out: W,
    present: Vec<u64>,
    next: usize,
}

struct Layout {
    refcount_table: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    l1_table: u64,
    l1_entries: u64,
    l1_clusters: u64,
    /// L1 indices that have an L2 table, in order.
    l2_tables: Vec<u64>,
    data_start: u64,
    total_clusters: u64,
}

impl Layout {
    fn new(size: u64, present: &[u64]) -> Result<Layout> {
        let l1_entries = size.div_ceil(CLUSTER * ENTRIES_PER_TABLE);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
        let mut l2_tables: Vec<u64> = present.iter().map(|c| c / ENTRIES_PER_TABLE).collect();
        l2_tables.dedup();
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + present.len() as u64;
        // The refcount structures count themselves too: grow them until they fit.
        let (mut blocks, mut table) = (1u64, 1u64);
        loop {
            let total = fixed + blocks + table;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = need_blocks.div_ceil(ENTRIES_PER_TABLE);
            if need_blocks <= blocks && need_table <= table {
                break;
            }
            blocks = blocks.max(need_blocks);
            table = table.max(need_table);
        }
        let refcount_table = CLUSTER;
        let l1_table = refcount_table + (table + blocks) * CLUSTER;
        let data_start = l1_table + (l1_clusters + l2_tables.len() as u64) * CLUSTER;
        let total_clusters = data_start / CLUSTER + present.len() as u64;
        if u32::try_from(l1_entries).is_err() || u32::try_from(table).is_err() {
            return Err(Error::Unsupported("disk too large for a qcow2 image".into()));
        }
        Ok(Layout {
            refcount_table,
            refcount_table_clusters: table,
            refcount_blocks: blocks,
            l1_table,
            l1_entries,
            l1_clusters,
            l2_tables,
            data_start,
            total_clusters,
        })
    }

    fn header(&self, size: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(CLUSTER as usize);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        h.extend_from_slice(&size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(self.l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&self.l1_table.to_be_bytes());
        h.extend_from_slice(&self.refcount_table.to_be_bytes());
        h.extend_from_slice(&(self.refcount_table_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        h.extend_from_slice(&[0u8; 8]); // end of header extensions
        h.resize(CLUSTER as usize, 0);
        h
    }
}

fn table(entries: impl Iterator<Item = u64>, clusters: u64) -> Vec<u8> {
    let mut t: Vec<u8> = entries.flat_map(u64::to_be_bytes).collect();
    t.resize((clusters * CLUSTER) as usize, 0);
    t
}

impl<W: Write> Qcow2Writer<W> {
    /// Writes all metadata; `present` lists the disk's cluster indices that hold data,
    /// strictly increasing.
    pub fn new(mut out: W, size: u64, present: &[u64]) -> Result<Self> {
        let clusters = size.div_ceil(CLUSTER);
        if present.windows(2).any(|p| p[0] >= p[1]) || present.last().is_some_and(|&c| c >= clusters) {
            return Err(Error::Unsupported("qcow2: present clusters must be increasing and inside the disk".into()));
        }
        let layout = Layout::new(size, present)?;
        out.write_all(&layout.header(size))?;
        let blocks_start = layout.refcount_table + layout.refcount_table_clusters * CLUSTER;
        let rt = (0..layout.refcount_blocks).map(|b| blocks_start + b * CLUSTER);
        out.write_all(&table(rt, layout.refcount_table_clusters))?;
        let mut refcounts: Vec<u8> = (0..layout.total_clusters).flat_map(|_| 1u16.to_be_bytes()).collect();
        refcounts.resize((layout.refcount_blocks * CLUSTER) as usize, 0);
        out.write_all(&refcounts)?;
        let l1 = (0..layout.l1_entries).map(|i| match layout.l2_tables.binary_search(&i) {
            Ok(n) => (layout.l1_table + (layout.l1_clusters + n as u64) * CLUSTER) | COPIED,
            Err(_) => 0,
        });
        out.write_all(&table(l1, layout.l1_clusters))?;
        let mut data_index = 0u64;
        let mut rest = present;
        for &l1_index in &layout.l2_tables {
            let mut l2 = vec![0u64; ENTRIES_PER_TABLE as usize];
            while let Some((&c, tail)) = rest.split_first() {
                if c / ENTRIES_PER_TABLE != l1_index {
                    break;
                }
                if let Some(e) = l2.get_mut((c % ENTRIES_PER_TABLE) as usize) {
                    *e = (layout.data_start + data_index * CLUSTER) | COPIED;
                }
                data_index += 1;
                rest = tail;
            }
            out.write_all(&table(l2.into_iter(), 1))?;
        }
        Ok(Qcow2Writer { out, present: present.to_vec(), next: 0 })
    }

    /// Writes the next present cluster: 64 KiB, or less for the disk's last cluster.
    pub fn write_cluster(&mut self, index: u64, data: &[u8]) -> Result<()> {
        if self.present.get(self.next) != Some(&index) || data.len() as u64 > CLUSTER {
            return Err(Error::Unsupported(format!("qcow2: cluster {index} written out of order or oversized")));
        }
        self.out.write_all(data)?;
        if data.len() < CLUSTER as usize {
            self.out.write_all(&vec![0u8; CLUSTER as usize - data.len()])?;
        }
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        if self.next != self.present.len() {
            return Err(Error::Unsupported("qcow2: finished before every present cluster was written".into()));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
