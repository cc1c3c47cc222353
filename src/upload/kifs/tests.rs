//! Component tests: the KiFS backend against the in-process emulator over loopback HTTP.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::body::Source;
use super::multipart::multipart_progress;
use super::*;
use crate::config::FolderConfig;
use crate::emulator::{self, EmulatorOptions};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, LedgerEntry, Store};
use crate::upload::LiveProgress;
use crate::upload::retry::CallScope;

/// An emulator with KiFS directory `dir`, a backend for it, and a store of jobs.
async fn setup(
    root: &Path,
    encoding: KifsEncoding,
) -> (emulator::RunningEmulator, KifsBackend, Store) {
    setup_with(root, encoding, |_| {}).await
}

/// [`setup`], with the emulator's options changed by `adjust` (its test hooks).
async fn setup_with(
    root: &Path,
    encoding: KifsEncoding,
    adjust: impl FnOnce(&mut EmulatorOptions),
) -> (emulator::RunningEmulator, KifsBackend, Store) {
    let mut options = EmulatorOptions::with_data_dir(root.join("remote"));
    options.kifs.kifs_directories = vec!["dir".into()];
    adjust(&mut options);
    let running = emulator::start("127.0.0.1:0", options)
        .await
        .expect("the emulator starts on a free port");
    let backend = KifsBackend::new(
        &KifsConfig {
            url: format!("http://{}/kifs", running.addr),
            auth: KifsAuth::None,
            encoding,
            net: crate::config::NetConfig::default(),
        },
        Bandwidth::unlimited(),
    )
    .expect("the backend builds");
    let store = Store::open(&root.join("state")).expect("the store opens");
    (running, backend, store)
}

/// A claimed job for `rel` under `root/inbox` holding `data`.
fn job(root: &Path, store: &Store, rel: &str, data: &[u8]) -> UploadJob {
    let folder = root.join("inbox");
    let path = folder.join(rel);
    std::fs::create_dir_all(path.parent().expect("a file has a parent"))
        .expect("the inbox can be created");
    std::fs::write(&path, data).expect("the file can be written");
    let fingerprint = Fingerprint::read(&path).expect("the file stats");
    let key = FileKey::new(folder.to_string_lossy(), rel);
    store.offer(&key, &fingerprint).expect("offer works");
    claim(root, store, rel)
}

/// The due job for `rel` under `root/inbox`, claimed and prepared as a worker does: with
/// the file's fingerprint, and whether an earlier attempt saved progress.
fn claim(root: &Path, store: &Store, rel: &str) -> UploadJob {
    let path = root.join("inbox").join(rel);
    let claimed = store
        .claim(std::time::SystemTime::now())
        .expect("claim works")
        .expect("the job is due");
    let mut job = UploadJob::new(
        claimed.id,
        path.clone(),
        rel.to_string(),
        Target::KifsDirectory {
            directory: "dir".into(),
            create: false,
        },
        Fingerprint::read(&path).expect("the file stats"),
        false,
        None,
        store.clone(),
        Arc::new(LiveProgress::default()),
        CancellationToken::new(),
    );
    job.saved_progress = store.load_progress(claimed.id).expect("reads").is_some();
    job
}

/// The KiFS emulator's counters.
async fn stats(running: &emulator::RunningEmulator) -> serde_json::Value {
    reqwest::get(format!("http://{}/kifs/_emulator/stats", running.addr))
        .await
        .expect("the stats answer")
        .json()
        .await
        .expect("the stats are JSON")
}

async fn upload_requests(running: &emulator::RunningEmulator) -> u64 {
    stats(running).await["requests"]["/upload/files"]
        .as_u64()
        .expect("the upload counter is a number")
}

