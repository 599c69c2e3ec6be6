//! The create-video body (shared/reference/api.md §5.3) as one typed struct,
//! [`CreateVideoBody`], converted by one exhaustive function into request layers, then one
//! [`resolve`] with `[default_request]`, the preset and the checkpoint. The job stores the
//! resolved [`GenerationRequest`] and the worker runs it as stored: one resolve per job.
//!
//! Values may be JSON numbers or strings (forms send strings). Aliases: `cfg_scale` →
//! `guidance_scale`, `step` → `num_inference_steps` (errors name the alias the client sent),
//! `video_params.{width,height,num_frames,fps}` below the top-level fields. `size` (`WxH`)
//! overrides width/height. `num_frames` absent and `seconds` set → `num_frames = seconds · fps`.
//! `extra_params` (object, or its JSON text) is a layer of any [`RequestPatch`] key below the
//! top-level fields. Unknown fields are ignored. The image / video reference (`input_reference`,
//! `image_reference`, `start_image`, `reference_url`) and the last image of a first-last-frame
//! video (`end_image`, `image_reference[1]`) are taken out here, checked against the checkpoint's
//! pipeline class, and decoded by the caller ([`super::reference`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::body::Fields;
use super::error::ApiError;
use super::reference::{self, END_IMAGE, RawReference, RefKind, References};
use crate::pipeline::request::{
    GenerationRequest, Loras, ModelDefaults, RequestError, RequestPatch, WorkBudget, resolve,
};

/// An admitted create request.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub request: GenerationRequest,
    /// The model name to echo.
    pub model: String,
    /// `seconds` as the response shows it.
    pub seconds: String,
    /// The image / video reference, not decoded yet (see [`super::reference`]).
    pub reference: Option<RawReference>,
    /// First-last-frame-to-video (a checkpoint that [takes a last
    /// image](ModelDefaults::takes_last_image)): the last frame, not decoded yet.
    pub last_reference: Option<RawReference>,
    /// Where the job's webhook events go (set by the server from `webhook_url` and
    /// `[webhooks]`, see [`super::webhooks::Webhooks::target`]).
    pub webhook_url: Option<String>,
}

/// What admission needs from the server: the served names and the lower request layers.
pub struct AdmitContext<'a> {
    /// The served model name (echoed when the body names none).
    pub served: &'a str,
    /// Whether a requested `model` is the served one or an alias.
    pub serves: &'a dyn Fn(&str) -> bool,
    /// `[default_request]` of serve.toml, then the preset: below the body, above the checkpoint.
    pub lower_layers: &'a [RequestPatch],
    pub defaults: &'a ModelDefaults,
    /// The most work one request may ask for (`[limits.budget]`).
    pub budget: &'a WorkBudget,
    pub max_upload_bytes: usize,
    /// Which LoRA adapters may be used.
    pub lora: &'a super::lora::LoraPolicy,
    /// The RIFE model(s).
    pub postprocess: &'a super::postprocess::PostprocessSection,
}

