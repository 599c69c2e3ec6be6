//! `AutoencoderKLWan` (encoder and decoder) against diffusers 0.42.1 on the tiny fixture VAE
//! (`tests/fixtures/tiny-helios-distilled/vae`: base_dim 8, dim_mult [1,1,1,1], num_res_blocks 1,
//! temperal_downsample [F,T,T]), fp32 on Flex.
//!
//! References come from `tests/fixtures/make_fixtures.py` (`make_vae_reference`: seed 0,
//! `z = randn(1,16,3,4,6)·std + mean`, `vae.decode(z).sample`; `pipeline_distilled.safetensors`
//! holds the pipeline's de-normalisation `final_latents / (1/std) + mean`;
//! `make_vae_encode_reference`: seed 0, `video = U[-1,1) [1,3,9,32,48]`, `vae.encode(video)`
//! `latent_dist.mean/.logvar`, `.sample()` with an injected `randn_tensor` draw, and a
//! single-frame image `[1,3,1,32,48]`).
//!
//! Run: `cargo test --test autoencoder_kl_wan`.

mod common;

use burn::tensor::{Distribution, Tensor, TensorData};
use common::vae::{
    assert_decode_matches, assert_encode_matches, assert_streaming_decode_equals_decode,
};
use common::{Reference, TestBackend, max_abs_diff, tiny_distilled};
use omni::pipeline::models::autoencoder_kl_wan::{
    AutoencoderKLWan, AutoencoderKLWanConfig, CausalConvCache, WanDownLayer, WanEncoderCache,
};

type B = TestBackend;

/// Decode parity bound. Both sides are fp32; the Rust convs (im2col + GEMM on Flex) sum in a
/// different order than PyTorch's CPU kernels, over ~20 stacked convs, RMS norms and one
/// attention, with outputs of order 1. Observed max error is 8e-6; 1e-4 leaves room for other
/// CPUs' SIMD widths while still catching any layout or cache-logic bug (those give ≥ 1e-2).
const DECODE_TOL: f64 = 1e-4;

/// Encode parity bound (mean, logvar, sample). Both sides fp32; ~20 stacked convs, RMS norms and
/// one attention as for decode, outputs of order 1. A layout, padding or cache bug gives ≥ 1e-2.
const ENCODE_TOL: f64 = 1e-4;

/// Same ops on the same shapes on both sides of these comparisons, so they should be
/// bit-equal; a tiny slack only guards against backend-internal scheduling differences.
const SAME_OPS_TOL: f64 = 1e-6;

/// A conv run over chunks of different lengths uses different GEMM tilings than one run over the
/// whole sequence, so sums of 432 products of N(0,1) inputs (outputs of order 10) round
/// differently: ~2e-6 observed; a wrong cache gives errors of order 1.
const CHUNKED_CONV_TOL: f64 = 1e-5;

fn load_vae() -> AutoencoderKLWan<B> {
    let device = Default::default();
    AutoencoderKLWan::<B>::load(&tiny_distilled().join("vae"), &device).expect("tiny VAE loads")
}

#[test]
fn vae_decode_matches_diffusers() {
    let reference = Reference::open("vae.safetensors");
    assert_decode_matches(
        &load_vae(),
        &reference,
        "decode.output",
        [1, 3, 9, 32, 48],
        DECODE_TOL,
        "vae",
    );
}

#[test]
fn vae_streaming_decode_equals_decode() {
    // Latent frame 0 → 1 video frame, every later latent frame → 4.
    let reference = Reference::open("vae.safetensors");
    assert_streaming_decode_equals_decode(&load_vae(), &reference, SAME_OPS_TOL);
}

