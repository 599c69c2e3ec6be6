//! Weight loading from diffusers/transformers safetensors files with `burn-store`.
//!
//! The only place that applies key remaps and the PyTorch→Burn adapter (Linear `[out, in]` →
//! `[in, out]`; `weight` → `gamma` for burn's LayerNorm/BatchNorm/GroupNorm only — RmsNorm
//! weights and LayerNorm biases are renamed by each model's `KEY_REMAP`). Files are memory-mapped by
//! `SafetensorsStore` and each tensor is copied out one at a time, cast to the model's compute
//! dtype on the way (f32 for the modules the reference keeps in f32), so a checkpoint is never
//! held twice in RAM. Shards (`*.safetensors.index.json`) are applied one after the other.
//!
//! Every tensor of the module must come from some file, every tensor of the files must be used
//! (unless it matches the model's ignore list), and shapes must agree; each failure is a
//! [`WeightsError`] that names the tensor and the file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::pipeline::precision::param_dtype;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_store::{
    KeyRemapper, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};

/// A failure while locating or applying weights; always names the file and, where there is one,
/// the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Neither `<stem>.safetensors` nor `<stem>.safetensors.index.json` exists in the folder.
    #[error("no weights in {dir}: expected {stem}.safetensors or {stem}.safetensors.index.json")]
    NoWeights { dir: PathBuf, stem: String },
    /// The shard index could not be read or parsed.
    #[error("reading shard index {path}: {message}")]
    Index { path: PathBuf, message: String },
    /// The safetensors file could not be opened or parsed (corrupt, truncated, not safetensors).
    #[error("reading {path}: {message} (the file is corrupt or incomplete; download it again)")]
    File { path: PathBuf, message: String },
    /// A tensor the model needs is in none of the files.
    #[error("missing tensor `{tensor}`: not found in {files}")]
    Missing { tensor: String, files: String },
    /// A tensor in a file matches nothing in the model.
    #[error(
        "unexpected tensor `{tensor}` in {path} (is this the right checkpoint for this model?)"
    )]
    Unexpected { tensor: String, path: PathBuf },
    /// A tensor has the wrong shape or could not be read.
    #[error("tensor `{tensor}` in {path}: {message}")]
    Tensor {
        tensor: String,
        path: PathBuf,
        message: String,
    },
}

/// The safetensors files of one component folder: `<stem>.safetensors`, or the shards listed by
/// `<stem>.safetensors.index.json` (sorted, deduplicated), as `save_pretrained` writes them.
///
/// `stem` is `diffusion_pytorch_model` for diffusers models and `model` for transformers models.
pub fn resolve_safetensors(dir: &Path, stem: &str) -> Result<Vec<PathBuf>, WeightsError> {
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if !index.is_file() {
        return Err(WeightsError::NoWeights {
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| WeightsError::Index {
        path: index.clone(),
        message: e.to_string(),
    })?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let parsed: Index = serde_json::from_str(&text).map_err(|e| WeightsError::Index {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        let path = dir.join(&shard);
        if !path.is_file() {
            return Err(WeightsError::Index {
                path: index.clone(),
                message: format!("shard {shard} is listed but missing from {}", dir.display()),
            });
        }
        files.push(path);
    }
    Ok(files)
}

/// How a model's checkpoint keys relate to its Burn module tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyMap<'a> {
    /// `(regex, replacement)` pairs applied to checkpoint keys before matching (`$1` captures),
    /// e.g. `(r"\.to_out\.0\.", ".to_out.")`. One commented row per rename in each model's
    /// `KEY_REMAP`.
    pub remap: &'a [(&'a str, &'a str)],
    /// Regexes of checkpoint keys that are deliberately not loaded (e.g. training-only tensors).
    pub ignore: &'a [&'a str],
    /// Module names whose parameters stay f32 whatever the compute dtype (diffusers'
    /// `_keep_in_fp32_modules`; see [`crate::pipeline::precision::param_dtype`]).
    pub keep_in_fp32: &'a [&'a str],
}

