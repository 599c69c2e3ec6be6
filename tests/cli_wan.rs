//! `omni generate` with Wan checkpoints: the tiny Wan2.1 T2V folder end to end (ffprobe checks
//! the MP4), the two-expert flags, and a Wan-only flag sent to a model that cannot honour it
//! (one readable line, exit code ≠ 0, naming the field).

mod common;

use std::path::Path;
use std::process::Command;

use common::{PROMPT, assert_one_line_error, copy_dir, fixture, omni, stderr, tiny_distilled};

fn ffprobe(path: &Path) -> serde_json::Value {
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
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    assert!(out.status.success(), "ffprobe failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tiny_a14b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.2-a14b"), dir.path());
    dir
}

#[test]
fn generate_with_the_tiny_wan_checkpoint_writes_an_mp4_that_ffprobe_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("wan.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(fixture("tiny-wan2.1-t2v"))
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args([
            "--num-frames",
            "8",
            "--num-inference-steps",
            "3",
            "--flow-shift",
            "5",
        ])
        .args(["--quiet", "-o"])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    let probe = ffprobe(&mp4);
    let s = &probe["streams"][0];
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(s["width"], 48);
    assert_eq!(s["height"], 32);
    assert_eq!(s["r_frame_rate"], "16/1", "Wan's 16 fps default");
    assert_eq!(
        s["nb_read_frames"], "9",
        "8 frames round to 4k+1 = 9 as diffusers does"
    );
}

#[test]
fn print_request_shows_the_two_expert_defaults_and_flags() {
    let dir = tiny_a14b();
    let out = omni()
        .args(["generate", "--model"])
        .arg(dir.path())
        .args([
            "--prompt",
            PROMPT,
            "--guidance-scale",
            "4",
            "--print-request",
            "-o",
            "x.mp4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["guidance_scale"], 4.0);
    assert_eq!(
        r["guidance_scale_2"], 4.0,
        "follows guidance_scale when not set"
    );
    assert_eq!(r["boundary_ratio"], 0.875);
    assert_eq!(r["flow_shift"], 3.0);
    let out = omni()
        .args(["generate", "--model"])
        .arg(dir.path())
        .args([
            "--prompt",
            PROMPT,
            "--guidance-scale-2",
            "2.5",
            "--boundary-ratio",
            "0.5",
        ])
        .args(["--print-request", "-o", "x.mp4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["guidance_scale_2"], 2.5);
    assert_eq!(r["boundary_ratio"], 0.5);
}

#[test]
fn a_wan_flag_sent_to_a_model_that_cannot_honour_it_fails_naming_it() {
    for (model, flag, field) in [
        (tiny_distilled(), "--guidance-scale-2", "guidance_scale_2"),
        (tiny_distilled(), "--flow-shift", "flow_shift"),
        (
            fixture("tiny-wan2.1-t2v"),
            "--guidance-scale-2",
            "guidance_scale_2",
        ),
        (
            fixture("tiny-wan2.1-t2v"),
            "--boundary-ratio",
            "boundary_ratio",
        ),
    ] {
        let out = omni()
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", PROMPT, flag, "0.5", "-o", "x.mp4"])
            .output()
            .unwrap();
        let line = assert_one_line_error(&out);
        assert!(
            line.contains(field),
            "{flag} on {}: {line}",
            model.display()
        );
    }
    // A Helios-only knob sent to Wan.
    let out = omni()
        .args(["generate", "--model"])
        .arg(fixture("tiny-wan2.1-t2v"))
        .args([
            "--prompt",
            PROMPT,
            "--extra-params",
            r#"{"zero_steps": 0}"#,
            "-o",
            "x.mp4",
        ])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("zero_steps"), "{line}");
}
