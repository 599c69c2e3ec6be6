//! Mirrors diffusers 0.42.1 `pipelines/helios/pipeline_helios_pyramid.py` `HeliosPyramidPipeline`
//! (Helios-Distilled with `is_distilled` and `HeliosDMDScheduler`; Helios-Mid with
//! `is_cfg_zero_star` and `HeliosScheduler`), text-, image- and video-to-video, and holds the
//! chunk loop it shares with `HeliosPipeline` (Helios-Base, see [`super::pipeline_helios`]).
//!
//! The loaded type [`HeliosPyramidPipeline`] runs every variant: [`Variant`] is read from the
//! checkpoint (`model_index.json` `_class_name` and flags, `scheduler_config.json` `_class_name`)
//! and the scheduler is a [`PipelineScheduler`] (DMD or UniPC/Euler). The chunk loop
//! ([`DenoiseParts::denoise`]) is one loop with a per-stage sampler ([`StageSampler`]): DMD
//! steps, or `HeliosScheduler` steps through [`SolverHistory`]; Base is the one-stage case.
//!
//! Steps, numbered as in `__call__`:
//! 1. check inputs ([`crate::pipeline::request::resolve`] already did);
//! 3. encode the prompt (UMT5, padded to `max_sequence_length`, rows past the prompt zeroed), and
//!    the negative prompt when `guidance_scale > 1`; project both once through the transformer's
//!    text embedder for every step of every chunk;
//! 4. image / video conditioning ([`crate::pipeline::request::Conditioning`], pixels already at
//!    the output size): VAE encode with injected sample noise, σ-noising with uniform σ draws,
//!    the anchor latent and the history fill (see `prepare_conditioning`);
//! 5. history buffer of `sum(history_sizes)` latent frames (zeros, then the fake image latent in
//!    the last slot or the video latents at the end), RoPE frame indices;
//! 6. per chunk: fresh noise, pyramid downsampling, per stage dynamic shift μ, nearest upsampling
//!    and block-noise re-noising between stages, sampler steps with CFG / CFG-Zero* (pure
//!    functions of [`crate::pipeline::guidance`]); the first latent frame of the first chunk
//!    becomes the anchor; the chunk is decoded by the VAE as soon as it is done and its frames
//!    go to the [`FrameSink`].
//!
//! Deliberate divergences (each pinned by `tests/pipeline_{distilled,mid,base}.rs`):
//! - the history buffer keeps only the last `sum(history_sizes)` latent frames (diffusers keeps
//!   every generated latent), so memory does not grow with the video length;
//! - decoded frames are handed out chunk by chunk instead of concatenated, and the trimming to
//!   `4k+1` frames is applied to the last chunk;
//! - all random draws come from a [`NoiseSource`] by name;
//! - under CFG-Zero*'s zero-init the two transformer forwards are skipped (diffusers runs them
//!   and multiplies by 0; the result is the same unless they produce inf/NaN);
//! - `keep_first_frame = false` is rejected by `resolve` (diffusers 0.42.1 fails on it);
//! - guidance (CFG, CFG-Zero*) is computed in f32 on the f32-cast predictions (diffusers combines
//!   the bf16 predictions in bf16).
//!
//! Precision ([`crate::pipeline::precision`]): latents, history, noise and every scheduler step
//! are f32; the transformer takes and returns its own compute dtype (bf16 on CUDA), its
//! prediction is cast to f32; the DMD `x0` is rounded to the prediction's dtype as diffusers'
//! `convert_flow_pred_to_x0` does (`x0_pred.to(original_dtype)`); the VAE gets f32 latents.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::checkpoint::{LoadError, component_dir, read_config};
use crate::pipeline::guidance::Guidance;
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::models::transformer_helios::{
    HeliosTransformer3DModel, HistoryInputs, TextContext,
};
use crate::pipeline::models::umt5::UMT5EncoderModel;
use crate::pipeline::noise::{NoiseError, NoiseSource};
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{CancelToken, Progress, ProgressSink};
use crate::pipeline::request::{Conditioning, GenerationRequest, ModelDefaults};
use crate::pipeline::schedulers::scheduling_helios::{
    HeliosScheduler, HeliosSchedulerConfig, HeliosSolver, SolverHistory,
};
use crate::pipeline::schedulers::scheduling_helios_dmd::{
    HeliosDMDScheduler, HeliosDMDSchedulerConfig, StageSchedule, block_noise_factor,
    model_timestep, pyramid_image_seq_len,
};
use crate::pipeline::text_encoding::encode_prompt;
use crate::pipeline::tokenizer::{PromptTokenizer, TokenizeError};

/// Latent channels ↔ pixels: the Wan VAE compresses 4× in time and 8× in space.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;
const VAE_SCALE_FACTOR_SPATIAL: usize = 8;

/// A generation failure.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The checkpoint could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A random draw could not be served.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The request does not fit this checkpoint.
    #[error("{0}")]
    Unsupported(String),
    /// The frame consumer failed (e.g. the MP4 writer).
    #[error("writing frames: {0}")]
    Sink(String),
    /// The prompt could not be tokenized.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// The run was cancelled through its [`CancelToken`].
    #[error("cancelled")]
    Cancelled,
}

