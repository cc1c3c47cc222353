//! One file into one Redivis table, exactly once: a short driver
//! ([`RedivisBackend::upload_named`]) over named steps. Each step is a function that takes
//! the [`UploadAttempt`] (everything the algorithm knows so far) and returns what comes
//! next ([`Next`]). `docs/upload-algorithms.md` ("Redivis upload") says what is durable
//! after each step and what a crash at each step leads to.
//!
//! # The steps
//! 1. [`claim_name`](RedivisBackend::claim_name): the upload name (`job.rel`) under
//!    Redivis' escaping, claimed in this table for this process; a second local file that
//!    escapes alike fails permanently, naming both files (after a restart the table is the
//!    judge: an upload of exactly our name is ours, as only one folder feeds a table).
//! 2. [`reconcile_finalize`](RedivisBackend::reconcile_finalize): if an earlier attempt
//!    persisted `finalizing` (`job.finalize_started`), the upload.post may have happened:
//!    list the table's uploads (all pages) for our name with our size and MD5 (or still
//!    importing). Found: adopt it (go to 7).
//! 3. [`check_name`](RedivisBackend::check_name): before sending a byte (protocol §11,
//!    B6), is the escaped name held in the table? The table's [`NameIndex`](super::names::NameIndex) (one listing
//!    shared by many uploads) answers the usual cases without a request: nobody holds it,
//!    or only the ledger's `job.previous` upload does (and this file's size or MD5 differs
//!    from it). Otherwise `GET` the upload by escaped name: another local name → collision
//!    (permanent). Ours with the same size and hash, not failed → adopt it (go to 7).
//!    Anything else under our name, and the ledger's `job.previous` upload, is stale: it
//!    is deleted in step 5, after the transfer, so the old data stays visible as long as
//!    possible.
//! 4. [`transfer`](RedivisBackend::transfer): the bytes, hashed while they travel: inline
//!    in the upload.post for files up to [`INLINE_UPLOAD_MAX`](super::INLINE_UPLOAD_MAX)
//!    (always for 0 bytes, protocol §11 B5), else through a resumable session (a saved one
//!    resumed, dead ones replaced: [`super::session`]) or one whole-body PUT of a
//!    non-resumable temp upload.
//! 5. [`delete_stale`](RedivisBackend::delete_stale): the stale uploads of step 3 (a
//!    missing one is fine).
//! 6. [`post`](RedivisBackend::post): persist `finalizing`, then upload.post. A lost
//!    answer is never blindly re-posted: the table is listed and our upload adopted if it
//!    is there. A name taken since the index's listing, or a session's bytes refused
//!    (expired), go to 8.
//! 7. [`settle`](RedivisBackend::settle): an upload still `queued` or `running` is handed
//!    back as [`Delivery::Posted`] (the daemon waits for it without a worker, through
//!    [`RedivisBackend::await_import`]). A finished one is verified: our size and MD5 →
//!    [`Delivery::Uploaded`]; other bytes → the upload is deleted, go to 8; `failed` → the
//!    upload is removed and the job fails with Redivis' `errorMessage`.
//! 8. [`send_again`](UploadAttempt::send_again): each reason to send the file again (the
//!    bytes refused, the name taken, the import corrupt) is taken once, back to 3 with a
//!    new session (asking by name, after a name was taken); the second time of the same
//!    reason ends the attempt (a refused session or a taken name go back to the queue, a
//!    second corrupt import fails the job).
//!
//! The driver clears the saved session in one place: before step 8, and when the upload is
//! verified. Throughout, the file's fingerprint is checked around each chunk and before
//! posting: a file that changed ends the attempt with `UploadError::Changed`. The MD5 of
//! the file is computed once, when a step first needs it ([`UploadAttempt::md5`]); the
//! transfer's own hash of the bytes it sent replaces it.

use super::api::UploadResource;
use super::names::{self, Known, collision_message};
use super::source::file_md5;
use super::{Finalize, Imported, PostAnswer, RedivisBackend, hashes_match};
use crate::upload::retry::CallScope;
use crate::upload::{Delivery, Disposition, ErrorKind, Posted, UploadError, UploadJob};

