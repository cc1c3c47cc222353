//! File index tables (protocol §4.11): a folder whose table has `isFileIndex` mirrors its
//! files into it as they are, registered in batches with `rawFiles` after temp uploads.
//!
//! # The algorithm ([`RedivisBackend::upload_files`]; one file is a batch of one)
//! 1. Reconcile. When a job persisted `finalizing` in an earlier attempt, its registration
//!    may have happened: the table's files are listed (all pages, once for the batch) and
//!    a file with the job's name, size and MD5 is adopted.
//! 2. Unchanged. A job whose earlier upload (the ledger) has this size and MD5 adopts that
//!    file if the table still holds it (`GET` of its `uri`): a touched file is not resent.
//! 3. Bytes. One `POST tempUploads` for the batch (at most [`MAX_FILES`] entries), then
//!    one whole-body PUT per file, a few at a time, the MD5 computed on the way. A file
//!    larger than a chunk comes alone and goes through a resumable session that survives
//!    a crash, like any Redivis transfer. A file that fails here fails alone.
//! 4. Replace. A changed file's earlier entry (the ledger's `remote`) is deleted before its
//!    new version is registered, so a name never holds two files. A server that keeps the
//!    entry (answering 404 to `DELETE` while `GET` still finds it) leaves it, with a warning.
//! 5. Register. `finalizing` is persisted for every job still going (one transaction),
//!    then one `POST rawFiles` `{"files": [{"name", "tempUploadId"}]}`. An answer lost on
//!    the way is never re-sent blindly: the table's files are listed, the jobs found there
//!    adopt theirs, and only the others are registered again with their (unused) temp
//!    uploads, as often as the backend's in-place retry policy allows.
//! 6. Verify. A registered file whose `size` or `md5Hash` is not ours is deleted, and its
//!    job fails for a retry.
//!
//! The remote recorded in the ledger is the file's `uri`. A registration is synchronous
//! (the `rawFiles` answer is the registered file, with its size and MD5), so a file of a
//! file index table is uploaded when its batch returns: it never waits in `importing`.
//!
//! The requests that serve the whole batch (listings, `tempUploads`, `rawFiles`) show an
//! in-place retry on every job of the batch; a file's own PUT on that job alone.

use std::collections::HashMap;

use futures::StreamExt;
use serde::Deserialize;

use super::api::{
    ApiClient, ApiError, Idempotency, NewUpload, UploadResource, lenient_string, lenient_u64,
};
use super::session::{Flow, SessionState};
use super::{Finalize, RedivisBackend, hashes_match, now_ms};
use crate::upload::chunk::FileReader;
use crate::upload::retry::{Attempts, CallScope};
use crate::upload::{
    BatchLimits, Disposition, ErrorKind, UploadError, UploadJob, Uploaded, batch_scope,
    mark_finalizing_all,
};

/// Files per `tempUploads` and `rawFiles` call, as the official client sends at most.
pub const MAX_FILES: usize = 1000;

/// Bytes of one batch: the official client's first byte target.
pub const MAX_BATCH_BYTES: u64 = 100_000_000;

/// Whole-body PUTs of one batch in flight at once.
const PUTS_IN_FLIGHT: usize = 4;

/// A file of a file index table (the rawFile resource).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawFile {
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub md5_hash: Option<String>,
}

impl RawFile {
    /// The file as an upload resource that completed (for listings that treat both alike).
    pub fn as_upload(self) -> UploadResource {
        UploadResource {
            uri: self.uri,
            name: self.name,
            status: Some("completed".to_string()),
            size: self.size,
            hash: self.md5_hash,
            ..UploadResource::default()
        }
    }

    /// Whether this is `name` with `size` bytes hashing to `md5` (where the server says).
    fn holds(&self, name: &str, size: u64, md5: &str) -> bool {
        self.name.as_deref() == Some(name)
            && self.size.is_none_or(|s| s == size)
            && self
                .md5_hash
                .as_deref()
                .is_none_or(|h| hashes_match(md5, h))
    }
}

