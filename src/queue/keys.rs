//! Byte encodings of the store's keys.
//!
//! Numbers are big-endian so that sled's lexicographic key order is numeric order: the
//! `due` index is then a time-ordered queue whose first entry is the next claimable job.
//! File keys are `folder \0 rel`; neither part of a real path can contain NUL, so the first
//! NUL splits them unambiguously, and all keys of one folder share the prefix `folder \0`.

use super::job::{FileKey, JobId};

/// Length of a `due` key: due time (ms) then job id, both `u64` big-endian.
pub const DUE_KEY_LEN: usize = 16;

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

pub fn due_key(due_ms: u64, id: JobId) -> [u8; DUE_KEY_LEN] {
    let mut raw = [0u8; DUE_KEY_LEN];
    raw[..8].copy_from_slice(&due_ms.to_be_bytes());
    raw[8..].copy_from_slice(&id.0.to_be_bytes());
    raw
}

pub fn decode_due_key(raw: &[u8]) -> Option<(u64, JobId)> {
    let raw: &[u8; DUE_KEY_LEN] = raw.try_into().ok()?;
    let (due, id) = raw.split_at(8);
    Some((
        u64::from_be_bytes(due.try_into().ok()?),
        JobId(u64::from_be_bytes(id.try_into().ok()?)),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time_then_id() {
        let mut keys = [
            due_key(1_000, JobId(2)),
            due_key(999, JobId(7)),
            due_key(1_000, JobId(1)),
            due_key(256, JobId(u64::MAX)),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| decode_due_key(k).expect("due keys are 16 bytes"))
            .collect();
        assert_eq!(
            decoded,
            vec![
                (256, JobId(u64::MAX)),
                (999, JobId(7)),
                (1_000, JobId(1)),
                (1_000, JobId(2))
            ]
        );
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
    fn job_keys_round_trip_and_refuse_wrong_lengths() {
        assert_eq!(decode_job_key(&job_key(JobId(42))), Some(JobId(42)));
        assert_eq!(decode_job_key(b"short"), None);
        assert_eq!(decode_due_key(b"short"), None);
    }
}
