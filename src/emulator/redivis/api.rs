//! The REST API handlers (`/api/v1/tables/...`): resumableUpload, tempUploads, upload.post
//! in its three shapes, list, HEAD/GET/DELETE; plus the layer that checks the token,
//! applies the rate limit and shapes HEAD errors.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use super::ratelimit::Verdict;
use super::reply::{ApiError, encode_segment};
use super::store::{
    self, ContentSummary, Digest, Transfer, TransferKind, TransferState, UploadRecord,
};
use super::{DuplicateNames, Service, Shared, Table, parse, tables};

/// Upper bound for JSON request bodies (tempUploads lists, upload.post metadata).
const JSON_LIMIT: usize = 16 << 20;

/// Parse options echoed back on GET, with their defaults.
const PARSE_OPTIONS: [(&str, Value); 10] = [
    ("hasHeaderRow", Value::Bool(true)),
    ("skipBadRecords", Value::Bool(false)),
    ("allowJaggedRows", Value::Bool(false)),
    ("hasQuotedNewlines", Value::Null),
    ("quoteCharacter", Value::Null),
    ("escapeCharacter", Value::Null),
    ("delimiter", Value::Null),
    ("nullMarkers", Value::Null),
    ("schema", Value::Null),
    ("metadata", Value::Null),
];

type ApiResult = Result<Response, ApiError>;

/// Scheme and authority for absolute URLs, from the request's `Host` (works with port 0).
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// Rate limit, then bearer token; `X-RateLimit-*` on every answer; HEAD errors moved into
/// `X-REDIVIS-ERROR-PAYLOAD` with an empty body.
pub async fn api_layer(State(service): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let (mut response, remaining) = match service.limiter.check() {
        Verdict::Limited { retry_after_secs } => {
            service.count(|stats| stats.responses_429 += 1);
            let mut response = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: Some("rate_limit_exceeded"),
                description: format!(
                    "Rate limit exceeded: at most {} API requests per {}; retry after {retry_after_secs} s.",
                    service.limiter.max,
                    humantime::format_duration(service.options.rate_limit_window)
                ),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            (response, 0)
        }
        Verdict::Allowed { remaining } => match authorize(&service, request.headers()) {
            Err(err) => (err.into_response(), remaining),
            Ok(()) => (next.run(request).await, remaining),
        },
    };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(service.limiter.max));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    if method == Method::HEAD
        && response.status().as_u16() >= 400
        && !response.headers().contains_key("x-redivis-error-payload")
    {
        let (mut parts, body) = response.into_parts();
        let payload = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let encoded =
            percent_encoding::percent_encode(&payload, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        parts.headers.insert(
            "x-redivis-error-payload",
            HeaderValue::from_str(&encoded).expect("percent-encoded text is a valid header value"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        response = Response::from_parts(parts, Body::empty());
    }
    response
}

fn authorize(service: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |description: &str| ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: Some("invalid_token"),
        description: description.to_string(),
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| unauthorized("Missing credentials: send Authorization: Bearer <token>."))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    if token.is_empty() {
        return Err(unauthorized(
            "Missing credentials: the Authorization header must be \"Bearer <token>\" with a non-empty token.",
        ));
    }
    match &service.options.redivis_token {
        Some(expected) if expected.expose() != token => Err(unauthorized(
            "The bearer token is not valid for this emulator (--redivis-token).",
        )),
        _ => Ok(()),
    }
}

pub async fn unknown_endpoint(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{method} {} is not an endpoint of this emulator (resumableUpload, tempUploads, uploads).",
            uri.path()
        ),
    )
}

