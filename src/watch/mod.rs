//! Finding files that are ready to upload: inotify watches, the start-up scan, periodic
//! rescans, include/exclude filters and the settle rule.
//!
//! - [`filter`]: include/exclude globs.
//! - [`settle`]: the pure settle state machine (clock injected).
//! - `scan`: the directory walk (watch first, then list; symlinks never followed).
//! - [`watcher`]: the watches' interface, the non-blocking event callback, the inotify-limit
//!   message.
//! - `inotify`: the directory watches, with only the changes asked for, read on a thread.
//! - `folder`: one folder's state and its synchronous work (scan, events, tick).
//! - `once`: the one-shot scan of `upsync sync --once`, without watches.
//! - `recent`: the bounded memory of recent offers that spares repeated offers.
//! - `presence`: whether tracked files are still there, a listing per directory.
//! - `stamp`: giving ledger entries an older version wrote their files' change times.
//! - `shared_fs`: whether the folder is on a file system other machines write to, where
//!   file events miss their changes and rescans poll for them.
//!
//! Memory does not grow with the number of files: a whole-folder scan pauses while the
//! queue holds `Options::backlog` of the folder's jobs (or files wait to settle) and goes
//! on as they upload (`folder`); directory listings are read in chunks (`scan`); recent
//! offers are a bounded cache (`recent`). What grows is per directory (one watch each).
//!
//! [`run_folder`] is the async loop around a folder: it receives notify events from a
//! bounded channel (the watches' reading thread only ever `try_send`s), ticks to offer
//! settled files and to run rescans, and runs all file-system work on the blocking pool. It
//! ticks often only while files wait to settle; a quiet folder ticks once a second, on the
//! daemon's beat (its rescans, fallback rescans and the check that the folder is still
//! there need no more), so an idle daemon hardly wakes up. Settled files go to a
//! [`Sink`] — the queue's [`Store`] in the daemon, a recorder in tests.
//!
//! Files found gone go to the sink too ([`Sink::vanished`]): an event for a path that no
//! longer exists (a deletion, the old name of a rename), and, after the start-up scan and
//! every rescan, each file that has a job but is no longer there ([`forget_vanished`]).
//! So the job of a deleted or renamed file leaves the queue, a failed one included, without
//! `upsync retry`. A folder that is gone as a whole (unmounted) drops nothing.

mod deletions;
pub mod filter;
mod folder;
mod inotify;
mod looks;
mod once;
mod presence;
mod recent;
mod scan;
pub mod settle;
mod shared_fs;
mod spool;
mod stamp;
pub mod watcher;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, warn};

use crate::config::FolderConfig;
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, FilePick, Offer, StampFrom, StampStep, Store};

pub use deletions::DeletingSink;
pub use filter::{DEFAULT_EXCLUDES, Filter, PatternError};
pub use folder::Options;
use folder::{FolderParts, FolderState};
use inotify::InotifyDirs;
pub use once::{ScanError, scan_once};
pub(crate) use presence::Presence;
use watcher::{DirWatcher, EventFlags, EventSender, NoDirs};

/// How a folder looks at one of its files now, by its relative path: the file's
/// fingerprint, `None` when there is no regular file at that path.
pub type LookNow<'a> = &'a mut dyn FnMut(&str) -> Option<Fingerprint>;

/// At most this many events are handled in one batch on the blocking pool.
const EVENT_BATCH: usize = 1024;

/// What a folder watcher needs from the daemon.
#[derive(Clone)]
pub struct WatchContext {
    pub store: Store,
    /// Notified whenever a job was queued, so idle workers look again.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    pub rescan_interval: Option<Duration>,
}

/// Figures from the start-up scan of one folder.
#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    /// Regular files accepted by the filters.
    pub files_seen: u64,
    /// Files whose offer queued a job.
    pub queued: u64,
}

/// The outcome of offering a settled file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkOffer {
    /// A job was queued (or took the new fingerprint): workers should look.
    Queued,
    /// Already uploaded or already queued with this fingerprint.
    Known,
    /// The offer could not be recorded (logged by the sink); it is tried again later.
    Failed,
}

