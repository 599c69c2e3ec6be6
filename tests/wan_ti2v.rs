//! Wan2.2 TI2V-5B text-to-video (`WanPipeline` with `expand_timesteps`, the Wan2.2 VAE) on
//! `tests/fixtures/tiny-wan2.2-ti2v` (made by `tests/fixtures/make_wan_ti2v.py`):
//! - whole-pipeline parity: diffusers' initial latents (`reference/pipeline_wan_ti2v.safetensors`)
//!   must decode to diffusers' frames (≥ 40 dB PSNR); 64×96, 9 frames, 4 UniPC steps (flow shift
//!   5), CFG 5.0 with a negative prompt;
//! - the checkpoint's defaults (24 fps, sizes multiples of 32) and a 400-style error naming
//!   `height` for a size the VAE + patches cannot take;
//! - `omni generate --preset wan2.2-ti2v-5b` and `omni serve` end to end, the MP4s checked by
//!   ffprobe;
//! - TI2V image-to-video (an image given to the `expand_timesteps` checkpoint): diffusers'
//!   `WanImageToVideoPipeline` run on the same folder with an injected image and latents
//!   (`reference/pipeline_wan_ti2v_i2v.safetensors`), ≥ 40 dB PSNR through `WanPipeline` (the
//!   routing) and identical frames from `WanImageToVideoPipeline` loaded on the folder; `omni
//!   generate --image` and serve `input_reference` end to end (ffprobe), a last image or a video
//!   refused naming it;
//! - Wan2.2 A14B one-expert residency (`ExpertResidency::On`) gives the same frames as both
//!   experts resident, on the tiny two-expert checkpoint (`tiny-wan2.1-t2v` + `tiny-wan2.2-a14b`).
//!
//! Run: `cargo test --release --test wan_ti2v`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Collect, MIN_PSNR_DB, PROMPT, Record, TestBackend, fixture, omni, psnr, spawn_serve, stderr,
};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::RunContext;
use omni::pipeline::pipelines::pipeline_wan::{WanPipeline, wan_defaults};
use omni::pipeline::pipelines::pipeline_wan_i2v::{WanImageToVideoPipeline, wan_i2v_defaults};
use omni::pipeline::pipelines::prompt_encoder::TextEncoderResidency;
use omni::pipeline::precision::Precision;
use omni::pipeline::preset::Preset;
use omni::pipeline::progress::{CancelToken, NoProgress, Progress};
use omni::pipeline::request::{Conditioning, ConditioningPixels, RequestPatch, resolve};
use serde_json::{Value, json};

const NEGATIVE_PROMPT: &str = "blurry, low quality, static";

fn ti2v() -> std::path::PathBuf {
    fixture("tiny-wan2.2-ti2v")
}

