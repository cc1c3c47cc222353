//! The queue as a folder's sink: what a whole-folder scan asks it at its end.

use super::Sink;
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Store};

fn fingerprint() -> Fingerprint {
    Fingerprint {
        size: 1,
        mtime_ns: 1_700_000_000_000_000_000,
        inode: 7,
        ctime_ns: Some(1_700_000_000_000_000_000),
    }
}

#[test]
fn pending_files_lists_the_folders_jobs_and_nothing_for_a_folder_without_any() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a new store opens");
    let folder = "/data/in";
    let uploaded = FileKey::new(folder, "a/done.csv");
    store
        .record_uploaded(&uploaded, &fingerprint(), "in/a/done.csv", None)
        .expect("record an upload");
    assert!(
        Sink::pending_files(&store, folder, "").is_empty(),
        "an uploaded file has no job"
    );

    Sink::offer(&store, &FileKey::new(folder, "a/new.csv"), &fingerprint());
    assert_eq!(Sink::pending_files(&store, folder, ""), vec!["a/new.csv"]);
    assert_eq!(Sink::pending_files(&store, folder, "a/"), vec!["a/new.csv"]);
    assert!(Sink::pending_files(&store, "/data/other", "").is_empty());
    assert_eq!(Sink::queued(&store, folder), Some(1));
}
