//! The KiFS backend: uploads one file into a KiFS directory (`docs/protocols/kifs.md`).
//!
//! Upload algorithm, per file ([`KifsBackend::upload`]; the target is
//! `<kifs_directory>/<relative path>`). After step 1, a file of at most
//! [`WHOLE_FILE_LIMIT`] goes whole (`upload_alone`: steps 2 to 4), a larger one in parts
//! (`upload_in_parts`: step 5):
//! 1. [`validate_name`]: the name is checked locally (allowed characters, ≤ 1024
//!    characters, no empty segment): a bad name fails the job permanently, naming the
//!    offending character.
//! 2. `landed_before`, only for a job found claimed at a restart (a crash, or a state
//!    write that failed after the request: its earlier attempt is unconfirmed): one
//!    `/show/files` for all of a batch's unconfirmed targets. A target holding a file of
//!    the job's size is taken as this upload, done without sending, unless an earlier
//!    upload of the path had that same size (the file there may be the old version: sent
//!    again, which only overwrites). A failed look sends nothing: the job waits to retry.
//! 3. `persist_claim`: the job's claim is made durable before its bytes are sent, so that
//!    a job found claimed at a restart is known to be unconfirmed (step 2).
//! 4. `upload_whole`: one whole-file `/upload/files` request (an empty element for a
//!    zero-byte file). Replacing a file is idempotent, so transient failures are retried
//!    in place under the backend's [`RetryPolicy`]. Small files come several to a request
//!    through [`KifsBackend::upload_batch`], which takes steps 2 to 4 for the whole batch.
//! 5. `upload_in_parts`, one file at a time across all workers: `upload_multipart`, a
//!    driver over the steps of the `multipart` module (look for saved state, discard it,
//!    start, send each part, finalize, or reconcile a `complete` that went through).
//!    `init`, `upload_part` and `complete` are never re-sent blindly after an ambiguous
//!    failure (timeout, reset, 5xx): the job goes back to the queue and the next attempt
//!    decides. A step the server refuses for good mid-way (an unknown or superseded UUID,
//!    a part out of order) starts the upload over once with a new UUID. An upload that will
//!    not be continued (the file vanished, changed or is unreadable, a step refused for
//!    good, the refused upload before the new one) is cancelled on the server and
//!    forgotten, except during a shutdown, which keeps it to resume (an attempt that a
//!    stop ends so ends as interrupted, whatever else it found: the next start decides).
//!    A file that goes whole while its job holds saved progress (a multipart upload of an
//!    older, larger version, which no `init` of the target follows to cancel on the
//!    server) gives it up the same way before step 2 (`abandon_older_multipart`).
//!
//! The local file's fingerprint is checked before and after every request that sends its
//! bytes (steps 4 and 5); a change restarts the upload with the new content.
//!
//! The state of each step, what is durable after it and what a crash there leads to are
//! in `docs/upload-algorithms.md` ("KiFS upload").
//!
//! Every request reports its outcome to the remote's [`RemoteHealth`] (the HTTP client
//! does). A refused server certificate is not retried in place: the job waits in
//! `retry-wait` while someone fixes the server or `ca_file`.
//!
//! Module map: this file holds the backend and the per-file driver; `whole` whole-file
//! uploads, batches and the unconfirmed-claim look (steps 2 and 4); `multipart` the
//! multipart steps (5); `folder` the directory checks, listing and deletion; `transport`
//! the requests and the classification of answers; `body` streamed request bodies;
//! `classify` what an `ERROR` message means; `names` the name rules; `wire` the encodings.

pub mod wire;

mod body;
mod classify;
mod folder;
mod multipart;
pub mod names;
mod transport;
mod whole;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{KifsAuth, KifsConfig, KifsEncoding, Target};
use crate::net::{Bandwidth, HttpClient};

