//! What diffusers 0.42.1 `HeliosScheduler` (`schedulers/scheduling_helios.py`) and
//! `HeliosDMDScheduler` (`schedulers/scheduling_helios_dmd.py`) have in common, written once:
//! the pyramid-stage tables (`init_sigmas` + `init_sigmas_for_each_stage`, identical in both
//! classes), the `set_timesteps` arithmetic both share, `time_shift`, the shared config keys and
//! their checks, plus the scheduler-side arithmetic of `pipelines/helios/pipeline_helios_pyramid.py`:
//! `calculate_shift` with its stage token count, the stage re-noise `alpha`/`beta`, the
//! block-noise covariance factor of `sample_block_noise`, and the `timestep.to(torch.int64)` the
//! transformer receives.
//!
//! Everything here runs on the host in `f64` (style rule 7); no tensors are touched.
//!
//! # Units
//! * **sigma** (σ): flow-matching noise level in `[0, 1]`, `x_σ = (1 − σ)·x₀ + σ·noise`.
//! * **timestep** (t): σ mapped into the stage's timestep window, in "training steps"
//!   (`0 ..= num_train_timesteps`, i.e. `0 ..= 1000`); float, truncated to an integer only where
//!   diffusers truncates ([`model_timestep`]).
//!
//! # Precision: where diffusers computes in what
//! * `init_sigmas` / `init_sigmas_for_each_stage` and the `stages > 1` branch of `set_timesteps`
//!   are numpy `float64`, Python floats and `float64` torch tensors: reproduced bit for bit, with
//!   numpy's `linspace` algorithm (`i·step + start`, last point set to `stop`, see [`linspace`])
//!   and torch's `scalar / tensor` = `tensor.reciprocal() * scalar` (see
//!   [`TimeShiftType::apply`]).
//! * The `stages == 1` branch of `set_timesteps` without `sigmas` starts from
//!   `np.linspace(...).astype(np.float32)`, so everything downstream of it is `float32` in
//!   diffusers; `single_stage_f32_schedule` rounds through `f32` at the same points (the Helios
//!   checkpoints use `stages = 3`, or pass float64 `sigmas`).
//! * `sample_block_noise` builds and factors the covariance in `float32`;
//!   [`block_noise_factor`] works in `f64` (see there for the differences).
//!
//! # Deliberate divergences
//! * [`block_noise_factor`] never fails: for `gamma = 1/3` (singular covariance, where
//!   `torch.linalg.cholesky` raises) it returns the symmetric square root.
//!
//! The parity tests are in `tests/scheduler_dmd.rs` and `tests/scheduler_helios.rs` (tables
//! against diffusers' own, ≤ 1e-10).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

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

/// Errors from reading a scheduler config or asking a scheduler for a schedule.
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
    /// `e^μ / (e^μ + (1/σ − 1))`: effective flow shift `e^μ` (the `HeliosScheduler` default).
    Exponential,
    /// `μ / (μ + (1/σ − 1))`: effective flow shift `μ` (the `HeliosDMDScheduler` default).
    Linear,
}

impl TimeShiftType {
    /// Shifted sigma: diffusers `time_shift(mu, 1.0, sigma)` of both Helios schedulers, i.e.
    /// `FlowMatchEulerDiscreteScheduler._time_shift_exponential` / `_time_shift_linear` with
    /// exponent `sigma = 1.0` (the only value Helios passes) on a `float64` torch tensor.
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

/// `prediction_type`. Both Helios schedulers convert a flow (velocity) prediction to `x0`, so only
/// `"flow_prediction"` is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// `v = noise − x₀`, so `x₀ = x_σ − σ·v`.
    FlowPrediction,
}

// -------------------------------------------------------------------------------------------------
// Config keys both schedulers share
// -------------------------------------------------------------------------------------------------

/// The `scheduler_config.json` keys `HeliosScheduler` and `HeliosDMDScheduler` share (plus the
/// four `calculate_shift` keys the pipelines read with `config.get`), borrowed from either config.
///
/// Both configs are read as shipped, flat; [`pyramid_config!`] declares these fields in each and
/// builds this view, which is what the shared checks, tables and `calculate_shift` read.
#[derive(Debug, Clone, Copy)]
pub(super) struct PyramidKeys<'a> {
    pub class_name: &'a str,
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub stages: usize,
    pub stage_range: &'a [f64],
    pub gamma: f64,
    pub base_image_seq_len: f64,
    pub max_image_seq_len: f64,
    pub base_shift: f64,
    pub max_shift: f64,
}

