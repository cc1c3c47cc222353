//! Byte encodings of the store's keys.
//!
//! Numbers are big-endian so that sled's lexicographic key order is numeric order: the
//! `due` index is then, per folder, a time-ordered queue whose first entry is the folder's
//! next claimable job. Its keys start with the folder's [`FolderTag`], so that claims can go
//! to the folders in turn and a backlog in one folder never hides another folder's jobs.
//! File keys are `folder \0 rel`; neither part of a real path can contain NUL, so the first
//! NUL splits them unambiguously, and all keys of one folder share the prefix `folder \0`.
//! A job id starts with its folder's [`LinePrefix`] (module `line`), so that the `jobs`
//! tree holds each folder's jobs together, in the order they were created.

use md5::{Digest, Md5};

use super::job::{FileKey, JobId};

/// Length of a `due` key: folder tag, due time (ms), job id.
pub const DUE_KEY_LEN: usize = 24;

/// A short, fixed-length stand-in for a folder in the `due` index: the first 8 bytes of
/// the MD5 of its queue key. MD5 rather than std's hasher because the value is stored and
/// must not change between releases; two folders sharing a tag (1 in 2^64) would only share
/// their turn, never a job.
pub type FolderTag = [u8; 8];

pub fn folder_tag(folder: &str) -> FolderTag {
    let digest = Md5::digest(folder.as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    tag
}

/// The first tag after `tag` in key order, `None` after the last one.
pub fn next_tag(tag: FolderTag) -> Option<FolderTag> {
    u64::from_be_bytes(tag).checked_add(1).map(u64::to_be_bytes)
}

/// The first bytes of the job ids of one folder: the start of its [`FolderTag`]. Two
/// folders sharing a prefix (about 1 in 16 million) share their line, never a job.
pub type LinePrefix = [u8; LINE_PREFIX_LEN];
pub const LINE_PREFIX_LEN: usize = 3;
/// The bits of a job id after the prefix: a sequence number from sled's `generate_id`.
const SEQUENCE_BITS: u32 = 64 - 8 * LINE_PREFIX_LEN as u32;

pub fn line_prefix(folder: &str) -> LinePrefix {
    tag_prefix(folder_tag(folder))
}

/// The line prefix of the folder tagged `tag`.
pub fn tag_prefix(tag: FolderTag) -> LinePrefix {
    let mut prefix = [0u8; LINE_PREFIX_LEN];
    prefix.copy_from_slice(&tag[..LINE_PREFIX_LEN]);
    prefix
}

/// The id of a job of the folder with `prefix`, numbered `sequence`; `None` once the
/// sequence no longer fits (after about 10^12 jobs).
pub fn new_job_id(prefix: LinePrefix, sequence: u64) -> Option<JobId> {
    if sequence >> SEQUENCE_BITS != 0 {
        return None;
    }
    let mut raw = [0u8; 8];
    raw[..LINE_PREFIX_LEN].copy_from_slice(&prefix);
    Some(JobId(u64::from_be_bytes(raw) | sequence))
}

/// The line prefix a job id starts with.
pub fn prefix_of(id: JobId) -> LinePrefix {
    let mut prefix = [0u8; LINE_PREFIX_LEN];
    prefix.copy_from_slice(&id.0.to_be_bytes()[..LINE_PREFIX_LEN]);
    prefix
}

/// The ids of the jobs of `prefix`: from its first possible id to its last.
pub fn line_ids(prefix: LinePrefix) -> (JobId, JobId) {
    let first = new_job_id(prefix, 0).expect("0 fits");
    (first, JobId(first.0 | ((1u64 << SEQUENCE_BITS) - 1)))
}

/// The first prefix after `prefix` in key order, `None` after the last one.
pub fn next_prefix(prefix: LinePrefix) -> Option<LinePrefix> {
    let (_, last) = line_ids(prefix);
    last.0.checked_add(1).map(|id| prefix_of(JobId(id)))
}

pub fn job_key(id: JobId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub fn decode_job_key(raw: &[u8]) -> Option<JobId> {
    let bytes: [u8; 8] = raw.try_into().ok()?;
    Some(JobId(u64::from_be_bytes(bytes)))
}

/// Fails when a part contains NUL, which no path does and which would make the key ambiguous.
pub fn file_key(key: &FileKey) -> Result<Vec<u8>, String> {
    if key.folder.contains('\0') || key.rel.contains('\0') {
        return Err(format!(
            "the path {:?} contains a NUL character, which no file path can contain",
            key.path()
        ));
    }
    let mut raw = Vec::with_capacity(key.folder.len() + 1 + key.rel.len());
    raw.extend_from_slice(key.folder.as_bytes());
    raw.push(0);
    raw.extend_from_slice(key.rel.as_bytes());
    Ok(raw)
}

pub fn decode_file_key(raw: &[u8]) -> Option<FileKey> {
    let split = raw.iter().position(|&b| b == 0)?;
    let folder = std::str::from_utf8(&raw[..split]).ok()?;
    let rel = std::str::from_utf8(&raw[split + 1..]).ok()?;
    Some(FileKey::new(folder, rel))
}

pub fn due_key(tag: FolderTag, due_ms: u64, id: JobId) -> [u8; DUE_KEY_LEN] {
    let mut raw = [0u8; DUE_KEY_LEN];
    raw[..8].copy_from_slice(&tag);
    raw[8..16].copy_from_slice(&due_ms.to_be_bytes());
    raw[16..].copy_from_slice(&id.0.to_be_bytes());
    raw
}

/// A `due` key's parts; `None` for anything else (an entry of an older layout included).
pub fn decode_due_key(raw: &[u8]) -> Option<DueEntry> {
    let raw: &[u8; DUE_KEY_LEN] = raw.try_into().ok()?;
    Some(DueEntry {
        tag: raw[..8].try_into().ok()?,
        due_ms: u64::from_be_bytes(raw[8..16].try_into().ok()?),
        id: JobId(u64::from_be_bytes(raw[16..].try_into().ok()?)),
    })
}

/// One entry of the `due` index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueEntry {
    pub tag: FolderTag,
    pub due_ms: u64,
    pub id: JobId,
}

/// A key as error messages show it: text where it is text, hex otherwise.
pub fn describe(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\0') => {
            format!("{:?}", text.replace('\0', "/"))
        }
        _ => format!("0x{}", hex::encode(raw)),
    }
}

