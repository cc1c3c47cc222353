//! Compacting the state database once the daemon is idle ([`Store::compact`]: why, how,
//! and why a crash during it loses nothing, are in the module doc of `queue::compact`).
//!
//! 1. Every [`CHECK_EVERY`] the store's use counter (writes and ledger lookups) is read
//!    (lookups count: a scan that finds every file uploaded writes nothing, yet a
//!    compaction would hold it up): a change means work, and starts the quiet time again.
//! 2. After work, and once after the start (a database an earlier run left bloated), when
//!    the store has not been written for [`QUIET`] and no upload is active or finalizing
//!    (compacting pauses the store, and an upload would wait on it), the files are
//!    measured (their length only). If they grew by [`REGROWTH`] since last measured, or
//!    were never measured, the store reads every entry to weigh the live data and
//!    rewrites the database if the files take more than twice that.
//! 3. After a compaction the heap's free memory goes back to the system: the old
//!    database's cache was freed. Only then is the compaction logged ("compacted the
//!    state database"), so that an operator or a benchmark reading the line sees the
//!    daemon's memory as the compaction leaves it. A compaction that gave way to a use of
//!    the store (`queue::compact`, "Giving way") counts as work: it is tried again after
//!    the next quiet time.
//!
//! An idle daemon then reads and writes nothing until the next work, and does not wake for
//! step 1 either: with nothing left to do, the counter is read again only once the store's
//! bell rings (module `queue::bell`), at its next use. Step 2's full read
//! happens at most once per quarter of growth, so its cost stays a fraction of the writing
//! that grew the files.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::bell::{Bell, Pace};
use crate::queue::{CompactPolicy, Store, StoreError};

/// How often the write counter is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the store must go unwritten before it counts as idle.
pub const QUIET: Duration = Duration::from_secs(5);
/// How much the files must grow since last measured before the live data is weighed again.
const REGROWTH: f64 = 1.25;

/// Step 1: whether the store has been left alone for [`QUIET`] since its last work.
#[derive(Debug)]
struct Quiet {
    uses: u64,
    since: Instant,
    /// Work (or the start) not yet followed by a look at the files.
    pending: bool,
}

impl Quiet {
    fn new(uses: u64, now: Instant) -> Quiet {
        Quiet {
            uses,
            since: now,
            pending: true,
        }
    }

    /// Notes the use counter; true when there was work and the store has been quiet
    /// for [`QUIET`] since.
    fn settled(&mut self, uses: u64, now: Instant) -> bool {
        if uses != self.uses {
            self.uses = uses;
            self.since = now;
            self.pending = true;
        }
        self.pending && now.duration_since(self.since) >= QUIET
    }
}

/// Compacts `store` by `policy` whenever it settles after work (module doc), until `stop`.
pub async fn compact_when_idle(store: Store, policy: CompactPolicy, stop: CancellationToken) {
    // The files' length when last measured, for step 2.
    let measured = &std::sync::Mutex::new(None);
    let uses = {
        let store = store.clone();
        move || store.uses()
    };
    at_each_quiet_time(uses, store.bell(), stop, || {
        let store = store.clone();
        let last = *measured.lock().expect("the measure's lock");
        let checked = tokio::task::spawn_blocking(move || {
            step_two(&store, &policy, last, &super::heap::trim)
        });
        async {
            match checked.await {
                Ok(Ok(Checked::Busy)) => After::Busy,
                Ok(Err(StoreError::CompactionYielded)) => After::GaveWay,
                Ok(Ok(Checked::Looked { on_disk })) => {
                    *measured.lock().expect("the measure's lock") = Some(on_disk);
                    After::Done
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot compact the state database");
                    After::Done
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the compaction of the state database failed");
                    After::Done
                }
            }
        }
    })
    .await
}

/// What a look at a settled store (step 2) leaves to do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// An upload is under way: look again at the next check.
    Busy,
    /// The compaction gave way to a use of the store: the quiet time starts again.
    GaveWay,
    /// Nothing until the next work.
    Done,
}

/// Step 1's timing: reads `uses` every [`CHECK_EVERY`] and calls `look` whenever the store
/// has settled after work, until `stop`. With nothing left to do it reads nothing and
/// sleeps until `bell` rings (module `queue::bell`): an idle daemon wakes for nothing here.
async fn at_each_quiet_time<F: Future<Output = After>>(
    uses: impl Fn() -> u64,
    bell: Arc<Bell>,
    stop: CancellationToken,
    mut look: impl FnMut() -> F,
) {
    let mut quiet = Quiet::new(uses(), Instant::now());
    let mut pace = Pace::new(bell, CHECK_EVERY, stop);
    while pace.step().await {
        if !quiet.settled(uses(), Instant::now()) {
            if !quiet.pending && !pace.idle().await {
                return;
            }
            continue;
        }
        let after = look().await;
        quiet.uses = uses();
        match after {
            After::Busy => {}
            After::GaveWay => quiet.since = Instant::now(),
            After::Done => quiet.pending = false,
        }
    }
}

/// What step 2 found.
#[derive(Debug, PartialEq)]
enum Checked {
    /// An upload is active or finalizing: look again at the next tick.
    Busy,
    /// The files were looked at (and compacted if too large): their length now.
    Looked { on_disk: u64 },
}

