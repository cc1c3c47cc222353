//! `upsync-bench`: measures the real daemon against the emulator and prints one table.
//!
//! ```text
//! cargo run --release -p upsync-bench            # full run (~15-20 minutes)
//! cargo run --release -p upsync-bench -- --quick # small sizes (< 1 minute), for CI
//! cargo run --release -p upsync-bench -- --only bandwidth   # one section (~30 s)
//! cargo run --release -p upsync-bench -- --only outage-recovery   # 5-minute outage
//! cargo run --release -p upsync-bench -- --only million   # a million files (~10 GB)
//! cargo run --release -p upsync-bench -- --only status    # status over a million-entry ledger
//! ```
//!
//! The bandwidth section (a limit held over a long transfer) runs in full runs and with
//! `--only bandwidth`, never in `--quick`. `outage-recovery` and `million` run only when
//! named with `--only`: one waits out a five-minute outage (ten seconds with `--quick`), the
//! other writes a million files.
//!
//! The emulator runs inside this process, or as an `upsync emulator` child process where
//! its own cost must stay out of the daemon's figures; the daemon is the `upsync` binary next to this
//! one (built first when run through cargo) or `--bin-path`. Every figure has a baseline
//! measured in the same run, on the same emulator, with the same bytes: `curl` sending the
//! same file or the same pre-encoded requests, one file of the same total size, or `find`
//! walking the same tree. Test files hold random bytes and live in the system temp dir,
//! which is cleaned up at the end.

mod bystanders;
mod harness;
mod idle;
mod million;
mod scenarios;
mod status_cost;
mod waiting;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use harness::{BenchResult, Ctx, Remote, mib, write_random_file};

#[derive(Parser)]
#[command(
    name = "upsync-bench",
    about = "Benchmark the upsync daemon against the local emulator; prints one table."
)]
struct Args {
    /// Small sizes (a minute at most): every figure, none of them meaningful.
    #[arg(long)]
    quick: bool,
    /// The `upsync` binary to run (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    bin_path: Option<PathBuf>,
    /// Run only these sections (default: all but `outage-recovery` and `million`).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Section {
    RedivisLarge,
    KifsLarge,
    Memory,
    KifsSmall,
    RedivisSmall,
    RedivisFiles,
    Restart,
    Latency,
    Bandwidth,
    RedivisImports,
    /// Not in a run without `--only`: it takes five minutes.
    OutageRecovery,
    Idle,
    /// Another process reading the mirrored tree, and one writing into the folder.
    Bystanders,
    /// `status` and a metrics scrape over a large ledger.
    Status,
    /// Not in a run without `--only`: it writes a million files.
    Million,
}

/// How big everything is in a run.
pub struct Sizes {
    pub large: u64,
    pub memory_file: u64,
    pub small_files: u64,
    /// Rounds of the small-file figures (each side's best counts).
    pub small_rounds: usize,
    pub redivis_files: u64,
    pub file_index_files: u64,
    pub restart_files: u64,
    pub latency_files: u64,
    pub imports: Vec<waiting::ImportRun>,
    pub outage: std::time::Duration,
    /// Files uploaded (and a third of them changed and uploaded again) before the idle time.
    pub churn_files: u64,
    pub idle_window: Duration,
    /// Files another process reads once they are mirrored.
    pub bystander_files: u64,
    /// Bytes another process writes into the folder in 4 KiB writes.
    pub bystander_write: u64,
    pub million_files: u64,
    /// Ledger entries of the state database `status` and the metrics read.
    pub status_ledger: u64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            large: 1 << 30,
            memory_file: 1 << 30,
            small_files: 10_000,
            small_rounds: 3,
            // Redivis paces itself to its rate limit (100 to 1,000 API requests per window).
            redivis_files: 100,
            file_index_files: 500,
            restart_files: 100_000,
            latency_files: 100,
            imports: vec![
                waiting::ImportRun {
                    files: 60,
                    import: std::time::Duration::from_secs(10),
                    workers: 4,
                    target: Some(std::time::Duration::from_secs(40)),
                },
                waiting::ImportRun {
                    files: 200,
                    import: std::time::Duration::from_secs(10),
                    workers: 4,
                    target: Some(std::time::Duration::from_secs(30)),
                },
            ],
            outage: std::time::Duration::from_secs(300),
            churn_files: 50_000,
            idle_window: Duration::from_secs(300),
            bystander_files: 50_000,
            bystander_write: 1 << 30,
            million_files: 1_000_000,
            status_ledger: 1_000_000,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            // Over one KiFS part, so the quick run goes multipart too.
            large: 72 << 20,
            memory_file: 16 << 20,
            small_files: 300,
            small_rounds: 1,
            redivis_files: 8,
            file_index_files: 50,
            restart_files: 1_000,
            latency_files: 5,
            imports: vec![waiting::ImportRun {
                files: 8,
                import: std::time::Duration::from_secs(2),
                workers: 4,
                target: None,
            }],
            outage: std::time::Duration::from_secs(10),
            churn_files: 300,
            idle_window: Duration::from_secs(3),
            bystander_files: 500,
            bystander_write: 16 << 20,
            million_files: 2_000,
            status_ledger: 1_000,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    Info,
    Error,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "-",
            Verdict::Error => "ERROR",
        }
    }
}

