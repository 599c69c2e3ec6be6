//! Scaled dot-product attention as the models call it: diffusers' `dispatch_attention_fn` with
//! the native backend, i.e. `F.scaled_dot_product_attention(q, k, v)` with no mask, no dropout
//! and the default scale `1/sqrt(head_dim)`.
//!
//! Which kernel runs depends on the backend type:
//! - the CPU backend ([`CpuBackend`], burn-flex) gets [`blocked_attention`]: per block of
//!   queries, `Q·Kᵀ` and `·V` as batched matrix products (burn-flex's gemm, threaded over rayon's
//!   pool) around a fused row softmax, the blocks spread over the pool. burn-flex's own
//!   `attention` is a scalar online-softmax loop that runs on one core;
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

use crate::pipeline::backend::CpuBackend;

/// Score elements (f32) one query block may hold across its batch and heads: 1 Mi elements
/// (4 MiB), so the block's scores stay near the cache while its softmax runs.
const SCORE_BLOCK_ELEMENTS: usize = 1 << 20;
/// Fewest queries per block (small blocks make the gemm re-pack `Kᵀ` and `V` too often).
const MIN_QUERY_BLOCK: usize = 16;
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
    let attend = |q: Tensor<B, 4>| softmax(q.matmul(key_t.clone()), 3).matmul(value.clone());
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
    fn query_block_is_bounded() {
        assert_eq!(query_block(2, 11_040), 47);
        assert_eq!(query_block(12, 11_040), MIN_QUERY_BLOCK);
        assert_eq!(query_block(1, 10), MAX_QUERY_BLOCK);
    }
}
