//! The Redivis backend against the in-process emulator: real HTTP on 127.0.0.1, real files
//! in temp dirs, a real sled store. One test per resume rule and per exactly-once rule,
//! counting requests through the emulator's stats and the backend's own counter.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::md5_hex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use upsync::config::{
    DEFAULT_RATE_LIMIT_WINDOW, FolderConfig, NetConfig, RedivisConfig, RedivisProtocol, Secret,
    Target,
};
use upsync::emulator::{self, EmulatorOptions, RunningEmulator};
use upsync::fingerprint::Fingerprint;
use upsync::net::Bandwidth;
use upsync::queue::{FileKey, Job, Store};
use upsync::upload::redivis::poll::PollConfig;
use upsync::upload::redivis::ratelimit::PacerConfig;
use upsync::upload::redivis::versions::NEXT_VERSION_OPENED;
use upsync::upload::redivis::{INLINE_UPLOAD_MAX, Imported, RedivisBackend, Tuning};
use upsync::upload::retry::{CallScope, RetryPolicy};
use upsync::upload::{
    Delivery, Disposition, ErrorKind, LiveProgress, UploadError, UploadJob, Uploaded,
};

const TABLE: &str = "owner.dataset:next.table";
const TOKEN: &str = "redivis-test-token-5b1e93";
const KIB: u64 = 1024;
const CHUNK: u64 = 256 * KIB;

struct Harness {
    _tmp: tempfile::TempDir,
    emulator: RunningEmulator,
    store: Store,
    inbox: PathBuf,
    http: reqwest::Client,
}

/// Fast retries and polls; small files go through sessions unless a test says otherwise.
/// Faults here are scripted per request, so the remote is never judged down by them (the
/// daemon's end-to-end tests cover that).
fn tuning() -> Tuning {
    Tuning {
        retry: RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            budget: Duration::from_secs(30),
        },
        down_after: u32::MAX,
        poll: PollConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        inline_max: 0,
        ..Tuning::default()
    }
}

fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + u64::from(seed) * 7) % 251) as u8)
        .collect()
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut EmulatorOptions)) -> Harness {
        let tmp = tempfile::tempdir().expect("temp dir can be created");
        let mut options = EmulatorOptions::with_data_dir(tmp.path().join("remote"));
        options.redivis.redivis_token = Some(Secret::new(TOKEN));
        options.redivis.redivis_processing_delay = Duration::from_millis(100);
        adjust(&mut options);
        let emulator = emulator::start("127.0.0.1:0", options)
            .await
            .expect("emulator starts on a free port");
        let inbox = tmp.path().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        let store = Store::open(&tmp.path().join("state")).expect("store opens");
        Harness {
            _tmp: tmp,
            emulator,
            store,
            inbox,
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.emulator.addr)
    }

    fn config(&self, protocol: RedivisProtocol, chunk_size: u64) -> RedivisConfig {
        RedivisConfig {
            api_url: format!("{}/api/v1", self.base()),
            token: Secret::new(TOKEN),
            chunk_size,
            protocol,
            rate_limit_window: DEFAULT_RATE_LIMIT_WINDOW,
            net: NetConfig {
                idle_timeout: Duration::from_secs(10),
                ..NetConfig::default()
            },
        }
    }

    fn backend(&self) -> RedivisBackend {
        self.backend_with(RedivisProtocol::ResumableUpload, CHUNK, tuning())
    }

    fn backend_with(
        &self,
        protocol: RedivisProtocol,
        chunk_size: u64,
        tuning: Tuning,
    ) -> RedivisBackend {
        RedivisBackend::with_tuning(
            &self.config(protocol, chunk_size),
            tuning,
            Bandwidth::unlimited(),
        )
        .expect("backend config is valid")
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.inbox.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn key(&self, rel: &str) -> FileKey {
        FileKey {
            folder: self.inbox.display().to_string(),
            rel: rel.to_string(),
        }
    }

    /// Offers the file and claims its job, as a worker would.
    fn claim(&self, rel: &str) -> UploadJob {
        self.claim_into(rel, TABLE)
    }

    /// [`Self::claim`] for a job into `table`.
    fn claim_into(&self, rel: &str, table: &str) -> UploadJob {
        let path = self.inbox.join(rel);
        let fingerprint = Fingerprint::read(&path).expect("test file exists");
        self.store.offer(&self.key(rel), &fingerprint).unwrap();
        let job = self
            .store
            .claim(SystemTime::now() + Duration::from_secs(3600))
            .unwrap()
            .expect("the offered job is claimable");
        assert_eq!(job.key.rel, rel, "claimed the job just offered");
        self.upload_job(&job, table)
    }

    /// The upload of the claimed `job`'s file into `table`.
    fn upload_job(&self, job: &Job, table: &str) -> UploadJob {
        let path = self.inbox.join(&job.key.rel);
        let fingerprint = Fingerprint::read(&path).expect("test file exists");
        UploadJob::new(
            job.id,
            path,
            job.key.rel.clone(),
            Target::RedivisTable(table.to_string()),
            fingerprint,
            job.finalize_started,
            self.store.ledger_get(&job.key).unwrap(),
            self.store.clone(),
            Arc::new(LiveProgress::default()),
            CancellationToken::new(),
        )
    }

    /// What the worker does with a success: record it in the ledger.
    fn complete(&self, job: &UploadJob, uploaded: &Uploaded) {
        self.store
            .complete(
                job.id,
                &job.fingerprint,
                &uploaded.remote,
                uploaded.md5.as_deref(),
            )
            .unwrap();
    }

    /// What the worker does with a job-level retry: back to the queue, progress kept.
    fn retry_later(&self, job: &UploadJob) {
        self.store
            .retry_later(job.id, SystemTime::now(), "test")
            .unwrap();
    }

    async fn script(&self, faults: Value) {
        let response = self
            .http
            .post(format!("{}/_emulator/faults", self.base()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "fault script accepted");
    }

    async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_emulator/faults", self.base()))
            .send()
            .await
            .unwrap();
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/redivis/stats", self.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn api_count(&self, endpoint: &str) -> u64 {
        self.stats().await["api_requests"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every upload in the table, as the API lists them.
    async fn uploads(&self) -> Vec<Value> {
        let table =
            percent_encoding::utf8_percent_encode(TABLE, percent_encoding::NON_ALPHANUMERIC);
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/api/v1/tables/{table}/uploads", self.base()))
                .bearer_auth(TOKEN)
                .query(&[("maxResults", "100")]);
            if let Some(token) = &token {
                request = request.query(&[("pageToken", token)]);
            }
            let response = request.send().await.unwrap();
            if response.status().as_u16() == 404 {
                return all;
            }
            if response.status().as_u16() == 429 {
                // Tests that turn the emulator's rate limit on share it with this check.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let page: Value = response.json().await.unwrap();
            all.extend(page["results"].as_array().cloned().unwrap_or_default());
            match page["nextPageToken"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return all,
            }
        }
    }

    /// The table holds exactly these (name, bytes), verified by size and MD5.
    async fn assert_table_holds(&self, expected: &[(&str, &[u8])]) {
        let uploads = self.uploads().await;
        let mut names: Vec<String> = uploads
            .iter()
            .map(|u| u["name"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        let mut wanted: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
        wanted.sort();
        assert_eq!(names, wanted, "uploads in the table: {uploads:#?}");
        for (name, bytes) in expected {
            let upload = uploads
                .iter()
                .find(|u| u["name"] == *name)
                .expect("listed above");
            assert_eq!(
                upload["size"]
                    .as_u64()
                    .or_else(|| upload["size"].as_str()?.parse().ok()),
                Some(bytes.len() as u64),
                "size of {name}"
            );
            assert_eq!(
                upload["hash"].as_str().map(str::to_ascii_lowercase),
                Some(md5_hex(bytes)),
                "hash of {name}"
            );
        }
    }
}

async fn upload_ok(backend: &RedivisBackend, job: &mut UploadJob) -> Uploaded {
    match backend.upload_and_import(job).await {
        Ok(uploaded) => uploaded,
        Err(err) => panic!("upload of {} failed: {err} ({err:?})", job.rel),
    }
}

/// A file index table's outcome: registered at once (`rawFiles` answers synchronously, so
/// nothing is left importing).
fn registered(job: &UploadJob, outcome: Result<Delivery, UploadError>) -> Uploaded {
    match outcome {
        Ok(Delivery::Uploaded(uploaded)) => uploaded,
        Ok(Delivery::Posted(posted)) => panic!("{}: left importing: {posted:?}", job.rel),
        Err(err) => panic!("{}: {err}", job.rel),
    }
}

fn permanent_message(result: Result<Uploaded, UploadError>) -> String {
    match result {
        Err(UploadError::Remote {
            disposition: Disposition::Permanent,
            message,
            ..
        }) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

// ---- sizes and flows -------------------------------------------------------------------

#[tokio::test]
async fn uploads_n_chunks_plus_a_remainder_through_the_resumable_upload_flow() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(3 * CHUNK + 1000, 1);
    h.write("exports/data.2020.csv", &bytes);
    let backend = h.backend();
    let mut job = h.claim("exports/data.2020.csv");
    let uploaded = upload_ok(&backend, &mut job).await;

    assert_eq!(uploaded.md5.as_deref(), Some(md5_hex(&bytes).as_str()));
    assert!(uploaded.remote.contains("/uploads/"), "{}", uploaded.remote);
    h.assert_table_holds(&[("exports/data.2020.csv", &bytes)])
        .await;
    let stats = h.stats().await;
    assert_eq!(
        stats["session_puts"], 4,
        "three full chunks and the remainder"
    );
    assert_eq!(stats["status_queries"], 0);
    assert_eq!(h.api_count("resumableUpload").await, 1);
    assert_eq!(h.api_count("uploads.post").await, 1);
    assert_eq!(
        job.live
            .bytes_done
            .load(std::sync::atomic::Ordering::Relaxed),
        bytes.len() as u64
    );
    // name check + session + post + at least one poll; nothing else.
    assert!(
        (4..=8).contains(&backend.api_requests()),
        "{} API requests",
        backend.api_requests()
    );
    assert_eq!(
        job.load_progress::<Value>().unwrap(),
        None,
        "session state cleared"
    );
}

#[tokio::test]
async fn uploads_n_chunks_through_the_temp_uploads_flow() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(2 * CHUNK + 17, 2);
    h.write("t.csv", &bytes);
    let backend = h.backend_with(RedivisProtocol::TempUploads, CHUNK, tuning());
    let mut job = h.claim("t.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("t.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(stats["session_initiations"], 1);
    assert_eq!(stats["session_puts"], 3);
    assert_eq!(h.api_count("tempUploads").await, 1);
    assert_eq!(h.api_count("resumableUpload").await, 0);
}

#[tokio::test]
async fn a_temp_upload_of_one_chunk_is_one_whole_put_resent_whole_after_a_drop() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(CHUNK, 30);
    h.write("whole.csv", &bytes);
    // The connection breaks half-way through the body: the retry must carry all of it
    // (the emulator stores exactly what a plain PUT carried).
    h.script(json!([{"target": "redivis-session", "action": {"drop": true}}]))
        .await;
    let backend = h.backend_with(RedivisProtocol::TempUploads, CHUNK, tuning());
    let mut job = h.claim("whole.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("whole.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(stats["temp_puts"], 2);
    assert_eq!(stats["session_initiations"], 0);
    assert_eq!(stats["session_puts"], 0);
}

#[tokio::test]
async fn an_empty_file_goes_inline_in_both_flows_and_never_opens_a_session() {
    let h = Harness::start(|_| {}).await;
    h.write("empty.csv", b"");
    h.write("empty2.csv", b"");
    let legacy = h.backend();
    let mut job = h.claim("empty.csv");
    upload_ok(&legacy, &mut job).await;
    h.complete(
        &job,
        &Uploaded {
            remote: String::new(),
            md5: None,
        },
    );
    let current = h.backend_with(RedivisProtocol::TempUploads, CHUNK, tuning());
    let mut job = h.claim("empty2.csv");
    upload_ok(&current, &mut job).await;

    h.assert_table_holds(&[("empty.csv", b""), ("empty2.csv", b"")])
        .await;
    let stats = h.stats().await;
    assert_eq!(stats["session_puts"], 0);
    assert_eq!(stats["session_initiations"], 0);
    assert_eq!(h.api_count("resumableUpload").await, 0);
    assert_eq!(h.api_count("tempUploads").await, 0);
}

#[tokio::test]
async fn small_files_go_inline_in_one_upload_post() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(INLINE_UPLOAD_MAX, 3);
    h.write("small.csv", &bytes);
    let backend = h.backend_with(
        RedivisProtocol::ResumableUpload,
        CHUNK,
        Tuning {
            inline_max: INLINE_UPLOAD_MAX,
            ..tuning()
        },
    );
    let mut job = h.claim("small.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("small.csv", &bytes)]).await;
    assert_eq!(h.stats().await["session_puts"], 0);
    assert_eq!(h.api_count("uploads.post").await, 1);
    assert_eq!(h.api_count("resumableUpload").await, 0);
}

#[tokio::test]
async fn a_file_of_exactly_one_chunk_takes_one_put() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(CHUNK, 4);
    h.write("one.csv", &bytes);
    let backend = h.backend();
    let mut job = h.claim("one.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("one.csv", &bytes)]).await;
    assert_eq!(h.stats().await["session_puts"], 1);
}

// ---- resume rules ----------------------------------------------------------------------

#[tokio::test]
async fn resumes_from_the_server_offset_after_a_dropped_connection_mid_chunk() {
    let h = Harness::start(|_| {}).await;
    // 1 MiB chunks: the drop strikes after half the body (512 KiB); the session keeps the
    // 256 KiB-aligned half of that, so the server's offset is neither 0 nor ours.
    let bytes = data(2 * 1024 * KIB + 5, 5);
    h.write("dropped.csv", &bytes);
    h.script(json!([{"target": "redivis-session", "action": {"drop": true}, "persist": "half"}]))
        .await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, 1024 * KIB, tuning());
    let mut job = h.claim("dropped.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("dropped.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(
        stats["status_queries"], 1,
        "one status query after the drop"
    );
    assert_eq!(h.api_count("resumableUpload").await, 1, "same session");
}

#[tokio::test]
async fn resumes_after_a_5xx_that_persisted_part_of_the_chunk() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(2 * 1024 * KIB, 6);
    h.write("partial.csv", &bytes);
    h.script(json!([{"target": "redivis-session", "action": {"status": 503}, "persist": "half"}]))
        .await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, 1024 * KIB, tuning());
    let mut job = h.claim("partial.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("partial.csv", &bytes)]).await;
    assert_eq!(h.stats().await["status_queries"], 1);
    assert_eq!(h.api_count("resumableUpload").await, 1, "same session");
}

#[tokio::test]
async fn a_308_without_range_resumes_from_byte_zero() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(2 * CHUNK + 3, 7);
    h.write("norange.csv", &bytes);
    // Nothing of the first chunk is kept: the status query answers 308 without Range.
    h.script(json!([{"target": "redivis-session", "action": {"status": 503}, "persist": "none"}]))
        .await;
    let backend = h.backend();
    let mut job = h.claim("norange.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("norange.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(stats["status_queries"], 1);
    assert_eq!(stats["session_puts"], 4, "the first chunk is sent twice");
}

#[tokio::test]
async fn a_status_query_that_finds_every_byte_completes_the_upload() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(CHUNK, 8);
    h.write("whole.csv", &bytes);
    // The only chunk is persisted whole but answered 503: the status query finalizes.
    h.script(json!([{"target": "redivis-session", "action": {"status": 503}, "persist": "all"}]))
        .await;
    let backend = h.backend();
    let mut job = h.claim("whole.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("whole.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(stats["status_queries"], 1);
    assert_eq!(stats["session_puts"], 1, "nothing is re-sent");
}

#[tokio::test]
async fn an_expired_session_is_replaced_by_a_new_one_from_byte_zero() {
    let h = Harness::start(|o| o.redivis.session_ttl = Duration::from_millis(700)).await;
    let bytes = data(3 * CHUNK, 9);
    h.write("expired.csv", &bytes);
    // The first chunk is taken, but its answer comes after the session's lifetime.
    h.script(json!([{"target": "redivis-session", "action": {"delay_ms": 900}}]))
        .await;
    let backend = h.backend();
    let mut job = h.claim("expired.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("expired.csv", &bytes)]).await;
    assert_eq!(h.api_count("resumableUpload").await, 2, "a second session");
}

#[tokio::test]
async fn a_gone_session_410_is_replaced_by_a_new_one_from_byte_zero() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(2 * CHUNK + 1, 10);
    h.write("gone.csv", &bytes);
    h.script(json!([
        {"target": "redivis-session", "action": {"delay_ms": 0}},
        {"target": "redivis-session", "action": {"status": 410}}
    ]))
    .await;
    let backend = h.backend();
    let mut job = h.claim("gone.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("gone.csv", &bytes)]).await;
    assert_eq!(h.api_count("resumableUpload").await, 2, "a second session");
    assert_eq!(
        h.stats().await["session_puts"],
        2 + 3,
        "two chunks, then all three"
    );
}

#[tokio::test]
async fn a_session_that_rejects_the_upload_twice_fails_the_job() {
    let h = Harness::start(|_| {}).await;
    h.write("rejected.csv", &data(2 * CHUNK, 31));
    h.script(json!([
        {"target": "redivis-session", "action": {"status": 400}},
        {"target": "redivis-session", "action": {"status": 400}}
    ]))
    .await;
    let mut job = h.claim("rejected.csv");
    let message = permanent_message(h.backend().upload_and_import(&mut job).await);
    assert!(message.contains("rejected"), "{message}");
    assert_eq!(
        h.api_count("resumableUpload").await,
        2,
        "one new session, not more"
    );
    assert_eq!(h.stats().await["uploads_created"], 0);
}

/// A session whose retries give up reports the kind of the failure that made it give up
/// (a rate limit, a connection that broke), not always `server`.
#[tokio::test]
async fn a_session_that_gives_up_reports_the_kind_of_its_last_failure() {
    let cases = [
        (json!({"status": 429}), ErrorKind::RateLimited),
        (json!({"drop": true}), ErrorKind::Transport),
        (json!({"status": 503}), ErrorKind::Server),
    ];
    for (action, kind) in cases {
        let h = Harness::start(|_| {}).await;
        h.write("stuck.csv", &data(2 * CHUNK, 32));
        // Enough for the chunk and every retry of the status queries after it.
        let faults: Vec<Value> = (0..3 * tuning().retry.attempts)
            .map(|_| json!({"target": "redivis-session", "action": action, "persist": "none"}))
            .collect();
        h.script(Value::Array(faults)).await;
        let mut job = h.claim("stuck.csv");
        let err = h
            .backend()
            .upload(&mut job)
            .await
            .expect_err("every session request fails");
        match &err {
            UploadError::Remote {
                kind: got,
                disposition: Disposition::Retry { .. },
                endpoint: Some(endpoint),
                ..
            } => {
                assert_eq!(*got, kind, "{action}: {err:?}");
                assert_eq!(endpoint.path, "{upload session}", "{err:?}");
            }
            other => panic!("{action}: expected a job-level retry, got {other:?}"),
        }
        assert_eq!(h.stats().await["uploads_created"], 0);
    }
}

/// Runs an attempt that gets one chunk through and then sees only 503s until its
/// in-request budget is spent, as during an outage.
async fn interrupted_attempt(h: &Harness, backend: &RedivisBackend, rel: &str) -> UploadJob {
    let mut script = vec![json!({"target": "redivis-session", "action": {"delay_ms": 0}})];
    script.extend((0..40).map(
        |_| json!({"target": "redivis-session", "action": {"status": 503}, "persist": "none"}),
    ));
    h.script(Value::Array(script)).await;
    let mut job = h.claim(rel);
    match backend.upload_and_import(&mut job).await {
        Err(UploadError::Remote {
            disposition: Disposition::Retry { .. },
            ..
        }) => {}
        other => panic!("expected a job-level retry, got {other:?}"),
    }
    h.clear_faults().await;
    let saved: Value = job
        .load_progress()
        .unwrap()
        .expect("the session state was saved");
    assert_eq!(saved["confirmed_offset"], CHUNK, "{saved}");
    h.retry_later(&job);
    job
}

#[tokio::test]
async fn the_next_attempt_resumes_the_saved_session_at_the_servers_offset() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(3 * CHUNK, 11);
    h.write("outage.csv", &bytes);
    let backend = h.backend();
    interrupted_attempt(&h, &backend, "outage.csv").await;
    let queries_before = h.stats().await["status_queries"].as_u64().unwrap();

    // A new process: no memory but the store.
    let backend = h.backend();
    let mut job = h.claim("outage.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("outage.csv", &bytes)]).await;
    assert_eq!(
        h.api_count("resumableUpload").await,
        1,
        "the saved session was resumed"
    );
    assert_eq!(
        job.live.sent_by_attempt(bytes.len() as u64),
        2 * CHUNK,
        "the attempt sent the chunks after the one the earlier attempt had sent"
    );
    let stats = h.stats().await;
    assert_eq!(
        stats["status_queries"].as_u64().unwrap(),
        queries_before + 1,
        "one status query before continuing"
    );
}

#[tokio::test]
async fn a_rewrite_keeping_size_and_mtime_starts_a_fresh_session_instead_of_resuming() {
    let h = Harness::start(|_| {}).await;
    let before = data(3 * CHUNK, 32);
    let path = h.write("inplace.csv", &before);
    let backend = h.backend();
    interrupted_attempt(&h, &backend, "inplace.csv").await;

    // Rewritten in place with the same size and mtime: the change time tells, so the saved
    // session (of the old bytes) is not resumed and nothing corrupt reaches the table.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let fingerprint = Fingerprint::read(&path).unwrap();
    let after = data(3 * CHUNK, 33);
    std::fs::write(&path, &after).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let rewritten = Fingerprint::read(&path).unwrap();
    assert_eq!(
        (rewritten.size, rewritten.mtime_ns, rewritten.inode),
        (fingerprint.size, fingerprint.mtime_ns, fingerprint.inode)
    );
    assert_ne!(rewritten, fingerprint);

    let mut job = h.claim("inplace.csv");
    let uploaded = upload_ok(&backend, &mut job).await;

    assert_eq!(uploaded.md5.as_deref(), Some(md5_hex(&after).as_str()));
    h.assert_table_holds(&[("inplace.csv", &after)]).await;
    assert_eq!(h.api_count("uploads.delete").await, 0, "nothing corrupt");
    assert_eq!(h.api_count("resumableUpload").await, 2, "a fresh session");
}

#[tokio::test]
async fn a_saved_session_older_than_its_lifetime_is_not_resumed() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(3 * CHUNK, 12);
    h.write("old.csv", &bytes);
    let short = Tuning {
        session_max_age: Duration::from_millis(300),
        ..tuning()
    };
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, short.clone());
    interrupted_attempt(&h, &backend, "old.csv").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let queries_before = h.stats().await["status_queries"].as_u64().unwrap();

    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, short);
    let mut job = h.claim("old.csv");
    upload_ok(&backend, &mut job).await;

    h.assert_table_holds(&[("old.csv", &bytes)]).await;
    assert_eq!(h.api_count("resumableUpload").await, 2, "a new session");
    assert_eq!(
        h.stats().await["status_queries"].as_u64().unwrap(),
        queries_before,
        "the old session is not even asked"
    );
}

/// A folder given another table while its file waits to resume a session: the session
/// was made for an upload of the old table, so the next attempt opens one in the new
/// table instead of posting the old table's transfer there.
#[tokio::test]
async fn a_saved_session_of_another_table_is_not_resumed() {
    const OTHER: &str = "owner.dataset:next.moved";
    let h = Harness::start(|_| {}).await;
    let bytes = data(3 * CHUNK, 14);
    h.write("moved.csv", &bytes);
    let backend = h.backend();
    let job = interrupted_attempt(&h, &backend, "moved.csv").await;
    let queries_before = h.stats().await["status_queries"].as_u64().unwrap();

    let claimed = h
        .store
        .claim(SystemTime::now() + Duration::from_secs(3600))
        .unwrap()
        .expect("the waiting job is claimable");
    assert_eq!(claimed.id, job.id);
    let mut job = h.upload_job(&claimed, OTHER);
    upload_ok(&backend, &mut job).await;

    assert_eq!(h.api_count("resumableUpload").await, 2, "a new session");
    assert_eq!(
        h.stats().await["status_queries"].as_u64().unwrap(),
        queries_before,
        "the old table's session is not even asked"
    );
    h.assert_table_holds(&[]).await;
}

// ---- exactly once ----------------------------------------------------------------------

#[tokio::test]
async fn a_restart_while_finalizing_adopts_the_posted_upload_instead_of_posting_again() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(2 * CHUNK, 13);
    h.write("final.csv", &bytes);
    let backend = h.backend();
    let mut job = h.claim("final.csv");
    let first = upload_ok(&backend, &mut job).await;
    // Crash before the ledger write: the job is still `finalizing`.
    drop(job);
    assert_eq!(h.store.recover_after_restart().unwrap(), 1);
    let puts_before = h.stats().await["session_puts"].as_u64().unwrap();

    let backend = h.backend();
    let mut job = h.claim("final.csv");
    assert!(job.finalize_started, "the store remembered finalizing");
    let second = upload_ok(&backend, &mut job).await;

    assert_eq!(second.remote, first.remote, "the same upload was adopted");
    assert_eq!(
        job.live.sent_by_attempt(bytes.len() as u64),
        0,
        "the attempt tells it sent none of the bytes"
    );
    assert_eq!(h.stats().await["uploads_created"], 1, "posted once");
    assert_eq!(
        h.stats().await["session_puts"].as_u64().unwrap(),
        puts_before
    );
    h.assert_table_holds(&[("final.csv", &bytes)]).await;
}

#[tokio::test]
async fn a_lost_upload_post_answer_is_reconciled_through_the_list_not_reposted() {
    // upload.post takes effect, but its answer comes after the client gave up waiting.
    let h = Harness::start(|o| o.redivis.redivis_post_delay = 1500).await;
    let bytes = data(CHUNK + 1, 14);
    h.write("lost.csv", &bytes);
    let mut config = h.config(RedivisProtocol::ResumableUpload, CHUNK);
    config.net.idle_timeout = Duration::from_millis(700);
    let backend = RedivisBackend::with_tuning(&config, tuning(), Bandwidth::unlimited())
        .expect("backend config is valid");
    let mut job = h.claim("lost.csv");
    upload_ok(&backend, &mut job).await;

    assert_eq!(h.stats().await["uploads_created"], 1, "posted once");
    assert_eq!(h.api_count("uploads.post").await, 1);
    assert!(
        h.api_count("uploads.list").await >= 1,
        "reconciled via the list"
    );
    h.assert_table_holds(&[("lost.csv", &bytes)]).await;
}

#[tokio::test]
async fn a_changed_file_deletes_its_earlier_upload_then_creates_the_new_one() {
    let h = Harness::start(|_| {}).await;
    let v1 = data(CHUNK + 10, 15);
    h.write("report.csv", &v1);
    let backend = h.backend();
    let mut job = h.claim("report.csv");
    let first = upload_ok(&backend, &mut job).await;
    h.complete(&job, &first);

    let v2 = data(2 * CHUNK + 10, 16);
    h.write("report.csv", &v2);
    let mut job = h.claim("report.csv");
    assert_eq!(
        job.previous.as_ref().map(|p| p.remote.as_str()),
        Some(first.remote.as_str())
    );
    let second = upload_ok(&backend, &mut job).await;

    assert_ne!(second.remote, first.remote);
    h.assert_table_holds(&[("report.csv", &v2)]).await;
    assert_eq!(
        h.api_count("uploads.delete").await,
        1,
        "the earlier upload, once"
    );
}

#[tokio::test]
async fn an_identical_upload_already_in_the_table_is_adopted_without_sending_bytes() {
    let h = Harness::start(|_| {}).await;
    let bytes = data(CHUNK + 99, 17);
    h.write("same.csv", &bytes);
    let mut job = h.claim("same.csv");
    let first = upload_ok(&h.backend(), &mut job).await;
    // The ledger is lost (a fresh state directory would look the same).
    drop(job);
    h.store.recover_after_restart().unwrap();
    h.store.drop_job(h.claim("same.csv").id).unwrap();
    let puts_before = h.stats().await["session_puts"].as_u64().unwrap();

    let mut job = h.claim("same.csv");
    let again = upload_ok(&h.backend(), &mut job).await;

    assert_eq!(again.remote, first.remote);
    assert_eq!(
        job.live.sent_by_attempt(bytes.len() as u64),
        0,
        "the attempt tells it sent none of the bytes"
    );
    assert_eq!(
        h.stats().await["session_puts"].as_u64().unwrap(),
        puts_before
    );
    assert_eq!(h.stats().await["uploads_created"], 1);
}

#[tokio::test]
async fn an_upload_with_the_same_name_but_another_hash_is_replaced_not_adopted() {
    let h = Harness::start(|_| {}).await;
    let old = data(CHUNK + 5, 18);
    h.write("x.csv", &old);
    let mut job = h.claim("x.csv");
    upload_ok(&h.backend(), &mut job).await;
    h.store.drop_job(job.id).unwrap();

    // Same name, same size, other bytes, and no ledger entry to say so: only the hash
    // tells them apart.
    let new = data(CHUNK + 5, 19);
    h.write("x.csv", &new);
    let mut job = h.claim("x.csv");
    let uploaded = upload_ok(&h.backend(), &mut job).await;

    assert_eq!(uploaded.md5.as_deref(), Some(md5_hex(&new).as_str()));
    h.assert_table_holds(&[("x.csv", &new)]).await;
    assert_eq!(h.api_count("uploads.delete").await, 1);
}

#[tokio::test]
async fn names_that_collide_under_escaping_are_refused_naming_both_files() {
    let h = Harness::start(|_| {}).await;
    let first = data(100, 20);
    h.write("a.b.csv", &first);
    h.write("A-B.csv", &data(200, 21));
    h.write("a_b.csv", &data(300, 22));
    let backend = h.backend();
    let mut job = h.claim("a.b.csv");
    let uploaded = upload_ok(&backend, &mut job).await;
    h.complete(&job, &uploaded);

    // Once uploaded, the table holds the name: the same process refuses the next file...
    let mut job = h.claim("A-B.csv");
    let message = permanent_message(backend.upload_and_import(&mut job).await);
    assert!(
        message.contains("\"A-B.csv\"") && message.contains("\"a.b.csv\""),
        "{message}"
    );
    h.store.fail(job.id, &message).unwrap();
    // ...and a fresh one finds it in the table.
    let mut job = h.claim("a_b.csv");
    let message = permanent_message(h.backend().upload_and_import(&mut job).await);
    assert!(
        message.contains("\"a_b.csv\"") && message.contains("\"a.b.csv\""),
        "{message}"
    );
    h.assert_table_holds(&[("a.b.csv", &first)]).await;
}

#[tokio::test]
async fn a_failed_import_fails_the_job_with_redivis_error_message() {
    let h = Harness::start(|o| o.redivis.redivis_fail_name_pattern = Some("*.bad".into())).await;
    h.write("broken.bad", &data(CHUNK, 23));
    let mut job = h.claim("broken.bad");
    let message = permanent_message(h.backend().upload_and_import(&mut job).await);
    assert!(message.contains("broken.bad"), "{message}");
}

/// Processing takes no time here, so upload.post answers with a finished upload and the
/// attempt verifies it itself instead of handing it back to wait.
async fn damaged_upload(corrupt_uploads: u32) -> (Harness, Vec<u8>, UploadJob) {
    let h = Harness::start(|o| {
        o.redivis.redivis_processing_delay = Duration::ZERO;
        o.redivis.redivis_corrupt_uploads = corrupt_uploads;
    })
    .await;
    let bytes = data(2 * CHUNK + 7, 24);
    h.write("damaged.csv", &bytes);
    let job = h.claim("damaged.csv");
    (h, bytes, job)
}

#[tokio::test]
async fn an_import_with_another_hash_is_deleted_and_the_file_sent_again_once() {
    let (h, bytes, mut job) = damaged_upload(1).await;
    let uploaded = match h.backend().upload(&mut job).await {
        Ok(Delivery::Uploaded(uploaded)) => uploaded,
        other => panic!("expected the file uploaded and verified, got {other:?}"),
    };

    assert_eq!(uploaded.md5.as_deref(), Some(md5_hex(&bytes).as_str()));
    h.assert_table_holds(&[("damaged.csv", &bytes)]).await;
    let stats = h.stats().await;
    assert_eq!(stats["uploads_created"], 2, "the damaged upload, then ours");
    assert_eq!(stats["session_puts"], 6, "three chunks, sent twice");
    assert_eq!(h.api_count("uploads.delete").await, 1, "the damaged one");
    assert_eq!(job.load_progress::<Value>().unwrap(), None);
}

#[tokio::test]
async fn a_second_import_with_another_hash_fails_the_job_and_nothing_is_counted_uploaded() {
    let (h, _bytes, mut job) = damaged_upload(2).await;
    let message = match h.backend().upload(&mut job).await {
        Err(UploadError::Remote {
            disposition: Disposition::Permanent,
            message,
            ..
        }) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    };

    assert!(
        message.contains("damaged.csv") && message.contains("hash mismatch"),
        "{message}"
    );
    assert!(h.uploads().await.is_empty(), "both damaged uploads deleted");
    assert_eq!(h.stats().await["uploads_created"], 2);
}

#[tokio::test]
async fn an_upload_whose_import_ends_with_another_hash_is_deleted_not_counted_uploaded() {
    // Imports take their time: the upload is handed back and verified by the wait.
    let h = Harness::start(|o| o.redivis.redivis_corrupt_uploads = 1).await;
    let bytes = data(CHUNK + 3, 25);
    h.write("late.csv", &bytes);
    let mut job = h.claim("late.csv");
    let backend = h.backend();
    let posted = match backend.upload(&mut job).await {
        Ok(Delivery::Posted(posted)) => posted,
        other => panic!("expected the upload handed back while importing, got {other:?}"),
    };
    let scope = job.scope.clone();
    let imported = backend
        .await_import("late.csv", &posted, bytes.len() as u64, &scope)
        .await
        .unwrap();

    match imported {
        Imported::Corrupt(reason) => assert!(reason.contains("hash mismatch"), "{reason}"),
        other => panic!("expected the import judged corrupt, got {other:?}"),
    }
    assert!(h.uploads().await.is_empty(), "the damaged upload deleted");
}

#[tokio::test]
async fn a_file_that_changes_between_chunks_ends_the_attempt_as_changed() {
    let h = Harness::start(|_| {}).await;
    let path = h.write("growing.csv", &data(3 * CHUNK, 24));
    h.script(json!([{"target": "redivis-session", "action": {"delay_ms": 400}}]))
        .await;
    let mut job = h.claim("growing.csv");
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(&path, data(3 * CHUNK + 1, 25)).unwrap();
    });
    let result = h.backend().upload_and_import(&mut job).await;
    writer.await.unwrap();
    assert!(matches!(result, Err(UploadError::Changed)), "{result:?}");
    assert_eq!(
        h.stats().await["uploads_created"],
        0,
        "nothing torn was posted"
    );
}

