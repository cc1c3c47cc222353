//! What upsync holds as uploaded (`upsync ls`), and forgetting it (`upsync forget`) so
//! that files are uploaded again. Both read the ledger of the configured folders; both go
//! through the running daemon's control socket when there is one (it holds the database).
//!
//! Listing walks the ledger a chunk at a time ([`Store::visit_uploads`]) and prints each
//! file as it comes: a running daemon streams the list to the command as [`ListLine`]s, a
//! block at a time, so neither process holds the whole list, whatever the folders hold.
//!
//! Forgetting a path:
//! 1. Resolve it to its configured folder and the `/`-separated path inside it; a path in
//!    no configured folder is an error naming it.
//! 2. Select the ledger entries of that file, or of every file under it when it names a
//!    directory (the folder itself: all of the folder's files), reading only the entries
//!    under it.
//! 3. Drop the entries, [`FORGET_BATCH`] to a transaction, and offer the current version
//!    of each file still there in the same transaction ([`Store::forget_many`]): it is
//!    queued and uploaded again; a file that is gone is only forgotten. Steps 2 and 3 go
//!    a batch at a time, so a directory of any size is never held in memory.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Config, FolderConfig};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, FilePick, Store, StoreError};

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

/// One line of the list a running daemon streams for `upsync ls` (JSON, a line each):
/// the files, then how many there were. A list the daemon could not finish ends with
/// what stopped it instead, and one cut off ends with neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListLine {
    File(Uploaded),
    End { files: u64 },
    Failed(String),
}

/// How many files a daemon streams in one block of its list.
const LIST_BLOCK: usize = 1_024;

/// The configured folders a list covers: all, or `request.folder`, which must be one of
/// them (checked before anything is listed).
pub fn listed_folders(config: &Config, request: &ListRequest) -> Result<Vec<String>, String> {
    let folders: Vec<&FolderConfig> = match &request.folder {
        Some(path) => vec![folder_named(config, path)?],
        None => config.folders.iter().collect(),
    };
    Ok(folders
        .iter()
        .map(|folder| folder.path.to_string_lossy().into_owned())
        .collect())
}

/// Hands `visit` the uploaded files of `folders`, folder by folder and by path inside
/// each, until it breaks.
pub fn visit_list(
    store: &Store,
    folders: &[String],
    mut visit: impl FnMut(Uploaded) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut stopped = false;
    for folder in folders {
        store.visit_uploads(folder, "", |rel, entry| {
            let flow = visit(Uploaded {
                path: FileKey::new(folder.as_str(), rel)
                    .path()
                    .display()
                    .to_string(),
                folder: folder.clone(),
                remote: entry.remote,
                size: entry.fingerprint.size,
                uploaded_at_ms: entry.uploaded_at_ms,
            });
            stopped = flow.is_break();
            flow
        })?;
        if stopped {
            break;
        }
    }
    Ok(())
}

