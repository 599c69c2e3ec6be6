//! Mirrors diffusers 0.42.1 `schedulers/scheduling_helios_dmd.py` `HeliosDMDScheduler`
//! (Helios-Distilled): the stage tables, `set_timesteps` for one pyramid stage, and the DMD step as
//! coefficients.
//!
//! Everything here runs on the host in `f64` (style rule 7). No tensors are touched: the scheduler
//! hands out tables ([`StageSchedule`]) and per-step coefficients ([`DmdStep`]); the pipeline
//! combines tensors with them. The stage tables, `time_shift`, `calculate_shift`, the re-noise
//! coefficients and the block-noise factor are shared with `HeliosScheduler` and live in
//! [`pyramid`](super::pyramid), with their units and precision notes.
//!
//! # Precision
//! As in [`pyramid`](super::pyramid): the `stages > 1` branch of `set_timesteps` is float64 like
//! diffusers, the `stages == 1` branch rounds through `f32` where diffusers is in float32 (the
//! Helios checkpoints use `stages = 3`); timesteps are truncated to integers only where diffusers
//! truncates ([`model_timestep`], the lookups in [`HeliosDMDScheduler::step_coeffs`]).
//!
//! # Deliberate divergences
//! * `set_timesteps` is pure: it returns a [`StageSchedule`] instead of mutating `self.timesteps`
//!   / `self.sigmas`.
//! * Conflicting options fail at construction ([`HeliosDMDScheduler::new`]), where diffusers
//!   asserts inside `set_timesteps` (`shift != 1` with `use_dynamic_shifting`) or fails later.
//! * [`block_noise_factor`] never fails: for `gamma = 1/3` (singular covariance, where
//!   `torch.linalg.cholesky` raises) it returns the symmetric square root.
//!
//! The parity tests are in `tests/scheduler_dmd.rs` (tables against diffusers' own, ≤ 1e-10).

use super::pyramid::{
    ScheduleEnd, SchedulerError, TimeShiftType, pyramid_config, pyramid_scheduler,
    single_stage_f32_schedule,
};
// The pipeline and `omni bench` import these from here; they are shared with `HeliosScheduler`.
pub use super::pyramid::{
    StageSchedule, block_noise_factor, model_timestep, pyramid_image_seq_len,
};

/// `_class_name` a DMD `scheduler_config.json` must carry.
pub const CLASS_NAME: &str = "HeliosDMDScheduler";

pyramid_config! {
    class CLASS_NAME;
    /// `scheduler/scheduler_config.json` of a DMD (Helios-Distilled) checkpoint, read as shipped.
    ///
    /// Key names are the JSON keys; defaults are the diffusers `HeliosDMDScheduler.__init__`
    /// defaults and, for the four `calculate_shift` keys, the `config.get(..., default)` fallbacks
    /// of `HeliosPyramidPipeline.__call__`. Integers written as floats (`1000.0`) are accepted. The
    /// keys shared with `HeliosSchedulerConfig` are declared by
    /// [`pyramid_config!`](super::pyramid); the ones below are `HeliosDMDScheduler`'s own. Keys
    /// this struct does not know land in [`unknown`](Self::unknown);
    /// [`unknown_keys`](Self::unknown_keys) lists the ones a caller should warn about.
    pub struct HeliosDMDSchedulerConfig {
        /// Stored by diffusers, never read by the DMD scheduler. Default true.
        pub use_flow_sigmas: bool = true,
        /// Default [`TimeShiftType::Linear`].
        pub time_shift_type: TimeShiftType = TimeShiftType::Linear,
        /// Not a diffusers `HeliosDMDScheduler` argument (diffusers warns and drops it); vllm-omni
        /// keys "distilled" off `"dmd"`. Accepted if absent or `"dmd"`.
        pub scheduler_type: Option<String> = None,
    }
}

impl HeliosDMDSchedulerConfig {
    /// Checks the class name, ranges and option conflicts (the shared keys as in
    /// [`pyramid`](super::pyramid), then `scheduler_type`).
    pub fn validate(&self) -> Result<(), SchedulerError> {
        self.keys().validate(CLASS_NAME)?;
        if let Some(t) = &self.scheduler_type
            && t != "dmd"
        {
            return Err(SchedulerError::Invalid(format!(
                "scheduler_type `{t}` conflicts with _class_name {CLASS_NAME} (expected `dmd`)"
            )));
        }
        Ok(())
    }
}

/// Scalars of one DMD step (diffusers `HeliosDMDScheduler.step`).
///
/// With `v` the model output, `x` the current latents and `start_point` the stage's start tensor
/// (`start_point_list[stage]` in the pipeline: the initial noise for stage 0, the re-noised
/// upsampled latents for stages ≥ 1), the tensor side computes
/// ```text
/// x0 = x − sigma_t · v                              # convert_flow_pred_to_x0
/// x' = (1 − s) · x0 + s · start_point   if next = Some(s)   # add_noise (re-noise, no fresh noise)
/// x' = x0                               if next = None      # last step of the stage
/// ```
/// diffusers dtypes: `x0` is computed in float64 and cast to the model-output dtype (bf16); the
/// re-noise multiplies by a float64 sigma tensor (so it runs in float64) and is cast to the start
/// point's dtype (fp32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DmdStep {
    /// σ of the current step, used for `x0 = x − σ·v`.
    pub sigma_t: f64,
    /// σ of the next step, used to re-noise `x0` towards the start point; `None` on the last step.
    pub next: Option<f64>,
}

