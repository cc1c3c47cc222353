//! The directory walk shared by the start-up scan, periodic rescans, fallback rescans of
//! unwatched subtrees and scans of newly created directories.
//!
//! Written by hand rather than with walkdir because the order matters: each directory is
//! announced to the visitor (which adds its watch) *before* it is listed, so a file created
//! between the two is either listed or reported by the new watch — never missed. walkdir
//! opens a directory before yielding it.
//!
//! Symlinks are never followed (nothing outside the folder is read), excluded directories
//! are not entered, and names that are not valid UTF-8 are skipped: they cannot become
//! remote names.
//!
//! Files are listed in batches (up to [`LIST_CHUNK`] directory entries, of one directory or
//! of several small ones). A walk can pause between two batches and go on later from its
//! [`WalkCursor`] (the folder pauses its whole-folder scans while the queue holds enough
//! of its files).
//!
//! A large batch is stat-ed on two threads while the next one is listed (module `looks`;
//! a restart over a big tree is mostly stats and ledger reads), together with an optional
//! [`Known`] check that sorts out files needing no further look (already uploaded); the
//! visitor then sees the files one by one, in listing order, on the walking thread.

use std::collections::HashSet;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use super::filter::Filter;
use super::looks::{Batch, Helper, Known, Look};

/// Batches of at least this many files are stat-ed on two threads: below it, starting the
/// second thread costs about what it saves.
const PARALLEL_FILES: usize = 32;
/// Directory entries are read and looked at this many at a time (those of several small
/// directories together), so that a directory of a million files does not hold a million
/// entries in memory, and a walk can pause inside it.
const LIST_CHUNK: usize = 4096;

/// What a walk reports to.
pub trait Visit {
    /// `dir` is about to be listed.
    fn enter_dir(&mut self, dir: &Path);
    /// A regular file accepted by the filter; `meta` is its `symlink_metadata`.
    fn file(&mut self, path: &Path, rel: &str, meta: &Metadata);
    /// A regular file accepted by the filter that the walk's [`Known`] check sorted out.
    fn known_file(&mut self, _rel: &str) {}
    /// Whether to stop walking (shutdown).
    fn cancelled(&self) -> bool {
        false
    }
    /// Whether to pause the walk here, to go on later from its [`WalkCursor`]; asked after
    /// each batch of files but the last (a batch is [`Visit::batch_entries`] directory
    /// entries read, of one or several directories).
    fn pause(&mut self) -> bool {
        false
    }
    /// How many directory entries a batch reads at most: [`LIST_CHUNK`], or fewer for a
    /// visitor that wants to be asked to pause more often.
    fn batch_entries(&self) -> usize {
        LIST_CHUNK
    }
}

/// How a call of [`Walker::walk_on`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// Every directory was listed.
    Done,
    /// The visitor asked to pause; the cursor holds where to go on.
    Paused,
    Cancelled,
}

/// Where a walk stands: the listing in progress (an open directory, kept across a pause)
/// and the directories still to list.
#[derive(Debug)]
pub struct WalkCursor {
    listing: Option<(PathBuf, std::fs::ReadDir)>,
    stack: Vec<PathBuf>,
    /// Files listed before a pause and not looked at yet: the next batch.
    pending: Vec<(std::fs::DirEntry, String)>,
}

impl WalkCursor {
    /// A walk that starts at `start`.
    pub fn new(start: &Path) -> WalkCursor {
        WalkCursor {
            listing: None,
            stack: vec![start.to_path_buf()],
            pending: Vec::new(),
        }
    }

    /// Whether any directory is left to list (or the rest of one).
    fn has_more(&self) -> bool {
        self.listing.is_some() || !self.stack.is_empty()
    }
}

/// The fixed parts of a folder's walks.
pub struct Walker<'a> {
    pub root: &'a Path,
    pub filter: &'a Filter,
    pub recursive: bool,
}

