//! Compaction: rewriting the state database into a fresh one that holds only its live
//! data, and swapping it in while the store stays open.
//!
//! # Why
//!
//! sled runs without its flusher thread ("No background work" in the module doc of
//! [`super`]), and without it a log segment is reused only once every page in it has been
//! rewritten; nothing rewrites the last live pages of a segment that upsync no longer
//! writes to. After a burst of churn the files keep the size the burst grew them to: after
//! 50,000 uploads of which a third changed and went again, 81.7 MiB held 10.0 MiB of
//! entries. Opening the database reads a header of every 512 KiB segment, so a long log
//! also slows every start and every `upsync status` of a stopped daemon. sled offers no
//! way to clean its segments on demand, so the database is rewritten instead.
//!
//! # When
//!
//! [`Store::compact`] compacts when the files take more than [`CompactPolicy::max_ratio`]
//! times the live data (key and value bytes of every tree, [`Store::space`], a full read)
//! and more than [`CompactPolicy::min_on_disk`] (a new database takes a few segments
//! whatever it holds). The daemon asks once it is idle (`daemon::compaction`).
//!
//! # How
//!
//! 1. Measure the live data and the files ([`Store::space`]); stop if not worth it.
//! 2. Pause the store: the write lock on its handles, so every other use of the store
//!    waits until step 5 ends; then flush.
//! 3. Copy every tree, entry by entry and in passes (below), into a new database in
//!    `db.compact/`, with the id base (below); flush and close it ([`copy_live`]). If the
//!    copy does not take less than three quarters of the old files, remove it and stop:
//!    sled writes a bulk load with garbage of its own, so a database that only grew, never
//!    churned, can come out larger.
//! 4. Swap the two directories in one `renameat2(RENAME_EXCHANGE)` and sync the state
//!    directory ([`exchange`]).
//! 5. Open `db` (the copy) and put its handles in place of the old ones, which close.
//! 6. Remove `db.compact/`, which now holds the old database.
//!
//! # Copying in passes
//!
//! sled keeps at most 16 entries in a leaf: the 17th splits it in two, each written whole,
//! and every insert is first written as a delta of its own, folded into a whole rewrite of
//! the leaf after ten of them. Copied in key order, each leaf takes eight entries and is
//! never written again, so every log segment keeps the final images of a few leaves among
//! the deltas and rewrites that led to them, and no segment is ever wholly dead: the copy
//! of 50,000 ledger entries (11.4 MiB) took 36 MiB, 3.2 times its entries. The copy
//! therefore makes three passes over each tree, each taking every third entry (the 1st,
//! 4th, 7th… then the 2nd, 5th… then the rest): the first pass leaves sparse leaves, and
//! the third splits every leaf again, which rewrites all of them, so the segments of the
//! first passes die whole and are reused. The same 50,000 entries take 21–22 MiB (1.85 to
//! 1.95 times, over three runs) and 200,000 take 1.6 times instead of 2.5 times; other
//! numbers of passes measured up to 2.5 times, and a random order 3.1 times. The cost is
//! reading each tree three times.
//!
//! # Giving way
//!
//! At a million entries the copy takes about nine seconds. Any use of the store that finds
//! a compaction holding it (a new file, a scan, a `retry` or `forget`, the final flush at a
//! stop) sets a flag that step 3 reads every [`YIELD_CHECK_EVERY`] entries: the copy is
//! then removed and the store released at once ([`StoreError::CompactionYielded`]), so no
//! use waits for more than a slice of a copy. The daemon tries again after its next quiet
//! time, so the database is compacted only in a moment when nothing uses it for as long as
//! the copy takes. Reads of the counts (`status`, metrics, the systemd status line, a scan
//! paused for its folder's backlog, which asks every tick) do not count as uses: step 2
//! takes the status summary (module `summary`) before it pauses the store, and
//! [`Store::tallies`] answers from that until step 5 ends, as nothing can change meanwhile.
//! The other reports (failed jobs, waiting since) read it too. Nor do the
//! daemon's check that the database can still be written and its idle workers' polls for
//! due jobs ([`Store::is_compacting`]), which skip their turn while a compaction holds the
//! database.
//!
//! # Crash safety
//!
//! The exchange is atomic, and the copy is flushed before it, so at any instant `db` is a
//! whole database: the old one until step 4, the copy after. `db.compact/` is at all times
//! a partial copy or the old database, never needed: every open removes it
//! ([`clear_leftover`]) before it opens `db`. A power loss before the directory is synced
//! may undo the exchange; `db` is then the old database, unchanged since step 2. A
//! filesystem that cannot exchange directories (not Linux, some network filesystems) is
//! never compacted: the copy is removed and the error reported.
//!
//! # Job ids
//!
//! Job ids stay unique for the life of the database, across compactions. sled's id counter
//! lives outside the trees and starts at 0 in a new database, so step 3 stores the next id
//! the old database would have given ([`ID_BASE_KEY`] in the default tree) and job ids are
//! that base plus sled's id.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use super::{
    DB_DIR, Handles, Space, Store, StoreError, Summary, files_size, open_sled, sled_config,
};

