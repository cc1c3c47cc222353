//! Lines: the jobs `offer` creates wait in the order of their ids, without a `due` entry.
//!
//! Most jobs are created by an offer, claimed once and completed. A `due` entry for each
//! cost two writes per file (the entry in at the offer, out at the claim). Instead, a new
//! job's id starts with its folder's [`LinePrefix`] and goes on with a number that grows
//! with every job (sled's `generate_id`), so the `jobs` tree itself holds each folder's new
//! jobs in the order they came: the folder's *line*. Such a job is marked [`Job::in_line`];
//! the first write that changes it in any other way (a claim, a new version, a failure)
//! takes it out of the line for good, and from then on it is claimed from the `due` index
//! like any other (invariant 2 in the module doc of [`super`]).
//!
//! Finding the first jobs of a line ([`Store::walk_line`]):
//! 1. Start at the line's *start* (kept in memory, one per line; the first id of the line
//!    after an open): no job before it is in line.
//! 2. Read the jobs from there in id order, handing each one in line to the caller until
//!    it has enough; jobs of another folder sharing the prefix are passed over.
//! 3. Move the start up to the first job still in line, or past the last job read when
//!    none was, but never past the first id of a transaction that is still creating jobs
//!    of that line: its jobs become visible only when it commits, maybe after the read
//!    passed their place ([`Lines::creating`]).
//!
//! A job leaves its line and never comes back, and a new job's id is above every id given
//! before it, so a start only ever moves forward, and the jobs a claim reads past are
//! those that left the line since the last claim: each job is read past about once.
//!
//! Most jobs leave their line in a batch that moves its folder's claim mark over them
//! (module `marks`), and the walk that found them knows that nothing before the last of
//! them is left in line but what it passed over (jobs of other folders sharing the
//! prefix) and what may still appear (the bound). So once the batch's transaction
//! commits, the start moves past them ([`Lines::passed_claimed`]) instead of waiting for
//! the next walk to read past them again: with files of a few KiB, reading and decoding
//! each job once more was a twentieth of the daemon's instructions.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::keys::{
    self, FolderTag, LinePrefix, decode_job_key, folder_tag, job_key, line_ids, line_prefix,
    prefix_of, tag_prefix,
};
use super::marks::MarksRead;
use super::{Job, JobId, ReadJob, Store, StoreError, Tx, TxResult, abort, decode_job};

/// The starts of the lines, and the ids being created.
#[derive(Default)]
pub(super) struct Lines {
    /// Per line: no job with a smaller id is in line.
    starts: Mutex<HashMap<LinePrefix, JobId>>,
    creating: Mutex<Creating>,
}

/// The ids given out and not yet visible. Ids are taken and noted under one lock, so a walk
/// that notes this before and after it reads knows every id that may appear behind it.
#[derive(Default)]
struct Creating {
    /// The first id each running transaction took per line (ids grow, so every job it
    /// creates there is at or above it).
    running: BTreeSet<JobId>,
    /// The sequence numbers of the first and the last id this process took.
    first_sequence: Option<u64>,
    last_sequence: Option<u64>,
}

