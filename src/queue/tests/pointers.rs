//! The pointers of new files kept in memory (module `pointers`): no write for them, taken
//! back after a reopen, bounded, walked with the ledger, and one job per file when offers
//! race.

use std::thread;

use sled::IVec;

use super::super::files::VISIT_CHUNK;
use super::super::pointers::Gate;
use super::*;

fn stored_entry(store: &Store, file: &FileKey) -> Option<IVec> {
    let raw_key = file_key(file).expect("a valid key");
    store
        .handles()
        .trees
        .ledger
        .get(raw_key)
        .expect("the ledger reads")
}

#[test]
fn a_new_file_costs_no_ledger_write_until_its_upload_and_a_reopen_finds_its_job_again() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let file = key("new.csv");
    let id = {
        let store = open(dir.path());
        let id = queued_id(store.offer(&file, &fp(1)).expect("offer"));
        assert_eq!(
            stored_entry(&store, &file),
            None,
            "the pointer stays in memory"
        );
        assert_invariants(&store);
        id
    };

    let store = open(dir.path());
    let before = store.writes();
    assert_eq!(store.recover_after_restart().expect("recovers"), 0);
    assert_eq!(
        store.writes(),
        before,
        "the start-up repair finds the job's pointer sound"
    );
    assert_eq!(
        store.offer(&file, &fp(1)).expect("offer"),
        Offer::AlreadyQueued(id)
    );
    assert_eq!(
        store.offer(&file, &fp(2)).expect("offer"),
        Offer::Queued(id),
        "a new version updates the job the reopened store found"
    );
    assert_eq!(store.jobs().expect("jobs").len(), 1);
    assert_invariants(&store);

    let job = store
        .claim(far_future())
        .expect("claim works")
        .expect("the job is due");
    assert!(
        store
            .complete(job.id, &fp(2), "r/new.csv", None)
            .expect("completes")
    );
    let entry = stored_entry(&store, &file).expect("the upload is in the ledger");
    assert_eq!(FileRecord::split(&entry).job, None);
    assert!(store.inner.pointers.all().is_empty());
    assert_invariants(&store);
}

#[test]
fn a_vanished_new_file_takes_its_pointer_with_its_job() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let file = key("gone.csv");
    store.offer(&file, &fp(1)).expect("offer");
    assert_eq!(store.drop_vanished(&file).expect("drops"), Some("queued"));
    assert!(store.inner.pointers.all().is_empty());
    assert!(store.jobs().expect("jobs").is_empty());
    assert_eq!(stored_entry(&store, &file), None);
    assert_invariants(&store);
}

#[test]
fn beyond_the_limit_a_new_files_pointer_is_written_to_the_ledger() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    store.inner.pointers.set_limit(2);
    let mut last = store.writes();
    let mut offer = |name: &str| {
        store.offer(&key(name), &fp(1)).expect("offer");
        let now = store.writes();
        let wrote = now - last;
        last = now;
        wrote
    };
    assert_eq!(offer("a"), 2, "jobs, counts");
    assert_eq!(offer("b"), 2, "jobs, counts");
    assert_eq!(offer("c"), 3, "jobs, counts, and the pointer in the ledger");
    assert_eq!(stored_entry(&store, &key("a")), None);
    assert!(stored_entry(&store, &key("c")).is_some());
    assert_eq!(store.inner.pointers.len(), 2);
    assert_invariants(&store);

    // All three are found again after a reopen, wherever their pointers were.
    drop(store);
    let store = open(dir.path());
    for name in ["a", "b", "c"] {
        assert!(matches!(
            store.offer(&key(name), &fp(1)).expect("offer"),
            Offer::AlreadyQueued(_)
        ));
    }
    assert_eq!(store.jobs().expect("jobs").len(), 3);
    assert_invariants(&store);
}

#[test]
fn a_walk_merges_the_pointers_in_memory_with_the_entries_across_its_chunks() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    // More than two chunks of ledger entries, with new files (pointers in memory) between
    // them, before the first and after the last, and one uploaded file changed since
    // (its pointer in its entry).
    let count = 2 * VISIT_CHUNK + 50;
    let uploaded = |n: usize| format!("f{n:05}a");
    let new = |n: usize| format!("f{n:05}b");
    for n in 0..count {
        store
            .record_uploaded(&key(&uploaded(n)), &fp(1), &uploaded(n), None)
            .expect("records an upload");
    }
    let new_ones: Vec<usize> = (0..count)
        .filter(|n| n % 7 == 0 || *n == count - 1 || (VISIT_CHUNK - 2..VISIT_CHUNK + 2).contains(n))
        .collect();
    let mut offers: Vec<(FileKey, Fingerprint)> =
        new_ones.iter().map(|&n| (key(&new(n)), fp(1))).collect();
    offers.push((key("a-first"), fp(1)));
    offers.push((key(&uploaded(5)), fp(2)));
    store.offer_many(&offers).expect("offers");
    assert_eq!(store.inner.pointers.len(), new_ones.len() + 1);

    let mut with_job: Vec<String> = new_ones.iter().map(|&n| new(n)).collect();
    with_job.push("a-first".into());
    with_job.push(uploaded(5));
    with_job.sort();
    let mut all: Vec<String> = (0..count).map(uploaded).chain(with_job.clone()).collect();
    all.sort();
    all.dedup();
    let walked = |pick| {
        store
            .files_picked("/data/in", "", pick)
            .expect("the walk reads")
    };
    assert_eq!(walked(FilePick::WithJob), with_job);
    assert_eq!(walked(FilePick::WithJobOrUploaded), all);
    assert_eq!(
        walked(FilePick::Uploaded),
        (0..count).map(uploaded).collect::<Vec<_>>()
    );
}

