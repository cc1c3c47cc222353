//! One-shot mode (`upsync sync --once`): scan every folder once, upload what is ready, and
//! return a summary instead of watching.
//!
//! 1. Start what the daemon starts (store, backends, control socket, metrics), the remote
//!    checks of the folders, and the workers.
//! 2. Scan each folder once ([`watch::scan_once`]): files whose mtime is older than the
//!    folder's `settle` are queued. Files younger than that may still be being written: the
//!    folder is scanned again once `settle` has passed; what is still changing then is left
//!    for the next run (and counted in the summary). The workers upload meanwhile, and a
//!    scan that finds a full backlog waits for them to make room while they can ([`Room`]).
//!    A scan that matched ledger entries an older version wrote without change times
//!    gives them their files' ones at its end, unless a signal stops the run.
//! 3. Wait until nothing is queued, uploading or importing. Jobs waiting to retry after a
//!    transient failure are waited for while their next attempt falls within
//!    `retry_wait_limit` of the start; later ones are reported as not done, and so are the
//!    files of a folder whose remote refuses it (there is nothing to wait for). The jobs
//!    are walked only as often as [`Wait::refresh`] says: a backlog is not decoded per tick.
//! 4. `retry_wait_limit` after the start, stop waiting whatever is left: a remote check that
//!    has not passed, a remote that is down, in-place retries, imports. Those files are
//!    reported as not done, with what they wait for. The limit bounds waiting only: each
//!    folder's first remote check, and the first attempt of each file whose folder's remote
//!    takes files, always run (so `--retry-wait-limit 0s` uploads what can be uploaded
//!    without waiting) ([`Wait::owes_first_tries`]).
//! 5. Stop like the daemon (in-flight progress is saved) and summarize: uploaded files,
//!    failed jobs with reasons (including failures of earlier runs that were not retried),
//!    jobs not done. The run succeeded when there are neither failed nor unfinished jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::gates::Gate;
use super::status::{FailedJob, InFlight, Live, RetryingJob, one_line};
use super::{Core, DaemonError};
use crate::config::{Config, FolderConfig};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Job, JobState, StampFrom, StampStep, Store, to_ms};
use crate::watch::{self, LookNow, Sink, SinkOffer};

/// How the run shows its progress.
#[derive(Clone)]
pub enum ProgressMode {
    /// Progress bars (overall and per in-flight file) on the terminal.
    Bars(MultiProgress),
    /// A log line at this interval.
    Log(Duration),
}

#[derive(Clone)]
pub struct SyncOptions {
    /// Retries due later than this after the start are not waited for.
    pub retry_wait_limit: Duration,
    pub progress: ProgressMode,
}

/// The outcome of a one-shot run.
#[derive(Debug, Clone, Default)]
pub struct SyncSummary {
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    /// Remote copies deleted (folders with `on_delete = "delete"`).
    pub deleted: u64,
    pub elapsed: Duration,
    /// Failed jobs of the configured folders, this run's and earlier ones.
    pub failed: Vec<FailedJob>,
    /// Jobs still waiting to retry (their next attempt is after the limit) or still queued
    /// when the run was interrupted.
    pub not_done: Vec<RetryingJob>,
    /// Files still being written at the second scan.
    pub still_changing: u64,
    /// A signal stopped the run early.
    pub interrupted: bool,
    /// The run stopped waiting at `retry_wait_limit`.
    pub timed_out: Option<Duration>,
}

impl SyncSummary {
    /// Whether every file found was uploaded.
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.not_done.is_empty() && !self.interrupted
    }

    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "uploaded {} file(s), {} in {}",
            self.uploaded_files,
            bytesize::ByteSize(self.uploaded_bytes),
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs()))
        );
        if self.deleted > 0 {
            let _ = write!(
                out,
                "; deleted the remote copies of {} file(s) gone",
                self.deleted
            );
        }
        if self.interrupted {
            out.push_str("; interrupted before the end");
        }
        if let Some(limit) = self.timed_out {
            let _ = write!(
                out,
                "; stopped waiting after {} (--retry-wait-limit)",
                humantime::format_duration(limit)
            );
        }
        if self.still_changing > 0 {
            let _ = write!(
                out,
                "; {} file(s) were still being written and are left for the next run",
                self.still_changing
            );
        }
        out.push('\n');
        if !self.failed.is_empty() {
            let _ = writeln!(
                out,
                "{} file(s) failed (fix the cause, then `upsync retry -c FILE --all`):",
                self.failed.len()
            );
            for job in &self.failed {
                let _ = writeln!(out, "  {}: {}", one_line(&job.path), one_line(&job.reason));
            }
        }
        if !self.not_done.is_empty() {
            let _ = writeln!(
                out,
                "{} file(s) not uploaded yet (they are retried by the next run or by `upsync run`):",
                self.not_done.len()
            );
            for job in &self.not_done {
                let _ = writeln!(
                    out,
                    "  {}: {}",
                    one_line(&job.path),
                    one_line(job.last_error.as_deref().unwrap_or("still queued"))
                );
            }
        }
        out
    }
}

