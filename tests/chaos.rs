//! The chaos test: the real `upsync` binary against the real emulator process, both
//! backends at once (one folder → a KiFS directory, one folder → a Redivis table), while the
//! emulator injects faults and the daemon is killed with SIGKILL at random moments and
//! restarted.
//!
//! Workload (drawn from a seeded generator): files from 0 B up to 200 MiB (long run) or
//! 70 MiB (CI run) in nested directories, files written slowly, files rewritten while they
//! may be uploading, files deleted before their upload, names a remote rejects (KiFS: `_`;
//! Redivis: two names that collide under its name escaping).
//!
//! Faults: `--fail-rate` (500/502/503), `--drop-rate` (connections closed mid-request),
//! the Redivis rate limit (429 + Retry-After) and a short `--session-ttl` (20 s; 90 s in
//! the long run, whose 200 MiB files take longer than 20 s to send in a debug build); at
//! least 20 SIGKILLs with restarts.
//!
//! At the end: every file that still exists is on its remote byte-identical (KiFS: the
//! emulator's stored file; Redivis: exactly one upload of that name, completed, with the
//! local size and MD5), no Redivis upload name appears twice, every rejected name is
//! `failed` with a reason (`upsync status --json`), nothing is queued, active or waiting.
//!
//! - `UPSYNC_CHAOS_SEED=N` reproduces a run (the seed is printed either way).
//! - `UPSYNC_CHAOS_LONG=1` runs the long version (more files, up to 200 MiB, more kills);
//!   the README's "Resilience" section has the command and the figures of its last run.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TABLE: &str = "chaos.dataset:next.files";
const TOKEN: &str = "chaos-secret-token-1b2c";
const TOKEN_ENV: &str = "UPSYNC_CHAOS_REDIVIS_TOKEN";
const KIFS_DIR: &str = "chaos";

#[derive(Debug, Clone, Copy)]
struct Plan {
    seed: u64,
    long: bool,
    files_per_backend: usize,
    max_size: u64,
    kills: usize,
    fail_rate: f64,
    drop_rate: f64,
    /// Redivis session lifetime: shorter than the run, longer than one transfer.
    session_ttl: &'static str,
    finish_within: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        let seed = std::env::var("UPSYNC_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u16>) as u64;
        let long = std::env::var("UPSYNC_CHAOS_LONG").is_ok_and(|v| v == "1");
        if long {
            Plan {
                seed,
                long,
                files_per_backend: 150,
                max_size: 200 << 20,
                kills: 40,
                fail_rate: 0.05,
                drop_rate: 0.03,
                session_ttl: "90s",
                finish_within: Duration::from_secs(1800),
            }
        } else {
            Plan {
                seed,
                long,
                files_per_backend: 30,
                max_size: 70 << 20,
                kills: 20,
                fail_rate: 0.06,
                drop_rate: 0.04,
                session_ttl: "20s",
                finish_within: Duration::from_secs(240),
            }
        }
    }
}

/// What the end state must be for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// On its remote, byte-identical to the local file.
    Present,
    /// Deleted locally; whatever happened remotely is fine.
    Deleted,
    /// A name the remote rejects: `failed` with a reason.
    Rejected,
    /// One of two names that collide under Redivis' escaping: exactly one of the pair is
    /// uploaded, the other `failed`.
    Colliding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Kifs,
    Redivis,
}

struct World {
    tmp: tempfile::TempDir,
    config: PathBuf,
    emulator: EmulatorProcess,
    /// Every file ever written, by absolute path.
    files: Mutex<BTreeMap<PathBuf, (Side, String, Expect)>>,
}

impl World {
    fn folder(&self, side: Side) -> PathBuf {
        self.tmp.path().join(match side {
            Side::Kifs => "kin",
            Side::Redivis => "rin",
        })
    }

    fn record(&self, side: Side, rel: &str, expect: Expect) -> PathBuf {
        let path = self.folder(side).join(rel);
        self.files
            .lock()
            .unwrap()
            .insert(path.clone(), (side, rel.to_string(), expect));
        path
    }

