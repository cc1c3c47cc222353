//! A remote coming back (`Store::release_waiting`) over a large queue: the jobs waiting to
//! retry are woken a chunk to a transaction, the queued ones beside them in the `due`
//! index are left as they are, and the invariants hold.

use std::time::Instant;

use super::super::claim::RELEASE_CHUNK;
use super::*;

/// Offers `count` files of `folder` named `{prefix}{n}` and writes each job as `shape` makes
/// it, a thousand to a transaction: the ids, in offer order.
fn jobs_shaped(
    store: &Store,
    folder: &str,
    prefix: &str,
    count: u64,
    shape: impl Fn(&Job) -> Job,
) -> Vec<JobId> {
    let mut ids = Vec::new();
    for start in (0..count).step_by(1000) {
        let files: Vec<(FileKey, Fingerprint)> = (start..count.min(start + 1000))
            .map(|n| (in_folder(folder, &format!("{prefix}{n}")), fp(n + 1)))
            .collect();
        let offered: Vec<JobId> = store
            .offer_many(&files)
            .expect("offers")
            .into_iter()
            .map(queued_id)
            .collect();
        store
            .transact(|tx| {
                for id in &offered {
                    let job = tx.require_job(*id)?;
                    tx.put_job(Some(&job), &shape(&job))?;
                }
                Ok(())
            })
            .expect("the jobs are written");
        ids.extend(offered);
    }
    ids
}

/// Waiting to retry until `at_ms`.
fn waiting_until(at_ms: u64) -> impl Fn(&Job) -> Job {
    move |job| Job {
        state: JobState::RetryWait {
            next_attempt_at_ms: at_ms,
        },
        ..job.clone()
    }
}

/// Queued out of line, as a job queued again is: its `due` entry at `at_ms`.
fn queued_out_of_line(at_ms: u64) -> impl Fn(&Job) -> Job {
    move |job| queued_afresh(job, at_ms)
}

fn transactions(store: &Store) -> u64 {
    store.inner.transactions.load(Ordering::Relaxed)
}

#[test]
fn a_remote_coming_back_wakes_its_waiting_jobs_a_chunk_to_a_transaction_past_the_queued_ones() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let back_at = store.now_ms();
    let later = to_ms(far_future());
    // More waiting jobs than one chunk, among queued ones due before and after them.
    let queued_before = jobs_shaped(&store, "/down", "q", 300, queued_out_of_line(back_at - 5));
    let waiting = jobs_shaped(&store, "/down", "w", 700, waiting_until(later));
    let overdue = jobs_shaped(&store, "/down", "o", 3, waiting_until(back_at - 1));
    let queued_after = jobs_shaped(&store, "/down", "z", 50, queued_out_of_line(later + 1));
    let in_line = queued_id(
        store
            .offer(&in_folder("/down", "new"), &fp(9))
            .expect("offer"),
    );
    let elsewhere = jobs_shaped(&store, "/up", "w", 5, waiting_until(later));
    let queued_entries = |ids: &[JobId]| -> Vec<Option<u64>> {
        ids.iter()
            .map(|id| job(&store, *id).due_entry_ms())
            .collect()
    };
    let queued_then = (
        queued_entries(&queued_before),
        queued_entries(&queued_after),
    );
    assert_invariants(&store);

    let before = transactions(&store);
    let released = store
        .release_waiting(&["/down".to_string()], from_ms(back_at))
        .expect("release works");
    let used = transactions(&store) - before;

    assert_eq!(released, 703, "the waiting jobs, overdue ones included");
    assert!(
        used <= 700u64.div_ceil(RELEASE_CHUNK as u64),
        "{used} transactions for 700 waiting jobs, 350 queued ones and 3 overdue ones"
    );
    for id in waiting.iter().chain(&overdue) {
        assert!(
            matches!(job(&store, *id).state, JobState::RetryWait { next_attempt_at_ms } if next_attempt_at_ms <= back_at),
            "every waiting job of the folder is due"
        );
    }
    assert_eq!(
        (
            queued_entries(&queued_before),
            queued_entries(&queued_after)
        ),
        queued_then,
        "the queued jobs are left as they were"
    );
    assert!(job(&store, in_line).in_line);
    for id in &elsewhere {
        assert_eq!(
            job(&store, *id).state,
            JobState::RetryWait {
                next_attempt_at_ms: later
            },
            "another folder's jobs keep waiting"
        );
    }
    assert_invariants(&store);
    assert_eq!(store.counts().expect("counts")["/down"].retry_wait, 703);
    let due_now = std::iter::from_fn(|| store.claim(SystemTime::now()).expect("claims")).count();
    assert_eq!(
        due_now,
        300 + 700 + 3 + 1,
        "all but the queued jobs due later"
    );
}

/// Times `release_waiting` over 20,000 jobs waiting to retry and 100,000 queued out of line:
/// `cargo test --release --lib release_waiting_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, to run on its own in a release build"]
fn release_waiting_cost() {
    const WAITING: u64 = 20_000;
    const QUEUED: u64 = 100_000;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let now = store.now_ms();
    // The queued jobs on either side of the waiting ones in the index, as a backlog queued
    // during the outage is.
    jobs_shaped(
        &store,
        "/down",
        "q",
        QUEUED / 2,
        queued_out_of_line(now - 60_000),
    );
    jobs_shaped(
        &store,
        "/down",
        "w",
        WAITING,
        waiting_until(now + 3_600_000),
    );
    jobs_shaped(
        &store,
        "/down",
        "z",
        QUEUED / 2,
        queued_out_of_line(now - 1),
    );
    store.flush().expect("flushes");

    let before = transactions(&store);
    let started = Instant::now();
    let released = store
        .release_waiting(&["/down".to_string()], SystemTime::now())
        .expect("release works");
    let took = started.elapsed();
    assert_eq!(released, WAITING);
    eprintln!(
        "release_waiting: {WAITING} waiting, {QUEUED} queued out of line: {:.3} s, {} transactions",
        took.as_secs_f64(),
        transactions(&store) - before
    );
}
