//! The Redivis REST API client: the upload endpoints, pacing, in-request retries, errors.
//!
//! Every call goes through [`ApiClient::send`]: it waits for the shared [`Pacer`], counts
//! the request, sends `Authorization: Bearer` (only to the API's own host:port), reads the
//! rate-limit headers, reports the outcome to the remote's [`RemoteHealth`], and classifies
//! failures with [`classify`]. Transient failures are retried in place under the backend's
//! [`RetryPolicy`] (jittered backoff honouring `Retry-After`, bounded attempts and time);
//! when it gives up the error carries `Disposition::Retry`, so the worker schedules a
//! durable job-level retry.
//!
//! upload.post is not idempotent (protocol §9): [`ApiClient::send`] repeats it only when the
//! server cannot have processed it (429, 408, or a connect error). Any other failure comes
//! back with `maybe_processed`, and the caller reconciles through the upload list instead of
//! posting again blindly.
//!
//! Error messages name the endpoint and the table, never a URL with its query string, and
//! never the token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::classify;
use super::ratelimit::{Announced, Pacer};
use crate::config::Secret;
use crate::metrics::RequestKind;
use crate::net::{HttpClient, describe};
use crate::upload::backoff::retry_after;
use crate::upload::health::RemoteHealth;
use crate::upload::retry::{Attempts, CallScope, GaveUp, RetryPolicy};
use crate::upload::{Disposition, Endpoint, ErrorKind, UploadError};

/// Characters kept literally in a table reference path segment: Python's
/// `quote(ref, safe="")` keeps only letters, digits and `_.-~` (so `:` becomes `%3A`).
pub(super) const REF_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// Fields of a JSON request body (parse options of upload.post).
pub type ApiFields = serde_json::Map<String, serde_json::Value>;

/// Page size for upload lists (the documented default).
pub const LIST_PAGE_SIZE: u32 = 100;

/// A failed API call.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    pub kind: ErrorKind,
    pub disposition: Disposition,
    /// The call that failed, when known.
    pub endpoint: Option<Endpoint>,
    pub message: String,
    /// The request may have been carried out although no success answer arrived.
    pub maybe_processed: bool,
    /// Shutdown was requested while the call waited (for the pacer or a retry).
    pub shutdown: bool,
}

impl From<ApiError> for UploadError {
    fn from(err: ApiError) -> UploadError {
        if err.shutdown {
            UploadError::Shutdown
        } else {
            UploadError::Remote {
                kind: err.kind,
                disposition: err.disposition,
                status: err.status,
                endpoint: err.endpoint,
                message: err.message,
            }
        }
    }
}

impl ApiError {
    /// No usable answer (cut off, not understood): retried later; `maybe_processed` says
    /// whether the request may have been carried out all the same.
    pub(super) fn unusable(message: String, maybe_processed: bool) -> ApiError {
        ApiError {
            status: None,
            kind: ErrorKind::Unexpected,
            disposition: Disposition::Retry { after: None },
            endpoint: None,
            message,
            maybe_processed,
            shutdown: false,
        }
    }
}

/// The endpoint that hands out temp uploads (one or a batch).
pub(super) const TEMP_UPLOADS_ENDPOINT: Endpoint = Endpoint {
    method: "POST",
    path: "/tables/{table}/tempUploads",
};

/// upload.post.
pub(super) const UPLOAD_POST_ENDPOINT: Endpoint = Endpoint {
    method: "POST",
    path: "/tables/{table}/uploads",
};

fn shutdown_error() -> ApiError {
    ApiError {
        shutdown: true,
        ..ApiError::unusable("interrupted by shutdown".into(), false)
    }
}

/// Whether a call may be repeated after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to repeat (reads, deletes, session creation whose orphans are harmless).
    Repeatable,
    /// Repeat only when the server cannot have processed it.
    Once,
}

/// An upload resource (protocol §4.8). Numbers may come as JSON numbers or strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadResource {
    #[serde(default)]
    pub uri: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub hash: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    /// Records the import skipped or found bad, where Redivis counts them.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub bad_records_count: Option<u64>,
}

