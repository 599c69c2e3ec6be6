//! Mirrors diffusers 0.42.1 `models/autoencoders/autoencoder_kl_wan.py` `AutoencoderKLWan`
//! (the Wan2.1 causal video VAE of Helios, and, config-driven, the Wan2.2 VAE of TI2V-5B:
//! `is_residual` with `WanResidualDownBlock` / `WanResidualUpBlock` and their weightless
//! [`AvgDown3D`] / [`DupUp3D`] shortcuts, `patch_size = 2` [`patchify`] / [`unpatchify`],
//! `z_dim = 48`): `encode` / `_encode` with `WanEncoder3d`, the
//! `DiagonalGaussianDistribution` of `models/autoencoders/vae.py` (mean, clamped logvar,
//! `sample`), and `decode` / `_decode` with `WanDecoder3d`; plus the pipelines' latent
//! (de)normalisation.
//!
//! Module tree = checkpoint tree: [`AutoencoderKLWan`] holds `encoder` ([`WanEncoder3d`]:
//! `conv_in`, `down_blocks.{i}` (a flat list of [`WanDownLayer`]: [`WanResidualBlock`] or
//! [`WanDownsample`] with `resample.1` and, for `downsample3d`, `time_conv`), `mid_block`,
//! `norm_out`, `conv_out`), `quant_conv`, `post_quant_conv` and `decoder` ([`WanDecoder3d`]:
//! `conv_in`, `mid_block` ([`WanMidBlock`]: `resnets`, `attentions`), `up_blocks.{i}`
//! ([`WanUpBlock`]: `resnets.{j}`, `upsamplers.0` ([`WanResample`])), `norm_out`, `conv_out`).
//! The only renamed keys are listed in [`KEY_REMAP`] (the `nn.Sequential` index `resample.1`, and
//! the enum variant level of the encoder's heterogeneous `down_blocks`).
//!
//! # The causal frame cache
//!
//! diffusers encodes frame `[0]`, then `[1:5]`, `[5:9]`, …, and decodes one latent frame at a
//! time, threading a flat list `feat_cache` (one slot per `WanCausalConv3d` that pads in time
//! and per 3-D resampler, in call order) with a cursor `feat_idx`. Here the same state is an
//! explicit tree, [`WanEncoderCache`] / [`WanDecoderCache`], passed by `&mut` through the forward:
//!
//! | diffusers `_enc_feat_map[idx]`, in `_enc_conv_idx` order | here |
//! |---|---|
//! | `encoder.conv_in` | [`WanEncoderCache`]`.conv_in` |
//! | `down_blocks.{i}.conv1`, `.conv2` (residual blocks) | `.down_blocks[i].resnet.conv1`, `.conv2` |
//! | `down_blocks.{i}` (`downsample3d` only) | `.down_blocks[i].time_conv` |
//! | `mid_block.resnets.{j}.conv1`, `.conv2` | `.mid_block[j].conv1`, `.conv2` |
//! | `encoder.conv_out` | `.conv_out` |
//!
//! | diffusers `_feat_map[idx]`, in `_conv_idx` order | here |
//! |---|---|
//! | `decoder.conv_in` | [`WanDecoderCache`]`.conv_in` |
//! | `mid_block.resnets.{j}.conv1`, `.conv2` | `.mid_block[j].conv1`, `.conv2` |
//! | `up_blocks.{i}.resnets.{j}.conv1`, `.conv2` | `.up_blocks[i].resnets[j].conv1`, `.conv2` |
//! | `up_blocks.{i}.upsamplers.0` (`"Rep"` / tensor; `upsample3d` only) | `.up_blocks[i].time_conv` |
//! | `decoder.conv_out` | `.conv_out` |
//!
//! Each conv slot ([`CausalConvCache`]) keeps the last `2·pad_t` (= `CACHE_T` = 2) input frames
//! the conv has seen; a conv prepends them (zero-padding whatever is missing), so running chunk
//! by chunk equals a causal conv over the whole sequence.
//!
//! The two 3-D resamplers are *not* plain causal convs:
//!
//! * **`downsample3d`** (encoder, [`TimeDownsampleCache`]): the first chunk of an encode skips
//!   the stride-2 `time_conv` entirely (1 frame stays 1 frame) and only remembers its frames;
//!   every later chunk is prefixed with the previous chunk's **last** frame and convolved
//!   (kernel 3, stride 2, no padding): 4 frames → 2 at the first, 2 → 1 at the second
//!   `downsample3d`. So `1 + 4k` frames give `1 + k` latent frames, and the result depends on
//!   the chunking (it equals diffusers only for the `[0]`, `[1:5]`, … order that
//!   [`AutoencoderKLWan::encode`] uses).
//! * **`upsample3d`** (decoder): the slot is `None` until the first latent frame has passed
//!   (diffusers' `"Rep"` marker): the first latent frame skips the temporal upsampling and yields
//!   **1** video frame, every later one yields 2 per `upsample3d` (4 with Wan2.1's two), so `T`
//!   latents give `1 + 4(T-1)` frames. The `time_conv` history starts at the second latent frame
//!   (diffusers zero-pads instead of reusing the first frame). `first_chunk` (diffusers passes
//!   it for latent frame 0 only; here [`WanDecoderCache`]`.started`) is only read by Wan2.2's
//!   [`DupUp3D`] shortcut, which then drops its first `factor_t − 1` frames.
//!
//! Wan2.2 keys: the encoder's `down_blocks.{i}` are `WanResidualDownBlock`s (`resnets.{j}`,
//! `downsampler`), the [`WanDownLayer::ResidualDown`] variant; the decoder's `up_blocks.{i}` are
//! `WanResidualUpBlock`s (`resnets.{j}`, `upsampler`), held by the same [`WanUpBlock`] struct as
//! Wan2.1's (`upsamplers.0`), since one decoder list holds one kind or the other.
//!
//! # Deliberate divergences
//!
//! * **Injected noise.** [`AutoencoderKLWan::encode`] returns `(mean, logvar)` instead of a
//!   distribution object; [`AutoencoderKLWan::sample`] takes the standard-normal draw as an
//!   argument instead of calling `randn_tensor(generator)` (test `vae_encode_matches_diffusers`,
//!   which injects diffusers' draw).
//! * Configs whose channels do not fit the patch size are rejected at load (test
//!   `vae_config_accepts_wan22_and_rejects_bad_patch_channels`).
//! * `attn_scales` only adds encoder attention blocks, exactly as in diffusers (the decoder
//!   ignores it). Dropout is an inference no-op and is not modelled.
//! * No spatial tiling (`enable_tiling`) and no batch slicing (`use_slicing`): they only trade
//!   memory for time and are off by default in diffusers.
//! * [`AutoencoderKLWan::decode_streaming`] hands out each latent frame's video frames (clamped)
//!   as soon as they are decoded, instead of concatenating; `decode` equals the concatenation
//!   (test `vae_streaming_decode_equals_decode`).
//! * The 2× `nearest-exact` upsampling is written as a broadcast (each pixel repeated 2×2), which
//!   is what `nearest-exact` does at an integer factor 2; Burn's `interpolate(Nearest)` defaults
//!   to `align_corners = true` and is not used.
//! * `downsample3d` remembers only the last frame of the previous chunk where diffusers stores
//!   the whole first chunk; only its last frame is ever read (test
//!   `vae_encode_matches_diffusers`).
//! * The frame caches are explicit state trees instead of a flat list plus cursor (same numbers;
//!   tests `causal_conv_chunked_equals_full`, `vae_decode_is_causal_in_time`,
//!   `vae_encode_is_causal_in_time`, `vae_encode_chunks_through_one_cache_in_diffusers_order`).
//!
//! Parity: `tests/autoencoder_kl_wan.rs` against diffusers on the tiny fixture VAE (fp32 on
//! Flex): decode max abs error 8e-6 on `[1,3,9,32,48]`; encode (`[1,3,9,32,48]` →
//! `[1,16,3,4,6]`) mean / logvar / sample 1.5e-6, single-frame image 1.2e-6.
//! `tests/autoencoder_kl_wan22.rs` on the tiny Wan2.2 VAE of `tiny-wan2.2-ti2v`: decode
//! (`[1,48,3,2,3]` → `[1,3,9,32,48]`) 2.3e-6; encode mean / logvar / sample 1.0e-6 / 9.8e-7 /
//! 1.4e-6, single-frame image 4.5e-7 / 6.0e-7.

