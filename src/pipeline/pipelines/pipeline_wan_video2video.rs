//! Mirrors diffusers 0.42.1 `pipelines/wan/pipeline_wan_video2video.py`
//! `WanVideoToVideoPipeline`: restyle an input video with a Wan2.1 text-to-video transformer
//! (one expert, 16 input channels) from a partly re-noised encoding of it.
//!
//! Steps, numbered as in `__call__`:
//! 3. encode the prompt ([`PromptEncoder`]);
//! 4. `retrieve_timesteps` then `get_timesteps(strength)`: of the `n` steps of
//!    `set_timesteps(n)` (with the request's `flow_shift`) only the last
//!    `init = min(floor(n · strength), n)` run, from index `t_start = n − init` (the scheduler
//!    picks up there: [`WanSolver::begin_at`]);
//! 5. `prepare_latents`: the video's first `num_frames` frames encoded by the VAE
//!    (`latent_dist.mode()`) and normalised, then `scheduler.add_noise(x0, noise, t_start)` =
//!    `(1 − σ)·x0 + σ·noise` at `σ = sigmas[t_start]`; `noise` `[1, 16, T, h, w]` is the one
//!    random draw;
//! 6. per step: the transformer with CFG (one batch-of-two call), the scheduler step;
//! 7. de-normalise and decode.
//!
//! Deliberate divergences (pinned by `tests/pipeline_wan_video2video.rs`, ≥ 40 dB PSNR of the
//! decoded frames against diffusers with the same noise):
//! - the request's `num_frames` says how many frames of the input video are used (diffusers
//!   encodes the whole video it is given; the output length follows either way);
//! - prompt cross-attention keys/values computed once per request; guidance in f32 (as
//!   `WanPipeline`, whose denoising loop and decode this pipeline shares: [`WanDenoise`],
//!   [`decode_to_sink`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::checkpoint::{component_dir, read_config};
use crate::pipeline::error::PipelineError;
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::models::transformer_wan::WanTransformer3DModel;
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{NoProgress, ProgressSink, loading};
use crate::pipeline::request::{
    Conditioning, ConditioningPixels, GenerationRequest, HELIOS_ONLY_FIELDS, ModelDefaults,
    WAN_ONLY_FIELDS,
};

use super::pipeline_helios_pyramid::RunContext;
use super::pipeline_output::FrameSink;
use super::pipeline_wan::{
    Resident, WanDenoise, WanModelIndex, WanScheduler, decode_to_sink, read_wan_scheduler,
};
use super::prompt_encoder::{PromptEmbeds, PromptEncoder, TextEncoderResidency};

/// `model_index.json` `_class_name`.
pub const CLASS_NAME: &str = "WanVideoToVideoPipeline";

/// The name of the noise draw (the pipeline's only one; the VAE encode takes the mode).
pub const NOISE_DRAW: &str = "noise";

/// `vae_scale_factor_temporal` / `_spatial` of the Wan2.1 VAE.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;
const VAE_SCALE_FACTOR_SPATIAL: usize = 8;

