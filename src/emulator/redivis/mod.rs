//! The Redivis emulator: the REST upload API under `/api/v1` and the GCS-style resumable
//! session URLs it hands out under `/upload/...`, with state on disk (see [`store`]).
//! "Protocol §N" here is `docs/protocols/redivis.md`.
//!
//! # Routes
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/v1/tables/{ref}/resumableUpload?size=N` (or JSON `{"size": N}`) | legacy flow: `{"kind":"resumableUpload","id","url"}`, `url` = `http://{host}/upload/sessions/{id}` |
//! | `POST /api/v1/tables/{ref}/tempUploads` | current flow: `{"kind":"tempUploadList","results":[{"kind":"tempUpload","id","url","name","size":"N","resumable"}]}`, `url` = `http://{host}/upload/temp/{id}` |
//! | `POST /api/v1/tables/{ref}/uploads` | upload.post: JSON (`tempUploadId` / `resumableUploadId`), `multipart/form-data` (part `metadata` first, then `data`), or the simple form (query `name`/`type`, raw body) |
//! | `GET /api/v1/tables/{ref}/uploads?maxResults=&pageToken=` | list, oldest first |
//! | `HEAD`/`GET`/`DELETE /api/v1/tables/{ref}/uploads/{name or id}` | by escaped name (or by the id in the returned `uri`) |
//! | `GET /api/v1/tables/{ref}` | the table: `{"kind":"table","uri","name","isFileIndex",...}` ([`tables`]) |
//! | `POST`/`GET /api/v1/tables/{ref}/rawFiles` | file index tables: register `{"files":[{"name","tempUploadId"}]}` (201), list ([`rawfiles`]) |
//! | `GET`/`DELETE /api/v1/rawFiles/{id}` | one file of a file index table |
//! | `GET /api/v1/datasets/{ref}` | the dataset, `nextVersion` null when there is no unreleased version ([`versions`]) |
//! | `POST /api/v1/datasets/{ref}/versions` | opens the next version (400 when one is open) |
//! | `POST /api/v1/datasets/{ref}/versions/next/release` | releases it: `:next` names nothing until the next one |
//! | `POST /api/v1/datasets/{ref}/tables` `{"name","isFileIndex"}` | a table in the unreleased version |
//! | `PUT /upload/sessions/{id}` | chunk (`Content-Range: bytes a-b/N`) or status query (`bytes */N`) |
//! | `POST /upload/temp/{id}` + `x-goog-resumable: start` | initiates a session: 201 + `Location` |
//! | `PUT /upload/temp/{id}` | non-resumable body: stores exactly the bytes received |
//! | `DELETE /upload/sessions/{id}` (or `/upload/temp/{id}`) | cancels: 499, and 499 afterwards |
//! | `GET /_emulator/redivis/stats` | counters: API requests by endpoint, session PUTs, status queries, 429s, uploads created |
//! | `POST /_emulator/redivis/tables` `{"reference": "...", "isFileIndex": false}` | creates a table and its dataset (needed with `--strict-tables`) |
//! | `POST /_emulator/redivis/poison/{id}` | the session answers 410 from now on |
//! | `POST /_emulator/redivis/expire/{id}` | the session is past its lifetime (404) from now on |
//! | `POST /_emulator/redivis/release-window` `{"endpoint": "uploads.post"}` | the next write of that endpoint (`uploads.post`, `resumableUpload`, `tempUploads`, `rawFiles.post`) meets the window between a release and the next version ([`versions::in_release_window`]) |
//!
//! Absolute URLs are built from the request's `Host` header, so they work with port 0.
//! Every API request needs `Authorization: Bearer <token>` (any non-empty token, or exactly
//! `--redivis-token`); session URLs accept a token and do not need one.
//!
//! # Session PUT algorithm (the GCS resumable protocol, `PUT /upload/sessions/{id}`)
//!
//! 1. Unknown or past `--session-ttl` → 404; cancelled → 499; poisoned → 410.
//! 2. `Content-Range: bytes */N` (or an empty PUT without it) is a status query: a total
//!    that differs from the declared one → 400; a session holding all N bytes is finalized
//!    → 200 + JSON object metadata; otherwise 308 with `Range: bytes=0-<last persisted>`,
//!    no `Range` when nothing is persisted, never `Location`.
//! 3. `bytes a-b/N` (or `/*`) is a chunk: totals must agree with the declared size and with
//!    earlier chunks (400); `a` past the persisted offset → 400 "exceeds already uploaded
//!    size"; a non-final chunk shorter than 256 KiB → 400 with the GCS text; a body of a
//!    different length than announced → 400, nothing kept. A chunk starting before the
//!    persisted offset (overlap) is accepted: the bytes already held are skipped, not
//!    compared.
//! 4. The body streams to `sessions/<id>.data` (no buffering of whole chunks). With
//!    `--redivis-partial-persistence` a non-final chunk keeps only a random 256 KiB-aligned
//!    prefix. An injected fault (see [`super::faults`]) strikes after the body is read and
//!    keeps the prefix its `persist` says; a drop strikes after half of the body.
//! 5. When all N bytes are held the session completes → 200 + metadata (after
//!    `--redivis-final-chunk-delay`); later PUTs get 200 again. Otherwise 308 as in step 2.
//!
//! # Upload lifecycle
//!
//! An upload is `queued` for the first half of `--redivis-processing-delay`, then `running`,
//! then `completed` or `failed` with `errorMessage`; computed from timestamps on read. It
//! fails when its name matches `--redivis-fail-name-pattern`, or when its import does: the
//! parse options are checked at upload.post (a wrong JSON type or an unknown `type` is 400,
//! a delimiter that is not one character fails the import) and a delimited file up to
//! `--redivis-import-check-max` is read under them ([`parse`]: a bad record fails it unless
//! `skipBadRecords`). The options are echoed on GET with their defaults. `size` and `hash`
//! (MD5 hex) are present from the start (with `--redivis-corrupt-uploads N`, the first N
//! uploads report the MD5 of other bytes, as if damaged on the way), `numRows` (rows the import read, or text lines
//! minus a header row for a file it did not read), `numBytes` (= size) and
//! `badRecordsCount` once completed. Numbers are JSON integers, or strings with
//! `--redivis-numbers-as-strings`.
//!
//! Duplicate names (equal after escaping) are renamed by default: `data.csv` becomes
//! `data (1).csv`, then `data (2).csv` (the counter goes before the last extension);
//! `--redivis-duplicate-names reject` answers 409 instead. An empty name becomes
//! `untitled_upload.<type>` (`.csv` for delimited).
//!
//! # Protocol §12 coverage
//!
//! Cases 1–21 are implemented, with these choices: (5) a released version gets 400, and a
//! `:next` while the dataset has none gets `--redivis-missing-version-status` (404);
//! (8) an unknown, unfinished or already-used upload id gets 400 at once (the
//! "fail later" alternative is not offered); (16) overlap is always accepted-and-skipped;
//! (19) slow responses, 5xx/408/429 after partial persistence and resets mid-body come from
//! the fault script; a 308 without `Range` after a data PUT comes from a fault with
//! `persist: none` followed by a status query, or from partial persistence keeping 0 bytes;
//! (20) a token on session URLs is accepted, never required; (21) a temp upload whose plain
//! PUT carried a different number of bytes than its declared size fails upload.post with 400.
//! `X-REDIVIS-WARNING` is never sent; `transferSpecification` uploads are not emulated
//! (400). Responses produced by the fault layer carry no `X-RateLimit-*`. The rate limit
//! defaults to the documented 1,000 requests per 60 s (`--rate-limit` enforces it;
//! `--rate-limit-max`, `--rate-limit-window` change it). Every choice made where Redivis
//! does not document its answer is listed in `docs/protocols/redivis.md`.

