//! Deletion jobs (`queue::delete`): found gone, held, approved, run, and turned back into
//! uploads when the file returns; the invariants hold after each test.

use super::*;

/// Uploads `rel` at version `n` and returns nothing: the ledger holds it, no job remains.
fn uploaded(store: &Store, rel: &str, n: u64) {
    let id = queued_id(store.offer(&key(rel), &fp(n)).expect("offer"));
    let claimed = store
        .claim(far_future())
        .expect("claim")
        .expect("a job is due");
    assert_eq!(claimed.id, id);
    assert!(
        store
            .complete(id, &fp(n), &format!("dir/{rel}"), None)
            .expect("complete")
    );
}

fn the_job(store: &Store, rel: &str) -> Option<Job> {
    store
        .jobs()
        .expect("jobs read")
        .into_iter()
        .find(|job| job.key == key(rel))
}

/// Uploads `rel`, finds it gone, and claims its deletion.
fn deleting(store: &Store, rel: &str) -> Job {
    uploaded(store, rel, 1);
    store.offer_deletions(&[key(rel)], soon()).expect("offer");
    store.claim(far_future()).expect("claim").expect("due")
}

fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

#[test]
fn an_uploaded_file_found_gone_is_deleted_once_its_delay_passed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    uploaded(&store, "a.csv", 1);

    assert_eq!(
        store
            .offer_deletions(&[key("a.csv")], soon())
            .expect("offer"),
        1
    );
    assert_eq!(
        store
            .offer_deletions(&[key("a.csv")], soon())
            .expect("again"),
        0
    );
    assert_invariants(&store);
    let job = the_job(&store, "a.csv").expect("a deletion job");
    assert_eq!((job.kind, job.fingerprint), (JobKind::Delete, fp(1)));
    assert!(
        store.claim(SystemTime::now()).expect("claim").is_none(),
        "not due before the delay"
    );

    let claimed = store
        .claim(far_future())
        .expect("claim")
        .expect("due after the delay");
    assert_eq!(claimed.kind, JobKind::Delete);
    assert!(
        store
            .complete_deletion(claimed.id, Some("dir/a.csv"))
            .expect("record")
    );
    assert_eq!(store.ledger_get(&key("a.csv")).expect("ledger"), None);
    assert!(store.jobs().expect("jobs").is_empty());
    assert_invariants(&store);
}

#[test]
fn a_file_never_uploaded_gets_no_deletion_and_its_pending_upload_leaves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store.offer(&key("new.csv"), &fp(1)).expect("offer");

    assert_eq!(
        store
            .offer_deletions(&[key("new.csv")], soon())
            .expect("offer"),
        0
    );
    assert!(store.jobs().expect("jobs").is_empty());
    assert_invariants(&store);
}

#[test]
fn a_file_that_comes_back_turns_its_deletion_into_an_upload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    uploaded(&store, "a.csv", 1);
    uploaded(&store, "b.csv", 2);
    store
        .offer_deletions(&[key("a.csv"), key("b.csv")], soon())
        .expect("offer");

    assert!(matches!(
        store.offer(&key("a.csv"), &fp(3)).expect("offer"),
        Offer::Queued(_)
    ));
    let job = the_job(&store, "a.csv").expect("the upload");
    assert_eq!((job.kind, job.fingerprint), (JobKind::Upload, fp(3)));
    assert_eq!(job.due_ms(), Some(job.updated_at_ms));
    // Back exactly as uploaded: nothing to do at all.
    assert_eq!(
        store.offer(&key("b.csv"), &fp(2)).expect("offer"),
        Offer::UpToDate
    );
    assert!(the_job(&store, "b.csv").is_none());
    assert!(store.ledger_get(&key("b.csv")).expect("ledger").is_some());
    assert_invariants(&store);
}

#[test]
fn a_deletion_running_when_its_file_comes_back_ends_first_then_queues_the_upload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let deleting = deleting(&store, "a.csv");

    // Even the very version the ledger holds must be sent again: its copy is being deleted.
    store.offer(&key("a.csv"), &fp(1)).expect("offer");
    assert_eq!(job(&store, deleting.id).state, JobState::Active);
    assert!(
        !store
            .complete_deletion(deleting.id, Some("dir/a.csv"))
            .expect("record")
    );

    assert_eq!(store.ledger_get(&key("a.csv")).expect("ledger"), None);
    let upload = job(&store, deleting.id);
    assert_eq!(
        (upload.kind, upload.state, upload.fingerprint),
        (JobKind::Upload, JobState::Queued, fp(1))
    );
    assert_invariants(&store);
}

#[test]
fn an_older_deletion_never_removes_the_entry_of_another_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let deleting = deleting(&store, "a.csv");

    assert!(
        store
            .complete_deletion(deleting.id, Some("dir/other-copy"))
            .expect("record")
    );
    assert!(store.ledger_get(&key("a.csv")).expect("ledger").is_some());
    assert_invariants(&store);
}

