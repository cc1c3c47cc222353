//! Uploading one file: the backend interface, error dispositions, chunked reading, the
//! in-place retry policy and the health of each remote.
//!
//! A backend turns a claimed job into remote state. It reads the file through
//! [`chunk::FileReader`] (which notices a file that changes or vanishes under it), persists
//! its own resume state through [`UploadJob::save_progress`] only after the remote
//! acknowledged it, and persists `finalizing` through [`UploadJob::mark_finalizing`] before
//! any non-idempotent finalize call. It returns once the bytes are on the remote: either
//! the file is there ([`Delivery::Uploaded`]), or the remote still imports it
//! ([`Delivery::Posted`], Redivis), which the daemon waits for without a worker. Every
//! failure is an [`UploadError`] whose [`Disposition`] tells the worker what to do next and
//! whose [`ErrorKind`] says what happened (modules `error` and `kind`); HTTP statuses are
//! classified in [`classify`], the rules of each backend's own layers in its `classify`
//! module.

pub mod backoff;
pub mod chunk;
pub mod classify;
mod error;
pub mod health;
pub mod kifs;
pub mod kind;
pub mod redivis;
pub mod retry;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{FolderConfig, RedivisFolder, Target};
use crate::fingerprint::Fingerprint;
use crate::queue::{JobId, LedgerEntry, Store};
pub use error::{Disposition, Endpoint, UploadError};
pub use kind::ErrorKind;
use retry::CallScope;

/// How far a successful upload attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The file is on the remote.
    Uploaded(Uploaded),
    /// The remote holds the bytes and is importing them (the post was acknowledged).
    Posted(Posted),
}

/// An upload the remote acknowledged and still imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The remote's name for it (a Redivis upload URI).
    pub remote: String,
    /// Where it was posted (a Redivis table reference).
    pub target: String,
    /// MD5 hex of the bytes posted.
    pub md5: String,
}

/// What a successful upload leaves in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Remote identity: the KiFS path, or the Redivis upload URI.
    pub remote: String,
    /// MD5 hex of the bytes uploaded, where the backend computed it.
    pub md5: Option<String>,
}

/// Bytes sent so far for an in-flight upload, and the in-place retry it is waiting for, if
/// any; read by the status endpoint. One per attempt.
#[derive(Debug, Default)]
pub struct LiveProgress {
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    retry: Mutex<Option<RetryNote>>,
    /// The lowest offset this attempt sent from, when it resumed a transfer (a Redivis
    /// session, a KiFS multipart upload); none for an attempt that sent the whole file.
    sent_from: Mutex<Option<u64>>,
}

/// An in-place retry an upload is waiting for ([`retry::Attempts::pause`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNote {
    /// Failed tries of the request so far.
    pub attempt: u32,
    pub next_at: SystemTime,
    pub last_error: String,
}

impl LiveProgress {
    pub fn set(&self, done: u64, total: u64) {
        self.bytes_done.store(done, Ordering::Relaxed);
        self.bytes_total.store(total, Ordering::Relaxed);
    }

    /// The attempt sends (again) from `offset` of the file: what lies before it an earlier
    /// attempt sent, unless a lower offset follows (a transfer started over).
    pub fn sending_from(&self, offset: u64) {
        let mut sent_from = self.sent_from_lock();
        *sent_from = Some(sent_from.map_or(offset, |earlier| earlier.min(offset)));
    }

    /// The bytes of a `size`-byte file this attempt sent itself, not counting those an
    /// earlier attempt had sent.
    pub fn sent_by_attempt(&self, size: u64) -> u64 {
        let sent_from = self.sent_from_lock().unwrap_or(0);
        size.saturating_sub(sent_from)
    }

    pub fn note_retry(&self, note: RetryNote) {
        *self.retry_lock() = Some(note);
    }

    pub fn clear_retry(&self) {
        *self.retry_lock() = None;
    }

    pub fn retry(&self) -> Option<RetryNote> {
        self.retry_lock().clone()
    }

