//! The queue as a folder's sink: what a whole-folder scan asks it at its end.

use std::time::Duration;

use super::{DeletingSink, Sink};
use crate::config::{DeletePolicy, FolderConfig, OnDelete, Target};
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

/// What `sink` hands a walk of `folder` under `under`.
fn tracked(sink: &dyn Sink, folder: &str, under: &str) -> Vec<String> {
    let mut files = Vec::new();
    sink.visit_tracked(folder, under, &mut |rel| files.push(rel.to_owned()));
    files
}

#[test]
fn the_queue_tracks_the_folders_jobs_and_nothing_for_a_folder_without_any() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a new store opens");
    let folder = "/data/in";
    let uploaded = FileKey::new(folder, "a/done.csv");
    store
        .record_uploaded(&uploaded, &fingerprint(), "in/a/done.csv", None)
        .expect("record an upload");
    assert!(
        tracked(&store, folder, "").is_empty(),
        "an uploaded file has no job"
    );

    Sink::offer(&store, &FileKey::new(folder, "a/new.csv"), &fingerprint());
    assert_eq!(tracked(&store, folder, ""), ["a/new.csv"]);
    assert_eq!(tracked(&store, folder, "a/"), ["a/new.csv"]);
    assert!(tracked(&store, "/data/other", "").is_empty());
    assert_eq!(Sink::queued(&store, folder), Some(1));
}

#[test]
fn a_sink_that_deletes_remote_copies_tracks_its_uploaded_files_and_jobs_each_once() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a new store opens");
    let folder = "/data/in";
    let config = FolderConfig {
        path: folder.into(),
        target: Target::KifsDirectory {
            directory: "ingest".into(),
            create: false,
        },
        include: vec![],
        exclude: vec![],
        settle: Duration::from_secs(1),
        recursive: true,
        redivis: Default::default(),
        deletes: DeletePolicy {
            on_delete: OnDelete::Delete,
            ..Default::default()
        },
        after_upload: Default::default(),
    };
    let sink = DeletingSink::for_folder(store.clone(), &config);
    for rel in ["a/done.csv", "a/changed.csv"] {
        store
            .record_uploaded(&FileKey::new(folder, rel), &fingerprint(), rel, None)
            .expect("record an upload");
    }
    let changed = Fingerprint {
        size: 2,
        ..fingerprint()
    };
    sink.offer(&FileKey::new(folder, "a/changed.csv"), &changed);
    sink.offer(&FileKey::new(folder, "b/new.csv"), &fingerprint());

    assert_eq!(
        tracked(&*sink, folder, ""),
        ["a/changed.csv", "a/done.csv", "b/new.csv"]
    );
    assert_eq!(tracked(&*sink, folder, "b/"), ["b/new.csv"]);
    assert_eq!(
        tracked(&store, folder, ""),
        ["a/changed.csv", "b/new.csv"],
        "the queue alone tracks the files with jobs"
    );
}
