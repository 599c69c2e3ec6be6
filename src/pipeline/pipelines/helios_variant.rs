//! Which Helios a checkpoint folder holds, read from its small JSON files: `model_index.json`
//! (`_class_name`, `is_distilled`, `is_cfg_zero_star`) checked against
//! `scheduler/scheduler_config.json` `_class_name`. The [`Variant`] picks the sampler and the
//! request defaults; the [`PipelineScheduler`] is the scheduler the config describes.

use std::path::Path;

use crate::pipeline::checkpoint::{LoadError, component_dir, read_config};
use crate::pipeline::error::PipelineError;
use crate::pipeline::request::ModelDefaults;
use crate::pipeline::schedulers::scheduling_helios::{HeliosScheduler, HeliosSchedulerConfig};
use crate::pipeline::schedulers::scheduling_helios_dmd::{
    HeliosDMDScheduler, HeliosDMDSchedulerConfig,
};

/// `model_index.json` of a Helios checkpoint.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(default)]
    pub is_distilled: bool,
    #[serde(default)]
    pub is_cfg_zero_star: bool,
    /// Component entries (`"transformer": ["diffusers", "HeliosTransformer3DModel"]`, ...).
    #[serde(flatten)]
    pub components: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Which Helios checkpoint a folder holds (and so which sampler and defaults it gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `HeliosPipeline` + `HeliosScheduler` (one stage): UniPC, CFG with the negative prompt.
    Base,
    /// `HeliosPyramidPipeline` (not distilled) + `HeliosScheduler`: pyramid UniPC, CFG-Zero* when
    /// `is_cfg_zero_star`.
    Mid,
    /// `HeliosPyramidPipeline` with `is_distilled` + `HeliosDMDScheduler`: pyramid DMD, no CFG.
    Distilled,
}

impl Variant {
    /// The request defaults of this variant with `scheduler`'s stage count.
    pub fn defaults(
        self,
        model_index: &ModelIndex,
        scheduler: &PipelineScheduler,
    ) -> ModelDefaults {
        let mut d = match self {
            Variant::Base => ModelDefaults::helios_base(),
            Variant::Mid => ModelDefaults::helios_mid(),
            Variant::Distilled => ModelDefaults::helios_distilled(),
        };
        let r = &mut d.request;
        if self == Variant::Mid {
            r.use_cfg_zero_star = model_index.is_cfg_zero_star;
        }
        r.pyramid_num_stages = scheduler.stages();
        if self != Variant::Base {
            let last = *r.pyramid_num_inference_steps_list.last().unwrap_or(&2);
            r.pyramid_num_inference_steps_list
                .resize(r.pyramid_num_stages, last);
        }
        d
    }
}

/// The scheduler of a checkpoint: `HeliosDMDScheduler` (Distilled) or `HeliosScheduler` (Base,
/// Mid), as its `scheduler_config.json` `_class_name` says.
#[derive(Debug, Clone)]
pub enum PipelineScheduler {
    Dmd(HeliosDMDScheduler),
    Helios(HeliosScheduler),
}

impl PipelineScheduler {
    /// Pyramid stages of the scheduler tables.
    pub fn stages(&self) -> usize {
        match self {
            Self::Dmd(s) => s.config().stages,
            Self::Helios(s) => s.config().stages,
        }
    }

    /// Block-noise γ.
    pub fn gamma(&self) -> f64 {
        match self {
            Self::Dmd(s) => s.config().gamma,
            Self::Helios(s) => s.config().gamma,
        }
    }

    /// `calculate_shift` with this scheduler's config keys.
    pub fn calculate_shift(&self, image_seq_len: usize) -> f64 {
        match self {
            Self::Dmd(s) => s.calculate_shift(image_seq_len),
            Self::Helios(s) => s.calculate_shift(image_seq_len),
        }
    }

    /// `(alpha, beta)` of the stage-start re-noise of pyramid stage `stage ≥ 1`.
    pub fn stage_renoise_coeffs(&self, stage: usize) -> (f64, f64) {
        match self {
            Self::Dmd(s) => s.stage_renoise_coeffs(stage),
            Self::Helios(s) => s.stage_renoise_coeffs(stage),
        }
    }
}