use burn::module::{Initializer, Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;

use crate::pipeline::checkpoint::load_methods;
use crate::pipeline::models::attention_dispatch::dispatch_attention;
use crate::pipeline::models::conv3d_dispatch::{
    ConvExtras, conv3d, conv3d_fused, fused_conv_applies,
};
use crate::pipeline::models::rms_norm_dispatch::rms_norm_channels;
use crate::pipeline::weights::KeyMap;

/// Frames of history a causal conv keeps between calls (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// Checkpoint key renames, `(regex, replacement)`, applied before matching the module tree.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // `WanResample.resample` is `nn.Sequential(WanUpsample, nn.Conv2d)`: index 0 (the upsample)
    // has no weights, index 1 is the conv, held here directly as `resample`.
    (
        r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.resample\.1\.",
        "decoder.up_blocks.$1.upsamplers.0.resample.",
    ),
    // The encoder's `down_blocks` is one flat `nn.ModuleList` of residual blocks, attention
    // blocks and resamplers; here it is a `Vec` of the enum [`WanDownLayer`], whose variant name
    // is a path level. The sub-keys tell the kinds apart: `WanResidualBlock` ...
    (
        r"^encoder\.down_blocks\.(\d+)\.(norm1|conv1|norm2|conv2|conv_shortcut)\.",
        "encoder.down_blocks.$1.Residual.$2.",
    ),
    // ... `WanAttentionBlock` ...
    (
        r"^encoder\.down_blocks\.(\d+)\.(norm|to_qkv|proj)\.",
        "encoder.down_blocks.$1.Attention.$2.",
    ),
    // ... and `WanResample` (`downsample*`), whose `resample` is
    // `nn.Sequential(nn.ZeroPad2d, nn.Conv2d)`: index 1 is the conv, held directly as `resample`.
    (
        r"^encoder\.down_blocks\.(\d+)\.resample\.1\.",
        "encoder.down_blocks.$1.Resample.resample.",
    ),
    (
        r"^encoder\.down_blocks\.(\d+)\.time_conv\.",
        "encoder.down_blocks.$1.Resample.time_conv.",
    ),
    // Wan2.2 (`is_residual`): the encoder's `down_blocks` are `WanResidualDownBlock`s
    // (`resnets.{j}`, `downsampler`), the [`WanDownLayer::ResidualDown`] variant ...
    (
        r"^encoder\.down_blocks\.(\d+)\.resnets\.",
        "encoder.down_blocks.$1.ResidualDown.resnets.",
    ),
    // ... whose `downsampler` is a `WanResample` (`resample.1` = the conv, as above).
    (
        r"^encoder\.down_blocks\.(\d+)\.downsampler\.resample\.1\.",
        "encoder.down_blocks.$1.ResidualDown.downsampler.resample.",
    ),
    (
        r"^encoder\.down_blocks\.(\d+)\.downsampler\.time_conv\.",
        "encoder.down_blocks.$1.ResidualDown.downsampler.time_conv.",
    ),
    // Wan2.2 `WanResidualUpBlock.upsampler` (a single `WanResample`, not a list): `resample.1`.
    (
        r"^decoder\.up_blocks\.(\d+)\.upsampler\.resample\.1\.",
        "decoder.up_blocks.$1.upsampler.resample.",
    ),
];

/// Checkpoint keys deliberately not loaded: none (encoder, `quant_conv`, `post_quant_conv` and
/// decoder are all used).
pub const IGNORED_KEYS: &[&str] = &[];

/// How the checkpoint's keys meet the module tree (all weights in the VAE's dtype).
pub const KEY_MAP: KeyMap<'static> = KeyMap {
    remap: KEY_REMAP,
    ignore: IGNORED_KEYS,
    keep_in_fp32: &[],
};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// `vae/config.json` as diffusers writes it (JSON key names; defaults = diffusers `__init__`
/// defaults, i.e. the Wan2.1 VAE that Helios ships).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLWanConfig {
    /// `_class_name`; must be `AutoencoderKLWan` when present.
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Encoder base channel count.
    pub base_dim: usize,
    /// Decoder base channel count (`base_dim` when `None`).
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    pub z_dim: usize,
    /// Channel multipliers per resolution level (encoder order).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Encoder attention scales (unused by the decoder, as in diffusers).
    pub attn_scales: Vec<f64>,
    /// Per level, whether the encoder halves time (the decoder doubles it in reverse order).
    pub temperal_downsample: Vec<bool>,
    /// Dropout rate (inference: unused).
    pub dropout: f64,
    /// Per-channel latent mean used to (de)normalise latents, `z_dim` values.
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation, `z_dim` values.
    pub latents_std: Vec<f64>,
    /// Wan2.2: `WanResidualDownBlock` / `WanResidualUpBlock` (with the `AvgDown3D` / `DupUp3D`
    /// shortcuts) instead of the flat Wan2.1 layers, and no channel halving in the decoder.
    pub is_residual: bool,
    /// Channels into the encoder, after [`patchify`] (3 · `patch_size`²: 12 for Wan2.2).
    pub in_channels: usize,
    /// Channels out of the decoder, before [`unpatchify`] (3 · `patch_size`²).
    pub out_channels: usize,
    /// Wan2.2 pixel patchify size (`None`: no patchify, as 1).
    pub patch_size: Option<usize>,
    /// Frames per latent frame (informational; the architecture decides).
    pub scale_factor_temporal: Option<usize>,
    /// Pixels per latent pixel (informational; the architecture decides).
    pub scale_factor_spatial: Option<usize>,
}

impl Default for AutoencoderKLWanConfig {
    /// diffusers 0.42.1 `AutoencoderKLWan.__init__` defaults.
    fn default() -> Self {
        Self {
            class_name: None,
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

impl AutoencoderKLWanConfig {
    /// Checks that this port supports the config.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.class_name
            && name != "AutoencoderKLWan"
        {
            return Err(format!(
                "_class_name is `{name}`, expected `AutoencoderKLWan`"
            ));
        }
        if self.patch() == 0 {
            return Err("patch_size = 0".into());
        }
        let p2 = self.patch() * self.patch();
        if !self.in_channels.is_multiple_of(p2) || !self.out_channels.is_multiple_of(p2) {
            return Err(format!(
                "in_channels ({}) and out_channels ({}) must be multiples of patch_size² ({p2})",
                self.in_channels, self.out_channels
            ));
        }
        if self.dim_mult.is_empty() {
            return Err("dim_mult is empty".into());
        }
        if self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            return Err(format!(
                "temperal_downsample has {} entries, dim_mult needs at least {}",
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1
            ));
        }
        if self.z_dim == 0
            || self.base_dim == 0
            || self.decoder_dim() == 0
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return Err(
                "z_dim, base_dim, decoder_base_dim, in_channels and out_channels must be > 0"
                    .into(),
            );
        }
        for (name, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if v.len() != self.z_dim {
                return Err(format!(
                    "{name} has {} values, z_dim is {}",
                    v.len(),
                    self.z_dim
                ));
            }
        }
        if let Some(c) = self.latents_std.iter().position(|s| *s == 0.0) {
            return Err(format!("latents_std[{c}] is 0"));
        }
        Ok(())
    }

    /// Decoder base channels: `decoder_base_dim`, else `base_dim`.
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// `temperal_downsample[::-1]`: per decoder up block, whether it doubles time.
    pub fn temperal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// Video frames per latent frame after the first (2^number of `upsample3d` blocks; 4 for Wan2.1).
    pub fn temporal_scale(&self) -> usize {
        let up = self.temperal_upsample();
        let n = self.dim_mult.len().saturating_sub(1);
        1 << up.iter().take(n).filter(|t| **t).count()
    }

    /// Video pixels per latent pixel (2^(number of levels − 1) · `patch_size`; 8 for Wan2.1, 16
    /// for Wan2.2).
    pub fn spatial_scale(&self) -> usize {
        (1 << self.dim_mult.len().saturating_sub(1)) * self.patch()
    }

    /// `patch_size`, 1 when absent.
    pub fn patch(&self) -> usize {
        self.patch_size.unwrap_or(1)
    }

    /// Video channels (before [`patchify`]): `in_channels / patch_size²` (3).
    pub fn video_channels(&self) -> usize {
        self.in_channels / (self.patch() * self.patch())
    }
}

// ---------------------------------------------------------------------------------------------
// Causal conv and its cache
// ---------------------------------------------------------------------------------------------

/// The input frames one [`WanCausalConv3d`] keeps between calls: diffusers' `feat_cache[idx]`
/// (the last ≤ [`CACHE_T`] frames of everything the conv has seen; empty at the start).
#[derive(Debug, Clone, Default)]
pub struct CausalConvCache<B: Backend> {
    frames: Option<Tensor<B, 5>>,
}

impl<B: Backend> CausalConvCache<B> {
    /// Number of cached frames.
    pub fn len(&self) -> usize {
        self.frames.as_ref().map_or(0, |f| f.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.frames.is_none()
    }
}

/// `WanCausalConv3d`: a Conv3d whose time padding is all in front (`2·p_t` frames, zeros or the
/// cached previous frames), spatial padding symmetric.
#[derive(Module, Debug)]
pub struct WanCausalConv3d<B: Backend> {
    /// `[out, in, kt, kh, kw]` (PyTorch layout).
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Symmetric padding `(p_t, p_h, p_w)` of the PyTorch module; time becomes causal `2·p_t`.
    #[module(skip)]
    padding: [usize; 3],
    /// `(s_t, s_h, s_w)`; `(1, 1, 1)` except the encoder's `downsample3d` `time_conv` (`(2, 1, 1)`).
    #[module(skip)]
    stride: [usize; 3],
}

impl<B: Backend> WanCausalConv3d<B> {
    /// Uninitialised (lazy) parameters, to be filled by the loader.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        kernel: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Self {
        let fan_in = in_dim * kernel.iter().product::<usize>();
        let init = Initializer::Zeros;
        Self {
            weight: init.init_with(
                [out_dim, in_dim, kernel[0], kernel[1], kernel[2]],
                Some(fan_in),
                None,
                device,
            ),
            bias: init.init_with([out_dim], Some(fan_in), None, device),
            padding,
            stride: [1, 1, 1],
        }
    }

