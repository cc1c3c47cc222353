//! Walking a folder's files through their ledger entries (module `files`): every picked
//! file once and in order across the chunks a walk reads, none of another folder.

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
