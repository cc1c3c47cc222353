//! Walking a folder's files through their ledger entries (module `files`): every picked
//! file once and in order across the chunks a walk reads, none of another folder.

use std::ops::ControlFlow;

use super::super::files::VISIT_CHUNK;
use super::*;

fn walked(store: &Store, folder: &str, under: &str, pick: FilePick) -> Vec<String> {
    store
        .files_picked(folder, under, pick)
        .expect("the walk reads the ledger")
}

/// Fails with the first place where `walked` and `expected` part (the lists are long).
fn assert_walked(walked: &[String], expected: &[String], what: &str) {
    if let Some(at) =
        (0..walked.len().max(expected.len())).find(|&i| walked.get(i) != expected.get(i))
    {
        panic!(
            "{what}: {} files walked, {} expected; first difference at {at}: {:?} walked, {:?} expected",
            walked.len(),
            expected.len(),
            walked.get(at),
            expected.get(at)
        );
    }
}

#[test]
fn a_walk_hands_on_every_picked_file_once_in_order_across_its_chunks() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    // More than two chunks of entries; every hundredth file uploaded without a job, half of
    // those then changed (a job beside the upload), so unpicked entries fall on both sides
    // of the chunk boundaries.
    let count = 2 * VISIT_CHUNK + 300;
    let name = |n: usize| format!("f{n:05}");
    let (mut with_job, mut uploaded) = (Vec::new(), Vec::new());
    let mut offers = Vec::new();
    for n in 0..count {
        if n % 100 == 1 {
            store
                .record_uploaded(&key(&name(n)), &fp(1), &name(n), None)
                .expect("records an upload");
            uploaded.push(name(n));
            if n % 200 == 1 {
                offers.push((key(&name(n)), fp(2)));
                with_job.push(name(n));
            }
        } else {
            offers.push((key(&name(n)), fp(1)));
            with_job.push(name(n));
        }
    }
    let neighbour = FileKey::new("/data/in2", "f00000");
    offers.push((neighbour, fp(1)));
    for batch in offers.chunks(1_000) {
        store.offer_many(batch).expect("offers");
    }
    let all: Vec<String> = (0..count).map(name).collect();

    let folder = |pick| walked(&store, "/data/in", "", pick);
    assert_walked(&folder(FilePick::WithJob), &with_job, "with a job");
    assert_walked(&folder(FilePick::Uploaded), &uploaded, "uploaded");
    assert_walked(&folder(FilePick::WithJobOrUploaded), &all, "either");
    let under: Vec<String> = all
        .iter()
        .filter(|rel| rel.starts_with("f04"))
        .cloned()
        .collect();
    let walked_under = walked(&store, "/data/in", "f04", FilePick::WithJobOrUploaded);
    assert_walked(&walked_under, &under, "under f04");
    assert_eq!(
        walked(&store, "/data/in2", "", FilePick::WithJob),
        ["f00000"]
    );
    assert!(walked(&store, "/data/i", "", FilePick::WithJobOrUploaded).is_empty());
}

#[test]
fn a_walk_of_uploads_hands_on_each_with_its_entry_across_chunks_until_told_to_stop() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let count = 2 * VISIT_CHUNK + 7;
    let name = |n: usize| format!("f{n:05}");
    let mut offers = Vec::new();
    for n in 0..count {
        if n % 50 == 3 {
            // A file never uploaded: its entry names only its job, and is passed over.
            offers.push((key(&name(n)), fp(1)));
        } else {
            store
                .record_uploaded(&key(&name(n)), &fp(n as u64), &format!("r/{n}"), None)
                .expect("records an upload");
        }
    }
    store.offer_many(&offers).expect("offers");
    let uploaded: Vec<usize> = (0..count).filter(|n| n % 50 != 3).collect();

    let mut seen = Vec::new();
    store
        .visit_uploads("/data/in", "", |rel, entry| {
            seen.push((rel.to_owned(), entry.remote, entry.fingerprint));
            ControlFlow::Continue(())
        })
        .expect("the walk reads the ledger");
    let expected: Vec<_> = uploaded
        .iter()
        .map(|&n| (name(n), format!("r/{n}"), fp(n as u64)))
        .collect();
    assert_eq!(seen.len(), expected.len());
    if let Some(at) = (0..seen.len()).find(|&i| seen[i] != expected[i]) {
        panic!(
            "first difference at {at}: {:?}, expected {:?}",
            seen[at], expected[at]
        );
    }

    // Told to stop after a chunk and a half, it reads no further.
    let stop_after = VISIT_CHUNK + VISIT_CHUNK / 2;
    let mut handed = 0;
    store
        .visit_uploads("/data/in", "", |_, _| {
            handed += 1;
            if handed == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("the walk reads the ledger");
    assert_eq!(handed, stop_after);
}
