//! Whole-pipeline parity of `WanPipeline`: a Wan2.1 text-to-video run of
//! `tests/fixtures/tiny-wan2.1-t2v` and a Wan2.2 A14B-style two-expert run (the same folder with
//! the `tests/fixtures/tiny-wan2.2-a14b` overlay: `transformer_2`, `boundary_ratio = 0.875`),
//! driven with diffusers' initial latents (`reference/pipeline_wan_{t2v,a14b}.safetensors`, made
//! by `tests/fixtures/make_wan.py` `make_pipeline_references`), must decode to diffusers' frames.
//! Both runs: 32×48, 9 frames, 4 UniPC steps (flow shift 3), CFG 5.0 with a negative prompt; the
//! two-expert run has `guidance_scale_2 = 2.0`, so its steps at t < 875 use the second expert.

mod common;

use common::{Collect, MIN_PSNR_DB, PROMPT, Record, TestBackend, copy_dir, fixture, psnr};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::RunContext;
use omni::pipeline::pipelines::pipeline_wan::{WanPipeline, wan_defaults};
use omni::pipeline::pipelines::prompt_encoder::TextEncoderResidency;
use omni::pipeline::precision::Precision;
use omni::pipeline::progress::{CancelToken, NoProgress, Progress};
use omni::pipeline::request::{RequestPatch, resolve};

const NEGATIVE_PROMPT: &str = "blurry, low quality, static";

/// `tiny-wan2.1-t2v` plus the two-expert overlay, in a temporary folder.
fn tiny_a14b() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-wan2.1-t2v"), dir.path());
    copy_dir(&fixture("tiny-wan2.2-a14b"), dir.path());
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

/// Runs the checkpoint in `dir` with `patch` and the draws of `reference`; returns the PSNR of
/// the decoded frames against diffusers' and the progress events.
fn run(dir: &std::path::Path, patch: RequestPatch, reference: &str) -> (f64, Vec<Progress>) {
    let device = Default::default();
    let defaults = wan_defaults(dir).unwrap();
    let req = resolve(&[patch], &defaults).unwrap();
    let pipe = WanPipeline::<TestBackend>::load_with(
        dir,
        &device,
        Precision::for_device::<TestBackend>(&device),
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .unwrap();
    let mut noise = FileNoise::open(&fixture(&format!("reference/{reference}"))).unwrap();
    let mut progress = Record::default();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();
    assert_eq!(n, 9);
    let (shape, want) = common::Reference::open(reference).frames01("frames");
    assert_eq!(shape, vec![9, 32, 48, 3]);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("{reference}: decoded frames PSNR vs diffusers {db:.2} dB");
    (db, progress.0)
}

#[test]
fn t2v_run_matches_diffusers_frames() {
    let (db, progress) = run(
        &fixture("tiny-wan2.1-t2v"),
        patch(),
        "pipeline_wan_t2v.safetensors",
    );
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
    let steps = progress
        .iter()
        .filter(|e| matches!(e, Progress::Step { .. }))
        .count();
    assert_eq!(steps, 4);
}

#[test]
fn two_expert_run_matches_diffusers_frames() {
    let dir = tiny_a14b();
    let p = RequestPatch {
        guidance_scale_2: Some(2.0),
        ..patch()
    };
    let (db, _) = run(dir.path(), p, "pipeline_wan_a14b.safetensors");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn two_expert_run_with_other_guidance_differs() {
    // The low-noise expert's guidance matters: guidance_scale_2 = guidance_scale (the default)
    // must not reproduce the guidance_scale_2 = 2.0 frames.
    let dir = tiny_a14b();
    let (db, _) = run(dir.path(), patch(), "pipeline_wan_a14b.safetensors");
    assert!(
        db < MIN_PSNR_DB,
        "guidance_scale_2 had no effect ({db:.2} dB)"
    );
}

#[test]
fn wan_defaults_follow_the_checkpoint() {
    let d = wan_defaults(&fixture("tiny-wan2.1-t2v")).unwrap();
    assert_eq!(d.pipeline_class, "WanPipeline");
    assert_eq!((d.width, d.height, d.num_frames, d.fps), (832, 480, 81, 16));
    assert_eq!(d.flow_shift, 3.0);
    assert!(d.unsupported.contains(&"guidance_scale_2"));
    assert!(d.unsupported.contains(&"boundary_ratio"));
    let dir = tiny_a14b();
    let d = wan_defaults(dir.path()).unwrap();
    assert_eq!(d.boundary_ratio, 0.875);
    assert!(!d.unsupported.contains(&"guidance_scale_2"));
    // guidance_scale_2 follows guidance_scale unless set; num_frames is rounded to 4k + 1.
    let req = resolve(
        &[RequestPatch {
            guidance_scale: Some(3.5),
            num_frames: Some(8),
            ..patch()
        }],
        &d,
    )
    .unwrap();
    assert_eq!(req.guidance_scale_2, 3.5);
    assert_eq!(
        (req.num_frames, req.output_frames(), req.num_chunks()),
        (9, 9, 1)
    );
}
