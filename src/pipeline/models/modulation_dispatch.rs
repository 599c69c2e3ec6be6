//! The DiT blocks' adaptive-norm modulation and gated residuals (diffusers
//! `transformer_helios.py` `HeliosTransformerBlock.forward`, `transformer_wan.py`
//! `WanTransformerBlock.forward`) as fused row kernels on the CPU backend:
//!
//! - `norm(x) · (1 + scale) + shift` ([`scale_shift_rows`], on the norm's fresh output, in place);
//! - `x + y · gate` ([`gate_add_rows`], into `y`'s fresh buffer, in place);
//! - `x + y` on the tokens from `start` ([`add_rows_at`], the cross-attention residual, into
//!   `x`'s buffer).
//!
//! The modulation vectors differ between token segments (Helios's history tokens use the
//! modulation of t = 0, the noisy tokens that of t): [`SegmentRows`] gives each token row its
//! vector, so all segments go in one pass instead of one burn op chain per segment and a `cat`.
//! burn-flex runs those broadcasts on one thread, and through a strided loop when `x` is a
//! segment view. The per-element arithmetic is the burn ops' (`y · s1` rounded, then `+ shift`;
//! no fused multiply-add), so results are bit-identical.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, flex_map};

/// Token rows per rayon task.
const ROWS: usize = 64;

/// One `dim` vector per (batch element, token segment): token rows `s < split` read `head`,
/// the others `tail`. A vector set of batch 1 is shared by every batch element (Helios's
/// history modulation of t = 0 has batch 1 beside a CFG batch of 2).
#[derive(Debug, Clone)]
pub struct SegmentRows {
    /// First token of the second segment (0: every token reads `tail`).
    pub split: usize,
    /// `[batch, dim]`, row-major, and its batch (1 or the activations').
    pub head: (Vec<f32>, usize),
    /// `[batch, dim]`, row-major, and its batch (1 or the activations').
    pub tail: (Vec<f32>, usize),
}

impl SegmentRows {
    /// The vectors of `head` and `tail` (each `[B or 1, 1, dim]`, f32) read back from the
    /// device, with `map` applied element-wise (e.g. `1 + scale`).
    ///
    /// # Panics
    /// If the two differ in `dim` or are not f32.
    pub fn new<B: Backend>(
        split: usize,
        head: &Tensor<B, 3>,
        tail: &Tensor<B, 3>,
        map: impl Fn(f32) -> f32,
    ) -> Self {
        assert_eq!(
            head.dims()[2],
            tail.dims()[2],
            "modulation segments disagree"
        );
        let read = |t: &Tensor<B, 3>| -> (Vec<f32>, usize) {
            let values = t
                .clone()
                .into_data()
                .to_vec::<f32>()
                .expect("f32 modulation")
                .into_iter()
                .map(&map)
                .collect();
            (values, t.dims()[0])
        };
        Self {
            split,
            head: read(head),
            tail: read(tail),
        }
    }

    /// The vector of token `s` of batch element `b`.
    fn row(&self, b: usize, s: usize, dim: usize) -> &[f32] {
        let (set, batch) = if s < self.split {
            &self.head
        } else {
            &self.tail
        };
        let b = if *batch == 1 { 0 } else { b };
        &set[b * dim..][..dim]
    }
}

/// Whether the fused kernels apply to `x` (the CPU backend, f32).
pub fn rows_kernels_apply<B: Backend>(x: &Tensor<B, 3>) -> bool {
    x.dtype() == DType::F32 && as_flex(x).is_some()
}

/// `y · s1 + shift` row by row, `s1` and `shift` per token segment (`s1 = 1 + scale`, already
/// added), in place on `y` when it is not shared.
///
/// # Shapes
/// `y: [B, S, dim]` f32 → same; the vectors are `dim` long.
///
/// # Panics
/// If `y` is not on the CPU backend or not f32 ([`rows_kernels_apply`]).
pub fn scale_shift_rows<B: Backend>(
    y: Tensor<B, 3>,
    s1: &SegmentRows,
    shift: &SegmentRows,
) -> Tensor<B, 3> {
    flex_map(y, |y| {
        let mut y = owned_contiguous(y);
        let dims = y.layout().shape().clone();
        let (s, dim) = (dims[1], dims[2]);
        let out: &mut [f32] = y.storage_mut();
        rows(out, dim, |row, r| {
            let (b, t) = (r / s, r % s);
            let (m, a) = (s1.row(b, t, dim), shift.row(b, t, dim));
            for ((v, &m), &a) in row.iter_mut().zip(m).zip(a) {
                *v = *v * m + a;
            }
        });
        y
    })
    .unwrap_or_else(|_| panic!("scale_shift_rows: the CPU backend's f32 tensors only"))
}

