//! Change times for ledger entries written before they were kept.
//!
//! An entry an older version wrote has no change time and matches a file on size, mtime
//! and inode alone ([`Fingerprint::is_version_of`]). Given its file's change time, it sees
//! every later change too (a `chmod`, a `touch` back to the same mtime). Rewriting each
//! entry as a look matched it made the first start after an upgrade three times as long
//! as a plain restart: a compare-and-swap per file was over a third of that start. So a
//! look only notes the folder ([`Unstamped`]), and once the folder's scan has ended its
//! watcher walks the folder's entries a step at a time between its other work
//! ([`Store::stamp_step`]):
//!
//! 1. Read a chunk of the folder's entries, keeping those whose upload has no change time.
//! 2. Look at each one's file as it is now.
//! 3. Rewrite the entry with the file's fingerprint if the file is still the version the
//!    entry records, and only if the entry is still the one read: an upload that wrote it
//!    meanwhile wins.
//!
//! Nothing is flushed: a rewrite lost in a crash is made again after the next start's
//! scan, which notes the folder again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};

use super::files::successor;
use super::record::FileRecord;
use super::{
    FileKey, JobId, LedgerEntry, Store, StoreError, decode_ledger, encode, ledger_fingerprint,
    valid_key,
};
use crate::fingerprint::Fingerprint;

/// The folders whose looks matched an upload recorded without a change time, until their
/// watcher takes them ([`Store::take_unstamped`]).
#[derive(Default)]
pub(super) struct Unstamped(Mutex<HashSet<String>>);

impl Unstamped {
    pub fn note(&self, folder: &str) {
        let mut folders = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Looks at one folder note it once per file: no allocation when it is noted.
        if !folders.contains(folder) {
            folders.insert(folder.to_owned());
        }
    }

    fn take(&self, folder: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(folder)
    }
}

/// Where a walk of [`Store::stamp_step`] goes on: just after this ledger key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampFrom(Vec<u8>);

/// What one step of the walk did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StampStep {
    /// Entries given their file's change time.
    pub stamped: u64,
    /// Where the next step starts; `None` once the folder's entries are all read.
    pub next: Option<StampFrom>,
}

impl Store {
    /// Whether looks matched uploads of `folder` recorded without a change time since the
    /// last call (module `stamp`): its watcher should walk the folder's entries.
    pub fn take_unstamped(&self, folder: &str) -> bool {
        self.inner.unstamped.take(folder)
    }

    /// One step of the walk giving `folder`'s entries without a change time the one of
    /// their file (steps 1 to 3 of module `stamp`), from `from` (`None`: the folder's first
    /// entry). `look` gives the fingerprint a file of the folder has now, by its relative
    /// path, `None` when it has none (gone, not a regular file).
    pub fn stamp_step(
        &self,
        folder: &str,
        from: Option<&StampFrom>,
        mut look: impl FnMut(&str) -> Option<Fingerprint>,
    ) -> Result<StampStep, StoreError> {
        // A use of the store (`Store::uses`): an idle daemon's compaction waits for the
        // walk's end rather than start between two steps and give way to the next.
        self.inner.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.bell.ring();
        let prefix = valid_key(&FileKey::new(folder, ""))?;
        let start = from.map_or_else(|| prefix.clone(), |from| successor(&from.0));
        let mut picked = Vec::new();
        let last = self.read_chunk(&prefix, &start, pick_unstamped, &mut picked)?;
        let mut stamped = 0;
        for (raw_key, picked) in picked {
            let Ok(rel) = std::str::from_utf8(&raw_key[prefix.len()..]) else {
                continue;
            };
            if let Some(now) = look(rel)
                && now.upgrades(&picked.entry.fingerprint)
                && self.stamp(&raw_key, picked, now)?
            {
                stamped += 1;
            }
        }
        Ok(StampStep {
            stamped,
            next: last.map(StampFrom),
        })
    }

    /// Step 3 for one entry: whether it was rewritten. The compare-and-swap against the
    /// bytes step 1 read is what lets an upload that wrote the entry meanwhile win.
    fn stamp(
        &self,
        raw_key: &[u8],
        picked: Picked,
        fingerprint: Fingerprint,
    ) -> Result<bool, StoreError> {
        let Picked {
            stored,
            job,
            mut entry,
        } = picked;
        entry.fingerprint = fingerprint;
        let stamped = FileRecord {
            job,
            upload: Some(&encode(&entry)),
        }
        .join();
        // The counts do not change, so the `closed` marker may stay: the counts it vouches
        // for are still right (module doc of `queue`, "Clean close").
        let swapped = self
            .handles()
            .trees
            .ledger
            .compare_and_swap(raw_key, stored, stamped)
            .map_err(|err| self.db_error(err))?;
        Ok(swapped.is_ok())
    }
}

/// An entry step 1 picked: its bytes as read, and what it records.
struct Picked {
    stored: Option<Vec<u8>>,
    job: Option<JobId>,
    entry: LedgerEntry,
}

/// Step 1's pick: an entry whose upload has no change time. Only the fingerprint of the
/// others is decoded (most entries of a walk hold one). An entry that does not decode is
/// passed over: a look at its file reports it, and the upload that follows writes the
/// entry anew. No pointer kept in memory stands for an entry with an upload (module
/// `pointers`), so the record joins back to the bytes stored.
fn pick_unstamped(raw_key: &[u8], record: FileRecord<'_>) -> Result<Option<Picked>, StoreError> {
    let Some(upload) = record.upload else {
        return Ok(None);
    };
    if !ledger_fingerprint(upload, raw_key).is_ok_and(|recorded| recorded.ctime_ns.is_none()) {
        return Ok(None);
    }
    Ok(decode_ledger(upload, raw_key).ok().map(|entry| Picked {
        stored: record.join(),
        job: record.job,
        entry,
    }))
}
