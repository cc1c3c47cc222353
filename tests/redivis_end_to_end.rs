//! The whole daemon against the Redivis emulator: real binary, real HTTP on 127.0.0.1,
//! injected faults and kill -9, checked through the table's upload list.

mod common;

use std::path::{Path, PathBuf};
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
    let redivis = format!("chunk_size = \"1MiB\"\n{redivis_extra}");
    setup_with(TABLE, emulator_args, &redivis, "")
}

/// A setup for `table` whose `[redivis]` section gets `redivis_extra` (it sets no chunk
/// size) and whose folder gets `folder_extra` after its own keys.
fn setup_with(
    table: &str,
    emulator_args: &[&str],
    redivis_extra: &str,
    folder_extra: &str,
) -> Setup {
    let mut args = vec!["--redivis-token", TOKEN];
    args.extend_from_slice(emulator_args);
    let site = Site::start(&["inbox"], &args);
    config_for(&site.emulator, table, redivis_extra, folder_extra).write(&site.config);
    // SAFETY: set before any daemon is spawned; the tests only read it through children.
    unsafe { std::env::set_var("UPSYNC_E2E_REDIVIS_TOKEN", TOKEN) };
    Setup {
        inbox: site.folders[0].clone(),
        _tmp: site.tmp,
        config: site.config,
        emulator: site.emulator,
    }
}

/// The config of these tests: four workers, the folder `inbox` feeding `table`.
fn config_for(
    emulator: &EmulatorProcess,
    table: &str,
    redivis_extra: &str,
    folder_extra: &str,
) -> ConfigBuilder {
    ConfigBuilder::new()
        .top("concurrency = 4")
        .redivis(&emulator.redivis_url(), "UPSYNC_E2E_REDIVIS_TOKEN")
        .redivis_with(redivis_extra)
        .folder(FolderBuilder::redivis("inbox", table).with(folder_extra))
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

/// SIGTERM while a file is sent: a transfer that ends within `shutdown_timeout` is posted
/// before the stop, instead of sending its bytes and then being refused the post.
#[test]
fn an_upload_in_flight_at_sigterm_is_posted_before_the_stop() {
    let s = setup(&[], "");
    config_for(&s.emulator, TABLE, "chunk_size = \"1MiB\"", "")
        .top("bandwidth_limit = \"8MiB/s\"\nshutdown_timeout = \"30s\"")
        .write(&s.config);
    let path = s.inbox.join("big.bin");
    write_file(&path, 12 << 20, 3);
    backdate(&path, 60);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        Duration::from_secs(30),
        "the upload to be under way",
        || {
            status_json(&s.config)["in_flight"]
                .as_array()
                .is_some_and(|files| !files.is_empty())
        },
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log_text());
    let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
    assert_eq!(uploads.len(), 1, "posted before the stop: {uploads:?}");
}

fn write_tsv(path: &Path, size: usize) -> u64 {
    let mut text = String::with_capacity(size + 64);
    let mut rows = 0;
    while text.len() < size {
        let value = if rows % 7 == 0 {
            "NA".to_string()
        } else {
            format!("value {rows}")
        };
        text.push_str(&format!("{rows}\t{value}\n"));
        rows += 1;
    }
    std::fs::write(path, text).unwrap();
    backdate(path, 60);
    rows
}

