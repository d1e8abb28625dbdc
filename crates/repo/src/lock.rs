//! Repository locks: a running backup or gc announces itself with `locks/<id>`, refreshed
//! while it runs. Garbage collection uses them to never delete what a running backup may
//! still reference (see `gc`). A lock whose owner died (same host, pid gone) or that was
//! not refreshed for `STALE_AFTER` is ignored.

use crate::error::Result;
use crate::repository::Repository;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const LOCKS_PREFIX: &str = "locks/";
const REFRESH_EVERY: Duration = Duration::from_secs(300);
const STALE_AFTER_SECS: i64 = 1800;
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

/// Held while a backup or gc runs; `release` removes it.
pub struct LockGuard {
    repo: Repository,
    name: String,
    pub record: LockRecord,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub async fn acquire(repo: &Repository, kind: LockKind) -> Result<Self> {
        let now = Utc::now();
        let record = LockRecord { kind, host: hostname(), pid: std::process::id(), started: now, refreshed: now };
        let name = format!("{LOCKS_PREFIX}{}", crate::crypto::random_hex(8)?);
        repo.put_json(&name, &record, false).await?;
        let refresher = {
            let (repo, name, mut record) = (repo.clone(), name.clone(), record.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH_EVERY).await;
                    record.refreshed = Utc::now();
                    if let Err(e) = repo.put_json(&name, &record, false).await {
                        tracing::warn!("cannot refresh lock {name}: {e}");
                    }
                }
            })
        };
        Ok(LockGuard { repo: repo.clone(), name, record, refresher })
    }

    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        self.repo.store().delete(&self.name).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // `release` already aborted; on an error path this stops the refresh so the
        // lock goes stale instead of protecting garbage forever.
        self.refresher.abort();
    }
}

/// All locks currently in the repository that are still live.
pub async fn live_locks(repo: &Repository) -> Result<Vec<(String, LockRecord)>> {
    let now = Utc::now();
    let mut out = Vec::new();
    for (name, _) in repo.store().list(LOCKS_PREFIX).await? {
        // A lock deleted between list and get simply finished.
        match repo.get_json::<LockRecord>(&name, MAX_LOCK_LEN).await {
            Ok(Some(rec)) if rec.is_live(now) => out.push((name, rec)),
            Ok(_) => {}
            Err(e) => tracing::warn!("ignoring unreadable lock {name}: {e}"),
        }
    }
    Ok(out)
}
