//! Operating upsync: live status and metrics while the daemon uploads, the metrics and the
//! shipped alert rules through promtool, `upsync retry` through the control socket,
//! `upsync sync --once`, systemd notifications, the systemd unit (verify + security score),
//! the README's config reference, help and completions. The real binary against an
//! `upsync emulator` process (KiFS).

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// KiFS multipart part size (files larger than this are sent in parts).
const PART: u64 = 62_914_560;

/// A test's temp dir, emulator, config and its one watched folder.
type Setup = Site;

/// A folder mapped to KiFS directory `ingest` of a fresh emulator started with `emulator_args`.
fn setup(emulator_args: &[&str], top_extra: &str) -> Setup {
    let site = Site::start(&["inbox"], emulator_args);
    config_of(&site, top_extra).write(&site.config);
    site
}

/// The config [`setup`] writes: two workers, `top_extra`, the folder `inbox`.
fn config_of(site: &Site, top_extra: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .top("concurrency = 2\nshutdown_timeout = \"5s\"")
        .top(top_extra)
        .kifs(&site.emulator.kifs_url())
        .folder(FolderBuilder::kifs("inbox", "ingest"))
}

fn arrived(setup: &Setup, local: &Path, name: &str) -> bool {
    setup.emulator.kifs_holds(local, &format!("ingest/{name}"))
}

