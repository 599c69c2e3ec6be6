//! `omni serve` with Wan image-to-video and video-to-video checkpoints over a real socket:
//! `input_reference` as an image (data URL) on the tiny I2V checkpoint, and as an MP4 (with
//! `extra_params.strength`) on the tiny V2V checkpoint, each make an MP4 that ffprobe accepts;
//! LocalAI's `end_image` (only an FLF2V checkpoint takes it: `tests/serve_wan_flf2v.rs`),
//! `strength` sent to the I2V checkpoint, no reference for I2V / V2V, and a reference for the T2V
//! checkpoint are each a 400 naming the field.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::http::Server;
use common::{copy_dir, fixture, tiny_wan_clip};
use serde_json::{Value, json};

/// `POST /v1/videos/sync` with a JSON body.
fn sync(server: &Server, body: Value) -> (u16, Vec<u8>) {
    server.post_json("/v1/videos/sync", &body)
}

fn assert_400_naming(server: &Server, body: Value, param: &str) {
    let (status, bytes) = sync(server, body.clone());
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 400, "{body}: {text}");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["param"], param, "{body}: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

/// A smooth 48×32 PNG as a data URL.
fn png_data_url() -> String {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn probe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn input_reference_video_makes_a_v2v_mp4() {
    // The input: a 9-frame 48x32 MP4 from the tiny text-to-video checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.mp4");
    tiny_wan_clip(&input);
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), model.path());
    copy_dir(&fixture("tiny-wan2.1-v2v"), model.path());
    let storage = tempfile::tempdir().unwrap();
    let s = Server::tiny(model.path(), storage.path());
    let video = format!(
        "data:video/mp4;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&input).unwrap())
    );
    let (status, mp4) = sync(
        &s,
        json!({
            "prompt": "a lighthouse", "size": "48x32", "num_frames": 9, "num_inference_steps": 4,
            "input_reference": video, "extra_params": {"strength": 0.5}
        }),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    let path = storage.path().join("out.mp4");
    std::fs::write(&path, &mp4).unwrap();
    let p = probe(&path);
    assert_eq!(p["streams"][0]["nb_read_frames"], "9");
    assert_eq!(p["streams"][0]["width"], 48);
    // No video: a 400 naming the reference field, before any job.
    let base = json!({"prompt": "p", "size": "48x32", "num_frames": 9});
    assert_400_naming(&s, base.clone(), "input_reference");
    drop(s);
    // A text-to-video checkpoint takes no reference: a 400 naming the field it came in.
    let storage = tempfile::tempdir().unwrap();
    let t2v = Server::tiny(&fixture("tiny-wan2.1-t2v"), storage.path());
    let mut b = base;
    b["input_reference"] = json!(png_data_url());
    assert_400_naming(&t2v, b, "input_reference");
}

#[test]
fn input_reference_image_makes_an_i2v_mp4_and_end_image_is_a_400() {
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-i2v"), model.path());
    let storage = tempfile::tempdir().unwrap();
    let s = Server::tiny(model.path(), storage.path());
    let (status, mp4) = sync(
        &s,
        json!({
            "prompt": "a lighthouse", "size": "48x32", "num_frames": 9, "num_inference_steps": 2,
            "input_reference": png_data_url()
        }),
    );
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
    assert_eq!(probe["streams"][0]["height"], 32);
    // No image: a 400 naming the reference field, before any job.
    assert_400_naming(
        &s,
        json!({"prompt": "p", "size": "48x32", "num_frames": 5}),
        "input_reference",
    );
    // LocalAI first/last frame: this I2V transformer has no pos_embed_seq_len, so a 400 naming
    // `end_image`, never dropped.
    assert_400_naming(
        &s,
        json!({
            "prompt": "p", "size": "48x32", "num_frames": 5,
            "start_image": png_data_url(), "end_image": png_data_url()
        }),
        "end_image",
    );
    // `strength` is a video-to-video knob: refused by name here.
    assert_400_naming(
        &s,
        json!({"prompt": "p", "size": "48x32", "num_frames": 5,
               "input_reference": png_data_url(), "extra_params": {"strength": 0.5}}),
        "strength",
    );
}
