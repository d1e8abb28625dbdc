//! The restore tests' simulated pool (crates/restore/tests/common, included rather than
//! copied: restore must not depend on the engine) and backups of its demo VM through the
//! engine, so the restores start from real restore points.
#![allow(dead_code)] // each test file uses its own part

#[path = "../../../restore/tests/common/mod.rs"]
mod sim_pool;

pub use sim_pool::*;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use xenvault_engine::job::{self, BackupOptions};
use xenvault_engine::report::Status;
use xenvault_engine::selection::Selector;
use xenvault_engine::store::Store;
use xenvault_engine::strategy::{Level, Requested};
use xenvault_types::progress::{Event, Phase, Progress, State, Tally};

/// Backs up the VM; returns the restore point.
pub async fn back_up(p: &Pool, level: Level) -> xenvault_repo::Manifest {
    let backup = BackupOptions {
        selectors: vec![Selector::NameOrUuid(VM.into())],
        level,
        strategy: Requested::Auto,
        ..Default::default()
    };
    let store = Store::from_repository(p.repo.clone());
    let report = job::backup(&p.host, &store, &backup, xenvault_types::progress::HiddenProgress::shared())
        .await
        .unwrap()
        .vms
        .into_iter()
        .next()
        .unwrap();
    assert!(matches!(report.status, Status::Ok), "{:?}", report.error);
    p.repo.restore_point(report.restore_point.as_deref().unwrap()).await.unwrap()
}

/// Scribbles on every disk of the demo VM (so a restore point holds data), then backs it up.
pub async fn scribble_and_back_up(p: &Pool) -> xenvault_repo::Manifest {
    let vm = p.host.vms().await.unwrap().into_iter().find(|v| v.name_label == VM).unwrap();
    for (n, vdi) in vdis_of(&p.host, &vm).await.iter().enumerate() {
        scribble(&p.sim, &vdi.uuid, 30, n as u64).await;
    }
    back_up(p, Level::Full).await
}

/// Cancels once a transfer of `phase` (a backup's read, a restore's upload) has moved some,
/// not all, of its bytes, and keeps what the transfer looked like then.
pub struct CancelMidway {
    pub cancel: CancellationToken,
    phase: Phase,
    tally: Arc<Tally>,
    at: Mutex<Option<State>>,
}

impl CancelMidway {
    pub fn new(phase: Phase, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(CancelMidway { cancel, phase, tally: Tally::new(), at: Mutex::new(None) })
    }

    /// The transfer's state when it was cancelled.
    pub fn cancelled_at(&self) -> State {
        self.at.lock().unwrap().clone().expect("a transfer was cancelled half-way")
    }
}

impl Progress for CancelMidway {
    fn event(&self, event: &Event) {
        self.tally.event(event);
        if let Event::Progressed { key, done, total } = event
            && key.phase == self.phase
            && *done > 0
            && done < total
            && !self.cancel.is_cancelled()
        {
            *self.at.lock().unwrap() = self.tally.states().remove(key);
            self.cancel.cancel();
        }
    }
}
