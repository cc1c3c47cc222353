//! The local emulator: KiFS at `/kifs/...` and the Redivis API at `/api/v1/...` on one HTTP
//! server, with its state on disk under the data directory so it survives its own restart.
//!
//! The server is a hand-written accept loop over hyper rather than `axum::serve`, because a
//! fault must be able to close a connection without any answer: a handler (or the fault
//! layer, see [`faults`]) returns a response carrying the [`DropConnection`] marker, and the
//! service wrapping the router turns it into an error, on which hyper closes the connection.
//! Emulator-only routes live under `/_emulator/` (fault script, counters, test hooks).
//!
//! With `--tls-cert` and `--tls-key` every connection first completes a TLS handshake
//! (within [`HANDSHAKE_TIMEOUT`]) and the same service is served over it (HTTPS).

pub mod faults;
pub mod kifs;
pub mod redivis;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
    /// "http", or "https" with TLS.
    pub scheme: &'static str,
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
    #[error("emulator option: {0}")]
    Options(String),
}

/// Response extension: close the connection instead of sending this response.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// The error the connection service returns to make hyper close the connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection closed without an answer (injected fault)")]
struct ConnectionDropped;

/// How long a shutdown waits for requests in flight before cutting their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A client that connects but does not complete the TLS handshake in this time is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the router for both services, the fault layer and the `/_emulator` routes.
pub fn router(options: &EmulatorOptions) -> Result<Router, EmulatorError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| EmulatorError::Data {
        path: options.data_dir.clone(),
        source,
    })?;
    let engine = Arc::new(faults::FaultEngine::new(&options.faults));
    let kifs = kifs::router(&options.kifs, &options.data_dir.join("kifs"))?;
    let redivis = redivis::router_seeded(
        &options.redivis,
        &options.data_dir.join("redivis"),
        options.faults.seed,
    )?;
    Ok(Router::new()
        .nest("/kifs", kifs)
        .merge(redivis)
        .merge(faults::router(engine.clone()))
        .layer(axum::middleware::from_fn_with_state(engine, faults::layer)))
}

/// Binds `listen` and serves until `shutdown` is cancelled; returns once bound, so
/// `listen = "127.0.0.1:0"` works and the chosen port is in [`RunningEmulator::addr`].
pub async fn start(
    listen: &str,
    options: EmulatorOptions,
) -> Result<RunningEmulator, EmulatorError> {
    let app = router(&options)?;
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        (None, None) => None,
        _ => {
            return Err(EmulatorError::Options(
                "give both --tls-cert and --tls-key, or neither".to_string(),
            ));
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
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
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, app, tls, shutdown.clone()));
    tracing::info!(%addr, kifs = %format!("{scheme}://{addr}/kifs"), redivis = %format!("{scheme}://{addr}/api/v1"), "emulator listening");
    Ok(RunningEmulator {
        addr,
        scheme,
        shutdown,
        task,
    })
}

/// The accept loop: one task per connection, HTTP/1.1 with keep-alive; on shutdown, stop
/// accepting, let connections finish their current request (up to [`SHUTDOWN_GRACE`]).
async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %err, "emulator cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), stop.clone());
        match &tls {
            None => connections.spawn(serve_connection(stream, app, stop)),
            Some(acceptor) => {
                let accepting = acceptor.accept(stream);
                connections.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, stop).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                })
            }
        };
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "emulator shutdown: cutting connections still busy"
        );
        connections.shutdown().await;
    }
    tracing::info!("emulator stopped");
}

async fn serve_connection<S>(stream: S, app: Router, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let response = match app.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                Err(ConnectionDropped)
            } else {
                Ok::<_, ConnectionDropped>(response)
            }
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = outcome {
        tracing::debug!(error = %err, "emulator connection ended with an error");
    }
}