/// Offers to the folder's sink (the store, deleting or not), counting the files that were
/// not ready yet, and says when the scan may wait for room in the queue ([`Room`]).
struct CountingSink {
    inner: Arc<dyn Sink>,
    wake: Arc<tokio::sync::Notify>,
    not_uploaded: AtomicU64,
    offered: AtomicU64,
    /// What says whether the folder's uploads can go on, for the scan's pauses
    /// ([`Sink::queued`]); `None`: the scan never pauses.
    room: Option<Room>,
}

/// When a one-shot scan may wait for the workers to make room in the queue: while they
/// can take the folder's files (its remote check passed and its remote is up) and the
/// run's `--retry-wait-limit` is not reached, and no signal stopped it. Otherwise the scan
/// goes on, and the run's wait reports what is left.
struct Room {
    config: Arc<Config>,
    live: Arc<Live>,
    until: Instant,
    /// Cancelled by a signal: the run is stopping.
    stop: CancellationToken,
}

impl CountingSink {
    /// Files seen that are not uploaded but were not offered: younger than `settle`.
    fn young(&self) -> u64 {
        self.not_uploaded
            .load(Ordering::Relaxed)
            .saturating_sub(self.offered.load(Ordering::Relaxed))
    }
}

impl Sink for CountingSink {
    fn is_uploaded(&self, key: &FileKey, fingerprint: &Fingerprint) -> bool {
        let uploaded = self.inner.is_uploaded(key, fingerprint);
        if !uploaded {
            self.not_uploaded.fetch_add(1, Ordering::Relaxed);
        }
        uploaded
    }

    fn vanished(&self, key: &FileKey) {
        self.inner.vanished(key);
    }

    fn vanished_many(&self, keys: &[FileKey]) {
        self.inner.vanished_many(keys);
        self.wake.notify_one();
    }

    fn visit_tracked(&self, folder: &str, under: &str, visit: &mut dyn FnMut(&str)) {
        self.inner.visit_tracked(folder, under, visit);
    }

    fn scan_done(&self, folder: &str) {
        self.inner.scan_done(folder);
    }

    fn take_unstamped(&self, folder: &str) -> bool {
        self.inner.take_unstamped(folder)
    }

    fn stamp_step(&self, folder: &str, from: Option<&StampFrom>, look: LookNow) -> StampStep {
        // A run a signal stops leaves the rest of the walk to the next one.
        if self
            .room
            .as_ref()
            .is_some_and(|room| room.stop.is_cancelled())
        {
            return StampStep::default();
        }
        self.inner.stamp_step(folder, from, look)
    }

    fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> SinkOffer {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let offer = self.inner.offer(key, fingerprint);
        if offer == SinkOffer::Queued {
            self.wake.notify_one();
        }
        offer
    }

    fn queued(&self, folder: &str) -> Option<u64> {
        let room = self.room.as_ref()?;
        if room.stop.is_cancelled()
            || Instant::now() >= room.until
            || waiting_for(&room.config, &room.live, folder).is_some()
        {
            return None;
        }
        self.inner.queued(folder)
    }

    fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
        self.offered
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let offers = self.inner.offer_many(files);
        if offers.contains(&SinkOffer::Queued) {
            // Every idle worker: a batch is work for more than one.
            self.wake.notify_waiters();
            self.wake.notify_one();
        }
        offers
    }
}

