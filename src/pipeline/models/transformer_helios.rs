//! The Helios diffusion transformer: mirrors diffusers 0.42.1
//! `models/transformers/transformer_helios.py` `HeliosTransformer3DModel` (with
//! `HeliosTransformerBlock`, `HeliosAttention`/`HeliosAttnProcessor`, `HeliosRotaryPosEmbed`,
//! `HeliosTimeTextEmbedding` and `HeliosOutputNorm`), plus the pieces it borrows from
//! `models/embeddings.py` (`get_timestep_embedding`, `TimestepEmbedding`,
//! `PixArtAlphaTextProjection`), `models/attention.py` (`FeedForward`, "gelu-approximate") and
//! `models/normalization.py` (`FP32LayerNorm`).
//!
//! Module fields are named like the checkpoint keys; the sequential-index keys (`to_out.0`,
//! `ffn.net.0.proj`, `ffn.net.2`) and the norm parameters Burn calls `gamma`/`beta` are renamed by
//! [`KEY_REMAP`] (one row per rename).
//!
//! Deliberate divergences from diffusers (all pinned by `tests/transformer_helios.rs`, which
//! compares whole forwards with diffusers to ≤ 1e-4 in f32):
//! - **Per-segment modulation.** diffusers expands the timestep projections of t=0 (history
//!   tokens, `zero_history_timestep`) and t (noisy tokens) to a per-token `[B, S, 6, dim]` tensor
//!   (1.4 GB in f32 at 384×640). Here each block applies the two `[B, 1, dim]` vectors to their
//!   own token segment (split/cat), which gives the same numbers.
//! - **RoPE tables are built on the host** in f32, per axis (the table is separable in t, y and
//!   x); the average-pooled mid/long tables (diffusers: replicate pad + `avg_pool3d` of the full
//!   table) are per-axis window means over clamped positions, which is the same value up to f32
//!   summation order. The timestep sinusoid is also computed on the host, in f32 products with
//!   f64 transcendentals rounded to f32.
//! - **One list of frame indices for the whole batch** (diffusers takes `[B, T]` tensors), and
//!   `indices_hidden_states` is required: diffusers' `None` means `0..T/p_t`. The three history
//!   terms come together ([`HistoryInputs`]); diffusers accepts them one by one but needs the
//!   short one for the RoPE grid of the other two.
//! - **Precision** follows diffusers in bf16: the norm, modulation, gating and RoPE arithmetic is
//!   cast to f32 exactly where diffusers casts (`.float()` / `.type_as`), the parameters of
//!   [`KEEP_IN_FP32_MODULES`] are stored in f32 (the time embedder runs in f32 and its output is
//!   cast to the compute dtype), everything else computes in the dtype the model was loaded in
//!   ([`HeliosTransformer3DModel::dtype`]). Inputs of any float dtype are cast to it on entry;
//!   the output is in it (diffusers returns the bf16 prediction). `tests/bf16_parity.rs` checks
//!   this plan against diffusers in bf16.
//! - Attention is [`dispatch_attention`] with the default `1/sqrt(head_dim)` scale (diffusers:
//!   `F.scaled_dot_product_attention`); no mask in either. It runs as blocked matrix products on
//!   the CPU backend and as burn's flash kernels on CUDA.

use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use serde::Deserialize;

use crate::pipeline::backend::{as_flex, contiguous, flex_map};
use crate::pipeline::checkpoint::{load_methods, require_positive};
use crate::pipeline::models::activations::gelu_tanh;
use crate::pipeline::models::attention_dispatch::dispatch_attention;
use crate::pipeline::models::conv3d_dispatch::patch_embed;
use crate::pipeline::models::linear_dispatch::dispatch_linear;
use crate::pipeline::models::modulation_dispatch::{
    SegmentRows, add_rows_at, gate_add_rows, rows_kernels_apply, scale_shift_rows,
};
use crate::pipeline::precision::PrecisionMapper;
use crate::pipeline::weights::KeyMap;

/// Checkpoint-key renames (`regex`, replacement), applied by `weights::load_module` before the
/// keys are matched against the module tree.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // `attn{1,2}.to_out` is `ModuleList([Linear, Dropout])`: the Linear is `to_out.0`.
    (r"\.to_out\.0\.", ".to_out."),
    // `FeedForward.net[0]` is `GELU(approximate="tanh")`, which wraps its Linear as `.proj`.
    (r"\.ffn\.net\.0\.proj\.", ".ffn.net_0_proj."),
    // `FeedForward.net[2]` is the output Linear (`net[1]` is Dropout).
    (r"\.ffn\.net\.2\.", ".ffn.net_2."),
    // `torch.nn.RMSNorm.weight` is Burn's `RmsNorm.gamma` (burn-store 0.21's PyTorchToBurnAdapter
    // renames weight → gamma only for BatchNorm/LayerNorm/GroupNorm).
    (r"\.(norm_[qk])\.weight$", ".${1}.gamma"),
    // `FP32LayerNorm` `norm2.{weight,bias}` are Burn's `LayerNorm.{gamma,beta}` (the adapter
    // renames `weight` but not `bias` here, so both are renamed explicitly).
    (r"\.norm2\.weight$", ".norm2.gamma"),
    (r"\.norm2\.bias$", ".norm2.beta"),
];

/// A diffusers parameter key (`blocks.0.attn1.to_out.0.weight`) as the Burn module path
/// (`blocks.0.attn1.to_out.weight`), through [`KEY_REMAP`] (LoRA merges address parameters so).
pub fn burn_param_path(key: &str) -> String {
    remap_key(KEY_REMAP, key)
}

/// A diffusers parameter key through a model's `KEY_REMAP` table (the rows match a leading `.`).
pub fn remap_key(table: &[(&str, &str)], key: &str) -> String {
    let mut k = format!(".{key}");
    for (pattern, replacement) in table {
        let re = regex::Regex::new(pattern).expect("KEY_REMAP patterns are valid");
        k = re.replace_all(&k, *replacement).into_owned();
    }
    k[1..].to_string()
}

/// A Burn Linear module path (`blocks.0.ffn.net_0_proj`) as the diffusers module path
/// (`blocks.0.ffn.net.0.proj`): the inverse of [`KEY_REMAP`]'s Linear rows.
pub fn diffusers_module_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::with_capacity(parts.len() + 2);
    for (i, p) in parts.iter().enumerate() {
        match *p {
            "to_out" if i + 1 == parts.len() => out.push("to_out.0"),
            "net_0_proj" => out.push("net.0.proj"),
            "net_2" => out.push("net.2"),
            other => out.push(other),
        }
    }
    out.join(".")
}

/// diffusers `HeliosTransformer3DModel._keep_in_fp32_modules`: parameters under a module of
/// one of these names stay f32 whatever the compute dtype.
pub const KEEP_IN_FP32_MODULES: &[&str] = &[
    "time_embedder",
    "scale_shift_table",
    "norm1",
    "norm2",
    "norm3",
    "history_key_scale",
];

/// Checkpoint keys that are deliberately not loaded (diffusers `_keys_to_ignore_on_load_unexpected`).
pub const KEY_IGNORE: &[&str] = &[r"norm_added_q"];

/// How the checkpoint's keys meet the module tree.
pub const KEY_MAP: KeyMap<'static> = KeyMap {
    remap: KEY_REMAP,
    ignore: KEY_IGNORE,
    keep_in_fp32: KEEP_IN_FP32_MODULES,
};

/// `HeliosAttention.max_scale`: the largest history-key amplification (`is_amplify_history`).
const HISTORY_MAX_SCALE: f64 = 10.0;

/// `pad_for_3d_conv` multiple before `patch_mid` (hard-coded in diffusers).
const MID_LATENT_PAD: [usize; 3] = [2, 4, 4];
/// `pad_for_3d_conv` multiple before `patch_long` (hard-coded in diffusers).
const LONG_LATENT_PAD: [usize; 3] = [4, 8, 8];
/// `center_down_sample_3d` window of the mid-history RoPE table.
const MID_ROPE_POOL: usize = 2;
/// `center_down_sample_3d` window of the long-history RoPE table.
const LONG_ROPE_POOL: usize = 4;

// ------------------------------------------------------------------------------------------------
// Config

/// `HeliosAttention.history_scale_mode`: shape of the learned history-key amplification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryScaleMode {
    /// One scale per attention head (`history_key_scale: [heads]`).
    #[default]
    PerHead,
    /// One scale shared by all heads (`history_key_scale: [1]`).
    Scalar,
}

