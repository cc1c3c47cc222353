//! The store's bell: how a task that only has work while the store is in use (the heap's
//! trims, the compaction's look for a quiet time) sleeps through an idle daemon instead of
//! asking a counter every fraction of a second.
//!
//! Every use the store counts (a transaction's writes, a ledger lookup, a slice of a
//! compaction's copy) rings the bell. A ring costs an atomic add and a load; it wakes
//! anyone only when a task has said it waits ([`Bell::rung_since`]), and then once, for
//! all the tasks waiting: a waiter that wakes goes back to its own checks and arms the bell
//! again only when those find the store idle, so a busy store rings into nobody's ear.
//!
//! [`Pace`] is the loop such a task runs: a step every period while the store is used, and
//! sleep from a step that found nothing to do until the next ring.
//!
//! No ring is lost between a waiter's look at the count and its sleep: the waiter arms the
//! bell, then reads the count; a ring adds to the count, then reads whether the bell is
//! armed. All four are sequentially consistent, so either the waiter sees the new count or
//! the ring sees the armed bell (on x86 the add and the arming are locked instructions
//! anyway, and the reads plain loads).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Rung at each use of the store; wakes the tasks that wait for the next use.
#[derive(Default)]
pub struct Bell {
    rings: AtomicU64,
    armed: AtomicBool,
    waiters: Notify,
}

impl Bell {
    /// Counts one use, and wakes the tasks waiting for one.
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            self.waiters.notify_waiters();
        }
    }

    /// How many times the bell rang so far.
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::SeqCst)
    }

    /// Resolves once the bell has rung more than `seen` times ([`Bell::rings`] read
    /// before the caller's last look at the store).
    pub async fn rung_since(&self, seen: u64) {
        loop {
            // Woken (or rung before the first look): done, without arming the bell again.
            if self.rings() != seen {
                return;
            }
            let woken = self.waiters.notified();
            tokio::pin!(woken);
            // Registered before the look below, so a ring after that look wakes it.
            woken.as_mut().enable();
            self.armed.store(true, Ordering::SeqCst);
            if self.rings() != seen {
                // Rung in between: the bell stays armed, and its next ring wakes nobody.
                return;
            }
            woken.await;
        }
    }
}

/// The steps of a task that works while the store is used: one every period, and none
/// after a step that found nothing to do until the bell rings again.
pub struct Pace {
    bell: Arc<Bell>,
    tick: Interval,
    stop: CancellationToken,
    /// The bell's count when the last step began.
    rings: u64,
}

impl Pace {
    /// Steps every `every`, the first a period from now, until `stop`.
    pub fn new(bell: Arc<Bell>, every: Duration, stop: CancellationToken) -> Pace {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pace {
            rings: bell.rings(),
            bell,
            tick,
            stop,
        }
    }

    /// Waits for the next step: false once stopped. Call before the step's look at the
    /// store, so that a use after the look wakes [`Pace::idle`].
    pub async fn step(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => return false,
            _ = self.tick.tick() => {}
        }
        self.rings = self.bell.rings();
        true
    }

    /// After a step that found nothing to do: sleeps until the store was used since that
    /// step began, and the next step comes a period after that. False once stopped.
    pub async fn idle(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.bell.rung_since(self.rings) => {
                self.tick.reset();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_wakes_at_the_first_ring_after_its_look() {
        let bell = Arc::new(Bell::default());
        let seen = bell.rings();
        let waiter = tokio::spawn({
            let bell = Arc::clone(&bell);
            async move { bell.rung_since(seen).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing rang yet");
        bell.ring();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the ring wakes the waiter")
            .expect("the waiter ends");
    }

    #[tokio::test]
    async fn a_ring_between_the_look_and_the_wait_is_not_lost() {
        let bell = Bell::default();
        let seen = bell.rings();
        bell.ring();
        tokio::time::timeout(Duration::from_secs(10), bell.rung_since(seen))
            .await
            .expect("a ring after the look counts");
    }

    #[tokio::test]
    async fn one_ring_wakes_every_waiter_and_disarms_the_bell() {
        let bell = Arc::new(Bell::default());
        let seen = bell.rings();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let bell = Arc::clone(&bell);
                tokio::spawn(async move { bell.rung_since(seen).await })
            })
            .collect();
        // Every waiter has armed the bell and sleeps once it has been polled.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        bell.ring();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("one ring wakes them all")
                .expect("the waiter ends");
        }
        assert!(
            !bell.armed.load(Ordering::SeqCst),
            "with nobody waiting, the next ring wakes nobody"
        );
    }
}
