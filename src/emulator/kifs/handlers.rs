//! The KiFS endpoints' behaviour (`docs/protocols/kifs.md` §6, items 8–36), one function per
//! endpoint. Each runs on a blocking thread: it does its file I/O directly and holds the
//! state lock only around the checks and renames that must not interleave.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use base64::prelude::*;
use bytes::Bytes;

use super::names::{self, FileName, Selector};
use super::store::{Directory, Permission, State, Store, Upload, now_ms};
use crate::config::KifsEncoding;
use crate::upload::kifs::wire::*;

/// An endpoint error: the text of the `ERROR` reply.
pub(crate) type Failure = String;

/// Defaults the endpoints need from the emulator's options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `data_limit` of new directories when the request does not set one.
    pub default_data_limit: i64,
}

fn io_failure(what: &str, e: std::io::Error) -> Failure {
    format!("Internal error while {what}: {e}")
}

/// A boolean option: absent = false; only `true`/`false` accepted
/// (docs/protocols/kifs.md §6, item 17).
fn flag(options: &StringMap, key: &str) -> Result<bool, Failure> {
    match options.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "Invalid value '{other}' for option '{key}' (expected 'true' or 'false')"
        )),
    }
}

/// Whether `file_encoding` asks for base64 (docs/protocols/kifs.md §6, item 15).
fn base64_encoding(options: &StringMap) -> Result<bool, Failure> {
    match options.get("file_encoding").map(String::as_str) {
        None | Some("none") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(format!(
            "Invalid value '{other}' for option 'file_encoding' (expected 'none' or 'base64')"
        )),
    }
}

/// The file data as bytes: in JSON mode the codec already decoded base64; in binary mode
/// base64 elements are decoded here.
fn file_data(
    enc: KifsEncoding,
    options: &StringMap,
    data: Vec<Bytes>,
) -> Result<Vec<Bytes>, Failure> {
    if !base64_encoding(options)? || enc == KifsEncoding::Json {
        return Ok(data);
    }
    data.into_iter()
        .enumerate()
        .map(|(i, element)| {
            BASE64_STANDARD
                .decode(&element)
                .map(Bytes::from)
                .map_err(|e| format!("file_data[{i}] is not valid base64 ({e})"))
        })
        .collect()
}

fn directory<'a>(state: &'a State, name: &str) -> Result<&'a Directory, Failure> {
    state
        .directories
        .get(name)
        .ok_or_else(|| format!("Directory '{name}' does not exist"))
}

fn require(
    state: &State,
    directory_name: &str,
    user: &str,
    needed: Permission,
) -> Result<(), Failure> {
    let dir = directory(state, directory_name)?;
    if dir.permission(user) >= needed {
        return Ok(());
    }
    let what = match needed {
        Permission::Write => "write",
        _ => "read",
    };
    Err(format!(
        "User '{user}' does not have {what} permission on directory '{directory_name}'"
    ))
}

/// Errors when storing `incoming` more bytes in `directory` (replacing `replaced` bytes)
/// would exceed its limit (docs/protocols/kifs.md §6, item 11).
fn check_limit(
    state: &State,
    directory_name: &str,
    incoming: i64,
    replaced: i64,
) -> Result<(), Failure> {
    let dir = directory(state, directory_name)?;
    if dir.data_limit < 0 {
        return Ok(());
    }
    let usage = state.usage(directory_name);
    let after = usage - replaced + incoming;
    if after > dir.data_limit {
        return Err(format!(
            "Directory '{directory_name}' data limit exceeded: {after} bytes would be stored, \
             the limit is {} bytes ({usage} in use)",
            dir.data_limit
        ));
    }
    Ok(())
}

fn size_of(state: &State, name: &str) -> i64 {
    state.files.get(name).map_or(0, |meta| meta.size)
}

fn file_names(raw: &[String]) -> Result<Vec<FileName>, Failure> {
    raw.iter().map(|n| names::parse_file_name(n)).collect()
}

