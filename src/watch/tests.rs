//! Folder-loop tests: real files in temp dirs, real notify (inotify), a recording sink.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{FolderConfig, Target};
use crate::test_logs::capture_logs;

/// Records offers and vanished files; answers `is_uploaded` from a preset ledger and
/// `visit_tracked` from a preset list.
#[derive(Default)]
struct Recorder {
    offers: Mutex<Vec<(FileKey, Fingerprint)>>,
    uploaded: Mutex<HashSet<(String, Fingerprint)>>,
    /// The size of every `offer_many` call.
    batches: Mutex<Vec<usize>>,
    /// `is_uploaded` calls per file (relative path): every scan asks once per file it finds.
    ledger_reads_by_file: Mutex<HashMap<String, usize>>,
    /// `root_lost` calls: the folder was found gone as a whole.
    roots_lost: AtomicUsize,
    /// Files with something pending (relative paths).
    pending: Mutex<Vec<String>>,
    vanished: Mutex<Vec<String>>,
}

impl Recorder {
    fn offers(&self) -> Vec<(String, Fingerprint)> {
        self.offers
            .lock()
            .expect("recorder lock is not poisoned")
            .iter()
            .map(|(k, f)| (k.rel.clone(), *f))
            .collect()
    }
    fn offers_of(&self, rel: &str) -> Vec<Fingerprint> {
        self.offers()
            .into_iter()
            .filter(|(r, _)| r == rel)
            .map(|(_, f)| f)
            .collect()
    }
    fn mark_pending(&self, rel: &str) {
        self.pending
            .lock()
            .expect("recorder lock is not poisoned")
            .push(rel.to_string());
    }
    fn vanished(&self) -> Vec<String> {
        let mut vanished = self
            .vanished
            .lock()
            .expect("recorder lock is not poisoned")
            .clone();
        vanished.sort();
        vanished
    }
    fn ledger_reads_of(&self, rel: &str) -> usize {
        self.ledger_reads_by_file
            .lock()
            .expect("recorder lock is not poisoned")
            .get(rel)
            .copied()
            .unwrap_or(0)
    }
    fn mark_uploaded(&self, rel: &str, fp: Fingerprint) {
        self.uploaded
            .lock()
            .expect("recorder lock is not poisoned")
            .insert((rel.to_string(), fp));
    }
}

impl Sink for Recorder {
    fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool {
        *self
            .ledger_reads_by_file
            .lock()
            .expect("recorder lock is not poisoned")
            .entry(key.rel.clone())
            .or_default() += 1;
        self.uploaded
            .lock()
            .expect("recorder lock is not poisoned")
            .contains(&(key.rel.clone(), *fingerprint))
    }
    fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> SinkOffer {
        self.offers
            .lock()
            .expect("recorder lock is not poisoned")
            .push((key.clone(), *fingerprint));
        SinkOffer::Queued
    }
    fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
        self.batches
            .lock()
            .expect("recorder lock is not poisoned")
            .push(files.len());
        files.iter().map(|(key, fp)| self.offer(key, fp)).collect()
    }
    fn vanished(&self, key: &FileKey) {
        self.pending
            .lock()
            .expect("recorder lock is not poisoned")
            .retain(|rel| *rel != key.rel);
        self.vanished
            .lock()
            .expect("recorder lock is not poisoned")
            .push(key.rel.clone());
    }
    fn root_lost(&self, _folder: &str) {
        self.roots_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn visit_tracked(&self, _folder: &str, under: &str, visit: &mut dyn FnMut(&str)) {
        let pending = self
            .pending
            .lock()
            .expect("recorder lock is not poisoned")
            .clone();
        for rel in pending.iter().filter(|rel| rel.starts_with(under)) {
            visit(rel);
        }
    }
}

fn folder_config(path: &Path, settle: Duration) -> FolderConfig {
    FolderConfig {
        path: path.to_path_buf(),
        target: Target::KifsDirectory {
            directory: "ingest".into(),
            create: false,
        },
        include: vec![],
        exclude: DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
        settle,
        recursive: true,
        redivis: Default::default(),
        deletes: Default::default(),
        after_upload: Default::default(),
    }
}

struct Running {
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
    summary: ScanSummary,
    wake: Arc<Notify>,
}

impl Running {
    /// Stops the loop and checks that it ends promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.handle)
            .await
            .expect("the folder loop stops within 2 s of shutdown")
            .expect("the folder loop does not panic");
    }
}

type MakeDirs = Box<dyn FnOnce(EventSender) -> notify::Result<Box<dyn DirWatcher>> + Send>;

fn real_dirs() -> MakeDirs {
    Box::new(|events| InotifyDirs::new(events).map(|d| Box::new(d) as Box<dyn DirWatcher>))
}

async fn start_with(
    folder: FolderConfig,
    recorder: Arc<Recorder>,
    opts: Options,
    make_dirs: MakeDirs,
) -> Running {
    let shutdown = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let (tx, rx) = oneshot::channel();
    let sink: Arc<dyn Sink> = recorder.clone();
    let handle = tokio::spawn(run_folder_with(
        folder,
        sink,
        Some(wake.clone()),
        shutdown.clone(),
        opts,
        make_dirs,
        tx,
    ));
    let summary = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the start-up scan finishes within 5 s")
        .expect("the summary is sent");
    Running {
        recorder,
        shutdown,
        handle,
        summary,
        wake,
    }
}

