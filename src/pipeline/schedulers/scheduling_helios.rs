//! Mirrors diffusers 0.42.1 `schedulers/scheduling_helios.py` `HeliosScheduler` (Helios-Base and
//! Helios-Mid): the stage tables, `set_timesteps` for one stage (Base) and for pyramid stages
//! (Mid), and the two step functions, `step_euler` and `step_unipc` (UniPC-p/UniC with the B(h)
//! variants `bh1`/`bh2`, `predict_x0`, flow sigmas, `lower_order_final`, the corrector).
//!
//! Everything here runs on the host in `f64` (style rule 7). The scheduler never touches a
//! tensor: [`HeliosScheduler::set_timesteps`] returns a [`HeliosSolver`] (the schedule plus a
//! fresh solver history), whose [`HeliosSolver::step_plan`] hands out the scalars of one step as
//! a [`StepPlan`]. The pipeline combines tensors with them, either by hand or through
//! [`SolverHistory::step`], which only needs a "linear combination of tensors" closure.
//!
//! The stage tables (`init_sigmas`, `init_sigmas_for_each_stage`) are identical to
//! `HeliosDMDScheduler`'s and come from [`StageTables`]; `linspace`, `time_shift`,
//! `calculate_shift`, the re-noise coefficients and
//! [`pyramid_image_seq_len`](super::pyramid_image_seq_len) are shared with
//! [`scheduling_helios_dmd`](super::scheduling_helios_dmd) as well: all live in
//! [`pyramid`](super::pyramid).
//!
//! # The UniPC step
//! The UniPC coefficients, the solver bookkeeping and [`SolverHistory`] are shared with
//! `UniPCMultistepScheduler` and live in [`unipc`](super::unipc) (the module docs there give the
//! linear combination); this file only adds the Helios flow-sigma clamp (`1e-8`).
//!
//! # Precision: where diffusers computes in what
//! * Tables and schedules: as in [`pyramid`](super::pyramid). The Base
//!   pipeline passes `sigmas = np.linspace(0.999, 0, N + 1)[:-1]` (float64), so the Base schedule
//!   is float64 (`torch.cat` with float32 zeros promotes); the `stages > 1` (Mid) branch is float64
//!   too. Only `stages == 1` *without* `sigmas` is float32 in diffusers; [`HeliosScheduler::
//!   set_timesteps`] rounds through `f32` at the same points there.
//! * UniPC scalars (`alpha_t`, `sigma_t`, `lambda`, `h`, `expm1`, `rks`, the `R`/`b` system and its
//!   `torch.linalg.solve`) are 0-d tensors of the sigma dtype (float64 for Base and Mid), computed
//!   here in `f64` with the same operation order. The corrector weights `rhos_c` are cast to the
//!   sample dtype (`.to(x.dtype)`, float32) in diffusers: [`UniPcStep`] rounds them through `f32`
//!   likewise. `rhos_p = 0.5` for order 2.
//! * Tensor arithmetic runs in the **sample dtype** (float32 latents in both pipelines; the model
//!   output may be bf16 and is promoted): every 0-d float64 scalar multiplying a float32 tensor is
//!   rounded to `f32` first, and the result is cast back to the sample dtype (`x_t.to(x.dtype)`).
//!   The Rust side expands diffusers' nested expressions (`x_t_ − α·B_h·(ρ·D1 + …)`, with
//!   `D1 = (m_i − m_0)/r_k`) into one combination per output, so results differ from diffusers by
//!   float32 rounding only (≤ 1e-5 over the 50-step Base sequence, pinned by
//!   `unipc_base50_sequence_matches_diffusers` in `tests/scheduler_helios.rs`).
//! * Euler: `x' = x.to(f32) + (σ_{i+1} − σ_i)·v`, the sigma difference in the sigma dtype, then
//!   `.to(model_output.dtype)`: the result has the **model-output** dtype (bf16 when the DiT runs
//!   in bf16), unlike UniPC.
//!
//! # Deliberate divergences
//! * `set_timesteps` does not mutate the scheduler: it returns a new [`HeliosSolver`], whose
//!   history starts empty. That *is* diffusers' `reset_scheduler_history()` at every
//!   `set_timesteps` (every pyramid stage and every chunk restarts at order 1), and it cannot be
//!   forgotten.
//! * Conflicting or unsupported options fail at construction ([`HeliosScheduler::new`]):
//!   `shift ≠ 1` with dynamic shifting (diffusers asserts in `set_timesteps`), `thresholding`
//!   (diffusers raises `AttributeError` at the first step: `_threshold_sample` is missing),
//!   `predict_x0 = false` with flow prediction (diffusers raises in `convert_model_output`),
//!   `solver_p` (a nested scheduler), `solver_order > 2` (this port solves the order ≤ 2 systems
//!   only) and `scheduler_type = "dmd"` (use `HeliosDMDScheduler`; `HeliosScheduler.step` has no
//!   DMD branch).
//! * `set_timesteps` rejects `sigmas` whose length is not `num_inference_steps` and `sigmas` for
//!   `stages > 1` (diffusers silently ignores them there); `is_amplify_first_chunk` is not an
//!   argument because `HeliosScheduler` only honours it with `scheduler_type = "dmd"`.
//! * `step_plan(i)` takes the step index explicitly and panics if steps are skipped or repeated
//!   (diffusers counts with `self._step_index`; its `begin_index` / `cus_*` overrides are not
//!   used by the Helios pipelines and not ported).
//!
//! The parity tests are in `tests/scheduler_helios.rs` (tables against diffusers' own ≤ 1e-10,
//! step sequences ≤ 1e-5).

