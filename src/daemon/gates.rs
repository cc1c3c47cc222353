//! Whether each folder's remote can take its files: every folder's remote check, run in the
//! background (the start never waits for a remote), and what it found.
//!
//! The check of one folder ([`check_folder`]):
//! 1. The folder starts `Checking`; its jobs wait (they are not claimed, and not failed).
//! 2. Ask the backend (`prepare_folder`: the KiFS directory exists and is writable, created
//!    when the folder says so; the Redivis table is reachable with the token), under the
//!    backend's in-place retry policy.
//! 3. Passed: `Ready`, and idle workers are woken. The check ends.
//! 4. A definitive refusal (missing directory, no write permission, rejected credentials,
//!    unknown table): `Refused` with the reason, logged once. Checked again every
//!    [`REFUSED_RECHECK`] and at every reload (SIGHUP), so fixing the remote or the config
//!    unblocks the folder without a restart.
//! 5. Anything else (the remote unreachable, 5xx): still `Checking`, with the last error;
//!    tried again after a pause (1 s doubling to 20 s), at once when the remote is seen
//!    answering again, or at a reload.
//!
//! `Waiting` is for a remote that cannot take the folder's files for a known reason that is
//! not an error (a Redivis dataset without an unreleased version): the folder's jobs wait,
//! the status says why, the change is logged once, and the remote is checked again every
//! [`WAITING_RECHECK`] and at a reload. A ready folder goes back to waiting when an upload
//! meets that reason, and to refused when an upload is refused for its credentials or
//! permissions (they changed since the check): [`FolderGates::set_back`]. A folder whose
//! check opens the dataset's next version itself (`create_next_version`) waits for no one:
//! its setback by a release is told at info, the opening of the version by its check.
//! The worker whose upload met the setback closes the folder first and only then makes the
//! upload's job due again: in the other order, an idle worker's poll could claim the job
//! in between and send it once more to the remote that just turned it away.
//! Shutdown ends every check at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::FolderConfig;
use crate::queue::to_ms;
use crate::upload::backoff::Backoff;
use crate::upload::redivis::versions::{NEXT_VERSION_OPENED, NO_NEXT_VERSION};
use crate::upload::retry::CallScope;
use crate::upload::{Backend, Disposition, UploadError};

/// How often a refused folder's remote is checked again.
pub const REFUSED_RECHECK: Duration = Duration::from_secs(300);
/// How often a waiting folder's remote is checked again: one cheap request, and the wait
/// (a dataset without an unreleased version) usually ends by someone's hand at any time.
pub const WAITING_RECHECK: Duration = Duration::from_secs(60);
/// Pauses between checks of an unreachable remote: 1 s doubling up to this (a check also
/// runs at once when the remote's probe finds it back).
const UNREACHABLE_RECHECK_MAX: Duration = Duration::from_secs(20);

/// Where a folder's remote check stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Checking { last_error: Option<String> },
    Ready,
    Refused { reason: String },
    Waiting { reason: String },
}

/// What an upload of a ready folder met that concerns the whole folder
/// ([`FolderGates::set_back`]).
#[derive(Debug, Clone, Copy)]
pub enum Setback<'a> {
    /// The remote cannot take the folder's files for now, for this reason (a Redivis
    /// dataset without an unreleased version): the folder waits, checked again at once.
    Waiting(&'a str),
    /// The remote refused the upload's credentials or permissions, with this answer: they
    /// changed since the check passed (a token revoked or rotated, a permission withdrawn).
    /// The folder is refused as if its check had found it so, and checked again after
    /// [`REFUSED_RECHECK`] or at a reload; its files wait meanwhile instead of failing one
    /// by one. The check waits first so that credentials the check accepts and uploads do
    /// not (a token without the scope to write) cost one refused upload per pause, not a
    /// loop of them.
    Refused(&'a str),
}

/// A folder's gate as `upsync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    /// `checking`, `ready`, `refused` or `waiting`.
    pub state: String,
    /// Why the folder's jobs wait (the refusal, the last error of an unreachable remote).
    pub reason: Option<String>,
    /// Since when the folder is in this state (ms since the epoch).
    pub since_ms: u64,
}

impl Gate {
    pub fn name(&self) -> &'static str {
        match self {
            Gate::Checking { .. } => "checking",
            Gate::Ready => "ready",
            Gate::Refused { .. } => "refused",
            Gate::Waiting { .. } => "waiting",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Gate::Checking { last_error } => last_error.as_deref(),
            Gate::Ready => None,
            Gate::Refused { reason } | Gate::Waiting { reason } => Some(reason),
        }
    }
}

struct Entry {
    gate: Gate,
    since_ms: u64,
    /// Ends this folder's check (folder removed, or checked anew).
    stop: CancellationToken,
}

/// The gates of the configured folders, by queue key (the folder's path).
#[derive(Default)]
pub struct FolderGates {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Asks every waiting check to try again now (a reload).
    recheck: Notify,
}

