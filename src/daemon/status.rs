//! The status report: one schema for `upsync status`, whether the daemon answers it over
//! the control socket or it is read straight from a stopped daemon's state database.
//!
//! JSON schema (stable; fields are only ever added):
//! ```json
//! { "daemon": "running" | "stopped",
//!   "folders": [ { "path": "/data/x", "target": "kifs ingest/",
//!                  "queued": 0, "active": 0, "finalizing": 0, "retry_wait": 0,
//!                  "failed": 0, "done": 12 } ],
//!   "in_flight": [ { "path": "/data/x/big.bin", "bytes_done": 1048576, "bytes_total": 4194304 } ],
//!   "failed": [ { "path": "/data/x/a_b.csv", "reason": "…", "failed_at_ms": 1700000000000,
//!                 "attempts": 1 } ] }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Target};
use crate::queue::{FolderCounts, JobId, JobState, Store, StoreError};
use crate::upload::LiveProgress;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon: DaemonState,
    pub folders: Vec<FolderStatus>,
    pub in_flight: Vec<InFlight>,
    pub failed: Vec<FailedJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderStatus {
    pub path: String,
    pub target: String,
    #[serde(flatten)]
    pub counts: FolderCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    pub path: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedJob {
    pub path: String,
    pub reason: String,
    pub failed_at_ms: u64,
    pub attempts: u32,
}

/// Uploads in progress, by job, with the file path they are sending.
#[derive(Default)]
pub struct InFlightRegistry {
    entries: Mutex<BTreeMap<JobId, (String, Arc<LiveProgress>)>>,
}

impl InFlightRegistry {
    pub fn insert(&self, id: JobId, path: String, live: Arc<LiveProgress>) {
        self.lock().insert(id, (path, live));
    }

    pub fn remove(&self, id: JobId) {
        self.lock().remove(&id);
    }

    fn snapshot(&self) -> Vec<InFlight> {
        self.lock()
            .values()
            .map(|(path, live)| InFlight {
                path: path.clone(),
                bytes_done: live.bytes_done.load(Ordering::Relaxed),
                bytes_total: live.bytes_total.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, (String, Arc<LiveProgress>)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub fn describe_target(target: &Target) -> String {
    match target {
        Target::KifsDirectory { directory, .. } => format!("kifs {directory}/"),
        Target::RedivisTable(table) => format!("redivis {table}"),
    }
}

/// Builds the report from the store (and the in-flight registry when the daemon runs).
pub fn build_report(
    config: &Config,
    store: &Store,
    in_flight: Option<&InFlightRegistry>,
) -> Result<StatusReport, StoreError> {
    let counts = store.counts()?;
    let folders = config
        .folders
        .iter()
        .map(|folder| {
            let key = folder.path.to_string_lossy().into_owned();
            FolderStatus {
                counts: counts.get(&key).cloned().unwrap_or_default(),
                target: describe_target(&folder.target),
                path: key,
            }
        })
        .collect();
    let failed = store
        .jobs()?
        .into_iter()
        .filter_map(|job| match job.state {
            JobState::Failed {
                reason,
                failed_at_ms,
            } => Some(FailedJob {
                path: Path::new(&job.key.folder)
                    .join(&job.key.rel)
                    .display()
                    .to_string(),
                reason,
                failed_at_ms,
                attempts: job.attempts,
            }),
            _ => None,
        })
        .collect();
    Ok(StatusReport {
        daemon: if in_flight.is_some() {
            DaemonState::Running
        } else {
            DaemonState::Stopped
        },
        folders,
        in_flight: in_flight
            .map(InFlightRegistry::snapshot)
            .unwrap_or_default(),
        failed,
    })
}

/// The human-readable form of a report.
pub fn render_text(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = match report.daemon {
        DaemonState::Running => "running",
        DaemonState::Stopped => "not running (read from the state database)",
    };
    let _ = writeln!(out, "daemon: {state}");
    for folder in &report.folders {
        let c = &folder.counts;
        let _ = writeln!(
            out,
            "{} → {}: {} queued, {} active, {} finalizing, {} waiting to retry, {} failed, {} done",
            folder.path,
            folder.target,
            c.queued,
            c.active,
            c.finalizing,
            c.retry_wait,
            c.failed,
            c.done
        );
    }
    if !report.in_flight.is_empty() {
        let _ = writeln!(out, "uploading:");
        for upload in &report.in_flight {
            let percent = if upload.bytes_total == 0 {
                100.0
            } else {
                upload.bytes_done as f64 * 100.0 / upload.bytes_total as f64
            };
            let _ = writeln!(
                out,
                "  {} {}/{} ({percent:.0}%)",
                upload.path,
                bytesize::ByteSize(upload.bytes_done),
                bytesize::ByteSize(upload.bytes_total)
            );
        }
    }
    if !report.failed.is_empty() {
        let _ = writeln!(
            out,
            "failed (retry with `upsync retry -c FILE --all` or PATH...):"
        );
        for failed in &report.failed {
            let _ = writeln!(out, "  {}: {}", failed.path, failed.reason);
        }
    }
    out
}
