//! `[postprocess]` of serve.toml: the RIFE model for frame interpolation. A request that turns
//! interpolation on without a model, where the server has none configured, is a 400 naming
//! `enable_frame_interpolation`; a request's own `frame_interpolation_model_path` must be the
//! configured model or lie inside `model_dirs` (else a 400 naming it).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ApiError;
use crate::pipeline::request::GenerationRequest;

/// `[postprocess]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSection {
    /// RIFE 4.22 lite `flownet.pkl` used when a request turns `enable_frame_interpolation` on
    /// without naming a model (flag `--rife-model`).
    pub rife_model: Option<PathBuf>,
    /// Folders whose models requests may name in `frame_interpolation_model_path`.
    #[serde(default)]
    pub model_dirs: Vec<PathBuf>,
}

impl PostprocessSection {
    /// Fill in and check the request's RIFE model.
    ///
    /// # Errors
    /// 400 naming `enable_frame_interpolation` (no model anywhere) or
    /// `frame_interpolation_model_path` (outside `model_dirs`, missing file).
    pub fn resolve(&self, req: &mut GenerationRequest) -> Result<(), ApiError> {
        if !req.enable_frame_interpolation {
            return Ok(());
        }
        if req.frame_interpolation_model_path.is_empty() {
            let Some(model) = &self.rife_model else {
                return Err(ApiError::invalid(
                    "enable_frame_interpolation",
                    "this server has no RIFE model for frame interpolation (`[postprocess] rife_model` / --rife-model); send `frame_interpolation_model_path` inside its model_dirs or leave `enable_frame_interpolation` off",
                ));
            };
            req.frame_interpolation_model_path = model.display().to_string();
            return Ok(());
        }
        let param = "frame_interpolation_model_path";
        let asked = Path::new(&req.frame_interpolation_model_path);
        let canonical = std::fs::canonicalize(asked)
            .map_err(|e| ApiError::invalid(param, format!("`{}`: {e}", asked.display())))?;
        let configured = self
            .rife_model
            .as_ref()
            .and_then(|m| std::fs::canonicalize(m).ok());
        let inside = self
            .model_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .any(|d| canonical.starts_with(d));
        if configured.as_ref() != Some(&canonical) && !inside {
            return Err(ApiError::invalid(
                param,
                format!(
                    "`{}` is neither this server's rife_model nor inside its [postprocess] model_dirs",
                    asked.display()
                ),
            ));
        }
        req.frame_interpolation_model_path = canonical.display().to_string();
        Ok(())
    }
}
