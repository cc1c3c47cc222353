//! Resilience of the whole daemon: graceful stop and reload, remote outages, local faults.
//! The real `upsync` binary against the real emulator process, real files, real signals.
//!
//! Cases:
//! - SIGTERM mid-upload: exit 0 within `shutdown_timeout`, nothing cancelled, the restart
//!   resumes the same upload and finishes it once; a second signal exits at once and the
//!   restart still delivers the file whole; `status` of the stopped daemon (after SIGTERM
//!   or kill -9) counts the interrupted upload as queued, not active, and leaves the
//!   database as it was.
//! - SIGHUP: an added folder is watched, a removed one no longer is, queued jobs of kept
//!   folders all arrive; an invalid file is rejected with a log line and the old config
//!   keeps running; a folder given another directory, by a reload or between two runs, is
//!   uploaded there, also a file whose upload to the old one is answered after the reload
//!   or cut by a kill -9, and `status` of the stopped daemon counts none of its files done
//!   until then; queued files a reload or a restart no longer selects are not.
//! - Outages: a remote answering 503 and a remote refusing connections (with a daemon
//!   restart in between): requests during the outage stay bounded, job-level retries are
//!   persisted with their next attempt time, everything arrives once the remote is back;
//!   `status` says a retry whose time went by waits for the remote, not a past time.
//! - Local faults: `state_dir` on a full filesystem (also at a start, whose snapshot of
//!   the database the full disk cuts short), a corrupt and a foreign state
//!   database (then `--rebuild-state`), an unreadable file (uploaded once its permission is
//!   fixed, without `upsync retry`), a watched folder missing at start or deleted and
//!   recreated, two daemons on one `state_dir`.
//!
//! Outage tests cap job-level retry delays with `retry_max_delay` so they finish in CI
//! time; `UPSYNC_OUTAGE_SECS` lengthens the outage (default 30 s).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A test's temp dir, emulator, config and its one watched folder.
type Setup = Site;

