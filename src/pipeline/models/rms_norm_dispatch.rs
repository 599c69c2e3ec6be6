//! The VAE's channel RMS norm (diffusers `autoencoder_kl_wan.py`, `WanRMS_norm`:
//! `F.normalize(x, dim=1) · √C · gamma`), optionally followed by the `SiLU` every use of it in
//! a residual block and in the decoder's output head applies, as one fused pass on the CPU
//! backend.
//!
//! burn-flex runs element-wise ops and reductions on one thread; the norm as burn ops is six of
//! them (square, sum over channels, sqrt, clamp, divide, two multiplies) plus SiLU's two, each a
//! full pass over a `[C, T, H, W]` activation, which made the VAE decode mostly single-threaded
//! (cpu/wall 1.3 on 2 cores). [`rms_norm_channels`] splits the pixels into chunks, one rayon
//! task each: a task sums the squares over the channels for its pixels, then writes every
//! channel's `x / max(‖x‖₂, 1e-12) · √C · gamma_c` (and SiLU) — the same operations in the same
//! order per element as the burn ops, the sum over channels in channel order.
//!
//! Other backends or dtypes: the burn ops ([`rms_norm_channels_ops`]).

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, flex_map, par_filled};
use crate::pipeline::models::attention_dispatch::exp_nonpositive;

/// Pixels per rayon task: the task's `[C, PIXELS]` block (384 KiB at 96 channels) stays in the
/// core's L2 cache between the sum of squares and the write.
const PIXELS: usize = 1024;

/// `F.normalize(x, dim=1) · √C · gamma`, then `silu` when `with_silu` (`nn.SiLU()` after
/// `WanRMS_norm`).
///
/// # Shapes
/// `x: [N, C, …]` (any rank ≥ 2), `gamma`: `C` values (`[C, 1, …]` in the checkpoint) → the
/// shape and dtype of `x`.
pub fn rms_norm_channels<B: Backend, const X: usize, const G: usize>(
    x: Tensor<B, X>,
    gamma: Tensor<B, G>,
    with_silu: bool,
) -> Tensor<B, X> {
    let fused = match (
        x.dtype() == DType::F32 && gamma.dtype() == DType::F32,
        as_flex(&gamma),
    ) {
        (true, Some(g)) => flex_map(x, |x| rms_norm_channels_f32(&x, &g, with_silu)),
        _ => Err(x),
    };
    fused.unwrap_or_else(|x| rms_norm_channels_ops(x, gamma, with_silu))
}

/// The same as burn ops: the reference arithmetic op for op (f16/bf16 inputs normalised in f32,
/// as diffusers' `x.float()` for half dtypes), and the path of every backend but the CPU one.
///
/// # Shapes
/// As [`rms_norm_channels`].
pub fn rms_norm_channels_ops<B: Backend, const X: usize, const G: usize>(
    x: Tensor<B, X>,
    gamma: Tensor<B, G>,
    with_silu: bool,
) -> Tensor<B, X> {
    let dims = x.dims();
    let (n, channels) = (dims[0], dims[1]);
    let pixels: usize = dims[2..].iter().product();
    let rows = n * channels;
    let dtype = x.dtype();
    // `F.normalize(x.float() if needs_fp32_normalize else x, dim=1).to(x.dtype)`
    let xf = if matches!(dtype, DType::F16 | DType::BF16) {
        x.cast(DType::F32)
    } else {
        x
    }
    .reshape([n, channels, pixels]);
    // F.normalize: x / max(‖x‖₂, eps), eps = 1e-12.
    let norm = xf.clone().square().sum_dim(1).sqrt().clamp_min(1e-12); // [N, 1, P]
    let normalized = if n == 1 {
        xf.reshape([channels, pixels]) / norm.reshape([1, pixels])
    } else {
        (xf / norm.repeat_dim(1, channels)).reshape([rows, pixels])
    }
    .cast(dtype);
    // `normalized * self.scale * self.gamma + self.bias` (bias = 0.0)
    let gamma = gamma.reshape([1, channels]).repeat_dim(0, n);
    let y =
        (normalized.mul_scalar((channels as f64).sqrt()) * gamma.reshape([rows, 1])).reshape(dims);
    if with_silu { silu(y) } else { y }
}

