//! Work a whole-folder scan leaves for the ticks: the backpressure of scans (a scan pauses
//! while the queue holds `Options::backlog` of the folder's jobs and goes on once half of
//! them are claimed), and the walk giving ledger entries of an older version their files'
//! change times (module `stamp`). Real files in a temp dir, a sink whose queue the test
//! drains or a real queue, ticks driven by hand.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::folder::{FolderParts, FolderState, Options};
use super::watcher::{DirWatcher, EventFlags};
use super::{DEFAULT_EXCLUDES, Filter, Sink, SinkOffer};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Store};

const DIRS: usize = 6;
const FILES_PER_DIR: usize = 20;
const BACKLOG: u64 = 30;

/// A queue the test drains by hand: `queued` is what was offered minus what was drained.
#[derive(Default)]
struct DrainedByHand {
    offered: Mutex<Vec<String>>,
    drained: AtomicU64,
    scans_done: AtomicUsize,
}

impl DrainedByHand {
    fn offered(&self) -> usize {
        self.offered.lock().expect("not poisoned").len()
    }
    fn drain_to(&self, left: u64) {
        let offered = self.offered() as u64;
        self.drained.store(offered - left, Ordering::SeqCst);
    }
}

impl Sink for DrainedByHand {
    fn is_uploaded(&self, _key: &FileKey, _fingerprint: &Fingerprint) -> bool {
        false
    }
    fn offer(&self, key: &FileKey, _fingerprint: &Fingerprint) -> SinkOffer {
        self.offered
            .lock()
            .expect("not poisoned")
            .push(key.rel.clone());
        SinkOffer::Queued
    }
    fn queued(&self, _folder: &str) -> Option<u64> {
        Some(self.offered() as u64 - self.drained.load(Ordering::SeqCst))
    }
    fn scan_done(&self, _folder: &str) {
        self.scans_done.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every watch succeeds; no events are ever delivered (the test drives the state).
struct SilentDirs;

impl DirWatcher for SilentDirs {
    fn watch_dir(&mut self, _dir: &Path) -> notify::Result<()> {
        Ok(())
    }
    fn unwatch_dir(&mut self, _dir: &Path) {}
}

/// `DIRS` directories of `FILES_PER_DIR` files, all written an hour ago (settled at once).
fn old_tree(root: &Path) {
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for d in 0..DIRS {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir).expect("create a directory");
        for f in 0..FILES_PER_DIR {
            let path = dir.join(format!("f{f}.csv"));
            std::fs::write(&path, b"x").expect("write a file");
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_modified(an_hour_ago))
                .expect("backdate a file");
        }
    }
}

fn folder(root: &Path, sink: Arc<dyn Sink>) -> FolderState {
    let mut opts = Options::new(Duration::from_secs(1), None);
    opts.backlog = BACKLOG;
    FolderState::new(FolderParts {
        root: root.to_path_buf(),
        filter: Filter::new::<&str>(&[], DEFAULT_EXCLUDES).expect("defaults are valid"),
        recursive: true,
        settle: Duration::from_secs(1),
        dirs: Box::new(SilentDirs),
        sink,
        wake: None,
        flags: Arc::new(EventFlags::default()),
        cancel: CancellationToken::new(),
        opts,
        spool: None,
    })
}