/// Decoded frames of one chunk: `data` is `[frames, height, width, 3]` row-major RGB in `[0, 1]`
/// (diffusers' `output_type="np"` values).
#[derive(Debug, Clone)]
pub struct VideoFrames {
    pub data: Vec<f32>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

/// Receives the video chunk by chunk, in order.
pub trait FrameSink {
    /// Take the next frames.
    ///
    /// # Errors
    /// A message that ends the run as [`PipelineError::Sink`].
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String>;
}

/// What a run needs besides the request: random draws, progress, cancellation.
pub struct RunContext<'a> {
    pub noise: &'a mut dyn NoiseSource,
    pub progress: &'a mut dyn ProgressSink,
    pub cancel: CancelToken,
}

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
        let base = match self {
            Variant::Base => ModelDefaults::helios_base(),
            Variant::Mid => ModelDefaults {
                use_cfg_zero_star: model_index.is_cfg_zero_star,
                ..ModelDefaults::helios_mid()
            },
            Variant::Distilled => ModelDefaults::helios_distilled(),
        };
        let stages = scheduler.stages();
        let mut steps = base.pyramid_num_inference_steps_list.clone();
        if self != Variant::Base {
            steps.resize(stages, *steps.last().unwrap_or(&2));
        }
        ModelDefaults {
            pyramid_num_stages: stages,
            pyramid_num_inference_steps_list: steps,
            ..base
        }
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

/// The sampler of one stage of one chunk: a DMD schedule, or a `HeliosScheduler` solver (fresh
/// history, diffusers' reset at every `set_timesteps`).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per chunk; boxing buys nothing
pub enum StageSampler {
    Dmd(StageSchedule),
    UniPc(HeliosSolver),
}

impl StageSampler {
    /// `scheduler.timesteps` of the stage.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Self::Dmd(s) => &s.timesteps,
            Self::UniPc(s) => s.timesteps(),
        }
    }
}

/// The prompt side of a checkpoint: `tokenizer/` and `text_encoder/` (UMT5), loadable on its own
/// so that the 11 GB (bf16) encoder can be dropped once the prompts are encoded.
pub struct PromptEncoder<B: Backend> {
    pub tokenizer: PromptTokenizer,
    pub text_encoder: UMT5EncoderModel<B>,
    device: B::Device,
}

/// The prompt embeddings one request needs (`[1, max_sequence_length, d_model]` each).
pub struct PromptEmbeds<B: Backend> {
    pub prompt_embeds: Tensor<B, 3>,
    /// Present when `guidance_scale > 1` (CFG).
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
}

impl<B: Backend> PromptEncoder<B> {
    /// Load the tokenizer and the text encoder (in `dtype`) of the checkpoint folder `dir`.
    ///
    /// # Errors
    /// [`PipelineError::Load`] naming the missing or broken file.
    pub fn load(
        dir: &Path,
        device: &B::Device,
        dtype: DType,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        progress.event(Progress::Loading {
            component: "tokenizer",
            done: false,
        });
        let tokenizer = PromptTokenizer::from_dir(&component_dir(dir, "tokenizer")?)?;
        progress.event(Progress::Loading {
            component: "tokenizer",
            done: true,
        });
        progress.event(Progress::Loading {
            component: "text_encoder",
            done: false,
        });
        let text_encoder =
            UMT5EncoderModel::load_with_dtype(&component_dir(dir, "text_encoder")?, device, dtype)?;
        progress.event(Progress::Loading {
            component: "text_encoder",
            done: true,
        });
        Ok(Self {
            tokenizer,
            text_encoder,
            device: device.clone(),
        })
    }

    /// Prompt embeddings `[1, max_sequence_length, d_model]` as diffusers' `encode_prompt`.
    ///
    /// # Errors
    /// [`TokenizeError`] when the prompt cannot be tokenized at that length.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        max_sequence_length: usize,
    ) -> Result<Tensor<B, 3>, TokenizeError> {
        encode_prompt(
            &self.tokenizer,
            &self.text_encoder,
            prompt,
            max_sequence_length,
            &self.device,
        )
    }

    /// Step 3 of `__call__`: the prompt, and the negative prompt when CFG is on
    /// (`guidance_scale > 1`), with `EncodingPrompt` progress events around it.
    ///
    /// # Errors
    /// [`PipelineError::Tokenize`] when a prompt cannot be tokenized.
    pub fn encode_request(
        &self,
        req: &GenerationRequest,
        progress: &mut dyn ProgressSink,
    ) -> Result<PromptEmbeds<B>, PipelineError> {
        progress.event(Progress::EncodingPrompt { done: false });
        let prompt_embeds = self.encode_prompt(&req.prompt, req.max_sequence_length)?;
        let negative_prompt_embeds = match req.guidance_scale > 1.0 {
            true => Some(self.encode_prompt(&req.negative_prompt, req.max_sequence_length)?),
            false => None,
        };
        progress.event(Progress::EncodingPrompt { done: true });
        Ok(PromptEmbeds {
            prompt_embeds,
            negative_prompt_embeds,
        })
    }
}

