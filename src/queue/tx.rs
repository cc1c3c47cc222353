//! The trees as one transaction sees them ([`Tx`]), with the moves that keep the store's
//! invariants (module doc of [`super`]): every write of a job, a ledger entry, a pointer or
//! a count inside a transaction goes through here.

use std::cell::{Cell, RefCell};

use sled::IVec;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::keys::{self, due_key, file_key, folder_tag, job_key};
use super::pointers::{Noted, Pointers};
use super::record::FileRecord;
use super::{
    FileKey, Job, JobId, JobKind, JobState, LedgerEntry, Offer, ReadJob, StoreError, TxResult,
    abort, binary, counts, decode_job, encode, ledger_fingerprint, line, marks, valid_key,
    with_fingerprint,
};
use crate::fingerprint::Fingerprint;

/// The trees as one transaction sees them, with the moves that keep the invariants.
pub(super) struct Tx<'a> {
    pub(super) jobs: TxTree<'a>,
    /// Read through [`Tx::file_record`] and written through [`Tx::write_file`], which
    /// see the pointers of new files kept in memory (module `pointers`).
    pub(super) ledger: TxTree<'a>,
    pub(super) progress: TxTree<'a>,
    pub(super) due: TxTree<'a>,
    pub(super) counts: TxTree<'a>,
    pub(super) attention: TxTree<'a>,
    pub(super) claim_marks: TxTree<'a>,
    /// What the transaction changed in the per-folder counts, added to them as it ends.
    pub(super) changes: counts::Changes,
    pub(super) lines: &'a line::Lines,
    /// The ids it registered as being created (`Tx::new_job_id`).
    pub(super) registered: &'a line::Registered,
    /// The pointers of new files kept in memory (module `pointers`), and what this
    /// transaction did with them.
    pub(super) pointers: &'a Pointers,
    pub(super) noted: &'a RefCell<Noted>,
    /// Whether it may keep new pointers in memory (it holds [`Pointers::creating`]).
    pub(super) creating: bool,
}

/// What a read or write of one entry inside a transaction gives back: the value it had.
type TreeResult = Result<Option<IVec>, UnabortableTransactionError>;

/// One tree inside a transaction, counting the writes that change something for
/// [`super::Store::writes`].
///
/// It leaves out of the transaction a write that would change nothing (setting the value a
/// key already has, removing a key that is not there). sled would skip it at commit too,
/// but only after looking the key up in its tree once more (a completion removes its job's
/// progress, which a small file never had: one of the fifteen lookups of a small file).
pub(super) struct TxTree<'a> {
    pub(super) tree: &'a TransactionalTree,
    pub(super) writes: &'a Cell<u64>,
    /// [`super::Handles::id_base`] of the database the transaction runs on.
    pub(super) id_base: u64,
}

impl TxTree<'_> {
    pub(super) fn get<K: AsRef<[u8]>>(&self, key: K) -> TreeResult {
        self.tree.get(key)
    }

    pub(super) fn insert<K, V>(&self, key: K, value: V) -> TreeResult
    where
        K: AsRef<[u8]> + Into<IVec>,
        V: Into<IVec>,
    {
        let value: IVec = value.into();
        // A read first (sled's insert reads the old value anyway, and keeps what it read
        // for the transaction), so an unchanged value stays out of the commit.
        let old = self.tree.get(key.as_ref())?;
        if old.as_ref() != Some(&value) {
            self.tree.insert(key, value)?;
            self.writes.set(self.writes.get() + 1);
        }
        Ok(old)
    }

    pub(super) fn remove<K>(&self, key: K) -> TreeResult
    where
        K: AsRef<[u8]> + Into<IVec>,
    {
        let old = self.tree.get(key.as_ref())?;
        if old.is_some() {
            self.tree.remove(key)?;
            self.writes.set(self.writes.get() + 1);
        }
        Ok(old)
    }

    pub(super) fn generate_id(&self) -> sled::Result<u64> {
        Ok(self.id_base + self.tree.generate_id()?)
    }
}