async fn start(root: &Path, settle: Duration) -> Running {
    start_timed(root, settle, Options::new(settle, None)).await
}

/// [`start`] with the loop's timings `opts`.
async fn start_timed(root: &Path, settle: Duration, opts: Options) -> Running {
    let folder = folder_config(root, settle);
    start_with(folder, Arc::new(Recorder::default()), opts, real_dirs()).await
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the fresh file `name` into `dir` and waits until it is offered. Events are handled
/// in order and every file seen before it settles no later than it (the same settle time,
/// started earlier; an old file at once), so once it is offered, any earlier change not
/// offered is held back by the loop, not waiting for its turn: the moment to assert that
/// something was *not* offered. (A file its writer holds open is held back on purpose: that
/// is what a test of the writer rule asserts after a barrier.)
async fn barrier(run: &Running, dir: &Path, name: &str) {
    std::fs::write(dir.join(name), name).expect("write the barrier file");
    let rec = run.recorder.clone();
    assert!(
        eventually(WAIT, || rec.offers_of(name).len() == 1).await,
        "the barrier file {name} is offered: {:?}",
        rec.offers()
    );
}

/// The relative paths offered so far, sorted.
fn offered_names(recorder: &Recorder) -> Vec<String> {
    let mut names: Vec<String> = recorder.offers().into_iter().map(|(r, _)| r).collect();
    names.sort();
    names
}

fn write_old(path: &Path, content: &[u8]) {
    std::fs::write(path, content).expect("write a test file");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("reopen the test file");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set an old mtime");
}

fn fp(path: &Path) -> Fingerprint {
    Fingerprint::read(path).expect("the test file exists")
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn startup_scan_offers_existing_old_files_at_once_and_sends_the_summary() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).expect("create sub");
    std::fs::create_dir_all(root.join(".git")).expect("create .git");
    write_old(&root.join("a.csv"), b"a");
    write_old(&root.join("sub/b.csv"), b"bb");
    write_old(&root.join("skip.tmp"), b"tmp");
    write_old(&root.join(".git/config"), b"git");
    std::fs::write(root.join("fresh.csv"), b"fresh").expect("write");

    // Long enough that fresh.csv cannot look old by the time the scan sees it.
    let run = start(root, Duration::from_secs(1)).await;
    // The summary is sent only after the old files were offered.
    assert_eq!(offered_names(&run.recorder), vec!["a.csv", "sub/b.csv"]);
    assert_eq!(run.summary.files_seen, 3, "a.csv, sub/b.csv and fresh.csv");
    assert_eq!(run.summary.queued, 2);
    assert_eq!(
        run.recorder.offers_of("a.csv"),
        vec![fp(&root.join("a.csv"))]
    );

    let rec = run.recorder.clone();
    assert!(
        eventually(WAIT, || rec.offers_of("fresh.csv").len() == 1).await,
        "the fresh file is offered once it has settled"
    );
    barrier(&run, root, "barrier.csv").await;
    assert_eq!(
        offered_names(&rec),
        vec!["a.csv", "barrier.csv", "fresh.csv", "sub/b.csv"],
        "excluded files are never offered, the others once"
    );
    run.stop().await;
}

#[tokio::test]
async fn scanned_files_are_offered_in_batches_each_file_once() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    for sub in ["a", "b", "c"] {
        std::fs::create_dir_all(root.join(sub)).expect("create a sub-directory");
        for n in 0..200 {
            write_old(&root.join(format!("{sub}/f{n}.csv")), b"x");
        }
    }
    let recorder = Arc::new(Recorder::default());
    recorder.mark_uploaded("b/f7.csv", fp(&root.join("b/f7.csv")));
    let folder = folder_config(root, Duration::from_secs(1));
    let opts = Options::new(Duration::from_secs(1), None);
    let run = start_with(folder, recorder.clone(), opts, real_dirs()).await;

    let offered: HashSet<String> = recorder.offers().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        recorder.offers().len(),
        599,
        "every file but the uploaded one, once"
    );
    assert_eq!(offered.len(), 599);
    assert!(
        !offered.contains("b/f7.csv"),
        "the uploaded version is not offered"
    );
    assert_eq!(run.summary.files_seen, 600);
    assert_eq!(run.summary.queued, 599);
    let batches = recorder.batches.lock().expect("not poisoned").clone();
    assert!(
        batches.len() <= 3 && batches.iter().all(|&n| n <= 256),
        "599 files go in at most three offers of at most 256: {batches:?}"
    );
    // One ledger read per file: the walk's check, run with its stat.
    for rel in ["a/f0.csv", "b/f7.csv", "c/f199.csv"] {
        assert_eq!(recorder.ledger_reads_of(rel), 1, "{rel}");
    }

    // A directory moved in later is scanned on its event and batched the same way.
    let outside = tempfile::tempdir().expect("a temp dir can be created");
    std::fs::create_dir_all(outside.path().join("d")).expect("create d");
    for n in 0..300 {
        write_old(&outside.path().join(format!("d/g{n}.csv")), b"y");
    }
    std::fs::rename(outside.path().join("d"), root.join("d")).expect("move d in");
    let rec = recorder.clone();
    assert!(
        eventually(WAIT, || rec.offers().len() == 899).await,
        "the moved-in files are offered"
    );
    let batches = recorder.batches.lock().expect("not poisoned").clone();
    assert!(
        batches.len() <= 5,
        "300 more files take two more offers, not 300: {batches:?}"
    );
    assert_eq!(recorder.ledger_reads_of("d/g299.csv"), 1);
    run.stop().await;
}

