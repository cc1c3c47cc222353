//! The durable job queue and upload ledger: one sled database under `state_dir`.
//!
//! The queue owns what must survive a crash: which files still have to be uploaded (jobs),
//! how far an upload got (progress), and which version of every file is already on the
//! remote (ledger). Everything else (settle timers, live byte counters) is rebuilt at start.
//!
//! # On-disk layout
//!
//! ```text
//! state_dir/
//!   upsync.lock      flock(2)ed exclusively while a Store is open (see `lock`)
//!   db.new/          only while a new database is being created and stamped; renamed to db
//!   db.compact/      only while a compaction copies the database, then holds the old one
//!                    until it is removed; removed at open if a crash left it (`compact`)
//!   db/              the sled database:
//!     default tree   "format"  -> "6"  (ASCII decimal; "1" to "5" are upgraded at open,
//!                                       see `upgrade`; anything else is refused)
//!                    "counts"  -> "1"  (the counts below are kept; absent in a database
//!                                       from before them, which is counted at open)
//!                    "closed"  -> "1"  (the last process closed the database in order;
//!                                       removed before a process first changes
//!                                       anything, written back at close)
//!                    "id_base" -> u64 BE (added to sled's ids to make job ids; absent
//!                                       means 0; written by a compaction)
//!                    "target" \0 folder -> the folder's target (UTF-8) its ledger
//!                                       entries were uploaded to; absent until the
//!                                       daemon first ran with the folder; "changing"
//!                                       while a change of target drops its ledger
//!     jobs           JobId (u64 BE: line prefix, 3 bytes ++ sequence, 5 bytes) -> Job
//!                                                           (binary, module `binary`;
//!                                                           JSON if written before format 6)
//!     ledger         folder \0 rel                       -> LedgerEntry (JSON), the file's
//!                                                           JobId before it if it has a
//!                                                           job (module `record`); a
//!                                                           new file's JobId is kept in
//!                                                           memory instead (`pointers`)
//!     progress       JobId (u64 BE)                      -> backend resume state (opaque)
//!     due            folder tag (8 bytes) ++ due ms (u64 BE) ++ JobId (u64 BE) -> empty
//!     counts         folder                              -> Tally (JSON): jobs by state,
//!                                                           ledger entries, newest upload
//!     attention      JobId (u64 BE)                      -> empty (failed, retry-wait)
//!     claim_marks    folder tag (8 bytes)                -> JobId (u64 BE) ++ ms (u64 BE):
//!                                                           the folder's jobs in line up
//!                                                           to that id were claimed then
//!                                                           (module `marks`)
//! ```
//!
//! Beside its data file, sled keeps `db/snap.<lsn>`, a summary of its log up to `lsn`,
//! written as `snap.<lsn>.generating` and renamed once whole. A start removes a
//! `.generating` file a full disk or a kill left behind (`remove_unfinished_snapshots`),
//! which sled would otherwise read as the newest snapshot and refuse as corrupt.
//!
//! A job id is its folder's line prefix (the start of [`keys::folder_tag`]) followed by a
//! number from sled's `generate_id` plus the `id_base` a compaction leaves, so ids are
//! unique for the life of the database, across compactions, and
//! the `jobs` tree holds each folder's jobs together, oldest first (jobs of a database
//! from before format 3 keep their plain numbers). Big-endian keys make sled's byte order
//! numeric order. A folder's claimable jobs wait in two places: the jobs `offer` created
//! and nothing has changed since wait *in line* ([`Job::in_line`], module `line`), in the
//! order of their ids, without any other entry, and every other one in the `due` index,
//! grouped by folder ([`keys::folder_tag`]) and in due order. A claim takes the earlier of
//! the two first ones, and claims take the folders in turn (`claim`), so a backlog of one
//! folder never delays another folder's files. `due` is an index only: entries of an older
//! layout are dropped and rebuilt from the jobs by `recover_after_restart`. A batch that
//! claims the first jobs of a line moves its folder's claim mark over them instead of
//! writing each one (module `marks`): every read of a job sees one the mark covers as
//! active, and its next write stores that.
//!
//! `counts` and `attention` (module `counts`) let `status`, the metrics and the systemd
//! status line read one entry per folder and the failed and retrying jobs alone, instead
//! of walking the jobs and the ledger.
//!
//! # Job states
//!
//! ```text
//!            offer                claim            mark_finalizing
//!   (none) ───────> queued ─────────────> active ──────────────> finalizing
//!                    ^  ^                  │  │                     │  │  │
//!                    │  └─ retry-wait <────┘  └────> failed <───────┘  │  │ mark_importing
//!                    │     (retry_later;          (fail; retry_failed  │  v
//!                    │      release_waiting       or a new version)   │  importing ──> failed
//!                    │      makes it due now)                         │  │  │
//!                    │                                     complete   v  v  │ complete
//!                    │                                  (done: ledger only) <┘
//!                    └──── requeue / complete with a moved fingerprint /
//!                          requeue_corrupt (importing) / recover_after_restart (active,
//!                          finalizing)
//! ```
//!
//! Importing jobs wait for the remote to finish importing bytes it already holds (Redivis
//! processes a posted upload): no worker holds them, they are not due, and they survive
//! restarts untouched, so the wait resumes and nothing is posted twice.
//!
//! # Job kinds
//!
//! A job uploads its file's current version ([`JobKind::Upload`]) or, in a folder that
//! propagates deletions, deletes the copy the ledger records for a file that is gone
//! ([`JobKind::Delete`], see `delete`). Both kinds go through the same states; a file
//! keeps one job whatever its kind, so a deletion and an upload of one path are never
//! pending at once: an upload that loses its file becomes a deletion, and a deletion whose
//! file comes back becomes an upload (after it ends, if it is running). The mass-delete
//! guard holds deletions in `failed`, with a reason saying so, until the operator approves
//! them (`retry_failed` with [`RetrySelection::Deletes`]).
//!
//! # Invariants
//!
//! The tests check 1 to 3, 6's claimed fingerprints and 8 after the operations of each test
//! (`assert_invariants`, which scans every tree), 4 per file (`assert_covered`), 5 across
//! reopen and recovery, 6 with a file that changes during an attempt or an import.
//!
//! 1. **One job per file.** The `ledger` entry of `job.key` names `job.id`, for every job,
//!    and every job a `ledger` entry names exists and has that key; for a file without an
//!    entry, a pointer kept in memory does instead (module `pointers`, rebuilt from the
//!    jobs after an open). Offering a file that has a job updates that job (coalescing); it
//!    never creates a second one.
//! 2. **The `due` index and the lines are exactly the claimable jobs.** A job in line
//!    ([`Job::in_line`]) is queued, was created by `offer` and has been written since only
//!    as queued and due at the same time (`Tx::put_job` takes it out of line for good
//!    otherwise); its id starts with its folder's line prefix, and it has no `due` entry.
//!    Every other queued job has one entry, under its folder's tag, at its `updated_at_ms`
//!    (the time it was queued) and every retry-wait job one at its `next_attempt_at_ms`
//!    ([`Job::due_entry_ms`]); active, finalizing, importing and failed jobs have none.
//!    `claim` takes jobs only from the index and the lines, and removes the entry or takes
//!    the job out of line in the same transaction that makes the job active, so no job is
//!    claimed twice. A job stored in line that its folder's claim mark covers is active,
//!    not in line (module `marks`): every read of a job goes through the mark.
//! 3. **Progress belongs to a live job.** `progress` entries exist only for existing jobs,
//!    and are removed when the job completes, fails, is dropped, starts importing, or is
//!    queued again for a change found during its attempt (whose backend gave up the upload
//!    on the remote first). A retry-wait keeps them: the pause resumes the same session. So
//!    does a job failed because its folder left the configuration (`fail_keeping_upload`):
//!    the folder's return queues it again, to resume or give up that upload; a file found
//!    gone meanwhile makes it due, as below. A waiting job that takes a new fingerprint (an
//!    offer, an attempt that ends for a transient reason after one, or one a crash cut
//!    short, found by `recover_after_restart`) keeps them too, so that its next attempt
//!    gives up on the remote the upload of the old bytes: a backend never resumes a saved
//!    upload of another version (each compares the fingerprint it saved), and a KiFS
//!    multipart upload is cancelled even when the new version goes whole. Likewise a
//!    waiting upload that becomes a deletion keeps its progress, which no deletion resumes;
//!    the deleter gives that upload up on the remote, and the progress goes when the
//!    deletion ends; a deletion that turns back into an upload (its file is back) keeps it,
//!    as a new version does. A deletion dropped with its folder (`drop_pending_deletions`)
//!    that kept progress turns back into that upload, due now, for a worker to find its
//!    file gone and give the upload up. Progress is written only for what the remote
//!    acknowledged (the caller's duty), and flushed before returning.
//! 4. **A changed file is never forgotten.** A job is removed only (a) by `complete` in the
//!    same transaction that writes the ledger entry for the job's current fingerprint, (b) by
//!    `offer` when the ledger already holds the offered fingerprint and the job had failed
//!    or was a deletion, (c) by `drop_job` or `drop_vanished` because the file vanished
//!    (never while importing: those bytes are on the remote, and the import's end records
//!    them; never a deletion, nor an upload marked for deletion; a waiting upload with
//!    saved progress, or a failed one that kept it, is left, due, for the worker to give
//!    that upload up and drop it), or
//!    (d) by `complete_deletion` once the remote copy is deleted, or by `drop_pending_deletions`
//!    when the whole folder is gone (its files are looked at again when it is back). So a
//!    file whose fingerprint differs from its ledger entry keeps a queued, active,
//!    importing, retry-wait or failed job. `offer` itself is not flushed: after a crash the
//!    start-up scan offers every file again, which re-derives any job that was lost with
//!    the unflushed tail of the log.
//! 5. **Finalizing is durable before the finalize call.** `mark_finalizing` sets
//!    `finalize_started` and flushes before returning; the flag survives restarts and
//!    `recover_after_restart`, and is cleared only when the job takes new content, so the
//!    backend asks the remote whether the finalize happened before doing it again.
//! 6. **An attempt knows whether its content moved.** [`Job::claimed`] holds, for exactly
//!    the active and finalizing jobs, the fingerprint the job had when it was claimed; an
//!    importing job's [`Import`] holds the fingerprint whose bytes were posted. When the
//!    attempt or the import ends and `fingerprint` has moved on (an `offer` came in
//!    meanwhile), the saved progress describes the old bytes: `fail` then drops it (the
//!    backend gave the upload up first), `retry_later` and `recover_after_restart` keep it
//!    for the next attempt to give up (invariant 3), and `retry_later`, `fail` and
//!    `complete` queue the job afresh for the new version, exactly as if the offer had
//!    arrived just after them. So progress is resumed only for the content it belongs to
//!    (a backend compares the fingerprint it saved), and a file changed during its import
//!    is uploaded again once the import settles.
//! 7. **Every state transition is one sled transaction** over all the trees, so a crash
//!    leaves each job either before or after a transition, never half-way. Transitions the
//!    invariants above depend on (progress, finalizing, importing, complete, fail,
//!    retry-wait, requeue, retry of failed jobs, recovery) are flushed before they return.
//! 8. **The counts are the trees'.** For every folder, `counts` holds its jobs by state
//!    (and its deletions, and the held ones), its ledger entries (no entry when all are
//!    zero and it never uploaded), and the newest upload time; `attention` holds exactly
//!    the failed and retry-wait jobs. Every job write goes through
//!    `Tx::put_job`/`Tx::remove_job` and every ledger write through
//!    `Tx::put_ledger`/`Tx::remove_ledger`, which note the change, and the transaction adds it to the counts
//!    before it commits. `check_counts` (at daemon start, from `recover_after_restart`,
//!    unless the database was closed cleanly: see "Clean close") repairs any drift and
//!    warns about it.
//!
//! # Clean close
//!
//! Checking the counts walks every job and every ledger entry: at a million uploads it
//! was most of a restart. A database closed in order needs no check (every change of the
//! counts was made in the transaction that made the change they count), so:
//!
//! 1. a new database is stamped `closed` (its counts, all zero, are right);
//! 2. the first change a process makes (a transaction, a repair of the counts) removes
//!    `closed` and flushes before it goes ahead, so a process that is killed, or loses
//!    power, after changing anything leaves a database without it; a process that only
//!    reads (`upsync status` of a stopped daemon) writes nothing;
//! 3. `recover_after_restart` checks the counts only when the open found no `closed`;
//! 4. closing (the last clone of the Store dropped) writes `closed` back (if step 2
//!    removed it) and flushes, but only if the counts are trusted: the open found
//!    `closed`, or this process checked them. A process that opened a database left by a
//!    crash and did not check (`upsync status` of a stopped daemon) leaves it unmarked,
//!    for the next start to check. A close that leaves the marker also leaves the status
//!    summary a report of the stopped daemon reads (module `summary`).
//! 5. a process whose close wrote `closed` back in step 4 (it changed the database) then
//!    opens it once more and closes it again (`SnapshotOnClose`). sled sums up its log
//!    into a snapshot only as it opens a database, by reading all the log written since
//!    the last one: without this, the start after a burst read everything the burst
//!    wrote (after the first mirror of 200,000 files, opening took 0.11 s instead of
//!    0.01 s; see the README for a million). A stop pays it instead, once, while nothing
//!    waits on the database; a crash leaves it to the next start, as before. A database
//!    whose directory is gone by then is left alone: sled would create an empty one in
//!    its place.
//!
//! # No background work
//!
//! sled is opened without its periodic flusher thread (`sled_config`). That thread wrote
//! out buffered data every 500 ms and was the only place sled cleaned its log segments;
//! after a burst of churn (tens of thousands of jobs created and removed) its cleaning
//! never settles on a database like this one. It keeps draining the newest segment, whose
//! pages it moves to the lowest free segment, which becomes the newest, and so on, while
//! the sparse segments at the end of the file that would let it shrink wait behind them.
//! An idle daemon then rewrote about 1 MB/s and fsynced twice a second for as long as it
//! ran. Without the thread:
//!
//! 1. nothing is written that upsync did not write: an idle daemon writes nothing;
//! 2. every transition that must survive a crash flushes before returning (invariant 7);
//!    what is not flushed (offers, dropped jobs) reaches the disk with the next flush or
//!    when sled's write buffer fills, and the daemon flushes once a second while it runs
//!    (its check that the database can still be written), and on close; a flush called
//!    from an async task hands that task's runtime thread to the other tasks while it
//!    waits for the disk (`blocking`);
//! 3. space is still reused: a log segment whose pages have all been rewritten since is
//!    freed and filled again. A segment keeping a few live pages among dead ones is not,
//!    so after churn the files stay as large as the churn made them: the daemon compacts
//!    the database (module `compact`) once it is idle, when the files are more than
//!    twice its live data.
//!
//! sled's page cache is bounded ([`disk::CACHE_CAPACITY`]) instead of its 1 GB default,
//! with which every page a start-up scan or a status count touched stayed decoded in
//! memory.
//!
//! Only one process may use a state dir: [`Store::open`] takes an exclusive `flock` on
//! `state_dir/upsync.lock` and keeps it for the Store's lifetime (all clones share it).

