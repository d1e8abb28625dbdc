//! Repository locks: a running backup (or copy) or gc announces itself with `locks/<id>`,
//! refreshed while it runs. Garbage collection uses them to never delete what a running
//! backup may still reference (see `gc` and docs/reliability.md). A lock whose owner died
//! (same host, pid gone) or that was not refreshed for `STALE_AFTER_SECS` is ignored, and
//! removed by [`remove_stale_locks`].
//!
//! Because a stale lock no longer protects anything, its owner must not publish: a lock
//! that was removed, or whose last successful refresh is older than `SAFE_AGE`, is *lost*,
//! and [`LockGuard::ensure_held`] (called right before a restore point is committed) fails.

use crate::error::{Error, Result};
use crate::repository::Repository;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LOCKS_PREFIX: &str = "locks/";
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// A failed refresh is retried this often until the lock is lost.
const RETRY_REFRESH_EVERY: Duration = Duration::from_secs(15);
const STALE_AFTER_SECS: i64 = 1800;
/// How old the last successful refresh may be for the owner to still publish: half the
/// stale time leaves room for clock skew and for the publishing write itself.
const SAFE_AGE: Duration = Duration::from_secs(STALE_AFTER_SECS as u64 / 2);
const MAX_LOCK_LEN: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Backup,
    Gc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    pub started: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl LockRecord {
    /// False when the owner is known dead or the lock was abandoned.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        if self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            return false;
        }
        (now - self.refreshed).num_seconds() < STALE_AFTER_SECS
    }
}

/// What the refresher knows about the lock.
struct Health {
    last_refresh: Instant,
    /// Why the lock no longer protects this run, once it does not.
    lost: Option<String>,
}

/// Held while a backup or gc runs; `release` removes it.
pub struct LockGuard {
    repo: Repository,
    name: String,
    pub record: LockRecord,
    health: Arc<Mutex<Health>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub async fn acquire(repo: &Repository, kind: LockKind) -> Result<Self> {
        let now = Utc::now();
        let record = LockRecord { kind, host: hostname(), pid: std::process::id(), started: now, refreshed: now };
        let name = format!("{LOCKS_PREFIX}{}", crate::crypto::random_hex(8)?);
        let written = Instant::now();
        repo.put_json(&name, &record, false).await?;
        let health = Arc::new(Mutex::new(Health { last_refresh: written, lost: None }));
        let refresher = {
            let (repo, name, record, health) = (repo.clone(), name.clone(), record.clone(), health.clone());
            tokio::spawn(async move {
                let mut wait = REFRESH_EVERY;
                loop {
                    tokio::time::sleep(wait).await;
                    wait = match refresh(&repo, &name, &record, &health).await {
                        Ok(()) => REFRESH_EVERY,
                        Err(e) if lost(&health).is_some() => {
                            tracing::warn!("lock {name} is lost: {e}");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("cannot refresh lock {name} (retrying): {e}");
                            RETRY_REFRESH_EVERY
                        }
                    };
                }
            })
        };
        Ok(LockGuard { repo: repo.clone(), name, record, health, refresher })
    }

    /// Refreshes the lock now and fails if it was removed or went stale at any moment
    /// (then gc may have deleted what this run references: it must not publish).
    pub async fn ensure_held(&self) -> Result<()> {
        let result = refresh(&self.repo, &self.name, &self.record, &self.health).await;
        match (lost(&self.health), result) {
            (Some(why), _) => {
                Err(Error::Locked(format!("this run's repository lock is lost ({why}); nothing was committed")))
            }
            (None, r) => r,
        }
    }

    /// The lock's object name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        self.repo.store().delete(&self.name).await
    }
}

fn lost(health: &Mutex<Health>) -> Option<String> {
    health.lock().unwrap_or_else(|p| p.into_inner()).lost.clone()
}

/// Rewrites the lock with a new refresh time, unless it is gone or was not refreshed in
/// time (then the lock is marked lost for good).
async fn refresh(repo: &Repository, name: &str, record: &LockRecord, health: &Mutex<Health>) -> Result<()> {
    let mark_lost = |why: String| {
        let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
        h.lost.get_or_insert(why.clone());
        Err(Error::Locked(why))
    };
    let attempt = Instant::now();
    let since = attempt.duration_since(health.lock().unwrap_or_else(|p| p.into_inner()).last_refresh);
    if since > SAFE_AGE {
        return mark_lost(format!("not refreshed for {}s", since.as_secs()));
    }
    if repo.store().get(name).await?.is_none() {
        return mark_lost("removed from the repository".into());
    }
    let record = LockRecord { refreshed: Utc::now(), ..record.clone() };
    repo.put_json(name, &record, false).await?;
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if h.lost.is_none() {
        h.last_refresh = attempt;
    }
    Ok(())
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // `release` already aborted; on an error path this stops the refresh so the
        // lock goes stale instead of protecting garbage forever.
        self.refresher.abort();
    }
}

