//! The one place that decides what a failed Redivis request means, per layer.
//!
//! Two layers answer differently:
//! - the **API** (`{api_url}/...`): transient trouble (408, 429, 5xx, connect or timeout)
//!   means "send the same request again later"; a 4xx says the request itself is wrong.
//! - the **session URL** (GCS-style resumable session, protocol §7): a chunk that failed
//!   for a transient reason may still have been partly persisted, so the answer is never
//!   "resend" but "ask the server where it stands" (`ResumeFromServer`); a session that is
//!   gone (404 expired, 410 killed, 499 cancelled) only heals with a new one from byte 0.
//!   A 400 on a session may be a bad chunk we sent; the caller restarts once, then gives up.

use std::time::Duration;

use crate::net::HttpError;
use crate::upload::Disposition;

/// What an API (not session) response status means.
pub fn api_status(status: u16, retry_after: Option<Duration>) -> Disposition {
    match status {
        408 | 429 | 500 | 502 | 503 | 504 => Disposition::Retry { after: retry_after },
        // Other 5xx (501 Not Implemented, 505 ...) will not change by asking again.
        _ => Disposition::Permanent,
    }
}

/// What a transport failure on an API call means: the remote might be back soon, unless
/// the request could not even be built. A refused certificate is transient too (see
/// `net`), but not retried in place: the jobs back off while someone fixes the server or
/// `ca_file`.
pub fn api_transport(err: &HttpError) -> Disposition {
    Disposition::of_transport(err)
}

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
    fn api_statuses_map_to_dispositions_as_in_the_table() {
        let after = Some(Duration::from_secs(7));
        let retry = Disposition::Retry { after };
        let table = [
            (408, retry),
            (429, retry),
            (500, retry),
            (502, retry),
            (503, retry),
            (504, retry),
            (400, Disposition::Permanent),
            (401, Disposition::Permanent),
            (403, Disposition::Permanent),
            (404, Disposition::Permanent),
            (409, Disposition::Permanent),
            (501, Disposition::Permanent),
        ];
        for (status, expected) in table {
            assert_eq!(api_status(status, after), expected, "status {status}");
        }
    }

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
        let http = crate::net::HttpClient::build(
            "redivis",
            &crate::config::NetConfig::default(),
            crate::net::Bandwidth::unlimited(),
            |builder| builder,
        )
        .expect("the client builds");
        let request = http.client().get("http://127.0.0.1:1/");
        let err = http
            .send(crate::metrics::RequestKind::RedivisApi, request)
            .await
            .expect_err("nothing listens on port 1");
        assert!(never_sent(&err));
        assert_eq!(api_transport(&err), Disposition::Retry { after: None });
        assert_eq!(session_transport(&err), Disposition::ResumeFromServer);
    }
}
