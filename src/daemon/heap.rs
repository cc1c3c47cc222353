//! When the memory the daemon freed goes back to the system.
//!
//! jemalloc (module `allocator`) keeps the pages of freed blocks for reuse and hands back
//! those unused for ten seconds (its `dirty_decay_ms`), but only as the process allocates,
//! and ten seconds of a burst's garbage is a lot: left to that, a compaction of a million
//! ledger entries peaked at 163.8 MiB. So [`trim_while_busy`] hands every free page back
//! ([`trim`], a purge of every arena) every [`TRIM_EVERY`] while the state database is
//! used (`Store::activity`; a compaction counts as use): the compaction peaked at
//! 145.9 MiB, and the first mirror of 200,000 files of 1 KiB at 87–95 MiB with the same
//! CPU as without. (A decay of one second instead of ten did as well: 145.6 MiB.) An idle
//! daemon does not trim: its last trim came a quarter of a second after its last use of
//! the store.
//!
//! A listing of the ledger (`upsync ls`, which writes nothing) and a compaction's swap of
//! the database hand back every free page when they end, too.
//!
//! (glibc's heap, before jemalloc, needed its arenas capped as well as a `malloc_trim` at
//! the same pace: with more arenas, freed memory spread over them went unused.)

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::bell::{Bell, Pace};

/// How often a busy daemon hands back its free memory (module doc).
pub const TRIM_EVERY: Duration = Duration::from_millis(250);

/// jemalloc's control that purges every arena (4096 is its `MALLCTL_ARENAS_ALL`).
const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";

/// Hands every free page of every arena back to the system.
pub fn trim() {
    if let Err(code) = crate::allocator::run_control(PURGE_ALL) {
        tracing::debug!(code, "jemalloc refused a purge");
    }
}

/// Every `every` until `stop`, calls `trim` if `activity` (a counter of work done: the
/// store's writes and a compaction's copies) moved since the last look. `trim` runs on the
/// blocking pool: a purge walks the arenas' free memory and returns it page run by page
/// run, which must not hold a runtime thread four times a second; the next look waits
/// until it is done.
///
/// A look that finds no work sleeps until the store's `bell` rings (module `queue::bell`),
/// and looks again a period after that: an idle daemon wakes for nothing here.
pub async fn trim_while_busy(
    activity: impl Fn() -> u64,
    bell: Arc<Bell>,
    trim: impl Fn() + Send + Sync + 'static,
    every: Duration,
    stop: CancellationToken,
) {
    let trim = Arc::new(trim);
    let mut seen = activity();
    let mut pace = Pace::new(bell, every, stop);
    while pace.step().await {
        let now = activity();
        if now == seen {
            if !pace.idle().await {
                return;
            }
            continue;
        }
        seen = now;
        let trim = Arc::clone(&trim);
        // A panic in the trim is the allocator's: nothing of the daemon's is lost.
        let _ = tokio::task::spawn_blocking(move || trim()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const PERIOD: Duration = Duration::from_secs(5);
    const MS: Duration = Duration::from_millis(1);

    /// A store's counter and bell, the looks at the counter and the trims, counted.
    #[derive(Default)]
    struct Counted {
        work: AtomicU64,
        looks: AtomicU64,
        trims: AtomicU64,
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

        /// Runs [`trim_while_busy`] over these counters until `stop`.
        fn spawn(self: &Arc<Self>, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
            let (looked, trimmed) = (Arc::clone(self), Arc::clone(self));
            tokio::spawn(trim_while_busy(
                move || {
                    looked.looks.fetch_add(1, Ordering::SeqCst);
                    Counted::get(&looked.work)
                },
                Arc::clone(&self.bell),
                move || {
                    trimmed.trims.fetch_add(1, Ordering::SeqCst);
                },
                PERIOD,
                stop.clone(),
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_per_period_with_work_and_never_while_idle() {
        let counted = Arc::new(Counted::default());
        let stop = CancellationToken::new();
        let task = counted.spawn(&stop);
        // Idle for three periods: no trim.
        tokio::time::sleep(PERIOD * 3 + MS).await;
        assert_eq!(
            Counted::get(&counted.trims),
            0,
            "an idle daemon does not trim"
        );
        // Work: one trim a period later, however much work it was.
        counted.work(100);
        tokio::time::sleep(PERIOD + MS).await;
        assert_eq!(Counted::get(&counted.trims), 1);
        // Work in each of the next two periods: a trim at the end of each.
        for trims in 2..=3 {
            counted.work(1);
            tokio::time::sleep(PERIOD).await;
            assert_eq!(Counted::get(&counted.trims), trims);
        }
        // Idle again: no more trims.
        tokio::time::sleep(PERIOD * 4).await;
        assert_eq!(Counted::get(&counted.trims), 3);
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
        // Work wakes it: a look and a trim a period later, one more look that finds the
        // store idle again, then sleep.
        counted.work(1);
        tokio::time::sleep(PERIOD * 100).await;
        assert_eq!(Counted::get(&counted.trims), 1);
        assert_eq!(Counted::get(&counted.looks), 4);
        // A stop ends the sleep.
        stop.cancel();
        tokio::time::timeout(PERIOD, task)
            .await
            .expect("a stop ends a sleeping trim loop")
            .expect("the trim loop ends when stopped");
    }

    #[test]
    fn jemalloc_takes_the_purge() {
        assert_eq!(crate::allocator::run_control(PURGE_ALL), Ok(()));
    }
}
