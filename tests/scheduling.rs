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
        let tmp = tempfile::tempdir().unwrap();
        let (kin, rin) = (tmp.path().join("kin"), tmp.path().join("rin"));
        std::fs::create_dir_all(&kin).unwrap();
        std::fs::create_dir_all(&rin).unwrap();
        let mut args = vec!["--kifs-directory", "ingest", "--redivis-token", TOKEN];
        args.extend_from_slice(emulator_args);
        let emulator = EmulatorProcess::start(&tmp.path().join("remote"), &args);
        let metrics_port = free_port();
        let config = tmp.path().join("upsync.toml");
        let text = format!(
            r#"
state_dir = "state"
concurrency = 2
shutdown_timeout = "5s"
retry_max_delay = "1h"
metrics_listen = "127.0.0.1:{metrics_port}"
{top_extra}
[kifs]
url = "{kifs}"
[redivis]
api_url = "{redivis}"
token = "{TOKEN}"
[[folder]]
path = "kin"
kifs_directory = "ingest"
settle = "1s"
[[folder]]
path = "rin"
redivis_table = "{TABLE}"
settle = "1s"
"#,
            kifs = emulator.kifs_url(),
            redivis = emulator.redivis_url(),
        );
        std::fs::write(&config, text).unwrap();
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
        let (code, stdout, stderr) =
            upsync(&["status", "-c", self.config.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "status failed: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    fn metrics(&self) -> String {
        get_text(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
    }

    fn kifs_arrived(&self, local: &Path) -> bool {
        let name = local.file_name().unwrap().to_str().unwrap();
        same_content(local, &self.emulator.kifs_file(&format!("ingest/{name}")))
    }

    /// Names of the table's uploads.
    fn redivis_names(&self) -> Vec<String> {
        self.emulator
            .list_redivis_uploads(TABLE, TOKEN)
            .iter()
            .filter_map(|u| u["name"].as_str().map(str::to_string))
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get_text(url: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::get(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap()
    })
}

/// The value of the first sample of `metric` whose labels contain every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
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