/// A size given as a JSON integer or a numeric string.
fn size_of(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn new_transfer(kind: TransferKind, table: String, total: Option<u64>) -> Transfer {
    Transfer {
        id: match kind {
            TransferKind::TempUpload => store::short_id(),
            _ => store::session_id(),
        },
        kind,
        table,
        total,
        name: None,
        resumable: kind != TransferKind::TempUpload,
        parent: None,
        completed_session: None,
        received: None,
        created_ms: store::now_ms(),
        state: TransferState::Open,
        content: None,
        consumed_by: None,
    }
}

/// Legacy `POST /tables/{ref}/resumableUpload?size=N` (or JSON `{"size": N}`).
pub async fn resumable_upload(
    State(service): State<Shared>,
    Path(table): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    service.count_api("resumableUpload");
    let key = tables::ensure_writable(&service, &table, "resumableUpload").await?;
    let size = match query.get("size") {
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            ApiError::bad(format!(
                "size {text:?} is not a byte count (a non-negative integer)"
            ))
        })?),
        None => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|value| size_of(value.get("size"))),
    };
    let size = size.ok_or_else(|| {
        ApiError::bad("size is required: pass ?size=<bytes> (or a JSON body {\"size\": <bytes>})")
    })?;
    let transfer = new_transfer(TransferKind::ResumableUpload, key, Some(size));
    let id = transfer.id.clone();
    service
        .add_transfer(transfer)
        .map_err(|err| ApiError::internal("creating the resumable upload", err))?;
    Ok(Json(json!({
        "kind": "resumableUpload",
        "id": id,
        "url": format!("{}/upload/sessions/{id}", base_url(&headers)),
    }))
    .into_response())
}

/// `POST /tables/{ref}/tempUploads` `{"tempUploads": [{"size", "name", "resumable"}]}`.
pub async fn temp_uploads(
    State(service): State<Shared>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    service.count_api("tempUploads");
    let key = tables::ensure_writable(&service, &table, "tempUploads").await?;
    let request: Value = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad(format!(
            "the body must be JSON {{\"tempUploads\": [{{\"size\": <bytes>, \"name\": ..., \"resumable\": ...}}]}}: {err}"
        ))
    })?;
    let items = request
        .get("tempUploads")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad("tempUploads must be an array of {size, name, resumable}"))?;
    if items.is_empty() || items.len() > 1000 {
        return Err(ApiError::bad(format!(
            "tempUploads must hold between 1 and 1000 entries, not {}",
            items.len()
        )));
    }
    let base = base_url(&headers);
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let size = size_of(item.get("size")).ok_or_else(|| {
            ApiError::bad(format!(
                "tempUploads[{index}].size is required: a byte count (integer or numeric string)"
            ))
        })?;
        let name = item.get("name").and_then(Value::as_str).map(str::to_string);
        // A resumable temp upload of 0 bytes makes the official client loop forever
        // (protocol §11, B5).
        let resumable = size > 0 && item.get("resumable").and_then(Value::as_bool) == Some(true);
        let mut transfer = new_transfer(TransferKind::TempUpload, key.clone(), Some(size));
        transfer.name = name.clone();
        transfer.resumable = resumable;
        let id = transfer.id.clone();
        service
            .add_transfer(transfer)
            .map_err(|err| ApiError::internal("creating a temp upload", err))?;
        results.push(json!({
            "kind": "tempUpload",
            "id": id,
            "url": format!("{base}/upload/temp/{id}"),
            "name": name,
            "size": size.to_string(),
            "resumable": resumable,
        }));
    }
    Ok(Json(json!({ "kind": "tempUploadList", "results": results })).into_response())
}

/// Where upload.post takes its bytes from.
enum Content {
    /// A temp upload or resumable upload id.
    Transfer(String),
    /// Bytes received inline, staged in `tmp/`.
    Staged(PathBuf, ContentSummary),
    /// An empty stream upload.
    Empty,
}

