//! A diffusers-format checkpoint folder: `model_index.json` plus one sub-folder per component
//! (`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), as
//! `huggingface-cli download` or `save_pretrained` leave them.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use serde::de::DeserializeOwned;

use super::weights::{KeyMap, WeightsError, load_module, resolve_safetensors};

/// A failure while reading a checkpoint folder. Every variant names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder the checkpoint needs is absent.
    #[error(
        "{path} not found: {what} (is this a complete diffusers-format checkpoint folder, Helios or Wan?)"
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

/// Loads one model component folder (`transformer/`, `vae/`, `text_encoder/`) the way
/// diffusers' and transformers' `from_pretrained` do: `dir/config.json` into `C` (unknown keys
/// are warned about, see [`read_config`]), then the weights `dir/<weights_stem>.safetensors` or
/// the shards of `dir/<weights_stem>.safetensors.index.json` are located, `build` checks the
/// config and allocates the module, and the weights are applied with `keys`, float tensors cast
/// to `dtype` (or f32 under `keys.keep_in_fp32`; see [`load_module`]).
///
/// `weights_stem` is `diffusion_pytorch_model` for diffusers models and `model` for transformers
/// models. The weights are located before `build` runs, so a folder without weights fails before
/// a large model is allocated.
///
/// # Errors
/// [`LoadError::Missing`] / [`LoadError::Config`] for an absent or unparsable `config.json`;
/// [`LoadError::Config`] naming `config.json` with `build`'s message when it rejects the config;
/// [`LoadError::Weights`] naming the file (and tensor) for absent weights or a missing,
/// unexpected or wrongly shaped tensor.
pub fn load_component<B, C, M>(
    dir: &Path,
    weights_stem: &str,
    keys: KeyMap<'_>,
    dtype: DType,
    build: impl FnOnce(C) -> Result<M, String>,
) -> Result<M, LoadError>
where
    B: Backend,
    C: DeserializeOwned,
    M: ModuleSnapshot<B>,
{
    let config_path = dir.join("config.json");
    let (config, _unknown) = read_config::<C>(&config_path)?;
    let files = resolve_safetensors(dir, weights_stem)?;
    let mut model = build(config).map_err(|message| LoadError::Config {
        path: config_path,
        message,
    })?;
    load_module::<B, M>(&mut model, &files, keys, dtype)?;
    Ok(model)
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

/// Writes a model's two inherent loaders into its `impl<B: Backend> Model<B>` block:
/// `load_with_dtype(dir, device, dtype)`, which is [`load_component`] with the model's weights
/// stem, [`KeyMap`](super::weights::KeyMap) and build step (the documentation given before
/// `weights` is this method's), and `load(dir, device)`, the same in the device's default float
/// dtype ([`device_float_dtype`](super::precision::device_float_dtype)).
///
/// ```ignore
/// impl<B: Backend> UMT5EncoderModel<B> {
///     load_methods! {
///         /// Load `dir/config.json` and `dir/model.safetensors` …
///         weights "model", keys KEY_MAP,
///         build |config: UMT5Config, device| Self::new(&config, device)
///     }
/// }
/// ```
/// `build` returns `Result<Self, String>`; an `Err` becomes [`LoadError::Config`] naming
/// `config.json`.
macro_rules! load_methods {
    (
        $(#[$doc:meta])*
        weights $stem:literal, keys $keys:expr,
        build |$config:ident: $config_ty:ty, $device:ident| $build:expr
    ) => {
        /// [`load_with_dtype`](Self::load_with_dtype) in the device's default float dtype.
        ///
        /// # Errors
        /// As [`load_with_dtype`](Self::load_with_dtype).
        pub fn load(
            dir: &std::path::Path,
            device: &B::Device,
        ) -> Result<Self, $crate::pipeline::checkpoint::LoadError> {
            let dtype = $crate::pipeline::precision::device_float_dtype::<B>(device);
            Self::load_with_dtype(dir, device, dtype)
        }

        $(#[$doc])*
        pub fn load_with_dtype(
            dir: &std::path::Path,
            $device: &B::Device,
            dtype: burn::tensor::DType,
        ) -> Result<Self, $crate::pipeline::checkpoint::LoadError> {
            $crate::pipeline::checkpoint::load_component(
                dir,
                $stem,
                $keys,
                dtype,
                |$config: $config_ty| $build,
            )
        }
    };
}
pub(crate) use load_methods;

/// Config check: returns `Err("<field> must be positive")` from the calling `validate` for the
/// first listed integer field of `$config` that is 0. `require_positive!(self: d_model, d_ff)`.
macro_rules! require_positive {
    ($config:ident: $($field:ident),+ $(,)?) => {
        $(
            if $config.$field == 0 {
                return Err(concat!(stringify!($field), " must be positive").into());
            }
        )+
    };
}
pub(crate) use require_positive;
