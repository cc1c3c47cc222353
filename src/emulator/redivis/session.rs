//! The session layer: GCS-style resumable sessions (`/upload/sessions/{id}`) and temp upload
//! URLs (`/upload/temp/{id}`: plain PUT, or initiation of a session). The algorithm is in
//! the parent module's doc; injected faults arrive in the request extensions.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;

use super::api::base_url;
use super::store::{self, ALIGN, ContentSummary, Digest, TransferKind, TransferState};
use super::{Shared, Slot};
use crate::emulator::faults::{self, FaultAction, InjectedFault, Target};
use tokio::sync::OwnedMutexGuard;

/// What `Content-Range` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentRange {
    /// `bytes */N` or `bytes */*`.
    Query { total: Option<u64> },
    /// `bytes a-b/N` or `bytes a-b/*`.
    Chunk(ChunkRange),
}

/// The bytes a chunk says it carries, and the object's total if it says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkRange {
    first: u64,
    last: u64,
    total: Option<u64>,
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        number => Some(number.parse().ok()?),
    };
    match range.trim() {
        "*" => Some(ContentRange::Query { total }),
        span => {
            let (first, last) = span.split_once('-')?;
            Some(ContentRange::Chunk(ChunkRange {
                first: first.trim().parse().ok()?,
                last: last.trim().parse().ok()?,
                total,
            }))
        }
    }
}

fn error(status: u16, description: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("session status codes are valid");
    let code = match status.as_u16() {
        499 => Some("cancelled"),
        _ => None,
    };
    faults::redivis_error(&Method::PUT, status, code, description)
}

fn not_found() -> Response {
    error(
        404,
        "No such upload session: it never existed or is past its lifetime; start a new one.",
    )
}

fn cancelled() -> Response {
    error(
        499,
        "The upload session was cancelled (DELETE); start a new one.",
    )
}

fn poisoned() -> Response {
    error(
        410,
        "The upload session failed for good; start a new one from byte 0.",
    )
}

/// 308 with `Range: bytes=0-<last>` when bytes are held, no `Range` otherwise, no `Location`.
fn incomplete(held: u64) -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if held > 0 {
        response.headers_mut().insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes=0-{}", held - 1))
                .expect("a byte range is a valid header value"),
        );
    }
    response
}

fn object_metadata(id: &str, name: Option<&str>, content: &ContentSummary) -> Response {
    let md5 = hex::decode(&content.md5).unwrap_or_default();
    Json(json!({
        "kind": "storage#object",
        "id": id,
        "name": name.unwrap_or(id),
        "size": content.size.to_string(),
        "md5Hash": base64::engine::general_purpose::STANDARD.encode(md5),
        "hash": content.md5,
    }))
    .into_response()
}

fn fault_of(request: &Request) -> Option<InjectedFault> {
    request.extensions().get::<InjectedFault>().cloned()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

/// Bytes gathered before they are handed to the blocking pool as one write.
const WRITE_BATCH: usize = 1 << 20;

/// Writes a request body to a file: the body's frames (shared with the connection's read
/// buffer, not copied) are hashed as they arrive and gathered into batches of
/// [`WRITE_BATCH`] bytes, each written with positional writes on the blocking pool while
/// the next one is received (one batch in flight at a time). Through `tokio::fs` behind a
/// `BufWriter` every byte was copied twice more before the kernel's copy; and a hash that
/// ran behind the writes would hold the response back once the last byte is in.
struct BodyWriter {
    /// The file, here while no batch is in flight.
    idle: Option<std::fs::File>,
    in_flight: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
    batch: Vec<Bytes>,
    batched: usize,
    /// Where the next batch goes in the file.
    at: u64,
    digest: Option<Digest>,
}

impl BodyWriter {
    fn new(file: std::fs::File, at: u64, digest: Option<Digest>) -> BodyWriter {
        BodyWriter {
            idle: Some(file),
            in_flight: None,
            batch: Vec::new(),
            batched: 0,
            at,
            digest,
        }
    }

    async fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        if let Some(digest) = self.digest.as_mut() {
            digest.update(&bytes);
        }
        self.batched += bytes.len();
        self.batch.push(bytes);
        if self.batched >= WRITE_BATCH {
            self.send().await?;
        }
        Ok(())
    }

    /// Waits for the batch in flight, then starts the gathered one.
    async fn send(&mut self) -> std::io::Result<()> {
        let file = self.settle().await?;
        let batch = std::mem::take(&mut self.batch);
        let at = self.at;
        self.at += self.batched as u64;
        self.batched = 0;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut at = at;
            for bytes in &batch {
                file.write_all_at(bytes, at)?;
                at += bytes.len() as u64;
            }
            Ok(file)
        }));
        Ok(())
    }

    async fn settle(&mut self) -> std::io::Result<std::fs::File> {
        if let Some(task) = self.in_flight.take() {
            return task.await.map_err(std::io::Error::other)?;
        }
        Ok(self
            .idle
            .take()
            .expect("a body writer holds its file while no batch is in flight"))
    }

    /// Writes what is gathered and waits for it; returns the digest of everything written.
    async fn finish(mut self) -> std::io::Result<Option<Digest>> {
        if !self.batch.is_empty() {
            self.send().await?;
        }
        self.settle().await?;
        Ok(self.digest)
    }
}

