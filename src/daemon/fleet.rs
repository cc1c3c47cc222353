//! The running watchers and workers, how a config reload (SIGHUP) changes them, and the
//! shutdown sequence that stops them.
//!
//! Reload:
//! 1. Read and validate the config file again (folders may be missing: they are watched
//!    once they appear). An invalid file is logged with its error and changes nothing.
//! 2. `state_dir`, `metrics_listen` and `[emulator]` cannot change while running: a change
//!    is logged and the running value kept (restart to apply it).
//! 3. A backend whose section changed (network keys included) is built anew. The
//!    bandwidth limit or timetable of an accepted reload applies from the next piece of
//!    every request body.
//! 4. Watchers of removed or changed folders stop; added or changed folders get a new
//!    watcher (which scans them). Unchanged folders keep their watcher. A folder given
//!    another target first drops its ledger ([`super::retarget`]), so its scan queues its
//!    files for the new target.
//! 5. Remote checks ([`super::gates`]): added folders and folders whose backend was built
//!    anew are checked from the start; removed folders' checks end; every check still
//!    waiting (a refused folder, an unreachable remote) tries again now. A refused folder
//!    does not reject the reload: its files wait and `status` says why.
//! 6. A new generation of workers starts with the new config; the previous one stops
//!    claiming and its workers exit once their current upload ends, so for that moment
//!    more than `concurrency` uploads can run.
//!
//! A secret read from a file (`token_file`, `password_file`) is read again every few
//! seconds (module `secrets`): a rotated one takes steps 3 to 6 with the running
//! configuration and the new secret, without reading the config file.
//!
//! The queue is never touched by a reload otherwise: jobs of kept folders stay queued. A job whose
//! folder was removed fails with [`FOLDER_REMOVED`] when a worker claims it, keeping the
//! upload an earlier attempt saved; it is queued again when a reload (or a restart) brings
//! its folder back, and its next attempt resumes that upload or gives it up.
//!
//! Shutdown: stop claiming, end every pause (retries, remote checks and probes, import
//! waits) and stop the watchers, give in-flight uploads `shutdown_timeout` (minus a short
//! checkpoint margin) to finish, then ask them to checkpoint, abort what is still running
//! when the deadline passes (safe: progress is only ever persisted after the remote
//! acknowledged it) and flush the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::CurrentConfig;
use super::DaemonError;
use super::imports::Imports;
use super::remotes;
use super::schedule::Schedule;
use super::status::Live;
use super::worker::{FOLDER_REMOVED, Filters, Worker};
use crate::config::{Config, FolderConfig, KifsAuth, KifsConfig, LoadOptions, RedivisConfig};
use crate::metrics::Metrics;
use crate::queue::{JobState, RetrySelection, Store};
use crate::upload::Backends;
use crate::watch::{self, ScanSummary, WatchContext};