#[tokio::test]
async fn a_batch_of_small_files_goes_in_one_request_in_both_encodings() {
    for encoding in [KifsEncoding::Binary, KifsEncoding::Json] {
        let tmp = tempfile::tempdir().expect("a temp dir can be created");
        let root = tmp.path();
        let (running, backend, store) = setup(root, encoding).await;
        let contents: Vec<Vec<u8>> = (0..20u8)
            .map(|i| (0..(i as usize * 997)).map(|b| (b as u8) ^ i).collect())
            .collect();
        let mut jobs: Vec<UploadJob> = contents
            .iter()
            .enumerate()
            .map(|(i, data)| job(root, &store, &format!("sub/f{i}.bin"), data))
            .collect();
        let outcomes = backend.upload_batch(&mut jobs).await;
        assert_eq!(upload_requests(&running).await, 1, "{encoding:?}");
        for (i, (outcome, data)) in outcomes.into_iter().zip(&contents).enumerate() {
            let uploaded = outcome.expect("every file of the batch is uploaded");
            assert_eq!(uploaded.remote, format!("dir/sub/f{i}.bin"));
            let stored = emulator::kifs::stored_file_path(
                &root.join("remote").join("kifs"),
                &uploaded.remote,
            );
            assert_eq!(&std::fs::read(stored).expect("the file is stored"), data);
        }
        running.shutdown.cancel();
    }
}

/// A batch sent to a directory that is gone, in a folder that does not create it: every
/// file gets the folder check's answer (which refuses the folder) from the one refused
/// request, none is sent alone; a lone file the same.
#[tokio::test]
async fn a_batch_into_a_directory_gone_gets_the_checks_answer_from_one_request() {
    for files in [5, 1] {
        let tmp = tempfile::tempdir().expect("a temp dir can be created");
        let root = tmp.path();
        let (running, backend, store) = setup_with(root, KifsEncoding::Binary, |options| {
            options.kifs.kifs_directories.clear();
        })
        .await;
        let mut jobs: Vec<UploadJob> = (0..files)
            .map(|i| job(root, &store, &format!("f{i}.csv"), b"a,b\n"))
            .collect();
        let outcomes = backend.upload_batch(&mut jobs).await;
        assert_eq!(upload_requests(&running).await, 1, "{files} file(s)");
        for outcome in outcomes {
            match outcome.expect_err("no file lands") {
                UploadError::Remote {
                    kind: ErrorKind::NotFound,
                    disposition: Disposition::Permanent,
                    message,
                    ..
                } => assert_eq!(
                    message,
                    "KiFS directory 'dir' does not exist (set create_directory = true to create it)"
                ),
                other => panic!("{other:?}"),
            }
        }
        running.shutdown.cancel();
    }
}