#[test]
fn vae_streaming_decode_stops_on_sink_error() {
    let device = Default::default();
    let vae = load_vae();
    let z = Reference::open("vae.safetensors").tensor::<B, 5>("decode.z", &device);
    let mut calls = 0;
    let result = vae.decode_streaming(z.clone(), &|| Ok(()), |_, _| {
        calls += 1;
        Err("disk full")
    });
    assert_eq!(result, Err("disk full"));
    assert_eq!(calls, 1);

    // `stop` is asked inside a frame's decode: saying stop on its third question ends the decode
    // before the first frame is out.
    let asked = std::cell::Cell::new(0);
    let stop = || {
        asked.set(asked.get() + 1);
        match asked.get() >= 3 {
            true => Err("cancelled"),
            false => Ok(()),
        }
    };
    let mut frames_out = 0;
    let result = vae.decode_streaming(z, &stop, |_, _| {
        frames_out += 1;
        Ok(())
    });
    assert_eq!((result, frames_out, asked.get()), (Err("cancelled"), 0, 3));
}

#[test]
fn vae_decode_is_causal_in_time() {
    // The decoder only looks back: decoding the first 2 latent frames gives exactly the first
    // 1 + 4 video frames of decoding all 3.
    let device = Default::default();
    let vae = load_vae();
    let z = Reference::open("vae.safetensors").tensor::<B, 5>("decode.z", &device);
    let full = vae.decode(z.clone());
    let prefix = vae.decode(z.narrow(2, 0, 2));
    assert_eq!(prefix.dims(), [1, 3, 5, 32, 48]);
    let err = max_abs_diff(prefix, full.narrow(2, 0, 5));
    assert!(err <= SAME_OPS_TOL, "prefix decode differs by {err:e}");
}

#[test]
fn causal_conv_chunked_equals_full() {
    // The frame cache (diffusers' feat_cache) makes chunk-by-chunk equal to one causal conv
    // over the whole sequence, for any chunking.
    let device = Default::default();
    let vae = load_vae();
    let conv = &vae.decoder.conv_in; // 3×3×3, 16 → 8 channels, loaded weights
    let x = Tensor::<B, 5>::random([1, 16, 6, 4, 5], Distribution::Normal(0.0, 1.0), &device);
    let full = conv.forward(x.clone());
    for chunks in [
        vec![1, 1, 1, 1, 1, 1],
        vec![1, 2, 3],
        vec![3, 1, 2],
        vec![6],
    ] {
        let mut cache = CausalConvCache::default();
        let mut start = 0;
        let mut outs = Vec::new();
        for len in &chunks {
            outs.push(conv.forward_cached(x.clone().narrow(2, start, *len), &mut cache));
            start += len;
            assert_eq!(cache.len(), start.min(2));
        }
        let err = max_abs_diff(Tensor::cat(outs, 2), full.clone());
        assert!(err <= CHUNKED_CONV_TOL, "chunks {chunks:?}: {err:e}");
    }
}

#[test]
fn vae_denormalize_uses_config_mean_and_inverse_std() {
    let device = Default::default();
    let vae = load_vae();
    let cfg = vae.config();
    let shape = [2, 16, 2, 3, 4];
    let x = Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let xs: Vec<f32> = x.clone().into_data().to_vec().unwrap();
    // Host formula, in f32 as torch does: x / (1 / std) + mean.
    let per_channel = shape[2] * shape[3] * shape[4];
    let expected: Vec<f32> = xs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / per_channel) % 16;
            v / (1.0f32 / cfg.latents_std[c] as f32) + cfg.latents_mean[c] as f32
        })
        .collect();
    let expected = Tensor::<B, 5>::from_data(TensorData::new(expected, shape), &device);
    let out = vae.denormalize(x.clone());
    assert!(max_abs_diff(out.clone(), expected) <= SAME_OPS_TOL);
    // normalize is its inverse (up to f32 rounding).
    assert!(max_abs_diff(vae.normalize(out), x) <= 1e-5);
}

#[test]
fn vae_denormalize_matches_pipeline_reference() {
    // The pipeline fixture captured diffusers' own `final_latents / latents_std + latents_mean`.
    let device = Default::default();
    let vae = load_vae();
    let reference = Reference::open("pipeline_distilled.safetensors");
    for k in 0..2 {
        let latents = reference.tensor::<B, 5>(&format!("chunk{k}.final_latents"), &device);
        let expected = reference.tensor::<B, 5>(&format!("chunk{k}.vae_input"), &device);
        let err = max_abs_diff(vae.denormalize(latents), expected);
        assert!(err <= SAME_OPS_TOL, "chunk {k}: {err:e}");
    }
}

