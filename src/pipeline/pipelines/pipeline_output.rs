//! What a pipeline hands out: decoded frames, chunk by chunk. Mirrors diffusers 0.42.1
//! `pipelines/helios/pipeline_output.py` `HeliosPipelineOutput` (`frames`), delivered to a
//! [`FrameSink`] as each chunk is decoded instead of concatenated at the end.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

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
