//! Mirrors diffusers 0.42.1 `schedulers/scheduling_flow_match_euler_discrete.py`
//! `FlowMatchEulerDiscreteScheduler` with a fixed `shift` (the configuration the Wan pipelines
//! accept as an alternative to UniPC): `set_timesteps(n)` and the deterministic Euler `step`.
//!
//! Host `f64` (style rule 7); the step is a [`StepPlan::Euler`] applied by the shared
//! [`SolverHistory`](super::unipc::SolverHistory).
//!
//! # Precision: where diffusers computes in what
//! * `__init__` builds the training table in **float32 torch**: `t = linspace(1, N, N)[::-1]`,
//!   `σ = t / N`, then `shift·σ / (1 + (shift − 1)·σ)` with the Python scalars rounded to f32;
//!   `sigma_max = σ[0]`, `sigma_min = σ[-1]` (as Python floats).
//! * `set_timesteps(n)`: `timesteps = np.linspace(sigma_max·N, sigma_min·N, n)` (float64),
//!   `σ = timesteps / N`, shifted **again** in float64 (diffusers applies the shift to the already
//!   shifted end points; with `shift = 1` it is the identity), cast to float32;
//!   `timesteps = σ·N` in float32; a 0 appended to the sigmas.
//! * `step`: `dt = σ_{i+1} − σ_i` (float32), `x' = x.to(f32) + dt·v`, cast to the model-output
//!   dtype.
//!
//! # Deliberate divergences
//! `use_dynamic_shifting`, `invert_sigmas`, `shift_terminal`, karras / exponential / beta sigmas
//! and `stochastic_sampling` fail at construction naming the key; custom `sigmas` / `timesteps`
//! and per-token timesteps are not ported.

use std::path::Path;

use serde::Deserialize;

use super::pyramid::{SchedulerError, integral_usize, parse_config, read_config};
use super::unipc::{EulerStep, StepPlan};

/// `_class_name` of the scheduler config.
pub const CLASS_NAME: &str = "FlowMatchEulerDiscreteScheduler";

fn d_num_train_timesteps() -> usize {
    1000
}
fn d_shift() -> f64 {
    1.0
}

/// `scheduler_config.json` of a `FlowMatchEulerDiscreteScheduler`, read as shipped; defaults are
/// the `__init__` ones. The dynamic-shifting keys (`base_shift`, `max_shift`,
/// `base_image_seq_len`, `max_image_seq_len`, `time_shift_type`) are read into
/// [`unknown`](Self::unknown) and ignored (dynamic shifting is rejected).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FlowMatchEulerDiscreteSchedulerConfig {
    /// Must be `FlowMatchEulerDiscreteScheduler` when present.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// `N`, default 1000.
    #[serde(default = "d_num_train_timesteps", deserialize_with = "integral_usize")]
    pub num_train_timesteps: usize,
    /// Fixed shift, default 1.0.
    #[serde(default = "d_shift")]
    pub shift: f64,
    /// Must be false.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// Must be false.
    #[serde(default)]
    pub invert_sigmas: bool,
    /// Must be null.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    /// Must be false.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Must be false.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Must be false.
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Must be false.
    #[serde(default)]
    pub stochastic_sampling: bool,
    /// Every other key.
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, serde_json::Value>,
}

impl Default for FlowMatchEulerDiscreteSchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every key has a default")
    }
}

impl FlowMatchEulerDiscreteSchedulerConfig {
    /// Checks the class name and rejects what this port does not run.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        if let Some(found) = &self.class_name
            && found != CLASS_NAME
        {
            return Err(SchedulerError::WrongClass {
                found: found.clone(),
                expected: CLASS_NAME,
            });
        }
        let bad = [
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("invert_sigmas", self.invert_sigmas),
            ("shift_terminal", self.shift_terminal.is_some()),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ];
        if let Some((key, _)) = bad.iter().find(|(_, on)| *on) {
            return Err(SchedulerError::Invalid(format!(
                "{CLASS_NAME}: {key} is not supported"
            )));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(SchedulerError::Invalid(format!(
                "{CLASS_NAME}: shift must be a positive number, got {}",
                self.shift
            )));
        }
        if self.num_train_timesteps == 0 {
            return Err(SchedulerError::Invalid(format!(
                "{CLASS_NAME}: num_train_timesteps must be positive"
            )));
        }
        Ok(())
    }
}

