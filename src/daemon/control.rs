//! The control socket: a Unix socket in `state_dir` (mode 0600) on which a running daemon
//! answers `upsync status`, `retry`, `ls` and `forget`, since the state database is locked
//! while it runs. Plain HTTP/1.0: `GET /status`, `POST /retry` with a JSON
//! [`RetryRequest`], `POST /ls` with a [`history::ListRequest`], `POST /forget` with a
//! [`history::ForgetRequest`]. `/status` and `/retry` answer one JSON value; `/ls` and
//! `/forget` answer JSON lines as the work goes ([`history::ListLine`],
//! [`history::ForgetLine`]), until the connection closes.

use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::CurrentConfig;
use super::history;
use super::status::{Live, StatusReport, build_report};
use crate::queue::{RetrySelection, Store};

pub const SOCKET_NAME: &str = "control.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// The longest path a Unix socket address holds: `sun_path` is 108 bytes, its NUL included.
const SOCKET_ADDRESS_MAX: usize = 107;

/// A path to the control socket that `bind(2)` and `connect(2)` accept.
///
/// A Unix socket address holds at most [`SOCKET_ADDRESS_MAX`] bytes of path, so a deep
/// `state_dir` (past about 94 bytes) cannot name its socket directly: the daemon would not
/// start, and no command could reach it. Such a socket is reached through a descriptor of
/// its directory instead (`/proc/self/fd/N/control.sock`), which this keeps open.
struct SocketAddress {
    path: PathBuf,
    _directory: Option<std::fs::File>,
}

impl SocketAddress {
    fn of(socket: &Path) -> std::io::Result<SocketAddress> {
        if socket.as_os_str().len() <= SOCKET_ADDRESS_MAX {
            return Ok(SocketAddress {
                path: socket.to_path_buf(),
                _directory: None,
            });
        }
        let (Some(directory), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a control socket path names a file in a directory",
            ));
        };
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(directory)?;
        let path = Path::new("/proc/self/fd")
            .join(handle.as_raw_fd().to_string())
            .join(name);
        if path.as_os_str().len() > SOCKET_ADDRESS_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the control socket's name is too long for a Unix socket address",
            ));
        }
        Ok(SocketAddress {
            path,
            _directory: Some(handle),
        })
    }
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
    let listener = UnixListener::bind(&SocketAddress::of(&path)?.path)?;
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
        .route("/ls", post(list))
        .route("/forget", post(forget))
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

async fn list(
    State(state): State<Arc<ControlState>>,
    Json(request): Json<history::ListRequest>,
) -> Result<Response, (StatusCode, String)> {
    let folders = history::listed_folders(&state.config.get(), &request)
        .map_err(|err| (StatusCode::BAD_REQUEST, err))?;
    // Two blocks in flight: the walk reads ahead of the socket, and no further.
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(2);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        history::send_list(&store, &folders, &sender);
        // The walk freed what sled decoded of every page it read, and a list writes nothing
        // to the database, so no trim while writing (`heap`) hands it back: each list of
        // 200,000 files left 15-35 MB more resident than the one before until trimmed.
        super::heap::trim();
    });
    Ok(streamed(receiver))
}

/// An answer of JSON lines, sent as `lines` receives them, until its sender is dropped.
fn streamed(lines: mpsc::Receiver<Vec<u8>>) -> Response {
    let blocks = futures::stream::unfold(lines, |mut lines| async move {
        let block = lines.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(block), lines))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(blocks),
    )
        .into_response()
}

async fn forget(
    State(state): State<Arc<ControlState>>,
    Json(request): Json<history::ForgetRequest>,
) -> Result<Response, (StatusCode, String)> {
    let located = history::locate_all(&state.config.get(), &request)
        .map_err(|err| (StatusCode::BAD_REQUEST, err))?;
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(2);
    let (store, wake) = (state.store.clone(), Arc::clone(&state.wake));
    tokio::task::spawn_blocking(move || {
        history::send_forget(&store, &located, &sender);
        wake.notify_waiters();
    });
    Ok(streamed(receiver))
}

/// How long a request may wait for the daemon: for the whole answer, or for each line
/// of an answer in lines.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks a running daemon; `Ok(None)` when no daemon listens on the socket.
pub async fn request<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Option<T>, String> {
    let socket = socket_path(state_dir);
    let Some(stream) = connect(&socket).await? else {
        return Ok(None);
    };
    let exchange = async {
        let mut answer = BufReader::new(send(stream, method, path, body).await?);
        let ok = read_head(&mut answer).await?;
        let mut payload = Vec::new();
        answer.read_to_end(&mut payload).await?;
        Ok::<_, std::io::Error>((ok, payload))
    };
    let (ok, payload) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| no_answer(&socket))?
        .map_err(|err| talking(&socket, &err))?;
    refused(&ok, &payload)?;
    serde_json::from_slice(&payload)
        .map(Some)
        .map_err(|err| format!("malformed answer from the daemon: {err}"))
}

