//! Files of file index tables: `POST /tables/{ref}/rawFiles` registers finished temp
//! uploads as files, `GET /tables/{ref}/rawFiles` lists them, `GET`/`DELETE
//! /rawFiles/{id}` read and remove one.
//!
//! Registration, in steps (all or nothing):
//! 1. The table is an unreleased file index table (else 400; a missing `:next` as in
//!    [`super::versions`]).
//! 2. The body is `{"files": [{"name", "tempUploadId"}]}` with 1 to 1000 entries, names
//!    not empty, ids used once (`resumableUploadId` is taken as a synonym, as the docs'
//!    text still names it).
//! 3. Every id is a finished, unused temp upload of this table (the same rules as
//!    upload.post), checked before anything is created: one bad entry refuses the call.
//! 4. Each file gets an id and `rawfiles/<id>.data`; its temp upload is marked used.
//! 5. The answer is 201 `{"kind": "rawFileList", "results": [...]}` in request order.
//!
//! Names may repeat: the table is keyed by file id, and a changed local file is replaced by
//! deleting its earlier entry. `md5Hash` is base64, as the field name suggests (GCS style).
//! The listing, the single-file routes and `DELETE` (off with
//! `--redivis-no-raw-file-delete`, which answers like an unknown route) are this emulator's
//! choices where the public docs say nothing; see `docs/protocols/redivis.md`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::api::{ListQuery, base_url, existing_table, take_transfer};
use super::reply::{ApiError, encode_segment};
use super::store::{self, ContentSummary, RawFileRecord};
use super::{Shared, Table, Tables, tables};

/// Entries per `rawFiles` call, as the official client sends at most.
const MAX_FILES: usize = 1000;

/// The rawFile resource.
fn resource(service: &Shared, table: &Table, file: &RawFileRecord, base: &str) -> Value {
    let uri = format!("/rawFiles/{}", file.id);
    let md5 = hex::decode(&file.content.md5).unwrap_or_default();
    json!({
        "kind": "rawFile",
        "id": file.id,
        "uri": uri,
        "url": format!("{base}/api/v1{uri}"),
        "name": file.name,
        "md5Hash": base64::engine::general_purpose::STANDARD.encode(md5),
        "size": service.number(file.content.size),
        "addedAt": file.created_ms,
        "tableUri": format!("/tables/{}", encode_segment(&table.record.reference)),
    })
}

/// One entry of a registration request.
struct Entry {
    name: String,
    temp_upload: String,
}

fn entries(body: &[u8]) -> Result<Vec<Entry>, ApiError> {
    let shape = "the body must be JSON {\"files\": [{\"name\": ..., \"tempUploadId\": ...}]}";
    let request: Value =
        serde_json::from_slice(body).map_err(|err| ApiError::bad(format!("{shape}: {err}")))?;
    let files = request
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad(shape))?;
    if files.is_empty() || files.len() > MAX_FILES {
        return Err(ApiError::bad(format!(
            "files must hold between 1 and {MAX_FILES} entries, not {}",
            files.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        let text = |field: &str| file.get(field).and_then(Value::as_str).unwrap_or("");
        let name = text("name");
        let id = [text("tempUploadId"), text("resumableUploadId")]
            .into_iter()
            .find(|id| !id.is_empty())
            .unwrap_or("");
        if name.is_empty() || id.is_empty() {
            return Err(ApiError::bad(format!(
                "files[{index}] needs a non-empty name and tempUploadId"
            )));
        }
        if !seen.insert(id.to_string()) {
            return Err(ApiError::bad(format!(
                "files[{index}]: temp upload {id:?} is named twice in this request"
            )));
        }
        entries.push(Entry {
            name: name.to_string(),
            temp_upload: id.to_string(),
        });
    }
    Ok(entries)
}

/// `POST /api/v1/tables/{ref}/rawFiles` (module doc, steps 1–5).
pub async fn post_raw_files(
    State(service): State<Shared>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    service.count_api("rawFiles.post");
    let entries = entries(&body)?;
    let base = base_url(&headers);
    // The registration runs to its end even if the client goes away mid-request.
    let task_service = service.clone();
    let results = tokio::spawn(async move {
        let mut tables = task_service.tables.lock().await;
        register(&task_service, &mut tables, &table, entries, &base).await
    })
    .await
    .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))??;
    if service.options.redivis_raw_files_delay > 0 {
        let delay = std::time::Duration::from_millis(service.options.redivis_raw_files_delay);
        tokio::time::sleep(delay).await;
    }
    let body = json!({ "kind": "rawFileList", "results": results });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn register(
    service: &Shared,
    tables: &mut Tables,
    reference: &str,
    entries: Vec<Entry>,
    base: &str,
) -> Result<Vec<Value>, ApiError> {
    let key = tables::writable(service, tables, reference, "rawFiles.post")?;
    if !tables.by_key[&key].record.is_file_index {
        return Err(ApiError::bad(format!(
            "table {reference:?} is not a file index table: create uploads \
             (POST /tables/{{ref}}/uploads) instead of registering files"
        )));
    }
    let mut sources: Vec<(PathBuf, ContentSummary, Vec<String>)> = Vec::new();
    for entry in &entries {
        sources.push(take_transfer(service, &key, &entry.temp_upload).await?);
    }
    let mut results = Vec::with_capacity(entries.len());
    for (entry, (path, content, consumed)) in entries.into_iter().zip(sources) {
        let record = RawFileRecord {
            id: store::short_id(),
            seq: tables.next_seq,
            name: entry.name,
            created_ms: store::now_ms(),
            content,
            source: entry.temp_upload,
        };
        tables.next_seq += 1;
        let dir = service.table_dir(&key).join("rawfiles");
        let stored = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::rename(&path, dir.join(format!("{}.data", record.id))))
            .and_then(|()| store::write_json(&dir.join(format!("{}.json", record.id)), &record));
        stored.map_err(|err| internal("storing a raw file", err))?;
        mark_used(service, &consumed, &record.id).await?;
        let table = tables.by_key.get_mut(&key).expect("checked above");
        results.push(resource(service, table, &record, base));
        table.raw_files.push(record);
    }
    Ok(results)
}

