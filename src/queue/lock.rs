//! The exclusive lock on `state_dir/upsync.lock` that keeps two daemons off one state dir.
//!
//! `flock(2)` rather than a pid file: the kernel drops the lock when the process dies, even
//! on `kill -9`, so a crash never leaves a stale lock behind. flock locks belong to the open
//! file description, so a second `open` of the same file, even in the same process, is
//! refused as well.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::error::StoreError;

pub const LOCK_FILE: &str = "upsync.lock";

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

impl StateLock {
    /// Takes the lock without waiting, creating the state dir if it is missing; fails with
    /// [`StoreError::Locked`] when another open file description holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| {
            StoreError::io("create the state directory", state_dir, state_dir, source)
        })?;
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::io("create the lock file", &path, state_dir, source))?;
        match try_lock(&file) {
            Ok(true) => Ok(StateLock { file }),
            Ok(false) => Err(StoreError::Locked {
                state_dir: state_dir.to_path_buf(),
                lock_path: path,
            }),
            Err(err) => Err(StoreError::io("lock", &path, state_dir, err)),
        }
    }
}

impl StateLock {
    /// Whether `state_dir`'s lock file is still the one this lock holds. Not when the
    /// state dir was removed (or moved away, or replaced) while the lock was held: its
    /// database then goes with it, and another upsync could take a new lock there.
    pub fn is_in_place(&self, state_dir: &Path) -> bool {
        let (Ok(held), Ok(there)) = (
            self.file.metadata(),
            std::fs::metadata(state_dir.join(LOCK_FILE)),
        ) else {
            return false;
        };
        held.dev() == there.dev() && held.ino() == there.ino()
    }

    /// Takes the lock of a state dir some upsync has used, through a read-only open of its
    /// lock file, without waiting and without creating anything: `None` when there is no
    /// lock file (no upsync ever opened a database there), [`StoreError::Locked`] when
    /// another process holds it. For a reader that needs the database still while it
    /// reads it but must not create a state dir where none is, nor need write access.
    pub fn hold_existing(state_dir: &Path) -> Result<Option<StateLock>, StoreError> {
        let path = state_dir.join(LOCK_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::io(
                    "open the lock file",
                    &path,
                    state_dir,
                    source,
                ));
            }
        };
        match try_lock(&file) {
            Ok(true) => Ok(Some(StateLock { file })),
            Ok(false) => Err(StoreError::Locked {
                state_dir: state_dir.to_path_buf(),
                lock_path: path,
            }),
            Err(err) => Err(StoreError::io("lock", &path, state_dir, err)),
        }
    }
}

/// Whether another open file description holds an flock on `path` (sled locks its data
/// file so); a file that does not exist is not held. The probe's own lock, if it got one,
/// ends with the call.
pub(super) fn is_held(path: &Path) -> std::io::Result<bool> {
    match File::open(path) {
        Ok(file) => try_lock(&file).map(|taken| !taken),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Takes an exclusive flock on `file` without waiting: `false` when another open file
/// description holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let first = StateLock::acquire(dir.path()).expect("the first lock is free");
        let err = StateLock::acquire(dir.path()).expect_err("the lock is already held");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("upsync.lock"), "{err}");
        drop(first);
        StateLock::acquire(dir.path()).expect("dropping the first lock released it");
    }

    #[test]
    fn a_lock_is_in_place_until_its_state_dir_is_removed_or_replaced() {
        let parent = tempfile::tempdir().expect("a temp dir can be created");
        let state_dir = parent.path().join("state");
        let held = StateLock::acquire(&state_dir).expect("the lock is free");
        assert!(held.is_in_place(&state_dir));
        std::fs::remove_dir_all(&state_dir).expect("remove the state dir");
        assert!(!held.is_in_place(&state_dir), "removed");
        let other = StateLock::acquire(&state_dir).expect("a new state dir is free");
        assert!(!held.is_in_place(&state_dir), "replaced by another one");
        assert!(other.is_in_place(&state_dir));
    }

    #[test]
    fn a_probe_sees_a_lock_held_elsewhere_and_leaves_a_free_file_free() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let path = dir.path().join(LOCK_FILE);
        assert!(!is_held(&path).expect("a missing file can be probed"));
        let held = StateLock::acquire(dir.path()).expect("the lock is free");
        assert!(is_held(&path).expect("the lock file can be probed"));
        drop(held);
        assert!(!is_held(&path).expect("the lock file can be probed"));
        StateLock::acquire(dir.path()).expect("the probe did not keep the lock");
    }
}
