//! The Redivis settings of one folder: `create_next_version` and the
//! `[folder.redivis_options]` table of parse options, their checks, and their mapping to
//! the fields of upload.post (protocol §4.6 in `docs/protocols/redivis.md`).

use serde_json::{Map, Value};

/// Upload types Redivis documents for upload.post.
pub const UPLOAD_TYPES: [&str; 17] = [
    "delimited",
    "stream",
    "avro",
    "ndjson",
    "parquet",
    "orc",
    "xls",
    "xlsx",
    "dta",
    "sas7bdat",
    "sav",
    "geojson",
    "geojsonl",
    "json",
    "shp",
    "shp.zip",
    "kml",
];

/// A Redivis folder's settings beyond its table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedivisFolder {
    /// Create the dataset's next version when it has none (instead of waiting for one).
    pub create_next_version: bool,
    pub parse: ParseOptions,
}

/// How Redivis reads the folder's files; `None` leaves a field to Redivis' default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// `type`: one of [`UPLOAD_TYPES`]; unset, Redivis infers it from the name.
    pub kind: Option<String>,
    pub delimiter: Option<char>,
    pub has_header_row: Option<bool>,
    pub skip_bad_records: Option<bool>,
    pub has_quoted_newlines: Option<bool>,
    pub allow_jagged_rows: Option<bool>,
    pub quote_character: Option<char>,
    pub escape_character: Option<char>,
    pub null_markers: Option<Vec<String>>,
}

impl ParseOptions {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        *self == ParseOptions::default()
    }

    /// The options as upload.post fields (`hasHeaderRow`, ...); unset ones are left out.
    pub fn api_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                fields.insert(name.to_string(), value);
            }
        };
        let text = |c: Option<char>| c.map(|c| Value::String(c.to_string()));
        put("type", self.kind.clone().map(Value::String));
        put("delimiter", text(self.delimiter));
        put("hasHeaderRow", self.has_header_row.map(Value::Bool));
        put("skipBadRecords", self.skip_bad_records.map(Value::Bool));
        put(
            "hasQuotedNewlines",
            self.has_quoted_newlines.map(Value::Bool),
        );
        put("allowJaggedRows", self.allow_jagged_rows.map(Value::Bool));
        put("quoteCharacter", text(self.quote_character));
        put("escapeCharacter", text(self.escape_character));
        put(
            "nullMarkers",
            self.null_markers
                .as_ref()
                .map(|markers| markers.iter().cloned().map(Value::String).collect()),
        );
        fields
    }

    /// A short description for `upsync check` (`delimiter '\t', no header row`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = &self.kind {
            parts.push(format!("type {kind}"));
        }
        if let Some(delimiter) = self.delimiter {
            parts.push(format!("delimiter {delimiter:?}"));
        }
        let flags = [
            (self.has_header_row, "header row"),
            (self.skip_bad_records, "skip bad records"),
            (self.has_quoted_newlines, "quoted newlines"),
            (self.allow_jagged_rows, "jagged rows"),
        ];
        for (flag, what) in flags {
            match flag {
                Some(true) => parts.push(what.to_string()),
                Some(false) => parts.push(format!("no {what}")),
                None => {}
            }
        }
        if let Some(quote) = self.quote_character {
            parts.push(format!("quote {quote:?}"));
        }
        if let Some(escape) = self.escape_character {
            parts.push(format!("escape {escape:?}"));
        }
        if let Some(markers) = &self.null_markers {
            parts.push(format!("null markers {markers:?}"));
        }
        parts.join(", ")
    }

    /// Keys set that only mean something for delimited files.
    pub fn delimited_only_keys(&self) -> Vec<&'static str> {
        let given = [
            ("delimiter", self.delimiter.is_some()),
            ("quote_character", self.quote_character.is_some()),
            ("escape_character", self.escape_character.is_some()),
            ("has_quoted_newlines", self.has_quoted_newlines.is_some()),
            ("allow_jagged_rows", self.allow_jagged_rows.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| key)
            .collect()
    }
}

/// Checks a `type` value against the documented list.
pub fn check_type(value: &str) -> Result<String, String> {
    if UPLOAD_TYPES.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "expected one of {}, found \"{value}\" (leave the key out to let Redivis infer \
             the type from each file's extension)",
            UPLOAD_TYPES
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Checks that a delimiter, quote or escape is one character other than a line break.
pub fn check_character(value: &str) -> Result<char, String> {
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c != '\n' && c != '\r' => Ok(c),
        (Some('\n' | '\r'), None) => {
            Err("expected one character, found a line break (rows end at line breaks)".to_string())
        }
        _ => Err(format!(
            "expected exactly one character, like \",\" or \"\\t\", found \"{}\" ({} \
             characters)",
            value.escape_default(),
            value.chars().count()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_the_api_fields_and_leave_unset_ones_out() {
        let options = ParseOptions {
            kind: Some("delimited".into()),
            delimiter: Some('\t'),
            has_header_row: Some(false),
            null_markers: Some(vec!["NA".into()]),
            ..ParseOptions::default()
        };
        let fields = options.api_fields();
        assert_eq!(
            Value::Object(fields),
            serde_json::json!({"type": "delimited", "delimiter": "\t", "hasHeaderRow": false,
                               "nullMarkers": ["NA"]})
        );
        assert!(ParseOptions::default().api_fields().is_empty());
        assert_eq!(
            options.describe(),
            "type delimited, delimiter '\\t', no header row, null markers [\"NA\"]"
        );
    }

    #[test]
    fn characters_must_be_single_and_not_line_breaks() {
        assert_eq!(check_character(";"), Ok(';'));
        assert_eq!(check_character("\t"), Ok('\t'));
        assert!(check_character("||").unwrap_err().contains("2 characters"));
        assert!(check_character("").is_err());
        assert!(check_character("\n").unwrap_err().contains("line break"));
        assert!(check_type("csv").unwrap_err().contains("\"delimited\""));
        assert_eq!(check_type("parquet"), Ok("parquet".into()));
    }
}
