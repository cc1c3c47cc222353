//! The keys that say how upsync reaches its remotes: per backend `ca_file`, `proxy`,
//! `connect_timeout` and `idle_timeout` ([`NetConfig`]), and at the top level
//! `bandwidth_limit` or `bandwidth_schedule` ([`BandwidthConfig`]).
//!
//! A CA file is read like a secret file (relative to the config, else among the systemd
//! credentials) and must hold at least one PEM certificate; like a secret file, it is only
//! checked to be named, not read, by the commands that reach no remote. A proxy URL may
//! carry a user and password: [`ProxyUrl`] never shows them, nor does any message that
//! shows a URL as written ([`redact_text`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::checker::Checker;
use super::secret::{FileKind, check_file_named, read_key_file};
use super::units::{HumanDuration, parse_rate};
use crate::net::schedule::Schedule;

/// Defaults that suit a WAN: a handshake across continents, a server busy for a while.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Shorter timeouts would cut healthy requests on a busy link.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How one backend reaches its remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Certificates trusted in addition to the usual web roots; `None` also when the
    /// config was loaded without reading secrets ([`super::LoadOptions::read_secrets`]).
    pub ca_file: Option<CaFile>,
    /// Every request of the backend goes through it; `None`: `HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY` and `NO_PROXY` from the environment.
    pub proxy: Option<ProxyUrl>,
    /// TCP connection plus TLS handshake (and the proxy's tunnel).
    pub connect_timeout: Duration,
    /// A request during which no byte moved for this long is abandoned as transient.
    pub idle_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            ca_file: None,
            proxy: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A PEM file of one or more certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    /// Where it was read (the credential path when found among systemd credentials).
    pub path: PathBuf,
    pub pem: Vec<u8>,
    pub certificates: usize,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish()
    }
}

/// A proxy URL whose user and password show as `***` in Debug, Display and messages.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(reqwest::Url);

impl ProxyUrl {
    /// The URL with its credentials, for the one place that hands it to the HTTP client.
    pub fn expose(&self) -> &reqwest::Url {
        &self.0
    }