#[test]
fn an_upload_whose_file_goes_during_its_attempt_is_queued_again_as_a_deletion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    uploaded(&store, "a.csv", 1);
    uploaded(&store, "b.csv", 1);
    store.offer(&key("a.csv"), &fp(2)).expect("offer v2");
    store.offer(&key("b.csv"), &fp(2)).expect("offer v2");
    let a = store.claim(far_future()).expect("claim").expect("due");
    let b = store.claim(far_future()).expect("claim").expect("due");

    assert_eq!(
        store
            .offer_deletions(&[key("a.csv"), key("b.csv")], soon())
            .expect("offer"),
        0
    );
    assert_eq!(
        job(&store, a.id).state,
        JobState::Active,
        "the attempt keeps its job"
    );
    // a: the worker finds the file gone.
    store.drop_job(a.id).expect("drop");
    let a = job(&store, a.id);
    assert_eq!((a.kind, a.state), (JobKind::Delete, JobState::Queued));
    // b: its bytes reached the remote first; that copy is then the one to delete.
    assert!(
        !store
            .complete(b.id, &fp(2), "dir/b.csv", None)
            .expect("complete")
    );
    assert_eq!(job(&store, b.id).kind, JobKind::Delete);
    assert_eq!(job(&store, b.id).state, JobState::Queued);
    assert_invariants(&store);
}

#[test]
fn held_deletions_wait_for_retry_deletes_and_plain_retry_leaves_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let all: Vec<FileKey> = (1..=4).map(|n| key(&format!("{n}.csv"))).collect();
    for n in 1..=4 {
        uploaded(&store, &format!("{n}.csv"), n);
    }
    store.offer_deletions(&all[..3], soon()).expect("offer");
    let tally = store.deletion_tally("/data/in").expect("tally");
    assert_eq!(
        tally,
        DeletionTally {
            pending: 3,
            held: 0,
            uploaded: 4
        }
    );

    assert_eq!(store.hold_deletions("/data/in", "3 of 4").expect("hold"), 3);
    let counts = store.counts().expect("counts")["/data/in"].clone();
    assert_eq!((counts.failed, counts.deletions, counts.held), (3, 3, 3));
    assert!(
        store.claim(far_future()).expect("claim").is_none(),
        "held deletions never run"
    );
    assert_eq!(store.retry_failed(&RetrySelection::All).expect("retry"), 0);

    assert_eq!(
        store.retry_failed(&RetrySelection::Deletes).expect("retry"),
        3
    );
    let tally = store.deletion_tally("/data/in").expect("tally");
    assert_eq!(
        (tally.pending, tally.held),
        (0, 0),
        "approved deletions are not counted"
    );
    // A guard that looks again holds none of the approved ones.
    assert_eq!(store.hold_deletions("/data/in", "again").expect("hold"), 0);
    assert!(store.claim(far_future()).expect("claim").is_some());
    assert_invariants(&store);
}

#[test]
fn a_retried_directory_leaves_its_held_deletions_held_and_a_named_one_approves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    for n in 1..=3 {
        uploaded(&store, &format!("sub/{n}.csv"), n);
    }
    store
        .offer_deletions(&[key("sub/1.csv"), key("sub/2.csv")], soon())
        .expect("offer");
    assert_eq!(
        store.hold_deletions("/data/in", "too many").expect("hold"),
        2
    );

    let sub = RetrySelection::Paths(vec![Path::new("/data/in/sub").to_path_buf()]);
    assert_eq!(store.retry_failed(&sub).expect("retry"), 0, "like --all");
    assert_eq!(store.deletion_tally("/data/in").expect("tally").held, 2);

    let named = RetrySelection::Paths(vec![key("sub/1.csv").path()]);
    assert_eq!(store.retry_failed(&named).expect("retry"), 1);
    let tally = store.deletion_tally("/data/in").expect("tally");
    assert_eq!(
        (tally.pending, tally.held),
        (0, 1),
        "the named one is approved"
    );
    assert_invariants(&store);
}

#[test]
fn released_deletions_run_and_a_lost_root_drops_the_unapproved_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    for n in 1..=3 {
        uploaded(&store, &format!("{n}.csv"), n);
    }
    store
        .offer_deletions(&[key("1.csv"), key("2.csv")], soon())
        .expect("offer");
    store.hold_deletions("/data/in", "too many").expect("hold");
    assert_eq!(store.release_deletions("/data/in").expect("release"), 2);
    assert_eq!(store.deletion_tally("/data/in").expect("tally").pending, 2);

    store.hold_deletions("/data/in", "too many").expect("hold");
    store
        .retry_failed(&RetrySelection::Paths(vec![key("1.csv").path()]))
        .expect("retry");
    store
        .offer_deletions(&[key("3.csv")], soon())
        .expect("offer");
    assert_eq!(store.drop_pending_deletions("/data/in").expect("drop"), 2);
    let left: Vec<String> = store
        .jobs()
        .expect("jobs")
        .into_iter()
        .map(|j| j.key.rel)
        .collect();
    assert_eq!(
        left,
        vec!["1.csv".to_string()],
        "the deletion retried by path stays"
    );
    assert_eq!(
        store
            .files_picked("/data/in", "", FilePick::Uploaded)
            .expect("ledger")
            .len(),
        3
    );
    assert_invariants(&store);
}