#[test]
fn parse_options_reach_redivis_inline_through_sessions_and_temp_uploads() {
    let options = r#"
[folder.redivis_options]
type = "delimited"
delimiter = "\t"
has_header_row = false
skip_bad_records = false
has_quoted_newlines = false
allow_jagged_rows = true
quote_character = "'"
escape_character = "\\"
null_markers = ["NA", ""]
"#;
    let expected = serde_json::json!({"type": "delimited", "delimiter": "\t",
        "hasHeaderRow": false, "skipBadRecords": false, "hasQuotedNewlines": false,
        "allowJaggedRows": true, "quoteCharacter": "'", "escapeCharacter": "\\",
        "nullMarkers": ["NA", ""]});
    // Inline multipart (1 KiB); with a 2 MiB chunk, 1.5 MiB is one plain temp-upload PUT
    // (or a one-chunk legacy session) and 2.5 MiB a resumable session of two chunks.
    let sizes = [
        ("inline.tsv", 1024),
        ("whole.tsv", 3 << 19),
        ("chunked.tsv", 5 << 19),
    ];
    for protocol in ["resumable-upload", "temp-uploads"] {
        let redivis = format!("chunk_size = \"2MiB\"\nprotocol = \"{protocol}\"");
        let s = setup_with(TABLE, &[], &redivis, options);
        let rows: Vec<(&str, u64)> = sizes
            .iter()
            .map(|(name, size)| (*name, write_tsv(&s.inbox.join(name), *size)))
            .collect();
        let mut daemon = DaemonProcess::start(&s.config);
        daemon.wait_until(Duration::from_secs(90), "every upload to complete", || {
            let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
            uploads.len() == sizes.len() && uploads.iter().all(|u| u["status"] == "completed")
        });
        let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
        for (name, rows) in &rows {
            let upload = uploads
                .iter()
                .find(|u| u["name"] == *name)
                .unwrap_or_else(|| panic!("{protocol}: {name} was not uploaded"));
            let uri = upload["uri"].as_str().expect("an upload has a uri");
            let got = get_redivis(&s, uri);
            for (field, value) in expected.as_object().expect("an object") {
                assert_eq!(&got[field], value, "{protocol}: {name}: {field}");
            }
            assert_eq!(
                json_number(&got["numRows"]),
                Some(*rows),
                "{protocol}: {name}"
            );
        }
        let stats = s.emulator.get_json("/_emulator/redivis/stats");
        let temp_puts = json_number(&stats["temp_puts"]).unwrap_or(0);
        let initiations = json_number(&stats["session_initiations"]).unwrap_or(0);
        if protocol == "temp-uploads" {
            assert!(
                temp_puts >= 1 && initiations >= 1,
                "both temp-upload paths: {stats}"
            );
        }
        assert_eq!(daemon.terminate(), Some(0));
    }
}

