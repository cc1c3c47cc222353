//! Waiting for remote imports without holding a worker.
//!
//! Redivis imports an upload after upload.post (seconds to minutes per file). Workers are
//! for bytes on the wire, so the wait happens here:
//! 1. A worker whose upload came back posted moves its job to `importing` (durably, with
//!    the upload's URI, table, MD5 and the posted version) and hands it over; at start,
//!    every importing job of the store is handed over again (it is never posted again).
//! 2. One task per importing job waits through the table's shared poller, which polls all
//!    of a table's imports together (in the released version when a release took the
//!    upload along).
//! 3. Imported with our size and MD5: the ledger records it; a file changed meanwhile is
//!    queued again by the same transition, and so is one whose folder was given another
//!    target meanwhile (module `retarget`). Its "imported" line names the table it was
//!    imported into (the released version's after a release), not the one posted to.
//! 4. Imported with another size or hash: the upload is deleted and the file queued to be
//!    sent again; the second time for the same content fails the job.
//! 5. Failed by Redivis: the reason (Redivis' `errorMessage`, and its count of bad
//!    records) is recorded durably with the job, still `importing`; the failed upload is
//!    removed from the table (its name is free again; after a crash the removal is simply
//!    done again), and the job fails. It is not posted again until the file changes or
//!    `upsync retry`.
//! 6. The upload gone from the table (deleted by someone; not found in the version
//!    released meanwhile either): the file is queued to be sent again.
//! 7. The polls failing (the remote down, 5xx, or its credentials refused: a token revoked
//!    or rotated while the import ran): wait until the remote answers again or after a
//!    pause, then poll again. A refusal is logged once; the import it waits for is not
//!    failed, since fixed credentials let the wait end by itself.
//!
//! Shutdown ends every wait at once; the jobs stay `importing` for the next start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::retarget::target_identity;
use super::status::Live;
use super::uploaded::{RemoteLabel, Told, UploadLine, record_upload};
use crate::config::Target;
use crate::metrics::{FailureClass, Metrics};
use crate::queue::{Completed, Completion, Import, Job, JobId, Store};
use crate::upload::Backends;
use crate::upload::backoff::Backoff;
use crate::upload::redivis::Imported;
use crate::upload::retry::CallScope;
use crate::upload::{Backend, Disposition, ErrorKind, Posted, UploadError};

/// Pauses between polls that failed: 2 s doubling up to this.
const FAILED_POLL_MAX: Duration = Duration::from_secs(30);

/// The importing jobs being waited for.
pub(crate) struct Imports {
    store: Store,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    waiting: Mutex<HashSet<JobId>>,
}

impl Imports {
    pub(crate) fn new(
        store: Store,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> Imports {
        Imports {
            store,
            live,
            metrics,
            wake,
            stop,
            waiting: Mutex::new(HashSet::new()),
        }
    }

    /// Step 1 at start: waits for every importing job of the store.
    pub(crate) fn resume(self: &Arc<Self>, backends: &Backends) {
        let jobs = match self.store.importing_jobs() {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the importing jobs from the state database");
                return;
            }
        };
        if !jobs.is_empty() {
            tracing::info!(
                jobs = jobs.len(),
                "waiting again for the imports of the last run"
            );
        }
        for job in jobs {
            match &backends.redivis {
                // What that run's transfer sent is not stored: the line names no rate.
                Some(backend) => self.track(job, None, Arc::clone(backend)),
                None => {
                    tracing::warn!(path = %job.key, "an importing file waits for a [redivis] section to be configured again")
                }
            }
        }
    }

    /// Waits for `job`'s import (steps 2–6); a job already waited for is left alone.
    /// `sent`: the bytes its transfer sent, when known (fewer than the file's when it
    /// resumed one of an earlier attempt).
    pub(crate) fn track(self: &Arc<Self>, job: Job, sent: Option<u64>, backend: Arc<Backend>) {
        if job.import.is_none() || !self.lock().insert(job.id) {
            return;
        }
        let imports = Arc::clone(self);
        tokio::spawn(async move {
            let id = job.id;
            imports.wait_for(job, sent, backend).await;
            imports.lock().remove(&id);
        });
    }

