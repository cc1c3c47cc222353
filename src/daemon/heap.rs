//! When the memory the daemon freed goes back to the system.
//!
//! jemalloc (module `allocator`) keeps the pages of freed blocks for reuse and hands back
//! those unused for ten seconds (its `dirty_decay_ms`), but only as the process allocates:
//! an idle daemon allocates nothing, so whatever its last work freed would stay resident
//! until the next. So [`trim_while_busy`] looks every [`TRIM_EVERY`] whether the state
//! database was used since its last look (`Store::activity`; a compaction counts as use):
//!
//! 1. while it was, the daemon hands back what is due by jemalloc's own decay
//!    ([`Trim::Due`]), so that a long burst keeps the pace of a steady one. That pace was
//!    measured with it: the first mirror of a million files peaked at 115.9 MiB.
//! 2. at the first look that finds it unused, the daemon hands back every free page
//!    ([`Trim::All`]), then sleeps until the store is used again (module `queue::bell`).
//!
//! A compaction and a listing of the ledger (`upsync ls`, which writes nothing) hand back
//! every free page when they end ([`trim`]).
//!
//! (glibc's heap, before jemalloc, needed its arenas capped and a `malloc_trim` four times
//! a second while busy to keep the first mirror of a million files under 150 MiB.)

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::bell::{Bell, Pace};

/// How often a busy daemon hands back its free memory (module doc, step 1).
pub const TRIM_EVERY: Duration = Duration::from_millis(250);

/// What a trim hands back to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// The free pages jemalloc's decay would hand back by now.
    Due,
    /// Every free page.
    All,
}

impl Trim {
    /// jemalloc's control for the trim, over every arena (4096 is jemalloc's
    /// `MALLCTL_ARENAS_ALL`).
    fn control(self) -> &'static std::ffi::CStr {
        match self {
            Trim::Due => c"arena.4096.decay",
            Trim::All => c"arena.4096.purge",
        }
    }
}

/// Hands free memory back to the system, as `kind` says.
pub fn trim(kind: Trim) {
    if let Err(code) = crate::allocator::run_control(kind.control()) {
        tracing::debug!(?kind, code, "jemalloc refused a trim");
    }
}

/// Every `every` until `stop`, trims (module doc): [`Trim::Due`] after a period in which
/// `activity` (a counter of the store's uses) moved, [`Trim::All`] at the first look that
/// finds it where the last one left it. `trim` runs on the blocking pool, which a purge of
/// many pages may hold for milliseconds; the next look waits until it is done.
///
/// A look that finds no work sleeps until the store's `bell` rings (module `queue::bell`),
/// and looks again a period after that: an idle daemon wakes for nothing here.
pub async fn trim_while_busy(
    activity: impl Fn() -> u64,
    bell: Arc<Bell>,
    trim: impl Fn(Trim) + Send + Sync + 'static,
    every: Duration,
    stop: CancellationToken,
) {
    let trim = Arc::new(trim);
    let mut seen = activity();
    // Whether the store was used since the last `Trim::All`.
    let mut used_since_all = false;
    let mut pace = Pace::new(bell, every, stop);
    while pace.step().await {
        let now = activity();
        let used = now != seen;
        seen = now;
        if used || used_since_all {
            used_since_all = used;
            let kind = if used { Trim::Due } else { Trim::All };
            let trim = Arc::clone(&trim);
            // A panic in the trim is the allocator's: nothing of the daemon's is lost.
            let _ = tokio::task::spawn_blocking(move || trim(kind)).await;
        }
        if !used && !pace.idle().await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const PERIOD: Duration = Duration::from_secs(5);
    const MS: Duration = Duration::from_millis(1);

    /// A store's counter and bell, the looks at the counter and the trims of each kind,
    /// counted.
    #[derive(Default)]
    struct Counted {
        work: AtomicU64,
        looks: AtomicU64,
        due: AtomicU64,
        all: AtomicU64,
        bell: Arc<Bell>,
    }

    impl Counted {
        fn work(&self, uses: u64) {
            for _ in 0..uses {
                self.work.fetch_add(1, Ordering::SeqCst);
                self.bell.ring();
            }
        }

        fn get(counter: &AtomicU64) -> u64 {
            counter.load(Ordering::SeqCst)
        }

        /// The trims so far: (due, all).
        fn trims(&self) -> (u64, u64) {
            (Counted::get(&self.due), Counted::get(&self.all))
        }

        /// Runs [`trim_while_busy`] over these counters until `stop`.
        fn spawn(self: &Arc<Self>, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
            let (looked, trimmed) = (Arc::clone(self), Arc::clone(self));
            tokio::spawn(trim_while_busy(
                move || {
                    looked.looks.fetch_add(1, Ordering::SeqCst);
                    Counted::get(&looked.work)
                },
                Arc::clone(&self.bell),
                move |kind| {
                    let counter = match kind {
                        Trim::Due => &trimmed.due,
                        Trim::All => &trimmed.all,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                },
                PERIOD,
                stop.clone(),
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trims_what_is_due_each_busy_period_and_everything_once_idle() {
        let counted = Arc::new(Counted::default());
        let stop = CancellationToken::new();
        let task = counted.spawn(&stop);
        // Idle for three periods: no trim.
        tokio::time::sleep(PERIOD * 3 + MS).await;
        assert_eq!(counted.trims(), (0, 0), "an idle daemon does not trim");
        // Work: what is due a period later, however much work it was.
        counted.work(100);
        tokio::time::sleep(PERIOD + MS).await;
        assert_eq!(counted.trims(), (1, 0));
        // Work in each of the next two periods: what is due at the end of each.
        for due in 2..=3 {
            counted.work(1);
            tokio::time::sleep(PERIOD).await;
            assert_eq!(counted.trims(), (due, 0));
        }
        // Idle again: everything, once.
        tokio::time::sleep(PERIOD * 4).await;
        assert_eq!(counted.trims(), (3, 1));
        stop.cancel();
        task.await.expect("the trim loop ends when stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_store_is_not_looked_at_until_its_bell_rings() {
        let counted = Arc::new(Counted::default());
        let stop = CancellationToken::new();
        let task = counted.spawn(&stop);
        // The look at the start and the first period's: then sleep.
        tokio::time::sleep(PERIOD * 100).await;
        assert_eq!(
            Counted::get(&counted.looks),
            2,
            "an idle store is looked at once"
        );
        // Work wakes it: a look and a trim of what is due a period later, one more look
        // that finds the store idle again and hands everything back, then sleep.
        counted.work(1);
        tokio::time::sleep(PERIOD * 100).await;
        assert_eq!(counted.trims(), (1, 1));
        assert_eq!(Counted::get(&counted.looks), 4);
        // A stop ends the sleep.
        stop.cancel();
        tokio::time::timeout(PERIOD, task)
            .await
            .expect("a stop ends a sleeping trim loop")
            .expect("the trim loop ends when stopped");
    }

    #[test]
    fn jemalloc_takes_both_trims() {
        for kind in [Trim::Due, Trim::All] {
            assert_eq!(
                crate::allocator::run_control(kind.control()),
                Ok(()),
                "{kind:?}"
            );
        }
    }
}
