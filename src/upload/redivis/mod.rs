//! The Redivis backend: one local file becomes one upload in a Redivis table, exactly once.
//! "Protocol §N" in this module and its children is `docs/protocols/redivis.md`.
//!
//! Modules: [`api`] (REST client, pacing, in-request retries), [`attempt`] (one file
//! into a table, as named steps), [`session`] (the resumable chunk loop both flows share),
//! [`source`] (a file's chunks, read ahead and hashed while they travel), [`classify`] (status → disposition), [`ratelimit`] (the
//! shared budget of API requests), [`names`] (escaping, collisions, the per-table name
//! index), [`poll`] (batched status polls), [`tables`] (a table's kind, a dataset's next
//! version), [`files`] (file index tables: temp uploads registered in `rawFiles` batches),
//! [`versions`] (a dataset without an unreleased version, a release mid-import).
//!
//! # The algorithm ([`RedivisBackend::upload`])
//! A file for a plain table goes through the numbered steps of [`attempt`], each a function
//! (`claim_name`, `reconcile_finalize`, `check_name`, `transfer`, `delete_stale`, `post`,
//! `settle`, `send_again`); a file for a file index table goes through [`files`]. An upload
//! still importing is waited for by [`RedivisBackend::await_import`] and the table's
//! shared poller (2 s → 30 s), then verified ([`RedivisBackend::verify`]: our size and
//! MD5, hex any case or base64); a failed import is removed
//! ([`RedivisBackend::remove_failed`]). `docs/upload-algorithms.md` ("Redivis upload")
//! describes the steps with what is durable after each and what a crash at each leads to.
//!
//! A definitive refusal from a `:next` table whose dataset has no unreleased version
//! (released), or that met the window between a release and the opening of the next
//! version, ends an upload with `UploadError::Waiting`: one decision for every request of
//! every flow ([`versions`]).
//!
//! # Scenarios (each has a test in `tests/redivis_backend.rs`)
//! - Resume: a dropped connection mid-chunk and a 5xx after partial persistence continue
//!   from the server's offset; a 308 without `Range` restarts the session's bytes at 0; a
//!   status query that finds every byte completes the upload; an expired (404) or gone
//!   (410) session is replaced from byte 0; two rejections (400) fail the job; the next
//!   job attempt resumes the saved session, unless it is older than its lifetime.
//! - Shapes: both flows; 0 B (inline, no session); ≤ 1 MiB inline; exactly one chunk;
//!   N chunks plus a remainder; a single-chunk temp upload re-sent whole after a drop.
//! - Exactly once: a restart while finalizing adopts the posted upload; a lost upload.post
//!   answer is reconciled through the list; an identical upload already in the table is
//!   adopted; a changed file deletes its earlier upload; a same-name upload with another
//!   hash is replaced; names colliding under escaping are refused naming both files.
//! - Name index: small files cost ≤ 1.5 API requests each (one listing per batch); a
//!   changed file replaces its earlier upload without asking by name; a touched, unchanged
//!   file adopts its earlier upload; a name taken after the listing (renamed or refused by
//!   the server) ends replaced once, adopted, or refused as a collision, never duplicated;
//!   a stale index of a large table asks by name until that costs as much as a listing.
//! - Integrity and safety: a hash mismatch deletes the upload and re-sends once, a second
//!   one fails the job, one found while waiting for the import deletes the upload (the
//!   emulator's `--redivis-corrupt-uploads`); a file changing between chunks ends the
//!   attempt; a failed import fails the job with
//!   Redivis' message; shutdown interrupts a retry pause.
//! - Pacing and secrets: a 429 storm with a bounded request count; shared list polls; the
//!   token in no log line, error, Debug output or saved progress.

pub mod api;
mod attempt;
pub mod classify;
pub mod files;
pub mod granule;
pub mod names;
pub mod poll;
pub mod ratelimit;
pub mod session;
pub mod source;
pub mod tables;
pub mod versions;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};

use self::api::{ApiClient, ApiFields, UploadResource};
use self::names::{IndexConfig, NameIndex, NameRegistry};
use self::poll::{PollConfig, Poller, failure_message};
use self::ratelimit::{Pacer, PacerConfig};
use self::session::{Flow, SessionClient, SessionFailure, SessionState, Transfer};
use self::tables::{TableKind, TableKinds};
use super::chunk::FileReader;
use super::health::RemoteHealth;
use super::retry::{Attempts, CallScope, GaveUp, RetryPolicy};
use super::{
    BatchLimits, Delivery, Disposition, ErrorKind, Posted, UploadError, UploadJob, Uploaded,
};
use crate::config::{FolderConfig, RedivisConfig, RedivisProtocol, Target};
use crate::net::{Bandwidth, HttpClient};

/// Files up to this size go inline in one multipart upload.post (the official client's
/// `MAX_SIMPLE_UPLOAD_SIZE`, 1 MiB): one API request instead of three or more.
pub const INLINE_UPLOAD_MAX: u64 = 1 << 20;

