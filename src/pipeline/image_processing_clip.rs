//! CLIP image preprocessing: mirrors transformers 5.24 `models/clip/image_processing_clip.py`
//! `CLIPImageProcessor` (its PIL backend, `CLIPImageProcessorPil`) as
//! `WanImageToVideoPipeline.encode_image` calls it: resize (shortest edge, bicubic) → center crop
//! → rescale `1/255` → normalize by the OpenAI CLIP mean/std. The config is the checkpoint's
//! `image_processor/preprocessor_config.json`, read as shipped (`size` and `crop_size` as an
//! int or a dict, as transformers accepts them).
//!
//! The resize is PIL's own two-pass convolution (Pillow `src/libImaging/Resample.c`:
//! `precompute_coeffs`, `normalize_coeffs_8bpc` with 22 fraction bits, the horizontal pass into
//! 8-bit rows, then the vertical pass) ported in [`pil_resize`], because the `image` crate's
//! Catmull-Rom resize (same kernel, float arithmetic, vertical pass first, no intermediate
//! rounding) differs from PIL by up to 9 levels on noisy images. Pinned by
//! `tests/clip_vision_model.rs` `clip_processor_matches_transformers` (≤ 1e-5 after
//! normalisation, i.e. the same bytes).

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::pipeline::checkpoint::{LoadError, read_config};

/// `size` / `crop_size` as transformers accepts them: an int, `{"shortest_edge": n}` or
/// `{"height": h, "width": w}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeDict {
    /// A bare int (old configs): the shortest edge for `size`, a square for `crop_size`.
    Int(u32),
    /// `{"shortest_edge": n}`.
    ShortestEdge { shortest_edge: u32 },
    /// `{"height": h, "width": w}`.
    HeightWidth { height: u32, width: u32 },
}

/// `image_processor/preprocessor_config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CLIPImageProcessorConfig {
    pub do_resize: bool,
    pub size: SizeDict,
    /// PIL resample filter: 3 = bicubic (CLIP's), 2 = bilinear.
    pub resample: u32,
    pub do_center_crop: bool,
    pub crop_size: SizeDict,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    // Accepted and unused (images are RGB already).
    pub do_convert_rgb: Option<bool>,
    pub image_processor_type: Option<String>,
    pub feature_extractor_type: Option<String>,
    pub processor_class: Option<String>,
}

impl Default for CLIPImageProcessorConfig {
    /// `CLIPImageProcessor.__init__` defaults.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeDict::ShortestEdge { shortest_edge: 224 },
            resample: 3,
            do_center_crop: true,
            crop_size: SizeDict::HeightWidth {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
            do_convert_rgb: None,
            image_processor_type: None,
            feature_extractor_type: None,
            processor_class: None,
        }
    }
}

/// The loaded processor.
#[derive(Debug, Clone)]
pub struct CLIPImageProcessor {
    pub config: CLIPImageProcessorConfig,
    filter: PilFilter,
}

impl CLIPImageProcessor {
    /// From a parsed config.
    ///
    /// # Errors
    /// A resample filter other than bicubic (3) or bilinear (2).
    pub fn new(config: CLIPImageProcessorConfig) -> Result<Self, String> {
        let filter = match config.resample {
            3 => PilFilter::Bicubic,
            2 => PilFilter::Bilinear,
            other => {
                return Err(format!(
                    "resample {other} is not supported (3 = bicubic, 2 = bilinear)"
                ));
            }
        };
        Ok(Self { config, filter })
    }

    /// Read `dir/preprocessor_config.json`.
    ///
    /// # Errors
    /// [`LoadError`] naming the file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("preprocessor_config.json");
        let (config, _) = read_config::<CLIPImageProcessorConfig>(&path)?;
        Self::new(config).map_err(|message| LoadError::Config { path, message })
    }

    /// The side lengths `(height, width)` after [`preprocess`](Self::preprocess).
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        let (h, w) = match self.config.do_resize {
            true => self.resized_size(height, width),
            false => (height, width),
        };
        match self.config.do_center_crop {
            true => crop_hw(self.config.crop_size),
            false => (h, w),
        }
    }

    /// `get_resize_output_image_size(default_to_square=False)`: the shortest edge to `size`,
    /// the other `int(size · long / short)`.
    fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        match self.config.size {
            SizeDict::HeightWidth { height, width } => (height, width),
            SizeDict::Int(s) | SizeDict::ShortestEdge { shortest_edge: s } => {
                let (short, long) = (height.min(width), height.max(width));
                let new_long = (s as u64 * long as u64 / short.max(1) as u64) as u32;
                match height <= width {
                    true => (s, new_long),
                    false => (new_long, s),
                }
            }
        }
    }

    /// `pixel_values` of one image.
    ///
    /// # Shapes
    /// `image: [H, W, 3]` RGB8 → `[3, h, w]` row-major f32 (`h × w` = [`output_size`]).
    ///
    /// [`output_size`]: Self::output_size
    pub fn preprocess(&self, image: &RgbImage) -> Vec<f32> {
        let c = &self.config;
        let mut img = image.clone();
        if c.do_resize {
            let (h, w) = self.resized_size(img.height(), img.width());
            if (w, h) != img.dimensions() {
                img = pil_resize(&img, w, h, self.filter);
            }
        }
        if c.do_center_crop {
            // transformers `center_crop`: top = (H − h) // 2, left = (W − w) // 2 (crops larger
            // than the image are not supported here: the resize makes it at least as large).
            let (ch, cw) = crop_hw(c.crop_size);
            let (h, w) = (img.height(), img.width());
            let top = h.saturating_sub(ch) / 2;
            let left = w.saturating_sub(cw) / 2;
            img = image::imageops::crop_imm(&img, left, top, cw.min(w), ch.min(h)).to_image();
        }
        let (w, h) = img.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for ch in 0..3 {
                let mut v = px.0[ch] as f64;
                if c.do_rescale {
                    v *= c.rescale_factor;
                }
                if c.do_normalize {
                    v = (v - c.image_mean[ch]) / c.image_std[ch];
                }
                out[ch * plane + i] = v as f32;
            }
        }
        out
    }
}