#[derive(Debug, Deserialize)]
struct RawFileList {
    #[serde(default)]
    results: Vec<RawFile>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct TempUploadList {
    #[serde(default)]
    results: Vec<NewUpload>,
}

impl ApiClient {
    /// `POST /tables/{ref}/tempUploads` for several files, in order.
    pub async fn create_temp_uploads(
        &self,
        table: &str,
        files: &[(String, u64)],
        scope: &CallScope,
    ) -> Result<Vec<NewUpload>, ApiError> {
        let url = self.absolute(&format!("{}/tempUploads", Self::table_path(table)));
        let what = format!("tempUploads for table {table}");
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, size)| serde_json::json!({"name": name, "size": size, "resumable": false}))
            .collect();
        let body = serde_json::json!({ "tempUploads": entries });
        let list: TempUploadList = self
            .send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.post(&url).json(&body)
            })
            .await?;
        if list.results.len() != files.len() {
            let message = format!(
                "Redivis {what}: asked for {} temp uploads, the answer lists {}",
                files.len(),
                list.results.len()
            );
            return Err(ApiError {
                endpoint: Some(super::api::TEMP_UPLOADS_ENDPOINT),
                ..ApiError::unusable(message, false)
            });
        }
        Ok(list.results)
    }

    /// `POST /tables/{ref}/rawFiles` `{"files": [{"name", "tempUploadId"}]}`: not
    /// idempotent, so a lost answer comes back with `maybe_processed`.
    pub async fn register_raw_files(
        &self,
        table: &str,
        files: &[(String, String)],
        scope: &CallScope,
    ) -> Result<Vec<RawFile>, ApiError> {
        let url = self.absolute(&format!("{}/rawFiles", Self::table_path(table)));
        let what = format!("rawFiles of {} files to table {table}", files.len());
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, id)| serde_json::json!({"name": name, "tempUploadId": id}))
            .collect();
        let body = serde_json::json!({ "files": entries });
        let list: RawFileList = self
            .send_json(&what, Idempotency::Once, scope, &url, &|http| {
                http.post(&url).json(&body)
            })
            .await?;
        Ok(list.results)
    }

    /// Every file of a file index table (`GET /tables/{ref}/rawFiles`, all pages).
    pub async fn list_raw_files(
        &self,
        table: &str,
        scope: &CallScope,
    ) -> Result<Vec<RawFile>, ApiError> {
        let url = self.absolute(&format!("{}/rawFiles", Self::table_path(table)));
        let what = format!("file list of table {table}");
        let mut files = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page: RawFileList = self
                .send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
                    let request = http.get(&url).query(&[("maxResults", 1000)]);
                    match &token {
                        Some(token) => request.query(&[("pageToken", token)]),
                        None => request,
                    }
                })
                .await?;
            files.extend(page.results);
            match page.next_page_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(files),
            }
        }
    }

    /// `GET {rawFile.uri}`; `None` when it does not exist.
    pub async fn get_raw_file(
        &self,
        uri: &str,
        scope: &CallScope,
    ) -> Result<Option<RawFile>, ApiError> {
        let url = self.absolute(uri);
        let what = format!("rawFile.get of {uri}");
        match self
            .send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.get(&url)
            })
            .await
        {
            Ok(file) => Ok(Some(file)),
            Err(err) if err.status == Some(404) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `DELETE {rawFile.uri}`; returns whether the file is gone. A 404 is checked with a
    /// `GET`: a server without the endpoint answers 404 too, and keeps the file.
    pub async fn delete_raw_file(&self, uri: &str, scope: &CallScope) -> Result<bool, ApiError> {
        let url = self.absolute(uri);
        let what = format!("rawFile.delete of {uri}");
        match self
            .send(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.delete(&url)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.status == Some(404) => {
                Ok(self.get_raw_file(uri, scope).await?.is_none())
            }
            Err(err) => Err(err),
        }
    }
}

/// One job of a batch on its way: its reader, its MD5 once known, its temp upload.
struct Pending {
    index: usize,
    reader: FileReader,
    md5: Option<String>,
    temp_upload: Option<String>,
}

/// The outcome of each job of a batch, filled in as the steps go.
type Outcomes = Vec<Option<Result<Uploaded, UploadError>>>;

