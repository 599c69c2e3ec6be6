//! `nn.Linear` as the models call it (`F.linear(x, weight, bias)`, PyTorch's `addmm`), with a
//! faster kernel on the CPU backend.
//!
//! burn's `Linear::forward` runs `x·W` as a batched matmul (burn-flex: one gemm with
//! `Parallelism::Rayon`) into a fresh buffer, then adds the bias in a second pass over the
//! whole output. [`linear`] instead starts the output as the bias broadcast over the rows
//! (written in parallel, which also faults its pages in on both threads) and lets gemm
//! accumulate `x·W` into it (`dst = dst + x·W`, as `addmm(bias, x, W)`): one pass less over an
//! output of `[tokens, out]` (`[11040, 8960]` f32 is 396 MB for the FFN's up projection).
//!
//! Other backends or dtypes: burn's `Linear::forward` unchanged. Both compute the same sums; the
//! bias is added before the products instead of after (a rounding-level difference).

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, flex_map, par_filled};

/// Output rows per rayon task when the bias is written into a fresh output.
const FILL_ROWS: usize = 256;
/// Products with `k·n` up to this many weights are split by rows over the pool.
const THIN_KN: usize = 1 << 16;
/// Fewest rows per block of a split product.
const MIN_TASK_ROWS: usize = 64;

/// `layer.forward(input)`: [`linear_f32`] on the CPU backend when the input, weight and bias
/// are f32, else burn's `Linear::forward`.
///
/// # Shapes
/// `input: [..., d_input]` → `[..., d_output]` (`layer.weight: [d_input, d_output]`, burn's
/// layout, i.e. PyTorch's `weight.T`)
pub fn dispatch_linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    input: Tensor<B, D>,
) -> Tensor<B, D> {
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let f32s = input.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let fused = match (f32s, as_flex(&weight)) {
        (true, Some(w)) => {
            let b = bias.as_ref().and_then(as_flex);
            flex_map(input, |x| linear_f32(&x, &w, b.as_ref()))
        }
        _ => Err(input),
    };
    fused.unwrap_or_else(|input| layer.forward(input))
}

