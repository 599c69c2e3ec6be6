//! Whole-pipeline parity of `WanImageToVideoPipeline` against diffusers 0.42.1 with injected
//! initial latents (`reference/pipeline_wan_i2v.safetensors`, made by
//! `tests/fixtures/make_wan_i2v.py` `make_pipeline_references`): the decoded frames must reach
//! 40 dB PSNR for
//! - Wan2.1 I2V: `tests/fixtures/tiny-wan2.1-i2v` (tiny CLIP image encoder, 36-channel
//!   transformer with image cross-attention);
//! - FLF2V: the same folder with the `tiny-wan2.1-flf2v` overlay (transformer with
//!   `pos_embed_seq_len`, flow shift 16) and a last image;
//! - Wan2.2 I2V A14B: the `tiny-wan2.2-i2v-a14b` overlay (no image encoder, two experts,
//!   boundary 0.9, `guidance_scale_2 = 2.0`).
//!
//! All runs: 32×48, 9 frames, 4 UniPC steps, CFG 5.0 with a negative prompt.

mod common;

use common::{
    Collect, MIN_PSNR_DB, PROMPT, Record, Reference, TestBackend, copy_dir, fixture, psnr,
};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::RunContext;
use omni::pipeline::pipelines::pipeline_wan_i2v::{WanImageToVideoPipeline, wan_i2v_defaults};
use omni::pipeline::pipelines::prompt_encoder::TextEncoderResidency;
use omni::pipeline::precision::Precision;
use omni::pipeline::progress::{CancelToken, NoProgress};
use omni::pipeline::request::{Conditioning, ConditioningPixels, RequestPatch, resolve};

const NEGATIVE_PROMPT: &str = "blurry, low quality, static";
const REFERENCE: &str = "pipeline_wan_i2v.safetensors";

/// `tiny-wan2.1-i2v` plus `overlay`, in a temporary folder.
fn with_overlay(overlay: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-i2v"), dir.path());
    copy_dir(&fixture(overlay), dir.path());
    dir
}

fn patch() -> RequestPatch {
    RequestPatch {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some(NEGATIVE_PROMPT.into()),
        height: Some(32),
        width: Some(48),
        num_frames: Some(9),
        num_inference_steps: Some(4),
        guidance_scale: Some(5.0),
        ..Default::default()
    }
}

/// The reference's input images as conditioning pixels (`last`: first and last).
fn conditioning(last: bool) -> Conditioning {
    let r = Reference::open(REFERENCE);
    let (mut frames, w, h) = common::input_frames(&r, "image");
    if last {
        frames.extend(common::input_frames(&r, "last_image").0);
        Conditioning::FirstLast(ConditioningPixels::from_rgb8_frames(&frames, w, h))
    } else {
        Conditioning::Image(ConditioningPixels::from_rgb8_frames(&frames, w, h))
    }
}

/// Runs the checkpoint in `dir` and returns the PSNR of its frames against `frames` of the
/// reference.
fn run(dir: &std::path::Path, patch: RequestPatch, last: bool, frames: &str) -> f64 {
    let device = Default::default();
    let defaults = wan_i2v_defaults(dir).unwrap();
    let mut req = resolve(&[patch], &defaults).unwrap();
    req.conditioning = conditioning(last);
    let pipe = WanImageToVideoPipeline::<TestBackend>::load_with(
        dir,
        &device,
        Precision::for_device::<TestBackend>(&device),
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    let mut noise = FileNoise::open(&fixture(&format!("reference/{REFERENCE}"))).unwrap();
    let mut progress = Record::default();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    let t0 = std::time::Instant::now();
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, 9);
    let (shape, want) = Reference::open(REFERENCE).frames01(frames);
    assert_eq!(shape, vec![9, 32, 48, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("{frames}: decoded frames PSNR vs diffusers {db:.2} dB (omni call {secs:.3} s)");
    db
}

#[test]
fn i2v_run_matches_diffusers_frames() {
    let db = run(&fixture("tiny-wan2.1-i2v"), patch(), false, "i2v.frames");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn flf2v_run_matches_diffusers_frames() {
    let dir = with_overlay("tiny-wan2.1-flf2v");
    let db = run(dir.path(), patch(), true, "flf2v.frames");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn two_expert_i2v_run_matches_diffusers_frames() {
    let dir = with_overlay("tiny-wan2.2-i2v-a14b");
    let p = RequestPatch {
        guidance_scale_2: Some(2.0),
        ..patch()
    };
    let db = run(dir.path(), p, false, "i2v_a14b.frames");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn last_image_on_an_i2v_checkpoint_is_refused_naming_it() {
    let dir = fixture("tiny-wan2.1-i2v");
    let device = Default::default();
    let mut req = resolve(&[patch()], &wan_i2v_defaults(&dir).unwrap()).unwrap();
    req.conditioning = conditioning(true);
    let pipe = WanImageToVideoPipeline::<TestBackend>::load_with(
        &dir,
        &device,
        Precision::for_device::<TestBackend>(&device),
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    let mut noise = FileNoise::open(&fixture(&format!("reference/{REFERENCE}"))).unwrap();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let err = pipe
        .call(&req, &mut ctx, &mut Collect::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("last_image"), "{err}");
}

#[test]
fn i2v_defaults_follow_the_checkpoint() {
    let d = wan_i2v_defaults(&fixture("tiny-wan2.1-i2v")).unwrap();
    assert_eq!(d.pipeline_class, "WanImageToVideoPipeline");
    assert_eq!(d.request.flow_shift, 3.0);
    assert!(d.unsupported.contains(&"guidance_scale_2"));
    let dir = with_overlay("tiny-wan2.1-flf2v");
    assert_eq!(
        wan_i2v_defaults(dir.path()).unwrap().request.flow_shift,
        16.0
    );
    let dir = with_overlay("tiny-wan2.2-i2v-a14b");
    let d = wan_i2v_defaults(dir.path()).unwrap();
    assert_eq!(d.request.boundary_ratio, 0.9);
    assert!(!d.unsupported.contains(&"guidance_scale_2"));
}