/// `GET` of an API path (such as an upload's `uri`) on the emulator, with the token.
fn get_redivis(s: &Setup, uri: &str) -> serde_json::Value {
    let url = format!("{}{uri}", s.emulator.redivis_url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds");
    runtime.block_on(async {
        reqwest::Client::new()
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the emulator answers")
            .json()
            .await
            .expect("the answer is JSON")
    })
}

// ---- file index tables ---------------------------------------------------------------------

const FILES_TABLE: &str = "test.dataset:next.scans";

/// A setup whose folder feeds `FILES_TABLE`, created as a file index table.
fn file_index_setup(emulator_args: &[&str]) -> Setup {
    let s = setup_with(FILES_TABLE, emulator_args, "chunk_size = \"1MiB\"", "");
    s.emulator.create_redivis_table(FILES_TABLE, true);
    s
}

/// Binary files of a few KiB in nested folders, backdated so they are ready at once.
fn binary_files(s: &Setup, count: u64) -> Vec<(String, PathBuf)> {
    (0..count)
        .map(|i| {
            let name = format!("scans/{}/img-{i:03}.png", i % 4);
            let path = s.inbox.join(&name);
            write_file(&path, 1024 + i * 311, 500 + i);
            backdate(&path, 60);
            (name, path)
        })
        .collect()
}

/// Whether each local file is in the file index table exactly once, with its size and MD5.
fn files_exactly_once(s: &Setup, files: &[(String, PathBuf)]) -> Result<(), String> {
    use base64::Engine;
    let listed = s.emulator.list_redivis_files(FILES_TABLE, TOKEN);
    if listed.len() != files.len() {
        return Err(format!(
            "{} files listed, {} expected",
            listed.len(),
            files.len()
        ));
    }
    for (name, local) in files {
        let found: Vec<_> = listed
            .iter()
            .filter(|f| f["name"] == name.as_str())
            .collect();
        let [file] = found.as_slice() else {
            return Err(format!("{name}: {} entries", found.len()));
        };
        let md5 = hex::decode(file_md5_hex(local).expect("the local file reads")).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(md5);
        if file["md5Hash"] != expected.as_str() {
            return Err(format!(
                "{name}: md5Hash {} differs from the local MD5",
                file["md5Hash"]
            ));
        }
    }
    Ok(())
}

/// Waits until the daemon has recorded every file as done, then checks the table.
fn wait_files(s: &Setup, files: &[(String, PathBuf)], timeout: Duration, daemon: &DaemonProcess) {
    let config = s.config.to_str().unwrap().to_string();
    daemon.wait_until(timeout, "every file recorded as uploaded", || {
        let (code, out, _) = upsync(&["status", "-c", &config, "--json"]);
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        let folder = &status["folders"][0];
        let count = |key: &str| folder[key].as_u64().unwrap_or(u64::MAX);
        code == 0
            && count("done") == files.len() as u64
            && ["queued", "active", "finalizing", "retry_wait", "failed"]
                .iter()
                .all(|key| count(key) == 0)
    });
    if let Err(why) = files_exactly_once(s, files) {
        panic!("{why}\n{}", daemon.log_text());
    }
}

fn raw_files_posts(s: &Setup) -> u64 {
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    json_number(&stats["api_requests"]["rawFiles.post"]).unwrap_or(0)
}

#[test]
fn a_file_index_folder_lands_each_file_once_in_batched_raw_files_calls() {
    let s = file_index_setup(&[]);
    let mut files = binary_files(&s, 60);
    let large = s.inbox.join("checkpoints/model.ckpt");
    write_file(&large, (3 << 20) + 17, 900);
    backdate(&large, 60);
    files.push(("checkpoints/model.ckpt".to_string(), large));
    let mut daemon = DaemonProcess::start(&s.config);
    wait_files(&s, &files, Duration::from_secs(90), &daemon);
    let posts = raw_files_posts(&s);
    assert!(posts <= 10, "61 files in {posts} rawFiles calls");
    let (code, out, _) = upsync(&["status", "-c", s.config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(status["folders"][0]["remote_kind"], "file index table");
    assert!(
        daemon.log_text().contains("file index table"),
        "the start-up log names the kind"
    );
    assert_eq!(daemon.terminate(), Some(0));
    files_exactly_once(&s, &files).unwrap();
}

#[test]
fn kill_9_while_raw_files_is_answered_leaves_each_file_once() {
    // rawFiles registers the files at once but answers 4 s later: the daemon dies with
    // its files registered and unconfirmed, and must find them instead of registering again.
    let s = file_index_setup(&["--redivis-raw-files-delay", "4000"]);
    let files = binary_files(&s, 20);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the first rawFiles call", || {
        raw_files_posts(&s) >= 1
    });
    daemon.kill9();
    let registered = s.emulator.list_redivis_files(FILES_TABLE, TOKEN).len();
    assert!(registered > 0, "rawFiles registered files before the kill");
    let mut daemon = DaemonProcess::start(&s.config);
    wait_files(&s, &files, Duration::from_secs(60), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
    files_exactly_once(&s, &files).unwrap();
}

#[test]
fn kill_9_at_random_moments_into_a_file_index_table_leaves_each_file_once() {
    let s = file_index_setup(&["--fail-rate", "0.05", "--seed", "9"]);
    let files = binary_files(&s, 40);
    let mut rng_state = 0x5eed_f11e_u64;
    for round in 0..5 {
        let mut daemon = DaemonProcess::start(&s.config);
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let run_ms = 300 + rng_state % 1200;
        std::thread::sleep(Duration::from_millis(run_ms));
        daemon.kill9();
        eprintln!("round {round}: killed after {run_ms} ms");
    }
    let mut daemon = DaemonProcess::start(&s.config);
    wait_files(&s, &files, Duration::from_secs(120), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
    files_exactly_once(&s, &files).unwrap();
}

#[test]
fn rebuild_state_over_a_file_index_table_registers_nothing_twice() {
    let s = file_index_setup(&[]);
    let files = binary_files(&s, 6);
    let mut daemon = DaemonProcess::start(&s.config);
    wait_files(&s, &files, Duration::from_secs(60), &daemon);
    assert_eq!(daemon.terminate(), Some(0));
    let registered = raw_files_posts(&s);
    std::fs::remove_dir_all(s.config.with_file_name("state")).unwrap();
    let earlier_log = daemon.log_text().len();
    let mut daemon = DaemonProcess::start_with(&s.config, |cmd| {
        cmd.arg("--rebuild-state");
    });
    // Not `upsync status` yet: it would hold the state database the rebuild needs.
    let log = || daemon.log_text()[earlier_log..].to_string();
    daemon.wait_until(Duration::from_secs(30), "the rebuild", || {
        log().contains("upsync is running")
    });
    assert!(
        log().contains("6 file(s) already uploaded, 0 to upload"),
        "{}",
        log()
    );
    wait_files(&s, &files, Duration::from_secs(60), &daemon);
    assert_eq!(raw_files_posts(&s), registered, "nothing registered again");
    assert_eq!(daemon.terminate(), Some(0));
}

// ---- dataset versions ----------------------------------------------------------------------

const DATASET: &str = "test.dataset";
const RELEASED_TABLE: &str = "test.dataset:v1_0.files";

/// `METHOD {path}` on the emulator's Redivis API with the token: (status, JSON or null).
fn redivis_call(s: &Setup, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", s.emulator.redivis_url());
    block_on(async {
        let response = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(TOKEN)
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await
            .expect("the emulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    })
}

fn release_next_version(s: &Setup) {
    let path = format!("/datasets/{DATASET}/versions/next/release");
    let (status, body) = redivis_call(s, reqwest::Method::POST, &path);
    assert_eq!(status, 200, "release: {body}");
}

fn api_requests(s: &Setup, endpoint: &str) -> u64 {
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    json_number(&stats["api_requests"][endpoint]).unwrap_or(0)
}

fn small_files(s: &Setup, names: &[&str], seed: u64) -> Vec<(String, PathBuf)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = s.inbox.join(name);
            write_file(&path, 2048 + i as u64, seed + i as u64);
            backdate(&path, 60);
            (name.to_string(), path)
        })
        .collect()
}

/// Whether `table` holds exactly `names`, each once and completed.
fn holds_exactly(s: &Setup, table: &str, names: &[&str]) -> Result<(), String> {
    let uploads = s.emulator.list_redivis_uploads(table, TOKEN);
    let mut held: Vec<String> = uploads
        .iter()
        .filter(|u| u["status"] == "completed")
        .map(|u| u["name"].as_str().unwrap_or_default().to_string())
        .collect();
    held.sort();
    let mut wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    wanted.sort();
    if held == wanted && uploads.len() == names.len() {
        Ok(())
    } else {
        Err(format!(
            "{table} holds {held:?} of {} uploads, not {wanted:?}",
            uploads.len()
        ))
    }
}

/// Starts the daemon on `names` and releases the version once all are posted (and still
/// importing, with the emulator's processing delay).
fn release_while_importing(s: &Setup, names: &[&str]) -> DaemonProcess {
    small_files(s, names, 10);
    let daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "every file posted", || {
        s.emulator.list_redivis_uploads(TABLE, TOKEN).len() == names.len()
    });
    release_next_version(s);
    daemon
}

fn folder_status(config: &Path) -> serde_json::Value {
    status_json(config)["folders"][0].clone()
}

/// Three files are importing when the version is released: the release takes them along
/// and they are recorded as uploaded in it. Two files written afterwards wait (never
/// failed) while the dataset has no next version, and go into it once one is opened.
#[test]
fn a_release_mid_run_makes_new_files_wait_until_a_next_version_exists() {
    let s = setup(&["--redivis-processing-delay", "3s"], "");
    let port = listen_for_metrics(&s);
    let first = ["a.csv", "b.csv", "c.csv"];
    let mut daemon = release_while_importing(&s, &first);
    let later = ["d.csv", "e.csv"];
    small_files(&s, &later, 20);
    daemon.wait_until(Duration::from_secs(60), "the folder to wait", || {
        let folder = folder_status(&s.config);
        folder["remote_check"]["state"] == "waiting" && json_number(&folder["queued"]) == Some(2)
    });
    let folder = folder_status(&s.config);
    assert_eq!(
        folder["remote_check"]["reason"], "dataset has no unreleased version",
        "{folder}"
    );
    assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
    let metrics = get_text(&format!("http://127.0.0.1:{port}/metrics"));
    let check = "upsync_folder_remote_check_state";
    assert_eq!(
        sample(&metrics, check, &["waiting"]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, check, &["ready"]), Some(0.0), "{metrics}");
    daemon.wait_until(Duration::from_secs(60), "the first files imported", || {
        holds_exactly(&s, RELEASED_TABLE, &first).is_ok()
            && json_number(&folder_status(&s.config)["done"]) == Some(3)
    });

    let path = format!("/datasets/{DATASET}/versions");
    let (status, body) = redivis_call(&s, reqwest::Method::POST, &path);
    assert_eq!(status, 200, "open a version: {body}");
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(
        Duration::from_secs(60),
        "the new files in the new version",
        || holds_exactly(&s, TABLE, &later).is_ok(),
    );
    holds_exactly(&s, RELEASED_TABLE, &first).unwrap();
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    assert_eq!(json_number(&stats["uploads_created"]), Some(5), "{stats}");
    assert_eq!(
        api_requests(&s, "versions.post"),
        1,
        "only the test opened one"
    );
    let folder = folder_status(&s.config);
    assert_eq!(folder["remote_check"]["state"], "ready", "{folder}");
    assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// `sync --once` does not wait for a version nobody may open: it names the file and why.
#[test]
fn sync_once_reports_files_waiting_for_a_next_version_at_once() {
    let s = setup(&[], "");
    s.emulator.create_redivis_table(TABLE, false);
    release_next_version(&s);
    small_files(&s, &["a.csv"], 60);
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = upsync(&["sync", "--once", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let output = format!("{stdout}{stderr}");
    assert!(output.contains("a.csv"), "{output}");
    assert!(
        output.contains("dataset has no unreleased version"),
        "{output}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{output}");
    assert!(s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty());
}

/// With `create_next_version = true`, a release mid-run is followed by exactly one new
/// version opened by upsync, and the mirror goes on without anyone: every file once.
#[test]
fn with_create_next_version_upsync_opens_exactly_one_version_after_a_release() {
    let s = setup_with(
        TABLE,
        &["--redivis-processing-delay", "2s"],
        "chunk_size = \"1MiB\"",
        "create_next_version = true",
    );
    let first = ["a.csv", "b.csv", "c.csv"];
    let mut daemon = release_while_importing(&s, &first);
    let later = ["d.csv", "e.csv", "f.csv", "g.csv"];
    small_files(&s, &later, 40);
    daemon.wait_until(Duration::from_secs(90), "every file mirrored once", || {
        holds_exactly(&s, RELEASED_TABLE, &first).is_ok()
            && holds_exactly(&s, TABLE, &later).is_ok()
            && json_number(&folder_status(&s.config)["done"]) == Some(7)
    });
    assert_eq!(
        api_requests(&s, "versions.post"),
        1,
        "exactly one version opened"
    );
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    assert_eq!(json_number(&stats["uploads_created"]), Some(7), "{stats}");
    let folder = folder_status(&s.config);
    assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
    assert_eq!(daemon.terminate(), Some(0));
    // The folder waited for no one: the release is told at info, never as a wait.
    let log = daemon.log_text();
    // Each file's line names the version it was imported into.
    for (table, names) in [(RELEASED_TABLE, &first[..]), (TABLE, &later[..])] {
        for name in names {
            let remote = format!("remote={table}/{name}");
            assert!(
                log.lines()
                    .any(|l| l.contains(" imported ") && l.contains(&remote)),
                "{remote} in {log}"
            );
        }
    }
    assert!(
        log.contains("the dataset's unreleased version was released; the folder opens a new one"),
        "{log}"
    );
    assert!(!log.contains("the folder waits"), "{log}");
}

/// A small file posted inline in the window between a release and the next version (the
/// emulator opens that version right after refusing the post, before upsync can look): the
/// folder waits a moment (a line at info, no warning), the file is never failed, and it goes
/// into the new version once.
#[test]
fn a_file_posted_between_a_release_and_the_next_version_goes_into_the_new_version() {
    let s = setup(&[], "");
    small_files(&s, &["a.csv"], 70);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the first file mirrored", || {
        json_number(&folder_status(&s.config)["done"]) == Some(1)
    });
    s.emulator.post_json(
        "/_emulator/redivis/release-window",
        &serde_json::json!({"endpoint": "uploads.post"}),
    );
    small_files(&s, &["b.csv"], 80);
    daemon.wait_until(
        Duration::from_secs(60),
        "the second file in the new version",
        || {
            let folder = folder_status(&s.config);
            assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
            holds_exactly(&s, TABLE, &["b.csv"]).is_ok() && json_number(&folder["done"]) == Some(2)
        },
    );
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    assert_eq!(json_number(&stats["release_windows"]), Some(1), "{stats}");
    assert_eq!(json_number(&stats["uploads_created"]), Some(2), "{stats}");
    assert_eq!(api_requests(&s, "versions.post"), 0, "the version was open");
    holds_exactly(&s, RELEASED_TABLE, &["a.csv"]).unwrap();
    let folder = folder_status(&s.config);
    assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
    assert_eq!(folder["remote_check"]["state"], "ready", "{folder}");
    assert_eq!(daemon.terminate(), Some(0));
    // The new version was open by then: the folder waited for no one, and says so.
    let log = daemon.log_text();
    assert!(
        log.contains("a new one is open; the folder's files go into it"),
        "{log}"
    );
    assert!(!log.contains("the folder waits"), "{log}");
}

// ---- import failures -----------------------------------------------------------------------

/// A file Redivis cannot parse fails with Redivis' own message, its upload is removed (the
/// name is free again) and it is not posted again; fixed, it uploads under the same name.
#[test]
fn a_malformed_file_fails_with_redivis_message_and_its_fixed_version_takes_the_name() {
    let options = "[folder.redivis_options]\ntype = \"delimited\"\ndelimiter = \",\"";
    let s = setup_with(TABLE, &[], "chunk_size = \"1MiB\"", options);
    let path = s.inbox.join("survey.csv");
    std::fs::write(&path, "id,answer\n1,yes\n2,no,extra\n3,maybe\n").unwrap();
    backdate(&path, 120);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file to fail", || {
        json_number(&folder_status(&s.config)["failed"]) == Some(1)
    });
    let status = status_json(&s.config);
    let reason = status["failed"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("line 3"), "Redivis' errorMessage: {reason}");
    assert!(
        s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty(),
        "the failed upload is removed from the table"
    );

    std::fs::write(&path, "id,answer\n1,yes\n2,no\n3,maybe\n").unwrap();
    backdate(&path, 60);
    daemon.wait_until(Duration::from_secs(60), "the fixed file uploaded", || {
        holds_exactly(&s, TABLE, &["survey.csv"]).is_ok()
            && json_number(&folder_status(&s.config)["done"]) == Some(1)
    });
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    assert_eq!(
        json_number(&stats["uploads_created"]),
        Some(2),
        "posted once failing, once fixed: {stats}"
    );
    assert_eq!(json_number(&folder_status(&s.config)["failed"]), Some(0));
    assert_eq!(daemon.terminate(), Some(0));
}

/// A crash after the failure was recorded and before the failed upload was removed: the
/// next start removes it and fails the file with the recorded reason, posting nothing.
#[test]
fn a_crash_between_a_failed_import_and_its_removal_is_finished_at_the_next_start() {
    let options = "[folder.redivis_options]\ntype = \"delimited\"\ndelimiter = \",\"";
    let s = setup_with(
        TABLE,
        &["--redivis-processing-delay", "4s"],
        "chunk_size = \"1MiB\"",
        options,
    );
    let path = s.inbox.join("survey.csv");
    std::fs::write(&path, "id,answer\n1,yes\n2,no,extra\n").unwrap();
    backdate(&path, 120);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file importing", || {
        json_number(&folder_status(&s.config)["importing"]) == Some(1)
    });
    daemon.kill9();
    // As if the daemon had recorded the failure and died before the removal.
    let store = upsync::queue::Store::open(&s._tmp.path().join("state")).unwrap();
    let job = store
        .importing_jobs()
        .unwrap()
        .pop()
        .expect("an importing job");
    let uri = job.import.as_ref().expect("its import").remote.clone();
    store
        .mark_import_failed(job.id, &uri, "Redivis could not import: recorded reason")
        .unwrap();
    drop(store);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file failed", || {
        json_number(&folder_status(&s.config)["failed"]) == Some(1)
    });
    let status = status_json(&s.config);
    assert_eq!(
        status["failed"][0]["reason"], "Redivis could not import: recorded reason",
        "{status}"
    );
    assert!(s.emulator.list_redivis_uploads(TABLE, TOKEN).is_empty());
    let stats = s.emulator.get_json("/_emulator/redivis/stats");
    assert_eq!(json_number(&stats["uploads_created"]), Some(1), "{stats}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A token revoked or rotated while an upload imports: the poll the remote refuses fails
/// nothing, and the wait polls again until the credentials are accepted (here at the next
/// poll: the fault answers once), then records the upload.
#[test]
fn an_import_poll_refused_for_its_credentials_polls_again_and_the_file_lands() {
    let s = setup_with(
        TABLE,
        &["--redivis-processing-delay", "3s"],
        "chunk_size = \"1MiB\"",
        "",
    );
    let path = s.inbox.join("survey.csv");
    std::fs::write(&path, "id,answer\n1,yes\n2,no\n").unwrap();
    backdate(&path, 120);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file importing", || {
        json_number(&folder_status(&s.config)["importing"]) == Some(1)
    });
    let refusal = serde_json::json!([{"target": "redivis-api", "action": {"status": 401}}]);
    s.emulator.post_json("/_emulator/faults", &refusal);
    daemon.wait_until(Duration::from_secs(60), "the file imported", || {
        json_number(&folder_status(&s.config)["done"]) == Some(1)
    });
    let folder = folder_status(&s.config);
    assert_eq!(json_number(&folder["failed"]), Some(0), "{folder}");
    let faults = &s.emulator.get_json("/_emulator/stats")["faults"];
    assert_eq!(
        faults["status_401"], 1,
        "the poll was refused once: {faults}"
    );
    let uploads = s.emulator.list_redivis_uploads(TABLE, TOKEN);
    assert_eq!(uploads.len(), 1, "posted once: {uploads:?}");
    assert_eq!(daemon.terminate(), Some(0));
}

