//! One typed request and one merge.
//!
//! [`RequestPatch`] has only optional fields; the CLI flags, presets, server config and HTTP bodies
//! each become a patch. [`resolve`] applies them in precedence order over the checkpoint's
//! [`ModelDefaults`] and checks the cross-field rules once, giving a [`GenerationRequest`] with no
//! `Option` where a default exists.

use serde::{Deserialize, Serialize};

pub use super::lora::{LoraSpec, Loras};

/// A bad request field; `param` names it (CLI flag / API field without dashes).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{param}`: {message}")]
pub struct RequestError {
    /// The offending field, as the API names it (`width`, `num_frames`, ...).
    pub param: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> RequestError {
    RequestError {
        param,
        message: message.into(),
    }
}

/// Declares every request field once, with its doc: the optional layer [`RequestPatch`], the
/// resolved [`GenerationRequest`], [`RequestPatch::KEYS`] and the per-field merge (as diffusers'
/// `register_to_config` makes one signature the schema). A new field is one line here.
macro_rules! request_fields {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty, )*) => {
        /// One layer of request settings; `None` means "not set here".
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RequestPatch {
            $( $(#[doc = $doc])* pub $name: Option<$ty>, )*
        }

        /// A fully resolved generation request: what `--print-request` prints, what a server
        /// job record stores and what the worker runs as stored. A key missing from the JSON
        /// takes its [`Default`] (Helios-Distilled's value, where every later feature is off),
        /// so job records written by an older omni, before a field existed, still load.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct GenerationRequest {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// Image-to-video or video-to-video input, already decoded and at the output size
            /// (the pipeline reads no files; the CLI and the server decode them). Not part of
            /// the JSON.
            #[serde(skip)]
            pub conditioning: Conditioning,
        }

        impl RequestPatch {
            /// Every key a patch accepts (TOML presets, `--extra-params`, HTTP `extra_params`).
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];
            /// The doc line(s) of each key of [`Self::KEYS`], in the same order (the server's
            /// `/v1/models` describes the knobs with them).
            pub const DOCS: &'static [&'static str] = &[$(concat!($($doc),*)),*];
        }

        /// Each field from the first layer that sets it, else from `template`.
        fn pick_fields(layers: &[RequestPatch], template: &GenerationRequest) -> GenerationRequest {
            GenerationRequest {
                $( $name: layers
                    .iter()
                    .find_map(|l| l.$name.clone())
                    .unwrap_or_else(|| template.$name.clone()), )*
                conditioning: Conditioning::None,
            }
        }
    };
}

request_fields! {
    /// What to generate (required, not blank).
    prompt: String,
    /// What to avoid; used only when `guidance_scale > 1` (empty when absent, as diffusers).
    negative_prompt: String,
    /// Output width in pixels; a multiple of 16·2^(stages−1) (64 for 3 stages).
    width: u32,
    /// Output height in pixels; a multiple of 16·2^(stages−1) (64 for 3 stages).
    height: u32,
    /// Requested frames; the pipeline makes `ceil(n/33)` chunks of 33 and trims to `4k+1`
    /// ([`GenerationRequest::output_frames`]).
    num_frames: u32,
    /// Frames per second of the MP4.
    fps: u32,
    /// Seed of the random draws.
    seed: u64,
    /// Classifier-free guidance scale; 1 disables CFG.
    guidance_scale: f64,
    /// Denoising steps per pyramid stage (Mid, Distilled).
    pyramid_num_inference_steps_list: Vec<usize>,
    /// Twice the steps on the first chunk (Distilled's DMD).
    is_amplify_first_chunk: bool,
    /// Latent frames of history `[long, mid, short]`.
    history_sizes: Vec<usize>,
    /// Latent frames per chunk (9 → 33 video frames).
    num_latent_frames_per_chunk: usize,
    /// Prompt tokens (UMT5), padded.
    max_sequence_length: usize,
    /// Denoising steps of the one-stage sampler (Helios-Base, `HeliosPipeline`).
    num_inference_steps: usize,
    /// Run the pyramid (stage 2) sampler: true for Mid/Distilled checkpoints, false for Base.
    is_enable_stage2: bool,
    /// Number of pyramid stages; must match the checkpoint's scheduler (1 for Base).
    pyramid_num_stages: usize,
    /// CFG-Zero* instead of standard CFG (the `is_cfg_zero_star` pipeline flag; Mid).
    use_cfg_zero_star: bool,
    /// CFG-Zero* zero-init of the first `zero_steps + 1` steps of pyramid stage 0.
    use_zero_init: bool,
    /// See `use_zero_init`.
    zero_steps: usize,
    /// Keep the first latent frame as the history anchor (only `true` is supported).
    keep_first_frame: bool,
    /// Take the anchor frame from the second chunk instead of the first.
    is_skip_first_chunk: bool,
    /// Wan2.2 two-expert checkpoints: the guidance scale of the low-noise expert
    /// (`transformer_2`); `guidance_scale` is the high-noise one's. Defaults to `guidance_scale`.
    guidance_scale_2: f64,
    /// Wan2.2 two-expert checkpoints: the experts switch where the timestep falls below
    /// `boundary_ratio · num_train_timesteps` (in (0, 1); the checkpoint's value by default).
    boundary_ratio: f64,
    /// Wan: the scheduler's flow shift (`s·σ / (1 + (s − 1)·σ)`); the checkpoint's by default.
    flow_shift: f64,
    /// Wan video-to-video (`WanVideoToVideoPipeline`): how far the input video is re-noised, in
    /// (0, 1]; the last `floor(num_inference_steps · strength)` steps run. Default 0.8.
    strength: f64,
    /// LoRA adapters merged into the transformer for this request only: an object
    /// `{name|lora_name|adapter, path|lora_path|local_path, scale|lora_scale, int_id|lora_int_id}`,
    /// a list of them (combined), or the JSON text of either. Server paths must lie in `lora_dirs`.
    lora: Loras,
    /// Insert RIFE frames between the decoded frames (vLLM-Omni's field); needs a RIFE model
    /// (`frame_interpolation_model_path`, `[postprocess] rife_model` or `--rife-model`).
    enable_frame_interpolation: bool,
    /// `n`: `2^n − 1` frames between each pair, `N` frames → `(N − 1)·2^n + 1`; 1..=4.
    frame_interpolation_exp: u32,
    /// RIFE's inference scale (flow resolution): 0.25, 0.5, 1, 2 or 4.
    frame_interpolation_scale: f64,
    /// The RIFE (4.22 lite, 4.22, 4.25 or 4.26) `flownet.pkl`; empty = the server's / CLI's configured model.
    frame_interpolation_model_path: String,
    /// Upscale the frames with Real-ESRGAN, after interpolation (vLLM-Omni / SGLang's field);
    /// needs a model (`upscale_model_path`, `[postprocess] upscale_model` or `--upscale-model`).
    enable_upscale: bool,
    /// The output scale, 2 or 4: the model's own, or 2 from a x4 model (its output averaged over
    /// 2x2 pixel blocks). Unset (0 before admission) = the model's own.
    upscale_factor: u32,
    /// The Real-ESRGAN `.pth` (RRDBNet or SRVGGNetCompact); empty = the configured model.
    upscale_model_path: String,
}