#[test]
fn ti2v_run_matches_diffusers_frames() {
    let dir = ti2v();
    let device = Default::default();
    let defaults = wan_defaults(&dir).unwrap();
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some(NEGATIVE_PROMPT.into()),
        height: Some(64),
        width: Some(96),
        num_frames: Some(9),
        num_inference_steps: Some(4),
        guidance_scale: Some(5.0),
        ..Default::default()
    };
    let req = resolve(&[patch], &defaults).unwrap();
    let pipe = WanPipeline::<TestBackend>::load_with(
        &dir,
        &device,
        Precision::for_device::<TestBackend>(&device),
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    assert!(pipe.model_index.expand_timesteps);
    assert_eq!(pipe.vae_scale_factor_spatial(), 16);
    let reference = "pipeline_wan_ti2v.safetensors";
    let mut noise = FileNoise::open(&fixture(&format!("reference/{reference}"))).unwrap();
    let mut progress = Record::default();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    let t0 = Instant::now();
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, 9);
    let (shape, want) = common::Reference::open(reference).frames01("frames");
    assert_eq!(shape, vec![9, 64, 96, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("{reference}: decoded frames PSNR vs diffusers {db:.2} dB (omni call {secs:.3} s)");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
    let steps = progress
        .0
        .iter()
        .filter(|e| matches!(e, Progress::Step { .. }))
        .count();
    assert_eq!(steps, 4);
}

const I2V_REFERENCE: &str = "pipeline_wan_ti2v_i2v.safetensors";

#[test]
fn ti2v_image_to_video_matches_diffusers_frames() {
    let dir = ti2v();
    let device = Default::default();
    let defaults = wan_defaults(&dir).unwrap();
    assert!(defaults.image_to_video);
    // The I2V class on the TI2V folder has the same defaults (one checkpoint, both tasks).
    assert_eq!(wan_i2v_defaults(&dir).unwrap(), defaults);
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some(NEGATIVE_PROMPT.into()),
        height: Some(64),
        width: Some(96),
        num_frames: Some(9),
        num_inference_steps: Some(4),
        guidance_scale: Some(5.0),
        ..Default::default()
    };
    let mut req = resolve(&[patch], &defaults).unwrap();
    let r = common::Reference::open(I2V_REFERENCE);
    let (image, w, h) = common::input_frames(&r, "image");
    assert_eq!((w, h), (96, 64));
    req.conditioning = Conditioning::Image(ConditioningPixels::from_rgb8_frames(&image, w, h));
    let precision = Precision::for_device::<TestBackend>(&device);
    let run = |call: &dyn Fn(&mut RunContext<'_>, &mut Collect) -> usize| {
        let mut noise = FileNoise::open(&fixture(&format!("reference/{I2V_REFERENCE}"))).unwrap();
        let mut progress = Record::default();
        let mut sink = Collect::default();
        let mut ctx = RunContext {
            noise: &mut noise,
            progress: &mut progress,
            cancel: CancelToken::new(),
        };
        let t0 = Instant::now();
        assert_eq!(call(&mut ctx, &mut sink), 9);
        let secs = t0.elapsed().as_secs_f64();
        let steps = progress
            .0
            .iter()
            .filter(|e| matches!(e, Progress::Step { .. }))
            .count();
        assert_eq!(steps, 4);
        let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
        (got, secs)
    };
    // The routing: an image given to the TI2V checkpoint's WanPipeline.
    let pipe = WanPipeline::<TestBackend>::load_with(
        &dir,
        &device,
        precision,
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    let (got, secs) = run(&|ctx, sink| pipe.call(&req, ctx, sink).unwrap());
    let (shape, want) = r.frames01("frames");
    assert_eq!(shape, vec![9, 64, 96, 3]);
    let db = psnr(&got, &want);
    eprintln!(
        "{I2V_REFERENCE}: decoded frames PSNR vs diffusers {db:.2} dB (omni call {secs:.3} s)"
    );
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
    // The I2V class loaded on the folder (diffusers' `WanImageToVideoPipeline.from_pretrained`)
    // runs the same computation.
    let i2v = WanImageToVideoPipeline::<TestBackend>::load_with(
        &dir,
        &device,
        precision,
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    let (same, _) = run(&|ctx, sink| i2v.call(&req, ctx, sink).unwrap());
    assert_eq!(same, got);
    // The image decides the first frames: the text-to-video run of the same latents differs.
    req.conditioning = Conditioning::None;
    let (t2v, _) = run(&|ctx, sink| pipe.call(&req, ctx, sink).unwrap());
    assert!(psnr(&t2v, &want) < db - 3.0);
}

#[test]
fn ti2v_defaults_follow_the_checkpoint_and_sizes_are_multiples_of_32() {
    let d = wan_defaults(&ti2v()).unwrap();
    assert_eq!(d.pipeline_class, "WanPipeline");
    assert_eq!((d.fps, d.flow_shift, d.size_multiple), (24, 5.0, 32));
    assert!(d.unsupported.contains(&"guidance_scale_2"));
    // The Wan2.1 checkpoints keep the 16-pixel rule.
    assert_eq!(
        wan_defaults(&fixture("tiny-wan2.1-t2v"))
            .unwrap()
            .size_multiple,
        16
    );
    let p = |h: u32, w: u32| RequestPatch {
        prompt: Some(PROMPT.into()),
        height: Some(h),
        width: Some(w),
        ..Default::default()
    };
    let e = resolve(&[p(48, 64)], &d).unwrap_err();
    assert_eq!(e.param, "height", "{e}");
    assert!(e.message.contains("multiple of 32"), "{e}");
    let e = resolve(&[p(64, 80)], &d).unwrap_err();
    assert_eq!(e.param, "width", "{e}");
    assert!(resolve(&[p(704, 1280)], &d).is_ok());
}

#[test]
fn ti2v_preset_holds_the_model_card_defaults() {
    let p = Preset::builtin("wan2.2-ti2v-5b").unwrap();
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/wan2.2-ti2v-5b.toml"),
    )
    .unwrap();
    assert_eq!(Preset::parse(&file).unwrap().patch, p.patch);
    let r = &p.patch;
    assert_eq!(
        (r.width, r.height, r.num_frames, r.fps),
        (Some(1280), Some(704), Some(121), Some(24))
    );
    assert_eq!(
        (r.num_inference_steps, r.guidance_scale, r.flow_shift),
        (Some(50), Some(5.0), Some(5.0))
    );
    assert_eq!(
        p.model.hf_id.as_deref(),
        Some("Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    );
    assert_eq!(p.model.pipeline.as_deref(), Some("WanPipeline"));
}

fn ffprobe(path: &std::path::Path) -> String {
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height,r_frame_rate",
        ])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe must be installed");
    assert!(probe.status.success(), "{}", stderr(&probe));
    String::from_utf8_lossy(&probe.stdout).trim().to_string()
}

#[test]
fn omni_generate_runs_the_ti2v_preset_end_to_end() {
    let out_dir = tempfile::tempdir().unwrap();
    let mp4 = out_dir.path().join("ti2v.mp4");
    let out = omni()
        .args(["generate", "--preset", "wan2.2-ti2v-5b", "--model"])
        .arg(ti2v())
        .args(["--prompt", PROMPT, "--width", "64", "--height", "32"])
        .args(["--num-frames", "5", "--num-inference-steps", "2", "--quiet"])
        .arg("-o")
        .arg(&mp4)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The preset's 24 fps, 5 frames at 64x32.
    assert_eq!(ffprobe(&mp4), "64,32,24/1,5");
    // A size the Wan2.2 VAE and the 2x2 patches cannot take is one line naming the field.
    let out = omni()
        .args(["generate", "--model"])
        .arg(ti2v())
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .arg("-o")
        .arg(out_dir.path().join("x.mp4"))
        .output()
        .unwrap();
    let line = common::assert_one_line_error(&out);
    assert!(line.contains("width"), "{line}");
}

/// A smooth 48×32 PNG in `dir` (stretched to the output size by omni).
fn png(dir: &std::path::Path) -> std::path::PathBuf {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    });
    let path = dir.join("first.png");
    img.save(&path).unwrap();
    path
}