    fn sent_from_lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        // A plain value: a panicking holder cannot leave it half-changed.
        self.sent_from
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn retry_lock(&self) -> std::sync::MutexGuard<'_, Option<RetryNote>> {
        // A plain value: a panicking holder cannot leave it half-changed.
        self.retry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One claimed job as a backend sees it.
pub struct UploadJob {
    pub id: JobId,
    /// Absolute local path of the file.
    pub path: PathBuf,
    /// `/`-separated path relative to the watched folder.
    pub rel: String,
    pub target: Target,
    /// The fingerprint the worker read when it claimed the job.
    pub fingerprint: Fingerprint,
    /// `finalizing` was persisted by an earlier attempt: reconcile before finalizing again.
    pub finalize_started: bool,
    /// What the ledger holds for this path from an earlier upload, if anything.
    pub previous: Option<LedgerEntry>,
    pub live: Arc<LiveProgress>,
    /// When pauses end and transfers checkpoint; its `live` is this job's entry.
    pub scope: CallScope,
    /// The folder's Redivis settings (parse options); default for KiFS.
    pub redivis: RedivisFolder,
    /// An earlier attempt at this content, started then (ms), ended without its outcome
    /// recorded: its bytes may already be on the remote.
    pub unconfirmed_since_ms: Option<u64>,
    /// An earlier attempt saved resume state for this job (seen when it was claimed). It
    /// may be of an older version: a new version keeps it for the backend to give up.
    pub saved_progress: bool,
    store: Store,
}

impl UploadJob {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: JobId,
        path: PathBuf,
        rel: String,
        target: Target,
        fingerprint: Fingerprint,
        finalize_started: bool,
        previous: Option<LedgerEntry>,
        store: Store,
        live: Arc<LiveProgress>,
        scope: impl Into<CallScope>,
    ) -> UploadJob {
        let scope = CallScope {
            entries: vec![Arc::clone(&live)],
            ..scope.into()
        };
        UploadJob {
            id,
            path,
            rel,
            target,
            fingerprint,
            finalize_started,
            previous,
            live,
            scope,
            redivis: RedivisFolder::default(),
            unconfirmed_since_ms: None,
            saved_progress: false,
            store,
        }
    }

    /// Makes the claim of this job (and of everything written before it) durable, so that
    /// a restart knows an attempt may have sent its bytes (see
    /// [`crate::queue::Job::unconfirmed_attempt_ms`]). One flush serves a whole batch.
    pub fn persist_claim(&self) -> Result<(), UploadError> {
        self.store.flush()?;
        Ok(())
    }

    /// The job with its folder's Redivis settings.
    pub fn with_redivis(mut self, redivis: RedivisFolder) -> UploadJob {
        self.redivis = redivis;
        self
    }

    /// The backend's resume state saved by an earlier attempt, if any and if it parses.
    pub fn load_progress<T: DeserializeOwned>(&self) -> Result<Option<T>, UploadError> {
        let Some(raw) = self.store.load_progress(self.id)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&raw) {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                tracing::warn!(job = self.id.0, error = %err, "ignoring unreadable resume state");
                Ok(None)
            }
        }
    }

    /// Persists (and flushes) the backend's resume state; call only after the remote
    /// acknowledged what the state claims.
    pub fn save_progress<T: Serialize>(&self, progress: &T) -> Result<(), UploadError> {
        let raw = serde_json::to_vec(progress).expect("resume state serializes to JSON");
        self.store.save_progress(self.id, &raw)?;
        Ok(())
    }

    pub fn clear_progress(&self) -> Result<(), UploadError> {
        self.store.clear_progress(self.id)?;
        Ok(())
    }

    /// Persists `finalizing` before a non-idempotent finalize call.
    pub fn mark_finalizing(&mut self) -> Result<(), UploadError> {
        self.store.mark_finalizing(self.id)?;
        self.finalize_started = true;
        Ok(())
    }

    /// Fails with [`UploadError::Changed`] or [`UploadError::Vanished`] when the file on disk
    /// is no longer the version this upload is sending.
    pub fn check_unchanged(&self) -> Result<(), UploadError> {
        match Fingerprint::read(&self.path) {
            Ok(now) if now == self.fingerprint => Ok(()),
            Ok(_) => Err(UploadError::Changed),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(UploadError::Vanished(self.path.display().to_string()))
            }
            Err(err) => Err(UploadError::Unreadable(format!(
                "cannot stat {}: {err}",
                self.path.display()
            ))),
        }
    }

    /// True once the transfer should checkpoint and return.
    pub fn is_shutting_down(&self) -> bool {
        self.scope.interrupted()
    }
}

/// The scope of the requests one batch of `jobs` shares: the first job's stop and
/// checkpoint, and every job's in-flight entry (an in-place retry shows on each).
pub fn batch_scope(jobs: &[UploadJob]) -> CallScope {
    CallScope {
        entries: jobs.iter().map(|job| Arc::clone(&job.live)).collect(),
        ..jobs
            .first()
            .map(|job| job.scope.clone())
            .unwrap_or_default()
    }
}

/// Persists `finalizing` for `jobs[i]`, each `i` of `indexes`, in one transaction, before
/// one non-idempotent finalize call that covers them all.
pub fn mark_finalizing_all(jobs: &mut [UploadJob], indexes: &[usize]) -> Result<(), UploadError> {
    let Some(&first) = indexes.first() else {
        return Ok(());
    };
    let ids: Vec<JobId> = indexes.iter().map(|&i| jobs[i].id).collect();
    jobs[first].store.mark_finalizing_many(&ids)?;
    for &i in indexes {
        jobs[i].finalize_started = true;
    }
    Ok(())
}

