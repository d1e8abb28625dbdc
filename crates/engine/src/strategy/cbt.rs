//! CBT + NBD: the changed-block bitmap as byte ranges to read over NBD.

/// CBT granularity: one bit of `VDI.list_changed_blocks` per 64 KiB of disk.
pub const CBT_BLOCK: u64 = 64 * 1024;

/// A byte range of the disk to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Coalesces changed block indices (ascending) into extents no longer than `max_len`,
/// clipped to the disk size (the last block may be short).
pub fn extents(changed_blocks: impl IntoIterator<Item = u64>, block: u64, disk_size: u64, max_len: u64) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for index in changed_blocks {
        let offset = index.saturating_mul(block);
        if offset >= disk_size {
            break;
        }
        let length = block.min(disk_size - offset);
        match out.last_mut() {
            Some(last) if last.end() == offset && last.length + length <= max_len => last.length += length,
            _ => out.push(Extent { offset, length }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_clips() {
        let size = 5 * CBT_BLOCK + 100;
        let e = extents([0, 1, 3, 5, 9], CBT_BLOCK, size, 2 * CBT_BLOCK);
        assert_eq!(
            e,
            [
                Extent { offset: 0, length: 2 * CBT_BLOCK },
                Extent { offset: 3 * CBT_BLOCK, length: CBT_BLOCK },
                Extent { offset: 5 * CBT_BLOCK, length: 100 },
            ]
        );
        let e = extents([0, 1, 2], CBT_BLOCK, size, 2 * CBT_BLOCK);
        assert_eq!(e.len(), 2);
    }
}
