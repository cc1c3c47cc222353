//! The one in-place retry policy of both backends: what a request that failed transiently
//! may try again before its job gives the worker back.
//!
//! In-place retries are short on purpose. A remote that stays unreachable longer than the
//! [`RetryPolicy::budget`] is the job-level retry's business (the queue's `retry-wait`, and
//! the remote's health probe that makes such jobs due again the moment it answers), so a
//! worker never sits on a dead remote while other folders have work.
//!
//! After each failed try of one request ([`Attempts::pause`]):
//! 1. Count the failure and remember it as the last error.
//! 2. Give up ([`GaveUp::Spent`]) when the attempts are spent, when the pause — jittered
//!    exponential backoff, at least the server's `Retry-After` — would end past the total
//!    budget, or when the remote is known to be down (see [`super::health`]).
//! 3. Otherwise publish the retry on the job's in-flight entry ("retrying (attempt n, next
//!    in Ns): last error" in `upsync status`), log it, and pause. Shutdown ends the pause at
//!    once ([`GaveUp::Shutdown`]), and so does the remote being declared down.
//! 4. A request that made progress ([`Attempts::progressed`], e.g. a chunk the server took)
//!    starts the count and the budget again.
//!
//! The entry's retry note is cleared on progress and when the [`Attempts`] ends.
//!
//! Only [`Disposition::Retry`] is retried in place. [`Disposition::RetryLater`] (a server
//! certificate upsync refuses: the same handshake would fail again within seconds) goes to
//! the job-level retry at once, like a spent budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::health::RemoteHealth;
use super::{Disposition, LiveProgress, RetryNote, UploadError};

/// How often and for how long one request is tried in place. Limits are values, given by
/// whoever builds the backend (tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one request, the first included.
    pub attempts: u32,
    /// The first pause; each next one doubles, up to `max`.
    pub base: Duration,
    pub max: Duration,
    /// The longest a request may keep its worker from its first failure on: a pause that
    /// would end later is not taken.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
            budget: Duration::from_secs(30),
        }
    }
}

/// What the requests of one job (or of a background task) share: when pauses end, when
/// transfers checkpoint, and where in-place retries are shown.
#[derive(Debug, Clone, Default)]
pub struct CallScope {
    /// Cancelled when the daemon starts stopping: pauses (retries, pacing) end at once.
    pub stop: CancellationToken,
    /// Cancelled when in-flight transfers must reach their next checkpoint and return.
    pub checkpoint: CancellationToken,
    /// The in-flight entries of the jobs the requests carry (several for a batch), for
    /// "retrying (attempt n, next in Ns)".
    pub entries: Vec<Arc<LiveProgress>>,
}

impl CallScope {
    /// A scope whose pauses and transfers both end when `token` is cancelled.
    pub fn until(token: CancellationToken) -> CallScope {
        CallScope {
            stop: token.clone(),
            checkpoint: token,
            entries: Vec::new(),
        }
    }

    /// True once transfers should checkpoint and return.
    pub fn interrupted(&self) -> bool {
        self.checkpoint.is_cancelled()
    }

    /// Sleeps for `pause`, unless the stop comes first.
    pub async fn sleep(&self, pause: Duration) -> Result<(), UploadError> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(UploadError::Shutdown),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }
}

impl From<CancellationToken> for CallScope {
    fn from(token: CancellationToken) -> CallScope {
        CallScope::until(token)
    }
}

/// Why [`Attempts::pause`] did not pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GaveUp {
    /// The in-place budget is spent (the text says how): hand the job to `retry-wait`.
    Spent(String),
    /// The daemon is stopping.
    Shutdown,
}

impl GaveUp {
    /// The job-level outcome of the transient failure `failed`: itself, its sentence saying
    /// why the in-place retries stopped; or shutdown.
    pub fn into_error(self, failed: UploadError) -> UploadError {
        match self {
            GaveUp::Shutdown => UploadError::Shutdown,
            GaveUp::Spent(why) => failed.reworded(|problem| format!("{problem} ({why})")),
        }
    }
}