use serde::Deserialize;

pub use super::unipc::{
    EulerStep, SolverHistory, SolverType, StepPlan, UniCCoeffs, UniPCoeffs, UniPcStep,
};
use super::unipc::{UniPcOptions, UniPcPlanner};

use super::pyramid::{
    ScheduleEnd, SchedulerError, StageSchedule, TimeShiftType, finish_schedule, integral_usize,
    pyramid_config, pyramid_scheduler, single_stage_f32_schedule,
};

/// `_class_name` a Base / Mid `scheduler_config.json` carries.
pub const CLASS_NAME: &str = "HeliosScheduler";

/// `torch.clamp(sigma, min=1e-8)` in `_sigma_to_alpha_sigma_t` (flow sigmas).
pub const SIGMA_CLAMP: f64 = 1e-8;

/// `scheduler_type`: which step function [`HeliosSolver::step_plan`] plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerType {
    /// `step_unipc` (the default, and what Base and Mid use).
    Unipc,
    /// `step_euler`: `x' = x + (σ_{i+1} − σ_i)·v`.
    Euler,
}

pyramid_config! {
    class CLASS_NAME;
    /// `scheduler/scheduler_config.json` of a Base or Mid checkpoint, read as shipped.
    ///
    /// Key names are the JSON keys; defaults are the diffusers `HeliosScheduler.__init__` defaults
    /// and, for the four `calculate_shift` keys, the `config.get(..., default)` fallbacks of the
    /// pipelines. Integers written as floats (`1000.0`) are accepted. The keys shared with
    /// `HeliosDMDSchedulerConfig` are declared by [`pyramid_config!`](super::pyramid); the ones
    /// below are `HeliosScheduler`'s own. Unknown keys land in [`unknown`](Self::unknown).
    pub struct HeliosSchedulerConfig {
        /// Not supported (must be false; diffusers' `HeliosScheduler` has no `_threshold_sample`).
        pub thresholding: bool = false,
        /// UniPC order, 1 or 2 here. Default 2.
        #[serde(deserialize_with = "integral_usize")]
        pub solver_order: usize = 2,
        /// UniPC data prediction. Default true (the only value diffusers can run with flow
        /// prediction).
        pub predict_x0: bool = true,
        /// Default [`SolverType::Bh2`].
        pub solver_type: SolverType = SolverType::Bh2,
        /// Lower the order on the last steps (`order ≤ steps left`). Default true.
        pub lower_order_final: bool = true,
        /// Steps `k` after which no corrector runs (diffusers skips the corrector of step `k + 1`).
        /// Default empty.
        pub disable_corrector: Vec<usize> = Vec::new(),
        /// A nested predictor scheduler in diffusers; must be null here.
        pub solver_p: Option<serde_json::Value> = None,
        /// `alpha = 1 − σ`, `sigma = max(σ, 1e-8)` (true, the default) or the VP mapping
        /// `alpha = 1/√(σ²+1)`, `sigma = σ·alpha`.
        pub use_flow_sigmas: bool = true,
        /// Default [`SchedulerType::Unipc`].
        pub scheduler_type: SchedulerType = SchedulerType::Unipc,
        /// Default [`TimeShiftType::Exponential`] (unlike the DMD scheduler's linear default).
        pub time_shift_type: TimeShiftType = TimeShiftType::Exponential,
    }
}