#[tokio::test]
async fn shutdown_interrupts_a_retry_pause_at_once() {
    let h = Harness::start(|_| {}).await;
    h.write("paused.csv", &data(CHUNK, 34));
    let storm: Vec<Value> = (0..10)
        .map(|_| json!({"target": "redivis-api", "action": {"status": 503}}))
        .collect();
    h.script(Value::Array(storm)).await;
    let slow = Tuning {
        retry: RetryPolicy {
            attempts: 8,
            base: Duration::from_secs(5),
            max: Duration::from_secs(10),
            budget: Duration::from_secs(60),
        },
        ..tuning()
    };
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, slow);
    let mut job = h.claim("paused.csv");
    let shutdown = job.scope.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
    });
    let started = std::time::Instant::now();
    let result = backend.upload_and_import(&mut job).await;
    assert!(matches!(result, Err(UploadError::Shutdown)), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// ---- name checks from the table's index --------------------------------------------

/// Inline uploads, no status polls (uploads complete at once), so every API request left is
/// a name check or a post.
fn inline_tuning() -> Tuning {
    Tuning {
        inline_max: INLINE_UPLOAD_MAX,
        ..tuning()
    }
}

impl Harness {
    /// A harness whose table holds `count` uploads another client posted.
    async fn with_foreign_uploads(count: usize) -> Harness {
        let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
        for i in 0..count {
            h.post_foreign(&format!("old/{i}.csv"), b"x\n").await;
        }
        h
    }

    /// Writes `count` new files and uploads them one after another through `backend`.
    async fn upload_new_files(&self, backend: &RedivisBackend, count: u8) {
        for i in 0..count {
            let name = format!("new{i}.csv");
            self.write(&name, &data(300, i));
            let mut job = self.claim(&name);
            upload_ok(backend, &mut job).await;
        }
    }

    /// Another client posts `name` to the table (the simple upload.post form).
    async fn post_foreign(&self, name: &str, bytes: &[u8]) -> Value {
        let table =
            percent_encoding::utf8_percent_encode(TABLE, percent_encoding::NON_ALPHANUMERIC);
        let response = self
            .http
            .post(format!("{}/api/v1/tables/{table}/uploads", self.base()))
            .bearer_auth(TOKEN)
            .query(&[("name", name)])
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "foreign post accepted");
        response.json().await.unwrap()
    }

    /// API requests the emulator counted, by endpoint, in total.
    async fn api_total(&self) -> u64 {
        self.stats().await["api_requests"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    }
}

#[tokio::test]
async fn small_files_cost_at_most_one_and_a_half_api_requests_each() {
    let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("batch/f{i:02}.csv"), data(4 * KIB + i, i as u8)))
        .collect();
    for (name, bytes) in &files {
        h.write(name, bytes);
    }
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    let mut jobs: Vec<UploadJob> = files.iter().map(|(name, _)| h.claim(name)).collect();
    // Four workers, as the daemon's default concurrency.
    for group in jobs.chunks_mut(4) {
        let results =
            futures::future::join_all(group.iter_mut().map(|job| backend.upload_and_import(job)))
                .await;
        for result in results {
            result.expect("small uploads succeed");
        }
    }

    // Counted before the checks below, which list the table themselves.
    let requests = h.api_total().await;
    assert_eq!(
        backend.api_requests(),
        requests,
        "the emulator saw them all"
    );
    assert!(
        requests as f64 <= 1.5 * files.len() as f64,
        "{requests} API requests for {} files",
        files.len()
    );
    assert_eq!(h.api_count("uploads.post").await, 40);
    assert_eq!(
        h.api_count("uploads.get").await,
        0,
        "no name asked one by one"
    );
    assert_eq!(
        h.api_count("uploads.list").await,
        1,
        "one listing for the batch"
    );
    let expected: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    h.assert_table_holds(&expected).await;
}