/// `PUT /upload/sessions/{id}`: a chunk or a status query. Runs in its own task so that a
/// client going away mid-request cannot leave the session half-updated.
pub async fn put_session(
    State(service): State<Shared>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let fault = fault_of(&request);
    let (parts, body) = request.into_parts();
    let delay = match &fault {
        Some(InjectedFault {
            action: FaultAction::Delay(delay),
            ..
        }) => Some(*delay),
        _ => None,
    };
    let task = tokio::spawn(put_session_task(service, id, parts.headers, fault, body));
    let response = task
        .await
        .unwrap_or_else(|err| error(500, &format!("the emulator's session task failed: {err}")));
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

/// A `PUT` to a session, once its faults' delays are behind it:
/// 1. the session, if a request may still use it ([`open_transfer`]);
/// 2. what `Content-Range` asks for ([`requested_range`]);
/// 3. an injected 410 poisons the session for good;
/// 4. a status query, or a chunk ([`chunk`]), after which a finished upload may be held
///    back (`redivis_final_chunk_delay`) with the session let go.
async fn put_session_task(
    service: Shared,
    id: String,
    headers: HeaderMap,
    fault: Option<InjectedFault>,
    body: Body,
) -> Response {
    let mut slot = match open_transfer(&service, &id, PutTo::Session).await {
        Ok(slot) => slot,
        Err(refused) => return refused,
    };
    let range = match requested_range(&headers) {
        Ok(range) => range,
        Err(invalid) => return error(400, &invalid),
    };
    match range {
        ContentRange::Query { .. } => service.count(|stats| stats.status_queries += 1),
        ContentRange::Chunk(_) => service.count(|stats| stats.session_puts += 1),
    }
    if let Some(poisoned) = poison_on_gone(&service, &mut slot, fault.as_ref()) {
        return poisoned;
    }
    match range {
        ContentRange::Query { total } => {
            if let Some(faulted) = fault.as_ref().and_then(query_fault) {
                return faulted;
            }
            status_query(&service, &mut slot, total).await
        }
        ContentRange::Chunk(range) => {
            let response = chunk(&service, &mut slot, &headers, fault, body, range).await;
            let finished = response.status() == StatusCode::OK;
            drop(slot);
            if finished && service.options.redivis_final_chunk_delay > 0 {
                tokio::time::sleep(Duration::from_millis(
                    service.options.redivis_final_chunk_delay,
                ))
                .await;
            }
            response
        }
    }
}

/// What a `PUT` is sent to: a session (a legacy resumable upload's URL, or one initiated
/// on a temp upload URL), or a temp upload URL itself, which takes the object whole.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PutTo {
    Session,
    TempUrl,
}

impl PutTo {
    fn of(kind: TransferKind) -> PutTo {
        match kind {
            TransferKind::TempUpload => PutTo::TempUrl,
            TransferKind::ResumableUpload | TransferKind::Session => PutTo::Session,
        }
    }
}

