//! Mirrors diffusers 0.42.1 `pipelines/wan/pipeline_wan.py` `WanPipeline`: Wan2.1 text-to-video,
//! the Wan2.2 A14B two-expert text-to-video (`transformer` for the high-noise steps,
//! `transformer_2` below `boundary_ratio · num_train_timesteps`, each with its own guidance
//! scale) and the Wan2.2 TI2V-5B text-to-video (`expand_timesteps`: the transformer gets one
//! timestep per token, `mask[0][0][:, ::2, ::2] · t` with diffusers' all-ones `mask`, i.e. the
//! step's timestep on every token; 48-channel latents of the Wan2.2 VAE, 16× spatial and 4×
//! temporal compression, so height and width must be multiples of 16 · 2 = 32).
//!
//! Steps, numbered as in `__call__`:
//! 1. check inputs ([`crate::pipeline::request::resolve`] already did: sizes multiple of 16 (32
//!    with the Wan2.2 VAE: [`ModelDefaults::size_multiple`]),
//!    `num_frames` rounded to `4k + 1`, `guidance_scale_2` defaulting to `guidance_scale`);
//! 3. encode the prompt and, when `guidance_scale > 1`, the negative prompt (UMT5, padded to
//!    `max_sequence_length`: [`PromptEncoder`], shared with Helios);
//! 4. `scheduler.set_timesteps(num_inference_steps)` with the request's `flow_shift`
//!    (`UniPCMultistepScheduler` or `FlowMatchEulerDiscreteScheduler`);
//! 5. the initial latents `[1, C, (F − 1)/4 + 1, H/s, W/s]` (`s = vae.config.scale_factor_spatial`:
//!    8, or 16 for the Wan2.2 VAE), the one random draw, named `latents`;
//! 6. per step: the expert of the timestep, its guidance (CFG as one batch-of-two transformer
//!    call, [cond, uncond]; the same math per row), the scheduler step;
//! 7. de-normalise and decode with the VAE, frames to the [`FrameSink`].
//!
//! Steps 6 and 7 are shared by the three Wan pipelines: [`WanDenoise::run`] (with a per-step
//! model-input hook for image-to-video's extra channels and a start index for video-to-video's
//! `strength`) and [`decode_to_sink`].
//!
//! Wan2.2 TI2V image-to-video: an image given to an `expand_timesteps` checkpoint (whose
//! `model_index.json` says `WanPipeline`, as diffusers' TI2V folder does) runs
//! [`WanImageToVideoPipeline`] over this pipeline's modules, as diffusers users do with
//! `WanImageToVideoPipeline.from_pretrained(folder)`; see [`check_wan_inputs`].
//!
//! Deliberate divergences (pinned by `tests/pipeline_wan.rs`, ≥ 40 dB PSNR on the decoded
//! frames against diffusers with the same initial latents):
//! - the prompt's cross-attention keys/values are computed once per request per expert
//!   ([`WanTransformer3DModel::context`]); diffusers recomputes them every step;
//! - `flow_shift` is a request field: the scheduler is rebuilt with it for the request
//!   (diffusers users do `UniPCMultistepScheduler.from_config(config, flow_shift=…)`);
//! - guidance is computed in f32 on the f32-cast predictions (as in the Helios pipelines).
//!
//! Memory (Wan2.2 A14B): a two-expert 14B checkpoint needs 2 × 26.6 GiB in bf16. With
//! [`ExpertResidency::On`] only the expert of the current step is on the device: the other is
//! dropped first, then loaded again from the checkpoint when the schedule crosses the boundary
//! (once per request, plus once at the start of the next request). [`ExpertResidency::Auto`] (the
//! default) decides at load: after the first expert is loaded, both stay resident if the
//! device's total memory minus what omni's allocator already holds covers the second expert's
//! parameter bytes plus a 20 % working reserve ([`offload_experts_auto`]); on the CPU, or where
//! the device's total memory cannot be read, both stay resident. The output is the same either
//! way (test `one_expert_residency_gives_identical_frames` in `tests/wan_ti2v.rs`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::backend::{device_memory, device_total_memory};
use crate::pipeline::checkpoint::{LoadError, component_dir, read_config};
use crate::pipeline::error::PipelineError;
use crate::pipeline::guidance::Guidance;
use crate::pipeline::models::autoencoder_kl_wan::{AutoencoderKLWan, AutoencoderKLWanConfig};
use crate::pipeline::models::transformer_wan::{
    WanContext, WanTransformer3DModel, WanTransformer3DModelConfig,
};
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{NoProgress, Progress, ProgressSink, loading};
use crate::pipeline::request::{
    Conditioning, GenerationRequest, HELIOS_ONLY_FIELDS, ModelDefaults, V2V_ONLY_FIELDS,
    WAN_ONLY_FIELDS,
};
use crate::pipeline::schedulers::SchedulerError;
use crate::pipeline::schedulers::scheduling_flow_match_euler_discrete::{
    self, FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerConfig,
    FlowMatchEulerSolver,
};
use crate::pipeline::schedulers::scheduling_unipc_multistep::{
    self, UniPCMultistepScheduler, UniPCMultistepSchedulerConfig, UniPcSolver,
};
use crate::pipeline::schedulers::stage_sampler::combine;
use crate::pipeline::schedulers::unipc::{SolverHistory, StepPlan};

