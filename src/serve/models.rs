//! The `GET /v1/models` card: OpenAI's model object (`id, object, created, owned_by`, vLLM's
//! `root`) plus extension fields that describe what a create request may set on this checkpoint,
//! so a client (the web page at `/`) builds its form from the server instead of hard-coding it.
//! OpenAI clients ignore the extra fields.
//!
//! - `pipeline`: the diffusers pipeline class (`HeliosPyramidPipeline`, `HeliosPipeline`);
//! - `defaults`: every request field as a request without it resolves (body > `[default_request]`
//!   > preset > checkpoint), plus `size` (`WxH`) and `seconds`; `seed` is null when random;
//! - `sizes` (suggested `WxH`, the default first), `size_multiple` (the pixel grid a `size` is
//!   snapped to), `limits` (`[limits.budget]` and `max_upload_bytes`);
//! - `parameters`: the model-specific knobs this checkpoint takes, each
//!   `{name, type, default, description, in: "body"|"extra_params", minimum?, maximum?}`
//!   (the steps knob of its own sampler only; keys fixed by the checkpoint are left out);
//! - `presets`: the built-in presets that fit the checkpoint, `{name, values}` with the request
//!   fields each one sets.

use serde_json::{Map, Value, json};

use super::routes::State;
use crate::pipeline::request::{GenerationRequest, Preset, RequestPatch, defaults_under};

/// Request fields the page has its own inputs for (not listed under `parameters`).
const FORM_FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "num_frames",
    "fps",
    "seed",
];

/// Fields that must equal the checkpoint's value (any other value is a 400), so not knobs.
const FIXED_FIELDS: &[&str] = &["is_enable_stage2", "pyramid_num_stages", "keep_first_frame"];

/// The card of model `id` (the served name or an alias).
pub fn card(state: &State, id: &str) -> Value {
    let d = &state.defaults;
    let req = effective_defaults(state);
    let mut defaults = match serde_json::to_value(&req) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    defaults.remove("prompt");
    let seeded = state.lower_layers.iter().any(|l| l.seed.is_some());
    if !seeded {
        defaults.insert("seed".into(), Value::Null);
    }
    defaults.insert(
        "size".into(),
        json!(format!("{}x{}", req.width, req.height)),
    );
    let seconds = (req.output_frames() as f64 / req.fps.max(1) as f64)
        .round()
        .max(1.0);
    defaults.insert("seconds".into(), json!((seconds as u64).to_string()));
    let grid = 16u32 << d.pyramid_num_stages.saturating_sub(1);
    let budget = &state.cfg.limits.budget;
    json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": "omni",
        "root": state.cfg.served_model_name,
        "pipeline": d.pipeline_class,
        "defaults": defaults,
        "sizes": sizes(req.width, req.height, grid, budget.max_long_side, budget.max_short_side),
        "size_multiple": grid,
        "limits": {
            "max_num_frames": budget.max_num_frames,
            "max_long_side": budget.max_long_side,
            "max_short_side": budget.max_short_side,
            "max_upload_bytes": state.cfg.limits.max_upload_bytes,
        },
        "parameters": parameters(state, &req),
        "presets": presets(state),
        "workers": state.worker.states(),
    })
}

/// What a request with only a prompt resolves to on this server (the checkpoint's defaults when
/// the lower layers do not resolve, which the server refuses at start-up anyway).
fn effective_defaults(state: &State) -> GenerationRequest {
    defaults_under(&state.lower_layers, &state.defaults)
}

/// The default size, its rotation, half and double of it (on the grid, within the budget).
fn sizes(w: u32, h: u32, grid: u32, max_long: u32, max_short: u32) -> Vec<String> {
    let snap = |v: u32| ((v + grid / 2) / grid).max(1) * grid;
    let mut out: Vec<String> = Vec::new();
    for (a, b) in [
        (w, h),
        (h, w),
        (w / 2, h / 2),
        (h / 2, w / 2),
        (w * 2, h * 2),
        (h * 2, w * 2),
    ] {
        let (a, b) = (snap(a), snap(b));
        let fits = a.max(b) <= max_long && a.min(b) <= max_short;
        let s = format!("{a}x{b}");
        if fits && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The knobs this checkpoint takes beyond the form's own fields, guidance and steps first.
fn parameters(state: &State, req: &GenerationRequest) -> Vec<Value> {
    let pyramid = state.defaults.is_enable_stage2;
    let wrong_steps = match pyramid {
        true => "num_inference_steps",
        false => "pyramid_num_inference_steps_list",
    };
    let values = match serde_json::to_value(req) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut out: Vec<(u8, Value)> = Vec::new();
    for (name, doc) in RequestPatch::KEYS.iter().zip(RequestPatch::DOCS) {
        if FORM_FIELDS.contains(name)
            || FIXED_FIELDS.contains(name)
            || *name == wrong_steps
            || state.defaults.unsupported.contains(name)
        {
            continue;
        }
        let default = values.get(*name).cloned().unwrap_or(Value::Null);
        let ty = match &default {
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::Array(_) => "array",
            _ => "string",
        };
        let mut p = json!({
            "name": name,
            "type": ty,
            "default": default,
            "description": doc.trim(),
            "in": match *name {
                "guidance_scale" | "num_inference_steps" | "guidance_scale_2" | "boundary_ratio"
                | "flow_shift" => "body",
                _ => "extra_params",
            },
        });
        let (rank, range) = match *name {
            "guidance_scale" => (0, Some((0.0, 20.0))),
            "num_inference_steps" | "pyramid_num_inference_steps_list" => (1, Some((1.0, 200.0))),
            _ => (2, None),
        };
        if let Some((lo, hi)) = range {
            p["minimum"] = json!(lo);
            p["maximum"] = json!(hi);
        }
        out.push((rank, p));
    }
    out.sort_by_key(|(rank, _)| *rank);
    out.into_iter().map(|(_, p)| p).collect()
}

/// The built-in presets that fit this checkpoint, with the fields each sets.
fn presets(state: &State) -> Vec<Value> {
    Preset::builtin_names()
        .into_iter()
        .filter_map(Preset::builtin)
        .filter(|p| p.check(&state.defaults).is_ok())
        .map(|p| {
            let values = match serde_json::to_value(&p.patch) {
                Ok(Value::Object(m)) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
                _ => Map::new(),
            };
            json!({"name": p.name, "values": values})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sizes;

    #[test]
    fn sizes_are_on_the_grid_and_within_the_budget() {
        assert_eq!(
            sizes(640, 384, 64, 3840, 2160),
            [
                "640x384", "384x640", "320x192", "192x320", "1280x768", "768x1280"
            ]
        );
        assert_eq!(sizes(128, 64, 64, 128, 128), ["128x64", "64x128", "64x64"]);
    }
}