#[tokio::test]
async fn a_changed_file_replaces_its_earlier_upload_without_asking_by_name() {
    let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    h.write("daily.csv", &data(3000, 40));
    let mut job = h.claim("daily.csv");
    let first = upload_ok(&backend, &mut job).await;
    h.complete(&job, &first);

    let v2 = data(3500, 41);
    h.write("daily.csv", &v2);
    let mut job = h.claim("daily.csv");
    let second = upload_ok(&backend, &mut job).await;

    assert_ne!(second.remote, first.remote);
    assert_eq!(h.api_count("uploads.delete").await, 1, "the earlier upload");
    assert_eq!(h.api_count("uploads.get").await, 0);
    assert_eq!(h.api_count("uploads.list").await, 1);
    h.assert_table_holds(&[("daily.csv", &v2)]).await;
}

#[tokio::test]
async fn a_touched_but_unchanged_file_adopts_its_earlier_upload() {
    let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    let bytes = data(3000, 42);
    h.write("same.csv", &bytes);
    let mut job = h.claim("same.csv");
    let first = upload_ok(&backend, &mut job).await;
    h.complete(&job, &first);

    // Rewritten with the same bytes: a new fingerprint, the same content.
    std::fs::remove_file(h.inbox.join("same.csv")).unwrap();
    h.write("same.csv", &bytes);
    let mut job = h.claim("same.csv");
    let again = upload_ok(&backend, &mut job).await;

    assert_eq!(again.remote, first.remote, "adopted, not sent again");
    assert_eq!(h.api_count("uploads.post").await, 1);
    assert_eq!(h.api_count("uploads.delete").await, 0);
    h.assert_table_holds(&[("same.csv", &bytes)]).await;
}

