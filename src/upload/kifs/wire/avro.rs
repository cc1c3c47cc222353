//! Avro binary and Avro-JSON primitives for the KiFS records: zig-zag varint longs,
//! strings, bytes, arrays (including negative block counts on read) and `map<string>`.
//!
//! Written by hand rather than with an Avro crate because the KiFS schemas use five field
//! shapes only, and the writer must hand large `bytes` values back as separate [`Bytes`]
//! segments (no copy of a 60 MiB part), which generic Avro writers do not do.

use std::collections::BTreeMap;

use base64::prelude::*;
use bytes::Bytes;
use serde_json::Value;

use super::WireError;

/// A `bytes` value at least this long becomes its own segment instead of being copied.
const SEGMENT_THRESHOLD: usize = 4096;

/// How `bytes` values are spelled in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonBytes {
    /// The Avro-JSON rule: one code point 0–255 per byte.
    CodePoints,
    /// Standard padded base64 text (`file_encoding=base64`).
    Base64,
}

/// Builds an Avro binary body as a list of segments.
#[derive(Default)]
pub(crate) struct Writer {
    segments: Vec<Bytes>,
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn long(&mut self, value: i64) {
        let mut n = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            if n < 0x80 {
                self.buf.push(n as u8);
                return;
            }
            self.buf.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
    }

    pub(crate) fn string(&mut self, value: &str) {
        self.long(value.len() as i64);
        self.buf.extend_from_slice(value.as_bytes());
    }

    pub(crate) fn bytes(&mut self, value: &Bytes) {
        self.long(value.len() as i64);
        if value.len() >= SEGMENT_THRESHOLD {
            self.flush();
            self.segments.push(value.clone());
        } else {
            self.buf.extend_from_slice(value);
        }
    }

    /// One positive block then the terminating 0, or just 0 when empty, as the official
    /// clients write arrays and maps.
    pub(crate) fn array<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Writer, &T)) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for value in items {
                item(self, value);
            }
        }
        self.long(0);
    }

    pub(crate) fn map(&mut self, map: &BTreeMap<String, String>) {
        if !map.is_empty() {
            self.long(map.len() as i64);
            for (key, value) in map {
                self.string(key);
                self.string(value);
            }
        }
        self.long(0);
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.segments
                .push(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }

    /// Everything written so far, as one buffer; the writer continues empty.
    pub(crate) fn split(&mut self) -> Bytes {
        self.flush();
        let segments = std::mem::take(&mut self.segments);
        match segments.len() {
            0 => Bytes::new(),
            1 => segments.into_iter().next().expect("one segment"),
            _ => Bytes::from(super::concat(&segments)),
        }
    }

    pub(crate) fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.segments
    }
}

/// Reads an Avro binary body; every error names the byte offset where decoding stopped.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn truncated(&self, what: &str) -> WireError {
        WireError::new(format!(
            "truncated input: {what} at byte {} runs past the end of the {}-byte body",
            self.pos,
            self.data.len()
        ))
    }

    pub(crate) fn long(&mut self) -> Result<i64, WireError> {
        let start = self.pos;
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&byte) = self.data.get(self.pos) else {
                self.pos = start;
                return Err(self.truncated("a varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(WireError::new(format!(
                    "varint at byte {start} does not fit in a 64-bit long"
                )));
            }
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
            shift += 7;
        }
    }

    fn length(&mut self, what: &str) -> Result<usize, WireError> {
        let at = self.pos;
        let len = self.long()?;
        if len < 0 {
            return Err(WireError::new(format!(
                "negative {what} length {len} at byte {at}"
            )));
        }
        let len = len as usize;
        if len > self.data.len() - self.pos {
            self.pos = at;
            return Err(WireError::new(format!(
                "truncated input: {what} of {len} bytes at byte {at} runs past the end of the {}-byte body",
                self.data.len()
            )));
        }
        Ok(len)
    }

    fn raw(&mut self, what: &str) -> Result<&'a [u8], WireError> {
        let len = self.length(what)?;
        let slice = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    pub(crate) fn string(&mut self) -> Result<String, WireError> {
        let at = self.pos;
        let raw = self.raw("a string")?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| WireError::new(format!("the string at byte {at} is not valid UTF-8")))
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, WireError> {
        Ok(Bytes::copy_from_slice(self.raw("a bytes value")?))
    }

    /// Reads array or map blocks; a negative count −n is followed by the block's byte size,
    /// which is read and not needed.
    pub(crate) fn blocks<T>(
        &mut self,
        mut item: impl FnMut(&mut Reader<'a>) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let mut items = Vec::new();
        loop {
            let at = self.pos;
            let count = self.long()?;
            if count == 0 {
                return Ok(items);
            }
            let count = if count < 0 {
                self.long()?;
                count.unsigned_abs()
            } else {
                count as u64
            };
            // Every item takes at least one byte: a larger count is a corrupt body, and
            // refusing it early avoids reserving memory for it.
            if count > (self.data.len() - self.pos) as u64 {
                return Err(WireError::new(format!(
                    "truncated input: a block of {count} items at byte {at} cannot fit in the {} bytes left",
                    self.data.len() - self.pos
                )));
            }
            items.reserve(count as usize);
            for _ in 0..count {
                items.push(item(self)?);
            }
        }
    }

    pub(crate) fn map(&mut self) -> Result<BTreeMap<String, String>, WireError> {
        let pairs = self.blocks(|r| Ok((r.string()?, r.string()?)))?;
        Ok(pairs.into_iter().collect())
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.pos != self.data.len() {
            return Err(WireError::new(format!(
                "{} unexpected bytes after the record (it ends at byte {})",
                self.data.len() - self.pos,
                self.pos
            )));
        }
        Ok(())
    }
}

