//! Idle after churn: a daemon uploads a burst of files, then a third of them again after
//! they changed, and is then left alone. An idle daemon should write nothing, keep its
//! memory, and its state database should take little more room than the data it holds.
//!
//! 1. Upload the files, change a third of them, wait until every upload is done.
//! 2. Let the daemon settle: once idle it compacts its database if the churn bloated it
//!    (its "compacting" log line, then "compacted"); what the compaction did is reported.
//! 3. Sample the daemon over the idle window; measure the database's files at the end,
//!    while the daemon still runs.
//! 4. Stop it, and weigh the live data (key + value bytes of every tree).

use std::path::{Path, PathBuf};
use std::time::Duration;

use upsync::queue::Store;

use crate::harness::*;
use crate::scenarios::wait_stored;
use crate::{Row, Sizes, Verdict};

/// How often the idle daemon is sampled (memory can grow and shrink in between).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What the idle window measured.
struct Idle {
    compaction: Option<Compacted>,
    files: u64,
    changed: u64,
    window: Duration,
    watched: Watched,
    live_bytes: u64,
    on_disk_bytes: u64,
}

pub async fn idle_after_churn(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("idle")?;
    let staging = dir.join("staging");
    eprintln!("  writing {} files of 1 KiB", sizes.churn_files);
    let paths = write_small_files(&staging, sizes.churn_files, 1024, 1000, 21)?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let result = churn_then_idle(ctx, &dir, &emulator, &staging, &paths, sizes.idle_window).await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows(&result?))
}

async fn churn_then_idle(
    ctx: &Ctx,
    dir: &Path,
    emulator: &Emulator,
    staging: &Path,
    paths: &[PathBuf],
    window: Duration,
) -> BenchResult<Idle> {
    let (config, inbox) = DaemonConfig::kifs_inbox(dir, emulator)?;
    let daemon = Daemon::start(ctx, dir, &config).await?;
    let measured = async {
        let files = paths.len() as u64;
        let stored = emulator.kifs_files_stored().await?;
        eprintln!("  uploading {files} files");
        move_children(staging, &inbox)?;
        wait_stored(emulator, stored + files).await?;
        let changed: Vec<PathBuf> = paths
            .iter()
            .step_by(3)
            .map(|p| inbox.join(p.strip_prefix(staging).expect("files are under staging")))
            .collect();
        eprintln!("  changing {} of them", changed.len());
        rewrite_files(&changed, 22)?;
        wait_stored(emulator, stored + files + changed.len() as u64).await?;
        daemon
            .wait_drained(files, Duration::from_millis(200))
            .await?;
        let compaction = wait_compaction(&daemon).await?;
        eprintln!("  idle for {}", humantime::format_duration(window));
        let watched = watch_idle(&daemon, window).await?;
        let on_disk = db_files_size(&config.state_dir)?;
        Ok::<_, String>((files, changed.len() as u64, watched, compaction, on_disk))
    }
    .await;
    let stopped = daemon.terminate().await;
    let (files, changed, watched, compaction, on_disk_bytes) = measured?;
    stopped?;
    let space = Store::open(&config.state_dir)
        .and_then(|store| store.space())
        .map_err(|e| format!("cannot measure the state database: {e}"))?;
    Ok(Idle {
        compaction,
        files,
        changed,
        window,
        watched,
        live_bytes: space.live_bytes,
        on_disk_bytes,
    })
}

/// What the daemon's compaction logged.
pub struct Compacted {
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub paused: Duration,
    /// From the daemon's "compacting" line to its "compacted" line, as the bench saw it.
    pub seen: Duration,
}

/// The daemon's line when it starts compacting, and when it is done.
const COMPACTING: &str = "compacting the state database";
const COMPACTED: &str = "compacted the state database";
const KEPT: &str = "kept the state database";
/// The daemon's line when it weighed its database and found it compact enough.
const NOT_NEEDED: &str = "the state database needs no compaction";
/// How long an idle daemon may take to start compacting: its quiet time (5 s), a tick,
/// and the read of every entry that weighs the live data.
const COMPACTION_STARTS_WITHIN: Duration = Duration::from_secs(30);