/// Uploads `seed.csv` so that `backend`'s index holds a listing of the table.
async fn prime_index(h: &Harness, backend: &RedivisBackend) {
    h.write("seed.csv", &data(100, 50));
    let mut job = h.claim("seed.csv");
    let uploaded = upload_ok(backend, &mut job).await;
    h.complete(&job, &uploaded);
}

#[tokio::test]
async fn a_name_taken_after_the_listing_is_replaced_once_not_duplicated() {
    for rejecting in [false, true] {
        let h = Harness::start(|o| {
            o.redivis.redivis_processing_delay = Duration::ZERO;
            if rejecting {
                o.redivis.redivis_duplicate_names = emulator::redivis::DuplicateNames::Reject;
            }
        })
        .await;
        let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
        prime_index(&h, &backend).await;
        // Another client takes our name after the listing: the index still says free.
        h.post_foreign("late.csv", b"someone else's bytes\n").await;
        let ours = data(2000, 51);
        h.write("late.csv", &ours);
        let mut job = h.claim("late.csv");
        let uploaded = upload_ok(&backend, &mut job).await;

        // As with any same-name upload of other bytes (no ledger entry says it is ours):
        // replaced, and our file is in the table once, under its own name.
        assert_eq!(uploaded.md5.as_deref(), Some(md5_hex(&ours).as_str()));
        h.assert_table_holds(&[("seed.csv", &data(100, 50)), ("late.csv", &ours)])
            .await;
        assert_eq!(
            h.api_count("uploads.get").await,
            1,
            "asked by name once, after the post found the name taken (rejecting: {rejecting})"
        );
    }
}

#[tokio::test]
async fn a_colliding_name_taken_after_the_listing_fails_naming_both_files() {
    let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    prime_index(&h, &backend).await;
    h.post_foreign("Q-1.csv", b"theirs\n").await;
    h.write("q.1.csv", &data(700, 52));
    let mut job = h.claim("q.1.csv");
    let message = permanent_message(backend.upload_and_import(&mut job).await);

    assert!(
        message.contains("\"q.1.csv\"") && message.contains("\"Q-1.csv\""),
        "{message}"
    );
    let names: Vec<String> = h
        .uploads()
        .await
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["seed.csv", "Q-1.csv"],
        "the renamed copy was removed"
    );
}

#[tokio::test]
async fn an_identical_file_posted_after_the_listing_is_adopted() {
    let h = Harness::start(|o| o.redivis.redivis_processing_delay = Duration::ZERO).await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    prime_index(&h, &backend).await;
    let bytes = data(900, 53);
    let theirs = h.post_foreign("twin.csv", &bytes).await;
    h.write("twin.csv", &bytes);
    let mut job = h.claim("twin.csv");
    let uploaded = upload_ok(&backend, &mut job).await;

    assert_eq!(Some(uploaded.remote.as_str()), theirs["uri"].as_str());
    h.assert_table_holds(&[("seed.csv", &data(100, 50)), ("twin.csv", &bytes)])
        .await;
}

/// Inline tuning with a name index that is stale as soon as it is listed and keeps at most
/// `max_names` names.
fn stale_index_tuning(max_names: usize) -> Tuning {
    Tuning {
        name_index: upsync::upload::redivis::names::IndexConfig {
            max_age: Duration::ZERO,
            age_per_page: Duration::ZERO,
            max_names,
        },
        ..inline_tuning()
    }
}

#[tokio::test]
async fn a_stale_index_of_a_large_table_asks_by_name_until_that_costs_a_listing() {
    let h = Harness::with_foreign_uploads(250).await;
    let stale_at_once = stale_index_tuning(upsync::upload::redivis::names::MAX_NAMES);
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, stale_at_once);
    let lists = h.api_count("uploads.list").await;
    h.upload_new_files(&backend, 6).await;
    // 250 uploads: a listing is 3 pages. File 0 lists (3); files 1 and 2 ask by name;
    // file 3 lists again (3); files 4 and 5 ask by name.
    assert_eq!(h.api_count("uploads.list").await - lists, 6);
    assert_eq!(h.api_count("uploads.get").await, 4);
    assert_eq!(h.api_count("uploads.post").await - 250, 6);
}

#[tokio::test]
async fn a_table_with_more_names_than_the_index_keeps_is_asked_by_name() {
    let h = Harness::with_foreign_uploads(250).await;
    let backend = h.backend_with(
        RedivisProtocol::ResumableUpload,
        CHUNK,
        stale_index_tuning(150),
    );
    let lists = h.api_count("uploads.list").await;
    h.upload_new_files(&backend, 4).await;
    // The listing stops on its second page (200 names, past 150) and keeps no name: every
    // file asks by name, and the table is not listed again (a stale snapshot of two pages
    // would be after two files).
    assert_eq!(h.api_count("uploads.list").await - lists, 2);
    assert_eq!(h.api_count("uploads.get").await, 4);
    assert_eq!(h.api_count("uploads.post").await - 250, 4);
}

