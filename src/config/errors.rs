//! Turns parse and validation failures into messages that name the file, the line and the key.
//!
//! The TOML deserializer reports a byte span and a serde message ("invalid type: string
//! \"x\", expected i64"). The span is mapped to a line, and to a key path by walking the
//! spanned document (`DeTable`), because serde itself does not know where in the file it is.
//! The serde wording is then rephrased for people who write config files, not Rust types,
//! and for a secret key (`token`, `password`) without the value found.
//!
//! serde stops at the first key it refuses; [`Source::deserialize`] blanks that key out (or
//! writes a stand-in for a missing one) and tries again, so that one run names every key of
//! the wrong type or unit and every missing one.

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::ConfigError;

/// One step of a key path: a table key or a position in an array (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a key path the way messages show it: `folder[1].settle`.
pub(crate) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// The text of one config file and its name, for building located messages.
pub(crate) struct Source<'a> {
    pub name: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line number of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// `file:line: key 'path': what` — the shape of every message about one key.
    pub fn key_error(&self, span: &Range<usize>, key: &str, what: impl AsRef<str>) -> String {
        format!(
            "{}:{}: key '{}': {}",
            self.name.display(),
            self.line_of(span.start),
            key,
            what.as_ref()
        )
    }

    /// `file:line: what` — for messages that are not about a single key.
    pub fn line_error(&self, span: &Range<usize>, what: impl AsRef<str>) -> String {
        format!(
            "{}:{}: {}",
            self.name.display(),
            self.line_of(span.start),
            what.as_ref()
        )
    }

    /// Deserializes the file into `T`, or names every key serde refuses, in file order.
    ///
    /// serde stops at the first key it refuses, so the text is deserialized again and
    /// again, each time without the refusal before it:
    ///
    /// 1. A key of the wrong type or unit: its `key = value` is blanked out (its line
    ///    breaks kept, so spans and line numbers stay true), a dotted key from its first
    ///    part, a refused table with all its keys. The only key of a table written by
    ///    dotted keys leaves that table empty (`kifs.username = 7` becomes `kifs={}`), so
    ///    that the table's missing keys are listed too.
    /// 2. A missing required key: a stand-in `key = "…"` is written into its table (the
    ///    offsets after it are mapped back to the file's), so that the tables serde reads
    ///    after that one are read too.
    ///
    /// It stops when nothing is refused any more, or at an error no step can get past (a
    /// stand-in refused, or a table it cannot be written into).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let mut listing = Listing {
            text: self.text.to_string(),
            stand_ins: Vec::new(),
            stood_in: Vec::new(),
            found: Vec::new(),
            blanked: Vec::new(),
        };
        loop {
            // The document borrows the text that this round's step changes.
            let text = listing.text.clone();
            let doc = match DeTable::parse(&text) {
                Ok(doc) => doc,
                Err(e) if listing.found.is_empty() => return Err(self.toml_error(&e, None)),
                Err(_) => break,
            };
            let err = match toml::from_str::<T>(&text) {
                Ok(value) if listing.found.is_empty() => return Ok(value),
                Ok(_) => break,
                Err(err) => err,
            };
            if !listing.step_past(self, &doc, &err) {
                break;
            }
        }
        listing.found.sort_by_key(|(start, _)| *start);
        let messages: Vec<String> = listing.found.into_iter().map(|(_, m)| m).collect();
        Err(ConfigError(messages.join("\n")))
    }

    /// Rephrases a TOML syntax or deserialization error, locating it in `doc` when the
    /// document parsed.
    pub fn toml_error(
        &self,
        err: &toml::de::Error,
        doc: Option<&Spanned<DeTable<'_>>>,
    ) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let message = err.message().trim();
        // An empty span is serde's "somewhere in the document" (e.g. a missing top-level key).
        let path = doc
            .filter(|_| !span.is_empty())
            .and_then(|doc| locate(doc, &span))
            .unwrap_or_default();
        ConfigError(self.describe(&span, &path, message, doc.is_some()))
    }

    fn describe(&self, span: &Range<usize>, path: &[Seg], message: &str, parsed: bool) -> String {
        if !parsed {
            return self.line_error(span, format!("invalid TOML: {message}"));
        }
        if let Some(rest) = message.strip_prefix("unknown field ") {
            let (name, rest) = first_ticked(rest);
            let expected = ticked_names(rest);
            // The span is the unknown key itself, so the table is the path minus its last step.
            let table = match path.split_last() {
                Some((Seg::Key(_), parent)) => parent,
                _ => path,
            };
            let mut text = format!("unknown key '{}' in {}", name, table_name(table));
            if expected.is_empty() {
                text.push_str(" (this table takes no keys)");
            } else {
                if let Some(close) = closest(&name, &expected) {
                    text.push_str(&format!("; did you mean '{close}'?"));
                }
                text.push_str(&format!(" (expected one of: {})", expected.join(", ")));
            }
            return self.line_error(span, text);
        }
        if let Some(rest) = message.strip_prefix("missing field ") {
            let (name, _) = first_ticked(rest);
            let mut full = path.to_vec();
            full.push(Seg::Key(name.clone()));
            return self.line_error(
                span,
                format!("missing required key '{}'", render_path(&full)),
            );
        }
        let key = if path.is_empty() {
            "(top level)".to_string()
        } else {
            render_path(path)
        };
        let mut text = rephrase(message);
        if holds_secret(path) {
            text = hide_found_value(&text);
        }
        self.key_error(span, &key, text)
    }
}

