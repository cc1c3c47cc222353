//! The backends' HTTP client against real servers on loopback: certificate problems named
//! precisely (unknown issuer, name mismatch, expired), a stalled server abandoned after the
//! idle timeout whether it stops reading the body or never answers (and counted toward the
//! remote being down, as is an answer that stops half-way), and request bodies paced by the
//! shared bandwidth limit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::TestCa;
use common::{ConfigBuilder, FolderBuilder};
use upsync::config::{BandwidthConfig, CaFile, NetConfig};
use upsync::emulator::{self, EmulatorOptions, RunningEmulator};
use upsync::metrics::RequestKind;
use upsync::net::{Bandwidth, CertificateProblem, HttpClient, HttpError};
use upsync::upload::health::RemoteHealth;

fn client(net: &NetConfig, bandwidth: Arc<Bandwidth>) -> HttpClient {
    HttpClient::build("kifs", net, bandwidth, |builder| builder).expect("the client builds")
}

fn with_ca(ca: &TestCa, idle: Duration) -> NetConfig {
    let pem = std::fs::read(&ca.ca_file).expect("the CA file exists");
    NetConfig {
        ca_file: Some(CaFile {
            path: ca.ca_file.clone(),
            pem,
            certificates: 1,
        }),
        idle_timeout: idle,
        ..NetConfig::default()
    }
}

async fn https_emulator(dir: &std::path::Path, cert: &common::pki::ServerCert) -> RunningEmulator {
    let mut options = EmulatorOptions::with_data_dir(dir.join("remote"));
    options.tls_cert = Some(cert.cert.clone());
    options.tls_key = Some(cert.key.clone());
    emulator::start("127.0.0.1:0", options)
        .await
        .expect("the emulator starts")
}

async fn get(http: &HttpClient, url: &str) -> Result<reqwest::Response, HttpError> {
    http.send(RequestKind::KifsApi, http.client().get(url))
        .await
}

#[tokio::test]
async fn certificate_problems_are_named_with_the_host_and_what_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("pki"));
    let cert = ca.server_cert("localhost", &["localhost"]);
    let running = https_emulator(tmp.path(), &cert).await;
    let port = running.addr.port();
    let stats = |host: &str| format!("https://{host}:{port}/_emulator/stats");
    let idle = Duration::from_secs(10);

    let trusted = client(&with_ca(&ca, idle), Bandwidth::unlimited());
    let answer = get(&trusted, &stats("localhost")).await.expect("trusted");
    assert!(answer.status().is_success());

    let plain = client(&NetConfig::default(), Bandwidth::unlimited());
    let err = get(&plain, &stats("localhost"))
        .await
        .expect_err("unknown CA");
    assert_eq!(
        err.certificate_problem(),
        Some(CertificateProblem::UnknownIssuer)
    );
    let text = err.to_string();
    for part in [
        &format!("TLS to localhost:{port}"),
        "unknown issuer",
        "[kifs] ca_file",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(err.is_connect(), "nothing was sent");

    let err = get(&trusted, &stats("127.0.0.1"))
        .await
        .expect_err("wrong name");
    assert_eq!(
        err.certificate_problem(),
        Some(CertificateProblem::NameMismatch)
    );
    assert!(err.to_string().contains("\"127.0.0.1\""), "{err}");
    running.shutdown.cancel();
}

#[tokio::test]
async fn an_expired_certificate_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("pki"));
    let cert = ca.expired_server_cert("old", &["localhost"]);
    let running = https_emulator(tmp.path(), &cert).await;
    let url = format!("https://localhost:{}/_emulator/stats", running.addr.port());
    let http = client(
        &with_ca(&ca, Duration::from_secs(10)),
        Bandwidth::unlimited(),
    );
    let err = get(&http, &url).await.expect_err("expired");
    assert_eq!(err.certificate_problem(), Some(CertificateProblem::Expired));
    assert!(err.to_string().contains("has expired"), "{err}");
    running.shutdown.cancel();
}

/// A server that accepts connections and then neither reads nor writes.
fn silent_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_server_is_abandoned_after_the_idle_timeout_in_both_directions() {
    let addr = silent_server();
    let idle = Duration::from_secs(1);
    let net = NetConfig {
        idle_timeout: idle,
        ..NetConfig::default()
    };
    let http = client(&net, Bandwidth::unlimited());
    let url = format!("http://{addr}/upload");
    // A small body fits in the socket buffers: the answer never comes (read stall). A large
    // one fills them: the body can no longer be written (write stall).
    for size in [1024usize, 64 << 20] {
        let started = Instant::now();
        let request = http.client().post(&url).body(vec![1u8; size]);
        let sent = tokio::time::timeout(idle * 10, http.send(RequestKind::KifsApi, request));
        let err = sent
            .await
            .unwrap_or_else(|_| panic!("{size} bytes: still held after 10 idle timeouts"))
            .expect_err("the server never answers");
        let took = started.elapsed();
        assert!(err.is_stalled(), "{size} bytes: {err}");
        assert!(err.to_string().contains("no byte moved for 1s"), "{err}");
        assert!(took >= idle, "{size} bytes: abandoned after {took:?}");
        assert!(took < idle * 4, "{size} bytes: held for {took:?}");
    }
}