fn crop_hw(size: SizeDict) -> (u32, u32) {
    match size {
        SizeDict::Int(s) | SizeDict::ShortestEdge { shortest_edge: s } => (s, s),
        SizeDict::HeightWidth { height, width } => (height, width),
    }
}

/// One frame of `[3, frames, H, W]` f32 pixels in `[-1, 1]` (as [`crate::pipeline::request::
/// ConditioningPixels`] holds them) back to RGB8: `round((x + 1) / 2 · 255)`, the exact inverse
/// of `2·v/255 − 1` on 8-bit values.
///
/// # Panics
/// If `data` is shorter than `3 · frames · height · width`.
pub fn frame_to_rgb8(
    data: &[f32],
    frames: usize,
    frame: usize,
    height: usize,
    width: usize,
) -> RgbImage {
    let plane = height * width;
    let mut raw = vec![0u8; plane * 3];
    for i in 0..plane {
        for c in 0..3 {
            let x = data[(c * frames + frame) * plane + i];
            raw[i * 3 + c] = ((x + 1.0) / 2.0 * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage::from_raw(width as u32, height as u32, raw).expect("buffer sized above")
}

/// A PIL resampling filter (`Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `BILINEAR` (2): the triangle filter, support 1.
    Bilinear,
    /// `BICUBIC` (3): the cubic convolution kernel with `a = −0.5`, support 2.
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    /// Pillow `bilinear_filter` / `bicubic_filter`.
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => (1.0 - x).max(0.0),
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit images (`32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: per output pixel the
/// first input pixel and its fixed-point weights.
fn precompute_coeffs(in_size: u32, out_size: u32, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // `(int)(center ∓ support + 0.5)`: C truncation toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| filter.eval((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if ww != 0.0 { v / ww } else { v };
                    let f = v * (1u64 << PRECISION_BITS) as f64;
                    (if v < 0.0 { -0.5 + f } else { 0.5 + f }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// Pillow `clip8`: the fixed-point sum back to a byte.
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((width, height), filter)` of an RGB8 image (`reducing_gap=None`, whole
/// image box): the horizontal pass first (rounded to bytes), then the vertical one.
pub fn pil_resize(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    let (w0, h0) = img.dimensions();
    let mut cur = img.clone();
    let half = 1i64 << (PRECISION_BITS - 1);
    if width != w0 {
        let coeffs = precompute_coeffs(w0, width, filter);
        let mut out = RgbImage::new(width, h0);
        for y in 0..h0 {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut px = [0u8; 3];
                for (c, p) in px.iter_mut().enumerate() {
                    let ss = k.iter().enumerate().fold(half, |ss, (i, &kv)| {
                        ss + cur.get_pixel((xmin + i) as u32, y).0[c] as i64 * kv as i64
                    });
                    *p = clip8(ss);
                }
                out.put_pixel(xx as u32, y, image::Rgb(px));
            }
        }
        cur = out;
    }
    if height != h0 {
        let coeffs = precompute_coeffs(h0, height, filter);
        let mut out = RgbImage::new(cur.width(), height);
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cur.width() {
                let mut px = [0u8; 3];
                for (c, p) in px.iter_mut().enumerate() {
                    let ss = k.iter().enumerate().fold(half, |ss, (i, &kv)| {
                        ss + cur.get_pixel(x, (ymin + i) as u32).0[c] as i64 * kv as i64
                    });
                    *p = clip8(ss);
                }
                out.put_pixel(x, yy as u32, image::Rgb(px));
            }
        }
        cur = out;
    }
    cur
}
