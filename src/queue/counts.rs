//! The per-folder figures `status`, the metrics and the systemd status line show, kept up
//! to date by the transitions themselves so that reading them costs one entry per folder.
//!
//! - `counts` tree: folder -> [`Tally`] (its jobs by state, its deletions and those the
//!   mass-delete guard holds, its ledger entries, its newest upload). Every job write goes
//!   through `Tx::put_job`/`Tx::remove_job` and every ledger write through
//!   `Tx::put_ledger`/`Tx::remove_ledger`; each notes the change in the transaction's
//!   [`Changes`], and `Tx::settle_counts` adds them to the folders' tallies at the end of
//!   the same transaction: one write per folder a transaction touched, whatever its size.
//! - `attention` tree: JobId -> empty for exactly the failed and retry-wait jobs, the ones
//!   `status` lists by name; the happy path (queued, active, done) never writes it.
//!
//! A count could still drift (a database written by a version that did not keep them, an
//! edit by hand, a bug), so the daemon checks them at start after a stop that was not
//! clean ([`Store::check_counts`], "Clean close" in the module doc of [`super`]): it
//! counts by walking the trees, repairs what differs and says so.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::delete;
use super::job::{FolderCounts, Job, JobKind, JobState};
use super::keys::{decode_job_key, job_key};
use super::record::FileRecord;
use super::summary::StatusSource;
use super::{Store, StoreError, Tx, TxResult, abort, encode, ledger_uploaded_at};

/// Key of the default tree's marker saying the counts are kept (a database created before
/// they were has none, and is counted once when opened).
pub(super) const COUNTS_KEY: &[u8] = b"counts";

/// One folder's entry in the `counts` tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    #[serde(flatten)]
    pub counts: FolderCounts,
    /// The newest `uploaded_at_ms` of the folder's ledger entries; 0 when none.
    #[serde(default)]
    pub last_upload_ms: u64,
}

/// The columns of [`FolderCounts`]: where a job in a given state, or a ledger entry, counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Column {
    Queued,
    Active,
    Finalizing,
    Importing,
    RetryWait,
    Failed,
    Done,
    Deletions,
    Held,
}

const COLUMNS: usize = 9;

/// Where one job counts: its state's column, and for a deletion also `deletions` (and
/// `held` while the mass-delete guard holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    state: Column,
    deletion: bool,
    held: bool,
}

impl Place {
    pub(super) fn of(job: &Job) -> Place {
        Place {
            state: Column::of(&job.state),
            deletion: job.kind == JobKind::Delete,
            held: delete::is_held(job),
        }
    }

    fn columns(self) -> impl Iterator<Item = Column> {
        [
            Some(self.state),
            self.deletion.then_some(Column::Deletions),
            self.held.then_some(Column::Held),
        ]
        .into_iter()
        .flatten()
    }
}

impl Column {
    pub(super) fn of(state: &JobState) -> Column {
        match state {
            JobState::Queued => Column::Queued,
            JobState::Active => Column::Active,
            JobState::Finalizing => Column::Finalizing,
            JobState::Importing => Column::Importing,
            JobState::RetryWait { .. } => Column::RetryWait,
            JobState::Failed { .. } => Column::Failed,
        }
    }

    /// Whether `status` lists the jobs of this column by name (the `attention` tree).
    pub(super) fn needs_attention(self) -> bool {
        matches!(self, Column::RetryWait | Column::Failed)
    }

    fn of_counts(self, counts: &mut FolderCounts) -> &mut u64 {
        match self {
            Column::Queued => &mut counts.queued,
            Column::Active => &mut counts.active,
            Column::Finalizing => &mut counts.finalizing,
            Column::Importing => &mut counts.importing,
            Column::RetryWait => &mut counts.retry_wait,
            Column::Failed => &mut counts.failed,
            Column::Done => &mut counts.done,
            Column::Deletions => &mut counts.deletions,
            Column::Held => &mut counts.held,
        }
    }
}

/// What one transaction changed, per folder, to be added to the tallies as it commits.
#[derive(Default)]
pub(super) struct Changes(RefCell<BTreeMap<String, Change>>);