/// `POST /tables/{ref}/uploads`: JSON, multipart (metadata first, then data) or simple.
pub async fn post_upload(
    State(service): State<Shared>,
    Path(table): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> ApiResult {
    service.count_api("uploads.post");
    store::check_table_ref(&table, true)?;
    let headers = request.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (metadata, content) = if content_type.starts_with("application/json") {
        let body = axum::body::to_bytes(request.into_body(), JSON_LIMIT)
            .await
            .map_err(|err| ApiError::bad(format!("cannot read the JSON body: {err}")))?;
        let metadata = metadata_object(&body)?;
        let content = content_from_metadata(&metadata)?;
        (metadata, content)
    } else if content_type.starts_with("multipart/form-data") {
        multipart_upload(&service, request).await?
    } else {
        let mut metadata = Map::new();
        for key in ["name", "type"] {
            if let Some(value) = query.get(key) {
                metadata.insert(key.to_string(), Value::String(value.clone()));
            }
        }
        let (path, summary) = stage(&service, request.into_body().into_data_stream()).await?;
        (metadata, Content::Staged(path, summary))
    };
    let base = base_url(&headers);
    // The creation runs to its end even if the client goes away mid-request, so the
    // emulator's state never holds half an upload.
    let task_service = service.clone();
    let created = tokio::spawn(async move {
        create_upload(&task_service, &table, metadata, content, &base).await
    })
    .await
    .map_err(|err| ApiError::internal("creating the upload", err))??;
    if service.options.redivis_post_delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(
            service.options.redivis_post_delay,
        ))
        .await;
    }
    if service.lose_post_answer() {
        return Ok(crate::emulator::faults::drop_connection());
    }
    Ok(Json(created).into_response())
}

fn metadata_object(text: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("upload metadata must be a JSON object")),
        Err(err) => Err(ApiError::bad(format!(
            "upload metadata is not valid JSON: {err}"
        ))),
    }
}

fn content_from_metadata(metadata: &Map<String, Value>) -> Result<Content, ApiError> {
    let id = ["tempUploadId", "resumableUploadId"]
        .iter()
        .find_map(|key| metadata.get(*key).and_then(Value::as_str));
    if let Some(id) = id {
        return Ok(Content::Transfer(id.to_string()));
    }
    if metadata
        .get("transferSpecification")
        .is_some_and(|value| !value.is_null())
    {
        return Err(ApiError::bad(
            "transferSpecification uploads are not emulated; use tempUploadId, resumableUploadId or an inline multipart body",
        ));
    }
    if metadata.get("type").and_then(Value::as_str) == Some("stream") {
        return Ok(Content::Empty);
    }
    Err(ApiError::bad(
        "upload.post needs the bytes: give tempUploadId (or resumableUploadId) of a finished transfer, \
         or send multipart/form-data with a \"metadata\" part then a \"data\" part",
    ))
}

async fn multipart_upload(
    service: &Shared,
    request: Request,
) -> Result<(Map<String, Value>, Content), ApiError> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|err| ApiError::bad(format!("cannot read the multipart body: {err}")))?;
    let bad_part = |err: axum::extract::multipart::MultipartError| {
        ApiError::bad(format!("cannot read the multipart body: {err}"))
    };
    let first = multipart.next_field().await.map_err(bad_part)?;
    let metadata = match first {
        Some(field) if field.name() == Some("metadata") => {
            let text = field.bytes().await.map_err(bad_part)?;
            metadata_object(&text)?
        }
        other => {
            return Err(ApiError::bad(format!(
                "the first multipart part must be named \"metadata\" (the upload's JSON), found {:?}",
                other.as_ref().and_then(|field| field.name())
            )));
        }
    };
    let content = match multipart.next_field().await.map_err(bad_part)? {
        Some(field) if field.name() == Some("data") => {
            let (path, summary) = stage(service, field).await?;
            Content::Staged(path, summary)
        }
        Some(field) => {
            return Err(ApiError::bad(format!(
                "the second multipart part must be named \"data\", found {:?}",
                field.name()
            )));
        }
        None => match content_from_metadata(&metadata) {
            Ok(content) => content,
            Err(_) => Content::Empty,
        },
    };
    Ok((metadata, content))
}

/// Streams inline bytes into `tmp/`, digesting them on the way.
async fn stage<S, E>(service: &Shared, stream: S) -> Result<(PathBuf, ContentSummary), ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let path = service
        .dir
        .join("tmp")
        .join(format!("{}.part", store::session_id()));
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|err| ApiError::internal("staging the upload body", err))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut digest = Digest::default();
    let mut stream = std::pin::pin!(stream);
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|err| ApiError::bad(format!("the upload body was cut short: {err}")))?;
            digest.update(&chunk);
            writer
                .write_all(&chunk)
                .await
                .map_err(|err| ApiError::internal("staging the upload body", err))?;
        }
        writer
            .flush()
            .await
            .map_err(|err| ApiError::internal("staging the upload body", err))
    }
    .await;
    if let Err(err) = outcome {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(err);
    }
    Ok((path, digest.summary()))
}