impl RequestPatch {
    /// A patch from vLLM-Omni-style `extra_params` JSON text (`--extra-params`).
    ///
    /// # Errors
    /// [`RequestError`] with `param = "extra_params"`: not JSON, not a JSON object, an unknown
    /// key or a value of the wrong type (the message lists the valid keys).
    pub fn from_extra_params(text: &str) -> Result<Self, RequestError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad("extra_params", format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(bad(
                "extra_params",
                format!(
                    "must be a JSON object like {{\"zero_steps\": 1}}, got {}",
                    json_kind(&value)
                ),
            ));
        }
        serde_json::from_value(value).map_err(|e| {
            bad(
                "extra_params",
                format!("{e}; valid keys: {}", Self::KEYS.join(", ")),
            )
        })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub use super::preset::{BUILTIN_PRESETS, Preset, PresetModel};

/// The defaults a checkpoint implies (diffusers `HeliosPyramidPipeline.__call__` defaults, with
/// the variant's own steps and guidance): the lowest layer of every request, as a complete
/// request (its `prompt` is empty) plus the pipeline class. Reads of its fields go to that
/// request (`defaults.width`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDefaults {
    /// The diffusers pipeline class of the checkpoint (`model_index.json` `_class_name`), e.g.
    /// `HeliosPyramidPipeline`; presets name it to refuse a checkpoint they do not fit.
    pub pipeline_class: String,
    /// Every field's default.
    pub request: GenerationRequest,
    /// Request fields this checkpoint cannot honour: setting one in any layer is an error
    /// naming it (a 400 from the server), never silently dropped.
    pub unsupported: Vec<&'static str>,
    /// The pipeline denoises the whole video at once (Wan): `num_frames` is rounded to `4k + 1`
    /// as diffusers does (`n // 4 · 4 + 1` when `n % 4 ≠ 1`) and one window covers it
    /// (`num_latent_frames_per_chunk = (n − 1)/4 + 1`), so [`GenerationRequest::output_frames`]
    /// is the video's length and [`GenerationRequest::num_chunks`] is 1.
    pub whole_video: bool,
    /// Wan2.2 two-expert checkpoints: `guidance_scale_2` follows `guidance_scale` unless a layer
    /// sets it (diffusers: `guidance_scale_2 = None` means "the same").
    pub guidance_scale_2_follows: bool,
    /// Width and height must be multiples of this many pixels when the model needs more than
    /// the pyramid rule (`0`: `16·2^(stages−1)`); Wan2.2 TI2V: 32 (the VAE's 16× times the
    /// transformer's 2×2 patches).
    pub size_multiple: u32,
    /// The checkpoint makes first-last-frame videos (Wan2.1 FLF2V: a `WanImageToVideoPipeline`
    /// whose transformer sets `pos_embed_seq_len`): it needs a last image besides the first
    /// (diffusers `last_image`; the server's `end_image`), and only it takes one.
    pub takes_last_image: bool,
    /// A text-to-video checkpoint that also runs image-to-video when given an image (Wan2.2
    /// TI2V: `WanPipeline` with `expand_timesteps`), so an image reference is not refused.
    pub image_to_video: bool,
}