/// Scans `folder` once on the blocking pool; returns how many files were too young.
async fn scan(
    core: &Core,
    folder: &FolderConfig,
    until: Instant,
    stop: &CancellationToken,
) -> Result<u64, DaemonError> {
    let sink = Arc::new(CountingSink {
        inner: watch::DeletingSink::for_folder(core.store.clone(), folder),
        wake: Arc::clone(&core.wake),
        not_uploaded: AtomicU64::new(0),
        offered: AtomicU64::new(0),
        room: Some(Room {
            config: Arc::clone(&core.config),
            live: Arc::clone(&core.live),
            until,
            stop: stop.clone(),
        }),
    });
    let (folder, for_scan) = (folder.clone(), Arc::clone(&sink));
    let summary = tokio::task::spawn_blocking(move || watch::scan_once(&folder, for_scan.as_ref()))
        .await
        .map_err(|err| DaemonError::Pass(format!("the scan task failed: {err}")))?
        .map_err(|err| DaemonError::Pass(err.to_string()))?;
    core.wake.notify_waiters();
    tracing::debug!(
        files = summary.files_seen,
        queued = summary.queued,
        "scan done"
    );
    Ok(sink.young())
}

/// Jobs of the configured folders, as the end-of-run check needs them.
#[derive(Default)]
struct Pending {
    /// Queued, active, finalizing or importing.
    busy: u64,
    /// Retry-wait jobs due at or before the limit.
    retry_soon: u64,
    /// Queued, uploading and retrying files, and their bytes.
    files: u64,
    bytes: u64,
    failed_count: u64,
    /// The jobs by name: only when the figures were asked for them ([`Detail::Names`]).
    names: Names,
}

/// The jobs of [`Pending`] by name.
#[derive(Default)]
struct Names {
    /// Retry-wait jobs due after the limit, and jobs of folders whose remote refuses them.
    retry_late: Vec<RetryingJob>,
    /// Busy jobs and retry-wait jobs due before the limit (not done if the run ends first).
    unfinished: Vec<RetryingJob>,
    /// Jobs whose first attempt has not ended yet: the limit does not cut those short.
    untried: Vec<Untried>,
    failed: Vec<FailedJob>,
}

impl Pending {
    /// Counts one job of a configured folder; `refused`: its folder's remote refuses it.
    fn count(&mut self, job: &Job, refused: bool, limit_ms: u64) {
        if let JobState::Failed { .. } = job.state {
            self.failed_count += 1;
            return;
        }
        self.files += 1;
        self.bytes += job.fingerprint.size;
        if refused {
            return;
        }
        match job.state {
            JobState::RetryWait { next_attempt_at_ms } if next_attempt_at_ms <= limit_ms => {
                self.retry_soon += 1;
            }
            JobState::Queued | JobState::Active | JobState::Finalizing | JobState::Importing => {
                self.busy += 1;
            }
            JobState::RetryWait { .. } | JobState::Failed { .. } => {}
        }
    }
}

impl Names {
    /// Names one job of a configured folder where the summary lists it; `refused`: why its
    /// folder's remote refuses it.
    fn note(&mut self, job: &Job, refused: Option<String>, limit_ms: u64) {
        let path = job.path().display().to_string();
        let left = |last_error: Option<String>| RetryingJob {
            path: path.clone(),
            attempts: job.attempts,
            next_attempt_ms: job.due_ms().unwrap_or(0),
            last_error,
            waits_for: None,
        };
        if let Some(reason) = refused {
            self.retry_late.push(left(Some(reason)));
            return;
        }
        match &job.state {
            JobState::Failed {
                reason,
                failed_at_ms,
                kind,
            } => self.failed.push(FailedJob {
                path: path.clone(),
                reason: reason.clone(),
                kind: kind.clone(),
                failed_at_ms: *failed_at_ms,
                last_attempt_ms: job.updated_at_ms,
                attempts: job.attempts,
                folder_configured: true,
            }),
            JobState::RetryWait { next_attempt_at_ms } if *next_attempt_at_ms > limit_ms => {
                self.retry_late.push(left(job.last_error.clone()));
            }
            JobState::RetryWait { .. } => self.unfinished.push(left(job.last_error.clone())),
            JobState::Queued | JobState::Active | JobState::Finalizing | JobState::Importing => {
                if job.attempts == 0 && job.state != JobState::Importing {
                    self.untried.push(Untried {
                        folder: job.key.folder.clone(),
                        path: path.clone(),
                        started: job.state != JobState::Queued,
                    });
                }
                self.unfinished.push(left(job.last_error.clone()));
            }
        }
    }
}

