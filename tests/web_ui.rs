//! The web page at `/` in a real browser: headless Chromium, driven over the DevTools protocol,
//! against `omni serve` on the tiny Distilled checkpoint with a small `[default_request]`
//! (128x64, 33 frames: a job finishes in seconds).
//!
//! With `api_keys` set (the page asks for the key and fetches media as blobs with the bearer
//! header): the key dialog; the form built from `/v1/models`; the server's 400 next to the size
//! field and next to a model knob; a good request's progress bar reaches 100; the `<video>`
//! loads (`readyState >= 2`) and plays (`currentTime > 0`); an image-to-video upload; the gallery
//! lists the job with its thumbnail and deletes it (keyboard only); no horizontal scrolling at
//! phone width. Each state is a screenshot under `target/web-ui/*.png`. Without keys: the
//! `<video>` and thumbnails use the content URLs themselves, Cancel deletes a running job, and
//! the gallery pages by 12.
//!
//! Needs `chromium` (Debian: `apt-get install chromium`; or set `OMNI_CHROMIUM` to a Chrome or
//! Chromium binary). Without one the test is skipped with a message, unless
//! `OMNI_REQUIRE_CHROMIUM` is set (as `.ci/run` does), in which case it fails.
//!
//! The DevTools client below sends CDP commands as JSON over `tungstenite`'s synchronous
//! WebSocket client (on `std::net`) rather than using the `chromiumoxide` crate, whose features
//! unify with this crate's and rebuild tokio and burn for every test target.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::{spawn_serve, tiny_distilled};

const KEY: &str = "sk-web-ui";

// ---- omni serve ----------------------------------------------------------------------------------

