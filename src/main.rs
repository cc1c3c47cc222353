//! The `upsync` command: parses the command line, loads the config, sets up logging and
//! maps every failure to an exit code (0 ok, 1 runtime failure, 2 usage or config error).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::IsTerminal;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::MultiProgress;

use upsync::config::Config;
use upsync::daemon::{self, ProgressMode, SyncOptions, control, history, status};
use upsync::emulator::{self, EmulatorOptions};
use upsync::queue::{Store, StoreError};
use upsync::{signals, watch};

/// jemalloc, with one arena (module `allocator`).
#[global_allocator]
static ALLOCATOR: upsync::allocator::Allocator = upsync::allocator::Allocator;

#[derive(Parser)]
#[command(
    name = "upsync",
    version,
    about = "Mirror local folders into Redivis tables and Kinetica KiFS directories, exactly once.",
    long_about = "Mirror local folders into Redivis tables and Kinetica KiFS directories, exactly \
                  once.\n\n\
                  upsync watches the folders of its config file and uploads every new or changed \
                  file, whole and once, across crashes, restarts and outages. Start with \
                  `upsync check -c FILE`, then `upsync run -c FILE` (what the systemd unit \
                  starts) or `upsync sync --once -c FILE` (upload what is there and exit).",
    after_help = "Exit codes: 0 ok, 1 runtime failure (or a `sync --once` with failed files), \
                  2 usage or config error.\n\
                  Logs go to stderr; RUST_LOG filters them (e.g. RUST_LOG=upsync=debug)."
)]
struct Cli {
    /// Log format on stderr: text (no timestamps under journald) or one JSON object a line.
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Progress {
    Auto,
    Bars,
    Log,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    ///
    /// Watches every configured folder, uploads new and changed files, and serves
    /// `upsync status`/`upsync retry` on a control socket in state_dir (and Prometheus metrics
    /// when metrics_listen is set). SIGTERM or SIGINT stops it cleanly (a second one at once);
    /// under systemd it reports READY, STATUS and watchdog pings.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// First move the state database aside (kept, never deleted) and rebuild the record
        /// of uploaded files from the remotes' listings, so nothing is uploaded twice.
        #[arg(long)]
        rebuild_state: bool,
    },
    /// Upload what is pending in the configured folders once, then exit.
    ///
    /// Scans every folder once (files must be unchanged for `settle`), uploads them and
    /// exits 0 when all succeeded, 1 with a summary of the failed files otherwise. Shows
    /// progress bars on a terminal and a log line every few seconds otherwise. Useful for a
    /// first bulk load and for cron. Cannot run while `upsync run` uses the same state_dir.
    Sync {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Upload once and exit (continuous mirroring is `upsync run`).
        #[arg(long, required = true)]
        once: bool,
        /// The longest the run waits for anything: a remote that does not answer or is
        /// being checked again, retries, Redivis imports. First tries (each folder's first
        /// remote check, each file's first attempt) always run. What is left then is
        /// reported as not done (exit 1) and uploaded by the next run.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        retry_wait_limit: Duration,
        /// Progress display: bars on a terminal, log lines otherwise (auto), or force one.
        #[arg(long, value_enum, default_value_t = Progress::Auto)]
        progress: Progress,
        /// Only show, per folder, what would be uploaded (new, changed), deleted and skipped
        /// (and why); sends nothing to any remote and leaves the state database as it was.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Validate the config and print the folder → target plan.
    ///
    /// Exits 2 with one line per problem, naming the file, the line and the key.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show queue counts, in-flight uploads and failed jobs (works while the daemon runs).
    ///
    /// Asks the running daemon over its control socket; when none runs, reads the state
    /// database directly.
    Status {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print the report as JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Move failed jobs back to the queue.
    ///
    /// Goes through the running daemon when there is one, so it retries them at once.
    #[command(override_usage = "upsync retry --config <FILE> (--all | --deletes | <PATH>...)")]
    Retry {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Retry every failed job (deletions held by the mass-delete guard stay held).
        #[arg(long, conflicts_with_all = ["paths", "deletes"])]
        all: bool,
        /// Let the deletions held by the mass-delete guard run, and retry failed deletions.
        #[arg(long, conflicts_with = "paths")]
        deletes: bool,
        /// Files to retry (paths inside watched folders); a directory: every failed file
        /// under it.
        #[arg(value_name = "PATH", required_unless_present_any = ["all", "deletes"])]
        paths: Vec<PathBuf>,
    },
    /// List the files upsync holds as uploaded: local path, remote name, size, upload time.
    ///
    /// Asks the running daemon when there is one; otherwise reads the state database.
    Ls {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this configured folder.
        #[arg(long, value_name = "PATH")]
        folder: Option<PathBuf>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget uploads so that those files are uploaded again.
    ///
    /// Drops what upsync remembers of each file (a directory: every file under it) and
    /// queues the files still there. Goes through the running daemon when there is one.
    Forget {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Files or directories inside watched folders.
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    ///
    /// e.g. `upsync completions bash > /etc/bash_completion.d/upsync`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve the local Redivis + KiFS emulator (for tests and demos).
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

/// Writes a command's output. A reader that went away (`upsync status | head`) ends the
/// output, not the command: what it did is done, and the rest had no one to read it.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::runtime(format!(
            "cannot write to standard output: {err}"
        ))),
        _ => Ok(()),
    }
}