// ---- rate limit ------------------------------------------------------------------------

#[tokio::test]
async fn rides_out_a_429_storm_with_a_bounded_number_of_requests() {
    // A tight server-side limit, and a storm of scripted 429s (without rate-limit headers)
    // hitting the first requests of six workers at once: their upload.posts, since the
    // table's names are already listed (else the one shared listing takes the storm).
    let h = Harness::start(|o| {
        o.redivis.rate_limit = true;
        o.redivis.rate_limit_max = 8;
        o.redivis.rate_limit_window = Duration::from_secs(2);
    })
    .await;
    let backend = h.backend_with(
        RedivisProtocol::ResumableUpload,
        CHUNK,
        Tuning {
            inline_max: INLINE_UPLOAD_MAX,
            pacer: PacerConfig {
                window: Duration::from_secs(2),
                ..PacerConfig::default()
            },
            ..tuning()
        },
    );
    prime_index(&h, &backend).await;
    let storm: Vec<Value> = (0..6)
        .map(|_| json!({"target": "redivis-api", "action": {"status": 429, "retry_after": "1"}}))
        .collect();
    h.script(Value::Array(storm)).await;
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}.csv"), data(1000 + i, i as u8)))
        .collect();
    for (name, bytes) in &files {
        h.write(name, bytes);
    }
    let mut jobs: Vec<UploadJob> = files.iter().map(|(name, _)| h.claim(name)).collect();
    let started = std::time::Instant::now();
    let results =
        futures::future::join_all(jobs.iter_mut().map(|job| backend.upload_and_import(job))).await;
    for result in results {
        result.expect("every file gets through the rate limit");
    }

    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let all_stats: Value = h
        .http
        .get(format!("{}/_emulator/stats", h.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answered_429 = all_stats["responses_429"].as_u64().unwrap();
    // The six scripted ones; the limiter itself never answers 429, because the pacer
    // keeps to what the server counts.
    assert!(answered_429 == 6, "{answered_429} answers were 429");
    // Per file: name check (one shared listing) and post; polls are shared; plus the 429s
    // themselves.
    let requests = backend.api_requests();
    assert!(
        requests <= 6 * 2 + 10 + answered_429,
        "{requests} API requests"
    );
    // Checked last: listing the table here spends the same rate limit.
    let seed = data(100, 50);
    let mut expected: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    expected.push(("seed.csv", &seed));
    h.assert_table_holds(&expected).await;
}

/// Four workers list the table back to back through one backend for `run`, against the
/// emulator enforcing `limit` requests per `window`, the pacer assuming `pacer_window`.
/// Returns (requests the emulator accepted, 429s it answered).
async fn hammer(limit: u32, window: Duration, pacer_window: Duration, run: Duration) -> (u64, u64) {
    let h = Harness::start(|o| {
        o.redivis.rate_limit = true;
        o.redivis.rate_limit_max = limit;
        o.redivis.rate_limit_window = window;
    })
    .await;
    let tuning = Tuning {
        pacer: PacerConfig {
            window: pacer_window,
            ..PacerConfig::default()
        },
        ..tuning()
    };
    let backend = Arc::new(h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, tuning));
    let deadline = std::time::Instant::now() + run;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                while std::time::Instant::now() < deadline {
                    backend
                        .list_uploads(TABLE)
                        .await
                        .expect("the listing succeeds");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker ends without panicking");
    }
    let stats = h.stats().await;
    let answered_429 = stats["responses_429"].as_u64().unwrap_or(0);
    (h.api_count("uploads.list").await, answered_429)
}

// The documented limits with time scaled by 1/20: the emulator counts over 3 s and 5 s, the
// pacer assumes 5 s (100 s scaled). `UPSYNC_RATE_LIMIT_LONG=1` runs them unscaled.

/// No 429 at `limit` per `window` over `run`, and at least `least` requests accepted (the
/// limit was reached, in more than one window).
async fn assert_paced(limit: u32, window_s: u64, run_s: u64, least: u64) {
    let window = Duration::from_secs(window_s);
    let (accepted, refused) = hammer(
        limit,
        window,
        Duration::from_secs(5),
        Duration::from_secs(run_s),
    )
    .await;
    assert_eq!(refused, 0, "{accepted} accepted");
    assert!(
        accepted >= least,
        "{accepted} accepted, expected {least} or more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_meets_no_429_at_1000_requests_per_60_s() {
    // A whole budget, and more in the next window.
    assert_paced(1000, 3, 8, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_meets_no_429_at_100_requests_per_100_s() {
    // The budgets of three windows.
    assert_paced(100, 5, 12, 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_meets_no_429_at_the_documented_limits_in_real_time() {
    if std::env::var("UPSYNC_RATE_LIMIT_LONG").as_deref() != Ok("1") {
        eprintln!("skipped: UPSYNC_RATE_LIMIT_LONG=1 runs the documented limits unscaled (7 min)");
        return;
    }
    let current = hammer(
        1000,
        Duration::from_secs(60),
        Duration::from_secs(100),
        Duration::from_secs(330),
    );
    let older = hammer(
        100,
        Duration::from_secs(100),
        Duration::from_secs(100),
        Duration::from_secs(330),
    );
    let ((current_ok, current_429), (older_ok, older_429)) = tokio::join!(current, older);
    eprintln!(
        "1000/60 s: {current_ok} accepted, {current_429} 429s; 100/100 s: {older_ok} accepted, {older_429} 429s"
    );
    assert_eq!((current_429, older_429), (0, 0));
    assert!(current_ok >= 3000 && older_ok >= 300);
}

#[tokio::test]
async fn waiting_workers_share_list_polls_per_table() {
    let h =
        Harness::start(|o| o.redivis.redivis_processing_delay = Duration::from_millis(800)).await;
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("p{i}.csv"), data(500 + i, i as u8)))
        .collect();
    for (name, bytes) in &files {
        h.write(name, bytes);
    }
    let backend = h.backend_with(
        RedivisProtocol::ResumableUpload,
        CHUNK,
        Tuning {
            inline_max: INLINE_UPLOAD_MAX,
            ..tuning()
        },
    );
    let mut jobs: Vec<UploadJob> = files.iter().map(|(name, _)| h.claim(name)).collect();
    let results =
        futures::future::join_all(jobs.iter_mut().map(|job| backend.upload_and_import(job))).await;
    for result in results {
        result.expect("uploads succeed");
    }
    let gets = h.api_count("uploads.get").await;
    let lists = h.api_count("uploads.list").await;
    // One listing is the name check; polling six uploads for 0.8 s at 50→200 ms each
    // would be ~30 GETs. Shared list rounds keep it to a handful.
    assert!(lists >= 1, "polled through the list");
    assert!(gets + lists <= 6 + 12, "{gets} GETs and {lists} lists");
}

#[tokio::test]
async fn uploads_posted_one_after_another_share_their_polls() {
    // A steady stream: each upload is posted a moment after the one before, so they never
    // fall due at the same instant; polling each on its own would cost one GET per round.
    let h =
        Harness::start(|o| o.redivis.redivis_processing_delay = Duration::from_millis(1500)).await;
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("s{i}.csv"), data(400 + i, 60 + i as u8)))
        .collect();
    for (name, bytes) in &files {
        h.write(name, bytes);
    }
    let backend = h.backend_with(
        RedivisProtocol::ResumableUpload,
        CHUNK,
        Tuning {
            inline_max: INLINE_UPLOAD_MAX,
            poll: PollConfig {
                initial: Duration::from_millis(400),
                max: Duration::from_millis(1600),
            },
            ..tuning()
        },
    );
    let mut jobs: Vec<UploadJob> = files.iter().map(|(name, _)| h.claim(name)).collect();
    let uploads = jobs.iter_mut().enumerate().map(|(i, job)| {
        let backend = &backend;
        async move {
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            backend.upload_and_import(job).await
        }
    });
    for result in futures::future::join_all(uploads).await {
        result.expect("uploads succeed");
    }
    let polls = h.api_count("uploads.get").await + h.api_count("uploads.list").await - 1;
    // Alone, each upload would be polled at 0.4, 1.2 and 2.8 s after its post: 3 GETs
    // each, 24 in all. Rounds that take in the uploads due soon share one listing.
    assert!(polls <= 12, "{polls} polls for 8 uploads");
}

// ---- folder checks and secrets ---------------------------------------------------------

fn folder(table: &str) -> FolderConfig {
    FolderConfig {
        path: PathBuf::from("/nonexistent-folder"),
        target: Target::RedivisTable(table.to_string()),
        include: vec![],
        exclude: vec![],
        settle: Duration::from_secs(1),
        recursive: true,
        redivis: Default::default(),
        deletes: Default::default(),
        after_upload: Default::default(),
    }
}

#[tokio::test]
async fn prepare_folder_reports_a_missing_table_and_a_rejected_token() {
    let h = Harness::start(|o| o.redivis.strict_tables = true).await;
    let backend = h.backend();
    let err = backend
        .prepare_folder(&folder("nobody.nothing:next.none"), &CallScope::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");

    let response = h
        .http
        .post(format!("{}/_emulator/redivis/tables", h.base()))
        .json(&json!({"reference": TABLE}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    backend
        .prepare_folder(&folder(TABLE), &CallScope::default())
        .await
        .unwrap();

    let mut config = h.config(RedivisProtocol::ResumableUpload, CHUNK);
    config.token = Secret::new("wrong-token");
    let wrong = RedivisBackend::with_tuning(&config, tuning(), Bandwidth::unlimited()).unwrap();
    let err = wrong
        .prepare_folder(&folder(TABLE), &CallScope::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            UploadError::Remote {
                disposition: Disposition::Permanent,
                ..
            }
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("token"), "{err}");
    assert!(!err.contains("wrong-token"), "{err}");
}

/// A `tracing` writer that keeps every line in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber that takes nothing, registered for the whole run: while one subscriber
/// alone is registered, tracing asks only the subscriber of the thread that first reaches
/// a log line whether it is of interest, so a line a parallel test reaches first, on a
/// thread without one, would stay of no interest to the captured thread too.
static ALWAYS_REGISTERED: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();

#[tokio::test]
async fn the_token_appears_in_no_log_line_error_debug_output_or_saved_progress() {
    ALWAYS_REGISTERED
        .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new()));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start(|_| {}).await;
    h.write("secret.csv", &data(3 * CHUNK, 26));
    let backend = h.backend();
    // Retries, a status query, an API error: everything that logs or reports.
    h.script(json!([
        {"target": "redivis-api", "action": {"status": 503}},
        {"target": "redivis-session", "action": {"delay_ms": 0}},
        {"target": "redivis-session", "action": {"drop": true}, "persist": "none"}
    ]))
    .await;
    let mut job = h.claim("secret.csv");
    let uploaded = upload_ok(&backend, &mut job).await;
    h.complete(&job, &uploaded);
    interrupted_attempt_for_secret(&h, &backend).await;

    let mut config = h.config(RedivisProtocol::ResumableUpload, CHUNK);
    config.token = Secret::new(format!("{TOKEN}-not-accepted"));
    let rejected = RedivisBackend::with_tuning(&config, tuning(), Bandwidth::unlimited()).unwrap();
    h.write("denied.csv", &data(10, 27));
    let mut job = h.claim("denied.csv");
    let err = rejected.upload_and_import(&mut job).await.unwrap_err();

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("\"Redivis API request\"") && logs.contains("\"chunk upload\""),
        "the retries were logged: {logs}"
    );
    let texts = [
        logs,
        format!("{err} {err:?}"),
        format!("{backend:?} {rejected:?} {config:?}"),
    ];
    for text in texts {
        assert!(!text.contains(TOKEN), "token leaked into: {text}");
    }
}

/// Leaves a saved session in the store and checks its text.
async fn interrupted_attempt_for_secret(h: &Harness, backend: &RedivisBackend) {
    h.write("saved.csv", &data(3 * CHUNK, 28));
    let job = interrupted_attempt(h, backend, "saved.csv").await;
    let raw = h
        .store
        .load_progress(job.id)
        .unwrap()
        .expect("progress is saved");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("session_url"), "{text}");
    assert!(
        !text.contains(TOKEN),
        "token leaked into saved progress: {text}"
    );
    h.store.drop_job(job.id).unwrap();
}

