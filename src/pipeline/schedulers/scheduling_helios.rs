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
//! # The UniPC step as a linear combination
//! Step `i` gets the latents `x_i` (what the model saw) and the model output `v_i` (flow velocity),
//! and keeps three tensors from earlier steps: `last` (the corrected sample of step `i − 1`, the
//! input of its predictor, diffusers `self.last_sample`) and the two previous data predictions
//! `x0_{i−1}`, `x0_{i−2}` (diffusers `self.model_outputs`). With the scalars of [`UniPcStep`]:
//! ```text
//! x0_i  = x_i − sigma·v_i                                              # convert_model_output
//! x_i^c = c.last·last + c.x0[0]·x0_i + c.x0[1]·x0_{i−1} + c.x0[2]·x0_{i−2}   # multistep_uni_c_bh_update (i > 0)
//! x_i^c = x_i                                                          # no corrector (i = 0)
//! x_{i+1} = p.sample·x_i^c + p.x0[0]·x0_i + p.x0[1]·x0_{i−1}           # multistep_uni_p_bh_update
//! then: last ← x_i^c, x0_{i−2} ← x0_{i−1}, x0_{i−1} ← x0_i
//! ```
//! A zero coefficient (order-1 terms, a missing history entry) means "leave the term out"; the
//! terms that need a tensor the history does not have yet are always zero.
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

/// `solver_type` of the UniPC B(h) function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverType {
    /// `B(h) = h` (with `h` the signed step, `−h` under `predict_x0`).
    Bh1,
    /// `B(h) = expm1(h)` (the default). diffusers maps `midpoint`, `heun` and `logrho` to `bh2`
    /// (with a `register_to_config`), so they are accepted as aliases.
    #[serde(alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
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

/// The scalars of one scheduler step; see the module docs for how the tensors combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepPlan {
    /// `step_euler`.
    Euler(EulerStep),
    /// `step_unipc`.
    UniPc(UniPcStep),
}

/// diffusers `step_euler`: `x_{i+1} = x_i + dt·v_i` (`x_i` upcast to f32, result cast to the
/// model-output dtype).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EulerStep {
    /// `sigmas[i + 1] − sigmas[i]` (negative).
    pub dt: f64,
}

/// diffusers `step_unipc` at step `i`:
/// ```text
/// x0_i    = x_i − sigma·v_i
/// x_i^c   = corrector.last·last + Σ_k corrector.x0[k]·x0_{i−k}      (if corrector is Some)
/// x_{i+1} = predictor.sample·x_i^c + Σ_k predictor.x0[k]·x0_{i−k}
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcStep {
    /// Step index `i`.
    pub step_index: usize,
    /// `sigmas[i]` of `convert_model_output` (`x0 = sample − sigma·model_output`).
    pub sigma: f64,
    /// `multistep_uni_c_bh_update`, present for `i > 0` unless `disable_corrector` holds `i − 1`.
    pub corrector: Option<UniCCoeffs>,
    /// `multistep_uni_p_bh_update`.
    pub predictor: UniPCoeffs,
}

/// Corrector weights: `x_i^c = last·x_{i−1}^c + x0[0]·x0_i + x0[1]·x0_{i−1} + x0[2]·x0_{i−2}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniCCoeffs {
    /// UniC order `p` (= the previous predictor's order); `x0[2]` is 0 unless `p = 2`.
    pub order: usize,
    /// Weight of `last`, the corrected sample of step `i − 1` (`σ̂_i / σ̂_{i−1}`).
    pub last: f64,
    /// Weights of `x0_i`, `x0_{i−1}`, `x0_{i−2}`.
    pub x0: [f64; 3],
}

/// Predictor weights: `x_{i+1} = sample·x_i^c + x0[0]·x0_i + x0[1]·x0_{i−1}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPCoeffs {
    /// UniP order `p` (1 or 2); `x0[1]` is 0 unless `p = 2`.
    pub order: usize,
    /// Weight of the (corrected) sample `x_i^c` (`σ̂_{i+1} / σ̂_i`).
    pub sample: f64,
    /// Weights of `x0_i`, `x0_{i−1}`.
    pub x0: [f64; 2],
}