/// Where settled files go.
pub trait Sink: Send + Sync {
    /// Whether the ledger already holds this fingerprint for the file.
    fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool;
    /// Offers a settled file version for upload.
    fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> SinkOffer;
    /// Offers several settled files, with one outcome per file in order. A sink that can
    /// record them together (the queue: one transaction) should.
    fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
        files.iter().map(|(key, fp)| self.offer(key, fp)).collect()
    }
    /// How many of `folder`'s jobs wait to be claimed; a whole-folder scan pauses while
    /// there are many (see `folder`). `None`: the sink does not say, and scans never pause
    /// for it.
    fn queued(&self, _folder: &str) -> Option<u64> {
        None
    }
    /// The file is gone: forget what is pending for it.
    fn vanished(&self, _key: &FileKey) {}
    /// Files found gone together (by one scan, or one batch of events).
    fn vanished_many(&self, keys: &[FileKey]) {
        for key in keys {
            self.vanished(key);
        }
    }
    /// Hands `visit` each file of `folder` under the relative prefix `under` whose absence
    /// matters: those with something pending and, for a sink that deletes remote copies,
    /// those it has uploaded. One at a time, each once: a folder of a million uploaded
    /// files is never listed in memory.
    fn visit_tracked(&self, _folder: &str, _under: &str, _visit: &mut dyn FnMut(&str)) {}
    /// A look at the whole folder ended (the start-up scan, a rescan).
    fn scan_done(&self, _folder: &str) {}
    /// The folder is gone as a whole (deleted, unmounted, replaced).
    fn root_lost(&self, _folder: &str) {}
    /// Whether looks matched uploads of `folder` recorded without a change time since the
    /// last call: the folder then walks them with [`Sink::stamp_step`] (module `stamp`).
    fn take_unstamped(&self, _folder: &str) -> bool {
        false
    }
    /// One step of that walk, from `from`; `look` gives the fingerprint a file of the
    /// folder has now, by its relative path. A sink that cannot go on ends the walk.
    fn stamp_step(&self, _folder: &str, _from: Option<&StampFrom>, _look: LookNow) -> StampStep {
        StampStep::default()
    }
}

impl Sink for Store {
    fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool {
        match Store::is_uploaded(self, key, fingerprint) {
            Ok(uploaded) => uploaded,
            Err(e) => {
                error!(folder = %key.folder, path = %key.rel, error = %e, "cannot read the upload ledger; treating the file as not uploaded");
                false
            }
        }
    }

    fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> SinkOffer {
        match Store::offer(self, key, fingerprint) {
            Ok(Offer::Queued(_)) => SinkOffer::Queued,
            Ok(Offer::AlreadyQueued(_) | Offer::UpToDate) => SinkOffer::Known,
            Err(e) => {
                error!(folder = %key.folder, path = %key.rel, error = %e, "cannot queue a settled file; will try again");
                SinkOffer::Failed
            }
        }
    }

    fn queued(&self, folder: &str) -> Option<u64> {
        match self.tally(folder) {
            Ok(tally) => Some(tally.counts.queued),
            Err(e) => {
                error!(folder, error = %e, "cannot read the folder's queued jobs; not pausing its scan");
                None
            }
        }
    }

    fn vanished(&self, key: &FileKey) {
        match self.drop_vanished(key) {
            Ok(Some(state)) => {
                tracing::info!(path = %key, state, "file vanished; dropping its job")
            }
            Ok(None) => {}
            Err(e) => {
                error!(path = %key, error = %e, "cannot drop the job of a vanished file; a rescan tries again")
            }
        }
    }

    fn visit_tracked(&self, folder: &str, under: &str, visit: &mut dyn FnMut(&str)) {
        // Jobs live in the files' ledger records, so finding them reads every file of the
        // folder: after each whole-folder scan, at a million files, most of a restart. The
        // folder's counts say in one read whether there is any job to find.
        if self
            .tally(folder)
            .is_ok_and(|tally| tally.counts.jobs() == 0)
        {
            return;
        }
        if let Err(e) = self.visit_files(folder, under, FilePick::WithJob, every(visit)) {
            error!(folder, error = %e, "cannot read the jobs of a folder; a rescan tries again");
        }
    }

    fn take_unstamped(&self, folder: &str) -> bool {
        Store::take_unstamped(self, folder)
    }

    fn stamp_step(&self, folder: &str, from: Option<&StampFrom>, look: LookNow) -> StampStep {
        Store::stamp_step(self, folder, from, look).unwrap_or_else(|e| {
            error!(folder, error = %e, "cannot give ledger entries their files' change times; a later scan tries again");
            StampStep::default()
        })
    }

    fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
        match Store::offer_many(self, files) {
            Ok(offers) => offers
                .into_iter()
                .map(|offer| match offer {
                    Offer::Queued(_) => SinkOffer::Queued,
                    Offer::AlreadyQueued(_) | Offer::UpToDate => SinkOffer::Known,
                })
                .collect(),
            Err(e) => {
                error!(files = files.len(), error = %e, "cannot queue settled files; will try again");
                vec![SinkOffer::Failed; files.len()]
            }
        }
    }
}

