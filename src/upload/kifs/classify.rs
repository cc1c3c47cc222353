//! The one place that decides what a KiFS failure means, beyond its HTTP status (which
//! [`crate::upload::classify`] decides for both backends): the `ERROR` answers.

use crate::upload::{Disposition, ErrorKind};

/// The endpoints upsync calls, as a failure names them ([`crate::upload::Endpoint`]).
pub const ENDPOINTS: &[&str] = &[
    "/show/directories",
    "/create/directory",
    "/show/files",
    "/delete/files",
    "/upload/files",
];

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

/// An `ERROR` wrapper: permanent unless the message says the server is unavailable. KiFS
/// says what went wrong only in words, so the kind comes from them too.
pub fn classify_error_message(message: &str) -> (ErrorKind, Disposition) {
    if TRANSIENT_MESSAGES.iter().any(|m| message.contains(m)) {
        (ErrorKind::Server, Disposition::Retry { after: None })
    } else if message.contains(" permission on ") {
        (ErrorKind::Auth, Disposition::Permanent)
    } else if message.contains(" does not exist") {
        (ErrorKind::NotFound, Disposition::Permanent)
    } else if message.contains(" already exists") {
        (ErrorKind::Conflict, Disposition::Permanent)
    } else {
        (ErrorKind::Rejected, Disposition::Permanent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Disposition = Disposition::Retry { after: None };
    const PERMANENT: Disposition = Disposition::Permanent;

    #[test]
    fn error_messages_map_to_kinds_and_dispositions() {
        let table = [
            ("Kinetica is offline", ErrorKind::Server, RETRY),
            ("System shutting down; try again", ErrorKind::Server, RETRY),
            ("Unavailable: Draining HA queue", ErrorKind::Server, RETRY),
            (
                "Directory 'x' does not exist",
                ErrorKind::NotFound,
                PERMANENT,
            ),
            (
                "User 'u' does not have write permission on directory 'x'",
                ErrorKind::Auth,
                PERMANENT,
            ),
            (
                "Directory 'x' already exists",
                ErrorKind::Conflict,
                PERMANENT,
            ),
            (
                "Invalid file name 'a_b': character '_' is not allowed",
                ErrorKind::Rejected,
                PERMANENT,
            ),
            (
                "Part number 3 out of order (expected 2)",
                ErrorKind::Rejected,
                PERMANENT,
            ),
        ];
        for (message, kind, disposition) in table {
            assert_eq!(
                classify_error_message(message),
                (kind, disposition),
                "{message}"
            );
        }
    }
}
