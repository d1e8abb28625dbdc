//! What of a base disk an incremental may not inherit. `verify` takes damaged chunks
//! out of the index and a lost pack takes its chunks and index pages with it; a new
//! restore point that inherited them would be damaged from the start. The writer
//! refuses such an inheritance; the caller learns here which ranges to read again.

use std::ops::Range;

use crate::error::Result;
use crate::manifest::DiskRecord;
use crate::repository::Repository;
use crate::writer::parse_page;
use xenvault_types::ranges::RangeSet;

/// Byte ranges of a base disk, in whole chunks, that cannot be inherited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BaseDamage {
    /// Index pages that are unreadable (damaged or missing): which chunks they listed is
    /// unknown, so the whole range they cover must be read again.
    pub lost_pages: Vec<Range<u64>>,
    /// Chunks that are damaged or missing (their pages are fine).
    pub lost_chunks: Vec<Range<u64>>,
}

impl BaseDamage {
    pub fn is_empty(&self) -> bool {
        self.lost_pages.is_empty() && self.lost_chunks.is_empty()
    }

    /// Every unusable range, ascending and merged.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.lost_pages.iter().chain(&self.lost_chunks).cloned().collect::<RangeSet>().into_vec()
    }

    pub fn bytes(&self) -> u64 {
        self.ranges().iter().map(|r| r.end - r.start).sum()
    }
}

impl Repository {
    /// Reads every index page of `base` (from an up-to-date index: call after
    /// `start_backup` or `refresh_index`) and lists what is no longer usable.
    pub async fn base_damage(&self, base: &DiskRecord) -> Result<BaseDamage> {
        let chunk = u64::from(base.chunk_size);
        let page_slots = u64::from(base.page_slots);
        let slots = base.slot_count();
        let mut damage = BaseDamage::default();
        for (n, page) in base.pages.iter().enumerate().filter(|(_, p)| !p.is_zero()) {
            let first = n as u64 * page_slots;
            let count = (slots.saturating_sub(first)).min(page_slots);
            let covered = first * chunk..((first + count) * chunk).min(base.size);
            let ids = match self.read_chunk(page).await {
                Ok(raw) => parse_page(&raw, count as usize),
                Err(e) if e.is_damage() => None,
                Err(e) => return Err(e),
            };
            let Some(ids) = ids else {
                damage.lost_pages.push(covered);
                continue;
            };
            let lost =
                ids.iter().enumerate().filter(|(_, id)| !id.is_zero() && !self.has_usable_chunk(id)).map(|(i, _)| {
                    let start = (first + i as u64) * chunk;
                    start..(start + chunk).min(base.size)
                });
            damage.lost_chunks =
                std::mem::take(&mut damage.lost_chunks).into_iter().chain(lost).collect::<RangeSet>().into_vec();
        }
        Ok(damage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_pages_and_chunks() {
        let damage = BaseDamage { lost_pages: vec![100..200], lost_chunks: vec![0..10, 190..210, 300..310] };
        assert_eq!(damage.ranges(), vec![0..10, 100..210, 300..310]);
        assert_eq!(damage.bytes(), 10 + 110 + 10);
        assert!(BaseDamage::default().is_empty());
    }
}
