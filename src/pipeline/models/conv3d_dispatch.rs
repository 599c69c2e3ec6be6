//! `F.conv3d` as the VAE calls it (`WanCausalConv3d`: groups 1, dilation 1, zero padding), with
//! a faster kernel on the CPU backend.
//!
//! burn-flex's `conv3d` builds im2col tiles (512 output positions × `C_in·k_t·k_h·k_w`) and runs
//! one gemm per tile. [`conv3d`] instead zero-pads the input once and runs one gemm per kernel
//! tap on a shifted view of it, the "shifted matrix" form of a convolution: output positions are
//! numbered in the padded grid (`t·H_p·W_p + h·W_p + w`), so the input a tap needs is the padded
//! buffer read from the tap's offset `a·H_p·W_p + b·W_p + c` with the same strides — no im2col
//! copy. The `W_p − W_out` (and `H_p − H_out`) extra columns per row are computed and dropped
//! (3 % more work at 160 wide). The output positions are split in chunks of whole padded rows,
//! one rayon task each, and every task accumulates all taps into its chunk while it is in cache
//! (single-threaded gemm calls, burn-flex's gemm crate).
//!
//! Other backends, other dtypes than f32, strides other than 1, groups or dilation: burn's
//! [`burn::tensor::module::conv3d`] unchanged. Both compute the same sums in another order.

use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, flex_map, from_flex, par_filled};
use crate::pipeline::models::linear_dispatch::linear_f32;

/// Output positions (padded grid) per task, rounded to whole padded rows: the task's output
/// `[C_out, chunk]` (1.5 MiB at 384 channels) stays in the core's L2 cache across the taps.
const CHUNK_POSITIONS: usize = 1024;
/// With few output channels, more positions per task, up to a task output `[C_out, chunk]` of
/// this many f32 (1 MiB): per-call overheads of gemm dominate thin products.
const CHUNK_FLOATS: usize = 1 << 18;
/// Output rows per rayon task of the final crop (whatever the channel count: the decoder's
/// last conv has 3 output channels).
const CROP_ROWS: usize = 16;

/// `F.conv3d(x, weight, bias, stride, padding, dilation, groups)`: [`conv3d_shifted_f32`] on the
/// CPU backend for f32 with stride 1, dilation 1 and groups 1, else
/// [`burn::tensor::module::conv3d`]. Same signature as the latter.
///
/// # Shapes
/// `x: [N, C_in, T, H, W]`, `weight: [C_out, C_in, k_t, k_h, k_w]`, `bias: [C_out]` →
/// `[N, C_out, T + 2p_t − k_t + 1, H + 2p_h − k_h + 1, W + 2p_w − k_w + 1]`
///
/// # Panics
/// As burn's `conv3d`: shapes that disagree.
pub fn conv3d<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<3>,
) -> Tensor<B, 5> {
    let plain = options.stride == [1, 1, 1] && options.dilation == [1, 1, 1] && options.groups == 1;
    let f32s = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let [_, c_in, ..] = x.dims();
    let [_, w_in, ..] = weight.dims();
    let fused = match (plain && f32s && c_in == w_in, as_flex(&weight)) {
        (true, Some(w)) => {
            let b = bias.as_ref().and_then(as_flex);
            let padding = options.padding;
            flex_map(x, |x| conv3d_shifted_f32(&x, &w, b.as_ref(), padding))
        }
        _ => Err(x),
    };
    fused.unwrap_or_else(|x| burn::tensor::module::conv3d(x, weight, bias, options))
}

/// What a [`conv3d_fused`] call adds around the plain conv: causal zero frames and cached
/// history frames in front of the input, nearest-neighbour upsampling, and a residual added
/// to the output.
pub struct ConvExtras<B: Backend> {
    /// Zero frames in front of everything (`F.pad` of the causal time padding).
    pub zeros: usize,
    /// Frames between the zeros and the input (a `WanCausalConv3d` cache).
    pub history: Option<Tensor<B, 5>>,
    /// Spatial nearest-neighbour factor applied to the frames before the conv (1: none).
    pub upsample: usize,
    /// Added to the conv's output (`[N, C_out, T_o, H_o, W_o]`).
    pub residual: Option<Tensor<B, 5>>,
}