/// Sends the list of `folders` into `lines` as [`ListLine`]s, [`LIST_BLOCK`] files to a
/// block, and the end line last; stops walking when the receiver is gone. Blocks: run it
/// off the runtime.
pub fn send_list(store: &Store, folders: &[String], lines: &mpsc::Sender<Vec<u8>>) {
    let mut block = Vec::new();
    let (mut in_block, mut files) = (0, 0);
    let walked = visit_list(store, folders, |file| {
        push_line(&mut block, &ListLine::File(file));
        files += 1;
        in_block += 1;
        if in_block < LIST_BLOCK {
            return ControlFlow::Continue(());
        }
        in_block = 0;
        match lines.blocking_send(std::mem::take(&mut block)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    let last = match walked {
        Ok(()) => ListLine::End { files },
        Err(err) => ListLine::Failed(err.to_string()),
    };
    push_line(&mut block, &last);
    // A receiver gone meanwhile has stopped reading: nothing is left to tell it.
    let _ = lines.blocking_send(block);
}

fn push_line(block: &mut Vec<u8>, line: &impl Serialize) {
    serde_json::to_writer(&mut *block, line).expect("an answer's line always serializes");
    block.push(b'\n');
}

/// The uploaded files of `request`'s folders, as a list.
#[cfg(test)]
fn list(config: &Config, store: &Store, request: &ListRequest) -> Result<Vec<Uploaded>, String> {
    let folders = listed_folders(config, request)?;
    let mut files = Vec::new();
    visit_list(store, &folders, |file| {
        files.push(file);
        ControlFlow::Continue(())
    })
    .map_err(|err| err.to_string())?;
    Ok(files)
}

/// One line of a running daemon's answer to `upsync forget` (JSON, a line each): the
/// counts so far after each batch, then the final counts, or what stopped it. The lines
/// keep a long forget (a directory of a million files) from looking like a daemon that
/// does not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgetLine {
    Progress(ForgetResponse),
    Done(ForgetResponse),
    Failed(String),
}

/// How many files one transaction forgets.
pub(crate) const FORGET_BATCH: usize = 512;

/// Forgets the uploads of `request.paths` (module doc). Every path is resolved before
/// anything is dropped, so a mistyped one changes nothing.
pub fn forget(
    config: &Config,
    store: &Store,
    request: &ForgetRequest,
) -> Result<ForgetResponse, String> {
    let located = locate_all(config, request)?;
    forget_located(store, &located, |_| ControlFlow::Continue(())).map_err(|e| e.to_string())
}

/// Forgets the located paths as [`forget_located`] does, sending a [`ForgetLine`] into
/// `lines` after each batch and the final counts last. A reader gone meanwhile does not
/// stop it: what was asked is done. Blocks: run it off the runtime.
pub fn send_forget(store: &Store, located: &[(String, String)], lines: &mpsc::Sender<Vec<u8>>) {
    let send = |line: &ForgetLine| {
        let mut block = Vec::new();
        push_line(&mut block, line);
        let _ = lines.blocking_send(block);
    };
    let forgotten = forget_located(store, located, |so_far| {
        send(&ForgetLine::Progress(so_far.clone()));
        ControlFlow::Continue(())
    });
    send(&match forgotten {
        Ok(response) => ForgetLine::Done(response),
        Err(err) => ForgetLine::Failed(err.to_string()),
    });
}

/// Takes one line of a daemon's answer to `upsync forget` into `done`: breaks with the
/// final counts; a line saying it failed, or one that is not an answer, is an error. A
/// daemon started from an upsync before answers were streamed sends its counts alone.
pub fn forget_answer(
    line: &[u8],
    done: &mut Option<ForgetResponse>,
) -> Result<ControlFlow<()>, String> {
    let line = match serde_json::from_slice::<ForgetLine>(line) {
        Ok(line) => line,
        Err(err) => match serde_json::from_slice::<ForgetResponse>(line) {
            Ok(counts) => ForgetLine::Done(counts),
            Err(_) => return Err(format!("malformed answer from the daemon: {err}")),
        },
    };
    match line {
        ForgetLine::Progress(_) => Ok(ControlFlow::Continue(())),
        ForgetLine::Done(counts) => {
            *done = Some(counts);
            Ok(ControlFlow::Break(()))
        }
        ForgetLine::Failed(reason) => {
            Err(format!("the daemon could not forget them all: {reason}"))
        }
    }
}

/// Step 1 for every path of `request`: its folder and its path inside it.
pub fn locate_all(
    config: &Config,
    request: &ForgetRequest,
) -> Result<Vec<(String, String)>, String> {
    request
        .paths
        .iter()
        .map(|path| locate(config, path))
        .collect()
}

/// Steps 2 and 3 for the located paths, [`FORGET_BATCH`] files to a transaction, handing
/// `progress` the counts after each batch (it may stop the forgetting there).
pub fn forget_located(
    store: &Store,
    located: &[(String, String)],
    mut progress: impl FnMut(&ForgetResponse) -> ControlFlow<()>,
) -> Result<ForgetResponse, StoreError> {
    let mut response = ForgetResponse::default();
    let mut batches = ForgetBatches::new(|batch: &mut Vec<FileKey>| {
        let files: Vec<(FileKey, Option<Fingerprint>)> = batch
            .drain(..)
            .map(|key| {
                let current = Fingerprint::read(&key.path()).ok();
                (key, current)
            })
            .collect();
        let dropped = store.forget_many(&files)?;
        for ((_, current), dropped) in files.iter().zip(dropped) {
            if dropped {
                response.forgotten += 1;
                response.queued += usize::from(current.is_some());
            }
        }
        Ok(progress(&response))
    });
    for (folder, rel) in located {
        let stopped = under(store, folder, rel, |key| batches.push(key))?;
        batches.check()?;
        if stopped {
            drop(batches);
            return Ok(response);
        }
    }
    // The last batch: nothing is left for `progress` to stop.
    batches.finish()?;
    Ok(response)
}

/// Ledger entries gathered from a walk of the ledger into batches of [`FORGET_BATCH`],
/// each handed to a forgetting function as it fills and the last one by
/// [`ForgetBatches::finish`]: `upsync forget` and the drop of a retargeted folder's ledger
/// (module `retarget`) hold one batch at a time, whatever the folder holds.
pub(crate) struct ForgetBatches<F> {
    batch: Vec<FileKey>,
    forget: F,
    /// What stopped the walk: a batch that could not be forgotten.
    failed: Option<StoreError>,
}

impl<F> ForgetBatches<F>
where
    F: FnMut(&mut Vec<FileKey>) -> Result<ControlFlow<()>, StoreError>,
{
    /// `forget` takes a full batch, leaves it empty, and says whether the walk goes on.
    pub(crate) fn new(forget: F) -> ForgetBatches<F> {
        ForgetBatches {
            batch: Vec::with_capacity(FORGET_BATCH),
            forget,
            failed: None,
        }
    }

    /// Adds `key`, forgetting the batch once full; breaks when that failed (see
    /// [`ForgetBatches::check`]) or the forgetting function broke.
    pub(crate) fn push(&mut self, key: FileKey) -> ControlFlow<()> {
        self.batch.push(key);
        if self.batch.len() < FORGET_BATCH {
            return ControlFlow::Continue(());
        }
        match (self.forget)(&mut self.batch) {
            Ok(flow) => flow,
            Err(err) => {
                self.failed = Some(err);
                ControlFlow::Break(())
            }
        }
    }

    /// After a walk: the error of a batch that could not be forgotten, if one stopped it.
    pub(crate) fn check(&mut self) -> Result<(), StoreError> {
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Forgets what is left after the last walk.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        self.check()?;
        if !self.batch.is_empty() {
            let _ = (self.forget)(&mut self.batch)?;
        }
        Ok(())
    }
}

/// Step 1: the configured folder holding `path`, and the path inside it (`""` for the
/// folder itself).
fn locate(config: &Config, path: &Path) -> Result<(String, String), String> {
    let folder = config
        .folder_holding(path)
        .ok_or_else(|| format!("{} is in no configured folder", path.display()))?;
    let parts: Vec<String> = path
        .strip_prefix(&folder.path)
        .expect("the folder holding a path is a prefix of it")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok((folder.path.to_string_lossy().into_owned(), parts.join("/")))
}

/// Step 2: hands `select` the ledger key of the file `rel` of `folder`, or of every file
/// under it, until it breaks; whether it broke.
fn under(
    store: &Store,
    folder: &str,
    rel: &str,
    mut select: impl FnMut(FileKey) -> ControlFlow<()>,
) -> Result<bool, StoreError> {
    let file = FileKey::new(folder, rel);
    if !rel.is_empty() && store.ledger_get(&file)?.is_some() && select(file).is_break() {
        return Ok(true);
    }
    // `rel/`, not `rel`: a directory `sub` holds `sub/x.csv`, not `subway.csv` beside it.
    let inside = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    };
    let mut stopped = false;
    store.visit_files(folder, &inside, FilePick::Uploaded, |path| {
        let flow = select(FileKey::new(folder, path));
        stopped = flow.is_break();
        flow
    })?;
    Ok(stopped)
}

fn folder_named<'a>(config: &'a Config, path: &Path) -> Result<&'a FolderConfig, String> {
    config
        .folders
        .iter()
        .find(|folder| folder.path == path)
        .ok_or_else(|| format!("{} is not a configured folder", path.display()))
}

