//! The remotes the daemon uploads to, and what happens while one is down.
//!
//! Each backend keeps the health of its remote ([`RemoteHealth`], fed by every request it
//! sends). While a remote is down its folders' jobs are not claimed ([`super::schedule`]),
//! in-place retries on it give up at once, and one watcher per remote ([`watch_remote`]):
//! 1. Waits until the remote is down.
//! 2. Probes it: one cheap, unretried request about one of its folders, after a pause of
//!    1 s doubling up to [`PROBE_MAX`] (when the next one is due is shown by `status`).
//!    Shutdown ends the pause.
//! 3. On the first answer (a probe's, or a request still in flight), the remote is up:
//!    every retry-wait job of its folders is made due now and idle workers are woken, so
//!    uploads resume within seconds of the remote's return, however long it was away.
//!    Back to 1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::CurrentConfig;
use crate::config::{FolderConfig, Target};
use crate::queue::Store;
use crate::upload::Backend;
use crate::upload::Backends;
use crate::upload::backoff::Backoff;
use crate::upload::health::{HealthSnapshot, RemoteHealth};

/// The longest pause between two probes of a down remote: after an outage of any length,
/// uploads resume within this (plus one upload) of the remote's return.
pub const PROBE_MAX: Duration = Duration::from_secs(20);
const PROBE_FIRST: Duration = Duration::from_secs(1);

/// The remotes being watched (one per backend in use), and the backends themselves for
/// what they learned about each target (a Redivis table's kind).
#[derive(Default)]
pub struct Remotes {
    watched: Mutex<Vec<Watched>>,
    backends: Mutex<Option<Backends>>,
}

struct Watched {
    health: Arc<RemoteHealth>,
    stop: CancellationToken,
}

/// What a watcher needs besides its remote.
#[derive(Clone)]
pub(crate) struct WatchContext {
    pub(crate) config: CurrentConfig,
    pub(crate) store: Store,
    pub(crate) wake: Arc<Notify>,
}

impl Remotes {
    /// Watches the remotes of `backends`, and stops watching those of backends no longer
    /// in use (a reload built them anew).
    pub(crate) fn watch(
        &self,
        backends: &Backends,
        context: &WatchContext,
        stop: &CancellationToken,
    ) {
        let current: Vec<Arc<Backend>> = [&backends.kifs, &backends.redivis]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        *self.backends.lock().unwrap_or_else(|p| p.into_inner()) = Some(backends.clone());
        let mut watched = self.lock();
        watched.retain(|w| {
            let kept = current
                .iter()
                .any(|backend| Arc::ptr_eq(backend.health(), &w.health));
            if !kept {
                w.stop.cancel();
            }
            kept
        });
        for backend in current {
            if watched
                .iter()
                .any(|w| Arc::ptr_eq(&w.health, backend.health()))
            {
                continue;
            }
            let token = stop.child_token();
            watched.push(Watched {
                health: Arc::clone(backend.health()),
                stop: token.clone(),
            });
            tokio::spawn(watch_remote(backend, context.clone(), token));
        }
    }

    /// Each watched remote as `status` shows it.
    pub fn snapshot(&self) -> Vec<HealthSnapshot> {
        self.lock().iter().map(|w| w.health.snapshot()).collect()
    }

    /// What `target` is, when its backend knows (`status`'s `remote_kind`).
    pub fn kind(&self, target: &Target) -> Option<&'static str> {
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        backends.as_ref()?.for_target(target)?.target_kind(target)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        // Plain values: a panicking holder cannot leave them half-changed.
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The configured folders whose target is on `backend`'s remote.
fn folders_on(backend: &Backend, context: &WatchContext) -> Vec<FolderConfig> {
    context
        .config
        .get()
        .folders
        .iter()
        .filter(|folder| {
            matches!(
                (backend, &folder.target),
                (Backend::Kifs(_), Target::KifsDirectory { .. })
                    | (Backend::Redivis(_), Target::RedivisTable(_))
            )
        })
        .cloned()
        .collect()
}

/// The watcher of one remote (module doc).
async fn watch_remote(backend: Arc<Backend>, context: WatchContext, stop: CancellationToken) {
    let health = Arc::clone(backend.health());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = health.went_down() => {}
        }
        if !probe_until_up(&backend, &context, &stop).await {
            return;
        }
        release(&backend, &context).await;
    }
}

/// Step 2: probes until the remote answers; false when stopped first.
async fn probe_until_up(
    backend: &Backend,
    context: &WatchContext,
    stop: &CancellationToken,
) -> bool {
    let health = backend.health();
    let mut backoff = Backoff::new(PROBE_FIRST, PROBE_MAX);
    while !health.is_up() {
        let pause = backoff.next_delay(None, &mut rand::rng());
        health.set_next_probe(Some(SystemTime::now() + pause));
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = health.came_up() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        let Some(folder) = folders_on(backend, context).into_iter().next() else {
            // No folder uses this remote any more: nothing waits for it.
            health.answered();
            break;
        };
        match backend.probe(&folder.target).await {
            Ok(()) => health.answered(),
            Err(error) => {
                tracing::debug!(backend = health.backend(), remote = %health.endpoint(), %error, "the remote is still down")
            }
        }
    }
    health.set_next_probe(None);
    true
}

/// Step 3: the remote's waiting jobs are due now, and idle workers look at them.
async fn release(backend: &Backend, context: &WatchContext) {
    let folders: Vec<String> = folders_on(backend, context)
        .iter()
        .map(|folder| folder.path.to_string_lossy().into_owned())
        .collect();
    let store = context.store.clone();
    let released =
        tokio::task::spawn_blocking(move || store.release_waiting(&folders, store.now())).await;
    match released {
        Ok(Ok(jobs)) => {
            let health = backend.health();
            tracing::info!(backend = health.backend(), remote = %health.endpoint(), jobs, "the remote is back; its waiting files are due now");
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot make the waiting files of a remote that is back due now")
        }
        Err(err) => tracing::warn!(error = %err, "releasing the waiting files failed"),
    }
    context.wake.notify_waiters();
    context.wake.notify_one();
}
