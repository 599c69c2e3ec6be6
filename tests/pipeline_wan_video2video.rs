//! Whole-pipeline parity of `WanVideoToVideoPipeline` against diffusers 0.42.1: the tiny Wan2.1
//! T2V weights under the `WanVideoToVideoPipeline` class (`tests/fixtures/tiny-wan2.1-t2v` plus
//! the `tiny-wan2.1-v2v` overlay), a 9-frame 32×48 input video, 10 UniPC steps at strength 0.7
//! (the last 7 run), CFG 5.0, with diffusers' `noise` draw injected
//! (`reference/pipeline_wan_v2v.safetensors`, `tests/fixtures/make_wan_i2v.py`
//! `make_v2v_reference`): the decoded frames must reach 40 dB PSNR.

mod common;

use common::{
    Collect, MIN_PSNR_DB, PROMPT, Record, Reference, TestBackend, copy_dir, fixture, psnr,
};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::RunContext;
use omni::pipeline::pipelines::pipeline_wan_video2video::{
    WanVideoToVideoPipeline, wan_v2v_defaults,
};
use omni::pipeline::pipelines::prompt_encoder::TextEncoderResidency;
use omni::pipeline::precision::Precision;
use omni::pipeline::progress::{CancelToken, NoProgress, Progress};
use omni::pipeline::request::{Conditioning, ConditioningPixels, RequestPatch, resolve};

const REFERENCE: &str = "pipeline_wan_v2v.safetensors";

fn checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.1-v2v"), dir.path());
    dir
}

fn run(strength: f64) -> (f64, usize) {
    let dir = checkpoint();
    let device = Default::default();
    let defaults = wan_v2v_defaults(dir.path()).unwrap();
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some("blurry, low quality, static".into()),
        height: Some(32),
        width: Some(48),
        num_frames: Some(9),
        num_inference_steps: Some(10),
        guidance_scale: Some(5.0),
        strength: Some(strength),
        ..Default::default()
    };
    let mut req = resolve(&[patch], &defaults).unwrap();
    let r = Reference::open(REFERENCE);
    let (frames, w, h) = common::input_frames(&r, "video");
    req.conditioning = Conditioning::Video(ConditioningPixels::from_rgb8_frames(&frames, w, h));
    let pipe = WanVideoToVideoPipeline::<TestBackend>::load_with(
        dir.path(),
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
    let (shape, want) = r.frames01("frames");
    assert_eq!(shape, vec![9, 32, 48, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("v2v strength {strength}: PSNR vs diffusers {db:.2} dB (omni call {secs:.3} s)");
    let steps = progress
        .0
        .iter()
        .filter(|e| matches!(e, Progress::Step { .. }))
        .count();
    (db, steps)
}

#[test]
fn v2v_run_matches_diffusers_frames() {
    let (db, steps) = run(0.7);
    assert_eq!(steps, 7, "int(10 · 0.7) = 7 steps run");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn another_strength_gives_other_frames() {
    let (db, steps) = run(0.5);
    assert_eq!(steps, 5);
    assert!(db < MIN_PSNR_DB, "strength had no effect ({db:.2} dB)");
}

#[test]
fn strength_is_refused_by_checkpoints_that_cannot_honour_it() {
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        strength: Some(0.5),
        ..Default::default()
    };
    for defaults in [
        omni::pipeline::pipelines::pipeline_wan::wan_defaults(&fixture("tiny-wan2.1-t2v")).unwrap(),
        omni::pipeline::request::ModelDefaults::helios_distilled(),
    ] {
        let err = resolve(std::slice::from_ref(&patch), &defaults).unwrap_err();
        assert!(err.to_string().contains("strength"), "{err}");
    }
    let dir = checkpoint();
    let d = wan_v2v_defaults(dir.path()).unwrap();
    assert_eq!(d.request.strength, 0.8);
    let bad = RequestPatch {
        strength: Some(1.5),
        ..patch
    };
    let err = resolve(&[bad], &d).unwrap_err();
    assert!(err.to_string().contains("strength"), "{err}");
}
