//! Parse options of an upload (`type`, `delimiter`, `hasHeaderRow`, ...) and the import's
//! check of the bytes against them.
//!
//! Two kinds of trouble, answered as Redivis does (see `docs/protocols/redivis.md`):
//! - an option of the wrong JSON type, or a `type` outside the documented list, is a bad
//!   request: upload.post answers 400 and creates nothing ([`check_shape`]);
//! - an option whose value cannot work (a delimiter of two characters) or data that does
//!   not parse under the options only shows when the import runs: the upload is created,
//!   then ends `failed` with an `errorMessage` ([`import_options`], [`check_delimited`]).
//!
//! The bytes are read only when the upload names a delimited option ([`names_options`]):
//! without any, Redivis detects the format, which the emulator does not try to imitate.
//!
//! The data check of a delimited upload, in steps:
//! 1. The delimiter is the given one, or the most frequent of `,` `\t` `;` `|` on the first
//!    line (Redivis detects it too); the quote is `"` unless given; an escape character
//!    replaces quote doubling when given.
//! 2. The first record sets the number of columns; with `hasHeaderRow` (the default) it is
//!    the header and not a row.
//! 3. Every later record is a row, or a bad record when it has more values than columns,
//!    fewer without `allowJaggedRows`, or a newline inside quotes when `hasQuotedNewlines`
//!    is `false` (unset means "detect", and accepts them).
//! 4. A bad record fails the import, naming its line, unless `skipBadRecords`: then it is
//!    counted in `badRecordsCount` and left out of `numRows`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::UPLOAD_TYPES as TYPES;

const BOOLEANS: [&str; 4] = [
    "hasHeaderRow",
    "skipBadRecords",
    "hasQuotedNewlines",
    "allowJaggedRows",
];
const CHARACTERS: [&str; 3] = ["delimiter", "quoteCharacter", "escapeCharacter"];

/// Rejects options upload.post cannot take at all: the message says which and why.
pub fn check_shape(metadata: &Map<String, Value>) -> Result<(), String> {
    match metadata.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if TYPES.contains(&kind.as_str()) => {}
        Some(other) => {
            return Err(format!(
                "type {other} is not an upload type; expected null (inferred from the name) \
                 or one of: {}",
                TYPES.join(", ")
            ));
        }
    }
    for field in BOOLEANS {
        if let Some(value) = metadata
            .get(field)
            .filter(|v| !v.is_null() && !v.is_boolean())
        {
            return Err(format!("{field} must be true, false or null, not {value}"));
        }
    }
    for field in CHARACTERS {
        if let Some(value) = metadata
            .get(field)
            .filter(|v| !v.is_null() && !v.is_string())
        {
            return Err(format!("{field} must be a string or null, not {value}"));
        }
    }
    match metadata.get("nullMarkers") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(markers)) if markers.iter().all(Value::is_string) => Ok(()),
        Some(other) => Err(format!(
            "nullMarkers must be an array of strings or null, not {other}"
        )),
    }
}

/// Whether `options` (as posted, nulls left out) name any delimited parse option: only then
/// does the import read the bytes.
pub fn names_options(options: &Map<String, Value>) -> bool {
    BOOLEANS
        .iter()
        .chain(&CHARACTERS)
        .chain(&["nullMarkers"])
        .any(|field| options.get(*field).is_some_and(|value| !value.is_null()))
}

/// How the import reads a delimited file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelimitedOptions {
    /// `None`: detected from the first line.
    pub delimiter: Option<u8>,
    pub quote: u8,
    pub escape: Option<u8>,
    pub header_row: bool,
    pub skip_bad_records: bool,
    /// `None`: detected, so accepted.
    pub quoted_newlines: Option<bool>,
    pub jagged_rows: bool,
}

/// The options of a delimited upload, or the `errorMessage` of an import that cannot run
/// with them (a delimiter, quote or escape that is not one character).
pub fn import_options(options: &Map<String, Value>) -> Result<DelimitedOptions, String> {
    let flag = |field: &str| options.get(field).and_then(Value::as_bool);
    let character = |field: &str| -> Result<Option<u8>, String> {
        let Some(text) = options.get(field).and_then(Value::as_str) else {
            return Ok(None);
        };
        match text.as_bytes() {
            [byte] if byte.is_ascii() => Ok(Some(*byte)),
            _ => Err(format!(
                "Invalid {field} {text:?}: it must be exactly one (ASCII) character, \
                 for example \",\" or \"\\t\"."
            )),
        }
    };
    Ok(DelimitedOptions {
        delimiter: character("delimiter")?,
        quote: character("quoteCharacter")?.unwrap_or(b'"'),
        escape: character("escapeCharacter")?,
        header_row: flag("hasHeaderRow").unwrap_or(true),
        skip_bad_records: flag("skipBadRecords").unwrap_or(false),
        quoted_newlines: flag("hasQuotedNewlines"),
        jagged_rows: flag("allowJaggedRows").unwrap_or(false),
    })
}

/// What the import found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportVerdict {
    pub rows: u64,
    pub bad_records: u64,
    /// The `errorMessage` of a failed import.
    pub error: Option<String>,
}

