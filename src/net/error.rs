//! Why a request got no answer, as one sentence without the URL (which may carry
//! capabilities): a stall, a transport failure, or a certificate the server presented and
//! upsync would not trust, named with the host, what failed and what to change.
//!
//! Certificate failures are transient for the backends: an expired or replaced server
//! certificate is usually fixed on the server, and a new `ca_file` comes with a reload, so
//! the jobs wait in `retry-wait` (backing off up to an hour) instead of failing for good; the
//! message in `upsync status` says what to do.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use tokio_rustls::rustls;

/// A request that ended without an answer.
#[derive(Debug)]
pub struct HttpError {
    failure: Failure,
    /// `host:port` of the request.
    origin: String,
    /// The config section of the backend ("kifs", "redivis"), for hints.
    section: &'static str,
}

#[derive(Debug)]
enum Failure {
    Transport(reqwest::Error),
    /// Nothing moved for this long.
    Stalled(Duration),
}

/// What was wrong with a server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateProblem {
    UnknownIssuer,
    NameMismatch,
    Expired,
    NotYetValid,
    Other,
}

impl HttpError {
    pub(crate) fn transport(err: reqwest::Error, origin: String, section: &'static str) -> Self {
        HttpError {
            failure: Failure::Transport(err),
            origin,
            section,
        }
    }

    pub(crate) fn stalled(idle: Duration, origin: String, section: &'static str) -> Self {
        HttpError {
            failure: Failure::Stalled(idle),
            origin,
            section,
        }
    }

    /// The request could not even be built: retrying cannot help.
    pub fn is_builder(&self) -> bool {
        matches!(&self.failure, Failure::Transport(err) if err.is_builder())
    }

    /// No connection was made, so no byte of the request reached the server.
    pub fn is_connect(&self) -> bool {
        matches!(&self.failure, Failure::Transport(err) if err.is_connect())
    }

    /// The request stalled (idle timeout) or timed out connecting.
    pub fn is_timeout(&self) -> bool {
        match &self.failure {
            Failure::Stalled(_) => true,
            Failure::Transport(err) => err.is_timeout(),
        }
    }

    pub fn is_stalled(&self) -> bool {
        matches!(self.failure, Failure::Stalled(_))
    }

    /// The server's certificate was refused, and why.
    pub fn certificate_problem(&self) -> Option<CertificateProblem> {
        let Failure::Transport(err) = &self.failure else {
            return None;
        };
        let rustls::Error::InvalidCertificate(cert) = rustls_error(err)? else {
            return None;
        };
        use rustls::CertificateError as E;
        Some(match cert {
            E::UnknownIssuer => CertificateProblem::UnknownIssuer,
            E::NotValidForName | E::NotValidForNameContext { .. } => {
                CertificateProblem::NameMismatch
            }
            E::Expired | E::ExpiredContext { .. } => CertificateProblem::Expired,
            E::NotValidYet | E::NotValidYetContext { .. } => CertificateProblem::NotYetValid,
            _ => CertificateProblem::Other,
        })
    }

    fn describe_certificate(&self, problem: CertificateProblem) -> String {
        let (origin, section) = (&self.origin, self.section);
        let host = origin.rsplit_once(':').map_or(origin.as_str(), |(h, _)| h);
        match problem {
            CertificateProblem::UnknownIssuer => format!(
                "TLS to {origin}: the server's certificate has an unknown issuer (it is not \
                 signed by a CA upsync trusts); if your organisation runs its own CA, give its \
                 certificate (PEM) in [{section}] ca_file"
            ),
            CertificateProblem::NameMismatch => format!(
                "TLS to {origin}: the server's certificate is not valid for the name \"{host}\" \
                 (name mismatch); use a host name the certificate names in the [{section}] URL, \
                 or have the certificate reissued ([{section}] ca_file cannot change names)"
            ),
            CertificateProblem::Expired => format!(
                "TLS to {origin}: the server's certificate has expired; it must be renewed on \
                 the server ([{section}] ca_file cannot extend it)"
            ),
            CertificateProblem::NotYetValid => format!(
                "TLS to {origin}: the server's certificate is not valid yet; check this \
                 machine's clock"
            ),
            CertificateProblem::Other => format!(
                "TLS to {origin}: the server's certificate was refused ({}); [{section}] \
                 ca_file adds trusted CAs",
                self.causes()
            ),
        }
    }

    fn causes(&self) -> String {
        match &self.failure {
            Failure::Transport(err) => describe(err),
            Failure::Stalled(idle) => super::idle::stalled_error(*idle).to_string(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.certificate_problem() {
            Some(problem) => f.write_str(&self.describe_certificate(problem)),
            None => f.write_str(&self.causes()),
        }
    }
}

impl StdError for HttpError {}

/// A transport error as a sentence: what kind of failure, then its causes, never the URL
/// that reqwest itself would print.
pub fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() {
        "connection broke while sending the body"
    } else if err.is_decode() {
        "connection broke while reading the answer"
    } else {
        "request failed"
    };
    let mut causes: Vec<String> = Vec::new();
    let mut source = StdError::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers repeat their inner error's text; say it once.
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", causes.join(": "))
    }
}

/// The rustls error somewhere in the chain. An `io::Error` hides the error it wraps from
/// `source()` (it returns that error's own source), and TLS connectors wrap one I/O error in
/// another, so an I/O error's link is the error it wraps.
fn rustls_error(err: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
    }
    None
}