/// Index of the table timestep closest to `trunc(t)`: diffusers'
/// `torch.argmin((timesteps.unsqueeze(0) − timestep.unsqueeze(1)).abs(), dim=1)` with `timestep`
/// made by `torch.full(..., t, dtype=torch.long)` (truncation). Ties go to the first index, as
/// `torch.argmin` does.
fn argmin_timestep(timesteps: &[f64], t: f64) -> usize {
    let target = model_timestep(t);
    let mut best = 0;
    let mut best_d = f64::INFINITY;
    for (j, &tj) in timesteps.iter().enumerate() {
        let d = (tj - target).abs();
        if d < best_d {
            best = j;
            best_d = d;
        }
    }
    best
}

pyramid_scheduler! {
    /// diffusers `HeliosDMDScheduler`: pyramid-stage tables (`init_sigmas_for_each_stage`),
    /// per-stage schedules (`set_timesteps`) and the DMD step as coefficients (`step`).
    pub struct HeliosDMDScheduler(HeliosDMDSchedulerConfig);
}

impl HeliosDMDScheduler {
    /// `ori_start_sigmas`, `[stages]` (0.999, 0.666333, 0.333666 for the default config).
    pub fn ori_start_sigmas(&self) -> &[f64] {
        &self.tables.ori_start_sigmas
    }

    /// The schedule of one pyramid stage; mirrors diffusers `HeliosDMDScheduler.set_timesteps(
    /// num_inference_steps, stage_index, mu=mu, is_amplify_first_chunk=...)` (without `sigmas`,
    /// which the pyramid pipeline never passes).
    ///
    /// * The step count becomes `2n + 1` (amplified first chunk) or `n + 1`, a `linspace` of that
    ///   many points is laid over the stage's timestep window and over `0.999 → ~0`, a 0 is
    ///   appended to the sigmas, then the last timestep and the second-to-last sigma are dropped:
    ///   `n` (or `2n`) timesteps, one more sigma, the last sigma 0.
    /// * With `use_dynamic_shifting`, sigmas go through [`time_shift`](Self::time_shift)`(mu, ·)`
    ///   and timesteps become `t_min + σ·(t_max − t_min)` over the stage window (`stages > 1`) or
    ///   `σ·N` (`stages = 1`). `mu` is required then and ignored otherwise.
    /// * `stages > 1`: float64 throughout, like diffusers. `stages = 1`: diffusers starts from a
    ///   float32 numpy array, so values are rounded through `f32` at the same points.
    ///
    /// `stage_index` must be below `stages` (for `stages = 1` diffusers ignores it; here it must be
    /// 0). Returns `timesteps: [n]`, `sigmas: [n + 1]` (empty / `[0]` for `n = 0`).
    pub fn set_timesteps(
        &self,
        num_inference_steps: usize,
        stage_index: usize,
        mu: Option<f64>,
        is_amplify_first_chunk: bool,
    ) -> Result<StageSchedule, SchedulerError> {
        let c = &self.config;
        if stage_index >= c.stages {
            return Err(SchedulerError::StageOutOfRange {
                stage: stage_index,
                stages: c.stages,
            });
        }
        let mu = c.keys().dynamic_mu(mu)?;
        let n = if is_amplify_first_chunk {
            num_inference_steps * 2 + 1
        } else {
            num_inference_steps + 1
        };
        Ok(if c.stages == 1 {
            single_stage_f32_schedule(
                c.num_train_timesteps,
                c.shift,
                c.time_shift_type,
                n,
                mu,
                ScheduleEnd::DmdDrop,
                stage_index,
            )
        } else {
            let shifting = mu.map(|mu| (c.time_shift_type, mu));
            self.tables
                .stage_schedule(stage_index, n, shifting, ScheduleEnd::DmdDrop)
        })
    }

    /// The DMD update of step `i` of `schedule` as scalars; mirrors `HeliosDMDScheduler.step(
    /// model_output, t, sample, cur_sampling_step=i, dmd_sigmas=scheduler.sigmas,
    /// dmd_timesteps=scheduler.timesteps, all_timesteps=timesteps)` as the pyramid pipeline calls
    /// it (see [`DmdStep`] for the tensor formula).
    ///
    /// diffusers does not index `sigmas[i]` directly: both `convert_flow_pred_to_x0` and
    /// `add_noise` truncate the timestep to `int64` (`torch.full(..., dtype=torch.long)`) and take
    /// the sigma at `argmin |timesteps − trunc(t)|` (first index on ties). That is:
    /// `sigma_t = sigmas[argmin |timesteps − trunc(timesteps[i])|]` and, unless `i` is the last
    /// step, `next = sigmas[argmin |timesteps − trunc(timesteps[i + 1])|]`. With timesteps more
    /// than 1 apart (all Helios schedules) the argmin is `i` resp. `i + 1`; with denser schedules
    /// it can pick a neighbour, and this mirrors that too. The trailing `sigmas[n] = 0` is never
    /// used.
    ///
    /// # Panics
    /// If `i >= schedule.len()`.
    pub fn step_coeffs(&self, schedule: &StageSchedule, i: usize) -> DmdStep {
        let ts = &schedule.timesteps;
        assert!(
            i < ts.len(),
            "step_coeffs: step {i} out of range for a {}-step schedule",
            ts.len()
        );
        let sigma_t = schedule.sigmas[argmin_timestep(ts, ts[i])];
        let next = (i + 1 < ts.len()).then(|| schedule.sigmas[argmin_timestep(ts, ts[i + 1])]);
        DmdStep { sigma_t, next }
    }
}
