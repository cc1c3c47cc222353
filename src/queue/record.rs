//! A file's entry in the `ledger` tree: the version uploaded, and the file's job.
//!
//! Finding a file's job from its path needs an entry keyed by path, and so does the
//! ledger. Kept apart (the `by_path` index before format 4), they cost a write more per
//! upload: the index entry out, next to the ledger entry in. One entry per file holds both:
//!
//! ```text
//! uploaded, no job         LedgerEntry (JSON, starts with `{`)
//! a job, and maybe uploaded  JOB_MARK ++ JobId (u64 BE) ++ LedgerEntry (JSON) or nothing
//! ```
//!
//! An entry of the first kind is what every format before 4 wrote, so those need no change.

use super::JobId;

/// The first byte of an entry that names a job (never the start of JSON).
const JOB_MARK: u8 = 0;
const MARKED_LEN: usize = 1 + 8;

/// A ledger entry split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileRecord<'a> {
    pub job: Option<JobId>,
    /// The uploaded version (a [`super::LedgerEntry`] in JSON), if any.
    pub upload: Option<&'a [u8]>,
}

impl<'a> FileRecord<'a> {
    pub fn split(raw: &'a [u8]) -> FileRecord<'a> {
        match raw.first() {
            Some(&JOB_MARK) if raw.len() >= MARKED_LEN => {
                let id = u64::from_be_bytes(raw[1..MARKED_LEN].try_into().expect("8 bytes"));
                let upload = &raw[MARKED_LEN..];
                FileRecord {
                    job: Some(JobId(id)),
                    upload: (!upload.is_empty()).then_some(upload),
                }
            }
            _ => FileRecord {
                job: None,
                upload: Some(raw),
            },
        }
    }

    /// The entry of a file with a job and no upload.
    pub fn only_job(id: JobId) -> FileRecord<'static> {
        FileRecord {
            job: Some(id),
            upload: None,
        }
    }

    /// The entry's bytes; `None` when it holds nothing (the entry is removed).
    pub fn join(self) -> Option<Vec<u8>> {
        let upload = self.upload.unwrap_or_default();
        match self.job {
            None if upload.is_empty() => None,
            None => Some(upload.to_vec()),
            Some(id) => {
                let mut raw = Vec::with_capacity(MARKED_LEN + upload.len());
                raw.push(JOB_MARK);
                raw.extend_from_slice(&id.0.to_be_bytes());
                raw.extend_from_slice(upload);
                Some(raw)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_plain_ledger_entries_read_as_uploads_without_a_job() {
        let json = br#"{"fingerprint":1}"#;
        for record in [
            FileRecord {
                job: Some(JobId(7)),
                upload: Some(json),
            },
            FileRecord {
                job: Some(JobId(u64::MAX)),
                upload: None,
            },
            FileRecord {
                job: None,
                upload: Some(json),
            },
        ] {
            let raw = record.join().expect("holds something");
            assert_eq!(FileRecord::split(&raw), record);
        }
        assert_eq!(FileRecord::split(json).upload, Some(&json[..]));
        assert_eq!(
            FileRecord {
                job: None,
                upload: None
            }
            .join(),
            None
        );
    }
}
