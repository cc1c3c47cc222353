//! The settle rule: when is a file *done* being written? A pure state machine over
//! observations (fingerprints read by the caller) and writer events, with an injected clock.
//!
//! A candidate is settled when
//! 1. its fingerprint (size, mtime, inode, ctime) has not changed for `settle` since it was
//!    first observed with those values — any change restarts the clock; or
//! 2. at its first observation its mtime was already older than `settle` (an old file found
//!    by a scan: nothing is writing it, no need to wait);
//!
//! and, in both cases, no writer still has it open: after a data write was seen and before
//! the matching close-write arrived, the file is held back — but for at most
//! [`WRITER_CAP_FACTOR`] × `settle` after the last write event, because events can be lost;
//! after that, stability alone decides. A close-write never shortens the settle time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fingerprint::Fingerprint;

/// How many settle periods an unmatched write event holds a candidate back at most.
pub const WRITER_CAP_FACTOR: u32 = 10;

/// Monotonic time for measuring stability and wall time for comparing with mtimes.
pub trait Clock {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    fingerprint: Fingerprint,
    /// When the current fingerprint was first observed.
    since: Instant,
    /// Rule 2: the first observation already had an old mtime.
    old_at_first_sight: bool,
    /// The last data-write event not yet followed by a close-write.
    open_write_at: Option<Instant>,
    /// Not offered before this instant (the previous offer failed).
    hold_until: Option<Instant>,
}

/// Candidates of one folder, keyed by `K` (the relative path).
#[derive(Debug)]
pub struct Settle<K, C> {
    clock: C,
    settle: Duration,
    candidates: HashMap<K, Candidate>,
}