#[tokio::test]
async fn a_queued_offer_wakes_a_waiting_worker() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let run = start(dir.path(), Duration::from_millis(200)).await;
    let woken = run.wake.notified();
    std::fs::write(dir.path().join("x.csv"), b"x").expect("write");
    tokio::time::timeout(WAIT, woken)
        .await
        .expect("the wake notify fires when a job is queued");
    run.stop().await;
}

#[tokio::test]
async fn a_file_written_slowly_is_offered_once_with_its_final_fingerprint() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let run = start(dir.path(), Duration::from_millis(500)).await;
    let path = dir.path().join("slow.csv");
    let mut file = std::fs::File::create(&path).expect("create the slow file");
    // The writer's pace, not a wait: a chunk every 200 ms for 1.6 s, three settle periods.
    for i in 0..8 {
        file.write_all(format!("chunk {i}\n").as_bytes())
            .expect("write a chunk");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(file);
    barrier(&run, dir.path(), "barrier.csv").await;
    // An offer while the file was being written would stand here with a smaller size.
    assert_eq!(run.recorder.offers_of("slow.csv"), vec![fp(&path)]);
    assert_eq!(fp(&path).size, 64, "the final size was offered");
    run.stop().await;
}

#[tokio::test]
async fn a_file_appended_by_separate_opens_waits_for_the_writes_to_stop() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let run = start(dir.path(), Duration::from_millis(600)).await;
    let path = dir.path().join("appended.log.csv");
    for i in 0..8 {
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open for append");
        file.write_all(format!("line {i}\n").as_bytes())
            .expect("append");
        drop(file);
        // The writer's pace: the next append comes within a settle period.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    barrier(&run, dir.path(), "barrier.csv").await;
    // An offer between two appends would stand here with a smaller size.
    assert_eq!(run.recorder.offers_of("appended.log.csv"), vec![fp(&path)]);
    run.stop().await;
}

#[tokio::test]
async fn repeated_events_give_one_offer_per_distinct_settled_fingerprint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let run = start(dir.path(), Duration::from_millis(200)).await;
    let path = dir.path().join("r.csv");
    std::fs::write(&path, b"one").expect("write");
    let rec = run.recorder.clone();
    assert!(eventually(WAIT, || rec.offers().len() == 1).await);
    let first = fp(&path);

    // Events that change nothing of the file: opening and reading it.
    for _ in 0..3 {
        let _ = std::fs::read(&path).expect("read");
    }
    barrier(&run, dir.path(), "after-reads.csv").await;
    assert_eq!(rec.offers_of("r.csv"), vec![first]);

    // A permission change (the attribute event) is a new version by its change time: a
    // file that failed as unreadable is offered again once it is fixed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(eventually(WAIT, || rec.offers_of("r.csv").len() == 2).await);
    let chmodded = fp(&path);
    assert_eq!(
        (chmodded.size, chmodded.mtime_ns),
        (first.size, first.mtime_ns)
    );
    assert_ne!(chmodded, first);

    let mut file = std::fs::File::options()
        .append(true)
        .open(&path)
        .expect("open for append");
    file.write_all(b" two").expect("append");
    drop(file);
    assert!(eventually(WAIT, || rec.offers_of("r.csv").len() == 3).await);
    let second = fp(&path);
    assert_ne!(chmodded, second);
    barrier(&run, dir.path(), "after-append.csv").await;
    assert_eq!(rec.offers_of("r.csv"), vec![first, chmodded, second]);
    run.stop().await;
}

#[tokio::test]
async fn files_in_a_new_subdirectory_are_found_even_if_written_before_its_watch() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("watched");
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&root).expect("create root");
    std::fs::create_dir_all(staging.join("batch/deeper")).expect("create staging");
    std::fs::write(staging.join("batch/a.csv"), b"a").expect("write");
    std::fs::write(staging.join("batch/deeper/b.csv"), b"b").expect("write");

    let run = start(&root, Duration::from_millis(200)).await;
    // Moved in whole: its files existed before any watch on it could.
    std::fs::rename(staging.join("batch"), root.join("batch")).expect("move the tree in");
    // Created and filled at once: races the watch being added.
    std::fs::create_dir_all(root.join("quick/nested")).expect("mkdir");
    std::fs::write(root.join("quick/nested/c.csv"), b"c").expect("write");
    std::fs::write(root.join("quick/d.csv"), b"d").expect("write");

    let rec = run.recorder.clone();
    let all_found = || {
        offered_names(&rec)
            == [
                "batch/a.csv",
                "batch/deeper/b.csv",
                "quick/d.csv",
                "quick/nested/c.csv",
            ]
    };
    assert!(eventually(WAIT, all_found).await, "got {:?}", rec.offers());

    // The new directories are watched: a later file there is reported by events.
    std::fs::write(root.join("batch/deeper/e.csv"), b"e").expect("write");
    assert!(eventually(WAIT, || rec.offers_of("batch/deeper/e.csv").len() == 1).await);
    run.stop().await;
}