/// What [`pending`] gathers: a walk that only counts holds one job at a time, whatever
/// the backlog; names cost memory for every job left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    Counts,
    Names,
}

/// A job not attempted yet in this state database's life (no job-level retry so far).
struct Untried {
    folder: String,
    path: String,
    /// A worker holds it: its first attempt is running.
    started: bool,
}

/// The jobs of the configured folders by what the run still waits for; `held` says why a
/// folder's files cannot be uploaded in this run at all (its remote refuses it).
fn pending(
    config: &Config,
    store: &Store,
    limit_ms: u64,
    held: &dyn Fn(&str) -> Option<String>,
    detail: Detail,
) -> Result<Pending, String> {
    let folders: BTreeSet<String> = config
        .folders
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    let mut out = Pending::default();
    store
        .visit_jobs(|job| {
            if !folders.contains(&job.key.folder) {
                return;
            }
            let refused = match job.state {
                JobState::Failed { .. } | JobState::Importing => None,
                _ => held(&job.key.folder),
            };
            out.count(&job, refused.is_some(), limit_ms);
            if detail == Detail::Names {
                out.names.note(&job, refused, limit_ms);
            }
        })
        .map_err(|err| err.to_string())?;
    Ok(out)
}

/// Runs one sync of every configured folder; see the module doc.
pub async fn sync_once(
    config: Config,
    options: SyncOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<SyncSummary, DaemonError> {
    let started = Instant::now();
    let deadline = started + options.retry_wait_limit;
    let mut core = Core::start(config).await?;
    // On the store's clock, which the jobs' times are on (module `queue::clock`).
    let limit_ms =
        to_ms(core.store.now() + options.retry_wait_limit.saturating_sub(started.elapsed()));
    core.spawn_checks();
    core.spawn_workers();
    let mut display = Display::new(options.progress);
    // A signal ends the scans' pauses at once, and then the wait (step 5).
    let stop = CancellationToken::new();
    let on_signal = async {
        shutdown.await;
        stop.cancel();
    };
    let run = scan_and_wait(&core, &mut display, deadline, limit_ms, &stop);
    let (wait, last) = match beside(run, on_signal).await {
        Ok(run) => run,
        Err(err) => {
            let _ = core.stop().await;
            return Err(err);
        }
    };
    display.finish();
    let (uploaded_files, uploaded_bytes) = core.live.activity.uploaded();
    let deleted = core.live.activity.deleted();
    let mut not_done = last.names.retry_late;
    if wait.ended != Ended::Settled {
        let in_flight = core.live.in_flight.snapshot();
        not_done.extend(last.names.unfinished.into_iter().map(|mut job| {
            if let Some(why) = left_waiting_for(&core, &in_flight, &job.path) {
                job.last_error = Some(why);
            }
            job
        }));
    }
    core.stop().await?;
    if wait.still_changing > 0 {
        tracing::warn!(
            files = wait.still_changing,
            "files were still being written; they are left for the next run"
        );
    }
    Ok(SyncSummary {
        uploaded_files,
        uploaded_bytes,
        deleted,
        elapsed: started.elapsed(),
        failed: last.names.failed,
        not_done,
        still_changing: wait.still_changing,
        interrupted: wait.ended == Ended::Interrupted,
        timed_out: (wait.ended == Ended::OutOfTime).then_some(options.retry_wait_limit),
    })
}

/// Steps 2 and 3: scans every folder, then waits for the uploads; returns the wait and
/// its last figures. `stop` is cancelled by a signal.
async fn scan_and_wait(
    core: &Core,
    display: &mut Display,
    deadline: Instant,
    limit_ms: u64,
    stop: &CancellationToken,
) -> Result<(Wait, Pending), DaemonError> {
    let mut young: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, folder) in core.config.folders.iter().enumerate() {
        let count = scan(core, folder, deadline, stop).await?;
        if count > 0 {
            young.insert(i, count);
        }
    }
    let rescan_at = young
        .keys()
        .map(|i| core.config.folders[*i].settle)
        .max()
        .map(|settle| Instant::now() + settle + Duration::from_millis(100));
    let mut wait = Wait {
        limit_ms,
        deadline,
        rescan_at,
        young,
        still_changing: 0,
        ended: Ended::Settled,
        walked: None,
        stop: stop.clone(),
    };
    let last = wait.until_settled(core, display).await?;
    Ok((wait, last))
}

