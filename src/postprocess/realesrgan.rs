//! Real-ESRGAN upscaling: the compact `SRVGGNetCompact` (`realesr-animevideov3`,
//! `realesr-general-x4v3`) read from its `.pth` through burn-store's PyTorch reader, and
//! RealESRGANer's tiling (tiles with a context border, hard paste) so memory is bounded at any
//! frame size.
//!
//! Mirrors `realesrgan` 0.3.0 `archs/srvgg_arch.py` `SRVGGNetCompact` (PReLU activations) and the
//! tile loop of `realesrgan/utils.py` `RealESRGANer.tile_process`. The number of body convs and the
//! upscale factor are read from the checkpoint (`body.{2k}` convs, `body.{2k+1}` PReLU slopes, the
//! last conv's `3·up²` outputs). tests/realesrgan.rs pins parity with the wheel's class ≤ 1e-4 and
//! tiled = untiled ≤ 1e-4. [`Upscaler`] picks SRVGGNetCompact or [`RRDBNet`] from the keys;
//! [`UpscalingSink`] applies it to a request's frames (`enable_upscale`, `upscale_factor`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use super::rrdbnet::RRDBNet;
use crate::pipeline::generator::{FrameSink, VideoFrames};

/// A `.pth` that cannot be used; names the file and, where one is at fault, the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpscaleError {
    #[error("Real-ESRGAN model {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One body conv: `weight [out, in, 3, 3]`, `bias [out]`, and the PReLU slope `[1, out, 1, 1]`
/// that follows it (none after the last conv).
type BodyConv<B> = (Tensor<B, 4>, Tensor<B, 1>, Option<Tensor<B, 4>>);

/// `SRVGGNetCompact` with PReLU, in f32.
#[derive(Debug, Clone)]
pub struct SRVGGNetCompact<B: Backend> {
    /// `(weight [out, in, 3, 3], bias [out], PReLU slope [1, out, 1, 1] or None for the last)`.
    body: Vec<BodyConv<B>>,
    /// The upscale factor (4 for the released compact models).
    pub upscale: usize,
}

