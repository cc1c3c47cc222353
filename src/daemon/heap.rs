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

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
pub async fn trim_while_busy(
    activity: impl Fn() -> u64,
    trim: impl Fn() + Send + Sync + 'static,
    every: Duration,
    stop: CancellationToken,
) {
    let trim = std::sync::Arc::new(trim);
    let mut seen = activity();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = activity();
        if now != seen {
            seen = now;
            let trim = std::sync::Arc::clone(&trim);
            // A panic in the trim is the allocator's: nothing of the daemon's is lost.
            let _ = tokio::task::spawn_blocking(move || trim()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn trims_once_per_period_with_work_and_never_while_idle() {
        let work = Arc::new(AtomicU64::new(0));
        let trims = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (work, trims, stop) = (work.clone(), trims.clone(), stop.clone());
            async move {
                trim_while_busy(
                    move || work.load(Ordering::SeqCst),
                    move || {
                        trims.fetch_add(1, Ordering::SeqCst);
                    },
                    Duration::from_secs(5),
                    stop,
                )
                .await
            }
        });
        let period = Duration::from_secs(5);
        // Idle for three periods: no trim.
        tokio::time::sleep(period * 3 + Duration::from_millis(1)).await;
        assert_eq!(
            trims.load(Ordering::SeqCst),
            0,
            "an idle daemon does not trim"
        );
        // Work during the fourth period: one trim at its end, however much work it was.
        for _ in 0..100 {
            work.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(period).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        // Idle again: no more trims.
        tokio::time::sleep(period * 4).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        stop.cancel();
        task.await.expect("the trim loop ends when stopped");
    }
}
