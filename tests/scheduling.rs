//! A slow or unreachable remote holds nothing: the real `upsync` binary against the real
//! emulator process, with the remote stopped, faulted or slow to import.
//!
//! Cases:
//! - Start with the remote down: status and metrics answer at once, and SIGTERM at 2 s
//!   stops the daemon within a second, exit 0.
//! - Start with the remote down, then bring it up: uploads begin within the probe's cap.
//! - An outage of the Redivis API only: KiFS files keep arriving within their settle time
//!   while Redivis is down (shown in status and metrics), and the Redivis files follow once
//!   it answers again.
//! - Imports off the workers: 200 small files to Redivis with a 10 s import each and 4
//!   workers finish in well under 30 s (one after the other they would take 500 s); a
//!   kill -9 while files are importing resumes the wait and posts nothing twice.
//! - Fair claiming: with 10,000 files queued in one folder, a file dropped into another
//!   folder arrives within its settle time plus 3 s.
//! - Vanished files: a failed file that is renamed clears without `upsync retry`.
//! - `sync --once`: with the remote down it ends at its `--retry-wait-limit` with a
//!   summary; a folder whose remote refuses it is not waited for.
//! - Stalls are visible: an upload waiting for an in-place retry shows "retrying (attempt
//!   n, next in Ns): last error" in `status`, text and JSON.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "scheduling-test-token";
const TABLE: &str = "sched.dataset:next.files";

/// Two folders, `kin` → KiFS directory `ingest` and `rin` → Redivis table [`TABLE`], on one
/// emulator process.
struct Setup {
    tmp: tempfile::TempDir,
    kin: PathBuf,
    rin: PathBuf,
    config: PathBuf,
    emulator: EmulatorProcess,
    metrics_port: u16,
}

impl Setup {
    fn new(emulator_args: &[&str], top_extra: &str) -> Setup {
        let mut args = vec!["--kifs-directory", "ingest", "--redivis-token", TOKEN];
        args.extend_from_slice(emulator_args);
        let Site {
            tmp,
            folders,
            emulator,
            config,
        } = Site::start(&["kin", "rin"], &args);
        let (kin, rin) = (folders[0].clone(), folders[1].clone());
        let metrics_port = free_port();
        ConfigBuilder::new()
            .top("concurrency = 2\nshutdown_timeout = \"5s\"\nretry_max_delay = \"1h\"")
            .top(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
            .top(top_extra)
            .kifs(&emulator.kifs_url())
            .redivis_with_token(&emulator.redivis_url(), TOKEN)
            .folder(FolderBuilder::kifs("kin", "ingest").without("create_directory"))
            .folder(FolderBuilder::redivis("rin", TABLE))
            .write(&config);
        Setup {
            tmp,
            kin,
            rin,
            config,
            emulator,
            metrics_port,
        }
    }

    fn status(&self) -> serde_json::Value {
        status_json(&self.config)
    }

    fn metrics(&self) -> String {
        get_text(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
    }

    fn kifs_arrived(&self, local: &Path) -> bool {
        let name = local.file_name().unwrap().to_str().unwrap();
        self.emulator.kifs_holds(local, &format!("ingest/{name}"))
    }

    fn redivis_stats(&self) -> serde_json::Value {
        self.emulator.get_json("/_emulator/redivis/stats")
    }

    /// The status of folder `index` (0: `kin`, 1: `rin`).
    fn folder(&self, index: usize) -> serde_json::Value {
        self.status()["folders"][index].clone()
    }

    /// Names of the table's uploads.
    fn redivis_names(&self) -> Vec<String> {
        self.emulator.redivis_upload_names(TABLE, TOKEN)
    }
}

fn write_backdated(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    backdate(path, 60);
}

#[test]
fn with_the_remote_down_the_daemon_answers_at_once_and_stops_within_a_second_of_sigterm() {
    let mut s = Setup::new(&[], "");
    write_backdated(&s.kin.join("a.csv"), "a\n");
    write_backdated(&s.rin.join("b.csv"), "b\n");
    s.emulator.stop();
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(5), "status from the daemon", || {
        let (code, stdout, _) = upsync(&["status", "-c", s.config.to_str().unwrap(), "--json"]);
        code == 0 && stdout.contains("\"running\"")
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = s.metrics();
    assert!(metrics.contains("upsync_queue_jobs"), "{metrics}");
    let status = s.status();
    for folder in status["folders"].as_array().unwrap() {
        assert_ne!(folder["remote_check"]["state"], "ready", "{status}");
    }
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    let code = daemon.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, Some(0));
    assert!(took <= Duration::from_secs(3), "stopping took {took:?}");
    println!("remote down: running and answering; SIGTERM to exit: {took:?}");
}

#[test]
fn with_the_remote_down_at_start_uploads_begin_soon_after_it_is_reachable() {
    let mut s = Setup::new(&[], "");
    let kifs_file = s.kin.join("k.csv");
    write_backdated(&kifs_file, "kifs\n");
    write_backdated(&s.rin.join("r.csv"), "redivis\n");
    s.emulator.stop();
    let mut daemon = DaemonProcess::start(&s.config);
    // Long enough for both remotes to be judged down and probed with growing pauses.
    daemon.wait_until(Duration::from_secs(30), "both remotes down", || {
        let status = s.status();
        status["remotes"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["state"] == "down"))
    });
    let metrics = s.metrics();
    assert_eq!(
        sample(&metrics, "upsync_remote_up", &["backend=\"kifs\""]),
        Some(0.0),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_secs(8));
    s.emulator.start_again(None);
    let back = Instant::now();
    daemon.wait_until(Duration::from_secs(40), "both files", || {
        s.kifs_arrived(&kifs_file) && s.redivis_names() == ["r.csv"]
    });
    let took = back.elapsed();
    println!("remote back: both files uploaded {took:?} later");
    assert!(took <= Duration::from_secs(30), "{took:?}");
    let status = s.status();
    assert!(
        status["remotes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "up"),
        "{status}"
    );
    assert_eq!(daemon.terminate(), Some(0));
    let _ = &s.tmp;
}

/// Writes `count` files of 4 KiB named `{prefix}{i}.csv` into `dir`, backdated.
fn small_files(dir: &Path, prefix: &str, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:03}.csv"));
            write_file(&path, 4096, 7_000 + i as u64);
            backdate(&path, 60);
            path
        })
        .collect()
}

