//! The daemon: wires the embedded emulator (if configured), the state store, the backends,
//! one watcher per folder, the workers and the control socket, and shuts them down in order.
//!
//! Shutdown: stop claiming jobs, give in-flight uploads `shutdown_timeout` to reach their
//! next checkpoint, then abort whatever is left (safe: progress is only ever persisted after
//! the remote acknowledged it) and flush the store. Reload (SIGHUP) and the shutdown
//! sequence live in [`fleet`]; `upsync run --rebuild-state` in [`rebuild`].

pub mod control;
mod fleet;
pub mod rebuild;
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
use fleet::Fleet;
use status::InFlightRegistry;
use worker::Backends;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Startup(String),
    /// The daemon ran but had to stop (the state database can no longer be written).
    #[error("{0}")]
    Runtime(String),
}

/// Runs until `shutdown` resolves; returns once everything is stopped and flushed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    run_reloadable(config, shutdown, reload_rx).await
}

/// [`run`], reloading the config file (see [`fleet`]) whenever `reload` receives.
pub async fn run_reloadable(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let emulator = start_embedded_emulator(&config).await?;
    let store = open_store(&config.state_dir).await?;
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

    let mut fleet = Fleet::new(
        Arc::clone(&config),
        store,
        backends,
        wake,
        in_flight,
        stop_watching,
    );
    fleet.requeue_returning_folders();
    let scans = fleet.start_watchers();
    fleet.start_workers();

    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut failure = None;
    for (folder, scanned) in scans {
        tokio::select! {
            summary = scanned => {
                if let Ok(summary) = summary {
                    tracing::info!(folder = %folder, files = summary.files_seen, queued = summary.queued, "start-up scan done");
                }
            }
            _ = &mut shutdown => {
                stopping = true;
                break;
            }
        }
    }
    if !stopping {
        tracing::info!(
            folders = config.folders.len(),
            workers = config.concurrency,
            "upsync is running"
        );
        let mut broken = std::pin::pin!(fleet::store_failure(fleet.store()));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = reload.recv() => fleet.reload().await,
                err = &mut broken => {
                    failure = Some(err);
                    break;
                }
            }
        }
    }
    let stopped = match &failure {
        // Nothing can be recorded any more: give uploads only a moment to checkpoint.
        Some(_) => fleet.stop_within(Duration::from_secs(2)).await,
        None => fleet.stop().await,
    };
    if let Some(emulator) = emulator {
        emulator.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), emulator.task).await;
    }
    if let Some(err) = failure {
        tracing::error!(error = %err, "stopped because the state database can no longer be written");
        return Err(DaemonError::Runtime(format!(
            "the state database can no longer be written: {err} (upsync stopped so that a \
             restart reopens it once the cause is fixed)"
        )));
    }
    stopped?;
    tracing::info!("stopped");
    Ok(())
}

/// How long the start waits for the state dir's lock: `upsync status` or `upsync retry`
/// hold it for a moment when they read a stopped daemon's database.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the store, waiting up to [`LOCK_WAIT`] for a short-lived holder of the lock; a
/// daemon that keeps it makes the start fail with the store's "already running" message.
async fn open_store(state_dir: &std::path::Path) -> Result<Store, DaemonError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match Store::open(state_dir) {
            Ok(store) => return Ok(store),
            Err(crate::queue::StoreError::Locked { .. })
                if tokio::time::Instant::now() < deadline =>
            {
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
