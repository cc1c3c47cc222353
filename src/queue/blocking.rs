//! Running the store's fsyncs without holding up the async runtime.
//!
//! A flush ends in an fsync, which takes milliseconds on a quiet disk and far longer on a
//! busy one. The store is synchronous and called from async tasks (workers, imports, the
//! deleter), so a flush would otherwise keep a runtime worker thread from every other
//! task (control socket, metrics, watchers, other uploads) while it waits. On a
//! multi-threaded runtime's worker, [`off_the_worker`] hands that worker's tasks to
//! another thread for the duration of the call (`tokio::task::block_in_place`); anywhere
//! else (plain threads, the blocking pool, a current-thread runtime, which has no other
//! thread to hand its tasks to) it just runs the call.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which may block on the disk, without stalling the tasks of the runtime it is
/// called from (module doc).
pub(super) fn off_the_worker<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A call that can only return once another task of the same runtime has run: on a
    /// runtime with one worker thread, that task runs only if the call let go of the worker.
    fn waits_for_another_task(runtime: &tokio::runtime::Runtime) -> bool {
        runtime.block_on(async {
            let (sent, received) = mpsc::channel();
            let call = tokio::spawn(async move {
                off_the_worker(|| received.recv_timeout(Duration::from_secs(10)).is_ok())
            });
            // Let the call start on the only worker first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::spawn(async move { sent.send(()) });
            call.await.expect("the call does not panic")
        })
    }

    #[test]
    fn a_blocking_call_on_a_worker_lets_the_other_tasks_run() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime starts");
        assert!(
            waits_for_another_task(&runtime),
            "the other task ran while the call blocked"
        );
    }

    #[test]
    fn outside_a_multi_threaded_runtime_the_call_just_runs() {
        assert_eq!(off_the_worker(|| 7), 7);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime starts");
        assert_eq!(current.block_on(async { off_the_worker(|| 7) }), 7);
        let pool = tokio::runtime::Runtime::new().expect("a runtime starts");
        let on_the_blocking_pool = pool.block_on(pool.spawn_blocking(|| off_the_worker(|| 7)));
        assert_eq!(on_the_blocking_pool.expect("runs"), 7);
    }
}
