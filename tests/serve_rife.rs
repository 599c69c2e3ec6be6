//! Frame interpolation end to end: `omni serve --rife-model` over real sockets (multipart and
//! JSON), a 2x job that reports and contains 2·N−1 frames at 2x fps (ffprobe), an explicit fps
//! kept, the 400s (no model → `enable_frame_interpolation`, a model path outside model_dirs, bad
//! exp / scale), the full-size layouts (4.25 as the server's model, 4.22 named by a request inside
//! `[postprocess] model_dirs`), and `omni generate --frame-interpolation-exp`.

mod common;

use std::path::Path;

use serde_json::{Value, json};

use common::http::{Server, error_400, write};
use common::{assert_one_line_error, fixture, generate_tiny, stderr, tiny_distilled};

fn start(storage: &Path, extra: &[&str]) -> Server {
    Server::serve(&tiny_distilled(), "tiny-helios", storage, extra)
}

fn post_json(s: &Server, path: &str, body: Value) -> (u16, Vec<u8>) {
    s.post_json(path, &body)
}

/// (frames counted by decoding, r_frame_rate) of an MP4.
fn ffprobe(path: &Path) -> (u64, String) {
    let p = common::http::ffprobe(path);
    (p.frames, p.rate)
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
    let r = s.post_form(
        "/v1/videos/sync",
        &[
            ("prompt", "a lighthouse"),
            ("size", "128x64"),
            ("num_frames", "33"),
            ("enable_frame_interpolation", "true"),
            ("frame_interpolation_exp", "1"),
        ],
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
    let video = s.wait_job(&id);
    assert_eq!(video["status"], "completed", "{video}");
    let r = s.request("GET", &format!("/v1/videos/{id}/content"), &[], b"");
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
fn non_lite_models_interpolate_as_the_servers_and_a_requests_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("serve.toml");
    let dirs = json!([fixture("rife/v4_22").to_str().unwrap()]);
    std::fs::write(&cfg, format!("[postprocess]\nmodel_dirs = {dirs}\n")).unwrap();
    let v4_25 = fixture("rife/v4_25/flownet.pkl");
    let v4_22 = fixture("rife/v4_22/flownet.pkl");
    let s = start(
        &tmp.path().join("st"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--rife-model",
            v4_25.to_str().unwrap(),
        ],
    );
    for (name, body) in [
        ("4.25", json!({})),
        (
            "4.22",
            json!({"frame_interpolation_model_path": v4_22.to_str().unwrap()}),
        ),
    ] {
        let mut body = body;
        for (k, v) in [
            ("prompt", json!("a lighthouse")),
            ("size", json!("128x64")),
            ("num_frames", json!(33)),
            ("enable_frame_interpolation", json!(true)),
        ] {
            body[k] = v;
        }
        let r = post_json(&s, "/v1/videos/sync", body);
        assert_eq!(r.0, 200, "{name}: {}", String::from_utf8_lossy(&r.1));
        let mp4 = write(tmp.path(), &format!("{name}.mp4"), &r.1);
        assert_eq!(ffprobe(&mp4), (65, "48/1".to_string()), "{name}");
    }
    // The lite model is not inside model_dirs: still a 400 naming the field.
    let lite = fixture("rife/flownet.pkl");
    let e = error_400(post_json(
        &s,
        "/v1/videos",
        json!({"prompt": "p", "enable_frame_interpolation": true,
               "frame_interpolation_model_path": lite.to_str().unwrap()}),
    ));
    assert_eq!(e["param"], "frame_interpolation_model_path", "{e}");
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
    let e = error_400(s.post_form(
        "/v1/videos",
        &[("prompt", "p"), ("enable_frame_interpolation", "true")],
    ));
    assert_eq!(e["param"], "enable_frame_interpolation", "{e}");
}

#[test]
fn generate_interpolates_with_rife_model_and_refuses_without() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.mp4");
    let run = generate_tiny;
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