use super::pipeline_helios_pyramid::RunContext;
use super::pipeline_output::{FrameSink, postprocess_parts};
use super::pipeline_wan_i2v::{WanImageToVideoPipeline, check_i2v_inputs};
use super::prompt_encoder::{PromptEmbeds, PromptEncoder, TextEncoderResidency};

/// `model_index.json` `_class_name`.
pub const CLASS_NAME: &str = "WanPipeline";

/// The name of the initial-latents draw (see the noise table in `noise.rs`).
pub const LATENTS_DRAW: &str = "latents";

/// `model_index.json` of a `WanPipeline` checkpoint.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WanModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Wan2.2 A14B: where `transformer_2` takes over (`None`: one expert).
    #[serde(default)]
    pub boundary_ratio: Option<f64>,
    /// Wan2.2 TI2V: per-token timesteps (`timestep: [B, S]`).
    #[serde(default)]
    pub expand_timesteps: bool,
    /// `"transformer_2": ["diffusers", "WanTransformer3DModel"]` or `[null, null]`.
    #[serde(default)]
    pub transformer_2: Option<(Option<String>, Option<String>)>,
    /// The other component entries.
    #[serde(flatten)]
    pub components: std::collections::BTreeMap<String, serde_json::Value>,
}

impl WanModelIndex {
    /// Whether the checkpoint has a second (low-noise) expert.
    pub fn has_transformer_2(&self) -> bool {
        matches!(&self.transformer_2, Some((Some(_), Some(_))))
    }
}

/// The scheduler of a Wan checkpoint, as its `scheduler_config.json` `_class_name` says.
#[derive(Debug, Clone)]
pub enum WanScheduler {
    UniPc(UniPCMultistepScheduler),
    FlowMatchEuler(FlowMatchEulerDiscreteScheduler),
}

impl WanScheduler {
    /// The configured flow shift (`flow_shift` / `shift`).
    pub fn flow_shift(&self) -> f64 {
        match self {
            Self::UniPc(s) => s.config().flow_shift,
            Self::FlowMatchEuler(s) => s.config().shift,
        }
    }

    /// `num_train_timesteps`.
    pub fn num_train_timesteps(&self) -> usize {
        match self {
            Self::UniPc(s) => s.config().num_train_timesteps,
            Self::FlowMatchEuler(s) => s.config().num_train_timesteps,
        }
    }

    /// `set_timesteps(n)` of the scheduler with `flow_shift`.
    ///
    /// # Errors
    /// A shift out of range or zero steps.
    pub fn set_timesteps(&self, n: usize, flow_shift: f64) -> Result<WanSolver, SchedulerError> {
        Ok(match self {
            Self::UniPc(s) => WanSolver::UniPc(s.with_flow_shift(flow_shift)?.set_timesteps(n)?),
            Self::FlowMatchEuler(s) => {
                WanSolver::FlowMatchEuler(s.with_shift(flow_shift)?.set_timesteps(n)?)
            }
        })
    }
}

/// One request's schedule and solver state.
#[derive(Debug, Clone)]
pub enum WanSolver {
    UniPc(UniPcSolver),
    FlowMatchEuler(FlowMatchEulerSolver),
}

impl WanSolver {
    /// `scheduler.timesteps`.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Self::UniPc(s) => s.timesteps(),
            Self::FlowMatchEuler(s) => s.timesteps(),
        }
    }

    /// `scheduler.sigmas`, `[n + 1]` (float32 values).
    pub fn sigmas(&self) -> &[f64] {
        match self {
            Self::UniPc(s) => s.sigmas(),
            Self::FlowMatchEuler(s) => s.sigmas(),
        }
    }

    /// Start at step `i` of the schedule (video-to-video `strength`: diffusers truncates
    /// `timesteps` and finds its place with `index_for_timestep`).
    pub fn begin_at(&mut self, i: usize) {
        match self {
            Self::UniPc(s) => s.begin_at(i),
            Self::FlowMatchEuler(s) => s.begin_at(i),
        }
    }

    /// The plan of step `i` (in order).
    pub fn step_plan(&mut self, i: usize) -> StepPlan {
        match self {
            Self::UniPc(s) => s.step_plan(i),
            Self::FlowMatchEuler(s) => s.step_plan(i),
        }
    }
}

/// The small JSON files of a Wan checkpoint: model index, scheduler, and the transformer's input
/// channels (16 for T2V).
pub struct WanConfigs {
    pub model_index: WanModelIndex,
    pub scheduler: WanScheduler,
}

