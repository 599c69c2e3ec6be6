//! HTTP/1.1 over a real socket to an `omni serve` child, and ffprobe of the MP4s it returns:
//! the helpers the server tests share (no HTTP client crate: one request per connection,
//! `Connection: close`, the body read to the end).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `omni serve`, killed (by its own PID) when dropped.
pub struct Server {
    pub child: Child,
    /// `host:port`.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `cmd` (an `omni serve … --port 0`) and wait (up to 120 s) for `/readyz` = 200.
    pub fn start(cmd: &mut Command) -> Self {
        let (child, addr) = super::spawn_serve(cmd);
        let s = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.request("GET", "/readyz", &[], b"").0 != 200 {
            assert!(Instant::now() < deadline, "model never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// `omni serve MODEL --port 0 --served-model-name tiny --storage STORAGE`, ready.
    pub fn tiny(model: &Path, storage: &Path) -> Self {
        Self::serve(model, "tiny", storage, &[])
    }

    /// One request; (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http(&self.addr, method, path, headers, body)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Vec<u8>) {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// `POST path` with a multipart/form-data body of text fields.
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let (ct, body) = multipart(fields);
        self.request("POST", path, &[("Content-Type", &ct)], &body)
    }

    /// Poll `GET /v1/videos/{id}` (up to 300 s) until the job completed or failed.
    pub fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let r = self.request("GET", &format!("/v1/videos/{id}"), &[], b"");
            let v: Value = serde_json::from_slice(&r.1).unwrap();
            if v["status"] == "completed" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /v1/videos/sync` with a JSON body.
    pub fn sync(&self, body: &Value) -> (u16, Vec<u8>) {
        self.post_json("/v1/videos/sync", body)
    }

    /// `omni serve MODEL --port 0 --served-model-name NAME --storage STORAGE EXTRA…`, its stderr
    /// inherited.
    pub fn serve(model: &Path, name: &str, storage: &Path, extra: &[&str]) -> Self {
        Self::start(
            super::omni()
                .arg("serve")
                .arg(model)
                .args(["--port", "0", "--served-model-name", name])
                .arg("--storage")
                .arg(storage)
                .args(extra)
                .stderr(std::process::Stdio::inherit()),
        )
    }
}

/// One HTTP/1.1 request to `addr`; (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let r = send(addr, method, path, headers, body);
    (r.status, r.body)
}

/// A response: status, headers (names lower-cased) and the body as read to the end.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the OpenAI error envelope with `status`; returns `error`.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let e = self.json()["error"].clone();
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "envelope lacks `{k}`: {e}");
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        e
    }
}

/// One HTTP/1.1 request to `addr` with `Connection: close`; the whole [`Resp`] (a chunked body
/// is returned as sent, not decoded).
pub fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// (content type, body) of a multipart/form-data form with text `fields`.
pub fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "omniTestBoundary42";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// The `error` object of a response that must be a 400.
pub fn error_400(r: (u16, Vec<u8>)) -> Value {
    let text = String::from_utf8_lossy(&r.1).into_owned();
    assert_eq!(r.0, 400, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["error"].clone()
}

/// `POST /v1/videos/sync` with `body` must be a 400 `invalid_request_error` naming `param`.
pub fn assert_400_naming(server: &Server, body: Value, param: &str) {
    let e = error_400(server.sync(&body));
    assert_eq!(e["param"], param, "{body}: {e}");
    assert_eq!(e["type"], "invalid_request_error", "{e}");
}

/// What ffprobe reads from an MP4's first video stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Frames counted by decoding (`-count_frames`).
    pub frames: u64,
    /// `r_frame_rate`, e.g. `"48/1"`.
    pub rate: String,
    pub width: u64,
    pub height: u64,
}

/// ffprobe an MP4 (fails the test when ffprobe rejects it).
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=r_frame_rate,nb_read_frames,width,height",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        super::stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    Probe {
        frames: s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
        rate: s["r_frame_rate"].as_str().unwrap().to_string(),
        width: s["width"].as_u64().unwrap(),
        height: s["height"].as_u64().unwrap(),
    }
}

/// Write `bytes` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
