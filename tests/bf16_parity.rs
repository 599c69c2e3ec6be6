//! The bf16 precision plan (`omni::pipeline::precision`) against diffusers run in bf16
//! (`tests/fixtures/reference/bf16.safetensors`, `make_fixtures.py --only-bf16`: transformer and
//! UMT5 in bf16 with the transformer's `_keep_in_fp32_modules` in f32, VAE in f32).
//! The Wan2.2 TI2V run: `reference/bf16_wan_ti2v.safetensors` (`make_wan_ti2v.py --bf16`).
//!
//! This test binary runs its own process with the device's default float dtype set to bf16, so
//! the models load and compute exactly as on `Cuda<bf16>`: on the CPU backend (`Flex`, bf16 ops
//! rounded from f32) in CI, and on the GPU when built with `--features cuda` (the same tests,
//! the same tolerances). A missing cast (an f32 tensor meeting a bf16 one) fails here.
//!
//! Tolerances. bf16 keeps 8 significant bits, so each op may round by 2⁻⁹ relative; the two
//! sides round in different places (fused vs unfused ops, accumulation order), so their bf16
//! outputs differ by about as much as each differs from f32. Each check therefore bounds omni's
//! bf16 error against the f32 reference by the error diffusers' own bf16 run makes there, with
//! a factor of [`ERR_FACTOR`]: omni in bf16 must be as accurate as diffusers in bf16. For frames,
//! PSNR against the f32 frames may be at most [`PSNR_SLACK_DB`] below diffusers' bf16 PSNR.

mod common;

use std::sync::Once;

use burn::tensor::{DType, FloatDType, Int, IntDType, Tensor, TensorData};
use common::{Collect, Record, Reference, distilled_request, psnr, tiny_distilled};
use omni::pipeline::models::transformer_helios::{HeliosTransformer3DModel, HistoryInputs};
use omni::pipeline::models::umt5::UMT5EncoderModel;
use omni::pipeline::noise::FileNoise;
use omni::pipeline::pipelines::pipeline_helios_pyramid::{HeliosPyramidPipeline, RunContext};
use omni::pipeline::precision::device_float_dtype;
use omni::pipeline::progress::{CancelToken, NoProgress};

#[cfg(feature = "cuda")]
type B = omni::pipeline::backend::CudaBackend;
#[cfg(not(feature = "cuda"))]
type B = omni::pipeline::backend::CpuBackend;

type Device = <B as burn::tensor::backend::BackendTypes>::Device;

/// omni's bf16 error (vs the f32 reference) may be this many times diffusers' bf16 error.
const ERR_FACTOR: f64 = 2.0;
/// omni's bf16 frames may be this many dB below diffusers' bf16 frames (PSNR vs f32 frames).
const PSNR_SLACK_DB: f64 = 3.0;

/// The default device with bf16 as its default float dtype (before any tensor exists in this
/// process; `Cuda<bf16>` already defaults to it).
fn device() -> Device {
    static INIT: Once = Once::new();
    let device = Device::default();
    INIT.call_once(|| {
        // Fails only if the settings were already fixed; the assert below then decides (on
        // `Cuda<bf16>` bf16 is the default anyway).
        let _ = burn::tensor::set_default_dtypes::<B>(&device, FloatDType::BF16, IntDType::I32);
    });
    assert_eq!(
        device_float_dtype::<B>(&device),
        DType::BF16,
        "the device's default float dtype must be bf16 for these tests"
    );
    device
}

/// Values of any float tensor as f64 (cast to f32 on the device first).
fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    common::max_abs_diff_slice(a, b)
}

/// An f32 tensor from a reference file (the models cast their inputs to their dtype).
fn f32_tensor<const D: usize>(r: &Reference, name: &str, device: &Device) -> Tensor<B, D> {
    let (shape, vals) = r.f64s(name);
    let vals: Vec<f32> = vals.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(vals, shape), (device, DType::F32))
}