/// `transformer/config.json` of a Helios checkpoint, with diffusers' JSON names; absent keys take
/// the `HeliosTransformer3DModel.__init__` defaults (which are the real 14B values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HeliosTransformer3DModelConfig {
    /// Must be `HeliosTransformer3DModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// `(p_t, p_h, p_w)` of the patch embedding.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// `None` (or 0) means `in_channels` (`out_channels = out_channels or in_channels`).
    pub out_channels: Option<usize>,
    /// Width of the text-encoder embeddings (UMT5-XXL: 4096).
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// Whether `norm2` (the affine LayerNorm before cross-attention) exists.
    pub cross_attn_norm: bool,
    /// Only `rms_norm_across_heads` is accepted. (diffusers ignores this field: `HeliosAttention`
    /// always builds RMSNorms over the full inner dim.)
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Must be `None` (image/added K/V projections are not part of Helios).
    pub added_kv_proj_dim: Option<usize>,
    /// RoPE channels per axis `(t, y, x)`; each even, summing to `attention_head_dim`.
    pub rope_dim: [usize; 3],
    pub rope_theta: f64,
    /// Only the noisy tokens cross-attend to the text.
    pub guidance_cross_attn: bool,
    /// History tokens are modulated with the embedding of timestep 0.
    pub zero_history_timestep: bool,
    /// Whether `patch_short`/`patch_mid`/`patch_long` exist (needed for history inputs).
    pub has_multi_term_memory_patch: bool,
    /// Scale history keys in self-attention by `1 + sigmoid(history_key_scale)·9`.
    pub is_amplify_history: bool,
    pub history_scale_mode: HistoryScaleMode,
}

impl Default for HeliosTransformer3DModelConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            added_kv_proj_dim: None,
            rope_dim: [44, 42, 42],
            rope_theta: 10000.0,
            guidance_cross_attn: true,
            zero_history_timestep: true,
            has_multi_term_memory_patch: true,
            is_amplify_history: false,
            history_scale_mode: HistoryScaleMode::PerHead,
        }
    }
}

impl HeliosTransformer3DModelConfig {
    /// The diffusers class this config belongs to.
    pub const CLASS_NAME: &'static str = "HeliosTransformer3DModel";

    /// Every Linear of the model by diffusers module path with `(out, in)`: what a LoRA adapter
    /// may target (checked at admission, before the model is touched). Mirrors [`Self::init`];
    /// tests/lora.rs checks the two agree.
    pub fn lora_targets(&self) -> crate::pipeline::lora::LoraTargets {
        let dim = self.inner_dim();
        let p = self.patch_size;
        let mut t = crate::pipeline::lora::LoraTargets::new();
        let mut put = |k: String, out: usize, inp: usize| {
            t.insert(k, (out, inp));
        };
        put(
            "condition_embedder.time_embedder.linear_1".into(),
            dim,
            self.freq_dim,
        );
        put("condition_embedder.time_embedder.linear_2".into(), dim, dim);
        put("condition_embedder.time_proj".into(), 6 * dim, dim);
        put(
            "condition_embedder.text_embedder.linear_1".into(),
            dim,
            self.text_dim,
        );
        put("condition_embedder.text_embedder.linear_2".into(), dim, dim);
        for i in 0..self.num_layers {
            for attn in ["attn1", "attn2"] {
                for m in ["to_q", "to_k", "to_v", "to_out.0"] {
                    put(format!("blocks.{i}.{attn}.{m}"), dim, dim);
                }
            }
            put(format!("blocks.{i}.ffn.net.0.proj"), self.ffn_dim, dim);
            put(format!("blocks.{i}.ffn.net.2"), dim, self.ffn_dim);
        }
        put(
            "proj_out".into(),
            self.out_channels() * p.iter().product::<usize>(),
            dim,
        );
        t
    }

    /// `num_attention_heads * attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The effective output channel count (`out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        match self.out_channels {
            Some(c) if c > 0 => c,
            _ => self.in_channels,
        }
    }

    /// Check the values this port supports; the message says which field is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.class_name
            && name != Self::CLASS_NAME
        {
            return Err(format!(
                "_class_name is {name:?}, expected {:?}",
                Self::CLASS_NAME
            ));
        }
        if self.patch_size.contains(&0) {
            return Err(format!("patch_size {:?} has a zero entry", self.patch_size));
        }
        require_positive!(
            self: num_attention_heads, attention_head_dim, in_channels, text_dim, freq_dim, ffn_dim
        );
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(format!("eps must be positive, got {}", self.eps));
        }
        if let Some(d) = self.added_kv_proj_dim {
            return Err(format!(
                "added_kv_proj_dim = {d} is not supported (Helios has no added K/V projections; expected null)"
            ));
        }
        if self.qk_norm.as_deref() != Some("rms_norm_across_heads") {
            return Err(format!(
                "qk_norm = {:?} is not supported (expected \"rms_norm_across_heads\")",
                self.qk_norm
            ));
        }
        if self.rope_dim.iter().any(|d| d % 2 != 0)
            || self.rope_dim.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(format!(
                "rope_dim {:?} must be even per axis and sum to attention_head_dim {}",
                self.rope_dim, self.attention_head_dim
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(format!(
                "rope_theta must be positive, got {}",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// Build the model with lazily initialised parameters (nothing is materialised until read or
    /// loaded).
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> HeliosTransformer3DModel<B> {
        if let Err(e) = self.validate() {
            panic!("invalid HeliosTransformer3DModelConfig: {e}");
        }
        let dim = self.inner_dim();
        let p = self.patch_size;
        let conv = |k: [usize; 3]| {
            Conv3dConfig::new([self.in_channels, dim], k)
                .with_stride(k)
                .init(device)
        };
        let scaled = |s: usize| [p[0] * s, p[1] * s, p[2] * s];
        let memory = self.has_multi_term_memory_patch;
        HeliosTransformer3DModel {
            patch_embedding: conv(p),
            patch_short: memory.then(|| conv(p)),
            patch_mid: memory.then(|| conv(scaled(2))),
            patch_long: memory.then(|| conv(scaled(4))),
            condition_embedder: HeliosTimeTextEmbedding {
                time_embedder: TimestepEmbedding {
                    linear_1: linear(self.freq_dim, dim, device),
                    linear_2: linear(dim, dim, device),
                },
                time_proj: linear(dim, 6 * dim, device),
                text_embedder: PixArtAlphaTextProjection {
                    linear_1: linear(self.text_dim, dim, device),
                    linear_2: linear(dim, dim, device),
                },
                freq_dim: self.freq_dim,
            },
            blocks: (0..self.num_layers)
                .map(|_| HeliosTransformerBlock::init(self, device))
                .collect(),
            norm_out: HeliosOutputNorm {
                scale_shift_table: Initializer::Zeros.init([1, 2, dim], device),
                eps: self.eps,
            },
            proj_out: linear(
                dim,
                self.out_channels() * p.iter().product::<usize>(),
                device,
            ),
            config: self.clone(),
        }
    }

    /// [`init`](Self::init) with the parameters cast to `dtype` (f32 for
    /// [`KEEP_IN_FP32_MODULES`]), as [`HeliosTransformer3DModel::load_with_dtype`] would load
    /// them: for benchmarks with random weights.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init_with_dtype<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
    ) -> HeliosTransformer3DModel<B> {
        PrecisionMapper::apply(self.init(device), dtype, KEEP_IN_FP32_MODULES)
    }
}

pub(crate) fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out).with_bias(true).init(device)
}

// ------------------------------------------------------------------------------------------------
// Embeddings

/// diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)`:
/// `[cos(t·f_k) | sin(t·f_k)]` with `f_k = exp(−ln(10000)·k/(dim/2))`, row-major `[N, dim]`
/// (odd `dim` gets a trailing zero column).
pub fn get_timestep_embedding(timesteps: &[f32], embedding_dim: usize) -> Vec<f32> {
    let half = embedding_dim / 2;
    // exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32)
    // exponent = exponent / (half_dim - downscale_freq_shift); emb = torch.exp(exponent)
    let neg_log = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((k as f32 * neg_log) / half as f32) as f64)
        .map(|e| e.exp() as f32)
        .collect();
    let mut out = vec![0f32; timesteps.len() * embedding_dim];
    for (row, &t) in out.chunks_exact_mut(embedding_dim).zip(timesteps) {
        for (k, &f) in freqs.iter().enumerate() {
            // emb = timesteps[:, None].float() * emb[None, :]  (an f32 product)
            let arg = (t * f) as f64;
            // flip_sin_to_cos: torch.cat([cos, sin])
            row[k] = arg.cos() as f32;
            row[half + k] = arg.sin() as f32;
        }
    }
    out
}

/// diffusers `TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)`: `linear_1 → SiLU →
/// linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// # Shapes
    /// `sample: [N, freq_dim]` → `[N, dim]`
    pub fn forward(&self, sample: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(sample)))
    }
}

/// diffusers `PixArtAlphaTextProjection(text_dim, dim, act_fn="gelu_tanh")`: `linear_1 →
/// GELU(tanh) → linear_2`.
#[derive(Module, Debug)]
pub struct PixArtAlphaTextProjection<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> PixArtAlphaTextProjection<B> {
    /// # Shapes
    /// `caption: [B, L, text_dim]` → `[B, L, dim]`
    pub fn forward(&self, caption: Tensor<B, 3>) -> Tensor<B, 3> {
        self.linear_2
            .forward(gelu_tanh(self.linear_1.forward(caption)))
    }
}

