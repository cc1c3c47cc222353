//! The KiFS emulator: `/upload/files` (whole files and multipart), `/show/files`,
//! `/show/directories`, `/create/directory`, `/delete/files`, `/delete/directory`,
//! `/download/files`, `/show/system/properties` and `/show/system/status`, in Avro binary
//! and JSON, following `docs/protocols/kifs.md` §6. State lives on disk (layout in the
//! `store` submodule's doc) so files, directories and multipart uploads in progress survive
//! a restart.
//!
//! Module map: this file holds the options, authentication, request counters and the
//! router; `handlers` the endpoints' behaviour; `hooks` the delayed and lost answers;
//! `names` the server's wording of the name rules, and wildcards; `store` the on-disk state.
//!
//! Behaviours the emulator defines (the **\[emulator\]** items of that page, strict by
//! default):
//! - POST only; an unknown path is 404, another method on a known path 405. A request
//!   without a known Content-Type is read as JSON and answered in JSON;
//!   `application/x-snappy` is raw Snappy around Avro binary (the official clients' SNAPPY
//!   encoding, decompressed with the `snap` crate), answered in Avro binary.
//! - Auth: with no `--kifs-user`/`--kifs-token`, any Basic credentials are accepted as that
//!   user name, any Bearer token as `token-user`, and no header runs as `anonymous` (unless
//!   `--kifs-no-anonymous`). With credentials configured, only they are accepted and a
//!   missing header is 401 too. A bad or malformed header is 401 with an empty body.
//! - Names: one leading `/` is stripped; empty segments, `.` and `..` segments are errors
//!   (the files are real files under the data directory); `~` may only lead the directory
//!   part (a home directory); names are case-sensitive. A name whose path component is both a file and a
//!   directory (`d/x` and `d/x/y`) cannot be stored: ERROR.
//! - Permissions: directories made by `/create/directory` or `--kifs-directory` give
//!   everyone `directory_write`; `--kifs-read-only-directory` gives `directory_read`; a home
//!   directory `~user` gives its user `directory_write` and nobody else anything.
//! - Whole-file uploads are all-or-nothing; a file named twice in one request is an ERROR.
//!   Booleans are exactly `true`/`false`; unknown option keys are ignored.
//! - Multipart: the UUID must look like a UUID (letters, digits, `-`, ≤ 64 characters) since
//!   it names a directory on disk; a reused active UUID, non-empty `file_data` on init,
//!   complete or cancel, an unknown UUID on cancel are ERRORs; an out-of-order part is an
//!   ERROR that keeps the upload alive; zero-length parts and zero-part completes are
//!   accepted. A new init for the same target cancels the older upload; an init for another
//!   target does not.
//! - `/show/files`: a missing directory is an ERROR, no match gives empty arrays; results
//!   are sorted and deduplicated; `*` crosses `/`. `info.multipart_uploads` is present only
//!   when uploads in progress match the paths: a JSON array of
//!   `{"file_name","uuid","user","last_part_number","bytes_received","creation_time"}`.
//! - `/show/directories` with an unknown name is an ERROR; `""` lists the directories the
//!   caller has any permission on. `/delete/files` does not cancel an upload in progress;
//!   `/delete/directory` does. `/download/files` needs one offset and length per name (or
//!   none); a name selecting several files applies its range to each.
//! - `--kifs-part-delay` sleeps before each `upload_part` is processed, so a client can be
//!   killed while a part is in flight.
//! - `--kifs-answer-delay` and `--kifs-lose-answer` hold back or lose the answer of a
//!   request that took effect (the `hooks` submodule).
//!
//! Left out: the scripted faults of `docs/protocols/kifs.md` §6, item 7 (502/503, `Kinetica
//! is offline`, `System shutting down`, dropped connections) belong to the emulator's shared
//! fault layer, not to this module; `ttl` and `skip_writing` are ignored;
//! `/upload/files/fromurl` is not served.

mod handlers;
mod hooks;
mod names;
mod store;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::prelude::*;

use super::{EmulatorError, faults};
use crate::config::{KifsEncoding, Secret};
use crate::upload::kifs::wire::{self, Record, Wrapper};
use handlers::{Failure, Settings};
pub use hooks::OperationValue;
use hooks::{AnswerHooks, Fate};
use store::Store;

