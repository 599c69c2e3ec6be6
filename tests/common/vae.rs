//! The `AutoencoderKLWan` parity checks the Wan2.1 and Wan2.2 VAE tests share
//! (`tests/autoencoder_kl_wan.rs`, `tests/autoencoder_kl_wan22.rs`), on references written by the
//! fixture scripts with the keys `decode.z`, and per encode case `{case}.video`, `.mean`,
//! `.logvar` (and `.noise`, `.sample` for the sampled case).

use burn::tensor::Tensor;
use omni::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;

use super::{Reference, TestBackend, max_abs_diff};

type B = TestBackend;

/// `vae.decode(decode.z)` has `dims` `[B, 3, T, H, W]` and matches the reference `out` ≤ `tol`
/// (the error is printed after `label`).
pub fn assert_decode_matches(
    vae: &AutoencoderKLWan<B>,
    reference: &Reference,
    out: &str,
    dims: [usize; 5],
    tol: f64,
    label: &str,
) {
    let device = Default::default();
    let z = reference.tensor::<B, 5>("decode.z", &device);
    let expected = reference.tensor::<B, 5>(out, &device);
    let got = vae.decode(z);
    assert_eq!(got.dims(), dims);
    let err = max_abs_diff(got, expected);
    println!("{label} decode max abs error vs diffusers: {err:.3e}");
    assert!(err <= tol, "max abs error {err:e} > {tol:e}");
}

/// `decode_streaming` of the reference's `decode.z` (3 latent frames) delivers 1, 4 and 4 video
/// frames starting at 0, 1 and 5, which together equal one `decode` within `tol`.
pub fn assert_streaming_decode_equals_decode(
    vae: &AutoencoderKLWan<B>,
    reference: &Reference,
    tol: f64,
) {
    let z = reference.tensor::<B, 5>("decode.z", &Default::default());
    let full = vae.decode(z.clone());
    let mut starts = Vec::new();
    let mut parts = Vec::new();
    vae.decode_streaming(z, &|| Ok(()), |start, frames| {
        starts.push((start, frames.dims()[2]));
        parts.push(frames);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(starts, vec![(0, 1), (1, 4), (5, 4)]);
    let err = max_abs_diff(Tensor::cat(parts, 2), full);
    assert!(err <= tol, "streaming differs from decode by {err:e}");
}

/// `vae.encode({case}.video)`: mean and logvar of `dims` `[B, z_dim, T, H, W]` match
/// `{case}.mean` / `{case}.logvar` ≤ `tol`, and, where the reference has `{case}.noise`, the
/// sample with that injected draw matches `{case}.sample` (errors printed after `label`).
pub fn assert_encode_matches(
    vae: &AutoencoderKLWan<B>,
    reference: &Reference,
    case: &str,
    dims: [usize; 5],
    tol: f64,
    label: &str,
) {
    let device = Default::default();
    let (mean, logvar) = vae.encode(reference.tensor::<B, 5>(&format!("{case}.video"), &device));
    assert_eq!(mean.dims(), dims);
    assert_eq!(logvar.dims(), dims);
    let mut got = vec![("mean", mean.clone()), ("logvar", logvar.clone())];
    if reference.has(&format!("{case}.noise")) {
        // DiagonalGaussianDistribution.sample() with diffusers' randn_tensor draw injected.
        let noise = reference.tensor::<B, 5>(&format!("{case}.noise"), &device);
        got.push(("sample", AutoencoderKLWan::sample(mean, logvar, noise)));
    }
    for (name, got) in got {
        let key = format!("{case}.{name}");
        let err = max_abs_diff(got, reference.tensor::<B, 5>(&key, &device));
        println!("{label} {key} max abs error vs diffusers: {err:.3e}");
        assert!(err <= tol, "{key}: max abs error {err:e} > {tol:e}");
    }
}
