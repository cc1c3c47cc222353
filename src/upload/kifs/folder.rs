//! The folder's side of KiFS: whether the server answers, whether a folder's directory
//! exists and is writable (creating it when the folder asks), and the listing and deletion
//! of the files upsync uploaded there.

use std::collections::BTreeMap;

use super::KifsBackend;
use super::wire::{
    CreateDirectoryRequest, CreateDirectoryResponse, DeleteFilesRequest, DeleteFilesResponse,
    ShowDirectoriesRequest, ShowDirectoriesResponse, ShowFilesRequest, ShowFilesResponse,
};
use crate::config::{FolderConfig, Target};
use crate::upload::retry::CallScope;
use crate::upload::{Disposition, ErrorKind, UploadError};

/// What a message about a missing directory adds when the folder does not create it.
fn create_hint(create: bool) -> &'static str {
    if create {
        ""
    } else {
        " (set create_directory = true to create it)"
    }
}

/// The folder's directory is not on the server: the one `NotFound` a folder's check or an
/// upload returns, which refuses the folder until a check finds the directory.
pub(super) fn missing_directory(directory: &str, create: bool) -> UploadError {
    UploadError::permanent(
        ErrorKind::NotFound,
        format!(
            "KiFS directory '{directory}' does not exist{}",
            create_hint(create)
        ),
    )
}

/// Whether `err` is the server saying that `directory` does not exist.
pub(super) fn says_missing(err: &UploadError, directory: &str) -> bool {
    matches!(err, UploadError::Remote {
        disposition: Disposition::Permanent,
        message,
        ..
    } if message.contains(&format!("Directory '{directory}' does not exist")))
}

impl KifsBackend {
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
            self.create_directory(directory, scope)
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
                let hint = create_hint(*create);
                format!("KiFS directory '{directory}' is not usable: {message}{hint}")
            }),
            _ => err,
        })?;
        writable(&shown, directory, *create)
    }

    /// Creates `directory`; one that exists already is no error.
    pub(super) async fn create_directory(
        &self,
        directory: &str,
        scope: &CallScope,
    ) -> Result<(), UploadError> {
        let request = CreateDirectoryRequest {
            directory_name: directory.to_string(),
            options: BTreeMap::from([("no_error_if_exists".into(), "true".into())]),
        };
        let _: CreateDirectoryResponse = self
            .call_with_retries("/create/directory", &request, scope)
            .await?;
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
    /// counts as deleted, and so does one whose directory is gone (KiFS refuses a deletion
    /// in a missing directory even when told a missing file is no error). `/delete/files`
    /// reads `*` and `?` as wildcards, so a name holding one is refused rather than sent: it
    /// could delete other files.
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
        let deleted: Result<DeleteFilesResponse, UploadError> = self
            .call_with_retries("/delete/files", &request, scope)
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(err) if directory_gone(&err, remote) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Whether `err` says that a directory holding `remote` does not exist: the directory the
/// name starts with, whichever of its slashes ends it.
fn directory_gone(err: &UploadError, remote: &str) -> bool {
    remote
        .match_indices('/')
        .any(|(end, _)| says_missing(err, &remote[..end]))
}

/// Whether `/show/directories` lists `directory` with write permission for us.
fn writable(
    shown: &ShowDirectoriesResponse,
    directory: &str,
    create: bool,
) -> Result<(), UploadError> {
    let index = shown
        .directories
        .iter()
        .position(|d| d == directory)
        .ok_or_else(|| missing_directory(directory, create))?;
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