#[test]
fn two_hundred_small_files_with_a_ten_second_import_each_finish_within_thirty_seconds() {
    let s = Setup::new(&["--redivis-processing-delay", "10s"], "concurrency = 4");
    let files = small_files(&s.rin, "f", 200);
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(&s.config);
    let mut most_importing = 0;
    daemon.wait_until(Duration::from_secs(60), "every file imported", || {
        let folder = s.folder(1);
        most_importing = most_importing.max(folder["importing"].as_u64().unwrap_or(0));
        assert!(folder["active"].as_u64().unwrap_or(0) <= 4, "{folder}");
        folder["done"] == 200
    });
    let took = started.elapsed();
    println!(
        "200 × 4 KiB, 10 s import, 4 workers: {took:?} (one import after another: {} s); \
         at most {most_importing} importing at once",
        200 * 10 / 4
    );
    assert!(took <= Duration::from_secs(30), "{took:?}");
    assert!(
        most_importing > 4,
        "imports held no worker: {most_importing}"
    );
    let mut names = s.redivis_names();
    names.sort();
    let expected: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, expected, "each file exactly once");
    assert_eq!(s.redivis_stats()["uploads_created"], 200);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_kill_while_files_import_resumes_the_wait_and_posts_nothing_twice() {
    let s = Setup::new(&["--redivis-processing-delay", "6s"], "");
    small_files(&s.rin, "k", 6);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(30), "every file posted", || {
        s.redivis_stats()["uploads_created"] == 6
    });
    daemon.kill9();
    let store = upsync::queue::Store::open(&s.tmp.path().join("state")).unwrap();
    let importing = store.importing_jobs().unwrap().len();
    drop(store);
    assert!(importing >= 1, "files were importing at the kill");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(40), "every file imported", || {
        s.folder(1)["done"] == 6
    });
    assert_eq!(
        s.redivis_stats()["uploads_created"],
        6,
        "the restart waited for the imports instead of posting again"
    );
    assert_eq!(s.redivis_names().len(), 6);
    assert_eq!(daemon.terminate(), Some(0));
}

/// The `state` of the remote of `backend` in a status report.
fn remote_state(status: &serde_json::Value, backend: &str) -> String {
    status["remotes"]
        .as_array()
        .and_then(|remotes| remotes.iter().find(|r| r["backend"] == backend))
        .and_then(|r| r["state"].as_str())
        .unwrap_or("unknown")
        .to_string()
}

