//! The identity of one version of a local file: size, modification time, inode and change
//! time.
//!
//! Two observations with equal fingerprints are taken to be the same content; this is what
//! the ledger stores for every uploaded file and what the settle rule watches.
//!
//! The change time (ctime) is what makes every change visible: `touch -r`, `cp -p`, `tar -x`
//! and sync tools set a file's mtime back, and a file deleted and recreated with the same
//! size often gets the same inode back, but no call sets ctime: the kernel stamps it on
//! every write, rename into place, permission or owner change. A version whose only change
//! is its ctime (a `chmod`, a `touch` to the same mtime) is a new version too; whether its
//! bytes must be sent again is the backend's business (see the README's "The life of a
//! file").
//!
//! The times are written as JSON integers and read from their digits ([`nanos`]):
//! serde_json reads a 128-bit integer by collecting its digits in a `String` first, three
//! allocations for a timestamp, and a small upload decodes a fingerprint several times.
//!
//! Ledger entries written before the change time was recorded have none
//! ([`Fingerprint::is_version_of`] matches them on size, mtime and inode); once a scan
//! has matched such entries, a walk after it gives them their files' current change times
//! (the queue's module `stamp`).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// Size, mtime and ctime (nanoseconds since the epoch) and inode of a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    #[serde(deserialize_with = "nanos::deserialize")]
    pub mtime_ns: i128,
    pub inode: u64,
    /// `None` only in records written before the change time was kept.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nanos::deserialize_option"
    )]
    pub ctime_ns: Option<i128>,
}

impl Fingerprint {
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            size: meta.len(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            inode: meta.ino(),
            ctime_ns: Some(nanos(meta.ctime(), meta.ctime_nsec())),
        }
    }

    /// Reads the fingerprint of `path` without following a final symlink.
    pub fn read(path: &std::path::Path) -> std::io::Result<Fingerprint> {
        std::fs::symlink_metadata(path).map(|m| Fingerprint::of(&m))
    }

    /// Whether this observed version is the one `recorded` describes. A record without a
    /// change time matches on size, mtime and inode alone (see the module doc).
    pub fn is_version_of(&self, recorded: &Fingerprint) -> bool {
        match recorded.ctime_ns {
            Some(_) => self == recorded,
            None => self.without_ctime() == *recorded,
        }
    }

    /// Whether `recorded` lacks the change time that this observation has: a match by
    /// [`Fingerprint::is_version_of`] should then be written back with it.
    pub fn upgrades(&self, recorded: &Fingerprint) -> bool {
        recorded.ctime_ns.is_none() && self.ctime_ns.is_some() && self.is_version_of(recorded)
    }

    /// The fingerprint as a record without the change time has it (for comparisons the
    /// change time cannot take part in, such as across a rename, which moves it).
    pub fn without_ctime(&self) -> Fingerprint {
        Fingerprint {
            ctime_ns: None,
            ..*self
        }
    }
}

fn nanos(seconds: i64, nanoseconds: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds)
}

/// Reading a timestamp from the JSON text of its number, without allocating.
///
/// Reading it as a number would either allocate (serde_json's 128-bit path) or round it:
/// serde_json reads an integer beyond `u64` as a float, and a file dated after the year
/// 2554 has such an mtime. The borrowed text of the number is exact and free, but only a
/// deserializer that reads from memory can lend it: a record holding a fingerprint is
/// decoded with `serde_json::from_slice` (as every record of the store is), not from a
/// reader, a `Value` or another format, and not inside an internally tagged enum or a
/// flattened struct, whose decoding buffers the fields first.
mod nanos {
    use serde::de::{Deserialize, Deserializer, Error, Unexpected};
    use serde_json::value::RawValue;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
        let text = <&'de RawValue>::deserialize(deserializer)?.get();
        parse(text)
    }

    /// As [`deserialize`], and `null` is `None` (what the derived decoding accepted).
    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i128>, D::Error> {
        match <&'de RawValue>::deserialize(deserializer)?.get() {
            "null" => Ok(None),
            text => parse(text).map(Some),
        }
    }

    fn parse<E: Error>(text: &str) -> Result<i128, E> {
        text.parse().map_err(|_| {
            E::invalid_value(Unexpected::Other(text), &"an integer number of nanoseconds")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(ctime_ns: Option<i128>) -> Fingerprint {
        Fingerprint {
            size: 14,
            mtime_ns: 1_700_000_000_000_000_000,
            inode: 42,
            ctime_ns,
        }
    }

    #[test]
    fn a_record_without_ctime_matches_on_size_mtime_and_inode_and_is_upgraded() {
        let observed = version(Some(5));
        let legacy = version(None);
        assert!(observed.is_version_of(&legacy));
        assert!(observed.upgrades(&legacy));
        assert!(
            !observed.upgrades(&observed),
            "a full record needs no upgrade"
        );
        let other_size = Fingerprint { size: 15, ..legacy };
        assert!(!observed.is_version_of(&other_size));
    }

    #[test]
    fn a_changed_ctime_is_a_new_version() {
        assert!(!version(Some(6)).is_version_of(&version(Some(5))));
        assert_ne!(version(Some(6)), version(Some(5)));
    }

    #[test]
    fn a_record_written_before_ctime_decodes_and_a_new_one_round_trips() {
        let old = r#"{"size":14,"mtime_ns":1700000000000000000,"inode":42}"#;
        let decoded: Fingerprint = serde_json::from_str(old).unwrap();
        assert_eq!(decoded, version(None));
        let new = serde_json::to_string(&version(Some(7))).unwrap();
        assert_eq!(
            serde_json::from_str::<Fingerprint>(&new).unwrap(),
            version(Some(7))
        );
    }

    #[test]
    fn times_beyond_64_bits_round_trip_exactly() {
        // Year 3000 is past u64::MAX nanoseconds (a float would round it); the oldest time
        // a file can carry is i64::MIN seconds.
        let year_3000 = 32_503_680_000_123_456_789_i128;
        let oldest = i128::from(i64::MIN) * 1_000_000_000 + 1;
        for (mtime_ns, ctime_ns) in [(year_3000, Some(oldest)), (-1, Some(year_3000 + 1))] {
            let fingerprint = Fingerprint {
                size: u64::MAX,
                mtime_ns,
                inode: 7,
                ctime_ns,
            };
            let encoded = serde_json::to_vec(&fingerprint).unwrap();
            assert_eq!(
                serde_json::from_slice::<Fingerprint>(&encoded).unwrap(),
                fingerprint
            );
        }
    }

    #[test]
    fn a_null_ctime_is_none_and_a_time_that_is_not_an_integer_is_refused() {
        let null = r#"{"size":14,"mtime_ns":1700000000000000000,"inode":42,"ctime_ns":null}"#;
        assert_eq!(
            serde_json::from_str::<Fingerprint>(null).unwrap(),
            version(None)
        );
        for time in ["1.7e18", "\"1700000000000000000\"", "true"] {
            let raw = format!(r#"{{"size":14,"mtime_ns":{time},"inode":42}}"#);
            let err = serde_json::from_str::<Fingerprint>(&raw).unwrap_err();
            assert!(
                err.to_string().contains("an integer number of nanoseconds"),
                "{time}: {err}"
            );
        }
    }

    #[test]
    fn chmod_changes_the_ctime_but_not_size_mtime_or_inode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let before = Fingerprint::read(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let after = Fingerprint::read(&path).unwrap();
        assert_eq!(after.without_ctime(), before.without_ctime());
        assert_ne!(after.ctime_ns, before.ctime_ns);
    }
}