#[test]
fn status_and_metrics_show_an_upload_in_flight_with_rate_and_eta() {
    let port = free_port();
    let s = setup(
        &["--kifs-part-delay", "1500"],
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    let path = s.folder().join("big.bin");
    write_file(&path, 2 * PART + (10 << 20), 7);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");

    // Progress is reported per acknowledged part: wait for the first one.
    let mut report = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(90),
        "an in-flight upload with bytes done",
        || {
            if let Some(code) = daemon.exited() {
                panic!("the daemon exited ({code:?}): {}", daemon.log_text());
            }
            report = status_json(&s.config);
            report["in_flight"][0]["bytes_done"].as_u64().unwrap_or(0) > 0
        },
    );
    assert_eq!(report["daemon"], "running", "{report}");
    let upload = &report["in_flight"][0];
    assert_eq!(upload["path"], path.display().to_string(), "{report}");
    assert_eq!(upload["bytes_total"], 2 * PART + (10 << 20), "{report}");
    assert!(upload["bytes_done"].as_u64().unwrap() < 2 * PART + (10 << 20));
    assert!(
        upload["rate_bytes_per_s"].as_u64().unwrap_or(0) > 0,
        "a fresh upload has a rate once a part is acknowledged: {report}"
    );
    assert!(upload["eta_s"].is_u64(), "{report}");
    let folder = &report["folders"][0];
    assert_eq!(folder["active"], 1, "{report}");
    assert!(folder["oldest_pending_age_s"].is_u64(), "{report}");
    assert!(folder["last_success_ms"].is_null(), "{report}");
    let (_, text, _) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert!(text.contains("big.bin") && text.contains("/s"), "{text}");

    let metrics = get_text(&metrics_url);
    assert_eq!(
        sample(&metrics, "upsync_in_flight_uploads", &["backend=\"kifs\""]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "upsync_in_flight_acknowledged_bytes", &[]).unwrap_or(0.0) >= PART as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "upsync_queue_jobs", &["state=\"active\""]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "upsync_oldest_pending_age_seconds", &[]).is_some(),
        "{metrics}"
    );

    wait_until(Duration::from_secs(120), "the whole file", || {
        arrived(&s, &path, "big.bin")
    });
    wait_until(Duration::from_secs(10), "the upload to be recorded", || {
        status_json(&s.config)["folders"][0]["done"] == 1
    });
    let metrics = get_text(&metrics_url);
    assert_eq!(
        sample(
            &metrics,
            "upsync_uploaded_files_total",
            &["backend=\"kifs\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "upsync_uploaded_bytes_total", &[]),
        Some((2 * PART + (10 << 20)) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "upsync_upload_duration_seconds_count", &["kifs"]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "upsync_in_flight_uploads", &[]),
        Some(0.0),
        "{metrics}"
    );
    // The directory check, the multipart init, three parts and the completion at least,
    // each timed; the parts waited 1.5 s each in the emulator.
    let request_labels = ["backend=\"kifs\"", "kind=\"api\"", "outcome=\"2xx\""];
    assert!(
        sample(
            &metrics,
            "upsync_request_duration_seconds_count",
            &request_labels
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "upsync_request_duration_seconds_sum",
            &request_labels
        )
        .unwrap_or(0.0)
            >= 4.5,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "upsync_last_success_timestamp_seconds", &[]).unwrap_or(0.0)
            > 1_600_000_000.0,
        "{metrics}"
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());

    // Stopped: the same schema, read from the database, last success from the ledger.
    let stopped = status_json(&s.config);
    assert_eq!(stopped["daemon"], "stopped");
    assert!(
        stopped["folders"][0]["last_success_ms"].is_u64(),
        "{stopped}"
    );
    assert!(stopped["folders"][0]["oldest_pending_age_s"].is_null());
    // The orderly stop left the status summary that report was read from; without it the
    // report opens the database and says the same.
    let summary = s.config.parent().unwrap().join("state/status.summary");
    std::fs::remove_file(&summary).expect("the stopped daemon left its status summary");
    let opened = status_json(&s.config);
    assert_eq!(opened["folders"], stopped["folders"]);
    assert_eq!(opened["failed"], stopped["failed"]);
    assert!(summary.exists(), "closing the database wrote it again");
    // A reader that goes away before the report is written (`status | head`) ends the
    // output, not in a panic.
    let mut reader_gone = Command::new(BIN)
        .args(["status", "-c", s.config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("upsync runs");
    drop(reader_gone.stdout.take());
    let output = reader_gone.wait_with_output().expect("upsync ends");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("uploaded") && l.contains("big.bin"))
        .unwrap_or_else(|| panic!("no 'uploaded' line in the log: {log}"));
    for field in ["bytes=", "duration_ms=", "rate="] {
        assert!(line.contains(field), "{line}");
    }
}

/// Starts the daemon, has KiFS answer the next `times` requests of the upload of a new file
/// `report.csv` with `status`, and waits until `status --json` shows what `done` looks
/// for: the file and that report.
fn an_upload_answered_with(
    s: &Setup,
    (status, times): (u16, usize),
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (DaemonProcess, PathBuf, serde_json::Value) {
    let daemon = DaemonProcess::start(&s.config);
    // The folder's remote check runs in the background after the start; the fault below must
    // meet the upload, not that check (which would take the refusal and hold the folder).
    wait_until(Duration::from_secs(20), "the folder's remote check", || {
        status_json(&s.config)["folders"][0]["remote_check"]["state"] == "ready"
    });
    let fault = serde_json::json!({"target": "kifs", "action": {"status": status}});
    s.emulator.post_json(
        "/_emulator/faults",
        &serde_json::Value::Array(vec![fault; times]),
    );
    let path = s.folder().join("report.csv");
    std::fs::write(&path, "a,b\n1,2\n").unwrap();
    wait_until(Duration::from_secs(20), what, || {
        done(&status_json(&s.config))
    });
    (daemon, path, status_json(&s.config))
}

#[test]
fn retry_goes_through_the_control_socket_while_the_daemon_runs() {
    let s = setup(&[], "");
    // The next KiFS request is refused for good (413): the upload fails permanently.
    let (mut daemon, path, report) =
        an_upload_answered_with(&s, (413, 1), "the upload to fail", |r| {
            r["failed"].as_array().is_some_and(|f| !f.is_empty())
        });
    let failed = &report["failed"][0];
    assert_eq!(failed["path"], path.display().to_string(), "{report}");
    assert!(failed["last_attempt_ms"].as_u64().unwrap() > 0, "{report}");
    assert!(
        failed["reason"].as_str().unwrap().contains("413"),
        "{report}"
    );

    // The daemon holds the state database, so this can only work through the socket.
    let (code, stdout, stderr) = upsync(&["retry", "-c", s.config.to_str().unwrap(), "--all"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 failed job(s) queued again"), "{stdout}");
    wait_until(Duration::from_secs(20), "the retried file", || {
        arrived(&s, &path, "report.csv")
    });
    assert_eq!(daemon.terminate(), Some(0));
}

/// A state dir deeper than a Unix socket address can name (108 bytes): the daemon starts,
/// and `status` and `retry` reach it through its control socket.
#[test]
fn a_state_dir_too_deep_for_a_socket_address_still_serves_the_commands() {
    let s = Site::start(&["inbox"], &[]);
    let deep = (0..4).fold(s.tmp.path().join("state"), |dir, level| {
        dir.join(format!("level-{level}-{}", "d".repeat(30)))
    });
    assert!(deep.join("control.sock").as_os_str().len() > 108);
    config_of(
        &s,
        &format!(
            "state_dir = {}",
            common::config::quoted(deep.to_str().unwrap())
        ),
    )
    .write(&s.config);
    let mut daemon = DaemonProcess::start(&s.config);
    let path = s.folder().join("report.csv");
    write_file(&path, 4096, 7);
    backdate(&path, 60);
    wait_until(Duration::from_secs(20), "the file", || {
        arrived(&s, &path, "report.csv")
    });
    // The daemon holds the state database, so these answer through the socket only.
    daemon.wait_until(
        Duration::from_secs(20),
        "the running daemon's status",
        || {
            let status = status_json(&s.config);
            status["daemon"] == "running" && folders_total(&status, "done") == 1
        },
    );
    let (code, stdout, stderr) = upsync(&["retry", "-c", s.config.to_str().unwrap(), "--all"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A pipeline that makes and removes work directories in a watched folder: with the
/// default log filter (no `RUST_LOG`, as under the shipped unit), the removals log no
/// warning, though every removed directory takes its watch with it.
#[test]
fn removed_work_directories_leave_no_warning_in_the_default_log() {
    let s = setup(&[], "");
    let mut daemon = DaemonProcess::start_with(&s.config, |command| {
        command.env_remove("RUST_LOG");
    });
    let work: Vec<PathBuf> = (0..10)
        .map(|n| s.folder().join(format!("work{n}")))
        .collect();
    for dir in &work {
        std::fs::create_dir_all(dir.join("part")).unwrap();
    }
    // Uploaded from the deepest directories: they are watched by then.
    for (n, dir) in work.iter().enumerate() {
        let file = dir.join("part").join("out.csv");
        write_file(&file, 100, n as u64);
        backdate(&file, 60);
    }
    for (n, dir) in work.iter().enumerate() {
        let file = dir.join("part").join("out.csv");
        wait_until(Duration::from_secs(30), "a work directory's file", || {
            arrived(&s, &file, &format!("work{n}/part/out.csv"))
        });
    }
    for dir in &work {
        std::fs::remove_dir_all(dir).unwrap();
    }
    // The watcher reads its events in order: once this file is uploaded, the removals
    // before it have been seen.
    let after = s.folder().join("after.csv");
    write_file(&after, 100, 99);
    backdate(&after, 60);
    wait_until(
        Duration::from_secs(30),
        "the file written after the removals",
        || arrived(&s, &after, "after.csv"),
    );
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains(" WARN ")).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// Credentials the folder's check accepted and an upload then meets refused (a token
/// revoked or rotated on the remote): the folder is refused with the reason, as a check
/// would have found it, and its file waits instead of failing; a reload checks the remote
/// again and the file goes.
#[test]
fn an_upload_refused_for_its_credentials_refuses_the_folder_and_the_file_waits() {
    let port = free_port();
    let s = setup(&[], &format!("metrics_listen = \"127.0.0.1:{port}\""));
    let (mut daemon, path, report) =
        an_upload_answered_with(&s, (401, 1), "the folder refused, its file waiting", |r| {
            let folder = &r["folders"][0];
            folder["remote_check"]["state"] == "refused" && folder["retry_wait"] == 1
        });
    let folder = &report["folders"][0];
    assert_eq!(
        folder["remote_check"]["reason"],
        "KiFS /upload/files: HTTP 401 Unauthorized (the server rejected the credentials: \
         check [kifs] username/password or token)",
        "{report}"
    );
    assert_eq!(folder["failed"], 0, "the file does not fail: {report}");
    assert_eq!(folder["retry_wait"], 1, "the file waits: {report}");
    let metrics = get_text(&format!("http://127.0.0.1:{port}/metrics"));
    let folder_label = format!("folder=\"{}\"", s.folder().display());
    let failures = |class: &str, kind: &str| {
        let (class, kind) = (format!("class=\"{class}\""), format!("kind=\"{kind}\""));
        sample(
            &metrics,
            "upsync_upload_failures_total",
            &[&folder_label, &class, &kind],
        )
    };
    assert_eq!(failures("transient", "auth"), Some(1.0), "{metrics}");
    assert_eq!(failures("permanent", "auth"), Some(0.0), "{metrics}");
    // The refusal was a moment's (the fault answered once): the reload's check passes.
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(20), "the waiting file", || {
        arrived(&s, &path, "report.csv")
    });
    assert_eq!(
        status_json(&s.config)["folders"][0]["remote_check"]["state"],
        "ready"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

fn sync_once(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["sync", "--once", "-c", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    upsync(&args)
}

#[test]
fn sync_once_uploads_a_folder_and_exits_0() {
    let s = setup(&[], "");
    let files = [
        ("a.csv", 10_000),
        ("nested/b.bin", 300_000),
        ("multi.bin", PART + 5),
    ];
    for (i, (name, size)) in files.iter().enumerate() {
        write_file(&s.folder().join(name), *size, i as u64);
        backdate(&s.folder().join(name), 60);
    }
    // Written just now: too young at the first scan, picked up by the second one.
    let fresh = s.folder().join("fresh.txt");
    std::fs::write(&fresh, "just written\n").unwrap();

    let (code, stdout, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for (name, _) in files {
        assert!(
            arrived(&s, &s.folder().join(name), name),
            "{name}: {stderr}"
        );
    }
    assert!(arrived(&s, &fresh, "fresh.txt"), "{stderr}");
    assert!(stdout.contains("uploaded 4 file(s)"), "{stdout}");
    // Without a terminal, progress is logged.
    assert!(
        stderr.contains("sync progress") || stderr.contains("uploaded"),
        "{stderr}"
    );

    // Nothing left: a second run uploads nothing and succeeds.
    let (code, stdout, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("uploaded 0 file(s)"), "{stdout}");
    assert_eq!(status_json(&s.config)["folders"][0]["done"], 4);
}

#[test]
fn sync_once_with_a_zero_retry_wait_limit_still_checks_the_remote_and_uploads_once_each() {
    let s = setup(&[], "");
    let names = ["a.csv", "nested/b.csv", "c.bin"];
    for (i, name) in names.iter().enumerate() {
        write_file(&s.folder().join(name), 20_000, i as u64);
        backdate(&s.folder().join(name), 60);
    }
    let (code, stdout, stderr) = sync_once(&s.config, &["--retry-wait-limit", "0s"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for name in names {
        assert!(
            arrived(&s, &s.folder().join(name), name),
            "{name}: {stderr}"
        );
    }
    assert!(stdout.contains("uploaded 3 file(s)"), "{stdout}");
    assert_eq!(status_json(&s.config)["folders"][0]["done"], 3);
}

#[test]
fn sync_once_exits_1_naming_a_rejected_file_and_its_reason() {
    let s = setup(&[], "");
    let good = s.folder().join("good.csv");
    let bad = s.folder().join("bad_name.csv");
    std::fs::write(&good, "ok\n").unwrap();
    std::fs::write(&bad, "rejected\n").unwrap();
    backdate(&good, 60);
    backdate(&bad, 60);
    let (code, stdout, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        arrived(&s, &good, "good.csv"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // The summary is the command's output: `> report.txt` keeps it, and stderr only says
    // why the exit code is 1.
    let summary = &stdout;
    assert!(summary.contains("uploaded 1 file(s)"), "{stdout}");
    assert!(summary.contains("1 file(s) failed"), "{stdout}");
    assert!(
        summary.contains(&bad.display().to_string()) && summary.contains("'_'"),
        "{stdout}"
    );
    assert!(summary.contains("upsync retry"), "{stdout}");
    assert!(!stderr.contains("file(s) failed"), "{stderr}");
    assert!(
        stderr.contains("upsync: not every file was uploaded"),
        "{stderr}"
    );
}

/// A file name may hold a line break: the text status and the summary of `sync --once`
/// show it escaped, on one line with its reason; `--json` keeps the name as it is. Its
/// failed attempt is counted.
#[test]
fn a_failed_file_with_a_line_break_in_its_name_shows_on_one_line_with_its_attempt() {
    let s = setup(&[], "");
    let bad = s.folder().join("two\nlines.csv");
    std::fs::write(&bad, "rejected\n").unwrap();
    backdate(&bad, 60);
    let (code, stdout, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let folder = s.folder().display().to_string();
    let shown = format!("  {folder}/two\\nlines.csv");
    let summary_line = stdout
        .lines()
        .find(|line| line.starts_with(&shown))
        .unwrap_or_else(|| panic!("no summary line for the file: {stdout}"));
    assert!(summary_line.contains("KiFS does not allow"), "{stdout}");
    assert!(
        !stdout.lines().any(|line| line.starts_with("lines.csv")),
        "{stdout}"
    );

    let (code, text, stderr) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let failed: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.starts_with("failed"))
        .skip(1)
        .collect();
    assert_eq!(failed.len(), 1, "one line for the one failed file: {text}");
    assert!(
        failed[0].starts_with(&format!("{shown} (last attempt ")),
        "{text}"
    );
    assert!(failed[0].contains("KiFS does not allow"), "{text}");

    let report = status_json(&s.config);
    let job = &report["failed"][0];
    assert_eq!(job["path"], bad.display().to_string(), "{report}");
    assert_eq!(job["attempts"], 1, "the upload was tried once: {report}");
}

/// Leaves KiFS's first request alone (the folder's remote check: the directory exists)
/// and answers the six after it, the upload's tries, with `action`.
fn answer_the_upload_tries(s: &Setup, action: serde_json::Value) {
    let mut faults = vec![serde_json::json!({"target": "kifs", "action": {"delay_ms": 0}})];
    faults.extend((0..6).map(|_| serde_json::json!({"target": "kifs", "action": action})));
    s.emulator
        .post_json("/_emulator/faults", &serde_json::Value::Array(faults));
}

#[test]
fn sync_once_stops_at_a_signal_while_it_waits_for_a_retry() {
    sync_once_stops_at_while_it_waits_for_a_retry(libc::SIGTERM);
}

/// A closing terminal sends SIGHUP: a run started from it stops as at SIGTERM, with its
/// summary and its state in order, instead of dying mid-upload.
#[test]
fn sync_once_stops_at_a_hangup_as_at_a_terminate() {
    sync_once_stops_at_while_it_waits_for_a_retry(libc::SIGHUP);
}

fn sync_once_stops_at_while_it_waits_for_a_retry(signal: i32) {
    let s = setup(&["--kifs-directory", "ingest"], "");
    let path = s.folder().join("waiting.csv");
    std::fs::write(&path, "x\n").unwrap();
    backdate(&path, 60);
    // Every try of the upload is told to come back in 20 s, well within the run's limit:
    // the run waits for the retry.
    answer_the_upload_tries(&s, serde_json::json!({"status": 503, "retry_after": "20"}));
    let mut run = Command::new(BIN)
        .args(["sync", "--once", "--retry-wait-limit", "120s", "-c"])
        .arg(&s.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("upsync sync --once starts");
    let refused = || json_number(&s.emulator.get_json("/_emulator/stats")["faults"]["status_503"]);
    let asked_back = Instant::now();
    while refused().unwrap_or(0) < 1 {
        assert!(
            asked_back.elapsed() < Duration::from_secs(30),
            "the upload was never tried"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let signalled = Instant::now();
    // SAFETY: kill(2) with the pid of a child not reaped yet.
    unsafe {
        libc::kill(run.id() as i32, signal);
    }
    let code = loop {
        if let Some(status) = run.try_wait().expect("wait works") {
            break status.code();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "sync --once still waits for the retry after signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(1), "an interrupted run is not a clean one");
    assert_eq!(refused(), Some(1), "no further try after the signal");
    let status = status_json(&s.config);
    let pending: u64 = PENDING.iter().map(|f| folders_total(&status, f)).sum();
    assert_eq!(pending, 1, "the file waits for the next run: {status}");
}

#[test]
fn retry_and_forget_refuse_a_path_in_no_folder_before_doing_anything() {
    let s = setup(&[], "");
    let config = s.config.to_str().unwrap();
    let (code, _, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 0, "{stderr}");
    let outside = s.tmp.path().join("elsewhere.csv");
    for command in ["retry", "forget"] {
        let (code, stdout, stderr) = upsync(&[command, "-c", config, outside.to_str().unwrap()]);
        assert_eq!(code, 2, "{command}: a usage error: {stdout}{stderr}");
        assert!(
            stderr.contains("is in no configured folder"),
            "{command}: {stderr}"
        );
        assert!(stdout.is_empty(), "{command} did nothing: {stdout}");
    }
    // A path spelled with `..` that lands in the folder is the folder's.
    let inside = s.folder().join("../inbox/kept.csv");
    let (code, stdout, stderr) = upsync(&["retry", "-c", config, inside.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 failed job(s) queued again"), "{stdout}");
}

/// A folder taken out of the config keeps its failed jobs, which `retry` cannot reach
/// (`--all` queues them to fail again, a path in them is in no configured folder): status
/// lists them apart, saying what does help.
#[test]
fn status_tells_how_to_retry_the_failed_files_of_a_folder_no_longer_configured() {
    let s = Site::start(&["inbox", "gone"], &[]);
    let both = config_of(&s, "").folder(FolderBuilder::kifs("gone", "other"));
    both.write(&s.config);
    let kept = s.folder().join("bad_kept.csv");
    let left = s.folders[1].join("bad_left.csv");
    for file in [&kept, &left] {
        std::fs::write(file, "refused for its name\n").unwrap();
        backdate(file, 60);
    }
    let (code, stdout, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 1, "the two files fail: {stdout}{stderr}");
    config_of(&s, "").write(&s.config);

    let (code, text, stderr) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (configured, removed) = text
        .split_once("failed in folders no longer in the configuration")
        .unwrap_or_else(|| panic!("the removed folder's failures are told apart: {text}"));
    assert!(configured.contains("upsync retry -c FILE --all"), "{text}");
    assert!(configured.contains(&kept.display().to_string()), "{text}");
    assert!(!configured.contains(&left.display().to_string()), "{text}");
    assert!(removed.contains(&left.display().to_string()), "{text}");
    assert!(!removed.contains("--all"), "{text}");
    assert!(
        removed.contains("put the folder back in the config"),
        "{text}"
    );

    // The JSON tells them apart too, read from the database and from a running daemon.
    let assert_json_tells_apart = |report: &serde_json::Value| {
        let failed = report["failed"].as_array().expect("failed is an array");
        let configured_of = |file: &Path| {
            let path = file.display().to_string();
            failed
                .iter()
                .find(|job| job["path"] == path.as_str())
                .unwrap_or_else(|| panic!("{path} is listed as failed: {report}"))
                ["folder_configured"]
                .clone()
        };
        assert_eq!(configured_of(&kept), true, "{report}");
        assert_eq!(configured_of(&left), false, "{report}");
    };
    assert_json_tells_apart(&status_json(&s.config));
    let mut daemon = DaemonProcess::start(&s.config);
    let mut report = serde_json::Value::Null;
    daemon.wait_until(Duration::from_secs(30), "the daemon to answer", || {
        report = status_json(&s.config);
        report["daemon"] == "running"
    });
    assert_json_tells_apart(&report);
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
}

#[test]
fn status_as_another_user_than_the_daemons_says_the_socket_is_not_theirs() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // As root, the test can ask as `nobody`, to whom the daemon's socket (mode 0600) is closed.
    const NOBODY: u32 = 65534;
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root to run a command as another user");
        return;
    }
    let s = setup(&[], "");
    // The config is readable to every user; the state dir and its socket stay the daemon's.
    std::fs::set_permissions(s.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "the daemon to answer", || {
        status_json(&s.config)["daemon"] == "running"
    });
    let output = Command::new(BIN)
        .args(["status", "-c", s.config.to_str().unwrap()])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot use the control socket"), "{stderr}");
    assert!(
        stderr.contains("run upsync as the user the daemon runs as"),
        "{stderr}"
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
}

#[test]
fn retry_of_a_directory_queues_the_failed_files_under_it_and_no_others() {
    let s = setup(&[], "");
    let config = s.config.to_str().unwrap();
    // KiFS refuses '_' in names: each of these fails for good.
    for name in [
        "sub/bad_a.csv",
        "sub/deeper/bad_b.csv",
        "subway/bad_c.csv",
        "bad_d.csv",
    ] {
        let path = s.folder().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{name}\n")).unwrap();
        backdate(&path, 60);
    }
    let (code, _, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(folders_total(&status_json(&s.config), "failed"), 4);

    let sub = format!("{}/", s.folder().join("sub").display());
    let (code, stdout, stderr) = upsync(&["retry", "-c", config, &sub]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 failed job(s) queued again"), "{stdout}");
    let status = status_json(&s.config);
    assert_eq!(folders_total(&status, "queued"), 2, "{status}");
    assert_eq!(folders_total(&status, "failed"), 2, "{status}");
    let still_failed: Vec<&str> = status["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["path"].as_str().unwrap())
        .collect();
    assert!(
        still_failed.iter().all(|path| !path.contains("/sub/")),
        "{status}"
    );
}

#[test]
fn ls_refuses_a_folder_that_is_not_configured_as_a_usage_error_whoever_would_list_it() {
    let s = setup(&[], "");
    let config = s.config.to_str().unwrap();
    let not_a_folder = s.folder().join("sub");
    std::fs::create_dir(&not_a_folder).unwrap();
    let ls_not_a_folder = || {
        let (code, stdout, stderr) = upsync(&[
            "ls",
            "-c",
            config,
            "--folder",
            not_a_folder.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "a usage error: {stdout}{stderr}");
        assert!(stderr.contains("is not a configured folder"), "{stderr}");
        assert!(stderr.contains("the folders are:"), "{stderr}");
        assert!(stdout.is_empty(), "nothing listed: {stdout}");
    };
    // No upsync has used the state_dir yet.
    ls_not_a_folder();
    let (code, _, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 0, "{stderr}");
    // The database a stopped daemon left.
    ls_not_a_folder();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "the daemon to answer", || {
        status_json(&s.config)["daemon"] == "running"
    });
    ls_not_a_folder();
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
}

/// A folder that is missing (unmounted) is the daemon's to report: `status`, `ls` and
/// `retry` still answer, when they are needed most.
#[test]
fn status_ls_and_retry_answer_while_a_folder_is_missing() {
    let s = setup(&[], "");
    let (code, _, stderr) = sync_once(&s.config, &[]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::remove_dir(s.folder()).unwrap();
    let config = s.config.to_str().unwrap();
    for args in [
        vec!["status", "-c", config, "--json"],
        vec!["ls", "-c", config],
        vec!["retry", "-c", config, "--all"],
    ] {
        let (code, stdout, stderr) = upsync(&args);
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
    }
    let (code, _, stderr) = upsync(&["check", "-c", config]);
    assert_eq!(code, 2, "check still names the missing folder: {stderr}");
    assert!(stderr.contains("missing folder"), "{stderr}");
}

/// A state dir no upsync has used (a mistyped `state_dir`, or a daemon not started yet)
/// answers as an empty one, with a warning naming it, and is not created.
#[test]
fn commands_on_a_state_dir_no_daemon_ever_used_say_so_and_create_nothing() {
    let s = setup(&[], "");
    let unused = s.tmp.path().join("mistyped-state");
    let config = s.tmp.path().join("mistyped.toml");
    config_of(
        &s,
        &format!("state_dir = {:?}", unused.display().to_string()),
    )
    .write(&config);
    let config = config.to_str().unwrap();
    let file = s.folder().join("a.csv");
    for (args, answer) in [
        (vec!["status", "-c", config], "0 queued"),
        (vec!["ls", "-c", config], ""),
        (
            vec!["retry", "-c", config, "--all"],
            "0 failed job(s) queued again",
        ),
        (
            vec!["forget", "-c", config, file.to_str().unwrap()],
            "0 upload(s) forgotten",
        ),
    ] {
        let (code, stdout, stderr) = upsync(&args);
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
        assert!(stdout.contains(answer), "{args:?}: {stdout}");
        assert!(
            stderr.contains("no state database in"),
            "{args:?}: {stderr}"
        );
        assert!(!unused.exists(), "{args:?} created {}", unused.display());
    }
}

#[test]
fn sync_once_reports_a_file_still_retrying_at_its_limit_as_not_done_and_the_next_run_uploads_it() {
    let s = setup(&["--kifs-directory", "ingest"], "");
    let path = s.folder().join("later.csv");
    std::fs::write(&path, "x\n").unwrap();
    backdate(&path, 60);
    // The upload's first try fails, and a zero limit does not wait for its in-place retry.
    answer_the_upload_tries(&s, serde_json::json!({"status": 503}));
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = sync_once(&s.config, &["--retry-wait-limit", "0s"]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the limit bounds the in-place retries: {:?}",
        started.elapsed()
    );
    assert!(stdout.contains("1 file(s) not uploaded yet"), "{stdout}");
    assert!(stdout.contains("later.csv"), "{stdout}");
    assert!(stdout.contains("503"), "the last error is shown: {stdout}");
    // Retries are logged at warn with their numbers.
    assert!(
        stderr.contains("WARN") && stderr.contains("attempt=") && stderr.contains("sleep_ms="),
        "{stderr}"
    );
    // The job is kept for the next run (the interrupted attempt is resumed), which
    // uploads it.
    let report = status_json(&s.config);
    let folder = &report["folders"][0];
    let kept = folder["queued"].as_u64().unwrap() + folder["active"].as_u64().unwrap();
    assert_eq!(kept, 1, "{report}");
    let (code, stdout, stderr) = sync_once(&s.config, &["--retry-wait-limit", "10m"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(arrived(&s, &path, "later.csv"));
}

#[test]
fn under_systemd_the_daemon_notifies_ready_status_watchdog_and_stopping() {
    let s = setup(&[], "");
    let file = s.folder().join("one.csv");
    std::fs::write(&file, "1\n").unwrap();
    let socket_path = s.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("the notify socket binds");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(s.tmp.path().join("notify-daemon.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&s.config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("upsync run starts");

    let mut messages: Vec<String> = Vec::new();
    let receive_until =
        |messages: &mut Vec<String>, what: &str, done: &dyn Fn(&[String]) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buf = [0u8; 4096];
            while !done(messages) {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; got {messages:?}"
                );
                if let Ok(n) = socket.recv(&mut buf) {
                    messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        };
    receive_until(&mut messages, "READY=1", &|m| {
        m.iter().any(|m| m.lines().any(|l| l == "READY=1"))
    });
    let ready = messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap()
        .clone();
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(ready.contains("queued"), "{ready}");
    // A 1 s watchdog: pings every half second, each with the queue figures.
    let before = messages.len();
    receive_until(&mut messages, "two watchdog pings", &|m| {
        m[before..]
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
            >= 2
    });
    let ping = messages.last().unwrap();
    assert!(ping.contains("STATUS=") && ping.contains("done"), "{ping}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    receive_until(&mut messages, "STOPPING=1", &|m| {
        m.iter().any(|m| m.lines().any(|l| l == "STOPPING=1"))
    });
    let status = child.wait().expect("the daemon exits");
    assert_eq!(status.code(), Some(0));
}

/// `program`, or `None` (with the reason printed) when it is not installed ([`tool_available`]).
fn tool(program: &'static str, debian_package: &str) -> Option<&'static str> {
    tool_available(program, debian_package).then_some(program)
}

fn systemd_analyze() -> Option<&'static str> {
    tool("systemd-analyze", "systemd")
}

fn promtool() -> Option<&'static str> {
    tool("promtool", "prometheus")
}

/// Runs `promtool ARGS` with `stdin`; panics with its output unless it succeeds.
fn run_promtool(promtool: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("promtool reads its input");
    let out = child.wait_with_output().expect("promtool ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_shipped_alert_rules_pass_promtool_check_and_test_rules() {
    let Some(promtool) = promtool() else {
        return;
    };
    let checked = run_promtool(promtool, &["check", "rules", "upsync-rules.yml"], "");
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = run_promtool(promtool, &["test", "rules", "upsync-rules.test.yml"], "");
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn a_live_daemon_s_metrics_pass_promtool_and_a_reloaded_folder_gets_its_counters_at_zero() {
    let Some(promtool) = promtool() else {
        return;
    };
    let port = free_port();
    let metrics_listen = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let s = setup(&[], &metrics_listen);
    let path = s.folder().join("a.csv");
    std::fs::write(&path, "id\n1\n").unwrap();
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let inbox = s.folder().display().to_string();
    let uploaded = [
        "upsync_uploaded_files_total",
        &format!("folder=\"{inbox}\""),
    ];
    daemon.wait_until(Duration::from_secs(30), "the upload to be counted", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && sample(&get_text(&url), uploaded[0], &uploaded[1..]) == Some(1.0)
    });
    let metrics = get_text(&url);
    let linted = run_promtool(promtool, &["check", "metrics"], &metrics);
    assert!(linted.trim().is_empty(), "promtool: {linted}\n{metrics}");
    let folder = format!("folder=\"{inbox}\"");
    for (metric, labels) in [
        (
            "upsync_upload_failures_total",
            vec![folder.as_str(), "class=\"transient\""],
        ),
        ("upsync_upload_retries_total", vec![folder.as_str()]),
    ] {
        assert_eq!(sample(&metrics, metric, &labels), Some(0.0), "{metrics}");
    }
    assert_eq!(
        sample(&metrics, "upsync_build_info", &[]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    // The folder's remote check passed (it uploaded), and the remote answers.
    for (state, value) in [("ready", 1.0), ("checking", 0.0), ("refused", 0.0)] {
        let state = format!("state=\"{state}\"");
        assert_eq!(
            sample(
                &metrics,
                "upsync_folder_remote_check_state",
                &[&folder, &state]
            ),
            Some(value),
            "{metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, "upsync_remote_up", &["backend=\"kifs\""]),
        Some(1.0),
        "{metrics}"
    );

    // A folder added by a reload has its counters at once, at 0.
    let added = s.tmp.path().join("added");
    std::fs::create_dir_all(&added).unwrap();
    config_of(&s, &metrics_listen)
        .folder(
            FolderBuilder::kifs("added", "added")
                .without("settle")
                .without("create_directory"),
        )
        .write(&s.config);
    daemon.signal(libc::SIGHUP);
    let added_folder = format!("folder=\"{}\"", added.display());
    daemon.wait_until(
        Duration::from_secs(30),
        "the added folder's counters",
        || {
            sample(
                &get_text(&url),
                "upsync_upload_failures_total",
                &[&added_folder, "class=\"permanent\""],
            ) == Some(0.0)
        },
    );
    run_promtool(promtool, &["check", "metrics"], &get_text(&url));
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
}

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/upsync.service")
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/upsync run"), "{unit}");
    // Where the README tells *_env secrets to go.
    assert!(
        unit.contains("\nEnvironmentFile=-/etc/upsync/upsync.env\n"),
        "{unit}"
    );
    let unit = unit.replace("ExecStart=/usr/bin/upsync", &format!("ExecStart={BIN}"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("upsync.service");
    std::fs::write(&copy, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("upsync.service"),
        "systemd-analyze verify complained about the unit: {stderr}"
    );
}

#[test]
fn the_systemd_unit_rates_an_exposure_of_at_most_1_5() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let out = Command::new(analyze)
        .args(["security", "--offline=yes"])
        .arg(unit_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for upsync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level {score:.1}")),
        "the README should quote the score {score:.1}"
    );
}

/// The keys the config accepts in `table`, as the binary's unknown-key error lists them
/// (straight from the serde schema).
fn accepted_keys(table: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keys.toml");
    let body = match table {
        "" => "state_dir = \"s\"\nno_such_key = 1\n".to_string(),
        "folder" => "state_dir = \"s\"\n[[folder]]\nno_such_key = 1\n".to_string(),
        other => format!("state_dir = \"s\"\n[{other}]\nno_such_key = 1\n"),
    };
    std::fs::write(&config, body).unwrap();
    let (code, _, stderr) = upsync(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let list = stderr
        .split("expected one of: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no key list in: {stderr}"));
    list.split(", ").map(|k| k.trim().to_string()).collect()
}

/// The keys the README's reference documents under `### <heading>`, from rows `| \`key\` |`.
fn documented_keys(readme: &str, heading: &str) -> BTreeSet<String> {
    let start = readme
        .find(&format!("### {heading}\n"))
        .unwrap_or_else(|| panic!("the README has no '### {heading}' section"));
    readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_config_reference_covers_exactly_the_keys_the_config_accepts() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let tables = [
        ("redivis", "`[redivis]`"),
        ("kifs", "`[kifs]`"),
        ("folder", "`[[folder]]`"),
        ("emulator", "`[emulator]`"),
    ];
    let mut top = accepted_keys("");
    for (table, _) in tables {
        assert!(top.remove(table), "[{table}] is no longer a table: {top:?}");
    }
    assert_eq!(documented_keys(&readme, "Top level"), top, "top level");
    for (table, heading) in tables {
        assert_eq!(
            documented_keys(&readme, heading),
            accepted_keys(table),
            "[{table}]"
        );
    }
}

#[test]
fn every_subcommand_has_help_and_completions_are_printed_for_each_shell() {
    let (code, stdout, _) = upsync(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "run",
        "sync",
        "check",
        "status",
        "retry",
        "completions",
        "emulator",
    ] {
        assert!(stdout.contains(command), "--help lacks {command}: {stdout}");
        let (code, help, stderr) = upsync(&[command, "--help"]);
        assert_eq!(code, 0, "{command} --help: {stderr}");
        assert!(help.contains("Usage: upsync"), "{help}");
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef upsync"),
        ("fish", "complete -c upsync"),
    ] {
        let (code, script, stderr) = upsync(&["completions", shell]);
        assert_eq!(code, 0, "{stderr}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("retry-wait-limit"), "{shell}");
    }
}

#[test]
fn sync_without_once_is_a_usage_error() {
    let (code, _, stderr) = upsync(&["sync", "-c", "x.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--once"), "{stderr}");
}
