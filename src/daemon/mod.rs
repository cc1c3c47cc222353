//! The daemon: wires the embedded emulator (if configured), the state store, the backends,
//! one watcher per folder, the workers, the control socket, the metrics endpoint and the
//! systemd notifications, and shuts them down in order.
//!
//! Nothing in the start asks a remote: each folder's remote is checked in the background
//! ([`gates`]), a remote that stops answering is probed alone (`remotes`), workers claim
//! only from folders whose remote takes files, in turn (`schedule`), and Redivis imports
//! are waited for without a worker (`imports`).
//!
//! Two modes share that wiring ([`Core`]): [`run`] watches until told to stop (and reloads
//! the config on SIGHUP, see [`fleet`], and follows secret files rotated in place, see
//! `secrets`); [`sync_once`] (`upsync sync --once`) scans the
//! folders once, uploads what it found and returns a summary. `upsync run --rebuild-state`
//! is in [`rebuild`].
//!
//! Memory: [`heap`] hands the memory the daemon freed back to the system while the daemon
//! is busy.
//!
//! Shutdown: stop claiming jobs and end every pause (retries, remote checks, import waits),
//! give in-flight uploads `shutdown_timeout` to reach their next checkpoint, then abort
//! whatever is left (safe: progress is only ever persisted after the remote acknowledged
//! it) and flush the store.

mod compaction;
pub mod control;
mod deleter;
pub mod dry_run;
mod fleet;
pub mod gates;
pub mod heap;
pub mod history;
mod imports;
mod once;
pub mod rebuild;
mod remotes;
pub(crate) mod retarget;
mod schedule;
mod secrets;
pub mod status;
pub mod systemd;
mod uploaded;
mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KifsAuth};
use crate::emulator::kifs::{KifsToken, KifsUser};
use crate::emulator::{self, EmulatorOptions, RunningEmulator};
use crate::metrics::Metrics;
use crate::net::Bandwidth;
use crate::queue::{Store, StoreError};
use crate::upload::Backend;
use crate::upload::Backends;
use crate::upload::kifs::KifsBackend;
use crate::upload::redivis::RedivisBackend;
use crate::watch;
use fleet::Fleet;
pub use once::{ProgressMode, SyncOptions, SyncSummary, sync_once};
use status::{Live, StatusReport};
use systemd::Notifier;

/// Why the daemon could not run, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// It could not start (the state database, the control socket, the metrics endpoint,
    /// the backends, a `--rebuild-state`).
    #[error("{0}")]
    Startup(String),
    /// The daemon ran but had to stop (the state database can no longer be written).
    #[error("{0}")]
    Runtime(String),
    /// A pass of `sync --once` could not finish (a scan or the count of what is left).
    #[error("{0}")]
    Pass(String),
    /// Everything stopped, but the last flush of the state database failed: what the last
    /// moments acknowledged may be sent again at the next start.
    #[error("final flush of the state database failed: {0}")]
    FinalFlush(#[source] StoreError),
}

/// Runs until `shutdown` resolves; returns once everything is stopped and flushed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    run_reloadable(config, shutdown, reload_rx).await
}

/// [`run`], reloading the config file (see [`fleet`]) whenever `reload` receives.
///
/// 1. The core starts, then the watchers, the workers and the systemd status ticker.
/// 2. The start-up scans end ([`start_up_scans`]), unless shutdown comes first.
/// 3. The daemon says it runs ([`Core::announce_running`]) and serves reloads and rotated
///    secrets until shutdown or until the state database fails ([`Core::serve`]).
/// 4. It stops: within 2 s after a store failure, which is the error it returns.
pub async fn run_reloadable(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), DaemonError> {
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
    let mut failure = None;
    if start_up_scans(scans, shutdown.as_mut()).await {
        core.announce_running(&notifier, &phase).await;
        failure = core.serve(shutdown, reload).await;
    }
    phase.store(PHASE_STOPPING, Ordering::Relaxed);
    notifier.stopping();
    // Nothing can be recorded any more after a store failure: give uploads only a moment.
    let deadline = failure.as_ref().map(|_| Duration::from_secs(2));
    // The ticker keeps pinging the watchdog while in-flight uploads checkpoint.
    let stopped = core.stop_within(deadline).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(err) = failure {
        tracing::error!(error = %err, "stopped because the state database can no longer be written");
        return Err(DaemonError::Runtime(format!(
            "the state database can no longer be written: {err} (upsync stopped so that a \
             restart reopens it once the cause is fixed)"
        )));
    }
    stopped
}

