//! Mirrors diffusers 0.42.1 `schedulers/scheduling_unipc_multistep.py` `UniPCMultistepScheduler`
//! in the configuration every diffusers Wan checkpoint ships: `use_flow_sigmas = true`,
//! `prediction_type = "flow_prediction"`, `predict_x0 = true`, a fixed `flow_shift`.
//!
//! Host `f64` like the Helios schedulers (style rule 7). [`UniPCMultistepScheduler::set_timesteps`]
//! returns a [`UniPcSolver`]: the schedule plus a fresh solver history, whose
//! [`UniPcSolver::step_plan`] hands out the scalars of one step; the UniPC algebra and the tensor
//! combination ([`SolverHistory`](super::unipc::SolverHistory)) are shared with `HeliosScheduler`
//! in [`unipc`](super::unipc).
//!
//! # Precision: where diffusers computes in what
//! * `set_timesteps` (flow branch): `sigmas = linspace(1, 1/N, n + 1)[:-1]`, shifted
//!   `shift·σ / (1 + (shift − 1)·σ)`, the first one lowered by `1e-6` if it is within `1e-6` of 1,
//!   all numpy float64; `timesteps = (σ·N).astype(int64)` (**truncated**); the sigmas, with the
//!   final one appended, are cast to **float32**. Both are reproduced exactly here
//!   ([`UniPcSolver::sigmas`] holds the float32 values as `f64`, [`UniPcSolver::timesteps`] the
//!   integers as `f64`).
//! * The step scalars (`alpha_t`, `lambda`, `h`, `expm1`, the `R·ρ = b` system) are float32 0-d
//!   tensors in diffusers (the sigmas are float32); they are computed here in `f64` from the same
//!   float32 sigmas, so they differ by float32 rounding only. The step outputs agree within
//!   `1e-5` (`tests/scheduler_wan.rs`).
//! * No flow-sigma clamp: the last step has `σ_{n} = 0`, `λ = +∞`, `expm1(−∞) = −1`, so the
//!   final sample is the data prediction, exactly as in torch.
//!
//! # Deliberate divergences
//! * Only the flow-sigma configuration is ported: `use_flow_sigmas = false`, another
//!   `prediction_type`, `predict_x0 = false`, `thresholding`, `solver_p`, karras / exponential /
//!   beta sigmas, `use_dynamic_shifting`, `shift_terminal` and `solver_order > 2` fail at
//!   construction with a message naming the key (diffusers accepts them; no Wan checkpoint uses
//!   them).
//! * `set_timesteps` does not take custom `sigmas` (the Wan pipelines never pass them) and does
//!   not mutate the scheduler (see [`UniPcSolver`]).

use std::path::Path;

use serde::Deserialize;

use super::pyramid::{SchedulerError, integral_usize, parse_config, read_config};
use super::unipc::{SolverType, StepPlan, UniPcOptions, UniPcPlanner};

/// `_class_name` of the scheduler config.
pub const CLASS_NAME: &str = "UniPCMultistepScheduler";

/// `eps` of `set_timesteps`: a first sigma within this of 1 is lowered by it ("to avoid inf
/// torch.log(alpha_si)").
pub const FIRST_SIGMA_EPS: f64 = 1e-6;

/// `final_sigmas_type`: the sigma appended after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// 0 (the default; the last step lands on the data prediction).
    Zero,
    /// The last sigma of the schedule, repeated.
    SigmaMin,
}

fn d_num_train_timesteps() -> usize {
    1000
}
fn d_solver_order() -> usize {
    2
}
fn d_prediction_type() -> String {
    "epsilon".to_string()
}
fn d_true() -> bool {
    true
}
fn d_flow_shift() -> f64 {
    1.0
}
fn d_solver_type() -> SolverType {
    SolverType::Bh2
}
fn d_final_sigmas_type() -> FinalSigmasType {
    FinalSigmasType::Zero
}
fn d_timestep_spacing() -> String {
    "linspace".to_string()
}

