//! The KiFS emulator's state, on disk so it survives a restart.
//!
//! Layout under the KiFS data directory:
//!
//! ```text
//! directories.json            every top-level directory (small; rewritten atomically)
//! files/<directory>/<rest>    file contents, real sub-directories, readable by a person
//! meta.log                    creator and creation time of stored files: one JSON line
//!                             per installed file, appended once per request (one write
//!                             for all files of a batch); the last line for a name wins
//! multipart/<uuid>/meta.json  one in-progress multipart upload (target, user, last part,
//!                             bytes received), rewritten after every part
//! multipart/<uuid>/data       the parts received so far, appended in order
//! tmp/                        temporary files, renamed into place; emptied at start
//! ```
//!
//! Invariants: every write of a file's content is a temp file in `tmp/` renamed into place,
//! so a reader or a restart sees the old or the new version, never a mix. The metadata of
//! the files a request installs is appended to `meta.log` after their contents are in place
//! (a crash in between leaves a new content with its previous metadata, or none: the
//! creator is then "unknown" and the creation time the file's mtime). Lines of files that no
//! longer exist are ignored; the log is rewritten without them (temp file and rename) at
//! start and whenever it holds many more lines than there are files. Data directories of
//! older emulators kept one `meta/<directory>/<rest>_meta.json` sidecar per file: they are
//! read at start, folded into `meta.log` and removed. The in-memory [`State`] is rebuilt
//! from this layout at start and changed only while its mutex is held, after the disk change
//! it mirrors succeeded. An upload's `data` may hold more than `bytes_received` after a
//! crash between the append and the meta update: the excess is cut at load. Emptied
//! sub-directories of `files/` are removed, so the tree mirrors exactly the names that
//! exist.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
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

/// The metadata of a file as older emulators kept it next to the content.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    user: String,
    creation_time: i64,
}

/// One line of `meta.log`.
#[derive(Debug, Serialize, Deserialize)]
struct MetaLine {
    name: String,
    user: String,
    creation_time: i64,
}

/// The open `meta.log` and how many lines it holds.
struct MetaLog {
    file: fs::File,
    lines: u64,
}

/// `meta.log` is rewritten once it holds this many more lines than there are files.
const META_LOG_SLACK: u64 = 100_000;

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
    /// Only written while the state lock is held.
    meta_log: Mutex<MetaLog>,
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