/// One field type of a KiFS record, in both encodings.
pub(crate) trait Field: Sized {
    fn write_avro(&self, w: &mut Writer);
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError>;
    fn to_json(&self, bytes: JsonBytes) -> Value;
    fn from_json(value: &Value, bytes: JsonBytes) -> Result<Self, String>;
    /// The value used when a JSON object lacks the field; `None` = the field is required.
    fn json_default() -> Option<Self> {
        None
    }
}

impl Field for String {
    fn write_avro(&self, w: &mut Writer) {
        w.string(self);
    }
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.string()
    }
    fn to_json(&self, _: JsonBytes) -> Value {
        Value::String(self.clone())
    }
    fn from_json(value: &Value, _: JsonBytes) -> Result<Self, String> {
        match value {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("expected a string, found {}", json_kind(other))),
        }
    }
}

impl Field for Vec<String> {
    fn write_avro(&self, w: &mut Writer) {
        w.array(self, |w, s| w.string(s));
    }
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.blocks(|r| r.string())
    }
    fn to_json(&self, _: JsonBytes) -> Value {
        Value::Array(self.iter().cloned().map(Value::String).collect())
    }
    fn from_json(value: &Value, bytes: JsonBytes) -> Result<Self, String> {
        json_array(value, |item| String::from_json(item, bytes))
    }
}

impl Field for Vec<i64> {
    fn write_avro(&self, w: &mut Writer) {
        w.array(self, |w, n| w.long(*n));
    }
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.blocks(|r| r.long())
    }
    fn to_json(&self, _: JsonBytes) -> Value {
        Value::Array(self.iter().map(|n| Value::from(*n)).collect())
    }
    fn from_json(value: &Value, _: JsonBytes) -> Result<Self, String> {
        json_array(value, |item| {
            item.as_i64()
                .ok_or_else(|| format!("expected a 64-bit integer, found {item}"))
        })
    }
}

impl Field for Vec<Bytes> {
    fn write_avro(&self, w: &mut Writer) {
        w.array(self, |w, b| w.bytes(b));
    }
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.blocks(|r| r.bytes())
    }
    fn to_json(&self, bytes: JsonBytes) -> Value {
        Value::Array(
            self.iter()
                .map(|b| Value::String(bytes_to_text(b, bytes)))
                .collect(),
        )
    }
    fn from_json(value: &Value, bytes: JsonBytes) -> Result<Self, String> {
        json_array(value, |item| match item {
            Value::String(text) => text_to_bytes(text, bytes),
            other => Err(format!(
                "expected a string of bytes, found {}",
                json_kind(other)
            )),
        })
    }
}

impl Field for BTreeMap<String, String> {
    fn write_avro(&self, w: &mut Writer) {
        w.map(self);
    }
    fn read_avro(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.map()
    }
    fn to_json(&self, _: JsonBytes) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
    fn from_json(value: &Value, _: JsonBytes) -> Result<Self, String> {
        let Value::Object(object) = value else {
            return Err(format!(
                "expected an object of strings, found {}",
                json_kind(value)
            ));
        };
        object
            .iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key.clone(), s.clone())),
                other => Err(format!(
                    "key '{key}': expected a string value, found {}",
                    json_kind(other)
                )),
            })
            .collect()
    }
    /// Missing `options`/`info` read as empty, so a reply lacking `info` still decodes.
    fn json_default() -> Option<Self> {
        Some(BTreeMap::new())
    }
}

fn json_array<T>(
    value: &Value,
    mut item: impl FnMut(&Value) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let Value::Array(items) = value else {
        return Err(format!("expected an array, found {}", json_kind(value)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(v).map_err(|e| format!("element {i}: {e}")))
        .collect()
}

pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Spells bytes as JSON string content.
pub fn bytes_to_text(data: &[u8], mode: JsonBytes) -> String {
    match mode {
        JsonBytes::Base64 => BASE64_STANDARD.encode(data),
        JsonBytes::CodePoints => data.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Reads bytes back from JSON string content; errors say which character or base64 text
/// is wrong.
pub fn text_to_bytes(text: &str, mode: JsonBytes) -> Result<Bytes, String> {
    match mode {
        JsonBytes::Base64 => BASE64_STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|e| format!("invalid base64 ({e})")),
        JsonBytes::CodePoints => {
            let mut out = Vec::with_capacity(text.len());
            for (i, c) in text.chars().enumerate() {
                let code = u32::from(c);
                if code > 0xff {
                    return Err(format!(
                        "character U+{code:04X} at position {i} is not a byte (JSON bytes hold \
                         code points 0-255 unless file_encoding=base64)"
                    ));
                }
                out.push(code as u8);
            }
            Ok(Bytes::from(out))
        }
    }
}