/// [`decode_job_key`] of a key read from the `jobs` tree, which holds nothing else: a key
/// that does not decode means the database is damaged.
pub(super) fn stored_job_id(raw: &[u8]) -> Result<JobId, super::StoreError> {
    decode_job_key(raw).ok_or_else(|| super::StoreError::Corrupt {
        tree: "jobs",
        key: describe(raw),
        detail: "the key is not an 8-byte job id".into(),
    })
}

/// [`decode_file_key`] of a key read from the `ledger` tree, as [`stored_job_id`].
pub(super) fn stored_file_key(raw: &[u8]) -> Result<FileKey, super::StoreError> {
    decode_file_key(raw).ok_or_else(|| super::StoreError::Corrupt {
        tree: "ledger",
        key: describe(raw),
        detail: "the key is not `folder NUL relative-path` in UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_folder_then_time_then_id() {
        let (a, b) = (folder_tag("/data/a"), folder_tag("/data/b"));
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let mut keys = [
            due_key(second, 1, JobId(9)),
            due_key(first, 1_000, JobId(2)),
            due_key(first, 999, JobId(7)),
            due_key(first, 1_000, JobId(1)),
            due_key(first, 256, JobId(u64::MAX)),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let entry = decode_due_key(k).expect("due keys are 24 bytes");
                (entry.tag, entry.due_ms, entry.id)
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (first, 256, JobId(u64::MAX)),
                (first, 999, JobId(7)),
                (first, 1_000, JobId(1)),
                (first, 1_000, JobId(2)),
                (second, 1, JobId(9)),
            ]
        );
    }

    #[test]
    fn folder_tags_are_stable_and_the_next_tag_follows_in_key_order() {
        // Stored in the database: a change would strand every due entry.
        assert_eq!(folder_tag("/data/in"), folder_tag("/data/in"));
        assert_eq!(hex::encode(folder_tag("")), "d41d8cd98f00b204");
        let tag = folder_tag("/data/in");
        let next = next_tag(tag).expect("not the last tag");
        assert!(next > tag);
        assert_eq!(next_tag([0xff; 8]), None);
    }

    #[test]
    fn due_keys_of_the_older_layout_are_not_decoded() {
        assert_eq!(decode_due_key(&[0u8; 16]), None);
    }

    #[test]
    fn file_keys_round_trip_and_share_the_folder_prefix() {
        let key = FileKey::new("/data/a b", "sub/dir/ü.csv");
        let raw = file_key(&key).expect("a key without NUL encodes");
        assert_eq!(decode_file_key(&raw), Some(key));
        assert!(raw.starts_with(b"/data/a b\0"));
    }

    #[test]
    fn file_keys_with_nul_are_refused() {
        let err = file_key(&FileKey::new("/data", "a\0b")).unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn job_ids_of_one_folder_share_its_prefix_and_sort_by_sequence() {
        let prefix = line_prefix("/data/in");
        assert_eq!(prefix[..], folder_tag("/data/in")[..LINE_PREFIX_LEN]);
        let first = new_job_id(prefix, 7).expect("fits");
        let second = new_job_id(prefix, 300).expect("fits");
        assert!(job_key(first) < job_key(second));
        assert_eq!(prefix_of(first), prefix);
        let (low, high) = line_ids(prefix);
        assert!(low <= first && second <= high);
        assert_eq!(prefix_of(high), prefix);
        assert!(job_key(high) < job_key(line_ids(next_prefix(prefix).expect("not last")).0));
        assert_eq!(next_prefix([0xff; LINE_PREFIX_LEN]), None);
        assert_eq!(new_job_id(prefix, 1 << SEQUENCE_BITS), None);
        // Ids of an older layout (small sequence numbers alone) sort before every line but
        // the zero prefix's, and are never equal to a new one.
        assert_eq!(prefix_of(JobId(42)), [0u8; LINE_PREFIX_LEN]);
    }

    #[test]
    fn job_keys_round_trip_and_refuse_wrong_lengths() {
        assert_eq!(decode_job_key(&job_key(JobId(42))), Some(JobId(42)));
        assert_eq!(decode_job_key(b"short"), None);
        assert_eq!(decode_due_key(b"short"), None);
    }
}