/// The create-video fields omni reads (OpenAI, vLLM-Omni, FastVideo, LocalAI spellings).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateVideoBody {
    #[serde(deserialize_with = "lenient::string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub prompt: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub negative_prompt: Option<String>,
    #[serde(deserialize_with = "lenient::positive")]
    pub width: Option<u32>,
    #[serde(deserialize_with = "lenient::positive")]
    pub height: Option<u32>,
    /// `WxH`; overrides width/height, snapped to the model's pixel grid.
    #[serde(deserialize_with = "lenient::string")]
    pub size: Option<String>,
    #[serde(deserialize_with = "lenient::positive")]
    pub num_frames: Option<u32>,
    #[serde(deserialize_with = "lenient::positive")]
    pub fps: Option<u32>,
    /// Duration in seconds (≥ 1); gives `num_frames = seconds · fps` when no frames are asked.
    #[serde(deserialize_with = "lenient::positive")]
    pub seconds: Option<u32>,
    #[serde(deserialize_with = "lenient::integer")]
    pub seed: Option<u64>,
    #[serde(deserialize_with = "lenient::float")]
    pub guidance_scale: Option<f64>,
    /// LocalAI's name of `guidance_scale`.
    #[serde(deserialize_with = "lenient::float")]
    pub cfg_scale: Option<f64>,
    #[serde(deserialize_with = "lenient::integer")]
    pub num_inference_steps: Option<usize>,
    /// LocalAI's name of `num_inference_steps`.
    #[serde(deserialize_with = "lenient::integer")]
    pub step: Option<usize>,
    /// Wan2.2 two-expert checkpoints: the low-noise expert's guidance scale (vLLM-Omni,
    /// FastVideo, SGLang); a 400 for a model that cannot honour it.
    #[serde(deserialize_with = "lenient::float")]
    pub guidance_scale_2: Option<f64>,
    /// Wan2.2 two-expert checkpoints: the expert switch point (a 400 elsewhere).
    #[serde(deserialize_with = "lenient::float")]
    pub boundary_ratio: Option<f64>,
    /// Wan: the scheduler's flow shift (a 400 for a model that cannot honour it).
    #[serde(deserialize_with = "lenient::float")]
    pub flow_shift: Option<f64>,
    /// Model knobs: any [`RequestPatch`] key (object, or its JSON text from a form).
    pub extra_params: Option<RequestPatch>,
    /// vLLM-Omni / FastVideo `video_params` (object, or its JSON text).
    pub video_params: Option<VideoParams>,
    /// Last-frame conditioning (LocalAI): the last image of a first-last-frame video, read by
    /// [`reference::extract`] (a 400 naming it for a checkpoint that takes no last image).
    pub end_image: Option<Value>,
    /// vLLM-Omni `lora`: an adapter object, a list of them, or the JSON text of either.
    pub lora: Option<Loras>,
    /// vLLM-Omni frame interpolation (RIFE).
    #[serde(deserialize_with = "lenient::boolean")]
    pub enable_frame_interpolation: Option<bool>,
    #[serde(deserialize_with = "lenient::integer")]
    pub frame_interpolation_exp: Option<u32>,
    #[serde(deserialize_with = "lenient::float")]
    pub frame_interpolation_scale: Option<f64>,
    #[serde(deserialize_with = "lenient::string")]
    pub frame_interpolation_model_path: Option<String>,
    /// vLLM-Omni / SGLang upscaling (Real-ESRGAN), after interpolation.
    #[serde(deserialize_with = "lenient::boolean")]
    pub enable_upscale: Option<bool>,
    /// 2 or 4 (the model's own scale when absent).
    #[serde(deserialize_with = "lenient::integer")]
    pub upscale_factor: Option<u32>,
    /// A Real-ESRGAN `.pth`: the server's `upscale_model` or one inside its `model_dirs`.
    #[serde(deserialize_with = "lenient::string")]
    pub upscale_model_path: Option<String>,
}

/// `video_params`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VideoParams {
    #[serde(deserialize_with = "lenient::positive")]
    pub width: Option<u32>,
    #[serde(deserialize_with = "lenient::positive")]
    pub height: Option<u32>,
    #[serde(deserialize_with = "lenient::positive")]
    pub num_frames: Option<u32>,
    #[serde(deserialize_with = "lenient::positive")]
    pub fps: Option<u32>,
}