struct FolderWatch {
    folder: FolderConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub(super) struct Fleet {
    pub config: Arc<Config>,
    /// Where the reports read the configuration: replaced with `config` at each reload.
    pub current: CurrentConfig,
    store: Store,
    backends: Backends,
    wake: Arc<Notify>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// Parent of every worker generation's token: cancelled once, at shutdown.
    stop_claiming: CancellationToken,
    /// Asks in-flight uploads to checkpoint and return.
    interrupt: CancellationToken,
    /// Parent of every watcher's token.
    stop_watching: CancellationToken,
    /// Parent of every remote check's token.
    stop_checking: CancellationToken,
    /// Whose turn it is to be claimed from, shared by every worker generation.
    schedule: Arc<Schedule>,
    /// Posted uploads waiting for their import.
    imports: Arc<Imports>,
    /// The current worker generation's token.
    generation: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    watchers: Vec<FolderWatch>,
    /// Watchers of removed folders, still finishing.
    retired: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn new(
        current: CurrentConfig,
        store: Store,
        backends: Backends,
        wake: Arc<Notify>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        stop_watching: CancellationToken,
    ) -> Fleet {
        let stop_claiming = CancellationToken::new();
        let stop_checking = CancellationToken::new();
        let imports = Arc::new(Imports::new(
            store.clone(),
            Arc::clone(&live),
            Arc::clone(&metrics),
            Arc::clone(&wake),
            stop_checking.child_token(),
        ));
        Fleet {
            generation: stop_claiming.child_token(),
            config: current.get(),
            current,
            store,
            backends,
            wake,
            live,
            metrics,
            stop_claiming,
            interrupt: CancellationToken::new(),
            stop_watching,
            stop_checking,
            schedule: Arc::new(Schedule::default()),
            imports,
            workers: Vec::new(),
            watchers: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Starts a watcher for every configured folder; returns, per folder, the channel its
    /// start-up scan summary arrives on.
    pub fn start_watchers(&mut self) -> Vec<(String, tokio::sync::oneshot::Receiver<ScanSummary>)> {
        let folders = self.config.folders.clone();
        folders
            .into_iter()
            .map(|folder| {
                let name = folder.path.display().to_string();
                (name, self.spawn_watcher(folder))
            })
            .collect()
    }

    fn spawn_watcher(
        &mut self,
        folder: FolderConfig,
    ) -> tokio::sync::oneshot::Receiver<ScanSummary> {
        let (scanned_tx, scanned_rx) = tokio::sync::oneshot::channel();
        let stop = self.stop_watching.child_token();
        let ctx = WatchContext {
            store: self.store.clone(),
            wake: Arc::clone(&self.wake),
            shutdown: stop.clone(),
            rescan_interval: self.config.rescan_interval,
        };
        let task = tokio::spawn(watch::run_folder(folder.clone(), ctx, scanned_tx));
        self.watchers.push(FolderWatch { folder, stop, task });
        scanned_rx
    }

    /// Starts the remote check of every configured folder ([`super::gates`]), the watch
    /// over every remote in use ([`super::remotes`]), and the wait for the imports the last
    /// run left ([`super::imports`]).
    pub fn start_checks(&self) {
        for folder in &self.config.folders {
            self.start_check(folder);
        }
        self.watch_remotes();
        self.imports.resume(&self.backends);
    }

    fn watch_remotes(&self) {
        let context = remotes::WatchContext {
            config: self.current.clone(),
            store: self.store.clone(),
            wake: Arc::clone(&self.wake),
        };
        self.live
            .remotes
            .watch(&self.backends, &context, &self.stop_checking);
    }

    fn start_check(&self, folder: &FolderConfig) {
        if let Some(backend) = self.backends.for_target(&folder.target) {
            self.live.gates.start(
                folder.clone(),
                Arc::clone(backend),
                Arc::clone(&self.wake),
                &self.stop_checking,
            );
        }
    }

    /// Starts a new generation of `concurrency` workers with the current config and
    /// retires the previous one (it finishes its current uploads, then exits).
    pub fn start_workers(&mut self) {
        self.generation.cancel();
        self.generation = self.stop_claiming.child_token();
        self.workers.retain(|worker| !worker.is_finished());
        let filters = Arc::new(Filters::of(&self.config));
        for _ in 0..self.config.concurrency {
            let worker = Worker {
                config: Arc::clone(&self.config),
                store: self.store.clone(),
                backends: self.backends.clone(),
                wake: Arc::clone(&self.wake),
                live: Arc::clone(&self.live),
                metrics: Arc::clone(&self.metrics),
                stop_claiming: self.generation.clone(),
                stopping: self.stop_claiming.clone(),
                interrupt: self.interrupt.clone(),
                schedule: Arc::clone(&self.schedule),
                imports: Arc::clone(&self.imports),
                filters: Arc::clone(&filters),
            };
            self.workers.push(tokio::spawn(worker.run()));
        }
    }

    /// Queues again the jobs that failed because their folder had been removed from the
    /// configuration, for the folders configured now.
    pub fn requeue_returning_folders(&self) {
        let jobs = match self.store.jobs() {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the queue to requeue jobs of returning folders");
                return;
            }
        };
        let paths: Vec<PathBuf> = jobs
            .iter()
            .filter(|job| {
                matches!(&job.state, JobState::Failed { reason, .. } if reason == FOLDER_REMOVED)
                    && self.config.folder_for(&job.key.folder).is_some()
            })
            .map(|job| job.path())
            .collect();
        if paths.is_empty() {
            return;
        }
        match self.store.retry_failed(&RetrySelection::Paths(paths)) {
            Ok(requeued) => {
                tracing::info!(
                    jobs = requeued,
                    "queued again the jobs of folders back in the configuration"
                );
                self.wake.notify_waiters();
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot requeue the jobs of returning folders")
            }
        }
    }

    /// Re-reads the config file and applies it (module doc); on any error the running
    /// configuration stays as it is.
    pub async fn reload(&mut self) {
        let source = self.config.source.clone();
        tracing::info!(file = %source.display(), "reloading the configuration");
        let options = LoadOptions {
            check_folders_exist: false,
            ..LoadOptions::default()
        };
        let mut new = match Config::load_with(&source, options) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(
                    file = %source.display(),
                    error = %err,
                    "config reload rejected: the file is invalid; the running configuration stays in effect"
                );
                return;
            }
        };
        self.keep_restart_only_settings(&mut new);
        if self.apply(new).await {
            tracing::info!(
                folders = self.config.folders.len(),
                workers = self.config.concurrency,
                "configuration reloaded"
            );
        }
    }