/// Read `model_index.json` and `scheduler/scheduler_config.json` of `dir`.
///
/// # Errors
/// [`PipelineError::Load`] for a missing or unreadable file; [`PipelineError::Unsupported`] for
/// another pipeline class, a `transformer_2` without `boundary_ratio`, or a scheduler class this
/// pipeline does not run.
pub fn read_wan_configs(dir: &Path) -> Result<WanConfigs, PipelineError> {
    let index_path = dir.join("model_index.json");
    let (model_index, _) = read_config::<WanModelIndex>(&index_path)?;
    if model_index.class_name != CLASS_NAME {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{}` is not a WanPipeline",
            index_path.display(),
            model_index.class_name
        )));
    }
    if model_index.has_transformer_2() != model_index.boundary_ratio.is_some() {
        return Err(PipelineError::Unsupported(format!(
            "{}: transformer_2 and boundary_ratio must come together (two experts)",
            index_path.display()
        )));
    }
    let scheduler = read_wan_scheduler(dir)?;
    Ok(WanConfigs {
        model_index,
        scheduler,
    })
}

/// Read `scheduler/scheduler_config.json` of the Wan checkpoint `dir` (every Wan pipeline class
/// shares it).
///
/// # Errors
/// [`PipelineError::Load`] for a missing or unreadable file; [`PipelineError::Unsupported`] for
/// a scheduler class the Wan pipelines do not run.
pub fn read_wan_scheduler(dir: &Path) -> Result<WanScheduler, PipelineError> {
    let path = component_dir(dir, "scheduler")?.join("scheduler_config.json");
    #[derive(serde::Deserialize)]
    struct ClassOnly {
        #[serde(rename = "_class_name")]
        class_name: String,
        #[serde(flatten)]
        _rest: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let (ClassOnly { class_name, .. }, _) = read_config::<ClassOnly>(&path)?;
    let config_err = |message: String| LoadError::Config {
        path: path.clone(),
        message,
    };
    let scheduler = match class_name.as_str() {
        scheduling_unipc_multistep::CLASS_NAME => {
            let (cfg, _) = read_config::<UniPCMultistepSchedulerConfig>(&path)?;
            for key in cfg.unexpected_keys() {
                tracing::warn!("{}: unknown config key `{key}` ignored", path.display());
            }
            WanScheduler::UniPc(
                UniPCMultistepScheduler::new(cfg).map_err(|e| config_err(e.to_string()))?,
            )
        }
        scheduling_flow_match_euler_discrete::CLASS_NAME => {
            let (cfg, _) = read_config::<FlowMatchEulerDiscreteSchedulerConfig>(&path)?;
            WanScheduler::FlowMatchEuler(
                FlowMatchEulerDiscreteScheduler::new(cfg).map_err(|e| config_err(e.to_string()))?,
            )
        }
        other => {
            return Err(PipelineError::Unsupported(format!(
                "{}: `{other}` is not a scheduler WanPipeline runs here (UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)",
                path.display()
            )));
        }
    };
    Ok(scheduler)
}

/// The request defaults of a `WanPipeline` checkpoint: diffusers' `__call__` defaults (832×480,
/// 81 frames, 50 steps, guidance 5.0, 512 prompt tokens), 16 fps (the diffusers Wan examples'
/// `export_to_video(.., fps=16)`), the scheduler's flow shift and, with two experts, the
/// checkpoint's `boundary_ratio` (`guidance_scale_2` follows `guidance_scale`).
///
/// # Errors
/// As [`read_wan_configs`].
pub fn wan_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let c = read_wan_configs(dir)?;
    let mut d = ModelDefaults::helios_base();
    d.pipeline_class = CLASS_NAME.into();
    let r = &mut d.request;
    r.width = 832;
    r.height = 480;
    r.num_frames = 81;
    r.fps = 16;
    r.num_inference_steps = 50;
    r.guidance_scale = 5.0;
    r.guidance_scale_2 = 5.0;
    r.max_sequence_length = 512;
    r.num_latent_frames_per_chunk = 21;
    r.flow_shift = c.scheduler.flow_shift();
    r.boundary_ratio = c.model_index.boundary_ratio.unwrap_or(0.0);
    // Sizes: multiples of `vae.config.scale_factor_spatial · patch_size` (diffusers rounds
    // down to them with a warning; here the request is refused naming the field): 16 for the
    // Wan2.1 VAE, 32 for Wan2.2's.
    let vae_path = component_dir(dir, "vae")?.join("config.json");
    let (vae, _) = read_config::<AutoencoderKLWanConfig>(&vae_path)?;
    d.size_multiple = 2 * vae
        .scale_factor_spatial
        .unwrap_or_else(|| vae.spatial_scale()) as u32;
    if c.model_index.expand_timesteps {
        // Wan2.2 TI2V-5B: 24 fps (Wan-Video/Wan2.2@42bf4cf wan/configs/wan_ti2v_5B.py
        // `sample_fps = 24`; the diffusers Wan2.2 TI2V example exports at fps=24).
        r.fps = 24;
        // An image runs image-to-video (see `check_wan_inputs`).
        d.image_to_video = true;
    }
    d.unsupported = [HELIOS_ONLY_FIELDS, V2V_ONLY_FIELDS].concat();
    d.whole_video = true;
    d.guidance_scale_2_follows = c.model_index.has_transformer_2();
    if !d.guidance_scale_2_follows {
        d.unsupported
            .extend(WAN_ONLY_FIELDS.iter().filter(|k| **k != "flow_shift"));
    }
    Ok(d)
}

/// Where the two experts of a Wan2.2 A14B checkpoint live (`--offload-experts`); see the
/// module docs. One-expert checkpoints ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertResidency {
    /// Decide at load with [`offload_experts_auto`].
    #[default]
    Auto,
    /// One expert on the device at a time (`on`).
    On,
    /// Both experts resident (`off`).
    Off,
}

/// The `auto` rule of [`ExpertResidency`]: offload (one expert at a time) when the device's
/// free memory, `total − in_use` bytes (what omni's allocator holds after loading the first
/// expert; other processes are not seen), is less than the second expert's parameter bytes plus
/// a 20 % working reserve for activations. `total = None` (the CPU, or no device query):
/// both resident.
pub fn offload_experts_auto(total: Option<u64>, in_use: u64, expert_bytes: u64) -> bool {
    match total {
        None => false,
        Some(total) => total.saturating_sub(in_use) < expert_bytes + expert_bytes / 5,
    }
}

/// The loaded `WanPipeline`.
pub struct WanPipeline<B: Backend> {
    pub model_index: WanModelIndex,
    /// `None` with [`TextEncoderResidency::OnDemand`].
    pub prompt_encoder: Option<PromptEncoder<B>>,
    /// The config of `transformer` (both experts share the architecture).
    transformer_config: WanTransformer3DModelConfig,
    /// `[transformer]` (the high-noise expert) or `[transformer, transformer_2]` (Wan2.2 A14B:
    /// the low-noise one); `None` where an expert is not resident (one-expert residency).
    experts: Mutex<Vec<Option<WanTransformer3DModel<B>>>>,
    /// Whether only one expert is on the device at a time.
    offload_experts: bool,
    pub vae: AutoencoderKLWan<B>,
    pub scheduler: WanScheduler,
    dir: PathBuf,
    precision: Precision,
    device: B::Device,
}

impl<B: Backend> WanPipeline<B> {
    /// Load the checkpoint folder `dir` onto `device`, each model in the dtype `precision` gives
    /// it, the text encoder only with [`TextEncoderResidency::Resident`].
    ///
    /// # Errors
    /// As [`read_wan_configs`]; [`PipelineError::Load`] naming a missing or broken file; a
    /// transformer that takes image embeddings (I2V checkpoints are not run by this class).
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        precision: Precision,
        text_encoder: TextEncoderResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        Self::load_with_experts(
            dir,
            device,
            precision,
            text_encoder,
            ExpertResidency::Auto,
            progress,
        )
    }

    /// [`load_with`](Self::load_with) with the experts' residency chosen (see
    /// [`ExpertResidency`]).
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with).
    pub fn load_with_experts(
        dir: &Path,
        device: &B::Device,
        precision: Precision,
        text_encoder: TextEncoderResidency,
        residency: ExpertResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let WanConfigs {
            model_index,
            scheduler,
        } = loading(progress, "scheduler", || read_wan_configs(dir))?;
        let prompt_encoder = match text_encoder {
            TextEncoderResidency::Resident => Some(PromptEncoder::load(
                dir,
                device,
                precision.text_encoder,
                progress,
            )?),
            TextEncoderResidency::OnDemand => None,
        };
        let sub = |name: &str| component_dir(dir, name);
        let load_expert = |name: &str| {
            WanTransformer3DModel::load_with_dtype(&sub(name)?, device, precision.transformer)
        };
        let transformer = loading(progress, "transformer", || load_expert("transformer"))?;
        let image_err = || {
            PipelineError::Unsupported(
                "this transformer takes CLIP image embeddings (image_dim): it is an image-to-video checkpoint, not a WanPipeline one".into(),
            )
        };
        if transformer.takes_image_embeds() {
            return Err(image_err());
        }
        let transformer_config = transformer.config().clone();
        let two = model_index.has_transformer_2();
        let offload_experts = two
            && match residency {
                ExpertResidency::On => true,
                ExpertResidency::Off => false,
                ExpertResidency::Auto => {
                    let _ = B::sync(device);
                    let expert_bytes =
                        transformer.num_params() as u64 * precision.transformer.size() as u64;
                    let in_use = device_memory::<B>(device).map_or(0, |m| m.bytes_reserved);
                    offload_experts_auto(device_total_memory::<B>(device), in_use, expert_bytes)
                }
            };
        if offload_experts {
            tracing::info!(
                "one expert resident at a time: transformer_2 is loaded when the schedule reaches boundary_ratio"
            );
        }
        let transformer_2 = match two && !offload_experts {
            true => Some(loading(progress, "transformer", || {
                load_expert("transformer_2")
            })?),
            false => None,
        };
        if transformer_2
            .as_ref()
            .is_some_and(|t| t.takes_image_embeds())
        {
            return Err(image_err());
        }
        let mut experts = vec![Some(transformer)];
        if two {
            experts.push(transformer_2);
        }
        let vae = loading(progress, "vae", || {
            AutoencoderKLWan::load_with_dtype(&sub("vae")?, device, precision.vae)
        })?;
        Ok(Self {
            model_index,
            prompt_encoder,
            transformer_config,
            experts: Mutex::new(experts),
            offload_experts,
            vae,
            scheduler,
            dir: dir.to_path_buf(),
            precision,
            device: device.clone(),
        })
    }

    /// Generate the video of `req`, handing the decoded frames to `sink`; returns their number.
    ///
    /// # Errors
    /// [`PipelineError`]: unsupported settings, a missing noise draw, a sink failure,
    /// cancellation.
    pub fn call(
        &self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        // 3. Encode the prompt (and the negative prompt when CFG is on).
        let embeds = match &self.prompt_encoder {
            Some(e) => e.encode_request(req, &mut *ctx.progress)?,
            None => PromptEncoder::<B>::load(
                &self.dir,
                &self.device,
                self.precision.text_encoder,
                &mut NoProgress,
            )?
            .encode_request(req, &mut *ctx.progress)?,
        };
        self.call_with_embeds(req, embeds, ctx, sink)
    }

    /// [`call`](Self::call) from prompt embeddings already made by a [`PromptEncoder`].
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub fn call_with_embeds(
        &self,
        req: &GenerationRequest,
        embeds: PromptEmbeds<B>,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        match &req.conditioning {
            Conditioning::None => {}
            // Wan2.2 TI2V: an image runs image-to-video on the same modules (diffusers:
            // `WanImageToVideoPipeline.from_pretrained` of the same folder, `expand_timesteps`).
            Conditioning::Image(_) if self.model_index.expand_timesteps => {
                return self
                    .image_to_video()?
                    .call_with_embeds(req, embeds, ctx, sink);
            }
            _ => check_wan_inputs(self.model_index.expand_timesteps, req)?,
        }
        let device = &self.device;
        // diffusers rounds height and width down to multiples of
        // `vae_scale_factor_spatial · patch_size` (32 for TI2V) with a warning; here the request
        // is refused naming the field instead of silently changing the size.
        let multiple = self.vae_scale_factor_spatial() * 2;
        for (field, v) in [("height", req.height), ("width", req.width)] {
            if !(v as usize).is_multiple_of(multiple) {
                return Err(PipelineError::Unsupported(format!(
                    "{field} = {v} is not a multiple of {multiple} pixels (the VAE's {}x spatial compression times the transformer's 2x2 patches)",
                    self.vae_scale_factor_spatial()
                )));
            }
        }
        // 4. Timesteps with the request's flow shift.
        let solver = self
            .scheduler
            .set_timesteps(req.num_inference_steps, req.flow_shift)
            .map_err(|e| PipelineError::Unsupported(e.to_string()))?;

        // 5. Initial latents.
        let latent_frames = (req.num_frames as usize - 1) / 4 + 1;
        let shape = [
            1,
            self.transformer_config.in_channels,
            latent_frames,
            req.height as usize / self.vae_scale_factor_spatial(),
            req.width as usize / self.vae_scale_factor_spatial(),
        ];
        let draw = ctx.noise.standard_normal(LATENTS_DRAW, &shape)?;
        let latents = Tensor::<B, 5>::from_data(TensorData::new(draw, shape), (device, DType::F32));

        // 6. Denoising loop. With `expand_timesteps` (TI2V): `timestep =
        // (mask[0][0][:, ::2, ::2] * t).flatten()` per token, `mask` all ones for text-to-video.
        let [_, _, f, h, w] = shape;
        let timestep_mask = self
            .model_index
            .expand_timesteps
            .then(|| vec![1.0; f * (h / 2) * (w / 2)]);
        let denoise = WanDenoise {
            solver,
            begin_at: 0,
            boundary_timestep: self.boundary_timestep(req),
            guidance_scales: [req.guidance_scale, req.guidance_scale_2],
            embeds,
            image_embeds: None,
            timestep_mask,
            num_frames: req.num_frames as usize,
        };
        let mut experts = ResidentOnDemand {
            pipe: self,
            experts: self
                .experts
                .lock()
                .map_err(|_| PipelineError::Unsupported("a previous run panicked".into()))?,
        };
        let latents = denoise.run(&mut experts, latents, |l| l.clone(), ctx)?;

        // 7. Decode.
        decode_to_sink(&self.vae, latents, req.num_frames as usize, ctx, sink)
    }

    /// `boundary_ratio · num_train_timesteps` of a two-expert checkpoint, with the request's
    /// `boundary_ratio` (`None`: one expert).
    fn boundary_timestep(&self, req: &GenerationRequest) -> Option<f64> {
        self.model_index
            .boundary_ratio
            .map(|_| req.boundary_ratio * self.scheduler.num_train_timesteps() as f64)
    }

    /// The Wan2.2 TI2V image-to-video pipeline over this checkpoint's modules (shared, not
    /// copied: Burn tensors are reference-counted), as diffusers'
    /// `WanImageToVideoPipeline.from_pretrained` of the same folder builds it.
    ///
    /// # Errors
    /// [`PipelineError::Unsupported`] for an `expand_timesteps` checkpoint with two experts (no
    /// such Wan2.2 release; not run here).
    fn image_to_video(&self) -> Result<WanImageToVideoPipeline<B>, PipelineError> {
        let experts = self
            .experts
            .lock()
            .map_err(|_| PipelineError::Unsupported("a previous run panicked".into()))?;
        let [Some(transformer)] = experts.as_slice() else {
            return Err(PipelineError::Unsupported(
                "image: image-to-video on an expand_timesteps checkpoint with two experts is not supported".into(),
            ));
        };
        Ok(WanImageToVideoPipeline::from_parts(
            self.model_index.clone(),
            transformer.clone(),
            self.vae.clone(),
            self.scheduler.clone(),
            &self.dir,
            self.precision,
            &self.device,
        ))
    }

    /// With one-expert residency: drop every other expert, then load expert `e` (`transformer`
    /// or `transformer_2`) unless it is already resident. With both resident: nothing.
    fn make_resident(
        &self,
        experts: &mut [Option<WanTransformer3DModel<B>>],
        e: usize,
    ) -> Result<(), PipelineError> {
        if experts[e].is_some() {
            return Ok(());
        }
        for (j, slot) in experts.iter_mut().enumerate() {
            if j != e {
                *slot = None; // freed before the other expert is loaded
            }
        }
        let name = ["transformer", "transformer_2"][e];
        experts[e] = Some(WanTransformer3DModel::load_with_dtype(
            &component_dir(&self.dir, name)?,
            &self.device,
            self.precision.transformer,
        )?);
        Ok(())
    }

    /// The transformer's config (both experts share it).
    pub fn transformer_config(&self) -> &WanTransformer3DModelConfig {
        &self.transformer_config
    }

    /// Whether only one expert is on the device at a time ([`ExpertResidency`]).
    pub fn offloads_experts(&self) -> bool {
        self.offload_experts
    }

    /// Expert `e` (`0` = `transformer`, `1` = `transformer_2`) for a LoRA merge; `None` when
    /// the checkpoint has no such expert or it is not resident now.
    pub fn expert_mut(&mut self, e: usize) -> Option<&mut WanTransformer3DModel<B>> {
        self.experts
            .get_mut()
            .expect("not poisoned")
            .get_mut(e)?
            .as_mut()
    }

    /// Which experts are resident now (`0` = `transformer`, `1` = `transformer_2`).
    pub fn resident_experts(&self) -> Vec<usize> {
        let experts = self.experts.lock().expect("not poisoned");
        (0..experts.len())
            .filter(|&j| experts[j].is_some())
            .collect()
    }

    /// The compute dtype of the transformer(s).
    pub fn transformer_dtype(&self) -> DType {
        self.precision.transformer
    }

    /// `vae.config.scale_factor_spatial` (8 for the Wan2.1 VAE, 16 for Wan2.2's), or the
    /// architecture's scale when the config omits it.
    pub fn vae_scale_factor_spatial(&self) -> usize {
        vae_scale_factor_spatial(&self.vae)
    }
}