/// Asks a running daemon for an answer in JSON lines (`/ls`, `/forget`), handing each
/// line (without its line break) to `on_line` as it arrives, until the daemon closes the
/// connection or `on_line` breaks; `Ok(None)` when no daemon listens on the socket.
pub async fn request_lines(
    state_dir: &Path,
    path: &str,
    body: &[u8],
    mut on_line: impl FnMut(&[u8]) -> Result<ControlFlow<()>, String>,
) -> Result<Option<()>, String> {
    let socket = socket_path(state_dir);
    let Some(stream) = connect(&socket).await? else {
        return Ok(None);
    };
    let sent = within(&socket, send(stream, "POST", path, Some(body))).await?;
    let mut answer = BufReader::new(sent);
    let ok = within(&socket, read_head(&mut answer)).await?;
    if ok.is_err() {
        let mut payload = Vec::new();
        within(&socket, answer.read_to_end(&mut payload)).await?;
        refused(&ok, &payload)?;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if within(&socket, answer.read_until(b'\n', &mut line)).await? == 0 {
            return Ok(Some(()));
        }
        if on_line(line.strip_suffix(b"\n").unwrap_or(&line))?.is_break() {
            return Ok(Some(()));
        }
    }
}

/// `step` of an exchange with the daemon, given [`ANSWER_TIMEOUT`].
async fn within<T>(
    socket: &Path,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    tokio::time::timeout(ANSWER_TIMEOUT, step)
        .await
        .map_err(|_| no_answer(socket))?
        .map_err(|err| talking(socket, &err))
}

/// The connection to a running daemon; `None` when none listens. A socket this user may
/// not use is an error that says so: the socket (mode 0600) and the state dir are the
/// daemon's user's, and falling back to the database would only fail on its lock file,
/// with a message that does not say a daemon runs or as whom to ask it.
async fn connect(socket: &Path) -> Result<Option<UnixStream>, String> {
    let Ok(address) = SocketAddress::of(socket) else {
        // No state dir to hold a socket: no daemon.
        return Ok(None);
    };
    match UnixStream::connect(&address.path).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot use the control socket {}: {err}; run upsync as the user the daemon runs \
             as (e.g. sudo -u upsync upsync status -c CONFIG)",
            socket.display()
        )),
        Err(_) => Ok(None),
    }
}

/// Sends the request; the connection then carries the answer.
async fn send(
    mut stream: UnixStream,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<UnixStream> {
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: upsync\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    Ok(stream)
}

/// Reads the answer's head: `Ok(())` for a 200, else the status line.
async fn read_head(answer: &mut BufReader<UnixStream>) -> std::io::Result<Result<(), String>> {
    let mut status = String::new();
    answer.read_line(&mut status).await?;
    let mut field = String::new();
    loop {
        field.clear();
        if answer.read_line(&mut field).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "malformed answer from the daemon",
            ));
        }
        if field == "\r\n" || field == "\n" {
            break;
        }
    }
    let status = status.trim_end();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(Ok(()))
    } else {
        Ok(Err(status.to_string()))
    }
}

/// The error for an answer other than a 200: its status line and what the daemon said.
fn refused(ok: &Result<(), String>, payload: &[u8]) -> Result<(), String> {
    match ok {
        Ok(()) => Ok(()),
        Err(status) => Err(format!(
            "the daemon answered: {status} {}",
            String::from_utf8_lossy(payload)
        )),
    }
}

fn no_answer(socket: &Path) -> String {
    format!("the daemon did not answer on {}", socket.display())
}

