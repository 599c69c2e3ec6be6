//! `CLIPVisionModel` (the Wan2.1 I2V image encoder) and `CLIPImageProcessor` against transformers
//! 5.24: the tiny CLIP of `tests/fixtures/tiny-wan2.1-i2v/image_encoder` (hidden 16, 3 layers,
//! 28 px, patch 14, gelu) on random pixels, and the processor of its `image_processor/` on a
//! random 48×32 image (resize shortest edge 32 → 28, center crop 28). Reference:
//! `reference/clip_vision.safetensors` from `tests/fixtures/make_wan_i2v.py` `make_clip_reference`.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{Reference, TestBackend, fixture, max_abs_diff};
use omni::pipeline::image_processing_clip::CLIPImageProcessor;
use omni::pipeline::models::clip_vision_model::CLIPVisionModel;

/// f32 forward through 3 layers of width 16: well below this.
const MAX_ABS_ERR: f64 = 1e-4;
/// The processor ports PIL's fixed-point resize: the same bytes, so only f32 rounding of the
/// normalisation remains.
const MAX_PIXEL_ERR: f64 = 1e-5;

fn model() -> CLIPVisionModel<TestBackend> {
    CLIPVisionModel::load(
        &fixture("tiny-wan2.1-i2v/image_encoder"),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn penultimate_hidden_state_matches_transformers() {
    let r = Reference::open("clip_vision.safetensors");
    let device = Default::default();
    let pixels: Tensor<TestBackend, 4> = r.tensor("pixel_values", &device);
    let m = model();
    let got = m.penultimate_hidden_state(pixels.clone());
    let want: Tensor<TestBackend, 3> = r.tensor("hidden_states_m2", &device);
    assert_eq!(got.dims(), [2, 5, 16]);
    let err = max_abs_diff(got, want);
    eprintln!("hidden_states[-2] max abs err {err:.2e}");
    assert!(err <= MAX_ABS_ERR, "hidden_states[-2] err {err}");
    let err = max_abs_diff(
        m.last_hidden_state(pixels),
        r.tensor::<TestBackend, 3>("last_hidden_state", &device),
    );
    eprintln!("last_hidden_state max abs err {err:.2e}");
    assert!(err <= MAX_ABS_ERR, "last_hidden_state err {err}");
}

#[test]
fn clip_processor_matches_transformers() {
    let r = Reference::open("clip_vision.safetensors");
    let (frames, w, h) = common::input_frames(&r, "processor.image");
    let img = image::RgbImage::from_raw(w as u32, h as u32, frames[0].clone()).unwrap();
    let p = CLIPImageProcessor::load(&fixture("tiny-wan2.1-i2v/image_processor")).unwrap();
    assert_eq!(p.output_size(32, 48), (28, 28));
    let got = p.preprocess(&img);
    let (shape, want) = r.f64s("processor.pixel_values");
    assert_eq!(shape, vec![1, 3, 28, 28]);
    assert_eq!(got.len(), want.len());
    let err = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    let mean = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .sum::<f64>()
        / got.len() as f64;
    eprintln!("pixel_values max abs err {err:.4}, mean {mean:.5}");
    assert!(err <= MAX_PIXEL_ERR, "pixel_values err {err}");
}

#[test]
fn processor_without_resize_is_exact_rescale_and_normalize() {
    // An image already at the crop size only goes through rescale and normalize: exact.
    let p = CLIPImageProcessor::load(&fixture("tiny-wan2.1-i2v/image_processor")).unwrap();
    let raw: Vec<u8> = (0..28 * 28 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let img = image::RgbImage::from_raw(28, 28, raw.clone()).unwrap();
    let got = p.preprocess(&img);
    let mean = [0.48145466, 0.4578275, 0.40821073];
    let std = [0.26862954, 0.26130258, 0.27577711];
    for c in 0..3 {
        for i in 0..28 * 28 {
            let want = (raw[i * 3 + c] as f64 / 255.0 - mean[c]) / std[c];
            assert!((got[c * 784 + i] as f64 - want).abs() < 1e-6);
        }
    }
    let _ = TensorData::new(got, [3, 28, 28]);
}
