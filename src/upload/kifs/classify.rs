//! The one place that decides whether a KiFS failure is worth retrying.

use std::time::Duration;

use crate::upload::Disposition;

/// Messages after which the official clients fail over: the server is going away, not
/// rejecting the request (`docs/protocols/kifs.md` §1.6).
const TRANSIENT_MESSAGES: &[&str] = &[
    "System shutting down",
    "Unavailable: Draining HA queue",
    "Kinetica is exiting",
    "Kinetica is offline",
    "system-limited-fatal",
    "Connection refused",
    "Connection reset",
    "Query planner is not running",
];

/// An HTTP status other than 200/400 (whose bodies are response wrappers).
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Disposition {
    match status {
        408 | 429 | 500 | 502 | 503 | 504 => Disposition::Retry { after: retry_after },
        _ => Disposition::Permanent,
    }
}

/// An `ERROR` wrapper: permanent unless the message says the server is unavailable.
pub fn classify_error_message(message: &str) -> Disposition {
    if TRANSIENT_MESSAGES.iter().any(|m| message.contains(m)) {
        Disposition::Retry { after: None }
    } else {
        Disposition::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Disposition = Disposition::Retry { after: None };

    #[test]
    fn statuses_map_to_dispositions() {
        let table = [
            (401, Disposition::Permanent),
            (403, Disposition::Permanent),
            (404, Disposition::Permanent),
            (405, Disposition::Permanent),
            (408, RETRY),
            (429, RETRY),
            (500, RETRY),
            (502, RETRY),
            (503, RETRY),
            (504, RETRY),
        ];
        for (status, expected) in table {
            assert_eq!(classify_status(status, None), expected, "HTTP {status}");
        }
        let after = Some(Duration::from_secs(3));
        assert_eq!(classify_status(503, after), Disposition::Retry { after });
    }

    #[test]
    fn error_messages_map_to_dispositions() {
        let table = [
            ("Kinetica is offline", RETRY),
            ("System shutting down; try again", RETRY),
            ("Unavailable: Draining HA queue", RETRY),
            ("Directory 'x' does not exist", Disposition::Permanent),
            (
                "Invalid file name 'a_b': character '_' is not allowed",
                Disposition::Permanent,
            ),
            (
                "Part number 3 out of order (expected 2)",
                Disposition::Permanent,
            ),
        ];
        for (message, expected) in table {
            assert_eq!(classify_error_message(message), expected, "{message}");
        }
    }
}
