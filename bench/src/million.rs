//! A million files: the first mirror of a large tree to KiFS, the daemon's memory while it
//! runs, the inotify watches it holds, and a restart over the mirrored tree: right after
//! the mirror, and again once the restarted daemon, idle, compacted its state database.
//! The emulator runs as its own process, so the daemon's figures are its own.
//!
//! Not part of the default run (it needs about 10 GB of disk and a quarter of an hour):
//! `upsync-bench --only million`. `UPSYNC_BENCH_MILLION_FILES=200000` runs the same shape
//! (100 files to a directory) with fewer files, to see how each figure grows with the
//! file count.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::idle::{Compacted, wait_compaction};
use crate::scenarios::{size_label, time_find, wait_stored};
use crate::{Row, Sizes, Verdict};

/// Files per directory of the tree.
const PER_DIR: u64 = 100;
const FILE_SIZE: u64 = 1024;
/// The daemon's peak RSS target for the first mirror.
const PEAK_RSS_TARGET_MIB: f64 = 150.0;

/// What the two daemon runs measured.
struct Million {
    files: u64,
    mirror: Duration,
    mirror_cpu: Duration,
    emulator_cpu: Option<Duration>,
    peak_rss: u64,
    watches: Option<u64>,
    find: Duration,
    restart: Duration,
    restart_uploads: u64,
    restart_jobs: u64,
    restart_peak_rss: u64,
    /// The restarted daemon's compaction once idle, and a restart over its result.
    compaction: Option<Compacted>,
    compacted_restart: Duration,
    compacted_restart_uploads: u64,
}

pub async fn million(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let files = std::env::var("UPSYNC_BENCH_MILLION_FILES")
        .ok()
        .and_then(|files| files.parse().ok())
        .unwrap_or(sizes.million_files);
    let dir = ctx.fresh_dir("million")?;
    let tree = dir.join("tree");
    eprintln!("  writing {files} files of 1 KiB, {PER_DIR} to a directory");
    let started = Instant::now();
    write_tree(&tree, files, FILE_SIZE, PER_DIR, 31, drop)?;
    eprintln!("  written in {:.0} s", started.elapsed().as_secs_f64());
    let emulator = Emulator::start_process(ctx, &dir.join("remote"), &["ingest"]).await?;
    let result = mirror_and_restart(ctx, &dir, &emulator, &tree, files).await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows(&result?))
}

async fn mirror_and_restart(
    ctx: &Ctx,
    dir: &Path,
    emulator: &Emulator,
    tree: &Path,
    files: u64,
) -> BenchResult<Million> {
    let mut config = DaemonConfig::new(dir, emulator);
    config.folders.push((
        tree.to_path_buf(),
        Remote::Kifs {
            directory: "ingest".into(),
        },
    ));
    let emulator_cpu_before = emulator.pid().map(process_cpu).transpose()?;
    eprintln!("  first mirror");
    let spawned = Instant::now();
    let first = Daemon::start(ctx, dir, &config).await?;
    let mirrored = async {
        wait_stored(emulator, files).await?;
        let mirror = spawned.elapsed();
        let sample = first.sample()?;
        let watches = inotify_watches(first.pid);
        first.wait_drained(files, Duration::from_secs(2)).await?;
        Ok::<_, String>((mirror, sample.cpu, watches, first.peak_rss()?))
    }
    .await;
    first.terminate().await?;
    let (mirror, mirror_cpu, watches, peak_rss) = mirrored?;
    let emulator_cpu = match (emulator.pid(), emulator_cpu_before) {
        (Some(pid), Some(before)) => Some(process_cpu(pid)? - before),
        _ => None,
    };
    eprintln!("  find");
    let find = time_find(tree).await?;
    let uploads_before = emulator.kifs_uploads().await?;
    eprintln!("  restart");
    let second = Daemon::start(ctx, dir, &config).await?;
    let restarted = async {
        // Anything the restart would upload again shows up within a settle time or two.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = second.status().await?;
        let jobs: u64 = report
            .folders
            .iter()
            .map(|f| f.counts.queued + f.counts.active + f.counts.retry_wait + f.counts.failed)
            .sum();
        Ok::<_, String>((jobs, second.peak_rss()?))
    }
    .await;
    let restart = second.startup;
    let compaction = match restarted {
        Ok(_) => wait_compaction(&second).await,
        Err(_) => Ok(None),
    };
    second.terminate().await?;
    let (restart_jobs, restart_peak_rss) = restarted?;
    let compaction = compaction?;
    let restart_uploads = emulator.kifs_uploads().await? - uploads_before;
    eprintln!("  restart over the compacted database");
    let uploads_before = emulator.kifs_uploads().await?;
    let third = Daemon::start(ctx, dir, &config).await?;
    let compacted_restart = third.startup;
    tokio::time::sleep(Duration::from_secs(2)).await;
    third.terminate().await?;
    let compacted_restart_uploads = emulator.kifs_uploads().await? - uploads_before;
    Ok(Million {
        files,
        mirror,
        mirror_cpu,
        emulator_cpu,
        peak_rss,
        watches,
        find,
        restart,
        restart_uploads,
        restart_jobs,
        restart_peak_rss,
        compaction,
        compacted_restart,
        compacted_restart_uploads,
    })
}

