//! Video files: H.264 in MP4 (encode with `openh264`, mux with `mp4`; fragmented MP4 for
//! streaming with `muxide`), lossless frames (PNG per frame, `.npy`), and the reference inputs
//! of image-to-video and video-to-video (images via `image`, H.264/MP4 via `re_mp4` + `openh264`).

pub mod fmp4_out;
pub mod frames_out;
pub mod h264_encode;
pub mod image_in;
pub mod mp4_out;
pub mod video_in;

pub use fmp4_out::{Fmp4Summary, Fmp4Writer};
pub use frames_out::{FramesError, NpyWriter, PngDirWriter};
pub use image_in::{
    MediaError, image_dimensions, load_image, load_image_bytes, to_video_tensor_data,
};
pub use mp4_out::{
    Complexity, EncodeOptions, Mp4Error, Mp4Summary, Mp4Writer, default_bitrate_bps,
    frame_f32_to_rgb8,
};
pub use video_in::{DecodedVideo, VideoReadOptions, VideoReader, read_video, read_video_bytes};
