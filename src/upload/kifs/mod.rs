//! The KiFS backend: uploads one file into a KiFS directory (`protocols/kifs.md`).
//!
//! Upload algorithm, per file (the target is `<kifs_directory>/<relative path>`):
//! 1. Validate the name locally (allowed characters, ≤ 1024 characters, no empty segment):
//!    a bad name fails the job permanently, naming the offending character.
//! 2. Size ≤ [`WHOLE_FILE_LIMIT`]: one whole-file `/upload/files` request (an empty element
//!    for a zero-byte file). Replacing a file is idempotent, so transient failures are
//!    retried in-request with backoff.
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

pub mod wire;

mod classify;
mod names;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{FolderConfig, KifsAuth, KifsConfig, KifsEncoding, Target};
use crate::fingerprint::Fingerprint;

use super::backoff::{Backoff, retry_after};
use super::chunk::FileReader;
use super::{Disposition, UploadError, UploadJob, Uploaded};
use classify::{classify_error_message, classify_status};
pub use names::{MAX_NAME_LEN, validate_name};
use wire::{
    CreateDirectoryRequest, CreateDirectoryResponse, Record, ShowDirectoriesRequest,
    ShowDirectoriesResponse, ShowFilesRequest, ShowFilesResponse, UploadFilesRequest,
    UploadFilesResponse, Wrapper, WrapperError,
};

/// Largest whole-file upload and the multipart part size (every official client's 60 MiB).
pub const WHOLE_FILE_LIMIT: u64 = 62_914_560;
/// Attempts for an idempotent request before the job goes back to the queue.
const REQUEST_ATTEMPTS: u32 = 5;

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
    http: reqwest::Client,
    url: String,
    auth: KifsAuth,
    encoding: KifsEncoding,
    part_size: u64,
    /// KiFS may cancel an in-progress multipart upload when another one starts: one at a time.
    multipart_slot: Arc<Semaphore>,
}