    /// Puts a configuration with a rotated secret in effect (module `secrets`), unless a
    /// reload replaced the one it was read from.
    pub async fn apply_rotated(&mut self, rotated: super::secrets::Rotated) {
        if !Arc::ptr_eq(&rotated.from, &self.config) {
            return;
        }
        if self.apply(rotated.config).await {
            tracing::info!("a secret file changed; its remote's requests use the new secret");
        }
    }

    /// Puts `new` in effect (the steps of a reload after reading the file); false when
    /// its backends cannot be built, and the running configuration stays.
    async fn apply(&mut self, new: Config) -> bool {
        let backends = match self.backends_for(&new) {
            Ok(backends) => backends,
            Err(err) => {
                tracing::error!(error = %err, "config reload rejected; the running configuration stays in effect");
                return false;
            }
        };
        let added: Vec<FolderConfig> = new
            .folders
            .iter()
            .filter(|folder| !self.watchers.iter().any(|w| same_folder(&w.folder, folder)))
            .cloned()
            .collect();

        let (kept, gone): (Vec<FolderWatch>, Vec<FolderWatch>) = std::mem::take(&mut self.watchers)
            .into_iter()
            .partition(|w| new.folders.iter().any(|f| same_folder(&w.folder, f)));
        self.watchers = kept;
        for watch in gone {
            tracing::info!(folder = %watch.folder.path.display(), "folder removed or changed by the reload: no longer watched");
            watch.stop.cancel();
            self.retired.push(watch.task);
        }
        self.retired.retain(|task| !task.is_finished());
        self.live.bandwidth.configure(new.bandwidth.clone());
        let rebuilt =
            |old: &Option<Arc<crate::upload::Backend>>,
             new: &Option<Arc<crate::upload::Backend>>| match (old, new) {
                (Some(old), Some(new)) => !Arc::ptr_eq(old, new),
                _ => true,
            };
        let kifs_rebuilt = rebuilt(&self.backends.kifs, &backends.kifs);
        let redivis_rebuilt = rebuilt(&self.backends.redivis, &backends.redivis);
        self.config = Arc::new(new);
        self.current.set(Arc::clone(&self.config));
        self.backends = backends;
        self.restart_checks(&added, kifs_rebuilt, redivis_rebuilt);
        self.watch_remotes();
        // Before their scans: a folder given another target is uploaded to it afresh.
        super::retarget::follow_targets(&self.store, added.clone()).await;
        for folder in added {
            tracing::info!(folder = %folder.path.display(), "folder added by the reload: watching it");
            // The scan summary is not awaited: the daemon is already running.
            drop(self.spawn_watcher(folder));
        }
        self.start_workers();
        self.requeue_returning_folders();
        true
    }

    /// Reload step 5: checks of removed folders end, added folders and folders on a
    /// rebuilt backend are checked from the start, and every waiting check tries again.
    fn restart_checks(&self, added: &[FolderConfig], kifs_rebuilt: bool, redivis_rebuilt: bool) {
        let configured: Vec<String> = self
            .config
            .folders
            .iter()
            .map(|folder| folder.path.to_string_lossy().into_owned())
            .collect();
        self.live.gates.retain(&configured);
        for folder in &self.config.folders {
            let on_rebuilt = match folder.target {
                crate::config::Target::KifsDirectory { .. } => kifs_rebuilt,
                crate::config::Target::RedivisTable(_) => redivis_rebuilt,
            };
            let is_added = added.iter().any(|a| a.path == folder.path);
            if on_rebuilt || is_added {
                self.start_check(folder);
            }
        }
        self.live.gates.recheck();
    }

    fn keep_restart_only_settings(&self, new: &mut Config) {
        let old = &self.config;
        if new.state_dir != old.state_dir {
            tracing::warn!(running = %old.state_dir.display(), "state_dir changed in the file; it takes effect only after a restart");
            new.state_dir = old.state_dir.clone();
        }
        if new.metrics_listen != old.metrics_listen {
            tracing::warn!(
                "metrics_listen changed in the file; it takes effect only after a restart"
            );
            new.metrics_listen = old.metrics_listen;
        }
        let emulator_changed = match (&new.emulator, &old.emulator) {
            (None, None) => false,
            (Some(a), Some(b)) => {
                a.listen != b.listen || a.data_dir != b.data_dir || a.tls != b.tls
            }
            _ => true,
        };
        if emulator_changed {
            tracing::warn!(
                "the [emulator] section changed in the file; it takes effect only after a restart"
            );
            new.emulator = old.emulator.clone();
        }
    }