    /// The same conv with stride `stride` (`WanCausalConv3d(..., stride=...)`).
    pub fn with_stride(mut self, stride: [usize; 3]) -> Self {
        self.stride = stride;
        self
    }

    /// Frames of causal history the conv needs (`2·p_t`; 0 for 1×1×1 and (k,·,·) with p_t = 0).
    fn history(&self) -> usize {
        2 * self.padding[0]
    }

    fn conv(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let opts = ConvOptions::new(
            self.stride,
            [0, self.padding[1], self.padding[2]],
            [1, 1, 1],
            1,
        );
        conv3d(x, self.weight.val(), Some(self.bias.val()), opts)
    }

    /// `conv(cat([zeros, history, x], 2)) + residual` in one [`conv3d_fused`] (stride 1).
    fn conv_fused(
        &self,
        x: Tensor<B, 5>,
        zeros: usize,
        history: Option<Tensor<B, 5>>,
        residual: Option<Tensor<B, 5>>,
    ) -> Tensor<B, 5> {
        let extras = ConvExtras {
            zeros,
            history,
            residual,
            ..ConvExtras::default()
        };
        let padding = [0, self.padding[1], self.padding[2]];
        conv3d_fused(x, extras, self.weight.val(), Some(self.bias.val()), padding)
    }

    /// Without history: zero frames in front (diffusers `forward(x)` / `forward(x, None)`).
    ///
    /// # Shapes
    /// `x: [B, C_in, T, H, W]` → `[B, C_out, T, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let pt = self.history();
        if self.stride != [1, 1, 1] {
            let x = if pt > 0 { zero_pad(x, 2, pt, 0) } else { x };
            return self.conv(x);
        }
        self.conv_fused(x, pt, None, None)
    }

    /// With history: the cached frames go in front (zeros for what is missing), and the cache is
    /// updated to the last `2·p_t` frames seen. Calling this chunk by chunk equals one
    /// [`forward`](Self::forward) over the concatenated chunks.
    ///
    /// Mirrors the `cache_x = x[:, :, -CACHE_T:]` / `self.conv(x, feat_cache[idx])` /
    /// `feat_cache[idx] = cache_x` pattern repeated in diffusers' blocks.
    ///
    /// # Shapes
    /// `x: [B, C_in, T, H, W]` → `[B, C_out, T, H, W]`.
    pub fn forward_cached(&self, x: Tensor<B, 5>, cache: &mut CausalConvCache<B>) -> Tensor<B, 5> {
        self.forward_cached_add(x, cache, None)
    }

    /// [`forward_cached`](Self::forward_cached) plus `residual` added to the output (the
    /// residual block's `x + h`), in the same pass on the CPU backend.
    ///
    /// # Shapes
    /// `x: [B, C_in, T, H, W]`, `residual: [B, C_out, T, H, W]` → `[B, C_out, T, H, W]`.
    pub fn forward_cached_add(
        &self,
        x: Tensor<B, 5>,
        cache: &mut CausalConvCache<B>,
        residual: Option<Tensor<B, 5>>,
    ) -> Tensor<B, 5> {
        let pt = self.history();
        if pt == 0 {
            // diffusers: `if cache_x is not None and self._padding[4] > 0` — no history used.
            if self.stride == [1, 1, 1] {
                return self.conv_fused(x, 0, None, residual);
            }
            let y = self.conv(x);
            return match residual {
                Some(r) => y + r,
                None => y,
            };
        }
        let prev = cache.frames.take();
        let history = prev.as_ref().map_or(0, |p| p.dims()[2]);
        // The new cache: the last `pt` frames of cat([prev, x]).
        let t = x.dims()[2];
        cache.frames = Some(match &prev {
            _ if t >= pt => x.clone().narrow(2, t - pt, pt),
            Some(p) => {
                let from_prev = (pt - t).min(history);
                Tensor::cat(
                    vec![
                        p.clone().narrow(2, history - from_prev, from_prev),
                        x.clone(),
                    ],
                    2,
                )
            }
            None => x.clone(),
        });
        // diffusers: `padding[4] -= cache_x.shape[2]` — zeros for the history not yet seen.
        let zeros = pt.saturating_sub(history);
        if self.stride == [1, 1, 1] {
            return self.conv_fused(x, zeros, prev, residual);
        }
        let x = match prev {
            Some(prev) => Tensor::cat(vec![prev, x], 2),
            None => x,
        };
        let x = if zeros > 0 {
            zero_pad(x, 2, zeros, 0)
        } else {
            x
        };
        let y = self.conv(x);
        match residual {
            Some(r) => y + r,
            None => y,
        }
    }
}

/// `F.pad(x, ..., value=0)` along one axis: `before` zeros in front, `after` behind, in `x`'s
/// dtype. (burn 0.21's `Tensor::pad` with `PadMode::Constant` fills in the device's default
/// float dtype, which breaks an f32 VAE on a bf16 device.)
fn zero_pad<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    axis: usize,
    before: usize,
    after: usize,
) -> Tensor<B, D> {
    let zeros = |n: usize| {
        let mut dims = x.dims();
        dims[axis] = n;
        Tensor::<B, D>::zeros(dims, (&x.device(), x.dtype()))
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    let tail = (after > 0).then(|| zeros(after));
    parts.push(x);
    parts.extend(tail);
    Tensor::cat(parts, axis)
}

// ---------------------------------------------------------------------------------------------
// Norm, residual block, attention
// ---------------------------------------------------------------------------------------------

/// `WanRMS_norm`: `F.normalize(x, dim=1) · √C · gamma` (bias is off everywhere in the VAE).
///
/// `D` is the rank of `gamma`: 4 (`[C, 1, 1, 1]`, video, `images=False`) or 3 (`[C, 1, 1]`,
/// per-frame images, `images=True`).
#[derive(Module, Debug)]
pub struct WanRmsNorm<B: Backend, const D: usize> {
    /// `[C, 1, …]`.
    pub gamma: Param<Tensor<B, D>>,
}

impl<B: Backend, const D: usize> WanRmsNorm<B, D> {
    /// Uninitialised (lazy) gamma of `dim` channels.
    pub fn new(dim: usize, device: &B::Device) -> Self {
        let mut shape = [1usize; D];
        shape[0] = dim;
        Self {
            gamma: Initializer::Ones.init(shape, device),
        }
    }

    /// `F.normalize(x, dim=1) · self.scale · self.gamma`: one fused pass on the CPU backend,
    /// diffusers' ops one by one elsewhere ([`rms_norm_channels`]).
    ///
    /// # Shapes
    /// `x: [N, C, …]` (rank `D + 1`) → same.
    pub fn forward<const X: usize>(&self, x: Tensor<B, X>) -> Tensor<B, X> {
        rms_norm_channels(x, self.gamma.val(), false)
    }

    /// `silu(self.forward(x))` (the norm followed by `nn.SiLU()`, as in every residual block
    /// and the decoder's head), in the same single pass on the CPU backend.
    ///
    /// # Shapes
    /// `x: [N, C, …]` (rank `D + 1`) → same.
    pub fn forward_silu<const X: usize>(&self, x: Tensor<B, X>) -> Tensor<B, X> {
        rms_norm_channels(x, self.gamma.val(), true)
    }
}

/// `WanResidualBlock`: `norm1 → SiLU → conv1 → norm2 → SiLU → (dropout) → conv2`, plus
/// `conv_shortcut` (1×1×1) when the channel count changes.
#[derive(Module, Debug)]
pub struct WanResidualBlock<B: Backend> {
    pub norm1: WanRmsNorm<B, 4>,
    pub conv1: WanCausalConv3d<B>,
    pub norm2: WanRmsNorm<B, 4>,
    pub conv2: WanCausalConv3d<B>,
    pub conv_shortcut: Option<WanCausalConv3d<B>>,
}

/// The two cached convs of one [`WanResidualBlock`].
#[derive(Debug, Clone, Default)]
pub struct ResidualBlockCache<B: Backend> {
    pub conv1: CausalConvCache<B>,
    pub conv2: CausalConvCache<B>,
}

impl<B: Backend> WanResidualBlock<B> {
    pub fn new(in_dim: usize, out_dim: usize, device: &B::Device) -> Self {
        Self {
            norm1: WanRmsNorm::new(in_dim, device),
            conv1: WanCausalConv3d::new(in_dim, out_dim, [3, 3, 3], [1, 1, 1], device),
            norm2: WanRmsNorm::new(out_dim, device),
            conv2: WanCausalConv3d::new(out_dim, out_dim, [3, 3, 3], [1, 1, 1], device),
            conv_shortcut: (in_dim != out_dim)
                .then(|| WanCausalConv3d::new(in_dim, out_dim, [1, 1, 1], [0, 0, 0], device)),
        }
    }

    /// # Shapes
    /// `x: [B, C_in, T, H, W]` → `[B, C_out, T, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut ResidualBlockCache<B>) -> Tensor<B, 5> {
        let h = match &self.conv_shortcut {
            Some(c) => c.forward(x.clone()),
            None => x.clone(),
        };
        let x = self.norm1.forward_silu(x);
        let x = self.conv1.forward_cached(x, &mut cache.conv1);
        let x = self.norm2.forward_silu(x);
        self.conv2.forward_cached_add(x, &mut cache.conv2, Some(h))
    }
}

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame separately,
/// with 1×1 Conv2d `to_qkv` / `proj`, plus the residual.
#[derive(Module, Debug)]
pub struct WanAttentionBlock<B: Backend> {
    pub norm: WanRmsNorm<B, 3>,
    pub to_qkv: Conv2d<B>,
    pub proj: Conv2d<B>,
}