/// What [`Source::deserialize`] has found so far, and the text it deserializes next.
struct Listing {
    /// The file's text with the refused keys blanked out and stand-ins written in.
    text: String,
    /// Where the stand-ins lie in `text`.
    stand_ins: Vec<Range<usize>>,
    /// The missing keys written in as stand-ins.
    stood_in: Vec<Vec<Seg>>,
    /// Each refusal: its offset in the file, and its message.
    found: Vec<(usize, String)>,
    /// The keys blanked out.
    blanked: Vec<Vec<Seg>>,
}

/// What a stand-in for a missing key holds: a string every required key takes (a path or
/// URL takes any; `listen` takes an address).
const STAND_IN: &str = "\"127.0.0.1:1\"";

impl Listing {
    /// Records `err` and changes the text so that the next round gets past it; false when
    /// it cannot.
    fn step_past(
        &mut self,
        src: &Source<'_>,
        doc: &Spanned<DeTable<'_>>,
        err: &toml::de::Error,
    ) -> bool {
        let span = err.span().unwrap_or(0..0);
        if self.stand_ins.iter().any(|s| contains(s, &span)) {
            // A stand-in was refused: what it stands for is already reported. (An inline
            // table missing another key spans the stand-ins written into it.)
            return false;
        }
        let in_file = self.file_span(&span);
        // As in `Source::toml_error`: an empty span is the top level.
        let path = (!span.is_empty())
            .then(|| locate(doc, &span))
            .flatten()
            .unwrap_or_default();
        let message = err.message().trim();
        let text = src.describe(&in_file, &path, message, true);
        if let Some(missing) = missing_key(&path, message) {
            // A required key blanked out here was refused for its value already.
            if !self.blanked.contains(&missing) {
                self.found.push((in_file.start, text));
            }
            return self.write_stand_in(&span, missing);
        }
        self.found.push((in_file.start, text));
        self.blank_refused(doc, &span, path)
    }

    /// Step 1: blanks out the entry refused at `span`; false when there is none, or
    /// nothing left of it to blank (the same refusal would come back for good).
    fn blank_refused(
        &mut self,
        doc: &Spanned<DeTable<'_>>,
        span: &Range<usize>,
        path: Vec<Seg>,
    ) -> bool {
        // An empty span points at no entry (serde's "somewhere in the document").
        let entry = (!span.is_empty())
            .then(|| blankable_entry(doc.get_ref(), span))
            .flatten();
        let Some(entry) = entry else {
            return false;
        };
        self.blanked.push(path);
        let before = self.text.clone();
        for (i, part) in entry.spans.iter().enumerate() {
            let from = dotted_start(&self.text, part.start);
            if i == 0 && entry.only_key && from < part.start {
                // Its table is written by dotted keys alone: blanked whole, the table would
                // be gone, and with it the report of the table's missing keys.
                keep_empty_table(&mut self.text, from..part.end, part.start);
            } else {
                blank(&mut self.text, from..part.end);
            }
        }
        self.text != before
    }

