//! `WanTransformer3DModel` parity with diffusers 0.42.1: the tiny T2V transformer of
//! `tests/fixtures/tiny-wan2.1-t2v/transformer` and the tiny image-conditioned ones of
//! `tests/fixtures/reference/wan_transformer_{i2v,flf2v}`, against
//! `tests/fixtures/reference/transformer_wan.safetensors` (made by `tests/fixtures/make_wan.py`
//! `make_transformer_reference`; its docstring gives the shapes).
//!
//! Cases: `t2v` (batch 2, two timesteps, 7 text tokens), `i2v` (36 input channels, CLIP-like
//! image tokens through `image_embedder` and the `add_k_proj`/`add_v_proj` cross-attention),
//! `flf2v` (the same with `pos_embed`: two images per sample), `ti2v` (the T2V transformer with
//! Wan2.2 TI2V per-token timesteps, `[1, 18]`).

mod common;

use burn::tensor::Tensor;
use common::{Reference, TestBackend, fixture, max_abs_diff};
use omni::pipeline::models::transformer_wan::WanTransformer3DModel;

type B = TestBackend;

/// Largest allowed |Rust − diffusers| per output element, f32 on both sides: different summation
/// orders (matmul blocking, conv as GEMM, SDPA) and libm; two blocks stay well below it.
const MAX_ABS_ERR: f64 = 1e-4;

fn run_case(case: &str, dir: std::path::PathBuf) -> f64 {
    let device = Default::default();
    let model = WanTransformer3DModel::<B>::load(&dir, &device).expect("tiny transformer loads");
    let r = Reference::open("transformer_wan.safetensors");
    let name = |t: &str| format!("{case}.{t}");
    let hidden_states: Tensor<B, 5> = r.tensor(&name("hidden_states"), &device);
    let timestep: Vec<f32> = r
        .f64s(&name("timestep"))
        .1
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let text: Tensor<B, 3> = r.tensor(&name("encoder_hidden_states"), &device);
    let image = r
        .has(&name("encoder_hidden_states_image"))
        .then(|| r.tensor::<B, 3>(&name("encoder_hidden_states_image"), &device));
    assert_eq!(model.takes_image_embeds(), image.is_some());
    let expected: Tensor<B, 5> = r.tensor(&name("out"), &device);
    let out = model.forward(hidden_states, &timestep, text, image);
    let err = max_abs_diff(out, expected);
    eprintln!("transformer_wan {case}: max abs error {err:.3e}");
    err
}

#[test]
fn t2v_matches_diffusers() {
    let err = run_case("t2v", fixture("tiny-wan2.1-t2v/transformer"));
    assert!(err <= MAX_ABS_ERR, "t2v: max abs error {err:e}");
}

#[test]
fn i2v_with_image_embeddings_matches_diffusers() {
    let err = run_case("i2v", fixture("reference/wan_transformer_i2v"));
    assert!(err <= MAX_ABS_ERR, "i2v: max abs error {err:e}");
}

#[test]
fn flf2v_with_pos_embed_matches_diffusers() {
    let err = run_case("flf2v", fixture("reference/wan_transformer_flf2v"));
    assert!(err <= MAX_ABS_ERR, "flf2v: max abs error {err:e}");
}

#[test]
fn per_token_timesteps_match_diffusers() {
    // Wan2.2 TI2V's `expand_timesteps`: timestep [1, 18], the first latent frame's tokens at 0.
    let err = run_case("ti2v", fixture("tiny-wan2.1-t2v/transformer"));
    assert!(err <= MAX_ABS_ERR, "ti2v: max abs error {err:e}");
}
