//! CLIP image encoder: mirrors transformers 5.24 `models/clip/modeling_clip.py` `CLIPVisionModel`
//! (`CLIPVisionTransformer`, `CLIPVisionEmbeddings`, `CLIPEncoder`, `CLIPEncoderLayer`,
//! `CLIPAttention`, `CLIPMLP`), the image encoder of Wan2.1 I2V / FLF2V
//! (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`'s vision tower: 32 layers, width 1280, 224 px,
//! patch 14 → 257 tokens).
//!
//! ```text
//! x = cat([class_embedding, patch_embedding(pixels).flatten(2).T]) + position_embedding   # [B, 1+P, D]
//! hidden_states[0] = x = pre_layrnorm(x)
//! for layer in encoder.layers:                  # pre-LN blocks
//!     x = x + self_attn(layer_norm1(x))         # q/k/v/out_proj with bias, scale head_dim^-0.5
//!     x = x + mlp(layer_norm2(x))               # fc2(act(fc1 x))
//!     hidden_states.append(x)
//! last_hidden_state = x                         # post_layernorm is only on the pooled CLS token
//! ```
//!
//! diffusers' `WanImageToVideoPipeline.encode_image` takes `hidden_states[-2]`: the output of
//! the second-to-last layer, before any norm ([`CLIPVisionModel::penultimate_hidden_state`]
//! runs only the layers it needs). Keys: transformers 4 saves them under `vision_model.`,
//! transformers 5 without the prefix; both load ([`KEY_REMAP`]).
//!
//! Deliberate divergences (pinned by `tests/clip_vision_model.rs`, ≤ 1e-4 against transformers
//! in f32): attention runs through [`dispatch_attention`] (the same math as SDPA); the pooled
//! output and `post_layernorm` are loaded but not computed (nothing in omni uses them);
//! `interpolate_pos_encoding` is not ported (the processor always gives `image_size` pixels).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;

use super::attention_dispatch::dispatch_attention;
use crate::pipeline::checkpoint::{load_methods, require_positive};
use crate::pipeline::weights::KeyMap;

/// Checkpoint key → module path renames.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // transformers 4 nests the tower as `CLIPVisionModel.vision_model`; the module tree here is
    // the tower itself (transformers 5 saves the keys without the prefix).
    (r"^vision_model\.", ""),
    // `nn.LayerNorm` `{weight,bias}` are Burn's `LayerNorm.{gamma,beta}`.
    (
        r"(pre_layrnorm|post_layernorm|layer_norm[12])\.weight$",
        "${1}.gamma",
    ),
    (
        r"(pre_layrnorm|post_layernorm|layer_norm[12])\.bias$",
        "${1}.beta",
    ),
];

/// How the checkpoint's keys meet the module tree. `position_ids` is a non-persistent buffer in
/// transformers 5 but some older checkpoints stored it.
pub const KEY_MAP: KeyMap<'static> = KeyMap {
    remap: KEY_REMAP,
    ignore: &[r"position_ids$"],
    keep_in_fp32: &[],
};

/// `image_encoder/config.json` (transformers `CLIPVisionConfig`), read as shipped; defaults are
/// `CLIPVisionConfig`'s (ViT-B/32).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CLIPVisionConfig {
    /// Token width `D`.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    /// Input side in pixels (square).
    pub image_size: usize,
    /// Patch side in pixels; `(image_size / patch_size)² + 1` tokens.
    pub patch_size: usize,
    /// `"quick_gelu"` (OpenAI CLIP), `"gelu"` (laion ViT-H), `"gelu_new"`.
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    // Accepted and unused.
    pub projection_dim: Option<usize>,
    pub attention_dropout: Option<f64>,
    pub dropout: Option<f64>,
    pub initializer_range: Option<f64>,
    pub initializer_factor: Option<f64>,
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub dtype: Option<String>,
    pub torch_dtype: Option<String>,
    pub transformers_version: Option<String>,
}

impl Default for CLIPVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: None,
            attention_dropout: None,
            dropout: None,
            initializer_range: None,
            initializer_factor: None,
            architectures: None,
            model_type: None,
            dtype: None,
            torch_dtype: None,
            transformers_version: None,
        }
    }
}

impl CLIPVisionConfig {
    /// Patches per image, `(image_size / patch_size)²`.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Check the config.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<Activation, String> {
        let c = self;
        require_positive!(c: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_channels, image_size, patch_size);
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            ));
        }
        if !c.image_size.is_multiple_of(c.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                c.image_size, c.patch_size
            ));
        }
        Activation::parse(&c.hidden_act)
    }
}

/// `ACT2FN[config.hidden_act]` of `CLIPMLP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`.
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
    /// tanh GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// # Errors
    /// An activation name this port does not implement.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(format!(
                "hidden_act `{other}` is not supported (quick_gelu, gelu, gelu_new)"
            )),
        }
    }

    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Gelu => gelu(x),
            Self::GeluTanh => super::activations::gelu_tanh(x),
        }
    }
}

/// `CLIPVisionEmbeddings`: CLS token + conv patches + learned positions.
#[derive(Module, Debug)]
pub struct CLIPVisionEmbeddings<B: Backend> {
    /// `[D]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `Conv2d(C, D, patch, stride patch, bias=False)`.
    pub patch_embedding: Conv2d<B>,
    /// `[1 + P, D]`.
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> CLIPVisionEmbeddings<B> {
    /// # Shapes
    /// `pixel_values: [B, C, S, S]` → `[B, 1 + P, D]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, _, _, _] = pixel_values.dims();
        let patches = self.patch_embedding.forward(pixel_values); // [B, D, S/p, S/p]
        let [_, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2); // [B, P, D]
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let n = gh * gw + 1;
        let ids = Tensor::<B, 1, Int>::arange(0..n as i64, &x.device()).reshape([1, n]);
        x + self.position_embedding.forward(ids)
    }
}