#[test]
fn a_scan_pauses_at_the_backlog_and_goes_on_once_half_of_it_is_claimed() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    old_tree(dir.path());
    let sink = Arc::new(DrainedByHand::default());
    let mut state = folder(dir.path(), sink.clone());

    // The backlog is looked at after each batch of at most BACKLOG directory entries, so
    // the scan goes past it by less than one batch.
    let summary = state.start();
    let first = sink.offered() as u64;
    assert!((BACKLOG..2 * BACKLOG).contains(&first), "{first} offered");
    assert_eq!(summary.queued, first);
    assert!(state.scan_paused());
    assert!(!state.is_quiet(), "a paused scan keeps the short tick");
    assert_eq!(sink.scans_done.load(Ordering::SeqCst), 0);

    // Nothing claimed, or not yet half of the backlog: the scan waits.
    state.tick();
    assert_eq!(sink.offered() as u64, first);
    sink.drain_to(BACKLOG / 2 + 1);
    state.tick();
    assert_eq!(sink.offered() as u64, first, "16 queued is over half");

    // Half of it claimed: the scan goes on until the backlog is full again.
    sink.drain_to(BACKLOG / 2);
    state.tick();
    let queued = sink.offered() as u64 - first + BACKLOG / 2;
    assert!((BACKLOG..2 * BACKLOG).contains(&queued), "{queued} queued");
    assert!(state.scan_paused());

    // Drained each time: the scan ends, every file offered once, the end told once.
    for _ in 0..DIRS {
        sink.drain_to(0);
        state.tick();
    }
    assert!(!state.scan_paused());
    let mut offered = sink.offered.lock().expect("not poisoned").clone();
    offered.sort();
    offered.dedup();
    assert_eq!(offered.len(), DIRS * FILES_PER_DIR);
    assert_eq!(
        sink.offered(),
        DIRS * FILES_PER_DIR,
        "no file offered twice"
    );
    assert_eq!(sink.scans_done.load(Ordering::SeqCst), 1);
}

#[test]
fn a_sink_that_does_not_count_its_queue_never_pauses_a_scan() {
    struct Uncounted(DrainedByHand);
    impl Sink for Uncounted {
        fn is_uploaded(&self, key: &FileKey, fp: &Fingerprint) -> bool {
            self.0.is_uploaded(key, fp)
        }
        fn offer(&self, key: &FileKey, fp: &Fingerprint) -> SinkOffer {
            self.0.offer(key, fp)
        }
    }
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    old_tree(dir.path());
    let sink = Arc::new(Uncounted(DrainedByHand::default()));
    let mut state = folder(dir.path(), sink.clone());
    let summary = state.start();
    assert_eq!(summary.queued, (DIRS * FILES_PER_DIR) as u64);
    assert!(!state.scan_paused());
}

#[test]
fn a_start_over_a_ledger_without_change_times_only_reads_and_a_tick_after_it_stamps_the_entries() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).expect("create the folder");
    old_tree(&root);
    let store = Store::open(&dir.path().join("state")).expect("a fresh state dir opens");
    let folder_key = root.to_string_lossy().into_owned();
    let files = || {
        let mut files = Vec::new();
        for d in 0..DIRS {
            for f in 0..FILES_PER_DIR {
                let rel = format!("d{d}/f{f}.csv");
                let meta = std::fs::metadata(root.join(&rel)).expect("the file is there");
                files.push((FileKey::new(&folder_key, &rel), Fingerprint::of(&meta)));
            }
        }
        files
    };
    for (key, now) in files() {
        let older = Fingerprint {
            ctime_ns: None,
            ..now
        };
        store
            .record_uploaded(&key, &older, "r", None)
            .expect("the ledger writes");
    }
    let recorded = |key: &FileKey| {
        store
            .ledger_get(key)
            .expect("the ledger reads")
            .expect("recorded")
            .fingerprint
    };
    let mut state = folder(&root, Arc::new(store.clone()));

    let summary = state.start();
    assert_eq!(summary.files_seen, (DIRS * FILES_PER_DIR) as u64);
    assert_eq!(summary.queued, 0, "every file matches its entry");
    for (key, _) in files() {
        assert_eq!(recorded(&key).ctime_ns, None, "the scan's looks only read");
    }
    assert!(!state.is_quiet(), "the walk keeps the short tick");

    state.tick();
    assert!(
        state.is_quiet(),
        "{} entries are one step",
        DIRS * FILES_PER_DIR
    );
    for (key, now) in files() {
        assert_eq!(recorded(&key), now);
    }
    assert!(store.jobs().expect("the jobs read").is_empty());
}