pub mod bell;
mod binary;
mod blocking;
mod claim;
mod clock;
mod codec;
mod compact;
mod complete;
mod counts;
mod delete;
mod disk;
mod error;
mod files;
mod import;
mod job;
mod keys;
mod line;
mod lock;
mod marks;
mod pointers;
mod record;
mod stamp;
mod summary;
#[cfg(test)]
mod tests;
mod tx;
mod upgrade;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use parking_lot::{RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
};

pub use claim::{AsClaimed, Claimed};
pub use compact::{CompactPolicy, Compaction};
pub use complete::{Completed, Completion};
pub use counts::Tally;
pub use delete::{DeletionTally, HELD_BY_GUARD};
pub use error::StoreError;
pub use files::FilePick;
pub use job::{
    FileKey, FolderCounts, Import, Job, JobId, JobKind, JobState, LedgerEntry, Offer,
    RetrySelection, Space,
};
pub use keys::{FolderTag, folder_tag};
pub use lock::StateLock;
pub use stamp::{StampFrom, StampStep};
pub use summary::{SUMMARY_FILE, StatusSource, Stopped, Summary, open_stopped};

use crate::fingerprint::Fingerprint;
use bell::Bell;
use codec::{
    ReadJob, decode_job, decode_ledger, encode, ledger_fingerprint, ledger_uploaded_at,
    records_exactly, valid_key, with_fingerprint,
};
pub use disk::files_size;
use disk::{FormatError, open_db, open_sled, sled_config};
use keys::{decode_due_key, decode_job_key, file_key, job_key};
use pointers::{Noted, Pointers};
use record::FileRecord;
use tx::{SavedUpload, Tx, TxTree, is_attempt, job_due_key, queued_afresh};