    /// Step 2: writes a stand-in for `missing` at the top of its table, whose span is
    /// `table` (empty for the top level): after its `[header]` line, after the `{` of an
    /// inline table, or as a dotted key before the first one of a table written by dotted
    /// keys. False for a key stood in for already.
    fn write_stand_in(&mut self, table: &Range<usize>, missing: Vec<Seg>) -> bool {
        let Some(Seg::Key(name)) = missing.last() else {
            return false;
        };
        if self.stood_in.contains(&missing) {
            return false;
        }
        // The schema's field names are bare keys: no quoting needed.
        let entry = format!("{name} = {STAND_IN}");
        let (at, insert) = if table.is_empty() {
            (0, format!("{entry}\n"))
        } else if self.text[table.start..].starts_with('[') {
            match self.text[table.end..].find('\n') {
                Some(n) => (table.end + n + 1, format!("{entry}\n")),
                None => (self.text.len(), format!("\n{entry}\n")),
            }
        } else if self.text[table.start..].starts_with('{') {
            let inside =
                &self.text[table.start + 1..table.end.saturating_sub(1).max(table.start + 1)];
            let comma = if inside.trim().is_empty() { "" } else { "," };
            (table.start + 1, format!(" {entry}{comma} "))
        } else {
            // A table written by dotted keys alone spans its name in the first of them
            // (`kifs` of `kifs.username = "u"`): a dotted key of its own goes before it.
            let from = dotted_start(&self.text, table.start);
            let prefix = &self.text[from..table.end];
            (from, format!("{prefix}.{entry}\n"))
        };
        self.text.insert_str(at, &insert);
        let shift = insert.len();
        for s in &mut self.stand_ins {
            if s.start >= at {
                *s = s.start + shift..s.end + shift;
            }
        }
        self.stand_ins.push(at..at + shift);
        self.stood_in.push(missing);
        true
    }

    /// `span` of the text as changed, in offsets of the file.
    fn file_span(&self, span: &Range<usize>) -> Range<usize> {
        self.file_offset(span.start)..self.file_offset(span.end)
    }

    fn file_offset(&self, at: usize) -> usize {
        let written: usize = self
            .stand_ins
            .iter()
            .map(|s| at.min(s.end).saturating_sub(s.start))
            .sum();
        at - written
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && !inner.is_empty()
}

/// The path of the key a "missing field" error is about, in the table at `table`.
fn missing_key(table: &[Seg], message: &str) -> Option<Vec<Seg>> {
    let rest = message.trim().strip_prefix("missing field ")?;
    let mut path = table.to_vec();
    path.push(Seg::Key(first_ticked(rest).0));
    Some(path)
}

/// Where the dotted key whose last part starts at `at` starts: `kifs.url = 5` is blanked
/// from `kifs`, as a dangling `kifs.` would leave the text invalid TOML.
fn dotted_start(text: &str, at: usize) -> usize {
    let bytes = text.as_bytes();
    let skip_blanks = |mut i: usize| {
        while i > 0 && matches!(bytes[i - 1], b' ' | b'\t') {
            i -= 1;
        }
        i
    };
    let mut start = at;
    loop {
        let dot = skip_blanks(start);
        if dot == 0 || bytes[dot - 1] != b'.' {
            return start;
        }
        let end = skip_blanks(dot - 1);
        let part = match bytes[..end].last() {
            Some(&quote @ (b'"' | b'\'')) => bytes[..end - 1].iter().rposition(|&b| b == quote),
            _ => Some(
                bytes[..end]
                    .iter()
                    .rposition(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
                    .map_or(0, |i| i + 1),
            ),
        };
        match part {
            Some(part) if part < end => start = part,
            _ => return start,
        }
    }
}

/// An entry of the document that [`Listing::blank_refused`] blanks out.
struct BlankableEntry {
    /// Its `key = value` first, then for a table everything under it, whose keys may follow
    /// its `[header]` outside its span and would otherwise fall to the table above.
    spans: Vec<Range<usize>>,
    /// It is the only key of its table.
    only_key: bool,
}

/// The narrowest entry whose key or value covers `target`.
fn blankable_entry(table: &DeTable<'_>, target: &Range<usize>) -> Option<BlankableEntry> {
    let covers = |span: Range<usize>| span.start <= target.start && target.end <= span.end;
    for (key, value) in table.iter() {
        // `[[folder]]` tables span only their header, so every table is searched.
        let inner = match value.get_ref() {
            DeValue::Table(t) => blankable_entry(t, target),
            DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                DeValue::Table(t) => blankable_entry(t, target),
                _ => None,
            }),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
        if covers(key.span()) || covers(value.span()) {
            let mut spans = vec![entry_span(key, value)];
            push_nested(value, &mut spans);
            return Some(BlankableEntry {
                spans,
                only_key: table.len() == 1,
            });
        }
    }
    None
}

/// From the key (or a header's opening bracket) to the end of the value.
fn entry_span(key: &Spanned<DeString<'_>>, value: &Spanned<DeValue<'_>>) -> Range<usize> {
    key.span().start.min(value.span().start)..key.span().end.max(value.span().end)
}

/// Every entry and array item under `value`.
fn push_nested(value: &Spanned<DeValue<'_>>, spans: &mut Vec<Range<usize>>) {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, value) in table.iter() {
                spans.push(entry_span(key, value));
                push_nested(value, spans);
            }
        }
        DeValue::Array(items) => {
            for item in items {
                spans.push(item.span());
                push_nested(item, spans);
            }
        }
        _ => {}
    }
}

