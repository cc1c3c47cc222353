//! The `importing` state: a job whose bytes the remote holds and is still importing.
//!
//! A worker moves its job there once the remote acknowledged the post
//! ([`Store::mark_importing`]) and is free; whoever waits for the import settles it:
//! `complete` when the remote imported the bytes it was sent, [`Store::requeue_corrupt`]
//! when it kept other bytes (the bad upload is deleted, the file sent again), `fail` when
//! it refused them (after [`Store::mark_import_failed`] and the removal of the failed
//! upload), `requeue` when the upload is gone. At start, [`Store::importing_jobs`] hands them to the wait again.

use super::{Import, Job, JobId, JobState, Store, StoreError};

impl Store {
    /// Moves an attempt whose post the remote acknowledged to `importing`: no worker, no
    /// `due` entry, no progress (the session is used up). Flushed: after a crash the wait
    /// resumes instead of the post being made again.
    pub fn mark_importing(&self, id: JobId, import: Import) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            tx.clear_progress(id)?;
            let importing = Job {
                state: JobState::Importing,
                import: Some(import.clone()),
                updated_at_ms: now,
                ..job.clone()
            };
            tx.put_job(Some(&job), &importing)
        })?;
        self.flush()
    }

    /// The remote finished importing other bytes than it was sent (the caller deleted that
    /// upload): the file is queued to be sent again, `finalize_started` cleared since
    /// nothing of it is posted any more, and `corrupt_imports` counts it (the caller fails
    /// the job instead on the second time).
    pub fn requeue_corrupt(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            let moved = tx.content_moved(&job);
            let queued = Job {
                state: JobState::Queued,
                finalize_started: false,
                corrupt_imports: if moved { 0 } else { job.corrupt_imports + 1 },
                attempts: if moved { 0 } else { job.attempts },
                last_error: Some(reason.to_owned()),
                updated_at_ms: now,
                ..job.clone()
            };
            tx.clear_progress(id)?;
            tx.put_job(Some(&job), &queued)
        })?;
        self.flush()
    }

    /// The remote ended the import `failed`: records the reason and where the failed
    /// upload is, before it is removed, so that a crash between its removal and the job
    /// failing neither loses the reason nor posts the file again. Flushed.
    pub fn mark_import_failed(
        &self,
        id: JobId,
        remote: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        self.transact(|tx| {
            let job = tx.require_job(id)?;
            let Some(import) = &job.import else {
                return Ok(());
            };
            let failed = Job {
                import: Some(Import {
                    remote: remote.to_owned(),
                    failed: Some(reason.to_owned()),
                    ..import.clone()
                }),
                last_error: Some(reason.to_owned()),
                updated_at_ms: now,
                ..job.clone()
            };
            tx.put_job(Some(&job), &failed)
        })?;
        self.flush()
    }

    /// Every importing job, for the wait to resume at start.
    pub fn importing_jobs(&self) -> Result<Vec<Job>, StoreError> {
        Ok(self
            .jobs()?
            .into_iter()
            .filter(|job| matches!(job.state, JobState::Importing))
            .collect())
    }
}
