//! Progress events keyed by (VM, disk position, phase), emitted through one trait.
//!
//! Libraries report through [`Progress`] (the CLI draws bars from it, the service streams
//! the events); code that moves bytes holds a [`Task`], which numbers the bytes and sends
//! one event per step. Events carry running totals, not increments, so a listener that
//! joins late, or drops an event, still shows the right figures.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a piece of work does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// A disk read from the pool into the repository.
    Backup,
    /// A whole VM exported by the pool as one XVA into the repository (no disk in the key).
    BackupXva,
    /// An image file stored into the repository.
    Import,
    /// The target disk read to find where it differs from the restore point.
    Compare,
    /// A stored disk written to the pool.
    Restore,
    /// A stored disk or VM written out of the repository (a file, a stream).
    Export,
    /// Restore points copied to another repository.
    Copy,
    /// Stored data read back and checked.
    Verify,
}

/// Which piece of work an event is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The VM's uuid (the restore point's source id for other sources); none for work on
    /// a whole repository.
    pub vm: Option<String>,
    /// The disk's position (VBD userdevice); none for work on a whole VM or repository.
    pub disk: Option<u32>,
    pub phase: Phase,
}

impl Key {
    pub fn new(vm: Option<&str>, disk: Option<u32>, phase: Phase) -> Self {
        Key { vm: vm.map(str::to_owned), disk, phase }
    }

    /// Work on one disk of a VM.
    pub fn disk(vm: &str, disk: u32, phase: Phase) -> Self {
        Key::new(Some(vm), Some(disk), phase)
    }
}

/// One step of a piece of work. `done` never goes down within one start; a new
/// `Started` of the same key (a retry) begins again at zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Started {
        key: Key,
        /// For people: "web01 disk 0 (CBT + NBD)".
        label: String,
        /// Bytes the work will go through (0 while unknown).
        total: u64,
    },
    /// Bytes done so far, of `total` (which may change once the work knows better, e.g. a
    /// backup that learns which blocks changed).
    Progressed {
        key: Key,
        done: u64,
        total: u64,
    },
    Finished {
        key: Key,
        done: u64,
        total: u64,
    },
}

impl Event {
    pub fn key(&self) -> &Key {
        match self {
            Event::Started { key, .. } | Event::Progressed { key, .. } | Event::Finished { key, .. } => key,
        }
    }
}

/// Where progress goes: bars, a stream to a browser, nothing.
pub trait Progress: Send + Sync {
    fn event(&self, event: &Event);
}

/// Shows nothing.
pub struct HiddenProgress;

impl Progress for HiddenProgress {
    fn event(&self, _: &Event) {}
}

impl HiddenProgress {
    pub fn shared() -> Arc<dyn Progress> {
        Arc::new(HiddenProgress)
    }
}

/// One piece of work in progress: counts its bytes and reports each step. Dropping it
/// reports the end (also when the work failed or was cancelled).
pub struct Task {
    sink: Arc<dyn Progress>,
    key: Key,
    done: AtomicU64,
    total: AtomicU64,
}

impl Task {
    pub fn start(sink: Arc<dyn Progress>, key: Key, label: impl Into<String>, total: u64) -> Self {
        sink.event(&Event::Started { key: key.clone(), label: label.into(), total });
        Task { sink, key, done: AtomicU64::new(0), total: AtomicU64::new(total) }
    }

    /// A task nobody watches.
    pub fn hidden(phase: Phase) -> Self {
        Task::start(HiddenProgress::shared(), Key::new(None, None, phase), "", 0)
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Corrects the number of bytes the work will go through.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.sink.event(&Event::Progressed { key: self.key.clone(), done: self.done(), total });
    }

    /// `bytes` more are done.
    pub fn advance(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.sink.event(&Event::Progressed { key: self.key.clone(), done, total: self.total.load(Ordering::Relaxed) });
    }

    /// Everything up to `done` bytes is done (for work that walks forward through a disk
    /// and passes over what it leaves out, such as holes).
    pub fn reach(&self, done: u64) {
        let before = self.done.fetch_max(done, Ordering::Relaxed);
        if done > before {
            self.sink.event(&Event::Progressed {
                key: self.key.clone(),
                done,
                total: self.total.load(Ordering::Relaxed),
            });
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.sink.event(&Event::Finished {
            key: self.key.clone(),
            done: self.done(),
            total: self.total.load(Ordering::Relaxed),
        });
    }
}

/// The latest state of one piece of work, as [`Tally`] keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub label: String,
    pub done: u64,
    pub total: u64,
    pub finished: bool,
    /// How many times the work started (retries start again).
    pub starts: u32,
}

/// Keeps the latest state of every piece of work: what a service answers "how far is it?"
/// with, and what tests look at.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<Key, State>>);

impl Tally {
    pub fn new() -> Arc<Self> {
        Arc::new(Tally::default())
    }

    pub fn states(&self) -> BTreeMap<Key, State> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Progress for Tally {
    fn event(&self, event: &Event) {
        let Ok(mut states) = self.0.lock() else { return };
        let state = states.entry(event.key().clone()).or_default();
        match event {
            Event::Started { label, total, .. } => {
                *state = State { label: label.clone(), total: *total, starts: state.starts + 1, ..State::default() };
            }
            Event::Progressed { done, total, .. } => {
                state.done = state.done.max(*done);
                state.total = *total;
            }
            Event::Finished { done, total, .. } => {
                state.done = state.done.max(*done);
                state.total = *total;
                state.finished = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_reports_running_totals_and_its_end() {
        let tally = Tally::new();
        let key = Key::disk("vm-1", 0, Phase::Backup);
        {
            let task = Task::start(tally.clone(), key.clone(), "vm disk 0", 100);
            task.set_total(40);
            task.advance(10);
            task.reach(30);
            task.reach(20);
            task.advance(10);
            assert!(!tally.states()[&key].finished);
        }
        let state = &tally.states()[&key];
        assert_eq!((state.done, state.total, state.finished, state.starts), (40, 40, true, 1));

        // A retry starts again from zero.
        let task = Task::start(tally.clone(), key.clone(), "vm disk 0", 100);
        task.advance(5);
        let state = &tally.states()[&key];
        assert_eq!((state.done, state.total, state.finished, state.starts), (5, 100, false, 2));
    }

    #[test]
    fn events_serialise_with_their_kind_and_key() {
        let event = Event::Progressed { key: Key::disk("vm-1", 2, Phase::Restore), done: 5, total: 9 };
        let json = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"event": "progressed", "key": {"vm": "vm-1", "disk": 2, "phase": "restore"}, "done": 5, "total": 9})
        );
        assert_eq!(serde_json::from_value::<Event>(json).ok(), Some(event));
    }
}
