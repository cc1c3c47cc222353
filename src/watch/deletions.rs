//! The sink of a folder whose deletions reach the remote (`on_delete = "delete"`), with
//! the mass-delete guard.
//!
//! Files found gone become deletion jobs, due after the folder's settle time (at least
//! [`MIN_DELETE_DELAY`]): a file deleted and written again meanwhile is uploaded instead,
//! and a deletion of many files is counted whole before any of it runs. After every batch
//! of deletions and every look at the whole folder, the guard:
//!
//! 1. Counts the folder's deletions waiting to run that the operator has not approved,
//!    held ones included, and the files the ledger records as uploaded.
//! 2. If the count is over `max_delete` (a count, or a percentage of the uploaded files),
//!    or is every uploaded file of the folder (two or more: what an empty mount point looks
//!    like, whatever the limit), holds every one of them: nothing is deleted, the log says
//!    why, `status` lists them with the reason, and the metrics count them; they wait for
//!    `upsync retry --deletes`.
//! 3. If the count is within the limit again (files came back, the limit was raised), the
//!    held deletions are queued again.
//!
//! A folder that is gone as a whole is never read as deleted files: no scan runs without
//! its root, and when the root goes its deletions that have not run and are not approved
//! are dropped ([`Sink::root_lost`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::{LookNow, Sink, SinkOffer};
use crate::config::{DeletePolicy, FolderConfig, OnDelete};
use crate::fingerprint::Fingerprint;
use crate::queue::{DeletionTally, FileKey, FilePick, StampFrom, StampStep, Store};

/// The shortest wait between a file found gone and the deletion of its remote copy.
pub const MIN_DELETE_DELAY: Duration = Duration::from_secs(1);

/// The queue, as a folder that propagates deletions sees it.
pub struct DeletingSink {
    store: Store,
    policy: DeletePolicy,
    delay: Duration,
}

impl DeletingSink {
    /// The sink for `folder`: the store itself unless the folder propagates deletions.
    pub fn for_folder(store: Store, folder: &FolderConfig) -> Arc<dyn Sink> {
        match folder.deletes.on_delete {
            OnDelete::Keep => Arc::new(store),
            OnDelete::Delete => Arc::new(DeletingSink {
                store,
                policy: folder.deletes,
                delay: folder.settle.max(MIN_DELETE_DELAY),
            }),
        }
    }

    /// Steps 1 to 3 for `folder`.
    fn guard(&self, folder: &str) {
        let tally = match self.store.deletion_tally(folder) {
            Ok(tally) => tally,
            Err(e) => {
                error!(folder, error = %e, "cannot count the folder's deletions; holding none");
                return;
            }
        };
        let count = tally.pending + tally.held;
        let limit = self.policy.max_delete.limit(tally.uploaded);
        let everything = tally.uploaded >= 2 && count >= tally.uploaded;
        let over = count > limit || everything;
        if over && tally.pending > 0 {
            let why = self.why(&tally, limit);
            match self.store.hold_deletions(folder, &why) {
                Ok(held) => {
                    warn!(folder, held, deletions = count, limit, "{why}")
                }
                Err(e) => error!(folder, error = %e, "cannot hold the folder's deletions"),
            }
        } else if !over && tally.held > 0 {
            match self.store.release_deletions(folder) {
                Ok(released) => info!(
                    folder,
                    released,
                    limit,
                    "the held deletions are within max_delete again; deleting them"
                ),
                Err(e) => error!(folder, error = %e, "cannot release the held deletions"),
            }
        }
    }

    fn why(&self, tally: &DeletionTally, limit: u64) -> String {
        let count = tally.pending + tally.held;
        if count <= limit {
            return format!(
                "all {count} uploaded files of the folder are gone at once (an empty mount \
                 point looks like this); nothing is deleted until `upsync retry --deletes`"
            );
        }
        format!(
            "{} of the folder's {} uploaded files are gone, more than max_delete = {} \
             allows ({limit}); nothing is deleted until `upsync retry --deletes` or a higher \
             max_delete",
            tally.pending + tally.held,
            tally.uploaded,
            self.policy.max_delete,
        )
    }
}

impl Sink for DeletingSink {
    fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool {
        Sink::is_uploaded(&self.store, key, fingerprint)
    }

    fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> SinkOffer {
        Sink::offer(&self.store, key, fingerprint)
    }

    fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
        Sink::offer_many(&self.store, files)
    }

    fn queued(&self, folder: &str) -> Option<u64> {
        Sink::queued(&self.store, folder)
    }

    fn vanished(&self, key: &FileKey) {
        self.vanished_many(std::slice::from_ref(key));
    }

    fn vanished_many(&self, keys: &[FileKey]) {
        let Some(first) = keys.first() else {
            return;
        };
        match self
            .store
            .offer_deletions(keys, self.store.now() + self.delay)
        {
            Ok(0) => {}
            Ok(queued) => {
                info!(folder = %first.folder, deletions = queued, "files are gone; their remote copies will be deleted");
                self.guard(&first.folder);
            }
            Err(e) => {
                error!(folder = %first.folder, files = keys.len(), error = %e, "cannot queue deletions; a rescan tries again")
            }
        }
    }

    fn visit_tracked(&self, folder: &str, under: &str, visit: &mut dyn FnMut(&str)) {
        let pick = FilePick::WithJobOrUploaded;
        if let Err(e) = self
            .store
            .visit_files(folder, under, pick, super::every(visit))
        {
            error!(folder, error = %e, "cannot read the ledger of a folder; a rescan tries again");
        }
    }

    fn scan_done(&self, folder: &str) {
        self.guard(folder);
    }

    fn take_unstamped(&self, folder: &str) -> bool {
        Sink::take_unstamped(&self.store, folder)
    }

    fn stamp_step(&self, folder: &str, from: Option<&StampFrom>, look: LookNow) -> StampStep {
        Sink::stamp_step(&self.store, folder, from, look)
    }

    fn root_lost(&self, folder: &str) {
        match self.store.drop_pending_deletions(folder) {
            Ok(0) => {}
            Ok(dropped) => warn!(
                folder,
                dropped,
                "the folder is gone as a whole; its deletions that had not run are dropped"
            ),
            Err(e) => {
                error!(folder, error = %e, "cannot drop the deletions of a folder that is gone")
            }
        }
    }
}
