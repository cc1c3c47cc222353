//! What `upsync status`, a metrics scrape, `upsync forget` and `upsync ls` cost with a
//! large ledger, against the same with a ledger of ten files: the first three read a few
//! entries per folder or per file, so they should cost the same at both sizes; a list
//! prints every file, and should take time with the ledger but not memory.
//!
//! 1. Fill a state database directly (no uploads): the ledger entries spread over
//!    [`FOLDERS`] folders. One transaction per entry, each also rewriting its folder's
//!    count, grows sled's log well beyond what the entries take (a daemon records its
//!    uploads in batches); the daemon compacts it in step 2.
//! 2. Start the daemon over it with `metrics_listen`. Once idle it compacts the database
//!    as it would after recording the uploads itself (its time and the daemon's peak
//!    memory are reported). Scrape `/metrics`: the median of [`SCRAPES`].
//! 3. `upsync ls` through the daemon, once: its time and lines, the command's peak RSS,
//!    the daemon's RSS before it, the highest sampled during it and a second after. Then
//!    `upsync forget` of one file through the daemon: the best of [`ROUNDS`], a file of
//!    another folder each time (the files are not on disk: each is only forgotten). Stop
//!    the daemon.
//! 4. `upsync status --json` on the stopped daemon: the best of [`ROUNDS`]. The daemon's
//!    orderly stop left the status summary, which the command reads. Then the same
//!    without it, as after a crash (the summary removed before each run): the command
//!    opens the database.

use std::path::Path;
use std::time::{Duration, Instant};

use upsync::fingerprint::Fingerprint;
use upsync::queue::{FileKey, Store};

use crate::harness::*;
use crate::idle::{Compacted, db_files_size, wait_compaction};
use crate::{Row, Sizes, Verdict};

const FOLDERS: u64 = 10;
const ROUNDS: usize = 5;
const SCRAPES: usize = 21;
const STATUS_TARGET: Duration = Duration::from_millis(50);
const FORGET_TARGET: Duration = Duration::from_millis(50);
/// How much more the command may hold listing the large ledger than the small one.
const LIST_MEMORY_GROWTH: f64 = 2.0;
const SCRAPE_TARGET: Duration = Duration::from_millis(10);

/// The two costs for one ledger size, and what the state database took.
struct Costs {
    status: Duration,
    /// `status` with no summary to read: it opens the database.
    status_opening: Duration,
    scrape: Duration,
    filled_bytes: u64,
    compaction: Option<Compacted>,
    daemon_peak_rss: u64,
    on_disk_bytes: u64,
    listing: Listing,
    forget: Duration,
}

/// What one `upsync ls` through the running daemon cost.
struct Listing {
    took: Duration,
    lines: u64,
    command_peak_rss: u64,
    daemon_before: u64,
    /// The daemon's highest RSS sampled during the list.
    daemon_during: u64,
    /// The daemon's RSS a second after the list.
    daemon_after: u64,
}

pub async fn status_cost(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let emulator = Emulator::start(&ctx.fresh_dir("status-remote")?, &["ingest"]).await?;
    let result = async {
        let small = measure(ctx, &emulator, "status-small", 10).await?;
        let large = measure(ctx, &emulator, "status-large", sizes.status_ledger).await?;
        Ok::<_, String>(rows(sizes.status_ledger, &small, &large))
    }
    .await;
    emulator.stop().await;
    result
}

