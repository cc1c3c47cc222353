//! Every change of a file is seen: the real `upsync` binary against the real emulator
//! process, with a KiFS folder and a Redivis folder.
//!
//! Cases:
//! - New bytes of the same size with the old mtime set back (`touch -r`, `cp -p`, `tar -x`),
//!   written in place or into a file deleted and recreated (often on the same inode), are
//!   uploaded by the next run on both backends.
//! - A permission change alone (only the change time moves) costs no new Redivis upload:
//!   the identical upload is adopted; the run after it has nothing to do.
//! - A ledger an older version wrote without change times costs a run no upload, and the
//!   run gives its entries the files' change times, after which a permission change is
//!   seen again.
//! - The running daemon sees such a replacement through its file events.
//! - `ls` lists the uploads; `forget` uploads a file again through the running daemon.
//! - `sync --once --dry-run` shows new, changed, deleted and skipped files, sends no
//!   request and leaves the state database byte-identical; a name KiFS refuses shows as
//!   the failure the run then has, and so do Redivis names that collide (with an
//!   uploaded file's, or another new file's) or have no letter or digit, while a name a
//!   deletion of the run frees counts as free; over a damaged database it names the state dir's
//!   database, not the temporary copy it opened; it refuses while another process holds
//!   the state dir's lock, socket or not; after a change of the folder's directory it
//!   lists every file as new, and `sync --once` sends them there.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

const TOKEN: &str = "file-life-test-token";
const TABLE: &str = "life.dataset:next.files";

/// Two folders, `kin` → KiFS directory `ingest` and `rin` → Redivis table [`TABLE`].
struct Setup {
    _tmp: tempfile::TempDir,
    kin: PathBuf,
    rin: PathBuf,
    config: PathBuf,
    emulator: EmulatorProcess,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_kifs_folder_extra("")
    }

    /// [`Setup::new`] with `extra` lines in the KiFS folder's section.
    fn with_kifs_folder_extra(extra: &str) -> Setup {
        let Site {
            tmp,
            folders,
            emulator,
            config,
        } = Site::start(
            &["kin", "rin"],
            &["--kifs-directory", "ingest", "--redivis-token", TOKEN],
        );
        let (kin, rin) = (folders[0].clone(), folders[1].clone());
        ConfigBuilder::new()
            .top("shutdown_timeout = \"5s\"")
            .kifs(&emulator.kifs_url())
            .redivis_with_token(&emulator.redivis_url(), TOKEN)
            .folder(
                FolderBuilder::kifs("kin", "ingest")
                    .without("create_directory")
                    .with(extra),
            )
            .folder(FolderBuilder::redivis("rin", TABLE))
            .write(&config);
        Setup {
            _tmp: tmp,
            kin,
            rin,
            config,
            emulator,
        }
    }

    /// `upsync sync --once`: its exit code and all it printed.
    fn sync_once(&self) -> (i32, String) {
        let (code, stdout, stderr) =
            upsync(&["sync", "--once", "-c", self.config.to_str().unwrap()]);
        (code, format!("{stdout}\n{stderr}"))
    }

    fn kifs_holds(&self, local: &Path) -> bool {
        let name = local.file_name().unwrap().to_str().unwrap();
        self.emulator.kifs_holds(local, &format!("ingest/{name}"))
    }

    /// The MD5 hashes of the table's completed uploads named `name`.
    fn redivis_hashes(&self, name: &str) -> Vec<String> {
        let uploads = self.emulator.list_redivis_uploads(TABLE, TOKEN);
        uploads_by_name(&uploads)
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(|upload| upload["status"] == "completed")
            .map(|upload| upload["hash"].as_str().unwrap_or("").to_lowercase())
            .collect()
    }

    /// Whether the table holds exactly one completed upload named after `local`, with its
    /// bytes.
    fn redivis_holds(&self, local: &Path) -> bool {
        let name = local.file_name().unwrap().to_str().unwrap();
        self.redivis_hashes(name) == vec![file_md5_hex(local).unwrap()]
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Sets `path`'s mtime to `time`, as `touch -r` does.
fn set_mtime(path: &Path, time: SystemTime) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(time).unwrap();
}

