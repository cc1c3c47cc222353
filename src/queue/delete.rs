//! Deletion jobs: when a folder asks for it (`on_delete = "delete"`), the remote copy of a
//! file that is gone locally is deleted by a job of kind [`JobKind::Delete`], in the same
//! queue and under the same invariants as uploads (one job per file).
//!
//! 1. A file found gone (an event, a scan) that the ledger records as uploaded becomes a
//!    deletion ([`Store::offer_deletions`]), due after a delay, so that a file deleted and
//!    written again at once (an editor's save) turns back into an upload before anything is
//!    deleted. An upload in flight or importing is marked instead, the first upload of a
//!    file too (its bytes may be on the remote already): the end of its attempt or import
//!    records what reached the remote and queues the job again, as a deletion. A waiting
//!    upload that becomes a deletion keeps its saved progress, so that the deletion can give
//!    that upload up on the remote. Only ledger entries are ever deleted: what upsync did
//!    not upload has no entry.
//! 2. The mass-delete guard counts the folder's pending deletions ([`Store::deletion_tally`])
//!    and, over the limit, holds all of them ([`Store::hold_deletions`]): they are failed
//!    with [`HELD_BY_GUARD`] in the reason, until `upsync retry --deletes` approves them
//!    (`retry_failed` with [`RetrySelection::Deletes`](super::RetrySelection)) or the limit
//!    allows them again ([`Store::release_deletions`]).
//! 3. A worker deletes the remote copy the ledger entry names; then
//!    [`Store::complete_deletion`] removes that entry (if it still names that copy) and the
//!    job in one flushed transaction. A crash in between deletes again, and the backends
//!    count a copy that is already gone as deleted: deleted once, never another copy.
//! 4. A file that comes back turns its deletion into an upload ([`Store::offer`]), which
//!    keeps the progress step 1 kept, for its next attempt to give that upload up on the
//!    remote. A deletion already running ends first: its end removes the ledger entry and
//!    queues the upload, so the new version is sent after the old one is deleted, never
//!    before.

use std::time::SystemTime;

use super::record::FileRecord;
use super::{
    Job, JobId, JobKind, JobState, Offer, Store, StoreError, Tx, TxResult, abort, decode_ledger,
    is_attempt, queued_afresh, to_ms, valid_key,
};
use crate::fingerprint::Fingerprint;
use crate::queue::FileKey;

/// How the reason of a deletion held by the mass-delete guard begins.
pub const HELD_BY_GUARD: &str = "held by the mass-delete guard";

/// A folder's deletions as the mass-delete guard counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletionTally {
    /// Deletions waiting to run that the operator has not approved.
    pub pending: u64,
    /// Deletions the guard holds.
    pub held: u64,
    /// Files of the folder the ledger records as uploaded.
    pub uploaded: u64,
}

/// True for a deletion the mass-delete guard holds.
pub(super) fn is_held(job: &Job) -> bool {
    job.kind == JobKind::Delete
        && matches!(&job.state, JobState::Failed { reason, .. } if reason.starts_with(HELD_BY_GUARD))
}

/// True while a worker or an import holds the job: its end decides what comes next.
fn in_flight(state: &JobState) -> bool {
    is_attempt(state) || *state == JobState::Importing
}

/// The version a deletion names while the ledger records none: a job in flight turned
/// into a deletion before its first upload was recorded. No file has it, so the end of
/// that attempt or import sees its content moved and queues the deletion.
const NOTHING_RECORDED: Fingerprint = Fingerprint {
    size: 0,
    mtime_ns: 0,
    inode: 0,
    ctime_ns: None,
};

/// True for a deletion the guard counts and may hold: waiting to run, not approved.
fn is_pending(job: &Job) -> bool {
    job.kind == JobKind::Delete
        && !job.approved
        && matches!(job.state, JobState::Queued | JobState::RetryWait { .. })
}