// ---- log lines -----------------------------------------------------------------------------

/// Adds `metrics_listen` on a free port to the setup's config; returns the port.
fn listen_for_metrics(s: &Setup) -> u16 {
    let port = free_port();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}");
    std::fs::write(&s.config, text).unwrap();
    port
}

/// The number after `field=` in `line`.
fn field_ms(line: &str, field: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{field}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// The "imported" line names the table and the upload, its rate counts the transfer only
/// and the import's time is a field (and a histogram) of its own.
#[test]
fn the_imported_line_names_table_and_upload_and_times_the_import_apart() {
    let s = setup(&["--redivis-processing-delay", "2s"], "");
    let port = listen_for_metrics(&s);
    std::fs::create_dir_all(s.inbox.join("2024")).unwrap();
    small_files(&s, &["2024/a.csv"], 50);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file imported", || {
        json_number(&folder_status(&s.config)["done"]) == Some(1)
    });
    let metrics = get_text(&format!("http://127.0.0.1:{port}/metrics"));
    let count = "upsync_import_duration_seconds_count";
    assert_eq!(
        sample(&metrics, count, &["redivis"]),
        Some(1.0),
        "{metrics}"
    );
    let sum = sample(&metrics, "upsync_import_duration_seconds_sum", &["redivis"]);
    assert!(sum.is_some_and(|seconds| seconds >= 1.0), "{metrics}");
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(" imported ") && l.contains("2024/a.csv"))
        .unwrap_or_else(|| panic!("no 'imported' line in the log: {log}"));
    assert!(
        line.contains("remote=test.dataset:next.files/2024/a.csv"),
        "{line}"
    );
    let (transfer, import) = (field_ms(line, "duration_ms"), field_ms(line, "import_ms"));
    assert!(import >= 1000, "the 2 s import is timed apart: {line}");
    assert!(transfer < import, "the import is not transfer time: {line}");
}