impl Walker<'_> {
    /// Walks `start` (the root or a directory inside it) and, if recursive, its subtree.
    /// `warned` remembers paths already warned about, so rescans do not repeat warnings.
    pub fn walk(&self, start: &Path, visit: &mut impl Visit, warned: &mut HashSet<PathBuf>) {
        self.walk_with(start, visit, warned, None);
    }

    /// [`Walker::walk`], sorting out files with `known` on the stat-ing threads.
    pub fn walk_with(
        &self,
        start: &Path,
        visit: &mut impl Visit,
        warned: &mut HashSet<PathBuf>,
        known: Option<&Known<'_>>,
    ) {
        let mut cursor = WalkCursor::new(start);
        while self.walk_on(&mut cursor, visit, warned, known) == WalkEnd::Paused {}
    }

    /// Walks on from `cursor` until the walk is done, the visitor is cancelled, or it asks
    /// to pause ([`Visit::pause`], asked after each batch of files); a paused walk goes on
    /// from the same cursor later.
    pub fn walk_on(
        &self,
        cursor: &mut WalkCursor,
        visit: &mut impl Visit,
        warned: &mut HashSet<PathBuf>,
        known: Option<&Known<'_>>,
    ) -> WalkEnd {
        std::thread::scope(|scope| {
            let mut helper = Lazy::Unstarted;
            let mut in_flight: Option<Arc<Batch>> = None;
            loop {
                if visit.cancelled() {
                    return WalkEnd::Cancelled;
                }
                // 1. The next batch: one a pause left, or listed now, while the helper
                // looks at the batch before it.
                let next = if cursor.pending.is_empty() {
                    let mut files = Vec::new();
                    self.list_batch(cursor, visit, &mut files, warned);
                    files
                } else {
                    std::mem::take(&mut cursor.pending)
                };
                // 2. The batch before it, looked at by both threads, goes to the visitor.
                // It is dropped (its directories closed, its entries freed) only once the
                // helper has the next one: no work for the helper to wait on.
                let mut delivered = None;
                if let Some(batch) = in_flight.take() {
                    deliver(&batch, batch.finish(known, || helper.gone()), visit);
                    if (!next.is_empty() || cursor.has_more()) && visit.pause() {
                        cursor.pending = next;
                        return WalkEnd::Paused;
                    }
                    delivered = Some(batch);
                }
                if next.is_empty() {
                    if cursor.has_more() {
                        continue;
                    }
                    return WalkEnd::Done;
                }
                // 3. A large batch goes to the helper; a small one is looked at here.
                let batch = Arc::new(Batch::new(next));
                if batch.files.len() >= PARALLEL_FILES
                    && let Some(started) = helper.get(scope, known)
                    && started.hand(&batch)
                {
                    in_flight = Some(batch);
                    drop(delivered);
                    continue;
                }
                deliver(&batch, batch.finish(known, || false), visit);
                if cursor.has_more() && visit.pause() {
                    return WalkEnd::Paused;
                }
            }
        })
    }

    /// Lists directories into `files` until [`Visit::batch_entries`] (at most
    /// [`LIST_CHUNK`]) entries were read or none is left: the files of many small
    /// directories are looked at together, so the two threads share batches of thousands
    /// of files rather than meet once per directory (a restart over 1,000 directories of
    /// 100 files started a thread for each). A listing cut off by the limit stays in the
    /// cursor.
    fn list_batch(
        &self,
        cursor: &mut WalkCursor,
        visit: &mut impl Visit,
        files: &mut Vec<(std::fs::DirEntry, String)>,
        warned: &mut HashSet<PathBuf>,
    ) {
        let mut budget = visit.batch_entries().clamp(1, LIST_CHUNK);
        while budget > 0 {
            let Some((dir, mut entries)) = self.next_listing(cursor, visit) else {
                return;
            };
            let read =
                self.list_chunk(&dir, &mut entries, budget, &mut cursor.stack, files, warned);
            match read {
                Listed::All(count) => budget = budget.saturating_sub(count.max(1)),
                Listed::Some => {
                    cursor.listing = Some((dir, entries));
                    return;
                }
            }
        }
    }

    /// The listing to go on with: the one a pause left open, or the next directory of the
    /// stack, announced to the visitor before it is opened. `None` when none is left.
    fn next_listing(
        &self,
        cursor: &mut WalkCursor,
        visit: &mut impl Visit,
    ) -> Option<(PathBuf, std::fs::ReadDir)> {
        if let Some(listing) = cursor.listing.take() {
            return Some(listing);
        }
        while let Some(dir) = cursor.stack.pop() {
            visit.enter_dir(&dir);
            match std::fs::read_dir(&dir) {
                Ok(entries) => return Some((dir, entries)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    debug!(dir = %dir.display(), "directory vanished before it was scanned");
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot list directory; its files are not uploaded");
                }
            }
        }
        None
    }

    /// Reads up to `limit` entries of `dir`: subdirectories to walk go on `stack`,
    /// accepted regular files into `files`.
    fn list_chunk(
        &self,
        dir: &Path,
        entries: &mut std::fs::ReadDir,
        limit: usize,
        stack: &mut Vec<PathBuf>,
        files: &mut Vec<(std::fs::DirEntry, String)>,
        warned: &mut HashSet<PathBuf>,
    ) -> Listed {
        // The directory's own relative path, once: each entry's is that plus its name.
        let Some(dir_rel) = self
            .rel(dir, warned)
            .or_else(|| (dir == self.root).then(String::new))
        else {
            return Listed::All(0);
        };
        for read in 0..limit {
            let entry = match entries.next() {
                None => return Listed::All(read),
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    warn!(dir = %dir.display(), error = %e, "cannot read a directory entry");
                    continue;
                }
            };
            let Some(rel) = entry_rel(&dir_rel, &entry, warned) else {
                continue;
            };
            // DirEntry::file_type does not follow symlinks.
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    debug!(path = %entry.path().display(), error = %e, "entry vanished while scanning");
                    continue;
                }
            };
            if file_type.is_symlink() {
                debug!(path = %entry.path().display(), "skipping symlink: links are never followed");
            } else if file_type.is_dir() {
                if self.recursive && !self.filter.excludes_dir(&rel) {
                    stack.push(entry.path());
                }
            } else if file_type.is_file() && self.filter.accepts_file(&rel) {
                files.push((entry, rel));
            }
        }
        Listed::Some
    }

    /// The `/`-separated path of `path` relative to the root, or `None` (with a warning the
    /// first time) if it is not valid UTF-8.
    pub fn rel(&self, path: &Path, warned: &mut HashSet<PathBuf>) -> Option<String> {
        relative(self.root, path, warned)
    }
}

