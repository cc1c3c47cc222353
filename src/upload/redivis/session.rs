//! The GCS-style resumable session behind a Redivis upload URL (protocol §4.3–§4.5, §7):
//! chunked PUTs, `308` + `Range`, status queries, resume, and the whole-body PUT of a
//! non-resumable temp upload. Both flows share this loop.
//!
//! The chunk loop ([`Transfer::run`]), with `offset` = the server's persisted byte count.
//! The bytes come from a [`ChunkSource`] (read ahead, hashed while they travel); this loop
//! only speaks the protocol:
//! 1. Fresh session: `offset = 0`. Resumed session: status query first (`PUT`, empty body,
//!    `Content-Range: bytes */N`) and take the server's offset, never our own record.
//! 2. [`ChunkSource::chunk_at`]: `[offset, offset + chunk)`, the file checked unchanged
//!    before and after the read.
//! 3. `PUT` it with `Content-Range: bytes S-E/N` and its exact `Content-Length`
//!    ([`ChunkSource::while_sending`] reads the next chunk and hashes this one meanwhile).
//! 4. `200`/`201` on the chunk that reaches N: done. `308` + `Range: bytes=0-K`: offset =
//!    K + 1 (the server may keep less than we sent); `308` without `Range`: offset = 0;
//!    a malformed `Range` or any other 2xx: status query.
//! 5. Transport error, stall, 408/429/5xx: back off, status query, continue from its
//!    offset. 404/410/499 (expired, killed, cancelled) or 400: the session is unusable,
//!    the caller starts a new one from byte 0. A refused server certificate ends the
//!    attempt at once (nothing went through; the job waits in `retry-wait`).
//! 6. After every acknowledged offset: fold the confirmed bytes into the MD5
//!    ([`ChunkSource::confirmed`]) and publish the live progress. The state (with the
//!    confirmed offset) is saved at most once a second while chunks keep being
//!    acknowledged, and whenever an attempt ends without finishing; the caller saved it
//!    when the session was created. Not after every chunk: resuming asks the server for
//!    its offset first (step 1), so the saved state only has to name the session, and a
//!    save per chunk cost one flush of the state database per chunk. A crash thus loses
//!    nothing but the status query that finds the offset again.
//!
//! Failures without progress are bounded by the backend's [`RetryPolicy`] (attempts and
//! total time; progress starts the count again); when it gives up, the error is
//! `Disposition::Retry` and the persisted state lets the next job attempt resume. Every
//! request reports its outcome to the Redivis remote's [`RemoteHealth`] (through the HTTP
//! client).
//!
//! The token goes to a session URL only when its host:port is the API's (protocol §11,
//! B9).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap, LOCATION, RANGE};
use serde::{Deserialize, Serialize};

use super::api::{origin_of, strip_query};
use super::classify::{self, SESSION_ENDPOINT};
use super::source::ChunkSource;
use crate::config::Secret;
use crate::fingerprint::Fingerprint;
use crate::metrics::RequestKind;
use crate::net::{HttpClient, HttpError};
use crate::upload::chunk::FileReader;
use crate::upload::health::RemoteHealth;
use crate::upload::retry::{Attempts, CallScope, GaveUp, RetryPolicy};
use crate::upload::{Disposition, ErrorKind, LiveProgress, UploadError};

/// Which Redivis flow created a session (they differ in how the upload is posted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// `resumableUpload` → PUTs → upload.post `{resumableUploadId}`.
    ResumableUpload,
    /// `tempUploads` → `x-goog-resumable: start` → PUTs → upload.post `{tempUploadId}`.
    TempUploads,
}

impl Flow {
    /// The upload.post field that names the session's upload id.
    pub fn id_field(self) -> &'static str {
        match self {
            Flow::ResumableUpload => "resumableUploadId",
            Flow::TempUploads => "tempUploadId",
        }
    }
}