/// diffusers `FlowMatchEulerDiscreteScheduler` (fixed shift).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteSchedulerConfig,
    /// `self.sigma_max` / `self.sigma_min` of `__init__` (float32 values).
    sigma_max: f64,
    sigma_min: f64,
}

/// `shift·σ / (1 + (shift − 1)·σ)` on a float32 torch tensor: each Python scalar rounded to f32.
fn shift_torch_f32(shift: f64, sigma: f32) -> f32 {
    (shift as f32 * sigma) / (1.0f32 + (shift - 1.0) as f32 * sigma)
}

impl FlowMatchEulerDiscreteScheduler {
    /// A scheduler from a validated config (computes `__init__`'s `sigma_max` / `sigma_min`).
    pub fn new(config: FlowMatchEulerDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        let nt = config.num_train_timesteps;
        // timesteps = linspace(1, N, N)[::-1] (exact integers), sigmas = timesteps / N in f32:
        // N / N = 1 exactly at the top, 1 / N at the bottom.
        let sigma_max = shift_torch_f32(config.shift, 1.0) as f64;
        let sigma_min = shift_torch_f32(config.shift, 1.0f32 / nt as f32) as f64;
        Ok(Self {
            config,
            sigma_max,
            sigma_min,
        })
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
    pub fn config(&self) -> &FlowMatchEulerDiscreteSchedulerConfig {
        &self.config
    }

    /// The same scheduler with another `shift` (`set_shift`).
    pub fn with_shift(&self, shift: f64) -> Result<Self, SchedulerError> {
        Self::new(FlowMatchEulerDiscreteSchedulerConfig {
            shift,
            ..self.config.clone()
        })
    }

    /// Mirrors `set_timesteps(num_inference_steps)`; returns `timesteps: [n]` and
    /// `sigmas: [n + 1]` (float32 values, last 0).
    ///
    /// # Errors
    /// `num_inference_steps == 0`.
    pub fn set_timesteps(
        &self,
        num_inference_steps: usize,
    ) -> Result<FlowMatchEulerSolver, SchedulerError> {
        if num_inference_steps == 0 {
            return Err(SchedulerError::Invalid(
                "num_inference_steps must be at least 1".to_string(),
            ));
        }
        let nt = self.config.num_train_timesteps as f64;
        let s = self.config.shift;
        let ts = super::linspace(
            self.sigma_max * nt,
            self.sigma_min * nt,
            num_inference_steps,
        );
        let mut sigmas: Vec<f64> = ts
            .iter()
            .map(|t| {
                let x = t / nt;
                (s * x / (1.0 + (s - 1.0) * x)) as f32 as f64
            })
            .collect();
        let timesteps = sigmas
            .iter()
            .map(|&x| (x as f32 * nt as f32) as f64)
            .collect();
        sigmas.push(0.0);
        Ok(FlowMatchEulerSolver {
            timesteps,
            sigmas,
            next_step: 0,
        })
    }
}

/// One `set_timesteps` schedule and the step counter.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerSolver {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    next_step: usize,
}

impl FlowMatchEulerSolver {
    /// `scheduler.timesteps`, `[n]` (float32 values).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `scheduler.sigmas`, `[n + 1]` (float32 values, last 0).
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

    /// Plan from step `i` on (a truncated schedule: video-to-video `strength`).
    ///
    /// # Panics
    /// If a step was planned already.
    pub fn begin_at(&mut self, i: usize) {
        assert_eq!(self.next_step, 0, "begin_at after planning");
        self.next_step = i;
    }

    /// Step `i`: `dt = σ_{i+1} − σ_i` in float32.
    ///
    /// # Panics
    /// If `i` is not the next step.
    pub fn step_plan(&mut self, i: usize) -> StepPlan {
        assert!(
            i == self.next_step && i < self.len(),
            "step_plan: expected step {} of {}, got {i}",
            self.next_step,
            self.len()
        );
        self.next_step += 1;
        let dt = self.sigmas[i + 1] as f32 - self.sigmas[i] as f32;
        StepPlan::Euler(EulerStep { dt: dt as f64 })
    }
}
