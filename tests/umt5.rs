//! UMT5 text encoder and prompt encoding parity against transformers 5.23 / diffusers 0.42.1.
//!
//! Fixtures: `tests/fixtures/tiny-helios-distilled/text_encoder` (2-layer UMT5, d_model 32) and
//! `tests/fixtures/reference/umt5.safetensors`, both written by `tests/fixtures/make_fixtures.py`
//! (`make_umt5_reference`): `last_hidden_state` of `UMT5EncoderModel(input_ids, attention_mask)`
//! with a padded second row, and `prompt_embeds` of `HeliosPyramidPipeline.encode_prompt(PROMPT,
//! max_sequence_length=512)`.

mod common;

use burn::tensor::{Int, Tensor};
use common::{Reference, TestBackend, max_abs_diff, tiny_distilled};
use omni::pipeline::checkpoint::{LoadError, read_config};
use omni::pipeline::models::umt5::{
    FfnActivation, UMT5Config, UMT5EncoderModel, relative_position_bucket,
};
use omni::pipeline::text_encoding::encode_prompt;
use omni::pipeline::tokenizer::PromptTokenizer;

/// f32 on both sides, 2 layers of d_model 32: differences are summation-order rounding only.
const TOL: f64 = 1e-4;

const PROMPT: &str = "A serene lakeside sunrise with mist over the water.";

fn load() -> UMT5EncoderModel<TestBackend> {
    UMT5EncoderModel::load(&tiny_distilled().join("text_encoder"), &Default::default())
        .expect("tiny text encoder loads")
}

#[test]
fn umt5_tiny_matches_transformers() {
    let device = Default::default();
    let model = load();
    let reference = Reference::open("umt5.safetensors");
    let ids: Tensor<TestBackend, 2, Int> = reference.int_tensor("input_ids", &device);
    let mask: Tensor<TestBackend, 2, Int> = reference.int_tensor("attention_mask", &device);
    let expected: Tensor<TestBackend, 3> = reference.tensor("last_hidden_state", &device);
    let mask_values = reference.i64s("attention_mask");
    assert!(
        mask_values.contains(&0),
        "the fixture should exercise the padding mask"
    );
    let got = model.forward(ids, mask);
    assert_eq!(got.dims(), [2, 12, 32]);
    let err = max_abs_diff(got, expected);
    println!("umt5 last_hidden_state max abs err {err:e}");
    assert!(err <= TOL, "max abs err {err} > {TOL}");
}

#[test]
fn encode_prompt_matches_diffusers() {
    let device = Default::default();
    let model = load();
    let tokenizer = PromptTokenizer::from_dir(&tiny_distilled().join("tokenizer")).unwrap();
    let reference = Reference::open("umt5.safetensors");
    let expected: Tensor<TestBackend, 3> = reference.tensor("prompt_embeds", &device);
    let got = encode_prompt(&tokenizer, &model, PROMPT, 512, &device).unwrap();
    assert_eq!(got.dims(), [1, 512, 32]);
    // Rows past the prompt's tokens are exactly zero.
    let seq_len = tokenizer.encode(PROMPT, 512).unwrap().seq_len;
    let tail: Vec<f32> = got
        .clone()
        .narrow(1, seq_len, 512 - seq_len)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(tail.iter().all(|&v| v == 0.0), "padded rows must be zero");
    let err = max_abs_diff(got, expected);
    println!("encode_prompt max abs err {err:e}");
    assert!(err <= TOL, "max abs err {err} > {TOL}");
}

#[test]
fn padding_does_not_change_real_token_outputs() {
    // The mask removes padded keys, so real positions are the same at any padded length.
    let device = Default::default();
    let model = load();
    let ids = [5i64, 17, 99, 1];
    let short = model.forward(
        Tensor::from_data([ids], &device),
        Tensor::from_data([[1i64; 4]], &device),
    );
    let mut padded_ids = [0i64; 9];
    padded_ids[..4].copy_from_slice(&ids);
    let mut mask = [0i64; 9];
    mask[..4].fill(1);
    let long = model.forward(
        Tensor::from_data([padded_ids], &device),
        Tensor::from_data([mask], &device),
    );
    let err = max_abs_diff(long.narrow(1, 0, 4), short);
    assert!(err <= 1e-5, "max abs err {err}");
}

#[test]
fn relative_position_buckets_match_torch() {
    // Bucket edges from transformers' `_relative_position_bucket` (bidirectional, 32 buckets,
    // max distance 128) on offsets -600..=600: (first offset of a run, bucket).
    let edges: &[(i64, i64)] = &[
        (-600, 15),
        (-90, 14),
        (-63, 13),
        (-45, 12),
        (-31, 11),
        (-22, 10),
        (-15, 9),
        (-11, 8),
        (-7, 7),
        (-6, 6),
        (-5, 5),
        (-4, 4),
        (-3, 3),
        (-2, 2),
        (-1, 1),
        (0, 0),
        (1, 17),
        (2, 18),
        (3, 19),
        (4, 20),
        (5, 21),
        (6, 22),
        (7, 23),
        (8, 24),
        (12, 25),
        (16, 26),
        (23, 27),
        (32, 28),
        (46, 29),
        (64, 30),
        (91, 31),
    ];
    for rel in -600i64..=600 {
        let expected = edges
            .iter()
            .rev()
            .find(|(start, _)| *start <= rel)
            .unwrap()
            .1;
        assert_eq!(
            relative_position_bucket(rel, 32, 128),
            expected,
            "offset {rel}"
        );
    }
}

#[test]
fn real_umt5_xxl_config_parses() {
    let path = common::fixture("configs/helios-distilled/text_encoder_config.json");
    let (config, unknown) = read_config::<UMT5Config>(&path).unwrap();
    assert!(unknown.is_empty(), "unknown keys: {unknown:?}");
    assert_eq!(
        (
            config.d_model,
            config.num_layers,
            config.num_heads,
            config.d_kv,
            config.d_ff
        ),
        (4096, 24, 64, 64, 10240)
    );
    assert_eq!(config.vocab_size, 256384);
    assert_eq!(config.validate(), Ok(FfnActivation::GeluTanh));
    let (tiny, unknown) =
        read_config::<UMT5Config>(&tiny_distilled().join("text_encoder/config.json")).unwrap();
    assert!(unknown.is_empty(), "unknown keys: {unknown:?}");
    assert_eq!(tiny.validate(), Ok(FfnActivation::GeluTanh));
}

#[test]
fn non_gated_feed_forward_is_rejected_by_name() {
    let err = FfnActivation::from_feed_forward_proj("relu").unwrap_err();
    assert!(err.contains("relu") && err.contains("gated"), "{err}");
    let err = FfnActivation::from_feed_forward_proj("gated-tanh").unwrap_err();
    assert!(err.contains("tanh"), "{err}");
    assert_eq!(
        FfnActivation::from_feed_forward_proj("gated-gelu"),
        Ok(FfnActivation::GeluTanh)
    );
}

#[test]
fn missing_weights_are_reported_with_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_distilled().join("text_encoder/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = UMT5EncoderModel::<TestBackend>::load(dir.path(), &Default::default()).unwrap_err();
    assert!(matches!(err, LoadError::Weights(_)), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
