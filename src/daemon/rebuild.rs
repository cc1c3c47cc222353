//! `upsync run --rebuild-state`: a new state database whose ledger is re-derived from what
//! the remotes already hold, for when the old one is damaged, foreign or lost.
//!
//! Procedure:
//! 1. List every configured folder's remote first (KiFS: `/show/files` on the directory,
//!    names with sizes; Redivis: the table's upload list, names with size and MD5). A remote
//!    that cannot be listed stops the rebuild before anything local changes.
//! 2. Take the state dir's lock, move the old database aside to `db.moved-<unix seconds>`
//!    (never deleted: it may be needed to investigate) and create an empty one.
//! 3. Walk each folder with its include/exclude filters; a local file counts as uploaded when
//!    the remote holds its name with the same size (and, for Redivis, the same MD5 of the
//!    bytes). Such files get a ledger entry for their current fingerprint; every other file
//!    is left to the daemon's start-up scan, which queues it.
//!
//! A file that matches by size but differs in content on KiFS (which reports no hash) is
//! taken as uploaded; that is the price of not uploading anything twice, and it is why the
//! Redivis side also compares MD5.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, FolderConfig, Target};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Store};
use crate::watch::Filter;

use super::DaemonError;

/// What a rebuild found, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildSummary {
    /// Where the previous database was moved, if there was one.
    pub moved_to: Option<PathBuf>,
    /// Local files found on their remote, now in the ledger.
    pub matched: u64,
    /// Local files not (or not identically) on their remote: the daemon uploads them.
    pub to_upload: u64,
}

/// One remote file as a listing reports it.
#[derive(Debug, Clone)]
struct RemoteFile {
    /// What the ledger records as the remote identity (KiFS path, Redivis upload URI).
    remote: String,
    size: u64,
    md5: Option<String>,
}

/// Rebuilds the state database of `config` from the remotes' listings (module doc).
pub async fn rebuild_state(config: &Config) -> Result<RebuildSummary, DaemonError> {
    let emulator = super::start_embedded_emulator(config).await?;
    let listed = list_remotes(config).await;
    if let Some(emulator) = emulator {
        emulator.shutdown.cancel();
        let _ = emulator.task.await;
    }
    let listed = listed?;

    let (store, moved_to) = Store::open_rebuilding(&config.state_dir)
        .map_err(|err| DaemonError::Startup(format!("rebuilding the state database: {err}")))?;
    if let Some(moved) = &moved_to {
        tracing::warn!(
            moved_to = %moved.display(),
            "moved the old state database aside (kept, not deleted)"
        );
    }
    let mut summary = RebuildSummary {
        moved_to,
        ..RebuildSummary::default()
    };
    for (folder, remote) in config.folders.iter().zip(&listed) {
        let folder_path = folder.path.clone();
        let folder = folder.clone();
        let remote = remote.clone();
        let store = store.clone();
        let (matched, to_upload) =
            tokio::task::spawn_blocking(move || match_folder(&folder, &remote, &store))
                .await
                .map_err(|err| DaemonError::Startup(format!("rebuild task failed: {err}")))??;
        tracing::info!(
            folder = %folder_path.display(),
            matched,
            to_upload,
            "rebuilt the ledger of a folder from its remote"
        );
        summary.matched += matched;
        summary.to_upload += to_upload;
    }
    store
        .flush()
        .map_err(|err| DaemonError::Startup(format!("rebuilding the state database: {err}")))?;
    Ok(summary)
}

