//! Tests of the store against a real sled database in a temp dir. Reopening the store
//! (drop, then `Store::open` on the same dir) stands for a daemon restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::disk::{SLED_LOCKED_FILE, UNFINISHED_SNAPSHOT_SUFFIX};
use super::keys::{decode_due_key, decode_job_key, due_key, file_key, job_key};
use super::record::FileRecord;
use super::*;

fn fp(n: u64) -> Fingerprint {
    Fingerprint {
        size: n,
        mtime_ns: i128::from(n) * 1_000,
        inode: n,
        ctime_ns: Some(i128::from(n) * 1_000),
    }
}

fn key(rel: &str) -> FileKey {
    FileKey::new("/data/in", rel)
}

fn open(dir: &Path) -> Store {
    Store::open(dir).expect("a fresh or previously closed state dir opens")
}

fn reopen(store: Store) -> Store {
    let dir = store.state_dir().to_path_buf();
    drop(store);
    open(&dir)
}

/// A restart after the process was killed: the database as a kill leaves it (everything
/// flushed, but not marked as closed cleanly).
fn reopen_after_kill(store: Store) -> Store {
    let dir = store.state_dir().to_path_buf();
    drop(store);
    let db = open_sled(&dir.join(DB_DIR)).expect("the closed database opens");
    assert!(
        db.remove(CLEAN_CLOSE_KEY).expect("removes").is_some(),
        "an orderly close marks the database"
    );
    db.flush().expect("flushes");
    drop(db);
    open(&dir)
}

fn far_future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(365 * 24 * 3600)
}

fn queued_id(offer: Offer) -> JobId {
    match offer {
        Offer::Queued(id) => id,
        other => panic!("expected the offer to queue a job, got {other:?}"),
    }
}

/// Offers `f1` to `f{count}` (fingerprints 1 to `count`) and claims the first alone, as a
/// worker does before it fills a batch: the ids offered, and the job claimed.
fn offer_and_claim_the_first(store: &Store, count: u64) -> (Vec<JobId>, Job) {
    let ids = (1..=count)
        .map(|n| queued_id(store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer")))
        .collect();
    let first = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("a job is due");
    assert_eq!(first.key, key("f1"));
    (ids, first)
}

/// The jobs a worker's batch claims (the first due, then up to `max` more of its folder),
/// with what the completion of each job may take from its claim.
fn claim_batch_as_claimed(store: &Store, max: usize) -> Vec<Claimed> {
    let Some(first) = store.claim(SystemTime::now()).expect("claim works") else {
        return Vec::new();
    };
    let more = store
        .claim_more(&first, SystemTime::now(), max, |_| true)
        .expect("claim_more works");
    let mut batch = vec![Claimed::from(first)];
    batch.extend(more);
    batch
}

/// The completions of a batch's uploads, each of the version its attempt claimed.
fn completed(batch: &[Claimed]) -> Vec<Completed> {
    batch
        .iter()
        .map(|Claimed { job, as_claimed }| Completed {
            id: job.id,
            fingerprint: job.claimed.expect("an attempt has its claimed fingerprint"),
            remote: format!("dir/{}", job.key.rel),
            md5: None,
            as_claimed: as_claimed.clone(),
            target: None,
        })
        .collect()
}

fn job(store: &Store, id: JobId) -> Job {
    store
        .get(id)
        .expect("the store reads")
        .expect("the job is still in the queue")
}

/// Checks invariants 1 to 3, and that exactly the attempts have a claimed fingerprint
/// (6), by scanning every tree.
fn assert_invariants(store: &Store) {
    let handles = store.handles();
    let trees = &handles.trees;
    let jobs = store.jobs().expect("all jobs decode");
    store.load_pointers().expect("the pointers load");
    let kept = store.inner.pointers.all();
    for (raw_key, id) in &kept {
        assert!(
            trees
                .ledger
                .get(raw_key)
                .expect("the ledger reads")
                .is_none(),
            "a pointer kept in memory belongs to a file without a ledger entry"
        );
        let job = jobs
            .iter()
            .find(|job| job.id == *id)
            .expect("every job a pointer kept in memory names exists");
        assert_eq!(file_key(&job.key).expect("valid key"), *raw_key);
    }
    for job in &jobs {
        let raw_key = file_key(&job.key).expect("stored keys are valid");
        let raw = trees.ledger.get(&raw_key).expect("the ledger reads");
        // `kept` is in key order.
        let kept_pointer = kept
            .binary_search_by(|(file, _)| file.cmp(&raw_key))
            .ok()
            .map(|at| kept[at].1);
        assert_eq!(
            kept_pointer.or(raw.as_deref().and_then(|raw| FileRecord::split(raw).job)),
            Some(job.id),
            "the ledger entry of {} (or its pointer kept in memory) must name job {}",
            job.key,
            job.id
        );
        if job.in_line {
            assert_eq!(
                job.state,
                JobState::Queued,
                "job {} in line is queued",
                job.id
            );
            assert_eq!(
                keys::prefix_of(job.id),
                keys::line_prefix(&job.key.folder),
                "job {} in line has an id of its folder's line",
                job.id
            );
        }
        if let Some(due) = job.due_entry_ms() {
            assert!(
                trees
                    .due
                    .contains_key(due_key(folder_tag(&job.key.folder), due, job.id))
                    .expect("due reads"),
                "claimable job {} ({}) must have a due entry at {due}",
                job.id,
                job.state.name()
            );
        }
    }
    for entry in trees.ledger.iter() {
        let (raw_key, raw) = entry.expect("the ledger iterates");
        let record = FileRecord::split(&raw);
        assert!(
            record.job.is_some() || record.upload.is_some(),
            "a ledger entry holds something"
        );
        if let Some(upload) = record.upload {
            decode_ledger(upload, &raw_key).expect("uploads decode");
        }
        let Some(id) = record.job else {
            continue;
        };
        let job = jobs
            .iter()
            .find(|job| job.id == id)
            .expect("every job a ledger entry names exists");
        assert_eq!(file_key(&job.key).expect("valid key"), raw_key.to_vec());
    }
    for entry in trees.due.iter() {
        let (raw, _) = entry.expect("due iterates");
        let entry = decode_due_key(&raw).expect("due keys are 24 bytes");
        let id = entry.id;
        let job = jobs
            .iter()
            .find(|job| job.id == id)
            .expect("every due entry names an existing job");
        assert_eq!(
            job.due_entry_ms(),
            Some(entry.due_ms),
            "due entry of job {id} matches its state {}",
            job.state.name()
        );
        assert_eq!(
            entry.tag,
            folder_tag(&job.key.folder),
            "job {id} is under its folder"
        );
    }
    for job in &jobs {
        assert_eq!(
            job.import.is_some(),
            job.state == JobState::Importing,
            "job {} has an import record exactly while importing",
            job.id
        );
        let attempt = matches!(job.state, JobState::Active | JobState::Finalizing);
        assert_eq!(
            job.claimed.is_some(),
            attempt,
            "job {} ({}) has a claimed fingerprint exactly while it is an attempt",
            job.id,
            job.state.name()
        );
    }
    for entry in trees.progress.iter() {
        let (raw, _) = entry.expect("progress iterates");
        let id = decode_job_key(&raw).expect("progress keys are job ids");
        assert!(
            jobs.iter().any(|job| job.id == id),
            "progress of job {id} belongs to an existing job"
        );
    }
    assert_counted(store);
}

/// Invariant 8: the kept counts and the `attention` index are what walking the trees finds.
fn assert_counted(store: &Store) {
    let drift = store.counts_drift().expect("the counts read");
    assert!(
        drift.tallies.is_empty()
            && drift.attention_stale.is_empty()
            && drift.attention_missing.is_empty(),
        "the kept counts differ from the trees: {drift:?}"
    );
}

/// Invariant 4, for one file: a version not in the ledger has a job.
fn assert_covered(store: &Store, key: &FileKey, current: &Fingerprint) {
    let uploaded = store.is_uploaded(key, current).expect("the ledger reads");
    let has_job = store
        .jobs()
        .expect("jobs read")
        .iter()
        .any(|job| job.key == *key && job.fingerprint == *current);
    assert!(
        uploaded || has_job,
        "{key} at {current:?} is neither uploaded nor queued"
    );
}

#[test]
fn repeated_offers_of_one_version_coalesce_into_one_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer works"));
    for _ in 0..5 {
        assert_eq!(
            store.offer(&key("a.csv"), &fp(1)).expect("offer works"),
            Offer::AlreadyQueued(id)
        );
    }
    assert_eq!(store.jobs().expect("jobs read").len(), 1);
    assert_invariants(&store);
}

#[test]
fn a_new_version_replaces_the_queued_one_instead_of_adding_a_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer works"));
    store
        .save_progress(id, b"session for version 1")
        .expect("progress saves");
    assert_eq!(
        store.offer(&key("a.csv"), &fp(2)).expect("offer works"),
        Offer::Queued(id)
    );
    let jobs = store.jobs().expect("jobs read");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].fingerprint, fp(2));
    assert_eq!(jobs[0].state, JobState::Queued);
    assert_eq!(
        store.load_progress(id).expect("progress reads").as_deref(),
        Some(&b"session for version 1"[..]),
        "kept for the next attempt to give it up on the remote (never to resume it)"
    );
    assert_invariants(&store);
}

#[test]
fn different_files_get_different_jobs() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let a = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer works"));
    let b = queued_id(store.offer(&key("b.csv"), &fp(1)).expect("offer works"));
    let other_folder = FileKey::new("/data/other", "a.csv");
    let c = queued_id(store.offer(&other_folder, &fp(1)).expect("offer works"));
    assert!(a != b && b != c && a != c);
    assert_invariants(&store);
}

#[test]
fn an_uploaded_version_stays_up_to_date_after_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer works"));
    let claimed = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the queued job is due");
    assert_eq!(claimed.id, id);
    assert!(
        store
            .complete(id, &fp(1), "ingest/a.csv", Some("abc123"))
            .expect("complete works")
    );

    let store = reopen(store);
    assert!(store.is_uploaded(&key("a.csv"), &fp(1)).expect("reads"));
    assert!(!store.is_uploaded(&key("a.csv"), &fp(2)).expect("reads"));
    assert_eq!(
        store.offer(&key("a.csv"), &fp(1)).expect("offer works"),
        Offer::UpToDate
    );
    assert!(store.jobs().expect("jobs read").is_empty());
    let entry = store
        .ledger_get(&key("a.csv"))
        .expect("the ledger reads")
        .expect("the upload was recorded");
    assert_eq!(entry.fingerprint, fp(1));
    assert_eq!(entry.remote, "ingest/a.csv");
    assert_eq!(entry.md5.as_deref(), Some("abc123"));
    assert_invariants(&store);
}

/// `fp(n)` as a ledger written before change times were kept recorded it.
fn without_ctime(fingerprint: Fingerprint) -> Fingerprint {
    Fingerprint {
        ctime_ns: None,
        ..fingerprint
    }
}

#[test]
fn only_an_entry_holding_the_same_fingerprint_matches_by_its_bytes() {
    let entry = |fingerprint: Fingerprint| {
        encode(&LedgerEntry {
            fingerprint,
            remote: "ingest/a.csv".into(),
            md5: None,
            uploaded_at_ms: 5,
        })
    };
    assert!(records_exactly(&entry(fp(1)), &fp(1)));
    assert!(!records_exactly(&entry(fp(1)), &fp(2)));
    // A number that is a prefix of the recorded one is another number, also in the last
    // field.
    assert!(!records_exactly(&entry(fp(12)), &fp(1)));
    let later_change = Fingerprint {
        ctime_ns: Some(10_000),
        ..fp(1)
    };
    assert_eq!(fp(1).ctime_ns, Some(1_000));
    assert!(!records_exactly(&entry(later_change), &fp(1)));
    assert!(!records_exactly(&entry(without_ctime(fp(1))), &fp(1)));
    // The longest fingerprint fits the encoding buffer.
    let longest = Fingerprint {
        size: u64::MAX,
        mtime_ns: i128::MIN,
        inode: u64::MAX,
        ctime_ns: Some(i128::MIN),
    };
    assert!(records_exactly(&entry(longest), &longest));

    // An entry encoded otherwise (here with spaces) is decoded instead, and still matches.
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let spaced = String::from_utf8(entry(fp(1)))
        .expect("JSON")
        .replace(':', ": ");
    assert!(!records_exactly(spaced.as_bytes(), &fp(1)));
    let raw_key = file_key(&key("a.csv")).expect("a valid key");
    store
        .handles()
        .trees
        .ledger
        .insert(raw_key, spaced.as_bytes())
        .expect("the ledger writes");
    assert!(store.is_uploaded(&key("a.csv"), &fp(1)).expect("reads"));
    assert!(!store.is_uploaded(&key("a.csv"), &fp(2)).expect("reads"));
}

