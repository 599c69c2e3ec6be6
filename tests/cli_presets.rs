//! `omni generate --preset … --extra-params …`: precedence (flag > extra-params > preset >
//! checkpoint), variant detection on the tiny Base / Mid / Distilled checkpoints, one-line errors
//! for a missing preset or bad `--extra-params`, and short end-to-end runs per preset checked
//! with ffprobe.

mod common;

use common::{PROMPT, assert_one_line_error, omni, stderr};

use std::path::Path;
use std::process::Command;

use common::{tiny_distilled, tiny_variant};

fn print_request(model: &Path, extra: &[&str]) -> serde_json::Value {
    let out = omni()
        .args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", PROMPT, "--print-request", "-o", "unused.mp4"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_checkpoint_picks_the_variant_defaults() {
    let base = tiny_variant("base");
    let r = print_request(base.path(), &[]);
    assert_eq!(r["num_inference_steps"], 50);
    assert_eq!(r["guidance_scale"], 5.0);
    assert_eq!(r["is_enable_stage2"], false);

    let mid = tiny_variant("mid");
    let r = print_request(mid.path(), &[]);
    assert_eq!(
        r["pyramid_num_inference_steps_list"],
        serde_json::json!([20, 20, 20])
    );
    assert_eq!(r["use_cfg_zero_star"], true);
    assert_eq!(r["zero_steps"], 1);

    let r = print_request(&tiny_distilled(), &[]);
    assert_eq!(r["guidance_scale"], 1.0);
    assert_eq!(r["use_cfg_zero_star"], false);
}

#[test]
fn flag_beats_extra_params_beats_preset() {
    let r = print_request(
        &tiny_distilled(),
        &[
            "--preset",
            "helios-mid",
            "--extra-params",
            r#"{"guidance_scale": 4.0, "zero_steps": 0, "width": 256}"#,
            "--width",
            "128",
        ],
    );
    assert_eq!(r["width"], 128, "flag");
    assert_eq!(r["guidance_scale"], 4.0, "extra-params over preset");
    assert_eq!(r["zero_steps"], 0);
    assert_eq!(
        r["pyramid_num_inference_steps_list"],
        serde_json::json!([20, 20, 20]),
        "preset over the checkpoint"
    );
    assert_eq!(r["use_cfg_zero_star"], true);
}

#[test]
fn a_preset_file_path_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.toml");
    std::fs::write(&file, "fps = 12\nzero_steps = 3\n").unwrap();
    let r = print_request(&tiny_distilled(), &["--preset", file.to_str().unwrap()]);
    assert_eq!(
        (r["fps"].as_u64(), r["zero_steps"].as_u64()),
        (Some(12), Some(3))
    );
}

#[test]
fn a_missing_preset_fails_in_one_line() {
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args([
            "--prompt",
            PROMPT,
            "--preset",
            "helios-large",
            "-o",
            "x.mp4",
        ])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("helios-large") && line.contains("helios-mid"),
        "{line}"
    );
    assert!(!Path::new("x.mp4").exists());
}

#[test]
fn a_preset_for_another_pipeline_class_is_rejected() {
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args([
            "--prompt",
            PROMPT,
            "--preset",
            "helios-base",
            "--print-request",
        ])
        .args(["-o", "x.mp4"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("HeliosPipeline"), "{line}");
}

#[test]
fn bad_extra_params_fail_in_one_line() {
    for (json, want) in [
        ("[1]", "must be a JSON object"),
        (r#"{"zero_stepz": 1}"#, "valid keys"),
        (r#"{"zero_steps": "one"}"#, "valid keys"),
    ] {
        let out = omni()
            .args(["generate", "--model"])
            .arg(tiny_distilled())
            .args(["--prompt", PROMPT, "--extra-params", json, "-o", "x.mp4"])
            .output()
            .unwrap();
        let line = assert_one_line_error(&out);
        assert!(line.contains(want), "{json}: {line}");
    }
}

fn frames_of(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed");
    assert!(out.status.success(), "ffprobe: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn each_preset_runs_end_to_end_on_its_tiny_checkpoint() {
    let base = tiny_variant("base");
    let mid = tiny_variant("mid");
    let distilled = tiny_distilled();
    let dir = tempfile::tempdir().unwrap();
    for (preset, model, steps) in [
        ("helios-base", base.path(), ["--num-inference-steps", "1"]),
        ("helios-mid", mid.path(), ["--pyramid-steps", "1,1,1"]),
        (
            "helios-distilled",
            distilled.as_path(),
            ["--pyramid-steps", "1,1,1"],
        ),
    ] {
        let mp4 = dir.path().join(format!("{preset}.mp4"));
        let out = omni()
            .args(["generate", "--preset", preset, "--model"])
            .arg(model)
            .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
            .args(["--num-frames", "33", "--quiet"])
            .args(steps)
            .arg("-o")
            .arg(&mp4)
            .output()
            .unwrap();
        assert!(out.status.success(), "{preset}: {}", stderr(&out));
        assert_eq!(frames_of(&mp4), "128,64,33", "{preset}");
    }
}