/// Redivis' documented lifetime of a resumable session.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Internal knobs; the defaults follow the protocol notes, tests shrink them.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub pacer: PacerConfig,
    pub retry: RetryPolicy,
    pub poll: PollConfig,
    /// How long a listing of a table answers name checks ([`names::NameIndex`]).
    pub name_index: IndexConfig,
    pub session_max_age: Duration,
    /// Files up to this size go inline ([`INLINE_UPLOAD_MAX`]; 0 sends only empty files
    /// inline, which tests use to drive small files through sessions).
    pub inline_max: u64,
    /// New sessions one attempt may start after dead ones before handing back to the queue.
    pub session_restarts: u32,
    /// Consecutive transient failures after which Redivis counts as down (module
    /// [`crate::upload::health`]).
    pub down_after: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            pacer: PacerConfig::default(),
            retry: RetryPolicy::default(),
            poll: PollConfig::default(),
            name_index: IndexConfig::default(),
            session_max_age: SESSION_LIFETIME,
            inline_max: INLINE_UPLOAD_MAX,
            session_restarts: 3,
            down_after: super::health::DOWN_AFTER,
        }
    }
}

/// Shared by every worker (`&self`); the parts live behind pointers so the value stays
/// small inside [`super::Backend`].
pub struct RedivisBackend {
    api: Arc<ApiClient>,
    sessions: Arc<SessionClient>,
    poller: Arc<Poller>,
    names: Arc<NameRegistry>,
    index: Arc<NameIndex>,
    /// Which tables are file index tables ([`files`]).
    kinds: Arc<TableKinds>,
    chunk_size: u64,
    flow: Flow,
    tuning: Arc<Tuning>,
}

impl std::fmt::Debug for RedivisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedivisBackend")
            .field("api", &self.api)
            .field("chunk_size", &self.chunk_size)
            .field("flow", &self.flow)
            .finish_non_exhaustive()
    }
}

/// What upload.post gave.
enum PostAnswer {
    /// The upload, under exactly the name we sent.
    Created(UploadResource),
    /// Another upload holds the name: the server refused ours (409), or created it under
    /// another name, which has been deleted again. Nothing of ours is in the table.
    NameTaken(String),
}

/// How an import that Redivis finished turned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Our size and MD5: the file is uploaded, into `table`: the table it was posted to,
    /// or the same table of the version released while it was importing (its reference
    /// names that version, e.g. `owner.dataset:v1_0.table`).
    Verified { uploaded: Uploaded, table: String },
    /// Other bytes than were sent (the reason says how); the upload has been deleted.
    Corrupt(String),
    /// Redivis ended the import `failed` (the reason carries its `errorMessage`); the
    /// failed upload at `uri` is still in the table ([`RedivisBackend::remove_failed`]).
    Failed { reason: String, uri: String },
    /// The upload is in the table no more (deleted by someone, or released without it):
    /// the file must be sent again.
    Gone(String),
}

/// How the bytes reach upload.post.
enum Finalize {
    Inline(Bytes),
    Session { flow: Flow, id: String },
}

/// What opening a new session gave.
enum Opened {
    Session(SessionState),
    /// A non-resumable temp upload: one PUT of the whole body.
    Whole {
        id: String,
        url: String,
    },
}

/// The sessions that died under one transfer: one rejection (400) is allowed, and a
/// bounded number of new sessions.
#[derive(Default)]
struct DeadSessions {
    rejected: u32,
    restarts: u32,
}

impl DeadSessions {
    /// Counts a dead session; an error once another new one is not worth starting.
    fn count(
        &mut self,
        job: &UploadJob,
        rejected: bool,
        message: &str,
        max_restarts: u32,
    ) -> Result<(), UploadError> {
        if rejected {
            self.rejected += 1;
            if self.rejected >= 2 {
                return Err(UploadError::permanent(
                    ErrorKind::Rejected,
                    format!(
                        "Redivis rejected the upload of {} twice: {message}",
                        job.rel
                    ),
                ));
            }
        }
        self.restarts += 1;
        let restarts = self.restarts;
        if restarts > max_restarts {
            return Err(UploadError::retry(
                ErrorKind::Server,
                format!(
                    "upload sessions for {} kept dying ({restarts} times, last: {message}); \
                     will retry later",
                    job.rel
                ),
            ));
        }
        tracing::warn!(
            job = job.id.0,
            attempt = restarts,
            max_attempts = max_restarts,
            reason = %message,
            "upload session unusable; starting a new one from byte 0"
        );
        Ok(())
    }
}

