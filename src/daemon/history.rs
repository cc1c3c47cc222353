//! What upsync holds as uploaded (`upsync ls`), and forgetting it (`upsync forget`) so
//! that files are uploaded again. Both read the ledger of the configured folders; both go
//! through the running daemon's control socket when there is one (it holds the database).
//!
//! Forgetting a path:
//! 1. Resolve it to its configured folder and the `/`-separated path inside it; a path in
//!    no configured folder is an error naming it.
//! 2. Select the ledger entries of that file, or of every file under it when it names a
//!    directory (the folder itself: all of the folder's files).
//! 3. Drop each entry and, when the file is still there, offer its current version in the
//!    same transaction ([`Store::forget`]): it is queued and uploaded again; a file that is
//!    gone is only forgotten.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, FolderConfig};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Store, StoreError};

/// One uploaded file, as `upsync ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The local path (folder joined with the relative path).
    pub path: String,
    /// The configured folder it is in.
    pub folder: String,
    /// The remote's name for it (a KiFS path, a Redivis upload).
    pub remote: String,
    pub size: u64,
    pub uploaded_at_ms: u64,
}

/// What `upsync ls` asks: every configured folder, or one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequest {
    pub folder: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// Absolute local paths of files or directories inside configured folders.
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// Ledger entries dropped.
    pub forgotten: usize,
    /// Of those, files still there and queued to upload again.
    pub queued: usize,
}

/// The uploaded files of the configured folders (or of `request.folder`, which must be
/// one of them), by folder and path.
pub fn list(
    config: &Config,
    store: &Store,
    request: &ListRequest,
) -> Result<Vec<Uploaded>, String> {
    let folders: Vec<&FolderConfig> = match &request.folder {
        Some(path) => vec![folder_named(config, path)?],
        None => config.folders.iter().collect(),
    };
    let mut out = Vec::new();
    for folder in folders {
        let key = folder.path.to_string_lossy();
        let entries = store
            .ledger_entries(Some(&key))
            .map_err(|e| e.to_string())?;
        out.extend(entries.into_iter().map(|(file, entry)| Uploaded {
            path: file.path().display().to_string(),
            folder: file.folder,
            remote: entry.remote,
            size: entry.fingerprint.size,
            uploaded_at_ms: entry.uploaded_at_ms,
        }));
    }
    Ok(out)
}

/// Forgets the uploads of `request.paths` (module doc). Every path is resolved before
/// anything is dropped, so a mistyped one changes nothing.
pub fn forget(
    config: &Config,
    store: &Store,
    request: &ForgetRequest,
) -> Result<ForgetResponse, String> {
    let mut selected = Vec::new();
    for path in &request.paths {
        let (folder, rel) = locate(config, path)?;
        selected.extend(under(store, &folder, &rel).map_err(|e| e.to_string())?);
    }
    let mut response = ForgetResponse::default();
    for key in selected {
        let current = Fingerprint::read(&key.path()).ok();
        if store
            .forget(&key, current.as_ref())
            .map_err(|e| e.to_string())?
        {
            response.forgotten += 1;
            response.queued += usize::from(current.is_some());
        }
    }
    Ok(response)
}

/// Step 1: the configured folder holding `path`, and the path inside it (`""` for the
/// folder itself).
fn locate(config: &Config, path: &Path) -> Result<(String, String), String> {
    // Folders never overlap (the config refuses it): at most one holds the path.
    config
        .folders
        .iter()
        .find_map(|folder| {
            let rel = path.strip_prefix(&folder.path).ok()?;
            Some((folder.path.to_string_lossy().into_owned(), rel))
        })
        .map(|(folder, rel)| {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            (folder, parts.join("/"))
        })
        .ok_or_else(|| format!("{} is in no configured folder", path.display()))
}

/// Step 2: the ledger keys of the file `rel` of `folder`, or of every file under it.
fn under(store: &Store, folder: &str, rel: &str) -> Result<Vec<FileKey>, StoreError> {
    let prefix = format!("{rel}/");
    Ok(store
        .ledger_entries(Some(folder))?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| rel.is_empty() || key.rel == rel || key.rel.starts_with(&prefix))
        .collect())
}

fn folder_named<'a>(config: &'a Config, path: &Path) -> Result<&'a FolderConfig, String> {
    config
        .folders
        .iter()
        .find(|folder| folder.path == path)
        .ok_or_else(|| format!("{} is not a configured folder", path.display()))
}

/// `upsync ls` as text: one line per file (upload time in UTC, size, local path, remote
/// name), and a count.
pub fn render(files: &[Uploaded]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for file in files {
        let at = crate::queue::from_ms(file.uploaded_at_ms);
        let _ = writeln!(
            out,
            "{}  {:>10}  {}  ->  {}",
            humantime::format_rfc3339_seconds(at),
            bytesize::ByteSize(file.size).to_string(),
            file.path,
            file.remote
        );
    }
    let _ = writeln!(out, "{} file(s) uploaded", files.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let text = format!(
            "state_dir = \"{state}\"\n[kifs]\nurl = \"http://127.0.0.1:1/kifs\"\n\
             [[folder]]\npath = \"{a}\"\nkifs_directory = \"a\"\n\
             [[folder]]\npath = \"{b}\"\nkifs_directory = \"b\"\n",
            state = dir.join("state").display(),
            a = dir.join("a").display(),
            b = dir.join("b").display(),
        );
        let path = dir.join("upsync.toml");
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(&path, text).unwrap();
        Config::load(&path).expect("the config loads")
    }

    #[test]
    fn forgetting_resolves_every_path_first_and_queues_files_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config.state_dir).unwrap();
        let a = dir.path().join("a").to_string_lossy().into_owned();
        let b = dir.path().join("b").to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.path().join("a/sub")).unwrap();
        std::fs::write(dir.path().join("a/sub/x.csv"), "x").unwrap();
        let fp = Fingerprint::read(&dir.path().join("a/sub/x.csv")).unwrap();
        for key in [
            FileKey::new(&a, "sub/x.csv"),
            FileKey::new(&a, "sub/gone.csv"),
            FileKey::new(&a, "subway.csv"),
            FileKey::new(&b, "n.csv"),
        ] {
            store.record_uploaded(&key, &fp, "remote", None).unwrap();
        }
        let listed = list(&config, &store, &ListRequest::default()).unwrap();
        assert_eq!(listed.len(), 4);
        let one = ListRequest {
            folder: Some(dir.path().join("b")),
        };
        assert_eq!(list(&config, &store, &one).unwrap().len(), 1);

        // A path outside every folder fails the request before anything is dropped.
        let bad = ForgetRequest {
            paths: vec![dir.path().join("a/sub"), PathBuf::from("/elsewhere/f")],
        };
        assert!(
            forget(&config, &store, &bad)
                .unwrap_err()
                .contains("/elsewhere/f")
        );
        assert_eq!(
            list(&config, &store, &ListRequest::default())
                .unwrap()
                .len(),
            4
        );

        // A directory selects the files under it, not `subway.csv` beside it.
        let sub = ForgetRequest {
            paths: vec![dir.path().join("a/sub")],
        };
        let forgotten = forget(&config, &store, &sub).unwrap();
        assert_eq!(
            forgotten,
            ForgetResponse {
                forgotten: 2,
                queued: 1
            }
        );
        let left: Vec<String> = list(&config, &store, &ListRequest::default())
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(left, vec![format!("{a}/subway.csv"), format!("{b}/n.csv")]);
        let jobs = store.jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].key, FileKey::new(&a, "sub/x.csv"));
    }
}
