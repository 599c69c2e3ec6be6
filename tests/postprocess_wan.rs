//! Frame interpolation and upscaling on a Wan checkpoint: `omni generate` with the tiny Wan2.1
//! T2V folder, `--frame-interpolation-exp 1 --upscale 2` (RIFE, then Real-ESRGAN RRDBNet x2), and
//! ffprobe reading the MP4's frames, fps and size.

mod common;

use common::http::ffprobe;
use common::{PROMPT, fixture, omni, stderr};

#[test]
fn wan_output_is_interpolated_then_upscaled() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("wan.mp4");
    let out = omni()
        .args(["generate", "--model"])
        .arg(fixture("tiny-wan2.1-t2v"))
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args(["--num-frames", "9", "--num-inference-steps", "2"])
        .args(["--frame-interpolation-exp", "1", "--rife-model"])
        .arg(fixture("rife/flownet.pkl"))
        .args(["--upscale", "2", "--upscale-model"])
        .arg(fixture("esrgan/rrdb_x2.pth"))
        .args(["--quiet", "-o"])
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    let p = ffprobe(&mp4);
    // 9 frames → (9 − 1)·2 + 1 = 17 at 2 × 16 fps, 48x32 → 96x64.
    assert_eq!(
        (p.frames, p.rate.as_str(), p.width, p.height),
        (17, "32/1", 96, 64)
    );
}
