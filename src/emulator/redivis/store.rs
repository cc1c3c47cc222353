//! The Redivis emulator's records and their layout on disk, plus the naming rules (table
//! references, upload name escaping) that decide where things live.
//!
//! Layout under the Redivis data directory (`<--data>/redivis`):
//!
//! ```text
//! sessions/<id>.json        one transfer: legacy resumable upload, temp upload or session
//! sessions/<id>.data        its bytes so far (the file length is the persisted offset)
//! datasets/<dataset key>.json              a dataset: its unreleased and released versions
//! tables/<table key>/table.json
//! tables/<table key>/uploads/<upload id>.json
//! tables/<table key>/files/<upload name>   the upload's bytes, for a person to look at
//! tables/<table key>/rawfiles/<id>.json    a file of a file index table
//! tables/<table key>/rawfiles/<id>.data    its bytes
//! tmp/                      inline upload bodies being received
//! ```
//!
//! `<dataset key>` is `owner.dataset` in lower case. `<table key>` is the reference in lower
//! case (references are case-insensitive), its version qualifier as written for `:next`
//! and `v<major>_<minor>` for a released version (a release renames the directory);
//! `<upload name>` is the name with `%` and `/` percent-encoded (and a name of `.` or `..`
//! fully encoded), so every upload is one flat file whatever its name.
//! JSON records are written to a temporary file and renamed, so a crash leaves the old or
//! the new record, never half of one.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

/// GCS chunk granularity: non-final chunks are at least this long, kept prefixes are
/// multiples of it. The server's rule is the one the client keeps to, so both read it from
/// one place.
pub use crate::upload::redivis::granule::CHUNK_GRANULE as ALIGN;

/// Milliseconds since the Unix epoch: timestamps survive a restart of the emulator.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// A short id in the style of Redivis persistent ids (`7br5-41440fjzk`).
pub fn short_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", &hex[..4], &hex[4..13])
}

/// A session id: long and unguessable, since the session URL is a bearer capability.
pub fn session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Redivis name escaping: non-alphanumerics other than `_` become `_`, runs of `_`
/// collapse, leading and trailing `_` drop; case-insensitive (lower-cased here).
pub fn escape_name(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for ch in name.chars() {
        if ch.is_alphanumeric() {
            escaped.extend(ch.to_lowercase());
        } else if !escaped.ends_with('_') {
            escaped.push('_');
        }
    }
    escaped.trim_matches('_').to_string()
}

/// The file name an upload's bytes are stored under (see the module doc).
pub fn file_component(name: &str) -> String {
    if name == "." || name == ".." || name.is_empty() {
        return name.replace('.', "%2E") + "%";
    }
    name.replace('%', "%25")
        .replace('/', "%2F")
        .replace('\0', "%00")
}

/// The directory name of a table.
pub fn table_key(reference: &str) -> String {
    reference.to_lowercase().replace('/', "%2F")
}

/// Where the emulator keeps the bytes of upload `upload_name` of table `table_ref`;
/// `data_dir` is the emulator's `--data` directory (the one in `EmulatorOptions`).
pub fn stored_upload_path(data_dir: &Path, table_ref: &str, upload_name: &str) -> PathBuf {
    data_dir
        .join("redivis")
        .join("tables")
        .join(table_key(table_ref))
        .join("files")
        .join(file_component(upload_name))
}

/// Why a table reference cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RefError {
    Malformed(String),
    Released(String),
}

/// Which version of a dataset a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `:next`, the unreleased version: the only one that takes uploads.
    Next,
    /// No version qualifier, or `:current`: the latest released version.
    Current,
    /// `:v1_0`, `:v1.0` or `:1.0`: a released version by its tag.
    Tag { major: u32, minor: u32 },
}