/// Prints `upsync ls` as the files come: a line each (upload time in UTC, size, local
/// path, remote name) and a count, or the JSON array a list of [`Uploaded`] serializes to
/// (pretty), written a file at a time. The files come from a daemon's [`ListLine`]s
/// ([`ListPrinter::line`]) or from a walk of the state database ([`ListPrinter::file`],
/// then [`ListPrinter::walked`]). A reader that goes away (a closed pipe) stops the list
/// quietly.
pub struct ListPrinter<W: Write> {
    out: W,
    json: bool,
    files: u64,
    /// The list's end came: the daemon's end line, or the walk's end.
    ended: bool,
    /// Writing failed otherwise than on a closed pipe.
    failed: Option<io::Error>,
    /// The reader went away.
    closed: bool,
}

impl<W: Write> ListPrinter<W> {
    pub fn new(out: W, json: bool) -> Self {
        ListPrinter {
            out,
            json,
            files: 0,
            ended: false,
            failed: None,
            closed: false,
        }
    }

    /// Prints one file; breaks when the output cannot take more.
    pub fn file(&mut self, file: &Uploaded) -> ControlFlow<()> {
        match self.write_file(file) {
            Ok(()) => {
                self.files += 1;
                ControlFlow::Continue(())
            }
            Err(err) => {
                self.stop_on(err);
                ControlFlow::Break(())
            }
        }
    }