/// diffusers `HeliosTimeTextEmbedding`: sinusoidal timestep → `time_embedder` → (`temb`,
/// `time_proj(SiLU(temb))`), and the text projection.
#[derive(Module, Debug)]
pub struct HeliosTimeTextEmbedding<B: Backend> {
    pub time_embedder: TimestepEmbedding<B>,
    pub time_proj: Linear<B>,
    pub text_embedder: PixArtAlphaTextProjection<B>,
    pub freq_dim: usize,
}

impl<B: Backend> HeliosTimeTextEmbedding<B> {
    /// The timestep half of `HeliosTimeTextEmbedding.forward`.
    ///
    /// # Shapes
    /// One timestep per row → (`temb: [N, dim]`, `timestep_proj: [N, 6·dim]`), both in the
    /// dtype of `time_proj` (the compute dtype).
    pub fn forward_time(
        &self,
        timestep: &[f32],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        time_embedding(
            &self.time_embedder,
            &self.time_proj,
            self.freq_dim,
            timestep,
            device,
        )
    }
}

/// The timestep half of diffusers `HeliosTimeTextEmbedding.forward` and
/// `WanTimeTextImageEmbedding.forward` (the same lines in both): `timesteps_proj` (sinusoid, f32)
/// → `time_embedder` (in its own dtype, f32 under `_keep_in_fp32_modules`) → `temb` cast to the
/// compute dtype → `time_proj(SiLU(temb))`.
///
/// # Shapes
/// One timestep per row → (`temb: [N, dim]`, `timestep_proj: [N, 6·dim]`), both in the dtype of
/// `time_proj`.
pub fn time_embedding<B: Backend>(
    time_embedder: &TimestepEmbedding<B>,
    time_proj: &Linear<B>,
    freq_dim: usize,
    timestep: &[f32],
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    // timestep = self.timesteps_proj(timestep)   (float32)
    let emb = get_timestep_embedding(timestep, freq_dim);
    let emb = Tensor::<B, 2>::from_data(
        TensorData::new(emb, [timestep.len(), freq_dim]),
        (device, DType::F32),
    );
    // timestep.to(time_embedder_dtype) (f32, `_keep_in_fp32_modules`)
    let emb = emb.cast(time_embedder.linear_1.weight.val().dtype());
    // temb = self.time_embedder(timestep).type_as(encoder_hidden_states)
    let temb = time_embedder
        .forward(emb)
        .cast(time_proj.weight.val().dtype());
    // timestep_proj = self.time_proj(self.act_fn(temb))
    let timestep_proj = time_proj.forward(silu(temb.clone()));
    (temb, timestep_proj)
}

// ------------------------------------------------------------------------------------------------
// Rotary position embedding (host side)

/// diffusers `HeliosRotaryPosEmbed`, evaluated on the host.
///
/// A table is stored in pair layout: `cos[s, j]`, `sin[s, j]` for token `s` and rotation pair
/// `j < head_dim/2`; pairs `0..DT/2` rotate with the frame index, the next `DY/2` with the row and
/// the last `DX/2` with the column. (diffusers stores `[cos_t, cos_y, cos_x, sin_t, sin_y,
/// sin_x]` with each frequency repeated twice and reads `cos[0::2]`, `sin[1::2]`, which is this.)
#[derive(Debug, Clone)]
struct RopeTables {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    fn new(half: usize) -> Self {
        Self {
            half,
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.cos.len() / self.half
    }

    /// Append the table of a `(frames, height, width)` grid, average-pooled by `pool` in all three
    /// axes after replicate-padding to a multiple of `pool` (`pool = 1`: no pooling).
    fn push_grid(
        &mut self,
        freqs: &[Vec<f32>; 3],
        frame_indices: &[i64],
        height: usize,
        width: usize,
        pool: usize,
    ) {
        // frame_indices.to(dtype=torch.float32); grid_y/grid_x = arange(height/width, float32)
        let t: Vec<f32> = frame_indices.iter().map(|&i| i as f32).collect();
        let y: Vec<f32> = (0..height).map(|i| i as f32).collect();
        let x: Vec<f32> = (0..width).map(|i| i as f32).collect();
        let axes = [
            axis_table(&t, &freqs[0], pool),
            axis_table(&y, &freqs[1], pool),
            axis_table(&x, &freqs[2], pool),
        ];
        let rows = |a: usize| axes[a].0.len() / freqs[a].len().max(1);
        let (nt, ny, nx) = (rows(0), rows(1), rows(2));
        self.cos.reserve(nt * ny * nx * self.half);
        self.sin.reserve(nt * ny * nx * self.half);
        for ti in 0..nt {
            for yi in 0..ny {
                for xi in 0..nx {
                    for (a, idx) in [(0, ti), (1, yi), (2, xi)] {
                        let n = freqs[a].len();
                        self.cos
                            .extend_from_slice(&axes[a].0[idx * n..(idx + 1) * n]);
                        self.sin
                            .extend_from_slice(&axes[a].1[idx * n..(idx + 1) * n]);
                    }
                }
            }
        }
    }

    /// Upload as `[1, S, 1, head_dim/2, 1]` f32 tensors (broadcast over batch, heads and the
    /// two members of a pair).
    fn to_device<B: Backend>(&self, device: &B::Device) -> RotaryEmbedding<B> {
        let shape = [1, self.len(), 1, self.half, 1];
        let up = |v: &Vec<f32>| {
            Tensor::<B, 5>::from_data(TensorData::new(v.clone(), shape), (device, DType::F32))
        };
        RotaryEmbedding {
            cos: up(&self.cos),
            sin: up(&self.sin),
        }
    }
}

/// `HeliosRotaryPosEmbed._get_freqs_base`: `1 / theta^(arange(0, dim, 2) / dim)` in f32.
fn rope_freqs(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|k| {
            let e = (2 * k) as f32 / dim as f32;
            1.0f32 / (theta.powf(e as f64) as f32)
        })
        .collect()
}

/// cos/sin of `pos · f` for one axis, `[ceil(n / pool), freqs.len()]` each: with `pool > 1`, the
/// mean over each window of `pool` positions, the last window padded by repeating the last
/// position (`pad_for_3d_conv(.., mode="replicate")` + `avg_pool3d`).
fn axis_table(positions: &[f32], freqs: &[f32], pool: usize) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len();
    let n_out = n.div_ceil(pool);
    let mut cos = Vec::with_capacity(n_out * freqs.len());
    let mut sin = Vec::with_capacity(n_out * freqs.len());
    for o in 0..n_out {
        for &f in freqs {
            let (mut c, mut s) = (0f64, 0f64);
            for r in 0..pool {
                let p = positions[(o * pool + r).min(n - 1)];
                // freqs = torch.einsum("d,bthw->dbthw", freqs_base, pos)  (an f32 product)
                let arg = (p * f) as f64;
                if pool == 1 {
                    // freqs.cos(), freqs.sin() in float32
                    c = arg.cos() as f32 as f64;
                    s = arg.sin() as f32 as f64;
                } else {
                    c += arg.cos() as f32 as f64;
                    s += arg.sin() as f32 as f64;
                }
            }
            cos.push((c / pool as f64) as f32);
            sin.push((s / pool as f64) as f32);
        }
    }
    (cos, sin)
}

/// Rotary tables for every token of one forward, on the device.
///
/// # Shapes
/// `cos`, `sin`: `[1, S, 1, head_dim/2, 1]`, f32
#[derive(Debug, Clone)]
pub struct RotaryEmbedding<B: Backend> {
    pub cos: Tensor<B, 5>,
    pub sin: Tensor<B, 5>,
}

/// diffusers `apply_rotary_emb_transposed` (interleaved pairs):
/// `out[0::2] = x1·cos − x2·sin; out[1::2] = x1·sin + x2·cos`, computed in f32 (the tables are
/// f32 in diffusers, so the products promote) and cast back (`out.type_as(hidden_states)`).
///
/// # Shapes
/// `hidden_states: [B, S, H, D]` → `[B, S, H, D]`
pub fn apply_rotary_emb_transposed<B: Backend>(
    hidden_states: Tensor<B, 4>,
    rope: &RotaryEmbedding<B>,
) -> Tensor<B, 4> {
    let dtype = hidden_states.dtype();
    let [b, s, h, d] = hidden_states.dims();
    let x = hidden_states.cast(DType::F32);
    let tables_f32 = rope.cos.dtype() == DType::F32 && rope.sin.dtype() == DType::F32;
    let fused = match (as_flex(&rope.cos), as_flex(&rope.sin)) {
        (Some(cos), Some(sin)) if tables_f32 && rope.cos.dims() == [1, s, 1, d / 2, 1] => {
            flex_map(x, |x| rope_f32(&x, &cos, &sin, [b, s, h, d]))
        }
        _ => Err(x),
    };
    match fused {
        Ok(out) => out,
        Err(x) => rotary_tensor_ops(x, rope),
    }
    .cast(dtype)
}

/// [`apply_rotary_emb_transposed`] as tensor ops, on f32 `x: [B, S, H, D]` (any backend).
fn rotary_tensor_ops<B: Backend>(x: Tensor<B, 4>, rope: &RotaryEmbedding<B>) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    // x_1, x_2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    let x = x.reshape([b, s, h, d / 2, 2]);
    let x1 = x.clone().narrow(4, 0, 1);
    let x2 = x.narrow(4, 1, 1);
    let (cos, sin) = (rope.cos.clone(), rope.sin.clone());
    let even = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let odd = x1 * sin + x2 * cos;
    Tensor::cat(vec![even, odd], 4).reshape([b, s, h, d])
}

