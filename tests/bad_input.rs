//! Bad input, end to end: each case gets a clear message and loses nothing.
//!
//! Cases:
//! - Config (`upsync check`, exit 2, message naming the file:line and the key): a wrong
//!   type for every top-level, `[kifs]`, `[redivis]` and `[[folder]]` key that has one; out
//!   of range (`concurrency = 0`, a chunk size not a multiple of 256 KiB, a zero chunk, a
//!   rescan every millisecond, a zero shutdown timeout, the emulator's data in state_dir);
//!   a wrong unit (`"5 parsecs"`, `"8 MiBs"`); a bad enum (`encoding`, `protocol`); a bad
//!   socket address; a KiFS user name Basic auth cannot send (`in:gest`); three mistyped
//!   keys named in one run, in file order. The unit tests in `src/config/tests.rs` cover
//!   the wording in detail.
//! - KiFS name rules: `_`, a newline, a non-ASCII letter and a name over 1024 characters
//!   each fail with the reason naming the character or the limit; spaces and the allowed
//!   punctuation go through.
//! - Redivis name rules: names with spaces, unicode and a newline are uploaded under their
//!   own name; two names equal under Redivis' escaping: one is uploaded, the other fails
//!   naming the collision, and neither is overwritten.
//! - A symlink loop (and a link to a directory outside) in a watched folder: links are not
//!   followed, the daemon does not hang, the other files arrive.
//! - A huge sparse file (1 GiB in CI, `UPSYNC_HUGE_GIB=10` for the 10 GiB run) arrives
//!   byte-identical while the daemon's peak memory stays far below the file size (it
//!   streams).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------- config