impl<B: Backend> WanAttentionBlock<B> {
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            norm: WanRmsNorm::new(dim, device),
            to_qkv: Conv2dConfig::new([dim, dim * 3], [1, 1]).init(device),
            proj: Conv2dConfig::new([dim, dim], [1, 1]).init(device),
        }
    }

    /// # Shapes
    /// `x: [B, C, T, H, W]` → same.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let identity = x.clone();
        let [b, c, t, h, w] = x.dims();
        // [B, C, T, H, W] → [B·T, C, H, W]
        let x = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let x = self.norm.forward(x);
        let qkv = self.to_qkv.forward(x); // [B·T, 3C, H, W]
        // [B·T, 1, 3C, H·W] → [B·T, 1, H·W, 3C]
        let qkv = qkv.reshape([b * t, 1, 3 * c, h * w]).swap_dims(2, 3);
        let q = qkv.clone().narrow(3, 0, c);
        let k = qkv.clone().narrow(3, c, c);
        let v = qkv.narrow(3, 2 * c, c);
        // F.scaled_dot_product_attention(q, k, v): scale 1/√C.
        let x = dispatch_attention(q, k, v); // [B·T, 1, H·W, C]
        // [B·T, H·W, C] → [B·T, C, H, W]
        let x = x
            .reshape([b * t, h * w, c])
            .swap_dims(1, 2)
            .reshape([b * t, c, h, w]);
        let x = self.proj.forward(x);
        // [B·T, C, H, W] → [B, C, T, H, W]
        let x = x.reshape([b, t, c, h, w]).permute([0, 2, 1, 3, 4]);
        x + identity
    }
}

/// `WanMidBlock` (`num_layers = 1`): `resnets.0 → attentions.0 → resnets.1`.
#[derive(Module, Debug)]
pub struct WanMidBlock<B: Backend> {
    pub resnets: Vec<WanResidualBlock<B>>,
    pub attentions: Vec<WanAttentionBlock<B>>,
}

impl<B: Backend> WanMidBlock<B> {
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| WanResidualBlock::new(dim, dim, device))
                .collect(),
            attentions: vec![WanAttentionBlock::new(dim, device)],
        }
    }

    /// # Shapes
    /// `x: [B, C, T, H, W]` → same.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut Vec<ResidualBlockCache<B>>) -> Tensor<B, 5> {
        cache.resize_with(self.resnets.len(), Default::default);
        let mut x = self.resnets[0].forward(x, &mut cache[0]);
        for (j, (attn, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            x = attn.forward(x);
            x = resnet.forward(x, &mut cache[j + 1]);
        }
        x
    }
}

// ---------------------------------------------------------------------------------------------
// Upsampling
// ---------------------------------------------------------------------------------------------

/// `WanResample` in `upsample2d` / `upsample3d` mode: (`upsample3d` only) `time_conv` doubling
/// the frames, then per frame nearest-exact 2× and a 3×3 conv to `dim / 2` channels.
#[derive(Module, Debug)]
pub struct WanResample<B: Backend> {
    /// `resample.1` in the checkpoint (see [`KEY_REMAP`]).
    pub resample: Conv2d<B>,
    /// `upsample3d` only: `(3,1,1)` causal conv `dim → 2·dim` (two output phases per frame).
    pub time_conv: Option<WanCausalConv3d<B>>,
}

impl<B: Backend> WanResample<B> {
    /// `WanResample(dim, mode, upsample_out_dim)`: the conv goes to `out_dim` channels
    /// (diffusers' default `dim // 2`; Wan2.2's residual up blocks pass `dim`).
    pub fn new(dim: usize, temporal: bool, out_dim: usize, device: &B::Device) -> Self {
        Self {
            resample: Conv2dConfig::new([dim, out_dim], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            time_conv: temporal
                .then(|| WanCausalConv3d::new(dim, dim * 2, [3, 1, 1], [1, 0, 0], device)),
        }
    }

    /// `cache` is the `time_conv` slot: `None` before the first chunk (diffusers `None`), then
    /// `Some` (diffusers `"Rep"`, later the cached frames).
    ///
    /// # Shapes
    /// `x: [B, C, T, H, W]` → `[B, C_out, T', 2H, 2W]` (`C_out = C/2` for Wan2.1) with `T' = 2T`, or `T' = T` for
    /// `upsample2d` and for the first chunk of `upsample3d`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut Option<CausalConvCache<B>>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let x = match (&self.time_conv, cache.as_mut()) {
            (None, _) => x,
            // First chunk: diffusers stores "Rep" and leaves x untouched (1 frame stays 1 frame).
            (Some(_), None) => {
                *cache = Some(CausalConvCache::default());
                x
            }
            (Some(time_conv), Some(state)) => {
                let x = time_conv.forward_cached(x, state); // [B, 2C, T, H, W]
                // x.reshape(b, 2, c, t, h, w); stack((x[:, 0], x[:, 1]), 3); reshape(b, c, 2t, h, w)
                let x: Tensor<B, 6> = x.reshape([b, 2, c, t, h, w]);
                x.permute([0, 2, 3, 1, 4, 5]).reshape([b, c, 2 * t, h, w])
            }
        };
        if fused_conv_applies(&x) {
            // CPU: the per-frame 3×3 conv as a 1×3×3 conv3d over [B, C, T, H, W], upsampling
            // while it pads: no permuted or upsampled copies.
            let [c_out, c_in, k_h, k_w] = self.resample.weight.dims();
            let weight = self
                .resample
                .weight
                .val()
                .reshape([c_out, c_in, 1, k_h, k_w]);
            let bias = self.resample.bias.as_ref().map(|b| b.val());
            let extras = ConvExtras {
                upsample: 2,
                ..ConvExtras::default()
            };
            return conv3d_fused(x, extras, weight, bias, [0, 1, 1]);
        }
        let t = x.dims()[2];
        // [B, C, T, H, W] → [B·T, C, H, W]
        let x = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let x = self.resample.forward(upsample_nearest_2x(x)); // [B·T, C/2, 2H, 2W]
        let c2 = x.dims()[1];
        x.reshape([b, t, c2, 2 * h, 2 * w]).permute([0, 2, 1, 3, 4])
    }
}

/// `nn.Upsample(scale_factor=2, mode="nearest-exact")`: at factor 2 every output pixel
/// `(y, x)` reads input `(y / 2, x / 2)`, i.e. each pixel repeated 2×2.
///
/// # Shapes
/// `x: [N, C, H, W]` → `[N, C, 2H, 2W]`.
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x: Tensor<B, 6> = x.reshape([n, c, h, 1, w, 1]);
    x.expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
}

/// `AvgDown3D`, the shortcut of Wan2.2's `WanResidualDownBlock`: zero frames in front up to a
/// multiple of `factor_t`, then every `factor_t × factor_s × factor_s` neighbourhood folded into
/// the channels and each run of `group_size` consecutive channels averaged. No weights.
#[derive(Debug, Clone)]
pub struct AvgDown3D {
    pub out_channels: usize,
    pub factor_t: usize,
    pub factor_s: usize,
}

impl AvgDown3D {
    /// # Shapes
    /// `x: [B, C, T, H, W]` → `[B, out_channels, ⌈T/f_t⌉, H/f_s, W/f_s]`.
    pub fn forward<B: Backend>(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let (ft, fs) = (self.factor_t, self.factor_s);
        let t = x.dims()[2];
        // pad_t = (factor_t - T % factor_t) % factor_t zero frames in front
        let pad_t = (ft - t % ft) % ft;
        let x = if pad_t > 0 {
            zero_pad(x, 2, pad_t, 0)
        } else {
            x
        };
        let [b, c, t, h, w] = x.dims();
        let (t2, h2, w2) = (t / ft, h / fs, w / fs);
        // view(B, C, T/ft, ft, H/fs, fs, W/fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        let x: Tensor<B, 8> = x.reshape([b, c, t2, ft, h2, fs, w2, fs]);
        let x = x.permute([0, 1, 3, 5, 7, 2, 4, 6]);
        // view(B, C·factor, …) → view(B, out, group_size, …) → mean(dim=2)
        let group = c * ft * fs * fs / self.out_channels;
        let x: Tensor<B, 6> = x.reshape([b, self.out_channels, group, t2, h2, w2]);
        x.mean_dim(2).reshape([b, self.out_channels, t2, h2, w2])
    }
}