/// The listing of each folder's remote, in the order of `config.folders`.
async fn list_remotes(config: &Config) -> Result<Vec<HashMap<String, RemoteFile>>, DaemonError> {
    let bandwidth = crate::net::Bandwidth::new(config.bandwidth.clone());
    let backends = super::build_backends(config, &bandwidth)?;
    let mut listed = Vec::new();
    for folder in &config.folders {
        let cannot = |err: String| {
            DaemonError::Startup(format!(
                "cannot list the remote of folder {} for the rebuild (nothing was changed; \
                 try again when the remote answers): {err}",
                folder.path.display()
            ))
        };
        let mut files = HashMap::new();
        match &folder.target {
            Target::KifsDirectory { directory, .. } => {
                let Some(backend) = backends.kifs.as_deref() else {
                    return Err(cannot("no [kifs] section".into()));
                };
                let crate::upload::Backend::Kifs(kifs) = backend else {
                    unreachable!("the kifs slot holds the KiFS backend");
                };
                for (name, size) in kifs
                    .list_files(directory)
                    .await
                    .map_err(|err| cannot(err.to_string()))?
                {
                    let Some(rel) = name.strip_prefix(&format!("{directory}/")) else {
                        continue;
                    };
                    files.insert(
                        rel.to_string(),
                        RemoteFile {
                            remote: name.clone(),
                            size,
                            md5: None,
                        },
                    );
                }
            }
            Target::RedivisTable(table) => {
                let Some(backend) = backends.redivis.as_deref() else {
                    return Err(cannot("no [redivis] section".into()));
                };
                let crate::upload::Backend::Redivis(redivis) = backend else {
                    unreachable!("the redivis slot holds the Redivis backend");
                };
                for upload in redivis
                    .list_uploads(table)
                    .await
                    .map_err(|err| cannot(err.to_string()))?
                {
                    let (Some(name), Some(size), Some(hash)) =
                        (upload.name.clone(), upload.size, upload.hash.clone())
                    else {
                        continue;
                    };
                    files.insert(
                        name,
                        RemoteFile {
                            remote: upload.uri,
                            size,
                            md5: Some(hash),
                        },
                    );
                }
            }
        }
        listed.push(files);
    }
    Ok(listed)
}

/// Walks one folder and writes a ledger entry for every local file its remote already
/// holds; returns (matched, to upload).
fn match_folder(
    folder: &FolderConfig,
    remote: &HashMap<String, RemoteFile>,
    store: &Store,
) -> Result<(u64, u64), DaemonError> {
    let filter = Filter::new(&folder.include, &folder.exclude)
        .map_err(|err| DaemonError::Startup(format!("folder {}: {err}", folder.path.display())))?;
    let folder_key = folder.path.to_string_lossy().into_owned();
    let (mut matched, mut to_upload) = (0, 0);
    let max_depth = if folder.recursive { usize::MAX } else { 1 };
    let walk = walkdir::WalkDir::new(&folder.path)
        .follow_links(false)
        .max_depth(max_depth)
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0
                || !entry.file_type().is_dir()
                || relative(&folder.path, entry.path()).is_none_or(|rel| !filter.excludes_dir(&rel))
        });
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(folder = %folder.path.display(), error = %err, "skipping an unreadable entry during the rebuild");
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(rel) = relative(&folder.path, entry.path()) else {
            continue;
        };
        if !filter.accepts_file(&rel) {
            continue;
        }
        let Ok(fingerprint) = Fingerprint::read(entry.path()) else {
            continue;
        };
        let same = match remote.get(&rel) {
            Some(found) if found.size == fingerprint.size => match &found.md5 {
                None => true,
                Some(hash) => file_md5(entry.path())
                    .is_ok_and(|local| crate::upload::redivis::hashes_match(&local, hash)),
            },
            _ => false,
        };
        if !same {
            to_upload += 1;
            continue;
        }
        let found = &remote[&rel];
        let key = FileKey::new(folder_key.clone(), rel);
        let md5 = match &found.md5 {
            Some(_) => file_md5(entry.path()).ok(),
            None => None,
        };
        store
            .record_uploaded(&key, &fingerprint, &found.remote, md5.as_deref())
            .map_err(|err| DaemonError::Startup(format!("rebuilding the state database: {err}")))?;
        matched += 1;
    }
    Ok((matched, to_upload))
}

/// The `/`-separated path of `path` below `root`; `None` for the root itself and for
/// names that are not UTF-8 (the queue keys files by UTF-8 paths).
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// MD5 hex of a file's bytes, streamed.
fn file_md5(path: &Path) -> std::io::Result<String> {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
