//! Spool folders (`after_upload = "delete"` or `"move"`): a file leaves the folder once the
//! remote confirmed it.
//!
//! "Confirmed" is the ledger holding the file's current fingerprint: the ledger is written
//! only when the remote has the file whole (for Redivis, when its import completed). So
//! the action is decided from the ledger and the file alone, and is idempotent across
//! crashes: a file whose upload was recorded just before a crash is found by the start-up
//! scan, still matching its entry, and handled then. For one file ([`Spool::settle`]):
//!
//! 1. Read the file's fingerprint; a file already gone is done.
//! 2. Ask the ledger whether that exact version is uploaded; if not (not yet, or changed
//!    since its upload), leave the file alone.
//! 3. Delete it, or move it to `archive_dir` under its relative path (creating the
//!    directories), by a rename that keeps its inode. A rename never replaces a file the
//!    archive holds already (an earlier file of the same name, which may be the only copy
//!    of that version left): the file takes the first free name `stem.N.ext` instead.
//! 4. For a move, read the fingerprint of the moved file again: if it differs (the file
//!    was written between steps 1 and 3), move it back, to be uploaded in its new version.
//!
//! The folder's watcher runs this when a scan finds a file already uploaded, and, every
//! [`SPOOL_CHECK`], for the files it offered recently (so a file leaves soon after its
//! upload, without an event) until each one left or failed to: a delete or move that
//! fails (an archive on another file system, a full or read-only one) is tried again by
//! the next scan (the periodic rescan, the start-up scan), not every second.
//!
//! Such failures are counted, each file's own line at debug, and
//! [`Spool::report_failures`] logs them as one warning (a count and one example) after
//! each scan: a folder of 10,000 files the daemon cannot write would otherwise log 10,000
//! warnings every rescan, and journald drops lines past its rate limit, the daemon's other
//! warnings with them. [`Spool::write_problem`] says once, when the folder is first
//! watched, that the daemon cannot write the folder or its archive at all (under the
//! shipped systemd unit every path but the state directory is read-only).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Sink;
use crate::config::AfterUpload;
use crate::fingerprint::Fingerprint;
use crate::queue::FileKey;

/// How often the files offered recently are checked for a confirmed upload.
pub const SPOOL_CHECK: Duration = Duration::from_secs(1);

/// What [`Spool::settle`] did with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Deleted or moved away.
    Removed,
    /// Not confirmed in this version (or changed during its move): left in place.
    Left,
    /// Confirmed, but deleting or moving it failed (counted for
    /// [`Spool::report_failures`]): left in place, for the next
    /// scan to try again rather than every [`SPOOL_CHECK`].
    Failed,
    /// Not there.
    Gone,
}

/// A spool folder's action.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    folder_key: String,
    action: Action,
    failures: FailureTally,
}

/// The deletes or moves that failed since the last [`Spool::report_failures`].
#[derive(Debug, Clone, Default)]
struct FailureTally {
    count: u64,
    /// The first file that failed, and why.
    example: Option<(PathBuf, String)>,
}

#[derive(Debug, Clone)]
enum Action {
    Delete,
    Move(PathBuf),
}

impl Spool {
    /// The spool of the folder at `root`, or `None` when its files stay.
    pub fn new(root: &Path, after_upload: &AfterUpload) -> Option<Spool> {
        let action = match after_upload {
            AfterUpload::Keep => return None,
            AfterUpload::Delete => Action::Delete,
            AfterUpload::Move(dir) => Action::Move(dir.clone()),
        };
        Some(Spool {
            root: root.to_path_buf(),
            folder_key: root.to_string_lossy().into_owned(),
            action,
            failures: FailureTally::default(),
        })
    }

