//! `forget`: which restore points a retention policy keeps, per source.
//!
//! Like restic: `last` keeps the newest N; each calendar policy (hourly … yearly) keeps
//! the newest restore point of each of the N most recent periods that have one. Periods
//! are UTC. A restore point kept by any rule is kept.

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use chrono::{DateTime, Datelike, Timelike, Utc};
use std::collections::BTreeMap;

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

/// A rule of the policy that keeps a restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepRule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl std::fmt::Display for KeepRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeepRule::Last => "last",
            KeepRule::Hourly => "hourly",
            KeepRule::Daily => "daily",
            KeepRule::Weekly => "weekly",
            KeepRule::Monthly => "monthly",
            KeepRule::Yearly => "yearly",
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ForgetPlan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    /// The rules that keep each id of `keep`, in policy order.
    pub reasons: BTreeMap<String, Vec<KeepRule>>,
}

type PeriodKey = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
/// How many periods of one kind a policy keeps.
type PeriodCount = fn(&KeepPolicy) -> u32;

fn periods() -> [(KeepRule, PeriodCount, PeriodKey); 5] {
    [
        (KeepRule::Hourly, |p| p.hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
        (KeepRule::Daily, |p| p.daily, |t| (t.year(), t.ordinal(), 0, 0)),
        (KeepRule::Weekly, |p| p.weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0, 0)),
        (KeepRule::Monthly, |p| p.monthly, |t| (t.year(), t.month(), 0, 0)),
        (KeepRule::Yearly, |p| p.yearly, |t| (t.year(), 0, 0, 0)),
    ]
}

/// Applies `policy` to each source's restore points separately.
pub fn plan(snapshots: &[Manifest], policy: &KeepPolicy) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "a retention policy needs at least one rule (keep last, hourly, daily, weekly, monthly or yearly)".into(),
        ));
    }
    let mut by_source: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in snapshots {
        by_source.entry(m.source.id.as_str()).or_default().push(m);
    }
    let mut reasons: BTreeMap<String, Vec<KeepRule>> = BTreeMap::new();
    for list in by_source.values_mut() {
        list.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        for m in list.iter().take(policy.last as usize) {
            reasons.entry(m.id.clone()).or_default().push(KeepRule::Last);
        }
        for (rule, count, key) in periods() {
            let mut left = count(policy);
            let mut last_key = None;
            for m in list.iter() {
                if left == 0 {
                    break;
                }
                let k = key(&m.time);
                if last_key != Some(k) {
                    reasons.entry(m.id.clone()).or_default().push(rule);
                    last_key = Some(k);
                    left -= 1;
                }
            }
        }
    }
    let (kept, removed): (Vec<&Manifest>, Vec<&Manifest>) = snapshots.iter().partition(|m| reasons.contains_key(&m.id));
    Ok(ForgetPlan {
        keep: kept.into_iter().map(|m| m.id.clone()).collect(),
        remove: removed.into_iter().map(|m| m.id.clone()).collect(),
        reasons,
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
        let rules = |id: &str| p.reasons.get(id).cloned().unwrap_or_default();
        assert_eq!(rules("a5"), vec![KeepRule::Last, KeepRule::Daily]);
        assert_eq!(rules("a3"), vec![KeepRule::Daily]);
        assert!(p.remove.iter().all(|id| !p.reasons.contains_key(id)), "{p:?}");
        assert_eq!(serde_json::to_value(&p.reasons).unwrap()["a5"], serde_json::json!(["last", "daily"]));
        let p = plan(&snaps, &KeepPolicy { monthly: 1, ..Default::default() }).unwrap();
        assert_eq!(p.keep.len(), 2);
        assert!(plan(&snaps, &KeepPolicy::default()).is_err());
    }
}