mod api;
mod parse;
pub(crate) mod ratelimit;
mod rawfiles;
mod reply;
mod session;
pub mod store;
mod tables;
#[cfg(test)]
mod tests;
mod versions;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

pub use rawfiles::stored_raw_file_path;
pub use store::{escape_name, stored_upload_path};

use super::EmulatorError;
use crate::config::Secret;
use store::{Digest, RawFileRecord, TableRecord, Transfer, UploadRecord};

/// What to do with an upload.post whose name is already taken (after escaping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DuplicateNames {
    /// Give the new upload a free name: `data (1).csv`.
    Rename,
    /// Answer 409.
    Reject,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedivisOptions {
    /// Bearer token the API accepts; by default any non-empty token is accepted.
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
    pub redivis_token: Option<Secret>,
    /// Time an upload takes from `queued` through `running` to `completed`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub redivis_processing_delay: Duration,
    /// Uploads whose name matches this glob end `failed` instead of `completed`.
    #[arg(long, value_name = "GLOB")]
    pub redivis_fail_name_pattern: Option<String>,
    /// Send `size`, `numRows`, `numBytes` as strings (older API docs) instead of integers.
    #[arg(long)]
    pub redivis_numbers_as_strings: bool,
    /// Keep only a random 256 KiB-aligned prefix of every non-final session chunk.
    #[arg(long)]
    pub redivis_partial_persistence: bool,
    /// Lifetime of resumable sessions and temp uploads; older ones answer 404.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// Enforce the API rate limit (429 + Retry-After past it).
    #[arg(long)]
    pub rate_limit: bool,
    /// API requests allowed per window (announced in `X-RateLimit-Limit` either way).
    #[arg(long, default_value_t = 1000)]
    pub rate_limit_max: u32,
    /// Length of the sliding rate-limit window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub rate_limit_window: Duration,
    /// Tables must be created first (`POST /_emulator/redivis/tables`); unknown ones are 404.
    #[arg(long)]
    pub strict_tables: bool,
    /// What upload.post does with a name already taken on the table.
    #[arg(long, value_enum, default_value_t = DuplicateNames::Rename)]
    pub redivis_duplicate_names: DuplicateNames,
    /// Test hook: delay (ms) the answer to a final chunk after it is persisted.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub redivis_final_chunk_delay: u64,
    /// Test hook: delay (ms) the answer to upload.post after the upload is created.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub redivis_post_delay: u64,
    /// Test hook: create the upload of the first N upload.post requests, then close their
    /// connections without an answer.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub redivis_lose_post: u64,
    /// Test hook: the first N uploads created report the MD5 of other bytes than those sent
    /// (`hash`), as a service that damaged them on the way would.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub redivis_corrupt_uploads: u32,
    /// Test hook: delay (ms) the answer to `rawFiles` after the files are registered.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub redivis_raw_files_delay: u64,
    /// Status for a `:next` reference while the dataset has no unreleased version.
    #[arg(long, value_name = "STATUS", default_value = "404", value_parser = parse_status)]
    pub redivis_missing_version_status: axum::http::StatusCode,
    /// Delimited uploads up to this many bytes are checked against their parse options;
    /// larger ones are taken as well-formed.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub redivis_import_check_max: u64,
    /// Answer `DELETE /rawFiles/{id}` like an unknown route (404), as a Redivis without
    /// that endpoint would.
    #[arg(long)]
    pub redivis_no_raw_file_delete: bool,
}