/// Step 2 of [`run_reloadable`]: waits for each folder's start-up scan, saying what it
/// found. False if shutdown came first.
async fn start_up_scans(
    scans: Vec<(String, tokio::sync::oneshot::Receiver<watch::ScanSummary>)>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    for (folder, scanned) in scans {
        tokio::select! {
            summary = scanned => {
                if let Ok(summary) = summary {
                    tracing::info!(folder = %folder, files = summary.files_seen, queued = summary.queued, "start-up scan done");
                }
            }
            _ = shutdown.as_mut() => return false,
        }
    }
    true
}

const PHASE_STARTING: u8 = 0;
const PHASE_RUNNING: u8 = 1;
const PHASE_STOPPING: u8 = 2;

/// Sends `STATUS=` (and `WATCHDOG=1` when enabled) every [`Notifier::interval`]; the
/// watchdog ping follows a successful read of the queue figures.
async fn status_ticker(probe: Probe, notifier: Notifier, phase: Arc<std::sync::atomic::AtomicU8>) {
    let mut tick = crate::beat::interval(notifier.interval());
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

/// The configuration in effect: the start-up one until a reload (SIGHUP) replaces it. What
/// reports on the folders (status, metrics, systemd) reads it at each report, so a reload
/// shows at once.
#[derive(Clone)]
pub(crate) struct CurrentConfig(Arc<std::sync::RwLock<Arc<Config>>>);

impl CurrentConfig {
    pub(crate) fn new(config: Arc<Config>) -> CurrentConfig {
        CurrentConfig(Arc::new(std::sync::RwLock::new(config)))
    }

    pub(crate) fn get(&self) -> Arc<Config> {
        Arc::clone(&self.0.read().expect("config lock is never poisoned"))
    }

    pub(crate) fn set(&self, config: Arc<Config>) {
        *self.0.write().expect("config lock is never poisoned") = config;
    }
}

/// Reads the status report of a running daemon (control socket, metrics, systemd, sync).
#[derive(Clone)]
pub(crate) struct Probe {
    config: CurrentConfig,
    store: Store,
    live: Arc<Live>,
}

impl Probe {
    pub(crate) fn report(&self) -> Result<StatusReport, StoreError> {
        status::build_report(&self.config.get(), &self.store, Some(&self.live))
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.get()
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
    pub(crate) wake: Arc<Notify>,
    pub(crate) live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// Closes the control socket and the metrics endpoint, last.
    stop_serving: CancellationToken,
    /// The watchers and workers (and how a reload changes them).
    fleet: Fleet,
}

/// Step 3 of [`Core::start`]: the jobs the last stop interrupted, made ready to resume.
fn recover_interrupted(store: &Store) -> Result<(), DaemonError> {
    let recovered = store
        .recover_after_restart()
        .map_err(|err| DaemonError::Startup(err.to_string()))?;
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "resuming jobs interrupted by the last stop"
        );
    }
    Ok(())
}

/// Step 4 of [`Core::start`]: the control socket, opened before the remote checks so that
/// `upsync status` answers while they run.
async fn serve_control(
    current: &CurrentConfig,
    store: &Store,
    live: &Arc<Live>,
    wake: &Arc<Notify>,
    stop_serving: &CancellationToken,
) -> Result<(), DaemonError> {
    control::serve(
        current.clone(),
        store.clone(),
        Arc::clone(live),
        Arc::clone(wake),
        stop_serving.clone(),
    )
    .await
    .map_err(|err| {
        DaemonError::Startup(format!(
            "cannot open the control socket {}: {err}",
            control::socket_path(&current.get().state_dir).display()
        ))
    })
}

