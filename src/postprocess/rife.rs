//! RIFE frame interpolation: `IFNet` as in RIFE 4.22 lite (Practical-RIFE `IFNet_HDv3` v4.22.lite,
//! the model vLLM-Omni uses by default), 4.22, 4.25, 4.26 and 4.26 heavy, read from the `flownet.pkl` PyTorch
//! pickle users download through burn-store's PyTorch reader; the version is told apart by the
//! checkpoint's keys and shapes ([`IFNetVersion`]).
//!
//! Mirrors `vsrife` 5.7.0 `IFNet_HDv3_v4_22_lite.py`, `IFNet_HDv3_v4_22.py`, `IFNet_HDv3_v4_25.py`,
//! `IFNet_HDv3_v4_26.py` and `IFNet_HDv3_v4_26_heavy.py` (`Head`, `ResConv`, `IFBlock`, `IFNet`: the same code in all,
//! differing only in the Head's width and feature channels, the number of IFBlocks, their widths
//! and `scale_list`) and `warplayer.py` (`warp`: `grid_sample(bilinear, border,
//! align_corners=True)`), with the input preparation of vsrife's `rife()`: zero padding
//! right/bottom to a multiple of `max(modulo, modulo/scale)` (modulo 32 for 4.22 / 4.22 lite, 64
//! for 4.25 / 4.26 / 4.26 heavy), `tenFlow_div`, `backwarp_tenGrid`, Head features of both frames and a constant
//! timestep plane; the output is cropped back. The channel widths are read from the checkpoint, so
//! narrower test models load too (tests/rife.rs pins parity with vsrife's classes ≤ 1e-4 for every
//! version).
//!
//! Frames are produced as vLLM-Omni's `FrameInterpolator` does: `frame_interpolation_exp = n`
//! inserts `2^n − 1` frames between each pair by recursive t = 0.5 bisection, so `N` frames become
//! `(N − 1)·2^n + 1` ([`InterpolatingSink`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::module::{conv_transpose2d, conv2d, interpolate};
use burn::tensor::ops::{
    ConvOptions, ConvTransposeOptions, GridSampleOptions, GridSamplePaddingMode, InterpolateMode,
    InterpolateOptions,
};
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::generator::{FrameSink, VideoFrames};

/// The inference scales RIFE accepts (vsrife, Practical-RIFE).
pub const SCALES: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];

/// A `flownet.pkl` that cannot be used; names the file and, where one is at fault, the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RifeError {
    #[error("RIFE model {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("RIFE model {path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
}

/// The IFNet layouts omni reads (vsrife 5.7.0 file in brackets):
///
/// | version | IFBlocks | Head `cnn0..2` / features E | released block widths | padding modulo |
/// |---|---|---|---|---|
/// | 4.22 lite (`IFNet_HDv3_v4_22_lite.py`) | 4 | 16 / 4 | 192, 128, 64, 32 | 32 |
/// | 4.22 (`IFNet_HDv3_v4_22.py`) | 4 | 32 / 8 | 256, 192, 96, 48 | 32 |
/// | 4.25, 4.26 (`IFNet_HDv3_v4_25.py`, `_v4_26.py`) | 5 | 16 / 4 | 192, 128, 96, 64, 32 | 64 |
/// | 4.26 heavy (`IFNet_HDv3_v4_26_heavy.py`) | 5 | 16 / 16 | 192, 128, 96, 64, 32 | 64 |
///
/// [`IFNet::load`] tells them apart by the checkpoint: the number of `block{k}` IFBlocks and E,
/// the output channels of the Head's last layer (`encode.cnn3.weight` `[W, E, 4, 4]`, a
/// ConvTranspose2d). 4.25 and 4.26 are the same code (only the released weights differ), so they
/// are one layout; so is 4.25 heavy (`IFNet_HDv3_v4_25_heavy.py`: the 4.25 code at twice the
/// widths). `scale_list` is `2^(n−1−i)/scale` for IFBlock `i` of `n`. 4.25 lite (other
/// `scale_list` and padding, same keys) is refused by its released widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IFNetVersion {
    V4_22Lite,
    V4_22,
    /// 4.25 and 4.26 (and 4.25 heavy).
    V4_25,
    V4_26Heavy,
}