// ---- file index tables ---------------------------------------------------------------------

const FILES_TABLE: &str = "owner.dataset:next.scans";

impl Harness {
    /// Creates `FILES_TABLE` as a file index table and a backend that knows it is one.
    async fn file_index(&self, tuning: Tuning) -> RedivisBackend {
        self.file_index_with_idle(tuning, Duration::from_secs(10))
            .await
    }

    /// [`Self::file_index`] with requests abandoned after `idle` without a byte moving.
    async fn file_index_with_idle(&self, tuning: Tuning, idle: Duration) -> RedivisBackend {
        let response = self
            .http
            .post(format!("{}/_emulator/redivis/tables", self.base()))
            .json(&json!({"reference": FILES_TABLE, "isFileIndex": true}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let mut config = self.config(RedivisProtocol::TempUploads, CHUNK);
        config.net.idle_timeout = idle;
        let backend = RedivisBackend::with_tuning(&config, tuning, Bandwidth::unlimited())
            .expect("backend config is valid");
        backend
            .prepare_folder(&folder(FILES_TABLE), &CallScope::default())
            .await
            .expect("the file index table is reachable");
        backend
    }

    /// `GET` of an API path (with the token), as JSON.
    async fn api_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/api/v1{path}", self.base()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The files of `FILES_TABLE`: name → (md5Hash, uri) of each entry.
    async fn raw_files(&self) -> Vec<(String, String, String)> {
        let table =
            percent_encoding::utf8_percent_encode(FILES_TABLE, percent_encoding::NON_ALPHANUMERIC);
        let list = self
            .api_json(&format!("/tables/{table}/rawFiles?maxResults=1000"))
            .await;
        assert_eq!(
            list["nextPageToken"],
            Value::Null,
            "one page holds them all"
        );
        let mut files: Vec<(String, String, String)> = list["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let text = |field: &str| f[field].as_str().unwrap_or_default().to_string();
                (text("name"), text("md5Hash"), text("uri"))
            })
            .collect();
        files.sort();
        files
    }

    /// Asserts the file index table holds exactly `expected`, each once.
    async fn assert_files(&self, expected: &[(String, Vec<u8>)]) {
        use base64::Engine;
        let files = self.raw_files().await;
        let mut wanted: Vec<(String, String)> = expected
            .iter()
            .map(|(name, bytes)| {
                let md5 = hex::decode(md5_hex(bytes)).expect("md5_hex writes hex");
                (
                    name.clone(),
                    base64::engine::general_purpose::STANDARD.encode(md5),
                )
            })
            .collect();
        wanted.sort();
        let got: Vec<(String, String)> = files.into_iter().map(|(n, m, _)| (n, m)).collect();
        assert_eq!(got, wanted);
    }
}

fn small_files(count: usize, seed: u8) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            (
                format!("scans/page-{i:03}.png"),
                data(200 + i as u64 * 7, seed.wrapping_add(i as u8)),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_file_index_folder_sends_a_batch_with_one_temp_uploads_and_one_raw_files_call() {
    let h = Harness::start(|_| {}).await;
    let backend = h.file_index(tuning()).await;
    assert!(
        backend
            .batch_limits(&Target::RedivisTable(FILES_TABLE.into()))
            .is_some()
    );
    assert!(
        backend
            .batch_limits(&Target::RedivisTable(TABLE.into()))
            .is_none()
    );
    assert_eq!(
        backend.target_kind(&Target::RedivisTable(FILES_TABLE.into())),
        Some("file index table")
    );
    let files = small_files(20, 1);
    let mut jobs = Vec::new();
    for (name, bytes) in &files {
        h.write(name, bytes);
        jobs.push(h.claim_into(name, FILES_TABLE));
    }
    let before = backend.api_requests();
    let outcomes = backend.upload_batch(&mut jobs).await;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        let uploaded = registered(job, outcome);
        assert!(
            uploaded.remote.starts_with("/rawFiles/"),
            "{}",
            uploaded.remote
        );
        h.complete(job, &uploaded);
    }
    assert_eq!(
        backend.api_requests() - before,
        2,
        "tempUploads and rawFiles, once each"
    );
    assert_eq!(h.api_count("rawFiles.post").await, 1);
    assert_eq!(h.api_count("uploads.post").await, 0);
    h.assert_files(&files).await;
}

#[tokio::test]
async fn a_changed_file_replaces_its_entry_and_a_touched_one_is_not_sent_again() {
    let h = Harness::start(|_| {}).await;
    let backend = h.file_index(tuning()).await;
    let mut files = small_files(3, 2);
    for (name, bytes) in &files {
        h.write(name, bytes);
        let mut job = h.claim_into(name, FILES_TABLE);
        let uploaded = upload_ok(&backend, &mut job).await;
        h.complete(&job, &uploaded);
    }
    // A new version of the first file, and the second only touched.
    files[0].1 = data(999, 77);
    h.write(&files[0].0, &files[0].1);
    h.write(&files[1].0, &files[1].1);
    let temp_uploads = h.api_count("tempUploads").await;
    let mut changed = h.claim_into(&files[0].0, FILES_TABLE);
    let uploaded = upload_ok(&backend, &mut changed).await;
    h.complete(&changed, &uploaded);
    let mut touched = h.claim_into(&files[1].0, FILES_TABLE);
    let previous = touched.previous.clone().expect("the ledger knows it");
    let adopted = upload_ok(&backend, &mut touched).await;
    assert_eq!(
        adopted.remote, previous.remote,
        "the entry already there is kept"
    );
    assert_eq!(
        h.api_count("tempUploads").await - temp_uploads,
        1,
        "only the changed file is sent"
    );
    assert_eq!(h.api_count("rawFiles.delete").await, 1);
    h.assert_files(&files).await;
}

#[tokio::test]
async fn a_lost_raw_files_answer_is_reconciled_through_the_listing_not_registered_twice() {
    let h = Harness::start(|_| {}).await;
    let backend = h
        .file_index_with_idle(tuning(), Duration::from_millis(500))
        .await;
    let files = small_files(5, 3);
    let mut jobs = Vec::new();
    for (name, bytes) in &files {
        h.write(name, bytes);
        jobs.push(h.claim_into(name, FILES_TABLE));
    }
    // tempUploads goes through; rawFiles is carried out, but answered after the timeout.
    h.script(json!([
        {"target": "redivis-api", "action": {"delay_ms": 0}},
        {"target": "redivis-api", "action": {"delay_ms": 1500}}
    ]))
    .await;
    let outcomes = backend.upload_batch(&mut jobs).await;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        let uploaded = registered(job, outcome);
        h.complete(job, &uploaded);
    }
    assert_eq!(h.api_count("rawFiles.post").await, 1, "registered once");
    assert_eq!(
        h.api_count("rawFiles.list").await,
        1,
        "reconciled by one listing"
    );
    h.assert_files(&files).await;
}

