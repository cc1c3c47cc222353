//! Ledger entries written before change times were kept (module `stamp`): a look matches
//! them and only notes their folder; the walk after it gives them their files' change
//! times, step by step, loses to an upload that lands meanwhile and passes over an entry
//! that does not decode.

use super::super::files::VISIT_CHUNK;
use super::*;

#[test]
fn a_ledger_entry_without_ctime_matches_on_the_rest_and_is_stamped_by_the_walk_after_the_look() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let elsewhere = FileKey::new("/data/in2", "scanned.csv");
    for key in ["scanned.csv", "offered.csv", "gone.csv", "changed.csv"]
        .map(key)
        .into_iter()
        .chain([elsewhere.clone()])
    {
        assert!(
            store
                .record_uploaded(&key, &without_ctime(fp(1)), "ingest/x", Some("abc"))
                .expect("the ledger writes")
        );
    }
    let ledger_fp = |key: &FileKey| {
        store
            .ledger_get(key)
            .expect("the ledger reads")
            .expect("recorded")
            .fingerprint
    };
    // Another size, mtime or inode is another version, whatever the change time.
    let other = Fingerprint {
        mtime_ns: 7,
        ..fp(1)
    };
    assert!(
        !store
            .is_uploaded(&key("scanned.csv"), &other)
            .expect("reads")
    );
    assert!(!store.take_unstamped("/data/in"), "no match, nothing noted");
    // The scan's question matches and notes the folder, once, but writes nothing.
    assert!(
        store
            .is_uploaded(&key("scanned.csv"), &fp(1))
            .expect("reads")
    );
    assert_eq!(ledger_fp(&key("scanned.csv")), without_ctime(fp(1)));
    assert!(store.take_unstamped("/data/in"));
    assert!(!store.take_unstamped("/data/in"));
    assert!(!store.take_unstamped("/data/in2"));
    // An offer matches and writes the change time back in its own transaction.
    assert_eq!(
        store
            .offer(&key("offered.csv"), &fp(1))
            .expect("offer works"),
        Offer::UpToDate
    );
    assert_eq!(ledger_fp(&key("offered.csv")), fp(1));
    // The walk stamps the entries whose files are still the version they record, and
    // only the folder's.
    let mut looked = Vec::new();
    let step = store
        .stamp_step("/data/in", None, |rel| {
            looked.push(rel.to_owned());
            match rel {
                "gone.csv" => None,
                "changed.csv" => Some(other),
                _ => Some(fp(1)),
            }
        })
        .expect("the walk reads and writes");
    assert_eq!(step.stamped, 1);
    assert_eq!(step.next, None, "four entries are one step");
    assert_eq!(looked, ["changed.csv", "gone.csv", "scanned.csv"]);
    assert_eq!(ledger_fp(&key("scanned.csv")), fp(1));
    for unchanged in [key("gone.csv"), key("changed.csv"), elsewhere] {
        assert_eq!(ledger_fp(&unchanged), without_ctime(fp(1)));
    }
    // From then on, a new change time is a new version.
    let chmodded = Fingerprint {
        ctime_ns: Some(99),
        ..fp(1)
    };
    assert!(
        !store
            .is_uploaded(&key("scanned.csv"), &chmodded)
            .expect("reads")
    );
    assert!(matches!(
        store
            .offer(&key("offered.csv"), &chmodded)
            .expect("offer works"),
        Offer::Queued(_)
    ));
    let entry = store.ledger_get(&key("offered.csv")).unwrap().unwrap();
    assert_eq!(
        (entry.remote.as_str(), entry.md5.as_deref()),
        ("ingest/x", Some("abc"))
    );
    assert_invariants(&store);
}

#[test]
fn the_stamping_walk_goes_on_where_its_last_step_ended_and_loses_to_a_new_upload() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    let count = VISIT_CHUNK + 10;
    let rel = |n: usize| format!("f{n:05}.csv");
    for n in 0..count {
        store
            .record_uploaded(&key(&rel(n)), &without_ctime(fp(1)), "r", None)
            .expect("the ledger writes");
    }
    let mut steps = 0;
    let mut stamped = 0;
    let mut from = None;
    loop {
        let step = store
            .stamp_step("/data/in", from.as_ref(), |rel| {
                // An upload of a new version lands between the look and the rewrite.
                if rel == "f00003.csv" {
                    store
                        .record_uploaded(&key(rel), &fp(2), "r", None)
                        .expect("the ledger writes");
                }
                Some(fp(1))
            })
            .expect("the walk reads and writes");
        steps += 1;
        stamped += step.stamped;
        from = step.next;
        if from.is_none() {
            break;
        }
    }
    assert_eq!(steps, 2);
    assert_eq!(stamped, count as u64 - 1);
    let recorded = |n: usize| {
        store
            .ledger_get(&key(&rel(n)))
            .unwrap()
            .unwrap()
            .fingerprint
    };
    assert_eq!(recorded(3), fp(2), "the upload wins");
    for n in [0, VISIT_CHUNK - 1, VISIT_CHUNK, count - 1] {
        assert_eq!(recorded(n), fp(1));
    }
    assert_invariants(&store);
}

#[test]
fn the_stamping_walk_passes_over_an_entry_that_does_not_decode() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = open(dir.path());
    for rel in ["a.csv", "c.csv"] {
        store
            .record_uploaded(&key(rel), &without_ctime(fp(1)), "r", None)
            .expect("the ledger writes");
    }
    let garbled = file_key(&key("b.csv")).expect("a valid key");
    store
        .handles()
        .trees
        .ledger
        .insert(&garbled, &b"{\"fingerprint\": 7"[..])
        .expect("the ledger writes");
    let step = store
        .stamp_step("/data/in", None, |_| Some(fp(1)))
        .expect("the walk reads past the entry");
    assert_eq!(step.stamped, 2);
    for rel in ["a.csv", "c.csv"] {
        let entry = store.ledger_get(&key(rel)).unwrap().unwrap();
        assert_eq!(entry.fingerprint, fp(1));
    }
}