impl IFNetVersion {
    pub const ALL: [Self; 4] = [Self::V4_22Lite, Self::V4_22, Self::V4_25, Self::V4_26Heavy];

    /// Number of IFBlocks (`block0`…).
    pub fn blocks(self) -> usize {
        match self {
            Self::V4_22Lite | Self::V4_22 => 4,
            Self::V4_25 | Self::V4_26Heavy => 5,
        }
    }

    /// Feature channels E of the Head (vsrife `encode_channel`).
    pub fn encode_channels(self) -> usize {
        match self {
            Self::V4_22Lite | Self::V4_25 => 4,
            Self::V4_22 => 8,
            Self::V4_26Heavy => 16,
        }
    }

    /// vsrife `rife()`'s `modulo`: frames are padded to a multiple of `max(modulo, modulo/scale)`.
    pub fn modulo(self) -> usize {
        match self {
            Self::V4_22Lite | Self::V4_22 => 32,
            Self::V4_25 | Self::V4_26Heavy => 64,
        }
    }

    /// Width of the Head's `cnn0..cnn2` in the released model (and in every vsrife Head).
    pub fn head_width(self) -> usize {
        match self {
            Self::V4_22Lite | Self::V4_25 | Self::V4_26Heavy => 16,
            Self::V4_22 => 32,
        }
    }

    /// The IFBlock widths `c` of the released `flownet.pkl`.
    pub fn released_widths(self) -> &'static [usize] {
        match self {
            Self::V4_22Lite => &[192, 128, 64, 32],
            Self::V4_22 => &[256, 192, 96, 48],
            Self::V4_25 | Self::V4_26Heavy => &[192, 128, 96, 64, 32],
        }
    }
}

impl std::fmt::Display for IFNetVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4_22Lite => "4.22 lite",
            Self::V4_22 => "4.22",
            Self::V4_25 => "4.25/4.26",
            Self::V4_26Heavy => "4.26 heavy",
        })
    }
}

/// A Conv2d / ConvTranspose2d: `weight` as PyTorch stores it, `[out, in, k, k]` (transposed:
/// `[in, out, k, k]`), and `bias [out]`.
#[derive(Debug, Clone)]
struct Conv<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Conv<B> {
    fn forward(&self, x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
        conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            ConvOptions::new([stride, stride], [1, 1], [1, 1], 1),
        )
    }

    /// `ConvTranspose2d(k=4, stride=2, padding=1)`: doubles H and W.
    fn forward_transposed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv_transpose2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1),
        )
    }
}

fn lrelu<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    burn::tensor::activation::leaky_relu(x, 0.2)
}

/// vsrife `Head`: 4 feature channels at full resolution from a `[B, 3, H, W]` frame.
#[derive(Debug, Clone)]
struct Head<B: Backend> {
    cnn0: Conv<B>,
    cnn1: Conv<B>,
    cnn2: Conv<B>,
    cnn3: Conv<B>,
}

impl<B: Backend> Head<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = x.clamp(0.0, 1.0);
        let x = lrelu(self.cnn0.forward(x, 2));
        let x = lrelu(self.cnn1.forward(x, 1));
        let x = lrelu(self.cnn2.forward(x, 1));
        self.cnn3.forward_transposed(x)
    }
}

/// vsrife `IFBlock`.
#[derive(Debug, Clone)]
struct IFBlock<B: Backend> {
    conv0: [Conv<B>; 2],
    /// `ResConv`s: the conv and `beta [1, c, 1, 1]`.
    convblock: Vec<(Conv<B>, Tensor<B, 4>)>,
    lastconv: Conv<B>,
}

/// `F.interpolate(x, scale_factor=f, mode="bilinear")` (align_corners=False) for sizes that are
/// exact multiples (the padding guarantees it); identity at f = 1.
fn resize<B: Backend>(x: Tensor<B, 4>, f: f64) -> Tensor<B, 4> {
    if f == 1.0 {
        return x;
    }
    let [_, _, h, w] = x.dims();
    let size = [
        (h as f64 * f).floor() as usize,
        (w as f64 * f).floor() as usize,
    ];
    interpolate(
        x,
        size,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false),
    )
}

/// `nn.PixelShuffle(r)`: `[B, C·r², H, W]` → `[B, C, H·r, W·r]`.
fn pixel_shuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let c_out = c / (r * r);
    x.reshape([b, c_out, r, r, h, w])
        .permute([0, 1, 4, 2, 5, 3]) // [b, c, h, r, w, r]
        .reshape([b, c_out, h * r, w * r])
}