/// The layout version this code writes (the default tree's `format` key). It reads this
/// one and upgrades older ones at open (module `upgrade`).
pub const FORMAT_VERSION: u32 = 6;
const FORMAT_KEY: &[u8] = b"format";
/// Key of the default tree's marker of an orderly close (see "Clean close" in the module doc).
const CLEAN_CLOSE_KEY: &[u8] = b"closed";
/// Prefix of the default tree's keys that hold each folder's target ("target" \0 folder).
const FOLDER_TARGET_PREFIX: &[u8] = b"target\0";
const DB_DIR: &str = "db";

/// Milliseconds since the Unix epoch; times before it (a badly set clock) count as 0.
pub fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct Trees {
    jobs: sled::Tree,
    ledger: sled::Tree,
    progress: sled::Tree,
    due: sled::Tree,
    counts: sled::Tree,
    attention: sled::Tree,
    claim_marks: sled::Tree,
}

/// The open sled database with its trees: replaced as a whole when a compaction swaps in
/// a rewritten database (module `compact`).
struct Handles {
    db: sled::Db,
    trees: Trees,
    /// Added to sled's ids to make job ids: a compacted database starts sled's counter
    /// afresh, above every id the database it replaces gave out (module `compact`).
    id_base: u64,
}

impl Handles {
    fn open(db: sled::Db) -> sled::Result<Handles> {
        let tree = |name: &str| db.open_tree(name);
        let trees = Trees {
            jobs: tree("jobs")?,
            ledger: tree("ledger")?,
            progress: tree("progress")?,
            due: tree("due")?,
            counts: tree("counts")?,
            attention: tree("attention")?,
            claim_marks: tree(marks::MARKS_TREE)?,
        };
        let id_base = compact::id_base(&db)?;
        Ok(Handles { db, trees, id_base })
    }
}

struct Inner {
    // Field order is drop order: the database is closed before the lock is released, so a
    // process that takes the lock next never sees sled still writing.
    /// Read-locked by every use of the database (recursively: a reader may read again), and
    /// write-locked only by a compaction, which swaps them.
    handles: RwLock<Handles>,
    /// Dropped right after `handles`, while the lock is still held: step 5 of "Clean
    /// close" in the module doc.
    snapshot: SnapshotOnClose,
    state_dir: PathBuf,
    /// Flushes that wrote something (`Store::flushes`), a cost the benchmark reports.
    flushes: AtomicU64,
    /// Entries set or removed by transactions (`Store::writes`), another such cost.
    writes: AtomicU64,
    /// Ledger lookups (the start-up scan and rescans make one per file): with `writes`,
    /// how the daemon sees the store idle (`Store::uses`).
    lookups: AtomicU64,
    /// Entries compactions copied so far, counted a slice at a time: with `writes`, how the
    /// daemon sees the heap churn (`Store::activity`).
    copied: AtomicU64,
    /// Rung by every use counted above, for the tasks that sleep while the store is idle
    /// (module `bell`).
    bell: Arc<Bell>,
    /// Set by a use that found a compaction holding the database: the compaction gives way
    /// (module `compact`, "Giving way").
    wanted_during_compaction: AtomicBool,
    /// Whether the counts are known to match the trees: the last process closed the
    /// database in order, or this one checked them. Only then does closing mark the
    /// database as closed cleanly (see "Clean close" in the module doc).
    counts_trusted: AtomicBool,
    /// Whether the `closed` marker is still on disk: found at open, and removed before
    /// this process first changes the trees ([`Store::unmark_closed`]).
    marked_closed: Mutex<bool>,
    /// Where each folder's line of new jobs starts (module `line`).
    lines: line::Lines,
    /// Held by a batch claim from its walk to its commit (module `claim`).
    batch_claim: Mutex<()>,
    /// The pointers of new files to their jobs (module `pointers`).
    pointers: Pointers,
    /// What a report reads, taken as a compaction began: while it holds the database
    /// nothing changes, so reports read this instead of making it give way (module
    /// `compact`, "Giving way").
    frozen: Mutex<Option<Arc<Summary>>>,
    /// Folders whose looks matched uploads recorded without a change time (module `stamp`).
    unstamped: stamp::Unstamped,
    /// Read-held by a completion from its look at the folder's recorded target to its
    /// commit, write-held by a change of that record: an upload recorded for the old
    /// target is committed before the record changes, so the ledger drop that follows the
    /// change sees it, and every completion after the change compares with the new one.
    target_change: RwLock<()>,
    /// The time every time the store writes or compares is read from (module `clock`).
    clock: clock::Clock,
    /// Transactions run, retries by sled not counted: what the tests read to see that a
    /// walk changes many jobs in few transactions.
    #[cfg(test)]
    transactions: AtomicU64,
    lock: StateLock,
}