/// Writes `text` over `path` in place (same inode) and sets its old mtime back.
fn replace_in_place(path: &Path, text: &str) {
    let before = mtime(path);
    std::fs::write(path, text).unwrap();
    set_mtime(path, before);
}

/// Deletes `path`, creates it again with `text` and sets its old mtime back.
fn recreate(path: &Path, text: &str) {
    let before = mtime(path);
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, text).unwrap();
    set_mtime(path, before);
}

#[test]
fn new_bytes_of_the_same_size_under_the_old_mtime_are_uploaded_again_on_both_backends() {
    let s = Setup::new();
    let files: Vec<PathBuf> = [&s.kin, &s.rin]
        .into_iter()
        .flat_map(|dir| [dir.join("same.csv"), dir.join("again.csv")])
        .collect();
    for path in &files {
        std::fs::write(path, "AAAA-original\n").unwrap();
        backdate(path, 60);
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(files[..2].iter().all(|f| s.kifs_holds(f)), "{text}");
    assert!(files[2..].iter().all(|f| s.redivis_holds(f)), "{text}");

    for dir in [&s.kin, &s.rin] {
        replace_in_place(&dir.join("same.csv"), "BBBB-replaced\n");
        recreate(&dir.join("again.csv"), "CCCC-recreate\n");
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("uploaded 4 file(s)"), "{text}");
    for path in &files[..2] {
        assert!(s.kifs_holds(path), "{}: {text}", path.display());
    }
    for path in &files[2..] {
        assert!(s.redivis_holds(path), "{}: {text}", path.display());
    }
}

#[test]
fn a_permission_change_alone_adds_no_redivis_upload_and_the_next_run_has_nothing_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let files = [s.kin.join("p.csv"), s.rin.join("p.csv")];
    for path in &files {
        write_file(path, 50_000, 3);
        backdate(path, 60);
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    let hash = file_md5_hex(&files[1]).unwrap();
    for path in &files {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(s.kifs_holds(&files[0]), "{text}");
    assert_eq!(
        s.redivis_hashes("p.csv"),
        vec![hash],
        "one upload, adopted: {text}"
    );
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("uploaded 0 file(s)"), "{text}");
}

#[test]
fn a_ledger_an_older_version_wrote_without_change_times_costs_no_upload_and_is_stamped() {
    use std::os::unix::fs::PermissionsExt;
    use upsync::fingerprint::Fingerprint;
    use upsync::queue::Store;
    let s = Setup::new();
    let files: Vec<PathBuf> = (0..3).map(|n| s.kin.join(format!("old{n}.csv"))).collect();
    for (n, path) in files.iter().enumerate() {
        write_file(path, 1_000, n as u64);
        backdate(path, 60);
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    let state = s._tmp.path().join("state");
    {
        let store = Store::open(&state).expect("the state opens");
        for (key, entry) in store.ledger_entries(None).expect("the ledger reads") {
            let older = Fingerprint {
                ctime_ns: None,
                ..entry.fingerprint
            };
            store
                .record_uploaded(&key, &older, &entry.remote, entry.md5.as_deref())
                .expect("the ledger writes");
        }
    }

    let requests = s.emulator.kifs_upload_requests();
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("uploaded 0 file(s)"), "{text}");
    assert_eq!(s.emulator.kifs_upload_requests(), requests, "{text}");
    {
        let store = Store::open(&state).expect("the state opens");
        for path in &files {
            let rel = path.file_name().unwrap().to_str().unwrap();
            let key = upsync::queue::FileKey::new(s.kin.to_str().unwrap(), rel);
            let entry = store.ledger_get(&key).expect("reads").expect("recorded");
            let now = Fingerprint::of(&std::fs::metadata(path).unwrap());
            assert_eq!(
                entry.fingerprint, now,
                "{rel} is stamped with its change time"
            );
        }
    }

    // From then on, a permission change alone is a new version again.
    std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("uploaded 1 file(s)"), "{text}");
}

