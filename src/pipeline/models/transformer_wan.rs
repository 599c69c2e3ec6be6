//! The Wan2.1 / Wan2.2 diffusion transformer: mirrors diffusers 0.42.1
//! `models/transformers/transformer_wan.py` `WanTransformer3DModel` (with `WanTransformerBlock`,
//! `WanAttention`/`WanAttnProcessor`, `WanRotaryPosEmbed`, `WanTimeTextImageEmbedding` and
//! `WanImageEmbedding`).
//!
//! What diffusers writes twice is written once here (wan.md §1.1): the block
//! (`transformer_wan.py:462-504` = `transformer_helios.py:428-498` with no history tokens and
//! every token cross-attending) *is* [`HeliosTransformerBlock`], whose attention carries the
//! optional image projections `add_k_proj`/`add_v_proj`/`norm_added_k` of `WanAttention`
//! ([`HeliosAttention::forward_kv_image`]); the timestep embedding is
//! [`time_embedding`](super::transformer_helios::time_embedding), the output norm
//! [`output_norm`](super::transformer_helios::output_norm), the RoPE application
//! [`apply_rotary_emb_transposed`](super::transformer_helios::apply_rotary_emb_transposed).
//! What is Wan's own lives here: the config, the RoPE table (`WanRotaryPosEmbed`: per-axis
//! tables of positions `0..rope_max_seq_len`, computed in float64 and stored float32),
//! `WanImageEmbedding` (CLIP tokens → `dim`, with the FLF2V `pos_embed`), the top-level
//! `scale_shift_table`, and the forward.
//!
//! Deliberate divergences from diffusers (pinned by `tests/transformer_wan.rs`, whole forwards
//! against diffusers to ≤ 1e-4 in f32, with and without image embeddings):
//! - **Text and image contexts are separate inputs.** diffusers concatenates the projected image
//!   tokens in front of the text and splits them again in the attention at `L − 512` (a
//!   hard-coded text length); here [`WanContext`] carries both, so any text length works (the
//!   pipelines pad to 512 anyway, and then the numbers are the same). Their cross-attention keys
//!   and values are computed once per prompt ([`WanTransformer3DModel::context`]).
//! - **Per-token timesteps** (Wan2.2 TI2V `expand_timesteps`, diffusers `timestep: [B, S]`) are
//!   a flat slice of `B·S` values ([`WanTransformer3DModel::forward_stoppable`] tells them from
//!   one per row by the length).
//! - Precision follows diffusers as in `transformer_helios.rs` ([`KEEP_IN_FP32_MODULES`] is
//!   diffusers' list).

use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use serde::Deserialize;

use super::transformer_helios::{
    Conditioning, HeliosTransformer3DModelConfig, HeliosTransformerBlock,
    PixArtAlphaTextProjection, RotaryEmbedding, TimestepEmbedding, fp32_layer_norm, linear,
    output_norm, time_embedding,
};
use crate::pipeline::checkpoint::{load_methods, require_positive};
use crate::pipeline::models::conv3d_dispatch::patch_embed;
use crate::pipeline::models::linear_dispatch::dispatch_linear;
use crate::pipeline::precision::PrecisionMapper;
use crate::pipeline::weights::KeyMap;

pub use super::transformer_helios::HeliosAttention as WanAttention;

/// diffusers `WanTransformerBlock`: the same module as [`HeliosTransformerBlock`] (same keys,
/// same math once there are no history tokens and `guidance_cross_attn` is off).
pub type WanTransformerBlock<B> = HeliosTransformerBlock<B>;

/// Checkpoint-key renames (`regex`, replacement), one row per rename.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // `attn{1,2}.to_out` is `ModuleList([Linear, Dropout])`: the Linear is `to_out.0`.
    (r"\.to_out\.0\.", ".to_out."),
    // `FeedForward.net[0]` wraps its Linear as `.proj`; `net[2]` is the output Linear.
    (r"\.ffn\.net\.0\.proj\.", ".ffn.net_0_proj."),
    (r"\.ffn\.net\.2\.", ".ffn.net_2."),
    // The same for `WanImageEmbedding.ff` (GELU exact).
    (r"\.ff\.net\.0\.proj\.", ".ff.net_0_proj."),
    (r"\.ff\.net\.2\.", ".ff.net_2."),
    // `torch.nn.RMSNorm.weight` is Burn's `RmsNorm.gamma`.
    (r"\.(norm_[qk]|norm_added_k)\.weight$", ".${1}.gamma"),
    // `FP32LayerNorm` `{weight,bias}` (the blocks' `norm2`, the image embedder's `norm1`/`norm2`)
    // are Burn's `LayerNorm.{gamma,beta}`.
    (r"\.(norm[12])\.weight$", ".${1}.gamma"),
    (r"\.(norm[12])\.bias$", ".${1}.beta"),
];

