//! Spool folders (`after_upload = "delete"` or `"move"`) end to end: the real daemon, real
//! files, the emulator over HTTP on 127.0.0.1. A file leaves the folder only once the
//! remote confirmed it (Redivis: its import completed), checked through the remote's
//! listings and `upsync status --json`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TABLE: &str = "test.dataset:next.spool";
const TOKEN: &str = "e2e-spool-token-90be";
const WAIT: Duration = Duration::from_secs(60);

/// A test's temp dir, emulator, config and its one watched folder.
type Setup = Site;

/// A folder `outbox` with `folder_extra`, to the KiFS directory `ingest` when `kifs`, else
/// to the Redivis table [`TABLE`]; the emulator gets `emulator_args`.
fn setup(kifs: bool, folder_extra: &str, emulator_args: &[&str]) -> Setup {
    let mut args = vec!["--redivis-token", TOKEN];
    args.extend_from_slice(emulator_args);
    let site = Site::start(&["outbox"], &args);
    if !kifs {
        site.emulator.create_redivis_table(TABLE, false);
    }
    one_folder_config(&site, kifs, TABLE, "UPSYNC_E2E_SPOOL_TOKEN")
        .each_folder(|folder| folder.with(folder_extra))
        .write(&site.config);
    // SAFETY: set before any daemon is spawned; the tests only read it through children.
    unsafe { std::env::set_var("UPSYNC_E2E_SPOOL_TOKEN", TOKEN) };
    site
}

impl Setup {
    /// Writes `rel` and returns its MD5.
    fn write(&self, rel: &str, seed: u64) -> String {
        let path = self.folder().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_file(&path, 1000 + seed, seed);
        backdate(&path, 60);
        file_md5_hex(&path).unwrap()
    }

    fn kifs_md5(&self, rel: &str) -> Option<String> {
        file_md5_hex(&self.emulator.kifs_file(&format!("ingest/{rel}")))
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

#[test]
fn kifs_spool_delete_empties_the_folder_as_files_arrive_whole() {
    let s = setup(true, "after_upload = \"delete\"", &[]);
    let names = ["a.csv", "nested/b.csv", "nested/deeper/c.csv"];
    let sums: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| s.write(n, i as u64))
        .collect();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the spool folder to hold no file", || {
        files_under(s.folder()).is_empty()
    });
    for (name, sum) in names.iter().zip(&sums) {
        assert_eq!(
            s.kifs_md5(name).as_deref(),
            Some(sum.as_str()),
            "{name} on KiFS"
        );
    }
    // A file dropped in later leaves too.
    let later = s.write("later.csv", 7);
    daemon.wait_until(WAIT, "the later file to leave", || {
        files_under(s.folder()).is_empty()
    });
    assert_eq!(s.kifs_md5("later.csv"), Some(later));
    daemon.terminate();
}

#[test]
fn kifs_spool_move_keeps_the_relative_path_in_the_archive() {
    let s = setup(
        true,
        "after_upload = \"move\"\narchive_dir = \"archive\"",
        &[],
    );
    let sum = s.write("day/one.csv", 1);
    let mut daemon = DaemonProcess::start(&s.config);
    let archive = s.tmp.path().join("archive");
    daemon.wait_until(WAIT, "the file to move into the archive", || {
        archive.join("day/one.csv").exists()
    });
    assert_eq!(
        file_md5_hex(&archive.join("day/one.csv")),
        Some(sum.clone())
    );
    assert_eq!(s.kifs_md5("day/one.csv"), Some(sum));
    assert!(files_under(s.folder()).is_empty());
    daemon.terminate();
}

/// A pipeline that drops a file of the same name again: each version is archived, none
/// replaces the one archived before it (the remote holds only the newest).
#[test]
fn kifs_spool_move_keeps_every_version_of_a_name_in_the_archive() {
    let s = setup(
        true,
        "after_upload = \"move\"\narchive_dir = \"archive\"",
        &[],
    );
    let archive = s.tmp.path().join("archive");
    let mut daemon = DaemonProcess::start(&s.config);
    let mut sums = Vec::new();
    for (seed, archived) in [
        (1, "day/one.csv"),
        (2, "day/one.1.csv"),
        (3, "day/one.2.csv"),
    ] {
        sums.push(s.write("day/one.csv", seed));
        daemon.wait_until(WAIT, "the version to move into the archive", || {
            archive.join(archived).exists()
        });
    }
    assert_eq!(
        files_under(&archive),
        ["day/one.1.csv", "day/one.2.csv", "day/one.csv"]
    );
    for (archived, sum) in ["day/one.csv", "day/one.1.csv", "day/one.2.csv"]
        .iter()
        .zip(&sums)
    {
        assert_eq!(file_md5_hex(&archive.join(archived)).as_ref(), Some(sum));
    }
    assert_eq!(s.kifs_md5("day/one.csv").as_ref(), sums.last());
    assert!(files_under(s.folder()).is_empty());
    assert_eq!(daemon.terminate(), Some(0));
}