impl Tx<'_> {
    /// Step 1 for one file found gone; true when a deletion was queued. Without a ledger
    /// entry there is nothing to delete yet: a pending upload job is dropped (or left to
    /// give up its saved upload) as `drop_vanished` would, one in flight or importing is
    /// marked (its bytes may be on the remote already).
    fn offer_deletion(&self, raw_key: &[u8], key: &FileKey, due: u64, now: u64) -> TxResult<bool> {
        let raw = self.file_record(raw_key)?;
        let existing = self.job_named(raw.as_deref())?;
        let Some(upload) = raw.as_deref().and_then(|raw| FileRecord::split(raw).upload) else {
            match existing {
                Some(job) if job.kind == JobKind::Upload && in_flight(&job.state) => {
                    // Its first upload may still reach the remote (posted, importing): the
                    // end of the attempt or import records it, then deletes it.
                    self.put_job(
                        Some(&job),
                        &Job {
                            kind: JobKind::Delete,
                            approved: false,
                            fingerprint: NOTHING_RECORDED,
                            ..job.clone()
                        },
                    )?;
                }
                Some(job) if job.kind == JobKind::Upload && !self.left_to_give_up(&job, now)? => {
                    self.remove_job(&job)?
                }
                _ => {}
            }
            return Ok(false);
        };
        let uploaded = match decode_ledger(upload, raw_key) {
            Ok(entry) => entry.fingerprint,
            Err(err) => return abort(err),
        };
        let Some(job) = existing else {
            let job = Job {
                kind: JobKind::Delete,
                // Due later than it is created: it waits in the `due` index.
                in_line: false,
                updated_at_ms: due,
                ..Job::queued(self.new_job_id(&key.folder)?, key.clone(), uploaded, now)
            };
            self.put_job(None, &job)?;
            return Ok(true);
        };
        if job.kind == JobKind::Delete {
            return Ok(false);
        }
        // The version to delete, not the one being sent: an attempt that ends sees its
        // content moved and queues the job again, as the deletion it now is.
        let marked = Job {
            kind: JobKind::Delete,
            approved: false,
            fingerprint: uploaded,
            ..job.clone()
        };
        if in_flight(&job.state) {
            self.put_job(Some(&job), &marked)?;
            return Ok(false);
        }
        // The progress stays with the deletion, which gives that upload up on the remote
        // (invariant 3).
        self.put_job(Some(&job), &queued_afresh(&marked, due))?;
        Ok(true)
    }

    /// The deletion `job` is dropped. Without saved progress it simply goes. With it, it
    /// turns back into the upload that saved it, due now: the worker that claims it finds
    /// the file gone and gives that upload up on the remote (a KiFS multipart upload is
    /// cancelled) before dropping the job, as for any waiting upload whose file is gone.
    fn drop_deletion(&self, job: &Job, now: u64) -> TxResult<()> {
        if !self.has_progress(job.id)? {
            return self.remove_job(job);
        }
        let upload = Job {
            kind: JobKind::Upload,
            approved: false,
            ..queued_afresh(job, now)
        };
        self.put_job(Some(job), &upload)
    }

    /// Step 4: the file of a deletion is there again, with `fingerprint` (`uploaded` when
    /// that is the version the ledger holds).
    pub(super) fn cancel_deletion(
        &self,
        job: &Job,
        fingerprint: &Fingerprint,
        uploaded: bool,
        now: u64,
    ) -> TxResult<Offer> {
        let upload = Job {
            kind: JobKind::Upload,
            approved: false,
            fingerprint: *fingerprint,
            ..job.clone()
        };
        if is_attempt(&job.state) || job.state == JobState::Importing {
            // Whoever holds the job queues the upload when it ends.
            self.put_job(
                Some(job),
                &Job {
                    updated_at_ms: now,
                    ..upload
                },
            )?;
            return Ok(Offer::Queued(job.id));
        }
        if uploaded {
            self.remove_job(job)?;
            return Ok(Offer::UpToDate);
        }
        // The progress it kept (step 1) stays for the upload's next attempt to give up on
        // the remote (invariant 3): the new version never resumes it.
        self.put_job(Some(job), &queued_afresh(&upload, now))?;
        Ok(Offer::Queued(job.id))
    }
}

impl Store {
    /// Step 1: the files `keys` are gone; each one the ledger records as uploaded gets a
    /// deletion due at `due`. Returns how many deletions were queued. Not flushed, like
    /// `offer`: the next scan finds the files gone again.
    pub fn offer_deletions(&self, keys: &[FileKey], due: SystemTime) -> Result<usize, StoreError> {
        let raw_keys = keys.iter().map(valid_key).collect::<Result<Vec<_>, _>>()?;
        let now = self.now_ms();
        let due = to_ms(due).max(now);
        self.transact_creating(|tx| {
            let mut queued = 0;
            for (key, raw_key) in keys.iter().zip(&raw_keys) {
                queued += usize::from(tx.offer_deletion(raw_key, key, due, now)?);
            }
            Ok(queued)
        })
    }