#[test]
fn the_ledger_lists_by_folder_and_a_forgotten_file_is_queued_again() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let other = FileKey::new("/data/in2", "z.csv");
    for (key, n) in [(key("b.csv"), 2), (key("a/c.csv"), 3), (other.clone(), 4)] {
        assert!(store.record_uploaded(&key, &fp(n), "r", None).unwrap());
    }
    let listed = |folder: Option<&str>| -> Vec<String> {
        store
            .ledger_entries(folder)
            .expect("the ledger reads")
            .into_iter()
            .map(|(key, _)| key.to_string())
            .collect()
    };
    assert_eq!(
        listed(Some("/data/in")),
        vec!["/data/in/a/c.csv", "/data/in/b.csv"]
    );
    assert_eq!(listed(None).len(), 3);
    // `/data/in` is not a prefix of `/data/in2`'s entries.
    assert_eq!(listed(Some("/data/in2")), vec!["/data/in2/z.csv"]);

    assert!(
        store
            .forget(&key("b.csv"), Some(&fp(2)))
            .expect("forget works")
    );
    assert!(!store.is_uploaded(&key("b.csv"), &fp(2)).unwrap());
    let jobs = store.jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (&jobs[0].key, jobs[0].state.clone()),
        (&key("b.csv"), JobState::Queued)
    );
    // A file that is gone leaves no job; a file never uploaded drops nothing.
    assert!(store.forget(&other, None).unwrap());
    assert!(!store.forget(&key("never.csv"), None).unwrap());
    assert_eq!(store.jobs().unwrap().len(), 1);
    assert_eq!(listed(None), vec!["/data/in/a/c.csv"]);
    assert_invariants(&store);
}

#[test]
fn a_job_survives_a_restart_in_every_state() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let queued = queued_id(store.offer(&key("queued"), &fp(1)).expect("offer"));
    let active = queued_id(store.offer(&key("active"), &fp(2)).expect("offer"));
    let finalizing = queued_id(store.offer(&key("finalizing"), &fp(3)).expect("offer"));
    let waiting = queued_id(store.offer(&key("waiting"), &fp(4)).expect("offer"));
    let failed = queued_id(store.offer(&key("failed"), &fp(5)).expect("offer"));
    // Claim all but the queued one: claims go in due order, so claim four and requeue
    // whichever of them is `queued`.
    let mut claimed = Vec::new();
    while let Some(job) = store.claim(SystemTime::now()).expect("claim works") {
        claimed.push(job.id);
    }
    assert_eq!(claimed.len(), 5);
    store.requeue(queued).expect("requeue works");
    store.mark_finalizing(finalizing).expect("mark works");
    let at = far_future();
    store
        .retry_later(waiting, at, "HTTP 503 from the remote")
        .expect("retry_later works");
    store
        .fail(failed, "HTTP 403: the token may not write to this table")
        .expect("fail works");
    let before: Vec<Job> = store.jobs().expect("jobs read");

    let store = reopen(store);
    assert_eq!(store.jobs().expect("jobs read"), before);
    assert_eq!(job(&store, queued).state, JobState::Queued);
    assert_eq!(job(&store, active).state, JobState::Active);
    assert_eq!(job(&store, finalizing).state, JobState::Finalizing);
    assert_eq!(
        job(&store, waiting).state,
        JobState::RetryWait {
            next_attempt_at_ms: to_ms(at)
        }
    );
    assert!(matches!(
        job(&store, failed).state,
        JobState::Failed { ref reason, .. } if reason == "HTTP 403: the token may not write to this table"
    ));
    assert_invariants(&store);
}

#[test]
fn progress_survives_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("big.bin"), &fp(9)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store
        .save_progress(id, br#"{"session":"s1","offset":262144}"#)
        .expect("progress saves");
    store
        .save_progress(id, br#"{"session":"s1","offset":524288}"#)
        .expect("progress saves");

    let store = reopen(store);
    assert_eq!(
        store.load_progress(id).expect("progress reads").as_deref(),
        Some(&br#"{"session":"s1","offset":524288}"#[..])
    );
    assert_eq!(store.recover_after_restart().expect("recovery works"), 1);
    assert!(
        store.load_progress(id).expect("progress reads").is_some(),
        "recovery keeps the progress of an interrupted upload"
    );
    store.clear_progress(id).expect("clear works");
    assert_eq!(store.load_progress(id).expect("progress reads"), None);
    assert_invariants(&store);
}

#[test]
fn a_batch_is_marked_finalizing_in_one_transaction_with_one_flush() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids: Vec<JobId> = ["a.png", "b.png", "c.png"]
        .iter()
        .map(|name| queued_id(store.offer(&key(name), &fp(1)).expect("offer")))
        .collect();
    let first = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("a job is due");
    store
        .claim_more(&first, SystemTime::now(), 2, |_| true)
        .expect("claim works");
    let flushes = store.flushes();
    store.mark_finalizing_many(&ids).expect("mark works");
    assert_eq!(store.flushes() - flushes, 1);
    let store = reopen(store);
    for id in ids {
        let marked = job(&store, id);
        assert_eq!(marked.state, JobState::Finalizing);
        assert!(marked.finalize_started);
    }
    assert_invariants(&store);
}

#[test]
fn finalizing_survives_a_restart_and_recovery_keeps_finalize_started() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"parts=3").expect("progress saves");
    store.mark_finalizing(id).expect("mark works");
    assert!(job(&store, id).finalize_started);

    let store = reopen(store);
    assert_eq!(job(&store, id).state, JobState::Finalizing);
    assert_eq!(store.recover_after_restart().expect("recovery works"), 1);
    let recovered = job(&store, id);
    assert_eq!(recovered.state, JobState::Queued);
    assert!(recovered.finalize_started);
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"parts=3"[..])
    );
    assert_invariants(&store);

    let claimed = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the recovered job is due");
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.state, JobState::Active);
    assert!(
        claimed.finalize_started,
        "the worker must reconcile before finalizing again"
    );
}

#[test]
fn recovery_requeues_active_jobs_and_counts_them() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let a = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    let b = queued_id(store.offer(&key("b"), &fp(2)).expect("offer"));
    queued_id(store.offer(&key("c"), &fp(3)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.claim(SystemTime::now()).expect("claim works");

    let store = reopen(store);
    assert_eq!(store.recover_after_restart().expect("recovery works"), 2);
    for id in [a, b] {
        let job = job(&store, id);
        assert_eq!(job.state, JobState::Queued);
        assert!(!job.finalize_started);
    }
    assert_eq!(store.recover_after_restart().expect("recovery works"), 0);
    assert_invariants(&store);
}

#[test]
fn recovery_restores_lost_index_entries_and_removes_dangling_ones() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    // Out of its line, so that it waits in the `due` index.
    store.claim(SystemTime::now()).expect("claim works");
    store.requeue(id).expect("requeues");
    let handles = store.handles();
    let trees = &handles.trees;
    let due = job(&store, id)
        .due_entry_ms()
        .expect("a requeued job has a due entry");
    let tag = folder_tag("/data/in");
    trees
        .due
        .remove(due_key(tag, due, id))
        .expect("removing works");
    // Its file's entry no longer names it (it held nothing else).
    trees
        .ledger
        .remove(file_key(&key("a")).expect("valid key"))
        .expect("removing works");
    trees
        .due
        .insert(due_key(tag, 5, JobId(999_999)), &[])
        .expect("inserting works");
    trees
        .progress
        .insert(job_key(JobId(999_999)), &b"orphan"[..])
        .expect("inserting works");
    let ghost = FileRecord {
        job: Some(JobId(999_999)),
        upload: None,
    };
    trees
        .ledger
        .insert(
            file_key(&key("ghost")).expect("valid key"),
            ghost.join().expect("holds a job"),
        )
        .expect("inserting works");
    assert!(
        store.claim(far_future()).expect("claim works").is_none(),
        "without its due entry the job cannot be claimed; the dangling entry is skipped"
    );
    drop(handles);
    // Damage like this comes with a stop that was not clean, after which recovery walks
    // the ledger (a clean close vouches for it).
    let store = reopen_after_kill(store);

    assert_eq!(store.recover_after_restart().expect("recovery works"), 0);
    assert_invariants(&store);
    assert_eq!(
        store.load_progress(JobId(999_999)).expect("reads"),
        None,
        "progress of a job that is gone is removed"
    );
    assert_eq!(
        store.offer(&key("a"), &fp(1)).expect("offer"),
        Offer::AlreadyQueued(id)
    );
    let claimed = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the restored due entry makes the job claimable");
    assert_eq!(claimed.id, id);
}

#[test]
fn complete_with_a_moved_fingerprint_requeues_the_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"session").expect("progress saves");
    store.mark_finalizing(id).expect("mark works");
    // The file changes while it is being finalized.
    assert_eq!(
        store.offer(&key("a.csv"), &fp(2)).expect("offer"),
        Offer::Queued(id)
    );
    let active = job(&store, id);
    assert_eq!(
        active.state,
        JobState::Finalizing,
        "an active job only takes the new fingerprint"
    );
    assert_eq!(active.fingerprint, fp(2));
    assert_covered(&store, &key("a.csv"), &fp(2));

    assert!(
        !store
            .complete(id, &fp(1), "ingest/a.csv", None)
            .expect("complete works")
    );
    let requeued = job(&store, id);
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!(requeued.fingerprint, fp(2));
    assert_eq!(requeued.attempts, 0);
    assert!(!requeued.finalize_started);
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert!(
        store.is_uploaded(&key("a.csv"), &fp(1)).expect("reads"),
        "the ledger records the version that reached the remote"
    );
    assert_covered(&store, &key("a.csv"), &fp(2));
    assert_invariants(&store);

    let again = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the requeued job is due");
    assert_eq!(again.id, id);
    assert!(
        store
            .complete(id, &fp(2), "ingest/a.csv", None)
            .expect("complete works")
    );
    assert!(store.get(id).expect("reads").is_none());
    assert_covered(&store, &key("a.csv"), &fp(2));
    assert_invariants(&store);
}

/// An upload recorded for another target than the folder's recorded one (the folder was
/// given another target while it was in flight) leaves no ledger entry: the job is queued
/// afresh, and its upload to the folder's target is recorded. A folder with no record and
/// a completion naming no target record as before.
#[test]
fn a_completion_for_another_target_than_the_folders_queues_the_file_again() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a.csv"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"session").expect("progress saves");
    store
        .set_folder_target("/data/in", "kifs\0new")
        .expect("the target records");
    let for_target = |target: &str| Completed {
        id,
        fingerprint: fp(1),
        remote: "old/a.csv".into(),
        md5: None,
        as_claimed: None,
        target: Some(target.into()),
    };
    let done = store.complete_many(&[for_target("kifs\0old")]);
    assert_eq!(done.expect("complete works"), [Completion::Retargeted]);
    assert_eq!(store.ledger_get(&key("a.csv")).expect("reads"), None);
    let requeued = job(&store, id);
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert_covered(&store, &key("a.csv"), &fp(1));
    assert_invariants(&store);

    store.claim(SystemTime::now()).expect("claim works");
    let done = store.complete_many(&[for_target("kifs\0new")]);
    assert_eq!(done.expect("complete works"), [Completion::Recorded]);
    assert!(store.is_uploaded(&key("a.csv"), &fp(1)).expect("reads"));
    assert_invariants(&store);

    let other = FileKey::new("/data/unrecorded", "b.csv");
    let id = queued_id(store.offer(&other, &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    let unrecorded = Completed {
        id,
        fingerprint: fp(2),
        ..for_target("kifs\0any")
    };
    assert_eq!(
        store.complete_many(&[unrecorded]).expect("works"),
        [Completion::Recorded]
    );
    assert_invariants(&store);
}

#[test]
fn a_failed_job_keeps_the_kind_of_its_failure_and_an_older_record_reads_without_one() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let a = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store
        .fail_as(a, "HTTP 401: token expired", Some("auth"))
        .expect("fail works");
    let store = reopen(store);
    assert!(matches!(
        job(&store, a).state,
        JobState::Failed { kind: Some(ref kind), .. } if kind == "auth"
    ));
    let older = r#"{"state":"failed","reason":"HTTP 401","failed_at_ms":5}"#;
    let state: JobState = serde_json::from_str(older).expect("a record without a kind reads");
    assert!(matches!(state, JobState::Failed { kind: None, .. }));
    assert_invariants(&store);
}

