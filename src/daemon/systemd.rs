//! systemd integration (`Type=notify`): `READY=1` once the start-up scans are queued,
//! `STATUS=` lines with the queue figures every few seconds, `WATCHDOG=1` pings when the unit
//! sets `WatchdogSec=`, and `STOPPING=1` at shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op. The watchdog is pinged
//! only after the queue figures were read from the state database, so a daemon whose store
//! or runtime is wedged stops pinging and systemd restarts it.

use std::time::Duration;

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends notifications to the service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog timeout systemd enforces, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often the status task runs: every [`STATUS_EVERY`], or at half the watchdog
    /// timeout when that is shorter (systemd's advice for ping intervals).
    pub fn interval(&self) -> Duration {
        match self.watchdog {
            Some(timeout) => (timeout / 2).clamp(Duration::from_millis(100), STATUS_EVERY),
            None => STATUS_EVERY,
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A `STATUS=` line, plus `WATCHDOG=1` when the watchdog is on.
    pub fn alive(&self, status: &str) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Status(status), NotifyState::Watchdog]);
        } else {
            self.status(status);
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            tracing::warn!(error = %err, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_interval_halves_a_short_watchdog_and_caps_at_five_seconds() {
        let with = |watchdog| Notifier {
            enabled: true,
            watchdog,
        };
        assert_eq!(with(None).interval(), STATUS_EVERY);
        assert_eq!(with(Some(Duration::from_secs(60))).interval(), STATUS_EVERY);
        assert_eq!(
            with(Some(Duration::from_secs(4))).interval(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn without_a_notify_socket_nothing_is_sent() {
        let notifier = Notifier {
            enabled: false,
            watchdog: None,
        };
        // Would fail (no such socket) if it tried to send.
        notifier.ready("ready");
        notifier.stopping();
        assert!(!notifier.enabled());
    }
}
