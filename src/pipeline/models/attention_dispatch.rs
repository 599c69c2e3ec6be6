//! Scaled dot-product attention as the models call it: diffusers' `dispatch_attention_fn` with
//! the native backend, i.e. `F.scaled_dot_product_attention(q, k, v)` with no mask, no dropout
//! and the default scale `1/sqrt(head_dim)`.
//!
//! Which kernel runs depends on the backend type:
//! - the CPU backend ([`CpuBackend`], burn-flex) gets [`flash_attention`], PyTorch's CPU flash
//!   kernel (`aten/src/ATen/native/cpu/FlashAttentionKernel.cpp`) in Rust: one rayon task per
//!   block of queries (all heads, one after another), which walks the keys in blocks: `S = Q·Kᵀ·scale` and `O += P·V`
//!   are single-threaded gemm calls (burn-flex's gemm crate, read straight from the strided
//!   `[B, H, L, D]` views the models pass), between them an online softmax (running row max and
//!   sum, the accumulated output rescaled when the max grows) with a vectorised `exp`
//!   ([`exp_nonpositive`]). The score tile (`q_block × kv_block` f32, 512 KiB) stays in the
//!   core's L2 cache. Heads of at most 16 (`D == D_v`, the tiny checkpoints' 12) take
//!   [`attention_small_head`] instead on x86 CPUs with AVX-512 or AVX2+FMA: the same online
//!   softmax in vector registers with the queries along the lanes, no gemm calls (about 2x
//!   faster at head_dim 12). burn-flex's own `attention` is a scalar online-softmax loop on one
//!   core;
//! - every other backend (CUDA) keeps [`burn::tensor::module::attention`], whose CubeCL flash
//!   kernels never materialise the score matrix.
//!
//! Both compute `softmax(Q·Kᵀ / sqrt(D))·V` with f32 scores and softmax whatever the activation
//! dtype (burn-flex widens f16/bf16 to f32 the same way); they differ only in summation order.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::attention_small_head::{self, Queries, Rows};
use crate::pipeline::backend::{CpuBackend, as_flex, flex_map, num_threads};

/// Most queries per task of [`flash_attention`] (PyTorch's `qSplitSize` for 768 queries or
/// more).
pub const MAX_QUERY_BLOCK: usize = 256;
/// Fewest queries per task when short sequences are split further to fill the pool.
const MIN_QUERY_BLOCK: usize = 32;
/// Keys per step of [`flash_attention`] (PyTorch's `kvSplitSize`).
pub const KV_BLOCK: usize = 512;

/// `F.scaled_dot_product_attention(query, key, value)`: [`flash_attention`] on the CPU
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
        let [b, _, l_q, _] = query.dims();
        let q_block = query_block(b, l_q, num_threads());
        flash_attention(query, key, value, q_block, KV_BLOCK)
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

/// Queries per task (a task takes every head of its queries): [`MAX_QUERY_BLOCK`], or fewer
/// (down to [`MIN_QUERY_BLOCK`]) when that would leave fewer than four tasks per thread of the
/// pool over the `batch` sequences.
pub fn query_block(batch: usize, l_q: usize, threads: usize) -> usize {
    let per_sequence = (4 * threads).div_ceil(batch.max(1));
    l_q.div_ceil(per_sequence.max(1))
        .clamp(MIN_QUERY_BLOCK, MAX_QUERY_BLOCK)
}

