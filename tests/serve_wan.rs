//! `omni serve` with Wan checkpoints over a real socket: the tiny two-expert checkpoint answers
//! a create request with `guidance_scale_2` / `boundary_ratio` / `flow_shift` with an MP4 that
//! ffprobe accepts; out-of-range values, and any of these fields sent to a model that cannot
//! honour them (Helios, a one-expert Wan), are a 400 in the OpenAI envelope naming the field.

mod common;

use std::path::Path;

use common::http::{Server, assert_400_naming, ffprobe};
use common::{copy_dir, fixture, tiny_distilled};
use serde_json::{Value, json};

fn start(model: &Path, storage: &Path) -> Server {
    Server::serve(model, "tiny", storage, &[])
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
    let s = start(model.path(), storage.path());
    let (status, mp4) = s.sync(&json!({
        "prompt": "a lighthouse", "size": "48x32", "num_frames": 9, "num_inference_steps": 2,
        "guidance_scale": 4.0, "guidance_scale_2": 2.0, "boundary_ratio": 0.9, "flow_shift": 5.0
    }));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    let path = storage.path().join("out.mp4");
    std::fs::write(&path, &mp4).unwrap();
    let probe = ffprobe(&path);
    assert_eq!((probe.frames, probe.width), (9, 48));
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
    let helios = start(&tiny_distilled(), storage.path());
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
    let wan = start(&fixture("tiny-wan2.1-t2v"), storage.path());
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
