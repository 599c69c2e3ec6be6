//! Post-processing of decoded frames: RIFE frame interpolation ([`rife`]), applied chunk by
//! chunk as frames are decoded, and the compact Real-ESRGAN upscaler with tiling
//! ([`realesrgan`]; the model only so far, not wired into requests).

pub mod realesrgan;
pub mod rife;