/// [`apply_rotary_emb_transposed`] on the CPU backend: one pass over `x` (f32 `[B, S, H, D]`)
/// with the f32 tables `[1, S, 1, D/2, 1]`, token rows split over rayon's pool; the same
/// products and sums as the tensor version (`x1·cos − x2·sin`, `x1·sin + x2·cos`), written
/// interleaved.
fn rope_f32(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, dims: [usize; 4]) -> FlexTensor {
    let [b, s, h, d] = dims;
    let half = d / 2;
    let (x, cos, sin) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
    let (xs, cs, ss): (&[f32], &[f32], &[f32]) = (x.storage(), cos.storage(), sin.storage());
    let mut out = vec![0.0f32; b * s * h * d];
    out.par_chunks_mut(h * d)
        .zip(xs.par_chunks(h * d))
        .enumerate()
        .with_min_len(64)
        .for_each(|(token, (o, xt))| {
            let t = token % s;
            let (c, sn) = (&cs[t * half..(t + 1) * half], &ss[t * half..(t + 1) * half]);
            for (o, xh) in o.chunks_exact_mut(d).zip(xt.chunks_exact(d)) {
                for i in 0..half {
                    let (x1, x2) = (xh[2 * i], xh[2 * i + 1]);
                    o[2 * i] = x1 * c[i] - x2 * sn[i];
                    o[2 * i + 1] = x1 * sn[i] + x2 * c[i];
                }
            }
        });
    FlexTensor::from_data(TensorData::new(out, [b, s, h, d]))
}

// ------------------------------------------------------------------------------------------------
// Attention, feed-forward, norms

/// diffusers `HeliosAttention` with `HeliosAttnProcessor` (no fused projections, no added K/V).
#[derive(Module, Debug)]
pub struct HeliosAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    /// `torch.nn.RMSNorm(heads·dim_head)`: over the full inner dim, before the head split.
    pub norm_q: RmsNorm<B>,
    pub norm_k: RmsNorm<B>,
    /// Self-attention only, with `is_amplify_history`: `[heads]` or `[1]`.
    pub history_key_scale: Option<Param<Tensor<B, 1>>>,
    /// Image cross-attention key projection (`added_kv_proj_dim`; Wan2.1 I2V / FLF2V only:
    /// diffusers' `WanAttention`, whose other fields and math are `HeliosAttention`'s).
    pub add_k_proj: Option<Linear<B>>,
    /// Image cross-attention value projection (see `add_k_proj`).
    pub add_v_proj: Option<Linear<B>>,
    /// `torch.nn.RMSNorm(heads·dim_head)` on the image keys (see `add_k_proj`).
    pub norm_added_k: Option<RmsNorm<B>>,
    pub heads: usize,
}

impl<B: Backend> HeliosAttention<B> {
    fn init(
        config: &HeliosTransformer3DModelConfig,
        amplify_history: bool,
        device: &B::Device,
    ) -> Self {
        let dim = config.inner_dim();
        let norm = || {
            RmsNormConfig::new(dim)
                .with_epsilon(config.eps)
                .init(device)
        };
        let history_key_scale = amplify_history.then(|| {
            let n = match config.history_scale_mode {
                HistoryScaleMode::PerHead => config.num_attention_heads,
                HistoryScaleMode::Scalar => 1,
            };
            Initializer::Ones.init([n], device)
        });
        Self {
            to_q: linear(dim, dim, device),
            to_k: linear(dim, dim, device),
            to_v: linear(dim, dim, device),
            to_out: linear(dim, dim, device),
            norm_q: norm(),
            norm_k: norm(),
            history_key_scale,
            add_k_proj: None,
            add_v_proj: None,
            norm_added_k: None,
            heads: config.num_attention_heads,
        }
    }

    /// Adds the image cross-attention projections (`add_k_proj`, `add_v_proj` from
    /// `added_kv_proj_dim` to `dim`, `norm_added_k`), as diffusers' `WanAttention` builds them
    /// when `added_kv_proj_dim` is set.
    pub fn with_added_kv(mut self, added_kv_proj_dim: usize, eps: f64, device: &B::Device) -> Self {
        let dim = self.to_q.weight.dims()[1];
        self.add_k_proj = Some(linear(added_kv_proj_dim, dim, device));
        self.add_v_proj = Some(linear(added_kv_proj_dim, dim, device));
        self.norm_added_k = Some(RmsNormConfig::new(dim).with_epsilon(eps).init(device));
        self
    }

    /// `(norm_added_k(add_k_proj(image)), add_v_proj(image))` (diffusers
    /// `_get_added_kv_projections` + `norm_added_k`); `None` without the image projections.
    ///
    /// # Shapes
    /// `image: [B, L_img, dim]` → (`[B, L_img, dim]`, `[B, L_img, dim]`)
    pub fn image_key_value(&self, image: Tensor<B, 3>) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        let (k, v, n) = (
            self.add_k_proj.as_ref()?,
            self.add_v_proj.as_ref()?,
            self.norm_added_k.as_ref()?,
        );
        Some((n.forward(k.forward(image.clone())), v.forward(image)))
    }

    /// Self-attention (`encoder_hidden_states = None`) or cross-attention.
    ///
    /// `history_len` is the number of leading history tokens (`hidden_states.shape[1] -
    /// original_context_length`); it only matters for the history-key amplification.
    ///
    /// # Shapes
    /// `hidden_states: [B, S, dim]`, `encoder_hidden_states: [B, L, dim]`, rotary tables for `S`
    /// tokens → `[B, S, dim]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
        rotary_emb: Option<&RotaryEmbedding<B>>,
        history_len: usize,
    ) -> Tensor<B, 3> {
        let is_cross = encoder_hidden_states.is_some();
        let context = encoder_hidden_states.unwrap_or_else(|| hidden_states.clone());
        let (key, value) = self.key_value(context);
        self.forward_kv(hidden_states, key, value, is_cross, rotary_emb, history_len)
    }

    /// `(norm_k(to_k(context)), to_v(context))`: for cross-attention these depend only on the
    /// prompt, so [`HeliosTransformer3DModel::text_context`] computes them once per request.
    ///
    /// # Shapes
    /// `context: [B, L, dim]` → (`[B, L, dim]`, `[B, L, dim]`)
    pub fn key_value(&self, context: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let key = self
            .norm_k
            .forward(dispatch_linear(&self.to_k, context.clone()));
        let value = dispatch_linear(&self.to_v, context);
        (key, value)
    }

    /// The attention proper from precomputed `key`/`value` (see [`Self::key_value`]).
    ///
    /// # Shapes
    /// `hidden_states: [B, S, dim]`, `key`, `value`: `[B, L, dim]` → `[B, S, dim]`
    pub fn forward_kv(
        &self,
        hidden_states: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        is_cross: bool,
        rotary_emb: Option<&RotaryEmbedding<B>>,
        history_len: usize,
    ) -> Tensor<B, 3> {
        self.forward_kv_image(
            hidden_states,
            key,
            value,
            None,
            is_cross,
            rotary_emb,
            history_len,
        )
    }

    /// [`forward_kv`](Self::forward_kv) plus, with `image_kv` (from
    /// [`image_key_value`](Self::image_key_value)), diffusers `WanAttnProcessor`'s image branch:
    /// `attention(q, key_img, value_img)` added to the text attention before `to_out`.
    ///
    /// # Shapes
    /// `hidden_states: [B, S, dim]`, `key`, `value`: `[B, L, dim]`, `image_kv`: `[B, L_img, dim]`
    /// each → `[B, S, dim]`
    #[allow(clippy::too_many_arguments)]
    pub fn forward_kv_image(
        &self,
        hidden_states: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        image_kv: Option<&(Tensor<B, 3>, Tensor<B, 3>)>,
        is_cross: bool,
        rotary_emb: Option<&RotaryEmbedding<B>>,
        history_len: usize,
    ) -> Tensor<B, 3> {
        let [b, s, dim] = hidden_states.dims();
        let l = key.dims()[1];
        let hd = dim / self.heads;

        // query = to_q(hidden_states); key, value = to_k(context), to_v(context) (done above)
        let query = self
            .norm_q
            .forward(dispatch_linear(&self.to_q, hidden_states));

        // query.unflatten(2, (attn.heads, -1))
        let mut query = query.reshape([b, s, self.heads, hd]);
        let mut key = key.reshape([b, l, self.heads, hd]);
        let value = value.reshape([b, l, self.heads, hd]);

        if let Some(rope) = rotary_emb {
            query = apply_rotary_emb_transposed(query, rope);
            key = apply_rotary_emb_transposed(key, rope);
        }

        if !is_cross
            && history_len > 0
            && let Some(scale) = &self.history_key_scale
        {
            // scale_key = 1.0 + torch.sigmoid(attn.history_key_scale) * (attn.max_scale - 1.0)
            // key = torch.cat([key[:, :history_seq_len] * scale_key, key[:, history_seq_len:]], dim=1)
            let dtype = key.dtype();
            let n = scale.dims()[0];
            let scale_key = (sigmoid(scale.val().cast(DType::F32)) * (HISTORY_MAX_SCALE - 1.0)
                + 1.0)
                .reshape([1, 1, n, 1]);
            let hist =
                (key.clone().narrow(1, 0, history_len).cast(DType::F32) * scale_key).cast(dtype);
            let rest = key.narrow(1, history_len, l - history_len);
            key = Tensor::cat(vec![hist, rest], 1);
        }

        // I2V: hidden_states_img = dispatch_attention_fn(query, key_img, value_img)
        let out_img = image_kv.map(|(k_img, v_img)| {
            let li = k_img.dims()[1];
            dispatch_attention(
                query.clone().swap_dims(1, 2),
                k_img
                    .clone()
                    .reshape([b, li, self.heads, hd])
                    .swap_dims(1, 2),
                v_img
                    .clone()
                    .reshape([b, li, self.heads, hd])
                    .swap_dims(1, 2),
            )
        });
        // dispatch_attention_fn(query, key, value) on [B, H, S, D]
        let out = dispatch_attention(
            query.swap_dims(1, 2),
            key.swap_dims(1, 2),
            value.swap_dims(1, 2),
        );
        // hidden_states = hidden_states + hidden_states_img (both flattened)
        let out = match out_img {
            Some(img) => out + img,
            None => out,
        };
        // hidden_states.flatten(2, 3); attn.to_out[0](hidden_states)
        let out = out.swap_dims(1, 2).reshape([b, s, dim]);
        dispatch_linear(&self.to_out, out)
    }
}

