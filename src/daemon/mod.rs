//! The daemon: wires the embedded emulator (if configured), the state store, the backends,
//! one watcher per folder, the workers, the control socket, the metrics endpoint and the
//! systemd notifications, and shuts them down in order.
//!
//! Two modes share that wiring ([`Core`]): [`run`] watches until told to stop; [`sync_once`]
//! (`upsync sync --once`) scans the folders once, uploads what it found and returns a summary.
//!
//! Shutdown: stop claiming jobs, give in-flight uploads `shutdown_timeout` to reach their
//! next checkpoint, then abort whatever is left (safe: progress is only ever persisted after
//! the remote acknowledged it) and flush the store.

pub mod control;
mod once;
pub mod status;
pub mod systemd;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KifsAuth, Target};
use crate::emulator::kifs::{KifsToken, KifsUser};
use crate::emulator::{self, EmulatorOptions, RunningEmulator};
use crate::metrics::Metrics;
use crate::queue::{Store, StoreError};
use crate::upload::kifs::KifsBackend;
use crate::upload::redivis::RedivisBackend;
use crate::upload::{Backend, Disposition, UploadError};
use crate::watch::{self, WatchContext};
pub use once::{ProgressMode, SyncOptions, SyncSummary, sync_once};
use status::{Live, StatusReport};
use systemd::Notifier;
use worker::{Backends, Worker};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Startup(String),
}

/// Runs until `shutdown` resolves; returns once everything is stopped and flushed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let mut core = Core::start(config).await?;
    let scans = core.spawn_watchers();
    core.spawn_workers();
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(PHASE_STARTING));
    let ticker = notifier.enabled().then(|| {
        tokio::spawn(status_ticker(
            core.probe(),
            notifier.clone(),
            Arc::clone(&phase),
        ))
    });

    tokio::pin!(shutdown);
    for (folder, scanned) in scans {
        tokio::select! {
            summary = scanned => {
                if let Ok(summary) = summary {
                    tracing::info!(folder = %folder, files = summary.files_seen, queued = summary.queued, "start-up scan done");
                }
            }
            _ = &mut shutdown => {
                phase.store(PHASE_STOPPING, Ordering::Relaxed);
                notifier.stopping();
                return finish(core, ticker).await;
            }
        }
    }
    tracing::info!(
        folders = core.config.folders.len(),
        workers = core.config.concurrency,
        "upsync is running"
    );
    phase.store(PHASE_RUNNING, Ordering::Relaxed);
    if notifier.enabled() {
        let line = core
            .probe()
            .summary()
            .await
            .unwrap_or_else(|err| format!("running; queue figures unavailable: {err}"));
        notifier.ready(&line);
    }
    shutdown.await;
    phase.store(PHASE_STOPPING, Ordering::Relaxed);
    notifier.stopping();
    finish(core, ticker).await
}

async fn finish(
    core: Core,
    ticker: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), DaemonError> {
    // The ticker keeps pinging the watchdog while in-flight uploads checkpoint.
    let stopped = core.stop().await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    stopped
}

const PHASE_STARTING: u8 = 0;
const PHASE_RUNNING: u8 = 1;
const PHASE_STOPPING: u8 = 2;

/// Sends `STATUS=` (and `WATCHDOG=1` when enabled) every [`Notifier::interval`]; the
/// watchdog ping follows a successful read of the queue figures.
async fn status_ticker(probe: Probe, notifier: Notifier, phase: Arc<std::sync::atomic::AtomicU8>) {
    let mut tick = tokio::time::interval(notifier.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let figures = probe.summary().await;
        match (phase.load(Ordering::Relaxed), figures) {
            (PHASE_STARTING, Ok(line)) => notifier.alive(&format!("scanning folders; {line}")),
            (PHASE_RUNNING, Ok(line)) => notifier.alive(&line),
            (_, Ok(_)) => notifier.alive("stopping: waiting for in-flight uploads"),
            (_, Err(err)) => {
                tracing::warn!(error = %err, "cannot read the queue figures; not pinging the watchdog");
                notifier.status(&format!("queue figures unavailable: {err}"));
            }
        }
    }
}

/// Reads the status report of a running daemon (control socket, metrics, systemd, sync).
#[derive(Clone)]
pub(crate) struct Probe {
    config: Arc<Config>,
    store: Store,
    live: Arc<Live>,
}

impl Probe {
    pub(crate) fn report(&self) -> Result<StatusReport, StoreError> {
        status::build_report(&self.config, &self.store, Some(&self.live))
    }

    /// The report, read on the blocking pool.
    pub(crate) async fn report_async(&self) -> Result<StatusReport, String> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.report())
            .await
            .map_err(|err| format!("status task failed: {err}"))?
            .map_err(|err| err.to_string())
    }

    async fn summary(&self) -> Result<String, String> {
        self.report_async()
            .await
            .map(|report| status::summary_line(&report))
    }
}

