//! The Wan presets (`presets/wan2.1-t2v-1.3b.toml`, `wan2.1-t2v-14b.toml`, `wan2.2-t2v-a14b.toml`):
//! well-formed, the upstream values they cite, and each one end to end on its tiny checkpoint
//! (ffprobe checks the MP4), with the size, frames and steps overridden by flags to stay tiny.

mod common;

use std::process::Command;

use common::{PROMPT, assert_one_line_error, copy_dir, fixture, omni, stderr};
use omni::pipeline::request::Preset;

fn tiny_a14b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.2-a14b"), dir.path());
    dir
}

#[test]
fn wan_presets_hold_the_upstream_defaults() {
    let file = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("presets")
            .join(format!("{name}.toml"));
        Preset::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    for (name, hf, w, h, steps, g, g2, shift) in [
        (
            "wan2.1-t2v-1.3b",
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            832,
            480,
            50,
            5.0,
            None,
            5.0,
        ),
        (
            "wan2.1-t2v-14b",
            "Wan-AI/Wan2.1-T2V-14B-Diffusers",
            1280,
            720,
            50,
            5.0,
            None,
            5.0,
        ),
        (
            "wan2.2-t2v-a14b",
            "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            1280,
            720,
            40,
            4.0,
            Some(3.0),
            12.0,
        ),
    ] {
        let p = Preset::builtin(name).unwrap();
        assert_eq!(
            p.patch,
            file(name).patch,
            "{name}: the embedded copy is the file"
        );
        assert_eq!(p.model.hf_id.as_deref(), Some(hf));
        assert_eq!(p.model.pipeline.as_deref(), Some("WanPipeline"));
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

#[test]
fn each_wan_preset_runs_end_to_end_on_its_tiny_checkpoint() {
    let a14b = tiny_a14b();
    let out_dir = tempfile::tempdir().unwrap();
    for (preset, model) in [
        ("wan2.1-t2v-1.3b", fixture("tiny-wan2.1-t2v")),
        ("wan2.1-t2v-14b", fixture("tiny-wan2.1-t2v")),
        ("wan2.2-t2v-a14b", a14b.path().to_path_buf()),
    ] {
        let mp4 = out_dir.path().join(format!("{preset}.mp4"));
        let out = omni()
            .args(["generate", "--preset", preset, "--model"])
            .arg(&model)
            .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
            .args([
                "--num-frames",
                "5",
                "--num-inference-steps",
                "2",
                "--quiet",
                "-o",
            ])
            .arg(&mp4)
            .output()
            .unwrap();
        assert!(out.status.success(), "{preset}: {}", stderr(&out));
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
            .args([
                "-show_entries",
                "stream=nb_read_frames,width,height,r_frame_rate",
            ])
            .args(["-of", "csv=p=0"])
            .arg(&mp4)
            .output()
            .expect("ffprobe must be installed");
        assert!(probe.status.success());
        assert_eq!(
            String::from_utf8_lossy(&probe.stdout).trim(),
            "48,32,16/1,5",
            "{preset}"
        );
    }
}

#[test]
fn the_two_expert_preset_on_a_one_expert_checkpoint_names_guidance_scale_2() {
    let out = omni()
        .args(["generate", "--preset", "wan2.2-t2v-a14b", "--model"])
        .arg(fixture("tiny-wan2.1-t2v"))
        .args(["--prompt", PROMPT, "-o", "x.mp4"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("guidance_scale_2"), "{line}");
}
