//! Ending an upload's job: the version that reached the remote goes into the ledger and
//! the job ends, or is queued again for what changed while it was uploading (a new
//! version, a deletion, another target for its folder).

use std::collections::BTreeMap;

use super::claim::AsClaimed;
use super::{Job, JobId, JobKind, LedgerEntry, Store, StoreError, abort, queued_afresh, valid_key};
use crate::fingerprint::Fingerprint;

/// One finished upload, for [`crate::queue::Store::complete_many`].
#[derive(Debug, Clone)]
pub struct Completed {
    pub id: JobId,
    /// The version that reached the remote.
    pub fingerprint: Fingerprint,
    pub remote: String,
    pub md5: Option<String>,
    /// How a batch claimed the job, when it claimed it under its folder's mark
    /// ([`super::Claimed`]): the completion then decodes the job only if it changed since.
    pub as_claimed: Option<AsClaimed>,
    /// The target the attempt was started for, as the folder's target is recorded
    /// ([`super::Store::folder_target`]); the upload is recorded only if the folder still
    /// has it. `None`: recorded whatever the folder's target.
    pub target: Option<String>,
}

/// What [`super::Store::complete_many`] did with one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Recorded in the ledger; the job ended.
    Recorded,
    /// Recorded, but the job took a new version (or a deletion) meanwhile: it is queued
    /// again for that.
    Superseded,
    /// Not recorded: the folder was given another target since the attempt started
    /// ([`Completed::target`]); the file is queued afresh, for the new target.
    Retargeted,
}

impl Completion {
    /// Whether the job ended.
    pub fn ended(self) -> bool {
        self == Completion::Recorded
    }
}

impl Store {
    /// Records the upload of `uploaded` in the ledger and ends the job. Returns false when
    /// the file changed while it was uploading: the job is then queued again for the new
    /// version (the ledger still records the version that did reach the remote). The
    /// folder's target is not compared: [`Store::complete_many`] does for an attempt that
    /// names its [`Completed::target`].
    pub fn complete(
        &self,
        id: JobId,
        uploaded: &Fingerprint,
        entry_remote: &str,
        md5: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = self.complete_many(&[Completed {
            id,
            fingerprint: *uploaded,
            remote: entry_remote.to_owned(),
            md5: md5.map(str::to_owned),
            as_claimed: None,
            target: None,
        }])?;
        Ok(done[0].ended())
    }

    /// [`Store::complete`] for several jobs in one transaction and one flush (group commit
    /// for a batch uploaded in one request). Returns, per job, what it did. A job
    /// whose attempt was started for another target than its folder's recorded one
    /// ([`Completed::target`]) is not recorded: it is queued afresh, for the new target.
    pub fn complete_many(&self, completed: &[Completed]) -> Result<Vec<Completion>, StoreError> {
        let now = self.now_ms();
        let _target_unchanged = self.inner.target_change.read();
        // Read before the transaction: sled reads no other tree inside one.
        let recorded = match completed.iter().any(|c| c.target.is_some()) {
            true => self.folder_targets()?,
            false => BTreeMap::new(),
        };
        let done = self.transact(|tx| {
            let mut done = Vec::with_capacity(completed.len());
            for c in completed {
                let job =
                    tx.require_job_as_read(c.id, c.as_claimed.as_ref().map(AsClaimed::read))?;
                if retargeted_since(&recorded, &job.key.folder, c.target.as_deref()) {
                    tx.clear_progress(c.id)?;
                    tx.put_job(Some(&job), &queued_afresh(&job, now))?;
                    done.push(Completion::Retargeted);
                    continue;
                }
                let raw_key = match valid_key(&job.key) {
                    Ok(raw) => raw,
                    Err(err) => return abort(err),
                };
                let entry = LedgerEntry {
                    fingerprint: c.fingerprint,
                    remote: c.remote.clone(),
                    md5: c.md5.clone(),
                    uploaded_at_ms: now,
                };
                tx.clear_progress(c.id)?;
                // A job marked for deletion meanwhile deletes what was just recorded.
                if job.fingerprint == c.fingerprint && job.kind == JobKind::Upload {
                    // One write of the file's entry: the upload in, the job out.
                    tx.put_ledger_ending(raw_key, &job.key.folder, &entry, Some(job.id))?;
                    tx.remove_job_record(&job)?;
                    done.push(Completion::Recorded);
                } else {
                    tx.put_ledger(raw_key, &job.key.folder, &entry)?;
                    let next = match job.kind {
                        // The version to delete is the one just recorded.
                        JobKind::Delete => Job {
                            fingerprint: c.fingerprint,
                            ..job.clone()
                        },
                        JobKind::Upload => job.clone(),
                    };
                    tx.put_job(Some(&job), &queued_afresh(&next, now))?;
                    done.push(Completion::Superseded);
                }
            }
            Ok(done)
        })?;
        self.flush()?;
        Ok(done)
    }
}

/// Whether the folder's recorded target is another than `started_for`, the target an
/// attempt was started for (`None`: not compared). A folder with no record takes any.
fn retargeted_since(
    recorded: &BTreeMap<String, String>,
    folder: &str,
    started_for: Option<&str>,
) -> bool {
    started_for.is_some_and(|started_for| {
        recorded
            .get(folder)
            .is_some_and(|recorded| recorded != started_for)
    })
}