#[test]
fn a_failed_job_carries_its_reason_and_retry_all_requeues_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let a = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    let b = queued_id(store.offer(&key("b"), &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(a, b"partial").expect("progress saves");
    store
        .fail(a, "KiFS rejects the character '|' in the name")
        .expect("fail works");
    store
        .fail(b, "HTTP 401: token expired")
        .expect("fail works");

    let failed = job(&store, a);
    match &failed.state {
        JobState::Failed {
            reason,
            failed_at_ms,
            ..
        } => {
            assert_eq!(reason, "KiFS rejects the character '|' in the name");
            assert!(*failed_at_ms > 0);
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert_eq!(failed.attempts, 1, "the attempt that failed counts");
    assert_eq!(store.load_progress(a).expect("reads"), None);
    assert!(
        store.claim(far_future()).expect("claim works").is_none(),
        "failed jobs never spin"
    );
    assert_eq!(
        store.offer(&key("a"), &fp(1)).expect("offer"),
        Offer::AlreadyQueued(a),
        "offering the same version again does not retry a failed job"
    );
    assert_covered(&store, &key("a"), &fp(1));

    assert_eq!(
        store
            .retry_failed(&RetrySelection::All)
            .expect("retry works"),
        2
    );
    let retried = job(&store, a);
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(retried.attempts, 0);
    assert_eq!(
        retried.last_error.as_deref(),
        Some("KiFS rejects the character '|' in the name"),
        "status can still show what went wrong last time"
    );
    assert_eq!(
        store
            .retry_failed(&RetrySelection::All)
            .expect("retry works"),
        0
    );
    assert_invariants(&store);
}

#[test]
fn retry_by_path_requeues_only_the_named_failed_files() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let nested = queued_id(store.offer(&key("sub/x.csv"), &fp(1)).expect("offer"));
    let other = queued_id(store.offer(&key("y.csv"), &fp(2)).expect("offer"));
    for _ in 0..2 {
        store.claim(SystemTime::now()).expect("claim works");
    }
    store.fail(nested, "bad").expect("fail works");
    store.fail(other, "bad").expect("fail works");

    let selection = RetrySelection::Paths(vec![
        PathBuf::from("/data/in/sub/x.csv"),
        PathBuf::from("/data/in/not-failed.csv"),
    ]);
    assert_eq!(store.retry_failed(&selection).expect("retry works"), 1);
    assert_eq!(job(&store, nested).state, JobState::Queued);
    assert!(matches!(job(&store, other).state, JobState::Failed { .. }));
    assert_invariants(&store);
}

#[test]
fn a_new_version_of_a_failed_file_is_queued_afresh() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.fail(id, "HTTP 400").expect("fail works");
    assert_eq!(
        store.offer(&key("a"), &fp(2)).expect("offer"),
        Offer::Queued(id)
    );
    let job = job(&store, id);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.last_error, None);
    assert_invariants(&store);
}

#[test]
fn offering_an_uploaded_version_removes_its_failed_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let first = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store
        .complete(first, &fp(1), "r", None)
        .expect("complete works");
    let second = queued_id(store.offer(&key("a"), &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.fail(second, "HTTP 400").expect("fail works");
    // The file is back at the uploaded version (e.g. restored from a backup with its mtime).
    assert_eq!(
        store.offer(&key("a"), &fp(1)).expect("offer"),
        Offer::UpToDate
    );
    assert!(store.get(second).expect("reads").is_none());
    assert_invariants(&store);
}

#[test]
fn offers_made_together_in_one_batch_coalesce_and_skip_uploaded_versions_like_single_offers() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    // "up": uploaded at version 1. "failed": uploaded at 1, then version 2 failed.
    // "queued": queued at version 1, with a session saved for it.
    let up = queued_id(store.offer(&key("up"), &fp(1)).expect("offer"));
    let failed = queued_id(store.offer(&key("failed"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.claim(SystemTime::now()).expect("claim works");
    store
        .complete(up, &fp(1), "r", None)
        .expect("complete works");
    store
        .complete(failed, &fp(1), "r", None)
        .expect("complete works");
    let failed = queued_id(store.offer(&key("failed"), &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.fail(failed, "HTTP 400").expect("fail works");
    let queued = queued_id(store.offer(&key("queued"), &fp(1)).expect("offer"));
    store
        .save_progress(queued, b"session for version 1")
        .expect("progress saves");

    let offers = store
        .offer_many(&[
            (key("up"), fp(1)),
            (key("up"), fp(3)),
            (key("failed"), fp(1)),
            (key("queued"), fp(1)),
            (key("queued"), fp(4)),
            (key("new"), fp(5)),
            (key("new"), fp(5)),
            (key("new"), fp(6)),
        ])
        .expect("offer_many works");

    assert_eq!(
        offers[0],
        Offer::UpToDate,
        "the uploaded version is skipped"
    );
    let up_again = queued_id(offers[1].clone());
    assert_eq!(
        offers[2],
        Offer::UpToDate,
        "back at the uploaded version: the failed job goes"
    );
    assert!(store.get(failed).expect("reads").is_none());
    assert_eq!(offers[3], Offer::AlreadyQueued(queued));
    assert_eq!(
        offers[4],
        Offer::Queued(queued),
        "a new version takes the job"
    );
    assert_eq!(
        store
            .load_progress(queued)
            .expect("progress reads")
            .as_deref(),
        Some(&b"session for version 1"[..]),
        "kept for the next attempt to give it up on the remote (never to resume it)"
    );
    let new = queued_id(offers[5].clone());
    assert_eq!(
        offers[6],
        Offer::AlreadyQueued(new),
        "a repeat within the batch sees the job the batch made"
    );
    assert_eq!(
        offers[7],
        Offer::Queued(new),
        "and a later version updates it"
    );
    let jobs = store.jobs().expect("jobs read");
    assert_eq!(jobs.len(), 3, "one job per file: {jobs:?}");
    assert_eq!(job(&store, up_again).fingerprint, fp(3));
    assert_eq!(job(&store, queued).fingerprint, fp(4));
    assert_eq!(job(&store, new).fingerprint, fp(6));
    for (rel, current) in [
        ("up", fp(3)),
        ("failed", fp(1)),
        ("queued", fp(4)),
        ("new", fp(6)),
    ] {
        assert_covered(&store, &key(rel), &current);
    }
    assert_invariants(&store);
}

#[test]
fn a_batch_with_an_unstorable_path_changes_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let err = store
        .offer_many(&[(key("fine"), fp(1)), (key("bad\0name"), fp(1))])
        .unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");
    assert!(store.jobs().expect("jobs read").is_empty());
    assert_invariants(&store);
}

#[test]
fn claim_never_returns_the_same_job_twice() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 0..20 {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(job) = store.claim(SystemTime::now()).expect("claim works") {
        assert_eq!(job.state, JobState::Active);
        assert!(seen.insert(job.id), "job {} was claimed twice", job.id);
    }
    assert_eq!(seen.len(), 20);
    assert!(store.claim(far_future()).expect("claim works").is_none());
    assert_eq!(store.next_due().expect("reads"), None);
    assert_invariants(&store);
}

#[test]
fn two_threads_claiming_at_once_never_share_a_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let total = 300;
    for n in 0..total {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    let now = SystemTime::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(job) = store.claim(now).expect("claim works") {
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<JobId> = workers
        .into_iter()
        .flat_map(|worker| worker.join().expect("the worker thread does not panic"))
        .collect();
    assert_eq!(all.len() as u64, total);
    all.sort();
    all.dedup();
    assert_eq!(
        all.len() as u64,
        total,
        "some job was claimed by both threads"
    );
    assert_invariants(&store);
}

#[test]
fn retry_wait_jobs_become_claimable_at_their_time_and_not_before() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"offset=8MiB").expect("saves");
    let at = SystemTime::now() + Duration::from_secs(600);
    store
        .retry_later(id, at, "remote unavailable (HTTP 503)")
        .expect("retry_later works");

    let waiting = job(&store, id);
    assert_eq!(waiting.attempts, 1);
    assert_eq!(
        waiting.last_error.as_deref(),
        Some("remote unavailable (HTTP 503)")
    );
    assert_eq!(store.next_due().expect("reads"), Some(from_ms(to_ms(at))));
    assert!(
        store
            .claim(at - Duration::from_millis(1))
            .expect("claim works")
            .is_none()
    );
    let store = reopen(store);
    let claimed = store
        .claim(at)
        .expect("claim works")
        .expect("the job is due at its time");
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"offset=8MiB"[..]),
        "a retry resumes the same session"
    );
    assert_invariants(&store);
}

#[test]
fn claims_go_in_due_order_and_next_due_reports_the_earliest() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    assert_eq!(store.next_due().expect("reads"), None);
    let later = queued_id(store.offer(&key("later"), &fp(1)).expect("offer"));
    let sooner = queued_id(store.offer(&key("sooner"), &fp(2)).expect("offer"));
    for _ in 0..2 {
        store.claim(SystemTime::now()).expect("claim works");
    }
    let base = SystemTime::now() + Duration::from_secs(60);
    store
        .retry_later(later, base + Duration::from_secs(30), "503")
        .expect("works");
    store.retry_later(sooner, base, "503").expect("works");
    assert_eq!(store.next_due().expect("reads"), Some(from_ms(to_ms(base))));
    let order: Vec<JobId> = std::iter::from_fn(|| store.claim(far_future()).expect("claims"))
        .map(|job| job.id)
        .collect();
    assert_eq!(order, vec![sooner, later]);
}

#[test]
fn new_jobs_wait_in_line_without_a_due_entry_and_are_claimed_in_the_order_they_came() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids: Vec<JobId> = ["c", "a", "b"]
        .iter()
        .map(|rel| queued_id(store.offer(&key(rel), &fp(1)).expect("offer")))
        .collect();
    assert!(ids.iter().all(|&id| job(&store, id).in_line));
    assert!(
        store.handles().trees.due.is_empty(),
        "jobs in line have no due entry"
    );
    assert_invariants(&store);
    let order: Vec<Job> =
        std::iter::from_fn(|| store.claim(SystemTime::now()).expect("claims")).collect();
    assert_eq!(order.iter().map(|job| job.id).collect::<Vec<_>>(), ids);
    assert!(
        order
            .iter()
            .all(|job| !job.in_line && job.state == JobState::Active)
    );
    assert_invariants(&store);
}

#[test]
fn a_job_changed_in_line_leaves_it_for_the_due_index_behind_the_others() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let first = queued_id(store.offer(&key("first"), &fp(1)).expect("offer"));
    let second = queued_id(store.offer(&key("second"), &fp(1)).expect("offer"));
    std::thread::sleep(Duration::from_millis(2));
    // A new version is queued afresh, as before lines: due now, behind `second`.
    store.offer(&key("first"), &fp(2)).expect("offer");
    let moved = job(&store, first);
    assert!(!moved.in_line);
    assert!(moved.due_entry_ms().is_some());
    assert_invariants(&store);
    let order: Vec<JobId> = std::iter::from_fn(|| store.claim(SystemTime::now()).expect("claims"))
        .map(|job| job.id)
        .collect();
    assert_eq!(order, vec![second, first]);
    // Queued again, it waits in the `due` index too, never in line.
    store.requeue(second).expect("requeues");
    assert!(!job(&store, second).in_line);
    assert_invariants(&store);
}

#[test]
fn a_job_in_line_written_as_queued_at_another_time_leaves_the_line_for_the_due_index() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    let in_line = job(&store, id);
    assert!(in_line.in_line);
    // Written as it is, it keeps its place.
    store
        .transact(|tx| tx.put_job(Some(&in_line), &in_line))
        .expect("writes");
    assert!(job(&store, id).in_line);
    let later = Job {
        updated_at_ms: in_line.updated_at_ms + 1_000,
        ..in_line.clone()
    };
    store
        .transact(|tx| tx.put_job(Some(&in_line), &later))
        .expect("writes");
    let moved = job(&store, id);
    assert!(
        !moved.in_line,
        "its place in line is no longer its due time"
    );
    assert_eq!(moved.due_entry_ms(), Some(later.updated_at_ms));
    assert_invariants(&store);
}