/// The bytes a transfer holds, ready to become an upload: path, summary, and the ids to mark
/// consumed.
pub(super) async fn take_transfer(
    service: &Shared,
    key: &str,
    id: &str,
) -> Result<(PathBuf, ContentSummary, Vec<String>), ApiError> {
    let unknown = || {
        ApiError::bad(format!(
            "no temp upload or resumable upload with id {id:?} exists (or it expired); create one first"
        ))
    };
    let slot = service.transfer(id).ok_or_else(unknown)?;
    let slot = slot.lock().await;
    let record = &slot.record;
    if service.expired(record) {
        return Err(unknown());
    }
    if record.table != key {
        return Err(ApiError::bad(format!(
            "upload id {id:?} belongs to table {:?}, not to this one",
            record.table
        )));
    }
    if let Some(upload) = &record.consumed_by {
        return Err(ApiError::bad(format!(
            "upload id {id:?} was already used by upload {upload:?}; transfer the bytes again to create another upload"
        )));
    }
    match record.kind {
        TransferKind::TempUpload => {
            if let (Some(received), Some(content)) = (record.received, &record.content) {
                if let Some(declared) = record.total.filter(|&declared| declared != received) {
                    return Err(ApiError::bad(format!(
                        "temp upload {id:?} declared {declared} bytes but its PUT carried {received}; \
                         PUT the whole file again"
                    )));
                }
                return Ok((service.data_path(id), content.clone(), vec![id.to_string()]));
            }
            let Some(session_id) = record.completed_session.clone() else {
                return Err(ApiError::bad(format!(
                    "temp upload {id:?} holds no data yet: PUT the bytes to its url, or finish its \
                     resumable session, before creating the upload"
                )));
            };
            drop(slot);
            let session = service.transfer(&session_id).ok_or_else(unknown)?;
            let session = session.lock().await;
            let content = session.record.content.clone().ok_or_else(|| {
                ApiError::internal(
                    "reading a completed session",
                    "its content summary is missing",
                )
            })?;
            Ok((
                service.data_path(&session_id),
                content,
                vec![id.to_string(), session_id],
            ))
        }
        TransferKind::ResumableUpload | TransferKind::Session => {
            match (&record.state, &record.content) {
                (TransferState::Complete, Some(content)) => {
                    Ok((service.data_path(id), content.clone(), vec![id.to_string()]))
                }
                (TransferState::Poisoned | TransferState::Cancelled, _) => Err(ApiError::bad(
                    format!("resumable upload {id:?} was cancelled or failed; start a new one"),
                )),
                _ => {
                    let held = std::fs::metadata(service.data_path(id))
                        .map(|meta| meta.len())
                        .unwrap_or(0);
                    let total = record.total.map_or_else(
                        || "an unknown number of".to_string(),
                        |total| total.to_string(),
                    );
                    Err(ApiError::bad(format!(
                        "resumable upload {id:?} is not finished: it holds {held} of {total} bytes; send the \
                     remaining bytes (or a status query \"bytes */N\" once all are there) before creating the upload"
                    )))
                }
            }
        }
    }
}

