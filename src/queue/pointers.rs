//! The pointers from new files to their jobs, kept in memory instead of in the `ledger`.
//!
//! Invariant 1 needs a way from a file's path to its job. For a file the ledger already
//! holds (an upload of an earlier version) the pointer lives in that entry (module
//! `record`). A new file has no entry until its upload ends: writing one at the offer only
//! to name the job, and rewriting it at the completion, cost one write per new file of the
//! four a small file took. So the pointer of a file without a ledger entry is kept here:
//!
//! 1. **Rebuilt, not stored.** Every job names its file, so a job whose file has no ledger
//!    entry stands for exactly such a pointer. The first transaction or walk of the files
//!    after an open walks the jobs and takes those pointers back ([`Pointers::load`]); a
//!    crash loses none of them.
//! 2. **Seen by every transaction.** `Tx::file_record` reads a file's entry with the pointer
//!    kept here in place of the one it holds; `Tx::write_file` keeps here the pointer of a
//!    file without an entry and writes every other entry to the ledger, which then holds
//!    the pointer instead.
//! 3. **Changed as the transaction commits.** A transaction notes the pointers it read and
//!    the ones it leaves ([`Noted`]), and they apply only after sled commits it. Creating a
//!    pointer for a file without one is the one change two transactions could make at once
//!    without sled seeing a conflict (neither writes the file's entry), so only the
//!    transactions that may create jobs create pointers, one at a time
//!    ([`Pointers::creating`]), each applying its own before the next reads. A
//!    transaction whose outcome depends on a file having no job (a rebuild recording an
//!    upload found on the remote, a file found gone) runs among them too, for the same
//!    reason. Every other change removes a pointer, and only if it is still the one the
//!    transaction read. Any other transaction can see a job committed and its pointer not
//!    yet applied (a worker claiming a new file's job the moment its offer commits): it
//!    would take the file for one without an entry or pointer, and write the entry that
//!    the pointer then doubles. Every job's file has one or the other, so a transaction
//!    outside the creating ones that meets a file with neither stops and runs again among
//!    them ([`super::StoreError::PointerUnsettled`]), after the pointer applied.
//! 4. **Bounded.** Beyond [`LIMIT`] pointers, a new one is written to the ledger as before,
//!    so the memory does not grow with the backlog (the scans pause at a backlog well
//!    below it).
//! 5. **Walked with the ledger.** `Store::visit_files` hands on a file with a pointer kept
//!    here as if its entry held it ([`Pointers::within`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::JobId;

/// How many pointers are kept in memory at most: about 130 bytes each, a few MiB in all.
pub(super) const LIMIT: usize = 20_000;

/// The pointers kept in memory, for one open store.
pub(super) struct Pointers {
    /// Each file's pointer, by the file's key.
    kept: Mutex<BTreeMap<Vec<u8>, JobId>>,
    /// Whether [`Pointers::load`] ran since the open: read without the lock, so that
    /// every transaction after the first does not take it only to find the load done.
    loaded: AtomicBool,
    /// Held by a transaction that may create pointers, from its start until its pointers
    /// apply (step 3 of the module doc).
    creating: Mutex<()>,
    limit: AtomicUsize,
    /// How many transactions ran again among those creating pointers (step 3).
    #[cfg(test)]
    pub(super) rerun: AtomicUsize,
    /// Holds the next transaction that keeps a pointer between its commit and the apply.
    #[cfg(test)]
    gate: Mutex<Option<Gate>>,
}

/// Where a test holds a transaction in step 3's window, after sled committed it and before
/// its pointers apply.
#[cfg(test)]
pub(super) struct Gate {
    /// Sent once the transaction is held.
    pub(super) reached: std::sync::mpsc::Sender<()>,
    /// Received to let it go on.
    pub(super) release: std::sync::mpsc::Receiver<()>,
}

/// What one run of a transaction did with the pointers of the files it touched.
#[derive(Default)]
pub(super) struct Noted {
    /// In key order, like a batch's files: a lookup compares a few keys instead of
    /// hashing a whole path.
    files: BTreeMap<Vec<u8>, Note>,
    /// How many files it leaves a pointer for.
    pointing: usize,
}