/// `_sigma_to_alpha_sigma_t`.
fn alpha_sigma(use_flow_sigmas: bool, sigma: f64) -> (f64, f64) {
    if use_flow_sigmas {
        (1.0 - sigma, sigma.max(SIGMA_CLAMP))
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

/// `torch.log(alpha_t) − torch.log(sigma_t)`.
fn lambda(alpha_sigma: (f64, f64)) -> f64 {
    alpha_sigma.0.ln() - alpha_sigma.1.ln()
}

/// `hh = −h` (predict_x0), `h_phi_1 = expm1(hh)`, `B_h`, and the `b` vector of the UniPC
/// `R·ρ = b` system for `order` (the loop over `h_phi_k` / `factorial_i` in diffusers).
fn phi_terms(solver_type: SolverType, h: f64, order: usize) -> (f64, f64, Vec<f64>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = match solver_type {
        SolverType::Bh1 => hh,
        SolverType::Bh2 => hh.exp_m1(),
    };
    let mut factorial_i = 1.0;
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        b.push(h_phi_k * factorial_i / b_h);
        factorial_i *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial_i;
    }
    (h_phi_1, b_h, b)
}

/// The schedule of one `set_timesteps` call plus the solver history (diffusers'
/// `model_outputs` / `lower_order_nums` / `this_order` / `last_sample` bookkeeping, as scalars).
#[derive(Debug, Clone)]
pub struct HeliosSolver {
    config: HeliosSchedulerConfig,
    schedule: StageSchedule,
    /// The step `step_plan` expects next (diffusers `_step_index`).
    next_step: usize,
    /// diffusers `lower_order_nums`.
    lower_order_nums: usize,
    /// diffusers `this_order` of the last predictor (0 before the first step).
    this_order: usize,
}

impl HeliosSolver {
    fn new(config: HeliosSchedulerConfig, schedule: StageSchedule) -> Self {
        Self {
            config,
            schedule,
            next_step: 0,
            lower_order_nums: 0,
            this_order: 0,
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
            SchedulerType::Unipc => StepPlan::UniPc(self.unipc_step(i)),
        }
    }

    fn unipc_step(&mut self, i: usize) -> UniPcStep {
        let c = &self.config;
        let sig = &self.schedule.sigmas;
        let a_s = |k: usize| alpha_sigma(c.use_flow_sigmas, sig[k]);
        let to_f32 = |x: f64| (x as f32) as f64; // `.to(x.dtype)` of rhos_c

        // Corrector (multistep_uni_c_bh_update), order = the previous predictor's.
        let use_corrector = i > 0 && !c.disable_corrector.contains(&(i - 1));
        let corrector = use_corrector.then(|| {
            let order = self.this_order;
            let (alpha_t, sigma_t) = a_s(i);
            let (alpha_s0, sigma_s0) = a_s(i - 1);
            let lambda_t = lambda((alpha_t, sigma_t));
            let lambda_s0 = lambda((alpha_s0, sigma_s0));
            let h = lambda_t - lambda_s0;
            let rk = (order == 2).then(|| (lambda(a_s(i - 2)) - lambda_s0) / h);
            let (h_phi_1, b_h, b) = phi_terms(c.solver_type, h, order);
            // rhos_c: [0.5] for order 1, else torch.linalg.solve(R, b), R = [[1, 1], [rk, 1]].
            let (rho_d1, rho_t) = match rk {
                None => (0.0, 0.5),
                Some(rk) => {
                    let (r0, r1) = solve2([[1.0, 1.0], [rk, 1.0]], [b[0], b[1]]);
                    (to_f32(r0), to_f32(r1))
                }
            };
            // x_t = σ_t/σ_s0·x − α_t·h_phi_1·m0 − α_t·B_h·(ρ0·(m1 − m0)/rk + ρ_t·(model_t − m0))
            let k = alpha_t * b_h;
            let d1 = rk.map_or(0.0, |rk| rho_d1 / rk);
            UniCCoeffs {
                order,
                last: sigma_t / sigma_s0,
                x0: [-k * rho_t, -alpha_t * h_phi_1 + k * d1 + k * rho_t, -k * d1],
            }
        });

        // Predictor (multistep_uni_p_bh_update).
        let n = self.len();
        let order = if c.lower_order_final {
            c.solver_order.min(n - i)
        } else {
            c.solver_order
        };
        let order = order.min(self.lower_order_nums + 1);
        self.this_order = order;
        if self.lower_order_nums < c.solver_order {
            self.lower_order_nums += 1;
        }
        let (alpha_t, sigma_t) = a_s(i + 1);
        let (alpha_s0, sigma_s0) = a_s(i);
        let lambda_s0 = lambda((alpha_s0, sigma_s0));
        let h = lambda((alpha_t, sigma_t)) - lambda_s0;
        let (h_phi_1, b_h, _) = phi_terms(c.solver_type, h, order);
        // x_t = σ_t/σ_s0·x − α_t·h_phi_1·m0 − α_t·B_h·0.5·(m1 − m0)/rk
        let d1 = if order == 2 {
            let rk = (lambda(a_s(i - 1)) - lambda_s0) / h;
            0.5 / rk
        } else {
            0.0
        };
        let k = alpha_t * b_h;
        let predictor = UniPCoeffs {
            order,
            sample: sigma_t / sigma_s0,
            x0: [-alpha_t * h_phi_1 + k * d1, -k * d1],
        };

        UniPcStep {
            step_index: i,
            sigma: sig[i],
            corrector,
            predictor,
        }
    }
}

/// Solves the 2×2 system `a·x = b` like LAPACK `gesv` (LU with partial pivoting), which
/// `torch.linalg.solve` calls on CPU.
fn solve2(a: [[f64; 2]; 2], b: [f64; 2]) -> (f64, f64) {
    let (r0, r1, b0, b1) = if a[1][0].abs() > a[0][0].abs() {
        (a[1], a[0], b[1], b[0])
    } else {
        (a[0], a[1], b[0], b[1])
    };
    let l = r1[0] / r0[0];
    let u11 = r1[1] - l * r0[1];
    let y1 = b1 - l * b0;
    let x1 = y1 / u11;
    let x0 = (b0 - r0[1] * x1) / r0[0];
    (x0, x1)
}

/// The tensors a UniPC run carries between steps (`last`, `x0_{i−1}`, `x0_{i−2}`), generic over
/// the tensor type, and the one place that applies a [`StepPlan`] to them.
///
/// `T` is whatever the caller combines: a Burn tensor in the pipeline, `Vec<f32>` in tests. Start
/// a new history with every [`HeliosSolver`] (every `set_timesteps`).
///
/// With Burn tensors the pipeline loop reads
/// ```text
/// let mut solver = scheduler.set_timesteps(n, Some(stage), None, Some(mu))?;
/// let mut history = SolverHistory::new();
/// for i in 0..solver.len() {
///     let v = guidance.apply(dit(&x, t[i]), …);              // f32 [B, C, T, H, W]
///     let plan = solver.step_plan(i);
///     x = history.step(&plan, x, v, |terms| {
///         terms[1..].iter().fold(terms[0].1.clone() * terms[0].0, |acc, (c, t)| acc + (*t).clone() * *c)
///     });
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SolverHistory<T> {
    last: Option<T>,
    x0_prev: Option<T>,
    x0_prev2: Option<T>,
}

impl<T> Default for SolverHistory<T> {
    fn default() -> Self {
        Self {
            last: None,
            x0_prev: None,
            x0_prev2: None,
        }
    }
}

impl<T: Clone> SolverHistory<T> {
    /// An empty history (step 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `plan` to `sample` (`x_i`) and `model_output` (`v_i`) and returns `x_{i+1}`.
    ///
    /// `combine(&[(c_0, t_0), (c_1, t_1), …])` must return `Σ c_k·t_k`, in the sample dtype
    /// (diffusers rounds each `c_k` to the tensor dtype before multiplying). Terms with a zero
    /// weight are never passed.
    ///
    /// # Panics
    /// If the plan needs a history tensor this history does not hold (plans out of order).
    pub fn step<F>(&mut self, plan: &StepPlan, sample: T, model_output: T, mut combine: F) -> T
    where
        F: FnMut(&[(f64, &T)]) -> T,
    {
        let mut lin = |terms: &[(f64, Option<&T>)]| {
            let terms: Vec<(f64, &T)> = terms
                .iter()
                .filter(|(c, _)| *c != 0.0)
                .map(|(c, t)| {
                    (
                        *c,
                        t.expect("SolverHistory: plan needs a missing history term"),
                    )
                })
                .collect();
            combine(&terms)
        };
        match plan {
            StepPlan::Euler(e) => lin(&[(1.0, Some(&sample)), (e.dt, Some(&model_output))]),
            StepPlan::UniPc(p) => {
                let x0 = lin(&[(1.0, Some(&sample)), (-p.sigma, Some(&model_output))]);
                let corrected = match &p.corrector {
                    Some(c) => lin(&[
                        (c.last, self.last.as_ref()),
                        (c.x0[0], Some(&x0)),
                        (c.x0[1], self.x0_prev.as_ref()),
                        (c.x0[2], self.x0_prev2.as_ref()),
                    ]),
                    None => sample,
                };
                let q = &p.predictor;
                let next = lin(&[
                    (q.sample, Some(&corrected)),
                    (q.x0[0], Some(&x0)),
                    (q.x0[1], self.x0_prev.as_ref()),
                ]);
                self.last = Some(corrected);
                self.x0_prev2 = self.x0_prev.take();
                self.x0_prev = Some(x0);
                next
            }
        }
    }
}