/// [`emit`] of `value` as pretty JSON, one line break after it.
fn emit_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).expect("the output serializes to JSON");
    emit(&format!("{text}\n"))
}

fn main() -> ExitCode {
    upsync::allocator::tune();
    let cli = Cli::parse();
    // Progress bars and log lines share stderr: log lines are printed between redraws.
    let bars = match &cli.command {
        Command::Sync {
            progress, dry_run, ..
        } if !*dry_run
            && (*progress == Progress::Bars
                || (*progress == Progress::Auto && std::io::stderr().is_terminal())) =>
        {
            Some(MultiProgress::new())
        }
        _ => None,
    };
    // The commands that print an answer keep stderr for what went wrong; the ones that
    // run (the daemon, a sync, the emulator) say what they do.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Sync { .. } | Command::Emulator { .. } => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, bars.clone(), default_level);
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
    match runtime.block_on(execute(cli.command, bars)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("upsync: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn execute(command: Command, bars: Option<MultiProgress>) -> Result<(), Failure> {
    match command {
        Command::Sync {
            config,
            once: _,
            retry_wait_limit,
            progress: _,
            dry_run,
            json,
        } => sync_command(config, retry_wait_limit, dry_run, json, bars).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "upsync", &mut std::io::stdout());
            Ok(())
        }
        Command::Run {
            config,
            rebuild_state,
        } => run_command(config, rebuild_state).await,
        Command::Check { config } => check_command(config),
        Command::Status { config, json } => status_command(config, json).await,
        Command::Retry {
            config,
            all,
            deletes,
            paths,
        } => retry_command(config, all, deletes, paths).await,
        Command::Ls {
            config,
            folder,
            json,
        } => ls_command(config, folder, json).await,
        Command::Forget { config, paths } => forget_command(config, paths).await,
        Command::Emulator { listen, options } => emulator_command(listen, options).await,
    }
}

