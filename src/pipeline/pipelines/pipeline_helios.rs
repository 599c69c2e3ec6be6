//! Mirrors diffusers 0.42.1 `pipelines/helios/pipeline_helios.py` `HeliosPipeline` (Helios-Base,
//! stage 1 only), text-to-video.
//!
//! Base runs the chunk loop of [`super::pipeline_helios_pyramid`] (history, anchor frame, chunk
//! decoding are identical) with one full-resolution stage: the loaded type is
//! [`HeliosPyramidPipeline`](super::pipeline_helios_pyramid::HeliosPyramidPipeline) with
//! [`Variant::Base`](super::pipeline_helios_pyramid::Variant::Base). What is Base-specific lives
//! here:
//! - `sigmas = np.linspace(0.999, 0.0, num_inference_steps + 1)[:-1]` ([`base_sigmas`]);
//! - μ = `calculate_shift(T·(H/8)·(W/8) / (p_t·p_h·p_w))` once per request, at full resolution
//!   (the `stage0` token count of a one-stage pyramid);
//! - `scheduler.set_timesteps(N, sigmas=sigmas, mu=mu)` → UniPC steps ([`base_solver`]);
//! - the transformer gets the **float** timestep (`t.expand(B)`, no `int64` cast, unlike the
//!   pyramid pipeline);
//! - standard CFG with the negative prompt (`guidance_scale > 1`): cond and uncond as one batch-2
//!   transformer call per step (pinned by `tests/pipeline_base.rs`).
//!
//! Pinned by `tests/pipeline_base.rs` against `reference/pipeline_base.safetensors`.

use crate::pipeline::schedulers::SchedulerError;
use crate::pipeline::schedulers::linspace;
use crate::pipeline::schedulers::scheduling_helios::{HeliosScheduler, HeliosSolver};

/// `np.linspace(0.999, 0.0, n + 1)[:-1]` (float64), the sigmas `HeliosPipeline.__call__` passes
/// to `set_timesteps`.
pub fn base_sigmas(num_inference_steps: usize) -> Vec<f64> {
    let mut s = linspace(0.999, 0.0, num_inference_steps + 1);
    s.pop();
    s
}

/// `scheduler.set_timesteps(n, sigmas=base_sigmas(n), mu=mu)`: the solver of one Base chunk.
///
/// # Errors
/// [`SchedulerError`] when the scheduler is not one-stage or `mu` is missing.
pub fn base_solver(
    scheduler: &HeliosScheduler,
    num_inference_steps: usize,
    mu: f64,
) -> Result<HeliosSolver, SchedulerError> {
    let sigmas = base_sigmas(num_inference_steps);
    scheduler.set_timesteps(num_inference_steps, None, Some(&sigmas), Some(mu))
}
