//! Whole-pipeline parity for video-to-video: a 2-chunk Helios-Distilled run of the tiny
//! checkpoint continuing a 67-frame 64x128 video (two 33-frame windows from the end, frame 0
//! encoded alone as the anchor), driven with diffusers' own random draws
//! (`tests/fixtures/reference/pipeline_v2v.safetensors`, made by
//! `tests/fixtures/make_fixtures.py`), must decode to the frames diffusers 0.42.1 decodes.

mod common;

use common::{Collect, MIN_PSNR_DB, distilled_request, input_frames};

use common::{Reference, TestBackend, psnr, tiny_distilled};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{HeliosPyramidPipeline, RunContext};
use omni::pipeline::progress::{CancelToken, NoProgress};
use omni::pipeline::request::{Conditioning, ConditioningPixels, GenerationRequest};

fn run(
    req: &GenerationRequest,
    noise: &mut dyn omni::pipeline::noise::NoiseSource,
) -> Result<Collect, omni::pipeline::pipelines::pipeline_helios_pyramid::PipelineError> {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    pipe.call(req, &mut ctx, &mut sink)?;
    Ok(sink)
}

#[test]
fn two_chunk_video_to_video_run_matches_diffusers_frames() {
    let reference = Reference::open("pipeline_v2v.safetensors");
    let (frames, w, h) = input_frames(&reference, "video");
    assert_eq!((frames.len(), w, h), (67, 128, 64));
    let mut req = distilled_request();
    req.conditioning = Conditioning::Video(ConditioningPixels::from_rgb8_frames(&frames, w, h));
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_v2v.safetensors")).unwrap();
    let sink = run(&req, &mut noise).unwrap();

    let (shape, want) = reference.frames01("frames");
    assert_eq!(shape, vec![1, 65, 64, 128, 3]);
    assert_eq!(sink.0.len(), 2, "only the new chunks are decoded");
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len());
    let db = psnr(&got, &want);
    eprintln!("V2V decoded frames PSNR vs diffusers: {db:.2} dB");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");
}

#[test]
fn a_video_shorter_than_one_window_is_an_error() {
    let mut req = distilled_request();
    let frames = vec![vec![0u8; 64 * 128 * 3]; 32];
    req.conditioning = Conditioning::Video(ConditioningPixels::from_rgb8_frames(&frames, 128, 64));
    let err = match run(&req, &mut omni::pipeline::noise::SeededNoise::new(0)) {
        Ok(_) => panic!("a 32-frame video was accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("at least 33"), "{err}");
}