#[test]
fn a_batch_takes_jobs_from_the_due_index_and_the_line_in_due_order() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let early = queued_id(store.offer(&key("early"), &fp(1)).expect("offer"));
    let later = queued_id(store.offer(&key("later"), &fp(2)).expect("offer"));
    while store.claim(SystemTime::now()).expect("claims").is_some() {}
    let fresh = queued_id(store.offer(&key("fresh"), &fp(3)).expect("offer"));
    std::thread::sleep(Duration::from_millis(2));
    // Queued again after `fresh` was: due after it.
    store.requeue(later).expect("requeues");
    let epoch = SystemTime::UNIX_EPOCH;
    store
        .retry_later(early, epoch + Duration::from_secs(1), "503")
        .expect("waits");
    let first = store
        .claim(SystemTime::now())
        .expect("claims")
        .expect("a job is due");
    assert_eq!(first.id, early);
    let mut offered = Vec::new();
    let batch = store
        .claim_more(&first, SystemTime::now(), 10, |job| {
            offered.push(job.id);
            true
        })
        .expect("claims");
    assert_eq!(offered, vec![fresh, later]);
    assert_eq!(
        batch
            .iter()
            .map(|claimed| claimed.job.id)
            .collect::<Vec<_>>(),
        vec![fresh, later]
    );
    assert_invariants(&store);
}

#[test]
fn a_claim_reads_past_the_jobs_that_left_the_line_once() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids: Vec<JobId> = (0..5)
        .map(|n| queued_id(store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer")))
        .collect();
    let prefix = keys::line_prefix("/data/in");
    for _ in 0..3 {
        store.claim(SystemTime::now()).expect("claims");
    }
    // The next claim starts at the first job still in line, not at the claimed ones.
    assert_eq!(
        store
            .first_in_line(folder_tag("/data/in"))
            .expect("reads")
            .map(|job| job.id),
        Some(ids[3])
    );
    assert_eq!(store.inner.lines.start(prefix), ids[3]);
    while store.claim(SystemTime::now()).expect("claims").is_some() {}
    assert!(store.inner.lines.start(prefix) > ids[4]);
    assert_invariants(&store);
}

#[test]
fn a_batch_claimed_under_the_mark_moves_the_line_start_past_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let (ids, first) = offer_and_claim_the_first(&store, 5);
    let batch = store
        .claim_more(&first, SystemTime::now(), 100, |_| true)
        .expect("claims more");
    assert_eq!(batch.len(), 4);
    // No walk has read past them since: the batch itself moved the start.
    assert!(store.inner.lines.start(keys::line_prefix("/data/in")) > ids[4]);
    assert_invariants(&store);
}

/// Two folders whose tags share their first bytes share a line: a batch of one folder
/// moves the start past its jobs, but never past a job of the other one still in line.
#[test]
fn a_batch_never_moves_the_line_start_past_another_folders_job_in_line() {
    let (a, b) = ("/data/s5475", "/data/s6206");
    let prefix = keys::line_prefix(a);
    assert_eq!(prefix, keys::line_prefix(b), "the two folders share a line");
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let offer = |folder: &str, rel: &str, n: u64| {
        queued_id(
            store
                .offer(&FileKey::new(folder, rel), &fp(n))
                .expect("offer"),
        )
    };
    offer(a, "a1", 1);
    let b1 = offer(b, "b1", 2);
    offer(a, "a2", 3);
    let a3 = offer(a, "a3", 4);
    let first = store
        .claim_next(SystemTime::now(), &[folder_tag(a)], None)
        .expect("claims")
        .expect("a job of a is due")
        .0;
    let batch = store
        .claim_more(&first, SystemTime::now(), 100, |_| true)
        .expect("claims more");
    let claimed: Vec<&str> = batch.iter().map(|c| c.job.key.rel.as_str()).collect();
    assert_eq!(claimed, ["a2", "a3"]);
    assert!(b1 < a3);
    assert_eq!(store.inner.lines.start(prefix), b1);
    let next = store
        .claim_next(SystemTime::now(), &[folder_tag(b)], None)
        .expect("claims")
        .expect("b's job is still in line");
    assert_eq!(next.0.id, b1);
    assert_invariants(&store);
}

#[test]
fn a_new_version_of_a_waiting_file_is_due_now_with_fresh_attempts() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"old session").expect("saves");
    store
        .retry_later(id, far_future(), "503")
        .expect("retry_later works");
    assert_eq!(
        store.offer(&key("a"), &fp(2)).expect("offer"),
        Offer::Queued(id)
    );
    let job = job(&store, id);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"old session"[..]),
        "kept for the next attempt to give it up on the remote"
    );
    assert!(store.claim(SystemTime::now()).expect("claims").is_some());
    assert_invariants(&store);
}

#[test]
fn requeue_starts_over_without_progress() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claim works");
    store.save_progress(id, b"session").expect("saves");
    store.mark_finalizing(id).expect("marks");
    store.requeue(id).expect("requeue works");
    let job = job(&store, id);
    assert_eq!(job.state, JobState::Queued);
    assert!(!job.finalize_started);
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert_invariants(&store);
}

#[test]
fn drop_job_removes_every_trace_and_later_calls_say_the_job_is_gone() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.save_progress(id, b"session").expect("saves");
    store.drop_job(id).expect("drop works");
    store
        .drop_job(id)
        .expect("dropping a dropped job is harmless");
    assert!(store.get(id).expect("reads").is_none());
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert!(store.claim(far_future()).expect("claims").is_none());
    assert_invariants(&store);

    let err = store
        .save_progress(id, b"late")
        .expect_err("no progress for a job that is gone");
    assert!(
        matches!(err, StoreError::NoSuchJob(gone) if gone == id),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("job {id}")), "{err}");
    assert!(store.complete(id, &fp(1), "r", None).is_err());
    assert!(store.fail(id, "x").is_err());
    assert!(store.mark_finalizing(id).is_err());
    assert_invariants(&store);

    assert!(
        matches!(store.offer(&key("a"), &fp(1)).expect("offer"), Offer::Queued(new) if new != id),
        "the file coming back makes a new job"
    );
}

#[test]
fn a_path_with_nul_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let err = store
        .offer(&key("a\0b"), &fp(1))
        .expect_err("NUL cannot be in a path");
    assert!(err.to_string().contains("NUL"), "{err}");
}

#[test]
fn counts_report_each_state_and_uploaded_files_per_folder() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let other = |rel: &str| FileKey::new("/data/other", rel);
    let done = queued_id(store.offer(&key("done"), &fp(1)).expect("offer"));
    let active = queued_id(store.offer(&key("active"), &fp(2)).expect("offer"));
    let finalizing = queued_id(store.offer(&key("finalizing"), &fp(3)).expect("offer"));
    let waiting = queued_id(store.offer(&key("waiting"), &fp(4)).expect("offer"));
    let failed = queued_id(store.offer(&other("failed"), &fp(5)).expect("offer"));
    let other_done = queued_id(store.offer(&other("done"), &fp(6)).expect("offer"));
    while store.claim(SystemTime::now()).expect("claims").is_some() {}
    store.complete(done, &fp(1), "r", None).expect("completes");
    store
        .complete(other_done, &fp(6), "r", None)
        .expect("completes");
    store.mark_finalizing(finalizing).expect("marks");
    store
        .retry_later(waiting, far_future(), "503")
        .expect("waits");
    store.fail(failed, "400").expect("fails");
    store.offer(&key("queued"), &fp(7)).expect("offer");
    store.offer(&other("queued"), &fp(8)).expect("offer");
    assert_eq!(job(&store, active).state, JobState::Active);

    let counts = store.counts().expect("counts work");
    assert_eq!(
        counts.get("/data/in"),
        Some(&FolderCounts {
            queued: 1,
            active: 1,
            finalizing: 1,
            importing: 0,
            retry_wait: 1,
            failed: 0,
            done: 1,
            ..FolderCounts::default()
        })
    );
    assert_eq!(
        counts.get("/data/other"),
        Some(&FolderCounts {
            queued: 1,
            failed: 1,
            done: 1,
            ..FolderCounts::default()
        })
    );
    assert_eq!(counts.len(), 2);
    // One folder's tally, read alone, is the same; a folder without any counts zero.
    let tallies = store.tallies().expect("reads");
    for folder in ["/data/in", "/data/other"] {
        assert_eq!(store.tally(folder).expect("reads"), tallies[folder]);
    }
    assert_eq!(store.tally("/data/i").expect("reads"), Tally::default());
    assert_invariants(&store);
    let attention: Vec<JobId> = store
        .jobs_needing_attention()
        .expect("reads")
        .iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(attention, [waiting, failed]);
    assert!(store.last_uploads().expect("reads")["/data/in"] > 0);
}

#[test]
fn drifted_counts_are_repaired_by_the_check_at_a_start_after_a_kill() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let done = queued_id(store.offer(&key("done"), &fp(1)).expect("offer"));
    let failed = queued_id(store.offer(&key("failed"), &fp(2)).expect("offer"));
    store.offer(&key("queued"), &fp(3)).expect("offer");
    store.claim(far_future()).expect("claims");
    store.claim(far_future()).expect("claims");
    store.complete(done, &fp(1), "r", None).expect("completes");
    store.fail(failed, "400").expect("fails");
    let right = store.tallies().expect("reads");
    assert_eq!(
        store.check_counts().expect("checks"),
        0,
        "nothing to repair"
    );

    // A counter off by a thousand, a folder that does not exist, a failed job missing from
    // the attention index and a stale entry in it.
    let handles = store.handles();
    let trees = &handles.trees;
    let mut wrong = right["/data/in"].clone();
    wrong.counts.queued += 1000;
    wrong.counts.done = 0;
    trees
        .counts
        .insert("/data/in", encode(&wrong))
        .expect("writes");
    let never_uploaded = Tally {
        last_upload_ms: 0,
        ..wrong.clone()
    };
    trees
        .counts
        .insert("/data/gone", encode(&never_uploaded))
        .expect("writes");
    trees.attention.remove(job_key(failed)).expect("writes");
    trees.attention.insert(job_key(done), &[]).expect("writes");
    drop(handles);
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1001);

    let store = reopen_after_kill(store);
    store.recover_after_restart().expect("recovers");
    assert_eq!(store.tallies().expect("reads"), right);
    let attention: Vec<JobId> = store
        .jobs_needing_attention()
        .expect("reads")
        .iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(attention, [failed]);
    assert_invariants(&store);
}

/// Offers one file, and sets the folder's queued count off by a thousand, as drift would.
fn drift_the_queued_count(store: &Store) {
    store.offer(&key("queued"), &fp(1)).expect("offer");
    let mut wrong = store.tallies().expect("reads")["/data/in"].clone();
    wrong.counts.queued += 1000;
    store
        .handles()
        .trees
        .counts
        .insert("/data/in", encode(&wrong))
        .expect("writes");
}

#[test]
fn a_start_after_an_orderly_close_does_not_walk_the_trees_to_check_the_counts() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    drift_the_queued_count(&store);

    // The drift stands for a count the walk would find wrong: a start that does not walk
    // keeps it.
    let store = reopen(store);
    store.recover_after_restart().expect("recovers");
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1001);
    let store = reopen(store);
    store.recover_after_restart().expect("recovers");
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1001);

    let store = reopen_after_kill(store);
    store.recover_after_restart().expect("recovers");
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1);
}

#[test]
fn a_process_that_only_reads_a_cleanly_closed_database_writes_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    store.offer(&key("queued"), &fp(1)).expect("offer");
    let store = reopen(store);
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1);
    store.jobs_needing_attention().expect("reads");
    assert_eq!(store.flushes(), 0, "nothing was flushed");
    // The first change unmarks the database, durably, before it is made.
    store.offer(&key("another"), &fp(2)).expect("offer");
    assert_eq!(store.flushes(), 1, "the marker's removal was flushed");
    let store = reopen_after_kill(store);
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 2);
}

#[test]
fn a_process_that_opens_a_killed_database_without_checking_leaves_the_check_to_the_next_start() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    drift_the_queued_count(&store);
    let store = reopen_after_kill(store);
    // Read (as `upsync status` of a stopped daemon does) and closed, without a check.
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1001);

    let store = reopen(store);
    store.recover_after_restart().expect("recovers");
    assert_eq!(store.counts().expect("reads")["/data/in"].queued, 1);
}

/// Rewrites a closed database as format 1 kept it: each attempt's claimed fingerprint in
/// the `claimed` tree instead of its job record, plus a stale entry of a job long gone.
fn rewrite_as_format_1(dir: &Path) {
    let db = open_sled(&dir.join(DB_DIR)).expect("the closed database opens");
    move_jobs_to_by_path(&db, |id| id);
    let jobs = db.open_tree("jobs").expect("opens");
    let claimed = db.open_tree("claimed").expect("opens");
    for entry in jobs.iter() {
        let (raw_id, raw) = entry.expect("reads");
        let id = decode_job_key(&raw_id).expect("job keys are ids");
        let job = decode_job(&raw, id).expect("decodes");
        if let Some(fingerprint) = job.claimed {
            claimed
                .insert(&raw_id, encode(&fingerprint))
                .expect("writes");
            let old = Job {
                claimed: None,
                ..job
            };
            jobs.insert(&raw_id, encode(&old)).expect("writes");
        }
    }
    claimed
        .insert(job_key(JobId(999_999)), encode(&fp(9)))
        .expect("writes");
    db.insert(FORMAT_KEY, "1").expect("writes");
    db.flush().expect("flushes");
}

