//! End-to-end tests of the Redivis emulator (and the server loop and faults under it) over
//! real HTTP on 127.0.0.1:0, one per case listed in docs/protocols/redivis.md §12 plus the
//! seed flow, faults, rate limiting and restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::DuplicateNames;
use crate::emulator::{EmulatorOptions, RunningEmulator, start};

const TOKEN: &str = "test-token";
const TABLE: &str = "owner.ds:next.tbl";
const TABLE_PATH: &str = "owner.ds%3Anext.tbl";
const BLOCK: usize = 256 * 1024;

struct Emu {
    running: RunningEmulator,
    base: String,
    http: reqwest::Client,
    data_dir: PathBuf,
}

fn options(dir: &Path) -> EmulatorOptions {
    let mut options = EmulatorOptions::with_data_dir(dir.to_path_buf());
    options.redivis.redivis_processing_delay = Duration::ZERO;
    options
}

/// Deterministic CSV-like bytes: `row,<i>` lines, cut to `size`.
fn data(size: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size + 16);
    let mut line = 0;
    while bytes.len() < size {
        bytes.extend_from_slice(format!("row,{line}\n").as_bytes());
        line += 1;
    }
    bytes.truncate(size);
    bytes
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

fn range(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("range")
        .map(|value| value.to_str().expect("Range is ASCII").to_string())
}

impl Emu {
    async fn start(options: EmulatorOptions) -> Emu {
        let data_dir = options.data_dir.clone();
        let running = start("127.0.0.1:0", options)
            .await
            .expect("the emulator binds a free loopback port");
        Emu {
            base: format!("http://{}", running.addr),
            running,
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain HTTP client builds"),
            data_dir,
        }
    }

    async fn stop(self) {
        self.running.shutdown.cancel();
        self.running
            .task
            .await
            .expect("the server task ends without panicking");
    }

