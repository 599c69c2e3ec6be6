//! The tanh-approximated GELU the models use: diffusers' `GELU(approximate="tanh")` /
//! `FeedForward(activation_fn="gelu-approximate")`, `PixArtAlphaTextProjection(act_fn="gelu_tanh")`
//! and transformers' `gelu_new` in UMT5, all `F.gelu(x, approximate="tanh")`.

use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::flex_map;
use crate::pipeline::models::attention_dispatch::exp_nonpositive;

/// `sqrt(2/π)`, PyTorch's `kBeta = M_SQRT2 * M_2_SQRTPI * 0.5`.
const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
/// PyTorch's `kKappa`.
const KAPPA: f32 = 0.044715;
/// Elements per rayon task of the fused CPU kernel.
const CHUNK: usize = 1 << 14;

/// `0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³)))`, element-wise.
///
/// On the CPU backend in f32 this is one fused pass split over rayon's pool, with the
/// operations in the order of PyTorch's CPU kernel (`x³` as `x·x·x`) and a vectorised `tanh`
/// ([`tanh_f32`], within 2e-7 of libm's, as PyTorch's own vectorised kernel is not libm either);
/// elsewhere (CUDA, or f16/bf16 tensors) it is burn's [`gelu_approximate`], the same formula as
/// separate ops.
///
/// # Shapes
/// Any; the output has the shape and dtype of `x`.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() != DType::F32 {
        return gelu_approximate(x);
    }
    flex_map(x, |t| gelu_tanh_f32(&t)).unwrap_or_else(gelu_approximate)
}

/// The fused kernel on an f32 Flex tensor (any layout; the output is contiguous).
fn gelu_tanh_f32(x: &FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let input: &[f32] = x.storage();
    let mut out = vec![0.0f32; input.len()];
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(o, i)| gelu_slice(i, o));
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// [`gelu_generic`] built for AVX-512 or AVX2 when the CPU has it (plain multiplies and adds, no
/// FMA contraction: every path gives the same bits).
fn gelu_slice(input: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { gelu_avx512(input, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { gelu_avx2(input, out) };
        }
    }
    gelu_generic(input, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(input: &[f32], out: &mut [f32]) {
    gelu_generic(input, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(input: &[f32], out: &mut [f32]) {
    gelu_generic(input, out)
}

#[inline(always)]
fn gelu_generic(input: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(input) {
        let inner = BETA * (x + KAPPA * (x * x * x));
        *o = 0.5 * x * (1.0 + tanh_f32(inner));
    }
}

/// `tanh(u) = sign(u) · (1 − e) / (1 + e)` with `e = exp(−2|u|)` ([`exp_nonpositive`]),
/// branch-free so it vectorises; within 2e-7 of libm's `tanhf` (absolute), which is what the
/// GELU's `1 + tanh` sees.
#[inline(always)]
fn tanh_f32(u: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn tanh_is_within_2e_7_of_libm() {
        let mut u = -50.0f32;
        while u < 50.0 {
            let (got, want) = (tanh_f32(u), u.tanh());
            assert!((got - want).abs() <= 2e-7, "tanh({u}) = {got}, libm {want}");
            u += 0.00131;
        }
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn fused_gelu_matches_burns_gelu_approximate() {
        let x = Tensor::<CpuBackend, 3>::random(
            [3, 50_000, 2],
            Distribution::Normal(0.0, 3.0),
            &Default::default(),
        );
        let expected = gelu_approximate(x.clone()).into_data();
        // A strided view goes through the same kernel.
        let got = gelu_tanh(x.clone().swap_dims(0, 2)).swap_dims(0, 2);
        got.into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::rel_abs(1e-6, 1e-6));
        let half = gelu_tanh(x.cast(DType::BF16));
        assert_eq!(half.dtype(), DType::BF16);
    }
}