/// The resume state: saved when the session is created, then at most once a second while
/// chunks are acknowledged, and when an attempt ends without finishing (module doc, step 6).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub flow: Flow,
    pub session_url: String,
    pub upload_id: String,
    pub size: u64,
    pub created_at_ms: u64,
    pub confirmed_offset: u64,
    pub fingerprint: Fingerprint,
    /// The table whose upload the session fills (`None` in a state saved before tables
    /// were recorded): a folder given another table must not post these bytes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("flow", &self.flow)
            .field("session_url", &strip_query(&self.session_url))
            .field("upload_id", &self.upload_id)
            .field("size", &self.size)
            .field("created_at_ms", &self.created_at_ms)
            .field("confirmed_offset", &self.confirmed_offset)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SessionState {
    /// Why a saved session cannot be resumed for this file version, if it cannot.
    pub fn unusable_for(
        &self,
        flow: Flow,
        table: &str,
        size: u64,
        fingerprint: &Fingerprint,
        now_ms: u64,
        max_age: Duration,
    ) -> Option<&'static str> {
        if self.flow != flow {
            Some("it was made by the other protocol")
        } else if self
            .table
            .as_deref()
            .is_some_and(|made_for| made_for != table)
        {
            Some("it was made for another table")
        } else if self.fingerprint != *fingerprint || self.size != size {
            Some("the file changed since")
        } else if now_ms.saturating_sub(self.created_at_ms) >= max_age.as_millis() as u64 {
            Some("it is older than the session lifetime")
        } else {
            None
        }
    }
}

/// How a session attempt ended, when it did not complete.
#[derive(Debug)]
pub enum SessionFailure {
    /// The session is unusable: make a new one from byte 0. `rejected` = the server
    /// answered 400 (allowed once).
    Restart {
        rejected: bool,
        message: String,
    },
    Fail(UploadError),
}

impl From<UploadError> for SessionFailure {
    fn from(err: UploadError) -> SessionFailure {
        SessionFailure::Fail(err)
    }
}

/// The server's view of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOffset {
    /// The first N bytes are persisted; send from N.
    At(u64),
    /// All bytes are persisted; the session is finalized.
    Complete,
}

