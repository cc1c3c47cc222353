//! Walking a folder's files through their `ledger` entries without listing them all in
//! memory: the files a whole-folder scan checks for at its end (those with a job and, in a
//! folder that propagates deletions, those uploaded), and the uploads `upsync ls` lists
//! and `upsync forget` selects.
//!
//! A walk reads [`VISIT_CHUNK`] entries at a time under one hold of the database, then
//! hands the picked files to its caller with the database let go: the caller looks at each
//! file on disk, which must neither hold a compaction's swap nor keep a sled iterator open
//! across file-system calls. The next chunk starts just after the last key read, so a
//! compaction swapping the database between two chunks changes nothing: keys are the same
//! in the copy.

use std::ops::ControlFlow;

use super::record::FileRecord;
use super::{FileKey, LedgerEntry, Store, StoreError, decode_ledger, valid_key};

/// How many `ledger` entries a walk reads under one hold of the database.
pub(super) const VISIT_CHUNK: usize = 4_096;

/// Which files [`Store::visit_files`] hands on, by their `ledger` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePick {
    /// Files with a job.
    WithJob,
    /// Files the ledger records as uploaded.
    Uploaded,
    /// Files with a job or recorded as uploaded, each once.
    WithJobOrUploaded,
}

impl FilePick {
    fn picks(self, record: FileRecord<'_>) -> bool {
        match self {
            FilePick::WithJob => record.job.is_some(),
            FilePick::Uploaded => record.upload.is_some(),
            FilePick::WithJobOrUploaded => record.job.is_some() || record.upload.is_some(),
        }
    }
}

impl Store {
    /// Hands `visit` the relative path of each file of `folder` under the relative path
    /// prefix `under` (`""` for all) whose `ledger` entry `pick` picks, in the ledger's
    /// (byte) order. Between chunks of [`VISIT_CHUNK`] entries the database is not held
    /// (module doc), so entries written meanwhile after the walk's place are seen and
    /// those before it are not. Stops early when `visit` breaks. On an error, the files
    /// handed on before it stay handed on.
    pub fn visit_files(
        &self,
        folder: &str,
        under: &str,
        pick: FilePick,
        mut visit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk(
            folder,
            under,
            |_, record| Ok(pick.picks(record).then_some(())),
            |rel, ()| visit(rel),
        )
    }

    /// Hands `visit` each file of `folder` under `under` that the ledger records as
    /// uploaded, with what it records, walking as [`Store::visit_files`] does.
    pub fn visit_uploads(
        &self,
        folder: &str,
        under: &str,
        visit: impl FnMut(&str, LedgerEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk(
            folder,
            under,
            |raw_key, record| {
                record
                    .upload
                    .map(|upload| decode_ledger(upload, raw_key))
                    .transpose()
            },
            visit,
        )
    }

    /// The walk of both: `take` reads what `visit` gets from each entry (`None`: the file
    /// is passed over), chunk by chunk.
    fn walk<T>(
        &self,
        folder: &str,
        under: &str,
        take: impl Fn(&[u8], FileRecord<'_>) -> Result<Option<T>, StoreError>,
        mut visit: impl FnMut(&str, T) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // A file key is the folder, a NUL, then the relative path: `under` is its prefix.
        let prefix = valid_key(&FileKey::new(folder, under))?;
        let rel_start = folder.len() + 1;
        let mut from = prefix.clone();
        let mut taken = Vec::new();
        loop {
            let more = self.read_chunk(&prefix, &from, &take, &mut taken)?;
            for (raw_key, value) in taken.drain(..) {
                if let Ok(rel) = std::str::from_utf8(&raw_key[rel_start..])
                    && visit(rel, value).is_break()
                {
                    return Ok(());
                }
            }
            match more {
                Some(last) => from = successor(&last),
                None => return Ok(()),
            }
        }
    }

    /// Reads up to [`VISIT_CHUNK`] entries under `prefix` from `from` on, putting the keys
    /// of those `take` takes, with what it took, into `taken`; returns the last key read
    /// when the chunk was full (there may be more), `None` when the prefix ended. The
    /// pointers of new files kept in memory (module `pointers`) are read as part of the
    /// entries: the files without an entry that they point from are taken in their place.
    pub(super) fn read_chunk<T>(
        &self,
        prefix: &[u8],
        from: &[u8],
        take: impl Fn(&[u8], FileRecord<'_>) -> Result<Option<T>, StoreError>,
        taken: &mut Vec<(Vec<u8>, T)>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.load_pointers()?;
        let handles = self.handles();
        let mut entries = Vec::new();
        let mut last = None;
        for entry in handles.trees.ledger.range(from..) {
            let (raw_key, raw) = entry.map_err(|err| self.db_error(err))?;
            if !raw_key.starts_with(prefix) {
                break;
            }
            entries.push((raw_key, raw));
            if entries.len() == VISIT_CHUNK {
                last = entries.last().map(|(raw_key, _)| raw_key.to_vec());
                break;
            }
        }
        let mut kept = self
            .inner
            .pointers
            .within(prefix, from, last.as_deref())
            .into_iter()
            .peekable();
        let mut take_into = |raw_key: &[u8], record: FileRecord<'_>| {
            if let Some(value) = take(raw_key, record)? {
                taken.push((raw_key.to_vec(), value));
            }
            Ok::<(), StoreError>(())
        };
        for (raw_key, raw) in &entries {
            while let Some((file, id)) = kept.next_if(|(file, _)| file[..] < raw_key[..]) {
                take_into(&file, FileRecord::only_job(id))?;
            }
            let mut record = FileRecord::split(raw);
            if let Some((_, id)) = kept.next_if(|(file, _)| file[..] == raw_key[..]) {
                record.job = Some(id);
            }
            take_into(raw_key, record)?;
        }
        for (file, id) in kept {
            take_into(&file, FileRecord::only_job(id))?;
        }
        Ok(last)
    }

    /// The files [`Store::visit_files`] hands on, as a list.
    #[cfg(test)]
    pub(crate) fn files_picked(
        &self,
        folder: &str,
        under: &str,
        pick: FilePick,
    ) -> Result<Vec<String>, StoreError> {
        let mut files = Vec::new();
        self.visit_files(folder, under, pick, |rel| {
            files.push(rel.to_owned());
            ControlFlow::Continue(())
        })?;
        Ok(files)
    }
}

/// The smallest key after `key` in byte order.
pub(super) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}