impl<B: Backend> Default for ConvExtras<B> {
    fn default() -> Self {
        Self {
            zeros: 0,
            history: None,
            upsample: 1,
            residual: None,
        }
    }
}

/// Whether [`conv3d_fused`] takes the fused CPU kernel for an input like `x` (the CPU backend
/// and f32), so callers can keep a backend's own layout elsewhere.
pub fn fused_conv_applies<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == DType::F32 && as_flex(x).is_some()
}

/// `conv3d(upsample(cat([zeros, history, x], 2)), weight, bias, padding) + residual` with stride
/// 1, dilation 1 and groups 1: on the CPU backend in f32 one [`conv3d_fused_f32`] that builds
/// the padded input from its pieces (no `cat`, upsampled or contiguous copies, which burn-flex
/// makes on one thread) and adds the residual while it crops; elsewhere the same as burn ops.
///
/// # Shapes
/// `x: [N, C_in, T, H, W]`, `history: [N, C_in, T_h, H, W]`, `weight: [C_out, C_in, k_t, k_h,
/// k_w]`, `bias: [C_out]`; the conv's input is `[N, C_in, zeros + T_h + T, u·H, u·W]` and the
/// output (and `residual`) `[N, C_out, T_o, H_o, W_o]` as [`conv3d`].
///
/// # Panics
/// As [`conv3d`]: shapes that disagree.
pub fn conv3d_fused<B: Backend>(
    x: Tensor<B, 5>,
    extras: ConvExtras<B>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    padding: [usize; 3],
) -> Tensor<B, 5> {
    let f32s = [
        Some(&x),
        extras.history.as_ref(),
        extras.residual.as_ref(),
        Some(&weight),
    ]
    .into_iter()
    .flatten()
    .all(|t| t.dtype() == DType::F32)
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let flex = |t: &Option<Tensor<B, 5>>| t.as_ref().map(as_flex);
    let pieces = (
        f32s,
        as_flex(&weight),
        flex(&extras.history),
        flex(&extras.residual),
    );
    let fused = match pieces {
        (true, Some(w), h, r) if h.as_ref().is_none_or(Option::is_some) => {
            let (h, r) = (h.flatten(), r.flatten());
            let b = bias.as_ref().and_then(as_flex);
            flex_map(x, |x| {
                let input = ConvInput {
                    zeros: extras.zeros,
                    parts: h.iter().chain([&x]).collect(),
                    upsample: extras.upsample,
                };
                conv3d_fused_f32(&input, &w, b.as_ref(), padding, r.as_ref())
            })
        }
        _ => Err(x),
    };
    match fused {
        Ok(y) => y,
        Err(x) => conv3d_fused_ops(x, extras, weight, bias, padding),
    }
}

/// [`conv3d_fused`] as burn ops (`cat`, `expand`, [`burn::tensor::module::conv3d`], `+`): the
/// path of every backend but the CPU one.
///
/// # Shapes
/// As [`conv3d_fused`].
pub fn conv3d_fused_ops<B: Backend>(
    x: Tensor<B, 5>,
    extras: ConvExtras<B>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    padding: [usize; 3],
) -> Tensor<B, 5> {
    let ConvExtras {
        zeros,
        history,
        upsample,
        residual,
    } = extras;
    let mut parts = Vec::with_capacity(3);
    if zeros > 0 {
        let [n, c, _, h, w] = x.dims();
        parts.push(Tensor::zeros([n, c, zeros, h, w], (&x.device(), x.dtype())));
    }
    parts.extend(history);
    parts.push(x);
    let x = Tensor::cat(parts, 2);
    let x = if upsample > 1 {
        let [n, c, t, h, w] = x.dims();
        let x: Tensor<B, 7> = x.reshape([n, c, t, h, 1, w, 1]);
        x.expand([n, c, t, h, upsample, w, upsample])
            .reshape([n, c, t, h * upsample, w * upsample])
    } else {
        x
    };
    let options = ConvOptions::new([1, 1, 1], padding, [1, 1, 1], 1);
    let y = burn::tensor::module::conv3d(x, weight, bias, options);
    match residual {
        Some(r) => y + r,
        None => y,
    }
}

