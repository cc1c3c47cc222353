//! The status report: one schema for `upsync status`, whether the daemon answers it over
//! the control socket or it is read straight from a stopped daemon's state database; and
//! the daemon's live state behind it (uploads in flight with their rate, last successes).
//!
//! JSON schema (stable; fields are only ever added; times are ms since the Unix epoch;
//! `null` means unknown or not applicable):
//! ```json
//! { "daemon": "running" | "stopped",
//!   "generated_at_ms": 1700000000000,
//!   "folders": [ { "path": "/data/x", "target": "kifs ingest/",
//!                  "remote_kind": "directory" | "table" | "file index table" | null,
//!                  "queued": 0, "active": 1, "finalizing": 0, "importing": 0,
//!                  "retry_wait": 0, "failed": 1, "done": 12,
//!                  "deletions": 0, "held": 0,
//!                  "oldest_pending_age_s": 95 | null,
//!                  "last_success_ms": 1700000000000 | null,
//!                  "remote_check": { "state": "ready" | "checking" | "refused" | "waiting",
//!                                    "reason": "…" | null,
//!                                    "since_ms": 1700000000000 } | null,
//!                  "target_changed": false } ],
//!   "in_flight": [ { "path": "/data/x/big.bin", "folder": "/data/x",
//!                    "bytes_done": 1048576, "bytes_total": 4194304,
//!                    "elapsed_s": 12, "rate_bytes_per_s": 87381 | null,
//!                    "eta_s": 36 | null,
//!                    "retrying": { "attempt": 2, "next_in_s": 3,
//!                                  "last_error": "…" } | null } ],
//!   "failed": [ { "path": "/data/x/a_b.csv", "reason": "…", "failed_at_ms": 1700000000000,
//!                 "last_attempt_ms": 1700000000000, "attempts": 1,
//!                 "folder_configured": true } ],
//!   "retrying": [ { "path": "/data/x/c.csv", "attempts": 2, "next_attempt_ms": 1700000000000,
//!                   "last_error": "…" | null,
//!                   "waits_for": "remote" | "remote_check" | null } ],
//!   "bandwidth": { "limit_bytes_per_s": 5242880 | null,
//!                  "rule": "Mon-Fri 08:00-18:00 5MiB/s" | "bandwidth_limit" | null },
//!   "remotes": [ { "backend": "kifs" | "redivis", "remote": "https://kinetica:9191",
//!                  "state": "up" | "down", "answered": true | false,
//!                  "since_ms": 1700000000000 | null,
//!                  "last_error": "…" | null, "next_probe_ms": 1700000000000 | null } ] }
//! ```
//! - `oldest_pending_age_s`: how long the folder's longest-pending file has waited: an
//!   upload in progress since its job was created, a file due for upload (queued, or a
//!   retry whose time has come) since it was queued or its retry came due; `null` when no
//!   file is uploading or due (files waiting for a later retry or for Redivis to import
//!   them do not count). Read from the uploads in progress and the first entry of the
//!   folder's queue, so it costs the same whatever the queue's length.
//! - `last_success_ms`: the newest upload the ledger holds for the folder.
//! - `remote_kind`: what the folder feeds, as the running daemon found it (a Redivis table
//!   is a `table` of uploads or a `file index table`); `null` when not known yet or when
//!   the daemon is stopped.
//! - `deletions`: deletion jobs of a folder with `on_delete = "delete"` (remote copies of
//!   files that are gone), counted under their state too; `held`: those of them the
//!   mass-delete guard holds (counted as failed, with the reason in `failed`) until
//!   `upsync retry --deletes`.
//! - `target_changed`: the daemon is stopped and the folder's configured target is
//!   another than the one its uploads went to (module `retarget`): the next start drops
//!   its ledger and uploads its files to the new target, so `done` is 0, as that start
//!   will find it. Always `false` for a running daemon, which has followed the change.
//! - `failed[].folder_configured`: `false` for a job of a folder no longer in the
//!   configuration (the daemon's, or for a stopped daemon the one `status` read): `retry`
//!   cannot reach it; putting the folder back queues again the jobs failed for its
//!   removal. A report without the field (an older upsync's) counts as `true`. The text
//!   report lists those jobs apart.
//! - `importing`: files Redivis holds and is still importing; no worker waits for them.
//! - `remote_check`: whether the folder's remote can take its files ([`super::gates`]):
//!   `checking` (not answered yet; `reason` is the last error), `ready`, `refused` (for good
//!   until fixed; `reason` says why), `waiting` (`reason` says for what); `null` when the
//!   daemon is stopped. Jobs of a folder that is not ready wait in the queue.
//! - `rate_bytes_per_s` is the average over the current attempt (bytes the remote
//!   acknowledged); `null` until the first acknowledgement, and for a resumed upload until
//!   it moved past where it resumed. `eta_s` follows from it.
//! - `in_flight[].retrying`: the request the upload is retrying in place (failed tries so
//!   far, seconds until the next one, the last error); `null` while it is not retrying.
//!   The text report then shows "retrying (attempt n, next in Ns): last error" instead of
//!   the rate and ETA.
//! - `in_flight` is empty when the daemon is stopped. A stopped daemon's uploads that a
//!   stop (or a crash) interrupted are counted as `queued`, not `active` or `finalizing`:
//!   nothing runs them, and the next start queues them again, with their progress
//!   ([`crate::queue::Store::recover_after_restart`]). The database is not changed for it.
//! - `retrying[].waits_for`: what the job waits for besides `next_attempt_ms`, as the
//!   running daemon knows it: `remote` (its remote is down; the job is tried once the
//!   remote answers again, whether its time has come or not), `remote_check` (its folder's
//!   remote check has not passed); `null` otherwise and when the daemon is stopped. The
//!   text report says so instead of a time, and says "due now" for a retry whose time has
//!   come and waits for nothing else.
//! - `bandwidth`: the upload limit in force now (`null`: unlimited) and the
//!   `bandwidth_schedule` entry (or `bandwidth_limit`) that sets it; for a stopped daemon,
//!   the one its configuration would put in force now.
//! - `remotes`: each remote in use and whether it answers (`down` after repeated transient
//!   failures: its folders wait, one probe asks it, `next_probe_ms` says when); empty
//!   when the daemon is stopped.
//!
//! The text report prints every path, reason and error on one line: line breaks, other
//! control characters and backslashes in them are escaped ([`one_line`]). The JSON report
//! escapes by itself.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::gates::{FolderGates, GateStatus};
use super::remotes::Remotes;
use crate::config::Config;
use crate::metrics::FolderGauges;
use crate::net::Bandwidth;
use crate::queue::{FolderCounts, JobId, JobState, StatusSource, StoreError, to_ms};
use crate::upload::LiveProgress;
use crate::upload::health::HealthSnapshot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon: DaemonState,
    #[serde(default)]
    pub generated_at_ms: u64,
    pub folders: Vec<FolderStatus>,
    pub in_flight: Vec<InFlight>,
    pub failed: Vec<FailedJob>,
    #[serde(default)]
    pub retrying: Vec<RetryingJob>,
    #[serde(default)]
    pub bandwidth: BandwidthStatus,
    #[serde(default)]
    pub remotes: Vec<HealthSnapshot>,
}