/// What a walk notes of the ids being created when it starts.
struct Before {
    first_running: Option<JobId>,
    last_sequence: Option<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: a panicking holder cannot leave them half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lines {
    /// Forgets the ids a finished transaction registered (`Tx::new_job_id`).
    pub(super) fn created(&self, registered: &[JobId]) {
        let mut creating = lock(&self.creating);
        for id in registered {
            creating.running.remove(id);
        }
    }

    /// Takes the next id of `prefix` from `generate` and notes it as being created by the
    /// transaction that `registered` belongs to; `None` when the numbers are used up.
    pub(super) fn take_id(
        &self,
        prefix: LinePrefix,
        generate: impl FnOnce() -> sled::Result<u64>,
        registered: &Registered,
    ) -> sled::Result<Option<JobId>> {
        let mut creating = lock(&self.creating);
        let sequence = generate()?;
        creating.first_sequence.get_or_insert(sequence);
        creating.last_sequence = Some(sequence);
        let Some(id) = keys::new_job_id(prefix, sequence) else {
            return Ok(None);
        };
        let mut registered = registered.0.borrow_mut();
        // A later id of the same line is above the first one: that one bounds them all.
        if !registered.iter().any(|taken| prefix_of(*taken) == prefix) {
            creating.running.insert(id);
            registered.push(id);
        }
        Ok(Some(id))
    }

    /// Where the line of `prefix` starts now.
    pub(super) fn start(&self, prefix: LinePrefix) -> JobId {
        lock(&self.starts)
            .get(&prefix)
            .copied()
            .unwrap_or(line_ids(prefix).0)
    }

    fn before_walk(&self, prefix: LinePrefix) -> Before {
        let (first, last) = line_ids(prefix);
        let creating = lock(&self.creating);
        Before {
            first_running: creating.running.range(first..=last).next().copied(),
            last_sequence: creating.last_sequence,
        }
    }

    /// How far a walk of `prefix` that started with `before` may move the start: not past
    /// an id that was running then, nor past the first id taken since.
    fn bound_after_walk(&self, prefix: LinePrefix, before: &Before) -> Option<JobId> {
        let creating = lock(&self.creating);
        let taken_since = if creating.last_sequence == before.last_sequence {
            None
        } else {
            let first_since = match before.last_sequence {
                Some(last) => last.saturating_add(1),
                None => creating.first_sequence.unwrap_or(0),
            };
            // An id past the line's end: nothing of the line was taken since.
            Some(keys::new_job_id(prefix, first_since).unwrap_or(line_ids(prefix).1))
        };
        match (before.first_running, taken_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves the start of a line past the jobs a batch just claimed under its folder's
    /// mark, the last one `through`, as the walk `walked` that found them allows: not past
    /// a job of another folder it found in line, nor past its bound (which a batch puts
    /// no job under the mark at or above, so that this only guards).
    pub(super) fn passed_claimed(&self, prefix: LinePrefix, through: JobId, walked: &Walked) {
        let past = JobId(through.0.saturating_add(1));
        let to = walked.other_in_line.map_or(past, |other| other.min(past));
        self.advance(prefix, to, walked.bound);
    }

    /// Step 3: moves the start of `prefix` forward to `to`, but not past `bound`.
    fn advance(&self, prefix: LinePrefix, to: JobId, bound: Option<JobId>) {
        let to = bound.map_or(to, |bound| to.min(bound));
        let mut starts = lock(&self.starts);
        let start = starts.entry(prefix).or_insert(line_ids(prefix).0);
        *start = (*start).max(to);
    }
}

/// What a walk's visitor wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    More,
    Enough,
}

/// What a walk of a line found besides the jobs it handed over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Walked {
    /// The first id at or above which a job of the line may still appear behind the walk
    /// (step 3), `None` when none can.
    pub bound: Option<JobId>,
    /// The first job in line of another folder sharing the prefix, in a walk of one
    /// folder's jobs, if it read one.
    pub other_in_line: Option<JobId>,
}

impl Store {
    /// Hands the jobs in line of the folder tagged `folder` (`None`: of any folder sharing
    /// `prefix`) to `visit`, in line order, until it has enough (the steps in the module
    /// doc). Jobs a claim mark covers are not in line (module `marks`).
    pub(super) fn walk_line(
        &self,
        prefix: LinePrefix,
        folder: Option<FolderTag>,
        mut visit: impl FnMut(ReadJob) -> Walk,
    ) -> Result<Walked, StoreError> {
        let lines = &self.inner.lines;
        let before = lines.before_walk(prefix);
        let start = lines.start(prefix);
        let (_, last) = line_ids(prefix);
        let mut first_in_line = None;
        let mut other_in_line = None;
        let mut read_past = start;
        let mut marks = MarksRead::default();
        for entry in self
            .handles()
            .trees
            .jobs
            .range(job_key(start)..=job_key(last))
        {
            let (raw_id, raw) = entry.map_err(|err| self.db_error(err))?;
            let id = keys::stored_job_id(&raw_id)?;
            let job = marks.see(self, decode_job(&raw, id)?)?;
            if !job.in_line {
                if first_in_line.is_none() {
                    read_past = JobId(id.0.saturating_add(1));
                }
                continue;
            }
            first_in_line.get_or_insert(id);
            // A job in line is as stored: the mark did not change it.
            let of_folder = folder.is_none_or(|tag| folder_tag(&job.key.folder) == tag);
            if !of_folder {
                other_in_line.get_or_insert(id);
            } else if visit(ReadJob { raw, job }) == Walk::Enough {
                break;
            }
        }
        let bound = lines.bound_after_walk(prefix, &before);
        lines.advance(prefix, first_in_line.unwrap_or(read_past), bound);
        Ok(Walked {
            bound,
            other_in_line,
        })
    }