/// `scheduler/scheduler_config.json` of a Wan checkpoint, read as shipped. Key names are the JSON
/// keys, defaults the `UniPCMultistepScheduler.__init__` ones (so a config that omits
/// `use_flow_sigmas` is rejected by [`validate`](Self::validate), as diffusers' default is VP
/// sigmas). Keys that only matter for the VP branches (`beta_*`, `trained_betas`,
/// `rescale_betas_zero_snr`, `dynamic_thresholding_ratio`, `sample_max_value`, `steps_offset`,
/// `timestep_spacing`, `time_shift_type`, `sigma_min`, `sigma_max`) are read and ignored; other
/// unknown keys land in [`unknown`](Self::unknown).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UniPCMultistepSchedulerConfig {
    /// Must be `UniPCMultistepScheduler` when present.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// `N`, default 1000.
    #[serde(default = "d_num_train_timesteps", deserialize_with = "integral_usize")]
    pub num_train_timesteps: usize,
    /// 1 or 2 here (default 2).
    #[serde(default = "d_solver_order", deserialize_with = "integral_usize")]
    pub solver_order: usize,
    /// Must be `"flow_prediction"` here (diffusers' default is `"epsilon"`).
    #[serde(default = "d_prediction_type")]
    pub prediction_type: String,
    /// Must be false.
    #[serde(default)]
    pub thresholding: bool,
    /// Must be true (default).
    #[serde(default = "d_true")]
    pub predict_x0: bool,
    /// Default `bh2` (`midpoint`, `heun`, `logrho` are aliases, as in diffusers).
    #[serde(default = "d_solver_type")]
    pub solver_type: SolverType,
    /// Default true.
    #[serde(default = "d_true")]
    pub lower_order_final: bool,
    /// Steps after which no corrector runs. Default empty.
    #[serde(default)]
    pub disable_corrector: Vec<usize>,
    /// Must be null.
    #[serde(default)]
    pub solver_p: Option<serde_json::Value>,
    /// Must be false.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Must be false.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Must be false.
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Must be true here (diffusers' default is false).
    #[serde(default)]
    pub use_flow_sigmas: bool,
    /// The fixed shift `s` of `s·σ / (1 + (s − 1)·σ)`. Default 1.0 (Wan repos: 3.0, see
    /// `wan.md` §0 for the official values per model).
    #[serde(default = "d_flow_shift")]
    pub flow_shift: f64,
    /// Default [`FinalSigmasType::Zero`].
    #[serde(default = "d_final_sigmas_type")]
    pub final_sigmas_type: FinalSigmasType,
    /// Must be false.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// Must be null.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    /// Only used by the VP branches (ignored; flow sigmas do not depend on it).
    #[serde(default = "d_timestep_spacing")]
    pub timestep_spacing: String,
    /// Every other key (`_diffusers_version`, the `beta_*` keys, …), kept for warnings.
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, serde_json::Value>,
}

impl Default for UniPCMultistepSchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every key has a default")
    }
}

impl UniPCMultistepSchedulerConfig {
    /// The Wan configuration (`use_flow_sigmas`, `flow_prediction`) with `flow_shift`.
    pub fn wan(flow_shift: f64) -> Self {
        Self {
            class_name: Some(CLASS_NAME.to_string()),
            prediction_type: "flow_prediction".to_string(),
            use_flow_sigmas: true,
            flow_shift,
            ..Self::default()
        }
    }

    /// Keys of [`unknown`](Self::unknown) that diffusers reads but that do not affect the flow
    /// branch (not worth a warning).
    pub const IGNORED_KEYS: &'static [&'static str] = &[
        "_diffusers_version",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "rescale_betas_zero_snr",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "steps_offset",
        "time_shift_type",
        "sigma_min",
        "sigma_max",
    ];

    /// Unknown keys that are not in [`IGNORED_KEYS`](Self::IGNORED_KEYS).
    pub fn unexpected_keys(&self) -> Vec<&str> {
        self.unknown
            .keys()
            .map(String::as_str)
            .filter(|k| !Self::IGNORED_KEYS.contains(k))
            .collect()
    }

    /// Checks the class name and rejects what this port does not run (see the module docs).
    pub fn validate(&self) -> Result<(), SchedulerError> {
        if let Some(found) = &self.class_name
            && found != CLASS_NAME
        {
            return Err(SchedulerError::WrongClass {
                found: found.clone(),
                expected: CLASS_NAME,
            });
        }
        let invalid = |m: &str| Err(SchedulerError::Invalid(format!("{CLASS_NAME}: {m}")));
        if !self.use_flow_sigmas {
            return invalid("only use_flow_sigmas = true is supported");
        }
        if self.prediction_type != "flow_prediction" {
            return invalid(&format!(
                "prediction_type `{}` is not supported (only flow_prediction)",
                self.prediction_type
            ));
        }
        if !self.predict_x0 {
            return invalid("predict_x0 = false is not supported");
        }
        if self.thresholding {
            return invalid("thresholding is not supported");
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return invalid("solver_p (a nested predictor scheduler) is not supported");
        }
        if self.use_karras_sigmas || self.use_exponential_sigmas || self.use_beta_sigmas {
            return invalid("karras / exponential / beta sigmas are not supported");
        }
        if self.use_dynamic_shifting {
            return invalid("use_dynamic_shifting is not supported (use flow_shift)");
        }
        if self.shift_terminal.is_some() {
            return invalid("shift_terminal is not supported");
        }
        if !(1..=2).contains(&self.solver_order) {
            return invalid(&format!(
                "solver_order must be 1 or 2, got {}",
                self.solver_order
            ));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return invalid(&format!(
                "flow_shift must be a positive number, got {}",
                self.flow_shift
            ));
        }
        if self.num_train_timesteps == 0 {
            return invalid("num_train_timesteps must be positive");
        }
        Ok(())
    }
}