/// The request fields only the Helios chunked pyramid pipelines read.
pub const HELIOS_ONLY_FIELDS: &[&str] = &[
    "pyramid_num_inference_steps_list",
    "is_amplify_first_chunk",
    "history_sizes",
    "num_latent_frames_per_chunk",
    "use_cfg_zero_star",
    "use_zero_init",
    "zero_steps",
    "keep_first_frame",
    "is_skip_first_chunk",
];

/// The request fields only Wan checkpoints read (`guidance_scale_2` and `boundary_ratio` only the
/// two-expert ones).
pub const WAN_ONLY_FIELDS: &[&str] = &["guidance_scale_2", "boundary_ratio", "flow_shift"];

/// The request fields only a video-to-video Wan checkpoint (`WanVideoToVideoPipeline`) reads.
pub const V2V_ONLY_FIELDS: &[&str] = &["strength"];

impl std::ops::Deref for ModelDefaults {
    type Target = GenerationRequest;

    fn deref(&self) -> &GenerationRequest {
        &self.request
    }
}

impl Default for GenerationRequest {
    /// Helios-Distilled's defaults ([`ModelDefaults::helios_distilled`]): every optional feature
    /// (LoRA, interpolation, upscaling, a second expert) off.
    fn default() -> Self {
        ModelDefaults::helios_distilled().request
    }
}

impl ModelDefaults {
    /// Helios-Distilled: 640x384 at 24 fps, 132 frames, pyramid steps [2, 2, 2], first chunk
    /// amplified, no CFG, history [16, 2, 1], 9 latent frames per chunk, 512 prompt tokens.
    pub fn helios_distilled() -> Self {
        Self {
            pipeline_class: "HeliosPyramidPipeline".into(),
            request: GenerationRequest {
                prompt: String::new(),
                negative_prompt: String::new(),
                width: 640,
                height: 384,
                num_frames: 132,
                fps: 24,
                seed: 0,
                guidance_scale: 1.0,
                pyramid_num_inference_steps_list: vec![2, 2, 2],
                is_amplify_first_chunk: true,
                history_sizes: vec![16, 2, 1],
                num_latent_frames_per_chunk: 9,
                max_sequence_length: 512,
                num_inference_steps: 50,
                is_enable_stage2: true,
                pyramid_num_stages: 3,
                use_cfg_zero_star: false,
                use_zero_init: true,
                zero_steps: 1,
                keep_first_frame: true,
                is_skip_first_chunk: false,
                guidance_scale_2: 1.0,
                boundary_ratio: 0.0,
                flow_shift: 1.0,
                strength: 0.8,
                lora: Loras::default(),
                enable_frame_interpolation: false,
                frame_interpolation_exp: 1,
                frame_interpolation_scale: 1.0,
                frame_interpolation_model_path: String::new(),
                enable_upscale: false,
                upscale_factor: 0,
                upscale_model_path: String::new(),
                conditioning: Conditioning::None,
            },
            unsupported: [WAN_ONLY_FIELDS, V2V_ONLY_FIELDS].concat(),
            whole_video: false,
            guidance_scale_2_follows: false,
            size_multiple: 0,
            takes_last_image: false,
            image_to_video: false,
        }
    }

    /// Helios-Mid: pyramid steps [20, 20, 20], CFG-Zero* 5.0 with zero-init of the first
    /// `zero_steps + 1 = 2` steps of stage 0, no amplified first chunk.
    pub fn helios_mid() -> Self {
        let mut d = Self::helios_distilled();
        let r = &mut d.request;
        r.guidance_scale = 5.0;
        r.pyramid_num_inference_steps_list = vec![20, 20, 20];
        r.is_amplify_first_chunk = false;
        r.use_cfg_zero_star = true;
        d
    }

    /// Helios-Base: one full-resolution stage, 50 UniPC steps, CFG 5.0 with the negative prompt.
    /// The pyramid steps list is not used (empty).
    pub fn helios_base() -> Self {
        let mut d = Self::helios_distilled();
        d.pipeline_class = "HeliosPipeline".into();
        let r = &mut d.request;
        r.guidance_scale = 5.0;
        r.pyramid_num_inference_steps_list = Vec::new();
        r.is_amplify_first_chunk = false;
        r.pyramid_num_stages = 1;
        r.is_enable_stage2 = false;
        d
    }
}

/// Decoded pixels of a conditioning input: `data` is `[3, frames, height, width]` row-major
/// `f32` in `[-1, 1]` (`2·v/255 − 1`, as diffusers' `VaeImageProcessor.preprocess`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConditioningPixels {
    pub data: Vec<f32>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl ConditioningPixels {
    /// From RGB8 frames, each interleaved `[height, width, 3]` row-major.
    ///
    /// # Panics
    /// If a frame does not hold `width·height·3` bytes.
    pub fn from_rgb8_frames<F: AsRef<[u8]>>(frames: &[F], width: usize, height: usize) -> Self {
        let plane = width * height;
        let n = frames.len();
        let mut data = vec![0f32; 3 * n * plane];
        for (f, frame) in frames.iter().enumerate() {
            let rgb = frame.as_ref();
            assert_eq!(
                rgb.len(),
                plane * 3,
                "RGB8 frame does not match {width}x{height}"
            );
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    data[(c * n + f) * plane + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
                }
            }
        }
        Self {
            data,
            frames: n,
            height,
            width,
        }
    }
}