impl<B: Backend> IFBlock<B> {
    /// # Shapes
    /// `x: [B, C_in, H, W]`, `flow: [B, 4, H, W]` → (flow `[B, 4, H, W]`, mask `[B, 1, H, W]`,
    /// feat `[B, 8, H, W]`).
    fn forward(
        &self,
        x: Tensor<B, 4>,
        flow: Option<Tensor<B, 4>>,
        scale: f64,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let mut x = resize(x, 1.0 / scale);
        if let Some(flow) = flow {
            let flow = resize(flow, 1.0 / scale).div_scalar(scale);
            x = Tensor::cat(vec![x, flow], 1);
        }
        let mut feat = lrelu(self.conv0[0].forward(x, 2));
        feat = lrelu(self.conv0[1].forward(feat, 2));
        for (conv, beta) in &self.convblock {
            // ResConv: relu(conv(x) * beta + x)
            feat = lrelu(conv.forward(feat.clone(), 1) * beta.clone() + feat);
        }
        let tmp = pixel_shuffle(self.lastconv.forward_transposed(feat), 2);
        let tmp = resize(tmp, scale);
        let [b, c, h, w] = tmp.dims();
        let flow = tmp
            .clone()
            .slice([0..b, 0..4, 0..h, 0..w])
            .mul_scalar(scale);
        let mask = tmp.clone().slice([0..b, 4..5, 0..h, 0..w]);
        let feat = tmp.slice([0..b, 5..c, 0..h, 0..w]);
        (flow, mask, feat)
    }
}

/// RIFE `IFNet` (any [`IFNetVersion`]) with its feature `Head`, in f32 on `B`'s device.
#[derive(Debug, Clone)]
pub struct IFNet<B: Backend> {
    blocks: Vec<IFBlock<B>>,
    encode: Head<B>,
    version: IFNetVersion,
    device: B::Device,
}

/// `warp` of vsrife's warplayer: backward warp of `x` by `flow` (pixels).
fn warp<B: Backend>(
    x: Tensor<B, 4>,
    flow: Tensor<B, 4>,
    div: [f32; 2],
    grid: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, _, h, w] = flow.dims();
    let fx = flow
        .clone()
        .slice([0..b, 0..1, 0..h, 0..w])
        .div_scalar(div[0]);
    let fy = flow.slice([0..b, 1..2, 0..h, 0..w]).div_scalar(div[1]);
    let g = (grid.clone() + Tensor::cat(vec![fx, fy], 1)).permute([0, 2, 3, 1]);
    x.grid_sample_2d(
        g,
        GridSampleOptions {
            mode: InterpolateMode::Bilinear,
            padding_mode: GridSamplePaddingMode::Border,
            align_corners: true,
        },
    )
}