/// Parses `Range: bytes=0-K`: `Ok(None)` without the header, `Ok(Some(K + 1))`, or `Err`
/// for anything else (protocol §11 B7: never a crash).
pub fn parse_range(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let Some(value) = headers.get(RANGE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Range header is not text".to_string())?;
    let malformed = || format!("malformed Range header {text:?}");
    let rest = text.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
    let (first, last) = rest.split_once('-').ok_or_else(malformed)?;
    if first.trim() != "0" {
        return Err(malformed());
    }
    let last: u64 = last.trim().parse().map_err(|_| malformed())?;
    Ok(Some(last + 1))
}

/// HTTP access to session URLs.
#[derive(Debug)]
pub struct SessionClient {
    http: HttpClient,
    api_origin: Option<(String, u16)>,
    token: Secret,
    pub retry: RetryPolicy,
    health: Arc<RemoteHealth>,
}

impl SessionClient {
    pub fn new(
        http: HttpClient,
        api_url: &str,
        token: Secret,
        retry: RetryPolicy,
        health: Arc<RemoteHealth>,
    ) -> SessionClient {
        SessionClient {
            http,
            api_origin: origin_of(api_url),
            token,
            retry,
            health,
        }
    }

    /// Retried tries of one session request.
    fn attempts<'a>(&'a self, scope: &'a CallScope, step: &'a str) -> Attempts<'a> {
        Attempts::new(&self.retry, scope, step).watching(&self.health)
    }

    /// Sends a session request (the HTTP client reports its outcome to the remote's
    /// health).
    async fn sent(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, HttpError> {
        self.http.send(RequestKind::RedivisSession, request).await
    }

    fn with_auth(&self, url: &str, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.api_origin.is_some() && origin_of(url) == self.api_origin {
            request.bearer_auth(self.token.expose())
        } else {
            request
        }
    }

    async fn put(
        &self,
        url: &str,
        content_range: String,
        body: Bytes,
    ) -> Result<reqwest::Response, HttpError> {
        let len = body.len();
        let request = self
            .with_auth(url, self.http.client().put(url))
            .header(CONTENT_RANGE, content_range)
            .header(CONTENT_LENGTH, len)
            .body(body);
        self.sent(request).await
    }

    /// Status query: where does the server stand? Retried in place on transient trouble.
    pub async fn query(
        &self,
        url: &str,
        total: u64,
        scope: &CallScope,
    ) -> Result<ServerOffset, SessionFailure> {
        let mut attempts = self.attempts(scope, "upload status query");
        loop {
            let problem = match self
                .put(url, format!("bytes */{total}"), Bytes::new())
                .await
            {
                Ok(response) => match response.status().as_u16() {
                    200 | 201 => return Ok(ServerOffset::Complete),
                    308 => match parse_range(response.headers()) {
                        Ok(offset) => return Ok(ServerOffset::At(offset.unwrap_or(0))),
                        Err(malformed) => Problem::unexpected(format!("status query: {malformed}")),
                    },
                    status => {
                        let message = format!("status query answered HTTP {status}");
                        match classify::session_status(status) {
                            Disposition::RestartSession => {
                                return Err(SessionFailure::Restart {
                                    rejected: status == 400,
                                    message,
                                });
                            }
                            Disposition::Permanent if !(200..300).contains(&status) => {
                                let message =
                                    format!("upload session {}: {message}", strip_query(url));
                                return Err(SessionFailure::Fail(UploadError::refused(
                                    SESSION_ENDPOINT,
                                    status,
                                    message,
                                )));
                            }
                            _ => Problem::answered(status, message),
                        }
                    }
                },
                Err(err) => no_answer(&err, "status query", url)?,
            };
            let give_up = || format!("upload session {}", strip_query(url));
            pause(&mut attempts, &problem, give_up).await?;
        }
    }

    /// Current flow: turns a resumable temp upload URL into a session URI
    /// (`x-goog-resumable: start`, answered with `Location`).
    pub async fn initiate(
        &self,
        temp_url: &str,
        size: u64,
        scope: &CallScope,
    ) -> Result<String, SessionFailure> {
        let mut attempts = self.attempts(scope, "upload session initiation");
        loop {
            let request = self
                .with_auth(temp_url, self.http.client().post(temp_url))
                .header("x-goog-resumable", "start")
                .header("x-upload-content-length", size)
                .header(CONTENT_LENGTH, 0);
            let sent = self.sent(request).await;
            let problem = match sent {
                Ok(response) if response.status().is_success() => {
                    let location = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match location {
                        Some(location) => return Ok(resolve(temp_url, &location)),
                        None => Problem::unexpected(
                            "session initiation answered without a Location".to_string(),
                        ),
                    }
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    unexpected_answer(
                        status,
                        format!("session initiation answered HTTP {status}"),
                        temp_url,
                    )?
                }
                Err(err) => no_answer(&err, "session initiation", temp_url)?,
            };
            let give_up = || format!("temp upload {}", strip_query(temp_url));
            pause(&mut attempts, &problem, give_up).await?;
        }
    }
}

fn resolve(base: &str, location: &str) -> String {
    match reqwest::Url::parse(base).and_then(|b| b.join(location)) {
        Ok(url) => url.to_string(),
        Err(_) => location.to_string(),
    }
}

/// A failed try of a session request that is worth another: what happened, and the
/// sentence the log line and, once the retries give up, the error carry.
#[derive(Debug)]
struct Problem {
    kind: ErrorKind,
    message: String,
}

impl Problem {
    /// An answer with the transient failure `status` (408, 429, 5xx).
    fn answered(status: u16, message: String) -> Problem {
        Problem {
            kind: crate::upload::classify::status_kind(status),
            message,
        }
    }

    /// An answer that is not usable (a malformed `Range`, a missing `Location`).
    fn unexpected(message: String) -> Problem {
        Problem {
            kind: ErrorKind::Unexpected,
            message,
        }
    }

    /// The server took the request without doing its part (bytes not kept, an upload not
    /// finalized).
    fn server(message: &str) -> Problem {
        Problem {
            kind: ErrorKind::Server,
            message: message.to_string(),
        }
    }
}