/// The DiTs' patch embedding, diffusers' `self.patch_embedding(x).flatten(2).transpose(1, 2)`
/// (`HeliosTransformer3DModel`, `WanTransformer3DModel` and Helios's history `patch_short` /
/// `patch_mid` / `patch_long`): a `Conv3d` whose stride equals its kernel, without padding.
///
/// On the CPU backend in f32 the patches are gathered into `[B·S, C_in·k_t·k_h·k_w]` rows by
/// the pool and multiplied by the flattened weight ([`linear_f32`]); burn-flex's conv3d ran
/// these on one thread. Any other layer, backend or dtype: the layer's `forward`, flattened.
///
/// # Shapes
/// `x: [B, C_in, T, H, W]` → tokens `[B, T'·H'·W', C_out]` in `(t, h, w)` order and the grid
/// `[T', H', W']` (`T' = ⌊T / k_t⌋` etc.).
pub fn patch_embed<B: Backend>(layer: &Conv3d<B>, x: Tensor<B, 5>) -> (Tensor<B, 3>, [usize; 3]) {
    let k = layer.kernel_size;
    let [n, c_in, t, h, w] = x.dims();
    let grid = [t / k[0], h / k[1], w / k[2]];
    let plain = layer.stride == k
        && layer.padding == PaddingConfig3d::Valid
        && layer.dilation == [1, 1, 1]
        && layer.groups == 1
        && grid.iter().all(|&g| g > 0);
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let f32s =
        weight.dtype() == DType::F32 && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if plain && f32s && fused_conv_applies(&x) {
        let (xf, wf) = (as_flex(&x), as_flex(&weight));
        if let (Some(xf), Some(wf)) = (xf, wf) {
            let bf = bias.as_ref().and_then(as_flex);
            let patch = c_in * k[0] * k[1] * k[2];
            let tokens = grid.iter().product::<usize>();
            let cols = gather_patches_f32(&xf, k, grid);
            let c_out = wf.layout().shape()[0];
            let wt = wf
                .to_contiguous()
                .reshape(Shape::from(vec![c_out, patch]))
                .transpose(0, 1);
            let out =
                linear_f32(&cols, &wt, bf.as_ref()).reshape(Shape::from(vec![n, tokens, c_out]));
            if let Some(out) = from_flex(out) {
                return (out, grid);
            }
        }
    }
    let y = layer.forward(x);
    let [_, _, tp, hp, wp] = y.dims();
    (y.flatten::<3>(2, 4).swap_dims(1, 2), [tp, hp, wp])
}

/// The patches of `x` as rows: row `(b, t', h', w')` holds `x[b, :, t'·k_t.., h'·k_h.., w'·k_w..]`
/// in the order of the weight's `[C_in, k_t, k_h, k_w]` flattening. Rows are written by the
/// pool, one task per `(b, t', h')` line of patches.
///
/// # Shapes
/// `x: [B, C_in, T, H, W]` (any strides) → `[B·T'·H'·W', C_in·k_t·k_h·k_w]`, contiguous.
fn gather_patches_f32(x: &FlexTensor, k: [usize; 3], grid: [usize; 3]) -> FlexTensor {
    let xs = x.layout().shape();
    let (n, c_in) = (xs[0], xs[1]);
    let [gt, gh, gw] = grid;
    let patch = c_in * k[0] * k[1] * k[2];
    let src = Strided::new(x);
    let mut cols = par_filled(n * gt * gh * gw * patch, 0.0);
    if !cols.is_empty() {
        cols.par_chunks_mut(gw * patch)
            .enumerate()
            .for_each(|(line, dst)| {
                let (b, th) = (line / (gt * gh), line % (gt * gh));
                let (tp, hp) = (th / gh, th % gh);
                let mut i = 0;
                for ci in 0..c_in {
                    for a in 0..k[0] {
                        for bb in 0..k[1] {
                            let from = src.row(b, ci, tp * k[0] + a, hp * k[1] + bb);
                            for wp in 0..gw {
                                let row = &mut dst[wp * patch + i..][..k[2]];
                                for (cc, v) in row.iter_mut().enumerate() {
                                    *v = src.at(from, wp * k[2] + cc);
                                }
                            }
                            i += k[2];
                        }
                    }
                }
            });
    }
    FlexTensor::from_data(TensorData::new(cols, [n * gt * gh * gw, patch]))
}

