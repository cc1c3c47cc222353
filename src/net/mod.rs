//! How upsync talks to its remotes over real networks: one HTTP client per backend, built
//! from that backend's section, and one way of sending requests through it.
//!
//! - [`HttpClient::build`]: the usual web roots plus the certificates of `ca_file`; the
//!   `proxy` of the section, or else the environment's (`HTTPS_PROXY`, `HTTP_PROXY`,
//!   `ALL_PROXY`, lower-case too, and `NO_PROXY`, read when the client is built);
//!   `connect_timeout` for the TCP connection, the proxy tunnel and the TLS handshake.
//! - [`HttpClient::send`]: every request body goes through the shared bandwidth limit, and
//!   the request is abandoned after `idle_timeout` without a byte moving (see `idle`). There
//!   is no total timeout: a slow upload that keeps moving is never cut. Every outcome (an
//!   answer, a transport failure, a stall, an answer body that stalls) is reported to the
//!   remote's health when the client has one ([`HttpClient::reporting_to`]).
//! - `error`: what went wrong, in words, certificate problems named with the host.
//! - `bandwidth`, `schedule`: the shared limit and the timetable that sets it.

pub mod bandwidth;
mod error;
pub mod idle;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{ClientBuilder, RequestBuilder, Response};

use crate::config::NetConfig;
use crate::metrics::{RequestKind, observe_request};
use crate::upload::health::RemoteHealth;
pub use bandwidth::Bandwidth;
pub use error::{CertificateProblem, HttpError, describe};
use idle::{Activity, MeteredBody, WatchedBody};

/// How long an unused connection stays open for the next request.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// A backend's HTTP client; cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// The config section, for messages: "kifs", "redivis".
    section: &'static str,
    idle_timeout: Duration,
    bandwidth: Arc<Bandwidth>,
    /// Where outcomes are reported, when the backend keeps the health of its remote.
    health: Option<Arc<RemoteHealth>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("section", &self.section)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with the default network settings and no bandwidth limit, for unit tests.
    #[cfg(test)]
    pub(crate) fn plain(name: &'static str) -> HttpClient {
        HttpClient::build(
            name,
            &crate::config::NetConfig::default(),
            crate::net::Bandwidth::unlimited(),
            |builder| builder,
        )
        .expect("the client builds")
    }

    /// The client of one backend section (module doc); `adjust` adds what the backend
    /// itself needs (e.g. a redirect policy).
    pub fn build(
        section: &'static str,
        net: &NetConfig,
        bandwidth: Arc<Bandwidth>,
        adjust: impl FnOnce(ClientBuilder) -> ClientBuilder,
    ) -> Result<HttpClient, String> {
        let cannot = |what: String| format!("[{section}]: cannot set up the HTTP client: {what}");
        let mut builder = reqwest::Client::builder()
            .connect_timeout(net.connect_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(concat!("upsync/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &net.ca_file {
            let certificates = reqwest::Certificate::from_pem_bundle(&ca.pem).map_err(|err| {
                cannot(format!("ca_file {}: {}", ca.path.display(), describe(&err)))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(proxy) = &net.proxy {
            // An explicit proxy replaces the environment's for this backend.
            let proxy = reqwest::Proxy::all(proxy.expose().as_str())
                .map_err(|_| cannot(format!("proxy {proxy} is not usable")))?;
            builder = builder.proxy(proxy);
        }
        let client = adjust(builder)
            .build()
            .map_err(|err| cannot(describe(&err)))?;
        Ok(HttpClient {
            client,
            section,
            idle_timeout: net.idle_timeout,
            bandwidth,
            health: None,
        })
    }

    /// The same client, reporting the outcome of every request to `health`.
    pub fn reporting_to(mut self, health: Arc<RemoteHealth>) -> HttpClient {
        self.health = Some(health);
        self
    }

    /// The underlying client, to start requests (`client().post(url)`).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends `request`: its body paced and watched, the whole exchange abandoned when no
    /// byte moved for `idle_timeout`, its answer's body watched the same way; the duration
    /// is recorded under `kind`.
    pub async fn send(
        &self,
        kind: RequestKind,
        request: RequestBuilder,
    ) -> Result<Response, HttpError> {
        let mut request = request
            .build()
            .map_err(|err| HttpError::transport(err, String::new(), self.section))?;
        let origin = origin(request.url());
        let activity = Activity::new(self.idle_timeout);
        if let Some(body) = request.body_mut().take() {
            let metered =
                MeteredBody::new(body, Arc::clone(&self.bandwidth), Arc::clone(&activity));
            *request.body_mut() = Some(reqwest::Body::wrap(metered));
        }
        let started = std::time::Instant::now();
        let answer = tokio::select! {
            answer = self.client.execute(request) => {
                answer.map_err(|err| HttpError::transport(err, origin, self.section))
            }
            () = activity.stalled() => {
                Err(HttpError::stalled(self.idle_timeout, origin, self.section))
            }
        };
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        observe_request(kind, status, started.elapsed());
        self.report(kind, &answer);
        Ok(self.watch_answer(answer?))
    }

    /// Tells the remote's health how the request went: an answer (whose status may still
    /// be a transient failure), or none.
    fn report(&self, kind: RequestKind, answer: &Result<Response, HttpError>) {
        let Some(health) = &self.health else {
            return;
        };
        let what = match kind {
            RequestKind::KifsApi | RequestKind::RedivisApi => "an API request",
            RequestKind::RedivisSession => "an upload-session request",
        };
        match answer {
            Ok(response) => {
                let status = response.status();
                health.observe(Some(status.as_u16()), || {
                    format!("{what} answered HTTP {status}")
                });
            }
            Err(err) => health.failed(&format!("{what} failed: {err}")),
        }
    }

    /// The same answer, its body read under the idle timeout.
    fn watch_answer(&self, response: Response) -> Response {
        let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let mut watched = WatchedBody::new(body, self.idle_timeout);
        if let Some(health) = &self.health {
            watched = watched.reporting_to(Arc::clone(health));
        }
        Response::from(http::Response::from_parts(
            parts,
            reqwest::Body::wrap(watched),
        ))
    }
}

/// `host:port` of a URL, for messages.
fn origin(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => String::new(),
    }
}