#[derive(Clone, Copy)]
struct Note {
    /// The pointer kept here when the transaction first looked.
    read: Option<JobId>,
    /// The pointer it leaves here (`Some(None)`: none), if it changed it.
    left: Option<Option<JobId>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding it but an allocation, which aborts the process.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Pointers {
    fn default() -> Self {
        Pointers::with_limit(LIMIT)
    }
}

impl Pointers {
    pub(super) fn with_limit(limit: usize) -> Pointers {
        Pointers {
            kept: Mutex::default(),
            loaded: AtomicBool::new(false),
            creating: Mutex::new(()),
            limit: AtomicUsize::new(limit),
            #[cfg(test)]
            rerun: AtomicUsize::new(0),
            #[cfg(test)]
            gate: Mutex::default(),
        }
    }

    /// Held while a transaction that may create pointers runs and applies them.
    pub(super) fn creating(&self) -> MutexGuard<'_, ()> {
        lock(&self.creating)
    }

    /// Step 1: fills the pointers from `jobs_without_entry` (each job whose file has no
    /// ledger entry, as file key and id) the first time it is called after an open; a
    /// failed walk is tried again by the next call.
    pub(super) fn load<E>(
        &self,
        jobs_without_entry: impl FnOnce(&mut dyn FnMut(Vec<u8>, JobId)) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut kept = lock(&self.kept);
        // Another caller may have loaded them while this one waited for the lock.
        if self.loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut found = BTreeMap::new();
        jobs_without_entry(&mut |raw_key, id| {
            // Two jobs of one file break invariant 1 anyway; the repair at start-up
            // points the file at the later one.
            found.insert(raw_key, id);
        })?;
        *kept = found;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// How many pointers are kept.
    pub(super) fn len(&self) -> usize {
        lock(&self.kept).len()
    }

    /// Whether a transaction that noted `noted` may keep one more pointer here.
    pub(super) fn has_room(&self, noted: &Noted) -> bool {
        self.len() + noted.pointing < self.limit.load(Ordering::Relaxed)
    }

    /// Sets [`LIMIT`] for a test of what lies beyond it.
    #[cfg(test)]
    pub(super) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn get(&self, raw_key: &[u8]) -> Option<JobId> {
        lock(&self.kept).get(raw_key).copied()
    }

    /// The pointers of the files from `from` on (inclusive) under `prefix`, up to `to`
    /// (inclusive; `None`: to the prefix's end), in key order.
    pub(super) fn within(
        &self,
        prefix: &[u8],
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Vec<(Vec<u8>, JobId)> {
        let kept = lock(&self.kept);
        let upper = match to {
            Some(to) => Bound::Included(to),
            None => Bound::Unbounded,
        };
        kept.range::<[u8], _>((Bound::Included(from), upper))
            .take_while(|(raw_key, _)| raw_key.starts_with(prefix))
            .map(|(raw_key, id)| (raw_key.clone(), *id))
            .collect()
    }

    /// Step 3: applies what a committed transaction noted.
    pub(super) fn apply(&self, noted: Noted) {
        if noted.files.is_empty() {
            return;
        }
        #[cfg(test)]
        if noted.pointing > 0 {
            self.hold_at_gate();
        }
        let mut kept = lock(&self.kept);
        for (raw_key, note) in noted.files {
            match note.left {
                Some(Some(id)) => {
                    kept.insert(raw_key, id);
                }
                Some(None) if kept.get(&raw_key).copied() == note.read => {
                    kept.remove(&raw_key);
                }
                _ => {}
            }
        }
    }

    /// Holds the next transaction that keeps a pointer at `gate` (module doc, step 3).
    #[cfg(test)]
    pub(super) fn set_gate(&self, gate: Gate) {
        *lock(&self.gate) = Some(gate);
    }

    #[cfg(test)]
    fn hold_at_gate(&self) {
        let Some(gate) = lock(&self.gate).take() else {
            return;
        };
        gate.reached.send(()).ok();
        gate.release.recv().ok();
    }

    /// Every pointer kept, in key order (the tests' check of invariant 1).
    #[cfg(test)]
    pub(super) fn all(&self) -> Vec<(Vec<u8>, JobId)> {
        self.within(&[], &[], None)
    }
}

impl Noted {
    /// The pointer of the file as this transaction sees it: the one it left, or the one
    /// kept here when it first looked (noted, so that it reads one value throughout).
    pub(super) fn pointer(&mut self, pointers: &Pointers, raw_key: &[u8]) -> Option<JobId> {
        if let Some(note) = self.files.get(raw_key) {
            return note.left.unwrap_or(note.read);
        }
        let read = pointers.get(raw_key);
        self.files
            .insert(raw_key.to_vec(), Note { read, left: None });
        read
    }

    /// Leaves `left` as the file's pointer here once the transaction commits.
    pub(super) fn leave(&mut self, pointers: &Pointers, raw_key: &[u8], left: Option<JobId>) {
        self.pointer(pointers, raw_key);
        if let Some(note) = self.files.get_mut(raw_key) {
            let was_pointing = matches!(note.left, Some(Some(_)));
            note.left = Some(left);
            match (was_pointing, left.is_some()) {
                (false, true) => self.pointing += 1,
                (true, false) => self.pointing -= 1,
                _ => {}
            }
        }
    }

    /// Forgets a run that sled is about to repeat.
    pub(super) fn clear(&mut self) {
        self.files.clear();
        self.pointing = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(limit: usize) -> Pointers {
        let pointers = Pointers::with_limit(limit);
        pointers
            .load(|_| Ok::<(), ()>(()))
            .expect("an empty load works");
        pointers
    }

    #[test]
    fn a_removal_applies_only_to_the_pointer_it_read() {
        let pointers = loaded(10);
        let mut created = Noted::default();
        created.leave(&pointers, b"a", Some(JobId(1)));
        pointers.apply(created);

        let mut stale = Noted::default();
        assert_eq!(stale.pointer(&pointers, b"a"), Some(JobId(1)));
        // Another transaction points the file at a new job before this one commits.
        let mut replaced = Noted::default();
        replaced.leave(&pointers, b"a", Some(JobId(2)));
        pointers.apply(replaced);
        stale.leave(&pointers, b"a", None);
        pointers.apply(stale);
        assert_eq!(pointers.all(), vec![(b"a".to_vec(), JobId(2))]);

        let mut current = Noted::default();
        current.leave(&pointers, b"a", None);
        pointers.apply(current);
        assert!(pointers.all().is_empty());
    }

    #[test]
    fn a_transaction_reads_one_value_per_file_throughout() {
        let pointers = loaded(10);
        let mut reader = Noted::default();
        assert_eq!(reader.pointer(&pointers, b"a"), None);
        let mut creator = Noted::default();
        creator.leave(&pointers, b"a", Some(JobId(7)));
        pointers.apply(creator);
        assert_eq!(reader.pointer(&pointers, b"a"), None);
        assert_eq!(Noted::default().pointer(&pointers, b"a"), Some(JobId(7)));
    }

    #[test]
    fn room_counts_what_is_kept_and_what_the_transaction_noted() {
        let pointers = loaded(2);
        let mut noted = Noted::default();
        assert!(pointers.has_room(&noted));
        noted.leave(&pointers, b"a", Some(JobId(1)));
        assert!(pointers.has_room(&noted));
        noted.leave(&pointers, b"b", Some(JobId(2)));
        assert!(!pointers.has_room(&noted));
    }

    #[test]
    fn within_stays_inside_the_prefix_and_the_bounds() {
        let pointers = Pointers::with_limit(10);
        pointers
            .load(|found| {
                for (n, key) in [&b"f\0a"[..], b"f\0b", b"f\0c", b"g\0a"].iter().enumerate() {
                    found(key.to_vec(), JobId(n as u64));
                }
                Ok::<(), ()>(())
            })
            .expect("loads");
        let keys = |found: Vec<(Vec<u8>, JobId)>| {
            found.into_iter().map(|(key, _)| key).collect::<Vec<_>>()
        };
        assert_eq!(
            keys(pointers.within(b"f\0", b"f\0b", None)),
            vec![b"f\0b".to_vec(), b"f\0c".to_vec()]
        );
        assert_eq!(
            keys(pointers.within(b"f\0", b"f\0", Some(b"f\0b"))),
            vec![b"f\0a".to_vec(), b"f\0b".to_vec()]
        );
    }
}