impl FolderGates {
    /// Whether the folder's jobs may be claimed. A folder without a gate has not been
    /// configured (its jobs are claimed to be failed with the reason).
    pub fn is_ready(&self, folder: &std::path::Path) -> bool {
        let key = folder.to_string_lossy();
        self.lock()
            .get(key.as_ref())
            .is_none_or(|entry| entry.gate == Gate::Ready)
    }

    pub fn status(&self, folder: &str) -> Option<GateStatus> {
        self.lock().get(folder).map(|entry| GateStatus {
            state: entry.gate.name().to_string(),
            reason: entry.gate.reason().map(str::to_string),
            since_ms: entry.since_ms,
        })
    }

    /// Each folder's gate by queue key.
    pub fn snapshot(&self) -> BTreeMap<String, Gate> {
        self.lock()
            .iter()
            .map(|(folder, entry)| (folder.clone(), entry.gate.clone()))
            .collect()
    }

    /// Makes `folder` wait for `reason` (see the module doc).
    pub fn wait(&self, folder: &str, reason: &str) {
        self.set(
            folder,
            Gate::Waiting {
                reason: reason.to_string(),
            },
        );
    }

    /// Starts checking `folder` (again): a new gate in `Checking`, and a task that runs the
    /// check until the folder is ready, `stop` is cancelled or the folder is checked anew.
    pub fn start(
        self: &Arc<Self>,
        folder: FolderConfig,
        backend: Arc<Backend>,
        wake: Arc<Notify>,
        stop: &CancellationToken,
    ) {
        let key = folder.path.to_string_lossy().into_owned();
        let token = stop.child_token();
        let previous = self.lock().insert(
            key,
            Entry {
                gate: Gate::Checking { last_error: None },
                since_ms: to_ms(SystemTime::now()),
                stop: token.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        self.spawn_check(folder, backend, wake, token);
    }

    /// A ready folder one of whose uploads met `setback`: the folder waits or is refused
    /// ([`Setback`]) and its check starts again. Several uploads meeting it at once start
    /// one check: a folder that is no longer ready is left as it is.
    pub fn set_back(
        self: &Arc<Self>,
        folder: &FolderConfig,
        backend: Arc<Backend>,
        wake: Arc<Notify>,
        stop: &CancellationToken,
        setback: Setback<'_>,
    ) {
        let key = folder.path.to_string_lossy().into_owned();
        let token = stop.child_token();
        let (gate, first_wait) = match setback {
            Setback::Waiting(reason) => (
                Gate::Waiting {
                    reason: reason.to_string(),
                },
                None,
            ),
            Setback::Refused(reason) => (
                Gate::Refused {
                    reason: reason.to_string(),
                },
                Some(REFUSED_RECHECK),
            ),
        };
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(&key) else {
                return;
            };
            if entry.gate != Gate::Ready {
                return;
            }
            entry.gate = gate;
            entry.since_ms = to_ms(SystemTime::now());
            entry.stop = token.clone();
        }
        match setback {
            Setback::Waiting(reason) if opens_next_version(folder, reason) => {
                log_opening_next_version(&key)
            }
            Setback::Waiting(reason) if reason == NEXT_VERSION_OPENED => {
                log_next_version_open(&key)
            }
            Setback::Waiting(reason) => log_waiting(&key, reason),
            Setback::Refused(reason) => log_refused(&key, reason),
        }
        let check = Check {
            gates: Arc::clone(self),
            folder: folder.clone(),
            backend,
            wake,
            stop: token,
        };
        tokio::spawn(check_folder(check, first_wait));
    }

    /// Runs the check of `folder` in a task of its own until `stop`.
    fn spawn_check(
        self: &Arc<Self>,
        folder: FolderConfig,
        backend: Arc<Backend>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let check = Check {
            gates: Arc::clone(self),
            folder,
            backend,
            wake,
            stop,
        };
        tokio::spawn(check_folder(check, None));
    }

    /// Forgets the folders not in `keep` (removed by a reload) and ends their checks.
    pub fn retain(&self, keep: &[String]) {
        self.lock().retain(|folder, entry| {
            let kept = keep.contains(folder);
            if !kept {
                entry.stop.cancel();
            }
            kept
        });
    }

    /// Tells every check still waiting to try again now.
    pub fn recheck(&self) {
        self.recheck.notify_waiters();
    }

    /// Gives `folder` the gate `gate` without a check behind it: what a test needs to see
    /// how others read a gate.
    #[cfg(test)]
    pub(crate) fn put(&self, folder: &str, gate: Gate) {
        self.lock().insert(
            folder.to_string(),
            Entry {
                gate,
                since_ms: to_ms(SystemTime::now()),
                stop: CancellationToken::new(),
            },
        );
    }

    /// Records a new gate for the folder; returns whether it changed.
    fn set(&self, folder: &str, gate: Gate) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(folder) else {
            return false;
        };
        if entry.gate == gate {
            return false;
        }
        if entry.gate.name() != gate.name() {
            entry.since_ms = to_ms(SystemTime::now());
        }
        entry.gate = gate;
        true
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Plain values: a panicking holder cannot leave them half-changed.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One folder's check task and what it needs.
struct Check {
    gates: Arc<FolderGates>,
    folder: FolderConfig,
    backend: Arc<Backend>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl Check {
    fn key(&self) -> String {
        self.folder.path.to_string_lossy().into_owned()
    }

    /// Waits `pause`, or less when a reload asks again, the remote is seen answering
    /// again (`after_remote`), or the check is stopped; false when stopped.
    async fn wait(&self, pause: Duration, after_remote: bool) -> bool {
        let health = self.backend.health();
        let came_back = async {
            if after_remote && !health.is_up() {
                health.came_up().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.gates.recheck.notified() => true,
            _ = came_back => true,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

/// The check loop of one folder (module doc, steps 2 to 5), after `first_wait` if given.
async fn check_folder(check: Check, first_wait: Option<Duration>) {
    if let Some(pause) = first_wait
        && !check.wait(pause, false).await
    {
        return;
    }
    let scope = CallScope::until(check.stop.clone());
    let key = check.key();
    let mut backoff = Backoff::new(Duration::from_secs(1), UNREACHABLE_RECHECK_MAX);
    loop {
        let outcome = check.backend.prepare_folder(&check.folder, &scope).await;
        if check.stop.is_cancelled() {
            return;
        }
        let (pause, after_remote) = match outcome {
            Ok(()) => {
                if check.gates.set(&key, Gate::Ready) {
                    tracing::info!(folder = %key, "the folder's remote is ready");
                }
                check.wake.notify_waiters();
                return;
            }
            Err(UploadError::Shutdown) => return,
            Err(UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
                ..
            }) => {
                if check.gates.set(
                    &key,
                    Gate::Refused {
                        reason: message.clone(),
                    },
                ) {
                    log_refused(&key, &message);
                }
                backoff.reset();
                (REFUSED_RECHECK, false)
            }
            Err(UploadError::Waiting(reason)) => {
                if check.gates.set(
                    &key,
                    Gate::Waiting {
                        reason: reason.clone(),
                    },
                ) {
                    log_waiting(&key, &reason);
                }
                backoff.reset();
                (WAITING_RECHECK, false)
            }
            Err(err) => {
                let last_error = Some(err.to_string());
                check.gates.set(&key, Gate::Checking { last_error });
                tracing::debug!(folder = %key, error = %err, "cannot check the folder's remote yet");
                (backoff.next_delay(None, &mut rand::rng()), true)
            }
        };
        if !check.wait(pause, after_remote).await {
            return;
        }
    }
}

/// The one line a folder's change to `Refused` gets.
fn log_refused(folder: &str, reason: &str) {
    tracing::error!(
        folder,
        reason,
        recheck_in_s = REFUSED_RECHECK.as_secs(),
        "the folder's remote refuses it; its files wait until the remote or the config is \
         fixed (checked again periodically and at a reload)"
    );
}

/// Whether the check that follows a setback for `reason` opens the dataset's next version
/// itself (`create_next_version`): then the folder waits for no one, only for its check.
fn opens_next_version(folder: &FolderConfig, reason: &str) -> bool {
    folder.redivis.create_next_version && reason == NO_NEXT_VERSION
}

/// The line of a release met by an upload of a folder that opens the next version itself,
/// instead of a warning that it waits.
fn log_opening_next_version(folder: &str) {
    tracing::info!(
        folder,
        "the dataset's unreleased version was released; the folder opens a new one \
         (create_next_version) and its files go into it"
    );
}

/// The line of an upload refused in the moment between a release and the opening of the
/// next version, which is open now: the folder waits only for its check, for no one.
fn log_next_version_open(folder: &str) {
    tracing::info!(
        folder,
        "the dataset's unreleased version was released during an upload and a new one is \
         open; the folder's files go into it"
    );
}

/// The one line a folder's change to `Waiting` gets.
fn log_waiting(folder: &str, reason: &str) {
    tracing::warn!(
        folder,
        reason,
        recheck_in_s = WAITING_RECHECK.as_secs(),
        "the folder waits: its files stay queued and go as soon as the remote takes them \
         (checked again periodically and at a reload)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_or_unconfigured_folder_is_claimable() {
        let gates = FolderGates::default();
        gates.lock().insert(
            "/a".into(),
            Entry {
                gate: Gate::Checking { last_error: None },
                since_ms: 1,
                stop: CancellationToken::new(),
            },
        );
        assert!(!gates.is_ready(std::path::Path::new("/a")));
        assert!(gates.is_ready(std::path::Path::new("/not-configured")));
        assert!(gates.set(
            "/a",
            Gate::Refused {
                reason: "403".into()
            }
        ));
        assert!(
            !gates.set(
                "/a",
                Gate::Refused {
                    reason: "403".into()
                }
            ),
            "no change"
        );
        let status = gates.status("/a").expect("configured");
        assert_eq!(status.state, "refused");
        assert_eq!(status.reason.as_deref(), Some("403"));
        gates.wait("/a", "the dataset has no unreleased version");
        assert_eq!(gates.status("/a").unwrap().state, "waiting");
        assert!(gates.set("/a", Gate::Ready));
        assert!(gates.is_ready(std::path::Path::new("/a")));
        gates.retain(&[]);
        assert!(gates.status("/a").is_none());
    }
}
