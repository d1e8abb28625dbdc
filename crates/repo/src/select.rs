//! Choosing restore points the way an administrator names them: by VM name or uuid, job,
//! tag and time range, the newest N per VM, and ids given as a prefix long enough to
//! be unambiguous (a too-short or ambiguous prefix lists the candidates, never picks one).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::{Manifest, Repository};
use xenvault_types::metadata::BackupRun;

/// Shortest id prefix accepted even when it matches one restore point.
pub const MIN_PREFIX: usize = 4;

/// Which restore points to keep; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The VM (source) uuid, any case, or its name.
    pub source: Option<String>,
    /// The backup job id stored with the restore point.
    pub job: Option<String>,
    /// The pool (its registered name) or the host (its name) the VM was backed up from.
    pub host: Option<String>,
    /// Every one of these tags.
    pub tags: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only the newest N of each source.
    pub latest_per_source: Option<usize>,
}

fn is_of_job(m: &Manifest, job: &str) -> bool {
    BackupRun::of(&m.metadata).is_some_and(|run| run.job_id.as_deref() == Some(job))
}

fn is_from_host(m: &Manifest, host: &str) -> bool {
    BackupRun::of(&m.metadata).is_some_and(|run| [run.pool, run.host].iter().any(|h| h.as_deref() == Some(host)))
}

/// Whether `m` is a restore point of the VM (or other source) named or identified by `source`.
pub fn is_of_source(m: &Manifest, source: &str) -> bool {
    m.source.id.eq_ignore_ascii_case(source) || m.source.name == source
}

impl Filter {
    fn matches(&self, m: &Manifest) -> bool {
        self.source.as_deref().is_none_or(|s| is_of_source(m, s))
            && self.job.as_deref().is_none_or(|j| is_of_job(m, j))
            && self.host.as_deref().is_none_or(|h| is_from_host(m, h))
            && self.tags.iter().all(|t| m.tags.contains(t))
            && self.since.is_none_or(|t| m.time >= t)
            && self.until.is_none_or(|t| m.time <= t)
    }

    /// The restore points that match, oldest first.
    pub fn apply(&self, mut points: Vec<Manifest>) -> Vec<Manifest> {
        points.retain(|m| self.matches(m));
        points.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        if let Some(n) = self.latest_per_source {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut newest_first: Vec<Manifest> = points
                .into_iter()
                .rev()
                .filter(|m| {
                    let count = seen.entry(m.source.id.to_ascii_lowercase()).or_default();
                    *count += 1;
                    *count <= n
                })
                .collect();
            newest_first.reverse();
            points = newest_first;
        }
        points
    }
}

/// A restore point as an error lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    pub source: String,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.id.get(..8).unwrap_or(&self.id),
            self.source,
            self.time.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Candidates shown in an error; the rest are counted.
const SHOWN: usize = 10;

fn listing(candidates: &[Candidate]) -> String {
    let mut text = candidates.iter().take(SHOWN).map(Candidate::to_string).collect::<Vec<_>>().join(", ");
    if candidates.len() > SHOWN {
        text += &format!(" and {} more", candidates.len() - SHOWN);
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("restore point {wanted:?} not found{}", .scope.as_deref().map(|s| format!(" among those of {s}")).unwrap_or_default())]
    NotFound { wanted: String, scope: Option<String> },
    #[error("restore point id {wanted:?} is too short: give at least {MIN_PREFIX} characters; it matches {}", listing(.candidates))]
    TooShort { wanted: String, candidates: Vec<Candidate> },
    #[error("{wanted:?} matches {} restore points: {}; give more of the id", .candidates.len(), listing(.candidates))]
    Ambiguous { wanted: String, candidates: Vec<Candidate> },
    #[error(transparent)]
    Repo(#[from] crate::Error),
}

fn candidate(m: &Manifest) -> Candidate {
    Candidate { id: m.id.clone(), time: m.time, source: m.source.name.clone() }
}

/// The restore point `wanted` names among `points`: `latest` (the newest; of `source`
/// when given), a whole id, or a prefix of at least [`MIN_PREFIX`] characters that
/// matches exactly one.
pub fn pick<'a>(points: &'a [Manifest], wanted: &str, source: Option<&str>) -> Result<&'a Manifest, SelectError> {
    let in_scope: Vec<&Manifest> = points.iter().filter(|m| source.is_none_or(|s| is_of_source(m, s))).collect();
    let not_found = || SelectError::NotFound { wanted: wanted.to_owned(), scope: source.map(str::to_owned) };
    if wanted == "latest" {
        return in_scope
            .into_iter()
            .max_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)))
            .ok_or_else(not_found);
    }
    if let Some(m) = in_scope.iter().find(|m| m.id == wanted) {
        return Ok(m);
    }
    let hits: Vec<&Manifest> =
        in_scope.into_iter().filter(|m| !wanted.is_empty() && m.id.starts_with(wanted)).collect();
    let candidates = || hits.iter().map(|m| candidate(m)).collect();
    match hits.as_slice() {
        [] => Err(not_found()),
        _ if wanted.len() < MIN_PREFIX => {
            Err(SelectError::TooShort { wanted: wanted.to_owned(), candidates: candidates() })
        }
        [one] => Ok(one),
        _ => Err(SelectError::Ambiguous { wanted: wanted.to_owned(), candidates: candidates() }),
    }
}

