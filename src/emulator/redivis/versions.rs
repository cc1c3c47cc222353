//! Datasets and their versions: which table a reference reaches, and the dataset endpoints
//! (`GET /datasets/{ref}`, `POST .../versions`, `POST .../versions/next/release`).
//!
//! A dataset has at most one unreleased version (`:next`) and a list of released ones
//! (`v1.0`, `v2.0`, ...; the last is `current`). Tables live per version: a `:next` table's
//! key keeps `:next`, and a release renames the version's tables (directories included) to
//! `v<N>_0`. From then on `:next` names nothing until a new version is created, which starts
//! with the tables (kind included, uploads and files not) of the current version.
//!
//! Without `--strict-tables`, the first use of a dataset creates it with an unreleased
//! version, as before versions existed. Where Redivis does not document its answer, the
//! choices are in `docs/protocols/redivis.md` (versions): a `:next` reference while no next
//! version exists gets `--redivis-missing-version-status` (404 by default); creating a next
//! version that exists gets 400.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::reply::{ApiError, encode_segment};
use super::store::{self, DatasetRecord, RefError, TableRecord, TableRef, Version, VersionRecord};
use super::{Service, Shared, Table, Tables};

/// What a request does with the table it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Creates something in it: only `:next` will do.
    Write,
    /// Reads it: any existing version.
    Read,
}

/// The key of the table `reference` names, after checking that its dataset and version
/// exist (creating the dataset on first use unless `--strict-tables`). The table itself
/// may not exist yet.
pub fn table_key(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
    access: Access,
) -> Result<(TableRef, String), ApiError> {
    let parsed = store::check_table_ref(reference, access == Access::Write)?;
    let create = !service.options.strict_tables;
    let dataset = dataset(service, &mut tables.datasets, &parsed, create)?;
    let version = version_key(service, dataset, parsed.version)?;
    let key = parsed.key(&version);
    Ok((parsed, key))
}

/// Creates the dataset of `parsed` (with an unreleased version) if it does not exist.
pub fn ensure_dataset(
    service: &Service,
    tables: &mut Tables,
    parsed: &TableRef,
) -> Result<(), ApiError> {
    dataset(service, &mut tables.datasets, parsed, true).map(|_| ())
}

/// The dataset of `parsed`; a missing one is created with an unreleased version when
/// `create`, else 404.
fn dataset<'a>(
    service: &Service,
    datasets: &'a mut HashMap<String, DatasetRecord>,
    parsed: &TableRef,
    create: bool,
) -> Result<&'a mut DatasetRecord, ApiError> {
    let key = parsed.dataset_key();
    if !datasets.contains_key(&key) {
        if !create {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "Dataset {key:?} does not exist (the emulator runs with --strict-tables; \
                     create a table in it with POST /_emulator/redivis/tables)."
                ),
            ));
        }
        let record = new_dataset(&parsed.dataset_reference());
        save(service, &key, &record).map_err(|err| internal("creating the dataset", err))?;
        datasets.insert(key.clone(), record);
    }
    Ok(datasets
        .get_mut(&key)
        .expect("the dataset was just found or made"))
}

fn new_dataset(reference: &str) -> DatasetRecord {
    DatasetRecord {
        reference: reference.to_string(),
        next: Some(VersionRecord {
            number: 1,
            created_ms: store::now_ms(),
            released_ms: None,
            release_notes: None,
        }),
        released: Vec::new(),
    }
}

/// How `version` of `dataset` appears in table keys, if that version exists.
fn version_key(
    service: &Service,
    dataset: &DatasetRecord,
    version: Version,
) -> Result<String, ApiError> {
    let missing = |description: String| ApiError::new(StatusCode::NOT_FOUND, description);
    match version {
        Version::Next if dataset.next.is_some() => Ok("next".to_string()),
        Version::Next => Err(ApiError::new(
            service.options.redivis_missing_version_status,
            format!(
                "Dataset {:?} has no unreleased version: {} is released. Create the next \
                 version (POST /datasets/{}/versions) before uploading.",
                dataset.reference,
                current_tag(dataset).unwrap_or_else(|| "its latest version".into()),
                encode_segment(&dataset.reference)
            ),
        )),
        Version::Current => match dataset.released.last() {
            Some(current) => Ok(Version::key_part(current.number, 0)),
            None => Err(missing(format!(
                "Dataset {:?} has no released version yet; name its unreleased one with :next.",
                dataset.reference
            ))),
        },
        Version::Tag { major, minor } => {
            let released = minor == 0 && dataset.released.iter().any(|v| v.number == major);
            if released {
                Ok(Version::key_part(major, minor))
            } else {
                Err(missing(format!(
                    "Dataset {:?} has no released version v{major}.{minor}.",
                    dataset.reference
                )))
            }
        }
    }
}