/// diffusers `FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")`:
/// `net.0.proj → GELU(tanh) → net.2` (dropouts are identities at inference).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub net_0_proj: Linear<B>,
    pub net_2: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    /// # Shapes
    /// `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        dispatch_linear(
            &self.net_2,
            gelu_tanh(dispatch_linear(&self.net_0_proj, hidden_states)),
        )
    }
}

/// diffusers `FP32LayerNorm` over the last dim: `F.layer_norm(x.float(), w.float(), b.float())`.
/// Returns f32; callers cast back (`.type_as(hidden_states)`) where diffusers does.
pub fn fp32_layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Option<Tensor<B, 1>>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, 3> {
    let dim = x.dims()[2];
    let device = x.device();
    let x = x.cast(DType::F32);
    let gamma = match gamma {
        Some(g) => g.cast(DType::F32),
        None => Tensor::<B, 1>::ones([dim], (&device, DType::F32)),
    };
    let beta = beta.map(|b| b.cast(DType::F32).into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta,
        eps,
    )))
}

// ------------------------------------------------------------------------------------------------
// Per-segment modulation

/// The six modulation vectors of one block for one token segment, each `[B or 1, 1, dim]`, f32:
/// `shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa`.
struct Modulation<B: Backend>(Vec<Tensor<B, 3>>);

impl<B: Backend> Modulation<B> {
    /// `(scale_shift_table + temb.float()).chunk(6, dim=1)` for `timestep_proj: [N, 6, dim]`.
    fn new(table: &Tensor<B, 3>, timestep_proj: &Tensor<B, 3>) -> Self {
        Self((table.clone() + timestep_proj.clone().cast(DType::F32)).chunk(6, 1))
    }

    /// Per-token modulation (diffusers `WanTransformerBlock` with `temb.ndim == 4`, Wan2.2
    /// TI2V): `(scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)`, each squeezed
    /// to `[B, S, dim]`, for `timestep_proj: [B, S, 6, dim]`.
    fn per_token(table: &Tensor<B, 3>, timestep_proj: &Tensor<B, 4>) -> Self {
        let [b, s, _, d] = timestep_proj.dims();
        let m = table.clone().unsqueeze_dim::<4>(0) + timestep_proj.clone().cast(DType::F32);
        Self(
            m.chunk(6, 2)
                .into_iter()
                .map(|c| c.reshape([b, s, d]))
                .collect(),
        )
    }
}

/// The timestep conditioning of one forward: the modulation input of the noisy tokens (timestep
/// t) and, with `zero_history_timestep` and history present, of the history tokens (t = 0).
pub(crate) struct Conditioning<B: Backend> {
    /// `time_proj` output of t, `[B, 6, dim]`.
    pub(crate) timestep_proj: Tensor<B, 3>,
    /// `time_proj` output of t = 0, `[1, 6, dim]`; `None` means the history tokens use t.
    pub(crate) timestep_proj_history: Option<Tensor<B, 3>>,
    /// Leading history tokens in the sequence.
    pub(crate) history_len: usize,
    /// Per-token `time_proj` output `[B, S, 6, dim]` (Wan2.2 TI2V); replaces `timestep_proj`.
    pub(crate) timestep_proj_per_token: Option<Tensor<B, 4>>,
}

/// The modulation of each token segment of one block: the leading `history_len` history tokens
/// (t = 0 with `zero_history_timestep`) and the noisy tokens (t).
struct SegmentModulation<B: Backend> {
    total: usize,
    history_len: usize,
    /// `None`: the history tokens use `noisy` too.
    history: Option<Modulation<B>>,
    noisy: Modulation<B>,
}

impl<B: Backend> SegmentModulation<B> {
    /// Evaluate `f(start, len, modulation)` on each segment with its own modulation and
    /// concatenate along the tokens (one call when there is a single segment).
    fn map(&self, f: impl Fn(usize, usize, &Modulation<B>) -> Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.history {
            Some(h) if self.history_len > 0 => Tensor::cat(
                vec![
                    f(0, self.history_len, h),
                    f(self.history_len, self.total - self.history_len, &self.noisy),
                ],
                1,
            ),
            _ => f(0, self.total, &self.noisy),
        }
    }

    /// Vector `i` of the modulation per token row for the fused CPU kernels, `map` applied;
    /// `None` for per-token modulation (Wan2.2 TI2V), which keeps the tensor ops.
    fn rows(&self, i: usize, map: impl Fn(f32) -> f32) -> Option<SegmentRows> {
        if self.noisy.0[i].dims()[1] != 1 {
            return None;
        }
        let (split, head) = match &self.history {
            Some(h) if self.history_len > 0 => (self.history_len, &h.0[i]),
            _ => (0, &self.noisy.0[i]),
        };
        Some(SegmentRows::new(split, head, &self.noisy.0[i], map))
    }

    /// `norm(x) * (1 + m[scale]) + m[shift]` over every segment ([`modulate`]); on the CPU
    /// backend the norm of the whole sequence (it is per token) and one fused pass.
    ///
    /// # Shapes
    /// `x: [B, S, dim]` f32 → same.
    fn modulate(&self, x: &Tensor<B, 3>, scale: usize, shift: usize, eps: f64) -> Tensor<B, 3> {
        if rows_kernels_apply(x)
            && let (Some(s1), Some(shift)) =
                (self.rows(scale, |v| v + 1.0), self.rows(shift, |v| v))
        {
            let y = fp32_layer_norm(x.clone(), None, None, eps);
            return scale_shift_rows(y, &s1, &shift);
        }
        self.map(|start, len, m| modulate(x, start, len, &m.0[scale], &m.0[shift], eps))
    }

    /// `x + y * m[gate]` over every segment ([`gated_residual`]); one fused pass on the CPU
    /// backend.
    ///
    /// # Shapes
    /// `x`, `y`: `[B, S, dim]` f32 → same.
    fn gated_residual(&self, x: &Tensor<B, 3>, y: Tensor<B, 3>, gate: usize) -> Tensor<B, 3> {
        if rows_kernels_apply(x)
            && rows_kernels_apply(&y)
            && let Some(g) = self.rows(gate, |v| v)
        {
            return gate_add_rows(x, y, &g);
        }
        self.map(|start, len, m| gated_residual(x, &y, start, len, &m.0[gate]))
    }
}

// ------------------------------------------------------------------------------------------------
// Block

/// diffusers `HeliosTransformerBlock`: modulated self-attention over history + noisy tokens,
/// cross-attention to the text (noisy tokens only with `guidance_cross_attn`), modulated FFN.
/// `norm1`/`norm3` are parameter-free and so have no fields.
#[derive(Module, Debug)]
pub struct HeliosTransformerBlock<B: Backend> {
    pub attn1: HeliosAttention<B>,
    pub attn2: HeliosAttention<B>,
    /// Affine `FP32LayerNorm` before cross-attention (`cross_attn_norm`), else identity.
    pub norm2: Option<LayerNorm<B>>,
    pub ffn: FeedForward<B>,
    /// `[1, 6, dim]`
    pub scale_shift_table: Param<Tensor<B, 3>>,
    pub eps: f64,
    pub guidance_cross_attn: bool,
}

