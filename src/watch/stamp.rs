//! The folder's side of giving ledger entries an older version wrote their files' change
//! times (the queue's module `stamp`, which says why this waits for the scan's end): a
//! walk of the folder's entries, one step at a time, looking at each file the queue asks
//! about.
//!
//! A watched folder takes a step per tick once its whole-folder look has ended, so the
//! walk never holds the start-up and the folder's events are handled between its steps; a
//! one-shot scan walks it all at its end.

use std::path::Path;
use std::time::Instant;

use tracing::info;

use super::Sink;
use crate::fingerprint::Fingerprint;
use crate::queue::StampFrom;

/// A walk under way.
pub(super) struct Stamping {
    from: Option<StampFrom>,
    stamped: u64,
    started: Instant,
}

impl Stamping {
    /// A new walk, if looks at the folder asked for one since the last.
    pub fn if_wanted(folder_key: &str, sink: &dyn Sink) -> Option<Stamping> {
        sink.take_unstamped(folder_key).then(|| Stamping {
            from: None,
            stamped: 0,
            started: Instant::now(),
        })
    }

    /// A whole walk, if one is wanted.
    pub fn run_if_wanted(root: &Path, folder_key: &str, sink: &dyn Sink) {
        if let Some(mut walk) = Stamping::if_wanted(folder_key, sink) {
            while !walk.step(root, folder_key, sink) {}
        }
    }

    /// Takes one step; `true` once the walk has ended (then logged).
    pub fn step(&mut self, root: &Path, folder_key: &str, sink: &dyn Sink) -> bool {
        let step = sink.stamp_step(folder_key, self.from.as_ref(), &mut |rel| {
            look(&root.join(rel))
        });
        self.stamped += step.stamped;
        self.from = step.next;
        if self.from.is_some() {
            return false;
        }
        if self.stamped > 0 {
            info!(
                entries = self.stamped,
                took_ms = self.started.elapsed().as_millis() as u64,
                "ledger entries written by an older version now hold their files' change times"
            );
        }
        true
    }
}

/// The fingerprint of the regular file at `path` now, if it is one.
fn look(path: &Path) -> Option<Fingerprint> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|meta| Fingerprint::of(&meta))
}