/// `DupUp3D`, the shortcut of Wan2.2's `WanResidualUpBlock`: every channel repeated
/// (`repeat_interleave`) and unfolded into a `factor_t × factor_s × factor_s` neighbourhood; on
/// the first chunk of a decode the first `factor_t − 1` frames are dropped. No weights.
#[derive(Debug, Clone)]
pub struct DupUp3D {
    pub out_channels: usize,
    pub factor_t: usize,
    pub factor_s: usize,
}

impl DupUp3D {
    /// # Shapes
    /// `x: [B, C, T, H, W]` → `[B, out_channels, T·f_t, H·f_s, W·f_s]` (`T·f_t − (f_t − 1)`
    /// frames with `first_chunk`).
    pub fn forward<B: Backend>(&self, x: Tensor<B, 5>, first_chunk: bool) -> Tensor<B, 5> {
        let (ft, fs) = (self.factor_t, self.factor_s);
        let [b, c, t, h, w] = x.dims();
        let repeats = self.out_channels * ft * fs * fs / c;
        // x.repeat_interleave(repeats, dim=1)
        let x: Tensor<B, 6> = x.reshape([b, c, 1, t, h, w]);
        let x = x.expand([b, c, repeats, t, h, w]);
        // view(B, out, ft, fs, fs, T, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)
        let x: Tensor<B, 8> = x.reshape([b, self.out_channels, ft, fs, fs, t, h, w]);
        let x = x.permute([0, 1, 5, 2, 6, 3, 7, 4]);
        let x: Tensor<B, 5> = x.reshape([b, self.out_channels, t * ft, h * fs, w * fs]);
        match first_chunk {
            // x[:, :, factor_t - 1:]
            true => x.narrow(2, ft - 1, t * ft - (ft - 1)),
            false => x,
        }
    }
}

/// `WanUpBlock` (Wan2.1) and `WanResidualUpBlock` (Wan2.2, `is_residual`) in one struct, since
/// the decoder's `up_blocks` list holds one kind or the other: `num_res_blocks + 1` residual
/// blocks, then an optional upsampler: `upsamplers.0` (Wan2.1, to half the channels) or
/// `upsampler` (Wan2.2, same channels) plus the [`DupUp3D`] shortcut added to the output.
#[derive(Module, Debug)]
pub struct WanUpBlock<B: Backend> {
    pub resnets: Vec<WanResidualBlock<B>>,
    /// Wan2.1 `nn.ModuleList([WanResample])`, empty for the last block and for Wan2.2.
    pub upsamplers: Vec<WanResample<B>>,
    /// Wan2.2 `WanResidualUpBlock.upsampler` (`None` for the last block and for Wan2.1).
    pub upsampler: Option<WanResample<B>>,
    /// Wan2.2 `avg_shortcut` (with `upsampler`).
    #[module(skip)]
    avg_shortcut: Option<DupUp3D>,
}

/// The cache of one [`WanUpBlock`].
#[derive(Debug, Clone, Default)]
pub struct UpBlockCache<B: Backend> {
    pub resnets: Vec<ResidualBlockCache<B>>,
    /// The `upsample3d` `time_conv` slot (see [`WanResample::forward`]).
    pub time_conv: Option<CausalConvCache<B>>,
}

impl<B: Backend> WanUpBlock<B> {
    /// `upsample`: `None`, `Some(false)` (`upsample2d`) or `Some(true)` (`upsample3d`);
    /// `residual`: build diffusers' `WanResidualUpBlock` instead of `WanUpBlock`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        upsample: Option<bool>,
        residual: bool,
        device: &B::Device,
    ) -> Self {
        let resnets = (0..=num_res_blocks)
            .map(|j| WanResidualBlock::new(if j == 0 { in_dim } else { out_dim }, out_dim, device))
            .collect();
        if residual {
            return Self {
                resnets,
                upsamplers: Vec::new(),
                upsampler: upsample
                    .map(|temporal| WanResample::new(out_dim, temporal, out_dim, device)),
                avg_shortcut: upsample.map(|temporal| DupUp3D {
                    out_channels: out_dim,
                    factor_t: if temporal { 2 } else { 1 },
                    factor_s: 2,
                }),
            };
        }
        Self {
            resnets,
            upsamplers: upsample
                .map(|temporal| WanResample::new(out_dim, temporal, out_dim / 2, device))
                .into_iter()
                .collect(),
            upsampler: None,
            avg_shortcut: None,
        }
    }

    /// `first_chunk` (the first latent frame of a decode) is only read by the Wan2.2 shortcut.
    ///
    /// # Shapes
    /// `x: [B, C_in, T, H, W]` → `[B, C_out, T', H', W']` (see [`WanResample::forward`]).
    pub fn forward(
        &self,
        x: Tensor<B, 5>,
        cache: &mut UpBlockCache<B>,
        first_chunk: bool,
    ) -> Tensor<B, 5> {
        let Ok(x) = self.forward_stoppable(x, cache, first_chunk, &|| Ok::<(), Infallible>(()));
        x
    }

    /// [`forward`](Self::forward) that asks `stop` before every resnet and the upsampler (see
    /// [`WanDecoder3d::forward_stoppable`]).
    ///
    /// # Errors
    /// The first error `stop` returns.
    pub fn forward_stoppable<E>(
        &self,
        x: Tensor<B, 5>,
        cache: &mut UpBlockCache<B>,
        first_chunk: bool,
        stop: &dyn Fn() -> Result<(), E>,
    ) -> Result<Tensor<B, 5>, E> {
        cache
            .resnets
            .resize_with(self.resnets.len(), Default::default);
        let x_copy = self.avg_shortcut.as_ref().map(|_| x.clone());
        let mut x = x;
        for (resnet, c) in self.resnets.iter().zip(cache.resnets.iter_mut()) {
            stop()?;
            x = resnet.forward(x, c);
        }
        for up in self.upsamplers.iter().chain(&self.upsampler) {
            stop()?;
            x = up.forward(x, &mut cache.time_conv);
        }
        if let (Some(shortcut), Some(x_copy)) = (&self.avg_shortcut, x_copy) {
            x = x + shortcut.forward(x_copy, first_chunk);
        }
        Ok(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Downsampling
// ---------------------------------------------------------------------------------------------

/// `WanResample` in `downsample2d` / `downsample3d` mode: per frame `ZeroPad2d((0, 1, 0, 1))`
/// and a 3×3 stride-2 conv (`dim → dim`), then (`downsample3d` only) `time_conv`, a `(3,1,1)`
/// conv with stride 2 in time and no padding that halves the frames.
#[derive(Module, Debug)]
pub struct WanDownsample<B: Backend> {
    /// `resample.1` in the checkpoint (index 0 is the weightless `ZeroPad2d`; see [`KEY_REMAP`]).
    pub resample: Conv2d<B>,
    /// `downsample3d` only: `(3,1,1)` conv `dim → dim`, stride `(2,1,1)`, padding 0.
    pub time_conv: Option<WanCausalConv3d<B>>,
}

/// The `time_conv` slot of one `downsample3d` [`WanDownsample`]: the last frame (after the
/// spatial downsampling) of the previous chunk, `None` before the first chunk.
///
/// diffusers stores the whole first chunk (`feat_cache[idx] = x.clone()`) but only ever reads
/// its last frame (`feat_cache[idx][:, :, -1:]`), so keeping one frame is the same.
#[derive(Debug, Clone, Default)]
pub struct TimeDownsampleCache<B: Backend> {
    last: Option<Tensor<B, 5>>,
}

impl<B: Backend> TimeDownsampleCache<B> {
    /// Whether no chunk has passed yet.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }
}

impl<B: Backend> WanDownsample<B> {
    /// `temporal`: `downsample3d` (with `time_conv`) instead of `downsample2d`.
    pub fn new(dim: usize, temporal: bool, device: &B::Device) -> Self {
        Self {
            resample: Conv2dConfig::new([dim, dim], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Valid)
                .init(device),
            time_conv: temporal.then(|| {
                WanCausalConv3d::new(dim, dim, [3, 1, 1], [0, 0, 0], device).with_stride([2, 1, 1])
            }),
        }
    }

    /// Mirrors `WanResample.forward` for the `downsample*` modes. The `downsample3d` time step:
    /// the first chunk of an encode passes through unchanged (its frames are only remembered);
    /// every later chunk is prefixed with the previous chunk's last frame and convolved with
    /// stride 2, so 4 frames become 2 and 2 become 1.
    ///
    /// # Shapes
    /// `x: [B, C, T, H, W]` → `[B, C, T', ⌊(H-1)/2⌋+1, ⌊(W-1)/2⌋+1]` (`H/2`, `W/2` for even
    /// sizes), with `T' = T` for `downsample2d` and for the first chunk of `downsample3d`, else
    /// `T' = ⌊(T-2)/2⌋+1` (`T/2` for even `T`).
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut TimeDownsampleCache<B>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        // [B, C, T, H, W] → [B·T, C, H, W]
        let x = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        // nn.ZeroPad2d((0, 1, 0, 1)): one zero column on the right, one zero row at the bottom.
        let x = zero_pad(zero_pad(x, 2, 0, 1), 3, 0, 1);
        let x = self.resample.forward(x); // [B·T, C, H', W']
        let [_, c2, h2, w2] = x.dims();
        let x = x.reshape([b, t, c2, h2, w2]).permute([0, 2, 1, 3, 4]);
        let Some(time_conv) = &self.time_conv else {
            return x;
        };
        let last = x.clone().narrow(2, t - 1, 1);
        match cache.last.replace(last) {
            // diffusers: `feat_cache[idx] = x.clone()` and no time conv for the first chunk.
            None => x,
            // `self.time_conv(torch.cat([feat_cache[idx][:, :, -1:], x], 2))`
            Some(prev) => time_conv.forward(Tensor::cat(vec![prev, x], 2)),
        }
    }
}

/// One entry of the encoder's flat `down_blocks` list (diffusers appends residual blocks,
/// attention blocks and resamplers to one `nn.ModuleList`). The variant name is one path level
/// in the Burn module tree; [`KEY_REMAP`] inserts it into the checkpoint keys.
// A dozen layers built once per model: the variant size difference costs nothing, and Burn's
// `Module` derive has no `Box` support to even it out.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum WanDownLayer<B: Backend> {
    /// `WanResidualBlock`.
    Residual(WanResidualBlock<B>),
    /// `WanAttentionBlock` (only where `attn_scales` asks for one; none in Wan2.1).
    Attention(WanAttentionBlock<B>),
    /// `WanResample` in `downsample2d` / `downsample3d` mode.
    Resample(WanDownsample<B>),
    /// Wan2.2 (`is_residual`): `WanResidualDownBlock`, one per level.
    ResidualDown(WanResidualDownBlock<B>),
}

