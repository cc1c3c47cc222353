//! Upgrading a database written in an older layout, at open, before anything reads it.
//!
//! Format 1 kept the fingerprint an attempt was claimed with in a tree of its own
//! (`claimed`: JobId (u64 BE) -> Fingerprint (JSON)), written at every claim and removed
//! at every end of an attempt. Format 2 keeps it in the job record ([`Job::claimed`]),
//! which those transitions rewrite anyway: two writes fewer per upload. Upgrading from 1:
//!
//! 1. each `claimed` entry is copied into its job, if the job is still an attempt and has
//!    none yet (an entry of a job that is gone or no longer an attempt was stale);
//! 2. the copies are flushed, then the format marker is set to 2 and flushed;
//! 3. the `claimed` tree is dropped.
//!
//! A crash before step 2 ends leaves format 1 with some jobs already copied: step 1 skips
//! them, so the upgrade simply runs again at the next open. A crash after it leaves at
//! most an unused tree behind, dropped by the next upgrade-free open as well (step 3 is
//! repeated whenever the tree exists).
//!
//! Format 3 lets the jobs `offer` creates wait in their folder's line instead of in the
//! `due` index (module `line`). A database of format 2 has no job in line: every queued
//! job of it has its `due` entry, and its job ids (plain numbers) are below every line but
//! the one of prefix zero, whose jobs are told apart by [`Job::in_line`], which they lack.
//! So it is already a valid database of format 3. Opened by an older version, a database
//! of a newer format is refused: that version would never claim the jobs in line.
//!
//! Format 4 names each file's job in the file's `ledger` entry (module `record`) instead of
//! a `by_path` tree (`folder \0 rel -> JobId (u64 BE)`). Upgrading from 1, 2 or 3 (after
//! the step from 1 above):
//!
//! 4. each `by_path` entry is written into its file's `ledger` entry, unless that names
//!    the job already;
//! 5. flushed, then the format marker is set to the current format and flushed;
//! 6. the `by_path` tree is dropped.
//!
//! A crash before step 5 ends leaves the old format, and step 4 runs again (an entry
//! already written is skipped); after it, only the unused tree, dropped whenever it exists.
//!
//! Format 5 records the jobs a batch claims from the front of a line as one claim mark
//! per folder (module `marks`) instead of writing each job. A database of format 4 has no
//! mark, so nothing in it is claimed that way: it is a valid database of format 5 as it
//! is, and only its marker changes. Opened by an older version, a database of format 5 is
//! refused: that version would read a job under a mark as waiting in line, and send its
//! bytes again after a crash without first looking whether they had landed.
//!
//! Format 6 writes job records in a binary encoding (module `binary`) and reads them in
//! either, so the jobs of a database of format 5 stay as they are until they are next
//! written, and only its marker changes. Opened by an older version, a database of format
//! 6 is refused: that version could not read the jobs written since.

use super::job::Job;
use super::keys::{decode_job_key, job_key};
use super::record::FileRecord;
use super::{FORMAT_KEY, FORMAT_VERSION, binary, decode_job, is_attempt};
use crate::fingerprint::Fingerprint;

/// The format whose attempts kept their claimed fingerprint in the `claimed` tree.
pub(super) const CLAIMED_TREE_FORMAT: u32 = 1;
const CLAIMED_TREE: &[u8] = b"claimed";
/// The last format that kept each file's job in the `by_path` tree.
const BY_PATH_FORMAT: u32 = 3;
const BY_PATH_TREE: &[u8] = b"by_path";

/// Brings a database of format `found` (checked to be between 1 and [`FORMAT_VERSION`]) to
/// the current format (module doc).
pub(super) fn upgrade(db: &sled::Db, found: u32) -> sled::Result<()> {
    if found == CLAIMED_TREE_FORMAT {
        copy_claims_into_jobs(db)?;
        db.flush()?;
    }
    if found <= BY_PATH_FORMAT {
        move_jobs_into_ledger(db)?;
        db.flush()?;
    }
    if found < FORMAT_VERSION {
        db.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())?;
        db.flush()?;
        tracing::info!(
            from = found,
            to = FORMAT_VERSION,
            "upgraded the state database's format"
        );
    }
    for unused in [CLAIMED_TREE, BY_PATH_TREE] {
        if db.tree_names().iter().any(|name| name == unused) {
            db.drop_tree(unused)?;
        }
    }
    Ok(())
}

/// Step 4: each file's job from `by_path` into the file's `ledger` entry.
fn move_jobs_into_ledger(db: &sled::Db) -> sled::Result<()> {
    let by_path = db.open_tree(BY_PATH_TREE)?;
    let ledger = db.open_tree("ledger")?;
    for entry in by_path.iter() {
        let (raw_key, raw_id) = entry?;
        // What cannot be decoded is left out: recovery indexes every job again.
        let Some(id) = decode_job_key(&raw_id) else {
            continue;
        };
        let current = ledger.get(&raw_key)?;
        let record = current.as_deref().map(FileRecord::split);
        if record.and_then(|record| record.job) == Some(id) {
            continue;
        }
        let upload = record.and_then(|record| record.upload);
        if let Some(raw) = (FileRecord {
            job: Some(id),
            upload,
        })
        .join()
        {
            ledger.insert(&raw_key, raw)?;
        }
    }
    Ok(())
}

/// Step 1: each attempt's claimed fingerprint into its job record.
fn copy_claims_into_jobs(db: &sled::Db) -> sled::Result<()> {
    let claimed = db.open_tree(CLAIMED_TREE)?;
    let jobs = db.open_tree("jobs")?;
    for entry in claimed.iter() {
        let (raw_id, raw) = entry?;
        let Some(id) = decode_job_key(&raw_id) else {
            continue;
        };
        let Some(raw_job) = jobs.get(job_key(id))? else {
            continue;
        };
        // What cannot be decoded is left as it is: the first read of the job reports it.
        let (Ok(job), Ok(fingerprint)) = (
            decode_job(&raw_job, id),
            serde_json::from_slice::<Fingerprint>(&raw),
        ) else {
            continue;
        };
        if is_attempt(&job.state) && job.claimed.is_none() {
            let upgraded = Job {
                claimed: Some(fingerprint),
                ..job
            };
            jobs.insert(job_key(id), binary::encode_job(&upgraded))?;
        }
    }
    Ok(())
}
