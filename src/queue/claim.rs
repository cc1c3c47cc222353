//! Taking due jobs, fairly across folders, and making waiting jobs due.
//!
//! A folder's claimable jobs wait in two places, each in due order: its group of the `due`
//! index (grouped by folder tag; see the layout in the module doc of [`super`]), and its
//! line of jobs new since an offer created them (module `line`). A claim
//! ([`Store::claim_next`]):
//! 1. Orders the folders the caller may claim from (those whose remote is reachable and
//!    ready), starting with the first one after the folder of the previous claim, so
//!    folders take turns.
//! 2. In each folder in that order, reads the first due entry and the first job in line;
//!    the one due earlier goes first. Both due later than now means the folder has nothing
//!    to claim yet; go on with the next folder.
//! 3. Makes that job active in one transaction that removes its due entry or takes it out
//!    of its line (a job another worker took meanwhile is skipped, and the folder's next
//!    one tried).
//!
//! A batch ([`Store::claim_more`]) takes more due jobs of one folder in one transaction.
//! One batch claims at a time, from its walk to its commit: workers woken together by new
//! files walked the same line at once, and the later transaction found the jobs both had
//! read already claimed (in a run of 10,000 small files, 14,003 candidates were decoded
//! and checked for 9,984 jobs claimed). A remote that comes back makes every retry-wait
//! job of its folders due at once ([`Store::release_waiting`]), a chunk of the folder's
//! `due` group at a time, reading only the entries due later than now.

use std::ops::Bound;
use std::sync::PoisonError;
use std::time::SystemTime;

use super::keys::{self, DueEntry, FolderTag, decode_due_key, due_key, next_tag};
use super::line::{Walk, Walked};
use super::marks::{self, Mark};
use super::{
    Job, JobId, JobState, ReadJob, Store, StoreError, Tx, TxResult, folder_tag, from_ms, to_ms,
};

/// How many `due` entries [`Store::release_waiting`] reads at a time, and so the most jobs
/// one of its transactions wakes.
pub(super) const RELEASE_CHUNK: usize = 256;

/// Where a claimable job waits: its entry in the `due` index (the raw key and its parts),
/// or its place in line.
enum Waiting {
    Due(sled::IVec, DueEntry),
    InLine { id: JobId, due_ms: u64 },
}

impl Waiting {
    fn due_ms(&self) -> u64 {
        match self {
            Waiting::Due(_, due) => due.due_ms,
            Waiting::InLine { due_ms, .. } => *due_ms,
        }
    }
}

/// A job a batch claims: taken from where it waits and written active, or claimed by
/// moving its folder's claim mark over it (as the line's walk read it).
enum Candidate {
    Take(Waiting),
    UnderMark(Box<ReadJob>),
}

/// A job a batch claimed ([`Store::claim_more`]), active.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    /// For a job claimed under its folder's mark, what its completion needs to skip
    /// decoding it again ([`super::Completed::as_claimed`]).
    pub as_claimed: Option<AsClaimed>,
}

impl From<Job> for Claimed {
    /// A job claimed on its own, written active: its completion decodes it.
    fn from(job: Job) -> Claimed {
        Claimed {
            job,
            as_claimed: None,
        }
    }
}

/// A job claimed under its folder's mark as the claim read it: its stored record and that
/// record's decoding. Moving the mark over a job leaves its record as it was, so while the
/// record is unchanged, its completion takes this decoding (through the mark, which shows
/// the job active) instead of decoding it once more; a record that changed meanwhile (a
/// new version offered) is decoded as usual.
#[derive(Debug, Clone)]
pub struct AsClaimed(Box<ReadJob>);

impl AsClaimed {
    pub(super) fn read(&self) -> &ReadJob {
        &self.0
    }
}

/// Where a job in line waits.
fn in_line(job: &Job) -> Waiting {
    Waiting::InLine {
        id: job.id,
        due_ms: job.due_ms().unwrap_or(u64::MAX),
    }
}

