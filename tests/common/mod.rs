//! Test harness: the real `upsync` binary as a daemon and as an emulator process, temp
//! folders, config files, and polling helpers.

#![allow(dead_code)]

pub mod config;
pub mod pki;
pub mod proxy;

#[allow(unused_imports)]
pub use config::{ConfigBuilder, FolderBuilder};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_upsync");

/// An `upsync emulator` process on 127.0.0.1 with a free port.
pub struct EmulatorProcess {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl EmulatorProcess {
    pub fn start(data_dir: &Path, args: &[&str]) -> EmulatorProcess {
        Self::start_on(
            "127.0.0.1:0",
            data_dir,
            args.iter().map(|a| a.to_string()).collect(),
        )
    }

    fn start_on(listen: &str, data_dir: &Path, args: Vec<String>) -> EmulatorProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("emulator.log"))
            .expect("emulator log file opens");
        let mut child = Command::new(BIN)
            .args(["emulator", "--listen", listen, "--data"])
            .arg(data_dir)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("upsync emulator starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("emulator prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected emulator greeting: {line:?}"))
            .parse()
            .expect("emulator address parses");
        EmulatorProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            args,
        }
    }

    /// Stops the emulator and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        let again = Self::start_on(&self.addr.to_string(), &self.data_dir, self.args.clone());
        *self = again;
    }

    /// Stops the emulator process; clients get "connection refused" until [`Self::start_again`].
    pub fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Starts the emulator again on the same port and data, with `args` instead of the
    /// original ones when given.
    pub fn start_again(&mut self, args: Option<&[&str]>) {
        self.stop();
        let args = match args {
            Some(args) => args.iter().map(|a| a.to_string()).collect(),
            None => self.args.clone(),
        };
        let again = Self::start_on(&self.addr.to_string(), &self.data_dir, args);
        *self = again;
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) {
        let url = format!("http://{}{path}", self.addr);
        send_ok("POST", reqwest::Client::new().post(&url).json(body));
    }

    pub fn kifs_url(&self) -> String {
        format!("http://{}/kifs", self.addr)
    }

    pub fn redivis_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// Where the emulator keeps the content of a KiFS file.
    pub fn kifs_file(&self, name: &str) -> PathBuf {
        upsync::emulator::kifs::stored_file_path(&self.data_dir.join("kifs"), name)
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.addr);
        blocking_get_json(&url)
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One test's temp dir: its watched folders, an emulator keeping its data in `remote/`,
/// and the path of its config file (`upsync.toml`, for the test to write).
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub folders: Vec<PathBuf>,
    pub emulator: EmulatorProcess,
    pub config: PathBuf,
}

impl Site {
    /// Creates the folders `folders` in a fresh temp dir and starts an emulator with
    /// `emulator_args`.
    pub fn start(folders: &[&str], emulator_args: &[&str]) -> Site {
        let tmp = tempfile::tempdir().expect("a temp dir can be created");
        let folders = folders
            .iter()
            .map(|name| {
                let path = tmp.path().join(name);
                std::fs::create_dir_all(&path).expect("the folder can be created");
                path
            })
            .collect();
        let emulator = EmulatorProcess::start(&tmp.path().join("remote"), emulator_args);
        let config = tmp.path().join("upsync.toml");
        Site {
            tmp,
            folders,
            emulator,
            config,
        }
    }
    /// The first folder: the one watched folder of most tests.
    pub fn folder(&self) -> &Path {
        &self.folders[0]
    }
}

/// The config of a site with one folder `folder` (its first), two workers, mirrored to the
/// KiFS directory `ingest` when `kifs`, else to the Redivis `table` with the token read from
/// `token_env`.
pub fn one_folder_config(site: &Site, kifs: bool, table: &str, token_env: &str) -> ConfigBuilder {
    let folder = site.folders[0]
        .file_name()
        .and_then(|name| name.to_str())
        .expect("the folder has a UTF-8 name");
    let base = ConfigBuilder::new().top("concurrency = 2");
    if kifs {
        base.kifs(&site.emulator.kifs_url())
            .folder(FolderBuilder::kifs(folder, "ingest"))
    } else {
        base.redivis(&site.emulator.redivis_url(), token_env)
            .folder(FolderBuilder::redivis(folder, table))
    }
}

