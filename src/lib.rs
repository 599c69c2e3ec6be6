//! omni: Helios text-to-video in Rust on Burn.
//!
//! Layers (see `shared/reference/style.md` §7):
//! - [`pipeline`]: checkpoints, models, schedulers and the denoising loop (generic over a Burn backend).
//! - [`postprocess`]: frame interpolation (RIFE) on decoded frames.
//! - [`media`]: MP4/H.264 writing (openh264 + mp4).
//! - [`serve`]: the HTTP server.
//! - [`hub`]: models by folder or Hugging Face repo id.
//!
//! The command line lives in the binary (`src/main.rs`, `src/cli`).

pub mod hub;
pub mod media;
pub mod pipeline;
pub mod postprocess;
pub mod serve;
