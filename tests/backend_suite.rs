//! The scenarios every backend must pass, written once and run against both: each scenario
//! is a function taking a [`Backend`], and `suite!` makes one `#[test]` per scenario per
//! backend (`kifs::small_file`, `redivis::small_file`, ...).
//!
//! Every test runs the real `upsync` daemon against a real emulator process over loopback
//! HTTP, with real files in a temp dir, and judges by the emulator's state and counters:
//! the bytes stored under the file's name (size and MD5, or the bytes themselves), how many
//! uploads were finalized, how many transfers were started, never by log wording.
//!
//! What a backend maps to the shared vocabulary:
//!
//! | word | KiFS | Redivis |
//! | --- | --- | --- |
//! | chunk | a multipart part (60 MiB) | a resumable-upload chunk (`chunk_size = "2MiB"`) |
//! | transfer started | multipart `init` | a resumable upload opened |
//! | chunk acknowledged | `upload_part` answered | a session PUT |
//! | finalize | multipart `complete` (or the one whole-file request) | upload.post |
//! | finalized count | files stored | uploads created |
//!
//! Checkpoints a crash (kill -9) is tried at: while chunks go out (the restart resumes the
//! same transfer), after the last chunk took effect but before its answer, while the answer
//! to the finalize call is held back (KiFS: the reconcile of a `finalizing` job finds the
//! completed file; Redivis: the upload is found in the table's list), and while the one
//! request of a small file is answered (KiFS: the unconfirmed claim's `/show/files` look;
//! Redivis: the inline upload.post).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use upsync::emulator::redivis::store::{Transfer, TransferState, read_json};

const KIFS_PART: u64 = 62_914_560;
const REDIVIS_CHUNK: u64 = 2 << 20;
const TABLE: &str = "test.dataset:next.files";
const REDIVIS_TOKEN: &str = "suite-redivis-token-5d1e";
const KIFS_TOKEN: &str = "suite-kifs-token-a93b";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Kifs,
    Redivis,
}

/// How a world slows the transfer of large files, so a test can act while one is going out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Full,
    Slow,
}

/// A fault of the emulator aimed at one moment of an upload.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Hold back the answer to each chunk that took effect (KiFS: every part; Redivis: the
    /// final chunk of a session).
    HoldChunkAnswers(u64),
    /// Hold back the answer to the finalize call after it took effect.
    HoldFinalize(u64),
    /// Apply the first finalize call, then close its connection without an answer.
    LoseFinalize,
    /// Hold back the answer to a small file's one request after it took effect.
    HoldSingleRequest(u64),
}

impl Backend {
    fn chunk(self) -> u64 {
        match self {
            Backend::Kifs => KIFS_PART,
            Backend::Redivis => REDIVIS_CHUNK,
        }
    }

    /// A file of several chunks, as large as the scenarios of large files ask.
    fn large(self) -> u64 {
        match self {
            Backend::Kifs => 200 << 20,
            Backend::Redivis => 100 << 20,
        }
    }

    /// A file that takes a few seconds to send in a [`Pace::Slow`] world: three parts (the
    /// emulator waits a second before each), or eight chunks at 4 MiB/s.
    fn slow_file(self) -> u64 {
        match self {
            Backend::Kifs => 2 * KIFS_PART + 1,
            Backend::Redivis => 8 * REDIVIS_CHUNK + 1,
        }
    }