/// `upsync sync --once`: uploads what is pending and exits, or prints the plan of a dry run.
async fn sync_command(
    config: PathBuf,
    retry_wait_limit: Duration,
    dry_run: bool,
    json: bool,
    bars: Option<MultiProgress>,
) -> Result<(), Failure> {
    let config = load(&config)?;
    if dry_run {
        let plan = daemon::dry_run::plan(&config)
            .await
            .map_err(Failure::runtime)?;
        if json {
            emit_json(&plan)?;
        } else {
            emit(&daemon::dry_run::render(&plan))?;
        }
        return Ok(());
    }
    let options = SyncOptions {
        retry_wait_limit,
        progress: match bars {
            Some(bars) => ProgressMode::Bars(bars),
            None => ProgressMode::Log(Duration::from_secs(10)),
        },
    };
    let stop = signals::stop_or_hangup_signal().map_err(signal_failure)?;
    let summary = daemon::sync_once(config, options, stop)
        .await
        .map_err(Failure::runtime)?;
    // The summary is the command's answer, on stdout whatever the outcome (`>
    // report.txt` keeps it); stderr carries the logs, the bars and the exit's reason.
    emit(&summary.render())?;
    if summary.succeeded() {
        Ok(())
    } else {
        Err(Failure::runtime(
            "not every file was uploaded (the summary on standard output says which)",
        ))
    }
}

/// `upsync run`: the daemon, until a stop signal; SIGHUP reloads its configuration.
async fn run_command(config: PathBuf, rebuild_state: bool) -> Result<(), Failure> {
    let config = load_for_daemon(&config)?;
    if rebuild_state {
        rebuild(&config).await?;
    }
    let reload = signals::reload_signal().map_err(signal_failure)?;
    daemon::run_reloadable(config, stop_signal()?, reload)
        .await
        .map_err(Failure::runtime)
}

/// `upsync check`: the configuration's folder → target plan, with notes on shared folders.
fn check_command(config: PathBuf) -> Result<(), Failure> {
    let config = load(&config)?;
    emit(&config.plan())?;
    for folder in &config.folders {
        if let Some(note) = watch::shared_folder_note(folder, config.rescan_interval) {
            emit(&format!("note: {note}\n"))?;
        }
    }
    Ok(())
}

/// `upsync status`: the running daemon's report, or the one its state database holds.
async fn status_command(config: PathBuf, json: bool) -> Result<(), Failure> {
    let config = load_for_queries(&config)?;
    let answer = ask_daemon_or(
        &config,
        || control::request::<status::StatusReport>(&config.state_dir, "GET", "/status", None),
        upsync::queue::open_stopped,
    )
    .await?;
    let report = match answer {
        Answer::Daemon(report) => report,
        Answer::Stopped(stopped) => {
            status::build_report(&config, stopped.source(), None).map_err(Failure::runtime)?
        }
        Answer::Unused => status::build_report(&config, &upsync::queue::Summary::empty(), None)
            .map_err(Failure::runtime)?,
    };
    if json {
        emit_json(&report)?;
    } else {
        emit(&status::render_text(&report))?;
    }
    Ok(())
}

/// `upsync retry`: failed jobs (or held deletions) queued again, by the daemon or in its
/// state database.
async fn retry_command(
    config: PathBuf,
    all: bool,
    deletes: bool,
    paths: Vec<PathBuf>,
) -> Result<(), Failure> {
    let config = load_for_queries(&config)?;
    let paths = paths_in_folders(&config, &paths)?;
    let request = control::RetryRequest {
        all,
        deletes,
        paths,
    };
    let body = serde_json::to_vec(&request).expect("retry request serializes");
    let requeued =
        match ask_daemon::<control::RetryResponse>(&config, "POST", "/retry", Some(&body)).await? {
            Answer::Daemon(answer) => answer.requeued,
            Answer::Unused => 0,
            Answer::Stopped(store) => {
                let requeued = store
                    .retry_failed(&request.selection())
                    .map_err(Failure::runtime)?;
                store.flush().map_err(Failure::runtime)?;
                requeued
            }
        };
    // --deletes runs what the mass-delete guard held: say so, not that they failed.
    let what = if deletes {
        "deletion(s) approved and queued to run"
    } else {
        "failed job(s) queued again"
    };
    emit(&format!("{requeued} {what}\n"))?;
    Ok(())
}