impl PyramidKeys<'_> {
    /// Checks the class name, ranges and option conflicts of the shared keys (the checks each
    /// config adds for its own keys come after these).
    pub fn validate(&self, class_name: &'static str) -> Result<(), SchedulerError> {
        let invalid = |m: String| Err(SchedulerError::Invalid(m));
        if self.class_name != class_name {
            return Err(SchedulerError::WrongClass {
                found: self.class_name.to_string(),
                expected: class_name,
            });
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

    /// The stage tables of these keys (diffusers `__init__` → `init_sigmas_for_each_stage`).
    pub fn stage_tables(&self) -> StageTables {
        StageTables::new(
            self.num_train_timesteps,
            self.shift,
            self.stages,
            self.stage_range,
            self.gamma,
        )
    }

    /// [`calculate_shift`] with these keys (the pipelines' `self.scheduler.config.get(...)`
    /// lookups).
    pub fn calculate_shift(&self, image_seq_len: usize) -> f64 {
        calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift,
            self.max_shift,
        )
    }

    /// `mu` as `set_timesteps` uses it: required with `use_dynamic_shifting`
    /// ([`SchedulerError::MissingMu`]), ignored (`None`) without.
    pub fn dynamic_mu(&self, mu: Option<f64>) -> Result<Option<f64>, SchedulerError> {
        match (self.use_dynamic_shifting, mu) {
            (true, None) => Err(SchedulerError::MissingMu),
            (true, Some(mu)) => Ok(Some(mu)),
            (false, _) => Ok(None),
        }
    }
}