    fn emulator_args(self, pace: Pace, hook: Option<Hook>) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Backend::Kifs => vec![],
            Backend::Redivis => vec!["--redivis-token".into(), REDIVIS_TOKEN.into()],
        };
        if self == Backend::Kifs && pace == Pace::Slow {
            args.extend(["--kifs-part-delay".into(), "1000".into()]);
        }
        let hook = hook.map(|hook| match (self, hook) {
            (Backend::Kifs, Hook::HoldChunkAnswers(ms)) => {
                ["--kifs-answer-delay".into(), format!("upload_part={ms}")]
            }
            (Backend::Kifs, Hook::HoldFinalize(ms)) => {
                ["--kifs-answer-delay".into(), format!("complete={ms}")]
            }
            (Backend::Kifs, Hook::LoseFinalize) => {
                ["--kifs-lose-answer".into(), "complete=1".into()]
            }
            (Backend::Kifs, Hook::HoldSingleRequest(ms)) => {
                ["--kifs-answer-delay".into(), format!("none={ms}")]
            }
            (Backend::Redivis, Hook::HoldChunkAnswers(ms)) => {
                ["--redivis-final-chunk-delay".into(), ms.to_string()]
            }
            (Backend::Redivis, Hook::HoldFinalize(ms) | Hook::HoldSingleRequest(ms)) => {
                ["--redivis-post-delay".into(), ms.to_string()]
            }
            (Backend::Redivis, Hook::LoseFinalize) => ["--redivis-lose-post".into(), "1".into()],
        });
        args.extend(hook.into_iter().flatten());
        args
    }

    /// The daemon's config: three workers, one folder `inbox` feeding the backend, the
    /// token read from `secret.token`.
    fn config(self, emulator: &EmulatorProcess, pace: Pace) -> ConfigBuilder {
        let config = ConfigBuilder::new().top("concurrency = 3\nretry_max_delay = \"8s\"");
        match self {
            Backend::Kifs => config
                .kifs(&emulator.kifs_url())
                .kifs_with("token_file = \"secret.token\"")
                .folder(FolderBuilder::kifs("inbox", "ingest")),
            Backend::Redivis => {
                let config = match pace {
                    Pace::Slow => config.top("bandwidth_limit = \"4MiB/s\""),
                    Pace::Full => config,
                };
                config
                    .redivis_with_token_file(&emulator.redivis_url(), "secret.token")
                    .redivis_with("chunk_size = \"2MiB\"")
                    .folder(FolderBuilder::redivis("inbox", TABLE))
            }
        }
    }

    fn secret(self) -> &'static str {
        match self {
            Backend::Kifs => KIFS_TOKEN,
            Backend::Redivis => REDIVIS_TOKEN,
        }
    }
}

/// One emulator process, one watched folder feeding it, and the daemon's config.
struct World {
    backend: Backend,
    _tmp: tempfile::TempDir,
    inbox: PathBuf,
    config: PathBuf,
    emulator: EmulatorProcess,
}