/// Watches one folder until `ctx.shutdown`; sends the start-up scan's summary on `scanned`
/// once every settled file found by it is offered to the queue, or once it paused because
/// the queue holds enough of the folder's files (the scan goes on as they upload).
pub async fn run_folder(
    folder: FolderConfig,
    ctx: WatchContext,
    scanned: tokio::sync::oneshot::Sender<ScanSummary>,
) {
    let opts = Options::new(folder.settle, ctx.rescan_interval);
    let sink = DeletingSink::for_folder(ctx.store, &folder);
    run_folder_with(
        folder,
        sink,
        Some(ctx.wake),
        ctx.shutdown,
        opts,
        |events| InotifyDirs::new(events).map(|d| Box::new(d) as Box<dyn DirWatcher>),
        scanned,
    )
    .await
}

/// [`run_folder`] with every part injectable: the sink, the timings and how directory
/// watches are made (`make_dirs` receives the event handler to give notify).
///
/// 1. The folder's state: its filters, its watches and the channel of their events
///    ([`folder_state`]).
/// 2. The start-up scan, whose summary goes to `scanned`.
/// 3. Events and ticks until shutdown ([`serve_folder`]).
pub async fn run_folder_with<F>(
    folder: FolderConfig,
    sink: Arc<dyn Sink>,
    wake: Option<Arc<Notify>>,
    shutdown: CancellationToken,
    opts: Options,
    make_dirs: F,
    scanned: oneshot::Sender<ScanSummary>,
) where
    F: FnOnce(EventSender) -> notify::Result<Box<dyn DirWatcher>>,
{
    let span = tracing::info_span!("watch", folder = %folder.path.display());
    async move {
        let ticks = Ticks {
            busy: opts.tick,
            quiet: opts.idle_tick.max(opts.tick),
        };
        let Some((state, events)) = folder_state(&folder, sink, wake, &shutdown, opts, make_dirs)
        else {
            let _ = scanned.send(ScanSummary::default());
            return;
        };
        let Some(summary) = on_blocking_pool(&state, FolderState::start).await else {
            return;
        };
        let _ = scanned.send(summary);
        serve_folder(&state, events, &shutdown, ticks).await;
        // Dropping the state drops the watcher, which stops notify's thread.
        drop(state);
    }
    .instrument(span)
    .await
}

/// The events of a folder's watches, as the watches' reading thread sends them.
type Events = mpsc::Receiver<notify::Result<notify::Event>>;

/// How often a folder ticks: while files wait to settle, and while none does.
#[derive(Clone, Copy)]
struct Ticks {
    busy: Duration,
    quiet: Duration,
}

/// Step 1 of [`run_folder_with`]: the folder's state and the channel of its watches'
/// events. `None`, said in an error, when its include or exclude patterns are bad; a
/// folder whose watches cannot be made is rescanned instead.
fn folder_state<F>(
    folder: &FolderConfig,
    sink: Arc<dyn Sink>,
    wake: Option<Arc<Notify>>,
    shutdown: &CancellationToken,
    opts: Options,
    make_dirs: F,
) -> Option<(Arc<Mutex<FolderState>>, Events)>
where
    F: FnOnce(EventSender) -> notify::Result<Box<dyn DirWatcher>>,
{
    let filter = match Filter::new(&folder.include, &folder.exclude) {
        Ok(filter) => filter,
        Err(e) => {
            error!(error = %e, "cannot watch the folder: bad include/exclude pattern");
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(opts.event_capacity.max(1));
    let flags = Arc::new(EventFlags::default());
    let dirs = match make_dirs(EventSender::new(tx, flags.clone())) {
        Ok(dirs) => dirs,
        Err(e) => {
            error!(error = %e, "cannot create a file watcher (is fs.inotify.max_user_instances reached?); the folder is rescanned every {} instead", humantime::format_duration(opts.fallback_interval));
            Box::new(NoDirs {
                reason: format!("no file watcher: {e}"),
            })
        }
    };
    let state = FolderState::new(FolderParts {
        root: folder.path.clone(),
        filter,
        recursive: folder.recursive,
        settle: folder.settle,
        dirs,
        sink,
        wake,
        flags,
        cancel: shutdown.clone(),
        opts,
        spool: spool::Spool::new(&folder.path, &folder.after_upload),
    });
    Some((Arc::new(Mutex::new(state)), rx))
}

/// Step 3 of [`run_folder_with`]: hands the watches' events and the ticks to the folder's
/// state on the blocking pool until shutdown, or until its work panics.
async fn serve_folder(
    state: &Arc<Mutex<FolderState>>,
    mut events: Events,
    shutdown: &CancellationToken,
    ticks: Ticks,
) {
    let mut next_tick = Instant::now() + ticks.busy;
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next_tick) => {
                let Some(quiet) = on_blocking_pool(state, |st| {
                    st.tick();
                    st.is_quiet()
                })
                .await else {
                    break;
                };
                next_tick = if quiet {
                    // Nothing waits on a quiet folder's tick: it goes on the daemon's beat.
                    crate::beat::on_beat(Instant::now() + ticks.quiet)
                } else {
                    Instant::now() + ticks.busy
                };
            }
            event = events.recv(), if events_open => {
                let Some(event) = event else {
                    warn!("the file watcher stopped; relying on rescans");
                    events_open = false;
                    continue;
                };
                let batch = with_queued_events(event, &mut events);
                let Some(quiet) = on_blocking_pool(state, move |st| {
                    st.handle_events(batch);
                    st.is_quiet()
                })
                .await else {
                    break;
                };
                if !quiet {
                    // A file to settle: back to the short tick.
                    next_tick = next_tick.min(Instant::now() + ticks.busy);
                }
            }
        }
    }
}