/// Read `model_index.json` and the scheduler config of `dir`.
///
/// # Errors
/// [`PipelineError::Load`] for a missing or unreadable file; [`PipelineError::Unsupported`] for
/// another class or a scheduler the Wan pipelines do not run.
pub fn read_wan_v2v_configs(dir: &Path) -> Result<(WanModelIndex, WanScheduler), PipelineError> {
    let index_path = dir.join("model_index.json");
    let (model_index, _) = read_config::<WanModelIndex>(&index_path)?;
    if model_index.class_name != CLASS_NAME {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{}` is not a WanVideoToVideoPipeline",
            index_path.display(),
            model_index.class_name
        )));
    }
    Ok((model_index, read_wan_scheduler(dir)?))
}

/// The request defaults of a `WanVideoToVideoPipeline` checkpoint: diffusers' `__call__`
/// defaults (832×480, 50 steps, guidance 5.0, strength 0.8, 512 prompt tokens), 81 frames and
/// 16 fps (as `WanPipeline`), the scheduler's flow shift. `guidance_scale_2` / `boundary_ratio`
/// are refused (one expert).
///
/// # Errors
/// As [`read_wan_v2v_configs`].
pub fn wan_v2v_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let (_, scheduler) = read_wan_v2v_configs(dir)?;
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
    r.flow_shift = scheduler.flow_shift();
    r.strength = 0.8;
    d.unsupported = HELIOS_ONLY_FIELDS.to_vec();
    d.unsupported
        .extend(WAN_ONLY_FIELDS.iter().filter(|k| **k != "flow_shift"));
    d.whole_video = true;
    d.guidance_scale_2_follows = false;
    Ok(d)
}

/// `get_timesteps`' `init_timestep = min(floor(n · strength), n)`: the steps that run.
fn init_steps(req: &GenerationRequest) -> usize {
    let n = req.num_inference_steps;
    ((n as f64 * req.strength) as usize).min(n)
}

/// The input video of `req`, checked before anything is loaded.
///
/// # Errors
/// [`PipelineError::Unsupported`] naming the input: no video (`video`), fewer than
/// `num_frames` frames or another size, or a `strength` that leaves no step to run.
pub fn check_v2v_inputs(req: &GenerationRequest) -> Result<&ConditioningPixels, PipelineError> {
    let num_frames = req.num_frames as usize;
    let (h, w) = (req.height as usize, req.width as usize);
    let pixels = match &req.conditioning {
        Conditioning::Video(p) => p,
        _ => {
            return Err(PipelineError::Unsupported(
                "video: WanVideoToVideoPipeline needs an input video (--video / input_reference)"
                    .into(),
            ));
        }
    };
    if (pixels.height, pixels.width) != (h, w) || pixels.frames < num_frames {
        return Err(PipelineError::Unsupported(format!(
            "video: the input is {} frame(s) of {}x{}; the request needs at least {num_frames} of {w}x{h}",
            pixels.frames, pixels.width, pixels.height
        )));
    }
    if init_steps(req) == 0 {
        return Err(PipelineError::Unsupported(format!(
            "strength: {} of {} steps leaves no step to run (needs strength ≥ 1/{})",
            req.strength, req.num_inference_steps, req.num_inference_steps
        )));
    }
    Ok(pixels)
}

/// The loaded `WanVideoToVideoPipeline`.
pub struct WanVideoToVideoPipeline<B: Backend> {
    /// `None` with [`TextEncoderResidency::OnDemand`].
    pub prompt_encoder: Option<PromptEncoder<B>>,
    pub transformer: WanTransformer3DModel<B>,
    pub vae: AutoencoderKLWan<B>,
    pub scheduler: WanScheduler,
    dir: PathBuf,
    precision: Precision,
    device: B::Device,
}

impl<B: Backend> WanVideoToVideoPipeline<B> {
    /// Load the checkpoint folder `dir` onto `device`.
    ///
    /// # Errors
    /// As [`read_wan_v2v_configs`]; [`PipelineError::Load`] naming a missing or broken file;
    /// [`PipelineError::Unsupported`] for a transformer that takes image embeddings or more than
    /// the VAE's latent channels.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        precision: Precision,
        text_encoder: TextEncoderResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let (_, scheduler) = loading(progress, "scheduler", || read_wan_v2v_configs(dir))?;
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
        let transformer = loading(progress, "transformer", || {
            WanTransformer3DModel::load_with_dtype(
                &sub("transformer")?,
                device,
                precision.transformer,
            )
        })?;
        let vae = loading(progress, "vae", || {
            AutoencoderKLWan::load_with_dtype(&sub("vae")?, device, precision.vae)
        })?;
        if transformer.takes_image_embeds()
            || transformer.config().in_channels != vae.config().z_dim
        {
            return Err(PipelineError::Unsupported(format!(
                "the transformer (in_channels {}, image_dim {:?}) is not a text-to-video one; WanVideoToVideoPipeline needs in_channels = z_dim = {} and no image_dim",
                transformer.config().in_channels,
                transformer.config().image_dim,
                vae.config().z_dim
            )));
        }
        Ok(Self {
            prompt_encoder,
            transformer,
            vae,
            scheduler,
            dir: dir.to_path_buf(),
            precision,
            device: device.clone(),
        })
    }

    /// Generate the video of `req` (whose conditioning is the input video), handing the decoded
    /// frames to `sink`; returns their number.
    ///
    /// # Errors
    /// [`PipelineError`]: no or a too short video, a `strength` that leaves no step, a missing
    /// noise draw, a sink failure, cancellation.
    pub fn call(
        &self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
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
        let num_frames = req.num_frames as usize;
        let (h, w) = (req.height as usize, req.width as usize);
        let pixels = check_v2v_inputs(req)?;
        let device = &self.device;

        // 4. Timesteps, truncated by strength.
        let n = req.num_inference_steps;
        let t_start = n - init_steps(req);
        let solver = self
            .scheduler
            .set_timesteps(n, req.flow_shift)
            .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
        let sigma = solver.sigmas()[t_start] as f32;

        // 5. Latents: the normalised VAE mode of the video, re-noised to σ.
        let plane = h * w;
        let mut data = Vec::with_capacity(3 * num_frames * plane);
        for c in 0..3 {
            data.extend_from_slice(&pixels.data[c * pixels.frames * plane..][..num_frames * plane]);
        }
        let video = Tensor::<B, 5>::from_data(
            TensorData::new(data, [1, 3, num_frames, h, w]),
            (device, DType::F32),
        );
        let (mode, _) = self.vae.encode(video);
        let x0 = self.vae.normalize(mode.cast(DType::F32));
        let shape = x0.dims();
        debug_assert_eq!(shape[2], (num_frames - 1) / VAE_SCALE_FACTOR_TEMPORAL + 1);
        debug_assert_eq!(shape[3], h / VAE_SCALE_FACTOR_SPATIAL);
        let draw = ctx.noise.standard_normal(NOISE_DRAW, &shape)?;
        let noise = Tensor::<B, 5>::from_data(TensorData::new(draw, shape), (device, DType::F32));
        // add_noise: alpha_t·x0 + sigma_t·noise with alpha_t = 1 − σ (flow sigmas).
        let latents = x0 * (1.0 - sigma) + noise * sigma;

        // 6. Denoising loop over the truncated schedule (one expert, CFG when the negative
        // prompt was encoded).
        let denoise = WanDenoise {
            solver,
            begin_at: t_start,
            boundary_timestep: None,
            guidance_scales: [req.guidance_scale, req.guidance_scale],
            embeds,
            image_embeds: None,
            timestep_mask: None,
            num_frames,
        };
        let mut experts = Resident(vec![&self.transformer]);
        let latents = denoise.run(&mut experts, latents, |l| l.clone(), ctx)?;

        // 7. Decode.
        decode_to_sink(&self.vae, latents, num_frames, ctx, sink)
    }
}