    fn table(&self, suffix: &str) -> String {
        format!("{}/api/v1/tables/{TABLE_PATH}{suffix}", self.base)
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url).bearer_auth(TOKEN)
    }

    async fn json(&self, response: reqwest::Response) -> Value {
        response.json().await.expect("the body is JSON")
    }

    async fn post_json(&self, url: &str, body: Value) -> reqwest::Response {
        self.http
            .post(url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("the emulator answers")
    }

    /// Legacy flow step 2: a session of `size` bytes; returns (id, url).
    async fn resumable(&self, size: u64) -> (String, String) {
        let response = self
            .http
            .post(self.table(&format!("/resumableUpload?size={size}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the emulator answers");
        assert_eq!(response.status(), StatusCode::OK);
        let body = self.json(response).await;
        assert_eq!(body["kind"], "resumableUpload");
        (
            body["id"].as_str().expect("id is a string").to_string(),
            body["url"].as_str().expect("url is a string").to_string(),
        )
    }

    async fn try_chunk(
        &self,
        url: &str,
        bytes: &[u8],
        first: usize,
        total: &str,
    ) -> reqwest::Result<reqwest::Response> {
        let last = first + bytes.len() - 1;
        self.http
            .put(url)
            .header("content-range", format!("bytes {first}-{last}/{total}"))
            .body(bytes.to_vec())
            .send()
            .await
    }

    async fn chunk(&self, url: &str, bytes: &[u8], first: usize, total: &str) -> reqwest::Response {
        self.try_chunk(url, bytes, first, total)
            .await
            .expect("the emulator answers")
    }

    async fn status_query(&self, url: &str, total: &str) -> reqwest::Response {
        self.http
            .put(url)
            .header("content-range", format!("bytes */{total}"))
            .header("content-length", "0")
            .send()
            .await
            .expect("the emulator answers")
    }

    /// A whole file through the legacy flow; returns the upload.post answer.
    async fn upload_via_session(&self, name: &str, bytes: &[u8]) -> reqwest::Response {
        let (id, url) = self.resumable(bytes.len() as u64).await;
        let total = bytes.len().to_string();
        let response = self.chunk(&url, bytes, 0, &total).await;
        assert_eq!(response.status(), StatusCode::OK);
        self.post_json(
            &self.table("/uploads"),
            json!({"name": name, "type": null, "resumableUploadId": id}),
        )
        .await
    }

    async fn multipart(&self, name: &str, bytes: &[u8]) -> reqwest::Response {
        let metadata =
            json!({"name": name, "type": null, "tempUploadId": null, "hasHeaderRow": true});
        let form = reqwest::multipart::Form::new()
            .part(
                "metadata",
                reqwest::multipart::Part::bytes(metadata.to_string().into_bytes())
                    .file_name("metadata"),
            )
            .part(
                "data",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()),
            );
        self.http
            .post(self.table("/uploads"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("the emulator answers")
    }

    async fn push_faults(&self, script: Value) {
        let response = self
            .http
            .post(format!("{}/_emulator/faults", self.base))
            .json(&script)
            .send()
            .await
            .expect("the emulator answers");
        assert_eq!(response.status(), StatusCode::OK, "fault script accepted");
    }

    async fn stats(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the emulator answers");
        self.json(response).await
    }

    /// A session URL as served by this instance (after a restart the port differs).
    fn session_url(&self, id: &str) -> String {
        format!("{}/upload/sessions/{id}", self.base)
    }
}

async fn emulator() -> (Emu, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let emu = Emu::start(options(dir.path())).await;
    (emu, dir)
}

async fn emulator_with(configure: impl FnOnce(&mut EmulatorOptions)) -> (Emu, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut options = options(dir.path());
    configure(&mut options);
    (Emu::start(options).await, dir)
}

// ---- the seed flow -------------------------------------------------------------------

#[tokio::test]
async fn seed_flow_uploads_a_file_in_chunks_and_lists_it() {
    let (emu, _dir) = emulator().await;
    let bytes = data(2 * BLOCK + 1000);
    let total = bytes.len().to_string();
    let (id, url) = emu.resumable(bytes.len() as u64).await;
    assert!(
        url.starts_with(&emu.base),
        "session URL uses the Host header: {url}"
    );

    let first = emu.chunk(&url, &bytes[..BLOCK], 0, &total).await;
    assert_eq!(first.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(range(&first).as_deref(), Some("bytes=0-262143"));
    assert!(first.headers().get("location").is_none());
    let second = emu
        .chunk(&url, &bytes[BLOCK..2 * BLOCK], BLOCK, &total)
        .await;
    assert_eq!(range(&second).as_deref(), Some("bytes=0-524287"));
    let last = emu
        .chunk(&url, &bytes[2 * BLOCK..], 2 * BLOCK, &total)
        .await;
    assert_eq!(last.status(), StatusCode::OK);
    let metadata = emu.json(last).await;
    assert_eq!(metadata["size"], total);
    assert_eq!(metadata["hash"], md5_hex(&bytes));

    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "exports/data.2020.csv", "type": null, "resumableUploadId": id,
                   "hasHeaderRow": true, "delimiter": null, "unknownKey": 1}),
        )
        .await;
    assert_eq!(posted.status(), StatusCode::OK);
    let upload = emu.json(posted).await;
    assert_eq!(upload["kind"], "upload");
    assert_eq!(upload["name"], "exports/data.2020.csv");
    assert_eq!(upload["size"], bytes.len() as u64);
    assert_eq!(upload["hash"], md5_hex(&bytes));
    let uri = upload["uri"].as_str().expect("uri is a string");
    assert!(
        uri.starts_with(&format!("/tables/{TABLE_PATH}/uploads/")),
        "{uri}"
    );

    let got = emu
        .get(&format!("{}/api/v1{uri}", emu.base))
        .send()
        .await
        .expect("the emulator answers");
    assert_eq!(got.status(), StatusCode::OK);
    let got = emu.json(got).await;
    assert_eq!(got["status"], "completed");
    assert_eq!(
        got["numRows"],
        bytes.iter().filter(|&&b| b == b'\n').count() as u64
    );
    assert_eq!(got["numBytes"], bytes.len() as u64);

    let listed = emu
        .json(
            emu.get(&emu.table("/uploads"))
                .send()
                .await
                .expect("answers"),
        )
        .await;
    assert_eq!(listed["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["nextPageToken"], Value::Null);

    let stored = super::stored_upload_path(&emu.data_dir, TABLE, "exports/data.2020.csv");
    assert_eq!(
        std::fs::read(&stored).expect("the upload's bytes are on disk"),
        bytes
    );
    let stats = emu.stats("/_emulator/redivis/stats").await;
    assert_eq!(stats["session_puts"], 3);
    assert_eq!(stats["uploads_created"], 1);
    assert_eq!(stats["api_requests"]["resumableUpload"], 1);
    emu.stop().await;
}

// ---- API layer (§12 cases 1-12) ------------------------------------------------------

#[tokio::test]
async fn case_01_uploads_are_found_by_escaped_name_case_insensitively() {
    let (emu, _dir) = emulator().await;
    assert_eq!(
        emu.multipart("Data.2020.csv", b"a\n1\n").await.status(),
        StatusCode::OK
    );
    for segment in [
        "Data_2020_csv",
        "data_2020_csv",
        "DATA-2020-CSV",
        "data%2E2020%2Ecsv",
    ] {
        let response = emu
            .get(&emu.table(&format!("/uploads/{segment}")))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK, "segment {segment}");
        assert_eq!(emu.json(response).await["name"], "Data.2020.csv");
    }
    // A colliding name is a duplicate: it is renamed, not clobbered.
    let second = emu
        .json(emu.multipart("data-2020.csv", b"b\n2\n").await)
        .await;
    assert_eq!(second["name"], "data-2020 (1).csv");
    emu.stop().await;
}

#[tokio::test]
async fn case_02_head_errors_travel_in_a_header_and_delete_answers_ok() {
    let (emu, _dir) = emulator().await;
    let missing = emu
        .http
        .head(emu.table("/uploads/nothing_csv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let payload = missing
        .headers()
        .get("x-redivis-error-payload")
        .expect("HEAD errors carry the payload header")
        .to_str()
        .expect("ASCII")
        .to_string();
    let decoded = percent_encoding::percent_decode_str(&payload)
        .decode_utf8()
        .expect("UTF-8");
    let error: Value = serde_json::from_str(&decoded).expect("the payload is JSON");
    assert_eq!(error["error"], "not_found");
    assert!(missing.bytes().await.expect("body").is_empty());

    emu.multipart("a.csv", b"x\n").await;
    let head = emu
        .http
        .head(emu.table("/uploads/a_csv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(head.status(), StatusCode::OK);
    let deleted = emu
        .http
        .delete(emu.table("/uploads/a_csv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(deleted.text().await.expect("body"), "OK");
    assert!(!super::stored_upload_path(&emu.data_dir, TABLE, "a.csv").exists());
    emu.stop().await;
}

#[tokio::test]
async fn case_03_errors_have_the_redivis_shape() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_token = Some(crate::config::Secret::new("right"));
    })
    .await;
    let anonymous = emu
        .http
        .get(emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body = emu.json(anonymous).await;
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("Bearer")
    );
    let wrong = emu
        .http
        .get(emu.table("/uploads"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        !emu.json(wrong).await.to_string().contains("wrong"),
        "tokens are never echoed"
    );

    emu.push_faults(json!([
        {"target": "redivis-api", "action": {"status": 403}},
        {"target": "redivis-api", "action": {"status": 503}}
    ]))
    .await;
    let forbidden = emu
        .http
        .get(emu.table("/uploads"))
        .bearer_auth("right")
        .send()
        .await
        .expect("answers");
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let body = emu.json(forbidden).await;
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["scope"], "data.edit");
    let unavailable = emu
        .http
        .get(emu.table("/uploads"))
        .bearer_auth("right")
        .send()
        .await
        .expect("answers");
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(emu.json(unavailable).await["status"], 503);
    emu.stop().await;
}

#[tokio::test]
async fn case_04_every_api_answer_carries_rate_limit_headers() {
    let (emu, _dir) = emulator().await;
    for response in [
        emu.get(&emu.table("/uploads"))
            .send()
            .await
            .expect("answers"),
        emu.http
            .get(emu.table("/uploads"))
            .send()
            .await
            .expect("answers"),
        emu.get(&format!("{}/api/v1/nowhere", emu.base))
            .send()
            .await
            .expect("answers"),
    ] {
        // The current docs: about 1,000 requests per 60 s.
        assert_eq!(response.headers()["x-ratelimit-limit"], "1000");
        assert_eq!(response.headers()["x-ratelimit-remaining"], "1000");
    }
    emu.stop().await;
}

#[tokio::test]
async fn case_05_uploads_need_an_unreleased_version() {
    let (emu, _dir) = emulator().await;
    let response = emu
        .http
        .post(format!(
            "{}/api/v1/tables/owner.ds.tbl/resumableUpload?size=3",
            emu.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = emu.json(response).await;
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("uploads can only be created on tables in an unreleased version")
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_06_temp_uploads_answer_in_order_with_string_sizes() {
    let (emu, _dir) = emulator().await;
    let response = emu
        .post_json(
            &emu.table("/tempUploads"),
            json!({"tempUploads": [
                {"size": 100_000_000, "name": "big.csv", "resumable": true},
                {"size": 0, "name": "empty.csv", "resumable": true},
                {"size": "12", "name": "small.csv", "resumable": false}
            ]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = emu.json(response).await;
    assert_eq!(body["kind"], "tempUploadList");
    let results = body["results"].as_array().expect("results is an array");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["big.csv", "empty.csv", "small.csv"]);
    assert_eq!(results[0]["size"], "100000000");
    assert_eq!(results[0]["resumable"], true);
    assert_eq!(
        results[1]["resumable"], false,
        "0 bytes is never resumable (docs/protocols/redivis.md §11, B5)"
    );
    assert!(
        results[2]["url"]
            .as_str()
            .expect("url")
            .starts_with(&emu.base)
    );

    // The legacy form: size in a JSON body.
    let legacy = emu
        .post_json(&emu.table("/resumableUpload"), json!({"size": 5}))
        .await;
    assert_eq!(legacy.status(), StatusCode::OK);
    let legacy = emu.json(legacy).await;
    let url = legacy["url"].as_str().expect("url");
    assert!(url.contains("/upload/sessions/"));
    let done = emu.chunk(url, b"hello", 0, "5").await;
    assert_eq!(done.status(), StatusCode::OK);
    emu.stop().await;
}

#[tokio::test]
async fn case_07_upload_post_accepts_json_multipart_and_simple_shapes() {
    let (emu, _dir) = emulator().await;
    // JSON with tempUploadId after a plain PUT.
    let temp = emu
        .json(
            emu.post_json(
                &emu.table("/tempUploads"),
                json!({"tempUploads": [{"size": 4, "name": "t.csv", "resumable": false}]}),
            )
            .await,
        )
        .await;
    let temp = &temp["results"][0];
    let put = emu
        .http
        .put(temp["url"].as_str().expect("url"))
        .bearer_auth(TOKEN)
        .body("a\nb\n")
        .send()
        .await
        .expect("answers");
    assert_eq!(put.status(), StatusCode::OK);
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "t.csv", "type": null, "schema": null, "metadata": null,
                   "hasHeaderRow": false, "skipBadRecords": null, "tempUploadId": temp["id"],
                   "transferSpecification": null, "someFutureField": {"x": 1}}),
        )
        .await;
    assert_eq!(posted.status(), StatusCode::OK);
    let posted = emu.json(posted).await;
    assert_eq!(posted["hash"], md5_hex(b"a\nb\n"));
    assert_eq!(posted["numRows"], 2, "no header row: both lines count");

    // Multipart, metadata first.
    let inline = emu.multipart("m.csv", b"h\n1\n2\n").await;
    assert_eq!(inline.status(), StatusCode::OK);
    let inline = emu.json(inline).await;
    assert_eq!(inline["numRows"], 2);
    assert_eq!(inline["type"], "delimited");

    // Multipart with the parts the wrong way round.
    let form = reqwest::multipart::Form::new()
        .part(
            "data",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.csv"),
        )
        .part("metadata", reqwest::multipart::Part::text("{}"));
    let wrong = emu
        .http
        .post(emu.table("/uploads"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);

    // Simple: name in the query, raw bytes.
    let simple = emu
        .http
        .post(emu.table("/uploads?name=s.ndjson"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .body("{}\n{}\n{}\n")
        .send()
        .await
        .expect("answers");
    assert_eq!(simple.status(), StatusCode::OK);
    let simple = emu.json(simple).await;
    assert_eq!(simple["type"], "ndjson");
    assert_eq!(simple["numRows"], 3);
    emu.stop().await;
}

#[tokio::test]
async fn case_08_upload_post_with_an_unknown_unfinished_or_used_id_is_refused() {
    let (emu, _dir) = emulator().await;
    let unknown = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "a.csv", "tempUploadId": "nope"}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(
        emu.json(unknown).await["error_description"]
            .as_str()
            .expect("text")
            .contains("nope")
    );

    let (id, url) = emu.resumable(BLOCK as u64 * 2).await;
    emu.chunk(&url, &data(BLOCK), 0, &(2 * BLOCK).to_string())
        .await;
    let unfinished = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "a.csv", "resumableUploadId": id}),
        )
        .await;
    assert_eq!(unfinished.status(), StatusCode::BAD_REQUEST);
    let description = emu.json(unfinished).await["error_description"].to_string();
    assert!(description.contains("262144 of 524288"), "{description}");

    emu.chunk(&url, &data(BLOCK), BLOCK, &(2 * BLOCK).to_string())
        .await;
    let first = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "a.csv", "resumableUploadId": id}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let again = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "b.csv", "resumableUploadId": id}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(
        emu.json(again).await["error_description"]
            .as_str()
            .expect("text")
            .contains("already used")
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_09_duplicate_names_are_renamed_by_default() {
    let (emu, _dir) = emulator().await;
    for (name, body) in [
        ("d.csv", "1\n"),
        ("d.csv", "2\n"),
        ("d.csv", "3\n"),
        ("noext", "4\n"),
        ("noext", "5\n"),
    ] {
        assert_eq!(
            emu.multipart(name, body.as_bytes()).await.status(),
            StatusCode::OK
        );
    }
    let listed = emu
        .json(
            emu.get(&emu.table("/uploads"))
                .send()
                .await
                .expect("answers"),
        )
        .await;
    let listed: Vec<&str> = listed["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|upload| upload["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        listed,
        ["d.csv", "d (1).csv", "d (2).csv", "noext", "noext (1)"]
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_09_duplicate_names_can_be_rejected_with_409() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_duplicate_names = DuplicateNames::Reject;
    })
    .await;
    assert_eq!(
        emu.multipart("d.csv", b"1\n").await.status(),
        StatusCode::OK
    );
    let duplicate = emu.multipart("D.CSV", b"2\n").await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(emu.json(duplicate).await["error"], "conflict");
    emu.stop().await;
}

#[tokio::test]
async fn case_10_status_moves_from_queued_through_running_to_completed() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_processing_delay = Duration::from_secs(2);
    })
    .await;
    let started = std::time::Instant::now();
    let upload = emu.json(emu.multipart("life.csv", b"h\n1\n").await).await;
    assert_eq!(upload["status"], "queued");
    assert_eq!(upload["numRows"], Value::Null);
    let uri = format!(
        "{}/api/v1{}",
        emu.base,
        upload["uri"].as_str().expect("uri")
    );
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed())).await;
    let running = emu.json(emu.get(&uri).send().await.expect("answers")).await;
    assert_eq!(running["status"], "running");
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(started.elapsed())).await;
    let done = emu.json(emu.get(&uri).send().await.expect("answers")).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["numRows"], 1);
    assert_eq!(done["numBytes"], 4);
    emu.stop().await;
}