fn read_state(path: &Path) -> Result<BTreeMap<String, TensorData>, UpscaleError> {
    use burn_store::pytorch::PytorchReader;
    let err = |message: String| UpscaleError::File {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    // RealESRGANer: `params_ema` if present, else `params`; ai-forever's files: the bare dict.
    let reader = PytorchReader::with_top_level_key(path, "params_ema")
        .or_else(|_| PytorchReader::with_top_level_key(path, "params"))
        .or_else(|_| PytorchReader::new(path))
        .map_err(|e| err(format!("not a PyTorch checkpoint: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, snap) in reader.into_tensors() {
        let data = snap
            .to_data()
            .map_err(|e| err(format!("tensor `{k}`: {e:?}")))?;
        out.insert(k, data.convert::<f32>());
    }
    Ok(out)
}

impl<B: Backend> SRVGGNetCompact<B> {
    /// Read a compact Real-ESRGAN `.pth` onto `device`.
    ///
    /// # Errors
    /// [`UpscaleError`]: unreadable, not an SRVGGNetCompact (e.g. an RRDBNet `conv_first`), a
    /// gap in `body.*`, an output width that is not `3·up²`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, UpscaleError> {
        let err = |message: String| UpscaleError::File {
            path: path.to_path_buf(),
            message,
        };
        let state = read_state(path)?;
        if state.contains_key("conv_first.weight") {
            return Err(err(
                "an RRDBNet (RealESRGAN_x4plus/x2plus) checkpoint, not an SRVGGNetCompact (`Upscaler::load` reads either)".into(),
            ));
        }
        Self::from_state(path, state, device)
    }

    /// Build from a state dict already read.
    fn from_state(
        path: &Path,
        mut state: BTreeMap<String, TensorData>,
        device: &B::Device,
    ) -> Result<Self, UpscaleError> {
        let err = |message: String| UpscaleError::File {
            path: path.to_path_buf(),
            message,
        };
        let dev = (device, DType::F32);
        let mut body = Vec::new();
        let mut i = 0;
        while let Some(w) = state.remove(&format!("body.{i}.weight")) {
            let b = state
                .remove(&format!("body.{i}.bias"))
                .ok_or_else(|| err(format!("missing tensor `body.{i}.bias`")))?;
            if w.shape.len() != 4 {
                return Err(err(format!(
                    "`body.{i}.weight` is not a conv: {:?}",
                    w.shape
                )));
            }
            let out_ch = w.shape[0];
            let slope = state
                .remove(&format!("body.{}.weight", i + 1))
                .map(|a| Tensor::<B, 1>::from_data(a, dev).reshape([1, out_ch, 1, 1]));
            let last = slope.is_none();
            body.push((Tensor::from_data(w, dev), Tensor::from_data(b, dev), slope));
            i += 2;
            if last {
                break;
            }
        }
        if let Some(k) = state.keys().next() {
            return Err(err(format!(
                "unexpected tensor `{k}` (not an SRVGGNetCompact)"
            )));
        }
        let Some((w, _, _)) = body.last() else {
            return Err(err("no `body.0.weight`: not an SRVGGNetCompact".into()));
        };
        let out = w.dims()[0];
        let upscale = (1..=8)
            .find(|u| 3 * u * u == out)
            .ok_or_else(|| err(format!("the last conv has {out} outputs, not 3·up²")))?;
        Ok(Self { body, upscale })
    }

    /// A compact model with `num_feat` features, `num_conv` body convs, x`upscale`, random
    /// weights (uniform ±1/√fan_in, slopes 0.25): for benchmarks, where weights do not matter
    /// (`realesr-animevideov3`: 64, 16, 4; `realesr-general-x4v3`: 64, 32, 4).
    pub fn random(num_feat: usize, num_conv: usize, upscale: usize, device: &B::Device) -> Self {
        use burn::tensor::Distribution;
        let dev = (device, DType::F32);
        let conv = |o: usize, i: usize| {
            let bound = 1.0 / ((i * 9) as f64).sqrt();
            (
                Tensor::random([o, i, 3, 3], Distribution::Uniform(-bound, bound), dev),
                Tensor::random([o], Distribution::Uniform(-bound, bound), dev),
            )
        };
        let slope = || Some(Tensor::full([1, num_feat, 1, 1], 0.25, dev));
        let mut body = Vec::new();
        let (w, b) = conv(num_feat, 3);
        body.push((w, b, slope()));
        for _ in 0..num_conv {
            let (w, b) = conv(num_feat, num_feat);
            body.push((w, b, slope()));
        }
        let (w, b) = conv(3 * upscale * upscale, num_feat);
        body.push((w, b, None));
        Self { body, upscale }
    }

    /// The receptive radius in input pixels (one per 3x3 conv): a tile border at least this wide
    /// makes tiled output equal to untiled.
    pub fn receptive_radius(&self) -> usize {
        self.body.len()
    }

    /// `SRVGGNetCompact.forward`.
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` → `[B, 3, H·up, W·up]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut out = x.clone();
        for (w, b, slope) in &self.body {
            out = conv2d(
                out,
                w.clone(),
                Some(b.clone()),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
            if let Some(a) = slope {
                // PReLU: max(0, x) + a·min(0, x)
                out = out.clone().clamp_min(0.0) + out.clamp_max(0.0) * a.clone();
            }
        }
        let u = self.upscale;
        let [bsz, c, h, w] = out.dims();
        let c_out = c / (u * u);
        // PixelShuffle(u)
        let out = out
            .reshape([bsz, c_out, u, u, h, w])
            .permute([0, 1, 4, 2, 5, 3])
            .reshape([bsz, c_out, h * u, w * u]);
        // + F.interpolate(x, scale_factor=u, mode="nearest")
        let [_, cx, hx, wx] = x.dims();
        let base = x
            .reshape([bsz, cx, hx, 1, wx, 1])
            .repeat_dim(3, u)
            .repeat_dim(5, u)
            .reshape([bsz, cx, hx * u, wx * u]);
        out + base
    }

    /// RealESRGANer's tiled forward: `tile`-sized cores, each run with up to `tile_pad` input
    /// pixels of context on every side (clipped at the image border) and its core pasted into the
    /// output. `tile = 0` runs the whole frame at once.
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` → `[B, 3, H·up, W·up]`.
    pub fn forward_tiled(&self, x: Tensor<B, 4>, tile: usize, tile_pad: usize) -> Tensor<B, 4> {
        tile_process(x, self.upscale, tile, tile_pad, |t| self.forward(t))
    }
}

/// RealESRGANer `tile_process`: `forward` (a x`u` network) run on `tile`-sized cores, each with
/// up to `tile_pad` input pixels of context on every side (clipped at the image border), the
/// cores pasted into the output. `tile = 0` runs the whole frame at once.
///
/// # Shapes
/// `x: [B, 3, H, W]` → `[B, 3, H·u, W·u]`.
pub fn tile_process<B: Backend>(
    x: Tensor<B, 4>,
    u: usize,
    tile: usize,
    tile_pad: usize,
    forward: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    if tile == 0 || (tile >= h && tile >= w) {
        return forward(x);
    }
    let mut out = Tensor::<B, 4>::zeros([b, c, h * u, w * u], (&x.device(), DType::F32));
    for y0 in (0..h).step_by(tile) {
        for x0 in (0..w).step_by(tile) {
            let (y1, x1) = ((y0 + tile).min(h), (x0 + tile).min(w));
            let (py0, px0) = (y0.saturating_sub(tile_pad), x0.saturating_sub(tile_pad));
            let (py1, px1) = ((y1 + tile_pad).min(h), (x1 + tile_pad).min(w));
            let piece = forward(x.clone().slice([0..b, 0..c, py0..py1, px0..px1]));
            let core = piece.slice([
                0..b,
                0..c,
                (y0 - py0) * u..(y1 - py0) * u,
                (x0 - px0) * u..(x1 - px0) * u,
            ]);
            out = out.slice_assign([0..b, 0..c, y0 * u..y1 * u, x0 * u..x1 * u], core);
        }
    }
    out
}

/// A Real-ESRGAN network of either architecture, told apart by the checkpoint's keys
/// (`conv_first.*` → [`RRDBNet`], `body.0.*` only → [`SRVGGNetCompact`]), as RealESRGANer is
/// handed the right class for each model name.
#[derive(Debug, Clone)]
pub enum Upscaler<B: Backend> {
    /// `realesr-animevideov3`, `realesr-general-x4v3`.
    Compact(SRVGGNetCompact<B>),
    /// `RealESRGAN_x4plus`, `RealESRGAN_x2plus`.
    Rrdb(RRDBNet<B>),
}

/// Input pixels of a tile's core for [`Upscaler::upscale_frame`] (RealESRGANer's `--tile`; the
/// realesrgan inference script's examples use 200..400).
pub const TILE: usize = 256;
/// The most context a tile is given on each side: the full receptive radius of the compact
/// models (18 for `realesr-general-x4v3`: tiled = untiled), 32 pixels for RRDBNet, whose radius
/// (≈ 350) exceeds a Helios frame (RealESRGANer's default `tile_pad` is 10).
pub const MAX_TILE_PAD: usize = 32;

/// The native scale of a Real-ESRGAN `.pth` from its tensor shapes only (no weights are read):
/// RRDBNet by `conv_first`'s input channels, SRVGGNetCompact by its last conv's `3·up²` outputs.
///
/// # Errors
/// [`UpscaleError`]: unreadable or neither architecture.
pub fn native_scale(path: &Path) -> Result<usize, UpscaleError> {
    let err = |message: String| UpscaleError::File {
        path: path.to_path_buf(),
        message,
    };
    let shapes = read_shapes(path)?;
    if let Some(shape) = shapes.get("conv_first.weight") {
        return shape
            .get(1)
            .and_then(|&c| crate::postprocess::rrdbnet::scale_of_conv_first(c))
            .ok_or_else(|| err(format!("`conv_first.weight` {shape:?} is not an RRDBNet's")));
    }
    let last = (0..)
        .step_by(2)
        .take_while(|i| shapes.contains_key(&format!("body.{i}.weight")))
        .last()
        .ok_or_else(|| {
            err("neither an RRDBNet (`conv_first`) nor an SRVGGNetCompact (`body.0`)".into())
        })?;
    let out = shapes[&format!("body.{last}.weight")][0];
    (1..=8)
        .find(|u| 3 * u * u == out)
        .ok_or_else(|| err(format!("the last conv has {out} outputs, not 3·up²")))
}

fn read_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, UpscaleError> {
    use burn_store::pytorch::PytorchReader;
    if !path.is_file() {
        return Err(UpscaleError::File {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    let reader = PytorchReader::with_top_level_key(path, "params_ema")
        .or_else(|_| PytorchReader::with_top_level_key(path, "params"))
        .or_else(|_| PytorchReader::new(path))
        .map_err(|e| UpscaleError::File {
            path: path.to_path_buf(),
            message: format!("not a PyTorch checkpoint: {e}"),
        })?;
    Ok(reader
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.to_vec()))
        .collect())
}

impl<B: Backend> Upscaler<B> {
    /// Read a Real-ESRGAN `.pth` (`params_ema`, else `params`, else the bare dict) onto `device`,
    /// picking the architecture from its keys.
    ///
    /// # Errors
    /// [`UpscaleError`] naming the file and, where one is at fault, the tensor.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, UpscaleError> {
        let state = read_state(path)?;
        if state.contains_key("conv_first.weight") {
            RRDBNet::from_state(path, state, device).map(Self::Rrdb)
        } else {
            SRVGGNetCompact::from_state(path, state, device).map(Self::Compact)
        }
    }

    /// The network's own factor.
    pub fn scale(&self) -> usize {
        match self {
            Self::Compact(n) => n.upscale,
            Self::Rrdb(n) => n.scale,
        }
    }

    /// The receptive radius in input pixels.
    pub fn receptive_radius(&self) -> usize {
        match self {
            Self::Compact(n) => n.receptive_radius(),
            Self::Rrdb(n) => n.receptive_radius(),
        }
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        match self {
            Self::Compact(n) => n.body[0].0.device(),
            Self::Rrdb(n) => n.device(),
        }
    }

    /// The untiled forward.
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` → `[B, 3, H·scale, W·scale]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Compact(n) => n.forward(x),
            Self::Rrdb(n) => n.forward(x),
        }
    }

    /// [`tile_process`] over this network.
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` → `[B, 3, H·scale, W·scale]`.
    /// RRDBNet x2 / x1 pixel-unshuffles its input, so `tile` and `tile_pad` are rounded up to
    /// multiples of 2 / 4 (every tile then starts on the unshuffle grid).
    pub fn forward_tiled(&self, x: Tensor<B, 4>, tile: usize, tile_pad: usize) -> Tensor<B, 4> {
        let grid = match self {
            Self::Compact(_) => 1,
            Self::Rrdb(n) => 4 / n.scale,
        };
        let (tile, tile_pad) = (tile.next_multiple_of(grid), tile_pad.next_multiple_of(grid));
        tile_process(x, self.scale(), tile, tile_pad, |t| self.forward(t))
    }

    /// One request's upscale of RGB frames in `[0, 1]` to `factor` (2 or 4): tiles of [`TILE`]
    /// with `min(receptive radius, MAX_TILE_PAD)` of context, the result clamped to `[0, 1]`.
    /// `factor` is the network's scale, or half of it: a x4 network's output is then averaged
    /// over 2x2 pixel blocks (a box-filter downscale; RealESRGANer's `outscale` resizes with
    /// Lanczos instead).
    ///
    /// # Shapes
    /// `x: [B, 3, H, W]` → `[B, 3, H·factor, W·factor]`.
    ///
    /// # Panics
    /// If `factor` is neither the scale nor half of it (checked at admission by
    /// [`check_factor`]).
    pub fn upscale_frames(&self, x: Tensor<B, 4>, factor: usize) -> Tensor<B, 4> {
        let pad = self.receptive_radius().min(MAX_TILE_PAD);
        let out = self.forward_tiled(x, TILE, pad);
        let out = match self.scale() / factor {
            1 => out,
            2 => burn::tensor::module::avg_pool2d(out, [2, 2], [2, 2], [0, 0], true, false),
            _ => panic!("factor {factor} for a x{} network", self.scale()),
        };
        out.clamp(0.0, 1.0)
    }
}

/// Whether a network of scale `native` can make `factor`: the same, or a x4 network for x2.
///
/// # Errors
/// A message for `upscale_factor`.
pub fn check_factor(native: usize, factor: usize) -> Result<(), String> {
    if factor == native || (native == 4 && factor == 2) {
        return Ok(());
    }
    Err(format!(
        "{factor} cannot be made by this x{native} Real-ESRGAN model (its own scale, or 2 from a x4 model)"
    ))
}

/// A [`FrameSink`] that upscales every frame it is given with an [`Upscaler`] (one frame at a
/// time, so memory stays per tile) and passes them on to `inner`, one delivery per incoming
/// chunk.
pub struct UpscalingSink<'a, B: Backend> {
    pub net: &'a Upscaler<B>,
    /// 2 or 4 (see [`Upscaler::upscale_frames`]).
    pub factor: usize,
    pub inner: &'a mut dyn FrameSink,
    /// Seconds spent upscaling (for the bench / logs).
    pub seconds: f64,
}

impl<'a, B: Backend> UpscalingSink<'a, B> {
    pub fn new(net: &'a Upscaler<B>, factor: usize, inner: &'a mut dyn FrameSink) -> Self {
        Self {
            net,
            factor,
            inner,
            seconds: 0.0,
        }
    }
}

impl<B: Backend> FrameSink for UpscalingSink<'_, B> {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        let started = std::time::Instant::now();
        let device = self.net.device();
        let (h, w, f) = (frames.height, frames.width, self.factor);
        let plane = h * w * 3;
        let mut data = Vec::with_capacity(frames.frames * plane * f * f);
        for i in 0..frames.frames {
            let x = Tensor::<B, 3>::from_data(
                TensorData::new(frames.data[i * plane..(i + 1) * plane].to_vec(), [h, w, 3]),
                (&device, DType::F32),
            )
            .permute([2, 0, 1])
            .unsqueeze::<4>();
            let y = self.net.upscale_frames(x, f);
            let y: Vec<f32> = y
                .squeeze::<3>()
                .permute([1, 2, 0])
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 frames");
            data.extend(y);
        }
        self.seconds += started.elapsed().as_secs_f64();
        self.inner.push_frames(VideoFrames {
            data,
            frames: frames.frames,
            height: h * f,
            width: w * f,
        })
    }
}
