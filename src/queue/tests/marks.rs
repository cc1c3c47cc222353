//! Claim marks (`queue::marks`): a batch from the front of a line claimed with one write,
//! read back as active everywhere, recovered after a crash, and never covering a job that
//! was not claimed; the invariants hold after each test.

use std::collections::HashSet;

use super::super::keys::{line_prefix, new_job_id, prefix_of};
use super::super::line::Registered;
use super::*;

/// Offers `rel0 … rel{n-1}` (versions 1 to n) and returns their ids, oldest first.
fn offered(store: &Store, n: u64) -> Vec<JobId> {
    (0..n)
        .map(|i| {
            queued_id(
                store
                    .offer(&key(&format!("f{i:04}")), &fp(i + 1))
                    .expect("offer"),
            )
        })
        .collect()
}

/// The stored record of job `id`, as written, without its folder's mark applied.
fn stored(store: &Store, id: JobId) -> Job {
    let raw = store
        .handles()
        .trees
        .jobs
        .get(job_key(id))
        .expect("the jobs tree reads")
        .expect("the job is stored");
    decode_job(&raw, id).expect("the job decodes")
}

/// Claims the first due job; there must be one.
fn first_due(store: &Store) -> Job {
    store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("a job is due")
}

/// Claims the first due job, then the rest of the folder's due jobs as one batch.
fn claim_batch(store: &Store, max: usize) -> Vec<Job> {
    claim_batch_as_claimed(store, max)
        .into_iter()
        .map(|claimed| claimed.job)
        .collect()
}

#[test]
fn a_batch_from_the_front_of_a_line_is_claimed_with_one_write_and_reads_back_active() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids = offered(&store, 100);
    let first = first_due(&store);
    assert_eq!(first.id, ids[0]);

    let writes = store.writes();
    let batch = store
        .claim_more(&first, SystemTime::now(), 500, |_| true)
        .expect("claim_more works");
    let written = store.writes() - writes;

    assert_eq!(
        batch
            .iter()
            .map(|claimed| claimed.job.id)
            .collect::<Vec<_>>(),
        ids[1..],
        "the rest of the line, in order"
    );
    assert!(
        written <= 2,
        "99 jobs claimed with the mark and the folder's counts: {written} writes"
    );
    for Claimed { job, as_claimed } in &batch {
        assert!(
            stored(&store, job.id).in_line,
            "the job itself is not rewritten"
        );
        assert!(
            as_claimed.is_some(),
            "its completion may take the claim's reading"
        );
        let read = super::job(&store, job.id);
        assert_eq!(read.state, JobState::Active);
        assert_eq!(read.claimed, Some(read.fingerprint));
        assert!(!read.in_line);
        assert_eq!(&read, job, "a read sees what the claim returned");
    }
    assert_eq!(store.counts().expect("counts")["/data/in"].active, 100);
    assert!(
        store.claim(far_future()).expect("claim works").is_none(),
        "a job under the mark is not claimable again"
    );
    assert_invariants(&store);

    let done = store
        .complete_many(&completed(&batch))
        .expect("complete_many works");
    assert!(done.iter().all(|done| done.ended()));
    assert_eq!(
        store.jobs().expect("jobs read").len(),
        1,
        "only the first is left"
    );
    assert_invariants(&store);
}

#[test]
fn jobs_under_a_mark_found_at_a_restart_are_unconfirmed_attempts_claimed_again() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    offered(&store, 10);
    let batch = claim_batch(&store, 100);
    assert_eq!(batch.len(), 10);
    store
        .flush()
        .expect("the claim is flushed, as before a batch's bytes go out");

    let store = reopen_after_kill(store);
    assert_eq!(
        store.recover_after_restart().expect("recovery works"),
        10,
        "every job of the batch was an attempt"
    );
    for job in store.jobs().expect("jobs read") {
        assert_eq!(job.state, JobState::Queued);
        assert!(!job.in_line, "recovery wrote the job out of line");
        assert!(
            job.unconfirmed_attempt_ms.is_some(),
            "its bytes may have landed: {}",
            job.key
        );
    }
    assert_invariants(&store);
    let again = claim_batch(&store, 100);
    assert_eq!(again.len(), 10, "every job is claimed again");
    assert_invariants(&store);
}

