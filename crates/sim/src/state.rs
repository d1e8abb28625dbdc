//! The simulator's shared state: database, disk storage, CBT logs and faults behind
//! one lock, plus what never changes after start (certificate, ports, password).

use crate::cbt::CbtLogs;
use crate::db::Db;
use crate::error::ApiResult;
use crate::faults::Faults;
use crate::methods::event::Subscription;
use crate::storage::Storage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

pub struct State {
    pub db: Db,
    pub storage: Storage,
    pub cbt: CbtLogs,
    pub faults: Faults,
    /// `event.register` subscriptions by session (forgotten on restart, like sessions).
    pub subscriptions: HashMap<String, Subscription>,
    /// Set by changes worth persisting; cleared once saved.
    pub dirty: bool,
    /// The last domid given to a domain (each start gets the next, as on a Xen host).
    pub last_domid: i64,
}

/// Fixed facts about the running simulator.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub state_dir: PathBuf,
    pub password: String,
    pub cert_pem: String,
    /// DNS name from the certificate, as `get_nbd_info` reports it.
    pub cert_subject: String,
    pub nbd_port: u16,
    pub plain_http: bool,
    /// xapi ≥ 24 (Quebec) removed `VM.snapshot_with_quiesce`: answer `MESSAGE_REMOVED`.
    pub quiesce_removed: bool,
    /// How long a booting guest's agent takes to report.
    pub guest_agent_delay: Duration,
}

pub struct Sim {
    state: Mutex<State>,
    pub runtime: Runtime,
    /// Woken on every change, for `event.from`.
    pub changed: Notify,
    /// Woken when a change is worth saving, for [`save_in_background`].
    save_wanted: Notify,
}

pub type SharedSim = Arc<Sim>;

impl Sim {
    pub fn new(state: State, runtime: Runtime) -> SharedSim {
        Arc::new(Sim { state: Mutex::new(state), runtime, changed: Notify::new(), save_wanted: Notify::new() })
    }

    /// The state lock; a panic elsewhere must not wedge the simulator.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then wakes event waiters and asks for a save if it changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let mut st = self.lock();
        let (events, saved) = (st.db.last_event_id(), st.db.saved_changes());
        let result = f(&mut st);
        if st.db.last_event_id() != events {
            self.changed.notify_waiters();
        }
        if st.db.saved_changes() != saved {
            st.dirty = true;
        }
        if st.dirty {
            self.save_wanted.notify_one();
        }
        result
    }

    /// Writes the state to the state dir if it changed since the last save.
    pub fn flush(&self) -> std::io::Result<()> {
        let bytes = {
            let mut st = self.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            crate::persist::serialize(&st)?
        };
        crate::persist::write(&self.runtime.state_dir, &bytes)
    }
}

/// How long a change waits before it is saved: a burst of calls costs one write.
const SAVE_DELAY: Duration = Duration::from_millis(200);

/// Saves the pool database shortly after it changes, as xapi flushes its in-memory
/// database from a thread of its own, and once more when the simulator stops. Saving
/// after every call made a pool of 1,000 VMs spend seconds per call rewriting itself.
pub async fn save_in_background(sim: SharedSim, mut stopped: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = sim.save_wanted.notified() => false,
            _ = stopped.changed() => true,
        };
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(SAVE_DELAY) => {}
                _ = stopped.changed() => {}
            }
        }
        if let Err(e) = sim.flush() {
            tracing::error!("saving the simulator's state in {}: {e}", sim.runtime.state_dir.display());
        }
        if stopping || *stopped.borrow() {
            return;
        }
    }
}
