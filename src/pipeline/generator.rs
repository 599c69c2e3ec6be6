//! [`Generator`]: the one door `omni generate`, `omni serve` and `omni bench pipeline` use to
//! run a checkpoint. It owns the backend (CPU `Flex`, or `Cuda<bf16>` with `--features cuda`),
//! the load order and the text-encoder residency; callers hand it a resolved
//! [`GenerationRequest`], a [`RunContext`] and a [`FrameSink`], and never name a Burn type.
//!
//! The checkpoint's `model_index.json` `_class_name` picks the pipeline through one registry,
//! [`PIPELINES`] (diffusers' `DiffusionPipeline.from_pretrained` does the same with its class
//! lookup): adding a model family is a new file under `pipelines/` and one registry line.

use std::path::Path;

use super::backend::{DefaultBackend, DeviceMemory, device_memory, thread_device};
use super::checkpoint::{LoadError, read_config};
use super::continuation::HeliosState;
use super::error::PipelineError;
use super::lora::{CheckpointTargets, ExpertAdapters, LoraCache, LoraError};
use super::models::transformer_helios;
use super::models::transformer_wan::{self, WanTransformer3DModel, WanTransformer3DModelConfig};
pub use super::pipelines::pipeline_helios_pyramid::RunContext;
use super::pipelines::pipeline_helios_pyramid::{
    HeliosPyramidPipeline, PromptEncoder, TextEncoderResidency, checkpoint_defaults,
};
pub use super::pipelines::pipeline_output::{FrameSink, VideoFrames};
pub use super::pipelines::pipeline_wan::ExpertResidency;
use super::pipelines::pipeline_wan::{WanModelIndex, WanPipeline, wan_defaults};
use super::pipelines::pipeline_wan_i2v::{WanImageToVideoPipeline, wan_i2v_defaults};
use super::pipelines::pipeline_wan_video2video::{WanVideoToVideoPipeline, wan_v2v_defaults};
use super::precision::{Dtype, Precision};
use super::progress::ProgressSink;
use super::request::{GenerationRequest, ModelDefaults};
use crate::postprocess::chain::PostprocessModels;

/// When the models are loaded and whether the text encoder stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadPolicy {
    /// Everything loaded by [`Generator::open`], the text encoder kept between requests (the
    /// server's default: no reload per request).
    #[default]
    KeepAll,
    /// Transformer and VAE loaded by [`Generator::open`]; the text encoder loaded for each
    /// request and dropped after encoding (`keep_text_encoder = false`: frees ~11 GB of GPU
    /// memory in bf16 for a reload per request).
    TextEncoderPerRequest,
    /// One-shot (`omni generate`): `open` reads the configs only; the first
    /// [`Generator::generate`] encodes the prompt, drops the text encoder, then loads the
    /// transformer and VAE, so UMT5-XXL and the transformer are never in memory together.
    EncodeThenLoad,
}

/// How [`Generator::open`] loads a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeneratorOptions {
    pub load: LoadPolicy,
    /// VAE compute dtype; `None` = diffusers' recipe (f32, as the Helios examples load it).
    pub vae_dtype: Option<Dtype>,
    /// Wan2.2 A14B: whether one expert is on the device at a time (`omni generate
    /// --offload-experts`, serve.toml `offload_experts`); `on` / `off` need a checkpoint that
    /// can honour them ([`check_expert_residency`]).
    pub offload_experts: ExpertResidency,
}

impl std::str::FromStr for ExpertResidency {
    type Err = String;

    /// `auto`, `on` (one expert at a time), `off` (both resident).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("`{other}` is not auto, on or off")),
        }
    }
}