/// `/upload/files` (docs/protocols/kifs.md §6, items 12–25).
pub(crate) fn upload_files(
    store: &Store,
    enc: KifsEncoding,
    user: &str,
    request: UploadFilesRequest,
) -> Result<UploadFilesResponse, Failure> {
    let operation = request
        .options
        .get("multipart_operation")
        .map(String::as_str)
        .unwrap_or("none");
    let multipart = match operation {
        "none" => None,
        "init" | "upload_part" | "complete" | "cancel" => Some(operation),
        other => {
            return Err(format!(
                "Invalid value '{other}' for option 'multipart_operation' (expected none, \
                 init, upload_part, complete or cancel)"
            ));
        }
    };
    let delete_if_exists = flag(&request.options, "delete_if_exists")?;
    let data = file_data(enc, &request.options, request.file_data)?;
    let Some(operation) = multipart else {
        return whole_files(store, user, &request.file_names, data, delete_if_exists);
    };

    if request.file_names.len() != 1 {
        return Err(format!(
            "Multipart operation '{operation}' takes exactly one file name, got {}",
            request.file_names.len()
        ));
    }
    let name = names::parse_file_name(&request.file_names[0])?;
    let uuid = request
        .options
        .get("multipart_upload_uuid")
        .map(String::as_str)
        .unwrap_or("");
    if uuid.is_empty() {
        return Err(format!(
            "Multipart operation '{operation}' needs option 'multipart_upload_uuid'"
        ));
    }
    // The UUID names a directory on disk, so it is held to UUID characters [choice].
    if uuid.len() > 64 || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "Invalid multipart_upload_uuid '{uuid}' (expected a UUID: letters, digits and '-')"
        ));
    }
    if operation != "upload_part" && !data.is_empty() {
        return Err(format!(
            "Multipart operation '{operation}' takes no file_data (got {} elements)",
            data.len()
        ));
    }
    match operation {
        "init" => multipart_init(store, user, &name, uuid, delete_if_exists),
        "upload_part" => {
            let part = request.options.get("multipart_upload_part_number");
            multipart_part(store, &name, uuid, part.map(String::as_str), data)
        }
        "complete" => multipart_complete(store, user, &name, uuid),
        _ => multipart_cancel(store, &name, uuid),
    }
}

fn whole_files(
    store: &Store,
    user: &str,
    raw_names: &[String],
    data: Vec<Bytes>,
    delete_if_exists: bool,
) -> Result<UploadFilesResponse, Failure> {
    if raw_names.is_empty() {
        return Err("No files to upload: file_names is empty".to_string());
    }
    if raw_names.len() != data.len() {
        return Err(format!(
            "file_names has {} elements but file_data has {}: one data element per file is expected",
            raw_names.len(),
            data.len()
        ));
    }
    let names = file_names(raw_names)?;
    // A set, not a look back over the earlier names: a batch names up to a thousand files.
    let mut seen = HashSet::with_capacity(names.len());
    if let Some(twice) = names.iter().find(|name| !seen.insert(name.full.as_str())) {
        return Err(format!("File '{}' appears twice in file_names", twice.full));
    }
    {
        let state = store.lock();
        check_whole_upload(&state, user, &names, &data)?;
    }
    // Contents go to temp files without the lock; the lock is taken again to install them.
    let mut temps = Vec::with_capacity(names.len());
    let cleanup = |temps: &[std::path::PathBuf]| {
        for tmp in temps {
            let _ = fs::remove_file(tmp);
        }
    };
    for element in &data {
        let tmp = store.temp_path();
        if let Err(e) = fs::write(&tmp, element) {
            cleanup(&temps);
            return Err(io_failure("storing the upload", e));
        }
        temps.push(tmp);
    }
    let mut state = store.lock();
    if delete_if_exists {
        for name in &names {
            if state.files.contains_key(&name.full)
                && let Err(e) = store.remove_file(&mut state, &name.full)
            {
                cleanup(&temps);
                return Err(io_failure("deleting the existing file", e));
            }
        }
    }
    if let Err(e) = check_whole_upload(&state, user, &names, &data) {
        cleanup(&temps);
        return Err(e);
    }
    let files: Vec<(&str, &std::path::Path, i64)> = names
        .iter()
        .zip(&temps)
        .zip(&data)
        .map(|((name, tmp), element)| (name.full.as_str(), tmp.as_path(), element.len() as i64))
        .collect();
    if let Err(e) = store.install_files(&mut state, &files, user) {
        // Temps already renamed into place are gone from tmp/; removing them fails harmlessly.
        cleanup(&temps);
        return Err(io_failure("storing the uploaded files", e));
    }
    Ok(UploadFilesResponse::default())
}

