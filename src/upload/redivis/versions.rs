//! Living with dataset versions: uploads only enter a dataset's unreleased version
//! (`:next`), and a release leaves the dataset without one until a new version is opened
//! (protocol §15, §16).
//!
//! Every definitive refusal of a `:next` table, whichever request of an upload met it
//! (upload.post inline or after a session, the session's creation, `tempUploads`,
//! `rawFiles`, a listing), is judged in one place ([`RedivisBackend::explain_refusal`]):
//! 1. Read the dataset (`GET /datasets/{ref}`). It cannot be read for a transient reason:
//!    whether the refusal came from a release is unknown, so the upload is retried later
//!    (never failed on a guess).
//! 2. No `nextVersion`: the version was released. The upload ends
//!    [`UploadError::Waiting`] ([`NO_NEXT_VERSION`]): the worker queues the file again
//!    (never `failed`) and restarts the folder's remote check; what upsync knew of the
//!    table (its kind, its names) is forgotten, since a new version starts afresh.
//! 3. A `nextVersion`, and the refusal said "not found": the refusal may have come from
//!    the window between a release and the opening of the next version (by upsync's own
//!    folder check, or by anyone). The table is read again: found, the upload ends
//!    `Waiting` too ([`NEXT_VERSION_OPENED`]), and the folder's check finds the table at
//!    once and lets the file go again into the new version. Not found: the table itself is
//!    the problem, and the refusal stands.
//! 4. Any other refusal with a `nextVersion` stands.
//!
//! The folder's check ([`RedivisBackend::prepare_folder`]) of a refused `:next` table:
//! 5. Without a next version: with `create_next_version = true` it opens one, once, safe
//!    against another client doing the same ([`ApiClient::create_next_version`]).
//!    Otherwise the folder waits ([`NO_NEXT_VERSION`]) and is checked again every minute
//!    and at a reload, so uploads start by themselves once someone opens a version.
//! 6. With a next version (opened just now, or before): the table is read again, since
//!    the refusal may predate the version; only a second refusal is the check's answer.
//!
//! 7. An upload that was importing when the version was released is no longer found under
//!    `:next`. The release took it: its import goes on in the released version, where
//!    [`RedivisBackend::find_released`] looks it up by id (the dataset's current version).
//!    Found: its import is awaited and verified there, and the file counts as uploaded,
//!    like every file uploaded before the release (nothing is sent twice). Not found: the
//!    file is queued again, for the new version.
//!
//! [`ApiClient::create_next_version`]: super::api::ApiClient::create_next_version

use super::RedivisBackend;
use super::api::{ApiError, UploadResource};
use super::tables::{NextVersion, dataset_of, in_version, names_next_version};
use crate::config::FolderConfig;
use crate::upload::retry::CallScope;
use crate::upload::{Disposition, ErrorKind, UploadError};

/// Why a folder waits while its dataset has no unreleased version (status and metric).
pub const NO_NEXT_VERSION: &str = "dataset has no unreleased version";

/// Why a folder waits, briefly, after an upload was refused in the window between a
/// release and the opening of the next version (step 3).
pub const NEXT_VERSION_OPENED: &str =
    "dataset had no unreleased version during the upload; a new one is open";

/// What a definitive refusal of a table turns out to be (module doc, steps 1–4).
#[derive(Debug)]
enum Refusal {
    /// The table itself is the problem: the refusal ends the upload.
    Stands,
    /// It came from a release: the upload waits for the folder's check, for this reason.
    Released(&'static str),
    /// The dataset could not be read: the upload is tried again later with this error.
    Unknown(UploadError),
}

/// Whether `outcome` is a definitive refusal.
fn refused<T>(outcome: &Result<T, UploadError>) -> bool {
    matches!(
        outcome,
        Err(UploadError::Remote {
            disposition: Disposition::Permanent,
            ..
        })
    )
}

/// Whether `outcome` is a definitive "not found" (404, 410).
fn not_found<T>(outcome: &Result<T, UploadError>) -> bool {
    matches!(
        outcome,
        Err(UploadError::Remote {
            disposition: Disposition::Permanent,
            kind: ErrorKind::NotFound,
            ..
        })
    )
}

impl RedivisBackend {
    /// Whether the dataset of `table` has an unreleased version now; `None` when `table`
    /// does not name the unreleased version.
    async fn has_next_version(
        &self,
        table: &str,
        scope: &CallScope,
    ) -> Result<Option<bool>, ApiError> {
        let Some(dataset) = dataset_of(table).filter(|_| names_next_version(table)) else {
            return Ok(None);
        };
        let resource = self.api.get_dataset(&dataset, scope).await?;
        Ok(Some(resource.next_version.is_some()))
    }