/// `first` and the events already queued behind it, up to [`EVENT_BATCH`].
fn with_queued_events(
    first: notify::Result<notify::Event>,
    events: &mut Events,
) -> Vec<notify::Result<notify::Event>> {
    let mut batch = vec![first];
    while batch.len() < EVENT_BATCH {
        match events.try_recv() {
            Ok(event) => batch.push(event),
            Err(_) => break,
        }
    }
    batch
}

/// Runs `work` on the folder state on the blocking pool, in the caller's tracing context.
/// `None` if it panicked (logged); the folder loop then stops.
async fn on_blocking_pool<R, W>(state: &Arc<Mutex<FolderState>>, work: W) -> Option<R>
where
    R: Send + 'static,
    W: FnOnce(&mut FolderState) -> R + Send + 'static,
{
    let state = state.clone();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let span = tracing::Span::current();
    let joined = tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let _entered = span.enter();
            let mut state = state
                .lock()
                .expect("the folder state is only poisoned by a panic, which ends the loop");
            work(&mut state)
        })
    })
    .await;
    match joined {
        Ok(result) => Some(result),
        Err(e) => {
            error!(error = %e, "the folder watcher failed; this folder is no longer watched");
            None
        }
    }
}

/// What `upsync check` says of a folder on a shared file system (module `shared_fs`): that
/// files other machines write there raise no event, and how often the daemon rescans it
/// for them. `None` for a folder on a local file system.
pub fn shared_folder_note(
    folder: &FolderConfig,
    rescan_interval: Option<Duration>,
) -> Option<String> {
    let kind = shared_fs::shared_kind(&folder.path)?;
    let every = Options::new(folder.settle, rescan_interval).fallback_interval;
    Some(format!(
        "{} is on a shared file system ({kind}): files other machines write there raise no \
         file event here, so the daemon also rescans it every {}",
        folder.path.display(),
        humantime::format_duration(every)
    ))
}

/// Tells the sink about every file of the folder at `root` (under the relative prefix
/// `under`) that has something pending but no longer exists. Call only while the folder
/// itself is there: an unmounted folder must not look like deleted files.
pub fn forget_vanished(root: &std::path::Path, folder_key: &str, under: &str, sink: &dyn Sink) {
    let gone = vanished_files(root, folder_key, under, sink);
    if !gone.is_empty() {
        sink.vanished_many(&gone);
    }
}

/// The files [`forget_vanished`] would tell the sink about.
fn vanished_files(
    root: &std::path::Path,
    folder_key: &str,
    under: &str,
    sink: &dyn Sink,
) -> Vec<FileKey> {
    let mut gone = Vec::new();
    let mut presence = presence::Presence::new(root);
    sink.visit_tracked(folder_key, under, &mut |rel| {
        if presence.is_gone(rel) {
            gone.push(FileKey::new(folder_key, rel));
        }
    });
    gone
}

/// `visit` as a walk of the store's files that goes to the end.
fn every(visit: &mut dyn FnMut(&str)) -> impl FnMut(&str) -> std::ops::ControlFlow<()> + '_ {
    |rel| {
        visit(rel);
        std::ops::ControlFlow::Continue(())
    }
}

/// Whether a file the ledger or the queue tracks is gone: nothing is at its path any more
/// (a directory or a link in its place is not a deletion of the file).
pub(super) fn is_gone(path: &std::path::Path) -> bool {
    matches!(
        std::fs::symlink_metadata(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    )
}

#[cfg(test)]
mod backlog_tests;
#[cfg(test)]
mod sink_tests;
#[cfg(test)]
mod tests;
