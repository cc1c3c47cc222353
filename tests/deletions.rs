//! Deletions reaching the remote (`on_delete = "delete"`) and the mass-delete guard, end to
//! end, and with either setting the cancel of a KiFS multipart upload that will not be
//! continued (its file deleted, replaced by a version small enough to go whole, deleted
//! during a stop, no longer selected after a reload, its folder gone with the deletion that
//! kept it, written again before that deletion ran, or its folder moved to another KiFS
//! directory; or by a later attempt, when its file could not be examined), and the resume
//! of one whose folder a reload removed and brought back: the real daemon, real files, the
//! emulator over HTTP on 127.0.0.1, restarts and kill -9. Checked through the remote's own listings and
//! request counters and through `upsync status --json`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TABLE: &str = "test.dataset:next.files";
const TOKEN: &str = "e2e-deletions-token-41c9";
const WAIT: Duration = Duration::from_secs(60);

/// A test's temp dir, emulator, config and its one watched folder.
type Setup = Site;

/// Where a test's folder goes.
#[derive(Clone, Copy, PartialEq)]
enum Remote {
    Kifs,
    /// A Redivis table of uploads.
    Table,
    /// A Redivis file index table.
    FileIndex,
}

/// A folder `inbox` with `on_delete = "delete"` (and `folder_extra`), mapped to the KiFS
/// directory `ingest` when `kifs`, else to the Redivis table [`TABLE`].
fn setup(kifs: bool, folder_extra: &str) -> Setup {
    setup_for(
        if kifs { Remote::Kifs } else { Remote::Table },
        folder_extra,
    )
}

fn setup_for(target: Remote, folder_extra: &str) -> Setup {
    setup_with(target, folder_extra, &[])
}

/// [`setup_for`] with more arguments for the emulator.
fn setup_with(target: Remote, folder_extra: &str, emulator_args: &[&str]) -> Setup {
    let kifs = target == Remote::Kifs;
    let args = [&["--redivis-token", TOKEN], emulator_args].concat();
    let site = Site::start(&["inbox"], &args);
    if !kifs {
        site.emulator
            .create_redivis_table(TABLE, target == Remote::FileIndex);
    }
    one_folder_config(&site, kifs, TABLE, "UPSYNC_E2E_DELETIONS_TOKEN")
        .each_folder(|folder| folder.with("on_delete = \"delete\"").with(folder_extra))
        .write(&site.config);
    // SAFETY: set before any daemon is spawned; the tests only read it through children.
    unsafe { std::env::set_var("UPSYNC_E2E_DELETIONS_TOKEN", TOKEN) };
    site
}

impl Setup {
    fn write(&self, rel: &str, seed: u64) {
        let path = self.folder().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_file(&path, 100 + seed, seed);
        backdate(&path, 60);
    }

    fn on_kifs(&self, rel: &str) -> bool {
        self.emulator.kifs_file(&format!("ingest/{rel}")).exists()
    }

    fn kifs_deletes(&self) -> u64 {
        let stats = self.emulator.kifs_stats();
        stats["requests"]["/delete/files"].as_u64().unwrap_or(0)
    }

    /// The names of the table's uploads, one entry per upload.
    fn redivis_names(&self) -> Vec<String> {
        self.emulator.redivis_upload_names(TABLE, TOKEN)
    }