/// Step 2, given the files' length when last measured.
fn step_two(
    store: &Store,
    policy: &CompactPolicy,
    measured: Option<u64>,
    trim: &dyn Fn(),
) -> Result<Checked, StoreError> {
    let uploading = store
        .counts()?
        .values()
        .any(|counts| counts.active + counts.finalizing > 0);
    if uploading {
        return Ok(Checked::Busy);
    }
    let on_disk = store.on_disk_bytes()?;
    if measured.is_some_and(|last| (on_disk as f64) < last as f64 * REGROWTH) {
        return Ok(Checked::Looked { on_disk });
    }
    Ok(match store.compact(policy)? {
        Some(compaction) => {
            // Step 3, on this blocking thread; the line comes after it (`Compaction::log`).
            trim();
            compaction.log();
            Checked::Looked {
                on_disk: compaction.after_on_disk,
            }
        }
        None => Checked::Looked { on_disk },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_store_settles_after_quiet_time_following_work_and_not_again_without_work() {
        let start = Instant::now();
        let mut quiet = Quiet::new(7, start);
        assert!(
            !quiet.settled(7, start),
            "the start waits for the quiet time"
        );
        tokio::time::advance(QUIET).await;
        assert!(quiet.settled(7, Instant::now()), "the start counts as work");
        quiet.pending = false;
        tokio::time::advance(QUIET * 10).await;
        assert!(!quiet.settled(7, Instant::now()), "no work, nothing to do");

        assert!(
            !quiet.settled(8, Instant::now()),
            "work starts the quiet time again"
        );
        tokio::time::advance(QUIET - Duration::from_millis(1)).await;
        assert!(!quiet.settled(8, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(quiet.settled(8, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_store_is_not_read_until_its_bell_rings_and_each_outcome_is_heeded() {
        use std::collections::VecDeque;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};

        let uses = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let bell = Arc::new(Bell::default());
        let stop = CancellationToken::new();
        // What the looks find, in order, and when each came.
        let outcomes = [After::Busy, After::GaveWay, After::Done, After::Done];
        let looks = Arc::new(std::sync::Mutex::new((
            VecDeque::from(outcomes),
            Vec::new(),
        )));
        let task = tokio::spawn({
            let (uses, reads, bell, stop, looks) = (
                uses.clone(),
                reads.clone(),
                bell.clone(),
                stop.clone(),
                looks.clone(),
            );
            let start = Instant::now();
            async move {
                let read = move || {
                    reads.fetch_add(1, Ordering::SeqCst);
                    uses.load(Ordering::SeqCst)
                };
                at_each_quiet_time(read, bell, stop, || {
                    let mut looks = looks.lock().expect("the looks' lock");
                    looks.1.push(start.elapsed().as_secs());
                    std::future::ready(looks.0.pop_front().expect("a look was scripted"))
                })
                .await
            }
        });
        let looked = || looks.lock().expect("the looks' lock").1.clone();

        // The start counts as work: a look after the quiet time, again at the next check
        // while an upload is busy, and after a quiet time more when the compaction gave way.
        tokio::time::sleep(Duration::from_secs(1_000)).await;
        assert_eq!(looked(), [5, 6, 11]);
        // Done: the store is read no more, however long it stays idle.
        let read_then = reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(100_000)).await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            read_then,
            "an idle store is not read"
        );
        // Work rings the bell: a look once the store has been quiet after it.
        uses.fetch_add(1, Ordering::SeqCst);
        bell.ring();
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(looked().len(), 4);
        assert_eq!(
            looked()[3],
            101_000 + 6,
            "the check a second after the work, plus QUIET"
        );
        stop.cancel();
        task.await.expect("the loop ends when stopped");
    }

    /// A store whose files are mostly garbage: many versions of a few entries.
    fn bloated(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).expect("the store opens");
        // A long name makes each version big enough that the garbage fills several of
        // sled's segments (a compaction never goes below one).
        let key = crate::queue::FileKey::new("/data", "a".repeat(400));
        // No more rewrites than the bloat needs: sled 0.34.7 can deadlock when a truncation
        // of its file waits behind that file's own queued log writes, and heavy churn in
        // parallel tests makes that likelier.
        for n in 0..4_000u64 {
            let fingerprint = crate::fingerprint::Fingerprint {
                size: n,
                mtime_ns: i128::from(n),
                inode: n,
                ctime_ns: None,
            };
            store.offer(&key, &fingerprint).expect("offers");
        }
        store.flush().expect("flushes");
        store
    }

    #[test]
    fn step_two_compacts_a_bloated_store_returns_the_freed_memory_then_waits_for_growth() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let store = bloated(dir.path());
        let policy = CompactPolicy {
            max_ratio: 2.0,
            min_on_disk: 0,
        };
        let before = store.on_disk_bytes().expect("measures");
        let trims = std::cell::Cell::new(0);
        let trim = || trims.set(trims.get() + 1);

        let checked = step_two(&store, &policy, None, &trim).expect("checks");
        let Checked::Looked { on_disk } = checked else {
            panic!("nothing is uploading: {checked:?}");
        };
        assert!(on_disk < before / 2, "compacted: {on_disk} of {before}");
        assert_eq!(trims.get(), 1, "one trim after the compaction");

        let grown = (on_disk as f64 * REGROWTH) as u64 + 1;
        assert_eq!(
            step_two(&store, &policy, Some(grown), &trim).expect("checks"),
            Checked::Looked { on_disk },
            "files that did not grow a quarter are not weighed"
        );
        assert_eq!(trims.get(), 1, "no compaction, no trim");
    }

    #[tokio::test]
    async fn step_two_waits_while_an_upload_is_active() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let store = bloated(dir.path());
        store
            .claim(std::time::SystemTime::now())
            .expect("claims")
            .expect("a job is due");
        let policy = CompactPolicy {
            max_ratio: 0.0,
            min_on_disk: 0,
        };
        assert_eq!(
            step_two(&store, &policy, None, &|| {}).expect("checks"),
            Checked::Busy
        );
    }
}