/// The upload bandwidth limit in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthStatus {
    /// `None`: unlimited.
    pub limit_bytes_per_s: Option<u64>,
    /// The schedule entry as written, or `bandwidth_limit`; `None` without either.
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderStatus {
    pub path: String,
    pub target: String,
    #[serde(default)]
    pub remote_kind: Option<String>,
    #[serde(flatten)]
    pub counts: FolderCounts,
    #[serde(default)]
    pub oldest_pending_age_s: Option<u64>,
    #[serde(default)]
    pub last_success_ms: Option<u64>,
    #[serde(default)]
    pub remote_check: Option<GateStatus>,
    /// A stopped daemon's folder whose configured target is another than the one its
    /// uploads went to (module doc); `done` is then 0.
    #[serde(default)]
    pub target_changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    pub path: String,
    #[serde(default)]
    pub folder: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    #[serde(default)]
    pub elapsed_s: u64,
    #[serde(default)]
    pub rate_bytes_per_s: Option<u64>,
    #[serde(default)]
    pub eta_s: Option<u64>,
    #[serde(default)]
    pub retrying: Option<InPlaceRetry>,
}

/// An in-flight upload's request being retried in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceRetry {
    /// Failed tries so far.
    pub attempt: u32,
    pub next_in_s: u64,
    pub last_error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedJob {
    pub path: String,
    pub reason: String,
    /// What went wrong, as the failure metrics label it; absent where not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub failed_at_ms: u64,
    #[serde(default)]
    pub last_attempt_ms: u64,
    pub attempts: u32,
    /// The job's folder is in the configuration the report was made with (module doc).
    #[serde(default = "folder_configured_when_not_told")]
    pub folder_configured: bool,
}

/// A report from an upsync before `folder_configured` did not tell the failures of a
/// removed folder apart.
fn folder_configured_when_not_told() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryingJob {
    pub path: String,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    /// What the job waits for besides its time (module doc); `None`: nothing known.
    #[serde(default)]
    pub waits_for: Option<RetryHold>,
}

/// Why a retry-wait job is not tried at its time, where the running daemon knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryHold {
    /// Its remote is down: it is tried when the remote answers again.
    Remote,
    /// Its folder's remote check has not passed.
    RemoteCheck,
}