/// Check omni's bf16 output against the f32 reference and diffusers' bf16 output.
fn check(what: &str, got: &[f64], f32_ref: &[f64], diffusers_bf16: &[f64]) {
    let ours = max_abs(got, f32_ref);
    let theirs = max_abs(diffusers_bf16, f32_ref);
    let between = max_abs(got, diffusers_bf16);
    eprintln!(
        "{what}: max |omni bf16 - f32| {ours:.4e}, max |diffusers bf16 - f32| {theirs:.4e}, \
         max |omni bf16 - diffusers bf16| {between:.4e}"
    );
    assert!(
        ours <= ERR_FACTOR * theirs,
        "{what}: omni's bf16 error {ours:.4e} exceeds {ERR_FACTOR} x diffusers' {theirs:.4e}"
    );
}

fn transformer_case(case: &str) {
    let device = device();
    let model = HeliosTransformer3DModel::<B>::load(&tiny_distilled().join("transformer"), &device)
        .expect("tiny transformer loads");
    assert_eq!(model.dtype(), DType::BF16);
    assert_eq!(
        model
            .condition_embedder
            .time_embedder
            .linear_1
            .weight
            .val()
            .dtype(),
        DType::F32,
        "time_embedder is in _keep_in_fp32_modules"
    );
    assert_eq!(model.blocks[0].scale_shift_table.val().dtype(), DType::F32);
    assert_eq!(model.blocks[0].attn1.to_q.weight.val().dtype(), DType::BF16);

    let r = Reference::open("transformer.safetensors");
    let name = |t: &str| format!("{case}.{t}");
    let timestep: Vec<f32> = r
        .f64s(&name("timestep"))
        .1
        .iter()
        .map(|v| *v as f32)
        .collect();
    let history = HistoryInputs {
        latents_history_short: f32_tensor(&r, &name("latents_history_short"), &device),
        latents_history_mid: f32_tensor(&r, &name("latents_history_mid"), &device),
        latents_history_long: f32_tensor(&r, &name("latents_history_long"), &device),
        indices_latents_history_short: r.i64s(&name("indices_latents_history_short")),
        indices_latents_history_mid: r.i64s(&name("indices_latents_history_mid")),
        indices_latents_history_long: r.i64s(&name("indices_latents_history_long")),
    };
    let text = model.project_text(f32_tensor(&r, &name("encoder_hidden_states"), &device));
    let out = model.forward(
        f32_tensor(&r, &name("hidden_states"), &device),
        &timestep,
        text,
        &r.i64s(&name("indices_hidden_states")),
        Some(&history),
    );
    assert_eq!(
        out.dtype(),
        DType::BF16,
        "the prediction comes back in the compute dtype"
    );
    let bf16 = Reference::open("bf16.safetensors");
    check(
        &format!("transformer {case}"),
        &values(out),
        &r.f64s(&name("output")).1,
        &bf16.f64s(&format!("transformer.{case}.output")).1,
    );
}

#[test]
fn transformer_with_history_matches_diffusers_bf16() {
    transformer_case("hist");
}

#[test]
fn transformer_with_padded_history_matches_diffusers_bf16() {
    transformer_case("pad");
}

#[test]
fn umt5_matches_transformers_bf16() {
    let device = device();
    let model = UMT5EncoderModel::<B>::load(&tiny_distilled().join("text_encoder"), &device)
        .expect("tiny UMT5 loads");
    let r = Reference::open("umt5.safetensors");
    let ids: Tensor<B, 2, Int> = r.int_tensor("input_ids", &device);
    let mask: Tensor<B, 2, Int> = r.int_tensor("attention_mask", &device);
    let out = model.forward(ids, mask);
    assert_eq!(out.dtype(), DType::BF16);
    let bf16 = Reference::open("bf16.safetensors");
    check(
        "umt5 last_hidden_state",
        &values(out),
        &r.f64s("last_hidden_state").1,
        &bf16.f64s("umt5.last_hidden_state").1,
    );
}

