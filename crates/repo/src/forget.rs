//! `forget` (and prune afterwards) as one call: which restore points go, by id or by a
//! retention policy ([`crate::prune`]), removing them and collecting garbage.

use crate::error::{Error, Result};
use crate::gc::GcReport;
use crate::prune::{KeepPolicy, KeepRule};
use crate::repository::Repository;
use crate::select::{self, SelectError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which restore points to remove.
#[derive(Debug, Clone)]
pub enum Forget {
    /// These (ids, unique prefixes or `latest`).
    Named(Vec<String>),
    /// Those the policy does not keep, among the restore points of `source` (a VM name or
    /// uuid, or another source id) or of every source.
    Policy { policy: KeepPolicy, source: Option<String> },
}

#[derive(Debug, Clone)]
pub struct ForgetOptions {
    pub forget: Forget,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
    /// Collect garbage afterwards (not on a dry run).
    pub prune: bool,
}

/// What happened to one restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Keep,
    Remove,
    WouldRemove,
}

/// One restore point the plan looked at.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetEntry {
    pub id: String,
    pub time: DateTime<Utc>,
    /// The VM's (or other source's) name.
    pub source: String,
    pub action: Action,
    /// The rules that keep it (empty for a removed or a named one).
    pub rules: Vec<KeepRule>,
}

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    /// Ids kept, then ids removed (or that would be).
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    /// The rules that keep each id of `keep`.
    pub reasons: BTreeMap<String, Vec<KeepRule>>,
    pub entries: Vec<ForgetEntry>,
    pub dry_run: bool,
    /// The garbage collection that followed, if asked for.
    pub prune: Option<GcReport>,
}

/// Plans, removes (unless a dry run) and prunes (if asked).
pub async fn forget(repo: &Repository, options: &ForgetOptions) -> Result<ForgetReport, SelectError> {
    let points = repo.restore_points().await?;
    let plan = match &options.forget {
        Forget::Policy { policy, source } => {
            let of_source: Vec<_> = points
                .iter()
                .filter(|m| source.as_deref().is_none_or(|s| select::is_of_source(m, s)))
                .cloned()
                .collect();
            crate::prune::plan(&of_source, policy)?
        }
        Forget::Named(ids) => {
            if ids.is_empty() {
                return Err(Error::Invalid("name the restore points to forget".into()).into());
            }
            let mut remove = Vec::new();
            for id in ids {
                let id = select::pick(&points, id, None)?.id.clone();
                if !remove.contains(&id) {
                    remove.push(id);
                }
            }
            crate::prune::ForgetPlan { keep: Vec::new(), remove, reasons: BTreeMap::new() }
        }
    };
    if !options.dry_run {
        for id in &plan.remove {
            repo.delete_restore_point(id).await?;
        }
    }
    let prune = match options.prune && !options.dry_run {
        true => Some(crate::gc::gc(repo).await?),
        false => None,
    };
    let removed = if options.dry_run { Action::WouldRemove } else { Action::Remove };
    let entry = |id: &String, action: Action| {
        let m = points.iter().find(|m| &m.id == id);
        ForgetEntry {
            id: id.clone(),
            time: m.map(|m| m.time).unwrap_or_default(),
            source: m.map(|m| m.source.name.clone()).unwrap_or_default(),
            action,
            rules: plan.reasons.get(id).cloned().unwrap_or_default(),
        }
    };
    let entries = plan
        .keep
        .iter()
        .map(|id| entry(id, Action::Keep))
        .chain(plan.remove.iter().map(|id| entry(id, removed)))
        .collect();
    Ok(ForgetReport {
        keep: plan.keep,
        remove: plan.remove,
        reasons: plan.reasons,
        entries,
        dry_run: options.dry_run,
        prune,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{new_repo, source};

    async fn point(repo: &Repository, vm: &str) -> String {
        let session = repo.start_backup(source(vm)).await.unwrap();
        let mut w = session.disk_writer(0, "disk0", "", 64 << 10, None).await.unwrap();
        w.write(0, &vec![vm.len() as u8; 64 << 10]).await.unwrap();
        w.finish().await.unwrap();
        session.commit(serde_json::Value::Null, vec![]).await.unwrap().id
    }

    #[tokio::test]
    async fn forget_by_policy_keeps_per_source_and_a_dry_run_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(&dir.path().join("repo"), 64 << 10).await;
        let (a1, a2, b1) = (point(&repo, "a").await, point(&repo, "a").await, point(&repo, "bb").await);
        let policy = KeepPolicy { last: 1, ..KeepPolicy::default() };
        let options = ForgetOptions { forget: Forget::Policy { policy, source: None }, dry_run: true, prune: true };
        let report = forget(&repo, &options).await.unwrap();
        assert_eq!(report.remove, std::slice::from_ref(&a1));
        assert_eq!(report.reasons[&a2], [KeepRule::Last]);
        assert!(report.entries.iter().any(|e| e.id == a1 && e.action == Action::WouldRemove && e.source == "a"));
        assert!(report.prune.is_none(), "a dry run does not prune");
        assert_eq!(repo.restore_points().await.unwrap().len(), 3);

        let options = ForgetOptions { forget: Forget::Named(vec![b1.clone()]), dry_run: false, prune: true };
        let report = forget(&repo, &options).await.unwrap();
        assert_eq!((report.remove, report.keep.len()), (vec![b1], 0));
        assert!(report.prune.is_some_and(|gc| gc.packs_total > 0));
        assert_eq!(repo.restore_points().await.unwrap().len(), 2);

        let unknown = ForgetOptions { forget: Forget::Named(vec!["ffffffff".into()]), dry_run: false, prune: false };
        assert!(matches!(forget(&repo, &unknown).await, Err(SelectError::NotFound { .. })));
    }
}
