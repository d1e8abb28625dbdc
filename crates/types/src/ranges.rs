//! Sets of byte ranges: CBT changed blocks, differing extents, damaged chunks. One type
//! for all of them, so merging and aligning are written (and tested) once.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Byte ranges kept ascending and disjoint; ranges that overlap or touch are merged, empty
/// ones dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet(Vec<Range<u64>>);

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// Adds `r`. Cheap when ranges come in ascending order (the usual case: a walk
    /// through a disk); any order is correct.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        match self.0.last_mut() {
            None => self.0.push(r),
            Some(last) if r.start >= last.start => {
                if r.start <= last.end {
                    last.end = last.end.max(r.end);
                } else {
                    self.0.push(r);
                }
            }
            Some(_) => {
                // Out of order: merge with every range it overlaps or touches.
                let first = self.0.partition_point(|x| x.end < r.start);
                let past = self.0.partition_point(|x| x.start <= r.end);
                let merged = match (self.0.get(first), past.checked_sub(1).and_then(|i| self.0.get(i))) {
                    (Some(a), Some(b)) if first < past => a.start.min(r.start)..b.end.max(r.end),
                    _ => r,
                };
                self.0.splice(first..past, [merged]);
            }
        }
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Range<u64>> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes covered.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// Each range widened to multiples of `granule` (chunks, blocks) and clipped to `size`.
    pub fn aligned(&self, granule: u64, size: u64) -> RangeSet {
        let granule = granule.max(1);
        self.0
            .iter()
            .filter(|r| r.start < size)
            .map(|r| (r.start / granule * granule)..r.end.div_ceil(granule).saturating_mul(granule).min(size))
            .collect()
    }

    /// The ranges cut into pieces of at most `max_len` bytes (for bounded reads).
    pub fn pieces(&self, max_len: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let max_len = max_len.max(1);
        self.0.iter().flat_map(move |r| {
            (r.start..r.end)
                .step_by(usize::try_from(max_len).unwrap_or(usize::MAX))
                .map(move |s| s..(s + max_len).min(r.end))
        })
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut set = RangeSet::new();
        set.extend(iter);
        set
    }
}

impl Extend<Range<u64>> for RangeSet {
    fn extend<I: IntoIterator<Item = Range<u64>>>(&mut self, iter: I) {
        for r in iter {
            self.insert(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_any_order() {
        let set: RangeSet = [0..10, 190..210, 300..310, 100..200, 5..5, 20..30, 10..20].into_iter().collect();
        assert_eq!(set.ranges(), [0..30, 100..210, 300..310]);
        assert_eq!(set.bytes(), 30 + 110 + 10);
        let mut set = set;
        set.insert(25..305);
        assert_eq!(set.ranges(), [0..310]);
        assert!(RangeSet::new().is_empty());
    }

    #[test]
    fn ranges_align_clip_and_split() {
        let set: RangeSet = [10..20, 4096..4097, 0..1, 9000..9001, 12000..13000].into_iter().collect();
        assert_eq!(set.aligned(4096, 10000).ranges(), [0..10000]);
        let set: RangeSet = [0..1, 9000..9001, 20000..20001].into_iter().collect();
        assert_eq!(set.aligned(4096, 10000).ranges(), [0..4096, 8192..10000]);
        let set: RangeSet = [0..10, 20..45].into_iter().collect();
        assert_eq!(set.pieces(10).collect::<Vec<_>>(), [0..10, 20..30, 30..40, 40..45]);
    }
}