fn parse_status(value: &str) -> Result<axum::http::StatusCode, String> {
    value
        .parse::<u16>()
        .ok()
        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
        .filter(|code| code.is_client_error())
        .ok_or_else(|| format!("{value:?} is not a 4xx status code"))
}

fn parse_secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

impl Default for RedivisOptions {
    fn default() -> RedivisOptions {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            options: RedivisOptions,
        }
        Wrapper::parse_from(["redivis"]).options
    }
}

/// A transfer in memory: its record, plus the digest of its bytes while that digest still
/// covers exactly the persisted bytes (`None` after a truncation or a restart).
pub(crate) struct Slot {
    pub record: Transfer,
    pub digest: Option<Digest>,
}

pub(crate) struct Table {
    pub record: TableRecord,
    /// In creation order (`seq`).
    pub uploads: Vec<UploadRecord>,
    /// A file index table's files, in registration order (`seq`).
    pub raw_files: Vec<RawFileRecord>,
}

/// Datasets and tables, under one lock: a release renames tables.
#[derive(Default)]
pub(crate) struct Tables {
    pub by_key: HashMap<String, Table>,
    /// By dataset key (`owner.dataset`, lower case).
    pub datasets: HashMap<String, store::DatasetRecord>,
    /// The next `seq` of an upload or raw file.
    pub next_seq: u64,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    api_requests: BTreeMap<&'static str, u64>,
    session_puts: u64,
    status_queries: u64,
    temp_puts: u64,
    session_initiations: u64,
    responses_429: u64,
    uploads_created: u64,
    /// upload.post answers lost on purpose (`--redivis-lose-post`).
    answers_lost: u64,
    /// Writes refused inside a release window (`/_emulator/redivis/release-window`).
    release_windows: u64,
}