/// What a generation is conditioned on besides the prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Conditioning {
    /// Text-to-video.
    #[default]
    None,
    /// Image-to-video: one frame.
    Image(ConditioningPixels),
    /// Video-to-video: the input video; the output continues it.
    Video(ConditioningPixels),
    /// First-last-frame-to-video (Wan2.1 FLF2V, diffusers `image` + `last_image`): two frames,
    /// the first and the last of the video.
    FirstLast(ConditioningPixels),
}

/// Where a conditioning image or video comes from.
#[derive(Debug, Clone, Copy)]
pub enum MediaSource<'a> {
    /// A file (messages name its path).
    File(&'a std::path::Path),
    /// An in-memory upload (messages call it "uploaded image" / "uploaded video").
    Bytes(&'a [u8]),
}

/// A conditioning input that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConditioningError {
    /// Not a decodable image / H.264 MP4 (the message names the file).
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    /// A video shorter than one chunk.
    #[error(
        "the video has {frames} frame(s); video-to-video needs at least {window} (one chunk of the model)"
    )]
    TooShort { frames: usize, window: usize },
}

impl Conditioning {
    /// Image-to-video: a PNG, JPEG or WebP stretched to `req`'s output size (Lanczos, as
    /// diffusers' `VaeImageProcessor`), one frame.
    ///
    /// # Errors
    /// [`ConditioningError::Media`] when the image cannot be read or decoded.
    pub fn from_image(
        src: MediaSource<'_>,
        req: &GenerationRequest,
    ) -> Result<Self, ConditioningError> {
        use crate::media::{load_image, load_image_bytes, to_video_tensor_data};
        let img = match src {
            MediaSource::File(path) => load_image(path)?,
            MediaSource::Bytes(bytes) => load_image_bytes(bytes)?,
        };
        Ok(Conditioning::Image(ConditioningPixels {
            data: to_video_tensor_data(&img, req.width, req.height)?,
            frames: 1,
            height: req.height as usize,
            width: req.width as usize,
        }))
    }

    /// First-last-frame-to-video: two images (PNG, JPEG or WebP) each stretched to `req`'s
    /// output size as [`from_image`](Self::from_image) does, as one two-frame
    /// [`Conditioning::FirstLast`].
    ///
    /// # Errors
    /// [`ConditioningError::Media`] when an image cannot be read or decoded.
    pub fn from_first_last(
        first: MediaSource<'_>,
        last: MediaSource<'_>,
        req: &GenerationRequest,
    ) -> Result<Self, ConditioningError> {
        let (Self::Image(a), Self::Image(b)) =
            (Self::from_image(first, req)?, Self::from_image(last, req)?)
        else {
            unreachable!("from_image makes an image")
        };
        let mut pixels = a;
        let plane = pixels.height * pixels.width;
        // [3, 1, H, W] + [3, 1, H, W] → [3, 2, H, W]: interleave per channel.
        let mut data = Vec::with_capacity(6 * plane);
        for c in 0..3 {
            data.extend_from_slice(&pixels.data[c * plane..(c + 1) * plane]);
            data.extend_from_slice(&b.data[c * plane..(c + 1) * plane]);
        }
        pixels.data = data;
        pixels.frames = 2;
        Ok(Self::FirstLast(pixels))
    }

    /// Video-to-video: an H.264 MP4 whose frames are stretched to `req`'s output size; it needs
    /// at least one window (`req.window_num_frames()`, 33 frames for Helios).
    ///
    /// # Errors
    /// [`ConditioningError::Media`] when the video cannot be read or decoded,
    /// [`ConditioningError::TooShort`] when it has fewer frames than one window.
    pub fn from_video(
        src: MediaSource<'_>,
        req: &GenerationRequest,
    ) -> Result<Self, ConditioningError> {
        use crate::media::{VideoReadOptions, read_video, read_video_bytes};
        let opts = VideoReadOptions::resized(req.width, req.height);
        let video = match src {
            MediaSource::File(path) => read_video(path, &opts)?,
            MediaSource::Bytes(bytes) => read_video_bytes(bytes, &opts)?,
        };
        let window = req.window_num_frames();
        if video.frames.len() < window {
            return Err(ConditioningError::TooShort {
                frames: video.frames.len(),
                window,
            });
        }
        Ok(Conditioning::Video(ConditioningPixels::from_rgb8_frames(
            &video.frames,
            req.width as usize,
            req.height as usize,
        )))
    }
}

impl GenerationRequest {
    /// Video frames per chunk: `(num_latent_frames_per_chunk − 1)·4 + 1` (33 for 9 latents).
    pub fn window_num_frames(&self) -> usize {
        (self.num_latent_frames_per_chunk - 1) * 4 + 1
    }
    /// Number of chunks: `max(1, ceil(num_frames / window))`.
    pub fn num_chunks(&self) -> usize {
        let w = self.window_num_frames();
        (self.num_frames as usize).div_ceil(w).max(1)
    }
    /// Frames the pipeline generates: `chunks·window` trimmed to `4k+1`, as diffusers does.
    pub fn output_frames(&self) -> usize {
        let generated = self.num_chunks() * self.window_num_frames();
        (generated - 1) / 4 * 4 + 1
    }
    /// Frames of the video: [`output_frames`](Self::output_frames), or `(N − 1)·2^exp + 1` with
    /// frame interpolation.
    pub fn video_frames(&self) -> usize {
        let n = self.output_frames();
        match self.enable_frame_interpolation {
            true => (n - 1) * (1 << self.frame_interpolation_exp) + 1,
            false => n,
        }
    }
    /// `(width, height)` of the video: the generated size, times `upscale_factor` with
    /// upscaling.
    pub fn video_size(&self) -> (u32, u32) {
        let f = match self.enable_upscale {
            true => self.upscale_factor.max(1),
            false => 1,
        };
        (self.width * f, self.height * f)
    }
}

