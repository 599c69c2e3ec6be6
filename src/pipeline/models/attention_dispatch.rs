//! Scaled dot-product attention as the models call it: diffusers' `dispatch_attention_fn` with
//! the native backend, i.e. `F.scaled_dot_product_attention(q, k, v)` with no mask, no dropout
//! and the default scale `1/sqrt(head_dim)`.
//!
//! Which kernel runs depends on the backend type:
//! - the CPU backend ([`CpuBackend`], burn-flex) gets [`blocked_attention`]: per block of
//!   queries, `Q·Kᵀ` and `·V` as batched matrix products (burn-flex's gemm, threaded over rayon's
//!   pool) around a fused row softmax, the blocks spread over the pool. burn-flex's own
//!   `attention` is a scalar online-softmax loop that runs on one core. The softmax is fused and
//!   in place, with a vectorised `exp` ([`exp_nonpositive`]);
//! - every other backend (CUDA) keeps [`burn::tensor::module::attention`], whose CubeCL flash
//!   kernels never materialise the score matrix.
//!
//! Both compute `softmax(Q·Kᵀ / sqrt(D))·V` with f32 scores and softmax whatever the activation
//! dtype (burn-flex widens f16/bf16 to f32 the same way); they differ only in summation order.

use std::any::TypeId;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::pipeline::backend::{CpuBackend, flex_map};

/// Score elements (f32) one query block may hold across its batch and heads: 1 Mi elements
/// (4 MiB), so the block's scores stay near the cache while its softmax runs (when
/// [`MIN_QUERY_BLOCK`] allows).
const SCORE_BLOCK_ELEMENTS: usize = 1 << 20;
/// Fewest queries per block: the gemm packs `Kᵀ` and `V` again for every block, so small blocks
/// spend their time packing (16-query blocks ran the 1536-wide DiT's attention at a third of
/// the speed of 128-query blocks).
const MIN_QUERY_BLOCK: usize = 128;
/// Most queries per block.
const MAX_QUERY_BLOCK: usize = 1024;

/// `F.scaled_dot_product_attention(query, key, value)`: [`blocked_attention`] on the CPU
/// backend, [`burn::tensor::module::attention`] (flash kernels) on the others.
///
/// # Shapes
/// `query: [B, H, L_q, D]`, `key: [B, H, L_k, D]`, `value: [B, H, L_k, D_v]` → `[B, H, L_q, D_v]`
/// in the dtype of `query`.
pub fn dispatch_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    if TypeId::of::<B>() == TypeId::of::<CpuBackend>() {
        let [b, h, _, _] = query.dims();
        let l_k = key.dims()[2];
        let block = query_block(b * h, l_k);
        blocked_attention(query, key, value, block)
    } else {
        burn::tensor::module::attention(
            query,
            key,
            value,
            None,
            None,
            AttentionModuleOptions::default(),
        )
    }
}

/// Queries per block so that one block's scores `[B, H, block, L_k]` hold about
/// [`SCORE_BLOCK_ELEMENTS`], within [`MIN_QUERY_BLOCK`]..=[`MAX_QUERY_BLOCK`].
pub fn query_block(batch_heads: usize, l_k: usize) -> usize {
    (SCORE_BLOCK_ELEMENTS / (batch_heads * l_k).max(1)).clamp(MIN_QUERY_BLOCK, MAX_QUERY_BLOCK)
}

/// `softmax((Q · sqrt(D)⁻¹) · Kᵀ) · V` over blocks of `block` queries, in f32 (inputs of another
/// dtype are widened first, the output is cast back to the dtype of `query`). No mask.
///
/// Each block materialises its scores `[B, H, block, L_k]` only, so memory stays bounded for
/// long sequences; the blocks are independent and run on rayon's pool (the matmuls and softmax
/// inside a block may split further). The scale is applied to the queries, as PyTorch's math
/// kernel does, rather than to the larger score matrix.
///
/// # Shapes
/// `query: [B, H, L_q, D]`, `key: [B, H, L_k, D]`, `value: [B, H, L_k, D_v]` → `[B, H, L_q, D_v]`
///
/// # Panics
/// If `block` is 0 or the shapes disagree.
pub fn blocked_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    block: usize,
) -> Tensor<B, 4> {
    assert!(block > 0, "blocked_attention: block must be positive");
    let dtype = query.dtype();
    let [_, _, l_q, d] = query.dims();
    let scale = (d as f64).sqrt().recip();
    let query = query.cast(DType::F32) * scale;
    let key_t = key.cast(DType::F32).swap_dims(2, 3); // [B, H, D, L_k]
    let value = value.cast(DType::F32);
    let attend =
        |q: Tensor<B, 4>| softmax_last_in_place(q.matmul(key_t.clone())).matmul(value.clone());
    let out = if l_q <= block {
        attend(query)
    } else {
        let starts: Vec<usize> = (0..l_q).step_by(block).collect();
        let blocks: Vec<Tensor<B, 4>> = starts
            .into_par_iter()
            .map(|start| attend(query.clone().narrow(2, start, block.min(l_q - start))))
            .collect();
        Tensor::cat(blocks, 2)
    };
    out.cast(dtype)
}