    /// The first job in line of the folder tagged `folder`.
    pub(super) fn first_in_line(&self, folder: FolderTag) -> Result<Option<Job>, StoreError> {
        let mut first = None;
        self.walk_line(tag_prefix(folder), Some(folder), |read| {
            first = Some(read.job);
            Walk::Enough
        })?;
        Ok(first)
    }

    /// The folder of the first job in line of each line that has one, in key order: one
    /// seek per line.
    pub(super) fn folders_in_line(&self) -> Result<Vec<FolderTag>, StoreError> {
        let mut folders = Vec::new();
        let mut next = Some(JobId(0));
        while let Some(from) = next {
            let Some(entry) = self
                .handles()
                .trees
                .jobs
                .range(job_key(from)..)
                .keys()
                .next()
            else {
                break;
            };
            let raw = entry.map_err(|err| self.db_error(err))?;
            let Some(id) = decode_job_key(&raw) else {
                break;
            };
            let prefix = prefix_of(id);
            self.walk_line(prefix, None, |read| {
                folders.push(folder_tag(&read.job.key.folder));
                Walk::Enough
            })?;
            next = keys::next_prefix(prefix).map(|prefix| line_ids(prefix).0);
        }
        Ok(folders)
    }
}

/// The ids a transaction registered as creating, to forget once it ends (whether it
/// committed, aborted or ran again after a conflict).
#[derive(Default)]
pub(super) struct Registered(pub RefCell<Vec<JobId>>);

impl Tx<'_> {
    /// A new job id in `folder`'s line (module doc), registered as being created until the
    /// transaction ends.
    pub(super) fn new_job_id(&self, folder: &str) -> TxResult<JobId> {
        let prefix = line_prefix(folder);
        let taken = self
            .lines
            .take_id(prefix, || self.jobs.generate_id(), self.registered)?;
        match taken {
            Some(id) => Ok(id),
            None => abort(StoreError::Message(
                "the state database has given out every job id it can; rebuild it \
                 (`upsync run --rebuild-state`) to start the numbering again"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: LinePrefix, sequence: u64) -> JobId {
        keys::new_job_id(prefix, sequence).expect("fits")
    }

    /// A walk of `prefix` that reads up to `read_to` and finds nothing in line, while
    /// `meanwhile` runs (other transactions taking ids).
    fn walk_to(lines: &Lines, prefix: LinePrefix, read_to: JobId, meanwhile: impl FnOnce()) {
        let before = lines.before_walk(prefix);
        meanwhile();
        let bound = lines.bound_after_walk(prefix, &before);
        lines.advance(prefix, read_to, bound);
    }

    #[test]
    fn a_line_start_never_passes_an_id_still_being_created_or_taken_during_the_walk() {
        let lines = Lines::default();
        let prefix = line_prefix("/data/in");
        let running = Registered::default();
        let taken = lines.take_id(prefix, || Ok(10), &running).expect("takes");
        assert_eq!(taken, Some(id(prefix, 10)));
        // A later id of the same transaction is bounded by its first one.
        lines.take_id(prefix, || Ok(12), &running).expect("takes");
        assert_eq!(running.0.borrow().len(), 1);

        walk_to(&lines, prefix, id(prefix, 50), || {});
        assert_eq!(
            lines.start(prefix),
            id(prefix, 10),
            "a job of a running transaction may appear later"
        );

        lines.created(&running.0.borrow());
        let during = Registered::default();
        walk_to(&lines, prefix, id(prefix, 50), || {
            lines.take_id(prefix, || Ok(13), &during).expect("takes");
            lines.created(&during.0.borrow());
        });
        assert_eq!(
            lines.start(prefix),
            id(prefix, 13),
            "a job created while the walk read may have been passed before it was visible"
        );

        walk_to(&lines, prefix, id(prefix, 50), || {});
        assert_eq!(
            lines.start(prefix),
            id(prefix, 50),
            "nothing is being created"
        );
        walk_to(&lines, prefix, id(prefix, 20), || {});
        assert_eq!(
            lines.start(prefix),
            id(prefix, 50),
            "a start only moves forward"
        );
    }

    #[test]
    fn ids_taken_for_another_line_do_not_hold_a_start_back() {
        let lines = Lines::default();
        let (ours, theirs) = (line_prefix("/data/a"), line_prefix("/data/b"));
        assert_ne!(ours, theirs);
        let running = Registered::default();
        lines.take_id(theirs, || Ok(10), &running).expect("takes");
        walk_to(&lines, ours, id(ours, 50), || {});
        assert_eq!(lines.start(ours), id(ours, 50));
    }
}