/// A batch whose credentials the server rejects: every file gets the refusal from the one
/// request (the credentials are the same for each), none is sent alone.
#[tokio::test]
async fn a_batch_with_rejected_credentials_is_refused_in_one_request() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store) = setup_with(root, KifsEncoding::Binary, |options| {
        options.kifs.kifs_users = vec!["alice:s3cret".parse().expect("a user parses")];
    })
    .await;
    let mut jobs: Vec<UploadJob> = (0..5)
        .map(|i| job(root, &store, &format!("f{i}.csv"), b"a,b\n"))
        .collect();
    let outcomes = backend.upload_batch(&mut jobs).await;
    assert_eq!(upload_requests(&running).await, 1);
    for outcome in outcomes {
        match outcome.expect_err("no file lands") {
            UploadError::Remote {
                kind: ErrorKind::Auth,
                disposition: Disposition::Permanent,
                status: Some(401),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    running.shutdown.cancel();
}

/// The upload of a job claimed from `store` (after a restart), as the worker builds it.
fn reclaimed(root: &Path, store: &Store, previous: Option<LedgerEntry>) -> UploadJob {
    let claimed = store
        .claim(std::time::SystemTime::now())
        .expect("claim works")
        .expect("a job is due");
    let path = root.join("inbox").join(&claimed.key.rel);
    let mut upload = UploadJob::new(
        claimed.id,
        path,
        claimed.key.rel.clone(),
        Target::KifsDirectory {
            directory: "dir".into(),
            create: false,
        },
        claimed.fingerprint,
        false,
        previous,
        store.clone(),
        Arc::new(LiveProgress::default()),
        CancellationToken::new(),
    );
    upload.unconfirmed_since_ms = claimed.unconfirmed_attempt_ms;
    upload
}

async fn files_stored(running: &emulator::RunningEmulator) -> u64 {
    stats(running).await["files_stored"]
        .as_u64()
        .expect("the stored-files counter is a number")
}

#[tokio::test]
async fn files_sent_without_their_outcome_recorded_are_not_sent_again_after_a_restart() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store) = setup(root, KifsEncoding::Binary).await;
    // Sent, but the state write recording them fails (a full disk) and the daemon
    // stops; a fourth job was claimed and never sent.
    let mut sent = vec![
        job(root, &store, "a.bin", b"first"),
        job(root, &store, "b.bin", b"second"),
        job(root, &store, "c.bin", b"third"),
    ];
    let never_sent = job(root, &store, "d.bin", b"fourth");
    for outcome in backend.upload_batch(&mut sent).await {
        outcome.expect("the batch is uploaded");
    }
    assert_eq!(files_stored(&running).await, 3);
    drop((sent, never_sent));
    drop(store);

    let store = Store::open(&root.join("state")).expect("the store opens again");
    assert_eq!(store.recover_after_restart().expect("recovery works"), 4);
    let mut again: Vec<UploadJob> = (0..4).map(|_| reclaimed(root, &store, None)).collect();
    assert!(again.iter().all(|job| job.unconfirmed_since_ms.is_some()));
    // c.bin was uploaded before with the same size: what KiFS holds may be that old
    // version, so it is sent again.
    let c = again
        .iter_mut()
        .find(|job| job.rel == "c.bin")
        .expect("c.bin");
    c.previous = Some(LedgerEntry {
        fingerprint: Fingerprint {
            ctime_ns: Some(1),
            ..c.fingerprint
        },
        remote: "dir/c.bin".into(),
        md5: None,
        uploaded_at_ms: 1,
    });
    let requests_before = upload_requests(&running).await;
    for (outcome, job) in backend
        .upload_batch(&mut again)
        .await
        .into_iter()
        .zip(&again)
    {
        let uploaded = outcome.expect("every job ends uploaded");
        assert_eq!(uploaded.remote, format!("dir/{}", job.rel));
    }
    assert_eq!(upload_requests(&running).await - requests_before, 1);
    assert_eq!(files_stored(&running).await, 5, "d.bin, and c.bin again");
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_file_that_changed_or_has_a_bad_name_leaves_the_batch_alone() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store) = setup(root, KifsEncoding::Binary).await;
    let mut jobs = vec![
        job(root, &store, "a.bin", b"first"),
        job(root, &store, "b.bin", b"second"),
        job(root, &store, "bad_name.bin", b"third"),
    ];
    // b.bin is rewritten after its job was claimed.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(root.join("inbox/b.bin"), b"second, longer").expect("rewrite");
    let outcomes = backend.upload_batch(&mut jobs).await;
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(outcomes[1], Err(UploadError::Changed)),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(
            &outcomes[2],
            Err(UploadError::Remote { disposition: Disposition::Permanent, message, .. }) if message.contains('_')
        ),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(upload_requests(&running).await, 1);
    running.shutdown.cancel();
}

