//! Log lines written through a tracing subscriber, for the tests whose subject is a log
//! line (the watch limit's explanation, the lines of uploaded files).

use std::sync::{Arc, Mutex};

/// What a subscriber set by [`capture_logs`] wrote.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock is not poisoned")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log lock is not poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// A subscriber that takes nothing, registered once and kept for the whole test run.
///
/// While a single subscriber is registered, tracing decides whether a log line's callsite
/// is of interest by asking only the subscriber of the thread that reaches it first. A
/// line first reached by a parallel test, on a thread without one, would then stay of no
/// interest to a captured thread too, and the capture would miss it. With this one always
/// registered beside the capture, every callsite asks both.
static ALWAYS_REGISTERED: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();

/// Captures this thread's log lines up to `level`, without colours, until the guard goes.
pub fn capture_logs(level: tracing::Level) -> (Logs, tracing::subscriber::DefaultGuard) {
    ALWAYS_REGISTERED
        .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new()));
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_reached_elsewhere() {
        tracing::info!("a line first reached on another thread");
    }

    #[test]
    fn a_line_first_reached_on_a_thread_without_a_subscriber_is_still_captured() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        std::thread::spawn(first_reached_elsewhere)
            .join()
            .expect("the other thread ends");
        first_reached_elsewhere();
        assert_eq!(
            logs.text()
                .matches("a line first reached on another thread")
                .count(),
            1,
            "{}",
            logs.text()
        );
    }
}