impl World {
    fn new(backend: Backend, pace: Pace, hook: Option<Hook>) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let inbox = tmp.path().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        let args = backend.emulator_args(pace, hook);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let emulator = EmulatorProcess::start(&tmp.path().join("remote"), &args);
        let config = tmp.path().join("upsync.toml");
        backend.config(&emulator, pace).write(&config);
        std::fs::write(tmp.path().join("secret.token"), backend.secret()).unwrap();
        World {
            backend,
            _tmp: tmp,
            inbox,
            config,
            emulator,
        }
    }

    fn daemon(&self) -> DaemonProcess {
        DaemonProcess::start(&self.config)
    }

    /// Writes `size` bytes (derived from `seed`) at `name` in the inbox, old enough to be
    /// settled at once.
    fn write(&self, name: &str, size: u64, seed: u64) -> PathBuf {
        let path = self.inbox.join(name);
        write_file(&path, size, seed);
        backdate(&path, 60);
        path
    }

    fn kifs_stats(&self) -> serde_json::Value {
        self.emulator.get_json("/kifs/_emulator/stats")
    }

    fn redivis_stats(&self) -> serde_json::Value {
        self.emulator.get_json("/_emulator/redivis/stats")
    }

    fn counter(&self, kifs: &[&str], redivis: &[&str]) -> u64 {
        let (mut value, path) = match self.backend {
            Backend::Kifs => (self.kifs_stats(), kifs),
            Backend::Redivis => (self.redivis_stats(), redivis),
        };
        for key in path {
            value = value[key].take();
        }
        json_number(&value).unwrap_or(0)
    }

    /// Uploads finalized so far: files KiFS stored, uploads Redivis created.
    fn finalized(&self) -> u64 {
        self.counter(&["files_stored"], &["uploads_created"])
    }

    /// Chunked transfers started: KiFS multipart `init`s, Redivis resumable uploads.
    fn transfers_started(&self) -> u64 {
        self.counter(
            &["multipart_operations", "init"],
            &["api_requests", "resumableUpload"],
        )
    }

    /// Chunks that reached the emulator: KiFS parts, Redivis session PUTs.
    fn chunks_received(&self) -> u64 {
        self.counter(&["multipart_operations", "upload_part"], &["session_puts"])
    }

    /// Whether the last of `chunks` chunks of a `size`-byte file took effect, its answer
    /// now held back ([`Hook::HoldChunkAnswers`]): KiFS delays every part's answer once the
    /// part is stored; a Redivis session is recorded complete before its final answer.
    fn all_bytes_taken(&self, chunks: u64, size: u64) -> bool {
        match self.backend {
            Backend::Kifs => {
                json_number(&self.kifs_stats()["answers_delayed"]).unwrap_or(0) >= chunks
            }
            Backend::Redivis => redivis_transfers(&self.emulator)
                .iter()
                .any(|t| t.state == TransferState::Complete && t.total == Some(size)),
        }
    }

    fn answers_lost(&self) -> u64 {
        self.counter(&["answers_lost"], &["answers_lost"])
    }

    /// Whether the remote holds exactly the bytes of `local` under `name`, once.
    fn holds(&self, name: &str, local: &Path) -> Result<(), String> {
        match self.backend {
            Backend::Kifs => {
                let stored = self.emulator.kifs_file(&format!("ingest/{name}"));
                if same_content(local, &stored) {
                    Ok(())
                } else {
                    Err(format!("{name}: KiFS does not hold the local bytes"))
                }
            }
            Backend::Redivis => {
                let uploads = self.emulator.list_redivis_uploads(TABLE, REDIVIS_TOKEN);
                let by_name = uploads_by_name(&uploads);
                let found = by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
                let [upload] = found else {
                    return Err(format!("{name}: {} uploads", found.len()));
                };
                let size = std::fs::metadata(local).unwrap().len();
                let hash = upload["hash"].as_str().unwrap_or("").to_lowercase();
                if upload["status"] != "completed" {
                    Err(format!("{name}: status {}", upload["status"]))
                } else if json_number(&upload["size"]) != Some(size) {
                    Err(format!("{name}: size {} != {size}", upload["size"]))
                } else if Some(hash.as_str()) != file_md5_hex(local).as_deref() {
                    Err(format!("{name}: hash {hash} differs from the local MD5"))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether the remote holds anything under `name`.
    fn holds_any(&self, name: &str) -> bool {
        match self.backend {
            Backend::Kifs => self.emulator.kifs_file(&format!("ingest/{name}")).exists(),
            Backend::Redivis => {
                uploads_by_name(&self.emulator.list_redivis_uploads(TABLE, REDIVIS_TOKEN))
                    .contains_key(name)
            }
        }
    }

    fn wait_held(&self, daemon: &DaemonProcess, name: &str, local: &Path, timeout: Duration) {
        daemon.wait_until(timeout, &format!("{name} on the remote"), || {
            self.holds(name, local).is_ok()
        });
    }

    fn folder(&self) -> serde_json::Value {
        status_json(&self.config)["folders"][0].clone()
    }

    /// Waits until the folder's remote takes files, shown by `name` (written now) arriving.
    fn wait_ready(&self, daemon: &DaemonProcess) {
        let path = self.write("ready.txt", 100, 999);
        self.wait_held(daemon, "ready.txt", &path, Duration::from_secs(30));
    }

    /// Waits until the ledger records `done` files and nothing is pending, none failed.
    fn wait_settled(&self, daemon: &DaemonProcess, done: u64) {
        daemon.wait_settled(&self.config, done);
        assert_eq!(self.folder()["failed"], 0, "{}", self.folder());
    }

    /// Stops the daemon with SIGTERM and checks it exited cleanly without leaking the secret.
    fn stop(&self, mut daemon: DaemonProcess) {
        assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
        let log = daemon.log_text();
        assert!(
            !log.contains(self.backend.secret()),
            "the token leaked into the log"
        );
    }
}

/// One file of `size` bytes goes up: it arrives whole, once, recorded in the ledger.
fn one_file_arrives(backend: Backend, name: &str, size: u64) {
    let w = World::new(backend, Pace::Full, None);
    let local = w.write(name, size, size ^ 7);
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(240));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1, "one upload finalized");
    w.stop(daemon);
}

fn small_file(backend: Backend) {
    one_file_arrives(backend, "small.csv", 1024);
}

fn empty_file(backend: Backend) {
    one_file_arrives(backend, "empty.csv", 0);
}

fn exactly_one_chunk(backend: Backend) {
    one_file_arrives(backend, "one-chunk.bin", backend.chunk());
}

fn one_chunk_and_a_byte(backend: Backend) {
    one_file_arrives(backend, "one-chunk-and-a-byte.bin", backend.chunk() + 1);
}

fn large_multi_chunk_file(backend: Backend) {
    let w = World::new(backend, Pace::Full, None);
    let name = "nested/dir/large.bin";
    let local = w.write(name, backend.large(), 11);
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(300));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1);
    assert_eq!(w.transfers_started(), 1, "one transfer, never restarted");
    assert_eq!(
        w.chunks_received(),
        backend.large().div_ceil(backend.chunk()),
        "each chunk sent once"
    );
    w.stop(daemon);
}