async fn mark_used(service: &Shared, ids: &[String], by: &str) -> Result<(), ApiError> {
    for id in ids {
        if let Some(slot) = service.transfer(id) {
            let mut slot = slot.lock().await;
            slot.record.consumed_by = Some(by.to_string());
            service
                .save_transfer(&slot.record)
                .map_err(|err| internal("recording the used temp upload", err))?;
        }
    }
    Ok(())
}

fn internal(what: &str, err: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("emulator storage failed while {what}: {err}"),
    )
}

/// `GET /api/v1/tables/{ref}/rawFiles?maxResults=&pageToken=`, in registration order:
/// `{"kind": "rawFileList", "results", "nextPageToken"}`.
pub async fn list_raw_files(
    State(service): State<Shared>,
    Path(table): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    service.count_api("rawFiles.list");
    let bounds = query.bounds()?;
    let base = base_url(&headers);
    let mut tables = service.tables.lock().await;
    let Some(table_state) = existing_table(&service, &mut tables, &table)? else {
        let empty = json!({ "kind": "rawFileList", "results": [], "nextPageToken": null });
        return Ok(Json(empty).into_response());
    };
    let (page, next) = bounds.page(&table_state.raw_files, |file| file.seq);
    let results: Vec<Value> = page
        .iter()
        .map(|file| resource(&service, table_state, file, &base))
        .collect();
    let body = json!({ "kind": "rawFileList", "results": results, "nextPageToken": next });
    Ok(Json(body).into_response())
}

/// The table key and position of raw file `id`.
fn find(by_key: &HashMap<String, Table>, id: &str) -> Option<(String, usize)> {
    by_key.iter().find_map(|(key, table)| {
        let index = table.raw_files.iter().position(|file| file.id == id)?;
        Some((key.clone(), index))
    })
}

fn no_file(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Raw file {id:?} does not exist."),
    )
}

/// `GET /api/v1/rawFiles/{id}`: the resource.
pub async fn get_raw_file(
    State(service): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    service.count_api("rawFiles.get");
    let tables = service.tables.lock().await;
    let (key, index) = find(&tables.by_key, &id).ok_or_else(|| no_file(&id))?;
    let table = &tables.by_key[&key];
    let value = resource(
        &service,
        table,
        &table.raw_files[index],
        &base_url(&headers),
    );
    Ok(Json(value).into_response())
}

/// `DELETE /api/v1/rawFiles/{id}`: `OK`; 404 when missing; 400 in a released version.
pub async fn delete_raw_file(
    State(service): State<Shared>,
    Path(id): Path<String>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    if service.options.redivis_no_raw_file_delete {
        return Err(super::api::unknown_endpoint(method, uri).await);
    }
    service.count_api("rawFiles.delete");
    let mut tables = service.tables.lock().await;
    let (key, index) = find(&tables.by_key, &id).ok_or_else(|| no_file(&id))?;
    let table = tables.by_key.get_mut(&key).expect("just found");
    let released = store::TableRef::parse(&table.record.reference)
        .is_ok_and(|parsed| parsed.version != store::Version::Next);
    if released {
        return Err(ApiError::bad(format!(
            "raw file {id:?} belongs to a released version and cannot be deleted"
        )));
    }
    let record = table.raw_files.remove(index);
    let dir = service.table_dir(&key).join("rawfiles");
    for path in [
        dir.join(format!("{}.json", record.id)),
        dir.join(format!("{}.data", record.id)),
    ] {
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(internal("deleting a raw file", err));
            }
            _ => {}
        }
    }
    Ok((StatusCode::OK, "OK").into_response())
}

/// Where the emulator keeps the bytes of raw file `id` of table `table_ref`; `data_dir` is
/// the emulator's `--data` directory.
pub fn stored_raw_file_path(data_dir: &std::path::Path, table_ref: &str, id: &str) -> PathBuf {
    data_dir
        .join("redivis")
        .join("tables")
        .join(store::table_key(table_ref))
        .join("rawfiles")
        .join(format!("{id}.data"))
}
