//! Requests to KiFS: encoding a request, the credentials, the retry policy for the calls
//! that may be repeated, and the one place where every answer and failure is classified.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::KifsBackend;
use super::body::StreamedRequest;
use super::classify::{self, classify_error_message};
use super::wire::{self, Record, ShowFilesRequest, ShowFilesResponse, Wrapper, WrapperError};
use crate::config::{KifsAuth, KifsEncoding};
use crate::metrics::RequestKind;
use crate::net::describe;
use crate::upload::backoff::retry_after;
use crate::upload::retry::{self, CallScope};
use crate::upload::{Endpoint, ErrorKind, UploadError};

impl KifsBackend {
    pub(super) async fn show_file(
        &self,
        target: &str,
        scope: &CallScope,
    ) -> Result<ShowFilesResponse, UploadError> {
        let request = ShowFilesRequest {
            paths: vec![target.to_string()],
            options: BTreeMap::new(),
        };
        self.call_with_retries("/show/files", &request, scope).await
    }

    pub(super) fn data_options(&self) -> BTreeMap<String, String> {
        match self.encoding {
            KifsEncoding::Binary => BTreeMap::new(),
            KifsEncoding::Json => BTreeMap::from([("file_encoding".into(), "base64".into())]),
        }
    }

    /// An idempotent call, retried in place on transient failures.
    pub(super) async fn call_with_retries<Req: Record, Resp: Record>(
        &self,
        endpoint: &str,
        request: &Req,
        scope: &CallScope,
    ) -> Result<Resp, UploadError> {
        self.with_retries(endpoint, scope, || self.call(endpoint, request))
            .await
    }

    /// Runs `attempt` under the backend's retry policy (see [`retry::retry`]).
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        endpoint: &str,
        scope: &CallScope,
        attempt: F,
    ) -> Result<T, UploadError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, UploadError>>,
    {
        let step = format!("KiFS {endpoint}");
        retry::retry(&self.retry, scope, Some(&self.health), &step, attempt).await
    }

    /// Sends one request held in memory.
    pub(super) async fn call<Req: Record, Resp: Record>(
        &self,
        endpoint: &str,
        request: &Req,
    ) -> Result<Resp, UploadError> {
        let segments = request.encode(self.encoding);
        let length: usize = segments.iter().map(Bytes::len).sum();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(
            segments.into_iter().map(Ok::<Bytes, std::io::Error>),
        ));
        self.send(endpoint, body, length as u64).await
    }

    /// Sends one request whose data streams from files; a local failure while reading them
    /// (file changed, vanished, unreadable) is reported as such, not as a transport error.
    pub(super) async fn call_streamed<Resp: Record>(
        &self,
        endpoint: &str,
        request: &StreamedRequest,
    ) -> Result<Resp, UploadError> {
        let sent = self.send(endpoint, request.body(), request.len()).await;
        match request.failure() {
            Some((_, local)) if sent.is_err() => Err(local),
            _ => sent,
        }
    }

    /// Sends one body and decodes the wrapper; every failure is classified here.
    pub(super) async fn send<Resp: Record>(
        &self,
        endpoint: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<Resp, UploadError> {
        let content_type = wire::content_type(self.encoding);
        let mut builder = self
            .http
            .client()
            .post(format!("{}{endpoint}", self.url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::ACCEPT, content_type)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        builder = match &self.auth {
            KifsAuth::None => builder,
            KifsAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password.expose()))
            }
            KifsAuth::Bearer { token } => builder.bearer_auth(token.expose()),
        };
        let call = Endpoint::matching(&reqwest::Method::POST, endpoint, classify::ENDPOINTS);
        // A refused certificate is transient (see `net`) but not retried in place: the
        // message says what to fix, the job backs off meanwhile.
        let response = self
            .http
            .send(RequestKind::KifsApi, builder)
            .await
            .map_err(|err| UploadError::no_answer(call, &err, format!("KiFS {endpoint}: {err}")))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|err| {
            let message = format!(
                "KiFS {endpoint}: reading the answer failed: {}",
                describe(&err)
            );
            UploadError::retry(ErrorKind::Transport, message).at(call)
        })?;
        if status.as_u16() != 200 && status.as_u16() != 400 {
            let hint = status_hint(status.as_u16());
            let message = format!("KiFS {endpoint}: HTTP {status}{hint}");
            return Err(UploadError::answered(call, status.as_u16(), after, message));
        }
        let undecodable = |why: String| UploadError::retry(ErrorKind::Unexpected, why).at(call);
        let wrapper = Wrapper::decode(self.encoding, &body).map_err(|err| {
            undecodable(format!(
                "KiFS {endpoint}: undecodable answer (HTTP {status}): {err}"
            ))
        })?;
        wrapper
            .into_inner::<Resp>(self.encoding)
            .map_err(|err| match err {
                WrapperError::Remote(message) => {
                    let (kind, disposition) = classify_error_message(&message);
                    UploadError::Remote {
                        kind,
                        disposition,
                        status: Some(status.as_u16()),
                        endpoint: Some(call),
                        message,
                    }
                }
                WrapperError::Malformed(err) => {
                    undecodable(format!("KiFS {endpoint}: undecodable answer: {err}"))
                }
            })
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => {
            " (the server rejected the credentials: check [kifs] username/password or token)"
        }
        404 => " (endpoint not found: check [kifs] url)",
        _ => "",
    }
}
