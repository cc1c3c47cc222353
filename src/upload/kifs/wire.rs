//! KiFS wire records and their two encodings, shared by the KiFS client and the emulator.
//!
//! Every endpoint takes one request record in the POST body and answers with the
//! [`Wrapper`] record (`gpudb_response`) holding the inner response record:
//!
//! - **Avro binary** (`application/octet-stream`): fields concatenated in schema order
//!   (the `avro` submodule holds the primitives). [`Record::encode`] returns the body as segments so a
//!   large `file_data` element is handed over as the caller's own [`Bytes`], not copied.
//! - **JSON** (`application/json`): one object, fields in schema order (the server expects
//!   that order). `bytes` fields are strings: with `file_encoding=base64` in the record's own
//!   `options` they are standard padded base64, otherwise each byte is one code point 0–255
//!   (the Avro-JSON rule). Records without options (responses) use code points unless the
//!   caller says otherwise through the `json_bytes` parameter of [`Record::encode_with`] /
//!   [`Record::decode_with`] / [`Wrapper::ok_with`] / [`Wrapper::into_inner_with`] — the
//!   client passes the mode it asked for in a `download_files` request there.
//!
//! In binary mode the codec never touches `file_encoding`: the bytes are what is on the wire
//! (a server honouring `file_encoding=base64` in binary mode decodes them itself).
//!
//! Decoding is strict about structure (truncated input, trailing bytes, wrong JSON types,
//! missing fields are errors naming the record, the field and the byte offset) and lenient
//! about what does not matter: unknown JSON fields are ignored, and a missing JSON
//! `options`/`info` map reads as empty.

mod avro;

pub use avro::{JsonBytes, bytes_to_text, text_to_bytes};

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde_json::Value;

use crate::config::KifsEncoding;
use avro::{Field, Reader, Writer, json_kind};

/// The `Content-type` (and `Accept`) header value for an encoding.
pub fn content_type(enc: KifsEncoding) -> &'static str {
    match enc {
        KifsEncoding::Binary => "application/octet-stream",
        KifsEncoding::Json => "application/json",
    }
}

/// A body that cannot be encoded or decoded as the expected record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    message: String,
}

impl WireError {
    pub fn new(message: impl Into<String>) -> WireError {
        WireError {
            message: message.into(),
        }
    }

    /// Prefixes where the error happened (`field 'file_data': ...`).
    pub fn context(self, context: impl fmt::Display) -> WireError {
        WireError {
            message: format!("{context}: {}", self.message),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WireError {}

fn encoding_name(enc: KifsEncoding) -> &'static str {
    match enc {
        KifsEncoding::Binary => "Avro binary",
        KifsEncoding::Json => "JSON",
    }
}

/// A KiFS request or response record.
pub trait Record: Sized {
    /// The Avro record name, e.g. `upload_files_response` (the wrapper's `data_type`).
    const TYPE_NAME: &'static str;

    /// Encodes the record; `json_bytes = None` picks the JSON spelling of bytes from the
    /// record's own `options` (`file_encoding=base64` → base64, else code points).
    /// The body is the concatenation of the returned segments.
    fn encode_with(&self, enc: KifsEncoding, json_bytes: Option<JsonBytes>) -> Vec<Bytes>;

    /// Decodes a whole body; `json_bytes = None` as in [`Record::encode_with`].
    fn decode_with(
        enc: KifsEncoding,
        body: &[u8],
        json_bytes: Option<JsonBytes>,
    ) -> Result<Self, WireError>;

    fn encode(&self, enc: KifsEncoding) -> Vec<Bytes> {
        self.encode_with(enc, None)
    }

    fn decode(enc: KifsEncoding, body: &[u8]) -> Result<Self, WireError> {
        Self::decode_with(enc, body, None)
    }

    /// The encoded body in one buffer (copies; for small records and tests).
    fn to_body(&self, enc: KifsEncoding) -> Vec<u8> {
        concat(&self.encode(enc))
    }
}

/// Joins body segments into one buffer.
pub fn concat(segments: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segments.iter().map(Bytes::len).sum());
    for segment in segments {
        out.extend_from_slice(segment);
    }
    out
}

fn json_bytes_from_options(options: &BTreeMap<String, String>) -> JsonBytes {
    match options.get("file_encoding").map(String::as_str) {
        Some("base64") => JsonBytes::Base64,
        _ => JsonBytes::CodePoints,
    }
}

fn json_bytes_from_json_options(object: &serde_json::Map<String, Value>) -> JsonBytes {
    match object.get("options").and_then(|o| o.get("file_encoding")) {
        Some(Value::String(s)) if s == "base64" => JsonBytes::Base64,
        _ => JsonBytes::CodePoints,
    }
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, WireError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(WireError::new(format!(
            "expected a JSON object, found {}",
            json_kind(&other)
        ))),
        Err(e) => Err(WireError::new(format!("not valid JSON: {e}"))),
    }
}

