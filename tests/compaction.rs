//! The daemon compacts its state database once idle after churn, and a `kill -9` in the
//! middle of that compaction loses nothing: the restart uploads nothing twice and nothing
//! is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Enough churn to grow the database past the size below which it is never compacted, and
/// far enough past a copy of its live data that the copy is swapped in: with 20,000 files
/// the copy took two thirds of the files it would replace, with 30,000 three fifths (three
/// quarters is the most a copy may take; a new database takes a few MiB however little it
/// holds).
const FILES: usize = 30000;

fn write_files(folder: &Path, version: u64) -> Vec<PathBuf> {
    (0..FILES)
        .map(|n| {
            let path = folder.join(format!("d{:02}/f{n:05}.txt", n % 50));
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, format!("file {n} version {version}")).expect("writes");
            path
        })
        .collect()
}

fn files_stored(site: &Site) -> u64 {
    site.emulator.kifs_stats()["files_stored"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_kill_during_the_idle_compaction_loses_nothing_and_uploads_nothing_twice() {
    let site = Site::start(&["data"], &[]);
    one_folder_config(&site, true, "", "")
        .each_folder(|folder| folder.with("settle = \"200ms\""))
        .write(&site.config);
    let state = site.tmp.path().join("state");
    let leftover = state.join("db.compact");
    let paths = write_files(&site.folders[0], 1);
    let mut daemon = DaemonProcess::start(&site.config);
    daemon.wait_until(
        Duration::from_secs(120),
        "the first upload of every file",
        || files_stored(&site) == FILES as u64,
    );
    let changed: Vec<&PathBuf> = paths.iter().step_by(3).collect();
    for path in &changed {
        std::fs::write(path, format!("{} changed", path.display())).expect("rewrites");
    }
    let expected = (FILES + changed.len()) as u64;
    daemon.wait_until(
        Duration::from_secs(120),
        "the changed files uploaded",
        || files_stored(&site) == expected,
    );

    // Idle now: the compaction copies into `db.compact` before it swaps.
    wait_until(
        Duration::from_secs(60),
        "the idle daemon to start compacting",
        || leftover.exists(),
    );
    daemon.kill9();
    let bloated = db_size(&state.join("db"));
    assert!(
        leftover.exists(),
        "the kill came while the compaction was under way"
    );

    let mut daemon = DaemonProcess::start(&site.config);
    daemon.wait_settled(&site.config, FILES as u64);
    assert_eq!(files_stored(&site), expected, "no file was uploaded twice");
    assert!(
        paths.iter().all(|path| site.emulator.kifs_holds(
            path,
            &format!(
                "ingest/{}",
                path.strip_prefix(&site.folders[0]).unwrap().display()
            )
        )),
        "every file's last version is on the remote"
    );
    // The restart compacts what the killed one could not.
    daemon.wait_until(
        Duration::from_secs(60),
        "the restarted daemon's compaction",
        || !leftover.exists() && db_size(&state.join("db")) < bloated,
    );
    daemon.terminate();
}

fn db_size(dir: &Path) -> u64 {
    walk(dir)
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
