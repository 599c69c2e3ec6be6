//! Black-box tests of what `omni serve` sends and fetches over the network (issue 14): signed
//! webhooks to a loopback receiver (retries, a restart in between), remote media by URL with the
//! SSRF guard (loopback servers only: no packet to any other address), and the OpenAI remix /
//! extension / edit / character endpoints. The built binary on the tiny Distilled checkpoint,
//! `--port 0`, a temporary storage folder, and plain `std::net` sockets on both sides.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use common::{spawn_serve, tiny_distilled};

const SMALL: &str = "128x64";
/// `whsec_` + base64 of the 24-byte signing key the tests use.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running `omni serve`; killed (SIGKILL) on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(storage: &Path, config: Option<&Path>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_omni"));
        cmd.arg("serve")
            .arg(tiny_distilled())
            .args(["--port", "0", "--served-model-name", "tiny-helios"])
            .arg("--storage")
            .arg(storage)
            .stderr(Stdio::inherit());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let (child, addr) = spawn_serve(&mut cmd);
        let s = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.get("/readyz").status != 200 {
            assert!(Instant::now() < deadline, "model never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        http(&self.addr, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn post_json(&self, path: &str, body: Value) -> Resp {
        let b = body.to_string();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            b.as_bytes(),
        )
    }

    fn create(&self, body: Value) -> String {
        let r = self.post_json("/v1/videos", body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Poll until the job is terminal.
    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(&format!("/v1/videos/{id}")).json();
            if matches!(v["status"].as_str(), Some("completed" | "failed")) {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The OpenAI envelope with `status`; returns `error`.
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        self.json()["error"].clone()
    }
}

/// One HTTP/1.1 request with `Connection: close` (tests/common/http.rs).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let (status, body) = common::http::http(addr, method, path, headers, body);
    Resp { status, body }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("serve.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A request as a test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
    }
}

/// Read one request (headers and a `Content-Length` body) from `stream`.
fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        path,
        headers,
        body,
    })
}

/// A loopback HTTP server: each request is recorded, then `answer` writes the response.
struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    fn start(
        ip: &str,
        answer: impl Fn(&Seen, usize, &mut TcpStream) + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let count = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (seen, answer, count) = (s2.clone(), answer.clone(), count.clone());
                std::thread::spawn(move || {
                    if let Some(req) = read_request(&stream) {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(req.clone());
                        answer(&req, n, &mut stream);
                    }
                });
            }
        });
        TestServer { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `done(seen)`.
    fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.seen();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
}

/// `v1,<base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))>` computed here, independently of omni.
fn expected_signature(id: &str, ts: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// Every delivery is signed as Standard Webhooks says, carries OpenAI's event shape, and all
/// attempts of one event share its id.
fn check_deliveries(seen: &[Seen], event_type: &str, video_id: &str) -> String {
    let id = seen[0].header("webhook-id").to_string();
    assert!(id.starts_with("evt_"), "{id}");
    for s in seen {
        assert_eq!(
            s.header("webhook-id"),
            id,
            "one event, one id on every attempt"
        );
        let ts = s.header("webhook-timestamp");
        let ts_n: u64 = ts.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            ts_n <= now + 1 && now - ts_n < 300,
            "timestamp {ts_n} vs now {now}"
        );
        assert_eq!(
            s.header("webhook-signature"),
            expected_signature(&id, ts, &s.body)
        );
        assert_eq!(s.header("content-type"), "application/json");
        let ev: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(ev["object"], "event");
        assert_eq!(ev["id"], id.as_str());
        assert_eq!(ev["type"], event_type, "{ev}");
        assert_eq!(ev["data"]["id"], video_id, "{ev}");
        assert!(ev["created_at"].as_u64().is_some());
    }
    id
}

fn outbox(storage: &Path) -> Vec<String> {
    std::fs::read_dir(storage.join("webhooks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn webhook_is_signed_retried_and_survives_a_restart() {
    // Fails twice (500, 503), then accepts.
    let receiver = TestServer::start("127.0.0.1", |_, n, s| match n {
        0 => respond(s, "500 Internal Server Error", "text/plain", b"no"),
        1 => respond(s, "503 Service Unavailable", "text/plain", b"later"),
        _ => respond(s, "204 No Content", "text/plain", b""),
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[webhooks]\nsecret = \"{SECRET}\"\nallow_hosts = [\"127.0.0.1\"]\n\
             initial_backoff_s = 0.5\nmax_backoff_s = 2\n"
        ),
    );
    let hook = format!("http://127.0.0.1:{}/hooks/omni", receiver.port);
    let s = Server::start(&storage, Some(&cfg));
    // A host not in allow_hosts is refused up front.
    let e = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33, "webhook_url": "http://example.com/x"}),
        )
        .error(400);
    assert_eq!(e["param"], "webhook_url", "{e}");
    let id = s.create(
        json!({"prompt": "a red cube", "size": SMALL, "num_frames": 33, "webhook_url": hook}),
    );
    assert_eq!(s.wait(&id)["status"], "completed");
    // The first attempt failed; the server dies before it is delivered.
    receiver.wait_for("a first attempt", |s| !s.is_empty());
    drop(s);
    let pending = outbox(&storage);
    let s = Server::start(&storage, Some(&cfg));
    let seen = receiver.wait_for("a delivery", |s| s.len() >= 3);
    let evt = check_deliveries(&seen, "video.completed", &id);
    assert!(
        pending.is_empty() || pending == vec![format!("{evt}.json")],
        "{pending:?}"
    );
    assert!(seen.iter().all(|r| r.path == "/hooks/omni"));
    // Delivered once: the outbox is empty and nothing more arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outbox(&storage).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", outbox(&storage));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(receiver.seen().len(), 3);
    drop(s);
}

