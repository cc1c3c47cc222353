//! The KiFS emulator's state, on disk so it survives a restart.
//!
//! Layout under the KiFS data directory:
//!
//! ```text
//! directories.json            every top-level directory (small; rewritten atomically)
//! files/<directory>/<rest>    file contents, real sub-directories, readable by a person
//! meta/<directory>/<rest>_meta.json
//!                             creator and creation time of that file; `_` cannot occur in
//!                             a KiFS name, so a sidecar never collides with a file's path
//! multipart/<uuid>/meta.json  one in-progress multipart upload (target, user, last part,
//!                             bytes received), rewritten after every part
//! multipart/<uuid>/data       the parts received so far, appended in order
//! tmp/                        temporary files, renamed into place; emptied at start
//! ```
//!
//! Invariants: every write of a file or of a metadata file is a temp file in `tmp/` renamed
//! into place, so a reader or a restart sees the old or the new version, never a mix. The
//! in-memory [`State`] is rebuilt from this layout at start and changed only while its mutex
//! is held, after the disk change it mirrors succeeded. An upload's `data` may hold more
//! than `bytes_received` after a crash between the append and the meta update: the excess
//! is cut at load. Emptied sub-directories of `files/` and `meta/` are removed, so the tree
//! mirrors exactly the names that exist.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::emulator::EmulatorError;

/// A top-level KiFS directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Directory {
    pub creator: String,
    pub creation_time: i64,
    /// Bytes; −1 = unlimited.
    pub data_limit: i64,
    /// Everyone gets `directory_read` only.
    #[serde(default)]
    pub read_only: bool,
    /// A home directory (`~user`): only this user has access (write).
    #[serde(default)]
    pub owner: Option<String>,
}

/// What a user may do in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Permission {
    None,
    Read,
    Write,
}

impl Permission {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Permission::None => "",
            Permission::Read => "directory_read",
            Permission::Write => "directory_write",
        }
    }
}

impl Directory {
    pub(crate) fn permission(&self, user: &str) -> Permission {
        match &self.owner {
            Some(owner) if owner == user => Permission::Write,
            Some(_) => Permission::None,
            None if self.read_only => Permission::Read,
            None => Permission::Write,
        }
    }
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub size: i64,
    pub user: String,
    pub creation_time: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    user: String,
    creation_time: i64,
}

/// One multipart upload in progress; serialized as `multipart/<uuid>/meta.json` and, with
/// these field names in this order, as an element of `info.multipart_uploads`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Upload {
    pub file_name: String,
    pub uuid: String,
    pub user: String,
    pub last_part_number: i64,
    pub bytes_received: i64,
    pub creation_time: i64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub directories: BTreeMap<String, Directory>,
    /// Full name → metadata.
    pub files: BTreeMap<String, FileMeta>,
    /// UUID → upload.
    pub uploads: BTreeMap<String, Upload>,
}

impl State {
    /// Bytes stored in `directory` (completed files only).
    pub(crate) fn usage(&self, directory: &str) -> i64 {
        self.files_in(directory).map(|(_, meta)| meta.size).sum()
    }

    pub(crate) fn files_in<'a>(
        &'a self,
        directory: &str,
    ) -> impl Iterator<Item = (&'a String, &'a FileMeta)> + 'a {
        let prefix = format!("{directory}/");
        self.files
            .range(prefix.clone()..)
            .take_while(move |(name, _)| name.starts_with(&prefix))
    }

    /// Why `name` cannot be stored next to the existing files, if it cannot: one of its
    /// parents is a file, or it is itself a parent of files.
    pub(crate) fn path_conflict(&self, name: &str) -> Option<String> {
        let mut end = 0;
        while let Some(pos) = name[end..].find('/') {
            let parent = &name[..end + pos];
            if end > 0 && self.files.contains_key(parent) {
                return Some(format!(
                    "Cannot store '{name}': '{parent}' is a file, so it cannot also be a directory"
                ));
            }
            end += pos + 1;
        }
        let prefix = format!("{name}/");
        if let Some((child, _)) = self.files.range(prefix.clone()..).next()
            && child.starts_with(&prefix)
        {
            return Some(format!(
                "Cannot store '{name}': it is a directory holding '{child}', so it cannot also be a file"
            ));
        }
        None
    }
}