/// Where step 3 builds the copy, next to `db`.
pub(super) const COMPACT_DIR: &str = "db.compact";
/// Key of the default tree holding the id base (u64 BE); absent means 0.
pub(super) const ID_BASE_KEY: &[u8] = b"id_base";

/// The largest copy worth swapping in, as a share of the files it replaces.
const WORTH_SWAPPING: f64 = 0.75;

/// How many passes step 3 makes over each tree ("Copying in passes" in the module doc).
const COPY_PASSES: usize = 3;

/// How many entries step 3 copies between two looks at whether a use of the store waits.
pub(super) const YIELD_CHECK_EVERY: u64 = 1024;

/// Below this the files are never compacted: a new, empty database takes about 1.5 MiB.
pub const MIN_ON_DISK: u64 = 4 << 20;

/// When [`Store::compact`] rewrites the database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactPolicy {
    /// Compact when the files are larger than this many times the live data.
    pub max_ratio: f64,
    /// ... and larger than this many bytes.
    pub min_on_disk: u64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        CompactPolicy {
            max_ratio: 2.0,
            min_on_disk: MIN_ON_DISK,
        }
    }
}

impl CompactPolicy {
    /// Whether a database of this `space` is to be compacted.
    pub fn wants(&self, space: &Space) -> bool {
        space.on_disk_bytes > self.min_on_disk
            && space.on_disk_bytes as f64 > self.max_ratio * space.live_bytes as f64
    }
}

/// What one compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    /// The live data and the files before.
    pub before: Space,
    /// The files after.
    pub after_on_disk: u64,
    /// Entries copied, over all trees.
    pub entries: u64,
    /// How long the store was paused (steps 2 to 5).
    pub paused: Duration,
}

impl Compaction {
    /// Logs what the compaction did. The daemon writes it after returning the memory the
    /// old database's cache held (`daemon::compaction`), so that the line marks the end of
    /// all a compaction changes: its files and the daemon's memory.
    pub fn log(&self) {
        tracing::info!(
            before_bytes = self.before.on_disk_bytes,
            after_bytes = self.after_on_disk,
            live_bytes = self.before.live_bytes,
            entries = self.entries,
            paused_ms = self.paused.as_millis() as u64,
            "compacted the state database"
        );
    }
}

/// Steps after which a test stops a compaction as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Copied,
    Exchanged,
}

/// The id base of `db` ("Job ids" in the module doc).
pub(super) fn id_base(db: &sled::Db) -> sled::Result<u64> {
    match db.get(ID_BASE_KEY)? {
        None => Ok(0),
        Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                sled::Error::Unsupported(format!("the id base is {} bytes long, not 8", raw.len()))
            }),
    }
}

/// Removes what an interrupted compaction left in `state_dir` ("Crash safety").
pub(super) fn clear_leftover(state_dir: &Path) -> Result<(), StoreError> {
    let leftover = state_dir.join(COMPACT_DIR);
    match std::fs::remove_dir_all(&leftover) {
        Ok(()) => {
            tracing::info!(path = %leftover.display(), "removed what an interrupted compaction of the state database left");
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StoreError::io(
            "remove the leftover of a compaction at",
            &leftover,
            state_dir,
            err,
        )),
    }
}

impl Store {
    /// Rewrites the database into one holding only its live data if `policy` wants it
    /// (module doc); `None` when it did not. Every other use of the store waits while it
    /// copies.
    pub fn compact(&self, policy: &CompactPolicy) -> Result<Option<Compaction>, StoreError> {
        self.compact_stopping(policy, |_| false)
    }

