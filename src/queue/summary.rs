//! The status summary: what `upsync status` of a stopped daemon reads from the store,
//! saved next to the database when it closes in order, so that the report costs the same
//! at a million uploads as at ten.
//!
//! # Why
//!
//! The counts are kept per folder (module `counts`), so the report itself reads a few
//! entries per folder. Opening sled is what grows with the database: it loads its page
//! table and the map of its log segments, and rewrites every free segment of its file with
//! a filler. At 1,000,000 ledger entries that took 45–75 ms after a compaction and 0.7 s
//! (half a gigabyte written) before one, for a report of a few hundred bytes.
//!
//! # Never stale
//!
//! 1. Opening the store removes the summary, and syncs the directory, before it opens the
//!    database ([`remove`]). While a process holds the store (and its lock), there is none.
//! 2. The last clone of the store, dropped, closes the database in order ("Clean close" in
//!    the module doc of [`super`]) and, once the `closed` marker is on disk, writes the
//!    summary through a temporary file and a rename ([`write`]). A process that may not
//!    mark the database closed (its counts are not trusted) writes none.
//! 3. `upsync status` of a stopped daemon takes the state dir's lock and reads the summary
//!    ([`open_stopped`]); with no summary, or one it cannot read, it opens the database
//!    as before, and closing it then writes the summary for the next time.
//!
//! So a summary on disk was written by the last process that held the database, after its
//! last change. A daemon killed (or a power loss) while it runs leaves none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::keys::folder_tag;
use super::lock::StateLock;
use super::{FORMAT_VERSION, Job, Store, StoreError, Tally, to_ms};

/// The summary's file in the state dir.
pub const SUMMARY_FILE: &str = "status.summary";

/// What a report reads from the store ([`Store`] and [`Summary`] both answer).
pub trait StatusSource {
    /// Counts and last upload per folder the store knows.
    fn tallies(&self) -> Result<BTreeMap<String, Tally>, StoreError>;
    /// The failed and retry-wait jobs.
    fn jobs_needing_attention(&self) -> Result<Vec<Job>, StoreError>;
    /// Since when the folder's first due job has waited, if it is due by `now`.
    fn waiting_since(&self, folder: &str, now: SystemTime) -> Result<Option<u64>, StoreError>;
    /// The target each folder's uploads went to ([`Store::folder_target`]).
    fn folder_targets(&self) -> Result<BTreeMap<String, String>, StoreError>;
    /// The time the jobs' times are compared with: a running store's clock (module
    /// `clock`), else the system's.
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A running store answers from the trees, or, while a compaction holds them, from the
/// summary the compaction took as it began (nothing changes meanwhile).
impl StatusSource for Store {
    fn tallies(&self) -> Result<BTreeMap<String, Tally>, StoreError> {
        Store::tallies(self)
    }

    fn now(&self) -> SystemTime {
        Store::now(self)
    }

    fn jobs_needing_attention(&self) -> Result<Vec<Job>, StoreError> {
        self.frozen().map_or_else(
            || Store::jobs_needing_attention(self),
            |summary| summary.jobs_needing_attention(),
        )
    }

    fn waiting_since(&self, folder: &str, now: SystemTime) -> Result<Option<u64>, StoreError> {
        self.frozen().map_or_else(
            || Store::waiting_since(self, folder, now),
            |summary| summary.waiting_since(folder, now),
        )
    }

    fn folder_targets(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.frozen().map_or_else(
            || Store::folder_targets(self),
            |summary| summary.folder_targets(),
        )
    }
}

/// The store's answers to [`StatusSource`], as they were when it closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The layout version of the database it describes; another one is not read.
    format: u32,
    tallies: BTreeMap<String, Tally>,
    attention: Vec<Job>,
    /// When each folder's first claimable job is due (folders with none are absent).
    first_due_ms: BTreeMap<String, u64>,
    /// The target each folder's uploads went to; empty in a summary from before it.
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

impl Summary {
    /// What a state dir no upsync has used holds: nothing, in no folder.
    pub fn empty() -> Summary {
        Summary {
            format: FORMAT_VERSION,
            tallies: BTreeMap::new(),
            attention: Vec::new(),
            first_due_ms: BTreeMap::new(),
            targets: BTreeMap::new(),
        }
    }
}

impl StatusSource for Summary {
    fn tallies(&self) -> Result<BTreeMap<String, Tally>, StoreError> {
        Ok(self.tallies.clone())
    }

    fn jobs_needing_attention(&self) -> Result<Vec<Job>, StoreError> {
        Ok(self.attention.clone())
    }

    fn waiting_since(&self, folder: &str, now: SystemTime) -> Result<Option<u64>, StoreError> {
        let due = self.first_due_ms.get(folder).copied();
        Ok(due.filter(|due_ms| *due_ms <= to_ms(now)))
    }

    fn folder_targets(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self.targets.clone())
    }
}

/// A stopped daemon's state, for a report: its summary, or the opened database.
pub enum Stopped {
    /// The summary, read while holding the state dir's lock (kept until dropped, so no
    /// daemon starts in between).
    Summary(Summary, StateLock),
    Store(Store),
}

impl Stopped {
    pub fn source(&self) -> &dyn StatusSource {
        match self {
            Stopped::Summary(summary, _) => summary,
            Stopped::Store(store) => store,
        }
    }
}

/// Step 3: takes the lock of a stopped daemon's state dir and reads the summary, or opens
/// the database when there is no summary it can use.
pub fn open_stopped(state_dir: &Path) -> Result<Stopped, StoreError> {
    let lock = StateLock::acquire(state_dir)?;
    match read(state_dir) {
        Some(summary) => Ok(Stopped::Summary(summary, lock)),
        None => Store::open_locked(state_dir, lock).map(Stopped::Store),
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SUMMARY_FILE)
}

/// The summary, if there is one of this layout version that parses.
fn read(state_dir: &Path) -> Option<Summary> {
    let raw = std::fs::read(path(state_dir)).ok()?;
    match serde_json::from_slice::<Summary>(&raw) {
        Ok(summary) if summary.format == FORMAT_VERSION => Some(summary),
        Ok(_) => None,
        Err(err) => {
            tracing::debug!(error = %err, "the status summary is unreadable; the state database is opened instead");
            None
        }
    }
}

impl Store {
    /// The summary a running compaction took, if one runs.
    pub(super) fn frozen(&self) -> Option<Arc<Summary>> {
        self.inner
            .frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The summary of the database as it is now.
    pub(super) fn summarize(&self) -> Result<Summary, StoreError> {
        let tallies = Store::tallies(self)?;
        let mut first_due_ms = BTreeMap::new();
        for folder in tallies.keys() {
            if let Some(due) = self.first_due_ms(folder_tag(folder))? {
                first_due_ms.insert(folder.clone(), due);
            }
        }
        Ok(Summary {
            format: FORMAT_VERSION,
            attention: Store::jobs_needing_attention(self)?,
            tallies,
            first_due_ms,
            targets: Store::folder_targets(self)?,
        })
    }
}

/// Step 2: writes `summary` whole or not at all (temporary file, then rename).
pub(super) fn write(state_dir: &Path, summary: &Summary) -> std::io::Result<()> {
    let text = serde_json::to_vec(summary).map_err(std::io::Error::other)?;
    let temporary = state_dir.join(format!("{SUMMARY_FILE}.new"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path(state_dir))
}

/// Step 1: removes the summary, durably, before the database is opened.
pub(super) fn remove(state_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(state_dir)) {
        Ok(()) => std::fs::File::open(state_dir)?.sync_all(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}