/// After a failed try of a session request: the pause, or a job-level retry once the
/// policy gives up, of the kind of the failure that made it give up (the saved session
/// state lets the next attempt resume; `give_up` names what is given up).
async fn pause(
    attempts: &mut Attempts<'_>,
    problem: &Problem,
    give_up: impl FnOnce() -> String,
) -> Result<(), SessionFailure> {
    attempts
        .pause(None, &problem.message)
        .await
        .map_err(|gave_up| {
            let message = match gave_up {
                GaveUp::Spent(_) => format!("{}: {}", give_up(), problem.message),
                GaveUp::Shutdown => String::new(),
            };
            let failed = UploadError::retry(problem.kind, message).at(SESSION_ENDPOINT);
            SessionFailure::Fail(gave_up.into_error(failed))
        })
}

/// A session request that got no answer: what to say before trying again, or the failure
/// itself when trying again at once cannot help (a request that cannot be built, a server
/// certificate refused).
fn no_answer(err: &HttpError, step: &str, url: &str) -> Result<Problem, SessionFailure> {
    match classify::session_transport(err) {
        Disposition::ResumeFromServer => Ok(Problem {
            kind: crate::upload::classify::transport(err).0,
            message: format!("{step}: {err}"),
        }),
        disposition => Err(SessionFailure::Fail(
            UploadError::remote(
                ErrorKind::Transport,
                disposition,
                format!("upload session {}: {err}", strip_query(url)),
            )
            .at(SESSION_ENDPOINT),
        )),
    }
}

/// One file going through one session.
pub struct Transfer<'a> {
    pub client: &'a SessionClient,
    pub reader: &'a FileReader,
    pub path: &'a Path,
    pub fingerprint: Fingerprint,
    pub chunk_size: u64,
    pub scope: &'a CallScope,
    pub live: &'a LiveProgress,
    pub check: &'a (dyn Fn() -> Result<(), UploadError> + Sync),
}

/// The confirmed offset is saved (one flush of the state database) at most this often
/// while chunks keep being acknowledged, and whenever an attempt ends without finishing.
/// Resuming always asks the server for its offset first, so the saved one only has to name
/// the session; saving after every 8 MiB chunk cost a flush per chunk.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