/// Runs `work` to its end, polling `signal` beside it until that is done.
async fn beside<T>(work: impl Future<Output = T>, signal: impl Future<Output = ()>) -> T {
    tokio::pin!(work, signal);
    let mut signalled = false;
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = &mut signal, if !signalled => signalled = true,
        }
    }
}

/// How the wait of step 3 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Settled,
    Interrupted,
    OutOfTime,
}

/// Steps 3 and 4: the wait for the run's files, and its bounds.
struct Wait {
    limit_ms: u64,
    deadline: Instant,
    /// When folders with files too young to upload are scanned again.
    rescan_at: Option<Instant>,
    /// Those folders (by index) and how many young files they had.
    young: BTreeMap<usize, u64>,
    still_changing: u64,
    ended: Ended,
    /// The figures of the last walk of the jobs, with when the next one is due.
    walked: Option<Walked>,
    /// Cancelled by a signal: the wait ends, and a rescan does not pause for room.
    stop: CancellationToken,
}

/// A walk of the jobs ([`Wait::refresh`]).
struct Walked {
    figures: Pending,
    detail: Detail,
    /// The busy jobs the folders' counts showed as it began.
    busy_counted: u64,
    next: Instant,
}

/// A walk of the jobs takes at most about one part in this many of a thread's time: at
/// 150,000 jobs left, one took 0.2 s, and the wait walked every 250 ms.
const WALK_SPACING: u32 = 20;

impl Wait {
    /// Waits until nothing the run can still upload is left, a signal (`stop`), or the
    /// deadline; returns the last figures.
    async fn until_settled(
        &mut self,
        core: &Core,
        display: &mut Display,
    ) -> Result<Pending, DaemonError> {
        let stop = self.stop.clone();
        loop {
            self.refresh(core).await?;
            let figures = &self.walked.as_ref().expect("refreshed").figures;
            let in_flight = core.live.in_flight.snapshot();
            display.update(core, figures, &in_flight);
            let settled = figures.busy == 0 && figures.retry_soon == 0 && in_flight.is_empty();
            if (settled && self.rescan_at.is_none()) || self.ended != Ended::Settled {
                return self.figures(core, Detail::Names).await;
            }
            if Instant::now() >= self.deadline && !Wait::owes_first_tries(core, figures, &in_flight)
            {
                tracing::warn!("the --retry-wait-limit is reached; stopping with what is left");
                self.ended = Ended::OutOfTime;
                // Files too young at the first scan are not waited for either.
                self.still_changing += std::mem::take(&mut self.young).into_values().sum::<u64>();
                return self.figures(core, Detail::Names).await;
            }
            if self.rescan_at.is_some_and(|at| Instant::now() >= at) {
                self.rescan_at = None;
                for i in std::mem::take(&mut self.young).into_keys() {
                    let folder = core.config.folders[i].clone();
                    self.still_changing += scan(core, &folder, self.deadline, &self.stop).await?;
                }
                self.walked = None;
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    tracing::info!("interrupted; saving progress");
                    self.ended = Ended::Interrupted;
                }
                _ = tokio::time::sleep_until(self.deadline.into()), if Instant::now() < self.deadline => {}
                _ = tokio::time::sleep(display.tick()) => {}
            }
        }
    }

    /// Whether the run still owes a first try that the limit must not cut short: a
    /// folder's first remote check that has not answered yet, or a file's first attempt
    /// that is running (not pausing for an in-place retry) or could be claimed now (its
    /// folder's check passed and its remote is up).
    fn owes_first_tries(core: &Core, figures: &Pending, in_flight: &[InFlight]) -> bool {
        let gates = core.live.gates.snapshot();
        let first_check_running = core.config.folders.iter().any(|folder| {
            gates.get(folder.path.to_string_lossy().as_ref())
                == Some(&Gate::Checking { last_error: None })
        });
        first_check_running
            || figures.names.untried.iter().any(|job| {
                if job.started {
                    !in_flight
                        .iter()
                        .any(|upload| upload.path == job.path && upload.retrying.is_some())
                } else {
                    waiting_for(&core.config, &core.live, &job.folder).is_none()
                }
            })
    }

    /// Brings the figures of the jobs ([`Wait::walked`]) up to date, walking them again only when the last walk may be out of
    /// date and is not too recent, so that a large backlog is not decoded every tick:
    /// 1. No walk yet, or one without the names the deadline's check needs: walk.
    /// 2. The folders' counts (one entry per folder) show the busy jobs ran out since the
    ///    last walk, so the run may be over: walk.
    /// 3. The last walk is [`WALK_SPACING`] times its own length old: walk.
    /// 4. Otherwise keep the last walk's figures.
    async fn refresh(&mut self, core: &Core) -> Result<(), DaemonError> {
        let now = Instant::now();
        let detail = if now >= self.deadline {
            Detail::Names
        } else {
            Detail::Counts
        };
        let busy_counted = busy_counted(core).await?;
        let due = match &self.walked {
            None => true,
            Some(walked) => {
                walked.detail != detail
                    || (busy_counted == 0 && walked.busy_counted != 0)
                    || now >= walked.next
            }
        };
        if due {
            let figures = self.figures(core, detail).await?;
            let next = Instant::now() + now.elapsed() * WALK_SPACING;
            self.walked = Some(Walked {
                figures,
                detail,
                busy_counted,
                next,
            });
        }
        Ok(())
    }

    async fn figures(&self, core: &Core, detail: Detail) -> Result<Pending, DaemonError> {
        let (config, store, live) = (
            Arc::clone(&core.config),
            core.store.clone(),
            Arc::clone(&core.live),
        );
        let limit_ms = self.limit_ms;
        tokio::task::spawn_blocking(move || {
            let held = |folder: &str| refused(&live, folder);
            pending(&config, &store, limit_ms, &held, detail)
        })
        .await
        .map_err(|err| DaemonError::Pass(format!("the status task failed: {err}")))?
        .map_err(DaemonError::Pass)
    }
}