/// The transfer `id`, locked, if a `PUT` to `to` may use it: 404 for one unknown, of the
/// other kind or past its lifetime, 499 for one cancelled, 410 for one poisoned.
async fn open_transfer(
    service: &Shared,
    id: &str,
    to: PutTo,
) -> Result<OwnedMutexGuard<Slot>, Response> {
    let Some(slot) = service.transfer(id) else {
        return Err(not_found());
    };
    let slot = slot.lock_owned().await;
    if PutTo::of(slot.record.kind) != to || service.expired(&slot.record) {
        return Err(not_found());
    }
    match slot.record.state {
        TransferState::Cancelled => Err(cancelled()),
        TransferState::Poisoned => Err(poisoned()),
        TransferState::Open | TransferState::Complete => Ok(slot),
    }
}

/// What a session `PUT` asks for: its `Content-Range`, or without one the whole object in
/// one request (a `Content-Length` above 0) or a bare status query. For a header that does
/// not parse, the description of the 400 it gets.
fn requested_range(headers: &HeaderMap) -> Result<ContentRange, String> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(match declared_length(headers) {
            Some(length) if length > 0 => ContentRange::Chunk(ChunkRange {
                first: 0,
                last: length - 1,
                total: Some(length),
            }),
            _ => ContentRange::Query { total: None },
        });
    };
    value
        .to_str()
        .ok()
        .and_then(parse_content_range)
        .ok_or_else(|| {
            format!(
                "Content-Range {value:?} is not valid: expected \"bytes a-b/N\", \"bytes a-b/*\", \
                 \"bytes */N\" or \"bytes */*\""
            )
        })
}

/// An injected 410 poisons the session: this request and every later one are answered
/// 410, as GCS answers a session it has given up on.
fn poison_on_gone(
    service: &Shared,
    slot: &mut Slot,
    fault: Option<&InjectedFault>,
) -> Option<Response> {
    let Some(InjectedFault {
        action: FaultAction::Status { status, .. },
        ..
    }) = fault
    else {
        return None;
    };
    if status.as_u16() != 410 {
        return None;
    }
    slot.record.state = TransferState::Poisoned;
    if let Err(err) = service.save_transfer(&slot.record) {
        return Some(error(
            500,
            &format!("the emulator cannot record the session: {err}"),
        ));
    }
    Some(poisoned())
}

/// The answer an injected fault gives a status query in place of the session's state.
fn query_fault(fault: &InjectedFault) -> Option<Response> {
    match &fault.action {
        FaultAction::Status {
            status,
            retry_after,
        } => Some(faults::fault_response(
            Target::RedivisSession,
            &Method::PUT,
            *status,
            retry_after.as_deref(),
        )),
        FaultAction::Drop => Some(faults::drop_connection()),
        // Stalls are held by the fault layer and never reach a handler.
        FaultAction::Delay(_) | FaultAction::Stall => None,
    }
}

async fn held_bytes(service: &Shared, id: &str) -> std::io::Result<u64> {
    Ok(tokio::fs::metadata(service.data_path(id)).await?.len())
}

fn total_mismatch(given: u64, declared: u64) -> Response {
    error(
        400,
        &format!(
            "Invalid request. The Content-Range total {given} differs from the upload's size of {declared} byte(s)."
        ),
    )
}

async fn status_query(service: &Shared, slot: &mut Slot, total: Option<u64>) -> Response {
    if let (Some(given), Some(declared)) = (total, slot.record.total)
        && given != declared
    {
        return total_mismatch(given, declared);
    }
    if slot.record.state == TransferState::Complete {
        return completed(slot);
    }
    let held = match held_bytes(service, &slot.record.id).await {
        Ok(held) => held,
        Err(err) => return error(500, &format!("the emulator cannot read the session: {err}")),
    };
    match total.or(slot.record.total) {
        Some(total) if held > total => error(
            400,
            &format!(
                "Invalid request. The session holds {held} byte(s), more than the total of {total}."
            ),
        ),
        Some(total) if held == total => finalize(service, slot, held).await,
        _ => incomplete(held),
    }
}

fn completed(slot: &Slot) -> Response {
    match &slot.record.content {
        Some(content) => object_metadata(&slot.record.id, slot.record.name.as_deref(), content),
        None => error(500, "the emulator lost the summary of a completed session"),
    }
}