impl Core {
    /// Starts what `run` and `sync --once` share. No remote is asked anything here: each
    /// folder's remote is checked in the background ([`gates`]).
    /// 1. Opens the store: its lock is what tells a second upsync on this state_dir to
    ///    stop, before it serves an emulator of its own or fails on the first one's port.
    /// 2. Starts the embedded emulator, if configured.
    /// 3. Recovers the jobs the last stop interrupted, and follows folders given another
    ///    target since ([`retarget`]).
    /// 4. Opens the control socket, so that `upsync status` answers from now on.
    /// 5. Builds the backends, with the bandwidth limit they share.
    /// 6. Starts the housekeeping tasks ([`Core::start_housekeeping`]).
    /// 7. Builds the fleet of watchers and workers, and serves the metrics.
    ///
    /// A step after the fourth that fails closes the control socket again.
    async fn start(config: Config) -> Result<Core, DaemonError> {
        let config = Arc::new(config);
        let store = open_store(&config).await?;
        let emulator = start_embedded_emulator(&config).await?;
        recover_interrupted(&store)?;
        retarget::follow_targets(&store, config.folders.clone()).await;
        let live = Arc::new(Live::default());
        let wake = Arc::new(Notify::new());
        let stop_serving = CancellationToken::new();
        let current = CurrentConfig::new(Arc::clone(&config));
        serve_control(&current, &store, &live, &wake, &stop_serving).await?;
        let close_on_error = stop_serving.clone().drop_guard();
        live.bandwidth.configure(config.bandwidth.clone());
        log_bandwidth(&config, &live.bandwidth);
        let backends = build_backends(&config, &live.bandwidth)?;
        Core::start_housekeeping(&store, &live, &stop_serving);
        let metrics = Arc::new(Metrics::new());
        let fleet = Fleet::new(
            current,
            store.clone(),
            backends,
            Arc::clone(&wake),
            Arc::clone(&live),
            Arc::clone(&metrics),
            CancellationToken::new(),
        );
        let core = Core {
            config,
            store,
            emulator,
            wake,
            live,
            metrics,
            stop_serving,
            fleet,
        };
        core.serve_metrics().await?;
        close_on_error.disarm();
        Ok(core)
    }