/// The queued, active, finalizing and importing jobs of the configured folders whose
/// remote takes files, as their counts show them: one entry per folder.
async fn busy_counted(core: &Core) -> Result<u64, DaemonError> {
    let (config, store, live) = (
        Arc::clone(&core.config),
        core.store.clone(),
        Arc::clone(&core.live),
    );
    tokio::task::spawn_blocking(move || {
        let tallies = store.tallies().map_err(|err| err.to_string())?;
        Ok(config
            .folders
            .iter()
            .map(|folder| folder.path.to_string_lossy())
            .filter(|folder| refused(&live, folder).is_none())
            .filter_map(|folder| tallies.get(folder.as_ref()))
            .map(|tally| {
                let counts = &tally.counts;
                counts.queued + counts.active + counts.finalizing + counts.importing
            })
            .sum())
    })
    .await
    .map_err(|err| DaemonError::Pass(format!("the status task failed: {err}")))?
    .map_err(DaemonError::Pass)
}

/// Why a folder's files cannot be uploaded in this run at all: its remote refuses it, or
/// waits for someone (a dataset without an unreleased version).
fn refused(live: &Live, folder: &str) -> Option<String> {
    let check = live.gates.status(folder)?;
    let reason = check.reason.unwrap_or_default();
    match check.state.as_str() {
        "refused" => Some(format!("its folder's remote refuses it: {reason}")),
        "waiting" => Some(format!("its folder waits: {reason}")),
        _ => None,
    }
}

/// What a file left unfinished waited for when the run ended: an in-place retry, its
/// folder's remote check, or its remote being down.
fn left_waiting_for(core: &Core, in_flight: &[InFlight], path: &str) -> Option<String> {
    if let Some(retry) = in_flight
        .iter()
        .find(|upload| upload.path == path)
        .and_then(|upload| upload.retrying.as_ref())
    {
        return Some(format!(
            "retrying (attempt {}): {}",
            retry.attempt, retry.last_error
        ));
    }
    let folder = core
        .config
        .folders
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .find(|f| std::path::Path::new(path).starts_with(f))?;
    waiting_for(&core.config, &core.live, &folder)
}