impl Setup {
    /// One folder `inbox` → KiFS directory `ingest` on a fresh emulator.
    fn new(emulator_args: &[&str], top_extra: &str) -> Setup {
        let site = Site::start(&["inbox"], emulator_args);
        site.write_config(top_extra, &[("inbox", "ingest")]);
        site
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes the config with `folders` as (local folder, KiFS directory) pairs.
    fn write_config(&self, top_extra: &str, folders: &[(&str, &str)]) {
        let mut config = ConfigBuilder::new()
            .top("concurrency = 2")
            .top(top_extra)
            .kifs(&self.emulator.kifs_url());
        for (path, directory) in folders {
            config = config.folder(FolderBuilder::kifs(path, directory));
        }
        config.write(&self.config);
    }

    fn arrived(&self, local: &Path, name: &str) -> bool {
        self.emulator.kifs_holds(local, name)
    }

    fn status(&self) -> serde_json::Value {
        status_json(&self.config)
    }

    fn kifs_stats(&self) -> serde_json::Value {
        self.emulator.kifs_stats()
    }

    fn upload_requests(&self) -> u64 {
        self.emulator.kifs_upload_requests()
    }

    /// Files the emulator stored: several small files can share one request.
    fn files_stored(&self) -> u64 {
        self.kifs_stats()["files_stored"].as_u64().unwrap_or(0)
    }
}

fn wait_running(daemon: &DaemonProcess, times: usize) {
    wait_until(Duration::from_secs(30), "the daemon to be ready", || {
        daemon.log_text().matches("upsync is running").count() >= times
    });
}

const PART: u64 = 62_914_560;

// ---------------------------------------------------------------- graceful stop and reload

#[test]
fn sigterm_mid_upload_exits_zero_within_the_timeout_and_the_restart_completes_it_once() {
    let s = Setup::new(&["--kifs-part-delay", "700"], "shutdown_timeout = \"4s\"");
    let path = s.folder().join("big.bin");
    write_file(&path, 3 * PART + 100, 7);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(60), "one acknowledged part", || {
        s.kifs_stats()["multipart_operations"]["upload_part"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let asked = Instant::now();
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4 + 3),
        "SIGTERM took {took:?} with shutdown_timeout 4s"
    );
    let log = daemon.log_text();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    // The stop cancels nothing: the upload stays on the server, its progress saved.
    assert_eq!(s.kifs_stats()["multipart_operations"]["cancel"], 0);

    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(120), "the whole file", || {
        s.arrived(&path, "ingest/big.bin")
    });
    assert_eq!(s.kifs_stats()["multipart_operations"]["complete"], 1);
    assert_eq!(
        s.kifs_stats()["multipart_operations"]["init"],
        1,
        "the restart resumed the same upload"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once_and_the_restart_still_delivers_the_file_whole() {
    let s = Setup::new(&["--kifs-part-delay", "2500"], "shutdown_timeout = \"60s\"");
    let path = s.folder().join("big.bin");
    write_file(&path, 2 * PART + 100, 8);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(
        Duration::from_secs(60),
        "the multipart upload to start",
        || {
            s.kifs_stats()["multipart_operations"]["init"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    daemon.signal(libc::SIGTERM);
    wait_until(Duration::from_secs(10), "the shutdown to begin", || {
        daemon.log_text().contains("shutting down")
    });
    let asked = Instant::now();
    daemon.signal(libc::SIGINT);
    let code = daemon.wait_exit(Duration::from_secs(5));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(code, Some(130), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("second signal"));

    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(120), "the whole file", || {
        s.arrived(&path, "ingest/big.bin")
    });
    // Settled with the file done: a second multipart upload would be pending or counted.
    daemon.wait_settled(&s.config, 1);
    assert_eq!(s.kifs_stats()["multipart_operations"]["complete"], 1);
    assert_eq!(daemon.terminate(), Some(0));
}

/// Starts the daemon and waits until an upload of a new file `name` hangs at the remote
/// (a stalled request), its folder's remote check done first so that the stall catches the
/// upload.
fn daemon_with_a_hanging_upload(s: &Setup, name: &str) -> DaemonProcess {
    let daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(20), "the folder's remote ready", || {
        s.status()["folders"][0]["remote_check"]["state"] == "ready"
    });
    // Counted since the emulator started: a request an earlier daemon left stalled may
    // still be held, so `stalled_now` alone could answer before this upload began.
    let stalls = || json_number(&s.emulator.get_json("/_emulator/stats")["faults"]["stall"]);
    let before = stalls().unwrap_or(0);
    s.emulator.post_json(
        "/_emulator/faults",
        &serde_json::json!({"target": "kifs", "action": {"stall": true}}),
    );
    let path = s.folder().join(name);
    std::fs::write(&path, "hangs\n").unwrap();
    backdate(&path, 60);
    // A stalled request alone could be another one the daemon sent meanwhile; the file's
    // upload is the one in flight.
    wait_until(Duration::from_secs(30), "the upload to hang", || {
        stalls().unwrap_or(0) > before
            && s.status()["in_flight"].as_array().is_some_and(|uploads| {
                uploads
                    .iter()
                    .any(|upload| upload["path"] == path.to_str().unwrap())
            })
    });
    daemon
}

/// The states of the jobs a stopped daemon left, read straight from its state database.
fn job_states(s: &Setup) -> Vec<&'static str> {
    let mut states: Vec<_> = jobs_of_stopped_daemon(s)
        .iter()
        .map(|job| job.state.name())
        .collect();
    states.sort();
    states
}

/// `upsync status` of a stopped daemon does not show an upload that a stop or a kill -9
/// ended as active: nothing runs it, and the next start queues it again. The counts still
/// add up, and the state database still holds the job as the daemon left it.
#[test]
fn a_stopped_daemon_shows_the_upload_its_stop_interrupted_as_queued() {
    let s = Setup::new(&[], "shutdown_timeout = \"1s\"");
    let mut daemon = daemon_with_a_hanging_upload(&s, "first.csv");
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let report = s.status();
    assert_eq!(report["daemon"], "stopped", "{report}");
    let folder = &report["folders"][0];
    assert_eq!(folder["active"], 0, "{report}");
    assert_eq!(folder["queued"], 1, "{report}");
    assert_eq!(folders_total(&report, "finalizing"), 0, "{report}");
    let (code, text, stderr) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains(": 1 queued, 0 active, "), "{text}");
    assert_eq!(
        job_states(&s),
        ["active"],
        "status changed the state database"
    );

    // The next start sends it; then a kill -9 ends another upload.
    s.emulator.delete("/_emulator/faults");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_settled(&s.config, 1);
    assert_eq!(daemon.terminate(), Some(0));
    let mut daemon = daemon_with_a_hanging_upload(&s, "second.csv");
    daemon.kill9();
    let report = s.status();
    let folder = &report["folders"][0];
    assert_eq!(
        (&folder["queued"], &folder["active"], &folder["done"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(1)
        ),
        "{report}"
    );
    assert_eq!(
        job_states(&s),
        ["active"],
        "status changed the state database"
    );
}

/// A file whose retry time went by while its remote is still down is not shown with that
/// time: the workers leave it until the remote answers again, which makes it due at once.
#[test]
fn a_retry_held_by_a_remote_that_is_down_says_it_waits_for_the_remote() {
    let mut s = Setup::new(&[], "retry_max_delay = \"1s\"");
    let mut daemon = outage_daemon(&s.config);
    wait_until(Duration::from_secs(20), "the folder's remote ready", || {
        s.status()["folders"][0]["remote_check"]["state"] == "ready"
    });
    s.emulator.stop();
    let path = s.folder().join("waits.csv");
    std::fs::write(&path, "waits\n").unwrap();
    backdate(&path, 60);
    let mut report = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(60),
        "a retry whose time went by while the remote is down",
        || {
            report = s.status();
            let now = report["generated_at_ms"].as_u64().unwrap_or(0);
            report["remotes"][0]["state"] == "down"
                && json_number(&report["retrying"][0]["next_attempt_ms"]).is_some_and(|at| at < now)
        },
    );
    assert_eq!(report["retrying"][0]["waits_for"], "remote", "{report}");
    let (code, text, stderr) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let line = text
        .lines()
        .find(|line| line.contains("waits.csv"))
        .unwrap_or_else(|| panic!("the waiting file is listed: {text}"));
    assert!(line.contains("when its remote answers again"), "{text}");

    s.emulator.start_again(None);
    wait_until(
        Duration::from_secs(60),
        "the file once the remote is back",
        || s.arrived(&path, "ingest/waits.csv"),
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sighup_adds_and_removes_folders_keeps_queued_jobs_and_rejects_an_invalid_file() {
    let s = Setup::new(&[], "");
    for dir in ["kept", "removed", "added"] {
        std::fs::create_dir_all(s.dir().join(dir)).unwrap();
    }
    s.write_config(
        "concurrency = 1",
        &[("kept", "kept"), ("removed", "removed")],
    );
    // Every upload waits a second, so most of the kept folder's jobs are queued at the reload.
    let delays: Vec<serde_json::Value> = (0..12)
        .map(|_| serde_json::json!({"target": "kifs", "action": {"delay_ms": 1000}}))
        .collect();
    let kept: Vec<PathBuf> = (0..8)
        .map(|i| s.dir().join(format!("kept/k{i}.csv")))
        .collect();
    for (i, path) in kept.iter().enumerate() {
        write_file(path, 1000 + i as u64, i as u64);
        backdate(path, 60);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    wait_running(&daemon, 1);
    s.emulator
        .post_json("/_emulator/faults", &serde_json::Value::Array(delays));
    wait_until(Duration::from_secs(20), "the first upload", || {
        s.upload_requests() >= 1
    });

    // The watch list below is readable: the kept folder is watched.
    assert!(inotify_watches_on(daemon.pid(), &s.dir().join("kept")) >= 1);
    s.write_config("concurrency = 1", &[("kept", "kept"), ("added", "added")]);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the reload", || {
        let folders = s.status()["folders"].clone();
        let shown = |name: &str| {
            folders.as_array().is_some_and(|all| {
                all.iter()
                    .any(|f| f["path"].as_str().is_some_and(|p| p.ends_with(name)))
            })
        };
        shown("added") && !shown("removed")
    });
    // The kernel's own list of the daemon's watches: once the removed folder has none, no
    // event of it can reach the daemon (its periodic rescan is 10 minutes away).
    let removed_dir = s.dir().join("removed");
    wait_until(
        Duration::from_secs(20),
        "the removed folder unwatched",
        || inotify_watches_on(daemon.pid(), &removed_dir) == 0,
    );
    let added = s.dir().join("added/a.csv");
    let removed = removed_dir.join("r.csv");
    std::fs::write(&removed, "must not be uploaded\n").unwrap();
    std::fs::write(&added, "added after the reload\n").unwrap();
    wait_until(
        Duration::from_secs(60),
        "every kept file and the added one",
        || {
            kept.iter()
                .enumerate()
                .all(|(i, p)| s.arrived(p, &format!("kept/k{i}.csv")))
                && s.arrived(&added, "added/a.csv")
        },
    );
    daemon.wait_settled(&s.config, kept.len() as u64 + 1);
    assert!(
        !s.emulator.kifs_file("removed/r.csv").exists(),
        "a file of the removed folder was uploaded"
    );
    // The running daemon reports on the folders configured now.
    let status = s.status();
    assert_eq!(status["daemon"], "running", "{status}");
    let shown: Vec<&str> = status["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|folder| folder["path"].as_str().unwrap())
        .collect();
    assert_eq!(shown.len(), 2, "{status}");
    assert!(shown.iter().any(|path| path.ends_with("kept")), "{status}");
    assert!(shown.iter().any(|path| path.ends_with("added")), "{status}");

    // An invalid file changes nothing: the old config keeps running.
    std::fs::write(&s.config, "state_dir = \"state\"\nconcurrency = \"many\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the rejection", || {
        daemon.log_text().contains("config reload rejected")
    });
    let log = daemon.log_text();
    assert!(
        log.contains("concurrency"),
        "the log names the bad key: {log}"
    );
    let later = s.dir().join("added/later.csv");
    std::fs::write(&later, "still running\n").unwrap();
    wait_until(
        Duration::from_secs(20),
        "a file after the rejected reload",
        || s.arrived(&later, "added/later.csv"),
    );
    assert_eq!(daemon.exited(), None);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A folder pointed at another KiFS directory is uploaded there, by a reload and between
/// two runs; the copies in the old directories stay, and a restart that changes nothing
/// uploads nothing.
#[test]
fn a_folder_given_another_directory_uploads_its_files_there_by_reload_and_restart() {
    let s = Setup::new(&[], "");
    let files: Vec<PathBuf> = ["a.csv", "sub/b.csv"]
        .iter()
        .map(|name| s.folder().join(name))
        .collect();
    for (i, path) in files.iter().enumerate() {
        write_file(path, 2000 + i as u64, i as u64);
        backdate(path, 60);
    }
    let arrived_in = |directory: &str| {
        s.arrived(&files[0], &format!("{directory}/a.csv"))
            && s.arrived(&files[1], &format!("{directory}/sub/b.csv"))
    };
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "the files in ingest", || {
        arrived_in("ingest")
    });
    daemon.wait_settled(&s.config, 2);

    s.write_config("", &[("inbox", "moved")]);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(
        Duration::from_secs(30),
        "the files in the directory the reload named",
        || arrived_in("moved"),
    );
    daemon.wait_settled(&s.config, 2);
    assert_eq!(daemon.terminate(), Some(0));

    s.write_config("", &[("inbox", "third")]);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        Duration::from_secs(30),
        "the files in the directory named between two runs",
        || arrived_in("third"),
    );
    daemon.wait_settled(&s.config, 2);
    assert!(
        arrived_in("ingest") && arrived_in("moved"),
        "old copies stay"
    );
    let ledger = upsync(&["ls", "-c", s.config.to_str().unwrap(), "--json"]).1;
    let remotes: Vec<String> = serde_json::from_str::<serde_json::Value>(&ledger)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["remote"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(remotes, ["third/a.csv", "third/sub/b.csv"], "{ledger}");
    assert_eq!(daemon.terminate(), Some(0));

    let stored = s.files_stored();
    let mut daemon = DaemonProcess::start(&s.config);
    // Ready means the start-up scan has offered every file; settled means each offer that
    // queued a job has been uploaded and counted by KiFS. The log holds every run's lines.
    daemon.wait_until(Duration::from_secs(30), "the third start ready", || {
        daemon.log_text().matches("upsync is running").count() >= 3
    });
    daemon.wait_settled(&s.config, 2);
    assert_eq!(s.files_stored(), stored, "a restart sent files again");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Writes `name` in the folder of the running daemon behind `s`, its remote check done,
/// and waits until the remote holds it (in `directory`) but holds back its answer: the
/// upload is still in flight. The answer comes `answer_ms` after the request.
fn upload_answered_late(s: &Setup, name: &str, directory: &str, answer_ms: u64) -> PathBuf {
    wait_until(Duration::from_secs(20), "the folder's remote ready", || {
        s.status()["folders"][0]["remote_check"]["state"] == "ready"
    });
    let delays = || json_number(&s.emulator.get_json("/_emulator/stats")["faults"]["delay"]);
    let before = delays().unwrap_or(0);
    s.emulator.post_json(
        "/_emulator/faults",
        &serde_json::json!({"target": "kifs", "action": {"delay_ms": answer_ms}}),
    );
    let path = s.folder().join(name);
    std::fs::write(&path, format!("{name} in flight\n")).unwrap();
    backdate(&path, 60);
    wait_until(
        Duration::from_secs(30),
        "the upload to wait for its answer",
        || {
            delays().unwrap_or(0) > before
                && s.arrived(&path, &format!("{directory}/{name}"))
                && in_flight(s, &path)
        },
    );
    path
}

fn in_flight(s: &Setup, path: &Path) -> bool {
    s.status()["in_flight"]
        .as_array()
        .is_some_and(|uploads| uploads.iter().any(|u| u["path"] == path.to_str().unwrap()))
}

/// Points the folder at `directory` and reloads; returns once the running daemon reports
/// the new directory while `path`'s upload to the old one still waits for its answer.
fn retarget_during(daemon: &DaemonProcess, s: &Setup, directory: &str, path: &Path) {
    s.write_config("", &[("inbox", directory)]);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the reload to apply", || {
        let report = s.status();
        let target = report["folders"][0]["target"].as_str().unwrap_or("");
        target.contains(directory)
    });
    assert!(
        in_flight(s, path),
        "the upload was answered before the reload: {}",
        daemon.log_text()
    );
}

/// An upload to the old directory that is answered after a reload gave the folder another
/// one is not taken as uploaded: the file is sent to the new directory. A kill -9 while
/// such an upload waits for its answer loses nothing either: the next start sends it there.
#[test]
fn an_upload_answered_after_a_reload_changed_the_directory_is_sent_to_the_new_one() {
    let s = Setup::new(&[], "");
    let mut daemon = DaemonProcess::start(&s.config);
    let first = upload_answered_late(&s, "first.csv", "ingest", 4_000);
    retarget_during(&daemon, &s, "moved", &first);
    daemon.wait_settled(&s.config, 1);
    assert!(
        s.arrived(&first, "moved/first.csv"),
        "the late answer from the old directory was taken as the upload: {}",
        daemon.log_text()
    );

    let second = upload_answered_late(&s, "second.csv", "moved", 30_000);
    retarget_during(&daemon, &s, "third", &second);
    daemon.kill9();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_settled(&s.config, 2);
    assert!(s.arrived(&first, "third/first.csv") && s.arrived(&second, "third/second.csv"));
    let ledger = upsync(&["ls", "-c", s.config.to_str().unwrap(), "--json"]).1;
    let remotes: Vec<String> = serde_json::from_str::<serde_json::Value>(&ledger)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["remote"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(remotes, ["third/first.csv", "third/second.csv"], "{ledger}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// `upsync status` of a stopped daemon whose folder was given another directory since its
/// uploads agrees with the next start, which drops its ledger: none of its files is done,
/// and it says the target changed; read from the summary a clean stop leaves and from
/// the database alike. The start then uploads them there, and status counts them again.
#[test]
fn a_stopped_daemon_shows_a_folder_given_another_directory_with_no_file_done() {
    let s = Setup::new(&[], "");
    for (i, name) in ["a.csv", "b.csv"].iter().enumerate() {
        let path = s.folder().join(name);
        write_file(&path, 1000 + i as u64, i as u64);
        backdate(&path, 60);
    }
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_settled(&s.config, 2);
    assert_eq!(daemon.terminate(), Some(0));
    let folder = &s.status()["folders"][0];
    assert_eq!(
        (&folder["done"], &folder["target_changed"]),
        (&2.into(), &false.into())
    );

    s.write_config("", &[("inbox", "moved")]);
    let summary = s.dir().join("state").join("status.summary");
    assert!(summary.exists(), "a clean stop leaves the summary");
    for source in ["the summary", "the database"] {
        let report = s.status();
        assert_eq!(report["daemon"], "stopped", "{report}");
        let folder = &report["folders"][0];
        assert_eq!(folder["done"], 0, "read from {source}: {report}");
        assert_eq!(
            folder["target_changed"], true,
            "read from {source}: {report}"
        );
        let (code, text, stderr) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            text.contains("waiting to retry, 0 failed, 0 done"),
            "{text}"
        );
        assert!(
            text.contains("target changed since its files were uploaded"),
            "{text}"
        );
        std::fs::remove_file(&summary).unwrap();
    }

    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_settled(&s.config, 2);
    assert!(s.arrived(&s.folder().join("a.csv"), "moved/a.csv"));
    assert_eq!(daemon.terminate(), Some(0));
    let folder = &s.status()["folders"][0];
    assert_eq!(
        (&folder["done"], &folder["target_changed"]),
        (&2.into(), &false.into())
    );
}

/// Files queued before a reload or a restart narrowed the folder's selection (`exclude`,
/// `include`, `recursive = false`) are not uploaded; the files still selected are.
#[test]
fn queued_files_a_reload_or_a_restart_no_longer_selects_are_not_uploaded() {
    let s = Setup::new(&[], "");
    let write_config = |directory: &str, folder_extra: &str| {
        ConfigBuilder::new()
            .top("concurrency = 2")
            .kifs(&s.emulator.kifs_url())
            .folder(FolderBuilder::kifs("inbox", directory).with(folder_extra))
            .write(&s.config);
    };
    let names = ["keep.txt", "drop.csv", "sub/deep.txt"];
    for (i, name) in names.iter().enumerate() {
        let path = s.folder().join(name);
        write_file(&path, 1000 + i as u64, i as u64);
        backdate(&path, 60);
    }
    let held_back = |daemon: &DaemonProcess, directory: &str| {
        daemon.wait_until(
            Duration::from_secs(30),
            "every file queued while the directory is missing",
            || {
                let folder = s.status()["folders"][0].clone();
                folder["remote_check"]["state"] == "refused" && folder["queued"] == 3
            },
        );
        assert!(!s.emulator.kifs_file(directory).exists());
    };
    let arrived = |directory: &str, name: &str| {
        s.arrived(&s.folder().join(name), &format!("{directory}/{name}"))
    };

    write_config("ingest", "create_directory = false");
    let mut daemon = DaemonProcess::start(&s.config);
    held_back(&daemon, "ingest");
    write_config("ingest", "exclude = [\"*.csv\"]\nrecursive = false");
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(Duration::from_secs(30), "the file still selected", || {
        arrived("ingest", "keep.txt")
    });
    daemon.wait_settled(&s.config, 1);
    for name in ["drop.csv", "sub/deep.txt"] {
        let remote = format!("ingest/{name}");
        assert!(
            !s.emulator.kifs_file(&remote).exists(),
            "{remote} was uploaded"
        );
    }
    assert_eq!(daemon.terminate(), Some(0));

    write_config("later", "create_directory = false");
    let mut daemon = DaemonProcess::start(&s.config);
    held_back(&daemon, "later");
    assert_eq!(daemon.terminate(), Some(0));
    write_config("later", "include = [\"*.txt\"]");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "the files still selected", || {
        arrived("later", "keep.txt") && arrived("later", "sub/deep.txt")
    });
    daemon.wait_settled(&s.config, 2);
    assert!(
        !s.emulator.kifs_file("later/drop.csv").exists(),
        "a file the restart no longer selects was uploaded"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

// ---------------------------------------------------------------- outages

fn outage() -> Duration {
    let secs = std::env::var("UPSYNC_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// The config of the outage tests: job-level retries at most 8 s apart.
const OUTAGE_CONFIG: &str = "retry_max_delay = \"8s\"";

fn outage_daemon(config: &Path) -> DaemonProcess {
    DaemonProcess::start(config)
}

/// Reads the jobs straight from the state database of a stopped daemon.
fn jobs_of_stopped_daemon(s: &Setup) -> Vec<upsync::queue::Job> {
    let store = upsync::queue::Store::open(&s.dir().join("state"))
        .expect("the stopped daemon released the state database");
    store.jobs().expect("the jobs decode")
}

fn write_batch(s: &Setup, count: usize, prefix: &str) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = s.folder().join(format!("{prefix}{i}.bin"));
            write_file(&path, 10_000 + i as u64, 100 + i as u64);
            backdate(&path, 60);
            path
        })
        .collect()
}

fn all_arrived(s: &Setup, files: &[PathBuf]) -> bool {
    files.iter().all(|p| {
        let name = p.file_name().unwrap().to_str().unwrap();
        s.arrived(p, &format!("ingest/{name}"))
    })
}

#[test]
fn a_remote_answering_503_for_a_while_gets_bounded_requests_then_everything() {
    let mut s = Setup::new(&[], OUTAGE_CONFIG);
    let mut daemon = outage_daemon(&s.config);
    wait_running(&daemon, 1);
    wait_until(Duration::from_secs(20), "the folder's remote ready", || {
        s.status()["folders"][0]["remote_check"]["state"] == "ready"
    });
    // The outage begins once the folder's remote was found ready, so uploads are tried.
    s.emulator
        .start_again(Some(&["--fail-rate", "1.0", "--seed", "3"]));
    let files = write_batch(&s, 6, "o");
    let started = Instant::now();
    let outage = outage();
    // Halfway, a kill -9 and a restart: the retries are persisted with their next attempt.
    std::thread::sleep(outage / 2);
    daemon.kill9();
    let jobs = jobs_of_stopped_daemon(&s);
    assert_eq!(jobs.len(), files.len(), "{jobs:?}");
    let waiting = jobs
        .iter()
        .filter(|job| matches!(job.state, upsync::queue::JobState::RetryWait { .. }))
        .count();
    assert!(waiting >= 1, "no job is waiting for a retry: {jobs:?}");
    assert!(
        jobs.iter()
            .all(|job| !matches!(job.state, upsync::queue::JobState::Failed { .. })),
        "an outage fails nothing: {jobs:?}"
    );
    let mut daemon = outage_daemon(&s.config);
    let remaining = outage.saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    let during = s.emulator.get_json("/_emulator/stats");
    let requests = during["requests"]["kifs"].as_u64().unwrap();
    let seconds = started.elapsed().as_secs();
    // In-request retries (5 attempts, 0.5 s doubling) then job-level retries (5 s
    // doubling, capped): a handful per file per half minute, never a hot loop.
    let bound = 15 * files.len() as u64 * seconds.div_ceil(30) + 20;
    println!(
        "503 outage: {seconds} s, {} files, {requests} requests (bound {bound})",
        files.len()
    );
    assert!(
        requests <= bound,
        "{requests} requests in {seconds} s: {during}"
    );
    assert!(requests >= files.len() as u64, "{during}");

    s.emulator.start_again(Some(&[]));
    wait_until(
        Duration::from_secs(90),
        "every file after the outage",
        || all_arrived(&s, &files),
    );
    let status = s.status();
    assert_eq!(status["folders"][0]["done"], files.len(), "{status}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_remote_refusing_connections_gets_bounded_retries_then_everything() {
    let port = free_port();
    let mut s = Setup::new(
        &[],
        &format!("{OUTAGE_CONFIG}\nmetrics_listen = \"127.0.0.1:{port}\""),
    );
    // Requests that got no answer, as the running daemon counts them.
    let failed_requests = || {
        let metrics = get_text(&format!("http://127.0.0.1:{port}/metrics"));
        let labels = ["backend=\"kifs\"", "outcome=\"error\""];
        sample(&metrics, "upsync_request_duration_seconds_count", &labels).unwrap_or(0.0) as u64
    };
    let early = write_batch(&s, 3, "early");
    let mut daemon = outage_daemon(&s.config);
    // Recorded, not only stored: a stop between the two leaves their jobs waiting to
    // confirm what landed, beside the late files' jobs counted below.
    wait_until(Duration::from_secs(30), "the early files, recorded", || {
        all_arrived(&s, &early) && s.status()["folders"][0]["done"] == early.len()
    });
    s.emulator.stop();
    let files = write_batch(&s, 5, "late");
    let started = Instant::now();
    std::thread::sleep(outage() / 2);
    // Counters start from 0 in each process: the first one's are read just before its end.
    let before_the_kill = failed_requests();
    daemon.kill9();
    let jobs = jobs_of_stopped_daemon(&s);
    assert_eq!(jobs.len(), files.len(), "{jobs:?}");
    let mut daemon = outage_daemon(&s.config);
    std::thread::sleep(outage().saturating_sub(started.elapsed()));
    // Every request refused, in-request retries and job-level retries alike.
    let failures = before_the_kill + failed_requests();
    let seconds = started.elapsed().as_secs();
    let bound = 15 * files.len() as u64 * seconds.div_ceil(30) + 20;
    println!("refused outage: {seconds} s, {failures} failed requests (bound {bound})");
    assert!(
        failures <= bound,
        "{failures} failed requests in {seconds} s"
    );
    assert!(failures >= 1, "{}", daemon.log_text());
    s.emulator.start_again(None);
    wait_until(
        Duration::from_secs(90),
        "every file after the outage",
        || all_arrived(&s, &files),
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A daemon started while its remote refuses connections does not show it as up before
/// any request had an answer: `upsync_remote_up` reads 0 from the start (not only once 5
/// failures judged it down), and 1 once the remote answers.
#[test]
fn a_remote_refusing_connections_at_the_start_is_never_shown_up_before_it_answers() {
    let port = free_port();
    let mut s = Setup::new(&[], &format!("metrics_listen = \"127.0.0.1:{port}\""));
    s.emulator.stop();
    let daemon = DaemonProcess::start(&s.config);
    // None until the metrics endpoint serves (a busy machine may start it late).
    let remote_up = || {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let text = block_on(async { reqwest::get(&url).await.ok()?.text().await.ok() })?;
        sample(&text, "upsync_remote_up", &["backend=\"kifs\""])
    };
    let remote = |s: &Setup| s.status()["remotes"][0].clone();
    // Every scrape while the remote still counts as up: under the fault, each read 1
    // although nothing had answered (for about 7 s, until five failures judged it down).
    let mut reads_while_up = Vec::new();
    daemon.wait_until(Duration::from_secs(60), "the remote judged down", || {
        let value = remote_up();
        let state = remote(&s);
        if let (Some(value), "up") = (value, state["state"].as_str().unwrap_or("")) {
            assert_eq!(state["answered"], false, "{state}");
            reads_while_up.push(value);
        }
        state["state"] == "down"
    });
    assert!(
        !reads_while_up.is_empty(),
        "no scrape before the remote was judged down\n{}",
        daemon.log_text()
    );
    assert!(
        reads_while_up.iter().all(|&value| value == 0.0),
        "the gauge read {reads_while_up:?} before the remote answered"
    );
    assert_eq!(remote_up(), Some(0.0));
    s.emulator.start_again(None);
    daemon.wait_until(
        Duration::from_secs(60),
        "the gauge at 1 once it answers",
        || remote_up() == Some(1.0),
    );
    assert_eq!(remote(&s)["answered"], true, "{}", s.status());
}

// ---------------------------------------------------------------- local faults

/// Mounts a tmpfs of `size` on `dir`; `None` (with the reason printed) when not permitted.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<TmpfsMount> {
    std::fs::create_dir_all(dir).unwrap();
    let output = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match output {
        Ok(out) if out.status.success() => Some(TmpfsMount(dir.to_path_buf())),
        Ok(out) => {
            println!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(err) => {
            println!("SKIPPED: cannot run mount: {err}");
            None
        }
    }
}

struct TmpfsMount(PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `dir` with a file `filler`, until it is full.
fn fill(filler: &Path) {
    fill_in_blocks(filler, 64 * 1024);
}

/// [`fill`] in blocks of `block_size` bytes: less than one block is left free.
fn fill_in_blocks(filler: &Path, block_size: usize) {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).unwrap();
    let block = vec![7u8; block_size];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

/// The state dir removed under a running daemon (a cleaner, an `rm -rf` by hand): the
/// daemon stops with exit 1 instead of recording into a database no later start would find
/// (and while another upsync could lock a new state dir there); the next start begins a
/// new one and uploads what is new.
#[test]
fn a_state_dir_removed_under_the_running_daemon_stops_it_and_the_next_start_begins_anew() {
    let s = Setup::new(&[], "");
    let state = s.dir().join("state");
    let before = write_batch(&s, 2, "before");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(30), "the first files", || {
        all_arrived(&s, &before)
    });
    std::fs::remove_dir_all(&state).unwrap();
    let code = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{}", daemon.log_text());

    let after = write_batch(&s, 1, "after");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(30), "the file written after", || {
        all_arrived(&s, &after)
    });
    // The new database records the earlier files again, as it finds them.
    daemon.wait_settled(&s.config, 3);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_full_state_dir_is_a_clear_error_and_uploads_resume_once_space_is_back_sending_none_twice() {
    let s = Setup::new(&[], "");
    let state = s.dir().join("state");
    let Some(_mount) = mount_tmpfs(&state, "4m") else {
        return;
    };
    let first = write_batch(&s, 3, "before");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(30), "the first files", || {
        all_arrived(&s, &first)
    });
    let filler = state.join("filler");
    fill(&filler);
    // Enough small files that sled needs space beyond what it had allocated.
    let during: Vec<PathBuf> = (0..800)
        .map(|i| {
            let path = s.folder().join(format!("during/d{i}.txt"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("written while the state dir is full {i}\n")).unwrap();
            path
        })
        .collect();
    // sled refuses every write after a failed one, even once space is back: the daemon
    // says so and exits 1, for its supervisor to restart it.
    let code = daemon.wait_exit(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("no space left on device"), "{log}");
    assert!(log.contains("can no longer be written"), "{log}");
    let noise = log.matches("no space left on device").count();
    println!("full state dir: {noise} log lines name the full disk before the exit");

    std::fs::remove_file(&filler).unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    // Arrived is not enough: files sent before the exit were on KiFS already, and the
    // restarted daemon records them once it has found them there.
    wait_until(
        Duration::from_secs(180),
        "the files written while full, recorded",
        || {
            during
                .iter()
                .enumerate()
                .all(|(i, p)| s.arrived(p, &format!("ingest/during/d{i}.txt")))
                && s.status()["folders"][0]["done"] == 803
        },
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let jobs = jobs_of_stopped_daemon(&s);
    assert!(jobs.is_empty(), "{jobs:?}");
    let status = s.status();
    assert_eq!(status["folders"][0]["done"], 803, "{status}");
    // Files sent while their completion could not be recorded are found on KiFS after the
    // restart, not sent again.
    let stats = s.emulator.get_json("/kifs/_emulator/stats");
    assert_eq!(stats["files_stored"], 803, "no file sent twice: {stats}");
}

#[test]
fn a_start_on_a_full_state_dir_leaves_a_database_the_next_start_opens() {
    let s = Setup::new(&[], "");
    let state = s.dir().join("state");
    let Some(_mount) = mount_tmpfs(&state, "4m") else {
        return;
    };
    let first = write_batch(&s, 3, "before");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(30), "the first files, recorded", || {
        all_arrived(&s, &first) && s.status()["folders"][0]["done"] == 3
    });
    // Killed, the daemon leaves sled's log ahead of its last snapshot: the next open sums
    // it up into a new snapshot file, which the full disk cuts short.
    daemon.kill9();
    // Not a page left: the snapshot, under 1 KiB, would fit in the last one.
    let filler = state.join("filler");
    fill_in_blocks(&filler, 4096);
    let mut daemon = DaemonProcess::start(&s.config);
    let code = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("no space left on device"),
        "{}",
        daemon.log_text()
    );
    let unfinished = std::fs::read_dir(state.join("db"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".generating"))
        .count();
    assert_eq!(unfinished, 1, "the full disk cut a snapshot short");

    std::fs::remove_file(&filler).unwrap();
    let later = write_batch(&s, 2, "after");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(60), "the later files, recorded", || {
        if let Some(code) = daemon.exited() {
            panic!("the start exited ({code:?}): {}", daemon.log_text());
        }
        all_arrived(&s, &later) && s.status()["folders"][0]["done"] == 5
    });
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let stats = s.emulator.get_json("/kifs/_emulator/stats");
    assert_eq!(stats["files_stored"], 5, "no file sent twice: {stats}");
}

/// Overwrites every file of the sled database with garbage.
fn scribble(db: &Path) {
    for entry in walkdir::WalkDir::new(db) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let len = entry.metadata().unwrap().len().max(64);
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(entry.path(), garbage).unwrap();
        }
    }
}

#[test]
fn a_corrupt_state_database_stops_the_start_and_rebuild_state_uploads_nothing_twice() {
    let s = Setup::new(&[], "");
    let first = write_batch(&s, 5, "a");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_until(Duration::from_secs(30), "the first files", || {
        all_arrived(&s, &first)
    });
    assert_eq!(daemon.terminate(), Some(0));
    let before = s.files_stored();
    scribble(&s.dir().join("state/db"));

    let mut daemon = DaemonProcess::start(&s.config);
    let code = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1));
    let log = daemon.log_text();
    assert!(log.contains("cannot open the state database"), "{log}");
    assert!(log.contains("--rebuild-state"), "{log}");

    // One file changes and one is new while the database is broken.
    write_file(&first[0], 20_000, 999);
    backdate(&first[0], 30);
    let new = write_batch(&s, 1, "new");
    let mut daemon = DaemonProcess::start_with(&s.config, |cmd| {
        cmd.arg("--rebuild-state");
    });
    wait_until(
        Duration::from_secs(30),
        "the changed and the new file",
        || s.arrived(&first[0], "ingest/a0.bin") && all_arrived(&s, &new),
    );
    // Settled: had the rebuild taken a known file for new, its upload would be pending
    // or counted by now.
    daemon.wait_settled(&s.config, 6);
    assert_eq!(
        s.files_stored() - before,
        2,
        "only the changed and the new file are uploaded"
    );
    let log = daemon.log_text();
    assert!(log.contains("moved the old state database aside"), "{log}");
    assert!(
        log.contains("4 file(s) already uploaded, 2 to upload"),
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
    let kept: Vec<_> = std::fs::read_dir(s.dir().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("db.moved-"))
        .collect();
    assert_eq!(kept.len(), 1, "the broken database is kept");
}

#[test]
fn a_foreign_state_database_is_refused_with_a_clear_error() {
    let s = Setup::new(&[], "");
    {
        let db = sled::open(s.dir().join("state/db")).unwrap();
        db.insert(b"someone", &b"else"[..]).unwrap();
        db.flush().unwrap();
    }
    let mut daemon = DaemonProcess::start(&s.config);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(1));
    let log = daemon.log_text();
    assert!(log.contains("no upsync format marker"), "{log}");
    assert!(log.contains("--rebuild-state"), "{log}");
}

#[test]
fn an_unreadable_file_fails_with_the_reason_and_uploads_once_its_permission_is_fixed() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let s = Setup::new(&[], "");
    // The daemon runs as `nobody`, for whom a mode-000 file is unreadable (root reads all).
    const NOBODY: u32 = 65534;
    chown(s.dir(), Some(NOBODY), Some(NOBODY)).unwrap();
    chown(&s.config, Some(NOBODY), Some(NOBODY)).unwrap();
    let good = s.folder().join("good.csv");
    let secret = s.folder().join("secret.csv");
    std::fs::write(&good, "readable\n").unwrap();
    std::fs::write(&secret, "unreadable\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut daemon = DaemonProcess::start_with(&s.config, |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.uid(NOBODY).gid(NOBODY);
    });
    wait_until(Duration::from_secs(30), "the readable file", || {
        s.arrived(&good, "ingest/good.csv")
    });
    wait_until(
        Duration::from_secs(30),
        "the unreadable file to fail",
        || {
            s.status()["failed"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        },
    );
    let status = s.status();
    let failed = &status["failed"][0];
    assert_eq!(failed["path"], secret.display().to_string(), "{status}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("ermission denied"), "{reason}");
    // The fix (an attribute event: only the change time moves) is a new version of the
    // file: it is uploaded without `upsync retry`.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_until(Duration::from_secs(30), "the fixed file", || {
        s.arrived(&secret, "ingest/secret.csv")
    });
    wait_until(Duration::from_secs(10), "the failure cleared", || {
        s.status()["failed"].as_array().is_some_and(Vec::is_empty)
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_folder_missing_at_start_or_deleted_and_recreated_is_watched_when_it_appears() {
    let s = Setup::new(&[], "");
    std::fs::remove_dir(s.folder()).unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    wait_running(&daemon, 1);
    assert!(
        daemon.log_text().contains("does not exist"),
        "{}",
        daemon.log_text()
    );
    std::fs::create_dir(s.folder()).unwrap();
    let first = s.folder().join("first.csv");
    std::fs::write(&first, "after the mount\n").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the file of the late folder",
        || s.arrived(&first, "ingest/first.csv"),
    );
    std::fs::remove_dir_all(s.folder()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::create_dir(s.folder()).unwrap();
    let second = s.folder().join("second.csv");
    std::fs::write(&second, "after the recreation\n").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the file of the recreated folder",
        || s.arrived(&second, "ingest/second.csv"),
    );
    assert!(
        inotify_watches_on(daemon.pid(), s.folder()) >= 1,
        "the recreated folder is watched, not only scanned"
    );
    // The operator's messages for a missing folder and its return.
    let log = daemon.log_text();
    assert!(log.contains("polling every"), "{log}");
    assert!(log.contains("watching") && log.contains("again"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// With an `[emulator]` in the config, the second daemon finds the lock taken before it
/// tries to serve an emulator on the first one's port.
#[test]
fn a_second_daemon_with_an_embedded_emulator_refuses_on_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("inbox")).unwrap();
    let port = free_port();
    let config = dir.path().join("upsync.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n\
             [emulator]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"remote\"\n\
             [kifs]\nurl = \"http://127.0.0.1:{port}/kifs\"\nusername = \"demo\"\npassword = \"demo\"\n\
             [[folder]]\npath = \"inbox\"\nkifs_directory = \"demo\"\ncreate_directory = true\n"
        ),
    )
    .unwrap();
    let mut first = DaemonProcess::start(&config);
    wait_until(Duration::from_secs(30), "the first daemon", || {
        status_json(&config)["daemon"] == "running"
    });
    let mut second = DaemonProcess::start(&config);
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(1));
    let log = first.log_text();
    assert!(
        log.contains("another upsync is already running with state_dir"),
        "{log}"
    );
    assert!(!log.contains("cannot listen"), "{log}");
    assert_eq!(first.terminate(), Some(0));
}

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let s = Setup::new(&[], "");
    let mut first = DaemonProcess::start(&s.config);
    wait_running(&first, 1);
    // Both daemons log to the same file.
    let mut second = DaemonProcess::start(&s.config);
    assert_eq!(second.wait_exit(Duration::from_secs(20)), Some(1));
    let log = first.log_text();
    assert!(
        log.contains("another upsync is already running with state_dir"),
        "{log}"
    );
    // The first one is unharmed: its control socket still answers.
    assert_eq!(s.status()["daemon"], "running");
    let file = s.folder().join("after.csv");
    std::fs::write(&file, "first daemon still works\n").unwrap();
    wait_until(
        Duration::from_secs(20),
        "a file for the first daemon",
        || s.arrived(&file, "ingest/after.csv"),
    );
    assert_eq!(first.terminate(), Some(0));
}