#[test]
fn an_outage_of_redivis_alone_leaves_kifs_files_arriving_at_full_speed() {
    let s = Setup::new(&[], "");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "both folders ready", || {
        let status = s.status();
        (0..2).all(|i| status["folders"][i]["remote_check"]["state"] == "ready")
    });
    // Redivis' API answers 503 from now on, until the faults are cleared.
    let outage: Vec<serde_json::Value> = (0..2000)
        .map(|_| serde_json::json!({"target": "redivis-api", "action": {"status": 503}}))
        .collect();
    s.emulator
        .post_json("/_emulator/faults", &serde_json::Value::Array(outage));
    let redivis_files = small_files(&s.rin, "r", 4);
    daemon.wait_until(Duration::from_secs(30), "Redivis judged down", || {
        remote_state(&s.status(), "redivis") == "down"
    });
    let metrics = s.metrics();
    assert_eq!(
        sample(&metrics, "upsync_remote_up", &["backend=\"redivis\""]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "upsync_remote_up", &["backend=\"kifs\""]),
        Some(1.0),
        "{metrics}"
    );
    // KiFS files keep arriving within their settle time plus a few seconds.
    let mut slowest = Duration::ZERO;
    for i in 0..12 {
        let path = s.kin.join(format!("k{i}.csv"));
        let written = Instant::now();
        std::fs::write(&path, format!("kifs file {i}\n")).unwrap();
        daemon.wait_until(Duration::from_secs(10), "a KiFS file", || {
            s.kifs_arrived(&path)
        });
        slowest = slowest.max(written.elapsed());
    }
    println!("Redivis down: slowest KiFS file took {slowest:?} (settle 1 s)");
    assert!(slowest <= Duration::from_secs(4), "{slowest:?}");
    let status = s.status();
    assert_eq!(remote_state(&status, "redivis"), "down", "{status}");
    assert_eq!(status["folders"][1]["done"], 0, "{status}");
    assert_eq!(s.redivis_stats()["uploads_created"], 0);

    s.emulator.delete("/_emulator/faults");
    let back = Instant::now();
    daemon.wait_until(Duration::from_secs(40), "the Redivis files", || {
        s.folder(1)["done"] == redivis_files.len()
    });
    println!(
        "Redivis back: its files uploaded {:?} later",
        back.elapsed()
    );
    assert!(
        back.elapsed() <= Duration::from_secs(30),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_failed_file_that_is_renamed_clears_without_retry() {
    let s = Setup::new(&[], "");
    let bad = s.kin.join("bad_name.csv");
    write_backdated(&bad, "a name KiFS refuses\n");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the failure", || {
        s.folder(0)["failed"] == 1
    });
    let failed =
        |metrics: &str| sample(metrics, "upsync_queue_jobs", &["state=\"failed\"", "kin\""]);
    assert_eq!(failed(&s.metrics()), Some(1.0));
    // The README's remedy for a name the remote rejects: rename the file.
    let good = s.kin.join("good-name.csv");
    std::fs::rename(&bad, &good).unwrap();
    daemon.wait_until(Duration::from_secs(20), "the renamed file", || {
        s.kifs_arrived(&good)
    });
    daemon.wait_until(Duration::from_secs(10), "the failure cleared", || {
        s.folder(0)["failed"] == 0
    });
    let status = s.status();
    assert_eq!(status["failed"], serde_json::json!([]), "{status}");
    assert_eq!(failed(&s.metrics()), Some(0.0));
    assert_eq!(daemon.terminate(), Some(0));
    // A one-shot run has nothing left to report.
    let (code, stdout, stderr) = upsync(&["sync", "--once", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

#[test]
fn sync_once_with_the_remote_down_ends_at_its_retry_wait_limit_with_a_summary() {
    let mut s = Setup::new(&[], "");
    write_backdated(&s.kin.join("k.csv"), "kifs\n");
    write_backdated(&s.rin.join("r.csv"), "redivis\n");
    s.emulator.stop();
    let started = Instant::now();
    let (code, stdout, stderr) = upsync(&[
        "sync",
        "--once",
        "-c",
        s.config.to_str().unwrap(),
        "--retry-wait-limit",
        "10s",
    ]);
    let took = started.elapsed();
    println!("sync --once, remote down, limit 10 s: exit {code} after {took:?}");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        took >= Duration::from_secs(10) && took <= Duration::from_secs(15),
        "{took:?}"
    );
    assert!(stdout.contains("2 file(s) not uploaded yet"), "{stdout}");
    assert!(
        stdout.contains("k.csv") && stdout.contains("r.csv"),
        "{stdout}"
    );
    assert!(stdout.contains("--retry-wait-limit"), "{stdout}");
    assert!(
        stdout.contains("remote"),
        "the summary says what they wait for: {stdout}"
    );
    // The next run, with the remote back, uploads them.
    s.emulator.start_again(None);
    let (code, stdout, stderr) = upsync(&["sync", "--once", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("uploaded 2 file(s)"), "{stdout}");
}

#[test]
fn sync_once_does_not_wait_for_a_folder_whose_remote_refuses_it() {
    let s = Setup::new(&[], "");
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "kifs_directory = \"ingest\"",
        "kifs_directory = \"missing\"",
    );
    std::fs::write(&s.config, text).unwrap();
    write_backdated(&s.kin.join("k.csv"), "waits for its directory\n");
    write_backdated(&s.rin.join("r.csv"), "redivis\n");
    let started = Instant::now();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "-c", s.config.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        took < Duration::from_secs(20),
        "waited {took:?} for nothing"
    );
    assert!(stdout.contains("uploaded 1 file(s)"), "{stdout}");
    assert!(stdout.contains("1 file(s) not uploaded yet"), "{stdout}");
    assert!(
        stdout.contains("k.csv: its folder's remote refuses it") && stdout.contains("'missing'"),
        "{stdout}"
    );
    assert_eq!(s.redivis_names(), ["r.csv"]);
}