/// A diffusers parameter key (`blocks.0.attn1.to_out.0.weight`,
/// `condition_embedder.image_embedder.ff.net.0.proj.weight`) as the Burn module path, through
/// [`KEY_REMAP`] (LoRA merges address parameters so).
pub fn burn_param_path(key: &str) -> String {
    super::transformer_helios::remap_key(KEY_REMAP, key)
}

/// A Burn Linear module path as the diffusers one (`ff.net_0_proj` → `ff.net.0.proj`): the
/// inverse of [`KEY_REMAP`]'s Linear rows, which are Helios's plus the image embedder's.
pub use super::transformer_helios::diffusers_module_path;

/// diffusers `WanTransformer3DModel._keep_in_fp32_modules` (`rope` has no parameters here; its
/// tables are built in f32 on the host).
pub const KEEP_IN_FP32_MODULES: &[&str] = &[
    "time_embedder",
    "scale_shift_table",
    "norm1",
    "norm2",
    "norm3",
];

/// diffusers `_keys_to_ignore_on_load_unexpected`.
pub const KEY_IGNORE: &[&str] = &[r"norm_added_q"];

/// How the checkpoint's keys meet the module tree.
pub const KEY_MAP: KeyMap<'static> = KeyMap {
    remap: KEY_REMAP,
    ignore: KEY_IGNORE,
    keep_in_fp32: KEEP_IN_FP32_MODULES,
};

/// `FP32LayerNorm(in_features)` default `eps` of `WanImageEmbedding.norm1`/`norm2`.
pub const IMAGE_EMBED_NORM_EPS: f64 = 1e-5;

/// `theta` of `WanRotaryPosEmbed` (its default; diffusers never passes another).
pub const ROPE_THETA: f64 = 10000.0;

// ------------------------------------------------------------------------------------------------
// Config

