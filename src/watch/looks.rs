//! Looking at listed files (a stat, and the walk's [`Known`] check) on two threads, while
//! the walking thread lists the next batch.
//!
//! A restart over a large tree is mostly these looks: a `statx` and a ledger read per file.
//! The walk hands each batch of listed files to a helper thread ([`Helper`]) and goes on
//! listing the next batch; then it joins in on the batch handed over, a piece at a time,
//! and waits for the helper's last piece before the visitor gets the files, in order:
//!
//! 1. the helper and the walking thread take pieces of [`PIECE`] files from a shared
//!    counter, so neither waits while the other has work left ([`Batch::help`]);
//! 2. each piece's looks are stored at the files' places;
//! 3. when every file is looked at, the walking thread takes the looks
//!    ([`Batch::finish`]).

use std::fs::{DirEntry, Metadata};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use tracing::debug;

/// A check run on the stat-ing threads: true when the file (relative path, metadata) needs
/// no further look; the walk's visitor then hears of it as a known file
/// (`Visit::known_file` in module `scan`) instead of as a file to take.
pub type Known<'a> = dyn Fn(&str, &Metadata) -> bool + Sync + 'a;

/// Files taken at a time from a batch: small enough that the two threads end a batch
/// together, large enough that the shared counter and the lock are rare.
const PIECE: usize = 32;

/// What stat-ing one listed file found.
pub enum Look {
    /// A regular file the [`Known`] check sorted out.
    Known,
    File(Metadata),
    /// Vanished, or no longer a regular file.
    Gone,
}

/// Stats one listed file (relative to its open directory: `DirEntry::metadata` does not
/// follow symlinks, and the kernel does not walk the whole path again) and runs `known`.
pub fn look(entry: &DirEntry, rel: &str, known: Option<&Known<'_>>) -> Look {
    match entry.metadata() {
        Ok(meta) if meta.is_file() => {
            if known.is_some_and(|known| known(rel, &meta)) {
                Look::Known
            } else {
                Look::File(meta)
            }
        }
        Ok(_) => Look::Gone,
        Err(e) => {
            debug!(path = %entry.path().display(), error = %e, "file vanished while scanning");
            Look::Gone
        }
    }
}

/// Listed files, looked at by whichever thread takes each piece.
pub struct Batch {
    pub files: Vec<(DirEntry, String)>,
    /// The first file no thread has taken yet.
    next: AtomicUsize,
    looked: Mutex<Looked>,
    all_looked: Condvar,
}

struct Looked {
    looks: Vec<Option<Look>>,
    count: usize,
}

impl Batch {
    pub fn new(files: Vec<(DirEntry, String)>) -> Batch {
        let looks = std::iter::repeat_with(|| None).take(files.len()).collect();
        Batch {
            files,
            next: AtomicUsize::new(0),
            looked: Mutex::new(Looked { looks, count: 0 }),
            all_looked: Condvar::new(),
        }
    }

    /// Steps 1 and 2: looks at pieces until none is left to take.
    pub fn help(&self, known: Option<&Known<'_>>) {
        let total = self.files.len();
        loop {
            let start = self.next.fetch_add(PIECE, Ordering::Relaxed);
            if start >= total {
                return;
            }
            let end = (start + PIECE).min(total);
            let looks: Vec<Look> = self.files[start..end]
                .iter()
                .map(|(entry, rel)| look(entry, rel, known))
                .collect();
            let mut looked = self.looked.lock().unwrap_or_else(PoisonError::into_inner);
            for (place, look) in looked.looks[start..end].iter_mut().zip(looks) {
                *place = Some(look);
            }
            looked.count += end - start;
            if looked.count == total {
                self.all_looked.notify_all();
            }
        }
    }

    /// Step 3: helps until no piece is left, waits for the helper's last one and returns
    /// the looks, in the order of the files. `helper_gone` tells whether the helper thread
    /// ended (it only ends early by a panic, which then surfaces here).
    pub fn finish(&self, known: Option<&Known<'_>>, helper_gone: impl Fn() -> bool) -> Vec<Look> {
        self.help(known);
        let mut looked = self.looked.lock().unwrap_or_else(PoisonError::into_inner);
        while looked.count < self.files.len() {
            assert!(
                !helper_gone(),
                "the stat-ing thread ended in the middle of a batch"
            );
            looked = self
                .all_looked
                .wait_timeout(looked, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::take(&mut looked.looks)
            .into_iter()
            .map(|look| look.expect("every file of a finished batch is looked at"))
            .collect()
    }
}

/// The second stat-ing thread of a walk: takes the batches handed to it, in turn.
pub struct Helper<'scope> {
    batches: Sender<Arc<Batch>>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Helper<'scope> {
    /// Starts the thread; `None` when no thread is to be had (the walking thread then
    /// looks at every file itself).
    pub fn start<'k: 'scope>(
        scope: &'scope Scope<'scope, '_>,
        known: Option<&'scope Known<'k>>,
    ) -> Option<Helper<'scope>> {
        let (batches, handed) = channel::<Arc<Batch>>();
        let thread = std::thread::Builder::new()
            .name("upsync-scan".into())
            .spawn_scoped(scope, move || {
                for batch in handed {
                    batch.help(known);
                }
            })
            .ok()?;
        Some(Helper { batches, thread })
    }

    /// Hands `batch` over; false if the thread is gone.
    pub fn hand(&self, batch: &Arc<Batch>) -> bool {
        self.batches.send(Arc::clone(batch)).is_ok()
    }

    /// Whether the thread ended.
    pub fn gone(&self) -> bool {
        self.thread.is_finished()
    }
}