/// `x·W + b` on f32 burn-flex tensors: the output filled with `b` row by row (zeros without a
/// bias), then one threaded gemm (`Parallelism::Rayon`) accumulating `x·W` into it, or for a
/// thin product (`K·N` ≤ 65,536 weights, which gemm keeps on one thread) one single-threaded
/// gemm per block of rows, the blocks spread over the pool. `x` is read in place when its rows are contiguous-strided (any leading layout that flattens to
/// `[M, K]` with a fixed row stride), copied otherwise; `W` is read with its strides.
///
/// # Shapes
/// `x: [..., K]`, `weight: [K, N]`, `bias: [N]` → `[..., N]`, contiguous
///
/// # Panics
/// If `weight` is not rank 2 or its first dimension is not `x`'s last.
pub fn linear_f32(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let k = *dims.last().expect("linear: input of rank 0");
    let ws = weight.layout().shape();
    assert!(
        ws.num_dims() == 2 && ws[0] == k,
        "linear: input {dims:?} and weight {:?} disagree",
        ws.to_vec()
    );
    let n = ws[1];
    let m = dims[..dims.len() - 1].iter().product::<usize>();
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.to_contiguous()
    };
    let bias = bias.map(|b| b.to_contiguous());
    let mut out = match &bias {
        Some(b) if n > 0 => {
            let b: &[f32] = &b.storage()[b.layout().start_offset()..][..n];
            let mut out: Vec<f32> = Vec::with_capacity(m * n);
            out.spare_capacity_mut()
                .par_chunks_mut(FILL_ROWS * n)
                .for_each(|rows| {
                    for row in rows.chunks_exact_mut(n) {
                        for (d, &v) in row.iter_mut().zip(b) {
                            d.write(v);
                        }
                    }
                });
            // SAFETY: the `m` rows of `n` elements were all just written.
            unsafe { out.set_len(m * n) };
            out
        }
        _ => par_filled(m * n, 0.0),
    };
    if m > 0 && n > 0 {
        let x_data: &[f32] = &x.storage()[x.layout().start_offset()..][..m * k];
        let w_data: &[f32] = weight.storage();
        let (w_start, w_strides) = (weight.layout().start_offset(), weight.layout().strides());
        // Thin products (the small models' `[tokens, 24] · [24, 72]`): gemm keeps them on one
        // thread, so the rows are split over the pool here, one single-threaded gemm per block.
        let threads = rayon::current_num_threads();
        let tasks = match threads > 1 && k * n <= THIN_KN {
            true => (m / MIN_TASK_ROWS).min(4 * threads).max(1),
            false => 1,
        };
        let block = m.div_ceil(tasks);
        let product = |row0: usize, dst: &mut [f32], parallelism: gemm::Parallelism| {
            let rows = dst.len() / n;
            // SAFETY: `x_data` holds `m·k` contiguous elements (row stride `k`) and rows
            // `row0..row0 + rows` lie inside it; `weight` is a burn-flex layout of shape `[k, n]`
            // read with its own strides (every element lies in its buffer); `dst` is this
            // block's own `[rows, n]` row-major part of `out`.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    x_data.as_ptr().add(row0 * k),
                    1,
                    k as isize,
                    w_data.as_ptr().add(w_start),
                    w_strides[1],
                    w_strides[0],
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        };
        if tasks == 1 {
            product(0, &mut out, gemm::Parallelism::Rayon(0));
        } else {
            out.par_chunks_mut(block * n)
                .enumerate()
                .for_each(|(i, dst)| product(i * block, dst, gemm::Parallelism::None));
        }
    }
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    FlexTensor::from_data(TensorData::new(out, Shape::from(out_dims)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuBackend;

    /// Equal to burn's `Linear::forward` with and without a bias, for a 3-D input, a strided
    /// (swapped) input and a single row.
    #[test]
    fn linear_matches_burn_linear() {
        let device = Default::default();
        for bias in [true, false] {
            let layer = LinearConfig::new(24, 40).with_bias(bias).init::<B>(&device);
            let x = Tensor::<B, 3>::random([2, 37, 24], Distribution::Normal(0.0, 1.0), &device);
            let xt = Tensor::<B, 3>::random([2, 24, 37], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(1, 2);
            let row = Tensor::<B, 2>::random([1, 24], Distribution::Normal(0.0, 1.0), &device);
            for x in [x, xt] {
                let expected = layer.forward(x.clone()).into_data();
                let got = dispatch_linear(&layer, x);
                assert_eq!(got.dims(), [2, 37, 40]);
                got.into_data()
                    .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
            }
            let expected = layer.forward(row.clone()).into_data();
            dispatch_linear(&layer, row)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    /// A thin product with enough rows is split over the pool by rows: still equal to burn's.
    #[test]
    fn thin_products_split_by_rows_match_burn_linear() {
        let device = Default::default();
        let layer = LinearConfig::new(24, 72).init::<B>(&device);
        let x = Tensor::<B, 3>::random([2, 700, 24], Distribution::Normal(0.0, 1.0), &device);
        let expected = layer.forward(x.clone()).into_data();
        dispatch_linear(&layer, x)
            .into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }

    /// Other dtypes take burn's path and keep their dtype.
    #[test]
    fn linear_keeps_bf16() {
        let device = Default::default();
        let layer = LinearConfig::new(8, 4).init::<B>(&device);
        let layer = crate::pipeline::precision::PrecisionMapper::apply(layer, DType::BF16, &[]);
        let x = Tensor::<B, 2>::ones([3, 8], &device).cast(DType::BF16);
        let out = dispatch_linear(&layer, x);
        assert_eq!((out.dims(), out.dtype()), ([3, 4], DType::BF16));
    }
}
