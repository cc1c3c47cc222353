//! The daemon's beat: the checks an idle daemon makes every second or every few seconds (an
//! idle worker's look for due jobs, the state database's check, a quiet folder's tick, the
//! status line, the secret files) fire on the same whole seconds of one clock, so an idle
//! daemon wakes once a second for all of them instead of once for each at its own moment.
//!
//! A deadline put on the beat moves to the nearest beat, by half a [`BEAT`] at most, so a
//! timer that asks for a second again each time it fires still fires once a second. Only
//! timers whose exact moment does not matter go on it (never a retry's due time or a settle
//! time).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The beat's period.
pub const BEAT: Duration = Duration::from_secs(1);

/// The beat's first instant: the first time the process asked for it.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// `deadline`, moved to the nearest beat (the later one when halfway).
pub fn on_beat(deadline: Instant) -> Instant {
    on_beat_from(*ORIGIN.get_or_init(Instant::now), deadline)
}

/// [`on_beat`] for a beat that started at `origin`.
fn on_beat_from(origin: Instant, deadline: Instant) -> Instant {
    // A deadline before the origin (only a test's paused clock makes one) stays as it is.
    let Some(since) = deadline.checked_duration_since(origin) else {
        return deadline;
    };
    let beats = (since.as_nanos() + BEAT.as_nanos() / 2) / BEAT.as_nanos();
    let offset = u64::try_from(beats * BEAT.as_nanos()).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(offset)
}

/// An interval of `period` (a whole number of beats, for its ticks to stay on the beat)
/// whose first tick is the nearest beat (at once when that one has passed); a tick missed
/// under load is skipped, not made up.
pub fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(on_beat(Instant::now()), period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_to_the_nearest_whole_beat() {
        let origin = Instant::now();
        let ms = Duration::from_millis;
        let at = |deadline| on_beat_from(origin, origin + deadline);
        assert_eq!(at(ms(1_300)), origin + ms(1_000));
        assert_eq!(at(ms(1_500)), origin + ms(2_000), "halfway goes later");
        assert_eq!(
            at(ms(1_600)),
            at(ms(2_499)),
            "deadlines around one beat share it"
        );
        assert_eq!(
            at(ms(2_000)),
            origin + ms(2_000),
            "a deadline on the beat stays"
        );
        // A timer asking for a second each time it fires, a little after its beat.
        let mut fired = origin + ms(1_000);
        for _ in 0..3 {
            let next = on_beat_from(origin, fired + ms(3) + BEAT);
            assert_eq!(next - fired, BEAT, "a second's timer fires once a second");
            fired = next;
        }
        assert_eq!(
            on_beat_from(origin + ms(10), origin),
            origin,
            "a deadline before the origin stays"
        );
    }
}