/// `softmax(scores, -1)`: on the CPU backend in f32, in place in the scores' own buffer (the
/// matmul's fresh output) with [`softmax_rows`]; elsewhere burn's `softmax`.
///
/// # Shapes
/// `[B, H, L_q, L_k]` → same
fn softmax_last_in_place<B: Backend>(scores: Tensor<B, 4>) -> Tensor<B, 4> {
    if scores.dtype() != DType::F32 {
        return softmax(scores, 3);
    }
    flex_map(scores, |t| {
        let mut t = t.to_contiguous();
        let row = *t.layout().shape().last().expect("rank 4");
        let data: &mut [f32] = t.storage_mut();
        if row > 0 {
            data.par_chunks_mut(SOFTMAX_ROWS_PER_TASK * row)
                .for_each(|rows| softmax_rows(rows, row));
        }
        t
    })
    .unwrap_or_else(|t| softmax(t, 3))
}

/// Rows per rayon task of [`softmax_last_in_place`].
const SOFTMAX_ROWS_PER_TASK: usize = 16;
/// Independent accumulators of the row max and sum (lets the compiler keep them in vector
/// registers; the sum is then a 16-way tree, as in vectorised softmax kernels).
const LANES: usize = 16;

/// Softmax of each `row`-long row of `data`, in place: `exp(x - max) · (1 / Σ exp(x - max))`,
/// PyTorch's vectorised CPU softmax. Dispatches at run time to an AVX-512 or AVX2 build of the
/// same code (plain multiplies and adds, no FMA contraction, so every path gives the same bits).
fn softmax_rows(data: &mut [f32], row: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { softmax_rows_avx512(data, row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { softmax_rows_avx2(data, row) };
        }
    }
    softmax_rows_generic(data, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(data: &mut [f32], row: usize) {
    softmax_rows_generic(data, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_rows_avx2(data: &mut [f32], row: usize) {
    softmax_rows_generic(data, row)
}

#[inline(always)]
fn softmax_rows_generic(data: &mut [f32], row: usize) {
    for r in data.chunks_exact_mut(row) {
        let mut maxes = [f32::NEG_INFINITY; LANES];
        let mut chunks = r.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in maxes.iter_mut().zip(c) {
                *m = if x > *m { x } else { *m };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        for m in maxes {
            max = if m > max { m } else { max };
        }
        let mut sums = [0.0f32; LANES];
        let mut chunks = r.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp_nonpositive(*x - max);
                *s += *x;
            }
        }
        let mut tail = 0.0f32;
        for x in chunks.into_remainder() {
            *x = exp_nonpositive(*x - max);
            tail += *x;
        }
        let inv = 1.0 / (sums.iter().sum::<f32>() + tail);
        for x in r.iter_mut() {
            *x *= inv;
        }
    }
}

/// `exp(x)` for `x <= 0` (a softmax argument `x - max`), branch-free so loops of it vectorise:
/// Cody-Waite reduction `x = n·ln2 + r` and Cephes' degree-6 `expf` polynomial, within 2 ulp of
/// the correctly rounded value; arguments below -87 (results under 2⁻¹²⁶) give ~1.6e-38
/// instead of a subnormal or 0, which no softmax sum can tell apart.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes 5.0000001201e-1, which is 0.5 in f32
    let e = p * (r * r) + r + 1.0;
    // 2^n from the integer in t's low mantissa bits (n in -126..=0).
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits(((k + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuBackend;

    fn random(shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// The blocked kernel equals burn's `module::attention` for every block size, including
    /// blocks that do not divide the sequence and a key length other than the query length.
    #[test]
    fn blocked_attention_matches_module_attention() {
        let (q, k, v) = (
            random([2, 3, 37, 8]),
            random([2, 3, 29, 8]),
            random([2, 3, 29, 5]),
        );
        let expected = burn::tensor::module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        for block in [1, 7, 16, 37, 64] {
            let got = blocked_attention(q.clone(), k.clone(), v.clone(), block);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::absolute(1e-5));
        }
        let got = dispatch_attention(q, k, v);
        got.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }

    /// bf16 inputs: f32 inside, the output back in bf16.
    #[test]
    fn blocked_attention_keeps_the_input_dtype() {
        let q = random([1, 2, 20, 4]).cast(DType::BF16);
        let out = blocked_attention(q.clone(), q.clone(), q, 8);
        assert_eq!(out.dtype(), DType::BF16);
        assert_eq!(out.dims(), [1, 2, 20, 4]);
    }

    #[test]
    fn exp_nonpositive_is_within_2_ulp() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
            x -= 0.0037;
        }
        assert!(exp_nonpositive(-1e4) < 2e-38);
    }

    #[test]
    fn fused_softmax_matches_burns_softmax() {
        // Up to a few f32 roundings apart: a 16-way sum and `·(1/Σ)` against burn's order.
        let s = random([1, 2, 33, 531]) * 4.0;
        let expected = softmax(s.clone(), 3).into_data();
        softmax_last_in_place(s)
            .into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::rel_abs(4e-6, 1e-7));
    }

    #[test]
    fn query_block_is_bounded() {
        assert_eq!(query_block(2, 11_040), MIN_QUERY_BLOCK);
        assert_eq!(query_block(1, 2_000), 524);
        assert_eq!(query_block(12, 11_040), MIN_QUERY_BLOCK);
        assert_eq!(query_block(1, 10), MAX_QUERY_BLOCK);
    }
}