/// Marks the session complete (all `held` bytes present), tells its temp upload, answers 200.
async fn finalize(service: &Shared, slot: &mut Slot, held: u64) -> Response {
    let content = match slot.digest.take() {
        Some(digest) if digest.len == held => digest.summary(),
        _ => {
            let path = service.data_path(&slot.record.id);
            match tokio::task::spawn_blocking(move || Digest::of_file(&path)).await {
                Ok(Ok(content)) => content,
                Ok(Err(err)) => {
                    return error(500, &format!("the emulator cannot read the session: {err}"));
                }
                Err(err) => {
                    return error(500, &format!("the emulator's digest task failed: {err}"));
                }
            }
        }
    };
    slot.record.state = TransferState::Complete;
    slot.record.total = Some(held);
    slot.record.content = Some(content);
    if let Err(err) = service.save_transfer(&slot.record) {
        return error(
            500,
            &format!("the emulator cannot record the session: {err}"),
        );
    }
    if let Some(parent) = slot.record.parent.clone()
        && let Some(parent) = service.transfer(&parent)
    {
        let mut parent = parent.lock().await;
        parent.record.completed_session = Some(slot.record.id.clone());
        if let Err(err) = service.save_transfer(&parent.record) {
            return error(
                500,
                &format!("the emulator cannot record the temp upload: {err}"),
            );
        }
    }
    completed(slot)
}

/// How a chunk's body ended.
enum BodyEnd {
    Complete,
    /// The client went away (or the body broke) mid-way.
    Broken,
    /// A drop fault struck after half of the body.
    Dropped,
    /// More bytes arrived than `Content-Range` announced.
    TooLong,
}

/// A chunk's place in its session, from its headers and the bytes the session holds.
struct ChunkPlan {
    /// The session's total size, once known.
    total: Option<u64>,
    /// Bytes the session held before this chunk.
    held: u64,
    /// Bytes the chunk announces (`Content-Range`).
    length: u64,
    /// Bytes at the chunk's start that the session already holds: skipped, not compared.
    overlap: u64,
    /// Whether the chunk ends at the session's total.
    is_final: bool,
}

/// What reading a chunk's body did.
struct Received {
    end: BodyEnd,
    /// Bytes of the body read.
    received: u64,
    /// Bytes appended to the session (the body past the overlap).
    written: u64,
}

/// A chunk `PUT` to a session:
/// 1. checks its range against the session ([`plan_chunk`]);
/// 2. appends the body's new bytes to the session's data ([`receive_chunk`]);
/// 3. keeps what a body that broke off or did not match its range leaves, as GCS does
///    ([`settle_body_end`]);
/// 4. with partial persistence, keeps only some of the chunk's whole blocks
///    ([`keep_partially`]);
/// 5. answers an injected status fault, keeping what the fault says ([`injected_status`]);
/// 6. finalizes a session that now holds its total, else answers 308.
async fn chunk(
    service: &Shared,
    slot: &mut Slot,
    headers: &HeaderMap,
    fault: Option<InjectedFault>,
    body: Body,
    range: ChunkRange,
) -> Response {
    if slot.record.state == TransferState::Complete {
        return completed(slot);
    }
    let plan = match plan_chunk(service, slot, headers, range).await {
        Ok(plan) => plan,
        Err(refused) => return refused,
    };
    let received = match receive_chunk(service, slot, &plan, fault.as_ref(), body).await {
        Ok(received) => received,
        Err(failed) => return failed,
    };
    if let Some(ended) = settle_body_end(service, slot, &plan, fault.as_ref(), &received).await {
        return ended;
    }
    let now_held = match keep_partially(service, slot, &plan, received.written).await {
        Ok(now_held) => now_held,
        Err(failed) => return failed,
    };
    if let Some(faulted) = injected_status(service, slot, &plan, fault.as_ref(), now_held).await {
        return faulted;
    }
    match plan.total {
        Some(total) if now_held == total => finalize(service, slot, now_held).await,
        _ => incomplete(now_held),
    }
}