#[test]
fn a_database_of_format_1_is_upgraded_at_open_and_its_attempts_know_what_they_claimed() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let changed = queued_id(store.offer(&key("changed"), &fp(1)).expect("offer"));
    let steady = queued_id(store.offer(&key("steady"), &fp(2)).expect("offer"));
    store.claim(far_future()).expect("claims");
    store.claim(far_future()).expect("claims");
    // A new version of one file arrives during its attempt.
    store.offer(&key("changed"), &fp(3)).expect("offer");
    drop(store);
    rewrite_as_format_1(dir.path());

    let store = open(dir.path());
    assert_upgraded(&store, b"claimed");
    assert_eq!(job(&store, changed).claimed, Some(fp(1)));
    assert_eq!(job(&store, steady).claimed, Some(fp(2)));
    assert_invariants(&store);
    // The attempt at the old bytes of `changed` fails: the new version is queued instead.
    store.fail(changed, "400").expect("fails");
    assert_eq!(job(&store, changed).state, JobState::Queued);
    store.fail(steady, "400").expect("fails");
    assert!(matches!(job(&store, steady).state, JobState::Failed { .. }));
    assert_invariants(&store);
}

/// Moves each file's job out of its `ledger` entry into a `by_path` tree, as formats 1 to
/// 3 kept them, the id changed by `rename`.
fn move_jobs_to_by_path(db: &sled::Db, rename: impl Fn(JobId) -> JobId) {
    let ledger = db.open_tree("ledger").expect("opens");
    let by_path = db.open_tree("by_path").expect("opens");
    for entry in ledger.iter() {
        let (raw_key, raw) = entry.expect("reads");
        let record = FileRecord::split(&raw);
        let Some(id) = record.job else {
            continue;
        };
        by_path
            .insert(&raw_key, &job_key(rename(id)))
            .expect("writes");
        match (FileRecord {
            job: None,
            ..record
        })
        .join()
        {
            Some(plain) => ledger.insert(&raw_key, plain),
            None => ledger.remove(&raw_key),
        }
        .expect("writes");
    }
}

/// Rewrites a closed database as format 2 kept it: plain job ids, every queued job in
/// the `due` index (none in line), each file's job in `by_path`.
fn rewrite_as_format_2(dir: &Path) {
    let db = open_sled(&dir.join(DB_DIR)).expect("the closed database opens");
    move_jobs_to_by_path(&db, |id| JobId(id.0 & ((1 << 40) - 1)));
    let jobs = db.open_tree("jobs").expect("opens");
    let due = db.open_tree("due").expect("opens");
    for entry in jobs.iter() {
        let (raw_id, raw) = entry.expect("reads");
        let id = decode_job_key(&raw_id).expect("job keys are ids");
        let job = decode_job(&raw, id).expect("decodes");
        assert!(job.in_line, "only queued jobs are rewritten");
        let old = Job {
            id: JobId(id.0 & ((1 << 40) - 1)),
            in_line: false,
            ..job
        };
        jobs.remove(&raw_id).expect("writes");
        jobs.insert(job_key(old.id), encode(&old)).expect("writes");
        let at = old.due_ms().expect("queued");
        due.insert(due_key(folder_tag(&old.key.folder), at, old.id), &[])
            .expect("writes");
    }
    db.insert(FORMAT_KEY, "2").expect("writes");
    db.flush().expect("flushes");
}

#[test]
fn a_database_of_format_2_is_upgraded_at_open_and_its_queued_jobs_are_claimed_before_new_ones() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for rel in ["a", "b"] {
        store.offer(&key(rel), &fp(1)).expect("offer");
    }
    drop(store);
    rewrite_as_format_2(dir.path());

    let store = open(dir.path());
    assert_upgraded(&store, b"by_path");
    assert_invariants(&store);
    store.recover_after_restart().expect("recovers");
    let new = queued_id(store.offer(&key("new"), &fp(2)).expect("offer"));
    assert!(job(&store, new).in_line);
    let order: Vec<Job> =
        std::iter::from_fn(|| store.claim(SystemTime::now()).expect("claims")).collect();
    let names: Vec<&str> = order.iter().map(|job| job.key.rel.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "new"]);
    assert!(order[0].id.0 < 1 << 40, "old jobs keep their ids");
    assert_invariants(&store);
}

/// Rewrites a closed database as format 5 kept it: every job record in JSON. Returns how
/// many records it rewrote.
fn rewrite_as_format_5(dir: &Path) -> usize {
    let db = open_sled(&dir.join(DB_DIR)).expect("the closed database opens");
    let jobs = db.open_tree("jobs").expect("opens");
    let mut rewritten = 0;
    for entry in jobs.iter() {
        let (raw_id, raw) = entry.expect("reads");
        let id = decode_job_key(&raw_id).expect("job keys are ids");
        let job = decode_job(&raw, id).expect("decodes");
        jobs.insert(&raw_id, encode(&job)).expect("writes");
        rewritten += 1;
    }
    db.insert(FORMAT_KEY, "5").expect("writes");
    db.flush().expect("flushes");
    rewritten
}

/// Whether the stored record of job `id` is in the binary encoding (module `binary`).
fn stored_binary(store: &Store, id: JobId) -> bool {
    let raw = store.handles().trees.jobs.get(job_key(id)).expect("reads");
    binary::is_binary(&raw.expect("the job is stored"))
}

#[test]
fn a_database_of_format_5_reads_its_json_jobs_and_writes_binary_ones() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let waiting = queued_id(store.offer(&key("waiting"), &fp(1)).expect("offer"));
    let failing = queued_id(store.offer(&key("failing"), &fp(2)).expect("offer"));
    assert!(stored_binary(&store, waiting));
    drop(store);
    assert_eq!(rewrite_as_format_5(dir.path()), 2);

    let store = open(dir.path());
    assert_upgraded(&store, b"by_path");
    assert!(
        !stored_binary(&store, waiting) && !stored_binary(&store, failing),
        "the upgrade leaves the records as they are"
    );
    assert_invariants(&store);
    assert_eq!(job(&store, waiting).fingerprint, fp(1));

    let claimed = store.claim(far_future()).expect("claims").expect("due");
    assert_eq!(claimed.id, waiting);
    assert!(stored_binary(&store, waiting), "the claim wrote it");
    assert!(
        !stored_binary(&store, failing),
        "a job nothing wrote stays JSON"
    );
    store
        .complete(waiting, &fp(1), "r/waiting", None)
        .expect("completes");
    store.claim(far_future()).expect("claims").expect("due");
    store.fail(failing, "HTTP 400").expect("fails");
    assert!(stored_binary(&store, failing));
    assert!(matches!(
        job(&store, failing).state,
        JobState::Failed { .. }
    ));
    assert_invariants(&store);
}

#[test]
fn a_database_from_before_the_counts_is_counted_when_opened() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let done = queued_id(store.offer(&key("done"), &fp(1)).expect("offer"));
    store.claim(far_future()).expect("claims");
    store.complete(done, &fp(1), "r", None).expect("completes");
    let waiting = queued_id(store.offer(&key("waiting"), &fp(2)).expect("offer"));
    store.claim(far_future()).expect("claims");
    store
        .retry_later(waiting, far_future(), "503")
        .expect("waits");
    store.offer(&key("queued"), &fp(3)).expect("offer");
    let right = store.tallies().expect("reads");
    // What an older version left: the same jobs and ledger, without counts or marker.
    store.handles().trees.counts.clear().expect("clears");
    store.handles().trees.attention.clear().expect("clears");
    store
        .handles()
        .db
        .remove(counts::COUNTS_KEY)
        .expect("removes");
    assert!(store.counts().expect("reads").is_empty());

    let store = reopen(store);
    assert_eq!(store.tallies().expect("reads"), right);
    assert_eq!(
        store.jobs_needing_attention().expect("reads")[0].id,
        waiting
    );
    assert_invariants(&store);
}

#[test]
fn waiting_since_is_the_first_due_entry_of_the_folder() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let now = SystemTime::now();
    assert_eq!(store.waiting_since("/data/in", now).expect("reads"), None);
    let first = queued_id(store.offer(&key("first"), &fp(1)).expect("offer"));
    let queued_at = job(&store, first).updated_at_ms;
    std::thread::sleep(Duration::from_millis(5));
    store.offer(&key("second"), &fp(2)).expect("offer");
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(
        store.waiting_since("/data/in", later).expect("reads"),
        Some(queued_at)
    );
    assert_eq!(
        store.waiting_since("/data/other", later).expect("reads"),
        None
    );
    // Claimed, the first leaves the queue: the second is the one waiting now.
    let claimed = store.claim(later).expect("claims").expect("a job is due");
    assert_eq!(claimed.id, first);
    assert!(store.waiting_since("/data/in", later).expect("reads") > Some(queued_at));
    // A retry that is not due yet is not waiting for a worker.
    store.claim(later).expect("claims").expect("a job is due");
    store
        .retry_later(first, far_future(), "503")
        .expect("waits");
    assert_eq!(store.waiting_since("/data/in", later).expect("reads"), None);
}

#[test]
fn a_second_store_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let state_dir = dir.path().join("state");
    let store = open(&state_dir);
    let err = Store::open(&state_dir).expect_err("the first store holds the lock");
    assert_eq!(
        err.to_string(),
        format!(
            "another upsync is already running with state_dir {} (lock held on {})",
            state_dir.display(),
            state_dir.join("upsync.lock").display()
        )
    );
    let clone = store.clone();
    drop(store);
    assert!(
        Store::open(&state_dir).is_err(),
        "a clone keeps the lock while it lives"
    );
    drop(clone);
    open(&state_dir);
}

#[test]
fn open_creates_a_missing_state_dir() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let state_dir = dir.path().join("a/b/state");
    open(&state_dir);
    assert!(state_dir.join("db").is_dir());
    assert!(state_dir.join("upsync.lock").is_file());
}

#[test]
fn a_corrupt_database_gives_an_error_naming_it_and_what_to_do() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 0..50 {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    drop(store);
    let db_dir = dir.path().join("db");
    scribble_over_db(&db_dir, false);
    let err = Store::open(dir.path()).expect_err("garbage is not a database");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains(&db_dir.display().to_string()), "{text}");
    assert!(text.contains("move the directory away"), "{text}");
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    store
        .handles()
        .db
        .insert(FORMAT_KEY, &b"7"[..])
        .expect("writing works");
    drop(store);
    let err = Store::open(dir.path()).expect_err("version 7 is unknown");
    assert!(matches!(err, StoreError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("\"7\""), "{err}");
}

#[test]
fn a_sled_database_of_another_program_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    {
        let db = sled::open(dir.path().join("db")).expect("sled opens a new db");
        db.insert(b"someone", &b"else"[..]).expect("writing works");
        db.flush().expect("flushing works");
    }
    let err = Store::open(dir.path()).expect_err("the database is not upsync's");
    assert!(err.to_string().contains("no upsync format marker"), "{err}");
}

#[test]
fn a_corrupt_job_record_names_the_tree_and_key() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store
        .handles()
        .trees
        .jobs
        .insert(job_key(id), &b"{not json"[..])
        .expect("writing works");
    let err = store.get(id).expect_err("the record is garbage");
    let text = err.to_string();
    assert!(text.contains("tree `jobs`"), "{text}");
    assert!(text.contains(&format!("job {id}")), "{text}");
    let err = store
        .offer(&key("a"), &fp(2))
        .expect_err("offer reads the job");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn debug_output_shows_only_the_state_dir() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let text = format!("{store:?}");
    assert!(text.starts_with("Store { state_dir: "), "{text}");
}

/// Overwrites the files of the sled database (all, or all but its `conf`) with garbage.
fn scribble_over_db(db_dir: &Path, keep_conf: bool) {
    for entry in walkdir::WalkDir::new(db_dir) {
        let entry = entry.expect("the db dir is readable");
        if entry.file_type().is_file() && !(keep_conf && entry.file_name() == "conf") {
            let len = entry.metadata().expect("stat works").len().max(64);
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(entry.path(), garbage).expect("the db file is writable");
        }
    }
}

#[test]
fn a_garbage_data_file_is_refused_rather_than_read_as_an_empty_queue() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 0..50 {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    drop(store);
    scribble_over_db(&dir.path().join("db"), true);
    let err = Store::open(dir.path()).expect_err("the queue was lost with the data file");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains("move the directory away"), "{text}");
}