#[test]
fn a_new_version_offered_during_a_claim_under_the_mark_is_uploaded_after_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    offered(&store, 3);
    let batch = claim_batch_as_claimed(&store, 100);
    let f2 = batch[2].job.clone();
    assert!(batch[2].as_claimed.is_some());
    assert!(stored(&store, f2.id).in_line, "claimed under the mark");

    store.offer(&key("f0002"), &fp(33)).expect("offer");
    let moved = super::job(&store, f2.id);
    assert_eq!(moved.state, JobState::Active, "still the running attempt");
    assert_eq!(moved.claimed, Some(fp(3)), "claimed with the old version");
    assert_eq!(moved.fingerprint, fp(33));
    assert!(
        !stored(&store, f2.id).in_line,
        "the offer wrote it out of line"
    );
    assert_invariants(&store);

    let done = store
        .complete_many(&completed(&batch))
        .expect("complete_many works");
    assert_eq!(
        done,
        vec![
            Completion::Recorded,
            Completion::Recorded,
            Completion::Superseded
        ],
        "f0002 moved on"
    );
    let left = super::job(&store, f2.id);
    assert_eq!(left.state, JobState::Queued);
    assert_eq!(left.fingerprint, fp(33));
    assert_invariants(&store);
}

#[test]
fn a_job_that_may_still_appear_before_a_batch_keeps_the_mark_behind_it() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids = offered(&store, 6);
    // A transaction still creating a job of this line with an id below the jobs in line:
    // the walk cannot know whether that job will land before them.
    let prefix = line_prefix("/data/in");
    assert_eq!(prefix_of(ids[0]), prefix);
    let running = Registered::default();
    let below = store
        .inner
        .lines
        .take_id(prefix, || Ok(0), &running)
        .expect("takes")
        .expect("fits");
    assert_eq!(below, new_job_id(prefix, 0).expect("fits"));
    assert!(below < ids[0]);

    let batch = claim_batch(&store, 2);
    assert_eq!(batch.len(), 3);
    for job in &batch {
        assert!(
            !stored(&store, job.id).in_line,
            "job {} is written active, not put under the mark",
            job.id
        );
    }
    assert_eq!(store.mark(folder_tag("/data/in")).expect("reads"), None);

    store.inner.lines.created(&running.0.borrow());
    let rest = claim_batch(&store, 10);
    assert_eq!(rest.len(), 3);
    assert!(stored(&store, rest[2].id).in_line, "now under the mark");
    assert_eq!(
        store
            .mark(folder_tag("/data/in"))
            .expect("reads")
            .map(|mark| mark.through),
        Some(ids[5])
    );
    assert_invariants(&store);
}

#[test]
fn a_refused_job_ends_the_part_of_a_batch_under_the_mark() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids = offered(&store, 5);
    let first = first_due(&store);
    // Refuses f0002 (version 3) only.
    let batch = store
        .claim_more(&first, SystemTime::now(), 10, |job| {
            job.fingerprint != fp(3)
        })
        .expect("claim_more works");
    assert_eq!(
        batch
            .iter()
            .map(|claimed| claimed.job.id)
            .collect::<Vec<_>>(),
        vec![ids[1], ids[3], ids[4]]
    );
    assert!(
        stored(&store, ids[1]).in_line,
        "before the refused one: under the mark"
    );
    assert!(!stored(&store, ids[3]).in_line, "after it: written");
    assert!(!stored(&store, ids[4]).in_line, "after it: written");
    let refused = super::job(&store, ids[2]);
    assert_eq!(
        refused.state,
        JobState::Queued,
        "the refused job still waits"
    );
    assert!(refused.in_line);
    assert_invariants(&store);
    let next = store
        .claim(SystemTime::now())
        .expect("claim works")
        .expect("the refused job is due");
    assert_eq!(next.id, ids[2]);
    assert_invariants(&store);
}

