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
use super::lora::{LoraCache, LoraError};
use super::models::transformer_helios;
pub use super::pipelines::pipeline_helios_pyramid::RunContext;
use super::pipelines::pipeline_helios_pyramid::{
    HeliosPyramidPipeline, PromptEncoder, TextEncoderResidency, checkpoint_defaults,
};
pub use super::pipelines::pipeline_output::{FrameSink, VideoFrames};
use super::pipelines::pipeline_wan::{WanPipeline, wan_defaults};
use super::precision::{Dtype, Precision};
use super::progress::ProgressSink;
use super::request::{GenerationRequest, ModelDefaults};
use crate::postprocess::rife::{IFNet, InterpolatingSink};

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

    /// The Linear modules a LoRA adapter may target in the checkpoint folder `dir`, from its
    /// `transformer/config.json` only (no weights are read).
    ///
    /// # Errors
    /// [`PipelineError::Load`] when the config is missing or unreadable.
    pub fn lora_targets_of(dir: &Path) -> Result<super::lora::LoraTargets, PipelineError> {
        let (config, _) = read_config::<transformer_helios::HeliosTransformer3DModelConfig>(
            &dir.join("transformer").join("config.json"),
        )?;
        Ok(config.lora_targets())
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
            super::lora::LoraAdapter::read(Path::new(path), &spec.label())?
                .check_targets(&targets)?;
        }
        Ok(())
    }

    /// Open the checkpoint folder `dir` as `options` says, reporting loading to `progress`.
    ///
    /// # Errors
    /// [`PipelineError::Load`] naming a missing or broken file; [`PipelineError::Unsupported`]
    /// for a checkpoint this build does not run.
    pub fn open(
        dir: &Path,
        options: GeneratorOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let entry = pipeline_entry(dir)?;
        let defaults = (entry.defaults)(dir)?;
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

/// The Helios family (Base, Mid, Distilled) on the build's backend.
struct Helios {
    dir: std::path::PathBuf,
    policy: LoadPolicy,
    precision: Precision,
    /// `None` until the first request under [`LoadPolicy::EncodeThenLoad`].
    pipe: Option<HeliosPyramidPipeline<DefaultBackend>>,
    /// Parsed LoRA adapters by path.
    loras: LoraCache,
    /// The last RIFE model used, by path.
    rife: Option<(std::path::PathBuf, IFNet<DefaultBackend>)>,
}

impl Helios {
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
        let mut helios = Self {
            dir: dir.to_path_buf(),
            policy: options.load,
            precision,
            pipe: None,
            loras: LoraCache::default(),
            rife: None,
        };
        if options.load != LoadPolicy::EncodeThenLoad {
            helios.load(progress)?;
        }
        Ok(Box::new(helios))
    }

    fn load(&mut self, progress: &mut dyn ProgressSink) -> Result<(), PipelineError> {
        let residency = match self.policy {
            LoadPolicy::KeepAll => TextEncoderResidency::Resident,
            _ => TextEncoderResidency::OnDemand,
        };
        self.pipe = Some(HeliosPyramidPipeline::load_with(
            &self.dir,
            &thread_device(),
            self.precision,
            residency,
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
        self.ensure_rife(req)?;
        // Adapters are read (and checked) before anything heavy runs.
        let adapters = req
            .lora
            .0
            .iter()
            .map(|spec| Ok((self.loras.get(spec)?, spec.scale())))
            .collect::<Result<Vec<_>, LoraError>>()?;
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
        let mut rife_sink;
        let sink: &mut dyn FrameSink = match &self.rife {
            Some((_, net)) if req.enable_frame_interpolation => {
                rife_sink = InterpolatingSink::new(
                    net,
                    req.frame_interpolation_exp,
                    req.frame_interpolation_scale,
                    sink,
                );
                &mut rife_sink
            }
            _ => sink,
        };
        let (n, state_out) = with_loras(pipe, &adapters, |pipe| {
            let embeds = match embeds {
                Some(embeds) => embeds,
                None => pipe.encode_request(req, &mut *ctx.progress)?,
            };
            pipe.call_continued(req, embeds, ctx, sink, state, want_state)
        })?;
        let n = match req.enable_frame_interpolation {
            true => (n.max(1) - 1) * (1 << req.frame_interpolation_exp) + 1,
            false => n,
        };
        Ok((n, state_out))
    }
}

/// The Wan family (`WanPipeline`: Wan2.1 T2V, Wan2.2 A14B) on the build's backend, with the same
/// load policies as [`Helios`].
struct Wan {
    dir: std::path::PathBuf,
    policy: LoadPolicy,
    precision: Precision,
    /// `None` until the first request under [`LoadPolicy::EncodeThenLoad`].
    pipe: Option<WanPipeline<DefaultBackend>>,
}

impl Wan {
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
        let mut wan = Self {
            dir: dir.to_path_buf(),
            policy: options.load,
            precision,
            pipe: None,
        };
        if options.load != LoadPolicy::EncodeThenLoad {
            wan.load(progress)?;
        }
        Ok(Box::new(wan))
    }

    fn load(&mut self, progress: &mut dyn ProgressSink) -> Result<(), PipelineError> {
        let residency = match self.policy {
            LoadPolicy::KeepAll => TextEncoderResidency::Resident,
            _ => TextEncoderResidency::OnDemand,
        };
        self.pipe = Some(WanPipeline::load_with(
            &self.dir,
            &thread_device(),
            self.precision,
            residency,
            progress,
        )?);
        Ok(())
    }
}

impl Helios {
    /// Load the request's RIFE model unless it is the one already loaded.
    fn ensure_rife(&mut self, req: &GenerationRequest) -> Result<(), PipelineError> {
        if !req.enable_frame_interpolation {
            return Ok(());
        }
        let path = std::path::PathBuf::from(&req.frame_interpolation_model_path);
        if req.frame_interpolation_model_path.is_empty() {
            return Err(PipelineError::Unsupported(
                "`enable_frame_interpolation` needs a RIFE model: set `frame_interpolation_model_path` (or --rife-model / [postprocess] rife_model)".into(),
            ));
        }
        if self.rife.as_ref().is_none_or(|(p, _)| *p != path) {
            let net = IFNet::load(&path, &thread_device())
                .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
            self.rife = Some((path, net));
        }
        Ok(())
    }
}

impl DiffusionPipeline for Wan {
    fn generate(
        &mut self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        if let Some(pipe) = &self.pipe {
            return pipe.call(req, ctx, sink);
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
        let pipe = self.pipe.as_ref().expect("loaded above");
        pipe.call_with_embeds(req, embeds, ctx, sink)
    }

    /// Wan makes the whole video in one window: there is no chunk history to continue from.
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
                "state: continuation is a Helios feature; a WanPipeline checkpoint makes the whole video at once".into(),
            ));
        }
        Ok((self.generate(req, ctx, sink)?, None))
    }
}

/// Run `f` with `adapters` merged into the transformer, restoring the original weights after it
/// (on success and on failure alike).
fn with_loras<T>(
    pipe: &mut HeliosPyramidPipeline<DefaultBackend>,
    adapters: &[(std::sync::Arc<super::lora::LoraAdapter>, f64)],
    f: impl FnOnce(&HeliosPyramidPipeline<DefaultBackend>) -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    if adapters.is_empty() {
        return f(pipe);
    }
    let device = thread_device();
    let transformer = pipe.transformer.clone();
    let (merged, originals) = super::lora::merge(
        transformer,
        adapters,
        transformer_helios::diffusers_module_path,
        transformer_helios::burn_param_path,
        &device,
    )?;
    pipe.transformer = merged;
    let out = f(pipe);
    pipe.transformer = originals.restore(pipe.transformer.clone());
    out
}