/// Checks a delimited file against its options (module doc, steps 1–4). Blocking.
pub fn check_delimited(path: &Path, options: &DelimitedOptions) -> std::io::Result<ImportVerdict> {
    let delimiter = match options.delimiter {
        Some(delimiter) => delimiter,
        None => detect_delimiter(path)?,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .quote(options.quote)
        .escape(options.escape)
        .double_quote(options.escape.is_none())
        .from_path(path)
        .map_err(std::io::Error::other)?;
    let mut verdict = ImportVerdict {
        rows: 0,
        bad_records: 0,
        error: None,
    };
    let mut columns = None;
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        let problem = match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(verdict),
            Ok(true) => match columns {
                None => {
                    columns = Some(record.len());
                    if options.header_row {
                        continue;
                    }
                    None
                }
                Some(columns) => bad_record(&record, columns, options),
            },
            Err(err) => match err.kind() {
                csv::ErrorKind::Io(_) => return Err(std::io::Error::other(err)),
                _ => Some(err.to_string()),
            },
        };
        match problem {
            None => verdict.rows += 1,
            Some(_) if options.skip_bad_records => verdict.bad_records += 1,
            Some(why) => {
                verdict.error = Some(format!(
                    "Import failed: line {line}: {why} (delimiter {:?}). Fix the file, or set \
                     skipBadRecords to skip such records.",
                    char::from(delimiter)
                ));
                return Ok(verdict);
            }
        }
    }
}

/// Why a record (after the first) is bad, if it is.
fn bad_record(
    record: &csv::ByteRecord,
    columns: usize,
    options: &DelimitedOptions,
) -> Option<String> {
    let values = record.len();
    if values > columns || (values < columns && !options.jagged_rows) {
        return Some(format!(
            "the record has {values} values, expected {columns}"
        ));
    }
    let quoted_newline = record.iter().any(|field| field.contains(&b'\n'));
    if quoted_newline && options.quoted_newlines == Some(false) {
        return Some("a quoted value spans lines, but hasQuotedNewlines is false".to_string());
    }
    None
}

/// The most frequent of `,` `\t` `;` `|` on the first line (`,` when none occurs).
fn detect_delimiter(path: &Path) -> std::io::Result<u8> {
    use std::io::{BufRead, Read};
    let mut first = Vec::new();
    std::io::BufReader::new(std::fs::File::open(path)?.take(64 * 1024))
        .read_until(b'\n', &mut first)?;
    let candidates = [b',', b'\t', b';', b'|'];
    let count = |wanted: u8| first.iter().filter(|&&byte| byte == wanted).count();
    Ok(candidates
        .into_iter()
        .max_by_key(|&candidate| (count(candidate), candidate == b','))
        .filter(|&candidate| count(candidate) > 0)
        .unwrap_or(b','))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn check(text: &str, given: Value) -> ImportVerdict {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("data.csv");
        std::fs::write(&path, text).expect("the file is written");
        let options = import_options(&options(given)).expect("options that can run");
        check_delimited(&path, &options).expect("the file is readable")
    }

    #[test]
    fn shapes_outside_the_documented_ones_are_refused() {
        assert!(check_shape(&options(json!({"type": null, "delimiter": ";"}))).is_ok());
        assert!(check_shape(&options(json!({"type": "parquet"}))).is_ok());
        let err = check_shape(&options(json!({"type": "csv"}))).expect_err("not a type");
        assert!(err.contains("delimited"), "{err}");
        assert!(check_shape(&options(json!({"hasHeaderRow": "yes"}))).is_err());
        assert!(check_shape(&options(json!({"delimiter": 9}))).is_err());
        assert!(check_shape(&options(json!({"nullMarkers": ["NA", 1]}))).is_err());
        assert!(check_shape(&options(json!({"nullMarkers": ["NA", ""]}))).is_ok());
    }

    #[test]
    fn a_delimiter_of_two_characters_cannot_run() {
        let err = import_options(&options(json!({"delimiter": "||"}))).expect_err("two");
        assert!(err.starts_with("Invalid delimiter \"||\""), "{err}");
        assert!(import_options(&options(json!({"quoteCharacter": ""}))).is_err());
        let tab = import_options(&options(json!({"delimiter": "\t"}))).expect("one");
        assert_eq!(tab.delimiter, Some(b'\t'));
    }

    #[test]
    fn rows_follow_the_header_and_the_detected_delimiter() {
        let verdict = check("a;b\n1;2\n3;4\n", json!({}));
        assert_eq!((verdict.rows, verdict.bad_records), (2, 0));
        assert_eq!(verdict.error, None);
        let headerless = check("1\t2\n3\t4\n", json!({"hasHeaderRow": false}));
        assert_eq!(headerless.rows, 2);
    }

    #[test]
    fn a_bad_record_fails_the_import_unless_skipped() {
        let failed = check("a,b\n1,2\n3,4,5\n6,7\n", json!({}));
        let message = failed.error.expect("the import fails");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("3 values, expected 2"), "{message}");
        let skipped = check("a,b\n1,2\n3,4,5\n6\n", json!({"skipBadRecords": true}));
        assert_eq!((skipped.rows, skipped.bad_records), (1, 2));
        assert_eq!(skipped.error, None);
        let jagged = check("a,b\n1,2\n6\n", json!({"allowJaggedRows": true}));
        assert_eq!((jagged.rows, jagged.error), (2, None));
    }

    #[test]
    fn quoted_newlines_fail_only_when_declared_absent() {
        let text = "a,b\n\"x\ny\",2\n";
        assert_eq!(check(text, json!({})).rows, 1);
        let refused = check(text, json!({"hasQuotedNewlines": false}));
        assert!(refused.error.expect("fails").contains("hasQuotedNewlines"));
        let quoted = check(
            "a|b\n'x|y'|2\n",
            json!({"delimiter": "|", "quoteCharacter": "'"}),
        );
        assert_eq!((quoted.rows, quoted.error), (1, None));
    }
}
