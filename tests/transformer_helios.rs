//! `HeliosTransformer3DModel` parity with diffusers 0.42.1 on the tiny Distilled checkpoint
//! (`tests/fixtures/tiny-helios-distilled/transformer`), against
//! `tests/fixtures/reference/transformer.safetensors` (made by `tests/fixtures/make_fixtures.py`
//! `make_transformer_reference`; see its header for the recipe).
//!
//! Cases: `nohist` (no history, no indices), `hist` (8×8 latents with the pipeline's history and
//! indices), `pad` (12×20: replicate padding of the long history input and RoPE table), `padmid`
//! (10×18: also pads the mid history input and RoPE table).

mod common;

use burn::tensor::Tensor;
use common::{Reference, TestBackend, max_abs_diff, tiny_distilled};
use omni::pipeline::models::transformer_helios::{
    HeliosTransformer3DModel, HeliosTransformer3DModelConfig, HistoryInputs,
};

type B = TestBackend;

/// Largest allowed |Rust − diffusers| per output element, f32 on both sides: the two sides sum
/// in different orders (matmul blocking, conv as GEMM, SDPA) and the RoPE/timestep tables are
/// built with different libm implementations (≤ 1 ulp each); over two blocks that stays well
/// below 1e-4 on outputs of magnitude ~1.
const MAX_ABS_ERR: f64 = 1e-4;

fn transformer_dir() -> std::path::PathBuf {
    tiny_distilled().join("transformer")
}

fn run_case(case: &str) -> f64 {
    let device = Default::default();
    let model = HeliosTransformer3DModel::<B>::load(&transformer_dir(), &device)
        .expect("tiny transformer loads");
    let reference = Reference::open("transformer.safetensors");
    let name = |t: &str| format!("{case}.{t}");

    let hidden_states: Tensor<B, 5> = reference.tensor(&name("hidden_states"), &device);
    let timestep: Vec<f32> = reference
        .f64s(&name("timestep"))
        .1
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let encoder_hidden_states: Tensor<B, 3> =
        reference.tensor(&name("encoder_hidden_states"), &device);
    let expected: Tensor<B, 5> = reference.tensor(&name("output"), &device);

    // diffusers: indices_hidden_states=None → arange(post_patch_num_frames).
    let indices = if reference.has(&name("indices_hidden_states")) {
        reference.i64s(&name("indices_hidden_states"))
    } else {
        let frames = hidden_states.dims()[2] / model.config().patch_size[0];
        (0..frames as i64).collect()
    };
    let history = reference
        .has(&name("latents_history_short"))
        .then(|| HistoryInputs {
            latents_history_short: reference.tensor(&name("latents_history_short"), &device),
            latents_history_mid: reference.tensor(&name("latents_history_mid"), &device),
            latents_history_long: reference.tensor(&name("latents_history_long"), &device),
            indices_latents_history_short: reference.i64s(&name("indices_latents_history_short")),
            indices_latents_history_mid: reference.i64s(&name("indices_latents_history_mid")),
            indices_latents_history_long: reference.i64s(&name("indices_latents_history_long")),
        });

    let text = model.project_text(encoder_hidden_states);
    let output = model.forward(hidden_states, &timestep, text, &indices, history.as_ref());
    let err = max_abs_diff(output, expected);
    eprintln!("transformer {case}: max abs error {err:.3e}");
    err
}

#[test]
fn matches_diffusers_without_history() {
    let err = run_case("nohist");
    assert!(err <= MAX_ABS_ERR, "nohist: max abs error {err:e}");
}

#[test]
fn matches_diffusers_with_history() {
    let err = run_case("hist");
    assert!(err <= MAX_ABS_ERR, "hist: max abs error {err:e}");
}

#[test]
fn matches_diffusers_with_replicate_padded_long_history() {
    let err = run_case("pad");
    assert!(err <= MAX_ABS_ERR, "pad: max abs error {err:e}");
}

#[test]
fn matches_diffusers_with_replicate_padded_mid_history() {
    let err = run_case("padmid");
    assert!(err <= MAX_ABS_ERR, "padmid: max abs error {err:e}");
}

#[test]
fn tiny_config_parses_and_validates() {
    let (config, unknown) =
        omni::pipeline::checkpoint::read_config::<HeliosTransformer3DModelConfig>(
            &transformer_dir().join("config.json"),
        )
        .expect("config parses");
    assert!(unknown.is_empty(), "unknown keys {unknown:?}");
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.inner_dim(), 24);
    assert_eq!(config.rope_dim, [4, 4, 4]);
}

/// Copy the tiny transformer folder into a temp dir, rewriting the weights with `edit` applied to
/// the (name → (shape, f32 values)) map.
fn edited_checkpoint(
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) -> tempfile::TempDir {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let src = transformer_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), vals));
    }
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (shape, vals))| {
            let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, shape, bytes)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        None,
        &tmp.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    tmp
}

#[test]
fn missing_tensor_is_named_in_the_load_error() {
    let tmp = edited_checkpoint(|t| {
        t.remove("blocks.1.attn2.to_out.0.bias")
            .expect("key exists");
    });
    let err = HeliosTransformer3DModel::<B>::load(tmp.path(), &Default::default())
        .expect_err("load must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("blocks.1.attn2.to_out.bias") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn wrongly_shaped_tensor_is_named_in_the_load_error() {
    let tmp = edited_checkpoint(|t| {
        let (shape, vals) = t.get_mut("blocks.0.scale_shift_table").expect("key exists");
        // [1, 6, 24] → [1, 5, 24]
        shape[1] = 5;
        vals.truncate(5 * 24);
    });
    let err = HeliosTransformer3DModel::<B>::load(tmp.path(), &Default::default())
        .expect_err("load must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("blocks.0.scale_shift_table") && msg.contains("shape"),
        "{msg}"
    );
}

#[test]
fn unsupported_config_is_rejected_at_load() {
    let tmp = edited_checkpoint(|_| {});
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"added_kv_proj_dim\": null", "\"added_kv_proj_dim\": 8"),
    )
    .unwrap();
    let err = HeliosTransformer3DModel::<B>::load(tmp.path(), &Default::default())
        .expect_err("load must fail");
    assert!(err.to_string().contains("added_kv_proj_dim"), "{err}");
}
