//! The state of one watched folder and everything it does synchronously: the start-up scan,
//! handling a batch of notify events, and the periodic tick (settled candidates, rescans,
//! fallback rescans of unwatched subtrees, the folder itself disappearing and coming back,
//! the steps of the walk giving ledger entries their files' change times).
//!
//! All of it does file-system I/O and store calls, so the async loop in `mod.rs` runs these
//! methods on the blocking pool; nothing here touches notify's thread.
//!
//! Backpressure: a look at the whole folder (the start-up scan, a rescan) pauses when the
//! folder has [`Options::backlog`] jobs waiting to be claimed, or as many files waiting to
//! settle, and goes on from where it stood once half of them are gone. So a first scan of a
//! million files keeps a bounded number of jobs in the state database, and the folder's
//! events are handled meanwhile. The daemon counts a folder as scanned at its first pause.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{ErrorKind, EventKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::filter::Filter;
use super::recent::RecentOffers;
use super::scan::{self, Visit, WalkCursor, WalkEnd, Walker};
use super::settle::{Settle, SystemClock};
use super::shared_fs;
use super::spool::{SPOOL_CHECK, Settled, Spool};
use super::stamp::Stamping;
use super::watcher::{self, DirWatcher, EventFlags};
use super::{ScanSummary, Sink, SinkOffer, forget_vanished, vanished_files};
use crate::fingerprint::Fingerprint;
use crate::queue::FileKey;

/// How long an offered fingerprint is remembered, so that repeated events for an unchanged
/// file (a chmod, a rescan) do not offer it again. After that the queue's own dedup applies.
const RECENT_OFFER_MEMORY: Duration = Duration::from_secs(600);
/// How many offered fingerprints are remembered at most: with the hash table's slack about
/// 230 bytes each, under 1 MiB. 16,384 held 3.8 MiB for as long as the daemon ran, once a
/// large scan had filled it; more only spares offers the queue answers as known anyway.
const RECENT_OFFER_LIMIT: usize = 4_096;
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How long a directory an event dropped is remembered, so that the other event of its
/// removal (its own watch's and its parent's come apart when the batches split between
/// them) is not taken for the deletion of a file of that name.
const DROPPED_DIR_MEMORY: Duration = Duration::from_secs(10);
/// A folder on a shared file system is looked at again no sooner than this many times as
/// long as its last look took ([`FolderState::rescan_interval`]).
const SHARED_POLL_SHARE: u32 = 10;
/// Settled files are offered to the sink this many at a time (one queue transaction each).
pub(super) const OFFER_BATCH: usize = 256;
/// [`Options::backlog`]: at 3,000 uploads a second, a few seconds of work for the workers,
/// while the jobs in the state database stay a small part of a large tree.
pub(super) const DEFAULT_BACKLOG: u64 = 10_000;

/// Timings of a folder's loop.
#[derive(Debug, Clone)]
pub struct Options {
    /// Full rescan period; `None` = never.
    pub rescan_interval: Option<Duration>,
    /// How often a subtree whose watch failed is rescanned.
    pub fallback_interval: Duration,
    /// How often a missing folder is looked for.
    pub missing_poll: Duration,
    /// How often pending candidates are checked.
    pub tick: Duration,
    /// How often a folder with no pending candidate ticks (rescans, fallback rescans, the
    /// folder's presence).
    pub idle_tick: Duration,
    /// How many notify events may wait for the loop before new ones are dropped (and a
    /// rescan scheduled instead).
    pub event_capacity: usize,
    /// A whole-folder scan pauses at this many of the folder's jobs waiting to be claimed
    /// (or files waiting to settle), and goes on at half of it (module doc).
    pub backlog: u64,
}

impl Options {
    pub fn new(settle: Duration, rescan_interval: Option<Duration>) -> Options {
        let fallback = Duration::from_secs(30);
        Options {
            rescan_interval,
            fallback_interval: rescan_interval.map_or(fallback, |r| r.min(fallback)),
            missing_poll: Duration::from_secs(2),
            // A settled file waits for the next tick: a short tick keeps that wait small
            // next to the settle time, and a tick with nothing due costs a stat.
            tick: (settle / 20).clamp(Duration::from_millis(10), Duration::from_millis(50)),
            idle_tick: Duration::from_secs(1),
            event_capacity: 4096,
            backlog: DEFAULT_BACKLOG,
        }
    }
}