/// Everything that can refuse a whole-file upload, so it is refused before any change
/// (all-or-nothing, docs/protocols/kifs.md §6, item 18).
fn check_whole_upload(
    state: &State,
    user: &str,
    names: &[FileName],
    data: &[Bytes],
) -> Result<(), Failure> {
    for name in names {
        require(state, &name.directory, user, Permission::Write)?;
        if let Some(conflict) = state.path_conflict(&name.full) {
            return Err(conflict);
        }
    }
    let mut directories: Vec<&str> = names.iter().map(|n| n.directory.as_str()).collect();
    directories.sort_unstable();
    directories.dedup();
    for dir in directories {
        let (incoming, replaced) = names
            .iter()
            .zip(data)
            .filter(|(n, _)| n.directory == dir)
            .fold((0, 0), |(inc, rep), (n, d)| {
                (inc + d.len() as i64, rep + size_of(state, &n.full))
            });
        check_limit(state, dir, incoming, replaced)?;
    }
    Ok(())
}

fn active_upload<'a>(state: &'a State, name: &FileName, uuid: &str) -> Result<&'a Upload, Failure> {
    let upload = state.uploads.get(uuid).ok_or_else(|| {
        format!(
            "Multipart upload '{uuid}' is not in progress (unknown, cancelled, superseded or completed)"
        )
    })?;
    if upload.file_name != name.full {
        return Err(format!(
            "Multipart upload '{uuid}' is for '{}', not '{}'",
            upload.file_name, name.full
        ));
    }
    Ok(upload)
}

fn multipart_init(
    store: &Store,
    user: &str,
    name: &FileName,
    uuid: &str,
    delete_if_exists: bool,
) -> Result<UploadFilesResponse, Failure> {
    let mut state = store.lock();
    require(&state, &name.directory, user, Permission::Write)?;
    if state.uploads.contains_key(uuid) {
        return Err(format!(
            "Multipart upload '{uuid}' is already in progress; use a new UUID for a new upload"
        ));
    }
    if let Some(conflict) = state.path_conflict(&name.full) {
        return Err(conflict);
    }
    let superseded: Vec<String> = state
        .uploads
        .values()
        .filter(|u| u.file_name == name.full)
        .map(|u| u.uuid.clone())
        .collect();
    for old in superseded {
        tracing::debug!(old_uuid = %old, new_uuid = %uuid, file = %name.full, "multipart upload superseded");
        store.drop_upload(&mut state, &old);
    }
    if delete_if_exists && state.files.contains_key(&name.full) {
        store
            .remove_file(&mut state, &name.full)
            .map_err(|e| io_failure("deleting the existing file", e))?;
    }
    let upload = Upload {
        file_name: name.full.clone(),
        uuid: uuid.to_string(),
        user: user.to_string(),
        last_part_number: 0,
        bytes_received: 0,
        creation_time: now_ms(),
    };
    let dir = store.upload_dir(uuid);
    fs::create_dir_all(&dir)
        .and_then(|()| fs::write(dir.join("data"), b""))
        .and_then(|()| store.save_upload(&upload))
        .map_err(|e| io_failure("starting the multipart upload", e))?;
    state.uploads.insert(uuid.to_string(), upload);
    Ok(UploadFilesResponse::default())
}

fn multipart_part(
    store: &Store,
    name: &FileName,
    uuid: &str,
    part: Option<&str>,
    data: Vec<Bytes>,
) -> Result<UploadFilesResponse, Failure> {
    // The state lock is held through the append: parts of one upload must not interleave,
    // and a cancel must not remove the data under a part being written.
    let mut state = store.lock();
    let upload = active_upload(&state, name, uuid)?;
    if data.len() != 1 {
        return Err(format!(
            "upload_part takes exactly one file_data element, got {}",
            data.len()
        ));
    }
    let part = part.ok_or("upload_part needs option 'multipart_upload_part_number'")?;
    let number: i64 = part.parse().map_err(|_| {
        format!("Invalid multipart_upload_part_number '{part}' (expected an integer)")
    })?;
    let expected = upload.last_part_number + 1;
    if number != expected {
        return Err(format!(
            "Out-of-order part {number} for multipart upload '{uuid}' of '{}': expected part \
             {expected} (parts start at 1 and go up by one)",
            name.full
        ));
    }
    let part_data = &data[0];
    check_limit(
        &state,
        &name.directory,
        upload.bytes_received + part_data.len() as i64,
        size_of(&state, &name.full),
    )?;
    let mut upload = upload.clone();
    let data_path = store.upload_dir(uuid).join("data");
    fs::OpenOptions::new()
        .append(true)
        .open(&data_path)
        .and_then(|mut f| f.write_all(part_data))
        .map_err(|e| io_failure("storing the part", e))?;
    upload.last_part_number = number;
    upload.bytes_received += part_data.len() as i64;
    if let Err(e) = store.save_upload(&upload) {
        // Keep data and meta in step: cut the unacknowledged part off again.
        let _ = fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .and_then(|f| f.set_len((upload.bytes_received - part_data.len() as i64) as u64));
        return Err(io_failure("recording the part", e));
    }
    state.uploads.insert(uuid.to_string(), upload);
    Ok(UploadFilesResponse::default())
}