#[test]
fn vae_config_parses_real_and_tiny_configs() {
    let read = |p: std::path::PathBuf| {
        omni::pipeline::checkpoint::read_config::<AutoencoderKLWanConfig>(&p)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (real, unknown) = read(common::fixture("configs/helios-distilled/vae_config.json"));
    assert!(unknown.is_empty(), "unknown keys {unknown:?}");
    // The shipped Helios VAE config is exactly diffusers' defaults.
    let expected = AutoencoderKLWanConfig {
        class_name: Some("AutoencoderKLWan".into()),
        ..Default::default()
    };
    assert_eq!(real, expected);
    assert!(real.validate().is_ok());
    assert_eq!((real.temporal_scale(), real.spatial_scale()), (4, 8));

    let (tiny, unknown) = read(tiny_distilled().join("vae/config.json"));
    assert!(unknown.is_empty(), "unknown keys {unknown:?}");
    assert_eq!((tiny.base_dim, tiny.num_res_blocks), (8, 1));
    assert_eq!((tiny.temporal_scale(), tiny.spatial_scale()), (4, 8));
}

#[test]
fn vae_config_accepts_wan22_and_rejects_bad_patch_channels() {
    // The Wan2.2 VAE (is_residual, patch_size 2, 12 channels) is supported since issue 10 part 2;
    // its parity tests are in tests/autoencoder_kl_wan22.rs.
    let wan22 = AutoencoderKLWanConfig {
        is_residual: true,
        patch_size: Some(2),
        in_channels: 12,
        out_channels: 12,
        ..Default::default()
    };
    assert!(wan22.validate().is_ok());
    assert_eq!((wan22.video_channels(), wan22.spatial_scale()), (3, 16));
    let patched = AutoencoderKLWanConfig {
        patch_size: Some(2),
        ..Default::default()
    };
    assert!(patched.validate().unwrap_err().contains("patch_size"));
    let zero = AutoencoderKLWanConfig {
        patch_size: Some(0),
        ..Default::default()
    };
    assert!(zero.validate().unwrap_err().contains("patch_size"));
    let ok = AutoencoderKLWanConfig {
        patch_size: Some(1),
        ..Default::default()
    };
    assert!(ok.validate().is_ok());
}

#[test]
fn vae_encode_matches_diffusers() {
    let reference = Reference::open("vae_encode.safetensors");
    assert_encode_matches(
        &load_vae(),
        &reference,
        "encode",
        [1, 16, 3, 4, 6],
        ENCODE_TOL,
        "vae",
    );
}

#[test]
fn vae_encode_single_frame_image_matches_diffusers() {
    // I2V encodes the image as a one-frame video: only the first chunk, no time downsampling.
    let reference = Reference::open("vae_encode.safetensors");
    assert_encode_matches(
        &load_vae(),
        &reference,
        "image",
        [1, 16, 1, 4, 6],
        ENCODE_TOL,
        "vae",
    );
}

#[test]
fn vae_encode_chunks_through_one_cache_in_diffusers_order() {
    // `encode` = the encoder over frames [0], [1:5], [5:9] with one cache, then quant_conv.
    // Done by hand here, also checking each chunk's latent count and the downsample3d slots.
    let device = Default::default();
    let vae = load_vae();
    let video = Reference::open("vae_encode.safetensors").tensor::<B, 5>("encode.video", &device);
    let (mean, logvar) = vae.encode(video.clone());

    let mut cache = WanEncoderCache::default();
    let mut outs = Vec::new();
    for (start, len) in [(0, 1), (1, 4), (5, 4)] {
        let out = vae
            .encoder
            .forward(video.clone().narrow(2, start, len), &mut cache);
        assert_eq!(out.dims(), [1, 32, 1, 4, 6], "chunk at frame {start}");
        outs.push(out);
        // Every downsample3d slot holds a frame from the first chunk on.
        for (layer, c) in vae.encoder.down_blocks.iter().zip(&cache.down_blocks) {
            if let WanDownLayer::Resample(down) = layer {
                assert_eq!(c.time_conv.is_empty(), down.time_conv.is_none());
            }
        }
    }
    let enc = vae.quant_conv.forward(Tensor::cat(outs, 2));
    let err_mean = max_abs_diff(enc.clone().narrow(1, 0, 16), mean);
    let err_logvar = max_abs_diff(enc.narrow(1, 16, 16).clamp(-30.0, 20.0), logvar);
    assert!(err_mean <= SAME_OPS_TOL, "mean: {err_mean:e}");
    assert!(err_logvar <= SAME_OPS_TOL, "logvar: {err_logvar:e}");
}

#[test]
fn vae_encode_is_causal_in_time() {
    // The encoder only looks back: encoding the first 1 + 4 frames gives exactly the first 2
    // latent frames of encoding all 9, and the first frame alone gives the first latent frame.
    let device = Default::default();
    let vae = load_vae();
    let video = Reference::open("vae_encode.safetensors").tensor::<B, 5>("encode.video", &device);
    let (mean, logvar) = vae.encode(video.clone());
    for (frames, latents) in [(5, 2), (1, 1)] {
        let (m, l) = vae.encode(video.clone().narrow(2, 0, frames));
        assert_eq!(m.dims(), [1, 16, latents, 4, 6]);
        let err = max_abs_diff(m, mean.clone().narrow(2, 0, latents))
            .max(max_abs_diff(l, logvar.clone().narrow(2, 0, latents)));
        assert!(err <= SAME_OPS_TOL, "{frames} frames: {err:e}");
    }
    // Frames past the last full group of 4 are ignored, as in diffusers.
    let (m, _) = vae.encode(video.narrow(2, 0, 8));
    assert_eq!(m.dims(), [1, 16, 2, 4, 6]);
    assert!(max_abs_diff(m, mean.narrow(2, 0, 2)) <= SAME_OPS_TOL);
}

#[test]
fn vae_sample_is_mean_plus_std_times_noise() {
    let device = Default::default();
    let shape = [1, 2, 1, 1, 3];
    let t = |v: Vec<f32>| Tensor::<B, 5>::from_data(TensorData::new(v, shape), &device);
    let mean = t(vec![0.0, 1.0, -1.0, 2.0, 0.5, -0.5]);
    let logvar = t(vec![0.0, 2.0, -2.0, 0.0, 4.0, -30.0]);
    let noise = t(vec![1.0, 1.0, 2.0, -1.0, 0.5, 3.0]);
    let out: Vec<f32> = AutoencoderKLWan::sample(mean, logvar, noise)
        .into_data()
        .to_vec()
        .unwrap();
    let e = std::f32::consts::E;
    let expected = [1.0, 1.0 + e, -1.0 + 2.0 / e, 1.0, 0.5 + 0.5 * e * e, -0.5];
    for (o, x) in out.iter().zip(expected) {
        assert!((o - x).abs() <= 1e-5, "{out:?} vs {expected:?}");
    }
}

#[test]
fn vae_encode_then_decode_round_trips_shapes() {
    let device = Default::default();
    let vae = load_vae();
    let video = Reference::open("vae_encode.safetensors").tensor::<B, 5>("encode.video", &device);
    let (mean, _) = vae.encode(video.clone());
    let decoded = vae.decode(mean.clone());
    assert_eq!(decoded.dims(), video.dims());
    let values: Vec<f32> = decoded.into_data().to_vec().unwrap();
    assert!(values.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    // normalize → denormalize brings the latents back (the pipeline's conditioning path).
    let back = vae.denormalize(vae.normalize(mean.clone()));
    assert!(max_abs_diff(back, mean) <= 1e-5);
}
