//! Mirrors diffusers 0.42.1 `pipelines/wan/pipeline_wan_i2v.py` `WanImageToVideoPipeline`:
//! Wan2.1 image-to-video (CLIP image embeddings + condition latents + mask), first-last-frame
//! (FLF2V: `last_image`, the transformer's `pos_embed_seq_len`), and Wan2.2 I2V A14B (no image
//! encoder, two experts switched at `boundary_ratio · num_train_timesteps`).
//!
//! Steps, numbered as in `__call__`:
//! 1. check inputs ([`crate::pipeline::request::resolve`] already did; the image is required
//!    here, and `last_image` only for a transformer with `pos_embed_seq_len`);
//! 3. encode the prompt ([`PromptEncoder`], shared with `WanPipeline` and Helios) and, when the
//!    transformer has `image_dim` (Wan2.1), the image(s) with the CLIP vision tower's
//!    penultimate hidden state ([`CLIPVisionModel::penultimate_hidden_state`] after
//!    [`CLIPImageProcessor::preprocess`]);
//! 4. `scheduler.set_timesteps(num_inference_steps)` with the request's `flow_shift`;
//! 5. `prepare_latents`: the one random draw `latents` `[1, 16, T, h, w]`; the condition video
//!    `[image, 0 × (F − 1)]` (FLF2V `[image, 0 × (F − 2), last_image]`) encoded by the VAE
//!    (`latent_dist.mode()`, no draw) and normalised; the mask `[1, 4, T, h, w]` (1 on latent
//!    frame 0; FLF2V also channel 3 of the last latent frame); `condition = cat([mask, cond])`;
//! 6. per step: `cat([latents, condition], 1)` `[1, 36, T, h, w]` through the expert of the
//!    timestep with its guidance (one batch-of-two call under CFG), the scheduler step;
//! 7. de-normalise and decode.
//!
//! Deliberate divergences (pinned by `tests/pipeline_wan_i2v.rs`, ≥ 40 dB PSNR of the decoded
//! frames against diffusers with the same draws):
//! - CLIP sees the image as the pipeline holds it, already stretched to the output size
//!   (diffusers' processor resizes the caller's original image); identical when the image has
//!   the output size, as in the tests;
//! - cross-attention keys/values of prompt and image are computed once per request per expert
//!   ([`WanTransformer3DModel::context`]); guidance in f32 (as `WanPipeline`);
//! - the decode loop repeats `WanPipeline`'s twenty lines (not shared yet).
//!
//! Memory: every model stays resident (the tiny and the CPU cases), like `WanPipeline`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::checkpoint::{component_dir, read_config};
use crate::pipeline::error::PipelineError;
use crate::pipeline::guidance::Guidance;
use crate::pipeline::image_processing_clip::{CLIPImageProcessor, frame_to_rgb8};
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::models::clip_vision_model::CLIPVisionModel;
use crate::pipeline::models::transformer_wan::{WanContext, WanTransformer3DModel};
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{NoProgress, Progress, ProgressSink, loading};
use crate::pipeline::request::{
    Conditioning, ConditioningPixels, GenerationRequest, HELIOS_ONLY_FIELDS, ModelDefaults,
    V2V_ONLY_FIELDS, WAN_ONLY_FIELDS,
};
use crate::pipeline::schedulers::stage_sampler::combine;
use crate::pipeline::schedulers::unipc::SolverHistory;

use super::pipeline_helios_pyramid::RunContext;
use super::pipeline_output::{FrameSink, postprocess};
use super::pipeline_wan::{WanModelIndex, WanScheduler, read_wan_scheduler};
use super::prompt_encoder::{PromptEmbeds, PromptEncoder, TextEncoderResidency};

/// `model_index.json` `_class_name`.
pub const CLASS_NAME: &str = "WanImageToVideoPipeline";

/// The name of the initial-latents draw (the pipeline's only one; the VAE encode takes the mode).
pub const LATENTS_DRAW: &str = "latents";

/// `vae_scale_factor_temporal` of the Wan2.1 VAE.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;
/// `vae_scale_factor_spatial` of the Wan2.1 VAE.
const VAE_SCALE_FACTOR_SPATIAL: usize = 8;

/// The small JSON files of a `WanImageToVideoPipeline` checkpoint.
pub struct WanI2VConfigs {
    pub model_index: WanModelIndex,
    pub scheduler: WanScheduler,
    /// Whether `model_index.json` names an `image_encoder` (Wan2.1 I2V / FLF2V).
    pub has_image_encoder: bool,
    /// The transformer's `pos_embed_seq_len` is set: it takes a last image (FLF2V).
    pub takes_last_image: bool,
}

