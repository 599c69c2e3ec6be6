//! UMT5 text encoder: mirrors transformers 5.23 `models/umt5/modeling_umt5.py` `UMT5EncoderModel`
//! (`UMT5Stack`, `UMT5Block`, `UMT5LayerSelfAttention`, `UMT5Attention`, `UMT5LayerFF`,
//! `UMT5DenseGatedActDense`, `UMT5LayerNorm`), the encoder Helios (like Wan2.1) uses for prompts.
//!
//! Architecture (encoder only, inference only, so every dropout is the identity):
//!
//! ```text
//! x = shared(input_ids)                                  # tied token embedding
//! for block in encoder.block:                            # num_layers
//!     x = x + SelfAttention(layer_norm(x), mask)         # layer.0: own relative bias per layer
//!     x = x + DenseReluDense(layer_norm(x))              # layer.1: wo(act(wi_0 x) * wi_1 x)
//! return encoder.final_layer_norm(x)
//! ```
//!
//! Unlike T5, **every** UMT5 layer owns a `relative_attention_bias` table; attention scores are
//! not scaled by `1/sqrt(d_kv)`; the padding mask comes from the tokenizer's attention mask.
//!
//! Deliberate divergences from the reference:
//! * Attention scores and softmax are computed in f32 whatever the activation dtype (the
//!   reference runs them in the model dtype). Identical for the f32 CPU model; slightly more
//!   accurate in bf16. Pinned by `tests/umt5.rs` `umt5_tiny_matches_transformers`.
//! * Masked keys get a large finite negative score (`-1e30`, `f16::MIN` for f16) instead of the
//!   dtype's `finfo.min` added to the bias; both give exactly zero attention weight.
//! * The fp16 `inf` clamp of `UMT5Block.forward` is not ported (omni runs f32 or bf16).
//! * `_keep_in_fp32_modules = ["wo"]` is not ported: transformers only applies it to fp16 loads,
//!   and omni never runs this model in fp16.
//! * `config.json`'s `dense_act_fn` is ignored, as `UMT5Config.__post_init__` ignores it: the
//!   activation comes from `feed_forward_proj` (`"gated-gelu"` means the tanh `gelu_new`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::pipeline::checkpoint::{load_methods, require_positive};
use crate::pipeline::models::activations::gelu_tanh;
use crate::pipeline::weights::KeyMap;

/// Checkpoint key → module path renames, applied in order (see `weights::KeyMap`).
pub const KEY_REMAP: &[(&str, &str)] = &[
    // `UMT5Block.layer` is a ModuleList of two different layer types; entry 0 is
    // `UMT5LayerSelfAttention`, whose `SelfAttention` attribute is `self_attention` here.
    (r"\.layer\.0\.SelfAttention\.", ".layer_0.self_attention."),
    // `UMT5LayerSelfAttention.layer_norm`.
    (r"\.layer\.0\.layer_norm\.", ".layer_0.layer_norm."),
    // Entry 1 is `UMT5LayerFF`, whose `DenseReluDense` attribute is `dense_relu_dense` here.
    (
        r"\.layer\.1\.DenseReluDense\.",
        ".layer_1.dense_relu_dense.",
    ),
    // `UMT5LayerFF.layer_norm`.
    (r"\.layer\.1\.layer_norm\.", ".layer_1.layer_norm."),
];

/// Checkpoint keys that are deliberately not loaded.
pub const IGNORED_KEYS: &[&str] = &[
    // The encoder's token embedding is tied to `shared` (`_tied_weights_keys` in transformers):
    // `shared.weight` is loaded, and a duplicate `encoder.embed_tokens.weight`, which some
    // `save_pretrained` versions write, is skipped. The Helios checkpoints only store
    // `shared.weight` (vllm-omni notes the same).
    r"^encoder\.embed_tokens\.weight$",
];

/// How the checkpoint's keys meet the module tree (all weights in one dtype: transformers keeps
/// `wo` in f32 only for fp16).
pub const KEY_MAP: KeyMap<'static> = KeyMap {
    remap: KEY_REMAP,
    ignore: IGNORED_KEYS,
    keep_in_fp32: &[],
};

/// Score given to padded keys before the softmax (any value whose `exp` underflows to 0).
const MASKED_SCORE: f32 = -1.0e30;