/// Merge `layers` (highest precedence first) over `defaults` and validate.
///
/// # Errors
/// [`RequestError`] naming the field: blank prompt, a size that is not a multiple of
/// `16·2^(stages−1)`, zero frames or fps, a steps list of the wrong length or with zeros, a
/// steps knob the checkpoint's sampler does not have (`num_inference_steps` on a pyramid,
/// `pyramid_num_inference_steps_list` on Base), guidance outside 0..=20, a bad history size list.
pub fn resolve(
    layers: &[RequestPatch],
    defaults: &ModelDefaults,
) -> Result<GenerationRequest, RequestError> {
    check_unsupported(layers, defaults)?;
    let mut req = merge(layers, defaults)?;
    whole_video(layers, &mut req, defaults)?;
    check_sampler(layers, &req, defaults)?;
    check_sizes(&req, defaults)?;
    check_interpolation(layers, &mut req)?;
    check_upscale(layers, &req)?;
    for (enable, on, fields) in [
        (
            "enable_frame_interpolation",
            req.enable_frame_interpolation,
            &INTERPOLATION_FIELDS[..],
        ),
        ("enable_upscale", req.enable_upscale, &UPSCALE_FIELDS[..]),
    ] {
        check_enabled(layers, enable, on, fields)?;
    }
    Ok(req)
}

/// A field the checkpoint cannot honour, set in any layer, is an error naming it.
fn check_unsupported(
    layers: &[RequestPatch],
    defaults: &ModelDefaults,
) -> Result<(), RequestError> {
    for layer in layers {
        let serde_json::Value::Object(set) = serde_json::to_value(layer).unwrap_or_default() else {
            continue;
        };
        if let Some(key) = defaults
            .unsupported
            .iter()
            .find(|k| set.get(**k).is_some_and(|v| !v.is_null()))
        {
            return Err(bad(
                key,
                format!(
                    "this checkpoint ({}) cannot honour `{key}`; remove it",
                    defaults.pipeline_class
                ),
            ));
        }
    }
    Ok(())
}

/// The whole-video pipelines' (Wan) frame rounding and single window, the two-expert guidance
/// default and range checks of the Wan fields.
fn whole_video(
    layers: &[RequestPatch],
    req: &mut GenerationRequest,
    defaults: &ModelDefaults,
) -> Result<(), RequestError> {
    if !defaults.whole_video {
        return Ok(());
    }
    if req.num_frames == 0 {
        return Err(bad("num_frames", "must be at least 1"));
    }
    // diffusers WanPipeline: `num_frames // 4 * 4 + 1` unless `num_frames % 4 == 1`.
    if req.num_frames % 4 != 1 {
        req.num_frames = req.num_frames / 4 * 4 + 1;
    }
    req.num_latent_frames_per_chunk = (req.num_frames as usize - 1) / 4 + 1;
    if defaults.guidance_scale_2_follows && layers.iter().all(|l| l.guidance_scale_2.is_none()) {
        req.guidance_scale_2 = req.guidance_scale;
    }
    if layers.iter().any(|l| l.guidance_scale_2.is_some()) && req.guidance_scale <= 1.0 {
        // diffusers runs both experts without CFG then and ignores guidance_scale_2.
        return Err(bad(
            "guidance_scale_2",
            format!(
                "has no effect with guidance_scale {} (classifier-free guidance is off at <= 1); \
                 raise guidance_scale or remove guidance_scale_2",
                req.guidance_scale
            ),
        ));
    }
    if !(0.0..=20.0).contains(&req.guidance_scale_2) {
        return Err(bad(
            "guidance_scale_2",
            format!("{} is outside 0..=20", req.guidance_scale_2),
        ));
    }
    if defaults.guidance_scale_2_follows && !(req.boundary_ratio > 0.0 && req.boundary_ratio < 1.0)
    {
        return Err(bad(
            "boundary_ratio",
            format!(
                "{} is outside (0, 1) (the checkpoint's is {})",
                req.boundary_ratio, defaults.boundary_ratio
            ),
        ));
    }
    if !(req.flow_shift.is_finite() && req.flow_shift > 0.0 && req.flow_shift <= 100.0) {
        return Err(bad(
            "flow_shift",
            format!("{} is outside (0, 100]", req.flow_shift),
        ));
    }
    if !(req.strength > 0.0 && req.strength <= 1.0) {
        return Err(bad(
            "strength",
            format!("{} is outside (0, 1]", req.strength),
        ));
    }
    Ok(())
}