#[test]
fn failed_and_cancelled_jobs_send_their_events_to_the_configured_url() {
    let receiver = TestServer::start("127.0.0.1", |_, _, s| {
        respond(s, "200 OK", "application/json", b"{}")
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[webhooks]\nsecret = \"{SECRET}\"\nurl = \"http://127.0.0.1:{}/all\"\n",
            receiver.port
        ),
    );
    let s = Server::start(&storage, Some(&cfg));
    // A long job holds the worker; a job behind it loses its stored input and fails; the long
    // one is deleted while it runs (cancelled).
    let long = s.create(json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 40}));
    let png = {
        let img = image::RgbImage::from_fn(128, 64, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let failing = s.create(json!({"prompt": "p", "size": SMALL, "num_frames": 33,
        "input_reference": format!("data:image/png;base64,{b64}")}));
    std::fs::remove_file(storage.join(format!("{failing}.input"))).unwrap();
    assert_eq!(
        s.request("DELETE", &format!("/v1/videos/{long}"), &[], b"")
            .status,
        200
    );
    assert_eq!(s.wait(&failing)["status"], "failed");
    let seen = receiver.wait_for("two events", |s| s.len() >= 2);
    let by_job = |job: &str| {
        seen.iter()
            .filter(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["id"] == job)
            .cloned()
            .collect::<Vec<_>>()
    };
    check_deliveries(&by_job(&long), "video.cancelled", &long);
    check_deliveries(&by_job(&failing), "video.failed", &failing);
    assert!(seen.iter().all(|r| r.path == "/all"));
    // The blocking endpoints that answer the result themselves send no events.
    for path in ["/v1/videos/sync", "/v1/images/generations"] {
        let e = s
            .post_json(
                path,
                json!({"prompt": "p", "webhook_url": "http://127.0.0.1:9/x"}),
            )
            .error(400);
        assert_eq!(e["param"], "webhook_url", "{path}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("sends no events"),
            "{e}"
        );
    }
    // A server without [webhooks] refuses webhook_url.
    drop(s);
    let plain = Server::start(&dir.path().join("st2"), None);
    let e = plain
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "webhook_url": format!("http://127.0.0.1:{}/x", receiver.port)}),
        )
        .error(400);
    assert_eq!(e["param"], "webhook_url");
}

/// A small PNG.
fn png_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(128, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn remote_media_is_fetched_only_from_allowed_hosts_within_its_limits() {
    // Nothing may ever connect here: the redirect target of `/redirect`.
    let forbidden = TcpListener::bind("127.0.0.2:0").unwrap();
    forbidden.set_nonblocking(true).unwrap();
    let forbidden_port = forbidden.local_addr().unwrap().port();
    let png = png_bytes();
    let media = TestServer::start("127.0.0.1", move |req, _, s| match req.path.as_str() {
        "/img.png" => respond(s, "200 OK", "image/png", &png),
        "/redirect" => {
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{forbidden_port}/img.png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        "/big" => {
            // No Content-Length: the cap must hold while reading.
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n"
            );
            for _ in 0..64 {
                if s.write_all(&[0u8; 4096]).is_err() {
                    break;
                }
            }
        }
        "/slow" => {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            );
            let _ = s.write_all(&[0u8; 10]);
            let _ = s.flush();
            std::thread::sleep(Duration::from_secs(60));
        }
        "/page" => respond(s, "200 OK", "text/html", b"<html></html>"),
        _ => respond(s, "404 Not Found", "text/plain", b""),
    });
    let base = format!("http://127.0.0.1:{}", media.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[remote_media]\nenabled = true\nallow_hosts = [\"127.0.0.1\"]\nmax_bytes = 100000\n\
         timeout_s = 2\n",
    );
    let s = Server::start(&dir.path().join("st"), Some(&cfg));
    let create = |field: &str, value: Value| {
        let mut body = json!({"prompt": "p", "size": SMALL, "num_frames": 33});
        body[field] = value;
        s.post_json("/v1/videos", body)
    };
    // An allow-listed loopback host is fetched, in each place a URL may stand.
    for (field, value) in [
        ("start_image", json!(format!("{base}/img.png"))),
        (
            "image_reference",
            json!({"image_url": format!("{base}/img.png")}),
        ),
        ("input_reference", json!(format!("{base}/img.png"))),
    ] {
        let r = create(field, value);
        assert_eq!(r.status, 200, "{field}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            s.request("DELETE", &format!("/v1/videos/{id}"), &[], b"")
                .status,
            200
        );
    }
    assert_eq!(media.seen().len(), 3);
    let refused = |field: &str, url: String, needle: &str| {
        let e = create(field, json!(url)).error(400);
        assert_eq!(e["param"], field, "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(needle), "{url}: {m}");
    };
    // A redirect to a loopback address that is not allow-listed.
    refused("start_image", format!("{base}/redirect"), "127.0.0.2");
    assert!(
        forbidden.accept().is_err(),
        "the redirect target was connected to"
    );
    // A name that resolves to loopback is refused before any connection.
    let before = media.seen().len();
    refused(
        "start_image",
        format!("http://localhost:{}/img.png", media.port),
        "resolves to",
    );
    assert_eq!(media.seen().len(), before, "localhost was connected to");
    // Over the size cap while reading; a body that stalls; not an image or video.
    refused("start_image", format!("{base}/big"), "100000-byte limit");
    refused("start_image", format!("{base}/slow"), "timed out");
    refused("start_image", format!("{base}/page"), "text/html");
    refused("start_image", format!("{base}/missing"), "404");
    drop(s);

    // Without allow_hosts, 127.0.0.1 itself is refused and never contacted.
    let cfg = write_config(dir.path(), "[remote_media]\nenabled = true\n");
    let s = Server::start(&dir.path().join("st2"), Some(&cfg));
    let before = media.seen().len();
    let e = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "start_image": format!("{base}/img.png")}),
        )
        .error(400);
    assert_eq!(e["param"], "start_image");
    assert!(e["message"].as_str().unwrap().contains("loopback"), "{e}");
    assert_eq!(media.seen().len(), before);
    drop(s);

    // Disabled (the default): a 400 naming the field, nothing fetched.
    let s = Server::start(&dir.path().join("st3"), None);
    let e = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "image_reference": {"image_url": format!("{base}/img.png")}}),
        )
        .error(400);
    assert_eq!(e["param"], "image_reference");
    assert_eq!(media.seen().len(), before);
}

