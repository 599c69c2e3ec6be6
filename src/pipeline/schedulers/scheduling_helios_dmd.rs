//! Mirrors diffusers 0.42.1 `schedulers/scheduling_helios_dmd.py` `HeliosDMDScheduler`, plus the
//! scheduler-side arithmetic of `pipelines/helios/pipeline_helios_pyramid.py`
//! (`calculate_shift`, the stage re-noise `alpha`/`beta`, the block-noise covariance factor of
//! `sample_block_noise`, and the `timestep.to(torch.int64)` the transformer receives).
//!
//! Everything here runs on the host in `f64` (style rule 7). No tensors are touched: the scheduler
//! hands out tables ([`StageSchedule`]) and per-step coefficients ([`DmdStep`]); the pipeline
//! combines tensors with them.
//!
//! # Units
//! * **sigma** (σ): flow-matching noise level in `[0, 1]`, `x_σ = (1 − σ)·x₀ + σ·noise`.
//! * **timestep** (t): σ mapped into the stage's timestep window, in "training steps"
//!   (`0 ..= num_train_timesteps`, i.e. `0 ..= 1000`); float, truncated to an integer only where
//!   diffusers truncates ([`model_timestep`], the lookups in [`HeliosDMDScheduler::step_coeffs`]).
//!
//! # Precision: where diffusers computes in what
//! * `init_sigmas` / `init_sigmas_for_each_stage` and the `stages > 1` branch of `set_timesteps`
//!   are numpy `float64`, Python floats and `float64` torch tensors: reproduced bit for bit, with
//!   numpy's `linspace` algorithm (`i·step + start`, last point set to `stop`, see [`linspace`])
//!   and torch's `scalar / tensor` = `tensor.reciprocal() * scalar` (see
//!   [`TimeShiftType::apply`]).
//! * The `stages == 1` branch of `set_timesteps` starts from `np.linspace(...).astype(np.float32)`,
//!   so everything downstream of it is `float32` in diffusers; [`HeliosDMDScheduler::set_timesteps`]
//!   rounds through `f32` at the same points (the Helios checkpoints use `stages = 3`).
//! * `sample_block_noise` builds and factors the covariance in `float32`;
//!   [`block_noise_factor`] works in `f64` (see there for the differences).
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// `_class_name` a DMD `scheduler_config.json` must carry.
pub const CLASS_NAME: &str = "HeliosDMDScheduler";

/// The jitter `sample_block_noise` adds to the block covariance diagonal (`+ 1e-8·I`).
pub const BLOCK_NOISE_JITTER: f64 = 1e-8;

/// Below this smallest eigenvalue, [`block_noise_factor`] switches from Cholesky to the symmetric
/// square root. The jitter alone gives `1e-8`, so any covariance within ~100× of singular counts as
/// singular (`gamma` within ~3e-7 of 1/3); for those a float32 Cholesky (diffusers) fails or
/// returns a factor dominated by rounding.
pub const NEAR_SINGULAR_EIGENVALUE: f64 = 1e-6;

/// How far above 1/3 a configured `gamma` may be and still be accepted (covers 1/3 written as a
/// float32, `0.3333333432674408`). The block covariance is indefinite beyond 1/3.
pub const GAMMA_ONE_THIRD_SLACK: f64 = 1e-6;

/// Errors from reading a DMD scheduler config or asking it for a schedule.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config file could not be read.
    #[error("reading scheduler config {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The config is not valid JSON or has a value of the wrong type.
    #[error("parsing scheduler config: {0}")]
    Parse(String),
    /// `_class_name` names another scheduler.
    #[error("scheduler config has _class_name `{found}`, expected `{expected}`")]
    WrongClass {
        found: String,
        expected: &'static str,
    },
    /// A value is out of range or two options conflict.
    #[error("invalid scheduler config: {0}")]
    Invalid(String),
    /// `stage_index` is not a stage of this scheduler.
    #[error("stage index {stage} out of range: the scheduler has {stages} stage(s)")]
    StageOutOfRange { stage: usize, stages: usize },
    /// `use_dynamic_shifting` is on but `set_timesteps` got no `mu`.
    #[error("use_dynamic_shifting is set, so set_timesteps needs mu (see calculate_shift)")]
    MissingMu,
}

/// `time_shift_type`: how `mu` bends the sigmas under dynamic shifting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `e^μ / (e^μ + (1/σ − 1))`: effective flow shift `e^μ`.
    Exponential,
    /// `μ / (μ + (1/σ − 1))`: effective flow shift `μ` (the DMD default).
    Linear,
}

