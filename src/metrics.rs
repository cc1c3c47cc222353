//! Prometheus metrics: the figures an administrator alerts on, and the optional HTTP
//! endpoint (`metrics_listen`) that serves them at `/metrics`.
//!
//! Counters (files, bytes, failures, retries, upload durations) are updated by the workers as
//! uploads end. Queue figures (jobs by state, oldest pending age, last success, in-flight
//! uploads) live in the state database and the daemon's memory, so they are gauges refreshed
//! from there at every scrape, through the `refresh` callback given to [`serve`].
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `upsync_uploaded_files_total` | counter | folder, backend |
//! | `upsync_uploaded_bytes_total` | counter | folder, backend |
//! | `upsync_upload_failures_total` | counter | folder, backend, class, kind |
//! | `upsync_upload_retries_total` | counter | folder, backend |
//! | `upsync_upload_duration_seconds` | histogram | backend |
//! | `upsync_import_duration_seconds` | histogram | backend |
//! | `upsync_request_duration_seconds` | histogram | backend, kind, outcome |
//! | `upsync_deleted_files_total` | counter | folder, backend |
//! | `upsync_queue_jobs` | gauge | folder, state |
//! | `upsync_deletions_held` | gauge | folder |
//! | `upsync_oldest_pending_age_seconds` | gauge | folder |
//! | `upsync_last_success_timestamp_seconds` | gauge | folder |
//! | `upsync_in_flight_uploads` | gauge | folder, backend |
//! | `upsync_in_flight_acknowledged_bytes`, `upsync_in_flight_size_bytes` | gauge | folder, backend |
//! | `upsync_bandwidth_limit_bytes_per_second` | gauge | (none; 0 = unlimited) |
//! | `upsync_folder_remote_check_state` | gauge | folder, state |
//! | `upsync_remote_up` | gauge | backend, remote |
//! | `upsync_build_info` | gauge (always 1) | version |
//! | `process_*` | (`process` submodule) | — |
//!
//! Names follow the Prometheus naming guide: the unit ends the name, `_total` only on
//! counters. Every labelled counter and histogram exists from the first scrape, at 0, for
//! each configured folder and its backend (and every failure class and request kind and
//! outcome of that backend), so an alert on a rate or an increase reads 0, not "no data";
//! the scrape's refresh does it, so folders added by a reload get theirs too.
//!
//! `upsync_folder_remote_check_state` is 1 for the state the folder's remote check is in
//! (`checking`, `ready`, `refused`, `waiting`) and 0 for the others; `upsync_remote_up` is
//! 1 while a remote answers and 0 while it is down (its folders' files wait for it), and 0
//! too until its first answer since the start: a remote nothing has heard from yet is not
//! shown as up.
//!
//! `upsync_request_duration_seconds` times each HTTP request to a remote, from sending it to
//! its answer's headers (a chunk PUT includes sending its body): `kind` is `api` (KiFS
//! endpoints, Redivis API calls) or `session` (Redivis session-URL requests), `outcome` the
//! answer's status class (`2xx` … `5xx`) or `error` when no answer came (refused, reset,
//! timed out). The HTTP clients are built with their backends, before and apart from the
//! daemon's metrics, and a process runs one daemon: so the request timings are kept in one
//! process-wide histogram family ([`observe_request`]) that every [`Metrics`] exports.
//!
//! `class` is one of `permanent` (the remote refused the file), `unreadable` (the local file
//! could not be read), `transient` (an outage or 5xx: retried later), `state-database`,
//! `config` (no backend for the folder's target). `kind` says what happened
//! ([`crate::upload::ErrorKind`]: `auth`, `not_found`, `rate_limited`, `server`, `transport`,
//! `rejected`, `conflict`, `unexpected`, `config`, `local_io`, `state_database`); each class
//! has the kinds it can go with ([`FailureClass::can_be`]), and only those series are made.
//!
//! The endpoint serves OpenMetrics or the classic text format, as the scraper asks
//! (`exposition` submodule).

mod exposition;
mod process;

pub use exposition::Format;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::upload::kind::ErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub folder: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub folder: String,
    pub backend: String,
    pub class: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub backend: &'static str,
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub folder: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FolderLabels {
    pub folder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Why an upload attempt failed, as the `class` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Permanent,
    Unreadable,
    Transient,
    StateDatabase,
    Config,
}

