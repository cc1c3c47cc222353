//! Why an upload attempt ended without success: what happened ([`ErrorKind`]) apart from
//! what to do about it ([`Disposition`]).
//!
//! The two answer different questions. The worker, the in-place retries and the backends'
//! resume logic act on the disposition alone; the kind is for people and dashboards: the
//! `kind` label of `upsync_upload_failures_total` and the `kind` of a failed job in
//! `upsync status --json`, so a rejected token, a rate limit and a 5xx storm no longer look
//! alike. A remote failure also carries the HTTP status, when there was an answer, and the
//! [`Endpoint`] it came from.
//!
//! Invariants:
//! 1. An error's `Display` is its human sentence alone (what `upsync status` shows as the
//!    reason); kind, status and endpoint are fields, never parsed back out of the text.
//! 2. An [`Endpoint`] holds only `'static` text: a method and a path template chosen from a
//!    backend's fixed list, so it cannot carry a session URL, a query string or a token.
//! 3. HTTP statuses are classified in one place, [`super::classify`].

use std::sync::Arc;
use std::time::Duration;

use super::kind::ErrorKind;
use crate::net::HttpError;
use crate::queue::StoreError;

/// What to do about a failed remote request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: send the same request again after a pause (`after` from `Retry-After`).
    Retry { after: Option<Duration> },
    /// Transient, but the same request sent again within seconds would meet the same
    /// refusal (a server certificate upsync does not trust, which someone must fix on the
    /// server or in `ca_file`): no in-place retry; the job waits in `retry-wait`.
    RetryLater,
    /// A chunk may have been partly taken: ask the server for its offset and continue.
    ResumeFromServer,
    /// The upload session is gone or unusable: start a new one from byte 0.
    RestartSession,
    /// Retrying cannot help: fail the job with the reason.
    Permanent,
}

impl Disposition {
    /// What a request that got no answer means, for a request that may simply be sent
    /// again: [`Disposition::Permanent`] when it could not even be built,
    /// [`Disposition::RetryLater`] when the server's certificate was refused,
    /// [`Disposition::Retry`] otherwise (connection refused or broken, a stall).
    pub fn of_transport(err: &HttpError) -> Disposition {
        if err.is_builder() {
            Disposition::Permanent
        } else if err.certificate_problem().is_some() {
            Disposition::RetryLater
        } else {
            Disposition::Retry { after: None }
        }
    }

    /// Whether a later attempt may succeed (the remote did not answer, or not yet usably):
    /// such a job goes to `retry-wait`, and a probe that ends so has not reached the remote.
    pub fn is_transient(self) -> bool {
        matches!(self, Disposition::Retry { .. } | Disposition::RetryLater)
    }
}

/// Which call of a remote failed: the HTTP method and the path template (invariant 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub method: &'static str,
    /// A path template such as `/tables/{table}/uploads`; `{…}` stands for one segment.
    pub path: &'static str,
}

impl Endpoint {
    /// The path template when a request's path fits none of a backend's templates.
    pub const UNLISTED: &'static str = "{unlisted}";