impl TimeShiftType {
    /// Shifted sigma, mirroring diffusers `FlowMatchEulerDiscreteScheduler._time_shift_exponential`
    /// / `_time_shift_linear` with exponent `sigma = 1.0` (the only value Helios passes) on a
    /// `float64` torch tensor.
    ///
    /// Bit-exact with torch: Python's `scalar / tensor` is `tensor.reciprocal() * scalar`
    /// (`torch/_tensor.py` `__rdiv__`), so `1 / t` and `mu / (…)` are a reciprocal followed by a
    /// multiply here too (not one correctly rounded division). `(…) ** 1.0` is the identity.
    /// `sigma = 0` maps to `0` (`1/0 = inf`).
    pub fn apply(self, mu: f64, sigma: f64) -> f64 {
        let x = (1.0 / sigma) * 1.0 - 1.0;
        let m = match self {
            Self::Exponential => mu.exp(),
            Self::Linear => mu,
        };
        (1.0 / (x + m)) * m
    }

    /// The same on a `float32` torch tensor (`stages == 1` branch after `torch.cat`): the Python
    /// scalar is rounded to `f32` before each op.
    pub(crate) fn apply_torch_f32(self, mu: f64, sigma: f32) -> f32 {
        let x = (1.0f32 / sigma) * 1.0 - 1.0;
        let m = match self {
            Self::Exponential => mu.exp() as f32,
            Self::Linear => mu as f32,
        };
        (1.0f32 / (x + m)) * m
    }

    /// The same on a `float32` numpy array (fixed `shift` in the `stages == 1` branch): numpy
    /// divides directly (no reciprocal), the Python scalar is rounded to `f32`.
    pub(crate) fn apply_numpy_f32(self, mu: f64, sigma: f32) -> f32 {
        let x = 1.0f32 / sigma - 1.0;
        let m = match self {
            Self::Exponential => mu.exp() as f32,
            Self::Linear => mu as f32,
        };
        m / (m + x)
    }
}

/// `prediction_type`. The DMD step converts a flow (velocity) prediction to `x0`, so only
/// `"flow_prediction"` is accepted (diffusers stores but never reads this field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// `v = noise − x₀`, so `x₀ = x_σ − σ·v`.
    FlowPrediction,
}

/// `scheduler/scheduler_config.json` of a DMD (Helios-Distilled) checkpoint, read as shipped.
///
/// Key names are the JSON keys; defaults are the diffusers `HeliosDMDScheduler.__init__` defaults
/// and, for the four `calculate_shift` keys, the `config.get(..., default)` fallbacks of
/// `HeliosPyramidPipeline.__call__`. Integers written as floats (`1000.0`) are accepted. Keys this
/// struct does not know land in [`unknown`](Self::unknown); [`unknown_keys`](Self::unknown_keys)
/// lists the ones a caller should warn about.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HeliosDMDSchedulerConfig {
    /// `_class_name`; must be `"HeliosDMDScheduler"` (checked by [`validate`](Self::validate)).
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// `_diffusers_version` that wrote the file (informational).
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
    /// Training timesteps `N` (table length). Default 1000.
    #[serde(deserialize_with = "lenient_usize")]
    pub num_train_timesteps: usize,
    /// Fixed flow shift of the global table (`shift·σ/(1+(shift−1)σ)`). Default 1.0; must be 1.0
    /// with `use_dynamic_shifting`.
    pub shift: f64,
    /// Number of pyramid stages. Default 3.
    #[serde(deserialize_with = "lenient_usize")]
    pub stages: usize,
    /// Stage boundaries as fractions of the global table, `stages + 1` values (extra trailing
    /// values are ignored, as in diffusers). Default `[0, 1/3, 2/3, 1]`.
    pub stage_range: Vec<f64>,
    /// Block-noise correlation γ (used by stage re-noising and the start-sigma correction).
    /// Default 1/3; must lie in `(0, 1/3]`.
    pub gamma: f64,
    /// Default `flow_prediction` (the only accepted value).
    pub prediction_type: PredictionType,
    /// Stored by diffusers, never read by the DMD scheduler. Default true.
    pub use_flow_sigmas: bool,
    /// Resolution-dependent shift of the stage sigmas by `mu`. Default false (the shipped
    /// Distilled config turns it on).
    pub use_dynamic_shifting: bool,
    /// Default [`TimeShiftType::Linear`].
    pub time_shift_type: TimeShiftType,
    /// Not a diffusers `HeliosDMDScheduler` argument (diffusers warns and drops it); vllm-omni
    /// keys "distilled" off `"dmd"`. Accepted if absent or `"dmd"`.
    pub scheduler_type: Option<String>,
    /// `calculate_shift` `base_seq_len` (pipeline fallback 256).
    pub base_image_seq_len: f64,
    /// `calculate_shift` `max_seq_len` (pipeline fallback 4096).
    pub max_image_seq_len: f64,
    /// `calculate_shift` `base_shift` (pipeline fallback 0.5).
    pub base_shift: f64,
    /// `calculate_shift` `max_shift` (pipeline fallback 1.15).
    pub max_shift: f64,
    /// Every key not listed above, with its value.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl Default for HeliosDMDSchedulerConfig {
    /// diffusers `HeliosDMDScheduler.__init__` defaults, plus the pipeline's `calculate_shift`
    /// fallbacks.
    fn default() -> Self {
        Self {
            class_name: CLASS_NAME.to_string(),
            diffusers_version: None,
            num_train_timesteps: 1000,
            shift: 1.0,
            stages: 3,
            stage_range: vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
            gamma: 1.0 / 3.0,
            prediction_type: PredictionType::FlowPrediction,
            use_flow_sigmas: true,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Linear,
            scheduler_type: None,
            base_image_seq_len: 256.0,
            max_image_seq_len: 4096.0,
            base_shift: 0.5,
            max_shift: 1.15,
            unknown: BTreeMap::new(),
        }
    }
}

