//! Whole-pipeline parity: a 2-chunk Helios-Distilled text-to-video run of the tiny checkpoint,
//! driven with diffusers' own random draws (`tests/fixtures/reference/pipeline_distilled.safetensors`,
//! made by `tests/fixtures/make_fixtures.py`), must decode to the frames diffusers 0.42.1 decodes.

mod common;

use common::{Collect, MIN_PSNR_DB, Record, distilled_request};

use common::{Reference, TestBackend, psnr, tiny_distilled};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{HeliosPyramidPipeline, RunContext};
use omni::pipeline::progress::{CancelToken, NoProgress, Progress};

#[test]
fn two_chunk_distilled_run_matches_diffusers_frames() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let req = distilled_request();
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_distilled.safetensors")).unwrap();
    let mut progress = Record::default();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();

    let reference = Reference::open("pipeline_distilled.safetensors");
    let (shape, want) = reference.frames01("frames");
    assert_eq!(shape, vec![1, 65, 64, 128, 3]);
    assert_eq!(n, 65);
    assert_eq!(sink.0.len(), 2, "one delivery per chunk");
    assert_eq!(sink.0[0].frames, 33);
    assert_eq!(
        sink.0[1].frames, 32,
        "the last chunk is trimmed to 4k+1 frames in all"
    );
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("decoded frames PSNR vs diffusers: {db:.2} dB");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");

    // Progress: 12 steps in the amplified first chunk, 6 in the second.
    let steps: Vec<(usize, usize)> = progress
        .0
        .iter()
        .filter_map(|e| match e {
            Progress::ChunkStarted { chunk, steps, .. } => Some((*chunk, *steps)),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![(0, 12), (1, 6)]);
}

#[test]
fn prompt_embeddings_match_diffusers() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let reference = Reference::open("pipeline_distilled.safetensors");
    let want = reference.tensor::<TestBackend, 3>("prompt_embeds", &device);
    let got = pipe
        .encode_prompt("A serene lakeside sunrise with mist over the water.", 512)
        .unwrap();
    let err = common::max_abs_diff(got, want);
    eprintln!("prompt_embeds max abs error: {err:.3e}");
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn a_missing_noise_draw_is_an_error_naming_it() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let mut req = distilled_request();
    req.num_frames = 99; // needs chunk2.* draws, which the file does not have
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_distilled.safetensors")).unwrap();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let err = pipe
        .call(&req, &mut ctx, &mut Collect::default())
        .unwrap_err();
    assert!(err.to_string().contains("chunk2.latents"), "{err}");
}

#[test]
fn a_cancelled_run_stops_before_the_first_step() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let mut noise = omni::pipeline::noise::SeededNoise::new(0);
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel,
    };
    let mut sink = Collect::default();
    let err = pipe
        .call(&distilled_request(), &mut ctx, &mut sink)
        .unwrap_err();
    assert!(matches!(
        err,
        omni::pipeline::pipelines::pipeline_helios_pyramid::PipelineError::Cancelled
    ));
    assert!(sink.0.is_empty());
}

/// `omni generate`'s path: prompts encoded by a standalone `PromptEncoder` that is dropped before
/// the transformer loads, and a pipeline without a resident text encoder (which loads one for
/// each `call`), both give exactly the frames of the resident pipeline.
#[test]
fn on_demand_text_encoder_gives_the_same_frames() {
    use omni::pipeline::pipelines::pipeline_helios_pyramid::{PromptEncoder, TextEncoderResidency};
    use omni::pipeline::precision::Precision;

    let device = Default::default();
    let run = |pipe: &HeliosPyramidPipeline<TestBackend>, embeds| {
        let mut noise =
            FileNoise::open(&common::fixture("reference/pipeline_distilled.safetensors")).unwrap();
        let mut ctx = RunContext {
            noise: &mut noise,
            progress: &mut NoProgress,
            cancel: CancelToken::new(),
        };
        let mut sink = Collect::default();
        match embeds {
            Some(e) => pipe.call_with_embeds(&distilled_request(), e, &mut ctx, &mut sink),
            None => pipe.call(&distilled_request(), &mut ctx, &mut sink),
        }
        .unwrap();
        sink.0
            .into_iter()
            .flat_map(|f| f.data)
            .collect::<Vec<f32>>()
    };
    let resident =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    assert!(resident.prompt_encoder.is_some());
    let want = run(&resident, None);
    drop(resident);

    let precision = Precision::for_device::<TestBackend>(&device);
    let embeds = PromptEncoder::<TestBackend>::load(
        &tiny_distilled(),
        &device,
        precision.text_encoder,
        &mut NoProgress,
    )
    .unwrap()
    .encode_request(&distilled_request(), &mut NoProgress)
    .unwrap();
    let on_demand = HeliosPyramidPipeline::<TestBackend>::load_with(
        &tiny_distilled(),
        &device,
        precision,
        TextEncoderResidency::OnDemand,
        &mut NoProgress,
    )
    .unwrap();
    assert!(on_demand.prompt_encoder.is_none());
    assert!(run(&on_demand, Some(embeds)) == want, "pre-encoded prompt");
    assert!(
        run(&on_demand, None) == want,
        "text encoder loaded for the call"
    );
}