/// Request bodies up to this size are read: parts are up to 60 MiB, and JSON with base64
/// inflates them by a third.
const BODY_LIMIT: usize = 256 * 1024 * 1024;

/// `--kifs-user NAME:PASSWORD`.
#[derive(Clone)]
pub struct KifsUser {
    pub name: String,
    pub password: Secret,
}

impl fmt::Debug for KifsUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KifsUser({}:***)", self.name)
    }
}

impl FromStr for KifsUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((name, password)) if !name.is_empty() => Ok(KifsUser {
                name: name.to_string(),
                password: Secret::new(password),
            }),
            _ => Err("expected NAME:PASSWORD with a non-empty NAME".to_string()),
        }
    }
}

/// `--kifs-token TOKEN` (runs as `token-user`) or `--kifs-token TOKEN=USER`.
#[derive(Clone)]
pub struct KifsToken {
    pub token: Secret,
    pub user: String,
}

impl fmt::Debug for KifsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KifsToken(***={})", self.user)
    }
}

impl FromStr for KifsToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (token, user) = s.split_once('=').unwrap_or((s, "token-user"));
        if token.is_empty() || user.is_empty() {
            return Err("expected TOKEN or TOKEN=USER, both non-empty".to_string());
        }
        Ok(KifsToken {
            token: Secret::new(token),
            user: user.to_string(),
        })
    }
}

/// The KiFS emulator's flags (part of `upsync emulator`).
#[derive(Debug, Clone, clap::Args)]
pub struct KifsOptions {
    /// Basic credentials accepted by KiFS (repeatable). With none and no token, any
    /// credentials are accepted.
    #[arg(long = "kifs-user", value_name = "NAME:PASSWORD")]
    pub kifs_users: Vec<KifsUser>,
    /// Bearer tokens accepted by KiFS (repeatable); the user is `token-user` unless given.
    #[arg(long = "kifs-token", value_name = "TOKEN[=USER]")]
    pub kifs_tokens: Vec<KifsToken>,
    /// Without configured credentials, refuse requests that carry no Authorization header
    /// (401) instead of running them as `anonymous`.
    #[arg(long = "kifs-no-anonymous")]
    pub kifs_no_anonymous: bool,
    /// KiFS directories created at start, writable by everyone (repeatable).
    #[arg(long = "kifs-directory", value_name = "NAME")]
    pub kifs_directories: Vec<String>,
    /// KiFS directories created at start on which users get `directory_read` only.
    #[arg(long = "kifs-read-only-directory", value_name = "NAME")]
    pub kifs_read_only_directories: Vec<String>,
    /// Milliseconds to wait before processing each multipart `upload_part`.
    #[arg(long = "kifs-part-delay", value_name = "MS", default_value_t = 0)]
    pub kifs_part_delay_ms: u64,
    /// Hold back each successful answer to a `/upload/files` operation (`none` for whole
    /// files, `init`, `upload_part`, `complete`, `cancel`) this many milliseconds after it
    /// took effect (repeatable).
    #[arg(long = "kifs-answer-delay", value_name = "OPERATION=MS")]
    pub kifs_answer_delays: Vec<OperationValue>,
    /// Apply the first N requests of an operation, then close their connections without an
    /// answer (repeatable).
    #[arg(long = "kifs-lose-answer", value_name = "OPERATION=N")]
    pub kifs_lost_answers: Vec<OperationValue>,
    /// Default `data_limit` in bytes of new KiFS directories (-1 = unlimited).
    #[arg(
        long = "kifs-data-limit",
        value_name = "BYTES",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    pub kifs_data_limit: i64,
}

impl Default for KifsOptions {
    /// Open mode (any credentials, anonymous allowed), nothing pre-created, no delay.
    fn default() -> KifsOptions {
        KifsOptions {
            kifs_users: Vec::new(),
            kifs_tokens: Vec::new(),
            kifs_no_anonymous: false,
            kifs_directories: Vec::new(),
            kifs_read_only_directories: Vec::new(),
            kifs_part_delay_ms: 0,
            kifs_answer_delays: Vec::new(),
            kifs_lost_answers: Vec::new(),
            kifs_data_limit: -1,
        }
    }
}