/// What `run` and `sync_once` share: started by [`Core::start`], stopped by [`Core::stop`].
pub(crate) struct Core {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    emulator: Option<RunningEmulator>,
    backends: Backends,
    pub(crate) wake: Arc<Notify>,
    pub(crate) live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// Stops claiming new jobs.
    stop_claiming: CancellationToken,
    /// Asks in-flight uploads to checkpoint and return.
    interrupt: CancellationToken,
    stop_watching: CancellationToken,
    /// Closes the control socket and the metrics endpoint, last.
    stop_serving: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Core {
    /// Starts the embedded emulator, opens the store (recovering interrupted jobs), builds
    /// the backends, checks the remote targets, and opens the control socket and the
    /// metrics endpoint.
    async fn start(config: Config) -> Result<Core, DaemonError> {
        let config = Arc::new(config);
        let emulator = start_embedded_emulator(&config).await?;
        let store = open_store(&config).await?;
        let recovered = store
            .recover_after_restart()
            .map_err(|err| DaemonError::Startup(err.to_string()))?;
        if recovered > 0 {
            tracing::info!(
                jobs = recovered,
                "resuming jobs interrupted by the last stop"
            );
        }
        let live = Arc::new(Live::default());
        let wake = Arc::new(Notify::new());
        let stop_serving = CancellationToken::new();
        // Opened before the remote checks, so `upsync status` answers while they run.
        control::serve(
            Arc::clone(&config),
            store.clone(),
            Arc::clone(&live),
            Arc::clone(&wake),
            stop_serving.clone(),
        )
        .await
        .map_err(|err| {
            DaemonError::Startup(format!(
                "cannot open the control socket {}: {err}",
                control::socket_path(&config.state_dir).display()
            ))
        })?;
        let close_on_error = stop_serving.clone().drop_guard();
        let backends = build_backends(&config)?;
        prepare_folders(&config, &backends).await?;
        {
            // The ledger scan can take a moment on a large tree; status shows "never" until
            // it is merged.
            let (store, live) = (store.clone(), Arc::clone(&live));
            tokio::task::spawn_blocking(move || match store.last_uploads() {
                Ok(last) => live.activity.seed(last),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the last upload times from the ledger")
                }
            });
        }
        let core = Core {
            config,
            store,
            emulator,
            backends,
            wake,
            live,
            metrics: Arc::new(Metrics::new()),
            stop_claiming: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            stop_watching: CancellationToken::new(),
            stop_serving,
            workers: Vec::new(),
            watchers: Vec::new(),
        };
        if let Some(addr) = core.config.metrics_listen {
            let probe = core.probe();
            let metrics = Arc::clone(&core.metrics);
            let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || match probe.report() {
                Ok(report) => {
                    for gauges in status::folder_gauges(&probe.config, &report) {
                        metrics.set_folder(&gauges);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the queue figures for the metrics")
                }
            });
            let bound = crate::metrics::serve(
                addr,
                Arc::clone(&core.metrics),
                refresh,
                core.stop_serving.clone(),
            )
            .await
            .map_err(|err| {
                DaemonError::Startup(format!(
                    "cannot serve metrics on {addr} (metrics_listen): {err}"
                ))
            })?;
            tracing::info!(url = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
        }
        close_on_error.disarm();
        Ok(core)
    }

    pub(crate) fn probe(&self) -> Probe {
        Probe {
            config: Arc::clone(&self.config),
            store: self.store.clone(),
            live: Arc::clone(&self.live),
        }
    }

    /// Starts one watcher per folder; each sends its start-up scan's summary when queued.
    fn spawn_watchers(
        &mut self,
    ) -> Vec<(String, tokio::sync::oneshot::Receiver<watch::ScanSummary>)> {
        let mut scans = Vec::new();
        for folder in &self.config.folders {
            let (scanned_tx, scanned_rx) = tokio::sync::oneshot::channel();
            let ctx = WatchContext {
                store: self.store.clone(),
                wake: Arc::clone(&self.wake),
                shutdown: self.stop_watching.clone(),
                rescan_interval: self.config.rescan_interval,
            };
            self.watchers.push(tokio::spawn(watch::run_folder(
                folder.clone(),
                ctx,
                scanned_tx,
            )));
            scans.push((folder.path.display().to_string(), scanned_rx));
        }
        scans
    }

    fn spawn_workers(&mut self) {
        for _ in 0..self.config.concurrency {
            let worker = Worker {
                config: Arc::clone(&self.config),
                store: self.store.clone(),
                backends: self.backends.clone(),
                wake: Arc::clone(&self.wake),
                live: Arc::clone(&self.live),
                metrics: Arc::clone(&self.metrics),
                stop_claiming: self.stop_claiming.clone(),
                interrupt: self.interrupt.clone(),
            };
            self.workers.push(tokio::spawn(worker.run()));
        }
    }

    async fn stop(self) -> Result<(), DaemonError> {
        let Core {
            config,
            store,
            emulator,
            stop_claiming,
            interrupt,
            stop_watching,
            stop_serving,
            workers,
            watchers,
            ..
        } = self;
        tracing::info!(
            timeout_s = config.shutdown_timeout.as_secs(),
            "shutting down: no new uploads, waiting for in-flight ones"
        );
        stop_claiming.cancel();
        stop_watching.cancel();
        let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
        let all_done = futures::future::join_all(workers);
        tokio::pin!(all_done);
        // In-flight uploads continue until the deadline's last stretch, then checkpoint.
        let checkpoint_at = config
            .shutdown_timeout
            .saturating_sub(Duration::from_secs(2).min(config.shutdown_timeout / 2));
        tokio::select! {
            _ = &mut all_done => {}
            _ = tokio::time::sleep(checkpoint_at) => {
                interrupt.cancel();
                let remaining = config.shutdown_timeout.saturating_sub(checkpoint_at);
                if tokio::time::timeout(remaining, &mut all_done).await.is_err() {
                    tracing::warn!("in-flight uploads did not stop in time; they resume at the next start");
                    for abort in aborts {
                        abort.abort();
                    }
                }
            }
        }
        for watcher in watchers {
            let _ = tokio::time::timeout(Duration::from_secs(2), watcher).await;
        }
        stop_serving.cancel();
        store.flush().map_err(|err| {
            DaemonError::Startup(format!("final flush of the state database failed: {err}"))
        })?;
        if let Some(emulator) = emulator {
            emulator.shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), emulator.task).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long the start waits for a state database held by someone else.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the store, waiting a little while its lock is held: `upsync status` and
/// `upsync retry` open it briefly when no daemon answers, and must not make a starting
/// daemon fail. Another daemon holds it for good, which is reported after [`LOCK_WAIT`].
async fn open_store(config: &Config) -> Result<Store, DaemonError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match Store::open(&config.state_dir) {
            Ok(store) => return Ok(store),
            Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                if !logged {
                    tracing::info!(state_dir = %config.state_dir.display(), "the state database is in use; waiting for it");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(DaemonError::Startup(err.to_string())),
        }
    }
}

/// Starts the in-process emulator of an `[emulator]` section, accepting the credentials the
/// config itself uses (so the demo exercises real authentication).
async fn start_embedded_emulator(config: &Config) -> Result<Option<RunningEmulator>, DaemonError> {
    let Some(section) = &config.emulator else {
        return Ok(None);
    };
    let mut options = EmulatorOptions::with_data_dir(section.data_dir.clone());
    if let Some(kifs) = &config.kifs {
        match &kifs.auth {
            KifsAuth::Basic { username, password } => options.kifs.kifs_users.push(KifsUser {
                name: username.clone(),
                password: password.clone(),
            }),
            KifsAuth::Bearer { token } => options.kifs.kifs_tokens.push(KifsToken {
                token: token.clone(),
                user: "token-user".into(),
            }),
            KifsAuth::None => {}
        }
    }
    if let Some(redivis) = &config.redivis {
        options.redivis.redivis_token = Some(redivis.token.clone());
    }
    let running = emulator::start(&section.listen.to_string(), options)
        .await
        .map_err(|err| DaemonError::Startup(format!("embedded emulator: {err}")))?;
    tracing::info!(
        kifs = %format!("http://{}/kifs", running.addr),
        redivis = %format!("http://{}/api/v1", running.addr),
        data = %section.data_dir.display(),
        "embedded emulator started"
    );
    Ok(Some(running))
}

fn build_backends(config: &Config) -> Result<Backends, DaemonError> {
    let mut backends = Backends::default();
    if let Some(kifs) = &config.kifs {
        let backend = KifsBackend::new(kifs).map_err(DaemonError::Startup)?;
        backends.kifs = Some(Arc::new(Backend::Kifs(backend)));
    }
    if let Some(redivis) = &config.redivis {
        let backend = RedivisBackend::new(redivis).map_err(DaemonError::Startup)?;
        backends.redivis = Some(Arc::new(Backend::Redivis(backend)));
    }
    Ok(backends)
}

/// A folder whose remote definitively cannot take files (missing directory, no permission,
/// rejected credentials) stops the start with a clear error; an unreachable remote only
/// warns, since uploads retry until it is back.
async fn prepare_folders(config: &Config, backends: &Backends) -> Result<(), DaemonError> {
    for folder in &config.folders {
        let Some(backend) = backends.for_target(&folder.target) else {
            continue;
        };
        match backend.prepare_folder(folder).await {
            Ok(()) => {}
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
            }) => {
                let target = match &folder.target {
                    Target::KifsDirectory { directory, .. } => {
                        format!("KiFS directory '{directory}'")
                    }
                    Target::RedivisTable(table) => format!("Redivis table '{table}'"),
                };
                return Err(DaemonError::Startup(format!(
                    "folder {} → {target}: {message}",
                    folder.path.display()
                )));
            }
            Err(err) => {
                tracing::warn!(folder = %folder.path.display(), error = %err, "cannot check the remote target yet; uploads will retry");
            }
        }
    }
    Ok(())
}