/// What the last batch of events said about a writer, per path (the latest event wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    None,
    Written,
    Closed,
}

enum Root {
    Present { inode: u64 },
    Missing { next_poll: Instant },
}

/// A whole-folder scan that paused for the backlog (module doc), with what it found so far.
struct PausedScan {
    cursor: WalkCursor,
    rewatch: bool,
    /// The start-up scan (logged when it ends), not a rescan.
    startup: bool,
    summary: ScanSummary,
    started: Instant,
}

pub struct FolderState {
    root: PathBuf,
    folder_key: String,
    filter: Arc<Filter>,
    recursive: bool,
    settle_time: Duration,
    settle: Settle<String, SystemClock>,
    dirs: Box<dyn DirWatcher>,
    watched: HashSet<PathBuf>,
    /// Subtrees whose watch failed, with their next rescan.
    fallback: HashMap<PathBuf, Instant>,
    limit_reported: bool,
    /// How many of the watcher's dropped events a "file events were lost" line has counted.
    dropped_reported: u64,
    sink: Arc<dyn Sink>,
    wake: Option<Arc<Notify>>,
    recent: RecentOffers,
    /// Settled files waiting to be offered together ([`FolderState::flush_offers`]); empty
    /// whenever a public method returns.
    outbox: Vec<(String, Fingerprint)>,
    /// Files a batch of events found gone, told to the sink together at its end.
    gone_box: Vec<FileKey>,
    /// Directories events found gone lately, with when ([`DROPPED_DIR_MEMORY`]).
    dropped_dirs: HashMap<String, Instant>,
    /// Files whose offer queued a job, since the folder state was made.
    queued_total: u64,
    next_prune: Instant,
    warned: HashSet<PathBuf>,
    root_state: Root,
    /// The shared file system the folder is on, which the folder's rescans poll (module
    /// `shared_fs`); `None` on a local one.
    shared: Option<&'static str>,
    next_rescan: Option<Instant>,
    /// The whole-folder scan waiting for the backlog to shrink.
    paused: Option<PausedScan>,
    /// The walk giving ledger entries their files' change times, a step per tick (module
    /// `stamp`).
    stamping: Option<Stamping>,
    /// `queued_total` when the backlog was last looked at.
    queued_at_backlog_check: u64,
    flags: Arc<EventFlags>,
    cancel: CancellationToken,
    opts: Options,
    spool: Option<Spool>,
    /// A spool folder's files offered and not yet removed ([`FolderState::settle_spooled`]).
    spooled: HashSet<String>,
    next_spool_check: Instant,
}

pub struct FolderParts {
    pub root: PathBuf,
    pub filter: Filter,
    pub recursive: bool,
    pub settle: Duration,
    pub dirs: Box<dyn DirWatcher>,
    pub sink: Arc<dyn Sink>,
    pub wake: Option<Arc<Notify>>,
    pub flags: Arc<EventFlags>,
    pub cancel: CancellationToken,
    pub opts: Options,
    /// Set for a spool folder: files leave once their upload is confirmed.
    pub spool: Option<Spool>,
}

impl FolderState {
    pub fn new(p: FolderParts) -> FolderState {
        let now = Instant::now();
        FolderState {
            folder_key: p.root.to_string_lossy().into_owned(),
            root: p.root,
            filter: Arc::new(p.filter),
            recursive: p.recursive,
            settle_time: p.settle,
            settle: Settle::new(p.settle, SystemClock),
            dirs: p.dirs,
            watched: HashSet::new(),
            fallback: HashMap::new(),
            limit_reported: false,
            dropped_reported: 0,
            sink: p.sink,
            wake: p.wake,
            recent: RecentOffers::new(RECENT_OFFER_MEMORY, RECENT_OFFER_LIMIT),
            outbox: Vec::new(),
            gone_box: Vec::new(),
            dropped_dirs: HashMap::new(),
            queued_total: 0,
            next_prune: now + PRUNE_EVERY,
            warned: HashSet::new(),
            root_state: Root::Missing { next_poll: now },
            shared: None,
            next_rescan: None,
            paused: None,
            stamping: None,
            queued_at_backlog_check: 0,
            flags: p.flags,
            cancel: p.cancel,
            opts: p.opts,
            spool: p.spool,
            spooled: HashSet::new(),
            next_spool_check: now + SPOOL_CHECK,
        }
    }