/// Step 1: the chunk's range checked against the session's total, its `Content-Length`
/// and the bytes the session holds; a session that did not know its total learns it.
async fn plan_chunk(
    service: &Shared,
    slot: &mut Slot,
    headers: &HeaderMap,
    ChunkRange { first, last, total }: ChunkRange,
) -> Result<ChunkPlan, Response> {
    if let (Some(given), Some(declared)) = (total, slot.record.total)
        && given != declared
    {
        return Err(total_mismatch(given, declared));
    }
    if slot.record.total.is_none() && total.is_some() {
        // A session started with an unknown total (`bytes a-b/*`) learns it here; later
        // chunks must agree with it.
        slot.record.total = total;
        if let Err(err) = service.save_transfer(&slot.record) {
            return Err(error(
                500,
                &format!("the emulator cannot record the session: {err}"),
            ));
        }
    }
    let total = total.or(slot.record.total);
    if first > last {
        return Err(error(
            400,
            &format!("Invalid request. Content-Range bytes {first}-{last} is empty or reversed."),
        ));
    }
    if let Some(total) = total.filter(|&total| last >= total) {
        return Err(error(
            400,
            &format!(
                "Invalid request. Content-Range ends at byte {last}, past the total of {total} byte(s)."
            ),
        ));
    }
    let length = last - first + 1;
    if let Some(declared) = declared_length(headers).filter(|&declared| declared != length) {
        return Err(error(
            400,
            &format!(
                "Invalid request. Content-Length {declared} differs from the {length} byte(s) announced by Content-Range."
            ),
        ));
    }
    let held = match held_bytes(service, &slot.record.id).await {
        Ok(held) => held,
        Err(err) => {
            return Err(error(
                500,
                &format!("the emulator cannot read the session: {err}"),
            ));
        }
    };
    if first > held {
        return Err(error(
            400,
            &format!(
                "Invalid request. According to the Content-Range header, the upload offset is {first} byte(s), \
                 which exceeds already uploaded size of {held} byte(s)."
            ),
        ));
    }
    let is_final = total == Some(last + 1);
    if !is_final && length < ALIGN {
        return Err(error(
            400,
            &format!(
                "Invalid request. The number of bytes uploaded is required to be equal or greater than 262144, \
                 except for the final request (it's recommended to be the exact multiple of 262144). The received \
                 request contained {length} bytes, which does not meet this requirement."
            ),
        ));
    }
    Ok(ChunkPlan {
        total,
        held,
        length,
        overlap: held - first,
        is_final,
    })
}

/// Step 2: reads the body, appending what the session does not hold yet, until it ends,
/// breaks, grows past its range, or an injected drop strikes half-way.
async fn receive_chunk(
    service: &Shared,
    slot: &mut Slot,
    plan: &ChunkPlan,
    fault: Option<&InjectedFault>,
    body: Body,
) -> Result<Received, Response> {
    let held = plan.held;
    if slot
        .digest
        .as_ref()
        .is_some_and(|digest| digest.len != held)
    {
        slot.digest = None;
    }
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .open(service.data_path(&slot.record.id))
    {
        Ok(file) => file,
        Err(err) => {
            return Err(error(
                500,
                &format!("the emulator cannot open the session: {err}"),
            ));
        }
    };
    let mut writer = BodyWriter::new(file, held, slot.digest.take());
    let drop_after = match fault {
        Some(InjectedFault {
            action: FaultAction::Drop,
            ..
        }) => Some(plan.length / 2),
        _ => None,
    };
    let mut skip = plan.overlap;
    let mut received = 0u64;
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    let end = loop {
        if drop_after.is_some_and(|limit| received >= limit) {
            break BodyEnd::Dropped;
        }
        let bytes = match stream.next().await {
            None => break BodyEnd::Complete,
            Some(Err(_)) => break BodyEnd::Broken,
            Some(Ok(bytes)) => bytes,
        };
        received += bytes.len() as u64;
        if received > plan.length {
            break BodyEnd::TooLong;
        }
        let skipped = skip.min(bytes.len() as u64) as usize;
        skip -= skipped as u64;
        let fresh = bytes.slice(skipped..);
        if fresh.is_empty() {
            continue;
        }
        written += fresh.len() as u64;
        if let Err(err) = writer.write(fresh).await {
            let _ = truncate(service, slot, held).await;
            return Err(error(
                500,
                &format!("the emulator cannot write the session: {err}"),
            ));
        }
    };
    match writer.finish().await {
        Ok(digest) => slot.digest = digest,
        Err(err) => {
            let _ = truncate(service, slot, held).await;
            return Err(error(
                500,
                &format!("the emulator cannot write the session: {err}"),
            ));
        }
    }
    Ok(Received {
        end,
        received,
        written,
    })
}

