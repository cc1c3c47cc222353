//! Finding files that are ready to upload: notify watches, the start-up scan, periodic
//! rescans, include/exclude filters and the settle rule. (Skeleton.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::FolderConfig;
use crate::queue::Store;

/// What a folder watcher needs from the daemon.
#[derive(Clone)]
pub struct WatchContext {
    pub store: Store,
    /// Notified whenever a job was queued, so idle workers look again.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    pub rescan_interval: Option<Duration>,
}

/// Figures from the start-up scan of one folder.
#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    pub files_seen: u64,
    pub queued: u64,
}

/// Watches one folder until `ctx.shutdown`; sends the start-up scan's summary on `scanned`
/// once every settled file found by it is offered to the queue.
pub async fn run_folder(
    folder: FolderConfig,
    ctx: WatchContext,
    scanned: tokio::sync::oneshot::Sender<ScanSummary>,
) {
    let _ = (folder, ctx, scanned);
    todo!()
}