fn multipart_complete(
    store: &Store,
    user: &str,
    name: &FileName,
    uuid: &str,
) -> Result<UploadFilesResponse, Failure> {
    let mut state = store.lock();
    let upload = active_upload(&state, name, uuid)?.clone();
    require(&state, &name.directory, user, Permission::Write)?;
    check_limit(
        &state,
        &name.directory,
        upload.bytes_received,
        size_of(&state, &name.full),
    )?;
    if let Some(conflict) = state.path_conflict(&name.full) {
        return Err(conflict);
    }
    let data_path = store.upload_dir(uuid).join("data");
    store
        .install_file(
            &mut state,
            &name.full,
            &data_path,
            upload.bytes_received,
            user,
        )
        .map_err(|e| io_failure("completing the upload", e))?;
    store.drop_upload(&mut state, uuid);
    Ok(UploadFilesResponse::default())
}

fn multipart_cancel(
    store: &Store,
    name: &FileName,
    uuid: &str,
) -> Result<UploadFilesResponse, Failure> {
    let mut state = store.lock();
    active_upload(&state, name, uuid)?;
    store.drop_upload(&mut state, uuid);
    Ok(UploadFilesResponse::default())
}

fn selectors(paths: &[String]) -> Result<Vec<Selector>, Failure> {
    paths.iter().map(|p| names::parse_selector(p)).collect()
}

/// `/show/files` (docs/protocols/kifs.md §6, items 27–30).
pub(crate) fn show_files(
    store: &Store,
    user: &str,
    request: ShowFilesRequest,
) -> Result<ShowFilesResponse, Failure> {
    let selectors = selectors(&request.paths)?;
    let state = store.lock();
    let mut matched = std::collections::BTreeSet::new();
    for selector in &selectors {
        require(&state, &selector.directory, user, Permission::Read)?;
        for (name, _) in state.files_in(&selector.directory) {
            if selector.matches(name) {
                matched.insert(name.clone());
            }
        }
    }
    let mut response = ShowFilesResponse::default();
    for name in matched {
        let meta = &state.files[&name];
        response.file_names.push(name);
        response.sizes.push(meta.size);
        response.users.push(meta.user.clone());
        response.creation_times.push(meta.creation_time);
    }
    let uploads: Vec<&Upload> = state
        .uploads
        .values()
        .filter(|u| selectors.iter().any(|s| s.matches(&u.file_name)))
        .collect();
    if !uploads.is_empty() {
        response.info.insert(
            "multipart_uploads".to_string(),
            serde_json::to_string(&uploads).expect("upload records always serialize"),
        );
    }
    Ok(response)
}

/// `/show/directories` (docs/protocols/kifs.md §6, item 31).
pub(crate) fn show_directories(
    store: &Store,
    user: &str,
    request: ShowDirectoriesRequest,
) -> Result<ShowDirectoriesResponse, Failure> {
    let state = store.lock();
    let listed: Vec<(&String, &Directory)> = if request.directory_name.is_empty() {
        state
            .directories
            .iter()
            .filter(|(_, d)| d.permission(user) > Permission::None)
            .collect()
    } else {
        let name = &request.directory_name;
        let dir = directory(&state, name)?;
        let (key, _) = state
            .directories
            .get_key_value(name)
            .expect("the directory was just found");
        vec![(key, dir)]
    };
    let mut response = ShowDirectoriesResponse::default();
    for (name, dir) in listed {
        response.directories.push(name.clone());
        response.users.push(dir.creator.clone());
        response.creation_times.push(dir.creation_time);
        response.data_usages.push(state.usage(name));
        response.data_limits.push(dir.data_limit);
        response
            .permissions
            .push(dir.permission(user).as_str().to_string());
    }
    Ok(response)
}