    /// Watches and scans the folder; offers every file that is already settled.
    pub fn start(&mut self) -> ScanSummary {
        match std::fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => self.start_watching(meta.ino()),
            Ok(_) => {
                warn!(
                    "the folder is not a directory; polling every {} for it to appear",
                    humantime::format_duration(self.opts.missing_poll)
                );
                self.root_state = Root::Missing {
                    next_poll: Instant::now() + self.opts.missing_poll,
                };
                ScanSummary::default()
            }
            Err(e) => {
                warn!(error = %e, "the folder cannot be read; polling every {} for it to appear", humantime::format_duration(self.opts.missing_poll));
                self.root_state = Root::Missing {
                    next_poll: Instant::now() + self.opts.missing_poll,
                };
                ScanSummary::default()
            }
        }
    }

    fn start_watching(&mut self, inode: u64) -> ScanSummary {
        self.root_state = Root::Present { inode };
        self.shared = shared_fs::shared_kind(&self.root);
        if let Some(kind) = self.shared {
            info!(
                file_system = kind,
                "the folder is on a shared file system, where files written by other machines \
                 raise no file event here; it is rescanned every {} (longer for a folder whose \
                 scan takes long)",
                humantime::format_duration(self.opts.fallback_interval)
            );
        }
        // Warned, not refused: the folder's files are still uploaded, and stay in it.
        if let Some(problem) = self.spool.as_ref().and_then(Spool::archive_problem) {
            warn!(
                "archive_dir: {problem}; the folder's files are uploaded and stay in it until \
                 archive_dir is fixed (then reload or restart)"
            );
        }
        if let Some(problem) = self.spool.as_ref().and_then(Spool::write_problem) {
            warn!("{problem}");
        }
        self.scan_folder(false, true)
    }

    /// Starts a look at the whole folder (dropping one that is paused); returns what it
    /// found until it ended or paused.
    fn scan_folder(&mut self, rewatch: bool, startup: bool) -> ScanSummary {
        self.paused = None;
        self.go_on_scanning(PausedScan {
            cursor: WalkCursor::new(&self.root),
            rewatch,
            startup,
            summary: ScanSummary::default(),
            started: Instant::now(),
        })
    }

    /// Walks on with `scan` until it ends (then what follows a whole-folder look) or
    /// pauses for the backlog (then kept for [`FolderState::tick`]).
    fn go_on_scanning(&mut self, mut scan: PausedScan) -> ScanSummary {
        let (found, end) = self.walk_from(&mut scan.cursor, scan.rewatch, true);
        scan.summary.files_seen += found.files_seen;
        scan.summary.queued += found.queued;
        let summary = scan.summary.clone();
        match end {
            WalkEnd::Done => self.scan_ended(&scan),
            WalkEnd::Paused => {
                debug!(
                    files_seen = summary.files_seen,
                    queued = summary.queued,
                    "folder scan paused until uploads make room in the queue"
                );
                self.paused = Some(scan);
            }
            WalkEnd::Cancelled => {}
        }
        summary
    }

    /// After a whole-folder look: jobs of files no longer there go, and the next rescan
    /// is scheduled.
    fn scan_ended(&mut self, scan: &PausedScan) {
        self.report_spool_failures();
        forget_vanished(&self.root, &self.folder_key, "", &*self.sink);
        self.sink.scan_done(&self.folder_key);
        // Started here and stepped by the ticks: the start-up ends with the scan, and so
        // does not wait for the walk.
        self.want_stamping();
        self.next_rescan = self
            .rescan_interval(scan.started.elapsed())
            .map(|every| Instant::now() + every);
        if scan.startup {
            info!(
                files_seen = scan.summary.files_seen,
                queued = scan.summary.queued,
                pending = self.settle.len(),
                watched_dirs = self.watched.len(),
                "folder scanned"
            );
        }
    }

    /// How long after a whole-folder look that took `took` the next one starts:
    /// `rescan_interval`, and on a shared file system the fallback rescans' interval, or
    /// [`SHARED_POLL_SHARE`] times the look when that is longer, so that polling a large
    /// tree on a file server keeps a bounded share of its time.
    fn rescan_interval(&self, took: Duration) -> Option<Duration> {
        let poll = self.shared.map(|_| {
            self.opts
                .fallback_interval
                .max(took.saturating_mul(SHARED_POLL_SHARE))
        });
        match (self.opts.rescan_interval, poll) {
            (Some(every), Some(poll)) => Some(every.min(poll)),
            (every, poll) => every.or(poll),
        }
    }

    /// Whether the folder has [`Options::backlog`] jobs waiting to be claimed or files
    /// waiting to settle: a whole-folder scan pauses. Reads the queue only when this
    /// folder queued files since the last look.
    fn backlog_full(&mut self) -> bool {
        // Settled files wait in the outbox as candidates: offered, they are no longer.
        self.flush_offers();
        if self.settle.len() as u64 >= self.opts.backlog {
            return true;
        }
        if self.queued_total == self.queued_at_backlog_check {
            return false;
        }
        self.queued_at_backlog_check = self.queued_total;
        self.sink
            .queued(&self.folder_key)
            .is_some_and(|queued| queued >= self.opts.backlog)
    }

    /// Whether a paused scan may go on: the backlog is down to half.
    fn backlog_has_room(&self) -> bool {
        let half = self.opts.backlog / 2;
        self.settle.len() as u64 <= half
            && self
                .sink
                .queued(&self.folder_key)
                .is_none_or(|queued| queued <= half)
    }

    /// Whether a whole-folder scan waits for the backlog to shrink.
    #[cfg(test)]
    pub fn scan_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Handles one batch of notify events.
    pub fn handle_events(&mut self, batch: Vec<notify::Result<notify::Event>>) {
        if !matches!(self.root_state, Root::Present { .. }) {
            return;
        }
        let mut order: Vec<PathBuf> = Vec::new();
        let mut hints: HashMap<PathBuf, Hint> = HashMap::new();
        let mut root_lost = false;
        for event in batch {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    if matches!(e.kind, ErrorKind::MaxFilesWatch) {
                        let dir = e
                            .paths
                            .first()
                            .cloned()
                            .unwrap_or_else(|| self.root.clone());
                        self.report_limit(&dir);
                    } else {
                        warn!(error = %e, "file watcher error; rescanning the folder");
                    }
                    self.flags.rescan_needed.store(true, Ordering::Release);
                    continue;
                }
            };
            if event.need_rescan() {
                self.flags.rescan_needed.store(true, Ordering::Release);
                continue;
            }
            let hint = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => Hint::Closed,
                // Opening or reading a file (the uploader does) changes nothing.
                EventKind::Access(_) => continue,
                EventKind::Modify(ModifyKind::Data(_)) => Hint::Written,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                    if event.paths.iter().any(|p| p == &self.root) =>
                {
                    root_lost = true;
                    continue;
                }
                _ => Hint::None,
            };
            for path in event.paths {
                match hints.get_mut(&path) {
                    Some(h) => {
                        if hint != Hint::None {
                            *h = hint;
                        }
                    }
                    None => {
                        hints.insert(path.clone(), hint);
                        order.push(path);
                    }
                }
            }
        }
        if root_lost {
            self.lose_root(Instant::now());
            return;
        }
        for path in order {
            if self.cancel.is_cancelled() {
                break;
            }
            let hint = hints.get(&path).copied().unwrap_or(Hint::None);
            self.handle_path(&path, hint);
        }
        self.flush_gone();
        self.flush_offers();
    }

    fn handle_path(&mut self, path: &Path, hint: Hint) {
        let Some(rel) = scan::relative(&self.root, path, &mut self.warned) else {
            return;
        };
        if !self.recursive && rel.contains('/') {
            return;
        }
        let meta = std::fs::symlink_metadata(path);
        if meta.is_ok() {
            // There again: a later deletion of this name is the deletion of what is there.
            self.dropped_dirs.remove(&rel);
        }
        match meta {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.gone(path, &rel),
            Err(e) => debug!(path = %path.display(), error = %e, "cannot stat a changed path"),
            Ok(meta) if meta.is_dir() => {
                if self.recursive && !self.filter.excludes_dir(&rel) && !self.watched.contains(path)
                {
                    // A new (or moved-in) directory: watch it, then scan it, so files
                    // created in it before the watch existed are found.
                    self.walk(path, false);
                }
            }
            Ok(meta) if meta.is_file() => {
                if self.filter.accepts_file(&rel) {
                    self.consider(&rel, Fingerprint::of(&meta), hint);
                }
            }
            Ok(meta) => {
                if meta.file_type().is_symlink() {
                    debug!(path = %path.display(), "skipping symlink: links are never followed");
                }
                self.settle.remove(&rel);
            }
        }
    }

    /// `path` no longer exists: forget it and, if it was a directory, its subtree; jobs of
    /// what vanished leave the queue.
    fn gone(&mut self, path: &Path, rel: &str) {
        self.settle.remove(&rel.to_string());
        self.recent.forget(rel);
        if self.watched.contains(path) || self.fallback.contains_key(path) {
            let under = vanished_files(
                &self.root,
                &self.folder_key,
                &format!("{rel}/"),
                &*self.sink,
            );
            self.gone_box.extend(under);
            let under: Vec<PathBuf> = self
                .watched
                .iter()
                .filter(|w| w.starts_with(path))
                .cloned()
                .collect();
            for dir in under {
                self.dirs.unwatch_dir(&dir);
                self.watched.remove(&dir);
            }
            self.fallback.retain(|d, _| !d.starts_with(path));
            let prefix = format!("{rel}/");
            self.settle.retain(|k| !k.starts_with(&prefix));
            self.dropped_dirs.insert(rel.to_owned(), Instant::now());
            debug!(dir = %path.display(), "directory removed; its watches are dropped");
        } else if !self.dropped_lately(rel) {
            let key = self.key(rel);
            self.gone_box.push(key);
        }
    }

    /// Whether an event dropped the directory `rel` within [`DROPPED_DIR_MEMORY`].
    fn dropped_lately(&self, rel: &str) -> bool {
        self.dropped_dirs
            .get(rel)
            .is_some_and(|at| at.elapsed() < DROPPED_DIR_MEMORY)
    }

    /// Tells the sink about the files this batch of events found gone, together.
    fn flush_gone(&mut self) {
        if !self.gone_box.is_empty() {
            let mut gone = std::mem::take(&mut self.gone_box);
            // A file and its directory may both have been reported.
            gone.sort_unstable();
            gone.dedup();
            self.sink.vanished_many(&gone);
        }
    }

    /// True when no file waits to settle, no scan waits for room and no walk stamping
    /// ledger entries is under way: nothing needs the short tick.
    pub fn is_quiet(&self) -> bool {
        self.settle.is_empty()
            && self.outbox.is_empty()
            && self.paused.is_none()
            && self.stamping.is_none()
    }

    /// Periodic work: the folder's presence, requested and scheduled rescans, fallback
    /// rescans, offering settled candidates, and a step of the walk giving ledger entries
    /// their files' change times.
    pub fn tick(&mut self) {
        let now = Instant::now();
        self.check_root(now);
        if !matches!(self.root_state, Root::Present { .. }) {
            return;
        }
        if self.flags.rescan_needed.swap(false, Ordering::AcqRel) {
            let dropped = self.flags.dropped.load(Ordering::Relaxed);
            let newly_dropped = dropped - self.dropped_reported;
            self.dropped_reported = dropped;
            warn!(
                dropped_events = newly_dropped,
                "file events were lost; rescanning the folder"
            );
            self.full_rescan();
        } else if self.next_rescan.is_some_and(|t| now >= t) {
            debug!("periodic rescan");
            self.full_rescan();
        }
        let due: Vec<PathBuf> = self
            .fallback
            .iter()
            .filter(|(_, t)| now >= **t)
            .map(|(d, _)| d.clone())
            .collect();
        for dir in due {
            if self.cancel.is_cancelled() {
                self.flush_offers();
                return;
            }
            debug!(dir = %dir.display(), "rescanning an unwatched subtree");
            self.walk(&dir, false);
            if let Some(t) = self.fallback.get_mut(&dir) {
                *t = Instant::now() + self.opts.fallback_interval;
            }
        }
        self.offer_due();
        self.flush_offers();
        if let Some(scan) = self.paused.take() {
            if self.backlog_has_room() {
                self.go_on_scanning(scan);
            } else {
                self.paused = Some(scan);
            }
        }
        self.go_on_stamping();
        if self.spool.is_some() && now >= self.next_spool_check {
            self.next_spool_check = now + SPOOL_CHECK;
            self.settle_spooled();
        }
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            self.recent.expire(now);
            self.dropped_dirs
                .retain(|_, at| now.duration_since(*at) < DROPPED_DIR_MEMORY);
        }
        // A paused scan's failures are reported with the rest of the scan, as one line.
        if self.paused.is_none() {
            self.report_spool_failures();
        }
    }

    /// One warning for the files a spool could not remove since the last one.
    fn report_spool_failures(&mut self) {
        if let Some(spool) = &mut self.spool {
            spool.report_failures();
        }
    }

    fn full_rescan(&mut self) {
        self.scan_folder(true, false);
    }

    /// Starts the walk giving ledger entries their files' change times if looks asked for
    /// it and none is under way.
    fn want_stamping(&mut self) {
        if self.stamping.is_none() {
            self.stamping = Stamping::if_wanted(&self.folder_key, &*self.sink);
        }
    }

    /// A step of the walk giving ledger entries their files' change times, once no
    /// whole-folder look is under way (its looks are what ask for the walk).
    fn go_on_stamping(&mut self) {
        if self.paused.is_some() {
            return;
        }
        self.want_stamping();
        if let Some(walk) = &mut self.stamping
            && walk.step(&self.root, &self.folder_key, &*self.sink)
        {
            self.stamping = None;
        }
    }

    /// Re-reads each settled candidate's fingerprint and offers it if unchanged.
    fn offer_due(&mut self) {
        for rel in self.settle.due() {
            let path = self.root.join(&rel);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    let fp = Fingerprint::of(&meta);
                    if self.settle.fingerprint(&rel) == Some(fp) {
                        self.offer(rel, fp);
                    } else {
                        self.consider(&rel, fp, Hint::None);
                    }
                }
                _ => self.settle.remove(&rel),
            }
        }
    }

    fn check_root(&mut self, now: Instant) {
        match self.root_state {
            Root::Present { inode } => match std::fs::metadata(&self.root) {
                Ok(meta) if meta.is_dir() && meta.ino() == inode => {}
                _ => self.lose_root(now),
            },
            Root::Missing { next_poll } if now >= next_poll => {
                match std::fs::metadata(&self.root) {
                    Ok(meta) if meta.is_dir() => {
                        info!("watching {} again", self.root.display());
                        self.start_watching(meta.ino());
                    }
                    _ => {
                        self.root_state = Root::Missing {
                            next_poll: now + self.opts.missing_poll,
                        }
                    }
                }
            }
            Root::Missing { .. } => {}
        }
    }

    /// The folder was deleted, moved away or replaced: drop everything and poll for it.
    fn lose_root(&mut self, now: Instant) {
        if !matches!(self.root_state, Root::Present { .. }) {
            return;
        }
        warn!(
            "the folder was deleted, moved or replaced; polling every {} for it to (re)appear",
            humantime::format_duration(self.opts.missing_poll)
        );
        for dir in self.watched.drain() {
            self.dirs.unwatch_dir(&dir);
        }
        self.gone_box.clear();
        self.dropped_dirs.clear();
        self.sink.root_lost(&self.folder_key);
        self.fallback.clear();
        self.paused = None;
        self.stamping = None;
        self.settle.retain(|_| false);
        self.recent.clear();
        self.flags.rescan_needed.store(false, Ordering::Release);
        // Look again at once: a folder replaced by a new one is watched on the next tick.
        self.root_state = Root::Missing { next_poll: now };
    }

    /// Walks `start`, adding watches (re-adding existing ones if `rewatch`), tracking and
    /// offering the files found.
    fn walk(&mut self, start: &Path, rewatch: bool) -> ScanSummary {
        let mut cursor = WalkCursor::new(start);
        self.walk_from(&mut cursor, rewatch, false).0
    }

    /// [`FolderState::walk`] from `cursor`; pauses when `pausable` and the backlog is full.
    fn walk_from(
        &mut self,
        cursor: &mut WalkCursor,
        rewatch: bool,
        pausable: bool,
    ) -> (ScanSummary, WalkEnd) {
        let root = self.root.clone();
        let filter = self.filter.clone();
        let walker = Walker {
            root: &root,
            filter: &filter,
            recursive: self.recursive,
        };
        let mut warned = std::mem::take(&mut self.warned);
        let queued_before = self.queued_total;
        // Run with the stats, on the walk's threads: most files of a rescan or a restart are
        // already uploaded, and for those the ledger read is all there is to do.
        let sink = Arc::clone(&self.sink);
        let folder_key = self.folder_key.clone();
        let uploaded = move |rel: &str, meta: &std::fs::Metadata| {
            let key = FileKey {
                folder: folder_key.clone(),
                rel: rel.to_string(),
            };
            sink.is_uploaded(&key, &Fingerprint::of(meta))
        };
        let mut pass = Pass {
            st: self,
            rewatch,
            pausable,
            summary: ScanSummary::default(),
        };
        // Only a pausable pass asks to pause, so any other walk runs to its end.
        let end = walker.walk_on(cursor, &mut pass, &mut warned, Some(&uploaded));
        let mut summary = pass.summary;
        self.warned = warned;
        self.flush_offers();
        summary.queued = self.queued_total - queued_before;
        (summary, end)
    }

    fn ensure_watched(&mut self, dir: &Path, rewatch: bool) {
        if !rewatch && self.watched.contains(dir) {
            return;
        }
        // Below a subtree that already failed, adding would fail the same way: that
        // subtree's fallback rescan covers these directories.
        if dir
            .ancestors()
            .skip(1)
            .any(|a| self.fallback.contains_key(a))
        {
            return;
        }
        match self.dirs.watch_dir(dir) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
                if self.fallback.remove(dir).is_some() {
                    info!(dir = %dir.display(), "watching {} again", dir.display());
                }
            }
            Err(e) => {
                self.watched.remove(dir);
                match e.kind {
                    ErrorKind::PathNotFound => {
                        self.fallback.remove(dir);
                    }
                    ErrorKind::MaxFilesWatch => {
                        self.report_limit(dir);
                        self.add_fallback(dir);
                    }
                    _ => {
                        if !self.fallback.contains_key(dir) {
                            warn!(dir = %dir.display(), error = %e, "cannot watch directory; rescanning it every {}", humantime::format_duration(self.opts.fallback_interval));
                        }
                        self.add_fallback(dir);
                    }
                }
            }
        }
    }

    fn add_fallback(&mut self, dir: &Path) {
        let next = Instant::now() + self.opts.fallback_interval;
        self.fallback.entry(dir.to_path_buf()).or_insert(next);
    }

    /// Logs the watch limit once per folder, with the numbers needed to fix it.
    fn report_limit(&mut self, dir: &Path) {
        if self.limit_reported {
            debug!(dir = %dir.display(), "inotify watch limit: directory rescanned instead");
            return;
        }
        self.limit_reported = true;
        let directories = scan::count_directories(&self.root, &self.filter, self.recursive);
        let message = watcher::limit_message(
            &self.root,
            directories,
            watcher::max_user_watches(),
            dir,
            self.opts.fallback_interval,
        );
        error!("{message}");
    }

    /// Tracks a file with its current fingerprint; offers it if already settled.
    fn consider(&mut self, rel: &str, fp: Fingerprint, hint: Hint) {
        if self.offered_lately(rel, &fp) {
            return;
        }
        if self.sink.is_uploaded(&self.key(rel), &fp) {
            self.settle.remove(&rel.to_string());
            if let Some(spool) = &mut self.spool {
                spool.settle(rel, &*self.sink);
            }
            return;
        }
        self.track(rel, fp, hint);
    }

    /// [`FolderState::consider`] for a file a walk found, whose ledger check (run with its
    /// stat, on the walk's threads) found this version not uploaded: asking the ledger
    /// again, on the walking thread that also offers, would double the walk's reads.
    fn consider_found(&mut self, rel: &str, fp: Fingerprint) {
        if !self.offered_lately(rel, &fp) {
            self.track(rel, fp, Hint::None);
        }
    }

    /// Whether this version was offered lately; if so, any candidate for it is dropped.
    fn offered_lately(&mut self, rel: &str, fp: &Fingerprint) -> bool {
        let lately = self.recent.contains(rel, fp);
        if lately {
            self.settle.remove(&rel.to_string());
        }
        lately
    }

    /// Tracks a file not uploaded in version `fp`; offers it if already settled.
    fn track(&mut self, rel: &str, fp: Fingerprint, hint: Hint) {
        let key = rel.to_string();
        self.settle.observe(key.clone(), fp);
        match hint {
            Hint::Written => self.settle.write_seen(&key),
            Hint::Closed => self.settle.close_write_seen(&key),
            Hint::None => {}
        }
        if self.settle.is_settled(&key) {
            self.offer(key, fp);
        }
    }

    /// Puts a settled file in the outbox; a full outbox is offered at once.
    fn offer(&mut self, rel: String, fp: Fingerprint) {
        self.outbox.push((rel, fp));
        if self.outbox.len() >= OFFER_BATCH {
            self.flush_offers();
        }
    }

    /// Offers the outbox to the sink in one call and wakes the workers if a job was queued.
    /// Until then the files stay settle candidates, so a failed offer is held and retried.
    fn flush_offers(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.outbox);
        let files: Vec<(FileKey, Fingerprint)> = outbox
            .iter()
            .map(|(rel, fp)| (self.key(rel), *fp))
            .collect();
        let outcomes = self.sink.offer_many(&files);
        let now = Instant::now();
        let mut queued = 0;
        for ((rel, fp), outcome) in outbox.into_iter().zip(outcomes) {
            match outcome {
                SinkOffer::Queued | SinkOffer::Known => {
                    queued += u64::from(outcome == SinkOffer::Queued);
                    self.settle.remove(&rel);
                    if self.spool.is_some() {
                        self.spooled.insert(rel.clone());
                    }
                    self.recent.remember(rel, fp, now);
                }
                SinkOffer::Failed => {
                    self.settle
                        .hold(&rel, self.settle_time.max(Duration::from_secs(1)));
                }
            }
        }
        self.queued_total += queued;
        if queued > 0
            && let Some(wake) = &self.wake
        {
            // notify_waiters wakes every idle worker now; notify_one leaves a permit for a
            // worker that is about to wait.
            wake.notify_waiters();
            wake.notify_one();
        }
    }

    /// A spool folder's offered files leave once their upload is confirmed.
    fn settle_spooled(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let sink = &*self.sink;
        self.spooled
            .retain(|rel| spool.settle(rel, sink) == Settled::Left);
    }

    fn key(&self, rel: &str) -> FileKey {
        FileKey {
            folder: self.folder_key.clone(),
            rel: rel.to_string(),
        }
    }
}

