//! The status summary (module `summary`): a closed store leaves one that answers as the
//! store does, an open store never has one, and a summary that cannot be trusted or read
//! sends the report to the database.

use std::collections::BTreeMap;

use super::super::summary::{SUMMARY_FILE, Stopped, open_stopped};
use super::*;

/// What a report reads, for `folders` at `now`.
type Answers = (BTreeMap<String, Tally>, Vec<Job>, Vec<Option<u64>>);

fn answers(source: &dyn StatusSource, folders: &[&str], now: SystemTime) -> Answers {
    (
        source.tallies().expect("tallies"),
        source.jobs_needing_attention().expect("attention"),
        folders
            .iter()
            .map(|folder| source.waiting_since(folder, now).expect("waiting since"))
            .collect(),
    )
}

fn summary_path(dir: &Path) -> PathBuf {
    dir.join(SUMMARY_FILE)
}

/// A store with a file of every kind a report shows, in two folders.
fn busy_store(dir: &Path) -> Store {
    let store = open(dir);
    let other = |rel: &str| FileKey::new("/data/other", rel);
    let failing = queued_id(store.offer(&key("failing"), &fp(1)).expect("offer"));
    let retrying = queued_id(store.offer(&other("retrying"), &fp(2)).expect("offer"));
    store.claim(SystemTime::now()).expect("claims");
    store.claim(SystemTime::now()).expect("claims");
    store.fail(failing, "HTTP 403: no access").expect("fails");
    store
        .retry_later(retrying, far_future(), "HTTP 503")
        .expect("waits");
    store.offer(&key("queued"), &fp(3)).expect("offer");
    store
        .record_uploaded(&other("done"), &fp(4), "done", None)
        .expect("records");
    store
}

const FOLDERS: [&str; 3] = ["/data/in", "/data/other", "/data/never"];

#[test]
fn a_closed_store_leaves_a_summary_that_answers_as_the_store_does() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = busy_store(dir.path());
    let times = [SystemTime::now(), far_future() + Duration::from_secs(1)];
    let expected: Vec<Answers> = times
        .iter()
        .map(|now| answers(&store, &FOLDERS, *now))
        .collect();
    assert_eq!(expected[0].1.len(), 2, "the failed and the retrying job");
    drop(store);

    let stopped = open_stopped(dir.path()).expect("opens");
    assert!(
        matches!(stopped, Stopped::Summary(..)),
        "the summary is read"
    );
    for (now, expected) in times.iter().zip(&expected) {
        assert_eq!(&answers(stopped.source(), &FOLDERS, *now), expected);
    }
    assert!(
        matches!(Store::open(dir.path()), Err(StoreError::Locked { .. })),
        "reading the summary holds the lock, so no daemon starts meanwhile"
    );
}

#[test]
fn an_open_store_has_no_summary_and_its_close_writes_a_new_one() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    drop(busy_store(dir.path()));
    assert!(summary_path(dir.path()).exists());

    let store = open(dir.path());
    assert!(
        !summary_path(dir.path()).exists(),
        "a process holding the store may change it: a summary would go stale"
    );
    store.offer(&key("new"), &fp(9)).expect("offer");
    let expected = answers(&store, &FOLDERS, SystemTime::now());
    drop(store);

    let stopped = open_stopped(dir.path()).expect("opens");
    assert!(matches!(stopped, Stopped::Summary(..)));
    assert_eq!(
        answers(stopped.source(), &FOLDERS, SystemTime::now()),
        expected
    );
}

#[test]
fn an_unreadable_summary_sends_the_report_to_the_database() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = busy_store(dir.path());
    let expected = answers(&store, &FOLDERS, SystemTime::now());
    drop(store);
    std::fs::write(summary_path(dir.path()), b"{\"format\": 4, \"tall").expect("writes");

    let stopped = open_stopped(dir.path()).expect("opens");
    assert!(
        matches!(stopped, Stopped::Store(..)),
        "the database is opened"
    );
    assert_eq!(
        answers(stopped.source(), &FOLDERS, SystemTime::now()),
        expected
    );
    drop(stopped);
    assert!(
        matches!(
            open_stopped(dir.path()).expect("opens"),
            Stopped::Summary(..)
        ),
        "closing the database wrote a good summary again"
    );
}

#[test]
fn a_database_left_by_a_crash_gets_no_summary_until_its_counts_are_checked() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    drop(busy_store(dir.path()));
    // What a kill leaves: no `closed` marker, and no summary (the open removed it).
    let db = open_sled(&dir.path().join(DB_DIR)).expect("opens");
    db.remove(CLEAN_CLOSE_KEY).expect("removes");
    db.flush().expect("flushes");
    drop(db);
    std::fs::remove_file(summary_path(dir.path())).expect("removes");

    let stopped = open_stopped(dir.path()).expect("opens");
    assert!(matches!(stopped, Stopped::Store(..)));
    drop(stopped);
    assert!(
        !summary_path(dir.path()).exists(),
        "a report does not check the counts, so it may not vouch for them"
    );
    let store = open(dir.path());
    store.recover_after_restart().expect("recovers");
    drop(store);
    assert!(
        summary_path(dir.path()).exists(),
        "a start checks the counts; its close leaves a summary"
    );
}
