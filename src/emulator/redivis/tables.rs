//! Tables: finding the one a reference names (through its dataset's versions), creating
//! them (on first use, through the test hook or `POST /datasets/{ref}/tables`), and the
//! table resource (`GET /tables/{ref}`) with its `isFileIndex`.
//!
//! A file index table holds files registered with `rawFiles` (see [`super::rawfiles`]),
//! never uploads: upload.post to it answers 400, and so does `rawFiles` to a table that is
//! not one.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::reply::{ApiError, encode_segment};
use super::store::{self, TableRecord, TableRef};
use super::versions::{self, Access};
use super::{Service, Shared, Table, Tables};

fn storage_error(err: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("emulator storage failed while creating the table: {err}"),
    )
}

fn missing_table(reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "Table {reference:?} does not exist (the emulator runs with --strict-tables; \
             create it with POST /_emulator/redivis/tables)."
        ),
    )
}

/// The key of the unreleased table `reference` names, created on first use unless
/// `--strict-tables`, for a request of `endpoint` (which may meet an armed release window).
pub fn writable(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
    endpoint: &str,
) -> Result<String, ApiError> {
    let find = |tables: &mut Tables| {
        versions::table_key(service, tables, reference, Access::Write).map(|(_, key)| key)
    };
    let key = if service.takes_release_window(endpoint) {
        versions::in_release_window(service, tables, reference, find)?
    } else {
        find(tables)?
    };
    if !tables.by_key.contains_key(&key) {
        if service.options.strict_tables {
            return Err(missing_table(reference));
        }
        let record = TableRecord {
            reference: reference.to_string(),
            created_ms: store::now_ms(),
            is_file_index: false,
        };
        service
            .insert_table(&mut tables.by_key, record)
            .map_err(storage_error)?;
    }
    Ok(key)
}

/// [`writable`], taking the tables' lock.
pub async fn ensure_writable(
    service: &Service,
    reference: &str,
    endpoint: &str,
) -> Result<String, ApiError> {
    let mut tables = service.tables.lock().await;
    writable(service, &mut tables, reference, endpoint)
}

/// The key of the table `reference` names in an existing version; the table itself may
/// not exist.
pub fn readable(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
) -> Result<String, ApiError> {
    versions::table_key(service, tables, reference, Access::Read).map(|(_, key)| key)
}

/// The table resource.
fn resource(table: &Table) -> Value {
    let name = TableRef::parse(&table.record.reference)
        .map(|parsed| parsed.table_name().to_string())
        .unwrap_or_default();
    json!({
        "kind": "table",
        "name": name,
        "uri": format!("/tables/{}", encode_segment(&table.record.reference)),
        "qualifiedReference": table.record.reference,
        "isFileIndex": table.record.is_file_index,
        "uploadMergeStrategy": "append",
        "numUploads": table.uploads.len(),
        "numFiles": table.raw_files.len(),
        "createdAt": table.record.created_ms,
    })
}

/// `GET /api/v1/tables/{ref}`: an unreleased table is created on first use like on
/// upload (unless `--strict-tables`); a released one must exist.
pub async fn get_table(State(service): State<Shared>, Path(reference): Path<String>) -> Response {
    service.count_api("tables.get");
    let mut tables = service.tables.lock().await;
    let parsed = match TableRef::parse(&reference) {
        Ok(parsed) => parsed,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let key = if parsed.version == store::Version::Next {
        writable(&service, &mut tables, &reference, "tables.get")
    } else {
        readable(&service, &mut tables, &reference)
    };
    let found = key.and_then(|key| {
        tables.by_key.get(&key).map(resource).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Table {reference:?} does not exist."),
            )
        })
    });
    match found {
        Ok(value) => Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Creates `reference` (an unreleased table) as the kind asked for; returns whether it
/// was created (an existing table keeps its kind).
async fn create(service: &Service, reference: &str, is_file_index: bool) -> Result<bool, ApiError> {
    let parsed = store::check_table_ref(reference, true)?;
    let mut tables = service.tables.lock().await;
    // The hook and the dataset endpoint create datasets even with --strict-tables.
    versions::ensure_dataset(service, &mut tables, &parsed)?;
    let (_, key) = versions::table_key(service, &mut tables, reference, Access::Write)?;
    if tables.by_key.contains_key(&key) {
        return Ok(false);
    }
    let record = TableRecord {
        reference: reference.to_string(),
        created_ms: store::now_ms(),
        is_file_index,
    };
    service
        .insert_table(&mut tables.by_key, record)
        .map_err(storage_error)?;
    Ok(true)
}

/// `POST /_emulator/redivis/tables` `{"reference": "owner.dataset:next.table",
/// "isFileIndex": false}`.
pub async fn create_table_hook(State(service): State<Shared>, body: Bytes) -> Response {
    let request = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let Some(reference) = request.get("reference").and_then(Value::as_str) else {
        return ApiError::bad(
            "expected {\"reference\": \"owner.dataset:next.table\", \"isFileIndex\": false}",
        )
        .into_response();
    };
    let is_file_index = request.get("isFileIndex").and_then(Value::as_bool) == Some(true);
    match create(&service, reference, is_file_index).await {
        Ok(created) => Json(json!({ "reference": reference, "created": created })).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `POST /api/v1/datasets/{ref}/tables` `{"name", "isFileIndex"?, ...}`: a table in the
/// dataset's unreleased version; 400 when the name is taken there.
pub async fn create_table_in_dataset(
    State(service): State<Shared>,
    Path(dataset): Path<String>,
    body: Bytes,
) -> Response {
    service.count_api("tables.post");
    let request = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let Some(name) = request.get("name").and_then(Value::as_str) else {
        return ApiError::bad("expected a JSON body {\"name\": \"table\", \"isFileIndex\": false}")
            .into_response();
    };
    let is_file_index = request.get("isFileIndex").and_then(Value::as_bool) == Some(true);
    let base = match TableRef::parse_dataset(&dataset) {
        Ok(parsed) => parsed.dataset_reference(),
        Err(err) => return ApiError::from(err).into_response(),
    };
    let reference = format!("{base}:next.{name}");
    match create(&service, &reference, is_file_index).await {
        Ok(true) => {
            let tables = service.tables.lock().await;
            let table = tables.by_key.get(&store::table_key(&reference));
            Json(table.map_or(Value::Null, resource)).into_response()
        }
        Ok(false) => ApiError::bad(format!(
            "A table named {name:?} already exists in the unreleased version of {base:?}."
        ))
        .into_response(),
        Err(err) => err.into_response(),
    }
}