impl Version {
    fn parse(qualifier: &str) -> Option<Version> {
        if qualifier.eq_ignore_ascii_case("next") {
            return Some(Version::Next);
        }
        if qualifier.eq_ignore_ascii_case("current") {
            return Some(Version::Current);
        }
        let digits = qualifier.strip_prefix(['v', 'V']).unwrap_or(qualifier);
        let (major, minor) = digits.split_once(['_', '.'])?;
        Some(Version::Tag {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// How the version appears in a table key: `next` or `v1_0`.
    pub fn key_part(major: u32, minor: u32) -> String {
        format!("v{major}_{minor}")
    }
}

/// A parsed table reference `owner.dataset[:refId][:version].table[:refId]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    owner: String,
    /// The dataset name followed by its qualifiers, the version among them (if given).
    dataset_parts: Vec<String>,
    /// Where the version qualifier is in `dataset_parts`.
    version_at: Option<usize>,
    pub version: Version,
    /// `name[:refId]`.
    pub table: String,
}

impl TableRef {
    /// Parses (and checks the characters of) a table reference.
    pub fn parse(reference: &str) -> Result<TableRef, RefError> {
        let malformed = |why: &str| {
            RefError::Malformed(format!(
                "table reference {reference:?} is not valid: {why}; expected \
                 owner.dataset:next.table"
            ))
        };
        let (owner, rest) = reference
            .split_once('.')
            .ok_or_else(|| malformed("it has no '.'"))?;
        let (dataset, table) = rest
            .rsplit_once('.')
            .ok_or_else(|| malformed("it needs owner, dataset and table parts separated by '.'"))?;
        let word = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
        };
        if !word(owner) || owner.contains('.') {
            return Err(malformed("the owner must be letters, digits and '_'"));
        }
        if !dataset.split(':').all(word) || !table.split(':').all(word) || table.contains('.') {
            return Err(malformed(
                "dataset and table parts are names with optional ':' qualifiers",
            ));
        }
        let dataset_parts: Vec<String> = dataset.split(':').map(str::to_string).collect();
        let version_at = dataset_parts
            .iter()
            .skip(1)
            .position(|part| Version::parse(part).is_some())
            .map(|index| index + 1);
        let version = version_at
            .and_then(|index| Version::parse(&dataset_parts[index]))
            .unwrap_or(Version::Current);
        Ok(TableRef {
            owner: owner.to_string(),
            dataset_parts,
            version_at,
            version,
            table: table.to_string(),
        })
    }

    /// Parses a dataset reference `owner.dataset[:refId][:version]`.
    pub fn parse_dataset(reference: &str) -> Result<TableRef, RefError> {
        // A dataset reference is a table reference without its table part.
        TableRef::parse(&format!("{reference}._")).map_err(|_| {
            RefError::Malformed(format!(
                "dataset reference {reference:?} is not valid; expected owner.dataset, \
                 optionally with a version (owner.dataset:next)"
            ))
        })
    }

    /// Whether the reference names a version (else it means the current one).
    pub fn has_version(&self) -> bool {
        self.version_at.is_some()
    }

    /// `owner.dataset`, as written, without qualifiers.
    pub fn dataset_reference(&self) -> String {
        format!("{}.{}", self.owner, self.dataset_parts[0])
    }

    /// The dataset's key: `owner.name`, lower case (references are case-insensitive).
    pub fn dataset_key(&self) -> String {
        format!("{}.{}", self.owner, self.dataset_parts[0]).to_lowercase()
    }

    /// The table's name, without its reference id.
    pub fn table_name(&self) -> &str {
        self.table.split(':').next().unwrap_or(&self.table)
    }

    /// The reference with its version qualifier replaced by (or given) `version`
    /// (`next` or a [`Version::key_part`]), as written.
    pub fn with_version(&self, version: &str) -> String {
        let mut parts = self.dataset_parts.clone();
        match self.version_at {
            Some(index) => parts[index] = version.to_string(),
            None => parts.push(version.to_string()),
        }
        format!("{}.{}.{}", self.owner, parts.join(":"), self.table)
    }

    /// The key of this table in `version`: [`table_key`] of [`Self::with_version`].
    pub fn key(&self, version: &str) -> String {
        table_key(&self.with_version(version))
    }
}

/// Checks `owner.dataset[:refId][:version].table[:refId]`; `writable` additionally requires
/// the dataset part to name the unreleased version (`:next`).
pub fn check_table_ref(reference: &str, writable: bool) -> Result<TableRef, RefError> {
    let parsed = TableRef::parse(reference)?;
    if writable && parsed.version != Version::Next {
        return Err(RefError::Released(format!(
            "uploads can only be created on tables in an unreleased version: {reference:?} \
             does not name one (the dataset part must carry :next, e.g. owner.dataset:next.table)"
        )));
    }
    Ok(parsed)
}

/// What kind of transfer a `sessions/<id>` record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransferKind {
    /// Legacy `resumableUpload`: its URL is itself a session.
    ResumableUpload,
    /// `tempUploads` entry: its URL takes a plain PUT or a resumable initiation.
    TempUpload,
    /// A session initiated on a temp upload URL.
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransferState {
    Open,
    Complete,
    Poisoned,
    Cancelled,
}

/// A transfer's record (`sessions/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub id: String,
    pub kind: TransferKind,
    /// The table key the transfer was created for.
    pub table: String,
    /// Declared total size; `None` while a session's total is unknown (`bytes a-b/*`).
    pub total: Option<u64>,
    pub name: Option<String>,
    pub resumable: bool,
    /// For a session: the temp upload it was initiated on.
    pub parent: Option<String>,
    /// For a temp upload: the session whose bytes it holds once that session completed.
    pub completed_session: Option<String>,
    /// For a temp upload: bytes received by a plain PUT.
    pub received: Option<u64>,
    pub created_ms: u64,
    pub state: TransferState,
    /// Set on completion.
    pub content: Option<ContentSummary>,
    /// The upload that consumed it.
    pub consumed_by: Option<String>,
}