impl FailureClass {
    const ALL: [FailureClass; 5] = [
        FailureClass::Permanent,
        FailureClass::Unreadable,
        FailureClass::Transient,
        FailureClass::StateDatabase,
        FailureClass::Config,
    ];

    /// Whether a failure of this class can be of `kind`: only its own for a local class,
    /// any but a local read's for a remote one (a remote failure may also be a folder's
    /// target that does not fit the backend, or a state database write during a deletion).
    pub fn can_be(self, kind: ErrorKind) -> bool {
        match self {
            FailureClass::Unreadable => kind == ErrorKind::LocalIo,
            FailureClass::StateDatabase => kind == ErrorKind::StateDatabase,
            FailureClass::Config => kind == ErrorKind::Config,
            FailureClass::Permanent | FailureClass::Transient => kind != ErrorKind::LocalIo,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FailureClass::Permanent => "permanent",
            FailureClass::Unreadable => "unreadable",
            FailureClass::Transient => "transient",
            FailureClass::StateDatabase => "state-database",
            FailureClass::Config => "config",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteLabels {
    pub backend: String,
    pub remote: String,
}

/// The states a folder's remote check can be in, as `upsync_folder_remote_check_state` says them.
pub const REMOTE_CHECK_STATES: [&str; 4] = ["checking", "ready", "refused", "waiting"];

/// One folder's queue figures, as the gauges take them.
#[derive(Debug, Clone, Default)]
pub struct FolderGauges {
    pub folder: String,
    pub backend: String,
    /// (state name, jobs) for every state, zeros included, so a drained state reads 0.
    pub jobs_by_state: Vec<(&'static str, u64)>,
    pub oldest_pending_age_s: Option<f64>,
    pub last_success_ms: Option<u64>,
    pub in_flight: u64,
    /// Bytes the remote acknowledged so far, over the folder's uploads in progress.
    pub in_flight_acknowledged_bytes: u64,
    /// The sizes of the files being uploaded, added up.
    pub in_flight_size_bytes: u64,
    /// The state of the folder's remote check; `None` leaves the gauge out.
    pub remote_check: Option<String>,
    /// Deletions the mass-delete guard holds.
    pub deletions_held: u64,
}

type FloatGauge = Gauge<f64, AtomicU64>;

type RequestFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The process-wide request timings (module doc: why process-wide).
static REQUEST_DURATION: LazyLock<RequestFamily> = LazyLock::new(|| {
    // 1 ms to about 65 s: a KiFS call on a LAN up to a slow 8 MiB chunk.
    Family::new_with_constructor(
        (|| Histogram::new(exponential_buckets(0.001, 2.0, 17))) as fn() -> Histogram,
    )
});

/// Which remote a request went to, as the `backend` and `kind` labels say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    KifsApi,
    RedivisApi,
    RedivisSession,
}

impl RequestKind {
    /// The kinds of request a backend (`kifs`, `redivis`) sends.
    fn of_backend(backend: &str) -> &'static [RequestKind] {
        match backend {
            "kifs" => &[RequestKind::KifsApi],
            "redivis" => &[RequestKind::RedivisApi, RequestKind::RedivisSession],
            _ => &[],
        }
    }

    fn labels(self) -> (&'static str, &'static str) {
        match self {
            RequestKind::KifsApi => ("kifs", "api"),
            RequestKind::RedivisApi => ("redivis", "api"),
            RequestKind::RedivisSession => ("redivis", "session"),
        }
    }
}

/// Records one request to a remote: its answer's status (`None`: no answer) and duration.
pub fn observe_request(kind: RequestKind, status: Option<u16>, duration: Duration) {
    let outcome = match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "error",
    };
    REQUEST_DURATION
        .get_or_create(&request_labels(kind, outcome))
        .observe(duration.as_secs_f64());
}

/// Every `outcome` label value of the request timings.
const OUTCOMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

fn request_labels(kind: RequestKind, outcome: &'static str) -> RequestLabels {
    let (backend, kind) = kind.labels();
    RequestLabels {
        backend,
        kind,
        outcome,
    }
}

/// Every metric upsync exports, registered once.
pub struct Metrics {
    registry: Registry,
    uploaded_files: Family<UploadLabels, Counter>,
    uploaded_bytes: Family<UploadLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    retries: Family<UploadLabels, Counter>,
    upload_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
    deleted_files: Family<UploadLabels, Counter>,
    import_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
    queue_jobs: Family<StateLabels, Gauge>,
    deletions_held: Family<FolderLabels, Gauge>,
    oldest_pending_age: Family<FolderLabels, FloatGauge>,
    last_success: Family<FolderLabels, FloatGauge>,
    in_flight: Family<UploadLabels, Gauge>,
    in_flight_acknowledged: Family<UploadLabels, Gauge>,
    in_flight_size: Family<UploadLabels, Gauge>,
    bandwidth_limit: Gauge,
    folder_remote_check: Family<StateLabels, Gauge>,
    remote_up: Family<RemoteLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The one `upsync_build_info` series, at 1: a label carries the information.
fn build_info() -> Family<BuildLabels, Gauge> {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    info
}

/// Registers `metric` under `name` and hands it back.
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let r = registry.sub_registry_with_prefix("upsync");
        r.register(
            "build_info",
            "The running upsync's version (always 1)",
            build_info(),
        );
        // 50 ms to about 27 minutes: a small file on a LAN up to a large one on a slow link.
        let upload_duration = Family::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.05, 2.0, 16))) as fn() -> Histogram,
        );
        // 0.5 s to about 68 minutes: Redivis imports a small file in seconds, a large one
        // in many minutes.
        let import_duration = Family::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.5, 2.0, 14))) as fn() -> Histogram,
        );
        r.register(
            "request_duration_seconds",
            "Duration of HTTP requests to the remotes, from sending to the answer's headers",
            REQUEST_DURATION.clone(),
        );
        Metrics {
            uploaded_files: registered(
                r,
                "uploaded_files",
                "Files uploaded completely",
                Family::default(),
            ),
            uploaded_bytes: registered(
                r,
                "uploaded_bytes",
                "Bytes of files uploaded completely",
                Family::default(),
            ),
            failures: registered(
                r,
                "upload_failures",
                "Upload attempts that failed, by class of reason and kind of failure",
                Family::default(),
            ),
            retries: registered(
                r,
                "upload_retries",
                "Uploads scheduled for a later retry after a transient failure",
                Family::default(),
            ),
            upload_duration: registered(
                r,
                "upload_duration_seconds",
                "Duration of successful upload attempts (all requests of one file, up to the \
                 remote holding its bytes)",
                upload_duration,
            ),
            deleted_files: registered(
                r,
                "deleted_files",
                "Remote copies deleted because their local file is gone (on_delete = \"delete\")",
                Family::default(),
            ),
            import_duration: registered(
                r,
                "import_duration_seconds",
                "How long the remote took to import an uploaded file's bytes (Redivis)",
                import_duration,
            ),
            queue_jobs: registered(
                r,
                "queue_jobs",
                "Jobs in the queue by state (done: files in the upload ledger)",
                Family::default(),
            ),
            deletions_held: registered(
                r,
                "deletions_held",
                "Deletions the mass-delete guard holds until `upsync retry --deletes` (0 when none)",
                Family::default(),
            ),
            oldest_pending_age: registered(
                r,
                "oldest_pending_age_seconds",
                "Age of the oldest file waiting to be uploaded (0 when none waits)",
                Family::default(),
            ),
            last_success: registered(
                r,
                "last_success_timestamp_seconds",
                "Unix time of the last completed upload (0 when none is recorded)",
                Family::default(),
            ),
            in_flight: registered(
                r,
                "in_flight_uploads",
                "Uploads in progress",
                Family::default(),
            ),
            in_flight_acknowledged: registered(
                r,
                "in_flight_acknowledged_bytes",
                "Bytes the remote acknowledged so far for uploads in progress",
                Family::default(),
            ),
            in_flight_size: registered(
                r,
                "in_flight_size_bytes",
                "Total size of the files being uploaded",
                Family::default(),
            ),
            bandwidth_limit: registered(
                r,
                "bandwidth_limit_bytes_per_second",
                "Upload bandwidth limit in force (bandwidth_limit or bandwidth_schedule); 0 when unlimited",
                Gauge::default(),
            ),
            folder_remote_check: registered(
                r,
                "folder_remote_check_state",
                "1 for the state of the folder's remote check (checking, ready, refused, waiting), 0 for the others",
                Family::default(),
            ),
            remote_up: registered(
                r,
                "remote_up",
                "1 while the remote answers, 0 while it is down or until its first answer",
                Family::default(),
            ),
            registry,
        }
    }

    /// A completed upload of `bytes` that took `duration`.
    pub fn uploaded(&self, folder: &str, backend: &str, bytes: u64, duration: Duration) {
        let labels = upload_labels(folder, backend);
        self.uploaded_files.get_or_create(&labels).inc();
        self.uploaded_bytes.get_or_create(&labels).inc_by(bytes);
        self.upload_duration
            .get_or_create(&backend_labels(backend))
            .observe(duration.as_secs_f64());
    }

    /// The remote copy of a file that is gone locally was deleted.
    pub fn deleted(&self, folder: &str, backend: &str) {
        self.deleted_files
            .get_or_create(&upload_labels(folder, backend))
            .inc();
    }

    /// An upload the remote imported `duration` after it held the bytes (Redivis).
    pub fn imported(&self, backend: &str, duration: Duration) {
        self.import_duration
            .get_or_create(&backend_labels(backend))
            .observe(duration.as_secs_f64());
    }

    /// A failed attempt of `kind`; `retried` when it was scheduled for a later retry.
    pub fn failed(
        &self,
        folder: &str,
        backend: &str,
        class: FailureClass,
        kind: ErrorKind,
        retried: bool,
    ) {
        self.failures
            .get_or_create(&failure_labels(folder, backend, class, kind))
            .inc();
        if retried {
            self.retries
                .get_or_create(&upload_labels(folder, backend))
                .inc();
        }
    }

    /// Sets the queue gauges of the configured folders; a folder a reload removed no longer
    /// shows (its counters stay: they count since the start). Every counter of a configured
    /// folder exists from here on, at 0 until it counts something.
    pub fn set_folders(&self, folders: &[FolderGauges]) {
        self.queue_jobs.clear();
        self.deletions_held.clear();
        self.oldest_pending_age.clear();
        self.last_success.clear();
        self.in_flight.clear();
        self.in_flight_acknowledged.clear();
        self.in_flight_size.clear();
        self.folder_remote_check.clear();
        for figures in folders {
            self.initialise_counters(&figures.folder, &figures.backend);
            self.set_folder(figures);
        }
    }

    /// Creates (at 0) every counter and histogram series `folder` and its `backend` can have.
    fn initialise_counters(&self, folder: &str, backend: &str) {
        // `get_or_create` makes the series; the guard it returns is not needed.
        let labels = upload_labels(folder, backend);
        drop(self.uploaded_files.get_or_create(&labels));
        drop(self.uploaded_bytes.get_or_create(&labels));
        drop(self.retries.get_or_create(&labels));
        drop(self.deleted_files.get_or_create(&labels));
        for class in FailureClass::ALL {
            for kind in ErrorKind::ALL.into_iter().filter(|&k| class.can_be(k)) {
                drop(
                    self.failures
                        .get_or_create(&failure_labels(folder, backend, class, kind)),
                );
            }
        }
        drop(self.upload_duration.get_or_create(&backend_labels(backend)));
        if backend == "redivis" {
            drop(self.import_duration.get_or_create(&backend_labels(backend)));
        }
        for kind in RequestKind::of_backend(backend) {
            for outcome in OUTCOMES {
                drop(REQUEST_DURATION.get_or_create(&request_labels(*kind, outcome)));
            }
        }
    }

    /// Sets the bandwidth limit gauge (`None`: unlimited, shown as 0).
    pub fn set_bandwidth_limit(&self, limit: Option<u64>) {
        let value = limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.bandwidth_limit.set(value);
    }

    /// Sets `upsync_remote_up` for the remotes in use; `remotes` are (backend, remote, up).
    pub fn set_remotes(&self, remotes: &[(String, String, bool)]) {
        self.remote_up.clear();
        for (backend, remote, up) in remotes {
            self.remote_up
                .get_or_create(&RemoteLabels {
                    backend: backend.clone(),
                    remote: remote.clone(),
                })
                .set(i64::from(*up));
        }
    }

    /// Sets the queue gauges of one folder.
    fn set_folder(&self, figures: &FolderGauges) {
        for (state, jobs) in &figures.jobs_by_state {
            self.queue_jobs
                .get_or_create(&StateLabels {
                    folder: figures.folder.clone(),
                    state: (*state).to_string(),
                })
                .set(i64::try_from(*jobs).unwrap_or(i64::MAX));
        }
        let folder = FolderLabels {
            folder: figures.folder.clone(),
        };
        self.oldest_pending_age
            .get_or_create(&folder)
            .set(figures.oldest_pending_age_s.unwrap_or(0.0));
        self.last_success
            .get_or_create(&folder)
            .set(figures.last_success_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
        self.deletions_held
            .get_or_create(&folder)
            .set(i64::try_from(figures.deletions_held).unwrap_or(i64::MAX));
        let labels = upload_labels(&figures.folder, &figures.backend);
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.in_flight
            .get_or_create(&labels)
            .set(as_i64(figures.in_flight));
        self.in_flight_acknowledged
            .get_or_create(&labels)
            .set(as_i64(figures.in_flight_acknowledged_bytes));
        self.in_flight_size
            .get_or_create(&labels)
            .set(as_i64(figures.in_flight_size_bytes));
        if let Some(current) = &figures.remote_check {
            for state in REMOTE_CHECK_STATES {
                self.folder_remote_check
                    .get_or_create(&StateLabels {
                        folder: figures.folder.clone(),
                        state: state.to_string(),
                    })
                    .set(i64::from(state == current));
            }
        }
    }

    /// The exposition text of every metric, as OpenMetrics.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing metrics into a String cannot fail");
        text
    }

    /// The exposition text of every metric in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Classic => exposition::to_classic(&self.encode()),
        }
    }
}