impl std::fmt::Display for ExpertResidency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// Check an expert residency against the checkpoint whose defaults are `defaults`: other than
/// `auto` it needs two experts (`transformer_2`), and `on` a pipeline that offloads them
/// (`WanPipeline`; `WanImageToVideoPipeline` keeps both resident). A switch that would do
/// nothing is refused, not ignored.
///
/// # Errors
/// Why not, in words (callers name their flag or key in front of it).
pub fn check_expert_residency(
    defaults: &ModelDefaults,
    residency: ExpertResidency,
) -> Result<(), String> {
    let class = defaults.pipeline_class.as_str();
    let two_experts = defaults.guidance_scale_2_follows;
    match residency {
        ExpertResidency::Auto => Ok(()),
        _ if !two_experts => Err(format!(
            "this {class} checkpoint has one transformer (no transformer_2), so there is no \
             expert to offload; leave it at auto"
        )),
        ExpertResidency::On if class != super::pipelines::pipeline_wan::CLASS_NAME => Err(format!(
            "{class} keeps both experts resident; only WanPipeline (text-to-video) loads one \
             expert at a time"
        )),
        _ => Ok(()),
    }
}

/// A loaded (or, with [`LoadPolicy::EncodeThenLoad`], ready-to-load) pipeline of one family.
pub trait DiffusionPipeline {
    /// Run one resolved request, handing decoded frames to `sink` chunk by chunk; returns the
    /// number of frames delivered.
    ///
    /// # Errors
    /// [`PipelineError`]: a load failure (lazy loading), unsupported settings, a missing noise
    /// draw, a sink failure, cancellation.
    fn generate(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError>;

    /// [`generate`](Self::generate) continuing from `state` and/or returning the state after
    /// the last chunk ([`crate::pipeline::continuation`]).
    ///
    /// # Errors
    /// As [`generate`](Self::generate); [`PipelineError::Unsupported`] ("state: …") for a
    /// state this pipeline cannot continue.
    fn generate_continued(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
        state: Option<&HeliosState>,
        want_state: bool,
    ) -> Result<(usize, Option<HeliosState>), PipelineError>;
}

/// How a registry line opens a checkpoint folder.
pub type OpenFn = fn(
    &Path,
    &GeneratorOptions,
    &mut dyn ProgressSink,
) -> Result<Box<dyn DiffusionPipeline>, PipelineError>;

/// One registry line: a diffusers pipeline class and how to read and open it.
pub struct PipelineEntry {
    /// `model_index.json` `_class_name`.
    pub class_name: &'static str,
    /// The request defaults of a checkpoint folder, from its small JSON files only.
    pub defaults: fn(&Path) -> Result<ModelDefaults, PipelineError>,
    /// Open the checkpoint folder.
    pub open: OpenFn,
}

/// Every pipeline class this build runs.
pub const PIPELINES: &[PipelineEntry] = &[
    PipelineEntry {
        class_name: "HeliosPipeline",
        defaults: checkpoint_defaults,
        open: Helios::open,
    },
    PipelineEntry {
        class_name: "HeliosPyramidPipeline",
        defaults: checkpoint_defaults,
        open: Helios::open,
    },
    PipelineEntry {
        class_name: super::pipelines::pipeline_wan::CLASS_NAME,
        defaults: wan_defaults,
        open: Wan::open,
    },
    PipelineEntry {
        class_name: super::pipelines::pipeline_wan_i2v::CLASS_NAME,
        defaults: wan_i2v_defaults,
        open: WanI2V::open,
    },
    PipelineEntry {
        class_name: super::pipelines::pipeline_wan_video2video::CLASS_NAME,
        defaults: wan_v2v_defaults,
        open: WanV2V::open,
    },
];

/// The registry line for the checkpoint folder `dir`.
///
/// # Errors
/// [`PipelineError::Load`] when the folder or `model_index.json` is missing or unreadable;
/// [`PipelineError::Unsupported`] for a class not in [`PIPELINES`] (the message lists them).
pub fn pipeline_entry(dir: &Path) -> Result<&'static PipelineEntry, PipelineError> {
    if !dir.is_dir() {
        return Err(LoadError::Missing {
            path: dir.to_path_buf(),
            what: "the checkpoint folder".into(),
        }
        .into());
    }
    #[derive(serde::Deserialize)]
    struct ClassName {
        #[serde(rename = "_class_name")]
        class_name: String,
        #[serde(flatten)]
        _rest: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let path = dir.join("model_index.json");
    let (ClassName { class_name, .. }, _) = read_config::<ClassName>(&path)?;
    PIPELINES
        .iter()
        .find(|e| e.class_name == class_name)
        .ok_or_else(|| {
            let known: Vec<&str> = PIPELINES.iter().map(|e| e.class_name).collect();
            PipelineError::Unsupported(format!(
                "{}: `{class_name}` is not a pipeline this build runs ({})",
                path.display(),
                known.join(", ")
            ))
        })
}

/// A checkpoint ready to generate.
pub struct Generator {
    pipeline: Box<dyn DiffusionPipeline>,
    defaults: ModelDefaults,
}

impl Generator {
    /// The request defaults of the checkpoint folder `dir` without loading any weights (lets a
    /// caller resolve and validate a request first).
    ///
    /// # Errors
    /// As [`pipeline_entry`], and the family's config checks (e.g. a scheduler class that does
    /// not fit the pipeline class).
    pub fn defaults_of(dir: &Path) -> Result<ModelDefaults, PipelineError> {
        (pipeline_entry(dir)?.defaults)(dir)
    }

