//! Shared by the serve benchmarks: start the release `omni serve` on the tiny checkpoint, and a
//! minimal keep-alive HTTP/1.1 client on `std::net::TcpStream`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `omni serve`, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Own `child` (killed on drop).
    pub fn from_child(child: Child) -> Self {
        Self(child)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    pub addr: String,
}

impl Conn {
    pub fn open(addr: &str) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            addr: addr.to_string(),
        }
    }

    /// Status and body.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.w.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).expect("body");
        (status, String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Top-level `key` of a JSON object body, as text (strings unquoted, numbers as written).
pub fn field(json: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Start `omni serve` on the tiny checkpoint with a fresh storage folder and `extra` arguments;
/// returns the server, a connection and the storage folder once `/readyz` is 200.
pub fn start(extra: &[&str]) -> (Server, Conn, PathBuf) {
    let storage = std::env::temp_dir().join(format!("omni-bench-serve-{}", std::process::id()));
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-helios-distilled"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["serve", model, "--port", "0", "--storage"])
        .arg(&storage)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting omni serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("omni serve listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut c = Conn::open(&addr);
    let t0 = Instant::now();
    while c.call("GET", "/readyz", "").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, c, storage)
}

/// Poll `GET /v1/videos/{id}` until `done` holds for its status; returns the body.
pub fn wait_status(c: &mut Conn, id: &str, done: impl Fn(&str) -> bool) -> String {
    let path = format!("/v1/videos/{id}");
    loop {
        let (_, b) = c.call("GET", &path, "");
        if field(&b, "status").is_some_and(|s| done(&s)) {
            return b;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
