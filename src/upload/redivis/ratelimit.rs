//! Pacing of Redivis API requests: one budget shared by every worker of the backend, kept
//! so that the server never needs to answer 429 (protocol §3, §15).
//!
//! Redivis announces its limit on every answer (`X-RateLimit-Limit`, about 1,000 today,
//! 100 in older docs) and what is left of it (`X-RateLimit-Remaining`), but not how long
//! its window is. A client that spends its budget in a burst and then waits for a
//! token-bucket refill would send the next request while the server still counts the
//! burst: a 429. So the pacer keeps what the server keeps: the requests it counts, and
//! when each stops counting. Session-URL PUTs are not API requests and are not paced.
//!
//! # The algorithm ([`Budget`], a pure state machine; time is passed in)
//! 1. The limit is the latest `X-RateLimit-Limit` (100 until an answer says otherwise).
//! 2. Sending a request takes one credit; it is in flight until its answer.
//! 3. An answer enters the log with its time. When it carries `X-RateLimit-Remaining`,
//!    the credits become what remains less the requests the server may have counted
//!    after it counted this one: those still in flight, and those answered since this
//!    one was sent (answers overtake each other). The log keeps only the newest `limit - remaining - in flight`
//!    answers: the server counts no more of ours than that (the requests in flight may be
//!    among them; their own answers log them).
//! 4. A logged answer gives its credit back `window` after it arrived: by then the server
//!    no longer counts it, as long as `window` is at least the server's window. `window`
//!    starts at the `[redivis] rate_limit_window` key (default: the longest window the
//!    docs have named, 100 s).
//! 5. A request may go when a credit is left; otherwise it waits for the next credit to
//!    come back. With nothing logged and nothing in flight (another client spent the
//!    budget), one request goes `window` after the last answer.
//! 6. A 429 blocks every request until its `Retry-After` (a default pause without one),
//!    after which one request may go. A 429 that carries the rate-limit headers (the
//!    server's own limiter, not a proxy) also teaches the window: if the oldest logged
//!    answer would have given its credit back before `Retry-After` ends, the window is
//!    longer than assumed, and grows to match.
//! 7. An answer that never came (transport error, cancellation) is logged like one that
//!    did: the server may have counted the request.
//!
//! A server window shorter than `window` only costs speed (at most `limit` requests per
//! `window`), never a 429; a fixed window (reset every interval) is as safe as a sliding
//! one, since no span of `window` holds more than `limit` requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Pacing parameters (internal; tests use small numbers).
#[derive(Debug, Clone, Copy)]
pub struct PacerConfig {
    /// The limit until an answer announces one.
    pub initial_limit: u64,
    /// How long the server counts a request, until a 429 shows it counts longer.
    pub window: Duration,
    /// Pause after a 429 that carries no usable `Retry-After`.
    pub default_block: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            initial_limit: 100,
            window: crate::config::DEFAULT_RATE_LIMIT_WINDOW,
            default_block: Duration::from_secs(10),
        }
    }
}

impl PacerConfig {
    /// The defaults, counting requests over `window` (the `rate_limit_window` key).
    pub fn with_window(window: Duration) -> PacerConfig {
        PacerConfig {
            window,
            ..PacerConfig::default()
        }
    }
}

/// What an answer's `X-RateLimit-*` headers announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Announced {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

impl Announced {
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none()
    }
}

/// The budget (module doc, steps 1–7).
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    window: Duration,
    default_block: Duration,
    /// May go negative when the server reports less than we thought we had.
    credits: i64,
    /// The requests sent and not answered yet: sequence number → [`Self::answers`] when
    /// it was sent.
    in_flight: BTreeMap<u64, u64>,
    next_seq: u64,
    /// Answers (and losses) so far.
    answers: u64,
    /// Arrival times of the answers the server may still count, oldest first.
    log: VecDeque<Instant>,
    last_answer: Option<Instant>,
    blocked_until: Option<Instant>,
}

impl Budget {
    pub fn new(config: PacerConfig) -> Budget {
        Budget {
            limit: config.initial_limit,
            window: config.window,
            default_block: config.default_block,
            credits: config.initial_limit as i64,
            in_flight: BTreeMap::new(),
            next_seq: 0,
            answers: 0,
            log: VecDeque::new(),
            last_answer: None,
            blocked_until: None,
        }
    }