    /// The endpoint `method` `path` calls: the first of `templates` that `path` (without
    /// its query) fills in, segment by segment.
    pub fn matching(method: &reqwest::Method, path: &str, templates: &[&'static str]) -> Endpoint {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let template = templates
            .iter()
            .find(|template| fills(template, path))
            .copied()
            .unwrap_or(Endpoint::UNLISTED);
        Endpoint {
            method: static_method(method),
            path: template,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Whether `path` has the segments of `template`, a `{…}` segment standing for any one.
fn fills(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

fn static_method(method: &reqwest::Method) -> &'static str {
    use reqwest::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// Why an upload attempt ended without success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UploadError {
    /// The remote (or the way to it) failed; the disposition says what to do.
    #[error("{message}")]
    Remote {
        kind: ErrorKind,
        disposition: Disposition,
        /// The answer's HTTP status, when there was one.
        status: Option<u16>,
        /// The call that failed, when the failure came from one.
        endpoint: Option<Endpoint>,
        message: String,
    },
    /// The file disappeared before or during the upload: the job is dropped.
    #[error("file vanished: {0}")]
    Vanished(String),
    /// The file changed during the upload: start again with the new content.
    #[error("file changed during upload")]
    Changed,
    /// The file cannot be read (permissions, I/O error): fail with the reason.
    #[error("{0}")]
    Unreadable(String),
    /// Shared, so that one failure of a batch's transaction is every job's failure.
    #[error("state database: {0}")]
    Store(Arc<StoreError>),
    /// The remote cannot take the folder's files for a reason that is not an error (a
    /// Redivis dataset without an unreleased version): the file waits, queued, until the
    /// folder's remote check finds the remote ready again.
    #[error("{0}")]
    Waiting(String),
    /// Shutdown was requested; progress up to the last acknowledged chunk is saved.
    #[error("interrupted by shutdown")]
    Shutdown,
}

impl From<StoreError> for UploadError {
    fn from(err: StoreError) -> UploadError {
        UploadError::Store(Arc::new(err))
    }
}

impl UploadError {
    /// A remote failure of `kind`, not tied to one HTTP answer.
    pub fn remote(
        kind: ErrorKind,
        disposition: Disposition,
        message: impl Into<String>,
    ) -> UploadError {
        UploadError::Remote {
            kind,
            disposition,
            status: None,
            endpoint: None,
            message: message.into(),
        }
    }

    /// A failure of `kind` that retrying cannot help.
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> UploadError {
        UploadError::remote(kind, Disposition::Permanent, message)
    }

    /// A failure of `kind` that a later attempt may get past.
    pub fn retry(kind: ErrorKind, message: impl Into<String>) -> UploadError {
        UploadError::remote(kind, Disposition::Retry { after: None }, message)
    }

    /// `endpoint` answered with the failure `status` (classified by
    /// [`super::classify::status`]); `retry_after` from the answer's header.
    pub fn answered(
        endpoint: Endpoint,
        status: u16,
        retry_after: Option<Duration>,
        message: impl Into<String>,
    ) -> UploadError {
        let (kind, disposition) = super::classify::status(status, retry_after);
        UploadError::Remote {
            kind,
            disposition,
            status: Some(status),
            endpoint: Some(endpoint),
            message: message.into(),
        }
    }

    /// `endpoint` answered with the failure `status`, which the rules of its layer make
    /// permanent (kind from [`super::classify::status_kind`]).
    pub fn refused(endpoint: Endpoint, status: u16, message: impl Into<String>) -> UploadError {
        UploadError::Remote {
            kind: super::classify::status_kind(status),
            disposition: Disposition::Permanent,
            status: Some(status),
            endpoint: Some(endpoint),
            message: message.into(),
        }
    }

    /// `endpoint` gave no answer (classified by [`super::classify::transport`]).
    pub fn no_answer(endpoint: Endpoint, err: &HttpError, message: impl Into<String>) -> Self {
        let (kind, disposition) = super::classify::transport(err);
        UploadError::Remote {
            kind,
            disposition,
            status: None,
            endpoint: Some(endpoint),
            message: message.into(),
        }
    }

    /// The same failure, from `endpoint`.
    pub fn at(mut self, at: Endpoint) -> UploadError {
        if let UploadError::Remote { endpoint, .. } = &mut self {
            *endpoint = Some(at);
        }
        self
    }

    /// The same failure with its sentence rewritten by `reword` (to add context).
    pub fn reworded(mut self, reword: impl FnOnce(&str) -> String) -> UploadError {
        if let UploadError::Remote { message, .. } = &mut self {
            *message = reword(message);
        }
        self
    }

    /// What went wrong, for a failure; `None` for outcomes that are not failures of the
    /// upload (the file changed or vanished, shutdown, a remote not ready yet).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            UploadError::Remote { kind, .. } => Some(*kind),
            UploadError::Unreadable(_) => Some(ErrorKind::LocalIo),
            UploadError::Store(_) => Some(ErrorKind::StateDatabase),
            UploadError::Vanished(_)
            | UploadError::Changed
            | UploadError::Waiting(_)
            | UploadError::Shutdown => None,
        }
    }

    /// The disposition of a remote failure.
    pub fn disposition(&self) -> Option<Disposition> {
        match self {
            UploadError::Remote { disposition, .. } => Some(*disposition),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIVIS: &[&str] = &["/tables/{table}", "/tables/{table}/uploads"];

    #[test]
    fn an_endpoint_is_the_template_the_path_fills_in_without_its_query() {
        let endpoint = Endpoint::matching(
            &reqwest::Method::POST,
            "/tables/alice.data%3Anext.t/uploads?pageToken=secret",
            REDIVIS,
        );
        assert_eq!(endpoint.to_string(), "POST /tables/{table}/uploads");
        let table = Endpoint::matching(&reqwest::Method::GET, "/tables/x", REDIVIS);
        assert_eq!(table.path, "/tables/{table}");
    }

    #[test]
    fn a_path_of_no_template_is_unlisted_not_copied() {
        for path in [
            "/sessions/capability-123",
            "/tables//uploads",
            "/tables/x/uploads/y",
        ] {
            let endpoint = Endpoint::matching(&reqwest::Method::PUT, path, REDIVIS);
            assert_eq!(endpoint.path, Endpoint::UNLISTED, "{path}");
        }
    }

    #[test]
    fn the_display_of_a_remote_failure_is_its_sentence_alone() {
        let endpoint = Endpoint {
            method: "POST",
            path: "/upload/files",
        };
        let err = UploadError::answered(endpoint, 401, None, "KiFS /upload/files: HTTP 401");
        assert_eq!(err.to_string(), "KiFS /upload/files: HTTP 401");
        assert_eq!(err.kind(), Some(ErrorKind::Auth));
        assert_eq!(err.disposition(), Some(Disposition::Permanent));
        let reworded = err.reworded(|m| format!("cannot check: {m}"));
        assert!(matches!(
            &reworded,
            UploadError::Remote { kind: ErrorKind::Auth, status: Some(401), endpoint: Some(e), .. }
                if *e == endpoint
        ));
        assert_eq!(
            reworded.to_string(),
            "cannot check: KiFS /upload/files: HTTP 401"
        );
    }

    #[test]
    fn every_kind_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }
}
