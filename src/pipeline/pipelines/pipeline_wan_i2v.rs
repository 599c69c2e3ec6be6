//! Mirrors diffusers 0.42.1 `pipelines/wan/pipeline_wan_i2v.py` `WanImageToVideoPipeline`:
//! Wan2.1 image-to-video (CLIP image embeddings + condition latents + mask), first-last-frame
//! (FLF2V: `last_image`, the transformer's `pos_embed_seq_len`), Wan2.2 I2V A14B (no image
//! encoder, two experts switched at `boundary_ratio · num_train_timesteps`) and Wan2.2 TI2V-5B
//! image-to-video (`expand_timesteps`, config-driven as in diffusers: the image latent replaces
//! the first latent frame, whose tokens get timestep 0).
//!
//! A TI2V folder's `model_index.json` says `WanPipeline` (diffusers users load it with
//! `WanImageToVideoPipeline.from_pretrained` for I2V); omni's routing is "an image given to an
//! `expand_timesteps` checkpoint runs image-to-video": [`WanPipeline`](super::pipeline_wan::WanPipeline)
//! hands such a request to this class over its own modules, and [`read_wan_i2v_configs`] accepts
//! the folder too.
//!
//! Steps, numbered as in `__call__`:
//! 1. check inputs ([`crate::pipeline::request::resolve`] already did; the image is required
//!    here, and `last_image` only for a transformer with `pos_embed_seq_len`);
//! 3. encode the prompt ([`PromptEncoder`], shared with `WanPipeline` and Helios) and, when the
//!    transformer has `image_dim` (Wan2.1), the image(s) with the CLIP vision tower's
//!    penultimate hidden state ([`CLIPVisionModel::penultimate_hidden_state`] after
//!    [`CLIPImageProcessor::preprocess`]);
//! 4. `scheduler.set_timesteps(num_inference_steps)` with the request's `flow_shift`;
//! 5. `prepare_latents`: the one random draw `latents` `[1, z_dim, T, h, w]`; the condition video
//!    `[image, 0 × (F − 1)]` (FLF2V `[image, 0 × (F − 2), last_image]`) encoded by the VAE
//!    (`latent_dist.mode()`, no draw) and normalised; the mask `[1, 4, T, h, w]` (1 on latent
//!    frame 0; FLF2V also channel 3 of the last latent frame); `condition = cat([mask, cond])`.
//!    TI2V: the image alone encoded (`[1, 48, 1, h, w]`) and `first_frame_mask` `[1, 1, T, h, w]`
//!    (0 on latent frame 0);
//! 6. per step ([`WanDenoise`], the loop all Wan pipelines share): `cat([latents, condition], 1)`
//!    `[1, 36, T, h, w]` (TI2V: `(1 − mask) · condition + mask · latents`, per-token timesteps
//!    `mask[0][0][:, ::2, ::2] · t`) through the expert of the timestep with its guidance (one
//!    batch-of-two call under CFG), the scheduler step;
//! 7. TI2V: the blend once more; de-normalise and decode ([`decode_to_sink`]).
//!
//! Deliberate divergences (pinned by `tests/pipeline_wan_i2v.rs`, ≥ 40 dB PSNR of the decoded
//! frames against diffusers with the same draws):
//! - CLIP sees the image as the pipeline holds it, already stretched to the output size
//!   (diffusers' processor resizes the caller's original image); identical when the image has
//!   the output size, as in the tests;
//! - cross-attention keys/values of prompt and image are computed once per request per expert
//!   ([`WanTransformer3DModel::context`]); guidance in f32 (as `WanPipeline`).
//!
//! Pinned for TI2V by `tests/wan_ti2v.rs` (`reference/pipeline_wan_ti2v_i2v.safetensors`).
//!
//! Memory: every model of this class stays resident; a TI2V image request run through
//! `WanPipeline` shares that pipeline's modules (no second copy).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pipeline::checkpoint::{component_dir, read_config};
use crate::pipeline::error::PipelineError;
use crate::pipeline::image_processing_clip::{CLIPImageProcessor, frame_to_rgb8};
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::models::clip_vision_model::CLIPVisionModel;
use crate::pipeline::models::transformer_wan::WanTransformer3DModel;
use crate::pipeline::precision::Precision;
use crate::pipeline::progress::{NoProgress, ProgressSink, loading};
use crate::pipeline::request::{
    Conditioning, ConditioningPixels, GenerationRequest, HELIOS_ONLY_FIELDS, ModelDefaults,
    V2V_ONLY_FIELDS, WAN_ONLY_FIELDS,
};