    /// The window currently assumed (it only grows, step 6).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Step 5: takes a credit for a request sent now and gives its sequence number, or
    /// says when to ask again (`None`: when an answer arrives).
    pub fn try_take(&mut self, now: Instant) -> Result<u64, Option<Instant>> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Err(Some(until));
            }
            self.blocked_until = None;
            self.credits = self.credits.max(1);
        }
        self.give_back(now);
        if self.credits >= 1 {
            self.credits -= 1;
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight.insert(seq, self.answers);
            return Ok(seq);
        }
        Err(self.next_credit_at())
    }

    /// Step 4 (and the fallback of step 5): credits of answers older than the window.
    fn give_back(&mut self, now: Instant) {
        while let Some(&oldest) = self.log.front() {
            if now < oldest + self.window {
                break;
            }
            self.log.pop_front();
            self.credits = (self.credits + 1).min(self.limit as i64);
        }
        let all_expired = self
            .last_answer
            .is_some_and(|last| now >= last + self.window);
        if self.credits < 1 && self.in_flight.is_empty() && self.log.is_empty() && all_expired {
            self.credits = 1;
        }
    }

    fn next_credit_at(&self) -> Option<Instant> {
        let missing = usize::try_from(1 - self.credits).unwrap_or(usize::MAX);
        match self.log.get(missing - 1) {
            Some(&at) => Some(at + self.window),
            None if !self.in_flight.is_empty() => None,
            None => Some(
                self.last_answer
                    .map_or(Instant::now(), |last| last + self.window),
            ),
        }
    }

    /// Steps 1 and 3: request `seq` got an answer other than 429.
    pub fn answered(&mut self, now: Instant, seq: u64, announced: Announced) {
        let answers_before = self.finish(seq);
        self.last_answer = Some(now);
        if let Some(limit) = announced.limit.filter(|&limit| limit > 0) {
            self.limit = limit;
        }
        self.log.push_back(now);
        match announced.remaining {
            Some(remaining) => {
                let uncounted = self.answers - answers_before - 1 + self.in_flight.len() as u64;
                self.credits = remaining as i64 - uncounted as i64;
                // Requests in flight may be among the counted ones: keeping their places
                // for answers the server may have let go would give credits back twice.
                let counted =
                    self.limit
                        .saturating_sub(remaining)
                        .saturating_sub(self.in_flight.len() as u64) as usize;
                while self.log.len() > counted {
                    self.log.pop_front();
                }
            }
            None => {
                while self.log.len() > self.limit as usize {
                    self.log.pop_front();
                }
            }
        }
    }

    /// Ends request `seq`; returns how many answers had come when it was sent.
    fn finish(&mut self, seq: u64) -> u64 {
        self.answers += 1;
        self.in_flight.remove(&seq).unwrap_or(self.answers - 1)
    }

    /// Step 7: request `seq` ended without an answer.
    pub fn lost(&mut self, now: Instant, seq: u64) {
        self.answered(now, seq, Announced::default());
    }

    /// Step 6: request `seq` got a 429; `announced` are its rate-limit headers, if any.
    pub fn refused(
        &mut self,
        now: Instant,
        seq: u64,
        retry_after: Option<Duration>,
        announced: Announced,
    ) {
        self.finish(seq);
        if let Some(limit) = announced.limit.filter(|&limit| limit > 0) {
            self.limit = limit;
        }
        let pause = retry_after.unwrap_or(self.default_block);
        let until = now + pause;
        if retry_after.is_some()
            && !announced.is_empty()
            && let Some(&oldest) = self.log.front()
            && oldest + self.window < until
        {
            // Our answer came after the server counted the request: a second covers that.
            let longer = until - oldest + Duration::from_secs(1);
            tracing::info!(
                assumed_s = self.window.as_secs_f64(),
                learned_s = longer.as_secs_f64(),
                "the Redivis rate-limit window is longer than assumed; pacing to it"
            );
            self.window = longer;
        }
        self.credits = self.credits.min(0);
        self.blocked_until = Some(match self.blocked_until {
            Some(current) if current > until => current,
            _ => until,
        });
    }
}

/// The budget shared by the backend's workers, with waiting.
#[derive(Debug)]
pub struct Pacer {
    budget: Mutex<Budget>,
    answers: Notify,
}

impl Pacer {
    pub fn new(config: PacerConfig) -> Pacer {
        Pacer {
            budget: Mutex::new(Budget::new(config)),
            answers: Notify::new(),
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().expect("pacer lock is not poisoned")
    }

    /// Waits until one API request may be sent, and takes its credit. The permit counts
    /// the request as in flight until it is answered (or dropped).
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            // Registered before the check, so an answer between the two is not missed.
            let answered = self.answers.notified();
            let wait = match self.budget().try_take(Instant::now()) {
                Ok(seq) => return Permit { pacer: self, seq },
                Err(wait) => wait,
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = answered => {}
                    }
                }
                None => answered.await,
            }
        }
    }

    /// The window the pacer currently assumes.
    pub fn window(&self) -> Duration {
        self.budget().window()
    }
}

/// One paced request in flight.
#[must_use = "a permit counts its request as in flight until it is answered"]
pub struct Permit<'a> {
    pacer: &'a Pacer,
    seq: u64,
}

impl Permit<'_> {
    /// The request got an answer other than 429, with these rate-limit headers.
    pub fn answered(self, announced: Announced) {
        self.pacer
            .budget()
            .answered(Instant::now(), self.seq, announced);
        self.pacer.answers.notify_waiters();
        std::mem::forget(self);
    }

    /// The request got a 429.
    pub fn refused(self, retry_after: Option<Duration>, announced: Announced) {
        self.pacer
            .budget()
            .refused(Instant::now(), self.seq, retry_after, announced);
        self.pacer.answers.notify_waiters();
        std::mem::forget(self);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.pacer.budget().lost(Instant::now(), self.seq);
        self.pacer.answers.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