#[tokio::test]
async fn a_symlink_pointing_outside_the_folder_is_never_offered() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("watched");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).expect("create root");
    std::fs::create_dir_all(&outside).expect("create outside");
    write_old(&outside.join("secret.csv"), b"secret");
    std::os::unix::fs::symlink(outside.join("secret.csv"), root.join("old-link.csv"))
        .expect("symlink");

    let run = start(&root, Duration::from_millis(200)).await;
    std::os::unix::fs::symlink(outside.join("secret.csv"), root.join("link.csv")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("linkdir")).expect("symlink");
    barrier(&run, &root, "control.csv").await;
    assert_eq!(offered_names(&run.recorder), vec!["control.csv"]);
    run.stop().await;
}

#[tokio::test]
async fn a_file_the_ledger_already_has_is_not_offered() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    write_old(&root.join("done.csv"), b"done");
    write_old(&root.join("todo.csv"), b"todo");
    let recorder = Arc::new(Recorder::default());
    recorder.mark_uploaded("done.csv", fp(&root.join("done.csv")));

    let settle = Duration::from_millis(200);
    let run = start_with(
        folder_config(root, settle),
        recorder,
        Options::new(settle, None),
        real_dirs(),
    )
    .await;
    assert_eq!(run.summary.files_seen, 2);
    assert_eq!(run.summary.queued, 1);
    barrier(&run, root, "barrier.csv").await;
    assert_eq!(
        offered_names(&run.recorder),
        vec!["barrier.csv", "todo.csv"]
    );
    assert_eq!(
        run.recorder.offers_of("todo.csv"),
        vec![fp(&root.join("todo.csv"))]
    );
    run.stop().await;
}

/// Makes real watches, but refuses every directory under `refused` as if the inotify watch
/// limit were reached.
struct LimitedDirs {
    inner: InotifyDirs,
    refused: PathBuf,
}

impl DirWatcher for LimitedDirs {
    fn watch_dir(&mut self, dir: &Path) -> notify::Result<()> {
        if dir.starts_with(&self.refused) {
            return Err(
                notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(dir.to_path_buf())
            );
        }
        self.inner.watch_dir(dir)
    }
    fn unwatch_dir(&mut self, dir: &Path) {
        self.inner.unwatch_dir(dir)
    }
}

#[tokio::test]
async fn the_watch_limit_is_explained_once_and_the_subtree_is_rescanned_instead() {
    let (logs, _guard) = capture_logs(tracing::Level::INFO);
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub/inner")).expect("create dirs");
    std::fs::create_dir_all(root.join("sub/other")).expect("create dirs");
    std::fs::create_dir_all(root.join("fine")).expect("create dirs");

    let settle = Duration::from_millis(200);
    let mut opts = Options::new(settle, None);
    opts.fallback_interval = Duration::from_millis(300);
    let refused = root.join("sub");
    let make_dirs: MakeDirs = Box::new(move |events| {
        Ok(Box::new(LimitedDirs {
            inner: InotifyDirs::new(events)?,
            refused,
        }) as Box<dyn DirWatcher>)
    });
    let run = start_with(
        folder_config(root, settle),
        Arc::new(Recorder::default()),
        opts,
        make_dirs,
    )
    .await;

    std::fs::write(root.join("sub/inner/late.csv"), b"late").expect("write");
    std::fs::write(root.join("fine/watched.csv"), b"ok").expect("write");
    let rec = run.recorder.clone();
    assert!(
        eventually(WAIT, || rec.offers_of("sub/inner/late.csv").len() == 1).await,
        "the fallback rescan finds a file in the unwatched subtree"
    );
    assert!(eventually(WAIT, || rec.offers_of("fine/watched.csv").len() == 1).await);
    // Every fallback rescan asks the ledger about the files it finds.
    let looked = rec.ledger_reads_of("sub/inner/late.csv");
    assert!(
        eventually(WAIT, || rec.ledger_reads_of("sub/inner/late.csv")
            >= looked + 2)
        .await,
        "two more fallback rescans see the file"
    );
    assert_eq!(
        rec.offers_of("sub/inner/late.csv").len(),
        1,
        "repeated fallback rescans do not offer it again"
    );
    run.stop().await;

    let text = logs.text();
    let limit_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("inotify watch limit reached"))
        .collect();
    assert_eq!(limit_lines.len(), 1, "exactly one limit message: {text}");
    let line = limit_lines[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("fs.inotify.max_user_watches = "), "{line}");
    assert!(
        line.contains(&format!("{} has 5 directories", root.display())),
        "root, sub, sub/inner, sub/other and fine: {line}"
    );
    assert!(
        line.contains("sysctl fs.inotify.max_user_watches="),
        "{line}"
    );
    let suggested: String = line
        .split("sysctl fs.inotify.max_user_watches=")
        .nth(1)
        .expect("the sysctl command is in the message")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(
        suggested.parse::<u64>().is_ok_and(|n| n >= 524_288),
        "{line}"
    );
    assert!(
        line.contains(&format!("{} (and any", root.join("sub").display())),
        "{line}"
    );
    assert!(line.contains("rescanned every 300ms"), "{line}");
}

