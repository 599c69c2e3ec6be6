//! Post-processing of decoded frames, applied chunk by chunk as frames are decoded: RIFE frame
//! interpolation ([`rife`]), then Real-ESRGAN upscaling ([`realesrgan`]: the compact
//! SRVGGNetCompact and [`rrdbnet`]'s RRDBNet, tiled so memory is bounded).

pub mod chain;
pub mod realesrgan;
pub mod rife;
pub mod rrdbnet;
