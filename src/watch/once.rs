//! The one-shot scan of a folder (`upsync sync --once`): a walk that offers every settled
//! file not yet uploaded, without watching, pausing while the folder's backlog is full.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::filter::{Filter, PatternError};
use super::scan::{Visit, Walker};
use super::settle::{Settle, SystemClock};
use super::{ScanSummary, Sink, SinkOffer, folder, forget_vanished, spool, stamp};
use crate::config::FolderConfig;
use crate::fingerprint::Fingerprint;
use crate::queue::FileKey;

/// Errors of [`scan_once`].
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("cannot scan folder {}: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How often a one-shot scan with a full backlog looks whether there is room again.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// Scans a folder once, without watching: offers every file not yet uploaded whose mtime is
/// already older than the folder's settle time (younger files are left for the watcher).
/// When the folder has [`super::Options::backlog`]'s default of jobs waiting to be claimed
/// and the sink says so ([`Sink::queued`]), the scan waits until half of them are claimed.
///
/// 1. The folder must be a directory and its patterns valid.
/// 2. The walk offers the settled files in batches ([`Once`]).
/// 3. The last batch, then the spool's failures.
/// 4. The files with something pending that are gone leave the queue, and the ledger's
///    entries without change times get them ([`stamp`]).
pub fn scan_once(folder: &FolderConfig, sink: &dyn Sink) -> Result<ScanSummary, ScanError> {
    let filter = Filter::new(&folder.include, &folder.exclude)?;
    check_is_dir(&folder.path)?;
    let mut visit = Once::new(folder, sink);
    Walker {
        root: &folder.path,
        filter: &filter,
        recursive: folder.recursive,
    }
    .walk(&folder.path, &mut visit, &mut HashSet::new());
    visit.flush_offers();
    if let Some(spool) = &mut visit.spool {
        spool.report_failures();
    }
    forget_vanished(&folder.path, &visit.folder_key, "", sink);
    sink.scan_done(&visit.folder_key);
    stamp::Stamping::run_if_wanted(&folder.path, &visit.folder_key, sink);
    Ok(visit.summary)
}

/// Step 1: the folder's path names a directory.
fn check_is_dir(path: &Path) -> Result<(), ScanError> {
    let folder_error = |source| ScanError::Folder {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(folder_error)?;
    if !meta.is_dir() {
        return Err(folder_error(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(())
}

/// Step 2: what the walk does with each file it finds.
struct Once<'a> {
    folder_key: String,
    sink: &'a dyn Sink,
    settle: Settle<String, SystemClock>,
    summary: ScanSummary,
    spool: Option<spool::Spool>,
    /// Settled files not offered yet ([`Once::flush_offers`]).
    outbox: Vec<(FileKey, Fingerprint)>,
}

impl Visit for Once<'_> {
    fn enter_dir(&mut self, _dir: &Path) {}

    fn file(&mut self, _path: &Path, rel: &str, meta: &std::fs::Metadata) {
        self.summary.files_seen += 1;
        let fp = Fingerprint::of(meta);
        let key = FileKey {
            folder: self.folder_key.clone(),
            rel: rel.to_string(),
        };
        if self.sink.is_uploaded(&key, &fp) {
            if let Some(spool) = &mut self.spool {
                spool.settle(rel, self.sink);
            }
            return;
        }
        // A fresh tracker per file: only the old-mtime rule can settle it at first sight.
        self.settle.observe(key.rel.clone(), fp);
        let settled = self.settle.is_settled(&key.rel);
        self.settle.remove(&key.rel);
        if settled {
            self.outbox.push((key, fp));
            if self.outbox.len() >= folder::OFFER_BATCH {
                self.flush_offers();
            }
        }
    }
}

impl<'a> Once<'a> {
    fn new(folder: &FolderConfig, sink: &'a dyn Sink) -> Once<'a> {
        Once {
            folder_key: folder.path.to_string_lossy().into_owned(),
            sink,
            settle: Settle::new(folder.settle, SystemClock),
            summary: ScanSummary::default(),
            spool: spool::Spool::new(&folder.path, &folder.after_upload),
            outbox: Vec::with_capacity(folder::OFFER_BATCH),
        }
    }

    /// Offers the outbox in one call: one queue transaction for the batch, not one per
    /// file, as the watcher's scans do.
    fn flush_offers(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let outcomes = self.sink.offer_many(&self.outbox);
        self.outbox.clear();
        self.summary.queued += outcomes
            .iter()
            .filter(|outcome| **outcome == SinkOffer::Queued)
            .count() as u64;
        self.wait_for_room();
    }

    /// When the folder has a full backlog of jobs to claim and the sink says so, waits
    /// until it is down to half, as the watcher's scans pause: the queue in the state
    /// database stays a small part of a large tree. A sink whose uploads cannot go on
    /// (the remote down, the run out of time) answers `None`, and the scan goes on.
    fn wait_for_room(&self) {
        let backlog = folder::DEFAULT_BACKLOG;
        let queued = || self.sink.queued(&self.folder_key);
        if queued().is_none_or(|queued| queued < backlog) {
            return;
        }
        tracing::debug!(
            folder = %self.folder_key,
            files_seen = self.summary.files_seen,
            "folder scan paused until uploads make room in the queue"
        );
        while queued().is_some_and(|queued| queued > backlog / 2) {
            std::thread::sleep(ROOM_POLL);
        }
    }
}