use super::chunk::FileReader;
use super::health::RemoteHealth;
use super::retry::RetryPolicy;
use super::{BatchLimits, Disposition, ErrorKind, UploadError, UploadJob, Uploaded};
use multipart::MultipartState;
pub use names::{MAX_NAME_LEN, validate_name};

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

    /// Uploads the job's file. A directory found missing (never created because the server
    /// was down at start, or deleted since) is created and the upload tried once more with
    /// `create_directory = true`; without it, the answer is the folder check's own
    /// ([`folder::missing_directory`]), which refuses the folder until the directory is back.
    pub async fn upload(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let Target::KifsDirectory { directory, create } = job.target.clone() else {
            return Err(UploadError::permanent(
                ErrorKind::Config,
                "not a KiFS target",
            ));
        };
        match self.upload_into(job, &directory).await {
            Err(err) if folder::says_missing(&err, &directory) && create => {
                tracing::warn!(directory = %directory, "the KiFS directory is missing; creating it (create_directory = true)");
                self.create_directory(&directory, &job.scope).await?;
                self.upload_into(job, &directory).await
            }
            Err(err) if folder::says_missing(&err, &directory) => {
                Err(folder::missing_directory(&directory, create))
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
            self.upload_alone(job, &reader, &target).await?;
        } else {
            self.upload_in_parts(job, &reader, &target).await?;
        }
        job.live.set(reader.size, reader.size);
        Ok(Uploaded {
            remote: target,
            md5: None,
        })
    }

    /// Steps 2 to 4: one whole-file request, unless an unconfirmed earlier one landed.
    async fn upload_alone(
        &self,
        job: &mut UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        self.abandon_older_multipart(job).await?;
        let unconfirmed = [(0, target, &*job)];
        if self
            .landed_before(&unconfirmed, &job.scope)
            .await?
            .is_empty()
        {
            job.persist_claim()?;
            self.upload_whole(job, reader, target).await?;
        }
        Ok(())
    }

    /// Step 5: the multipart upload, alone across all workers, started over once when the
    /// server refuses a step of an upload it had accepted.
    async fn upload_in_parts(
        &self,
        job: &mut UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        let _slot = tokio::select! {
            slot = self.multipart_slot.clone().acquire_owned() => {
                slot.expect("the multipart semaphore is never closed")
            }
            _ = job.scope.stop.cancelled() => return Err(UploadError::Shutdown),
        };
        let outcome = match self.upload_multipart(job, reader, target).await {
            // An unknown or superseded UUID, a part out of order: a new UUID, once. The old
            // one is cancelled first rather than left to the new `init`: that `init` may
            // fail too, and which uploads it cancels is inferred, not documented
            // (`docs/protocols/kifs.md` §3.1).
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
                ..
            }) if job.load_progress::<MultipartState>()?.is_some() => {
                tracing::warn!(job = job.id.0, target, reason = %message, "multipart upload refused mid-way; starting again with a new upload");
                if !self.abandon_saved(job).await {
                    return Err(UploadError::Shutdown);
                }
                job.clear_progress()?;
                self.upload_multipart(job, reader, target).await
            }
            other => other,
        };
        if let Err(err) = &outcome
            && ends_the_upload(err)
            && !self.abandon_saved(job).await
        {
            // A stop keeps the upload: the next start finds the file as it is then (gone:
            // the worker cancels the upload; changed: step 2 does). Ending the job now
            // would forget the upload without a cancel.
            return Err(UploadError::Shutdown);
        }
        outcome
    }
}

/// Whether the job ends with `err` so that its saved multipart upload is never continued:
/// the worker drops it (vanished), queues it afresh (changed) or fails it (unreadable, a
/// permanent refusal), each forgetting its progress. A refused credential keeps the
/// progress for the retry once it is fixed; a transient failure, a state database error
/// and a shutdown keep it to resume.
fn ends_the_upload(err: &UploadError) -> bool {
    match err {
        UploadError::Vanished(_) | UploadError::Changed | UploadError::Unreadable(_) => true,
        UploadError::Remote {
            disposition: Disposition::Permanent,
            kind,
            ..
        } => *kind != ErrorKind::Auth,
        UploadError::Remote { .. }
        | UploadError::Store(_)
        | UploadError::Waiting(_)
        | UploadError::Shutdown => false,
    }
}

#[cfg(test)]
mod tests;