/// `text_encoder/config.json` (transformers `UMT5Config`), read as shipped. Defaults are
/// `UMT5Config`'s (google/umt5-small); keys only relevant to the decoder or to training are
/// accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UMT5Config {
    /// Rows of the token embedding `shared`.
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Size of one attention head.
    pub d_kv: usize,
    /// Hidden size of the feed-forward block.
    pub d_ff: usize,
    /// Number of encoder blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Relative-position buckets (split in two halves, one per direction, in the encoder).
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the last bucket.
    pub relative_attention_max_distance: usize,
    /// `eps` of every `UMT5LayerNorm`.
    pub layer_norm_epsilon: f64,
    /// `"gated-<act>"` (or `"<act>"`, not supported here); `"gated-gelu"` means tanh GELU.
    pub feed_forward_proj: String,
    /// Must be false: this is the encoder.
    pub is_decoder: bool,
    // Accepted and unused (decoder, training or bookkeeping keys).
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub dense_act_fn: Option<String>,
    pub is_gated_act: Option<bool>,
    pub dropout_rate: Option<f64>,
    pub classifier_dropout: Option<f64>,
    pub initializer_factor: Option<f64>,
    pub num_decoder_layers: Option<usize>,
    pub is_encoder_decoder: Option<bool>,
    pub use_cache: Option<bool>,
    pub output_past: Option<bool>,
    pub scalable_attention: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<serde_json::Value>,
    pub decoder_start_token_id: Option<i64>,
    pub tokenizer_class: Option<String>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub transformers_version: Option<String>,
}

impl Default for UMT5Config {
    fn default() -> Self {
        Self {
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            is_decoder: false,
            architectures: None,
            model_type: None,
            dense_act_fn: None,
            is_gated_act: None,
            dropout_rate: None,
            classifier_dropout: None,
            initializer_factor: None,
            num_decoder_layers: None,
            is_encoder_decoder: None,
            use_cache: None,
            output_past: None,
            scalable_attention: None,
            tie_word_embeddings: None,
            pad_token_id: None,
            eos_token_id: None,
            decoder_start_token_id: None,
            tokenizer_class: None,
            torch_dtype: None,
            dtype: None,
            transformers_version: None,
        }
    }
}

/// The activation of the gated feed-forward block (transformers `ACT2FN[config.dense_act_fn]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// `gelu_new` / `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl FfnActivation {
    /// Parse `feed_forward_proj` as `UMT5Config.__post_init__` does (`"gated-gelu"` is the tanh
    /// `gelu_new`). Only the gated form (`UMT5DenseGatedActDense`, keys `wi_0`/`wi_1`/`wo`) is
    /// implemented.
    pub fn from_feed_forward_proj(proj: &str) -> Result<Self, String> {
        let Some(act) = proj.strip_prefix("gated-") else {
            return Err(format!(
                "feed_forward_proj `{proj}` is not supported: only gated feed-forward blocks \
                 (`gated-<act>`, e.g. UMT5's `gated-gelu`) are implemented"
            ));
        };
        match act {
            // `UMT5Config.__post_init__`: `if feed_forward_proj == "gated-gelu": dense_act_fn = "gelu_new"`.
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(format!(
                "feed_forward_proj `{proj}`: activation `{other}` is not supported \
                 (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            )),
        }
    }

    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::GeluTanh => gelu_tanh(x),
            Self::Relu => relu(x),
            Self::Silu => silu(x),
        }
    }
}

impl UMT5Config {
    /// Check the fields this port depends on.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<FfnActivation, String> {
        if self.is_decoder {
            return Err("is_decoder is true: only the UMT5 encoder is supported".into());
        }
        require_positive!(self: vocab_size, d_model, d_kv, d_ff, num_heads);
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets = {} is too small (at least 4)",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err(format!(
                "relative_attention_max_distance = {} must exceed relative_attention_num_buckets / 4",
                self.relative_attention_max_distance
            ));
        }
        FfnActivation::from_feed_forward_proj(&self.feed_forward_proj)
    }
}