impl Inner {
    /// The handles, read-locked; a compaction holding them is asked to give way first.
    fn read_handles(&self) -> RwLockReadGuard<'_, Handles> {
        if let Some(handles) = self.handles.try_read_recursive() {
            return handles;
        }
        self.wanted_during_compaction.store(true, Ordering::Relaxed);
        self.handles.read_recursive()
    }

    /// Flushes (an fsync when anything was written) without stalling the async runtime's
    /// other tasks (`blocking`).
    fn flush(&self) -> sled::Result<()> {
        if blocking::off_the_worker(|| self.read_handles().db.flush())? > 0 {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Step 4 of "Clean close" in the module doc: writes the `closed` marker back if this
    /// process removed it and the counts are trusted, then flushes. Whether the marker is
    /// on disk afterwards. A marker written back means this process changed the database:
    /// step 5 then sums up its log.
    fn close_in_order(&self) -> bool {
        let mut marked = self
            .marked_closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*marked && self.counts_trusted.load(Ordering::Relaxed) {
            match self.read_handles().db.insert(CLEAN_CLOSE_KEY, b"1") {
                Ok(_) => {
                    *marked = true;
                    self.snapshot.wanted.store(true, Ordering::Relaxed);
                }
                Err(err) => tracing::warn!(
                    state_dir = %self.state_dir.display(),
                    error = %err,
                    "could not mark the state database as closed cleanly"
                ),
            }
        }
        if let Err(err) = self.flush() {
            tracing::warn!(
                state_dir = %self.state_dir.display(),
                error = %err,
                "could not flush the state database on close"
            );
            return false;
        }
        *marked
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let closed = self.close_in_order();
        // A close that could not flush leaves the log to the next start.
        *self.snapshot.wanted.get_mut() &= closed;
        let flushes = self.flushes.load(Ordering::Relaxed);
        let writes = self.writes.load(Ordering::Relaxed);
        tracing::info!(flushes, writes, "state database closed");
    }
}

/// Step 5 of "Clean close" in the module doc: once sled has closed the database, opens it
/// again and closes it, so that sled sums up the log this process wrote into a snapshot
/// now rather than at the next start.
struct SnapshotOnClose {
    db_path: PathBuf,
    /// Set when closing writes the `closed` marker back ([`Inner::close_in_order`]).
    wanted: AtomicBool,
}

impl Drop for SnapshotOnClose {
    fn drop(&mut self) {
        if !*self.wanted.get_mut() {
            return;
        }
        if !self.db_path.is_dir() {
            // Removed while the store was open (the state dir deleted under a running
            // daemon, a test's temp dir gone first): opening would create a new, empty
            // database there.
            tracing::warn!(path = %self.db_path.display(), "the state database's directory is gone; its log is not summed up");
            return;
        }
        let started = std::time::Instant::now();
        match open_sled(&self.db_path) {
            Ok(db) => {
                drop(db);
                tracing::debug!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "state database log summed up for the next start"
                );
            }
            Err(err) => tracing::warn!(
                path = %self.db_path.display(),
                error = %err,
                "could not sum up the state database's log; the next start reads it instead"
            ),
        }
    }
}

impl Drop for Store {
    /// The last clone closes the database in order and leaves the status summary (module
    /// `summary`) for a report while no daemon runs. Two clones dropped at the same instant
    /// may both see the other: then no summary is left, and a report opens the database.
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) == 1 && self.inner.close_in_order() {
            let written = self
                .summarize()
                .map_err(|err| err.to_string())
                .and_then(|summary| {
                    summary::write(self.state_dir(), &summary).map_err(|err| err.to_string())
                });
            if let Err(err) = written {
                tracing::warn!(state_dir = %self.state_dir().display(), error = %err, "could not save the status summary; a report of the stopped daemon opens the database instead");
            }
        }
    }
}

/// The open state database. Clones share one database and one lock.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

