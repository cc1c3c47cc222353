//! How jobs and ledger entries are stored as bytes, and the reads that take only part of an
//! entry (its fingerprint, its upload time) without decoding the rest.

use sled::IVec;

use super::keys::{self, file_key};
use super::{FileKey, Job, JobId, LedgerEntry, StoreError, binary};
use crate::fingerprint::Fingerprint;

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records have string keys only and serialize to JSON")
}

/// A job as stored, read outside a transaction, with the bytes it was decoded from: a
/// transaction that finds the same bytes takes this decoding ([`super::Tx::job_as_read`]), which
/// costs a small upload a decoding less.
#[derive(Debug, Clone)]
pub(super) struct ReadJob {
    pub raw: IVec,
    pub job: Job,
}

/// A job record in either encoding (module `binary`).
pub(super) fn decode_job(raw: &[u8], id: JobId) -> Result<Job, StoreError> {
    let decoded = if binary::is_binary(raw) {
        binary::decode_job(raw)
    } else {
        serde_json::from_slice(raw).map_err(|err| err.to_string())
    };
    let job = decoded.map_err(|detail| StoreError::Corrupt {
        tree: "jobs",
        key: format!("job {id}"),
        detail,
    })?;
    if job.id != id {
        return Err(StoreError::Corrupt {
            tree: "jobs",
            key: format!("job {id}"),
            detail: format!("the record names job {}", job.id),
        });
    }
    Ok(job)
}

pub(super) fn decode_ledger(raw: &[u8], key: &[u8]) -> Result<LedgerEntry, StoreError> {
    decode_ledger_as(raw, key)
}

/// Decodes a ledger entry as `T`, which may name only the fields a caller needs: the others
/// are skipped, not decoded (allocated).
fn decode_ledger_as<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    key: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|err| StoreError::Corrupt {
        tree: "ledger",
        key: keys::describe(key),
        detail: err.to_string(),
    })
}

/// The fingerprint of a ledger entry, without decoding the rest of it.
pub(super) fn ledger_fingerprint(raw: &[u8], key: &[u8]) -> Result<Fingerprint, StoreError> {
    #[derive(serde::Deserialize)]
    struct Only {
        fingerprint: Fingerprint,
    }
    decode_ledger_as::<Only>(raw, key).map(|only| only.fingerprint)
}

/// Whether the ledger entry `raw` begins with `fingerprint` exactly as [`encode`] writes
/// it, which proves the entry records this version without decoding it (JSON parsing was a
/// sixth of a restart's CPU). `false` proves nothing: the caller decodes.
pub(super) fn records_exactly(raw: &[u8], fingerprint: &Fingerprint) -> bool {
    const FIELD: &[u8] = br#"{"fingerprint":"#;
    let Some(rest) = raw.strip_prefix(FIELD) else {
        return false;
    };
    // On the stack: the scan asks this once per file, on two threads, and allocations
    // there contend for the allocator. The longest fingerprint is 162 bytes of JSON.
    let mut buffer = [0u8; 192];
    let encoded_len = {
        let mut writer = std::io::Cursor::new(&mut buffer[..]);
        if serde_json::to_writer(&mut writer, fingerprint).is_err() {
            return false;
        }
        writer.position() as usize
    };
    rest.starts_with(&buffer[..encoded_len])
}

/// The ledger entry `raw`, encoded again with `fingerprint` in place of its own (an entry
/// of an older layout, upgraded with the change time).
pub(super) fn with_fingerprint(
    raw: &[u8],
    key: &[u8],
    fingerprint: &Fingerprint,
) -> Result<Vec<u8>, StoreError> {
    let mut entry = decode_ledger(raw, key)?;
    entry.fingerprint = *fingerprint;
    Ok(encode(&entry))
}

/// The upload time of a ledger entry, without decoding the rest of it.
pub(super) fn ledger_uploaded_at(raw: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    #[derive(serde::Deserialize)]
    struct Only {
        uploaded_at_ms: u64,
    }
    decode_ledger_as::<Only>(raw, key).map(|only| only.uploaded_at_ms)
}

pub(super) fn valid_key(key: &FileKey) -> Result<Vec<u8>, StoreError> {
    file_key(key).map_err(StoreError::InvalidKey)
}