impl CreateVideoBody {
    /// The typed body of `fields`.
    ///
    /// # Errors
    /// 400 naming the field (`video_params.width` for nested ones) whose value has the wrong
    /// type or range.
    pub fn from_fields(fields: &Fields) -> Result<Self, ApiError> {
        let mut map = fields.map.clone();
        // Objects may come as their JSON text (vLLM-Omni forms).
        for key in ["extra_params", "video_params"] {
            let value = match map.get(key) {
                Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                    .map_err(|e| ApiError::invalid(key, format!("not valid JSON: {e}")))?,
                Some(v) => v.clone(),
                None => continue,
            };
            if !(value.is_object() || value.is_null()) {
                return Err(ApiError::invalid(key, "must be a JSON object"));
            }
            map.insert(key.to_string(), value);
        }
        serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
            // `extra_params` keys are model knobs, not API fields: the field is `extra_params`.
            let param = match e.path().to_string() {
                p if p.starts_with("extra_params") => "extra_params".to_string(),
                p => p,
            };
            ApiError::invalid(&param, e.into_inner().to_string())
        })
    }

    /// The request layers of the body (top-level fields, then `extra_params`), with the alias
    /// each renamed field arrived under (so errors name what the client sent).
    ///
    /// # Errors
    /// 400 for a blank prompt, a bad `size`.
    fn layers(self, defaults: &ModelDefaults) -> Result<BodyLayers, ApiError> {
        let Self {
            model,
            prompt,
            negative_prompt,
            width,
            height,
            size,
            num_frames,
            fps,
            seconds,
            seed,
            guidance_scale,
            cfg_scale,
            num_inference_steps,
            step,
            guidance_scale_2,
            boundary_ratio,
            flow_shift,
            extra_params,
            video_params,
            end_image: _,
            lora,
            enable_frame_interpolation,
            frame_interpolation_exp,
            frame_interpolation_scale,
            frame_interpolation_model_path,
            enable_upscale,
            upscale_factor,
            upscale_model_path,
        } = self;
        if prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` is required and must not be blank",
            ));
        }
        let vp = video_params.unwrap_or_default();
        let (mut width, mut height) = (width.or(vp.width), height.or(vp.height));
        if let Some(size) = size {
            // `size` comes from clients that know only their own sizes (the openai SDK's
            // "720x1280"), so it is snapped to the nearest multiple of the model's pixel grid;
            // explicit width/height must already be on it.
            let (w, h) = parse_size(&size)?;
            let grid = 16u32 << defaults.pyramid_num_stages.saturating_sub(1);
            (width, height) = (Some(snap(w, grid)), Some(snap(h, grid)));
        }
        // An alias and its field both set to different values: which one was meant is unknown.
        for (field, alias, differ) in [
            (
                "guidance_scale",
                "cfg_scale",
                guidance_scale.zip(cfg_scale).is_some_and(|(g, c)| g != c),
            ),
            (
                "num_inference_steps",
                "step",
                num_inference_steps.zip(step).is_some_and(|(n, s)| n != s),
            ),
        ] {
            if differ {
                return Err(ApiError::invalid(
                    alias,
                    format!(
                        "`{alias}` is another name of `{field}` and the two disagree; send one of them"
                    ),
                ));
            }
        }
        let mut aliases = Vec::new();
        if guidance_scale.is_none() && cfg_scale.is_some() {
            aliases.push(("guidance_scale", "cfg_scale"));
        }
        if num_inference_steps.is_none() && step.is_some() {
            aliases.push(("num_inference_steps", "step"));
        }
        let top = RequestPatch {
            prompt,
            negative_prompt,
            width,
            height,
            num_frames: num_frames.or(vp.num_frames),
            fps: fps.or(vp.fps),
            seed,
            guidance_scale: guidance_scale.or(cfg_scale),
            num_inference_steps: num_inference_steps.or(step),
            guidance_scale_2,
            boundary_ratio,
            flow_shift,
            lora: lora.filter(|l| !l.is_empty()),
            enable_frame_interpolation,
            frame_interpolation_exp,
            frame_interpolation_scale,
            frame_interpolation_model_path,
            enable_upscale,
            upscale_factor,
            upscale_model_path,
            ..Default::default()
        };
        Ok(BodyLayers {
            model,
            seconds,
            layers: vec![top, extra_params.unwrap_or_default()],
            aliases,
        })
    }
}

struct BodyLayers {
    model: Option<String>,
    seconds: Option<u32>,
    /// The top-level fields, then `extra_params`.
    layers: Vec<RequestPatch>,
    /// (canonical field, the alias the client used).
    aliases: Vec<(&'static str, &'static str)>,
}

/// A Wan checkpoint's pipeline class says whether it takes a reference: image-to-video needs an
/// image (and a first-last-frame checkpoint a last image too), video-to-video a video,
/// text-to-video none unless it also runs image-to-video (Wan2.2 TI2V:
/// [`ModelDefaults::image_to_video`], an image only) (Helios takes an image, a video or none). A
/// mismatch is a 400 naming the reference field, before a job exists; a reference whose kind the
/// field or data URL does not say is checked once decoded ([`check_kind_fits`]).
///
/// # Errors
/// 400 naming `input_reference` (missing, or of the wrong kind), the field the reference came
/// in (not taken), or the last image's field (`end_image`: missing, not taken, or without a
/// first image).
fn check_reference_fits(defaults: &ModelDefaults, refs: &References) -> Result<(), ApiError> {
    use crate::pipeline::pipelines::{pipeline_wan, pipeline_wan_i2v, pipeline_wan_video2video};
    let class = defaults.pipeline_class.as_str();
    let needs = match class {
        pipeline_wan_i2v::CLASS_NAME => Some("an image"),
        pipeline_wan_video2video::CLASS_NAME => Some("an H.264 MP4 video"),
        _ => None,
    };
    // The last image first, so that one sent without a first image names `end_image` rather
    // than the missing `input_reference`.
    match (&refs.first, &refs.last) {
        (_, Some(l)) if !defaults.takes_last_image => {
            return Err(ApiError::invalid(
                &l.param,
                format!(
                    "`{}`: this {class} checkpoint takes no last image; only a first-last-frame \
                 (Wan2.1 FLF2V) checkpoint, whose transformer sets pos_embed_seq_len, does",
                    l.param
                ),
            ));
        }
        (None, Some(l)) => {
            return Err(ApiError::invalid(
                &l.param,
                format!(
                    "`{}` is the last frame of a first-last-frame video; send the first frame as \
                 `input_reference` or `start_image` too",
                    l.param
                ),
            ));
        }
        (Some(_), None) if defaults.takes_last_image => {
            return Err(ApiError::invalid(
                END_IMAGE,
                "this first-last-frame (FLF2V) checkpoint needs the last frame as `end_image` \
             as well as the first as `input_reference` (diffusers' FLF2V transformer cannot run \
             on one image)",
            ));
        }
        _ => {}
    }
    match (&refs.first, needs) {
        (None, Some(what)) => {
            return Err(ApiError::invalid(
                "input_reference",
                format!("this {class} checkpoint needs {what} as `input_reference`"),
            ));
        }
        (Some(r), None) if class == pipeline_wan::CLASS_NAME && !defaults.image_to_video => {
            return Err(ApiError::invalid(
                &r.param,
                format!(
                    "`{}`: a text-to-video WanPipeline checkpoint takes no image or video reference",
                    r.param
                ),
            ));
        }
        (Some(r), _) => {
            if let Some(kind) = r.hint {
                check_kind_fits(defaults, kind, &r.param)?;
            }
        }
        (None, None) => {}
    }
    Ok(())
}

/// A reference of `kind` in field `param` against the checkpoint's pipeline class: an
/// image-to-video checkpoint takes an image, a video-to-video one a video (the last image of a
/// first-last-frame video must be an image).
///
/// # Errors
/// 400 naming `param`.
pub fn check_kind_fits(
    defaults: &ModelDefaults,
    kind: RefKind,
    param: &str,
) -> Result<(), ApiError> {
    use crate::pipeline::pipelines::{pipeline_wan, pipeline_wan_i2v, pipeline_wan_video2video};
    let class = defaults.pipeline_class.as_str();
    let wants = match class {
        _ if param == END_IMAGE || param == "image_reference[1]" => RefKind::Image,
        pipeline_wan_i2v::CLASS_NAME => RefKind::Image,
        pipeline_wan::CLASS_NAME if defaults.image_to_video => RefKind::Image,
        pipeline_wan_video2video::CLASS_NAME => RefKind::Video,
        _ => return Ok(()),
    };
    match (wants, kind) {
        (RefKind::Image, RefKind::Video) => Err(ApiError::invalid(
            param,
            format!("`{param}`: this {class} checkpoint takes an image here, not a video"),
        )),
        (RefKind::Video, RefKind::Image) => Err(ApiError::invalid(
            param,
            format!(
                "`{param}`: this {class} checkpoint takes an H.264 MP4 video, not an image \
                 (video-to-video)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Validate `fields` and resolve them, once, over the lower layers and the checkpoint.
///
/// # Errors
/// 400 naming the field.
pub fn admit(fields: &Fields, cx: &AdmitContext<'_>) -> Result<Admitted, ApiError> {
    let body = CreateVideoBody::from_fields(fields)?;
    let refs = reference::extract(fields, cx.max_upload_bytes)?;
    check_reference_fits(cx.defaults, &refs)?;
    let BodyLayers {
        model,
        seconds,
        mut layers,
        mut aliases,
    } = body.layers(cx.defaults)?;
    let model = match model {
        Some(name) if !(cx.serves)(&name) => {
            return Err(ApiError::ModelMismatch {
                requested: name,
                served: cx.served.to_string(),
            });
        }
        Some(name) => name,
        None => cx.served.to_string(),
    };
    let from_body = layers.len();
    layers.extend(cx.lower_layers.iter().cloned());
    if let Some(s) = seconds
        && layers[..from_body].iter().all(|l| l.num_frames.is_none())
    {
        // seconds · fps with the fps the request resolves to (body, default_request, preset or
        // checkpoint).
        let fps = layers.iter().find_map(|l| l.fps).unwrap_or(cx.defaults.fps);
        layers[0].num_frames = Some(s.saturating_mul(fps));
        aliases.push(("num_frames", "seconds"));
    }
    if layers.iter().all(|l| l.seed.is_none()) {
        layers[0].seed = Some(rand::random::<u32>() as u64);
    }
    let mut request = resolve(&layers, cx.defaults)
        .and_then(|r| cx.budget.check(&r).map(|()| r))
        .map_err(|e| renamed(e, &aliases))?;
    cx.lora.resolve(&mut request.lora)?;
    cx.postprocess.resolve(&mut request)?;
    let seconds = match seconds {
        Some(s) => s.to_string(),
        None => {
            let s = (request.video_frames() as f64 / request.fps as f64).round();
            (s.max(1.0) as u64).to_string()
        }
    };
    Ok(Admitted {
        request,
        model,
        seconds,
        reference: refs.first,
        last_reference: refs.last,
        webhook_url: None,
    })
}

/// A resolve error under the name the client used (`cfg_scale` rather than `guidance_scale`).
fn renamed(e: RequestError, aliases: &[(&'static str, &'static str)]) -> ApiError {
    match aliases.iter().find(|(canonical, _)| *canonical == e.param) {
        Some((_, alias)) => ApiError::invalid(alias, e.message),
        None => e.into(),
    }
}

/// `"640x384"`, `" 640 X 384 "` → (640, 384); both sides positive.
pub fn parse_size(size: &str) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::invalid(
            "size",
            format!("'{size}' is not WIDTHxHEIGHT with positive integers, e.g. 640x384"),
        )
    };
    let lower = size.trim().to_ascii_lowercase();
    let (w, h) = lower.split_once('x').ok_or_else(bad)?;
    let p = |s: &str| s.trim().parse::<u32>().ok().filter(|v| *v > 0);
    Ok((p(w).ok_or_else(bad)?, p(h).ok_or_else(bad)?))
}

/// The multiple of `grid` nearest to `v` (halves round up), at least `grid`.
fn snap(v: u32, grid: u32) -> u32 {
    (((v as u64 + grid as u64 / 2) / grid as u64).max(1) * grid as u64).min(u32::MAX as u64) as u32
}

/// Field deserializers that take what forms and JSON clients send: numbers as JSON numbers or
/// strings, objects as JSON objects or their JSON text; `null` is absent.
mod lenient {
    use super::*;

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Ok(Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()))
    }

    /// A string (a number is taken as its text).
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match value(d)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(D::Error::custom("must be a string")),
        }
    }

    fn int(v: &Value) -> Option<i128> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A non-negative integer that fits `T`.
    pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let n = int(&v).ok_or_else(|| D::Error::custom(format!("must be an integer, got {v}")))?;
        if n < 0 {
            return Err(D::Error::custom(format!("{n} must not be negative")));
        }
        T::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{n} is too large")))
    }

    /// An integer ≥ 1.
    pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match integer::<D, u32>(d)? {
            Some(0) => Err(D::Error::custom("0 is out of range (minimum 1)")),
            v => Ok(v),
        }
    }

    /// A boolean (`true`/`false`, also as the strings forms send, or 0/1).
    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match value(d)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(D::Error::custom(format!(
                    "must be true or false, got {s:?}"
                ))),
            },
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
            Some(v) => Err(D::Error::custom(format!("must be true or false, got {v}"))),
        }
    }

    /// A finite number.
    pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let f = match value(d)? {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match f {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(D::Error::custom("must be a finite number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::postprocess::PostprocessSection;
    use serde_json::json;

    fn admit_json(v: Value, default_request: &RequestPatch) -> Result<Admitted, ApiError> {
        let fields = Fields {
            map: v.as_object().unwrap().clone(),
            uploads: Vec::new(),
        };
        admit(
            &fields,
            &AdmitContext {
                served: "tiny",
                serves: &|n| n == "tiny",
                lower_layers: std::slice::from_ref(default_request),
                defaults: &ModelDefaults::helios_distilled(),
                budget: &WorkBudget::default(),
                max_upload_bytes: 1 << 20,
                lora: &Default::default(),
                postprocess: &Default::default(),
            },
        )
    }

    #[test]
    fn an_alias_that_disagrees_with_its_field_is_refused() {
        let d = RequestPatch::default();
        let e = admit_json(
            json!({"prompt":"p","guidance_scale":1.0,"cfg_scale":2.0}),
            &d,
        )
        .unwrap_err();
        assert_eq!(e.body()["error"]["param"], "cfg_scale", "{e}");
        let e = admit_json(json!({"prompt":"p","num_inference_steps":3,"step":4}), &d).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "step", "{e}");
        // The same value under both names is no conflict.
        let a = admit_json(
            json!({"prompt":"p","guidance_scale":1.0,"cfg_scale":"1.0"}),
            &d,
        )
        .unwrap();
        assert_eq!(a.request.guidance_scale, 1.0);
    }

    fn admit_with(v: Value, postprocess: &PostprocessSection) -> Result<Admitted, ApiError> {
        let fields = Fields {
            map: v.as_object().unwrap().clone(),
            uploads: Vec::new(),
        };
        admit(
            &fields,
            &AdmitContext {
                served: "tiny",
                serves: &|n| n == "tiny",
                lower_layers: &[],
                defaults: &ModelDefaults::helios_distilled(),
                budget: &WorkBudget::default(),
                max_upload_bytes: 1 << 20,
                lora: &Default::default(),
                postprocess,
            },
        )
    }

    #[test]
    fn upscaling_needs_a_model_and_its_settings_need_enable_upscale() {
        let none = PostprocessSection::default();
        for v in [json!(true), json!("true")] {
            let e = admit_with(json!({"prompt": "p", "enable_upscale": v}), &none).unwrap_err();
            assert_eq!(e.body()["error"]["param"], "enable_upscale", "{e}");
        }
        // A setting without its switch would be ignored: a 400 naming it.
        for (field, v) in [
            ("upscale_factor", json!(2)),
            ("upscale_model_path", json!("/m/x4.pth")),
            ("frame_interpolation_exp", json!(2)),
            ("frame_interpolation_scale", json!(0.5)),
            ("frame_interpolation_model_path", json!("/m/flownet.pkl")),
        ] {
            let e = admit_with(json!({"prompt": "p", field: v}), &none).unwrap_err();
            assert_eq!(e.body()["error"]["param"], field, "{e}");
            assert!(e.to_string().contains("has no effect without"), "{e}");
        }
        // Off or null asks for nothing.
        admit_with(
            json!({"prompt":"p","enable_upscale":false,"upscale_factor":null}),
            &none,
        )
        .unwrap();
        let x4 = PostprocessSection {
            upscale_model: Some(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/esrgan/srvgg_x4.pth"),
            ),
            ..Default::default()
        };
        let a = admit_with(json!({"prompt":"p","enable_upscale":"true"}), &x4).unwrap();
        assert_eq!(a.request.upscale_factor, 4, "the model's own scale");
        assert_eq!(a.request.video_size(), (2560, 1536));
        let a = admit_with(
            json!({"prompt":"p","enable_upscale":true,"upscale_factor":"2"}),
            &x4,
        )
        .unwrap();
        assert_eq!(a.request.video_size(), (1280, 768));
        for (factor, param) in [(3, "upscale_factor"), (8, "upscale_factor")] {
            let e = admit_with(
                json!({"prompt":"p","enable_upscale":true,"upscale_factor":factor}),
                &x4,
            )
            .unwrap_err();
            assert_eq!(e.body()["error"]["param"], param, "{e}");
        }
        let e = admit_with(
            json!({"prompt":"p","enable_upscale":true,"upscale_model_path":"/etc/passwd"}),
            &x4,
        )
        .unwrap_err();
        assert_eq!(e.body()["error"]["param"], "upscale_model_path", "{e}");
    }

    #[test]
    fn size_overrides_width_and_seconds_make_frames() {
        let a = admit_json(
            json!({"prompt":"p","size":"128x64","width":"256","seconds":"2","fps":12}),
            &RequestPatch::default(),
        )
        .unwrap();
        assert_eq!((a.request.width, a.request.height), (128, 64));
        assert_eq!(a.request.num_frames, 24);
        assert_eq!(a.seconds, "2");
        let a = admit_json(
            json!({"prompt":"p","size":"720x1280","seconds":"4"}),
            &RequestPatch::default(),
        )
        .unwrap();
        assert_eq!((a.request.width, a.request.height), (704, 1280));
        assert_eq!(a.seconds, "4");
        assert_eq!(snap(10, 64), 64);
        assert_eq!(snap(96, 64), 128);
    }

    #[test]
    fn request_beats_default_request_beats_checkpoint() {
        let d = RequestPatch {
            width: Some(256),
            height: Some(128),
            seed: Some(9),
            fps: Some(8),
            ..Default::default()
        };
        let a = admit_json(json!({"prompt":"p","width":128,"seconds":3}), &d).unwrap();
        assert_eq!((a.request.width, a.request.height), (128, 128));
        assert_eq!(a.request.seed, 9);
        assert_eq!(
            a.request.num_frames, 24,
            "3 s at the default_request's 8 fps"
        );
        assert_eq!(a.request.guidance_scale, 1.0);
    }

    #[test]
    fn bad_fields_name_their_param() {
        let d = RequestPatch::default();
        for (body, param) in [
            (json!({"prompt":"  "}), "prompt"),
            (json!({"prompt":"p","size":"640x"}), "size"),
            (json!({"prompt":"p","size":"0x64"}), "size"),
            (json!({"prompt":"p","seconds":"0"}), "seconds"),
            (
                json!({"prompt":"p","num_inference_steps":201}),
                "num_inference_steps",
            ),
            (json!({"prompt":"p","step":0}), "step"),
            (json!({"prompt":"p","guidance_scale":25}), "guidance_scale"),
            (json!({"prompt":"p","cfg_scale":"-1"}), "cfg_scale"),
            (json!({"prompt":"p","extra_params":"{nope"}), "extra_params"),
            (json!({"prompt":"p","extra_params":"[1]"}), "extra_params"),
            (json!({"prompt":"p","width":100}), "width"),
            // Distilled runs a pyramid: a single steps count would be dropped, so it is refused.
            (json!({"prompt":"p","step":4}), "step"),
            (
                json!({"prompt":"p","num_inference_steps":4}),
                "num_inference_steps",
            ),
            (
                json!({"prompt":"p","video_params":{"width":"wide"}}),
                "video_params.width",
            ),
            (json!({"prompt":"p","seed":-1}), "seed"),
            // The work budget, naming the field the client sent.
            (json!({"prompt":"p","seconds":1000000000}), "seconds"),
            (json!({"prompt":"p","num_frames":1000000000}), "num_frames"),
            (json!({"prompt":"p","size":"99999x99999"}), "width"),
            (
                json!({"prompt":"p","extra_params":{"history_sizes":[100000,100000,100000]}}),
                "history_sizes",
            ),
        ] {
            let e = admit_json(body.clone(), &d).unwrap_err();
            assert_eq!(e.body()["error"]["param"], param, "{body}: {e}");
        }
        let e = admit_json(json!({"prompt":"p","model":"other"}), &d).unwrap_err();
        assert!(matches!(e, ApiError::ModelMismatch { .. }));
    }

    #[test]
    fn steps_reach_a_base_checkpoint_under_either_name() {
        let base = ModelDefaults::helios_base();
        let cx = AdmitContext {
            served: "tiny",
            serves: &|n| n == "tiny",
            lower_layers: &[],
            defaults: &base,
            budget: &WorkBudget::default(),
            max_upload_bytes: 1 << 20,
            lora: &Default::default(),
            postprocess: &Default::default(),
        };
        for (body, steps) in [
            (json!({"prompt":"p","num_inference_steps":3}), 3),
            (json!({"prompt":"p","step":"7"}), 7),
            (json!({"prompt":"p"}), 50),
        ] {
            let fields = Fields {
                map: body.as_object().unwrap().clone(),
                uploads: Vec::new(),
            };
            let a = admit(&fields, &cx).unwrap();
            assert_eq!(a.request.num_inference_steps, steps, "{body}");
        }
    }

    #[test]
    fn references_fit_the_pipeline_class_or_name_their_field() {
        use crate::pipeline::pipelines::{pipeline_wan_i2v, pipeline_wan_video2video};
        let with = |class: &str, last: bool| ModelDefaults {
            pipeline_class: class.into(),
            takes_last_image: last,
            ..ModelDefaults::helios_base()
        };
        let (i2v, flf2v, v2v, helios) = (
            with(pipeline_wan_i2v::CLASS_NAME, false),
            with(pipeline_wan_i2v::CLASS_NAME, true),
            with(pipeline_wan_video2video::CLASS_NAME, false),
            ModelDefaults::helios_base(),
        );
        let png = "data:image/png;base64,AAEC";
        let mp4 = "data:video/mp4;base64,AAEC";
        for (d, body, param) in [
            (&flf2v, json!({"input_reference": png}), Some("end_image")),
            (&flf2v, json!({"end_image": png}), Some("end_image")),
            (
                &flf2v,
                json!({"image_reference": [png, {"file_id": "f"}]}),
                Some("image_reference[1]"),
            ),
            (&flf2v, json!({"start_image": png, "end_image": png}), None),
            (&flf2v, json!({"image_reference": [png, png]}), None),
            (
                &flf2v,
                json!({"input_reference": mp4, "end_image": png}),
                Some("input_reference"),
            ),
            (
                &i2v,
                json!({"input_reference": png, "end_image": png}),
                Some("end_image"),
            ),
            (
                &i2v,
                json!({"image_reference": [png, png]}),
                Some("image_reference[1]"),
            ),
            (
                &i2v,
                json!({"input_reference": mp4}),
                Some("input_reference"),
            ),
            (
                &i2v,
                json!({"video_reference": {"video_url": png}}),
                Some("video_reference"),
            ),
            (&i2v, json!({"input_reference": png}), None),
            (
                &v2v,
                json!({"input_reference": png}),
                Some("input_reference"),
            ),
            (&v2v, json!({"input_reference": mp4}), None),
            (
                &helios,
                json!({"input_reference": png, "end_image": png}),
                Some("end_image"),
            ),
            (&helios, json!({"input_reference": mp4}), None),
        ] {
            let fields = Fields {
                map: body.as_object().unwrap().clone(),
                uploads: Vec::new(),
            };
            let got = reference::extract(&fields, 1 << 10)
                .and_then(|refs| check_reference_fits(d, &refs));
            match (got, param) {
                (Ok(()), None) => {}
                (Err(e), Some(p)) => assert_eq!(e.body()["error"]["param"], p, "{body}: {e}"),
                (got, _) => panic!("{}: {body}: {got:?}", d.pipeline_class),
            }
        }
    }

    #[test]
    fn extra_params_is_a_lower_layer() {
        let a = admit_json(
            json!({"prompt":"p","seed":1,"extra_params":{"seed":2,"pyramid_num_inference_steps_list":[1,1,1]}}),
            &RequestPatch::default(),
        )
        .unwrap();
        assert_eq!(a.request.seed, 1);
        assert_eq!(a.request.pyramid_num_inference_steps_list, vec![1, 1, 1]);
    }
}