/// The emulator's shared state.
pub(crate) struct Service {
    pub options: RedivisOptions,
    pub fail_names: Option<globset::GlobMatcher>,
    pub dir: PathBuf,
    transfers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    pub tables: tokio::sync::Mutex<Tables>,
    limiter: ratelimit::Limiter,
    stats: Mutex<Stats>,
    pub rng: Mutex<StdRng>,
    /// Uploads still to be damaged (`--redivis-corrupt-uploads`).
    corrupt_left: std::sync::atomic::AtomicU32,
    /// The write endpoint whose next request meets a release window, when one is armed.
    release_window: Mutex<Option<String>>,
}

type Shared = Arc<Service>;

impl Service {
    fn open(options: &RedivisOptions, dir: &Path, seed: u64) -> Result<Service, EmulatorError> {
        let data_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EmulatorError::Data { path, source }
        };
        let fail_names = match &options.redivis_fail_name_pattern {
            None => None,
            Some(pattern) => Some(
                globset::Glob::new(pattern)
                    .map_err(|err| {
                        EmulatorError::Options(format!(
                            "--redivis-fail-name-pattern {pattern:?} is not a glob: {err}"
                        ))
                    })?
                    .compile_matcher(),
            ),
        };
        for sub in ["sessions", "tables", "tmp", "datasets"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(data_error(&dir.join(sub)))?;
        }
        // Inline bodies still being received when the emulator stopped will never finish.
        let tmp = dir.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(data_error(&tmp))? {
            let path = entry.map_err(data_error(&tmp))?.path();
            std::fs::remove_file(&path).map_err(data_error(&path))?;
        }
        let mut transfers = HashMap::new();
        for path in store::json_files(&dir.join("sessions")).map_err(data_error(dir))? {
            let record: Transfer = store::read_json(&path).map_err(data_error(&path))?;
            let slot = Slot {
                record,
                digest: None,
            };
            transfers.insert(
                slot.record.id.clone(),
                Arc::new(tokio::sync::Mutex::new(slot)),
            );
        }
        let mut tables = load_tables(&dir.join("tables")).map_err(data_error(dir))?;
        versions::load(dir, &mut tables).map_err(data_error(dir))?;
        Ok(Service {
            options: options.clone(),
            fail_names,
            dir: dir.to_path_buf(),
            transfers: Mutex::new(transfers),
            tables: tokio::sync::Mutex::new(tables),
            limiter: ratelimit::Limiter::new(
                options.rate_limit_max,
                options.rate_limit_window,
                options.rate_limit,
            ),
            stats: Mutex::new(Stats::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            corrupt_left: std::sync::atomic::AtomicU32::new(options.redivis_corrupt_uploads),
            release_window: Mutex::new(None),
        })
    }

    /// What a new upload records of its bytes: `summary`, or, while
    /// `--redivis-corrupt-uploads` lasts, the same with the MD5 of other bytes.
    pub fn recorded(&self, mut summary: store::ContentSummary) -> store::ContentSummary {
        use std::sync::atomic::Ordering::SeqCst;
        let damaged = self
            .corrupt_left
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if damaged {
            use md5::Digest as _;
            summary.md5 = hex::encode(md5::Md5::digest(summary.md5.as_bytes()));
        }
        summary
    }

    pub fn transfer(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        self.transfers
            .lock()
            .expect("transfer map lock is never poisoned")
            .get(id)
            .cloned()
    }

    /// Registers a new transfer and persists its record and its (empty) data file.
    pub fn add_transfer(&self, record: Transfer) -> std::io::Result<()> {
        std::fs::File::create(self.data_path(&record.id))?;
        store::write_json(&self.record_path(&record.id), &record)?;
        let id = record.id.clone();
        let slot = Slot {
            record,
            digest: Some(Digest::default()),
        };
        self.transfers
            .lock()
            .expect("transfer map lock is never poisoned")
            .insert(id, Arc::new(tokio::sync::Mutex::new(slot)));
        Ok(())
    }