impl HeliosDMDSchedulerConfig {
    /// Parses `scheduler_config.json` text. Does not validate (see [`validate`](Self::validate),
    /// which [`HeliosDMDScheduler::new`] calls).
    pub fn from_json_str(text: &str) -> Result<Self, SchedulerError> {
        serde_json::from_str(text).map_err(|e| SchedulerError::Parse(e.to_string()))
    }

    /// Reads and parses `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, SchedulerError> {
        let text = std::fs::read_to_string(path).map_err(|e| SchedulerError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            SchedulerError::Parse(m) => SchedulerError::Read {
                path: path.to_path_buf(),
                message: m,
            },
            other => other,
        })
    }

    /// Unknown keys worth a warning: those in [`unknown`](Self::unknown) not starting with `_`
    /// (diffusers ignores private `_`-keys such as `_use_default_values` silently).
    pub fn unknown_keys(&self) -> Vec<&str> {
        self.unknown
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with('_'))
            .collect()
    }

    /// Checks the class name, ranges and option conflicts.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let invalid = |m: String| Err(SchedulerError::Invalid(m));
        if self.class_name != CLASS_NAME {
            return Err(SchedulerError::WrongClass {
                found: self.class_name.clone(),
                expected: CLASS_NAME,
            });
        }
        if let Some(t) = &self.scheduler_type
            && t != "dmd"
        {
            return invalid(format!(
                "scheduler_type `{t}` conflicts with _class_name {CLASS_NAME} (expected `dmd`)"
            ));
        }
        if self.num_train_timesteps < 2 {
            return invalid(format!(
                "num_train_timesteps must be at least 2, got {}",
                self.num_train_timesteps
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return invalid(format!("shift must be positive, got {}", self.shift));
        }
        if self.use_dynamic_shifting && self.shift != 1.0 {
            return invalid(format!(
                "shift = {} conflicts with use_dynamic_shifting = true (diffusers asserts shift == 1.0; \
                 the resolution-dependent mu replaces a fixed shift)",
                self.shift
            ));
        }
        if self.stages == 0 {
            return invalid("stages must be at least 1".to_string());
        }
        if self.stage_range.len() < self.stages + 1 {
            return invalid(format!(
                "stage_range needs stages + 1 = {} values, got {}",
                self.stages + 1,
                self.stage_range.len()
            ));
        }
        let range = &self.stage_range[..=self.stages];
        if range.iter().any(|r| !(0.0..=1.0).contains(r)) || range.windows(2).any(|w| w[1] < w[0]) {
            return invalid(format!(
                "stage_range must be non-decreasing within [0, 1], got {range:?}"
            ));
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0 / 3.0 + GAMMA_ONE_THIRD_SLACK) {
            return invalid(format!(
                "gamma must lie in (0, 1/3] (the 2x2 block-noise covariance is indefinite above 1/3), got {}",
                self.gamma
            ));
        }
        if self.max_image_seq_len == self.base_image_seq_len {
            return invalid(format!(
                "max_image_seq_len and base_image_seq_len are both {} (calculate_shift divides by their difference)",
                self.base_image_seq_len
            ));
        }
        Ok(())
    }
}