    /// Whether a compaction holds the database now (steps 2 to 5).
    pub fn is_compacting(&self) -> bool {
        self.inner.handles.try_read_recursive().is_none()
    }

    /// The length of the database's files, without reading them.
    pub fn on_disk_bytes(&self) -> Result<u64, StoreError> {
        let db_dir = self.state_dir().join(DB_DIR);
        files_size(&db_dir).map_err(|source| {
            StoreError::io(
                "measure the state database at",
                &db_dir,
                self.state_dir(),
                source,
            )
        })
    }

    /// [`Store::compact`], abandoned as a crash would be after a step `stop_after` names.
    pub(super) fn compact_stopping(
        &self,
        policy: &CompactPolicy,
        stop_after: impl Fn(Step) -> bool,
    ) -> Result<Option<Compaction>, StoreError> {
        let before = self.space()?;
        if !policy.wants(&before) {
            // Said once per weighing (at most once per quarter of growth, module
            // `daemon::compaction`): what the files hold, and that they stay.
            tracing::info!(
                on_disk_bytes = before.on_disk_bytes,
                live_bytes = before.live_bytes,
                "the state database needs no compaction"
            );
            return Ok(None);
        }
        let state_dir = self.state_dir();
        let (db_path, copy_path) = (state_dir.join(DB_DIR), state_dir.join(COMPACT_DIR));
        tracing::info!(
            on_disk_bytes = before.on_disk_bytes,
            live_bytes = before.live_bytes,
            "compacting the state database"
        );
        let summary = self.summarize()?;
        let writes = self.writes();
        let paused = Instant::now();
        let mut handles = self.inner.handles.write();
        // Taken before the pause; good for reports only if nothing was written in between.
        let _frozen = (self.writes() == writes).then(|| Frozen::new(self, summary));
        let wanted = &self.inner.wanted_during_compaction;
        wanted.store(false, Ordering::Relaxed);
        let db_error = |err| self.db_error(err);
        let next_id = handles.id_base + handles.db.generate_id().map_err(db_error)?;
        handles.db.flush().map_err(db_error)?;
        let progress = Progress {
            wanted,
            copied: &self.inner.copied,
            bell: &self.inner.bell,
        };
        let copied = copy_live(&handles.db, &copy_path, next_id, &progress).map_err(|err| {
            let _ = std::fs::remove_dir_all(&copy_path);
            db_error(err)
        })?;
        let Some(entries) = copied else {
            drop(handles);
            let _ = std::fs::remove_dir_all(&copy_path);
            tracing::debug!("the compaction of the state database gave way to its users");
            return Err(StoreError::CompactionYielded);
        };
        if stop_after(Step::Copied) {
            return Err(StoreError::Message("stopped after the copy".into()));
        }
        if !self.copy_is_smaller(&copy_path, &before)? {
            return Ok(None);
        }
        exchange(&db_path, &copy_path).map_err(|err| {
            let _ = std::fs::remove_dir_all(&copy_path);
            StoreError::io(
                "swap in the compacted database at",
                &db_path,
                state_dir,
                err,
            )
        })?;
        if stop_after(Step::Exchanged) {
            return Err(StoreError::Message("stopped after the exchange".into()));
        }
        *handles = self.reopen(&db_path, &copy_path)?;
        drop(handles);
        let paused = paused.elapsed();
        self.finish(copy_path.as_path(), before, entries, paused)
            .map(Some)
    }

    /// Step 3's check: whether the copy takes less than [`WORTH_SWAPPING`] of the files it
    /// would replace. sled writes a bulk copy with garbage of its own (module doc), so a
    /// database that is already dense can come out larger; then the copy is removed.
    fn copy_is_smaller(&self, copy_path: &Path, before: &Space) -> Result<bool, StoreError> {
        let copied = files_size(copy_path).map_err(|source| {
            StoreError::io("measure the copy at", copy_path, self.state_dir(), source)
        })?;
        let smaller = (copied as f64) < before.on_disk_bytes as f64 * WORTH_SWAPPING;
        if !smaller {
            let _ = std::fs::remove_dir_all(copy_path);
            tracing::info!(
                on_disk_bytes = before.on_disk_bytes,
                copy_bytes = copied,
                "kept the state database: a compacted copy would not be smaller"
            );
        }
        Ok(smaller)
    }

