//! Pipelines: compose models and schedulers into the denoising loop (no model math here).

pub mod pipeline_helios_pyramid;