/// The failed tries of one request so far (module doc).
pub struct Attempts<'a> {
    policy: &'a RetryPolicy,
    scope: &'a CallScope,
    health: Option<&'a RemoteHealth>,
    backoff: Backoff,
    failures: u32,
    since: Instant,
    /// What is retried, in the log line.
    step: &'a str,
}

impl<'a> Attempts<'a> {
    pub fn new(policy: &'a RetryPolicy, scope: &'a CallScope, step: &'a str) -> Attempts<'a> {
        Attempts {
            policy,
            scope,
            health: None,
            backoff: Backoff::new(policy.base, policy.max),
            failures: 0,
            since: Instant::now(),
            step,
        }
    }

    /// Gives up early while `health` says the remote is down.
    pub fn watching(mut self, health: &'a RemoteHealth) -> Attempts<'a> {
        self.health = Some(health);
        self
    }

    /// Failed tries since the start or the last progress.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The request got somewhere: count and budget start again.
    pub fn progressed(&mut self) {
        if self.failures > 0 {
            self.clear_note();
        }
        self.failures = 0;
        self.backoff.reset();
        self.since = Instant::now();
    }

    /// After a failed try (module doc, steps 1–3): `Ok` once the pause is over.
    pub async fn pause(&mut self, after: Option<Duration>, problem: &str) -> Result<(), GaveUp> {
        self.failures += 1;
        if self.scope.stop.is_cancelled() {
            return Err(GaveUp::Shutdown);
        }
        let attempt = self.failures;
        if attempt >= self.policy.attempts {
            return Err(GaveUp::Spent(format!(
                "gave up after {attempt} attempts; will retry later"
            )));
        }
        if self.health.is_some_and(|health| !health.is_up()) {
            return Err(GaveUp::Spent(
                "the remote is down; will retry when it answers again".into(),
            ));
        }
        let pause = self.backoff.next_delay(after, &mut rand::rng());
        if self.since.elapsed() + pause > self.policy.budget {
            return Err(GaveUp::Spent(format!(
                "gave up after {attempt} attempts in {}s; will retry later",
                self.since.elapsed().as_secs()
            )));
        }
        tracing::warn!(
            step = self.step,
            attempt,
            max_attempts = self.policy.attempts,
            sleep_ms = pause.as_millis() as u64,
            reason = %problem,
            "retrying a request"
        );
        let note = RetryNote {
            attempt,
            next_at: SystemTime::now() + pause,
            last_error: problem.to_string(),
        };
        for entry in &self.scope.entries {
            entry.note_retry(note.clone());
        }
        self.sleep(pause).await
    }

    async fn sleep(&self, pause: Duration) -> Result<(), GaveUp> {
        let went_down = async {
            match self.health {
                Some(health) => health.went_down().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.scope.stop.cancelled() => Err(GaveUp::Shutdown),
            _ = went_down => Err(GaveUp::Spent(
                "the remote is down; will retry when it answers again".into(),
            )),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    fn clear_note(&self) {
        for entry in &self.scope.entries {
            entry.clear_retry();
        }
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        if self.failures > 0 {
            self.clear_note();
        }
    }
}

/// Runs `attempt` until it succeeds, fails other than transiently, or [`Attempts::pause`]
/// gives up; a transient failure's message and `Retry-After` carry over to the job.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    scope: &CallScope,
    health: Option<&RemoteHealth>,
    step: &str,
    mut attempt: F,
) -> Result<T, UploadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, UploadError>>,
{
    let mut attempts = Attempts::new(policy, scope, step);
    if let Some(health) = health {
        attempts = attempts.watching(health);
    }
    loop {
        match attempt().await {
            Err(
                failed @ UploadError::Remote {
                    disposition: Disposition::Retry { after },
                    ..
                },
            ) => {
                if let Err(gave_up) = attempts.pause(after, &failed.to_string()).await {
                    return Err(gave_up.into_error(failed));
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::upload::ErrorKind;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_secs(1),
            max: Duration::from_secs(4),
            budget: Duration::from_secs(20),
        }
    }

    fn transient(after: Option<Duration>) -> UploadError {
        let endpoint = crate::upload::Endpoint {
            method: "POST",
            path: "/upload/files",
        };
        UploadError::answered(endpoint, 503, after, "HTTP 503")
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_tried_the_policys_attempts_then_handed_to_the_job_level_retry() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = retry(&policy(), &CallScope::default(), None, "test", || {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(transient(None)) }
        })
        .await;
        assert_eq!(tries.load(Ordering::Relaxed), 4);
        match result {
            Err(UploadError::Remote {
                disposition: Disposition::Retry { .. },
                kind: ErrorKind::Server,
                status: Some(503),
                message,
                ..
            }) => assert!(message.contains("gave up after 4 attempts"), "{message}"),
            other => panic!("expected a transient failure for the job, got {other:?}"),
        }
        // Three pauses of at most 1 + 2 + 4 s.
        assert!(
            started.elapsed() <= Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_longer_than_the_budget_gives_up_at_once_and_is_kept_for_the_job() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = retry(&policy(), &CallScope::default(), None, "test", || {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(transient(Some(Duration::from_secs(60)))) }
        })
        .await;
        assert_eq!(tries.load(Ordering::Relaxed), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(matches!(
            result,
            Err(UploadError::Remote {
                disposition: Disposition::Retry { after: Some(after) },
                ..
            }) if after == Duration::from_secs(60)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_honoured_as_the_least_pause() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let result = retry(&policy(), &CallScope::default(), None, "test", || {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                if n == 0 {
                    Err(transient(Some(Duration::from_secs(3))))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.expect("the second try succeeds"), 1);
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_pause_at_once() {
        let scope = CallScope::default();
        let stop = scope.stop.clone();
        let started = Instant::now();
        let pausing = tokio::spawn(async move {
            let policy = RetryPolicy {
                base: Duration::from_secs(4),
                ..policy()
            };
            let mut attempts = Attempts::new(&policy, &scope, "test");
            attempts.pause(None, "HTTP 503").await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        assert_eq!(pausing.await.unwrap(), Err(GaveUp::Shutdown));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_total_time_of_the_pauses() {
        let policy = RetryPolicy {
            attempts: 100,
            base: Duration::from_secs(4),
            max: Duration::from_secs(4),
            budget: Duration::from_secs(10),
        };
        let scope = CallScope::default();
        let started = Instant::now();
        let mut attempts = Attempts::new(&policy, &scope, "test");
        let mut pauses = 0;
        while attempts.pause(None, "HTTP 503").await.is_ok() {
            pauses += 1;
        }
        assert!(pauses >= 2, "{pauses}");
        assert!(
            started.elapsed() <= Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_entry_shows_the_retry_until_the_request_gets_somewhere() {
        let live = Arc::new(LiveProgress::default());
        let scope = CallScope {
            entries: vec![Arc::clone(&live)],
            ..CallScope::default()
        };
        let policy = policy();
        let mut attempts = Attempts::new(&policy, &scope, "test");
        attempts.pause(None, "HTTP 503 from KiFS").await.unwrap();
        let note = live.retry().expect("the pause is published");
        assert_eq!(note.attempt, 1);
        assert_eq!(note.last_error, "HTTP 503 from KiFS");
        attempts.progressed();
        assert!(live.retry().is_none());
        attempts.pause(None, "HTTP 502").await.unwrap();
        assert!(live.retry().is_some());
        drop(attempts);
        assert!(live.retry().is_none(), "the note ends with the request");
    }
}
