//! `omni serve` with the tiny Wan2.1 FLF2V checkpoint (`tiny-wan2.1-i2v` + the
//! `tiny-wan2.1-flf2v` overlay) over real sockets: LocalAI's `end_image` with a first image
//! (`input_reference` data URL in JSON, file parts in multipart, FastVideo's
//! `image_reference: [first, last]`) makes the video `omni generate --image A --last-image B`
//! makes for the same seed (decoded frames equal, ffprobe-checked); the two stored inputs of a
//! job (`<id>.input`, `<id>.last.input`) survive a kill -9 of the server, run after the restart,
//! and go with the job's delete; a refused admission leaves no file. `end_image` without a first
//! image, a first image without `end_image`, and a bad `end_image` are 400s naming `end_image`.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::http::{Server, error_400, ffprobe};
use common::{PROMPT, copy_dir, fixture, omni, stderr, tiny_wan_clip};
use serde_json::{Value, json};

const SEED: u64 = 7;

/// `tiny-wan2.1-i2v` with the FLF2V transformer and scheduler, in a temporary folder.
fn flf2v_checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-i2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.1-flf2v"), dir.path());
    dir
}

/// A smooth 48×32 PNG (`shift` moves the gradient), as bytes.
fn png(shift: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([
            (x * 5 + shift * 40) as u8,
            (y * 7 + shift * 20) as u8,
            ((x + y) * 3) as u8,
        ])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The RGB24 frames of an MP4, decoded by ffmpeg (so both sides go through the same decoder).
fn frames(mp4: &Path) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(mp4)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg must be installed");
    assert!(out.status.success(), "ffmpeg: {}", stderr(&out));
    out.stdout
}

/// Check an MP4 made from the request below (9 frames of 48×32) and return its frames.
fn checked_frames(dir: &Path, name: &str, mp4: &[u8]) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, mp4).unwrap();
    let p = ffprobe(&path);
    assert_eq!((p.frames, p.width, p.height), (9, 48, 32), "{name}: {p:?}");
    frames(&path)
}

/// The request's fields besides the images.
fn base() -> Value {
    json!({"prompt": PROMPT, "width": 48, "height": 32, "num_frames": 9,
           "num_inference_steps": 2, "seed": SEED})
}