/// How many files a backend sends in one request ([`Backend::upload_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_files: usize,
    /// Total data bytes of one batch.
    pub max_bytes: u64,
    /// Larger files always go alone.
    pub max_file_size: u64,
    /// Every file of a batch goes to the same target (a Redivis table), not just to the
    /// same backend.
    pub one_target: bool,
}

/// A configured remote service.
pub enum Backend {
    Kifs(kifs::KifsBackend),
    Redivis(redivis::RedivisBackend),
}

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

impl Backend {
    /// Checks that the remote can take this folder's files (directory exists and is
    /// writable, table reachable), creating what the config asks for. A `Permanent` error
    /// means the folder cannot work until the config or the remote changes.
    pub async fn prepare_folder(
        &self,
        folder: &FolderConfig,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        match self {
            Backend::Kifs(backend) => backend.prepare_folder(folder, scope).await,
            Backend::Redivis(backend) => backend.prepare_folder(folder, scope).await,
        }
    }

    /// The health of this backend's remote.
    pub fn health(&self) -> &Arc<health::RemoteHealth> {
        match self {
            Backend::Kifs(backend) => backend.health(),
            Backend::Redivis(backend) => backend.health(),
        }
    }

    /// One cheap, unretried request to the remote, about `target`: `Ok` when it answers.
    pub async fn probe(&self, target: &Target) -> Result<(), String> {
        match (self, target) {
            (Backend::Kifs(backend), Target::KifsDirectory { directory, .. }) => {
                backend.probe(directory).await
            }
            (Backend::Redivis(backend), Target::RedivisTable(table)) => backend.probe(table).await,
            _ => Err("the target belongs to another backend".into()),
        }
    }

    /// Deletes the copy of the file `rel` that the ledger records as uploaded to `target`
    /// (`remote`: the KiFS name, the Redivis upload or file entry). A copy already gone
    /// counts as deleted.
    pub async fn delete_uploaded(
        &self,
        target: &Target,
        rel: &str,
        remote: &str,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        match (self, target) {
            (Backend::Kifs(backend), Target::KifsDirectory { .. }) => {
                backend.delete_file(remote, scope).await
            }
            (Backend::Redivis(backend), Target::RedivisTable(table)) => {
                backend.delete_uploaded(table, rel, remote, scope).await
            }
            _ => Err(UploadError::permanent(
                ErrorKind::Config,
                "the folder's target belongs to another backend",
            )),
        }
    }

    /// Gives up on the remote the upload saved for job `id`, whose file is gone (the job is
    /// dropped, or a deletion replaced it): KiFS cancels its multipart upload, best effort;
    /// a Redivis session has no cancel and expires on its own
    /// (`docs/protocols/redivis.md`). Nothing during a shutdown: false when a stop kept
    /// the saved upload for the next start (the job must then stay as it is).
    pub async fn abandon_saved_upload(&self, store: &Store, id: JobId, scope: &CallScope) -> bool {
        match self {
            Backend::Kifs(backend) => backend.abandon_saved_upload(store, id, scope).await,
            Backend::Redivis(_) => true,
        }
    }

    pub async fn upload(&self, job: &mut UploadJob) -> Result<Delivery, UploadError> {
        match self {
            Backend::Kifs(backend) => backend.upload(job).await.map(Delivery::Uploaded),
            Backend::Redivis(backend) => backend.upload(job).await,
        }
    }

    /// Whether (and how far) this backend sends several small files for `target` in one
    /// request: KiFS always; Redivis for a file index table (once its kind is known).
    pub fn batch_limits(&self, target: &Target) -> Option<BatchLimits> {
        match self {
            Backend::Kifs(_) => Some(kifs::BATCH_LIMITS),
            Backend::Redivis(backend) => backend.batch_limits(target),
        }
    }

    /// What kind of remote `target` is, when known: `directory`, `table`, `file index table`.
    pub fn target_kind(&self, target: &Target) -> Option<&'static str> {
        match self {
            Backend::Kifs(_) => Some("directory"),
            Backend::Redivis(backend) => backend.target_kind(target),
        }
    }

    /// Uploads several files, one outcome per job in order; backends without batching
    /// upload them one after the other.
    pub async fn upload_batch(&self, jobs: &mut [UploadJob]) -> Vec<Result<Delivery, UploadError>> {
        match self {
            Backend::Kifs(backend) => backend
                .upload_batch(jobs)
                .await
                .into_iter()
                .map(|outcome| outcome.map(Delivery::Uploaded))
                .collect(),
            Backend::Redivis(backend) => backend.upload_batch(jobs).await,
        }
    }
}