    async fn wait_for(&self, job: Job, sent: Option<u64>, backend: Arc<Backend>) {
        let (Backend::Redivis(redivis), Some(import)) = (&*backend, job.import.clone()) else {
            return;
        };
        let posted = Posted {
            remote: import.remote.clone(),
            target: import.target.clone(),
            md5: import.md5.clone(),
        };
        let scope = CallScope::until(self.stop.clone());
        let mut backoff = Backoff::new(Duration::from_secs(2), FAILED_POLL_MAX);
        // Whether a refusal of the credentials was logged: once per wait, not per poll.
        let mut told_refused = false;
        // Set once the failure is recorded: from then on only the removal is left.
        let mut failed = import
            .failed
            .clone()
            .map(|reason| (reason, import.remote.clone()));
        loop {
            let outcome = match &failed {
                Some((reason, uri)) => redivis
                    .remove_failed(&import.target, &job.key.rel, uri, &scope)
                    .await
                    .map(|()| Imported::Failed {
                        reason: reason.clone(),
                        uri: uri.clone(),
                    }),
                None => {
                    let size = import.fingerprint.size;
                    redivis
                        .await_import(&job.key.rel, &posted, size, &scope)
                        .await
                }
            };
            match outcome {
                Ok(Imported::Verified { uploaded, table }) => {
                    return self.completed(&job, &import, sent, uploaded, &table);
                }
                Ok(Imported::Corrupt(reason)) => return self.corrupt(&job, &reason),
                Ok(Imported::Gone(reason)) => return self.gone(&job, &reason),
                Ok(Imported::Failed { reason, .. }) if failed.is_some() => {
                    return self.failed(&job, ErrorKind::Rejected, &reason);
                }
                Ok(Imported::Failed { reason, uri }) => {
                    if let Err(err) = self.store.mark_import_failed(job.id, &uri, &reason) {
                        tracing::error!(job = job.id.0, error = %err, "cannot record a failed import in the state database");
                        return;
                    }
                    failed = Some((reason, uri));
                }
                Err(UploadError::Shutdown) => return,
                Err(UploadError::Remote {
                    disposition: Disposition::Permanent,
                    kind,
                    message,
                    ..
                }) if kind != ErrorKind::Auth => return self.failed(&job, kind, &message),
                Err(err) => {
                    if err.kind() == Some(ErrorKind::Auth) && !told_refused {
                        tracing::warn!(path = %job.key, reason = %err, "the remote refused the credentials of an import's poll; it polls again until they are accepted");
                        told_refused = true;
                    } else {
                        tracing::debug!(path = %job.key, error = %err, "cannot poll an import yet");
                    }
                    if !self.pause(&backend, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Step 7: waits after a poll that failed; false at shutdown.
    async fn pause(&self, backend: &Backend, backoff: &mut Backoff) -> bool {
        let pause = backoff.next_delay(None, &mut rand::rng());
        let health = backend.health();
        let came_back = async {
            if health.is_up() {
                std::future::pending().await
            } else {
                health.came_up().await
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = came_back => true,
            _ = tokio::time::sleep(pause) => true,
        }
    }

    /// Step 3.
    fn completed(
        &self,
        job: &Job,
        import: &Import,
        sent: Option<u64>,
        uploaded: crate::upload::Uploaded,
        table: &str,
    ) {
        let path = job.path().display().to_string();
        let imported_ms = self.store.now_ms().saturating_sub(import.posted_at_ms);
        let line = UploadLine {
            folder: &job.key.folder,
            path: &path,
            backend: "redivis",
            bytes: import.fingerprint.size,
            sent,
            transfer: Duration::from_millis(import.transfer_ms),
            import: Some(Duration::from_millis(imported_ms)),
            // The table it was imported into: after a release, the released version's.
            remote: RemoteLabel::Table {
                table,
                rel: &job.key.rel,
            },
        };
        record_upload(&self.metrics, &self.live, &line, Told::Alone);
        // Posted to the folder's table as configured then: a reload or a restart may have
        // given the folder another one since.
        let started_for = target_identity(&Target::RedivisTable(import.target.clone()));
        let recorded = self.store.complete_many(&[Completed {
            id: job.id,
            fingerprint: import.fingerprint,
            remote: uploaded.remote,
            md5: uploaded.md5,
            as_claimed: None,
            target: Some(started_for),
        }]);
        match recorded.map(|done| done[0]) {
            Ok(Completion::Recorded) => {}
            Ok(Completion::Retargeted) => {
                tracing::info!(
                    path,
                    "the folder's target changed during the file's import; uploading it to the new target"
                );
                self.wake.notify_one();
            }
            Ok(Completion::Superseded) => {
                tracing::info!(
                    path,
                    "file changed during its import; uploading the new version"
                );
                self.wake.notify_one();
            }
            Err(err) => {
                tracing::error!(job = job.id.0, error = %err, "cannot record an import in the state database")
            }
        }
    }

    /// Step 4.
    fn corrupt(&self, job: &Job, reason: &str) {
        if job.corrupt_imports >= 1 {
            let reason = format!("{} ({reason})", job.key.rel);
            return self.failed(job, ErrorKind::Unexpected, &reason);
        }
        tracing::warn!(path = %job.key, reason, "the import holds other bytes than were sent; sending the file again");
        if let Err(err) = self.store.requeue_corrupt(job.id, reason) {
            tracing::error!(job = job.id.0, error = %err, "cannot record a corrupt import in the state database");
        }
        self.wake.notify_one();
    }

    /// Step 6.
    fn gone(&self, job: &Job, reason: &str) {
        tracing::warn!(path = %job.key, reason, "the posted upload is gone; sending the file again");
        if let Err(err) = self.store.requeue(job.id) {
            tracing::error!(job = job.id.0, error = %err, "cannot queue a file again in the state database");
        }
        self.wake.notify_one();
    }

    /// Step 5 (and a second corrupt import).
    fn failed(&self, job: &Job, kind: ErrorKind, reason: &str) {
        tracing::error!(path = %job.key, reason, "upload failed permanently");
        if let Err(err) = self.store.fail_as(job.id, reason, Some(kind.label())) {
            tracing::error!(job = job.id.0, error = %err, "cannot record a failed import in the state database");
        }
        let permanent = FailureClass::Permanent;
        self.metrics
            .failed(&job.key.folder, "redivis", permanent, kind, false);
        // A file changed meanwhile was queued instead of failed.
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        // A plain set: a panicking holder cannot leave it half-changed.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