    /// Why this process cannot remove the folder's files or move them into its archive
    /// (the folder, or the archive or its nearest existing parent, not writable: a
    /// read-only mount, permissions), with the fix, for a warning when the folder is first
    /// watched; `None` when it can.
    pub fn write_problem(&self) -> Option<String> {
        let mut needed = vec![self.root.as_path()];
        if let Action::Move(archive) = &self.action {
            needed.push(archive);
        }
        let problems: Vec<String> = needed
            .iter()
            .filter_map(|dir| {
                let (at, result) = writable_or_creatable(dir)?;
                let error = result.err()?;
                let checked = if at == *dir {
                    String::new()
                } else {
                    format!(", to be created in \"{}\"", at.display())
                };
                Some(format!("\"{}\"{checked} ({error})", dir.display()))
            })
            .collect();
        if problems.is_empty() {
            return None;
        }
        let paths: Vec<String> = needed.iter().map(|dir| dir.display().to_string()).collect();
        Some(format!(
            "the daemon cannot write {}: the spool folder's files are uploaded and stay in it. \
             Under the shipped systemd unit every path but the state directory is read-only: \
             add ReadWritePaths={} in a drop-in (systemctl edit upsync; the paths must exist), \
             otherwise give the daemon's user write permission there; then restart",
            problems.join(" and "),
            paths.join(" ")
        ))
    }

    /// Logs the deletes and moves that failed since the last call as one warning, a count
    /// and one example, and starts counting again.
    pub fn report_failures(&mut self) {
        let tally = std::mem::take(&mut self.failures);
        let Some((example, error)) = tally.example else {
            return;
        };
        warn!(
            folder = %self.root.display(),
            files = tally.count,
            example = %example.display(),
            error = %error,
            "{} uploaded file(s) cannot be removed from the spool folder (archive_dir must be on \
             the same file system, and the folder and archive writable by the daemon); they stay \
             until the next scan of the folder tries again",
            tally.count
        );
    }

    /// Why no file of the folder can move into its archive (on another file system), for
    /// a warning when the folder is first watched; `None` for a deleting spool.
    pub fn archive_problem(&self) -> Option<String> {
        match &self.action {
            Action::Delete => None,
            Action::Move(archive) => {
                crate::config::archive_on_another_file_system(&self.root, archive)
            }
        }
    }

    /// Steps 1 to 4 for the file `rel`.
    pub fn settle(&mut self, rel: &str, sink: &dyn Sink) -> Settled {
        let path = self.root.join(rel);
        let fingerprint = match Fingerprint::read(&path) {
            Ok(fingerprint) => fingerprint,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Settled::Gone,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cannot stat a spooled file");
                return Settled::Left;
            }
        };
        let key = FileKey::new(&self.folder_key, rel);
        if !sink.is_uploaded(&key, &fingerprint) {
            return Settled::Left;
        }
        let done = match &self.action {
            Action::Delete => std::fs::remove_file(&path).map(|()| true),
            Action::Move(archive) => move_checked(&path, &archive.join(rel), &fingerprint),
        };
        match done {
            Ok(true) => {
                info!(path = %path.display(), "uploaded and confirmed; removed from the spool folder");
                Settled::Removed
            }
            Ok(false) => Settled::Left,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settled::Gone,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cannot remove an uploaded file from the spool folder");
                self.failures.count += 1;
                self.failures.example.get_or_insert((path, e.to_string()));
                Settled::Failed
            }
        }
    }
}

/// Whether this process may write `dir`, or, when it does not exist yet, its nearest
/// existing ancestor (where it would be created): that ancestor and the answer. `None`
/// when nothing on the path can be looked at (reported on its own).
fn writable_or_creatable(dir: &Path) -> Option<(&Path, std::io::Result<()>)> {
    let (existing, _) = crate::config::nearest_existing(dir)?;
    Some((existing, may_write(existing)))
}

/// `faccessat(W_OK, AT_EACCESS)`: the effective user's right to write `path`, which also
/// answers EROFS for a read-only mount (a systemd unit's `ProtectSystem=strict`) whoever
/// owns it.
fn may_write(path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How many numbered names a move tries beside a taken one before it leaves the file.
const ARCHIVE_NAME_TRIES: u32 = 10_000;

/// Steps 3 and 4 of a move: false when the file changed meanwhile and was moved back.
fn move_checked(from: &Path, to: &Path, expected: &Fingerprint) -> std::io::Result<bool> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let to = move_to_free_name(from, to)?;
    match Fingerprint::read(&to) {
        // The rename itself moves the change time: size, mtime and inode tell a write.
        Ok(moved) if moved.is_version_of(&expected.without_ctime()) => Ok(true),
        _ => {
            std::fs::rename(&to, from)?;
            Ok(false)
        }
    }
}