/// kill -9 while chunks go out: the restart resumes the same transfer, and the file
/// arrives whole, finalized once.
fn crash_while_chunks_go_out(backend: Backend) {
    let w = World::new(backend, Pace::Slow, None);
    let name = "resumed.bin";
    let local = w.write(name, backend.slow_file(), 42);
    let mut daemon = w.daemon();
    daemon.wait_until(Duration::from_secs(60), "a chunk acknowledged", || {
        w.chunks_received() >= 2
    });
    daemon.kill9();
    assert_eq!(w.finalized(), 0, "finalized before the kill");
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(120));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1);
    assert_eq!(
        w.transfers_started(),
        1,
        "the restart resumed the same transfer"
    );
    w.stop(daemon);
}

/// kill -9 after the last chunk took effect, before its answer: the restart finalizes the
/// transfer once, without sending the bytes again.
fn crash_after_the_last_chunk_before_its_answer(backend: Backend) {
    let w = World::new(backend, Pace::Full, Some(Hook::HoldChunkAnswers(4000)));
    let name = "last-chunk.bin";
    let local = w.write(name, backend.chunk() + 12_345, 77);
    let chunks = (backend.chunk() + 12_345).div_ceil(backend.chunk());
    let mut daemon = w.daemon();
    daemon.wait_until(Duration::from_secs(60), "the last chunk to arrive", || {
        w.chunks_received() >= chunks
    });
    daemon.wait_until(
        Duration::from_secs(60),
        "the last chunk to take effect",
        || w.all_bytes_taken(chunks, backend.chunk() + 12_345),
    );
    // A job is marked `finalizing` before its finalize call: still `active` means the
    // daemon has not got that far, so the kill falls between the chunk and the finalize.
    let folder = w.folder();
    assert!(
        folder["active"] == 1 && folder["finalizing"] == 0,
        "the job moved on before the kill: {folder}"
    );
    assert_eq!(w.finalized(), 0, "finalized before the kill");
    assert!(
        !w.holds_any(name),
        "the file exists before its finalize call"
    );
    daemon.kill9();
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(60));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1, "finalized once");
    assert_eq!(w.transfers_started(), 1, "the same transfer was finalized");
    w.stop(daemon);
}

