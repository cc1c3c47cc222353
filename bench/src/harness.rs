//! The moving parts every scenario uses: the in-process emulator, the real daemon as a child
//! process, `curl`, test files of random bytes, and polling.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use upsync::daemon::control;
use upsync::daemon::status::StatusReport;
use upsync::emulator::{self, EmulatorOptions, RunningEmulator};

pub type BenchResult<T> = Result<T, String>;

/// The Redivis table every scenario uploads into (an unreleased version, the only kind that
/// takes uploads).
pub const TABLE: &str = "bench.dataset:next.files";
/// The file index table of the file index section.
pub const FILES_TABLE: &str = "bench.dataset:next.scans";
pub const REDIVIS_TOKEN: &str = "bench-token";

/// What the scenarios share: where the daemon binary is, where scratch files go.
pub struct Ctx {
    pub bin: PathBuf,
    /// Scratch space in the system temp dir; removed when the run ends.
    pub work: tempfile::TempDir,
    pub http: reqwest::Client,
    counter: std::sync::atomic::AtomicU64,
}

impl Ctx {
    pub fn new(bin: PathBuf, work: tempfile::TempDir) -> Ctx {
        Ctx {
            bin,
            work,
            http: reqwest::Client::new(),
            counter: Default::default(),
        }
    }

    /// A fresh, empty directory under the scratch space.
    pub fn fresh_dir(&self, name: &str) -> BenchResult<PathBuf> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.work.path().join(format!("{n:02}-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(dir)
    }
}

/// The emulator on 127.0.0.1 with a free port: served from this process, or an
/// `upsync emulator` child process where its own cost must stay out of the figures.
pub struct Emulator {
    server: Server,
    pub data_dir: PathBuf,
    http: reqwest::Client,
}

enum Server {
    InProcess {
        running: RunningEmulator,
        /// What it was started with, to serve again after [`Emulator::go_away`].
        options: Box<EmulatorOptions>,
    },
    Process {
        child: tokio::process::Child,
        addr: std::net::SocketAddr,
    },
}

impl Emulator {
    /// Starts an emulator over `data_dir`; Redivis uploads complete at once (no processing
    /// delay: the benchmark measures the transfer, not the remote's import).
    pub async fn start(data_dir: &Path, kifs_directories: &[&str]) -> BenchResult<Emulator> {
        Emulator::start_with(data_dir, kifs_directories, |_| {}).await
    }

    /// [`Emulator::start`] with `adjust` applied to the options.
    pub async fn start_with(
        data_dir: &Path,
        kifs_directories: &[&str],
        adjust: impl FnOnce(&mut EmulatorOptions),
    ) -> BenchResult<Emulator> {
        let mut options = EmulatorOptions::with_data_dir(data_dir.to_path_buf());
        options.redivis.redivis_processing_delay = Duration::ZERO;
        options.redivis.redivis_token = Some(upsync::config::Secret::new(REDIVIS_TOKEN));
        options.kifs.kifs_directories = kifs_directories.iter().map(|d| d.to_string()).collect();
        adjust(&mut options);
        let running = emulator::start("127.0.0.1:0", options.clone())
            .await
            .map_err(|e| format!("cannot start the emulator: {e}"))?;
        Ok(Emulator {
            server: Server::InProcess {
                running,
                options: Box::new(options),
            },
            data_dir: data_dir.to_path_buf(),
            http: reqwest::Client::new(),
        })
    }

