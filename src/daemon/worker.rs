//! Workers: claim a job, upload it through its folder's backend, and record the outcome.
//!
//! Outcomes map to queue transitions in one place ([`Worker::settle_outcome`]):
//! success → ledger (unless the folder was given another target since the attempt
//! started: queued again, for the new target, module `retarget`); posted (the remote
//! imports it) → `importing`, handed to [`Imports`] and the worker is free; vanished file → job dropped (a file found gone before its
//! attempt, with an upload saved by an earlier one, has that upload given up on the remote
//! first); changed file → queued again;
//! permanent failure → `failed` with the reason; the remote waiting (a dataset without an
//! unreleased version) → queued again while the folder waits; anything transient →
//! `retry-wait` with a persisted, exponentially growing `next_attempt_at`; shutdown → left
//! `active` (recovered at start). Before that, a claimed upload of a file its folder's
//! globs or `recursive` no longer select (changed by a reload or a restart) is dropped,
//! an upload it saved given up on the remote first, as for a vanished file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::gates::Setback;
use super::imports::Imports;
use super::retarget::target_identity;
use super::schedule::Schedule;
use super::status::{InFlightStart, Live};
use super::uploaded::{BatchLine, RemoteLabel, Told, UploadLine, record_upload};
use crate::config::{Config, FolderConfig, Target};
use crate::fingerprint::Fingerprint;
use crate::metrics::{FailureClass, Metrics};
use crate::queue::{
    Claimed, Completed, Completion, Import, Job, JobKind, JobState, LedgerEntry, Store,
};
use crate::upload::backoff::delay_bound;
use crate::upload::retry::CallScope;
use crate::upload::{
    Backend, Backends, Delivery, ErrorKind, LiveProgress, Posted, UploadError, UploadJob, Uploaded,
};
use crate::watch::filter::Filter;

/// The first job-level retry delay; it doubles up to the config's `retry_max_delay`. A
/// remote that comes back makes every waiting job of its folders due at once, so the cap
/// only bounds how often a file the remote keeps refusing is tried.
const JOB_RETRY_BASE: Duration = Duration::from_secs(5);
/// Why a job whose folder left the configuration fails; the job is queued again when the
/// folder comes back (see `fleet`).
pub(super) const FOLDER_REMOVED: &str = "its folder is no longer in the configuration";

/// How long an idle worker sleeps when nothing wakes it, to pick up due retries (put on
/// the daemon's beat, module `beat`).
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    pub store: Store,
    pub backends: Backends,
    pub wake: Arc<Notify>,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// Stops claiming new jobs (this generation of workers).
    pub stop_claiming: CancellationToken,
    /// Cancelled when the daemon starts stopping: in-place retry pauses end at once.
    pub stopping: CancellationToken,
    /// Asks in-flight uploads to checkpoint and return.
    pub interrupt: CancellationToken,
    /// Which folders may be claimed from, and whose turn it is.
    pub schedule: Arc<Schedule>,
    /// Where posted uploads wait for their import.
    pub imports: Arc<Imports>,
    /// Each folder's include and exclude globs, compiled once for the generation.
    pub filters: Arc<Filters>,
}

/// The compiled [`Filter`] of each configured folder, by folder path.
pub struct Filters(HashMap<String, Filter>);

impl Filters {
    pub fn of(config: &Config) -> Filters {
        let compiled = config.folders.iter().filter_map(|folder| {
            // The config's checks compiled these globs already.
            let filter = Filter::new(&folder.include, &folder.exclude).ok()?;
            Some((folder.path.to_string_lossy().into_owned(), filter))
        });
        Filters(compiled.collect())
    }

    /// Whether the folder's scan would still select the file at `rel`: a job queued before
    /// a reload or a restart narrowed the folder's globs or turned `recursive` off is not.
    fn select(&self, folder: &FolderConfig, rel: &str) -> bool {
        self.0
            .get(folder.path.to_string_lossy().as_ref())
            .is_none_or(|filter| filter.selects(rel, folder.recursive))
    }
}