/// An import into the old table that ends after a reload moved the folder to another table
/// is not taken as the file's upload: the file is uploaded into the new table too.
#[test]
fn an_import_that_ends_after_a_reload_moved_the_folder_to_another_table_is_sent_there() {
    const OTHER_TABLE: &str = "test.dataset:next.moved";
    let s = setup(&["--redivis-processing-delay", "4s"], "");
    small_files(&s, &["a.csv"], 7);
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(Duration::from_secs(60), "the file importing", || {
        json_number(&folder_status(&s.config)["importing"]) == Some(1)
    });

    config_for(&s.emulator, OTHER_TABLE, "chunk_size = \"1MiB\"", "").write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(Duration::from_secs(20), "the reload to apply", || {
        let folder = folder_status(&s.config);
        folder["target"]
            .as_str()
            .unwrap_or("")
            .contains(OTHER_TABLE)
    });
    assert_eq!(
        json_number(&folder_status(&s.config)["importing"]),
        Some(1),
        "the import ended before the reload: {}",
        daemon.log_text()
    );
    daemon.wait_settled(&s.config, 1);
    holds_exactly(&s, OTHER_TABLE, &["a.csv"]).expect("the new table holds the file");
    holds_exactly(&s, TABLE, &["a.csv"]).expect("the old table keeps its import");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A folder moved to another table by a reload: its files are uploaded into the new table,
/// and a file changed afterwards replaces its upload there, never the old table's copy.
#[test]
fn a_folder_moved_to_another_table_by_a_reload_uploads_there_and_leaves_the_old_table_alone() {
    const OTHER_TABLE: &str = "test.dataset:next.moved";
    let s = setup(&[], "");
    let files = small_files(&s, &["a.csv", "b.csv"], 7);
    let names = ["a.csv", "b.csv"];
    let mut daemon = DaemonProcess::start(&s.config);
    daemon.wait_until(
        Duration::from_secs(60),
        "the files in the first table",
        || holds_exactly(&s, TABLE, &names).is_ok(),
    );
    daemon.wait_settled(&s.config, 2);

    config_for(&s.emulator, OTHER_TABLE, "chunk_size = \"1MiB\"", "").write(&s.config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_until(
        Duration::from_secs(60),
        "the files in the new table",
        || holds_exactly(&s, OTHER_TABLE, &names).is_ok(),
    );
    daemon.wait_settled(&s.config, 2);

    let changed = &files[0].1;
    write_file(changed, 3000, 99);
    let changed_md5 = file_md5_hex(changed).unwrap();
    daemon.wait_until(
        Duration::from_secs(60),
        "the changed file replacing its upload in the new table",
        || {
            let uploads = s.emulator.list_redivis_uploads(OTHER_TABLE, TOKEN);
            holds_exactly(&s, OTHER_TABLE, &names).is_ok()
                && uploads.iter().any(|upload| {
                    upload["name"] == "a.csv"
                        && upload["hash"].as_str().unwrap_or("").to_lowercase() == changed_md5
                })
        },
    );
    daemon.wait_settled(&s.config, 2);
    holds_exactly(&s, TABLE, &names).expect("the old table keeps its uploads");
    assert_eq!(daemon.terminate(), Some(0));
}