/// What a running daemon knows beyond its state database.
#[derive(Default)]
pub struct Live {
    pub in_flight: InFlightRegistry,
    pub activity: Activity,
    /// The bandwidth limit every request body shares.
    pub bandwidth: Arc<Bandwidth>,
    /// Each folder's remote check.
    pub gates: Arc<FolderGates>,
    /// The remotes in use: their health, and what their backends learned of each target.
    pub remotes: Remotes,
}

/// Completed uploads and remote deletions as this process saw them, and the newest success
/// per folder (seeded from the ledger at start).
#[derive(Default)]
pub struct Activity {
    last_success: Mutex<BTreeMap<String, u64>>,
    files: AtomicU64,
    bytes: AtomicU64,
    deleted: AtomicU64,
}

impl Activity {
    pub fn record_success(&self, folder: &str, at_ms: u64, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut last = lock(&self.last_success);
        let newest = last.entry(folder.to_string()).or_default();
        *newest = (*newest).max(at_ms);
    }

    /// Merges the ledger's newest uploads (read at start, possibly after some uploads).
    pub fn seed(&self, from_ledger: BTreeMap<String, u64>) {
        let mut last = lock(&self.last_success);
        for (folder, at_ms) in from_ledger {
            let newest = last.entry(folder).or_default();
            *newest = (*newest).max(at_ms);
        }
    }

    pub fn last_success(&self) -> BTreeMap<String, u64> {
        lock(&self.last_success).clone()
    }

