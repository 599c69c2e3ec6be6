//! Schedulers: host-side f64 tables and step coefficients, one file per diffusers class
//! (style rule 7). Only [`stage_sampler`], the per-step combination, touches tensors.
//!
//! * [`scheduling_helios`]: diffusers `HeliosScheduler` (Helios-Base and Helios-Mid).
//! * [`scheduling_helios_dmd`]: diffusers `HeliosDMDScheduler` (Helios-Distilled).
//! * [`pyramid`]: what both share, written once: the stage tables, `time_shift`, the shared
//!   config keys, and the pipeline-side `calculate_shift` (with the stage token count
//!   `pyramid_image_seq_len`), stage re-noise coefficients and block-noise factor.
//! * [`scheduling_unipc_multistep`]: diffusers `UniPCMultistepScheduler` with flow sigmas (Wan).
//! * [`scheduling_flow_match_euler_discrete`]: diffusers `FlowMatchEulerDiscreteScheduler` (fixed
//!   shift).
//! * [`unipc`]: the UniPC coefficients and [`SolverHistory`](unipc::SolverHistory), shared by
//!   `HeliosScheduler` and `UniPCMultistepScheduler`.
//! * [`stage_sampler`]: one stage of one chunk as `step(i, x, v)` (DMD or UniPC).

pub mod pyramid;
pub mod scheduling_flow_match_euler_discrete;
pub mod scheduling_helios;
pub mod scheduling_helios_dmd;
pub mod scheduling_unipc_multistep;
pub mod stage_sampler;
pub mod unipc;

pub use pyramid::{
    PredictionType, SchedulerError, StageSchedule, StageTables, TimeShiftType, block_noise_factor,
    calculate_shift, linspace, model_timestep, pyramid_image_seq_len,
};
pub use scheduling_helios_dmd::{DmdStep, HeliosDMDScheduler, HeliosDMDSchedulerConfig};
