//! Upscaling end to end: `omni serve --upscale-model` over real sockets (multipart and JSON), the
//! `Video`'s `size` and the MP4's size (ffprobe) at x4 (the model's own) and x2 (from the x4
//! model), upscaling after interpolation, the 400s (no model → `enable_upscale`, a factor the
//! model cannot make, a model outside model_dirs, a setting without its `enable_…` switch), and
//! `omni generate --upscale [FACTOR] --upscale-model` with the compact and the RRDBNet models.

mod common;

use std::path::Path;

use serde_json::{Value, json};

use common::http::{Probe, Server, error_400, ffprobe, write};
use common::{assert_one_line_error, fixture, generate_tiny, stderr, tiny_distilled};

fn start(storage: &Path, extra: &[&str]) -> Server {
    Server::serve(&tiny_distilled(), "tiny-helios", storage, extra)
}

fn probe(frames: u64, rate: &str, width: u64, height: u64) -> Probe {
    Probe {
        frames,
        rate: rate.into(),
        width,
        height,
    }
}

#[test]
fn upscaled_jobs_report_and_contain_the_output_size() {
    let tmp = tempfile::tempdir().unwrap();
    let x4 = fixture("esrgan/srvgg_x4.pth");
    let rife = fixture("rife/flownet.pkl");
    let s = start(
        &tmp.path().join("st"),
        &[
            "--upscale-model",
            x4.to_str().unwrap(),
            "--rife-model",
            rife.to_str().unwrap(),
        ],
    );

    // Multipart /sync, x2 from the x4 model: 128x64 → 256x128.
    let r = s.post_form(
        "/v1/videos/sync",
        &[
            ("prompt", "a lighthouse"),
            ("size", "128x64"),
            ("num_frames", "33"),
            ("enable_upscale", "true"),
            ("upscale_factor", "2"),
        ],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let mp4 = write(tmp.path(), "x2.mp4", &r.1);
    assert_eq!(ffprobe(&mp4), probe(33, "24/1", 256, 128));

    // JSON job, the model's own x4, after 2x interpolation: 65 frames of 512x256 at 48 fps.
    let r = s.post_json(
        "/v1/videos",
        &json!({"prompt": "a lighthouse", "size": "128x64", "num_frames": 33,
                "enable_upscale": true, "enable_frame_interpolation": true}),
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let v: Value = serde_json::from_slice(&r.1).unwrap();
    assert_eq!(v["size"], "512x256", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let video = s.wait_job(&id);
    assert_eq!(video["status"], "completed", "{video}");
    assert_eq!(
        (&video["size"], &video["num_frames"], &video["fps"]),
        (&json!("512x256"), &json!(65), &json!(48)),
        "{video}"
    );
    let r = s.request("GET", &format!("/v1/videos/{id}/content"), &[], b"");
    assert_eq!(r.0, 200);
    let mp4 = write(tmp.path(), "x4.mp4", &r.1);
    assert_eq!(ffprobe(&mp4), probe(65, "48/1", 512, 256));

    // 400s, each naming the field.
    for (body, param) in [
        (
            json!({"prompt": "p", "enable_upscale": true, "upscale_factor": 3}),
            "upscale_factor",
        ),
        (
            json!({"prompt": "p", "enable_upscale": true, "upscale_factor": 8}),
            "upscale_factor",
        ),
        (
            json!({"prompt": "p", "enable_upscale": true, "upscale_model_path": "/etc/passwd"}),
            "upscale_model_path",
        ),
        (
            json!({"prompt": "p", "enable_upscale": "maybe"}),
            "enable_upscale",
        ),
        (
            json!({"prompt": "p", "upscale_factor": 2}),
            "upscale_factor",
        ),
        (
            json!({"prompt": "p", "upscale_model_path": x4.to_str().unwrap()}),
            "upscale_model_path",
        ),
        (
            json!({"prompt": "p", "frame_interpolation_exp": 2}),
            "frame_interpolation_exp",
        ),
        (
            json!({"prompt": "p", "frame_interpolation_scale": 0.5}),
            "frame_interpolation_scale",
        ),
        (
            json!({"prompt": "p", "frame_interpolation_model_path": rife.to_str().unwrap()}),
            "frame_interpolation_model_path",
        ),
    ] {
        let e = error_400(s.post_json("/v1/videos", &body));
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    // The same rule over multipart.
    let e = error_400(s.post_form("/v1/videos", &[("prompt", "p"), ("upscale_factor", "2")]));
    assert_eq!(e["param"], "upscale_factor", "{e}");
}

#[test]
fn upscaling_without_a_model_is_a_400_naming_enable_upscale() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("st"), &[]);
    let e = error_400(s.post_json(
        "/v1/videos",
        &json!({"prompt": "p", "enable_upscale": true}),
    ));
    assert_eq!(e["param"], "enable_upscale", "{e}");
    let e = error_400(s.post_form("/v1/videos", &[("prompt", "p"), ("enable_upscale", "true")]));
    assert_eq!(e["param"], "enable_upscale", "{e}");
}

#[test]
fn generate_upscales_with_either_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let run = generate_tiny;
    let compact = fixture("esrgan/srvgg_x4.pth");
    let rrdb_x2 = fixture("esrgan/rrdb_x2.pth");
    // `--upscale` without a factor: the model's own x4.
    let out = tmp.path().join("c4.mp4");
    let o = run(
        &["--upscale", "--upscale-model", compact.to_str().unwrap()],
        &out,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ffprobe(&out), probe(33, "24/1", 512, 256));
    // RRDBNet x2 (pixel-unshuffle input).
    let out = tmp.path().join("r2.mp4");
    let o = run(
        &[
            "--upscale",
            "2",
            "--upscale-model",
            rrdb_x2.to_str().unwrap(),
        ],
        &out,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ffprobe(&out), probe(33, "24/1", 256, 128));
    // One-line errors naming the field.
    for (extra, field) in [
        (vec!["--upscale"], "enable_upscale"),
        (
            vec![
                "--upscale",
                "4",
                "--upscale-model",
                rrdb_x2.to_str().unwrap(),
            ],
            "upscale_factor",
        ),
        (
            vec!["--upscale-model", compact.to_str().unwrap()],
            "upscale_model_path",
        ),
    ] {
        let o = run(&extra, &tmp.path().join("bad.mp4"));
        let line = assert_one_line_error(&o);
        assert!(line.contains(field), "{extra:?}: {line}");
    }
}