/// Waits for the compaction a daemon makes once idle (step 2): `None` when it weighs its
/// database and finds it compact enough, starts none within
/// [`COMPACTION_STARTS_WITHIN`], or keeps its database (the copy would not have been
/// smaller).
pub async fn wait_compaction(daemon: &Daemon) -> BenchResult<Option<Compacted>> {
    let count = |line: &str| daemon.log_text().matches(line).count();
    let (before, done_before) = (count(COMPACTING), count(COMPACTED));
    let (kept_before, not_needed_before) = (count(KEPT), count(NOT_NEEDED));
    let started = std::time::Instant::now();
    while count(COMPACTING) == before {
        if count(NOT_NEEDED) > not_needed_before || started.elapsed() > COMPACTION_STARTS_WITHIN {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = std::time::Instant::now();
    eprintln!("  the daemon is compacting its state database");
    while count(COMPACTED) == done_before {
        if count(KEPT) > kept_before {
            eprintln!("  the daemon kept its state database: the copy would not be smaller");
            return Ok(None);
        }
        if seen.elapsed() > Duration::from_secs(1800) {
            return Err("the daemon's compaction did not end within 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.elapsed();
    let log = daemon.log_text();
    let figure = |name| {
        log_figure(&log, COMPACTED, name)
            .ok_or_else(|| format!("the daemon's compaction line has no {name}"))
    };
    Ok(Some(Compacted {
        before_bytes: figure("before_bytes")?,
        after_bytes: figure("after_bytes")?,
        paused: Duration::from_millis(figure("paused_ms")?),
        seen,
    }))
}

/// The length of the files of the state database (`state_dir/db`), read while the daemon
/// may hold it.
pub fn db_files_size(state_dir: &Path) -> BenchResult<u64> {
    let db = state_dir.join("db");
    upsync::queue::files_size(&db).map_err(|e| format!("measure {}: {e}", db.display()))
}

/// Moves every entry of `from` into `to` (renames: directories arrive whole).
fn move_children(from: &Path, to: &Path) -> BenchResult<()> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("list {}: {e}", from.display()))?;
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("list {}: {e}", from.display()))?;
    names.sort();
    for name in names {
        std::fs::rename(from.join(&name), to.join(&name))
            .map_err(|e| format!("move {} in: {e}", from.join(&name).display()))?;
    }
    Ok(())
}

/// What the idle window saw of the daemon.
struct Watched {
    start: ProcSample,
    end: ProcSample,
    peak_rss: u64,
    /// Times sled's own threads woke up, and the daemon's other threads.
    sled_wakeups: u64,
    own_wakeups: u64,
}

/// Samples the daemon at the start and the end of `window` and every [`SAMPLE_EVERY`] in
/// between (for the peak); nothing else talks to it meanwhile.
async fn watch_idle(daemon: &Daemon, window: Duration) -> BenchResult<Watched> {
    let (start, slept) = (daemon.sample()?, ThreadSleeps::read(daemon.pid)?);
    let mut peak = start.rss;
    loop {
        let left = window.saturating_sub(start.at.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(SAMPLE_EVERY)).await;
        peak = peak.max(daemon.sample()?.rss);
    }
    let (end, sleeps) = (daemon.sample()?, ThreadSleeps::read(daemon.pid)?);
    // sled's pool names its threads "sled-io-N".
    let (sled_wakeups, own_wakeups) = slept.wakeups_until(&sleeps, |name| name.starts_with("sled"));
    Ok(Watched {
        peak_rss: peak.max(end.rss),
        start,
        end,
        sled_wakeups,
        own_wakeups,
    })
}

fn rows(idle: &Idle) -> Vec<Row> {
    let what = format!(
        "Idle {} after churn ({} files of 1 KiB uploaded, {} of them changed and uploaded again)",
        humantime::format_duration(idle.window),
        idle.files,
        idle.changed
    );
    let w = &idle.watched;
    let seconds = (w.end.at - w.start.at).as_secs_f64();
    let per_second = |bytes: u64| bytes as f64 / seconds;
    let written = per_second(w.end.written - w.start.written);
    let stored = per_second(w.end.stored.saturating_sub(w.start.stored));
    let rss_change = (w.end.rss as f64 - w.start.rss as f64) / w.start.rss as f64;
    let cpu = (w.end.cpu - w.start.cpu).as_secs_f64();
    let ratio = idle.on_disk_bytes as f64 / idle.live_bytes as f64;
    let compaction = match &idle.compaction {
        Some(c) => format!(
            "{:.1} → {:.1} MiB, store paused {:.0} ms",
            mib(c.before_bytes),
            mib(c.after_bytes),
            c.paused.as_secs_f64() * 1e3
        ),
        None => "none (not bloated)".into(),
    };
    vec![
        Row {
            figure: format!("{what}: the daemon's compaction once idle, before the window"),
            upsync: compaction,
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            verdict: Verdict::Info,
        },
        Row {
            figure: format!("{what}: bytes written per second"),
            upsync: format!(
                "{written:.0} B/s (wchar), {stored:.0} B/s to storage; CPU {:.1} ms/s",
                cpu * 1000.0 / seconds
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "≤ 4096 B/s".into(),
            verdict: Verdict::of(written <= 4096.0),
        },
        Row {
            figure: format!(
                "{what}: times its threads woke up per second (voluntary context switches), the daemon's own and sled's"
            ),
            upsync: format!(
                "{:.1}/s own, {:.1}/s sled's",
                w.own_wakeups as f64 / seconds,
                w.sled_wakeups as f64 / seconds
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
        Row {
            figure: format!("{what}: RSS at the start and the end of the idle time"),
            upsync: format!(
                "{:.1} → {:.1} MiB ({:+.1} %), peak {:.1} MiB",
                mib(w.start.rss),
                mib(w.end.rss),
                rss_change * 100.0,
                mib(w.peak_rss)
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "≤ 5 % change".into(),
            verdict: Verdict::of(rss_change.abs() <= 0.05),
        },
        Row {
            figure: format!(
                "{what}: state database on disk at the end of the window vs its live data (key + value bytes of every tree)"
            ),
            upsync: format!("{:.1} MiB", mib(idle.on_disk_bytes)),
            baseline: format!("{:.1} MiB", mib(idle.live_bytes)),
            ratio: format!("{ratio:.2}"),
            target: "≤ 2.00".into(),
            verdict: Verdict::of(ratio <= 2.0),
        },
    ]
}
