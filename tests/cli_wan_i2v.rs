//! `omni generate` with Wan image-to-video checkpoints end to end (ffprobe checks the MP4): the
//! tiny Wan2.1 I2V folder with `--image`, the FLF2V overlay with `--image --last-image`, the
//! Wan2.2 I2V A14B overlay, each through its preset (`wan2.1-i2v-14b-480p`,
//! `wan2.1-flf2v-14b-720p`, `wan2.2-i2v-a14b`) with the size, frames and steps overridden by
//! flags to stay tiny; the tiny V2V checkpoint with `--video --strength`; `--last-image` on a
//! checkpoint that cannot take one, no image at all, and `--strength` on an I2V checkpoint are
//! one readable line with exit code ≠ 0 naming the input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{PROMPT, assert_one_line_error, copy_dir, fixture, omni, stderr, tiny_wan_clip};

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

/// `tiny-wan2.1-i2v` plus `overlay` (if any), in a temporary folder.
fn checkpoint(overlay: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-i2v"), dir.path());
    if let Some(o) = overlay {
        copy_dir(&fixture(o), dir.path());
    }
    dir
}

/// A smooth 48×32 PNG (`seed` shifts the gradient).
fn png(dir: &Path, name: &str, seed: u32) -> std::path::PathBuf {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([
            (x * 5 + seed * 40) as u8,
            (y * 7 + seed * 20) as u8,
            ((x + y) * 3) as u8,
        ])
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
}

fn generate(
    model: &Path,
    preset: &str,
    extra: &[&std::ffi::OsStr],
    out: &Path,
) -> std::process::Output {
    omni()
        .args(["generate", "--preset", preset, "--model"])
        .arg(model)
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args([
            "--num-frames",
            "9",
            "--num-inference-steps",
            "2",
            "--quiet",
            "-o",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn assert_tiny_mp4(path: &Path) {
    let probe = ffprobe(path);
    let s = &probe["streams"][0];
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(48), Some(32))
    );
    assert_eq!(s["r_frame_rate"], "16/1");
    assert_eq!(s["nb_read_frames"], "9");
}

#[test]
fn i2v_flf2v_and_two_expert_i2v_write_mp4s_that_ffprobe_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let first = png(tmp.path(), "first.png", 0);
    let last = png(tmp.path(), "last.png", 3);
    let image = |p: &Path| {
        vec![
            std::ffi::OsString::from("--image"),
            p.as_os_str().to_owned(),
        ]
    };

    let model = checkpoint(None);
    let mp4 = tmp.path().join("i2v.mp4");
    let args = image(&first);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = generate(model.path(), "wan2.1-i2v-14b-480p", &args, &mp4);
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    assert_tiny_mp4(&mp4);

    let model = checkpoint(Some("tiny-wan2.1-flf2v"));
    let mp4 = tmp.path().join("flf2v.mp4");
    let mut args = image(&first);
    args.extend([
        std::ffi::OsString::from("--last-image"),
        last.as_os_str().to_owned(),
    ]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = generate(model.path(), "wan2.1-flf2v-14b-720p", &args, &mp4);
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    assert_tiny_mp4(&mp4);

    let model = checkpoint(Some("tiny-wan2.2-i2v-a14b"));
    let mp4 = tmp.path().join("a14b.mp4");
    let args = image(&first);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = generate(model.path(), "wan2.2-i2v-a14b", &args, &mp4);
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    assert_tiny_mp4(&mp4);
}

#[test]
fn a_last_image_the_checkpoint_cannot_take_or_no_image_is_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let first = png(tmp.path(), "first.png", 0);
    let model = checkpoint(None);
    let mp4 = tmp.path().join("x.mp4");
    let out = generate(
        model.path(),
        "wan2.1-i2v-14b-480p",
        &[
            "--image".as_ref(),
            first.as_os_str(),
            "--last-image".as_ref(),
            first.as_os_str(),
        ],
        &mp4,
    );
    let line = assert_one_line_error(&out);
    assert!(line.contains("last_image"), "{line}");
    assert!(!mp4.exists());
    let out = generate(model.path(), "wan2.1-i2v-14b-480p", &[], &mp4);
    let line = assert_one_line_error(&out);
    assert!(line.contains("image"), "{line}");
    assert!(!mp4.exists());
    // --last-image without --image is a usage error.
    let out = omni()
        .args(["generate", "--model"])
        .arg(model.path())
        .args(["--prompt", PROMPT, "--last-image"])
        .arg(&first)
        .args(["-o"])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn v2v_with_video_and_strength_writes_an_mp4_and_strength_elsewhere_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.mp4");
    tiny_wan_clip(&input);
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), model.path());
    copy_dir(&fixture("tiny-wan2.1-v2v"), model.path());
    let mp4 = tmp.path().join("v2v.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(model.path())
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args([
            "--num-frames",
            "9",
            "--num-inference-steps",
            "4",
            "--strength",
            "0.5",
        ])
        .args(["--quiet", "--video"])
        .arg(&input)
        .arg("-o")
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    assert_tiny_mp4(&mp4);
    // strength on the I2V checkpoint: one line naming it.
    let i2v = checkpoint(None);
    let first = png(tmp.path(), "first.png", 0);
    let out = generate(
        i2v.path(),
        "wan2.1-i2v-14b-480p",
        &[
            "--image".as_ref(),
            first.as_os_str(),
            "--strength".as_ref(),
            "0.5".as_ref(),
        ],
        &tmp.path().join("x.mp4"),
    );
    let line = assert_one_line_error(&out);
    assert!(line.contains("strength"), "{line}");
}

#[test]
fn i2v_presets_hold_the_upstream_defaults() {
    use omni::pipeline::request::Preset;
    let file = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("presets")
            .join(format!("{name}.toml"));
        Preset::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    // (name, hf id, width, height, steps, guidance, guidance_2, flow shift): wan.md §4.
    for (name, hf, w, h, steps, g, g2, shift) in [
        (
            "wan2.1-i2v-14b-480p",
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            832,
            480,
            40,
            5.0,
            None,
            3.0,
        ),
        (
            "wan2.1-flf2v-14b-720p",
            "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
            1280,
            720,
            50,
            5.0,
            None,
            16.0,
        ),
        (
            "wan2.2-i2v-a14b",
            "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
            1280,
            720,
            40,
            3.5,
            Some(3.5),
            5.0,
        ),
    ] {
        let p = Preset::builtin(name).unwrap();
        assert_eq!(
            p.patch,
            file(name).patch,
            "{name}: the embedded copy is the file"
        );
        assert_eq!(p.model.hf_id.as_deref(), Some(hf));
        assert_eq!(p.model.pipeline.as_deref(), Some("WanImageToVideoPipeline"));
        let r = &p.patch;
        assert_eq!((r.width, r.height), (Some(w), Some(h)), "{name}");
        assert_eq!((r.num_frames, r.fps), (Some(81), Some(16)), "{name}");
        assert_eq!(r.num_inference_steps, Some(steps), "{name}");
        assert_eq!(r.guidance_scale, Some(g), "{name}");
        assert_eq!(r.guidance_scale_2, g2, "{name}");
        assert_eq!(r.flow_shift, Some(shift), "{name}");
        assert!(
            r.negative_prompt
                .as_deref()
                .unwrap()
                .starts_with("Bright tones")
        );
    }
}
