//! The KiFS backend: uploads one file into a KiFS directory (`docs/protocols/kifs.md`).
//!
//! Upload algorithm, per file (the target is `<kifs_directory>/<relative path>`):
//! 1. Validate the name locally (allowed characters, ≤ 1024 characters, no empty segment):
//!    a bad name fails the job permanently, naming the offending character.
//! 2. Size ≤ [`WHOLE_FILE_LIMIT`]: one whole-file `/upload/files` request (an empty element
//!    for a zero-byte file). Replacing a file is idempotent, so transient failures are
//!    retried in place under the backend's [`RetryPolicy`].
//! 3. Larger files go multipart, one file at a time across all workers:
//!    a. If resume state exists for the same local version and part size, ask `/show/files`
//!    for the target: when `info.multipart_uploads` lists our UUID with its last part
//!    number L, continue at part L + 1 (the server's count wins over ours).
//!    b. If the job was already `finalizing`, and the UUID is no longer in progress but the
//!    target exists with the expected size, the complete went through: done.
//!    c. Otherwise cancel the old UUID (errors ignored) and start again: a fresh UUID v4 is
//!    persisted *before* `init`, then parts 1..N strictly in order, the part number
//!    persisted after each acknowledged part, then `finalizing` persisted, then `complete`.
//!    d. `init`, `upload_part` and `complete` are never re-sent blindly after an ambiguous
//!    failure (timeout, reset, 5xx): the job goes back to the queue and step (a) decides.
//! 4. The local file's fingerprint is checked before and after every part; a change
//!    restarts the upload with the new content.
//! 5. Exactly once for whole files: the claim of a job is made durable before its bytes
//!    are sent, so a job found claimed at a restart (a crash, or a state write that failed
//!    after the request) is known to be unconfirmed. Before sending such a job's bytes
//!    again, one `/show/files` for all of a batch's unconfirmed targets: a target holding a
//!    file of the job's size is taken as this upload, done without sending, unless an
//!    earlier upload of the path had that same size (the file there may be the old
//!    version: sent again, which only overwrites). A failed look sends nothing: the job
//!    waits to retry.
//!
//! Every request reports its outcome to the remote's [`RemoteHealth`] (the HTTP client
//! does). A refused server certificate is not retried in place: the job waits in
//! `retry-wait` while someone fixes the server or `ca_file`.

pub mod wire;

mod body;
mod classify;
pub mod names;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{FolderConfig, KifsAuth, KifsConfig, KifsEncoding, Target};
use crate::fingerprint::Fingerprint;
use crate::metrics::RequestKind;
use crate::net::{Bandwidth, HttpClient, describe};

use super::backoff::retry_after;
use super::chunk::FileReader;
use super::health::RemoteHealth;
use super::retry::{self, Attempts, CallScope, RetryPolicy};
use super::{
    BatchLimits, Disposition, Endpoint, ErrorKind, UploadError, UploadJob, Uploaded, batch_scope,
};
use body::{Source, StreamedRequest};
use classify::classify_error_message;
pub use names::{MAX_NAME_LEN, validate_name};
use wire::{
    CreateDirectoryRequest, CreateDirectoryResponse, DeleteFilesRequest, DeleteFilesResponse,
    Record, ShowDirectoriesRequest, ShowDirectoriesResponse, ShowFilesRequest, ShowFilesResponse,
    UploadFilesResponse, Wrapper, WrapperError,
};

/// Largest whole-file upload and the multipart part size (every official client's 60 MiB).
pub const WHOLE_FILE_LIMIT: u64 = 62_914_560;
/// Small files go several to a whole-file request (`docs/protocols/kifs.md` §5.2: several
/// files per request, at most 60 MiB in all, as the Java client batches): one request and
/// one state-database flush for up to 1000 files instead of one each.
pub const BATCH_LIMITS: BatchLimits = BatchLimits {
    max_files: 1000,
    max_bytes: WHOLE_FILE_LIMIT,
    max_file_size: 4 << 20,
    one_target: false,
};