fn json_field<T: Field>(
    object: &serde_json::Map<String, Value>,
    name: &str,
    mode: JsonBytes,
) -> Result<T, WireError> {
    match object.get(name) {
        Some(value) => {
            T::from_json(value, mode).map_err(|e| WireError::new(format!("field '{name}': {e}")))
        }
        None => T::json_default().ok_or_else(|| WireError::new(format!("missing field '{name}'"))),
    }
}

/// Appends `"name":value` to a JSON object being written field by field, so the fields keep
/// schema order (a `serde_json::Map` would sort them).
fn push_json_field(out: &mut String, name: &str, value: &Value) {
    out.push(if out.is_empty() { '{' } else { ',' });
    out.push_str(&Value::String(name.to_string()).to_string());
    out.push(':');
    out.push_str(&value.to_string());
}

macro_rules! records {
    (@impl $name:ident, $type_name:literal, $own_mode:expr, $json_mode:expr,
        [$($field:ident : $ty:ty),*]) => {
        impl Record for $name {
            const TYPE_NAME: &'static str = $type_name;

            fn encode_with(
                &self,
                enc: KifsEncoding,
                json_bytes: Option<JsonBytes>,
            ) -> Vec<Bytes> {
                match enc {
                    KifsEncoding::Binary => {
                        let mut w = Writer::default();
                        $( Field::write_avro(&self.$field, &mut w); )*
                        w.finish()
                    }
                    KifsEncoding::Json => {
                        let own: fn(&Self) -> JsonBytes = $own_mode;
                        let mode = json_bytes.unwrap_or_else(|| own(self));
                        let mut out = String::new();
                        $( push_json_field(&mut out, stringify!($field),
                            &Field::to_json(&self.$field, mode)); )*
                        out.push('}');
                        vec![Bytes::from(out)]
                    }
                }
            }

            fn decode_with(
                enc: KifsEncoding,
                body: &[u8],
                json_bytes: Option<JsonBytes>,
            ) -> Result<Self, WireError> {
                let decoded = match enc {
                    KifsEncoding::Binary => (|| {
                        let mut r = Reader::new(body);
                        let record = $name { $(
                            $field: <$ty as Field>::read_avro(&mut r)
                                .map_err(|e| e.context(concat!("field '", stringify!($field), "'")))?,
                        )* };
                        r.finish()?;
                        Ok(record)
                    })(),
                    KifsEncoding::Json => (|| {
                        let object = json_object(body)?;
                        let own: fn(&serde_json::Map<String, Value>) -> JsonBytes = $json_mode;
                        let mode = json_bytes.unwrap_or_else(|| own(&object));
                        Ok($name { $(
                            $field: json_field::<$ty>(&object, stringify!($field), mode)?,
                        )* })
                    })(),
                };
                decoded.map_err(|e: WireError| {
                    e.context(format!("cannot decode {} from {}", $type_name, encoding_name(enc)))
                })
            }
        }
    };
    (@kind request $name:ident, $type_name:literal, [$($field:ident : $ty:ty),*]) => {
        records!(@impl $name, $type_name,
            |r: &$name| json_bytes_from_options(&r.options),
            json_bytes_from_json_options,
            [$($field : $ty),*]);
    };
    (@kind response $name:ident, $type_name:literal, [$($field:ident : $ty:ty),*]) => {
        records!(@impl $name, $type_name,
            |_: &$name| JsonBytes::CodePoints,
            |_: &serde_json::Map<String, Value>| JsonBytes::CodePoints,
            [$($field : $ty),*]);
    };
    ($(
        $(#[$doc:meta])*
        $kind:ident $name:ident = $type_name:literal {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => { $(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: $ty, )*
        }
        records!(@kind $kind $name, $type_name, [$($field : $ty),*]);
    )* };
}

/// String options or info, as KiFS sends them (values are always strings).
pub type StringMap = BTreeMap<String, String>;

records! {
    /// `/upload/files`: whole files (one `file_data` element per name) or one multipart step.
    request UploadFilesRequest = "upload_files_request" {
        file_names: Vec<String>,
        file_data: Vec<Bytes>,
        options: StringMap,
    }
    response UploadFilesResponse = "upload_files_response" {
        info: StringMap,
    }
    /// `/show/files`: directory names or file paths, with `*`/`?` after the first `/`.
    request ShowFilesRequest = "show_files_request" {
        paths: Vec<String>,
        options: StringMap,
    }
    response ShowFilesResponse = "show_files_response" {
        file_names: Vec<String>,
        /// Bytes.
        sizes: Vec<i64>,
        users: Vec<String>,
        /// Milliseconds since the Unix epoch.
        creation_times: Vec<i64>,
        info: StringMap,
    }
    /// `/show/directories`: `directory_name` empty = every directory visible to the caller.
    request ShowDirectoriesRequest = "show_directories_request" {
        directory_name: String,
        options: StringMap,
    }
    response ShowDirectoriesResponse = "show_directories_response" {
        directories: Vec<String>,
        users: Vec<String>,
        creation_times: Vec<i64>,
        data_usages: Vec<i64>,
        /// −1 = unlimited.
        data_limits: Vec<i64>,
        /// `directory_write`, `directory_read` or empty.
        permissions: Vec<String>,
        info: StringMap,
    }
    request CreateDirectoryRequest = "create_directory_request" {
        directory_name: String,
        options: StringMap,
    }
    response CreateDirectoryResponse = "create_directory_response" {
        directory_name: String,
        info: StringMap,
    }
    request DeleteFilesRequest = "delete_files_request" {
        file_names: Vec<String>,
        options: StringMap,
    }
    response DeleteFilesResponse = "delete_files_response" {
        file_names: Vec<String>,
        info: StringMap,
    }
    /// `/download/files`: offsets and lengths both empty (whole files) or one per name.
    request DownloadFilesRequest = "download_files_request" {
        file_names: Vec<String>,
        read_offsets: Vec<i64>,
        read_lengths: Vec<i64>,
        options: StringMap,
    }
    /// JSON bytes use code points unless the caller passes the request's mode (see the
    /// module doc).
    response DownloadFilesResponse = "download_files_response" {
        file_names: Vec<String>,
        file_data: Vec<Bytes>,
        info: StringMap,
    }
    request DeleteDirectoryRequest = "delete_directory_request" {
        directory_name: String,
        options: StringMap,
    }
    response DeleteDirectoryResponse = "delete_directory_response" {
        directory_name: String,
        info: StringMap,
    }
    /// `/show/system/properties`, called first by the stock Python client.
    request ShowSystemPropertiesRequest = "show_system_properties_request" {
        options: StringMap,
    }
    response ShowSystemPropertiesResponse = "show_system_properties_response" {
        property_map: StringMap,
        info: StringMap,
    }
    /// `/show/system/status`, called by the stock Python client with auto-discovery on.
    request ShowSystemStatusRequest = "show_system_status_request" {
        options: StringMap,
    }
    response ShowSystemStatusResponse = "show_system_status_response" {
        status_map: StringMap,
        info: StringMap,
    }
}

/// An `/upload/files` request whose `file_data` elements the caller streams (from files)
/// instead of holding them in memory: the encoded bytes around the elements.
///
/// The body is `pieces[0] ++ element(0) ++ pieces[1] ++ … ++ element(n-1) ++ pieces[n]`,
/// where element *i* is the *i*-th data as it goes on the wire: the raw bytes in Avro
/// binary, their base64 text in JSON (so in JSON the options must say
/// `file_encoding=base64`). Concatenated, it is exactly what [`Record::encode`] produces for
/// the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFrame {
    pub pieces: Vec<Bytes>,
}

impl UploadFrame {
    /// The frame for `file_names` with data of `lengths` bytes each (one per name, or none
    /// for the multipart steps without data).
    pub fn new(
        enc: KifsEncoding,
        file_names: &[String],
        lengths: &[u64],
        options: &StringMap,
    ) -> UploadFrame {
        let mut pieces = Vec::with_capacity(lengths.len() + 1);
        match enc {
            KifsEncoding::Binary => {
                let mut w = Writer::default();
                Field::write_avro(&file_names.to_vec(), &mut w);
                if !lengths.is_empty() {
                    w.long(lengths.len() as i64);
                }
                for &len in lengths {
                    w.long(len as i64);
                    pieces.push(w.split());
                }
                w.long(0);
                w.map(options);
                pieces.push(w.split());
            }
            KifsEncoding::Json => {
                let mut out = String::new();
                let names = Field::to_json(&file_names.to_vec(), JsonBytes::Base64);
                push_json_field(&mut out, "file_names", &names);
                out.push_str(",\"file_data\":[");
                for i in 0..lengths.len() {
                    out.push_str(if i == 0 { "\"" } else { "\",\"" });
                    pieces.push(Bytes::from(std::mem::take(&mut out)));
                }
                if !lengths.is_empty() {
                    out.push('"');
                }
                out.push(']');
                let options = Field::to_json(options, JsonBytes::Base64);
                out.push_str(",\"options\":");
                out.push_str(&options.to_string());
                out.push('}');
                pieces.push(Bytes::from(out));
            }
        }
        UploadFrame { pieces }
    }

    /// How long an element of `len` data bytes is on the wire.
    pub fn element_len(enc: KifsEncoding, len: u64) -> u64 {
        match enc {
            KifsEncoding::Binary => len,
            KifsEncoding::Json => len.div_ceil(3) * 4,
        }
    }

    /// The whole body's length for elements of `lengths` data bytes.
    pub fn body_len(&self, enc: KifsEncoding, lengths: &[u64]) -> u64 {
        let pieces: u64 = self.pieces.iter().map(|p| p.len() as u64).sum();
        pieces
            + lengths
                .iter()
                .map(|&len| UploadFrame::element_len(enc, len))
                .sum::<u64>()
    }
}

/// The `gpudb_response` record every endpoint answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapper {
    /// `OK` or `ERROR`.
    pub status: String,
    /// Empty on success, the error text otherwise.
    pub message: String,
    /// The inner record's name, or `none` on error.
    pub data_type: String,
    /// Binary mode: the inner record in Avro binary.
    pub data: Bytes,
    /// JSON mode: the inner record as JSON text.
    pub data_str: String,
}