/// A file rewritten after its bytes went out, while the answer is on its way: its outcome
/// is the version the body carried, which was read whole and checked as it was read. The
/// rewrite is a new version, which the watcher offers; no look at the path after the
/// answer turns the upload that happened into a change.
#[tokio::test]
async fn a_file_rewritten_after_its_bytes_went_out_is_recorded_as_the_version_sent() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store) = setup(root, KifsEncoding::Binary).await;
    let mut jobs = vec![
        job(root, &store, "a.bin", b"first"),
        job(root, &store, "b.bin", b"second"),
    ];
    let hold_answer = serde_json::json!({"target": "kifs", "action": {"delay_ms": 1500}});
    reqwest::Client::new()
        .post(format!("http://{}/_emulator/faults", running.addr))
        .json(&hold_answer)
        .send()
        .await
        .expect("the emulator takes the fault")
        .error_for_status()
        .expect("the fault is valid");
    let sending = tokio::spawn(async move {
        let outcomes = backend.upload_batch(&mut jobs).await;
        (outcomes, jobs)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while files_stored(&running).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch is never stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(root.join("inbox/b.bin"), b"second, rewritten").expect("rewrite");
    assert!(!sending.is_finished(), "the answer came before the rewrite");
    let (outcomes, jobs) = sending.await.expect("the upload does not panic");
    for (outcome, job) in outcomes.into_iter().zip(&jobs) {
        let uploaded = outcome.expect("each file is uploaded as the version sent");
        assert_eq!(uploaded.remote, format!("dir/{}", job.rel));
    }
    assert_eq!(stored(root, "dir/b.bin"), b"second");
    running.shutdown.cancel();
}

#[tokio::test]
async fn rejected_credentials_are_named_as_such_and_a_missing_directory_keeps_its_hint() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let mut options = EmulatorOptions::with_data_dir(tmp.path().join("remote"));
    options.kifs.kifs_users = vec!["alice:s3cret".parse().expect("a user parses")];
    let running = emulator::start("127.0.0.1:0", options)
        .await
        .expect("the emulator starts on a free port");
    let backend = |password: &str| {
        KifsBackend::new(
            &KifsConfig {
                url: format!("http://{}/kifs", running.addr),
                auth: KifsAuth::Basic {
                    username: "alice".into(),
                    password: crate::config::Secret::new(password),
                },
                encoding: KifsEncoding::Binary,
                net: crate::config::NetConfig::default(),
            },
            Bandwidth::unlimited(),
        )
        .expect("the backend builds")
    };
    let folder = |create: bool| FolderConfig {
        path: tmp.path().join("inbox"),
        target: Target::KifsDirectory {
            directory: "missing".into(),
            create,
        },
        include: vec![],
        exclude: vec![],
        settle: Duration::from_secs(1),
        recursive: true,
        redivis: Default::default(),
        deletes: Default::default(),
        after_upload: Default::default(),
    };
    for create in [false, true] {
        let err = backend("wrong")
            .prepare_folder(&folder(create), &CallScope::default())
            .await
            .expect_err("wrong credentials stop the start");
        let message = err.to_string();
        assert!(message.contains("rejected the credentials"), "{message}");
        assert!(!message.contains("create_directory"), "{message}");
    }
    assert_eq!(
        stats(&running).await["requests"]["/create/directory"],
        0,
        "no directory is created with credentials the server refuses"
    );
    let err = backend("s3cret")
        .prepare_folder(&folder(false), &CallScope::default())
        .await
        .expect_err("the directory is missing");
    assert!(
        err.to_string()
            .contains("(set create_directory = true to create it)"),
        "{err}"
    );
    running.shutdown.cancel();
}

/// Parts of this size in the tests below, so a multipart upload needs only a few KiB.
const SMALL_PART: u64 = 1000;

/// The counter of one multipart operation.
async fn multipart_count(running: &emulator::RunningEmulator, operation: &str) -> u64 {
    stats(running).await["multipart_operations"][operation]
        .as_u64()
        .expect("the operation counter is a number")
}

/// An upload of `target` started by an earlier attempt, left on the server with its
/// first part, and its saved state as that attempt recorded it for `fingerprint`.
async fn earlier_attempt(
    backend: &KifsBackend,
    job: &UploadJob,
    fingerprint: Fingerprint,
    data: &[u8],
) -> MultipartState {
    let state = MultipartState {
        uuid: uuid::Uuid::new_v4().to_string(),
        target: "dir/big.bin".into(),
        fingerprint,
        part_size: SMALL_PART,
        last_part: 1,
    };
    backend
        .multipart_step(&state.target, &state.uuid, "init", None, None)
        .await
        .expect("init");
    let part = Source::opened(
        Arc::new(FileReader::open(&job.path, &job.fingerprint).expect("the file opens")),
        job.path.clone(),
        job.fingerprint,
        0,
        SMALL_PART.min(data.len() as u64),
    );
    backend
        .multipart_step(
            &state.target,
            &state.uuid,
            "upload_part",
            Some(1),
            Some(part),
        )
        .await
        .expect("part 1");
    job.save_progress(&state).expect("the state is saved");
    state
}