/// The inotify watches a process holds (the `inotify wd:` lines of its inotify
/// descriptors' fdinfo); `None` when /proc cannot tell.
fn inotify_watches(pid: u32) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut watches = 0;
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        watches += info
            .lines()
            .filter(|line| line.starts_with("inotify wd:"))
            .count() as u64;
    }
    Some(watches)
}

fn rows(m: &Million) -> Vec<Row> {
    let tree = format!(
        "{} files of {} in {} directories",
        m.files,
        size_label(FILE_SIZE),
        m.files.div_ceil(PER_DIR)
    );
    let per_file_us = |cpu: Duration| micros_per_file(cpu, m.files);
    let ratio = m.restart.as_secs_f64() / m.find.as_secs_f64();
    let compacted_ratio = m.compacted_restart.as_secs_f64() / m.find.as_secs_f64();
    let info = |figure: String, upsync: String| Row {
        figure,
        upsync,
        baseline: "-".into(),
        ratio: "-".into(),
        target: "(reported)".into(),
        verdict: Verdict::Info,
    };
    vec![
        info(
            format!("First mirror of {tree} to KiFS (emulator in its own process)"),
            format!(
                "{:.0} s ({:.0} files/s); daemon CPU {:.0} µs per file, emulator {}",
                m.mirror.as_secs_f64(),
                m.files as f64 / m.mirror.as_secs_f64(),
                per_file_us(m.mirror_cpu),
                m.emulator_cpu.map_or("?".into(), |cpu| format!(
                    "{:.0} µs per file",
                    per_file_us(cpu)
                ))
            ),
        ),
        Row {
            figure: format!("Daemon peak RSS during the first mirror of {tree}"),
            upsync: format!("{:.1} MiB", mib(m.peak_rss)),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("≤ {PEAK_RSS_TARGET_MIB:.0} MiB"),
            verdict: Verdict::of(mib(m.peak_rss) <= PEAK_RSS_TARGET_MIB),
        },
        info(
            format!("inotify watches held for {tree}"),
            m.watches
                .map_or("not readable from /proc".into(), |w| format!("{w}")),
        ),
        Row {
            figure: format!(
                "Restart over the mirrored {tree}: time until idle vs find -printf '%s %T@'"
            ),
            upsync: format!(
                "{:.2} s, {} uploads, {} jobs; peak RSS {:.1} MiB",
                m.restart.as_secs_f64(),
                m.restart_uploads,
                m.restart_jobs,
                mib(m.restart_peak_rss)
            ),
            baseline: format!("{:.2} s", m.find.as_secs_f64()),
            ratio: format!("{ratio:.2}"),
            target: "≤ 2.00, 0 uploads".into(),
            verdict: Verdict::of(ratio <= 2.0 && m.restart_uploads == 0 && m.restart_jobs == 0),
        },
        Row {
            figure: format!(
                "Restart over the mirrored {tree} once the idle daemon compacted its state database ({})",
                match &m.compaction {
                    Some(c) => format!(
                        "{:.0} → {:.0} MiB, store paused {:.1} s",
                        mib(c.before_bytes),
                        mib(c.after_bytes),
                        c.paused.as_secs_f64()
                    ),
                    None =>
                        "it did not compact: none was due, or the copy would not have been smaller"
                            .into(),
                }
            ),
            upsync: format!(
                "{:.2} s, {} uploads",
                m.compacted_restart.as_secs_f64(),
                m.compacted_restart_uploads
            ),
            baseline: format!("{:.2} s", m.find.as_secs_f64()),
            ratio: format!("{compacted_ratio:.2}"),
            target: "≤ 2.00, 0 uploads".into(),
            verdict: Verdict::of(compacted_ratio <= 2.0 && m.compacted_restart_uploads == 0),
        },
    ]
}
