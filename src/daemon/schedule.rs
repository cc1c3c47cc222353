//! Which folders the workers may claim from, and whose turn is next.
//!
//! A folder's jobs are claimable when its remote check passed ([`super::gates`]) and its
//! remote is up ([`crate::upload::health`]); other folders' jobs wait, without failing and
//! without holding a worker. Jobs of a folder no longer in the configuration stay
//! claimable, so that a worker can fail them with the reason (see `fleet`). Among the
//! claimable folders, claims go in turn (`Store::claim_next`), the turn shared by every
//! worker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::gates::FolderGates;
use crate::config::Config;
use crate::queue::{FolderTag, Job, Store, StoreError, folder_tag};
use crate::upload::Backends;

/// The shared turn and the rules above.
#[derive(Default)]
pub struct Schedule {
    /// The folder of the last claim.
    turn: Mutex<Option<FolderTag>>,
}

impl Schedule {
    /// Claims the next job from the folders whose turn it is (module doc).
    pub fn claim(
        &self,
        store: &Store,
        config: &Config,
        backends: &Backends,
        gates: &FolderGates,
        now: SystemTime,
    ) -> Result<Option<Job>, StoreError> {
        let folders = claimable(store, config, backends, gates)?;
        let mut turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let claimed = store.claim_next(now, &folders, *turn)?;
        Ok(claimed.map(|(job, tag)| {
            *turn = Some(tag);
            job
        }))
    }

    /// When the earliest job of the claimable folders falls due.
    pub fn next_due(
        &self,
        store: &Store,
        config: &Config,
        backends: &Backends,
        gates: &FolderGates,
    ) -> Result<Option<SystemTime>, StoreError> {
        let folders = claimable(store, config, backends, gates)?;
        store.next_due_in(&folders)
    }
}

/// The folders with due-index entries that may be claimed from now: none while a
/// compaction holds the store. An idle worker polls every second, and a poll must not make
/// the compaction give way, or the store of a large tree is never compacted; there is
/// nothing new to claim meanwhile (a new file would have made it give way), and a retry
/// that falls due waits for the end of the copy.
fn claimable(
    store: &Store,
    config: &Config,
    backends: &Backends,
    gates: &FolderGates,
) -> Result<Vec<FolderTag>, StoreError> {
    if store.is_compacting() {
        return Ok(Vec::new());
    }
    let configured: HashMap<FolderTag, &crate::config::FolderConfig> = config
        .folders
        .iter()
        .map(|folder| (folder_tag(&folder.path.to_string_lossy()), folder))
        .collect();
    let mut folders = store.due_folders()?;
    folders.retain(|tag| match configured.get(tag) {
        None => true,
        Some(folder) => {
            gates.is_ready(&folder.path)
                && backends
                    .for_target(&folder.target)
                    .is_none_or(|backend| backend.health().is_up())
        }
    });
    Ok(folders)
}