fn stored(root: &Path, name: &str) -> Vec<u8> {
    std::fs::read(emulator::kifs::stored_file_path(
        &root.join("remote").join("kifs"),
        name,
    ))
    .expect("the file is stored")
}

#[tokio::test]
async fn a_saved_upload_of_another_version_still_in_progress_is_cancelled_then_started_afresh() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup(root, KifsEncoding::Binary).await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let mut job = job(root, &store, "big.bin", &data);
    let older = Fingerprint {
        size: 2400,
        ..job.fingerprint
    };
    let stale = earlier_attempt(&backend, &job, older, &data).await;

    backend.upload(&mut job).await.expect("the upload succeeds");

    assert_eq!(
        multipart_count(&running, "cancel").await,
        1,
        "the stale UUID"
    );
    assert_eq!(
        multipart_count(&running, "init").await,
        2,
        "the stale one, then ours"
    );
    assert_eq!(multipart_count(&running, "complete").await, 1);
    assert_eq!(stored(root, "dir/big.bin"), data);
    let shown = backend
        .show_file("dir/big.bin", &CallScope::default())
        .await
        .expect("show works");
    assert_eq!(multipart_progress(&shown, &stale.uuid), None);
    assert_eq!(job.load_progress::<MultipartState>().expect("loads"), None);
    running.shutdown.cancel();
}