#[test]
fn the_daemon_uploads_a_replacement_that_keeps_size_and_mtime_from_its_file_events() {
    let s = Setup::new();
    let path = s.kin.join("live.csv");
    std::fs::write(&path, "AAAA-original\n").unwrap();
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "the first version", || {
        s.kifs_holds(&path)
    });
    replace_in_place(&path, "BBBB-replaced\n");
    daemon.wait_until(Duration::from_secs(30), "the replacement", || {
        s.kifs_holds(&path)
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn ls_lists_the_uploads_and_forget_uploads_a_file_again_through_the_running_daemon() {
    let s = Setup::new();
    let (a, b) = (s.kin.join("a.csv"), s.rin.join("b.csv"));
    for path in [&a, &b] {
        write_file(path, 3_000, 5);
        backdate(path, 60);
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    let config = s.config.to_str().unwrap();

    // With no daemon, from the state database.
    let (code, stdout, stderr) = upsync(&["ls", "-c", config, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2, "{stdout}");
    assert_eq!(listed[0]["path"], a.display().to_string());
    assert_eq!(listed[0]["remote"], "ingest/a.csv");
    assert_eq!(listed[0]["size"], 3_000);
    assert!(listed[1]["uploaded_at_ms"].as_u64().unwrap() > 0);
    let kin = s.kin.to_str().unwrap();
    let (code, stdout, _) = upsync(&["ls", "-c", config, "--folder", kin]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("ingest/a.csv") && !stdout.contains("b.csv"),
        "{stdout}"
    );
    assert!(stdout.contains("1 file(s) uploaded"), "{stdout}");

    // With the daemon running, through its control socket: the forgotten file is sent again.
    let stored = |s: &Setup| s.emulator.get_json("/kifs/_emulator/stats")["files_stored"].clone();
    assert_eq!(stored(&s), 1);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the daemon to answer", || {
        upsync(&["status", "-c", config]).0 == 0 && daemon.log_text().contains("upsync is running")
    });
    let (code, stdout, stderr) = upsync(&["forget", "-c", config, a.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("1 upload(s) forgotten, 1 file(s) queued"),
        "{stdout}"
    );
    daemon.wait_until(Duration::from_secs(30), "a.csv sent again", || {
        stored(&s) == 2
    });
    daemon.wait_until(Duration::from_secs(10), "a.csv listed again", || {
        let (_, stdout, _) = upsync(&["ls", "-c", config, "--folder", kin]);
        stdout.contains("ingest/a.csv")
    });
    let (code, _, stderr) = upsync(&["forget", "-c", config, "/not/watched.csv"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/not/watched.csv"), "{stderr}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Every file under `dir` with its MD5, to tell whether anything in it changed.
fn tree_hashes(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut files: Vec<(PathBuf, Option<String>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| (entry.path().to_path_buf(), file_md5_hex(entry.path())))
        .collect();
    files.sort();
    files
}

#[test]
fn a_dry_run_tells_a_name_kifs_refuses_as_the_failure_the_run_then_has() {
    let s = Setup::new();
    for name in ["good.csv", "bad_name.csv"] {
        std::fs::write(s.kin.join(name), format!("{name}\n")).unwrap();
        backdate(&s.kin.join(name), 60);
    }
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kin = &plan["folders"][0];
    let uploads: Vec<&str> = kin["upload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        uploads,
        vec![s.kin.join("good.csv").to_str().unwrap()],
        "{plan}"
    );
    let skipped = &kin["skipped"][0];
    assert_eq!(
        skipped["path"],
        s.kin.join("bad_name.csv").to_str().unwrap()
    );
    let why = skipped["why"].as_str().unwrap();
    assert!(why.starts_with("would fail: "), "{why}");
    assert!(why.contains("does not allow the character '_'"), "{why}");

    let (code, text) = s.sync_once();
    assert_eq!(code, 1, "{text}");
    let status = status_json(&s.config);
    assert_eq!(status["failed"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["failed"][0]["path"], skipped["path"], "{status}");
    assert_eq!(status["folders"][0]["done"], 1, "{status}");
}

#[test]
fn a_dry_run_refuses_while_another_process_holds_the_state_dir_without_a_socket() {
    use std::os::fd::AsRawFd;
    let s = Setup::new();
    std::fs::write(s.kin.join("a.csv"), "a\n").unwrap();
    backdate(&s.kin.join("a.csv"), 60);
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    let config = s.config.to_str().unwrap();

    // As a daemon recovering at its start, or `run --rebuild-state`, holds it: the lock
    // taken, nothing listening on the control socket yet, the database being written.
    let lock_path = s.config.parent().unwrap().join("state/upsync.lock");
    let lock = std::fs::File::open(&lock_path).unwrap();
    // SAFETY: flock only reads the descriptor, which `lock` keeps open.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "the test takes the lock");
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "-c", config]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("another upsync holds state_dir"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no plan: {stdout}");

    drop(lock);
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 up to date"), "{stdout}");
}

#[test]
fn a_dry_run_over_a_damaged_database_names_the_state_dirs_database() {
    let s = Setup::new();
    std::fs::write(s.kin.join("a.csv"), "a\n").unwrap();
    backdate(&s.kin.join("a.csv"), 60);
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    let database = s.config.parent().unwrap().join("state").join("db");
    std::fs::File::options()
        .write(true)
        .open(database.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();

    let config = s.config.to_str().unwrap();
    let (code, _, stderr) = upsync(&["sync", "--once", "--dry-run", "-c", config]);
    assert_eq!(code, 1, "{stderr}");
    let named = format!("cannot open the state database at {}:", database.display());
    assert!(stderr.contains(&named), "{stderr}");
    assert!(
        stderr.contains(&format!("kept as {}.moved-<time>", database.display())),
        "{stderr}"
    );
    assert!(
        !stderr.contains("upsync-dry-run"),
        "no temporary copy named: {stderr}"
    );
}

#[test]
fn a_dry_run_shows_the_plan_sends_nothing_and_leaves_the_database_byte_identical() {
    let s = Setup::with_kifs_folder_extra("on_delete = \"delete\"");
    for name in ["same.csv", "changed.csv", "gone.csv", "now-a-dir.csv"] {
        std::fs::write(s.kin.join(name), format!("{name}\n")).unwrap();
        backdate(&s.kin.join(name), 60);
    }
    std::fs::write(s.rin.join("r.csv"), "r\n").unwrap();
    backdate(&s.rin.join("r.csv"), 60);
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");

    std::fs::write(s.kin.join("changed.csv"), "changed, longer\n").unwrap();
    backdate(&s.kin.join("changed.csv"), 30);
    std::fs::write(s.kin.join("new.csv"), "new\n").unwrap();
    backdate(&s.kin.join("new.csv"), 30);
    std::fs::write(s.kin.join("young.csv"), "still being written\n").unwrap();
    std::fs::write(s.kin.join("draft.tmp"), "excluded\n").unwrap();
    backdate(&s.kin.join("draft.tmp"), 30);
    std::fs::remove_file(s.kin.join("gone.csv")).unwrap();
    // Something else at an uploaded file's path: the daemon deletes nothing for it.
    std::fs::remove_file(s.kin.join("now-a-dir.csv")).unwrap();
    std::fs::create_dir(s.kin.join("now-a-dir.csv")).unwrap();

    let state = s.config.parent().unwrap().join("state");
    let database = tree_hashes(&state.join("db"));
    let stats = |s: &Setup| {
        (
            s.emulator.get_json("/kifs/_emulator/stats"),
            s.emulator.get_json("/_emulator/redivis/stats"),
        )
    };
    let before = stats(&s);
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stats(&s), before, "no request reached a remote");
    assert_eq!(
        tree_hashes(&state.join("db")),
        database,
        "the database is byte-identical"
    );

    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kin = &plan["folders"][0];
    let names = |list: &serde_json::Value, field: &str| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let path = item["path"].as_str().unwrap();
                let name = Path::new(path).file_name().unwrap().to_str().unwrap();
                (name.to_string(), item[field].as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(
        names(&kin["upload"], "why"),
        vec![
            ("changed.csv".into(), "changed".into()),
            ("new.csv".into(), "new".into())
        ],
        "{plan}"
    );
    assert_eq!(
        names(&kin["delete"], "remote"),
        vec![("gone.csv".into(), "ingest/gone.csv".into())],
        "{plan}"
    );
    let skipped = names(&kin["skipped"], "why");
    assert_eq!(skipped.len(), 1, "{plan}");
    assert!(
        skipped[0].0 == "draft.tmp" && skipped[0].1.contains("excluded"),
        "{plan}"
    );
    assert_eq!(
        names(&kin["upload_once_settled"], "why"),
        vec![("young.csv".into(), "new".into())],
        "{plan}"
    );
    assert_eq!(kin["up_to_date"], 1, "{plan}");
    assert_eq!(plan["folders"][1]["up_to_date"], 1, "{plan}");

    // The text form says the same, and that nothing was done.
    let (code, stdout, _) = upsync(&["sync", "--once", "--dry-run", "-c", config]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("upload  new") && stdout.contains("delete  "),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was sent"), "{stdout}");
    assert_eq!(stats(&s), before);
}

/// A file still being written is one a run waits for and uploads once settled: the dry run
/// lists it so, in JSON and text, and `sync --once` then uploads it.
#[test]
fn a_dry_run_lists_a_file_still_being_written_as_the_upload_the_run_makes_once_it_settled() {
    let s = Setup::with_kifs_folder_extra("settle = \"5s\"");
    let young = s.kin.join("young.csv");
    std::fs::write(&young, "still being written\n").unwrap();
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kin = &plan["folders"][0];
    assert_eq!(
        kin["upload_once_settled"][0]["path"],
        young.to_str().unwrap(),
        "{plan}"
    );
    assert_eq!(kin["upload_once_settled"][0]["why"], "new", "{plan}");
    assert_eq!(kin["upload_once_settled"][0]["size"], 20, "{plan}");
    assert!(
        kin["upload_once_settled"][0]["written_s_ago"]
            .as_u64()
            .unwrap()
            < 5,
        "{plan}"
    );
    assert_eq!(kin["skipped"], serde_json::json!([]), "{plan}");
    assert_eq!(kin["upload"], serde_json::json!([]), "{plan}");
    let (code, stdout, _) = upsync(&["sync", "--once", "--dry-run", "-c", config]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!(
            "upload  new      {} (20 B) once settled",
            young.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 to upload, 1 to upload once settled"),
        "{stdout}"
    );

    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(s.kifs_holds(&young), "the run uploaded it once settled");
}

/// Names a Redivis table cannot hold apart: a file whose name escapes like the uploaded one
/// the ledger records, two new files that escape alike, a name without letters or digits.
/// The dry run lists each file the run fails as would fail, with the run's reason.
#[test]
fn a_dry_run_tells_redivis_name_collisions_as_the_failures_the_run_then_has() {
    let s = Setup::new();
    let write = |name: &str| {
        std::fs::write(s.rin.join(name), format!("{name}\n")).unwrap();
        backdate(&s.rin.join(name), 60);
    };
    write("a.b.csv");
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    for name in ["a_b.csv", "x-y.csv", "x.y.csv", "+++"] {
        write(name);
    }
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rin = &plan["folders"][1];
    let path = |name: &str| s.rin.join(name).to_str().unwrap().to_string();
    assert_eq!(rin["upload"][0]["path"], path("x-y.csv"), "{plan}");
    assert_eq!(rin["upload"].as_array().unwrap().len(), 1, "{plan}");
    let predicted: std::collections::BTreeMap<String, String> = rin["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            let why = file["why"].as_str().unwrap();
            let reason = why
                .strip_prefix("would fail: ")
                .unwrap_or_else(|| panic!("{why}"));
            let reason = reason.trim_end_matches(
                " (unless the table is a file index table, whose files keep their own names)",
            );
            (
                file["path"].as_str().unwrap().to_string(),
                reason.to_string(),
            )
        })
        .collect();
    let collision = |ours: &str, theirs: &str, escaped: &str| {
        format!(
            "name collision: {ours:?} and {theirs:?} both map to the Redivis upload name \
             {escaped:?} in table {TABLE}; rename one of the files (only the first one is uploaded)"
        )
    };
    assert_eq!(
        predicted,
        [
            (
                path("+++"),
                "\"+++\" has no letters or digits, so Redivis cannot name an upload after it"
                    .to_string()
            ),
            (path("a_b.csv"), collision("a_b.csv", "a.b.csv", "a_b_csv")),
            (path("x.y.csv"), collision("x.y.csv", "x-y.csv", "x_y_csv")),
        ]
        .into_iter()
        .collect(),
        "{plan}"
    );

    let (code, text) = s.sync_once();
    assert_eq!(code, 1, "{text}");
    let status = status_json(&s.config);
    let failed: std::collections::BTreeMap<String, String> = status["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            (
                file["path"].as_str().unwrap().to_string(),
                file["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in ["+++", "a_b.csv"] {
        assert_eq!(
            failed.get(&path(name)),
            predicted.get(&path(name)),
            "{status}"
        );
    }
    // Of the two new files, the run fails the one it reached second, which only its scan
    // order decides: the reason names the other.
    let pair: Vec<&String> = failed
        .keys()
        .filter(|failed| **failed == path("x-y.csv") || **failed == path("x.y.csv"))
        .collect();
    assert_eq!(pair.len(), 1, "{status}");
    let expected = if *pair[0] == path("x.y.csv") {
        collision("x.y.csv", "x-y.csv", "x_y_csv")
    } else {
        collision("x-y.csv", "x.y.csv", "x_y_csv")
    };
    assert_eq!(failed[pair[0]], expected, "{status}");
    assert_eq!(failed.len(), 3, "{status}");
}

/// A file whose name escapes like an uploaded file that is gone, in a folder that deletes
/// the copies of gone files: the run deletes that upload, which frees the name, and uploads
/// the file; the dry run lists it as an upload, not as a collision.
#[test]
fn a_dry_run_counts_a_redivis_name_freed_by_a_deletion_of_the_run_as_free() {
    let s = Setup::new();
    ConfigBuilder::new()
        .top("shutdown_timeout = \"5s\"")
        .redivis_with_token(&s.emulator.redivis_url(), TOKEN)
        .folder(FolderBuilder::redivis("rin", TABLE).with("on_delete = \"delete\""))
        .write(&s.config);
    std::fs::write(s.rin.join("a.b.csv"), "first\n").unwrap();
    backdate(&s.rin.join("a.b.csv"), 60);
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    std::fs::remove_file(s.rin.join("a.b.csv")).unwrap();
    std::fs::write(s.rin.join("a_b.csv"), "second\n").unwrap();
    backdate(&s.rin.join("a_b.csv"), 60);

    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rin = &plan["folders"][0];
    assert_eq!(
        rin["upload"][0]["path"],
        s.rin.join("a_b.csv").to_str().unwrap(),
        "{plan}"
    );
    assert_eq!(
        rin["delete"][0]["path"],
        s.rin.join("a.b.csv").to_str().unwrap(),
        "{plan}"
    );
    assert_eq!(rin["skipped"], serde_json::json!([]), "{plan}");

    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(s.redivis_holds(&s.rin.join("a_b.csv")), "{text}");
}

/// A folder given another directory since its uploads: the dry run lists its files as new
/// (a run uploads them again, to the new directory), and `sync --once` sends them there.
#[test]
fn a_dry_run_and_sync_once_after_a_change_of_directory_upload_every_file_again() {
    let s = Setup::new();
    for name in ["a.csv", "b.csv"] {
        std::fs::write(s.kin.join(name), format!("{name}\n")).unwrap();
        backdate(&s.kin.join(name), 60);
    }
    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    assert!(s.emulator.kifs_file("ingest/a.csv").exists());

    ConfigBuilder::new()
        .top("shutdown_timeout = \"5s\"")
        .kifs(&s.emulator.kifs_url())
        .folder(FolderBuilder::kifs("kin", "moved"))
        .write(&s.config);
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "--dry-run", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let folder = &plan["folders"][0];
    let planned: Vec<&str> = folder["upload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|upload| upload["why"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["new", "new"], "{plan}");
    assert_eq!(folder["up_to_date"], 0, "{plan}");

    let (code, text) = s.sync_once();
    assert_eq!(code, 0, "{text}");
    for name in ["a.csv", "b.csv"] {
        assert!(
            same_content(
                &s.kin.join(name),
                &s.emulator.kifs_file(&format!("moved/{name}"))
            ),
            "{name} in the new directory"
        );
    }
}
