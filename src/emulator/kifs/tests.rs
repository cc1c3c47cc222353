//! The emulator served on 127.0.0.1:0 and called over HTTP with the wire codec.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::*;
use crate::upload::kifs::wire::*;

const BOTH: [KifsEncoding; 2] = [KifsEncoding::Binary, KifsEncoding::Json];

struct Emu {
    base: String,
    client: reqwest::Client,
    stats: Arc<KifsStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emu {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(options: &KifsOptions, dir: &Path) -> Emu {
    let (kifs, stats) =
        router_with_stats(options, dir).expect("the emulator starts on a fresh dir");
    let app = Router::new().nest("/kifs", kifs);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the test server runs");
    });
    Emu {
        base: format!("http://{addr}/kifs"),
        client: reqwest::Client::new(),
        stats,
        task,
    }
}

fn with_dirs(dirs: &[&str]) -> KifsOptions {
    KifsOptions {
        kifs_directories: dirs.iter().map(|d| d.to_string()).collect(),
        ..KifsOptions::default()
    }
}

fn map(pairs: &[(&str, &str)]) -> StringMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One multipart step of `name`, with part `(number, bytes)` for `upload_part`.
fn multipart_request(
    name: &str,
    uuid: &str,
    operation: &str,
    part: Option<(i64, &[u8])>,
) -> UploadFilesRequest {
    let mut options = map(&[
        ("multipart_operation", operation),
        ("multipart_upload_uuid", uuid),
    ]);
    let mut data = Vec::new();
    if let Some((number, bytes)) = part {
        options.insert("multipart_upload_part_number".into(), number.to_string());
        data.push(Bytes::copy_from_slice(bytes));
    }
    UploadFilesRequest {
        file_names: strings(&[name]),
        file_data: data,
        options,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Emu {
    async fn post(
        &self,
        path: &str,
        content_type: Option<&str>,
        auth: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            request = request.header("Content-type", ct);
        }
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request.send().await.expect("the emulator answers")
    }

    async fn call_as<Req: Record, Resp: Record>(
        &self,
        auth: Option<&str>,
        enc: KifsEncoding,
        path: &str,
        request: &Req,
    ) -> Result<Resp, String> {
        let response = self
            .post(path, Some(content_type(enc)), auth, request.to_body(enc))
            .await;
        let status = response.status();
        assert_eq!(
            response.headers()["content-type"],
            content_type(enc),
            "replies follow the request encoding"
        );
        let body = response.bytes().await.expect("the reply body arrives");
        let wrapper = Wrapper::decode(enc, &body).expect("replies are well-formed wrappers");
        match wrapper.into_inner::<Resp>(enc) {
            Ok(inner) => {
                assert_eq!(status, 200);
                Ok(inner)
            }
            Err(WrapperError::Remote(message)) => {
                assert_eq!(status, 400, "ERROR replies are 400: {message}");
                Err(message)
            }
            Err(e) => panic!("malformed reply: {e}"),
        }
    }

    async fn call<Req: Record, Resp: Record>(
        &self,
        enc: KifsEncoding,
        path: &str,
        request: &Req,
    ) -> Result<Resp, String> {
        self.call_as(None, enc, path, request).await
    }

    async fn upload(
        &self,
        enc: KifsEncoding,
        names: &[&str],
        data: &[&[u8]],
        options: StringMap,
    ) -> Result<UploadFilesResponse, String> {
        let mut options = options;
        if enc == KifsEncoding::Json {
            options.insert("file_encoding".into(), "base64".into());
        }
        let request = UploadFilesRequest {
            file_names: strings(names),
            file_data: data.iter().map(|d| Bytes::copy_from_slice(d)).collect(),
            options,
        };
        self.call(enc, "/upload/files", &request).await
    }

    /// The error of a whole-file upload into directory `d` that is refused, once checked
    /// that `d` holds no file after it.
    async fn refused_storing_nothing(
        &self,
        enc: KifsEncoding,
        names: &[&str],
        data: &[&[u8]],
    ) -> String {
        let err = self
            .upload(enc, names, data, StringMap::new())
            .await
            .unwrap_err();
        let stored = self.show_files(enc, &["d"]).await.unwrap().file_names;
        assert!(stored.is_empty(), "{err}: yet it stored {stored:?}");
        err
    }

    async fn multipart(
        &self,
        enc: KifsEncoding,
        name: &str,
        uuid: &str,
        operation: &str,
        part: Option<(i64, &[u8])>,
    ) -> Result<UploadFilesResponse, String> {
        let request = multipart_request(name, uuid, operation, part);
        self.call(enc, "/upload/files", &request).await
    }

    async fn show_files(
        &self,
        enc: KifsEncoding,
        paths: &[&str],
    ) -> Result<ShowFilesResponse, String> {
        let request = ShowFilesRequest {
            paths: strings(paths),
            options: StringMap::new(),
        };
        self.call(enc, "/show/files", &request).await
    }

    async fn download(
        &self,
        enc: KifsEncoding,
        names: &[&str],
        ranges: &[(i64, i64)],
    ) -> Result<DownloadFilesResponse, String> {
        let request = DownloadFilesRequest {
            file_names: strings(names),
            read_offsets: ranges.iter().map(|r| r.0).collect(),
            read_lengths: ranges.iter().map(|r| r.1).collect(),
            options: StringMap::new(),
        };
        self.call(enc, "/download/files", &request).await
    }
}

#[tokio::test]
async fn whole_file_upload_stores_the_content_and_lists_it() {
    for enc in BOTH {
        let dir = TempDir::new().unwrap();
        let emu = start(&with_dirs(&["data"]), dir.path()).await;
        emu.upload(
            enc,
            &["data/sub/a.txt", "data/b.bin"],
            &[b"hello", &[0, 255, 1]],
            StringMap::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(stored_file_path(dir.path(), "data/sub/a.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::read(stored_file_path(dir.path(), "data/b.bin")).unwrap(),
            [0, 255, 1]
        );
        let listed = emu.show_files(enc, &["data"]).await.unwrap();
        assert_eq!(
            listed.file_names,
            strings(&["data/b.bin", "data/sub/a.txt"])
        );
        assert_eq!(listed.sizes, vec![3, 5]);
        assert_eq!(listed.users, strings(&["anonymous", "anonymous"]));
        assert!(listed.creation_times.iter().all(|t| *t > 1_600_000_000_000));
        assert!(!listed.info.contains_key("multipart_uploads"));
    }
}

#[tokio::test]
async fn upload_replaces_an_existing_file() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(enc, &["d/x"], &[b"old content"], StringMap::new())
        .await
        .unwrap();
    emu.upload(enc, &["d/x"], &[b"new"], StringMap::new())
        .await
        .unwrap();
    let got = emu.download(enc, &["d/x"], &[]).await.unwrap();
    assert_eq!(got.file_data, vec![Bytes::from_static(b"new")]);
    assert_eq!(emu.show_files(enc, &["d/x"]).await.unwrap().sizes, vec![3]);
}

#[tokio::test]
async fn zero_length_file_is_created_empty() {
    for enc in BOTH {
        let dir = TempDir::new().unwrap();
        let emu = start(&with_dirs(&["d"]), dir.path()).await;
        emu.upload(enc, &["d/empty"], &[b""], StringMap::new())
            .await
            .unwrap();
        let listed = emu.show_files(enc, &["d/empty"]).await.unwrap();
        assert_eq!(listed.file_names, strings(&["d/empty"]));
        assert_eq!(listed.sizes, vec![0]);
        assert!(
            std::fs::read(stored_file_path(dir.path(), "d/empty"))
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn whole_file_upload_is_all_or_nothing_and_checks_its_arrays() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let err = emu
        .refused_storing_nothing(enc, &["d/ok", "missing/x"], &[b"1", b"2"])
        .await;
    assert_eq!(err, "Directory 'missing' does not exist");
    let err = emu
        .upload(enc, &["d/a", "d/b"], &[b"1"], StringMap::new())
        .await
        .unwrap_err();
    assert!(
        err.contains("file_names has 2 elements but file_data has 1"),
        "{err}"
    );
    let err = emu
        .upload(enc, &[], &[], StringMap::new())
        .await
        .unwrap_err();
    assert!(err.contains("file_names is empty"), "{err}");
    let err = emu
        .refused_storing_nothing(enc, &["d/a", "d/b", "d/a"], &[b"1", b"2", b"3"])
        .await;
    assert_eq!(err, "File 'd/a' appears twice in file_names");
    let err = emu
        .upload(enc, &["d/a"], &[b"1"], map(&[("delete_if_exists", "yes")]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "Invalid value 'yes' for option 'delete_if_exists' (expected 'true' or 'false')"
    );
}

#[tokio::test]
async fn a_name_that_is_both_file_and_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(enc, &["d/x"], &[b"file"], StringMap::new())
        .await
        .unwrap();
    let err = emu
        .upload(enc, &["d/x/y"], &[b"1"], StringMap::new())
        .await
        .unwrap_err();
    assert!(err.contains("'d/x' is a file"), "{err}");
    emu.upload(enc, &["d/p/q"], &[b"1"], StringMap::new())
        .await
        .unwrap();
    let err = emu
        .upload(enc, &["d/p"], &[b"1"], StringMap::new())
        .await
        .unwrap_err();
    assert!(err.contains("it is a directory holding 'd/p/q'"), "{err}");
    // Once the child is deleted the name is free again.
    let deleted: DeleteFilesResponse = emu
        .call(
            enc,
            "/delete/files",
            &DeleteFilesRequest {
                file_names: strings(&["d/p/q"]),
                options: StringMap::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(deleted.file_names, strings(&["d/p/q"]));
    emu.upload(enc, &["d/p"], &[b"now a file"], StringMap::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn multipart_upload_assembles_parts_in_order() {
    for enc in BOTH {
        let dir = TempDir::new().unwrap();
        let emu = start(&with_dirs(&["d"]), dir.path()).await;
        let uuid = "0b0f3a5e-8c1d-4f2a-9c3e-5d6f7a8b9c0d";
        emu.multipart(enc, "d/big.bin", uuid, "init", None)
            .await
            .unwrap();
        emu.multipart(enc, "d/big.bin", uuid, "upload_part", Some((1, b"hello ")))
            .await
            .unwrap();
        emu.multipart(
            enc,
            "d/big.bin",
            uuid,
            "upload_part",
            Some((2, &[0xff, 0x00])),
        )
        .await
        .unwrap();
        // A trailing zero-length part, as the Python file handler sends.
        emu.multipart(enc, "d/big.bin", uuid, "upload_part", Some((3, b"")))
            .await
            .unwrap();

        let listed = emu.show_files(enc, &["d"]).await.unwrap();
        assert!(
            listed.file_names.is_empty(),
            "in-progress uploads are not files"
        );
        let uploads: serde_json::Value =
            serde_json::from_str(&listed.info["multipart_uploads"]).unwrap();
        let upload = &uploads[0];
        let keys: Vec<&String> = upload.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "{upload}");
        assert_eq!(upload["file_name"], "d/big.bin");
        assert_eq!(upload["uuid"], uuid);
        assert_eq!(upload["user"], "anonymous");
        assert_eq!(upload["last_part_number"], 3);
        assert_eq!(upload["bytes_received"], 8);
        assert!(upload["creation_time"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(
            listed.info["multipart_uploads"].starts_with("[{\"file_name\":\"d/big.bin\",\"uuid\":"),
            "fields keep their documented order: {}",
            listed.info["multipart_uploads"]
        );

        emu.multipart(enc, "d/big.bin", uuid, "complete", None)
            .await
            .unwrap();
        let listed = emu.show_files(enc, &["d"]).await.unwrap();
        assert_eq!(listed.file_names, strings(&["d/big.bin"]));
        assert_eq!(listed.sizes, vec![8]);
        assert!(!listed.info.contains_key("multipart_uploads"));
        assert_eq!(
            std::fs::read(stored_file_path(dir.path(), "d/big.bin")).unwrap(),
            b"hello \xff\x00"
        );
        let err = emu
            .multipart(enc, "d/big.bin", uuid, "complete", None)
            .await
            .unwrap_err();
        assert!(err.contains("is not in progress"), "{err}");
    }
}

#[tokio::test]
async fn out_of_order_part_is_an_error_and_keeps_the_upload_alive() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let uuid = "11111111-2222-4333-8444-555555555555";
    emu.multipart(enc, "d/f", uuid, "init", None).await.unwrap();
    let err = emu
        .multipart(enc, "d/f", uuid, "upload_part", Some((2, b"x")))
        .await
        .unwrap_err();
    assert!(
        err.contains("Out-of-order part 2") && err.contains("expected part 1"),
        "{err}"
    );
    emu.multipart(enc, "d/f", uuid, "upload_part", Some((1, b"a")))
        .await
        .unwrap();
    let err = emu
        .multipart(enc, "d/f", uuid, "upload_part", Some((1, b"a")))
        .await
        .unwrap_err();
    assert!(
        err.contains("expected part 2"),
        "a duplicate is refused: {err}"
    );
    let err = emu
        .multipart(enc, "d/other", uuid, "upload_part", Some((2, b"b")))
        .await
        .unwrap_err();
    assert!(err.contains("is for 'd/f'"), "{err}");
    emu.multipart(enc, "d/f", uuid, "upload_part", Some((2, b"b")))
        .await
        .unwrap();
    emu.multipart(enc, "d/f", uuid, "complete", None)
        .await
        .unwrap();
    let got = emu.download(enc, &["d/f"], &[]).await.unwrap();
    assert_eq!(got.file_data, vec![Bytes::from_static(b"ab")]);
}

#[tokio::test]
async fn multipart_requests_are_checked() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let uuid = "22222222-2222-4333-8444-555555555555";
    let err = emu
        .multipart(enc, "d/f", "", "init", None)
        .await
        .unwrap_err();
    assert!(
        err.contains("needs option 'multipart_upload_uuid'"),
        "{err}"
    );
    let err = emu
        .multipart(enc, "d/f", "../x", "init", None)
        .await
        .unwrap_err();
    assert!(err.contains("Invalid multipart_upload_uuid"), "{err}");
    let err = emu
        .multipart(enc, "d/f", uuid, "restart", None)
        .await
        .unwrap_err();
    assert!(
        err.contains("Invalid value 'restart' for option 'multipart_operation'"),
        "{err}"
    );
    emu.multipart(enc, "d/f", uuid, "init", None).await.unwrap();
    let err = emu
        .multipart(enc, "d/f", uuid, "init", None)
        .await
        .unwrap_err();
    assert!(err.contains("already in progress"), "{err}");
    let request = UploadFilesRequest {
        file_names: strings(&["d/f"]),
        file_data: vec![Bytes::from_static(b"x")],
        options: map(&[
            ("multipart_operation", "complete"),
            ("multipart_upload_uuid", uuid),
        ]),
    };
    let err = emu
        .call::<_, UploadFilesResponse>(enc, "/upload/files", &request)
        .await
        .unwrap_err();
    assert!(err.contains("takes no file_data"), "{err}");
    let request = UploadFilesRequest {
        file_names: strings(&["d/f"]),
        file_data: vec![Bytes::from_static(b"x")],
        options: map(&[
            ("multipart_operation", "upload_part"),
            ("multipart_upload_uuid", uuid),
        ]),
    };
    let err = emu
        .call::<_, UploadFilesResponse>(enc, "/upload/files", &request)
        .await
        .unwrap_err();
    assert!(
        err.contains("needs option 'multipart_upload_part_number'"),
        "{err}"
    );
    let err = emu
        .multipart(
            enc,
            "d/f",
            "33333333-2222-4333-8444-555555555555",
            "cancel",
            None,
        )
        .await
        .unwrap_err();
    assert!(err.contains("is not in progress"), "{err}");
    // An empty complete makes an empty file.
    emu.multipart(enc, "d/f", uuid, "complete", None)
        .await
        .unwrap();
    assert_eq!(emu.show_files(enc, &["d/f"]).await.unwrap().sizes, vec![0]);
}

#[tokio::test]
async fn cancel_discards_the_upload_and_keeps_the_old_file() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Json;
    emu.upload(enc, &["d/f"], &[b"old"], StringMap::new())
        .await
        .unwrap();
    let uuid = "44444444-2222-4333-8444-555555555555";
    emu.multipart(enc, "d/f", uuid, "init", None).await.unwrap();
    emu.multipart(enc, "d/f", uuid, "upload_part", Some((1, b"new")))
        .await
        .unwrap();
    let during = emu.download(enc, &["d/f"], &[]).await.unwrap();
    assert_eq!(
        during.file_data,
        vec![Bytes::from_static(b"old")],
        "old version until complete"
    );
    emu.multipart(enc, "d/f", uuid, "cancel", None)
        .await
        .unwrap();
    let err = emu
        .multipart(enc, "d/f", uuid, "upload_part", Some((2, b"x")))
        .await
        .unwrap_err();
    assert!(err.contains("is not in progress"), "{err}");
    let after = emu.show_files(enc, &["d"]).await.unwrap();
    assert_eq!(after.sizes, vec![3]);
    assert!(!after.info.contains_key("multipart_uploads"));
    assert!(!dir.path().join("multipart").join(uuid).exists());
}

#[tokio::test]
async fn delete_if_exists_on_init_removes_the_target_at_once() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(enc, &["d/f"], &[b"old"], StringMap::new())
        .await
        .unwrap();
    let request = UploadFilesRequest {
        file_names: strings(&["d/f"]),
        file_data: vec![],
        options: map(&[
            ("multipart_operation", "init"),
            (
                "multipart_upload_uuid",
                "55555555-2222-4333-8444-555555555555",
            ),
            ("delete_if_exists", "true"),
        ]),
    };
    let _: UploadFilesResponse = emu.call(enc, "/upload/files", &request).await.unwrap();
    assert!(
        emu.show_files(enc, &["d"])
            .await
            .unwrap()
            .file_names
            .is_empty()
    );
}

#[tokio::test]
async fn new_init_supersedes_the_older_upload_of_the_same_target() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let old = "66666666-2222-4333-8444-555555555555";
    let new = "77777777-2222-4333-8444-555555555555";
    let other = "88888888-2222-4333-8444-555555555555";
    emu.multipart(enc, "d/f", old, "init", None).await.unwrap();
    emu.multipart(enc, "d/f", old, "upload_part", Some((1, b"stale")))
        .await
        .unwrap();
    emu.multipart(enc, "d/g", other, "init", None)
        .await
        .unwrap();
    emu.multipart(enc, "d/f", new, "init", None).await.unwrap();
    let err = emu
        .multipart(enc, "d/f", old, "upload_part", Some((2, b"x")))
        .await
        .unwrap_err();
    assert!(err.contains("superseded"), "{err}");
    let listed = emu.show_files(enc, &["d"]).await.unwrap();
    let uploads: Vec<serde_json::Value> =
        serde_json::from_str(&listed.info["multipart_uploads"]).unwrap();
    let uuids: Vec<&str> = uploads
        .iter()
        .map(|u| u["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids.len(), 2);
    assert!(uuids.contains(&new) && uuids.contains(&other), "{uuids:?}");
    // multipart_uploads is filtered by the requested paths.
    let only_g = emu.show_files(enc, &["d/g"]).await.unwrap();
    assert!(only_g.info["multipart_uploads"].contains(other));
    assert!(!only_g.info["multipart_uploads"].contains(new));
    emu.multipart(enc, "d/f", new, "upload_part", Some((1, b"fresh")))
        .await
        .unwrap();
    emu.multipart(enc, "d/f", new, "complete", None)
        .await
        .unwrap();
    let got = emu.download(enc, &["d/f"], &[]).await.unwrap();
    assert_eq!(got.file_data, vec![Bytes::from_static(b"fresh")]);
}

#[tokio::test]
async fn show_files_selects_by_name_and_wildcard() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d", "e"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(
        enc,
        &["d/a.csv", "d/b.txt", "d/sub/c.csv", "e/a.csv"],
        &[b"1", b"22", b"333", b"4"],
        StringMap::new(),
    )
    .await
    .unwrap();
    let csv = emu.show_files(enc, &["d/*.csv"]).await.unwrap();
    assert_eq!(csv.file_names, strings(&["d/a.csv", "d/sub/c.csv"]));
    let overlap = emu
        .show_files(enc, &["d/a.csv", "d/?.csv", "e"])
        .await
        .unwrap();
    assert_eq!(overlap.file_names, strings(&["d/a.csv", "e/a.csv"]));
    let none = emu.show_files(enc, &["d/nothing*"]).await.unwrap();
    assert!(none.file_names.is_empty() && none.sizes.is_empty());
    let err = emu.show_files(enc, &["nope"]).await.unwrap_err();
    assert_eq!(err, "Directory 'nope' does not exist");
}

#[tokio::test]
async fn show_directories_reports_permissions_usage_and_limits() {
    let dir = TempDir::new().unwrap();
    let options = KifsOptions {
        kifs_directories: strings(&["rw"]),
        kifs_read_only_directories: strings(&["ro"]),
        ..KifsOptions::default()
    };
    let emu = start(&options, dir.path()).await;
    for enc in BOTH {
        let _ = emu
            .upload(enc, &["rw/x"], &[b"12345"], StringMap::new())
            .await
            .unwrap();
        let all: ShowDirectoriesResponse = emu
            .call(enc, "/show/directories", &ShowDirectoriesRequest::default())
            .await
            .unwrap();
        assert_eq!(all.directories, strings(&["ro", "rw"]));
        assert_eq!(
            all.permissions,
            strings(&["directory_read", "directory_write"])
        );
        assert_eq!(all.data_usages, vec![0, 5]);
        assert_eq!(all.data_limits, vec![-1, -1]);
        assert_eq!(all.users, strings(&["admin", "admin"]));
        let one: ShowDirectoriesResponse = emu
            .call(
                enc,
                "/show/directories",
                &ShowDirectoriesRequest {
                    directory_name: "ro".into(),
                    options: StringMap::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(one.directories, strings(&["ro"]));
        let err = emu
            .call::<_, ShowDirectoriesResponse>(
                enc,
                "/show/directories",
                &ShowDirectoriesRequest {
                    directory_name: "nope".into(),
                    options: StringMap::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err, "Directory 'nope' does not exist");
        let err = emu
            .upload(enc, &["ro/x"], &[b"1"], StringMap::new())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "User 'anonymous' does not have write permission on directory 'ro'"
        );
    }
}

#[tokio::test]
async fn create_directory_refuses_duplicates_unless_told_not_to() {
    let dir = TempDir::new().unwrap();
    let emu = start(&KifsOptions::default(), dir.path()).await;
    for enc in BOTH {
        let name = format!("new-{enc:?}");
        let request = CreateDirectoryRequest {
            directory_name: name.clone(),
            options: map(&[("data_limit", "100")]),
        };
        let created: CreateDirectoryResponse =
            emu.call(enc, "/create/directory", &request).await.unwrap();
        assert_eq!(created.directory_name, name);
        let err = emu
            .call::<_, CreateDirectoryResponse>(enc, "/create/directory", &request)
            .await
            .unwrap_err();
        assert_eq!(err, format!("Directory '{name}' already exists"));
        let again = CreateDirectoryRequest {
            directory_name: name.clone(),
            options: map(&[("no_error_if_exists", "true")]),
        };
        let _: CreateDirectoryResponse = emu.call(enc, "/create/directory", &again).await.unwrap();
        let listed: ShowDirectoriesResponse = emu
            .call(
                enc,
                "/show/directories",
                &ShowDirectoriesRequest {
                    directory_name: name.clone(),
                    options: StringMap::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.data_limits, vec![100]);
        assert_eq!(listed.permissions, strings(&["directory_write"]));
    }
    for (name, options, needle) in [
        ("a/b", map(&[]), "character '/' is not allowed"),
        ("", map(&[]), "the name is empty"),
        (
            "x",
            map(&[("data_limit", "lots")]),
            "Invalid value 'lots' for option 'data_limit'",
        ),
        (
            "x",
            map(&[("create_home_directory", "bob")]),
            "directory_name must be empty",
        ),
    ] {
        let err = emu
            .call::<_, CreateDirectoryResponse>(
                KifsEncoding::Binary,
                "/create/directory",
                &CreateDirectoryRequest {
                    directory_name: name.into(),
                    options,
                },
            )
            .await
            .unwrap_err();
        assert!(err.contains(needle), "{name}: {err}");
    }
}

#[tokio::test]
async fn home_directory_belongs_to_its_user_only() {
    let dir = TempDir::new().unwrap();
    let emu = start(&KifsOptions::default(), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let created: CreateDirectoryResponse = emu
        .call(
            enc,
            "/create/directory",
            &CreateDirectoryRequest {
                directory_name: String::new(),
                options: map(&[("create_home_directory", "alice")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(created.directory_name, "~alice");
    let alice = format!("Basic {}", BASE64_STANDARD.encode("alice:pw"));
    let request = UploadFilesRequest {
        file_names: strings(&["~alice/notes"]),
        file_data: vec![Bytes::from_static(b"hi")],
        options: StringMap::new(),
    };
    let _: UploadFilesResponse = emu
        .call_as(Some(&alice), enc, "/upload/files", &request)
        .await
        .unwrap();
    let err = emu
        .call::<_, UploadFilesResponse>(enc, "/upload/files", &request)
        .await
        .unwrap_err();
    assert!(
        err.contains("User 'anonymous' does not have write permission"),
        "{err}"
    );
    let visible: ShowDirectoriesResponse = emu
        .call(enc, "/show/directories", &ShowDirectoriesRequest::default())
        .await
        .unwrap();
    assert!(visible.directories.is_empty(), "others do not see ~alice");
}

#[tokio::test]
async fn delete_files_removes_matches_and_reports_missing_names() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Json;
    emu.upload(
        enc,
        &["d/a.tmp", "d/b.tmp", "d/keep"],
        &[b"1", b"2", b"3"],
        StringMap::new(),
    )
    .await
    .unwrap();
    let delete = |names: &[&str], options: StringMap| DeleteFilesRequest {
        file_names: strings(names),
        options,
    };
    let deleted: DeleteFilesResponse = emu
        .call(
            enc,
            "/delete/files",
            &delete(&["d/*.tmp"], StringMap::new()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.file_names, strings(&["d/a.tmp", "d/b.tmp"]));
    assert!(!stored_file_path(dir.path(), "d/a.tmp").exists());
    let err = emu
        .call::<_, DeleteFilesResponse>(
            enc,
            "/delete/files",
            &delete(&["d/a.tmp"], StringMap::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(err, "File 'd/a.tmp' does not exist");
    let nothing: DeleteFilesResponse = emu
        .call(
            enc,
            "/delete/files",
            &delete(&["d/a.tmp"], map(&[("no_error_if_not_exists", "true")])),
        )
        .await
        .unwrap();
    assert!(nothing.file_names.is_empty());
    assert_eq!(
        emu.show_files(enc, &["d"]).await.unwrap().file_names,
        strings(&["d/keep"])
    );
}

#[tokio::test]
async fn delete_directory_needs_recursive_and_cancels_uploads() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(enc, &["d/a"], &[b"1"], StringMap::new())
        .await
        .unwrap();
    let uuid = "99999999-2222-4333-8444-555555555555";
    emu.multipart(enc, "d/big", uuid, "init", None)
        .await
        .unwrap();
    let request = |options| DeleteDirectoryRequest {
        directory_name: "d".into(),
        options,
    };
    let err = emu
        .call::<_, DeleteDirectoryResponse>(enc, "/delete/directory", &request(StringMap::new()))
        .await
        .unwrap_err();
    assert!(err.contains("is not empty"), "{err}");
    let _: DeleteDirectoryResponse = emu
        .call(
            enc,
            "/delete/directory",
            &request(map(&[("recursive", "true")])),
        )
        .await
        .unwrap();
    assert!(!dir.path().join("files").join("d").exists());
    assert!(!dir.path().join("multipart").join(uuid).exists());
    let err = emu
        .multipart(enc, "d/big", uuid, "complete", None)
        .await
        .unwrap_err();
    assert!(err.contains("is not in progress"), "{err}");
    let err = emu
        .call::<_, DeleteDirectoryResponse>(enc, "/delete/directory", &request(StringMap::new()))
        .await
        .unwrap_err();
    assert_eq!(err, "Directory 'd' does not exist");
    let _: DeleteDirectoryResponse = emu
        .call(
            enc,
            "/delete/directory",
            &request(map(&[("no_error_if_not_exists", "true")])),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn download_clamps_reads_at_end_of_file() {
    for enc in BOTH {
        let dir = TempDir::new().unwrap();
        let emu = start(&with_dirs(&["d"]), dir.path()).await;
        emu.upload(enc, &["d/f"], &[b"0123456789"], StringMap::new())
            .await
            .unwrap();
        let got = emu
            .download(enc, &["d/f", "d/f", "d/f"], &[(2, 3), (8, 100), (10, 5)])
            .await;
        let got = got.unwrap();
        assert_eq!(got.file_names, strings(&["d/f", "d/f", "d/f"]));
        assert_eq!(
            got.file_data,
            vec![
                Bytes::from_static(b"234"),
                Bytes::from_static(b"89"),
                Bytes::new()
            ],
            "each range is clamped at the end of the file"
        );
        let tail = emu.download(enc, &["d/f"], &[(8, 100)]).await.unwrap();
        assert_eq!(tail.file_data, vec![Bytes::from_static(b"89")]);
        let past = emu.download(enc, &["d/f"], &[(10, 5)]).await.unwrap();
        assert_eq!(past.file_data, vec![Bytes::new()]);
        let err = emu.download(enc, &["d/f"], &[(-1, 5)]).await.unwrap_err();
        assert!(err.contains("Negative read offset"), "{err}");
        let request = DownloadFilesRequest {
            file_names: strings(&["d/f"]),
            read_offsets: vec![0],
            read_lengths: vec![],
            options: StringMap::new(),
        };
        let err = emu
            .call::<_, DownloadFilesResponse>(enc, "/download/files", &request)
            .await
            .unwrap_err();
        assert!(err.contains("must both be empty"), "{err}");
        let err = emu.download(enc, &["d/missing"], &[]).await.unwrap_err();
        assert_eq!(err, "File 'd/missing' does not exist");
    }
}

#[tokio::test]
async fn download_with_base64_returns_base64_text() {
    for enc in BOTH {
        let dir = TempDir::new().unwrap();
        let emu = start(&with_dirs(&["d"]), dir.path()).await;
        emu.upload(enc, &["d/f"], &[b"hello"], StringMap::new())
            .await
            .unwrap();
        let request = DownloadFilesRequest {
            file_names: strings(&["d/f"]),
            read_offsets: vec![],
            read_lengths: vec![],
            options: map(&[("file_encoding", "base64")]),
        };
        let got: DownloadFilesResponse = emu.call(enc, "/download/files", &request).await.unwrap();
        assert_eq!(got.file_data, vec![Bytes::from_static(b"aGVsbG8=")]);
    }
}

#[tokio::test]
async fn binary_upload_with_base64_option_is_decoded() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(
        enc,
        &["d/f"],
        &[b"aGVsbG8="],
        map(&[("file_encoding", "base64")]),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(stored_file_path(dir.path(), "d/f")).unwrap(),
        b"hello"
    );
    let err = emu
        .upload(enc, &["d/g"], &[b"!!"], map(&[("file_encoding", "base64")]))
        .await
        .unwrap_err();
    assert!(err.contains("file_data[0] is not valid base64"), "{err}");
    let err = emu
        .upload(enc, &["d/g"], &[b"x"], map(&[("file_encoding", "hex")]))
        .await
        .unwrap_err();
    assert!(
        err.contains("Invalid value 'hex' for option 'file_encoding'"),
        "{err}"
    );
}

#[tokio::test]
async fn json_code_points_above_255_are_refused() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let body = r#"{"file_names":["d/f"],"file_data":["a€"],"options":{}}"#;
    let response = emu
        .post("/upload/files", Some("application/json"), None, body.into())
        .await;
    assert_eq!(response.status(), 400);
    let wrapper = Wrapper::decode(KifsEncoding::Json, &response.bytes().await.unwrap()).unwrap();
    assert_eq!(wrapper.status, "ERROR");
    assert!(wrapper.message.contains("U+20AC"), "{}", wrapper.message);
    // Raw code points 0-255 without file_encoding are bytes.
    let body = "{\"file_names\":[\"d/f\"],\"file_data\":[\"\\u0000\u{ff}\"],\"options\":{}}";
    let response = emu
        .post("/upload/files", Some("application/json"), None, body.into())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        std::fs::read(stored_file_path(dir.path(), "d/f")).unwrap(),
        [0, 255]
    );
}

#[tokio::test]
async fn bad_names_are_rejected_naming_the_problem() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["dir"]), dir.path()).await;
    for enc in BOTH {
        let err = emu
            .upload(enc, &["dir/a_b.txt"], &[b"1"], StringMap::new())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid file name 'dir/a_b.txt': character '_' is not allowed (allowed: letters, \
             digits, space, / . - : [ ] ( ) # =)"
        );
        for c in ['~', '+', ',', '\'', '&', '@', '%'] {
            let name = format!("dir/a{c}b");
            let err = emu
                .upload(enc, &[&name], &[b"1"], StringMap::new())
                .await
                .unwrap_err();
            assert!(err.contains(&format!("character '{c}'")), "{err}");
        }
        let long = format!("dir/{}", "x".repeat(1021));
        let err = emu
            .upload(enc, &[&long], &[b"1"], StringMap::new())
            .await
            .unwrap_err();
        assert!(err.contains("1025 characters, the limit is 1024"), "{err}");
        let err = emu
            .upload(enc, &["dir"], &[b"1"], StringMap::new())
            .await
            .unwrap_err();
        assert!(err.contains("no file name after the directory"), "{err}");
        let err = emu
            .upload(enc, &["dir/../x"], &[b"1"], StringMap::new())
            .await
            .unwrap_err();
        assert!(err.contains("path segment '..' is not allowed"), "{err}");
        // One leading slash is accepted and stripped.
        emu.upload(enc, &["/dir/ok"], &[b"1"], StringMap::new())
            .await
            .unwrap();
        assert_eq!(
            emu.show_files(enc, &["dir/ok"]).await.unwrap().file_names,
            strings(&["dir/ok"])
        );
    }
}

#[tokio::test]
async fn data_limit_refuses_uploads_that_would_exceed_it() {
    let dir = TempDir::new().unwrap();
    let options = KifsOptions {
        kifs_directories: strings(&["small"]),
        kifs_data_limit: 10,
        ..KifsOptions::default()
    };
    let emu = start(&options, dir.path()).await;
    let enc = KifsEncoding::Binary;
    emu.upload(enc, &["small/a"], &[b"12345678"], StringMap::new())
        .await
        .unwrap();
    let err = emu
        .upload(enc, &["small/b"], &[b"123"], StringMap::new())
        .await
        .unwrap_err();
    assert!(err.contains("data limit exceeded"), "{err}");
    // Replacing a file counts only the difference.
    emu.upload(enc, &["small/a"], &[b"1234567890"], StringMap::new())
        .await
        .unwrap();
    let uuid = "aaaaaaaa-2222-4333-8444-555555555555";
    emu.multipart(enc, "small/m", uuid, "init", None)
        .await
        .unwrap();
    let err = emu
        .multipart(enc, "small/m", uuid, "upload_part", Some((1, b"x")))
        .await
        .unwrap_err();
    assert!(err.contains("data limit exceeded"), "{err}");
}

#[tokio::test]
async fn configured_credentials_are_enforced_with_401() {
    let dir = TempDir::new().unwrap();
    let options = KifsOptions {
        kifs_users: vec!["alice:s3cret".parse().unwrap()],
        kifs_tokens: vec!["tok123=bob".parse().unwrap()],
        kifs_directories: strings(&["d"]),
        ..KifsOptions::default()
    };
    assert!(
        !format!("{options:?}").contains("s3cret"),
        "Debug hides passwords"
    );
    assert!(
        !format!("{options:?}").contains("tok123"),
        "Debug hides tokens"
    );
    let emu = start(&options, dir.path()).await;
    let body = ShowFilesRequest {
        paths: strings(&["d"]),
        options: StringMap::new(),
    }
    .to_body(KifsEncoding::Binary);
    let binary = Some("application/octet-stream");
    for auth in [
        None,
        Some("Basic YWxpY2U6d3Jvbmc="), // alice:wrong
        Some("Basic !!!"),
        Some("Bearer nope"),
        Some("Digest abc"),
    ] {
        let response = emu.post("/show/files", binary, auth, body.clone()).await;
        assert_eq!(response.status(), 401, "{auth:?}");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    for auth in ["Basic YWxpY2U6czNjcmV0", "Bearer tok123"] {
        let response = emu
            .post("/show/files", binary, Some(auth), body.clone())
            .await;
        assert_eq!(response.status(), 200, "{auth}");
    }
    let request = UploadFilesRequest {
        file_names: strings(&["d/f"]),
        file_data: vec![Bytes::from_static(b"1")],
        options: StringMap::new(),
    };
    let _: UploadFilesResponse = emu
        .call_as(
            Some("Bearer tok123"),
            KifsEncoding::Binary,
            "/upload/files",
            &request,
        )
        .await
        .unwrap();
    let listed: ShowFilesResponse = emu
        .call_as(
            Some("Basic YWxpY2U6czNjcmV0"),
            KifsEncoding::Binary,
            "/show/files",
            &ShowFilesRequest {
                paths: strings(&["d"]),
                options: StringMap::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed.users,
        strings(&["bob"]),
        "the token runs as its user"
    );
    assert_eq!(emu.stats.to_json()["replies"]["unauthorized"], 5);
}

#[tokio::test]
async fn open_mode_without_anonymous_needs_a_header() {
    let dir = TempDir::new().unwrap();
    let options = KifsOptions {
        kifs_no_anonymous: true,
        ..KifsOptions::default()
    };
    let emu = start(&options, dir.path()).await;
    let body = ShowDirectoriesRequest::default().to_body(KifsEncoding::Binary);
    let binary = Some("application/octet-stream");
    let response = emu
        .post("/show/directories", binary, None, body.clone())
        .await;
    assert_eq!(response.status(), 401);
    let response = emu
        .post(
            "/show/directories",
            binary,
            Some("Basic YW55b25lOng="),
            body,
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "any credentials are accepted in open mode"
    );
}

#[tokio::test]
async fn unknown_endpoint_is_404_and_get_is_405() {
    let dir = TempDir::new().unwrap();
    let emu = start(&KifsOptions::default(), dir.path()).await;
    let response = emu.post("/no/such/endpoint", None, None, Vec::new()).await;
    assert_eq!(response.status(), 404);
    let response = emu
        .client
        .get(format!("{}/upload/files", emu.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn undecodable_body_is_a_400_error_in_the_request_encoding() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let response = emu
        .post(
            "/upload/files",
            Some("application/octet-stream"),
            None,
            vec![0x02, 0x40],
        )
        .await;
    assert_eq!(response.status(), 400);
    let wrapper = Wrapper::decode(KifsEncoding::Binary, &response.bytes().await.unwrap()).unwrap();
    assert_eq!(wrapper.status, "ERROR");
    assert!(wrapper.message.contains("truncated"), "{}", wrapper.message);
    // No Content-Type: read and answered as JSON.
    let response = emu
        .post("/show/files", None, None, b"{\"paths\":[\"d\"]}".to_vec())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn snappy_requests_are_decompressed_and_answered_in_binary() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    // A repetitive body, so the block holds back-references and not only literals.
    let raw = ShowFilesRequest {
        paths: strings(&["d"; 64]),
        options: StringMap::new(),
    }
    .to_body(KifsEncoding::Binary);
    let block = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("a small body compresses");
    assert!(block.len() < raw.len() / 2, "the body is really compressed");
    let response = emu
        .post("/show/files", Some("application/x-snappy"), None, block)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let wrapper = Wrapper::decode(KifsEncoding::Binary, &response.bytes().await.unwrap()).unwrap();
    let listed: ShowFilesResponse = wrapper.into_inner(KifsEncoding::Binary).unwrap();
    assert!(listed.file_names.is_empty());

    let corrupt = emu
        .post(
            "/show/files",
            Some("application/x-snappy"),
            None,
            vec![0xff, 0xff, 0xff],
        )
        .await;
    assert_eq!(corrupt.status(), 400, "a corrupt block is an ERROR reply");
}

#[tokio::test]
async fn system_endpoints_answer_the_stock_python_client() {
    let dir = TempDir::new().unwrap();
    let emu = start(&KifsOptions::default(), dir.path()).await;
    for enc in BOTH {
        let _: ShowSystemPropertiesResponse = emu
            .call(
                enc,
                "/show/system/properties",
                &ShowSystemPropertiesRequest::default(),
            )
            .await
            .unwrap();
        let status: ShowSystemStatusResponse = emu
            .call(
                enc,
                "/show/system/status",
                &ShowSystemStatusRequest::default(),
            )
            .await
            .unwrap();
        assert_eq!(status.status_map["system"], r#"{"status":"running"}"#);
    }
}

#[tokio::test]
async fn stats_count_requests_per_endpoint_and_multipart_operation() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let enc = KifsEncoding::Binary;
    let uuid = "bbbbbbbb-2222-4333-8444-555555555555";
    emu.upload(enc, &["d/a"], &[b"1"], StringMap::new())
        .await
        .unwrap();
    emu.multipart(enc, "d/b", uuid, "init", None).await.unwrap();
    emu.multipart(enc, "d/b", uuid, "upload_part", Some((1, b"x")))
        .await
        .unwrap();
    emu.multipart(enc, "d/b", uuid, "upload_part", Some((5, b"x")))
        .await
        .unwrap_err();
    emu.multipart(enc, "d/b", uuid, "complete", None)
        .await
        .unwrap();
    emu.show_files(enc, &["d"]).await.unwrap();
    let stats: serde_json::Value = emu
        .client
        .get(format!("{}/_emulator/stats", emu.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["/upload/files"], 5);
    assert_eq!(stats["requests"]["/show/files"], 1);
    assert_eq!(stats["multipart_operations"]["none"], 1);
    assert_eq!(stats["multipart_operations"]["init"], 1);
    assert_eq!(stats["multipart_operations"]["upload_part"], 2);
    assert_eq!(stats["multipart_operations"]["complete"], 1);
    assert_eq!(stats["replies"]["ok"], 5);
    assert_eq!(stats["replies"]["error"], 1);
    assert_eq!(emu.stats.requests("/upload/files"), 5);
    assert_eq!(emu.stats.multipart("upload_part"), 2);
}

#[tokio::test]
async fn a_batch_records_its_metadata_in_one_log_that_survives_a_restart_with_older_sidecars() {
    let dir = TempDir::new().unwrap();
    let enc = KifsEncoding::Binary;
    let names = ["kept/a", "kept/sub/b", "kept/c"];
    let before = {
        let emu = start(&with_dirs(&["kept"]), dir.path()).await;
        emu.upload(enc, &names, &[b"1", b"22", b"333"], StringMap::new())
            .await
            .unwrap();
        emu.show_files(enc, &["kept"]).await.unwrap()
    };
    let log = std::fs::read_to_string(dir.path().join("meta.log")).unwrap();
    assert_eq!(log.lines().count(), 3, "one line per stored file: {log}");
    // Data directories of older emulators kept one sidecar file per stored file.
    std::fs::create_dir_all(dir.path().join("files/kept/old")).unwrap();
    std::fs::write(dir.path().join("files/kept/old/x"), b"old").unwrap();
    std::fs::create_dir_all(dir.path().join("meta/kept/old")).unwrap();
    std::fs::write(
        dir.path().join("meta/kept/old/x_meta.json"),
        br#"{"user":"bob","creation_time":1700000000000}"#,
    )
    .unwrap();

    let emu = start(&with_dirs(&["kept"]), dir.path()).await;
    let after = emu.show_files(enc, &["kept"]).await.unwrap();
    assert_eq!(
        after.file_names,
        strings(&["kept/a", "kept/c", "kept/old/x", "kept/sub/b"])
    );
    assert_eq!(
        after.users,
        strings(&["anonymous", "anonymous", "bob", "anonymous"])
    );
    let time_of = |listed: &ShowFilesResponse, name: &str| {
        let i = listed.file_names.iter().position(|n| n == name).unwrap();
        listed.creation_times[i]
    };
    for name in names {
        assert_eq!(time_of(&after, name), time_of(&before, name), "{name}");
    }
    assert_eq!(time_of(&after, "kept/old/x"), 1_700_000_000_000);
    assert!(
        !dir.path().join("meta").exists(),
        "the sidecars are folded into the log and removed"
    );
    let log = std::fs::read_to_string(dir.path().join("meta.log")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");

    // A deleted file's line is dropped from the log at the next start.
    let _: DeleteFilesResponse = emu
        .call(
            enc,
            "/delete/files",
            &DeleteFilesRequest {
                file_names: strings(&["kept/a"]),
                options: StringMap::new(),
            },
        )
        .await
        .unwrap();
    drop(emu);
    let emu = start(&with_dirs(&["kept"]), dir.path()).await;
    let listed = emu.show_files(enc, &["kept"]).await.unwrap();
    assert_eq!(listed.file_names.len(), 3);
    let log = std::fs::read_to_string(dir.path().join("meta.log")).unwrap();
    assert!(!log.contains("\"kept/a\""), "{log}");
}

#[tokio::test]
async fn state_survives_a_restart_including_an_upload_in_progress() {
    let dir = TempDir::new().unwrap();
    let enc = KifsEncoding::Binary;
    let uuid = "cccccccc-2222-4333-8444-555555555555";
    {
        let emu = start(&KifsOptions::default(), dir.path()).await;
        let _: CreateDirectoryResponse = emu
            .call(
                enc,
                "/create/directory",
                &CreateDirectoryRequest {
                    directory_name: "kept".into(),
                    options: map(&[("data_limit", "1000")]),
                },
            )
            .await
            .unwrap();
        emu.upload(enc, &["kept/sub/a.txt"], &[b"alpha"], StringMap::new())
            .await
            .unwrap();
        emu.multipart(enc, "kept/big", uuid, "init", None)
            .await
            .unwrap();
        emu.multipart(
            enc,
            "kept/big",
            uuid,
            "upload_part",
            Some((1, b"part one;")),
        )
        .await
        .unwrap();
    }
    // A part appended but never acknowledged before a crash is cut off at load.
    let data = dir.path().join("multipart").join(uuid).join("data");
    let mut raw = std::fs::read(&data).unwrap();
    raw.extend_from_slice(b"unacknowledged");
    std::fs::write(&data, raw).unwrap();

    let emu = start(&KifsOptions::default(), dir.path()).await;
    let listed = emu.show_files(enc, &["kept"]).await.unwrap();
    assert_eq!(listed.file_names, strings(&["kept/sub/a.txt"]));
    assert_eq!(listed.sizes, vec![5]);
    assert_eq!(listed.users, strings(&["anonymous"]));
    let uploads: serde_json::Value =
        serde_json::from_str(&listed.info["multipart_uploads"]).unwrap();
    assert_eq!(uploads[0]["uuid"], uuid);
    assert_eq!(uploads[0]["last_part_number"], 1);
    assert_eq!(uploads[0]["bytes_received"], 9);
    let dirs: ShowDirectoriesResponse = emu
        .call(enc, "/show/directories", &ShowDirectoriesRequest::default())
        .await
        .unwrap();
    assert_eq!(dirs.directories, strings(&["kept"]));
    assert_eq!(dirs.data_limits, vec![1000]);
    emu.multipart(
        enc,
        "kept/big",
        uuid,
        "upload_part",
        Some((2, b" part two")),
    )
    .await
    .unwrap();
    emu.multipart(enc, "kept/big", uuid, "complete", None)
        .await
        .unwrap();
    let got = emu.download(enc, &["kept/big"], &[]).await.unwrap();
    assert_eq!(
        got.file_data,
        vec![Bytes::from_static(b"part one; part two")]
    );
}

#[tokio::test]
async fn part_delay_holds_each_upload_part() {
    let dir = TempDir::new().unwrap();
    let options = KifsOptions {
        kifs_part_delay_ms: 200,
        ..with_dirs(&["d"])
    };
    let emu = start(&options, dir.path()).await;
    let enc = KifsEncoding::Binary;
    let uuid = "dddddddd-2222-4333-8444-555555555555";
    emu.multipart(enc, "d/f", uuid, "init", None).await.unwrap();
    let started = std::time::Instant::now();
    emu.multipart(enc, "d/f", uuid, "upload_part", Some((1, b"x")))
        .await
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}

#[tokio::test]
async fn concurrent_uploads_all_land() {
    let dir = TempDir::new().unwrap();
    let emu = Arc::new(start(&with_dirs(&["d"]), dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let emu = emu.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("d/f{i}");
            let data = vec![i as u8; 1000 * (i + 1)];
            emu.upload(KifsEncoding::Binary, &[&name], &[&data], StringMap::new())
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let listed = emu.show_files(KifsEncoding::Binary, &["d"]).await.unwrap();
    assert_eq!(listed.file_names.len(), 16);
    assert_eq!(
        listed.sizes.iter().sum::<i64>(),
        (1..=16).map(|i| 1000 * i).sum::<i64>()
    );
}

#[test]
fn options_parse_from_the_command_line() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kifs: KifsOptions,
    }
    let cli = Cli::parse_from([
        "emulator",
        "--kifs-user",
        "alice:pa:ss",
        "--kifs-token",
        "tok",
        "--kifs-directory",
        "a",
        "--kifs-read-only-directory",
        "b",
        "--kifs-part-delay",
        "50",
        "--kifs-data-limit",
        "-1",
    ]);
    assert_eq!(cli.kifs.kifs_users[0].name, "alice");
    assert_eq!(cli.kifs.kifs_users[0].password.expose(), "pa:ss");
    assert_eq!(cli.kifs.kifs_tokens[0].user, "token-user");
    assert_eq!(cli.kifs.kifs_directories, strings(&["a"]));
    assert_eq!(cli.kifs.kifs_read_only_directories, strings(&["b"]));
    assert_eq!(cli.kifs.kifs_part_delay_ms, 50);
    assert_eq!(cli.kifs.kifs_data_limit, -1);
    let defaults = Cli::parse_from(["emulator"]).kifs;
    assert_eq!(
        defaults.kifs_data_limit,
        KifsOptions::default().kifs_data_limit
    );
    assert!(Cli::try_parse_from(["emulator", "--kifs-user", "nocolon"]).is_err());
}

#[tokio::test]
async fn the_whole_emulator_serves_kifs_under_its_prefix_with_default_options() {
    let dir = TempDir::new().unwrap();
    let options = crate::emulator::EmulatorOptions::with_data_dir(dir.path().to_path_buf());
    assert_eq!(options.kifs.kifs_data_limit, -1);
    let running = crate::emulator::start("127.0.0.1:0", options)
        .await
        .expect("the emulator starts");
    let body = CreateDirectoryRequest {
        directory_name: "d".into(),
        options: StringMap::new(),
    }
    .to_body(KifsEncoding::Binary);
    let response = reqwest::Client::new()
        .post(format!("http://{}/kifs/create/directory", running.addr))
        .header("Content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    running.shutdown.cancel();
    assert!(dir.path().join("kifs").join("directories.json").exists());
}

#[tokio::test]
async fn bodies_above_the_default_two_mebibyte_limit_are_accepted() {
    let dir = TempDir::new().unwrap();
    let emu = start(&with_dirs(&["d"]), dir.path()).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    emu.upload(KifsEncoding::Binary, &["d/big"], &[&data], StringMap::new())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(stored_file_path(dir.path(), "d/big")).unwrap(),
        data
    );
}

/// One multipart step sent to the whole emulator (whose server can close a connection
/// unanswered); the transport error when no answer came.
async fn multipart_over_http(
    base: &str,
    name: &str,
    uuid: &str,
    operation: &str,
    part: Option<(i64, &[u8])>,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let request = multipart_request(name, uuid, operation, part);
    let enc = KifsEncoding::Binary;
    reqwest::Client::new()
        .post(format!("{base}/upload/files"))
        .header("Content-type", content_type(enc))
        .body(request.to_body(enc))
        .send()
        .await
        .map(|response| response.status())
}

#[tokio::test]
async fn a_lost_or_delayed_complete_answer_still_stores_the_file() {
    let dir = TempDir::new().unwrap();
    let mut options = crate::emulator::EmulatorOptions::with_data_dir(dir.path().to_path_buf());
    options.kifs = KifsOptions {
        kifs_answer_delays: vec!["complete=300".parse().unwrap()],
        kifs_lost_answers: vec!["complete=1".parse().unwrap()],
        ..with_dirs(&["d"])
    };
    let running = crate::emulator::start("127.0.0.1:0", options)
        .await
        .expect("the emulator starts");
    let base = format!("http://{}/kifs", running.addr);
    let stats = || async {
        reqwest::get(format!("{base}/_emulator/stats"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    for (name, uuid) in [
        ("d/lost", "eeeeeeee-1111-4222-8333-444444444444"),
        ("d/late", "eeeeeeee-1111-4222-8333-555555555555"),
    ] {
        let step = |op, part| multipart_over_http(&base, name, uuid, op, part);
        assert_eq!(step("init", None).await.unwrap(), 200);
        assert_eq!(step("upload_part", Some((1, b"bytes"))).await.unwrap(), 200);
        let started = std::time::Instant::now();
        let completed = step("complete", None).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        match name {
            "d/lost" => assert!(completed.is_err(), "{completed:?}"),
            _ => assert_eq!(completed.unwrap(), 200),
        }
    }
    let stats = stats().await;
    assert_eq!(stats["answers_lost"], 1, "{stats}");
    assert_eq!(stats["answers_delayed"], 2, "{stats}");
    assert_eq!(stats["files_stored"], 2, "{stats}");
    let data = dir.path().join("kifs");
    for name in ["d/lost", "d/late"] {
        assert_eq!(
            std::fs::read(store::file_path(&data, name)).unwrap(),
            b"bytes"
        );
    }
    running.shutdown.cancel();
}

#[test]
fn answer_hooks_name_an_operation_and_a_number() {
    let parsed: OperationValue = "complete=4000".parse().unwrap();
    assert_eq!(
        (parsed.operation.as_str(), parsed.value),
        ("complete", 4000)
    );
    for bad in ["complete", "finish=1", "complete=soon", "=1"] {
        let err = bad.parse::<OperationValue>().unwrap_err();
        assert!(err.contains("OPERATION=NUMBER"), "{bad}: {err}");
    }
}