/// Accepts a non-negative integer written as `1000` or `1000.0`.
fn lenient_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v)
                .map_err(|_| E::custom(format!("expected a non-negative integer, got {v}")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<usize, E> {
            if v.fract() == 0.0 && v >= 0.0 && v <= u32::MAX as f64 {
                Ok(v as usize)
            } else {
                Err(E::custom(format!(
                    "expected a non-negative integer, got {v}"
                )))
            }
        }
    }
    d.deserialize_any(V)
}

/// `numpy.linspace(start, stop, num)` (endpoint included), value for value: numpy computes
/// `step = (stop − start)/(num − 1)`, `y[i] = i·step + start`, then overwrites the last point with
/// `stop` (and `y = [start]` for `num = 1`). Every diffusers `np.linspace` call here is `float64`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        // numpy's `any_step_zero` branch: `y = (i / div) * delta`.
        (0..num).map(|i| (i as f64 / div) * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// Python `int(x)` for the non-negative table indices (truncation toward zero), then clamped into
/// `[lo, hi]` as diffusers does with `max(…, 0)` / `min(…, N)`.
fn py_int_index(x: f64, lo: usize, hi: usize) -> usize {
    let t = x.trunc();
    if t <= lo as f64 {
        lo
    } else if t >= hi as f64 {
        hi
    } else {
        t as usize
    }
}

/// `1 / (√(1 + 1/γ)·(1 − ρ) + ρ)`: the signal rescale of a re-noised stage start, `ρ` being the
/// signal coefficient `1 − σ_start`. Shared by diffusers `init_sigmas_for_each_stage`
/// (`corrected_sigma = alpha·ρ`) and `HeliosPyramidPipeline.__call__` (`alpha`); same operation
/// order as both (Python floats).
fn renoise_alpha(rho: f64, gamma: f64) -> f64 {
    1.0 / ((1.0 + 1.0 / gamma).sqrt() * (1.0 - rho) + rho)
}

/// The per-stage tables of diffusers `init_sigmas` + `init_sigmas_for_each_stage` (identical in
/// `HeliosScheduler` and `HeliosDMDScheduler`), all `float64` as in diffusers.
///
/// Stage-indexed vectors have `stages` entries; the per-stage tables `N` entries each.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTables {
    /// `init_sigmas` `self.sigmas`, `[N]`: `flip(shift·s/(1+(shift−1)s))[:-1]` with
    /// `s = 1 − linspace(1, 1/N, N+1)`; descending `0.999 … 0.000999` for `shift = 1`, `N = 1000`.
    pub sigmas: Vec<f64>,
    /// `init_sigmas` `self.timesteps`, `[N]`: `sigmas · N`.
    pub timesteps: Vec<f64>,
    /// `ori_start_sigmas`, `[stages]`: `sigmas[int(stage_range[s]·N)]` before correction (what the
    /// pipeline's re-noise `alpha`/`beta` use).
    pub ori_start_sigmas: Vec<f64>,
    /// `start_sigmas`, `[stages]`: start sigma, corrected for stages ≥ 1 as
    /// `1 − renoise_alpha(ρ)·ρ`, `ρ = 1 − ori_start_sigma`.
    pub start_sigmas: Vec<f64>,
    /// `end_sigmas`, `[stages]`: `sigmas[int(stage_range[s+1]·N)]`, or 0 at the end of the table.
    pub end_sigmas: Vec<f64>,
    /// `timestep_ratios`, `[stages]`: `(start, end)` fractions of the cumulative stage flow
    /// lengths `start_sigma − end_sigma`; the last end is `0.9999999999999999`.
    pub timestep_ratios: Vec<(f64, f64)>,
    /// `timesteps_per_stage`, `[stages][N]`: `linspace(min(t[int(r0·N)], 999),
    /// t[min(int(r1·N), N−1)], N+1)[:-1]`.
    pub timesteps_per_stage: Vec<Vec<f64>>,
    /// `sigmas_per_stage`, `[stages][N]`: `linspace(0.999, 0, N+1)[:-1]` for every stage.
    pub sigmas_per_stage: Vec<Vec<f64>>,
}

