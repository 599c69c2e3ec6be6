//! One stage of one chunk as `step(i, x, v)`: a `HeliosDMDScheduler` schedule (Helios-Distilled)
//! or a `HeliosScheduler` UniPC solver (Base, Mid), with the state the stage keeps between
//! steps. The coefficients come from the schedulers (host f64); this is the one place they
//! meet the latents.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::scheduling_helios::{HeliosSolver, SolverHistory};
use super::scheduling_helios_dmd::{HeliosDMDScheduler, StageSchedule};

/// The sampler of one pyramid stage (Base: the one full-resolution stage).
#[allow(clippy::large_enum_variant)] // a handful per chunk; boxing buys nothing
pub enum StageSampler<B: Backend> {
    /// DMD: `x0 = x − σ_t·v`, rounded to the prediction dtype (`x0_pred.to(original_dtype)`),
    /// then re-noised toward the stage's start point unless it is the last step.
    Dmd {
        scheduler: HeliosDMDScheduler,
        schedule: StageSchedule,
        /// The latents the stage began from (set by [`StageSampler::begin`]).
        start_point: Option<Tensor<B, 5>>,
        /// The transformer's dtype, to which `x0` is rounded.
        x0_dtype: DType,
    },
    /// UniPC multistep with its history of model outputs, fresh per stage (diffusers resets it
    /// at every `set_timesteps`).
    UniPc {
        solver: HeliosSolver,
        history: SolverHistory<Tensor<B, 5>>,
    },
}

impl<B: Backend> StageSampler<B> {
    /// A DMD stage of `scheduler` with the timesteps of `schedule`.
    pub fn dmd(scheduler: &HeliosDMDScheduler, schedule: StageSchedule, x0_dtype: DType) -> Self {
        Self::Dmd {
            scheduler: scheduler.clone(),
            schedule,
            start_point: None,
            x0_dtype,
        }
    }

    /// A UniPC stage.
    pub fn unipc(solver: HeliosSolver) -> Self {
        Self::UniPc {
            solver,
            history: SolverHistory::new(),
        }
    }

    /// `scheduler.timesteps` of the stage.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Self::Dmd { schedule, .. } => &schedule.timesteps,
            Self::UniPc { solver, .. } => solver.timesteps(),
        }
    }

    /// Start the stage at `x` `[1, C, T, h, w]` (f32).
    pub fn begin(&mut self, x: &Tensor<B, 5>) {
        if let Self::Dmd { start_point, .. } = self {
            *start_point = Some(x.clone());
        }
    }

    /// Step `i`: the latents after it, from the latents `x` and the guided prediction `v`
    /// (both `[1, C, T, h, w]`, f32).
    pub fn step(&mut self, i: usize, x: Tensor<B, 5>, v: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::Dmd {
                scheduler,
                schedule,
                start_point,
                x0_dtype,
            } => {
                let step = scheduler.step_coeffs(schedule, i);
                let x0 = (x - v.mul_scalar(step.sigma_t))
                    .cast(*x0_dtype)
                    .cast(DType::F32);
                match (step.next, start_point) {
                    (Some(sn), Some(start)) => {
                        x0.mul_scalar(1.0 - sn) + start.clone().mul_scalar(sn)
                    }
                    (Some(_), None) => unreachable!("begin() sets the start point"),
                    (None, _) => x0,
                }
            }
            Self::UniPc { solver, history } => {
                let plan = solver.step_plan(i);
                history.step(&plan, x, v, combine::<B>)
            }
        }
    }
}

/// `Σ c_k·t_k` for `SolverHistory::step`, each weight rounded to the tensor dtype first.
pub(crate) fn combine<B: Backend>(terms: &[(f64, &Tensor<B, 5>)]) -> Tensor<B, 5> {
    let (c0, t0) = terms[0];
    terms[1..]
        .iter()
        .fold(t0.clone().mul_scalar(c0 as f32), |acc, (c, t)| {
            acc + (*t).clone().mul_scalar(*c as f32)
        })
}
