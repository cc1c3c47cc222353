//! The identity of one version of a local file: size, modification time and inode.
//!
//! Two observations with equal fingerprints are taken to be the same content; this is what
//! the ledger stores for every uploaded file and what the settle rule watches.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// Size, mtime (nanoseconds since the epoch) and inode of a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Fingerprint {
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    /// Reads the fingerprint of `path` without following a final symlink.
    pub fn read(path: &std::path::Path) -> std::io::Result<Fingerprint> {
        std::fs::symlink_metadata(path).map(|m| Fingerprint::of(&m))
    }
}