impl StageTables {
    /// Builds the tables; mirrors diffusers `init_sigmas_for_each_stage` (which calls
    /// `init_sigmas`). Arguments are the config values; `stage_range` needs `stages + 1` entries.
    ///
    /// Python's `sum()` is taken left to right; the stage ratios only matter through `int(r·N)`,
    /// so the compensated `sum` of Python ≥ 3.12 gives the same tables.
    pub fn new(
        num_train_timesteps: usize,
        shift: f64,
        stages: usize,
        stage_range: &[f64],
        gamma: f64,
    ) -> Self {
        let n = num_train_timesteps;
        let nf = n as f64;

        // init_sigmas
        let alphas = linspace(1.0, 1.0 / nf, n + 1);
        let shifted: Vec<f64> = alphas
            .iter()
            .map(|a| {
                let s = 1.0 - a;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        // np.flip(...)[:-1]: reverse, drop the last (σ = 0 at alpha = 1).
        let sigmas: Vec<f64> = shifted.iter().rev().take(n).copied().collect();
        let timesteps: Vec<f64> = sigmas.iter().map(|s| s * nf).collect();

        // start / end point of each stage
        let mut ori_start_sigmas = Vec::with_capacity(stages);
        let mut start_sigmas = Vec::with_capacity(stages);
        let mut end_sigmas = Vec::with_capacity(stages);
        let mut stage_distance = Vec::with_capacity(stages);
        for i_s in 0..stages {
            let start_indice = py_int_index(stage_range[i_s] * nf, 0, n);
            let end_indice = py_int_index(stage_range[i_s + 1] * nf, 0, n);
            // diffusers indexes `self.sigmas[start_indice]` unguarded; start_indice == N only
            // for stage_range[s] == 1 (an empty stage), where torch would raise. Clamp instead.
            let mut start_sigma = sigmas[start_indice.min(n - 1)];
            let end_sigma = if end_indice < n {
                sigmas[end_indice]
            } else {
                0.0
            };
            ori_start_sigmas.push(start_sigma);
            if i_s != 0 {
                let ori_sigma = 1.0 - start_sigma;
                let corrected_sigma = renoise_alpha(ori_sigma, gamma) * ori_sigma;
                start_sigma = 1.0 - corrected_sigma;
            }
            stage_distance.push(start_sigma - end_sigma);
            start_sigmas.push(start_sigma);
            end_sigmas.push(end_sigma);
        }

        // ratio of each stage by flow length
        let py_sum = |xs: &[f64]| xs.iter().fold(0.0f64, |acc, x| acc + x);
        let tot_distance = py_sum(&stage_distance);
        let timestep_ratios: Vec<(f64, f64)> = (0..stages)
            .map(|i_s| {
                let start_ratio = if i_s == 0 {
                    0.0
                } else {
                    py_sum(&stage_distance[..i_s]) / tot_distance
                };
                let end_ratio = if i_s == stages - 1 {
                    0.9999999999999999
                } else {
                    py_sum(&stage_distance[..=i_s]) / tot_distance
                };
                (start_ratio, end_ratio)
            })
            .collect();

        // timesteps and sigmas of each stage
        let stage_sigmas: Vec<f64> = linspace(0.999, 0.0, n + 1)[..n].to_vec();
        let mut timesteps_per_stage = Vec::with_capacity(stages);
        let mut sigmas_per_stage = Vec::with_capacity(stages);
        for &(r0, r1) in &timestep_ratios {
            // Python `min(tensor, 999)` returns 999 only when 999 < tensor.
            let t0 = timesteps[py_int_index(r0 * nf, 0, n - 1)];
            let timestep_max = if 999.0 < t0 { 999.0 } else { t0 };
            let timestep_min = timesteps[py_int_index(r1 * nf, 0, n - 1)];
            let mut ts = linspace(timestep_max, timestep_min, n + 1);
            ts.truncate(n);
            timesteps_per_stage.push(ts);
            sigmas_per_stage.push(stage_sigmas.clone());
        }

        Self {
            sigmas,
            timesteps,
            ori_start_sigmas,
            start_sigmas,
            end_sigmas,
            timestep_ratios,
            timesteps_per_stage,
            sigmas_per_stage,
        }
    }
}

/// The denoising schedule of one pyramid stage, as diffusers leaves it in `scheduler.timesteps`
/// / `scheduler.sigmas` after `set_timesteps`.
///
/// `timesteps: [n]` (n = the stage's step count, doubled for an amplified first chunk), in
/// training-step units, float (the pipeline iterates these); `sigmas: [n + 1]`, the last one 0.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSchedule {
    /// Pyramid stage this schedule belongs to.
    pub stage_index: usize,
    /// `scheduler.timesteps`, `[n]`, descending.
    pub timesteps: Vec<f64>,
    /// `scheduler.sigmas`, `[n + 1]`, descending, ending in 0.
    pub sigmas: Vec<f64>,
}

impl StageSchedule {
    /// Number of denoising steps (`timesteps.len()`).
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether the stage has no steps (only for `num_inference_steps = 0`).
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
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

/// The timestep the pipeline feeds to the transformer: `t.expand(B).to(torch.int64)` in
/// `HeliosPyramidPipeline.__call__`, i.e. truncation toward zero (998.53 → 998), returned as
/// `f64` for the time embedding. Not rounding: the transformer never sees the float timestep.
pub fn model_timestep(t: f64) -> f64 {
    t.trunc()
}

/// Resolution-dependent shift `mu`, mirroring `calculate_shift` in
/// `pipelines/helios/pipeline_helios_pyramid.py` (copied from Flux): a line through
/// `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)`, not clamped.
///
/// `image_seq_len` is a token count, `T·h·w / (p_t·p_h·p_w)` with integer division; for a pyramid
/// stage use [`pyramid_image_seq_len`] (the pipeline measures the latents *before* the stage's
/// upsample). Same operation order as the Python.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: f64,
    max_seq_len: f64,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len - base_seq_len);
    let b = base_shift - m * base_seq_len;
    image_seq_len as f64 * m + b
}

