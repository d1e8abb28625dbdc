//! The simulator's shared state: database, disk storage, CBT logs and faults behind
//! one lock, plus what never changes after start (certificate, ports, password).

use crate::cbt::CbtLogs;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::faults::Faults;
use crate::methods::event::Subscription;
use crate::storage::Storage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

pub struct State {
    pub db: Db,
    pub storage: Storage,
    pub cbt: CbtLogs,
    pub faults: Faults,
    /// `event.register` subscriptions by session (forgotten on restart, like sessions).
    pub subscriptions: HashMap<String, Subscription>,
    /// Set by changes worth persisting; cleared once saved.
    pub dirty: bool,
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
}

pub struct Sim {
    state: Mutex<State>,
    pub runtime: Runtime,
    /// Woken on every change, for `event.from`.
    pub changed: Notify,
}

pub type SharedSim = Arc<Sim>;

impl Sim {
    pub fn new(state: State, runtime: Runtime) -> SharedSim {
        Arc::new(Sim { state: Mutex::new(state), runtime, changed: Notify::new() })
    }

    /// The state lock; a panic elsewhere must not wedge the simulator.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then saves what changed and wakes event waiters.
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
            crate::persist::save(&self.runtime.state_dir, &st)
                .map_err(|e| ApiError::internal(format!("saving state: {e}")))?;
            st.dirty = false;
        }
        result
    }
}
