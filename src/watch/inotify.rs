//! The kernel's inotify for one folder: its directory watches, and a thread of their own
//! that reads the events and hands them on as notify events.
//!
//! notify's own inotify backend asks the kernel for every open of a watched file or
//! directory as well as for its changes. The daemon opens each file it uploads and each
//! directory it scans, and other readers of the tree (a backup, the pipeline's consumers)
//! open theirs: every open woke the event thread, which read it, built an event and threw
//! it away, about 5 µs of the daemon's CPU each, and took a place in the kernel's event
//! queue, whose overflow costs a rescan of the whole folder. The folder acts on changes
//! only, so this watcher asks for nothing else. It reads the kernel's events at most every
//! [`GATHER_MS`], so that a file written in many small writes is a few events, not one per
//! write.
//!
//! The events keep notify's shapes (the folder's code and its tests speak them): a
//! change inside a watched directory names the entry's path, a change of the directory
//! itself (removed, moved away) names the directory, and an overflow of the kernel's queue
//! is an event flagged for a rescan.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};
use notify::{Event, EventHandler, EventKind};

use super::watcher::DirWatcher;

/// What each directory is watched for: the changes of its entries and of itself.
const CHANGES: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// How long events gather after a read before the next. The kernel merges an event into
/// the last one queued when the two are alike, so a file written in 4 KiB writes is one
/// IN_MODIFY per gathering instead of one per write (the daemon spent as much CPU as the
/// writer, or more, on those). Short beside any settle time; the queue's 16,384 places
/// hold what a burst of new files raises in that time many times over.
const GATHER_MS: libc::c_int = 10;

/// Room for about a hundred events with names of 255 bytes per read.
const READ_BUFFER: usize = 32 * 1024;

/// What the reader waits for.
enum Wait {
    /// The kernel's next event (or the end).
    ForEvents,
    /// [`GATHER_MS`] to pass (or the end).
    Gathering,
}

/// The watched directories by watch descriptor, and the other way round.
#[derive(Default)]
struct Directories {
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
}

impl Directories {
    fn insert(&mut self, path: &Path, wd: WatchDescriptor) {
        // One directory reached by two paths (a bind mount) has one descriptor; the latest
        // path names its events.
        if let Some(old) = self.by_wd.insert(wd.clone(), path.to_path_buf()) {
            self.by_path.remove(&old);
        }
        self.by_path.insert(path.to_path_buf(), wd);
    }

    /// Forgets the watch the kernel ended (`IN_IGNORED`: removed, or its directory gone).
    fn forget(&mut self, wd: &WatchDescriptor) {
        if let Some(path) = self.by_wd.remove(wd)
            && self.by_path.get(&path) == Some(wd)
        {
            // Not when the path has been watched again since, under a new descriptor.
            self.by_path.remove(&path);
        }
    }

    fn path_of(&self, wd: &WatchDescriptor, name: Option<&OsStr>) -> Option<PathBuf> {
        let dir = self.by_wd.get(wd)?;
        Some(name.map_or_else(|| dir.clone(), |name| dir.join(name)))
    }
}

/// The directory watches of one folder; events go to the handler given at creation.
pub struct InotifyDirs {
    watches: Watches,
    directories: Arc<Mutex<Directories>>,
    /// Dropping it ends the reading thread (its poll sees the pipe hang up).
    stop: Option<OwnedFd>,
    reader: Option<JoinHandle<()>>,
}

impl InotifyDirs {
    pub fn new<H: EventHandler>(handler: H) -> notify::Result<InotifyDirs> {
        let inotify = Inotify::init().map_err(notify::Error::io)?;
        let (stop_read, stop) = pipe().map_err(notify::Error::io)?;
        let watches = inotify.watches();
        let directories = Arc::new(Mutex::new(Directories::default()));
        let reader = Reader {
            inotify,
            stop: stop_read,
            directories: Arc::clone(&directories),
            handler,
        };
        let reader = std::thread::Builder::new()
            .name("upsync-inotify".into())
            .spawn(move || reader.run())
            .map_err(notify::Error::io)?;
        Ok(InotifyDirs {
            watches,
            directories,
            stop: Some(stop),
            reader: Some(reader),
        })
    }