/// RIFE settings; with interpolation on and no layer setting `fps`, the output fps is the
/// checkpoint's times `2^exp` (vLLM-Omni multiplies its fps the same way), so the video keeps its
/// duration. An explicit `fps` (request, `default_request` or preset) is the output fps as given.
fn check_interpolation(
    layers: &[RequestPatch],
    req: &mut GenerationRequest,
) -> Result<(), RequestError> {
    if !req.enable_frame_interpolation {
        return Ok(());
    }
    if !(1..=4).contains(&req.frame_interpolation_exp) {
        return Err(bad(
            "frame_interpolation_exp",
            format!(
                "{} is outside 1..=4 (2^n − 1 frames between each pair)",
                req.frame_interpolation_exp
            ),
        ));
    }
    if !crate::postprocess::rife::SCALES.contains(&req.frame_interpolation_scale) {
        return Err(bad(
            "frame_interpolation_scale",
            format!(
                "{} is not one of 0.25, 0.5, 1, 2, 4",
                req.frame_interpolation_scale
            ),
        ));
    }
    if layers.iter().all(|l| l.fps.is_none()) {
        let fps = req.fps.saturating_mul(1 << req.frame_interpolation_exp);
        if fps > 240 {
            return Err(bad(
                "frame_interpolation_exp",
                format!(
                    "{} fps × 2^{} = {fps} fps is over 240; set `fps` for the output explicitly",
                    req.fps, req.frame_interpolation_exp
                ),
            ));
        }
        req.fps = fps;
    }
    Ok(())
}

/// The settings of frame interpolation, used only with `enable_frame_interpolation`.
pub const INTERPOLATION_FIELDS: [&str; 3] = [
    "frame_interpolation_exp",
    "frame_interpolation_scale",
    "frame_interpolation_model_path",
];

/// The settings of upscaling, used only with `enable_upscale`.
pub const UPSCALE_FIELDS: [&str; 2] = ["upscale_factor", "upscale_model_path"];