/// The one of `a` and `b` due first.
fn earlier(a: Option<Waiting>, b: Option<Waiting>) -> Option<Waiting> {
    match (a, b) {
        (Some(a), Some(b)) if b.due_ms() < a.due_ms() => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// Step 2 of [`Store::claim_more`]: the due entries (`indexed`) and the line's jobs
/// (`lined`) merged in due order, each job offered to `accept` once, in order, up to `max`
/// candidates. The line's jobs go under the mark while none was refused and none may still
/// appear before them ("When a batch may move the mark" in module `marks`).
fn choose_candidates(
    indexed: Vec<(Waiting, Job)>,
    lined: Vec<ReadJob>,
    walked: &Walked,
    max: usize,
    mut accept: impl FnMut(&Job) -> bool,
) -> Vec<Candidate> {
    let mut indexed = indexed.into_iter().peekable();
    let mut lined = lined.into_iter().peekable();
    let mut candidates = Vec::new();
    let mut front_of_line = true;
    while candidates.len() < max {
        let from_index = match (indexed.peek(), lined.peek()) {
            (Some((_, a)), Some(b)) => a.due_ms() <= b.job.due_ms(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if from_index {
            let (waiting, job) = indexed.next().expect("peeked");
            if accept(&job) {
                candidates.push(Candidate::Take(waiting));
            }
            continue;
        }
        let read = lined.next().expect("peeked");
        front_of_line &= walked.bound.is_none_or(|bound| read.job.id < bound);
        if !accept(&read.job) {
            front_of_line = false;
        } else if front_of_line {
            candidates.push(Candidate::UnderMark(Box::new(read)));
        } else {
            candidates.push(Candidate::Take(in_line(&read.job)));
        }
    }
    candidates
}

impl Store {
    /// Claims the earliest due job of any folder, the folders taken in key order (tests and
    /// callers without a schedule).
    pub fn claim(&self, now: SystemTime) -> Result<Option<Job>, StoreError> {
        let tags = self.due_folders()?;
        Ok(self.claim_next(now, &tags, None)?.map(|(job, _)| job))
    }

    /// Claims the next due job from `folders`, starting after the folder `after` (the
    /// previous claim's), so that folders take turns (module doc). Returns the job and its
    /// folder's tag, for the next call's `after`.
    pub fn claim_next(
        &self,
        now: SystemTime,
        folders: &[FolderTag],
        after: Option<FolderTag>,
    ) -> Result<Option<(Job, FolderTag)>, StoreError> {
        let now = to_ms(now);
        for tag in in_turn(folders, after) {
            if let Some(job) = self.claim_in(tag, now)? {
                return Ok(Some((job, tag)));
            }
        }
        Ok(None)
    }

    /// Claims the first due job of one folder (steps 2 and 3). Each pass that finds its
    /// job taken has removed that job's entry or seen it leave the line, so the next pass
    /// looks at another one.
    fn claim_in(&self, tag: FolderTag, now: u64) -> Result<Option<Job>, StoreError> {
        loop {
            let first = earlier(
                self.first_due(tag)?,
                self.first_in_line(tag)?.as_ref().map(in_line),
            );
            let Some(first) = first.filter(|first| first.due_ms() <= now) else {
                return Ok(None);
            };
            if let Some(job) = self.transact(|tx| tx.take(&first, now))? {
                return Ok(Some(job));
            }
        }
    }

    /// The folder's first well-formed `due` entry; malformed ones on the way are removed.
    fn first_due(&self, tag: FolderTag) -> Result<Option<Waiting>, StoreError> {
        for entry in self.handles().trees.due.scan_prefix(tag).keys() {
            let raw = entry.map_err(|err| self.db_error(err))?;
            let Some(due) = decode_due_key(&raw) else {
                tracing::warn!(key = %keys::describe(&raw), "removing a malformed due-index entry");
                self.handles()
                    .trees
                    .due
                    .remove(&raw)
                    .map_err(|err| self.db_error(err))?;
                continue;
            };
            return Ok(Some(Waiting::Due(raw, due)));
        }
        Ok(None)
    }

    /// Claims, in one transaction, more jobs of `first`'s folder due at or before `now`
    /// for a batch: up to `max` of them, in due order, each one `accept` agrees to (it sees
    /// candidates in order and may keep running totals). Jobs another worker took
    /// meanwhile are skipped. The jobs taken from the front of the line are claimed by
    /// moving the folder's claim mark over them, one write for all of them (module
    /// `marks`); the others are each written active. One batch claims at a time (module
    /// doc), so `accept` must not claim.
    ///
    /// 1. Reads the folder's due entries and its line, up to `max` of each.
    /// 2. Merges the two in due order into the candidates `accept` agrees to
    ///    ([`choose_candidates`]).
    /// 3. Makes them active in one transaction, moving the mark over those at the front of
    ///    the line ([`Store::activate_candidates`]).
    /// 4. Tells the line's memory that the mark moved, and returns the jobs claimed.
    pub fn claim_more(
        &self,
        first: &Job,
        now: SystemTime,
        max: usize,
        accept: impl FnMut(&Job) -> bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = to_ms(now);
        let tag = folder_tag(&first.key.folder);
        let _one_batch_at_a_time = self
            .inner
            .batch_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let indexed = self.due_candidates(tag, now, max)?;
        let (lined, walked) = self.line_candidates(tag, now, max)?;
        let candidates = choose_candidates(indexed, lined, &walked, max, accept);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (activated, through) = self.activate_candidates(tag, &candidates, now)?;
        if let Some(through) = through {
            let prefix = keys::tag_prefix(tag);
            self.inner.lines.passed_claimed(prefix, through, &walked);
        }
        let claimed = candidates
            .into_iter()
            .zip(activated)
            .filter_map(|(candidate, active)| {
                let job = active?;
                Some(match candidate {
                    Candidate::Take(_) => Claimed::from(job),
                    Candidate::UnderMark(read) => Claimed {
                        job,
                        as_claimed: Some(AsClaimed(read)),
                    },
                })
            })
            .collect();
        Ok(claimed)
    }

    /// Step 3 of [`Store::claim_more`]: per candidate, the job made active, or `None` when
    /// another worker took it; and the last job the folder's mark was moved over, if any.
    fn activate_candidates(
        &self,
        tag: FolderTag,
        candidates: &[Candidate],
        now: u64,
    ) -> Result<(Vec<Option<Job>>, Option<JobId>), StoreError> {
        self.transact(|tx| {
            let mut through = None;
            let mut activated = Vec::with_capacity(candidates.len());
            for candidate in candidates {
                let active = match candidate {
                    Candidate::Take(waiting) => tx.take(waiting, now)?,
                    Candidate::UnderMark(read) => {
                        let active = tx.claim_under_mark(read, now)?;
                        if active.is_some() {
                            through = Some(read.job.id);
                        }
                        active
                    }
                };
                activated.push(active);
            }
            if let Some(through) = through {
                tx.set_mark(
                    tag,
                    Mark {
                        through,
                        at_ms: now,
                    },
                )?;
            }
            Ok((activated, through))
        })
    }

    /// Up to `max` jobs of the folder's `due` group due by `now`, in due order.
    fn due_candidates(
        &self,
        tag: FolderTag,
        now: u64,
        max: usize,
    ) -> Result<Vec<(Waiting, Job)>, StoreError> {
        let mut candidates = Vec::new();
        for entry in self.handles().trees.due.scan_prefix(tag).keys() {
            if candidates.len() >= max {
                break;
            }
            let raw = entry.map_err(|err| self.db_error(err))?;
            let Some(due) = decode_due_key(&raw) else {
                continue;
            };
            if due.due_ms > now {
                break;
            }
            if let Some(job) = self.get(due.id)?
                && job.due_entry_ms() == Some(due.due_ms)
            {
                candidates.push((Waiting::Due(raw, due), job));
            }
        }
        Ok(candidates)
    }

    /// Up to `max` jobs of the folder's line due by `now`, in line order, and what the walk
    /// found besides ([`Store::walk_line`]).
    fn line_candidates(
        &self,
        tag: FolderTag,
        now: u64,
        max: usize,
    ) -> Result<(Vec<ReadJob>, Walked), StoreError> {
        let mut candidates = Vec::new();
        let walked = self.walk_line(keys::tag_prefix(tag), Some(tag), |read| {
            if read.job.due_ms().is_none_or(|due| due > now) {
                return Walk::Enough;
            }
            candidates.push(read);
            if candidates.len() >= max {
                Walk::Enough
            } else {
                Walk::More
            }
        })?;
        Ok((candidates, walked))
    }

    /// When the earliest queued or retry-wait job of `folders` becomes claimable.
    pub fn next_due_in(&self, folders: &[FolderTag]) -> Result<Option<SystemTime>, StoreError> {
        let mut earliest: Option<u64> = None;
        for tag in folders {
            if let Some(due) = self.first_due_ms(*tag)? {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
        }
        Ok(earliest.map(from_ms))
    }

    /// Since when the folder's longest-waiting claimable job has been due (the first entry
    /// of its `due` index or the first job in its line, whichever is due first, if that is
    /// due by `now`): a seek or two, however long the queue.
    pub fn waiting_since(&self, folder: &str, now: SystemTime) -> Result<Option<u64>, StoreError> {
        let first = self.first_due_ms(folder_tag(folder))?;
        Ok(first.filter(|due_ms| *due_ms <= to_ms(now)))
    }

    /// When the folder's first claimable job is due, in the `due` index or in line.
    pub(super) fn first_due_ms(&self, tag: FolderTag) -> Result<Option<u64>, StoreError> {
        let first = earlier(
            self.first_entry(tag)?
                .map(|due| Waiting::Due(sled::IVec::default(), due)),
            self.first_in_line(tag)?.as_ref().map(in_line),
        );
        Ok(first.map(|first| first.due_ms()))
    }

    /// When the earliest queued or retry-wait job of any folder becomes claimable.
    pub fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let tags = self.due_folders()?;
        self.next_due_in(&tags)
    }

    /// Makes every retry-wait job of `folders` due now (their remote is back); returns how
    /// many are due now, counting those whose own time passed while the remote was down:
    /// they were held back as well. Not flushed: after a crash the jobs just wait for their
    /// own time. Per folder:
    /// 1. Read the next [`RELEASE_CHUNK`] entries of its `due` group after now (the ones at
    ///    or before now are due already: the folder's queued jobs, a million of them in a
    ///    large backlog, are never read), keeping those of retry-wait jobs, which the
    ///    `attention` tree names, without decoding a job or opening a transaction.
    /// 2. Wake them in one transaction, which reads each job again (a worker or an offer
    ///    may have changed it since step 1).
    /// 3. Go on after the last entry read until the group ends: a woken job's entry moves
    ///    to now, behind the walk, so it is not read twice.
    /// 4. Count the folder's retry-wait jobs, all due now, from its tally.
    pub fn release_waiting(&self, folders: &[String], now: SystemTime) -> Result<u64, StoreError> {
        let now = to_ms(now);
        let mut released = 0;
        for folder in folders {
            let tag = folder_tag(folder);
            let mut after = Bound::Excluded(due_key(tag, now, JobId(u64::MAX)).to_vec());
            loop {
                let (waiting, last) = self.waiting_after(tag, after)?;
                self.wake(&waiting, now)?;
                match last {
                    Some(last) => after = Bound::Excluded(last.to_vec()),
                    None => break,
                }
            }
            released += self.tally(folder)?.counts.retry_wait;
        }
        Ok(released)
    }

    /// Step 1: the retry-wait jobs among the next [`RELEASE_CHUNK`] entries of the folder's
    /// `due` group after `after`, and the last entry read when there may be more.
    fn waiting_after(
        &self,
        tag: FolderTag,
        after: Bound<Vec<u8>>,
    ) -> Result<(Vec<JobId>, Option<sled::IVec>), StoreError> {
        let handles = self.handles();
        let trees = &handles.trees;
        let end = Bound::Included(due_key(tag, u64::MAX, JobId(u64::MAX)).to_vec());
        let mut waiting = Vec::new();
        let mut read = 0;
        let mut last = None;
        for entry in trees.due.range::<Vec<u8>, _>((after, end)).keys() {
            let raw = entry.map_err(|err| self.db_error(err))?;
            if let Some(due) = decode_due_key(&raw)
                && trees
                    .attention
                    .contains_key(keys::job_key(due.id))
                    .map_err(|err| self.db_error(err))?
            {
                waiting.push(due.id);
            }
            read += 1;
            if read == RELEASE_CHUNK {
                last = Some(raw);
                break;
            }
        }
        Ok((waiting, last))
    }

    /// Step 2: moves the next attempt of each of these jobs still waiting to retry to
    /// `now`, if it is later, in one transaction.
    fn wake(&self, ids: &[JobId], now: u64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.transact(|tx| {
            for id in ids {
                let Some(job) = tx.job(*id)? else {
                    continue;
                };
                let JobState::RetryWait { next_attempt_at_ms } = job.state else {
                    continue;
                };
                if next_attempt_at_ms > now {
                    let due = Job {
                        state: JobState::RetryWait {
                            next_attempt_at_ms: now,
                        },
                        ..job.clone()
                    };
                    tx.put_job(Some(&job), &due)?;
                }
            }
            Ok(())
        })
    }

    /// The first `due` entry of a folder, if any.
    fn first_entry(&self, tag: FolderTag) -> Result<Option<DueEntry>, StoreError> {
        for entry in self.handles().trees.due.scan_prefix(tag).keys() {
            let raw = entry.map_err(|err| self.db_error(err))?;
            if let Some(due) = decode_due_key(&raw) {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// The tags of the folders that have queued or retry-wait jobs, in key order: one seek
    /// per folder in the `due` index, and one per line.
    pub fn due_folders(&self) -> Result<Vec<FolderTag>, StoreError> {
        let handles = self.handles();
        let due = &handles.trees.due;
        let mut tags = self.folders_in_line()?;
        let mut from = Some([0u8; 8]);
        while let Some(start) = from {
            let Some(entry) = due.range(start..).keys().next() else {
                break;
            };
            let raw = entry.map_err(|err| self.db_error(err))?;
            let Ok(tag) = <FolderTag>::try_from(&raw[..raw.len().min(8)]) else {
                break;
            };
            tags.push(tag);
            from = next_tag(tag);
        }
        tags.sort_unstable();
        tags.dedup();
        Ok(tags)
    }
}

impl Tx<'_> {
    /// Makes a waiting job active (step 3); `None` when another worker took it meanwhile.
    fn take(&self, waiting: &Waiting, now: u64) -> TxResult<Option<Job>> {
        match waiting {
            Waiting::Due(raw, due) => self.activate(raw, *due, now),
            Waiting::InLine { id, .. } => self.activate_in_line(*id, now),
        }
    }

    /// Takes a due entry and makes its job active (invariants 2 and 6); `None` when the
    /// entry was taken meanwhile or no longer matches its job.
    fn activate(&self, raw: &[u8], due: DueEntry, now: u64) -> TxResult<Option<Job>> {
        if self.due.remove(raw)?.is_none() {
            return Ok(None);
        }
        let Some(job) = self.job(due.id)? else {
            return Ok(None);
        };
        if job.due_entry_ms() != Some(due.due_ms) {
            return Ok(None);
        }
        self.make_active(job, now).map(Some)
    }

    /// Takes a job out of its line and makes it active; `None` when it left the line
    /// meanwhile (claimed, changed or gone).
    fn activate_in_line(&self, id: JobId, now: u64) -> TxResult<Option<Job>> {
        match self.job(id)? {
            Some(job) if job.in_line => self.make_active(job, now).map(Some),
            _ => Ok(None),
        }
    }

    /// The claim itself: the job active, with the fingerprint it is claimed with (6).
    fn make_active(&self, job: Job, now: u64) -> TxResult<Job> {
        let active = marks::claimed(job.clone(), now);
        self.put_job(Some(&job), &active)?;
        Ok(active)
    }
}

/// `folders` in key order, starting with the first one after `after` and wrapping around.
fn in_turn(folders: &[FolderTag], after: Option<FolderTag>) -> Vec<FolderTag> {
    let mut sorted = folders.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let start = after.map_or(0, |after| sorted.partition_point(|tag| *tag <= after));
    let start = start.min(sorted.len());
    sorted.rotate_left(start);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_take_turns_after_the_previous_claim_and_wrap_around() {
        let tags = [[3u8; 8], [1u8; 8], [2u8; 8]];
        assert_eq!(in_turn(&tags, None), vec![[1u8; 8], [2u8; 8], [3u8; 8]]);
        assert_eq!(
            in_turn(&tags, Some([1u8; 8])),
            vec![[2u8; 8], [3u8; 8], [1u8; 8]]
        );
        assert_eq!(
            in_turn(&tags, Some([3u8; 8])),
            vec![[1u8; 8], [2u8; 8], [3u8; 8]]
        );
        // A previous folder no longer eligible: the next one after it in key order.
        assert_eq!(
            in_turn(&[[1u8; 8], [3u8; 8]], Some([2u8; 8])),
            vec![[3u8; 8], [1u8; 8]]
        );
        assert!(in_turn(&[], Some([2u8; 8])).is_empty());
    }
}
