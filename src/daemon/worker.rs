//! Workers: claim a job, upload it through its folder's backend, and record the outcome.
//!
//! Outcomes map to queue transitions in one place ([`Worker::settle_outcome`]):
//! success → ledger; vanished file → job dropped; changed file → queued again; permanent
//! failure → `failed` with the reason; anything transient → `retry-wait` with a persisted,
//! exponentially growing `next_attempt_at`; shutdown → left `active` (recovered at start).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::status::InFlightRegistry;
use crate::config::{Config, FolderConfig, Target};
use crate::fingerprint::Fingerprint;
use crate::queue::{Job, Store};
use crate::upload::backoff::delay_bound;
use crate::upload::{Backend, LiveProgress, UploadError, UploadJob, Uploaded};

/// Job-level retry delays: 5 s doubling up to an hour, so an outage of any length ends in a
/// retry within the hour after it, without a hot loop.
const JOB_RETRY_BASE: Duration = Duration::from_secs(5);
const JOB_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Why a job whose folder left the configuration fails; the job is queued again when the
/// folder comes back (see `fleet`).
pub(super) const FOLDER_REMOVED: &str = "its folder is no longer in the configuration";
/// Environment variable lowering [`JOB_RETRY_MAX`] (a duration such as `10s`), so that
/// tests of long outages finish in CI time; not meant for production.
pub const JOB_RETRY_MAX_ENV: &str = "UPSYNC_JOB_RETRY_MAX";

fn job_retry_max() -> Duration {
    static MAX: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let Some(value) = std::env::var_os(JOB_RETRY_MAX_ENV) else {
            return JOB_RETRY_MAX;
        };
        match humantime::parse_duration(&value.to_string_lossy()) {
            Ok(max) => {
                tracing::warn!(max = %humantime::format_duration(max), "{JOB_RETRY_MAX_ENV} caps job-level retry delays");
                max.min(JOB_RETRY_MAX)
            }
            Err(err) => {
                tracing::warn!(error = %err, "ignoring {JOB_RETRY_MAX_ENV}: not a duration");
                JOB_RETRY_MAX
            }
        }
    })
}

/// How long an idle worker sleeps when nothing wakes it, to pick up due retries.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The backends a daemon has, by kind of target.
#[derive(Clone, Default)]
pub struct Backends {
    pub kifs: Option<Arc<Backend>>,
    pub redivis: Option<Arc<Backend>>,
}

impl Backends {
    pub fn for_target(&self, target: &Target) -> Option<&Arc<Backend>> {
        match target {
            Target::KifsDirectory { .. } => self.kifs.as_ref(),
            Target::RedivisTable(_) => self.redivis.as_ref(),
        }
    }
}