async fn create_upload(
    service: &Shared,
    reference: &str,
    metadata: Map<String, Value>,
    content: Content,
    base: &str,
) -> Result<Value, ApiError> {
    let staged = match &content {
        Content::Staged(path, _) => Some(path.clone()),
        _ => None,
    };
    let result = create_upload_inner(service, reference, metadata, content, base).await;
    if let (Err(_), Some(path)) = (&result, staged) {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

/// upload.post's creation, in steps: name and options checked (400), the table's lock
/// taken, the bytes taken from their transfer or the staging area, a free name found, the
/// bytes stored, the record written; then, outside the lock, the import's check of the
/// bytes against the parse options (see [`super::parse`]).
async fn create_upload_inner(
    service: &Shared,
    reference: &str,
    metadata: Map<String, Value>,
    content: Content,
    base: &str,
) -> Result<Value, ApiError> {
    parse::check_shape(&metadata).map_err(ApiError::bad)?;
    let requested_type = metadata
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = upload_name(&metadata, requested_type.as_deref())?;
    let mut tables = service.tables.lock().await;
    let key = tables::writable(service, &mut tables, reference, "uploads.post")?;
    if tables
        .by_key
        .get(&key)
        .is_some_and(|t| t.record.is_file_index)
    {
        return Err(ApiError::bad(format!(
            "table {reference:?} is a file index table: register files with POST \
             /tables/{{ref}}/rawFiles instead of creating uploads"
        )));
    }
    let (source_path, summary, consumed, source) = match content {
        Content::Transfer(id) => {
            let (path, summary, consumed) = take_transfer(service, &key, &id).await?;
            (Some(path), summary, consumed, Some(id))
        }
        Content::Staged(path, summary) => (Some(path), summary, Vec::new(), None),
        Content::Empty => (None, Digest::default().summary(), Vec::new(), None),
    };
    let next_seq = tables.next_seq;
    let table = tables
        .by_key
        .get_mut(&key)
        .expect("tables::writable made the table under this lock");
    let name = free_name(service, table, name)?;
    let target = store_bytes(service, &key, &name, source_path.as_deref())?;
    let kind = requested_type.unwrap_or_else(|| store::infer_type(&name).to_string());
    let options: Map<String, Value> = metadata
        .into_iter()
        .filter(|(field, value)| {
            !value.is_null() && PARSE_OPTIONS.iter().any(|(known, _)| known == field)
        })
        .collect();
    let plan = import_plan(service, &name, &kind, &options, summary.size);
    let record = UploadRecord {
        id: store::short_id(),
        seq: next_seq,
        kind,
        name,
        created_ms: store::now_ms(),
        content: service.recorded(summary),
        failure: match &plan {
            ImportPlan::Done(failure) => failure.clone(),
            ImportPlan::Check(_) => None,
        },
        importing: matches!(plan, ImportPlan::Check(_)),
        rows: None,
        bad_records: 0,
        options,
        source,
    };
    save_upload(service, &key, &record)?;
    let mut reference = table.record.reference.clone();
    table.uploads.push(record.clone());
    tables.next_seq += 1;
    // Marked while the table lock is held, so a concurrent post of the same id sees it.
    for id in consumed {
        if let Some(slot) = service.transfer(&id) {
            let mut slot = slot.lock().await;
            slot.record.consumed_by = Some(record.id.clone());
            service
                .save_transfer(&slot.record)
                .map_err(|err| ApiError::internal("recording the used transfer", err))?;
        }
    }
    drop(tables);
    service.count(|stats| stats.uploads_created += 1);
    let mut record = record;
    if let ImportPlan::Check(options) = plan {
        (reference, record) = run_import(service, &key, record, target, options).await?;
    }
    Ok(resource(service, &reference, &record, base))
}

/// The name the upload gets (empty → `untitled_upload.<type>`), refused when it cannot be
/// referenced or stored.
fn upload_name(metadata: &Map<String, Value>, kind: Option<&str>) -> Result<String, ApiError> {
    let mut name = metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        let extension = match kind {
            None | Some("delimited") => "csv",
            Some(other) => other,
        };
        name = format!("untitled_upload.{extension}");
    }
    if store::escape_name(&name).is_empty() {
        return Err(ApiError::bad(format!(
            "upload name {name:?} has no letter or digit, so it cannot be referenced"
        )));
    }
    if store::file_component(&name).len() > 240 {
        return Err(ApiError::bad(format!(
            "upload name {name:?} is too long for the emulator's file store (at most about 240 bytes)"
        )));
    }
    Ok(name)
}

/// `name`, or (with `--redivis-duplicate-names rename`) a free variant of it when an upload
/// of the table holds it under name escaping.
fn free_name(service: &Shared, table: &Table, name: String) -> Result<String, ApiError> {
    let taken = |candidate: &str| {
        let escaped = store::escape_name(candidate);
        table
            .uploads
            .iter()
            .any(|upload| store::escape_name(&upload.name) == escaped)
    };
    if !taken(&name) {
        return Ok(name);
    }
    match service.options.redivis_duplicate_names {
        DuplicateNames::Reject => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: Some("conflict"),
            description: format!(
                "an upload named {name:?} (or one equal to it after name escaping) already exists on this table"
            ),
        }),
        DuplicateNames::Rename => {
            let (stem, extension) = split_extension(&name);
            Ok((1..)
                .map(|counter| format!("{stem} ({counter}){extension}"))
                .find(|candidate| !taken(candidate))
                .expect("some counter gives a free name"))
        }
    }
}

