//! Pipelines: compose models and schedulers into the denoising loop (no model math here).
//!
//! * [`pipeline_helios_pyramid`]: the loaded pipeline for every Helios variant and the shared
//!   chunk loop (Mid, Distilled pyramids; Base as one stage).
//! * [`pipeline_helios`]: the Base-specific schedule (`HeliosPipeline`).

pub mod helios_conditioning;
pub mod helios_variant;
pub mod pipeline_helios;
pub mod pipeline_helios_pyramid;
pub mod pipeline_output;
pub mod prompt_encoder;
pub mod pyramid_latents;
pub mod stage_sampler;
