//! The one place that decides what a failed Redivis request means, per layer.
//!
//! Two layers answer differently:
//! - the **API** (`{api_url}/...`): as every backend's API ([`crate::upload::classify`]):
//!   transient trouble (408, 429, 5xx, connect or timeout) means "send the same request
//!   again later"; a 4xx says the request itself is wrong.
//! - the **session URL** (GCS-style resumable session, protocol §7): a chunk that failed
//!   for a transient reason may still have been partly persisted, so the answer is never
//!   "resend" but "ask the server where it stands" (`ResumeFromServer`); a session that is
//!   gone (404 expired, 410 killed, 499 cancelled) only heals with a new one from byte 0.
//!   A 400 on a session may be a bad chunk we sent; the caller restarts once, then gives up.

use crate::net::HttpError;
use crate::upload::Disposition;

/// The API endpoints upsync calls, relative to `api_url`, as a failure names them
/// ([`crate::upload::Endpoint`]). An upload's or a file's `uri` is one of these paths too.
pub const API_ENDPOINTS: &[&str] = &[
    "/tables/{table}",
    "/tables/{table}/uploads",
    "/tables/{table}/uploads/{upload}",
    "/tables/{table}/tempUploads",
    "/tables/{table}/resumableUpload",
    "/tables/{table}/rawFiles",
    "/rawFiles/{file}",
    "/datasets/{dataset}",
    "/datasets/{dataset}/versions",
];

/// The endpoint a failure on an upload session names: its URL is a capability, so never
/// more than this.
pub const SESSION_ENDPOINT: crate::upload::Endpoint = crate::upload::Endpoint {
    method: "PUT",
    path: "{upload session}",
};

/// What a session URL response status (not 200/201/308) means.
pub fn session_status(status: u16) -> Disposition {
    match status {
        408 | 429 | 500..=599 => Disposition::ResumeFromServer,
        404 | 410 | 499 => Disposition::RestartSession,
        // A rejected chunk (e.g. a size or offset the server did not expect): a new session
        // from byte 0 clears whatever state caused it; the caller allows that only once.
        400 => Disposition::RestartSession,
        _ => Disposition::Permanent,
    }
}

/// What a transport failure on a session URL means: the chunk may have been partly
/// persisted, so only the server knows the offset now. A refused certificate cannot have
/// let a byte through, and asking again at once would be refused the same way.
pub fn session_transport(err: &HttpError) -> Disposition {
    match Disposition::of_transport(err) {
        Disposition::Retry { .. } => Disposition::ResumeFromServer,
        other => other,
    }
}

/// A connect error happens before any byte of the request is sent: such a request can be
/// repeated even when it is not idempotent (upload.post).
pub fn never_sent(err: &HttpError) -> bool {
    err.is_connect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statuses_map_to_dispositions_as_in_the_table() {
        let table = [
            (500, Disposition::ResumeFromServer),
            (502, Disposition::ResumeFromServer),
            (503, Disposition::ResumeFromServer),
            (504, Disposition::ResumeFromServer),
            (408, Disposition::ResumeFromServer),
            (429, Disposition::ResumeFromServer),
            (404, Disposition::RestartSession),
            (410, Disposition::RestartSession),
            (499, Disposition::RestartSession),
            (400, Disposition::RestartSession),
            (401, Disposition::Permanent),
            (403, Disposition::Permanent),
            (411, Disposition::Permanent),
        ];
        for (status, expected) in table {
            assert_eq!(session_status(status), expected, "status {status}");
        }
    }

    #[tokio::test]
    async fn transport_errors_are_transient_on_both_layers() {
        // Port 1 on loopback refuses connections: a real connect error.
        let http = crate::net::HttpClient::plain("redivis");
        let request = http.client().get("http://127.0.0.1:1/");
        let err = http
            .send(crate::metrics::RequestKind::RedivisApi, request)
            .await
            .expect_err("nothing listens on port 1");
        assert!(never_sent(&err));
        assert_eq!(
            crate::upload::classify::transport(&err),
            (
                crate::upload::ErrorKind::Transport,
                Disposition::Retry { after: None }
            )
        );
        assert_eq!(session_transport(&err), Disposition::ResumeFromServer);
    }
}