/// A file small enough to go inline: its bytes, read while it was checked unchanged, and
/// their MD5.
async fn read_inline(
    job: &UploadJob,
    reader: &FileReader,
) -> Result<(Finalize, String), UploadError> {
    job.check_unchanged()?;
    let data = reader.read_at(0, reader.size as usize).await?;
    job.check_unchanged()?;
    let md5 = hex::encode(Md5::digest(&data));
    Ok((Finalize::Inline(data), md5))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedivisBackend {
    /// The backend for `config`, its request bodies paced by `bandwidth`.
    pub fn new(
        config: &RedivisConfig,
        bandwidth: Arc<Bandwidth>,
    ) -> Result<RedivisBackend, String> {
        let tuning = Tuning {
            pacer: PacerConfig::with_window(config.rate_limit_window),
            ..Tuning::default()
        };
        RedivisBackend::with_tuning(config, tuning, bandwidth)
    }

    pub fn with_tuning(
        config: &RedivisConfig,
        tuning: Tuning,
        bandwidth: Arc<Bandwidth>,
    ) -> Result<RedivisBackend, String> {
        if !granule::is_valid_chunk_size(config.chunk_size) {
            return Err(format!(
                "Redivis chunk_size must be a positive multiple of {}, not {} bytes",
                crate::config::units::format_size(granule::CHUNK_GRANULE),
                config.chunk_size
            ));
        }
        // The API and its session URLs share one health: both are Redivis answering.
        let health = Arc::new(RemoteHealth::with_threshold(
            "redivis",
            &config.api_url,
            tuning.down_after,
        ));
        let http = HttpClient::build("redivis", &config.net, bandwidth, |builder| {
            // A session's 308 is "resume incomplete", never a redirect to follow.
            builder.redirect(reqwest::redirect::Policy::none())
        })?
        .reporting_to(Arc::clone(&health));
        let api = Arc::new(ApiClient::new(
            http.clone(),
            &config.api_url,
            config.token.clone(),
            Pacer::new(tuning.pacer),
            tuning.retry,
            Arc::clone(&health),
        )?);
        let sessions = Arc::new(SessionClient::new(
            http,
            &config.api_url,
            config.token.clone(),
            tuning.retry,
            health,
        ));
        let poller = Arc::new(Poller::new(Arc::clone(&api), tuning.poll));
        Ok(RedivisBackend {
            api,
            sessions,
            poller,
            names: Arc::new(NameRegistry::default()),
            index: Arc::new(NameIndex::new(tuning.name_index)),
            kinds: Arc::new(TableKinds::default()),
            chunk_size: config.chunk_size,
            flow: match config.protocol {
                RedivisProtocol::ResumableUpload => Flow::ResumableUpload,
                RedivisProtocol::TempUploads => Flow::TempUploads,
            },
            tuning: Arc::new(tuning),
        })
    }

    /// API requests sent so far by this backend (retries included, session PUTs not).
    pub fn api_requests(&self) -> u64 {
        self.api.requests()
    }

    /// The health of the Redivis API and its session URLs, which every request reports to.
    pub fn health(&self) -> &Arc<RemoteHealth> {
        self.api.health()
    }

    /// One cheap request, not retried, telling whether Redivis answers: `Ok` for any answer
    /// that is not a transient failure (a 404 for the table is an answer).
    pub async fn probe(&self, table: &str) -> Result<(), String> {
        let once = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let url = self
            .api
            .absolute(&format!("{}/uploads", ApiClient::table_path(table)));
        let what = format!("upload list of table {table}");
        let scope = CallScope::default();
        let sent = self
            .api
            .send_with(
                &once,
                &what,
                api::Idempotency::Repeatable,
                &scope,
                &url,
                &|http| http.get(&url).query(&[("maxResults", 1)]),
            )
            .await;
        match sent {
            Err(err) if err.disposition.is_transient() => Err(err.message),
            _ => Ok(()),
        }
    }

    /// Every upload in `table` that did not fail processing (all pages), for rebuilding
    /// the ledger from the remote; a file index table's files, as uploads.
    pub async fn list_uploads(&self, table: &str) -> Result<Vec<api::UploadResource>, UploadError> {
        let scope = CallScope::default();
        if self.kinds.get(&self.api, table, &scope).await? == TableKind::FileIndex {
            let files = self.api.list_raw_files(table, &scope).await?;
            return Ok(files.into_iter().map(files::RawFile::as_upload).collect());
        }
        let mut uploads = Vec::new();
        self.api
            .for_each_upload_page(table, &scope, &mut |page| {
                uploads.extend(page.iter().filter(|u| !u.is_failed()).cloned());
                true
            })
            .await?;
        Ok(uploads)
    }

    /// Deletes what upsync uploaded for the file `rel` of `table`: the upload `remote` (a
    /// table), or the file entry `remote` (a file index table). A copy already gone counts
    /// as deleted.
    pub async fn delete_uploaded(
        &self,
        table: &str,
        rel: &str,
        remote: &str,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        if self.kinds.get(&self.api, table, scope).await? == TableKind::FileIndex {
            if !self.api.delete_raw_file(remote, scope).await? {
                return Err(UploadError::permanent(
                    ErrorKind::Unexpected,
                    format!("Redivis kept the file {remote} of table {table} after deleting it"),
                ));
            }
        } else {
            self.api.delete_upload(remote, scope).await?;
            self.index.deleted(table, &names::escape(rel), remote);
        }
        self.names.release(table, rel);
        Ok(())
    }

    /// Checks that the folder's table is reachable with this token.
    pub async fn prepare_folder(
        &self,
        folder: &FolderConfig,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        let Target::RedivisTable(table) = &folder.target else {
            return Err(UploadError::permanent(
                ErrorKind::Config,
                format!(
                    "folder {} does not target a Redivis table",
                    folder.path.display()
                ),
            ));
        };
        let mut err = match self.kinds.get(&self.api, table, scope).await {
            Ok(kind) => {
                log_table_kind(folder, table, kind);
                return Ok(());
            }
            Err(err) => err,
        };
        let refused = err
            .status
            .is_some_and(|s| (400..500).contains(&s) && ![401, 403, 408, 429].contains(&s));
        if refused && self.ensure_next_version(folder, table, scope).await? {
            err = match self.kinds.get(&self.api, table, scope).await {
                Ok(kind) => {
                    log_table_kind(folder, table, kind);
                    return Ok(());
                }
                Err(err) => err,
            };
        }
        if err.shutdown {
            return Err(UploadError::Shutdown);
        }
        let failed = |disposition: Disposition, message: String| {
            Err(UploadError::Remote {
                kind: err.kind,
                disposition,
                status: err.status,
                endpoint: err.endpoint,
                message,
            })
        };
        let definitive = |message: String| failed(Disposition::Permanent, message);
        match err.status {
            Some(404) => definitive(format!(
                "Redivis table {table} not found, or not visible to this token \
                 (expected owner.dataset:next.table): {}",
                err.message
            )),
            Some(401) => definitive(format!(
                "Redivis rejected the API token for table {table}; check token_file / \
                 token_env: {}",
                err.message
            )),
            Some(403) => definitive(format!(
                "the API token may not edit Redivis table {table} (it needs the data.edit \
                 scope and edit access to the dataset): {}",
                err.message
            )),
            _ => {
                // Anything else is checked again later, a refused certificate included.
                let disposition = match err.disposition {
                    transient @ (Disposition::Retry { .. } | Disposition::RetryLater) => transient,
                    _ => Disposition::Retry { after: None },
                };
                failed(
                    disposition,
                    format!("cannot reach Redivis table {table}: {}", err.message),
                )
            }
        }
    }

    /// The batch limits of `target`'s table: only a file index table (known to be one)
    /// takes files in batches.
    pub fn batch_limits(&self, target: &Target) -> Option<BatchLimits> {
        let Target::RedivisTable(table) = target else {
            return None;
        };
        (self.kinds.known(table) == Some(TableKind::FileIndex)).then(|| self.file_batch_limits())
    }

    /// `table` or `file index table`, once the table was read.
    pub fn target_kind(&self, target: &Target) -> Option<&'static str> {
        match target {
            Target::RedivisTable(table) => self.kinds.known(table).map(TableKind::label),
            Target::KifsDirectory { .. } => None,
        }
    }

    /// Uploads several files: in one batch when they all go to one file index table,
    /// else one after the other.
    pub async fn upload_batch(&self, jobs: &mut [UploadJob]) -> Vec<Result<Delivery, UploadError>> {
        if let Some(table) = self.one_file_index_table(jobs) {
            let mut outcomes = self.upload_files(&table, jobs).await;
            if let Some(scope) = jobs.first().map(|job| job.scope.clone()) {
                self.explain_refusal(&table, &mut outcomes, &scope).await;
            }
            return outcomes
                .into_iter()
                .map(|outcome| outcome.map(Delivery::Uploaded))
                .collect();
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            outcomes.push(self.upload(job).await);
        }
        outcomes
    }

    /// The file index table every job goes to, if they all go to the same one.
    fn one_file_index_table(&self, jobs: &[UploadJob]) -> Option<String> {
        let first = &jobs.first()?.target;
        let Target::RedivisTable(table) = first else {
            return None;
        };
        let one_table = jobs.iter().all(|job| job.target == *first);
        (one_table && self.kinds.known(table) == Some(TableKind::FileIndex)).then(|| table.clone())
    }

    /// Uploads one file (the steps of [`attempt`]; a file index table's file as [`files`]
    /// says): returns once Redivis holds it, imported and verified, or still importing
    /// ([`Delivery::Posted`]).
    pub async fn upload(&self, job: &mut UploadJob) -> Result<Delivery, UploadError> {
        let mut outcome = [self.upload_one(job).await];
        if let Target::RedivisTable(table) = &job.target {
            self.explain_refusal(table, &mut outcome, &job.scope).await;
        }
        let [outcome] = outcome;
        outcome
    }

    /// [`Self::upload`], before a refusal is put down to a released version.
    async fn upload_one(&self, job: &mut UploadJob) -> Result<Delivery, UploadError> {
        let table = match &job.target {
            Target::RedivisTable(table) => table.clone(),
            Target::KifsDirectory { directory, .. } => {
                return Err(UploadError::permanent(
                    ErrorKind::Config,
                    format!(
                        "job for {} targets KiFS directory {directory}, not a Redivis table",
                        job.rel
                    ),
                ));
            }
        };
        if self.kinds.get(&self.api, &table, &job.scope).await? == TableKind::FileIndex {
            let mut outcomes = self.upload_files(&table, std::slice::from_mut(job)).await;
            let outcome = outcomes.pop().expect("one outcome per job");
            return outcome.map(Delivery::Uploaded);
        }
        let escaped = self.claim_name(job, &table).await?;
        let result = self.upload_named(job, &table, &escaped).await;
        if let Ok(_)
        | Err(
            UploadError::Vanished(_)
            | UploadError::Remote {
                disposition: Disposition::Permanent,
                ..
            },
        ) = &result
        {
            // The file is uploaded, gone, or failed for good (for instance because the
            // table holds the name for another file, posted before a crash): it has nothing
            // in flight, and whatever it left in the table is found by the remote check
            // (`check_name`), so the claim is no longer needed, and keeping it would refuse the
            // file the table names. Claims are thus held only by uploads in progress or
            // waiting to retry, not by every file ever uploaded.
            self.names.release(&table, &job.rel);
        }
        result
    }

    /// After [`attempt`]'s step 7 handed an upload back as posted: waits through the table's shared
    /// poller until Redivis finished importing it, then checks it. A corrupt upload is
    /// deleted; a failed one is left for [`Self::remove_failed`]. An upload no longer in
    /// the table is looked for in the version just released ([`versions`], step 4). When
    /// nothing of the file stays in the table, its name is released.
    pub async fn await_import(
        &self,
        rel: &str,
        posted: &Posted,
        size: u64,
        scope: &CallScope,
    ) -> Result<Imported, UploadError> {
        let waited = UploadResource {
            uri: posted.remote.clone(),
            name: Some(rel.to_string()),
            ..UploadResource::default()
        };
        let checked = match self.wait_anywhere(&posted.target, waited, scope).await? {
            Ok((table, done)) => {
                let escaped = names::escape(rel);
                self.verify(&table, &escaped, done, size, &posted.md5, scope)
                    .await?
            }
            Err(gone) => gone,
        };
        if !matches!(checked, Imported::Verified { .. }) {
            self.names.release(&posted.target, rel);
        }
        Ok(checked)
    }

    /// The finished upload and the table it ended in: `table`, or the version released
    /// while it was importing; `Err(Gone)` when neither has it.
    async fn wait_anywhere(
        &self,
        table: &str,
        waited: UploadResource,
        scope: &CallScope,
    ) -> Result<Result<(String, UploadResource), Imported>, UploadError> {
        let uri = waited.uri.clone();
        if let Some(done) = self.poller.wait(table, waited, scope).await? {
            return Ok(Ok((table.to_string(), done)));
        }
        let gone = || Imported::Gone(format!("upload {uri} is no longer in table {table}"));
        let Some((released, found)) = self.find_released(table, &uri, scope).await? else {
            return Ok(Err(gone()));
        };
        tracing::info!(upload = %found.uri, table = %released, "the upload was importing when its version was released; its import ends there");
        Ok(self
            .poller
            .wait(&released, found, scope)
            .await?
            .map(|done| (released, done))
            .ok_or_else(gone))
    }

    /// Removes an upload whose import Redivis failed (the official client's
    /// `remove_on_fail`), so that its name is free again. Gone already, or in a released
    /// version (which takes no changes), counts as removed.
    pub async fn remove_failed(
        &self,
        table: &str,
        rel: &str,
        uri: &str,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        match self.api.delete_upload(uri, scope).await {
            Ok(()) => {}
            Err(err) if err.shutdown || err.disposition != Disposition::Permanent => {
                return Err(err.into());
            }
            Err(err) => {
                tracing::warn!(upload = %uri, error = %err.message, "cannot remove a failed upload; it stays in the table");
            }
        }
        self.index.deleted(table, &names::escape(rel), uri);
        Ok(())
    }

    /// [`RedivisBackend::upload`], then [`RedivisBackend::await_import`] when needed: the
    /// whole way to an imported, verified upload in one call (tests, tools). A corrupt
    /// import sends the file again once.
    pub async fn upload_and_import(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let mut corrupt = 0;
        loop {
            let posted = match self.upload(job).await? {
                Delivery::Uploaded(uploaded) => return Ok(uploaded),
                Delivery::Posted(posted) => posted,
            };
            let scope = job.scope.clone();
            match self
                .await_import(&job.rel, &posted, job.fingerprint.size, &scope)
                .await?
            {
                Imported::Verified { uploaded, .. } => {
                    job.clear_progress()?;
                    return Ok(uploaded);
                }
                Imported::Failed { reason, uri } => {
                    self.remove_failed(&posted.target, &job.rel, &uri, &scope)
                        .await?;
                    return Err(UploadError::permanent(ErrorKind::Rejected, reason));
                }
                Imported::Gone(reason) => {
                    return Err(UploadError::retry(ErrorKind::Unexpected, reason));
                }
                Imported::Corrupt(reason) => {
                    corrupt += 1;
                    if corrupt >= 2 {
                        return Err(UploadError::permanent(
                            ErrorKind::Unexpected,
                            format!("{} ({reason})", job.rel),
                        ));
                    }
                    // The corrupt upload is deleted: nothing of this file is posted now.
                    job.clear_progress()?;
                    job.finalize_started = false;
                }
            }
        }
    }

    /// A finished upload is ours when Redivis reports our size and MD5. Another
    /// size or hash: the upload is deleted (it holds bytes that are not the file's).
    async fn verify(
        &self,
        table: &str,
        escaped: &str,
        done: UploadResource,
        size: u64,
        md5: &str,
        scope: &CallScope,
    ) -> Result<Imported, UploadError> {
        if done.is_failed() {
            return Ok(Imported::Failed {
                reason: failure_message(&done),
                uri: done.uri,
            });
        }
        let remote_hash = done.hash.clone().unwrap_or_default();
        let size_ok = done.size.is_none_or(|s| s == size);
        let hash_ok = remote_hash.is_empty() || hashes_match(md5, &remote_hash);
        if size_ok && hash_ok {
            if remote_hash.is_empty() {
                tracing::warn!(upload = %done.uri, "Redivis reported no hash; the upload is not verified");
            }
            return Ok(Imported::Verified {
                uploaded: Uploaded {
                    remote: done.uri,
                    md5: Some(md5.to_string()),
                },
                table: table.to_string(),
            });
        }
        let reason = if hash_ok {
            format!(
                "size mismatch: local {size} bytes, remote {} bytes",
                done.size.unwrap_or_default()
            )
        } else {
            format!("hash mismatch: local {md5}, remote {remote_hash}")
        };
        tracing::warn!(upload = %done.uri, reason = %reason, "deleting a corrupt upload");
        self.api.delete_upload(&done.uri, scope).await?;
        self.index.deleted(table, escaped, &done.uri);
        Ok(Imported::Corrupt(reason))
    }

    /// The MD5 (hex) of the whole file.
    async fn file_md5(&self, reader: &FileReader) -> Result<String, UploadError> {
        source::file_md5(reader, self.chunk_size).await
    }

    /// Lists the table (all pages) for an upload named `name` that is ours: not failed,
    /// and with our size and hash where the server already reports them.
    async fn find_posted(
        &self,
        table: &str,
        name: &str,
        size: u64,
        md5: &str,
        scope: &CallScope,
    ) -> Result<Option<UploadResource>, UploadError> {
        let mut best: Option<UploadResource> = None;
        self.api
            .for_each_upload_page(table, scope, &mut |page| {
                for upload in page {
                    let ours = upload.name.as_deref() == Some(name)
                        && !upload.is_failed()
                        && upload.size.is_none_or(|s| s == size)
                        && upload.hash.as_deref().is_none_or(|h| hashes_match(md5, h));
                    let better = match &best {
                        None => true,
                        Some(current) => !current.is_completed() && upload.is_completed(),
                    };
                    if ours && better {
                        best = Some(upload.clone());
                    }
                }
                true
            })
            .await?;
        Ok(best)
    }

    /// upload.post; an answer lost on the way is reconciled through the list, never
    /// re-posted blindly. A name already taken in the table comes back as
    /// [`PostAnswer::NameTaken`], whether the server refuses it or renames our upload.
    #[allow(clippy::too_many_arguments)]
    async fn post_reconciled(
        &self,
        table: &str,
        name: &str,
        size: u64,
        md5: &str,
        finalize: &Finalize,
        options: &ApiFields,
        scope: &CallScope,
    ) -> Result<PostAnswer, UploadError> {
        let mut attempts =
            Attempts::new(self.api.retry_policy(), scope, "upload.post").watching(self.health());
        loop {
            let err = match self.post_once(table, name, finalize, options, scope).await {
                Ok(upload) => return self.created_as_named(upload, name, scope).await,
                Err(err) => err,
            };
            if err.status == Some(409) {
                // Refused, so nothing was created.
                return Ok(PostAnswer::NameTaken(err.message));
            }
            if matches!(finalize, Finalize::Session { .. }) && err.status == Some(400) {
                // The transferred bytes are unknown to upload.post (the session expired, or
                // was never completed): they must be sent again in a new session. Not
                // posted yet, so this cannot duplicate anything.
                return Err(api::ApiError {
                    disposition: Disposition::RestartSession,
                    ..err
                }
                .into());
            }
            if !(err.maybe_processed && matches!(err.disposition, Disposition::Retry { .. })) {
                return Err(err.into());
            }
            tracing::warn!(
                upload = name,
                attempt = attempts.failures() + 1,
                reason = %err.message,
                "upload.post answer lost; checking the table before posting again"
            );
            if let Some(found) = self.find_posted(table, name, size, md5, scope).await? {
                return Ok(PostAnswer::Created(found));
            }
            if let Err(gave_up) = attempts.pause(None, &err.message).await {
                return Err(match gave_up {
                    GaveUp::Shutdown => UploadError::Shutdown,
                    GaveUp::Spent(_) => err.into(),
                });
            }
        }
    }

    /// One upload.post of the bytes `finalize` names.
    async fn post_once(
        &self,
        table: &str,
        name: &str,
        finalize: &Finalize,
        options: &ApiFields,
        scope: &CallScope,
    ) -> Result<UploadResource, api::ApiError> {
        match finalize {
            Finalize::Inline(data) => {
                self.api
                    .post_upload_inline(table, name, data.clone(), options, scope)
                    .await
            }
            Finalize::Session { flow, id } => {
                self.api
                    .post_upload(table, name, flow.id_field(), id, options, scope)
                    .await
            }
        }
    }

    /// What the upload upload.post created is: ours, or, under another name because ours
    /// is taken, a duplicate that is deleted again.
    async fn created_as_named(
        &self,
        upload: UploadResource,
        name: &str,
        scope: &CallScope,
    ) -> Result<PostAnswer, UploadError> {
        if upload.uri.is_empty() {
            return Err(UploadError::retry(
                ErrorKind::Unexpected,
                format!("Redivis upload.post of {name:?} answered without the upload's uri"),
            )
            .at(api::UPLOAD_POST_ENDPOINT));
        }
        match upload.name.as_deref() {
            // Only another escaped name is another address: a name given back in another
            // case or spelling is still ours.
            Some(given) if names::escape(given) != names::escape(name) => {
                // Redivis renames an upload whose name is taken (protocol §9): a second
                // copy of the file under another name is a duplicate.
                tracing::warn!(upload = name, renamed = given, uri = %upload.uri, "Redivis renamed the new upload because its name is taken; deleting it");
                self.api.delete_upload(&upload.uri, scope).await?;
                Ok(PostAnswer::NameTaken(format!(
                    "Redivis created it as {given:?}"
                )))
            }
            _ => Ok(PostAnswer::Created(upload)),
        }
    }

    /// The bytes of `job` to Redivis in `flow` (`transfer` in [`attempt`], and [`files`]):
    /// inline when `inline` allows (file index tables take temp uploads only) and the file
    /// is small, else through sessions, a saved one resumed and dead ones replaced.
    async fn transfer_as(
        &self,
        job: &UploadJob,
        table: &str,
        reader: &FileReader,
        flow: Flow,
        inline: bool,
        scope: &CallScope,
    ) -> Result<(Finalize, String), UploadError> {
        let size = reader.size;
        if inline && size <= self.tuning.inline_max {
            return read_inline(job, reader).await;
        }
        let mut resume = self.saved_session(job, flow, table, size)?;
        let check = || job.check_unchanged();
        let transfer = self.file_transfer(job, reader, &check, scope);
        let mut persist = |state: &SessionState| job.save_progress(state);
        let mut dead = DeadSessions::default();
        loop {
            let outcome = match resume.take() {
                Some(mut state) => {
                    tracing::info!(
                        job = job.id.0,
                        confirmed = state.confirmed_offset,
                        size,
                        "resuming the saved upload session"
                    );
                    transfer
                        .run(&mut state, true, &mut persist)
                        .await
                        .map(|md5| (state.upload_id, md5))
                }
                None => match self.open_session(flow, table, job, size, scope).await {
                    Ok(Opened::Session(mut state)) => {
                        job.save_progress(&state)?;
                        transfer
                            .run(&mut state, false, &mut persist)
                            .await
                            .map(|md5| (state.upload_id, md5))
                    }
                    Ok(Opened::Whole { id, url }) => {
                        transfer.put_whole(&url, size).await.map(|md5| (id, md5))
                    }
                    Err(failure) => Err(failure),
                },
            };
            match outcome {
                Ok((id, md5)) => return Ok((Finalize::Session { flow, id }, md5)),
                Err(SessionFailure::Fail(err)) => return Err(err),
                Err(SessionFailure::Restart { rejected, message }) => {
                    job.clear_progress()?;
                    dead.count(job, rejected, &message, self.tuning.session_restarts)?;
                }
            }
        }
    }

    /// The session state an earlier attempt saved, if it can be resumed for this version
    /// of the file; one that cannot is forgotten.
    fn saved_session(
        &self,
        job: &UploadJob,
        flow: Flow,
        table: &str,
        size: u64,
    ) -> Result<Option<SessionState>, UploadError> {
        let Some(saved) = job.load_progress::<SessionState>()? else {
            return Ok(None);
        };
        let max_age = self.tuning.session_max_age;
        match saved.unusable_for(flow, table, size, &job.fingerprint, now_ms(), max_age) {
            None => Ok(Some(saved)),
            Some(why) => {
                tracing::info!(job = job.id.0, why, "not resuming the saved upload session");
                job.clear_progress()?;
                Ok(None)
            }
        }
    }

    /// The session layer's view of `job`'s file, checked with `check` around each chunk.
    fn file_transfer<'a>(
        &'a self,
        job: &'a UploadJob,
        reader: &'a FileReader,
        check: &'a (dyn Fn() -> Result<(), UploadError> + Sync),
        scope: &'a CallScope,
    ) -> Transfer<'a> {
        Transfer {
            client: &self.sessions,
            reader,
            path: &job.path,
            fingerprint: job.fingerprint,
            chunk_size: self.chunk_size,
            scope,
            live: &job.live,
            check,
        }
    }

    async fn open_session(
        &self,
        flow: Flow,
        table: &str,
        job: &UploadJob,
        size: u64,
        scope: &CallScope,
    ) -> Result<Opened, SessionFailure> {
        let created_at_ms = now_ms();
        let (id, session_url) = match flow {
            Flow::ResumableUpload => {
                let new = self
                    .api
                    .create_resumable_upload(table, size, scope)
                    .await
                    .map_err(UploadError::from)?;
                (new.id, self.api.absolute(&new.url))
            }
            Flow::TempUploads => {
                // A file that fits in one chunk gains nothing from a session (one PUT
                // either way) and saves the initiation request without one.
                let resumable = size > self.chunk_size;
                let new = self
                    .api
                    .create_temp_upload(table, &job.rel, size, resumable, scope)
                    .await
                    .map_err(UploadError::from)?;
                let url = self.api.absolute(&new.url);
                if new.resumable == Some(false) {
                    return Ok(Opened::Whole { id: new.id, url });
                }
                let session = self.sessions.initiate(&url, size, scope).await?;
                (new.id, session)
            }
        };
        Ok(Opened::Session(SessionState {
            flow,
            session_url,
            upload_id: id,
            size,
            created_at_ms,
            confirmed_offset: 0,
            fingerprint: job.fingerprint,
            table: Some(table.to_owned()),
        }))
    }
}

