//! The Redivis API rate limit: a sliding window of accepted requests (about 1,000 per 60 s
//! in the current docs, 100 per 100 s in older ones). Only API requests count; session and
//! temp-upload URLs never do.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; `remaining` requests are left in the current window.
    Allowed { remaining: u32 },
    /// Refused; the oldest request in the window leaves it after `retry_after_secs`.
    Limited { retry_after_secs: u64 },
}

#[derive(Debug)]
pub struct Limiter {
    pub max: u32,
    window: Duration,
    enforce: bool,
    accepted: Mutex<VecDeque<Instant>>,
}

impl Limiter {
    /// With `enforce` off, every request is allowed and `remaining` stays at `max`: a
    /// client pacing itself on `X-RateLimit-Remaining` should not slow down for a limit
    /// that does not exist.
    pub fn new(max: u32, window: Duration, enforce: bool) -> Limiter {
        Limiter {
            max,
            window,
            enforce,
            accepted: Mutex::new(VecDeque::new()),
        }
    }

    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] at a given instant (tests drive it with simulated time).
    pub(crate) fn check_at(&self, now: Instant) -> Verdict {
        if !self.enforce {
            return Verdict::Allowed {
                remaining: self.max,
            };
        }
        let mut accepted = self
            .accepted
            .lock()
            .expect("limiter lock is never poisoned");
        while accepted
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.window)
        {
            accepted.pop_front();
        }
        if accepted.len() as u64 >= u64::from(self.max) {
            let oldest = *accepted.front().unwrap_or(&now);
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            // Whole seconds, rounded up, never 0: "Retry-After: 0" invites a hot loop.
            let retry_after_secs = wait.as_millis().div_ceil(1000).max(1) as u64;
            return Verdict::Limited { retry_after_secs };
        }
        accepted.push_back(now);
        Verdict::Allowed {
            remaining: self.max - accepted.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_recovers_when_the_window_slides() {
        let limiter = Limiter::new(2, Duration::from_secs(10), true);
        let start = Instant::now();
        assert_eq!(limiter.check_at(start), Verdict::Allowed { remaining: 1 });
        assert_eq!(
            limiter.check_at(start + Duration::from_secs(4)),
            Verdict::Allowed { remaining: 0 }
        );
        assert_eq!(
            limiter.check_at(start + Duration::from_secs(5)),
            Verdict::Limited {
                retry_after_secs: 5
            }
        );
        assert_eq!(
            limiter.check_at(start + Duration::from_secs(10)),
            Verdict::Allowed { remaining: 0 }
        );
    }

    #[test]
    fn a_disabled_limiter_always_reports_the_full_budget() {
        let limiter = Limiter::new(3, Duration::from_secs(1), false);
        for _ in 0..10 {
            assert_eq!(limiter.check(), Verdict::Allowed { remaining: 3 });
        }
    }
}
