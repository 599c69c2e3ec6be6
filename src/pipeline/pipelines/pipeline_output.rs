//! What a pipeline hands out: decoded frames, chunk by chunk. Mirrors diffusers 0.42.1
//! `pipelines/helios/pipeline_output.py` `HeliosPipelineOutput` (`frames`), delivered to a
//! [`FrameSink`] as each chunk is decoded instead of concatenated at the end.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::pipeline::backend::{as_flex, par_filled};

/// Decoded frames of one chunk: `data` is `[frames, height, width, 3]` row-major RGB in `[0, 1]`
/// (diffusers' `output_type="np"` values).
#[derive(Debug, Clone)]
pub struct VideoFrames {
    pub data: Vec<f32>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

/// Receives the video chunk by chunk, in order.
pub trait FrameSink {
    /// Take the next frames.
    ///
    /// # Errors
    /// A message that ends the run as [`PipelineError::Sink`](crate::pipeline::error::PipelineError::Sink).
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String>;
}

/// `(video / 2 + 0.5).clamp(0, 1)` and `[1, 3, F, H, W]` → `[F, H, W, 3]`, keeping `keep` frames.
pub fn postprocess<B: Backend>(video: Tensor<B, 5>, keep: usize) -> VideoFrames {
    let [_, _, f, h, w] = video.dims();
    let keep = keep.min(f);
    let data: Vec<f32> = video
        .narrow(2, 0, keep)
        .div_scalar(2.0)
        .add_scalar(0.5)
        .clamp(0.0, 1.0)
        .cast(DType::F32)
        .reshape([3, keep, h, w])
        .permute([1, 2, 3, 0])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    VideoFrames {
        data,
        frames: keep,
        height: h,
        width: w,
    }
}

/// [`postprocess`] of the frames of `parts` concatenated along time, without concatenating:
/// on the CPU backend in f32 the pool writes the `[F, H, W, 3]` values straight from the parts
/// (the `cat`, the three element-wise passes and the permuted copy ran on one thread); elsewhere
/// `postprocess(cat(parts, 2), keep)`.
///
/// # Shapes
/// Each part `[1, 3, F_i, H, W]` → `keep.min(ΣF_i)` frames of `H × W`.
///
/// # Panics
/// If `parts` is empty or the parts disagree in height or width.
pub fn postprocess_parts<B: Backend>(parts: Vec<Tensor<B, 5>>, keep: usize) -> VideoFrames {
    let flex: Option<Vec<_>> = parts
        .iter()
        .map(|p| (p.dtype() == DType::F32 && p.dims()[..2] == [1, 3]).then(|| as_flex(p))?)
        .collect();
    let Some(flex) = flex else {
        return postprocess(Tensor::cat(parts, 2), keep);
    };
    let [_, _, _, h, w] = parts.first().expect("postprocess: no frames").dims();
    // (part, frame within it) of every output frame
    let mut frames = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let [_, _, f, ph, pw] = p.dims();
        assert_eq!((ph, pw), (h, w), "postprocess: parts of different sizes");
        frames.extend((0..f).map(|j| (i, j)));
    }
    frames.truncate(keep);
    let mut data = par_filled(frames.len() * h * w * 3, 0.0);
    if !data.is_empty() {
        data.par_chunks_mut(w * 3)
            .enumerate()
            .for_each(|(line, dst)| {
                let (frame, y) = (line / h, line % h);
                let (part, j) = frames[frame];
                let t = &flex[part];
                let (start, st) = (t.layout().start_offset() as isize, t.layout().strides());
                let values: &[f32] = t.storage();
                for (c, channel) in (0..3).map(|c| (c, c as isize * st[1])) {
                    let row = start + channel + j as isize * st[2] + y as isize * st[3];
                    for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                        let v = values[(row + x as isize * st[4]) as usize];
                        // (video / 2 + 0.5).clamp(0, 1), as the tensor ops round it
                        px[c] = (v / 2.0 + 0.5).clamp(0.0, 1.0);
                    }
                }
            });
    }
    VideoFrames {
        data,
        frames: frames.len(),
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::backend::CpuBackend;
    use burn::tensor::Distribution;

    /// The part-wise path gives the same numbers as `postprocess` of the concatenation, with a
    /// strided part and frames dropped at the end.
    #[test]
    fn parts_equal_the_concatenation() {
        let device = Default::default();
        let random = |f: usize| {
            Tensor::<CpuBackend, 5>::random(
                [1, 3, f, 5, 7],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        let strided = Tensor::<CpuBackend, 5>::random(
            [1, 3, 4, 7, 5],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .swap_dims(3, 4);
        let parts = vec![random(1), strided, random(4)];
        for keep in [9, 7] {
            let expected = postprocess(Tensor::cat(parts.clone(), 2), keep);
            let got = postprocess_parts(parts.clone(), keep);
            assert_eq!((got.frames, got.height, got.width), (keep, 5, 7));
            assert_eq!(got.data, expected.data);
        }
    }
}
