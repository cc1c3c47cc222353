//! Claim marks: a batch of jobs claimed from their folder's line, recorded as one entry.
//!
//! A claim used to rewrite every job it took (active, out of line, with its claimed
//! fingerprint): one write per file, for files of a few KiB as many as the offer's. But a
//! job in line has not changed since its offer (module `line`), so everything a claim would
//! write is known without writing it: its claimed fingerprint is its fingerprint. What must
//! be durable is only *which* jobs were claimed, and a batch takes them from the front of
//! the line. So the folder keeps one *mark* in the `claim_marks` tree: the id of the last
//! job claimed from its line, and when.
//!
//! # What a mark means
//!
//! A job stored in line whose id is at or below its folder's mark was claimed: every read
//! of a job ([`Tx::job`], [`Store::get`], [`Store::jobs`]) sees it active, out of line,
//! claimed with its fingerprint, since the mark's time ([`seen_through`]: the folder's
//! latest claim under the mark, for a job of an earlier batch still running later than its
//! own; only reports show that time, as the last attempt's). The first write of such a
//! job (its completion, a retry, a new version, a restart's recovery) stores that state
//! explicitly, as for any other attempt. Everything else (status, the counts, recovery
//! after a crash) reads jobs through those same functions, so sees the same.
//!
//! # When a batch may move the mark
//!
//! The mark must never cover a job in line that was not claimed. A batch
//! ([`Store::claim_more`]) moves it over the jobs it takes from its folder's line when:
//! 1. they are the first jobs of the line after the mark, with none of the folder's jobs in
//!    line between them passed over (a job the batch refuses ends the marked part);
//! 2. no job of the line with a smaller id can still appear: the walk that found them
//!    reports the first id a transaction may still be creating ([`Store::walk_line`]), and
//!    a job at or above it is claimed by a write of its own, as before;
//! 3. the transaction that moves the mark reads it first and skips the jobs it already
//!    covers (another worker took them), so two batches never take the same job.
//!
//! Claims of one job at a time (`claim_next`) write the job, as before: they take files
//! one by one, whose bytes cost far more than a write.

use std::collections::HashMap;

use super::keys::FolderTag;
use super::{Job, JobId, JobState, ReadJob, Store, StoreError, Tx, TxResult, folder_tag};

/// The `claim_marks` tree's name. (Not `claimed`: format 1 had a tree of that name, which
/// the upgrade drops whenever it exists.)
pub(super) const MARKS_TREE: &str = "claim_marks";

/// A folder's mark: the jobs of its line up to `through` were claimed, the last at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub through: JobId,
    pub at_ms: u64,
}

impl Mark {
    fn encode(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.through.0.to_be_bytes());
        raw[8..].copy_from_slice(&self.at_ms.to_be_bytes());
        raw
    }

    /// `None` for a malformed value, which then marks nothing: its jobs are claimed again,
    /// as after the loss of an unflushed claim.
    fn decode(raw: &[u8]) -> Option<Mark> {
        let raw: &[u8; 16] = raw.try_into().ok()?;
        let (through, at) = raw.split_at(8);
        Some(Mark {
            through: JobId(u64::from_be_bytes(through.try_into().ok()?)),
            at_ms: u64::from_be_bytes(at.try_into().ok()?),
        })
    }

    fn covers(self, id: JobId) -> bool {
        id <= self.through
    }
}

/// `job` as its folder's mark makes it: active since the mark when the mark covers it in
/// line (module doc), unchanged otherwise. `mark_of` reads a folder's mark (in a
/// transaction, from the store, or from the marks already read); it is asked only for a
/// job stored in line.
pub(super) fn seen_through<E>(
    job: Job,
    mark_of: impl FnOnce(FolderTag) -> Result<Option<Mark>, E>,
) -> Result<Job, E> {
    if !job.in_line {
        return Ok(job);
    }
    match mark_of(folder_tag(&job.key.folder))? {
        Some(mark) if mark.covers(job.id) => Ok(claimed(job, mark.at_ms)),
        _ => Ok(job),
    }
}

/// A job in line, claimed at `at_ms`: what a claim writes, or what a mark means.
pub(super) fn claimed(job: Job, at_ms: u64) -> Job {
    Job {
        state: JobState::Active,
        claimed: Some(job.fingerprint),
        in_line: false,
        updated_at_ms: at_ms,
        ..job
    }
}

/// The marks of the folders met so far, read once each: for reads of many jobs.
#[derive(Default)]
pub(super) struct MarksRead(HashMap<FolderTag, Option<Mark>>);

impl MarksRead {
    /// [`seen_through`] with the mark of the job's folder (read at its first job in line).
    pub(super) fn see(&mut self, store: &Store, job: Job) -> Result<Job, StoreError> {
        seen_through(job, |tag| match self.0.get(&tag) {
            Some(mark) => Ok(*mark),
            None => {
                let mark = store.mark(tag)?;
                self.0.insert(tag, mark);
                Ok(mark)
            }
        })
    }
}

impl Store {
    /// The folder's mark, outside a transaction.
    pub(super) fn mark(&self, tag: FolderTag) -> Result<Option<Mark>, StoreError> {
        let raw = self
            .handles()
            .trees
            .claim_marks
            .get(tag)
            .map_err(|err| self.db_error(err))?;
        Ok(raw.as_deref().and_then(Mark::decode))
    }
}

impl Tx<'_> {
    /// The folder's mark, inside the transaction.
    pub(super) fn mark(&self, tag: FolderTag) -> TxResult<Option<Mark>> {
        Ok(self.claim_marks.get(tag)?.as_deref().and_then(Mark::decode))
    }

    /// Moves the folder's mark to `mark` (step 3 of the module doc has read it first).
    pub(super) fn set_mark(&self, tag: FolderTag, mark: Mark) -> TxResult<()> {
        self.claim_marks.insert(&tag, &mark.encode())?;
        Ok(())
    }

    /// Claims the job of the line that `read` holds by moving the mark over it, without
    /// writing it: `None` when it left the line, or the mark already covers it
    /// ([`Tx::job_as_read`] reads it through the mark: step 3 of the module doc). The
    /// caller moves the mark to the last job claimed so.
    pub(super) fn claim_under_mark(&self, read: &ReadJob, now: u64) -> TxResult<Option<Job>> {
        let Some(job) = self.job_as_read(read.job.id, Some(read))? else {
            return Ok(None);
        };
        if !job.in_line {
            return Ok(None);
        }
        let active = claimed(job.clone(), now);
        self.count_job(Some(&job), Some(&active))?;
        Ok(Some(active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_as_written_and_a_malformed_one_marks_nothing() {
        let mark = Mark {
            through: JobId(0x0102_0304_0506_0708),
            at_ms: 1_700_000_000_123,
        };
        assert_eq!(Mark::decode(&mark.encode()), Some(mark));
        assert_eq!(Mark::decode(b"short"), None);
        assert!(mark.covers(JobId(0x0102_0304_0506_0708)));
        assert!(!mark.covers(JobId(0x0102_0304_0506_0709)));
    }
}
