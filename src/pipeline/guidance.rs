//! Classifier-free guidance and CFG-Zero* as pure tensor functions (style rule 8).
//!
//! Mirrors the guidance lines of diffusers 0.42.1 `pipelines/helios/pipeline_helios.py`
//! (`HeliosPipeline.__call__`: `noise_uncond + guidance_scale * (noise_pred - noise_uncond)`) and
//! `pipelines/helios/pipeline_helios_pyramid.py` (`HeliosPyramidPipeline.__call__` with
//! `is_cfg_zero_star`, and its module-level `optimized_scale`; CFG-Zero* is arXiv 2503.18886).
//!
//! # Shapes
//! All functions take model outputs `v_cond`, `v_uncond: [B, …]` of the same shape (`[B, C, T, H,
//! W]` in the pipelines) and return that shape; the CFG-Zero* scale is per sample.
//!
//! # Precision
//! diffusers computes `optimized_scale` in float32 (`.float()`), then casts `s*` to the model-output
//! dtype before the combination, which runs in the model-output dtype (bf16 with a bf16 DiT). Here
//! everything runs in the tensors' dtype: pass float32 outputs for the float32 scale. Parity with
//! the pipeline lines is pinned by `tests/guidance.rs` against `reference/guidance.safetensors`.
//!
//! # Zero-init
//! Under CFG-Zero*'s zero-init (`use_zero_init`, pyramid stage 0, step `i ≤ zero_steps`) diffusers
//! still runs both forwards and then returns `v_cond · 0`. The result does not depend on the
//! forwards (unless they produce inf/NaN), so a pipeline may skip them when
//! [`Guidance::zero_init_applies`] holds and use [`zero_init`] on any tensor of the right shape.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The `+ 1e-8` of `optimized_scale`'s squared norm.
pub const OPTIMIZED_SCALE_EPS: f64 = 1e-8;

/// Standard classifier-free guidance: `v_uncond + scale·(v_cond − v_uncond)`.
///
/// The pipelines apply it only when `scale > 1` (`do_classifier_free_guidance`); this function
/// applies it for any scale (`scale = 1` returns `v_cond` up to rounding).
pub fn cfg<B: Backend, const D: usize>(
    v_cond: Tensor<B, D>,
    v_uncond: Tensor<B, D>,
    scale: f64,
) -> Tensor<B, D> {
    v_uncond.clone() + (v_cond - v_uncond) * scale
}

/// diffusers `optimized_scale(positive_flat, negative_flat)`: per sample,
/// `s* = ⟨v_cond, v_uncond⟩ / (‖v_uncond‖² + 1e-8)` over all non-batch elements.
///
/// Returns `[B, 1, …, 1]` (rank `D`, broadcastable against the inputs), like the pipeline's
/// `alpha.view(batch_size, 1, 1, 1, 1)`.
pub fn optimized_scale<B: Backend, const D: usize>(
    v_cond: &Tensor<B, D>,
    v_uncond: &Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = v_cond.dims();
    assert_eq!(
        dims,
        v_uncond.dims(),
        "optimized_scale: v_cond and v_uncond shapes differ"
    );
    let batch = dims[0];
    let per_sample: usize = dims[1..].iter().product();
    let pos: Tensor<B, 2> = v_cond.clone().reshape([batch, per_sample]);
    let neg: Tensor<B, 2> = v_uncond.clone().reshape([batch, per_sample]);
    let dot = (pos * neg.clone()).sum_dim(1); // [B, 1]
    let squared_norm = neg.powi_scalar(2).sum_dim(1) + OPTIMIZED_SCALE_EPS; // [B, 1]
    let st = dot / squared_norm;
    let mut shape = [1usize; D];
    shape[0] = batch;
    st.reshape(shape)
}

/// CFG-Zero* without zero-init: `s*·v_uncond + scale·(v_cond − s*·v_uncond)` with `s*` from
/// [`optimized_scale`].
pub fn cfg_zero_star<B: Backend, const D: usize>(
    v_cond: Tensor<B, D>,
    v_uncond: Tensor<B, D>,
    scale: f64,
) -> Tensor<B, D> {
    let st = optimized_scale(&v_cond, &v_uncond);
    let scaled_uncond = v_uncond * st;
    scaled_uncond.clone() + (v_cond - scaled_uncond) * scale
}

/// The zero-init output, `v · 0.0` (diffusers `noise_pred_text * 0.0`).
pub fn zero_init<B: Backend, const D: usize>(v: Tensor<B, D>) -> Tensor<B, D> {
    v * 0.0
}

/// Which guidance a run uses; one value carries every guidance knob of the pipelines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guidance {
    /// One conditional forward, `v = v_cond` (Distilled; or `guidance_scale ≤ 1`).
    None,
    /// [`cfg()`] with `scale`.
    Cfg { scale: f64 },
    /// CFG-Zero* (`HeliosPyramidPipeline` with `is_cfg_zero_star`, Helios-Mid): [`zero_init`] on
    /// pyramid stage 0 for steps `i ≤ zero_steps` when `use_zero_init`, else [`cfg_zero_star`].
    CfgZeroStar {
        scale: f64,
        use_zero_init: bool,
        zero_steps: usize,
    },
}

impl Guidance {
    /// The pipelines' choice: no guidance unless `scale > 1` (`do_classifier_free_guidance`),
    /// then CFG-Zero* if `cfg_zero_star` (the pipeline config flag `is_cfg_zero_star`), else CFG.
    pub fn from_flags(
        scale: f64,
        cfg_zero_star: bool,
        use_zero_init: bool,
        zero_steps: usize,
    ) -> Self {
        if scale <= 1.0 {
            Self::None
        } else if cfg_zero_star {
            Self::CfgZeroStar {
                scale,
                use_zero_init,
                zero_steps,
            }
        } else {
            Self::Cfg { scale }
        }
    }

    /// Whether the unconditional forward is needed at all.
    pub fn needs_uncond(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// `(stage_idx == 0 and i <= zero_steps) and use_zero_init`: step `step` of pyramid stage
    /// `stage` returns zero (with `zero_steps = 1`, the first two steps of stage 0 of every chunk).
    /// A one-stage (Base) run is stage 0.
    pub fn zero_init_applies(&self, stage: usize, step: usize) -> bool {
        matches!(self, Self::CfgZeroStar { use_zero_init: true, zero_steps, .. }
            if stage == 0 && step <= *zero_steps)
    }

    /// The guided model output of step `step` in pyramid stage `stage`.
    ///
    /// # Panics
    /// If guidance needs `v_uncond` and it is `None`.
    pub fn apply<B: Backend, const D: usize>(
        &self,
        v_cond: Tensor<B, D>,
        v_uncond: Option<Tensor<B, D>>,
        stage: usize,
        step: usize,
    ) -> Tensor<B, D> {
        if self.zero_init_applies(stage, step) {
            return zero_init(v_cond);
        }
        let uncond = || v_uncond.expect("guidance needs the unconditional model output");
        match *self {
            Self::None => v_cond,
            Self::Cfg { scale } => cfg(v_cond, uncond(), scale),
            Self::CfgZeroStar { scale, .. } => cfg_zero_star(v_cond, uncond(), scale),
        }
    }
}