#[test]
fn offers_of_the_same_new_files_racing_create_one_job_per_file() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let files: Vec<(FileKey, Fingerprint)> = (0..64)
        .map(|n| (key(&format!("race{n:02}")), fp(1)))
        .collect();
    for round in 0..20 {
        let offered: Vec<Vec<Offer>> = thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|racer| {
                    let store = &store;
                    let files = &files;
                    scope.spawn(move || {
                        // Each racer offers the files in its own order, one batch or one
                        // by one, so that their transactions interleave.
                        if racer % 2 == 0 {
                            store.offer_many(files).expect("offers")
                        } else {
                            files
                                .iter()
                                .rev()
                                .map(|(file, fingerprint)| {
                                    store.offer(file, fingerprint).expect("offer")
                                })
                                .collect()
                        }
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().expect("the racer ends"))
                .collect()
        });
        let jobs = store.jobs().expect("jobs");
        assert_eq!(jobs.len(), files.len(), "round {round}: one job per file");
        let queued = offered
            .iter()
            .flatten()
            .filter(|offer| matches!(offer, Offer::Queued(_)))
            .count();
        assert_eq!(queued, files.len(), "round {round}: each file queued once");
        assert_invariants(&store);
        for job in jobs {
            assert_eq!(
                store.drop_vanished(&job.key).expect("drops"),
                Some("queued")
            );
        }
    }
}

#[test]
fn a_claim_of_a_job_whose_pointer_is_not_yet_kept_waits_for_it_instead_of_writing_an_entry() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let (reached, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel();
    store.inner.pointers.set_gate(Gate {
        reached,
        release: released,
    });
    let file = key("new.csv");
    let claimed = thread::scope(|scope| {
        let offer = scope.spawn(|| store.offer(&file, &fp(1)).expect("offer"));
        held.recv()
            .expect("the offer is held after its commit, before its pointer applies");
        let claim = scope.spawn(|| store.claim(SystemTime::now()).expect("claim works"));
        // The claim either runs again among the offers (and waits for this one) or, if it
        // wrote the entry the pointer is about to double, ends on its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.inner.pointers.rerun.load(Ordering::Relaxed) == 0 && !claim.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim did neither"
            );
            thread::yield_now();
        }
        release.send(()).expect("the offer waits at the gate");
        queued_id(offer.join().expect("the offer ends"));
        claim.join().expect("the claim ends")
    });
    let claimed = claimed.expect("the new file's job was due");
    assert_eq!(claimed.key, file);
    assert_eq!(
        stored_entry(&store, &file),
        None,
        "no ledger write before the upload"
    );
    assert_invariants(&store);
    assert_eq!(store.inner.pointers.rerun.load(Ordering::Relaxed), 1);
}

#[test]
fn small_new_files_in_batches_cost_three_writes_each_and_a_few_per_batch() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let count = 3_000;
    let files: Vec<(FileKey, Fingerprint)> = (0..count)
        .map(|n| (key(&format!("small{n:05}")), fp(1)))
        .collect();
    let before = store.writes();
    let mut offers = 0;
    for offer in files.chunks(256) {
        store.offer_many(offer).expect("offers");
        offers += 1;
    }
    let offered = store.writes() - before;
    // Batches as a worker claims them (module `claim`): the first job, then up to 999 more.
    let (mut batches, mut claim_writes, mut completion_writes) = (0, 0, 0);
    loop {
        let start = store.writes();
        let batch = claim_batch_as_claimed(&store, 999);
        if batch.is_empty() {
            break;
        }
        let claimed_at = store.writes();
        store.complete_many(&completed(&batch)).expect("completes");
        claim_writes += claimed_at - start;
        completion_writes += store.writes() - claimed_at;
        batches += 1;
    }
    assert_eq!(batches, 3);
    assert_eq!(
        offered,
        count + offers,
        "an offer: each file's job, and its folder's counts once per batch"
    );
    assert_eq!(
        completion_writes,
        2 * count + batches,
        "a completion: each file's ledger entry and its job's removal, the counts once"
    );
    assert!(
        claim_writes <= 4 * batches,
        "a batch's claim writes its first job and moves its folder's mark over the rest, \
         with the counts: {claim_writes} writes"
    );
    assert_invariants(&store);
}

#[test]
fn a_rebuild_recording_an_upload_and_an_offer_of_the_same_new_file_never_both_win() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for round in 0..10 {
        let files: Vec<(FileKey, Fingerprint)> = (0..64)
            .map(|n| (key(&format!("r{round}/f{n:02}")), fp(1)))
            .collect();
        let (offered, recorded): (Vec<Offer>, Vec<bool>) = thread::scope(|scope| {
            let offers = scope.spawn(|| {
                files
                    .iter()
                    .map(|(file, fingerprint)| store.offer(file, fingerprint).expect("offer"))
                    .collect()
            });
            let records = scope.spawn(|| {
                files
                    .iter()
                    .map(|(file, fingerprint)| {
                        store
                            .record_uploaded(file, fingerprint, "remote", None)
                            .expect("records")
                    })
                    .collect()
            });
            (
                offers.join().expect("the offers end"),
                records.join().expect("the records end"),
            )
        });
        for (n, (offer, recorded)) in offered.iter().zip(&recorded).enumerate() {
            // Serialized, one of the two came first: either the offer found the
            // recorded upload, or the record found the offer's job.
            assert!(
                !(matches!(offer, Offer::Queued(_)) && *recorded),
                "round {round}, file {n}: queued again and recorded as uploaded"
            );
        }
        assert_invariants(&store);
    }
}