fn abort<T>(err: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

impl Store {
    /// Whether `state_dir` holds a state database, or may soon: a process holding its lock
    /// (a daemon starting for the first time) creates one. Commands that only read or
    /// amend what a daemon left ask this first, so a mistyped `state_dir` is reported
    /// instead of answered from an empty database made for the occasion. A lock that
    /// cannot be probed counts as held: opening the database then says why.
    pub fn exists(state_dir: &Path) -> bool {
        state_dir.join(DB_DIR).is_dir()
            || lock::is_held(&state_dir.join(lock::LOCK_FILE)).unwrap_or(true)
    }

    /// Opens (creating if needed) the state database in `state_dir`, and locks the dir
    /// against a second upsync for as long as any clone of the Store lives.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let lock = StateLock::acquire(state_dir)?;
        Store::open_locked(state_dir, lock)
    }

    pub(super) fn open_locked(state_dir: &Path, lock: StateLock) -> Result<Store, StoreError> {
        let db_path = state_dir.join(DB_DIR);
        // Only a database sled cannot make sense of calls for moving it away; a plain I/O
        // error (permissions, a full disk) is reported as what it is.
        let open_error = |err: sled::Error| match err {
            sled::Error::Io(io) => {
                StoreError::io("open the state database", &db_path, state_dir, io)
            }
            other => StoreError::Open {
                path: db_path.clone(),
                detail: other.to_string(),
            },
        };
        compact::clear_leftover(state_dir)?;
        summary::remove(state_dir).map_err(|source| {
            StoreError::io("remove the status summary in", state_dir, state_dir, source)
        })?;
        let db = open_db(&db_path).map_err(|err| match err {
            FormatError::Sled(err) => open_error(err),
            FormatError::Store(err) => err,
        })?;
        let closed_cleanly = db.contains_key(CLEAN_CLOSE_KEY).map_err(open_error)?;
        let handles = Handles::open(db).map_err(open_error)?;
        let store = Store {
            inner: Arc::new(Inner {
                handles: RwLock::new(handles),
                snapshot: SnapshotOnClose {
                    db_path: db_path.clone(),
                    wanted: AtomicBool::new(false),
                },
                state_dir: state_dir.to_path_buf(),
                flushes: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                lookups: AtomicU64::new(0),
                copied: AtomicU64::new(0),
                bell: Arc::default(),
                wanted_during_compaction: AtomicBool::new(false),
                counts_trusted: AtomicBool::new(closed_cleanly),
                marked_closed: Mutex::new(closed_cleanly),
                lines: line::Lines::default(),
                batch_claim: Mutex::new(()),
                pointers: Pointers::default(),
                frozen: Mutex::new(None),
                unstamped: stamp::Unstamped::default(),
                target_change: RwLock::new(()),
                clock: clock::Clock::new(),
                #[cfg(test)]
                transactions: AtomicU64::new(0),
                lock,
            }),
        };
        store.count_if_uncounted()?;
        store.flush()?;
        Ok(store)
    }

    /// The store's time (module `clock`): the system clock, but never behind a time the
    /// store handed out before, so that a clock set back holds nothing up.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// [`Store::now`] in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Step 1 of module `clock`: moves the store's clock up to the latest time the
    /// database holds (a job's last change, a folder's newest upload), which is later
    /// than the system clock only if that went back while no process ran.
    fn keep_clock_past(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let latest_change = jobs.iter().map(|job| job.updated_at_ms).max();
        let latest_upload = self
            .tallies()?
            .values()
            .map(|tally| tally.last_upload_ms)
            .max();
        if let Some(latest) = latest_change.max(latest_upload) {
            self.inner.clock.not_before(latest);
        }
        Ok(())
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// Opens a new, empty database in `state_dir` for a rebuild, after moving an existing
    /// one aside to `db.moved-<unix seconds>` (never deleting it); returns the store and
    /// where the old database went. The lock is taken first, so a running daemon's
    /// database is never moved.
    pub fn open_rebuilding(state_dir: &Path) -> Result<(Store, Option<PathBuf>), StoreError> {
        let lock = StateLock::acquire(state_dir)?;
        let db_path = state_dir.join(DB_DIR);
        let mut moved = None;
        if db_path.exists() {
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut aside = state_dir.join(format!("{DB_DIR}.moved-{stamp}"));
            let mut n = 1;
            while aside.exists() {
                aside = state_dir.join(format!("{DB_DIR}.moved-{stamp}-{n}"));
                n += 1;
            }
            std::fs::rename(&db_path, &aside).map_err(|source| {
                StoreError::io(
                    "move the old database aside from",
                    &db_path,
                    state_dir,
                    source,
                )
            })?;
            moved = Some(aside);
        }
        Ok((Store::open_locked(state_dir, lock)?, moved))
    }

    /// Records in the ledger that this version of the file is already on the remote (a
    /// rebuild matched it in the remote's listing), unless a job for the file exists.
    /// Returns whether the entry was written.
    pub fn record_uploaded(
        &self,
        key: &FileKey,
        fingerprint: &Fingerprint,
        remote: &str,
        md5: Option<&str>,
    ) -> Result<bool, StoreError> {
        let raw_key = valid_key(key)?;
        let now = self.now_ms();
        // Among the offers: a job an offer is creating for the file must be seen here.
        self.transact_creating(|tx| {
            if tx.job_for(&raw_key)?.is_some() {
                return Ok(false);
            }
            let entry = LedgerEntry {
                fingerprint: *fingerprint,
                remote: remote.to_owned(),
                md5: md5.map(str::to_owned),
                uploaded_at_ms: now,
            };
            tx.put_ledger(raw_key.clone(), &key.folder, &entry)?;
            Ok(true)
        })
    }

    /// The database and its trees, read-locked until the guard is dropped: a compaction
    /// waits for it before it swaps them. Recursive, so a caller holding a guard may call
    /// what takes one again while a compaction waits.
    /// A use that finds a compaction copying asks it to give way, so that nothing waits
    /// for a whole copy.
    fn handles(&self) -> RwLockReadGuard<'_, Handles> {
        self.inner.read_handles()
    }

    /// [`Store::handles`] for a ledger lookup, counted in [`Store::uses`].
    fn handles_to_look_up(&self) -> RwLockReadGuard<'_, Handles> {
        self.inner.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.bell.ring();
        self.inner.read_handles()
    }

    fn db_error(&self, err: sled::Error) -> StoreError {
        StoreError::from_sled(&self.inner.state_dir, err)
    }

    /// Removes the `closed` marker, durably, before the first change this process makes
    /// (step 2 of "Clean close" in the module doc): a process that is killed afterwards
    /// leaves a database without it. A process that only reads never writes.
    fn unmark_closed(&self) -> Result<(), StoreError> {
        let mut marked = self
            .inner
            .marked_closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *marked {
            self.handles()
                .db
                .remove(CLEAN_CLOSE_KEY)
                .map_err(|err| self.db_error(err))?;
            self.flush()?;
            *marked = false;
        }
        Ok(())
    }

    /// Runs `f` as one serializable transaction over all trees (sled retries it on conflict,
    /// so `f` must not have side effects outside the trees).
    ///
    /// One that meets a file whose pointer a transaction creating it has not yet kept runs
    /// again among those (step 3 of module `pointers`).
    fn transact<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A, StoreError> {
        match self.transact_as(false, &f) {
            Err(StoreError::PointerUnsettled) => {
                #[cfg(test)]
                self.inner.pointers.rerun.fetch_add(1, Ordering::Relaxed);
                self.transact_creating(f)
            }
            done => done,
        }
    }

    /// [`Store::transact`] for a transaction that may create jobs, or that acts on a file
    /// having none: it may keep new files' pointers in memory, and runs alone among those
    /// that may, so it sees every pointer they created (module `pointers`).
    fn transact_creating<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A, StoreError> {
        let _creating = self.inner.pointers.creating();
        self.transact_as(true, &f)
    }

    fn transact_as<A>(
        &self,
        creating: bool,
        f: &impl Fn(&Tx<'_>) -> TxResult<A>,
    ) -> Result<A, StoreError> {
        self.unmark_closed()?;
        self.load_pointers()?;
        #[cfg(test)]
        self.inner.transactions.fetch_add(1, Ordering::Relaxed);
        let noted = RefCell::new(Noted::default());
        let handles = self.handles();
        let t = &handles.trees;
        // Counted per attempt: sled runs `f` again after a conflict.
        let writes = Cell::new(0);
        let registered = line::Registered::default();
        let done = (
            &t.jobs,
            &t.ledger,
            &t.progress,
            &t.due,
            &t.counts,
            &t.attention,
            &t.claim_marks,
        )
            .transaction(
                |(jobs, ledger, progress, due, counts, attention, claim_marks)| {
                    writes.set(0);
                    noted.borrow_mut().clear();
                    let counted = |tree| TxTree {
                        tree,
                        writes: &writes,
                        id_base: handles.id_base,
                    };
                    let tx = Tx {
                        jobs: counted(jobs),
                        ledger: counted(ledger),
                        progress: counted(progress),
                        due: counted(due),
                        counts: counted(counts),
                        attention: counted(attention),
                        claim_marks: counted(claim_marks),
                        changes: counts::Changes::default(),
                        lines: &self.inner.lines,
                        registered: &registered,
                        pointers: &self.inner.pointers,
                        noted: &noted,
                        creating,
                    };
                    let done = f(&tx)?;
                    tx.settle_counts()?;
                    Ok(done)
                },
            );
        self.inner.lines.created(&registered.0.borrow());
        let done = done.map_err(|err| match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => self.db_error(err),
        })?;
        self.inner.pointers.apply(noted.into_inner());
        if writes.get() > 0 {
            self.inner.writes.fetch_add(writes.get(), Ordering::Relaxed);
            self.inner.bell.ring();
        }
        Ok(done)
    }

    /// Step 1 of module `pointers`: the pointers of the jobs whose files have no ledger
    /// entry, taken back once after the open.
    fn load_pointers(&self) -> Result<(), StoreError> {
        self.inner.pointers.load(|found| {
            let handles = self.handles();
            let trees = &handles.trees;
            let db_error = |err| self.db_error(err);
            for entry in trees.jobs.iter() {
                let (raw_id, raw) = entry.map_err(db_error)?;
                let id = keys::stored_job_id(&raw_id)?;
                let job = decode_job(&raw, id)?;
                // A key that cannot be stored has no entry either way; the job fails on
                // its own when a worker takes it.
                let Ok(raw_key) = file_key(&job.key) else {
                    continue;
                };
                if trees.ledger.get(&raw_key).map_err(db_error)?.is_none() {
                    found(raw_key, id);
                }
            }
            Ok(())
        })
    }

    /// True when the ledger holds this version of the file (one read, and only the
    /// fingerprint is decoded: the start-up scan asks this for every file). An entry
    /// written before change times were kept matches on the rest
    /// ([`Fingerprint::is_version_of`]); its folder is noted, and its entry is given the
    /// change time later, by [`Store::stamp_step`], not here: a look only reads.
    pub fn is_uploaded(
        &self,
        key: &FileKey,
        fingerprint: &Fingerprint,
    ) -> Result<bool, StoreError> {
        let raw_key = valid_key(key)?;
        let Some(raw) = self
            .handles_to_look_up()
            .trees
            .ledger
            .get(&raw_key)
            .map_err(|err| self.db_error(err))?
        else {
            return Ok(false);
        };
        let Some(upload) = FileRecord::split(&raw).upload else {
            return Ok(false);
        };
        if records_exactly(upload, fingerprint) {
            return Ok(true);
        }
        let found = ledger_fingerprint(upload, &raw_key)?;
        if fingerprint.upgrades(&found) {
            self.inner.unstamped.note(&key.folder);
        }
        Ok(fingerprint.is_version_of(&found))
    }

    /// Offers a settled file version to the queue. Not flushed (invariant 4).
    ///
    /// A failed job with the same fingerprint stays failed (it answers `AlreadyQueued`):
    /// failures wait for `upsync retry` or a new version of the file.
    pub fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> Result<Offer, StoreError> {
        let raw_key = valid_key(key)?;
        let now = self.now_ms();
        self.transact_creating(|tx| tx.offer(&raw_key, key, fingerprint, now))
    }

    /// [`Store::offer`] for several files in one transaction (a scan offers what it found
    /// in batches). Each file is offered exactly as `offer` would, in order, so a path
    /// offered twice in one batch coalesces into one job with the later fingerprint. A key
    /// that cannot be stored fails the whole batch before anything is written. Not flushed.
    pub fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Result<Vec<Offer>, StoreError> {
        let raw_keys = files
            .iter()
            .map(|(key, _)| valid_key(key))
            .collect::<Result<Vec<_>, _>>()?;
        let now = self.now_ms();
        self.transact_creating(|tx| {
            files
                .iter()
                .zip(&raw_keys)
                .map(|((key, fingerprint), raw_key)| tx.offer(raw_key, key, fingerprint, now))
                .collect()
        })
    }

    /// The job as it stands (a job a claim mark covers is active; module `marks`).
    pub fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self
            .handles()
            .trees
            .jobs
            .get(job_key(id))
            .map_err(|err| self.db_error(err))?
        {
            None => Ok(None),
            Some(raw) => marks::seen_through(decode_job(&raw, id)?, |tag| self.mark(tag)).map(Some),
        }
    }

    /// Stores the backend's resume state and flushes it before returning (invariant 3).
    pub fn save_progress(&self, id: JobId, progress: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.require_job(id)?;
            tx.progress.insert(&job_key(id), progress)?;
            Ok(())
        })?;
        self.flush()
    }

    pub fn load_progress(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .handles()
            .trees
            .progress
            .get(job_key(id))
            .map_err(|err| self.db_error(err))?
            .map(|raw| raw.to_vec()))
    }

    /// Forgets the resume state (the session is gone); flushed so that a restart does not
    /// resume it.
    pub fn clear_progress(&self, id: JobId) -> Result<(), StoreError> {
        self.transact(|tx| tx.clear_progress(id))?;
        self.flush()
    }

    /// Persists `finalizing` before the non-idempotent finalize call (invariant 5).
    pub fn mark_finalizing(&self, id: JobId) -> Result<(), StoreError> {
        self.mark_finalizing_many(&[id])
    }

    /// [`Self::mark_finalizing`] for several jobs in one transaction and one flush, before
    /// one finalize call that covers them all.
    pub fn mark_finalizing_many(&self, ids: &[JobId]) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            for &id in ids {
                let job = tx.require_job(id)?;
                let finalizing = Job {
                    state: JobState::Finalizing,
                    finalize_started: true,
                    updated_at_ms: now,
                    ..job.clone()
                };
                tx.put_job(Some(&job), &finalizing)?;
            }
            Ok(())
        })?;
        self.flush()
    }

    /// Moves the job to `failed` with a reason a person can act on; it is not retried until
    /// `retry_failed` or a new version of the file. The attempt that failed counts in
    /// `attempts`, as one that waits to retry does. If a new version was offered during the
    /// attempt, the failure concerned the old bytes and the job is queued afresh instead.
    pub fn fail(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        self.fail_as(id, reason, None)
    }

    /// [`Store::fail`], recording also what kind of failure it was (a metrics label).
    pub fn fail_as(&self, id: JobId, reason: &str, kind: Option<&str>) -> Result<(), StoreError> {
        self.fail_with(id, reason, kind, SavedUpload::Forget)
    }

    /// [`Store::fail_as`] for a job that fails before any attempt because nothing can
    /// upload it now (its folder is no longer in the configuration, its file cannot be
    /// examined, no backend serves its target): the upload an earlier
    /// attempt saved stays with it (invariant 3), for the attempt after `retry` (or the
    /// folder's return) to resume it or give it up on the remote.
    pub fn fail_keeping_upload(
        &self,
        id: JobId,
        reason: &str,
        kind: Option<&str>,
    ) -> Result<(), StoreError> {
        self.fail_with(id, reason, kind, SavedUpload::Keep)
    }

    fn fail_with(
        &self,
        id: JobId,
        reason: &str,
        kind: Option<&str>,
        saved: SavedUpload,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            if saved == SavedUpload::Forget {
                tx.clear_progress(id)?;
            }
            if tx.content_moved(&job) {
                return tx.put_job(Some(&job), &queued_afresh(&job, now));
            }
            let failed = Job {
                state: JobState::Failed {
                    reason: reason.to_owned(),
                    failed_at_ms: now,
                    kind: kind.map(str::to_owned),
                },
                attempts: job.attempts.saturating_add(1),
                last_error: Some(reason.to_owned()),
                updated_at_ms: now,
                ..job.clone()
            };
            tx.put_job(Some(&job), &failed)
        })?;
        self.flush()
    }

    /// Parks the job until `at` (a job-level retry); its progress is kept so that the next
    /// attempt resumes the same session. If a new version was offered during the attempt,
    /// the job is queued afresh for it instead (invariant 6).
    pub fn retry_later(&self, id: JobId, at: SystemTime, reason: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        let at = to_ms(at);
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            if tx.content_moved(&job) {
                // The progress of the version sent stays for the next attempt to give up
                // on the remote (invariant 3).
                return tx.put_job(Some(&job), &queued_afresh(&job, now));
            }
            let waiting = Job {
                state: JobState::RetryWait {
                    next_attempt_at_ms: at,
                },
                attempts: job.attempts.saturating_add(1),
                last_error: Some(reason.to_owned()),
                updated_at_ms: now,
                ..job.clone()
            };
            tx.put_job(Some(&job), &waiting)
        })?;
        self.flush()
    }

    /// Queues the job again from scratch because its file changed mid-upload: progress is
    /// dropped, attempts and `finalize_started` reset.
    pub fn requeue(&self, id: JobId) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            tx.clear_progress(id)?;
            tx.put_job(Some(&job), &queued_afresh(&job, now))
        })?;
        self.flush()
    }

    /// Removes the job because its file vanished. Not flushed: if a crash undoes it, the
    /// worker finds the file missing again. A job marked for deletion during its attempt
    /// is queued again, as the deletion it now is.
    pub fn drop_job(&self, id: JobId) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| match tx.job(id)? {
            Some(job) if job.kind == JobKind::Delete => {
                tx.clear_progress(id)?;
                tx.put_job(Some(&job), &queued_afresh(&job, now))
            }
            Some(job) => tx.remove_job(&job),
            None => Ok(()),
        })
    }

    /// Removes the job of a file found gone (an event, a scan), unless a worker or an
    /// import holds it: a worker notices the file is gone at its next check, and bytes
    /// being imported are already on the remote (the import's end records them). A waiting
    /// (or failed) job that saved an upload is made due instead (`Tx::left_to_give_up`).
    /// Returns the state of the dropped job. Not flushed: a rescan finds the file gone
    /// again.
    pub fn drop_vanished(&self, key: &FileKey) -> Result<Option<&'static str>, StoreError> {
        let raw_key = valid_key(key)?;
        let now = self.now_ms();
        self.transact_creating(|tx| {
            let Some(job) = tx.job_for(&raw_key)? else {
                return Ok(None);
            };
            if job.kind == JobKind::Delete {
                return Ok(None);
            }
            match job.state {
                JobState::Queued | JobState::RetryWait { .. } | JobState::Failed { .. }
                    if tx.left_to_give_up(&job, now)? =>
                {
                    Ok(None)
                }
                JobState::Queued | JobState::RetryWait { .. } | JobState::Failed { .. } => {
                    tx.remove_job(&job)?;
                    Ok(Some(job.state.name()))
                }
                JobState::Active | JobState::Finalizing | JobState::Importing => Ok(None),
            }
        })
    }

    /// Moves failed jobs back to the queue (`upsync retry`); returns how many moved.
    /// `last_error` is kept so that `status` can still say what went wrong last time.
    pub fn retry_failed(&self, selection: &RetrySelection) -> Result<usize, StoreError> {
        let named = |job: &Job| match selection {
            RetrySelection::Paths(paths) => paths.iter().any(|path| *path == job.path()),
            _ => false,
        };
        // A directory stands for the files under it (`Path::starts_with` compares whole
        // components: `sub` holds `sub/a.csv`, not `subway.csv`), as `--all` stands for
        // every file: neither names a deletion the mass-delete guard holds.
        let under = |job: &Job| match selection {
            RetrySelection::Paths(paths) => paths.iter().any(|path| job.path().starts_with(path)),
            _ => false,
        };
        let selected = |job: &Job| match selection {
            RetrySelection::All => !delete::is_held(job),
            RetrySelection::Deletes => job.kind == JobKind::Delete,
            RetrySelection::Paths(_) => named(job) || (under(job) && !delete::is_held(job)),
        };
        // A deletion retried by its name or with --deletes is the operator's word for it;
        // the mass-delete guard no longer holds it.
        let approves = |job: &Job| matches!(selection, RetrySelection::Deletes) || named(job);
        let mut moved = 0;
        for job in self.jobs_needing_attention()? {
            if !matches!(job.state, JobState::Failed { .. }) || !selected(&job) {
                continue;
            }
            let approve = approves(&job);
            let now = self.now_ms();
            let retried = self.transact(|tx| {
                let Some(job) = tx.job(job.id)? else {
                    return Ok(false);
                };
                if !matches!(job.state, JobState::Failed { .. }) {
                    return Ok(false);
                }
                let queued = Job {
                    state: JobState::Queued,
                    attempts: 0,
                    corrupt_imports: 0,
                    approved: job.approved || (approve && job.kind == JobKind::Delete),
                    updated_at_ms: now,
                    ..job.clone()
                };
                tx.put_job(Some(&job), &queued)?;
                Ok(true)
            })?;
            moved += usize::from(retried);
        }
        self.flush()?;
        Ok(moved)
    }

    /// Run once at daemon start, before any worker claims: jobs that were active or
    /// finalizing when the last process stopped go back to the queue, keeping their progress
    /// and `finalize_started`. Also repairs the indexes (a missing `due` entry or a `ledger`
    /// entry that does not name its file's job, `due` entries and progress of jobs that are
    /// gone) and, after a stop that was not clean, the per-folder counts (invariant 8) and
    /// `ledger` entries naming jobs that are gone (both walk the whole ledger). Returns how
    /// many jobs were interrupted uploads put back in the queue.
    pub fn recover_after_restart(&self) -> Result<usize, StoreError> {
        enum Repair {
            Requeued,
            Reindexed,
            Sound,
        }
        let jobs = self.jobs()?;
        self.keep_clock_past(&jobs)?;
        let now = self.now_ms();
        let mut recovered = 0;
        for job in jobs {
            let repair = self.transact(|tx| {
                let Some(job) = tx.job(job.id)? else {
                    return Ok(Repair::Sound);
                };
                if is_attempt(&job.state) {
                    // The attempt's outcome was never recorded: its bytes may have landed,
                    // unless they were of an older version, whose progress stays for the
                    // next attempt to give up on the remote (invariant 3).
                    let moved = tx.content_moved(&job);
                    let queued = Job {
                        state: JobState::Queued,
                        unconfirmed_attempt_ms: if moved || job.kind != JobKind::Upload {
                            None
                        } else {
                            job.unconfirmed_attempt_ms.or(Some(job.updated_at_ms))
                        },
                        updated_at_ms: now,
                        ..job.clone()
                    };
                    tx.put_job(Some(&job), &queued)?;
                    return Ok(Repair::Requeued);
                }
                let raw_key = match valid_key(&job.key) {
                    Ok(raw) => raw,
                    Err(err) => return abort(err),
                };
                let indexed = match tx.file_record(&raw_key)? {
                    Some(raw) => FileRecord::split(&raw).job == Some(job.id),
                    None => false,
                };
                let due_indexed = match job.due_entry_ms() {
                    Some(due) => tx.due.get(job_due_key(&job, due))?.is_some(),
                    None => true,
                };
                if indexed && due_indexed {
                    return Ok(Repair::Sound);
                }
                // put_job rewrites the job's due entry and its file's pointer to it.
                tx.put_job(Some(&job), &job)?;
                Ok(Repair::Reindexed)
            })?;
            match repair {
                Repair::Requeued => recovered += 1,
                Repair::Reindexed => {
                    tracing::warn!(job = %job.id, path = %job.key, "restored the lost index entries of a job");
                }
                Repair::Sound => {}
            }
        }
        self.remove_dangling_entries()?;
        if !self.inner.counts_trusted.load(Ordering::Relaxed) {
            self.remove_dangling_pointers()?;
            self.check_counts()?;
        }
        self.flush()?;
        Ok(recovered)
    }

    /// Removes `due` and `progress` entries whose job no longer matches them.
    fn remove_dangling_entries(&self) -> Result<(), StoreError> {
        let handles = self.handles();
        let trees = &handles.trees;
        let db_error = |err| self.db_error(err);
        for entry in trees.due.iter() {
            let (raw, _) = entry.map_err(db_error)?;
            let stale = match decode_due_key(&raw) {
                None => true,
                Some(entry) => self.get(entry.id)?.is_none_or(|job| {
                    job.due_entry_ms() != Some(entry.due_ms)
                        || folder_tag(&job.key.folder) != entry.tag
                }),
            };
            if stale {
                trees.due.remove(&raw).map_err(db_error)?;
            }
        }
        for entry in trees.progress.iter() {
            let (raw, _) = entry.map_err(db_error)?;
            let orphan = match decode_job_key(&raw) {
                Some(id) => self.get(id)?.is_none(),
                None => true,
            };
            if orphan {
                trees.progress.remove(&raw).map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// Makes `ledger` entries that name a job that is gone, or a job of another file, name
    /// none (the upload they hold stays).
    fn remove_dangling_pointers(&self) -> Result<(), StoreError> {
        let ledger = &self.handles().trees.ledger;
        let db_error = |err| self.db_error(err);
        for entry in ledger.iter() {
            let (raw_key, raw) = entry.map_err(db_error)?;
            let record = FileRecord::split(&raw);
            let Some(id) = record.job else {
                continue;
            };
            let stale = self
                .get(id)?
                .is_none_or(|job| file_key(&job.key).ok().as_deref() != Some(&raw_key[..]));
            if stale {
                let kept = FileRecord {
                    job: None,
                    ..record
                }
                .join();
                ledger
                    .compare_and_swap(&raw_key, Some(&raw), kept)
                    .map_err(db_error)?
                    .ok();
            }
        }
        Ok(())
    }

    pub fn ledger_get(&self, key: &FileKey) -> Result<Option<LedgerEntry>, StoreError> {
        let raw_key = valid_key(key)?;
        let raw = self
            .handles_to_look_up()
            .trees
            .ledger
            .get(&raw_key)
            .map_err(|err| self.db_error(err))?;
        match raw.as_deref().and_then(|raw| FileRecord::split(raw).upload) {
            None => Ok(None),
            Some(upload) => decode_ledger(upload, &raw_key).map(Some),
        }
    }

    /// The ledger's entries (the files held as uploaded), of one folder or of all, in key
    /// order (folder, then relative path).
    pub fn ledger_entries(
        &self,
        folder: Option<&str>,
    ) -> Result<Vec<(FileKey, LedgerEntry)>, StoreError> {
        let prefix = match folder {
            Some(folder) => valid_key(&FileKey::new(folder, ""))?,
            None => Vec::new(),
        };
        let mut entries = Vec::new();
        for entry in self.handles().trees.ledger.scan_prefix(&prefix) {
            let (raw_key, raw) = entry.map_err(|err| self.db_error(err))?;
            let key = keys::stored_file_key(&raw_key)?;
            if let Some(upload) = FileRecord::split(&raw).upload {
                entries.push((key, decode_ledger(upload, &raw_key)?));
            }
        }
        Ok(entries)
    }

    /// The target the folder's ledger entries were uploaded to, as [`Store::set_folder_target`]
    /// last wrote it; `None` for a folder never given one.
    pub fn folder_target(&self, folder: &str) -> Result<Option<String>, StoreError> {
        let raw = self
            .handles()
            .db
            .get(folder_target_key(folder))
            .map_err(|err| self.db_error(err))?;
        Ok(raw.map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Every folder's recorded target ([`Store::folder_target`]), by folder.
    pub fn folder_targets(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut targets = BTreeMap::new();
        for entry in self.handles().db.scan_prefix(FOLDER_TARGET_PREFIX) {
            let (key, target) = entry.map_err(|err| self.db_error(err))?;
            let folder = String::from_utf8_lossy(&key[FOLDER_TARGET_PREFIX.len()..]);
            let target = String::from_utf8_lossy(&target).into_owned();
            targets.insert(folder.into_owned(), target);
        }
        Ok(targets)
    }

    /// Records, durably, the target the folder's ledger entries are uploaded to from now on.
    /// Waits for the completions under way: each one compares its attempt's target with
    /// the record either before the change and commits before it, or after it.
    pub fn set_folder_target(&self, folder: &str, target: &str) -> Result<(), StoreError> {
        let _changing = self.inner.target_change.write();
        self.unmark_closed()?;
        self.handles()
            .db
            .insert(folder_target_key(folder), target.as_bytes())
            .map_err(|err| self.db_error(err))?;
        self.flush()
    }

    /// Drops the files' ledger entries, so that they are uploaded again, and offers each
    /// one's current version (`None`: the file is gone), all in one transaction and one
    /// flush; whether each one's entry was dropped, in order.
    pub fn forget_many(
        &self,
        files: &[(FileKey, Option<Fingerprint>)],
    ) -> Result<Vec<bool>, StoreError> {
        let raw_keys = files
            .iter()
            .map(|(key, _)| valid_key(key))
            .collect::<Result<Vec<_>, _>>()?;
        let now = self.now_ms();
        let dropped = self.transact_creating(|tx| {
            let mut dropped = Vec::with_capacity(files.len());
            for ((key, current), raw_key) in files.iter().zip(&raw_keys) {
                dropped.push(
                    tx.file_record(raw_key)?
                        .is_some_and(|raw| FileRecord::split(&raw).upload.is_some()),
                );
                tx.remove_ledger(raw_key.clone(), &key.folder)?;
                if let Some(fingerprint) = current {
                    tx.offer(raw_key, key, fingerprint, now)?;
                }
            }
            Ok(dropped)
        })?;
        self.flush()?;
        Ok(dropped)
    }

    /// [`Store::forget_many`] of one file.
    #[cfg(test)]
    pub(crate) fn forget(
        &self,
        key: &FileKey,
        current: Option<&Fingerprint>,
    ) -> Result<bool, StoreError> {
        let dropped = self.forget_many(&[(key.clone(), current.copied())])?;
        Ok(dropped[0])
    }

    /// Every job as it stands ([`Store::get`]), in id order: folder by folder (their line
    /// prefixes), oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        self.visit_jobs(|job| jobs.push(job))?;
        Ok(jobs)
    }

    /// [`Store::jobs`] one at a time, without holding them all: a caller that only sums
    /// them up needs memory for one job, whatever the backlog.
    pub fn visit_jobs(&self, mut visit: impl FnMut(Job)) -> Result<(), StoreError> {
        let mut marks = marks::MarksRead::default();
        for entry in self.handles().trees.jobs.iter() {
            let (raw_id, raw) = entry.map_err(|err| self.db_error(err))?;
            let id = keys::stored_job_id(&raw_id)?;
            visit(marks.see(self, decode_job(&raw, id)?)?);
        }
        Ok(())
    }

    /// The live data against the database's size on disk. Reads every entry of every tree:
    /// meant for the benchmark and for diagnosing a state dir, not for a running daemon's
    /// status.
    pub fn space(&self) -> Result<Space, StoreError> {
        let handles = self.handles();
        let db = &handles.db;
        let db_error = |err| self.db_error(err);
        let mut live_bytes = 0u64;
        for name in db.tree_names() {
            let tree = db.open_tree(&name).map_err(db_error)?;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(db_error)?;
                live_bytes += (key.len() + value.len()) as u64;
            }
        }
        let db_dir = self.inner.state_dir.join(DB_DIR);
        let on_disk_bytes = files_size(&db_dir).map_err(|source| {
            StoreError::io(
                "measure the state database at",
                &db_dir,
                &self.inner.state_dir,
                source,
            )
        })?;
        Ok(Space {
            live_bytes,
            on_disk_bytes,
        })
    }

    /// How many flushes of this process had something to write (each one ends in an
    /// fsync); flushes with nothing new are free and not counted.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// How many entries this process's transactions set or removed so far (each one a
    /// write to sled's log); writes that changed nothing are not counted.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Writes plus the entries compactions copied so far: a count that moves while the
    /// process allocates and frees for the database, which the daemon uses to decide when
    /// to hand freed memory back (a compaction at a million entries writes no entry of the
    /// store's own for seconds).
    pub fn activity(&self) -> u64 {
        self.writes() + self.inner.copied.load(Ordering::Relaxed)
    }

    /// Writes plus ledger lookups so far: a count that stands still means no upload and no
    /// scan is using the store (an idle worker's look for due jobs, the status line and
    /// metrics do not count: they come every few seconds).
    pub fn uses(&self) -> u64 {
        self.writes() + self.inner.lookups.load(Ordering::Relaxed)
    }

    /// The bell every use counted in [`Store::uses`] and [`Store::activity`] rings: what a
    /// task that has nothing to do while the store is idle waits on (module `bell`).
    pub fn bell(&self) -> Arc<Bell> {
        Arc::clone(&self.inner.bell)
    }

    /// Makes everything written so far durable (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().map_err(|err| self.db_error(err))
    }

    /// An error once the state dir was removed, moved away or replaced under this process
    /// (its lock file is no longer the one the store holds): the database went with it.
    pub fn check_state_dir(&self) -> Result<(), StoreError> {
        if self.inner.lock.is_in_place(&self.inner.state_dir) {
            return Ok(());
        }
        Err(StoreError::StateDirGone {
            state_dir: self.inner.state_dir.clone(),
        })
    }

    /// [`Store::flush`], but nothing while a compaction holds the database: a periodic
    /// check that the disk still takes writes waits for its next turn rather than make the
    /// compaction give way (module `compact`); the compaction's own writes meet a failing
    /// disk first.
    pub fn flush_unless_compacting(&self) -> Result<(), StoreError> {
        if self.is_compacting() {
            return Ok(());
        }
        self.flush()
    }
}

fn folder_target_key(folder: &str) -> Vec<u8> {
    [FOLDER_TARGET_PREFIX, folder.as_bytes()].concat()
}
