//! Injected faults shared by both emulated services: random ones (a seeded generator, so a
//! run can be reproduced) and a scripted FIFO queue that tests fill over HTTP.
//!
//! # Which requests can be faulted
//!
//! Every request except the emulator's own routes (`/_emulator/...`) belongs to one target:
//! `kifs` (`/kifs/...`), `redivis-api` (`/api/...`), `redivis-session` (`/upload/...`: the
//! session and temp-upload URLs). Anything else is never faulted.
//!
//! # Random faults
//!
//! For each faultable request the generator draws one number: below `--fail-rate` the request
//! is answered 500, 502 or 503 (also drawn); below `--fail-rate + --drop-rate` the connection
//! is closed without an answer, after reading part of the request body (half of its declared
//! length, or 64 KiB when the length is unknown). The same seed and the same request sequence
//! give the same faults.
//!
//! # Scripted faults
//!
//! `POST /_emulator/faults` appends entries (a JSON array, or one object) to a FIFO queue; a
//! request consumes the first entry whose target matches it (`any` matches every target);
//! scripted entries win over random faults. `DELETE /_emulator/faults` clears the queue;
//! `GET /_emulator/faults` shows what is left.
//!
//! ```json
//! [
//!   {"target": "redivis-session", "action": {"status": 503, "retry_after": "2"}, "persist": "half"},
//!   {"target": "redivis-api", "action": {"drop": true}},
//!   {"target": "kifs", "action": {"delay_ms": 500}},
//!   {"target": "any", "action": {"status": 429, "retry_after": "1"}},
//!   {"target": "kifs", "action": {"stall": true}}
//! ]
//! ```
//!
//! - `{"status": N, "retry_after": "S"}`: answer status N (with `Retry-After: S` when given)
//!   instead of handling the request. Redivis targets get a JSON error body
//!   (`{"error", "error_description", "status"}`, 403 carries `insufficient_scope` and
//!   `scope: "data.edit"`, HEAD errors go to `X-REDIVIS-ERROR-PAYLOAD`); KiFS gets plain text.
//! - `{"drop": true}`: close the connection without an answer, after reading part of the body.
//! - `{"delay_ms": N}`: handle the request normally, then hold the answer back for N ms
//!   (the request takes effect; the client may time out before it hears so).
//! - `{"stall": true}`: accept the request, then read nothing of its body and send nothing,
//!   as a server that hangs; the client must give up on its own. A stalled request is held
//!   until the script is cleared (`DELETE /_emulator/faults`) or the emulator stops, and then
//!   its connection is closed without an answer: it never takes effect.
//! - `persist` (Redivis session PUTs only): how much of the chunk the session keeps before the
//!   status or drop fault strikes: `all`, `none`, `half` (256 KiB-aligned half of what arrived)
//!   or `random` (a random 256 KiB-aligned prefix; the default, also used by random faults).
//!   A scripted `status: 410` on a session URL also poisons that session for good.
//!
//! # Counters
//!
//! `GET /_emulator/stats`:
//! `{"requests": {"kifs": n, "redivis-api": n, "redivis-session": n}, "faults": {"status_503": n,
//! "drop": n, "delay": n, "stall": n, ...}, "responses_429": n, "drops": n, "stalled_now": n}`;
//! `responses_429` counts every 429 answered (rate limiter and faults alike), `drops` every
//! connection closed on purpose, `stalled_now` the requests held by a stall at this moment.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::DropConnection;

#[derive(Debug, Clone, clap::Args)]
pub struct FaultOptions {
    /// Share of requests answered 500/502/503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests whose connection is closed mid-request with no answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Seed for the fault generator, so a run can be reproduced.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for FaultOptions {
    fn default() -> FaultOptions {
        FaultOptions {
            fail_rate: 0.0,
            drop_rate: 0.0,
            seed: 0,
        }
    }
}

/// The service a request is addressed to, as far as faults are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    RedivisSession,
    RedivisApi,
    Kifs,
    /// Only in scripts: matches every other target.
    Any,
}

impl Target {
    /// The target of a request path; `None` for requests that are never faulted.
    pub fn of_path(path: &str) -> Option<Target> {
        if path.starts_with("/_emulator") {
            None
        } else if path == "/kifs" || path.starts_with("/kifs/") {
            Some(Target::Kifs)
        } else if path.starts_with("/api/") {
            Some(Target::RedivisApi)
        } else if path.starts_with("/upload/") {
            Some(Target::RedivisSession)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::RedivisSession => "redivis-session",
            Target::RedivisApi => "redivis-api",
            Target::Kifs => "kifs",
            Target::Any => "any",
        }
    }
}