/// Declares a scheduler config struct with the keys both schedulers share, written once here
/// with their docs and defaults, followed by the scheduler's own keys, then `unknown` (the
/// flattened leftover keys); its `Default` impl (the shared defaults, each own key's `= value`,
/// and `class_name` = the given class); and the methods both configs share.
///
/// A macro because both configs are flat structs (they are read as shipped and built with struct
/// literals), so no shared field type or trait can hold the shared keys.
///
/// ```ignore
/// pyramid_config! {
///     class CLASS_NAME;
///     /// struct docs
///     pub struct HeliosDMDSchedulerConfig {
///         /// Default [`TimeShiftType::Linear`].
///         pub time_shift_type: TimeShiftType = TimeShiftType::Linear,
///     }
/// }
/// ```
macro_rules! pyramid_config {
    (
        class $class:ident;
        $(#[$meta:meta])*
        pub struct $config:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
        #[serde(default)]
        pub struct $config {
            /// `_class_name`; must be the scheduler's class name (checked by
            /// [`validate`](Self::validate)).
            #[serde(rename = "_class_name")]
            pub class_name: String,
            /// `_diffusers_version` that wrote the file (informational).
            #[serde(rename = "_diffusers_version")]
            pub diffusers_version: Option<String>,
            /// Training timesteps `N` (table length). Default 1000.
            #[serde(deserialize_with = "crate::pipeline::schedulers::pyramid::integral_usize")]
            pub num_train_timesteps: usize,
            /// Fixed flow shift of the global table (`shift·σ/(1+(shift−1)σ)`). Default 1.0; must
            /// be 1.0 with `use_dynamic_shifting`.
            pub shift: f64,
            /// Number of pyramid stages: 1 for Base, 3 for Mid and Distilled. Default 3.
            #[serde(deserialize_with = "crate::pipeline::schedulers::pyramid::integral_usize")]
            pub stages: usize,
            /// Stage boundaries as fractions of the global table, `stages + 1` values (extra
            /// trailing values are ignored, as in diffusers). Default `[0, 1/3, 2/3, 1]`.
            pub stage_range: Vec<f64>,
            /// Block-noise correlation γ (used by stage re-noising and the start-sigma
            /// correction). Default 1/3; must lie in `(0, 1/3]`.
            pub gamma: f64,
            /// Default `flow_prediction` (the only accepted value).
            pub prediction_type: $crate::pipeline::schedulers::pyramid::PredictionType,
            /// Resolution-dependent shift of the sigmas by `mu`. Default false (the shipped
            /// Distilled config turns it on).
            pub use_dynamic_shifting: bool,
            /// `calculate_shift` `base_seq_len` (pipeline fallback 256).
            pub base_image_seq_len: f64,
            /// `calculate_shift` `max_seq_len` (pipeline fallback 4096).
            pub max_image_seq_len: f64,
            /// `calculate_shift` `base_shift` (pipeline fallback 0.5).
            pub base_shift: f64,
            /// `calculate_shift` `max_shift` (pipeline fallback 1.15).
            pub max_shift: f64,
            $( $(#[$field_meta])* pub $field: $ty, )*
            /// Every key not listed above, with its value.
            #[serde(flatten)]
            pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
        }

        impl Default for $config {
            /// The diffusers `__init__` defaults, plus the pipelines' `calculate_shift` fallbacks.
            fn default() -> Self {
                Self {
                    class_name: $class.to_string(),
                    diffusers_version: None,
                    num_train_timesteps: 1000,
                    shift: 1.0,
                    stages: 3,
                    stage_range: vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
                    gamma: 1.0 / 3.0,
                    prediction_type:
                        $crate::pipeline::schedulers::pyramid::PredictionType::FlowPrediction,
                    use_dynamic_shifting: false,
                    base_image_seq_len: 256.0,
                    max_image_seq_len: 4096.0,
                    base_shift: 0.5,
                    max_shift: 1.15,
                    $( $field: $default, )*
                    unknown: std::collections::BTreeMap::new(),
                }
            }
        }

        impl $config {
            /// Parses `scheduler_config.json` text. Does not validate (see
            /// [`validate`](Self::validate), which the scheduler's `new` calls).
            pub fn from_json_str(
                text: &str,
            ) -> Result<Self, $crate::pipeline::schedulers::pyramid::SchedulerError> {
                $crate::pipeline::schedulers::pyramid::parse_config(text)
            }

            /// Reads and parses `scheduler_config.json`.
            pub fn from_file(
                path: &std::path::Path,
            ) -> Result<Self, $crate::pipeline::schedulers::pyramid::SchedulerError> {
                $crate::pipeline::schedulers::pyramid::read_config(path)
            }

            /// Unknown keys worth a warning: those in [`unknown`](Self::unknown) not starting with
            /// `_` (diffusers ignores private `_`-keys such as `_use_default_values` silently).
            pub fn unknown_keys(&self) -> Vec<&str> {
                self.unknown
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !k.starts_with('_'))
                    .collect()
            }

            /// The shared keys, for the checks and tables written once in `pyramid.rs`.
            pub(super) fn keys(&self) -> $crate::pipeline::schedulers::pyramid::PyramidKeys<'_> {
                $crate::pipeline::schedulers::pyramid::PyramidKeys {
                    class_name: &self.class_name,
                    num_train_timesteps: self.num_train_timesteps,
                    shift: self.shift,
                    use_dynamic_shifting: self.use_dynamic_shifting,
                    stages: self.stages,
                    stage_range: &self.stage_range,
                    gamma: self.gamma,
                    base_image_seq_len: self.base_image_seq_len,
                    max_image_seq_len: self.max_image_seq_len,
                    base_shift: self.base_shift,
                    max_shift: self.max_shift,
                }
            }
        }
    };
}
pub(super) use pyramid_config;

/// Declares a scheduler struct holding its validated `$config` and the [`StageTables`] built
/// from it, with the methods both schedulers share: `new`, `config`, `tables`, `calculate_shift`,
/// `time_shift` and `stage_renoise_coeffs`. `$config` comes from [`pyramid_config!`] and has a
/// `validate` method.
macro_rules! pyramid_scheduler {
    (
        $(#[$meta:meta])*
        pub struct $scheduler:ident($config:ident);
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $scheduler {
            config: $config,
            tables: $crate::pipeline::schedulers::pyramid::StageTables,
        }

        impl $scheduler {
            /// Validates `config` (its `validate`) and builds the stage tables (diffusers
            /// `__init__` → `init_sigmas_for_each_stage`).
            pub fn new(
                config: $config,
            ) -> Result<Self, $crate::pipeline::schedulers::pyramid::SchedulerError> {
                config.validate()?;
                let tables = config.keys().stage_tables();
                Ok(Self { config, tables })
            }

            /// The (validated) config.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The stage tables built at construction.
            pub fn tables(&self) -> &$crate::pipeline::schedulers::pyramid::StageTables {
                &self.tables
            }

            /// `mu` for `image_seq_len` tokens: [`calculate_shift`](super::calculate_shift) with
            /// this config's `base_image_seq_len`, `max_image_seq_len`, `base_shift`,
            /// `max_shift` (the pipelines' `self.scheduler.config.get(...)` lookups). Base:
            /// `image_seq_len = 9·(H/8)·(W/8)/4` (8640 at 384×640 → μ = 1.91917); Mid and
            /// Distilled: per stage, see [`pyramid_image_seq_len`](super::pyramid_image_seq_len).
            pub fn calculate_shift(&self, image_seq_len: usize) -> f64 {
                self.config.keys().calculate_shift(image_seq_len)
            }

            /// diffusers `time_shift(mu, 1.0, sigma)` with this config's `time_shift_type`, on a
            /// float64 sigma ([`TimeShiftType::apply`](super::TimeShiftType::apply)).
            pub fn time_shift(&self, mu: f64, sigma: f64) -> f64 {
                self.config.time_shift_type.apply(mu, sigma)
            }

            /// `(alpha, beta)` of the stage-start re-noise `x = alpha·upsample(x) +
            /// beta·block_noise` ([`StageTables::stage_renoise_coeffs`](
            /// super::StageTables::stage_renoise_coeffs) with this config's `gamma`), mirroring
            /// `HeliosPyramidPipeline.__call__` for `stage_idx > 0`.
            ///
            /// # Panics
            /// If `stage` is 0 (stage 0 is never re-noised) or not below `stages`.
            pub fn stage_renoise_coeffs(&self, stage: usize) -> (f64, f64) {
                self.tables.stage_renoise_coeffs(stage, self.config.gamma)
            }
        }
    };
}
pub(super) use pyramid_scheduler;

/// Parses a scheduler config from JSON text.
pub(super) fn parse_config<T: DeserializeOwned>(text: &str) -> Result<T, SchedulerError> {
    serde_json::from_str(text).map_err(|e| SchedulerError::Parse(e.to_string()))
}

/// Reads and parses a scheduler config file; errors name the file.
pub(super) fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, SchedulerError> {
    let read_err = |message: String| SchedulerError::Read {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| read_err(e.to_string()))
}

/// Accepts a non-negative integer written as `1000` or `1000.0` (diffusers configs written by
/// some tools store integers as floats).
pub(super) fn integral_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = f64::deserialize(d)?;
    if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
        Ok(v as usize)
    } else {
        Err(serde::de::Error::custom(format!(
            "expected a non-negative integer, got {v}"
        )))
    }
}

