//! Pacing of Redivis API requests: one token bucket shared by every worker of the backend.
//!
//! Redivis allows about 100 API requests per 100 s (protocol §3). The bucket starts full
//! (capacity 100) and refills one token a second, so a burst is allowed but the long-run
//! rate stays under the limit. The server's own count wins when it is lower: every
//! response's `X-RateLimit-Remaining` caps the local tokens once it drops under a low-water
//! mark (other clients may share the token's budget). A `429` blocks every API call until
//! its `Retry-After` has passed. Session-URL PUTs are not API requests and are not paced.

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
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            capacity: 100.0,
            refill_per_sec: 1.0,
            low_water: 10,
            default_block: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled_at: Instant,
    blocked_until: Option<Instant>,
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
            }),
        }
    }

    /// Waits until one API request may be sent, and takes its token.
    pub async fn acquire(&self) {
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
                            return;
                        }
                        Duration::from_secs_f64((1.0 - state.tokens) / self.config.refill_per_sec)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes the server's `X-RateLimit-Remaining` into account.
    pub fn observe_remaining(&self, remaining: u64) {
        if remaining >= self.config.low_water {
            return;
        }
        let mut state = self.state.lock().expect("pacer lock is not poisoned");
        self.refill(&mut state, Instant::now());
        state.tokens = state.tokens.min(remaining as f64);
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
        }
    }

    #[tokio::test]
    async fn a_full_bucket_allows_a_burst_then_paces_at_the_refill_rate() {
        let pacer = Pacer::new(small());
        let start = Instant::now();
        for _ in 0..3 {
            pacer.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(40),
            "the burst is not delayed"
        );
        for _ in 0..4 {
            pacer.acquire().await;
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
        pacer.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        // A shorter block does not shorten a longer one; no Retry-After = the default.
        let again = Instant::now();
        pacer.block(Some(Duration::from_millis(250)));
        pacer.block(Some(Duration::from_millis(10)));
        pacer.acquire().await;
        assert!(again.elapsed() >= Duration::from_millis(250));
        let third = Instant::now();
        pacer.block(None);
        pacer.acquire().await;
        assert!(third.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_low_server_remainder_caps_the_local_tokens() {
        let pacer = Pacer::new(small());
        pacer.observe_remaining(10); // above low water: ignored
        let start = Instant::now();
        pacer.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(40));
        pacer.observe_remaining(0);
        let start = Instant::now();
        pacer.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(45));
    }
}