/// `UMT5Attention._relative_position_bucket` for the encoder (bidirectional): the bucket of
/// `relative_position = memory_position - query_position`.
///
/// Half of the buckets are for positive offsets; within each half, the first half are exact
/// offsets and the rest log-spaced up to `max_distance`. The log is taken in f32, as torch does
/// on its f32 tensor, so the bucket edges (e.g. offset 16 → exactly 2.0) round identically.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> i64 {
    let num_buckets = (num_buckets / 2) as i64;
    let mut bucket = if relative_position > 0 {
        num_buckets
    } else {
        0
    };
    let rel = relative_position.abs();
    let max_exact = num_buckets / 2;
    if rel < max_exact {
        return bucket + rel;
    }
    // log_ratio = torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
    let log_ratio = (rel as f32 / max_exact as f32).ln()
        / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let log_ratio = log_ratio * (num_buckets - max_exact) as f32;
    let large = (max_exact + log_ratio as i64).min(num_buckets - 1);
    bucket += large;
    bucket
}

/// `UMT5LayerNorm` (T5 RMSNorm): `weight * (x * rsqrt(mean(x²) + eps))`, no mean subtraction,
/// no bias, the mean square taken in f32.
#[derive(Module, Debug)]
pub struct UMT5LayerNorm<B: Backend> {
    /// `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// `variance_epsilon`.
    pub eps: f64,
}

impl<B: Backend> UMT5LayerNorm<B> {
    fn new(d_model: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: burn::module::Initializer::Ones.init([d_model], device),
            eps,
        }
    }

    /// # Shapes
    /// `x: [B, L, d_model]` → `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        // variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        let xf = x.cast(DType::F32);
        let variance = xf.clone().square().mean_dim(2);
        // hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        let normed = xf * (variance + self.eps).sqrt().recip();
        // if self.weight.dtype in [torch.float16, torch.bfloat16]: hidden_states = hidden_states.to(self.weight.dtype)
        let normed = normed.cast(dtype);
        normed * self.weight.val().unsqueeze::<3>()
    }
}

/// `UMT5Attention` (encoder self-attention, with its own relative position bias).
#[derive(Module, Debug)]
pub struct UMT5Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    /// `[relative_attention_num_buckets, num_heads]`.
    pub relative_attention_bias: Embedding<B>,
    pub n_heads: usize,
    pub d_kv: usize,
}

impl<B: Backend> UMT5Attention<B> {
    fn new(c: &UMT5Config, device: &B::Device) -> Self {
        let inner = c.num_heads * c.d_kv;
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            q: lin(c.d_model, inner),
            k: lin(c.d_model, inner),
            v: lin(c.d_model, inner),
            o: lin(inner, c.d_model),
            relative_attention_bias: EmbeddingConfig::new(
                c.relative_attention_num_buckets,
                c.num_heads,
            )
            .init(device),
            n_heads: c.num_heads,
            d_kv: c.d_kv,
        }
    }

    /// `compute_bias`: the relative position bias of this layer.
    ///
    /// # Shapes
    /// `buckets: [1, L*L]` (from [`relative_position_bucket`]) → `[1, H, L, L]`.
    fn compute_bias(&self, buckets: Tensor<B, 2, Int>, len: usize) -> Tensor<B, 4> {
        self.relative_attention_bias
            .forward(buckets) // [1, L*L, H]
            .reshape([len, len, self.n_heads])
            .permute([2, 0, 1]) // [H, Lq, Lk]
            .unsqueeze_dim(0)
    }

    /// # Shapes
    /// `x: [B, L, d_model]` (already layer-normed), `mask` as [`SelfAttentionMask`] says.
    ///
    /// Returns `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: &SelfAttentionMask<B>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let (h, dk) = (self.n_heads, self.d_kv);
        let dtype = x.dtype();
        let heads = |t: Tensor<B, 3>| t.reshape([b, l, h, dk]).swap_dims(1, 2); // [B, H, L, dk]
        let q = heads(self.q.forward(x.clone()));
        let k = heads(self.k.forward(x.clone()));
        let v = heads(self.v.forward(x));
        // scores = q @ k^T (UMT5: scaling = 1.0) + position_bias, masked keys excluded.
        let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32); // [B, H, L, L]
        let bias = self.compute_bias(mask.buckets.clone(), l).cast(DType::F32);
        let masked = if dtype == DType::F16 {
            half::f16::MIN.to_f32()
        } else {
            MASKED_SCORE
        };
        let scores = (scores + bias).mask_fill(mask.key_padding.clone(), masked);
        let weights = softmax(scores, 3).cast(dtype);
        let out = weights.matmul(v); // [B, H, L, dk]
        let out = out.swap_dims(1, 2).reshape([b, l, h * dk]);
        self.o.forward(out)
    }
}