/// Step 3: the answer to a body that did not end whole and as long as its range, after
/// cutting the session back to what such a body leaves; `None` for a whole body.
async fn settle_body_end(
    service: &Shared,
    slot: &mut Slot,
    plan: &ChunkPlan,
    fault: Option<&InjectedFault>,
    received: &Received,
) -> Option<Response> {
    let (held, length) = (plan.held, plan.length);
    let (got, written) = (received.received, received.written);
    match received.end {
        BodyEnd::Complete if got == length => None,
        BodyEnd::Complete => {
            let _ = truncate(service, slot, held).await;
            Some(error(
                400,
                &format!(
                    "Invalid request. The request body held {got} byte(s) but Content-Range announced {length}."
                ),
            ))
        }
        BodyEnd::TooLong => {
            let _ = truncate(service, slot, held).await;
            Some(error(
                400,
                &format!(
                    "Invalid request. The request body is longer than the {length} byte(s) announced by Content-Range."
                ),
            ))
        }
        BodyEnd::Broken => {
            // Like GCS: what arrived is kept in whole 256 KiB blocks.
            let _ = truncate(service, slot, held + written / ALIGN * ALIGN).await;
            Some(faults::drop_connection())
        }
        BodyEnd::Dropped => {
            let fault = fault.expect("a drop ends the body only when a drop fault was injected");
            let _ = truncate(service, slot, held + fault.kept(written, ALIGN)).await;
            Some(faults::drop_connection())
        }
    }
}

/// Step 4: what the session holds after a whole chunk; with partial persistence (a chunk
/// not the last), a random number of its whole blocks, as a server may keep less than it
/// was sent.
async fn keep_partially(
    service: &Shared,
    slot: &mut Slot,
    plan: &ChunkPlan,
    written: u64,
) -> Result<u64, Response> {
    if !service.options.redivis_partial_persistence || plan.is_final {
        return Ok(plan.held + written);
    }
    let blocks = written / ALIGN;
    let kept = service
        .rng
        .lock()
        .expect("generator lock is never poisoned")
        .random_range(0..=blocks)
        * ALIGN;
    let now_held = plan.held + kept;
    match truncate(service, slot, now_held).await {
        Ok(()) => Ok(now_held),
        Err(err) => Err(error(
            500,
            &format!("the emulator cannot write the session: {err}"),
        )),
    }
}

/// Step 5: the answer of an injected status fault, the session cut back to what the fault
/// keeps of this chunk; `None` without one.
async fn injected_status(
    service: &Shared,
    slot: &mut Slot,
    plan: &ChunkPlan,
    fault: Option<&InjectedFault>,
    now_held: u64,
) -> Option<Response> {
    let fault = fault?;
    let FaultAction::Status {
        status,
        retry_after,
    } = &fault.action
    else {
        return None;
    };
    let kept = fault.kept(now_held - plan.held, ALIGN);
    let _ = truncate(service, slot, plan.held + kept).await;
    Some(faults::fault_response(
        Target::RedivisSession,
        &Method::PUT,
        *status,
        retry_after.as_deref(),
    ))
}

/// Cuts the session's bytes back to `length`; the running digest no longer matches.
async fn truncate(service: &Shared, slot: &mut Slot, length: u64) -> std::io::Result<()> {
    let path = service.data_path(&slot.record.id);
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .await?;
    if file.metadata().await?.len() > length {
        file.set_len(length).await?;
        slot.digest = None;
    }
    Ok(())
}

