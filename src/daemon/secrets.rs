//! Secret files read again while the daemon runs (`token_file`, `password_file`), so that
//! a secret rotated in place (by a secrets agent, a script) is used without a reload.
//!
//! 1. Every [`CHECK`], on the blocking pool, read the running configuration's secret files
//!    again ([`Config::with_rotated_secrets`]). A file that cannot be used now (empty, half
//!    written, gone) is warned about once while it stays so, and its secret stays in use.
//! 2. Hand a rotated secret to the daemon's loop with the configuration it was read from.
//!    The loop puts it in effect as a reload would ([`super::fleet::Fleet::apply_rotated`]),
//!    unless a reload replaced that configuration meanwhile: the next reading starts from
//!    the new one.
//!
//! The reading runs apart from the loop, so a secret file on a hung mount never holds a
//! reload or a stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::CurrentConfig;
use crate::config::Config;

/// How often the secret files are read again.
const CHECK: Duration = Duration::from_secs(5);

/// A configuration with a rotated secret, and the one it was read from.
pub(super) struct Rotated {
    pub from: Arc<Config>,
    pub config: Config,
}

/// Starts the readings (module doc); rotated secrets arrive on the receiver until `stop`.
pub(super) fn watch(current: CurrentConfig, stop: CancellationToken) -> mpsc::Receiver<Rotated> {
    let (rotated_tx, rotated_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut warned = HashSet::new();
        let mut tick = crate::beat::interval(CHECK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let from = current.get();
            let reading = tokio::task::spawn_blocking({
                let from = Arc::clone(&from);
                move || {
                    let mut problems = Vec::new();
                    let rotated = from.with_rotated_secrets(&mut problems);
                    (rotated, problems)
                }
            });
            let (rotated, problems) = tokio::select! {
                _ = stop.cancelled() => return,
                read = reading => match read {
                    Ok(read) => read,
                    Err(_) => continue,
                },
            };
            warn_once(&mut warned, problems);
            if let Some(config) = rotated
                && rotated_tx.send(Rotated { from, config }).await.is_err()
            {
                return;
            }
        }
    });
    rotated_rx
}

/// Step 1's warnings: each problem once while it lasts.
fn warn_once(warned: &mut HashSet<String>, problems: Vec<String>) {
    warned.retain(|problem| problems.contains(problem));
    for problem in problems {
        if warned.insert(problem.clone()) {
            tracing::warn!("{problem}; the secret read before stays in use");
        }
    }
}