/// Adds a directory at start-up (`--kifs-directory`, `--kifs-read-only-directory`); an
/// existing one keeps its files and only has its read-only flag updated.
pub(crate) fn ensure_directory(
    store: &Store,
    name: &str,
    read_only: bool,
    settings: &Settings,
) -> Result<(), Failure> {
    names::check_directory_name(name)?;
    let mut state = store.lock();
    let dir = state
        .directories
        .entry(name.to_string())
        .or_insert_with(|| Directory {
            creator: "admin".to_string(),
            creation_time: now_ms(),
            data_limit: settings.default_data_limit,
            read_only,
            owner: None,
        });
    dir.read_only = read_only;
    store
        .save_directories(&state)
        .map_err(|e| io_failure("saving the directory list", e))
}

/// `/create/directory` (docs/protocols/kifs.md §6, item 32).
pub(crate) fn create_directory(
    store: &Store,
    user: &str,
    settings: &Settings,
    request: CreateDirectoryRequest,
) -> Result<CreateDirectoryResponse, Failure> {
    let no_error_if_exists = flag(&request.options, "no_error_if_exists")?;
    let data_limit = match request.options.get("data_limit").map(String::as_str) {
        None | Some("") => settings.default_data_limit,
        Some(text) => text.parse::<i64>().map_err(|_| {
            format!("Invalid value '{text}' for option 'data_limit' (expected a number of bytes, -1 for unlimited)")
        })?,
    };
    let (name, owner) = match request.options.get("create_home_directory") {
        Some(home_user) => {
            if !request.directory_name.is_empty() {
                return Err(format!(
                    "directory_name must be empty with create_home_directory (got '{}')",
                    request.directory_name
                ));
            }
            names::check_directory_name(home_user)
                .map_err(|e| format!("Invalid user name for create_home_directory: {e}"))?;
            (format!("~{home_user}"), Some(home_user.clone()))
        }
        None => {
            names::check_directory_name(&request.directory_name)?;
            (request.directory_name.clone(), None)
        }
    };
    let mut state = store.lock();
    if state.directories.contains_key(&name) {
        if no_error_if_exists {
            return Ok(CreateDirectoryResponse {
                directory_name: name,
                info: StringMap::new(),
            });
        }
        return Err(format!("Directory '{name}' already exists"));
    }
    state.directories.insert(
        name.clone(),
        Directory {
            creator: user.to_string(),
            creation_time: now_ms(),
            data_limit,
            read_only: false,
            owner,
        },
    );
    if let Err(e) = store.save_directories(&state) {
        state.directories.remove(&name);
        return Err(io_failure("saving the directory list", e));
    }
    Ok(CreateDirectoryResponse {
        directory_name: name,
        info: StringMap::new(),
    })
}

/// Expands `file_names` (wildcards allowed) to existing files, in request order, each with
/// the index of the request name that selected it. `dedupe` drops a file already selected
/// by an earlier name; a name that matches no file is an error when `missing_is_error`.
fn expand(
    state: &State,
    user: &str,
    raw: &[String],
    needed: Permission,
    missing_is_error: bool,
    dedupe: bool,
) -> Result<Vec<(String, usize)>, Failure> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (i, path) in raw.iter().enumerate() {
        let selector = names::parse_selector(path)?;
        if selector.pattern.is_none() {
            return Err(format!(
                "Invalid file name '{path}': a file name or pattern after the directory is expected"
            ));
        }
        require(state, &selector.directory, user, needed)?;
        let matches: Vec<&String> = state
            .files_in(&selector.directory)
            .map(|(name, _)| name)
            .filter(|name| selector.matches(name))
            .collect();
        if matches.is_empty() && missing_is_error {
            return Err(match selector.literal() {
                Some(name) => format!("File '{name}' does not exist"),
                None => format!("No file matches '{path}'"),
            });
        }
        for name in matches {
            if !(dedupe && out.iter().any(|(n, _)| n == name)) {
                out.push((name.clone(), i));
            }
        }
    }
    Ok(out)
}

/// `/delete/files` (docs/protocols/kifs.md §6, item 33).
pub(crate) fn delete_files(
    store: &Store,
    user: &str,
    request: DeleteFilesRequest,
) -> Result<DeleteFilesResponse, Failure> {
    let no_error = flag(&request.options, "no_error_if_not_exists")?;
    let mut state = store.lock();
    let doomed = expand(
        &state,
        user,
        &request.file_names,
        Permission::Write,
        !no_error,
        true,
    )?;
    let mut response = DeleteFilesResponse::default();
    for (name, _) in doomed {
        store
            .remove_file(&mut state, &name)
            .map_err(|e| io_failure(&format!("deleting '{name}'"), e))?;
        response.file_names.push(name);
    }
    Ok(response)
}

