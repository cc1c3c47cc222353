//! What every part of the emulated API answers with: its error (status, error code, and a
//! description saying what was expected), and names percent-encoded as the API puts them
//! into URLs.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::store::RefError;
use crate::emulator::faults;

/// An API error: status, optional error code, and a description saying what is expected.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Option<&'static str>,
    pub description: String,
}

impl ApiError {
    pub fn new(status: StatusCode, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: None,
            description: description.into(),
        }
    }

    pub fn bad(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, description)
    }

    pub(super) fn internal(what: &str, err: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("emulator storage failed while {what}: {err}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        faults::redivis_error(&Method::GET, self.status, self.code, &self.description)
    }
}

impl From<RefError> for ApiError {
    fn from(err: RefError) -> ApiError {
        match err {
            RefError::Malformed(why) | RefError::Released(why) => ApiError::bad(why),
        }
    }
}

/// Percent-encodes like Python's `quote(s, safe="")` (`:` → `%3A`, `.` kept).
pub fn encode_segment(segment: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'_')
        .remove(b'-')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SET).to_string()
}