impl<B: Backend> HeliosTransformerBlock<B> {
    pub(crate) fn init(config: &HeliosTransformer3DModelConfig, device: &B::Device) -> Self {
        let dim = config.inner_dim();
        Self {
            attn1: HeliosAttention::init(config, config.is_amplify_history, device),
            attn2: HeliosAttention::init(config, false, device),
            norm2: config.cross_attn_norm.then(|| {
                LayerNormConfig::new(dim)
                    .with_epsilon(config.eps)
                    .init(device)
            }),
            ffn: FeedForward {
                net_0_proj: linear(dim, config.ffn_dim, device),
                net_2: linear(config.ffn_dim, dim, device),
            },
            scale_shift_table: Initializer::Zeros.init([1, 6, dim], device),
            eps: config.eps,
            guidance_cross_attn: config.guidance_cross_attn,
        }
    }

    /// # Shapes
    /// `hidden_states: [B, S, dim]` (history tokens first), `encoder_hidden_states: [B, L, dim]`
    /// → `[B, S, dim]`
    /// `image_kv`: the image cross-attention keys and values (Wan2.1 I2V / FLF2V), see
    /// [`HeliosAttention::forward_kv_image`].
    pub(crate) fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        cross_kv: &(Tensor<B, 3>, Tensor<B, 3>),
        image_kv: Option<&(Tensor<B, 3>, Tensor<B, 3>)>,
        cond: &Conditioning<B>,
        rotary_emb: &RotaryEmbedding<B>,
    ) -> Tensor<B, 3> {
        let dtype = hidden_states.dtype();
        let [_, s, _] = hidden_states.dims();
        let hist = cond.history_len;
        let table = self.scale_shift_table.val().cast(DType::F32);
        let segments = SegmentModulation {
            total: s,
            history_len: hist,
            history: cond
                .timestep_proj_history
                .as_ref()
                .map(|t| Modulation::new(&table, t)),
            noisy: match &cond.timestep_proj_per_token {
                Some(p) => Modulation::per_token(&table, p),
                None => Modulation::new(&table, &cond.timestep_proj),
            },
        };

        // 1. Self-attention
        // norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        let x = hidden_states.cast(DType::F32);
        let norm_hidden_states = segments.modulate(&x, 1, 0, self.eps).cast(dtype);
        let attn_output = self
            .attn1
            .forward(norm_hidden_states, None, Some(rotary_emb), hist)
            .cast(DType::F32);
        // hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)
        let hidden_states = segments.gated_residual(&x, attn_output, 2).cast(dtype);

        // 2. Cross-attention
        // history_hidden_states, hidden_states = torch.split(hidden_states, [history_seq_len, original_context_length], dim=1)
        // (with guidance_cross_attn; otherwise every token attends), then
        // hidden_states = torch.cat([history_hidden_states, hidden_states + attn_output], dim=1)
        let start = if self.guidance_cross_attn { hist } else { 0 };
        let attended = hidden_states.clone().narrow(1, start, s - start);
        let attn_output = self.cross_attention(attended, cross_kv, image_kv);
        let hidden_states = residual_at(hidden_states, start, attn_output);

        // 3. Feed-forward
        // norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(hidden_states)
        let x = hidden_states.cast(DType::F32);
        let norm_hidden_states = segments.modulate(&x, 4, 3, self.eps).cast(dtype);
        let ff_output = self.ffn.forward(norm_hidden_states).cast(DType::F32);
        // hidden_states = (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)
        segments.gated_residual(&x, ff_output, 5).cast(dtype)
    }

    /// `attn2(norm2(hidden_states.float()).type_as(hidden_states), context)` (the caller adds
    /// the residual).
    fn cross_attention(
        &self,
        hidden_states: Tensor<B, 3>,
        (key, value): &(Tensor<B, 3>, Tensor<B, 3>),
        image_kv: Option<&(Tensor<B, 3>, Tensor<B, 3>)>,
    ) -> Tensor<B, 3> {
        let dtype = hidden_states.dtype();
        let norm_hidden_states = match &self.norm2 {
            Some(norm) => fp32_layer_norm(
                hidden_states.clone(),
                Some(norm.gamma.val()),
                norm.beta.as_ref().map(|b| b.val()),
                self.eps,
            )
            .cast(dtype),
            None => hidden_states.clone(),
        };
        self.attn2.forward_kv_image(
            norm_hidden_states,
            key.clone(),
            value.clone(),
            image_kv,
            true,
            None,
            0,
        )
    }
}

/// `cat([x[:, ..start], x[:, start..] + y], dim=1)`: [`add_rows_at`] in `x`'s buffer on the CPU
/// backend (f32), the add (fresh buffer on the left, updated in place) and `cat` elsewhere.
///
/// # Shapes
/// `x: [B, S, dim]`, `y: [B, S − start, dim]` → `[B, S, dim]`
fn residual_at<B: Backend>(x: Tensor<B, 3>, start: usize, y: Tensor<B, 3>) -> Tensor<B, 3> {
    if rows_kernels_apply(&x) && rows_kernels_apply(&y) {
        return add_rows_at(x, start, &y);
    }
    let [_, s, _] = x.dims();
    let noisy = y + x.clone().narrow(1, start, s - start);
    if start == 0 {
        noisy
    } else {
        Tensor::cat(vec![x.narrow(1, 0, start), noisy], 1)
    }
}

/// `norm(x.float()) * (1 + scale) + shift` on the tokens `start..start + len` of `x` (f32, the
/// parameter-free `FP32LayerNorm`). The segment is normalised on its own (the norm is per token,
/// so this is the same number) so the modulation broadcasts over the norm's fresh contiguous
/// output: the CPU backend's SIMD row kernels, in place.
///
/// # Shapes
/// `x: [B, S, dim]`, `scale`, `shift`: `[B or 1, 1, dim]` → `[B, len, dim]`
fn modulate<B: Backend>(
    x: &Tensor<B, 3>,
    start: usize,
    len: usize,
    scale: &Tensor<B, 3>,
    shift: &Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    fp32_layer_norm(x.clone().narrow(1, start, len), None, None, eps) * (scale.clone() + 1.0)
        + shift.clone()
}

/// `x + y * gate` on the tokens `start..start + len` (f32). The product is taken on a contiguous
/// copy of `y`'s segment ([`contiguous`]; a no-op on CUDA) and the sum with it on the left, so
/// both run in place on the CPU backend's SIMD kernels (`a + b` is `b + a` in IEEE arithmetic).
///
/// # Shapes
/// `x`, `y`: `[B, S, dim]`, `gate`: `[B or 1, 1, dim]` → `[B, len, dim]`
fn gated_residual<B: Backend>(
    x: &Tensor<B, 3>,
    y: &Tensor<B, 3>,
    start: usize,
    len: usize,
    gate: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    contiguous(y.clone().narrow(1, start, len)) * gate.clone() + x.clone().narrow(1, start, len)
}

/// diffusers `HeliosOutputNorm`: parameter-free `FP32LayerNorm` modulated by
/// `scale_shift_table + temb` (shift, scale), on the noisy tokens only.
#[derive(Module, Debug)]
pub struct HeliosOutputNorm<B: Backend> {
    /// `[1, 2, dim]`
    pub scale_shift_table: Param<Tensor<B, 3>>,
    pub eps: f64,
}

impl<B: Backend> HeliosOutputNorm<B> {
    /// # Shapes
    /// `hidden_states: [B, S0, dim]` (noisy tokens), `temb: [B, dim]` → `[B, S0, dim]`
    pub fn forward(&self, hidden_states: Tensor<B, 3>, temb: Tensor<B, 2>) -> Tensor<B, 3> {
        output_norm(&self.scale_shift_table.val(), hidden_states, temb, self.eps)
    }
}

/// The output norm of `HeliosOutputNorm.forward` and of `WanTransformer3DModel.forward` step 5
/// (the same lines; Wan keeps the table at the top level): parameter-free `FP32LayerNorm`
/// modulated by `(shift, scale) = (scale_shift_table + temb)` in f32, cast back.
///
/// # Shapes
/// `scale_shift_table: [1, 2, dim]`, `hidden_states: [B, S, dim]`, `temb: [B, dim]` → `[B, S, dim]`
pub fn output_norm<B: Backend>(
    scale_shift_table: &Tensor<B, 3>,
    hidden_states: Tensor<B, 3>,
    temb: Tensor<B, 2>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = hidden_states.dtype();
    // shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
    let m =
        scale_shift_table.clone().cast(DType::F32) + temb.cast(DType::F32).unsqueeze_dim::<3>(1);
    let shift = m.clone().narrow(1, 0, 1);
    let scale = m.narrow(1, 1, 1);
    // (self.norm(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
    (fp32_layer_norm(hidden_states, None, None, eps) * (scale + 1.0) + shift).cast(dtype)
}

// ------------------------------------------------------------------------------------------------
// Model

/// A prompt prepared for the transformer: the projected text and, per block, the
/// cross-attention keys and values (see [`HeliosTransformer3DModel::text_context`]).
#[derive(Debug, Clone)]
pub struct TextContext<B: Backend> {
    /// `[B, L, dim]`, from [`HeliosTransformer3DModel::project_text`].
    pub text: Tensor<B, 3>,
    /// `(key, value)`, each `[B, L, dim]`, one pair per block.
    pub cross_kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
}