impl Worker {
    pub async fn run(self) {
        while !self.stop_claiming.is_cancelled() {
            let claimed = self.schedule.claim(
                &self.store,
                &self.config,
                &self.backends,
                &self.live.gates,
                self.store.now(),
            );
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::error!(error = %err, "cannot claim a job from the state database");
                    self.idle(Duration::from_secs(5)).await;
                    continue;
                }
            };
            match claimed {
                Some(job) => self.process(job).await,
                None => {
                    let next_due = self.schedule.next_due(
                        &self.store,
                        &self.config,
                        &self.backends,
                        &self.live.gates,
                    );
                    // A due job's time is kept; the poll goes on the daemon's beat.
                    let poll = crate::beat::on_beat(tokio::time::Instant::now() + IDLE_POLL);
                    let wake_at = match next_due {
                        Ok(Some(due)) => {
                            let wait = due.duration_since(self.store.now()).unwrap_or_default();
                            poll.min(tokio::time::Instant::now() + wait)
                        }
                        _ => poll,
                    };
                    self.idle_until(wake_at).await;
                }
            }
        }
    }

    async fn idle(&self, wait: Duration) {
        self.idle_until(tokio::time::Instant::now() + wait).await
    }

    async fn idle_until(&self, deadline: tokio::time::Instant) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = self.stop_claiming.cancelled() => {}
        }
    }

    /// Uploads a claimed job, together with more small ones when its backend batches them.
    async fn process(&self, job: Job) {
        if job.kind == JobKind::Delete {
            return self.process_deletion(job).await;
        }
        let batch = self.claim_batch_with(&job);
        if batch.is_empty() {
            self.process_one(job).await;
        } else {
            let mut jobs = Vec::with_capacity(batch.len() + 1);
            jobs.push(Claimed::from(job));
            jobs.extend(batch);
            self.process_batch(jobs).await;
        }
    }

    /// More due jobs to send in one request with `first`, when `first` is small and its
    /// backend sends small files several to a request: files for the same backend, within
    /// the backend's limits, claimed in one transaction.
    fn claim_batch_with(&self, first: &Job) -> Vec<Claimed> {
        let backend_of = |job: &Job| {
            self.config
                .folder_for(&job.key.folder)
                .and_then(|folder| self.backends.for_target(&folder.target))
        };
        let target_of = |job: &Job| {
            self.config
                .folder_for(&job.key.folder)
                .map(|folder| &folder.target)
        };
        let (Some(backend), Some(first_target)) = (backend_of(first), target_of(first)) else {
            return Vec::new();
        };
        let Some(limits) = backend.batch_limits(first_target) else {
            return Vec::new();
        };
        if first.fingerprint.size > limits.max_file_size || limits.max_files < 2 {
            return Vec::new();
        }
        let mut bytes = first.fingerprint.size;
        let claimed = self
            .store
            .claim_more(first, self.store.now(), limits.max_files - 1, |job| {
                let size = job.fingerprint.size;
                let same_target = !limits.one_target || target_of(job) == Some(first_target);
                let fits = job.kind == JobKind::Upload
                    && size <= limits.max_file_size
                    && bytes + size <= limits.max_bytes
                    && same_target
                    && backend_of(job).is_some_and(|b| Arc::ptr_eq(b, backend));
                if fits {
                    bytes += size;
                }
                fits
            });
        match claimed {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "cannot claim a batch of jobs from the state database");
                Vec::new()
            }
        }
    }

    async fn process_one(&self, job: Job) {
        let mut prepared = match self.prepare(&job) {
            Ok(prepared) => prepared,
            Err(NotReady::Settled) => return,
            Err(NotReady::DropWithSavedUpload(backend, why)) => {
                return self.give_up_saved_upload(&job, &backend, why).await;
            }
        };
        let started = Instant::now();
        let outcome = prepared.backend.upload(&mut prepared.upload).await;
        self.live.in_flight.remove(job.id);
        let attempt = prepared.finished(&job, started);
        self.settle_outcome(&attempt, outcome);
    }

    /// Uploads several jobs in one backend call and records all that succeeded in one
    /// state-database transaction (one flush for the batch).
    async fn process_batch(&self, jobs: Vec<Claimed>) {
        let mut ready: Vec<(Claimed, Prepared)> = Vec::with_capacity(jobs.len());
        for claimed in jobs {
            match self.prepare(&claimed.job) {
                Ok(prepared) => ready.push((claimed, prepared)),
                Err(NotReady::Settled) => {}
                Err(NotReady::DropWithSavedUpload(backend, why)) => {
                    self.give_up_saved_upload(&claimed.job, &backend, why).await;
                }
            }
        }
        let Some(backend) = ready.first().map(|(_, p)| Arc::clone(&p.backend)) else {
            return;
        };
        let started = Instant::now();
        let backend_label = ready[0].1.backend_name;
        let (jobs, prepared): (Vec<Claimed>, Vec<Prepared>) = ready.into_iter().unzip();
        let (displays, mut uploads): (Vec<String>, Vec<UploadJob>) =
            prepared.into_iter().map(|p| (p.display, p.upload)).unzip();
        let outcomes = backend.upload_batch(&mut uploads).await;
        let held = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(Delivery::Uploaded(_))))
            .count();
        let mut batch_line = BatchLine::of(held);
        // The uploads the remote holds, with their job and path; `entries` for the store.
        let mut completed = Vec::with_capacity(jobs.len());
        let mut entries = Vec::with_capacity(jobs.len());
        for (((Claimed { job, as_claimed }, display), upload), outcome) in
            jobs.into_iter().zip(&displays).zip(&uploads).zip(outcomes)
        {
            self.live.in_flight.remove(job.id);
            let attempt = Finished {
                job: &job,
                path: display,
                backend: &backend,
                backend_name: backend_label,
                target: &upload.target,
                fingerprint: upload.fingerprint,
                sent: upload.live.sent_by_attempt(upload.fingerprint.size),
                started,
            };
            match outcome {
                Ok(Delivery::Uploaded(uploaded)) => {
                    self.count_success(&attempt, &uploaded.remote, batch_line.told());
                    batch_line.add(&job.key.folder, upload.fingerprint.size);
                    entries.push(Completed {
                        id: job.id,
                        fingerprint: upload.fingerprint,
                        remote: uploaded.remote,
                        md5: uploaded.md5,
                        as_claimed,
                        target: Some(target_identity(&upload.target)),
                    });
                    completed.push((job, display));
                }
                other => self.settle_outcome(&attempt, other),
            }
        }
        batch_line.log(backend_label, started.elapsed());
        if entries.is_empty() {
            return;
        }
        match self.store.complete_many(&entries) {
            Ok(done) => {
                for ((job, display), done) in completed.iter().zip(done) {
                    self.after_complete(job, display, Ok(done));
                }
            }
            Err(err) => {
                tracing::error!(jobs = entries.len(), error = %err, "cannot record a batch of uploads in the state database");
            }
        }
    }

    /// The checks before an upload: the upload, ready, or why the job ends before it
    /// (`Err`). Each step lets the job go on or ends it there:
    /// 1. its folder is still configured ([`Worker::folder_of`]);
    /// 2. the folder's filters still select its file ([`Worker::check_selected`]);
    /// 3. the file is there, and which version it is ([`Worker::current_version`]);
    /// 4. that version is not on the remote yet, and has settled ([`Worker::check_version`]);
    /// 5. a backend serves the folder's target ([`Worker::backend_for`]);
    /// 6. the upload is registered as in flight and built ([`Worker::start_upload`]).
    fn prepare(&self, job: &Job) -> Step<Prepared> {
        let folder = self.folder_of(job)?;
        let path = Path::new(&job.key.folder).join(&job.key.rel);
        self.check_selected(job, folder, &path)?;
        let fingerprint = self.current_version(job, folder, &path)?;
        let previous = self.check_version(job, folder, &path, &fingerprint)?;
        let backend = self.backend_for(job, folder)?;
        Ok(self.start_upload(job, folder, path, fingerprint, previous, backend))
    }

    /// Step 1 of [`Worker::prepare`].
    fn folder_of(&self, job: &Job) -> Step<&FolderConfig> {
        self.config.folder_for(&job.key.folder).ok_or_else(|| {
            // Its saved upload waits with it for the folder's return, which resumes it or
            // gives it up: its target, and so whom to cancel it with, is no longer known.
            let (class, kind) = (FailureClass::Config, ErrorKind::Config);
            self.fail_job_keeping_upload(job, "none", class, kind, FOLDER_REMOVED);
            NotReady::Settled
        })
    }

    /// Step 2 of [`Worker::prepare`].
    fn check_selected(&self, job: &Job, folder: &FolderConfig, path: &Path) -> Step<()> {
        if self.filters.select(folder, &job.key.rel) {
            return Ok(());
        }
        Err(self.drop_before_upload(job, folder, path, Dropped::Deselected))
    }

    /// Step 3 of [`Worker::prepare`].
    fn current_version(&self, job: &Job, folder: &FolderConfig, path: &Path) -> Step<Fingerprint> {
        match Fingerprint::read(path) {
            Ok(fingerprint) => Ok(fingerprint),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(self.drop_before_upload(job, folder, path, Dropped::Vanished))
            }
            Err(err) => {
                let reason = format!("cannot stat {}: {err}", path.display());
                tracing::error!(path = %path.display(), reason = %reason, "upload failed");
                let (backend, class) = (folder.target.backend_name(), FailureClass::Unreadable);
                // The file may still be there (a permission, an I/O error): the attempt
                // after `upsync retry`, a new version or its deletion resumes the upload
                // an earlier attempt saved, or gives it up on the remote.
                self.fail_job_keeping_upload(job, backend, class, ErrorKind::LocalIo, &reason);
                Err(NotReady::Settled)
            }
        }
    }

    /// Steps 2 and 3 of [`Worker::prepare`]: a job whose file is no longer to upload is
    /// dropped, through its backend when an earlier attempt saved an upload there.
    fn drop_before_upload(
        &self,
        job: &Job,
        folder: &FolderConfig,
        path: &Path,
        why: Dropped,
    ) -> NotReady {
        if let Some(backend) = self.backend_holding_saved_upload(job, folder) {
            return NotReady::DropWithSavedUpload(backend, why);
        }
        tracing::info!(path = %path.display(), "{}", why.reason());
        self.record(job, self.store.drop_job(job.id));
        NotReady::Settled
    }

    /// Step 4 of [`Worker::prepare`]: the file's ledger entry (the previous upload, which
    /// the backend is given) when this version still has to go.
    fn check_version(
        &self,
        job: &Job,
        folder: &FolderConfig,
        path: &Path,
        fingerprint: &Fingerprint,
    ) -> Step<Option<LedgerEntry>> {
        // One ledger read serves both the check below and the backend (the previous upload).
        let previous = self.store.ledger_get(&job.key).ok().flatten();
        if previous
            .as_ref()
            .is_some_and(|entry| fingerprint.is_version_of(&entry.fingerprint))
        {
            // This exact version is already on the remote (e.g. reverted to an uploaded state).
            self.record(job, self.store.drop_job(job.id));
            return Err(NotReady::Settled);
        }
        if *fingerprint != job.fingerprint && !settled_by_mtime(fingerprint, folder) {
            // Still being written: the watcher offers the new version once it settles.
            let at = self.store.now() + folder.settle;
            self.record(
                job,
                self.store.retry_later(job.id, at, "file is still changing"),
            );
            return Err(NotReady::Settled);
        }
        if *fingerprint != job.fingerprint {
            // Record the version we are about to send, so completing it does not requeue.
            if let Err(err) = self.store.offer(&job.key, fingerprint) {
                tracing::warn!(path = %path.display(), error = %err, "cannot update the job's fingerprint");
            }
        }
        Ok(previous)
    }

    /// Step 5 of [`Worker::prepare`].
    fn backend_for(&self, job: &Job, folder: &FolderConfig) -> Step<Arc<Backend>> {
        self.backends
            .for_target(&folder.target)
            .cloned()
            .ok_or_else(|| {
                let reason = "no backend is configured for this folder's target";
                let (backend, class) = (folder.target.backend_name(), FailureClass::Config);
                // Nothing here can cancel the upload an earlier attempt saved: it stays for
                // the attempt after `upsync retry`, which resumes it or gives it up.
                self.fail_job_keeping_upload(job, backend, class, ErrorKind::Config, reason);
                NotReady::Settled
            })
    }

    /// Step 6 of [`Worker::prepare`].
    fn start_upload(
        &self,
        job: &Job,
        folder: &FolderConfig,
        path: PathBuf,
        fingerprint: Fingerprint,
        previous: Option<LedgerEntry>,
        backend: Arc<Backend>,
    ) -> Prepared {
        let live = Arc::new(LiveProgress::default());
        live.set(0, fingerprint.size);
        let display = path.display().to_string();
        let resumed = matches!(self.store.load_progress(job.id), Ok(Some(_)));
        self.live.in_flight.insert(
            job.id,
            InFlightStart {
                path: display.clone(),
                folder: job.key.folder.clone(),
                pending_since_ms: job.created_at_ms,
                live: Arc::clone(&live),
                resumed,
            },
        );
        let mut upload = UploadJob::new(
            job.id,
            path,
            job.key.rel.clone(),
            folder.target.clone(),
            fingerprint,
            job.finalize_started,
            previous,
            self.store.clone(),
            live,
            CallScope {
                stop: self.stopping.clone(),
                checkpoint: self.interrupt.clone(),
                entries: Vec::new(),
            },
        )
        .with_redivis(folder.redivis.clone());
        upload.unconfirmed_since_ms = job.unconfirmed_attempt_ms;
        upload.saved_progress = resumed;
        Prepared {
            upload,
            backend,
            backend_name: folder.target.backend_name(),
            display,
        }
    }

    /// The backend of `folder`'s target, when `job` saved an upload that it may still
    /// hold (to give up before the job is dropped).
    fn backend_holding_saved_upload(
        &self,
        job: &Job,
        folder: &FolderConfig,
    ) -> Option<Arc<Backend>> {
        let saved = matches!(self.store.load_progress(job.id), Ok(Some(_)));
        saved
            .then(|| self.backends.for_target(&folder.target).cloned())
            .flatten()
    }

    /// `job` is dropped (`why`) and an earlier attempt saved an upload the remote may
    /// still hold: the backend gives it up there (a KiFS multipart upload is cancelled),
    /// then the job is dropped. A stop leaves the job to the next start, its upload with it.
    async fn give_up_saved_upload(&self, job: &Job, backend: &Backend, why: Dropped) {
        let scope = CallScope {
            stop: self.stopping.clone(),
            checkpoint: self.interrupt.clone(),
            entries: Vec::new(),
        };
        // A stop skips or cuts the cancel short: the job, still claimed, is found with its
        // upload at the next start.
        if !backend
            .abandon_saved_upload(&self.store, job.id, &scope)
            .await
        {
            return;
        }
        tracing::info!(path = %job.path().display(), "{}; its saved upload is given up", why.reason());
        self.record(job, self.store.drop_job(job.id));
    }

    fn settle_outcome(&self, attempt: &Finished<'_>, outcome: Result<Delivery, UploadError>) {
        let Finished {
            job,
            path,
            backend_name: backend,
            ..
        } = *attempt;
        match outcome {
            Ok(Delivery::Uploaded(uploaded)) => self.record_upload(attempt, uploaded),
            Ok(Delivery::Posted(posted)) => self.start_import(attempt, posted),
            Err(UploadError::Vanished(_)) => {
                tracing::info!(path, "file vanished during its upload; dropping the job");
                self.record(job, self.store.drop_job(job.id));
            }
            Err(UploadError::Changed) => {
                tracing::info!(
                    path,
                    "file changed during its upload; starting again with the new content"
                );
                self.record(job, self.store.requeue(job.id));
                self.wake.notify_one();
            }
            Err(UploadError::Shutdown) => {
                tracing::info!(
                    path,
                    "upload interrupted by shutdown; it resumes at the next start"
                );
            }
            Err(UploadError::Waiting(reason)) => self.hold_folder(attempt, &reason),
            Err(UploadError::Unreadable(reason)) => {
                tracing::error!(path, reason = %reason, "upload failed");
                let unreadable = FailureClass::Unreadable;
                self.fail_job(job, backend, unreadable, ErrorKind::LocalIo, &reason);
            }
            Err(UploadError::Remote {
                disposition: crate::upload::Disposition::Permanent,
                kind: ErrorKind::Auth,
                message,
                ..
            }) => self.refuse_folder(attempt, &message),
            // The one `NotFound` of a KiFS upload: its folder's directory is gone.
            Err(UploadError::Remote {
                disposition: crate::upload::Disposition::Permanent,
                kind: ErrorKind::NotFound,
                message,
                ..
            }) if matches!(attempt.target, Target::KifsDirectory { .. }) => {
                // Said once, by the folder's refusal; a batch's files would say it each.
                tracing::debug!(
                    path,
                    reason = %message,
                    "the folder's KiFS directory is gone; the file waits until a check of the \
                     folder finds it"
                );
                let kind = ErrorKind::NotFound;
                self.refuse_and_wait(job, attempt.backend, backend, kind, &message);
            }
            Err(UploadError::Remote {
                disposition: crate::upload::Disposition::Permanent,
                kind,
                status,
                endpoint,
                message,
            }) => {
                let endpoint = endpoint.map(tracing::field::display);
                tracing::error!(path, reason = %message, kind = %kind, status, endpoint, "upload failed permanently");
                self.fail_job(job, backend, FailureClass::Permanent, kind, &message);
            }
            Err(err @ (UploadError::Remote { .. } | UploadError::Store(_))) => {
                self.retry_later(attempt, &err);
            }
        }
    }

    /// A single upload that reached the remote: counted, told, and recorded in the ledger.
    fn record_upload(&self, attempt: &Finished<'_>, uploaded: Uploaded) {
        let job = attempt.job;
        self.count_success(attempt, &uploaded.remote, Told::Alone);
        let entry = Completed {
            id: job.id,
            fingerprint: attempt.fingerprint,
            remote: uploaded.remote,
            md5: uploaded.md5,
            as_claimed: None,
            target: Some(target_identity(attempt.target)),
        };
        let recorded = self.store.complete_many(&[entry]);
        self.after_complete(job, attempt.path, recorded.map(|done| done[0]));
    }

    /// A transient failure (of the remote, or of the state database): counted, told, and
    /// the job parked until its next attempt ([`Worker::job_retry_delay`]).
    fn retry_later(&self, attempt: &Finished<'_>, err: &UploadError) {
        let Finished {
            job,
            path,
            backend_name: backend,
            ..
        } = *attempt;
        let after = retry_after_of(err);
        let delay = self.job_retry_delay(job, err);
        let class = match err {
            UploadError::Store(_) => FailureClass::StateDatabase,
            _ => FailureClass::Transient,
        };
        let kind = err.kind().unwrap_or(ErrorKind::StateDatabase);
        self.metrics
            .failed(&job.key.folder, backend, class, kind, true);
        tracing::warn!(
            path,
            attempt = job.attempts + 1,
            retry_in_s = delay.as_secs(),
            honoured_retry_after_s = after.map(|a| a.as_secs()),
            reason = %err,
            kind = %kind,
            "upload failed; will retry"
        );
        let at = self.store.now() + delay;
        self.record(job, self.store.retry_later(job.id, at, &err.to_string()));
    }

    /// The pause before a job's next attempt after the transient failure `err`: growing
    /// with its attempts, jittered, and never shorter than the remote asked.
    pub(super) fn job_retry_delay(&self, job: &Job, err: &UploadError) -> Duration {
        let bound = delay_bound(JOB_RETRY_BASE, self.config.retry_max_delay, job.attempts);
        let jittered = bound / 2 + bound.mul_f64(rand::random::<f64>() / 2.0);
        retry_after_of(err).map_or(jittered, |after| after.max(jittered))
    }

    /// The remote cannot take the folder's files for now (not an error): the file is
    /// queued again, unfailed, and the folder waits until its check finds the remote ready.
    fn hold_folder(&self, attempt: &Finished<'_>, reason: &str) {
        let job = attempt.job;
        tracing::debug!(
            path = attempt.path,
            reason,
            "the remote cannot take the file yet; it waits queued"
        );
        // The folder closes before its job is due again (module doc of `gates`).
        self.set_folder_back(job, attempt.backend, Setback::Waiting(reason));
        self.record(job, self.store.requeue(job.id));
    }

    /// The remote refused the upload for its credentials or permissions, which the
    /// folder's check had accepted: the file waits, unfailed and due at once with its
    /// progress kept (a session resumes once the credentials are right again), and the
    /// folder is refused until a check of its remote passes ([`super::gates`]).
    fn refuse_folder(&self, attempt: &Finished<'_>, reason: &str) {
        tracing::warn!(
            path = attempt.path,
            reason,
            "the remote refused the upload's credentials; the file waits until its folder's \
             remote accepts them again"
        );
        let (job, backend) = (attempt.job, attempt.backend);
        self.refuse_and_wait(job, backend, attempt.backend_name, ErrorKind::Auth, reason);
    }

    /// The remote refused a request of `job` (its upload or its deletion) for what the
    /// folder's check judges (credentials or permissions, a directory gone): the failure
    /// is counted as a transient one of `kind`, the folder is refused with `reason`, and
    /// the job waits, due at once, for a check of the folder to pass.
    pub(super) fn refuse_and_wait(
        &self,
        job: &Job,
        backend: &Arc<Backend>,
        backend_name: &'static str,
        kind: ErrorKind,
        reason: &str,
    ) {
        self.metrics.failed(
            &job.key.folder,
            backend_name,
            FailureClass::Transient,
            kind,
            true,
        );
        // The folder closes before its job is due again (module doc of `gates`).
        self.set_folder_back(job, backend, Setback::Refused(reason));
        self.record(
            job,
            self.store.retry_later(job.id, self.store.now(), reason),
        );
    }

    /// `job`'s folder, if still configured, stops taking files ([`Setback`]).
    fn set_folder_back(&self, job: &Job, backend: &Arc<Backend>, setback: Setback<'_>) {
        if let Some(folder) = self.config.folder_for(&job.key.folder) {
            self.live.gates.set_back(
                folder,
                Arc::clone(backend),
                Arc::clone(&self.wake),
                &self.stopping,
                setback,
            );
        }
    }

    /// The log line, metrics and status figures of one uploaded file.
    fn count_success(&self, attempt: &Finished<'_>, remote: &str, told: Told) {
        let line = UploadLine {
            folder: &attempt.job.key.folder,
            path: attempt.path,
            backend: attempt.backend_name,
            bytes: attempt.fingerprint.size,
            sent: Some(attempt.sent),
            transfer: attempt.started.elapsed(),
            import: None,
            remote: RemoteLabel::of(attempt.target, &attempt.job.key.rel, remote),
        };
        record_upload(&self.metrics, &self.live, &line, told);
    }

    /// The remote holds the bytes and imports them: the job waits in `importing`, without
    /// this worker ([`Imports`]).
    fn start_import(&self, attempt: &Finished<'_>, posted: Posted) {
        let job = attempt.job;
        let import = Import {
            remote: posted.remote,
            target: posted.target,
            fingerprint: attempt.fingerprint,
            md5: posted.md5,
            posted_at_ms: self.store.now_ms(),
            transfer_ms: u64::try_from(attempt.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            failed: None,
        };
        if let Err(err) = self.store.mark_importing(job.id, import.clone()) {
            // Left finalizing: the next start finds the posted upload and adopts it.
            return self.record(job, Err(err));
        }
        tracing::debug!(path = attempt.path, upload = %import.remote, "posted; the remote imports it");
        let importing = Job {
            state: JobState::Importing,
            import: Some(import),
            ..job.clone()
        };
        let sent = Some(attempt.sent);
        self.imports
            .track(importing, sent, Arc::clone(attempt.backend));
    }

    fn after_complete(
        &self,
        job: &Job,
        path: &str,
        recorded: Result<Completion, crate::queue::StoreError>,
    ) {
        let queued_again = match recorded {
            Ok(Completion::Retargeted) => Some(
                "the folder's target changed during the file's upload; uploading it to the new target",
            ),
            Ok(Completion::Superseded) => {
                Some("file changed during its upload; uploading the new version")
            }
            Ok(Completion::Recorded) | Err(_) => None,
        };
        if let Some(why) = queued_again {
            tracing::info!(path, "{why}");
            self.wake.notify_one();
        }
        self.record(job, recorded.map(|_| ()));
    }

    /// Fails `job` for good with `reason`, recording its `kind`, and counts the failure.
    pub(super) fn fail_job(
        &self,
        job: &Job,
        backend: &str,
        class: FailureClass,
        kind: ErrorKind,
        reason: &str,
    ) {
        let failed = self.store.fail_as(job.id, reason, Some(kind.label()));
        self.count_failure(job, failed, backend, class, kind);
    }

    /// [`Worker::fail_job`] before any attempt, keeping the upload an earlier attempt saved
    /// (`Store::fail_keeping_upload`) for a later attempt to resume or give up.
    fn fail_job_keeping_upload(
        &self,
        job: &Job,
        backend: &str,
        class: FailureClass,
        kind: ErrorKind,
        reason: &str,
    ) {
        let failed = self
            .store
            .fail_keeping_upload(job.id, reason, Some(kind.label()));
        self.count_failure(job, failed, backend, class, kind);
    }

    /// Records a failure the store was told of (`failed`) and counts it in the metrics.
    fn count_failure(
        &self,
        job: &Job,
        failed: Result<(), crate::queue::StoreError>,
        backend: &str,
        class: FailureClass,
        kind: ErrorKind,
    ) {
        self.record(job, failed);
        self.metrics
            .failed(&job.key.folder, backend, class, kind, false);
    }

    pub(super) fn record(&self, job: &Job, result: Result<(), crate::queue::StoreError>) {
        if let Err(err) = result {
            tracing::error!(job = job.id.0, error = %err, "cannot record a job's outcome in the state database");
        }
    }
}