fn current_tag(dataset: &DatasetRecord) -> Option<String> {
    dataset.released.last().map(|v| format!("v{}.0", v.number))
}

fn save(service: &Service, key: &str, record: &DatasetRecord) -> std::io::Result<()> {
    store::write_json(&dataset_path(service, key), record)
}

fn dataset_path(service: &Service, key: &str) -> std::path::PathBuf {
    service.dir.join("datasets").join(format!("{key}.json"))
}

fn internal(what: &str, err: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("emulator storage failed while {what}: {err}"),
    )
}

/// Loads `datasets/` and gives every loaded table a dataset (a table written before
/// versions existed belongs to a dataset whose `:next` is open).
pub fn load(dir: &std::path::Path, tables: &mut Tables) -> std::io::Result<()> {
    for path in store::json_files(&dir.join("datasets"))? {
        let record: DatasetRecord = store::read_json(&path)?;
        if let Ok(parsed) = TableRef::parse_dataset(&record.reference) {
            tables.datasets.insert(parsed.dataset_key(), record);
        }
    }
    for table in tables.by_key.values() {
        if let Ok(parsed) = TableRef::parse(&table.record.reference) {
            let record = new_dataset(&parsed.dataset_reference());
            tables
                .datasets
                .entry(parsed.dataset_key())
                .or_insert(record);
        }
    }
    Ok(())
}

/// The version resource (`kind: "version"`).
fn version_resource(dataset: &DatasetRecord, version: &VersionRecord) -> Value {
    let released = version.released_ms.is_some();
    let qualifier = if released {
        Version::key_part(version.number, 0)
    } else {
        "next".to_string()
    };
    let qualified = format!("{}:{qualifier}", dataset.reference);
    json!({
        "kind": "version",
        "tag": format!("v{}.0", version.number),
        "isReleased": released,
        "datasetUri": format!("/datasets/{}", encode_segment(&qualified)),
        "createdAt": version.created_ms,
        "releasedAt": version.released_ms,
        "releaseNotes": version.release_notes,
    })
}

/// The dataset resource: `nextVersion` is `null` when there is no unreleased version.
fn dataset_resource(dataset: &DatasetRecord) -> Value {
    let version = |record: Option<&VersionRecord>| {
        record.map_or(Value::Null, |record| version_resource(dataset, record))
    };
    let name = dataset
        .reference
        .split_once('.')
        .map_or(dataset.reference.as_str(), |(_, name)| name);
    json!({
        "kind": "dataset",
        "name": name,
        "uri": format!("/datasets/{}", encode_segment(&dataset.reference)),
        "qualifiedReference": dataset.reference,
        "currentVersion": version(dataset.released.last()),
        "nextVersion": version(dataset.next.as_ref()),
    })
}

/// The dataset `reference` names (`owner.dataset[:version]`), checking a named version.
fn named_dataset<'a>(
    service: &Service,
    tables: &'a mut Tables,
    reference: &str,
) -> Result<(String, &'a mut DatasetRecord), ApiError> {
    let parsed = TableRef::parse_dataset(reference).map_err(|err| match err {
        RefError::Malformed(why) | RefError::Released(why) => ApiError::bad(why),
    })?;
    let create = !service.options.strict_tables;
    let record = dataset(service, &mut tables.datasets, &parsed, create)?;
    if parsed.has_version() {
        version_key(service, record, parsed.version)?;
    }
    Ok((parsed.dataset_key(), record))
}

/// `GET /api/v1/datasets/{ref}`.
pub async fn get_dataset(State(service): State<Shared>, Path(reference): Path<String>) -> Response {
    service.count_api("datasets.get");
    let mut tables = service.tables.lock().await;
    match named_dataset(&service, &mut tables, &reference) {
        Ok((_, record)) => Json(dataset_resource(record)).into_response(),
        Err(err) => err.into_response(),
    }
}

/// The window between a release and the opening of the next version, made deterministic
/// for tests (`POST /_emulator/redivis/release-window`): the dataset of the table
/// `reference` is released, `request` runs (and finds no `:next`), then a new version is
/// opened, all under the tables' lock the caller holds. A client thus meets the refusal
/// of a released version and then, at once, a dataset with a next version.
pub fn in_release_window<T>(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
    request: impl FnOnce(&mut Tables) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let dataset = store::check_table_ref(reference, true)?.dataset_reference();
    release_next(service, tables, &dataset, None)?;
    let answer = request(tables);
    open_next_version(service, tables, &dataset)?;
    answer
}