/// The compressed history a chunk is denoised against (helios.md §1.3): latents at full latent
/// resolution and their RoPE frame indices.
///
/// # Shapes
/// `latents_history_short: [B, C, T_s, H, W]` (T_s = 2 in the pipelines), `_mid: [B, C, T_m, H,
/// W]`, `_long: [B, C, T_l, H, W]`; each index list has that term's frame count.
#[derive(Debug, Clone)]
pub struct HistoryInputs<B: Backend> {
    pub latents_history_short: Tensor<B, 5>,
    pub latents_history_mid: Tensor<B, 5>,
    pub latents_history_long: Tensor<B, 5>,
    pub indices_latents_history_short: Vec<i64>,
    pub indices_latents_history_mid: Vec<i64>,
    pub indices_latents_history_long: Vec<i64>,
}

/// diffusers `HeliosTransformer3DModel`.
#[derive(Module, Debug)]
pub struct HeliosTransformer3DModel<B: Backend> {
    pub patch_embedding: Conv3d<B>,
    /// History "short" term (1× patches).
    pub patch_short: Option<Conv3d<B>>,
    /// History "mid" term (2× patches).
    pub patch_mid: Option<Conv3d<B>>,
    /// History "long" term (4× patches).
    pub patch_long: Option<Conv3d<B>>,
    pub condition_embedder: HeliosTimeTextEmbedding<B>,
    pub blocks: Vec<HeliosTransformerBlock<B>>,
    pub norm_out: HeliosOutputNorm<B>,
    pub proj_out: Linear<B>,
    #[module(skip)]
    config: HeliosTransformer3DModelConfig,
}

/// The inputs of one forward with a precomputed [`TextContext`]: the noisy latents
/// `[B, C, T, H, W]`, one timestep per batch row, the prompt context, the RoPE frame indices of
/// the noisy frames and the history.
pub type ForwardInputs<'a, B> = (
    Tensor<B, 5>,
    &'a [f32],
    &'a TextContext<B>,
    &'a [i64],
    Option<&'a HistoryInputs<B>>,
);

impl<B: Backend> HeliosTransformer3DModel<B> {
    load_methods! {
        /// Load `config.json` and `diffusion_pytorch_model*.safetensors` from a diffusers
        /// `transformer/` folder with the weights cast to `dtype`, except the
        /// [`KEEP_IN_FP32_MODULES`], which are f32 (diffusers `from_pretrained(torch_dtype=dtype)`).
        /// [`load`](Self::load) is the same in the device's default float dtype.
        ///
        /// # Errors
        /// [`LoadError`] for a missing or unsupported config (the message names the field), missing
        /// weights, or a missing / unexpected / wrongly shaped tensor (named with its file).
        ///
        /// [`LoadError`]: crate::pipeline::checkpoint::LoadError
        weights "diffusion_pytorch_model", keys KEY_MAP,
        build |config: HeliosTransformer3DModelConfig, device| {
            config.validate()?;
            Ok(config.init(device))
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &HeliosTransformer3DModelConfig {
        &self.config
    }

    /// The compute dtype: that of the weights outside [`KEEP_IN_FP32_MODULES`].
    pub fn dtype(&self) -> DType {
        self.proj_out.weight.val().dtype()
    }

    /// The text projection (`condition_embedder.text_embedder`) of the prompt embeddings. It
    /// depends only on the prompt, so the pipeline computes it once and passes it to every
    /// [`forward`](Self::forward) of every step and chunk.
    ///
    /// # Shapes
    /// `encoder_hidden_states: [B, L, text_dim]` → `[B, L, dim]`
    pub fn project_text(&self, encoder_hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, _, d] = encoder_hidden_states.dims();
        assert_eq!(
            d, self.config.text_dim,
            "encoder_hidden_states has width {d}, the transformer expects text_dim {}",
            self.config.text_dim
        );
        self.condition_embedder
            .text_embedder
            .forward(encoder_hidden_states.cast(self.dtype()))
    }

    /// One denoiser evaluation: the flow prediction for the noisy chunk.
    ///
    /// `timestep` holds one value per batch element (the pyramid pipeline passes int-truncated
    /// timesteps as f32). `indices_hidden_states` are the RoPE frame indices of the `T / p_t`
    /// post-patch frames (diffusers' `indices_hidden_states=None` is `0..T/p_t`). With
    /// `history`, its tokens are prepended in the order long, mid, short.
    ///
    /// # Shapes
    /// `hidden_states: [B, C_in, T, H, W]` (T in latent frames, H and W in latent pixels, divisible
    /// by `patch_size`), `text: [B, L, dim]` from [`project_text`](Self::project_text) →
    /// `[B, C_out, T, H, W]`
    ///
    /// # Panics
    /// On shape mismatches (each message names the tensor), or history without the memory patch
    /// embedders.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: &[f32],
        text: Tensor<B, 3>,
        indices_hidden_states: &[i64],
        history: Option<&HistoryInputs<B>>,
    ) -> Tensor<B, 5> {
        let context = self.text_context(text);
        self.forward_with_context(
            hidden_states,
            timestep,
            &context,
            indices_hidden_states,
            history,
        )
    }

    /// The prompt's cross-attention keys and values of every block (`attn2.norm_k(attn2.to_k(text))`,
    /// `attn2.to_v(text)`): they depend only on the prompt, so the pipeline computes them once per
    /// request and reuses them for every step of every chunk (diffusers recomputes them each call;
    /// vLLM-Omni caches them the same way).
    ///
    /// # Shapes
    /// `text: [B, L, dim]` from [`project_text`](Self::project_text)
    pub fn text_context(&self, text: Tensor<B, 3>) -> TextContext<B> {
        let cross_kv = self
            .blocks
            .iter()
            .map(|block| block.attn2.key_value(text.clone()))
            .collect();
        TextContext { text, cross_kv }
    }

