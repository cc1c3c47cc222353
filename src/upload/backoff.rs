//! Exponential backoff with full jitter, and `Retry-After` parsing.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Delays for successive attempts: `base * 2^attempt`, capped at `max`, each drawn uniformly
/// from the upper half of that bound so that many clients spread out without ever retrying
/// immediately.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt; `floor` (e.g. a server's `Retry-After`) wins when
    /// it is longer.
    pub fn next_delay(&mut self, floor: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let bound = delay_bound(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = bound / 2;
        let jittered = half + bound.saturating_sub(half).mul_f64(rng.random::<f64>());
        match floor {
            Some(floor) if floor > jittered => floor,
            _ => jittered,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base * 2^attempt`, capped at `max`.
pub fn delay_bound(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(30));
    base.saturating_mul(factor).min(max)
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Retry-After` of a response, if present and parseable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_exponentially_within_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..10)
            .map(|_| backoff.next_delay(None, &mut rng))
            .collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let bound = delay_bound(
                Duration::from_secs(1),
                Duration::from_secs(60),
                attempt as u32,
            );
            assert!(
                *delay >= bound / 2 && *delay <= bound,
                "{attempt}: {delay:?} vs {bound:?}"
            );
        }
        assert!(delays[9] <= Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let delay = backoff.next_delay(Some(Duration::from_secs(30)), &mut rng);
        assert_eq!(delay, Duration::from_secs(30));
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("17", now), Some(Duration::from_secs(17)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