/// `omni generate --model tiny-wan2.2-ti2v --prompt … --width 64 --height 32 --num-frames 5
/// --num-inference-steps 2 --quiet` with `inputs` (`[flag, file]` pairs), writing `out`.
fn generate_64x32(
    inputs: &[(&str, &std::path::Path)],
    out: &std::path::Path,
) -> std::process::Output {
    let mut cmd = omni();
    cmd.args(["generate", "--model"])
        .arg(ti2v())
        .args(["--prompt", PROMPT, "--width", "64", "--height", "32"])
        .args(["--num-frames", "5", "--num-inference-steps", "2", "--quiet"]);
    for (flag, file) in inputs {
        cmd.arg(flag).arg(file);
    }
    cmd.arg("-o").arg(out).output().unwrap()
}

#[test]
fn omni_generate_runs_ti2v_image_to_video_and_refuses_what_it_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let first = png(tmp.path());
    let mp4 = tmp.path().join("i2v.mp4");
    let out = generate_64x32(&[("--image", &first)], &mp4);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ffprobe(&mp4), "64,32,24/1,5");
    // A last image (first-last-frame) or a video is not a TI2V input: one line naming it.
    for (inputs, param) in [
        (
            vec![("--image", &*first), ("--last-image", &*first)],
            "last_image",
        ),
        (vec![("--video", &*mp4)], "video"),
    ] {
        let out = generate_64x32(&inputs, &tmp.path().join("x.mp4"));
        let line = common::assert_one_line_error(&out);
        assert!(line.contains(param), "{line}");
    }
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// (status, body) of one `POST /v1/videos/sync` over a real socket.
    fn sync(&self, body: Value) -> (u16, Vec<u8>) {
        let body = body.to_string();
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let head = format!(
            "POST /v1/videos/sync HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = String::from_utf8_lossy(&raw[..split])
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        (status, raw[split + 4..].to_vec())
    }
}