/// What one upload attempt of one file knows and has done (module doc).
pub(super) struct UploadAttempt<'a> {
    job: &'a mut UploadJob,
    table: &'a str,
    /// The claimed name under Redivis' escaping (step 1).
    escaped: &'a str,
    reader: crate::upload::chunk::FileReader,
    scope: CallScope,
    /// How many bytes one read of the file takes while hashing it.
    read_size: u64,
    /// The file's MD5 (hex), once a step needed it.
    md5: Option<String>,
    /// Uploads under our name to delete after the transfer (step 5).
    stale: Vec<String>,
    /// The reasons the file was already sent again for (step 8).
    sent_again: SentAgain,
}

/// Each reason to send the file again is taken once per attempt.
#[derive(Default)]
struct SentAgain {
    bytes_refused: bool,
    name_taken: bool,
    corrupt: bool,
}

/// What comes after a step.
pub(super) enum Next {
    CheckName,
    Transfer,
    DeleteStale(Finalize),
    Post(Finalize),
    /// An upload of this file is in the table: wait for it or verify it.
    Settle(UploadResource),
    SendAgain(Again),
    Done(Delivery),
}

/// Why the file must be sent again.
pub(super) enum Again {
    /// upload.post refused the transferred bytes (the session expired, or never completed).
    BytesRefused(UploadError),
    /// Another upload took the name since the index's listing.
    NameTaken(String),
    /// Redivis imported other bytes than ours (the upload is deleted).
    Corrupt(String),
}

impl Next {
    /// Whether the saved session must be forgotten before this: it is used up (the file is
    /// uploaded) or will not do (the file is sent again in a new session).
    fn forgets_the_session(&self) -> bool {
        matches!(self, Next::SendAgain(_) | Next::Done(Delivery::Uploaded(_)))
    }
}

impl<'a> UploadAttempt<'a> {
    fn new(
        job: &'a mut UploadJob,
        table: &'a str,
        escaped: &'a str,
        read_size: u64,
    ) -> Result<UploadAttempt<'a>, UploadError> {
        let reader = crate::upload::chunk::FileReader::open(&job.path, &job.fingerprint)?;
        let stale = job
            .previous
            .iter()
            .map(|p| p.remote.clone())
            .filter(|r| !r.is_empty())
            .collect();
        Ok(UploadAttempt {
            scope: job.scope.clone(),
            job,
            table,
            escaped,
            reader,
            read_size,
            md5: None,
            stale,
            sent_again: SentAgain::default(),
        })
    }

    /// The file's MD5 (hex), computed the first time it is asked for.
    async fn md5(&mut self) -> Result<String, UploadError> {
        if let Some(md5) = &self.md5 {
            return Ok(md5.clone());
        }
        let md5 = file_md5(&self.reader, self.read_size).await?;
        self.md5 = Some(md5.clone());
        Ok(md5)
    }

    /// The table holds the file already: what this attempt adopts it sent none of, so its
    /// line tells no rate of the whole file over a listing.
    fn sent_nothing(&self) {
        self.job.live.sending_from(self.reader.size);
    }

    /// Step 8: back to step 3, unless the file was sent again for this reason before.
    fn send_again(&mut self, why: Again) -> Result<Next, UploadError> {
        let job = &self.job;
        match why {
            Again::BytesRefused(err) if self.sent_again.bytes_refused => {
                // Refused twice in a row: the session outlives the transfer no better now
                // (a slow link, a short lifetime). Not the file's fault: the queue tries
                // again later with a new session.
                return Err(err);
            }
            Again::BytesRefused(err) => {
                self.sent_again.bytes_refused = true;
                tracing::warn!(job = job.id.0, upload = %job.rel, reason = %err, "upload.post refused the transferred bytes; sending them again in a new session");
            }
            Again::NameTaken(reason) if self.sent_again.name_taken => {
                return Err(UploadError::retry(
                    ErrorKind::Conflict,
                    format!(
                        "the Redivis upload name {:?} of {} in table {} was taken by another \
                         upload twice while posting ({reason}); will retry later",
                        self.escaped, job.rel, self.table
                    ),
                ));
            }
            Again::NameTaken(reason) => {
                // The next check asks the server by name, not the index.
                self.sent_again.name_taken = true;
                tracing::warn!(job = job.id.0, upload = %job.rel, reason = %reason, "the upload name was taken in the table meanwhile; checking it again by name");
            }
            Again::Corrupt(reason) if self.sent_again.corrupt => {
                return Err(UploadError::permanent(
                    ErrorKind::Unexpected,
                    format!("{} ({reason})", job.rel),
                ));
            }
            Again::Corrupt(_) => self.sent_again.corrupt = true,
        }
        Ok(Next::CheckName)
    }
}