/// Runs `future` to completion on a runtime of its own (the tests themselves are sync).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds")
        .block_on(future)
}

/// Sends `request` and checks that it succeeded.
fn send_ok(method: &str, request: reqwest::RequestBuilder) {
    block_on(async {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let url = response.url().to_string();
        assert!(
            response.status().is_success(),
            "{method} {url}: {}",
            response.status()
        );
    });
}

fn blocking_get_json(url: &str) -> serde_json::Value {
    let text = get_text(url);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// Redivis uploads grouped by their `name`, so a name listed twice shows as two entries.
pub fn uploads_by_name(
    uploads: &[serde_json::Value],
) -> std::collections::BTreeMap<String, Vec<&serde_json::Value>> {
    let mut by_name: std::collections::BTreeMap<String, Vec<&serde_json::Value>> =
        std::collections::BTreeMap::new();
    for upload in uploads {
        by_name
            .entry(upload["name"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(upload);
    }
    by_name
}

/// A running `upsync run` process; its stderr goes to `log`.
pub struct DaemonProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn start(config: &Path) -> DaemonProcess {
        Self::start_with(config, |_| {})
    }

    /// Like [`Self::start`], with `customize` applied to the command (extra arguments,
    /// environment, another user).
    pub fn start_with(config: &Path, customize: impl FnOnce(&mut Command)) -> DaemonProcess {
        let log = config.with_extension("daemon.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log opens");
        let mut command = Command::new(BIN);
        command
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info,upsync=debug")
            .stdout(Stdio::null())
            .stderr(file);
        customize(&mut command);
        let child = command.spawn().expect("upsync run starts");
        DaemonProcess {
            child: Some(child),
            log,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                return status.code();
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("daemon did not stop within 40 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon was started").id()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the running daemon.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the daemon was started");
        // SAFETY: kill(2) with the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (None when
    /// killed by a signal), or panics when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited() {
                self.child = None;
                return code;
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon still running {timeout:?} later:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exited (and its code).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .expect("wait works")
            .map(|status| status.code())
    }

    /// Like [`wait_until`], but a timeout shows the end of the daemon's log.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if Instant::now() > deadline {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `size` pseudo-random bytes derived from `seed` (different files, different bytes).
pub fn write_file(path: &Path, size: u64, seed: u64) {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut remaining = size;
    let mut block = vec![0u8; 1 << 16];
    while remaining > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = remaining.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        remaining -= n as u64;
    }
    file.flush().unwrap();
}

/// Whether two files have the same bytes (streamed, so large files are fine).
pub fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ra, mut rb) = (BufReader::new(fa), BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut ra, &mut ba);
        let nb = read_full(&mut rb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]).unwrap() {
                0 => break,
                n => filled += n,
            }
        }
        filled
    }
}