    /// The Linear modules LoRA adapters may target in the checkpoint folder `dir`: its
    /// `transformer`'s and, on a two-expert checkpoint (Wan2.2 A14B, `model_index.json`
    /// `transformer_2`), `transformer_2`'s; from the `config.json` files only (no weights are
    /// read). The transformer's `_class_name` picks Wan's or Helios's module list.
    ///
    /// # Errors
    /// [`PipelineError::Load`] when a config is missing or unreadable.
    pub fn lora_targets_of(dir: &Path) -> Result<CheckpointTargets, PipelineError> {
        #[derive(serde::Deserialize)]
        struct ClassName {
            #[serde(rename = "_class_name", default)]
            class_name: String,
            #[serde(flatten)]
            _rest: std::collections::BTreeMap<String, serde_json::Value>,
        }
        let config = |sub: &str| dir.join(sub).join("config.json");
        let (ClassName { class_name, .. }, _) = read_config::<ClassName>(&config("transformer"))?;
        if class_name != WanTransformer3DModelConfig::CLASS_NAME {
            let (c, _) = read_config::<transformer_helios::HeliosTransformer3DModelConfig>(
                &config("transformer"),
            )?;
            return Ok(CheckpointTargets {
                transformer: c.lora_targets(),
                transformer_2: None,
            });
        }
        let wan = |sub: &str| {
            read_config::<WanTransformer3DModelConfig>(&config(sub)).map(|(c, _)| c.lora_targets())
        };
        let (index, _) = read_config::<WanModelIndex>(&dir.join("model_index.json"))?;
        Ok(CheckpointTargets {
            transformer: wan("transformer")?,
            transformer_2: index
                .has_transformer_2()
                .then(|| wan("transformer_2"))
                .transpose()?,
        })
    }

    /// Read the adapters of `req.lora` and check them against the checkpoint `dir` (before any
    /// weights are loaded), so a bad adapter fails in one line / one 400.
    ///
    /// # Errors
    /// [`PipelineError::Lora`] naming the adapter and key; [`PipelineError::Load`] for the config.
    pub fn check_loras(dir: &Path, req: &GenerationRequest) -> Result<(), PipelineError> {
        if req.lora.is_empty() {
            return Ok(());
        }
        let targets = Self::lora_targets_of(dir)?;
        for spec in &req.lora.0 {
            let path = spec.path.as_deref().unwrap_or_default();
            let adapter = super::lora::LoraAdapter::read(Path::new(path), &spec.label())?;
            targets.check(&adapter, spec)?;
        }
        Ok(())
    }

    /// Open the checkpoint folder `dir` as `options` says, reporting loading to `progress`.
    ///
    /// # Errors
    /// [`PipelineError::Load`] naming a missing or broken file; [`PipelineError::Unsupported`]
    /// for a checkpoint this build does not run, or an expert residency it cannot honour
    /// ([`check_expert_residency`]).
    pub fn open(
        dir: &Path,
        options: GeneratorOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let entry = pipeline_entry(dir)?;
        let defaults = (entry.defaults)(dir)?;
        check_expert_residency(&defaults, options.offload_experts).map_err(|why| {
            PipelineError::Unsupported(format!(
                "offload_experts = {}: {why}",
                options.offload_experts
            ))
        })?;
        let pipeline = (entry.open)(dir, &options, progress)?;
        Ok(Self { pipeline, defaults })
    }