/// `/delete/directory` (docs/protocols/kifs.md §6, item 34).
pub(crate) fn delete_directory(
    store: &Store,
    user: &str,
    request: DeleteDirectoryRequest,
) -> Result<DeleteDirectoryResponse, Failure> {
    let recursive = flag(&request.options, "recursive")?;
    let no_error = flag(&request.options, "no_error_if_not_exists")?;
    let name = request.directory_name;
    let mut state = store.lock();
    if !state.directories.contains_key(&name) {
        if no_error {
            return Ok(DeleteDirectoryResponse {
                directory_name: name,
                info: StringMap::new(),
            });
        }
        return Err(format!("Directory '{name}' does not exist"));
    }
    require(&state, &name, user, Permission::Write)?;
    let files = state.files_in(&name).count();
    if files > 0 && !recursive {
        return Err(format!(
            "Directory '{name}' is not empty ({files} files); use recursive=true to delete it with its files"
        ));
    }
    let prefix = format!("{name}/");
    let uploads: Vec<String> = state
        .uploads
        .values()
        .filter(|u| u.file_name.starts_with(&prefix))
        .map(|u| u.uuid.clone())
        .collect();
    for uuid in uploads {
        store.drop_upload(&mut state, &uuid);
    }
    let removed = state.directories.remove(&name).expect("checked above");
    if let Err(e) = store.save_directories(&state) {
        state.directories.insert(name.clone(), removed);
        return Err(io_failure("saving the directory list", e));
    }
    {
        let path = store.root().join("files").join(&name);
        if let Err(e) = fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a deleted directory's files");
        }
    }
    let gone: Vec<String> = state.files_in(&name).map(|(n, _)| n.clone()).collect();
    for file in gone {
        state.files.remove(&file);
    }
    Ok(DeleteDirectoryResponse {
        directory_name: name,
        info: StringMap::new(),
    })
}

/// `/download/files` (docs/protocols/kifs.md §6, item 35).
pub(crate) fn download_files(
    store: &Store,
    user: &str,
    request: DownloadFilesRequest,
) -> Result<DownloadFilesResponse, Failure> {
    let base64 = base64_encoding(&request.options)?;
    let n = request.file_names.len();
    let ranged = match (request.read_offsets.len(), request.read_lengths.len()) {
        (0, 0) => false,
        (a, b) if a == n && b == n => true,
        (a, b) => {
            return Err(format!(
                "read_offsets ({a}) and read_lengths ({b}) must both be empty or both have one \
                 element per file name ({n})"
            ));
        }
    };
    if let Some(bad) = request
        .read_offsets
        .iter()
        .chain(&request.read_lengths)
        .find(|v| **v < 0)
    {
        return Err(format!(
            "Negative read offset or length {bad}: offsets and lengths must be >= 0"
        ));
    }
    let selected = {
        let state = store.lock();
        expand(
            &state,
            user,
            &request.file_names,
            Permission::Read,
            true,
            false,
        )?
    };
    let mut response = DownloadFilesResponse::default();
    for (name, i) in selected {
        let path = store.file_path(&name);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = fs::File::open(&path)?;
            let size = file.metadata()?.len();
            let (offset, length) = if ranged {
                (
                    request.read_offsets[i] as u64,
                    request.read_lengths[i] as u64,
                )
            } else {
                (0, size)
            };
            // Reads past the end are clamped: an offset at or after EOF gives no bytes.
            let length = length.min(size.saturating_sub(offset));
            let mut data = Vec::with_capacity(length as usize);
            file.seek(SeekFrom::Start(offset.min(size)))?;
            file.take(length).read_to_end(&mut data)?;
            Ok(data)
        };
        let data = match read() {
            Ok(data) => data,
            // Deleted between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("File '{name}' does not exist"));
            }
            Err(e) => return Err(io_failure(&format!("reading '{name}'"), e)),
        };
        let data = if base64 {
            Bytes::from(BASE64_STANDARD.encode(&data))
        } else {
            Bytes::from(data)
        };
        response.file_names.push(name);
        response.file_data.push(data);
    }
    Ok(response)
}
