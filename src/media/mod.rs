//! Video files: H.264 in MP4 (encode with `openh264`, mux with `mp4`).

pub mod mp4_out;

pub use mp4_out::{
    Complexity, EncodeOptions, Mp4Error, Mp4Summary, Mp4Writer, default_bitrate_bps,
    frame_f32_to_rgb8,
};
