//! The durable job queue and upload ledger (sled). Layout and invariants: see below.
//! (Skeleton: the implementation fills this in.)

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;

/// A file inside a watched folder: the folder's absolute path and the `/`-separated path
/// relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileKey {
    pub folder: String,
    pub rel: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Active,
    Finalizing,
    RetryWait { next_attempt_at_ms: u64 },
    Failed { reason: String, failed_at_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub key: FileKey,
    /// The newest fingerprint seen for the file.
    pub fingerprint: Fingerprint,
    pub state: JobState,
    /// Set when `finalizing` was persisted for the current content: the finalize call may
    /// have reached the remote, so the backend reconciles before finalizing again.
    pub finalize_started: bool,
    /// Job-level attempts so far (reset when the content changes or on `upsync retry`).
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What the ledger remembers about an uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub fingerprint: Fingerprint,
    /// Backend-specific remote identity (KiFS path, Redivis upload URI).
    pub remote: String,
    /// MD5 hex of the uploaded bytes, where known.
    pub md5: Option<String>,
    pub uploaded_at_ms: u64,
}

/// The outcome of offering a settled file to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// The ledger already holds this fingerprint: nothing to do.
    UpToDate,
    /// A job for this path already has this fingerprint.
    AlreadyQueued(JobId),
    /// A new job was queued, or an existing one took the new fingerprint.
    Queued(JobId),
}

/// Which failed jobs `retry_failed` moves back to the queue.
#[derive(Debug, Clone)]
pub enum RetrySelection {
    All,
    /// Absolute paths of files (folder joined with relative path).
    Paths(Vec<std::path::PathBuf>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCounts {
    pub queued: u64,
    pub active: u64,
    pub finalizing: u64,
    pub retry_wait: u64,
    pub failed: u64,
    pub done: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Message(String),
}

#[derive(Clone)]
pub struct Store {
    _db: sled::Db,
}

#[allow(unused_variables)]
impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        todo!()
    }
    pub fn is_uploaded(
        &self,
        key: &FileKey,
        fingerprint: &Fingerprint,
    ) -> Result<bool, StoreError> {
        todo!()
    }
    pub fn offer(&self, key: &FileKey, fingerprint: &Fingerprint) -> Result<Offer, StoreError> {
        todo!()
    }
    pub fn claim(&self, now: SystemTime) -> Result<Option<Job>, StoreError> {
        todo!()
    }
    pub fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        todo!()
    }
    pub fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        todo!()
    }
    pub fn save_progress(&self, id: JobId, progress: &[u8]) -> Result<(), StoreError> {
        todo!()
    }
    pub fn load_progress(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        todo!()
    }
    pub fn clear_progress(&self, id: JobId) -> Result<(), StoreError> {
        todo!()
    }
    pub fn mark_finalizing(&self, id: JobId) -> Result<(), StoreError> {
        todo!()
    }
    pub fn complete(
        &self,
        id: JobId,
        uploaded: &Fingerprint,
        entry_remote: &str,
        md5: Option<&str>,
    ) -> Result<bool, StoreError> {
        todo!()
    }
    pub fn fail(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        todo!()
    }
    pub fn retry_later(&self, id: JobId, at: SystemTime, reason: &str) -> Result<(), StoreError> {
        todo!()
    }
    pub fn requeue(&self, id: JobId) -> Result<(), StoreError> {
        todo!()
    }
    pub fn drop_job(&self, id: JobId) -> Result<(), StoreError> {
        todo!()
    }
    pub fn retry_failed(&self, selection: &RetrySelection) -> Result<usize, StoreError> {
        todo!()
    }
    pub fn recover_after_restart(&self) -> Result<usize, StoreError> {
        todo!()
    }
    pub fn ledger_get(&self, key: &FileKey) -> Result<Option<LedgerEntry>, StoreError> {
        todo!()
    }
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        todo!()
    }
    pub fn counts(&self) -> Result<std::collections::BTreeMap<String, FolderCounts>, StoreError> {
        todo!()
    }
    pub fn flush(&self) -> Result<(), StoreError> {
        todo!()
    }
}