#[tokio::test]
async fn a_folder_deleted_and_recreated_is_watched_again() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("watched");
    std::fs::create_dir_all(&root).expect("create root");
    let settle = Duration::from_millis(200);
    let mut opts = Options::new(settle, None);
    opts.missing_poll = Duration::from_millis(200);
    let run = start_timed(&root, settle, opts).await;

    std::fs::write(root.join("before.csv"), b"1").expect("write");
    let rec = run.recorder.clone();
    assert!(eventually(WAIT, || rec.offers_of("before.csv").len() == 1).await);

    std::fs::remove_dir_all(&root).expect("delete the folder");
    assert!(
        eventually(WAIT, || rec.roots_lost.load(Ordering::Relaxed) == 1).await,
        "the folder is found gone"
    );
    std::fs::create_dir_all(root.join("sub")).expect("recreate the folder");
    std::fs::write(root.join("after.csv"), b"2").expect("write");
    assert!(eventually(WAIT, || rec.offers_of("after.csv").len() == 1).await);

    // Watched again, not just scanned: with no rescans, only an event can report this file.
    std::fs::write(root.join("sub/later.csv"), b"3").expect("write");
    assert!(eventually(WAIT, || rec.offers_of("sub/later.csv").len() == 1).await);
    assert_eq!(rec.roots_lost.load(Ordering::Relaxed), 1);
    run.stop().await;
}

#[tokio::test]
async fn a_missing_folder_is_waited_for_and_the_summary_is_still_sent() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("not-yet");
    let settle = Duration::from_millis(200);
    let mut opts = Options::new(settle, None);
    opts.missing_poll = Duration::from_millis(200);
    let run = start_timed(&root, settle, opts).await;
    assert_eq!(run.summary.files_seen, 0);

    std::fs::create_dir_all(&root).expect("create the folder");
    write_old(&root.join("a.csv"), b"a");
    let rec = run.recorder.clone();
    assert!(eventually(WAIT, || rec.offers_of("a.csv").len() == 1).await);
    run.stop().await;
}

#[tokio::test]
async fn a_non_recursive_folder_ignores_subdirectories() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).expect("create sub");
    write_old(&root.join("sub/old.csv"), b"old");
    let settle = Duration::from_millis(200);
    let mut folder = folder_config(root, settle);
    folder.recursive = false;
    let run = start_with(
        folder,
        Arc::new(Recorder::default()),
        Options::new(settle, None),
        real_dirs(),
    )
    .await;
    // Both old, so each is offered as soon as its events are handled, and events are handled
    // in order: had sub/new.csv been seen, it would be offered no later than top.csv.
    write_old(&root.join("sub/new.csv"), b"new");
    write_old(&root.join("top.csv"), b"top");
    let rec = run.recorder.clone();
    assert!(eventually(WAIT, || rec.offers_of("top.csv").len() == 1).await);
    assert_eq!(
        rec.offers(),
        vec![("top.csv".to_string(), fp(&root.join("top.csv")))]
    );
    run.stop().await;
}

#[tokio::test]
async fn lost_events_are_recovered_by_the_periodic_rescan() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).expect("create sub");
    let settle = Duration::from_millis(200);
    // No watches at all (as if every event were lost): only rescans can find the file.
    let make_dirs: MakeDirs = Box::new(|_events| {
        Ok(Box::new(NoDirs {
            reason: "watching disabled for this test".into(),
        }) as Box<dyn DirWatcher>)
    });
    let mut opts = Options::new(settle, Some(Duration::from_millis(300)));
    opts.fallback_interval = Duration::from_secs(3600);
    let run = start_with(
        folder_config(root, settle),
        Arc::new(Recorder::default()),
        opts,
        make_dirs,
    )
    .await;
    std::fs::write(root.join("sub/x.csv"), b"x").expect("write");
    let rec = run.recorder.clone();
    assert!(eventually(WAIT, || rec.offers_of("sub/x.csv").len() == 1).await);
    run.stop().await;
}

#[test]
fn scan_once_offers_only_old_files_not_yet_uploaded() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("d")).expect("create d");
    write_old(&root.join("old.csv"), b"old");
    write_old(&root.join("d/done.csv"), b"done");
    std::fs::write(root.join("new.csv"), b"new").expect("write");
    let recorder = Recorder::default();
    recorder.mark_uploaded("d/done.csv", fp(&root.join("d/done.csv")));

    let summary = scan_once(&folder_config(root, Duration::from_secs(5)), &recorder)
        .expect("the folder can be scanned");
    assert_eq!(summary.files_seen, 3);
    assert_eq!(summary.queued, 1);
    assert_eq!(
        recorder.offers(),
        vec![("old.csv".to_string(), fp(&root.join("old.csv")))]
    );
}

#[test]
fn scan_once_offers_in_batches_each_file_once() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    for i in 0..600 {
        write_old(&root.join(format!("f{i:04}.csv")), b"x");
    }

    let recorder = Recorder::default();
    let summary = scan_once(&folder_config(root, Duration::from_secs(5)), &recorder)
        .expect("the folder can be scanned");
    assert_eq!(summary.queued, 600);
    let batches = recorder.batches.lock().expect("not poisoned").clone();
    assert_eq!(
        batches,
        vec![256, 256, 88],
        "600 files go in three offers (one queue transaction each), not 600"
    );
    let mut offered: Vec<String> = recorder.offers().into_iter().map(|(rel, _)| rel).collect();
    offered.sort();
    offered.dedup();
    assert_eq!(offered.len(), 600, "each file once");
}

/// A sink whose backlog is what it was offered less what the test released, and which
/// counts the scan's looks at it.
#[derive(Default)]
struct Backlog {
    offered: AtomicUsize,
    released: AtomicUsize,
    looks: AtomicUsize,
}