impl<B: Backend> IFNet<B> {
    /// Read a `flownet.pkl` (a PyTorch state dict; a `module.` prefix is removed) onto `device`;
    /// the version is detected from its keys and shapes ([`IFNetVersion`]).
    ///
    /// # Errors
    /// [`RifeError`]: unreadable pickle, no known layout (the numbers of IFBlocks and Head
    /// features found are named), a missing, unexpected or wrongly shaped tensor.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, RifeError> {
        let file_err = |message: String| RifeError::File {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(file_err("no such file".into()));
        }
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .map_err(|e| file_err(format!("not a PyTorch checkpoint: {e}")))?;
        let mut tensors: BTreeMap<String, TensorData> = BTreeMap::new();
        for (key, snap) in reader.into_tensors() {
            let data = snap.to_data().map_err(|e| RifeError::Tensor {
                path: path.to_path_buf(),
                tensor: key.clone(),
                message: format!("{e:?}"),
            })?;
            let name = key.strip_prefix("module.").unwrap_or(&key).to_string();
            tensors.insert(name, data.convert::<f32>());
        }
        let version = detect_version(&tensors).map_err(file_err)?;
        let mut w = Weights {
            path,
            version,
            tensors: &mut tensors,
        };
        let dev = (device, DType::F32);
        let (hw, e) = (w.dim("encode.cnn0.weight", 0)?, version.encode_channels());
        let encode = Head {
            cnn0: w.conv("encode.cnn0", [hw, 3, 3, 3], dev)?,
            cnn1: w.conv("encode.cnn1", [hw, hw, 3, 3], dev)?,
            cnn2: w.conv("encode.cnn2", [hw, hw, 3, 3], dev)?,
            cnn3: w.conv_transposed("encode.cnn3", [hw, e, 4, 4], dev)?,
        };
        let mut blocks = Vec::new();
        for k in 0..version.blocks() {
            let p = format!("block{k}");
            let in_planes = if k == 0 { 7 + 2 * e } else { 8 + 4 + 2 * e + 8 };
            let half = w.dim(&format!("{p}.conv0.0.0.weight"), 0)?;
            let c = 2 * half;
            let conv0 = [
                w.conv(&format!("{p}.conv0.0.0"), [half, in_planes, 3, 3], dev)?,
                w.conv(&format!("{p}.conv0.1.0"), [c, half, 3, 3], dev)?,
            ];
            let mut convblock = Vec::new();
            for i in 0..8 {
                let conv = w.conv(&format!("{p}.convblock.{i}.conv"), [c, c, 3, 3], dev)?;
                let beta = w.take(&format!("{p}.convblock.{i}.beta"), &[1, c, 1, 1])?;
                convblock.push((conv, Tensor::from_data(beta, dev)));
            }
            // ConvTranspose2d(c, 4 * 13, 4, 2, 1): flow 4, mask 1, feat 8 after PixelShuffle(2).
            let lastconv = w.conv_transposed(&format!("{p}.lastconv.0"), [c, 52, 4, 4], dev)?;
            blocks.push(IFBlock {
                conv0,
                convblock,
                lastconv,
            });
        }
        if let Some(name) = tensors.keys().next() {
            return Err(RifeError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                message: format!("unexpected in a RIFE {version} IFNet"),
            });
        }
        Ok(Self {
            blocks,
            encode,
            version,
            device: device.clone(),
        })
    }

    /// The layout this network was read as.
    pub fn version(&self) -> IFNetVersion {
        self.version
    }

    /// An IFNet of `version` at its released widths ([`IFNetVersion::released_widths`],
    /// [`IFNetVersion::head_width`]) with random weights (uniform ±1/√fan_in, beta 1): for
    /// benchmarks, where weights do not matter.
    pub fn random(version: IFNetVersion, device: &B::Device) -> Self {
        use burn::tensor::Distribution;
        let dev = (device, DType::F32);
        let conv = |o: usize, i: usize, k: usize, transposed: bool| {
            let bound = 1.0 / ((i * k * k) as f64).sqrt();
            let shape = if transposed {
                [i, o, k, k]
            } else {
                [o, i, k, k]
            };
            Conv {
                weight: Tensor::random(shape, Distribution::Uniform(-bound, bound), dev),
                bias: Tensor::random([o], Distribution::Uniform(-bound, bound), dev),
            }
        };
        let (hw, e) = (version.head_width(), version.encode_channels());
        let encode = Head {
            cnn0: conv(hw, 3, 3, false),
            cnn1: conv(hw, hw, 3, false),
            cnn2: conv(hw, hw, 3, false),
            cnn3: conv(e, hw, 4, true),
        };
        let blocks = version
            .released_widths()
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let inp = if k == 0 { 7 + 2 * e } else { 8 + 4 + 2 * e + 8 };
                IFBlock {
                    conv0: [conv(c / 2, inp, 3, false), conv(c, c / 2, 3, false)],
                    convblock: (0..8)
                        .map(|_| (conv(c, c, 3, false), Tensor::ones([1, c, 1, 1], dev)))
                        .collect(),
                    lastconv: Conv {
                        weight: conv(52, c, 4, true).weight,
                        bias: Tensor::zeros([52], dev),
                    },
                }
            })
            .collect();
        Self {
            blocks,
            encode,
            version,
            device: device.clone(),
        }
    }

    /// The frame at time `t` between `img0` and `img1` at inference scale `scale` (one of
    /// [`SCALES`]), as vsrife's `rife()` computes it.
    ///
    /// # Shapes
    /// `img0, img1: [B, 3, H, W]` in `[0, 1]` → `[B, 3, H, W]`.
    pub fn interpolate(
        &self,
        img0: Tensor<B, 4>,
        img1: Tensor<B, 4>,
        t: f32,
        scale: f64,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = img0.dims();
        let modulo = self.version.modulo();
        let m = modulo.max((modulo as f64 / scale) as usize);
        let (ph, pw) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
        let pad = |x: Tensor<B, 4>| {
            if (ph, pw) == (h, w) {
                return x;
            }
            Tensor::<B, 4>::zeros([b, c, ph, pw], (&self.device, DType::F32))
                .slice_assign([0..b, 0..c, 0..h, 0..w], x)
        };
        let (img0, img1) = (pad(img0), pad(img1));
        let div = [(pw as f32 - 1.0) / 2.0, (ph as f32 - 1.0) / 2.0];
        let grid = backwarp_grid::<B>(b, ph, pw, &self.device);
        let f0 = self.encode.forward(img0.clone());
        let f1 = self.encode.forward(img1.clone());
        let timestep = Tensor::<B, 4>::full([b, 1, ph, pw], t, (&self.device, DType::F32));
        let out = self.forward(img0, img1, timestep, div, &grid, f0, f1, scale);
        out.slice([0..b, 0..3, 0..h, 0..w])
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        img0: Tensor<B, 4>,
        img1: Tensor<B, 4>,
        timestep: Tensor<B, 4>,
        div: [f32; 2],
        grid: &Tensor<B, 4>,
        f0: Tensor<B, 4>,
        f1: Tensor<B, 4>,
        scale: f64,
    ) -> Tensor<B, 4> {
        let img0 = img0.clamp(0.0, 1.0);
        let img1 = img1.clamp(0.0, 1.0);
        let n = self.blocks.len();
        let scale_list: Vec<f64> = (0..n)
            .map(|i| (1usize << (n - 1 - i)) as f64 / scale)
            .collect();
        let (mut warped0, mut warped1) = (img0.clone(), img1.clone());
        let mut state: Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> = None; // flow, mask, feat
        for (i, block) in self.blocks.iter().enumerate() {
            let (flow, mask, feat) = match state {
                None => block.forward(
                    Tensor::cat(
                        vec![
                            img0.clone(),
                            img1.clone(),
                            f0.clone(),
                            f1.clone(),
                            timestep.clone(),
                        ],
                        1,
                    ),
                    None,
                    scale_list[i],
                ),
                Some((flow, mask, feat)) => {
                    let [b, _, h, w] = flow.dims();
                    let wf0 = warp(
                        f0.clone(),
                        flow.clone().slice([0..b, 0..2, 0..h, 0..w]),
                        div,
                        grid,
                    );
                    let wf1 = warp(
                        f1.clone(),
                        flow.clone().slice([0..b, 2..4, 0..h, 0..w]),
                        div,
                        grid,
                    );
                    let (fd, m0, feat) = block.forward(
                        Tensor::cat(
                            vec![
                                warped0.clone(),
                                warped1.clone(),
                                wf0,
                                wf1,
                                timestep.clone(),
                                mask,
                                feat,
                            ],
                            1,
                        ),
                        Some(flow.clone()),
                        scale_list[i],
                    );
                    (flow + fd, m0, feat)
                }
            };
            let [b, _, h, w] = flow.dims();
            warped0 = warp(
                img0.clone(),
                flow.clone().slice([0..b, 0..2, 0..h, 0..w]),
                div,
                grid,
            );
            warped1 = warp(
                img1.clone(),
                flow.clone().slice([0..b, 2..4, 0..h, 0..w]),
                div,
                grid,
            );
            state = Some((flow, mask, feat));
        }
        let mask = burn::tensor::activation::sigmoid(state.expect("at least one IFBlock").1);
        warped0 * mask.clone() + warped1 * (mask.neg().add_scalar(1.0))
    }
}