/// An attempt at `big.bin` ends for a transient reason (the worker's `retry_later`) after
/// a new version, small enough to go whole, was offered while it ran: its saved upload is
/// kept for the next attempt, which cancels it on the server before sending the new
/// version whole (no `init` of the target follows to cancel it).
#[tokio::test]
async fn an_attempt_that_ends_transiently_after_a_new_version_leaves_its_upload_to_cancel() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup(root, KifsEncoding::Binary).await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 233) as u8).collect();
    let job = job(root, &store, "big.bin", &data);
    let stale = earlier_attempt(&backend, &job, job.fingerprint, &data).await;
    let small = b"a new version small enough to go whole";
    std::fs::write(&job.path, small).expect("the file is rewritten");
    let key = FileKey::new(root.join("inbox").to_string_lossy(), "big.bin");
    let new_version = Fingerprint::read(&job.path).expect("the file stats");
    store.offer(&key, &new_version).expect("offer works");
    store
        .retry_later(job.id, std::time::SystemTime::now(), "HTTP 503")
        .expect("retry_later works");

    let mut next = claim(root, &store, "big.bin");
    backend
        .upload(&mut next)
        .await
        .expect("the upload succeeds");

    assert_eq!(multipart_count(&running, "cancel").await, 1);
    assert_eq!(stats(&running).await["replies"]["error"], 0);
    assert_eq!(
        uploads_in_progress(&backend).await,
        Vec::<String>::new(),
        "{} is gone",
        stale.uuid
    );
    assert_eq!(next.load_progress::<MultipartState>().expect("loads"), None);
    assert_eq!(stored(root, "dir/big.bin"), small);
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_saved_upload_the_server_still_holds_is_resumed_after_its_last_part() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup(root, KifsEncoding::Binary).await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 241) as u8).collect();
    let mut job = job(root, &store, "big.bin", &data);
    earlier_attempt(&backend, &job, job.fingerprint, &data).await;

    backend.upload(&mut job).await.expect("the upload succeeds");

    assert_eq!(multipart_count(&running, "cancel").await, 0);
    assert_eq!(
        multipart_count(&running, "init").await,
        1,
        "the same upload"
    );
    assert_eq!(
        multipart_count(&running, "upload_part").await,
        3,
        "part 1 once"
    );
    assert_eq!(stored(root, "dir/big.bin"), data);
    assert_eq!(
        job.live.sent_by_attempt(data.len() as u64),
        data.len() as u64 - SMALL_PART,
        "the attempt sent the parts after the earlier attempt's"
    );
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_finalizing_job_whose_complete_went_through_sends_nothing_more() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup(root, KifsEncoding::Binary).await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..1800u32).map(|i| (i % 239) as u8).collect();
    let mut job = job(root, &store, "big.bin", &data);
    let state = earlier_attempt(&backend, &job, job.fingerprint, &data).await;
    let rest = Source::opened(
        Arc::new(FileReader::open(&job.path, &job.fingerprint).expect("the file opens")),
        job.path.clone(),
        job.fingerprint,
        SMALL_PART,
        data.len() as u64 - SMALL_PART,
    );
    backend
        .multipart_step(
            &state.target,
            &state.uuid,
            "upload_part",
            Some(2),
            Some(rest),
        )
        .await
        .expect("part 2");
    job.save_progress(&MultipartState {
        last_part: 2,
        ..state.clone()
    })
    .expect("saved");
    job.mark_finalizing().expect("finalizing is saved");
    // The complete took effect; its answer never reached the attempt that sent it.
    backend
        .multipart_step(&state.target, &state.uuid, "complete", None, None)
        .await
        .expect("complete");
    let requests_before = upload_requests(&running).await;

    backend
        .upload(&mut job)
        .await
        .expect("the upload is reconciled");

    assert_eq!(
        upload_requests(&running).await,
        requests_before,
        "nothing sent"
    );
    assert_eq!(
        job.live.sent_by_attempt(data.len() as u64),
        0,
        "the attempt tells it sent none of the bytes"
    );
    assert_eq!(multipart_count(&running, "complete").await, 1);
    assert_eq!(stored(root, "dir/big.bin"), data);
    assert_eq!(job.load_progress::<MultipartState>().expect("loads"), None);
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_finalizing_job_finding_another_size_at_its_target_uploads_again() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup(root, KifsEncoding::Binary).await;
    backend.part_size = SMALL_PART;
    // An older, shorter version is at the target; our complete never arrived.
    let old = job(root, &store, "old.bin", b"an older version");
    let old_uuid = uuid::Uuid::new_v4().to_string();
    let old_bytes = Source::opened(
        Arc::new(FileReader::open(&old.path, &old.fingerprint).expect("the file opens")),
        old.path.clone(),
        old.fingerprint,
        0,
        old.fingerprint.size,
    );
    for (operation, part, data) in [
        ("init", None, None),
        ("upload_part", Some(1), Some(old_bytes)),
        ("complete", None, None),
    ] {
        backend
            .multipart_step("dir/big.bin", &old_uuid, operation, part, data)
            .await
            .expect("the older version is uploaded");
    }
    let data: Vec<u8> = (0..1800u32).map(|i| (i % 233) as u8).collect();
    let mut job = job(root, &store, "big.bin", &data);
    let state = earlier_attempt(&backend, &job, job.fingerprint, &data).await;
    backend
        .multipart_step(&state.target, &state.uuid, "cancel", None, None)
        .await
        .expect("cancel");
    job.mark_finalizing().expect("finalizing is saved");

    backend.upload(&mut job).await.expect("the upload succeeds");

    assert_eq!(multipart_count(&running, "init").await, 3, "started afresh");
    assert_eq!(
        multipart_count(&running, "complete").await,
        2,
        "the old one, ours"
    );
    assert_eq!(stored(root, "dir/big.bin"), data);
    running.shutdown.cancel();
}

/// An emulator whose answers to `upload_part` are held back, a backend with small parts,
/// and a job for `big.bin` of three parts.
async fn setup_mid_upload(
    root: &Path,
) -> (emulator::RunningEmulator, KifsBackend, Store, UploadJob) {
    let (running, mut backend, store) = setup_with(root, KifsEncoding::Binary, |options| {
        options.kifs.kifs_answer_delays = vec!["upload_part=400".parse().expect("a hook")];
    })
    .await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 229) as u8).collect();
    let job = job(root, &store, "big.bin", &data);
    (running, backend, store, job)
}