/// One line of the results table.
pub struct Row {
    pub figure: String,
    pub upsync: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    fn error(figure: String, message: &str) -> Row {
        Row {
            figure,
            upsync: format!("error: {}", message.lines().next().unwrap_or("")),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            verdict: Verdict::Error,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("upsync-bench: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs the sections; `Ok(false)` when a measurement failed (its row says why).
async fn run(args: Args) -> BenchResult<bool> {
    let bin = daemon_binary(args.bin_path)?;
    let work = tempfile::Builder::new()
        .prefix("upsync-bench-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch dir in the system temp dir: {e}"))?;
    let ctx = Ctx::new(bin, work);
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let wanted = |section: Section| {
        if args.only.is_empty() {
            section != Section::OutageRecovery && section != Section::Million
        } else {
            args.only.contains(&section)
        }
    };
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();

    let large_sections = [Section::RedivisLarge, Section::KifsLarge];
    let large = ctx.work.path().join("large").join("big-1.bin");
    if large_sections.iter().any(|s| wanted(*s)) || wanted(Section::Memory) {
        eprintln!(
            "writing {} of random bytes",
            scenarios::size_label(sizes.large)
        );
        write_random_file(&large, sizes.large, 1)?;
    }
    if wanted(Section::RedivisLarge) {
        eprintln!("large file, Redivis");
        collect(
            &mut rows,
            "Large file, Redivis",
            scenarios::redivis_large(&ctx, &sizes, &large).await,
        );
    }
    if wanted(Section::KifsLarge) {
        eprintln!("large file, KiFS");
        collect(
            &mut rows,
            "Large file, KiFS",
            scenarios::kifs_large(&ctx, &sizes, &large).await,
        );
    }
    if wanted(Section::Memory) {
        eprintln!("memory");
        let dir = ctx.work.path().join("memory");
        let mut four = Vec::new();
        let prepared: BenchResult<PathBuf> = (|| {
            for i in 1..=4u64 {
                let path = dir.join(format!("big-{i}.bin"));
                if i == 1 && sizes.memory_file == sizes.large {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    std::fs::rename(&large, &path).map_err(|e| e.to_string())?;
                } else {
                    write_random_file(&path, sizes.memory_file, 100 + i)?;
                }
                four.push(path);
            }
            let huge = dir.join("huge.bin");
            write_random_file(&huge, sizes.memory_file * 4, 200)?;
            Ok(huge)
        })();
        match prepared {
            Ok(huge) => {
                collect(
                    &mut rows,
                    "Peak RSS, Redivis",
                    scenarios::memory(&ctx, &sizes, &four, &huge, Remote::Redivis, "Redivis").await,
                );
                collect(
                    &mut rows,
                    "Peak RSS, KiFS",
                    scenarios::memory(
                        &ctx,
                        &sizes,
                        &four,
                        &huge,
                        Remote::Kifs {
                            directory: "ingest".into(),
                        },
                        "KiFS",
                    )
                    .await,
                );
            }
            Err(e) => rows.push(Row::error("Peak RSS".into(), &e)),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(ctx.work.path().join("large"));
    if wanted(Section::KifsSmall) {
        eprintln!("small files, KiFS");
        collect(
            &mut rows,
            "Small files, KiFS",
            scenarios::kifs_small(&ctx, &sizes).await,
        );
    }
    if wanted(Section::RedivisSmall) {
        eprintln!("small files, Redivis");
        collect(
            &mut rows,
            "Small files, Redivis",
            scenarios::redivis_small(&ctx, &sizes).await,
        );
    }
    if wanted(Section::RedivisFiles) {
        eprintln!("small files, Redivis file index table");
        collect(
            &mut rows,
            "Small files, Redivis file index table",
            scenarios::redivis_files(&ctx, &sizes).await,
        );
    }
    if wanted(Section::Restart) {
        eprintln!("restart");
        collect(&mut rows, "Restart", scenarios::restart(&ctx, &sizes).await);
    }
    if wanted(Section::Latency) {
        eprintln!("latency");
        collect(&mut rows, "Latency", scenarios::latency(&ctx, &sizes).await);
    }
    if wanted(Section::Bandwidth) && !args.quick {
        eprintln!("bandwidth limit");
        collect(
            &mut rows,
            "Bandwidth limit",
            scenarios::bandwidth(&ctx).await,
        );
    }
    if wanted(Section::RedivisImports) {
        eprintln!("Redivis imports");
        collect(
            &mut rows,
            "Redivis imports",
            waiting::redivis_imports(&ctx, &sizes).await,
        );
    }
    if wanted(Section::OutageRecovery) {
        eprintln!("outage recovery");
        collect(
            &mut rows,
            "Outage recovery",
            waiting::outage_recovery(&ctx, &sizes).await,
        );
    }

    if wanted(Section::Idle) {
        eprintln!("idle after churn");
        collect(
            &mut rows,
            "Idle after churn",
            idle::idle_after_churn(&ctx, &sizes).await,
        );
    }
    if wanted(Section::Bystanders) {
        eprintln!("others at work in the watched tree");
        collect(
            &mut rows,
            "Others at work in the watched tree",
            bystanders::bystanders(&ctx, &sizes).await,
        );
    }
    if wanted(Section::Status) {
        eprintln!("status and metrics over a large ledger");
        collect(
            &mut rows,
            "Status cost",
            status_cost::status_cost(&ctx, &sizes).await,
        );
    }
    if wanted(Section::Million) {
        eprintln!("a million files");
        collect(
            &mut rows,
            "A million files",
            million::million(&ctx, &sizes).await,
        );
    }

    print_table(&ctx, &rows, args.quick, started.elapsed());
    Ok(rows.iter().all(|r| r.verdict != Verdict::Error))
}

fn collect(rows: &mut Vec<Row>, what: &str, result: BenchResult<Vec<Row>>) {
    match result {
        Ok(new) => {
            // Shown as soon as measured, so an interrupted run still tells something.
            for row in &new {
                eprintln!(
                    "  => {}: {} | {} | {}",
                    row.figure, row.upsync, row.baseline, row.ratio
                );
            }
            rows.extend(new)
        }
        Err(e) => {
            eprintln!("  {what} failed: {e}");
            rows.push(Row::error(what.to_string(), &e));
        }
    }
}

/// The daemon to measure: `--bin-path`, else `upsync` next to this binary, (re)built first
/// with the same profile when this runs under cargo.
fn daemon_binary(given: Option<PathBuf>) -> BenchResult<PathBuf> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("--bin-path {}: no such file", path.display()))
        };
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))?;
    let dir = me.parent().ok_or("this binary has no directory")?;
    let sibling = dir.join("upsync");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!(
            "building the daemon ({} profile)",
            if release { "release" } else { "dev" }
        );
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--bin", "upsync", "--manifest-path"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if release {
            build.arg("--release");
        }
        let status = build
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the daemon failed: {status}"));
        }
    }
    if sibling.is_file() {
        Ok(sibling)
    } else {
        Err(format!(
            "no daemon binary at {}: run `cargo build --release -p upsync` or pass --bin-path",
            sibling.display()
        ))
    }
}

fn print_table(ctx: &Ctx, rows: &[Row], quick: bool, took: std::time::Duration) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", mib(kib * 1024) / 1024.0)
        });
    println!();
    println!(
        "upsync-bench{} — {} — {cores} cores ({cpu}), {memory} RAM — daemon {} — {:.0} s",
        if quick {
            " --quick (sizes too small to mean anything)"
        } else {
            ""
        },
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        ctx.bin.display(),
        took.as_secs_f64()
    );
    println!();
    println!("| figure | upsync | baseline | ratio | target | |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.figure,
            row.upsync,
            row.baseline,
            row.ratio,
            row.target,
            row.verdict.label()
        );
    }
}