/// The on-disk store and its in-memory mirror.
pub(crate) struct Store {
    root: PathBuf,
    state: Mutex<State>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where the content of the KiFS file `name` lives under the KiFS data directory.
pub(crate) fn file_path(root: &Path, name: &str) -> PathBuf {
    root.join("files")
        .join(name.strip_prefix('/').unwrap_or(name))
}

fn io_error(path: &Path, source: io::Error) -> EmulatorError {
    EmulatorError::Data {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store under `root` and rebuilds the state from disk.
    pub(crate) fn open(root: &Path) -> Result<Store, EmulatorError> {
        for sub in ["files", "meta", "multipart"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;

        let mut state = State::default();
        let directories = root.join("directories.json");
        match fs::read(&directories) {
            Ok(text) => {
                state.directories = serde_json::from_slice(&text).map_err(|e| {
                    io_error(&directories, io::Error::new(io::ErrorKind::InvalidData, e))
                })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&directories, e)),
        }

        let files_root = root.join("files");
        for entry in walkdir::WalkDir::new(&files_root).min_depth(2) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&files_root).to_path_buf();
                io_error(&path, e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&files_root)
                .expect("walkdir yields paths under its root");
            let Some(name) = rel.to_str().map(str::to_string) else {
                continue;
            };
            let metadata = entry
                .metadata()
                .map_err(|e| io_error(entry.path(), e.into()))?;
            let sidecar = fs::read(sidecar_path(root, &name))
                .ok()
                .and_then(|text| serde_json::from_slice::<Sidecar>(&text).ok());
            let (user, creation_time) = match sidecar {
                Some(s) => (s.user, s.creation_time),
                None => {
                    let mtime = metadata
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    ("unknown".to_string(), mtime)
                }
            };
            state.files.insert(
                name,
                FileMeta {
                    size: metadata.len() as i64,
                    user,
                    creation_time,
                },
            );
        }

        let multipart = root.join("multipart");
        let entries = fs::read_dir(&multipart).map_err(|e| io_error(&multipart, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&multipart, e))?;
            let dir = entry.path();
            match load_upload(&dir) {
                Ok(upload) => {
                    state.uploads.insert(upload.uuid.clone(), upload);
                }
                Err(reason) => {
                    tracing::warn!(path = %dir.display(), %reason, "dropping an unreadable multipart upload");
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }

        Ok(Store {
            root: root.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Locks the state. Callers run on blocking threads and never await while holding it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the disk (every
        // change is disk first, memory second), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    /// Writes `data` to `path` through a temp file and a rename.
    pub(crate) fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = self.temp_path();
        fs::write(&tmp, data)?;
        self.rename_into(&tmp, path)
    }

    /// Renames `from` to `to`, creating `to`'s parent directories.
    pub(crate) fn rename_into(&self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(from, to)
    }

    pub(crate) fn save_directories(&self, state: &State) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(&state.directories)
            .expect("directory records always serialize");
        self.write_atomic(&self.root.join("directories.json"), &text)
    }

    pub(crate) fn file_path(&self, name: &str) -> PathBuf {
        file_path(&self.root, name)
    }

    /// Moves the finished content at `tmp` into place as `name` and records its metadata.
    pub(crate) fn install_file(
        &self,
        state: &mut State,
        name: &str,
        tmp: &Path,
        size: i64,
        user: &str,
    ) -> io::Result<()> {
        let creation_time = now_ms();
        let sidecar = serde_json::to_vec(&Sidecar {
            user: user.to_string(),
            creation_time,
        })
        .expect("a sidecar always serializes");
        self.rename_into(tmp, &self.file_path(name))?;
        self.write_atomic(&sidecar_path(&self.root, name), &sidecar)?;
        state.files.insert(
            name.to_string(),
            FileMeta {
                size,
                user: user.to_string(),
                creation_time,
            },
        );
        Ok(())
    }

    /// Deletes the file `name` and its sidecar, and prunes emptied parent directories.
    pub(crate) fn remove_file(&self, state: &mut State, name: &str) -> io::Result<()> {
        let path = self.file_path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_file(sidecar_path(&self.root, name));
        state.files.remove(name);
        let directory = name.split('/').next().unwrap_or(name);
        prune_empty_parents(&path, &self.root.join("files").join(directory));
        prune_empty_parents(
            &sidecar_path(&self.root, name),
            &self.root.join("meta").join(directory),
        );
        Ok(())
    }

    pub(crate) fn upload_dir(&self, uuid: &str) -> PathBuf {
        self.root.join("multipart").join(uuid)
    }

    pub(crate) fn save_upload(&self, upload: &Upload) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(upload).expect("an upload always serializes");
        self.write_atomic(&self.upload_dir(&upload.uuid).join("meta.json"), &text)
    }

    pub(crate) fn drop_upload(&self, state: &mut State, uuid: &str) {
        state.uploads.remove(uuid);
        let dir = self.upload_dir(uuid);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove a multipart upload's data");
        }
    }
}

fn sidecar_path(root: &Path, name: &str) -> PathBuf {
    root.join("meta").join(format!("{name}_meta.json"))
}

/// Removes the empty directories between `path` and `stop` (exclusive).
fn prune_empty_parents(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn load_upload(dir: &Path) -> Result<Upload, String> {
    let text = fs::read(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?;
    let upload: Upload = serde_json::from_slice(&text).map_err(|e| format!("meta.json: {e}"))?;
    let data = dir.join("data");
    let len = fs::metadata(&data).map_err(|e| format!("data: {e}"))?.len() as i64;
    if len < upload.bytes_received {
        return Err(format!(
            "data holds {len} bytes, the meta says {} were received",
            upload.bytes_received
        ));
    }
    if len > upload.bytes_received {
        // A part appended before the crash but never acknowledged: forget it.
        fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .and_then(|f| f.set_len(upload.bytes_received as u64))
            .map_err(|e| format!("data: {e}"))?;
    }
    Ok(upload)
}
