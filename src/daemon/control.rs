//! The control socket: a Unix socket in `state_dir` (mode 0600) on which a running daemon
//! answers `upsync status` and `upsync retry`, since the state database is locked while it
//! runs. Plain HTTP/1.0: `GET /status`, `POST /retry` with a JSON [`RetryRequest`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::CurrentConfig;
use super::status::{Live, StatusReport, build_report};
use crate::queue::{RetrySelection, Store};

pub const SOCKET_NAME: &str = "control.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryRequest {
    pub all: bool,
    /// Retry the failed deletions, approving those the mass-delete guard holds.
    #[serde(default)]
    pub deletes: bool,
    pub paths: Vec<PathBuf>,
}

impl RetryRequest {
    /// Which failed jobs the request moves back to the queue.
    pub fn selection(&self) -> RetrySelection {
        if self.deletes {
            RetrySelection::Deletes
        } else if self.all {
            RetrySelection::All
        } else {
            RetrySelection::Paths(self.paths.clone())
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryResponse {
    pub requeued: usize,
}

struct ControlState {
    config: CurrentConfig,
    store: Store,
    live: Arc<Live>,
    wake: Arc<Notify>,
}

/// Serves the control socket until `shutdown`. The socket file is replaced if stale (the
/// state_dir lock already guarantees no other daemon owns it).
pub(crate) async fn serve(
    config: CurrentConfig,
    store: Store,
    live: Arc<Live>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The state directory cannot change while the daemon runs (it holds the lock there).
    let path = socket_path(&config.get().state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let state = Arc::new(ControlState {
        config,
        store,
        live,
        wake,
    });
    let app = axum::Router::new()
        .route("/status", get(status))
        .route("/retry", post(retry))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "control socket stopped");
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn status(
    State(state): State<Arc<ControlState>>,
) -> Result<Json<StatusReport>, (StatusCode, String)> {
    build_report(&state.config.get(), &state.store, Some(&state.live))
        .map(Json)
        .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

async fn retry(
    State(state): State<Arc<ControlState>>,
    Json(request): Json<RetryRequest>,
) -> Result<Json<RetryResponse>, (StatusCode, String)> {
    let selection = request.selection();
    let requeued = state
        .store
        .retry_failed(&selection)
        .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    state.wake.notify_waiters();
    Ok(Json(RetryResponse { requeued }))
}

/// Asks a running daemon; `Ok(None)` when no daemon listens on the socket.
pub async fn request<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Option<T>, String> {
    let socket = socket_path(state_dir);
    let mut stream = match UnixStream::connect(&socket).await {
        Ok(stream) => stream,
        Err(_) => return Ok(None),
    };
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: upsync\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("the daemon did not answer on {}", socket.display()))?
        .map_err(|err| format!("talking to the daemon on {}: {err}", socket.display()))?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "malformed answer from the daemon".to_string())?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let payload = &answer[split + 4..];
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "the daemon answered: {} {}",
            head.lines().next().unwrap_or(""),
            String::from_utf8_lossy(payload)
        ));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|err| format!("malformed answer from the daemon: {err}"))
}