impl KifsBackend {
    pub fn new(config: &KifsConfig) -> Result<KifsBackend, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("upsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(KifsBackend {
            http,
            url: config.url.trim_end_matches('/').to_string(),
            auth: config.auth.clone(),
            encoding: config.encoding,
            part_size: WHOLE_FILE_LIMIT,
            multipart_slot: Arc::new(Semaphore::new(1)),
        })
    }

    /// Checks that the folder's KiFS directory exists and is writable, creating it first
    /// when the folder says `create_directory = true`.
    pub async fn prepare_folder(&self, folder: &FolderConfig) -> Result<(), UploadError> {
        let Target::KifsDirectory { directory, create } = &folder.target else {
            return Ok(());
        };
        let mut shown = self.show_directory(directory).await;
        if matches!(
            &shown,
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                ..
            })
        ) && *create
        {
            let request = CreateDirectoryRequest {
                directory_name: directory.clone(),
                options: BTreeMap::from([("no_error_if_exists".into(), "true".into())]),
            };
            let _: CreateDirectoryResponse = self
                .call_with_retries("/create/directory", &request)
                .await
                .map_err(|err| {
                    UploadError::permanent(format!(
                        "cannot create KiFS directory '{directory}': {err}"
                    ))
                })?;
            tracing::info!(directory = %directory, "created KiFS directory");
            shown = self.show_directory(directory).await;
        }
        let shown = shown.map_err(|err| match err {
            UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
            } => UploadError::permanent(format!(
                "KiFS directory '{directory}' is not usable: {message}{}",
                if *create {
                    ""
                } else {
                    " (set create_directory = true to create it)"
                }
            )),
            other => other,
        })?;
        let index = shown
            .directories
            .iter()
            .position(|d| d == directory)
            .ok_or_else(|| {
                UploadError::permanent(format!(
                    "KiFS directory '{directory}' does not exist{}",
                    if *create {
                        ""
                    } else {
                        " (set create_directory = true to create it)"
                    }
                ))
            })?;
        let permission = shown
            .permissions
            .get(index)
            .map(String::as_str)
            .unwrap_or("");
        if permission != "directory_write" {
            return Err(UploadError::permanent(format!(
                "no write permission on KiFS directory '{directory}' (the server reports '{}'); \
                 grant directory_write to the configured user",
                if permission.is_empty() {
                    "no access"
                } else {
                    permission
                }
            )));
        }
        Ok(())
    }

    async fn show_directory(
        &self,
        directory: &str,
    ) -> Result<ShowDirectoriesResponse, UploadError> {
        let request = ShowDirectoriesRequest {
            directory_name: directory.to_string(),
            options: BTreeMap::new(),
        };
        self.call_with_retries("/show/directories", &request).await
    }

    /// Uploads the job's file. With `create_directory = true`, a directory found missing
    /// (never created because the server was down at start, or deleted since) is created
    /// and the upload tried once more.
    pub async fn upload(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let Target::KifsDirectory { directory, create } = job.target.clone() else {
            return Err(UploadError::permanent("not a KiFS target"));
        };
        match self.upload_into(job, &directory).await {
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
            }) if create
                && message.contains(&format!("Directory '{directory}' does not exist")) =>
            {
                tracing::warn!(directory = %directory, "the KiFS directory is missing; creating it (create_directory = true)");
                let request = CreateDirectoryRequest {
                    directory_name: directory.clone(),
                    options: BTreeMap::from([("no_error_if_exists".into(), "true".into())]),
                };
                let _: CreateDirectoryResponse = self
                    .call_with_retries("/create/directory", &request)
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
        validate_name(&target).map_err(UploadError::permanent)?;
        let reader = FileReader::open(&job.path, &job.fingerprint)?;
        job.live.set(0, reader.size);
        if reader.size <= self.part_size {
            self.upload_whole(job, &reader, &target).await?;
        } else {
            let _slot = tokio::select! {
                slot = self.multipart_slot.clone().acquire_owned() => {
                    slot.expect("the multipart semaphore is never closed")
                }
                _ = job.shutdown.cancelled() => return Err(UploadError::Shutdown),
            };
            match self.upload_multipart(job, &reader, &target).await {
                // The server refused a step of an upload it had accepted (unknown or
                // superseded UUID, a part out of order): start over once with a new UUID.
                Err(UploadError::Remote {
                    disposition: Disposition::Permanent,
                    message,
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

    async fn upload_whole(
        &self,
        job: &UploadJob,
        reader: &FileReader,
        target: &str,
    ) -> Result<(), UploadError> {
        let data = reader.read_at(0, reader.size as usize).await?;
        job.check_unchanged()?;
        let request = UploadFilesRequest {
            file_names: vec![target.to_string()],
            file_data: vec![data],
            options: self.data_options(),
        };
        let _: UploadFilesResponse = self.call_with_retries("/upload/files", &request).await?;
        job.check_unchanged()
    }

    async fn upload_multipart(
        &self,
        job: &mut UploadJob,
        reader: &FileReader,
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
            let data = reader.read_at(offset, len).await?;
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
        let shown = self.show_file(target).await?;
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
        let shown: ShowFilesResponse = self.call_with_retries("/show/files", &request).await?;
        Ok(shown
            .file_names
            .into_iter()
            .zip(shown.sizes)
            .map(|(name, size)| (name, size.max(0) as u64))
            .collect())
    }

    async fn show_file(&self, target: &str) -> Result<ShowFilesResponse, UploadError> {
        let request = ShowFilesRequest {
            paths: vec![target.to_string()],
            options: BTreeMap::new(),
        };
        self.call_with_retries("/show/files", &request).await
    }

    /// One multipart step, sent exactly once: an ambiguous failure is returned as is.
    async fn multipart_step(
        &self,
        target: &str,
        uuid: &str,
        operation: &str,
        part: Option<u64>,
        data: Option<Bytes>,
    ) -> Result<(), UploadError> {
        let mut options = self.data_options();
        options.insert("multipart_operation".into(), operation.into());
        options.insert("multipart_upload_uuid".into(), uuid.into());
        if let Some(part) = part {
            options.insert("multipart_upload_part_number".into(), part.to_string());
        }
        let request = UploadFilesRequest {
            file_names: vec![target.to_string()],
            file_data: data.into_iter().collect(),
            options,
        };
        let _: UploadFilesResponse = self.call("/upload/files", &request).await?;
        Ok(())
    }

    fn data_options(&self) -> BTreeMap<String, String> {
        match self.encoding {
            KifsEncoding::Binary => BTreeMap::new(),
            KifsEncoding::Json => BTreeMap::from([("file_encoding".into(), "base64".into())]),
        }
    }

    /// An idempotent call, retried with backoff on transient failures.
    async fn call_with_retries<Req: Record, Resp: Record>(
        &self,
        endpoint: &str,
        request: &Req,
    ) -> Result<Resp, UploadError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match self.call(endpoint, request).await {
                Err(UploadError::Remote {
                    disposition: Disposition::Retry { after },
                    message,
                }) if backoff.attempt() + 1 < REQUEST_ATTEMPTS => {
                    let sleep = backoff.next_delay(after, &mut rand::rng());
                    tracing::warn!(
                        endpoint,
                        attempt = backoff.attempt(),
                        max_attempts = REQUEST_ATTEMPTS,
                        sleep_ms = sleep.as_millis() as u64,
                        reason = %message,
                        "retrying KiFS request"
                    );
                    tokio::time::sleep(sleep).await;
                }
                other => return other,
            }
        }
    }

    /// Sends one request and decodes the wrapper; every failure is classified here.
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
        let content_type = wire::content_type(self.encoding);
        let mut builder = self
            .http
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
        let response = builder.send().await.map_err(|err| {
            UploadError::remote(
                Disposition::Retry { after: None },
                format!("KiFS {endpoint}: {}", describe_transport_error(&err)),
            )
        })?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|err| {
            UploadError::remote(
                Disposition::Retry { after: None },
                format!(
                    "KiFS {endpoint}: reading the answer failed: {}",
                    describe_transport_error(&err)
                ),
            )
        })?;
        if status.as_u16() != 200 && status.as_u16() != 400 {
            let disposition = classify_status(status.as_u16(), after);
            return Err(UploadError::remote(
                disposition,
                format!(
                    "KiFS {endpoint}: HTTP {status}{}",
                    status_hint(status.as_u16())
                ),
            ));
        }
        let wrapper = Wrapper::decode(self.encoding, &body).map_err(|err| {
            UploadError::retry(format!(
                "KiFS {endpoint}: undecodable answer (HTTP {status}): {err}"
            ))
        })?;
        wrapper
            .into_inner::<Resp>(self.encoding)
            .map_err(|err| match err {
                WrapperError::Remote(message) => {
                    UploadError::remote(classify_error_message(&message), message)
                }
                WrapperError::Malformed(err) => {
                    UploadError::retry(format!("KiFS {endpoint}: undecodable answer: {err}"))
                }
            })
    }
}

enum Resume {
    Fresh,
    At(MultipartState),
    AlreadyComplete,
}

/// The last part number the server reports for `uuid` in `info.multipart_uploads`, in the
/// emulator-defined layout (`protocols/kifs.md` §6 item 30); `None` when absent or unparsable.
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

/// A transport error without the URL (which may carry credentials in some setups).
pub(crate) fn describe_transport_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_request() {
        "connection interrupted"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