    /// Stops serving (clients get "connection refused"), keeping what was stored.
    /// Only for an emulator served from this process.
    pub async fn go_away(&self) -> BenchResult<()> {
        let Server::InProcess { running, .. } = &self.server else {
            return Err("only an emulator in this process can go away and come back".into());
        };
        running.shutdown.cancel();
        while !running.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Serves again on the same address and data after [`Emulator::go_away`].
    pub async fn come_back(&mut self) -> BenchResult<()> {
        let Server::InProcess { running, options } = &mut self.server else {
            return Err("only an emulator in this process can go away and come back".into());
        };
        let addr = running.addr.to_string();
        *running = emulator::start(&addr, (**options).clone())
            .await
            .map_err(|e| format!("cannot start the emulator again on {addr}: {e}"))?;
        Ok(())
    }

    /// Starts `upsync emulator` (the daemon binary's own command) over `data_dir` as a child
    /// process, with the given KiFS directories.
    pub async fn start_process(
        ctx: &Ctx,
        data_dir: &Path,
        kifs_directories: &[&str],
    ) -> BenchResult<Emulator> {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(&ctx.bin);
        command
            .args(["emulator", "--listen", "127.0.0.1:0", "--data"])
            .arg(data_dir)
            .args(["--redivis-token", REDIVIS_TOKEN])
            .args(["--redivis-processing-delay", "0s"]);
        for directory in kifs_directories {
            command.args(["--kifs-directory", directory]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {} emulator: {e}", ctx.bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut greeting = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut greeting)
            .await
            .map_err(|e| format!("reading the emulator's address: {e}"))?;
        let addr = greeting
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("unexpected emulator greeting: {greeting:?}"))?;
        Ok(Emulator {
            server: Server::Process { child, addr },
            data_dir: data_dir.to_path_buf(),
            http: reqwest::Client::new(),
        })
    }

    /// The emulator's process id when it runs as its own process.
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::InProcess { .. } => None,
            Server::Process { child, .. } => child.id(),
        }
    }

    pub fn base(&self) -> String {
        let addr = match &self.server {
            Server::InProcess { running, .. } => running.addr,
            Server::Process { addr, .. } => *addr,
        };
        format!("http://{addr}")
    }

    pub fn kifs_url(&self) -> String {
        format!("{}/kifs", self.base())
    }

    pub fn redivis_url(&self) -> String {
        format!("{}/api/v1", self.base())
    }

    /// Where the emulator stores the KiFS file `name` (`dir/rest`).
    pub fn kifs_file(&self, name: &str) -> PathBuf {
        emulator::kifs::stored_file_path(&self.data_dir.join("kifs"), name)
    }

    pub async fn get_json(&self, path: &str) -> BenchResult<serde_json::Value> {
        let url = format!("{}{path}", self.base());
        self.http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: not JSON: {e}"))
    }

    /// HTTP requests the emulator served: KiFS endpoint calls (its own counters, which leave
    /// out the `_emulator` routes the benchmark polls), Redivis API and session requests.
    pub async fn requests(&self) -> BenchResult<Requests> {
        let stats = self.get_json("/_emulator/stats").await?;
        let get = |key: &str| stats["requests"][key].as_u64().unwrap_or(0);
        let kifs = self.get_json("/kifs/_emulator/stats").await?;
        let kifs = kifs["requests"].as_object().map_or(0, |endpoints| {
            endpoints.values().filter_map(|v| v.as_u64()).sum()
        });
        Ok(Requests {
            kifs,
            redivis_api: get("redivis-api"),
            redivis_session: get("redivis-session"),
        })
    }

    /// Files the KiFS emulator has stored (whole-file uploads and multipart completes).
    pub async fn kifs_files_stored(&self) -> BenchResult<u64> {
        let stats = self.get_json("/kifs/_emulator/stats").await?;
        stats["files_stored"]
            .as_u64()
            .ok_or_else(|| format!("the KiFS emulator reports no files_stored: {stats}"))
    }

    /// `/upload/files` requests the KiFS emulator received.
    pub async fn kifs_uploads(&self) -> BenchResult<u64> {
        self.kifs_requests_to("/upload/files").await
    }

    /// `/delete/files` requests the KiFS emulator received.
    pub async fn kifs_deletes(&self) -> BenchResult<u64> {
        self.kifs_requests_to("/delete/files").await
    }

    /// Requests the KiFS emulator received at `endpoint`.
    async fn kifs_requests_to(&self, endpoint: &str) -> BenchResult<u64> {
        let stats = self.get_json("/kifs/_emulator/stats").await?;
        Ok(stats["requests"][endpoint].as_u64().unwrap_or(0))
    }