/// Whether [`HeliosPyramidPipeline`] keeps the text encoder loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderResidency {
    /// Loaded with the pipeline and kept (the server: no reload per request).
    Resident,
    /// Not kept: loaded from the checkpoint for each [`HeliosPyramidPipeline::call`] and dropped
    /// after encoding, or not at all when the caller encodes first with a [`PromptEncoder`] and
    /// uses [`HeliosPyramidPipeline::call_with_embeds`] (`omni generate`: the encoder and the
    /// transformer are never in memory together).
    OnDemand,
}

/// The loaded Helios pipeline (Base, Mid or Distilled; see [`Variant`]).
pub struct HeliosPyramidPipeline<B: Backend> {
    pub model_index: ModelIndex,
    pub variant: Variant,
    /// `None` with [`TextEncoderResidency::OnDemand`].
    pub prompt_encoder: Option<PromptEncoder<B>>,
    pub transformer: HeliosTransformer3DModel<B>,
    pub vae: AutoencoderKLWan<B>,
    pub scheduler: PipelineScheduler,
    dir: PathBuf,
    precision: Precision,
    device: B::Device,
}

impl<B: Backend> HeliosPyramidPipeline<B> {
    /// Load every component of the checkpoint folder `dir` onto `device`, with diffusers' bf16
    /// recipe for the device ([`Precision::for_device`]).
    ///
    /// # Errors
    /// As [`load_with_precision`](Self::load_with_precision).
    pub fn load(
        dir: &Path,
        device: &B::Device,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        Self::load_with(
            dir,
            device,
            Precision::for_device::<B>(device),
            TextEncoderResidency::Resident,
            progress,
        )
    }

    /// Load the checkpoint folder `dir` onto `device`, each model in the dtype `precision` gives
    /// it, the text encoder only with [`TextEncoderResidency::Resident`].
    ///
    /// # Errors
    /// [`PipelineError::Load`] naming the missing or broken file;
    /// [`PipelineError::Unsupported`] for a checkpoint that is not a Helios Base, Mid or
    /// Distilled pipeline, or whose scheduler class does not fit its pipeline class.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        precision: Precision,
        text_encoder: TextEncoderResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        progress.event(Progress::Loading {
            component: "scheduler",
            done: false,
        });
        let (model_index, variant, scheduler) = read_checkpoint_configs(dir)?;
        progress.event(Progress::Loading {
            component: "scheduler",
            done: true,
        });

        let prompt_encoder = match text_encoder {
            TextEncoderResidency::Resident => Some(PromptEncoder::load(
                dir,
                device,
                precision.text_encoder,
                progress,
            )?),
            TextEncoderResidency::OnDemand => None,
        };

        progress.event(Progress::Loading {
            component: "transformer",
            done: false,
        });
        let transformer = HeliosTransformer3DModel::load_with_dtype(
            &component_dir(dir, "transformer")?,
            device,
            precision.transformer,
        )?;
        progress.event(Progress::Loading {
            component: "transformer",
            done: true,
        });

        progress.event(Progress::Loading {
            component: "vae",
            done: false,
        });
        let vae =
            AutoencoderKLWan::load_with_dtype(&component_dir(dir, "vae")?, device, precision.vae)?;
        progress.event(Progress::Loading {
            component: "vae",
            done: true,
        });

        Ok(Self {
            model_index,
            variant,
            prompt_encoder,
            transformer,
            vae,
            scheduler,
            dir: dir.to_path_buf(),
            precision,
            device: device.clone(),
        })
    }

    /// The dtypes the models were loaded in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The request defaults this checkpoint implies.
    pub fn defaults(&self) -> ModelDefaults {
        self.variant.defaults(&self.model_index, &self.scheduler)
    }

    /// Run `f` with the resident [`PromptEncoder`], or with one loaded for the call and dropped
    /// after it ([`TextEncoderResidency::OnDemand`]).
    fn with_prompt_encoder<T>(
        &self,
        f: impl FnOnce(&PromptEncoder<B>) -> Result<T, PipelineError>,
    ) -> Result<T, PipelineError> {
        match &self.prompt_encoder {
            Some(encoder) => f(encoder),
            None => f(&PromptEncoder::load(
                &self.dir,
                &self.device,
                self.precision.text_encoder,
                &mut crate::pipeline::progress::NoProgress,
            )?),
        }
    }

    /// Prompt embeddings `[1, max_sequence_length, d_model]` as diffusers' `encode_prompt`.
    ///
    /// # Errors
    /// [`PipelineError::Tokenize`] when the prompt cannot be tokenized at that length;
    /// [`PipelineError::Load`] when an on-demand text encoder cannot be loaded.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        max_sequence_length: usize,
    ) -> Result<Tensor<B, 3>, PipelineError> {
        self.with_prompt_encoder(|e| Ok(e.encode_prompt(prompt, max_sequence_length)?))
    }

    /// Generate the video of `req`, handing decoded frames to `sink` chunk by chunk.
    ///
    /// Returns the number of frames delivered (`req.output_frames()`).
    ///
    /// # Errors
    /// [`PipelineError`]: unsupported settings, a missing noise draw, a sink failure, cancellation.
    pub fn call(
        &self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        // 3. Encode the prompt (and the negative prompt when CFG is on).
        let embeds = self.with_prompt_encoder(|e| e.encode_request(req, &mut *ctx.progress))?;
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
        self.parts().denoise(
            req,
            embeds.prompt_embeds,
            embeds.negative_prompt_embeds,
            ctx,
            sink,
        )
    }

    /// The components the denoising loop needs, borrowed.
    pub fn parts(&self) -> DenoiseParts<'_, B> {
        DenoiseParts {
            transformer: &self.transformer,
            vae: &self.vae,
            scheduler: &self.scheduler,
            variant: self.variant,
            device: &self.device,
        }
    }
}