/// The shifted-gemm conv3d (module docs) on contiguous-or-not f32 burn-flex tensors.
///
/// # Shapes
/// As [`conv3d`] with stride 1; the result is contiguous.
pub fn conv3d_shifted_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    padding: [usize; 3],
) -> FlexTensor {
    let input = ConvInput {
        zeros: 0,
        parts: vec![x],
        upsample: 1,
    };
    conv3d_fused_f32(&input, weight, bias, padding, None)
}

/// What [`conv3d_fused_f32`] convolves, assembled while it pads (no `cat`, no upsampled copy,
/// no contiguous copy of a permuted view): `zeros` zero frames, then the frames of every part
/// in order, every pixel repeated `upsample × upsample` (`nn.Upsample(scale_factor=upsample,
/// mode="nearest-exact")` for integer factors).
///
/// # Shapes
/// Each part `[N, C_in, T_i, H, W]` (any strides, the same N, C_in, H, W); the whole is
/// `[N, C_in, zeros + ΣT_i, upsample·H, upsample·W]`.
pub struct ConvInput<'a> {
    /// Zero frames in front (the causal padding of history not yet seen).
    pub zeros: usize,
    /// Frames, concatenated along time.
    pub parts: Vec<&'a FlexTensor>,
    /// Nearest-neighbour spatial upsampling factor (1: none).
    pub upsample: usize,
}

/// The f32 storage of a burn-flex tensor with its start offset and strides, for strided reads.
struct Strided<'a> {
    data: &'a [f32],
    start: usize,
    strides: [isize; 5],
}

impl<'a> Strided<'a> {
    fn new(t: &'a FlexTensor) -> Self {
        let s = t.layout().strides();
        Self {
            data: t.storage(),
            start: t.layout().start_offset(),
            strides: [s[0], s[1], s[2], s[3], s[4]],
        }
    }

    /// Offset of element `[n, c, t, h, 0]`.
    fn row(&self, n: usize, c: usize, t: usize, h: usize) -> usize {
        let s = &self.strides;
        (self.start as isize
            + n as isize * s[0]
            + c as isize * s[1]
            + t as isize * s[2]
            + h as isize * s[3]) as usize
    }

    /// Element `w` of the row starting at `at`.
    fn at(&self, at: usize, w: usize) -> f32 {
        self.data[(at as isize + w as isize * self.strides[4]) as usize]
    }
}