    /// Creates [`FILES_TABLE`] as a file index table.
    pub async fn create_file_index(&self) -> BenchResult<()> {
        let url = format!("{}/_emulator/redivis/tables", self.base());
        let body = serde_json::json!({"reference": FILES_TABLE, "isFileIndex": true});
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: {}", response.status()))
        }
    }

    /// Uploads the Redivis emulator created (`upload.post` after every byte arrived).
    pub async fn redivis_uploads_created(&self) -> BenchResult<u64> {
        let stats = self.get_json("/_emulator/redivis/stats").await?;
        stats["uploads_created"]
            .as_u64()
            .ok_or_else(|| format!("the Redivis emulator reports no uploads_created: {stats}"))
    }

    /// API requests the emulator's Redivis side counted for `endpoint` (`rawFiles.post`).
    pub async fn redivis_calls(&self, endpoint: &str) -> BenchResult<u64> {
        let stats = self.get_json("/_emulator/redivis/stats").await?;
        Ok(stats["api_requests"][endpoint].as_u64().unwrap_or(0))
    }

    /// Stops the server and deletes everything it stored.
    pub async fn stop(self) {
        let data_dir = self.data_dir.clone();
        self.stop_keeping_data().await;
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    /// Stops the server and leaves what it stored in place, for the caller to delete
    /// (`scenarios::small_rounds` says why that may wait).
    pub async fn stop_keeping_data(self) {
        match self.server {
            Server::InProcess { running, .. } => {
                running.shutdown.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
            }
            Server::Process { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Requests {
    pub kifs: u64,
    pub redivis_api: u64,
    pub redivis_session: u64,
}

impl std::ops::Sub for Requests {
    type Output = Requests;
    fn sub(self, earlier: Requests) -> Requests {
        Requests {
            kifs: self.kifs.saturating_sub(earlier.kifs),
            redivis_api: self.redivis_api.saturating_sub(earlier.redivis_api),
            redivis_session: self.redivis_session.saturating_sub(earlier.redivis_session),
        }
    }
}

/// Where a watched folder's files go.
#[derive(Clone)]
pub enum Remote {
    Kifs {
        directory: String,
    },
    Redivis,
    /// The file index table [`FILES_TABLE`] (created by [`Emulator::create_file_index`]).
    RedivisFiles,
}

impl Remote {
    pub fn is_redivis(&self) -> bool {
        matches!(self, Remote::Redivis | Remote::RedivisFiles)
    }
}

/// The daemon's workers in every run (`concurrency`), unless a scenario sets another.
pub const WORKERS: u32 = 4;

/// The daemon's config, written as TOML.
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub concurrency: u32,
    pub kifs_url: Option<String>,
    pub kifs_json: bool,
    pub redivis_url: Option<String>,
    pub chunk_size: &'static str,
    pub folders: Vec<(PathBuf, Remote)>,
    pub settle: &'static str,
    /// `bandwidth_limit`, e.g. "10MiB/s".
    pub bandwidth_limit: Option<&'static str>,
    /// `metrics_listen`, e.g. "127.0.0.1:0".
    pub metrics_listen: Option<&'static str>,
    /// Every folder's `on_delete` ("keep" is the daemon's default and is not written).
    pub on_delete: &'static str,
}

impl DaemonConfig {
    pub fn new(dir: &Path, emulator: &Emulator) -> DaemonConfig {
        DaemonConfig {
            state_dir: dir.join("state"),
            concurrency: WORKERS,
            kifs_url: Some(emulator.kifs_url()),
            kifs_json: false,
            redivis_url: None,
            chunk_size: "8MiB",
            folders: Vec::new(),
            settle: "1s",
            bandwidth_limit: None,
            metrics_listen: None,
            on_delete: "keep",
        }
    }

    /// A daemon mirroring one folder, `dir/inbox` (created here), to the KiFS directory
    /// `ingest`; returns the config and the inbox.
    pub fn kifs_inbox(dir: &Path, emulator: &Emulator) -> BenchResult<(DaemonConfig, PathBuf)> {
        let inbox = dir.join("inbox");
        std::fs::create_dir_all(&inbox).map_err(|e| format!("create {}: {e}", inbox.display()))?;
        let mut config = DaemonConfig::new(dir, emulator);
        config.folders.push((
            inbox.clone(),
            Remote::Kifs {
                directory: "ingest".into(),
            },
        ));
        Ok((config, inbox))
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        let quoted = |p: &Path| toml_string(&p.to_string_lossy());
        writeln!(
            text,
            "state_dir = {}\nconcurrency = {}\nrescan_interval = \"0s\"\nshutdown_timeout = \"20s\"",
            quoted(&self.state_dir),
            self.concurrency
        )
        .expect("writing to a String cannot fail");
        if let Some(listen) = self.metrics_listen {
            writeln!(text, "metrics_listen = \"{listen}\"")
                .expect("writing to a String cannot fail");
        }
        if let Some(limit) = self.bandwidth_limit {
            writeln!(text, "bandwidth_limit = \"{limit}\"")
                .expect("writing to a String cannot fail");
        }
        if let Some(url) = &self.kifs_url {
            let encoding = if self.kifs_json { "json" } else { "binary" };
            writeln!(
                text,
                "[kifs]\nurl = {}\nencoding = \"{encoding}\"",
                toml_string(url)
            )
            .expect("writing to a String cannot fail");
        }
        if let Some(url) = &self.redivis_url {
            writeln!(
                text,
                "[redivis]\napi_url = {}\ntoken = \"{REDIVIS_TOKEN}\"\nchunk_size = \"{}\"",
                toml_string(url),
                self.chunk_size
            )
            .expect("writing to a String cannot fail");
        }
        for (path, remote) in &self.folders {
            let target = match remote {
                Remote::Kifs { directory } => format!(
                    "kifs_directory = {}\ncreate_directory = true",
                    toml_string(directory)
                ),
                Remote::Redivis => format!("redivis_table = \"{TABLE}\""),
                Remote::RedivisFiles => format!("redivis_table = \"{FILES_TABLE}\""),
            };
            writeln!(
                text,
                "[[folder]]\npath = {}\n{target}\nsettle = \"{}\"",
                quoted(path),
                self.settle
            )
            .expect("writing to a String cannot fail");
            if self.on_delete != "keep" {
                writeln!(text, "on_delete = \"{}\"", self.on_delete)
                    .expect("writing to a String cannot fail");
            }
        }
        text
    }
}

fn toml_string(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

/// A running `upsync run`; killed if dropped without [`Daemon::terminate`].
pub struct Daemon {
    child: Option<tokio::process::Child>,
    pub pid: u32,
    pub log: PathBuf,
    pub state_dir: PathBuf,
    /// From spawn until the daemon said it is running (start-up scans done).
    pub startup: Duration,
}

/// The log line the daemon prints once every folder's start-up scan is queued.
const READY_LINE: &str = "upsync is running";

impl Daemon {
    /// Writes the config next to the state dir, spawns the daemon and waits until it is
    /// running (its start-up scans are done).
    pub async fn start(ctx: &Ctx, dir: &Path, config: &DaemonConfig) -> BenchResult<Daemon> {
        let config_path = dir.join("upsync.toml");
        std::fs::write(&config_path, config.render())
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let log = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let started = Instant::now();
        let child = tokio::process::Command::new(&ctx.bin)
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", ctx.bin.display()))?;
        let pid = child.id().ok_or("the daemon exited at once")?;
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            log,
            state_dir: config.state_dir.clone(),
            startup: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(600);
        loop {
            if daemon.log_text().contains(READY_LINE) {
                daemon.startup = started.elapsed();
                return Ok(daemon);
            }
            if let Some(child) = daemon.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "the daemon exited ({status}) before it was running:\n{}",
                    tail(&daemon.log_text(), 20)
                ));
            }
            if Instant::now() > deadline {
                return Err("the daemon did not start within 10 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> BenchResult<u64> {
        peak_rss_of(self.pid)
    }

    /// What the kernel counts for the daemon process so far.
    pub fn sample(&self) -> BenchResult<ProcSample> {
        ProcSample::read(self.pid)
    }

    /// Polls the daemon's status every `poll` until `done` files are in the ledger and no
    /// job is left in any state (queued, uploading, waiting to retry, failed).
    pub async fn wait_drained(&self, done: u64, poll: Duration) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let report = self.status().await?;
            let uploaded: u64 = report.folders.iter().map(|f| f.counts.done).sum();
            let left: u64 = report
                .folders
                .iter()
                .map(|f| {
                    let c = &f.counts;
                    c.queued + c.active + c.finalizing + c.retry_wait + c.failed
                })
                .sum();
            if uploaded >= done && left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after 30 minutes {uploaded} of {done} files are uploaded and {left} jobs are left"
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    pub async fn status(&self) -> BenchResult<StatusReport> {
        control::request::<StatusReport>(&self.state_dir, "GET", "/status", None)
            .await?
            .ok_or_else(|| "the daemon's control socket does not answer".to_string())
    }

    /// Polls the daemon's status every `poll` until `done` files are in the ledger; returns
    /// when that was first seen. Failed jobs end the wait with their reasons.
    pub async fn wait_done(
        &self,
        done: u64,
        poll: Duration,
        timeout: Duration,
    ) -> BenchResult<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.status().await?;
            let now = Instant::now();
            let uploaded: u64 = report.folders.iter().map(|f| f.counts.done).sum();
            if uploaded >= done {
                return Ok(now);
            }
            if !report.failed.is_empty() {
                let reasons: Vec<String> = report
                    .failed
                    .iter()
                    .take(3)
                    .map(|f| format!("{}: {}", f.path, f.reason))
                    .collect();
                return Err(format!(
                    "{} upload(s) failed: {}",
                    report.failed.len(),
                    reasons.join("; ")
                ));
            }
            if now > deadline {
                return Err(format!(
                    "only {uploaded} of {done} files uploaded after {}s\n{}",
                    timeout.as_secs(),
                    tail(&self.log_text(), 10)
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// SIGTERM, wait for the exit; returns the whole log.
    pub async fn terminate(mut self) -> BenchResult<String> {
        let mut child = self.child.take().expect("a daemon is terminated once");
        // SAFETY: kill(2) on our own child's pid, which we have not waited for yet.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .map_err(|_| "the daemon did not stop within 60 s of SIGTERM".to_string())?
            .map_err(|e| format!("waiting for the daemon: {e}"))?;
        let log = self.log_text();
        if !status.success() {
            return Err(format!(
                "the daemon exited with {status}:\n{}",
                tail(&log, 20)
            ));
        }
        Ok(log)
    }
}

/// What the kernel counts for a process: `/proc/PID/io` and `/proc/PID/stat`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// Bytes passed to write(2) and friends, to files, sockets and pipes alike (`wchar`).
    pub written: u64,
    /// Bytes the process sent towards storage (`write_bytes`).
    pub stored: u64,
    /// Resident set size (`VmRSS`), in bytes.
    pub rss: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Page faults served without reading storage (`minflt`): each one a trap into the
    /// kernel, which zeroes or maps the page; a cost that CPU time hides.
    pub minor_faults: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> BenchResult<ProcSample> {
        let at = Instant::now();
        let io = read_proc(pid, "io")?;
        let status = read_proc(pid, "status")?;
        let stat = ProcStat::read(pid)?;
        Ok(ProcSample {
            at,
            written: proc_field(&io, "wchar:", pid)?,
            stored: proc_field(&io, "write_bytes:", pid)?,
            rss: proc_field(&status, "VmRSS:", pid)? * 1024,
            cpu: stat.cpu,
            minor_faults: stat.minor_faults,
        })
    }
}

fn read_proc(pid: u32, file: &str) -> BenchResult<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| format!("read /proc/{pid}/{file}: {e}"))
}

/// How often each thread of a process went to sleep so far (`voluntary_ctxt_switches`):
/// each time, something woke it again. By thread id, with the thread's name.
pub struct ThreadSleeps(BTreeMap<u32, (String, u64)>);

impl ThreadSleeps {
    pub fn read(pid: u32) -> BenchResult<ThreadSleeps> {
        let dir = format!("/proc/{pid}/task");
        let tasks = std::fs::read_dir(&dir).map_err(|e| format!("list {dir}: {e}"))?;
        let mut threads = BTreeMap::new();
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A thread that ended since the listing is left out.
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let name = status
                .lines()
                .find_map(|line| line.strip_prefix("Name:"))
                .map_or_else(String::new, |name| name.trim().to_owned());
            let sleeps = proc_field(&status, "voluntary_ctxt_switches:", pid)?;
            threads.insert(tid, (name, sleeps));
        }
        Ok(ThreadSleeps(threads))
    }

    /// The wakeups between `self` and the later `end`, split by `is_theirs(thread name)`:
    /// (theirs, the rest). A thread that started in between counts whole; one that ended
    /// in between is not counted.
    pub fn wakeups_until(
        &self,
        end: &ThreadSleeps,
        is_theirs: impl Fn(&str) -> bool,
    ) -> (u64, u64) {
        let (mut theirs, mut rest) = (0, 0);
        for (tid, (name, sleeps)) in &end.0 {
            let before = self.0.get(tid).map_or(0, |(_, sleeps)| *sleeps);
            let woken = sleeps.saturating_sub(before);
            if is_theirs(name) {
                theirs += woken;
            } else {
                rest += woken;
            }
        }
        (theirs, rest)
    }
}

/// A process's peak resident set size so far (`VmHWM`), in bytes.
pub fn peak_rss_of(pid: u32) -> BenchResult<u64> {
    Ok(proc_field(&read_proc(pid, "status")?, "VmHWM:", pid)? * 1024)
}

/// The number after `label` on its line (`kB` units are left to the caller).
fn proc_field(text: &str, label: &str, pid: u32) -> BenchResult<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {label} figure for process {pid}"))
}

/// User plus system CPU time of a process so far (`/proc/PID/stat`, fields 14 and 15).
pub fn process_cpu(pid: u32) -> BenchResult<Duration> {
    Ok(ProcStat::read(pid)?.cpu)
}

/// The CPU time (user and system) of every child process of the benchmark that has ended
/// and been waited for: read before and after a child that runs alone, its own.
pub fn ended_children_cpu() -> BenchResult<Duration> {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()));
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The figures of `/proc/PID/stat` the benchmark reads.
struct ProcStat {
    /// User plus system CPU time (fields 14 and 15).
    cpu: Duration,
    /// Minor page faults (field 10).
    minor_faults: u64,
}

impl ProcStat {
    fn read(pid: u32) -> BenchResult<ProcStat> {
        let stat = read_proc(pid, "stat")?;
        // The command name (field 2) may hold spaces; the fields after it are plain numbers.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Field n of the whole line is the (n - 2)th after the name, counted from 1.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let (Some(minor_faults), Some(user), Some(system)) = (field(10), field(14), field(15))
        else {
            return Err(format!("unexpected /proc/{pid}/stat: {stat}"));
        };
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ProcStat {
            cpu: Duration::from_secs_f64((user + system) as f64 / per_second),
            minor_faults,
        })
    }
}

/// A figure the daemon logs when it closes the state database (`flushes`, `writes`).
pub fn closing_figure(log: &str, name: &str) -> Option<u64> {
    let label = format!("{name}=");
    log.lines()
        .rev()
        .find(|line| line.contains("state database closed"))
        .and_then(|line| {
            let line = strip_ansi(line);
            let at = line.find(&label)? + label.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// The text without terminal colour sequences (the daemon's log has them).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `size` random bytes (xorshift64*, seeded: different seeds, different bytes) and
/// gives the file an mtime a minute in the past, so the settle rule takes it at first sight.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> BenchResult<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let file =
        std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut remaining = size;
    while remaining > 0 {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = remaining.min(block.len() as u64) as usize;
        out.write_all(&block[..n])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        remaining -= n as u64;
    }
    let file = out
        .into_inner()
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    backdate(&file, path)
}

fn backdate(file: &std::fs::File, path: &Path) -> BenchResult<()> {
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .map_err(|e| format!("set mtime of {}: {e}", path.display()))
}

/// Gives each file new random bytes of the same length and an mtime 30 s in the past (a
/// new version, settled at first sight).
pub fn rewrite_files(paths: &[PathBuf], seed: u64) -> BenchResult<()> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for path in paths {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("stat {}: {e}", path.display()))?
            .len();
        let mut data = vec![0u8; len as usize];
        fill_random(&mut state, &mut data);
        let mut file =
            std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        file.write_all(&data)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(30))
            .map_err(|e| format!("set mtime of {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Fills `buf` with xorshift64* bytes, one per step, advancing `state`.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for byte in buf {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        *byte = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
    }
}

/// Many small files of random bytes under `dir`, `per_dir` to a sub-directory.
pub fn write_small_files(
    dir: &Path,
    count: u64,
    size: u64,
    per_dir: u64,
    seed: u64,
) -> BenchResult<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(count as usize);
    write_tree(dir, count, size, per_dir, seed, |path| paths.push(path))?;
    Ok(paths)
}

/// [`write_small_files`], handing each path to `written` instead of collecting them (a
/// million paths take a hundred megabytes).
pub fn write_tree(
    dir: &Path,
    count: u64,
    size: u64,
    per_dir: u64,
    seed: u64,
    mut written: impl FnMut(PathBuf),
) -> BenchResult<()> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = vec![0u8; size as usize];
    for i in 0..count {
        let sub = dir.join(format!("d{:03}", i / per_dir.max(1)));
        if i % per_dir.max(1) == 0 {
            std::fs::create_dir_all(&sub).map_err(|e| format!("create {}: {e}", sub.display()))?;
        }
        fill_random(&mut state, &mut data);
        let path = sub.join(format!("f{i:06}.bin"));
        let mut file =
            std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        file.write_all(&data)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        backdate(&file, &path)?;
        written(path);
    }
    Ok(())
}

