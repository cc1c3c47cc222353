//! The whole daemon against the Redivis emulator: real binary, real HTTP on 127.0.0.1,
//! injected faults and kill -9, checked through the table's upload list.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const TABLE: &str = "test.dataset:next.files";
const TOKEN: &str = "e2e-secret-token-7f3a";

struct Setup {
    _tmp: tempfile::TempDir,
    inbox: PathBuf,
    config: PathBuf,
    emulator: EmulatorProcess,
}

fn setup(emulator_args: &[&str], redivis_extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut args = vec!["--redivis-token", TOKEN];
    args.extend_from_slice(emulator_args);
    let emulator = EmulatorProcess::start(&tmp.path().join("remote"), &args);
    let config = tmp.path().join("upsync.toml");
    let text = format!(
        r#"
state_dir = "state"
concurrency = 4
[redivis]
api_url = "{url}"
token_env = "UPSYNC_E2E_REDIVIS_TOKEN"
chunk_size = "1MiB"
{redivis_extra}
[[folder]]
path = "inbox"
redivis_table = "{TABLE}"
settle = "1s"
"#,
        url = emulator.redivis_url()
    );
    std::fs::write(&config, text).unwrap();
    // SAFETY: set before any daemon is spawned; the tests only read it through children.
    unsafe { std::env::set_var("UPSYNC_E2E_REDIVIS_TOKEN", TOKEN) };
    Setup {
        _tmp: tmp,
        inbox,
        config,
        emulator,
    }
}

/// Whether each local file appears exactly once, completed, with its size and MD5.
fn mirrored_exactly_once(s: &Setup, files: &[(String, PathBuf)]) -> Result<(), String> {
    let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
    let by_name = uploads_by_name(&uploads);
    for (name, local) in files {
        let found = by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
        if found.len() != 1 {
            return Err(format!("{name}: {} uploads", found.len()));
        }
        let upload = found[0];
        if upload["status"] != "completed" {
            return Err(format!("{name}: status {}", upload["status"]));
        }
        let size = std::fs::metadata(local).unwrap().len();
        if json_number(&upload["size"]) != Some(size) {
            return Err(format!("{name}: size {} != {size}", upload["size"]));
        }
        let hash = upload["hash"].as_str().unwrap_or("").to_lowercase();
        if Some(hash.as_str()) != file_md5_hex(local).as_deref() {
            return Err(format!("{name}: hash {hash} differs from the local MD5"));
        }
    }
    let duplicates: Vec<_> = by_name
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    if !duplicates.is_empty() {
        return Err(format!("duplicate uploads: {duplicates:?}"));
    }
    Ok(())
}

fn wait_mirrored(
    s: &Setup,
    files: &[(String, PathBuf)],
    timeout: Duration,
    daemon: &DaemonProcess,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match mirrored_exactly_once(s, files) {
            Ok(()) => return,
            Err(why) if std::time::Instant::now() > deadline => {
                panic!(
                    "not mirrored after {timeout:?}: {why}\n{}",
                    daemon.log_text()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn acceptance_files(s: &Setup) -> Vec<(String, PathBuf)> {
    let sizes = [
        ("empty.csv", 0u64),
        ("one-kib.csv", 1024),
        ("eight-mib-plus-one.bin", (8 << 20) + 1),
        ("hundred-mib.bin", 100 << 20),
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(i, (name, size))| {
            let path = s.inbox.join(name);
            write_file(&path, *size, 100 + i as u64);
            (name.to_string(), path)
        })
        .collect()
}

#[test]
fn files_of_every_size_class_appear_once_with_their_size_and_md5() {
    let s = setup(&[], "");
    let files = acceptance_files(&s);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(180), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(!log.contains(TOKEN), "the token leaked into the log");
}

#[test]
fn the_temp_uploads_flow_mirrors_the_same_files() {
    let s = setup(&[], "protocol = \"temp-uploads\"");
    let files = acceptance_files(&s);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(180), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn random_5xx_answers_and_dropped_connections_change_nothing() {
    let s = setup(
        &["--fail-rate", "0.15", "--drop-rate", "0.05", "--seed", "11"],
        "",
    );
    let files = acceptance_files(&s);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(300), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn kill_9_at_random_moments_during_a_50_file_run_leaves_each_file_once() {
    let s = setup(&["--fail-rate", "0.05", "--seed", "5"], "");
    let mut files = Vec::new();
    for i in 0..50u64 {
        // Mostly small files, some spanning several chunks.
        let size = if i % 10 == 0 {
            (3 << 20) + i * 977
        } else {
            i * 1031
        };
        let name = format!("batch/file-{i:02}.csv");
        let path = s.inbox.join(&name);
        write_file(&path, size, i);
        backdate(&path, 60);
        files.push((name, path));
    }
    let mut rng_state = 0x5eed_u64;
    for round in 0..6 {
        let mut daemon = DaemonProcess::start(&s.config);
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let run_ms = 400 + rng_state % 1600;
        std::thread::sleep(Duration::from_millis(run_ms));
        daemon.kill9();
        eprintln!("round {round}: killed after {run_ms} ms");
    }
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(300), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
}

fn session_puts(s: &Setup) -> u64 {
    json_number(&s.emulator.get_json("/_emulator/redivis/stats")["session_puts"]).unwrap_or(0)
}

#[test]
fn kill_9_between_the_last_chunk_and_upload_post_leaves_exactly_one_upload() {
    // The final chunk is stored at once but answered only after 4 s: the daemon dies
    // knowing the transfer went out, not whether it landed.
    let s = setup(&["--redivis-final-chunk-delay", "4000"], "");
    let path = s.inbox.join("three-chunks.bin");
    write_file(&path, (2 << 20) + 12_345, 77);
    backdate(&path, 60);
    let files = vec![("three-chunks.bin".to_string(), path)];
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        Duration::from_secs(60),
        "the final chunk to be sent",
        || session_puts(&s) >= 3,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty(),
        "upload.post ran before the kill"
    );
    daemon.kill9();
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(60), &daemon);
    std::thread::sleep(Duration::from_secs(1));
    mirrored_exactly_once(&s, &files).unwrap();
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn kill_9_between_upload_post_and_its_answer_leaves_exactly_one_upload() {
    // upload.post creates the upload, then holds the answer for 5 s: the daemon dies with
    // the upload created but unconfirmed, and must find it instead of posting again.
    let s = setup(&["--redivis-post-delay", "5000"], "");
    let path = s.inbox.join("posted.bin");
    write_file(&path, (3 << 20) + 1, 78);
    backdate(&path, 60);
    let files = vec![("posted.bin".to_string(), path)];
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the upload to be created", || {
        !s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty()
    });
    daemon.kill9();
    let mut daemon = DaemonProcess::start(&s.config);
    wait_mirrored(&s, &files, Duration::from_secs(60), &daemon);
    std::thread::sleep(Duration::from_secs(1));
    mirrored_exactly_once(&s, &files).unwrap();
    let created = s.emulator.get_json("/_emulator/redivis/stats")["uploads_created"].clone();
    assert_eq!(json_number(&created), Some(1), "upload.post ran twice");
    assert_eq!(daemon.terminate(), Some(0));
}