    pub fn save_transfer(&self, record: &Transfer) -> std::io::Result<()> {
        store::write_json(&self.record_path(&record.id), record)
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join("sessions").join(format!("{id}.data"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join("sessions").join(format!("{id}.json"))
    }

    pub fn table_dir(&self, key: &str) -> PathBuf {
        self.dir.join("tables").join(key)
    }

    /// Creates a table's directories and record, and adds it to the map.
    pub fn insert_table(
        &self,
        by_key: &mut HashMap<String, Table>,
        record: TableRecord,
    ) -> std::io::Result<()> {
        let key = store::table_key(&record.reference);
        let dir = self.table_dir(&key);
        for sub in ["uploads", "files", "rawfiles"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        store::write_json(&dir.join("table.json"), &record)?;
        by_key.insert(
            key,
            Table {
                record,
                uploads: Vec::new(),
                raw_files: Vec::new(),
            },
        );
        Ok(())
    }

    pub fn expired(&self, record: &Transfer) -> bool {
        let age = store::now_ms().saturating_sub(record.created_ms);
        u128::from(age) >= self.options.session_ttl.as_millis()
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.stats.lock().expect("stats lock is never poisoned"));
    }

    /// Whether this upload.post answer is to be lost (`--redivis-lose-post`); counts it.
    pub fn lose_post_answer(&self) -> bool {
        let mut stats = self.stats.lock().expect("stats lock is never poisoned");
        let lose = stats.answers_lost < self.options.redivis_lose_post;
        if lose {
            stats.answers_lost += 1;
        }
        lose
    }

    /// Whether this write of `endpoint` meets the armed release window; disarms it and
    /// counts it.
    pub fn takes_release_window(&self, endpoint: &str) -> bool {
        let mut armed = self
            .release_window
            .lock()
            .expect("release window lock is never poisoned");
        if armed.as_deref() != Some(endpoint) {
            return false;
        }
        *armed = None;
        drop(armed);
        self.count(|stats| stats.release_windows += 1);
        true
    }

    pub fn count_api(&self, endpoint: &'static str) {
        self.count(|stats| *stats.api_requests.entry(endpoint).or_default() += 1);
    }

    /// A JSON number, or a string with `--redivis-numbers-as-strings`.
    pub fn number(&self, value: u64) -> serde_json::Value {
        if self.options.redivis_numbers_as_strings {
            serde_json::Value::String(value.to_string())
        } else {
            serde_json::Value::from(value)
        }
    }
}

/// Reads `tables/`: records, uploads and raw files; finishes the import checks a stop
/// interrupted.
fn load_tables(tables_dir: &Path) -> std::io::Result<Tables> {
    let mut tables = Tables::default();
    for entry in std::fs::read_dir(tables_dir)? {
        let table_dir = entry?.path();
        let record_path = table_dir.join("table.json");
        if !record_path.exists() {
            continue;
        }
        let record: TableRecord = store::read_json(&record_path)?;
        let mut uploads: Vec<UploadRecord> = Vec::new();
        for path in store::json_files(&table_dir.join("uploads"))? {
            let mut upload: UploadRecord = store::read_json(&path)?;
            if upload.importing {
                finish_import(&table_dir, &mut upload)?;
                store::write_json(&path, &upload)?;
            }
            uploads.push(upload);
        }
        let mut raw_files: Vec<RawFileRecord> = Vec::new();
        for path in store::json_files(&table_dir.join("rawfiles"))? {
            raw_files.push(store::read_json(&path)?);
        }
        let seqs = uploads
            .iter()
            .map(|u| u.seq)
            .chain(raw_files.iter().map(|f| f.seq));
        tables.next_seq = seqs.fold(tables.next_seq, |next, seq| next.max(seq + 1));
        uploads.sort_by_key(|upload| upload.seq);
        raw_files.sort_by_key(|file| file.seq);
        tables.by_key.insert(
            store::table_key(&record.reference),
            Table {
                record,
                uploads,
                raw_files,
            },
        );
    }
    Ok(tables)
}

/// Runs the import check an emulator stop interrupted (blocking; at start only).
fn finish_import(table_dir: &Path, upload: &mut UploadRecord) -> std::io::Result<()> {
    let path = table_dir
        .join("files")
        .join(store::file_component(&upload.name));
    let verdict = match parse::import_options(&upload.options) {
        Ok(import) => parse::check_delimited(&path, &import)?,
        Err(message) => parse::ImportVerdict {
            rows: 0,
            bad_records: 0,
            error: Some(message),
        },
    };
    api::apply_verdict(upload, verdict);
    Ok(())
}

/// The Redivis routes, with partial persistence drawn from a generator seeded with 0.
pub fn router(options: &RedivisOptions, data_dir: &Path) -> Result<Router, EmulatorError> {
    router_seeded(options, data_dir, 0)
}

/// The Redivis routes; `seed` drives the random choices of partial persistence.
pub fn router_seeded(
    options: &RedivisOptions,
    data_dir: &Path,
    seed: u64,
) -> Result<Router, EmulatorError> {
    let service: Shared = Arc::new(Service::open(options, data_dir, seed)?);
    let api = Router::new()
        .route(
            "/api/v1/tables/{table}/resumableUpload",
            post(api::resumable_upload),
        )
        .route(
            "/api/v1/tables/{table}/tempUploads",
            post(api::temp_uploads),
        )
        .route(
            "/api/v1/tables/{table}/uploads",
            get(api::list_uploads)
                .post(api::post_upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/tables/{table}/uploads/{upload}",
            get(api::get_upload)
                .head(api::head_upload)
                .delete(api::delete_upload),
        )
        .route("/api/v1/tables/{table}", get(tables::get_table))
        .route(
            "/api/v1/tables/{table}/rawFiles",
            get(rawfiles::list_raw_files)
                .post(rawfiles::post_raw_files)
                .layer(DefaultBodyLimit::max(16 << 20)),
        )
        .route(
            "/api/v1/rawFiles/{id}",
            get(rawfiles::get_raw_file).delete(rawfiles::delete_raw_file),
        )
        .route("/api/v1/datasets/{dataset}", get(versions::get_dataset))
        .route(
            "/api/v1/datasets/{dataset}/tables",
            post(tables::create_table_in_dataset),
        )
        .route(
            "/api/v1/datasets/{dataset}/versions",
            post(versions::create_version),
        )
        .route(
            "/api/v1/datasets/{dataset}/versions/{version}/release",
            post(versions::release_version),
        )
        .route("/api/{*rest}", any(api::unknown_endpoint))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            api::api_layer,
        ));
    let sessions = Router::new()
        .route(
            "/upload/sessions/{id}",
            put(session::put_session).delete(session::delete_transfer),
        )
        .route(
            "/upload/temp/{id}",
            post(session::initiate)
                .put(session::put_temp)
                .delete(session::delete_transfer),
        );
    let hooks = Router::new()
        .route("/_emulator/redivis/stats", get(stats))
        .route("/_emulator/redivis/tables", post(tables::create_table_hook))
        .route("/_emulator/redivis/poison/{id}", post(session::poison))
        .route("/_emulator/redivis/expire/{id}", post(session::expire))
        .route(
            "/_emulator/redivis/release-window",
            post(arm_release_window),
        );
    Ok(api.merge(sessions).merge(hooks).with_state(service))
}

/// The write endpoints a release window can be armed for.
const WINDOW_ENDPOINTS: [&str; 4] = [
    "uploads.post",
    "resumableUpload",
    "tempUploads",
    "rawFiles.post",
];

/// `POST /_emulator/redivis/release-window` `{"endpoint": "..."}`.
async fn arm_release_window(
    axum::extract::State(service): axum::extract::State<Shared>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let endpoint = request["endpoint"].as_str().unwrap_or_default();
    if !WINDOW_ENDPOINTS.contains(&endpoint) {
        let message = format!("endpoint must be one of {WINDOW_ENDPOINTS:?}, not {endpoint:?}");
        return reply::ApiError::bad(message).into_response();
    }
    *service
        .release_window
        .lock()
        .expect("release window lock is never poisoned") = Some(endpoint.to_string());
    axum::Json(serde_json::json!({ "armed": endpoint })).into_response()
}

async fn stats(
    axum::extract::State(service): axum::extract::State<Shared>,
) -> axum::Json<serde_json::Value> {
    let stats = service.stats.lock().expect("stats lock is never poisoned");
    axum::Json(serde_json::to_value(&*stats).expect("stats serialize to JSON"))
}
