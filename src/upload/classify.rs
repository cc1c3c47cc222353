//! The one place that decides what a failed HTTP answer or a request without an answer
//! means for both backends' APIs: what happened ([`ErrorKind`]) and what to do about it
//! ([`Disposition`]).
//!
//! Transient trouble (408, 429, 500, 502, 503, 504, a connection refused or broken) means
//! "send the same request again later"; any other failure status says the request itself is
//! wrong, and asking again will not change that (501 Not Implemented, 505 … included). The
//! layers with their own rules (Redivis' session URLs, KiFS' error answers) decide the
//! disposition in their backend's `classify` module and take the kind from here.

use std::time::Duration;

use super::{Disposition, ErrorKind};
use crate::net::HttpError;

/// What an API answer with the failure `status` means; `retry_after` from its header.
pub fn status(status: u16, retry_after: Option<Duration>) -> (ErrorKind, Disposition) {
    let retry = Disposition::Retry { after: retry_after };
    match status {
        408 => (ErrorKind::Transport, retry),
        429 => (ErrorKind::RateLimited, retry),
        500 | 502 | 503 | 504 => (ErrorKind::Server, retry),
        _ => (status_kind(status), Disposition::Permanent),
    }
}

/// What happened, for an answer with the failure `status`, whatever is done about it.
pub fn status_kind(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        404 | 410 => ErrorKind::NotFound,
        408 => ErrorKind::Transport,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::Rejected,
    }
}

/// What a request that got no answer means (see [`Disposition::of_transport`]).
pub fn transport(err: &HttpError) -> (ErrorKind, Disposition) {
    (ErrorKind::Transport, Disposition::of_transport(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_and_dispositions_as_in_the_table() {
        let after = Some(Duration::from_secs(7));
        let retry = Disposition::Retry { after };
        let permanent = Disposition::Permanent;
        let table = [
            (400, ErrorKind::Rejected, permanent),
            (401, ErrorKind::Auth, permanent),
            (403, ErrorKind::Auth, permanent),
            (404, ErrorKind::NotFound, permanent),
            (405, ErrorKind::Rejected, permanent),
            (408, ErrorKind::Transport, retry),
            (409, ErrorKind::Conflict, permanent),
            (410, ErrorKind::NotFound, permanent),
            (411, ErrorKind::Rejected, permanent),
            (413, ErrorKind::Rejected, permanent),
            (429, ErrorKind::RateLimited, retry),
            (500, ErrorKind::Server, retry),
            (501, ErrorKind::Server, permanent),
            (502, ErrorKind::Server, retry),
            (503, ErrorKind::Server, retry),
            (504, ErrorKind::Server, retry),
            (505, ErrorKind::Server, permanent),
        ];
        for (code, kind, disposition) in table {
            assert_eq!(status(code, after), (kind, disposition), "HTTP {code}");
            assert_eq!(status_kind(code), kind, "HTTP {code}");
        }
    }

    #[test]
    fn a_retry_after_is_kept_only_on_a_transient_answer() {
        let after = Some(Duration::from_secs(3));
        assert_eq!(status(503, after).1, Disposition::Retry { after });
        assert_eq!(status(503, None).1, Disposition::Retry { after: None });
        assert_eq!(status(403, after).1, Disposition::Permanent);
    }
}