/// Overwrites `range` of `text` with spaces, and the comma right after it that would be
/// left without an entry in an inline table, keeping line breaks and every byte offset.
fn blank(text: &mut String, range: Range<usize>) {
    let rest = &text[range.end..];
    let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let end = if rest[spaces..].starts_with(',') {
        range.end + spaces + 1
    } else {
        range.end
    };
    write_over(text, range.start..end, "");
}

/// Overwrites the dotted key `range` (`kifs.username = 7`, its last part at `last_part`) with
/// the empty table that holds it (`kifs={}`), keeping line breaks, every byte offset, and a
/// comma after it in an inline table, as the entry is still there.
fn keep_empty_table(text: &mut String, range: Range<usize>, last_part: usize) {
    let table = text[range.start..last_part].trim_end();
    let table = table.strip_suffix('.').unwrap_or(table).trim_end();
    // The key's last part and the `.` and `=` around it are at least as long as `={}`, so
    // the empty table fits before any line break of a value written over several lines.
    write_over(text, range, &format!("{table}={{}}"));
}

/// Overwrites `range` of `text` with `with` followed by spaces, keeping its line breaks.
fn write_over(text: &mut String, range: Range<usize>, with: &str) {
    let mut bytes = std::mem::take(text).into_bytes();
    for b in &mut bytes[range.clone()] {
        if !matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    bytes[range.start..range.start + with.len()].copy_from_slice(with.as_bytes());
    // Whole characters were replaced, each byte by an ASCII one.
    *text = String::from_utf8(bytes).expect("spans lie on character boundaries");
}

/// Keys whose value is a secret even when written with the wrong type (`password = 98765432`).
const SECRET_KEYS: &[&str] = &["token", "password"];

fn holds_secret(path: &[Seg]) -> bool {
    matches!(path.last(), Some(Seg::Key(k)) if SECRET_KEYS.contains(&k.as_str()))
}

/// "expected a string, found integer 98765432" → "… found an integer (not shown: the key
/// holds a secret)": what was found, without the value.
fn hide_found_value(text: &str) -> String {
    let Some((expected, found)) = text.split_once(", found ") else {
        return "expected a string (the value is not shown: the key holds a secret)".to_string();
    };
    // serde names the kind first and the value after it ("floating point 1.5").
    let kinds = [
        ("integer", "an integer"),
        ("floating point", "a float"),
        ("boolean", "a boolean"),
        ("sequence", "an array"),
        ("an array", "an array"),
        ("map", "a table"),
        ("a table", "a table"),
        ("string", "a string"),
    ];
    let kind = kinds
        .iter()
        .find(|(serde, _)| found.starts_with(serde))
        .map_or("another type", |(_, words)| words);
    format!("{expected}, found {kind} (the value is not shown: the key holds a secret)")
}

/// Finds the key path whose key or value span best covers `span`.
///
/// Table spans of `[[array]]` elements cover only their header, so every node is visited
/// and the narrowest match wins; on a tie the deeper one does.
pub(crate) fn locate(doc: &Spanned<DeTable<'_>>, span: &Range<usize>) -> Option<Vec<Seg>> {
    let mut best: Option<(usize, usize, Vec<Seg>)> = None;
    let mut path = Vec::new();
    walk_table(doc.get_ref(), span, &mut path, &mut best);
    best.map(|(_, _, p)| p)
}

fn consider(
    node: &Range<usize>,
    target: &Range<usize>,
    path: &[Seg],
    best: &mut Option<(usize, usize, Vec<Seg>)>,
) {
    let covers = node.start <= target.start && target.end <= node.end;
    if !covers {
        return;
    }
    let width = node.end - node.start;
    let better = match best {
        None => true,
        Some((w, depth, _)) => width < *w || (width == *w && path.len() >= *depth),
    };
    if better {
        *best = Some((width, path.len(), path.to_vec()));
    }
}

fn walk_table(
    table: &DeTable<'_>,
    target: &Range<usize>,
    path: &mut Vec<Seg>,
    best: &mut Option<(usize, usize, Vec<Seg>)>,
) {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        consider(&key.span(), target, path, best);
        walk_value(value, target, path, best);
        path.pop();
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    target: &Range<usize>,
    path: &mut Vec<Seg>,
    best: &mut Option<(usize, usize, Vec<Seg>)>,
) {
    consider(&value.span(), target, path, best);
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, target, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                walk_value(item, target, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// How messages name a table: "the top level", `[redivis]`, `folder[1]`.
pub(crate) fn table_name(path: &[Seg]) -> String {
    match path {
        [] => "the top level".to_string(),
        [Seg::Key(k)] => format!("[{k}]"),
        _ => render_path(path),
    }
}

/// Splits "`name`, rest" into the first back-ticked word and what follows it.
fn first_ticked(s: &str) -> (String, &str) {
    let Some(start) = s.find('`') else {
        return (s.to_string(), "");
    };
    let after = &s[start + 1..];
    match after.find('`') {
        Some(end) => (after[..end].to_string(), &after[end + 1..]),
        None => (after.to_string(), ""),
    }
}

/// Every back-ticked word in `s`, in order.
fn ticked_names(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// Rewrites serde's "invalid type: X, expected Y" in config-file words.
fn rephrase(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found.replace('`', "")
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (found, rest) = first_ticked(rest);
        let expected: Vec<String> = ticked_names(rest)
            .into_iter()
            .map(|v| format!("\"{v}\""))
            .collect();
        return format!(
            "expected one of {}, found \"{}\"",
            expected.join(", "),
            found
        );
    }
    message.to_string()
}

fn expected_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "an integer".to_string()
        }
        "a sequence" => "an array".to_string(),
        "a map" => "a table".to_string(),
        other if other.starts_with("struct ") => "a table".to_string(),
        other if other.starts_with("enum ") => "a string".to_string(),
        other => other.to_string(),
    }
}

