//! The Wan2.2 VAE (`AutoencoderKLWan` with `is_residual`, `z_dim = 48`, `patch_size = 2`,
//! 12 channels: `WanResidualDownBlock` / `WanResidualUpBlock` with the `AvgDown3D` / `DupUp3D`
//! shortcuts, patchify / unpatchify) against diffusers 0.42.1, fp32 on Flex, on the tiny VAE of
//! `tests/fixtures/tiny-wan2.2-ti2v/vae` (base_dim 4, decoder_base_dim 6, dim_mult [1,2,4,4],
//! num_res_blocks 1, temperal_downsample [F,T,T]).
//!
//! References: `tests/fixtures/make_wan_ti2v.py` `make_vae_reference` (seed 0):
//! `reference/vae_wan22.safetensors` holds `decode.z [1,48,3,2,3]` → `decode.out [1,3,9,32,48]`,
//! `encode.video [1,3,9,32,48]` → `encode.mean/.logvar [1,48,3,2,3]` (+ `encode.noise`,
//! `encode.sample`), and a single-frame `image.video [1,3,1,32,48]` → `image.mean/.logvar`.
//!
//! Run: `cargo test --release --test autoencoder_kl_wan22`.

mod common;

use burn::tensor::Tensor;
use common::vae::{
    assert_decode_matches, assert_encode_matches, assert_streaming_decode_equals_decode,
};
use common::{Reference, TestBackend, fixture, max_abs_diff};
use omni::pipeline::models::autoencoder_kl_wan::{AutoencoderKLWan, patchify, unpatchify};

type B = TestBackend;

/// Parity bound for decode and encode. Both sides fp32; ~25 stacked convs, RMS norms and one
/// attention per direction with outputs of order 1, summed in other orders than PyTorch's CPU
/// kernels (observed errors are printed). A layout, shortcut or cache bug gives ≥ 1e-2.
const TOL: f64 = 1e-4;

/// Same ops on the same data: only reshapes and copies.
const SAME_OPS_TOL: f64 = 1e-6;

fn load_vae() -> AutoencoderKLWan<B> {
    let device = Default::default();
    AutoencoderKLWan::<B>::load(&fixture("tiny-wan2.2-ti2v/vae"), &device)
        .expect("tiny Wan2.2 VAE loads")
}

#[test]
fn wan22_vae_config_reads_as_shipped() {
    let vae = load_vae();
    let c = vae.config();
    assert!(c.is_residual);
    assert_eq!((c.z_dim, c.patch(), c.video_channels()), (48, 2, 3));
    assert_eq!((c.temporal_scale(), c.spatial_scale()), (4, 16));
    assert_eq!(c.scale_factor_spatial, Some(16));
    assert_eq!(c.latents_mean.len(), 48);
}

#[test]
fn wan22_vae_decode_matches_diffusers() {
    let reference = Reference::open("vae_wan22.safetensors");
    assert_decode_matches(
        &load_vae(),
        &reference,
        "decode.out",
        [1, 3, 9, 32, 48],
        TOL,
        "wan2.2 vae",
    );
}

#[test]
fn wan22_vae_streaming_decode_equals_decode() {
    // Latent frame 0 → 1 video frame (DupUp3D drops its first frames), later ones → 4.
    let reference = Reference::open("vae_wan22.safetensors");
    assert_streaming_decode_equals_decode(&load_vae(), &reference, SAME_OPS_TOL);
}

#[test]
fn wan22_vae_encode_matches_diffusers() {
    let vae = load_vae();
    let reference = Reference::open("vae_wan22.safetensors");
    assert_encode_matches(
        &vae,
        &reference,
        "encode",
        [1, 48, 3, 2, 3],
        TOL,
        "wan2.2 vae",
    );
    // A single frame (an image): the first chunk alone, AvgDown3D padding one frame in front.
    assert_encode_matches(
        &vae,
        &reference,
        "image",
        [1, 48, 1, 2, 3],
        TOL,
        "wan2.2 vae",
    );
}

#[test]
fn patchify_folds_pixels_as_diffusers_and_unpatchify_inverts_it() {
    let device = Default::default();
    // x[0, c, 0, y, x] = 100c + 10y + x on a [1, 2, 1, 2, 4] video.
    let values: Vec<f32> = (0..2)
        .flat_map(|c| (0..2).flat_map(move |y| (0..4).map(move |x| (100 * c + 10 * y + x) as f32)))
        .collect();
    let x = Tensor::<B, 5>::from_data(
        burn::tensor::TensorData::new(values, [1, 2, 1, 2, 4]),
        &device,
    );
    let p = patchify(x.clone(), 2);
    assert_eq!(p.dims(), [1, 8, 1, 1, 2]);
    // diffusers (`permute(0, 1, 6, 4, 2, 3, 5)`): channel c·4 + j·2 + i holds the pixel at row
    // offset i, column offset j.
    let got: Vec<f32> = p.clone().into_data().to_vec().unwrap();
    // [1, 8, 1, 1, 2]: per channel two column blocks.
    let want_ordered: Vec<f32> = (0..8)
        .flat_map(|ch| {
            let (c, j, i) = (ch / 4, (ch / 2) % 2, ch % 2);
            (0..2).map(move |bx| (100 * c + 10 * i + 2 * bx + j) as f32)
        })
        .collect();
    assert_eq!(got, want_ordered);
    let back = unpatchify(p, 2);
    assert_eq!(max_abs_diff(back, x), 0.0);
}
