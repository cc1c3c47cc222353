//! The store's clock: the wall time every time the queue writes or compares is read from,
//! made never to run backward.
//!
//! Every time the queue keeps is wall time, since it must mean the same after a restart: a
//! queued job is due from the time it was queued, a retry from its next attempt, a held
//! deletion from the end of its delay. A system clock set back (an NTP step after a boot
//! with a wrong hardware clock, a virtual machine restored from a snapshot) would put all
//! of them in the future at once: the whole queue, new files behind it included, would
//! wait for as long as the clock went back. So the store reads this clock instead:
//!
//! 1. It starts at the system clock, or at the latest time the database holds if that is
//!    later ([`Clock::not_before`]: the clock went back while no process used the state
//!    dir).
//! 2. Each reading takes the system clock when that is not behind the clock's own course
//!    (the time of the last reading it took plus the monotonic time since). A clock set
//!    forward, or a machine waking from suspend, is followed at once.
//! 3. Otherwise the system clock went back: the reading is the clock's own course, which
//!    goes on at half the monotonic clock's pace, so that the system clock catches up with
//!    it in twice the time it went back. Nothing written before the step waits for it;
//!    a pause that falls in that time takes up to twice its length, which is what it costs
//!    to come back to the system's time rather than stay ahead of it for good.
//!
//! Times it hands out may thus be ahead of the system clock by as much as it went back,
//! until it catches up. Times compared with a file's mtime (module `watch::settle`) are
//! not the queue's and read the system clock.

use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use super::{from_ms, to_ms};

/// How far behind the clock's course the system clock must be for a reading to say it
/// went back: less is the noise of reading two clocks one after the other.
const STEP_MS: u64 = 1_000;

/// The store's clock (module doc).
pub(super) struct Clock {
    course: Mutex<Course>,
}

/// Where the clock's own course stands: the time it last set its course by, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Course {
    taken_ms: u64,
    taken_at: Instant,
    /// Whether the system clock is behind the course, which then goes at half pace.
    behind: bool,
    /// Whether the step that put it behind was told, so that a step is told once.
    told: bool,
}

/// One reading: the time, and how far the system clock was found to have gone back when
/// this reading is the first to tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    ms: u64,
    went_back_ms: Option<u64>,
}

impl Course {
    fn following(wall_ms: u64, now: Instant) -> Course {
        Course {
            taken_ms: wall_ms,
            taken_at: now,
            behind: false,
            told: false,
        }
    }

    /// Steps 2 and 3 of the module doc, for a system reading of `wall_ms` at `now`.
    fn read(&mut self, wall_ms: u64, now: Instant) -> Reading {
        let elapsed = u64::try_from(now.saturating_duration_since(self.taken_at).as_millis())
            .unwrap_or(u64::MAX);
        let pace = if self.behind { elapsed / 2 } else { elapsed };
        let course_ms = self.taken_ms.saturating_add(pace);
        if wall_ms >= course_ms {
            *self = Course::following(wall_ms, now);
            return Reading {
                ms: wall_ms,
                went_back_ms: None,
            };
        }
        if !self.behind {
            // From here on at half pace.
            self.taken_ms = course_ms;
            self.taken_at = now;
            self.behind = true;
        }
        let gap = course_ms - wall_ms;
        let tell = !self.told && gap >= STEP_MS;
        self.told |= tell;
        Reading {
            ms: course_ms,
            went_back_ms: tell.then_some(gap),
        }
    }
}

impl Clock {
    /// A clock at the system's time (step 1 of the module doc).
    pub fn new() -> Clock {
        Clock {
            course: Mutex::new(Course::following(to_ms(SystemTime::now()), Instant::now())),
        }
    }

    /// The time now (steps 2 and 3 of the module doc), in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let reading = self.lock().read(to_ms(SystemTime::now()), Instant::now());
        if let Some(went_back_ms) = reading.went_back_ms {
            tracing::warn!(
                went_back_s = went_back_ms / 1000,
                "the system clock went back; the queue's times go on from where they were, \
                 at half pace until the clock catches up, so nothing waits for the step"
            );
        }
        reading.ms
    }

    pub fn now(&self) -> SystemTime {
        from_ms(self.now_ms())
    }

    /// Moves the clock up to `ms` if it is behind it: the latest time the database holds,
    /// written by a process whose clock was ahead of this one's (step 1 of the module doc).
    pub fn not_before(&self, ms: u64) {
        let mut course = self.lock();
        let now = Instant::now();
        let reading = course.read(to_ms(SystemTime::now()), now);
        if ms <= reading.ms {
            return;
        }
        let told = ms - reading.ms >= STEP_MS;
        if told {
            tracing::warn!(
                behind_s = (ms - reading.ms) / 1000,
                "the state database holds times later than the system clock; the queue's \
                 times go on from the latest of them, at half pace until the clock catches up"
            );
        }
        *course = Course {
            taken_ms: ms,
            taken_at: now,
            behind: true,
            told,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Course> {
        self.course.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn course_at(ms: u64, at: Instant) -> Course {
        Course::following(ms, at)
    }

    #[test]
    fn a_system_clock_going_on_is_read_as_it_is() {
        let start = Instant::now();
        let mut course = course_at(10_000, start);
        let reading = course.read(10_500, start + Duration::from_millis(400));
        assert_eq!(reading.ms, 10_500);
        assert_eq!(reading.went_back_ms, None);
    }

    #[test]
    fn a_clock_set_forward_is_followed_at_once() {
        let start = Instant::now();
        let mut course = course_at(10_000, start);
        let reading = course.read(3_610_000, start + Duration::from_millis(5));
        assert_eq!(reading.ms, 3_610_000);
    }

    #[test]
    fn a_clock_set_back_is_told_once_and_caught_up_at_half_pace() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut course = course_at(3_600_000, start);
        // Set back an hour, a second after the last reading.
        let first = course.read(1_000, at(1));
        assert_eq!(first.ms, 3_601_000, "nothing goes back");
        assert_eq!(first.went_back_ms, Some(3_600_000));
        let second = course.read(3_000, at(3));
        assert_eq!(second.ms, 3_602_000, "two seconds later, one second on");
        assert_eq!(second.went_back_ms, None, "the step is told once");
        // At half pace, the system clock catches up after twice the hour.
        let before = course.read(7_199_000, at(7_199));
        assert_eq!(before.ms, 3_601_000 + 3_599_000);
        let caught_up = course.read(7_201_000, at(7_201));
        assert_eq!(caught_up.ms, 7_201_000);
        let after = course.read(7_202_000, at(7_202));
        assert_eq!(after.ms, 7_202_000, "followed again at full pace");
        // A second step is told again.
        let again = course.read(2_000, at(7_203));
        assert_eq!(again.went_back_ms, Some(7_201_000));
    }

    #[test]
    fn a_system_clock_a_few_ms_behind_its_course_is_no_step() {
        let start = Instant::now();
        let mut course = course_at(10_000, start);
        let reading = course.read(10_095, start + Duration::from_millis(100));
        assert_eq!(reading.ms, 10_100);
        assert_eq!(reading.went_back_ms, None);
    }

    #[test]
    fn a_database_ahead_of_the_system_clock_moves_the_clock_up_to_it() {
        let clock = Clock::new();
        let ahead = to_ms(SystemTime::now()) + 3_600_000;
        clock.not_before(ahead);
        let now = clock.now_ms();
        assert!(
            (ahead..ahead + 60_000).contains(&now),
            "{now} should go on from {ahead}"
        );
        // A later time behind the clock changes nothing.
        clock.not_before(ahead - 1_000_000);
        assert!(clock.now_ms() >= now);
    }
}