    /// Step 5: the handles of the copy now at `db_path`. If it cannot be opened, the old
    /// database goes back in place, so writes keep going to the database that stays.
    fn reopen(&self, db_path: &Path, copy_path: &Path) -> Result<Handles, StoreError> {
        match open_sled(db_path).and_then(Handles::open) {
            Ok(handles) => Ok(handles),
            Err(err) => {
                let state_dir = self.state_dir();
                exchange(db_path, copy_path).map_err(|source| {
                    StoreError::io(
                        "put the database back after a failed compaction at",
                        db_path,
                        state_dir,
                        source,
                    )
                })?;
                let _ = std::fs::remove_dir_all(copy_path);
                Err(self.db_error(err))
            }
        }
    }

    /// Step 6. The line that says what the compaction did is the caller's to write
    /// ([`Compaction::log`]), once it has done what follows a compaction.
    fn finish(
        &self,
        old_copy: &Path,
        before: Space,
        entries: u64,
        paused: Duration,
    ) -> Result<Compaction, StoreError> {
        if let Err(err) = std::fs::remove_dir_all(old_copy) {
            // Harmless: the next open removes it.
            tracing::warn!(path = %old_copy.display(), error = %err, "cannot remove the database a compaction replaced");
        }
        let after_on_disk = self.on_disk_bytes()?;
        Ok(Compaction {
            before,
            after_on_disk,
            entries,
            paused,
        })
    }
}

/// The summary reports read while a compaction holds the database (step 2 to 5), in
/// place until dropped.
struct Frozen<'a>(&'a Store);

impl<'a> Frozen<'a> {
    fn new(store: &'a Store, summary: Summary) -> Frozen<'a> {
        *store
            .inner
            .frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(summary));
        Frozen(store)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        *self
            .0
            .inner
            .frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Step 3: every entry of every tree of `from` into a new database at `to`, with the id
/// base `next_id`; flushed and closed. Streams: holds one entry at a time. `None` when a
/// use of the store set `progress.wanted` meanwhile ("Giving way"); the partial copy is
/// the caller's to remove.
pub(super) fn copy_live(
    from: &sled::Db,
    to: &Path,
    next_id: u64,
    progress: &Progress<'_>,
) -> sled::Result<Option<u64>> {
    match std::fs::remove_dir_all(to) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
        _ => {}
    }
    let fresh = sled_config(to).open()?;
    let mut entries = 0;
    for name in from.tree_names() {
        let source = from.open_tree(&name)?;
        let target = fresh.open_tree(&name)?;
        for pass in 0..COPY_PASSES {
            // The n-th entry goes in the pass n % COPY_PASSES ("Copying in passes").
            for entry in source.iter().skip(pass).step_by(COPY_PASSES) {
                let (key, value) = entry?;
                target.insert(key, value)?;
                entries += 1;
                if entries % YIELD_CHECK_EVERY == 0 && progress.slice_done() {
                    return Ok(None);
                }
            }
        }
    }
    fresh.insert(ID_BASE_KEY, &next_id.to_be_bytes())?;
    fresh.flush()?;
    Ok(Some(entries))
}

/// What step 3 reads and tells as it copies.
pub(super) struct Progress<'a> {
    /// Set by a use of the store that waits ("Giving way").
    pub wanted: &'a AtomicBool,
    /// Counts the entries copied, for [`Store::activity`].
    pub copied: &'a AtomicU64,
    /// Rung with each slice copied: the heap's trims go on while a compaction runs.
    pub bell: &'a super::Bell,
}

impl Progress<'_> {
    /// Notes a slice of [`YIELD_CHECK_EVERY`] entries copied; whether to give way.
    fn slice_done(&self) -> bool {
        self.copied.fetch_add(YIELD_CHECK_EVERY, Ordering::Relaxed);
        self.bell.ring();
        self.wanted.load(Ordering::Relaxed)
    }
}

/// Step 4: swaps the directories `a` and `b` atomically, then syncs their parent so the
/// swap survives a power loss.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    crate::rename::exchange(a, b)?;
    let parent = a.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}