/// The [`IFNetVersion`] whose layout `tensors` (keys without `module.`) have: the number of
/// consecutive `block{k}.` prefixes and E of `encode.cnn3.weight` `[W, E, 4, 4]`.
fn detect_version(tensors: &BTreeMap<String, TensorData>) -> Result<IFNetVersion, String> {
    let has_block = |k: usize| {
        let p = format!("block{k}.");
        tensors.keys().any(|name| name.starts_with(&p))
    };
    let blocks = (0..).take_while(|&k| has_block(k)).count();
    let encode = tensors
        .get("encode.cnn3.weight")
        .filter(|d| d.shape.len() == 4)
        .map(|d| d.shape[1]);
    let known = "omni reads RIFE 4.22 lite (4 IFBlocks, Head features 4), 4.22 (4, 8), 4.25 and 4.26 (5, 4), 4.26 heavy (5, 16)";
    let Some(e) = encode else {
        return Err(format!(
            "no RIFE IFNet layout matches: no `encode.cnn3.weight` [W, E, 4, 4] (the Head of RIFE ≥ 4.21); {known}"
        ));
    };
    let version = IFNetVersion::ALL
        .into_iter()
        .find(|v| v.blocks() == blocks && v.encode_channels() == e)
        .ok_or_else(|| {
            format!("no RIFE IFNet layout matches: {blocks} IFBlocks, Head features {e}; {known}")
        })?;
    // 4.25 lite has the 4.25 keys but other padding and scale_list (vsrife `IFNet_HDv3_v4_25_lite.py`):
    // its released block4 is 24 wide where 4.25's is 32.
    let width = |k: usize| {
        tensors
            .get(&format!("block{k}.conv0.1.0.weight"))
            .map(|d| d.shape[0])
    };
    if version == IFNetVersion::V4_25 && width(0) == Some(192) && width(4) == Some(24) {
        return Err(format!(
            "RIFE 4.25 lite (block4 24 wide) is not supported; {known}"
        ));
    }
    Ok(version)
}