/// Renames `from` to `to`, or to the first numbered name beside it that is free; the name
/// it took. Each try is one rename that fails on a taken name, so a file that appears in
/// the archive meanwhile is never replaced either.
fn move_to_free_name(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    for n in 0..=ARCHIVE_NAME_TRIES {
        let name = if n == 0 {
            to.to_path_buf()
        } else {
            numbered(to, n)
        };
        match crate::rename::without_replacing(from, &name) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
            Ok(()) => {
                if n > 0 {
                    info!(path = %name.display(), "the archive holds a file of this name already; moved under a numbered name");
                }
                return Ok(name);
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} and {ARCHIVE_NAME_TRIES} numbered names beside it are taken in the archive",
            to.display()
        ),
    ))
}

/// `dir/stem.N.ext` for `dir/stem.ext` (`dir/name.N` for a name without an extension), so
/// the archived file keeps its extension.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{n}"),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use crate::test_logs::capture_logs;
    use crate::watch::SinkOffer;

    /// A ledger of fingerprints by relative path.
    #[derive(Default)]
    struct Ledger(Mutex<HashMap<String, Fingerprint>>);

    impl Ledger {
        fn record(&self, root: &Path, rel: &str) {
            let fingerprint = Fingerprint::read(&root.join(rel)).expect("the file exists");
            self.0
                .lock()
                .expect("not poisoned")
                .insert(rel.into(), fingerprint);
        }
    }

    impl Sink for Ledger {
        fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool {
            self.0.lock().expect("not poisoned").get(&key.rel) == Some(fingerprint)
        }
        fn offer(&self, _: &FileKey, _: &Fingerprint) -> SinkOffer {
            SinkOffer::Known
        }
    }

    #[test]
    fn a_confirmed_file_is_deleted_and_an_unconfirmed_or_changed_one_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for rel in ["up.csv", "pending.csv", "changed.csv"] {
            std::fs::write(root.join(rel), b"v1").expect("write");
        }
        let ledger = Ledger::default();
        ledger.record(root, "up.csv");
        ledger.record(root, "changed.csv");
        std::fs::write(root.join("changed.csv"), b"version 2").expect("rewrite");
        let mut spool = Spool::new(root, &AfterUpload::Delete).expect("a spool");

        assert_eq!(spool.settle("up.csv", &ledger), Settled::Removed);
        assert_eq!(spool.settle("pending.csv", &ledger), Settled::Left);
        assert_eq!(spool.settle("changed.csv", &ledger), Settled::Left);
        assert_eq!(spool.settle("up.csv", &ledger), Settled::Gone, "idempotent");
        assert!(!root.join("up.csv").exists());
        assert_eq!(
            std::fs::read(root.join("changed.csv")).expect("kept"),
            b"version 2"
        );
        assert!(root.join("pending.csv").exists());
    }

    #[test]
    fn a_confirmed_file_moves_under_its_relative_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("out");
        let archive = dir.path().join("archive");
        std::fs::create_dir_all(root.join("a/b")).expect("dirs");
        std::fs::write(root.join("a/b/c.csv"), b"data").expect("write");
        let ledger = Ledger::default();
        ledger.record(&root, "a/b/c.csv");
        let mut spool = Spool::new(&root, &AfterUpload::Move(archive.clone())).expect("a spool");

        assert_eq!(spool.settle("a/b/c.csv", &ledger), Settled::Removed);
        assert_eq!(
            std::fs::read(archive.join("a/b/c.csv")).expect("moved"),
            b"data"
        );
        assert!(!root.join("a/b/c.csv").exists());
        assert!(Spool::new(&root, &AfterUpload::Keep).is_none());
    }

    #[test]
    fn a_move_never_replaces_a_file_the_archive_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("out");
        let archive = dir.path().join("archive");
        std::fs::create_dir_all(&root).expect("dirs");
        let ledger = Ledger::default();
        let mut spool = Spool::new(&root, &AfterUpload::Move(archive.clone())).expect("a spool");
        for (version, archived) in [("v1", "a.csv"), ("v2", "a.1.csv"), ("v3", "a.2.csv")] {
            std::fs::write(root.join("a.csv"), version).expect("write");
            ledger.record(&root, "a.csv");
            assert_eq!(spool.settle("a.csv", &ledger), Settled::Removed);
            assert_eq!(
                std::fs::read(archive.join(archived)).expect("archived"),
                version.as_bytes()
            );
        }
        std::fs::write(root.join("README"), "x").expect("write");
        std::fs::write(archive.join("README"), "kept").expect("write");
        ledger.record(&root, "README");
        assert_eq!(spool.settle("README", &ledger), Settled::Removed);
        assert_eq!(
            std::fs::read(archive.join("README.1")).expect("archived"),
            b"x"
        );
        assert_eq!(
            std::fs::read(archive.join("README")).expect("kept"),
            b"kept"
        );
    }

    #[test]
    fn a_writable_folder_and_archive_to_be_created_raise_no_write_problem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("out");
        std::fs::create_dir_all(&root).expect("dirs");
        let archive = dir.path().join("not/yet/archive");
        for action in [AfterUpload::Delete, AfterUpload::Move(archive)] {
            let spool = Spool::new(&root, &action).expect("a spool");
            assert_eq!(spool.write_problem(), None, "{action:?}");
        }
    }

    #[test]
    fn a_folder_or_archive_the_process_cannot_write_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            println!("SKIPPED: permissions do not stop root (tests/spool.rs runs it as nobody)");
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (root, locked) = (dir.path().join("out"), dir.path().join("locked"));
        std::fs::create_dir_all(&root).expect("dirs");
        std::fs::create_dir_all(&locked).expect("dirs");
        let read_only = std::fs::Permissions::from_mode(0o555);
        std::fs::set_permissions(&locked, read_only).expect("chmod");
        let archive = locked.join("archive");
        let spool = Spool::new(&root, &AfterUpload::Move(archive.clone())).expect("a spool");
        let problem = spool
            .write_problem()
            .expect("the archive cannot be created");
        assert!(
            problem.contains(&format!(
                "\"{}\", to be created in \"{}\" (Permission denied",
                archive.display(),
                locked.display()
            )),
            "{problem}"
        );
        assert!(
            problem.contains(&format!(
                "ReadWritePaths={} {}",
                root.display(),
                archive.display()
            )),
            "{problem}"
        );
        assert!(
            !problem.contains(&format!("\"{}\" (", root.display())),
            "{problem}"
        );

        let spool = Spool::new(&locked, &AfterUpload::Delete).expect("a spool");
        let problem = spool.write_problem().expect("the folder cannot be written");
        assert!(
            problem.contains(&format!("\"{}\" (", locked.display())),
            "{problem}"
        );
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn failed_moves_are_one_warning_per_report_with_a_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("out");
        std::fs::create_dir_all(&root).expect("dirs");
        // A file where the archive's directory would be: every move fails, root or not.
        let archive = dir.path().join("archive");
        std::fs::write(&archive, b"not a directory").expect("write");
        let ledger = Ledger::default();
        let names: Vec<String> = (0..5).map(|i| format!("f{i}.csv")).collect();
        for name in &names {
            std::fs::write(root.join(name), name).expect("write");
            ledger.record(&root, name);
        }
        let mut spool = Spool::new(&root, &AfterUpload::Move(archive)).expect("a spool");
        let (logs, _guard) = capture_logs(tracing::Level::INFO);

        for name in &names {
            assert_eq!(spool.settle(name, &ledger), Settled::Failed);
        }
        spool.report_failures();
        spool.report_failures();

        let text = logs.text();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{text}");
        assert!(
            warnings[0].contains("5 uploaded file(s) cannot be removed"),
            "{text}"
        );
        assert!(warnings[0].contains("f0.csv"), "{text}");
        assert!(names.iter().all(|name| root.join(name).exists()));
    }
}