/// How much of a session chunk is kept before a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persist {
    All,
    None,
    Half,
    #[default]
    Random,
}

/// One scripted entry as posted to `/_emulator/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFault {
    pub target: Target,
    pub action: ActionSpec,
    #[serde(default)]
    pub persist: Option<Persist>,
}

/// The `action` object of a scripted entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionSpec {
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
    },
    Drop {
        drop: bool,
    },
    Delay {
        delay_ms: u64,
    },
    Stall {
        stall: bool,
    },
}

/// What happens to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    Status {
        status: StatusCode,
        retry_after: Option<String>,
    },
    Drop,
    Delay(Duration),
    /// Hold the request unread and unanswered until the script is cleared.
    Stall,
}

/// A fault decided for a request. Session PUT handlers find it in the request extensions
/// and apply it themselves, because the fault must strike after part of the body is kept.
#[derive(Debug, Clone)]
pub struct InjectedFault {
    pub action: FaultAction,
    pub persist: Persist,
    /// Drawn from the seeded generator, for `Persist::Random`.
    pub random: u64,
}

impl InjectedFault {
    /// How many of `received` bytes (counted from a 256 KiB-aligned start) to keep.
    pub fn kept(&self, received: u64, align: u64) -> u64 {
        let blocks = received / align;
        match self.persist {
            Persist::All => received,
            Persist::None => 0,
            Persist::Half => blocks / 2 * align,
            Persist::Random => self.random % (blocks + 1) * align,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Counters {
    requests: BTreeMap<&'static str, u64>,
    faults: BTreeMap<String, u64>,
    responses_429: u64,
    drops: u64,
    stalled_now: u64,
}

/// The shared fault state: generator, script, counters.
#[derive(Debug)]
pub struct FaultEngine {
    fail_rate: f64,
    drop_rate: f64,
    rng: Mutex<StdRng>,
    script: Mutex<VecDeque<ScriptedFault>>,
    counters: Mutex<Counters>,
    /// Bumped by every clear: releases the stalled requests.
    cleared: tokio::sync::watch::Sender<u64>,
}

impl FaultEngine {
    pub fn new(options: &FaultOptions) -> FaultEngine {
        FaultEngine {
            fail_rate: options.fail_rate.clamp(0.0, 1.0),
            drop_rate: options.drop_rate.clamp(0.0, 1.0),
            rng: Mutex::new(StdRng::seed_from_u64(options.seed)),
            script: Mutex::new(VecDeque::new()),
            counters: Mutex::new(Counters::default()),
            cleared: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Appends scripted entries after checking every one of them (all or nothing).
    pub fn push(&self, entries: Vec<ScriptedFault>) -> Result<usize, String> {
        for (index, entry) in entries.iter().enumerate() {
            action_of(&entry.action).map_err(|why| format!("fault entry {index}: {why}"))?;
        }
        let mut script = self
            .script
            .lock()
            .expect("fault script lock is never poisoned");
        script.extend(entries);
        Ok(script.len())
    }

    pub fn clear(&self) {
        self.script
            .lock()
            .expect("fault script lock is never poisoned")
            .clear();
        self.cleared.send_modify(|generation| *generation += 1);
    }

    /// Holds a stalled request (its body unread) until the next clear.
    async fn stall(&self, request: Request) {
        let mut cleared = self.cleared.subscribe();
        self.count_stalled(1);
        // The request stays alive, unread, for as long as the stall lasts.
        let _held = request;
        let _ = cleared.changed().await;
        self.count_stalled(-1);
    }

    fn count_stalled(&self, change: i64) {
        let mut counters = self
            .counters
            .lock()
            .expect("counter lock is never poisoned");
        counters.stalled_now = counters.stalled_now.saturating_add_signed(change);
    }

    fn pending(&self) -> Vec<ScriptedFault> {
        self.script
            .lock()
            .expect("fault script lock is never poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Counts a request and decides its fault, if any.
    pub fn decide(&self, target: Target) -> Option<InjectedFault> {
        let scripted = {
            let mut script = self
                .script
                .lock()
                .expect("fault script lock is never poisoned");
            let position = script
                .iter()
                .position(|entry| entry.target == Target::Any || entry.target == target);
            position.and_then(|index| script.remove(index))
        };
        let mut rng = self
            .rng
            .lock()
            .expect("fault generator lock is never poisoned");
        let fault = match scripted {
            Some(entry) => Some(InjectedFault {
                action: action_of(&entry.action).expect("scripted entries are checked on push"),
                persist: entry.persist.unwrap_or_default(),
                random: rng.random(),
            }),
            None => {
                let draw: f64 = rng.random();
                if draw < self.fail_rate {
                    let status = [500, 502, 503][rng.random_range(0..3)];
                    Some(InjectedFault {
                        action: FaultAction::Status {
                            status: StatusCode::from_u16(status).expect("5xx codes are valid"),
                            retry_after: None,
                        },
                        persist: Persist::Random,
                        random: rng.random(),
                    })
                } else if draw < self.fail_rate + self.drop_rate {
                    Some(InjectedFault {
                        action: FaultAction::Drop,
                        persist: Persist::Random,
                        random: rng.random(),
                    })
                } else {
                    None
                }
            }
        };
        drop(rng);
        let mut counters = self
            .counters
            .lock()
            .expect("counter lock is never poisoned");
        *counters.requests.entry(target.name()).or_default() += 1;
        if let Some(fault) = &fault {
            let kind = match &fault.action {
                FaultAction::Status { status, .. } => format!("status_{}", status.as_u16()),
                FaultAction::Drop => "drop".to_string(),
                FaultAction::Delay(_) => "delay".to_string(),
                FaultAction::Stall => "stall".to_string(),
            };
            *counters.faults.entry(kind).or_default() += 1;
        }
        fault
    }

    /// Counts what the client is about to get (or not get).
    pub fn observe(&self, response: &Response) {
        let mut counters = self
            .counters
            .lock()
            .expect("counter lock is never poisoned");
        if response.extensions().get::<DropConnection>().is_some() {
            counters.drops += 1;
        } else if response.status() == StatusCode::TOO_MANY_REQUESTS {
            counters.responses_429 += 1;
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let counters = self
            .counters
            .lock()
            .expect("counter lock is never poisoned");
        serde_json::to_value(&*counters).expect("counters serialize to JSON")
    }
}

fn action_of(spec: &ActionSpec) -> Result<FaultAction, String> {
    match spec {
        ActionSpec::Status {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status)
                .ok()
                .filter(|status| status.as_u16() >= 200)
                .ok_or_else(|| {
                    format!("status {status} is not an HTTP status between 200 and 999")
                })?;
            if let Some(value) = retry_after {
                HeaderValue::from_str(value)
                    .map_err(|_| format!("retry_after {value:?} is not a valid header value"))?;
            }
            Ok(FaultAction::Status {
                status,
                retry_after: retry_after.clone(),
            })
        }
        ActionSpec::Drop { drop: true } => Ok(FaultAction::Drop),
        ActionSpec::Drop { drop: false } => {
            Err("\"drop\" must be true (leave the entry out instead)".to_string())
        }
        ActionSpec::Delay { delay_ms } => Ok(FaultAction::Delay(Duration::from_millis(*delay_ms))),
        ActionSpec::Stall { stall: true } => Ok(FaultAction::Stall),
        ActionSpec::Stall { stall: false } => {
            Err("\"stall\" must be true (leave the entry out instead)".to_string())
        }
    }
}

/// A response that tells the server loop to close the connection without answering.
pub fn drop_connection() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnection);
    response
}

/// Reads part of a request body (half its declared length, else 64 KiB), so that a dropped
/// connection happens mid-body as a real reset would.
pub async fn read_part_of_body(body: Body, declared: Option<u64>) {
    let wanted = declared.map(|length| length / 2).unwrap_or(64 * 1024);
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while read < wanted {
        match stream.next().await {
            Some(Ok(bytes)) => read += bytes.len() as u64,
            _ => break,
        }
    }
}

/// The error body a service sends for an injected status.
pub fn fault_response(
    target: Target,
    method: &Method,
    status: StatusCode,
    retry_after: Option<&str>,
) -> Response {
    let mut response = match target {
        Target::Kifs => (
            status,
            format!(
                "emulator: injected fault: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        )
            .into_response(),
        _ => {
            let description = format!(
                "The emulator injected this {} response (scripted or random fault).",
                status.as_u16()
            );
            redivis_error(method, status, None, &description)
        }
    };
    if let Some(value) = retry_after
        && let Ok(value) = HeaderValue::from_str(value)
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// A Redivis-shaped error: `{"error", "error_description", "status"}` as JSON, or for HEAD
/// an empty body with the JSON URL-encoded in `X-REDIVIS-ERROR-PAYLOAD`. `code` defaults to
/// a name derived from the status.
pub fn redivis_error(
    method: &Method,
    status: StatusCode,
    code: Option<&str>,
    description: &str,
) -> Response {
    let code = code.unwrap_or(match status.as_u16() {
        400 => "invalid_request",
        401 => "invalid_token",
        403 => "insufficient_scope",
        404 => "not_found",
        409 => "conflict",
        410 => "gone",
        429 => "rate_limit_exceeded",
        503 => "service_unavailable",
        _ => "internal_error",
    });
    let mut payload = serde_json::json!({
        "error": code,
        "error_description": description,
        "status": status.as_u16(),
    });
    if status == StatusCode::FORBIDDEN && code == "insufficient_scope" {
        payload["scope"] = serde_json::json!("data.edit");
    }
    if method == Method::HEAD {
        let encoded = percent_encoding::utf8_percent_encode(
            &payload.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let mut response = status.into_response();
        response.headers_mut().insert(
            "x-redivis-error-payload",
            HeaderValue::from_str(&encoded).expect("percent-encoded text is a valid header value"),
        );
        response
    } else {
        (status, Json(payload)).into_response()
    }
}

/// The middleware deciding and applying faults for every request but `/_emulator/...`.
pub async fn layer(
    State(engine): State<Arc<FaultEngine>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(target) = Target::of_path(request.uri().path()) else {
        return next.run(request).await;
    };
    let fault = engine.decide(target);
    let response = match fault {
        None => next.run(request).await,
        Some(fault)
            if target == Target::RedivisSession
                && request.method() == Method::PUT
                && fault.action != FaultAction::Stall =>
        {
            request.extensions_mut().insert(fault);
            next.run(request).await
        }
        Some(fault) => match fault.action {
            FaultAction::Delay(delay) => {
                let response = next.run(request).await;
                tokio::time::sleep(delay).await;
                response
            }
            FaultAction::Status {
                status,
                retry_after,
            } => fault_response(target, request.method(), status, retry_after.as_deref()),
            FaultAction::Drop => {
                let declared = declared_length(&request);
                read_part_of_body(request.into_body(), declared).await;
                drop_connection()
            }
            FaultAction::Stall => {
                engine.stall(request).await;
                drop_connection()
            }
        },
    };
    engine.observe(&response);
    response
}

/// The `Content-Length` of a request, if it sent one.
pub fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// `/_emulator/faults` and `/_emulator/stats`.
pub fn router(engine: Arc<FaultEngine>) -> Router {
    Router::new()
        .route(
            "/_emulator/faults",
            get(list_faults).post(push_faults).delete(clear_faults),
        )
        .route("/_emulator/stats", get(stats))
        .with_state(engine)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ScriptedFault>),
    One(ScriptedFault),
}

async fn push_faults(State(engine): State<Arc<FaultEngine>>, body: axum::body::Bytes) -> Response {
    let entries = match serde_json::from_slice::<OneOrMany>(&body) {
        Ok(OneOrMany::Many(entries)) => entries,
        Ok(OneOrMany::One(entry)) => vec![entry],
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "fault script is not valid: {err}; expected e.g. \
                     [{{\"target\":\"redivis-session\",\"action\":{{\"status\":503}},\"persist\":\"half\"}}]"
                ),
            )
                .into_response();
        }
    };
    match engine.push(entries) {
        Ok(pending) => Json(serde_json::json!({ "pending": pending })).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn clear_faults(State(engine): State<Arc<FaultEngine>>) -> Response {
    engine.clear();
    Json(serde_json::json!({ "pending": 0 })).into_response()
}

async fn list_faults(State(engine): State<Arc<FaultEngine>>) -> Response {
    Json(engine.pending()).into_response()
}

async fn stats(State(engine): State<Arc<FaultEngine>>) -> Response {
    Json(engine.stats()).into_response()
}