#[tokio::test]
async fn case_10_names_matching_the_fail_pattern_end_failed_and_numbers_can_be_strings() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_fail_name_pattern = Some("*.bad.csv".to_string());
        options.redivis.redivis_numbers_as_strings = true;
    })
    .await;
    let failed = emu.json(emu.multipart("x.bad.csv", b"1\n").await).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["errorMessage"]
            .as_str()
            .expect("errorMessage is set")
            .contains("*.bad.csv")
    );
    let fine = emu.json(emu.multipart("x.csv", b"h\n1\n").await).await;
    assert_eq!(fine["status"], "completed");
    assert_eq!(fine["size"], "4");
    assert_eq!(fine["numRows"], "1");
    emu.stop().await;
}

#[tokio::test]
async fn case_11_list_pages_with_max_results_and_page_token() {
    let (emu, _dir) = emulator().await;
    for index in 0..5 {
        emu.multipart(&format!("f{index}.csv"), b"1\n").await;
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = emu.table("/uploads?maxResults=2");
        if let Some(token) = &token {
            url.push_str(&format!("&pageToken={token}"));
        }
        let page = emu.json(emu.get(&url).send().await.expect("answers")).await;
        pages += 1;
        for upload in page["results"].as_array().expect("results") {
            names.push(upload["name"].as_str().expect("name").to_string());
        }
        match page["nextPageToken"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["f0.csv", "f1.csv", "f2.csv", "f3.csv", "f4.csv"]);
    let bad = emu
        .get(&emu.table("/uploads?maxResults=0"))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    emu.stop().await;
}

#[tokio::test]
async fn case_12_deleting_a_missing_upload_is_404_and_deleting_twice_too() {
    let (emu, _dir) = emulator().await;
    let upload = emu.json(emu.multipart("gone.csv", b"1\n").await).await;
    let uri = format!(
        "{}/api/v1{}",
        emu.base,
        upload["uri"].as_str().expect("uri")
    );
    let first = emu
        .http
        .delete(&uri)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(first.status(), StatusCode::OK);
    let second = emu
        .http
        .delete(&uri)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(second.status(), StatusCode::NOT_FOUND);
    assert_eq!(emu.json(second).await["error"], "not_found");
    emu.stop().await;
}

// ---- session layer (§12 cases 13-21) -------------------------------------------------

async fn temp_upload(emu: &Emu, size: u64, resumable: bool) -> (String, String) {
    let body = emu
        .json(
            emu.post_json(
                &emu.table("/tempUploads"),
                json!({"tempUploads": [{"size": size, "name": "t.csv", "resumable": resumable}]}),
            )
            .await,
        )
        .await;
    (
        body["results"][0]["id"].as_str().expect("id").to_string(),
        body["results"][0]["url"].as_str().expect("url").to_string(),
    )
}

#[tokio::test]
async fn case_13_initiation_needs_the_start_header_and_answers_201_with_location() {
    let (emu, _dir) = emulator().await;
    let bytes = data(BLOCK + 10);
    let (temp_id, temp_url) = temp_upload(&emu, bytes.len() as u64, true).await;
    let refused = emu
        .http
        .post(&temp_url)
        .header("content-length", "0")
        .send()
        .await
        .expect("answers");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let started = emu
        .http
        .post(&temp_url)
        .bearer_auth(TOKEN)
        .header("x-goog-resumable", "start")
        .header("x-upload-content-length", bytes.len().to_string())
        .header("content-length", "0")
        .send()
        .await
        .expect("answers");
    assert_eq!(started.status(), StatusCode::CREATED);
    let location = started.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert!(location.starts_with(&format!("{}/upload/sessions/", emu.base)));
    let total = bytes.len().to_string();
    assert_eq!(
        emu.chunk(&location, &bytes[..BLOCK], 0, &total)
            .await
            .status(),
        StatusCode::PERMANENT_REDIRECT
    );
    assert_eq!(
        emu.chunk(&location, &bytes[BLOCK..], BLOCK, &total)
            .await
            .status(),
        StatusCode::OK
    );
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "t.csv", "tempUploadId": temp_id}),
        )
        .await;
    assert_eq!(posted.status(), StatusCode::OK);
    assert_eq!(emu.json(posted).await["hash"], md5_hex(&bytes));
    emu.stop().await;
}