impl<K: Hash + Eq + Clone, C: Clock> Settle<K, C> {
    pub fn new(settle: Duration, clock: C) -> Self {
        Settle {
            clock,
            settle,
            candidates: HashMap::new(),
        }
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Records that `key` currently has `fingerprint`. A new candidate, or a changed
    /// fingerprint, starts the settle clock now.
    pub fn observe(&mut self, key: K, fingerprint: Fingerprint) {
        let now = self.clock.now();
        match self.candidates.get_mut(&key) {
            Some(c) if c.fingerprint == fingerprint => {}
            Some(c) => {
                c.fingerprint = fingerprint;
                c.since = now;
                c.old_at_first_sight = false;
            }
            None => {
                let old = mtime_age(fingerprint.mtime_ns, self.clock.wall())
                    .is_some_and(|age| age >= self.settle);
                self.candidates.insert(
                    key,
                    Candidate {
                        fingerprint,
                        since: now,
                        old_at_first_sight: old,
                        open_write_at: None,
                        hold_until: None,
                    },
                );
            }
        }
    }

    /// A data-write event arrived for `key`: a writer has the file open.
    pub fn write_seen(&mut self, key: &K) {
        let now = self.clock.now();
        if let Some(c) = self.candidates.get_mut(key) {
            c.open_write_at = Some(now);
        }
    }

    /// A close-write event arrived for `key`: the writer is done (settle time still applies).
    pub fn close_write_seen(&mut self, key: &K) {
        if let Some(c) = self.candidates.get_mut(key) {
            c.open_write_at = None;
        }
    }

    /// Keeps `key` from being settled for `delay` (used after a failed offer).
    pub fn hold(&mut self, key: &K, delay: Duration) {
        let until = self.clock.now() + delay;
        if let Some(c) = self.candidates.get_mut(key) {
            c.hold_until = Some(until);
        }
    }

    pub fn remove(&mut self, key: &K) {
        self.candidates.remove(key);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.candidates.retain(|k, _| keep(k));
    }

    pub fn fingerprint(&self, key: &K) -> Option<Fingerprint> {
        self.candidates.get(key).map(|c| c.fingerprint)
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Whether `key` is tracked and settled now.
    pub fn is_settled(&self, key: &K) -> bool {
        let now = self.clock.now();
        self.candidates
            .get(key)
            .is_some_and(|c| self.settled(c, now))
    }

    /// Every candidate settled now, given the fingerprints observed so far. The caller
    /// re-reads each one's fingerprint before offering: a difference means a change was
    /// missed, and observing it restarts the clock.
    pub fn due(&self) -> Vec<K> {
        let now = self.clock.now();
        self.candidates
            .iter()
            .filter(|(_, c)| self.settled(c, now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn settled(&self, c: &Candidate, now: Instant) -> bool {
        if c.hold_until.is_some_and(|t| now < t) {
            return false;
        }
        let cap = self.settle * WRITER_CAP_FACTOR;
        if c.open_write_at
            .is_some_and(|t| now.saturating_duration_since(t) < cap)
        {
            return false;
        }
        c.old_at_first_sight || now.saturating_duration_since(c.since) >= self.settle
    }
}

/// How long ago `mtime_ns` (nanoseconds since the epoch) was; `None` if it is in the future.
fn mtime_age(mtime_ns: i128, wall: SystemTime) -> Option<Duration> {
    let wall_ns = match wall.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let age = wall_ns - mtime_ns;
    (age >= 0).then(|| Duration::from_nanos(u64::try_from(age).unwrap_or(u64::MAX)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A clock that moves only when told to.
    #[derive(Clone)]
    pub(crate) struct FakeClock {
        base: Instant,
        wall_base: SystemTime,
        offset: Rc<Cell<Duration>>,
    }

    impl FakeClock {
        pub(crate) fn new() -> Self {
            FakeClock {
                base: Instant::now(),
                wall_base: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                offset: Rc::new(Cell::new(Duration::ZERO)),
            }
        }
        pub(crate) fn advance(&self, by: Duration) {
            self.offset.set(self.offset.get() + by);
        }
        /// An mtime `ago` before the current fake wall time.
        fn mtime_ago(&self, ago: Duration) -> i128 {
            let t = self.wall() - ago;
            t.duration_since(UNIX_EPOCH)
                .expect("the fake wall clock is after the epoch")
                .as_nanos() as i128
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + self.offset.get()
        }
        fn wall(&self) -> SystemTime {
            self.wall_base + self.offset.get()
        }
    }

    const SETTLE: Duration = Duration::from_secs(5);
    const MS: Duration = Duration::from_millis(1);

    fn fp(size: u64, mtime_ns: i128) -> Fingerprint {
        Fingerprint {
            size,
            mtime_ns,
            inode: 7,
            ctime_ns: Some(mtime_ns),
        }
    }

    fn setup() -> (FakeClock, Settle<&'static str, FakeClock>) {
        let clock = FakeClock::new();
        (clock.clone(), Settle::new(SETTLE, clock))
    }

    #[test]
    fn a_file_stable_for_the_settle_time_is_settled() {
        let (clock, mut s) = setup();
        let fresh = clock.mtime_ago(Duration::ZERO);
        s.observe("a", fp(10, fresh));
        assert!(!s.is_settled(&"a"));
        clock.advance(SETTLE - MS);
        s.observe("a", fp(10, fresh));
        assert!(!s.is_settled(&"a"), "one millisecond short of settle");
        clock.advance(MS);
        assert!(s.is_settled(&"a"));
        assert_eq!(s.due(), vec!["a"]);
    }

    #[test]
    fn a_change_of_size_or_mtime_restarts_the_clock() {
        let (clock, mut s) = setup();
        let t0 = clock.mtime_ago(Duration::ZERO);
        s.observe("a", fp(10, t0));
        clock.advance(Duration::from_secs(4));
        s.observe("a", fp(20, clock.mtime_ago(Duration::ZERO)));
        clock.advance(Duration::from_secs(4));
        assert!(
            !s.is_settled(&"a"),
            "8 s after first sight but 4 s after a change"
        );
        let t1 = clock.mtime_ago(Duration::ZERO);
        s.observe("a", fp(20, t1));
        clock.advance(Duration::from_secs(4));
        assert!(!s.is_settled(&"a"), "an mtime change alone restarts too");
        clock.advance(Duration::from_secs(1));
        assert!(s.is_settled(&"a"));
        assert_eq!(s.fingerprint(&"a"), Some(fp(20, t1)));
    }

    #[test]
    fn an_old_mtime_at_first_sight_is_settled_at_once() {
        let (clock, mut s) = setup();
        s.observe("old", fp(10, clock.mtime_ago(Duration::from_secs(60))));
        assert!(s.is_settled(&"old"));
        s.observe("young", fp(10, clock.mtime_ago(Duration::from_secs(2))));
        assert!(
            !s.is_settled(&"young"),
            "2 s old is younger than the 5 s settle"
        );
        s.observe(
            "future",
            fp(10, clock.mtime_ago(Duration::ZERO) + 10_000_000_000),
        );
        assert!(
            !s.is_settled(&"future"),
            "an mtime in the future is not old"
        );
    }

    #[test]
    fn an_old_file_that_changes_waits_for_the_full_settle_time() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::from_secs(60))));
        s.observe("a", fp(11, clock.mtime_ago(Duration::from_secs(60))));
        assert!(!s.is_settled(&"a"));
        clock.advance(SETTLE);
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn an_open_writer_holds_a_stable_file_back_until_close_write() {
        let (clock, mut s) = setup();
        let t0 = clock.mtime_ago(Duration::ZERO);
        s.observe("a", fp(10, t0));
        s.write_seen(&"a");
        clock.advance(SETTLE * 3);
        assert!(
            !s.is_settled(&"a"),
            "stable, but the writer has not closed it"
        );
        assert!(s.due().is_empty());
        s.close_write_seen(&"a");
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn close_write_does_not_skip_the_settle_time() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::ZERO)));
        s.write_seen(&"a");
        s.close_write_seen(&"a");
        clock.advance(SETTLE - MS);
        assert!(!s.is_settled(&"a"));
        clock.advance(MS);
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn a_lost_close_write_holds_back_for_at_most_ten_settle_periods() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::ZERO)));
        s.write_seen(&"a");
        clock.advance(SETTLE * WRITER_CAP_FACTOR - MS);
        assert!(!s.is_settled(&"a"));
        clock.advance(MS);
        assert!(s.is_settled(&"a"), "after the cap, stability alone decides");
    }

    #[test]
    fn the_writer_cap_counts_from_the_last_write_event() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::ZERO)));
        s.write_seen(&"a");
        clock.advance(SETTLE * 8);
        s.write_seen(&"a");
        clock.advance(SETTLE * 8);
        assert!(!s.is_settled(&"a"));
        clock.advance(SETTLE * 2);
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn an_open_writer_holds_back_even_an_old_mtime() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::from_secs(600))));
        s.write_seen(&"a");
        assert!(!s.is_settled(&"a"));
        s.close_write_seen(&"a");
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn removed_candidates_are_forgotten() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::from_secs(60))));
        s.observe("dir/b", fp(10, clock.mtime_ago(Duration::from_secs(60))));
        s.remove(&"a");
        assert!(!s.is_settled(&"a"));
        s.retain(|k| !k.starts_with("dir/"));
        assert!(s.is_empty());
        assert!(s.due().is_empty());
    }

    #[test]
    fn a_held_candidate_is_not_due_until_the_hold_ends() {
        let (clock, mut s) = setup();
        s.observe("a", fp(10, clock.mtime_ago(Duration::from_secs(60))));
        s.hold(&"a", Duration::from_secs(2));
        assert!(!s.is_settled(&"a"));
        clock.advance(Duration::from_secs(2));
        assert!(s.is_settled(&"a"));
    }

    #[test]
    fn events_for_untracked_paths_are_ignored() {
        let (_clock, mut s) = setup();
        s.write_seen(&"nope");
        s.close_write_seen(&"nope");
        s.hold(&"nope", SETTLE);
        assert_eq!(s.len(), 0);
    }
}