#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    pub store: Store,
    pub backends: Backends,
    pub wake: Arc<Notify>,
    pub in_flight: Arc<InFlightRegistry>,
    /// Stops claiming new jobs.
    pub stop_claiming: CancellationToken,
    /// Asks in-flight uploads to checkpoint and return.
    pub interrupt: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        while !self.stop_claiming.is_cancelled() {
            let claimed = match self.store.claim(SystemTime::now()) {
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
                    let wait = match self.store.next_due() {
                        Ok(Some(due)) => due
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                            .min(IDLE_POLL),
                        _ => IDLE_POLL,
                    };
                    self.idle(wait).await;
                }
            }
        }
    }

    async fn idle(&self, wait: Duration) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.stop_claiming.cancelled() => {}
        }
    }

    async fn process(&self, job: Job) {
        let Some(folder) = self.config.folder_for(&job.key.folder) else {
            self.record(&job, self.store.fail(job.id, FOLDER_REMOVED));
            return;
        };
        let path = Path::new(&job.key.folder).join(&job.key.rel);
        let fingerprint = match Fingerprint::read(&path) {
            Ok(fp) => fp,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "file vanished before its upload; dropping the job");
                self.record(&job, self.store.drop_job(job.id));
                return;
            }
            Err(err) => {
                let reason = format!("cannot stat {}: {err}", path.display());
                self.record(&job, self.store.fail(job.id, &reason));
                return;
            }
        };
        if matches!(self.store.is_uploaded(&job.key, &fingerprint), Ok(true)) {
            // This exact version is already on the remote (e.g. reverted to an uploaded state).
            self.record(&job, self.store.drop_job(job.id));
            return;
        }
        if fingerprint != job.fingerprint && !settled_by_mtime(&fingerprint, folder) {
            // Still being written: the watcher offers the new version once it settles.
            let at = SystemTime::now() + folder.settle;
            self.record(
                &job,
                self.store.retry_later(job.id, at, "file is still changing"),
            );
            return;
        }
        if fingerprint != job.fingerprint {
            // Record the version we are about to send, so completing it does not requeue.
            if let Err(err) = self.store.offer(&job.key, &fingerprint) {
                tracing::warn!(path = %path.display(), error = %err, "cannot update the job's fingerprint");
            }
        }
        let Some(backend) = self.backends.for_target(&folder.target).cloned() else {
            let reason = "no backend is configured for this folder's target";
            self.record(&job, self.store.fail(job.id, reason));
            return;
        };
        let previous = self.store.ledger_get(&job.key).ok().flatten();
        let live = Arc::new(LiveProgress::default());
        live.set(0, fingerprint.size);
        let display = path.display().to_string();
        self.in_flight
            .insert(job.id, display.clone(), Arc::clone(&live));
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
            self.interrupt.clone(),
        );
        let started = Instant::now();
        let outcome = backend.upload(&mut upload).await;
        self.in_flight.remove(job.id);
        self.settle_outcome(&job, &display, fingerprint, started, outcome);
    }

    fn settle_outcome(
        &self,
        job: &Job,
        path: &str,
        fingerprint: Fingerprint,
        started: Instant,
        outcome: Result<Uploaded, UploadError>,
    ) {
        match outcome {
            Ok(uploaded) => {
                let elapsed = started.elapsed();
                let rate = fingerprint.size as f64 / elapsed.as_secs_f64().max(1e-6);
                tracing::info!(
                    path,
                    bytes = fingerprint.size,
                    duration_ms = elapsed.as_millis() as u64,
                    rate = %format!("{}/s", bytesize::ByteSize(rate as u64)),
                    remote = %uploaded.remote,
                    "uploaded"
                );
                let recorded = self.store.complete(
                    job.id,
                    &fingerprint,
                    &uploaded.remote,
                    uploaded.md5.as_deref(),
                );
                if let Ok(false) = recorded {
                    tracing::info!(
                        path,
                        "file changed during its upload; uploading the new version"
                    );
                    self.wake.notify_one();
                }
                self.record(job, recorded.map(|_| ()));
            }
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
            Err(UploadError::Unreadable(reason)) => {
                tracing::error!(path, reason = %reason, "upload failed");
                self.record(job, self.store.fail(job.id, &reason));
            }
            Err(UploadError::Remote {
                disposition: crate::upload::Disposition::Permanent,
                message,
            }) => {
                tracing::error!(path, reason = %message, "upload failed permanently");
                self.record(job, self.store.fail(job.id, &message));
            }
            Err(err @ (UploadError::Remote { .. } | UploadError::Store(_))) => {
                let after = match &err {
                    UploadError::Remote {
                        disposition: crate::upload::Disposition::Retry { after },
                        ..
                    } => *after,
                    _ => None,
                };
                let bound = delay_bound(JOB_RETRY_BASE, job_retry_max(), job.attempts);
                let jittered = bound / 2 + bound.mul_f64(rand::random::<f64>() / 2.0);
                let delay = after.map_or(jittered, |after| after.max(jittered));
                tracing::warn!(
                    path,
                    attempt = job.attempts + 1,
                    retry_in_s = delay.as_secs(),
                    reason = %err,
                    "upload failed; will retry"
                );
                let at = SystemTime::now() + delay;
                self.record(job, self.store.retry_later(job.id, at, &err.to_string()));
            }
        }
    }

    fn record(&self, job: &Job, result: Result<(), crate::queue::StoreError>) {
        if let Err(err) = result {
            tracing::error!(job = job.id.0, error = %err, "cannot record a job's outcome in the state database");
        }
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