/// What the emulator knows about a stored byte sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentSummary {
    pub size: u64,
    /// MD5, lower-case hex.
    pub md5: String,
    /// Text lines (newlines, plus one for a last line without newline).
    pub lines: u64,
}

/// An incremental digest of bytes as they are written.
#[derive(Clone)]
pub struct Digest {
    md5: Md5,
    newlines: u64,
    last: Option<u8>,
    pub len: u64,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest {
            md5: Md5::new(),
            newlines: 0,
            last: None,
            len: 0,
        }
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        // memchr's count is vectorised; a plain filter-count was 7 % of the emulator's CPU.
        self.newlines += memchr::memchr_iter(b'\n', bytes).count() as u64;
        if let Some(&last) = bytes.last() {
            self.last = Some(last);
        }
        self.len += bytes.len() as u64;
    }

    pub fn summary(self) -> ContentSummary {
        let unterminated = matches!(self.last, Some(last) if last != b'\n');
        ContentSummary {
            size: self.len,
            md5: hex::encode(self.md5.finalize()),
            lines: self.newlines + u64::from(unterminated),
        }
    }

    /// Reads a whole file (blocking: call from `spawn_blocking`).
    pub fn of_file(path: &Path) -> std::io::Result<ContentSummary> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut digest = Digest::default();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                return Ok(digest.summary());
            }
            digest.update(&buffer[..read]);
        }
    }
}

/// A table's record (`tables/<key>/table.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableRecord {
    pub reference: String,
    pub created_ms: u64,
    /// A file index table: it holds files registered with `rawFiles`, not uploads.
    #[serde(default)]
    pub is_file_index: bool,
}

/// A dataset's record (`datasets/<key>.json`): which versions exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRecord {
    /// `owner.dataset` as first written.
    pub reference: String,
    /// The unreleased version, when there is one.
    pub next: Option<VersionRecord>,
    /// Released versions, oldest first; the last one is the current version.
    pub released: Vec<VersionRecord>,
}

/// One version of a dataset; released versions are `v<number>.0`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    pub number: u32,
    pub created_ms: u64,
    pub released_ms: Option<u64>,
    pub release_notes: Option<String>,
}

/// A file of a file index table (`tables/<key>/rawfiles/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawFileRecord {
    pub id: String,
    /// Registration order across the emulator's life; list pages follow it.
    pub seq: u64,
    pub name: String,
    pub created_ms: u64,
    pub content: ContentSummary,
    /// The temp upload its bytes came from.
    pub source: String,
}

/// An upload's record (`tables/<key>/uploads/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    pub id: String,
    /// Creation order across the emulator's life; list pages follow it.
    pub seq: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_ms: u64,
    pub content: ContentSummary,
    /// Set when the upload is bound to fail (its `errorMessage` once processed).
    pub failure: Option<String>,
    /// The import is still checking the bytes against the parse options: the upload is
    /// not `completed` or `failed` before it ends.
    #[serde(default)]
    pub importing: bool,
    /// Rows the import found; `None`: not checked, rows are counted as text lines.
    #[serde(default)]
    pub rows: Option<u64>,
    /// Records the import skipped (`skipBadRecords`).
    #[serde(default)]
    pub bad_records: u64,
    /// The parse options as posted (hasHeaderRow, delimiter, ...), echoed on GET.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Which transfer its bytes came from, if any.
    pub source: Option<String>,
}

