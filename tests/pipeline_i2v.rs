//! Whole-pipeline parity for image-to-video: a 2-chunk Helios-Distilled run of the tiny
//! checkpoint conditioned on a 64x128 image, driven with diffusers' own random draws (VAE sample
//! noise, the uniform σ draws and the noising of the image and fake image latents included;
//! `tests/fixtures/reference/pipeline_i2v.safetensors`, made by `tests/fixtures/make_fixtures.py`),
//! must decode to the frames diffusers 0.42.1 decodes.

mod common;

use common::{Collect, MIN_PSNR_DB, distilled_request, input_frames};

use common::{Reference, TestBackend, psnr, tiny_distilled};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{HeliosPyramidPipeline, RunContext};
use omni::pipeline::progress::{CancelToken, NoProgress};
use omni::pipeline::request::{Conditioning, ConditioningPixels};

#[test]
fn two_chunk_image_to_video_run_matches_diffusers_frames() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let reference = Reference::open("pipeline_i2v.safetensors");
    let (frames, w, h) = input_frames(&reference, "image");
    assert_eq!((frames.len(), w, h), (1, 128, 64));
    let mut req = distilled_request();
    req.conditioning = Conditioning::Image(ConditioningPixels::from_rgb8_frames(&frames, w, h));
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_i2v.safetensors")).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let n = pipe.call(&req, &mut ctx, &mut sink).unwrap();

    let (shape, want) = reference.frames01("frames");
    assert_eq!(shape, vec![1, 65, 64, 128, 3]);
    assert_eq!(n, 65);
    assert_eq!(sink.0.len(), 2, "one delivery per chunk");
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let db = psnr(&got, &want);
    eprintln!("I2V decoded frames PSNR vs diffusers: {db:.2} dB");
    assert!(db >= MIN_PSNR_DB, "PSNR {db:.2} dB < {MIN_PSNR_DB} dB");

    // The conditioning changes the video: the T2V reference (same chunk draws) differs.
    let (_, t2v) = Reference::open("pipeline_distilled.safetensors").frames01("frames");
    assert!(psnr(&got, &t2v) < 30.0, "the image had no effect");
}

#[test]
fn an_image_of_the_wrong_size_is_an_error() {
    let device = Default::default();
    let pipe =
        HeliosPyramidPipeline::<TestBackend>::load(&tiny_distilled(), &device, &mut NoProgress)
            .unwrap();
    let mut req = distilled_request();
    let frame = vec![0u8; 64 * 64 * 3];
    req.conditioning = Conditioning::Image(ConditioningPixels::from_rgb8_frames(&[frame], 64, 64));
    let mut noise = omni::pipeline::noise::SeededNoise::new(0);
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let err = pipe
        .call(&req, &mut ctx, &mut Collect::default())
        .unwrap_err();
    assert!(err.to_string().contains("128x64"), "{err}");
}