/// `CLIPAttention`: multi-head self-attention, no mask (the vision tower has none).
#[derive(Module, Debug)]
pub struct CLIPAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> CLIPAttention<B> {
    /// # Shapes
    /// `x: [B, L, D]` → `[B, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, l, h, d / h]).swap_dims(1, 2); // [B, H, L, d/h]
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        // SDPA with `scale = head_dim ** -0.5` (its default).
        let out = dispatch_attention(q, k, v)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        self.out_proj.forward(out)
    }
}

/// `CLIPMLP`: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct CLIPMLP<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

/// `CLIPEncoderLayer`: pre-LN attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer<B: Backend> {
    pub self_attn: CLIPAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: CLIPMLP<B>,
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> CLIPEncoderLayer<B> {
    /// # Shapes
    /// `x: [B, L, D]` → `[B, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = self.mlp.fc1.forward(self.layer_norm2.forward(x.clone()));
        x + self.mlp.fc2.forward(self.mlp.act.apply(h))
    }
}

/// `CLIPEncoder`.
#[derive(Module, Debug)]
pub struct CLIPEncoder<B: Backend> {
    pub layers: Vec<CLIPEncoderLayer<B>>,
}

/// transformers `CLIPVisionModel` (its `vision_model`, `CLIPVisionTransformer`).
#[derive(Module, Debug)]
pub struct CLIPVisionModel<B: Backend> {
    pub embeddings: CLIPVisionEmbeddings<B>,
    /// Sic: transformers' spelling.
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: CLIPEncoder<B>,
    /// Norm of the pooled CLS token (loaded, not used: see the module docs).
    pub post_layernorm: LayerNorm<B>,
}

impl<B: Backend> CLIPVisionModel<B> {
    /// A model with the shapes of `config` (random weights; [`load`](Self::load) fills them).
    ///
    /// # Errors
    /// As [`CLIPVisionConfig::validate`].
    pub fn new(config: &CLIPVisionConfig, device: &B::Device) -> Result<Self, String> {
        let act = config.validate()?;
        let d = config.hidden_size;
        let p = config.patch_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| CLIPEncoderLayer {
                self_attn: CLIPAttention {
                    q_proj: lin(d, d),
                    k_proj: lin(d, d),
                    v_proj: lin(d, d),
                    out_proj: lin(d, d),
                    num_heads: config.num_attention_heads,
                },
                layer_norm1: ln(),
                mlp: CLIPMLP {
                    fc1: lin(d, config.intermediate_size),
                    fc2: lin(config.intermediate_size, d),
                    act,
                },
                layer_norm2: ln(),
            })
            .collect();
        Ok(Self {
            embeddings: CLIPVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::zeros([d], device)),
                patch_embedding: Conv2dConfig::new([config.num_channels, d], [p, p])
                    .with_stride([p, p])
                    .with_bias(false)
                    .init(device),
                position_embedding: EmbeddingConfig::new(config.num_patches() + 1, d).init(device),
            },
            pre_layrnorm: ln(),
            encoder: CLIPEncoder { layers },
            post_layernorm: ln(),
        })
    }

    load_methods! {
        /// Load `dir/config.json` and `dir/model.safetensors` (the checkpoint's
        /// `image_encoder/`), every weight in `dtype`.
        ///
        /// # Errors
        /// [`LoadError`](crate::pipeline::checkpoint::LoadError) naming the file (and tensor).
        weights "model", keys KEY_MAP,
        build |config: CLIPVisionConfig, device| Self::new(&config, device)
    }

    /// The hidden states after the embeddings (`hidden_states[0]`, after `pre_layrnorm`) and
    /// after the first `layers` encoder layers (`hidden_states[layers]`).
    ///
    /// # Shapes
    /// `pixel_values: [B, C, S, S]` → `[B, 1 + P, D]`.
    ///
    /// # Panics
    /// If `layers` exceeds the number of layers.
    pub fn hidden_state(&self, pixel_values: Tensor<B, 4>, layers: usize) -> Tensor<B, 3> {
        assert!(
            layers <= self.encoder.layers.len(),
            "hidden state {layers} of a {}-layer CLIP",
            self.encoder.layers.len()
        );
        let x = self
            .pre_layrnorm
            .forward(self.embeddings.forward(pixel_values));
        self.encoder.layers[..layers]
            .iter()
            .fold(x, |x, layer| layer.forward(x))
    }

    /// `hidden_states[-2]`, what `WanImageToVideoPipeline.encode_image` takes (the last layer
    /// is not run).
    ///
    /// # Shapes
    /// `pixel_values: [B, C, S, S]` → `[B, 1 + P, D]` (`[B, 257, 1280]` for ViT-H/14 at 224).
    pub fn penultimate_hidden_state(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let n = self.encoder.layers.len();
        self.hidden_state(pixel_values, n.saturating_sub(1))
    }

    /// `last_hidden_state` (no `post_layernorm`, as transformers).
    ///
    /// # Shapes
    /// `pixel_values: [B, C, S, S]` → `[B, 1 + P, D]`.
    pub fn last_hidden_state(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        self.hidden_state(pixel_values, self.encoder.layers.len())
    }
}
