//! `[postprocess]` of serve.toml: the RIFE model for frame interpolation and the Real-ESRGAN
//! model for upscaling. A request that turns interpolation (upscaling) on without a model, where
//! the server has none configured, is a 400 naming `enable_frame_interpolation`
//! (`enable_upscale`); a request's own `frame_interpolation_model_path` / `upscale_model_path`
//! must be the configured model or lie inside `model_dirs` (else a 400 naming it). An
//! `upscale_factor` the model cannot make is a 400 naming it; an unset one becomes the model's
//! own scale, so the job's `Video` reports the real output size.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ApiError;
use crate::pipeline::request::GenerationRequest;
use crate::postprocess::realesrgan::{check_factor, native_scale};

/// `[postprocess]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSection {
    /// RIFE (4.22 lite, 4.22, 4.25 or 4.26) `flownet.pkl` used when a request turns `enable_frame_interpolation` on
    /// without naming a model (flag `--rife-model`).
    pub rife_model: Option<PathBuf>,
    /// Real-ESRGAN `.pth` (`RealESRGAN_x4plus`, `RealESRGAN_x2plus`, `realesr-general-x4v3`,
    /// `realesr-animevideov3`) used when a request turns `enable_upscale` on without naming a
    /// model (flag `--upscale-model`).
    pub upscale_model: Option<PathBuf>,
    /// Folders whose models requests may name in `frame_interpolation_model_path` and
    /// `upscale_model_path`.
    #[serde(default)]
    pub model_dirs: Vec<PathBuf>,
}

impl PostprocessSection {
    /// Fill in and check the request's RIFE and Real-ESRGAN models and its upscale factor.
    ///
    /// # Errors
    /// 400 naming `enable_frame_interpolation` / `enable_upscale` (no model anywhere),
    /// `frame_interpolation_model_path` / `upscale_model_path` (outside `model_dirs`, missing
    /// file, not a Real-ESRGAN model) or `upscale_factor` (not the model's scale, nor 2 from x4).
    pub fn resolve(&self, req: &mut GenerationRequest) -> Result<(), ApiError> {
        if req.enable_frame_interpolation {
            req.frame_interpolation_model_path = self.model_path(
                &req.frame_interpolation_model_path,
                self.rife_model.as_deref(),
                "enable_frame_interpolation",
                "this server has no RIFE model for frame interpolation (`[postprocess] rife_model` / --rife-model); send `frame_interpolation_model_path` inside its model_dirs or leave `enable_frame_interpolation` off",
                "frame_interpolation_model_path",
            )?;
        }
        if req.enable_upscale {
            req.upscale_model_path = self.model_path(
                &req.upscale_model_path,
                self.upscale_model.as_deref(),
                "enable_upscale",
                "this server has no Real-ESRGAN model for upscaling (`[postprocess] upscale_model` / --upscale-model); send `upscale_model_path` inside its model_dirs or leave `enable_upscale` off",
                "upscale_model_path",
            )?;
            let native = native_scale(Path::new(&req.upscale_model_path))
                .map_err(|e| ApiError::invalid("upscale_model_path", e.to_string()))?;
            if req.upscale_factor == 0 {
                req.upscale_factor = native as u32;
            }
            check_factor(native, req.upscale_factor as usize)
                .map_err(|m| ApiError::invalid("upscale_factor", m))?;
        }
        Ok(())
    }

    /// The canonical path of a request's model: `asked`, which must be `configured` or lie
    /// inside `model_dirs`, else `configured` when `asked` is empty.
    fn model_path(
        &self,
        asked: &str,
        configured: Option<&Path>,
        enable: &str,
        none: &str,
        param: &str,
    ) -> Result<String, ApiError> {
        if asked.is_empty() {
            let Some(model) = configured else {
                return Err(ApiError::invalid(enable, none));
            };
            return Ok(model.display().to_string());
        }
        let asked = Path::new(asked);
        let canonical = std::fs::canonicalize(asked)
            .map_err(|e| ApiError::invalid(param, format!("`{}`: {e}", asked.display())))?;
        let configured = configured.and_then(|m| std::fs::canonicalize(m).ok());
        let inside = self
            .model_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .any(|d| canonical.starts_with(d));
        if configured.as_ref() != Some(&canonical) && !inside {
            return Err(ApiError::invalid(
                param,
                format!(
                    "`{}` is neither this server's configured model nor inside its [postprocess] model_dirs",
                    asked.display()
                ),
            ));
        }
        Ok(canonical.display().to_string())
    }
}