/// Wan2.2's `WanResidualDownBlock`: `num_res_blocks` residual blocks and an optional
/// `downsampler` ([`WanDownsample`]), plus the weightless [`AvgDown3D`] shortcut of the input.
#[derive(Module, Debug)]
pub struct WanResidualDownBlock<B: Backend> {
    pub resnets: Vec<WanResidualBlock<B>>,
    pub downsampler: Option<WanDownsample<B>>,
    #[module(skip)]
    avg_shortcut: AvgDown3D,
}

impl<B: Backend> WanResidualDownBlock<B> {
    /// `down`: `None` (last level), `Some(temporal)` (`downsample3d` when `temporal`).
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        down: Option<bool>,
        device: &B::Device,
    ) -> Self {
        let resnets = (0..num_res_blocks)
            .map(|j| WanResidualBlock::new(if j == 0 { in_dim } else { out_dim }, out_dim, device))
            .collect();
        Self {
            resnets,
            downsampler: down.map(|temporal| WanDownsample::new(out_dim, temporal, device)),
            avg_shortcut: AvgDown3D {
                out_channels: out_dim,
                factor_t: if down == Some(true) { 2 } else { 1 },
                factor_s: if down.is_some() { 2 } else { 1 },
            },
        }
    }

    /// # Shapes
    /// `x: [B, C_in, T, H, W]` → `[B, C_out, T', H', W']` (see [`WanDownsample::forward`]).
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut DownLayerCache<B>) -> Tensor<B, 5> {
        let x_copy = x.clone();
        cache
            .resnets
            .resize_with(self.resnets.len(), Default::default);
        let mut x = x;
        for (resnet, c) in self.resnets.iter().zip(cache.resnets.iter_mut()) {
            x = resnet.forward(x, c);
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x, &mut cache.time_conv);
        }
        x + self.avg_shortcut.forward(x_copy)
    }
}

/// The cache of one [`WanDownLayer`]: `resnet` is used by `Residual` layers, `time_conv` by
/// `downsample3d` layers (and the `downsample3d` of `ResidualDown`), `resnets` by `ResidualDown`
/// layers; the rest stays empty.
#[derive(Debug, Clone, Default)]
pub struct DownLayerCache<B: Backend> {
    pub resnet: ResidualBlockCache<B>,
    pub time_conv: TimeDownsampleCache<B>,
    pub resnets: Vec<ResidualBlockCache<B>>,
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// `WanEncoder3d` (Wan2.1 layers, or Wan2.2 residual down blocks with `is_residual`).
#[derive(Module, Debug)]
pub struct WanEncoder3d<B: Backend> {
    pub conv_in: WanCausalConv3d<B>,
    pub down_blocks: Vec<WanDownLayer<B>>,
    pub mid_block: WanMidBlock<B>,
    pub norm_out: WanRmsNorm<B, 4>,
    /// `→ 2·z_dim` channels (mean ‖ logvar).
    pub conv_out: WanCausalConv3d<B>,
}

/// All causal state of one encode (diffusers `_enc_feat_map` + `_enc_conv_idx`); see the module
/// docs for the slot mapping. Start each independent encode from
/// [`WanEncoderCache::default`] (diffusers' `clear_cache`).
#[derive(Debug, Clone, Default)]
pub struct WanEncoderCache<B: Backend> {
    pub conv_in: CausalConvCache<B>,
    pub down_blocks: Vec<DownLayerCache<B>>,
    pub mid_block: Vec<ResidualBlockCache<B>>,
    pub conv_out: CausalConvCache<B>,
}

impl<B: Backend> WanEncoder3d<B> {
    pub fn new(config: &AutoencoderKLWanConfig, device: &B::Device) -> Self {
        let dim = config.base_dim;
        let mult = &config.dim_mult;
        // dims = [dim * u for u in [1] + dim_mult]
        let dims: Vec<usize> = std::iter::once(1)
            .chain(mult.iter().copied())
            .map(|u| dim * u)
            .collect();
        let n = mult.len();
        let mut down_blocks = Vec::new();
        let mut scale = 1.0f64;
        for i in 0..n {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            if config.is_residual {
                // Wan2.2: one `WanResidualDownBlock` per level (no attention blocks).
                let down = (i != n - 1).then(|| config.temperal_downsample[i]);
                down_blocks.push(WanDownLayer::ResidualDown(WanResidualDownBlock::new(
                    in_dim,
                    out_dim,
                    config.num_res_blocks,
                    down,
                    device,
                )));
                continue;
            }
            for _ in 0..config.num_res_blocks {
                down_blocks.push(WanDownLayer::Residual(WanResidualBlock::new(
                    in_dim, out_dim, device,
                )));
                // `if scale in attn_scales` (exact float comparison, as in diffusers)
                if config.attn_scales.contains(&scale) {
                    down_blocks.push(WanDownLayer::Attention(WanAttentionBlock::new(
                        out_dim, device,
                    )));
                }
                in_dim = out_dim;
            }
            if i != n - 1 {
                let temporal = config.temperal_downsample[i];
                down_blocks.push(WanDownLayer::Resample(WanDownsample::new(
                    out_dim, temporal, device,
                )));
                scale /= 2.0;
            }
        }
        let out_dim = dims[n];
        Self {
            conv_in: WanCausalConv3d::new(
                config.in_channels,
                dims[0],
                [3, 3, 3],
                [1, 1, 1],
                device,
            ),
            down_blocks,
            mid_block: WanMidBlock::new(out_dim, device),
            norm_out: WanRmsNorm::new(out_dim, device),
            conv_out: WanCausalConv3d::new(out_dim, 2 * config.z_dim, [3, 3, 3], [1, 1, 1], device),
        }
    }

