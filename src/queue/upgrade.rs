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
//! So it is already a valid database of format 3, and upgrading it (or the result of the
//! upgrade from 1) only sets the marker, flushed. Opened by an older version, a database
//! of format 3 is refused: that version would never claim the jobs in line.

use super::job::Job;
use super::keys::{decode_job_key, job_key};
use super::{FORMAT_KEY, FORMAT_VERSION, decode_job, encode, is_attempt};
use crate::fingerprint::Fingerprint;

/// The format whose attempts kept their claimed fingerprint in the `claimed` tree.
pub(super) const CLAIMED_TREE_FORMAT: u32 = 1;
const CLAIMED_TREE: &[u8] = b"claimed";

/// Brings a database of format `found` (checked to be between 1 and [`FORMAT_VERSION`]) to
/// the current format (module doc).
pub(super) fn upgrade(db: &sled::Db, found: u32) -> sled::Result<()> {
    if found == CLAIMED_TREE_FORMAT {
        copy_claims_into_jobs(db)?;
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
    if db.tree_names().iter().any(|name| name == CLAIMED_TREE) {
        db.drop_tree(CLAIMED_TREE)?;
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
            jobs.insert(job_key(id), encode(&upgraded))?;
        }
    }
    Ok(())
}
