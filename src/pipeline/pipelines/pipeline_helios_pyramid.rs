//! Mirrors diffusers 0.42.1 `pipelines/helios/pipeline_helios_pyramid.py` `HeliosPyramidPipeline`
//! (Helios-Distilled with `is_distilled` and `HeliosDMDScheduler`; Helios-Mid with
//! `is_cfg_zero_star` and `HeliosScheduler`), text-, image- and video-to-video, and holds the
//! chunk loop it shares with `HeliosPipeline` (Helios-Base, see [`super::pipeline_helios`]).
//!
//! The loaded type [`HeliosPyramidPipeline`] runs every variant: [`Variant`] is read from the
//! checkpoint (`model_index.json` `_class_name` and flags, `scheduler_config.json` `_class_name`)
//! and the scheduler is a [`PipelineScheduler`] (DMD or UniPC/Euler). The chunk loop
//! ([`DenoiseParts::denoise`]) is one loop of named steps with a per-stage sampler
//! ([`StageSampler`]: DMD steps, or `HeliosScheduler` UniPC steps); Base is the one-stage case.
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

use crate::pipeline::checkpoint::component_dir;
use crate::pipeline::continuation::HeliosState;
use crate::pipeline::guidance::Guidance;
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::models::transformer_helios::{
    HeliosTransformer3DModel, HistoryInputs, TextContext,
};
use crate::pipeline::noise::NoiseSource;
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{CancelToken, Progress, ProgressSink, loading};
use crate::pipeline::request::{GenerationRequest, ModelDefaults};
use crate::pipeline::schedulers::scheduling_helios_dmd::{
    block_noise_factor, model_timestep, pyramid_image_seq_len,
};

use super::helios_conditioning::{HistoryFill, PreparedConditioning};
pub use super::helios_variant::{
    ModelIndex, PipelineScheduler, Variant, checkpoint_defaults, read_checkpoint_configs,
};
pub use super::pipeline_output::{FrameSink, VideoFrames};
use super::pipeline_wan::decode_chunk_to_sink;
pub use super::prompt_encoder::{PromptEmbeds, PromptEncoder, TextEncoderResidency};
use super::pyramid_latents::{block_noise, downsample_half, upsample_nearest_2x};
pub use crate::pipeline::error::PipelineError;
use crate::pipeline::schedulers::stage_sampler::StageSampler;

/// Latent channels ↔ pixels: the Wan VAE compresses 4× in time and 8× in space.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;
const VAE_SCALE_FACTOR_SPATIAL: usize = 8;

