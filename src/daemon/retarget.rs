//! A folder given another target (another KiFS directory or Redivis table, or the other
//! backend) by a reload or between two runs: its ledger speaks of copies on the old
//! target, so it is dropped, and the folder's scan queues its files for the new target.
//!
//! The store keeps, per folder, the target its ledger entries were uploaded to. A folder
//! first seen (or a database from before that record) has its current target recorded and
//! its ledger kept. The old target's copies are left where they are: they are no longer
//! the folder's, so neither a deletion (`on_delete = "delete"`) nor a Redivis upload that
//! replaces a changed file's copy ever touches them.
//!
//! An upload or a Redivis import to the old target can still be under way when the
//! target changes. Each attempt names the target it was started for
//! ([`target_identity`]) when its upload is recorded, and the store records it only if
//! the folder's recorded target is still that one; otherwise the file is queued again,
//! for the new target ([`crate::queue::Store::complete_many`]). A change of target:
//! 1. records [`CHANGING`] as the folder's target, so that from then on no completion
//!    records an upload to the old target;
//! 2. drops the folder's ledger, including what a completion recorded just before step 1;
//! 3. records the new target.
//!
//! A crash before step 3 leaves a recorded target that is not the configured one, so the
//! next start goes through the steps again.

use std::ops::ControlFlow;

use super::history::ForgetBatches;
use crate::config::{FolderConfig, Target};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, FilePick, Store, StoreError};

/// The folder's recorded target while a change of target drops its ledger (module doc):
/// it names no target, so no attempt's target matches it.
pub const CHANGING: &str = "changing";

/// Drops the folder's ledger if it was uploaded to another target than its configured
/// one, then records that target (the steps of the module doc). Blocks: run it off the
/// runtime, before the folder is scanned.
pub fn follow_target(store: &Store, folder: &FolderConfig) -> Result<(), StoreError> {
    let name = folder.path.to_string_lossy();
    let target = target_identity(&folder.target);
    match store.folder_target(&name)? {
        Some(recorded) if recorded == target => return Ok(()),
        Some(_) => {
            store.set_folder_target(&name, CHANGING)?;
            let forgotten = forget_folder(store, &name)?;
            tracing::info!(
                folder = %name,
                target = %folder.target.describe(),
                forgotten,
                "the folder's target changed: its files are uploaded to the new target"
            );
        }
        None => {}
    }
    store.set_folder_target(&name, &target)
}

/// Whether the folder's ledger went to another target than its configured one: the next
/// start or reload drops it ([`follow_target`]), so a dry run reads it as empty.
pub fn moved_since_upload(store: &Store, folder: &FolderConfig) -> Result<bool, StoreError> {
    let recorded = store.folder_target(&folder.path.to_string_lossy())?;
    Ok(moved(recorded.as_deref(), &folder.target))
}

/// Whether `recorded`, the target a folder's uploads went to, is another than `configured`:
/// the next start or reload drops the folder's ledger. A folder with no record keeps it.
pub fn moved(recorded: Option<&str>, configured: &Target) -> bool {
    recorded.is_some_and(|recorded| recorded != target_identity(configured))
}

/// What names a target for [`follow_target`], and for an attempt the target it was
/// started for: the backend and the directory or table, not how a directory is created.
pub fn target_identity(target: &Target) -> String {
    match target {
        Target::KifsDirectory { directory, .. } => format!("kifs\0{directory}"),
        Target::RedivisTable(table) => format!("redivis\0{table}"),
    }
}

/// Drops every ledger entry of the folder, [`super::history::FORGET_BATCH`] to a
/// transaction as `upsync forget` does, without queueing anything (its scan queues the
/// files its filters select); how many were dropped.
fn forget_folder(store: &Store, folder: &str) -> Result<usize, StoreError> {
    let mut forgotten = 0;
    let mut batches = ForgetBatches::new(|batch: &mut Vec<FileKey>| {
        let files: Vec<(FileKey, Option<Fingerprint>)> =
            batch.drain(..).map(|key| (key, None)).collect();
        let dropped = store.forget_many(&files)?;
        forgotten += dropped.into_iter().filter(|dropped| *dropped).count();
        Ok(ControlFlow::Continue(()))
    });
    store.visit_files(folder, "", FilePick::Uploaded, |rel| {
        batches.push(FileKey::new(folder, rel))
    })?;
    batches.finish()?;
    Ok(forgotten)
}

/// [`follow_target`] for each of `folders`, off the runtime. A folder whose record cannot
/// be read or written keeps its ledger (logged): the store's own failure check stops the
/// daemon when the database no longer takes writes.
pub async fn follow_targets(store: &Store, folders: Vec<FolderConfig>) {
    let store = store.clone();
    let followed = tokio::task::spawn_blocking(move || {
        for folder in &folders {
            if let Err(err) = follow_target(&store, folder) {
                tracing::warn!(folder = %folder.path.display(), error = %err, "cannot compare the folder's target with the one its uploads went to");
            }
        }
    })
    .await;
    if let Err(err) = followed {
        tracing::warn!(error = %err, "comparing the folders' targets with their uploads' ended early");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn config(dir: &Path) -> Config {
        let text = format!(
            "state_dir = \"{state}\"\n[kifs]\nurl = \"http://127.0.0.1:1/kifs\"\n\
             [[folder]]\npath = \"{a}\"\nkifs_directory = \"new\"\n",
            state = dir.join("state").display(),
            a = dir.join("a").display(),
        );
        let path = dir.join("upsync.toml");
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(&path, text).unwrap();
        Config::load(&path).expect("the config loads")
    }

    /// Records `count` uploads of the folder, more than one batch of them.
    fn record_uploads(store: &Store, folder: &str, count: usize) {
        let fingerprint = Fingerprint {
            size: 1,
            mtime_ns: 1,
            inode: 1,
            ctime_ns: Some(1),
        };
        for n in 0..count {
            let key = FileKey::new(folder, format!("f{n}.csv"));
            store
                .record_uploaded(&key, &fingerprint, "old", None)
                .unwrap();
        }
    }

    fn uploads(store: &Store, folder: &str) -> usize {
        let mut count = 0;
        store
            .visit_files(folder, "", FilePick::Uploaded, |_| {
                count += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        count
    }

    /// A folder first seen keeps its ledger; one whose change of target a crash cut short
    /// (its record still `changing`) has its whole ledger dropped at the next start, and
    /// the new target recorded, after which nothing more is dropped.
    #[test]
    fn a_change_of_target_cut_short_drops_the_whole_ledger_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let folder = &config.folders[0];
        let name = folder.path.to_string_lossy().into_owned();
        let store = Store::open(&config.state_dir).unwrap();
        let many = crate::daemon::history::FORGET_BATCH + 3;
        record_uploads(&store, &name, many);

        follow_target(&store, folder).unwrap();
        assert_eq!(
            uploads(&store, &name),
            many,
            "a folder first seen keeps its ledger"
        );
        let configured = target_identity(&folder.target);
        assert_eq!(
            store.folder_target(&name).unwrap(),
            Some(configured.clone())
        );

        store.set_folder_target(&name, CHANGING).unwrap();
        assert!(moved_since_upload(&store, folder).unwrap());
        follow_target(&store, folder).unwrap();
        assert_eq!(uploads(&store, &name), 0);
        assert_eq!(store.folder_target(&name).unwrap(), Some(configured));
        assert!(!moved_since_upload(&store, folder).unwrap());

        record_uploads(&store, &name, 2);
        follow_target(&store, folder).unwrap();
        assert_eq!(uploads(&store, &name), 2, "the target was followed once");
    }
}