/// A smooth 48×32 PNG as a data URL.
fn png_data_url() -> String {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(png(tmp.path())).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[test]
fn omni_serve_runs_the_ti2v_checkpoint_and_refuses_bad_sizes() {
    let storage = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_omni"))
            .arg("serve")
            .arg(ti2v())
            .args(["--port", "0", "--served-model-name", "tiny"])
            .arg("--storage")
            .arg(storage.path())
            .stderr(Stdio::inherit()),
    );
    let s = Server { child, addr };
    let (status, mp4) = s.sync(json!({
        "prompt": "a lighthouse", "size": "64x32", "num_frames": 9, "num_inference_steps": 2,
        "flow_shift": 4.0
    }));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    let path = storage.path().join("out.mp4");
    std::fs::write(&path, &mp4).unwrap();
    assert_eq!(ffprobe(&path), "64,32,24/1,9");
    // An image reference runs TI2V image-to-video.
    let (status, mp4) = s.sync(json!({
        "prompt": "a lighthouse", "size": "64x32", "num_frames": 5, "num_inference_steps": 2,
        "input_reference": png_data_url()
    }));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&mp4));
    std::fs::write(&path, &mp4).unwrap();
    assert_eq!(ffprobe(&path), "64,32,24/1,5");
    for (body, param) in [
        (json!({"prompt": "p", "size": "48x32"}), "width"),
        (
            json!({"prompt": "p", "size": "64x32", "guidance_scale_2": 2.0}),
            "guidance_scale_2",
        ),
    ] {
        let (status, bytes) = s.sync(body.clone());
        assert_eq!(status, 400, "{body}: {}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
}

/// `tiny-wan2.1-t2v` plus the two-expert overlay, in a temporary folder.
fn tiny_a14b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    common::copy_dir(&fixture("tiny-wan2.2-a14b"), dir.path());
    dir
}

#[test]
fn one_expert_residency_gives_identical_frames() {
    use omni::pipeline::pipelines::pipeline_wan::{ExpertResidency, offload_experts_auto};
    // The auto rule: offload when free memory cannot hold the second expert + 20 %.
    let gib = 1u64 << 30;
    assert!(
        !offload_experts_auto(None, 0, 27 * gib),
        "CPU: both resident"
    );
    // A14B in bf16 (26.6 GiB per expert) with the first expert loaded: a 48 GiB card offloads,
    // an 80 GiB one keeps both (52 GiB free ≥ 32.4 GiB).
    assert!(offload_experts_auto(Some(48 * gib), 28 * gib, 27 * gib));
    assert!(!offload_experts_auto(Some(80 * gib), 28 * gib, 27 * gib));
    // 33 GiB free ≥ 27 · 1.2 = 32.4 GiB: both fit.
    assert!(!offload_experts_auto(Some(60 * gib), 27 * gib, 27 * gib));
    let dir = tiny_a14b();
    let device = Default::default();
    let defaults = wan_defaults(dir.path()).unwrap();
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some(NEGATIVE_PROMPT.into()),
        height: Some(32),
        width: Some(48),
        num_frames: Some(9),
        num_inference_steps: Some(4),
        guidance_scale: Some(5.0),
        guidance_scale_2: Some(2.0),
        ..Default::default()
    };
    let req = resolve(&[patch], &defaults).unwrap();
    let run = |residency: ExpertResidency| {
        let pipe = WanPipeline::<TestBackend>::load_with_experts(
            dir.path(),
            &device,
            Precision::for_device::<TestBackend>(&device),
            TextEncoderResidency::Resident,
            residency,
            &mut NoProgress,
        )
        .unwrap();
        let loaded = pipe.resident_experts();
        let mut frames = Vec::new();
        // Two requests: the second starts with the low-noise expert resident (one-expert mode).
        for _ in 0..2 {
            let mut noise =
                FileNoise::open(&fixture("reference/pipeline_wan_a14b.safetensors")).unwrap();
            let mut sink = Collect::default();
            let mut ctx = RunContext {
                noise: &mut noise,
                progress: &mut Record::default(),
                cancel: CancelToken::new(),
            };
            assert_eq!(pipe.call(&req, &mut ctx, &mut sink).unwrap(), 9);
            frames.push(
                sink.0
                    .iter()
                    .flat_map(|f| f.data.iter().copied())
                    .collect::<Vec<f32>>(),
            );
        }
        (
            pipe.offloads_experts(),
            loaded,
            pipe.resident_experts(),
            frames,
        )
    };
    let (off, loaded_off, after_off, frames_off) = run(ExpertResidency::Off);
    assert_eq!(
        (off, loaded_off, after_off),
        (false, vec![0, 1], vec![0, 1])
    );
    let (on, loaded_on, after_on, frames_on) = run(ExpertResidency::On);
    // Only the high-noise expert at load; only the low-noise one after a run (steps t < 875).
    assert_eq!((on, loaded_on, after_on), (true, vec![0], vec![1]));
    let (auto, loaded_auto, _, _) = run(ExpertResidency::Auto);
    assert_eq!(
        (auto, loaded_auto),
        (false, vec![0, 1]),
        "CPU: both resident"
    );
    assert_eq!(frames_on, frames_off, "residency changed the output");
    assert_eq!(frames_on[0], frames_on[1]);
    // And it is diffusers' run.
    let (_, want) = common::Reference::open("pipeline_wan_a14b.safetensors").frames01("frames");
    let db = psnr(&frames_on[0], &want);
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}