#[derive(Default)]
struct Change {
    by_column: [i64; COLUMNS],
    last_upload_ms: u64,
}

impl Changes {
    pub(super) fn moved(&self, folder: &str, from: Option<Place>, to: Option<Place>) {
        if from == to {
            return;
        }
        let mut changes = self.0.borrow_mut();
        let change = changes.entry(folder.to_owned()).or_default();
        for column in from.into_iter().flat_map(Place::columns) {
            change.by_column[column as usize] -= 1;
        }
        for column in to.into_iter().flat_map(Place::columns) {
            change.by_column[column as usize] += 1;
        }
    }

    /// A ledger entry written (`new_entry`: where there was none) at `at_ms`.
    pub(super) fn uploaded(&self, folder: &str, new_entry: bool, at_ms: u64) {
        let mut changes = self.0.borrow_mut();
        let change = changes.entry(folder.to_owned()).or_default();
        change.by_column[Column::Done as usize] += i64::from(new_entry);
        change.last_upload_ms = change.last_upload_ms.max(at_ms);
    }

    /// A ledger entry removed.
    pub(super) fn forgotten(&self, folder: &str) {
        let mut changes = self.0.borrow_mut();
        changes.entry(folder.to_owned()).or_default().by_column[Column::Done as usize] -= 1;
    }
}

impl Change {
    fn apply(&self, tally: &mut Tally) {
        for (n, delta) in self.by_column.iter().enumerate() {
            let count = column_at(n).of_counts(&mut tally.counts);
            *count = count.saturating_add_signed(*delta);
        }
        tally.last_upload_ms = tally.last_upload_ms.max(self.last_upload_ms);
    }
}

fn column_at(n: usize) -> Column {
    [
        Column::Queued,
        Column::Active,
        Column::Finalizing,
        Column::Importing,
        Column::RetryWait,
        Column::Failed,
        Column::Done,
        Column::Deletions,
        Column::Held,
    ][n]
}

fn decode_tally(raw: &[u8], folder: &str) -> Result<Tally, StoreError> {
    serde_json::from_slice(raw).map_err(|err| StoreError::Corrupt {
        tree: "counts",
        key: folder.to_owned(),
        detail: err.to_string(),
    })
}

impl Tx<'_> {
    /// Adds this transaction's changes to the tallies of the folders it touched.
    pub(super) fn settle_counts(&self) -> TxResult<()> {
        let changes = std::mem::take(&mut *self.changes.0.borrow_mut());
        for (folder, change) in changes {
            let mut tally = match self.counts.get(folder.as_bytes())? {
                None => Tally::default(),
                Some(raw) => match decode_tally(&raw, &folder) {
                    Ok(tally) => tally,
                    Err(err) => return abort(err),
                },
            };
            change.apply(&mut tally);
            if tally == Tally::default() {
                self.counts.remove(folder.as_bytes())?;
            } else {
                self.counts.insert(folder.as_bytes(), encode(&tally))?;
            }
        }
        Ok(())
    }

    /// Keeps the `attention` index and the tallies in step with a job moving from `old`
    /// (`None`: a new job) to `new` (`None`: removed).
    pub(super) fn count_job(&self, old: Option<&Job>, new: Option<&Job>) -> TxResult<()> {
        let Some(job) = new.or(old) else {
            return Ok(());
        };
        let from = old.map(Place::of);
        let to = new.map(Place::of);
        if from == to {
            return Ok(());
        }
        self.changes.moved(&job.key.folder, from, to);
        let (was, is) = (
            from.is_some_and(|place| place.state.needs_attention()),
            to.is_some_and(|place| place.state.needs_attention()),
        );
        if was && !is {
            self.attention.remove(&job_key(job.id))?;
        } else if is && !was {
            self.attention.insert(&job_key(job.id), &[])?;
        }
        Ok(())
    }
}