/// [`pick`] over the repository's readable restore points.
pub async fn restore_point(repo: &Repository, wanted: &str, source: Option<&str>) -> Result<Manifest, SelectError> {
    let points = repo.restore_points().await?;
    pick(&points, wanted, source).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, vm: &str, name: &str, minute: u32, job: &str, tags: &[&str]) -> Manifest {
        let time = format!("2026-01-01T10:{minute:02}:00Z");
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": id, "time": time, "finished": time, "disks": [], "tags": tags,
            "source": {"id": vm, "type": "vm", "name": name},
            "metadata": {"backup": {"level": "inc", "job_id": job, "pool": "prod", "host": format!("xen{}", minute % 2)}},
        }))
        .unwrap()
    }

    fn points() -> Vec<Manifest> {
        vec![
            point("abcd1111", "UUID-A", "web", 1, "nightly", &["prod"]),
            point("abcd2222", "uuid-a", "web", 2, "hourly", &[]),
            point("ef001111", "uuid-b", "db", 3, "nightly", &["prod"]),
            point("ef002222", "uuid-b", "db", 4, "nightly", &[]),
        ]
    }

    fn ids(list: &[Manifest]) -> Vec<&str> {
        list.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn filters_by_vm_name_or_uuid_job_tag_time_and_latest_per_vm() {
        let by_name = Filter { source: Some("web".into()), ..Default::default() };
        assert_eq!(ids(&by_name.apply(points())), ["abcd1111", "abcd2222"]);
        let by_uuid = Filter { source: Some("uuid-A".into()), ..Default::default() };
        assert_eq!(ids(&by_uuid.apply(points())), ["abcd1111", "abcd2222"]);
        let job = Filter { job: Some("nightly".into()), tags: vec!["prod".into()], ..Default::default() };
        assert_eq!(ids(&job.apply(points())), ["abcd1111", "ef001111"]);
        let window = Filter { since: Some(points()[1].time), until: Some(points()[2].time), ..Default::default() };
        assert_eq!(ids(&window.apply(points())), ["abcd2222", "ef001111"]);
        let pool = Filter { host: Some("prod".into()), ..Default::default() };
        assert_eq!(pool.apply(points()).len(), 4);
        let host = Filter { host: Some("xen1".into()), ..Default::default() };
        assert_eq!(ids(&host.apply(points())), ["abcd1111", "ef001111"]);
        let elsewhere = Filter { host: Some("lab".into()), ..Default::default() };
        assert!(elsewhere.apply(points()).is_empty());
        let latest = Filter { latest_per_source: Some(1), ..Default::default() };
        assert_eq!(ids(&latest.apply(points())), ["abcd2222", "ef002222"]);
    }

    #[test]
    fn short_or_ambiguous_prefixes_list_candidates() {
        let all = points();
        assert_eq!(pick(&all, "latest", None).unwrap().id, "ef002222");
        assert_eq!(pick(&all, "latest", Some("web")).unwrap().id, "abcd2222");
        assert_eq!(pick(&all, "ef001", None).unwrap().id, "ef001111");
        let short = pick(&all, "e", None).unwrap_err().to_string();
        assert!(short.contains("too short") && short.contains("ef001111") && short.contains("ef002222"), "{short}");
        // Even a unique match needs MIN_PREFIX characters.
        assert!(matches!(pick(&all, "abcd1", Some("db")), Err(SelectError::NotFound { .. })));
        assert!(matches!(pick(&all, "ef", Some("db")), Err(SelectError::TooShort { .. })));
        let ambiguous = pick(&all, "abcd", None).unwrap_err().to_string();
        assert!(ambiguous.contains("matches 2") && ambiguous.contains("abcd1111"), "{ambiguous}");
        assert!(matches!(pick(&all, "9999", None), Err(SelectError::NotFound { .. })));
        assert!(matches!(pick(&all, "latest", Some("mail")), Err(SelectError::NotFound { .. })));
    }
}