/// Moves the upload's bytes (or nothing, for an empty stream upload) to `files/<name>`.
fn store_bytes(
    service: &Shared,
    key: &str,
    name: &str,
    source: Option<&std::path::Path>,
) -> Result<PathBuf, ApiError> {
    let files = service.table_dir(key).join("files");
    let target = files.join(store::file_component(name));
    let stored: std::io::Result<()> = (|| {
        std::fs::create_dir_all(&files)?;
        match source {
            Some(path) => std::fs::rename(path, &target),
            None => std::fs::File::create(&target).map(|_| ()),
        }
    })();
    stored.map_err(|err| ApiError::internal("storing the upload's bytes", err))?;
    Ok(target)
}

fn save_upload(service: &Service, key: &str, record: &UploadRecord) -> Result<(), ApiError> {
    let path = service
        .table_dir(key)
        .join("uploads")
        .join(format!("{}.json", record.id));
    store::write_json(&path, record).map_err(|err| ApiError::internal("recording the upload", err))
}

/// What the import of a new upload does.
enum ImportPlan {
    /// Nothing to check: it completes, or fails with this `errorMessage`.
    Done(Option<String>),
    /// Check the bytes of a delimited upload against these options.
    Check(parse::DelimitedOptions),
}

fn import_plan(
    service: &Service,
    name: &str,
    kind: &str,
    options: &Map<String, Value>,
    size: u64,
) -> ImportPlan {
    if service
        .fail_names
        .as_ref()
        .is_some_and(|matcher| matcher.is_match(name))
    {
        return ImportPlan::Done(Some(format!(
            "Import failed: the emulator fails uploads whose name matches {:?} (--redivis-fail-name-pattern).",
            service
                .options
                .redivis_fail_name_pattern
                .as_deref()
                .unwrap_or("")
        )));
    }
    if kind != "delimited" {
        return ImportPlan::Done(None);
    }
    match parse::import_options(options) {
        Err(message) => ImportPlan::Done(Some(message)),
        Ok(import) if parse::names_options(options) => {
            if size <= service.options.redivis_import_check_max {
                ImportPlan::Check(import)
            } else {
                // Taken as well-formed: reading large files would slow every benchmark.
                ImportPlan::Done(None)
            }
        }
        // Without options Redivis detects the format; the emulator does not try, and takes
        // the bytes as they are.
        Ok(_) => ImportPlan::Done(None),
    }
}

/// Runs the import's check of `record`'s bytes and records its verdict; returns the
/// table's reference (a release may have renamed it meanwhile) and the updated record.
async fn run_import(
    service: &Shared,
    key: &str,
    record: UploadRecord,
    path: PathBuf,
    options: parse::DelimitedOptions,
) -> Result<(String, UploadRecord), ApiError> {
    let verdict = tokio::task::spawn_blocking(move || parse::check_delimited(&path, &options))
        .await
        .map_err(|err| ApiError::internal("checking the upload's data", err))?
        .map_err(|err| ApiError::internal("checking the upload's data", err))?;
    let mut tables = service.tables.lock().await;
    let found = tables.by_key.iter_mut().find_map(|(table_key, table)| {
        let upload = table.uploads.iter_mut().find(|u| u.id == record.id)?;
        Some((table_key.clone(), table.record.reference.clone(), upload))
    });
    let Some((current_key, reference, upload)) = found else {
        // Deleted meanwhile: what it was is what the post answers.
        let reference = tables
            .by_key
            .get(key)
            .map_or_else(String::new, |t| t.record.reference.clone());
        return Ok((reference, record));
    };
    apply_verdict(upload, verdict);
    let updated = upload.clone();
    save_upload(service, &current_key, &updated)?;
    Ok((reference, updated))
}