/// The fused kernel (module docs) on f32 burn-flex tensors of any layout; the result is
/// contiguous.
///
/// # Shapes
/// `x: [N, C, …]`, `gamma`: `C` elements → the shape of `x`.
///
/// # Panics
/// If `gamma` does not hold `C` elements.
pub fn rms_norm_channels_f32(x: &FlexTensor, gamma: &FlexTensor, with_silu: bool) -> FlexTensor {
    let x = x.to_contiguous();
    let gamma = gamma.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, channels) = (shape[0], shape[1]);
    let pixels: usize = shape.iter().skip(2).product();
    let values = gamma.layout().shape().num_elements();
    assert_eq!(
        values, channels,
        "WanRMS_norm: gamma of {values} values for {channels} channels"
    );
    let gamma: &[f32] = &gamma.storage()[gamma.layout().start_offset()..][..channels];
    let scale = (channels as f64).sqrt() as f32;
    let input: &[f32] = &x.storage()[x.layout().start_offset()..][..n * channels * pixels];
    let mut out = par_filled(input.len(), 0.0);
    if !input.is_empty() {
        // Tasks: (batch element, chunk of pixels). Each writes `C` disjoint row pieces of `out`,
        // which rayon cannot split for us: raw pointers, disjoint by construction.
        let chunks = pixels.div_ceil(PIXELS);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..n * chunks).into_par_iter().for_each(|task| {
            let (b, chunk) = (task / chunks, task % chunks);
            let p0 = chunk * PIXELS;
            let len = PIXELS.min(pixels - p0);
            let base = b * channels * pixels + p0;
            // SAFETY: task (b, chunk) writes only `out[base + c·pixels ..][..len]` for c in
            // 0..channels; no two tasks share a (b, pixel) pair, and `out` outlives the loop.
            let rows = (0..channels).map(|c| unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(base + c * pixels), len)
            });
            norm_chunk(input, base, pixels, len, gamma, scale, with_silu, rows);
        });
    }
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// A raw output pointer the rayon tasks share (each writes its own disjoint pieces).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes (see `rms_norm_channels_f32`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One task: the pixels `base..base + len` of every channel (channel stride `pixels`).
#[allow(clippy::too_many_arguments)]
fn norm_chunk<'a>(
    input: &[f32],
    base: usize,
    pixels: usize,
    len: usize,
    gamma: &[f32],
    scale: f32,
    with_silu: bool,
    rows: impl Iterator<Item = &'a mut [f32]>,
) {
    let mut denom = [0.0f32; PIXELS];
    let denom = &mut denom[..len];
    for c in 0..gamma.len() {
        let row = &input[base + c * pixels..][..len];
        add_squares(denom, row);
    }
    for d in denom.iter_mut() {
        // ‖x‖₂ clamped at F.normalize's eps.
        *d = d.sqrt().max(1e-12);
    }
    for ((c, out), &g) in rows.enumerate().zip(gamma) {
        let row = &input[base + c * pixels..][..len];
        write_row(out, row, denom, scale, g, with_silu);
    }
}