    /// The names of the file index table's files.
    fn redivis_files(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .emulator
            .list_redivis_files(TABLE, TOKEN)
            .iter()
            .map(|f| f["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    }

    fn folder_status(&self, field: &str) -> u64 {
        let status = status_json(&self.config);
        status["folders"][0][field].as_u64().unwrap_or(0)
    }

    /// Waits until the ledger records exactly `done` files and no job is left, failed
    /// ones included.
    fn wait_settled(&self, daemon: &DaemonProcess, done: u64) {
        daemon.wait_until(
            WAIT,
            &format!("{done} files done and nothing pending or failed"),
            || {
                let status = status_json(&self.config);
                settled(&status, done) && folders_total(&status, "failed") == 0
            },
        );
    }
}

fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn kifs_a_deleted_file_a_deleted_subtree_and_a_renamed_directory_leave_the_remote() {
    let s = setup(true, "");
    let files = [
        "a.csv",
        "keep.csv",
        "sub/x.csv",
        "sub/deeper/y.csv",
        "dir/one.csv",
        "dir/two.csv",
    ];
    for (i, rel) in files.iter().enumerate() {
        s.write(rel, i as u64);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 6);

    remove(&s.folder().join("a.csv"));
    remove(&s.folder().join("sub"));
    std::fs::rename(s.folder().join("dir"), s.folder().join("moved")).unwrap();
    daemon.wait_until(
        WAIT,
        "the old names to leave KiFS and the new ones to arrive",
        || {
            [
                "a.csv",
                "sub/x.csv",
                "sub/deeper/y.csv",
                "dir/one.csv",
                "dir/two.csv",
            ]
            .iter()
            .all(|rel| !s.on_kifs(rel))
                && s.on_kifs("moved/one.csv")
                && s.on_kifs("moved/two.csv")
        },
    );
    s.wait_settled(&daemon, 3);
    assert!(
        s.on_kifs("keep.csv"),
        "a file still there keeps its remote copy"
    );
    assert_eq!(s.kifs_deletes(), 5, "one request per deleted file");
    assert_eq!(s.folder_status("deletions"), 0);
    daemon.terminate();
}

/// A file deleted locally after its KiFS directory was deleted on the server: its copy went
/// with the directory, so the deletion is done, with nothing failed.
#[test]
fn kifs_a_deletion_whose_directory_is_gone_on_the_server_is_done() {
    let s = setup(true, "");
    s.write("a.csv", 1);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 1);
    s.emulator.delete_kifs_directory("ingest");
    remove(&s.folder().join("a.csv"));
    s.wait_settled(&daemon, 0);
    assert_eq!(s.kifs_deletes(), 1, "one deletion asked for");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A deletion the remote refuses for its credentials (a token revoked or rotated since the
/// folder's check) fails nothing, as an upload refused so: the folder is refused, the
/// deletion waits with the copy still there, and once a reload's check passes the copy is
/// deleted.
#[test]
fn kifs_a_deletion_refused_for_its_credentials_waits_and_runs_after_a_reload() {
    let s = setup(true, "");
    s.write("a.csv", 1);
    s.write("keep.csv", 2);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 2);
    let refusal = serde_json::json!([{"target": "kifs", "action": {"status": 401}}]);
    s.emulator.post_json("/_emulator/faults", &refusal);
    remove(&s.folder().join("a.csv"));
    daemon.wait_until(WAIT, "the folder refused, its deletion waiting", || {
        let folder = &status_json(&s.config)["folders"][0];
        folder["remote_check"]["state"] == "refused"
            && folder["deletions"] == 1
            && folder["retry_wait"] == 1
    });
    assert_eq!(s.folder_status("failed"), 0, "the deletion does not fail");
    assert!(s.on_kifs("a.csv"), "the refused request deleted nothing");
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(WAIT, "the copy deleted after the reload", || {
        !s.on_kifs("a.csv")
    });
    s.wait_settled(&daemon, 1);
    assert!(s.on_kifs("keep.csv"), "the file still there keeps its copy");
    let faults = &s.emulator.get_json("/_emulator/stats")["faults"];
    assert_eq!(faults["status_401"], 1, "one request refused: {faults}");
    assert_eq!(s.kifs_deletes(), 1, "the one deletion after the reload");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A deletion that finds a FIFO or a symlink in its file's place when it runs ends there:
/// that is not a deletion of the file, nor a file to upload. No worker waits on the FIFO
/// for a writer, none loops on the link, and the copies stay.
#[test]
fn kifs_a_deletion_that_finds_a_fifo_or_a_symlink_in_place_keeps_the_copy_and_sends_nothing() {
    let s = setup(true, "");
    for (i, rel) in ["fifo.csv", "link.csv", "kept.csv"].iter().enumerate() {
        s.write(rel, i as u64);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 3);
    let uploads = s.emulator.kifs_upload_requests();

    // The deletions' first attempts meet a remote that fails (each in-place try), so they
    // wait to retry; the names are filled meanwhile, before the checks of their next one.
    let busy = serde_json::json!({"target": "kifs", "action": {"status": 503}});
    s.emulator.post_json(
        "/_emulator/faults",
        &serde_json::Value::Array(vec![busy; 50]),
    );
    let folder = s.folder();
    remove(&folder.join("fifo.csv"));
    remove(&folder.join("link.csv"));
    daemon.wait_until(WAIT, "both deletions to wait for a retry", || {
        s.folder_status("retry_wait") == 2
    });
    let fifo = std::ffi::CString::new(folder.join("fifo.csv").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink(folder.join("kept.csv"), folder.join("link.csv")).unwrap();
    s.emulator.delete("/_emulator/faults");
    // SIGHUP makes the waiting jobs due at once.
    daemon.signal(libc::SIGHUP);

    s.wait_settled(&daemon, 3);
    for rel in ["fifo.csv", "link.csv", "kept.csv"] {
        assert!(s.on_kifs(rel), "{rel} keeps its copy");
    }
    assert_eq!(
        s.emulator.kifs_upload_requests(),
        uploads,
        "nothing was uploaded in their place"
    );
    assert_eq!(daemon.terminate(), Some(0), "no worker is held by the FIFO");
}

#[test]
fn kifs_deletions_made_while_the_daemon_was_stopped_are_found_at_start() {
    let s = setup(true, "");
    for (i, rel) in ["a.csv", "b.csv", "c/d.csv", "keep.csv"].iter().enumerate() {
        s.write(rel, i as u64);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 4);
    daemon.terminate();

    remove(&s.folder().join("a.csv"));
    remove(&s.folder().join("c"));
    // Deleted and written again while stopped: a new version, uploaded, never deleted.
    remove(&s.folder().join("b.csv"));
    s.write("b.csv", 9);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the deleted files to leave KiFS", || {
        !s.on_kifs("a.csv") && !s.on_kifs("c/d.csv")
    });
    s.wait_settled(&daemon, 2);
    assert!(same_content(
        &s.folder().join("b.csv"),
        &s.emulator.kifs_file("ingest/b.csv")
    ));
    assert!(s.on_kifs("keep.csv"));
    assert_eq!(s.kifs_deletes(), 2);
    daemon.terminate();
}

#[test]
fn kifs_kill9_during_a_deletion_batch_deletes_every_file_and_nothing_else() {
    let s = setup(true, "max_delete = 100");
    let doomed: Vec<String> = (0..12).map(|i| format!("batch/{i:02}.csv")).collect();
    for (i, rel) in doomed.iter().enumerate() {
        s.write(rel, i as u64);
    }
    s.write("keep.csv", 99);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 13);
    daemon.terminate();

    remove(&s.folder().join("batch"));
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the first deletion request", || s.kifs_deletes() >= 1);
    daemon.kill9();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "every deleted file to leave KiFS", || {
        doomed.iter().all(|rel| !s.on_kifs(rel))
    });
    s.wait_settled(&daemon, 1);
    assert!(s.on_kifs("keep.csv"));
    // Deleted once each, plus at most the requests in flight when the daemon was killed
    // (one per worker), which the restart sends again.
    let requests = s.kifs_deletes();
    assert!(
        (12..=14).contains(&requests),
        "{requests} deletion requests"
    );
    daemon.terminate();
}

#[test]
fn the_guard_holds_a_ninety_percent_deletion_until_retry_deletes() {
    let s = setup(true, "");
    for i in 0..20 {
        s.write(&format!("{i:02}.csv"), i);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 20);
    daemon.terminate();

    for i in 0..18 {
        remove(&s.folder().join(format!("{i:02}.csv")));
    }
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the guard to hold the 18 deletions", || {
        s.folder_status("held") == 18
    });
    assert_eq!(s.kifs_deletes(), 0, "nothing deleted while held");
    let (code, text, _) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("18 deletions held by the mass-delete guard"),
        "{text}"
    );
    assert!(text.contains("upsync retry --deletes"), "{text}");

    let (code, out, err) = upsync(&["retry", "-c", s.config.to_str().unwrap(), "--deletes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "18 deletion(s) approved and queued to run\n", "{err}");
    daemon.wait_until(WAIT, "the approved deletions to run", || {
        (0..18).all(|i| !s.on_kifs(&format!("{i:02}.csv")))
    });
    s.wait_settled(&daemon, 2);
    assert_eq!(s.kifs_deletes(), 18);
    daemon.terminate();
}

#[test]
fn a_dry_run_after_retry_deletes_predicts_the_approved_deletions_run() {
    let s = setup(true, "");
    let config = s.config.to_str().unwrap();
    for i in 0..20 {
        s.write(&format!("{i:02}.csv"), i);
    }
    let (code, out, err) = upsync(&["sync", "--once", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..18 {
        remove(&s.folder().join(format!("{i:02}.csv")));
    }
    let (code, out, err) = upsync(&["sync", "--once", "-c", config]);
    assert_eq!(code, 1, "the guard holds the 18 deletions: {out}{err}");
    assert_eq!(s.folder_status("held"), 18);
    let (code, out, err) = upsync(&["retry", "-c", config, "--deletes"]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let folder = &plan["folders"][0];
    assert_eq!(folder["delete"].as_array().unwrap().len(), 18, "{plan}");
    assert_eq!(
        folder["deletions_held"],
        serde_json::Value::Null,
        "approved deletions are not held: {plan}"
    );

    let (code, out, err) = upsync(&["sync", "--once", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.kifs_deletes(), 18, "the run deleted what the plan said");
    assert!(
        out.contains("uploaded 0 file(s)")
            && out.contains("deleted the remote copies of 18 file(s) gone"),
        "the summary counts the deletions: {out}"
    );
    assert!((0..18).all(|i| !s.on_kifs(&format!("{i:02}.csv"))));
}

#[test]
fn a_folder_root_removed_and_replaced_by_an_empty_one_deletes_nothing() {
    let s = setup(true, "");
    for i in 0..5 {
        s.write(&format!("{i}.csv"), i);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 5);

    // Like an unmount: the folder goes, then an empty directory is where it was.
    remove(s.folder());
    std::fs::create_dir(s.folder()).unwrap();
    daemon.wait_until(
        WAIT,
        "the guard to hold the deletions of every file",
        || s.folder_status("held") == 5,
    );
    assert_eq!(s.kifs_deletes(), 0, "nothing deleted");
    assert!((0..5).all(|i| s.on_kifs(&format!("{i}.csv"))));
    daemon.terminate();
}

#[test]
fn redivis_a_deleted_and_a_renamed_file_leave_only_the_new_name_in_the_table() {
    let s = setup(false, "");
    s.write("a.csv", 1);
    s.write("b.csv", 2);
    s.write("keep.csv", 3);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 3);

    remove(&s.folder().join("a.csv"));
    std::fs::rename(s.folder().join("b.csv"), s.folder().join("c.csv")).unwrap();
    daemon.wait_until(WAIT, "the table to hold exactly c.csv and keep.csv", || {
        s.redivis_names() == ["c.csv", "keep.csv"]
    });
    s.wait_settled(&daemon, 2);
    daemon.terminate();
}

#[test]
fn redivis_a_file_deleted_while_its_first_upload_imports_leaves_the_table_once_imported() {
    let s = setup_with(Remote::Table, "", &["--redivis-processing-delay", "4s"]);
    s.write("gone.csv", 1);
    s.write("keep.csv", 2);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "both files importing", || {
        s.folder_status("importing") == 2
    });

    remove(&s.folder().join("gone.csv"));
    daemon.wait_until(WAIT, "the table to hold exactly keep.csv", || {
        s.redivis_names() == ["keep.csv"]
    });
    s.wait_settled(&daemon, 1);
    daemon.terminate();
}

#[test]
fn redivis_a_deleted_upload_frees_its_name_for_the_file_that_collided_with_it() {
    let s = setup(false, "");
    s.write("Survey.csv", 1);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 1);
    s.write("survey.csv", 2);
    daemon.wait_until(WAIT, "survey.csv failed for its name", || {
        s.folder_status("failed") == 1
    });

    remove(&s.folder().join("Survey.csv"));
    daemon.wait_until(WAIT, "the table to hold exactly survey.csv", || {
        s.redivis_names() == ["survey.csv"]
    });
    s.wait_settled(&daemon, 1);
    daemon.terminate();
}

#[test]
fn redivis_a_deleted_file_leaves_the_file_index_table() {
    let s = setup_for(Remote::FileIndex, "");
    s.write("a.bin", 1);
    s.write("b.bin", 2);
    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 2);
    assert_eq!(s.redivis_files(), ["a.bin", "b.bin"]);

    remove(&s.folder().join("a.bin"));
    daemon.wait_until(WAIT, "the file index table to hold b.bin only", || {
        s.redivis_files() == ["b.bin"]
    });
    s.wait_settled(&daemon, 1);
    daemon.terminate();
}

/// KiFS multipart part size (files larger than this are sent in parts).
const PART: u64 = 62_914_560;

/// The multipart uploads the KiFS emulator holds in progress, as it keeps them on disk.
fn kifs_uploads_in_progress(s: &Setup) -> usize {
    let multipart = s.emulator.data_dir.join("kifs").join("multipart");
    std::fs::read_dir(&multipart)
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// A KiFS folder (with `folder_extra`) whose `big.bin`, uploaded once, has a newer
/// version's multipart upload waiting for its retry (its second part answered 503 with
/// `Retry-After: retry_after`): the one upload the server holds in progress.
fn waiting_multipart_upload(folder_extra: &str, retry_after: &str) -> (Setup, DaemonProcess) {
    waiting_multipart_upload_of("big.bin", folder_extra, retry_after)
}

/// [`waiting_multipart_upload`] of the file `rel` instead of `big.bin`.
fn waiting_multipart_upload_of(
    rel: &str,
    folder_extra: &str,
    retry_after: &str,
) -> (Setup, DaemonProcess) {
    // Part answers are held back, so a fault can be queued for the part after the first.
    let s = Site::start(&["inbox"], &["--kifs-answer-delay", "upload_part=1500"]);
    one_folder_config(&s, true, TABLE, "UNUSED")
        .each_folder(|folder| folder.with(folder_extra))
        .write(&s.config);
    s.write(rel, 1);
    let daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 1);

    let path = s.folder().join(rel);
    write_file(&path, PART + 100, 2);
    backdate(&path, 60);
    daemon.wait_until(WAIT, "the new version's first part", || {
        s.emulator.kifs_stats()["multipart_operations"]["upload_part"] == 1
    });
    s.emulator.post_json(
        "/_emulator/faults",
        &serde_json::json!({"target": "kifs", "action": {"status": 503, "retry_after": retry_after}}),
    );
    daemon.wait_until(WAIT, "the upload to wait for its retry", || {
        s.folder_status("retry_wait") == 1
    });
    assert_eq!(kifs_uploads_in_progress(&s), 1);
    (s, daemon)
}

/// The waiting upload was cancelled, once, and the server holds no upload in progress.
fn assert_waiting_upload_cancelled(s: &Setup) {
    assert_eq!(
        s.emulator.kifs_stats()["multipart_operations"]["cancel"],
        1,
        "the waiting upload is cancelled"
    );
    assert_eq!(kifs_uploads_in_progress(s), 0);
}

/// Writes a small version of `rel` (one that goes whole), waits for it on the remote and for
/// the daemon to settle, and checks that the multipart upload that waited is cancelled.
fn small_version_replaces_the_waiting_upload(s: &Setup, daemon: &DaemonProcess, rel: &str) {
    s.write(rel, 3);
    let small = s.folder().join(rel);
    daemon.wait_until(WAIT, "the small version on the remote", || {
        s.emulator.kifs_holds(&small, &format!("ingest/{rel}"))
    });
    s.wait_settled(daemon, 1);
    assert_waiting_upload_cancelled(s);
}

/// A file whose newer version's multipart upload waits for a retry is deleted, in a folder
/// with `on_delete`: that upload is cancelled on the remote, and the job ends as without
/// it (the older copy deleted, or kept).
fn a_deleted_file_has_its_waiting_multipart_upload_cancelled(on_delete: &str) {
    let (s, mut daemon) = waiting_multipart_upload(&format!("on_delete = \"{on_delete}\""), "600");

    std::fs::remove_file(s.folder().join("big.bin")).unwrap();
    let deleting = on_delete == "delete";
    if deleting {
        daemon.wait_until(WAIT, "the deletion of the uploaded copy", || {
            !s.on_kifs("big.bin")
        });
    }
    s.wait_settled(&daemon, if deleting { 0 } else { 1 });
    assert_waiting_upload_cancelled(&s);
    assert_eq!(s.kifs_deletes(), u64::from(deleting));
    assert_eq!(s.on_kifs("big.bin"), !deleting);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn kifs_deleting_a_file_whose_multipart_upload_waits_to_retry_cancels_that_upload() {
    a_deleted_file_has_its_waiting_multipart_upload_cancelled("delete");
}

#[test]
fn kifs_a_folder_keeping_copies_also_cancels_the_waiting_multipart_upload_of_a_deleted_file() {
    a_deleted_file_has_its_waiting_multipart_upload_cancelled("keep");
}

/// A new version small enough to go whole replaces a version whose multipart upload waits
/// for its retry: no later `init` of that target cancels the upload on the server, so the
/// whole-file upload does.
#[test]
fn kifs_a_small_new_version_of_a_file_whose_multipart_upload_waits_to_retry_cancels_that_upload() {
    let (s, mut daemon) = waiting_multipart_upload("", "600");

    small_version_replaces_the_waiting_upload(&s, &daemon, "big.bin");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A file whose newer version's upload waits for a retry is deleted, its deletion held by
/// the mass-delete guard, and then its whole folder goes (unmounted): the held deletion is
/// dropped with the folder, and the waiting upload with it is cancelled, not left behind.
#[test]
fn kifs_a_folder_gone_as_a_whole_cancels_the_waiting_upload_its_dropped_deletion_kept() {
    let (s, mut daemon) = waiting_multipart_upload("on_delete = \"delete\"\nmax_delete = 0", "600");
    std::fs::remove_file(s.folder().join("big.bin")).unwrap();
    daemon.wait_until(WAIT, "the deletion held by the guard", || {
        s.folder_status("failed") == 1
    });

    std::fs::remove_dir_all(s.folder()).unwrap();
    s.wait_settled(&daemon, 1);
    assert_waiting_upload_cancelled(&s);
    assert_eq!(s.kifs_deletes(), 0, "an unmounted folder deletes nothing");
    assert!(s.on_kifs("big.bin"));
    assert_eq!(daemon.terminate(), Some(0));
}

/// A file whose newer version's upload waits for a retry is deleted, its deletion held by
/// the mass-delete guard, and then written again, small enough to go whole: the deletion
/// turns back into an upload, which cancels the waiting upload before it sends the file.
#[test]
fn kifs_a_file_back_before_its_held_deletion_ran_cancels_the_upload_that_deletion_kept() {
    let (s, mut daemon) = waiting_multipart_upload("on_delete = \"delete\"\nmax_delete = 0", "600");
    std::fs::remove_file(s.folder().join("big.bin")).unwrap();
    daemon.wait_until(WAIT, "the deletion held by the guard", || {
        s.folder_status("held") == 1
    });

    small_version_replaces_the_waiting_upload(&s, &daemon, "big.bin");
    assert_eq!(s.kifs_deletes(), 0);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A reload removes the folder of a file whose newer version's upload waits for a retry:
/// at that retry (a few seconds later) its job fails as no longer configured, keeping the
/// upload; a reload that brings the folder back resumes that upload where it stopped,
/// with neither a cancel nor a second `init`.
#[test]
fn kifs_a_folder_removed_and_brought_back_resumes_the_multipart_upload_its_job_kept() {
    let (s, mut daemon) = waiting_multipart_upload("", "3");
    let elsewhere = s.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    one_folder_config(&s, true, TABLE, "UNUSED")
        .each_folder(|_| FolderBuilder::kifs("elsewhere", "elsewhere"))
        .write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(WAIT, "the job failed as its folder is gone", || {
        let status = status_json(&s.config);
        status["failed"].as_array().is_some_and(|failed| {
            failed.iter().any(|job| {
                job["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("no longer in the configuration"))
            })
        })
    });
    assert_eq!(kifs_uploads_in_progress(&s), 1);

    one_folder_config(&s, true, TABLE, "UNUSED").write(&s.config);
    daemon.signal(libc::SIGHUP);
    let big = s.folder().join("big.bin");
    daemon.wait_until(WAIT, "the new version on the remote", || {
        s.emulator.kifs_holds(&big, "ingest/big.bin")
    });
    s.wait_settled(&daemon, 1);
    let multipart = &s.emulator.kifs_stats()["multipart_operations"];
    assert_eq!(multipart["init"], 1, "resumed, not started again");
    assert_eq!(multipart["cancel"], 0);
    assert_eq!(kifs_uploads_in_progress(&s), 0);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A reload moves the folder of a file whose newer version's upload waits for a retry to
/// another KiFS directory: at that retry (a few seconds later) the upload waiting in the
/// old directory is cancelled there, and the file goes to the new directory.
#[test]
fn kifs_a_folder_moved_to_another_directory_cancels_the_upload_waiting_in_the_old_one() {
    let (s, mut daemon) = waiting_multipart_upload("", "3");

    one_folder_config(&s, true, TABLE, "UNUSED")
        .each_folder(|folder| folder.with("kifs_directory = \"moved\""))
        .write(&s.config);
    daemon.signal(libc::SIGHUP);
    let big = s.folder().join("big.bin");
    daemon.wait_until(WAIT, "the new version in the new directory", || {
        s.emulator.kifs_holds(&big, "moved/big.bin")
    });
    s.wait_settled(&daemon, 1);
    assert_waiting_upload_cancelled(&s);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A file whose newer version's upload waits for a retry cannot be examined (its
/// directory replaced by a symlink to a file while the daemon was stopped): at that retry
/// (a few seconds after the restart) its job fails and keeps that upload, which the
/// attempt of the version written once the directory is back (small enough to go whole)
/// cancels.
#[test]
fn kifs_a_file_that_cannot_be_examined_keeps_its_waiting_upload_for_a_later_attempt_to_cancel() {
    let (s, mut daemon) = waiting_multipart_upload_of("sub/big.bin", "", "5");
    assert_eq!(daemon.terminate(), Some(0));
    let sub = s.folder().join("sub");
    std::fs::remove_dir_all(&sub).unwrap();
    std::os::unix::fs::symlink(&s.config, &sub).unwrap();

    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        WAIT,
        "the job failed as its file cannot be examined",
        || {
            let status = status_json(&s.config);
            status["failed"].as_array().is_some_and(|failed| {
                failed.iter().any(|job| {
                    job["reason"]
                        .as_str()
                        .is_some_and(|reason| reason.contains("cannot stat"))
                })
            })
        },
    );
    assert_eq!(s.emulator.kifs_stats()["multipart_operations"]["cancel"], 0);
    assert_eq!(kifs_uploads_in_progress(&s), 1);

    std::fs::remove_file(&sub).unwrap();
    small_version_replaces_the_waiting_upload(&s, &daemon, "sub/big.bin");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A reload that excludes a file whose newer version's upload waits for a retry: its job
/// is dropped at that retry (a few seconds later), and that upload cancelled.
#[test]
fn kifs_a_reload_that_deselects_a_file_cancels_its_waiting_multipart_upload() {
    let (s, mut daemon) = waiting_multipart_upload("", "5");

    one_folder_config(&s, true, TABLE, "UNUSED")
        .each_folder(|folder| folder.with("exclude = [\"*.bin\"]"))
        .write(&s.config);
    daemon.signal(libc::SIGHUP);
    s.wait_settled(&daemon, 1);
    assert_waiting_upload_cancelled(&s);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A file deleted while its last part is in flight and the daemon stops: the stop sends
/// nothing and keeps the job with its upload, and the next start finds the file gone and
/// cancels that upload.
#[test]
fn kifs_a_file_deleted_while_the_daemon_stops_has_its_upload_cancelled_at_the_next_start() {
    let s = Site::start(&["inbox"], &["--kifs-answer-delay", "upload_part=3000"]);
    one_folder_config(&s, true, TABLE, "UNUSED").write(&s.config);
    let path = s.folder().join("big.bin");
    write_file(&path, PART + 100, 1);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the last part applied, its answer held back", || {
        s.emulator.kifs_stats()["multipart_operations"]["upload_part"] == 2
    });

    std::fs::remove_file(&path).unwrap();
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(s.emulator.kifs_stats()["multipart_operations"]["cancel"], 0);
    assert_eq!(kifs_uploads_in_progress(&s), 1, "the stop kept the upload");

    let mut daemon = DaemonProcess::start(&s.config);
    s.wait_settled(&daemon, 0);
    assert_waiting_upload_cancelled(&s);
    assert_eq!(daemon.terminate(), Some(0));
}