fn talking(socket: &Path, err: &std::io::Error) -> String {
    format!("talking to the daemon on {}: {err}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fingerprint::Fingerprint;
    use crate::queue::FileKey;

    /// A daemon's control socket over a ledger of `files` uploads in one folder, with the
    /// config and what stops it.
    async fn serving(dir: &Path, files: usize) -> (Arc<Config>, Store, CancellationToken) {
        let folder = dir.join("in");
        std::fs::create_dir_all(&folder).unwrap();
        let config_path = dir.join("upsync.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = \"{}\"\n[kifs]\nurl = \"http://127.0.0.1:1/kifs\"\n\
                 [[folder]]\npath = \"{}\"\nkifs_directory = \"in\"\n",
                dir.join("state").display(),
                folder.display()
            ),
        )
        .unwrap();
        let config = Arc::new(Config::load(&config_path).expect("the config loads"));
        let store = Store::open(&config.state_dir).unwrap();
        let folder = folder.to_string_lossy().into_owned();
        for n in 0..files {
            let fingerprint = Fingerprint {
                size: n as u64,
                mtime_ns: 1,
                inode: n as u64,
                ctime_ns: None,
            };
            let rel = format!("f{n:05}");
            store
                .record_uploaded(
                    &FileKey::new(folder.as_str(), rel.as_str()),
                    &fingerprint,
                    &rel,
                    None,
                )
                .unwrap();
        }
        let stop = CancellationToken::new();
        serve(
            CurrentConfig::new(Arc::clone(&config)),
            store.clone(),
            Arc::new(Live::default()),
            Arc::new(Notify::new()),
            stop.clone(),
        )
        .await
        .unwrap();
        (config, store, stop)
    }

    /// The lines of the daemon's answer to `request` on `path`, as the command reads them.
    async fn answered_lines<T: serde::de::DeserializeOwned>(
        config: &Config,
        path: &str,
        request: &impl Serialize,
    ) -> Result<Vec<T>, String> {
        let body = serde_json::to_vec(request).unwrap();
        let mut lines = Vec::new();
        control_answered(
            request_lines(&config.state_dir, path, &body, |line| {
                lines.push(serde_json::from_slice(line).map_err(|err| err.to_string())?);
                Ok(ControlFlow::Continue(()))
            })
            .await,
        )?;
        Ok(lines)
    }

    /// The lines of the daemon's list.
    async fn listed(
        config: &Config,
        request: &history::ListRequest,
    ) -> Result<Vec<history::ListLine>, String> {
        answered_lines(config, "/ls", request).await
    }

    fn control_answered<T>(answer: Result<Option<T>, String>) -> Result<T, String> {
        answer.and_then(|answer| answer.ok_or_else(|| "no daemon listened".to_string()))
    }

    #[tokio::test]
    async fn a_list_streams_every_upload_in_order_then_its_count_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let files = 2 * 1_024 + 5;
        let (config, _store, stop) = serving(dir.path(), files).await;

        let lines = listed(&config, &history::ListRequest::default())
            .await
            .unwrap();
        assert_eq!(lines.len(), files + 1);
        for (n, line) in lines[..files].iter().enumerate() {
            match line {
                history::ListLine::File(file) => {
                    assert!(file.path.ends_with(&format!("/in/f{n:05}")), "{file:?}");
                    assert_eq!(file.size, n as u64);
                }
                other => panic!("line {n}: {other:?}"),
            }
        }
        assert_eq!(
            lines[files],
            history::ListLine::End {
                files: files as u64
            }
        );

        // A folder that is not configured is refused before anything is listed.
        let elsewhere = history::ListRequest {
            folder: Some(PathBuf::from("/not/configured")),
        };
        let refused = listed(&config, &elsewhere).await.unwrap_err();
        assert!(
            refused.contains("400") && refused.contains("/not/configured"),
            "{refused}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_forget_answers_its_counts_after_each_batch_then_the_final_ones() {
        let dir = tempfile::tempdir().unwrap();
        let files = 1_500;
        let (config, store, stop) = serving(dir.path(), files).await;
        let folder = &config.folders[0].path;
        let request = history::ForgetRequest {
            paths: vec![folder.clone()],
        };
        let lines: Vec<history::ForgetLine> =
            answered_lines(&config, "/forget", &request).await.unwrap();
        let done = history::ForgetResponse {
            forgotten: files,
            queued: 0,
        };
        assert_eq!(lines.last(), Some(&history::ForgetLine::Done(done)));
        let progress: Vec<usize> = lines
            .iter()
            .filter_map(|line| match line {
                history::ForgetLine::Progress(so_far) => Some(so_far.forgotten),
                _ => None,
            })
            .collect();
        assert_eq!(progress, vec![512, 1_024, 1_500]);
        let key = folder.to_string_lossy();
        let counts = store.counts().unwrap();
        assert_eq!(counts.get(key.as_ref()).map_or(0, |c| c.done), 0);

        // A path in no folder is refused before anything is forgotten.
        let elsewhere = serde_json::to_vec(&history::ForgetRequest {
            paths: vec![PathBuf::from("/not/watched.csv")],
        })
        .unwrap();
        let refused = request_lines(&config.state_dir, "/forget", &elsewhere, |_| {
            Ok(ControlFlow::Continue(()))
        })
        .await
        .unwrap_err();
        assert!(refused.contains("/not/watched.csv"), "{refused}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_reader_that_leaves_mid_list_leaves_the_daemon_answering_whole_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _store, stop) = serving(dir.path(), 5 * 1_024).await;
        let body = serde_json::to_vec(&history::ListRequest::default()).unwrap();
        let mut read = 0;
        control_answered(
            request_lines(&config.state_dir, "/ls", &body, |_| {
                read += 1;
                Ok(if read == 10 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })
            .await,
        )
        .unwrap();
        assert_eq!(read, 10);
        // The connection closed with most of the list unsent; the next list is whole.
        let lines = listed(&config, &history::ListRequest::default())
            .await
            .unwrap();
        assert_eq!(
            lines.last(),
            Some(&history::ListLine::End { files: 5 * 1_024 })
        );
        stop.cancel();
    }
}