/// What every self-attention layer of one encoder forward shares, computed once by
/// [`UMT5Stack::forward`] (each layer still applies its own `relative_attention_bias`).
#[derive(Debug, Clone)]
pub struct SelfAttentionMask<B: Backend> {
    /// `[1, L*L]` relative position buckets ([`relative_position_bucket`]).
    pub buckets: Tensor<B, 2, Int>,
    /// `[B, H, L, L]`, true where the key is padding.
    pub key_padding: Tensor<B, 4, Bool>,
}

/// `UMT5LayerSelfAttention`: pre-norm self-attention with a residual.
#[derive(Module, Debug)]
pub struct UMT5LayerSelfAttention<B: Backend> {
    /// Checkpoint `SelfAttention`.
    pub self_attention: UMT5Attention<B>,
    pub layer_norm: UMT5LayerNorm<B>,
}

impl<B: Backend> UMT5LayerSelfAttention<B> {
    /// `hidden_states + SelfAttention(layer_norm(hidden_states))` (dropout is inference no-op).
    ///
    /// # Shapes
    /// See [`UMT5Attention::forward`]; returns `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: &SelfAttentionMask<B>) -> Tensor<B, 3> {
        x.clone()
            + self
                .self_attention
                .forward(self.layer_norm.forward(x), mask)
    }
}

/// `UMT5DenseGatedActDense`: `wo(act(wi_0 x) * wi_1 x)`.
#[derive(Module, Debug)]
pub struct UMT5DenseGatedActDense<B: Backend> {
    pub wi_0: Linear<B>,
    pub wi_1: Linear<B>,
    pub wo: Linear<B>,
    #[module(skip)]
    pub act: FfnActivation,
}

impl<B: Backend> UMT5DenseGatedActDense<B> {
    /// # Shapes
    /// `x: [B, L, d_model]` → `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.act.apply(self.wi_0.forward(x.clone()));
        let linear = self.wi_1.forward(x);
        self.wo.forward(gate * linear)
    }
}

/// `UMT5LayerFF`: pre-norm gated feed-forward with a residual.
#[derive(Module, Debug)]
pub struct UMT5LayerFF<B: Backend> {
    /// Checkpoint `DenseReluDense`.
    pub dense_relu_dense: UMT5DenseGatedActDense<B>,
    pub layer_norm: UMT5LayerNorm<B>,
}

impl<B: Backend> UMT5LayerFF<B> {
    /// `hidden_states + DenseReluDense(layer_norm(hidden_states))`.
    ///
    /// # Shapes
    /// `x: [B, L, d_model]` → `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.clone() + self.dense_relu_dense.forward(self.layer_norm.forward(x))
    }
}

/// `UMT5Block` (encoder): checkpoint `layer.0` is `layer_0`, `layer.1` is `layer_1`.
#[derive(Module, Debug)]
pub struct UMT5Block<B: Backend> {
    pub layer_0: UMT5LayerSelfAttention<B>,
    pub layer_1: UMT5LayerFF<B>,
}

impl<B: Backend> UMT5Block<B> {
    fn new(c: &UMT5Config, act: FfnActivation, device: &B::Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            layer_0: UMT5LayerSelfAttention {
                self_attention: UMT5Attention::new(c, device),
                layer_norm: UMT5LayerNorm::new(c.d_model, c.layer_norm_epsilon, device),
            },
            layer_1: UMT5LayerFF {
                dense_relu_dense: UMT5DenseGatedActDense {
                    wi_0: lin(c.d_model, c.d_ff),
                    wi_1: lin(c.d_model, c.d_ff),
                    wo: lin(c.d_ff, c.d_model),
                    act,
                },
                layer_norm: UMT5LayerNorm::new(c.d_model, c.layer_norm_epsilon, device),
            },
        }
    }

    /// # Shapes
    /// See [`UMT5Attention::forward`]; returns `[B, L, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: &SelfAttentionMask<B>) -> Tensor<B, 3> {
        self.layer_1.forward(self.layer_0.forward(x, mask))
    }
}

