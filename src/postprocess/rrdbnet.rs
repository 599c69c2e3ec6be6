//! `RRDBNet`: the ESRGAN generator of `RealESRGAN_x4plus` and `RealESRGAN_x2plus` (with its
//! pixel-unshuffle input), read from the `.pth` RealESRGANer loads (`params_ema`, else `params`).
//!
//! Mirrors basicsr 1.4.2 `basicsr/archs/rrdbnet_arch.py` (`ResidualDenseBlock`, `RRDB`,
//! `RRDBNet`) and `arch_util.pixel_unshuffle`. Keys as in the checkpoint: `conv_first`,
//! `body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
//! `conv_last`. The scale is read from `conv_first`'s input channels (3 → x4, 12 → x2, 48 →
//! x1), the block count from `body.*`, the widths from the conv shapes. tests/realesrgan.rs pins
//! parity with basicsr's class ≤ 1e-4.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::activation::leaky_relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use super::realesrgan::UpscaleError;

/// A 3x3, stride 1, padding 1 conv: `weight [out, in, 3, 3]`, `bias [out]`.
#[derive(Debug, Clone)]
struct Conv3<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Conv3<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    }
}

/// `nn.LeakyReLU(negative_slope=0.2)`.
fn lrelu<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    leaky_relu(x, 0.2)
}

/// `ResidualDenseBlock`: five convs over the concatenated features (`conv1..conv5`).
#[derive(Debug, Clone)]
struct ResidualDenseBlock<B: Backend> {
    convs: [Conv3<B>; 5],
}

impl<B: Backend> ResidualDenseBlock<B> {
    /// `[B, F, H, W]` → `[B, F, H, W]`: `conv5(cat(x, x1..x4)) · 0.2 + x`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut feats = vec![x.clone()];
        for conv in &self.convs[..4] {
            let xi = lrelu(conv.forward(Tensor::cat(feats.clone(), 1)));
            feats.push(xi);
        }
        let x5 = self.convs[4].forward(Tensor::cat(feats, 1));
        x5 * 0.2 + x
    }
}

/// `RRDB`: three dense blocks (`rdb1..rdb3`) with a 0.2-scaled residual.
#[derive(Debug, Clone)]
struct Rrdb<B: Backend> {
    rdbs: [ResidualDenseBlock<B>; 3],
}

impl<B: Backend> Rrdb<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut out = x.clone();
        for rdb in &self.rdbs {
            out = rdb.forward(out);
        }
        out * 0.2 + x
    }
}

/// basicsr `RRDBNet` in f32.
#[derive(Debug, Clone)]
pub struct RRDBNet<B: Backend> {
    conv_first: Conv3<B>,
    body: Vec<Rrdb<B>>,
    conv_body: Conv3<B>,
    conv_up1: Conv3<B>,
    conv_up2: Conv3<B>,
    conv_hr: Conv3<B>,
    conv_last: Conv3<B>,
    /// The upscale factor: 4 (`RealESRGAN_x4plus`), 2 (`x2plus`, pixel-unshuffle by 2 first)
    /// or 1 (pixel-unshuffle by 4).
    pub scale: usize,
}

/// The scale an RRDBNet with `conv_first` taking `in_ch` input channels has (3 → 4, 12 → 2,
/// 48 → 1), as basicsr multiplies `num_in_ch` by 4 or 16 for scales 2 and 1.
pub fn scale_of_conv_first(in_ch: usize) -> Option<usize> {
    match in_ch {
        3 => Some(4),
        12 => Some(2),
        48 => Some(1),
        _ => None,
    }
}

struct Taker<'a> {
    path: &'a Path,
    state: BTreeMap<String, TensorData>,
}

impl Taker<'_> {
    fn conv<B: Backend>(
        &mut self,
        name: &str,
        device: &B::Device,
    ) -> Result<Conv3<B>, UpscaleError> {
        let err = |message: String| UpscaleError::File {
            path: self.path.to_path_buf(),
            message,
        };
        let w = self
            .state
            .remove(&format!("{name}.weight"))
            .ok_or_else(|| err(format!("missing tensor `{name}.weight` (not an RRDBNet?)")))?;
        let b = self
            .state
            .remove(&format!("{name}.bias"))
            .ok_or_else(|| err(format!("missing tensor `{name}.bias`")))?;
        if w.shape.len() != 4 || w.shape[2..] != [3, 3] || b.shape.as_slice() != [w.shape[0]] {
            return Err(err(format!(
                "`{name}` is not a 3x3 conv: weight {:?}, bias {:?}",
                w.shape, b.shape
            )));
        }
        let dev = (device, DType::F32);
        Ok(Conv3 {
            weight: Tensor::from_data(w, dev),
            bias: Tensor::from_data(b, dev),
        })
    }
}