#[tokio::test]
async fn case_14_incomplete_answers_carry_an_exact_range_and_none_at_zero() {
    let (emu, _dir) = emulator().await;
    let (_, url) = emu.resumable(3 * BLOCK as u64).await;
    let total = (3 * BLOCK).to_string();
    let empty = emu.status_query(&url, &total).await;
    assert_eq!(empty.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(range(&empty), None);
    emu.chunk(&url, &data(BLOCK), 0, &total).await;
    let query = emu.status_query(&url, &total).await;
    assert_eq!(query.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(range(&query).as_deref(), Some("bytes=0-262143"));
    assert!(query.headers().get("location").is_none());
    let stats = emu.stats("/_emulator/redivis/stats").await;
    assert_eq!(stats["status_queries"], 2);
    emu.stop().await;
}

#[tokio::test]
async fn case_15_partial_persistence_keeps_an_aligned_prefix_and_reports_it() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_partial_persistence = true;
        options.faults.seed = 3;
    })
    .await;
    let bytes = data(8 * BLOCK + 7);
    let total = bytes.len().to_string();
    let (id, url) = emu.resumable(bytes.len() as u64).await;
    let mut offset = 0usize;
    let mut short_chunks = 0;
    for _round in 0..200 {
        let end = (offset + 4 * BLOCK).min(bytes.len());
        let response = emu.chunk(&url, &bytes[offset..end], offset, &total).await;
        if response.status() == StatusCode::OK {
            offset = bytes.len();
            break;
        }
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        let kept = match range(&response) {
            None => 0,
            Some(range) => {
                range
                    .trim_start_matches("bytes=0-")
                    .parse::<usize>()
                    .expect("a number")
                    + 1
            }
        };
        assert_eq!(kept % BLOCK, 0, "kept prefixes are 256 KiB-aligned");
        assert!(kept >= offset && kept <= end);
        if kept < end {
            short_chunks += 1;
        }
        offset = kept;
    }
    assert_eq!(
        offset,
        bytes.len(),
        "the upload completes by resuming from Range"
    );
    assert!(short_chunks > 0, "some chunk was only partly kept");
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "p.csv", "resumableUploadId": id}),
        )
        .await;
    assert_eq!(emu.json(posted).await["hash"], md5_hex(&bytes));
    emu.stop().await;
}

#[tokio::test]
async fn case_16_short_chunks_gaps_and_total_mismatches_are_refused_overlaps_skipped() {
    let (emu, _dir) = emulator().await;
    let bytes = data(3 * BLOCK);
    let total = bytes.len().to_string();
    let (id, url) = emu.resumable(bytes.len() as u64).await;

    let short = emu.chunk(&url, &bytes[..1000], 0, &total).await;
    assert_eq!(short.status(), StatusCode::BAD_REQUEST);
    let text = emu.json(short).await["error_description"].to_string();
    assert!(
        text.contains("equal or greater than 262144") && text.contains("contained 1000 bytes"),
        "{text}"
    );

    let gap = emu
        .chunk(&url, &bytes[BLOCK..2 * BLOCK], BLOCK, &total)
        .await;
    assert_eq!(gap.status(), StatusCode::BAD_REQUEST);
    assert!(
        emu.json(gap).await["error_description"]
            .to_string()
            .contains("exceeds already uploaded size of 0 byte(s)")
    );

    let mismatch = emu.chunk(&url, &bytes[..BLOCK], 0, "999999999").await;
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);
    let query_mismatch = emu.status_query(&url, "5").await;
    assert_eq!(query_mismatch.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        range(&emu.chunk(&url, &bytes[..2 * BLOCK], 0, &total).await).as_deref(),
        Some("bytes=0-524287")
    );
    // Restart from 0 over bytes already held: the overlap is skipped.
    let overlap = emu.chunk(&url, &bytes, 0, &total).await;
    assert_eq!(overlap.status(), StatusCode::OK);
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "o.csv", "resumableUploadId": id}),
        )
        .await;
    assert_eq!(emu.json(posted).await["hash"], md5_hex(&bytes));
    emu.stop().await;
}

#[tokio::test]
async fn case_17_a_status_query_finalizes_a_session_holding_every_byte() {
    let (emu, _dir) = emulator().await;
    let bytes = data(BLOCK + 5);
    let total = bytes.len().to_string();
    let (_, url) = emu.resumable(bytes.len() as u64).await;
    // The final chunk is persisted whole, but its answer is a 503.
    emu.push_faults(
        json!([{"target": "redivis-session", "action": {"status": 503}, "persist": "all"}]),
    )
    .await;
    let failed = emu.chunk(&url, &bytes, 0, &total).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let query = emu.status_query(&url, &total).await;
    assert_eq!(query.status(), StatusCode::OK);
    assert_eq!(emu.json(query).await["hash"], md5_hex(&bytes));
    let again = emu.status_query(&url, &total).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "later status queries keep answering 200"
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_18_expired_sessions_are_404_poisoned_410_cancelled_499() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.session_ttl = Duration::from_millis(300);
    })
    .await;
    let (_, expiring) = emu.resumable(10).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        emu.status_query(&expiring, "10").await.status(),
        StatusCode::NOT_FOUND
    );
    emu.stop().await;

    let (emu, _dir) = emulator().await;
    let (poisoned_id, poisoned) = emu.resumable(10).await;
    let hook = emu
        .http
        .post(format!(
            "{}/_emulator/redivis/poison/{poisoned_id}",
            emu.base
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(hook.status(), StatusCode::OK);
    assert_eq!(
        emu.status_query(&poisoned, "10").await.status(),
        StatusCode::GONE
    );

    let (_, scripted) = emu.resumable(10).await;
    emu.push_faults(json!([{"target": "redivis-session", "action": {"status": 410}}]))
        .await;
    assert_eq!(
        emu.chunk(&scripted, b"0123456789", 0, "10").await.status(),
        StatusCode::GONE
    );
    assert_eq!(
        emu.status_query(&scripted, "10").await.status(),
        StatusCode::GONE,
        "poisoned for good"
    );

    let (_, cancelled) = emu.resumable(10).await;
    let deleted = emu.http.delete(&cancelled).send().await.expect("answers");
    assert_eq!(deleted.status().as_u16(), 499);
    assert_eq!(
        emu.status_query(&cancelled, "10").await.status().as_u16(),
        499
    );

    let (expire_id, expired) = emu.resumable(10).await;
    emu.http
        .post(format!("{}/_emulator/redivis/expire/{expire_id}", emu.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(
        emu.status_query(&expired, "10").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        emu.status_query(&format!("{}/upload/sessions/unknown", emu.base), "10")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_19_a_5xx_on_a_chunk_strikes_after_keeping_part_of_it() {
    let (emu, _dir) = emulator().await;
    let bytes = data(4 * BLOCK + 3);
    let total = bytes.len().to_string();
    let (_, url) = emu.resumable(bytes.len() as u64).await;
    emu.push_faults(json!([
        {"target": "redivis-session", "action": {"status": 503, "retry_after": "1"}, "persist": "half"}
    ]))
    .await;
    let half = emu.chunk(&url, &bytes[..4 * BLOCK], 0, &total).await;
    assert_eq!(half.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(half.headers()["retry-after"], "1");
    assert_eq!(
        range(&emu.status_query(&url, &total).await).as_deref(),
        Some("bytes=0-524287")
    );
    emu.push_faults(json!([
        {"target": "redivis-session", "action": {"status": 500}, "persist": "none"}
    ]))
    .await;
    let none = emu
        .chunk(&url, &bytes[2 * BLOCK..], 2 * BLOCK, &total)
        .await;
    assert_eq!(none.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        range(&emu.status_query(&url, &total).await).as_deref(),
        Some("bytes=0-524287")
    );
    let rest = emu
        .chunk(&url, &bytes[2 * BLOCK..], 2 * BLOCK, &total)
        .await;
    assert_eq!(rest.status(), StatusCode::OK);
    emu.stop().await;
}

#[tokio::test]
async fn case_19_a_dropped_chunk_leaves_the_client_without_an_answer() {
    let (emu, _dir) = emulator().await;
    let bytes = data(4 * BLOCK);
    let total = bytes.len().to_string();
    let (_, url) = emu.resumable(bytes.len() as u64).await;
    emu.push_faults(
        json!([{"target": "redivis-session", "action": {"drop": true}, "persist": "none"}]),
    )
    .await;
    let dropped = emu.try_chunk(&url, &bytes, 0, &total).await;
    assert!(
        dropped.is_err(),
        "the connection closes without a response: {dropped:?}"
    );
    let query = emu.status_query(&url, &total).await;
    assert_eq!(query.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(range(&query), None, "nothing kept: 308 without Range");
    let stats = emu.stats("/_emulator/stats").await;
    assert_eq!(stats["drops"], 1);
    assert_eq!(stats["faults"]["drop"], 1);
    emu.stop().await;
}

#[tokio::test]
async fn case_19_a_body_that_breaks_off_leaves_its_whole_blocks() {
    let (emu, _dir) = emulator().await;
    let bytes = data(4 * BLOCK);
    let total = bytes.len().to_string();
    let (_, url) = emu.resumable(bytes.len() as u64).await;
    // Two and a half blocks of the four the range announces, then the body fails: the
    // client closes the connection, and the emulator has read what was sent.
    let sent = bytes::Bytes::copy_from_slice(&bytes[..2 * BLOCK + BLOCK / 2]);
    let parts: Vec<std::io::Result<bytes::Bytes>> = vec![
        Ok(sent),
        Err(std::io::Error::other("the file could not be read further")),
    ];
    let broken = emu
        .http
        .put(&url)
        .header(
            "content-range",
            format!("bytes 0-{}/{total}", bytes.len() - 1),
        )
        .header("content-length", bytes.len())
        .body(reqwest::Body::wrap_stream(futures::stream::iter(parts)))
        .send()
        .await;
    assert!(broken.is_err(), "the body never ended: {broken:?}");
    let query = emu.status_query(&url, &total).await;
    assert_eq!(query.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        range(&query).as_deref(),
        Some(format!("bytes=0-{}", 2 * BLOCK - 1).as_str()),
        "the half block is not kept"
    );
    let resumed = emu
        .chunk(&url, &bytes[2 * BLOCK..], 2 * BLOCK, &total)
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    emu.stop().await;
}

#[tokio::test]
async fn case_20_session_urls_take_a_token_but_do_not_need_one() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_token = Some(crate::config::Secret::new("right"));
    })
    .await;
    let created = emu
        .http
        .post(emu.table("/resumableUpload?size=2"))
        .bearer_auth("right")
        .send()
        .await
        .expect("answers");
    let url = emu.json(created).await["url"]
        .as_str()
        .expect("url")
        .to_string();
    let with_token = emu
        .http
        .put(&url)
        .bearer_auth("anything")
        .header("content-range", "bytes */2")
        .send()
        .await
        .expect("answers");
    assert_eq!(with_token.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        emu.chunk(&url, b"ok", 0, "2").await.status(),
        StatusCode::OK
    );
    emu.stop().await;
}

#[tokio::test]
async fn case_21_a_plain_put_stores_exactly_what_arrived_and_a_short_one_fails_the_post() {
    let (emu, _dir) = emulator().await;
    let (id, url) = temp_upload(&emu, 10, false).await;
    let short = emu
        .http
        .put(&url)
        .bearer_auth(TOKEN)
        .body("01234")
        .send()
        .await
        .expect("answers");
    assert_eq!(short.status(), StatusCode::OK);
    let refused = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "t.csv", "tempUploadId": id}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(
        emu.json(refused).await["error_description"]
            .to_string()
            .contains("declared 10 bytes but its PUT carried 5")
    );
    // Last write wins: the whole body again.
    emu.http
        .put(&url)
        .bearer_auth(TOKEN)
        .body("0123456789")
        .send()
        .await
        .expect("answers");
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "t.csv", "tempUploadId": id}),
        )
        .await;
    assert_eq!(posted.status(), StatusCode::OK);
    assert_eq!(emu.json(posted).await["hash"], md5_hex(b"0123456789"));
    emu.stop().await;
}

