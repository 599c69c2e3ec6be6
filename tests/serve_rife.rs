//! Frame interpolation end to end: `omni serve --rife-model` over real sockets (multipart and
//! JSON), a 2x job that reports and contains 2·N−1 frames at 2x fps (ffprobe), an explicit fps
//! kept, the 400s (no model → `enable_frame_interpolation`, a model path outside model_dirs, bad
//! exp / scale), and `omni generate --frame-interpolation-exp`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{assert_one_line_error, fixture, spawn_serve, stderr, tiny_distilled};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(storage: &Path, extra: &[&str]) -> Server {
    let (child, addr) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_omni"))
            .arg("serve")
            .arg(tiny_distilled())
            .args(["--port", "0", "--served-model-name", "tiny-helios"])
            .arg("--storage")
            .arg(storage)
            .args(extra)
            .stderr(Stdio::inherit()),
    );
    let s = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(120);
    while http(&s.addr, "GET", "/readyz", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "model never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
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
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn post_json(s: &Server, path: &str, body: Value) -> (u16, Vec<u8>) {
    http(
        &s.addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "omniRifeBoundary42";
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

fn error_400(r: (u16, Vec<u8>)) -> Value {
    let text = String::from_utf8_lossy(&r.1).into_owned();
    assert_eq!(r.0, 400, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["error"].clone()
}

/// (frames counted by decoding, r_frame_rate) of an MP4.
fn ffprobe(path: &Path) -> (u64, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=r_frame_rate,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    assert!(out.status.success(), "ffprobe failed: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
        s["r_frame_rate"].as_str().unwrap().to_string(),
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_2x_job_has_2n_minus_1_frames_at_2x_fps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("rife/flownet.pkl");
    let s = start(
        &tmp.path().join("st"),
        &["--rife-model", model.to_str().unwrap()],
    );

    // Multipart /sync: 33 frames → 65 at 48 fps.
    let (ct, body) = multipart(&[
        ("prompt", "a lighthouse"),
        ("size", "128x64"),
        ("num_frames", "33"),
        ("enable_frame_interpolation", "true"),
        ("frame_interpolation_exp", "1"),
    ]);
    let r = http(
        &s.addr,
        "POST",
        "/v1/videos/sync",
        &[("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let mp4 = write(tmp.path(), "2x.mp4", &r.1);
    assert_eq!(ffprobe(&mp4), (65, "48/1".to_string()));
    // The same through the openai SDK's `extra_body` shape (extra fields in the JSON body) via
    // a job: the Video reports 65 frames at 48 fps.
    let r = post_json(
        &s,
        "/v1/videos",
        json!({"prompt": "a lighthouse", "size": "128x64", "num_frames": 33,
               "enable_frame_interpolation": "true", "frame_interpolation_exp": "1"}),
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let v: Value = serde_json::from_slice(&r.1).unwrap();
    assert_eq!(
        (v["num_frames"].clone(), v["fps"].clone()),
        (json!(65), json!(48)),
        "{v}"
    );

    // JSON job, 4x with an explicit output fps: 33 → 129 frames at the fps asked.
    let r = post_json(
        &s,
        "/v1/videos",
        json!({"prompt": "a lighthouse", "size": "128x64", "num_frames": 33, "fps": 30,
               "enable_frame_interpolation": true, "frame_interpolation_exp": 2,
               "frame_interpolation_scale": 0.5}),
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let id = serde_json::from_slice::<Value>(&r.1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let video = loop {
        let r = http(&s.addr, "GET", &format!("/v1/videos/{id}"), &[], b"");
        let v: Value = serde_json::from_slice(&r.1).unwrap();
        if v["status"] == "completed" || v["status"] == "failed" {
            break v;
        }
        assert!(Instant::now() < deadline, "job never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(video["status"], "completed", "{video}");
    let r = http(
        &s.addr,
        "GET",
        &format!("/v1/videos/{id}/content"),
        &[],
        b"",
    );
    assert_eq!(r.0, 200);
    let mp4 = write(tmp.path(), "4x.mp4", &r.1);
    assert_eq!(ffprobe(&mp4), (129, "30/1".to_string()));
    assert_eq!(
        (video["num_frames"].clone(), video["fps"].clone()),
        (json!(129), json!(30)),
        "{video}"
    );

    // 400s.
    for (body, param) in [
        (
            json!({"prompt": "p", "enable_frame_interpolation": true, "frame_interpolation_exp": 5}),
            "frame_interpolation_exp",
        ),
        (
            json!({"prompt": "p", "enable_frame_interpolation": true, "frame_interpolation_scale": 3}),
            "frame_interpolation_scale",
        ),
        (
            json!({"prompt": "p", "enable_frame_interpolation": true, "frame_interpolation_model_path": "/etc/passwd"}),
            "frame_interpolation_model_path",
        ),
        (
            json!({"prompt": "p", "enable_frame_interpolation": "maybe"}),
            "enable_frame_interpolation",
        ),
    ] {
        let e = error_400(post_json(&s, "/v1/videos", body.clone()));
        assert_eq!(e["param"], param, "{body}: {e}");
    }
}

#[test]
fn interpolation_without_a_model_is_a_400_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("st"), &[]);
    let e = error_400(post_json(
        &s,
        "/v1/videos",
        json!({"prompt": "p", "enable_frame_interpolation": true}),
    ));
    assert_eq!(e["param"], "enable_frame_interpolation", "{e}");
    let (ct, body) = multipart(&[("prompt", "p"), ("enable_frame_interpolation", "true")]);
    let e = error_400(http(
        &s.addr,
        "POST",
        "/v1/videos",
        &[("Content-Type", &ct)],
        &body,
    ));
    assert_eq!(e["param"], "enable_frame_interpolation", "{e}");
}

#[test]
fn generate_interpolates_with_rife_model_and_refuses_without() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.mp4");
    let run = |extra: &[&str], out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_omni"))
            .args([
                "generate",
                "--prompt",
                "p",
                "--width",
                "128",
                "--height",
                "64",
                "--num-frames",
                "33",
                "-q",
                "--model",
            ])
            .arg(tiny_distilled())
            .args(extra)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    let model = fixture("rife/flownet.pkl");
    let o = run(
        &[
            "--frame-interpolation-exp",
            "1",
            "--rife-model",
            model.to_str().unwrap(),
        ],
        &out,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ffprobe(&out), (65, "48/1".to_string()));
    let o = run(
        &["--frame-interpolation-exp", "1"],
        &tmp.path().join("y.mp4"),
    );
    let line = assert_one_line_error(&o);
    assert!(line.contains("enable_frame_interpolation"), "{line}");
}