/// `POST /api/v1/datasets/{ref}/versions`: opens the next version; 400 when one is open.
pub async fn create_version(
    State(service): State<Shared>,
    Path(reference): Path<String>,
) -> Response {
    service.count_api("versions.post");
    let mut tables = service.tables.lock().await;
    let created = open_next_version(&service, &mut tables, &reference);
    match created {
        Ok(value) => Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

fn open_next_version(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
) -> Result<Value, ApiError> {
    let (key, record) = named_dataset(service, tables, reference)?;
    if let Some(next) = &record.next {
        return Err(ApiError::bad(format!(
            "Dataset {:?} already has an unreleased version (v{}.0); release it before \
             creating another.",
            record.reference, next.number
        )));
    }
    let number = record.released.last().map_or(1, |v| v.number + 1);
    record.next = Some(VersionRecord {
        number,
        created_ms: store::now_ms(),
        released_ms: None,
        release_notes: None,
    });
    let record = record.clone();
    save(service, &key, &record).map_err(|err| internal("creating the version", err))?;
    if let Some(current) = record.released.last() {
        carry_tables_over(service, &mut tables.by_key, &key, current.number)
            .map_err(|err| internal("creating the version's tables", err))?;
    }
    let next = record.next.as_ref().expect("the version was just opened");
    Ok(version_resource(&record, next))
}

/// Gives the new `:next` version the tables of released version `number` (empty).
fn carry_tables_over(
    service: &Service,
    by_key: &mut HashMap<String, Table>,
    dataset_key: &str,
    number: u32,
) -> std::io::Result<()> {
    let released = Version::key_part(number, 0);
    let carried: Vec<TableRecord> = by_key
        .values()
        .filter_map(|table| {
            let parsed = TableRef::parse(&table.record.reference).ok()?;
            let in_version = parsed.dataset_key() == dataset_key
                && parsed.version
                    == Version::Tag {
                        major: number,
                        minor: 0,
                    };
            in_version.then(|| TableRecord {
                reference: parsed.with_version("next"),
                created_ms: store::now_ms(),
                is_file_index: table.record.is_file_index,
            })
        })
        .collect();
    for record in carried {
        let key = store::table_key(&record.reference);
        if !by_key.contains_key(&key) {
            service.insert_table(by_key, record)?;
        }
    }
    tracing::debug!(dataset = dataset_key, from = %released, "next version opened");
    Ok(())
}

/// `POST /api/v1/datasets/{ref}/versions/next/release` (body `{"releaseNotes"}` optional).
pub async fn release_version(
    State(service): State<Shared>,
    Path((reference, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    service.count_api("versions.release");
    if !version.eq_ignore_ascii_case("next") {
        return ApiError::bad(format!(
            "only the unreleased version can be released: POST .../versions/next/release, \
             not {version:?}"
        ))
        .into_response();
    }
    let notes = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("releaseNotes")?.as_str().map(str::to_string));
    let mut tables = service.tables.lock().await;
    match release_next(&service, &mut tables, &reference, notes) {
        Ok(value) => Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

fn release_next(
    service: &Service,
    tables: &mut Tables,
    reference: &str,
    notes: Option<String>,
) -> Result<Value, ApiError> {
    let (key, record) = named_dataset(service, tables, reference)?;
    let Some(mut next) = record.next.take() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Dataset {:?} has no unreleased version to release.",
                record.reference
            ),
        ));
    };
    next.released_ms = Some(store::now_ms());
    next.release_notes = notes;
    record.released.push(next.clone());
    let record = record.clone();
    save(service, &key, &record).map_err(|err| internal("releasing the version", err))?;
    rename_next_tables(service, &mut tables.by_key, &key, next.number)
        .map_err(|err| internal("releasing the version's tables", err))?;
    Ok(version_resource(&record, &next))
}

/// Renames the `:next` tables of `dataset_key` to released version `number`.
fn rename_next_tables(
    service: &Service,
    by_key: &mut HashMap<String, Table>,
    dataset_key: &str,
    number: u32,
) -> std::io::Result<()> {
    let version = Version::key_part(number, 0);
    let keys: Vec<String> = by_key
        .iter()
        .filter(|(_, table)| {
            TableRef::parse(&table.record.reference).is_ok_and(|parsed| {
                parsed.dataset_key() == dataset_key && parsed.version == Version::Next
            })
        })
        .map(|(key, _)| key.clone())
        .collect();
    for old_key in keys {
        let mut table = by_key.remove(&old_key).expect("the key was just listed");
        let parsed = TableRef::parse(&table.record.reference).expect("the reference parsed");
        table.record.reference = parsed.with_version(&version);
        let new_key = store::table_key(&table.record.reference);
        std::fs::rename(service.table_dir(&old_key), service.table_dir(&new_key))?;
        store::write_json(
            &service.table_dir(&new_key).join("table.json"),
            &table.record,
        )?;
        by_key.insert(new_key, table);
    }
    Ok(())
}