/// `vae.config.scale_factor_spatial` of `vae` (8 for the Wan2.1 VAE, 16 for Wan2.2's), or the
/// architecture's scale when the config omits it.
pub fn vae_scale_factor_spatial<B: Backend>(vae: &AutoencoderKLWan<B>) -> usize {
    let c = vae.config();
    c.scale_factor_spatial.unwrap_or_else(|| c.spatial_scale())
}

/// The inputs a `WanPipeline` checkpoint takes: none (text-to-video) or, with
/// `expand_timesteps` (Wan2.2 TI2V), one image: image-to-video through
/// [`WanImageToVideoPipeline`] on the same modules (diffusers runs a TI2V folder, whose
/// `model_index.json` says `WanPipeline`, as `WanImageToVideoPipeline.from_pretrained(folder)`
/// for I2V). Callers check it before loading anything.
///
/// # Errors
/// [`PipelineError::Unsupported`] naming the input: a video (`video`), an image on a checkpoint
/// without `expand_timesteps` (`image`), a last image (`last_image`), or an image of another size.
pub fn check_wan_inputs(
    expand_timesteps: bool,
    req: &GenerationRequest,
) -> Result<(), PipelineError> {
    match &req.conditioning {
        Conditioning::None => Ok(()),
        Conditioning::Image(_) | Conditioning::FirstLast(_) if expand_timesteps => {
            check_i2v_inputs(false, req).map(|_| ())
        }
        Conditioning::Video(_) => Err(PipelineError::Unsupported(
            "video: a text-to-video WanPipeline checkpoint takes no video (a WanVideoToVideoPipeline checkpoint does)".into(),
        )),
        _ => Err(PipelineError::Unsupported(
            "image: this text-to-video WanPipeline checkpoint takes no image (image-to-video needs a WanImageToVideoPipeline or a Wan2.2 TI2V checkpoint)".into(),
        )),
    }
}