/// One walk's visitor: adds watches and feeds files to the settle tracker.
struct Pass<'a> {
    st: &'a mut FolderState,
    rewatch: bool,
    /// A whole-folder scan, which pauses for the backlog.
    pausable: bool,
    summary: ScanSummary,
}

impl Visit for Pass<'_> {
    fn enter_dir(&mut self, dir: &Path) {
        self.st.ensure_watched(dir, self.rewatch);
    }

    /// A file the walk's ledger check found not uploaded in this version (every walk of
    /// a pass runs the check, `FolderState::walk_from`).
    fn file(&mut self, _path: &Path, rel: &str, meta: &std::fs::Metadata) {
        self.summary.files_seen += 1;
        self.st.consider_found(rel, Fingerprint::of(meta));
    }

    /// Already uploaded: as `consider` would, forget any candidate for it (and let it
    /// leave a spool folder).
    fn known_file(&mut self, rel: &str) {
        self.summary.files_seen += 1;
        if !self.st.settle.is_empty() {
            self.st.settle.remove(&rel.to_string());
        }
        if let Some(spool) = &mut self.st.spool {
            spool.settle(rel, &*self.st.sink);
        }
    }

    fn cancelled(&self) -> bool {
        self.st.cancel.is_cancelled()
    }

    fn pause(&mut self) -> bool {
        self.pausable && self.st.backlog_full()
    }

    /// A pausable pass reads at most a backlog between two looks at it, so it goes past
    /// the backlog by at most that much.
    fn batch_entries(&self) -> usize {
        if self.pausable {
            usize::try_from(self.st.opts.backlog).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        }
    }
}