/// `transformer/config.json` of a Wan checkpoint, with diffusers' JSON names; absent keys take the
/// `WanTransformer3DModel.__init__` defaults (the 14B model's values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct WanTransformer3DModelConfig {
    /// Must be `WanTransformer3DModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// `(p_t, p_h, p_w)` of the patch embedding.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    /// Even (the RoPE splits it into `t, h, w = D − 4⌊D/6⌋, 2⌊D/6⌋, 2⌊D/6⌋`).
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// `None` (or 0) means `in_channels`.
    pub out_channels: Option<usize>,
    /// Width of the text-encoder embeddings (UMT5-XXL: 4096).
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// Whether the blocks' `norm2` (affine, before cross-attention) exists.
    pub cross_attn_norm: bool,
    /// Only `rms_norm_across_heads` is accepted.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Width of the CLIP image tokens (1280); `Some` builds `condition_embedder.image_embedder`.
    pub image_dim: Option<usize>,
    /// Width of the image context fed to `add_k_proj`/`add_v_proj` (`Some` in Wan2.1 I2V / FLF2V,
    /// equal to the inner dim).
    pub added_kv_proj_dim: Option<usize>,
    /// Positions per axis of the RoPE table.
    pub rope_max_seq_len: usize,
    /// FLF2V: `image_embedder.pos_embed: [1, pos_embed_seq_len, image_dim]`, added after the two
    /// images' tokens are joined (`2·257 = 514`).
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for WanTransformer3DModelConfig {
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
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl WanTransformer3DModelConfig {
    /// The diffusers class this config belongs to.
    pub const CLASS_NAME: &'static str = "WanTransformer3DModel";

    /// `num_attention_heads * attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`.
    pub fn out_channels(&self) -> usize {
        match self.out_channels {
            Some(c) if c > 0 => c,
            _ => self.in_channels,
        }
    }

    /// `WanRotaryPosEmbed`'s split `(t_dim, h_dim, w_dim)`: `h = w = 2·⌊D/6⌋`, `t = D − h − w`.
    pub fn rope_dims(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Check the values this port supports; the message names the field.
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
            self: num_attention_heads, attention_head_dim, in_channels, text_dim, freq_dim, ffn_dim,
            rope_max_seq_len
        );
        if !self.attention_head_dim.is_multiple_of(2) {
            return Err(format!(
                "attention_head_dim must be even, got {}",
                self.attention_head_dim
            ));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(format!("eps must be positive, got {}", self.eps));
        }
        if self.qk_norm.as_deref() != Some("rms_norm_across_heads") {
            return Err(format!(
                "qk_norm = {:?} is not supported (expected \"rms_norm_across_heads\")",
                self.qk_norm
            ));
        }
        if self.image_dim.is_some() != self.added_kv_proj_dim.is_some() {
            return Err(format!(
                "image_dim ({:?}) and added_kv_proj_dim ({:?}) must be set together",
                self.image_dim, self.added_kv_proj_dim
            ));
        }
        if self.pos_embed_seq_len.is_some() && self.image_dim.is_none() {
            return Err("pos_embed_seq_len needs image_dim".to_string());
        }
        if let Some(d) = self.added_kv_proj_dim
            && d != self.inner_dim()
        {
            return Err(format!(
                "added_kv_proj_dim = {d} must equal the inner dim {} (the image tokens are projected to it)",
                self.inner_dim()
            ));
        }
        Ok(())
    }

    /// The Helios block config whose blocks are this model's (no history, every token
    /// cross-attends, the RoPE split of `WanRotaryPosEmbed`).
    fn block_config(&self) -> HeliosTransformer3DModelConfig {
        HeliosTransformer3DModelConfig {
            class_name: None,
            patch_size: self.patch_size,
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: self.attention_head_dim,
            in_channels: self.in_channels,
            out_channels: Some(self.out_channels()),
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.num_layers,
            cross_attn_norm: self.cross_attn_norm,
            qk_norm: self.qk_norm.clone(),
            eps: self.eps,
            added_kv_proj_dim: None,
            rope_dim: self.rope_dims(),
            rope_theta: ROPE_THETA,
            guidance_cross_attn: false,
            zero_history_timestep: false,
            has_multi_term_memory_patch: false,
            is_amplify_history: false,
            history_scale_mode: Default::default(),
        }
    }

    /// Every Linear of the model by diffusers module path with `(out, in)`: what a LoRA adapter
    /// may target (diffusers `WanLoraLoaderMixin`; checked at admission, before the model is
    /// touched). The blocks, embedders and `proj_out` are Helios's
    /// ([`HeliosTransformer3DModelConfig::lora_targets`]); an image-conditioned transformer adds
    /// `attn2.add_k_proj`/`add_v_proj` (`added_kv_proj_dim` → dim) and
    /// `condition_embedder.image_embedder.ff.net.{0.proj,2}`. Mirrors [`Self::init`];
    /// tests/lora_wan.rs checks the two agree.
    pub fn lora_targets(&self) -> crate::pipeline::lora::LoraTargets {
        let dim = self.inner_dim();
        let mut t = self.block_config().lora_targets();
        if let Some(d) = self.added_kv_proj_dim {
            for i in 0..self.num_layers {
                for m in ["add_k_proj", "add_v_proj"] {
                    t.insert(format!("blocks.{i}.attn2.{m}"), (dim, d));
                }
            }
        }
        if let Some(img) = self.image_dim {
            let e = "condition_embedder.image_embedder.ff";
            t.insert(format!("{e}.net.0.proj"), (img, img));
            t.insert(format!("{e}.net.2"), (dim, img));
        }
        t
    }

    /// Build the model with lazily initialised parameters.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> WanTransformer3DModel<B> {
        if let Err(e) = self.validate() {
            panic!("invalid WanTransformer3DModelConfig: {e}");
        }
        let dim = self.inner_dim();
        let p = self.patch_size;
        let block_config = self.block_config();
        let blocks = (0..self.num_layers)
            .map(|_| {
                let mut block = HeliosTransformerBlock::init(&block_config, device);
                if let Some(d) = self.added_kv_proj_dim {
                    block.attn2 = block.attn2.with_added_kv(d, self.eps, device);
                }
                block
            })
            .collect();
        let image_embedder = self.image_dim.map(|img| {
            let norm = |d: usize| {
                LayerNormConfig::new(d)
                    .with_epsilon(IMAGE_EMBED_NORM_EPS)
                    .init(device)
            };
            WanImageEmbedding {
                norm1: norm(img),
                ff: WanImageFeedForward {
                    net_0_proj: linear(img, img, device),
                    net_2: linear(img, dim, device),
                },
                norm2: norm(dim),
                pos_embed: self
                    .pos_embed_seq_len
                    .map(|l| Initializer::Zeros.init([1, l, img], device)),
            }
        });
        WanTransformer3DModel {
            patch_embedding: Conv3dConfig::new([self.in_channels, dim], p)
                .with_stride(p)
                .init(device),
            condition_embedder: WanTimeTextImageEmbedding {
                time_embedder: TimestepEmbedding {
                    linear_1: linear(self.freq_dim, dim, device),
                    linear_2: linear(dim, dim, device),
                },
                time_proj: linear(dim, 6 * dim, device),
                text_embedder: PixArtAlphaTextProjection {
                    linear_1: linear(self.text_dim, dim, device),
                    linear_2: linear(dim, dim, device),
                },
                image_embedder,
                freq_dim: self.freq_dim,
            },
            blocks,
            scale_shift_table: Initializer::Zeros.init([1, 2, dim], device),
            proj_out: linear(
                dim,
                self.out_channels() * p.iter().product::<usize>(),
                device,
            ),
            config: self.clone(),
        }
    }

    /// [`init`](Self::init) with the parameters cast to `dtype` (f32 for
    /// [`KEEP_IN_FP32_MODULES`]): for benchmarks with random weights.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn init_with_dtype<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
    ) -> WanTransformer3DModel<B> {
        PrecisionMapper::apply(self.init(device), dtype, KEEP_IN_FP32_MODULES)
    }
}