/// Waits until the emulator applied the first part (its answer is still held back), then
/// returns the UUID the upload saved and runs `meanwhile`.
async fn after_first_part(
    running: &emulator::RunningEmulator,
    store: &Store,
    id: crate::queue::JobId,
    meanwhile: impl FnOnce(),
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while multipart_count(running, "upload_part").await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no part arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let raw = store
        .load_progress(id)
        .expect("progress reads")
        .expect("the upload saved its UUID before init");
    let saved: MultipartState = serde_json::from_slice(&raw).expect("the state parses");
    meanwhile();
    saved.uuid
}

/// The UUIDs of the uploads of `dir/big.bin` the emulator still has in progress.
async fn uploads_in_progress(backend: &KifsBackend) -> Vec<String> {
    let shown = backend
        .show_file("dir/big.bin", &CallScope::default())
        .await
        .expect("show works");
    let Some(raw) = shown.info.get("multipart_uploads") else {
        return Vec::new();
    };
    let uploads: Vec<serde_json::Value> = serde_json::from_str(raw).expect("a JSON array");
    uploads
        .iter()
        .map(|upload| upload["uuid"].as_str().expect("a UUID").to_string())
        .collect()
}

/// One cancel, of an upload the server had; nothing left in progress there; nothing saved
/// to resume.
async fn assert_cancelled_and_forgotten(
    running: &emulator::RunningEmulator,
    backend: &KifsBackend,
    job: &UploadJob,
    uuid: &str,
) {
    assert_eq!(multipart_count(running, "cancel").await, 1);
    assert_eq!(
        stats(running).await["replies"]["error"],
        0,
        "the cancel named an upload the server had"
    );
    assert_eq!(
        uploads_in_progress(backend).await,
        Vec::<String>::new(),
        "{uuid} is gone"
    );
    assert_eq!(job.load_progress::<MultipartState>().expect("loads"), None);
}

#[tokio::test]
async fn a_file_deleted_mid_upload_has_its_upload_cancelled_and_forgotten() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store, mut job) = setup_mid_upload(root).await;
    let (id, path) = (job.id, job.path.clone());

    let (outcome, uuid) = tokio::join!(
        backend.upload(&mut job),
        after_first_part(&running, &store, id, || std::fs::remove_file(&path)
            .expect("the file is deleted"))
    );

    assert!(
        matches!(outcome, Err(UploadError::Vanished(_))),
        "the job is dropped as before: {outcome:?}"
    );
    assert_cancelled_and_forgotten(&running, &backend, &job, &uuid).await;
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_file_that_shrinks_mid_upload_has_its_upload_cancelled_and_forgotten() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store, mut job) = setup_mid_upload(root).await;
    let (id, path) = (job.id, job.path.clone());

    let (outcome, uuid) = tokio::join!(
        backend.upload(&mut job),
        after_first_part(&running, &store, id, || std::fs::write(&path, b"shorter")
            .expect("the file is rewritten"))
    );

    assert!(
        matches!(outcome, Err(UploadError::Changed)),
        "the job starts again as before: {outcome:?}"
    );
    assert_cancelled_and_forgotten(&running, &backend, &job, &uuid).await;
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_shutdown_mid_upload_cancels_nothing_and_keeps_the_upload_to_resume() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store, mut job) = setup_mid_upload(root).await;
    let id = job.id;
    let scope = job.scope.clone();

    let (outcome, uuid) = tokio::join!(
        backend.upload(&mut job),
        after_first_part(&running, &store, id, || {
            scope.stop.cancel();
            scope.checkpoint.cancel();
        })
    );

    assert!(matches!(outcome, Err(UploadError::Shutdown)), "{outcome:?}");
    assert_eq!(multipart_count(&running, "cancel").await, 0);
    assert_eq!(uploads_in_progress(&backend).await, vec![uuid.clone()]);
    let saved = job
        .load_progress::<MultipartState>()
        .expect("loads")
        .expect("the progress is kept");
    assert_eq!(saved.uuid, uuid);
    running.shutdown.cancel();
}