/// The `image_seq_len` `HeliosPyramidPipeline.__call__` passes to [`calculate_shift`] at pyramid
/// stage `stage`.
///
/// diffusers takes it from `latents.shape` at the top of the stage loop, **before** the stage's
/// 2× nearest upsample, so stage `s ≥ 1` is measured at stage `s − 1`'s size and stages 0 and 1
/// share one `mu`: for 9 latent frames at 384×640 (stage-0 latent 12×20) the three stages get
/// 540, 540 and 2160 tokens, not 540 / 2160 / 8640. Pinned by
/// `tiny_pipeline_schedules_match_diffusers` in `tests/scheduler_dmd.rs`.
///
/// `stage0_latent = [frames, height, width]` of the stage-0 latents (after the pyramid
/// downsample); `patch_size` is the transformer's `[p_t, p_h, p_w]` (`[1, 2, 2]`). Returns
/// `(w·h·T) // (p_t·p_h·p_w)` at the stage-entry size `stage0 · 2^(max(stage, 1) − 1)`.
pub fn pyramid_image_seq_len(
    stage: usize,
    stage0_latent: [usize; 3],
    patch_size: [usize; 3],
) -> usize {
    let scale = 1usize << stage.saturating_sub(1);
    let [frames, height, width] = stage0_latent;
    (width * scale * height * scale * frames) / (patch_size[0] * patch_size[1] * patch_size[2])
}