/// The endpoints, in the order of [`KifsStats`]' counters.
const ENDPOINTS: [&str; 9] = [
    "/upload/files",
    "/show/files",
    "/show/directories",
    "/create/directory",
    "/delete/files",
    "/delete/directory",
    "/download/files",
    "/show/system/properties",
    "/show/system/status",
];

const MULTIPART_OPERATIONS: [&str; 6] = [
    "none",
    "init",
    "upload_part",
    "complete",
    "cancel",
    "invalid",
];

/// Request counters, served as JSON by `GET /_emulator/stats`:
/// `{"requests":{"/upload/files":N,...},"multipart_operations":{"none":N,"init":N,...},
/// "replies":{"ok":N,"error":N,"unauthorized":N},"files_stored":N}`; `files_stored` counts
/// files written by successful whole-file uploads and multipart completes.
#[derive(Debug, Default)]
pub struct KifsStats {
    requests: [AtomicU64; ENDPOINTS.len()],
    multipart: [AtomicU64; MULTIPART_OPERATIONS.len()],
    files_stored: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    unauthorized: AtomicU64,
}

impl KifsStats {
    /// Requests received on `endpoint` (e.g. `/upload/files`), authorized or not.
    pub fn requests(&self, endpoint: &str) -> u64 {
        ENDPOINTS
            .iter()
            .position(|e| *e == endpoint)
            .map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Authorized, decodable `/upload/files` requests with this `multipart_operation`
    /// (`none` for whole-file uploads).
    pub fn multipart(&self, operation: &str) -> u64 {
        MULTIPART_OPERATIONS
            .iter()
            .position(|e| *e == operation)
            .map_or(0, |i| self.multipart[i].load(Ordering::Relaxed))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| serde_json::Value::from(c.load(Ordering::Relaxed));
        let requests: serde_json::Map<_, _> = ENDPOINTS
            .iter()
            .zip(&self.requests)
            .map(|(e, c)| (e.to_string(), load(c)))
            .collect();
        let multipart: serde_json::Map<_, _> = MULTIPART_OPERATIONS
            .iter()
            .zip(&self.multipart)
            .map(|(e, c)| (e.to_string(), load(c)))
            .collect();
        serde_json::json!({
            "requests": requests,
            "multipart_operations": multipart,
            "replies": {
                "ok": load(&self.ok),
                "error": load(&self.errors),
                "unauthorized": load(&self.unauthorized),
            },
            "files_stored": load(&self.files_stored),
        })
    }
}

/// Who may call, decided from the options once.
enum Auth {
    Open {
        anonymous: bool,
    },
    Configured {
        users: Vec<KifsUser>,
        tokens: Vec<KifsToken>,
    },
}

impl Auth {
    fn new(options: &KifsOptions) -> Auth {
        if options.kifs_users.is_empty() && options.kifs_tokens.is_empty() {
            Auth::Open {
                anonymous: !options.kifs_no_anonymous,
            }
        } else {
            Auth::Configured {
                users: options.kifs_users.clone(),
                tokens: options.kifs_tokens.clone(),
            }
        }
    }

