//! The `upsync` command: parses the command line, loads the config, sets up logging and
//! maps every failure to an exit code (0 ok, 1 runtime failure, 2 usage or config error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use upsync::config::Config;
use upsync::daemon::{self, control, status};
use upsync::emulator::{self, EmulatorOptions};
use upsync::queue::{RetrySelection, Store};

#[derive(Parser)]
#[command(
    name = "upsync",
    version,
    about = "Mirror local folders into Redivis tables and Kinetica KiFS directories, exactly once.",
    long_about = None
)]
struct Cli {
    /// Log format on stderr (level filter from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of the emulator's options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// First move the state database aside (kept, never deleted) and rebuild the record
        /// of uploaded files from the remotes' listings, so nothing is uploaded twice.
        #[arg(long)]
        rebuild_state: bool,
    },
    /// Validate the config and print the folder → target plan.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show queue counts, in-flight uploads and failed jobs (works while the daemon runs).
    Status {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print the report as JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Move failed jobs back to the queue.
    Retry {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Retry every failed job.
        #[arg(long, conflicts_with = "paths")]
        all: bool,
        /// Files to retry (paths inside watched folders).
        #[arg(value_name = "PATH", required_unless_present = "all")]
        paths: Vec<PathBuf>,
    },
    /// Serve the local Redivis + KiFS emulator.
    Emulator {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
        listen: String,
        #[command(flatten)]
        options: Box<EmulatorOptions>,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl ToString) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    fn runtime(message: impl ToString) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("upsync: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("upsync: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run {
            config,
            rebuild_state,
        } => {
            let config = load_for_daemon(&config)?;
            if rebuild_state {
                rebuild(&config).await?;
            }
            daemon::run_reloadable(config, shutdown_signal(), reload_signal())
                .await
                .map_err(Failure::runtime)
        }
        Command::Check { config } => {
            let config = load(&config)?;
            print!("{}", config.plan());
            Ok(())
        }
        Command::Status { config, json } => {
            let config = load(&config)?;
            let report = match control::request::<status::StatusReport>(
                &config.state_dir,
                "GET",
                "/status",
                None,
            )
            .await
            .map_err(Failure::runtime)?
            {
                Some(report) => report,
                None => {
                    let store = Store::open(&config.state_dir).map_err(Failure::runtime)?;
                    status::build_report(&config, &store, None).map_err(Failure::runtime)?
                }
            };
            if json {
                let text = serde_json::to_string_pretty(&report).expect("status report serializes");
                println!("{text}");
            } else {
                print!("{}", status::render_text(&report));
            }
            Ok(())
        }
        Command::Retry { config, all, paths } => {
            let config = load(&config)?;
            let paths: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
            let request = control::RetryRequest {
                all,
                paths: paths.clone(),
            };
            let body = serde_json::to_vec(&request).expect("retry request serializes");
            let requeued = match control::request::<control::RetryResponse>(
                &config.state_dir,
                "POST",
                "/retry",
                Some(&body),
            )
            .await
            .map_err(Failure::runtime)?
            {
                Some(answer) => answer.requeued,
                None => {
                    let store = Store::open(&config.state_dir).map_err(Failure::runtime)?;
                    let selection = if all {
                        RetrySelection::All
                    } else {
                        RetrySelection::Paths(paths)
                    };
                    let requeued = store.retry_failed(&selection).map_err(Failure::runtime)?;
                    store.flush().map_err(Failure::runtime)?;
                    requeued
                }
            };
            println!("{requeued} failed job(s) queued again");
            Ok(())
        }
        Command::Emulator { listen, options } => {
            let running = emulator::start(&listen, *options)
                .await
                .map_err(Failure::runtime)?;
            // Tests and scripts read the bound address from this line.
            println!("listening on http://{}", running.addr);
            shutdown_signal().await;
            running.shutdown.cancel();
            let _ = running.task.await;
            Ok(())
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::config)
}

/// The daemon accepts folders that do not exist yet (not mounted, about to be created): each
/// is watched from when it appears, and the watcher logs that it is waiting.
fn load_for_daemon(path: &Path) -> Result<Config, Failure> {
    let options = upsync::config::LoadOptions {
        check_folders_exist: false,
    };
    let config = Config::load_with(path, options).map_err(Failure::config)?;
    for folder in &config.folders {
        if !folder.path.is_dir() {
            tracing::warn!(folder = %folder.path.display(), "the folder does not exist (yet); it is watched once it appears");
        }
    }
    Ok(config)
}

async fn rebuild(config: &Config) -> Result<(), Failure> {
    let summary = daemon::rebuild::rebuild_state(config)
        .await
        .map_err(Failure::runtime)?;
    let moved = match &summary.moved_to {
        Some(path) => format!("; the old database is kept at {}", path.display()),
        None => String::new(),
    };
    tracing::info!(
        matched = summary.matched,
        to_upload = summary.to_upload,
        "state rebuilt from the remotes: {} file(s) already uploaded, {} to upload{moved}",
        summary.matched,
        summary.to_upload
    );
    Ok(())
}

/// Receives once per SIGHUP (several quick ones coalesce into one reload).
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    rx
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once (the state database
/// is consistent at every instant, so nothing is lost).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; stopping (send it again to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            // journald adds its own timestamps.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().with_ansi(false).init()
            } else {
                builder.init()
            }
        }
    }
}