/// The 2×2 block-noise mixing matrix `L` of `HeliosPyramidPipeline.sample_block_noise`, with
/// `L·Lᵀ = cov = (1+γ)·I₄ − γ·11ᵀ + 1e-8·I₄`.
///
/// Layout: `L[row][col]`. The pipeline draws `z ~ N(0, I)` of shape `[blocks, 4]` and forms
/// `noise = z @ Lᵀ`, i.e. `noise[k] = Σ_j L[k][j]·z[j]`; entry `k = 2p + q` of a block lands at
/// pixel `(2a + p, 2b + q)` of the `[B, C, T, h, w]` latent for block `(a, b)` (diffusers
/// `view(B, C, T, h/2, w/2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6)`).
///
/// * Positive definite (`1 − 3γ + 1e-8 > NEAR_SINGULAR_EIGENVALUE`, e.g. γ = 0.3): the lower
///   Cholesky factor, like `torch.linalg.cholesky`, but in `f64` from the exact `f64` covariance.
///   diffusers builds `cov` in float32 (`(1+γ)` and `γ` rounded to f32, the `1e-8` jitter lost to
///   rounding on the diagonal) and factors in float32. The difference grows as γ nears 1/3: for
///   the tiny test checkpoint's γ = 0.3333 (smallest eigenvalue 1e-4) the correlated noise
///   `z @ Lᵀ` differs from diffusers' by at most 5.5e-6 (mean 3e-7) for unit-variance `z`
///   (`block_noise_matches_diffusers_tiny_pipeline`); a float32 Cholesky of the float32 `cov`
///   would come within 3e-7.
/// * Singular or nearly (γ ≈ 1/3, the default: the all-ones direction has eigenvalue
///   `1 − 3γ + 1e-8 ≈ 1e-8`, and in float32 it is about −2e-8, where `torch.linalg.cholesky`
///   raises "not positive-definite"): the **symmetric square root**
///   `S = √λ⊥·(I − 11ᵀ/4) + √max(λ₁, 0)·11ᵀ/4`, `λ⊥ = 1 + γ + 1e-8`, `λ₁ = 1 − 3γ + 1e-8`,
///   which still has `S·Sᵀ = cov` (exactly, up to rounding; with `λ₁` clamped at 0 if γ is a hair
///   above 1/3). It is not triangular, so a given `z` maps to different noise than a Cholesky
///   factor would, but the distribution is the same; diffusers itself has no output here.
pub fn block_noise_factor(gamma: f64) -> [[f64; 4]; 4] {
    // cov = eye·(1+γ) − ones·γ + eye·1e-8 (diffusers' operation order).
    let diag = ((1.0 + gamma) - gamma) + BLOCK_NOISE_JITTER;
    let off = 0.0 - gamma;
    // Eigenvalues of d·I + o·(J − I): d + 3o on the all-ones vector, d − o orthogonal to it.
    let lambda_ones = diag + 3.0 * off;
    let lambda_perp = diag - off;
    if lambda_ones > NEAR_SINGULAR_EIGENVALUE {
        let mut cov = [[off; 4]; 4];
        for (i, row) in cov.iter_mut().enumerate() {
            row[i] = diag;
        }
        cholesky4(&cov)
    } else {
        let a = lambda_perp.sqrt();
        let b = lambda_ones.max(0.0).sqrt();
        let mut s = [[0.0; 4]; 4];
        for (i, row) in s.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let identity = if i == j { 1.0 } else { 0.0 };
                *v = a * (identity - 0.25) + b * 0.25;
            }
        }
        s
    }
}