#[test]
fn a_backlog_of_ten_thousand_files_in_one_folder_does_not_delay_another_folders_file() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    // b comes after a in the queue's folder order, so only taking turns serves it early.
    let tag = |path: &Path| upsync::queue::folder_tag(&path.to_string_lossy());
    let b = (0..)
        .map(|n| tmp.path().join(format!("b{n}")))
        .find(|b| tag(b) > tag(&a))
        .unwrap();
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let emulator = EmulatorProcess::start(
        &tmp.path().join("remote"),
        &["--kifs-directory", "a", "--kifs-directory", "b"],
    );
    let config = tmp.path().join("upsync.toml");
    ConfigBuilder::new()
        .top("concurrency = 1")
        .kifs(&emulator.kifs_url())
        .folder(FolderBuilder::kifs("a", "a"))
        .folder(FolderBuilder::kifs(&b.display().to_string(), "b"))
        .each_folder(|folder| folder.without("create_directory"))
        .write(&config);
    for i in 0..10_000 {
        let path = a.join(format!("f{i:05}.csv"));
        std::fs::write(&path, format!("{i}\n")).unwrap();
    }
    // Every KiFS request takes 0.7 s, so the backlog lasts (a batch carries up to 1000
    // files): draining it takes 7 s or more.
    let slow: Vec<serde_json::Value> = (0..100)
        .map(|_| serde_json::json!({"target": "kifs", "action": {"delay_ms": 700}}))
        .collect();
    emulator.post_json("/_emulator/faults", &serde_json::Value::Array(slow));
    let mut daemon = DaemonProcess::start(&config);
    let status = || {
        let (code, stdout, stderr) = upsync(&["status", "-c", config.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    daemon.wait_until(Duration::from_secs(60), "a backlog in a", || {
        status()["folders"][0]["queued"].as_u64().unwrap_or(0) >= 3_000
    });
    let file = b.join("urgent.csv");
    let written = Instant::now();
    std::fs::write(&file, "from b\n").unwrap();
    daemon.wait_until(Duration::from_secs(30), "b's file", || {
        same_content(&file, &emulator.kifs_file("b/urgent.csv"))
    });
    let took = written.elapsed();
    let left = status()["folders"][0]["queued"].as_u64().unwrap_or(0);
    println!(
        "b's file arrived {took:?} after it was written (settle 1 s); a still had {left} queued"
    );
    // Served in turn, b's file waits for its settle and at most the batch of a in flight
    // (about 2–3 s); served after the backlog it would wait 7 s or more. 6 s keeps the two
    // apart on a loaded machine.
    assert!(took <= Duration::from_secs(6), "{took:?}");
    assert!(
        left > 0,
        "the backlog was gone before b's file: the test proves nothing"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn an_upload_retrying_in_place_shows_the_retry_instead_of_a_rate() {
    let s = Setup::new(&[], "");
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(20), "the KiFS folder ready", || {
        s.folder(0)["remote_check"]["state"] == "ready"
    });
    // Two answers asking for a 4 s pause: the upload waits in place, in plain sight.
    let busy: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            serde_json::json!({"target": "kifs", "action": {"status": 503, "retry_after": "4"}})
        })
        .collect();
    s.emulator
        .post_json("/_emulator/faults", &serde_json::Value::Array(busy));
    let path = s.kin.join("stalled.csv");
    write_backdated(&path, "waits twice\n");
    let mut shown = serde_json::Value::Null;
    daemon.wait_until(Duration::from_secs(20), "the retry in status", || {
        shown = s.status()["in_flight"][0].clone();
        shown["retrying"].is_object()
    });
    assert!(
        shown["retrying"]["attempt"].as_u64().unwrap() >= 1,
        "{shown}"
    );
    assert!(
        shown["retrying"]["next_in_s"].as_u64().unwrap() <= 4,
        "{shown}"
    );
    let error = shown["retrying"]["last_error"].as_str().unwrap();
    assert!(error.contains("503"), "{shown}");
    let (code, text, _) = upsync(&["status", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("stalled.csv") && text.contains("retrying (attempt "),
        "{text}"
    );
    daemon.wait_until(Duration::from_secs(30), "the file after the pauses", || {
        s.kifs_arrived(&path)
    });
    assert_eq!(daemon.terminate(), Some(0));
}
