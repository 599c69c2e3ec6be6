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

use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, flex_map};

/// Output positions (padded grid) per task, rounded to whole padded rows: the task's output
/// `[C_out, chunk]` (1.5 MiB at 384 channels) stays in the core's L2 cache across the taps.
const CHUNK_POSITIONS: usize = 1024;

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

/// The shifted-gemm conv3d (module docs) on contiguous-or-not f32 burn-flex tensors.
///
/// # Shapes
/// As [`conv3d`] with stride 1; the result is contiguous.
pub fn conv3d_shifted_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    [p_t, p_h, p_w]: [usize; 3],
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let xs = x.layout().shape();
    let (n, c_in, t, h, w) = (xs[0], xs[1], xs[2], xs[3], xs[4]);
    let ws = weight.layout().shape();
    let (c_out, k_t, k_h, k_w) = (ws[0], ws[2], ws[3], ws[4]);
    let (t_p, h_p, w_p) = (t + 2 * p_t, h + 2 * p_h, w + 2 * p_w);
    assert!(
        t_p >= k_t && h_p >= k_h && w_p >= k_w,
        "conv3d: kernel {:?} larger than the padded input {:?}",
        [k_t, k_h, k_w],
        [t_p, h_p, w_p]
    );
    let (t_o, h_o, w_o) = (t_p - k_t + 1, h_p - k_h + 1, w_p - k_w + 1);
    let plane = h_p * w_p;
    // One padded channel, plus the slack the last rows' taps read past its end.
    let channel = t_p * plane + (k_h - 1) * w_p + (k_w - 1);
    let taps = k_t * k_h * k_w;
    let row_chunk = (CHUNK_POSITIONS / w_p).max(1); // padded rows per task
    let chunk = row_chunk * w_p;
    let rows = t_o * h_p; // padded output rows (those with h >= h_o are dropped)
    let x_data: &[f32] = x.storage();
    let w_data: &[f32] = weight.storage();
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_contiguous().storage::<f32>().to_vec());
    let mut out = vec![0.0f32; n * c_out * t_o * h_o * w_o];
    let mut padded = vec![0.0f32; c_in * channel];
    for (xb, ob) in x_data
        .chunks_exact(c_in * t * h * w)
        .zip(out.chunks_exact_mut(c_out * t_o * h_o * w_o))
    {
        // 1. Zero-padded copy of this batch element: [C_in, channel].
        padded
            .par_chunks_mut(channel)
            .zip(xb.par_chunks(t * h * w))
            .for_each(|(dst, src)| {
                for (ti, frame) in src.chunks_exact(h * w).enumerate() {
                    for (hi, row) in frame.chunks_exact(w).enumerate() {
                        let at = (ti + p_t) * plane + (hi + p_h) * w_p + p_w;
                        dst[at..at + w].copy_from_slice(row);
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
                for (tap, (a, b, c)) in (0..k_t)
                    .flat_map(|a| (0..k_h).flat_map(move |b| (0..k_w).map(move |c| (a, b, c))))
                    .enumerate()
                {
                    let offset = p0 + a * plane + b * w_p + c;
                    // SAFETY: lhs is weight[:, :, a, b, c] (row stride C_in·taps, column
                    // stride taps) inside the contiguous weight; rhs is `padded[:, offset..
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
                            w_data.as_ptr().add(tap),
                            taps as isize,
                            (c_in * taps) as isize,
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
        // 3. Crop the padded grid to [C_out, t_o, h_o, w_o], adding the bias.
        ob.par_chunks_mut(t_o * h_o * w_o)
            .enumerate()
            .for_each(|(co, dst)| {
                let add = bias.as_ref().map_or(0.0, |b| b[co]);
                for (r, row) in dst.chunks_exact_mut(w_o).enumerate() {
                    let (ti, hi) = (r / h_o, r % h_o);
                    let padded_row = ti * h_p + hi;
                    let (ci, within) = (padded_row / row_chunk, padded_row % row_chunk);
                    let acc = &chunks[ci];
                    let cols = acc.len() / c_out;
                    let src = &acc[co * cols + within * w_p..][..w_o];
                    for (d, s) in row.iter_mut().zip(src) {
                        *d = s + add;
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