/// A running `omni serve`; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// With `api_keys = [KEY]` when `keyed`.
    fn start(dir: &Path, keyed: bool) -> Server {
        let cfg = dir.join("serve.toml");
        let keys = match keyed {
            true => format!("api_keys = [\"{KEY}\"]\n"),
            false => String::new(),
        };
        std::fs::write(
            &cfg,
            format!(
                "{keys}[limits]\npoll_after_ms = 200\n\
                 [default_request]\nwidth = 128\nheight = 64\nnum_frames = 33\nfps = 8\n"
            ),
        )
        .unwrap();
        let (child, addr) = spawn_serve(
            Command::new(env!("CARGO_BIN_EXE_omni"))
                .arg("serve")
                .arg(tiny_distilled())
                .args(["--served-model-name", "tiny-helios", "--port", "0"])
                .arg("--storage")
                .arg(dir.join("storage"))
                .arg("--config")
                .arg(&cfg)
                .stderr(Stdio::inherit()),
        );
        Server { child, addr }
    }

    /// `(status, content type, body)` of a GET, with the key when `auth`.
    fn get(&self, path: &str, auth: bool) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let auth = match auth {
            true => format!("Authorization: Bearer {KEY}\r\n"),
            false => String::new(),
        };
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let ct = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type:"))
            .unwrap_or("")
            .trim()
            .to_string();
        (status, ct, raw[split + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Chromium over the DevTools protocol -------------------------------------------------------

/// Chromium's binary: `OMNI_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OMNI_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// The browser's DevTools WebSocket at `ws://127.0.0.1:PORT/devtools/browser/ID`, without
/// message or frame size limits (full-page screenshots come as one base64 message).
fn devtools_connect(url: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    match tungstenite::client::connect_with_config(url, Some(config), 0) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("WebSocket upgrade refused: {e}"),
    }
}

/// A headless browser with one page attached; killed on drop.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Uncaught exceptions and console errors of the page.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "chromium exited before printing its DevTools address"
            );
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "chromium never listened");
        };
        // Keep draining stderr, or Chromium blocks once the pipe is full.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let mut browser = Browser {
            child,
            ws: devtools_connect(&url),
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Runtime.enable", json!({}));
        browser.call("Page.enable", json!({}));
        browser
    }

    /// One command (on the page's session once attached); its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m: Value = serde_json::from_str(&self.recv()).unwrap();
            match m["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    let d = &m["params"]["exceptionDetails"];
                    self.errors
                        .push(format!("{} {}", d["text"], d["exception"]["description"]));
                }
                Some("Runtime.consoleAPICalled") if m["params"]["type"] == "error" => {
                    self.errors.push(m["params"]["args"].to_string());
                }
                _ => {}
            }
            if m["id"] == id {
                if let Some(e) = m.get("error") {
                    panic!("{method}: {e}");
                }
                return m["result"].clone();
            }
        }
    }

    /// The next text message (fragments are joined and pings answered by `tungstenite`).
    fn recv(&mut self) -> String {
        use tungstenite::error::{Error, ProtocolError};
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return text.as_str().to_owned(),
                Ok(Message::Binary(data)) => return String::from_utf8(data.to_vec()).unwrap(),
                Ok(Message::Close(_))
                | Err(
                    Error::ConnectionClosed
                    | Error::AlreadyClosed
                    | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ) => panic!("the browser closed the DevTools connection"),
                Ok(_) => {}
                Err(e) => panic!("the DevTools connection: {e}"),
            }
        }
    }

    /// The value of a JavaScript expression (promises awaited).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(d) = r.get("exceptionDetails") {
            panic!("{expr}: {}", d["exception"]["description"]);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; its value.
    fn wait_for(&mut self, expr: &str, what: &str, timeout_s: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        loop {
            let v = self.eval(expr);
            if !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("") {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A key press (`Enter`, `Tab`) to the focused element.
    fn press(&mut self, key: &str, code: u32) {
        let text = match key {
            "Enter" => "\r",
            _ => "",
        };
        for ty in ["keyDown", "keyUp"] {
            let mut p = json!({"type": ty, "key": key, "code": key,
                               "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code});
            if ty == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// A PNG of the whole page at `target/web-ui/NAME.png`.
    fn screenshot(&mut self, name: &str) {
        let size = self.eval(
            "({width: document.documentElement.scrollWidth,
               height: document.documentElement.scrollHeight})",
        );
        let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                          "scale": 1});
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("web-ui");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the test ----------------------------------------------------------------------------------

/// Chromium's binary, or `None` (with a message) when the test is to be skipped.
fn chromium_or_skip() -> Option<PathBuf> {
    let binary = chromium();
    if binary.is_none() {
        assert!(
            std::env::var_os("OMNI_REQUIRE_CHROMIUM").is_none(),
            "OMNI_REQUIRE_CHROMIUM is set but no chromium was found (apt-get install chromium, \
             or set OMNI_CHROMIUM)"
        );
        // Straight to stderr (not `eprintln!`, which the test harness captures), so the skip
        // shows in a plain `cargo test`.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED web_ui: no chromium on PATH (apt-get install chromium, or set OMNI_CHROMIUM; \
             OMNI_REQUIRE_CHROMIUM=1 makes this a failure)"
        );
    }
    binary
}

#[test]
fn page_creates_shows_progress_plays_and_manages_the_gallery() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), true);

    // 1. The page and its assets need no key; the API does.
    let (status, ct, html) = server.get("/", false);
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&html).contains("<form id=\"form\""));
    assert_eq!(server.get("/ui/app.js", false).0, 200);
    assert_eq!(server.get("/ui/app.css", false).0, 200);
    assert_eq!(server.get("/ui/nothing.js", false).0, 404);
    assert_eq!(server.get("/v1/models", false).0, 401);
    // What the form is built from: the model card's extension fields.
    let (status, _, card) = server.get("/v1/models/tiny-helios", true);
    assert_eq!(status, 200);
    let card: Value = serde_json::from_slice(&card).unwrap();
    assert_eq!(card["pipeline"], "HeliosPyramidPipeline");
    assert_eq!(card["defaults"]["size"], "128x64", "{card}");
    assert_eq!(card["defaults"]["num_frames"], 33);
    assert_eq!(card["defaults"]["seconds"], "4");
    assert_eq!(card["defaults"]["seed"], Value::Null);
    assert_eq!(card["size_multiple"], 64);
    assert_eq!(card["parameters"][0]["name"], "guidance_scale");
    assert_eq!(card["parameters"][0]["in"], "body");
    assert_eq!(card["parameters"][1]["default"], json!([2, 2, 2]));

    let mut b = Browser::launch(&binary);
    let version = b.call("Browser.getVersion", json!({}));
    eprintln!("browser: {}", version["product"]);
    b.viewport(1100, 1300, false);
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", server.addr)}),
    );

    // 2. The key dialog (the API answered 401); typed and sent with Enter.
    b.wait_for(
        "document.getElementById('key-dialog')?.open",
        "the key dialog",
        120,
    );
    b.screenshot("01-key");
    b.eval("document.getElementById('key').focus()");
    b.call("Input.insertText", json!({"text": KEY}));
    b.press("Enter", 13);
    b.wait_for("document.body?.dataset.ready === 'true'", "the form", 120);
    assert_eq!(b.eval("sessionStorage.getItem('omni-api-key')"), KEY);

    // 3. The form comes from /v1/models: [default_request] sizes and the Distilled knobs.
    let form = b.eval(
        "({size: $('size').value, length: $('length').value, fps: $('fps').value, seed: $('seed').value,
           sizes: [...document.querySelectorAll('#sizes option')].map(o => o.value),
           knobs: [...document.querySelectorAll('[data-knob]')].map(i => i.dataset.knob),
           presets: [...$('preset').options].map(o => o.value),
           unlabelled: [...document.querySelectorAll('input, select, textarea')]
             .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)})",
    );
    assert_eq!(form["size"], "128x64", "{form}");
    assert_eq!(form["length"], "33");
    assert_eq!(form["fps"], "8");
    assert_eq!(form["seed"], "");
    assert_eq!(form["sizes"][0], "128x64");
    let knobs: Vec<&str> = form["knobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        knobs[..2],
        ["guidance_scale", "pyramid_num_inference_steps_list"]
    );
    assert!(!knobs.contains(&"num_inference_steps"), "{knobs:?}");
    assert!(
        form["presets"]
            .as_array()
            .unwrap()
            .contains(&json!("helios-distilled"))
    );
    assert_eq!(form["unlabelled"], json!([]), "inputs without a label");
    // Frames ↔ seconds at the form's fps; "Reset to defaults" restores the card's defaults.
    b.eval(
        "$('length-unit').value = 'seconds'; $('length-unit').dispatchEvent(new Event('change'))",
    );
    assert_eq!(b.eval("$('length').value"), "4");
    b.eval("$('reset').click()");
    assert_eq!(
        b.eval("$('length-unit').value + ' ' + $('length').value"),
        "num_frames 33"
    );
    b.eval("$('knobs-box').open = true");
    b.screenshot("02-form");
    b.eval("$('knobs-box').open = false");

    // 4. A bad size: the server's 400 message next to the size field.
    b.eval(
        "$('prompt').value = 'A lighthouse at dusk, waves below'; $('size').value = '12x';
         document.getElementById('submit').click()",
    );
    let msg = b.wait_for(
        "!document.getElementById('size-err').hidden && document.getElementById('size-err').textContent",
        "the size error",
        30,
    );
    assert!(
        msg.as_str().unwrap().contains("'12x' is not WIDTHxHEIGHT"),
        "{msg}"
    );
    assert_eq!(b.eval("$('size').getAttribute('aria-invalid')"), "true");
    assert_eq!(b.eval("document.activeElement.id"), "size");
    b.screenshot("03-bad-size");
    // A bad model setting: the message next to that knob (its section opened).
    b.eval(
        "$('size').value = '128x64'; $('knob-pyramid_num_inference_steps_list').value = '2, 2';
         document.getElementById('submit').click()",
    );
    let msg = b.wait_for(
        "!$('knob-pyramid_num_inference_steps_list-err').hidden && $('knob-pyramid_num_inference_steps_list-err').textContent",
        "the steps error",
        30,
    );
    assert!(
        msg.as_str().unwrap().contains("must list 3 step counts"),
        "{msg}"
    );
    assert_eq!(b.eval("$('knobs-box').open && $('size-err').hidden"), true);
    b.eval(
        "$('knob-pyramid_num_inference_steps_list').value = '2, 2, 2'; $('knobs-box').open = false",
    );

    // 5. A good request (submitted from the keyboard): the progress bar moves to 100.
    b.eval("$('size').value = '128x64'; $('seed').value = '7'; $('prompt').focus()");
    b.eval("document.getElementById('submit').focus()");
    b.press("Enter", 13);
    b.wait_for("!document.getElementById('job').hidden", "the job view", 30);
    assert_eq!(b.eval("document.getElementById('size-err').hidden"), true);
    let mut seen: Vec<i64> = Vec::new();
    let mut shot = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = b.eval(
            "({p: document.getElementById('job-progress').value,
               state: document.getElementById('job-state').textContent,
               video: !document.getElementById('player').hidden})",
        );
        let p = s["p"].as_i64().unwrap();
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        if !shot && s["state"] == "in progress" {
            b.screenshot("04-progress");
            shot = true;
        }
        if s["video"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the job never finished: {s}");
        std::thread::sleep(Duration::from_millis(30));
    }
    eprintln!("progress values seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&100));
    assert_eq!(
        b.eval("document.getElementById('job-state').textContent"),
        "completed"
    );

    // 6. The video (a blob URL: media is fetched with the key) loads and plays.
    let h264 =
        b.eval("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')");
    eprintln!("canPlayType(H.264 Constrained Baseline) = {h264}");
    assert!(
        b.eval("$('player').src")
            .as_str()
            .unwrap()
            .starts_with("blob:")
    );
    b.wait_for(
        "$('player').readyState >= 2 || $('player').error?.message || false",
        "the video data",
        60,
    );
    let err =
        b.eval("$('player').error && ($('player').error.code + ' ' + $('player').error.message)");
    assert!(err.is_null(), "the <video> failed to load: {err}");
    b.eval("$('player').play()");
    b.wait_for("$('player').currentTime > 0", "playback", 30);
    b.eval("$('player').pause()");
    b.screenshot("05-playing");

    // 7. The gallery: the job with its thumbnail, size and status.
    let id = b.eval("job.id");
    let id = id.as_str().unwrap().to_string();
    let card = format!("document.querySelector('#cards li[data-id=\"{id}\"]')");
    b.wait_for(
        &format!("{card}?.querySelector('img')?.naturalWidth"),
        "the gallery thumbnail",
        30,
    );
    let c = b.eval(&format!(
        "({{w: {card}.querySelector('img').naturalWidth, text: {card}.textContent,
            blob: {card}.querySelector('img').src.startsWith('blob:')}})"
    ));
    assert_eq!(c["w"], 128);
    assert_eq!(c["blob"], true);
    let text = c["text"].as_str().unwrap();
    assert!(
        text.contains("A lighthouse at dusk") && text.contains("128x64"),
        "{text}"
    );
    assert!(
        text.contains("completed") && text.contains("33 frames at 8 fps"),
        "{text}"
    );
    b.eval("document.getElementById('gallery').scrollIntoView()");
    b.screenshot("06-gallery");

    // 8. Image-to-video: the thumbnail (a WebP) uploaded as `input_reference` from the file input.
    let (status, _, webp) = server.get(&format!("/v1/videos/{id}/content?variant=thumbnail"), true);
    assert_eq!(status, 200);
    let reference = dir.path().join("first-frame.webp");
    std::fs::write(&reference, webp).unwrap();
    let input = b.call(
        "Runtime.evaluate",
        json!({"expression": "document.getElementById('reference')"}),
    );
    b.call(
        "DOM.setFileInputFiles",
        json!({"files": [reference], "objectId": input["result"]["objectId"]}),
    );
    b.eval("$('prompt').value = 'The same lighthouse, later'; $('submit').click()");
    b.wait_for(
        "job.id !== '' && job.video.prompt === 'The same lighthouse, later' && !$('player').hidden",
        "the image-to-video job",
        180,
    );
    assert_eq!(b.eval("$('job-state').textContent"), "completed");
    let i2v = b.eval("job.id");
    let record = dir
        .path()
        .join(format!("storage/jobs/{}.json", i2v.as_str().unwrap()));
    let record: Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(
        record["input"], "image",
        "the upload did not arrive as a reference"
    );
    b.eval("$('reference').value = ''");

    // 9. Delete from the keyboard: focus the card's Delete button, press Enter.
    b.eval(&format!(
        "[...{card}.querySelectorAll('button')].find(b => b.textContent === 'Delete').focus()"
    ));
    b.press("Enter", 13);
    b.wait_for(&format!("!{card}"), "the card to go", 30);
    assert_eq!(server.get(&format!("/v1/videos/{id}"), true).0, 404);
    b.screenshot("07-deleted");

    // 10. Phone width: everything fits without horizontal scrolling.
    b.viewport(390, 844, true);
    b.eval("window.scrollTo(0, 0)");
    let overflow = b.wait_for(
        "new Promise(r => requestAnimationFrame(() => r(
           {scroll: document.documentElement.scrollWidth, inner: window.innerWidth})))",
        "layout",
        10,
    );
    assert!(
        overflow["scroll"].as_i64() <= overflow["inner"].as_i64(),
        "horizontal overflow at phone width: {overflow}"
    );
    b.screenshot("08-phone");

    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
    eprintln!("web_ui: {:.1} s", started.elapsed().as_secs_f64());
}