impl RedivisBackend {
    /// How many files of a file index table go in one batch.
    pub fn file_batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_files: MAX_FILES,
            max_bytes: MAX_BATCH_BYTES,
            max_file_size: self.chunk_size,
            one_target: true,
        }
    }

    /// Uploads `jobs` (all for `table`, a file index table) as the module doc says; one
    /// outcome per job, in order.
    pub async fn upload_files(
        &self,
        table: &str,
        jobs: &mut [UploadJob],
    ) -> Vec<Result<Uploaded, UploadError>> {
        let mut outcomes: Outcomes = jobs.iter().map(|_| None).collect();
        if jobs.is_empty() {
            return Vec::new();
        }
        let scope = batch_scope(jobs);
        let mut pending = open_readers(jobs, &mut outcomes);
        let steps = async {
            self.reconcile(table, jobs, &mut pending, &mut outcomes, &scope)
                .await?;
            self.adopt_unchanged(jobs, &mut pending, &mut outcomes, &scope)
                .await?;
            self.send_bytes(table, jobs, &mut pending, &mut outcomes, &scope)
                .await?;
            self.replace_earlier(jobs, &mut pending, &mut outcomes, &scope)
                .await?;
            self.register(table, jobs, pending, &mut outcomes, &scope)
                .await
        };
        let failed: Result<(), UploadError> = steps.await;
        finish(outcomes, failed)
    }

    /// Step 1.
    async fn reconcile(
        &self,
        table: &str,
        jobs: &[UploadJob],
        pending: &mut Vec<Pending>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        if !pending.iter().any(|p| jobs[p.index].finalize_started) {
            return Ok(());
        }
        let listed = self.api.list_raw_files(table, scope).await?;
        for p in pending.iter_mut() {
            let job = &jobs[p.index];
            if !job.finalize_started {
                continue;
            }
            let md5 = self.md5_of(p).await?;
            if let Some(found) = listed
                .iter()
                .find(|f| f.holds(&job.rel, p.reader.size, &md5))
            {
                tracing::info!(job = job.id.0, file = %found.uri, "adopting the file an earlier attempt registered");
                outcomes[p.index] = Some(Ok(uploaded(found.uri.clone(), md5)));
            }
        }
        pending.retain(|p| outcomes[p.index].is_none());
        Ok(())
    }

    /// Step 2.
    async fn adopt_unchanged(
        &self,
        jobs: &[UploadJob],
        pending: &mut Vec<Pending>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        for p in pending.iter_mut() {
            let job = &jobs[p.index];
            let Some(previous) = job.previous.as_ref().filter(|prev| {
                !prev.remote.is_empty()
                    && prev.fingerprint.size == p.reader.size
                    && prev.md5.is_some()
            }) else {
                continue;
            };
            let md5 = self.md5_of(p).await?;
            let same = previous
                .md5
                .as_deref()
                .is_some_and(|m| hashes_match(&md5, m));
            if same
                && self
                    .api
                    .get_raw_file(&previous.remote, scope)
                    .await?
                    .is_some()
            {
                tracing::info!(job = job.id.0, file = %previous.remote, "the table already holds this exact file; adopting it");
                outcomes[p.index] = Some(Ok(uploaded(previous.remote.clone(), md5)));
            }
        }
        pending.retain(|p| outcomes[p.index].is_none());
        Ok(())
    }

    /// Step 3.
    async fn send_bytes(
        &self,
        table: &str,
        jobs: &[UploadJob],
        pending: &mut Vec<Pending>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        if let [single] = pending.as_mut_slice()
            && single.reader.size > self.chunk_size
        {
            let job = &jobs[single.index];
            let (finalize, md5) = self
                .transfer_as(job, table, &single.reader, Flow::TempUploads, false, scope)
                .await?;
            let Finalize::Session { id, .. } = finalize else {
                unreachable!("a temp-upload transfer without inline bytes ends in a session");
            };
            single.md5 = Some(md5);
            single.temp_upload = Some(id);
            return Ok(());
        }
        if pending.is_empty() {
            return Ok(());
        }
        let files: Vec<(String, u64)> = pending
            .iter()
            .map(|p| (jobs[p.index].rel.clone(), p.reader.size))
            .collect();
        let temps = self.api.create_temp_uploads(table, &files, scope).await?;
        // Boxed with their lifetime spelled out: the stream of borrowing futures must be
        // Send for the worker task, which the compiler cannot show for an unnamed one.
        type Put<'a> = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = (usize, Result<(String, String), UploadError>)>
                    + Send
                    + 'a,
            >,
        >;
        let puts: Vec<Put<'_>> = pending
            .iter()
            .zip(temps)
            .map(|(p, temp)| {
                let job = &jobs[p.index];
                let put: Put<'_> = Box::pin(async move {
                    let sent = self.put_file(job, &p.reader, &temp).await;
                    (p.index, sent.map(|md5| (temp.id, md5)))
                });
                put
            })
            .collect();
        let mut sent: HashMap<usize, Result<(String, String), UploadError>> =
            futures::stream::iter(puts)
                .buffer_unordered(PUTS_IN_FLIGHT)
                .collect()
                .await;
        for p in pending.iter_mut() {
            match sent.remove(&p.index) {
                Some(Ok((id, md5))) => {
                    p.temp_upload = Some(id);
                    p.md5 = Some(md5);
                }
                Some(Err(err)) => outcomes[p.index] = Some(Err(err)),
                None => {}
            }
        }
        pending.retain(|p| outcomes[p.index].is_none());
        Ok(())
    }

    /// One file's bytes to its temp upload: a whole PUT, or a session if the server
    /// wants one. Returns the MD5 (hex).
    async fn put_file(
        &self,
        job: &UploadJob,
        reader: &FileReader,
        temp: &NewUpload,
    ) -> Result<String, UploadError> {
        let scope = &job.scope;
        let check = || job.check_unchanged();
        let transfer = self.file_transfer(job, reader, &check, scope);
        let url = self.api.absolute(&temp.url);
        let sent = if temp.resumable == Some(true) {
            let session_url = self.sessions.initiate(&url, reader.size, scope).await;
            match session_url {
                Ok(session_url) => {
                    let mut state = SessionState {
                        flow: Flow::TempUploads,
                        session_url,
                        upload_id: temp.id.clone(),
                        size: reader.size,
                        created_at_ms: now_ms(),
                        confirmed_offset: 0,
                        fingerprint: job.fingerprint,
                        // Never saved: nothing resumes it in another table.
                        table: None,
                    };
                    // Small files: a crash sends them again rather than resuming.
                    transfer.run(&mut state, false, &mut |_| Ok(())).await
                }
                Err(failure) => Err(failure),
            }
        } else {
            transfer.put_whole(&url, reader.size).await
        };
        sent.map_err(|failure| match failure {
            super::session::SessionFailure::Fail(err) => err,
            super::session::SessionFailure::Restart { message, .. } => {
                let message = format!("the temp upload of {} died: {message}", job.rel);
                UploadError::retry(ErrorKind::Server, message)
            }
        })
    }

    /// Step 4.
    async fn replace_earlier(
        &self,
        jobs: &[UploadJob],
        pending: &mut [Pending],
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        for p in pending.iter() {
            let job = &jobs[p.index];
            let Some(previous) = job.previous.as_ref().filter(|prev| !prev.remote.is_empty())
            else {
                continue;
            };
            match self.api.delete_raw_file(&previous.remote, scope).await {
                Ok(true) => {
                    tracing::info!(job = job.id.0, file = %previous.remote, "deleted the file this one replaces");
                }
                Ok(false) => {
                    tracing::warn!(job = job.id.0, file = %previous.remote, "Redivis keeps the earlier version of this file (it would not delete it); the new one is added beside it");
                }
                Err(err) if err.shutdown => return Err(err.into()),
                Err(err) => outcomes[p.index] = Some(Err(err.into())),
            }
        }
        Ok(())
    }

    /// Steps 5 and 6.
    async fn register(
        &self,
        table: &str,
        jobs: &mut [UploadJob],
        pending: Vec<Pending>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        let mut pending: Vec<Pending> = pending
            .into_iter()
            .filter(|p| outcomes[p.index].is_none())
            .collect();
        pending.retain(|p| match jobs[p.index].check_unchanged() {
            Ok(()) => true,
            Err(err) => {
                outcomes[p.index] = Some(Err(err));
                false
            }
        });
        if pending.is_empty() {
            return Ok(());
        }
        let indexes: Vec<usize> = pending.iter().map(|p| p.index).collect();
        mark_finalizing_all(jobs, &indexes)?;
        let mut attempts =
            Attempts::new(self.api.retry_policy(), scope, "rawFiles").watching(self.health());
        loop {
            let entries: Vec<(String, String)> = pending
                .iter()
                .map(|p| {
                    let id = p
                        .temp_upload
                        .clone()
                        .expect("step 3 gave every pending file one");
                    (jobs[p.index].rel.clone(), id)
                })
                .collect();
            let err = match self.api.register_raw_files(table, &entries, scope).await {
                Ok(files) => {
                    return self
                        .verify_registered(jobs, &pending, files, outcomes, scope)
                        .await;
                }
                Err(err) => err,
            };
            if err.shutdown
                || !(err.maybe_processed && matches!(err.disposition, Disposition::Retry { .. }))
            {
                return Err(err.into());
            }
            tracing::warn!(files = pending.len(), attempt = attempts.failures() + 1, reason = %err.message, "rawFiles answer lost; checking the table before registering again");
            self.adopt_registered(table, jobs, &mut pending, outcomes, scope)
                .await?;
            if pending.is_empty() {
                return Ok(());
            }
            if let Err(gave_up) = attempts.pause(None, &err.message).await {
                return Err(gave_up.into_error(err.into()));
            }
        }
    }

    /// After a lost `rawFiles` answer: the pending jobs the table's listing holds adopt
    /// their file and leave `pending`.
    async fn adopt_registered(
        &self,
        table: &str,
        jobs: &[UploadJob],
        pending: &mut Vec<Pending>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        let listed = self.api.list_raw_files(table, scope).await?;
        for p in pending.iter() {
            let job = &jobs[p.index];
            let md5 = p.md5.clone().unwrap_or_default();
            if let Some(found) = listed
                .iter()
                .find(|f| f.holds(&job.rel, p.reader.size, &md5))
            {
                outcomes[p.index] = Some(Ok(uploaded(found.uri.clone(), md5)));
            }
        }
        pending.retain(|p| outcomes[p.index].is_none());
        Ok(())
    }

    /// Step 6: the registered files, in request order, against what was sent.
    async fn verify_registered(
        &self,
        jobs: &[UploadJob],
        pending: &[Pending],
        files: Vec<RawFile>,
        outcomes: &mut Outcomes,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        if files.len() != pending.len() {
            return Err(UploadError::retry(
                ErrorKind::Unexpected,
                format!(
                    "Redivis registered {} files of the {} sent",
                    files.len(),
                    pending.len()
                ),
            ));
        }
        for (p, file) in pending.iter().zip(files) {
            let job = &jobs[p.index];
            let md5 = p.md5.clone().unwrap_or_default();
            if file.holds(&job.rel, p.reader.size, &md5) && !file.uri.is_empty() {
                job.live.set(p.reader.size, p.reader.size);
                outcomes[p.index] = Some(Ok(uploaded(file.uri, md5)));
                continue;
            }
            tracing::warn!(job = job.id.0, file = %file.uri, "deleting a registered file that is not what was sent");
            if !file.uri.is_empty() {
                self.api.delete_raw_file(&file.uri, scope).await?;
            }
            outcomes[p.index] = Some(Err(UploadError::retry(
                ErrorKind::Unexpected,
                format!(
                    "{}: Redivis registered {:?} with size {:?} and MD5 {:?}, not {} bytes with MD5 {md5}",
                    job.rel, file.name, file.size, file.md5_hash, p.reader.size
                ),
            )));
        }
        Ok(())
    }

    /// The MD5 of a pending file, computed once.
    async fn md5_of(&self, p: &mut Pending) -> Result<String, UploadError> {
        if let Some(md5) = &p.md5 {
            return Ok(md5.clone());
        }
        let md5 = self.file_md5(&p.reader).await?;
        p.md5 = Some(md5.clone());
        Ok(md5)
    }
}

fn uploaded(remote: String, md5: String) -> Uploaded {
    Uploaded {
        remote,
        md5: Some(md5),
    }
}

/// Opens every job's file; a job whose file cannot be opened fails alone.
fn open_readers(jobs: &[UploadJob], outcomes: &mut Outcomes) -> Vec<Pending> {
    let mut pending = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        match FileReader::open(&job.path, &job.fingerprint) {
            Ok(reader) => pending.push(Pending {
                index,
                reader,
                md5: None,
                temp_upload: None,
            }),
            Err(err) => outcomes[index] = Some(Err(err)),
        }
    }
    pending
}

/// Every job's outcome: its own, or the error that stopped the batch.
fn finish(
    outcomes: Outcomes,
    stopped: Result<(), UploadError>,
) -> Vec<Result<Uploaded, UploadError>> {
    let stopped = stopped.err();
    outcomes
        .into_iter()
        .map(|outcome| match (outcome, &stopped) {
            (Some(outcome), _) => outcome,
            (None, Some(err)) => Err(err.clone()),
            (None, None) => Err(UploadError::retry(
                ErrorKind::Unexpected,
                "the batch ended without this file",
            )),
        })
        .collect()
}