/// The transformer, VAE and scheduler of a pipeline: everything the chunk loop uses once the
/// prompt is encoded (so benchmarks can drive it with random full-size weights and no tokenizer).
pub struct DenoiseParts<'a, B: Backend> {
    pub transformer: &'a HeliosTransformer3DModel<B>,
    pub vae: &'a AutoencoderKLWan<B>,
    pub scheduler: &'a PipelineScheduler,
    pub variant: Variant,
    pub device: &'a B::Device,
}

impl<B: Backend> DenoiseParts<'_, B> {
    /// Steps 5–6 of `__call__`: the chunk loop, from prompt embeddings `[1, L, text_dim]`
    /// (and negative ones when `guidance_scale > 1`) to decoded frames handed to `sink`.
    ///
    /// Returns the number of frames delivered (`req.output_frames()`).
    ///
    /// # Errors
    /// [`PipelineError`]: unsupported settings, a missing noise draw, a sink failure, cancellation.
    pub fn denoise(
        &self,
        req: &GenerationRequest,
        prompt_embeds: Tensor<B, 3>,
        negative_prompt_embeds: Option<Tensor<B, 3>>,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        let stages = match self.variant {
            Variant::Base => 1,
            _ => req.pyramid_num_inference_steps_list.len(),
        };
        if stages != self.scheduler.stages() {
            return Err(PipelineError::Unsupported(format!(
                "pyramid_num_inference_steps_list has {stages} stages, the scheduler has {}",
                self.scheduler.stages()
            )));
        }
        if !req.keep_first_frame {
            return Err(PipelineError::Unsupported(
                "keep_first_frame = false is not supported".into(),
            ));
        }
        let device = self.device;
        // Latents, history and noise are f32 whatever the models compute in.
        let f32_on = (device, DType::F32);
        let (height, width) = (req.height as usize, req.width as usize);
        let (lh, lw) = (
            height / VAE_SCALE_FACTOR_SPATIAL,
            width / VAE_SCALE_FACTOR_SPATIAL,
        );
        let channels = self.transformer.config().in_channels;
        let t_chunk = req.num_latent_frames_per_chunk;
        let window = (t_chunk - 1) * VAE_SCALE_FACTOR_TEMPORAL + 1;
        let num_chunks = req.num_chunks();
        let total_out = req.output_frames();
        let guidance = Guidance::from_flags(
            req.guidance_scale,
            req.use_cfg_zero_star,
            req.use_zero_init,
            req.zero_steps,
        );
        if guidance.needs_uncond() && negative_prompt_embeds.is_none() {
            return Err(PipelineError::Unsupported(
                "guidance_scale > 1 needs negative prompt embeddings".into(),
            ));
        }

        // Text projection once per request, reused by every step of every chunk.
        let text = self.transformer.project_text(prompt_embeds);
        let neg_text = negative_prompt_embeds.map(|e| self.transformer.project_text(e));
        // CFG runs cond and uncond as one batch-2 transformer call (same math per row; one pass
        // over the weights): the texts are stacked once here, the history once per chunk.
        let text_cfg = neg_text.as_ref().map(|n| {
            self.transformer
                .text_context(Tensor::cat(vec![text.clone(), n.clone()], 0))
        });
        // Cross-attention keys/values of the prompt: once per request, not once per step.
        let text = self.transformer.text_context(text);
        let neg_text = neg_text.map(|n| self.transformer.text_context(n));

        // 5. History buffer and RoPE frame indices (keep_first_frame = true).
        let mut history_sizes = req.history_sizes.clone();
        history_sizes.sort_unstable_by(|a, b| b.cmp(a));
        let num_history: usize = history_sizes.iter().sum();
        let mut history = Tensor::<B, 5>::zeros([1, channels, num_history, lh, lw], f32_on);
        let [n_long, n_mid, n_1x] = [history_sizes[0], history_sizes[1], history_sizes[2]];
        let idx =
            |start: usize, len: usize| (start as i64..(start + len) as i64).collect::<Vec<_>>();
        let indices_long = idx(1, n_long);
        let indices_mid = idx(1 + n_long, n_mid);
        let indices_1x = idx(1 + n_long + n_mid, n_1x);
        let indices_hidden = idx(1 + num_history, t_chunk);
        let mut indices_short = vec![0i64];
        indices_short.extend(&indices_1x);

        // 4. Image / video conditioning: the anchor (prefix) latent and the history it fills.
        let mut image_latents: Option<Tensor<B, 5>> = None;
        if let Some((anchor, fill)) = self.prepare_conditioning(req, ctx, t_chunk)? {
            image_latents = Some(anchor);
            history = match fill {
                HistoryFill::LastSlot(fake) => {
                    Tensor::cat(vec![history.narrow(2, 0, num_history - 1), fake], 2)
                }
                HistoryFill::Frames(video) => {
                    let vf = video.dims()[2];
                    match vf < num_history {
                        true => Tensor::cat(vec![history.narrow(2, 0, num_history - vf), video], 2),
                        false => video.narrow(2, vf - num_history, num_history),
                    }
                }
            };
        }

        let l_factor = block_noise_factor(self.scheduler.gamma());
        let mut delivered = 0usize;

        // 6. Denoising loop.
        for k in 0..num_chunks {
            let mut samplers = self.stage_samplers(req, k, stages, [t_chunk, lh, lw])?;
            let total_steps: usize = samplers.iter().map(|s| s.timesteps().len()).sum();
            ctx.progress.event(Progress::ChunkStarted {
                chunk: k,
                chunks: num_chunks,
                steps: total_steps,
                frames: window,
            });

            // History views: long, mid, 1x from the last `num_history` frames; short = prefix ++ 1x.
            let h_long = history.clone().narrow(2, 0, n_long);
            let h_mid = history.clone().narrow(2, n_long, n_mid);
            let h_1x = history.clone().narrow(2, n_long + n_mid, n_1x);
            let prefix = image_latents
                .clone()
                .unwrap_or_else(|| Tensor::zeros([1, channels, 1, lh, lw], f32_on));
            let hist = HistoryInputs {
                latents_history_short: Tensor::cat(vec![prefix, h_1x], 2),
                latents_history_mid: h_mid,
                latents_history_long: h_long,
                indices_latents_history_short: indices_short.clone(),
                indices_latents_history_mid: indices_mid.clone(),
                indices_latents_history_long: indices_long.clone(),
            };
            let twice = |x: &Tensor<B, 5>| Tensor::cat(vec![x.clone(), x.clone()], 0);
            let hist_cfg = text_cfg.as_ref().map(|_| HistoryInputs {
                latents_history_short: twice(&hist.latents_history_short),
                latents_history_mid: twice(&hist.latents_history_mid),
                latents_history_long: twice(&hist.latents_history_long),
                indices_latents_history_short: indices_short.clone(),
                indices_latents_history_mid: indices_mid.clone(),
                indices_latents_history_long: indices_long.clone(),
            });

            // Initial noise at full latent size, then bilinear ×½ (= 2×2 mean) ·2 per extra stage.
            let shape = [1, channels, t_chunk, lh, lw];
            let draw = ctx
                .noise
                .standard_normal(&format!("chunk{k}.latents"), &shape)?;
            let mut latents = Tensor::<B, 5>::from_data(TensorData::new(draw, shape), f32_on);
            for _ in 1..stages {
                latents = downsample_half(latents).mul_scalar(2.0);
            }
            let mut start_points: Vec<Tensor<B, 5>> = vec![latents.clone()];

            let mut step_done = 0usize;
            for (s, sampler) in samplers.iter_mut().enumerate() {
                if s > 0 {
                    latents = upsample_nearest_2x(latents);
                    let (alpha, beta) = self.scheduler.stage_renoise_coeffs(s);
                    let [b, c, t, h, w] = latents.dims();
                    let name = format!("chunk{k}.stage{s}.block_noise");
                    let blocks = b * c * t * (h / 2) * (w / 2);
                    let z = ctx.noise.standard_normal(&name, &[blocks, 4])?;
                    let noise = block_noise::<B>(&z, &l_factor, [b, c, t, h, w], device);
                    latents = latents.mul_scalar(alpha) + noise.mul_scalar(beta);
                    start_points.push(latents.clone());
                }
                let mut solver_history = SolverHistory::<Tensor<B, 5>>::new();
                for i in 0..sampler.timesteps().len() {
                    if ctx.cancel.is_cancelled() {
                        return Err(PipelineError::Cancelled);
                    }
                    let t = sampler.timesteps()[i];
                    // Base: `t.expand(B)` (float); pyramid: `.to(torch.int64)` (truncation).
                    let t_model = match self.variant {
                        Variant::Base => t as f32,
                        _ => model_timestep(t) as f32,
                    };
                    let v = if guidance.zero_init_applies(s, i) {
                        Tensor::zeros(latents.dims(), f32_on)
                    } else {
                        let forward = |text: &TextContext<B>| {
                            self.transformer.forward_with_context(
                                latents.clone(),
                                &[t_model],
                                text,
                                &indices_hidden,
                                Some(&hist),
                            )
                        };
                        let (v_cond, v_uncond) =
                            match (guidance.needs_uncond(), &text_cfg, &hist_cfg) {
                                (true, Some(text_cfg), Some(hist_cfg)) => {
                                    // Rows: [cond, uncond].
                                    let out = self.transformer.forward_with_context(
                                        Tensor::cat(vec![latents.clone(), latents.clone()], 0),
                                        &[t_model, t_model],
                                        text_cfg,
                                        &indices_hidden,
                                        Some(hist_cfg),
                                    );
                                    (out.clone().narrow(0, 0, 1), Some(out.narrow(0, 1, 1)))
                                }
                                (true, ..) => (forward(&text), neg_text.as_ref().map(forward)),
                                (false, ..) => (forward(&text), None),
                            };
                        let f32 = |v: Tensor<B, 5>| v.cast(DType::F32);
                        guidance.apply(f32(v_cond), v_uncond.map(f32), s, i)
                    };
                    latents = match sampler {
                        StageSampler::Dmd(sched) => {
                            let PipelineScheduler::Dmd(dmd) = self.scheduler else {
                                unreachable!("DMD stages come from the DMD scheduler")
                            };
                            let step = dmd.step_coeffs(sched, i);
                            // DMD: x0 = x − σ_t·v, rounded to the prediction's dtype
                            // (`x0_pred.to(original_dtype)`); re-noise toward the stage start
                            // point unless last.
                            let x0 = (latents - v.mul_scalar(step.sigma_t))
                                .cast(self.transformer.dtype())
                                .cast(DType::F32);
                            match step.next {
                                Some(sn) => {
                                    x0.mul_scalar(1.0 - sn) + start_points[s].clone().mul_scalar(sn)
                                }
                                None => x0,
                            }
                        }
                        StageSampler::UniPc(solver) => {
                            let plan = solver.step_plan(i);
                            solver_history.step(&plan, latents, v, combine::<B>)
                        }
                    };
                    step_done += 1;
                    ctx.progress.event(Progress::Step {
                        chunk: k,
                        stage: s,
                        step: step_done,
                        steps: total_steps,
                    });
                }
            }

            if (k == 0 && image_latents.is_none()) || (req.is_skip_first_chunk && k == 1) {
                image_latents = Some(latents.clone().narrow(2, 0, 1));
            }
            // Keep only the frames the model can still see.
            let grown = Tensor::cat(vec![history, latents.clone()], 2);
            let len = grown.dims()[2];
            history = grown.narrow(2, len - num_history, num_history);

            ctx.progress.event(Progress::Decoding {
                chunk: k,
                done: false,
            });
            let video = self.vae.decode(self.vae.denormalize(latents));
            ctx.progress.event(Progress::Decoding {
                chunk: k,
                done: true,
            });
            let keep = window.min(total_out - delivered);
            let frames = postprocess(video, keep);
            delivered += frames.frames;
            sink.push_frames(frames).map_err(PipelineError::Sink)?;
            ctx.progress.event(Progress::FramesReady {
                chunk: k,
                frames: delivered,
            });
        }
        Ok(delivered)
    }

    /// Step 4 of `__call__` (`prepare_image_latents` / `prepare_video_latents` and the noising
    /// that follows), in diffusers' order of draws:
    ///
    /// * image: `image.vae_sample`, `fake_image.vae_sample`, `image.noise_sigma` (uniform),
    ///   `image.noise`, `fake_image.noise_sigma` (uniform), `fake_image.noise`. The anchor is the
    ///   image encoded as one frame; the fake image latent (last latent of the image repeated
    ///   over one window) replaces the last history slot.
    /// * video: `video.first_frame.vae_sample`, `video.window{i}.vae_sample` per window of
    ///   `(t−1)·4+1` frames cut from the end (a leading remainder is dropped),
    ///   `image.noise_sigma`, `image.noise`, then per window `video.window{i}.noise_sigma`
    ///   (`t` uniform draws, one σ per latent frame) and `video.window{i}.noise`.
    ///
    /// Every latent is noised `x ← σ·ε + (1−σ)·x` with `σ = min + u·(max − min)`, `u ~ U[0,1)`.
    fn prepare_conditioning(
        &self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        t_chunk: usize,
    ) -> Result<Option<PreparedConditioning<B>>, PipelineError> {
        let (pixels, is_video) = match &req.conditioning {
            Conditioning::None => return Ok(None),
            Conditioning::Image(p) => (p, false),
            Conditioning::Video(p) => (p, true),
        };
        let (h, w) = (req.height as usize, req.width as usize);
        if (pixels.height, pixels.width) != (h, w)
            || pixels.data.len() != 3 * pixels.frames * h * w
            || pixels.frames == 0
        {
            return Err(PipelineError::Unsupported(format!(
                "the conditioning input is {} frame(s) of {}x{} ({} values); the request needs {w}x{h} pixels",
                pixels.frames,
                pixels.width,
                pixels.height,
                pixels.data.len()
            )));
        }
        if !is_video && pixels.frames != 1 {
            return Err(PipelineError::Unsupported(format!(
                "an image input must be one frame, got {}",
                pixels.frames
            )));
        }
        let window = (t_chunk - 1) * VAE_SCALE_FACTOR_TEMPORAL + 1;
        let device = self.device;
        let video = Tensor::<B, 5>::from_data(
            TensorData::new(pixels.data.clone(), [1, 3, pixels.frames, h, w]),
            (device, DType::F32),
        );
        let (lo_img, hi_img) = (IMAGE_NOISE_SIGMA_MIN, IMAGE_NOISE_SIGMA_MAX);
        let (lo_vid, hi_vid) = (VIDEO_NOISE_SIGMA_MIN, VIDEO_NOISE_SIGMA_MAX);
        if !is_video {
            // prepare_image_latents
            let image_latents = self.encode_sample(video.clone(), "image.vae_sample", ctx)?;
            let fake_video = video.repeat_dim(2, window);
            let fake_full = self.encode_sample(fake_video, "fake_image.vae_sample", ctx)?;
            let n = fake_full.dims()[2];
            let fake = fake_full.narrow(2, n - 1, 1);
            let image_latents = self.renoise(image_latents, "image", 1, (lo_img, hi_img), ctx)?;
            let fake = self.renoise(fake, "fake_image", 1, (lo_vid, hi_vid), ctx)?;
            return Ok(Some((image_latents, HistoryFill::LastSlot(fake))));
        }
        // prepare_video_latents
        let num_frames = pixels.frames;
        let num_windows = num_frames / window;
        if num_windows == 0 {
            return Err(PipelineError::Unsupported(format!(
                "the input video has {num_frames} frame(s); video-to-video needs at least {window}                  (one window of (num_latent_frames_per_chunk - 1) * 4 + 1 frames)"
            )));
        }
        let start_frame = num_frames - num_windows * window;
        let first = self.encode_sample(
            video.clone().narrow(2, 0, 1),
            "video.first_frame.vae_sample",
            ctx,
        )?;
        let mut windows = Vec::with_capacity(num_windows);
        for i in 0..num_windows {
            let chunk = video.clone().narrow(2, start_frame + i * window, window);
            windows.push(self.encode_sample(chunk, &format!("video.window{i}.vae_sample"), ctx)?);
        }
        let first = self.renoise(first, "image", 1, (lo_img, hi_img), ctx)?;
        let mut noisy = Vec::with_capacity(num_windows);
        for (i, latents) in windows.into_iter().enumerate() {
            let frames = latents.dims()[2];
            noisy.push(self.renoise(
                latents,
                &format!("video.window{i}"),
                frames,
                (lo_vid, hi_vid),
                ctx,
            )?);
        }
        Ok(Some((first, HistoryFill::Frames(Tensor::cat(noisy, 2)))))
    }

    /// `normalize(vae.encode(pixels).latent_dist.sample())` with the sample noise drawn as `name`,
    /// returned in f32 (diffusers: `.to(device=device, dtype=torch.float32)`).
    fn encode_sample(
        &self,
        pixels: Tensor<B, 5>,
        name: &str,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let (mean, logvar) = self.vae.encode(pixels);
        let dims = mean.dims();
        let eps = ctx.noise.standard_normal(name, &dims)?;
        let eps =
            Tensor::<B, 5>::from_data(TensorData::new(eps, dims), (self.device, mean.dtype()));
        let sample = AutoencoderKLWan::sample(mean, logvar, eps).cast(DType::F32);
        Ok(self.vae.normalize(sample))
    }

    /// `σ·ε + (1−σ)·x` with `frames` σ values (one per latent frame, or one for all when
    /// `frames == 1`) from the uniform draw `{prefix}.noise_sigma` and ε = `{prefix}.noise`.
    fn renoise(
        &self,
        x: Tensor<B, 5>,
        prefix: &str,
        frames: usize,
        (lo, hi): (f64, f64),
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let u = ctx
            .noise
            .uniform(&format!("{prefix}.noise_sigma"), &[frames])?;
        // torch: rand(n) * (max − min) + min in float32.
        let (range, lo) = ((hi - lo) as f32, lo as f32);
        let sigmas: Vec<f32> = u.iter().map(|u| u * range + lo).collect();
        let sigma = Tensor::<B, 5>::from_data(
            TensorData::new(sigmas, [1, 1, frames, 1, 1]),
            (self.device, DType::F32),
        );
        let dims = x.dims();
        let eps = ctx
            .noise
            .standard_normal(&format!("{prefix}.noise"), &dims)?;
        let eps = Tensor::<B, 5>::from_data(TensorData::new(eps, dims), (self.device, DType::F32));
        let one_minus = sigma.clone().neg().add_scalar(1.0);
        Ok(sigma * eps + one_minus * x)
    }

    /// The per-stage samplers of chunk `k`: `set_timesteps` for every stage, with μ from the
    /// stage's token count (`latent = [frames, height, width]` at full resolution).
    fn stage_samplers(
        &self,
        req: &GenerationRequest,
        k: usize,
        stages: usize,
        [t_chunk, lh, lw]: [usize; 3],
    ) -> Result<Vec<StageSampler>, PipelineError> {
        let unsupported = |e: crate::pipeline::schedulers::SchedulerError| {
            PipelineError::Unsupported(e.to_string())
        };
        let patch_size = self.transformer.config().patch_size;
        // μ per stage from the latents at the top of the stage loop, i.e. *before* that stage's
        // upsample (stages 0 and 1 share one μ), as diffusers does.
        let stage0 = [t_chunk, lh >> (stages - 1), lw >> (stages - 1)];
        let mu = |s: usize| {
            self.scheduler
                .calculate_shift(pyramid_image_seq_len(s, stage0, patch_size))
        };
        match (self.scheduler, self.variant) {
            (PipelineScheduler::Dmd(sched), _) => {
                let amplify = req.is_amplify_first_chunk && k == 0;
                (0..stages)
                    .map(|s| {
                        sched
                            .set_timesteps(
                                req.pyramid_num_inference_steps_list[s],
                                s,
                                Some(mu(s)),
                                amplify,
                            )
                            .map(StageSampler::Dmd)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unsupported)
            }
            (PipelineScheduler::Helios(sched), Variant::Base) => {
                let solver =
                    super::pipeline_helios::base_solver(sched, req.num_inference_steps, mu(0))
                        .map_err(unsupported)?;
                Ok(vec![StageSampler::UniPc(solver)])
            }
            (PipelineScheduler::Helios(sched), _) => (0..stages)
                .map(|s| {
                    sched
                        .set_timesteps(
                            req.pyramid_num_inference_steps_list[s],
                            Some(s),
                            None,
                            Some(mu(s)),
                        )
                        .map(StageSampler::UniPc)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(unsupported),
        }
    }
}

/// The noised anchor latent `[1, 16, 1, h, w]` and what fills the history.
type PreparedConditioning<B> = (Tensor<B, 5>, HistoryFill<B>);

/// Where the encoded conditioning goes in the history buffer.
enum HistoryFill<B: Backend> {
    /// I2V: the fake image latent `[1, 16, 1, h, w]` replaces the last slot.
    LastSlot(Tensor<B, 5>),
    /// V2V: the video latents `[1, 16, n, h, w]` fill the end (zeros stay in front when
    /// `n < sum(history_sizes)`).
    Frames(Tensor<B, 5>),
}

/// diffusers' defaults of `image_noise_sigma_{min,max}` and `video_noise_sigma_{min,max}`.
const IMAGE_NOISE_SIGMA_MIN: f64 = 0.111;
const IMAGE_NOISE_SIGMA_MAX: f64 = 0.135;
const VIDEO_NOISE_SIGMA_MIN: f64 = 0.111;
const VIDEO_NOISE_SIGMA_MAX: f64 = 0.135;

/// `Σ c_k·t_k` for [`SolverHistory::step`], each weight rounded to the tensor dtype first.
fn combine<B: Backend>(terms: &[(f64, &Tensor<B, 5>)]) -> Tensor<B, 5> {
    let (c0, t0) = terms[0];
    terms[1..]
        .iter()
        .fold(t0.clone().mul_scalar(c0 as f32), |acc, (c, t)| {
            acc + (*t).clone().mul_scalar(*c as f32)
        })
}

/// `F.interpolate(x, size=(h/2, w/2), mode="bilinear")` per frame, which for an exact halving
/// (align_corners=False, no antialias) is the mean of each 2×2 block.
///
/// # Shapes
/// `[B, C, T, H, W]` → `[B, C, T, H/2, W/2]`
fn downsample_half<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    x.reshape([b * c * t, h / 2, 2, w / 2, 2])
        .mean_dim(4)
        .mean_dim(2)
        .reshape([b, c, t, h / 2, w / 2])
}

/// `F.interpolate(x, size=(2h, 2w), mode="nearest")` per frame.
///
/// # Shapes
/// `[B, C, T, H, W]` → `[B, C, T, 2H, 2W]`
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    x.reshape([b * c * t, h, 1, w, 1])
        .repeat_dim(2, 2)
        .repeat_dim(4, 2)
        .reshape([b, c, t, 2 * h, 2 * w])
}