    /// One chunk of video frames through the encoder, continuing from `cache`
    /// (`WanEncoder3d.forward(x, feat_cache, feat_idx)`). diffusers calls it with frame `[0]`,
    /// then `[1:5]`, `[5:9]`, …; [`AutoencoderKLWan::encode`] does the same.
    ///
    /// # Shapes
    /// `x: [B, in_channels, T, H, W]` → `[B, 2·z_dim, T', H/8, W/8]` (Wan2.1, even sizes),
    /// `T' = T` for the first chunk of an encode (its time downsampling is skipped) and `T/4`
    /// for a later chunk of 4 frames.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut WanEncoderCache<B>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward_cached(x, &mut cache.conv_in);
        cache
            .down_blocks
            .resize_with(self.down_blocks.len(), Default::default);
        for (layer, c) in self.down_blocks.iter().zip(cache.down_blocks.iter_mut()) {
            x = match layer {
                WanDownLayer::Residual(block) => block.forward(x, &mut c.resnet),
                WanDownLayer::Attention(attn) => attn.forward(x),
                WanDownLayer::Resample(down) => down.forward(x, &mut c.time_conv),
                WanDownLayer::ResidualDown(block) => block.forward(x, c),
            };
        }
        let x = self.mid_block.forward(x, &mut cache.mid_block);
        let x = self.norm_out.forward_silu(x);
        self.conv_out.forward_cached(x, &mut cache.conv_out)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

/// `WanDecoder3d` (Wan2.1 up blocks, or Wan2.2 residual up blocks with `is_residual`).
#[derive(Module, Debug)]
pub struct WanDecoder3d<B: Backend> {
    pub conv_in: WanCausalConv3d<B>,
    pub mid_block: WanMidBlock<B>,
    pub up_blocks: Vec<WanUpBlock<B>>,
    pub norm_out: WanRmsNorm<B, 4>,
    pub conv_out: WanCausalConv3d<B>,
}

/// All causal state of one decode (diffusers `_feat_map` + `_conv_idx`); see the module docs for
/// the slot mapping. Start each independent decode from [`WanDecoderCache::default`] (diffusers'
/// `clear_cache`).
#[derive(Debug, Clone, Default)]
pub struct WanDecoderCache<B: Backend> {
    /// Whether a chunk has been decoded (diffusers passes `first_chunk=True` only for latent
    /// frame 0; read by Wan2.2's [`DupUp3D`] shortcuts).
    pub started: bool,
    pub conv_in: CausalConvCache<B>,
    pub mid_block: Vec<ResidualBlockCache<B>>,
    pub up_blocks: Vec<UpBlockCache<B>>,
    pub conv_out: CausalConvCache<B>,
}

impl<B: Backend> WanDecoder3d<B> {
    pub fn new(config: &AutoencoderKLWanConfig, device: &B::Device) -> Self {
        let dim = config.decoder_dim();
        let mult = &config.dim_mult;
        // dims = [dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
        let dims: Vec<usize> = std::iter::once(mult[mult.len() - 1])
            .chain(mult.iter().rev().copied())
            .map(|u| dim * u)
            .collect();
        let temperal_upsample = config.temperal_upsample();
        let n = mult.len();
        let residual = config.is_residual;
        let up_blocks = (0..n)
            .map(|i| {
                // Wan2.1: blocks after the first get the halved channels of the upsampler.
                let in_dim = if i > 0 && !residual {
                    dims[i] / 2
                } else {
                    dims[i]
                };
                let upsample = (i != n - 1).then(|| temperal_upsample[i]);
                WanUpBlock::new(
                    in_dim,
                    dims[i + 1],
                    config.num_res_blocks,
                    upsample,
                    residual,
                    device,
                )
            })
            .collect();
        let out_dim = dims[n];
        Self {
            conv_in: WanCausalConv3d::new(config.z_dim, dims[0], [3, 3, 3], [1, 1, 1], device),
            mid_block: WanMidBlock::new(dims[0], device),
            up_blocks,
            norm_out: WanRmsNorm::new(out_dim, device),
            conv_out: WanCausalConv3d::new(
                out_dim,
                config.out_channels,
                [3, 3, 3],
                [1, 1, 1],
                device,
            ),
        }
    }

    /// One chunk of latent frames through the decoder, continuing from `cache`. diffusers calls
    /// it with one latent frame at a time.
    ///
    /// # Shapes
    /// `x: [B, z_dim, T, H, W]` → `[B, out_channels, T', 8H, 8W]` (Wan2.1), `T' = T` for the
    /// first chunk of a decode (its temporal upsampling is skipped, diffusers' `"Rep"`) and `4T`
    /// after it; with one latent frame per call, as here and in diffusers, that is 1 then 4.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut WanDecoderCache<B>) -> Tensor<B, 5> {
        let Ok(x) = self.forward_stoppable(x, cache, &|| Ok::<(), Infallible>(()));
        x
    }

    /// [`forward`](Self::forward) that asks `stop` before the mid block, before every resnet
    /// and upsampler of the up blocks and before the output layers, and gives up with its
    /// error: a cancelled job stops within one resnet of one latent frame, not one whole frame
    /// (at 4K a frame is many seconds on a CPU). The cache is left half-updated then: start a
    /// new decode after a stop.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    ///
    /// # Errors
    /// The first error `stop` returns.
    pub fn forward_stoppable<E>(
        &self,
        x: Tensor<B, 5>,
        cache: &mut WanDecoderCache<B>,
        stop: &dyn Fn() -> Result<(), E>,
    ) -> Result<Tensor<B, 5>, E> {
        let first_chunk = !cache.started;
        cache.started = true;
        let x = self.conv_in.forward_cached(x, &mut cache.conv_in);
        stop()?;
        let mut x = self.mid_block.forward(x, &mut cache.mid_block);
        cache
            .up_blocks
            .resize_with(self.up_blocks.len(), Default::default);
        for (block, c) in self.up_blocks.iter().zip(cache.up_blocks.iter_mut()) {
            x = block.forward_stoppable(x, c, first_chunk, stop)?;
        }
        stop()?;
        let x = self.norm_out.forward_silu(x);
        Ok(self.conv_out.forward_cached(x, &mut cache.conv_out))
    }
}

/// diffusers `patchify(x, patch_size)` (Wan2.2): every `p × p` pixel block folded into the
/// channels, channel index `c·p² + j·p + i` for the pixel at row offset `i`, column offset `j`
/// (`permute(0, 1, 6, 4, 2, 3, 5)`). The identity for `p = 1`.
///
/// # Shapes
/// `x: [B, C, F, H, W]` → `[B, C·p², F, H/p, W/p]`.
///
/// # Panics
/// If `H` or `W` is not a multiple of `p`.
pub fn patchify<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    if p == 1 {
        return x;
    }
    let [b, c, f, h, w] = x.dims();
    assert!(
        h % p == 0 && w % p == 0,
        "height ({h}) and width ({w}) must be divisible by patch_size ({p})"
    );
    // view(b, c, f, h/p, p, w/p, p).permute(0, 1, 6, 4, 2, 3, 5)
    let x: Tensor<B, 7> = x.reshape([b, c, f, h / p, p, w / p, p]);
    x.permute([0, 1, 6, 4, 2, 3, 5])
        .reshape([b, c * p * p, f, h / p, w / p])
}

/// diffusers `unpatchify(x, patch_size)`, the inverse of [`patchify`]
/// (`view(b, c, p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)`).
///
/// # Shapes
/// `x: [B, C·p², F, H, W]` → `[B, C, F, H·p, W·p]`.
pub fn unpatchify<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 5> {
    if p == 1 {
        return x;
    }
    let [b, cp, f, h, w] = x.dims();
    let c = cp / (p * p);
    let x: Tensor<B, 7> = x.reshape([b, c, p, p, f, h, w]);
    x.permute([0, 1, 4, 5, 3, 6, 2])
        .reshape([b, c, f, h * p, w * p])
}

// ---------------------------------------------------------------------------------------------
// AutoencoderKLWan
// ---------------------------------------------------------------------------------------------

/// The Wan2.1 / Wan2.2 video VAE (see the module docs).
#[derive(Module, Debug)]
pub struct AutoencoderKLWan<B: Backend> {
    pub encoder: WanEncoder3d<B>,
    /// 1×1×1 `2·z_dim → 2·z_dim`.
    pub quant_conv: WanCausalConv3d<B>,
    /// 1×1×1 `z_dim → z_dim`.
    pub post_quant_conv: WanCausalConv3d<B>,
    pub decoder: WanDecoder3d<B>,
    #[module(skip)]
    config: AutoencoderKLWanConfig,
}