/// diffusers `UniPCMultistepScheduler` (flow sigmas): schedules and step coefficients.
#[derive(Debug, Clone, PartialEq)]
pub struct UniPCMultistepScheduler {
    config: UniPCMultistepSchedulerConfig,
}

impl UniPCMultistepScheduler {
    /// A scheduler from a validated config.
    pub fn new(config: UniPCMultistepSchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Parses and validates `scheduler_config.json` text.
    pub fn from_json(text: &str) -> Result<Self, SchedulerError> {
        Self::new(parse_config(text)?)
    }

    /// Reads and validates a `scheduler_config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, SchedulerError> {
        Self::new(read_config(path)?)
    }

    /// The config.
    pub fn config(&self) -> &UniPCMultistepSchedulerConfig {
        &self.config
    }

    /// The same scheduler with another `flow_shift` (the request's `flow_shift`; diffusers users
    /// write `UniPCMultistepScheduler.from_config(config, flow_shift=…)`).
    pub fn with_flow_shift(&self, flow_shift: f64) -> Result<Self, SchedulerError> {
        Self::new(UniPCMultistepSchedulerConfig {
            flow_shift,
            ..self.config.clone()
        })
    }

    /// Mirrors `set_timesteps(num_inference_steps)` (flow branch, see the module docs) and returns
    /// `timesteps: [n]` (integers) and `sigmas: [n + 1]` (float32 values) with a fresh solver.
    ///
    /// # Errors
    /// `num_inference_steps == 0`.
    pub fn set_timesteps(&self, num_inference_steps: usize) -> Result<UniPcSolver, SchedulerError> {
        let c = &self.config;
        let n = num_inference_steps;
        if n == 0 {
            return Err(SchedulerError::Invalid(
                "num_inference_steps must be at least 1".to_string(),
            ));
        }
        let nt = c.num_train_timesteps as f64;
        // np.linspace(1, 1 / N, n + 1)[:-1], then the fixed shift (numpy float64).
        let mut sigmas = super::linspace(1.0, 1.0 / nt, n + 1);
        sigmas.pop();
        let s = c.flow_shift;
        for x in &mut sigmas {
            *x = s * *x / (1.0 + (s - 1.0) * *x);
        }
        if (sigmas[0] - 1.0).abs() < FIRST_SIGMA_EPS {
            sigmas[0] -= FIRST_SIGMA_EPS;
        }
        // (sigmas * N).astype(int64): truncation toward zero.
        let timesteps: Vec<f64> = sigmas.iter().map(|x| (x * nt).trunc()).collect();
        let last = match c.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => sigmas[n - 1],
        };
        sigmas.push(last);
        let sigmas: Vec<f64> = sigmas.iter().map(|&x| x as f32 as f64).collect();
        let planner = UniPcPlanner::new(UniPcOptions {
            solver_order: c.solver_order,
            solver_type: c.solver_type,
            lower_order_final: c.lower_order_final,
            disable_corrector: c.disable_corrector.clone(),
            use_flow_sigmas: true,
            flow_sigma_clamp: None,
        });
        Ok(UniPcSolver {
            timesteps,
            sigmas,
            planner,
        })
    }
}

/// The schedule of one `set_timesteps` call plus the solver history.
#[derive(Debug, Clone)]
pub struct UniPcSolver {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    planner: UniPcPlanner,
}

impl UniPcSolver {
    /// `scheduler.timesteps`, `[n]`: integers (int64 in diffusers), what the transformer is fed.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `scheduler.sigmas`, `[n + 1]`: float32 values.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The scalars of step `i` (diffusers `step`), advancing the history.
    ///
    /// # Panics
    /// If `i` is not the next step.
    pub fn step_plan(&mut self, i: usize) -> StepPlan {
        StepPlan::UniPc(self.planner.plan(&self.sigmas, i))
    }

    /// Plan from step `i` on (a truncated schedule: video-to-video `strength`); see
    /// [`UniPcPlanner::begin_at`](super::unipc::UniPcPlanner::begin_at).
    pub fn begin_at(&mut self, i: usize) {
        self.planner.begin_at(i);
    }
}