#[test]
fn remix_extend_and_edit_make_new_jobs_from_a_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), None);
    let src = s.create(
        json!({"prompt": "a red cube", "size": SMALL, "num_frames": 33, "fps": 12, "seed": 42}),
    );
    let src_v = s.wait(&src);
    assert_eq!(src_v["status"], "completed");
    assert_eq!(src_v["remixed_from_video_id"], Value::Null);

    // Remix: same size, frames, fps (and seed), new prompt.
    let r = s.post_json(
        &format!("/v1/videos/{src}/remix"),
        json!({"prompt": "a green cube"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["remixed_from_video_id"], src.as_str());
    assert_eq!(v["prompt"], "a green cube");
    for k in ["size", "fps", "num_frames", "seconds", "model"] {
        assert_eq!(v[k], src_v[k], "{k}");
    }
    let done = s.wait(v["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["remixed_from_video_id"], src.as_str());

    // Extension of a stored video by id (JSON body): video-to-video, its settings below the body.
    let r = s.post_json(
        "/v1/videos/extensions",
        json!({"prompt": "the cube rolls on", "num_frames": 33, "video": {"id": src}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["remixed_from_video_id"], src.as_str());
    assert_eq!(v["size"], src_v["size"]);
    assert_eq!(s.wait(v["id"].as_str().unwrap())["status"], "completed");

    // Edit of an uploaded MP4 (multipart, as the openai SDK sends it).
    let mp4 = s.get(&format!("/v1/videos/{src}/content")).body;
    let boundary = "omniOutboundBoundary";
    let mut body = Vec::new();
    for (k, val) in [
        ("prompt", "a blue cube"),
        ("size", SMALL),
        ("num_frames", "33"),
    ] {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{val}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"v.mp4\"\r\n\
             Content-Type: video/mp4\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(&mp4);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = s.request("POST", "/v1/videos/edits", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["remixed_from_video_id"], Value::Null);
    assert_eq!(s.wait(v["id"].as_str().unwrap())["status"], "completed");

    // Refusals name what is wrong.
    let unknown = "video_0123456789abcdef0123456789abcdef";
    s.post_json(
        &format!("/v1/videos/{unknown}/remix"),
        json!({"prompt": "p"}),
    )
    .error(404);
    let e = s
        .post_json(&format!("/v1/videos/{src}/remix"), json!({"prompt": " "}))
        .error(400);
    assert_eq!(e["param"], "prompt");
    for (body, param) in [
        (json!({"prompt": "p", "video": {"id": unknown}}), "video"),
        (json!({"prompt": "p"}), "video"),
        (json!({"prompt": "p", "video": "AAEC"}), "video"),
    ] {
        let e = s
            .post_json("/v1/videos/extensions", body.clone())
            .error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    // Characters: a clear 501 envelope.
    for (m, p) in [
        ("POST", "/v1/videos/characters"),
        ("GET", "/v1/videos/characters/char_1"),
    ] {
        let e = s.request(m, p, &[], b"").error(501);
        assert_eq!(e["code"], "not_implemented");
        assert!(e["message"].as_str().unwrap().contains("character"), "{e}");
    }
}
