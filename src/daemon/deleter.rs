//! A worker's deletion of the remote copy of a file that is gone (a job of kind
//! [`JobKind::Delete`](crate::queue::JobKind)); the queue side is in `queue::delete`.
//!
//! 1. Check the folder: still configured and still propagating deletions (else the job
//!    ends, the ledger untouched), its root present (else wait: an unmounted folder
//!    deletes nothing).
//! 2. Check the file: if it is there again, the job turns back into its upload; if its name
//!    now holds something else (a directory, a symlink, a FIFO), the job ends: that is not
//!    a deletion of the file (the rule of `watch::is_gone`), nor anything to upload.
//! 3. Read the ledger entry: it names the copy upsync uploaded, the only thing deleted.
//! 4. Give up the upload of a newer version the deletion replaced, if one was saved (a
//!    KiFS multipart upload waiting for its retry is cancelled, so the server drops its
//!    parts), then delete the copy on the remote (a copy already gone counts as deleted).
//!    A stop before that upload is given up leaves the job active, the upload with it.
//! 5. Record it ([`Store::complete_deletion`]): the entry and the job go in one flushed
//!    transaction. A failure waits and retries like an upload's; a refusal of the
//!    credentials refuses the folder, and the deletion waits, as an upload would. A
//!    shutdown leaves the job active, and the next start deletes again. A Redivis upload
//!    deleted frees its name: the folder's files that failed for colliding with it are
//!    queued again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::worker::{FOLDER_REMOVED, Worker};
use crate::config::{FolderConfig, OnDelete, Target};
use crate::fingerprint::Fingerprint;
use crate::metrics::FailureClass;
use crate::queue::{Job, JobState, LedgerEntry, RetrySelection, Store};
use crate::upload::redivis::names;
use crate::upload::retry::CallScope;
use crate::upload::{Backend, Disposition, ErrorKind, UploadError};

/// How long a deletion waits for its folder's root to come back before looking again.
const MISSING_ROOT_WAIT: Duration = Duration::from_secs(30);

/// What steps 1 to 3 decided.
enum Checked<'a> {
    /// Delete this copy.
    Delete(&'a FolderConfig, LedgerEntry),
    /// Settled without a remote request.
    Done,
}

impl Worker {
    /// Deletes the remote copy of a claimed deletion job (module doc, steps 1 to 5).
    pub(super) async fn process_deletion(&self, job: Job) {
        let (folder, entry) = match self.check_deletion(&job) {
            Checked::Delete(folder, entry) => (folder, entry),
            Checked::Done => return,
        };
        let Some(backend) = self.backends.for_target(&folder.target).cloned() else {
            let reason = "no backend is configured for this folder's target";
            let failed = self
                .store
                .fail_as(job.id, reason, Some(ErrorKind::Config.label()));
            return self.record(&job, failed);
        };
        let scope = CallScope {
            stop: self.stopping.clone(),
            checkpoint: self.interrupt.clone(),
            entries: Vec::new(),
        };
        let path = job.path().display().to_string();
        if !backend
            .abandon_saved_upload(&self.store, job.id, &scope)
            .await
        {
            // The upload it kept must not be forgotten with the deletion's end.
            tracing::info!(
                path,
                "deletion interrupted by shutdown; it runs at the next start"
            );
            return;
        }
        let deleted = backend
            .delete_uploaded(&folder.target, &job.key.rel, &entry.remote, &scope)
            .await;
        match deleted {
            Ok(()) => self.record_deletion(&job, folder, &entry.remote),
            Err(err) => self.settle_failed_deletion(&job, folder, &backend, err),
        }
    }