/// `PUT /upload/temp/{id}`: a non-resumable upload; stores exactly the bytes received.
pub async fn put_temp(
    State(service): State<Shared>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let fault = fault_of(&request);
    let delay = match &fault {
        Some(InjectedFault {
            action: FaultAction::Delay(delay),
            ..
        }) => Some(*delay),
        _ => None,
    };
    let task = tokio::spawn(put_temp_task(service, id, fault, request));
    let response = task
        .await
        .unwrap_or_else(|err| error(500, &format!("the emulator's upload task failed: {err}")));
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

/// A plain `PUT` to a temp upload URL, once its faults' delays are behind it:
/// 1. the upload, if a request may still use it ([`open_transfer`]);
/// 2. an injected dropped connection reads part of the body and drops it;
/// 3. the body, whole, into a file of its own ([`receive_whole`]);
/// 4. an injected status that keeps nothing removes it;
/// 5. the file becomes the upload's data, and the upload is complete
///    ([`complete_temp_upload`]);
/// 6. an injected status that keeps what it received answers after that; else the
///    object's metadata.
async fn put_temp_task(
    service: Shared,
    id: String,
    fault: Option<InjectedFault>,
    request: Request,
) -> Response {
    let mut slot = match open_transfer(&service, &id, PutTo::TempUrl).await {
        Ok(slot) => slot,
        Err(refused) => return refused,
    };
    service.count(|stats| stats.temp_puts += 1);
    if let Some(InjectedFault {
        action: FaultAction::Drop,
        ..
    }) = &fault
    {
        let declared = faults::declared_length(&request);
        faults::read_part_of_body(request.into_body(), declared).await;
        return faults::drop_connection();
    }
    let part = service.dir.join("sessions").join(format!("{id}.data.part"));
    let digest = match receive_whole(&part, request.into_body()).await {
        Ok(digest) => digest,
        Err(failed) => return failed,
    };
    let status_fault = fault.as_ref().and_then(|fault| match &fault.action {
        FaultAction::Status {
            status,
            retry_after,
        } => Some((fault.persist, *status, retry_after.as_deref())),
        _ => None,
    });
    let fault_response = |(_, status, retry_after): (faults::Persist, StatusCode, Option<&str>)| {
        faults::fault_response(Target::RedivisSession, &Method::PUT, status, retry_after)
    };
    if let Some(keeping_nothing) =
        status_fault.filter(|(persist, ..)| *persist != faults::Persist::All)
    {
        let _ = tokio::fs::remove_file(&part).await;
        return fault_response(keeping_nothing);
    }
    let content = match complete_temp_upload(&service, &mut slot, &id, &part, digest).await {
        Ok(content) => content,
        Err(failed) => return failed,
    };
    if let Some(keeping_all) = status_fault {
        return fault_response(keeping_all);
    }
    object_metadata(&id, slot.record.name.as_deref(), &content)
}

/// Step 3 of [`put_temp_task`]: the body written to `part` with its digest. A body that
/// breaks off is a dropped connection, and a file that cannot be written a 500; either
/// way `part` is removed.
async fn receive_whole(part: &std::path::Path, body: Body) -> Result<Digest, Response> {
    let outcome: std::io::Result<Option<Digest>> = async {
        let file = std::fs::File::create(part)?;
        let mut writer = BodyWriter::new(file, 0, Some(Digest::default()));
        let mut stream = body.into_data_stream();
        while let Some(bytes) = stream.next().await {
            let Ok(bytes) = bytes else {
                return Ok(None);
            };
            writer.write(bytes).await?;
        }
        writer.finish().await
    }
    .await;
    match outcome {
        Ok(Some(digest)) => Ok(digest),
        Ok(None) => {
            let _ = tokio::fs::remove_file(part).await;
            Err(faults::drop_connection())
        }
        Err(err) => {
            let _ = tokio::fs::remove_file(part).await;
            Err(error(
                500,
                &format!("the emulator cannot store the upload: {err}"),
            ))
        }
    }
}

/// Step 5 of [`put_temp_task`]: `part` becomes the upload's data and the upload is
/// recorded complete, with what it holds.
async fn complete_temp_upload(
    service: &Shared,
    slot: &mut Slot,
    id: &str,
    part: &std::path::Path,
    digest: Digest,
) -> Result<ContentSummary, Response> {
    if let Err(err) = tokio::fs::rename(part, service.data_path(id)).await {
        return Err(error(
            500,
            &format!("the emulator cannot store the upload: {err}"),
        ));
    }
    let content = digest.summary();
    slot.record.received = Some(content.size);
    slot.record.content = Some(content.clone());
    slot.record.state = TransferState::Complete;
    if let Err(err) = service.save_transfer(&slot.record) {
        return Err(error(
            500,
            &format!("the emulator cannot record the upload: {err}"),
        ));
    }
    Ok(content)
}

/// `POST /upload/temp/{id}` with `x-goog-resumable: start`: a new session (201 + Location).
pub async fn initiate(
    State(service): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let starts = headers
        .get("x-goog-resumable")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("start"));
    if !starts {
        return error(
            400,
            "Initiating a resumable upload needs the header x-goog-resumable: start (and an empty body).",
        );
    }
    let Some(slot) = service.transfer(&id) else {
        return not_found();
    };
    let parent = {
        let slot = slot.lock().await;
        if slot.record.kind != TransferKind::TempUpload || service.expired(&slot.record) {
            return not_found();
        }
        if slot.record.state == TransferState::Cancelled {
            return cancelled();
        }
        slot.record.clone()
    };
    let announced = match headers.get("x-upload-content-length") {
        None => None,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            Some(length) => Some(length),
            None => {
                return error(
                    400,
                    &format!("x-upload-content-length {value:?} is not a byte count"),
                );
            }
        },
    };
    if let (Some(announced), Some(declared)) = (announced, parent.total)
        && announced != declared
    {
        return error(
            400,
            &format!(
                "x-upload-content-length {announced} differs from the temp upload's size of {declared} byte(s)"
            ),
        );
    }
    let session = store::Transfer {
        id: store::session_id(),
        kind: TransferKind::Session,
        table: parent.table.clone(),
        total: announced.or(parent.total),
        name: parent.name.clone(),
        resumable: true,
        parent: Some(id),
        completed_session: None,
        received: None,
        created_ms: store::now_ms(),
        state: TransferState::Open,
        content: None,
        consumed_by: None,
    };
    let location = format!("{}/upload/sessions/{}", base_url(&headers), session.id);
    if let Err(err) = service.add_transfer(session) {
        return error(
            500,
            &format!("the emulator cannot create the session: {err}"),
        );
    }
    service.count(|stats| stats.session_initiations += 1);
    let mut response = StatusCode::CREATED.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location)
            .expect("a URL built from the Host header is a valid header value"),
    );
    response
}