    /// The running backends where their section is unchanged (keeping their pacing and
    /// multipart state), new ones where it changed.
    fn backends_for(&self, new: &Config) -> Result<Backends, DaemonError> {
        let built = super::build_backends(new, &self.live.bandwidth)?;
        let kifs = if same_kifs(&self.config.kifs, &new.kifs) {
            self.backends.kifs.clone()
        } else {
            built.kifs
        };
        let redivis = if same_redivis(&self.config.redivis, &new.redivis) {
            self.backends.redivis.clone()
        } else {
            built.redivis
        };
        Ok(Backends { kifs, redivis })
    }

    /// The shutdown sequence (module doc).
    pub async fn stop(self) -> Result<(), DaemonError> {
        let timeout = self.config.shutdown_timeout;
        self.stop_within(timeout).await
    }

    /// The shutdown sequence with `timeout` instead of `shutdown_timeout`.
    pub async fn stop_within(self, timeout: Duration) -> Result<(), DaemonError> {
        tracing::info!(
            timeout_s = timeout.as_secs(),
            "shutting down: no new uploads, waiting for in-flight ones"
        );
        self.stop_claiming.cancel();
        self.stop_watching.cancel();
        self.stop_checking.cancel();
        let aborts: Vec<_> = self.workers.iter().map(|w| w.abort_handle()).collect();
        let all_done = futures::future::join_all(self.workers);
        tokio::pin!(all_done);
        // In-flight uploads continue until the deadline's last stretch, then checkpoint.
        let checkpoint_at = timeout.saturating_sub(Duration::from_secs(2).min(timeout / 2));
        tokio::select! {
            _ = &mut all_done => {}
            _ = tokio::time::sleep(checkpoint_at) => {
                self.interrupt.cancel();
                let remaining = timeout.saturating_sub(checkpoint_at);
                if tokio::time::timeout(remaining, &mut all_done).await.is_err() {
                    tracing::warn!("in-flight uploads did not stop in time; they resume at the next start");
                    for abort in aborts {
                        abort.abort();
                    }
                }
            }
        }
        let watchers = self
            .watchers
            .into_iter()
            .map(|w| w.task)
            .chain(self.retired);
        for watcher in watchers {
            let _ = tokio::time::timeout(Duration::from_secs(2), watcher).await;
        }
        self.store.flush().map_err(DaemonError::FinalFlush)
    }
}

/// How often [`store_failure`] checks the state database.
const STORE_CHECK: Duration = Duration::from_secs(1);

/// Resolves when the state database can no longer be written (a full disk, an I/O error):
/// sled then refuses every later write, even once the cause is gone, so the daemon stops
/// and a restart reopens it. The same when the state dir was removed or replaced under the
/// daemon: its records would go into a database no start finds, and another upsync could
/// take the state dir meanwhile. Checked by a flush every [`STORE_CHECK`], on the daemon's
/// beat (module `beat`); a turn is skipped while a compaction holds the database, so the
/// check never makes it give way.
pub(super) async fn store_failure(store: Store) -> crate::queue::StoreError {
    loop {
        tokio::time::sleep_until(crate::beat::on_beat(
            tokio::time::Instant::now() + STORE_CHECK,
        ))
        .await;
        let checked = tokio::task::spawn_blocking({
            let store = store.clone();
            move || {
                store
                    .flush_unless_compacting()
                    .and_then(|()| store.check_state_dir())
            }
        })
        .await;
        if let Ok(Err(err)) = checked {
            return err;
        }
    }
}

fn same_folder(a: &FolderConfig, b: &FolderConfig) -> bool {
    a.path == b.path
        && a.target == b.target
        && a.include == b.include
        && a.exclude == b.exclude
        && a.settle == b.settle
        && a.recursive == b.recursive
        && a.redivis == b.redivis
        // The watcher holds the folder's deletion sink and its spool action.
        && a.deletes == b.deletes
        && a.after_upload == b.after_upload
}

fn same_kifs(a: &Option<KifsConfig>, b: &Option<KifsConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let same_auth = match (&a.auth, &b.auth) {
                (KifsAuth::None, KifsAuth::None) => true,
                (
                    KifsAuth::Basic {
                        username: ua,
                        password: pa,
                    },
                    KifsAuth::Basic {
                        username: ub,
                        password: pb,
                    },
                ) => ua == ub && pa.expose() == pb.expose(),
                (KifsAuth::Bearer { token: ta }, KifsAuth::Bearer { token: tb }) => {
                    ta.expose() == tb.expose()
                }
                _ => false,
            };
            a.url == b.url && a.encoding == b.encoding && a.net == b.net && same_auth
        }
        _ => false,
    }
}

fn same_redivis(a: &Option<RedivisConfig>, b: &Option<RedivisConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.api_url == b.api_url
                && a.token.expose() == b.token.expose()
                && a.chunk_size == b.chunk_size
                && a.protocol == b.protocol
                && a.net == b.net
        }
        _ => false,
    }
}