#[test]
fn two_chunk_distilled_run_matches_diffusers_bf16() {
    let device = device();
    let pipe = HeliosPyramidPipeline::<B>::load(&tiny_distilled(), &device, &mut NoProgress)
        .expect("tiny pipeline loads");
    assert_eq!(pipe.transformer.dtype(), DType::BF16);
    assert_eq!(
        pipe.vae.dtype(),
        DType::F32,
        "the VAE runs in f32 as in diffusers' examples"
    );
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_distilled.safetensors")).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut Record::default(),
        cancel: CancelToken::new(),
    };
    assert_eq!(
        pipe.call(&distilled_request(), &mut ctx, &mut sink)
            .unwrap(),
        65
    );
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();

    let (_, f32_frames) = Reference::open("pipeline_distilled.safetensors").frames01("frames");
    let (_, bf16_frames) = Reference::open("bf16.safetensors").frames01("pipeline.frames");
    let ours = psnr(&got, &f32_frames);
    let theirs = psnr(&bf16_frames, &f32_frames);
    let between = psnr(&got, &bf16_frames);
    eprintln!(
        "distilled 2 chunks: PSNR vs f32 frames omni bf16 {ours:.2} dB, diffusers bf16 \
         {theirs:.2} dB; omni bf16 vs diffusers bf16 {between:.2} dB"
    );
    assert!(
        ours >= theirs - PSNR_SLACK_DB,
        "omni bf16 frames at {ours:.2} dB vs f32, diffusers bf16 at {theirs:.2} dB"
    );
}

#[test]
fn wan22_ti2v_run_matches_diffusers_bf16() {
    // One Wan pipeline in bf16: the tiny Wan2.2 TI2V checkpoint (per-token timesteps, the Wan2.2
    // VAE in f32), the request and injected latents of tests/wan_ti2v.rs, against diffusers' bf16
    // run of the same (`make_wan_ti2v.py --bf16`).
    use omni::pipeline::pipelines::pipeline_wan::{WanPipeline, wan_defaults};
    use omni::pipeline::pipelines::prompt_encoder::TextEncoderResidency;
    use omni::pipeline::precision::Precision;
    use omni::pipeline::request::{RequestPatch, resolve};

    let device = device();
    let dir = common::fixture("tiny-wan2.2-ti2v");
    let pipe = WanPipeline::<B>::load_with(
        &dir,
        &device,
        Precision::for_device::<B>(&device),
        TextEncoderResidency::Resident,
        &mut NoProgress,
    )
    .expect("tiny TI2V pipeline loads");
    assert_eq!(pipe.transformer_dtype(), DType::BF16);
    assert_eq!(pipe.vae.dtype(), DType::F32);
    let patch = RequestPatch {
        prompt: Some(common::PROMPT.into()),
        negative_prompt: Some("blurry, low quality, static".into()),
        height: Some(64),
        width: Some(96),
        num_frames: Some(9),
        num_inference_steps: Some(4),
        guidance_scale: Some(5.0),
        ..Default::default()
    };
    let req = resolve(&[patch], &wan_defaults(&dir).unwrap()).unwrap();
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_wan_ti2v.safetensors")).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut Record::default(),
        cancel: CancelToken::new(),
    };
    assert_eq!(pipe.call(&req, &mut ctx, &mut sink).unwrap(), 9);
    let got: Vec<f32> = sink.0.iter().flat_map(|f| f.data.iter().copied()).collect();
    let (_, f32_frames) = Reference::open("pipeline_wan_ti2v.safetensors").frames01("frames");
    let (_, bf16_frames) = Reference::open("bf16_wan_ti2v.safetensors").frames01("frames");
    let ours = psnr(&got, &f32_frames);
    let theirs = psnr(&bf16_frames, &f32_frames);
    let between = psnr(&got, &bf16_frames);
    eprintln!(
        "wan2.2 ti2v: PSNR vs f32 frames omni bf16 {ours:.2} dB, diffusers bf16 {theirs:.2} dB; \
         omni bf16 vs diffusers bf16 {between:.2} dB"
    );
    assert!(
        ours >= theirs - PSNR_SLACK_DB,
        "omni bf16 frames at {ours:.2} dB vs f32, diffusers bf16 at {theirs:.2} dB"
    );
}