/// `upsync ls`: the files held as uploaded, streamed as they are read, from the daemon or
/// from its state database.
async fn ls_command(config: PathBuf, folder: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    let config = load_for_queries(&config)?;
    let request = history::ListRequest {
        folder: folder.map(|f| upsync::config::command_line_path(&f)),
    };
    // A folder that is not configured is a usage error, whoever would list it: the
    // daemon, the database it left, or none.
    let folders = history::listed_folders(&config, &request).map_err(|err| {
        Failure::config(format!("{err} (the folders are: {})", folder_list(&config)))
    })?;
    let body = serde_json::to_vec(&request).expect("ls request serializes");
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let printer = RefCell::new(history::ListPrinter::new(out, json));
    let answer = ask_daemon_or(
        &config,
        || {
            control::request_lines(&config.state_dir, "/ls", &body, |line| {
                printer.borrow_mut().line(line)
            })
        },
        Store::open,
    )
    .await?;
    match answer {
        Answer::Daemon(()) => {}
        Answer::Stopped(store) => {
            history::visit_list(&store, &folders, |file| printer.borrow_mut().file(&file))
                .map_err(Failure::runtime)?;
            printer.borrow_mut().walked();
        }
        Answer::Unused => printer.borrow_mut().walked(),
    }
    printer.into_inner().finish().map_err(Failure::runtime)
}

/// `upsync forget`: the uploads of the paths given forgotten, and the files still there
/// queued to upload again.
async fn forget_command(config: PathBuf, paths: Vec<PathBuf>) -> Result<(), Failure> {
    let config = load_for_queries(&config)?;
    let request = history::ForgetRequest {
        paths: paths_in_folders(&config, &paths)?,
    };
    let body = serde_json::to_vec(&request).expect("forget request serializes");
    let done = RefCell::new(None);
    let answer = ask_daemon_or(
        &config,
        || {
            control::request_lines(&config.state_dir, "/forget", &body, |line| {
                history::forget_answer(line, &mut done.borrow_mut())
            })
        },
        Store::open,
    )
    .await?;
    let answer = match answer {
        Answer::Unused => history::ForgetResponse::default(),
        Answer::Daemon(()) => done.into_inner().ok_or_else(|| {
            Failure::runtime("the daemon's answer broke off before the forgetting ended")
        })?,
        Answer::Stopped(store) => {
            history::forget(&config, &store, &request).map_err(Failure::runtime)?
        }
    };
    emit(&format!(
        "{} upload(s) forgotten, {} file(s) queued to upload again\n",
        answer.forgotten, answer.queued
    ))?;
    Ok(())
}

/// `upsync emulator`: the emulator alone, until a stop signal.
async fn emulator_command(listen: String, options: Box<EmulatorOptions>) -> Result<(), Failure> {
    let stop = signals::stop_or_hangup_signal().map_err(signal_failure)?;
    let running = emulator::start(&listen, *options)
        .await
        .map_err(Failure::runtime)?;
    // Tests and scripts read the bound address from this line.
    println!("listening on {}://{}", running.scheme, running.addr);
    stop.await;
    running.shutdown.cancel();
    let _ = running.task.await;
    Ok(())
}

/// Who answers a `status` or `retry`.
enum Answer<T, S = Store> {
    /// The running daemon, over its control socket.
    Daemon(T),
    /// No daemon runs: the state database, opened (or, for a status report, its summary).
    Stopped(S),
    /// No daemon runs and none ever did with this state dir: there is nothing to read, and
    /// nothing is created (a warning says so, in case `state_dir` is mistyped).
    Unused,
}