    /// Step 6 of [`Core::start`]: the tasks that keep the daemon lean while it runs: the
    /// last upload times read from the ledger (the scan can take a moment on a large tree;
    /// status shows "never" until it is merged), the heap trimmed while the store is busy,
    /// and the database compacted once it is idle.
    fn start_housekeeping(store: &Store, live: &Arc<Live>, stop_serving: &CancellationToken) {
        {
            let (store, live) = (store.clone(), Arc::clone(live));
            tokio::task::spawn_blocking(move || match store.last_uploads() {
                Ok(last) => live.activity.seed(last),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the last upload times from the ledger")
                }
            });
        }
        tokio::spawn({
            let store = store.clone();
            let bell = store.bell();
            heap::trim_while_busy(
                move || store.activity(),
                bell,
                heap::trim,
                heap::TRIM_EVERY,
                stop_serving.clone(),
            )
        });
        tokio::spawn(compaction::compact_when_idle(
            store.clone(),
            crate::queue::CompactPolicy::default(),
            stop_serving.clone(),
        ));
    }

    /// Step 7 of [`Core::start`]: the metrics endpoint, when `metrics_listen` asks for one;
    /// each scrape refreshes the queue figures first.
    async fn serve_metrics(&self) -> Result<(), DaemonError> {
        let Some(addr) = self.config.metrics_listen else {
            return Ok(());
        };
        let probe = self.probe();
        let metrics = Arc::clone(&self.metrics);
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            // One read of the configuration for both: a reload may land in between.
            let config = probe.config();
            match status::build_report(&config, &probe.store, Some(&probe.live)) {
                Ok(report) => {
                    metrics.set_folders(&status::folder_gauges(&config, &report));
                    metrics.set_bandwidth_limit(report.bandwidth.limit_bytes_per_s);
                    metrics.set_remotes(&status::remote_gauges(&report));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the queue figures for the metrics")
                }
            }
        });
        let bound = crate::metrics::serve(
            addr,
            Arc::clone(&self.metrics),
            refresh,
            self.stop_serving.clone(),
        )
        .await
        .map_err(|err| {
            DaemonError::Startup(format!(
                "cannot serve metrics on {addr} (metrics_listen): {err}"
            ))
        })?;
        tracing::info!(url = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
        Ok(())
    }

    pub(crate) fn probe(&self) -> Probe {
        Probe {
            config: self.fleet.current.clone(),
            store: self.store.clone(),
            live: Arc::clone(&self.live),
        }
    }

    /// Starts one watcher per folder; each sends its start-up scan's summary when queued.
    /// Jobs that failed because their folder had left the configuration are queued again
    /// first, for the folders configured now. Each folder's remote check starts too.
    fn spawn_watchers(
        &mut self,
    ) -> Vec<(String, tokio::sync::oneshot::Receiver<watch::ScanSummary>)> {
        self.fleet.requeue_returning_folders();
        self.fleet.start_checks();
        self.fleet.start_watchers()
    }

    fn spawn_workers(&mut self) {
        self.fleet.start_workers();
    }

    /// Starts each folder's remote check, which lets the workers claim its jobs.
    fn spawn_checks(&mut self) {
        self.fleet.start_checks();
    }

    async fn stop(self) -> Result<(), DaemonError> {
        self.stop_within(None).await
    }

    /// Step 3 of [`run_reloadable`]: says that upsync runs, in the log and to systemd
    /// (`READY=1` with the queue's figures).
    async fn announce_running(&self, notifier: &Notifier, phase: &std::sync::atomic::AtomicU8) {
        tracing::info!(
            folders = self.config.folders.len(),
            workers = self.config.concurrency,
            "upsync is running"
        );
        phase.store(PHASE_RUNNING, Ordering::Relaxed);
        if notifier.enabled() {
            let line = self
                .probe()
                .summary()
                .await
                .unwrap_or_else(|err| format!("running; queue figures unavailable: {err}"));
            notifier.ready(&line);
        }
    }

    /// Step 3 of [`run_reloadable`]: reloads the config when `reload` receives and applies
    /// rotated secrets, until shutdown (`None`) or until the state database can no longer
    /// be written (its error).
    async fn serve(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        mut reload: tokio::sync::mpsc::Receiver<()>,
    ) -> Option<StoreError> {
        let mut broken = std::pin::pin!(fleet::store_failure(self.store.clone()));
        let stop_reading_secrets = CancellationToken::new();
        let mut rotations =
            secrets::watch(self.fleet.current.clone(), stop_reading_secrets.clone());
        let _stop_reading_secrets = stop_reading_secrets.drop_guard();
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return None,
                Some(()) = reload.recv() => self.fleet.reload().await,
                Some(rotated) = rotations.recv() => self.fleet.apply_rotated(rotated).await,
                err = &mut broken => return Some(err),
            }
        }
    }

    /// Stops the fleet (within `deadline`, default `shutdown_timeout`), then the control
    /// socket, the metrics endpoint and the embedded emulator.
    async fn stop_within(self, deadline: Option<Duration>) -> Result<(), DaemonError> {
        let Core {
            emulator,
            stop_serving,
            fleet,
            ..
        } = self;
        let stopped = match deadline {
            Some(deadline) => fleet.stop_within(deadline).await,
            None => fleet.stop().await,
        };
        stop_serving.cancel();
        if let Some(emulator) = emulator {
            emulator.shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), emulator.task).await;
        }
        if stopped.is_ok() {
            tracing::info!("stopped");
        }
        stopped
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
    if let Some(tls) = &section.tls {
        options.tls_cert = Some(tls.cert.clone());
        options.tls_key = Some(tls.key.clone());
    }
    let running = emulator::start(&section.listen.to_string(), options)
        .await
        .map_err(|err| DaemonError::Startup(format!("embedded emulator: {err}")))?;
    let base = format!("{}://{}", running.scheme, running.addr);
    tracing::info!(
        kifs = %format!("{base}/kifs"),
        redivis = %format!("{base}/api/v1"),
        data = %section.data_dir.display(),
        "embedded emulator started"
    );
    Ok(Some(running))
}

/// Says which upload limit is in force at start, when one is configured.
fn log_bandwidth(config: &Config, bandwidth: &Bandwidth) {
    if config.bandwidth == crate::config::BandwidthConfig::default() {
        return;
    }
    let in_force = bandwidth.in_force();
    let limit = in_force.limit.map_or_else(
        || "unlimited".to_string(),
        |limit| format!("{}/s", bytesize::ByteSize(limit)),
    );
    tracing::info!(limit = %limit, rule = ?in_force.rule, "upload bandwidth limit in force");
}

/// The backends of the configured sections, their request bodies paced by `bandwidth`.
fn build_backends(config: &Config, bandwidth: &Arc<Bandwidth>) -> Result<Backends, DaemonError> {
    let mut backends = Backends::default();
    if let Some(kifs) = &config.kifs {
        let backend =
            KifsBackend::new(kifs, Arc::clone(bandwidth)).map_err(DaemonError::Startup)?;
        backends.kifs = Some(Arc::new(Backend::Kifs(backend)));
    }
    if let Some(redivis) = &config.redivis {
        let backend =
            RedivisBackend::new(redivis, Arc::clone(bandwidth)).map_err(DaemonError::Startup)?;
        backends.redivis = Some(Arc::new(Backend::Redivis(backend)));
    }
    Ok(backends)
}
