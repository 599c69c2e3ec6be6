//! `omni serve` with Wan checkpoints over a real socket: the tiny two-expert checkpoint answers
//! a create request with `guidance_scale_2` / `boundary_ratio` / `flow_shift` with an MP4 that
//! ffprobe accepts; out-of-range values, and any of these fields sent to a model that cannot
//! honour them (Helios, a one-expert Wan), are a 400 in the OpenAI envelope naming the field.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, fixture, spawn_serve, tiny_distilled};
use serde_json::{Value, json};

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

impl Server {
    fn start(model: &Path, storage: &Path) -> Server {
        let (child, addr) = spawn_serve(
            Command::new(env!("CARGO_BIN_EXE_omni"))
                .arg("serve")
                .arg(model)
                .args(["--port", "0", "--served-model-name", "tiny"])
                .arg("--storage")
                .arg(storage)
                .stderr(Stdio::inherit()),
        );
        let server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.post("GET", "/readyz", b"").0 != 200 {
            assert!(Instant::now() < deadline, "model never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// (status, body) of one HTTP/1.1 request.
    fn post(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = String::from_utf8_lossy(&raw[..split])
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        (status, raw[split + 4..].to_vec())
    }

    fn sync(&self, body: Value) -> (u16, Vec<u8>) {
        self.post("POST", "/v1/videos/sync", body.to_string().as_bytes())
    }
}

fn assert_400_naming(server: &Server, body: Value, param: &str) {
    let (status, bytes) = server.sync(body.clone());
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 400, "{body}: {text}");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["param"], param, "{body}: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

fn tiny_a14b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.2-a14b"), dir.path());
    dir
}

#[test]
fn two_expert_wan_serves_its_fields_and_refuses_bad_values() {
    let model = tiny_a14b();
    let storage = tempfile::tempdir().unwrap();
    let s = Server::start(model.path(), storage.path());
    let (status, mp4) = s.sync(json!({
        "prompt": "a lighthouse", "size": "48x32", "num_frames": 9, "num_inference_steps": 2,
        "guidance_scale": 4.0, "guidance_scale_2": 2.0, "boundary_ratio": 0.9, "flow_shift": 5.0
    }));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    let path = storage.path().join("out.mp4");
    std::fs::write(&path, &mp4).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe must be installed");
    assert!(out.status.success());
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["streams"][0]["nb_read_frames"], "9");
    assert_eq!(probe["streams"][0]["width"], 48);
    let base = json!({"prompt": "p", "size": "48x32", "num_frames": 5, "num_inference_steps": 1});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    assert_400_naming(&s, with("boundary_ratio", json!(1.5)), "boundary_ratio");
    assert_400_naming(&s, with("guidance_scale_2", json!(30)), "guidance_scale_2");
    assert_400_naming(&s, with("flow_shift", json!(0)), "flow_shift");
    // A Helios-only knob is refused by name too.
    assert_400_naming(
        &s,
        with("extra_params", json!({"zero_steps": 0})),
        "zero_steps",
    );
}

#[test]
fn fields_a_model_cannot_honour_are_a_400_naming_them() {
    let storage = tempfile::tempdir().unwrap();
    let helios = Server::start(&tiny_distilled(), storage.path());
    let base = json!({"prompt": "p", "size": "128x64", "num_frames": 33});
    for (k, v) in [
        ("guidance_scale_2", json!(2.0)),
        ("boundary_ratio", json!(0.5)),
        ("flow_shift", json!(5.0)),
    ] {
        let mut b = base.clone();
        b[k] = v.clone();
        assert_400_naming(&helios, b, k);
        let mut b = base.clone();
        b["extra_params"] = json!({k: v});
        assert_400_naming(&helios, b, k);
    }
    drop(helios);
    let storage = tempfile::tempdir().unwrap();
    let wan = Server::start(&fixture("tiny-wan2.1-t2v"), storage.path());
    let base = json!({"prompt": "p", "size": "48x32", "num_frames": 5});
    for k in ["guidance_scale_2", "boundary_ratio"] {
        let mut b = base.clone();
        b[k] = json!(0.5);
        assert_400_naming(&wan, b, k);
    }
    let mut b = base.clone();
    b["end_image"] = json!("data:image/png;base64,AAAA");
    assert_400_naming(&wan, b, "end_image");
}