    /// Takes one line of a daemon's list; breaks at its end or when the output cannot
    /// take more. A line saying the list failed, or one that is not a list line, is an
    /// error.
    pub fn line(&mut self, line: &[u8]) -> Result<ControlFlow<()>, String> {
        let line: ListLine = match serde_json::from_slice(line) {
            Ok(line) => line,
            // A daemon started from an upsync before lists were streamed answers one array.
            Err(_) if self.files == 0 && line.starts_with(b"[") => {
                return Err("the running daemon answers `ls` as an older upsync did: \
                            restart it (it runs the binary it was started from)"
                    .into());
            }
            Err(err) => return Err(format!("malformed list line from the daemon: {err}")),
        };
        match line {
            ListLine::File(file) => Ok(self.file(&file)),
            ListLine::End { files } if files == self.files => {
                self.ended = true;
                Ok(ControlFlow::Break(()))
            }
            ListLine::End { files } => Err(format!(
                "the daemon listed {files} files but {} arrived",
                self.files
            )),
            ListLine::Failed(reason) => {
                Err(format!("the daemon could not list them all: {reason}"))
            }
        }
    }

    /// The walk of the state database handed on every file.
    pub fn walked(&mut self) {
        self.ended = true;
    }

    /// Ends the list: its count, or the array's end. An error if the list stopped short
    /// (not for a reader that went away) or could not be written.
    pub fn finish(mut self) -> Result<(), String> {
        if !self.closed && self.failed.is_none() {
            if !self.ended {
                return Err(format!(
                    "the daemon's list broke off after {} files",
                    self.files
                ));
            }
            if let Err(err) = self.write_end() {
                self.stop_on(err);
            }
        }
        match self.failed {
            Some(err) => Err(format!("cannot write to standard output: {err}")),
            None => Ok(()),
        }
    }

    fn write_file(&mut self, file: &Uploaded) -> io::Result<()> {
        if self.json {
            // As serde_json prints an array: each element on lines of its own, indented.
            let element = serde_json::to_string_pretty(file).expect("a file always serializes");
            let lead = if self.files == 0 { "[\n  " } else { ",\n  " };
            write!(self.out, "{lead}{}", element.replace('\n', "\n  "))
        } else {
            let at = crate::queue::from_ms(file.uploaded_at_ms);
            writeln!(
                self.out,
                "{}  {:>10}  {}  ->  {}",
                humantime::format_rfc3339_seconds(at),
                bytesize::ByteSize(file.size).to_string(),
                file.path,
                file.remote
            )
        }
    }