/// How much of a directory [`Walker::list_chunk`] read.
enum Listed {
    /// The whole rest of the listing: this many entries.
    All(usize),
    /// As many entries as it was allowed; the listing has more.
    Some,
}

/// Hands a looked-at batch to the visitor, file by file in listing order.
fn deliver(batch: &Batch, looks: Vec<Look>, visit: &mut impl Visit) {
    for ((entry, rel), look) in batch.files.iter().zip(looks) {
        match look {
            Look::Known => visit.known_file(rel),
            Look::File(meta) => visit.file(&entry.path(), rel, &meta),
            Look::Gone => {}
        }
    }
}

/// A walk's helper thread, started at its first large batch (most walks of a running
/// daemon look at a directory or two and need none).
enum Lazy<'scope> {
    Unstarted,
    Started(Helper<'scope>),
    /// No thread was to be had: the walking thread looks at every file.
    Unavailable,
}

impl<'scope> Lazy<'scope> {
    fn get<'k: 'scope>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        known: Option<&'scope Known<'k>>,
    ) -> Option<&Helper<'scope>> {
        if matches!(self, Lazy::Unstarted) {
            *self = Helper::start(scope, known).map_or(Lazy::Unavailable, Lazy::Started);
        }
        match self {
            Lazy::Started(helper) => Some(helper),
            _ => None,
        }
    }

    fn gone(&self) -> bool {
        match self {
            Lazy::Started(helper) => helper.gone(),
            _ => true,
        }
    }
}

/// The relative path of `entry`, listed in the directory whose relative path is `dir_rel`
/// (empty for the root); `None` (warned about once) when its name is not valid UTF-8.
fn entry_rel(
    dir_rel: &str,
    entry: &std::fs::DirEntry,
    warned: &mut HashSet<PathBuf>,
) -> Option<String> {
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        let path = entry.path();
        if warned.insert(path.clone()) {
            warn!(
                path = %path.to_string_lossy(),
                "skipping a name that is not valid UTF-8: it cannot be a remote name"
            );
        }
        return None;
    };
    if dir_rel.is_empty() {
        return Some(name.to_string());
    }
    let mut rel = String::with_capacity(dir_rel.len() + 1 + name.len());
    rel.push_str(dir_rel);
    rel.push('/');
    rel.push_str(name);
    Some(rel)
}