/// Where the denoising loop finds the expert of a step: `0` = `transformer` (Wan2.1, or the
/// high-noise one of Wan2.2 A14B), `1` = `transformer_2` (the low-noise one).
pub trait WanExperts<B: Backend> {
    /// Expert `e`, made resident first where only one is kept on the device.
    ///
    /// # Errors
    /// [`PipelineError::Load`] when loading the expert fails.
    fn expert(&mut self, e: usize) -> Result<&WanTransformer3DModel<B>, PipelineError>;
}

/// Experts that are all resident (`[transformer]` or `[transformer, transformer_2]`).
pub struct Resident<'a, B: Backend>(pub Vec<&'a WanTransformer3DModel<B>>);

impl<B: Backend> WanExperts<B> for Resident<'_, B> {
    fn expert(&mut self, e: usize) -> Result<&WanTransformer3DModel<B>, PipelineError> {
        Ok(self.0[e])
    }
}

/// `WanPipeline`'s experts under its [`ExpertResidency`]: the other expert is dropped and this
/// one loaded from the checkpoint when the schedule crosses the boundary.
struct ResidentOnDemand<'a, B: Backend> {
    pipe: &'a WanPipeline<B>,
    experts: std::sync::MutexGuard<'a, Vec<Option<WanTransformer3DModel<B>>>>,
}

