//! The benchmark's quick mode runs end to end (real daemon, real emulator, curl) and prints
//! every figure, so the benchmark cannot rot. No timing is asserted: CI machines vary.

use std::process::Command;

#[test]
fn quick_benchmark_prints_every_figure() {
    if Command::new("curl").arg("--version").output().is_err() {
        // CI installs curl and says so: there a missing curl is a failure, not a skip.
        assert!(
            std::env::var_os("UPSYNC_REQUIRE_TOOLS").is_none(),
            "curl is required (UPSYNC_REQUIRE_TOOLS is set) but cannot run"
        );
        eprintln!("skipping: the benchmark's baselines need curl, which is not installed");
        return;
    }
    // No --bin-path: under cargo the benchmark builds the daemon next to itself first (a
    // no-op after `cargo test` at the top, which built both) and measures that one.
    let output = Command::new(env!("CARGO_BIN_EXE_upsync-bench"))
        .arg("--quick")
        .output()
        .expect("the benchmark binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick benchmark failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let mut figures = vec![
        "Redivis resumable, 8 MiB chunks vs curl PUT",
        "KiFS multipart, Avro binary vs curl POST",
        "KiFS multipart, JSON/base64 vs curl POST",
        "Peak RSS, 4 files of 16 MiB at once, Redivis",
        "Peak RSS, one 64 MiB file vs one 16 MiB file, Redivis",
        "Peak RSS, 4 files of 16 MiB at once, KiFS",
        "Peak RSS, one 64 MiB file vs one 16 MiB file, KiFS",
        "files of 4 KiB to KiFS vs one file of",
        "the same ratio for curl sending the daemon's requests",
        "files of 4 KiB to KiFS: HTTP requests per file",
        "files of 4 KiB to KiFS: state database flushes and writes",
        "files of 4 KiB to Redivis: API requests per file",
        "files of 4 KiB to a Redivis file index table: API requests per file",
        "Restart over 1000 uploaded files",
        "Restart over 1000 uploaded files in a folder that propagates deletions",
        "Latency, 1 KiB file closed",
        "files of 4 KiB to Redivis, 2 s import each, 4 workers: wall time",
        "Redivis: daemon CPU per GiB",
        "Redivis: daemon CPU per GiB vs the MD5 of a GiB plus curl's CPU",
        "files of 4 KiB to KiFS: CPU per file, daemon vs emulator",
        "after churn (300 files of 1 KiB uploaded, 100 of them changed and uploaded again): bytes written per second",
        "after churn (300 files of 1 KiB uploaded, 100 of them changed and uploaded again): RSS",
        "after churn (300 files of 1 KiB uploaded, 100 of them changed and uploaded again): state database on disk",
        "`upsync status --json`, daemon stopped",
        "Metrics scrape of a running daemon",
        "`upsync forget` of one file through the running daemon",
        "`upsync ls` through the running daemon",
    ];
    if shm_is_tmpfs() {
        figures.push("the same, the emulator storing in memory (tmpfs)");
    }
    for figure in figures {
        let row = stdout
            .lines()
            .find(|line| line.starts_with('|') && line.contains(figure))
            .unwrap_or_else(|| panic!("no row for {figure:?} in:\n{stdout}\n{stderr}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | figure | upsync | baseline | ratio | target | verdict |
        assert_eq!(cells.len(), 8, "malformed row {row:?}");
        assert!(
            cells[2].chars().any(|c| c.is_ascii_digit()),
            "no measured value in {row:?}"
        );
        assert!(
            !row.contains("ERROR") && !row.contains("not reported"),
            "figure not measured: {row:?}"
        );
        if figure.contains("CPU per file") || figure.contains("storing in memory") {
            assert!(
                cells[2].contains("page faults"),
                "no page faults in {row:?}"
            );
        }
        if figure.contains("storing in memory") {
            assert!(cells[2].contains("curl"), "no curl ratio in {row:?}");
        }
    }
}

/// Whether `/dev/shm` is a tmpfs mount, where the small-file rounds run a second time with
/// the emulator storing in memory (the benchmark asks the same table).
fn shm_is_tmpfs() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|mount| {
            let mut fields = mount.split_whitespace().skip(1);
            (fields.next(), fields.next()) == (Some("/dev/shm"), Some("tmpfs"))
        })
    })
}
