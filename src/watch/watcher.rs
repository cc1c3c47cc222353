//! The watches' interface: one non-recursive watch per directory, an event callback that
//! never blocks, and the help text for the inotify watch limit. Module `inotify` makes
//! the watches.
//!
//! Watching each directory ourselves (instead of notify's recursive mode) keeps a failure to
//! one subtree: a directory whose watch cannot be added is rescanned periodically instead.
//! Adding watches goes through [`DirWatcher`] so that a test can simulate the limit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// Where the kernel's per-user inotify watch limit is read from.
pub const MAX_USER_WATCHES_FILE: &str = "/proc/sys/fs/inotify/max_user_watches";

/// Adds and removes the watch of single directories.
pub trait DirWatcher: Send {
    /// Watches `dir` (not its subdirectories).
    fn watch_dir(&mut self, dir: &Path) -> notify::Result<()>;
    /// Stops watching `dir`; a watch that is already gone is not an error.
    fn unwatch_dir(&mut self, dir: &Path);
}

/// A stand-in used when no watcher could be created: every directory fails to be watched,
/// so the folder is covered by fallback rescans only.
pub struct NoDirs {
    pub reason: String,
}

impl DirWatcher for NoDirs {
    fn watch_dir(&mut self, dir: &Path) -> notify::Result<()> {
        Err(notify::Error::generic(&self.reason).add_path(dir.to_path_buf()))
    }
    fn unwatch_dir(&mut self, _dir: &Path) {}
}

/// Set from notify's thread, read by the folder loop.
#[derive(Debug, Default)]
pub struct EventFlags {
    /// Events dropped because the channel was full, since the watcher started (never
    /// reset: the folder loop remembers how many it has reported).
    pub dropped: AtomicU64,
    /// Events were lost (channel full, or the kernel's queue overflowed): rescan soon.
    pub rescan_needed: AtomicBool,
}

/// The event handler: forwards events into a bounded channel without ever blocking the
/// watches' reading thread; when the channel is full the event is counted and a rescan
/// requested. Opens and reads never come (module `inotify` does not ask for them), so a
/// scan's own listings cannot fill the channel.
pub struct EventSender {
    tx: mpsc::Sender<notify::Result<notify::Event>>,
    flags: Arc<EventFlags>,
}

impl EventSender {
    pub fn new(tx: mpsc::Sender<notify::Result<notify::Event>>, flags: Arc<EventFlags>) -> Self {
        EventSender { tx, flags }
    }

    /// The flags this sender sets, for a test to read the dropped-event count.
    #[cfg(test)]
    pub(crate) fn flags(&self) -> Arc<EventFlags> {
        Arc::clone(&self.flags)
    }
}

impl notify::EventHandler for EventSender {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            self.flags.dropped.fetch_add(1, Ordering::Relaxed);
            self.flags.rescan_needed.store(true, Ordering::Release);
        }
    }
}

/// Reads the current per-user inotify watch limit.
pub fn max_user_watches() -> Option<u64> {
    std::fs::read_to_string(MAX_USER_WATCHES_FILE)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A limit worth suggesting: room for at least twice the folder's directories on top of the
/// current limit, and never less than the common 524288.
pub fn suggested_max_user_watches(current: Option<u64>, directories: u64) -> u64 {
    let wanted = current.unwrap_or(0) + directories.saturating_mul(2);
    wanted.next_power_of_two().max(524_288)
}

/// The error logged (once per folder) when the watch limit is reached.
pub fn limit_message(
    folder: &Path,
    directories: u64,
    current: Option<u64>,
    failed_dir: &Path,
    rescan_every: Duration,
) -> String {
    let current_text = current.map_or_else(|| "unknown".to_string(), |v| v.to_string());
    format!(
        "inotify watch limit reached (fs.inotify.max_user_watches = {current_text}); {} has \
         {directories} directories, one watch each: raise it with 'sysctl \
         fs.inotify.max_user_watches={}' (and persist it in /etc/sysctl.d/); until then {} \
         (and any other directory that cannot be watched) is rescanned every {}",
        folder.display(),
        suggested_max_user_watches(current, directories),
        failed_dir.display(),
        humantime::format_duration(rescan_every),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventHandler;

    #[test]
    fn limit_message_names_the_sysctl_the_numbers_and_the_fallback() {
        let msg = limit_message(
            Path::new("/data/x"),
            12000,
            Some(8192),
            Path::new("/data/x/sub"),
            Duration::from_secs(30),
        );
        assert_eq!(
            msg,
            "inotify watch limit reached (fs.inotify.max_user_watches = 8192); /data/x has \
             12000 directories, one watch each: raise it with 'sysctl \
             fs.inotify.max_user_watches=524288' (and persist it in /etc/sysctl.d/); until then \
             /data/x/sub (and any other directory that cannot be watched) is rescanned every 30s"
        );
    }

    #[test]
    fn suggested_limit_grows_with_large_trees() {
        assert_eq!(suggested_max_user_watches(Some(8192), 100), 524_288);
        assert_eq!(
            suggested_max_user_watches(Some(524_288), 1_000_000),
            4_194_304
        );
        assert_eq!(suggested_max_user_watches(None, 10), 524_288);
    }

    #[test]
    fn a_full_channel_drops_the_event_counts_it_and_requests_a_rescan() {
        let (tx, mut rx) = mpsc::channel(1);
        let flags = Arc::new(EventFlags::default());
        let mut sender = EventSender::new(tx, flags.clone());
        let event = || Ok(notify::Event::new(notify::EventKind::Any));
        sender.handle_event(event());
        assert!(!flags.rescan_needed.load(Ordering::Acquire));
        sender.handle_event(event());
        sender.handle_event(event());
        assert_eq!(flags.dropped.load(Ordering::Relaxed), 2);
        assert!(flags.rescan_needed.load(Ordering::Acquire));
        assert!(rx.try_recv().is_ok(), "the first event was delivered");
    }
}
