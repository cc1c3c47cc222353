//! The records the store keeps: jobs and their states, ledger entries, and the small
//! value types the store's API speaks in.

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
    /// The bytes are on the remote, which is still importing them ([`Job::import`] says
    /// which upload); no worker holds the job.
    Importing,
    RetryWait {
        next_attempt_at_ms: u64,
    },
    Failed {
        reason: String,
        failed_at_ms: u64,
        /// What went wrong, as `upsync_upload_failures_total` labels it (`auth`,
        /// `rejected`, …); absent where it was not recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
}

/// What waiting for a remote import needs, kept durably so that a restart resumes the
/// wait instead of posting again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// The remote's name for the posted upload (a Redivis upload URI).
    pub remote: String,
    /// Where it was posted (a Redivis table reference).
    pub target: String,
    /// The version of the file whose bytes were posted.
    pub fingerprint: Fingerprint,
    /// MD5 hex of the bytes posted.
    pub md5: String,
    pub posted_at_ms: u64,
    /// How long the transfer before the post took.
    #[serde(default)]
    pub transfer_ms: u64,
    /// The remote ended the import `failed` with this reason, and the failed upload (at
    /// `remote`) is being removed; the job fails once it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// What a job does for its file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Send the file's current version.
    #[default]
    Upload,
    /// The file is gone: delete what the ledger records as uploaded for it.
    Delete,
}

impl JobKind {
    pub fn is_upload(&self) -> bool {
        *self == JobKind::Upload
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub key: FileKey,
    /// The newest fingerprint seen for the file; for a deletion, the version it deletes.
    pub fingerprint: Fingerprint,
    pub state: JobState,
    /// Upload or delete; one job per file either way, so a file that comes back turns its
    /// deletion into an upload.
    #[serde(default, skip_serializing_if = "JobKind::is_upload")]
    pub kind: JobKind,
    /// A deletion the operator let through the mass-delete guard (`upsync retry
    /// --deletes`): the guard no longer counts or holds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Set when `finalizing` was persisted for the current content: the finalize call may
    /// have reached the remote, so the backend reconciles before finalizing again.
    pub finalize_started: bool,
    /// Job-level attempts so far (reset when the content changes or on `upsync retry`).
    pub attempts: u32,
    /// Imports of this content the remote finished with another size or hash (each such
    /// upload is deleted); the second one fails the job. Reset like `attempts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupt_imports: u32,
    pub last_error: Option<String>,
    /// The upload being imported: present exactly while the job is importing. (A field of
    /// its own rather than of the state: the state is an internally tagged enum, whose
    /// decoding cannot carry the fingerprint's 128-bit mtime.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Import>,
    /// An attempt at this content, started at this time (ms), ended without its outcome
    /// recorded (found active at a restart: a crash, or a state write that failed after the
    /// request): its bytes may be on the remote, so a backend whose uploads are not
    /// reconciled otherwise looks before sending them again. Cleared with new content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_attempt_ms: Option<u64>,
    /// The fingerprint the job had when the current attempt claimed it: present exactly
    /// while the job is active or finalizing. When the attempt ends with `fingerprint`
    /// moved on, the attempt sent an older version (the store's invariant 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<Fingerprint>,
    /// Queued since `offer` created it, and never written otherwise since: it waits in its
    /// folder's line, at the place its id gives it, and has no `due` entry (module `line`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_line: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// Every failed job but the deletions the mass-delete guard holds.
    All,
    /// Every failed deletion, the held ones included (`upsync retry --deletes`).
    Deletes,
    /// Absolute paths (folder joined with relative path) of files, or of directories:
    /// every failed job under one, but the deletions the mass-delete guard holds.
    Paths(Vec<std::path::PathBuf>),
}

/// How much the database holds against how much room it takes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Key and value bytes of every entry of every tree: what the store would take if it
    /// stored nothing but its entries, packed.
    pub live_bytes: u64,
    /// The length of the database's files (sled's log, snapshot, blobs and config).
    pub on_disk_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCounts {
    pub queued: u64,
    pub active: u64,
    pub finalizing: u64,
    #[serde(default)]
    pub importing: u64,
    pub retry_wait: u64,
    pub failed: u64,
    pub done: u64,
    /// Deletion jobs, in any state (also counted under their state).
    #[serde(default)]
    pub deletions: u64,
    /// Deletions the mass-delete guard holds (also counted as failed).
    #[serde(default)]
    pub held: u64,
}

impl FolderCounts {
    /// The jobs counted, in every state.
    pub fn jobs(&self) -> u64 {
        self.queued + self.active + self.finalizing + self.importing + self.retry_wait + self.failed
    }

    /// The counts of a stopped daemon as its next start finds them: the attempts it left
    /// active or finalizing (a stop or a crash ended them) are queued again
    /// ([`super::Store::recover_after_restart`]); nothing runs them meanwhile. A folder
    /// given another target since its uploads (`retargeted`) has none done: that start
    /// drops its ledger.
    pub fn as_found_at_next_start(&self, retargeted: bool) -> FolderCounts {
        FolderCounts {
            queued: self.queued + self.active + self.finalizing,
            active: 0,
            finalizing: 0,
            done: if retargeted { 0 } else { self.done },
            ..self.clone()
        }
    }
}

impl FileKey {
    pub fn new(folder: impl Into<String>, rel: impl Into<String>) -> FileKey {
        FileKey {
            folder: folder.into(),
            rel: rel.into(),
        }
    }

    /// The file's absolute local path: the folder joined with the relative path.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.folder).join(&self.rel)
    }
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl JobState {
    /// The state's name as `upsync status` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Active => "active",
            JobState::Finalizing => "finalizing",
            JobState::Importing => "importing",
            JobState::RetryWait { .. } => "retry-wait",
            JobState::Failed { .. } => "failed",
        }
    }
}

impl Job {
    /// A new upload of `fingerprint`, queued at `now_ms` and waiting in its folder's line,
    /// with nothing tried yet.
    pub fn queued(id: JobId, key: FileKey, fingerprint: Fingerprint, now_ms: u64) -> Job {
        Job {
            id,
            key,
            fingerprint,
            state: JobState::Queued,
            kind: JobKind::Upload,
            approved: false,
            finalize_started: false,
            attempts: 0,
            corrupt_imports: 0,
            last_error: None,
            import: None,
            unconfirmed_attempt_ms: None,
            claimed: None,
            in_line: true,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// When the job is claimable: queued jobs from the time they were queued
    /// (`updated_at_ms`, which every transition into `Queued` sets), retry-wait jobs from
    /// their next attempt. Active, finalizing, importing and failed jobs are not claimable.
    /// Where it is claimed from: [`Job::due_entry_ms`].
    pub fn due_ms(&self) -> Option<u64> {
        match self.state {
            JobState::Queued => Some(self.updated_at_ms),
            JobState::RetryWait { next_attempt_at_ms } => Some(next_attempt_at_ms),
            JobState::Active
            | JobState::Finalizing
            | JobState::Importing
            | JobState::Failed { .. } => None,
        }
    }

    /// Where the job sits in the `due` index: at [`Job::due_ms`], unless it waits in its
    /// folder's line instead ([`Job::in_line`]).
    pub fn due_entry_ms(&self) -> Option<u64> {
        if self.in_line {
            return None;
        }
        self.due_ms()
    }

    /// The file's absolute local path.
    pub fn path(&self) -> std::path::PathBuf {
        self.key.path()
    }
}