/// A multipart body: text `fields`, then PNG file parts `(field, bytes)`.
fn multipart_files(fields: &Value, files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "omniFlf2vBoundary";
    let mut body = Vec::new();
    for (k, v) in fields.as_object().unwrap() {
        let v = match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    for (k, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{k}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The files in `storage` whose name ends with `suffix`.
fn stored(storage: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(storage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn end_image_makes_the_flf2v_video_the_cli_makes() {
    let model = flf2v_checkpoint();
    let tmp = tempfile::tempdir().unwrap();
    let (first, last) = (png(0), png(3));
    let (first_path, last_path) = (tmp.path().join("first.png"), tmp.path().join("last.png"));
    std::fs::write(&first_path, &first).unwrap();
    std::fs::write(&last_path, &last).unwrap();

    // The CLI's video: the reference for every server answer below.
    let cli_mp4 = tmp.path().join("cli.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(model.path())
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args(["--num-frames", "9", "--num-inference-steps", "2"])
        .args(["--seed", &SEED.to_string(), "--quiet", "--image"])
        .arg(&first_path)
        .arg("--last-image")
        .arg(&last_path)
        .arg("-o")
        .arg(&cli_mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "omni generate: {}", stderr(&out));
    let want = frames(&cli_mp4);

    let storage = tempfile::tempdir().unwrap();
    let s = Server::tiny(model.path(), storage.path());

    // JSON: LocalAI's end_image beside input_reference, both data URLs.
    let mut body = base();
    body["input_reference"] = json!(data_url(&first));
    body["end_image"] = json!(data_url(&last));
    let (status, mp4) = s.post_json("/v1/videos/sync", &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    assert!(
        checked_frames(tmp.path(), "json.mp4", &mp4) == want,
        "JSON end_image"
    );

    // FastVideo's list form.
    let mut body = base();
    body["image_reference"] = json!([{"image_url": data_url(&first)}, data_url(&last)]);
    let (status, mp4) = s.post_json("/v1/videos/sync", &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    assert!(
        checked_frames(tmp.path(), "list.mp4", &mp4) == want,
        "image_reference list"
    );

    // Either image alone, or a last image that is no image: a 400 naming end_image, no job.
    for (field, value) in [
        ("input_reference", json!(data_url(&first))),
        ("end_image", json!(data_url(&last))),
    ] {
        let mut body = base();
        body[field] = value;
        let e = error_400(s.post_json("/v1/videos", &body));
        assert_eq!(e["param"], "end_image", "{field} alone: {e}");
    }
    let mut body = base();
    body["input_reference"] = json!(data_url(&first));
    body["end_image"] = json!("data:image/png;base64,AAAAAAAA");
    let e = error_400(s.post_json("/v1/videos", &body));
    assert_eq!(e["param"], "end_image", "{e}");
    assert!(
        stored(storage.path(), ".input").is_empty(),
        "a refused admission left {:?}",
        stored(storage.path(), ".input")
    );

    // Multipart file parts on the async endpoint; the server is killed (-9) at once, and the
    // job runs after the restart from its two stored inputs.
    let (ct, body) = multipart_files(
        &base(),
        &[("input_reference", &first), ("end_image", &last)],
    );
    let (status, created) = s.request("POST", "/v1/videos", &[("Content-Type", &ct)], &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&created));
    let id = serde_json::from_slice::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    drop(s);
    let s = Server::tiny(model.path(), storage.path());
    let job = s.wait_job(&id);
    assert_eq!(job["status"], "completed", "{job}");
    let (status, mp4) = s.request("GET", &format!("/v1/videos/{id}/content"), &[], b"");
    assert_eq!(status, 200);
    assert!(
        checked_frames(tmp.path(), "multipart.mp4", &mp4) == want,
        "multipart"
    );
    // The record owns both inputs: deleting the job removes them.
    let inputs = [format!("{id}.input"), format!("{id}.last.input")];
    for f in &inputs {
        assert!(
            storage.path().join(f).exists(),
            "{f} missing before the delete"
        );
    }
    let (status, _) = s.request("DELETE", &format!("/v1/videos/{id}"), &[], b"");
    assert_eq!(status, 200);
    for f in &inputs {
        assert!(
            !storage.path().join(f).exists(),
            "{f} left after the delete"
        );
    }
}

#[test]
fn end_image_elsewhere_and_the_wrong_media_kind_are_400s_at_admission() {
    // A video as input_reference to an image-to-video checkpoint: refused at admission, naming
    // input_reference (no job is created).
    let tmp = tempfile::tempdir().unwrap();
    let clip = tmp.path().join("clip.mp4");
    tiny_wan_clip(&clip);
    let video = std::fs::read(&clip).unwrap();
    let video_b64 = base64::engine::general_purpose::STANDARD.encode(&video);

    let i2v = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-i2v"), i2v.path());
    let storage = tempfile::tempdir().unwrap();
    let s = Server::tiny(i2v.path(), storage.path());
    // The kind known from the data URL, and found by decoding plain base64.
    for value in [
        format!("data:video/mp4;base64,{video_b64}"),
        video_b64.clone(),
    ] {
        let mut body = base();
        body["input_reference"] = json!(value);
        let e = error_400(s.post_json("/v1/videos", &body));
        assert_eq!(e["param"], "input_reference", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("not a video"),
            "{e}"
        );
    }
    // end_image to a checkpoint without pos_embed_seq_len.
    let mut body = base();
    body["input_reference"] = json!(data_url(&png(0)));
    body["end_image"] = json!(data_url(&png(3)));
    let e = error_400(s.post_json("/v1/videos", &body));
    assert_eq!(e["param"], "end_image", "{e}");
    let (_, list) = s.request("GET", "/v1/videos", &[], b"");
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["data"], json!([]), "no job was created: {list}");
    assert!(stored(storage.path(), ".input").is_empty());
    drop(s);

    // An image to a video-to-video checkpoint: refused naming input_reference.
    let v2v = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), v2v.path());
    copy_dir(&fixture("tiny-wan2.1-v2v"), v2v.path());
    let storage = tempfile::tempdir().unwrap();
    let s = Server::tiny(v2v.path(), storage.path());
    let plain_png = base64::engine::general_purpose::STANDARD.encode(png(0));
    for value in [data_url(&png(0)), plain_png] {
        let mut body = base();
        body["input_reference"] = json!(value);
        let e = error_400(s.post_json("/v1/videos", &body));
        assert_eq!(e["param"], "input_reference", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("not an image"),
            "{e}"
        );
    }
}