/// Step 1 of [`Store::open`]: the layout's directories, and `tmp` emptied of what a
/// request left half-written.
fn prepare_layout(root: &Path) -> Result<(), EmulatorError> {
    for sub in ["files", "multipart"] {
        let dir = root.join(sub);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    }
    let tmp = root.join("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))
}

/// Step 2 of [`Store::open`]: the directories' list, empty when none was written yet.
fn read_directories(root: &Path) -> Result<BTreeMap<String, Directory>, EmulatorError> {
    let directories = root.join("directories.json");
    match fs::read(&directories) {
        Ok(text) => serde_json::from_slice(&text)
            .map_err(|e| io_error(&directories, io::Error::new(io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_error(&directories, e)),
    }
}

/// Step 3 of [`Store::open`]: every stored file, its size from disk, its user and creation
/// time as recorded ([`read_recorded`]); a file recorded nowhere was made by an unknown
/// user at its mtime.
fn read_stored_files(root: &Path) -> Result<BTreeMap<String, FileMeta>, EmulatorError> {
    let mut recorded = read_recorded(root)?;
    let mut files = BTreeMap::new();
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
        let (user, creation_time) = match recorded.remove(&name) {
            Some(found) => found,
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
        files.insert(
            name,
            FileMeta {
                size: metadata.len() as i64,
                user,
                creation_time,
            },
        );
    }
    Ok(files)
}

/// The user and creation time of each file by name: an older layout's sidecars, then the
/// metadata log's lines over them.
fn read_recorded(root: &Path) -> Result<HashMap<String, (String, i64)>, EmulatorError> {
    let mut recorded = read_legacy_sidecars(root)?;
    let log_path = root.join(META_LOG);
    match fs::read(&log_path) {
        Ok(text) => {
            // A line torn by a crash (the last one) does not parse and is skipped.
            for line in text.split(|&b| b == b'\n') {
                if let Ok(line) = serde_json::from_slice::<MetaLine>(line) {
                    recorded.insert(line.name, (line.user, line.creation_time));
                }
            }
            Ok(recorded)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(recorded),
        Err(e) => Err(io_error(&log_path, e)),
    }
}

/// Step 4 of [`Store::open`]: the unfinished multipart uploads by id; one that cannot be
/// read is dropped, and said so.
fn read_uploads(root: &Path) -> Result<BTreeMap<String, Upload>, EmulatorError> {
    let mut uploads = BTreeMap::new();
    let multipart = root.join("multipart");
    let entries = fs::read_dir(&multipart).map_err(|e| io_error(&multipart, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&multipart, e))?;
        let dir = entry.path();
        match load_upload(&dir) {
            Ok(upload) => {
                uploads.insert(upload.uuid.clone(), upload);
            }
            Err(reason) => {
                tracing::warn!(path = %dir.display(), %reason, "dropping an unreadable multipart upload");
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    Ok(uploads)
}

impl Store {
    /// Opens (creating if needed) the store under `root` and rebuilds the state from disk.
    ///
    /// 1. The layout's directories, with an empty `tmp`.
    /// 2. The directories' list.
    /// 3. Each stored file's size from disk, its user and creation time from the metadata
    ///    log (or an older layout's sidecars).
    /// 4. The unfinished multipart uploads; one that cannot be read is dropped.
    /// 5. The metadata log written afresh with exactly the files that exist; only then are
    ///    the sidecars of an older layout, now folded into it, removed.
    pub(crate) fn open(root: &Path) -> Result<Store, EmulatorError> {
        prepare_layout(root)?;
        let mut state = State {
            directories: read_directories(root)?,
            ..State::default()
        };
        state.files = read_stored_files(root)?;
        state.uploads = read_uploads(root)?;
        let meta_log = write_meta_log(root, &state)?;
        let legacy = root.join("meta");
        if legacy.exists() {
            fs::remove_dir_all(&legacy).map_err(|e| io_error(&legacy, e))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            state: Mutex::new(state),
            meta_log: Mutex::new(meta_log),
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
        self.install_files(state, &[(name, tmp, size)], user)
    }

    /// Moves finished contents (name, temp path, size) into place and records their
    /// metadata with one append to `meta.log`. On an error, the files installed before it
    /// stay installed and recorded; the others are untouched.
    pub(crate) fn install_files(
        &self,
        state: &mut State,
        files: &[(&str, &Path, i64)],
        user: &str,
    ) -> io::Result<()> {
        let creation_time = now_ms();
        let mut lines = Vec::with_capacity(files.len() * 96);
        let mut installed = 0;
        let mut made_parent: Option<PathBuf> = None;
        let mut result = Ok(());
        for &(name, tmp, _) in files {
            let path = self.file_path(name);
            // Files of one request mostly share their directory: create it once.
            let parent = path.parent().map(Path::to_path_buf);
            if parent != made_parent
                && let Some(parent) = &parent
                && let Err(e) = fs::create_dir_all(parent)
            {
                result = Err(e);
                break;
            }
            made_parent = parent;
            if let Err(e) = fs::rename(tmp, &path) {
                result = Err(e);
                break;
            }
            serde_json::to_writer(
                &mut lines,
                &MetaLine {
                    name: name.to_string(),
                    user: user.to_string(),
                    creation_time,
                },
            )
            .expect("a metadata line always serializes");
            lines.push(b'\n');
            installed += 1;
        }
        for &(name, _, size) in &files[..installed] {
            state.files.insert(
                name.to_string(),
                FileMeta {
                    size,
                    user: user.to_string(),
                    creation_time,
                },
            );
        }
        if installed > 0 {
            self.append_meta(state, &lines, installed as u64)?;
        }
        result
    }

    /// Appends metadata lines to `meta.log`, rewriting it first when it grew far beyond
    /// the files it describes.
    fn append_meta(&self, state: &State, lines: &[u8], count: u64) -> io::Result<()> {
        let mut log = self
            .meta_log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if log.lines > state.files.len() as u64 + META_LOG_SLACK {
            // `state` already holds the files being recorded: the rewrite includes them.
            *log = write_meta_log(&self.root, state).map_err(|e| match e {
                EmulatorError::Data { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })?;
            return Ok(());
        }
        log.file.write_all(lines)?;
        log.lines += count;
        Ok(())
    }

    /// Deletes the file `name` and prunes emptied parent directories. Its `meta.log` lines
    /// stay until the next rewrite, which drops them; a new upload of the name appends a
    /// newer line.
    pub(crate) fn remove_file(&self, state: &mut State, name: &str) -> io::Result<()> {
        let path = self.file_path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        state.files.remove(name);
        let directory = name.split('/').next().unwrap_or(name);
        prune_empty_parents(&path, &self.root.join("files").join(directory));
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

const META_LOG: &str = "meta.log";

/// Writes `meta.log` afresh with one line per existing file (temp file, then rename) and
/// opens it for appending.
fn write_meta_log(root: &Path, state: &State) -> Result<MetaLog, EmulatorError> {
    let mut text = Vec::with_capacity(state.files.len() * 96);
    for (name, meta) in &state.files {
        serde_json::to_writer(
            &mut text,
            &MetaLine {
                name: name.clone(),
                user: meta.user.clone(),
                creation_time: meta.creation_time,
            },
        )
        .expect("a metadata line always serializes");
        text.push(b'\n');
    }
    let path = root.join(META_LOG);
    let tmp = root
        .join("tmp")
        .join(format!("{META_LOG}.{}", uuid::Uuid::new_v4()));
    fs::write(&tmp, &text).map_err(|e| io_error(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
    let file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    Ok(MetaLog {
        file,
        lines: state.files.len() as u64,
    })
}

/// The per-file sidecars `meta/<directory>/<rest>_meta.json` of older data directories, by
/// file name.
fn read_legacy_sidecars(root: &Path) -> Result<HashMap<String, (String, i64)>, EmulatorError> {
    let mut found = HashMap::new();
    let meta_root = root.join("meta");
    if !meta_root.exists() {
        return Ok(found);
    }
    for entry in walkdir::WalkDir::new(&meta_root).min_depth(2) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(&meta_root).to_path_buf();
            io_error(&path, e.into())
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(name) = entry
            .path()
            .strip_prefix(&meta_root)
            .ok()
            .and_then(Path::to_str)
            .and_then(|rel| rel.strip_suffix("_meta.json"))
        else {
            continue;
        };
        if let Some(sidecar) = fs::read(entry.path())
            .ok()
            .and_then(|text| serde_json::from_slice::<Sidecar>(&text).ok())
        {
            found.insert(name.to_string(), (sidecar.user, sidecar.creation_time));
        }
    }
    Ok(found)
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