impl HeliosSchedulerConfig {
    /// Checks the class name, ranges, option conflicts and unsupported options (see the module
    /// docs).
    pub fn validate(&self) -> Result<(), SchedulerError> {
        self.keys().validate(CLASS_NAME)?;
        let invalid = |m: String| Err(SchedulerError::Invalid(m));
        if self.thresholding {
            return invalid("thresholding is not supported by HeliosScheduler".to_string());
        }
        if !self.predict_x0 {
            return invalid(
                "predict_x0 = false conflicts with prediction_type = flow_prediction".to_string(),
            );
        }
        if !(1..=2).contains(&self.solver_order) {
            return invalid(format!(
                "solver_order must be 1 or 2, got {}",
                self.solver_order
            ));
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return invalid("solver_p (a nested predictor scheduler) is not supported".to_string());
        }
        Ok(())
    }
}

pyramid_scheduler! {
    /// diffusers `HeliosScheduler`: stage tables, schedules and step coefficients.
    pub struct HeliosScheduler(HeliosSchedulerConfig);
}

impl HeliosScheduler {
    /// Mirrors diffusers `HeliosScheduler.set_timesteps(num_inference_steps, stage_index,
    /// sigmas=sigmas, mu=mu)` and returns the schedule with a fresh solver history.
    ///
    /// * `stages == 1` (Base): `stage_index` is ignored (diffusers too). With `sigmas` (the Base
    ///   pipeline passes `linspace(0.999, 0, N + 1)[:-1]`, float64) the timesteps are `σ·N`;
    ///   without, `linspace(1, 1/N, n + 1)[:-1]` in float32 (plus the fixed `shift`).
    /// * `stages > 1` (Mid): `stage_index` is required; `timesteps = linspace(tps[s][0],
    ///   tps[s][-1], n)`, `sigmas = linspace(0.999, σps[s][-1], n)`.
    /// * A 0 is appended to the sigmas; with `use_dynamic_shifting` they go through
    ///   [`time_shift`](Self::time_shift)`(mu, ·)` and the timesteps become `σ·N` (one stage) or
    ///   `t_min + σ·(t_max − t_min)` over the stage window. `mu` is required then, ignored
    ///   otherwise.
    ///
    /// Returns `timesteps: [n]`, `sigmas: [n + 1]` (last 0) inside a [`HeliosSolver`].
    pub fn set_timesteps(
        &self,
        num_inference_steps: usize,
        stage_index: Option<usize>,
        sigmas: Option<&[f64]>,
        mu: Option<f64>,
    ) -> Result<HeliosSolver, SchedulerError> {
        let c = &self.config;
        let n = num_inference_steps;
        let mu = c.keys().dynamic_mu(mu)?;
        let schedule = if c.stages == 1 {
            match sigmas {
                Some(given) => self.given_sigmas_schedule(given, n, mu)?,
                None => single_stage_f32_schedule(
                    c.num_train_timesteps,
                    c.shift,
                    c.time_shift_type,
                    n,
                    mu,
                    ScheduleEnd::Keep,
                    0,
                ),
            }
        } else {
            if sigmas.is_some() {
                return Err(SchedulerError::Invalid(
                    "custom sigmas only apply to a one-stage scheduler (diffusers ignores them for stages > 1)"
                        .to_string(),
                ));
            }
            let stage = stage_index.unwrap_or(usize::MAX);
            if stage >= c.stages {
                return Err(SchedulerError::StageOutOfRange {
                    stage,
                    stages: c.stages,
                });
            }
            let shifting = mu.map(|mu| (c.time_shift_type, mu));
            self.tables
                .stage_schedule(stage, n, shifting, ScheduleEnd::Keep)
        };
        Ok(HeliosSolver::new(self.config.clone(), schedule))
    }