/// diffusers `sample_block_noise`: `noise = z @ Lᵀ` (2×2 blocks with covariance `L·Lᵀ`), laid out
/// by `view(B,C,T,h/2,w/2,2,2).permute(0,1,2,3,5,4,6)`.
///
/// # Shapes
/// `z`: `[B·C·T·(h/2)·(w/2), 4]` row-major → `[B, C, T, h, w]`
fn block_noise<B: Backend>(
    z: &[f32],
    l: &[[f64; 4]; 4],
    [b, c, t, h, w]: [usize; 5],
    device: &B::Device,
) -> Tensor<B, 5> {
    let mut out = vec![0f32; z.len()];
    for (zi, oi) in z.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        for r in 0..4 {
            // (z @ Lᵀ)[r] = Σ_j z[j]·L[r][j]
            oi[r] = (0..4).map(|j| zi[j] as f64 * l[r][j]).sum::<f64>() as f32;
        }
    }
    Tensor::<B, 1>::from_data(
        TensorData::new(out, [b * c * t * h * w]),
        (device, DType::F32),
    )
    .reshape([b * c * t, h / 2, w / 2, 2, 2])
    .swap_dims(2, 3)
    .reshape([b, c, t, h, w])
}

/// `(video / 2 + 0.5).clamp(0, 1)` and `[1, 3, F, H, W]` → `[F, H, W, 3]`, keeping `keep` frames.
fn postprocess<B: Backend>(video: Tensor<B, 5>, keep: usize) -> VideoFrames {
    let [_, _, f, h, w] = video.dims();
    let keep = keep.min(f);
    let data: Vec<f32> = video
        .narrow(2, 0, keep)
        .div_scalar(2.0)
        .add_scalar(0.5)
        .clamp(0.0, 1.0)
        .cast(DType::F32)
        .reshape([3, keep, h, w])
        .permute([1, 2, 3, 0])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    VideoFrames {
        data,
        frames: keep,
        height: h,
        width: w,
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
/// As [`HeliosPyramidPipeline::load`] for `model_index.json` and the scheduler config.
pub fn checkpoint_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let (model_index, variant, scheduler) = read_checkpoint_configs(dir)?;
    Ok(variant.defaults(&model_index, &scheduler))
}