/// The tensors of a checkpoint, taken one by one (what is left over is unexpected).
struct Weights<'a> {
    path: &'a Path,
    version: IFNetVersion,
    tensors: &'a mut BTreeMap<String, TensorData>,
}

impl Weights<'_> {
    fn error(&self, name: &str, message: String) -> RifeError {
        RifeError::Tensor {
            path: self.path.to_path_buf(),
            tensor: name.to_string(),
            message,
        }
    }

    /// Dimension `i` of tensor `name` (left in place).
    fn dim(&self, name: &str, i: usize) -> Result<usize, RifeError> {
        match self.tensors.get(name) {
            Some(d) if d.shape.len() > i => Ok(d.shape[i]),
            Some(d) => Err(self.error(name, format!("unexpected shape {:?}", d.shape))),
            None => Err(self.error(
                name,
                format!("missing (from a RIFE {} IFNet)", self.version),
            )),
        }
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, RifeError> {
        let version = self.version;
        let data = self
            .tensors
            .remove(name)
            .ok_or_else(|| self.error(name, format!("missing (from a RIFE {version} IFNet)")))?;
        if data.shape.as_slice() != shape {
            return Err(self.error(
                name,
                format!(
                    "shape {:?}, expected {shape:?} in a RIFE {version} IFNet",
                    data.shape
                ),
            ));
        }
        Ok(data)
    }

    /// A Conv2d: `{prefix}.weight` `[out, in, k, k]` and `{prefix}.bias` `[out]`.
    fn conv<B: Backend>(
        &mut self,
        prefix: &str,
        shape: [usize; 4],
        dev: (&B::Device, DType),
    ) -> Result<Conv<B>, RifeError> {
        self.conv_with_bias(prefix, shape, shape[0], dev)
    }

    /// A ConvTranspose2d: `{prefix}.weight` `[in, out, k, k]` and `{prefix}.bias` `[out]`.
    fn conv_transposed<B: Backend>(
        &mut self,
        prefix: &str,
        shape: [usize; 4],
        dev: (&B::Device, DType),
    ) -> Result<Conv<B>, RifeError> {
        self.conv_with_bias(prefix, shape, shape[1], dev)
    }

    fn conv_with_bias<B: Backend>(
        &mut self,
        prefix: &str,
        shape: [usize; 4],
        out: usize,
        dev: (&B::Device, DType),
    ) -> Result<Conv<B>, RifeError> {
        let w = self.take(&format!("{prefix}.weight"), &shape)?;
        let b = self.take(&format!("{prefix}.bias"), &[out])?;
        Ok(Conv {
            weight: Tensor::from_data(w, dev),
            bias: Tensor::from_data(b, dev),
        })
    }
}

