//! The daemon: wires the embedded emulator (if configured), the state store, the backends,
//! one watcher per folder, the workers and the control socket, and shuts them down in order.
//!
//! Shutdown: stop claiming jobs, give in-flight uploads `shutdown_timeout` to reach their
//! next checkpoint, then abort whatever is left (safe: progress is only ever persisted after
//! the remote acknowledged it) and flush the store.

pub mod control;
pub mod status;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KifsAuth, Target};
use crate::emulator::kifs::{KifsToken, KifsUser};
use crate::emulator::{self, EmulatorOptions, RunningEmulator};
use crate::queue::Store;
use crate::upload::kifs::KifsBackend;
use crate::upload::redivis::RedivisBackend;
use crate::upload::{Backend, Disposition, UploadError};
use crate::watch::{self, WatchContext};
use status::InFlightRegistry;
use worker::{Backends, Worker};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Startup(String),
}

/// Runs until `shutdown` resolves; returns once everything is stopped and flushed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let emulator = start_embedded_emulator(&config).await?;
    let store =
        Store::open(&config.state_dir).map_err(|err| DaemonError::Startup(err.to_string()))?;
    let recovered = store
        .recover_after_restart()
        .map_err(|err| DaemonError::Startup(err.to_string()))?;
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "resuming jobs interrupted by the last stop"
        );
    }
    let backends = build_backends(&config)?;
    prepare_folders(&config, &backends).await?;

    let wake = Arc::new(Notify::new());
    let in_flight = Arc::new(InFlightRegistry::default());
    let stop_claiming = CancellationToken::new();
    let interrupt = CancellationToken::new();
    let stop_watching = CancellationToken::new();

    control::serve(
        Arc::clone(&config),
        store.clone(),
        Arc::clone(&in_flight),
        Arc::clone(&wake),
        stop_watching.clone(),
    )
    .await
    .map_err(|err| {
        DaemonError::Startup(format!(
            "cannot open the control socket {}: {err}",
            control::socket_path(&config.state_dir).display()
        ))
    })?;

    let mut scans = Vec::new();
    let mut watchers = Vec::new();
    for folder in &config.folders {
        let (scanned_tx, scanned_rx) = tokio::sync::oneshot::channel();
        let ctx = WatchContext {
            store: store.clone(),
            wake: Arc::clone(&wake),
            shutdown: stop_watching.clone(),
            rescan_interval: config.rescan_interval,
        };
        watchers.push(tokio::spawn(watch::run_folder(
            folder.clone(),
            ctx,
            scanned_tx,
        )));
        scans.push((folder.path.display().to_string(), scanned_rx));
    }

    let mut workers = Vec::new();
    for _ in 0..config.concurrency {
        let worker = Worker {
            config: Arc::clone(&config),
            store: store.clone(),
            backends: backends.clone(),
            wake: Arc::clone(&wake),
            in_flight: Arc::clone(&in_flight),
            stop_claiming: stop_claiming.clone(),
            interrupt: interrupt.clone(),
        };
        workers.push(tokio::spawn(worker.run()));
    }

    tokio::pin!(shutdown);
    for (folder, scanned) in scans {
        tokio::select! {
            summary = scanned => {
                if let Ok(summary) = summary {
                    tracing::info!(folder = %folder, files = summary.files_seen, queued = summary.queued, "start-up scan done");
                }
            }
            _ = &mut shutdown => {
                return stop(config, store, emulator, stop_claiming, interrupt, stop_watching, workers, watchers).await;
            }
        }
    }
    tracing::info!(
        folders = config.folders.len(),
        workers = config.concurrency,
        "upsync is running"
    );
    shutdown.await;
    stop(
        config,
        store,
        emulator,
        stop_claiming,
        interrupt,
        stop_watching,
        workers,
        watchers,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn stop(
    config: Arc<Config>,
    store: Store,
    emulator: Option<RunningEmulator>,
    stop_claiming: CancellationToken,
    interrupt: CancellationToken,
    stop_watching: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), DaemonError> {
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
