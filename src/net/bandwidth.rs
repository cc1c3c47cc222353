//! The upload bandwidth limit: one pacing timeline shared by every request body of both
//! backends, at the rate the configuration puts in force now (`bandwidth_limit`, or the
//! `bandwidth_schedule` entry that matches the local time).
//!
//! Pacing, per piece of a request body ([`Bandwidth::reserve`]):
//! 1. Look up the limit in force (a schedule is read at the local time of the call).
//! 2. No limit: send at once, and forget past reservations.
//! 3. Otherwise the piece takes the next free slot of the timeline: it starts where the
//!    previous piece ended (or now, when the line is idle, minus at most [`BURST`] of unused
//!    time, so a short pause does not waste the link) and lasts `len / rate`.
//! 4. The caller waits until the piece's slot starts, then sends it.
//!
//! Because every piece of every request reserves on the same line, the aggregate over all
//! workers stays at the limit, whatever the number of uploads. A changed limit (SIGHUP, a
//! schedule boundary) applies from the next piece.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::schedule::{InForce, LocalClock, SystemClock};
use crate::config::BandwidthConfig;

/// Unused time an idle line may make up for at once.
pub const BURST: Duration = Duration::from_millis(250);

/// The largest piece a body is cut into; slower limits use smaller pieces (an eighth of a
/// second's worth, at least [`MIN_PIECE`]) so pacing stays smooth.
pub const MAX_PIECE: usize = 64 << 10;
pub const MIN_PIECE: usize = 1 << 10;

/// The shared limiter; cheap to consult when no limit is configured.
pub struct Bandwidth {
    config: Mutex<BandwidthConfig>,
    /// When the last reserved piece ends.
    next_free: Mutex<Option<Instant>>,
    clock: Box<dyn LocalClock>,
}

impl Default for Bandwidth {
    /// No limit, schedules read at the system's local time.
    fn default() -> Self {
        Bandwidth::with_clock(BandwidthConfig::default(), Box::new(SystemClock))
    }
}

impl std::fmt::Debug for Bandwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bandwidth")
            .field("in_force", &self.in_force())
            .finish()
    }
}

impl Bandwidth {
    /// A limiter reading schedules at the system's local time.
    pub fn new(config: BandwidthConfig) -> Arc<Bandwidth> {
        Arc::new(Bandwidth::with_clock(config, Box::new(SystemClock)))
    }

    pub fn unlimited() -> Arc<Bandwidth> {
        Bandwidth::new(BandwidthConfig::default())
    }

    pub fn with_clock(config: BandwidthConfig, clock: Box<dyn LocalClock>) -> Bandwidth {
        Bandwidth {
            config: Mutex::new(config),
            next_free: Mutex::new(None),
            clock,
        }
    }

    /// Replaces the limit or timetable (a reload); the next piece follows it.
    pub fn configure(&self, config: BandwidthConfig) {
        *self
            .config
            .lock()
            .expect("bandwidth lock is never poisoned") = config;
    }

    /// The limit in force now and the entry that sets it.
    pub fn in_force(&self) -> InForce {
        let config = self
            .config
            .lock()
            .expect("bandwidth lock is never poisoned");
        match &config.schedule {
            Some(schedule) => schedule.in_force(self.clock.now()),
            None => InForce {
                limit: config.limit,
                rule: config.limit.map(|_| "bandwidth_limit".to_string()),
            },
        }
    }

    /// How many bytes of a body to send as one piece under the limit in force.
    pub fn piece_size(&self) -> usize {
        match self.in_force().limit {
            None => MAX_PIECE,
            Some(rate) => ((rate / 8) as usize).clamp(MIN_PIECE, MAX_PIECE),
        }
    }

    /// Reserves the slot of a `len`-byte piece (module doc) and returns how long to wait
    /// before sending it.
    pub fn reserve(&self, len: usize, now: Instant) -> Duration {
        let limit = self.in_force().limit;
        let mut next_free = self
            .next_free
            .lock()
            .expect("bandwidth lock is never poisoned");
        let Some(rate) = limit else {
            *next_free = None;
            return Duration::ZERO;
        };
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = next_free.map_or(earliest, |free| free.max(earliest));
        let cost = Duration::from_secs_f64(len as f64 / rate as f64);
        *next_free = Some(start + cost);
        start.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::schedule::{Schedule, WeekTime};
    use std::sync::atomic::{AtomicU16, Ordering};

    /// A clock standing at a minute of Monday that the test moves.
    struct Monday(Arc<AtomicU16>);

    impl LocalClock for Monday {
        fn now(&self) -> WeekTime {
            WeekTime::new(0, 0, self.0.load(Ordering::Relaxed))
        }
    }

    fn limited(rate: u64) -> Bandwidth {
        Bandwidth::with_clock(
            BandwidthConfig {
                limit: Some(rate),
                schedule: None,
            },
            Box::new(SystemClock),
        )
    }

    #[test]
    fn pieces_of_all_requests_share_one_timeline_at_the_limit() {
        let bandwidth = limited(1 << 20);
        let now = Instant::now();
        // An idle line lets the first BURST go at once.
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(bandwidth.reserve(64 << 10, now));
        }
        assert_eq!(waits[0], Duration::ZERO);
        // 8 × 64 KiB = 512 KiB at 1 MiB/s: the last piece starts 437.5 ms after the
        // first, 250 ms of which the idle line made up for.
        let last = waits[7].as_secs_f64();
        assert!((last - 0.1875).abs() < 0.001, "{last}");
        // Each later piece waits one piece's time longer than the previous one.
        let step = (waits[7] - waits[6]).as_secs_f64();
        assert!((step - 0.0625).abs() < 0.001, "{step}");
    }

    #[test]
    fn no_limit_sends_at_once_and_forgets_the_timeline() {
        let bandwidth = Bandwidth::unlimited();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(bandwidth.reserve(MAX_PIECE, now), Duration::ZERO);
        }
        assert_eq!(bandwidth.in_force().limit, None);
        assert_eq!(bandwidth.piece_size(), MAX_PIECE);
    }

    #[test]
    fn a_new_limit_applies_from_the_next_piece() {
        let bandwidth = limited(1 << 20);
        let now = Instant::now();
        bandwidth.reserve(4 << 20, now);
        assert!(bandwidth.reserve(1, now) > Duration::from_secs(3));
        bandwidth.configure(BandwidthConfig::default());
        assert_eq!(bandwidth.reserve(4 << 20, now), Duration::ZERO);
        assert_eq!(bandwidth.piece_size(), MAX_PIECE);
        bandwidth.configure(BandwidthConfig {
            limit: Some(16 << 10),
            schedule: None,
        });
        assert_eq!(bandwidth.piece_size(), 2 << 10, "an eighth of a second");
    }

    #[test]
    fn the_schedule_is_read_at_the_clock_s_local_time() {
        let minute = Arc::new(AtomicU16::new(8 * 60 - 1));
        let schedule = Schedule::parse(&["08:00-18:00 5MiB/s", "off"]).expect("parses");
        let bandwidth = Bandwidth::with_clock(
            BandwidthConfig {
                limit: None,
                schedule: Some(schedule),
            },
            Box::new(Monday(Arc::clone(&minute))),
        );
        assert_eq!(bandwidth.in_force().limit, None);
        minute.store(8 * 60, Ordering::Relaxed);
        let in_force = bandwidth.in_force();
        assert_eq!(in_force.limit, Some(5 << 20));
        assert_eq!(in_force.rule.as_deref(), Some("08:00-18:00 5MiB/s"));
    }
}