impl RedivisBackend {
    /// Step 1: the escaped upload name of `job` in `table`, claimed for it.
    pub(super) async fn claim_name(
        &self,
        job: &UploadJob,
        table: &str,
    ) -> Result<String, UploadError> {
        let escaped = match self.names.claim(table, &job.rel) {
            Ok(escaped) => escaped,
            Err(other) => {
                // Another local file holds the name in this process, but after a restart
                // the table is the judge: an upload of exactly our name means an earlier
                // attempt of ours got there first, and the name is ours.
                let escaped = names::escape(&job.rel);
                match self
                    .api
                    .find_upload_by_name(table, &escaped, &job.scope)
                    .await?
                {
                    Some(existing) if existing.name.as_deref() == Some(job.rel.as_str()) => {
                        self.names.take_over(table, &job.rel)
                    }
                    _ => {
                        return Err(UploadError::permanent(
                            ErrorKind::Conflict,
                            collision_message(&job.rel, &other, &escaped, table),
                        ));
                    }
                }
            }
        };
        if escaped.is_empty() {
            return Err(UploadError::permanent(
                ErrorKind::Rejected,
                names::nameless_message(&job.rel),
            ));
        }
        Ok(escaped)
    }

    /// Steps 2–8 (module doc) for a file whose name is claimed.
    pub(super) async fn upload_named(
        &self,
        job: &mut UploadJob,
        table: &str,
        escaped: &str,
    ) -> Result<Delivery, UploadError> {
        let mut attempt = UploadAttempt::new(job, table, escaped, self.chunk_size)?;
        let mut next = self.reconcile_finalize(&mut attempt).await?;
        loop {
            if next.forgets_the_session() {
                attempt.job.clear_progress()?;
            }
            next = match next {
                Next::CheckName => self.check_name(&mut attempt).await?,
                Next::Transfer => self.transfer(&mut attempt).await?,
                Next::DeleteStale(finalize) => self.delete_stale(&mut attempt, finalize).await?,
                Next::Post(finalize) => self.post(&mut attempt, finalize).await?,
                Next::Settle(upload) => self.settle(&mut attempt, upload).await?,
                Next::SendAgain(why) => attempt.send_again(why)?,
                Next::Done(delivery) => return Ok(delivery),
            };
        }
    }

    /// Step 2: adopts the upload an earlier attempt may have posted.
    async fn reconcile_finalize(&self, a: &mut UploadAttempt<'_>) -> Result<Next, UploadError> {
        if !a.job.finalize_started {
            return Ok(Next::CheckName);
        }
        let md5 = a.md5().await?;
        let found = self
            .find_posted(a.table, &a.job.rel, a.reader.size, &md5, &a.scope)
            .await?;
        let Some(found) = found else {
            return Ok(Next::CheckName);
        };
        tracing::info!(
            job = a.job.id.0,
            upload = %found.uri,
            status = found.status(),
            "adopting the upload an earlier attempt posted"
        );
        a.sent_nothing();
        Ok(Next::Settle(found))
    }

    /// Step 3: who holds our name in the table, before any byte is sent.
    async fn check_name(&self, a: &mut UploadAttempt<'_>) -> Result<Next, UploadError> {
        let ask = if a.sent_again.name_taken {
            true
        } else {
            let known = self.index.lookup(&self.api, a.table, a.escaped, &a.scope);
            self.must_ask_by_name(a, known.await?).await?
        };
        if !ask {
            return Ok(Next::Transfer);
        }
        let found = self
            .api
            .find_upload_by_name(a.table, a.escaped, &a.scope)
            .await?;
        let uri = found.as_ref().map(|upload| upload.uri.as_str());
        self.index.learned(a.table, a.escaped, uri);
        let Some(existing) = found else {
            return Ok(Next::Transfer);
        };
        let name = existing.name.clone().unwrap_or_default();
        if !name.is_empty() && name != a.job.rel {
            return Err(UploadError::permanent(
                ErrorKind::Conflict,
                collision_message(&a.job.rel, &name, a.escaped, a.table),
            ));
        }
        if !existing.is_failed() && existing.size == Some(a.reader.size) {
            let md5 = a.md5().await?;
            if let Some(remote) = &existing.hash
                && hashes_match(&md5, remote)
            {
                tracing::info!(
                    job = a.job.id.0,
                    upload = %existing.uri,
                    "the table already holds this exact file; adopting it"
                );
                a.sent_nothing();
                return Ok(Next::Settle(existing));
            }
        }
        if !a.stale.contains(&existing.uri) {
            a.stale.push(existing.uri);
        }
        Ok(Next::Transfer)
    }