/// Why a reply did not yield its inner record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapperError {
    /// The server answered `ERROR`; the message is the server's, verbatim.
    #[error("{0}")]
    Remote(String),
    /// The reply is not a well-formed wrapper around the expected record.
    #[error("malformed KiFS reply: {0}")]
    Malformed(#[from] WireError),
}

impl Wrapper {
    /// An `OK` reply carrying `inner`.
    pub fn ok<R: Record>(enc: KifsEncoding, inner: &R) -> Vec<u8> {
        Wrapper::ok_with(enc, inner, None)
    }

    /// An `OK` reply; `json_bytes` as in [`Record::encode_with`].
    pub fn ok_with<R: Record>(
        enc: KifsEncoding,
        inner: &R,
        json_bytes: Option<JsonBytes>,
    ) -> Vec<u8> {
        let inner = concat(&inner.encode_with(enc, json_bytes));
        let (data, data_str) = match enc {
            KifsEncoding::Binary => (Bytes::from(inner), String::new()),
            KifsEncoding::Json => (
                Bytes::new(),
                String::from_utf8(inner).expect("the JSON encoder writes UTF-8 text"),
            ),
        };
        Wrapper {
            status: "OK".into(),
            message: String::new(),
            data_type: R::TYPE_NAME.into(),
            data,
            data_str,
        }
        .to_body(enc)
    }