/// Without `api_keys`: no dialog, and the `<video>` and the thumbnails use the content URLs
/// themselves (the video streams with Range requests).
#[test]
fn page_without_keys_plays_the_content_url() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), false);
    let mut b = Browser::launch(&binary);
    b.viewport(1000, 900, false);
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", server.addr)}),
    );
    b.wait_for("document.body?.dataset.ready === 'true'", "the form", 120);
    assert_eq!(
        b.eval("$('key-dialog').open || !$('key-button').hidden"),
        false
    );
    b.eval("$('prompt').value = 'A red kite over a field'; $('submit').click()");
    b.wait_for("!$('player').hidden", "the finished job", 180);
    let id = b.eval("job.id");
    let id = id.as_str().unwrap();
    assert_eq!(
        b.eval("new URL($('player').src).pathname"),
        format!("/v1/videos/{id}/content")
    );
    b.eval("$('player').play()");
    b.wait_for("$('player').currentTime > 0", "playback", 30);
    let thumb = b.wait_for(
        &format!(
            "(i => i?.naturalWidth && new URL(i.src).search)\
             (document.querySelector('#cards li[data-id=\"{id}\"] img'))"
        ),
        "the thumbnail",
        30,
    );
    assert_eq!(thumb, "?variant=thumbnail");
    assert_eq!(
        b.eval("$('download').getAttribute('href')"),
        format!("/v1/videos/{id}/content")
    );

    // Cancel: a long job (10 chunks) stopped from the job view.
    b.eval("$('length').value = '330'; $('submit').click()");
    b.wait_for(
        "job && job.id !== '' && job.video.num_frames > 300 && !$('cancel').hidden",
        "the long job",
        30,
    );
    let long = b.eval("job.id");
    b.eval("$('cancel').click()");
    b.wait_for(
        "$('job-state').textContent === 'Cancelled.'",
        "the cancel",
        30,
    );
    let path = format!("/v1/videos/{}", long.as_str().unwrap());
    assert_eq!(server.get(&path, false).0, 404);

    // Paging: 12 more jobs (queued is enough to be listed) fill the first page of 12 cards;
    // "Load more" fetches the 13th.
    b.eval(
        "Promise.all([...Array(12)].map(() => fetch('/v1/videos', {method: 'POST',
           headers: {'Content-Type': 'application/json'},
           body: JSON.stringify({prompt: 'queued'})}))).then(rs => rs.every(r => r.ok))",
    );
    b.eval("$('refresh').click()");
    b.wait_for(
        "$('cards').children.length === 12 && !$('more').hidden",
        "a full first page",
        30,
    );
    b.eval("$('more').click()");
    b.wait_for(
        "$('cards').children.length === 13 && $('more').hidden",
        "the second page",
        30,
    );
    assert_eq!(b.eval("$('cards').lastElementChild.dataset.id"), id);
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
}