#[test]
fn rebuild_state_matches_redivis_uploads_by_name_size_and_md5() {
    const TOKEN: &str = "rebuild-token-5d6e";
    const TOKEN_ENV: &str = "UPSYNC_REBUILD_REDIVIS_TOKEN";
    // SAFETY: set before any child starts; every child reads the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let site = Site::start(&["inbox"], &["--redivis-token", TOKEN]);
    let (inbox, emulator, config) = (site.folder(), &site.emulator, &site.config);
    ConfigBuilder::new()
        .redivis(&emulator.redivis_url(), TOKEN_ENV)
        .redivis_with("chunk_size = \"1MiB\"")
        .folder(FolderBuilder::redivis("inbox", "re.build:next.files"))
        .write(config);
    let created = || {
        emulator.get_json("/_emulator/redivis/stats")["uploads_created"]
            .as_u64()
            .unwrap_or(0)
    };
    let files: Vec<PathBuf> = (0..4)
        .map(|i| {
            let path = inbox.join(format!("r{i}.csv"));
            write_file(&path, 3000 + i * 1_000_000, 40 + i);
            backdate(&path, 60);
            path
        })
        .collect();
    let mut daemon = DaemonProcess::start(config);
    wait_until(Duration::from_secs(60), "four uploads", || created() >= 4);
    daemon.wait_settled(config, 4);
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(created(), 4);

    // The database is lost; one file keeps its size but gets other bytes.
    std::fs::remove_dir_all(site.tmp.path().join("state/db")).unwrap();
    let size = std::fs::metadata(&files[1]).unwrap().len();
    write_file(&files[1], size, 777);
    backdate(&files[1], 30);
    let mut daemon = DaemonProcess::start_with(config, |cmd| {
        cmd.arg("--rebuild-state");
    });
    wait_until(
        Duration::from_secs(60),
        "the changed file's new upload",
        || created() >= 5,
    );
    // Settled: every file the rebuild queued is uploaded (or pending, and waited for).
    daemon.wait_settled(config, 4);
    assert_eq!(created(), 5, "only the changed file is uploaded again");
    let log = daemon.log_text();
    assert!(
        log.contains("3 file(s) already uploaded, 1 to upload"),
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_redivis_session_expiring_before_upload_post_is_sent_again_and_posted_once() {
    const TOKEN: &str = "expiry-token-3c4d";
    const TOKEN_ENV: &str = "UPSYNC_EXPIRY_REDIVIS_TOKEN";
    // SAFETY: set before any child starts; every child reads the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let site = Site::start(
        &["inbox"],
        &["--redivis-token", TOKEN, "--session-ttl", "6s"],
    );
    let (inbox, emulator, config) = (site.folder(), &site.emulator, &site.config);
    ConfigBuilder::new()
        .redivis(&emulator.redivis_url(), TOKEN_ENV)
        .redivis_with("chunk_size = \"4MiB\"")
        .folder(FolderBuilder::redivis("inbox", "ex.pire:next.files"))
        .write(config);
    // The one chunk's answer comes 7 s late: by upload.post the 6 s session has expired.
    emulator.post_json(
        "/_emulator/faults",
        &serde_json::json!([{"target": "redivis-session", "action": {"delay_ms": 7000}}]),
    );
    let path = inbox.join("slow-session.csv");
    write_file(&path, 3 << 20, 5);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(config);
    let stats = || emulator.get_json("/_emulator/redivis/stats");
    wait_until(Duration::from_secs(60), "the upload", || {
        stats()["uploads_created"].as_u64().unwrap_or(0) >= 1
    });
    daemon.wait_settled(config, 1);
    assert_eq!(stats()["uploads_created"], 1, "{}", stats());
    assert!(
        stats()["api_requests"]["resumableUpload"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "a second session was made: {}",
        stats()
    );
    let posts = json_number(&stats()["api_requests"]["uploads.post"]);
    assert!(
        posts >= Some(2),
        "upload.post refused the expired session's bytes, then took the new one's: {}",
        stats()
    );
    assert_eq!(daemon.terminate(), Some(0));
}
