//! Process signals, through signal-hook, turned into what the daemon takes: a stop future
//! and a reload channel.
//!
//! - SIGTERM / SIGINT: the first one resolves the future of [`stop_signal`] (a clean stop);
//!   a second one exits at once with [`SECOND_SIGNAL_EXIT_CODE`]. That exit happens in the
//!   signal handler itself, so it works even when the runtime is stuck; the state database
//!   is consistent at every instant, so nothing is lost.
//! - SIGHUP ([`reload_signal`]): one message per signal, several quick ones coalesced. For
//!   the commands that end by themselves, a stop like the two above
//!   ([`stop_or_hangup_signal`]).
//!
//! Handlers are installed when these functions are called, before the daemon starts, not
//! when a future is first polled: a stop asked for while the daemon is still starting must
//! not kill it with the default action.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;

/// The exit code of a second SIGTERM/SIGINT (128 + SIGINT, as a shell reports Ctrl-C).
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

const STOP_SIGNALS: &[i32] = &[SIGTERM, SIGINT];

/// Installs the SIGTERM/SIGINT handlers; the future resolves at the first of them.
pub fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    stop_on(STOP_SIGNALS)
}

/// [`stop_signal`] for a command that ends by itself (`sync --once`, the emulator), which
/// SIGHUP stops as well: a terminal that closes sends it, and its default action would
/// kill the command mid-upload, without its summary. The daemon takes SIGHUP as a reload.
pub fn stop_or_hangup_signal() -> io::Result<impl Future<Output = ()>> {
    stop_on(&[SIGTERM, SIGINT, SIGHUP])
}

fn stop_on(stop_signals: &'static [i32]) -> io::Result<impl Future<Output = ()>> {
    let armed = Arc::new(AtomicBool::new(false));
    for &signal in stop_signals {
        // Actions run in the order they were registered: the first signal finds the exit
        // disarmed and then arms it; the second one exits.
        say_second_signal(signal, Arc::clone(&armed))?;
        flag::register_conditional_shutdown(signal, SECOND_SIGNAL_EXIT_CODE, Arc::clone(&armed))?;
        flag::register(signal, Arc::clone(&armed))?;
    }
    let mut signals = Signals::new(stop_signals)?;
    Ok(async move {
        signals.next().await;
        tracing::info!("signal received; stopping (send it again to exit at once)");
    })
}

/// Installs the SIGHUP handler; the receiver gets one message per reload asked for.
pub fn reload_signal() -> io::Result<mpsc::Receiver<()>> {
    let mut hangups = Signals::new([SIGHUP])?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangups.next().await.is_some() {
            // Full: a reload is already pending and will read the newest file.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// Writes a line to stderr when `armed` (the logger cannot run inside a signal handler).
fn say_second_signal(signal: i32, armed: Arc<AtomicBool>) -> io::Result<()> {
    const LINE: &[u8] = b"upsync: second signal: exiting now\n";
    let action = move || {
        if armed.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: write(2) on a static buffer is async-signal-safe; a failed write has
            // nowhere to be reported and the exit follows anyway.
            unsafe {
                libc::write(libc::STDERR_FILENO, LINE.as_ptr().cast(), LINE.len());
            }
        }
    };
    // SAFETY: the action only loads an atomic and calls write(2), both async-signal-safe.
    unsafe { signal_hook::low_level::register(signal, action) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_hangup_asks_for_a_reload() {
        let mut reloads = reload_signal().expect("the SIGHUP handler installs");
        assert!(reloads.try_recv().is_err(), "no reload before the signal");
        signal_hook::low_level::raise(SIGHUP).expect("raise works");
        tokio::time::timeout(Duration::from_secs(10), reloads.recv())
            .await
            .expect("the reload message arrives")
            .expect("the channel is open");
    }

    #[tokio::test]
    async fn the_first_interrupt_resolves_the_stop_future() {
        let stop = stop_signal().expect("the SIGTERM/SIGINT handlers install");
        let mut stop = std::pin::pin!(stop);
        assert!(
            futures::poll!(stop.as_mut()).is_pending(),
            "no signal yet: the daemon keeps running"
        );
        // From here on a second SIGINT would end this test process: raise only one.
        signal_hook::low_level::raise(SIGINT).expect("raise works");
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("the stop future resolves");
    }
}