/// Read `model_index.json`, the scheduler config and `transformer/config.json` of `dir`.
///
/// # Errors
/// [`PipelineError::Load`] for a missing or unreadable file; [`PipelineError::Unsupported`] for
/// another class, `expand_timesteps` (TI2V), a `transformer_2` without `boundary_ratio`, or a
/// scheduler class the Wan pipelines do not run.
pub fn read_wan_i2v_configs(dir: &Path) -> Result<WanI2VConfigs, PipelineError> {
    let index_path = dir.join("model_index.json");
    let (model_index, _) = read_config::<WanModelIndex>(&index_path)?;
    if model_index.class_name != CLASS_NAME {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{}` is not a WanImageToVideoPipeline",
            index_path.display(),
            model_index.class_name
        )));
    }
    if model_index.expand_timesteps {
        return Err(PipelineError::Unsupported(format!(
            "{}: expand_timesteps (Wan2.2 TI2V) is not supported by this pipeline yet",
            index_path.display()
        )));
    }
    if model_index.has_transformer_2() != model_index.boundary_ratio.is_some() {
        return Err(PipelineError::Unsupported(format!(
            "{}: transformer_2 and boundary_ratio must come together (two experts)",
            index_path.display()
        )));
    }
    let has_image_encoder = matches!(
        model_index.components.get("image_encoder"),
        Some(serde_json::Value::Array(v)) if v.first().is_some_and(|x| !x.is_null())
    );
    #[derive(serde::Deserialize)]
    struct PosEmbed {
        #[serde(default)]
        pos_embed_seq_len: Option<usize>,
        #[serde(flatten)]
        _rest: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let (t, _) = read_config::<PosEmbed>(&component_dir(dir, "transformer")?.join("config.json"))?;
    Ok(WanI2VConfigs {
        scheduler: read_wan_scheduler(dir)?,
        model_index,
        has_image_encoder,
        takes_last_image: t.pos_embed_seq_len.is_some(),
    })
}

/// The request defaults of a `WanImageToVideoPipeline` checkpoint: diffusers' `__call__`
/// defaults (832×480, 81 frames, 50 steps, guidance 5.0, 512 prompt tokens), 16 fps, the
/// scheduler's flow shift and, with two experts, the checkpoint's `boundary_ratio`.
///
/// # Errors
/// As [`read_wan_i2v_configs`].
pub fn wan_i2v_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let c = read_wan_i2v_configs(dir)?;
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
    d.unsupported = [HELIOS_ONLY_FIELDS, V2V_ONLY_FIELDS].concat();
    d.whole_video = true;
    d.guidance_scale_2_follows = c.model_index.has_transformer_2();
    if !d.guidance_scale_2_follows {
        d.unsupported
            .extend(WAN_ONLY_FIELDS.iter().filter(|k| **k != "flow_shift"));
    }
    Ok(d)
}

/// The conditioning of `req` for a checkpoint that takes a last image or not
/// (`takes_last_image`: the transformer's `pos_embed_seq_len`): `(pixels, has_last_image)`.
/// Callers check it before loading anything, so a wrong input fails in one line.
///
/// # Errors
/// [`PipelineError::Unsupported`] naming the input: no image (`image`), a video (`video`), a
/// last image for a checkpoint without `pos_embed_seq_len` or none for one with it
/// (`last_image`: diffusers' FLF2V transformer cannot run on one image), pixels of another size.
pub fn check_i2v_inputs(
    takes_last_image: bool,
    req: &GenerationRequest,
) -> Result<(&ConditioningPixels, bool), PipelineError> {
    let (pixels, last) = match &req.conditioning {
        Conditioning::Image(p) => (p, false),
        Conditioning::FirstLast(p) => (p, true),
        Conditioning::None => {
            return Err(PipelineError::Unsupported(
                "image: WanImageToVideoPipeline needs an input image (--image / input_reference)"
                    .into(),
            ));
        }
        Conditioning::Video(_) => {
            return Err(PipelineError::Unsupported(
                "video: an image-to-video Wan checkpoint takes an image, not a video".into(),
            ));
        }
    };
    if last && !takes_last_image {
        return Err(PipelineError::Unsupported(
            "last_image: this checkpoint's transformer has no pos_embed_seq_len; only a first-last-frame (FLF2V) checkpoint takes a last image".into(),
        ));
    }
    if !last && takes_last_image {
        return Err(PipelineError::Unsupported(
            "last_image: this first-last-frame (FLF2V) checkpoint needs a last image as well (--last-image)".into(),
        ));
    }
    let (h, w) = (req.height as usize, req.width as usize);
    let want_frames = if last { 2 } else { 1 };
    if (pixels.height, pixels.width) != (h, w)
        || pixels.frames != want_frames
        || pixels.data.len() != 3 * pixels.frames * h * w
    {
        return Err(PipelineError::Unsupported(format!(
            "the conditioning input is {} frame(s) of {}x{}; the request needs {want_frames} of {w}x{h}",
            pixels.frames, pixels.width, pixels.height
        )));
    }
    Ok((pixels, last))
}

/// The CLIP image encoder and its processor (Wan2.1 I2V / FLF2V).
pub struct ImageEncoder<B: Backend> {
    pub image_processor: CLIPImageProcessor,
    pub image_encoder: CLIPVisionModel<B>,
}

/// The loaded `WanImageToVideoPipeline`.
pub struct WanImageToVideoPipeline<B: Backend> {
    pub model_index: WanModelIndex,
    /// `None` with [`TextEncoderResidency::OnDemand`].
    pub prompt_encoder: Option<PromptEncoder<B>>,
    /// `None` for Wan2.2 I2V (the transformer has no `image_dim`).
    pub image_encoder: Option<ImageEncoder<B>>,
    /// The (high-noise) expert.
    pub transformer: WanTransformer3DModel<B>,
    /// Wan2.2 I2V A14B: the low-noise expert.
    pub transformer_2: Option<WanTransformer3DModel<B>>,
    pub vae: AutoencoderKLWan<B>,
    pub scheduler: WanScheduler,
    dir: PathBuf,
    precision: Precision,
    device: B::Device,
}

impl<B: Backend> WanImageToVideoPipeline<B> {
    /// Load the checkpoint folder `dir` onto `device` (models in the dtypes of `precision`; the
    /// CLIP encoder in the transformer's), the text encoder only with
    /// [`TextEncoderResidency::Resident`].
    ///
    /// # Errors
    /// As [`read_wan_i2v_configs`]; [`PipelineError::Load`] naming a missing or broken file;
    /// [`PipelineError::Unsupported`] when the transformer's `image_dim` and the image encoder
    /// do not come together, or its `in_channels` is not 36.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        precision: Precision,
        text_encoder: TextEncoderResidency,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let WanI2VConfigs {
            model_index,
            scheduler,
            has_image_encoder,
            ..
        } = loading(progress, "scheduler", || read_wan_i2v_configs(dir))?;
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
        let transformer_2 = match model_index.has_transformer_2() {
            true => Some(loading(progress, "transformer", || {
                load_expert("transformer_2")
            })?),
            false => None,
        };
        for t in std::iter::once(&transformer).chain(&transformer_2) {
            if t.config().in_channels != 36 {
                return Err(PipelineError::Unsupported(format!(
                    "the transformer has in_channels {}; an image-to-video Wan transformer takes 36 (16 latent + 4 mask + 16 condition)",
                    t.config().in_channels
                )));
            }
        }
        if transformer.takes_image_embeds() != has_image_encoder {
            return Err(PipelineError::Unsupported(format!(
                "{}: the transformer {} image embeddings but model_index.json {} an image_encoder",
                dir.display(),
                if transformer.takes_image_embeds() {
                    "takes"
                } else {
                    "takes no"
                },
                if has_image_encoder {
                    "names"
                } else {
                    "names no"
                },
            )));
        }
        let image_encoder = match has_image_encoder {
            true => Some(loading(progress, "image_encoder", || {
                Ok::<_, PipelineError>(ImageEncoder {
                    image_processor: CLIPImageProcessor::load(&sub("image_processor")?)?,
                    image_encoder: CLIPVisionModel::load_with_dtype(
                        &sub("image_encoder")?,
                        device,
                        precision.transformer,
                    )?,
                })
            })?),
            false => None,
        };
        let vae = loading(progress, "vae", || {
            AutoencoderKLWan::load_with_dtype(&sub("vae")?, device, precision.vae)
        })?;
        Ok(Self {
            model_index,
            prompt_encoder,
            image_encoder,
            transformer,
            transformer_2,
            vae,
            scheduler,
            dir: dir.to_path_buf(),
            precision,
            device: device.clone(),
        })
    }

    /// Whether the transformer takes a last image (`pos_embed_seq_len`: FLF2V).
    pub fn takes_last_image(&self) -> bool {
        self.transformer.config().pos_embed_seq_len.is_some()
    }

    /// Generate the video of `req` (whose conditioning is the image, or first and last images),
    /// handing the decoded frames to `sink`; returns their number.
    ///
    /// # Errors
    /// [`PipelineError`]: no image, a last image for a non-FLF2V checkpoint, a missing noise
    /// draw, a sink failure, cancellation.
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

    /// The conditioning frames of `req`: `(pixels, has_last_image)` ([`check_i2v_inputs`]).
    fn images<'r>(
        &self,
        req: &'r GenerationRequest,
    ) -> Result<(&'r ConditioningPixels, bool), PipelineError> {
        check_i2v_inputs(self.takes_last_image(), req)
    }

    /// `encode_image`: CLIP `hidden_states[-2]` of each frame of `pixels`, `[frames, 1 + P, D]`
    /// (`None` for a transformer without `image_dim`).
    fn encode_image(&self, pixels: &ConditioningPixels) -> Option<Tensor<B, 3>> {
        let enc = self.image_encoder.as_ref()?;
        let mut data = Vec::new();
        let mut size = (0, 0);
        for f in 0..pixels.frames {
            let img = frame_to_rgb8(&pixels.data, pixels.frames, f, pixels.height, pixels.width);
            size = enc.image_processor.output_size(img.height(), img.width());
            data.extend(enc.image_processor.preprocess(&img));
        }
        let (h, w) = (size.0 as usize, size.1 as usize);
        let pixel_values = Tensor::<B, 4>::from_data(
            TensorData::new(data, [pixels.frames, 3, h, w]),
            (
                &self.device,
                enc.image_encoder.embeddings.class_embedding.val().dtype(),
            ),
        );
        Some(
            enc.image_encoder
                .penultimate_hidden_state(pixel_values)
                .cast(DType::F32),
        )
    }

    /// `prepare_latents`' condition `[1, 20, T, h, w]`: the mask and the normalised VAE mode of
    /// the condition video.
    fn condition(
        &self,
        pixels: &ConditioningPixels,
        last: bool,
        num_frames: usize,
    ) -> Tensor<B, 5> {
        let (h, w) = (pixels.height, pixels.width);
        let plane = h * w;
        let device = &self.device;
        // video_condition = [image, zeros(F − 1)] or [image, zeros(F − 2), last_image].
        let mut data = vec![0f32; 3 * num_frames * plane];
        for c in 0..3 {
            let src = |f: usize| &pixels.data[(c * pixels.frames + f) * plane..][..plane];
            data[(c * num_frames) * plane..][..plane].copy_from_slice(src(0));
            if last {
                data[(c * num_frames + num_frames - 1) * plane..][..plane].copy_from_slice(src(1));
            }
        }
        let video = Tensor::<B, 5>::from_data(
            TensorData::new(data, [1, 3, num_frames, h, w]),
            (device, DType::F32),
        );
        // retrieve_latents(sample_mode="argmax"): the mean.
        let (mode, _) = self.vae.encode(video);
        let cond = self.vae.normalize(mode.cast(DType::F32));
        let [_, _, t, lh, lw] = cond.dims();
        // mask_lat_size: 1 on the first latent frame (4 channels: the first frame repeated
        // `vae_scale_factor_temporal` times), 0 after; FLF2V: the last video frame is channel 3
        // of the last latent frame.
        let mut mask = vec![0f32; VAE_SCALE_FACTOR_TEMPORAL * t];
        for ch in 0..VAE_SCALE_FACTOR_TEMPORAL {
            mask[ch * t] = 1.0;
        }
        if last {
            mask[(VAE_SCALE_FACTOR_TEMPORAL - 1) * t + t - 1] = 1.0;
        }
        let mask = Tensor::<B, 5>::from_data(
            TensorData::new(mask, [1, VAE_SCALE_FACTOR_TEMPORAL, t, 1, 1]),
            (device, DType::F32),
        )
        .expand([1, VAE_SCALE_FACTOR_TEMPORAL, t, lh, lw]);
        Tensor::cat(vec![mask, cond], 1)
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
        let (pixels, last) = self.images(req)?;
        let device = &self.device;
        let num_frames = req.num_frames as usize;

        // 3. Image embeddings (Wan2.1): [first] or [first, last].
        let image_embeds = self.encode_image(pixels);

        // 4. Timesteps with the request's flow shift.
        let mut solver = self
            .scheduler
            .set_timesteps(req.num_inference_steps, req.flow_shift)
            .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
        let timesteps = solver.timesteps().to_vec();
        let boundary_timestep = self
            .model_index
            .boundary_ratio
            .map(|_| req.boundary_ratio * self.scheduler.num_train_timesteps() as f64);

        // Contexts per expert: [cond] or, under CFG, [cond, uncond], the image rows repeated
        // for each (diffusers passes the same image_embeds to both calls).
        let cfg_text = embeds
            .negative_prompt_embeds
            .map(|neg| Tensor::cat(vec![embeds.prompt_embeds.clone(), neg], 0));
        let guidance = |scale: f64| match cfg_text.is_some() {
            true => Guidance::Cfg { scale },
            false => Guidance::None,
        };
        let batch = if cfg_text.is_some() { 2 } else { 1 };
        let image = image_embeds.map(|e| Tensor::cat(vec![e; batch], 0));
        let experts: Vec<(&WanTransformer3DModel<B>, Guidance)> =
            std::iter::once((&self.transformer, guidance(req.guidance_scale)))
                .chain(
                    self.transformer_2
                        .iter()
                        .map(|t| (t, guidance(req.guidance_scale_2))),
                )
                .collect();
        let text = cfg_text.unwrap_or(embeds.prompt_embeds);
        let contexts: Vec<WanContext<B>> = experts
            .iter()
            .map(|(model, _)| {
                let img = match model.takes_image_embeds() {
                    true => image.clone(),
                    false => None,
                };
                model.context(text.clone(), img)
            })
            .collect();

        // 5. Initial latents and the condition.
        let latent_frames = (num_frames - 1) / VAE_SCALE_FACTOR_TEMPORAL + 1;
        let shape = [
            1,
            self.vae.config().z_dim,
            latent_frames,
            req.height as usize / VAE_SCALE_FACTOR_SPATIAL,
            req.width as usize / VAE_SCALE_FACTOR_SPATIAL,
        ];
        let draw = ctx.noise.standard_normal(LATENTS_DRAW, &shape)?;
        let mut latents =
            Tensor::<B, 5>::from_data(TensorData::new(draw, shape), (device, DType::F32));
        let condition = self.condition(pixels, last, num_frames);

        // 6. Denoising loop.
        let steps = timesteps.len();
        ctx.progress.event(Progress::ChunkStarted {
            chunk: 0,
            chunks: 1,
            steps,
            frames: num_frames,
        });
        let mut history = SolverHistory::new();
        for (i, &t) in timesteps.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
            let e = match boundary_timestep {
                Some(b) if t < b => 1,
                _ => 0,
            };
            let (model, g) = experts[e];
            let input = Tensor::cat(vec![latents.clone(), condition.clone()], 1);
            let context = &contexts[e];
            let batch_input = match context.batch {
                2 => Tensor::cat(vec![input.clone(), input], 0),
                _ => input,
            };
            let ts = vec![t as f32; context.batch];
            let cancel = ctx.cancel.clone();
            let out = model
                .forward_stoppable(batch_input, &ts, context, &|| cancel.is_cancelled())
                .ok_or(PipelineError::Cancelled)?
                .cast(DType::F32);
            let uncond = (context.batch == 2).then(|| out.clone().narrow(0, 1, 1));
            let v = g.apply(out.narrow(0, 0, 1), uncond, 0, i);
            let plan = solver.step_plan(i);
            latents = history.step(&plan, latents, v, combine::<B>);
            ctx.progress.event(Progress::Step {
                chunk: 0,
                stage: 0,
                step: i + 1,
                steps,
            });
        }

        // 7. Decode.
        ctx.progress.event(Progress::Decoding {
            chunk: 0,
            done: false,
        });
        let cancel = ctx.cancel.clone();
        let stop = || match cancel.is_cancelled() {
            true => Err(PipelineError::Cancelled),
            false => Ok(()),
        };
        let mut parts = Vec::new();
        self.vae
            .decode_streaming(self.vae.denormalize(latents), &stop, |_, frames| {
                stop()?;
                parts.push(frames);
                Ok(())
            })?;
        let video = Tensor::cat(parts, 2);
        ctx.progress.event(Progress::Decoding {
            chunk: 0,
            done: true,
        });
        let frames = postprocess(video, num_frames);
        let n = frames.frames;
        sink.push_frames(frames).map_err(PipelineError::Sink)?;
        ctx.progress.event(Progress::FramesReady {
            chunk: 0,
            frames: n,
        });
        Ok(n)
    }
}
