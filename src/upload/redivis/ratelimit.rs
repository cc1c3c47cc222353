//! Pacing of Redivis API requests: one token bucket shared by every worker of the backend.
//!
//! Redivis allows about 100 API requests per 100 s (protocol §3). The bucket starts full
//! (capacity 100) and refills one token a second, so a burst is allowed but the long-run
//! rate stays under the limit. The server's own count is better than our estimate (other
//! clients may share the token's budget, and the window is the server's): every response's
//! `X-RateLimit-Remaining`, less the requests still in flight, becomes the local token
//! count, up as well as down. A server that reports no limit trouble is therefore not
//! paced at 1/s, and a low remainder slows us at once. (With `follow_server` off, the
//! server's count only caps the local tokens once it drops under a low-water mark.)
//! A `429` blocks every API call until its `Retry-After` has passed. Session-URL PUTs are
//! not API requests and are not paced.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Token bucket parameters (internal; tests use small numbers).
#[derive(Debug, Clone, Copy)]
pub struct PacerConfig {
    pub capacity: f64,
    pub refill_per_sec: f64,
    /// Below this server-reported remainder, local tokens are capped to it.
    pub low_water: u64,
    /// Pause after a 429 that carries no usable `Retry-After`.
    pub default_block: Duration,
    /// Take the server's `X-RateLimit-Remaining` as the token count (see the module doc).
    pub follow_server: bool,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            capacity: 100.0,
            refill_per_sec: 1.0,
            low_water: 10,
            default_block: Duration::from_secs(10),
            follow_server: true,
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled_at: Instant,
    blocked_until: Option<Instant>,
    in_flight: u64,
}

#[derive(Debug)]
pub struct Pacer {
    config: PacerConfig,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(config: PacerConfig) -> Pacer {
        Pacer {
            config,
            state: Mutex::new(State {
                tokens: config.capacity,
                refilled_at: Instant::now(),
                blocked_until: None,
                in_flight: 0,
            }),
        }
    }

    /// Waits until one API request may be sent, and takes its token. The permit counts
    /// the request as in flight until it is finished (or dropped).
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("pacer lock is not poisoned");
                let now = Instant::now();
                self.refill(&mut state, now);
                match state.blocked_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        state.blocked_until = None;
                        if state.tokens >= 1.0 {
                            state.tokens -= 1.0;
                            state.in_flight += 1;
                            return Permit { pacer: self };
                        }
                        Duration::from_secs_f64((1.0 - state.tokens) / self.config.refill_per_sec)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes the server's `X-RateLimit-Remaining` of a response into account.
    fn observe_remaining(&self, state: &mut State, remaining: u64) {
        let available = remaining.saturating_sub(state.in_flight) as f64;
        if self.config.follow_server {
            state.tokens = available.min(self.config.capacity);
        } else if remaining < self.config.low_water {
            state.tokens = state.tokens.min(available);
        }
    }

    fn finish(&self, remaining: Option<u64>) {
        let mut state = self.state.lock().expect("pacer lock is not poisoned");
        self.refill(&mut state, Instant::now());
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(remaining) = remaining {
            self.observe_remaining(&mut state, remaining);
        }
    }

    /// A 429: no API call until `retry_after` (or the default pause) has passed.
    pub fn block(&self, retry_after: Option<Duration>) {
        let pause = retry_after.unwrap_or(self.config.default_block);
        let mut state = self.state.lock().expect("pacer lock is not poisoned");
        let until = Instant::now() + pause;
        state.tokens = 0.0;
        state.blocked_until = Some(match state.blocked_until {
            Some(current) if current > until => current,
            _ => until,
        });
    }

    fn refill(&self, state: &mut State, now: Instant) {
        let elapsed = now
            .saturating_duration_since(state.refilled_at)
            .as_secs_f64();
        state.tokens =
            (state.tokens + elapsed * self.config.refill_per_sec).min(self.config.capacity);
        state.refilled_at = now;
    }
}

/// One paced request in flight.
#[must_use = "a permit counts its request as in flight until finished"]
pub struct Permit<'a> {
    pacer: &'a Pacer,
}

impl Permit<'_> {
    /// The request got an answer carrying `X-RateLimit-Remaining` (if any).
    pub fn finish(self, remaining: Option<u64>) {
        self.pacer.finish(remaining);
        std::mem::forget(self);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // No answer (transport error, cancellation): the request is no longer in flight.
        self.pacer.finish(None);
    }
}

#[cfg(test)]
mod tests {
    // Real (short) time: the crate does not enable tokio's paused test clock.
    use super::*;

    fn small() -> PacerConfig {
        PacerConfig {
            capacity: 3.0,
            refill_per_sec: 20.0,
            low_water: 2,
            default_block: Duration::from_millis(300),
            follow_server: false,
        }
    }

    #[tokio::test]
    async fn a_full_bucket_allows_a_burst_then_paces_at_the_refill_rate() {
        let pacer = Pacer::new(small());
        let start = Instant::now();
        for _ in 0..3 {
            pacer.acquire().await.finish(None);
        }
        assert!(
            start.elapsed() < Duration::from_millis(40),
            "the burst is not delayed"
        );
        for _ in 0..4 {
            pacer.acquire().await.finish(None);
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(190) && elapsed < Duration::from_millis(600),
            "four more requests take four refill intervals (4 x 50 ms), took {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn a_429_blocks_every_caller_until_retry_after() {
        let pacer = Pacer::new(small());
        let start = Instant::now();
        pacer.block(Some(Duration::from_millis(300)));
        let _permit = pacer.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        // A shorter block does not shorten a longer one; no Retry-After = the default.
        let again = Instant::now();
        pacer.block(Some(Duration::from_millis(250)));
        pacer.block(Some(Duration::from_millis(10)));
        let _permit = pacer.acquire().await;
        assert!(again.elapsed() >= Duration::from_millis(250));
        let third = Instant::now();
        pacer.block(None);
        let _permit = pacer.acquire().await;
        assert!(third.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_low_server_remainder_caps_the_local_tokens() {
        let pacer = Pacer::new(small());
        pacer.acquire().await.finish(Some(10)); // above low water: ignored
        let start = Instant::now();
        pacer.acquire().await.finish(Some(0));
        assert!(start.elapsed() < Duration::from_millis(40));
        let start = Instant::now();
        drop(pacer.acquire().await);
        assert!(start.elapsed() >= Duration::from_millis(45));
    }

    #[tokio::test]
    async fn following_the_server_lifts_and_lowers_the_tokens_minus_requests_in_flight() {
        let pacer = Pacer::new(PacerConfig {
            follow_server: true,
            ..small()
        });
        let start = Instant::now();
        // The server keeps saying 3 are left: never paced, far beyond the bucket's 3.
        for _ in 0..20 {
            pacer.acquire().await.finish(Some(3));
        }
        assert!(start.elapsed() < Duration::from_millis(40));
        // One request still in flight when the server says 1 is left: nothing is.
        let in_flight = pacer.acquire().await;
        pacer.acquire().await.finish(Some(1));
        let start = Instant::now();
        pacer.acquire().await.finish(None);
        assert!(start.elapsed() >= Duration::from_millis(45));
        drop(in_flight);
    }
}