/// `x + y · gate` row by row, `gate` per token segment, written into `y`'s buffer when it is
/// not shared (`x` may be any view).
///
/// # Shapes
/// `x`, `y`: `[B, S, dim]` f32 → same.
///
/// # Panics
/// If the shapes differ or the tensors are not the CPU backend's f32 ([`rows_kernels_apply`]).
pub fn gate_add_rows<B: Backend>(
    x: &Tensor<B, 3>,
    y: Tensor<B, 3>,
    gate: &SegmentRows,
) -> Tensor<B, 3> {
    assert_eq!(x.dims(), y.dims(), "gated residual: shapes differ");
    let x = as_flex(x).expect("gate_add_rows: the CPU backend's f32 tensors only");
    with_row_major(&x, |xs| {
        flex_map(y, |y| {
            let mut y = owned_contiguous(y);
            let dims = y.layout().shape().clone();
            let (s, dim) = (dims[1], dims[2]);
            let xs: &[f32] = &xs[..s * dim * dims[0]];
            let out: &mut [f32] = y.storage_mut();
            rows(out, dim, |row, r| {
                let (b, t) = (r / s, r % s);
                let g = gate.row(b, t, dim);
                let xr = &xs[r * dim..][..dim];
                for ((v, &g), &xv) in row.iter_mut().zip(g).zip(xr) {
                    *v = *v * g + xv;
                }
            });
            y
        })
    })
    .unwrap_or_else(|_| panic!("gate_add_rows: the CPU backend's f32 tensors only"))
}

/// `x[:, start.., :] += y`, written into `x`'s buffer (copied first only when shared): the
/// residual of the Helios block's cross-attention on the noisy tokens (diffusers
/// `HeliosTransformerBlock.forward`: `hidden_states + attn_output` on the noisy split, then
/// `torch.cat` with the history tokens) in one pass on the pool, instead of a strided add and a
/// `cat` on one thread. The sums are the same f32 additions, so bit-identical.
///
/// # Shapes
/// `x: [B, S, dim]`, `y: [B, S − start, dim]` (any layout) f32 → `[B, S, dim]`.
///
/// # Panics
/// If the shapes disagree or the tensors are not the CPU backend's f32 ([`rows_kernels_apply`]).
pub fn add_rows_at<B: Backend>(x: Tensor<B, 3>, start: usize, y: &Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, dim] = x.dims();
    assert_eq!(
        y.dims(),
        [b, s - start.min(s), dim],
        "add_rows_at: x {:?} from token {start} and y {:?} disagree",
        [b, s, dim],
        y.dims()
    );
    let y = as_flex(y).expect("add_rows_at: the CPU backend's f32 tensors only");
    let len = s - start;
    with_row_major(&y, |ys| {
        flex_map(x, |x| {
            let mut x = owned_contiguous(x);
            let out: &mut [f32] = &mut x.storage_mut()[..b * s * dim];
            rows(out, dim, |row, r| {
                let (bi, t) = (r / s, r % s);
                if t >= start {
                    let yr = &ys[(bi * len + t - start) * dim..][..dim];
                    for (v, &a) in row.iter_mut().zip(yr) {
                        *v += a;
                    }
                }
            });
            x
        })
    })
    .unwrap_or_else(|_| panic!("add_rows_at: the CPU backend's f32 tensors only"))
}

/// `f` of the f32 elements of `t` in row-major order: borrowed from its buffer when its layout
/// is row-major at any offset (e.g. a `narrow` along the token axis of a batch-1 tensor), else
/// from a contiguous copy.
fn with_row_major<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => f(&t.storage()[start..end]),
        None => f(t.to_contiguous().storage()),
    }
}