/// What survives a crash in the middle of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MultipartState {
    uuid: String,
    target: String,
    fingerprint: Fingerprint,
    part_size: u64,
    /// Parts 1..=last_part were acknowledged by the server.
    last_part: u64,
}

pub struct KifsBackend {
    http: HttpClient,
    url: String,
    auth: KifsAuth,
    encoding: KifsEncoding,
    part_size: u64,
    /// KiFS may cancel an in-progress multipart upload when another one starts: one at a time.
    multipart_slot: Arc<Semaphore>,
    retry: RetryPolicy,
    health: Arc<RemoteHealth>,
}

impl KifsBackend {
    /// The backend for `config`, its request bodies paced by `bandwidth`.
    pub fn new(config: &KifsConfig, bandwidth: Arc<Bandwidth>) -> Result<KifsBackend, String> {
        KifsBackend::with_retry(config, RetryPolicy::default(), bandwidth)
    }

    /// A backend whose requests are retried in place under `retry`.
    pub fn with_retry(
        config: &KifsConfig,
        retry: RetryPolicy,
        bandwidth: Arc<Bandwidth>,
    ) -> Result<KifsBackend, String> {
        let url = config.url.trim_end_matches('/').to_string();
        let health = Arc::new(RemoteHealth::new("kifs", &url));
        let http = HttpClient::build("kifs", &config.net, bandwidth, |builder| builder)?
            .reporting_to(Arc::clone(&health));
        Ok(KifsBackend {
            http,
            health,
            url,
            auth: config.auth.clone(),
            encoding: config.encoding,
            part_size: WHOLE_FILE_LIMIT,
            multipart_slot: Arc::new(Semaphore::new(1)),
            retry,
        })
    }

    /// The health of the KiFS server, which every request reports to.
    pub fn health(&self) -> &Arc<RemoteHealth> {
        &self.health
    }

    /// One cheap request, not retried, telling whether the server answers: `Ok` for any
    /// answer that is not a transient failure (a refusal is an answer).
    pub async fn probe(&self, directory: &str) -> Result<(), String> {
        let request = ShowDirectoriesRequest {
            directory_name: directory.to_string(),
            options: BTreeMap::new(),
        };
        match self
            .call::<_, ShowDirectoriesResponse>("/show/directories", &request)
            .await
        {
            Err(UploadError::Remote {
                disposition,
                message,
                ..
            }) if disposition.is_transient() => Err(message),
            _ => Ok(()),
        }
    }