    /// `stages == 1` with the caller's float64 `sigmas` (the Base pipeline's): a 0 appended,
    /// shifted by `mu` if given, `timesteps = σ·N`.
    fn given_sigmas_schedule(
        &self,
        given: &[f64],
        n: usize,
        mu: Option<f64>,
    ) -> Result<StageSchedule, SchedulerError> {
        if given.len() != n {
            return Err(SchedulerError::Invalid(format!(
                "set_timesteps got {} sigmas for {n} inference steps",
                given.len()
            )));
        }
        let nf = self.config.num_train_timesteps as f64;
        let kind = self.config.time_shift_type;
        let (timesteps, sigmas) = finish_schedule(
            given.iter().map(|s| s * nf).collect(),
            given.to_vec(),
            ScheduleEnd::Keep,
            mu.map(|mu| move |s| kind.apply(mu, s)),
            |s| s * nf,
        );
        Ok(StageSchedule {
            stage_index: 0,
            timesteps,
            sigmas,
        })
    }
}

/// The schedule of one `set_timesteps` call plus the solver history (diffusers'
/// `model_outputs` / `lower_order_nums` / `this_order` / `last_sample` bookkeeping, as scalars).
#[derive(Debug, Clone)]
pub struct HeliosSolver {
    config: HeliosSchedulerConfig,
    schedule: StageSchedule,
    /// The step `step_plan` expects next (diffusers `_step_index`).
    next_step: usize,
    /// The UniPC bookkeeping (unused by `scheduler_type = "euler"`).
    planner: UniPcPlanner,
}

impl HeliosSolver {
    fn new(config: HeliosSchedulerConfig, schedule: StageSchedule) -> Self {
        let planner = UniPcPlanner::new(UniPcOptions {
            solver_order: config.solver_order,
            solver_type: config.solver_type,
            lower_order_final: config.lower_order_final,
            disable_corrector: config.disable_corrector.clone(),
            use_flow_sigmas: config.use_flow_sigmas,
            flow_sigma_clamp: Some(SIGMA_CLAMP),
        });
        Self {
            config,
            schedule,
            next_step: 0,
            planner,
        }
    }

    /// The schedule (`timesteps: [n]`, `sigmas: [n + 1]`).
    pub fn schedule(&self) -> &StageSchedule {
        &self.schedule
    }

    /// `scheduler.timesteps` (float; the Mid pipeline feeds the DiT `trunc(t)`, see
    /// [`model_timestep`](super::model_timestep); Base feeds the float).
    pub fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    /// `scheduler.sigmas`, `[n + 1]`, last 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.schedule.sigmas
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.schedule.timesteps.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.schedule.timesteps.is_empty()
    }

    /// The scalars of step `i` (diffusers `step`), advancing the history.
    ///
    /// # Panics
    /// If `i` is not the next step (steps must be planned in order `0, 1, …, n − 1`, once each).
    pub fn step_plan(&mut self, i: usize) -> StepPlan {
        assert!(
            i == self.next_step && i < self.len(),
            "step_plan: expected step {} of {}, got {i}",
            self.next_step,
            self.len()
        );
        self.next_step += 1;
        let sig = &self.schedule.sigmas;
        match self.config.scheduler_type {
            SchedulerType::Euler => StepPlan::Euler(EulerStep {
                dt: sig[i + 1] - sig[i],
            }),
            SchedulerType::Unipc => StepPlan::UniPc(self.planner.plan(sig, i)),
        }
    }
}