async fn measure(ctx: &Ctx, emulator: &Emulator, name: &str, entries: u64) -> BenchResult<Costs> {
    let dir = ctx.fresh_dir(name)?;
    let mut config = DaemonConfig::new(&dir, emulator);
    config.metrics_listen = Some("127.0.0.1:0");
    for n in 0..FOLDERS {
        let folder = dir.join(format!("folder-{n}"));
        std::fs::create_dir_all(&folder)
            .map_err(|e| format!("create {}: {e}", folder.display()))?;
        // A directory each: two folders may not feed one (their names would collide).
        config.folders.push((
            folder,
            Remote::Kifs {
                directory: format!("ingest{n}"),
            },
        ));
    }
    eprintln!("  {name}: {entries} ledger entries");
    let started = Instant::now();
    fill(&config, entries).await?;
    eprintln!("  filled in {:.0} s", started.elapsed().as_secs_f64());
    let config_path = dir.join("upsync.toml");
    std::fs::write(&config_path, config.render())
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    let filled_bytes = db_files_size(&config.state_dir)?;
    let daemon = Daemon::start(ctx, &dir, &config).await?;
    let running = async {
        let compaction = wait_compaction(&daemon).await?;
        let peak = daemon.peak_rss()?;
        let scrape = scrapes(&daemon).await?;
        let listing = list_through(ctx, &daemon, &config_path, entries).await?;
        let forget = forget_one_by_one(ctx, &config, &config_path).await?;
        Ok::<_, String>((compaction, peak, scrape, listing, forget))
    }
    .await;
    daemon.terminate().await?;
    let (compaction, daemon_peak_rss, scrape, listing, forget) = running?;
    let on_disk_bytes = db_files_size(&config.state_dir)?;
    let left = entries - ROUNDS as u64;
    let status = stopped_status(ctx, &config_path, left, None).await?;
    let summary = config.state_dir.join(upsync::queue::SUMMARY_FILE);
    let status_opening = stopped_status(ctx, &config_path, left, Some(&summary)).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Costs {
        status,
        status_opening,
        scrape,
        filled_bytes,
        compaction,
        daemon_peak_rss,
        on_disk_bytes,
        listing,
        forget,
    })
}

/// Writes `entries` ledger entries, spread over the config's folders, straight into the
/// state database.
async fn fill(config: &DaemonConfig, entries: u64) -> BenchResult<()> {
    let state_dir = config.state_dir.clone();
    let folders: Vec<String> = config
        .folders
        .iter()
        .map(|(path, _)| path.to_string_lossy().into_owned())
        .collect();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&state_dir).map_err(|e| e.to_string())?;
        for n in 0..entries {
            let folder = &folders[(n % FOLDERS) as usize];
            let rel = rel_of(n);
            let fingerprint = Fingerprint {
                size: 1024,
                mtime_ns: 1_700_000_000_000_000_000 + i128::from(n),
                inode: n,
                ctime_ns: Some(1_700_000_000_000_000_000 + i128::from(n)),
            };
            store
                .record_uploaded(
                    &FileKey::new(folder.as_str(), rel.as_str()),
                    &fingerprint,
                    &rel,
                    None,
                )
                .map_err(|e| e.to_string())?;
        }
        store.flush().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("filling the state database failed: {e}"))?
}

/// The relative path `fill` gives the `n`th entry (in folder `n % FOLDERS`).
fn rel_of(n: u64) -> String {
    format!("d{:04}/f{n:07}.bin", n / 100 % 10_000)
}