/// Lower Cholesky factor of a symmetric positive definite 4×4 matrix (caller guarantees PD).
fn cholesky4(a: &[[f64; 4]; 4]) -> [[f64; 4]; 4] {
    let mut l = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                l[i][j] = (a[i][i] - s).sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    l
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

/// diffusers `HeliosDMDScheduler`: pyramid-stage tables (`init_sigmas_for_each_stage`),
/// per-stage schedules (`set_timesteps`) and the DMD step as coefficients (`step`).
#[derive(Debug, Clone)]
pub struct HeliosDMDScheduler {
    config: HeliosDMDSchedulerConfig,
    tables: StageTables,
}

impl HeliosDMDScheduler {
    /// Validates `config` ([`HeliosDMDSchedulerConfig::validate`]) and builds the stage tables
    /// (diffusers `__init__` → `init_sigmas_for_each_stage`).
    pub fn new(config: HeliosDMDSchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        let tables = StageTables::new(
            config.num_train_timesteps,
            config.shift,
            config.stages,
            &config.stage_range,
            config.gamma,
        );
        Ok(Self { config, tables })
    }

    /// The (validated) config.
    pub fn config(&self) -> &HeliosDMDSchedulerConfig {
        &self.config
    }

    /// The stage tables built at construction.
    pub fn tables(&self) -> &StageTables {
        &self.tables
    }

    /// `ori_start_sigmas`, `[stages]` (0.999, 0.666333, 0.333666 for the default config).
    pub fn ori_start_sigmas(&self) -> &[f64] {
        &self.tables.ori_start_sigmas
    }

    /// `mu` for a stage with `image_seq_len` tokens: [`calculate_shift`] with this config's
    /// `base_image_seq_len`, `max_image_seq_len`, `base_shift`, `max_shift` (the pipeline's
    /// `self.scheduler.config.get(...)` lookups).
    pub fn calculate_shift(&self, image_seq_len: usize) -> f64 {
        let c = &self.config;
        calculate_shift(
            image_seq_len,
            c.base_image_seq_len,
            c.max_image_seq_len,
            c.base_shift,
            c.max_shift,
        )
    }

    /// diffusers `time_shift(mu, 1.0, sigma)` with this config's `time_shift_type`, on a float64
    /// sigma ([`TimeShiftType::apply`]).
    pub fn time_shift(&self, mu: f64, sigma: f64) -> f64 {
        self.config.time_shift_type.apply(mu, sigma)
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
        let mu = match (c.use_dynamic_shifting, mu) {
            (true, None) => return Err(SchedulerError::MissingMu),
            (_, mu) => mu,
        };
        let n = if is_amplify_first_chunk {
            num_inference_steps * 2 + 1
        } else {
            num_inference_steps + 1
        };
        let train = c.num_train_timesteps;

        if c.stages == 1 {
            return Ok(self.set_timesteps_single_stage_f32(n, mu, stage_index));
        }

        let stage_timesteps = &self.tables.timesteps_per_stage[stage_index];
        let mut timesteps = linspace(stage_timesteps[0], stage_timesteps[train - 1], n);
        let stage_sigmas = &self.tables.sigmas_per_stage[stage_index];
        let mut sigmas = linspace(stage_sigmas[0], stage_sigmas[train - 1], n);
        sigmas.push(0.0); // torch.cat([sigmas, torch.zeros(1)])

        // DMD: self.timesteps[:-1]; torch.cat([self.sigmas[:-2], self.sigmas[-1:]])
        timesteps.pop();
        let last = sigmas.len() - 1;
        sigmas.remove(last - 1);

        if let (true, Some(mu)) = (c.use_dynamic_shifting, mu) {
            for s in sigmas.iter_mut() {
                *s = self.time_shift(mu, *s);
            }
            let t_min = stage_timesteps
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let t_max = stage_timesteps
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let span = t_max - t_min;
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| t_min + s * span)
                .collect();
        }

        Ok(StageSchedule {
            stage_index,
            timesteps,
            sigmas,
        })
    }

    /// `set_timesteps` for `stages == 1`, `sigmas=None`: diffusers' float32 branch, rounded through
    /// `f32` exactly where diffusers is in float32. `n` is the already adjusted step count.
    fn set_timesteps_single_stage_f32(
        &self,
        n: usize,
        mu: Option<f64>,
        stage_index: usize,
    ) -> StageSchedule {
        let c = &self.config;
        let nf = c.num_train_timesteps as f64;
        // np.linspace(1, 1/N, n + 1)[:-1].astype(np.float32)
        let mut sigmas: Vec<f32> = linspace(1.0, 1.0 / nf, n + 1)[..n]
            .iter()
            .map(|&s| s as f32)
            .collect();
        if c.shift != 1.0 {
            // numpy float32: self.time_shift(self.config.shift, 1.0, sigmas)
            for s in sigmas.iter_mut() {
                *s = c.time_shift_type.apply_numpy_f32(c.shift, *s);
            }
        }
        let nf32 = c.num_train_timesteps as f32;
        let mut timesteps: Vec<f32> = sigmas.iter().map(|s| s * nf32).collect();
        sigmas.push(0.0);

        timesteps.pop();
        let last = sigmas.len() - 1;
        sigmas.remove(last - 1);

        if let (true, Some(mu)) = (c.use_dynamic_shifting, mu) {
            for s in sigmas.iter_mut() {
                *s = c.time_shift_type.apply_torch_f32(mu, *s);
            }
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| s * nf32)
                .collect();
        }

        StageSchedule {
            stage_index,
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas: sigmas.into_iter().map(f64::from).collect(),
        }
    }

    /// `(alpha, beta)` of the stage-start re-noise `x = alpha·upsample(x) + beta·block_noise`,
    /// mirroring `HeliosPyramidPipeline.__call__` for `stage_idx > 0`:
    /// `ρ = 1 − ori_start_sigmas[stage]`, `alpha = 1/(√(1 + 1/γ)·(1 − ρ) + ρ)`,
    /// `beta = alpha·(1 − ρ)/√γ` (Python floats; the pipeline then multiplies fp32 tensors by them,
    /// which rounds both to f32).
    ///
    /// For γ = 1/3 and the default stage range: (0.600120, 0.692612) for stage 1,
    /// (0.749813, 0.433337) for stage 2.
    ///
    /// # Panics
    /// If `stage` is 0 (stage 0 is never re-noised) or not below `stages`.
    pub fn stage_renoise_coeffs(&self, stage: usize) -> (f64, f64) {
        assert!(
            stage >= 1 && stage < self.config.stages,
            "stage_renoise_coeffs: stage {stage} is not a re-noised stage (1..{})",
            self.config.stages
        );
        let gamma = self.config.gamma;
        let ori_sigma = 1.0 - self.tables.ori_start_sigmas[stage];
        let alpha = renoise_alpha(ori_sigma, gamma);
        let beta = alpha * (1.0 - ori_sigma) / gamma.sqrt();
        (alpha, beta)
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