/// `t` contiguous from offset 0 over its whole buffer, without keeping a second reference to
/// the buffer (so `storage_mut` writes in place instead of copying when `t` was the only one).
fn owned_contiguous(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

/// `f(row, row_index)` over the `dim`-long rows of `data`, [`ROWS`] rows per rayon task.
fn rows(data: &mut [f32], dim: usize, f: impl Fn(&mut [f32], usize) + Sync) {
    if dim == 0 {
        return;
    }
    data.par_chunks_mut(ROWS * dim)
        .enumerate()
        .for_each(|(task, block)| {
            for (i, row) in block.chunks_exact_mut(dim).enumerate() {
                f(row, task * ROWS + i);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::Distribution;

    type B = CpuBackend;

    fn random(shape: [usize; 3]) -> Tensor<B, 3> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// `f(start, len, vector, second vector)` on one token segment.
    type SegmentOp<'a> = dyn Fn(usize, usize, &Tensor<B, 3>, &Tensor<B, 3>) -> Tensor<B, 3> + 'a;

    /// Both kernels equal the per-segment burn ops and `cat` bit for bit: a batch-1 history
    /// segment beside batch-1 or per-batch noisy vectors, one segment (`split` 0), a strided `x`.
    #[test]
    fn fused_rows_equal_the_segment_ops() {
        for (split, mod_batch) in [(5, 1), (0, 2), (4, 2)] {
            let y = random([2, 13, 8]);
            // The history segment's vectors have batch 1 (t = 0) beside the noisy ones'.
            let (sh, th) = (random([1, 1, 8]), random([1, 1, 8]));
            let (sn, tn) = (random([mod_batch, 1, 8]), random([mod_batch, 1, 8]));
            let segments = |f: &SegmentOp<'_>| {
                let mut parts = Vec::new();
                if split > 0 {
                    parts.push(f(0, split, &sh, &th));
                }
                parts.push(f(split, 13 - split, &sn, &tn));
                Tensor::cat(parts, 1)
            };
            // norm(x) · (1 + scale) + shift, with y standing for the norm's output
            let expected = segments(&|start, len, scale, shift| {
                y.clone().narrow(1, start, len) * (scale.clone() + 1.0) + shift.clone()
            });
            let s1 = SegmentRows::new(split, &sh, &sn, |v| v + 1.0);
            let shift = SegmentRows::new(split, &th, &tn, |v| v);
            let got = scale_shift_rows(y.clone(), &s1, &shift);
            got.into_data().assert_eq(&expected.into_data(), true);
            // x + y · gate, x strided
            let xt = random([13, 2, 8]).swap_dims(0, 1);
            let expected = segments(&|start, len, gate, _| {
                y.clone().narrow(1, start, len) * gate.clone() + xt.clone().narrow(1, start, len)
            });
            let gate = SegmentRows::new(split, &sh, &sn, |v| v);
            let got = gate_add_rows(&xt, y.clone(), &gate);
            got.into_data().assert_eq(&expected.into_data(), true);
            // ... and x a narrow view at an offset (read in place).
            let xn = random([2, 20, 8]).narrow(1, 7, 13);
            let expected = y.clone() * gate_tensor(split, &sh, &sn) + xn.clone();
            let got = gate_add_rows(&xn, y.clone(), &gate);
            got.into_data().assert_eq(&expected.into_data(), true);
        }
    }

    /// `gate` per token as one `[B, 13, 8]` tensor: `head` before `split`, `tail` after.
    fn gate_tensor(split: usize, head: &Tensor<B, 3>, tail: &Tensor<B, 3>) -> Tensor<B, 3> {
        let mut parts = Vec::new();
        if split > 0 {
            parts.push(head.clone().expand([2, split, 8]));
        }
        parts.push(tail.clone().expand([2, 13 - split, 8]));
        Tensor::cat(parts, 1)
    }

    /// The cross-attention residual equals the ops it replaces (the add on the noisy split and
    /// the `cat` with the history tokens) bit for bit, for a history split, none, and a
    /// transposed `y`; a shared `x` is left as it was.
    #[test]
    fn add_rows_at_equals_add_and_cat() {
        for start in [0, 5] {
            let x = random([2, 13, 8]);
            let y = random([13 - start, 2, 8]).swap_dims(0, 1);
            let noisy = x.clone().narrow(1, start, 13 - start) + y.clone();
            let expected = if start > 0 {
                Tensor::cat(vec![x.clone().narrow(1, 0, start), noisy], 1)
            } else {
                noisy
            };
            let before = x.clone().into_data();
            let got = add_rows_at(x.clone(), start, &y);
            got.into_data().assert_eq(&expected.into_data(), true);
            x.into_data().assert_eq(&before, true);
        }
    }
}