    /// Checks that the folder's KiFS directory exists and is writable, creating it first
    /// when the folder says `create_directory = true`.
    pub async fn prepare_folder(
        &self,
        folder: &FolderConfig,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        let Target::KifsDirectory { directory, create } = &folder.target else {
            return Ok(());
        };
        let mut shown = self.show_directory(directory, scope).await;
        let refused = matches!(
            &shown,
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                ..
            })
        );
        if refused {
            // Listing every directory tells a missing directory from a refused request
            // (wrong credentials, wrong URL): only the first is worth creating or hinting at.
            self.show_directory("", scope).await.map_err(|err| {
                err.reworded(|message| {
                    format!("cannot check KiFS directory '{directory}': {message}")
                })
            })?;
        }
        if refused && *create {
            let request = CreateDirectoryRequest {
                directory_name: directory.clone(),
                options: BTreeMap::from([("no_error_if_exists".into(), "true".into())]),
            };
            let _: CreateDirectoryResponse = self
                .call_with_retries("/create/directory", &request, scope)
                .await
                .map_err(|err| match err.disposition() {
                    Some(Disposition::Permanent) => err.reworded(|message| {
                        format!("cannot create KiFS directory '{directory}': {message}")
                    }),
                    _ => err,
                })?;
            tracing::info!(directory = %directory, "created KiFS directory");
            shown = self.show_directory(directory, scope).await;
        }
        let shown = shown.map_err(|err| match err.disposition() {
            Some(Disposition::Permanent) => err.reworded(|message| {
                format!(
                    "KiFS directory '{directory}' is not usable: {message}{}",
                    if *create {
                        ""
                    } else {
                        " (set create_directory = true to create it)"
                    }
                )
            }),
            _ => err,
        })?;
        let index = shown
            .directories
            .iter()
            .position(|d| d == directory)
            .ok_or_else(|| {
                UploadError::permanent(
                    ErrorKind::NotFound,
                    format!(
                        "KiFS directory '{directory}' does not exist{}",
                        if *create {
                            ""
                        } else {
                            " (set create_directory = true to create it)"
                        }
                    ),
                )
            })?;
        let permission = shown
            .permissions
            .get(index)
            .map(String::as_str)
            .unwrap_or("");
        if permission != "directory_write" {
            return Err(UploadError::permanent(
                ErrorKind::Auth,
                format!(
                    "no write permission on KiFS directory '{directory}' (the server reports '{}'); \
                 grant directory_write to the configured user",
                    if permission.is_empty() {
                        "no access"
                    } else {
                        permission
                    }
                ),
            ));
        }
        Ok(())
    }

    async fn show_directory(
        &self,
        directory: &str,
        scope: &CallScope,
    ) -> Result<ShowDirectoriesResponse, UploadError> {
        let request = ShowDirectoriesRequest {
            directory_name: directory.to_string(),
            options: BTreeMap::new(),
        };
        self.call_with_retries("/show/directories", &request, scope)
            .await
    }

    /// Uploads the job's file. With `create_directory = true`, a directory found missing
    /// (never created because the server was down at start, or deleted since) is created
    /// and the upload tried once more.
    pub async fn upload(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let Target::KifsDirectory { directory, create } = job.target.clone() else {
            return Err(UploadError::permanent(
                ErrorKind::Config,
                "not a KiFS target",
            ));
        };
        match self.upload_into(job, &directory).await {
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
                ..
            }) if create
                && message.contains(&format!("Directory '{directory}' does not exist")) =>
            {
                tracing::warn!(directory = %directory, "the KiFS directory is missing; creating it (create_directory = true)");
                let request = CreateDirectoryRequest {
                    directory_name: directory.clone(),
                    options: BTreeMap::from([("no_error_if_exists".into(), "true".into())]),
                };
                let _: CreateDirectoryResponse = self
                    .call_with_retries("/create/directory", &request, &job.scope)
                    .await?;
                self.upload_into(job, &directory).await
            }
            other => other,
        }
    }

    async fn upload_into(
        &self,
        job: &mut UploadJob,
        directory: &str,
    ) -> Result<Uploaded, UploadError> {
        let target = format!("{directory}/{}", job.rel);
        validate_name(&target).map_err(|why| UploadError::permanent(ErrorKind::Rejected, why))?;
        let reader = Arc::new(FileReader::open(&job.path, &job.fingerprint)?);
        job.live.set(0, reader.size);
        if reader.size <= self.part_size {
            let unconfirmed = [(0, target.as_str(), &*job)];
            if self
                .landed_before(&unconfirmed, &job.scope)
                .await?
                .is_empty()
            {
                job.persist_claim()?;
                self.upload_whole(job, &reader, &target).await?;
            }
        } else {
            let _slot = tokio::select! {
                slot = self.multipart_slot.clone().acquire_owned() => {
                    slot.expect("the multipart semaphore is never closed")
                }
                _ = job.scope.stop.cancelled() => return Err(UploadError::Shutdown),
            };
            match self.upload_multipart(job, &reader, &target).await {
                // The server refused a step of an upload it had accepted (unknown or
                // superseded UUID, a part out of order): start over once with a new UUID.
                Err(UploadError::Remote {
                    disposition: Disposition::Permanent,
                    message,
                    ..
                }) if job.load_progress::<MultipartState>()?.is_some() => {
                    tracing::warn!(job = job.id.0, target, reason = %message, "multipart upload refused mid-way; starting again with a new upload");
                    job.clear_progress()?;
                    self.upload_multipart(job, &reader, &target).await?;
                }
                other => other?,
            }
        }
        job.live.set(reader.size, reader.size);
        Ok(Uploaded {
            remote: target,
            md5: None,
        })
    }

    /// Uploads whole files (each at most [`BATCH_LIMITS`]`.max_file_size`) in one
    /// request, all or nothing on the server. Per file: a bad name fails alone before
    /// anything is sent; a file that changed or vanished leaves the batch and the rest goes
    /// again at once; transient failures are retried with backoff for the whole batch. When
    /// the server refuses the batch for good, each file is sent alone, so that only the file
    /// at fault fails.
    pub async fn upload_batch(&self, jobs: &mut [UploadJob]) -> Vec<Result<Uploaded, UploadError>> {
        let mut outcomes: Vec<Option<Result<Uploaded, UploadError>>> =
            jobs.iter().map(|_| None).collect();
        let mut targets = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.iter().zip(outcomes.iter_mut()) {
            match target_name(job) {
                Ok(target) => targets.push(target),
                Err(err) => {
                    targets.push(String::new());
                    *outcome = Some(Err(err));
                }
            }
        }
        let scope = batch_scope(jobs);
        self.settle_unconfirmed(jobs, &targets, &mut outcomes, &scope)
            .await;
        let mut attempts =
            Attempts::new(&self.retry, &scope, "KiFS batch upload").watching(&self.health);
        let mut first_pass = true;
        loop {
            let mut live = Vec::new();
            for (index, job) in jobs.iter().enumerate() {
                if outcomes[index].is_some() {
                    continue;
                }
                if first_pass {
                    // Each job's fingerprint was read just before (the worker's checks), and
                    // opening the file for the body checks it again: a stat here would be a
                    // third look at the same moment.
                    live.push(index);
                    continue;
                }
                match job.check_unchanged() {
                    Ok(()) => live.push(index),
                    Err(err) => outcomes[index] = Some(Err(err)),
                }
            }
            let Some(&first) = live.first() else {
                break;
            };
            if first_pass && let Err(err) = jobs[first].persist_claim() {
                for &index in &live {
                    outcomes[index] = Some(Err(err.clone()));
                }
                break;
            }
            first_pass = false;
            if jobs[first].is_shutting_down() {
                for &index in &live {
                    outcomes[index] = Some(Err(UploadError::Shutdown));
                }
                break;
            }
            let names: Vec<String> = live.iter().map(|&i| targets[i].clone()).collect();
            let sources = live
                .iter()
                .map(|&i| Source::lazy(jobs[i].path.clone(), jobs[i].fingerprint))
                .collect();
            let request =
                StreamedRequest::new(self.encoding, &names, sources, &self.data_options());
            let sent: Result<UploadFilesResponse, UploadError> = self
                .send("/upload/files", request.body(), request.len())
                .await;
            let err = match sent {
                Ok(_) => {
                    for &index in &live {
                        let job = &jobs[index];
                        outcomes[index] = Some(job.check_unchanged().map(|()| {
                            job.live.set(job.fingerprint.size, job.fingerprint.size);
                            Uploaded {
                                remote: targets[index].clone(),
                                md5: None,
                            }
                        }));
                    }
                    break;
                }
                Err(err) => err,
            };
            if let Some((position, local)) = request.failure() {
                outcomes[live[position]] = Some(Err(local));
                continue;
            }
            let err = match err.disposition() {
                Some(Disposition::Retry { after }) => {
                    match attempts.pause(after, &err.to_string()).await {
                        Ok(()) => continue,
                        Err(gave_up) => gave_up.into_error(err),
                    }
                }
                _ => err,
            };
            match err {
                UploadError::Remote {
                    disposition: Disposition::Permanent,
                    message,
                    ..
                } if live.len() > 1 => {
                    tracing::info!(files = live.len(), reason = %message, "KiFS refused a batch; sending its files one by one");
                    for &index in &live {
                        outcomes[index] = Some(self.upload(&mut jobs[index]).await);
                    }
                    break;
                }
                err => {
                    for &index in &live {
                        outcomes[index] = Some(Err(err.clone()));
                    }
                    break;
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every job of a batch gets an outcome"))
            .collect()
    }

    /// Step 5 for a batch: the outcome of each unconfirmed job whose bytes are already on
    /// KiFS is an upload; when the look fails, theirs is its error (nothing is sent).
    async fn settle_unconfirmed(
        &self,
        jobs: &[UploadJob],
        targets: &[String],
        outcomes: &mut [Option<Result<Uploaded, UploadError>>],
        scope: &CallScope,
    ) {
        let unconfirmed: Vec<(usize, &str, &UploadJob)> = jobs
            .iter()
            .enumerate()
            .filter(|(index, _)| outcomes[*index].is_none())
            .map(|(index, job)| (index, targets[index].as_str(), job))
            .collect();
        match self.landed_before(&unconfirmed, scope).await {
            Ok(landed) => {
                for index in landed {
                    outcomes[index] = Some(Ok(Uploaded {
                        remote: targets[index].clone(),
                        md5: None,
                    }));
                }
            }
            Err(err) => {
                for (index, _, job) in unconfirmed {
                    if job.unconfirmed_since_ms.is_some() {
                        outcomes[index] = Some(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Step 5: which of `candidates` (index, target, job) are unconfirmed jobs whose bytes
    /// KiFS already holds. No request when none is unconfirmed.
    async fn landed_before(
        &self,
        candidates: &[(usize, &str, &UploadJob)],
        scope: &CallScope,
    ) -> Result<Vec<usize>, UploadError> {
        let unconfirmed: Vec<&(usize, &str, &UploadJob)> = candidates
            .iter()
            .filter(|(_, _, job)| job.unconfirmed_since_ms.is_some())
            .collect();
        if unconfirmed.is_empty() {
            return Ok(Vec::new());
        }
        let request = ShowFilesRequest {
            paths: unconfirmed.iter().map(|(_, t, _)| t.to_string()).collect(),
            options: BTreeMap::new(),
        };
        let shown: ShowFilesResponse = self
            .call_with_retries("/show/files", &request, scope)
            .await?;
        let sizes: BTreeMap<&str, i64> = shown
            .file_names
            .iter()
            .map(String::as_str)
            .zip(shown.sizes.iter().copied())
            .collect();
        let mut landed = Vec::new();
        for (index, target, job) in unconfirmed {
            let size = job.fingerprint.size;
            let held = sizes
                .get(target)
                .is_some_and(|s| u64::try_from(*s) == Ok(size));
            let ambiguous = job
                .previous
                .as_ref()
                .is_some_and(|previous| previous.fingerprint.size == size);
            if held && !ambiguous {
                tracing::info!(
                    job = job.id.0,
                    target,
                    "already on KiFS from an attempt whose outcome was not recorded; not sent again"
                );
                job.live.set(size, size);
                landed.push(*index);
            }
        }
        Ok(landed)
    }

    async fn upload_whole(
        &self,
        job: &UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        job.check_unchanged()?;
        let source = Source::opened(
            Arc::clone(reader),
            job.path.clone(),
            job.fingerprint,
            0,
            reader.size,
        );
        let request = StreamedRequest::new(
            self.encoding,
            &[target.to_string()],
            vec![source],
            &self.data_options(),
        );
        let _: UploadFilesResponse = self
            .with_retries("/upload/files", &job.scope, || {
                self.call_streamed("/upload/files", &request)
            })
            .await?;
        job.check_unchanged()
    }

    async fn upload_multipart(
        &self,
        job: &mut UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        let parts = reader.size.div_ceil(self.part_size);
        let mut state = match self.resumable_state(job, target).await? {
            Resume::AlreadyComplete => {
                job.clear_progress()?;
                return Ok(());
            }
            Resume::At(state) => {
                tracing::info!(job = job.id.0, target, uuid = %state.uuid, next_part = state.last_part + 1, parts, "resuming multipart upload");
                state
            }
            Resume::Fresh => {
                let state = MultipartState {
                    uuid: uuid::Uuid::new_v4().to_string(),
                    target: target.to_string(),
                    fingerprint: job.fingerprint,
                    part_size: self.part_size,
                    last_part: 0,
                };
                // Persisted before init, so a crash after init can find (and cancel) it.
                job.save_progress(&state)?;
                self.multipart_step(target, &state.uuid, "init", None, None)
                    .await?;
                state
            }
        };
        while state.last_part < parts {
            if job.is_shutting_down() {
                return Err(UploadError::Shutdown);
            }
            let part = state.last_part + 1;
            let offset = (part - 1) * self.part_size;
            let len = self.part_size.min(reader.size - offset) as usize;
            job.check_unchanged()?;
            let data = Source::opened(
                Arc::clone(reader),
                job.path.clone(),
                job.fingerprint,
                offset,
                len as u64,
            );
            self.multipart_step(target, &state.uuid, "upload_part", Some(part), Some(data))
                .await?;
            job.check_unchanged()?;
            state.last_part = part;
            job.save_progress(&state)?;
            job.live.set(offset + len as u64, reader.size);
        }
        job.mark_finalizing()?;
        self.multipart_step(target, &state.uuid, "complete", None, None)
            .await?;
        job.clear_progress()?;
        Ok(())
    }

    /// Decides where a multipart upload continues (algorithm step 3a–c).
    async fn resumable_state(&self, job: &UploadJob, target: &str) -> Result<Resume, UploadError> {
        let Some(saved) = job.load_progress::<MultipartState>()? else {
            return Ok(Resume::Fresh);
        };
        let same_version = saved.fingerprint == job.fingerprint
            && saved.part_size == self.part_size
            && saved.target == target;
        let shown = self.show_file(target, &job.scope).await?;
        let in_progress = multipart_progress(&shown, &saved.uuid);
        if same_version {
            if let Some(last_part) = in_progress {
                return Ok(Resume::At(MultipartState { last_part, ..saved }));
            }
            if job.finalize_started {
                let landed = shown
                    .file_names
                    .iter()
                    .zip(&shown.sizes)
                    .any(|(name, size)| name == target && *size as u64 == job.fingerprint.size);
                if landed {
                    tracing::info!(
                        job = job.id.0,
                        target,
                        "multipart upload was completed before the restart"
                    );
                    return Ok(Resume::AlreadyComplete);
                }
            }
        }
        if in_progress.is_some() {
            // Best effort: a new init for the same target cancels it on the server anyway.
            if let Err(err) = self
                .multipart_step(target, &saved.uuid, "cancel", None, None)
                .await
            {
                tracing::debug!(target, error = %err, "cancel of a stale multipart upload failed");
            }
        }
        job.clear_progress()?;
        Ok(Resume::Fresh)
    }

    /// Every file the server lists under `directory` (nested names included), with its
    /// size in bytes; used to rebuild the ledger from the remote.
    pub async fn list_files(&self, directory: &str) -> Result<Vec<(String, u64)>, UploadError> {
        let request = ShowFilesRequest {
            paths: vec![directory.to_string()],
            options: BTreeMap::new(),
        };
        let shown: ShowFilesResponse = self
            .call_with_retries("/show/files", &request, &CallScope::default())
            .await?;
        Ok(shown
            .file_names
            .into_iter()
            .zip(shown.sizes)
            .map(|(name, size)| (name, size.max(0) as u64))
            .collect())
    }

    /// Deletes the file `remote` (a full KiFS name upsync uploaded); a file already gone
    /// counts as deleted. `/delete/files` reads `*` and `?` as wildcards, so a name holding
    /// one is refused rather than sent: it could delete other files.
    pub async fn delete_file(&self, remote: &str, scope: &CallScope) -> Result<(), UploadError> {
        if remote.contains(['*', '?']) {
            return Err(UploadError::permanent(
                ErrorKind::Rejected,
                format!("not deleting KiFS file {remote}: the name holds a wildcard character"),
            ));
        }
        let request = DeleteFilesRequest {
            file_names: vec![remote.to_string()],
            options: BTreeMap::from([("no_error_if_not_exists".into(), "true".into())]),
        };
        let _: DeleteFilesResponse = self
            .call_with_retries("/delete/files", &request, scope)
            .await?;
        Ok(())
    }

    async fn show_file(
        &self,
        target: &str,
        scope: &CallScope,
    ) -> Result<ShowFilesResponse, UploadError> {
        let request = ShowFilesRequest {
            paths: vec![target.to_string()],
            options: BTreeMap::new(),
        };
        self.call_with_retries("/show/files", &request, scope).await
    }

    /// One multipart step, sent exactly once: an ambiguous failure is returned as is.
    async fn multipart_step(
        &self,
        target: &str,
        uuid: &str,
        operation: &str,
        part: Option<u64>,
        data: Option<Source>,
    ) -> Result<(), UploadError> {
        let mut options = self.data_options();
        options.insert("multipart_operation".into(), operation.into());
        options.insert("multipart_upload_uuid".into(), uuid.into());
        if let Some(part) = part {
            options.insert("multipart_upload_part_number".into(), part.to_string());
        }
        let request = StreamedRequest::new(
            self.encoding,
            &[target.to_string()],
            data.into_iter().collect(),
            &options,
        );
        let _: UploadFilesResponse = self.call_streamed("/upload/files", &request).await?;
        Ok(())
    }

    fn data_options(&self) -> BTreeMap<String, String> {
        match self.encoding {
            KifsEncoding::Binary => BTreeMap::new(),
            KifsEncoding::Json => BTreeMap::from([("file_encoding".into(), "base64".into())]),
        }
    }

    /// An idempotent call, retried in place on transient failures.
    async fn call_with_retries<Req: Record, Resp: Record>(
        &self,
        endpoint: &str,
        request: &Req,
        scope: &CallScope,
    ) -> Result<Resp, UploadError> {
        self.with_retries(endpoint, scope, || self.call(endpoint, request))
            .await
    }

    /// Runs `attempt` under the backend's retry policy (see [`retry::retry`]).
    async fn with_retries<T, F, Fut>(
        &self,
        endpoint: &str,
        scope: &CallScope,
        attempt: F,
    ) -> Result<T, UploadError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, UploadError>>,
    {
        let step = format!("KiFS {endpoint}");
        retry::retry(&self.retry, scope, Some(&self.health), &step, attempt).await
    }

    /// Sends one request held in memory.
    async fn call<Req: Record, Resp: Record>(
        &self,
        endpoint: &str,
        request: &Req,
    ) -> Result<Resp, UploadError> {
        let segments = request.encode(self.encoding);
        let length: usize = segments.iter().map(Bytes::len).sum();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(
            segments.into_iter().map(Ok::<Bytes, std::io::Error>),
        ));
        self.send(endpoint, body, length as u64).await
    }

    /// Sends one request whose data streams from files; a local failure while reading them
    /// (file changed, vanished, unreadable) is reported as such, not as a transport error.
    async fn call_streamed<Resp: Record>(
        &self,
        endpoint: &str,
        request: &StreamedRequest,
    ) -> Result<Resp, UploadError> {
        let sent = self.send(endpoint, request.body(), request.len()).await;
        match request.failure() {
            Some((_, local)) if sent.is_err() => Err(local),
            _ => sent,
        }
    }

    /// Sends one body and decodes the wrapper; every failure is classified here.
    async fn send<Resp: Record>(
        &self,
        endpoint: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<Resp, UploadError> {
        let content_type = wire::content_type(self.encoding);
        let mut builder = self
            .http
            .client()
            .post(format!("{}{endpoint}", self.url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::ACCEPT, content_type)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        builder = match &self.auth {
            KifsAuth::None => builder,
            KifsAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password.expose()))
            }
            KifsAuth::Bearer { token } => builder.bearer_auth(token.expose()),
        };
        let call = Endpoint::matching(&reqwest::Method::POST, endpoint, classify::ENDPOINTS);
        // A refused certificate is transient (see `net`) but not retried in place: the
        // message says what to fix, the job backs off meanwhile.
        let response = self
            .http
            .send(RequestKind::KifsApi, builder)
            .await
            .map_err(|err| UploadError::no_answer(call, &err, format!("KiFS {endpoint}: {err}")))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|err| {
            let message = format!(
                "KiFS {endpoint}: reading the answer failed: {}",
                describe(&err)
            );
            UploadError::retry(ErrorKind::Transport, message).at(call)
        })?;
        if status.as_u16() != 200 && status.as_u16() != 400 {
            let hint = status_hint(status.as_u16());
            let message = format!("KiFS {endpoint}: HTTP {status}{hint}");
            return Err(UploadError::answered(call, status.as_u16(), after, message));
        }
        let undecodable = |why: String| UploadError::retry(ErrorKind::Unexpected, why).at(call);
        let wrapper = Wrapper::decode(self.encoding, &body).map_err(|err| {
            undecodable(format!(
                "KiFS {endpoint}: undecodable answer (HTTP {status}): {err}"
            ))
        })?;
        wrapper
            .into_inner::<Resp>(self.encoding)
            .map_err(|err| match err {
                WrapperError::Remote(message) => {
                    let (kind, disposition) = classify_error_message(&message);
                    UploadError::Remote {
                        kind,
                        disposition,
                        status: Some(status.as_u16()),
                        endpoint: Some(call),
                        message,
                    }
                }
                WrapperError::Malformed(err) => {
                    undecodable(format!("KiFS {endpoint}: undecodable answer: {err}"))
                }
            })
    }
}

/// The KiFS name of a job's file: `<directory>/<relative path>`, checked locally.
fn target_name(job: &UploadJob) -> Result<String, UploadError> {
    let Target::KifsDirectory { directory, .. } = &job.target else {
        return Err(UploadError::permanent(
            ErrorKind::Config,
            "not a KiFS target",
        ));
    };
    let target = format!("{directory}/{}", job.rel);
    validate_name(&target).map_err(|why| UploadError::permanent(ErrorKind::Rejected, why))?;
    Ok(target)
}

enum Resume {
    Fresh,
    At(MultipartState),
    AlreadyComplete,
}

/// The last part number the server reports for `uuid` in `info.multipart_uploads`, in the
/// emulator-defined layout (`docs/protocols/kifs.md` §6 item 30); `None` when absent or
/// unparsable.
fn multipart_progress(shown: &ShowFilesResponse, uuid: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct InProgress {
        uuid: String,
        last_part_number: serde_json::Value,
    }
    let raw = shown.info.get("multipart_uploads")?;
    let uploads: Vec<InProgress> = serde_json::from_str(raw).ok()?;
    let entry = uploads.into_iter().find(|upload| upload.uuid == uuid)?;
    match entry.last_part_number {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => {
            " (the server rejected the credentials: check [kifs] username/password or token)"
        }
        404 => " (endpoint not found: check [kifs] url)",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