    fn directories(&self) -> MutexGuard<'_, Directories> {
        lock(&self.directories)
    }
}

impl DirWatcher for InotifyDirs {
    fn watch_dir(&mut self, dir: &Path) -> notify::Result<()> {
        // Held across the add, so the reader cannot meet the new descriptor unnamed.
        let mut directories = lock(&self.directories);
        match self.watches.add(dir, CHANGES) {
            Ok(wd) => {
                directories.insert(dir, wd);
                Ok(())
            }
            Err(e) => Err(watch_error(e).add_path(dir.to_path_buf())),
        }
    }

    fn unwatch_dir(&mut self, dir: &Path) {
        let wd = self.directories().by_path.get(dir).cloned();
        if let Some(wd) = wd {
            // Gone already when the directory was deleted; the kernel's IN_IGNORED then
            // (or now) removes it from the map.
            let _ = self.watches.remove(wd);
        }
    }
}

impl Drop for InotifyDirs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The directories' maps, shared by the watcher and its reading thread.
fn lock(directories: &Mutex<Directories>) -> MutexGuard<'_, Directories> {
    directories.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limit of watches is `ENOSPC`, a directory gone before its watch is `ENOENT`: the
/// folder handles those two kinds (a fallback rescan, nothing) as notify names them.
fn watch_error(e: io::Error) -> notify::Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => notify::Error::new(notify::ErrorKind::MaxFilesWatch),
        Some(libc::ENOENT) => notify::Error::new(notify::ErrorKind::PathNotFound),
        _ => notify::Error::io(e),
    }
}

/// A pipe whose write end, once closed, wakes the reader to stop.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The thread that reads the events.
struct Reader<H> {
    inotify: Inotify,
    stop: OwnedFd,
    directories: Arc<Mutex<Directories>>,
    handler: H,
}

impl<H: EventHandler> Reader<H> {
    fn run(mut self) {
        let mut buffer = vec![0u8; READ_BUFFER];
        // 1. Wait for the kernel's first event. 2. Read and hand on all that are queued.
        // 3. Let the next ones gather a moment before reading again.
        let ended = loop {
            match self.wait(Wait::ForEvents) {
                Ok(true) => {}
                other => break other,
            }
            self.read_available(&mut buffer);
            match self.wait(Wait::Gathering) {
                Ok(true) => {}
                other => break other,
            }
        };
        if let Err(e) = ended {
            // poll(2) fails only for want of kernel memory: the folder's rescans are all
            // that still see its changes.
            tracing::error!(error = %e, "the file watcher stopped");
            self.handler.handle_event(Err(notify::Error::io(e)));
        }
    }

    /// Waits as `wait` says; false when the watcher was dropped meanwhile.
    fn wait(&self, wait: Wait) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.inotify.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let (count, timeout_ms) = match wait {
            Wait::ForEvents => (2, -1),
            Wait::Gathering => (1, GATHER_MS),
        };
        loop {
            // SAFETY: poll(2) on the first `count` entries of an array of two pollfd that
            // lives across the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
            if ready >= 0 {
                return Ok(fds[0].revents == 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads and hands on every event queued, until the kernel has none left.
    fn read_available(&mut self, buffer: &mut [u8]) {
        loop {
            let events = match self.inotify.read_events(buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.handler.handle_event(Err(notify::Error::io(e)));
                    return;
                }
            };
            let mut directories = lock(&self.directories);
            let mut translated = Vec::new();
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    translated.push(Event::new(EventKind::Other).set_flag(Flag::Rescan));
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) {
                    directories.forget(&event.wd);
                    continue;
                }
                if let Some(path) = directories.path_of(&event.wd, event.name) {
                    translated.extend(
                        kinds(event.mask).map(|kind| Event::new(kind).add_path(path.clone())),
                    );
                }
            }
            drop(directories);
            for event in translated {
                self.handler.handle_event(Ok(event));
            }
        }
    }
}