// ---- zero bytes, strict tables, faults, rate limit, restart --------------------------

#[tokio::test]
async fn zero_byte_files_complete_on_every_path() {
    let (emu, _dir) = emulator().await;
    let (id, url) = emu.resumable(0).await;
    let query = emu.status_query(&url, "0").await;
    assert_eq!(
        query.status(),
        StatusCode::OK,
        "bytes */0 completes an empty session"
    );
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "empty.csv", "resumableUploadId": id}),
        )
        .await;
    let posted = emu.json(posted).await;
    assert_eq!(posted["size"], 0);
    assert_eq!(posted["hash"], md5_hex(b""));
    let inline = emu.multipart("empty2.csv", b"").await;
    assert_eq!(inline.status(), StatusCode::OK);
    assert_eq!(emu.json(inline).await["numRows"], 0);
    let (temp_id, temp_url) = temp_upload(&emu, 0, true).await;
    emu.http
        .put(&temp_url)
        .body("")
        .send()
        .await
        .expect("answers");
    let temp_post = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "empty3.csv", "tempUploadId": temp_id}),
        )
        .await;
    assert_eq!(temp_post.status(), StatusCode::OK);
    emu.stop().await;
}

#[tokio::test]
async fn strict_tables_must_be_created_first() {
    let (emu, _dir) = emulator_with(|options| options.redivis.strict_tables = true).await;
    let missing = emu
        .http
        .post(emu.table("/resumableUpload?size=1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let created = emu
        .http
        .post(format!("{}/_emulator/redivis/tables", emu.base))
        .json(&json!({"reference": TABLE}))
        .send()
        .await
        .expect("answers");
    assert_eq!(created.status(), StatusCode::OK);
    emu.resumable(1).await;
    emu.stop().await;
}

#[tokio::test]
async fn a_dropped_api_request_gets_no_answer_and_the_next_one_works() {
    let (emu, _dir) = emulator().await;
    emu.push_faults(json!({"target": "redivis-api", "action": {"drop": true}}))
        .await;
    let dropped = emu.get(&emu.table("/uploads")).send().await;
    let err = dropped.expect_err("the connection closes without a response");
    assert!(err.status().is_none());
    let next = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(next.status(), StatusCode::OK);
    emu.stop().await;
}

async fn statuses_with_seed(seed: u64) -> Vec<u16> {
    let (emu, _dir) = emulator_with(|options| {
        options.faults.fail_rate = 0.4;
        options.faults.seed = seed;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..24 {
        let response = emu
            .get(&emu.table("/uploads"))
            .send()
            .await
            .expect("answers");
        statuses.push(response.status().as_u16());
    }
    emu.stop().await;
    statuses
}

#[tokio::test]
async fn fail_rate_faults_repeat_with_the_same_seed() {
    let first = statuses_with_seed(11).await;
    let second = statuses_with_seed(11).await;
    let other = statuses_with_seed(12).await;
    assert_eq!(first, second);
    assert_ne!(first, other);
    assert!(first.contains(&200));
    assert!(
        first
            .iter()
            .any(|&status| [500, 502, 503].contains(&status))
    );
    assert!(
        first
            .iter()
            .all(|&status| [200, 500, 502, 503].contains(&status))
    );
}

#[tokio::test]
async fn scripted_faults_are_consumed_in_order_and_counted() {
    let (emu, _dir) = emulator().await;
    emu.push_faults(json!([
        {"target": "redivis-api", "action": {"status": 503, "retry_after": "2"}},
        {"target": "kifs", "action": {"status": 500}},
        {"target": "any", "action": {"status": 502}},
        {"target": "redivis-api", "action": {"delay_ms": 300}}
    ]))
    .await;
    let first = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()["retry-after"], "2");
    let second = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(
        second.status(),
        StatusCode::BAD_GATEWAY,
        "the kifs entry is skipped"
    );
    let started = std::time::Instant::now();
    let third = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(third.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let fourth = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(fourth.status(), StatusCode::OK);
    let pending = emu.stats("/_emulator/faults").await;
    assert_eq!(
        pending.as_array().map(Vec::len),
        Some(1),
        "the kifs entry is still queued"
    );
    emu.http
        .delete(format!("{}/_emulator/faults", emu.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(
        emu.stats("/_emulator/faults")
            .await
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let stats = emu.stats("/_emulator/stats").await;
    assert_eq!(stats["requests"]["redivis-api"], 4);
    assert_eq!(stats["faults"]["status_503"], 1);
    assert_eq!(stats["faults"]["status_502"], 1);
    assert_eq!(stats["faults"]["delay"], 1);
    let refused = emu
        .http
        .post(format!("{}/_emulator/faults", emu.base))
        .json(&json!([{"target": "nowhere", "action": {"drop": true}}]))
        .send()
        .await
        .expect("answers");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    emu.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_past_the_window_budget_and_spares_sessions() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.rate_limit = true;
        options.redivis.rate_limit_max = 3;
        options.redivis.rate_limit_window = Duration::from_secs(2);
    })
    .await;
    let (_, url) = emu.resumable(10).await;
    for expected in ["1", "0"] {
        let response = emu
            .get(&emu.table("/uploads"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-ratelimit-remaining"], expected);
    }
    let limited = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["x-ratelimit-limit"], "3");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=2).contains(&retry_after));
    assert_eq!(
        emu.status_query(&url, "10").await.status(),
        StatusCode::PERMANENT_REDIRECT
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = emu
        .get(&emu.table("/uploads"))
        .send()
        .await
        .expect("answers");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        emu.stats("/_emulator/redivis/stats").await["responses_429"],
        1
    );
    assert_eq!(emu.stats("/_emulator/stats").await["responses_429"], 1);
    emu.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let bytes = data(3 * BLOCK);
    let total = bytes.len().to_string();
    let emu = Emu::start(options(dir.path())).await;
    let done = emu
        .json(emu.upload_via_session("kept.csv", b"h\n1\n").await)
        .await;
    let (pending_id, pending_url) = emu.resumable(bytes.len() as u64).await;
    emu.chunk(&pending_url, &bytes[..BLOCK], 0, &total).await;
    emu.stop().await;

    let emu = Emu::start(options(dir.path())).await;
    let got = emu
        .get(&emu.table("/uploads/kept_csv"))
        .send()
        .await
        .expect("answers");
    assert_eq!(got.status(), StatusCode::OK);
    let got = emu.json(got).await;
    assert_eq!(got["id"], done["id"]);
    assert_eq!(got["hash"], md5_hex(b"h\n1\n"));
    let url = emu.session_url(&pending_id);
    assert_eq!(
        range(&emu.status_query(&url, &total).await).as_deref(),
        Some("bytes=0-262143")
    );
    assert_eq!(
        emu.chunk(&url, &bytes[BLOCK..], BLOCK, &total)
            .await
            .status(),
        StatusCode::OK
    );
    let posted = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "later.csv", "resumableUploadId": pending_id}),
        )
        .await;
    let posted = emu.json(posted).await;
    assert_eq!(posted["hash"], md5_hex(&bytes));
    let second = emu.json(emu.multipart("kept.csv", b"x\n").await).await;
    assert_eq!(
        second["name"], "kept (1).csv",
        "names taken before the restart stay taken"
    );
    emu.stop().await;
}

#[tokio::test]
async fn the_final_chunk_answer_can_be_held_back_after_it_is_persisted() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_final_chunk_delay = 800;
    })
    .await;
    let (_, url) = emu.resumable(3).await;
    let slow = tokio::spawn({
        let http = emu.http.clone();
        let url = url.clone();
        async move {
            http.put(&url)
                .header("content-range", "bytes 0-2/3")
                .body("abc")
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The bytes are already persisted while the answer is still held back.
    let query = emu.status_query(&url, "3").await;
    assert_eq!(query.status(), StatusCode::OK);
    assert!(!slow.is_finished());
    assert_eq!(
        slow.await
            .expect("the request task ends")
            .expect("answers")
            .status(),
        StatusCode::OK
    );
    emu.stop().await;
}

#[tokio::test]
async fn the_upload_post_answer_can_be_held_back_after_the_upload_exists() {
    let (emu, _dir) = emulator_with(|options| {
        options.redivis.redivis_post_delay = 800;
    })
    .await;
    let slow = tokio::spawn({
        let http = emu.http.clone();
        let url = emu.table("/uploads?name=late.csv");
        async move {
            http.post(&url)
                .bearer_auth(TOKEN)
                .header("content-type", "text/csv")
                .body("a\n")
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = emu
        .json(
            emu.get(&emu.table("/uploads"))
                .send()
                .await
                .expect("answers"),
        )
        .await;
    assert_eq!(listed["results"][0]["name"], "late.csv");
    assert!(!slow.is_finished());
    assert_eq!(
        slow.await
            .expect("the request task ends")
            .expect("answers")
            .status(),
        StatusCode::OK
    );
    emu.stop().await;
}

#[tokio::test]
async fn chunks_announcing_an_unknown_total_are_accepted_on_a_sized_session() {
    let (emu, _dir) = emulator().await;
    let bytes = data(BLOCK + 9);
    let created = emu
        .json(
            emu.post_json(
                &emu.table("/tempUploads"),
                json!({"tempUploads": [{"size": bytes.len(), "resumable": true}]}),
            )
            .await,
        )
        .await;
    let temp_url = created["results"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();
    let started = emu
        .http
        .post(&temp_url)
        .header("x-goog-resumable", "start")
        .header("content-length", "0")
        .send()
        .await
        .expect("answers");
    let location = started.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_string();
    let first = emu.chunk(&location, &bytes[..BLOCK], 0, "*").await;
    assert_eq!(range(&first).as_deref(), Some("bytes=0-262143"));
    let last = emu
        .chunk(&location, &bytes[BLOCK..], BLOCK, &bytes.len().to_string())
        .await;
    assert_eq!(last.status(), StatusCode::OK);
    emu.stop().await;
}

#[tokio::test]
async fn kifs_requests_get_plain_text_faults() {
    let (emu, _dir) = emulator().await;
    emu.push_faults(json!([{"target": "kifs", "action": {"status": 500}}]))
        .await;
    let response = emu
        .http
        .post(format!("{}/kifs/upload/files", emu.base))
        .body("x")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .starts_with("emulator: injected fault")
    );
    assert_eq!(emu.stats("/_emulator/stats").await["requests"]["kifs"], 1);
    emu.stop().await;
}

// ---- datasets and versions ---------------------------------------------------------------

impl Emu {
    async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the emulator answers")
    }

    async fn get_api(&self, path: &str) -> reqwest::Response {
        self.get(&format!("{}/api/v1{path}", self.base))
            .send()
            .await
            .expect("the emulator answers")
    }
}

#[tokio::test]
async fn a_release_closes_next_until_a_new_version_is_created_once() {
    let (emu, _dir) = emulator().await;
    assert_eq!(
        emu.multipart("a.csv", b"h\n1\n").await.status(),
        StatusCode::OK
    );
    let dataset = emu.json(emu.get_api("/datasets/owner.ds").await).await;
    assert_eq!(dataset["nextVersion"]["tag"], "v1.0");
    assert_eq!(dataset["nextVersion"]["isReleased"], false);
    assert_eq!(
        dataset["nextVersion"]["datasetUri"],
        "/datasets/owner.ds%3Anext"
    );
    assert_eq!(dataset["currentVersion"], Value::Null);
    let open = emu.post_empty("/datasets/owner.ds/versions").await;
    assert_eq!(open.status(), StatusCode::BAD_REQUEST, "v1.0 is still open");

    let released = emu
        .post_empty("/datasets/owner.ds%3Anext/versions/next/release")
        .await;
    assert_eq!(released.status(), StatusCode::OK);
    let released = emu.json(released).await;
    assert_eq!(released["isReleased"], true);
    assert_eq!(released["datasetUri"], "/datasets/owner.ds%3Av1_0");
    let dataset = emu.json(emu.get_api("/datasets/owner.ds").await).await;
    assert_eq!(dataset["nextVersion"], Value::Null);
    assert_eq!(dataset["currentVersion"]["tag"], "v1.0");
    // :next names nothing now: writes and reads alike.
    let refused = emu.multipart("b.csv", b"h\n2\n").await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let message = emu.json(refused).await["error_description"].to_string();
    assert!(message.contains("no unreleased version"), "{message}");
    assert_eq!(
        emu.get(&emu.table("/uploads"))
            .send()
            .await
            .expect("answers")
            .status(),
        StatusCode::NOT_FOUND
    );
    // The released version keeps its upload, as v1_0 and as the current version.
    for table in ["owner.ds%3Av1_0.tbl", "owner.ds%3Av1.0.tbl", "owner.ds.tbl"] {
        let listed = emu
            .json(emu.get_api(&format!("/tables/{table}/uploads")).await)
            .await;
        assert_eq!(listed["results"][0]["name"], "a.csv", "{table}");
    }
    let frozen = emu
        .http
        .delete(format!(
            "{}/api/v1/tables/owner.ds%3Av1_0.tbl/uploads/a_csv",
            emu.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(frozen.status(), StatusCode::BAD_REQUEST);

    let created = emu.post_empty("/datasets/owner.ds/versions").await;
    assert_eq!(created.status(), StatusCode::OK);
    assert_eq!(emu.json(created).await["tag"], "v2.0");
    let again = emu.post_empty("/datasets/owner.ds/versions").await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "one next version at a time"
    );
    let fresh = emu
        .json(
            emu.get(&emu.table("/uploads"))
                .send()
                .await
                .expect("answers"),
        )
        .await;
    assert_eq!(
        fresh["results"],
        json!([]),
        "the new version starts without uploads"
    );
    assert_eq!(
        emu.multipart("a.csv", b"h\n3\n").await.status(),
        StatusCode::OK
    );
    let stats = emu.stats("/_emulator/redivis/stats").await;
    assert_eq!(stats["api_requests"]["versions.post"], 3);
    assert_eq!(stats["api_requests"]["versions.release"], 1);
    emu.stop().await;
}

#[tokio::test]
async fn a_missing_next_version_can_answer_400_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut configured = options(dir.path());
    configured.redivis.redivis_missing_version_status = StatusCode::BAD_REQUEST;
    let emu = Emu::start(configured.clone()).await;
    let (id, url) = temp_upload(&emu, 4, false).await;
    emu.http
        .put(&url)
        .body("a\nb\n")
        .send()
        .await
        .expect("answers");
    emu.post_empty("/datasets/owner.ds/versions/next/release")
        .await;
    let refused = emu
        .post_json(
            &emu.table("/uploads"),
            json!({"name": "t.csv", "tempUploadId": id}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    emu.stop().await;
    let emu = Emu::start(configured).await;
    let dataset = emu.json(emu.get_api("/datasets/owner.ds").await).await;
    assert_eq!(dataset["nextVersion"], Value::Null);
    assert_eq!(dataset["currentVersion"]["tag"], "v1.0");
    emu.stop().await;
}

// ---- parse options -----------------------------------------------------------------------

impl Emu {
    /// Inline upload.post with `metadata` as given; returns the answer.
    async fn multipart_with(&self, metadata: Value, bytes: &[u8]) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .part(
                "metadata",
                reqwest::multipart::Part::bytes(metadata.to_string().into_bytes())
                    .file_name("metadata"),
            )
            .part(
                "data",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("data"),
            );
        self.http
            .post(self.table("/uploads"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("the emulator answers")
    }

    /// The upload as GET shows it, by the `uri` of a post's answer.
    async fn upload_of(&self, posted: reqwest::Response) -> Value {
        assert_eq!(posted.status(), StatusCode::OK, "upload.post succeeds");
        let posted = self.json(posted).await;
        let uri = posted["uri"].as_str().expect("uri").to_string();
        self.json(self.get_api(&uri).await).await
    }
}

#[tokio::test]
async fn parse_options_are_echoed_and_a_headerless_tsv_counts_every_row() {
    let (emu, _dir) = emulator().await;
    let metadata = json!({"name": "x.tsv", "type": "delimited", "delimiter": "\t",
        "hasHeaderRow": false, "skipBadRecords": true, "hasQuotedNewlines": true,
        "allowJaggedRows": true, "quoteCharacter": "'", "escapeCharacter": "\\",
        "nullMarkers": ["NA", ""]});
    let upload = emu
        .upload_of(
            emu.multipart_with(metadata.clone(), b"1\t2\n3\t4\n5\n")
                .await,
        )
        .await;
    for field in [
        "type",
        "delimiter",
        "hasHeaderRow",
        "skipBadRecords",
        "hasQuotedNewlines",
        "allowJaggedRows",
        "quoteCharacter",
        "escapeCharacter",
        "nullMarkers",
    ] {
        assert_eq!(upload[field], metadata[field], "{field} is echoed");
    }
    assert_eq!(upload["status"], "completed");
    assert_eq!(
        upload["numRows"], 3,
        "no header row; a jagged row is allowed"
    );
    assert_eq!(upload["badRecordsCount"], 0);
    // Defaults are echoed too.
    let plain = emu
        .upload_of(emu.multipart_with(json!({"name": "p.csv"}), b"a\n").await)
        .await;
    assert_eq!(plain["hasHeaderRow"], true);
    assert_eq!(plain["delimiter"], Value::Null);
    emu.stop().await;
}

#[tokio::test]
async fn options_of_the_wrong_shape_are_refused_at_post() {
    let (emu, _dir) = emulator().await;
    for metadata in [
        json!({"name": "a.csv", "type": "csv"}),
        json!({"name": "a.csv", "hasHeaderRow": "no"}),
        json!({"name": "a.csv", "delimiter": 44}),
        json!({"name": "a.csv", "nullMarkers": "NA"}),
    ] {
        let refused = emu.multipart_with(metadata.clone(), b"a\n").await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{metadata}");
    }
    let stats = emu.stats("/_emulator/redivis/stats").await;
    assert_eq!(stats["uploads_created"], 0);
    emu.stop().await;
}

#[tokio::test]
async fn a_bad_delimiter_or_a_malformed_file_fails_the_import_with_a_message() {
    let (emu, _dir) = emulator().await;
    let bad_delimiter = emu
        .upload_of(
            emu.multipart_with(json!({"name": "d.csv", "delimiter": "||"}), b"a||b\n")
                .await,
        )
        .await;
    assert_eq!(bad_delimiter["status"], "failed");
    let message = bad_delimiter["errorMessage"].as_str().expect("a message");
    assert!(message.contains("Invalid delimiter \"||\""), "{message}");

    let text = b"id,name\n1,a\n2,b,extra\n3,c\n";
    let malformed = emu
        .upload_of(
            emu.multipart_with(json!({"name": "m.csv", "skipBadRecords": false}), text)
                .await,
        )
        .await;
    assert_eq!(malformed["status"], "failed");
    let message = malformed["errorMessage"].as_str().expect("a message");
    assert!(message.contains("line 3"), "{message}");
    let skipped = emu
        .upload_of(
            emu.multipart_with(json!({"name": "s.csv", "skipBadRecords": true}), text)
                .await,
        )
        .await;
    assert_eq!(skipped["status"], "completed");
    assert_eq!(
        (
            skipped["numRows"].clone(),
            skipped["badRecordsCount"].clone()
        ),
        (json!(2), json!(1))
    );
    // Without options the bytes are taken as they are.
    let unchecked = emu
        .upload_of(emu.multipart_with(json!({"name": "u.csv"}), text).await)
        .await;
    assert_eq!(unchecked["status"], "completed");
    emu.stop().await;
}

// ---- file index tables -------------------------------------------------------------------

const FILES_TABLE: &str = "owner.ds:next.files";

impl Emu {
    async fn create_table(&self, reference: &str, is_file_index: bool) {
        let response = self
            .http
            .post(format!("{}/_emulator/redivis/tables", self.base))
            .json(&json!({"reference": reference, "isFileIndex": is_file_index}))
            .send()
            .await
            .expect("the emulator answers");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Temp uploads on `table` holding `files` (plain PUTs); returns their ids.
    async fn temp_files(&self, table: &str, files: &[(&str, &[u8])]) -> Vec<String> {
        let path = format!(
            "/tables/{}/tempUploads",
            super::reply::encode_segment(table)
        );
        let entries: Vec<Value> = files
            .iter()
            .map(|(name, bytes)| json!({"name": name, "size": bytes.len(), "resumable": false}))
            .collect();
        let list = self
            .json(
                self.post_json(
                    &format!("{}/api/v1{path}", self.base),
                    json!({"tempUploads": entries}),
                )
                .await,
            )
            .await;
        let mut ids = Vec::new();
        for (result, (_, bytes)) in list["results"]
            .as_array()
            .expect("results")
            .iter()
            .zip(files)
        {
            let put = self
                .http
                .put(result["url"].as_str().expect("url"))
                .body(bytes.to_vec())
                .send()
                .await
                .expect("answers");
            assert_eq!(put.status(), StatusCode::OK);
            ids.push(result["id"].as_str().expect("id").to_string());
        }
        ids
    }

    async fn raw_files(&self, table: &str, files: Value) -> reqwest::Response {
        let path = format!("/tables/{}/rawFiles", super::reply::encode_segment(table));
        self.post_json(
            &format!("{}/api/v1{path}", self.base),
            json!({ "files": files }),
        )
        .await
    }
}

#[tokio::test]
async fn file_index_tables_register_temp_uploads_in_one_call_and_list_them() {
    let (emu, _dir) = emulator().await;
    emu.create_table(FILES_TABLE, true).await;
    let table = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.files").await)
        .await;
    assert_eq!(table["isFileIndex"], true);
    let plain = emu
        .json(emu.get(&emu.table("")).send().await.expect("answers"))
        .await;
    assert_eq!(plain["isFileIndex"], false);

    let files: [(&str, &[u8]); 3] = [
        ("img/a.png", b"\x89PNG one"),
        ("b.pdf", b"%PDF two"),
        ("c.bin", b""),
    ];
    let ids = emu.temp_files(FILES_TABLE, &files).await;
    let entries: Vec<Value> = files
        .iter()
        .zip(&ids)
        .map(|((name, _), id)| json!({"name": name, "tempUploadId": id}))
        .collect();
    let registered = emu.raw_files(FILES_TABLE, json!(entries)).await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let registered = emu.json(registered).await;
    assert_eq!(registered["kind"], "rawFileList");
    let results = registered["results"].as_array().expect("results");
    use base64::Engine;
    for (result, (name, bytes)) in results.iter().zip(&files) {
        assert_eq!(result["kind"], "rawFile");
        assert_eq!(result["name"], *name, "request order");
        assert_eq!(result["size"], bytes.len() as u64);
        let md5 = md5::Md5::digest(bytes);
        use md5::Digest;
        let expected = base64::engine::general_purpose::STANDARD.encode(md5);
        assert_eq!(result["md5Hash"], expected);
    }
    let again = emu
        .raw_files(FILES_TABLE, json!([{"name": "x", "tempUploadId": ids[0]}]))
        .await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "a temp upload is used once"
    );

    let page = emu
        .json(
            emu.get_api("/tables/owner.ds%3Anext.files/rawFiles?maxResults=2")
                .await,
        )
        .await;
    assert_eq!(page["results"].as_array().map(Vec::len), Some(2));
    let token = page["nextPageToken"]
        .as_str()
        .expect("a second page")
        .to_string();
    let last = emu
        .json(
            emu.get_api(&format!(
                "/tables/owner.ds%3Anext.files/rawFiles?pageToken={token}"
            ))
            .await,
        )
        .await;
    assert_eq!(last["results"][0]["name"], "c.bin");
    assert_eq!(last["nextPageToken"], Value::Null);

    let uri = results[1]["uri"].as_str().expect("uri");
    assert_eq!(emu.json(emu.get_api(uri).await).await["name"], "b.pdf");
    let stored = super::stored_raw_file_path(
        &emu.data_dir,
        FILES_TABLE,
        results[0]["id"].as_str().expect("id"),
    );
    assert_eq!(std::fs::read(stored).expect("bytes on disk"), files[0].1);
    let deleted = emu
        .http
        .delete(format!("{}/api/v1{uri}", emu.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(emu.get_api(uri).await.status(), StatusCode::NOT_FOUND);
    let stats = emu.stats("/_emulator/redivis/stats").await;
    assert_eq!(stats["api_requests"]["rawFiles.post"], 2);
    emu.stop().await;
}

#[tokio::test]
async fn uploads_and_raw_files_each_keep_to_their_kind_of_table() {
    let (emu, _dir) =
        emulator_with(|options| options.redivis.redivis_no_raw_file_delete = true).await;
    emu.create_table(FILES_TABLE, true).await;
    let path = format!("{}/api/v1/tables/owner.ds%3Anext.files/uploads", emu.base);
    let refused = emu
        .post_json(&path, json!({"name": "a.csv", "type": "stream"}))
        .await;
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "no uploads into a file index"
    );
    let ids = emu.temp_files(TABLE, &[("a.csv", b"a\n")]).await;
    let wrong = emu
        .raw_files(TABLE, json!([{"name": "a.csv", "tempUploadId": ids[0]}]))
        .await;
    assert_eq!(
        wrong.status(),
        StatusCode::BAD_REQUEST,
        "no raw files into a plain table"
    );
    let ids = emu.temp_files(FILES_TABLE, &[("f.bin", b"f")]).await;
    let created = emu
        .json(
            emu.raw_files(
                FILES_TABLE,
                json!([{"name": "f.bin", "tempUploadId": ids[0]}]),
            )
            .await,
        )
        .await;
    let uri = created["results"][0]["uri"].as_str().expect("uri");
    let delete = emu
        .http
        .delete(format!("{}/api/v1{uri}", emu.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(
        delete.status(),
        StatusCode::NOT_FOUND,
        "DELETE can be switched off"
    );
    assert_eq!(
        emu.get_api(uri).await.status(),
        StatusCode::OK,
        "and the file stays"
    );
    // A release keeps the kind: the next version's table is a file index again.
    emu.post_empty("/datasets/owner.ds/versions/next/release")
        .await;
    emu.post_empty("/datasets/owner.ds/versions").await;
    let table = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.files").await)
        .await;
    assert_eq!(table["isFileIndex"], true);
    assert_eq!(table["numFiles"], 0);
    let released = emu
        .json(emu.get_api("/tables/owner.ds%3Av1_0.files/rawFiles").await)
        .await;
    assert_eq!(released["results"][0]["name"], "f.bin");
    emu.stop().await;
}

#[tokio::test]
async fn tables_can_be_created_as_users_do_through_the_dataset() {
    let (emu, _dir) = emulator_with(|options| options.redivis.strict_tables = true).await;
    assert_eq!(
        emu.get_api("/datasets/owner.ds").await.status(),
        StatusCode::NOT_FOUND
    );
    emu.create_table(TABLE, false).await;
    let created = emu
        .post_json(
            &format!("{}/api/v1/datasets/owner.ds/tables", emu.base),
            json!({"name": "scans", "isFileIndex": true}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::OK);
    assert_eq!(emu.json(created).await["isFileIndex"], true);
    let twice = emu
        .post_json(
            &format!("{}/api/v1/datasets/owner.ds/tables", emu.base),
            json!({"name": "scans"}),
        )
        .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    let table = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.scans").await)
        .await;
    assert_eq!(table["isFileIndex"], true);
    assert_eq!(
        emu.get_api("/tables/owner.ds%3Anext.other").await.status(),
        StatusCode::NOT_FOUND
    );
    emu.stop().await;
}

#[tokio::test]
async fn raw_files_and_table_kinds_survive_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let emu = Emu::start(options(dir.path())).await;
    emu.create_table(FILES_TABLE, true).await;
    let ids = emu.temp_files(FILES_TABLE, &[("kept.bin", b"kept")]).await;
    let registered = emu
        .raw_files(
            FILES_TABLE,
            json!([{"name": "kept.bin", "tempUploadId": ids[0]}]),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    emu.stop().await;

    let emu = Emu::start(options(dir.path())).await;
    let table = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.files").await)
        .await;
    assert_eq!(table["isFileIndex"], true);
    let listed = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.files/rawFiles").await)
        .await;
    assert_eq!(listed["results"][0]["name"], "kept.bin");
    // Sequence numbers go on after the restart: a new file lists after the old one.
    let ids = emu.temp_files(FILES_TABLE, &[("new.bin", b"new")]).await;
    emu.raw_files(
        FILES_TABLE,
        json!([{"name": "new.bin", "tempUploadId": ids[0]}]),
    )
    .await;
    let listed = emu
        .json(emu.get_api("/tables/owner.ds%3Anext.files/rawFiles").await)
        .await;
    let names: Vec<&str> = listed["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["kept.bin", "new.bin"]);
    emu.stop().await;
}