impl Sink for Backlog {
    fn is_uploaded(&self, _: &FileKey, _: &Fingerprint) -> bool {
        false
    }
    fn offer(&self, _: &FileKey, _: &Fingerprint) -> SinkOffer {
        self.offered.fetch_add(1, Ordering::SeqCst);
        SinkOffer::Queued
    }
    fn queued(&self, _: &str) -> Option<u64> {
        self.looks.fetch_add(1, Ordering::SeqCst);
        let backlog = self.offered.load(Ordering::SeqCst) - self.released.load(Ordering::SeqCst);
        Some(backlog as u64)
    }
}

#[test]
fn scan_once_waits_for_room_while_the_folder_has_a_full_backlog() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().to_path_buf();
    for i in 0..12_000 {
        write_old(&root.join(format!("f{i:05}.csv")), b"x");
    }
    let sink = Arc::new(Backlog::default());
    let scan = {
        let (sink, root) = (Arc::clone(&sink), root.clone());
        std::thread::spawn(move || {
            scan_once(&folder_config(&root, Duration::from_secs(5)), sink.as_ref())
        })
    };
    let waited = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    // 40 batches of 256 make a backlog over 10,000: the scan looks at it again and again
    // and offers nothing more.
    waited("the scan offers 40 batches", &|| {
        sink.offered.load(Ordering::SeqCst) >= 10_240
    });
    let looks = sink.looks.load(Ordering::SeqCst);
    waited("the scan looks at the backlog while it waits", &|| {
        sink.looks.load(Ordering::SeqCst) >= looks + 3
    });
    assert_eq!(sink.offered.load(Ordering::SeqCst), 10_240);
    assert!(!scan.is_finished());
    // Down to half of 10,000: the scan goes on to the end.
    sink.released.store(5_240, Ordering::SeqCst);
    let summary = scan
        .join()
        .expect("the scan does not panic")
        .expect("the folder can be scanned");
    assert_eq!(summary.queued, 12_000);
    assert_eq!(sink.offered.load(Ordering::SeqCst), 12_000);
}

#[test]
fn scan_once_reports_a_missing_folder() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let missing = dir.path().join("nope");
    let err = scan_once(
        &folder_config(&missing, Duration::from_secs(5)),
        &Recorder::default(),
    )
    .expect_err("a missing folder cannot be scanned");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn a_file_held_open_by_its_writer_is_not_offered_during_a_pause() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let settle = Duration::from_millis(200);
    let run = start(dir.path(), settle).await;
    let path = dir.path().join("paused.csv");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(b"first half").expect("write");
    // The writer pauses for three settle periods. Once the barrier is offered, paused.csv
    // has been stable for four and would have been offered too, were its writer ignored.
    tokio::time::sleep(settle * 3).await;
    barrier(&run, dir.path(), "control.csv").await;
    let rec = run.recorder.clone();
    assert!(
        rec.offers_of("paused.csv").is_empty(),
        "not offered while the writer has it open: {:?}",
        rec.offers()
    );
    file.write_all(b", second half").expect("write");
    drop(file);
    barrier(&run, dir.path(), "control-2.csv").await;
    assert_eq!(
        rec.offers_of("paused.csv"),
        vec![fp(&path)],
        "offered once, whole, after the writer closed it"
    );
    run.stop().await;
}

#[tokio::test]
async fn scanning_many_watched_directories_does_not_overflow_the_event_channel() {
    const DIRS: usize = 60;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    let recorder = Arc::new(Recorder::default());
    // One uploaded file per directory: each scan asks the ledger about it once.
    for i in 0..DIRS {
        let path = root.join(format!("d{i}/f.csv"));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
        write_old(&path, b"f");
        recorder.mark_uploaded(&format!("d{i}/f.csv"), fp(&path));
    }
    let settle = Duration::from_millis(200);
    let mut opts = Options::new(settle, Some(Duration::from_millis(200)));
    opts.event_capacity = 16;
    let flags: Arc<Mutex<Option<Arc<EventFlags>>>> = Arc::default();
    let make_dirs: MakeDirs = {
        let flags = Arc::clone(&flags);
        Box::new(move |events: EventSender| {
            *flags.lock().expect("not poisoned") = Some(events.flags());
            InotifyDirs::new(events).map(|d| Box::new(d) as Box<dyn DirWatcher>)
        })
    };
    let run = start_with(
        folder_config(root, settle),
        recorder.clone(),
        opts,
        make_dirs,
    )
    .await;
    let rec = recorder.clone();
    assert!(
        eventually(WAIT, || (0..DIRS)
            .all(|i| rec.ledger_reads_of(&format!("d{i}/f.csv")) >= 3))
        .await,
        "the start-up scan and two periodic rescans list every watched directory"
    );
    run.stop().await;
    let flags = flags.lock().expect("not poisoned").clone();
    let dropped = flags
        .expect("the watcher was made")
        .dropped
        .load(Ordering::Relaxed);
    assert_eq!(
        dropped, 0,
        "listing watched directories must not flood the channel"
    );
    assert!(recorder.offers().is_empty(), "every file is in the ledger");
}