impl UploadResource {
    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("")
    }

    pub fn is_completed(&self) -> bool {
        self.status() == "completed"
    }

    pub fn is_failed(&self) -> bool {
        self.status() == "failed"
    }

    pub fn is_terminal(&self) -> bool {
        self.is_completed() || self.is_failed()
    }

    /// Same upload: same URI, or same id when both carry one.
    pub fn same_as(&self, other: &UploadResource) -> bool {
        (!self.uri.is_empty() && self.uri == other.uri)
            || matches!((&self.id, &other.id), (Some(a), Some(b)) if a == b)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UploadPage {
    #[serde(default)]
    pub results: Vec<UploadResource>,
    #[serde(default, rename = "nextPageToken")]
    pub next_page_token: Option<String>,
}

/// A session handed out by `resumableUpload` (legacy flow) or `tempUploads` (current flow).
#[derive(Debug, Clone, Deserialize)]
pub struct NewUpload {
    #[serde(deserialize_with = "required_string")]
    pub id: String,
    pub url: String,
    /// Only in tempUploads answers; the server's word wins over what we asked for.
    #[serde(default)]
    pub resumable: Option<bool>,
}

#[derive(Deserialize)]
struct TempUploadList {
    #[serde(default)]
    results: Vec<NewUpload>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

pub struct ApiClient {
    http: HttpClient,
    base: String,
    origin: Option<(String, u16)>,
    token: Secret,
    pacer: Pacer,
    requests: AtomicU64,
    retry: RetryPolicy,
    health: Arc<RemoteHealth>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish()
    }
}

impl ApiClient {
    pub fn new(
        http: HttpClient,
        api_url: &str,
        token: Secret,
        pacer: Pacer,
        retry: RetryPolicy,
        health: Arc<RemoteHealth>,
    ) -> Result<ApiClient, String> {
        let base = api_url.trim_end_matches('/').to_string();
        let origin = origin_of(&base)
            .ok_or_else(|| format!("Redivis api_url {base:?} is not an http(s) URL"))?;
        Ok(ApiClient {
            http,
            base,
            origin: Some(origin),
            token,
            pacer,
            requests: AtomicU64::new(0),
            retry,
            health,
        })
    }

    /// API requests sent so far (each retry counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The health of the Redivis API, which every request reports to.
    pub fn health(&self) -> &Arc<RemoteHealth> {
        &self.health
    }

    /// Whether `url` is served by the API's host:port, so the token may go there (protocol
    /// §11, B9).
    pub fn is_api_origin(&self, url: &str) -> bool {
        self.origin.is_some() && origin_of(url) == self.origin
    }

    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// `/tables/{ref}` with the reference percent-encoded (`:` as `%3A`).
    pub fn table_path(table: &str) -> String {
        format!("/tables/{}", utf8_percent_encode(table, REF_ESCAPE))
    }

    /// An absolute URL for an API path or an upload `uri` (absolute ones pass through).
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// Sends one API request, pacing and retrying as the module doc says.
    pub async fn send(
        &self,
        what: &str,
        idempotency: Idempotency,
        scope: &CallScope,
        url: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<Response, ApiError> {
        self.send_with(&self.retry, what, idempotency, scope, url, build)
            .await
    }

    /// [`ApiClient::send`] under another retry policy (a probe tries once).
    pub async fn send_with(
        &self,
        policy: &RetryPolicy,
        what: &str,
        idempotency: Idempotency,
        scope: &CallScope,
        url: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<Response, ApiError> {
        let mut attempts =
            Attempts::new(policy, scope, "Redivis API request").watching(&self.health);
        loop {
            let failure = match self.send_once(what, scope, url, build).await? {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let after = match failure.disposition {
                Disposition::Retry { after } => after,
                _ => return Err(failure),
            };
            if idempotency == Idempotency::Once && failure.maybe_processed {
                return Err(failure);
            }
            match attempts.pause(after, &failure.message).await {
                Ok(()) => {}
                Err(GaveUp::Shutdown) => return Err(shutdown_error()),
                Err(GaveUp::Spent(why)) => {
                    return Err(ApiError {
                        message: format!("{} ({why})", failure.message),
                        ..failure
                    });
                }
            }
        }
    }

    /// One try: waits for the pacer and sends. The outer `Err` is shutdown during the
    /// pacer's wait; the inner one a failed request.
    async fn send_once(
        &self,
        what: &str,
        scope: &CallScope,
        url: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<Result<Response, ApiError>, ApiError> {
        // During a shutdown a request goes if the pacer lets it go now (the post that ends
        // a transfer the stop lets finish), and none waits for the pacer's window.
        let permit = tokio::select! {
            biased;
            permit = self.pacer.acquire() => permit,
            _ = scope.stop.cancelled() => return Err(shutdown_error()),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = build(self.http.client());
        if self.is_api_origin(url) {
            request = request.bearer_auth(self.token.expose());
        }
        // The HTTP client reports the outcome to the remote's health.
        let response = match self.http.send(RequestKind::RedivisApi, request).await {
            Ok(response) => response,
            Err(err) => {
                drop(permit);
                let (kind, disposition) = crate::upload::classify::transport(&err);
                return Ok(Err(ApiError {
                    status: None,
                    kind,
                    disposition,
                    endpoint: self.endpoint(url, build),
                    message: format!("Redivis {what} failed: {err}"),
                    maybe_processed: !classify::never_sent(&err),
                    shutdown: false,
                }));
            }
        };
        let status = response.status().as_u16();
        let announced = rate_limit_headers(response.headers());
        let after = retry_after(response.headers());
        if status == 429 {
            permit.refused(after, announced);
        } else {
            permit.answered(announced);
        }
        if response.status().is_success() {
            return Ok(Ok(response));
        }
        let (kind, disposition) = crate::upload::classify::status(status, after);
        let body = response.text().await.unwrap_or_default();
        Ok(Err(ApiError {
            status: Some(status),
            kind,
            disposition,
            endpoint: self.endpoint(url, build),
            message: describe_status(what, status, &body),
            // 429 and 408 are answered before the request is processed.
            maybe_processed: !matches!(status, 408 | 429),
            shutdown: false,
        }))
    }

    /// The endpoint of the request `build` makes for `url` (only a failure needs it, so
    /// the request is built again rather than taken apart on every call); `None` when it
    /// cannot be built.
    fn endpoint(
        &self,
        url: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Option<Endpoint> {
        let request = build(self.http.client()).build().ok()?;
        let path = url.strip_prefix(&self.base).unwrap_or(url);
        Some(Endpoint::matching(
            request.method(),
            path,
            classify::API_ENDPOINTS,
        ))
    }

    pub(super) async fn send_json<T: DeserializeOwned>(
        &self,
        what: &str,
        idempotency: Idempotency,
        scope: &CallScope,
        url: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<T, ApiError> {
        let response = self.send(what, idempotency, scope, url, build).await?;
        let body = response.bytes().await.map_err(|err| {
            let message = format!("Redivis {what}: answer cut off: {}", describe(&err));
            ApiError {
                kind: ErrorKind::Transport,
                endpoint: self.endpoint(url, build),
                ..ApiError::unusable(message, true)
            }
        })?;
        serde_json::from_slice(&body).map_err(|err| ApiError {
            endpoint: self.endpoint(url, build),
            ..ApiError::unusable(format!("Redivis {what}: unexpected answer ({err})"), true)
        })
    }

    /// Legacy flow: `POST /tables/{ref}/resumableUpload?size=N` (empty body).
    pub async fn create_resumable_upload(
        &self,
        table: &str,
        size: u64,
        scope: &CallScope,
    ) -> Result<NewUpload, ApiError> {
        let url = self.absolute(&format!("{}/resumableUpload", Self::table_path(table)));
        let what = format!("resumableUpload for table {table}");
        self.send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
            http.post(&url)
                .query(&[("size", size)])
                .header(reqwest::header::CONTENT_LENGTH, 0)
        })
        .await
    }

    /// Current flow: `POST /tables/{ref}/tempUploads` for one file.
    pub async fn create_temp_upload(
        &self,
        table: &str,
        name: &str,
        size: u64,
        resumable: bool,
        scope: &CallScope,
    ) -> Result<NewUpload, ApiError> {
        let url = self.absolute(&format!("{}/tempUploads", Self::table_path(table)));
        let what = format!("tempUploads for table {table}");
        let body = serde_json::json!({
            "tempUploads": [{"size": size, "name": name, "resumable": resumable}]
        });
        let list: TempUploadList = self
            .send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.post(&url).json(&body)
            })
            .await?;
        list.results.into_iter().next().ok_or_else(|| {
            let message = format!("Redivis {what}: the answer lists no temp upload");
            ApiError {
                endpoint: Some(TEMP_UPLOADS_ENDPOINT),
                ..ApiError::unusable(message, false)
            }
        })
    }

    /// upload.post, JSON form: creates the upload from a finished session.
    /// `id_field` is `resumableUploadId` or `tempUploadId`; `options` are the parse options
    /// as API fields.
    pub async fn post_upload(
        &self,
        table: &str,
        name: &str,
        id_field: &str,
        id: &str,
        options: &ApiFields,
        scope: &CallScope,
    ) -> Result<UploadResource, ApiError> {
        let url = self.absolute(&format!("{}/uploads", Self::table_path(table)));
        let what = format!("upload.post of {name:?} to table {table}");
        let mut body = options.clone();
        body.insert("name".into(), name.into());
        body.insert(id_field.into(), id.into());
        let body = serde_json::Value::Object(body);
        self.send_json(&what, Idempotency::Once, scope, &url, &|http| {
            http.post(&url).json(&body)
        })
        .await
    }

    /// upload.post, multipart form: metadata (name and parse options) first, then the
    /// file's bytes (small files).
    pub async fn post_upload_inline(
        &self,
        table: &str,
        name: &str,
        data: Bytes,
        options: &ApiFields,
        scope: &CallScope,
    ) -> Result<UploadResource, ApiError> {
        let url = self.absolute(&format!("{}/uploads", Self::table_path(table)));
        let what = format!("upload.post of {name:?} to table {table}");
        let mut metadata = options.clone();
        metadata.insert("name".into(), name.into());
        let metadata = serde_json::to_vec(&metadata).expect("upload metadata serializes to JSON");
        // Only a hint in a part header: the name itself travels in the metadata JSON, and
        // a control character or quote would break the header (a name may hold a newline).
        let file_name: String = name
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .chars()
            .map(|c| {
                if c.is_control() || c == '"' || c == '\\' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        self.send_json(&what, Idempotency::Once, scope, &url, &|http| {
            let meta = reqwest::multipart::Part::bytes(metadata.clone())
                .file_name("metadata")
                .mime_str("application/json")
                .expect("application/json is a valid MIME type");
            let len = data.len() as u64;
            let body = reqwest::multipart::Part::stream_with_length(data.clone(), len)
                .file_name(file_name.clone());
            let form = reqwest::multipart::Form::new()
                .part("metadata", meta)
                .part("data", body);
            http.post(&url).multipart(form)
        })
        .await
    }

    /// `GET {upload.uri}`.
    pub async fn get_upload(
        &self,
        uri: &str,
        scope: &CallScope,
    ) -> Result<UploadResource, ApiError> {
        let url = self.absolute(uri);
        let what = format!("upload.get of {}", strip_query(uri));
        self.send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
            http.get(&url)
        })
        .await
    }

    /// `GET /tables/{ref}/uploads/{escaped name}`; `None` when there is no such upload.
    pub async fn find_upload_by_name(
        &self,
        table: &str,
        escaped: &str,
        scope: &CallScope,
    ) -> Result<Option<UploadResource>, ApiError> {
        let url = self.absolute(&format!(
            "{}/uploads/{}",
            Self::table_path(table),
            utf8_percent_encode(escaped, REF_ESCAPE)
        ));
        let what = format!("upload.get of {escaped:?} in table {table}");
        match self
            .send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.get(&url)
            })
            .await
        {
            Ok(upload) => Ok(Some(upload)),
            Err(err) if err.status == Some(404) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One page of `GET /tables/{ref}/uploads`.
    pub async fn list_uploads(
        &self,
        table: &str,
        max_results: u32,
        page_token: Option<&str>,
        scope: &CallScope,
    ) -> Result<UploadPage, ApiError> {
        let url = self.absolute(&format!("{}/uploads", Self::table_path(table)));
        let what = format!("upload list of table {table}");
        self.send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
            let request = http.get(&url).query(&[("maxResults", max_results)]);
            match page_token {
                Some(token) => request.query(&[("pageToken", token)]),
                None => request,
            }
        })
        .await
    }

    /// Walks every page of the table's uploads, handing each page to `visit`, until the
    /// last page or until `visit` returns `false`. Returns the number of pages read.
    pub async fn for_each_upload_page(
        &self,
        table: &str,
        scope: &CallScope,
        visit: &mut (dyn FnMut(&[UploadResource]) -> bool + Send),
    ) -> Result<usize, ApiError> {
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = self
                .list_uploads(table, LIST_PAGE_SIZE, token.as_deref(), scope)
                .await?;
            pages += 1;
            if !visit(&page.results) {
                return Ok(pages);
            }
            match page.next_page_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(pages),
            }
        }
    }

    /// `DELETE {upload.uri}`; an upload that is already gone counts as deleted.
    pub async fn delete_upload(&self, uri: &str, scope: &CallScope) -> Result<(), ApiError> {
        let url = self.absolute(uri);
        let what = format!("upload.delete of {}", strip_query(uri));
        match self
            .send(&what, Idempotency::Repeatable, scope, &url, &|http| {
                http.delete(&url)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.status == Some(404) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// `X-RateLimit-Limit` and `X-RateLimit-Remaining`, where present and numeric.
fn rate_limit_headers(headers: &HeaderMap) -> Announced {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Announced {
        limit: number("x-ratelimit-limit"),
        remaining: number("x-ratelimit-remaining"),
    }
}

/// `host:port` of an http(s) URL (default ports filled in).
pub fn origin_of(url: &str) -> Option<(String, u16)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    Some((
        parsed.host_str()?.to_ascii_lowercase(),
        parsed.port_or_known_default()?,
    ))
}

/// A URL without its query string or fragment (which may carry capabilities).
pub fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

fn describe_status(what: &str, status: u16, body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            error_description,
        }) if error.is_some() || error_description.is_some() => format!(
            "Redivis {what} failed: HTTP {status} {}: {}",
            error.as_deref().unwrap_or("error"),
            error_description.as_deref().unwrap_or("(no description)")
        ),
        _ => {
            let text: String = body.chars().take(200).collect();
            format!("Redivis {what} failed: HTTP {status}: {}", text.trim())
        }
    }
}

