//! The local emulator: KiFS at `/kifs/...` and the Redivis API at `/api/v1/...` on one HTTP
//! server, with its state on disk under the data directory so it survives its own restart.

pub mod faults;
pub mod kifs;
pub mod redivis;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything `upsync emulator` can be told; also built from a config's `[emulator]`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorOptions {
    /// Directory holding the emulator's state (created if missing).
    #[arg(long = "data", value_name = "DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub faults: faults::FaultOptions,
    #[command(flatten)]
    pub kifs: kifs::KifsOptions,
    #[command(flatten)]
    pub redivis: redivis::RedivisOptions,
}

impl EmulatorOptions {
    /// Defaults for everything but the data directory: no faults, anonymous KiFS access.
    pub fn with_data_dir(data_dir: PathBuf) -> EmulatorOptions {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            options: EmulatorOptions,
        }
        let data = data_dir.to_string_lossy().into_owned();
        Wrapper::parse_from(["emulator", "--data", &data]).options
    }
}

/// A running emulator; dropping it does not stop it, `shutdown` does.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("emulator data directory {path}: {source}")]
    Data {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the router for both services.
pub fn router(options: &EmulatorOptions) -> Result<Router, EmulatorError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| EmulatorError::Data {
        path: options.data_dir.clone(),
        source,
    })?;
    let kifs = kifs::router(&options.kifs, &options.data_dir.join("kifs"))?;
    let redivis = redivis::router(&options.redivis, &options.data_dir.join("redivis"))?;
    Ok(Router::new().nest("/kifs", kifs).merge(redivis))
}

/// Binds `listen` and serves until `shutdown` is cancelled.
pub async fn start(
    listen: &str,
    options: EmulatorOptions,
) -> Result<RunningEmulator, EmulatorError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| EmulatorError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let app = router(&options)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "emulator server stopped");
        }
    });
    tracing::info!(%addr, kifs = %format!("http://{addr}/kifs"), redivis = %format!("http://{addr}/api/v1"), "emulator listening");
    Ok(RunningEmulator {
        addr,
        shutdown,
        task,
    })
}