    /// Every job of `folder`, through its files' `ledger` entries.
    fn folder_jobs(&self, folder: &str) -> Result<Vec<Job>, StoreError> {
        let prefix = valid_key(&FileKey::new(folder, ""))?;
        let mut jobs = Vec::new();
        for entry in self.handles().trees.ledger.scan_prefix(&prefix).values() {
            let raw = entry.map_err(|err| self.db_error(err))?;
            if let Some(id) = FileRecord::split(&raw).job
                && let Some(job) = self.get(id)?
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Step 2's count for `folder`.
    pub fn deletion_tally(&self, folder: &str) -> Result<DeletionTally, StoreError> {
        // The folder's counts (module `counts`) say in one read how many files it has
        // uploaded and whether any deletion waits; only then are its jobs read, through
        // every entry of its ledger. Two reads, not one snapshot: deletions running
        // meanwhile remove a job and its ledger entry together. The counts are read first,
        // so one that completes between the reads lowers the deletions counted, never the
        // uploads they are weighed against: a restart amid a batch must not look like a
        // folder emptied at once.
        let counts = self.tally(folder)?.counts;
        let mut tally = DeletionTally {
            uploaded: counts.done,
            ..DeletionTally::default()
        };
        if counts.deletions == 0 {
            return Ok(tally);
        }
        for job in self.folder_jobs(folder)? {
            tally.pending += u64::from(is_pending(&job));
            tally.held += u64::from(is_held(&job));
        }
        Ok(tally)
    }

    /// Step 2: holds every pending deletion of `folder`, saying `why`; returns how many.
    /// Flushed: a restart keeps them held.
    pub fn hold_deletions(&self, folder: &str, why: &str) -> Result<usize, StoreError> {
        let reason = format!("{HELD_BY_GUARD}: {why}");
        let now = self.now_ms();
        let held = self.change_folder_jobs(folder, is_pending, |job| Job {
            state: JobState::Failed {
                reason: reason.clone(),
                failed_at_ms: now,
                kind: None,
            },
            last_error: Some(reason.clone()),
            updated_at_ms: now,
            ..job.clone()
        })?;
        self.flush()?;
        Ok(held)
    }

    /// Step 2: the limit allows the held deletions of `folder` again; they are queued, due
    /// now. Returns how many.
    pub fn release_deletions(&self, folder: &str) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let released = self.change_folder_jobs(folder, is_held, |job| Job {
            last_error: None,
            ..queued_afresh(job, now)
        })?;
        self.flush()?;
        Ok(released)
    }

    /// The folder is gone as a whole (unmounted): its deletions the operator did not
    /// approve are dropped, held ones included, and derived again by the scan once the
    /// folder is back. One that kept the saved upload of a newer version (invariant 3)
    /// turns back into that upload instead, for a worker to give it up on the remote
    /// (`Tx::drop_deletion`). Returns how many.
    pub fn drop_pending_deletions(&self, folder: &str) -> Result<usize, StoreError> {
        let unapproved = |job: &Job| is_pending(job) || is_held(job);
        let now = self.now_ms();
        let mut dropped = 0;
        for job in self.folder_jobs(folder)? {
            if !unapproved(&job) {
                continue;
            }
            dropped += usize::from(self.transact(|tx| match tx.job(job.id)? {
                Some(job) if unapproved(&job) => tx.drop_deletion(&job, now).map(|()| true),
                _ => Ok(false),
            })?);
        }
        self.flush()?;
        Ok(dropped)
    }

    /// Rewrites each job of `folder` that `select` picks (checked again inside the
    /// transaction) as `change` says; returns how many changed.
    fn change_folder_jobs(
        &self,
        folder: &str,
        select: impl Fn(&Job) -> bool,
        change: impl Fn(&Job) -> Job,
    ) -> Result<usize, StoreError> {
        let candidates: Vec<JobId> = self
            .folder_jobs(folder)?
            .into_iter()
            .filter(|job| select(job))
            .map(|job| job.id)
            .collect();
        self.transact(|tx| {
            let mut changed = 0;
            for &id in &candidates {
                if let Some(job) = tx.job(id)?
                    && select(&job)
                {
                    tx.put_job(Some(&job), &change(&job))?;
                    changed += 1;
                }
            }
            Ok(changed)
        })
    }

    /// Step 3: the remote copy `deleted` (the ledger entry's `remote`; `None` when the
    /// ledger had no entry) is gone. Removes the ledger entry if it still names that copy,
    /// and ends the job; if the file came back meanwhile, queues its upload instead and
    /// returns false. Flushed.
    pub fn complete_deletion(&self, id: JobId, deleted: Option<&str>) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let ended = self.transact(|tx| {
            let job = tx.require_job(id)?;
            let raw_key = match valid_key(&job.key) {
                Ok(raw) => raw,
                Err(err) => return abort(err),
            };
            let raw = tx.file_record(&raw_key)?;
            if let Some(upload) = raw.as_deref().and_then(|raw| FileRecord::split(raw).upload) {
                let entry = match decode_ledger(upload, &raw_key) {
                    Ok(entry) => entry,
                    Err(err) => return abort(err),
                };
                if Some(entry.remote.as_str()) == deleted {
                    tx.remove_ledger(raw_key, &job.key.folder)?;
                }
            }
            tx.clear_progress(id)?;
            if job.kind == JobKind::Delete {
                tx.remove_job(&job)?;
                return Ok(true);
            }
            tx.put_job(Some(&job), &queued_afresh(&job, now))?;
            Ok(false)
        })?;
        self.flush()?;
        Ok(ended)
    }
}