/// The shifted-gemm conv (module docs) of `input` (zero frames, concatenated parts, nearest
/// upsampling), plus `residual` when given: `conv3d(cat([zeros, *parts], 2) upsampled, weight,
/// bias, padding) + residual`, the residual added after the bias as the reference adds it to
/// the conv's output. Stride 1, dilation 1, groups 1.
///
/// # Shapes
/// `input` as [`ConvInput`] (`[N, C_in, T, H·u, W·u]`), `weight: [C_out, C_in, k_t, k_h, k_w]`,
/// `bias: [C_out]`, `residual` and the result `[N, C_out, T_o, H_o, W_o]` (as [`conv3d`]); the
/// result is contiguous.
///
/// # Panics
/// Parts that disagree in N, C_in, H or W, a weight whose `C_in` differs, a kernel larger than
/// the padded input, or a residual of another shape.
pub fn conv3d_fused_f32(
    input: &ConvInput<'_>,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    [p_t, p_h, p_w]: [usize; 3],
    residual: Option<&FlexTensor>,
) -> FlexTensor {
    let first = input.parts.first().expect("conv3d: no input frames");
    let xs = first.layout().shape();
    let (n, c_in, h, w) = (xs[0], xs[1], xs[3], xs[4]);
    for part in &input.parts {
        let ps = part.layout().shape();
        assert!(
            ps.num_dims() == 5 && ps[0] == n && ps[1] == c_in && ps[3] == h && ps[4] == w,
            "conv3d: input parts {:?} and {:?} disagree",
            xs.to_vec(),
            ps.to_vec()
        );
    }
    let u = input.upsample.max(1);
    let t = input.zeros
        + input
            .parts
            .iter()
            .map(|p| p.layout().shape()[2])
            .sum::<usize>();
    let weight = weight.to_contiguous();
    let ws = weight.layout().shape();
    assert_eq!(
        ws[1],
        c_in,
        "conv3d: weight {:?} for {c_in} input channels",
        ws.to_vec()
    );
    let (c_out, k_t, k_h, k_w) = (ws[0], ws[2], ws[3], ws[4]);
    let (t_p, h_p, w_p) = (t + 2 * p_t, u * h + 2 * p_h, u * w + 2 * p_w);
    assert!(
        t_p >= k_t && h_p >= k_h && w_p >= k_w,
        "conv3d: kernel {:?} larger than the padded input {:?}",
        [k_t, k_h, k_w],
        [t_p, h_p, w_p]
    );
    let (t_o, h_o, w_o) = (t_p - k_t + 1, h_p - k_h + 1, w_p - k_w + 1);
    if let Some(r) = residual {
        assert_eq!(
            r.layout().shape().to_vec(),
            vec![n, c_out, t_o, h_o, w_o],
            "conv3d: residual of another shape than the output"
        );
    }
    let plane = h_p * w_p;
    // One padded channel, plus the slack the last rows' taps read past its end.
    let channel = t_p * plane + (k_h - 1) * w_p + (k_w - 1);
    let taps = k_t * k_h * k_w;
    let rows = t_o * h_p; // padded output rows (those with h >= h_o are dropped)
    // Padded rows per task: CHUNK_POSITIONS positions (more for few channels), or fewer so that small inputs still make
    // four tasks per thread (the pool would otherwise idle behind one long task).
    let row_chunk = (CHUNK_POSITIONS.max(CHUNK_FLOATS / c_out.max(1)) / w_p)
        .min(rows.div_ceil(4 * rayon::current_num_threads()))
        .max(1);
    let chunk = row_chunk * w_p;
    let parts: Vec<(Strided<'_>, usize)> = input
        .parts
        .iter()
        .map(|p| (Strided::new(p), p.layout().shape()[2]))
        .collect();
    let residual = residual.map(Strided::new);
    // The weight as [C_out, taps, C_in]: a tap's [C_out, C_in] matrix has contiguous rows, so
    // gemm packs it with sequential reads, where the [C_out, C_in, taps] layout had it gather
    // every element from its own cache line, once per tap and chunk.
    let w_taps: Vec<f32> = {
        let w_data: &[f32] = weight.storage();
        let mut w_taps = vec![0.0f32; c_out * c_in * taps];
        w_taps
            .par_chunks_mut(taps * c_in)
            .zip(w_data.par_chunks(c_in * taps))
            .for_each(|(dst, src)| {
                for (ci, ks) in src.chunks_exact(taps).enumerate() {
                    for (tap, &x) in ks.iter().enumerate() {
                        dst[tap * c_in + ci] = x;
                    }
                }
            });
        w_taps
    };
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_contiguous().storage::<f32>().to_vec());
    let mut out = par_filled(n * c_out * t_o * h_o * w_o, 0.0);
    let mut padded = par_filled(c_in * channel, 0.0);
    for (b, ob) in out.chunks_exact_mut(c_out * t_o * h_o * w_o).enumerate() {
        // 1. Zero-padded (and upsampled) copy of this batch element: [C_in, channel]. The
        //    zero frames and the padding are never written, so they stay zero.
        padded
            .par_chunks_mut(channel)
            .enumerate()
            .for_each(|(ci, dst)| {
                let mut frame = p_t + input.zeros;
                for (src, frames) in &parts {
                    for ti in 0..*frames {
                        for hi in 0..h {
                            let from = src.row(b, ci, ti, hi);
                            let at = frame * plane + (u * hi + p_h) * w_p + p_w;
                            let row = &mut dst[at..at + u * w];
                            if u == 1 && src.strides[4] == 1 {
                                row.copy_from_slice(&src.data[from..from + w]);
                            } else {
                                for (wi, px) in row.chunks_exact_mut(u).enumerate() {
                                    px.fill(src.at(from, wi));
                                }
                            }
                            for dy in 1..u {
                                dst.copy_within(at..at + u * w, at + dy * w_p);
                            }
                        }
                        frame += 1;
                    }
                }
            });
        // 2. Per chunk of padded output rows: Σ_taps W_tap · shifted input.
        let chunks: Vec<Vec<f32>> = (0..rows.div_ceil(row_chunk))
            .into_par_iter()
            .map(|i| {
                let p0 = i * chunk;
                let cols = chunk.min(rows * w_p - p0);
                let mut acc = vec![0.0f32; c_out * cols];
                for (tap, (a, bb, c)) in (0..k_t)
                    .flat_map(|a| (0..k_h).flat_map(move |b| (0..k_w).map(move |c| (a, b, c))))
                    .enumerate()
                {
                    let offset = p0 + a * plane + bb * w_p + c;
                    // SAFETY: lhs is weight[:, :, a, b, c] inside `w_taps` (row stride
                    // taps·C_in, column stride 1); rhs is `padded[:, offset..
                    // offset + cols]` with the channel stride, and offset + cols − 1 ≤
                    // (t_o − 1 + a)·plane + (h_p − 1 + b)·w_p + w_p − 1 + c < channel since a ≤
                    // k_t − 1 etc.; dst is this task's own [c_out, cols].
                    unsafe {
                        gemm::gemm(
                            c_out,
                            cols,
                            c_in,
                            acc.as_mut_ptr(),
                            1,
                            cols as isize,
                            tap > 0,
                            w_taps.as_ptr().add(tap * c_in),
                            1,
                            (taps * c_in) as isize,
                            padded.as_ptr().add(offset),
                            1,
                            channel as isize,
                            1.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                acc
            })
            .collect();
        // 3. Crop the padded grid to [C_out, t_o, h_o, w_o], adding the bias (and then the
        //    residual).
        ob.par_chunks_mut(CROP_ROWS * w_o)
            .enumerate()
            .for_each(|(task, dst)| {
                for (r, row) in dst.chunks_exact_mut(w_o).enumerate() {
                    let r = task * CROP_ROWS + r;
                    let (co, r) = (r / (t_o * h_o), r % (t_o * h_o));
                    let add = bias.as_ref().map_or(0.0, |b| b[co]);
                    let (ti, hi) = (r / h_o, r % h_o);
                    let padded_row = ti * h_p + hi;
                    let (ci, within) = (padded_row / row_chunk, padded_row % row_chunk);
                    let acc = &chunks[ci];
                    let cols = acc.len() / c_out;
                    let src = &acc[co * cols + within * w_p..][..w_o];
                    for (d, s) in row.iter_mut().zip(src) {
                        *d = s + add;
                    }
                    if let Some(res) = &residual {
                        let from = res.row(b, co, ti, hi);
                        if res.strides[4] == 1 {
                            for (d, r) in row.iter_mut().zip(&res.data[from..from + w_o]) {
                                *d += r;
                            }
                        } else {
                            for (wi, d) in row.iter_mut().enumerate() {
                                *d += res.at(from, wi);
                            }
                        }
                    }
                }
            });
    }
    FlexTensor::from_data(TensorData::new(out, [n, c_out, t_o, h_o, w_o]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuBackend;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Equal to burn's im2col conv3d for the VAE's kernels and paddings (3×3×3 with spatial
    /// padding, the causal time padding done outside, 3×1×1 time convs, 1×1×1 shortcuts), odd
    /// sizes, several chunks, a batch of 2, with and without bias (sums of up to 135 products of
    /// N(0, 1) values, up to ~40: a few f32 roundings apart in another order).
    #[test]
    fn shifted_conv3d_matches_burn_conv3d() {
        // (input shape, weight shape, padding, with bias)
        type Case = ([usize; 5], [usize; 5], [usize; 3], bool);
        let cases: [Case; 5] = [
            ([1, 5, 3, 7, 9], [4, 5, 3, 3, 3], [0, 1, 1], true),
            ([2, 3, 4, 40, 70], [6, 3, 3, 3, 3], [0, 1, 1], true),
            ([1, 4, 5, 6, 5], [3, 4, 3, 1, 1], [0, 0, 0], true),
            ([1, 4, 2, 5, 6], [7, 4, 1, 1, 1], [0, 0, 0], false),
            ([1, 2, 2, 4, 4], [3, 2, 3, 3, 3], [1, 1, 1], true),
        ];
        for (xs, ws, padding, with_bias) in cases {
            let (x, w) = (random(xs), random(ws));
            let b = with_bias.then(|| random([ws[0]]));
            let options = ConvOptions::new([1, 1, 1], padding, [1, 1, 1], 1);
            let expected =
                burn::tensor::module::conv3d(x.clone(), w.clone(), b.clone(), options.clone());
            let got = conv3d(x, w, b, options);
            assert_eq!(got.dims(), expected.dims(), "{xs:?} * {ws:?}");
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(2e-6, 2e-5));
        }
    }

    /// The fused conv (zero frames, history frames, a permuted input, nearest 2× upsampling, a
    /// residual, several batch elements) equals the same built from burn ops.
    #[test]
    fn fused_conv3d_matches_the_burn_ops() {
        // (x, history frames, zeros, weight, padding, upsample, residual)
        type Case = (
            [usize; 5],
            usize,
            usize,
            [usize; 5],
            [usize; 3],
            usize,
            bool,
        );
        let cases: [Case; 5] = [
            ([1, 4, 1, 6, 10], 2, 0, [5, 4, 3, 3, 3], [0, 1, 1], 1, true),
            ([2, 3, 4, 5, 7], 1, 1, [2, 3, 3, 3, 3], [0, 1, 1], 1, false),
            ([1, 6, 2, 5, 9], 0, 2, [6, 6, 3, 3, 3], [0, 1, 1], 1, true),
            ([1, 4, 2, 5, 8], 0, 0, [3, 4, 1, 3, 3], [0, 1, 1], 2, false),
            ([2, 2, 3, 4, 3], 0, 0, [4, 2, 1, 1, 1], [0, 0, 0], 1, true),
        ];
        for (xs, frames, zeros, ws, padding, upsample, with_residual) in cases {
            // A permuted view, as the decoder hands over after its time upsampling.
            let x: Tensor<B, 5> = random([xs[0], xs[1], xs[2], xs[4], xs[3]]).swap_dims(3, 4);
            let history = (frames > 0).then(|| random([xs[0], xs[1], frames, xs[3], xs[4]]));
            let (w, b) = (random(ws), random([ws[0]]));
            let t_o = zeros + frames + xs[2] + 2 * padding[0] - ws[2] + 1;
            let h_o = upsample * xs[3] + 2 * padding[1] - ws[3] + 1;
            let w_o = upsample * xs[4] + 2 * padding[2] - ws[4] + 1;
            let residual = with_residual.then(|| random([xs[0], ws[0], t_o, h_o, w_o]));
            let extras = || ConvExtras {
                zeros,
                history: history.clone(),
                upsample,
                residual: residual.clone(),
            };
            let expected =
                conv3d_fused_ops(x.clone(), extras(), w.clone(), Some(b.clone()), padding);
            let got = conv3d_fused(x, extras(), w, Some(b), padding);
            assert_eq!(got.dims(), [xs[0], ws[0], t_o, h_o, w_o], "{xs:?} * {ws:?}");
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(2e-6, 2e-5));
        }
    }

    /// The patch embedding (gathered patches times the flattened weight) equals the layer's
    /// conv flattened to tokens, for the DiT's (1, 2, 2) and the history's (2, 4, 4) kernels,
    /// with and without bias, on a strided input.
    #[test]
    fn patch_embedding_matches_the_conv_layer() {
        use burn::nn::conv::Conv3dConfig;
        let device = Default::default();
        for (kernel, bias) in [([1, 2, 2], true), ([2, 4, 4], false)] {
            let layer = Conv3dConfig::new([5, 12], kernel)
                .with_stride(kernel)
                .with_bias(bias)
                .init::<B>(&device);
            let x: Tensor<B, 5> = random([2, 5, 4, 10, 8]).swap_dims(3, 4);
            let y = layer.forward(x.clone());
            let [_, _, t, h, w] = y.dims();
            let expected = y.flatten::<3>(2, 4).swap_dims(1, 2);
            let (got, grid) = patch_embed(&layer, x);
            assert_eq!(grid, [t, h, w]);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(2e-6, 2e-5));
        }
    }

    /// Strided convs (the encoder's `downsample3d` `time_conv`) go to burn's kernel.
    #[test]
    fn strided_conv3d_falls_back_to_burn() {
        let (x, w) = (random([1, 2, 5, 3, 3]), random([2, 2, 3, 1, 1]));
        let options = ConvOptions::new([2, 1, 1], [0, 0, 0], [1, 1, 1], 1);
        let expected =
            burn::tensor::module::conv3d(x.clone(), w.clone(), None, options.clone()).into_data();
        conv3d(x, w, None, options)
            .into_data()
            .assert_eq(&expected, true);
    }
}