// -------------------------------------------------------------------------------------------------
// Stage tables and schedules
// -------------------------------------------------------------------------------------------------

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
    /// If `stage` is 0 (stage 0 is never re-noised) or not a stage of these tables.
    pub fn stage_renoise_coeffs(&self, stage: usize, gamma: f64) -> (f64, f64) {
        let stages = self.ori_start_sigmas.len();
        assert!(
            stage >= 1 && stage < stages,
            "stage_renoise_coeffs: stage {stage} is not a re-noised stage (1..{stages})"
        );
        let rho = 1.0 - self.ori_start_sigmas[stage];
        let alpha = renoise_alpha(rho, gamma);
        let beta = alpha * (1.0 - rho) / gamma.sqrt();
        (alpha, beta)
    }

    /// The `stages > 1` branch of `set_timesteps` in both schedulers (float64): `n` timesteps
    /// `linspace(tps[s][0], tps[s][-1], n)` and `n` sigmas `linspace(σps[s][0], σps[s][-1], n)`,
    /// finished by [`finish_schedule`]; with `mu`, the timesteps become
    /// `t_min + σ·(t_max − t_min)` over the stage's timestep window.
    ///
    /// # Panics
    /// If `stage` is not a stage of these tables (callers check first).
    pub(super) fn stage_schedule(
        &self,
        stage: usize,
        n: usize,
        shifting: Option<(TimeShiftType, f64)>,
        end: ScheduleEnd,
    ) -> StageSchedule {
        let stage_timesteps = &self.timesteps_per_stage[stage];
        let stage_sigmas = &self.sigmas_per_stage[stage];
        let last = stage_timesteps.len() - 1;
        let timesteps = linspace(stage_timesteps[0], stage_timesteps[last], n);
        let sigmas = linspace(stage_sigmas[0], stage_sigmas[last], n);
        let t_min = stage_timesteps
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let t_max = stage_timesteps
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let span = t_max - t_min;
        let (timesteps, sigmas) = finish_schedule(
            timesteps,
            sigmas,
            end,
            shifting.map(|(kind, mu)| move |s| kind.apply(mu, s)),
            |s| t_min + s * span,
        );
        StageSchedule {
            stage_index: stage,
            timesteps,
            sigmas,
        }
    }
}

