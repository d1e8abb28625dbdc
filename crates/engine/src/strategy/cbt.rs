//! CBT + NBD: the changed-block bitmap as byte ranges to read over NBD.

use xenvault_types::ranges::RangeSet;

/// CBT granularity: one bit of `VDI.list_changed_blocks` per 64 KiB of disk.
pub const CBT_BLOCK: u64 = 64 * 1024;

/// The bytes of the changed blocks (indices, any order), merged and clipped to the disk
/// size (the last block may be short).
pub fn changed_ranges(changed_blocks: impl IntoIterator<Item = u64>, block: u64, disk_size: u64) -> RangeSet {
    changed_blocks
        .into_iter()
        .map(|index| index.saturating_mul(block)..index.saturating_add(1).saturating_mul(block))
        .collect::<RangeSet>()
        .aligned(1, disk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_clips() {
        let size = 5 * CBT_BLOCK + 100;
        let ranges = changed_ranges([0, 1, 3, 5, 9], CBT_BLOCK, size);
        assert_eq!(ranges.ranges(), [0..2 * CBT_BLOCK, 3 * CBT_BLOCK..4 * CBT_BLOCK, 5 * CBT_BLOCK..size]);
        assert_eq!(ranges.bytes(), 3 * CBT_BLOCK + 100);
        assert!(changed_ranges([], CBT_BLOCK, size).is_empty());
    }
}
