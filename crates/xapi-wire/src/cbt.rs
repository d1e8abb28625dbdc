//! The changed-block bitmap of `VDI.list_changed_blocks`: base64 text, one bit per 64 KiB
//! block, the most significant bit of each byte first (xapi's own CBT test helpers read it
//! with bitstring's `BitArray`, which is MSB-first).

use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::WireError;

/// Bytes covered by one bit.
pub const BLOCK_SIZE: u64 = 65536;

/// Base64 text of a bitmap, as xapi returns it.
pub fn encode_bitmap(bits: &[u8]) -> String {
    STANDARD.encode(bits)
}

/// A decoded changed-block bitmap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangedBlocks {
    bitmap: Vec<u8>,
}

impl ChangedBlocks {
    /// An all-clear bitmap covering `disk_size` bytes (the last block may be partial).
    pub fn for_disk_size(disk_size: u64) -> Self {
        let blocks = disk_size.div_ceil(BLOCK_SIZE);
        let bytes = usize::try_from(blocks.div_ceil(8)).unwrap_or(usize::MAX);
        ChangedBlocks { bitmap: vec![0; bytes] }
    }

    pub fn from_bitmap(bitmap: Vec<u8>) -> Self {
        ChangedBlocks { bitmap }
    }

    /// Reads the base64 answer of `VDI.list_changed_blocks`.
    pub fn decode(b64: &str) -> Result<Self, WireError> {
        STANDARD.decode(b64.trim()).map(Self::from_bitmap).map_err(|e| WireError::Base64(e.to_string()))
    }

    pub fn encode(&self) -> String {
        encode_bitmap(&self.bitmap)
    }

    pub fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }

    /// Number of blocks the bitmap describes (8 per byte).
    pub fn block_count(&self) -> u64 {
        self.bitmap.len() as u64 * 8
    }

    /// Whether `block` changed; blocks past the bitmap did not.
    pub fn is_changed(&self, block: u64) -> bool {
        let Ok(byte) = usize::try_from(block / 8) else {
            return false;
        };
        self.bitmap.get(byte).is_some_and(|b| b & mask(block) != 0)
    }

    /// Marks one block; blocks past the bitmap are ignored (the disk does not have them).
    pub fn mark(&mut self, block: u64) {
        if let Some(b) = usize::try_from(block / 8).ok().and_then(|i| self.bitmap.get_mut(i)) {
            *b |= mask(block);
        }
    }

    /// Marks every block touched by the byte range.
    pub fn mark_bytes(&mut self, bytes: Range<u64>) {
        if bytes.is_empty() {
            return;
        }
        let last = (bytes.end - 1) / BLOCK_SIZE;
        for block in bytes.start / BLOCK_SIZE..=last.min(self.block_count().saturating_sub(1)) {
            self.mark(block);
        }
    }

    pub fn changed_count(&self) -> u64 {
        self.bitmap.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Indexes of the changed blocks, ascending.
    pub fn changed_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.bitmap
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, b)| (0..8u64).filter(move |bit| b & (0x80 >> bit) != 0).map(move |bit| i as u64 * 8 + bit))
    }

    /// Byte ranges of the changed blocks, adjacent blocks merged. A range may end past the
    /// disk's size when the size is not a multiple of [`BLOCK_SIZE`]: clamp it to the size.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut blocks = self.changed_blocks().peekable();
        std::iter::from_fn(move || {
            let first = blocks.next()?;
            let mut last = first;
            while blocks.next_if(|b| *b == last + 1).is_some() {
                last += 1;
            }
            Some(first * BLOCK_SIZE..(last + 1) * BLOCK_SIZE)
        })
    }
}

/// The bit of `block` within its byte, most significant first.
fn mask(block: u64) -> u8 {
    0x80 >> (block % 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first_bit_order() {
        // 0x80 = block 0, 0x01 = block 7, second byte 0x40 = block 9.
        let cb = ChangedBlocks::decode(&encode_bitmap(&[0x81, 0x40])).expect("decodes");
        assert!(cb.is_changed(0) && cb.is_changed(7) && cb.is_changed(9));
        assert!(!cb.is_changed(1) && !cb.is_changed(8) && !cb.is_changed(16));
        assert_eq!(cb.changed_count(), 3);
        assert_eq!(cb.changed_blocks().collect::<Vec<_>>(), vec![0, 7, 9]);
        assert_eq!(cb.block_count(), 16);
    }

    #[test]
    fn golden_base64() {
        // Blocks 0 and 1 of a 1 MiB disk (16 blocks).
        let mut cb = ChangedBlocks::for_disk_size(1 << 20);
        cb.mark_bytes(0..BLOCK_SIZE + 1);
        assert_eq!(cb.encode(), "wAA=");
    }

    #[test]
    fn ranges_merge_adjacent_blocks() {
        let cb = ChangedBlocks::from_bitmap(vec![0b1110_0001, 0b1000_0000, 0, 0b0000_0001]);
        let ranges: Vec<_> = cb.ranges().collect();
        assert_eq!(ranges, vec![0..3 * BLOCK_SIZE, 7 * BLOCK_SIZE..9 * BLOCK_SIZE, 31 * BLOCK_SIZE..32 * BLOCK_SIZE]);
        assert_eq!(ChangedBlocks::from_bitmap(vec![0; 4]).ranges().count(), 0);
    }

    #[test]
    fn mark_bytes_covers_partial_blocks_and_stays_in_bounds() {
        let mut cb = ChangedBlocks::for_disk_size(3 * BLOCK_SIZE + 10);
        assert_eq!(cb.bitmap().len(), 1);
        cb.mark_bytes(BLOCK_SIZE - 1..BLOCK_SIZE + 1);
        cb.mark_bytes(100 * BLOCK_SIZE..101 * BLOCK_SIZE);
        cb.mark(u64::MAX);
        assert_eq!(cb.changed_blocks().collect::<Vec<_>>(), vec![0, 1]);
        assert!(!cb.is_changed(u64::MAX));
    }

    #[test]
    fn bad_base64_is_an_error() {
        assert!(matches!(ChangedBlocks::decode("not base64!"), Err(WireError::Base64(_))));
        assert_eq!(ChangedBlocks::decode("").map(|c| c.block_count()), Ok(0));
    }
}