#[tokio::test]
async fn files_deleted_renamed_or_gone_with_their_directory_are_forgotten() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).expect("create sub");
    for rel in ["deleted.csv", "renamed.csv", "kept.csv", "sub/inner.csv"] {
        write_old(&root.join(rel), b"x");
    }
    let recorder = Arc::new(Recorder::default());
    // Jobs left by an earlier run: one of a file that vanished while nothing watched.
    for rel in [
        "deleted.csv",
        "renamed.csv",
        "kept.csv",
        "sub/inner.csv",
        "gone-before.csv",
    ] {
        recorder.mark_pending(rel);
    }
    let folder = folder_config(root, Duration::from_secs(1));
    let opts = Options::new(Duration::from_secs(1), None);
    let run = start_with(folder, recorder.clone(), opts, real_dirs()).await;
    assert_eq!(
        recorder.vanished(),
        ["gone-before.csv"],
        "found by the start-up scan"
    );

    std::fs::remove_file(root.join("deleted.csv")).expect("delete");
    std::fs::rename(root.join("renamed.csv"), root.join("new-name.csv")).expect("rename");
    std::fs::remove_dir_all(root.join("sub")).expect("delete the directory");
    let rec = recorder.clone();
    assert!(
        eventually(WAIT, || rec.vanished().len() == 4).await,
        "{:?}",
        rec.vanished()
    );
    assert_eq!(
        recorder.vanished(),
        [
            "deleted.csv",
            "gone-before.csv",
            "renamed.csv",
            "sub/inner.csv"
        ]
    );
    assert!(
        eventually(WAIT, || rec.offers_of("new-name.csv").len() == 1).await,
        "the new name is offered"
    );
    run.stop().await;
}

/// A folder's state for tests that hand it its events or call its steps themselves: no
/// patterns, recursive, a settle of 1 s.
fn folder_state(
    root: &Path,
    recorder: &Arc<Recorder>,
    dirs: Box<dyn DirWatcher>,
    spool: Option<super::spool::Spool>,
) -> folder::FolderState {
    let settle = Duration::from_secs(1);
    folder::FolderState::new(folder::FolderParts {
        root: root.to_path_buf(),
        filter: Filter::new::<String>(&[], &[]).expect("no patterns"),
        recursive: true,
        settle,
        dirs,
        sink: recorder.clone(),
        wake: None,
        flags: Arc::new(EventFlags::default()),
        cancel: CancellationToken::new(),
        opts: Options::new(settle, None),
        spool,
    })
}

/// Watches nothing: every directory is left to rescans.
fn unwatched() -> Box<dyn DirWatcher> {
    Box::new(NoDirs {
        reason: "not needed".into(),
    })
}

/// A confirmed file that cannot move into the archive is not tried (and warned about)
/// again at every spool check: the next scan tries it.
#[test]
fn a_spooled_file_that_cannot_move_is_not_tried_again_every_second() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("outbox");
    std::fs::create_dir_all(&root).expect("create the folder");
    // A file where the archive directory should be: every move into it fails.
    let archive = dir.path().join("archive");
    std::fs::write(&archive, b"not a directory").expect("write");
    write_old(&root.join("a.csv"), b"a");
    let recorder = Arc::new(Recorder::default());
    let after_upload = crate::config::AfterUpload::Move(archive);
    let mut state = folder_state(
        &root,
        &recorder,
        unwatched(),
        super::spool::Spool::new(&root, &after_upload),
    );
    state.start();
    assert_eq!(recorder.offers_of("a.csv").len(), 1);
    let fingerprint = Fingerprint::read(&root.join("a.csv")).expect("the file is there");
    recorder.mark_uploaded("a.csv", fingerprint);
    let reads_before_checks = recorder.ledger_reads_of("a.csv");
    // Each tick after a spool check came due: the first tries the move and fails.
    for _ in 0..3 {
        std::thread::sleep(super::spool::SPOOL_CHECK + Duration::from_millis(50));
        state.tick();
    }
    assert!(root.join("a.csv").exists());
    assert_eq!(
        recorder.ledger_reads_of("a.csv") - reads_before_checks,
        1,
        "the failed move was tried at more than one spool check"
    );
}

/// The daemon takes an archive_dir on another file system (check refuses it), says so when
/// it starts watching the folder, and still uploads the folder's files, which stay in it.
#[test]
fn a_spool_folder_whose_archive_lies_on_another_file_system_is_warned_about_and_keeps_its_files() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("outbox");
    std::fs::create_dir_all(&root).expect("create the folder");
    let Some(elsewhere) = crate::config::dir_on_another_file_system(&root) else {
        return;
    };
    let archive = elsewhere.path().join("archive");
    write_old(&root.join("a.csv"), b"a");
    let recorder = Arc::new(Recorder::default());
    let after_upload = crate::config::AfterUpload::Move(archive.clone());
    let (logs, _guard) = capture_logs(tracing::Level::WARN);
    let mut state = folder_state(
        &root,
        &recorder,
        unwatched(),
        super::spool::Spool::new(&root, &after_upload),
    );
    state.start();
    let text = logs.text();
    assert!(
        text.contains("archive_dir") && text.contains("lies on another file system"),
        "{text}"
    );
    assert_eq!(recorder.offers_of("a.csv").len(), 1, "the file is uploaded");
    let fingerprint = Fingerprint::read(&root.join("a.csv")).expect("the file is there");
    recorder.mark_uploaded("a.csv", fingerprint);
    let reads_before_check = recorder.ledger_reads_of("a.csv");
    while recorder.ledger_reads_of("a.csv") == reads_before_check {
        std::thread::sleep(super::spool::SPOOL_CHECK);
        state.tick();
    }
    assert!(root.join("a.csv").exists(), "the file stays in the folder");
    assert!(!archive.join("a.csv").exists(), "no copy in the archive");
}