/// The start-up line saying which kind of table a folder feeds.
fn log_table_kind(folder: &FolderConfig, table: &str, kind: TableKind) {
    tracing::info!(folder = %folder.path.display(), table, kind = kind.label(), "Redivis folder target");
    if kind == TableKind::FileIndex && !folder.redivis.parse.is_empty() {
        tracing::warn!(folder = %folder.path.display(), table, "redivis_options do not apply to a file index table: its files are stored as they are");
    }
}

/// Compares our MD5 (hex) with Redivis' `hash`: hex in any case, or base64 of 16 bytes.
pub fn hashes_match(local_hex: &str, remote: &str) -> bool {
    let remote = remote.trim();
    if remote.len() == 32 && remote.chars().all(|c| c.is_ascii_hexdigit()) {
        return remote.eq_ignore_ascii_case(local_hex);
    }
    match base64::engine::general_purpose::STANDARD.decode(remote) {
        Ok(bytes) if bytes.len() == 16 => hex::encode(bytes).eq_ignore_ascii_case(local_hex),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_compare_as_hex_in_any_case_or_as_base64() {
        let hex = "9e107d9d372bb6826bd81d3542a419d6";
        assert!(hashes_match(hex, hex));
        assert!(hashes_match(hex, "9E107D9D372BB6826BD81D3542A419D6"));
        assert!(hashes_match(hex, "nhB9nTcrtoJr2B01QqQZ1g=="));
        assert!(!hashes_match(hex, "d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!hashes_match(hex, "not a hash"));
    }

    #[test]
    fn chunk_sizes_that_are_not_256_kib_multiples_are_refused() {
        let config = RedivisConfig {
            api_url: "http://127.0.0.1:1/api/v1".into(),
            token: crate::config::Secret::new("t0ken"),
            chunk_size: 1000,
            protocol: RedivisProtocol::ResumableUpload,
            rate_limit_window: crate::config::DEFAULT_RATE_LIMIT_WINDOW,
            net: crate::config::NetConfig::default(),
        };
        let err = RedivisBackend::new(&config, Bandwidth::unlimited()).unwrap_err();
        assert!(err.contains("256 KiB"), "{err}");
    }
}