// ------------------------------------------------------------------------------------------------
// Embeddings

/// diffusers `FeedForward(in, out, mult=1, activation_fn="gelu")` of `WanImageEmbedding`:
/// `net.0.proj → GELU (exact, erf) → net.2`.
#[derive(Module, Debug)]
pub struct WanImageFeedForward<B: Backend> {
    pub net_0_proj: Linear<B>,
    pub net_2: Linear<B>,
}

impl<B: Backend> WanImageFeedForward<B> {
    /// # Shapes
    /// `[B, L, in]` → `[B, L, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        dispatch_linear(&self.net_2, gelu(dispatch_linear(&self.net_0_proj, x)))
    }
}

/// diffusers `WanImageEmbedding`: `FP32LayerNorm(image_dim)` → `FeedForward` (GELU) →
/// `FP32LayerNorm(dim)`, with the FLF2V `pos_embed` added first.
#[derive(Module, Debug)]
pub struct WanImageEmbedding<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub ff: WanImageFeedForward<B>,
    pub norm2: LayerNorm<B>,
    /// `[1, pos_embed_seq_len, image_dim]` (FLF2V only).
    pub pos_embed: Option<Param<Tensor<B, 3>>>,
}

/// `FP32LayerNorm` with affine parameters: `F.layer_norm(x.float(), w.float(), b.float(),
/// eps).to(origin_dtype)`.
fn fp32_affine_norm<B: Backend>(norm: &LayerNorm<B>, x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    fp32_layer_norm(
        x,
        Some(norm.gamma.val()),
        norm.beta.as_ref().map(|b| b.val()),
        eps,
    )
    .cast(dtype)
}

impl<B: Backend> WanImageEmbedding<B> {
    /// # Shapes
    /// `encoder_hidden_states_image: [B, L_img, image_dim]` (`L_img = 257` CLIP tokens per
    /// image; FLF2V: `[2B, 257, image_dim]`, joined to `[B, 514, image_dim]` as diffusers'
    /// `view(-1, 2·L, D)` does) → `[B, L_img, dim]`
    pub fn forward(&self, encoder_hidden_states_image: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match &self.pos_embed {
            Some(pos) => {
                let [b, l, d] = encoder_hidden_states_image.dims();
                assert!(
                    b % 2 == 0,
                    "FLF2V image embeddings need first and last image rows, got {b}"
                );
                encoder_hidden_states_image.reshape([b / 2, 2 * l, d]) + pos.val()
            }
            None => encoder_hidden_states_image,
        };
        let x = fp32_affine_norm(&self.norm1, x, IMAGE_EMBED_NORM_EPS);
        let x = self.ff.forward(x);
        fp32_affine_norm(&self.norm2, x, IMAGE_EMBED_NORM_EPS)
    }
}