/// `UMT5Stack` (encoder): the blocks and the final norm. The token embedding lives in
/// [`UMT5EncoderModel::shared`].
#[derive(Module, Debug)]
pub struct UMT5Stack<B: Backend> {
    pub block: Vec<UMT5Block<B>>,
    pub final_layer_norm: UMT5LayerNorm<B>,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl<B: Backend> UMT5Stack<B> {
    /// # Shapes
    /// * `inputs_embeds: [B, L, d_model]`
    /// * `attention_mask: [B, L]`, 1 for tokens, 0 for padding
    ///
    /// Returns `[B, L, d_model]`.
    pub fn forward(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = inputs_embeds.dims();
        let device = inputs_embeds.device();
        let n_heads = self
            .block
            .first()
            .map_or(1, |blk| blk.layer_0.self_attention.n_heads);
        // context_position = arange(L)[:, None]; memory_position = arange(L)[None, :]
        let buckets: Vec<i64> = (0..l as i64)
            .flat_map(|q| {
                (0..l as i64).map(move |k| {
                    relative_position_bucket(k - q, self.num_buckets, self.max_distance)
                })
            })
            .collect();
        let buckets = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [1, l * l]), &device);
        let key_padding = attention_mask
            .equal_elem(0)
            .reshape([b, 1, 1, l])
            .expand([b, n_heads, l, l]);
        let mask = SelfAttentionMask {
            buckets,
            key_padding,
        };
        let mut x = inputs_embeds;
        for block in &self.block {
            x = block.forward(x, &mask);
        }
        self.final_layer_norm.forward(x)
    }
}

/// `UMT5EncoderModel`: token embedding `shared` + encoder stack.
#[derive(Module, Debug)]
pub struct UMT5EncoderModel<B: Backend> {
    /// `[vocab_size, d_model]`, tied with the encoder's `embed_tokens`.
    pub shared: Embedding<B>,
    pub encoder: UMT5Stack<B>,
    pub d_model: usize,
    pub vocab_size: usize,
}

impl<B: Backend> UMT5EncoderModel<B> {
    /// A model with lazily initialised (unloaded) parameters for `config`.
    ///
    /// # Errors
    /// A message naming the config field that is not supported.
    pub fn new(config: &UMT5Config, device: &B::Device) -> Result<Self, String> {
        let act = config.validate()?;
        Ok(Self {
            shared: EmbeddingConfig::new(config.vocab_size, config.d_model).init(device),
            encoder: UMT5Stack {
                block: (0..config.num_layers)
                    .map(|_| UMT5Block::new(config, act, device))
                    .collect(),
                final_layer_norm: UMT5LayerNorm::new(
                    config.d_model,
                    config.layer_norm_epsilon,
                    device,
                ),
                num_buckets: config.relative_attention_num_buckets,
                max_distance: config.relative_attention_max_distance,
            },
            d_model: config.d_model,
            vocab_size: config.vocab_size,
        })
    }

    load_methods! {
        /// Load `dir/config.json` and `dir/model.safetensors` (or its shards), as transformers'
        /// `save_pretrained` writes them (the pipeline's `text_encoder/` folder), weights cast to
        /// `dtype` (all of them: transformers keeps `wo` in f32 only for fp16).
        ///
        /// # Errors
        /// [`LoadError`] naming the file (and tensor) for a missing or invalid config, an
        /// unsupported architecture, or missing, unexpected or mis-shaped weights.
        ///
        /// [`LoadError`]: crate::pipeline::checkpoint::LoadError
        weights "model", keys KEY_MAP,
        build |config: UMT5Config, device| Self::new(&config, device)
    }

    /// The encoder's `last_hidden_state`.
    ///
    /// # Shapes
    /// * `input_ids: [B, L]` token ids `< vocab_size`
    /// * `attention_mask: [B, L]`, 1 for tokens, 0 for padding
    ///
    /// Returns `[B, L, d_model]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        assert_eq!(
            input_ids.dims(),
            attention_mask.dims(),
            "UMT5EncoderModel::forward: input_ids and attention_mask must have the same shape"
        );
        let x = self.shared.forward(input_ids);
        self.encoder.forward(x, attention_mask)
    }
}