impl<B: Backend> WanExperts<B> for ResidentOnDemand<'_, B> {
    fn expert(&mut self, e: usize) -> Result<&WanTransformer3DModel<B>, PipelineError> {
        self.pipe.make_resident(&mut self.experts, e)?;
        Ok(self.experts[e].as_ref().expect("made resident"))
    }
}

/// One request's denoising loop (diffusers `__call__` step 6 of `WanPipeline`,
/// `WanImageToVideoPipeline` and `WanVideoToVideoPipeline`, the same loop in each): per step
/// the expert of the timestep (`t ≥ boundary_timestep`: `transformer` with `guidance_scale`,
/// else `transformer_2` with `guidance_scale_2`), one transformer call (a batch of two,
/// `[cond, uncond]`, under CFG), the guidance, the scheduler step, a progress event.
pub struct WanDenoise<B: Backend> {
    /// The request's schedule and solver state (`scheduler.set_timesteps`).
    pub solver: WanSolver,
    /// The first step that runs (video-to-video `strength`: `t_start`; 0 otherwise).
    pub begin_at: usize,
    /// `boundary_ratio · num_train_timesteps` (Wan2.2 A14B), `None` with one expert.
    pub boundary_timestep: Option<f64>,
    /// `[guidance_scale, guidance_scale_2]`: the scale of each expert. CFG is on for both when
    /// the negative prompt was encoded (`guidance_scale > 1`), off for both otherwise.
    pub guidance_scales: [f64; 2],
    /// The prompt (`[1, L, D]`) and, under CFG, the negative prompt embeddings.
    pub embeds: PromptEmbeds<B>,
    /// CLIP image embeddings `[frames, 1 + P, D]` (Wan2.1 I2V / FLF2V), given to the experts
    /// that take them (`image_dim`), repeated for each CFG row as diffusers passes them to both
    /// calls.
    pub image_embeds: Option<Tensor<B, 3>>,
    /// `expand_timesteps` (Wan2.2 TI2V): the transformer gets one timestep per token,
    /// `timestep_mask[k] · t` (`first_frame_mask[0][0][:, ::2, ::2].flatten()`: 0 on the first
    /// latent frame for image-to-video, all ones for text-to-video); `None`: one per batch row.
    pub timestep_mask: Option<Vec<f32>>,
    /// The video's frames (for the progress events).
    pub num_frames: usize,
}

