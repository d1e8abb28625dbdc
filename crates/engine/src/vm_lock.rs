//! One backup of a VM at a time, across processes and nodes: the lock lives in the pool,
//! as a key of the VM's `other_config`. xapi's `add_to_other_config` refuses a key that
//! exists with another value (MAP_DUPLICATE_KEY, db_cache_types.ml `add_to_map`), and the
//! pool database serialises the calls, so adding the key is an atomic test-and-set. The
//! value names its holder and is unique (it carries the job id), so two runs never add
//! the same value. A lock whose holder died on this host, or older than [`MAX_HOLD`], is
//! taken over.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use xenvault_xapi_wire::Value;

use crate::error::Error;
use xenvault_pool::host::Host;
use xenvault_pool::records::Vm;

pub use xenvault_pool::hygiene::LOCK_KEY;
/// No backup holds a VM this long (xapi itself ends transfers after about 24 h).
pub const MAX_HOLD: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How often a waiting run looks again.
const POLL: Duration = Duration::from_secs(2);

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub job: String,
    pub started: chrono::DateTime<chrono::Utc>,
}

impl Holder {
    fn ours(job: &str) -> Self {
        Self {
            host: xenvault_repo::lock::hostname(),
            pid: std::process::id(),
            job: job.to_owned(),
            started: chrono::Utc::now(),
        }
    }

    /// Its process is gone (same host), or it held the lock too long to be alive.
    fn is_stale(&self) -> bool {
        let dead_here = self.host == xenvault_repo::lock::hostname()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        dead_here || chrono::Utc::now() - self.started > MAX_HOLD
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} on {} (pid {}) since {}", self.job, self.host, self.pid, self.started.to_rfc3339())
    }
}

/// A held lock; [`VmLock::release`] removes it (a crashed holder's is taken over).
pub struct VmLock {
    vm: String,
    value: String,
    /// A stale holder whose lock this one replaced.
    pub took_over: Option<Holder>,
}

/// Takes the lock of `vm` for `job`, waiting up to `wait` for a live holder to finish.
pub async fn acquire(host: &Host, vm: &Vm, job: &str, wait: Duration) -> Result<VmLock, Error> {
    let value = serde_json::to_string(&Holder::ours(job)).map_err(|e| Error::Protocol(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut took_over = None;
    loop {
        let added = host
            .call("VM.add_to_other_config", vec![vm.reference.as_str().into(), LOCK_KEY.into(), value.as_str().into()])
            .await;
        match added {
            Ok(_) => return Ok(VmLock { vm: vm.reference.clone(), value, took_over }),
            Err(e) if e.xapi_code() == Some(xenvault_xapi_wire::MAP_DUPLICATE_KEY) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(current) = host.vm(&vm.reference).await?.other_config.get(LOCK_KEY).cloned() else {
            continue; // Released meanwhile.
        };
        let holder: Option<Holder> = serde_json::from_str(&current).ok();
        match holder {
            Some(h) if !h.is_stale() => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::VmBusy(format!("another backup of VM {} holds its lock: {h}", vm.name_label)));
                }
                tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
            }
            // Stale or unreadable: removed only if it is still the value judged stale.
            stale => {
                remove_if_held(host, &vm.reference, &current).await?;
                took_over = stale;
            }
        }
    }
}

impl VmLock {
    pub async fn release(self, host: &Host) {
        if let Err(e) = remove_if_held(host, &self.vm, &self.value).await {
            tracing::warn!("could not release the backup lock of {}: {e} (the next run takes it over)", self.vm);
        }
    }
}

/// Removes the lock key of VM `vm` if it still holds `value` (never another run's lock):
/// also how a server frees the locks of runs a crash ended.
pub async fn remove_if_held(host: &Host, vm: &str, value: &str) -> Result<(), xenvault_pool::Error> {
    if host.vm(vm).await?.other_config.get(LOCK_KEY).map(String::as_str) == Some(value) {
        host.call("VM.remove_from_other_config", vec![Value::from(vm), Value::from(LOCK_KEY)]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_or_old_holders_are_stale() {
        let mut holder = Holder::ours("j");
        assert!(!holder.is_stale(), "this process is alive");
        holder.pid = u32::MAX;
        assert!(holder.is_stale(), "no such pid on this host");
        holder.host = "another-node".into();
        assert!(!holder.is_stale(), "a pid on another node cannot be checked");
        holder.started -= MAX_HOLD + chrono::TimeDelta::minutes(1);
        assert!(holder.is_stale());
    }
}