/// A stop while the cancel of a vanished file's upload waits for its answer: the attempt
/// ends as interrupted and keeps the upload (the cancel may not have reached the server),
/// so the next start finds the file gone and gives the upload up then.
#[tokio::test]
async fn a_stop_that_cuts_a_cancel_short_keeps_the_upload_for_the_next_start() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, mut backend, store) = setup_with(root, KifsEncoding::Binary, |options| {
        options.kifs.kifs_answer_delays = vec![
            "upload_part=400".parse().expect("a hook"),
            "cancel=5000".parse().expect("a hook"),
        ];
    })
    .await;
    backend.part_size = SMALL_PART;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 227) as u8).collect();
    let mut job = job(root, &store, "big.bin", &data);
    let (id, path, scope) = (job.id, job.path.clone(), job.scope.clone());
    let stop_once_cancelling = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while multipart_count(&running, "cancel").await < 1 {
            assert!(tokio::time::Instant::now() < deadline, "no cancel arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        scope.stop.cancel();
        scope.checkpoint.cancel();
    };

    let (outcome, uuid, ()) = tokio::join!(
        backend.upload(&mut job),
        after_first_part(&running, &store, id, || std::fs::remove_file(&path)
            .expect("the file is deleted")),
        stop_once_cancelling
    );

    assert!(matches!(outcome, Err(UploadError::Shutdown)), "{outcome:?}");
    let saved = job
        .load_progress::<MultipartState>()
        .expect("loads")
        .expect("the progress is kept");
    assert_eq!(saved.uuid, uuid);
    running.shutdown.cancel();
}

/// Once the server holds part 1 of the upload `job` saved under a UUID other than
/// `after`, sends that upload's part 2 itself, so that the upload's own part 2 arrives out
/// of order and is refused for good. Returns the UUID.
async fn spoil_next_part(
    backend: &KifsBackend,
    store: &Store,
    job: (crate::queue::JobId, &Path, Fingerprint),
    after: Option<&str>,
) -> String {
    let (id, path, fingerprint) = job;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let uuid = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new upload took its part 1"
        );
        let saved = store
            .load_progress(id)
            .expect("progress reads")
            .map(|raw| serde_json::from_slice::<MultipartState>(&raw).expect("the state parses"));
        if let Some(saved) = saved
            && Some(saved.uuid.as_str()) != after
        {
            let shown = backend
                .show_file("dir/big.bin", &CallScope::default())
                .await
                .expect("show works");
            if multipart_progress(&shown, &saved.uuid) == Some(1) {
                break saved.uuid;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let part = Source::opened(
        Arc::new(FileReader::open(path, &fingerprint).expect("the file opens")),
        path.to_path_buf(),
        fingerprint,
        SMALL_PART,
        SMALL_PART,
    );
    backend
        .multipart_step("dir/big.bin", &uuid, "upload_part", Some(2), Some(part))
        .await
        .expect("part 2 out of band");
    uuid
}

#[tokio::test]
async fn a_refused_upload_is_cancelled_before_its_restart_and_a_refused_restart_at_the_end() {
    let tmp = tempfile::tempdir().expect("a temp dir can be created");
    let root = tmp.path();
    let (running, backend, store, mut job) = setup_mid_upload(root).await;
    let path = job.path.clone();
    let of_job = (job.id, path.as_path(), job.fingerprint);

    let spoil_both = async {
        let first = spoil_next_part(&backend, &store, of_job, None).await;
        spoil_next_part(&backend, &store, of_job, Some(&first)).await
    };
    let (outcome, _) = tokio::join!(backend.upload(&mut job), spoil_both);

    assert!(
        matches!(
            outcome,
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                ..
            })
        ),
        "the job fails as before: {outcome:?}"
    );
    assert_eq!(
        multipart_count(&running, "cancel").await,
        2,
        "the first upload before the restart, the second at the end"
    );
    assert_eq!(uploads_in_progress(&backend).await, Vec::<String>::new());
    assert_eq!(job.load_progress::<MultipartState>().expect("loads"), None);
    running.shutdown.cancel();
}
