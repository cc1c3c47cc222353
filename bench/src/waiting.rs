//! The figures of waiting on a remote: Redivis imports (which hold no worker) and the
//! recovery after an outage (how soon uploads resume once the remote is back).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::scenarios::{Until, daemon_run, wait_stored};
use crate::{Row, Sizes, Verdict};

/// One import run: files, import time per file, workers, and the wall-time target.
pub struct ImportRun {
    pub files: u64,
    pub import: Duration,
    pub workers: u32,
    /// `None` in the quick run, whose figures mean nothing.
    pub target: Option<Duration>,
}

/// Small files to Redivis whose import takes a while each: the wall time against what it
/// would be if every import held a worker (files × import time / workers).
pub async fn redivis_imports(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let mut rows = Vec::new();
    for run in &sizes.imports {
        rows.push(import_run(ctx, run).await?);
    }
    Ok(rows)
}

async fn import_run(ctx: &Ctx, run: &ImportRun) -> BenchResult<Row> {
    let dir = ctx.fresh_dir("redivis-imports")?;
    let small = dir.join("staging").join("small");
    write_small_files(&small, run.files, 4096, 1000, 11)?;
    let import = run.import;
    let emulator = Emulator::start_with(&dir.join("remote"), &[], |options| {
        options.redivis.redivis_processing_delay = import;
    })
    .await?;
    let workers = run.workers;
    let result = daemon_run(
        ctx,
        &emulator,
        "redivis-imports-run",
        Remote::Redivis,
        std::slice::from_ref(&small),
        run.files,
        Until::Ledger,
        |config| config.concurrency = workers,
    )
    .await;
    emulator.stop().await;
    let took = result?.took;
    let held = import.as_secs_f64() * run.files as f64 / f64::from(workers);
    Ok(Row {
        figure: format!(
            "{} files of 4 KiB to Redivis, {} s import each, {workers} workers: wall time",
            run.files,
            import.as_secs()
        ),
        upsync: format!("{:.1} s", took.as_secs_f64()),
        baseline: format!("{held:.0} s (files × import / workers)"),
        ratio: format!("{:.3}", took.as_secs_f64() / held),
        target: run
            .target
            .map_or("(reported)".into(), |t| format!("≤ {} s", t.as_secs())),
        verdict: run.target.map_or(Verdict::Info, |t| Verdict::of(took <= t)),
    })
}

/// A KiFS remote refusing connections for `sizes.outage` while files wait: the time from
/// its return to the first file uploaded, and to the last.
pub async fn outage_recovery(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("outage")?;
    let mut emulator = Emulator::start(&dir.join("remote"), &["ingest"]).await?;
    let result = outage_run(ctx, &dir, &mut emulator, sizes.outage).await;
    emulator.stop().await;
    let (first, all, files) = result?;
    let outage = humantime::format_duration(sizes.outage);
    Ok(vec![Row {
        figure: format!(
            "Outage of {outage} (KiFS refusing connections), {files} files waiting: remote \
             back → first upload done"
        ),
        upsync: format!(
            "{:.1} s (all {files}: {:.1} s)",
            first.as_secs_f64(),
            all.as_secs_f64()
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 30 s".into(),
        verdict: Verdict::of(first <= Duration::from_secs(30)),
    }])
}

/// The daemon runs, the remote goes away, files arrive, the remote comes back after
/// `outage`: returns (first upload, all uploads) after its return, and how many files.
async fn outage_run(
    ctx: &Ctx,
    dir: &Path,
    emulator: &mut Emulator,
    outage: Duration,
) -> BenchResult<(Duration, Duration, u64)> {
    const FILES: u64 = 10;
    let (config, inbox) = DaemonConfig::kifs_inbox(dir, emulator)?;
    let daemon = Daemon::start(ctx, dir, &config).await?;
    emulator.go_away().await?;
    write_small_files(&inbox, FILES, 4096, 1000, 13)?;
    eprintln!(
        "  the remote is away for {} s",
        outage.as_secs_f64().round()
    );
    tokio::time::sleep(outage).await;
    emulator.come_back().await?;
    let back = Instant::now();
    let waited = async {
        let first = wait_stored(emulator, 1).await? - back;
        let all = wait_stored(emulator, FILES).await? - back;
        Ok::<_, String>((first, all))
    }
    .await;
    daemon.terminate().await?;
    let (first, all) = waited?;
    Ok((first, all, FILES))
}