/// kill -9 while the answer to the finalize call is held back: the upload took effect, and
/// the restart finds it instead of finalizing (or sending) again.
fn crash_while_the_finalize_answer_is_held(backend: Backend) {
    let w = World::new(backend, Pace::Full, Some(Hook::HoldFinalize(5000)));
    let daemon = kill_once_finalized_then_restart(&w, "finalized.bin", backend.chunk() + 1);
    assert_eq!(w.transfers_started(), 1, "the bytes were sent again");
    w.stop(daemon);
}

/// Uploads `size` bytes as `name`, kill -9s the daemon as soon as the emulator finalized
/// the upload (its answer held back), restarts it, and waits until the file is recorded,
/// finalized once.
fn kill_once_finalized_then_restart(w: &World, name: &str, size: u64) -> DaemonProcess {
    let local = w.write(name, size, size ^ 78);
    let mut daemon = w.daemon();
    daemon.wait_until(Duration::from_secs(60), "the finalize call to land", || {
        w.finalized() >= 1
    });
    daemon.kill9();
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(60));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1, "finalized twice");
    daemon
}

/// kill -9 while the one request of a small file is answered: it took effect, and the
/// restart does not store it again.
fn crash_while_a_small_file_is_answered(backend: Backend) {
    let w = World::new(backend, Pace::Full, Some(Hook::HoldSingleRequest(5000)));
    let daemon = kill_once_finalized_then_restart(&w, "single.csv", 4096);
    w.stop(daemon);
}

/// The answer to the finalize call is lost (the call took effect): the daemon, still
/// running, reconciles and records the upload, finalizing nothing twice.
fn lost_finalize_answer(backend: Backend) {
    let w = World::new(backend, Pace::Full, Some(Hook::LoseFinalize));
    let name = "lost-answer.bin";
    let local = w.write(name, backend.chunk() + 1, 80);
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(60));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.answers_lost(), 1, "the hook struck");
    assert_eq!(w.finalized(), 1, "finalized twice");
    assert_eq!(w.transfers_started(), 1, "the bytes were sent again");
    w.stop(daemon);
}

/// The file is rewritten while its chunks go out: only the new content is finalized.
fn file_changed_during_upload(backend: Backend) {
    let w = World::new(backend, Pace::Slow, None);
    let name = "changing.bin";
    let local = w.write(name, backend.slow_file(), 81);
    let daemon = w.daemon();
    daemon.wait_until(Duration::from_secs(60), "a chunk acknowledged", || {
        w.chunks_received() >= 1
    });
    write_file(&local, 5000, 82);
    w.wait_held(&daemon, name, &local, Duration::from_secs(120));
    w.wait_settled(&daemon, 1);
    assert_eq!(w.finalized(), 1, "the old content was finalized too");
    w.stop(daemon);
}

/// The file is deleted while its chunks go out: nothing is finalized, the job ends (its KiFS
/// upload cancelled), and the next file goes through.
fn file_vanished_during_upload(backend: Backend) {
    let w = World::new(backend, Pace::Slow, None);
    let name = "vanishing.bin";
    let local = w.write(name, backend.slow_file(), 83);
    let daemon = w.daemon();
    daemon.wait_until(Duration::from_secs(60), "a chunk acknowledged", || {
        w.chunks_received() >= 1
    });
    std::fs::remove_file(&local).unwrap();
    let next = w.write("next.csv", 300, 84);
    w.wait_held(&daemon, "next.csv", &next, Duration::from_secs(60));
    w.wait_settled(&daemon, 1);
    assert!(!w.holds_any(name), "the vanished file was finalized");
    assert_eq!(w.finalized(), 1, "only next.csv");
    if w.backend == Backend::Kifs {
        // The multipart upload is cancelled, not left on the server with its parts (a
        // Redivis session has no cancel: it expires).
        assert_eq!(w.kifs_stats()["multipart_operations"]["cancel"], 1);
        let multipart = w.emulator.data_dir.join("kifs").join("multipart");
        assert_eq!(std::fs::read_dir(multipart).unwrap().count(), 0);
    }
    w.stop(daemon);
}