/// `acc += row²`, built for AVX-512 / AVX2 when the CPU has them (no FMA contraction: the
/// square is rounded before the add, as `square()` then `sum` rounds it).
fn add_squares(acc: &mut [f32], row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { add_squares_avx512(acc, row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { add_squares_avx2(acc, row) };
        }
    }
    add_squares_generic(acc, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_squares_avx512(acc: &mut [f32], row: &[f32]) {
    add_squares_generic(acc, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_squares_avx2(acc: &mut [f32], row: &[f32]) {
    add_squares_generic(acc, row)
}

#[inline(always)]
fn add_squares_generic(acc: &mut [f32], row: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(row) {
        *a += x * x;
    }
}

/// `out = silu?(x / denom · scale · g)`, vectorised as [`add_squares`].
fn write_row(out: &mut [f32], row: &[f32], denom: &[f32], scale: f32, g: f32, with_silu: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { write_row_avx512(out, row, denom, scale, g, with_silu) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { write_row_avx2(out, row, denom, scale, g, with_silu) };
        }
    }
    write_row_generic(out, row, denom, scale, g, with_silu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_row_avx512(
    out: &mut [f32],
    row: &[f32],
    denom: &[f32],
    scale: f32,
    g: f32,
    with_silu: bool,
) {
    write_row_generic(out, row, denom, scale, g, with_silu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_row_avx2(
    out: &mut [f32],
    row: &[f32],
    denom: &[f32],
    scale: f32,
    g: f32,
    with_silu: bool,
) {
    write_row_generic(out, row, denom, scale, g, with_silu)
}

#[inline(always)]
fn write_row_generic(
    out: &mut [f32],
    row: &[f32],
    denom: &[f32],
    scale: f32,
    g: f32,
    with_silu: bool,
) {
    let rows = out.iter_mut().zip(row).zip(denom);
    if with_silu {
        for ((o, &x), &d) in rows {
            *o = silu_f32(x / d * scale * g);
        }
    } else {
        for ((o, &x), &d) in rows {
            *o = x / d * scale * g;
        }
    }
}

/// `y · sigmoid(y)` with `e = exp(−|y|)` ([`exp_nonpositive`], 2 ulp) so no exponent
/// overflows: `y / (1 + e)` for `y ≥ 0`, `y · e / (1 + e)` below; branch-free so it vectorises.
#[inline(always)]
pub(crate) fn silu_f32(y: f32) -> f32 {
    let e = exp_nonpositive(-y.abs());
    let num = if y >= 0.0 { y } else { y * e };
    num / (1.0 + e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuBackend;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
    }

    /// The fused kernel equals the burn ops within 1e-6 (relative) for video (`[N, C, T, H,
    /// W]`) and per-frame (`[N·T, C, H, W]`) inputs, batches of 1 and 3, one pixel chunk and
    /// several with a partial last one, with and without SiLU, and strided (permuted) input.
    #[test]
    fn fused_norm_equals_the_burn_ops() {
        let cases: [(&[usize], bool); 4] = [
            (&[1, 8, 2, 24, 40], true),
            (&[3, 5, 1, 7, 9], false),
            (&[1, 96, 1, 3, 5], true),
            (&[2, 4, 3, 33, 65], true),
        ];
        for (shape, with_silu) in cases {
            let x: Tensor<B, 5> = random([shape[0], shape[1], shape[2], shape[3], shape[4]]);
            let gamma: Tensor<B, 4> = random([shape[1], 1, 1, 1]);
            let expected = rms_norm_channels_ops(x.clone(), gamma.clone(), with_silu);
            let got = rms_norm_channels(x.clone(), gamma.clone(), with_silu);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(1e-6, 1e-6));
            // A permuted (strided) view gives the same values as its contiguous copy.
            let xt = x.clone().swap_dims(3, 4);
            let expected = rms_norm_channels_ops(xt.clone(), gamma.clone(), with_silu);
            rms_norm_channels(xt, gamma.clone(), with_silu)
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(1e-6, 1e-6));
        }
        // Rank 4 with a rank-3 gamma (the attention block's `images=True` norm).
        let x: Tensor<B, 4> = random([2, 6, 5, 7]);
        let gamma: Tensor<B, 3> = random([6, 1, 1]);
        let expected = rms_norm_channels_ops(x.clone(), gamma.clone(), false);
        rms_norm_channels(x, gamma, false)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(1e-6, 1e-6));
    }

    /// An all-zero pixel is 0 after the norm (the 1e-12 clamp), not NaN.
    #[test]
    fn zero_pixels_stay_zero() {
        let x: Tensor<B, 5> = Tensor::zeros([1, 4, 1, 2, 3], &Default::default());
        let gamma: Tensor<B, 4> = random([4, 1, 1, 1]);
        let got = rms_norm_channels(x, gamma, true).into_data();
        assert!(got.iter::<f32>().all(|v| v == 0.0), "{got:?}");
    }

    /// SiLU within 5e-7 (relative) of `y / (1 + exp(−y))` in f64 over [-80, 80], and the
    /// limits far out.
    #[test]
    fn silu_is_accurate() {
        let mut y = -80.0f32;
        while y < 80.0 {
            let want = (y as f64) / (1.0 + (-(y as f64)).exp());
            let got = silu_f32(y) as f64;
            assert!(
                (got - want).abs() <= 5e-7 * want.abs().max(1e-30),
                "silu({y}) = {got}, want {want}"
            );
            y += 0.0123;
        }
        assert_eq!(silu_f32(200.0), 200.0);
        assert!(silu_f32(-200.0).abs() < 1e-30);
    }
}