/// Where the kept figures differ from the walked ones: per folder, the tally kept and the
/// one counted (`None`: no entry), and the `attention` entries to remove and to add.
#[derive(Debug, Default)]
pub(super) struct Drift {
    pub tallies: Vec<(String, Option<Tally>, Option<Tally>)>,
    pub attention_stale: Vec<Vec<u8>>,
    pub attention_missing: Vec<Vec<u8>>,
}

/// What walking the trees finds: the tallies and the jobs that need attention.
struct Walked {
    tallies: BTreeMap<String, Tally>,
    attention: Vec<Vec<u8>>,
}

impl Store {
    /// Every folder's tally (one read per folder). While a compaction holds the trees, the
    /// tallies of the summary it took as it began: nothing changes meanwhile, and a read of
    /// the trees would make it give way (a paused scan asks every tick, reports every few
    /// seconds).
    pub fn tallies(&self) -> Result<BTreeMap<String, Tally>, StoreError> {
        if let Some(summary) = self.frozen() {
            return summary.tallies();
        }
        let mut tallies = BTreeMap::new();
        for entry in self.handles().trees.counts.iter() {
            let (raw_folder, raw) = entry.map_err(|err| self.db_error(err))?;
            let folder = String::from_utf8_lossy(&raw_folder).into_owned();
            let tally = decode_tally(&raw, &folder)?;
            tallies.insert(folder, tally);
        }
        Ok(tallies)
    }

    /// One folder's tally (one read; zero for a folder without any), as [`Store::tallies`]
    /// sees it.
    pub fn tally(&self, folder: &str) -> Result<Tally, StoreError> {
        if let Some(summary) = self.frozen() {
            return Ok(summary.tallies()?.remove(folder).unwrap_or_default());
        }
        let raw = self
            .handles()
            .trees
            .counts
            .get(folder.as_bytes())
            .map_err(|err| self.db_error(err))?;
        raw.map_or_else(|| Ok(Tally::default()), |raw| decode_tally(&raw, folder))
    }

    /// Jobs by state and uploaded files (`done`, the ledger entries) per folder.
    pub fn counts(&self) -> Result<BTreeMap<String, FolderCounts>, StoreError> {
        Ok(self
            .tallies()?
            .into_iter()
            .map(|(folder, tally)| (folder, tally.counts))
            .collect())
    }