/// SIGTERM while an upload waits out a Retry-After of 20 s: the daemon exits at once (not
/// after the pause), and the restart delivers the file once, when the pause is over.
fn shutdown_during_a_retry_pause(backend: Backend) {
    let w = World::new(backend, Pace::Full, None);
    let mut daemon = w.daemon();
    w.wait_ready(&daemon);
    let target = match backend {
        Backend::Kifs => "kifs",
        Backend::Redivis => "redivis-api",
    };
    let pause =
        serde_json::json!({"target": target, "action": {"status": 503, "retry_after": "20"}});
    w.emulator.post_json(
        "/_emulator/faults",
        &serde_json::json!([pause, pause, pause]),
    );
    let name = "paused.csv";
    let local = w.write(name, 2048, 85);
    daemon.wait_until(Duration::from_secs(30), "the upload to pause", || {
        let faults = &w.emulator.get_json("/_emulator/stats")["faults"];
        let status = status_json(&w.config);
        json_number(&faults["status_503"]).unwrap_or(0) >= 1
            && (status["folders"][0]["retry_wait"] == 1
                || status["in_flight"][0]["retrying"].is_object())
    });
    let asked = Instant::now();
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the stop waited out the pause: {:?}",
        asked.elapsed()
    );
    assert!(!w.holds_any(name), "uploaded during the pause");
    w.emulator.delete("/_emulator/faults");
    let daemon = w.daemon();
    w.wait_held(&daemon, name, &local, Duration::from_secs(60));
    w.wait_settled(&daemon, 2);
    assert_eq!(w.finalized(), 2, "ready.txt and paused.csv, once each");
    w.stop(daemon);
}

/// The remote refuses connections for a while, then comes back: the file waits and
/// arrives once, without a restart of the daemon.
fn remote_down_and_back(backend: Backend) {
    let mut w = World::new(backend, Pace::Full, None);
    let daemon = w.daemon();
    w.wait_ready(&daemon);
    w.emulator.stop();
    let name = "after-outage.csv";
    let local = w.write(name, 3000, 86);
    daemon.wait_until(Duration::from_secs(60), "the upload to fail", || {
        let status = status_json(&w.config);
        status["folders"][0]["retry_wait"] == 1
            || status["remotes"]
                .as_array()
                .is_some_and(|remotes| remotes.iter().any(|r| r["state"] == "down"))
    });
    w.emulator.start_again(None);
    w.wait_held(&daemon, name, &local, Duration::from_secs(60));
    w.wait_settled(&daemon, 2);
    // The emulator's counters started again with it.
    assert_eq!(w.finalized(), 1, "finalized once after the outage");
    w.stop(daemon);
}

/// The Redivis emulator's transfer records (`sessions/<id>.json`); a record being
/// replaced at this moment is skipped.
fn redivis_transfers(emulator: &EmulatorProcess) -> Vec<Transfer> {
    let sessions = emulator.data_dir.join("redivis").join("sessions");
    let Ok(entries) = std::fs::read_dir(sessions) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter_map(|path| read_json(&path).ok())
        .collect()
}

macro_rules! suite {
    ($($scenario:ident),* $(,)?) => {
        mod kifs {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::Backend::Kifs)
            })*
        }
        mod redivis {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::Backend::Redivis)
            })*
        }
    };
}

suite!(
    small_file,
    empty_file,
    exactly_one_chunk,
    one_chunk_and_a_byte,
    large_multi_chunk_file,
    crash_while_chunks_go_out,
    crash_after_the_last_chunk_before_its_answer,
    crash_while_the_finalize_answer_is_held,
    crash_while_a_small_file_is_answered,
    lost_finalize_answer,
    file_changed_during_upload,
    file_vanished_during_upload,
    shutdown_during_a_retry_pause,
    remote_down_and_back,
);
