//! Whole-pipeline parity for Helios-Base (`HeliosPipeline`, one full-resolution stage, UniPC,
//! float timesteps, CFG 5.0 with a negative prompt): a 2-chunk, 2-step text-to-video run of the
//! tiny Base checkpoint, driven with diffusers' own random draws
//! (`tests/fixtures/reference/pipeline_base.safetensors`, made by
//! `make_fixtures.py --only-base-mid`), must decode to the frames diffusers 0.42.1 decodes.
//!
//! The tiny Base checkpoint is the tiny Distilled one with the committed
//! `tiny-helios-base/{model_index.json,scheduler/scheduler_config.json}` copied over it, in a
//! temporary folder.

mod common;

use common::{Collect, MIN_PSNR_DB, copy_dir};

use common::{Reference, TestBackend, psnr, tiny_distilled};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{
    HeliosPyramidPipeline, RunContext, Variant, checkpoint_defaults,
};
use omni::pipeline::progress::{CancelToken, NoProgress};
use omni::pipeline::request::{RequestPatch, resolve};

/// The tiny checkpoint of `variant` (`tiny-helios-base` / `tiny-helios-mid`) in a tempdir.
pub fn tiny_variant(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_distilled(), dir.path());
    copy_dir(
        &common::fixture(&format!("tiny-helios-{variant}")),
        dir.path(),
    );
    dir
}

#[test]
fn base_checkpoint_is_recognised_with_its_defaults() {
    let dir = tiny_variant("base");
    let d = checkpoint_defaults(dir.path()).unwrap();
    assert_eq!(d.num_inference_steps, 50);
    assert_eq!(d.guidance_scale, 5.0);
    assert_eq!(d.pyramid_num_stages, 1);
    assert!(!d.is_enable_stage2 && !d.use_cfg_zero_star);
}

#[test]
fn two_chunk_base_run_matches_diffusers_frames() {
    let dir = tiny_variant("base");
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(dir.path(), &device, &mut NoProgress).unwrap();
    assert_eq!(pipe.variant, Variant::Base);
    let reference = Reference::open("pipeline_base.safetensors");
    let patch = RequestPatch {
        prompt: Some("A serene lakeside sunrise with mist over the water.".into()),
        negative_prompt: Some("blurry, low quality, static".into()),
        width: Some(128),
        height: Some(64),
        num_frames: Some(66),
        guidance_scale: Some(5.0),
        num_inference_steps: Some(2),
        ..Default::default()
    };
    let req = resolve(&[patch], &pipe.defaults()).unwrap();
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_base.safetensors")).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();
    assert_eq!(n, 65);
    let (shape, want) = reference.frames01("frames");
    assert_eq!(shape, vec![1, 65, 64, 128, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("Base decoded frames PSNR vs diffusers: {db:.2} dB");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}
