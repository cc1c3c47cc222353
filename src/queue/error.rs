//! What can go wrong with the state database, in words an operator can act on.

use std::path::PathBuf;

use super::job::JobId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A free-form error; kept for callers that wrap their own failures as store errors.
    #[error("{0}")]
    Message(String),

    /// A compaction gave way to another use of the store and was abandoned; the database
    /// is as it was (`compact`).
    #[error("the compaction of the state database gave way to its users")]
    CompactionYielded,

    /// A transaction that may not create pointers met a file with neither a ledger entry
    /// nor a pointer in memory: the pointer of a job another transaction has just
    /// committed, not yet kept. The store runs it again among those that create pointers
    /// (module `pointers`, step 3), so this never leaves the store.
    #[error("a transaction read a new file's pointer before it was kept")]
    PointerUnsettled,

    #[error(
        "another upsync is already running with state_dir {} (lock held on {})",
        state_dir.display(),
        lock_path.display()
    )]
    Locked {
        state_dir: PathBuf,
        lock_path: PathBuf,
    },

    #[error(
        "the state directory {} was removed or replaced while upsync ran, and its record of \
         the uploads with it. upsync stops rather than record into a database no later \
         start would find. A start begins a new one there and sends each file once more \
         (KiFS overwrites it, a Redivis table takes an identical upload as it is); for a \
         Redivis file index table, start once with --rebuild-state instead, which finds the \
         uploads in the table",
        state_dir.display()
    )]
    StateDirGone { state_dir: PathBuf },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot open the state database at {shown}: {detail}. If it is damaged or was written by \
         another program, stop upsync and start it once with `upsync run --rebuild-state -c \
         CONFIG`: that moves the database aside (kept as {shown}.moved-<time>, never deleted) and \
         rebuilds the record of uploaded files from the remotes' listings, so nothing is uploaded \
         twice. (If you move the directory away yourself instead, upsync starts empty and uploads \
         every file again.)",
        shown = path.display()
    )]
    Open { path: PathBuf, detail: String },

    #[error(
        "the state database at {} has format version {found:?}, but this upsync only \
         understands version {expected}; use the upsync release that wrote it, or move the \
         directory away to start a new one",
        path.display()
    )]
    UnknownFormat {
        path: PathBuf,
        found: String,
        expected: u32,
    },

    #[error(
        "no space left on device while writing the state database in {}; free some space \
         and restart upsync (nothing acknowledged so far is lost)",
        state_dir.display()
    )]
    NoSpace { state_dir: PathBuf },

    #[error("the state database in {} failed: {detail}", state_dir.display())]
    Database { state_dir: PathBuf, detail: String },

    #[error(
        "corrupt record in the state database (tree `{tree}`, key {key}): {detail}; move the \
         state directory away to rebuild it"
    )]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },

    /// The job was removed (uploaded, or its file vanished) before this call.
    #[error("job {0} is not in the queue (it was completed or dropped)")]
    NoSuchJob(JobId),

    #[error("cannot queue {0}")]
    InvalidKey(String),
}

impl StoreError {
    /// Maps a sled error, recognising a full disk wherever sled reports it.
    pub(crate) fn from_sled(state_dir: &std::path::Path, err: sled::Error) -> StoreError {
        if let sled::Error::Io(io) = &err
            && is_no_space(io)
        {
            return StoreError::NoSpace {
                state_dir: state_dir.to_path_buf(),
            };
        }
        StoreError::Database {
            state_dir: state_dir.to_path_buf(),
            detail: err.to_string(),
        }
    }

    /// An I/O error while `action` on `path`, recognising a full disk.
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
        state_dir: &std::path::Path,
        source: std::io::Error,
    ) -> StoreError {
        if is_no_space(&source) {
            return StoreError::NoSpace {
                state_dir: state_dir.to_path_buf(),
            };
        }
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the error says the disk (or the user's quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace { .. })
    }
}

pub(crate) fn is_no_space(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::StorageFull
        || err.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_full_disk_is_named_plainly() {
        let err = StoreError::from_sled(
            Path::new("/var/lib/upsync"),
            sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert!(err.is_no_space());
        assert_eq!(
            err.to_string(),
            "no space left on device while writing the state database in /var/lib/upsync; \
             free some space and restart upsync (nothing acknowledged so far is lost)"
        );
    }

    #[test]
    fn a_full_disk_during_plain_file_io_is_named_plainly_too() {
        let state_dir = Path::new("/var/lib/upsync");
        let full = StoreError::io(
            "create the lock file",
            &state_dir.join("upsync.lock"),
            state_dir,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(full.is_no_space(), "{full}");
        let denied = StoreError::io(
            "create the lock file",
            &state_dir.join("upsync.lock"),
            state_dir,
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(
            denied.to_string(),
            format!(
                "cannot create the lock file /var/lib/upsync/upsync.lock: {}",
                std::io::Error::from_raw_os_error(libc::EACCES)
            )
        );
    }

    #[test]
    fn other_sled_errors_name_the_state_dir() {
        let err = StoreError::from_sled(
            Path::new("/var/lib/upsync"),
            sled::Error::Unsupported("something odd".into()),
        );
        assert!(!err.is_no_space());
        let text = err.to_string();
        assert!(text.contains("/var/lib/upsync"), "{text}");
        assert!(text.contains("something odd"), "{text}");
    }

    #[test]
    fn the_lock_error_names_the_dir_and_the_lock_file() {
        let err = StoreError::Locked {
            state_dir: "/var/lib/upsync".into(),
            lock_path: "/var/lib/upsync/upsync.lock".into(),
        };
        assert_eq!(
            err.to_string(),
            "another upsync is already running with state_dir /var/lib/upsync \
             (lock held on /var/lib/upsync/upsync.lock)"
        );
    }
}