/// A server that answers every request with headers and the first bytes of a 100-byte
/// body, then holds the connection.
fn server_that_stops_mid_answer() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst");
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn stalls_count_toward_the_remote_being_down_whether_the_request_or_its_answer_stalls() {
    let idle = Duration::from_secs(1);
    let net = NetConfig {
        idle_timeout: idle,
        ..NetConfig::default()
    };
    // A server that never answers: two stalled requests take the remote down.
    let health = Arc::new(RemoteHealth::with_threshold("kifs", "http://silent", 2));
    let http = client(&net, Bandwidth::unlimited()).reporting_to(Arc::clone(&health));
    let url = format!("http://{}/upload", silent_server());
    for _ in 0..2 {
        assert!(health.is_up());
        let err = get(&http, &url)
            .await
            .expect_err("the server never answers");
        assert!(err.is_stalled(), "{err}");
    }
    assert!(!health.is_up(), "{:?}", health.snapshot());
    let last = health.snapshot().last_error.unwrap_or_default();
    assert!(last.contains("no byte moved for 1s"), "{last}");

    // A server whose answer stops half-way: the answer counted as one, its stall as a failure.
    let health = Arc::new(RemoteHealth::with_threshold("kifs", "http://halfway", 1));
    let http = client(&net, Bandwidth::unlimited()).reporting_to(Arc::clone(&health));
    let url = format!("http://{}/show", server_that_stops_mid_answer());
    let answer = get(&http, &url).await.expect("the headers arrive");
    assert!(health.is_up(), "headers are an answer");
    let err = answer.bytes().await.expect_err("the body stalls");
    assert!(format!("{err:?}").contains("no byte moved"), "{err:?}");
    assert!(!health.is_up(), "{:?}", health.snapshot());
    let last = health.snapshot().last_error.unwrap_or_default();
    assert!(last.contains("the answer stalled"), "{last}");
}

#[tokio::test]
async fn concurrent_bodies_share_the_bandwidth_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let running = emulator::start(
        "127.0.0.1:0",
        EmulatorOptions::with_data_dir(tmp.path().join("remote")),
    )
    .await
    .expect("the emulator starts");
    let limit: u64 = 2 << 20;
    let bandwidth = Bandwidth::new(BandwidthConfig {
        limit: Some(limit),
        schedule: None,
    });
    let http = client(&NetConfig::default(), bandwidth);
    // Any path works: the body is read by the server whatever it answers.
    let url = format!("http://{}/kifs/show/files", running.addr);
    let started = Instant::now();
    let sends = (0..2).map(|_| {
        let request = http.client().post(&url).body(vec![0u8; 2 << 20]);
        http.send(RequestKind::KifsApi, request)
    });
    for answer in futures::future::join_all(sends).await {
        let answer = answer.expect("the request completes");
        answer.bytes().await.expect("the answer is read");
    }
    // 4 MiB at 2 MiB/s, less the quarter second an idle line may make up for.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1700), "4 MiB in {took:?}");
    running.shutdown.cancel();
}

#[tokio::test]
async fn proxy_credentials_never_show_in_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let proxy =
        common::proxy::ProxyServer::start(&tmp.path().join("proxy.log"), Some(("u", "right")));
    let unreachable = format!("http://127.0.0.1:{}", common::free_port());
    for proxy_base in [proxy.url(), unreachable] {
        let with_password = proxy_base.replace("http://", "http://u:wr0ng-s3cret@");
        let net = NetConfig {
            proxy: Some(proxy_url(&format!("proxy = {with_password:?}"))),
            ..NetConfig::default()
        };
        let http = client(&net, Bandwidth::unlimited());
        let err = get(&http, "https://localhost:9/anything")
            .await
            .expect_err("refused");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("wr0ng-s3cret"), "{shown}");
        }
    }
    let lines = proxy.lines();
    assert!(lines.iter().any(|l| l.starts_with("407")), "{lines:?}");
}

/// The `proxy` of a `[kifs]` section holding `line`, as the config reads it.
fn proxy_url(line: &str) -> upsync::config::ProxyUrl {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("inbox")).unwrap();
    let path = dir.path().join("upsync.toml");
    ConfigBuilder::new()
        .kifs("http://k")
        .kifs_with(line)
        .folder(FolderBuilder::kifs("inbox", "k"))
        .write(&path);
    let config = upsync::config::Config::load(&path).expect("the config loads");
    config.kifs.expect("[kifs]").net.proxy.expect("a proxy")
}