    /// Steps 1–4 for a refusal of `table`; `not_found` when it said "not found".
    async fn judge_refusal(&self, table: &str, not_found: bool, scope: &CallScope) -> Refusal {
        match self.has_next_version(table, scope).await {
            Ok(None) => Refusal::Stands,
            Ok(Some(false)) => Refusal::Released(NO_NEXT_VERSION),
            Ok(Some(true)) if not_found => self.judge_by_the_table(table, scope).await,
            Ok(Some(true)) => Refusal::Stands,
            Err(err) => unknown_unless_definitive(table, err),
        }
    }

    /// Step 3: the dataset has a next version; the table is read again there.
    async fn judge_by_the_table(&self, table: &str, scope: &CallScope) -> Refusal {
        self.kinds.forget(table);
        match self.kinds.get(&self.api, table, scope).await {
            Ok(_) => Refusal::Released(NEXT_VERSION_OPENED),
            Err(err) => unknown_unless_definitive(table, err),
        }
    }

    /// Steps 1–4 for the outcomes of uploads to `table`: each definitive refusal becomes
    /// what [`Self::judge_refusal`] finds it to be.
    pub(super) async fn explain_refusal<T>(
        &self,
        table: &str,
        outcomes: &mut [Result<T, UploadError>],
        scope: &CallScope,
    ) {
        if !outcomes.iter().any(refused) {
            return;
        }
        let any_not_found = outcomes.iter().any(not_found);
        let replacement = match self.judge_refusal(table, any_not_found, scope).await {
            Refusal::Stands => return,
            Refusal::Released(reason) => {
                tracing::debug!(table, reason, "an upload was refused by a released version");
                self.kinds.forget(table);
                self.index.forget(table);
                UploadError::Waiting(reason.to_string())
            }
            Refusal::Unknown(err) => err,
        };
        for outcome in outcomes.iter_mut().filter(|o| refused(o)) {
            *outcome = Err(replacement.clone());
        }
    }

    /// Steps 5–6, in the folder's check after `table` was refused: opens the dataset's
    /// next version when the folder says so; `Waiting` when the dataset has none and may
    /// not get one from upsync; `Ok(true)` when the table is to be read again (the dataset
    /// has a next version now), `Ok(false)` when the refusal stands.
    pub(super) async fn ensure_next_version(
        &self,
        folder: &FolderConfig,
        table: &str,
        scope: &CallScope,
    ) -> Result<bool, UploadError> {
        match self.has_next_version(table, scope).await {
            Ok(None) => return Ok(false),
            Ok(Some(true)) => return Ok(true),
            Ok(Some(false)) => {}
            Err(err) if err.shutdown || err.disposition.is_transient() => {
                return Err(err.into());
            }
            Err(err) => {
                tracing::debug!(table, error = %err.message, "cannot read the table's dataset");
                return Ok(false);
            }
        }
        let dataset = dataset_of(table).unwrap_or_default();
        if !folder.redivis.create_next_version {
            return Err(UploadError::Waiting(NO_NEXT_VERSION.to_string()));
        }
        let opened = self.api.create_next_version(&dataset, scope).await?;
        let by = match opened {
            NextVersion::Created => "upsync",
            NextVersion::CreatedElsewhere | NextVersion::Existed => "another client",
        };
        tracing::info!(folder = %folder.path.display(), dataset, opened_by = by, "the dataset has a new unreleased version; uploads go into it");
        Ok(true)
    }

    /// Step 7: the upload posted to `table` as `posted_uri`, in the dataset's current
    /// (released) version; `None` when it is not there either.
    pub(super) async fn find_released(
        &self,
        table: &str,
        posted_uri: &str,
        scope: &CallScope,
    ) -> Result<Option<(String, UploadResource)>, UploadError> {
        let Some(dataset) = dataset_of(table).filter(|_| names_next_version(table)) else {
            return Ok(None);
        };
        let resource = self.api.get_dataset(&dataset, scope).await?;
        let released = resource
            .current_qualifier()
            .and_then(|qualifier| in_version(table, &qualifier));
        let (Some(released), Some(id)) = (released, posted_uri.rsplit('/').next()) else {
            return Ok(None);
        };
        let found = self.api.find_upload_by_name(&released, id, scope).await?;
        Ok(found.map(|upload| (released, upload)))
    }
}

/// A failure to read the dataset or the table while judging a refusal: a transient one
/// leaves the question open (the upload is retried later), a definitive one leaves the
/// refusal standing.
fn unknown_unless_definitive(table: &str, err: ApiError) -> Refusal {
    if err.shutdown || err.disposition.is_transient() {
        let err = UploadError::from(err).reworded(|message| {
            format!("Redivis table {table} refused an upload, and whether its version was released cannot be told yet: {message}")
        });
        Refusal::Unknown(err)
    } else {
        tracing::debug!(table, error = %err.message, "cannot read the table's dataset or the table");
        Refusal::Stands
    }
}
