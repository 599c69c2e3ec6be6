//! A diffusers-format checkpoint folder: `model_index.json` plus one sub-folder per component
//! (`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), as
//! `huggingface-cli download` or `save_pretrained` leave them.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::weights::WeightsError;

/// A failure while reading a checkpoint folder. Every variant names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder the checkpoint needs is absent.
    #[error(
        "{path} not found: {what} (is this a complete diffusers-format Helios checkpoint folder?)"
    )]
    Missing { path: PathBuf, what: String },
    /// A JSON config could not be read or does not have the expected fields.
    #[error("reading {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The tokenizer could not be loaded.
    #[error("reading tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A weights file is missing, corrupt, or does not match the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Read a JSON config into `T`, returning it with the keys `T` does not know (callers warn about
/// them, as diffusers' `extract_init_dict` does).
///
/// # Errors
/// [`LoadError::Missing`] when the file is absent, [`LoadError::Config`] when it is not valid JSON
/// or a field has the wrong type.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<(T, Vec<String>), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LoadError::Missing {
                path: path.to_path_buf(),
                what: "config file".into(),
            }
        } else {
            LoadError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        }
    })?;
    let mut unknown = Vec::new();
    let de = &mut serde_json::Deserializer::from_str(&text);
    let value: T = serde_ignored::deserialize(de, |p| {
        let key = p.to_string();
        // diffusers bookkeeping keys are expected everywhere.
        if !key.starts_with('_') {
            unknown.push(key);
        }
    })
    .map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    for key in &unknown {
        tracing::warn!("{}: unknown config key `{key}` ignored", path.display());
    }
    Ok((value, unknown))
}

/// `<dir>/<sub>` if it is a folder, else [`LoadError::Missing`].
pub fn component_dir(dir: &Path, sub: &str) -> Result<PathBuf, LoadError> {
    let p = dir.join(sub);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(LoadError::Missing {
            path: p,
            what: format!("the `{sub}` component folder"),
        })
    }
}