    /// An `ERROR` reply with `message`.
    pub fn error(enc: KifsEncoding, message: &str) -> Vec<u8> {
        Wrapper {
            status: "ERROR".into(),
            message: message.into(),
            data_type: "none".into(),
            data: Bytes::new(),
            data_str: String::new(),
        }
        .to_body(enc)
    }

    pub fn to_body(&self, enc: KifsEncoding) -> Vec<u8> {
        match enc {
            KifsEncoding::Binary => {
                let mut w = Writer::default();
                w.string(&self.status);
                w.string(&self.message);
                w.string(&self.data_type);
                w.bytes(&self.data);
                w.string(&self.data_str);
                concat(&w.finish())
            }
            KifsEncoding::Json => {
                let mut out = String::new();
                for (name, value) in [
                    ("status", self.status.clone()),
                    ("message", self.message.clone()),
                    ("data_type", self.data_type.clone()),
                    ("data", bytes_to_text(&self.data, JsonBytes::CodePoints)),
                    ("data_str", self.data_str.clone()),
                ] {
                    push_json_field(&mut out, name, &Value::String(value));
                }
                out.push('}');
                out.into_bytes()
            }
        }
    }

    pub fn decode(enc: KifsEncoding, body: &[u8]) -> Result<Wrapper, WireError> {
        let decoded = match enc {
            KifsEncoding::Binary => (|| {
                let mut r = Reader::new(body);
                let string = |r: &mut Reader<'_>, name: &str| {
                    r.string().map_err(|e| e.context(format!("field '{name}'")))
                };
                let status = string(&mut r, "status")?;
                let message = string(&mut r, "message")?;
                let data_type = string(&mut r, "data_type")?;
                let data = r.bytes().map_err(|e| e.context("field 'data'"))?;
                let data_str = string(&mut r, "data_str")?;
                r.finish()?;
                Ok(Wrapper {
                    status,
                    message,
                    data_type,
                    data,
                    data_str,
                })
            })(),
            KifsEncoding::Json => (|| {
                let object = json_object(body)?;
                let mode = JsonBytes::CodePoints;
                // `data` and `data_str` are read leniently: a reader only needs the one its
                // encoding uses.
                let optional = |name: &str| -> Result<Option<String>, WireError> {
                    match object.get(name) {
                        None | Some(Value::Null) => Ok(None),
                        Some(value) => String::from_json(value, mode)
                            .map(Some)
                            .map_err(|e| WireError::new(format!("field '{name}': {e}"))),
                    }
                };
                let data = match optional("data")? {
                    Some(text) => text_to_bytes(&text, mode)
                        .map_err(|e| WireError::new(format!("field 'data': {e}")))?,
                    None => Bytes::new(),
                };
                Ok(Wrapper {
                    status: json_field(&object, "status", mode)?,
                    message: json_field(&object, "message", mode)?,
                    data_type: json_field(&object, "data_type", mode)?,
                    data,
                    data_str: optional("data_str")?.unwrap_or_default(),
                })
            })(),
        };
        decoded.map_err(|e: WireError| {
            e.context(format!(
                "cannot decode the gpudb_response wrapper from {}",
                encoding_name(enc)
            ))
        })
    }

    /// The inner record of an `OK` reply, or the server's `ERROR` message.
    pub fn into_inner<R: Record>(self, enc: KifsEncoding) -> Result<R, WrapperError> {
        self.into_inner_with(enc, None)
    }

    /// As [`Wrapper::into_inner`]; `json_bytes` as in [`Record::decode_with`].
    pub fn into_inner_with<R: Record>(
        self,
        enc: KifsEncoding,
        json_bytes: Option<JsonBytes>,
    ) -> Result<R, WrapperError> {
        match self.status.as_str() {
            "OK" => {}
            "ERROR" => return Err(WrapperError::Remote(self.message)),
            other => {
                return Err(WrapperError::Malformed(WireError::new(format!(
                    "unexpected status '{other}' (expected OK or ERROR); message: '{}'",
                    self.message
                ))));
            }
        }
        if self.data_type != R::TYPE_NAME {
            return Err(WrapperError::Malformed(WireError::new(format!(
                "the reply holds '{}' where '{}' was expected",
                self.data_type,
                R::TYPE_NAME
            ))));
        }
        let inner = match enc {
            KifsEncoding::Binary => R::decode_with(enc, &self.data, json_bytes),
            KifsEncoding::Json => R::decode_with(enc, self.data_str.as_bytes(), json_bytes),
        };
        Ok(inner?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [KifsEncoding; 2] = [KifsEncoding::Binary, KifsEncoding::Json];

    fn map(pairs: &[(&str, &str)]) -> StringMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn round_trip<R: Record + PartialEq + fmt::Debug>(record: &R) {
        for enc in BOTH {
            let body = record.to_body(enc);
            let back = R::decode(enc, &body)
                .unwrap_or_else(|e| panic!("{} must decode in {enc:?}: {e}", R::TYPE_NAME));
            assert_eq!(&back, record, "{} round trip in {enc:?}", R::TYPE_NAME);
            let reply = Wrapper::ok(enc, record);
            let inner: R = Wrapper::decode(enc, &reply)
                .expect("an OK wrapper decodes")
                .into_inner(enc)
                .expect("an OK wrapper yields its record");
            assert_eq!(
                &inner,
                record,
                "{} through the wrapper in {enc:?}",
                R::TYPE_NAME
            );
        }
    }

    #[test]
    fn a_streamed_upload_frame_around_its_elements_is_the_encoded_request() {
        use base64::prelude::*;
        let data = [
            Bytes::from_static(b"hello"),
            Bytes::new(),
            Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>()),
        ];
        for count in 0..=data.len() {
            let names: Vec<String> = (0..count).map(|i| format!("dir/f{i}.bin")).collect();
            let elements = data[..count].to_vec();
            for enc in [KifsEncoding::Binary, KifsEncoding::Json] {
                let mut options = StringMap::new();
                if enc == KifsEncoding::Json {
                    options.insert("file_encoding".into(), "base64".into());
                }
                options.insert("multipart_operation".into(), "none".into());
                let request = UploadFilesRequest {
                    file_names: names.clone(),
                    file_data: elements.clone(),
                    options: options.clone(),
                };
                let lengths: Vec<u64> = elements.iter().map(|e| e.len() as u64).collect();
                let frame = UploadFrame::new(enc, &names, &lengths, &options);
                assert_eq!(frame.pieces.len(), count + 1);
                let mut body = frame.pieces[0].to_vec();
                for (element, piece) in elements.iter().zip(&frame.pieces[1..]) {
                    match enc {
                        KifsEncoding::Binary => body.extend_from_slice(element),
                        KifsEncoding::Json => {
                            body.extend_from_slice(BASE64_STANDARD.encode(element).as_bytes())
                        }
                    }
                    body.extend_from_slice(piece);
                }
                assert_eq!(body, request.to_body(enc), "{count} elements, {enc:?}");
                assert_eq!(frame.body_len(enc, &lengths), body.len() as u64);
            }
        }
    }

    #[test]
    fn upload_request_matches_the_documented_avro_bytes() {
        let request = UploadFilesRequest {
            file_names: strings(&["mydir/a.txt"]),
            file_data: vec![Bytes::from_static(b"hello")],
            options: StringMap::new(),
        };
        let mut expected = vec![0x02, 0x16];
        expected.extend_from_slice(b"mydir/a.txt");
        expected.extend_from_slice(&[0x00, 0x02, 0x0a]);
        expected.extend_from_slice(b"hello");
        expected.extend_from_slice(&[0x00, 0x00]);
        assert_eq!(request.to_body(KifsEncoding::Binary), expected);
        assert_eq!(
            UploadFilesRequest::decode(KifsEncoding::Binary, &expected).unwrap(),
            request
        );
    }

    #[test]
    fn binary_ok_reply_matches_the_documented_bytes() {
        let mut expected = vec![0x04];
        expected.extend_from_slice(b"OK");
        expected.extend_from_slice(&[0x00, 0x2a]);
        expected.extend_from_slice(b"upload_files_response");
        expected.extend_from_slice(&[0x02, 0x00, 0x00]);
        let reply = Wrapper::ok(KifsEncoding::Binary, &UploadFilesResponse::default());
        assert_eq!(reply, expected);
        let wrapper = Wrapper::decode(KifsEncoding::Binary, &expected).unwrap();
        assert_eq!(wrapper.data, Bytes::from_static(&[0x00]));
        assert_eq!(wrapper.data_str, "");
        let inner: UploadFilesResponse = wrapper.into_inner(KifsEncoding::Binary).unwrap();
        assert!(inner.info.is_empty());
    }

    #[test]
    fn json_ok_reply_matches_the_documented_text() {
        let expected = r#"{"status":"OK","message":"","data_type":"upload_files_response","data":"","data_str":"{\"info\":{}}"}"#;
        let reply = Wrapper::ok(KifsEncoding::Json, &UploadFilesResponse::default());
        assert_eq!(String::from_utf8(reply).unwrap(), expected);
        let inner: UploadFilesResponse = Wrapper::decode(KifsEncoding::Json, expected.as_bytes())
            .unwrap()
            .into_inner(KifsEncoding::Json)
            .unwrap();
        assert!(inner.info.is_empty());
    }

    #[test]
    fn json_request_lists_fields_in_schema_order() {
        let request = DownloadFilesRequest {
            file_names: strings(&["d/x"]),
            read_offsets: vec![0],
            read_lengths: vec![10],
            options: map(&[("z", "1"), ("a", "2")]),
        };
        let text = String::from_utf8(request.to_body(KifsEncoding::Json)).unwrap();
        assert_eq!(
            text,
            r#"{"file_names":["d/x"],"read_offsets":[0],"read_lengths":[10],"options":{"a":"2","z":"1"}}"#
        );
    }

    #[test]
    fn error_reply_carries_the_message_verbatim_in_both_encodings() {
        for enc in BOTH {
            let reply = Wrapper::error(enc, "Directory 'nope' does not exist");
            let wrapper = Wrapper::decode(enc, &reply).unwrap();
            assert_eq!(wrapper.status, "ERROR");
            assert_eq!(wrapper.data_type, "none");
            assert_eq!(
                wrapper.into_inner::<ShowFilesResponse>(enc),
                Err(WrapperError::Remote(
                    "Directory 'nope' does not exist".into()
                ))
            );
        }
    }

    #[test]
    fn every_record_round_trips_in_both_encodings() {
        let options = map(&[("no_error_if_exists", "true"), ("data_limit", "-1")]);
        let info = map(&[("multipart_uploads", "[{\"uuid\":\"u\"}]")]);
        round_trip(&UploadFilesRequest {
            file_names: strings(&["d/a.txt", "d/sub/b c.bin"]),
            file_data: vec![
                Bytes::from_static(b"one"),
                Bytes::from(vec![0u8, 200, 255, 10]),
            ],
            options: options.clone(),
        });
        round_trip(&UploadFilesResponse { info: info.clone() });
        round_trip(&ShowFilesRequest {
            paths: strings(&["d", "e/*.csv"]),
            options: options.clone(),
        });
        round_trip(&ShowFilesResponse {
            file_names: strings(&["d/a", "d/b"]),
            sizes: vec![0, 62_914_561],
            users: strings(&["alice", "bob"]),
            creation_times: vec![1_700_000_000_000, -1],
            info: info.clone(),
        });
        round_trip(&ShowDirectoriesRequest {
            directory_name: "d".into(),
            options: options.clone(),
        });
        round_trip(&ShowDirectoriesResponse {
            directories: strings(&["d", "~alice"]),
            users: strings(&["admin", "alice"]),
            creation_times: vec![1, 2],
            data_usages: vec![0, i64::MAX],
            data_limits: vec![-1, 1 << 40],
            permissions: strings(&["directory_write", "directory_read"]),
            info: info.clone(),
        });
        round_trip(&CreateDirectoryRequest {
            directory_name: "d".into(),
            options: options.clone(),
        });
        round_trip(&CreateDirectoryResponse {
            directory_name: "d".into(),
            info: info.clone(),
        });
        round_trip(&DeleteFilesRequest {
            file_names: strings(&["d/*"]),
            options: options.clone(),
        });
        round_trip(&DeleteFilesResponse {
            file_names: strings(&["d/a"]),
            info: info.clone(),
        });
        round_trip(&DownloadFilesRequest {
            file_names: strings(&["d/a", "d/b"]),
            read_offsets: vec![0, i64::MIN],
            read_lengths: vec![5, 62_914_560],
            options: options.clone(),
        });
        round_trip(&DownloadFilesResponse {
            file_names: strings(&["d/a"]),
            file_data: vec![Bytes::from((0..=255u8).collect::<Vec<u8>>())],
            info: info.clone(),
        });
        round_trip(&DeleteDirectoryRequest {
            directory_name: "d".into(),
            options: options.clone(),
        });
        round_trip(&DeleteDirectoryResponse {
            directory_name: "d".into(),
            info: info.clone(),
        });
        round_trip(&ShowSystemPropertiesRequest {
            options: options.clone(),
        });
        round_trip(&ShowSystemPropertiesResponse {
            property_map: map(&[("version.gpudb_core_version", "7.2")]),
            info: info.clone(),
        });
        round_trip(&ShowSystemStatusRequest { options });
        round_trip(&ShowSystemStatusResponse {
            status_map: map(&[("system", "{\"status\":\"running\"}")]),
            info,
        });
    }

    #[test]
    fn empty_records_round_trip() {
        round_trip(&UploadFilesRequest::default());
        round_trip(&ShowFilesResponse::default());
        round_trip(&ShowDirectoriesResponse::default());
        round_trip(&DownloadFilesResponse::default());
    }

    #[test]
    fn zero_length_bytes_round_trip_in_every_mode() {
        let request = UploadFilesRequest {
            file_names: strings(&["d/empty", "d/also-empty"]),
            file_data: vec![Bytes::new(), Bytes::new()],
            options: StringMap::new(),
        };
        assert_eq!(
            request.to_body(KifsEncoding::Binary),
            [
                &[0x04, 0x0e][..],
                b"d/empty",
                &[0x18],
                b"d/also-empty",
                &[0x00, 0x04, 0x00, 0x00, 0x00, 0x00]
            ]
            .concat()
        );
        round_trip(&request);
        let mut base64 = request.clone();
        base64.options = map(&[("file_encoding", "base64")]);
        round_trip(&base64);
    }

    #[test]
    fn large_bytes_are_handed_over_as_their_own_segment() {
        let part = Bytes::from(vec![7u8; 1 << 20]);
        let request = UploadFilesRequest {
            file_names: strings(&["d/big"]),
            file_data: vec![part.clone()],
            options: map(&[("multipart_operation", "upload_part")]),
        };
        let segments = request.encode(KifsEncoding::Binary);
        assert_eq!(segments.len(), 3, "prefix, data, suffix");
        assert_eq!(
            segments[1].as_ptr(),
            part.as_ptr(),
            "the part is the caller's buffer, not a copy"
        );
        let back = UploadFilesRequest::decode(KifsEncoding::Binary, &concat(&segments)).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn json_bytes_are_code_points_without_file_encoding() {
        let request = UploadFilesRequest {
            file_names: strings(&["d/x"]),
            file_data: vec![Bytes::from_static(&[0x00, 0x41, 0xe9, 0xff])],
            options: StringMap::new(),
        };
        let text = String::from_utf8(request.to_body(KifsEncoding::Json)).unwrap();
        assert_eq!(
            text,
            "{\"file_names\":[\"d/x\"],\"file_data\":[\"\\u0000A\u{e9}\u{ff}\"],\"options\":{}}"
        );
        assert_eq!(
            UploadFilesRequest::decode(KifsEncoding::Json, text.as_bytes()).unwrap(),
            request
        );
    }

    #[test]
    fn json_bytes_are_base64_when_the_options_say_so() {
        let request = UploadFilesRequest {
            file_names: strings(&["d/x"]),
            file_data: vec![Bytes::from_static(b"hello")],
            options: map(&[("file_encoding", "base64")]),
        };
        let text = String::from_utf8(request.to_body(KifsEncoding::Json)).unwrap();
        assert!(text.contains(r#""file_data":["aGVsbG8="]"#), "{text}");
        assert_eq!(
            UploadFilesRequest::decode(KifsEncoding::Json, text.as_bytes()).unwrap(),
            request
        );
    }

    #[test]
    fn download_response_uses_the_mode_the_caller_passes() {
        let response = DownloadFilesResponse {
            file_names: strings(&["d/x"]),
            file_data: vec![Bytes::from_static(b"hello")],
            info: StringMap::new(),
        };
        let reply = Wrapper::ok_with(KifsEncoding::Json, &response, Some(JsonBytes::Base64));
        let wrapper = Wrapper::decode(KifsEncoding::Json, &reply).unwrap();
        assert!(
            wrapper.data_str.contains("aGVsbG8="),
            "{}",
            wrapper.data_str
        );
        let back: DownloadFilesResponse = wrapper
            .into_inner_with(KifsEncoding::Json, Some(JsonBytes::Base64))
            .unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn json_code_point_above_255_is_rejected_with_its_position() {
        let text = r#"{"file_names":["d/x"],"file_data":["ab€"],"options":{}}"#;
        let err = UploadFilesRequest::decode(KifsEncoding::Json, text.as_bytes()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("upload_files_request"), "{message}");
        assert!(message.contains("field 'file_data'"), "{message}");
        assert!(message.contains("U+20AC at position 2"), "{message}");
    }

    #[test]
    fn invalid_base64_is_rejected() {
        let text = r#"{"file_names":["d/x"],"file_data":["not base64!"],"options":{"file_encoding":"base64"}}"#;
        let err = UploadFilesRequest::decode(KifsEncoding::Json, text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    #[test]
    fn negative_block_counts_are_accepted() {
        // file_names: one block of -2 items (byte size 8) then 0.
        let mut body = vec![0x03, 0x10, 0x06];
        body.extend_from_slice(b"d/a");
        body.push(0x06);
        body.extend_from_slice(b"d/b");
        body.push(0x00);
        // file_data: two blocks of -1 item (byte size 2 each) then 0.
        body.extend_from_slice(&[0x01, 0x04, 0x02, b'x', 0x01, 0x04, 0x02, b'y', 0x00]);
        // options: -1 entry (byte size 4) "k" -> "v", then 0.
        body.extend_from_slice(&[0x01, 0x08, 0x02, b'k', 0x02, b'v', 0x00]);
        let request = UploadFilesRequest::decode(KifsEncoding::Binary, &body).unwrap();
        assert_eq!(request.file_names, strings(&["d/a", "d/b"]));
        assert_eq!(
            request.file_data,
            vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]
        );
        assert_eq!(request.options, map(&[("k", "v")]));
    }

    #[test]
    fn truncated_binary_input_is_an_error_at_every_cut() {
        let request = UploadFilesRequest {
            file_names: strings(&["mydir/a.txt"]),
            file_data: vec![Bytes::from_static(b"hello")],
            options: map(&[("multipart_operation", "init")]),
        };
        let body = request.to_body(KifsEncoding::Binary);
        for cut in 0..body.len() {
            let err = UploadFilesRequest::decode(KifsEncoding::Binary, &body[..cut])
                .expect_err("a cut body must not decode");
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
        let reply = Wrapper::ok(KifsEncoding::Binary, &UploadFilesResponse::default());
        for cut in 0..reply.len() {
            assert!(Wrapper::decode(KifsEncoding::Binary, &reply[..cut]).is_err());
        }
    }

    #[test]
    fn trailing_bytes_after_a_record_are_an_error() {
        let mut body = ShowFilesRequest::default().to_body(KifsEncoding::Binary);
        body.push(0x00);
        let err = ShowFilesRequest::decode(KifsEncoding::Binary, &body).unwrap_err();
        assert!(err.to_string().contains("1 unexpected bytes"), "{err}");
    }

    #[test]
    fn absurd_lengths_and_counts_are_errors_not_allocations() {
        // A string length of 2^40 with a 3-byte body.
        let mut w = Writer::default();
        w.long(1 << 40);
        let body = concat(&w.finish());
        let err = ShowDirectoriesRequest::decode(KifsEncoding::Binary, &body).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut w = Writer::default();
        w.long(1 << 40);
        let body = concat(&w.finish());
        let err = ShowFilesRequest::decode(KifsEncoding::Binary, &body).unwrap_err();
        assert!(err.to_string().contains("cannot fit"), "{err}");
        let err = ShowFilesRequest::decode(KifsEncoding::Binary, &[0xff; 11]).unwrap_err();
        assert!(err.to_string().contains("64-bit"), "{err}");
    }

    #[test]
    fn zigzag_longs_match_the_avro_spec() {
        for (value, bytes) in [
            (0i64, vec![0x00]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
            (
                i64::MAX,
                vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut w = Writer::default();
            w.long(value);
            assert_eq!(concat(&w.finish()), bytes, "encoding {value}");
            let mut r = Reader::new(&bytes);
            assert_eq!(r.long().unwrap(), value, "decoding {value}");
            r.finish().unwrap();
        }
    }

    #[test]
    fn json_missing_required_field_and_wrong_types_are_named() {
        let err = ShowFilesRequest::decode(KifsEncoding::Json, br#"{"options":{}}"#).unwrap_err();
        assert!(err.to_string().contains("missing field 'paths'"), "{err}");
        let err = ShowFilesRequest::decode(KifsEncoding::Json, br#"{"paths":"d","options":{}}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("field 'paths': expected an array"),
            "{err}"
        );
        let err = DownloadFilesRequest::decode(
            KifsEncoding::Json,
            br#"{"file_names":[],"read_offsets":[1.5],"read_lengths":[],"options":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("element 0"), "{err}");
        let err = ShowFilesRequest::decode(KifsEncoding::Json, b"[1]").unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        let err = ShowFilesRequest::decode(KifsEncoding::Json, b"{").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn json_missing_info_reads_as_empty_and_unknown_fields_are_ignored() {
        let inner: CreateDirectoryResponse = CreateDirectoryResponse::decode(
            KifsEncoding::Json,
            br#"{"directory_name":"d","extra":1}"#,
        )
        .unwrap();
        assert_eq!(inner.directory_name, "d");
        assert!(inner.info.is_empty());
    }

    #[test]
    fn wrapper_of_another_record_type_is_malformed() {
        let reply = Wrapper::ok(KifsEncoding::Binary, &UploadFilesResponse::default());
        let err = Wrapper::decode(KifsEncoding::Binary, &reply)
            .unwrap()
            .into_inner::<ShowFilesResponse>(KifsEncoding::Binary)
            .unwrap_err();
        assert!(matches!(err, WrapperError::Malformed(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("'upload_files_response' where 'show_files_response'")
        );
    }

    #[test]
    fn content_types_follow_the_encoding() {
        assert_eq!(
            content_type(KifsEncoding::Binary),
            "application/octet-stream"
        );
        assert_eq!(content_type(KifsEncoding::Json), "application/json");
    }
}