    /// The files of `side` that should be on the remote now.
    fn present(&self, side: Side) -> Vec<PathBuf> {
        self.files
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (s, _, e))| *s == side && *e == Expect::Present)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// `upsync status --json`; retried while a starting daemon holds the database but
    /// does not answer on its control socket yet.
    fn status(&self) -> serde_json::Value {
        let mut attempts = 0;
        loop {
            let (code, stdout, stderr) =
                upsync(&["status", "-c", self.config.to_str().unwrap(), "--json"]);
            if code == 0 {
                return serde_json::from_str(&stdout).unwrap();
            }
            attempts += 1;
            assert!(
                attempts < 40 && stderr.contains("already running"),
                "status failed: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn size_for(rng: &mut StdRng, plan: &Plan) -> u64 {
    match rng.random_range(0..100) {
        0..12 => 0,
        12..60 => rng.random_range(1..64 * 1024),
        60..88 => rng.random_range(64 * 1024..4 << 20),
        88..97 => rng.random_range(4 << 20..16 << 20),
        _ => rng.random_range(16 << 20..plan.max_size.min(40 << 20)),
    }
}

fn rel_for(rng: &mut StdRng, i: usize) -> String {
    const DIRS: &[&str] = &["", "a/", "a/b/", "c/d/e/", "deep/er/and/deeper/"];
    let dir = DIRS[rng.random_range(0..DIRS.len())];
    format!("{dir}f{i:03}.csv")
}

/// Writes the config and starts the emulator with the plan's faults.
fn world(plan: &Plan) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let seed = plan.seed.to_string();
    let fail = plan.fail_rate.to_string();
    let drop = plan.drop_rate.to_string();
    let emulator = EmulatorProcess::start(
        &tmp.path().join("remote"),
        &[
            "--redivis-token",
            TOKEN,
            "--fail-rate",
            &fail,
            "--drop-rate",
            &drop,
            "--seed",
            &seed,
            "--rate-limit",
            "--rate-limit-max",
            "25",
            "--rate-limit-window",
            "5s",
            "--session-ttl",
            plan.session_ttl,
        ],
    );
    let config = tmp.path().join("upsync.toml");
    std::fs::create_dir_all(tmp.path().join("kin")).unwrap();
    std::fs::create_dir_all(tmp.path().join("rin")).unwrap();
    ConfigBuilder::new()
        .top("concurrency = 4\nshutdown_timeout = \"5s\"\nretry_max_delay = \"5s\"")
        .kifs(&emulator.kifs_url())
        .redivis(&emulator.redivis_url(), TOKEN_ENV)
        // The emulator counts its rate limit over 5 s, not Redivis' 60-100 s.
        .redivis_with("chunk_size = \"2MiB\"\nrate_limit_window = \"5s\"")
        .folder(FolderBuilder::kifs("kin", KIFS_DIR))
        .folder(FolderBuilder::redivis("rin", TABLE))
        .write(&config);
    World {
        tmp,
        config,
        emulator,
        files: Mutex::new(BTreeMap::new()),
    }
}

fn start_daemon(w: &World) -> DaemonProcess {
    DaemonProcess::start_with(&w.config, |cmd| {
        cmd.env(TOKEN_ENV, TOKEN).env("RUST_LOG", "info");
    })
}

/// The files present before the first start.
fn initial_files(w: &World, plan: &Plan, rng: &mut StdRng) {
    for side in [Side::Kifs, Side::Redivis] {
        for i in 0..plan.files_per_backend {
            let rel = rel_for(rng, i);
            let size = size_for(rng, plan);
            let path = w.record(side, &rel, Expect::Present);
            write_file(&path, size, rng.random());
        }
    }
    // The biggest file: multipart on KiFS, many chunks on Redivis.
    let big = w.record(Side::Kifs, "big/huge.bin", Expect::Present);
    write_file(&big, plan.max_size, rng.random());
    if plan.long {
        let big = w.record(Side::Redivis, "big/huge.bin", Expect::Present);
        write_file(&big, plan.max_size, rng.random());
    }
    // Names the remotes reject.
    for i in 0..3 {
        let path = w.record(Side::Kifs, &format!("bad_name_{i}.csv"), Expect::Rejected);
        write_file(&path, 100 + i, rng.random());
    }
    for (a, b) in [("clash.one.csv", "clash_one.csv"), ("x-y.csv", "X_Y.csv")] {
        for rel in [a, b] {
            let path = w.record(Side::Redivis, rel, Expect::Colliding);
            write_file(&path, 333, rng.random());
        }
    }
}

/// Changes the folders while the daemon is being killed and restarted: new files, slow
/// writers, rewrites of files that may be uploading, files deleted before their upload.
fn mutate(w: &World, plan: &Plan, rng: &mut StdRng, until: Instant) {
    let mut n = 1000;
    while Instant::now() < until {
        n += 1;
        let side = if rng.random_bool(0.5) {
            Side::Kifs
        } else {
            Side::Redivis
        };
        match rng.random_range(0..10) {
            // A new file.
            0..3 => {
                let rel = rel_for(rng, n);
                let path = w.record(side, &rel, Expect::Present);
                write_file(&path, size_for(rng, plan), rng.random());
            }
            // A slow writer: pieces 300 ms apart with the file open.
            3..5 => {
                use std::io::Write;
                let rel = format!("slow/s{n}.csv");
                let path = w.record(side, &rel, Expect::Present);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let mut file = std::fs::File::create(&path).unwrap();
                for piece in 0..8 {
                    writeln!(
                        file,
                        "{n},{piece},{}",
                        "s".repeat(rng.random_range(10..5000))
                    )
                    .unwrap();
                    file.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            // Rewrite an existing file (maybe mid-upload).
            5..7 => {
                let present = w.present(side);
                if let Some(path) = present.get(rng.random_range(0..present.len().max(1))) {
                    write_file(path, size_for(rng, plan), rng.random());
                }
            }
            // Written, then deleted before it settles.
            7..9 => {
                let rel = format!("gone/g{n}.csv");
                let path = w.record(side, &rel, Expect::Deleted);
                write_file(&path, rng.random_range(0..100_000), rng.random());
                std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
                std::fs::remove_file(&path).unwrap();
            }
            // Delete an existing file (uploaded or not).
            _ => {
                let present = w.present(side);
                if let Some(path) = present.get(rng.random_range(0..present.len().max(1))) {
                    w.files.lock().unwrap().get_mut(path).unwrap().2 = Expect::Deleted;
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..700)));
    }
}

/// The end state, measured.
#[derive(Debug, Default)]
struct Verdict {
    present: usize,
    bytes: u64,
    lost: Vec<String>,
    duplicates: Vec<String>,
    unexpected_failures: Vec<String>,
    rejected_not_failed: Vec<String>,
    busy: Vec<String>,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.unexpected_failures.is_empty()
            && self.rejected_not_failed.is_empty()
            && self.busy.is_empty()
    }
}

fn judge(w: &World) -> Verdict {
    let mut v = Verdict::default();
    let status = w.status();
    for folder in status["folders"].as_array().unwrap() {
        for state in ["queued", "active", "finalizing", "retry_wait"] {
            if folder[state].as_u64() != Some(0) {
                v.busy
                    .push(format!("{} {state}={}", folder["path"], folder[state]));
            }
        }
    }
    let failed: BTreeMap<String, String> = status["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let uploads = w.emulator.list_redivis_uploads(TABLE, TOKEN);
    let by_name = uploads_by_name(&uploads);
    for (name, found) in &by_name {
        if found.len() > 1 {
            v.duplicates.push(format!("{name} ×{}", found.len()));
        }
        if name.contains(" (") {
            v.duplicates.push(format!("{name} (renamed by the table)"));
        }
    }
    let files = w.files.lock().unwrap().clone();
    let mut colliding: BTreeMap<String, Vec<(String, bool, bool)>> = BTreeMap::new();
    for (path, (side, rel, expect)) in &files {
        let shown = path.display().to_string();
        let on_remote = || match side {
            Side::Kifs => same_content(path, &w.emulator.kifs_file(&format!("{KIFS_DIR}/{rel}"))),
            Side::Redivis => by_name.get(rel).is_some_and(|found| {
                found.len() == 1
                    && found[0]["status"] == "completed"
                    && json_number(&found[0]["size"])
                        == std::fs::metadata(path).ok().map(|m| m.len())
                    && found[0]["hash"].as_str().map(str::to_lowercase) == file_md5_hex(path)
            }),
        };
        match expect {
            Expect::Deleted => {}
            Expect::Present => {
                if failed.contains_key(&shown) {
                    v.unexpected_failures
                        .push(format!("{shown}: {}", failed[&shown]));
                } else if !on_remote() {
                    v.lost.push(shown);
                } else {
                    v.present += 1;
                    v.bytes += std::fs::metadata(path).unwrap().len();
                }
            }
            Expect::Rejected => match failed.get(&shown) {
                Some(reason) if reason.contains("'_'") => {}
                _ => v.rejected_not_failed.push(shown),
            },
            Expect::Colliding => {
                let key: String = rel
                    .chars()
                    .filter(|c| c.is_alphanumeric())
                    .flat_map(char::to_lowercase)
                    .collect();
                let reason_ok = failed.get(&shown).is_some_and(|r| !r.is_empty());
                colliding
                    .entry(key)
                    .or_default()
                    .push((shown, reason_ok, on_remote()));
            }
        }
    }
    for (key, pair) in colliding {
        let failed_count = pair.iter().filter(|(_, f, _)| *f).count();
        let uploaded_count = pair.iter().filter(|(_, _, u)| *u).count();
        if failed_count != 1 || uploaded_count != 1 {
            v.rejected_not_failed
                .push(format!("colliding names {key}: {pair:?}"));
        } else {
            v.present += 1;
        }
    }
    v
}

fn sum(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::Object(map) => map.values().map(sum).sum(),
        other => other.as_u64().unwrap_or(0),
    }
}

#[test]
fn chaos_both_backends_survive_kills_and_faults_without_loss_or_duplicates() {
    let plan = Plan::from_env();
    // SAFETY: set before any thread or child starts; `upsync status` reads the config too.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    println!("CHAOS seed={} long={}", plan.seed, plan.long);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let w = Arc::new(world(&plan));
    initial_files(&w, &plan, &mut rng);

    // Kill loop, with the folders changing underneath.
    let mutate_for = Duration::from_secs(if plan.long { 240 } else { 30 });
    let writer = {
        let w = Arc::clone(&w);
        let mut rng = StdRng::seed_from_u64(plan.seed ^ 0xC4A0_5EED);
        std::thread::spawn(move || mutate(&w, &plan, &mut rng, Instant::now() + mutate_for))
    };
    let mut kills = 0;
    while kills < plan.kills || !writer.is_finished() {
        let mut daemon = start_daemon(&w);
        let ms = rng.random_range(100..3500);
        std::thread::sleep(Duration::from_millis(ms));
        daemon.kill9();
        kills += 1;
    }
    writer.join().expect("the writer thread finished");

    let log = w.config.with_extension("daemon.log");
    let ready_count = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("upsync is running")
            .count()
    };
    let ready_before = ready_count();
    let mut daemon = start_daemon(&w);
    // Judge only a daemon that is up: stopping one that is still starting would test nothing.
    wait_until(
        Duration::from_secs(60),
        "the last daemon to be ready",
        || daemon.exited().is_some() || ready_count() > ready_before,
    );
    let deadline = Instant::now() + plan.finish_within;
    let verdict = loop {
        if let Some(code) = daemon.exited() {
            panic!(
                "seed {}: the daemon exited ({code:?}):\n{}",
                plan.seed,
                daemon.log_text()
            );
        }
        let verdict = judge(&w);
        if verdict.clean() || Instant::now() > deadline {
            break verdict;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    let stats = w.emulator.get_json("/_emulator/stats");
    let redivis = w.emulator.get_json("/_emulator/redivis/stats");
    let faults = sum(&stats["faults"]);
    let files = w.files.lock().unwrap().len();
    println!(
        "CHAOS seed={} long={} kills={kills} faults_injected={faults} (by kind {}) drops={} \
         responses_429={} files_written={files} files_checked={} bytes={} duplicates={} \
         lost={} elapsed={}s",
        plan.seed,
        plan.long,
        stats["faults"],
        stats["drops"],
        redivis["responses_429"],
        verdict.present,
        verdict.bytes,
        verdict.duplicates.len(),
        verdict.lost.len(),
        started.elapsed().as_secs()
    );
    if !verdict.clean() {
        // Keep the evidence: the folders, the remote and the logs.
        daemon.kill9();
        let kept = std::mem::replace(
            &mut Arc::into_inner(w).expect("the writer is done").tmp,
            tempfile::tempdir().unwrap(),
        )
        .keep();
        panic!(
            "seed {}: {verdict:#?}\n(everything is kept in {})",
            plan.seed,
            kept.display()
        );
    }
    assert!(kills >= 20);
    assert!(faults > 0, "no fault was injected: {stats}");
    assert_eq!(daemon.terminate(), Some(0));
}
