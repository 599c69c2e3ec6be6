//! One typed request and one merge.
//!
//! [`RequestPatch`] has only optional fields; the CLI flags, presets, server config and HTTP bodies
//! each become a patch. [`resolve`] applies them in precedence order over the checkpoint's
//! [`ModelDefaults`] and checks the cross-field rules once, giving a [`GenerationRequest`] with no
//! `Option` where a default exists.

use serde::{Deserialize, Serialize};

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

/// One layer of request settings; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPatch {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// Output width in pixels.
    pub width: Option<u32>,
    /// Output height in pixels.
    pub height: Option<u32>,
    /// Requested frames; the pipeline makes `ceil(n/33)` chunks of 33 and trims to `4k+1`.
    pub num_frames: Option<u32>,
    /// Frames per second of the MP4.
    pub fps: Option<u32>,
    pub seed: Option<u64>,
    pub guidance_scale: Option<f64>,
    pub pyramid_num_inference_steps_list: Option<Vec<usize>>,
    pub is_amplify_first_chunk: Option<bool>,
    pub history_sizes: Option<Vec<usize>>,
    pub num_latent_frames_per_chunk: Option<usize>,
    pub max_sequence_length: Option<usize>,
}

/// The defaults a checkpoint implies (diffusers `HeliosPyramidPipeline.__call__` defaults, with
/// the variant's own steps and guidance).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDefaults {
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub guidance_scale: f64,
    pub pyramid_num_inference_steps_list: Vec<usize>,
    pub is_amplify_first_chunk: bool,
    pub history_sizes: Vec<usize>,
    pub num_latent_frames_per_chunk: usize,
    pub max_sequence_length: usize,
    /// Number of pyramid stages of the scheduler (3 for Mid and Distilled).
    pub pyramid_num_stages: usize,
}

impl ModelDefaults {
    /// Helios-Distilled: 640x384 at 24 fps, pyramid steps [2, 2, 2], first chunk amplified, no CFG.
    pub fn helios_distilled() -> Self {
        Self {
            width: 640,
            height: 384,
            num_frames: 132,
            fps: 24,
            guidance_scale: 1.0,
            pyramid_num_inference_steps_list: vec![2, 2, 2],
            is_amplify_first_chunk: true,
            history_sizes: vec![16, 2, 1],
            num_latent_frames_per_chunk: 9,
            max_sequence_length: 512,
            pyramid_num_stages: 3,
        }
    }
}

/// A fully resolved generation request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRequest {
    pub prompt: String,
    /// Used only when `guidance_scale > 1` (empty string when absent, as diffusers).
    pub negative_prompt: String,
    /// Pixels; a multiple of 16·2^(stages−1) (64 for 3 stages).
    pub width: u32,
    /// Pixels; a multiple of 16·2^(stages−1) (64 for 3 stages).
    pub height: u32,
    /// Requested frames (the output has `trimmed_frames()` frames).
    pub num_frames: u32,
    /// Frames per second.
    pub fps: u32,
    pub seed: u64,
    pub guidance_scale: f64,
    pub pyramid_num_inference_steps_list: Vec<usize>,
    pub is_amplify_first_chunk: bool,
    pub history_sizes: Vec<usize>,
    pub num_latent_frames_per_chunk: usize,
    pub max_sequence_length: usize,
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
    /// Frames in the output: `chunks·window` trimmed to `4k+1`, as diffusers does.
    pub fn output_frames(&self) -> usize {
        let generated = self.num_chunks() * self.window_num_frames();
        (generated - 1) / 4 * 4 + 1
    }
}

macro_rules! pick {
    ($layers:expr, $field:ident) => {
        $layers.iter().find_map(|l| l.$field.clone())
    };
}

/// Merge `layers` (highest precedence first) over `defaults` and validate.
///
/// # Errors
/// [`RequestError`] naming the field: blank prompt, a size that is not a multiple of
/// `16·2^(stages−1)`, zero frames or fps, a steps list of the wrong length or with zeros,
/// guidance outside 0..=20, a bad history size list.
pub fn resolve(
    layers: &[RequestPatch],
    defaults: &ModelDefaults,
) -> Result<GenerationRequest, RequestError> {
    let prompt = pick!(layers, prompt).unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(bad(
            "prompt",
            "the prompt is empty; pass the text to generate from",
        ));
    }
    let req = GenerationRequest {
        prompt,
        negative_prompt: pick!(layers, negative_prompt).unwrap_or_default(),
        width: pick!(layers, width).unwrap_or(defaults.width),
        height: pick!(layers, height).unwrap_or(defaults.height),
        num_frames: pick!(layers, num_frames).unwrap_or(defaults.num_frames),
        fps: pick!(layers, fps).unwrap_or(defaults.fps),
        seed: pick!(layers, seed).unwrap_or(0),
        guidance_scale: pick!(layers, guidance_scale).unwrap_or(defaults.guidance_scale),
        pyramid_num_inference_steps_list: pick!(layers, pyramid_num_inference_steps_list)
            .unwrap_or_else(|| defaults.pyramid_num_inference_steps_list.clone()),
        is_amplify_first_chunk: pick!(layers, is_amplify_first_chunk)
            .unwrap_or(defaults.is_amplify_first_chunk),
        history_sizes: pick!(layers, history_sizes)
            .unwrap_or_else(|| defaults.history_sizes.clone()),
        num_latent_frames_per_chunk: pick!(layers, num_latent_frames_per_chunk)
            .unwrap_or(defaults.num_latent_frames_per_chunk),
        max_sequence_length: pick!(layers, max_sequence_length)
            .unwrap_or(defaults.max_sequence_length),
    };
    let multiple = 16u32 << (defaults.pyramid_num_stages.saturating_sub(1));
    for (param, v) in [("width", req.width), ("height", req.height)] {
        if v == 0 || v % multiple != 0 {
            return Err(bad(
                param,
                format!(
                    "{v} is not a positive multiple of {multiple} pixels (required by the {}-stage pyramid); try {}",
                    defaults.pyramid_num_stages,
                    (v.max(1)).div_ceil(multiple) * multiple
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
    if !(0.0..=20.0).contains(&req.guidance_scale) {
        return Err(bad(
            "guidance_scale",
            format!("{} is outside 0..=20", req.guidance_scale),
        ));
    }
    let steps = &req.pyramid_num_inference_steps_list;
    if steps.len() != defaults.pyramid_num_stages || steps.iter().any(|&s| s == 0 || s > 200) {
        return Err(bad(
            "pyramid_num_inference_steps_list",
            format!(
                "{steps:?} must list {} step counts, each in 1..=200",
                defaults.pyramid_num_stages
            ),
        ));
    }
    if req.history_sizes.len() != 3 || req.history_sizes.iter().any(|&s| s == 0) {
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
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

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