/// diffusers `WanTimeTextImageEmbedding`: the timestep embedding (shared with Helios), the text
/// projection and, for I2V / FLF2V, the image embedding.
#[derive(Module, Debug)]
pub struct WanTimeTextImageEmbedding<B: Backend> {
    pub time_embedder: TimestepEmbedding<B>,
    pub time_proj: Linear<B>,
    pub text_embedder: PixArtAlphaTextProjection<B>,
    pub image_embedder: Option<WanImageEmbedding<B>>,
    pub freq_dim: usize,
}

/// `WanRotaryPosEmbed` for a `(frames, height, width)` post-patch grid, in the pair layout of
/// [`RotaryEmbedding`]: per axis, `cos/sin(pos·f_k)` with `f_k = 1/θ^(2k/d)`, all in float64,
/// rounded to float32 (`get_1d_rotary_pos_embed(.., freqs_dtype=torch.float64)` then
/// `.float()`), positions `0..n` of each axis.
fn rope_tables(dims: [usize; 3], grid: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let axis = |d: usize, n: usize| -> (Vec<f32>, Vec<f32>) {
        let freqs: Vec<f64> = (0..d / 2)
            .map(|k| 1.0 / ROPE_THETA.powf((2 * k) as f64 / d as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * freqs.len());
        let mut sin = Vec::with_capacity(n * freqs.len());
        for p in 0..n {
            for f in &freqs {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    };
    let axes = [
        axis(dims[0], grid[0]),
        axis(dims[1], grid[1]),
        axis(dims[2], grid[2]),
    ];
    let half: usize = dims.iter().map(|d| d / 2).sum();
    let s = grid.iter().product::<usize>();
    let (mut cos, mut sin) = (Vec::with_capacity(s * half), Vec::with_capacity(s * half));
    for t in 0..grid[0] {
        for y in 0..grid[1] {
            for x in 0..grid[2] {
                for (a, idx) in [(0, t), (1, y), (2, x)] {
                    let n = dims[a] / 2;
                    cos.extend_from_slice(&axes[a].0[idx * n..(idx + 1) * n]);
                    sin.extend_from_slice(&axes[a].1[idx * n..(idx + 1) * n]);
                }
            }
        }
    }
    (cos, sin)
}

// ------------------------------------------------------------------------------------------------
// Model

/// A prompt (and image) prepared for the transformer: per block, the text cross-attention keys
/// and values and, for I2V / FLF2V, the image ones (see [`WanTransformer3DModel::context`]).
#[derive(Debug, Clone)]
pub struct WanContext<B: Backend> {
    /// `(key, value)`, each `[B, L, dim]`, one pair per block.
    pub cross_kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// `(key_img, value_img)`, each `[B, L_img, dim]`, one pair per block (empty without image).
    pub image_kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// Batch size.
    pub batch: usize,
}

/// diffusers `WanTransformer3DModel`.
#[derive(Module, Debug)]
pub struct WanTransformer3DModel<B: Backend> {
    pub patch_embedding: Conv3d<B>,
    pub condition_embedder: WanTimeTextImageEmbedding<B>,
    pub blocks: Vec<WanTransformerBlock<B>>,
    /// `[1, 2, dim]`: the output norm's (shift, scale) table.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    pub proj_out: Linear<B>,
    #[module(skip)]
    config: WanTransformer3DModelConfig,
}

impl<B: Backend> WanTransformer3DModel<B> {
    load_methods! {
        /// Load `config.json` and `diffusion_pytorch_model*.safetensors` from a diffusers
        /// `transformer/` (or `transformer_2/`) folder with the weights cast to `dtype`, except
        /// the [`KEEP_IN_FP32_MODULES`] (f32), as diffusers `from_pretrained(torch_dtype=dtype)`.
        ///
        /// # Errors
        /// [`LoadError`] for a missing or unsupported config (the message names the field),
        /// missing weights, or a missing / unexpected / wrongly shaped tensor.
        ///
        /// [`LoadError`]: crate::pipeline::checkpoint::LoadError
        weights "diffusion_pytorch_model", keys KEY_MAP,
        build |config: WanTransformer3DModelConfig, device| {
            config.validate()?;
            Ok(config.init(device))
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &WanTransformer3DModelConfig {
        &self.config
    }

    /// The compute dtype: that of the weights outside [`KEEP_IN_FP32_MODULES`].
    pub fn dtype(&self) -> DType {
        self.proj_out.weight.val().dtype()
    }

    /// Whether the model takes CLIP image embeddings (`image_dim` set: Wan2.1 I2V / FLF2V).
    pub fn takes_image_embeds(&self) -> bool {
        self.condition_embedder.image_embedder.is_some()
    }

    /// The text projection and, with `encoder_hidden_states_image`, the image embedding, then
    /// every block's cross-attention keys and values: they depend only on the prompt and image,
    /// so the pipeline computes them once per request.
    ///
    /// # Shapes
    /// `encoder_hidden_states: [B, L, text_dim]`, `encoder_hidden_states_image:
    /// [B, 257, image_dim]` (FLF2V `[2B, 257, image_dim]`)
    ///
    /// # Panics
    /// On a width mismatch, or image embeddings for a model without `image_dim` (or none for one
    /// with it).
    pub fn context(
        &self,
        encoder_hidden_states: Tensor<B, 3>,
        encoder_hidden_states_image: Option<Tensor<B, 3>>,
    ) -> WanContext<B> {
        let [batch, _, d] = encoder_hidden_states.dims();
        assert_eq!(
            d, self.config.text_dim,
            "encoder_hidden_states has width {d}, the transformer expects text_dim {}",
            self.config.text_dim
        );
        let text = self
            .condition_embedder
            .text_embedder
            .forward(encoder_hidden_states.cast(self.dtype()));
        let image = match (
            &self.condition_embedder.image_embedder,
            encoder_hidden_states_image,
        ) {
            (Some(embedder), Some(img)) => {
                let [_, _, di] = img.dims();
                assert_eq!(
                    Some(di),
                    self.config.image_dim,
                    "encoder_hidden_states_image has width {di}, expected image_dim {:?}",
                    self.config.image_dim
                );
                Some(embedder.forward(img.cast(self.dtype())))
            }
            (None, None) => None,
            (Some(_), None) => {
                panic!("this transformer needs encoder_hidden_states_image (image_dim is set)")
            }
            (None, Some(_)) => panic!(
                "encoder_hidden_states_image given, but the transformer has no image_embedder"
            ),
        };
        let cross_kv = self
            .blocks
            .iter()
            .map(|b| b.attn2.key_value(text.clone()))
            .collect();
        let image_kv = match image {
            Some(img) => self
                .blocks
                .iter()
                .map(|b| {
                    b.attn2
                        .image_key_value(img.clone())
                        .expect("image_dim implies added_kv_proj_dim (validated)")
                })
                .collect(),
            None => Vec::new(),
        };
        WanContext {
            cross_kv,
            image_kv,
            batch,
        }
    }

    /// One denoiser evaluation (diffusers `forward`) with raw embeddings.
    ///
    /// # Shapes
    /// `hidden_states: [B, C_in, T, H, W]`, `timestep: [B]`, `encoder_hidden_states:
    /// [B, L, text_dim]`, `encoder_hidden_states_image: [B, 257, image_dim]` →
    /// `[B, C_out, T, H, W]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: &[f32],
        encoder_hidden_states: Tensor<B, 3>,
        encoder_hidden_states_image: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 5> {
        let ctx = self.context(encoder_hidden_states, encoder_hidden_states_image);
        self.forward_stoppable(hidden_states, timestep, &ctx, &|| false)
            .expect("never stopped")
    }

    /// [`forward`](Self::forward) with a precomputed [`WanContext`], checking `stop` before each
    /// block (`None` once it says so).
    ///
    /// # Panics
    /// On shape mismatches (the message names the tensor), or a grid beyond `rope_max_seq_len`.
    pub fn forward_stoppable(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: &[f32],
        ctx: &WanContext<B>,
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
        let (tp, hp, wp) = (t / p_t, h / p_h, w / p_w);
        let s = tp * hp * wp;
        // One timestep per row, or per token (Wan2.2 TI2V: `timestep.ndim == 2`).
        let per_token = timestep.len() == b * s && s > 1;
        assert!(
            timestep.len() == b || per_token,
            "timestep has {} values: expected {b} (one per row) or {} (one per token)",
            timestep.len(),
            b * s
        );
        assert_eq!(
            ctx.batch, b,
            "context batch {} does not match hidden_states batch {b}",
            ctx.batch
        );
        assert!(
            tp.max(hp).max(wp) <= cfg.rope_max_seq_len,
            "post-patch grid {tp}×{hp}×{wp} exceeds rope_max_seq_len {}",
            cfg.rope_max_seq_len
        );
        let device = hidden_states.device();

        // 1. Rotary embedding and patch embedding
        let (cos, sin) = rope_tables(cfg.rope_dims(), [tp, hp, wp]);
        let half = cfg.attention_head_dim / 2;
        let up = |v: Vec<f32>| {
            Tensor::<B, 5>::from_data(
                TensorData::new(v, [1, s, 1, half, 1]),
                (&device, DType::F32),
            )
        };
        let rotary_emb = RotaryEmbedding {
            cos: up(cos),
            sin: up(sin),
        };
        let (x, _) = patch_embed(&self.patch_embedding, hidden_states.cast(self.dtype())); // [B, S, dim]

        // 2. Condition embeddings
        let (temb, timestep_proj) = time_embedding(
            &self.condition_embedder.time_embedder,
            &self.condition_embedder.time_proj,
            self.condition_embedder.freq_dim,
            timestep,
            &device,
        );
        // Per token: temb [B, S, dim], timestep_proj [B, S, 6, dim] (diffusers unflattens the
        // same rows).
        let (cond, temb_per_token) = match per_token {
            false => (
                Conditioning {
                    timestep_proj: timestep_proj.reshape([b, 6, dim]),
                    timestep_proj_history: None,
                    history_len: 0,
                    timestep_proj_per_token: None,
                },
                None,
            ),
            true => (
                Conditioning {
                    timestep_proj: Tensor::zeros([b, 6, dim], (&device, DType::F32)),
                    timestep_proj_history: None,
                    history_len: 0,
                    timestep_proj_per_token: Some(timestep_proj.reshape([b, s, 6, dim])),
                },
                Some(temb.clone().reshape([b, s, dim])),
            ),
        };

        // 4. Transformer blocks
        let mut x = x;
        for (i, (block, kv)) in self.blocks.iter().zip(&ctx.cross_kv).enumerate() {
            if stop() {
                return None;
            }
            x = block.forward(x, kv, ctx.image_kv.get(i), &cond, &rotary_emb);
        }

        // 5. Output norm, projection & unpatchify
        let x = match temb_per_token {
            None => output_norm(&self.scale_shift_table.val(), x, temb, cfg.eps),
            Some(temb) => {
                // shift, scale = (scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
                let dtype = x.dtype();
                let table = self.scale_shift_table.val().cast(DType::F32); // [1, 2, dim]
                let temb = temb.cast(DType::F32);
                let shift = table.clone().narrow(1, 0, 1) + temb.clone();
                let scale = table.narrow(1, 1, 1) + temb;
                (fp32_layer_norm(x, None, None, cfg.eps) * (scale + 1.0) + shift).cast(dtype)
            }
        };
        let x = self.proj_out.forward(x); // [B, S, p_t·p_h·p_w·C_out]
        let c_out = cfg.out_channels();
        Some(
            x.reshape([b, tp, hp, wp, p_t, p_h, p_w, c_out])
                .permute([0, 7, 1, 4, 2, 5, 3, 6])
                .reshape([b, c_out, tp * p_t, hp * p_h, wp * p_w]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_the_14b_model_and_valid() {
        let c = WanTransformer3DModelConfig::default();
        c.validate().unwrap();
        assert_eq!(c.inner_dim(), 5120);
        assert_eq!(c.rope_dims(), [44, 42, 42]);
    }

    #[test]
    fn image_options_must_come_together() {
        let c = WanTransformer3DModelConfig {
            image_dim: Some(1280),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("added_kv_proj_dim"));
        let c = WanTransformer3DModelConfig {
            pos_embed_seq_len: Some(514),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("pos_embed_seq_len"));
    }
}
