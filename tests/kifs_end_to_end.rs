//! The whole daemon against the KiFS emulator: the real `upsync` binary, real files, real
//! HTTP on 127.0.0.1, kill -9 and restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PART: u64 = 62_914_560;

/// A test's temp dir, emulator, config and its one watched folder.
type Setup = Site;

/// A folder mapped to KiFS directory `ingest` of a fresh emulator started with `emulator_args`.
fn setup(emulator_args: &[&str], kifs_extra: &str, folder_extra: &str) -> Setup {
    let site = Site::start(&["inbox"], emulator_args);
    config_of(
        &site.emulator,
        kifs_extra,
        FolderBuilder::kifs("inbox", "ingest").with(folder_extra),
    )
    .write(&site.config);
    site
}

/// The config of these tests, with `folder` as the one folder.
fn config_of(emulator: &EmulatorProcess, kifs_extra: &str, folder: FolderBuilder) -> ConfigBuilder {
    ConfigBuilder::new()
        .top("concurrency = 3")
        .kifs(&emulator.kifs_url())
        .kifs_with(kifs_extra)
        .folder(folder)
}

fn arrived(setup: &Setup, local: &Path, name: &str) -> bool {
    setup.emulator.kifs_holds(local, &format!("ingest/{name}"))
}

fn upload_requests(setup: &Setup) -> u64 {
    setup.emulator.kifs_upload_requests()
}

#[test]
fn a_slowly_written_file_is_uploaded_once_and_whole() {
    let s = setup(&[], "", "");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(20), "the daemon to be ready", || {
        daemon.log_text().contains("upsync is running")
    });
    let path = s.folder().join("slow.csv");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for line in 0..10 {
            writeln!(file, "row {line},{}", "x".repeat(1000)).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    daemon.wait_until(Duration::from_secs(20), "the file to arrive", || {
        arrived(&s, &path, "slow.csv")
    });
    // Settled: an upload of a partial version, or a second one of the whole file, would
    // have been a job of its own, counted by KiFS before this or pending now.
    daemon.wait_settled(&s.config, 1);
    assert_eq!(upload_requests(&s), 1, "{}", daemon.log_text());
    assert_eq!(daemon.terminate(), Some(0));
}