    /// [`forward`](Self::forward) with the prompt's [`TextContext`] precomputed.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_with_context(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: &[f32],
        text: &TextContext<B>,
        indices_hidden_states: &[i64],
        history: Option<&HistoryInputs<B>>,
    ) -> Tensor<B, 5> {
        let inputs = (
            hidden_states,
            timestep,
            text,
            indices_hidden_states,
            history,
        );
        self.forward_stoppable(inputs, &|| false)
            .expect("never stopped")
    }

    /// [`forward_with_context`](Self::forward_with_context) that checks `stop` before each
    /// transformer block and gives up (`None`) as soon as it says so: a cancelled request frees
    /// the device within one block, not one whole forward.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_stoppable(
        &self,
        (hidden_states, timestep, text, indices_hidden_states, history): ForwardInputs<'_, B>,
        stop: &dyn Fn() -> bool,
    ) -> Option<Tensor<B, 5>> {
        let cfg = &self.config;
        let dim = cfg.inner_dim();
        let [p_t, p_h, p_w] = cfg.patch_size;
        let [b, c, t, h, w] = hidden_states.dims();
        assert_eq!(
            c, cfg.in_channels,
            "hidden_states has {c} channels, expected in_channels {}",
            cfg.in_channels
        );
        assert!(
            t % p_t == 0 && h % p_h == 0 && w % p_w == 0,
            "hidden_states frames/height/width {t}×{h}×{w} must be multiples of patch_size {:?}",
            cfg.patch_size
        );
        assert_eq!(
            timestep.len(),
            b,
            "timestep has {} values for a batch of {b}",
            timestep.len()
        );
        assert_eq!(
            text.text.dims()[0],
            b,
            "text batch {} does not match hidden_states batch {b}",
            text.text.dims()[0]
        );
        assert_eq!(
            text.text.dims()[2],
            dim,
            "text has width {}, expected the projected width {dim} (use project_text)",
            text.text.dims()[2]
        );
        assert_eq!(
            indices_hidden_states.len(),
            t / p_t,
            "indices_hidden_states has {} entries for {} post-patch frames",
            indices_hidden_states.len(),
            t / p_t
        );
        let device = hidden_states.device();
        let hidden_states = hidden_states.cast(self.dtype());
        let freqs = [
            rope_freqs(cfg.rope_dim[0], cfg.rope_theta),
            rope_freqs(cfg.rope_dim[1], cfg.rope_theta),
            rope_freqs(cfg.rope_dim[2], cfg.rope_theta),
        ];

        // 2. Process noisy latents
        // [B, S0, dim] and the grid (T', H', W')
        let (x, [tp, hp, wp]) = patch_embed(&self.patch_embedding, hidden_states);
        let original_context_length = tp * hp * wp;
        let mut noisy_rope = RopeTables::new(cfg.attention_head_dim / 2);
        noisy_rope.push_grid(&freqs, indices_hidden_states, hp, wp, 1);

        // 3.–5. History latents, each prepended: final order long, mid, short, noisy.
        let (x, rope) = match history {
            None => (x, noisy_rope),
            Some(hist) => {
                let (tokens, rope) = self.embed_history(hist, b, &freqs);
                let mut all = rope;
                all.cos.extend_from_slice(&noisy_rope.cos);
                all.sin.extend_from_slice(&noisy_rope.sin);
                (Tensor::cat(vec![tokens, x], 1), all)
            }
        };
        let seq_len = x.dims()[1];
        debug_assert_eq!(rope.len(), seq_len);
        let history_len = seq_len - original_context_length;
        let rotary_emb = rope.to_device::<B>(&device);

        // Timestep conditioning: t for the noisy tokens; t = 0 for history tokens when
        // zero_history_timestep (diffusers: timestep_t0 = torch.zeros((1),..)).
        let (temb, timestep_proj) = self.condition_embedder.forward_time(timestep, &device);
        let timestep_proj_history = (cfg.zero_history_timestep && history_len > 0).then(|| {
            let (_, proj_t0) = self.condition_embedder.forward_time(&[0.0], &device);
            proj_t0.reshape([1, 6, dim])
        });
        let cond = Conditioning {
            timestep_proj: timestep_proj.reshape([b, 6, dim]),
            timestep_proj_history,
            history_len,
            timestep_proj_per_token: None,
        };

        // 6. Transformer blocks
        let mut x = x;
        for (block, kv) in self.blocks.iter().zip(&text.cross_kv) {
            if stop() {
                return None;
            }
            x = block.forward(x, kv, None, &cond, &rotary_emb);
        }

        // 7. Normalization (noisy tokens only)
        let x = x.narrow(1, history_len, original_context_length);
        let x = self.norm_out.forward(x, temb);
        let x = self.proj_out.forward(x); // [B, S0, p_t·p_h·p_w·C_out]

        // 8. Unpatchify
        // reshape(B, T', H', W', p_t, p_h, p_w, C) → permute(0, 7, 1, 4, 2, 5, 3, 6)
        let c_out = cfg.out_channels();
        Some(
            x.reshape([b, tp, hp, wp, p_t, p_h, p_w, c_out])
                .permute([0, 7, 1, 4, 2, 5, 3, 6])
                .reshape([b, c_out, tp * p_t, hp * p_h, wp * p_w]),
        )
    }

    /// Patch-embed the three history terms and build their RoPE tables.
    ///
    /// Returns the tokens `[B, S_hist, dim]` in the order long, mid, short, and the matching
    /// tables.
    fn embed_history(
        &self,
        hist: &HistoryInputs<B>,
        batch: usize,
        freqs: &[Vec<f32>; 3],
    ) -> (Tensor<B, 3>, RopeTables) {
        let cfg = &self.config;
        let (Some(patch_short), Some(patch_mid), Some(patch_long)) =
            (&self.patch_short, &self.patch_mid, &self.patch_long)
        else {
            panic!("history inputs need has_multi_term_memory_patch = true");
        };
        let check = |name: &str, lat: &Tensor<B, 5>, indices: &[i64]| {
            let [bb, cc, tt, _, _] = lat.dims();
            assert_eq!(bb, batch, "{name} batch {bb}, expected {batch}");
            assert_eq!(
                cc, cfg.in_channels,
                "{name} has {cc} channels, expected {}",
                cfg.in_channels
            );
            assert_eq!(
                tt,
                indices.len(),
                "{name} has {tt} frames but its index list has {}",
                indices.len()
            );
        };
        check(
            "latents_history_short",
            &hist.latents_history_short,
            &hist.indices_latents_history_short,
        );
        check(
            "latents_history_mid",
            &hist.latents_history_mid,
            &hist.indices_latents_history_mid,
        );
        check(
            "latents_history_long",
            &hist.latents_history_long,
            &hist.indices_latents_history_long,
        );
        let half = cfg.attention_head_dim / 2;
        let dtype = self.dtype();

        // 3. Short: patch_short(latents_history_short), RoPE on its own grid (H1, W1).
        let (short, [_, h1, w1]) =
            patch_embed(patch_short, hist.latents_history_short.clone().cast(dtype));
        let mut rope_short = RopeTables::new(half);
        rope_short.push_grid(freqs, &hist.indices_latents_history_short, h1, w1, 1);

        // 4. Mid: patch_mid(pad_for_3d_conv(latents, (2, 4, 4))); RoPE on (H1, W1), replicate
        // padded to (2, 2, 2) and average-pooled by 2.
        let (mid, _) = patch_embed(
            patch_mid,
            pad_for_3d_conv(hist.latents_history_mid.clone().cast(dtype), MID_LATENT_PAD),
        );
        let mut rope_mid = RopeTables::new(half);
        rope_mid.push_grid(
            freqs,
            &hist.indices_latents_history_mid,
            h1,
            w1,
            MID_ROPE_POOL,
        );
        assert_eq!(
            mid.dims()[1],
            rope_mid.len(),
            "latents_history_mid gives {} tokens but its RoPE grid (from the short history's {h1}×{w1}) has {}",
            mid.dims()[1],
            rope_mid.len()
        );

        // 5. Long: same with (4, 8, 8) and pool 4.
        let (long, _) = patch_embed(
            patch_long,
            pad_for_3d_conv(
                hist.latents_history_long.clone().cast(dtype),
                LONG_LATENT_PAD,
            ),
        );
        let mut rope = RopeTables::new(half);
        rope.push_grid(
            freqs,
            &hist.indices_latents_history_long,
            h1,
            w1,
            LONG_ROPE_POOL,
        );
        assert_eq!(
            long.dims()[1],
            rope.len(),
            "latents_history_long gives {} tokens but its RoPE grid (from the short history's {h1}×{w1}) has {}",
            long.dims()[1],
            rope.len()
        );

        rope.cos.extend_from_slice(&rope_mid.cos);
        rope.sin.extend_from_slice(&rope_mid.sin);
        rope.cos.extend_from_slice(&rope_short.cos);
        rope.sin.extend_from_slice(&rope_short.sin);
        (Tensor::cat(vec![long, mid, short], 1), rope)
    }
}

/// diffusers `pad_for_3d_conv`: replicate-pad frames, height and width at the end up to
/// multiples of `kernel` (`F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")`).
///
/// # Shapes
/// `[B, C, T, H, W]` → `[B, C, ⌈T/k_t⌉·k_t, ⌈H/k_h⌉·k_h, ⌈W/k_w⌉·k_w]`
pub fn pad_for_3d_conv<B: Backend>(x: Tensor<B, 5>, kernel: [usize; 3]) -> Tensor<B, 5> {
    let mut x = x;
    for (axis, k) in kernel.into_iter().enumerate() {
        let dim = axis + 2;
        let n = x.dims()[dim];
        let pad = (k - n % k) % k;
        if pad > 0 {
            let edge = x.clone().narrow(dim, n - 1, 1).repeat_dim(dim, pad);
            x = Tensor::cat(vec![x, edge], dim);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let e = get_timestep_embedding(&[0.0, 1.0], 4);
        // t = 0: cos = 1, sin = 0
        assert_eq!(&e[..4], &[1.0, 1.0, 0.0, 0.0]);
        // t = 1, f = [1, exp(-ln(1e4)/2) = 0.01]
        assert!((e[4] - 1f32.cos()).abs() < 1e-7);
        assert!((e[5] - 0.01f32.cos()).abs() < 1e-7);
        assert!((e[6] - 1f32.sin()).abs() < 1e-7);
        assert!((e[7] - 0.01f32.sin()).abs() < 1e-7);
    }

    /// The fused CPU RoPE gives the same bits as the tensor-op version.
    #[test]
    fn fused_rope_equals_the_tensor_ops() {
        use burn::tensor::Distribution;
        type B = crate::pipeline::backend::CpuBackend;
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<B, 4>::random([2, 7, 3, 8], normal, &device);
        let rope = RotaryEmbedding {
            cos: Tensor::<B, 5>::random([1, 7, 1, 4, 1], normal, &device),
            sin: Tensor::<B, 5>::random([1, 7, 1, 4, 1], normal, &device),
        };
        let fused = apply_rotary_emb_transposed(x.clone(), &rope).into_data();
        assert_eq!(fused, rotary_tensor_ops(x, &rope).into_data());
    }

    #[test]
    fn pooled_rope_axis_averages_clamped_windows() {
        // 3 positions pooled by 2: windows {0, 1} and {2, 2 (replicated)}.
        let (c, s) = axis_table(&[0.0, 1.0, 2.0], &[1.0], 2);
        assert!((c[0] - ((0f32.cos() + 1f32.cos()) / 2.0)).abs() < 1e-7);
        assert!((c[1] - 2f32.cos()).abs() < 1e-7);
        assert!((s[1] - 2f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn default_config_is_the_14b_model_and_valid() {
        let c = HeliosTransformer3DModelConfig::default();
        assert_eq!(c.inner_dim(), 5120);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unsupported_config_values_are_rejected() {
        let mut c = HeliosTransformer3DModelConfig {
            added_kv_proj_dim: Some(5120),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("added_kv_proj_dim"));
        c.added_kv_proj_dim = None;
        c.qk_norm = Some("rms_norm".into());
        assert!(c.validate().unwrap_err().contains("qk_norm"));
        c.qk_norm = Some("rms_norm_across_heads".into());
        c.rope_dim = [44, 42, 40];
        assert!(c.validate().unwrap_err().contains("rope_dim"));
    }
}