/// Read `model_index.json`, the scheduler config and tell the variant apart (see [`Variant`]).
///
/// # Errors
/// [`PipelineError::Load`] for a missing or unreadable file; [`PipelineError::Unsupported`] for
/// a pipeline class this build does not run or a scheduler class that does not fit it.
pub fn read_checkpoint_configs(
    dir: &Path,
) -> Result<(ModelIndex, Variant, PipelineScheduler), PipelineError> {
    let model_index = read_model_index(dir)?;
    let path = component_dir(dir, "scheduler")?.join("scheduler_config.json");
    #[derive(serde::Deserialize)]
    struct ClassOnly {
        #[serde(rename = "_class_name")]
        class_name: String,
        /// The other keys, read by the scheduler's own config below.
        #[serde(flatten)]
        _rest: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let (ClassOnly { class_name, .. }, _) = read_config::<ClassOnly>(&path)?;
    let variant = match (model_index.class_name.as_str(), model_index.is_distilled) {
        ("HeliosPipeline", _) => Variant::Base,
        ("HeliosPyramidPipeline", true) => Variant::Distilled,
        ("HeliosPyramidPipeline", false) => Variant::Mid,
        _ => unreachable!("read_model_index checked the class"),
    };
    let expected = match variant {
        Variant::Distilled => "HeliosDMDScheduler",
        _ => "HeliosScheduler",
    };
    if class_name != expected {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{class_name}` does not fit this checkpoint's {} (is_distilled={}); it needs `{expected}`",
            path.display(),
            model_index.class_name,
            model_index.is_distilled
        )));
    }
    let config_err = |message: String| LoadError::Config {
        path: path.clone(),
        message,
    };
    let scheduler = match variant {
        Variant::Distilled => {
            let (cfg, _) = read_config::<HeliosDMDSchedulerConfig>(&path)?;
            for key in cfg.unknown_keys() {
                tracing::warn!("{}: unknown config key `{key}` ignored", path.display());
            }
            PipelineScheduler::Dmd(
                HeliosDMDScheduler::new(cfg).map_err(|e| config_err(e.to_string()))?,
            )
        }
        Variant::Base | Variant::Mid => {
            let (cfg, _) = read_config::<HeliosSchedulerConfig>(&path)?;
            for key in cfg.unknown_keys() {
                tracing::warn!("{}: unknown config key `{key}` ignored", path.display());
            }
            let sched = HeliosScheduler::new(cfg).map_err(|e| config_err(e.to_string()))?;
            let stages = sched.config().stages;
            if (variant == Variant::Base) != (stages == 1) {
                return Err(config_err(format!(
                    "stages = {stages} does not fit {} (HeliosPipeline needs 1 stage, HeliosPyramidPipeline more)",
                    model_index.class_name
                ))
                .into());
            }
            PipelineScheduler::Helios(sched)
        }
    };
    Ok((model_index, variant, scheduler))
}

/// Read `model_index.json` and check that the folder holds a pipeline this build runs.
fn read_model_index(dir: &Path) -> Result<ModelIndex, PipelineError> {
    if !dir.is_dir() {
        return Err(LoadError::Missing {
            path: dir.to_path_buf(),
            what: "the checkpoint folder".into(),
        }
        .into());
    }
    let path = dir.join("model_index.json");
    let (model_index, _) = read_config::<ModelIndex>(&path)?;
    if !matches!(
        model_index.class_name.as_str(),
        "HeliosPipeline" | "HeliosPyramidPipeline"
    ) {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{}` is not a Helios pipeline; this build runs HeliosPipeline (Base) and \
             HeliosPyramidPipeline (Mid, Distilled)",
            path.display(),
            model_index.class_name,
        )));
    }
    Ok(model_index)
}

/// The request defaults of the checkpoint folder `dir`, read from its small JSON files only
/// (cheap: lets a caller validate a request before loading any weights).
///
/// # Errors
/// As [`HeliosPyramidPipeline::load`](super::pipeline_helios_pyramid::HeliosPyramidPipeline::load) for `model_index.json` and the scheduler config.
pub fn checkpoint_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let (model_index, variant, scheduler) = read_checkpoint_configs(dir)?;
    Ok(variant.defaults(&model_index, &scheduler))
}
