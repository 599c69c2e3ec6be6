//! End-to-end: the built `omni` binary on the shipped tiny Distilled checkpoint, checked with
//! ffprobe, and every bad-input path of `omni generate` (exit code ≠ 0, one readable line, no
//! file left at `-o`).

mod common;

use common::{PROMPT, assert_one_line_error, copy_dir, omni, stderr};

use std::path::Path;
use std::process::Command;

use common::tiny_distilled;

fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,avg_frame_rate,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    assert!(out.status.success(), "ffprobe failed: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "ffprobe warnings: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_writes_an_mp4_that_ffprobe_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("lakeside.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
        .args([
            "--num-frames",
            "33",
            "--fps",
            "12",
            "--seed",
            "3",
            "--quiet",
            "-o",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    let probe = ffprobe(&mp4);
    let s = &probe["streams"][0];
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(s["width"], 128);
    assert_eq!(s["height"], 64);
    assert_eq!(s["r_frame_rate"], "12/1");
    assert_eq!(s["avg_frame_rate"], "12/1");
    assert_eq!(s["nb_read_frames"], "33");
    // Nothing else left in the folder (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("lakeside.mp4")]);
}

#[test]
fn print_request_shows_checkpoint_defaults() {
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--print-request", "-o", "unused.mp4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let req: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(req["width"], 640);
    assert_eq!(req["height"], 384);
    assert_eq!(req["fps"], 24);
    assert_eq!(
        req["pyramid_num_inference_steps_list"],
        serde_json::json!([2, 2, 2])
    );
    assert_eq!(req["is_amplify_first_chunk"], true);
    assert!(!Path::new("unused.mp4").exists());
}

#[test]
fn a_missing_model_folder_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("x.mp4");
    let out = omni()
        .args([
            "generate",
            "--model",
            "/nonexistent/helios",
            "--prompt",
            PROMPT,
            "-o",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("/nonexistent/helios"), "{line}");
    assert!(!mp4.exists());
}

#[test]
fn an_incomplete_model_folder_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_distilled(), &model);
    std::fs::remove_dir_all(model.join("vae")).unwrap();
    let mp4 = dir.path().join("x.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt",
            PROMPT,
            "--width",
            "128",
            "--height",
            "64",
            "--num-frames",
            "1",
            "-o",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("vae"), "{line}");
    assert!(!mp4.exists());
}

#[test]
fn a_size_that_is_not_a_multiple_of_64_says_which_multiple() {
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args([
            "--prompt",
            PROMPT,
            "--width",
            "100",
            "-o",
            "/tmp/omni-never.mp4",
        ])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("width") && line.contains("multiple of 64"),
        "{line}"
    );
    assert!(!Path::new("/tmp/omni-never.mp4").exists());
}

#[test]
fn an_unwritable_output_fails_before_loading() {
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "-o", "/nonexistent-dir/out.mp4"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("/nonexistent-dir/out.mp4"), "{line}");
}

#[test]
fn a_corrupt_safetensors_file_is_named_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_distilled(), &model);
    let weights = model.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let mp4 = dir.path().join("x.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt",
            PROMPT,
            "--width",
            "128",
            "--height",
            "64",
            "--num-frames",
            "1",
            "-o",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("diffusion_pytorch_model.safetensors"),
        "{line}"
    );
    assert!(!mp4.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the model folder remains");
}

#[test]
fn unknown_flags_are_rejected() {
    let out = omni()
        .args([
            "generate",
            "--model",
            "m",
            "--prompt",
            "p",
            "-o",
            "x.mp4",
            "--frobnicate",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--frobnicate"), "{}", stderr(&out));
}

#[test]
fn a_noise_file_without_the_needed_draws_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("x.mp4");
    // The pipeline reference holds draws for 64x128; at 64x64 the shapes differ.
    let out = omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args([
            "--prompt",
            PROMPT,
            "--width",
            "64",
            "--height",
            "64",
            "--num-frames",
            "1",
        ])
        .arg("--noise-file")
        .arg(common::fixture("reference/pipeline_distilled.safetensors"))
        .arg("-o")
        .arg(&mp4)
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("chunk0.latents"), "{line}");
    assert!(!mp4.exists());
}

/// `--vae-dtype bf16` decodes in bf16 (a GPU speed knob): a valid video, close to the f32 decode
/// of the same seed (measured 39.9 dB on the tiny checkpoint; bar 30 dB).
#[test]
fn a_bf16_vae_decodes_close_to_the_f32_vae() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, vae: &str| {
        let mp4 = dir.path().join(name);
        let out = omni()
            .args(["generate", "--model"])
            .arg(tiny_distilled())
            .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
            .args(["--num-frames", "33", "--seed", "3", "--quiet"])
            .args(["--vae-dtype", vae, "-o"])
            .arg(&mp4)
            .output()
            .unwrap();
        assert!(out.status.success(), "omni failed: {}", stderr(&out));
        assert_eq!(ffprobe(&mp4)["streams"][0]["nb_read_frames"], "33");
        mp4
    };
    let (f32_mp4, bf16_mp4) = (run("f32.mp4", "f32"), run("bf16.mp4", "bf16"));
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-i"])
        .arg(&bf16_mp4)
        .arg("-i")
        .arg(&f32_mp4)
        .args(["-lavfi", "psnr", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = stderr(&out);
    let db: f64 = log
        .split("average:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no PSNR in ffmpeg output: {log}"));
    eprintln!("bf16 VAE vs f32 VAE: {db:.2} dB");
    assert!(
        db >= 30.0,
        "bf16 VAE frames at {db:.2} dB from the f32 ones"
    );
}
