//! `forget`: which restore points a retention policy keeps, per source.
//!
//! Like restic: `last` keeps the newest N; each calendar policy (hourly … yearly) keeps
//! the newest restore point of each of the N most recent periods that have one. Periods
//! are UTC. A restore point kept by any rule is kept.

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use chrono::{DateTime, Datelike, Timelike, Utc};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ForgetPlan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
}

type PeriodKey = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
/// How many periods of one kind a policy keeps.
type PeriodCount = fn(&KeepPolicy) -> u32;

fn periods() -> [(PeriodCount, PeriodKey); 5] {
    [
        (|p| p.hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
        (|p| p.daily, |t| (t.year(), t.ordinal(), 0, 0)),
        (|p| p.weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0, 0)),
        (|p| p.monthly, |t| (t.year(), t.month(), 0, 0)),
        (|p| p.yearly, |t| (t.year(), 0, 0, 0)),
    ]
}

/// Applies `policy` to each source's restore points separately.
pub fn plan(snapshots: &[Manifest], policy: &KeepPolicy) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::Invalid("a retention policy needs at least one --keep-* rule".into()));
    }
    let mut by_source: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in snapshots {
        by_source.entry(m.source.id.as_str()).or_default().push(m);
    }
    let mut keep = HashSet::new();
    for list in by_source.values_mut() {
        list.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        keep.extend(list.iter().take(policy.last as usize).map(|m| m.id.clone()));
        for (count, key) in periods() {
            let mut left = count(policy);
            let mut last_key = None;
            for m in list.iter() {
                if left == 0 {
                    break;
                }
                let k = key(&m.time);
                if last_key != Some(k) {
                    keep.insert(m.id.clone());
                    last_key = Some(k);
                    left -= 1;
                }
            }
        }
    }
    let (kept, removed): (Vec<&Manifest>, Vec<&Manifest>) = snapshots.iter().partition(|m| keep.contains(&m.id));
    Ok(ForgetPlan {
        keep: kept.into_iter().map(|m| m.id.clone()).collect(),
        remove: removed.into_iter().map(|m| m.id.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MANIFEST_VERSION, SourceInfo};
    use chrono::TimeZone;

    fn snap(id: &str, source: &str, t: DateTime<Utc>) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: id.into(),
            time: t,
            source: SourceInfo { id: source.into(), kind: "vm".into(), name: source.into() },
            metadata: serde_json::Value::Null,
            tags: vec![],
            disks: vec![],
            base: None,
            finished: t,
        }
    }

    #[test]
    fn keeps_last_and_calendar_periods_per_source() {
        let day = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap();
        let snaps = vec![
            snap("a1", "a", day(1, 10)),
            snap("a2", "a", day(1, 20)),
            snap("a3", "a", day(2, 10)),
            snap("a4", "a", day(3, 10)),
            snap("a5", "a", day(3, 11)),
            snap("b1", "b", day(1, 10)),
        ];
        let p = plan(&snaps, &KeepPolicy { last: 1, daily: 2, ..Default::default() }).unwrap();
        let mut keep = p.keep.clone();
        keep.sort();
        // a: last → a5; daily: day 3 → a5, day 2 → a3. b: b1 (last and daily).
        assert_eq!(keep, vec!["a3", "a5", "b1"]);
        assert_eq!(p.remove.len(), 3);
        let p = plan(&snaps, &KeepPolicy { monthly: 1, ..Default::default() }).unwrap();
        assert_eq!(p.keep.len(), 2);
        assert!(plan(&snaps, &KeepPolicy::default()).is_err());
    }
}