/// The notify kinds of one inotify event, in the order notify gives them.
fn kinds(mask: EventMask) -> impl Iterator<Item = EventKind> {
    let (created, removed) = if mask.contains(EventMask::ISDIR) {
        (CreateKind::Folder, RemoveKind::Folder)
    } else {
        (CreateKind::File, RemoveKind::File)
    };
    [
        (
            EventMask::MOVED_FROM | EventMask::MOVE_SELF,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        ),
        (
            EventMask::MOVED_TO,
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        ),
        (EventMask::CREATE, EventKind::Create(created)),
        (EventMask::DELETE, EventKind::Remove(removed)),
        (
            EventMask::DELETE_SELF,
            EventKind::Remove(RemoveKind::Folder),
        ),
        (
            EventMask::MODIFY,
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ),
        (
            EventMask::CLOSE_WRITE,
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ),
        (
            EventMask::ATTRIB,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ),
    ]
    .into_iter()
    .filter(move |(flags, _)| mask.intersects(*flags))
    .map(|(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    type Received = mpsc::Receiver<notify::Result<Event>>;

    /// The writes of the test of small writes (4 KiB each, 39 MiB in all).
    const WRITES: usize = 10_000;

    /// How long a test waits for an event it expects; events come within milliseconds.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn watching(dirs: &[&Path]) -> (InotifyDirs, Received) {
        let (tx, rx) = mpsc::channel();
        let mut watcher = InotifyDirs::new(tx).unwrap();
        for dir in dirs {
            watcher.watch_dir(dir).unwrap();
        }
        (watcher, rx)
    }

    /// The events received until one of `kind` names `path`, that one included.
    fn events_until(rx: &Received, kind: EventKind, path: &Path) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = rx
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("no {kind:?} of {}: {e}; {seen:?}", path.display()))
                .unwrap();
            let last = event.kind == kind && event.paths == [path];
            seen.push(event);
            if last {
                return seen;
            }
        }
    }

    /// A watcher whose reader holds on its first event until the sender says go on.
    fn held_watcher() -> (InotifyDirs, Received, mpsc::Sender<()>) {
        let (go_on, hold) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let mut held = Some(hold);
        let handler = move |event: notify::Result<Event>| {
            if let Some(hold) = held.take() {
                hold.recv().unwrap();
            }
            let _ = tx.send(event);
        };
        (InotifyDirs::new(handler).unwrap(), rx, go_on)
    }

    fn closed_after_writing() -> EventKind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    }

    #[test]
    fn reading_files_and_listing_directories_raise_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.csv");
        std::fs::write(&file, "a,b\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let (_watcher, rx) = watching(&[dir.path()]);

        for _ in 0..3 {
            std::fs::read(&file).unwrap();
            std::fs::read_dir(dir.path()).unwrap().for_each(drop);
            std::fs::read_dir(dir.path().join("sub"))
                .unwrap()
                .for_each(drop);
        }
        // Written after the reads: its event comes after any event the reads raised.
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "").unwrap();

        let seen = events_until(&rx, closed_after_writing(), &marker);
        assert!(
            seen.iter().all(|e| e.paths == [marker.clone()]),
            "only the marker's events: {seen:?}"
        );
    }

    #[test]
    fn changes_name_the_entry_and_a_removed_directory_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (_watcher, rx) = watching(&[dir.path(), &sub]);
        let (old, new) = (dir.path().join("a.part"), dir.path().join("a.csv"));

        std::fs::write(&old, "x").unwrap();
        std::fs::rename(&old, &new).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "").unwrap();

        let seen: Vec<(EventKind, Vec<PathBuf>)> =
            events_until(&rx, closed_after_writing(), &marker)
                .into_iter()
                .map(|e| (e.kind, e.paths))
                .collect();
        let expected = [
            (EventKind::Create(CreateKind::File), &old),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), &old),
            (closed_after_writing(), &old),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), &old),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), &new),
            (EventKind::Remove(RemoveKind::Folder), &sub),
        ];
        for (kind, path) in expected {
            assert!(
                seen.contains(&(kind, vec![path.clone()])),
                "{kind:?} of {}: {seen:?}",
                path.display()
            );
        }
    }

    #[test]
    fn an_unwatched_directory_raises_no_event_and_its_descriptor_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (mut watcher, rx) = watching(&[dir.path(), &sub]);

        watcher.unwatch_dir(&sub);
        std::fs::write(sub.join("late.csv"), "x").unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "").unwrap();

        let seen = events_until(&rx, closed_after_writing(), &marker);
        assert!(seen.iter().all(|e| e.paths == [marker.clone()]), "{seen:?}");
        // IN_IGNORED came before the marker's events.
        let directories = watcher.directories();
        assert_eq!(directories.by_path.keys().collect::<Vec<_>>(), [dir.path()]);
        assert_eq!(directories.by_wd.len(), 1);
    }

    #[test]
    fn a_directory_watched_again_keeps_its_name_when_the_old_watch_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (mut watcher, rx, go_on) = held_watcher();
        watcher.watch_dir(dir.path()).unwrap();
        watcher.watch_dir(&sub).unwrap();
        std::fs::write(dir.path().join("first"), "").unwrap();

        // Removed and made again (a pipeline's swap) while the reader is held, so the new
        // watch is added before the old one's IN_IGNORED is read.
        watcher.unwatch_dir(&sub);
        std::fs::remove_dir(&sub).unwrap();
        std::fs::create_dir(&sub).unwrap();
        watcher.watch_dir(&sub).unwrap();
        go_on.send(()).unwrap();
        let file = sub.join("new.csv");
        std::fs::write(&file, "x").unwrap();

        events_until(&rx, closed_after_writing(), &file);
        assert!(watcher.directories().by_path.contains_key(&sub));
    }

    #[test]
    fn a_file_written_in_many_small_writes_is_a_few_events() {
        let dir = tempfile::tempdir().unwrap();
        let (_watcher, rx) = watching(&[dir.path()]);
        let file = dir.path().join("export.csv");

        let mut out = std::fs::File::create(&file).unwrap();
        let block = [b'x'; 4096];
        for _ in 0..WRITES {
            out.write_all(&block).unwrap();
        }
        drop(out);

        let seen = events_until(&rx, closed_after_writing(), &file);
        let modified = seen
            .iter()
            .filter(|e| e.kind == EventKind::Modify(ModifyKind::Data(DataChange::Any)))
            .count();
        assert!(
            (1..WRITES / 10).contains(&modified),
            "{modified} of {WRITES} writes"
        );
    }

    #[test]
    fn a_missing_directory_is_path_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (mut watcher, _rx) = watching(&[]);
        let err = watcher.watch_dir(&dir.path().join("gone")).unwrap_err();
        assert!(
            matches!(err.kind, notify::ErrorKind::PathNotFound),
            "{err:?}"
        );
        assert_eq!(err.paths, [dir.path().join("gone")]);
    }

    /// The kernel drops what its queue cannot hold and says so once: the folder must rescan.
    #[test]
    fn an_overflow_of_the_kernels_queue_is_an_event_flagged_for_a_rescan() {
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if limit > 1_000_000 {
            eprintln!("fs.inotify.max_queued_events is {limit}: too many files to fill it");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (mut watcher, rx, go_on) = held_watcher();
        watcher.watch_dir(dir.path()).unwrap();

        // Each file is a creation and a close after writing: twice the queue's room.
        for i in 0..limit {
            std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap();
        }
        go_on.send(()).unwrap();

        let rescan = std::iter::from_fn(|| rx.recv_timeout(PATIENCE).ok())
            .find(|e| e.as_ref().is_ok_and(|e| e.need_rescan()));
        assert!(rescan.is_some(), "no event flagged for a rescan");
    }

    #[test]
    fn dropping_the_watcher_ends_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (watcher, rx) = watching(&[dir.path()]);
        drop(watcher);
        // The thread owned the handler: the channel is closed once it has ended.
        assert!(matches!(
            rx.recv_timeout(PATIENCE),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