    /// Whether the index's answer `known` leaves the name to be asked for by name.
    async fn must_ask_by_name(
        &self,
        a: &mut UploadAttempt<'_>,
        known: Known,
    ) -> Result<bool, UploadError> {
        match known {
            Known::Free => Ok(false),
            Known::Held(holders) if holders.only_among(&a.stale) => {
                // Only uploads this file replaces: still ask when the replaced upload may
                // hold these very bytes (a file touched, not changed), which is then
                // adopted.
                let earlier_md5 = match &a.job.previous {
                    Some(previous) if previous.fingerprint.size == a.reader.size => {
                        previous.md5.clone()
                    }
                    _ => return Ok(false),
                };
                let md5 = a.md5().await?;
                Ok(earlier_md5.is_none_or(|remote| hashes_match(&md5, &remote)))
            }
            Known::Held(_) | Known::Unknown => Ok(true),
        }
    }

    /// Step 4: the bytes to Redivis; the MD5 becomes the hash of what was sent.
    async fn transfer(&self, a: &mut UploadAttempt<'_>) -> Result<Next, UploadError> {
        let (finalize, md5) = self
            .transfer_as(a.job, a.table, &a.reader, self.flow, true, &a.scope)
            .await?;
        a.md5 = Some(md5);
        Ok(Next::DeleteStale(finalize))
    }

    /// Step 5: the uploads this file replaces leave the table.
    async fn delete_stale(
        &self,
        a: &mut UploadAttempt<'_>,
        finalize: Finalize,
    ) -> Result<Next, UploadError> {
        for uri in a.stale.drain(..) {
            tracing::info!(job = a.job.id.0, upload = %uri, "deleting the upload this file replaces");
            self.api.delete_upload(&uri, &a.scope).await?;
            self.index.deleted(a.table, a.escaped, &uri);
        }
        Ok(Next::Post(finalize))
    }

    /// Step 6: `finalizing` persisted, then upload.post (reconciled, never re-posted).
    async fn post(
        &self,
        a: &mut UploadAttempt<'_>,
        finalize: Finalize,
    ) -> Result<Next, UploadError> {
        a.job.check_unchanged()?;
        a.job.mark_finalizing()?;
        let options = a.job.redivis.parse.api_fields();
        let md5 = a.md5().await?;
        let size = a.reader.size;
        let answer = self
            .post_reconciled(
                a.table, &a.job.rel, size, &md5, &finalize, &options, &a.scope,
            )
            .await;
        match answer {
            Ok(PostAnswer::Created(upload)) => {
                self.index.created(a.table, a.escaped, &upload.uri);
                Ok(Next::Settle(upload))
            }
            Ok(PostAnswer::NameTaken(reason)) => Ok(Next::SendAgain(Again::NameTaken(reason))),
            Err(
                err @ UploadError::Remote {
                    disposition: Disposition::RestartSession,
                    ..
                },
            ) => Ok(Next::SendAgain(Again::BytesRefused(err))),
            Err(err) => Err(err),
        }
    }

    /// Step 7: an upload of this file is in the table; hands it back while it imports,
    /// else checks what Redivis made of it.
    async fn settle(
        &self,
        a: &mut UploadAttempt<'_>,
        upload: UploadResource,
    ) -> Result<Next, UploadError> {
        let md5 = a.md5().await?;
        let size = a.reader.size;
        a.job.live.set(size, size);
        if !upload.is_terminal() {
            return Ok(Next::Done(Delivery::Posted(Posted {
                remote: upload.uri,
                target: a.table.to_string(),
                md5,
            })));
        }
        let checked = self.verify(a.table, a.escaped, upload, size, &md5, &a.scope);
        match checked.await? {
            Imported::Verified { uploaded, .. } => Ok(Next::Done(Delivery::Uploaded(uploaded))),
            Imported::Corrupt(reason) => Ok(Next::SendAgain(Again::Corrupt(reason))),
            Imported::Failed { reason, uri } => {
                self.remove_failed(a.table, &a.job.rel, &uri, &a.scope)
                    .await?;
                Err(UploadError::permanent(ErrorKind::Rejected, reason))
            }
            Imported::Gone(reason) => Err(UploadError::retry(ErrorKind::Unexpected, reason)),
        }
    }
}
