//! The create-video fields (shared/reference/api.md §5.3, the subset Helios-Distilled T2V uses)
//! → a [`RequestPatch`] layer, then one [`resolve`] with `[default_request]` and the checkpoint.
//!
//! Values may be JSON numbers or strings (forms send strings). Aliases: `cfg_scale` →
//! `guidance_scale`, `step` → `num_inference_steps`, `video_params.{width,height,num_frames,fps}`
//! below the top-level fields. `size` (`WxH`) overrides width/height. `num_frames` absent and
//! `seconds` set → `num_frames = seconds · fps`. `extra_params` (object) is a layer of any
//! [`RequestPatch`] key below the top-level fields. Unknown fields are ignored. The image / video
//! reference (`input_reference`, `image_reference`, `start_image`, `reference_url`) is taken out
//! here and decoded by the caller ([`super::reference`]).

use serde_json::{Map, Value};

use super::body::Fields;
use super::error::ApiError;
use super::reference::{self, RawReference};
use crate::pipeline::request::{GenerationRequest, ModelDefaults, RequestPatch, resolve};

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
}

/// Validate `fields` and resolve them over `default_request` and `defaults`.
///
/// # Errors
/// 400 naming the field.
pub fn admit(
    fields: &Fields,
    served: &str,
    serves: impl Fn(&str) -> bool,
    default_request: &RequestPatch,
    defaults: &ModelDefaults,
    max_upload_bytes: usize,
) -> Result<Admitted, ApiError> {
    let m = &fields.map;
    if m.get("end_image").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "end_image",
            "`end_image` (last-frame conditioning) is not supported; send a first frame as `input_reference`, `image_reference` or `start_image`",
        ));
    }
    let reference = reference::extract(fields, max_upload_bytes)?;
    let model = match string(m, "model")? {
        Some(name) if !serves(&name) => {
            return Err(ApiError::ModelMismatch {
                requested: name,
                served: served.to_string(),
            });
        }
        Some(name) => name,
        None => served.to_string(),
    };
    let vp = match m.get("video_params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(o)) => o,
            _ => return Err(ApiError::invalid("video_params", "must be a JSON object")),
        },
        Some(_) => return Err(ApiError::invalid("video_params", "must be a JSON object")),
    };
    let prompt = string(m, "prompt")?;
    if prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` is required and must not be blank",
        ));
    }
    let mut width = uint(m, "width", 1)?.or(uint(&vp, "width", 1)?);
    let mut height = uint(m, "height", 1)?.or(uint(&vp, "height", 1)?);
    if let Some(size) = string(m, "size")? {
        // `size` comes from clients that know only their own sizes (the openai SDK's
        // "720x1280"), so it is snapped to the nearest multiple of the model's pixel grid;
        // explicit width/height must already be on it.
        let (w, h) = parse_size(&size)?;
        let grid = 16u32 << defaults.pyramid_num_stages.saturating_sub(1);
        (width, height) = (Some(snap(w, grid)), Some(snap(h, grid)));
    }
    let num_frames = uint(m, "num_frames", 1)?.or(uint(&vp, "num_frames", 1)?);
    let fps = uint(m, "fps", 1)?.or(uint(&vp, "fps", 1)?);
    let seconds = uint(m, "seconds", 1)?;
    let seed = match m.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            as_i128(v)
                .filter(|s| *s >= 0 && *s <= u64::MAX as i128)
                .ok_or_else(|| ApiError::invalid("seed", "must be a non-negative integer"))?
                as u64,
        ),
    };
    let guidance = match float(m, "guidance_scale")? {
        Some(g) => Some(g),
        None => float(m, "cfg_scale")?,
    };
    if let Some(g) = guidance
        && !(0.0..=20.0).contains(&g)
    {
        let param = if m.contains_key("guidance_scale") {
            "guidance_scale"
        } else {
            "cfg_scale"
        };
        return Err(ApiError::invalid(param, format!("{g} is outside 0..=20")));
    }
    // Distilled runs its fixed DMD pyramid ([2,2,2]); `num_inference_steps` is validated and
    // otherwise ignored (use extra_params.pyramid_num_inference_steps_list to change steps).
    for param in ["num_inference_steps", "step"] {
        if let Some(s) = uint(m, param, 0)?
            && !(1..=200).contains(&s)
        {
            return Err(ApiError::invalid(param, format!("{s} is outside 1..=200")));
        }
    }
    let extra = match m.get("extra_params") {
        None | Some(Value::Null) => RequestPatch::default(),
        Some(v) => {
            let v = match v {
                Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                    ApiError::invalid("extra_params", format!("not valid JSON: {e}"))
                })?,
                other => other.clone(),
            };
            if !v.is_object() {
                return Err(ApiError::invalid("extra_params", "must be a JSON object"));
            }
            serde_json::from_value::<RequestPatch>(v)
                .map_err(|e| ApiError::invalid("extra_params", e.to_string()))?
        }
    };
    let top = RequestPatch {
        prompt,
        negative_prompt: string(m, "negative_prompt")?,
        width,
        height,
        num_frames,
        fps,
        seed,
        guidance_scale: guidance,
        ..Default::default()
    };
    let mut layers = vec![top, extra, default_request.clone()];
    let mut request = resolve(&layers, defaults)?;
    if seconds.is_some() && layers[..2].iter().all(|l| l.num_frames.is_none()) {
        layers[0].num_frames = seconds.map(|s| s.saturating_mul(request.fps));
        request = resolve(&layers, defaults)?;
    }
    if layers.iter().all(|l| l.seed.is_none()) {
        request.seed = rand::random::<u32>() as u64;
    }
    let seconds = match seconds {
        Some(s) => s.to_string(),
        None => {
            let s = (request.output_frames() as f64 / request.fps as f64).round();
            (s.max(1.0) as u64).to_string()
        }
    };
    Ok(Admitted {
        request,
        model,
        seconds,
        reference,
    })
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

fn string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::invalid(key, "must be a string")),
    }
}

fn as_i128(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn uint(m: &Map<String, Value>, key: &str, min: u32) -> Result<Option<u32>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = as_i128(v)
                .ok_or_else(|| ApiError::invalid(key, format!("must be an integer, got {v}")))?;
            if n < min as i128 || n > u32::MAX as i128 {
                return Err(ApiError::invalid(
                    key,
                    format!("{n} is out of range (minimum {min})"),
                ));
            }
            Ok(Some(n as u32))
        }
    }
}

fn float(m: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    let v = match m.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match v {
        Some(f) if f.is_finite() => Ok(Some(f)),
        _ => Err(ApiError::invalid(key, "must be a finite number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn admit_json(v: Value, default_request: &RequestPatch) -> Result<Admitted, ApiError> {
        let fields = Fields {
            map: v.as_object().unwrap().clone(),
            uploads: Vec::new(),
        };
        admit(
            &fields,
            "tiny",
            |n| n == "tiny",
            default_request,
            &ModelDefaults::helios_distilled(),
            1 << 20,
        )
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
        ] {
            let e = admit_json(body.clone(), &d).unwrap_err();
            assert_eq!(e.body()["error"]["param"], param, "{body}: {e}");
        }
        let e = admit_json(json!({"prompt":"p","model":"other"}), &d).unwrap_err();
        assert!(matches!(e, ApiError::ModelMismatch { .. }));
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