#[test]
fn an_existing_database_that_reads_as_empty_is_refused() {
    // What sled makes of some corrupt data files: a valid, empty database.
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    drop(sled::open(dir.path().join("db")).expect("sled creates an empty db"));
    let err = Store::open(dir.path()).expect_err("an upsync database always has its marker");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains("no upsync format marker"), "{text}");
}

#[test]
fn a_half_created_database_left_by_a_crash_is_replaced() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    std::fs::create_dir_all(dir.path().join("db.new/blobs")).expect("mkdir works");
    std::fs::write(dir.path().join("db.new/db"), b"torn").expect("write works");
    let store = open(dir.path());
    assert!(!dir.path().join("db.new").exists());
    store
        .offer(&key("a"), &fp(1))
        .expect("the new database works");
    let store = reopen(store);
    assert_eq!(store.jobs().expect("jobs read").len(), 1);
}

/// Claims the job for `a` (fingerprint 1), saves progress, then offers version 2 of the file
/// as the watcher would while the upload runs.
fn attempt_overtaken_by_a_new_version(store: &Store) -> JobId {
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store
        .save_progress(id, b"session holding bytes of version 1")
        .expect("saves");
    assert_eq!(
        store.offer(&key("a"), &fp(2)).expect("offer"),
        Offer::Queued(id)
    );
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"session holding bytes of version 1"[..]),
        "the running attempt keeps its session until it ends"
    );
    id
}

#[test]
fn a_retry_after_the_file_changed_starts_the_new_version_afresh_keeping_the_old_upload_to_give_up()
{
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = attempt_overtaken_by_a_new_version(&store);
    store
        .retry_later(id, far_future(), "HTTP 503")
        .expect("retry_later works");
    let job = job(&store, id);
    assert_eq!(job.state, JobState::Queued, "the new version is due now");
    assert_eq!(job.fingerprint, fp(2));
    assert_eq!(job.attempts, 0);
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"session holding bytes of version 1"[..]),
        "kept for the next attempt to give it up on the remote (never to resume it)"
    );
    assert_invariants(&store);
}

#[test]
fn a_failure_of_an_old_version_queues_the_new_version_instead() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = attempt_overtaken_by_a_new_version(&store);
    store
        .fail(id, "HTTP 400: bad header row")
        .expect("fail works");
    let job = job(&store, id);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.fingerprint, fp(2));
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert_covered(&store, &key("a"), &fp(2));
    assert_invariants(&store);

    // The new version fails on its own account: now it stays failed.
    store.claim(SystemTime::now()).expect("claims");
    store
        .fail(id, "HTTP 400: bad header row")
        .expect("fail works");
    assert!(matches!(
        store.get(id).expect("reads").expect("kept").state,
        JobState::Failed { .. }
    ));
    assert_invariants(&store);
}

#[test]
fn recovery_keeps_the_old_version_s_upload_of_an_attempt_whose_file_changed_to_give_up() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let moved = attempt_overtaken_by_a_new_version(&store);
    let steady = queued_id(store.offer(&key("b"), &fp(7)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store.save_progress(steady, b"b's session").expect("saves");

    let store = reopen(store);
    assert_eq!(store.recover_after_restart().expect("recovery works"), 2);
    assert_eq!(
        store.load_progress(moved).expect("reads").as_deref(),
        Some(&b"session holding bytes of version 1"[..]),
        "kept for the next attempt to give it up on the remote (never to resume it)"
    );
    assert_eq!(job(&store, moved).unconfirmed_attempt_ms, None);
    assert_eq!(
        store.load_progress(steady).expect("reads").as_deref(),
        Some(&b"b's session"[..])
    );
    assert_eq!(job(&store, moved).fingerprint, fp(2));
    assert_invariants(&store);
}

#[test]
fn a_failure_that_keeps_its_upload_hands_it_to_the_attempt_after_a_retry_or_a_vanished_file() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let mut ids = Vec::new();
    for rel in ["retried", "gone"] {
        let id = queued_id(store.offer(&key(rel), &fp(1)).expect("offer"));
        store.claim(SystemTime::now()).expect("claims");
        store.save_progress(id, b"session").expect("saves");
        store
            .fail_keeping_upload(id, "its folder is no longer in the configuration", None)
            .expect("fails");
        assert!(matches!(job(&store, id).state, JobState::Failed { .. }));
        assert_eq!(
            store.load_progress(id).expect("reads").as_deref(),
            Some(&b"session"[..]),
            "{rel}: kept with the failed job"
        );
        ids.push(id);
    }
    assert_invariants(&store);

    let retried = RetrySelection::Paths(vec![key("retried").path()]);
    assert_eq!(store.retry_failed(&retried).expect("retries"), 1);
    // A worker finds the file gone and gives the upload up before it drops the job.
    assert_eq!(store.drop_vanished(&key("gone")).expect("drops"), None);

    for id in ids {
        assert_eq!(job(&store, id).state, JobState::Queued);
        assert_eq!(
            store.load_progress(id).expect("reads").as_deref(),
            Some(&b"session"[..])
        );
    }
    assert_invariants(&store);
}

#[test]
fn a_snapshot_sled_never_finished_is_removed_and_the_database_opens_with_its_contents() {
    // A full disk (or a kill) while sled wrote a snapshot leaves `snap.<lsn>.generating`,
    // often empty; sled 0.34 would read it as the newest snapshot, and fail, at every open.
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let file = key("kept.csv");
    assert!(
        store
            .record_uploaded(&file, &fp(7), "ingest/kept.csv", None)
            .expect("records")
    );
    drop(store);
    let unfinished = dir.path().join(DB_DIR).join(format!(
        "snap.{:016X}{UNFINISHED_SNAPSHOT_SUFFIX}",
        u64::MAX
    ));
    std::fs::write(&unfinished, b"").expect("write works");

    let store = Store::open(dir.path()).expect("the database opens despite the leftover");
    assert!(!unfinished.exists(), "the unfinished snapshot is removed");
    let entry = store
        .ledger_get(&file)
        .expect("reads")
        .expect("the upload is kept");
    assert_eq!(entry.fingerprint, fp(7));
}

#[test]
fn opening_waits_for_a_sled_lock_this_process_is_still_releasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let lingering = sled::Config::new().path(&path).open().unwrap();
    assert!(
        lock::is_held(&path.join(SLED_LOCKED_FILE)).unwrap(),
        "the first instance holds sled's lock"
    );
    assert!(
        sled::Config::new().path(&path).open().is_err(),
        "a second instance cannot open it meanwhile"
    );
    let released = Arc::new(AtomicBool::new(false));
    let releaser = {
        let released = Arc::clone(&released);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // Set first: opening can only succeed after the drop, so it must see this.
            released.store(true, Ordering::SeqCst);
            drop(lingering);
        })
    };
    let db = open_sled(&path).expect("the lock is released within the wait");
    assert!(
        released.load(Ordering::SeqCst),
        "opening waited for the lock to be released"
    );
    drop(db);
    releaser.join().unwrap();
}

/// The batch's transaction reuses the walk's decoding of a job only while the job's
/// stored bytes are unchanged: a new version offered between the walk and the claim takes
/// the job out of line, and the batch must not claim it with the old fingerprint.
#[test]
fn a_batch_does_not_claim_a_job_whose_new_version_came_after_the_walk_read_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let (_, first) = offer_and_claim_the_first(&store, 4);
    // `accept` runs after the walk read the candidates and before the claim's transaction.
    let mut changed = None;
    let batch = store
        .claim_more(&first, SystemTime::now(), 100, |job| {
            if job.key == key("f3") {
                changed = Some(queued_id(store.offer(&key("f3"), &fp(30)).expect("offer")));
            }
            true
        })
        .expect("claim_more works");
    let claimed: Vec<&str> = batch.iter().map(|c| c.job.key.rel.as_str()).collect();
    assert_eq!(claimed, ["f2", "f4"]);
    let changed = job(&store, changed.expect("the walk handed f3 over"));
    assert_eq!(changed.key, key("f3"));
    assert_eq!(changed.state, JobState::Queued);
    assert_eq!(changed.fingerprint, fp(30));
    assert_invariants(&store);
}

#[test]
fn claim_more_takes_due_jobs_the_caller_accepts_in_one_transaction() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let (_, first) = offer_and_claim_the_first(&store, 10);
    // Accept only even sizes, and at most 12 bytes in all: 2 + 4 + 6, then 8 is too much.
    let mut bytes = 0;
    let batch = store
        .claim_more(&first, SystemTime::now(), 100, |job| {
            let size = job.fingerprint.size;
            let fits = size % 2 == 0 && bytes + size <= 12;
            if fits {
                bytes += size;
            }
            fits
        })
        .expect("claim_more works");
    let sizes: Vec<u64> = batch.iter().map(|c| c.job.fingerprint.size).collect();
    assert_eq!(sizes, vec![2, 4, 6]);
    assert!(batch.iter().all(|c| c.job.state == JobState::Active));
    assert!(batch.iter().all(|c| c.job.id != first.id));
    let capped = store
        .claim_more(&first, SystemTime::now(), 2, |_| true)
        .expect("claim_more works");
    assert_eq!(capped.len(), 2, "at most `max` jobs");
    assert!(
        store
            .claim_more(&first, far_future(), 100, |job| job.id == first.id)
            .expect("claim_more works")
            .is_empty(),
        "an active job is not claimable again"
    );
    assert_invariants(&store);
}

#[test]
fn a_batch_claim_waits_for_the_one_running_instead_of_walking_its_jobs() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let (_, first) = offer_and_claim_the_first(&store, 20);
    let (started, start) = std::sync::mpsc::channel();
    let (saw, seen) = std::sync::mpsc::channel();
    let (store, first) = (&store, &first);
    let (one, other) = std::thread::scope(|scope| {
        let one = scope.spawn(move || {
            let mut offered = Vec::new();
            store
                .claim_more(first, SystemTime::now(), 100, |job| {
                    if offered.is_empty() {
                        started.send(()).expect("the other claim listens");
                        // The other claim would hand over a job now if it walked the line
                        // while this one runs.
                        let walked_meanwhile = seen.recv_timeout(Duration::from_millis(500));
                        assert!(
                            walked_meanwhile.is_err(),
                            "the other claim walked meanwhile"
                        );
                    }
                    offered.push(job.id);
                    true
                })
                .expect("claim_more works");
            offered
        });
        let other = scope.spawn(move || {
            start.recv().expect("the first claim started");
            let mut offered = Vec::new();
            store
                .claim_more(first, SystemTime::now(), 100, |job| {
                    let _ = saw.send(());
                    offered.push(job.id);
                    true
                })
                .expect("claim_more works");
            offered
        });
        (
            one.join().expect("the first claim ends"),
            other.join().expect("the other claim ends"),
        )
    });
    assert_eq!(one.len(), 19, "the first claim took every job but `first`");
    assert!(
        other.is_empty(),
        "nothing was left for the other: {other:?}"
    );
    assert_invariants(store);
}

#[test]
fn complete_many_records_every_upload_and_requeues_files_that_moved_on() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 1..=3 {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    let mut claimed = Vec::new();
    while let Some(job) = store.claim(SystemTime::now()).expect("claim works") {
        claimed.push(job);
    }
    // f3 gets a new version while its upload of the old one is in flight.
    store.offer(&key("f3"), &fp(33)).expect("offer");
    let flushes = store.flushes();
    let completed: Vec<Completed> = claimed
        .iter()
        .map(|job| Completed {
            id: job.id,
            fingerprint: job.fingerprint,
            remote: format!("dir/{}", job.key.rel),
            md5: None,
            as_claimed: None,
            target: None,
        })
        .collect();
    let done = store
        .complete_many(&completed)
        .expect("complete_many works");
    assert_eq!(
        store.flushes(),
        flushes + 1,
        "one flush for the whole batch"
    );
    let by_rel: std::collections::HashMap<_, _> = claimed
        .iter()
        .zip(&done)
        .map(|(job, done)| (job.key.rel.clone(), done.ended()))
        .collect();
    assert!(by_rel["f1"] && by_rel["f2"], "f1 and f2 ended: {by_rel:?}");
    assert!(!by_rel["f3"], "f3 moved on and is queued again");
    for n in 1..=3 {
        let entry = store
            .ledger_get(&key(&format!("f{n}")))
            .expect("ledger reads")
            .expect("every upload is in the ledger");
        assert_eq!(entry.fingerprint, fp(n));
        assert_eq!(entry.remote, format!("dir/f{n}"));
    }
    let remaining = store.jobs().expect("jobs read");
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].fingerprint, fp(33));
    assert_eq!(remaining[0].state, JobState::Queued);
    let reopened = reopen(store);
    assert!(reopened.is_uploaded(&key("f1"), &fp(1)).expect("reads"));
    assert_invariants(&reopened);
}