    /// The checkpoint's request defaults (the lowest layer of every request).
    pub fn defaults(&self) -> &ModelDefaults {
        &self.defaults
    }

    /// Generate the video of `req` (resolved against [`defaults`](Self::defaults)).
    ///
    /// # Errors
    /// As [`DiffusionPipeline::generate`].
    pub fn generate(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        self.pipeline.generate(req, ctx, sink)
    }

    /// [`generate`](Self::generate) continuing from a continuation `state` (of a video this
    /// checkpoint made at the same size) and/or returning the state after the last chunk.
    ///
    /// # Errors
    /// As [`DiffusionPipeline::generate_continued`].
    pub fn generate_continued(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
        state: Option<&HeliosState>,
        want_state: bool,
    ) -> Result<(usize, Option<HeliosState>), PipelineError> {
        self.pipeline
            .generate_continued(req, ctx, sink, state, want_state)
    }

    /// GPU memory in use now on the build's device (`None` on the CPU backend).
    pub fn device_memory() -> Option<DeviceMemory> {
        device_memory::<DefaultBackend>(&thread_device())
    }

    /// Check that the backend's device works (a CUDA build on a machine without a driver or
    /// GPU fails here, in one line, before minutes of loading).
    ///
    /// # Errors
    /// A message saying what is missing.
    pub fn probe_device() -> Result<(), String> {
        super::backend::probe_device()
    }
}

/// A pipeline class a family struct ([`Family`]) loads on the build's default device.
trait FamilyPipeline: Sized {
    /// Load the pipeline from `dir`, with the experts' residency (Wan2.2 A14B); pipelines that
    /// keep every expert resident ignore `experts` ([`check_expert_residency`] refused `on` and
    /// `off` for them).
    fn load(
        dir: &Path,
        precision: Precision,
        residency: TextEncoderResidency,
        experts: ExpertResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError>;

    /// Check `req`'s inputs against the checkpoint `dir` before anything is loaded (an input the
    /// checkpoint cannot take fails in one line, not after minutes of loading).
    ///
    /// # Errors
    /// [`PipelineError::Unsupported`] naming the input.
    fn check_inputs(_dir: &Path, _req: &GenerationRequest) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// [`FamilyPipeline`] for a pipeline class whose inherent `load_with(dir, &device, precision,
/// residency, progress)` loads it (every expert resident), with its `check_inputs` (a
/// `fn(&Path, &GenerationRequest)`) when it takes inputs.
macro_rules! family_pipeline {
    ($pipe:ty $(, $check:expr)?) => {
        impl FamilyPipeline for $pipe {
            fn load(
                dir: &Path,
                precision: Precision,
                residency: TextEncoderResidency,
                _experts: ExpertResidency,
                progress: &mut dyn ProgressSink,
            ) -> Result<Self, PipelineError> {
                Self::load_with(dir, &thread_device(), precision, residency, progress)
            }

            $(fn check_inputs(dir: &Path, req: &GenerationRequest) -> Result<(), PipelineError> {
                $check(dir, req)
            })?
        }
    };
}

family_pipeline!(HeliosPyramidPipeline<DefaultBackend>);
/// `WanPipeline` also takes the experts' residency (Wan2.2 A14B), so it is written out.
impl FamilyPipeline for WanPipeline<DefaultBackend> {
    fn check_inputs(dir: &Path, req: &GenerationRequest) -> Result<(), PipelineError> {
        let configs = super::pipelines::pipeline_wan::read_wan_configs(dir)?;
        super::pipelines::pipeline_wan::check_wan_inputs(configs.model_index.expand_timesteps, req)
    }

    fn load(
        dir: &Path,
        precision: Precision,
        residency: TextEncoderResidency,
        experts: ExpertResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        Self::load_with_experts(
            dir,
            &thread_device(),
            precision,
            residency,
            experts,
            progress,
        )
    }
}
family_pipeline!(
    WanImageToVideoPipeline<DefaultBackend>,
    |dir: &Path, req| {
        let configs = super::pipelines::pipeline_wan_i2v::read_wan_i2v_configs(dir)?;
        super::pipelines::pipeline_wan_i2v::check_i2v_inputs(configs.takes_last_image, req)
            .map(|_| ())
    }
);
family_pipeline!(WanVideoToVideoPipeline<DefaultBackend>, |_: &Path, req| {
    super::pipelines::pipeline_wan_video2video::check_v2v_inputs(req).map(|_| ())
});

/// One model family's pipeline `P` on the build's backend: the checkpoint folder, the load
/// policy (everything at [`Family::open`], or lazily after the prompt is encoded under
/// [`LoadPolicy::EncodeThenLoad`]) and the per-request adapters. [`Helios`] and [`Wan`] are its
/// instances; each implements [`DiffusionPipeline`] for its own loop.
struct Family<P> {
    dir: std::path::PathBuf,
    policy: LoadPolicy,
    precision: Precision,
    /// Wan2.2 A14B: where the experts live.
    experts: ExpertResidency,
    /// `None` until the first request under [`LoadPolicy::EncodeThenLoad`].
    pipe: Option<P>,
    /// Parsed LoRA adapters by path.
    loras: LoraCache,
    /// The last RIFE / Real-ESRGAN models used, by path.
    post: PostprocessModels<DefaultBackend>,
}

/// The Helios family (Base, Mid, Distilled) on the build's backend.
type Helios = Family<HeliosPyramidPipeline<DefaultBackend>>;

/// The Wan family (`WanPipeline`: Wan2.1 T2V, Wan2.2 A14B, Wan2.2 TI2V with or without an
/// image) on the build's backend.
type Wan = Family<WanPipeline<DefaultBackend>>;

/// The Wan image-to-video family (`WanImageToVideoPipeline`: Wan2.1 I2V / FLF2V, Wan2.2 I2V
/// A14B) on the build's backend.
type WanI2V = Family<WanImageToVideoPipeline<DefaultBackend>>;

/// The Wan video-to-video family (`WanVideoToVideoPipeline`) on the build's backend.
type WanV2V = Family<WanVideoToVideoPipeline<DefaultBackend>>;

impl<P: FamilyPipeline + 'static> Family<P>
where
    Family<P>: DiffusionPipeline,
{
    fn open(
        dir: &Path,
        options: &GeneratorOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<Box<dyn DiffusionPipeline>, PipelineError> {
        let device = thread_device();
        let mut precision = Precision::for_device::<DefaultBackend>(&device);
        if let Some(vae) = options.vae_dtype {
            precision.vae = vae.into();
        }
        let mut family = Self {
            dir: dir.to_path_buf(),
            policy: options.load,
            precision,
            experts: options.offload_experts,
            pipe: None,
            loras: LoraCache::default(),
            post: PostprocessModels::default(),
        };
        if options.load != LoadPolicy::EncodeThenLoad {
            family.load(progress)?;
        }
        Ok(Box::new(family))
    }
}

impl<P: FamilyPipeline> Family<P> {
    fn load(&mut self, progress: &mut dyn ProgressSink) -> Result<(), PipelineError> {
        let residency = match self.policy {
            LoadPolicy::KeepAll => TextEncoderResidency::Resident,
            _ => TextEncoderResidency::OnDemand,
        };
        self.pipe = Some(P::load(
            &self.dir,
            self.precision,
            residency,
            self.experts,
            progress,
        )?);
        Ok(())
    }
}

impl DiffusionPipeline for Helios {
    fn generate(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        Ok(self.generate_continued(req, ctx, sink, None, false)?.0)
    }

    fn generate_continued(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
        state: Option<&HeliosState>,
        want_state: bool,
    ) -> Result<(usize, Option<HeliosState>), PipelineError> {
        self.post.ensure(req, &thread_device())?;
        // Adapters are read (and checked) before anything heavy runs.
        let adapters = self.loras.get_all(&req.lora)?;
        let embeds = match &self.pipe {
            Some(_) => None,
            None => {
                // EncodeThenLoad: the prompt first, then the text encoder goes before the
                // transformer is loaded.
                let encoder = PromptEncoder::<DefaultBackend>::load(
                    &self.dir,
                    &thread_device(),
                    self.precision.text_encoder,
                    &mut *ctx.progress,
                )?;
                let embeds = encoder.encode_request(req, &mut *ctx.progress)?;
                drop(encoder);
                self.load(&mut *ctx.progress)?;
                Some(embeds)
            }
        };
        let pipe = self.pipe.as_mut().expect("loaded above");
        self.post.run(req, sink, |sink| {
            with_loras(pipe, &adapters, |pipe| {
                let embeds = match embeds {
                    Some(embeds) => embeds,
                    None => pipe.encode_request(req, &mut *ctx.progress)?,
                };
                pipe.call_continued(req, embeds, ctx, sink, state, want_state)
            })
        })
    }
}

/// A pipeline whose transformer(s) take per-request LoRA merges ([`with_loras`]).
trait LoraModels {
    /// The transformer class.
    type Model: burn::module::Module<DefaultBackend>;

    /// A diffusers parameter key as the model's Burn path (its `KEY_REMAP`).
    fn burn_param_path(key: &str) -> String;

    /// Expert `e` (`0` = `transformer`, `1` = `transformer_2`); `None` when absent.
    fn expert_mut(&mut self, e: usize) -> Option<&mut Self::Model>;

    /// Whether an expert may be reloaded from disk during a job (a merge would be lost).
    fn offloads_experts(&self) -> bool {
        false
    }
}

impl LoraModels for HeliosPyramidPipeline<DefaultBackend> {
    type Model = transformer_helios::HeliosTransformer3DModel<DefaultBackend>;
    fn burn_param_path(key: &str) -> String {
        transformer_helios::burn_param_path(key)
    }
    fn expert_mut(&mut self, e: usize) -> Option<&mut Self::Model> {
        (e == 0).then_some(&mut self.transformer)
    }
}

impl LoraModels for WanPipeline<DefaultBackend> {
    type Model = WanTransformer3DModel<DefaultBackend>;
    fn burn_param_path(key: &str) -> String {
        transformer_wan::burn_param_path(key)
    }
    fn expert_mut(&mut self, e: usize) -> Option<&mut Self::Model> {
        WanPipeline::expert_mut(self, e)
    }
    fn offloads_experts(&self) -> bool {
        WanPipeline::offloads_experts(self)
    }
}

impl LoraModels for WanImageToVideoPipeline<DefaultBackend> {
    type Model = WanTransformer3DModel<DefaultBackend>;
    fn burn_param_path(key: &str) -> String {
        transformer_wan::burn_param_path(key)
    }
    fn expert_mut(&mut self, e: usize) -> Option<&mut Self::Model> {
        match e {
            0 => Some(&mut self.transformer),
            _ => self.transformer_2.as_mut(),
        }
    }
}

impl LoraModels for WanVideoToVideoPipeline<DefaultBackend> {
    type Model = WanTransformer3DModel<DefaultBackend>;
    fn burn_param_path(key: &str) -> String {
        transformer_wan::burn_param_path(key)
    }
    fn expert_mut(&mut self, e: usize) -> Option<&mut Self::Model> {
        (e == 0).then_some(&mut self.transformer)
    }
}

/// Run `f` with `adapters` merged into their transformers (`[transformer, transformer_2]`),
/// restoring the original weights after it (on success and on failure alike).
///
/// # Errors
/// [`LoraError::NoTransformer2`] for `transformer_2` adapters on a one-expert pipeline;
/// [`PipelineError::Unsupported`] naming `lora` when the experts are offloaded one at a time;
/// as [`super::lora::merge`]; as `f`.
fn with_loras<P: LoraModels, T>(
    pipe: &mut P,
    adapters: &ExpertAdapters,
    f: impl FnOnce(&P) -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    if adapters.iter().all(Vec::is_empty) {
        return f(pipe);
    }
    if pipe.offloads_experts() {
        return Err(PipelineError::Unsupported(
            "lora: per-request adapters need both experts resident; this pipeline holds one expert at a time (--offload-experts on, or auto on a device too small for both)".into(),
        ));
    }
    let device = thread_device();
    let mut merged = Vec::new();
    let mut failure: Option<PipelineError> = None;
    for (e, list) in adapters.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let Some(model) = pipe.expert_mut(e) else {
            failure = Some(
                LoraError::NoTransformer2 {
                    adapter: list[0].0.name.clone(),
                }
                .into(),
            );
            break;
        };
        match super::lora::merge(
            model.clone(),
            list,
            transformer_helios::diffusers_module_path,
            P::burn_param_path,
            &device,
        ) {
            Ok((m, originals)) => {
                *model = m;
                merged.push((e, originals));
            }
            Err(err) => {
                failure = Some(err.into());
                break;
            }
        }
    }
    let out = match failure {
        Some(err) => Err(err),
        None => f(pipe),
    };
    for (e, originals) in merged {
        let model = pipe.expert_mut(e).expect("merged above");
        *model = originals.restore(model.clone());
    }
    out
}

/// [`DiffusionPipeline`] for a Wan family whose pipeline has `call` and `call_with_embeds` (the
/// whole video in one window; `EncodeThenLoad` encodes the prompt before loading the models).
macro_rules! wan_family_generate {
    ($family:ty, $pipe:ty, $class:literal) => {
        impl DiffusionPipeline for $family {
            fn generate(
                &mut self,
                req: &GenerationRequest,
                ctx: &mut RunContext<'_>,
                sink: &mut dyn FrameSink,
            ) -> Result<usize, PipelineError> {
                <$pipe as FamilyPipeline>::check_inputs(&self.dir, req)?;
                self.post.ensure(req, &thread_device())?;
                // Adapters are read (and checked) before anything heavy runs.
                let adapters = self.loras.get_all(&req.lora)?;
                if let Some(pipe) = &mut self.pipe {
                    let post = &self.post;
                    return Ok(post
                        .run(req, sink, |sink| {
                            with_loras(pipe, &adapters, |pipe| Ok((pipe.call(req, ctx, sink)?, ())))
                        })?
                        .0);
                }
                let embeds = {
                    let encoder = PromptEncoder::<DefaultBackend>::load(
                        &self.dir,
                        &thread_device(),
                        self.precision.text_encoder,
                        &mut *ctx.progress,
                    )?;
                    encoder.encode_request(req, &mut *ctx.progress)?
                };
                self.load(&mut *ctx.progress)?;
                let pipe = self.pipe.as_mut().expect("loaded above");
                let post = &self.post;
                Ok(post
                    .run(req, sink, |sink| {
                        with_loras(pipe, &adapters, |pipe| {
                            Ok((pipe.call_with_embeds(req, embeds, ctx, sink)?, ()))
                        })
                    })?
                    .0)
            }

            /// Wan makes the whole video in one window: there is no chunk history to continue
            /// from.
            fn generate_continued(
                &mut self,
                req: &GenerationRequest,
                ctx: &mut RunContext<'_>,
                sink: &mut dyn FrameSink,
                state: Option<&HeliosState>,
                want_state: bool,
            ) -> Result<(usize, Option<HeliosState>), PipelineError> {
                if state.is_some() || want_state {
                    return Err(PipelineError::Unsupported(
                        concat!(
                            "state: continuation is a Helios feature; a ",
                            $class,
                            " checkpoint makes the whole video at once"
                        )
                        .into(),
                    ));
                }
                Ok((self.generate(req, ctx, sink)?, None))
            }
        }
    };
}

wan_family_generate!(Wan, WanPipeline<DefaultBackend>, "WanPipeline");
wan_family_generate!(
    WanI2V,
    WanImageToVideoPipeline<DefaultBackend>,
    "WanImageToVideoPipeline"
);
wan_family_generate!(
    WanV2V,
    WanVideoToVideoPipeline<DefaultBackend>,
    "WanVideoToVideoPipeline"
);
