//! Real-ESRGAN upscaling: the compact `SRVGGNetCompact` (`realesr-animevideov3`,
//! `realesr-general-x4v3`) read from its `.pth` through burn-store's PyTorch reader, and
//! RealESRGANer's tiling (tiles with a context border, hard paste) so memory is bounded at any
//! frame size.
//!
//! Mirrors `realesrgan` 0.3.0 `archs/srvgg_arch.py` `SRVGGNetCompact` (PReLU activations) and the
//! tile loop of `realesrgan/utils.py` `RealESRGANer.tile_process`. The number of body convs and the
//! upscale factor are read from the checkpoint (`body.{2k}` convs, `body.{2k+1}` PReLU slopes, the
//! last conv's `3·up²` outputs). tests/realesrgan.rs pins parity with the wheel's class ≤ 1e-4 and
//! tiled = untiled ≤ 1e-4. Not yet wired into requests (RRDBNet and the `enable_upscale` fields
//! are open).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

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
        let mut state = read_state(path)?;
        if state.contains_key("conv_first.weight") {
            return Err(err(
                "an RRDBNet (RealESRGAN_x4plus/x2plus) checkpoint; only SRVGGNetCompact is supported so far".into(),
            ));
        }
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
        let [b, c, h, w] = x.dims();
        if tile == 0 || (tile >= h && tile >= w) {
            return self.forward(x);
        }
        let u = self.upscale;
        let mut out = Tensor::<B, 4>::zeros([b, c, h * u, w * u], (&x.device(), DType::F32));
        for y0 in (0..h).step_by(tile) {
            for x0 in (0..w).step_by(tile) {
                let (y1, x1) = ((y0 + tile).min(h), (x0 + tile).min(w));
                let (py0, px0) = (y0.saturating_sub(tile_pad), x0.saturating_sub(tile_pad));
                let (py1, px1) = ((y1 + tile_pad).min(h), (x1 + tile_pad).min(w));
                let piece = self.forward(x.clone().slice([0..b, 0..c, py0..py1, px0..px1]));
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
}
