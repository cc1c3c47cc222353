//! The database's files: creating a database so that a damaged one is never taken for a
//! new one, checking its format marker, opening sled with the configuration every open
//! uses, and clearing what sled left unfinished.

use std::path::Path;

use super::{CLEAN_CLOSE_KEY, FORMAT_KEY, FORMAT_VERSION, StoreError, counts, lock, upgrade};

/// The length of every file under `dir`, however deep: what a database directory takes on
/// disk (also read by the benchmark while a daemon holds the database).
pub fn files_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            files_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Opens the database at `path`, creating it first if it does not exist.
///
/// A new database is built in `db.new`, stamped with the format marker, flushed, and only
/// then renamed to `db`. So an existing `db` without the marker is never a half-created
/// one: it is damaged or someone else's. That matters because sled reads a data file full
/// of garbage as an empty database instead of failing; the missing marker is how such a
/// loss of the queue and ledger gets noticed instead of silently starting over.
pub(super) fn open_db(path: &Path) -> Result<sled::Db, FormatError> {
    if !path.exists() {
        create_db(path)?;
    }
    let db = open_sled(path)?;
    let found = check_format(&db, path)?;
    upgrade::upgrade(&db, found)?;
    Ok(db)
}

/// How much of the database sled keeps decoded in memory (its page cache, counted in bytes
/// of the pages on disk; decoded they take about twice that). sled's default (1 GB) lets the
/// cache grow with the ledger: every page a start-up scan or a status count touches stays
/// resident, about 350 bytes per file. The daemon's working set is the few pages of the job
/// trees and the ledger pages of the directory being scanned or appended to; pages read
/// once per scan come back from the operating system's page cache. A restart over 200,000
/// files took as long with 8 MiB as with 16 MiB, and 20 MB less memory.
pub(super) const CACHE_CAPACITY: u64 = 8 << 20;

/// The sled configuration of every database this module opens: no flusher thread and a
/// bounded cache (see "No background work" in the module doc).
pub(super) fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(CACHE_CAPACITY)
}

/// The file of a sled database directory that an open sled instance holds an flock on.
pub(super) const SLED_LOCKED_FILE: &str = "db";

/// Opens sled, waiting briefly while its file lock is still held. `upsync.lock` already
/// keeps other processes out, so a held lock can only be a sled instance of this process
/// that was just dropped (as in [`create_db`]) and whose threads have not let go yet. sled
/// reports a held lock only as the text of an `Other` I/O error, so the lock is probed
/// first ([`lock::is_held`]), by its errno.
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let locked = path.join(SLED_LOCKED_FILE);
    // A probe that cannot even open the file leaves the answer to sled's own open.
    while lock::is_held(&locked).unwrap_or(false) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    remove_unfinished_snapshots(path).map_err(sled::Error::Io)?;
    sled_config(path).open()
}

/// The suffix sled gives a snapshot file while it writes it; it renames the file without
/// it once the file is whole and synced.
pub(super) const UNFINISHED_SNAPSHOT_SUFFIX: &str = ".generating";

/// Removes the snapshot files sled began and never finished (a full disk, or a kill, while
/// it wrote one: every open and every close in order writes one). sled 0.34 reads the
/// newest `snap.*` file at open without telling a finished one from one it was still
/// writing, so such a leftover (often empty) sorts after the last whole snapshot and makes
/// every later open fail as corrupt, even once space is back. Without it, sled reads the
/// last whole snapshot and the log written since, which hold everything: an unfinished
/// snapshot only ever sums up that log. Only this process can be opening the database
/// (`upsync.lock`), and [`open_sled`] has waited for its own earlier instances to let go.
fn remove_unfinished_snapshots(db_path: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(db_path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(UNFINISHED_SNAPSHOT_SUFFIX) {
            tracing::info!(file = %entry.path().display(), "removing a snapshot of the state database that was never finished");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn create_db(path: &Path) -> Result<(), FormatError> {
    let fresh = path.with_extension("new");
    let state_dir = path.parent().unwrap_or(path);
    let io_error = |action: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source| FormatError::Store(StoreError::io(action, &at, state_dir, source))
    };
    if fresh.exists() {
        // Left by a crash during an earlier creation; it never held any state.
        std::fs::remove_dir_all(&fresh)
            .map_err(io_error("remove the half-created database", &fresh))?;
    }
    {
        let db = sled_config(&fresh).open()?;
        db.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())?;
        // A new database keeps its counts from the first write on.
        db.insert(counts::COUNTS_KEY, b"1")?;
        // Its counts (none) are right: the first start need not check them.
        db.insert(CLEAN_CLOSE_KEY, b"1")?;
        db.flush()?;
    }
    std::fs::rename(&fresh, path).map_err(io_error("move the new database into place at", path))?;
    // The rename is durable only once the directory holding it is synced.
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync the state directory", state_dir))?;
    Ok(())
}

pub(super) enum FormatError {
    Sled(sled::Error),
    Store(StoreError),
}

impl From<sled::Error> for FormatError {
    fn from(err: sled::Error) -> Self {
        FormatError::Sled(err)
    }
}

/// Accepts a database stamped with [`FORMAT_VERSION`] or an older format this code
/// upgrades; returns its format.
fn check_format(db: &sled::Db, path: &Path) -> Result<u32, FormatError> {
    let known = |found: &[u8]| {
        std::str::from_utf8(found)
            .ok()
            .and_then(|found| found.parse::<u32>().ok())
            .filter(|version| {
                (upgrade::CLAIMED_TREE_FORMAT..=FORMAT_VERSION).contains(version)
                    && found == version.to_string().as_bytes()
            })
    };
    match db.get(FORMAT_KEY)? {
        Some(found) if let Some(version) = known(&found) => Ok(version),
        Some(found) => Err(FormatError::Store(StoreError::UnknownFormat {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: FORMAT_VERSION,
        })),
        None => Err(FormatError::Store(StoreError::Open {
            path: path.to_path_buf(),
            detail: "it has no upsync format marker, so it is damaged (sled reads a corrupt \
                     data file as empty) or was not written by upsync"
                .into(),
        })),
    }
}