use super::pipeline_helios_pyramid::RunContext;
use super::pipeline_output::FrameSink;
use super::pipeline_wan::{
    self, Resident, WanDenoise, WanModelIndex, WanScheduler, decode_to_sink, read_wan_scheduler,
    vae_scale_factor_spatial,
};
use super::prompt_encoder::{PromptEmbeds, PromptEncoder, TextEncoderResidency};

/// `model_index.json` `_class_name`.
pub const CLASS_NAME: &str = "WanImageToVideoPipeline";

/// The name of the initial-latents draw (the pipeline's only one; the VAE encode takes the mode).
pub const LATENTS_DRAW: &str = "latents";

/// `vae_scale_factor_temporal` of the Wan2.1 and Wan2.2 VAEs.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;

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
/// another class (a `WanPipeline` folder only with `expand_timesteps`: Wan2.2 TI2V), a
/// `transformer_2` without `boundary_ratio`, or a scheduler class the Wan pipelines do not run.
pub fn read_wan_i2v_configs(dir: &Path) -> Result<WanI2VConfigs, PipelineError> {
    let index_path = dir.join("model_index.json");
    let (model_index, _) = read_config::<WanModelIndex>(&index_path)?;
    // A Wan2.2 TI2V folder says `WanPipeline`; with `expand_timesteps` this class runs it too
    // (diffusers: `WanImageToVideoPipeline.from_pretrained(ti2v_folder)`).
    let ti2v = model_index.class_name == pipeline_wan::CLASS_NAME && model_index.expand_timesteps;
    if model_index.class_name != CLASS_NAME && !ti2v {
        return Err(PipelineError::Unsupported(format!(
            "{}: `{}` is not a WanImageToVideoPipeline (nor a Wan2.2 TI2V WanPipeline with expand_timesteps)",
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
/// scheduler's flow shift and, with two experts, the checkpoint's `boundary_ratio`; a Wan2.2
/// TI2V folder's are [`pipeline_wan::wan_defaults`] (the same checkpoint runs both tasks).
///
/// # Errors
/// As [`read_wan_i2v_configs`].
pub fn wan_i2v_defaults(dir: &Path) -> Result<ModelDefaults, PipelineError> {
    let c = read_wan_i2v_configs(dir)?;
    if c.model_index.expand_timesteps {
        // Wan2.2 TI2V: one checkpoint for both tasks, its defaults are `WanPipeline`'s.
        return pipeline_wan::wan_defaults(dir);
    }
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
    d.takes_last_image = c.takes_last_image;
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
    /// do not come together, or its `in_channels` is not 36 (the VAE's `z_dim` with
    /// `expand_timesteps`).
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
        // Wan2.1 / Wan2.2 A14B: latents + mask + condition on channels; TI2V: the latents.
        let (want, what) = match model_index.expand_timesteps {
            false => (36, "36 (16 latent + 4 mask + 16 condition)"),
            true => (vae.config().z_dim, "the VAE's z_dim (expand_timesteps)"),
        };
        for t in std::iter::once(&transformer).chain(&transformer_2) {
            if t.config().in_channels != want {
                return Err(PipelineError::Unsupported(format!(
                    "the transformer has in_channels {}; this image-to-video Wan transformer takes {what}",
                    t.config().in_channels
                )));
            }
        }
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

    /// The Wan2.2 TI2V image-to-video pipeline over modules already loaded for `WanPipeline`
    /// (no image encoder, one expert; the prompt is encoded by the caller:
    /// [`call_with_embeds`](Self::call_with_embeds)).
    pub(crate) fn from_parts(
        model_index: WanModelIndex,
        transformer: WanTransformer3DModel<B>,
        vae: AutoencoderKLWan<B>,
        scheduler: WanScheduler,
        dir: &Path,
        precision: Precision,
        device: &B::Device,
    ) -> Self {
        Self {
            model_index,
            prompt_encoder: None,
            image_encoder: None,
            transformer,
            transformer_2: None,
            vae,
            scheduler,
            dir: dir.to_path_buf(),
            precision,
            device: device.clone(),
        }
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

    /// `prepare_latents` with `expand_timesteps` (Wan2.2 TI2V): the image alone encoded by the VAE
    /// (`latent_dist.mode()`) and normalised, `condition` `[1, z_dim, 1, h, w]`, and
    /// `first_frame_mask` `[1, 1, T, h, w]` (0 on latent frame 0, 1 after). Returns
    /// `((1 − mask) · condition, mask)`, both expanded to `shape` `[1, z_dim, T, h, w]`, and the
    /// per-token timestep mask `mask[0][0][:, ::2, ::2].flatten()`.
    fn first_frame_condition(
        &self,
        pixels: &ConditioningPixels,
        shape: [usize; 5],
    ) -> (Tensor<B, 5>, Tensor<B, 5>, Vec<f32>) {
        let [_, z, t, lh, lw] = shape;
        let device = &self.device;
        let plane = pixels.height * pixels.width;
        let mut image = Vec::with_capacity(3 * plane);
        for c in 0..3 {
            image.extend_from_slice(&pixels.data[c * pixels.frames * plane..][..plane]);
        }
        let image = Tensor::<B, 5>::from_data(
            TensorData::new(image, [1, 3, 1, pixels.height, pixels.width]),
            (device, DType::F32),
        );
        // retrieve_latents(sample_mode="argmax"): the mean.
        let (mode, _) = self.vae.encode(image);
        let condition = self.vae.normalize(mode.cast(DType::F32)).expand(shape);
        let frame_mask = |first: f32, rest: f32| {
            let data: Vec<f32> = (0..t).map(|f| if f == 0 { first } else { rest }).collect();
            Tensor::<B, 5>::from_data(TensorData::new(data, [1, 1, t, 1, 1]), (device, DType::F32))
                .expand([1, z, t, lh, lw])
        };
        let keep = frame_mask(1.0, 0.0) * condition;
        let tokens = (lh / 2) * (lw / 2);
        let timestep_mask = (0..t * tokens)
            .map(|k| if k < tokens { 0.0 } else { 1.0 })
            .collect();
        (keep, frame_mask(0.0, 1.0), timestep_mask)
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
        let solver = self
            .scheduler
            .set_timesteps(req.num_inference_steps, req.flow_shift)
            .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
        let boundary_timestep = self
            .model_index
            .boundary_ratio
            .map(|_| req.boundary_ratio * self.scheduler.num_train_timesteps() as f64);

        // 5. Initial latents (and, below, the condition).
        let latent_frames = (num_frames - 1) / VAE_SCALE_FACTOR_TEMPORAL + 1;
        let spatial = vae_scale_factor_spatial(&self.vae);
        let shape = [
            1,
            self.vae.config().z_dim,
            latent_frames,
            req.height as usize / spatial,
            req.width as usize / spatial,
        ];
        let draw = ctx.noise.standard_normal(LATENTS_DRAW, &shape)?;
        let latents = Tensor::<B, 5>::from_data(TensorData::new(draw, shape), (device, DType::F32));

        // 6. Denoising loop.
        let denoise = WanDenoise {
            solver,
            begin_at: 0,
            boundary_timestep,
            guidance_scales: [req.guidance_scale, req.guidance_scale_2],
            embeds,
            image_embeds,
            timestep_mask: None,
            num_frames,
        };
        let mut experts = Resident(
            std::iter::once(&self.transformer)
                .chain(&self.transformer_2)
                .collect(),
        );
        let latents = match self.model_index.expand_timesteps {
            // Wan2.2 TI2V: `latent_model_input = (1 − mask) · condition + mask · latents`, the
            // first frame's tokens at timestep 0; the same blend once more after the loop.
            true => {
                let (keep, mask, timestep_mask) = self.first_frame_condition(pixels, shape);
                let blend = |l: &Tensor<B, 5>| keep.clone() + mask.clone() * l.clone();
                let denoise = WanDenoise {
                    timestep_mask: Some(timestep_mask),
                    ..denoise
                };
                blend(&denoise.run(&mut experts, latents, blend, ctx)?)
            }
            // `latent_model_input = cat([latents, condition], 1)`, `[1, 36, T, h, w]`.
            false => {
                let condition = self.condition(pixels, last, num_frames);
                let input = |l: &Tensor<B, 5>| Tensor::cat(vec![l.clone(), condition.clone()], 1);
                denoise.run(&mut experts, latents, input, ctx)?
            }
        };

        // 7. Decode.
        decode_to_sink(&self.vae, latents, num_frames, ctx, sink)
    }
}