/// Every lock object: `Some(record)` when readable, `None` when not.
async fn all_locks(repo: &Repository) -> Result<Vec<(String, Option<LockRecord>)>> {
    let mut out = Vec::new();
    for (name, _) in repo.store().list(LOCKS_PREFIX).await? {
        // A lock deleted between list and get simply finished.
        match repo.get_json::<LockRecord>(&name, MAX_LOCK_LEN).await {
            Ok(Some(rec)) => out.push((name, Some(rec))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("ignoring unreadable lock {name}: {e}");
                out.push((name, None));
            }
        }
    }
    Ok(out)
}

/// All locks currently in the repository that are still live.
pub async fn live_locks(repo: &Repository) -> Result<Vec<(String, LockRecord)>> {
    let now = Utc::now();
    Ok(all_locks(repo)
        .await?
        .into_iter()
        .filter_map(|(name, rec)| rec.filter(|r| r.is_live(now)).map(|r| (name, r)))
        .collect())
}

/// Removes the locks of dead or stuck runs (and unreadable lock objects, which protect
/// nothing already); returns how many. Safe at any time: an owner that is in fact still
/// running finds its lock gone at its next refresh and commits nothing.
pub async fn remove_stale_locks(repo: &Repository) -> Result<usize> {
    let now = Utc::now();
    let mut removed = 0;
    for (name, rec) in all_locks(repo).await? {
        if !rec.is_some_and(|r| r.is_live(now)) {
            repo.store().delete(&name).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One lock a live run holds.
#[derive(Debug, Clone, Serialize)]
pub struct LiveLock {
    pub name: String,
    pub lock: LockRecord,
}

/// What [`unlock`] did and what it left.
#[derive(Debug, Clone, Serialize)]
pub struct UnlockReport {
    /// Locks of dead or stuck runs removed.
    pub removed: usize,
    /// Locks of live runs, kept.
    pub live: Vec<LiveLock>,
}

/// Removes the locks of dead or stuck runs and lists the live ones.
pub async fn unlock(repo: &Repository) -> Result<UnlockReport> {
    let removed = remove_stale_locks(repo).await?;
    let live = live_locks(repo).await?.into_iter().map(|(name, lock)| LiveLock { name, lock }).collect();
    Ok(UnlockReport { removed, live })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{new_repo, source};

    /// A backup whose lock was removed (as gc does with a stale one) commits nothing.
    #[tokio::test]
    async fn a_backup_with_a_lost_lock_does_not_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(&dir.path().join("repo"), 64 << 10).await;
        let session = repo.start_backup(source("vm")).await.unwrap();
        let mut w = session.disk_writer(0, "disk0", "", 1 << 20, None).await.unwrap();
        w.write(0, &vec![7u8; 1 << 20]).await.unwrap();
        w.finish().await.unwrap();
        for (name, _) in repo.store().list(LOCKS_PREFIX).await.unwrap() {
            repo.store().delete(&name).await.unwrap();
        }
        let err = session.commit(serde_json::Value::Null, vec![]).await.unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{err}");
        assert!(repo.restore_points().await.unwrap().is_empty(), "nothing committed");
    }

    /// Locks of dead processes go; live ones stay.
    #[tokio::test]
    async fn stale_locks_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(&dir.path().join("repo"), 64 << 10).await;
        let live = LockGuard::acquire(&repo, LockKind::Backup).await.unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = LockRecord { pid: child.id(), ..live.record.clone() };
        repo.put_json(&format!("{LOCKS_PREFIX}dead"), &dead, false).await.unwrap();
        let old = LockRecord {
            host: "elsewhere".into(),
            refreshed: Utc::now() - chrono::Duration::hours(1),
            ..live.record.clone()
        };
        repo.put_json(&format!("{LOCKS_PREFIX}old"), &old, false).await.unwrap();
        assert_eq!(remove_stale_locks(&repo).await.unwrap(), 2);
        let left: Vec<String> = live_locks(&repo).await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, [live.name().to_string()]);
        live.ensure_held().await.unwrap();
        live.release().await.unwrap();
    }
}