    /// (files, bytes) uploaded by this process.
    pub fn uploaded(&self) -> (u64, u64) {
        (
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// A remote copy deleted because its file is gone (`on_delete = "delete"`).
    pub fn record_deletion(&self) {
        self.deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// Remote copies deleted by this process.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }
}

/// An upload that a worker starts.
pub struct InFlightStart {
    /// The file's absolute path, as shown.
    pub path: String,
    /// The folder's queue key.
    pub folder: String,
    /// When the file's job was created: it has been pending since.
    pub pending_since_ms: u64,
    pub live: Arc<LiveProgress>,
    /// The attempt continues saved progress: the first bytes it reports were sent before.
    pub resumed: bool,
}

struct Entry {
    start: InFlightStart,
    started: Instant,
    /// From when, and from how many bytes, this attempt's rate is measured. A resumed
    /// upload's first report includes what earlier attempts sent, so its baseline is its
    /// first non-zero report instead of (start, 0).
    baseline: Option<(Instant, u64)>,
}

/// Uploads in progress, by job.
#[derive(Default)]
pub struct InFlightRegistry {
    entries: Mutex<BTreeMap<JobId, Entry>>,
}

impl InFlightRegistry {
    pub fn insert(&self, id: JobId, start: InFlightStart) {
        let now = Instant::now();
        let baseline = (!start.resumed).then_some((now, 0));
        lock(&self.entries).insert(
            id,
            Entry {
                start,
                started: now,
                baseline,
            },
        );
    }

    pub fn remove(&self, id: JobId) {
        lock(&self.entries).remove(&id);
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per folder, since when its longest-pending upload in progress has been pending.
    pub fn pending_since(&self) -> BTreeMap<String, u64> {
        let mut since: BTreeMap<String, u64> = BTreeMap::new();
        for entry in lock(&self.entries).values() {
            let start = &entry.start;
            let oldest = since
                .entry(start.folder.clone())
                .or_insert(start.pending_since_ms);
            *oldest = (*oldest).min(start.pending_since_ms);
        }
        since
    }

    /// The uploads in progress now, with their rate and ETA.
    pub fn snapshot(&self) -> Vec<InFlight> {
        let now = Instant::now();
        lock(&self.entries)
            .values_mut()
            .map(|entry| {
                let done = entry.start.live.bytes_done.load(Ordering::Relaxed);
                let total = entry.start.live.bytes_total.load(Ordering::Relaxed);
                if entry.baseline.is_none() && done > 0 {
                    entry.baseline = Some((now, done));
                }
                let rate = entry.baseline.and_then(|(since, from)| {
                    let seconds = now.duration_since(since).as_secs_f64();
                    (done > from && seconds > 0.0).then(|| (done - from) as f64 / seconds)
                });
                InFlight {
                    path: entry.start.path.clone(),
                    folder: entry.start.folder.clone(),
                    bytes_done: done,
                    bytes_total: total,
                    elapsed_s: now.duration_since(entry.started).as_secs(),
                    rate_bytes_per_s: rate.map(|r| r as u64),
                    eta_s: rate.map(|r| (total.saturating_sub(done) as f64 / r).ceil() as u64),
                    retrying: entry.start.live.retry().map(|note| InPlaceRetry {
                        attempt: note.attempt,
                        next_in_s: note
                            .next_at
                            .duration_since(SystemTime::now())
                            .map_or(0, |left| left.as_secs_f64().ceil() as u64),
                        last_error: note.last_error,
                    }),
                }
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps hold plain data that a panicking holder cannot leave half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds the report from the store, and from the daemon's live state when it runs.
pub fn build_report(
    config: &Config,
    store: &dyn StatusSource,
    live: Option<&Live>,
) -> Result<StatusReport, StoreError> {
    let now = store.now();
    let now_ms = to_ms(now);
    let tallies = store.tallies()?;
    let last_success = match live {
        Some(live) => live.activity.last_success(),
        None => tallies
            .iter()
            .map(|(folder, tally)| (folder.clone(), tally.last_upload_ms))
            .collect(),
    };
    let (failed, mut retrying) = failed_and_retrying(config, store)?;
    if let Some(live) = live {
        note_retry_holds(&mut retrying, config, live);
    }
    let waiting_since = pending_since(config, store, live, now)?;
    // A running daemon has already followed every change of target.
    let uploaded_to = match live {
        Some(_) => BTreeMap::new(),
        None => store.folder_targets()?,
    };
    let folders = config
        .folders
        .iter()
        .map(|folder| {
            let key = folder.path.to_string_lossy().into_owned();
            let counts = tallies
                .get(&key)
                .map(|tally| tally.counts.clone())
                .unwrap_or_default();
            let target_changed =
                super::retarget::moved(uploaded_to.get(&key).map(String::as_str), &folder.target);
            FolderStatus {
                counts: match live {
                    Some(_) => counts,
                    None => counts.as_found_at_next_start(target_changed),
                },
                target_changed,
                target: folder.target.describe(),
                remote_kind: live
                    .and_then(|live| live.remotes.kind(&folder.target))
                    .map(str::to_string),
                oldest_pending_age_s: waiting_since
                    .get(&key)
                    .map(|since| now_ms.saturating_sub(*since) / 1000),
                last_success_ms: last_success.get(&key).copied().filter(|ms| *ms > 0),
                remote_check: live.and_then(|live| live.gates.status(&key)),
                path: key,
            }
        })
        .collect();
    Ok(StatusReport {
        daemon: if live.is_some() {
            DaemonState::Running
        } else {
            DaemonState::Stopped
        },
        generated_at_ms: now_ms,
        folders,
        in_flight: live
            .map(|live| live.in_flight.snapshot())
            .unwrap_or_default(),
        failed,
        retrying: retrying.into_iter().map(|(_, job)| job).collect(),
        bandwidth: bandwidth_status(config, live),
        remotes: live.map(|live| live.remotes.snapshot()).unwrap_or_default(),
    })
}

/// A retry-wait job and the queue key of its folder.
type InFolder = (String, RetryingJob);

/// The failed and the retrying jobs, from the store's index of them.
fn failed_and_retrying(
    config: &Config,
    store: &dyn StatusSource,
) -> Result<(Vec<FailedJob>, Vec<InFolder>), StoreError> {
    let configured: BTreeSet<Cow<'_, str>> = config
        .folders
        .iter()
        .map(|folder| folder.path.to_string_lossy())
        .collect();
    let mut failed = Vec::new();
    let mut retrying = Vec::new();
    for job in store.jobs_needing_attention()? {
        let path = job.path().display().to_string();
        match job.state {
            JobState::Failed {
                reason,
                failed_at_ms,
                kind,
            } => failed.push(FailedJob {
                path,
                reason,
                kind,
                failed_at_ms,
                last_attempt_ms: job.updated_at_ms,
                attempts: job.attempts,
                folder_configured: configured.contains(job.key.folder.as_str()),
            }),
            JobState::RetryWait { next_attempt_at_ms } => retrying.push((
                job.key.folder.clone(),
                RetryingJob {
                    path,
                    attempts: job.attempts,
                    next_attempt_ms: next_attempt_at_ms,
                    last_error: job.last_error.clone(),
                    waits_for: None,
                },
            )),
            JobState::Queued | JobState::Active | JobState::Finalizing | JobState::Importing => {}
        }
    }
    Ok((failed, retrying))
}

/// Notes what each retrying job waits for besides its time: the workers claim a folder's
/// jobs only while its remote is up and its remote check passed (`super::schedule`), and a
/// remote that answers again makes its folders' waiting jobs due at once (`super::remotes`).
fn note_retry_holds(retrying: &mut [InFolder], config: &Config, live: &Live) {
    let down: Vec<String> = live
        .remotes
        .snapshot()
        .into_iter()
        .filter(|remote| remote.state == "down")
        .map(|remote| remote.backend)
        .collect();
    for (folder, job) in retrying {
        let remote_down = config
            .folder_for(folder)
            .is_some_and(|f| down.iter().any(|b| b == f.target.backend_name()));
        job.waits_for = if remote_down {
            Some(RetryHold::Remote)
        } else if !live.gates.is_ready(Path::new(folder.as_str())) {
            Some(RetryHold::RemoteCheck)
        } else {
            None
        };
    }
}

/// Per folder, since when its longest-pending file has waited (ms since the epoch): the
/// uploads in progress, and the head of the folder's queue.
fn pending_since(
    config: &Config,
    store: &dyn StatusSource,
    live: Option<&Live>,
    now: SystemTime,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut since = live
        .map(|live| live.in_flight.pending_since())
        .unwrap_or_default();
    for folder in &config.folders {
        let key = folder.path.to_string_lossy().into_owned();
        if let Some(due) = store.waiting_since(&key, now)? {
            let oldest = since.entry(key).or_insert(due);
            *oldest = (*oldest).min(due);
        }
    }
    Ok(since)
}

fn bandwidth_status(config: &Config, live: Option<&Live>) -> BandwidthStatus {
    let in_force = match live {
        Some(live) => live.bandwidth.in_force(),
        None => Bandwidth::new(config.bandwidth.clone()).in_force(),
    };
    BandwidthStatus {
        limit_bytes_per_s: in_force.limit,
        rule: in_force.rule,
    }
}

/// The metrics' view of a report: one entry per configured folder.
pub fn folder_gauges(config: &Config, report: &StatusReport) -> Vec<FolderGauges> {
    config
        .folders
        .iter()
        .zip(&report.folders)
        .map(|(folder, status)| {
            let c = &status.counts;
            let uploads: Vec<&InFlight> = report
                .in_flight
                .iter()
                .filter(|u| u.folder == status.path)
                .collect();
            FolderGauges {
                folder: status.path.clone(),
                backend: folder.target.backend_name().to_string(),
                jobs_by_state: vec![
                    ("queued", c.queued),
                    ("active", c.active),
                    ("finalizing", c.finalizing),
                    ("importing", c.importing),
                    ("retry_wait", c.retry_wait),
                    ("failed", c.failed),
                    ("done", c.done),
                ],
                remote_check: status.remote_check.as_ref().map(|c| c.state.clone()),
                oldest_pending_age_s: status.oldest_pending_age_s.map(|s| s as f64),
                last_success_ms: status.last_success_ms,
                in_flight: uploads.len() as u64,
                in_flight_acknowledged_bytes: uploads.iter().map(|u| u.bytes_done).sum(),
                in_flight_size_bytes: uploads.iter().map(|u| u.bytes_total).sum(),
                deletions_held: c.held,
            }
        })
        .collect()
}

/// The metrics' view of the remotes: (backend, remote, up), a remote counting as up once
/// it has answered.
pub fn remote_gauges(report: &StatusReport) -> Vec<(String, String, bool)> {
    report
        .remotes
        .iter()
        .map(|r| {
            (
                r.backend.clone(),
                r.remote.clone(),
                r.state == "up" && r.answered,
            )
        })
        .collect()
}

/// One line of queue figures over all folders (systemd `STATUS=`, progress logs).
pub fn summary_line(report: &StatusReport) -> String {
    let mut total = FolderCounts::default();
    for folder in &report.folders {
        let c = &folder.counts;
        total.queued += c.queued;
        total.active += c.active;
        total.finalizing += c.finalizing;
        total.importing += c.importing;
        total.retry_wait += c.retry_wait;
        total.failed += c.failed;
        total.done += c.done;
    }
    let mut line = format!(
        "{} queued, {} uploading, {} importing, {} waiting to retry, {} failed, {} done",
        total.queued,
        total.active + total.finalizing,
        total.importing,
        total.retry_wait,
        total.failed,
        total.done
    );
    let oldest = report
        .folders
        .iter()
        .filter_map(|f| f.oldest_pending_age_s)
        .max();
    if let Some(age) = oldest {
        line.push_str(&format!("; oldest pending {}", format_age(age)));
    }
    line
}

fn format_age(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(crate::queue::from_ms(ms)).to_string()
}

/// A remote that is down, as the text report shows it.
fn remote_line(remote: &HealthSnapshot) -> String {
    let since = remote
        .since_ms
        .map_or_else(String::new, |ms| format!(" since {}", format_time(ms)));
    let probe = remote.next_probe_ms.map_or_else(String::new, |ms| {
        let left = ms.saturating_sub(to_ms(SystemTime::now())).div_ceil(1000);
        format!(", next probe in {left}s")
    });
    format!(
        "remote {} {}: {}{since}{probe}: {}",
        remote.backend,
        one_line(&remote.remote),
        remote.state,
        one_line(remote.last_error.as_deref().unwrap_or("no error recorded"))
    )
}

/// How an in-flight upload is doing: its rate and ETA, or the retry it waits for.
fn pace(upload: &InFlight) -> String {
    if let Some(retry) = &upload.retrying {
        return format!(
            "retrying (attempt {}, next in {}s): {}",
            retry.attempt,
            retry.next_in_s,
            one_line(&retry.last_error)
        );
    }
    let rate = upload.rate_bytes_per_s.map_or_else(
        || "rate unknown yet".to_string(),
        |r| format!("{}/s", bytesize::ByteSize(r)),
    );
    let eta = upload
        .eta_s
        .map_or_else(String::new, |s| format!(", {} left", format_age(s)));
    format!("{rate}{eta}")
}

/// When a retry-wait job is tried next, as far as the report knows: a time already past
/// is shown as what the job waits for instead (module doc, `retrying[].waits_for`).
fn next_try(job: &RetryingJob, report: &StatusReport) -> String {
    let at = (job.next_attempt_ms > report.generated_at_ms)
        .then(|| format!("at {}", format_time(job.next_attempt_ms)));
    let check = "once its folder's remote check passes";
    match (job.waits_for, at) {
        (Some(RetryHold::Remote), _) => "when its remote answers again".to_string(),
        (Some(RetryHold::RemoteCheck), Some(at)) => format!("{at}, {check}"),
        (Some(RetryHold::RemoteCheck), None) => check.to_string(),
        (None, Some(at)) => at,
        (None, None) if report.daemon == DaemonState::Running => "due now".to_string(),
        (None, None) => "at the next start".to_string(),
    }
}

/// `text` as one line that reads back to one text: line breaks, other control characters,
/// the characters that end or reorder a line (U+2028, U+2029, the bidirectional
/// controls) and the backslash itself are written as Rust's `escape_default` writes them
/// (`\n`, `\\`, `\u{1b}`). A file name may hold any of them; unescaped, a newline in a
/// path cut its status line in two.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// The human-readable form of a report, as `upsync status` prints it:
/// 1. the daemon's state and the bandwidth limit;
/// 2. a line per folder, with what needs attention under it;
/// 3. the remotes that are not up;
/// 4. the uploads in flight, and the jobs waiting to retry;
/// 5. the failed jobs, those of folders still configured first.
pub fn render_text(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    write_daemon(&mut out, report);
    for folder in &report.folders {
        write_folder(&mut out, folder);
    }
    for remote in report.remotes.iter().filter(|r| r.state != "up") {
        let _ = writeln!(out, "{}", remote_line(remote));
    }
    write_in_flight(&mut out, report);
    write_retrying(&mut out, report);
    // `retry` takes paths in configured folders only, and what `--all` queues of a
    // folder no longer configured fails again: those are told apart, with what helps.
    let (configured, unconfigured): (Vec<&FailedJob>, Vec<&FailedJob>) = report
        .failed
        .iter()
        .partition(|failed| failed.folder_configured);
    write_failed(
        &mut out,
        "failed (retry with `upsync retry -c FILE --all` or PATH...):",
        &configured,
    );
    write_failed(
        &mut out,
        "failed in folders no longer in the configuration (`upsync retry` cannot reach \
         them: put the folder back in the config and reload; the jobs failed for its removal \
         are queued again, retry the others then):",
        &unconfigured,
    );
    out
}

/// Step 1 of [`render_text`].
fn write_daemon(out: &mut String, report: &StatusReport) {
    use std::fmt::Write;
    let state = match report.daemon {
        DaemonState::Running => "running",
        DaemonState::Stopped => "not running (read from the state database)",
    };
    let _ = writeln!(out, "daemon: {state}");
    let limit = report.bandwidth.limit_bytes_per_s.map_or_else(
        || "unlimited".to_string(),
        |limit| format!("{}/s", bytesize::ByteSize(limit)),
    );
    match &report.bandwidth.rule {
        Some(rule) => {
            let _ = writeln!(out, "bandwidth: {limit} ({rule})");
        }
        None => {
            let _ = writeln!(out, "bandwidth: {limit}");
        }
    }
}

/// Step 2 of [`render_text`]: the folder's counts, its oldest pending file and last upload,
/// then what needs attention (a changed target, held deletions, a remote not ready).
fn write_folder(out: &mut String, folder: &FolderStatus) {
    use std::fmt::Write;
    let c = &folder.counts;
    let kind = folder
        .remote_kind
        .as_ref()
        .map_or_else(String::new, |kind| format!(" ({kind})"));
    let _ = writeln!(
        out,
        "{} → {}{kind}: {} queued, {} active, {} finalizing, {} importing, {} waiting to \
         retry, {} failed, {} done",
        one_line(&folder.path),
        one_line(&folder.target),
        c.queued,
        c.active,
        c.finalizing,
        c.importing,
        c.retry_wait,
        c.failed,
        c.done
    );
    let oldest = folder
        .oldest_pending_age_s
        .map_or_else(|| "none".to_string(), format_age);
    let last = folder
        .last_success_ms
        .map_or_else(|| "never".to_string(), format_time);
    let _ = writeln!(out, "  oldest pending file: {oldest}; last upload: {last}");
    if folder.target_changed {
        let _ = writeln!(
            out,
            "  target changed since its files were uploaded: none is done there; the next \
             start uploads them to it"
        );
    }
    if c.held > 0 {
        let _ = writeln!(
            out,
            "  {} deletions held by the mass-delete guard (max_delete): nothing is deleted \
             until `upsync retry --deletes` or a higher max_delete",
            c.held
        );
    } else if c.deletions > 0 {
        let _ = writeln!(out, "  {} remote copies to delete", c.deletions);
    }
    if let Some(check) = folder.remote_check.as_ref().filter(|c| c.state != "ready") {
        let _ = writeln!(
            out,
            "  remote {} since {}{}; its files wait",
            check.state,
            format_time(check.since_ms),
            check
                .reason
                .as_deref()
                .map_or_else(String::new, |reason| format!(": {}", one_line(reason)))
        );
    }
}

/// Step 4 of [`render_text`]: the uploads in flight, with their progress.
fn write_in_flight(out: &mut String, report: &StatusReport) {
    use std::fmt::Write;
    if report.in_flight.is_empty() {
        return;
    }
    let _ = writeln!(out, "uploading:");
    for upload in &report.in_flight {
        let percent = if upload.bytes_total == 0 {
            100.0
        } else {
            upload.bytes_done as f64 * 100.0 / upload.bytes_total as f64
        };
        let _ = writeln!(
            out,
            "  {} {}/{} ({percent:.0}%), {}",
            one_line(&upload.path),
            bytesize::ByteSize(upload.bytes_done),
            bytesize::ByteSize(upload.bytes_total),
            pace(upload)
        );
    }
}

/// Step 4 of [`render_text`]: the jobs waiting to retry, with when and why.
fn write_retrying(out: &mut String, report: &StatusReport) {
    use std::fmt::Write;
    if report.retrying.is_empty() {
        return;
    }
    let _ = writeln!(out, "waiting to retry:");
    for job in &report.retrying {
        let _ = writeln!(
            out,
            "  {} (attempt {} {}): {}",
            one_line(&job.path),
            job.attempts + 1,
            next_try(job, report),
            one_line(job.last_error.as_deref().unwrap_or("no error recorded"))
        );
    }
}

/// A heading and one line per failed job, unless there is none.
fn write_failed(out: &mut String, heading: &str, jobs: &[&FailedJob]) {
    use std::fmt::Write;
    if jobs.is_empty() {
        return;
    }
    let _ = writeln!(out, "{heading}");
    for failed in jobs {
        let _ = writeln!(
            out,
            "  {} (last attempt {}): {}",
            one_line(&failed.path),
            format_time(failed.last_attempt_ms.max(failed.failed_at_ms)),
            one_line(&failed.reason)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(live: &Arc<LiveProgress>, resumed: bool) -> InFlightStart {
        InFlightStart {
            path: "/d/big.bin".into(),
            folder: "/d".into(),
            pending_since_ms: 1_000,
            live: Arc::clone(live),
            resumed,
        }
    }

    #[test]
    fn a_fresh_upload_reports_its_average_rate_and_eta() {
        let registry = InFlightRegistry::default();
        let live = Arc::new(LiveProgress::default());
        live.set(0, 1000);
        registry.insert(JobId(1), start(&live, false));
        let first = registry.snapshot();
        assert_eq!(first[0].rate_bytes_per_s, None, "nothing acknowledged yet");
        std::thread::sleep(std::time::Duration::from_millis(200));
        live.set(500, 1000);
        let now = &registry.snapshot()[0];
        let rate = now
            .rate_bytes_per_s
            .expect("a rate once bytes were acknowledged");
        // 500 bytes in a bit more than 0.2 s.
        assert!((1000..=2500).contains(&rate), "{rate}");
        let eta = now.eta_s.expect("an ETA with a rate");
        assert!(eta <= 1, "{eta}");
        assert_eq!(now.folder, "/d");
    }

    #[test]
    fn a_resumed_upload_does_not_count_earlier_bytes_in_its_rate() {
        let registry = InFlightRegistry::default();
        let live = Arc::new(LiveProgress::default());
        live.set(0, 10_000_000);
        registry.insert(JobId(1), start(&live, true));
        // The first report after resuming includes everything sent by earlier attempts.
        live.set(9_000_000, 10_000_000);
        assert_eq!(registry.snapshot()[0].rate_bytes_per_s, None);
        std::thread::sleep(std::time::Duration::from_millis(200));
        live.set(9_000_100, 10_000_000);
        let rate = registry.snapshot()[0].rate_bytes_per_s.unwrap();
        assert!(rate <= 600, "{rate}");
    }

    #[test]
    fn an_upload_retrying_in_place_shows_the_retry_instead_of_a_rate() {
        let registry = InFlightRegistry::default();
        let live = Arc::new(LiveProgress::default());
        live.set(100, 1000);
        registry.insert(JobId(1), start(&live, false));
        live.note_retry(crate::upload::RetryNote {
            attempt: 2,
            next_at: SystemTime::now() + std::time::Duration::from_millis(2500),
            last_error: "KiFS /upload/files: HTTP 503".into(),
        });
        let upload = &registry.snapshot()[0];
        let retry = upload.retrying.as_ref().expect("the retry is shown");
        assert_eq!(retry.attempt, 2);
        assert_eq!(retry.next_in_s, 3);
        assert_eq!(
            pace(upload),
            "retrying (attempt 2, next in 3s): KiFS /upload/files: HTTP 503"
        );
        live.clear_retry();
        assert!(registry.snapshot()[0].retrying.is_none());
    }

    #[test]
    fn one_line_escapes_what_would_break_or_blur_a_line_and_nothing_else() {
        assert!(matches!(
            one_line("/d/plain é 名 'x'.csv"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            one_line("/d/a\nb\tc\r\u{1b}[31m.csv"),
            "/d/a\\nb\\tc\\r\\u{1b}[31m.csv"
        );
        assert_eq!(
            one_line("/d/a\\nb"),
            "/d/a\\\\nb",
            "a backslash in a name cannot pass for an escape"
        );
        assert_eq!(one_line("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
    }

    fn report_with(daemon: DaemonState, retrying: Vec<RetryingJob>) -> StatusReport {
        StatusReport {
            daemon,
            generated_at_ms: 1_000_000,
            folders: vec![],
            in_flight: vec![],
            failed: vec![],
            retrying,
            bandwidth: BandwidthStatus::default(),
            remotes: vec![],
        }
    }

    fn waiting(next_attempt_ms: u64, waits_for: Option<RetryHold>) -> RetryingJob {
        RetryingJob {
            path: "/d/a.csv".into(),
            attempts: 2,
            next_attempt_ms,
            last_error: Some("HTTP 503".into()),
            waits_for,
        }
    }

    #[test]
    fn a_retry_shows_what_it_waits_for_instead_of_a_time_gone_by() {
        let running = |job| {
            let report = report_with(DaemonState::Running, vec![job]);
            next_try(&report.retrying[0], &report)
        };
        let later = 1_000_000 + 60_000;
        assert_eq!(
            running(waiting(later, None)),
            format!("at {}", format_time(later))
        );
        assert_eq!(running(waiting(999_000, None)), "due now");
        assert_eq!(
            running(waiting(999_000, Some(RetryHold::Remote))),
            "when its remote answers again"
        );
        assert_eq!(
            running(waiting(later, Some(RetryHold::Remote))),
            "when its remote answers again",
            "a remote that answers again makes every waiting file due"
        );
        assert_eq!(
            running(waiting(999_000, Some(RetryHold::RemoteCheck))),
            "once its folder's remote check passes"
        );
        let stopped = report_with(DaemonState::Stopped, vec![waiting(999_000, None)]);
        assert_eq!(
            next_try(&stopped.retrying[0], &stopped),
            "at the next start"
        );
        assert!(
            render_text(&stopped).contains("  /d/a.csv (attempt 3 at the next start): HTTP 503\n")
        );
    }

    #[test]
    fn activity_keeps_the_newest_success_per_folder_across_seeding() {
        let activity = Activity::default();
        activity.record_success("/a", 2_000, 10);
        activity.seed(BTreeMap::from([
            ("/a".to_string(), 1_000),
            ("/b".to_string(), 5),
        ]));
        let last = activity.last_success();
        assert_eq!(last["/a"], 2_000);
        assert_eq!(last["/b"], 5);
        assert_eq!(activity.uploaded(), (1, 10));
    }

    #[test]
    fn the_summary_line_adds_up_every_folder() {
        let folder = |queued, age| FolderStatus {
            path: "/x".into(),
            target: "kifs x/".into(),
            remote_kind: None,
            counts: FolderCounts {
                queued,
                done: 2,
                ..FolderCounts::default()
            },
            oldest_pending_age_s: age,
            last_success_ms: None,
            remote_check: None,
            target_changed: false,
        };
        let report = StatusReport {
            daemon: DaemonState::Running,
            generated_at_ms: 0,
            folders: vec![folder(1, Some(90)), folder(2, None)],
            in_flight: vec![],
            failed: vec![],
            retrying: vec![],
            bandwidth: BandwidthStatus::default(),
            remotes: vec![],
        };
        assert_eq!(
            summary_line(&report),
            "3 queued, 0 uploading, 0 importing, 0 waiting to retry, 0 failed, 4 done; oldest pending 1m 30s"
        );
    }

    #[test]
    fn a_failure_reported_without_folder_configured_counts_as_in_a_configured_folder() {
        let older = r#"{ "path": "/data/x/a_b.csv", "reason": "refused", "failed_at_ms": 1,
                         "last_attempt_ms": 1, "attempts": 1 }"#;
        let failed: FailedJob = serde_json::from_str(older).expect("an older report reads");
        assert!(failed.folder_configured);
    }
}