/// vsrife's `backwarp_tenGrid`: `[B, 2, H, W]` of x then y, each `linspace(-1, 1)`.
fn backwarp_grid<B: Backend>(b: usize, h: usize, w: usize, device: &B::Device) -> Tensor<B, 4> {
    let lin = |n: usize| -> Vec<f32> {
        // torch.linspace(-1, 1, n): start + i·step, the second half computed from the end.
        let step = 2.0f32 / (n.max(2) - 1) as f32;
        (0..n)
            .map(|i| {
                if i < n / 2 {
                    -1.0 + step * i as f32
                } else {
                    1.0 - step * (n - 1 - i) as f32
                }
            })
            .collect()
    };
    let (xs, ys) = (lin(w), lin(h));
    let mut data = Vec::with_capacity(2 * h * w);
    for _ in 0..h {
        data.extend_from_slice(&xs);
    }
    for y in &ys {
        data.extend(std::iter::repeat_n(*y, w));
    }
    Tensor::<B, 4>::from_data(TensorData::new(data, [1, 2, h, w]), (device, DType::F32))
        .repeat_dim(0, b)
}

/// A [`FrameSink`] that inserts `2^exp − 1` RIFE frames between every pair of frames it is given
/// (across chunk boundaries too: the last frame of a chunk is kept for the next), passing
/// `(N − 1)·2^exp + 1` frames on to `inner`, one delivery per incoming chunk.
pub struct InterpolatingSink<'a, B: Backend> {
    pub net: &'a IFNet<B>,
    pub exp: u32,
    pub scale: f64,
    pub inner: &'a mut dyn FrameSink,
    last: Option<Tensor<B, 4>>,
    /// Seconds spent in RIFE and frames made (for the bench / logs).
    pub seconds: f64,
    pub made: usize,
}

impl<'a, B: Backend> InterpolatingSink<'a, B> {
    pub fn new(net: &'a IFNet<B>, exp: u32, scale: f64, inner: &'a mut dyn FrameSink) -> Self {
        Self {
            net,
            exp,
            scale,
            inner,
            last: None,
            seconds: 0.0,
            made: 0,
        }
    }

    /// vLLM-Omni `make_inference`: `n` frames between `a` and `b` by t = 0.5 bisection, in order.
    fn between(
        &mut self,
        a: &Tensor<B, 4>,
        b: &Tensor<B, 4>,
        n: usize,
        out: &mut Vec<Tensor<B, 4>>,
    ) {
        let mid = self.net.interpolate(a.clone(), b.clone(), 0.5, self.scale);
        self.made += 1;
        if n == 1 {
            out.push(mid);
            return;
        }
        self.between(a, &mid, n / 2, out);
        out.push(mid.clone());
        self.between(&mid, b, n / 2, out);
    }
}

/// `[F, H, W, 3]` host frames ↔ `[1, 3, H, W]` device tensors.
fn frame_tensor<B: Backend>(v: &VideoFrames, i: usize, device: &B::Device) -> Tensor<B, 4> {
    let n = v.height * v.width * 3;
    let data = v.data[i * n..(i + 1) * n].to_vec();
    Tensor::<B, 3>::from_data(
        TensorData::new(data, [v.height, v.width, 3]),
        (device, DType::F32),
    )
    .permute([2, 0, 1])
    .unsqueeze::<4>()
}

fn host_frames<B: Backend>(frames: Vec<Tensor<B, 4>>, height: usize, width: usize) -> VideoFrames {
    let n = frames.len();
    let data: Vec<f32> = Tensor::cat(frames, 0)
        .clamp(0.0, 1.0)
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 frames");
    VideoFrames {
        data,
        frames: n,
        height,
        width,
    }
}

impl<B: Backend> FrameSink for InterpolatingSink<'_, B> {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        let started = std::time::Instant::now();
        let n_between = (1usize << self.exp) - 1;
        let device = self.net.device.clone();
        let mut out = Vec::new();
        for i in 0..frames.frames {
            let cur = frame_tensor::<B>(&frames, i, &device);
            if let Some(prev) = self.last.take()
                && n_between > 0
            {
                self.between(&prev, &cur, n_between.div_ceil(2), &mut out);
            }
            out.push(cur.clone());
            self.last = Some(cur);
        }
        let made = host_frames(out, frames.height, frames.width);
        self.seconds += started.elapsed().as_secs_f64();
        self.inner.push_frames(made)
    }
}