/// Asks the running daemon, or opens the state database when none runs.
async fn ask_daemon<T: serde::de::DeserializeOwned>(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Answer<T>, Failure> {
    ask_daemon_or(
        config,
        || control::request::<T>(&config.state_dir, method, path, body),
        Store::open,
    )
    .await
}

/// Asks the running daemon with `ask` (`Ok(None)`: none listens), or opens what `open`
/// reads when none runs. A daemon that is starting or stopping holds the database without
/// answering yet: ask again for a while.
async fn ask_daemon_or<T, S, Asked>(
    config: &Config,
    ask: impl Fn() -> Asked,
    open: impl Fn(&Path) -> Result<S, StoreError>,
) -> Result<Answer<T, S>, Failure>
where
    Asked: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(answer) = ask().await.map_err(Failure::runtime)? {
            return Ok(Answer::Daemon(answer));
        }
        if !Store::exists(&config.state_dir) {
            eprintln!(
                "upsync: warning: no state database in {}: no upsync has run with this \
                 state_dir yet (is `state_dir` in the config the daemon's?)",
                config.state_dir.display()
            );
            return Ok(Answer::Unused);
        }
        match open(&config.state_dir) {
            Ok(store) => return Ok(Answer::Stopped(store)),
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err @ StoreError::Locked { .. }) => {
                return Err(Failure::runtime(format!(
                    "{err}, but it does not answer on {} (is it stuck starting or stopping?)",
                    control::socket_path(&config.state_dir).display()
                )));
            }
            Err(err) => return Err(Failure::runtime(err)),
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::config)
}

/// For the commands that only ask the daemon or open the state database: they send nothing
/// to a remote, so they run where the secrets and CA files cannot be read, as the service's
/// user outside the service (the variables of `EnvironmentFile=` and `$CREDENTIALS_DIRECTORY`
/// exist only inside it) or while a CA file is being replaced; and they read no folder, so
/// a folder that is missing (unmounted, the moment an operator most needs `status` and
/// `retry`) is the daemon's to report, not theirs.
fn load_for_queries(path: &Path) -> Result<Config, Failure> {
    let options = upsync::config::LoadOptions {
        read_secrets: false,
        check_folders_exist: false,
    };
    Config::load_with(path, options).map_err(Failure::config)
}

/// The daemon accepts folders that do not exist yet (not mounted, about to be created): each
/// is watched from when it appears, and the watcher logs that it is waiting.
fn load_for_daemon(path: &Path) -> Result<Config, Failure> {
    let options = upsync::config::LoadOptions {
        check_folders_exist: false,
        ..Default::default()
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

/// The paths named on the command line, spelled as the folders are; a path in no configured
/// folder is a usage error, named before anything is done.
fn paths_in_folders(config: &Config, paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    paths
        .iter()
        .map(|given| {
            let path = upsync::config::command_line_path(given);
            match config.folder_holding(&path) {
                Some(_) => Ok(path),
                None => Err(Failure::config(format!(
                    "{} is in no configured folder (the folders are: {})",
                    given.display(),
                    folder_list(config)
                ))),
            }
        })
        .collect()
}

fn folder_list(config: &Config) -> String {
    let folders: Vec<String> = config
        .folders
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    folders.join(", ")
}

/// The SIGTERM/SIGINT handlers ([`signals::stop_signal`]), installed now.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    signals::stop_signal().map_err(signal_failure)
}

fn signal_failure(err: std::io::Error) -> Failure {
    Failure::runtime(format!("cannot install the signal handlers: {err}"))
}

fn init_logging(format: LogFormat, bars: Option<MultiProgress>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter { bars });
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            // journald adds its own timestamps.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().with_ansi(false).init()
            } else {
                // Colours only for a person at a terminal, never in log files.
                builder
                    .with_ansi(
                        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    )
                    .init()
            }
        }
    }
}

/// Makes one stderr writer per log event; with progress bars on screen, the event's line is
/// written while the bars are cleared, so neither garbles the other.
struct LogWriter {
    bars: Option<MultiProgress>,
}

struct LogLine {
    bars: Option<MultiProgress>,
    line: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            bars: self.bars.clone(),
            line: Vec::new(),
        }
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write;
        if self.line.is_empty() {
            return;
        }
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.line);
        };
        match &self.bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}