impl Transfer<'_> {
    /// Runs the chunk loop (module doc) until the server holds all bytes; returns the MD5
    /// (hex) of the file's bytes as sent.
    pub async fn run(
        &self,
        state: &mut SessionState,
        query_first: bool,
        persist: &mut (dyn FnMut(&SessionState) -> Result<(), UploadError> + Send),
    ) -> Result<String, SessionFailure> {
        let mut saved = state.confirmed_offset;
        let result = self.chunks(state, query_first, persist, &mut saved).await;
        if result.is_err() && state.confirmed_offset != saved {
            persist(state)?;
        }
        result
    }

    /// The chunk loop (module doc, steps 1–6), from the server's offset to the last byte.
    async fn chunks(
        &self,
        state: &mut SessionState,
        query_first: bool,
        persist: &mut (dyn FnMut(&SessionState) -> Result<(), UploadError> + Send),
        saved: &mut u64,
    ) -> Result<String, SessionFailure> {
        let size = state.size;
        let url = state.session_url.clone();
        let mut source = ChunkSource::new(self.reader, self.chunk_size, self.check);
        let mut attempts = self.client.attempts(self.scope, "chunk upload");
        let mut last_save = std::time::Instant::now();
        let mut next = if query_first {
            self.client.query(&url, size, self.scope).await?
        } else {
            ServerOffset::At(state.confirmed_offset)
        };
        loop {
            let offset = within_size(next, size)?;
            self.live.sending_from(offset);
            // Step 6: the confirmed bytes are hashed, recorded and published.
            source.confirmed(offset).await?;
            if offset > state.confirmed_offset {
                attempts.progressed();
            }
            if offset != state.confirmed_offset {
                state.confirmed_offset = offset;
                if last_save.elapsed() >= PERSIST_EVERY && offset < size {
                    persist(state)?;
                    *saved = offset;
                    last_save = std::time::Instant::now();
                }
            }
            self.live.set(offset, size);
            if next == ServerOffset::Complete {
                return Ok(source.md5_hex());
            }
            next = if offset == size {
                self.finalize_by_query(&url, size, &mut attempts).await?
            } else if self.scope.interrupted() {
                return Err(SessionFailure::Fail(UploadError::Shutdown));
            } else {
                self.send_chunk(&mut source, &url, offset, &mut attempts)
                    .await?
            };
        }
    }

    /// All bytes are there but the session did not say "complete": a status query
    /// finalizes it (protocol §7).
    async fn finalize_by_query(
        &self,
        url: &str,
        size: u64,
        attempts: &mut Attempts<'_>,
    ) -> Result<ServerOffset, SessionFailure> {
        let next = self.client.query(url, size, self.scope).await?;
        if next != ServerOffset::Complete {
            let problem = Problem::server("all bytes sent but not finalized");
            self.pause(attempts, &problem).await?;
        }
        Ok(next)
    }

    /// Steps 2–5 for the chunk at `offset`: where the server stands after it.
    async fn send_chunk(
        &self,
        source: &mut ChunkSource<'_>,
        url: &str,
        offset: u64,
        attempts: &mut Attempts<'_>,
    ) -> Result<ServerOffset, SessionFailure> {
        let size = self.reader.size;
        let chunk = source.chunk_at(offset).await?;
        let end = chunk.end();
        let range = format!("bytes {offset}-{}/{size}", end - 1);
        let body = chunk.bytes.clone();
        let sent = source
            .while_sending(chunk, self.client.put(url, range, body))
            .await;
        let problem = match chunk_answer(sent, end == size, url)? {
            Ok(ServerOffset::At(server)) if server <= offset => {
                let problem = Problem::server("chunk was not persisted");
                self.pause(attempts, &problem).await?;
                return Ok(ServerOffset::At(server));
            }
            Ok(next) => return Ok(next),
            Err(problem) => problem,
        };
        // In doubt: the server's word decides where to continue.
        self.pause(attempts, &problem).await?;
        self.client.query(url, size, self.scope).await
    }

    /// A failure without progress: pause, then the server's offset decides; when the
    /// policy gives up, the saved session lets the next job attempt resume.
    async fn pause(
        &self,
        attempts: &mut Attempts<'_>,
        problem: &Problem,
    ) -> Result<(), SessionFailure> {
        let give_up = || {
            let tries = attempts.failures() + 1;
            format!(
                "upload of {} made no progress in {tries} {}",
                self.path.display(),
                if tries == 1 { "try" } else { "tries" }
            )
        };
        let stalled = give_up();
        pause(attempts, problem, || stalled).await
    }

    /// Non-resumable temp upload: one PUT of the whole file, re-sent whole on every retry
    /// (never just the unread remainder, protocol §11 B1). Returns the MD5 (hex) of what was
    /// sent.
    pub async fn put_whole(&self, url: &str, size: u64) -> Result<String, SessionFailure> {
        let mut attempts = self.client.attempts(self.scope, "whole-file PUT");
        loop {
            if self.scope.interrupted() {
                return Err(SessionFailure::Fail(UploadError::Shutdown));
            }
            (self.check)()?;
            let hasher = Arc::new(Mutex::new(Md5::new()));
            let trouble: Arc<Mutex<Option<UploadError>>> = Arc::new(Mutex::new(None));
            let body = whole_file_body(
                self.path.to_path_buf(),
                self.fingerprint,
                size,
                self.chunk_size,
                Arc::clone(&hasher),
                Arc::clone(&trouble),
            )?;
            let request = self
                .client
                .with_auth(url, self.client.http.client().put(url))
                .header(CONTENT_LENGTH, size)
                .body(body);
            let sent = self.client.sent(request).await;
            if let Some(err) = trouble.lock().expect("body state lock").take() {
                return Err(SessionFailure::Fail(err));
            }
            let problem = match sent {
                Ok(response) if response.status().is_success() => {
                    (self.check)()?;
                    self.live.set(size, size);
                    let digest = hasher.lock().expect("body hash lock").clone().finalize();
                    return Ok(hex::encode(digest));
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    unexpected_answer(
                        status,
                        format!("whole-file PUT answered HTTP {status}"),
                        url,
                    )?
                }
                Err(err) => no_answer(&err, "whole-file PUT", url)?,
            };
            let give_up = || format!("temp upload {}", strip_query(url));
            pause(&mut attempts, &problem, give_up).await?;
        }
    }
}