/// Runs `curl` with `args` (plus `-sS -o /dev/null -w '%{http_code} '`) and returns its
/// wall time; every transfer must answer one of `ok_codes`.
pub async fn curl(args: &[String], ok_codes: &[u16]) -> BenchResult<Duration> {
    let started = Instant::now();
    let output = tokio::process::Command::new("curl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run curl (is it installed?): {e}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "curl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let codes = String::from_utf8_lossy(&output.stdout).into_owned();
    for code in codes.split_whitespace() {
        let code: u16 = code
            .parse()
            .map_err(|_| format!("curl printed {code:?} where an HTTP status was expected"))?;
        if !ok_codes.contains(&code) {
            return Err(format!(
                "curl got HTTP {code} (all codes: {})",
                codes.trim()
            ));
        }
    }
    Ok(elapsed)
}

/// The arguments of one curl transfer that streams `file` as the request body.
pub fn curl_upload(method: &str, url: &str, file: &Path, headers: &[String]) -> Vec<String> {
    let mut args = vec![
        "-sS".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} ".into(),
        "-X".into(),
        method.into(),
        "-T".into(),
        file.to_string_lossy().into_owned(),
        // Without this curl waits up to a second for a 100-continue on large bodies.
        "-H".into(),
        "Expect:".into(),
    ];
    for header in headers {
        args.push("-H".into());
        args.push(header.clone());
    }
    args.push(url.into());
    args
}

/// Polls until `path` exists with `size` bytes, every `poll`.
pub async fn wait_for_file(
    path: &Path,
    size: u64,
    poll: Duration,
    timeout: Duration,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not arrive within {}s",
                path.display(),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn rate(bytes: u64, took: Duration) -> f64 {
    mib(bytes) / took.as_secs_f64().max(1e-9)
}

/// CPU time per file, in microseconds.
pub fn micros_per_file(cpu: Duration, files: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / files as f64
}

/// The number after `name=` on the last log line containing `line`.
pub fn log_figure(log: &str, line: &str, name: &str) -> Option<u64> {
    let label = format!("{name}=");
    let text = log.lines().rev().find(|l| l.contains(line))?;
    // Colour sequences may sit between the name and its value.
    let after = &text[text.find(&label)? + label.len()..];
    let digits: String = after
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
