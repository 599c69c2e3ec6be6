//! Whole-pipeline parity for Helios-Mid (`HeliosPyramidPipeline` with `is_cfg_zero_star`, 3
//! pyramid stages of UniPC, integer timesteps, CFG-Zero* 5.0 with zero-init of the first 2 steps
//! of stage 0): a 2-chunk [2, 2, 2] text-to-video run of the tiny Mid checkpoint, driven with
//! diffusers' own random draws (`tests/fixtures/reference/pipeline_mid.safetensors`), must decode
//! to the frames diffusers 0.42.1 decodes.

mod common;

use common::{Collect, MIN_PSNR_DB, Record, copy_dir};

use common::{Reference, TestBackend, psnr, tiny_distilled};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{
    HeliosPyramidPipeline, RunContext, Variant, checkpoint_defaults,
};
use omni::pipeline::progress::{CancelToken, NoProgress, Progress};
use omni::pipeline::request::{RequestPatch, resolve};

/// The tiny Mid checkpoint: tiny Distilled + the committed `tiny-helios-mid` JSONs, in a tempdir.
fn tiny_mid() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_distilled(), dir.path());
    copy_dir(&common::fixture("tiny-helios-mid"), dir.path());
    dir
}

#[test]
fn mid_checkpoint_is_recognised_with_its_defaults() {
    let dir = tiny_mid();
    let d = checkpoint_defaults(dir.path()).unwrap();
    assert_eq!(d.pyramid_num_inference_steps_list, vec![20, 20, 20]);
    assert_eq!(d.guidance_scale, 5.0);
    assert!(d.use_cfg_zero_star && d.use_zero_init && d.is_enable_stage2);
    assert_eq!(d.zero_steps, 1);
    assert!(!d.is_amplify_first_chunk);
}

#[test]
fn two_chunk_mid_run_matches_diffusers_frames() {
    let dir = tiny_mid();
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(dir.path(), &device, &mut NoProgress).unwrap();
    assert_eq!(pipe.variant, Variant::Mid);
    let patch = RequestPatch {
        prompt: Some("A serene lakeside sunrise with mist over the water.".into()),
        negative_prompt: Some("blurry, low quality, static".into()),
        width: Some(128),
        height: Some(64),
        num_frames: Some(66),
        pyramid_num_inference_steps_list: Some(vec![2, 2, 2]),
        ..Default::default()
    };
    let req = resolve(&[patch], &pipe.defaults()).unwrap();
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_mid.safetensors")).unwrap();
    let mut progress = Record::default();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();
    assert_eq!(n, 65);
    let reference = Reference::open("pipeline_mid.safetensors");
    let (shape, want) = reference.frames01("frames");
    assert_eq!(shape, vec![1, 65, 64, 128, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("Mid decoded frames PSNR vs diffusers: {db:.2} dB");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");

    let steps: Vec<(usize, usize)> = progress
        .0
        .iter()
        .filter_map(|e| match e {
            Progress::ChunkStarted { chunk, steps, .. } => Some((*chunk, *steps)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        vec![(0, 6), (1, 6)],
        "no amplified first chunk for Mid"
    );
}