fn upload_labels(folder: &str, backend: &str) -> UploadLabels {
    UploadLabels {
        folder: folder.to_string(),
        backend: backend.to_string(),
    }
}

fn failure_labels(
    folder: &str,
    backend: &str,
    class: FailureClass,
    kind: ErrorKind,
) -> FailureLabels {
    FailureLabels {
        folder: folder.to_string(),
        backend: backend.to_string(),
        class: class.label().to_string(),
        kind: kind.label(),
    }
}

fn backend_labels(backend: &str) -> BackendLabels {
    BackendLabels {
        backend: backend.to_string(),
    }
}

struct Endpoint {
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
}

/// Listens on `addr` and serves `/metrics` until `shutdown`; `refresh` runs (on the
/// blocking pool) before each scrape to update the gauges. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::http::header::{ACCEPT, CONTENT_TYPE};
    use axum::response::IntoResponse;

    async fn scrape(
        State(endpoint): State<Arc<Endpoint>>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let refresh = Arc::clone(&endpoint.refresh);
        if let Err(err) = tokio::task::spawn_blocking(move || refresh()).await {
            tracing::warn!(error = %err, "refreshing the metrics failed");
        }
        let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
        let text = endpoint.metrics.encode_as(format);
        ([(CONTENT_TYPE, format.content_type())], text).into_response()
    }

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Arc::new(Endpoint { metrics, refresh }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
    }

    #[test]
    fn a_completed_upload_counts_its_file_bytes_and_duration() {
        let metrics = Metrics::new();
        metrics.uploaded("/data/x", "kifs", 1000, Duration::from_millis(120));
        metrics.uploaded("/data/x", "kifs", 24, Duration::from_millis(30));
        let text = metrics.encode();
        assert!(
            line(&text, "upsync_uploaded_files_total{").ends_with(" 2"),
            "{text}"
        );
        let bytes = line(&text, "upsync_uploaded_bytes_total{");
        assert!(bytes.contains("folder=\"/data/x\""), "{bytes}");
        assert!(bytes.contains("backend=\"kifs\""), "{bytes}");
        assert!(bytes.ends_with(" 1024"), "{bytes}");
        assert!(
            line(
                &text,
                "upsync_upload_duration_seconds_count{backend=\"kifs\"}"
            )
            .ends_with(" 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn an_import_is_timed_apart_from_its_transfer() {
        let metrics = Metrics::new();
        metrics.uploaded("/r", "redivis", 10, Duration::from_millis(40));
        metrics.imported("redivis", Duration::from_secs(3));
        let text = metrics.encode();
        let sum = line(
            &text,
            "upsync_import_duration_seconds_sum{backend=\"redivis\"}",
        );
        assert!(sum.ends_with(" 3.0"), "{text}");
        let transfer = line(
            &text,
            "upsync_upload_duration_seconds_sum{backend=\"redivis\"}",
        );
        assert!(transfer.ends_with(" 0.04"), "{text}");
    }

    #[test]
    fn request_timings_are_exported_by_backend_kind_and_status_class() {
        // The family is process-wide and other tests send real requests: only the
        // informational class is ours alone, so count its change.
        let count = |text: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("upsync_request_duration_seconds_count{")
                        && l.contains("backend=\"redivis\"")
                        && l.contains("kind=\"session\"")
                        && l.contains("outcome=\"1xx\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let metrics = Metrics::new();
        let before = count(&metrics.encode());
        observe_request(
            RequestKind::RedivisSession,
            Some(103),
            Duration::from_millis(3),
        );
        observe_request(
            RequestKind::RedivisSession,
            Some(100),
            Duration::from_millis(700),
        );
        observe_request(RequestKind::KifsApi, None, Duration::from_secs(2));
        let text = metrics.encode();
        assert_eq!(count(&text) - before, 2, "{text}");
        let failed = line(
            &text,
            "upsync_request_duration_seconds_count{backend=\"kifs\",kind=\"api\",outcome=\"error\"}",
        );
        assert!(!failed.ends_with(" 0"), "{failed}");
        let fast = text
            .lines()
            .find(|l| {
                l.starts_with("upsync_request_duration_seconds_bucket{")
                    && l.contains("le=\"0.004\"")
                    && l.contains("kind=\"session\"")
                    && l.contains("outcome=\"1xx\"")
            })
            .unwrap_or_else(|| panic!("millisecond buckets are exported: {text}"));
        assert!(!fast.ends_with(" 0"), "{fast}");
    }

    #[test]
    fn failures_are_counted_by_class_and_kind_and_retries_apart() {
        let metrics = Metrics::new();
        let transient = FailureClass::Transient;
        metrics.failed("/d", "redivis", transient, ErrorKind::Server, true);
        metrics.failed("/d", "redivis", transient, ErrorKind::Server, true);
        metrics.failed("/d", "redivis", transient, ErrorKind::RateLimited, true);
        metrics.failed(
            "/d",
            "redivis",
            FailureClass::Permanent,
            ErrorKind::Auth,
            false,
        );
        let text = metrics.encode();
        for (labels, count) in [
            ("class=\"transient\",kind=\"server\"}", " 2"),
            ("class=\"transient\",kind=\"rate_limited\"}", " 1"),
            ("class=\"permanent\",kind=\"auth\"}", " 1"),
        ] {
            let series =
                format!("upsync_upload_failures_total{{folder=\"/d\",backend=\"redivis\",{labels}");
            assert!(line(&text, &series).ends_with(count), "{series}: {text}");
        }
        assert!(
            line(&text, "upsync_upload_retries_total{").ends_with(" 3"),
            "{text}"
        );
    }

    #[test]
    fn every_class_starts_at_zero_with_each_kind_it_can_have_and_no_other() {
        let metrics = Metrics::new();
        metrics.initialise_counters("/d", "kifs");
        let text = metrics.encode();
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("upsync_upload_failures_total{"))
            .collect();
        // Three local classes of one kind each; two remote ones of every kind but local_io.
        assert_eq!(failures.len(), 3 + 2 * (ErrorKind::ALL.len() - 1), "{text}");
        assert!(failures.iter().all(|l| l.ends_with("} 0")), "{text}");
        for kind in ErrorKind::ALL {
            let label = format!("kind=\"{}\"}}", kind.label());
            assert!(
                failures.iter().any(|l| l.contains(&label)),
                "{label}: {text}"
            );
        }
        let local = "class=\"unreadable\",kind=\"local_io\"}";
        assert!(failures.iter().any(|l| l.contains(local)), "{text}");
        let mismatched = "class=\"unreadable\",kind=\"auth\"}";
        assert!(!failures.iter().any(|l| l.contains(mismatched)), "{text}");
    }

    #[test]
    fn folder_gauges_show_queue_depth_age_last_success_and_in_flight_bytes() {
        let metrics = Metrics::new();
        metrics.set_folder(&FolderGauges {
            folder: "/d".into(),
            backend: "kifs".into(),
            jobs_by_state: vec![("queued", 3), ("failed", 1)],
            oldest_pending_age_s: Some(42.5),
            last_success_ms: Some(1_700_000_000_500),
            in_flight: 1,
            in_flight_acknowledged_bytes: 10,
            in_flight_size_bytes: 100,
            remote_check: None,
            deletions_held: 4,
        });
        let text = metrics.encode();
        assert!(
            line(&text, "upsync_queue_jobs{folder=\"/d\",state=\"queued\"}").ends_with(" 3"),
            "{text}"
        );
        assert!(
            line(&text, "upsync_deletions_held{folder=\"/d\"}").ends_with(" 4"),
            "{text}"
        );
        assert!(
            line(&text, "upsync_oldest_pending_age_seconds{").ends_with(" 42.5"),
            "{text}"
        );
        assert!(
            line(&text, "upsync_last_success_timestamp_seconds{").ends_with(" 1700000000.5"),
            "{text}"
        );
        assert!(
            line(&text, "upsync_in_flight_acknowledged_bytes{").ends_with(" 10"),
            "{text}"
        );
    }

    #[test]
    fn a_folder_no_longer_configured_drops_out_of_the_gauges() {
        let metrics = Metrics::new();
        let folder = |path: &str| FolderGauges {
            folder: path.into(),
            backend: "kifs".into(),
            jobs_by_state: vec![("queued", 2)],
            ..FolderGauges::default()
        };
        let gauge_lines = |text: &str, folder: &str| -> usize {
            let gauges = [
                "upsync_queue_jobs{",
                "upsync_oldest_pending_age_seconds{",
                "upsync_last_success_timestamp_seconds{",
                "upsync_in_flight_uploads{",
                "upsync_in_flight_acknowledged_bytes{",
                "upsync_in_flight_size_bytes{",
            ];
            text.lines()
                .filter(|l| gauges.iter().any(|g| l.starts_with(g)))
                .filter(|l| l.contains(&format!("folder=\"{folder}\"")))
                .count()
        };
        metrics.set_folders(&[folder("/kept"), folder("/removed")]);
        assert_eq!(gauge_lines(&metrics.encode(), "/removed"), 6);
        metrics.set_folders(&[folder("/kept"), folder("/added")]);
        let text = metrics.encode();
        assert_eq!(gauge_lines(&text, "/removed"), 0, "{text}");
        assert!(
            line(
                &text,
                "upsync_queue_jobs{folder=\"/added\",state=\"queued\"}"
            )
            .ends_with(" 2"),
            "{text}"
        );
    }

    #[test]
    fn remote_health_and_folder_checks_are_gauges_that_follow_each_refresh() {
        let metrics = Metrics::new();
        metrics.set_remotes(&[
            ("kifs".into(), "http://k:9191".into(), true),
            ("redivis".into(), "http://r/api/v1".into(), false),
        ]);
        metrics.set_folders(&[FolderGauges {
            folder: "/d".into(),
            backend: "kifs".into(),
            remote_check: Some("refused".into()),
            ..FolderGauges::default()
        }]);
        let text = metrics.encode();
        assert!(
            line(
                &text,
                "upsync_remote_up{backend=\"redivis\",remote=\"http://r/api/v1\"}"
            )
            .ends_with(" 0"),
            "{text}"
        );
        assert!(
            line(&text, "upsync_remote_up{backend=\"kifs\"").ends_with(" 1"),
            "{text}"
        );
        assert!(
            line(
                &text,
                "upsync_folder_remote_check_state{folder=\"/d\",state=\"refused\"}"
            )
            .ends_with(" 1"),
            "{text}"
        );
        assert!(
            line(
                &text,
                "upsync_folder_remote_check_state{folder=\"/d\",state=\"ready\"}"
            )
            .ends_with(" 0"),
            "{text}"
        );
        metrics.set_remotes(&[("kifs".into(), "http://k:9191".into(), true)]);
        // Request timings are process-wide (other tests' requests show there): only the
        // remote's own series must leave.
        assert!(
            !metrics
                .encode()
                .contains("upsync_remote_up{backend=\"redivis\""),
            "a remote no longer used leaves"
        );
    }

    #[tokio::test]
    async fn the_endpoint_refreshes_the_gauges_and_serves_the_text() {
        let metrics = Arc::new(Metrics::new());
        let for_refresh = Arc::clone(&metrics);
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            for_refresh.set_folders(&[FolderGauges {
                folder: "/d".into(),
                backend: "kifs".into(),
                jobs_by_state: vec![("queued", 7)],
                ..FolderGauges::default()
            }])
        });
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&metrics),
            refresh,
            shutdown.clone(),
        )
        .await
        .expect("a free loopback port binds");
        let scrape = |accept: Option<&'static str>| {
            let mut request = reqwest::Client::new().get(format!("http://{addr}/metrics"));
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            request.send()
        };
        let response = scrape(Some("application/openmetrics-text;version=1.0.0,*/*;q=0.1"))
            .await
            .expect("the endpoint answers");
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            exposition::OPENMETRICS
        );
        let text = response.text().await.unwrap();
        assert!(
            line(&text, "upsync_queue_jobs{folder=\"/d\",state=\"queued\"}").ends_with(" 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE upsync_uploaded_files counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        let response = scrape(None).await.expect("the endpoint answers");
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            exposition::CLASSIC
        );
        let text = response.text().await.unwrap();
        assert!(
            line(&text, "upsync_queue_jobs{folder=\"/d\",state=\"queued\"}").ends_with(" 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE upsync_uploaded_files_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        shutdown.cancel();
    }

    #[test]
    fn every_counter_of_a_configured_folder_reads_zero_before_it_counts() {
        let metrics = Metrics::new();
        let folder = |path: &str, backend: &str| FolderGauges {
            folder: path.into(),
            backend: backend.into(),
            ..FolderGauges::default()
        };
        metrics.set_folders(&[folder("/k", "kifs")]);
        let text = metrics.encode();
        for series in [
            "upsync_uploaded_files_total{folder=\"/k\",backend=\"kifs\"} 0",
            "upsync_uploaded_bytes_total{folder=\"/k\",backend=\"kifs\"} 0",
            "upsync_upload_retries_total{folder=\"/k\",backend=\"kifs\"} 0",
            "upsync_upload_failures_total{folder=\"/k\",backend=\"kifs\",class=\"transient\",kind=\"server\"} 0",
            "upsync_upload_failures_total{folder=\"/k\",backend=\"kifs\",class=\"state-database\",kind=\"state_database\"} 0",
            "upsync_upload_duration_seconds_count{backend=\"kifs\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
        }
        assert!(
            text.lines().any(|l| l
                .starts_with("upsync_request_duration_seconds_count{backend=\"kifs\",kind=\"api\",outcome=\"5xx\"}")),
            "{text}"
        );

        // A reload adds a Redivis folder: its series appear; the removed folder's counters
        // stay, since they count from the start.
        metrics.set_folders(&[folder("/r", "redivis")]);
        let text = metrics.encode();
        for series in [
            "upsync_uploaded_files_total{folder=\"/r\",backend=\"redivis\"} 0",
            "upsync_uploaded_files_total{folder=\"/k\",backend=\"kifs\"} 0",
            "upsync_upload_failures_total{folder=\"/r\",backend=\"redivis\",class=\"permanent\",kind=\"auth\"} 0",
            "upsync_import_duration_seconds_count{backend=\"redivis\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with(
                "upsync_request_duration_seconds_count{backend=\"redivis\",kind=\"session\",outcome=\"error\"}"
            )),
            "{text}"
        );
    }

    #[test]
    fn the_build_and_the_process_are_described() {
        let text = Metrics::new().encode();
        assert!(
            text.lines().any(|l| l
                == format!(
                    "upsync_build_info{{version=\"{}\"}} 1",
                    env!("CARGO_PKG_VERSION")
                )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter\n"),
            "{text}"
        );
        let resident: f64 = line(&text, "process_resident_memory_bytes ")
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(resident > 0.0, "{text}");
        for name in [
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "process_threads ",
            "process_virtual_memory_bytes ",
        ] {
            line(&text, name);
        }
    }
}
