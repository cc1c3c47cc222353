//! Living with dataset versions: uploads only enter a dataset's unreleased version
//! (`:next`), and a release leaves the dataset without one until a new version is opened
//! (protocol §15, §16).
//!
//! 1. A definitive refusal of a `:next` table (the folder's remote check, or any request
//!    of an upload, such as the `404` every request gets once the version is released)
//!    makes upsync read the dataset (`GET /datasets/{ref}`). With a `nextVersion`, the
//!    refusal stands: the table itself is the problem.
//! 2. Without one, an upload ends [`UploadError::Waiting`]: the worker queues the file
//!    again (never `failed`) and restarts the folder's remote check; what upsync knew of
//!    the table (its kind, its names) is forgotten, since a new version starts afresh.
//! 3. The check ([`RedivisBackend::prepare_folder`]) of a folder with
//!    `create_next_version = true` opens the next version, once, safe against another
//!    client doing the same ([`ApiClient::create_next_version`]), and the folder is ready.
//!    Otherwise the folder waits ([`NO_NEXT_VERSION`]) and is checked again every
//!    minute and at a reload, so uploads start by themselves once someone opens a version.
//! 4. An upload that was importing when the version was released is no longer found under
//!    `:next`. The release took it: its import goes on in the released version, where
//!    [`RedivisBackend::find_released`] looks it up by id (the dataset's current version).
//!    Found: its import is awaited and verified there, and the file counts as uploaded,
//!    like every file uploaded before the release (nothing is sent twice). Not found: the
//!    file is queued again, for the new version.

use super::RedivisBackend;
use super::api::UploadResource;
use super::tables::{NextVersion, dataset_of, in_version, names_next_version};
use crate::config::FolderConfig;
use crate::upload::retry::CallScope;
use crate::upload::{Disposition, UploadError};

/// Why a folder waits while its dataset has no unreleased version (status and metric).
pub const NO_NEXT_VERSION: &str = "dataset has no unreleased version";

impl RedivisBackend {
    /// Step 1: whether `table` names the unreleased version of a dataset that has none.
    /// A failure to ask counts as "no" (the original refusal stands).
    pub(super) async fn lacks_next_version(&self, table: &str, scope: &CallScope) -> bool {
        let Some(dataset) = dataset_of(table).filter(|_| names_next_version(table)) else {
            return false;
        };
        match self.api.get_dataset(&dataset, scope).await {
            Ok(resource) => resource.next_version.is_none(),
            Err(err) => {
                tracing::debug!(dataset, error = %err.message, "cannot read the dataset");
                false
            }
        }
    }

    /// Steps 1–2 for the outcome of an upload to `table`: a definitive refusal that comes
    /// from a released version becomes [`UploadError::Waiting`].
    pub(super) async fn explain_refusal<T>(
        &self,
        table: &str,
        outcomes: &mut [Result<T, UploadError>],
        scope: &CallScope,
    ) {
        let refused = |outcome: &Result<T, UploadError>| {
            matches!(
                outcome,
                Err(UploadError::Remote {
                    disposition: Disposition::Permanent,
                    ..
                })
            )
        };
        if !outcomes.iter().any(refused) || !self.lacks_next_version(table, scope).await {
            return;
        }
        self.kinds.forget(table);
        self.index.forget(table);
        for outcome in outcomes.iter_mut().filter(|o| refused(o)) {
            *outcome = Err(UploadError::Waiting(NO_NEXT_VERSION.to_string()));
        }
    }

    /// Step 3, in the folder's check after `table` was refused: opens the dataset's next
    /// version when the folder says so; `Waiting` when the dataset has none and may not
    /// get one from upsync; `Ok(false)` when the dataset has one (the refusal stands).
    pub(super) async fn ensure_next_version(
        &self,
        folder: &FolderConfig,
        table: &str,
        scope: &CallScope,
    ) -> Result<bool, UploadError> {
        if !self.lacks_next_version(table, scope).await {
            return Ok(false);
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

    /// Step 4: the upload posted to `table` as `posted_uri`, in the dataset's current
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