    /// Step 5: the copy is deleted; its entry and the job end together.
    fn record_deletion(&self, job: &Job, folder: &FolderConfig, remote: &str) {
        let path = job.path().display().to_string();
        tracing::info!(
            path,
            remote,
            "deleted the remote copy of a file that is gone"
        );
        self.metrics
            .deleted(&job.key.folder, folder.target.backend_name());
        self.live.activity.record_deletion();
        match self.store.complete_deletion(job.id, Some(remote)) {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(path, "the file is back; uploading it");
                self.wake.notify_one();
            }
            Err(err) => self.record(job, Err(err)),
        }
        if let Target::RedivisTable(_) = &folder.target {
            self.retry_collisions_with(job);
        }
    }

    /// Step 5 when the deletion failed: at shutdown the job stays active; refused
    /// credentials refuse the folder and the job waits; a permanent failure fails it; any
    /// other waits and retries like an upload's.
    fn settle_failed_deletion(
        &self,
        job: &Job,
        folder: &FolderConfig,
        backend: &Arc<Backend>,
        err: UploadError,
    ) {
        let path = job.path().display().to_string();
        let backend_label = folder.target.backend_name();
        match err {
            UploadError::Shutdown => {
                tracing::info!(
                    path,
                    "deletion interrupted by shutdown; it runs at the next start"
                );
            }
            UploadError::Remote {
                disposition: Disposition::Permanent,
                kind: ErrorKind::Auth,
                message,
                ..
            } => {
                tracing::warn!(
                    path,
                    reason = %message,
                    "the remote refused the deletion's credentials; the deletion waits until \
                     its folder's remote accepts them again"
                );
                self.refuse_and_wait(job, backend, backend_label, ErrorKind::Auth, &message);
            }
            UploadError::Remote {
                disposition: Disposition::Permanent,
                kind,
                message,
                ..
            } => {
                tracing::error!(path, reason = %message, kind = %kind, "deletion failed permanently");
                let permanent = FailureClass::Permanent;
                self.fail_job(job, backend_label, permanent, kind, &message);
            }
            err => {
                let delay = self.job_retry_delay(job, &err);
                tracing::warn!(path, attempt = job.attempts + 1, retry_in_s = delay.as_secs(), reason = %err, "deletion failed; will retry");
                self.metrics.failed(
                    &job.key.folder,
                    backend_label,
                    FailureClass::Transient,
                    err.kind().unwrap_or(ErrorKind::Unexpected),
                    true,
                );
                let at = self.store.now() + delay;
                self.record(job, self.store.retry_later(job.id, at, &err.to_string()));
            }
        }
    }

    /// Step 5 in a Redivis table: the upload deleted freed its name, so the files of the
    /// folder refused for colliding with it under Redivis' name escaping are tried again
    /// (their reason asks to rename one of the files; deleting one frees the name too).
    fn retry_collisions_with(&self, job: &Job) {
        let freed = names::escape(&job.key.rel);
        let conflict = ErrorKind::Conflict.label();
        let collided = |other: &Job| {
            other.key.folder == job.key.folder
                && matches!(&other.state, JobState::Failed { kind: Some(kind), .. } if kind == conflict)
                && names::escape(&other.key.rel) == freed
        };
        let paths = match self.store.jobs_needing_attention() {
            Ok(jobs) => jobs
                .iter()
                .filter(|other| collided(other))
                .map(Job::path)
                .collect(),
            Err(err) => return self.record(job, Err(err)),
        };
        match self.store.retry_failed(&RetrySelection::Paths(paths)) {
            Ok(0) => {}
            Ok(retried) => {
                tracing::info!(path = %job.key, retried, "the deleted upload freed its Redivis name; the files that collided with it are tried again");
                self.wake.notify_one();
            }
            Err(err) => self.record(job, Err(err)),
        }
    }

    /// Steps 1 to 3.
    fn check_deletion<'a>(&'a self, job: &Job) -> Checked<'a> {
        let store = &self.store;
        let Some(folder) = self.config.folder_for(&job.key.folder) else {
            let config = Some(ErrorKind::Config.label());
            // The upload it kept (if any) waits with it for the folder's return.
            self.record(
                job,
                store.fail_keeping_upload(job.id, FOLDER_REMOVED, config),
            );
            return Checked::Done;
        };
        if folder.deletes.on_delete == OnDelete::Keep {
            tracing::info!(path = %job.key, "the folder keeps remote copies now; not deleting");
            self.record(job, store.complete_deletion(job.id, None).map(drop));
            return Checked::Done;
        }
        if !Path::new(&job.key.folder).is_dir() {
            let at = self.store.now() + MISSING_ROOT_WAIT;
            let reason = "the folder is missing; its deletions wait for it";
            self.record(job, store.retry_later(job.id, at, reason));
            return Checked::Done;
        }
        match std::fs::symlink_metadata(job.path()) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Ok(meta) if meta.is_file() => {
                tracing::info!(path = %job.key, "the file is back; uploading it instead of deleting");
                self.record(job, turn_into_upload(store, job, &Fingerprint::of(&meta)));
                self.wake.notify_one();
                return Checked::Done;
            }
            // A directory, a symlink or a FIFO in the file's place is not a deletion of
            // the file (`watch::is_gone`), and it is nothing to upload either: the copy
            // stays as it is, and the job ends without a remote request.
            Ok(_) => {
                tracing::info!(path = %job.key, "the file's name holds something that is not a file now; its copy is kept and nothing is uploaded");
                self.record(job, store.complete_deletion(job.id, None).map(drop));
                return Checked::Done;
            }
            Err(err) => {
                let at = self.store.now() + MISSING_ROOT_WAIT;
                let reason = format!("cannot tell whether {} is gone: {err}", job.key);
                self.record(job, store.retry_later(job.id, at, &reason));
                return Checked::Done;
            }
        }
        match store.ledger_get(&job.key) {
            Ok(Some(entry)) => Checked::Delete(folder, entry),
            Ok(None) => {
                self.record(job, store.complete_deletion(job.id, None).map(drop));
                Checked::Done
            }
            Err(err) => {
                let at = self.store.now() + MISSING_ROOT_WAIT;
                self.record(job, store.retry_later(job.id, at, &err.to_string()));
                Checked::Done
            }
        }
    }
}

/// Step 2: the claimed deletion becomes the upload of `fingerprint`, queued now.
fn turn_into_upload(
    store: &Store,
    job: &Job,
    fingerprint: &Fingerprint,
) -> Result<(), crate::queue::StoreError> {
    store.offer(&job.key, fingerprint)?;
    store.requeue(job.id)
}