/// A layer that sets one of `fields` without setting `enable`, when the feature resolves off, is
/// an error naming the field: the setting would be silently ignored. A layer that sets `enable`
/// itself (false, with its settings: a remix of a stored request) turns the feature off
/// knowingly.
fn check_enabled(
    layers: &[RequestPatch],
    enable: &'static str,
    on: bool,
    fields: &[&'static str],
) -> Result<(), RequestError> {
    if on {
        return Ok(());
    }
    for layer in layers {
        let serde_json::Value::Object(set) = serde_json::to_value(layer).unwrap_or_default() else {
            continue;
        };
        let is_set = |k: &str| set.get(k).is_some_and(|v| !v.is_null());
        if is_set(enable) {
            continue;
        }
        if let Some(field) = fields.iter().find(|k| is_set(k)) {
            return Err(bad(
                field,
                format!(
                    "`{field}` has no effect without `{enable}: true`; set `{enable}` or remove `{field}`"
                ),
            ));
        }
    }
    Ok(())
}

/// Upscale settings: `upscale_factor`, where set, is 2 or 4 (whether the model can make it is
/// checked where the model is known); the upscale fields without `enable_upscale` are an error
/// naming them, never ignored.
fn check_upscale(layers: &[RequestPatch], req: &GenerationRequest) -> Result<(), RequestError> {
    if let Some(f) = layers.iter().find_map(|l| l.upscale_factor)
        && req.enable_upscale
        && f != 2
        && f != 4
    {
        return Err(bad("upscale_factor", format!("{f} is not 2 or 4")));
    }
    Ok(())
}

/// Each field from the first layer that sets it, else the checkpoint default; the prompt must
/// not be blank.
fn merge(
    layers: &[RequestPatch],
    defaults: &ModelDefaults,
) -> Result<GenerationRequest, RequestError> {
    let req = pick_fields(layers, &defaults.request);
    if req.prompt.trim().is_empty() {
        return Err(bad(
            "prompt",
            "the prompt is empty; pass the text to generate from",
        ));
    }
    Ok(req)
}

/// What a request that sets nothing resolves to under `layers` (e.g. `[default_request]` and a
/// preset) over the checkpoint's defaults: the `default`s a server documents. Its `prompt` is
/// whatever the layers set (usually empty).
pub fn defaults_under(layers: &[RequestPatch], defaults: &ModelDefaults) -> GenerationRequest {
    pick_fields(layers, &defaults.request)
}

/// The sampler knobs against the checkpoint: pyramid on/off and stage count as the checkpoint
/// has them, steps in range, and only the steps knob of the sampler the checkpoint runs.
fn check_sampler(
    layers: &[RequestPatch],
    req: &GenerationRequest,
    defaults: &ModelDefaults,
) -> Result<(), RequestError> {
    if req.is_enable_stage2 != defaults.is_enable_stage2 {
        return Err(bad(
            "is_enable_stage2",
            match defaults.is_enable_stage2 {
                true => {
                    "this checkpoint is a HeliosPyramidPipeline (Mid/Distilled): the pyramid (stage 2) cannot be turned off"
                }
                false => {
                    "this checkpoint is a HeliosPipeline (Base): it has no pyramid (stage 2) sampler"
                }
            },
        ));
    }
    if req.pyramid_num_stages != defaults.pyramid_num_stages {
        return Err(bad(
            "pyramid_num_stages",
            format!(
                "{} does not match the checkpoint's scheduler, which has {} stage(s)",
                req.pyramid_num_stages, defaults.pyramid_num_stages
            ),
        ));
    }
    if !req.keep_first_frame {
        return Err(bad(
            "keep_first_frame",
            "false is not supported (diffusers 0.42.1 fails on it too: its history split no longer sums to the buffer)",
        ));
    }
    if !(1..=200).contains(&req.num_inference_steps) {
        return Err(bad(
            "num_inference_steps",
            format!("{} is outside 1..=200", req.num_inference_steps),
        ));
    }
    let stages = defaults.pyramid_num_stages;
    if defaults.is_enable_stage2 && layers.iter().any(|l| l.num_inference_steps.is_some()) {
        return Err(bad(
            "num_inference_steps",
            format!(
                "this checkpoint ({}) runs a {stages}-stage pyramid: set the steps per stage \
                 with `pyramid_num_inference_steps_list` (e.g. [2, 2, 2]) instead",
                defaults.pipeline_class
            ),
        ));
    }
    if !defaults.is_enable_stage2
        && layers
            .iter()
            .any(|l| l.pyramid_num_inference_steps_list.is_some())
    {
        return Err(bad(
            "pyramid_num_inference_steps_list",
            format!(
                "this checkpoint ({}) has no pyramid: set `num_inference_steps` instead",
                defaults.pipeline_class
            ),
        ));
    }
    let steps = &req.pyramid_num_inference_steps_list;
    if req.is_enable_stage2 && (steps.len() != stages || steps.iter().any(|&s| s == 0 || s > 200)) {
        return Err(bad(
            "pyramid_num_inference_steps_list",
            format!("{steps:?} must list {stages} step counts, each in 1..=200"),
        ));
    }
    if !(0.0..=20.0).contains(&req.guidance_scale) {
        return Err(bad(
            "guidance_scale",
            format!("{} is outside 0..=20", req.guidance_scale),
        ));
    }
    Ok(())
}

/// Pixel, frame and history sizes.
fn check_sizes(req: &GenerationRequest, defaults: &ModelDefaults) -> Result<(), RequestError> {
    let pyramid = 16u32 << (defaults.pyramid_num_stages.saturating_sub(1));
    let multiple = pyramid.max(defaults.size_multiple);
    let reason = match multiple == pyramid {
        true => format!("the {}-stage pyramid", defaults.pyramid_num_stages),
        false => "the VAE's spatial compression times the 2x2 patches".into(),
    };
    for (param, v) in [("width", req.width), ("height", req.height)] {
        if v == 0 || v % multiple != 0 {
            return Err(bad(
                param,
                format!(
                    "{v} is not a positive multiple of {multiple} pixels (required by {reason}); try {}",
                    // Nearest multiple at or above, without overflowing (4294967295 → 4294967232).
                    ((v.max(1) as u64).div_ceil(multiple as u64) * multiple as u64)
                        .min((u32::MAX / multiple * multiple) as u64)
                ),
            ));
        }
    }
    if req.num_frames == 0 {
        return Err(bad("num_frames", "must be at least 1"));
    }
    if req.fps == 0 || req.fps > 240 {
        return Err(bad(
            "fps",
            format!("{} is outside 1..=240 frames per second", req.fps),
        ));
    }
    if req.history_sizes.len() != 3 || req.history_sizes.contains(&0) {
        return Err(bad(
            "history_sizes",
            format!(
                "{:?} must be three positive sizes [long, mid, short]",
                req.history_sizes
            ),
        ));
    }
    if req.num_latent_frames_per_chunk == 0 {
        return Err(bad("num_latent_frames_per_chunk", "must be at least 1"));
    }
    if req.max_sequence_length == 0 || req.max_sequence_length > 4096 {
        return Err(bad("max_sequence_length", "must be in 1..=4096 tokens"));
    }
    Ok(())
}

/// How much work one request may ask for: checked after [`resolve`], at admission by the server
/// (`[limits.budget]` of serve.toml) and before loading by `omni generate`, so a request that
/// would exhaust memory or run for days is a 400 / one-line error naming the field, never an
/// aborted process. The defaults fit a 640x384 Helios video of several minutes and the largest
/// frame the H.264 encoder takes (level 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkBudget {
    /// Most frames one request may ask for (`num_frames`, or `seconds · fps`).
    pub max_num_frames: u32,
    /// Longest side of a frame, pixels (H.264 level 5.2: 3840).
    pub max_long_side: u32,
    /// Shortest side of a frame, pixels (H.264 level 5.2: 2160).
    pub max_short_side: u32,
    /// Most latent frames the history may hold (`sum(history_sizes)`).
    pub max_history_frames: usize,
    /// Most latent frames per chunk (`num_latent_frames_per_chunk`).
    pub max_latent_frames_per_chunk: usize,
}

impl Default for WorkBudget {
    fn default() -> Self {
        Self {
            max_num_frames: 24 * 60 * 10,
            max_long_side: crate::media::mp4_out::MAX_LONG_SIDE,
            max_short_side: crate::media::mp4_out::MAX_SHORT_SIDE,
            max_history_frames: 256,
            max_latent_frames_per_chunk: 64,
        }
    }
}