/// Casts every float tensor as it is materialised to the compute dtype, or to f32 for the
/// modules kept in f32 (bf16 or f32 checkpoints both load into an f32 CPU model or a bf16 CUDA
/// model).
#[derive(Clone)]
struct CastAdapter {
    compute: DType,
    keep_in_fp32: Vec<String>,
}

impl ModuleAdapter for CastAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let is_float = matches!(
            snapshot.dtype,
            DType::F64 | DType::F32 | DType::F16 | DType::BF16
        );
        let target = param_dtype(
            snapshot.path_stack.as_deref().unwrap_or_default(),
            self.compute,
            &self.keep_in_fp32,
        );
        if !is_float || snapshot.dtype == target {
            return snapshot.clone();
        }
        let inner = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            std::rc::Rc::new(move || Ok(inner()?.convert_dtype(target))),
            target,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn get_alternative_param_name(
        &self,
        _param_name: &str,
        _container_type: &str,
    ) -> Option<String> {
        None
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Load `files` into `module`, applying `keys`; float tensors are cast to `dtype` (or f32 under
/// `keys.keep_in_fp32`). See the module docs for the checks.
///
/// # Errors
/// [`WeightsError`] naming the tensor and file for a corrupt file, a missing, unexpected or
/// wrongly shaped tensor.
pub fn load_module<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    files: &[PathBuf],
    keys: KeyMap<'_>,
    dtype: DType,
) -> Result<(), WeightsError> {
    let ignore: Vec<regex::Regex> = keys
        .ignore
        .iter()
        .map(|p| regex::Regex::new(p).expect("ignore patterns are static and valid"))
        .collect();
    let cast = CastAdapter {
        compute: dtype,
        keep_in_fp32: keys.keep_in_fp32.iter().map(|s| s.to_string()).collect(),
    };
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut missing: Option<BTreeSet<String>> = None;
    for path in files {
        let remapper = KeyRemapper::from_patterns(keys.remap.to_vec())
            .expect("remap patterns are static and valid");
        let mut store = SafetensorsStore::from_file(path.clone())
            .with_from_adapter(PyTorchToBurnAdapter.chain(cast.clone()))
            .remap(remapper)
            .allow_partial(true)
            .validate(false);
        let result = module
            .load_from(&mut store)
            .map_err(|e| WeightsError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if let Some(err) = result.errors.first() {
            let (tensor, message) = match err {
                burn_store::ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => (
                    path.clone(),
                    format!(
                        "wrong shape: the model expects {:?}, the file has {:?}",
                        expected, found
                    ),
                ),
                burn_store::ApplyError::DTypeMismatch {
                    path,
                    expected,
                    found,
                } => (
                    path.clone(),
                    format!("wrong dtype: expected {expected:?}, found {found:?}"),
                ),
                burn_store::ApplyError::AdapterError { path, message }
                | burn_store::ApplyError::LoadError { path, message } => {
                    (path.clone(), message.clone())
                }
            };
            return Err(WeightsError::Tensor {
                tensor,
                path: path.clone(),
                message,
            });
        }
        if let Some(tensor) = result
            .unused
            .iter()
            .find(|k| !ignore.iter().any(|re| re.is_match(k)))
        {
            return Err(WeightsError::Unexpected {
                tensor: tensor.clone(),
                path: path.clone(),
            });
        }
        applied.extend(result.applied.iter().cloned());
        let this_missing: BTreeSet<String> =
            result.missing.iter().map(|(p, _)| p.clone()).collect();
        missing = Some(match missing {
            None => this_missing,
            Some(prev) => prev.intersection(&this_missing).cloned().collect(),
        });
    }
    if let Some(tensor) = missing
        .unwrap_or_default()
        .into_iter()
        .find(|t| !applied.contains(t))
    {
        return Err(WeightsError::Missing {
            tensor,
            files: files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}