/// The server's offset, unless it claims more bytes than the file has (then the session
/// is not ours to trust: a new one starts from byte 0).
fn within_size(next: ServerOffset, size: u64) -> Result<u64, SessionFailure> {
    match next {
        ServerOffset::Complete => Ok(size),
        ServerOffset::At(offset) if offset > size => Err(SessionFailure::Restart {
            rejected: false,
            message: format!("the server claims {offset} bytes of a {size}-byte upload"),
        }),
        ServerOffset::At(offset) => Ok(offset),
    }
}

/// Step 4 of the chunk loop: what the answer to a chunk says. `Ok(Ok(next))`: where the
/// server stands; `Ok(Err(problem))`: in doubt, ask the server after a pause; `Err`: the
/// session is dead or the upload failed.
fn chunk_answer(
    sent: Result<reqwest::Response, HttpError>,
    last: bool,
    url: &str,
) -> Result<Result<ServerOffset, Problem>, SessionFailure> {
    let response = match sent {
        Ok(response) => response,
        Err(err) => return no_answer(&err, "chunk PUT", url).map(Err),
    };
    let problem = match response.status().as_u16() {
        200 | 201 if last => return Ok(Ok(ServerOffset::Complete)),
        308 => match parse_range(response.headers()) {
            Ok(server) => return Ok(Ok(ServerOffset::At(server.unwrap_or(0)))),
            Err(malformed) => Problem::unexpected(malformed),
        },
        status @ 200..=299 => {
            Problem::unexpected(format!("chunk answered HTTP {status} before the last byte"))
        }
        status => match classify::session_status(status) {
            Disposition::RestartSession => {
                return Err(SessionFailure::Restart {
                    rejected: status == 400,
                    message: format!("chunk answered HTTP {status}"),
                });
            }
            Disposition::Permanent => {
                let message = format!(
                    "upload session {}: chunk answered HTTP {status}",
                    strip_query(url)
                );
                return Err(SessionFailure::Fail(UploadError::refused(
                    SESSION_ENDPOINT,
                    status,
                    message,
                )));
            }
            _ => Problem::answered(status, format!("chunk answered HTTP {status}")),
        },
    };
    Ok(Err(problem))
}