#[tokio::test]
async fn a_restart_while_finalizing_adopts_what_the_table_holds() {
    let h = Harness::start(|_| {}).await;
    let backend = h.file_index(tuning()).await;
    let files = small_files(4, 4);
    let mut jobs = Vec::new();
    for (name, bytes) in &files {
        h.write(name, bytes);
        jobs.push(h.claim_into(name, FILES_TABLE));
    }
    let outcomes = backend.upload_batch(&mut jobs).await;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        registered(job, outcome);
        // The daemon died before recording the success: the job is still finalizing.
        assert!(job.finalize_started);
    }
    let fresh = h.file_index(tuning()).await;
    for job in &mut jobs {
        job.finalize_started = true;
    }
    let outcomes = fresh.upload_batch(&mut jobs).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(
        h.api_count("rawFiles.post").await,
        1,
        "nothing registered again"
    );
    assert_eq!(h.api_count("tempUploads").await, 1, "nothing sent again");
    h.assert_files(&files).await;
}

#[tokio::test]
async fn a_file_larger_than_a_chunk_goes_alone_through_a_resumable_temp_upload() {
    let h = Harness::start(|_| {}).await;
    let backend = h.file_index(tuning()).await;
    let big = data(2 * CHUNK + 10, 5);
    h.write("weights.ckpt", &big);
    let mut job = h.claim_into("weights.ckpt", FILES_TABLE);
    let uploaded = upload_ok(&backend, &mut job).await;
    assert!(uploaded.remote.starts_with("/rawFiles/"));
    let stats = h.stats().await;
    assert_eq!(stats["session_initiations"], 1);
    assert_eq!(stats["session_puts"], 3);
    h.assert_files(&[("weights.ckpt".to_string(), big)]).await;
}

// ---- dataset versions ------------------------------------------------------------------------

#[tokio::test]
async fn create_next_version_opens_exactly_one_version_when_two_clients_ask_at_once() {
    use upsync::upload::redivis::tables::NextVersion;
    let h = Harness::start(|_| {}).await;
    let client = || common::redivis_api_client(&h.base(), TOKEN, tuning().retry);
    let (first, second) = (client(), client());
    let scope = CallScope::default();
    let dataset = "owner.dataset";
    let found = first.create_next_version(dataset, &scope).await.unwrap();
    assert_eq!(found, NextVersion::Existed, "a new dataset starts with one");
    let release = h
        .http
        .post(format!(
            "{}/api/v1/datasets/{dataset}/versions/next/release",
            h.base()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(release.status().is_success());
    let (a, b) = tokio::join!(
        first.create_next_version(dataset, &scope),
        second.create_next_version(dataset, &scope)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let created = outcomes
        .iter()
        .filter(|o| **o == NextVersion::Created)
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    let dataset = h.api_json(&format!("/datasets/{dataset}")).await;
    assert_eq!(dataset["nextVersion"]["tag"], "v2.0");
}

impl Harness {
    /// Arms the emulator's release window: the next write of `endpoint` finds the dataset
    /// released, and a new version is open again right after its refusal.
    async fn arm_release_window(&self, endpoint: &str) {
        let response = self
            .http
            .post(format!("{}/_emulator/redivis/release-window", self.base()))
            .json(&json!({ "endpoint": endpoint }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "window armed");
    }

    /// The dataset's next version's tag (`null` without one).
    async fn next_version_tag(&self) -> Value {
        self.api_json("/datasets/owner.dataset").await["nextVersion"]["tag"].clone()
    }
}

/// Whether `outcome` is the wait of an upload refused in the window between a release and
/// the next version.
fn waits_for_the_new_version<T: std::fmt::Debug>(outcome: &Result<T, UploadError>) -> bool {
    matches!(outcome, Err(UploadError::Waiting(reason)) if reason == NEXT_VERSION_OPENED)
}

/// One file of `size` into `TABLE` through `backend`, refused at `endpoint` inside the
/// window between a release and the next version: it waits (never fails), the folder's
/// check passes, and the file then goes into the new version, once.
async fn through_the_release_window(
    h: &Harness,
    backend: &RedivisBackend,
    endpoint: &str,
    size: u64,
) {
    let bytes = data(size, 33);
    h.write("window.csv", &bytes);
    let mut job = h.claim("window.csv");
    h.arm_release_window(endpoint).await;
    let outcome = backend.upload(&mut job).await;
    assert!(
        waits_for_the_new_version(&outcome),
        "{endpoint}: {outcome:?}"
    );
    let stats = h.stats().await;
    assert_eq!(
        stats["release_windows"], 1,
        "{endpoint}: the window was met there"
    );
    assert_eq!(h.next_version_tag().await, "v2.0", "{endpoint}");
    backend
        .prepare_folder(&folder(TABLE), &CallScope::default())
        .await
        .expect("the folder's check finds the table in the new version");
    upload_ok(backend, &mut job).await;
    h.assert_table_holds(&[("window.csv", &bytes)]).await;
    let released = h
        .api_json("/tables/owner.dataset%3Av1_0.table/uploads")
        .await;
    assert_eq!(
        released["results"],
        json!([]),
        "{endpoint}: nothing of the file went into the released version"
    );
}

#[tokio::test]
async fn an_inline_upload_refused_between_a_release_and_the_next_version_waits() {
    let h = Harness::start(|_| {}).await;
    let backend = h.backend_with(RedivisProtocol::ResumableUpload, CHUNK, inline_tuning());
    through_the_release_window(&h, &backend, "uploads.post", 2 * KIB).await;
    assert_eq!(
        h.stats().await["uploads_created"],
        1,
        "the refused post created nothing"
    );
}

#[tokio::test]
async fn a_session_refused_between_a_release_and_the_next_version_waits() {
    let h = Harness::start(|_| {}).await;
    through_the_release_window(&h, &h.backend(), "resumableUpload", 2 * CHUNK).await;
    assert_eq!(h.stats().await["uploads_created"], 1);
}

#[tokio::test]
async fn a_temp_upload_refused_between_a_release_and_the_next_version_waits() {
    let h = Harness::start(|_| {}).await;
    let backend = h.backend_with(RedivisProtocol::TempUploads, CHUNK, tuning());
    through_the_release_window(&h, &backend, "tempUploads", 2 * CHUNK).await;
    assert_eq!(h.stats().await["uploads_created"], 1);
}

#[tokio::test]
async fn a_post_after_a_session_refused_between_a_release_and_the_next_version_waits() {
    let h = Harness::start(|_| {}).await;
    through_the_release_window(&h, &h.backend(), "uploads.post", 2 * CHUNK).await;
    assert_eq!(h.stats().await["uploads_created"], 1);
}

#[tokio::test]
async fn raw_files_refused_between_a_release_and_the_next_version_wait() {
    let h = Harness::start(|_| {}).await;
    let backend = h.file_index(tuning()).await;
    let files = small_files(3, 34);
    let mut jobs: Vec<UploadJob> = files
        .iter()
        .map(|(rel, bytes)| {
            h.write(rel, bytes);
            h.claim_into(rel, FILES_TABLE)
        })
        .collect();
    h.arm_release_window("rawFiles.post").await;
    let outcomes = backend.upload_batch(&mut jobs).await;
    for outcome in &outcomes {
        assert!(waits_for_the_new_version(outcome), "{outcome:?}");
    }
    assert_eq!(h.stats().await["release_windows"], 1);
    backend
        .prepare_folder(&folder(FILES_TABLE), &CallScope::default())
        .await
        .expect("the folder's check finds the table in the new version");
    let outcomes = backend.upload_batch(&mut jobs).await;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        registered(job, outcome);
    }
    h.assert_files(&files).await;
}

/// A table missing from a dataset that has its next version is the table's problem: the
/// refusal stands (the upload does not wait for a version that will not bring it).
#[tokio::test]
async fn a_table_missing_from_the_next_version_is_refused_not_waited_for() {
    let h = Harness::start(|o| o.redivis.strict_tables = true).await;
    let response = h
        .http
        .post(format!("{}/_emulator/redivis/tables", h.base()))
        .json(&json!({"reference": TABLE}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    h.write("lost.csv", &data(2 * KIB, 35));
    let mut job = h.claim_into("lost.csv", "owner.dataset:next.missing");
    let message = permanent_message(h.backend().upload_and_import(&mut job).await);
    assert!(message.contains("missing"), "{message}");
    assert_eq!(
        h.api_count("datasets.get").await,
        1,
        "the dataset was asked"
    );
}
