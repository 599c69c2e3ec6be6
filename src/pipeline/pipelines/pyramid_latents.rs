//! Tensor helpers of the pyramid sampler: 2× down/up-sampling of latents between stages, the
//! correlated block noise of the stage re-noise (diffusers `sample_block_noise`).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// `F.interpolate(x, size=(h/2, w/2), mode="bilinear")` per frame, which for an exact halving
/// (align_corners=False, no antialias) is the mean of each 2×2 block.
///
/// # Shapes
/// `[B, C, T, H, W]` → `[B, C, T, H/2, W/2]`
pub(super) fn downsample_half<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    x.reshape([b * c * t, h / 2, 2, w / 2, 2])
        .mean_dim(4)
        .mean_dim(2)
        .reshape([b, c, t, h / 2, w / 2])
}

/// `F.interpolate(x, size=(2h, 2w), mode="nearest")` per frame.
///
/// # Shapes
/// `[B, C, T, H, W]` → `[B, C, T, 2H, 2W]`
pub(super) fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    x.reshape([b * c * t, h, 1, w, 1])
        .repeat_dim(2, 2)
        .repeat_dim(4, 2)
        .reshape([b, c, t, 2 * h, 2 * w])
}

/// diffusers `sample_block_noise`: `noise = z @ Lᵀ` (2×2 blocks with covariance `L·Lᵀ`), laid out
/// by `view(B,C,T,h/2,w/2,2,2).permute(0,1,2,3,5,4,6)`.
///
/// # Shapes
/// `z`: `[B·C·T·(h/2)·(w/2), 4]` row-major → `[B, C, T, h, w]`
pub(super) fn block_noise<B: Backend>(
    z: &[f32],
    l: &[[f64; 4]; 4],
    [b, c, t, h, w]: [usize; 5],
    device: &B::Device,
) -> Tensor<B, 5> {
    let mut out = vec![0f32; z.len()];
    for (zi, oi) in z.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        for r in 0..4 {
            // (z @ Lᵀ)[r] = Σ_j z[j]·L[r][j]
            oi[r] = (0..4).map(|j| zi[j] as f64 * l[r][j]).sum::<f64>() as f32;
        }
    }
    Tensor::<B, 1>::from_data(
        TensorData::new(out, [b * c * t * h * w]),
        (device, DType::F32),
    )
    .reshape([b * c * t, h / 2, w / 2, 2, 2])
    .swap_dims(2, 3)
    .reshape([b, c, t, h, w])
}