/// Issue 13: the streamed URL (`content?stream=true`, chunked fragmented MP4) played by Chromium
/// through Media Source: the fragments are appended to a `SourceBuffer` as they arrive (the
/// codec string read from the stream's own `avcC`), and the video plays.
#[test]
fn chromium_plays_the_streamed_url_through_media_source() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), false);
    let mut b = Browser::launch(&binary);
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", server.addr)}),
    );
    b.wait_for("document.readyState === 'complete'", "the page", 60);
    let streamed = b.eval(
        r#"(async () => {
          const r = await fetch('/v1/videos', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({prompt: 'A red kite over a field', num_frames: 66})});
          const id = (await r.json()).id;
          const v = document.createElement('video');
          v.muted = true;
          document.body.append(v);
          window.streamed = v;
          const ms = new MediaSource();
          v.src = URL.createObjectURL(ms);
          await new Promise(res => ms.addEventListener('sourceopen', res, {once: true}));
          const resp = await fetch(`/v1/videos/${id}/content?stream=true`);
          const reader = resp.body.getReader();
          let sb = null, pieces = 0;
          for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            if (!sb) {
              const i = value.findIndex((_, k) => value[k] === 0x61 && value[k + 1] === 0x76
                && value[k + 2] === 0x63 && value[k + 3] === 0x43);
              const hex = x => x.toString(16).padStart(2, '0');
              const codec = 'avc1.' + hex(value[i + 5]) + hex(value[i + 6]) + hex(value[i + 7]);
              sb = ms.addSourceBuffer(`video/mp4; codecs="${codec}"`);
            }
            await new Promise((res, rej) => {
              sb.addEventListener('updateend', res, {once: true});
              sb.addEventListener('error', rej, {once: true});
              sb.appendBuffer(value);
            });
            pieces++;
          }
          ms.endOfStream();
          return {pieces, duration: ms.duration};
        })()"#,
    );
    assert!(streamed["pieces"].as_u64().unwrap() >= 1, "{streamed}");
    // 65 frames at the server's default 8 frames/s.
    let duration = streamed["duration"].as_f64().unwrap();
    assert!((duration - 65.0 / 8.0).abs() < 0.2, "{streamed}");
    b.eval("window.streamed.play()");
    b.wait_for("window.streamed.currentTime > 0", "playback", 30);
    assert_eq!(b.eval("window.streamed.error"), Value::Null);
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
}
