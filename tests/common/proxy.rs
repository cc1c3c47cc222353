//! A small HTTP proxy on 127.0.0.1 for the tests: `CONNECT host:port` tunnels (HTTPS) and
//! absolute-form requests (plain HTTP), optionally behind Basic proxy authentication. Every
//! request line it serves is appended to its log file and kept in memory, so a test can show
//! that the traffic went through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;

pub struct ProxyServer {
    pub addr: SocketAddr,
    /// One line per request: `CONNECT localhost:8443`, `POST http://127.0.0.1:8787/kifs/...`,
    /// `407 …` for a refused one.
    pub log: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ProxyServer {
    /// Starts the proxy; with `credentials`, requests must carry them in
    /// `Proxy-Authorization: Basic` (else 407).
    pub fn start(log: &Path, credentials: Option<(&str, &str)>) -> ProxyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        let addr = listener.local_addr().expect("the proxy has an address");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let expected = credentials.map(|(user, password)| {
            let token = base64::prelude::BASE64_STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        let shared = Shared {
            lines: Arc::clone(&lines),
            log: log.to_path_buf(),
            expected,
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(stream));
            }
        });
        ProxyServer {
            addr,
            log: log.to_path_buf(),
            lines,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines served so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("proxy log lock").clone()
    }
}

#[derive(Clone)]
struct Shared {
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    expected: Option<String>,
}

impl Shared {
    fn record(&self, line: String) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the proxy log opens");
        writeln!(file, "{line}").expect("the proxy log is writable");
        self.lines.lock().expect("proxy log lock").push(line);
    }

    /// One client connection: its first request decides tunnel or forward.
    fn serve(&self, client: TcpStream) {
        let mut reader = BufReader::new(client.try_clone().expect("the socket clones"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
        }
        let request_line = head[0].trim_end().to_string();
        let mut words = request_line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let authorized = match &self.expected {
            None => true,
            Some(expected) => head.iter().any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("proxy-authorization") && value.trim() == expected
                })
            }),
        };
        let mut client = client;
        if !authorized {
            self.record(format!("407 {method} {target}"));
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
        self.record(format!("{method} {target}"));
        let destination = if method == "CONNECT" {
            target.to_string()
        } else {
            let rest = target.strip_prefix("http://").unwrap_or(target);
            rest.split('/').next().unwrap_or(rest).to_string()
        };
        let Ok(mut server) = TcpStream::connect(&destination) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        if method == "CONNECT" {
            let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        } else {
            let _ = server.write_all(head.concat().as_bytes());
        }
        // Bytes the reader already buffered past the head belong to the server.
        let buffered = reader.buffer().to_vec();
        let _ = server.write_all(&buffered);
        pipe(client, server);
    }
}

/// Copies both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let (mut client_read, mut server_write) = (
        client.try_clone().expect("the socket clones"),
        server.try_clone().expect("the socket clones"),
    );
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let mut buf = [0u8; 64 << 10];
    loop {
        match server_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = upstream.join();
}
