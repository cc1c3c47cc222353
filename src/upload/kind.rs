//! The kinds of failure an upload can end in, as people and dashboards see them (the
//! `kind` label of `upsync_upload_failures_total`, the `kind` of a failed job in `upsync
//! status --json`). A vocabulary on its own, below both the upload code that decides a
//! failure's kind and the metrics that count it.

/// What went wrong, whatever is done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The remote refused the credentials or the permission (401, 403, a KiFS directory
    /// without `directory_write`).
    Auth,
    /// The table, directory, upload or endpoint does not exist (404, 410).
    NotFound,
    /// The remote asked upsync to slow down (429).
    RateLimited,
    /// The remote failed to serve the request (5xx, an upload session it lost, a server
    /// that says it is going away).
    Server,
    /// The request did not get through: no answer (refused, reset, stalled, a server
    /// certificate refused) or 408.
    Transport,
    /// The remote refused the request or the file itself (other 4xx, a KiFS error answer,
    /// an import that failed), or upsync refused to send what the remote would refuse (a
    /// name it cannot hold).
    Rejected,
    /// The name is held by another file or upload (409).
    Conflict,
    /// The remote answered, but not usably: an undecodable answer, or one whose size or
    /// checksum does not match what was sent.
    Unexpected,
    /// The folder's configuration does not fit the backend (a target of another backend).
    Config,
    /// The local file could not be read.
    LocalIo,
    /// The state database failed.
    StateDatabase,
}

impl ErrorKind {
    /// Every kind, in the order of the docs.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Auth,
        ErrorKind::NotFound,
        ErrorKind::RateLimited,
        ErrorKind::Server,
        ErrorKind::Transport,
        ErrorKind::Rejected,
        ErrorKind::Conflict,
        ErrorKind::Unexpected,
        ErrorKind::Config,
        ErrorKind::LocalIo,
        ErrorKind::StateDatabase,
    ];

    /// The kind as the metrics label and `status --json` spell it.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Transport => "transport",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unexpected => "unexpected",
            ErrorKind::Config => "config",
            ErrorKind::LocalIo => "local_io",
            ErrorKind::StateDatabase => "state_database",
        }
    }

    /// Whether the kind says the remote (or the way to it) failed, rather than this host.
    pub fn is_remote(self) -> bool {
        !matches!(
            self,
            ErrorKind::Config | ErrorKind::LocalIo | ErrorKind::StateDatabase
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