/// A request body streaming the file in chunks from a fresh reader, hashing as it goes and
/// stopping with the reason in `trouble` if the file changes.
fn whole_file_body(
    path: std::path::PathBuf,
    fingerprint: Fingerprint,
    size: u64,
    chunk_size: u64,
    hasher: Arc<Mutex<Md5>>,
    trouble: Arc<Mutex<Option<UploadError>>>,
) -> Result<reqwest::Body, UploadError> {
    let reader = Arc::new(FileReader::open(&path, &fingerprint)?);
    let stream = futures::stream::unfold(0u64, move |offset| {
        let reader = Arc::clone(&reader);
        let hasher = Arc::clone(&hasher);
        let trouble = Arc::clone(&trouble);
        let path = path.clone();
        async move {
            if offset >= size {
                return None;
            }
            let len = (size - offset).min(chunk_size) as usize;
            let read = match reader.read_at(offset, len).await {
                Ok(bytes) => match Fingerprint::read(&path) {
                    Ok(now) if now == fingerprint => Ok(bytes),
                    Ok(_) => Err(UploadError::Changed),
                    Err(_) => Err(UploadError::Vanished(path.display().to_string())),
                },
                Err(err) => Err(err),
            };
            match read {
                Ok(bytes) => {
                    hasher.lock().expect("body hash lock").update(&bytes);
                    let next = offset + bytes.len() as u64;
                    Some((Ok::<Bytes, std::io::Error>(bytes), next))
                }
                Err(err) => {
                    let text = err.to_string();
                    *trouble.lock().expect("body state lock") = Some(err);
                    Some((Err(std::io::Error::other(text)), size))
                }
            }
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// An answer a temp-upload URL should not give: a dead session to restart, a permanent
/// failure, or (for transient codes) the message to retry with.
fn unexpected_answer(status: u16, message: String, url: &str) -> Result<Problem, SessionFailure> {
    match classify::session_status(status) {
        Disposition::RestartSession => Err(SessionFailure::Restart {
            rejected: status == 400,
            message,
        }),
        Disposition::Permanent => Err(SessionFailure::Fail(UploadError::refused(
            SESSION_ENDPOINT,
            status,
            format!("temp upload {}: {message}", strip_query(url)),
        ))),
        _ => Ok(Problem::answered(status, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with_range(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_token_goes_only_to_session_urls_on_the_api_host_and_port() {
        let http = HttpClient::plain("redivis");
        let client = SessionClient::new(
            http,
            "http://127.0.0.1:8787/api/v1",
            Secret::new("t0ken-xyz"),
            RetryPolicy::default(),
            Arc::new(RemoteHealth::new("redivis", "http://127.0.0.1:8787/api/v1")),
        );
        let auth = |url: &str| {
            client
                .with_auth(url, client.http.client().put(url))
                .build()
                .expect("request builds")
                .headers()
                .get(reqwest::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            auth("http://127.0.0.1:8787/upload/sessions/1").as_deref(),
            Some("Bearer t0ken-xyz")
        );
        assert_eq!(auth("http://127.0.0.1:9999/upload/sessions/1"), None);
        assert_eq!(auth("https://storage.example.com/upload/x?id=1"), None);
    }

    #[test]
    fn range_headers_give_the_next_offset_and_malformed_ones_are_errors() {
        assert_eq!(parse_range(&HeaderMap::new()), Ok(None));
        assert_eq!(parse_range(&with_range("bytes=0-262143")), Ok(Some(262144)));
        assert_eq!(parse_range(&with_range("bytes=0-0")), Ok(Some(1)));
        for bad in ["bytes=0-", "bytes=5-10", "0-10", "bytes=0-x", "bytes=-10"] {
            assert!(parse_range(&with_range(bad)).is_err(), "{bad}");
        }
    }

    fn state(created_at_ms: u64) -> SessionState {
        SessionState {
            flow: Flow::ResumableUpload,
            session_url: "http://127.0.0.1:1/upload/s1?upload_id=capability".into(),
            upload_id: "u1".into(),
            size: 10,
            created_at_ms,
            confirmed_offset: 0,
            fingerprint: Fingerprint {
                size: 10,
                mtime_ns: 1,
                inode: 2,
                ctime_ns: Some(1),
            },
            table: Some("u.d:next.t".into()),
        }
    }

    #[test]
    fn a_saved_session_is_reused_only_for_the_same_file_flow_table_and_lifetime() {
        let day = Duration::from_secs(24 * 3600);
        let s = state(1_000);
        let fp = s.fingerprint;
        let table = "u.d:next.t";
        assert_eq!(
            s.unusable_for(Flow::ResumableUpload, table, 10, &fp, 2_000, day),
            None
        );
        assert!(
            s.unusable_for(Flow::TempUploads, table, 10, &fp, 2_000, day)
                .is_some()
        );
        let other = Fingerprint { mtime_ns: 9, ..fp };
        assert!(
            s.unusable_for(Flow::ResumableUpload, table, 10, &other, 2_000, day)
                .is_some()
        );
        let later = 1_000 + day.as_millis() as u64;
        assert!(
            s.unusable_for(Flow::ResumableUpload, table, 10, &fp, later, day)
                .is_some()
        );
        assert_eq!(
            s.unusable_for(Flow::ResumableUpload, "u.d:next.other", 10, &fp, 2_000, day),
            Some("it was made for another table")
        );
        let saved_before_tables = SessionState { table: None, ..s };
        assert_eq!(
            saved_before_tables.unusable_for(Flow::ResumableUpload, table, 10, &fp, 2_000, day),
            None
        );
    }

    #[test]
    fn session_state_debug_hides_the_query_string() {
        let text = format!("{:?}", state(0));
        assert!(!text.contains("capability"), "{text}");
        assert!(text.contains("http://127.0.0.1:1/upload/s1"), "{text}");
    }
}