/// A reload that turns a folder into a spool folder applies at once: the files it
/// uploaded before leave, and so do new ones.
#[test]
fn a_reload_that_makes_a_folder_a_spool_folder_applies_at_once() {
    let s = setup(true, "", &[]);
    let before = s.write("before.csv", 1);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the first file on the remote", || {
        s.kifs_md5("before.csv").as_ref() == Some(&before)
    });
    daemon.wait_settled(&s.config, 1);
    assert!(
        s.folder().join("before.csv").exists(),
        "not a spool folder yet"
    );

    one_folder_config(&s, true, TABLE, "UPSYNC_E2E_SPOOL_TOKEN")
        .each_folder(|folder| folder.with("after_upload = \"delete\""))
        .write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(WAIT, "the file uploaded before the reload to leave", || {
        !s.folder().join("before.csv").exists()
    });
    let after = s.write("after.csv", 2);
    daemon.wait_until(WAIT, "the file written after the reload to leave", || {
        s.kifs_md5("after.csv").as_ref() == Some(&after) && files_under(s.folder()).is_empty()
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn redivis_spool_removes_a_file_only_after_its_import_completed() {
    let s = setup(
        false,
        "after_upload = \"delete\"",
        &["--redivis-fail-name-pattern", "bad*"],
    );
    s.write("good.csv", 1);
    s.write("bad.csv", 2);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        WAIT,
        "the import of bad.csv to fail and good.csv to leave",
        || {
            let status = status_json(&s.config);
            status["folders"][0]["failed"].as_u64() == Some(1)
                && !s.folder().join("good.csv").exists()
        },
    );
    assert!(
        s.folder().join("bad.csv").exists(),
        "a failed import leaves the file in place"
    );
    let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
    let by_name = uploads_by_name(&uploads);
    assert_eq!(by_name["good.csv"][0]["status"], "completed");
    daemon.terminate();
}

#[test]
fn a_file_changed_while_its_first_version_imports_leaves_only_after_the_new_version() {
    let s = setup(
        false,
        "after_upload = \"delete\"",
        &["--redivis-processing-delay", "3s"],
    );
    s.write("day.csv", 1);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(WAIT, "the first version to be posted", || {
        !s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty()
    });
    // New bytes while Redivis still imports the first version: its confirmation must not
    // remove them (the new version needs its own settle, post and 3 s import first).
    let second = s.write("day.csv", 2);
    daemon.wait_until(WAIT, "the first version's import to complete", || {
        s.emulator
            .list_redivis_uploads(TABLE, TOKEN)
            .iter()
            .any(|u| u["status"] == "completed")
    });
    assert_eq!(
        file_md5_hex(&s.folder().join("day.csv")),
        Some(second.clone()),
        "the changed file stays after the first version is confirmed"
    );
    daemon.wait_until(WAIT, "the new version to leave", || {
        !s.folder().join("day.csv").exists()
    });
    let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
    assert!(
        uploads.iter().any(|u| u["status"] == "completed"
            && u["hash"].as_str().unwrap_or("").to_lowercase() == second),
        "the file left only once its new bytes were imported: {uploads:?}"
    );
    daemon.terminate();
}

/// The warning lines of `log` (the daemon's) that contain `text`.
fn warnings_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|line| line.contains(" WARN ") && line.contains(text))
        .collect()
}

/// A spool folder the daemon cannot write (as under the shipped systemd unit, whose
/// `ProtectSystem=strict` makes it read-only): the daemon says so once when it starts
/// watching the folder, with the fix, uploads the files and leaves them; the deletes that
/// fail log one warning per scan, not one per file. As root, the daemon runs as nobody,
/// to whom a folder of root's with mode 0755 is read-only.
#[test]
fn a_spool_folder_the_daemon_cannot_write_is_named_once_and_its_files_stay() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    const FILES: usize = 20;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root to run the daemon as another user");
        return;
    }
    let s = setup(true, "after_upload = \"delete\"", &[]);
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}.csv")).collect();
    let sums: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| s.write(name, i as u64))
        .collect();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Readable to nobody, writable by root alone; only the state dir is nobody's.
    mode(s.tmp.path(), 0o755);
    mode(&s.config, 0o644);
    mode(s.folder(), 0o755);
    for name in &names {
        mode(&s.folder().join(name), 0o644);
    }
    let state = s.tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let as_nobody = |command: &mut std::process::Command| {
        command.uid(NOBODY).gid(NOBODY);
    };

    let mut daemon = DaemonProcess::start_with(&s.config, as_nobody);
    daemon.wait_settled(&s.config, FILES as u64);
    for (name, sum) in names.iter().zip(&sums) {
        assert_eq!(s.kifs_md5(name).as_ref(), Some(sum), "{name} on KiFS");
    }
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let first_run = daemon.log_text();
    let folder = format!("\"{}\" (Permission denied", s.folder().display());
    assert_eq!(
        warnings_with(&first_run, &folder).len(),
        1,
        "the folder is named once: {first_run}"
    );
    let fix = format!("ReadWritePaths={} in a drop-in", s.folder().display());
    assert!(warnings_with(&first_run, &fix).len() == 1, "{first_run}");
    assert_eq!(files_under(s.folder()), names, "every file stays");

    // The start-up scan finds every file uploaded and fails to delete each: one line,
    // logged before the scan's own line.
    let mut daemon = DaemonProcess::start_with(&s.config, as_nobody);
    let second_run = || daemon.log_text()[first_run.len()..].to_string();
    daemon.wait_until(WAIT, "the start-up scan to end", || {
        second_run().contains("folder scanned")
    });
    let log = second_run();
    let lines = warnings_with(&log, "upsync::watch::spool:");
    assert_eq!(lines.len(), 1, "one line for the scan: {log}");
    assert!(
        lines[0].contains(&format!("{FILES} uploaded file(s) cannot be removed")),
        "{log}"
    );
    assert_eq!(files_under(s.folder()), names, "every file stays");
    assert_eq!(daemon.terminate(), Some(0), "{log}");
}