/// `softmax(Q·Kᵀ · sqrt(D)⁻¹) · V` in f32 (inputs of another dtype are widened first, the output
/// is cast back to the dtype of `query`), no mask: on the CPU backend the flash kernel described
/// in the module docs, with `q_block` queries per task and `kv_block` keys per step; on any other
/// backend [`burn::tensor::module::attention`].
///
/// Memory: the output plus one `q_block × kv_block` score tile and a few rows per task; the
/// inputs are read in place whatever their strides.
///
/// # Shapes
/// `query: [B, H, L_q, D]`, `key: [B, H, L_k, D]`, `value: [B, H, L_k, D_v]` → `[B, H, L_q, D_v]`
///
/// # Panics
/// If a block size is 0 or the shapes disagree.
pub fn flash_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    q_block: usize,
    kv_block: usize,
) -> Tensor<B, 4> {
    assert!(
        q_block > 0 && kv_block > 0,
        "flash_attention: block sizes must be positive"
    );
    let [b, h, l_q, d] = query.dims();
    let [bk, hk, l_k, dk] = key.dims();
    let [bv, hv, l_v, d_v] = value.dims();
    assert!(
        (bk, hk, dk) == (b, h, d) && (bv, hv, l_v) == (b, h, l_k),
        "flash_attention: query {:?}, key {:?} and value {:?} disagree",
        [b, h, l_q, d],
        [bk, hk, l_k, dk],
        [bv, hv, l_v, d_v]
    );
    let dtype = query.dtype();
    let (query, key, value) = (
        query.cast(DType::F32),
        key.cast(DType::F32),
        value.cast(DType::F32),
    );
    let fused = match (as_flex(&key), as_flex(&value)) {
        (Some(k), Some(v)) => flex_map(query, |q| {
            flash_attention_f32(&q, &k, &v, q_block, kv_block)
        }),
        _ => Err(query),
    };
    match fused {
        Ok(out) => out,
        Err(query) => burn::tensor::module::attention(
            query,
            key,
            value,
            None,
            None,
            AttentionModuleOptions::default(),
        ),
    }
    .cast(dtype)
}

/// An f32 burn-flex tensor of rank 4 read in place: its buffer from the view's first element,
/// and its strides in elements.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [isize; 4],
}

impl<'a> View<'a> {
    fn new(t: &'a FlexTensor) -> Self {
        let s = t.layout().strides();
        Self {
            data: t.storage(),
            offset: t.layout().start_offset(),
            strides: [s[0], s[1], s[2], s[3]],
        }
    }

    /// Pointer to element `[b, h, row, 0]`.
    fn at(&self, b: usize, h: usize, row: usize) -> *const f32 {
        let [sb, sh, sl, _] = self.strides;
        let index = self.offset as isize + b as isize * sb + h as isize * sh + row as isize * sl;
        self.data.as_ptr().wrapping_offset(index)
    }
}