/// Why a job does not go on to its upload after [`Worker::prepare`].
enum NotReady {
    /// The job was settled without uploading.
    Settled,
    /// The job is dropped, and an earlier attempt saved an upload this backend may hold.
    DropWithSavedUpload(Arc<Backend>, Dropped),
}

/// A step of [`Worker::prepare`]: `Err` ends the job's way to its upload.
type Step<T> = Result<T, NotReady>;

/// Why a job is dropped before its attempt.
#[derive(Clone, Copy)]
enum Dropped {
    /// Its file is gone.
    Vanished,
    /// Its folder's globs or `recursive` no longer select its file.
    Deselected,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Dropped::Vanished => "file vanished before its upload; dropping the job",
            Dropped::Deselected => {
                "the folder's include, exclude or recursive no longer selects the file; dropping its job"
            }
        }
    }
}

/// A claimed job ready to upload.
struct Prepared {
    upload: UploadJob,
    backend: Arc<Backend>,
    /// The backend's label in metrics and status.
    backend_name: &'static str,
    /// The local path, for logs and the status report.
    display: String,
}

impl Prepared {
    fn finished<'a>(&'a self, job: &'a Job, started: Instant) -> Finished<'a> {
        Finished {
            job,
            path: &self.display,
            backend: &self.backend,
            backend_name: self.backend_name,
            target: &self.upload.target,
            fingerprint: self.upload.fingerprint,
            sent: self
                .upload
                .live
                .sent_by_attempt(self.upload.fingerprint.size),
            started,
        }
    }
}

/// An attempt that ended, as [`Worker::settle_outcome`] records it.
#[derive(Clone, Copy)]
struct Finished<'a> {
    job: &'a Job,
    /// The local path, for logs.
    path: &'a str,
    backend: &'a Arc<Backend>,
    backend_name: &'static str,
    target: &'a Target,
    /// The version the attempt sent.
    fingerprint: Fingerprint,
    /// The bytes of it this attempt sent (fewer than its size when it resumed).
    sent: u64,
    started: Instant,
}

/// The pause a remote asked for (`Retry-After`), if it did.
fn retry_after_of(err: &UploadError) -> Option<Duration> {
    match err {
        UploadError::Remote {
            disposition: crate::upload::Disposition::Retry { after },
            ..
        } => *after,
        _ => None,
    }
}

/// A version whose mtime is older than the settle time is complete even if the watcher has
/// not offered it yet.
fn settled_by_mtime(fingerprint: &Fingerprint, folder: &FolderConfig) -> bool {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    now_ns - fingerprint.mtime_ns >= folder.settle.as_nanos() as i128
}