impl Tx<'_> {
    /// The job as it stands: one its folder's claim mark covers is active (module `marks`).
    pub(super) fn job(&self, id: JobId) -> TxResult<Option<Job>> {
        self.job_as_read(id, None)
    }

    /// [`Tx::job`], taking `read`'s decoding instead of decoding again when the job's
    /// stored bytes are still those it was decoded from.
    pub(super) fn job_as_read(&self, id: JobId, read: Option<&ReadJob>) -> TxResult<Option<Job>> {
        let Some(raw) = self.jobs.get(job_key(id))? else {
            return Ok(None);
        };
        let job = match read {
            Some(read) if read.job.id == id && read.raw == raw => read.job.clone(),
            _ => match decode_job(&raw, id) {
                Ok(job) => job,
                Err(err) => return abort(err),
            },
        };
        marks::seen_through(job, |tag| self.mark(tag)).map(Some)
    }

    pub(super) fn require_job(&self, id: JobId) -> TxResult<Job> {
        self.require_job_as_read(id, None)
    }

    /// [`Tx::require_job`], taking `read`'s decoding as [`Tx::job_as_read`] does.
    pub(super) fn require_job_as_read(&self, id: JobId, read: Option<&ReadJob>) -> TxResult<Job> {
        match self.job_as_read(id, read)? {
            Some(job) => Ok(job),
            None => abort(StoreError::NoSuchJob(id)),
        }
    }

    pub(super) fn job_for(&self, raw_key: &[u8]) -> TxResult<Option<Job>> {
        let raw = self.file_record(raw_key)?;
        self.job_named(raw.as_deref())
    }

    /// The job a file's entry (as [`Tx::file_record`] read it) names, if any.
    pub(super) fn job_named(&self, raw: Option<&[u8]>) -> TxResult<Option<Job>> {
        match raw.and_then(|raw| FileRecord::split(raw).job) {
            Some(id) => self.job(id),
            None => Ok(None),
        }
    }

    /// Rewrites the file's `ledger` entry with `job` (module `record`): one write, and
    /// none when it names that job already.
    fn point_to(&self, raw_key: &[u8], job: Option<JobId>) -> TxResult<()> {
        let raw = self.file_record(raw_key)?;
        let record = raw.as_deref().map(FileRecord::split);
        if record.and_then(|record| record.job) == job {
            return Ok(());
        }
        let upload = record.and_then(|record| record.upload);
        self.write_file(raw_key, FileRecord { job, upload })
    }

    /// The file's `ledger` entry as this transaction sees it: with the pointer kept in
    /// memory, if any, in place of the one it holds (module `pointers`).
    pub(super) fn file_record(&self, raw_key: &[u8]) -> TxResult<Option<IVec>> {
        let stored = self.ledger.get(raw_key)?;
        let kept = self.noted.borrow_mut().pointer(self.pointers, raw_key);
        let Some(id) = kept else {
            if stored.is_none() && !self.creating {
                return abort(StoreError::PointerUnsettled);
            }
            return Ok(stored);
        };
        let upload = stored
            .as_deref()
            .and_then(|raw| FileRecord::split(raw).upload);
        Ok(FileRecord {
            job: Some(id),
            upload,
        }
        .join()
        .map(IVec::from))
    }

    /// Writes the file's `ledger` entry, or removes it when it holds nothing. The pointer
    /// of a file without an entry stays in memory instead, when this transaction may keep
    /// one there and there is room (module `pointers`).
    pub(super) fn write_file(&self, raw_key: &[u8], record: FileRecord<'_>) -> TxResult<()> {
        let no_entry = record.upload.is_none() && self.ledger.get(raw_key)?.is_none();
        let mut noted = self.noted.borrow_mut();
        let kept_in_memory = no_entry
            && match record.job {
                None => true,
                Some(_) => self.creating && self.pointers.has_room(&noted),
            };
        if kept_in_memory {
            noted.leave(self.pointers, raw_key, record.job);
            return Ok(());
        }
        match record.join() {
            Some(raw) => self.ledger.insert(raw_key, raw)?,
            None => self.ledger.remove(raw_key)?,
        };
        // The entry holds the pointer now, not memory.
        if noted.pointer(self.pointers, raw_key).is_some() {
            noted.leave(self.pointers, raw_key, None);
        }
        Ok(())
    }

    /// Writes `new` over `old` (the stored version, `None` for a new job) and moves its
    /// `due` entry and its file's `ledger` entry to match (invariants 1 and 2). A job leaving `importing`
    /// leaves its import record behind, and one that is no longer an attempt its claimed
    /// fingerprint (invariant 6).
    pub(super) fn put_job(&self, old: Option<&Job>, new: &Job) -> TxResult<()> {
        let stale_import = new.import.is_some() && new.state != JobState::Importing;
        let stale_claim = new.claimed.is_some() && !is_attempt(&new.state);
        let out_of_line = new.in_line && !stays_in_line(old, new);
        let without_stale;
        let new = if stale_import || stale_claim || out_of_line {
            without_stale = Job {
                import: if stale_import {
                    None
                } else {
                    new.import.clone()
                },
                claimed: if stale_claim { None } else { new.claimed },
                in_line: new.in_line && !out_of_line,
                ..new.clone()
            };
            &without_stale
        } else {
            new
        };
        if let Some(old) = old
            && let Some(due) = old.due_entry_ms()
        {
            self.due.remove(&job_due_key(old, due))?;
        }
        let raw_key = match valid_key(&new.key) {
            Ok(raw) => raw,
            Err(err) => return abort(err),
        };
        self.jobs
            .insert(&job_key(new.id), binary::encode_job(new))?;
        self.point_to(&raw_key, Some(new.id))?;
        if let Some(due) = new.due_entry_ms() {
            self.due.insert(&job_due_key(new, due), &[])?;
        }
        self.count_job(old, Some(new))
    }

    /// Removes a file's ledger entry (one file fewer done), keeping its job.
    pub(super) fn remove_ledger(&self, raw_key: Vec<u8>, folder: &str) -> TxResult<()> {
        let Some(raw) = self.file_record(&raw_key)? else {
            return Ok(());
        };
        let record = FileRecord::split(&raw);
        if record.upload.is_some() {
            self.write_file(
                &raw_key,
                FileRecord {
                    upload: None,
                    ..record
                },
            )?;
            self.changes.forgotten(folder);
        }
        Ok(())
    }

    /// Records an upload in the ledger (a new entry counts as one more file done).
    pub(super) fn put_ledger(
        &self,
        raw_key: Vec<u8>,
        folder: &str,
        entry: &LedgerEntry,
    ) -> TxResult<()> {
        self.put_ledger_ending(raw_key, folder, entry, None)
    }

    /// [`Tx::put_ledger`], also ending the file's job `ending` (its entry no longer names
    /// it) in the same write; the job itself goes with [`Tx::remove_job_record`].
    pub(super) fn put_ledger_ending(
        &self,
        raw_key: Vec<u8>,
        folder: &str,
        entry: &LedgerEntry,
        ending: Option<JobId>,
    ) -> TxResult<()> {
        let raw = self.file_record(&raw_key)?;
        let record = raw.as_deref().map(FileRecord::split);
        let job = record
            .and_then(|record| record.job)
            .filter(|job| Some(*job) != ending);
        let previous = record.and_then(|record| record.upload);
        let encoded = encode(entry);
        self.write_file(
            &raw_key,
            FileRecord {
                job,
                upload: Some(&encoded),
            },
        )?;
        self.changes
            .uploaded(folder, previous.is_none(), entry.uploaded_at_ms);
        Ok(())
    }

    /// True when the job's fingerprint moved on since the current attempt claimed it, or
    /// since its bytes were posted (invariant 6).
    pub(super) fn content_moved(&self, job: &Job) -> bool {
        match (&job.import, &job.claimed) {
            (Some(import), _) => import.fingerprint != job.fingerprint,
            (None, Some(claimed)) => *claimed != job.fingerprint,
            (None, None) => false,
        }
    }

    /// Removes the job with everything that refers to it (invariants 1 to 3).
    pub(super) fn remove_job(&self, job: &Job) -> TxResult<()> {
        if let Ok(raw_key) = file_key(&job.key)
            && let Some(raw) = self.file_record(&raw_key)?
            && FileRecord::split(&raw).job == Some(job.id)
        {
            self.point_to(&raw_key, None)?;
        }
        self.remove_job_record(job)
    }

    /// Removes the job and its own entries, leaving its file's `ledger` entry to the caller.
    pub(super) fn remove_job_record(&self, job: &Job) -> TxResult<()> {
        self.jobs.remove(&job_key(job.id))?;
        self.progress.remove(&job_key(job.id))?;
        if let Some(due) = job.due_entry_ms() {
            self.due.remove(&job_due_key(job, due))?;
        }
        self.count_job(Some(job), None)
    }

    pub(super) fn clear_progress(&self, id: JobId) -> TxResult<()> {
        self.progress.remove(&job_key(id))?;
        Ok(())
    }

    /// Whether the job saved resume state (an upload the remote may still hold).
    pub(super) fn has_progress(&self, id: JobId) -> TxResult<bool> {
        Ok(self.progress.get(job_key(id))?.is_some())
    }

    /// For a waiting (or failed) upload whose file is gone: whether it saved an upload that
    /// the remote may still hold (a KiFS multipart upload in progress), in which case it
    /// stays, due now, with its progress: the worker that claims it finds the file gone,
    /// gives that upload up on the remote and drops the job. Without progress the job can
    /// simply go. `now` is when the job is due if it stays.
    pub(super) fn left_to_give_up(&self, job: &Job, now: u64) -> TxResult<bool> {
        if !self.has_progress(job.id)? {
            return Ok(false);
        }
        // A retry-wait, or a failure that kept its upload (`Store::fail_keeping_upload`).
        if job.state != JobState::Queued {
            self.put_job(Some(job), &queued_afresh(job, now))?;
        }
        Ok(true)
    }

    /// The body of [`super::Store::offer`]: reads see the writes of earlier offers in the same
    /// transaction, so a batch behaves like the same offers made one after another.
    pub(super) fn offer(
        &self,
        raw_key: &[u8],
        key: &FileKey,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> TxResult<Offer> {
        let raw = self.file_record(raw_key)?;
        let existing = self.job_named(raw.as_deref())?;
        let record = raw.as_deref().map(FileRecord::split);
        let uploaded = match record.and_then(|record| record.upload) {
            None => false,
            Some(upload) => match ledger_fingerprint(upload, raw_key) {
                Ok(uploaded) if fingerprint.upgrades(&uploaded) => {
                    match with_fingerprint(upload, raw_key, fingerprint) {
                        // The same upload, with its change time: no count changes.
                        Ok(upgraded) => self.write_file(
                            raw_key,
                            FileRecord {
                                job: record.and_then(|record| record.job),
                                upload: Some(&upgraded),
                            },
                        )?,
                        Err(err) => return abort(err),
                    };
                    true
                }
                Ok(uploaded) => uploaded == *fingerprint,
                Err(err) => return abort(err),
            },
        };
        if let Some(job) = &existing
            && job.kind == JobKind::Delete
        {
            return self.cancel_deletion(job, fingerprint, uploaded, now);
        }
        if uploaded {
            if let Some(job) = &existing
                && matches!(job.state, JobState::Failed { .. })
            {
                self.remove_job(job)?;
            }
            return Ok(Offer::UpToDate);
        }
        match existing {
            Some(job) if job.fingerprint == *fingerprint => Ok(Offer::AlreadyQueued(job.id)),
            Some(job) => {
                let updated = match job.state {
                    // The worker (or the import's end) sees the new fingerprint when it
                    // completes, and queues the job again.
                    JobState::Active | JobState::Finalizing | JobState::Importing => Job {
                        fingerprint: *fingerprint,
                        updated_at_ms: now,
                        ..job.clone()
                    },
                    // Progress saved for the old version stays for the next attempt to
                    // give up on the remote (invariant 3).
                    JobState::Queued | JobState::RetryWait { .. } | JobState::Failed { .. } => {
                        Job {
                            fingerprint: *fingerprint,
                            ..queued_afresh(&job, now)
                        }
                    }
                };
                self.put_job(Some(&job), &updated)?;
                Ok(Offer::Queued(job.id))
            }
            None => {
                let job = Job::queued(
                    self.new_job_id(&key.folder)?,
                    key.clone(),
                    *fingerprint,
                    now,
                );
                self.put_job(None, &job)?;
                Ok(Offer::Queued(job.id))
            }
        }
    }
}