pub(super) fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a byte count"))),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{s:?} is not a byte count"))),
        Some(other) => Err(D::Error::custom(format!("{other} is not a byte count"))),
    }
}

pub(super) fn lenient_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Ok(Some(other.to_string())),
    }
}

fn required_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    lenient_string(d)?.ok_or_else(|| D::Error::custom("id is null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_references_encode_colons_and_keep_dots() {
        assert_eq!(
            ApiClient::table_path("owner.ds:next.tbl"),
            "/tables/owner.ds%3Anext.tbl"
        );
        assert_eq!(
            ApiClient::table_path("o.d:7br5:next.t:x1"),
            "/tables/o.d%3A7br5%3Anext.t%3Ax1"
        );
    }

    #[test]
    fn upload_resources_accept_numbers_as_strings_or_integers() {
        let a: UploadResource = serde_json::from_str(
            r#"{"uri":"/tables/x/uploads/1","id":1,"name":"a.csv","status":"completed","size":"42","hash":"abc","numRows":"3"}"#,
        )
        .unwrap();
        assert_eq!(a.size, Some(42));
        assert_eq!(a.id.as_deref(), Some("1"));
        let b: UploadResource =
            serde_json::from_str(r#"{"uri":"u","size":42,"status":null,"hash":null}"#).unwrap();
        assert_eq!(b.size, Some(42));
        assert_eq!(b.status(), "");
        assert!(!b.is_terminal());
    }

    #[test]
    fn origins_compare_host_and_port_only() {
        assert_eq!(
            origin_of("http://127.0.0.1:8787/api/v1"),
            Some(("127.0.0.1".into(), 8787))
        );
        assert_eq!(
            origin_of("https://Redivis.com/api/v1"),
            Some(("redivis.com".into(), 443))
        );
        assert_eq!(origin_of("ftp://x/"), None);
        assert_eq!(strip_query("http://h/s?upload_id=secret"), "http://h/s");
    }

    /// A client of a server on 127.0.0.1 that answers every request 200 with `body`.
    async fn client_of_a_server_answering(body: &'static str) -> ApiClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("the listener has an address");
        let router = axum::Router::new().fallback(move || async move { body });
        tokio::spawn(async move { axum::serve(listener, router).await });
        let http = HttpClient::plain("redivis");
        let base = format!("http://{addr}/api/v1");
        ApiClient::new(
            http,
            &base,
            Secret::new("t0ken"),
            Pacer::new(super::super::ratelimit::PacerConfig::default()),
            RetryPolicy::default(),
            Arc::new(RemoteHealth::new("redivis", &base)),
        )
        .expect("the API URL is valid")
    }

    #[tokio::test]
    async fn an_answer_that_does_not_parse_names_its_endpoint() {
        let api = client_of_a_server_answering(r#"{"kind": "resumableUpl"#).await;
        let scope = CallScope::default();
        let err = api
            .create_resumable_upload("owner.ds:next.tbl", 10, &scope)
            .await
            .expect_err("half a JSON object is no answer");
        assert_eq!(err.kind, ErrorKind::Unexpected);
        assert_eq!(err.status, None);
        assert_eq!(
            err.endpoint.map(|e| e.to_string()).as_deref(),
            Some("POST /tables/{table}/resumableUpload"),
            "{err:?}"
        );
        let err = api
            .get_dataset("owner.ds", &scope)
            .await
            .expect_err("half a JSON object is no answer");
        assert_eq!(
            err.endpoint.map(|e| e.to_string()).as_deref(),
            Some("GET /datasets/{dataset}"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_temp_uploads_answer_listing_no_upload_names_its_endpoint() {
        let api =
            client_of_a_server_answering(r#"{"kind": "tempUploadList", "results": []}"#).await;
        let err = api
            .create_temp_upload(
                "owner.ds:next.tbl",
                "a.csv",
                10,
                true,
                &CallScope::default(),
            )
            .await
            .expect_err("no temp upload in the answer");
        assert_eq!(err.kind, ErrorKind::Unexpected);
        assert_eq!(err.endpoint, Some(TEMP_UPLOADS_ENDPOINT), "{err:?}");
    }

    #[test]
    fn error_bodies_become_sentences() {
        let msg = describe_status(
            "upload.post",
            403,
            r#"{"error":"insufficient_scope","error_description":"needs data.edit"}"#,
        );
        assert_eq!(
            msg,
            "Redivis upload.post failed: HTTP 403 insufficient_scope: needs data.edit"
        );
        let msg = describe_status("upload.post", 502, "<html>bad gateway</html>");
        assert_eq!(
            msg,
            "Redivis upload.post failed: HTTP 502: <html>bad gateway</html>"
        );
    }
}