/// See [`Walker::rel`]. `None` also for paths outside `root` and for the root itself.
pub fn relative(root: &Path, path: &Path, warned: &mut HashSet<PathBuf>) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    let mut out = String::with_capacity(rel.as_os_str().len());
    for component in rel.components() {
        let std::path::Component::Normal(name) = component else {
            return None;
        };
        let Some(name) = name.to_str() else {
            if warned.insert(path.to_path_buf()) {
                warn!(
                    path = %path.to_string_lossy(),
                    "skipping a name that is not valid UTF-8: it cannot be a remote name"
                );
            }
            return None;
        };
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(name);
    }
    Some(out)
}

/// Counts the directories of a folder's tree that would be watched (for the limit message).
pub fn count_directories(root: &Path, filter: &Filter, recursive: bool) -> u64 {
    struct Count(u64);
    impl Visit for Count {
        fn enter_dir(&mut self, _dir: &Path) {
            self.0 += 1;
        }
        fn file(&mut self, _: &Path, _: &str, _: &Metadata) {}
    }
    let mut count = Count(0);
    let walker = Walker {
        root,
        filter,
        recursive,
    };
    walker.walk(root, &mut count, &mut HashSet::new());
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[derive(Default)]
    struct Record {
        dirs: Vec<PathBuf>,
        files: Vec<String>,
    }
    impl Visit for Record {
        fn enter_dir(&mut self, dir: &Path) {
            self.dirs.push(dir.to_path_buf());
        }
        fn file(&mut self, _: &Path, rel: &str, _: &Metadata) {
            self.files.push(rel.to_string());
        }
    }

    fn walk(root: &Path, filter: &Filter, recursive: bool) -> Record {
        let mut rec = Record::default();
        Walker {
            root,
            filter,
            recursive,
        }
        .walk(root, &mut rec, &mut HashSet::new());
        rec.files.sort();
        rec
    }

    #[test]
    fn walk_lists_filtered_regular_files_and_skips_symlinks_and_excluded_dirs() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).expect("create dirs");
        std::fs::create_dir_all(root.join(".git/objects")).expect("create dirs");
        std::fs::write(root.join("top.csv"), b"1").expect("write");
        std::fs::write(root.join("a/b/deep.csv"), b"1").expect("write");
        std::fs::write(root.join("a/skip.tmp"), b"1").expect("write");
        std::fs::write(root.join(".git/objects/x"), b"1").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).expect("symlink");
        std::os::unix::fs::symlink("/etc", root.join("dirlink")).expect("symlink");
        let bad = std::ffi::OsStr::from_bytes(b"bad\xff.csv");
        std::fs::write(root.join(bad), b"1").expect("write a non-UTF-8 name");

        let filter = Filter::new::<&str>(&[], super::super::filter::DEFAULT_EXCLUDES)
            .expect("defaults are valid");
        let rec = walk(root, &filter, true);
        assert_eq!(rec.files, vec!["a/b/deep.csv", "top.csv"]);
        assert_eq!(rec.dirs.len(), 3, "root, a and a/b: {:?}", rec.dirs);
        assert_eq!(count_directories(root, &filter, true), 3);

        let flat = walk(root, &filter, false);
        assert_eq!(flat.files, vec!["top.csv"]);
        assert_eq!(flat.dirs, vec![root.to_path_buf()]);
    }

    #[test]
    fn a_paused_walk_goes_on_where_it_stood_and_small_directories_share_batches() {
        /// Pauses whenever asked, counting the pauses.
        #[derive(Default)]
        struct Pausing {
            rec: Record,
            pauses: usize,
        }
        impl Visit for Pausing {
            fn enter_dir(&mut self, dir: &Path) {
                self.rec.enter_dir(dir);
            }
            fn file(&mut self, path: &Path, rel: &str, meta: &Metadata) {
                self.rec.file(path, rel, meta);
            }
            fn pause(&mut self) -> bool {
                self.pauses += 1;
                true
            }
        }
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let root = dir.path();
        let big = LIST_CHUNK + 10;
        for i in 0..big {
            std::fs::write(root.join(format!("f{i}")), b"").expect("write");
        }
        std::fs::create_dir(root.join("sub")).expect("create a dir");
        std::fs::write(root.join("sub/g"), b"").expect("write");

        let filter = Filter::new::<&str>(&[], &[]).expect("no patterns");
        let walker = Walker {
            root,
            filter: &filter,
            recursive: true,
        };
        let mut visit = Pausing::default();
        let mut cursor = WalkCursor::new(root);
        let mut warned = HashSet::new();
        let mut calls = 1;
        while walker.walk_on(&mut cursor, &mut visit, &mut warned, None) == WalkEnd::Paused {
            calls += 1;
        }
        // A full batch of the root ends in a pause; the rest of the root and `sub` make
        // the second and last batch.
        assert_eq!(visit.pauses, 1);
        assert_eq!(calls, 2);
        assert_eq!(visit.rec.dirs.len(), 2, "each directory entered once");
        let mut files = visit.rec.files;
        assert_eq!(files.len(), big + 1);
        files.sort();
        files.dedup();
        assert_eq!(files.len(), big + 1, "every file seen exactly once");

        // Small directories share a batch: one call, no pause, every file seen once.
        let small = tempfile::tempdir().expect("a temp dir can be created");
        for d in 0..40 {
            let sub = small.path().join(format!("d{d}"));
            std::fs::create_dir(&sub).expect("create a dir");
            for f in 0..PARALLEL_FILES {
                std::fs::write(sub.join(format!("f{f}")), b"").expect("write");
            }
        }
        let walker = Walker {
            root: small.path(),
            filter: &filter,
            recursive: true,
        };
        let mut visit = Pausing::default();
        let mut cursor = WalkCursor::new(small.path());
        let end = walker.walk_on(&mut cursor, &mut visit, &mut warned, None);
        assert_eq!(end, WalkEnd::Done);
        assert_eq!(
            visit.pauses, 0,
            "41 directories of 1,320 entries are one batch"
        );
        assert_eq!(visit.rec.dirs.len(), 41);
        let mut files = visit.rec.files;
        files.sort();
        files.dedup();
        assert_eq!(files.len(), 40 * PARALLEL_FILES);

        // Looked at on both threads, each file is either known or not, once, as its check
        // says.
        #[derive(Default)]
        struct Sorted {
            rec: Record,
            known: Vec<String>,
        }
        impl Visit for Sorted {
            fn enter_dir(&mut self, dir: &Path) {
                self.rec.enter_dir(dir);
            }
            fn file(&mut self, path: &Path, rel: &str, meta: &Metadata) {
                self.rec.file(path, rel, meta);
            }
            fn known_file(&mut self, rel: &str) {
                self.known.push(rel.to_string());
            }
        }
        let odd = |rel: &str, _: &Metadata| rel.ends_with(['1', '3', '5', '7', '9']);
        let mut sorted = Sorted::default();
        walker.walk_with(small.path(), &mut sorted, &mut warned, Some(&odd));
        assert_eq!(sorted.known.len(), 40 * PARALLEL_FILES / 2);
        assert!(
            sorted
                .known
                .iter()
                .all(|rel| odd(rel, &std::fs::metadata(small.path()).unwrap()))
        );
        assert_eq!(sorted.rec.files.len(), 40 * PARALLEL_FILES / 2);
        assert!(
            sorted
                .rec
                .files
                .iter()
                .all(|rel| !rel.ends_with(['1', '3', '5', '7', '9']))
        );
    }

    #[test]
    fn relative_paths_use_slashes_and_reject_the_root_and_outsiders() {
        let mut warned = HashSet::new();
        let root = Path::new("/r");
        assert_eq!(
            relative(root, Path::new("/r/a/b.csv"), &mut warned).as_deref(),
            Some("a/b.csv")
        );
        assert_eq!(relative(root, Path::new("/r"), &mut warned), None);
        assert_eq!(relative(root, Path::new("/other/x"), &mut warned), None);
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/r/x\xff"));
        assert_eq!(relative(root, bad, &mut warned), None);
        assert_eq!(warned.len(), 1, "the non-UTF-8 path was warned about once");
    }
}