#[test]
fn a_rebuild_moves_a_corrupt_database_aside_and_starts_empty() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 0..10 {
        store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer");
    }
    drop(store);
    scribble_over_db(&dir.path().join("db"), false);
    let (store, moved) = Store::open_rebuilding(dir.path()).expect("a rebuild opens anew");
    let moved = moved.expect("the old database existed");
    assert!(
        moved.is_dir(),
        "the old database is kept at {}",
        moved.display()
    );
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.moved-")
    );
    assert!(store.jobs().expect("jobs read").is_empty());
    assert_invariants(&store);
    let err = Store::open_rebuilding(dir.path()).expect_err("the store holds the lock");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn a_rebuilt_ledger_entry_makes_the_file_up_to_date_but_never_overrides_a_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let (store, moved) = Store::open_rebuilding(dir.path()).expect("a new dir opens");
    assert!(moved.is_none());
    assert!(
        store
            .record_uploaded(&key("a"), &fp(1), "dir/a", None)
            .expect("ledger write")
    );
    assert_eq!(
        store.offer(&key("a"), &fp(1)).expect("offer"),
        Offer::UpToDate
    );
    let id = queued_id(store.offer(&key("b"), &fp(2)).expect("offer"));
    assert!(
        !store
            .record_uploaded(&key("b"), &fp(2), "dir/b", Some("abc"))
            .expect("ledger read")
    );
    assert_eq!(job(&store, id).state, JobState::Queued);
    let store = reopen(store);
    assert!(store.is_uploaded(&key("a"), &fp(1)).expect("ledger read"));
    assert!(!store.is_uploaded(&key("b"), &fp(2)).expect("ledger read"));
    assert_invariants(&store);
}

// ---- fair claiming across folders --------------------------------------------------

fn in_folder(folder: &str, rel: &str) -> FileKey {
    FileKey::new(folder, rel)
}

#[test]
fn a_backlog_in_one_folder_does_not_hold_back_another_folders_jobs() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for n in 0..50 {
        store
            .offer(&in_folder("/big", &format!("f{n}")), &fp(n + 1))
            .expect("offer");
    }
    for n in 0..2 {
        store
            .offer(&in_folder("/small", &format!("s{n}")), &fp(100 + n))
            .expect("offer");
    }
    let folders = [folder_tag("/big"), folder_tag("/small")];
    let mut after = None;
    let mut order = Vec::new();
    for _ in 0..5 {
        let (job, tag) = store
            .claim_next(SystemTime::now(), &folders, after)
            .expect("claim works")
            .expect("jobs are due");
        after = Some(tag);
        order.push(job.key.folder);
    }
    // The folders take turns while both have due jobs, whichever comes first in key order.
    assert_ne!(order[0], order[1], "{order:?}");
    assert_eq!(order[0], order[2], "{order:?}");
    assert_eq!(order[1], order[3], "{order:?}");
    assert_eq!(
        order.iter().filter(|f| *f == "/small").count(),
        2,
        "{order:?}"
    );
    // A folder left out of the claim (its remote is down) keeps its jobs.
    store
        .offer(&in_folder("/small", "s2"), &fp(200))
        .expect("offer");
    let only_big = [folder_tag("/big")];
    while let Some((job, _)) = store
        .claim_next(SystemTime::now(), &only_big, None)
        .expect("claim works")
    {
        assert_eq!(job.key.folder, "/big");
    }
    assert_eq!(store.counts().expect("counts")["/small"].queued, 1);
    assert_invariants(&store);
}

#[test]
fn next_due_in_looks_only_at_the_given_folders() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let waiting = queued_id(store.offer(&in_folder("/a", "x"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    let at = SystemTime::now() + Duration::from_secs(3600);
    store.retry_later(waiting, at, "HTTP 503").expect("waits");
    store.offer(&in_folder("/b", "y"), &fp(2)).expect("offer");
    let a_due = store
        .next_due_in(&[folder_tag("/a")])
        .expect("reads")
        .expect("a has a job");
    assert_eq!(to_ms(a_due), to_ms(at));
    let b_due = store.next_due().expect("reads").expect("b has a job");
    assert!(b_due <= SystemTime::now());
    assert_eq!(store.next_due_in(&[folder_tag("/c")]).expect("reads"), None);
}

#[test]
fn a_remote_coming_back_makes_its_folders_waiting_jobs_due_now_and_no_others() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let later = far_future();
    let mut ids = Vec::new();
    for (folder, rel) in [("/down", "a"), ("/down", "b"), ("/up", "c")] {
        let id = queued_id(
            store
                .offer(&in_folder(folder, rel), &fp(ids.len() as u64 + 1))
                .expect("offer"),
        );
        store.claim(SystemTime::now()).expect("claims");
        store
            .retry_later(id, later, "connection refused")
            .expect("waits");
        ids.push(id);
    }
    assert!(store.claim(SystemTime::now()).expect("claims").is_none());
    let released = store
        .release_waiting(&["/down".to_string()], SystemTime::now())
        .expect("release works");
    assert_eq!(released, 2);
    assert_invariants(&store);
    let mut claimed = Vec::new();
    while let Some(job) = store.claim(SystemTime::now()).expect("claims") {
        claimed.push(job.id);
    }
    claimed.sort();
    assert_eq!(claimed, vec![ids[0], ids[1]]);
    assert!(matches!(
        job(&store, ids[2]).state,
        JobState::RetryWait { .. }
    ));
    assert_eq!(
        store
            .release_waiting(&["/down".to_string()], SystemTime::now())
            .expect("release works"),
        0,
        "nothing left to release"
    );
}

#[test]
fn a_remote_coming_back_counts_the_waiting_jobs_whose_time_passed_while_it_was_down() {
    // A short outage: the first job retry (5 s) falls due before the remote is back, and
    // the job still waited for it, as the later one did.
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let back_at = SystemTime::now();
    let retry_at = [back_at - Duration::from_secs(2), far_future()];
    let mut ids = Vec::new();
    for rel in ["overdue", "later"] {
        let id = queued_id(
            store
                .offer(&in_folder("/down", rel), &fp(ids.len() as u64 + 1))
                .expect("offer"),
        );
        ids.push(id);
    }
    for _ in &ids {
        store
            .claim(SystemTime::now())
            .expect("claims")
            .expect("a job");
    }
    for (id, at) in ids.iter().zip(retry_at) {
        store
            .retry_later(*id, at, "connection refused")
            .expect("waits");
    }
    let queued = queued_id(
        store
            .offer(&in_folder("/down", "new"), &fp(9))
            .expect("offer"),
    );
    let released = store
        .release_waiting(&["/down".to_string()], back_at)
        .expect("release works");
    assert_eq!(
        released, 2,
        "both waiting jobs are due now; the queued one never waited"
    );
    assert_invariants(&store);
    for id in ids {
        assert!(matches!(
            job(&store, id).state,
            JobState::RetryWait { next_attempt_at_ms } if next_attempt_at_ms <= to_ms(back_at)
        ));
    }
    assert!(!matches!(
        job(&store, queued).state,
        JobState::RetryWait { .. }
    ));
}

#[test]
fn due_entries_of_the_older_layout_are_rebuilt_at_recovery() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    let handles = store.handles();
    let trees = &handles.trees;
    trees.due.clear().expect("clears");
    let mut old = [0u8; 16];
    old[..8].copy_from_slice(&5u64.to_be_bytes());
    old[8..].copy_from_slice(&id.0.to_be_bytes());
    trees.due.insert(old, &[]).expect("inserts");
    store.recover_after_restart().expect("recovery works");
    assert_invariants(&store);
    assert_eq!(
        store
            .claim(SystemTime::now())
            .expect("claims")
            .map(|job| job.id),
        Some(id)
    );
}

// ---- importing ---------------------------------------------------------------------

fn import_of(version: Fingerprint) -> Import {
    Import {
        remote: "/tables/t/uploads/1".into(),
        target: "o.d:next.t".into(),
        fingerprint: version,
        md5: "9e107d9d372bb6826bd81d3542a419d6".into(),
        posted_at_ms: 1_000,
        transfer_ms: 20,
        failed: None,
    }
}

/// Offers `a` version 1, claims it, marks it finalizing with saved progress, then importing.
fn importing_job(store: &Store) -> JobId {
    let id = queued_id(store.offer(&key("a"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store.save_progress(id, b"session").expect("saves");
    store.mark_finalizing(id).expect("finalizing");
    store
        .mark_importing(id, import_of(fp(1)))
        .expect("importing");
    id
}

#[test]
fn an_importing_job_holds_no_worker_and_survives_a_restart_untouched() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = importing_job(&store);
    assert_invariants(&store);
    assert_eq!(
        store.load_progress(id).expect("reads"),
        None,
        "the session is used up"
    );
    assert!(
        store.claim(far_future()).expect("claims").is_none(),
        "not claimable"
    );
    assert_eq!(store.counts().expect("counts")["/data/in"].importing, 1);

    let store = reopen(store);
    assert_eq!(store.recover_after_restart().expect("recovery works"), 0);
    let kept = job(&store, id);
    assert_eq!(kept.state, JobState::Importing);
    assert_eq!(kept.import, Some(import_of(fp(1))));
    assert!(kept.finalize_started);
    assert_eq!(store.importing_jobs().expect("reads").len(), 1);
    assert_invariants(&store);

    assert!(
        store
            .complete(id, &fp(1), "/tables/t/uploads/1", Some("9e1"))
            .expect("completes")
    );
    assert!(store.is_uploaded(&key("a"), &fp(1)).expect("reads"));
    assert!(store.get(id).expect("reads").is_none());
    assert_invariants(&store);
}

#[test]
fn a_file_changed_during_its_import_is_queued_again_once_the_import_settles() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = importing_job(&store);
    assert_eq!(
        store.offer(&key("a"), &fp(2)).expect("offer"),
        Offer::Queued(id)
    );
    assert!(
        matches!(job(&store, id).state, JobState::Importing),
        "the import goes on"
    );
    assert_invariants(&store);
    assert!(
        !store
            .complete(id, &fp(1), "/tables/t/uploads/1", None)
            .expect("completes")
    );
    assert!(
        store.is_uploaded(&key("a"), &fp(1)).expect("reads"),
        "version 1 is on the remote"
    );
    let again = job(&store, id);
    assert_eq!(again.state, JobState::Queued);
    assert_eq!(again.fingerprint, fp(2));
    assert!(!again.finalize_started);
    assert_covered(&store, &key("a"), &fp(2));

    // A refused import of an old version also leaves the new one queued.
    store.claim(SystemTime::now()).expect("claims");
    store
        .mark_importing(id, import_of(fp(2)))
        .expect("importing");
    store.offer(&key("a"), &fp(3)).expect("offer");
    store
        .fail(id, "Redivis could not import: bad row")
        .expect("fails");
    assert_eq!(job(&store, id).state, JobState::Queued);
    assert_covered(&store, &key("a"), &fp(3));
    assert_invariants(&store);
}

#[test]
fn a_failed_import_is_recorded_durably_before_its_upload_is_removed() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let id = {
        let store = open(dir.path());
        let id = importing_job(&store);
        store
            .mark_import_failed(id, "/tables/v/uploads/1", "bad row 3")
            .expect("marks");
        id
    };
    // As after a crash: still importing, with the reason and the upload to remove.
    let store = open(dir.path());
    let kept = job(&store, id);
    assert_eq!(kept.state, JobState::Importing);
    let import = kept.import.expect("the import is kept");
    assert_eq!(import.failed.as_deref(), Some("bad row 3"));
    assert_eq!(import.remote, "/tables/v/uploads/1");
    assert_eq!(store.importing_jobs().expect("lists").len(), 1);
    store.fail(id, "bad row 3").expect("fails");
    assert!(matches!(job(&store, id).state, JobState::Failed { .. }));
    assert_invariants(&store);
}

#[test]
fn a_corrupt_import_queues_the_file_to_be_sent_again_and_counts_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = importing_job(&store);
    store
        .requeue_corrupt(id, "hash mismatch: local a, remote b")
        .expect("requeues");
    let again = job(&store, id);
    assert_eq!(again.state, JobState::Queued);
    assert_eq!(again.corrupt_imports, 1);
    assert!(!again.finalize_started, "nothing of it is posted any more");
    assert_eq!(
        again.last_error.as_deref(),
        Some("hash mismatch: local a, remote b")
    );
    assert_invariants(&store);
    // A new version starts with a clean count.
    store.offer(&key("a"), &fp(5)).expect("offer");
    assert_eq!(job(&store, id).corrupt_imports, 0);
}

