//! The tanh-approximated GELU the models use: diffusers' `GELU(approximate="tanh")` /
//! `FeedForward(activation_fn="gelu-approximate")`, `PixArtAlphaTextProjection(act_fn="gelu_tanh")`
//! and transformers' `gelu_new` in UMT5, all `F.gelu(x, approximate="tanh")`.

use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::flex_map;

/// `sqrt(2/π)`, PyTorch's `kBeta = M_SQRT2 * M_2_SQRTPI * 0.5`.
const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
/// PyTorch's `kKappa`.
const KAPPA: f32 = 0.044715;
/// Elements per rayon task of the fused CPU kernel.
const CHUNK: usize = 1 << 14;

/// `0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³)))`, element-wise.
///
/// On the CPU backend in f32 this is one fused pass split over rayon's pool, with the
/// operations in the order of PyTorch's CPU kernel (`x³` as `x·x·x`); elsewhere (CUDA, or
/// f16/bf16 tensors) it is burn's [`gelu_approximate`], the same formula as separate ops.
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
        .for_each(|(o, i)| {
            for (o, &x) in o.iter_mut().zip(i) {
                let inner = BETA * (x + KAPPA * (x * x * x));
                *o = 0.5 * x * (1.0 + inner.tanh());
            }
        });
    FlexTensor::from_data(TensorData::new(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::{Distribution, Tolerance};

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