impl<B: Backend> RRDBNet<B> {
    /// Build from a state dict already read (`params_ema` / `params` / bare).
    ///
    /// # Errors
    /// [`UpscaleError`] naming the missing or misshapen tensor, an unknown `conv_first` width,
    /// no `body.0`, or a tensor left over.
    pub(crate) fn from_state(
        path: &Path,
        state: BTreeMap<String, TensorData>,
        device: &B::Device,
    ) -> Result<Self, UpscaleError> {
        let err = |message: String| UpscaleError::File {
            path: path.to_path_buf(),
            message,
        };
        let mut t = Taker { path, state };
        let conv_first = t.conv::<B>("conv_first", device)?;
        let in_ch = conv_first.weight.dims()[1];
        let scale = scale_of_conv_first(in_ch).ok_or_else(|| {
            err(format!(
                "`conv_first.weight` takes {in_ch} channels; RRDBNet takes 3 (x4), 12 (x2) or 48 (x1)"
            ))
        })?;
        let mut body = Vec::new();
        while t
            .state
            .contains_key(&format!("body.{}.rdb1.conv1.weight", body.len()))
        {
            let i = body.len();
            let mut rdbs = Vec::with_capacity(3);
            for r in 1..=3 {
                let mut convs = Vec::with_capacity(5);
                for c in 1..=5 {
                    convs.push(t.conv::<B>(&format!("body.{i}.rdb{r}.conv{c}"), device)?);
                }
                let convs: [Conv3<B>; 5] = convs.try_into().expect("five convs");
                rdbs.push(ResidualDenseBlock { convs });
            }
            let rdbs: [ResidualDenseBlock<B>; 3] = rdbs.try_into().expect("three blocks");
            body.push(Rrdb { rdbs });
        }
        if body.is_empty() {
            return Err(err("no `body.0.rdb1.conv1.weight`: not an RRDBNet".into()));
        }
        let net = Self {
            conv_first,
            body,
            conv_body: t.conv("conv_body", device)?,
            conv_up1: t.conv("conv_up1", device)?,
            conv_up2: t.conv("conv_up2", device)?,
            conv_hr: t.conv("conv_hr", device)?,
            conv_last: t.conv("conv_last", device)?,
            scale,
        };
        if let Some(k) = t.state.keys().next() {
            return Err(err(format!("unexpected tensor `{k}` (not an RRDBNet)")));
        }
        Ok(net)
    }

    /// An RRDBNet with `num_feat` features, `num_block` RRDBs, `num_grow_ch` growth channels,
    /// x`scale`, random weights (uniform ±1/√fan_in · 0.1, zero biases): for benchmarks, where
    /// weights do not matter (`RealESRGAN_x4plus`: 64, 23, 32, 4).
    pub fn random(
        num_feat: usize,
        num_block: usize,
        num_grow_ch: usize,
        scale: usize,
        device: &B::Device,
    ) -> Self {
        use burn::tensor::Distribution;
        let dev = (device, DType::F32);
        let conv = |o: usize, i: usize| {
            let bound = 0.1 / ((i * 9) as f64).sqrt();
            Conv3 {
                weight: Tensor::random([o, i, 3, 3], Distribution::Uniform(-bound, bound), dev),
                bias: Tensor::zeros([o], dev),
            }
        };
        let in_ch = match scale {
            2 => 12,
            1 => 48,
            _ => 3,
        };
        let (f, g) = (num_feat, num_grow_ch);
        let rdb = || ResidualDenseBlock {
            convs: [
                conv(g, f),
                conv(g, f + g),
                conv(g, f + 2 * g),
                conv(g, f + 3 * g),
                conv(f, f + 4 * g),
            ],
        };
        Self {
            conv_first: conv(f, in_ch),
            body: (0..num_block)
                .map(|_| Rrdb {
                    rdbs: [rdb(), rdb(), rdb()],
                })
                .collect(),
            conv_body: conv(f, f),
            conv_up1: conv(f, f),
            conv_up2: conv(f, f),
            conv_hr: conv(f, f),
            conv_last: conv(3, f),
            scale,
        }
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        self.conv_first.weight.device()
    }

    /// The receptive radius in input pixels: one per 3x3 conv at the trunk's resolution
    /// (`conv_first`, 15 per RRDB, `conv_body`) times the unshuffle factor, plus one for the
    /// four convs after the nearest upsamplings. A tile border this wide makes tiled output
    /// equal to untiled.
    pub fn receptive_radius(&self) -> usize {
        let unshuffle = 4 / self.scale;
        (2 + 15 * self.body.len()) * unshuffle + 1
    }

    /// `RRDBNet.forward`.
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` (H, W multiples of `4 / scale`) → `[B, 3, H·scale, W·scale]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let feat = match self.scale {
            2 => pixel_unshuffle(x, 2),
            1 => pixel_unshuffle(x, 4),
            _ => x,
        };
        let feat = self.conv_first.forward(feat);
        let mut trunk = feat.clone();
        for block in &self.body {
            trunk = block.forward(trunk);
        }
        let feat = feat + self.conv_body.forward(trunk);
        // upsample
        let feat = lrelu(self.conv_up1.forward(nearest2(feat)));
        let feat = lrelu(self.conv_up2.forward(nearest2(feat)));
        self.conv_last.forward(lrelu(self.conv_hr.forward(feat)))
    }
}

/// basicsr `pixel_unshuffle`: `[B, C, H·s, W·s]` → `[B, C·s², H, W]` (channel-major, then the
/// row offset, then the column offset, as `view(b, c, h, s, w, s).permute(0, 1, 3, 5, 2, 4)`).
pub fn pixel_unshuffle<B: Backend>(x: Tensor<B, 4>, s: usize) -> Tensor<B, 4> {
    let [b, c, hh, hw] = x.dims();
    let (h, w) = (hh / s, hw / s);
    x.reshape([b, c, h, s, w, s])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([b, c * s * s, h, w])
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`: `[B, C, H, W]` → `[B, C, 2H, 2W]`.
fn nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([b, c, h * 2, w * 2])
}