/// The MD5 of `bytes`, lowercase hex, as the Redivis API reports an upload's `hash`.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// The MD5 of a file's bytes (streamed), lowercase hex; `None` when it cannot be read.
pub fn file_md5_hex(path: &Path) -> Option<String> {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// `upsync status -c CONFIG --json`, parsed; panics when the command fails.
pub fn status_json(config: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = upsync(&["status", "-c", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "status failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {stdout}"))
}

/// The job states of `status --json` that still have work to do: a job in any of them may
/// yet send a request.
pub const PENDING: [&str; 5] = ["queued", "active", "finalizing", "importing", "retry_wait"];

/// The sum of the per-folder count `field` (`done`, `failed`, one of [`PENDING`]) over every
/// folder of a `status --json` report.
pub fn folders_total(status: &serde_json::Value, field: &str) -> u64 {
    status["folders"]
        .as_array()
        .map(|folders| folders.iter().map(|f| f[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// Whether a `status --json` report shows the daemon settled with `done` files recorded as
/// uploaded: no job pending in any folder and no upload in flight.
pub fn settled(status: &serde_json::Value, done: u64) -> bool {
    PENDING
        .iter()
        .all(|state| folders_total(status, state) == 0)
        && status["in_flight"].as_array().is_some_and(Vec::is_empty)
        && folders_total(status, "done") == done
}

impl DaemonProcess {
    /// Waits until the daemon behind `config` is [`settled`] with `done` files uploaded.
    ///
    /// This is the moment to assert that something was *not* sent: every file the daemon
    /// has offered is then either uploaded (and counted by the remote) or failed, and a
    /// second upload of a file it has recorded needs a new job, which would show as pending
    /// (or as a `done` count off by one) here.
    pub fn wait_settled(&self, config: &Path, done: u64) {
        self.wait_until(
            Duration::from_secs(60),
            &format!("{done} files done and nothing pending"),
            || settled(&status_json(config), done),
        );
    }
}

/// Runs `upsync ARGS`, returning (exit code, stdout, stderr).
pub fn upsync(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).args(args).output().expect("upsync runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Backdates a file's mtime so the settle rule sees it as finished at once.
pub fn backdate(path: &Path, seconds: u64) {
    let time = std::time::SystemTime::now() - Duration::from_secs(seconds);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(time).unwrap();
}

/// A number the Redivis API may send as an integer or as a string.
pub fn json_number(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

impl EmulatorProcess {
    /// Every upload in a Redivis table (all pages), as the API lists them; `[]` for a table
    /// that does not exist yet. The emulator's injected faults hit these requests too, so
    /// failed ones are retried.
    pub fn list_redivis_uploads(&self, table: &str, token: &str) -> Vec<serde_json::Value> {
        self.list_redivis(table, token, "uploads")
    }

    /// Every file of a Redivis file index table (all pages), like
    /// [`Self::list_redivis_uploads`].
    pub fn list_redivis_files(&self, table: &str, token: &str) -> Vec<serde_json::Value> {
        self.list_redivis(table, token, "rawFiles")
    }

    /// Creates a Redivis table in the emulator, a file index table when `is_file_index`.
    pub fn create_redivis_table(&self, table: &str, is_file_index: bool) {
        self.post_json(
            "/_emulator/redivis/tables",
            &serde_json::json!({"reference": table, "isFileIndex": is_file_index}),
        );
    }

    fn list_redivis(&self, table: &str, token: &str, collection: &str) -> Vec<serde_json::Value> {
        block_on(async {
            let client = reqwest::Client::new();
            let table =
                percent_encoding::utf8_percent_encode(table, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let mut all = Vec::new();
            let mut page_token: Option<String> = None;
            loop {
                let mut url = format!(
                    "{}/tables/{table}/{collection}?maxResults=100",
                    self.redivis_url()
                );
                if let Some(t) = &page_token {
                    url.push_str(&format!("&pageToken={t}"));
                }
                let mut attempts = 0;
                let page: serde_json::Value = loop {
                    attempts += 1;
                    assert!(attempts < 500, "listing uploads keeps failing");
                    let Ok(response) = client.get(&url).bearer_auth(token).send().await else {
                        continue;
                    };
                    match response.status().as_u16() {
                        200 => match response.json().await {
                            Ok(page) => break page,
                            Err(_) => continue,
                        },
                        404 => return all,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                all.extend(page["results"].as_array().cloned().unwrap_or_default());
                match page["nextPageToken"].as_str() {
                    Some(next) if !next.is_empty() => page_token = Some(next.to_string()),
                    _ => return all,
                }
            }
        })
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET url`, as text; panics when the request fails.
pub fn get_text(url: &str) -> String {
    block_on(async {
        reqwest::get(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    })
}

/// The value of the first sample line of `metric` whose labels contain every `labels` part.
pub fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .find(|l| labels.iter().all(|part| l.contains(part)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl EmulatorProcess {
    /// Whether KiFS holds the file `name` (full KiFS name) with the bytes of `local`.
    pub fn kifs_holds(&self, local: &Path, name: &str) -> bool {
        same_content(local, &self.kifs_file(name))
    }

    /// Deletes the KiFS directory `name` with what it holds, as someone on the server would.
    pub fn delete_kifs_directory(&self, name: &str) {
        let request = serde_json::json!({
            "directory_name": name,
            "options": {"recursive": "true"},
        });
        self.post_json("/kifs/delete/directory", &request);
    }

    /// Creates the KiFS directory `name`, as someone on the server would.
    pub fn create_kifs_directory(&self, name: &str) {
        let request = serde_json::json!({"directory_name": name, "options": {}});
        self.post_json("/kifs/create/directory", &request);
    }

    /// The KiFS emulator's counters: requests by endpoint, multipart operations, files
    /// stored.
    pub fn kifs_stats(&self) -> serde_json::Value {
        self.get_json("/kifs/_emulator/stats")
    }

    /// How many `/upload/files` requests KiFS received (several small files can share one).
    pub fn kifs_upload_requests(&self) -> u64 {
        self.kifs_stats()["requests"]["/upload/files"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The names of a Redivis table's uploads, one entry per upload, sorted.
    pub fn redivis_upload_names(&self, table: &str, token: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .list_redivis_uploads(table, token)
            .iter()
            .map(|u| u["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    }

    /// `DELETE {path}` on the emulator (e.g. `/_emulator/faults` clears the fault script).
    pub fn delete(&self, path: &str) {
        let url = format!("http://{}{path}", self.addr);
        send_ok("DELETE", reqwest::Client::new().delete(&url));
    }
}

/// How many inotify watches process `pid` holds on the directory `dir`, from the kernel's
/// own list (`/proc/PID/fdinfo` of its inotify descriptors): whether file events of `dir`
/// can reach the process at all.
pub fn inotify_watches_on(pid: u32, dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(dir).map(|m| m.ino()) else {
        return 0;
    };
    let wanted = format!("ino:{inode:x} ");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target == Path::new("anon_inode:inotify"))
        })
        .filter_map(|fd| {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
        })
        .map(|info| {
            info.lines()
                .filter(|line| line.starts_with("inotify wd:") && line.contains(&wanted))
                .count()
        })
        .sum()
}

/// A Redivis API client of the emulator at `base` (`http://host:port`), with the default
/// pacing and network settings.
pub fn redivis_api_client(
    base: &str,
    token: &str,
    retry: upsync::upload::retry::RetryPolicy,
) -> upsync::upload::redivis::api::ApiClient {
    use upsync::upload::redivis::ratelimit::{Pacer, PacerConfig};
    let http = upsync::net::HttpClient::build(
        "redivis",
        &upsync::config::NetConfig::default(),
        upsync::net::Bandwidth::unlimited(),
        |builder| builder,
    )
    .expect("the HTTP client builds");
    upsync::upload::redivis::api::ApiClient::new(
        http,
        &format!("{base}/api/v1"),
        upsync::config::Secret::new(token),
        Pacer::new(PacerConfig::default()),
        retry,
        std::sync::Arc::new(upsync::upload::health::RemoteHealth::new("redivis", base)),
    )
    .expect("the API URL is valid")
}

/// Whether `program` runs (`program --version` succeeds). When it does not, the calling test
/// says it skipped, unless `UPSYNC_REQUIRE_TOOLS` is set (`.ci/run` sets it once it has
/// installed the tools): there a missing tool is a failure, not a skip.
pub fn tool_available(program: &str, debian_package: &str) -> bool {
    let runs = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !runs {
        assert!(
            std::env::var_os("UPSYNC_REQUIRE_TOOLS").is_none(),
            "{program} is required (UPSYNC_REQUIRE_TOOLS is set) but cannot run"
        );
        eprintln!("skipped: {program} is not installed (apt-get install {debian_package})");
    }
    runs
}