// ---- vanished files ----------------------------------------------------------------

#[test]
fn a_vanished_file_drops_its_job_unless_a_worker_or_an_import_holds_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let failed = queued_id(store.offer(&key("failed"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store
        .fail(failed, "KiFS does not allow '_'")
        .expect("fails");
    let waiting = queued_id(store.offer(&key("waiting"), &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store
        .retry_later(waiting, far_future(), "HTTP 503")
        .expect("waits");
    let importing = {
        let id = queued_id(store.offer(&key("importing"), &fp(4)).expect("offer"));
        store.claim(SystemTime::now()).expect("claims");
        store
            .mark_importing(id, import_of(fp(4)))
            .expect("importing");
        id
    };
    let active = queued_id(store.offer(&key("active"), &fp(5)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store.offer(&key("queued"), &fp(3)).expect("offer");

    let mut with_jobs = store
        .files_picked("/data/in", "", FilePick::WithJob)
        .expect("reads");
    with_jobs.sort();
    assert_eq!(
        with_jobs,
        ["active", "failed", "importing", "queued", "waiting"]
    );
    for (rel, dropped) in [
        ("failed", Some("failed")),
        ("waiting", Some("retry-wait")),
        ("queued", Some("queued")),
        ("importing", None),
        ("active", None),
        ("never-had-a-job", None),
    ] {
        assert_eq!(
            store.drop_vanished(&key(rel)).expect("drops"),
            dropped,
            "{rel}"
        );
    }
    assert!(store.get(importing).expect("reads").is_some());
    assert!(store.get(active).expect("reads").is_some());
    assert_eq!(store.jobs().expect("reads").len(), 2);
    assert_eq!(store.counts().expect("counts")["/data/in"].failed, 0);
    assert_invariants(&store);
}

#[test]
fn a_waiting_job_whose_file_vanished_with_an_upload_saved_is_left_due_for_the_worker() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let id = queued_id(store.offer(&key("big.bin"), &fp(1)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store.save_progress(id, b"multipart upload").expect("saves");
    store
        .retry_later(id, far_future(), "HTTP 503")
        .expect("retry-wait");

    assert_eq!(store.drop_vanished(&key("big.bin")).expect("drops"), None);

    let job = store.get(id).expect("reads").expect("the job stays");
    assert_eq!(job.state, JobState::Queued, "due now, not at its retry");
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"multipart upload"[..])
    );
    assert_eq!(
        store
            .claim(SystemTime::now())
            .expect("claims")
            .map(|job| job.id),
        Some(id)
    );
    store.drop_job(id).expect("the worker drops it");
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert_invariants(&store);
}

/// The state database file's length and modification time: what any write would change.
fn db_file_stamp(state_dir: &Path) -> (u64, SystemTime) {
    let meta = std::fs::metadata(state_dir.join(DB_DIR).join("db")).expect("sled's data file");
    (meta.len(), meta.modified().expect("mtime is supported"))
}

/// The data file's stamp once it held still for half a second. sled may finish writing the
/// last buffer a moment after a flush returned (seen on a loaded machine); a writer that never
/// stops (what the idle test guards against) never settles and fails here.
fn settled_db_file_stamp(state_dir: &Path) -> (u64, SystemTime) {
    let mut last = db_file_stamp(state_dir);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let now = db_file_stamp(state_dir);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the database file kept changing for five seconds after a flush");
}

#[test]
fn an_idle_store_writes_nothing_after_a_burst_of_churn() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    // Jobs created, claimed and completed by the thousand leave log segments full of dead
    // pages, the state in which sled's own segment cleaning kept rewriting them.
    for round in 0..4 {
        let files: Vec<(FileKey, Fingerprint)> = (0..1500)
            .map(|n| (key(&format!("d{}/f{n:05}", n % 7)), fp(round * 10_000 + n)))
            .collect();
        for batch in files.chunks(256) {
            store.offer_many(batch).expect("offer_many works");
        }
        while let Some(first) = store.claim(far_future()).expect("claim works") {
            let mut claimed = store
                .claim_more(&first, far_future(), 1000, |_| true)
                .expect("claim_more works");
            claimed.push(Claimed::from(first));
            let completed: Vec<Completed> = claimed
                .into_iter()
                .map(|Claimed { job, as_claimed }| Completed {
                    id: job.id,
                    fingerprint: job.fingerprint,
                    remote: job.key.rel.clone(),
                    md5: None,
                    as_claimed,
                    target: None,
                })
                .collect();
            store
                .complete_many(&completed)
                .expect("complete_many works");
        }
    }
    store.flush().expect("flush works");
    let flushes = store.flushes();
    let stamp = settled_db_file_stamp(dir.path());
    // A background flusher would show within its period (sled's default is 500 ms); eight
    // looks over two seconds give it four chances.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            db_file_stamp(dir.path()),
            stamp,
            "the database file changed while nothing was written"
        );
    }
    store.flush().expect("flush works");
    assert_eq!(
        store.flushes(),
        flushes,
        "a flush with nothing new is not counted"
    );
}

#[test]
fn space_counts_the_key_and_value_bytes_of_every_tree() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let marker =
        (FORMAT_KEY.len() + FORMAT_VERSION.to_string().len() + counts::COUNTS_KEY.len() + 1) as u64;
    let closed_marker = (CLEAN_CLOSE_KEY.len() + 1) as u64;
    assert_eq!(
        store.space().expect("space reads").live_bytes,
        marker + closed_marker
    );

    let file = key("a.csv");
    store.offer(&file, &fp(1)).expect("offer");
    let claimed = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the offered job is due");
    store
        .complete(claimed.id, &fp(1), "dir/a.csv", Some("00ff"))
        .expect("complete");
    let entry = store
        .ledger_get(&file)
        .expect("ledger reads")
        .expect("the upload is recorded");
    let ledger_bytes = (file_key(&file).expect("valid").len() + encode(&entry).len()) as u64;
    let tally = &store.tallies().expect("reads")[&file.folder];
    let counts_bytes = (file.folder.len() + encode(tally).len()) as u64;
    let space = store.space().expect("space reads");
    assert_eq!(
        space.live_bytes,
        marker + ledger_bytes + counts_bytes,
        "only the markers, one ledger entry and the folder's counts are left"
    );
    let data_file = std::fs::metadata(dir.path().join(DB_DIR).join("db"))
        .expect("sled's data file")
        .len();
    assert!(
        space.on_disk_bytes > data_file,
        "{space:?} counts more than the data file"
    );
}

#[test]
fn writes_count_the_entries_each_transition_changes() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let file = key("a.csv");
    let mut last = store.writes();
    let mut wrote = |what: &str, expected: u64| {
        let now = store.writes();
        assert_eq!(now - last, expected, "writes of {what}");
        last = now;
    };
    store.offer(&file, &fp(1)).expect("offer");
    wrote(
        "a new job of a new file, in line: jobs, counts (its file's pointer stays in memory)",
        2,
    );
    store.offer(&file, &fp(1)).expect("offer");
    wrote("the same version offered again", 0);
    let job = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the job is due");
    wrote(
        "a claim from the line: the job, counts (the ledger is unchanged)",
        2,
    );
    store
        .complete(job.id, &fp(1), "dir/a.csv", None)
        .expect("complete");
    wrote(
        "a completion: the ledger entry (the upload in, the job out), counts, jobs out",
        3,
    );
    let id = queued_id(store.offer(&key("failing.csv"), &fp(2)).expect("offer"));
    store.claim(far_future()).expect("claim works");
    wrote("another job, claimed", 4);
    store.fail(id, "400").expect("fail");
    wrote("a failure: the job, counts, attention", 3);
}

#[test]
fn every_transition_the_invariants_need_is_flushed_before_it_returns() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    // The first change of a process flushes the removal of the clean-close marker.
    store.unmark_closed().expect("unmarks");
    let mut last = store.flushes();
    let mut flushed = |what: &str, expected: bool| {
        let now = store.flushes();
        assert_eq!(now > last, expected, "{what} flushed: {expected}");
        last = now;
    };
    let ids: Vec<JobId> = (0..4)
        .map(|n| queued_id(store.offer(&key(&format!("f{n}")), &fp(n)).expect("offer")))
        .collect();
    flushed("offers (a rescan offers again)", false);
    let claim_all = || while store.claim(far_future()).expect("claims").is_some() {};
    claim_all();
    flushed("claims (an active job is queued again at start)", false);
    store.save_progress(ids[0], b"session").expect("saves");
    flushed("progress", true);
    store.clear_progress(ids[0]).expect("clears");
    flushed("cleared progress", true);
    store.mark_finalizing(ids[0]).expect("marks");
    flushed("finalizing", true);
    store
        .complete(ids[0], &fp(0), "r", None)
        .expect("completes");
    flushed("a completion", true);
    store.fail(ids[1], "400").expect("fails");
    flushed("a failure", true);
    store
        .retry_later(ids[2], far_future(), "503")
        .expect("waits");
    flushed("a retry-wait", true);
    store.requeue(ids[3]).expect("requeues");
    flushed("a requeue", true);
    store.retry_failed(&RetrySelection::All).expect("retries");
    flushed("a retry of failed jobs", true);
    claim_all();
    store
        .mark_importing(ids[1], import_of(fp(1)))
        .expect("marks");
    flushed("importing", true);
    store
        .requeue_corrupt(ids[1], "other bytes")
        .expect("requeues");
    flushed("a requeue of a corrupt import", true);
    claim_all();
    store.recover_after_restart().expect("recovers");
    flushed("recovery", true);
    store.drop_job(ids[3]).expect("drops");
    flushed(
        "a dropped job (the worker finds the file gone again)",
        false,
    );
}

mod compaction;
mod deletions;
mod files;
mod marks;
mod pointers;
mod release;
mod stamp;
mod summary;

/// Asserts that `store` was stamped with the current format at open and that the upgrade
/// dropped the tree `old_tree` of the format before.
#[track_caller]
fn assert_upgraded(store: &Store, old_tree: &[u8]) {
    let handles = store.handles();
    assert_eq!(
        handles.db.get(FORMAT_KEY).expect("reads").as_deref(),
        Some(FORMAT_VERSION.to_string().as_bytes())
    );
    assert!(
        !handles.db.tree_names().iter().any(|name| name == old_tree),
        "the old tree is dropped"
    );
}

/// The newest snapshot sled keeps in the database directory: its file name ends with the
/// log position it sums up to, in hex, so later snapshots sort after earlier ones.
fn newest_snapshot(dir: &Path) -> String {
    let mut snapshots: Vec<String> = std::fs::read_dir(dir.join(DB_DIR))
        .expect("the database directory lists")
        .map(|entry| {
            entry
                .expect("lists")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with("snap."))
        .collect();
    snapshots.sort();
    snapshots
        .pop()
        .expect("sled keeps a snapshot once it has opened a database")
}

#[test]
fn a_store_whose_state_dir_was_removed_while_open_leaves_nothing_behind_at_close() {
    let parent = tempfile::tempdir().expect("a temp dir can be created");
    let state_dir = parent.path().join("state");
    let store = open(&state_dir);
    store.offer(&key("a.csv"), &fp(1)).expect("offer works");
    std::fs::remove_dir_all(&state_dir).expect("the state dir can be removed");
    drop(store);
    assert!(
        !state_dir.exists(),
        "closing must not create a new database where the old one was removed"
    );
}

#[test]
fn a_store_that_wrote_leaves_its_log_summed_up_and_one_that_only_read_leaves_it_alone() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let files: Vec<(FileKey, Fingerprint)> = (0..2000)
        .map(|n| (key(&format!("d{}/f{n:05}", n % 7)), fp(n)))
        .collect();
    for batch in files.chunks(256) {
        store.offer_many(batch).expect("offer_many works");
    }
    store.flush().expect("flush works");
    let before_close = newest_snapshot(dir.path());
    drop(store);
    // Without the second open at close, the snapshot would still be the one sled wrote
    // when the store opened, before the offers.
    let after_close = newest_snapshot(dir.path());
    assert!(
        after_close > before_close,
        "closing sums up the log written since the open: {before_close} -> {after_close}"
    );

    // A store that only reads changes nothing at close: the snapshot stays as the open
    // left it (the open itself sums up nothing new).
    let reader = open(dir.path());
    assert_eq!(reader.jobs().expect("the jobs read").len(), 2000);
    let opened = newest_snapshot(dir.path());
    drop(reader);
    assert_eq!(newest_snapshot(dir.path()), opened);
    assert_eq!(
        opened, after_close,
        "nothing was left to sum up at the open"
    );
}