#[test]
fn a_deletion_interrupted_by_a_crash_runs_again_after_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    uploaded(&store, "a.csv", 1);
    store
        .offer_deletions(&[key("a.csv")], soon())
        .expect("offer");
    store.flush().expect("flush");
    let deleting = store.claim(far_future()).expect("claim").expect("due");

    let store = reopen(store);
    assert_eq!(store.recover_after_restart().expect("recover"), 1);
    let again = store
        .claim(far_future())
        .expect("claim")
        .expect("due again");
    assert_eq!((again.id, again.kind), (deleting.id, JobKind::Delete));
    assert!(store.ledger_get(&key("a.csv")).expect("ledger").is_some());
    assert_invariants(&store);
}

#[test]
fn a_deletion_dropped_with_its_folder_turns_back_into_the_upload_whose_progress_it_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    uploaded(&store, "b.csv", 1);
    let id = waiting_upload_with_progress(&store, "a.csv", far_future());
    store
        .offer_deletions(&[key("a.csv"), key("b.csv")], far_future())
        .expect("offer");

    assert_eq!(store.drop_pending_deletions("/data/in").expect("drop"), 2);

    let job = the_job(&store, "a.csv").expect("the upload is back");
    assert_eq!(
        (job.id, job.kind, &job.state),
        (id, JobKind::Upload, &JobState::Queued)
    );
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"upload of version 2"[..]),
        "kept for the worker to give up"
    );
    assert!(
        the_job(&store, "b.csv").is_none(),
        "without progress it goes"
    );
    let claimed = store
        .claim(SystemTime::now())
        .expect("claim")
        .expect("due now");
    assert_eq!(claimed.id, id);
    assert_invariants(&store);
}

/// Uploads `rel` at version 1, then claims version 2's upload, which saves progress and
/// waits to retry at `retry_at`; returns its job.
fn waiting_upload_with_progress(store: &Store, rel: &str, retry_at: SystemTime) -> JobId {
    uploaded(store, rel, 1);
    let id = queued_id(store.offer(&key(rel), &fp(2)).expect("offer"));
    store.claim(far_future()).expect("claim").expect("due");
    store
        .save_progress(id, b"upload of version 2")
        .expect("saves");
    store
        .retry_later(id, retry_at, "HTTP 503")
        .expect("retry-wait");
    id
}

/// [`waiting_upload_with_progress`], whose file is then found gone: a deletion that keeps
/// that progress.
fn deletion_keeping_an_upload(store: &Store, rel: &str) -> JobId {
    let id = waiting_upload_with_progress(store, rel, soon());
    store.offer_deletions(&[key(rel)], soon()).expect("offer");
    assert_eq!(
        the_job(store, rel).expect("the deletion").kind,
        JobKind::Delete
    );
    id
}

#[test]
fn a_file_back_before_its_deletion_ran_keeps_the_upload_that_deletion_kept_to_give_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let id = deletion_keeping_an_upload(&store, "a.csv");

    assert_eq!(
        store.offer(&key("a.csv"), &fp(3)).expect("offer"),
        Offer::Queued(id)
    );

    let job = the_job(&store, "a.csv").expect("the upload");
    assert_eq!(
        (job.id, job.kind, &job.state, job.fingerprint),
        (id, JobKind::Upload, &JobState::Queued, fp(3))
    );
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"upload of version 2"[..]),
        "kept for the next attempt to give up on the remote"
    );
    assert_invariants(&store);
}

#[test]
fn a_waiting_upload_that_becomes_a_deletion_keeps_its_progress_until_the_deletion_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let id = waiting_upload_with_progress(&store, "a.csv", soon());

    store
        .offer_deletions(&[key("a.csv")], SystemTime::now())
        .expect("offer");

    let job = the_job(&store, "a.csv").expect("the deletion");
    assert_eq!((job.id, job.kind), (id, JobKind::Delete));
    assert_eq!(
        store.load_progress(id).expect("reads").as_deref(),
        Some(&b"upload of version 2"[..]),
        "kept for the deleter to give up"
    );
    assert_invariants(&store);
    store.claim(far_future()).expect("claim").expect("due");
    assert!(
        store
            .complete_deletion(id, Some("dir/a.csv"))
            .expect("ends")
    );
    assert_eq!(store.load_progress(id).expect("reads"), None);
    assert_invariants(&store);
}