#[test]
fn batches_racing_with_offers_claim_every_job_exactly_once() {
    const FILES: u64 = 3_000;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let offers_done = AtomicBool::new(false);
    let claimed: Vec<Vec<JobId>> = std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in (0..FILES).collect::<Vec<_>>().chunks(50) {
                let files: Vec<(FileKey, Fingerprint)> = chunk
                    .iter()
                    .map(|i| (key(&format!("f{i:05}")), fp(i + 1)))
                    .collect();
                store.offer_many(&files).expect("offer_many works");
            }
            offers_done.store(true, Ordering::SeqCst);
        });
        let claimers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        let finished = offers_done.load(Ordering::SeqCst);
                        let batch = claim_batch(&store, 40);
                        if batch.is_empty() && finished {
                            break;
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the claims did not end"
                        );
                        mine.extend(batch.iter().map(|job| job.id));
                    }
                    mine
                })
            })
            .collect();
        claimers
            .into_iter()
            .map(|claimer| claimer.join().expect("the claimer ends"))
            .collect()
    });
    let all: Vec<JobId> = claimed.into_iter().flatten().collect();
    let distinct: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a job was claimed twice");
    assert_eq!(
        distinct.len() as u64,
        FILES,
        "every job was claimed (a mark over an unclaimed job would hide it)"
    );
    let jobs = store.jobs().expect("jobs read");
    assert!(jobs.iter().all(|job| job.state == JobState::Active));
    assert!(
        jobs.iter().any(|job| stored(&store, job.id).in_line),
        "some batches went under the mark"
    );
    assert_invariants(&store);
}

#[test]
fn a_database_of_format_4_opens_in_the_current_format_and_its_line_is_claimed_under_a_mark() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids = offered(&store, 3);
    // What format 4 left: the same jobs in line, no mark, no tree of marks.
    store
        .handles()
        .db
        .insert(FORMAT_KEY, &b"4"[..])
        .expect("writing works");
    store
        .handles()
        .db
        .drop_tree(super::super::marks::MARKS_TREE)
        .expect("drops");
    let store = reopen(store);
    assert_eq!(
        store
            .handles()
            .db
            .get(FORMAT_KEY)
            .expect("reads")
            .as_deref(),
        Some(FORMAT_VERSION.to_string().as_bytes())
    );
    for id in &ids {
        assert_eq!(super::job(&store, *id).state, JobState::Queued);
    }
    assert_invariants(&store);
    let batch = claim_batch(&store, 10);
    assert_eq!(batch.len(), 3);
    assert!(stored(&store, ids[2]).in_line, "under the mark");
    assert_invariants(&store);
}

#[test]
fn a_compaction_keeps_the_marks_and_the_claims_they_stand_for() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let ids = offered(&store, 20);
    let batch = claim_batch(&store, 10);
    assert_eq!(batch.len(), 11);
    let before = store.jobs().expect("jobs read");
    store
        .compact(&CompactPolicy {
            max_ratio: 0.0,
            min_on_disk: 0,
        })
        .expect("the compaction works")
        .expect("and ends in a swap");
    assert_eq!(store.jobs().expect("jobs read"), before);
    assert!(stored(&store, ids[10]).in_line, "still under the mark");
    assert_eq!(super::job(&store, ids[10]).state, JobState::Active);
    assert_eq!(super::job(&store, ids[11]).state, JobState::Queued);
    let rest = claim_batch(&store, 20);
    assert_eq!(
        rest.iter().map(|job| job.id).collect::<Vec<_>>(),
        ids[11..],
        "the compacted line goes on after the mark"
    );
    assert_invariants(&store);
}