impl<B: Backend> WanDenoise<B> {
    /// Run steps `begin_at..` from `latents` (f32 `[1, C, T, h, w]`), feeding the transformer
    /// `model_input(latents)` (the latents themselves for text- and video-to-video; I2V
    /// concatenates the mask and condition latents on channels, `[1, 36, T, h, w]`; TI2V puts the
    /// image latent in the first frame); returns the final latents.
    ///
    /// # Errors
    /// [`PipelineError::Cancelled`]; an expert that fails to load.
    pub fn run(
        self,
        experts: &mut dyn WanExperts<B>,
        mut latents: Tensor<B, 5>,
        model_input: impl Fn(&Tensor<B, 5>) -> Tensor<B, 5>,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let Self {
            mut solver,
            begin_at,
            boundary_timestep,
            guidance_scales,
            embeds,
            image_embeds,
            timestep_mask,
            num_frames,
        } = self;
        solver.begin_at(begin_at);
        let timesteps = solver.timesteps()[begin_at..].to_vec();
        let cfg_text = embeds
            .negative_prompt_embeds
            .map(|neg| Tensor::cat(vec![embeds.prompt_embeds.clone(), neg], 0));
        let guidances = guidance_scales.map(|scale| match cfg_text.is_some() {
            true => Guidance::Cfg { scale },
            false => Guidance::None,
        });
        let batch = if cfg_text.is_some() { 2 } else { 1 };
        let image = image_embeds.map(|e| Tensor::cat(vec![e; batch], 0));
        let text = cfg_text.unwrap_or(embeds.prompt_embeds);
        // Each expert's cross-attention K/V, made when the expert is first used.
        let mut contexts: [Option<WanContext<B>>; 2] = [None, None];

        let steps = timesteps.len();
        ctx.progress.event(Progress::ChunkStarted {
            chunk: 0,
            chunks: 1,
            steps,
            frames: num_frames,
        });
        let mut history = SolverHistory::new();
        for (k, &t) in timesteps.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
            // wan2.1, or the high-noise stage of wan2.2: `t >= boundary_timestep`.
            let e = match boundary_timestep {
                Some(b) if t < b => 1,
                _ => 0,
            };
            let model = experts.expert(e)?;
            let context = contexts[e].get_or_insert_with(|| {
                let img = image.clone().filter(|_| model.takes_image_embeds());
                model.context(text.clone(), img)
            });
            let input = model_input(&latents);
            let input = match context.batch {
                2 => Tensor::cat(vec![input.clone(), input], 0),
                _ => input,
            };
            // `timestep = t.expand(B)`: the int64 timestep, embedded as float; per token with
            // `expand_timesteps`.
            let ts: Vec<f32> = match &timestep_mask {
                None => vec![t as f32; context.batch],
                Some(m) => m
                    .iter()
                    .map(|w| w * t as f32)
                    .collect::<Vec<_>>()
                    .repeat(context.batch),
            };
            let cancel = ctx.cancel.clone();
            let out = model
                .forward_stoppable(input, &ts, context, &|| cancel.is_cancelled())
                .ok_or(PipelineError::Cancelled)?
                .cast(DType::F32);
            let uncond = (context.batch == 2).then(|| out.clone().narrow(0, 1, 1));
            let v = guidances[e].apply(out.narrow(0, 0, 1), uncond, 0, k);
            let plan = solver.step_plan(begin_at + k);
            latents = history.step(&plan, latents, v, combine::<B>);
            ctx.progress.event(Progress::Step {
                chunk: 0,
                stage: 0,
                step: k + 1,
                steps,
            });
        }
        Ok(latents)
    }
}