/// Records what the import found.
pub(super) fn apply_verdict(record: &mut UploadRecord, verdict: parse::ImportVerdict) {
    record.importing = false;
    record.rows = Some(verdict.rows);
    record.bad_records = verdict.bad_records;
    record.failure = verdict.error;
}

/// `data.csv` → (`data`, `.csv`); `archive.shp.zip` → (`archive.shp`, `.zip`); no extension →
/// (name, ``). Only the last path component's dot counts.
fn split_extension(name: &str) -> (&str, &str) {
    let start = name.rfind('/').map_or(0, |slash| slash + 1);
    match name[start..].rfind('.') {
        Some(dot) if dot > 0 => name.split_at(start + dot),
        _ => (name, ""),
    }
}

/// The upload resource as GET/list/post return it.
fn resource(service: &Shared, reference: &str, record: &UploadRecord, base: &str) -> Value {
    let uri = format!(
        "/tables/{}/uploads/{}",
        encode_segment(reference),
        record.id
    );
    let elapsed = store::now_ms().saturating_sub(record.created_ms);
    let delay = service.options.redivis_processing_delay.as_millis() as u64;
    let status = if elapsed >= delay && !record.importing {
        if record.failure.is_some() {
            "failed"
        } else {
            "completed"
        }
    } else if elapsed * 2 < delay.max(1) {
        "queued"
    } else {
        "running"
    };
    let mut value = json!({
        "kind": "upload",
        "id": record.id,
        "uri": uri,
        "url": format!("{base}/api/v1{uri}"),
        "name": record.name,
        "type": record.kind,
        "status": status,
        "size": service.number(record.content.size),
        "hash": record.content.md5,
        "numRows": Value::Null,
        "numBytes": Value::Null,
        "badRecordsCount": Value::Null,
        "errorMessage": Value::Null,
        "createdAt": record.created_ms,
    });
    let object = value
        .as_object_mut()
        .expect("the resource is a JSON object");
    for (field, default) in PARSE_OPTIONS {
        let given = record.options.get(field).cloned();
        object.insert(field.to_string(), given.unwrap_or(default));
    }
    match status {
        "completed" => {
            let header_row = record.kind == "delimited"
                && object.get("hasHeaderRow") != Some(&Value::Bool(false));
            let lines = record.content.lines.saturating_sub(u64::from(header_row));
            let rows = record.rows.unwrap_or(lines);
            object.insert("numRows".into(), service.number(rows));
            object.insert("numBytes".into(), service.number(record.content.size));
            object.insert("badRecordsCount".into(), service.number(record.bad_records));
        }
        "failed" => {
            object.insert("errorMessage".into(), json!(record.failure));
            if record.rows.is_some() {
                object.insert("badRecordsCount".into(), service.number(record.bad_records));
            }
        }
        _ => {}
    }
    value
}

/// `maxResults` and `pageToken` of a listing.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    max_results: Option<String>,
    page_token: Option<String>,
}

/// One page of a listing: at most `max_results`, after the record with `seq == after`.
pub struct PageBounds {
    pub max_results: usize,
    pub after: Option<u64>,
}

impl ListQuery {
    /// The documented `maxResults` (default 100, at most 1000) and our opaque `pageToken`.
    pub fn bounds(&self) -> Result<PageBounds, ApiError> {
        let max_results = match &self.max_results {
            None => 100,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|&max| (1..=1000).contains(&max))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "maxResults {text:?} must be an integer from 1 to 1000"
                    ))
                })?,
        };
        let after = match self.page_token.as_deref().filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => Some(token.parse::<u64>().map_err(|_| {
                ApiError::bad(format!(
                    "pageToken {token:?} is not one this emulator handed out"
                ))
            })?),
        };
        Ok(PageBounds { max_results, after })
    }
}

impl PageBounds {
    /// The page of `records` (in `seq` order) and the token of the next one.
    pub fn page<'a, T>(&self, records: &'a [T], seq: impl Fn(&T) -> u64) -> (Vec<&'a T>, Value) {
        let mut remaining = records
            .iter()
            .filter(|record| self.after.is_none_or(|after| seq(record) > after));
        let page: Vec<&T> = remaining.by_ref().take(self.max_results).collect();
        let next = match (page.last(), remaining.next()) {
            (Some(last), Some(_)) => Value::String(seq(last).to_string()),
            _ => Value::Null,
        };
        (page, next)
    }
}