    fn write_end(&mut self) -> io::Result<()> {
        match (self.json, self.files) {
            (true, 0) => writeln!(self.out, "[]")?,
            (true, _) => write!(self.out, "\n]\n")?,
            (false, files) => writeln!(self.out, "{files} file(s) uploaded")?,
        }
        self.out.flush()
    }

    fn stop_on(&mut self, err: io::Error) {
        if err.kind() == io::ErrorKind::BrokenPipe {
            self.closed = true;
        } else {
            self.failed = Some(err);
        }
    }
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

        // A file selects itself, not a file whose name it begins.
        let fp = Fingerprint::read(&dir.path().join("a/sub/x.csv")).unwrap();
        for rel in ["subway.csv", "subway.csv.bak", "subway.csv/inner"] {
            store
                .record_uploaded(&FileKey::new(&a, rel), &fp, "remote", None)
                .unwrap();
        }
        let file = ForgetRequest {
            paths: vec![dir.path().join("a/subway.csv")],
        };
        assert_eq!(forget(&config, &store, &file).unwrap().forgotten, 2);
        let left: Vec<String> = list(&config, &store, &ListRequest::default())
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            left,
            vec![format!("{a}/subway.csv.bak"), format!("{b}/n.csv")]
        );
    }

    #[test]
    fn a_large_directory_is_forgotten_a_batch_at_a_time_with_the_counts_after_each() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config.state_dir).unwrap();
        let a = dir.path().join("a").to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.path().join("a/big")).unwrap();
        std::fs::write(dir.path().join("a/big/a-kept.csv"), "x").unwrap();
        let fp = Fingerprint::read(&dir.path().join("a/big/a-kept.csv")).unwrap();
        let files = 2 * FORGET_BATCH + 3;
        for n in 0..files {
            let rel = if n == 0 {
                "big/a-kept.csv".to_string()
            } else {
                format!("big/f{n:05}.csv")
            };
            store
                .record_uploaded(&FileKey::new(&a, rel.as_str()), &fp, "remote", None)
                .unwrap();
        }
        store
            .record_uploaded(&FileKey::new(&a, "beside.csv"), &fp, "remote", None)
            .unwrap();
        let located = vec![(a.clone(), "big".to_string())];

        // Stopped after its first batch: that batch is forgotten, whole, and nothing else.
        let mut seen = Vec::new();
        let first = forget_located(&store, &located, |so_far| {
            seen.push(so_far.clone());
            ControlFlow::Break(())
        })
        .unwrap();
        let one_batch = ForgetResponse {
            forgotten: FORGET_BATCH,
            queued: 1,
        };
        assert_eq!((first, seen), (one_batch.clone(), vec![one_batch]));
        let left = |store: &Store| list(&config, store, &ListRequest::default()).unwrap().len();
        assert_eq!(left(&store), files + 1 - FORGET_BATCH);

        // Run to its end: the counts after each batch, the rest forgotten, `beside.csv` kept.
        let mut seen = Vec::new();
        let rest = forget_located(&store, &located, |so_far| {
            seen.push(so_far.forgotten);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(rest.forgotten, files - FORGET_BATCH);
        assert_eq!(rest.queued, 0, "a-kept.csv was queued by the first run");
        assert_eq!(seen, vec![FORGET_BATCH, files - FORGET_BATCH]);
        assert_eq!(left(&store), 1);
        assert_eq!(store.jobs().unwrap().len(), 1, "a-kept.csv, queued once");
    }

    #[test]
    fn a_daemons_answer_to_forget_ends_with_its_counts() {
        let counts = ForgetResponse {
            forgotten: 3,
            queued: 2,
        };
        let line = |line: &ForgetLine| serde_json::to_vec(line).unwrap();
        let mut done = None;
        let progress = ForgetLine::Progress(ForgetResponse::default());
        assert!(
            forget_answer(&line(&progress), &mut done)
                .unwrap()
                .is_continue()
        );
        assert_eq!(done, None);
        let end = ForgetLine::Done(counts.clone());
        assert!(forget_answer(&line(&end), &mut done).unwrap().is_break());
        assert_eq!(done, Some(counts.clone()));

        // A daemon from before the lines answers with its counts alone.
        let mut done = None;
        let older = serde_json::to_vec(&counts).unwrap();
        assert!(forget_answer(&older, &mut done).unwrap().is_break());
        assert_eq!(done, Some(counts));

        let failed = ForgetLine::Failed("the disk is full".into());
        let failed = forget_answer(&line(&failed), &mut None).unwrap_err();
        assert!(failed.contains("the disk is full"), "{failed}");
        assert!(
            forget_answer(b"<html>", &mut None)
                .unwrap_err()
                .contains("malformed")
        );
    }

    fn uploaded(n: u64) -> Uploaded {
        Uploaded {
            path: format!("/data/in/f{n}.csv"),
            folder: "/data/in".into(),
            remote: format!("in/f{n}.csv"),
            size: n * 1_000,
            uploaded_at_ms: 1_764_547_200_000 + n,
        }
    }

    /// What a printer prints for `files` taken one by one from a walk.
    fn printed(json: bool, files: &[Uploaded]) -> String {
        let mut out = Vec::new();
        let mut printer = ListPrinter::new(&mut out, json);
        for file in files {
            assert!(printer.file(file).is_continue());
        }
        printer.walked();
        printer.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_list_printed_file_by_file_reads_as_the_whole_list_printed_at_once() {
        for count in [0, 1, 3] {
            let files: Vec<Uploaded> = (0..count).map(uploaded).collect();
            let whole = serde_json::to_string_pretty(&files).unwrap() + "\n";
            assert_eq!(printed(true, &files), whole, "{count} files as JSON");
            let text = printed(false, &files);
            assert_eq!(text.lines().count(), count as usize + 1, "{text}");
            assert!(
                text.ends_with(&format!("{count} file(s) uploaded\n")),
                "{text}"
            );
        }
        let one = printed(false, &[uploaded(2)]);
        assert_eq!(
            one.lines().next().unwrap(),
            "2025-12-01T00:00:00Z     2.0 KiB  /data/in/f2.csv  ->  in/f2.csv"
        );
    }

    /// Feeds `lines` to a printer as a daemon's list; what it printed, or its error.
    fn from_daemon(lines: &[ListLine]) -> Result<String, String> {
        let mut out = Vec::new();
        let mut printer = ListPrinter::new(&mut out, false);
        for line in lines {
            if printer.line(&serde_json::to_vec(line).unwrap())?.is_break() {
                break;
            }
        }
        printer.finish()?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_daemons_list_is_whole_only_with_its_end_line_and_the_count_it_gives() {
        let files = [ListLine::File(uploaded(1)), ListLine::File(uploaded(2))];
        let whole = [
            files[0].clone(),
            files[1].clone(),
            ListLine::End { files: 2 },
        ];
        assert!(
            from_daemon(&whole)
                .unwrap()
                .ends_with("\n2 file(s) uploaded\n")
        );

        let cut = from_daemon(&files).unwrap_err();
        assert!(cut.contains("broke off after 2 files"), "{cut}");
        let miscounted = [files[0].clone(), ListLine::End { files: 2 }];
        let miscounted = from_daemon(&miscounted).unwrap_err();
        assert!(
            miscounted.contains("listed 2 files but 1 arrived"),
            "{miscounted}"
        );
        let failed = [
            files[0].clone(),
            ListLine::Failed("the database broke".into()),
        ];
        let failed = from_daemon(&failed).unwrap_err();
        assert!(failed.contains("the database broke"), "{failed}");
        let mut printer = ListPrinter::new(Vec::new(), false);
        assert!(
            printer
                .line(b"<html>")
                .unwrap_err()
                .contains("malformed list line")
        );
    }

    /// A writer whose reader went away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_goes_away_stops_the_list_quietly() {
        let mut printer = ListPrinter::new(ClosedPipe, false);
        assert!(printer.file(&uploaded(1)).is_break());
        assert_eq!(printer.finish(), Ok(()));
    }
}