/// Active and finalizing jobs are attempts in progress: a worker holds them.
pub(super) fn is_attempt(state: &JobState) -> bool {
    matches!(state, JobState::Active | JobState::Finalizing)
}

/// Whether `new`, written over `old`, keeps the place in its folder's line that `old` had
/// (or, for a new job, takes one): only while it stays queued, due when it was.
fn stays_in_line(old: Option<&Job>, new: &Job) -> bool {
    new.state == JobState::Queued
        && old.is_none_or(|old| {
            old.in_line && old.state == JobState::Queued && old.updated_at_ms == new.updated_at_ms
        })
}

/// The job's entry in the `due` index, at `due`.
pub(super) fn job_due_key(job: &Job, due: u64) -> [u8; keys::DUE_KEY_LEN] {
    due_key(folder_tag(&job.key.folder), due, job.id)
}

/// What a failure does with the job's saved progress.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SavedUpload {
    Forget,
    Keep,
}

/// Puts a job back in the queue for new content: a fresh start, due now.
pub(super) fn queued_afresh(job: &Job, now: u64) -> Job {
    Job {
        state: JobState::Queued,
        in_line: false,
        attempts: 0,
        corrupt_imports: 0,
        last_error: None,
        finalize_started: false,
        unconfirmed_attempt_ms: None,
        updated_at_ms: now,
        ..job.clone()
    }
}