/// `DELETE` on a session or temp upload URL: cancels it (499 now and afterwards).
pub async fn delete_transfer(State(service): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(slot) = service.transfer(&id) else {
        return not_found();
    };
    let mut slot = slot.lock().await;
    slot.record.state = TransferState::Cancelled;
    if let Err(err) = service.save_transfer(&slot.record) {
        return error(
            500,
            &format!("the emulator cannot record the session: {err}"),
        );
    }
    cancelled()
}

async fn set_state(
    service: &Shared,
    id: &str,
    change: impl FnOnce(&mut store::Transfer),
) -> Response {
    let Some(slot) = service.transfer(id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no session or temp upload with id {id:?}"),
        )
            .into_response();
    };
    let mut slot = slot.lock().await;
    change(&mut slot.record);
    match service.save_transfer(&slot.record) {
        Ok(()) => Json(
            json!({ "id": id, "state": slot.record.state, "createdMs": slot.record.created_ms }),
        )
        .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot record the session: {err}"),
        )
            .into_response(),
    }
}

/// `POST /_emulator/redivis/poison/{id}`: the session answers 410 from now on.
pub async fn poison(State(service): State<Shared>, Path(id): Path<String>) -> Response {
    set_state(&service, &id, |record| {
        record.state = TransferState::Poisoned
    })
    .await
}

/// `POST /_emulator/redivis/expire/{id}`: the session is past its lifetime (404) from now on.
pub async fn expire(State(service): State<Shared>, Path(id): Path<String>) -> Response {
    set_state(&service, &id, |record| record.created_ms = 0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms_parse() {
        assert_eq!(
            parse_content_range("bytes 0-524287/2000000"),
            Some(ContentRange::Chunk(ChunkRange {
                first: 0,
                last: 524287,
                total: Some(2000000)
            }))
        );
        assert_eq!(
            parse_content_range("bytes 0-524287/*"),
            Some(ContentRange::Chunk(ChunkRange {
                first: 0,
                last: 524287,
                total: None
            }))
        );
        assert_eq!(
            parse_content_range("bytes */2000000"),
            Some(ContentRange::Query {
                total: Some(2000000)
            })
        );
        assert_eq!(
            parse_content_range("bytes */*"),
            Some(ContentRange::Query { total: None })
        );
        assert_eq!(parse_content_range("bytes 5-/10"), None);
        assert_eq!(parse_content_range("0-1/2"), None);
    }
}
