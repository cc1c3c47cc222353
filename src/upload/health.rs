//! Whether a remote answers: the health of one remote (a backend and its endpoint URL).
//!
//! Every HTTP request a backend sends reports its outcome here ([`RemoteHealth::observe`]).
//! A connection that fails, a timeout, a 5xx, 408 or 429 is a *transient failure*; any
//! other answer means the remote is there (a 404 or a 400 is the remote answering).
//!
//! 1. Up: count consecutive transient failures; any answer resets the count.
//! 2. [`DOWN_AFTER`] consecutive transient failures: the remote is *down* (since now, with
//!    the last error). Jobs of its folders are no longer claimed, and in-place retries on it
//!    give up at once ([`super::retry::Attempts`]): one probe (run by the daemon) asks it.
//! 3. Down: the first answer of any request (a probe or a request still in flight) makes it
//!    up again; whoever waits on [`RemoteHealth::came_up`] then releases its waiting jobs.
//!
//! A remote no request has had an answer from yet counts as up for the scheduling (its
//! folders' files are tried), but is not shown as answering: `answered` stays false, and
//! `upsync_remote_up` reads 0, until its first answer.
//!
//! Counting requests rather than jobs makes the judgement quick (a few seconds of refused
//! connections) and keeps it apart from what one file does (a rejected name is an answer).

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::queue::to_ms;

/// Consecutive transient failures after which a remote counts as down.
pub const DOWN_AFTER: u32 = 5;

/// The health of one remote (module doc).
#[derive(Debug)]
pub struct RemoteHealth {
    backend: &'static str,
    endpoint: String,
    threshold: u32,
    state: Mutex<State>,
    /// `true` while up; changes wake [`RemoteHealth::went_down`] and [`RemoteHealth::came_up`].
    up: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    last_error: Option<String>,
    /// When the current up or down period began (ms since the epoch); 0 = since start.
    since_ms: u64,
    /// Whether any request had an answer since the start.
    answered: bool,
    next_probe_ms: Option<u64>,
}

/// One remote as `upsync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthSnapshot {
    pub backend: String,
    pub remote: String,
    /// `up` or `down`.
    pub state: String,
    /// Whether the remote has answered a request since the start: a remote that is `up`
    /// without having answered is only not yet judged down.
    #[serde(default)]
    pub answered: bool,
    /// When the remote went down, or came back up; `None` when up since the start.
    pub since_ms: Option<u64>,
    pub last_error: Option<String>,
    /// When the next probe of a down remote is due.
    pub next_probe_ms: Option<u64>,
}

impl RemoteHealth {
    pub fn new(backend: &'static str, endpoint: &str) -> RemoteHealth {
        RemoteHealth::with_threshold(backend, endpoint, DOWN_AFTER)
    }

    pub fn with_threshold(backend: &'static str, endpoint: &str, threshold: u32) -> RemoteHealth {
        RemoteHealth {
            backend,
            endpoint: endpoint.to_string(),
            threshold: threshold.max(1),
            state: Mutex::new(State::default()),
            up: watch::Sender::new(true),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Records one request: `Some(status)` when the remote answered, `None` when no answer
    /// came; `describe` gives the error text of a transient failure.
    pub fn observe(&self, status: Option<u16>, describe: impl FnOnce() -> String) {
        match status {
            Some(status) if !is_transient_status(status) => self.answered(),
            _ => self.failed(&describe()),
        }
    }

    /// The remote answered (module doc, steps 1 and 3).
    pub fn answered(&self) {
        let mut state = self.lock();
        state.failures = 0;
        state.answered = true;
        if !self.is_up() {
            state.since_ms = to_ms(SystemTime::now());
            state.next_probe_ms = None;
            tracing::info!(backend = self.backend, remote = %self.endpoint, "the remote answers again");
            self.up.send_replace(true);
        }
    }

    /// A transient failure (module doc, step 2).
    pub fn failed(&self, error: &str) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        state.last_error = Some(error.to_string());
        if self.is_up() && state.failures >= self.threshold {
            state.since_ms = to_ms(SystemTime::now());
            tracing::warn!(
                backend = self.backend,
                remote = %self.endpoint,
                failures = state.failures,
                last_error = %error,
                "the remote is down; its folders wait, one probe checks when it is back"
            );
            self.up.send_replace(false);
        }
    }

    /// Resolves once the remote is down (at once when it already is).
    pub async fn went_down(&self) {
        let mut changes = self.up.subscribe();
        let _ = changes.wait_for(|up| !*up).await;
    }

    /// Resolves once the remote is up (at once when it already is).
    pub async fn came_up(&self) {
        let mut changes = self.up.subscribe();
        let _ = changes.wait_for(|up| *up).await;
    }

    /// Follows up/down changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// When the prober will ask next (shown by `status`).
    pub fn set_next_probe(&self, at: Option<SystemTime>) {
        self.lock().next_probe_ms = at.map(to_ms);
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let state = self.lock();
        let up = self.is_up();
        HealthSnapshot {
            backend: self.backend.to_string(),
            remote: self.endpoint.clone(),
            state: if up { "up" } else { "down" }.to_string(),
            answered: state.answered,
            since_ms: (state.since_ms > 0).then_some(state.since_ms),
            last_error: state.last_error.clone(),
            next_probe_ms: if up { None } else { state.next_probe_ms },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters: a panicking holder cannot leave them half-changed.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Answers that say the remote is overloaded or failing rather than answering the request.
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn transient_statuses_are_5xx_408_and_429_and_nothing_else() {
        let table = [
            (200, false),
            (308, false),
            (400, false),
            (401, false),
            (404, false),
            (408, true),
            (409, false),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (504, true),
        ];
        for (status, transient) in table {
            assert_eq!(is_transient_status(status), transient, "{status}");
        }
    }

    #[test]
    fn consecutive_failures_take_the_remote_down_and_any_answer_brings_it_back() {
        let health = RemoteHealth::with_threshold("kifs", "http://k", 3);
        health.failed("refused");
        health.failed("refused");
        health.observe(Some(404), || unreachable!("an answer is no failure"));
        health.failed("refused");
        health.failed("refused");
        assert!(health.is_up(), "the 404 answer reset the count");
        health.observe(None, || "timed out".into());
        assert!(!health.is_up());
        let down = health.snapshot();
        assert_eq!(down.state, "down");
        assert_eq!(down.last_error.as_deref(), Some("timed out"));
        assert!(down.since_ms.is_some());
        health.observe(Some(503), || "HTTP 503".into());
        assert!(!health.is_up());
        health.answered();
        assert!(health.is_up());
        assert_eq!(health.snapshot().next_probe_ms, None);
    }

    #[test]
    fn a_remote_is_shown_answering_only_after_its_first_answer() {
        let health = RemoteHealth::with_threshold("kifs", "http://k", 3);
        assert!(!health.snapshot().answered);
        health.failed("refused");
        let tried = health.snapshot();
        assert!(
            health.is_up() && !tried.answered,
            "not judged down yet, not answering"
        );
        health.observe(Some(404), || unreachable!("an answer is no failure"));
        assert!(health.snapshot().answered);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_hear_of_both_changes() {
        let health = std::sync::Arc::new(RemoteHealth::with_threshold("redivis", "http://r", 1));
        let down = tokio::spawn({
            let health = std::sync::Arc::clone(&health);
            async move { health.went_down().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!down.is_finished());
        health.failed("refused");
        down.await.unwrap();
        let up = tokio::spawn({
            let health = std::sync::Arc::clone(&health);
            async move { health.came_up().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!up.is_finished());
        health.answered();
        up.await.unwrap();
    }
}