#[test]
fn a_folder_gone_as_a_whole_forgets_no_file() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path().join("mount");
    std::fs::create_dir_all(&root).expect("create the folder");
    write_old(&root.join("a.csv"), b"a");
    let recorder = Arc::new(Recorder::default());
    recorder.mark_pending("a.csv");
    let mut state = folder_state(&root, &recorder, unwatched(), None);
    state.start();
    std::fs::rename(&root, dir.path().join("unmounted")).expect("move the folder away");
    // Ticks notice the folder missing and look for it again.
    for _ in 0..3 {
        state.tick();
    }
    assert!(recorder.vanished().is_empty(), "{:?}", recorder.vanished());
    assert_eq!(recorder.offers_of("a.csv").len(), 1);
}

#[test]
fn scan_once_forgets_files_that_vanished_since_their_job_was_queued() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    write_old(&dir.path().join("here.csv"), b"x");
    let recorder = Recorder::default();
    recorder.mark_pending("here.csv");
    recorder.mark_pending("renamed-away.csv");
    scan_once(
        &folder_config(dir.path(), Duration::from_secs(1)),
        &recorder,
    )
    .expect("scans");
    assert_eq!(recorder.vanished(), ["renamed-away.csv"]);
}

/// Watches nothing and refuses nothing: for tests that hand a folder its events themselves.
struct AcceptingDirs;

impl DirWatcher for AcceptingDirs {
    fn watch_dir(&mut self, _dir: &Path) -> notify::Result<()> {
        Ok(())
    }
    fn unwatch_dir(&mut self, _dir: &Path) {}
}

/// A directory's removal comes as two events, its parent watch's and its own, which land
/// in two batches when the loop takes the first before the second arrives: one removal,
/// its files vanished, and its name is not taken for a file of that name.
#[test]
fn a_directory_removed_across_two_event_batches_is_one_removal() {
    use notify::event::RemoveKind;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).expect("create sub");
    write_old(&root.join("sub/inner.csv"), b"x");
    let recorder = Arc::new(Recorder::default());
    recorder.mark_pending("sub/inner.csv");
    let mut state = folder_state(root, &recorder, Box::new(AcceptingDirs), None);
    state.start();

    std::fs::remove_dir_all(root.join("sub")).expect("remove sub");
    let removed = |kind| {
        vec![Ok(
            notify::Event::new(notify::EventKind::Remove(kind)).add_path(root.join("sub"))
        )]
    };
    state.handle_events(removed(RemoveKind::Folder));
    state.handle_events(removed(RemoveKind::Other));
    assert_eq!(recorder.vanished(), ["sub/inner.csv"]);
}

/// A temp dir bound through FUSE (bindfs) at another path: a file written to the dir
/// beneath raises no event on the mount, as a file a file server's other client writes.
struct FuseBind {
    _dir: tempfile::TempDir,
    beneath: PathBuf,
    mount: PathBuf,
}

impl FuseBind {
    /// `None` (the test skips, saying why) where bindfs is missing or cannot mount; where
    /// `UPSYNC_REQUIRE_TOOLS` is set (`.ci/run` installed bindfs), a missing bindfs fails.
    fn new() -> Option<FuseBind> {
        let installed = std::process::Command::new("bindfs")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed {
            assert!(
                std::env::var_os("UPSYNC_REQUIRE_TOOLS").is_none(),
                "bindfs is required (UPSYNC_REQUIRE_TOOLS is set) but cannot run"
            );
            eprintln!("skipped: bindfs is not installed (apt-get install bindfs)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let (beneath, mount) = (dir.path().join("beneath"), dir.path().join("mount"));
        for path in [&beneath, &mount] {
            std::fs::create_dir(path).expect("create a directory");
        }
        let mounted = std::process::Command::new("bindfs")
            .arg(&beneath)
            .arg(&mount)
            .output()
            .expect("bindfs runs");
        if !mounted.status.success() {
            // A container without the right to mount FUSE file systems.
            eprintln!(
                "skipped: bindfs cannot mount here: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(FuseBind {
            _dir: dir,
            beneath,
            mount,
        })
    }
}

impl Drop for FuseBind {
    fn drop(&mut self) {
        for (program, args) in [
            ("fusermount", ["-u"]),
            ("fusermount3", ["-u"]),
            ("umount", ["-l"]),
        ] {
            let unmounted = std::process::Command::new(program)
                .args(args)
                .arg(&self.mount)
                .status()
                .is_ok_and(|status| status.success());
            if unmounted {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_folder_on_a_fuse_mount_is_rescanned_for_files_written_beneath_it() {
    let Some(bind) = FuseBind::new() else {
        return;
    };
    assert_eq!(shared_fs::shared_kind(&bind.mount), Some("fuse"));
    assert_eq!(shared_fs::shared_kind(&bind.beneath), None);
    let settle = Duration::from_millis(200);
    let mut opts = Options::new(settle, None);
    opts.fallback_interval = Duration::from_millis(300);
    let run = start_with(
        folder_config(&bind.mount, settle),
        Arc::new(Recorder::default()),
        opts,
        real_dirs(),
    )
    .await;

    write_old(&bind.beneath.join("from-elsewhere.csv"), b"x");
    let rec = run.recorder.clone();
    assert!(
        eventually(WAIT, || rec.offers_of("from-elsewhere.csv").len() == 1).await,
        "a file no event told of is found by the folder's rescans"
    );
    run.stop().await;
}