impl<B: Backend> AutoencoderKLWan<B> {
    /// The module with uninitialised (lazy) parameters for `config`; [`load`](Self::load) fills
    /// them.
    ///
    /// # Errors
    /// The [`AutoencoderKLWanConfig::validate`] message for unsupported configs.
    pub fn new(config: AutoencoderKLWanConfig, device: &B::Device) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            encoder: WanEncoder3d::new(&config, device),
            quant_conv: WanCausalConv3d::new(
                2 * config.z_dim,
                2 * config.z_dim,
                [1, 1, 1],
                [0, 0, 0],
                device,
            ),
            post_quant_conv: WanCausalConv3d::new(
                config.z_dim,
                config.z_dim,
                [1, 1, 1],
                [0, 0, 0],
                device,
            ),
            decoder: WanDecoder3d::new(&config, device),
            config,
        })
    }

    load_methods! {
        /// Loads `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (or its shards),
        /// weights cast to `dtype` (the pipelines use f32, as diffusers' Helios examples load the
        /// VAE with `torch_dtype=torch.float32`); every tensor of the file is used
        /// ([`IGNORED_KEYS`] is empty).
        ///
        /// # Errors
        /// [`LoadError::Config`] for an unreadable or unsupported config, [`LoadError::Weights`]
        /// for missing, unexpected or wrongly shaped tensors.
        ///
        /// [`LoadError::Config`]: crate::pipeline::checkpoint::LoadError::Config
        /// [`LoadError::Weights`]: crate::pipeline::checkpoint::LoadError::Weights
        weights "diffusion_pytorch_model", keys KEY_MAP,
        build |config: AutoencoderKLWanConfig, device| Self::new(config, device)
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &AutoencoderKLWanConfig {
        &self.config
    }

    /// The compute dtype (that of the weights). [`encode`](Self::encode) and the decoders cast
    /// their input to it (diffusers: `.to(self.vae.dtype)`) and return it.
    pub fn dtype(&self) -> DType {
        self.post_quant_conv.weight.val().dtype()
    }

    fn check_latents(&self, z: &Tensor<B, 5>, name: &str) {
        let dims = z.dims();
        assert_eq!(
            dims[1], self.config.z_dim,
            "`{name}` must be [B, z_dim={}, T, H, W], got {dims:?}",
            self.config.z_dim
        );
        assert!(dims[2] >= 1, "`{name}` has no frames: {dims:?}");
    }

    /// Encodes video to the parameters of the latent distribution, as diffusers'
    /// `AutoencoderKLWan.encode` / `_encode` followed by `DiagonalGaussianDistribution`:
    /// the encoder runs on frame `[0]`, then `[1:5]`, `[5:9]`, … with one causal cache (fresh
    /// per call, diffusers' `clear_cache`), the chunks are concatenated in time, `quant_conv` is
    /// applied, and the channels split into `mean ‖ logvar` with `logvar` clamped to [-30, 20].
    ///
    /// Frames after the last complete group of 4 are ignored, as in diffusers
    /// (`iter_ = 1 + (num_frame - 1) // 4`). The latents are not normalised; see
    /// [`normalize`](Self::normalize) and [`sample`](Self::sample).
    ///
    /// # Shapes
    /// `video: [B, in_channels, F, H, W]` in [-1, 1], `F = 1 + 4k` → `(mean, logvar)`, each
    /// `[B, z_dim, 1 + k, H/8, W/8]` (Wan2.1, `H`, `W` multiples of 8; an image is `F = 1`).
    ///
    /// # Panics
    /// If `video` does not have `in_channels` channels or has no frames.
    pub fn encode(&self, video: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let dims = video.dims();
        assert_eq!(
            dims[1],
            self.config.video_channels(),
            "`video` must be [B, in_channels / patch_size²={}, F, H, W], got {dims:?}",
            self.config.video_channels()
        );
        assert!(dims[2] >= 1, "`video` has no frames: {dims:?}");
        // Wan2.2: `x = patchify(x, patch_size)` before the chunked encode.
        let video = patchify(video.cast(self.dtype()), self.config.patch());
        let chunks = 1 + (dims[2] - 1) / 4;
        let mut cache = WanEncoderCache::default();
        let mut outs = Vec::with_capacity(chunks);
        for i in 0..chunks {
            // x[:, :, :1] for i = 0, else x[:, :, 1 + 4(i-1) : 1 + 4i]
            let (start, len) = if i == 0 { (0, 1) } else { (1 + 4 * (i - 1), 4) };
            outs.push(
                self.encoder
                    .forward(video.clone().narrow(2, start, len), &mut cache),
            );
        }
        let enc = self.quant_conv.forward(Tensor::cat(outs, 2)); // [B, 2·z_dim, T, h, w]
        let z = self.config.z_dim;
        // DiagonalGaussianDistribution: torch.chunk(parameters, 2, dim=1); clamp(logvar, -30, 20)
        let mean = enc.clone().narrow(1, 0, z);
        let logvar = enc.narrow(1, z, z).clamp(-30.0, 20.0);
        (mean, logvar)
    }

    /// `DiagonalGaussianDistribution.sample` with the standard-normal draw injected:
    /// `mean + exp(0.5 · logvar) · noise` (diffusers computes `std = torch.exp(0.5 * logvar)` at
    /// construction and `mean + std * randn_tensor(mean.shape)` in `sample`).
    ///
    /// # Shapes
    /// `mean`, `logvar`, `noise`: `[B, z_dim, T, H, W]` → same.
    ///
    /// # Panics
    /// If the three shapes differ.
    pub fn sample(mean: Tensor<B, 5>, logvar: Tensor<B, 5>, noise: Tensor<B, 5>) -> Tensor<B, 5> {
        assert_eq!(
            (mean.dims(), logvar.dims()),
            (noise.dims(), noise.dims()),
            "`mean`, `logvar` and `noise` must have the same shape"
        );
        let std = logvar.mul_scalar(0.5).exp();
        mean + std * noise
    }

    /// Decodes de-normalised latents to video, as diffusers' `AutoencoderKLWan.decode`:
    /// `post_quant_conv`, then the decoder one latent frame at a time with a fresh causal cache,
    /// concatenated in time and clamped to [-1, 1].
    ///
    /// # Shapes
    /// `z: [B, z_dim, T, H, W]` → `[B, out_channels, 1 + 4(T-1), 8H, 8W]` (Wan2.1 scales; in
    /// general [`temporal_scale`](AutoencoderKLWanConfig::temporal_scale) and
    /// [`spatial_scale`](AutoencoderKLWanConfig::spatial_scale)).
    ///
    /// # Panics
    /// If `z` does not have `z_dim` channels or has no frames.
    pub fn decode(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        self.check_latents(&z, "z");
        let num_frames = z.dims()[2];
        let x = self.post_quant_conv.forward(z.cast(self.dtype()));
        let mut cache = WanDecoderCache::default();
        let mut outs = Vec::with_capacity(num_frames);
        for i in 0..num_frames {
            outs.push(self.decoder.forward(x.clone().narrow(2, i, 1), &mut cache));
        }
        unpatchify(Tensor::cat(outs, 2), self.config.patch()).clamp(-1.0, 1.0)
    }

    /// Like [`decode`](Self::decode), but hands each latent frame's video frames to `sink` as
    /// soon as they exist (already clamped), so a long video is never held whole. The sink gets
    /// `(first_video_frame_index, frames)`; returning `Err` stops decoding. `stop` is asked
    /// between the decoder's blocks ([`WanDecoder3d::forward_stoppable`]); its `Err` stops
    /// decoding too.
    ///
    /// # Shapes
    /// `z: [B, z_dim, T, H, W]`; `frames: [B, out_channels, n, 8H, 8W]` with `n = 1` for latent
    /// frame 0 and `n = 4` after it (Wan2.1).
    ///
    /// # Errors
    /// The first error of `stop` or the sink.
    ///
    /// # Panics
    /// As [`decode`](Self::decode).
    pub fn decode_streaming<E>(
        &self,
        z: Tensor<B, 5>,
        stop: &dyn Fn() -> Result<(), E>,
        mut sink: impl FnMut(usize, Tensor<B, 5>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check_latents(&z, "z");
        let num_frames = z.dims()[2];
        let x = self.post_quant_conv.forward(z.cast(self.dtype()));
        let mut cache = WanDecoderCache::default();
        let mut next = 0;
        for i in 0..num_frames {
            let frames =
                self.decoder
                    .forward_stoppable(x.clone().narrow(2, i, 1), &mut cache, stop)?;
            // Wan2.2: `unpatchify` (per frame, as it acts on each frame alone), then the clamp.
            let frames = unpatchify(frames, self.config.patch()).clamp(-1.0, 1.0);
            let n = frames.dims()[2];
            sink(next, frames)?;
            next += n;
        }
        Ok(())
    }

    /// Per-channel `(latents_mean, 1 / latents_std)` as the pipeline builds them
    /// (`torch.tensor(config.latents_std)` is float32, so `1 / std` is rounded in f32).
    pub fn latents_mean_inv_std(&self) -> (Vec<f32>, Vec<f32>) {
        let mean = self.config.latents_mean.iter().map(|m| *m as f32).collect();
        let inv_std = self
            .config
            .latents_std
            .iter()
            .map(|s| 1.0f32 / (*s as f32))
            .collect();
        (mean, inv_std)
    }

    /// `[1, C, 1, 1, 1]` in the dtype of the latents it scales (diffusers
    /// `.to(latents.device, latents.dtype)`).
    fn channel_tensor(&self, v: Vec<f32>, like: &Tensor<B, 5>) -> Tensor<B, 5> {
        let c = v.len();
        Tensor::from_data(
            TensorData::new(v, [1, c, 1, 1, 1]),
            (&like.device(), like.dtype()),
        )
    }

    /// The pipeline's de-normalisation before decoding:
    /// `latents / latents_std + latents_mean` where `latents_std = 1 / config.latents_std`
    /// (diffusers `pipeline_helios_pyramid.py`).
    ///
    /// # Shapes
    /// `latents: [B, z_dim, T, H, W]` → same.
    pub fn denormalize(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        self.check_latents(&latents, "latents");
        let (mean, inv_std) = self.latents_mean_inv_std();
        let (mean, inv_std) = (
            self.channel_tensor(mean, &latents),
            self.channel_tensor(inv_std, &latents),
        );
        latents / inv_std + mean
    }

    /// The inverse, as the pipeline normalises encoded latents: `(latents - mean) * (1 / std)`.
    ///
    /// # Shapes
    /// `latents: [B, z_dim, T, H, W]` → same.
    pub fn normalize(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        self.check_latents(&latents, "latents");
        let (mean, inv_std) = self.latents_mean_inv_std();
        let (mean, inv_std) = (
            self.channel_tensor(mean, &latents),
            self.channel_tensor(inv_std, &latents),
        );
        (latents - mean) * inv_std
    }
}