/// One `upsync ls` through the running daemon (step 3), checking that it lists every entry.
async fn list_through(
    ctx: &Ctx,
    daemon: &Daemon,
    config_path: &Path,
    entries: u64,
) -> BenchResult<Listing> {
    let daemon_before = daemon.sample()?.rss;
    let bin = ctx.bin.clone();
    let config_path = config_path.to_path_buf();
    let command = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (lines, command_peak_rss) = lines_and_peak_rss(&bin, &["ls", "-c"], &config_path)?;
        Ok::<_, String>((started.elapsed(), lines, command_peak_rss))
    });
    let mut daemon_during = daemon_before;
    while !command.is_finished() {
        daemon_during = daemon_during.max(daemon.sample()?.rss);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (took, lines, command_peak_rss) = command
        .await
        .map_err(|e| format!("upsync ls did not finish: {e}"))??;
    // A line per file and the count.
    if lines != entries + 1 {
        return Err(format!(
            "upsync ls printed {lines} lines for {entries} files"
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Listing {
        took,
        lines,
        command_peak_rss,
        daemon_before,
        daemon_during,
        daemon_after: daemon.sample()?.rss,
    })
}

/// Runs `bin args config_path` to its end, counting the lines it prints without keeping
/// them; its lines and its peak RSS, in bytes: its `VmHWM`, read every millisecond while
/// it runs (the last reading; a list of ten files takes about ten). Not `wait4`'s `ru_maxrss`: Linux carries into it the high-water mark
/// of the process that spawned the command, here this benchmark with its own database.
fn lines_and_peak_rss(bin: &Path, args: &[&str], config_path: &Path) -> BenchResult<(u64, u64)> {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let what = format!("{} {}", bin.display(), args.join(" "));
    let mut child = std::process::Command::new(bin)
        .args(args)
        .arg(config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let (peak, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = {
        let (peak, done, pid) = (Arc::clone(&peak), Arc::clone(&done), child.id());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(bytes) = peak_rss_of(pid) {
                    peak.fetch_max(bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lines = 0;
    let read = loop {
        match stdout.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(read) => lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(e) => break Err(format!("reading {what}: {e}")),
        }
    };
    let status = child.wait().map_err(|e| format!("waiting for {what}: {e}"));
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    read?;
    let status = status?;
    if !status.success() {
        return Err(format!("{what} failed: {status}"));
    }
    Ok((lines, peak.load(Ordering::Relaxed)))
}

/// The best of [`ROUNDS`] runs of `upsync forget` of one file through the running daemon
/// (step 3): the first file of folder `r` in round `r`, present at both ledger sizes.
async fn forget_one_by_one(
    ctx: &Ctx,
    config: &DaemonConfig,
    config_path: &Path,
) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for round in 0..ROUNDS as u64 {
        let (folder, _) = &config.folders[(round % FOLDERS) as usize];
        let file = folder.join(rel_of(round));
        let started = Instant::now();
        let out = tokio::process::Command::new(&ctx.bin)
            .args(["forget", "-c"])
            .arg(config_path)
            .arg(&file)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", ctx.bin.display()))?;
        best = best.min(started.elapsed());
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !said.contains("1 upload(s) forgotten") {
            return Err(format!(
                "upsync forget {} said: {said}{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(best)
}

/// The best of [`ROUNDS`] runs of `upsync status --json` on a stopped daemon's database,
/// after checking that it reports every entry; with `remove`, that file removed before
/// each run.
async fn stopped_status(
    ctx: &Ctx,
    config_path: &Path,
    entries: u64,
    remove: Option<&Path>,
) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        if let Some(path) = remove {
            std::fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
        let started = Instant::now();
        let out = tokio::process::Command::new(&ctx.bin)
            .args(["status", "--json", "-c"])
            .arg(config_path)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", ctx.bin.display()))?;
        best = best.min(started.elapsed());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "upsync status --json printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let done: u64 = report["folders"]
            .as_array()
            .map(|folders| folders.iter().filter_map(|f| f["done"].as_u64()).sum())
            .unwrap_or(0);
        if done != entries {
            return Err(format!("status reports {done} files done, not {entries}"));
        }
    }
    Ok(best)
}

/// The median time of [`SCRAPES`] scrapes of the daemon's `/metrics`.
async fn scrapes(daemon: &Daemon) -> BenchResult<Duration> {
    let url = metrics_url(&daemon.log_text()).ok_or("the daemon logged no metrics address")?;
    let client = reqwest::Client::new();
    let mut took = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let body = client
            .get(&url)
            .send()
            .await
            .and_then(|answer| answer.error_for_status())
            .map_err(|e| format!("GET {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        took.push(started.elapsed());
        if !body.contains("upsync_queue_jobs") {
            return Err(format!("{url} has no upsync_queue_jobs"));
        }
    }
    took.sort();
    Ok(took[SCRAPES / 2])
}

/// The address from the daemon's "serving Prometheus metrics" line.
fn metrics_url(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|line| line.contains("serving Prometheus metrics"))?;
    let start = line.find("http://")?;
    let url = &line[start..];
    Some(url[..url.find(char::is_whitespace).unwrap_or(url.len())].to_string())
}

fn rows(entries: u64, small: &Costs, large: &Costs) -> Vec<Row> {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let row = |what: &str, large: Duration, small: Duration, target: Duration| Row {
        figure: format!(
            "{what} with {entries} ledger entries in {FOLDERS} folders (baseline: 10 entries)"
        ),
        upsync: ms(large),
        baseline: ms(small),
        ratio: format!("{:.2}", large.as_secs_f64() / small.as_secs_f64()),
        target: format!("≤ {}", ms(target)),
        verdict: Verdict::of(large <= target),
    };
    let compaction = match &large.compaction {
        Some(c) => format!(
            "{:.1} → {:.1} MiB in {:.1} s (store paused {:.1} s); daemon peak RSS {:.1} MiB",
            mib(c.before_bytes),
            mib(c.after_bytes),
            c.seen.as_secs_f64(),
            c.paused.as_secs_f64(),
            mib(large.daemon_peak_rss)
        ),
        None => format!(
            "none; daemon peak RSS {:.1} MiB",
            mib(large.daemon_peak_rss)
        ),
    };
    vec![
        Row {
            figure: format!(
                "State database with {entries} ledger entries: filled directly, then compacted by the idle daemon (baseline: 10 entries)"
            ),
            upsync: format!(
                "{:.1} MiB filled; {compaction}; {:.1} MiB at stop",
                mib(large.filled_bytes),
                mib(large.on_disk_bytes)
            ),
            baseline: format!("{:.1} MiB at stop", mib(small.on_disk_bytes)),
            ratio: "-".into(),
            target: "-".into(),
            verdict: Verdict::Info,
        },
        row(
            "`upsync status --json`, daemon stopped (best of 5, process start included)",
            large.status,
            small.status,
            STATUS_TARGET,
        ),
        Row {
            figure: format!(
                "`upsync status --json`, daemon stopped without leaving its status summary (as after a crash): the database is opened, {entries} ledger entries (baseline: 10)"
            ),
            upsync: ms(large.status_opening),
            baseline: ms(small.status_opening),
            ratio: format!(
                "{:.2}",
                large.status_opening.as_secs_f64() / small.status_opening.as_secs_f64()
            ),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
        row(
            "Metrics scrape of a running daemon (median of 21)",
            large.scrape,
            small.scrape,
            SCRAPE_TARGET,
        ),
        row(
            "`upsync forget` of one file through the running daemon (best of 5, process start included)",
            large.forget,
            small.forget,
            FORGET_TARGET,
        ),
        list_row(entries, small, large),
    ]
}

fn list_row(entries: u64, small: &Costs, large: &Costs) -> Row {
    let (l, s) = (&large.listing, &small.listing);
    let growth = l.command_peak_rss as f64 / s.command_peak_rss as f64;
    Row {
        figure: format!(
            "`upsync ls` through the running daemon, {entries} ledger entries: time and lines; the command's peak RSS; the daemon's RSS before it, the highest sampled during it and a second after it (baseline: 10 entries)"
        ),
        upsync: format!(
            "{:.2} s, {} lines; command {:.1} MiB; daemon {:.1} → {:.1} → {:.1} MiB",
            l.took.as_secs_f64(),
            l.lines,
            mib(l.command_peak_rss),
            mib(l.daemon_before),
            mib(l.daemon_during),
            mib(l.daemon_after)
        ),
        baseline: format!(
            "{:.3} s; command {:.1} MiB; daemon {:.1} → {:.1} → {:.1} MiB",
            s.took.as_secs_f64(),
            mib(s.command_peak_rss),
            mib(s.daemon_before),
            mib(s.daemon_during),
            mib(s.daemon_after)
        ),
        ratio: format!("{growth:.2}"),
        target: format!("command ≤ {LIST_MEMORY_GROWTH:.1}× its baseline"),
        verdict: Verdict::of(growth <= LIST_MEMORY_GROWTH),
    }
}
