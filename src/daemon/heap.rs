//! The daemon's glibc heap: how many arenas it may use, and when the memory it freed goes
//! back to the system.
//!
//! glibc gives a thread that finds the existing arenas busy an arena of its own, up to
//! eight per core, and memory freed into an arena only ever serves that arena again. The
//! daemon runs many threads (the runtime's workers, its blocking pool, sled's writer
//! threads, the scan's stat threads), so after a burst of uploads its resident memory was
//! mostly free space spread over a dozen arenas: 150 MB after 40,000 small files, of which
//! a third was in use. So:
//!
//! 1. [`limit_arenas`], before the runtime starts, caps the arenas at [`ARENAS`]: few
//!    enough that freed memory gets reused. Two were once too few: a thread takes the
//!    arena that is free at its first allocation and a free goes back to the arena of the
//!    allocation, so with two the start-up scan's two threads (each reading sled pages
//!    the other may free) and the runtime's threads shared arenas, and a restart over a
//!    million files spent about a tenth of its time waiting on arena locks (6.0 s; 3.4 s
//!    with four). The scan's looks at files now allocate from mimalloc (module
//!    `allocator`), which took those waits away, and with them the reason for four: with
//!    two, the first mirror of a million files peaked at 121.0 MiB instead of 151.9 MiB,
//!    and the restart over them took 3.20 s against 3.02 s with four (3.18 s in a run
//!    before).
//! 2. [`trim_while_busy`] hands the free pages inside the arenas back to the system
//!    (`malloc_trim`; glibc only returns the top of a heap by itself) every
//!    [`TRIM_EVERY`] while the state database is being written, so that a long burst does
//!    not carry the garbage of its first minutes. An idle daemon has nothing to give back
//!    and does not trim. With four arenas, trimming every 5 s let the first mirror of a
//!    million files peak at 163 MiB, and every second at 148–163 MiB; every quarter of a
//!    second, at 139 MiB. The first mirror of 200,000 files peaked at 104–118 MiB (six
//!    runs) instead of 117–137 MiB (seven), for about 1 % more CPU time. A compaction
//!    counts as writing (`Store::activity`): copying a million entries writes none of the
//!    store's own for nine seconds, and without trims the daemon peaked at 164.9 MiB
//!    during it instead of 136.3 MiB.
//!
//! On other platforms both are no-ops. They act on glibc's heap only; mimalloc,
//! which serves the scan's looks, returns its free pages by itself (`allocator::tune`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::bell::{Bell, Pace};

/// How often a busy daemon returns its free memory (module doc, step 2).
pub const TRIM_EVERY: Duration = Duration::from_millis(250);

/// How many glibc arenas the daemon may use (glibc's default is eight per core).
pub const ARENAS: i32 = 2;

/// Caps glibc's arenas at [`ARENAS`]; call before any other thread exists.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; a failure (0) leaves the default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the free pages of every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases memory no one holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every `every` until `stop`, calls `trim` if `activity` (a counter of work done, the
/// store's writes) moved since the last look. `trim` runs on the blocking pool:
/// `malloc_trim` takes each arena's lock in turn and walks its free memory, which must not
/// hold a runtime thread four times a second; the next look waits until it is done.
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
}