    /// The time of the newest upload recorded in the ledger, per folder (ms since the epoch).
    pub fn last_uploads(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .tallies()?
            .into_iter()
            .filter(|(_, tally)| tally.last_upload_ms > 0)
            .map(|(folder, tally)| (folder, tally.last_upload_ms))
            .collect())
    }

    /// The failed and retry-wait jobs, in id order, from the `attention` index.
    pub fn jobs_needing_attention(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for entry in self.handles().trees.attention.iter().keys() {
            let raw = entry.map_err(|err| self.db_error(err))?;
            if let Some(job) = decode_job_key(&raw).map(|id| self.get(id)).transpose()? {
                jobs.extend(job);
            }
        }
        Ok(jobs)
    }

    /// Counts every folder by walking the jobs and the ledger, and repairs the `counts` and
    /// `attention` trees where they differ, with a warning naming what was wrong. Run at
    /// daemon start before anything else writes (a write meanwhile would look like drift).
    /// Returns how many folders were repaired.
    pub fn check_counts(&self) -> Result<usize, StoreError> {
        self.reconcile_counts(true)
    }

    /// [`Store::check_counts`], warning about each repair when `warn`.
    fn reconcile_counts(&self, warn: bool) -> Result<usize, StoreError> {
        self.unmark_closed()?;
        let drift = self.counts_drift()?;
        let handles = self.handles();
        let trees = &handles.trees;
        for (folder, kept, counted) in &drift.tallies {
            if warn {
                tracing::warn!(
                    folder,
                    kept = ?kept.as_ref().map(|tally| &tally.counts),
                    counted = ?counted.as_ref().map(|tally| &tally.counts),
                    "repaired the per-folder counts of the state database"
                );
            }
            match counted {
                Some(tally) => trees.counts.insert(folder.as_bytes(), encode(tally)),
                None => trees.counts.remove(folder.as_bytes()),
            }
            .map_err(|err| self.db_error(err))?;
        }
        let (stale, missing) = (&drift.attention_stale, &drift.attention_missing);
        if warn && !(stale.is_empty() && missing.is_empty()) {
            tracing::warn!(
                stale = stale.len(),
                missing = missing.len(),
                "repaired the list of failed and retrying jobs of the state database"
            );
        }
        for raw in stale {
            trees
                .attention
                .remove(raw)
                .map_err(|err| self.db_error(err))?;
        }
        for raw in missing {
            trees
                .attention
                .insert(raw.as_slice(), &[])
                .map_err(|err| self.db_error(err))?;
        }
        self.flush()?;
        self.inner
            .counts_trusted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(drift.tallies.len())
    }

    /// Where the `counts` and `attention` trees differ from what walking the trees finds.
    pub(super) fn counts_drift(&self) -> Result<Drift, StoreError> {
        let walked = self.walk_counts()?;
        let kept = self.tallies()?;
        let folders: BTreeSet<&String> = walked.tallies.keys().chain(kept.keys()).collect();
        let mut tallies = Vec::new();
        for folder in folders {
            let stored = kept.get(folder);
            let mut counted = walked.tallies.get(folder).cloned().unwrap_or_default();
            // Entries may leave the ledger; the newest upload stays what it was.
            counted.last_upload_ms = counted
                .last_upload_ms
                .max(stored.map_or(0, |tally| tally.last_upload_ms));
            let counted = (counted != Tally::default()).then_some(counted);
            if stored != counted.as_ref() {
                tallies.push((folder.clone(), stored.cloned(), counted));
            }
        }
        let mut kept_attention = Vec::new();
        for entry in self.handles().trees.attention.iter().keys() {
            kept_attention.push(entry.map_err(|err| self.db_error(err))?.to_vec());
        }
        let absent_from = |list: &[Vec<u8>], other: &[Vec<u8>]| -> Vec<Vec<u8>> {
            list.iter()
                .filter(|raw| other.binary_search(raw).is_err())
                .cloned()
                .collect()
        };
        Ok(Drift {
            attention_stale: absent_from(&kept_attention, &walked.attention),
            attention_missing: absent_from(&walked.attention, &kept_attention),
            tallies,
        })
    }

    /// Builds the counts of a database that does not keep them yet, and marks it.
    pub(super) fn count_if_uncounted(&self) -> Result<(), StoreError> {
        let handles = self.handles();
        let db = &handles.db;
        if db
            .contains_key(COUNTS_KEY)
            .map_err(|err| self.db_error(err))?
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let folders = self.reconcile_counts(false)?;
        db.insert(COUNTS_KEY, b"1")
            .map_err(|err| self.db_error(err))?;
        self.flush()?;
        tracing::info!(
            folders,
            took_ms = started.elapsed().as_millis() as u64,
            "counted the jobs and uploads of a state database written by an older version"
        );
        Ok(())
    }

    /// The tallies and the attention list as the trees say they should be.
    fn walk_counts(&self) -> Result<Walked, StoreError> {
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        let mut attention = Vec::new();
        for job in self.jobs()? {
            let place = Place::of(&job);
            let counts = &mut tallies.entry(job.key.folder.clone()).or_default().counts;
            for column in place.columns() {
                *column.of_counts(counts) += 1;
            }
            if place.state.needs_attention() {
                attention.push(job_key(job.id).to_vec());
            }
        }
        for entry in self.handles().trees.ledger.iter() {
            let (raw_key, raw) = entry.map_err(|err| self.db_error(err))?;
            let key = super::keys::stored_file_key(&raw_key)?;
            let Some(upload) = FileRecord::split(&raw).upload else {
                continue;
            };
            let uploaded_at_ms = ledger_uploaded_at(upload, &raw_key)?;
            let tally = tallies.entry(key.folder).or_default();
            tally.counts.done += 1;
            tally.last_upload_ms = tally.last_upload_ms.max(uploaded_at_ms);
        }
        attention.sort();
        Ok(Walked { tallies, attention })
    }
}