    /// The URL without credentials, for messages.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// `url` with any user and password replaced by `***`.
fn redact(url: &reqwest::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    let _ = shown.set_username("***");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// `text`, which may not parse as a URL, with anything before the last `@` after the scheme
/// replaced by `***`. Written by hand because the URL parser cannot say where the user and
/// password of a text it refuses end; the last `@` masks too much rather than too little
/// (a password may hold `/`, `?` or `#`, a base URL's path hardly ever holds `@`).
pub(crate) fn redact_text(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    match text[start..].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The upload bandwidth: a fixed limit, a timetable, or neither (unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthConfig {
    /// Bytes per second (`bandwidth_limit`).
    pub limit: Option<u64>,
    pub schedule: Option<Schedule>,
}

/// The network keys of one backend section, as written.
pub(crate) struct RawNetKeys<'a> {
    /// "kifs" or "redivis", for messages.
    pub table: &'a str,
    pub ca_file: Option<&'a Spanned<String>>,
    pub proxy: Option<&'a Spanned<String>>,
    pub connect_timeout: Option<&'a Spanned<HumanDuration>>,
    pub idle_timeout: Option<&'a Spanned<HumanDuration>>,
}

const CA_FILE: FileKind = FileKind {
    name: "CA file",
    holding: "CA certificates (PEM)",
};

/// Checks and reads the network keys of a backend section.
pub(crate) fn net_config(ck: &mut Checker<'_>, keys: &RawNetKeys<'_>) -> NetConfig {
    let key = |name: &str| format!("{}.{name}", keys.table);
    let timeout = |ck: &mut Checker<'_>, value: Option<&Spanned<HumanDuration>>, name, default| {
        let Some(value) = value else {
            return default;
        };
        let duration = value.get_ref().0;
        if duration < MIN_TIMEOUT {
            ck.error(
                &value.span(),
                &key(name),
                format!(
                    "expected at least \"1s\", found \"{}\"",
                    humantime::format_duration(duration)
                ),
            );
        }
        duration
    };
    NetConfig {
        ca_file: keys
            .ca_file
            .and_then(|file| ca_file(ck, &key("ca_file"), file)),
        proxy: keys.proxy.and_then(|url| proxy(ck, &key("proxy"), url)),
        connect_timeout: timeout(
            ck,
            keys.connect_timeout,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        ),
        idle_timeout: timeout(ck, keys.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
    }
}

fn ca_file(ck: &mut Checker<'_>, key: &str, file: &Spanned<String>) -> Option<CaFile> {
    if !ck.read_secrets {
        // No HTTP client is built, and the file may exist only inside the service.
        if let Err(message) = check_file_named(ck.src, key, file, &CA_FILE) {
            ck.errors.push(message);
        }
        return None;
    }
    let read = read_key_file(ck.src, key, file, &ck.base, ck.env, &CA_FILE);
    let (path, pem) = match read {
        Ok(found) => found,
        Err(message) => {
            ck.errors.push(message);
            return None;
        }
    };
    let certificates = match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(list) if !list.is_empty() => list.len(),
        Ok(_) | Err(_) => {
            ck.error(
                &file.span(),
                key,
                format!(
                    "the CA file \"{}\" holds no PEM certificate (expected one or more \
                     \"-----BEGIN CERTIFICATE-----\" blocks)",
                    path.display()
                ),
            );
            return None;
        }
    };
    Some(CaFile {
        path,
        pem,
        certificates,
    })
}

fn proxy(ck: &mut Checker<'_>, key: &str, value: &Spanned<String>) -> Option<ProxyUrl> {
    const SHAPE: &str = "expected a proxy URL like \"http://proxy.example.org:3128\"";
    let text = value.get_ref().trim();
    let url = match reqwest::Url::parse(text) {
        Ok(url) => url,
        Err(_) => {
            // The text may hold a password: show only that it is not a URL.
            ck.error(&value.span(), key, format!("{SHAPE}, found something else"));
            return None;
        }
    };
    // Only an http(s) URL's credentials are known to sit in its user and password.
    let problem = if !matches!(url.scheme(), "http" | "https") {
        Some(format!(
            "found a URL with the scheme \"{}\" (only http and https proxies are supported)",
            url.scheme()
        ))
    } else if url.host_str().is_none_or(str::is_empty) {
        Some(format!("found \"{}\", which names no host", redact(&url)))
    } else if url.path() != "/" || url.query().is_some() {
        Some(format!(
            "found \"{}\" (a proxy URL has no path or query)",
            redact(&url)
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        ck.error(&value.span(), key, format!("{SHAPE}, {problem}"));
        return None;
    }
    Some(ProxyUrl(url))
}

/// `bandwidth_limit` or `bandwidth_schedule` (not both).
pub(crate) fn bandwidth(
    ck: &mut Checker<'_>,
    limit: Option<&Spanned<String>>,
    schedule: Option<&Spanned<Vec<Spanned<String>>>>,
) -> BandwidthConfig {
    if let (Some(limit), Some(schedule)) = (limit, schedule) {
        let line = ck.src.line_of(schedule.span().start);
        ck.error(
            &limit.span(),
            "bandwidth_limit",
            format!(
                "give bandwidth_limit or bandwidth_schedule, not both (the schedule's last \
                 entry is the limit outside its windows; bandwidth_schedule is on line {line})"
            ),
        );
        return BandwidthConfig::default();
    }
    let limit = limit.and_then(|value| match parse_rate(value.get_ref()) {
        Ok(rate) => rate,
        Err(message) => {
            ck.error(&value.span(), "bandwidth_limit", message);
            None
        }
    });
    let schedule = schedule.and_then(|list| {
        let entries = list.get_ref();
        let texts: Vec<&str> = entries.iter().map(|e| e.get_ref().as_str()).collect();
        match Schedule::parse(&texts) {
            Ok(schedule) => Some(schedule),
            Err(err) => {
                let span = entries.get(err.index).map_or(list.span(), Spanned::span);
                let key = format!("bandwidth_schedule[{}]", err.index);
                ck.error(&span, &key, err.message);
                None
            }
        }
    });
    BandwidthConfig { limit, schedule }
}