/// Step 7 of the Wan pipelines: de-normalise `latents` (`[1, z_dim, T, h, w]`), decode them with
/// the VAE and hand the first `num_frames` frames to `sink` ([`decode_chunk_to_sink`], the
/// whole video as chunk 0), then report them ready; returns their number.
///
/// # Errors
/// [`PipelineError::Cancelled`]; [`PipelineError::Sink`] when the sink fails.
pub fn decode_to_sink<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    latents: Tensor<B, 5>,
    num_frames: usize,
    ctx: &mut RunContext<'_>,
    sink: &mut dyn FrameSink,
) -> Result<usize, PipelineError> {
    let n = decode_chunk_to_sink(vae, 0, latents, num_frames, ctx, sink)?;
    ctx.progress.event(Progress::FramesReady {
        chunk: 0,
        frames: n,
    });
    Ok(n)
}

/// VAE-decode chunk `chunk` (`latents` `[1, z_dim, T, h, w]`, normalised) frame by frame (the
/// causal decoder's own loop, stopping within one decoder block when cancelled) and hand its
/// first `keep` frames to `sink`, with the `Decoding` progress events; returns how many. Shared
/// by the Wan pipelines and Helios (whose VAE is Wan2.1's).
///
/// # Errors
/// [`PipelineError::Cancelled`]; [`PipelineError::Sink`] when the sink fails.
pub fn decode_chunk_to_sink<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    chunk: usize,
    latents: Tensor<B, 5>,
    keep: usize,
    ctx: &mut RunContext<'_>,
    sink: &mut dyn FrameSink,
) -> Result<usize, PipelineError> {
    ctx.progress
        .event(Progress::Decoding { chunk, done: false });
    let cancel = ctx.cancel.clone();
    let stop = || match cancel.is_cancelled() {
        true => Err(PipelineError::Cancelled),
        false => Ok(()),
    };
    let mut parts = Vec::new();
    vae.decode_streaming(vae.denormalize(latents), &stop, |_, frames| {
        stop()?;
        parts.push(frames);
        Ok(())
    })?;
    ctx.progress.event(Progress::Decoding { chunk, done: true });
    let frames = postprocess_parts(parts, keep);
    let n = frames.frames;
    sink.push_frames(frames).map_err(PipelineError::Sink)?;
    Ok(n)
}