/// What a run needs besides the request: random draws, progress, cancellation.
pub struct RunContext<'a> {
    pub noise: &'a mut dyn NoiseSource,
    pub progress: &'a mut dyn ProgressSink,
    pub cancel: CancelToken,
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
    /// As [`load_with`](Self::load_with).
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
        let (model_index, variant, scheduler) =
            loading(progress, "scheduler", || read_checkpoint_configs(dir))?;

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
            HeliosTransformer3DModel::load_with_dtype(
                &sub("transformer")?,
                device,
                precision.transformer,
            )
        })?;
        let vae = loading(progress, "vae", || {
            AutoencoderKLWan::load_with_dtype(&sub("vae")?, device, precision.vae)
        })?;
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

    /// Step 3 alone: the request's prompt embeddings (and negative ones under CFG).
    ///
    /// # Errors
    /// As [`encode_prompt`](Self::encode_prompt).
    pub fn encode_request(
        &self,
        req: &GenerationRequest,
        progress: &mut dyn ProgressSink,
    ) -> Result<PromptEmbeds<B>, PipelineError> {
        self.with_prompt_encoder(|e| e.encode_request(req, progress))
    }

    /// [`call_with_embeds`](Self::call_with_embeds) that starts from a continuation `state`
    /// (the history, anchor and chunk index of an earlier video) and/or returns the state after
    /// its last chunk (`want_state`); see [`crate::pipeline::continuation`].
    ///
    /// # Errors
    /// As [`call`](Self::call); [`PipelineError::Unsupported`] starting with "state:" for a
    /// state made by another checkpoint or size, or given with an image / video reference.
    pub fn call_continued(
        &self,
        req: &GenerationRequest,
        embeds: PromptEmbeds<B>,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
        state: Option<&HeliosState>,
        want_state: bool,
    ) -> Result<(usize, Option<HeliosState>), PipelineError> {
        if let Some(st) = state
            && st.pipeline != self.model_index.class_name
        {
            return Err(PipelineError::Unsupported(format!(
                "state: incompatible: made by {}, this checkpoint is {}",
                st.pipeline, self.model_index.class_name
            )));
        }
        let (n, out) = self.parts().denoise_continued(
            req,
            (embeds.prompt_embeds, embeds.negative_prompt_embeds),
            ctx,
            sink,
            state,
            want_state,
        )?;
        Ok((
            n,
            out.map(|mut s| {
                s.pipeline = self.model_index.class_name.clone();
                s
            }),
        ))
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
    /// Steps 4–6 of `__call__`: conditioning, history and the chunk loop, from prompt
    /// embeddings `[1, L, text_dim]` (and negative ones when `guidance_scale > 1`) to decoded
    /// frames handed to `sink`.
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
        let embeds = (prompt_embeds, negative_prompt_embeds);
        Ok(self
            .denoise_continued(req, embeds, ctx, sink, None, false)?
            .0)
    }

    /// [`denoise`](Self::denoise) from a continuation `state` (history, anchor, chunk index)
    /// instead of an empty history, returning the state after the last chunk when `want_state`.
    /// Chunk `k` of this request is chunk `segment_index + k` of the whole video: its draws are
    /// `chunk{segment_index + k}.…`, so a continued video equals the one-request video.
    ///
    /// # Errors
    /// As [`denoise`](Self::denoise); [`PipelineError::Unsupported`] ("state: …") for a state
    /// of another size, or given with an image / video reference.
    pub fn denoise_continued(
        &self,
        req: &GenerationRequest,
        (prompt_embeds, negative_prompt_embeds): (Tensor<B, 3>, Option<Tensor<B, 3>>),
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
        state: Option<&HeliosState>,
        want_state: bool,
    ) -> Result<(usize, Option<HeliosState>), PipelineError> {
        let mut plan = self.plan(req)?;
        let texts = self.text_contexts(&plan, prompt_embeds, negative_prompt_embeds)?;
        // 5. History buffer and RoPE frame indices; 4. image / video conditioning fills it.
        let mut history = History::new(req, &plan, self.device);
        match state {
            Some(st) => {
                if !matches!(
                    req.conditioning,
                    crate::pipeline::request::Conditioning::None
                ) {
                    return Err(PipelineError::Unsupported(
                        "state: a continuation cannot also take an image or video reference".into(),
                    ));
                }
                history.restore(st, self.device)?;
                plan.first_chunk = st.segment_index;
            }
            None => {
                if let Some(prepared) = self.prepare_conditioning(req, ctx, plan.t_chunk)? {
                    history.condition(prepared);
                }
            }
        }
        // 6. Denoising loop, one chunk at a time, each decoded as soon as it is done.
        let mut delivered = 0usize;
        for k in 0..req.num_chunks() {
            let latents = self.denoise_chunk(req, &plan, k, &texts, &history, ctx)?;
            history.push(req, plan.first_chunk + k, latents.clone());
            let keep = plan.window.min(req.output_frames() - delivered);
            delivered += self.decode_chunk(k, latents, keep, ctx, sink)?;
            ctx.progress.event(Progress::FramesReady {
                chunk: k,
                frames: delivered,
            });
        }
        let out = want_state.then(|| history.save(plan.first_chunk + req.num_chunks()));
        Ok((delivered, out))
    }

    /// Step 1 (what `resolve` cannot know: the loaded scheduler) and the latent sizes.
    fn plan(&self, req: &GenerationRequest) -> Result<ChunkPlan, PipelineError> {
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
        let t_chunk = req.num_latent_frames_per_chunk;
        Ok(ChunkPlan {
            first_chunk: 0,
            stages,
            channels: self.transformer.config().in_channels,
            t_chunk,
            lh: req.height as usize / VAE_SCALE_FACTOR_SPATIAL,
            lw: req.width as usize / VAE_SCALE_FACTOR_SPATIAL,
            window: (t_chunk - 1) * VAE_SCALE_FACTOR_TEMPORAL + 1,
            guidance: Guidance::from_flags(
                req.guidance_scale,
                req.use_cfg_zero_star,
                req.use_zero_init,
                req.zero_steps,
            ),
        })
    }

    /// The prompt's text projection and cross-attention keys/values, once per request. With CFG
    /// the cond and uncond texts are stacked as one batch of two (one transformer call per step,
    /// one pass over the weights; the same math per row).
    fn text_contexts(
        &self,
        plan: &ChunkPlan,
        prompt_embeds: Tensor<B, 3>,
        negative_prompt_embeds: Option<Tensor<B, 3>>,
    ) -> Result<Texts<B>, PipelineError> {
        let text = self.transformer.project_text(prompt_embeds);
        let cfg = match (plan.guidance.needs_uncond(), negative_prompt_embeds) {
            (false, _) => None,
            (true, None) => {
                return Err(PipelineError::Unsupported(
                    "guidance_scale > 1 needs negative prompt embeddings".into(),
                ));
            }
            (true, Some(neg)) => {
                let neg = self.transformer.project_text(neg);
                Some(
                    self.transformer
                        .text_context(Tensor::cat(vec![text.clone(), neg], 0)),
                )
            }
        };
        Ok(Texts {
            cond: self.transformer.text_context(text),
            cfg,
        })
    }

    /// Every stage and step of chunk `k`: the chunk's latents `[1, C, T, h, w]` (f32) at full
    /// latent resolution.
    fn denoise_chunk(
        &self,
        req: &GenerationRequest,
        plan: &ChunkPlan,
        k: usize,
        texts: &Texts<B>,
        history: &History<B>,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        // `k` counts this request's chunks (progress); `g` the whole video's (draws, schedule).
        let g = plan.first_chunk + k;
        let mut samplers = self.stage_samplers(req, g, plan)?;
        let steps: usize = samplers.iter().map(|s| s.timesteps().len()).sum();
        ctx.progress.event(Progress::ChunkStarted {
            chunk: k,
            chunks: req.num_chunks(),
            steps,
            frames: plan.window,
        });
        let hist = history.inputs(1);
        let hist_cfg = texts.cfg.as_ref().map(|_| history.inputs(2));
        let mut latents = self.initial_latents(plan, g, ctx)?;
        let mut step_done = 0usize;
        for (s, sampler) in samplers.iter_mut().enumerate() {
            if s > 0 {
                latents = self.stage_renoise(g, s, latents, ctx)?;
            }
            sampler.begin(&latents);
            for i in 0..sampler.timesteps().len() {
                if ctx.cancel.is_cancelled() {
                    return Err(PipelineError::Cancelled);
                }
                let t = sampler.timesteps()[i];
                let v = match plan.guidance.zero_init_applies(s, i) {
                    true => Tensor::zeros(latents.dims(), (self.device, DType::F32)),
                    false => {
                        let inputs = (texts, &hist, hist_cfg.as_ref(), &history.indices_hidden[..]);
                        self.predict(&latents, t, (s, i), &plan.guidance, inputs, &ctx.cancel)?
                    }
                };
                latents = sampler.step(i, latents, v);
                step_done += 1;
                ctx.progress.event(Progress::Step {
                    chunk: k,
                    stage: s,
                    step: step_done,
                    steps,
                });
            }
        }
        Ok(latents)
    }

    /// `chunk{k}.latents` at full latent size, then bilinear ×½ (= 2×2 mean) ·2 per extra stage.
    fn initial_latents(
        &self,
        plan: &ChunkPlan,
        k: usize,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let shape = [1, plan.channels, plan.t_chunk, plan.lh, plan.lw];
        let draw = ctx
            .noise
            .standard_normal(&format!("chunk{k}.latents"), &shape)?;
        let mut latents =
            Tensor::<B, 5>::from_data(TensorData::new(draw, shape), (self.device, DType::F32));
        for _ in 1..plan.stages {
            latents = downsample_half(latents).mul_scalar(2.0);
        }
        Ok(latents)
    }

    /// The start of pyramid stage `s ≥ 1`: nearest 2× upsampling, then
    /// `alpha·x + beta·block_noise` with the draw `chunk{k}.stage{s}.block_noise`.
    fn stage_renoise(
        &self,
        k: usize,
        s: usize,
        latents: Tensor<B, 5>,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let latents = upsample_nearest_2x(latents);
        let (alpha, beta) = self.scheduler.stage_renoise_coeffs(s);
        let [b, c, t, h, w] = latents.dims();
        let name = format!("chunk{k}.stage{s}.block_noise");
        let z = ctx
            .noise
            .standard_normal(&name, &[b * c * t * (h / 2) * (w / 2), 4])?;
        let l_factor = block_noise_factor(self.scheduler.gamma());
        let noise = block_noise::<B>(&z, &l_factor, [b, c, t, h, w], self.device);
        Ok(latents.mul_scalar(alpha) + noise.mul_scalar(beta))
    }

    /// The guided velocity at timestep `t` of step `(stage, i)`, f32 `[1, C, T, h, w]`: one
    /// transformer call (a batch of two, [cond, uncond], under CFG), then CFG / CFG-Zero*.
    fn predict(
        &self,
        latents: &Tensor<B, 5>,
        t: f64,
        (stage, i): (usize, usize),
        guidance: &Guidance,
        (texts, hist, hist_cfg, indices_hidden): PredictInputs<'_, B>,
        cancel: &CancelToken,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        // Base: `t.expand(B)` (float); pyramid: `.to(torch.int64)` (truncation).
        let t_model = match self.variant {
            Variant::Base => t as f32,
            _ => model_timestep(t) as f32,
        };
        // Under CFG one batch of two rows, [cond, uncond]; else the cond row alone.
        let (batch, ts, text, hist) = match (&texts.cfg, hist_cfg) {
            (Some(text_cfg), Some(hist_cfg)) => (
                Tensor::cat(vec![latents.clone(), latents.clone()], 0),
                vec![t_model; 2],
                text_cfg,
                hist_cfg,
            ),
            _ => (latents.clone(), vec![t_model], &texts.cond, hist),
        };
        // Checked before every transformer block: DELETE frees the worker within one block.
        let out = self
            .transformer
            .forward_stoppable((batch, &ts, text, indices_hidden, Some(hist)), &|| {
                cancel.is_cancelled()
            })
            .ok_or(PipelineError::Cancelled)?
            .cast(DType::F32);
        let uncond = (out.dims()[0] == 2).then(|| out.clone().narrow(0, 1, 1));
        Ok(guidance.apply(out.narrow(0, 0, 1), uncond, stage, i))
    }

    /// VAE-decode chunk `k` and hand its first `keep` frames to `sink`; returns how many.
    fn decode_chunk(
        &self,
        k: usize,
        latents: Tensor<B, 5>,
        keep: usize,
        ctx: &mut RunContext<'_>,
        sink: &mut dyn FrameSink,
    ) -> Result<usize, PipelineError> {
        decode_chunk_to_sink(self.vae, k, latents, keep, ctx, sink)
    }

    /// The per-stage samplers of chunk `k`: `set_timesteps` for every stage, with μ from the
    /// stage's token count.
    fn stage_samplers(
        &self,
        req: &GenerationRequest,
        k: usize,
        plan: &ChunkPlan,
    ) -> Result<Vec<StageSampler<B>>, PipelineError> {
        let unsupported = |e: crate::pipeline::schedulers::SchedulerError| {
            PipelineError::Unsupported(e.to_string())
        };
        let stages = plan.stages;
        let patch_size = self.transformer.config().patch_size;
        // μ per stage from the latents at the top of the stage loop, i.e. *before* that stage's
        // upsample (stages 0 and 1 share one μ), as diffusers does.
        let stage0 = [
            plan.t_chunk,
            plan.lh >> (stages - 1),
            plan.lw >> (stages - 1),
        ];
        let mu = |s: usize| {
            self.scheduler
                .calculate_shift(pyramid_image_seq_len(s, stage0, patch_size))
        };
        let steps = |s: usize| req.pyramid_num_inference_steps_list[s];
        match (self.scheduler, self.variant) {
            (PipelineScheduler::Dmd(sched), _) => {
                let amplify = req.is_amplify_first_chunk && k == 0;
                let x0_dtype = self.transformer.dtype();
                (0..stages)
                    .map(|s| {
                        sched
                            .set_timesteps(steps(s), s, Some(mu(s)), amplify)
                            .map(|schedule| StageSampler::dmd(sched, schedule, x0_dtype))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unsupported)
            }
            (PipelineScheduler::Helios(sched), Variant::Base) => {
                let solver =
                    super::pipeline_helios::base_solver(sched, req.num_inference_steps, mu(0))
                        .map_err(unsupported)?;
                Ok(vec![StageSampler::unipc(solver)])
            }
            (PipelineScheduler::Helios(sched), _) => (0..stages)
                .map(|s| {
                    sched
                        .set_timesteps(steps(s), Some(s), None, Some(mu(s)))
                        .map(StageSampler::unipc)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(unsupported),
        }
    }
}

/// What the transformer call of a step reads besides the latents: the texts, the history
/// inputs (batch 1, and batch 2 under CFG) and the RoPE frame indices of the chunk.
type PredictInputs<'a, B> = (
    &'a Texts<B>,
    &'a HistoryInputs<B>,
    Option<&'a HistoryInputs<B>>,
    &'a [i64],
);

/// A host tensor of a continuation state on `device` (f32).
fn host_tensor<B: Backend>(
    (values, shape): &crate::pipeline::continuation::HostTensor,
    device: &B::Device,
) -> Tensor<B, 5> {
    Tensor::from_data(
        TensorData::new(values.clone(), *shape),
        (device, DType::F32),
    )
}

/// Sizes and guidance shared by every chunk of a request.
struct ChunkPlan {
    /// Index in the whole video of this request's first chunk (`segment_index` of a
    /// continuation state, else 0).
    first_chunk: usize,
    /// Pyramid stages (1 for Base).
    stages: usize,
    /// Latent channels (16).
    channels: usize,
    /// Latent frames per chunk (9).
    t_chunk: usize,
    /// Full-resolution latent height and width (pixels / 8).
    lh: usize,
    lw: usize,
    /// Video frames per chunk: `(t_chunk − 1)·4 + 1` (33).
    window: usize,
    guidance: Guidance,
}

/// The prompt's cross-attention context, and under CFG the [cond, uncond] batch of two.
struct Texts<B: Backend> {
    cond: TextContext<B>,
    cfg: Option<TextContext<B>>,
}

/// Step 5: the history buffer (the last `sum(history_sizes)` latent frames, f32
/// `[1, C, N, h, w]`), its RoPE frame indices, and the anchor (prefix) latent.
struct History<B: Backend> {
    buffer: Tensor<B, 5>,
    /// `history_sizes` sorted descending: long, mid, 1x.
    sizes: [usize; 3],
    /// The first latent frame (of the input, or of the first generated chunk).
    anchor: Option<Tensor<B, 5>>,
    indices_long: Vec<i64>,
    indices_mid: Vec<i64>,
    /// `[0] ++ indices_1x`: the anchor, then the 1x history.
    indices_short: Vec<i64>,
    /// The chunk's own frames, after the history.
    indices_hidden: Vec<i64>,
}

impl<B: Backend> History<B> {
    /// Zeros and the indices of `keep_first_frame = true`.
    fn new(req: &GenerationRequest, plan: &ChunkPlan, device: &B::Device) -> Self {
        let mut s = req.history_sizes.clone();
        s.sort_unstable_by(|a, b| b.cmp(a));
        let sizes = [s[0], s[1], s[2]];
        let n: usize = sizes.iter().sum();
        let idx = |start: usize, len: usize| (start as i64..(start + len) as i64).collect();
        let mut indices_short = vec![0i64];
        indices_short.extend(idx(1 + sizes[0] + sizes[1], sizes[2]));
        Self {
            buffer: Tensor::zeros(
                [1, plan.channels, n, plan.lh, plan.lw],
                (device, DType::F32),
            ),
            sizes,
            anchor: None,
            indices_long: idx(1, sizes[0]),
            indices_mid: idx(1 + sizes[0], sizes[1]),
            indices_short,
            indices_hidden: idx(1 + n, plan.t_chunk),
        }
    }

    fn len(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Step 4's result: the anchor latent, and the fake image latent in the last slot (I2V) or
    /// the video latents at the end (V2V).
    fn condition(&mut self, (anchor, fill): PreparedConditioning<B>) {
        let n = self.len();
        let buffer = self.buffer.clone();
        self.anchor = Some(anchor);
        self.buffer = match fill {
            HistoryFill::LastSlot(fake) => Tensor::cat(vec![buffer.narrow(2, 0, n - 1), fake], 2),
            HistoryFill::Frames(video) => {
                let vf = video.dims()[2];
                match vf < n {
                    true => Tensor::cat(vec![buffer.narrow(2, 0, n - vf), video], 2),
                    false => video.narrow(2, vf - n, n),
                }
            }
        };
    }

    /// The transformer's history inputs, repeated to a batch of `batch`: long, mid, 1x from
    /// the buffer; short = anchor (zeros without one) ++ 1x.
    fn inputs(&self, batch: usize) -> HistoryInputs<B> {
        let [n_long, n_mid, n_1x] = self.sizes;
        let [_, c, _, h, w] = self.buffer.dims();
        let prefix = self
            .anchor
            .clone()
            .unwrap_or_else(|| Tensor::zeros([1, c, 1, h, w], (&self.buffer.device(), DType::F32)));
        let view = |start: usize, len: usize| self.buffer.clone().narrow(2, start, len);
        let short = Tensor::cat(vec![prefix, view(n_long + n_mid, n_1x)], 2);
        let rows = |x: Tensor<B, 5>| match batch {
            1 => x,
            _ => Tensor::cat(vec![x; batch], 0),
        };
        HistoryInputs {
            latents_history_short: rows(short),
            latents_history_mid: rows(view(n_long, n_mid)),
            latents_history_long: rows(view(0, n_long)),
            indices_latents_history_short: self.indices_short.clone(),
            indices_latents_history_mid: self.indices_mid.clone(),
            indices_latents_history_long: self.indices_long.clone(),
        }
    }

    /// The continuation state after `segment_index` chunks (buffer and anchor to the host).
    fn save(&self, segment_index: usize) -> HeliosState {
        let host = |t: &Tensor<B, 5>| {
            let v = t
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 data");
            (v, t.dims())
        };
        HeliosState {
            segment_index,
            pipeline: String::new(),
            history: host(&self.buffer),
            anchor: self.anchor.as_ref().map(host),
        }
    }

    /// Starts from a saved state; its buffer must have this request's shape.
    fn restore(&mut self, st: &HeliosState, device: &B::Device) -> Result<(), PipelineError> {
        let want = self.buffer.dims();
        let anchor_ok = st
            .anchor
            .as_ref()
            .is_none_or(|(_, s)| *s == [1, want[1], 1, want[3], want[4]]);
        if st.history.1 != want || !anchor_ok {
            return Err(PipelineError::Unsupported(format!(
                "state: incompatible: its history is {:?} latent values, this request needs {:?} \
                 (same model, width, height and history_sizes)",
                st.history.1, want
            )));
        }
        self.buffer = host_tensor(&st.history, device);
        self.anchor = st.anchor.as_ref().map(|a| host_tensor(a, device));
        Ok(())
    }

    /// After chunk `k`: the anchor from its first latent frame when there is none yet (or from
    /// chunk 1 with `is_skip_first_chunk`), and the buffer keeps only the frames the model can
    /// still see.
    fn push(&mut self, req: &GenerationRequest, k: usize, latents: Tensor<B, 5>) {
        if (k == 0 && self.anchor.is_none()) || (req.is_skip_first_chunk && k == 1) {
            self.anchor = Some(latents.clone().narrow(2, 0, 1));
        }
        let n = self.len();
        let grown = Tensor::cat(vec![self.buffer.clone(), latents], 2);
        let len = grown.dims()[2];
        self.buffer = grown.narrow(2, len - n, n);
    }
}