/// What a folder's files waited for when the run ended: the folder's remote check, or its
/// remote being down.
fn waiting_for(config: &Config, live: &Live, folder: &str) -> Option<String> {
    if let Some(check) = live.gates.status(folder).filter(|c| c.state != "ready") {
        return Some(format!(
            "its folder's remote check has not passed ({}): {}",
            check.state,
            check.reason.unwrap_or_else(|| "no answer yet".into())
        ));
    }
    let target = &config.folder_for(folder)?.target;
    let backend = target.backend_name();
    live.remotes
        .snapshot()
        .into_iter()
        .find(|remote| remote.backend == backend && remote.state != "up")
        .map(|remote| {
            format!(
                "its remote is down: {}",
                remote.last_error.unwrap_or_else(|| "no answer".into())
            )
        })
}

/// Progress bars on a terminal, or a log line now and then.
enum Display {
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        files: BTreeMap<String, ProgressBar>,
    },
    Log {
        every: Duration,
        next: Instant,
    },
}

impl Display {
    fn new(mode: ProgressMode) -> Display {
        match mode {
            ProgressMode::Bars(multi) => {
                let overall = multi.add(ProgressBar::new(0));
                overall.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
                    )
                    .expect("the overall progress template is valid"),
                );
                overall.enable_steady_tick(Duration::from_millis(200));
                Display::Bars {
                    multi,
                    overall,
                    files: BTreeMap::new(),
                }
            }
            ProgressMode::Log(every) => Display::Log {
                every,
                next: Instant::now() + every,
            },
        }
    }

    fn tick(&self) -> Duration {
        match self {
            Display::Bars { .. } => Duration::from_millis(200),
            Display::Log { .. } => Duration::from_millis(250),
        }
    }

    fn update(&mut self, core: &Core, figures: &Pending, in_flight: &[InFlight]) {
        let (uploaded_files, uploaded_bytes) = core.live.activity.uploaded();
        let sending: u64 = in_flight.iter().map(|u| u.bytes_done).sum();
        match self {
            Display::Bars {
                multi,
                overall,
                files,
            } => {
                overall.set_length(uploaded_bytes + figures.bytes);
                overall.set_position(uploaded_bytes + sending);
                overall.set_message(format!(
                    "{uploaded_files}/{} files, {} failed",
                    uploaded_files + figures.files,
                    figures.failed_count
                ));
                let current: BTreeSet<&str> = in_flight.iter().map(|u| u.path.as_str()).collect();
                files.retain(|path, bar| {
                    let keep = current.contains(path.as_str());
                    if !keep {
                        bar.finish_and_clear();
                        multi.remove(bar);
                    }
                    keep
                });
                for upload in in_flight {
                    let bar = files.entry(upload.path.clone()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(upload.bytes_total));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "  {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
                            )
                            .expect("the file progress template is valid"),
                        );
                        bar.set_message(upload.path.clone());
                        bar
                    });
                    bar.set_length(upload.bytes_total);
                    bar.set_position(upload.bytes_done);
                }
            }
            Display::Log { every, next } => {
                if Instant::now() < *next {
                    return;
                }
                *next = Instant::now() + *every;
                tracing::info!(
                    uploaded_files,
                    uploaded_bytes,
                    remaining_files = figures.files,
                    remaining_bytes = figures.bytes,
                    uploading = in_flight.len(),
                    failed = figures.failed_count,
                    "sync progress"
                );
            }
        }
    }

    fn finish(&mut self) {
        if let Display::Bars {
            multi,
            overall,
            files,
        } = self
        {
            for bar in files.values() {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            overall.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::{FolderConfig, Target};
    use crate::watch::SinkOffer;

    /// A sink that records the size of every offer it is handed: 1 for each `offer`.
    #[derive(Default)]
    struct Offers(Mutex<Vec<usize>>);

    impl Sink for Offers {
        fn is_uploaded(&self, _: &FileKey, _: &Fingerprint) -> bool {
            false
        }
        fn offer(&self, _: &FileKey, _: &Fingerprint) -> SinkOffer {
            self.0.lock().expect("not poisoned").push(1);
            SinkOffer::Queued
        }
        fn offer_many(&self, files: &[(FileKey, Fingerprint)]) -> Vec<SinkOffer> {
            self.0.lock().expect("not poisoned").push(files.len());
            vec![SinkOffer::Queued; files.len()]
        }
    }

    /// A sink with a full backlog in every folder.
    #[derive(Default)]
    struct Full {
        stamp_steps: AtomicU64,
    }

    impl Sink for Full {
        fn is_uploaded(&self, _: &FileKey, _: &Fingerprint) -> bool {
            false
        }
        fn offer(&self, _: &FileKey, _: &Fingerprint) -> SinkOffer {
            SinkOffer::Queued
        }
        fn queued(&self, _: &str) -> Option<u64> {
            Some(20_000)
        }
        fn stamp_step(&self, _: &str, _: Option<&StampFrom>, _: LookNow) -> StampStep {
            self.stamp_steps.fetch_add(1, Ordering::Relaxed);
            StampStep::default()
        }
    }

    #[test]
    fn the_scan_waits_for_room_and_stamps_only_while_the_workers_can_make_it_and_the_run_goes_on() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        std::fs::create_dir(dir.path().join("w")).expect("create the folder");
        let config_path = dir.path().join("upsync.toml");
        std::fs::write(
            &config_path,
            "state_dir = \"state\"\n\
             [kifs]\nurl = \"http://127.0.0.1:9/kifs\"\nusername = \"u\"\npassword = \"p\"\n\
             [[folder]]\npath = \"w\"\nkifs_directory = \"d\"\n",
        )
        .expect("write the config");
        let config = Arc::new(Config::load(&config_path).expect("the config is valid"));
        let folder = config.folders[0].path.to_string_lossy().into_owned();
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let full = Arc::new(Full::default());
        let sink = |until: Instant| CountingSink {
            inner: Arc::clone(&full) as Arc<dyn Sink>,
            wake: Arc::new(tokio::sync::Notify::new()),
            not_uploaded: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            room: Some(Room {
                config: Arc::clone(&config),
                live: Arc::clone(&live),
                until,
                stop: stop.clone(),
            }),
        };
        let later = Instant::now() + Duration::from_secs(600);

        assert_eq!(sink(later).queued(&folder), Some(20_000), "the scan waits");
        assert_eq!(
            sink(Instant::now()).queued(&folder),
            None,
            "out of time: the scan goes on"
        );
        live.gates.put(&folder, Gate::Ready);
        assert_eq!(sink(later).queued(&folder), Some(20_000), "the scan waits");
        live.gates.put(
            &folder,
            Gate::Waiting {
                reason: "a dataset without a next version".into(),
            },
        );
        assert_eq!(
            sink(later).queued(&folder),
            None,
            "the workers cannot take the folder's files: the scan goes on"
        );
        live.gates.put(&folder, Gate::Ready);
        let stamp_step = || sink(later).stamp_step(&folder, None, &mut |_| None);
        stamp_step();
        assert_eq!(full.stamp_steps.load(Ordering::Relaxed), 1);
        stop.cancel();
        assert_eq!(
            sink(later).queued(&folder),
            None,
            "a signal stops the run: the scan goes on"
        );
        assert_eq!(stamp_step(), StampStep::default());
        assert_eq!(
            full.stamp_steps.load(Ordering::Relaxed),
            1,
            "a signal stops the run: the walk after the scan ends"
        );
    }

    #[test]
    fn the_run_offers_what_its_scan_finds_in_batches_and_counts_the_young_files() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        for i in 0..300 {
            let path = dir.path().join(format!("f{i:03}.csv"));
            std::fs::write(&path, b"x").expect("write a test file");
            let file = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("reopen");
            file.set_modified(old).expect("set an old mtime");
        }
        std::fs::write(dir.path().join("young.csv"), b"y").expect("write a test file");
        let offers = Arc::new(Offers::default());
        let sink = CountingSink {
            inner: Arc::clone(&offers) as Arc<dyn Sink>,
            wake: Arc::new(tokio::sync::Notify::new()),
            not_uploaded: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            room: None,
        };
        let folder = FolderConfig {
            path: dir.path().to_path_buf(),
            target: Target::KifsDirectory {
                directory: "ingest".into(),
                create: false,
            },
            include: vec![],
            exclude: vec![],
            settle: Duration::from_secs(60),
            recursive: true,
            redivis: Default::default(),
            deletes: Default::default(),
            after_upload: Default::default(),
        };

        let summary = watch::scan_once(&folder, &sink).expect("the folder can be scanned");

        assert_eq!(summary.queued, 300);
        assert_eq!(
            *offers.0.lock().expect("not poisoned"),
            vec![256, 44],
            "one queue transaction per batch, not one per file"
        );
        assert_eq!(sink.young(), 1, "young.csv waits for the second scan");
    }
}