    /// The user a request runs as, or `None` for 401.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return match self {
                Auth::Open { anonymous: true } => Some("anonymous".to_string()),
                _ => None,
            };
        };
        let value = value.to_str().ok()?;
        let (scheme, credentials) = value.split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = BASE64_STANDARD.decode(credentials).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (name, password) = decoded.split_once(':')?;
            match self {
                Auth::Open { .. } => (!name.is_empty()).then(|| name.to_string()),
                Auth::Configured { users, .. } => users
                    .iter()
                    .find(|u| u.name == name && u.password.expose() == password)
                    .map(|u| u.name.clone()),
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            match self {
                Auth::Open { .. } => (!credentials.is_empty()).then(|| "token-user".to_string()),
                Auth::Configured { tokens, .. } => tokens
                    .iter()
                    .find(|t| t.token.expose() == credentials)
                    .map(|t| t.user.clone()),
            }
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct App {
    store: Arc<Store>,
    auth: Arc<Auth>,
    settings: Settings,
    stats: Arc<KifsStats>,
    part_delay: Duration,
    hooks: Arc<AnswerHooks>,
}

/// Where the content of the KiFS file `kifs_name` (`dir/a/b.txt`) is stored, `data_dir`
/// being the directory given to [`router`].
pub fn stored_file_path(data_dir: &Path, kifs_name: &str) -> PathBuf {
    store::file_path(data_dir, kifs_name)
}

/// The KiFS routes (`/upload/files`, ...; the caller nests them under `/kifs`), with state
/// under `data_dir`.
pub fn router(options: &KifsOptions, data_dir: &Path) -> Result<Router, EmulatorError> {
    router_with_stats(options, data_dir).map(|(router, _)| router)
}

/// As [`router`], also returning the request counters.
pub fn router_with_stats(
    options: &KifsOptions,
    data_dir: &Path,
) -> Result<(Router, Arc<KifsStats>), EmulatorError> {
    let store = Arc::new(Store::open(data_dir)?);
    let settings = Settings {
        default_data_limit: options.kifs_data_limit,
    };
    let configured = options
        .kifs_directories
        .iter()
        .map(|d| (d, false))
        .chain(options.kifs_read_only_directories.iter().map(|d| (d, true)));
    for (name, read_only) in configured {
        handlers::ensure_directory(&store, name, read_only, &settings).map_err(|message| {
            EmulatorError::Data {
                path: data_dir.join("directories.json"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
            }
        })?;
    }
    let stats = Arc::new(KifsStats::default());
    let hooks = Arc::new(AnswerHooks::new(
        &options.kifs_answer_delays,
        &options.kifs_lost_answers,
    ));
    let app = App {
        store,
        auth: Arc::new(Auth::new(options)),
        settings,
        stats: stats.clone(),
        part_delay: Duration::from_millis(options.kifs_part_delay_ms),
        hooks: hooks.clone(),
    };
    let mut router = Router::new();
    for (index, path) in ENDPOINTS.iter().enumerate() {
        let app = app.clone();
        router = router.route(
            path,
            post(move |headers: HeaderMap, body: Bytes| endpoint(app, index, headers, body)),
        );
    }
    let stats_route = stats.clone();
    let router = router
        .route(
            "/_emulator/stats",
            get(move || async move {
                let mut json = stats_route.to_json();
                json["answers_delayed"] = hooks.delayed().into();
                json["answers_lost"] = hooks.lost().into();
                axum::Json(json)
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "Endpoint not found") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    Ok((router, stats))
}

/// The reply encoding and whether the body is Snappy-compressed, from the Content-Type.
fn encoding_of(headers: &HeaderMap) -> (KifsEncoding, bool) {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/octet-stream") => (KifsEncoding::Binary, false),
        Some("application/x-snappy") => (KifsEncoding::Binary, true),
        _ => (KifsEncoding::Json, false),
    }
}

/// Runs `work` on a blocking thread (it does file I/O and takes the state lock).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("Internal error: the request handler failed ({e})")))
}

async fn decode<R: Record + Send + 'static>(enc: KifsEncoding, body: Bytes) -> Result<R, Failure> {
    blocking(move || R::decode(enc, &body).map_err(|e| e.to_string())).await
}

/// Decodes the request, runs the endpoint, wraps the reply.
async fn serve<Req, Resp>(
    app: &App,
    enc: KifsEncoding,
    body: Bytes,
    handler: impl FnOnce(&Store, Req) -> Result<Resp, Failure> + Send + 'static,
) -> Result<Vec<u8>, Failure>
where
    Req: Record + Send + 'static,
    Resp: Record + Send + 'static,
{
    let request = decode::<Req>(enc, body).await?;
    let store = app.store.clone();
    blocking(move || handler(&store, request).map(|r| Wrapper::ok(enc, &r))).await
}

async fn endpoint(app: App, index: usize, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    app.stats.requests[index].fetch_add(1, Ordering::Relaxed);
    let Some(user) = app.auth.user(&headers) else {
        app.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let (enc, snappy) = encoding_of(&headers);
    let result = match snappy {
        true => match snap::raw::Decoder::new().decompress_vec(&body) {
            Ok(raw) => dispatch(&app, index, enc, Bytes::from(raw), user).await,
            Err(e) => Err(format!("Cannot read the request body: {e}")),
        },
        false => dispatch(&app, index, enc, body, user).await,
    };
    let (status, body) = match result {
        Ok(Answer::Lost) => {
            app.stats.ok.fetch_add(1, Ordering::Relaxed);
            return faults::drop_connection();
        }
        Ok(Answer::Send(reply)) => {
            app.stats.ok.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, reply)
        }
        Err(message) => {
            app.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(endpoint = ENDPOINTS[index], %message, "KiFS request refused");
            (StatusCode::BAD_REQUEST, Wrapper::error(enc, &message))
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::content_type(enc)),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("{:.6}", started.elapsed().as_secs_f64())) {
        headers.insert("x-request-time-secs", value);
    }
    response
}

/// The outcome of a request that succeeded.
enum Answer {
    Send(Vec<u8>),
    /// Applied, but the client gets no answer (an [`AnswerHooks`] fault).
    Lost,
}

async fn dispatch(
    app: &App,
    index: usize,
    enc: KifsEncoding,
    body: Bytes,
    user: String,
) -> Result<Answer, Failure> {
    if ENDPOINTS[index] == "/upload/files" {
        return upload_files(app, enc, body, user).await;
    }
    answer_other(app, index, enc, body, user)
        .await
        .map(Answer::Send)
}

/// `/upload/files`, counted per operation, with the test hooks around it.
async fn upload_files(
    app: &App,
    enc: KifsEncoding,
    body: Bytes,
    user: String,
) -> Result<Answer, Failure> {
    let request = decode::<wire::UploadFilesRequest>(enc, body).await?;
    let operation = request
        .options
        .get("multipart_operation")
        .map_or("none", String::as_str)
        .to_string();
    let counter = MULTIPART_OPERATIONS
        .iter()
        .position(|o| *o == operation)
        .unwrap_or(MULTIPART_OPERATIONS.len() - 1);
    app.stats.multipart[counter].fetch_add(1, Ordering::Relaxed);
    if operation == "upload_part" && !app.part_delay.is_zero() {
        tokio::time::sleep(app.part_delay).await;
    }
    let stored = match operation.as_str() {
        "none" => request.file_names.len() as u64,
        "complete" => 1,
        _ => 0,
    };
    let store = app.store.clone();
    let reply = blocking(move || {
        handlers::upload_files(&store, enc, &user, request).map(|r| Wrapper::ok(enc, &r))
    })
    .await?;
    app.stats.files_stored.fetch_add(stored, Ordering::Relaxed);
    match app.hooks.after_success(&operation).await {
        Fate::Answer => Ok(Answer::Send(reply)),
        Fate::Lose => Ok(Answer::Lost),
    }
}

/// Every endpoint but `/upload/files`.
async fn answer_other(
    app: &App,
    index: usize,
    enc: KifsEncoding,
    body: Bytes,
    user: String,
) -> Result<Vec<u8>, Failure> {
    use wire::*;
    match ENDPOINTS[index] {
        "/show/files" => {
            serve(app, enc, body, move |s, r: ShowFilesRequest| {
                handlers::show_files(s, &user, r)
            })
            .await
        }
        "/show/directories" => {
            serve(app, enc, body, move |s, r: ShowDirectoriesRequest| {
                handlers::show_directories(s, &user, r)
            })
            .await
        }
        "/create/directory" => {
            let settings = app.settings.clone();
            serve(app, enc, body, move |s, r: CreateDirectoryRequest| {
                handlers::create_directory(s, &user, &settings, r)
            })
            .await
        }
        "/delete/files" => {
            serve(app, enc, body, move |s, r: DeleteFilesRequest| {
                handlers::delete_files(s, &user, r)
            })
            .await
        }
        "/delete/directory" => {
            serve(app, enc, body, move |s, r: DeleteDirectoryRequest| {
                handlers::delete_directory(s, &user, r)
            })
            .await
        }
        "/download/files" => {
            serve(app, enc, body, move |s, r: DownloadFilesRequest| {
                handlers::download_files(s, &user, r)
            })
            .await
        }
        "/show/system/properties" => {
            serve(app, enc, body, |_, _: ShowSystemPropertiesRequest| {
                Ok(ShowSystemPropertiesResponse::default())
            })
            .await
        }
        "/show/system/status" => {
            serve(app, enc, body, |_, _: ShowSystemStatusRequest| {
                let mut status = ShowSystemStatusResponse::default();
                status
                    .status_map
                    .insert("system".into(), r#"{"status":"running"}"#.into());
                Ok(status)
            })
            .await
        }
        other => unreachable!("every route in ENDPOINTS is dispatched; {other} is not"),
    }
}

#[cfg(test)]
mod tests;
