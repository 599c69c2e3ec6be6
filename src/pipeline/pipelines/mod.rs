//! Pipelines: compose models and schedulers into the denoising loop (no model math here). Files
//! follow diffusers' modular Helios blocks:
//!
//! * [`pipeline_helios_pyramid`]: the loaded pipeline for every Helios variant and the chunk loop
//!   as named steps (plan, text contexts, history, initial latents, stage re-noise, prediction
//!   with CFG, chunk decode); Mid and Distilled pyramids, Base as one stage.
//! * [`pipeline_helios`]: the Base-specific schedule (`HeliosPipeline`).
//! * [`pipeline_wan`]: `WanPipeline` (Wan2.1 T2V, Wan2.2 A14B two-expert T2V).
//! * [`pipeline_wan_i2v`]: `WanImageToVideoPipeline` (Wan2.1 I2V and FLF2V with CLIP, Wan2.2
//!   I2V A14B).
//! * [`pipeline_wan_video2video`]: `WanVideoToVideoPipeline` (V2V with `strength`).
//! * [`helios_variant`]: which Helios a checkpoint folder holds (`model_index.json` + scheduler
//!   config) and its request defaults.
//! * [`prompt_encoder`]: tokenizer + UMT5, step 3 (`encode_prompt`).
//! * [`helios_conditioning`]: step 4, image / video latents and their σ-noising.
//! * [`pyramid_latents`]: the pyramid's 2× resampling and block noise.
//! * [`pipeline_output`]: decoded frames and the [`FrameSink`](pipeline_output::FrameSink) they
//!   go to.
//!
//! The per-stage sampler (`step(i, x, v)`) lives next to the schedulers
//! ([`crate::pipeline::schedulers::stage_sampler`]); the door callers use is
//! [`crate::pipeline::generator::Generator`].

pub mod helios_conditioning;
pub mod helios_variant;
pub mod pipeline_helios;
pub mod pipeline_helios_pyramid;
pub mod pipeline_output;
pub mod pipeline_wan;
pub mod pipeline_wan_i2v;
pub mod pipeline_wan_video2video;
pub mod prompt_encoder;
pub mod pyramid_latents;