/// The upload type Redivis infers from a name's extension (protocol §10).
pub fn infer_type(name: &str) -> &'static str {
    let lower = name.to_lowercase();
    if lower.ends_with(".shp.zip") {
        return "shp.zip";
    }
    let extension = lower.rsplit_once('.').map(|(_, ext)| ext).unwrap_or("");
    match extension {
        "ndjson" | "jsonl" => "ndjson",
        "json" => "json",
        "avro" => "avro",
        "parquet" => "parquet",
        "orc" => "orc",
        "sas7bdat" => "sas7bdat",
        "dta" => "dta",
        "sav" => "sav",
        "xls" => "xls",
        "xlsx" => "xlsx",
        "geojson" => "geojson",
        "geojsonl" => "geojsonl",
        "kml" => "kml",
        "shp" => "shp",
        _ => "delimited",
    }
}

/// Writes JSON atomically (temporary file, then rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(|err| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {err}", path.display()),
        )
    })
}

/// The JSON files directly inside `dir` (none if it does not exist).
pub fn json_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_documented_example_and_collapses_collisions() {
        assert_eq!(
            escape_name("Census dataset: 1940-1980"),
            "census_dataset_1940_1980"
        );
        assert_eq!(escape_name("a.b.csv"), "a_b_csv");
        assert_eq!(escape_name("A-B.csv"), "a_b_csv");
        assert_eq!(escape_name("a_b_csv"), "a_b_csv");
        assert_eq!(escape_name("__x__"), "x");
    }

    #[test]
    fn stored_file_names_are_flat_and_distinct() {
        assert_eq!(file_component("dir/a.csv"), "dir%2Fa.csv");
        assert_eq!(file_component("100%.csv"), "100%25.csv");
        assert_ne!(file_component(".."), file_component("%2E%2E"));
        assert!(!file_component("..").contains('/'));
    }

    #[test]
    fn only_unreleased_tables_take_uploads() {
        assert!(check_table_ref("owner.ds:next.tbl", true).is_ok());
        assert!(check_table_ref("owner.ds:7br5:next.tbl:9x", true).is_ok());
        assert!(matches!(
            check_table_ref("owner.ds.tbl", true),
            Err(RefError::Released(_))
        ));
        assert!(matches!(
            check_table_ref("owner.ds:v1.0.tbl", true),
            Err(RefError::Released(_))
        ));
        assert!(check_table_ref("owner.ds:v1.0.tbl", false).is_ok());
        assert!(matches!(
            check_table_ref("nodots", true),
            Err(RefError::Malformed(_))
        ));
        assert!(matches!(
            check_table_ref("o.d:next.t/x", true),
            Err(RefError::Malformed(_))
        ));
    }

    #[test]
    fn references_name_their_dataset_and_version() {
        let next = TableRef::parse("Owner.DS:7br5:next.tbl:9x").expect("valid");
        assert_eq!(next.version, Version::Next);
        assert_eq!(next.dataset_key(), "owner.ds");
        assert_eq!(next.table_name(), "tbl");
        assert_eq!(next.key("next"), "owner.ds:7br5:next.tbl:9x");
        assert_eq!(next.key("v1_0"), "owner.ds:7br5:v1_0.tbl:9x");
        let current = TableRef::parse("owner.ds.tbl").expect("valid");
        assert_eq!(current.version, Version::Current);
        assert_eq!(current.with_version("v2_0"), "owner.ds:v2_0.tbl");
        let tagged = TableRef::parse("owner.ds:v1.0.tbl").expect("valid");
        assert_eq!(tagged.version, Version::Tag { major: 1, minor: 0 });
        assert_eq!(tagged.key("v1_0"), "owner.ds:v1_0.tbl");
        let dataset = TableRef::parse_dataset("owner.ds:next").expect("valid");
        assert!(dataset.has_version());
        assert_eq!(dataset.dataset_reference(), "owner.ds");
        assert!(TableRef::parse_dataset("owner").is_err());
    }

    #[test]
    fn digest_counts_lines_with_and_without_final_newline() {
        let mut digest = Digest::default();
        digest.update(b"a,b\n1,2\n3,4");
        let summary = digest.summary();
        assert_eq!(summary.lines, 3);
        assert_eq!(summary.size, 11);
        let text: Vec<u8> = (0..100_000u32)
            .map(|i| if i % 7 == 0 { b'\n' } else { b'x' })
            .collect();
        let mut split = Digest::default();
        for piece in text.chunks(333) {
            split.update(piece);
        }
        let expected = text.iter().filter(|&&byte| byte == b'\n').count() as u64 + 1;
        assert_eq!(split.summary().lines, expected);
        let mut empty = Digest::default();
        empty.update(b"");
        assert_eq!(empty.summary().md5, "d41d8cd98f00b204e9800998ecf8427e");
    }
}
