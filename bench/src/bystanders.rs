//! Others at work in a watched tree: a daemon with nothing to upload should cost next to
//! nothing while another process reads the files it mirrored (a backup, the pipeline's
//! consumers) or writes a large file into the folder in small writes (an export being
//! made). Each figure is the daemon's CPU over the other process's own.
//!
//! 1. Mirror a tree of small files and wait until the daemon is quiet.
//! 2. Read every file of it with `cat` (`find -exec cat {} +`).
//! 3. Write one large file into the folder with `dd` in 4 KiB writes; the settle time
//!    keeps the daemon from reading it before the figure is taken.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use crate::scenarios::wait_stored;
use crate::{Row, Sizes, Verdict};

/// The daemon may spend this share of the other process's CPU.
const TARGET: f64 = 0.05;

/// A daemon is quiet once it spends at most this in a second.
const QUIET_CPU_PER_SECOND: Duration = Duration::from_millis(10);

/// What one bystander cost, its own CPU and the daemon's meanwhile.
struct Cost {
    daemon: Duration,
    bystander: Duration,
}

pub async fn bystanders(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("bystanders")?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let result = measure(ctx, &dir, &emulator, sizes).await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (reading, writing) = result?;
    Ok(vec![
        row(
            format!(
                "Another process reads every file of a mirrored tree ({} files of 1 KiB, `find -exec cat`): the daemon's CPU vs the reader's own",
                sizes.bystander_files
            ),
            &reading,
        ),
        row(
            format!(
                "Another process writes a file of {} MiB into the watched folder in 4 KiB writes (`dd`): the daemon's CPU vs the writer's own",
                sizes.bystander_write >> 20
            ),
            &writing,
        ),
    ])
}

async fn measure(
    ctx: &Ctx,
    dir: &Path,
    emulator: &Emulator,
    sizes: &Sizes,
) -> BenchResult<(Cost, Cost)> {
    let (mut config, inbox) = DaemonConfig::kifs_inbox(dir, emulator)?;
    config.settle = "5s";
    let staging = dir.join("staging");
    eprintln!("  writing {} files of 1 KiB", sizes.bystander_files);
    write_small_files(&staging, sizes.bystander_files, 1024, 1000, 31)?;
    let daemon = Daemon::start(ctx, dir, &config).await?;
    let measured = async {
        let tree = inbox.join("tree");
        let stored = emulator.kifs_files_stored().await?;
        std::fs::rename(&staging, &tree).map_err(|e| format!("move the tree: {e}"))?;
        wait_stored(emulator, stored + sizes.bystander_files).await?;
        wait_quiet(&daemon).await?;
        eprintln!("  reading them");
        let tree = tree.to_string_lossy();
        let read_all = ["find", &tree, "-type", "f", "-exec", "cat", "{}", "+"];
        let reading = while_running(&daemon, &read_all).await?;
        wait_quiet(&daemon).await?;
        eprintln!(
            "  writing {} MiB in 4 KiB writes",
            sizes.bystander_write >> 20
        );
        let out = format!("of={}", inbox.join("export.csv").display());
        let count = format!("count={}", sizes.bystander_write / 4096);
        let writing =
            while_running(&daemon, &["dd", "if=/dev/zero", &out, "bs=4k", &count]).await?;
        Ok::<_, String>((reading, writing))
    }
    .await;
    let stopped = daemon.terminate().await;
    let costs = measured?;
    stopped?;
    Ok(costs)
}

/// Runs `command` to its end; its CPU, and the daemon's meanwhile.
async fn while_running(daemon: &Daemon, command: &[&str]) -> BenchResult<Cost> {
    let children_before = ended_children_cpu()?;
    let daemon_before = daemon.sample()?.cpu;
    let status = tokio::process::Command::new(command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run {}: {e}", command[0]))?;
    let daemon_after = daemon.sample()?.cpu;
    if !status.success() {
        return Err(format!("{} failed: {status}", command.join(" ")));
    }
    Ok(Cost {
        daemon: daemon_after.saturating_sub(daemon_before),
        bystander: ended_children_cpu()?.saturating_sub(children_before),
    })
}

/// Waits (at most two minutes) until the daemon spends no more than
/// [`QUIET_CPU_PER_SECOND`] in a second: its work after a mirror (a compaction of its
/// state database) is not the bystanders'.
async fn wait_quiet(daemon: &Daemon) -> BenchResult<()> {
    let mut last = daemon.sample()?.cpu;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = daemon.sample()?.cpu;
        if now.saturating_sub(last) <= QUIET_CPU_PER_SECOND {
            return Ok(());
        }
        last = now;
    }
    Err("the daemon did not go quiet within two minutes".into())
}

fn row(figure: String, cost: &Cost) -> Row {
    let ratio = cost.daemon.as_secs_f64() / cost.bystander.as_secs_f64().max(1e-9);
    Row {
        figure,
        upsync: format!("{:.0} ms", cost.daemon.as_secs_f64() * 1e3),
        baseline: format!("{:.0} ms", cost.bystander.as_secs_f64() * 1e3),
        ratio: format!("{ratio:.3}"),
        target: format!("≤ {TARGET:.2}"),
        verdict: Verdict::of(ratio <= TARGET),
    }
}