/// The table `reference` names for reading (404 when strict and missing; `None` when
/// missing otherwise).
pub fn existing_table<'a>(
    service: &Shared,
    tables: &'a mut super::Tables,
    reference: &str,
) -> Result<Option<&'a mut Table>, ApiError> {
    let key = tables::readable(service, tables, reference)?;
    match tables.by_key.get_mut(&key) {
        Some(table) => Ok(Some(table)),
        None if service.options.strict_tables => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Table {reference:?} does not exist."),
        )),
        None => Ok(None),
    }
}

/// `GET /tables/{ref}/uploads?maxResults=&pageToken=`, oldest first.
pub async fn list_uploads(
    State(service): State<Shared>,
    Path(table): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    service.count_api("uploads.list");
    let bounds = query.bounds()?;
    let base = base_url(&headers);
    let mut tables = service.tables.lock().await;
    let Some(table_state) = existing_table(&service, &mut tables, &table)? else {
        return Ok(Json(json!({ "results": [], "nextPageToken": Value::Null })).into_response());
    };
    let (page, next) = bounds.page(&table_state.uploads, |upload| upload.seq);
    let results: Vec<Value> = page
        .iter()
        .map(|upload| resource(&service, &table_state.record.reference, upload, &base))
        .collect();
    Ok(Json(json!({ "results": results, "nextPageToken": next })).into_response())
}

/// Finds an upload by id (from a returned `uri`) or by escaped name.
fn find_upload(table: &Table, segment: &str) -> Option<usize> {
    if let Some(index) = table.uploads.iter().position(|upload| upload.id == segment) {
        return Some(index);
    }
    let escaped = store::escape_name(segment);
    table
        .uploads
        .iter()
        .position(|upload| store::escape_name(&upload.name) == escaped)
}

fn no_upload(table: &str, segment: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Upload {segment:?} does not exist on table {table:?}."),
    )
}

async fn lookup(
    service: &Shared,
    table: &str,
    segment: &str,
    base: &str,
) -> Result<Value, ApiError> {
    let mut tables = service.tables.lock().await;
    let table_state =
        existing_table(service, &mut tables, table)?.ok_or_else(|| no_upload(table, segment))?;
    let index = find_upload(table_state, segment).ok_or_else(|| no_upload(table, segment))?;
    Ok(resource(
        service,
        &table_state.record.reference,
        &table_state.uploads[index],
        base,
    ))
}

pub async fn get_upload(
    State(service): State<Shared>,
    Path((table, upload)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    service.count_api("uploads.get");
    let value = lookup(&service, &table, &upload, &base_url(&headers)).await?;
    Ok(Json(value).into_response())
}

pub async fn head_upload(
    State(service): State<Shared>,
    Path((table, upload)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    service.count_api("uploads.head");
    lookup(&service, &table, &upload, &base_url(&headers)).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn delete_upload(
    State(service): State<Shared>,
    Path((table, upload)): Path<(String, String)>,
) -> ApiResult {
    service.count_api("uploads.delete");
    if store::check_table_ref(&table, false)?.version != store::Version::Next {
        return Err(ApiError::bad(format!(
            "table {table:?} is in a released version: its uploads cannot be deleted"
        )));
    }
    let mut tables = service.tables.lock().await;
    let key = tables::readable(&service, &mut tables, &table)?;
    let table_state = tables
        .by_key
        .get_mut(&key)
        .ok_or_else(|| no_upload(&table, &upload))?;
    let index = find_upload(table_state, &upload).ok_or_else(|| no_upload(&table, &upload))?;
    let record = table_state.uploads.remove(index);
    let dir = service.table_dir(&key);
    let removed = std::fs::remove_file(dir.join("uploads").join(format!("{}.json", record.id)))
        .and_then(|()| {
            match std::fs::remove_file(dir.join("files").join(store::file_component(&record.name)))
            {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            }
        });
    removed.map_err(|err| ApiError::internal("deleting the upload", err))?;
    Ok((StatusCode::OK, "OK").into_response())
}