/// A config that is valid except for `replace` (a line `key = value` under `section`).
fn config_with(dir: &Path, section: &str, line: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    std::fs::create_dir_all(dir.join("rinbox")).unwrap();
    let mut top = String::from("state_dir = \"state\"\n");
    let mut kifs = String::from("url = \"http://127.0.0.1:9/kifs\"\n");
    let mut redivis = String::from("api_url = \"http://127.0.0.1:9/api/v1\"\ntoken = \"t\"\n");
    let mut folder = String::from("path = \"inbox\"\nkifs_directory = \"ingest\"\n");
    match section {
        "" => top.push_str(line),
        "kifs" if line.starts_with("url") => kifs = format!("{line}\n"),
        "kifs" => kifs.push_str(line),
        "redivis" => redivis.push_str(line),
        "folder" => folder.push_str(line),
        other => panic!("unknown section {other}"),
    }
    let text = format!(
        "{top}\n[kifs]\n{kifs}\n[redivis]\n{redivis}\n[[folder]]\n{folder}\n[[folder]]\npath = \"rinbox\"\nredivis_table = \"o.d:next.t\"\n"
    );
    let path = dir.join(format!("bad-{}.toml", rand::random::<u32>()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_config_key_with_a_wrong_type_range_or_unit_is_named_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("", "concurrency = \"four\"", "concurrency"),
        ("", "concurrency = 0", "concurrency"),
        ("", "concurrency = -3", "concurrency"),
        ("", "concurrency = 2.5", "concurrency"),
        ("", "rescan_interval = 600", "rescan_interval"),
        ("", "rescan_interval = \"10 fortnights\"", "rescan_interval"),
        ("", "shutdown_timeout = \"-5s\"", "shutdown_timeout"),
        ("", "shutdown_timeout = true", "shutdown_timeout"),
        ("", "rescan_interval = \"1ms\"", "rescan_interval"),
        ("", "shutdown_timeout = \"0s\"", "shutdown_timeout"),
        ("", "retry_max_delay = \"10ms\"", "retry_max_delay"),
        (
            "",
            "[emulator]\nlisten = \"127.0.0.1:9\"\ndata_dir = \"state\"",
            "emulator.data_dir",
        ),
        ("", "metrics_listen = \"localhost\"", "metrics_listen"),
        ("", "metrics_listen = 9464", "metrics_listen"),
        ("kifs", "encoding = \"xml\"", "encoding"),
        ("kifs", "username = 7", "username"),
        (
            "kifs",
            "username = \"in:gest\"\npassword = \"p\"",
            "username",
        ),
        ("kifs", "url = \"not a url\"", "url"),
        ("redivis", "chunk_size = \"8 MiBs\"", "chunk_size"),
        ("redivis", "chunk_size = \"1000KiB\"", "chunk_size"),
        ("redivis", "chunk_size = \"0B\"", "chunk_size"),
        ("redivis", "chunk_size = 8388608.5", "chunk_size"),
        ("redivis", "protocol = \"ftp\"", "protocol"),
        ("folder", "settle = \"5 parsecs\"", "settle"),
        ("folder", "settle = 5", "settle"),
        ("folder", "recursive = \"yes\"", "recursive"),
        ("folder", "include = \"*.csv\"", "include"),
        ("folder", "exclude = [1, 2]", "exclude"),
        ("folder", "include = [\"[unclosed\"]", "include"),
        ("folder", "create_directory = \"true\"", "create_directory"),
    ];
    let mut failures = Vec::new();
    for (section, line, key) in cases {
        let config = config_with(tmp.path(), section, line);
        let file_name = config.file_name().unwrap().to_string_lossy().into_owned();
        let (code, _, stderr) = upsync(&["check", "-c", config.to_str().unwrap()]);
        let named = stderr.contains(key) && stderr.contains(&format!("{file_name}:"));
        if code != 2 || !named {
            failures.push(format!("[{section}] {line}: exit {code}: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_names_every_key_of_the_wrong_type_or_unit_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("inbox")).unwrap();
    let config = tmp.path().join("upsync.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nconcurrency = \"four\"\n\
         [kifs]\nurl = \"http://127.0.0.1:9/kifs\"\n\
         [[folder]]\npath = \"inbox\"\nkifs_directory = \"ingest\"\nsettle = \"5 parsecs\"\nmax_delete = true\n",
    )
    .unwrap();
    let (code, _, stderr) = upsync(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let named: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("upsync.toml:"))
        .collect();
    let expected = [
        ("upsync.toml:2: key 'concurrency'", "expected an integer"),
        (
            "upsync.toml:8: key 'folder[0].settle'",
            "expected a duration",
        ),
        (
            "upsync.toml:9: key 'folder[0].max_delete'",
            "expected a count of files",
        ),
    ];
    assert_eq!(named.len(), expected.len(), "{stderr}");
    for (line, (location, what)) in named.iter().zip(expected) {
        assert!(line.contains(location) && line.contains(what), "{stderr}");
    }
}

// ---------------------------------------------------------------- names

struct Both {
    _tmp: tempfile::TempDir,
    kin: PathBuf,
    rin: PathBuf,
    config: PathBuf,
    emulator: EmulatorProcess,
}

const TABLE: &str = "bad.input:next.files";
const TOKEN: &str = "bad-input-token-9f8e";
const TOKEN_ENV: &str = "UPSYNC_BAD_INPUT_REDIVIS_TOKEN";

fn both() -> Both {
    // SAFETY: set before any child starts; every child reads the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let Site {
        tmp,
        folders,
        emulator,
        config,
    } = Site::start(&["kin", "rin"], &["--redivis-token", TOKEN]);
    let (kin, rin) = (folders[0].clone(), folders[1].clone());
    ConfigBuilder::new()
        .kifs(&emulator.kifs_url())
        .redivis(&emulator.redivis_url(), TOKEN_ENV)
        .folder(FolderBuilder::kifs("kin", "ingest"))
        .folder(FolderBuilder::redivis("rin", TABLE))
        .each_folder(|folder| folder.with("exclude = []"))
        .write(&config);
    Both {
        _tmp: tmp,
        kin,
        rin,
        config,
        emulator,
    }
}

fn failed_reason(status: &serde_json::Value, path: &Path) -> Option<String> {
    status["failed"]
        .as_array()?
        .iter()
        .find(|f| f["path"] == path.display().to_string())
        .map(|f| f["reason"].as_str().unwrap_or("").to_string())
}

/// Upload names in the table.
fn redivis_names(b: &Both) -> Vec<String> {
    b.emulator.redivis_upload_names(TABLE, TOKEN)
}

#[test]
fn odd_names_are_uploaded_or_failed_with_a_reason_and_nothing_is_lost() {
    let b = both();
    // KiFS: accepted and rejected names.
    let kifs_ok = ["with spaces.csv", "nested/dir/a (1) [x] #2 =b:c.csv"];
    let kifs_bad: [(&str, &str); 3] = [
        ("under_score.csv", "'_'"),
        ("new\nline.csv", "U+000A"),
        ("unicodé.csv", "'é'"),
    ];
    for name in kifs_ok {
        write_file(&b.kin.join(name), 777, 1);
    }
    for (name, _) in &kifs_bad {
        write_file(&b.kin.join(name), 555, 2);
    }
    // Over the 1024-character limit, in components the local file system accepts.
    let long_rel: String = (0..9).map(|i| format!("{}{i}/", "d".repeat(120))).collect();
    let long_path = b.kin.join(format!("{long_rel}x.csv"));
    write_file(&long_path, 10, 3);

    // Redivis: odd but valid names, and two names equal under escaping.
    let redivis_ok = ["with spaces.csv", "ünïcödé ✓.csv", "new\nline.csv"];
    for name in redivis_ok {
        write_file(&b.rin.join(name), 999, 4);
    }
    write_file(&b.rin.join("same.name.csv"), 100, 5);
    write_file(&b.rin.join("Same_Name.csv"), 200, 6);

    let mut daemon = DaemonProcess::start(&b.config);
    let arrived = || {
        kifs_ok.iter().all(|n| {
            same_content(
                &b.kin.join(n),
                &b.emulator.kifs_file(&format!("ingest/{n}")),
            )
        }) && {
            let names = redivis_names(&b);
            redivis_ok.iter().all(|n| names.iter().any(|m| m == n))
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !arrived() {
        assert!(
            std::time::Instant::now() < deadline,
            "the accepted names did not arrive: {}\ntable: {:?}\n{}",
            status_json(&b.config),
            redivis_names(&b),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The KiFS names, the long one and one of the colliding Redivis pair.
    let expected_failures = kifs_bad.len() + 2;
    wait_until(
        Duration::from_secs(60),
        "the rejected names to fail",
        || {
            status_json(&b.config)["failed"]
                .as_array()
                .is_some_and(|f| f.len() >= expected_failures)
        },
    );
    let status = status_json(&b.config);
    for (name, needle) in &kifs_bad {
        let reason = failed_reason(&status, &b.kin.join(name))
            .unwrap_or_else(|| panic!("{name:?} did not fail: {status}"));
        assert!(reason.contains(needle), "{name:?}: {reason}");
    }
    let reason = failed_reason(&status, &long_path).expect("the long name fails");
    assert!(reason.contains("1024"), "{reason}");
    let collided: Vec<String> = ["same.name.csv", "Same_Name.csv"]
        .iter()
        .filter_map(|n| failed_reason(&status, &b.rin.join(n)))
        .collect();
    assert_eq!(collided.len(), 1, "exactly one of the pair fails: {status}");
    let names = redivis_names(&b);
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "same.name.csv" || *n == "Same_Name.csv")
            .count(),
        1,
        "{names:?}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn symlink_loops_are_not_followed_and_the_other_files_arrive() {
    let b = both();
    std::os::unix::fs::symlink(".", b.kin.join("self")).unwrap();
    std::fs::create_dir_all(b.kin.join("x")).unwrap();
    std::os::unix::fs::symlink("../y", b.kin.join("x/to-y")).unwrap();
    std::fs::create_dir_all(b.kin.join("y")).unwrap();
    std::os::unix::fs::symlink("../x", b.kin.join("y/to-x")).unwrap();
    std::os::unix::fs::symlink("/", b.kin.join("root")).unwrap();
    std::os::unix::fs::symlink("missing-target", b.kin.join("dangling")).unwrap();
    let real = b.kin.join("x/real.csv");
    write_file(&real, 4321, 9);
    let mut daemon = DaemonProcess::start(&b.config);
    wait_until(Duration::from_secs(30), "the real file", || {
        same_content(&real, &b.emulator.kifs_file("ingest/x/real.csv"))
    });
    // Ready once the start-up scan, links and all, is over; settled then, a file found
    // through a link would be pending or counted as done.
    daemon.wait_until(Duration::from_secs(30), "the daemon to be ready", || {
        daemon.log_text().contains("upsync is running")
    });
    daemon.wait_settled(&b.config, 1);
    let status = status_json(&b.config);
    assert_eq!(status["folders"][0]["done"], 1, "{status}");
    assert_eq!(status["folders"][0]["queued"], 0, "{status}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_huge_sparse_file_is_streamed_not_read_whole() {
    let gib: u64 = std::env::var("UPSYNC_HUGE_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let b = both();
    let path = b.kin.join("huge.bin");
    {
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(gib << 30).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"tail", (gib << 30) - 4).unwrap();
    }
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&b.config);
    let pid = daemon.pid();
    let mut peak = 0;
    wait_until(Duration::from_secs(120 * gib), "the huge file", || {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        std::fs::metadata(b.emulator.kifs_file("ingest/huge.bin"))
            .is_ok_and(|m| m.len() == gib << 30)
    });
    assert!(same_content(
        &path,
        &b.emulator.kifs_file("ingest/huge.bin")
    ));
    println!("huge file: {gib} GiB, daemon peak RSS {} MiB", peak / 1024);
    // Parts are 60 MiB: a few of them in memory at most, never the file.
    assert!(
        peak < 1024 * 1024,
        "peak RSS {peak} KiB for a {gib} GiB file"
    );
    assert_eq!(daemon.terminate(), Some(0));
}
