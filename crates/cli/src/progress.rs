//! Progress events drawn as indicatif bars on stderr: one bar per piece of work (a disk
//! of a VM in a phase), on a terminal only.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use xenvault_types::progress::{Event, Key, Progress, Task};

pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<Key, ProgressBar>>,
}

impl Bars {
    /// Bars on stderr when it is a terminal, unless `hidden` (JSON output, data on stdout).
    pub fn new(hidden: bool) -> Arc<Self> {
        let multi = (!hidden && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Arc::new(Self { multi, bars: Mutex::new(HashMap::new()) })
    }

    /// Removes the bars left on the screen (before a report is printed).
    pub fn clear(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }

    fn bar(&self, key: &Key) -> Option<ProgressBar> {
        self.bars.lock().ok().and_then(|b| b.get(key).cloned())
    }
}

impl Progress for Bars {
    fn event(&self, event: &Event) {
        let Some(multi) = &self.multi else { return };
        match event {
            Event::Started { key, label, total } => {
                let bar = multi.add(ProgressBar::new(*total));
                if let Ok(style) =
                    ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(label.clone());
                // A retry starts a new bar in place of the old one.
                if let Some(old) = self.bars.lock().ok().and_then(|mut b| b.insert(key.clone(), bar)) {
                    old.finish_and_clear();
                }
            }
            Event::Progressed { key, done, total } => {
                if let Some(bar) = self.bar(key) {
                    bar.set_length(*total);
                    // Events from several threads may arrive out of order: never go back.
                    bar.set_position(bar.position().max(*done));
                }
            }
            Event::Finished { key, .. } => {
                if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(key)) {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

/// One piece of work drawn as a bar (unless `hidden`).
pub fn task(hidden: bool, key: Key, label: impl Into<String>, total: u64) -> Task {
    Task::start(Bars::new(hidden), key, label, total)
}