/// Small files sent several to a request are told in one info line per batch, not one
/// each: every file is counted once, in its batch's line or in a line of its own.
#[test]
fn small_files_sent_together_are_told_in_one_line_per_batch() {
    const FILES: u64 = 40;
    let s = setup(&[], "", "");
    for n in 0..FILES {
        let path = s.folder().join(format!("small-{n:02}.csv"));
        write_file(&path, 100, n);
        backdate(&path, 60);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_settled(&s.config, FILES);
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let in_batches: u64 = log
        .lines()
        .filter(|line| line.contains("uploaded a batch"))
        .map(|line| {
            let files = line
                .split("files=")
                .nth(1)
                .expect("a batch line counts its files");
            let digits: String = files.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().expect("a number of files")
        })
        .sum();
    let file_lines = |level: &str| {
        log.lines()
            .filter(|line| line.contains(level) && line.contains("uploaded path="))
            .count() as u64
    };
    assert_eq!(in_batches + file_lines(" INFO "), FILES, "{log}");
    // These tests' daemons log at debug, where each file of a batch has its own line.
    assert_eq!(file_lines(" DEBUG "), in_batches, "{log}");
    // The start-up scan queued them all: the first worker's claim took most of them.
    assert!(in_batches >= FILES / 2, "{log}");
}

#[test]
fn a_file_changed_after_its_upload_is_uploaded_again() {
    let s = setup(&[], "", "");
    let path = s.folder().join("report.csv");
    std::fs::write(&path, "a,b\n1,2\n").unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the first version", || {
        arrived(&s, &path, "report.csv")
    });
    daemon.wait_settled(&s.config, 1);
    assert_eq!(upload_requests(&s), 1, "the first version, once");
    std::fs::write(&path, "a,b\n1,2\n3,4\n").unwrap();
    daemon.wait_until(Duration::from_secs(20), "the second version", || {
        arrived(&s, &path, "report.csv")
    });
    // The ledger holds one entry per file: the second version replaces the first one.
    daemon.wait_settled(&s.config, 1);
    assert_eq!(upload_requests(&s), 2, "each version uploaded exactly once");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_name_kifs_rejects_fails_with_a_clear_reason_while_others_go_through() {
    let s = setup(&[], "", "");
    let good = s.folder().join("good.csv");
    let bad = s.folder().join("bad_name.csv");
    std::fs::write(&good, "ok\n").unwrap();
    std::fs::write(&bad, "rejected\n").unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the good file", || {
        arrived(&s, &good, "good.csv")
    });
    daemon.wait_until(Duration::from_secs(20), "the bad file to fail", || {
        status_json(&s.config)["failed"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    });
    let status = status_json(&s.config);
    let failed = &status["failed"][0];
    assert_eq!(failed["path"], bad.display().to_string(), "{status}");
    assert!(
        failed["reason"].as_str().unwrap().contains("'_'"),
        "{status}"
    );
    assert_eq!(status["folders"][0]["failed"], 1);
    assert_eq!(daemon.terminate(), Some(0));

    // Stopped daemon: the same report read from the database.
    let stopped = status_json(&s.config);
    assert_eq!(stopped["daemon"], "stopped");
    assert_eq!(stopped["failed"][0]["path"], bad.display().to_string());

    // Secrets given as the service gets them (EnvironmentFile=, $CREDENTIALS_DIRECTORY)
    // cannot be read from a shell, and a CA file may be missing while it is replaced; the
    // commands that reach no remote need neither. The last one stays for forget and retry.
    let folder = FolderBuilder::kifs("inbox", "ingest");
    for (secret, key) in [
        ("token_env = \"UPSYNC_E2E_UNSET_TOKEN\"", "kifs.token_env"),
        ("token_file = \"kifs.token\"", "kifs.token_file"),
        ("ca_file = \"corp-ca.pem\"", "kifs.ca_file"),
    ] {
        config_of(&s.emulator, secret, folder.clone()).write(&s.config);
        let (code, out, err) = without_secrets(&["status", "--json"], &s.config);
        assert_eq!(code, 0, "status with {secret}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("status --json");
        assert_eq!(report["failed"][0]["path"], bad.display().to_string());
        let (code, out, err) = without_secrets(&["status"], &s.config);
        assert!(
            code == 0 && out.contains("bad_name.csv"),
            "{code} {out} {err}"
        );
        let (code, out, err) = without_secrets(&["ls"], &s.config);
        assert!(code == 0 && out.contains("good.csv"), "{code} {out} {err}");
        let (code, _, err) = without_secrets(&["check"], &s.config);
        assert_eq!(code, 2, "check still reads {key}: {err}");
        assert!(err.contains(key), "{err}");
    }
    let good_path = good.to_str().unwrap();
    let (code, out, err) = without_secrets(&["forget", good_path], &s.config);
    assert!(
        code == 0 && out.contains("1 upload(s) forgotten"),
        "{code} {out} {err}"
    );
    let (code, out, err) = without_secrets(&["retry", "--all"], &s.config);
    assert!(
        code == 0 && out.contains("1 failed job(s)"),
        "{code} {out} {err}"
    );
}

/// `upsync ARGS -c CONFIG` without the variables that would let it read the secrets.
fn without_secrets(args: &[&str], config: &Path) -> (i32, String, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("UPSYNC_E2E_UNSET_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("upsync runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_restart_after_everything_is_uploaded_uploads_nothing() {
    let s = setup(&[], "", "");
    for i in 0..20 {
        write_file(&s.folder().join(format!("f{i}.bin")), 1000 + i, i);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "all files", || {
        (0..20).all(|i| {
            arrived(
                &s,
                &s.folder().join(format!("f{i}.bin")),
                &format!("f{i}.bin"),
            )
        })
    });
    assert_eq!(daemon.terminate(), Some(0));
    let before = upload_requests(&s);
    let mut daemon = DaemonProcess::start(&s.config);
    // Ready means the start-up scan has offered every file; settled means each offer that
    // queued a job has been uploaded and counted by KiFS.
    daemon.wait_until(
        Duration::from_secs(20),
        "the restarted daemon to be ready",
        || daemon.log_text().matches("upsync is running").count() >= 2,
    );
    daemon.wait_settled(&s.config, 20);
    assert_eq!(upload_requests(&s), before);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn json_encoding_uploads_whole_and_multipart_files() {
    let s = setup(&[], "encoding = \"json\"", "");
    let small = s.folder().join("small.txt");
    let large = s.folder().join("large.bin");
    write_file(&small, 4096, 1);
    write_file(&large, PART + 4096, 2);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(120), "both files", || {
        arrived(&s, &small, "small.txt") && arrived(&s, &large, "large.bin")
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn basic_and_bearer_credentials_are_sent_and_bad_ones_are_reported_while_the_daemon_runs() {
    for (emulator_args, auth) in [
        (
            ["--kifs-user", "alice:s3cret"],
            "username = \"alice\"\npassword = \"s3cret\"",
        ),
        (["--kifs-token", "tok123"], "token = \"tok123\""),
    ] {
        let s = setup(&emulator_args, auth, "");
        let path = s.folder().join("a.txt");
        std::fs::write(&path, "authenticated\n").unwrap();
        let mut daemon = DaemonProcess::start(&s.config);
        daemon.wait_until(Duration::from_secs(20), "the file", || {
            arrived(&s, &path, "a.txt")
        });
        assert_eq!(daemon.terminate(), Some(0));
    }
    let s = setup(
        &["--kifs-user", "alice:s3cret"],
        "username = \"alice\"\npassword = \"wrong\"",
        "",
    );
    let path = s.folder().join("a.txt");
    std::fs::write(&path, "waits for good credentials\n").unwrap();
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    let mut folder = refused_folder(&daemon, &s.config);
    let reason = folder["remote_check"]["reason"].as_str().unwrap();
    assert!(reason.contains("credentials"), "{folder}");
    daemon.wait_until(Duration::from_secs(20), "the file queued", || {
        folder = status_json(&s.config)["folders"][0].clone();
        folder["queued"] == 1
    });
    assert_eq!(upload_requests(&s), 0, "the file waits: {folder}");
    assert_eq!(daemon.exited(), None, "the daemon keeps running");
    let log = daemon.log_text();
    assert!(log.contains("credentials"), "{log}");
    assert!(
        !log.contains("wrong"),
        "the password leaked into the log: {log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A token file rotated in place (a secrets agent writing the new token) is used within
/// seconds, without a reload: the folder refused for the old token is checked again and its
/// file goes. Neither token shows in the log.
#[test]
fn a_token_file_rotated_in_place_is_used_without_a_reload() {
    let s = setup(
        &["--kifs-token", "new-token-42"],
        "token_file = \"kifs.token\"",
        "",
    );
    let token_file = s.tmp.path().join("kifs.token");
    std::fs::write(&token_file, "old-token-17\n").unwrap();
    let path = s.folder().join("a.txt");
    std::fs::write(&path, "sent once the new token is in the file\n").unwrap();
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    refused_folder(&daemon, &s.config);
    assert_eq!(upload_requests(&s), 0);

    std::fs::write(&token_file, "new-token-42\n").unwrap();
    daemon.wait_until(
        Duration::from_secs(30),
        "the file, sent with the new token",
        || arrived(&s, &path, "a.txt"),
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("old-token-17") && !log.contains("new-token-42"),
        "a token leaked into the log: {log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// Waits until the daemon reports the folder's remote as refused; returns the folder's
/// status.
fn refused_folder(daemon: &DaemonProcess, config: &Path) -> serde_json::Value {
    let mut folder = serde_json::Value::Null;
    daemon.wait_until(Duration::from_secs(20), "the refusal in status", || {
        folder = status_json(config)["folders"][0].clone();
        folder["remote_check"]["state"] == "refused"
    });
    folder
}

/// Writes `name` into the folder, settled, and returns its path.
fn settled_file(s: &Setup, name: &str) -> PathBuf {
    let path = s.folder().join(name);
    std::fs::write(&path, format!("{name} for the directory\n")).unwrap();
    backdate(&path, 60);
    path
}

/// The daemon started on the setup's folder, once its first file is in `ingest`.
fn started_with_a_first_file(s: &Setup) -> DaemonProcess {
    let first = settled_file(s, "first.txt");
    let daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the first file", || {
        arrived(s, &first, "first.txt")
    });
    daemon
}

/// A directory deleted on the server after the folder's check: with `create_directory`,
/// the next file creates it again and lands.
#[test]
fn a_directory_deleted_on_the_server_is_created_again_for_the_next_file() {
    let s = setup(&[], "", "");
    let mut daemon = started_with_a_first_file(&s);
    s.emulator.delete_kifs_directory("ingest");
    let second = settled_file(&s, "second.txt");
    daemon.wait_until(Duration::from_secs(20), "the second file", || {
        arrived(&s, &second, "second.txt")
    });
    let folder = &status_json(&s.config)["folders"][0];
    assert_eq!(folder["failed"], 0, "{folder}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A directory deleted on the server after the folder's check, in a folder that does not
/// create it: the folder is refused as its check would refuse it, the file waits instead of
/// failing, and once the directory is back a reload sends it.
#[test]
fn a_directory_deleted_on_the_server_refuses_the_folder_and_its_file_waits() {
    let s = setup(&[], "", "");
    let mut daemon = started_with_a_first_file(&s);
    let inbox_folder = FolderBuilder::kifs("inbox", "ingest").without("create_directory");
    config_of(&s.emulator, "", inbox_folder).write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(Duration::from_secs(20), "the reloaded folder ready", || {
        status_json(&s.config)["folders"][0]["remote_check"]["state"] == "ready"
            && daemon.log_text().contains("reload")
    });
    s.emulator.delete_kifs_directory("ingest");
    let second = settled_file(&s, "second.txt");
    daemon.wait_until(
        Duration::from_secs(20),
        "the folder refused, its file waiting",
        || {
            let folder = &status_json(&s.config)["folders"][0];
            folder["remote_check"]["state"] == "refused" && folder["retry_wait"] == 1
        },
    );
    let folder = &status_json(&s.config)["folders"][0];
    assert_eq!(folder["failed"], 0, "the file does not fail: {folder}");
    let reason = folder["remote_check"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'ingest' does not exist") && reason.contains("create_directory"),
        "{folder}"
    );
    s.emulator.create_kifs_directory("ingest");
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(Duration::from_secs(20), "the waiting file", || {
        arrived(&s, &second, "second.txt")
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_missing_or_read_only_directory_is_reported_and_fixing_it_needs_no_restart() {
    let s = setup(&[], "", "");
    let inbox_folder = FolderBuilder::kifs("inbox", "ingest");
    config_of(
        &s.emulator,
        "",
        inbox_folder.clone().without("create_directory"),
    )
    .write(&s.config);
    let path = s.folder().join("a.txt");
    std::fs::write(&path, "waits for its directory\n").unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    let folder = refused_folder(&daemon, &s.config);
    let reason = folder["remote_check"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'ingest'") && reason.contains("create_directory"),
        "{folder}"
    );
    assert_eq!(
        upload_requests(&s),
        0,
        "nothing is sent to a refused folder"
    );
    // The fix: let upsync create the directory, and reload.
    config_of(&s.emulator, "", inbox_folder).write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(Duration::from_secs(20), "the file after the fix", || {
        arrived(&s, &path, "a.txt")
    });
    assert_eq!(daemon.terminate(), Some(0));

    let s = setup(&["--kifs-read-only-directory", "ingest"], "", "");
    let mut daemon = DaemonProcess::start(&s.config);
    let folder = refused_folder(&daemon, &s.config);
    let reason = folder["remote_check"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("no write permission on KiFS directory 'ingest'"),
        "{folder}"
    );
    assert!(
        daemon
            .log_text()
            .contains("no write permission on KiFS directory 'ingest'")
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn check_rejects_an_unknown_key_naming_the_line_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("inbox")).unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nconcurency = 4\n[kifs]\nurl = \"http://127.0.0.1:1/kifs\"\n[[folder]]\npath = \"inbox\"\nkifs_directory = \"d\"\n",
    )
    .unwrap();
    let (code, _, stderr) = upsync(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad.toml:2"), "{stderr}");
    assert!(stderr.contains("concurency"), "{stderr}");
}

#[test]
fn check_prints_the_plan_of_a_good_config() {
    let s = setup(&[], "", "");
    let (code, stdout, stderr) = upsync(&["check", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ingest"), "{stdout}");
    assert!(
        stdout.contains(&s.folder().canonicalize().unwrap().display().to_string()),
        "{stdout}"
    );
}

/// A temp dir mounted over a folder with bindfs (FUSE): a file written to the dir beneath
/// raises no event on the mount, as a file another machine writes on a file server.
/// Unmounted when dropped.
struct FuseMount {
    beneath: tempfile::TempDir,
    mountpoint: PathBuf,
}

impl FuseMount {
    /// `None` (the test skips, saying why) where bindfs is missing or cannot mount here.
    fn over(folder: &Path) -> Option<FuseMount> {
        if !tool_available("bindfs", "bindfs") {
            return None;
        }
        let beneath = tempfile::tempdir().expect("a temp dir can be created");
        let mounted = Command::new("bindfs")
            .arg(beneath.path())
            .arg(folder)
            .output()
            .expect("bindfs runs");
        if !mounted.status.success() {
            // A container without the right to mount FUSE file systems.
            eprintln!(
                "skipped: bindfs cannot mount here: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(FuseMount {
            beneath,
            mountpoint: folder.to_path_buf(),
        })
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let unmounted = |program: &str, flag: &str| {
            Command::new(program)
                .arg(flag)
                .arg(&self.mountpoint)
                .status()
                .is_ok_and(|status| status.success())
        };
        let _ = unmounted("fusermount", "-u") || unmounted("umount", "-l");
    }
}

/// A folder on a FUSE mount is a folder on a shared file system: `check` says the daemon
/// rescans it for what other machines write, and says nothing of the same folder unmounted.
#[test]
fn check_notes_a_folder_on_a_shared_file_system() {
    let s = setup(&[], "", "");
    let config = s.config.to_str().unwrap();
    let (code, stdout, stderr) = upsync(&["check", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("shared file system"), "{stdout}");

    let Some(mount) = FuseMount::over(s.folder()) else {
        return;
    };
    let (code, stdout, stderr) = upsync(&["check", "-c", config]);
    drop(mount);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("is on a shared file system (fuse)")
            && stdout.contains("also rescans it every 30s"),
        "{stdout}"
    );
}

/// The daemon on a folder mounted through FUSE, with the periodic rescan off: a file
/// written beneath the mount raises no event and arrives by the folder's own rescans
/// (every 30 s); one written through the mount goes at once.
#[test]
fn a_file_written_beneath_a_fuse_mounted_folder_arrives_by_its_rescans() {
    let s = setup(&[], "", "");
    config_of(
        &s.emulator,
        "",
        FolderBuilder::kifs("inbox", "ingest").with("settle = \"1s\""),
    )
    .top("rescan_interval = \"0s\"")
    .write(&s.config);
    let Some(mount) = FuseMount::over(s.folder()) else {
        return;
    };
    let mut daemon = DaemonProcess::start(&s.config);
    let through = s.folder().join("through.txt");
    std::fs::write(&through, "written through the mount\n").unwrap();
    daemon.wait_until(
        Duration::from_secs(15),
        "the file written through the mount",
        || arrived(&s, &through, "through.txt"),
    );
    let beneath = mount.beneath.path().join("beneath.txt");
    std::fs::write(&beneath, "written beneath the mount\n").unwrap();
    backdate(&beneath, 60);
    daemon.wait_until(
        Duration::from_secs(45),
        "the file written beneath the mount",
        || arrived(&s, &s.folder().join("beneath.txt"), "beneath.txt"),
    );
    assert_eq!(daemon.terminate(), Some(0));
}