/// The known key nearest to a misspelt one, when it is close enough to be a likely typo.
fn closest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

// A two-row Levenshtein distance; a crate for ten lines of "did you mean" is not worth it.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_from_one() {
        let src = Source {
            name: Path::new("c.toml"),
            text: "a = 1\nb = 2\n",
        };
        assert_eq!(src.line_of(0), 1);
        assert_eq!(src.line_of(6), 2);
        assert_eq!(src.line_of(100), 3);
    }

    #[test]
    fn paths_render_with_dots_and_indexes() {
        let path = vec![
            Seg::Key("folder".into()),
            Seg::Index(1),
            Seg::Key("settle".into()),
        ];
        assert_eq!(render_path(&path), "folder[1].settle");
    }

    #[test]
    fn serde_type_errors_are_rephrased() {
        assert_eq!(
            rephrase("invalid type: string \"x\", expected i64"),
            "expected an integer, found string \"x\""
        );
        assert_eq!(
            rephrase("invalid type: integer `3`, expected a sequence"),
            "expected an array, found integer 3"
        );
        assert_eq!(
            rephrase("unknown variant `avro`, expected `binary` or `json`"),
            "expected one of \"binary\", \"json\", found \"avro\""
        );
    }

    #[test]
    fn a_near_miss_suggests_the_known_key() {
        let known = vec!["state_dir".to_string(), "concurrency".to_string()];
        assert_eq!(
            closest("concurency", &known).as_deref(),
            Some("concurrency")
        );
        assert_eq!(closest("colour", &known), None);
    }

    #[test]
    fn locate_finds_keys_inside_array_of_tables() {
        let text = "a = 1\n[[folder]]\npath = 'x'\n[[folder]]\npath = 'y'\nsettle = 5\n";
        let doc = DeTable::parse(text).expect("the sample is valid TOML");
        let start = text.find("5\n").expect("the sample contains the value 5");
        let path = locate(&doc, &(start..start + 1)).expect("the value lies in the document");
        assert_eq!(render_path(&path), "folder[1].settle");
    }
}