/// The CPU flash kernel on f32 burn-flex tensors (any strides, as long as every element lies
/// in the buffer, which burn-flex's layouts guarantee; broadcast strides of 0 are fine).
///
/// # Shapes
/// `q: [B, H, L_q, D]`, `k: [B, H, L_k, D]`, `v: [B, H, L_k, D_v]` → `[B, H, L_q, D_v]`, the view
/// of a contiguous `[B, L_q, H, D_v]`
fn flash_attention_f32(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    q_block: usize,
    kv_block: usize,
) -> FlexTensor {
    let [b, h, l_q, d] = dims4(q);
    let [_, _, l_k, d_v] = dims4(v);
    let scale = (d as f32).sqrt().recip();
    let (qv, kv, vv) = (View::new(q), View::new(k), View::new(v));
    let small_heads = d == d_v
        && d <= attention_small_head::MAX_HEAD_DIM
        && kv.strides[3] == 1
        && vv.strides[3] == 1;
    // The output in [B, L_q, H, D_v] order, returned as its [B, H, L_q, D_v] view: the models
    // flatten the heads next (`swap_dims(1, 2).reshape([B, L_q, H·D_v])`), which is then free
    // instead of a permuted copy on one thread. One task per block of queries, all heads.
    let row_len = h * d_v;
    let mut out = vec![0.0f32; b * l_q * row_len];
    if l_q * row_len > 0 {
        out.par_chunks_mut(l_q * row_len)
            .enumerate()
            .for_each(|(bi, batch_out)| {
                batch_out
                    .par_chunks_mut(q_block * row_len)
                    .enumerate()
                    .for_each(|(i, block)| {
                        let row0 = i * q_block;
                        let rows = block.len() / row_len;
                        let mut acc = vec![0.0f32; rows * d_v];
                        for hi in 0..h {
                            if hi > 0 {
                                acc.fill(0.0);
                            }
                            let q_ptr = qv.at(bi, hi, row0);
                            // SAFETY: this block's rows of Q, and all l_k rows of K and V of
                            // head (bi, hi), lie in their buffers (burn-flex layouts of the
                            // asserted shapes); K and V have a unit stride along D (checked).
                            let done = small_heads
                                && unsafe {
                                    attention_small_head::attend(
                                        Queries {
                                            ptr: q_ptr,
                                            row_stride: qv.strides[2],
                                            dim_stride: qv.strides[3],
                                        },
                                        Rows {
                                            ptr: kv.at(bi, hi, 0),
                                            stride: kv.strides[2],
                                        },
                                        Rows {
                                            ptr: vv.at(bi, hi, 0),
                                            stride: vv.strides[2],
                                        },
                                        &mut acc,
                                        [rows, d, l_k],
                                        scale,
                                    )
                                };
                            if !done {
                                attend_block(
                                    (q_ptr, qv.strides),
                                    (&kv, &vv, bi, hi),
                                    &mut acc,
                                    [rows, d, l_k, d_v],
                                    kv_block,
                                    scale,
                                );
                            }
                            for (r, o) in acc.chunks_exact(d_v).enumerate() {
                                block[r * row_len + hi * d_v..][..d_v].copy_from_slice(o);
                            }
                        }
                    });
            });
    }
    let out = FlexTensor::from_data(TensorData::new(out, [b, l_q, h, d_v]));
    if h == 1 {
        // One head: the same memory is the contiguous [B, 1, L_q, D_v].
        out.reshape(Shape::new([b, 1, l_q, d_v]))
    } else {
        out.transpose(1, 2)
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// One task: `rows` queries (at `q`, with the view's strides) against all `l_k` keys, the
/// normalised result written to `acc` (`[rows, D_v]`, zeros on entry).
fn attend_block(
    (q, q_strides): (*const f32, [isize; 4]),
    (k, v, bi, hi): (&View, &View, usize, usize),
    acc: &mut [f32],
    [rows, d, l_k, d_v]: [usize; 4],
    kv_block: usize,
    scale: f32,
) {
    let mut scores = vec![0.0f32; rows * kv_block.min(l_k)];
    let mut row_max = vec![f32::NEG_INFINITY; rows];
    let mut row_sum = vec![0.0f32; rows];
    for j0 in (0..l_k).step_by(kv_block) {
        let n = kv_block.min(l_k - j0);
        let s = &mut scores[..rows * n];
        // SAFETY: every pointer and stride comes from a burn-flex layout of the shapes
        // asserted in `flash_attention` (rows j0..j0+n of K and V, rows of this block of Q), so
        // each element gemm reads lies in its buffer; `s` and `acc` are this task's own
        // `[rows, n]` and `[rows, d_v]` row-major buffers.
        unsafe {
            // S = scale · Q·Kᵀ   [rows, n]
            gemm::gemm(
                rows,
                n,
                d,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                q,
                q_strides[3],
                q_strides[2],
                k.at(bi, hi, j0),
                k.strides[2],
                k.strides[3],
                0.0f32,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        online_softmax_step(s, n, &mut row_max, &mut row_sum, acc, d_v);
        // SAFETY: as above.
        unsafe {
            // O += P·V   [rows, d_v]
            gemm::gemm(
                rows,
                d_v,
                n,
                acc.as_mut_ptr(),
                1,
                d_v as isize,
                true,
                s.as_ptr(),
                1,
                n as isize,
                v.at(bi, hi, j0),
                v.strides[3],
                v.strides[2],
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    for (o, sum) in acc.chunks_exact_mut(d_v).zip(&row_sum) {
        let inv = 1.0 / sum;
        for x in o {
            *x *= inv;
        }
    }
}

/// Independent accumulators of the row max and sum (lets the compiler keep them in vector
/// registers; the sum is then a 16-way tree, as in vectorised softmax kernels).
const LANES: usize = 16;

/// One key block of the online softmax, per row of `scores` (`[rows, n]`, in place): the new
/// max `m' = max(m, max(s))`, `s ← exp(s − m')`, `sum ← sum·exp(m − m') + Σ s`, and the
/// output so far `acc` (`[rows, d_v]`) scaled by `exp(m − m')` when the max grew. Dispatches at
/// run time to an AVX-512 or AVX2+FMA build of the same code whose `exp` uses fused
/// multiply-adds (15 % off a tiny DiT forward at head_dim 12, where the softmax is a third of
/// the attention); the portable path keeps plain multiplies and adds, so it differs from them
/// by an ulp here and there, all within 2 ulp of the exact `exp`.
fn online_softmax_step(
    scores: &mut [f32],
    n: usize,
    row_max: &mut [f32],
    row_sum: &mut [f32],
    acc: &mut [f32],
    d_v: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { online_softmax_step_avx512(scores, n, row_max, row_sum, acc, d_v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { online_softmax_step_avx2(scores, n, row_max, row_sum, acc, d_v) };
        }
    }
    online_softmax_step_generic::<false>(scores, n, row_max, row_sum, acc, d_v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn online_softmax_step_avx512(
    scores: &mut [f32],
    n: usize,
    row_max: &mut [f32],
    row_sum: &mut [f32],
    acc: &mut [f32],
    d_v: usize,
) {
    online_softmax_step_generic::<true>(scores, n, row_max, row_sum, acc, d_v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn online_softmax_step_avx2(
    scores: &mut [f32],
    n: usize,
    row_max: &mut [f32],
    row_sum: &mut [f32],
    acc: &mut [f32],
    d_v: usize,
) {
    online_softmax_step_generic::<true>(scores, n, row_max, row_sum, acc, d_v)
}

#[inline(always)]
fn online_softmax_step_generic<const FMA: bool>(
    scores: &mut [f32],
    n: usize,
    row_max: &mut [f32],
    row_sum: &mut [f32],
    acc: &mut [f32],
    d_v: usize,
) {
    let rows = scores
        .chunks_exact_mut(n)
        .zip(row_max.iter_mut().zip(row_sum.iter_mut()))
        .zip(acc.chunks_exact_mut(d_v));
    for ((r, (m, sum)), o) in rows {
        let mut maxes = [f32::NEG_INFINITY; LANES];
        let mut chunks = r.chunks_exact(LANES);
        for c in &mut chunks {
            for (mx, &x) in maxes.iter_mut().zip(c) {
                *mx = if x > *mx { x } else { *mx };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(*m, |a, &x| if x > a { x } else { a });
        for mx in maxes {
            max = if mx > max { mx } else { max };
        }
        let mut sums = [0.0f32; LANES];
        let mut chunks = r.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp_nonpositive_with::<FMA>(*x - max);
                *s += *x;
            }
        }
        let mut tail = 0.0f32;
        for x in chunks.into_remainder() {
            *x = exp_nonpositive_with::<FMA>(*x - max);
            tail += *x;
        }
        let block_sum = sums.iter().sum::<f32>() + tail;
        if max > *m {
            // The first block finds an empty output and sum: nothing to rescale.
            if *m != f32::NEG_INFINITY {
                let correction = exp_nonpositive_with::<FMA>(*m - max);
                *sum *= correction;
                for x in o.iter_mut() {
                    *x *= correction;
                }
            }
            *m = max;
        }
        *sum += block_sum;
    }
}

/// `exp(x)` for `x <= 0` (a softmax argument `x - max`), branch-free so loops of it vectorise:
/// Cody-Waite reduction `x = n·ln2 + r` and Cephes' degree-6 `expf` polynomial, within 2 ulp of
/// the correctly rounded value; arguments below -87 (results under 2⁻¹²⁶) give ~1.6e-38
/// instead of a subnormal or 0, which no softmax sum can tell apart.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    exp_nonpositive_with::<false>(x)
}

/// [`exp_nonpositive`] with fused multiply-adds when `FMA` (for the AVX-512 / AVX2+FMA builds
/// only: without hardware FMA `mul_add` is a slow library call). Fewer roundings, the same
/// 2 ulp bound.
#[inline(always)]
pub(crate) fn exp_nonpositive_with<const FMA: bool>(x: f32) -> f32 {
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = madd(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = madd(-n, LN2_LO, madd(-n, LN2_HI, x));
    let p = 1.987_569_1e-4;
    let p = madd(p, r, 1.398_199_9e-3);
    let p = madd(p, r, 8.333_452e-3);
    let p = madd(p, r, 4.166_579_6e-2);
    let p = madd(p, r, 1.666_666_5e-1);
    let p = madd(p, r, 0.5); // Cephes 5.0000001201e-1, which is 0.5 in f32
    let e = madd(p, r * r, r) + 1.0;
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

    fn module_attention(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>) -> TensorData {
        burn::tensor::module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .into_data()
    }

    /// The flash kernel equals burn's `module::attention` for every block size, including
    /// blocks that do not divide the sequences, a key length other than the query length and a
    /// value width other than the key width.
    #[test]
    fn flash_attention_matches_module_attention() {
        let (q, k, v) = (
            random([2, 3, 37, 8]) * 3.0,
            random([2, 3, 29, 8]),
            random([2, 3, 29, 5]),
        );
        let expected = module_attention(&q, &k, &v);
        for (q_block, kv_block) in [(1, 1), (7, 5), (16, 29), (37, 8), (64, 512)] {
            let got = flash_attention(q.clone(), k.clone(), v.clone(), q_block, kv_block);
            got.into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
        let got = dispatch_attention(q, k, v);
        got.into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }

    /// Heads of 12, as the tiny checkpoints have, take the small-head kernel on x86 CPUs with
    /// AVX2 or AVX-512: it equals `module::attention` on strided views, with partial blocks of
    /// queries and keys. A value width other than the key width takes the gemm path.
    #[test]
    fn small_heads_match_module_attention() {
        let x = random([2, 300, 2, 12]) * 2.0; // [B, L, H, D]
        let q = x.clone().narrow(1, 3, 290).swap_dims(1, 2);
        let k = x.clone().swap_dims(1, 2);
        let v = (x * 0.5).swap_dims(1, 2);
        let expected = module_attention(&q, &k, &v);
        for q_block in [1, 17, 256] {
            let got = flash_attention(q.clone(), k.clone(), v.clone(), q_block, KV_BLOCK);
            got.into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    /// Strided views as the models pass them (`[B, L, H, D]` with heads swapped to dim 1, a
    /// `narrow` with an offset) are read in place and give the same result as contiguous
    /// copies.
    #[test]
    fn flash_attention_reads_strided_views() {
        let x = random([1, 40, 2, 6]) * 2.0; // [B, L, H, D]
        let q = x.clone().narrow(1, 3, 30).swap_dims(1, 2); // [1, 2, 30, 6], offset 3·H·D
        let k = x.clone().swap_dims(1, 2);
        let v = (x * 0.5).swap_dims(1, 2);
        let expected = module_attention(&q, &k, &v);
        let got = flash_attention(q, k, v, 8, 16);
        got.into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
    }

    /// bf16 inputs: f32 inside, the output back in bf16.
    #[test]
    fn flash_attention_keeps_the_input_dtype() {
        let q = random([1, 2, 20, 4]).cast(DType::BF16);
        let out = flash_attention(q.clone(), q.clone(), q, 8, 8);
        assert_eq!(out.dtype(), DType::BF16);
        assert_eq!(out.dims(), [1, 2, 20, 4]);
    }

    /// The FMA form (the AVX builds' softmax) keeps the 2 ulp bound.
    #[test]
    fn exp_nonpositive_with_fma_is_within_2_ulp() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive_with::<true>(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
            x -= 0.0037;
        }
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
    fn query_block_fills_the_pool() {
        // Long sequences: PyTorch's 256; short ones split to four tasks per thread.
        assert_eq!(query_block(2, 11_040, 2), MAX_QUERY_BLOCK);
        assert_eq!(query_block(1, 1_000, 2), 125);
        assert_eq!(query_block(1, 100, 2), MIN_QUERY_BLOCK);
        assert_eq!(query_block(24, 2_000, 2), MAX_QUERY_BLOCK);
    }
}