impl WorkBudget {
    /// Whether `req` stays within the budget.
    ///
    /// # Errors
    /// [`RequestError`] naming the first field over its limit and the limit.
    pub fn check(&self, req: &GenerationRequest) -> Result<(), RequestError> {
        let over = |param: &'static str, what: String, limit: String| {
            Err(bad(
                param,
                format!("{what} is over this server's limit of {limit}"),
            ))
        };
        if req.num_frames > self.max_num_frames {
            return over(
                "num_frames",
                format!("{} frames", req.num_frames),
                format!("{} frames", self.max_num_frames),
            );
        }
        let (long, short) = (req.width.max(req.height), req.width.min(req.height));
        if long > self.max_long_side || short > self.max_short_side {
            let param = match (req.width >= req.height, long > self.max_long_side) {
                (true, true) | (false, false) => "width",
                _ => "height",
            };
            return over(
                param,
                format!("{}x{} pixels", req.width, req.height),
                format!(
                    "{}x{} (either orientation)",
                    self.max_long_side, self.max_short_side
                ),
            );
        }
        let history: usize = req.history_sizes.iter().sum();
        if history > self.max_history_frames {
            return over(
                "history_sizes",
                format!("{:?} ({history} latent frames)", req.history_sizes),
                format!("{} latent frames in all", self.max_history_frames),
            );
        }
        if req.num_latent_frames_per_chunk > self.max_latent_frames_per_chunk {
            return over(
                "num_latent_frames_per_chunk",
                format!("{} latent frames", req.num_latent_frames_per_chunk),
                format!("{}", self.max_latent_frames_per_chunk),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_request_from_before_a_field_existed_still_loads() {
        let mut want = ModelDefaults::helios_mid().request;
        want.prompt = "p".into();
        want.seed = 7;
        let mut v = serde_json::to_value(&want).unwrap();
        // What a record of an older omni lacks: the fields added since.
        for key in [
            "strength",
            "enable_upscale",
            "upscale_factor",
            "upscale_model_path",
        ] {
            assert!(v.as_object_mut().unwrap().remove(key).is_some(), "{key}");
        }
        let got: GenerationRequest = serde_json::from_value(v).unwrap();
        assert_eq!(got, want);
        // A wrong type is still an error.
        let mut v = serde_json::to_value(&want).unwrap();
        v["seed"] = serde_json::json!("seven");
        assert!(serde_json::from_value::<GenerationRequest>(v).is_err());
    }

    fn with_prompt() -> RequestPatch {
        RequestPatch {
            prompt: Some("a cat".into()),
            ..Default::default()
        }
    }

    #[test]
    fn earlier_layers_win_and_defaults_fill_the_rest() {
        let cli = RequestPatch {
            width: Some(128),
            ..with_prompt()
        };
        let preset = RequestPatch {
            width: Some(256),
            height: Some(192),
            ..Default::default()
        };
        let r = resolve(&[cli, preset], &ModelDefaults::helios_distilled()).unwrap();
        assert_eq!((r.width, r.height, r.fps), (128, 192, 24));
        assert_eq!(r.pyramid_num_inference_steps_list, vec![2, 2, 2]);
    }

    #[test]
    fn sizes_must_be_multiples_of_64_for_three_stages() {
        let p = RequestPatch {
            width: Some(100),
            ..with_prompt()
        };
        let e = resolve(&[p], &ModelDefaults::helios_distilled()).unwrap_err();
        assert_eq!(e.param, "width");
        assert!(e.message.contains("multiple of 64"), "{e}");
    }

    #[test]
    fn blank_prompt_is_rejected() {
        let p = RequestPatch {
            prompt: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&[p], &ModelDefaults::helios_distilled())
                .unwrap_err()
                .param,
            "prompt"
        );
    }

    #[test]
    fn the_work_budget_names_the_field_over_its_limit() {
        let budget = WorkBudget::default();
        let ok = resolve(&[with_prompt()], &ModelDefaults::helios_distilled()).unwrap();
        budget.check(&ok).unwrap();
        for (patch, param) in [
            (
                RequestPatch {
                    history_sizes: Some(vec![100000, 100000, 100000]),
                    ..with_prompt()
                },
                "history_sizes",
            ),
            (
                RequestPatch {
                    num_latent_frames_per_chunk: Some(1000000),
                    ..with_prompt()
                },
                "num_latent_frames_per_chunk",
            ),
            (
                RequestPatch {
                    num_frames: Some(1000000000),
                    ..with_prompt()
                },
                "num_frames",
            ),
            (
                RequestPatch {
                    width: Some(3840),
                    height: Some(2176),
                    ..with_prompt()
                },
                "height",
            ),
            (
                RequestPatch {
                    width: Some(99968),
                    height: Some(64),
                    ..with_prompt()
                },
                "width",
            ),
        ] {
            let req = resolve(&[patch], &ModelDefaults::helios_distilled()).unwrap();
            assert_eq!(budget.check(&req).unwrap_err().param, param);
        }
    }

    #[test]
    fn a_huge_width_suggests_a_real_multiple() {
        let p = RequestPatch {
            width: Some(u32::MAX),
            ..with_prompt()
        };
        let e = resolve(&[p], &ModelDefaults::helios_distilled()).unwrap_err();
        assert!(e.message.contains("try 4294967232"), "{e}");
    }

    #[test]
    fn output_frames_follow_diffusers_trimming() {
        let mut r = resolve(&[with_prompt()], &ModelDefaults::helios_distilled()).unwrap();
        for (asked, chunks, out) in [
            (1, 1, 33),
            (33, 1, 33),
            (66, 2, 65),
            (99, 3, 97),
            (132, 4, 129),
        ] {
            r.num_frames = asked;
            assert_eq!(
                (r.num_chunks(), r.output_frames()),
                (chunks, out),
                "num_frames {asked}"
            );
        }
    }
}