/// How `set_timesteps` trims the tables it appends the final `σ = 0` to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScheduleEnd {
    /// `HeliosScheduler`: keep `n` timesteps and `n + 1` sigmas.
    Keep,
    /// `HeliosDMDScheduler`: `self.timesteps[:-1]; torch.cat([self.sigmas[:-2],
    /// self.sigmas[-1:]])` (it laid out one point more than it steps).
    DmdDrop,
}

/// The end of `set_timesteps` both schedulers share, in the float type of the branch:
/// `torch.cat([sigmas, torch.zeros(1)])`, the [`ScheduleEnd`] trim, then with dynamic shifting
/// `sigmas = time_shift(mu, 1.0, sigmas)` and `timesteps = to_timestep(sigmas[:-1])`.
pub(super) fn finish_schedule<T: Copy + Default>(
    mut timesteps: Vec<T>,
    mut sigmas: Vec<T>,
    end: ScheduleEnd,
    time_shift: Option<impl Fn(T) -> T>,
    to_timestep: impl Fn(T) -> T,
) -> (Vec<T>, Vec<T>) {
    sigmas.push(T::default());
    if end == ScheduleEnd::DmdDrop {
        timesteps.pop();
        let last = sigmas.len() - 1;
        sigmas.remove(last - 1);
    }
    if let Some(time_shift) = time_shift {
        for s in sigmas.iter_mut() {
            *s = time_shift(*s);
        }
        timesteps = sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&s| to_timestep(s))
            .collect();
    }
    (timesteps, sigmas)
}

/// `set_timesteps` for `stages == 1` without `sigmas`: diffusers' float32 branch
/// (`np.linspace(1, 1/N, n + 1)[:-1].astype(np.float32)`, the numpy float32 fixed `shift`,
/// `timesteps = sigmas·N`, then the torch float32 dynamic shift), rounded through `f32` exactly
/// where diffusers is in float32. `n` is the step count after any DMD adjustment; `stage_index`
/// is only recorded.
pub(super) fn single_stage_f32_schedule(
    num_train_timesteps: usize,
    shift: f64,
    time_shift_type: TimeShiftType,
    n: usize,
    mu: Option<f64>,
    end: ScheduleEnd,
    stage_index: usize,
) -> StageSchedule {
    let nf32 = num_train_timesteps as f32;
    let mut sigmas: Vec<f32> = linspace(1.0, 1.0 / num_train_timesteps as f64, n + 1)[..n]
        .iter()
        .map(|&s| s as f32)
        .collect();
    if shift != 1.0 {
        // numpy float32: self.time_shift(self.config.shift, 1.0, sigmas)
        for s in sigmas.iter_mut() {
            *s = time_shift_type.apply_numpy_f32(shift, *s);
        }
    }
    let timesteps: Vec<f32> = sigmas.iter().map(|s| s * nf32).collect();
    // torch float32: `scalar / tensor` is `tensor.reciprocal() * scalar`.
    let (timesteps, sigmas) = finish_schedule(
        timesteps,
        sigmas,
        end,
        mu.map(|mu| move |s| time_shift_type.apply_torch_f32(mu, s)),
        |s| s * nf32,
    );
    StageSchedule {
        stage_index,
        timesteps: timesteps.into_iter().map(f64::from).collect(),
        sigmas: sigmas.into_iter().map(f64::from).collect(),
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

// -------------------------------------------------------------------------------------------------
// Pipeline-side arithmetic
// -------------------------------------------------------------------------------------------------

/// The timestep the pipeline feeds to the transformer: `t.expand(B).to(torch.int64)` in
/// `HeliosPyramidPipeline.__call__`, i.e. truncation toward zero (998.53 → 998), returned as
/// `f64` for the time embedding. Not rounding: the transformer never sees the float timestep.
pub fn model_timestep(t: f64) -> f64 {
    t.trunc()
}

/// Resolution-dependent shift `mu`, mirroring `calculate_shift` in
/// `pipelines/helios/pipeline_helios_pyramid.py` and `pipeline_helios.py` (copied from Flux): a
/// line through `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)`, not clamped.
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
