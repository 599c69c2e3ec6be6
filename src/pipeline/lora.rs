//! Per-request LoRA: the request's `lora` field ([`LoraSpec`], [`Loras`]), adapter files
//! ([`LoraAdapter`]: diffusers/PEFT keys, or the original Wan / ComfyUI naming converted as
//! diffusers 0.42.1 `loaders/lora_conversion_utils.py` `_convert_non_diffusers_wan_lora_to_diffusers`
//! does), a by-path cache with a memory budget ([`LoraCache`]) and the merge into a model's
//! Linear weights ([`merge`] / [`MergedWeights::restore`]).
//!
//! Models: Helios (`HeliosLoraLoaderMixin`) and every Wan checkpoint (`WanLoraLoaderMixin`: T2V,
//! I2V/FLF2V, V2V, TI2V; the I2V image cross-attention `attn2.add_k_proj`/`add_v_proj` and the
//! `condition_embedder.image_embedder` are targets where the transformer has them). A two-expert
//! checkpoint (Wan2.2 A14B) takes an adapter into `transformer` by default and into
//! `transformer_2` with [`LoraSpec::load_into_transformer_2`], as diffusers does
//! ([`CheckpointTargets`], [`ExpertAdapters`]). A T2V adapter on an I2V transformer leaves the
//! image projections alone (diffusers' `_maybe_expand_t2v_lora_for_i2v` pads them with zeros).
//!
//! Math (peft 0.21 `LoraLayer`, merged as `fuse_lora` does): for every targeted Linear
//! `W' = W + s·(α/r)·B·A` and `b' = b + s·(α/r)·b_B` with `A [r, in]`, `B [out, r]`, `s` the
//! request's scale and `α/r` the adapter's own factor (original Wan naming: `α/r` is folded into
//! A and B as diffusers does, so a `diff_b` bias is added as `s·diff_b`). The delta is computed in f32 and added to
//! the f32 value of `W`, then cast back to `W`'s dtype. The original tensors are kept and put back
//! after the job ([`MergedWeights::restore`]), so the restore is bit-exact by construction
//! (tests/lora.rs `restore_is_bit_exact_and_jobs_do_not_leak`).
//!
//! Divergence from diffusers: diffusers runs the adapters unmerged (`y = Wx + b + s·B(Ax)`); the
//! merged form differs by f32 rounding only (tests/lora.rs pins the whole pipeline ≥ 40 dB).
//! `.diff` full-weight deltas of the original Wan format are dropped as diffusers drops them
//! (norm `.diff`/`.diff_b`) or ignores them (any other `.diff`), except `head.head.diff`, which
//! is not supported here (a 400 naming the key).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use serde::{Deserialize, Deserializer, Serialize};

/// One adapter of a request: vLLM-Omni's `lora` object (`name|lora_name|adapter`,
/// `path|lora_path|local_path`, `scale|lora_scale`, `int_id|lora_int_id`).
///
/// At least a `name` or a `path` is needed. On the server a path must lie inside `lora_dirs` and
/// a bare name must be an adapter of `[lora] preload`; admission rewrites `path` to the
/// canonical file so the stored job runs exactly that file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// The adapter's name (defaults to the file stem when only a path is given).
    #[serde(default, alias = "lora_name", alias = "adapter")]
    pub name: Option<String>,
    /// A `.safetensors` file, or a folder holding `pytorch_lora_weights.safetensors` /
    /// `adapter_model.safetensors`.
    #[serde(default, alias = "lora_path", alias = "local_path")]
    pub path: Option<String>,
    /// The strength `s` of `W + s·(α/r)·B·A` (default 1).
    #[serde(
        default,
        alias = "lora_scale",
        deserialize_with = "lenient_float",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<f64>,
    /// vLLM's adapter id; accepted and echoed, not used (adapters are cached by path).
    #[serde(
        default,
        alias = "lora_int_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub int_id: Option<u64>,
    /// Merge into `transformer_2` (the low-noise expert of a Wan2.2 A14B checkpoint) instead of
    /// `transformer`: diffusers `WanLoraLoaderMixin.load_lora_weights(…, load_into_transformer_2=True)`.
    /// Default false (the adapter goes into `transformer`, as in diffusers); a checkpoint without
    /// `transformer_2` refuses it ([`LoraError::NoTransformer2`]). To adapt both experts, list the
    /// adapter twice, once with this flag (diffusers loads it twice under two names).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub load_into_transformer_2: bool,
}

fn lenient_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("scale must be a number, got {s:?}"))),
        Some(v) => Err(D::Error::custom(format!("scale must be a number, got {v}"))),
    }
}

impl LoraSpec {
    /// The scale, 1 when unset.
    pub fn scale(&self) -> f64 {
        self.scale.unwrap_or(1.0)
    }

    /// The name messages use: `name`, else the path, else `?`.
    pub fn label(&self) -> String {
        match (&self.name, &self.path) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => "?".into(),
        }
    }

    /// `PATH[:SCALE]` as the CLI's `--lora` takes it (`a.safetensors:0.8`); a suffix after the
    /// last `:` that is not a number is part of the path.
    ///
    /// # Errors
    /// An empty path, or a scale that is not finite.
    pub fn from_cli(arg: &str) -> Result<Self, String> {
        let (path, scale) = match arg.rsplit_once(':') {
            Some((p, s)) if s.trim().parse::<f64>().is_ok() => (p, Some(s.trim().parse().unwrap())),
            _ => (arg, None),
        };
        if path.is_empty() {
            return Err(format!("`{arg}` has no path; use PATH[:SCALE]"));
        }
        if scale.is_some_and(|s: f64| !s.is_finite()) {
            return Err(format!("`{arg}`: the scale must be a finite number"));
        }
        Ok(Self {
            name: None,
            path: Some(path.to_string()),
            scale,
            int_id: None,
            load_into_transformer_2: false,
        })
    }
}

/// The `lora` field: zero or more adapters, combined (their deltas add up). Deserializes from one
/// object, a list of objects, or the JSON text of either (form fields); serializes as a list.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Loras(pub Vec<LoraSpec>);

impl<'de> Deserialize<'de> for Loras {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let value = match value {
            serde_json::Value::String(text) => serde_json::from_str(&text)
                .map_err(|e| D::Error::custom(format!("not valid JSON: {e}")))?,
            v => v,
        };
        let list = match value {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(items) => items,
            v @ serde_json::Value::Object(_) => vec![v],
            v => {
                return Err(D::Error::custom(format!(
                    "expected an object {{\"name\", \"path\", \"scale\"}} or a list of them, got {v}"
                )));
            }
        };
        list.into_iter()
            .map(|v| serde_json::from_value::<LoraSpec>(v).map_err(D::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(Loras)
    }
}

impl Loras {
    /// No adapter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An adapter file that cannot be used; every variant names the adapter and, where one is at
/// fault, the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    /// The file cannot be read or is not safetensors.
    #[error("LoRA adapter `{adapter}` ({path}): {message}")]
    File {
        adapter: String,
        path: PathBuf,
        message: String,
    },
    /// One key is wrong: maps to no module, wrong rank/shape/dtype, non-finite values, a missing
    /// partner matrix.
    #[error("LoRA adapter `{adapter}`: key `{key}`: {message}")]
    Key {
        adapter: String,
        key: String,
        message: String,
    },
    /// `load_into_transformer_2` on a checkpoint with one transformer (diffusers raises
    /// `AttributeError` there).
    #[error(
        "LoRA adapter `{adapter}`: load_into_transformer_2 needs a two-expert checkpoint (Wan2.2 A14B); this one has no transformer_2"
    )]
    NoTransformer2 { adapter: String },
}

/// One adapted Linear of an adapter, with its diffusers module path
/// (`blocks.0.attn1.to_out.0`, no `transformer.` prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLayer {
    pub module: String,
    /// The `lora_A` key as written in the file (for messages).
    pub key: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `lora_A.weight`, `[rank, in_features]` row-major.
    pub a: Vec<f32>,
    /// `lora_B.weight`, `[out_features, rank]` row-major.
    pub b: Vec<f32>,
    /// `lora_B.bias` (`diff_b`), `[out_features]`.
    pub bias: Option<Vec<f32>>,
    /// `α/r` (`α/√r` with rslora).
    pub factor: f32,
}

/// A parsed adapter file: the layers it adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub name: String,
    pub path: PathBuf,
    pub layers: Vec<LoraLayer>,
}

/// Linear modules an adapter may target: diffusers module path → `(out_features, in_features)`.
pub type LoraTargets = BTreeMap<String, (usize, usize)>;

/// The LoRA targets of a checkpoint: its `transformer`'s Linear modules and, on a two-expert
/// checkpoint (Wan2.2 A14B), `transformer_2`'s (diffusers `WanLoraLoaderMixin._lora_loadable_modules`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointTargets {
    pub transformer: LoraTargets,
    /// `None`: the checkpoint has one transformer.
    pub transformer_2: Option<LoraTargets>,
}

impl CheckpointTargets {
    /// Check `adapter` against the transformer `spec` sends it to
    /// ([`LoraSpec::load_into_transformer_2`]).
    ///
    /// # Errors
    /// [`LoraError::NoTransformer2`]; as [`LoraAdapter::check_targets`].
    pub fn check(&self, adapter: &LoraAdapter, spec: &LoraSpec) -> Result<(), LoraError> {
        match (spec.load_into_transformer_2, &self.transformer_2) {
            (false, _) => adapter.check_targets(&self.transformer),
            (true, Some(t)) => adapter.check_targets(t),
            (true, None) => Err(LoraError::NoTransformer2 {
                adapter: adapter.name.clone(),
            }),
        }
    }
}

/// The adapters of a request with their scales, per transformer: `[transformer, transformer_2]`.
pub type ExpertAdapters = [Vec<(Arc<LoraAdapter>, f64)>; 2];

/// The safetensors file of an adapter path: the file itself, or inside a folder
/// `pytorch_lora_weights.safetensors` (diffusers) or `adapter_model.safetensors` (PEFT).
pub fn adapter_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        for name in [
            "pytorch_lora_weights.safetensors",
            "adapter_model.safetensors",
        ] {
            if path.join(name).is_file() {
                return path.join(name);
            }
        }
        return path.join("pytorch_lora_weights.safetensors");
    }
    path.to_path_buf()
}

struct RawTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl LoraAdapter {
    /// Read and check the adapter at `path` (see [`adapter_file`]); `name` labels messages.
    ///
    /// # Errors
    /// [`LoraError::File`] for an unreadable or non-safetensors file; [`LoraError::Key`] for a key
    /// of another component or format, a non-float or non-finite tensor, an `A` without `B` (or
    /// the reverse), ranks or shapes that disagree.
    pub fn read(path: &Path, name: &str) -> Result<Self, LoraError> {
        let file = adapter_file(path);
        let file_err = |message: String| LoraError::File {
            adapter: name.to_string(),
            path: file.clone(),
            message,
        };
        let bytes = std::fs::read(&file).map_err(|e| file_err(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let key_err = |key: &str, message: String| LoraError::Key {
            adapter: name.to_string(),
            key: key.to_string(),
            message,
        };
        let mut raw: BTreeMap<String, RawTensor> = BTreeMap::new();
        for (key, view) in st.tensors() {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(key_err(
                        &key,
                        format!("dtype {other:?} is not a float (F32, F16, BF16)"),
                    ));
                }
            };
            if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
                return Err(key_err(&key, format!("holds a non-finite value ({bad})")));
            }
            raw.insert(
                key,
                RawTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let peft_meta = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
            .map(|text| PeftMeta::parse(text).map_err(&file_err))
            .transpose()?;
        let original = raw.keys().any(|k| k.starts_with("diffusion_model."));
        let layers = if original {
            convert_wan_original(raw, name)?
        } else {
            peft_layers(raw, peft_meta.as_ref(), name)?
        };
        if layers.is_empty() {
            return Err(file_err("holds no LoRA matrices (lora_A / lora_B)".into()));
        }
        Ok(Self {
            name: name.to_string(),
            path: file,
            layers,
        })
    }

    /// Bytes of host memory the adapter holds (the cache's budget unit).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 4 * (l.a.len() + l.b.len() + l.bias.as_ref().map_or(0, Vec::len)))
            .sum()
    }

    /// Check every layer against the model's Linear modules.
    ///
    /// # Errors
    /// [`LoraError::Key`] naming the first key whose module is not a target or whose shape does
    /// not fit it.
    pub fn check_targets(&self, targets: &LoraTargets) -> Result<(), LoraError> {
        for l in &self.layers {
            let err = |message: String| LoraError::Key {
                adapter: self.name.clone(),
                key: l.key.clone(),
                message,
            };
            let Some(&(out, inp)) = targets.get(&l.module) else {
                return Err(err(format!(
                    "module `{}` is not a Linear of this model (e.g. blocks.0.attn1.to_q)",
                    l.module
                )));
            };
            if (out, inp) != (l.out_features, l.in_features) {
                return Err(err(format!(
                    "shape: B·A is [{}, {}] but `{}` is [{out}, {inp}] (out, in)",
                    l.out_features, l.in_features, l.module
                )));
            }
        }
        Ok(())
    }
}

/// The parts of diffusers' `lora_adapter_metadata` header that change the factor `α/r`.
#[derive(Debug, Default)]
struct PeftMeta {
    r: Option<f64>,
    lora_alpha: Option<f64>,
    use_rslora: bool,
    alpha_pattern: BTreeMap<String, f64>,
    rank_pattern: BTreeMap<String, f64>,
}

impl PeftMeta {
    fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("header `lora_adapter_metadata` is not JSON: {e}"))?;
        let get = |k: &str| v.get(format!("transformer.{k}")).or_else(|| v.get(k));
        let map = |k: &str| -> BTreeMap<String, f64> {
            get(k)
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_f64().map(|f| (k.clone(), f)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Self {
            r: get("r").and_then(|x| x.as_f64()),
            lora_alpha: get("lora_alpha").and_then(|x| x.as_f64()),
            use_rslora: get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
            alpha_pattern: map("alpha_pattern"),
            rank_pattern: map("rank_pattern"),
        })
    }

    /// `α/r` of `module` with rank `rank` (peft `LoraLayer.update_layer`: `alpha_pattern` keys
    /// match a module path suffix).
    fn factor(&self, module: &str, rank: usize) -> f32 {
        let pattern = |m: &BTreeMap<String, f64>| {
            m.iter()
                .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
                .map(|(_, v)| *v)
        };
        let alpha = pattern(&self.alpha_pattern)
            .or(self.lora_alpha)
            .unwrap_or(rank as f64);
        let _ = pattern(&self.rank_pattern).or(self.r);
        let r = rank as f64;
        (if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }) as f32
    }
}

/// Layers of a diffusers/PEFT file: `[transformer.]<module>.lora_A.weight`, `.lora_B.weight`,
/// optional `.lora_B.bias` and `.alpha`; α from the metadata header, else `.alpha`, else r.
fn peft_layers(
    mut raw: BTreeMap<String, RawTensor>,
    meta: Option<&PeftMeta>,
    name: &str,
) -> Result<Vec<LoraLayer>, LoraError> {
    let key_err = |key: &str, message: String| LoraError::Key {
        adapter: name.to_string(),
        key: key.to_string(),
        message,
    };
    let a_keys: Vec<String> = raw
        .keys()
        .filter(|k| k.ends_with(".lora_A.weight"))
        .cloned()
        .collect();
    let mut layers = Vec::new();
    for a_key in a_keys {
        let prefix = a_key.trim_end_matches(".lora_A.weight").to_string();
        let module = strip_component(&prefix).map_err(|m| key_err(&a_key, m))?;
        let a = raw.remove(&a_key).expect("listed");
        let b_key = format!("{prefix}.lora_B.weight");
        let b = raw
            .remove(&b_key)
            .ok_or_else(|| key_err(&a_key, format!("has no partner `{b_key}`")))?;
        let bias = raw.remove(&format!("{prefix}.lora_B.bias"));
        let alpha = raw.remove(&format!("{prefix}.alpha"));
        let mut layer = layer_from(module, &a_key, a, b, bias, name)?;
        layer.factor = match (meta, alpha) {
            (Some(m), _) => m.factor(&layer.module, layer.rank),
            (None, Some(al)) => {
                al.data.first().copied().unwrap_or(layer.rank as f32) / layer.rank as f32
            }
            (None, None) => 1.0,
        };
        layers.push(layer);
    }
    if let Some(key) = raw.keys().next() {
        return Err(key_err(
            key,
            "is not a LoRA key (expected `<module>.lora_A.weight`, `.lora_B.weight`, `.lora_B.bias` or `.alpha`)".into(),
        ));
    }
    Ok(layers)
}

/// `transformer.blocks.0…` → `blocks.0…`; other pipeline components are refused.
fn strip_component(prefix: &str) -> Result<String, String> {
    if let Some(rest) = prefix.strip_prefix("transformer.") {
        return Ok(rest.to_string());
    }
    if prefix.starts_with("transformer_2.") {
        // diffusers keeps `transformer.` keys only, whichever expert they go to.
        return Err("targets `transformer_2` by its key prefix; write the keys under `transformer.` and send the adapter with `load_into_transformer_2: true` (diffusers' load_into_transformer_2)".into());
    }
    for other in ["text_encoder.", "vae.", "unet."] {
        if prefix.starts_with(other) {
            return Err(format!(
                "targets `{}`; only the transformer takes LoRA here",
                other.trim_end_matches('.')
            ));
        }
    }
    Ok(prefix.to_string())
}

fn layer_from(
    module: String,
    key: &str,
    a: RawTensor,
    b: RawTensor,
    bias: Option<RawTensor>,
    name: &str,
) -> Result<LoraLayer, LoraError> {
    let err = |message: String| LoraError::Key {
        adapter: name.to_string(),
        key: key.to_string(),
        message,
    };
    let ([rank, inp], [out, rank_b]) = (
        <[usize; 2]>::try_from(a.shape.as_slice())
            .map_err(|_| err(format!("lora_A must be [rank, in], got {:?}", a.shape)))?,
        <[usize; 2]>::try_from(b.shape.as_slice())
            .map_err(|_| err(format!("lora_B must be [out, rank], got {:?}", b.shape)))?,
    );
    if rank != rank_b || rank == 0 {
        return Err(err(format!(
            "rank mismatch: lora_A is {:?} and lora_B is {:?} (lora_A rows must equal lora_B columns)",
            a.shape, b.shape
        )));
    }
    if let Some(bias) = &bias
        && bias.shape != [out]
    {
        return Err(err(format!(
            "lora_B.bias must be [{out}], got {:?}",
            bias.shape
        )));
    }
    Ok(LoraLayer {
        module,
        key: key.to_string(),
        rank,
        in_features: inp,
        out_features: out,
        a: a.data,
        b: b.data,
        bias: bias.map(|t| t.data),
        factor: 1.0,
    })
}

/// The original Wan / ComfyUI naming converted as diffusers'
/// `_convert_non_diffusers_wan_lora_to_diffusers` does: module renames (table below), `.alpha`
/// scales A and B by `α/rank` ([`alpha_scales`]; the bias `diff_b` is not scaled), `diff_b` is
/// the `lora_B.bias`, norm `.diff`/`.diff_b` are dropped, other `.diff` keys ignored. diffusers
/// reads `.alpha` of the block modules only and refuses a file with another (`time_projection`,
/// `head.head`, …); here it is applied wherever it stands.
fn convert_wan_original(
    raw: BTreeMap<String, RawTensor>,
    name: &str,
) -> Result<Vec<LoraLayer>, LoraError> {
    // (original module, diffusers module); `{i}` is the block index.
    const BLOCK: &[(&str, &str)] = &[
        ("self_attn.q", "attn1.to_q"),
        ("self_attn.k", "attn1.to_k"),
        ("self_attn.v", "attn1.to_v"),
        ("self_attn.o", "attn1.to_out.0"),
        ("cross_attn.q", "attn2.to_q"),
        ("cross_attn.k", "attn2.to_k"),
        ("cross_attn.v", "attn2.to_v"),
        ("cross_attn.o", "attn2.to_out.0"),
        ("cross_attn.k_img", "attn2.add_k_proj"),
        ("cross_attn.v_img", "attn2.add_v_proj"),
        ("ffn.0", "ffn.net.0.proj"),
        ("ffn.2", "ffn.net.2"),
    ];
    const TOP: &[(&str, &str)] = &[
        ("time_projection.1", "condition_embedder.time_proj"),
        (
            "text_embedding.0",
            "condition_embedder.text_embedder.linear_1",
        ),
        (
            "text_embedding.2",
            "condition_embedder.text_embedder.linear_2",
        ),
        (
            "time_embedding.0",
            "condition_embedder.time_embedder.linear_1",
        ),
        (
            "time_embedding.2",
            "condition_embedder.time_embedder.linear_2",
        ),
        (
            "img_emb.proj.1",
            "condition_embedder.image_embedder.ff.net.0.proj",
        ),
        (
            "img_emb.proj.3",
            "condition_embedder.image_embedder.ff.net.2",
        ),
        ("head.head", "proj_out"),
    ];
    let key_err = |key: &str, message: String| LoraError::Key {
        adapter: name.to_string(),
        key: key.to_string(),
        message,
    };
    // Group by original module: the key minus its LoRA suffix.
    let mut groups: BTreeMap<String, HashMap<&'static str, (String, RawTensor)>> = BTreeMap::new();
    for (key, t) in raw {
        let rest = key
            .strip_prefix("diffusion_model.")
            .ok_or_else(|| key_err(&key, "mixes the original Wan naming with other keys".into()))?;
        let found = [
            (".lora_down.weight", "down"),
            (".lora_A.weight", "down"),
            (".lora_up.weight", "up"),
            (".lora_B.weight", "up"),
            (".diff_b", "diff_b"),
            (".diff", "diff"),
            (".alpha", "alpha"),
        ]
        .iter()
        .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m.to_string(), *part)));
        let Some((module, part)) = found else {
            // diffusers ignores leftover `.diff*` keys (e.g. `blocks.N.diff_m`), logging them.
            if rest.contains(".diff") {
                tracing::info!(adapter = name, key = %key, "ignoring full-weight `.diff` key");
                continue;
            }
            return Err(key_err(&key, "is not a LoRA key of the original Wan format (lora_down/lora_up/alpha/diff_b/diff)".into()));
        };
        // diffusers: norm `.diff`/`.diff_b` are "just zeroed values" and dropped; any other
        // `.diff` (e.g. `blocks.N.diff_m`, handled above as module `blocks.N` + part) is ignored.
        if (part == "diff" || part == "diff_b") && module.contains("norm") {
            continue;
        }
        groups.entry(module).or_default().insert(part, (key, t));
    }
    let mut layers = Vec::new();
    for (module, mut parts) in groups {
        let mapped = map_wan_module(&module, BLOCK, TOP);
        let down = parts.remove("down");
        let up = parts.remove("up");
        let diff_b = parts.remove("diff_b");
        let alpha = parts.remove("alpha");
        let diff = parts.remove("diff");
        if let Some((key, _)) = &diff
            && down.is_none()
        {
            if module == "head.head" {
                return Err(key_err(
                    key,
                    "a full-weight `head.head.diff` without lora_down/up is not supported".into(),
                ));
            }
            // Ignored as diffusers ignores it (logged only there).
            tracing::info!(adapter = name, key = %key, "ignoring full-weight `.diff` key");
            if up.is_none() && diff_b.is_none() {
                continue;
            }
        }
        let Some(target) = mapped else {
            let key = [down, up, diff_b, alpha]
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .next()
                .unwrap_or(module.clone());
            return Err(key_err(
                &key,
                format!("`{module}` maps to no module of the diffusers Wan/Helios transformer"),
            ));
        };
        match (down, up) {
            (Some((dk, d)), Some((_, u))) => {
                let bias = diff_b.map(|(_, t)| t);
                let mut layer = layer_from(target, &dk, d, u, bias, name)?;
                if let Some((_, al)) = alpha {
                    // diffusers `get_alpha_scales`: α/r goes into the matrices (A·scale_down,
                    // B·scale_up, f32 products as torch's tensor × Python float), not into
                    // `diff_b`, which stays unscaled.
                    let alpha = al.data.first().copied().unwrap_or(layer.rank as f32);
                    let (down, up) = alpha_scales(f64::from(alpha), layer.rank);
                    layer.a.iter_mut().for_each(|v| *v *= down as f32);
                    layer.b.iter_mut().for_each(|v| *v *= up as f32);
                }
                layers.push(layer);
            }
            (Some((k, _)), None) | (None, Some((k, _))) => {
                return Err(key_err(&k, "has no lora_down/lora_up partner".into()));
            }
            (None, None) => {
                // diffusers drops a bias-only `time_projection` (AccVideo) and keeps others as
                // a bias-only adapter; a bias-only update is `b' = b + s·diff_b`.
                if let Some((k, _)) = diff_b {
                    if module.starts_with("time_projection") {
                        continue;
                    }
                    return Err(key_err(
                        &k,
                        "a `diff_b` without lora_down/lora_up is not supported".into(),
                    ));
                }
                if let Some((k, _)) = alpha {
                    return Err(key_err(&k, "an `alpha` without lora_down/lora_up".into()));
                }
            }
        }
    }
    Ok(layers)
}

/// diffusers `_convert_non_diffusers_wan_lora_to_diffusers.get_alpha_scales`: `α/r` split into
/// `(scale_down, scale_up)` with `scale_down · scale_up = α/r`.
fn alpha_scales(alpha: f64, rank: usize) -> (f64, f64) {
    let scale = alpha / rank as f64;
    let (mut down, mut up) = (scale, 1.0);
    while down * 2.0 < up {
        down *= 2.0;
        up /= 2.0;
    }
    (down, up)
}

fn map_wan_module(module: &str, block: &[(&str, &str)], top: &[(&str, &str)]) -> Option<String> {
    if let Some(rest) = module.strip_prefix("blocks.") {
        let (i, sub) = rest.split_once('.')?;
        i.parse::<usize>().ok()?;
        let (_, d) = block.iter().find(|(o, _)| *o == sub)?;
        return Some(format!("blocks.{i}.{d}"));
    }
    top.iter()
        .find(|(o, _)| *o == module)
        .map(|(_, d)| d.to_string())
}

/// Parsed adapters by canonical path, evicting the least recently used beyond `budget_bytes`.
#[derive(Debug)]
pub struct LoraCache {
    budget_bytes: usize,
    entries: VecDeque<(PathBuf, Arc<LoraAdapter>)>,
}

impl Default for LoraCache {
    fn default() -> Self {
        Self::new(1 << 30)
    }
}

impl LoraCache {
    /// A cache holding at most `budget_bytes` of adapter data (the last adapter read always
    /// stays, whatever its size).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            entries: VecDeque::new(),
        }
    }

    /// The adapter of `spec` (its `path` must be set), read on first use.
    ///
    /// # Errors
    /// As [`LoraAdapter::read`]; a spec without a path is a [`LoraError::File`].
    pub fn get(&mut self, spec: &LoraSpec) -> Result<Arc<LoraAdapter>, LoraError> {
        let label = spec.label();
        let path = PathBuf::from(spec.path.clone().ok_or_else(|| LoraError::File {
            adapter: label.clone(),
            path: PathBuf::new(),
            message: "no path: name a preloaded adapter or give its file".into(),
        })?);
        if let Some(i) = self.entries.iter().position(|(p, _)| *p == path) {
            let entry = self.entries.remove(i).expect("found");
            let adapter = entry.1.clone();
            self.entries.push_back(entry);
            return Ok(adapter);
        }
        let adapter = Arc::new(LoraAdapter::read(&path, &label)?);
        self.entries.push_back((path, adapter.clone()));
        while self.entries.len() > 1 && self.bytes() > self.budget_bytes {
            self.entries.pop_front();
        }
        Ok(adapter)
    }

    /// The adapters of `loras` (read on first use) with their scales, split by
    /// [`LoraSpec::load_into_transformer_2`].
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_all(&mut self, loras: &Loras) -> Result<ExpertAdapters, LoraError> {
        let mut out: ExpertAdapters = Default::default();
        for spec in &loras.0 {
            out[usize::from(spec.load_into_transformer_2)].push((self.get(spec)?, spec.scale()));
        }
        Ok(out)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, a)| a.bytes()).sum()
    }

    /// How many adapters are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The Linear modules of `module` as LoRA targets: every rank-2 `…weight` parameter, by its
/// diffusers module path (Burn path through `unmap`, e.g. `blocks.0.attn1.to_out` →
/// `blocks.0.attn1.to_out.0`), with `(out, in)` (Burn stores `[in, out]`).
pub fn targets_of<B: Backend, M: Module<B>>(module: &M, unmap: fn(&str) -> String) -> LoraTargets {
    struct Collect {
        path: Vec<String>,
        out: LoraTargets,
        unmap: fn(&str) -> String,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 2 && self.path.last().is_some_and(|p| p == "weight") {
                let dims = param.val().dims();
                let burn_module = self.path[..self.path.len() - 1].join(".");
                self.out
                    .insert((self.unmap)(&burn_module), (dims[1], dims[0]));
            }
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        out: LoraTargets::new(),
        unmap,
    };
    module.visit(&mut c);
    c.out
}

/// The tensors a merge replaced, to put back after the job.
pub struct MergedWeights<B: Backend> {
    originals: HashMap<String, TensorPrimitive<B>>,
}

impl<B: Backend> MergedWeights<B> {
    /// How many parameters were changed.
    pub fn len(&self) -> usize {
        self.originals.len()
    }

    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// Put the original tensors back into `module` (the same tensors, so bit-exact).
    pub fn restore<M: Module<B>>(self, module: M) -> M {
        struct Restore<B: Backend> {
            path: Vec<String>,
            originals: HashMap<String, TensorPrimitive<B>>,
        }
        impl<B: Backend> ModuleMapper<B> for Restore<B> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                match self.originals.remove(&self.path.join(".")) {
                    Some(orig) => param.map(|_| Tensor::from_primitive(orig)),
                    None => param,
                }
            }
        }
        let mut r = Restore {
            path: Vec::new(),
            originals: self.originals,
        };
        let module = module.map(&mut r);
        debug_assert!(r.originals.is_empty(), "restored every merged tensor");
        module
    }
}

/// Merge `adapters` (each with its request scale) into `module`'s Linear weights:
/// `W += s·(α/r)·(B·A)ᵀ` in Burn's `[in, out]` layout, `b += s·(α/r)·b_B`. `remap` turns a
/// diffusers parameter key (`blocks.0.attn1.to_out.0.weight`) into the Burn path. Returns the
/// module and the originals for [`MergedWeights::restore`].
///
/// # Errors
/// [`LoraError::Key`] when a layer's module is not a Linear of `module` or its shape differs
/// (checked before anything is changed).
pub fn merge<B: Backend, M: Module<B>>(
    module: M,
    adapters: &[(Arc<LoraAdapter>, f64)],
    unmap: fn(&str) -> String,
    remap: fn(&str) -> String,
    device: &B::Device,
) -> Result<(M, MergedWeights<B>), LoraError> {
    let targets = targets_of::<B, M>(&module, unmap);
    for (a, _) in adapters {
        a.check_targets(&targets)?;
    }
    // Sum the deltas per parameter (several adapters may touch one Linear), in f32.
    let mut weights: HashMap<String, Tensor<B, 2>> = HashMap::new();
    let mut biases: HashMap<String, Tensor<B, 1>> = HashMap::new();
    for (adapter, scale) in adapters {
        for l in &adapter.layers {
            let s = (*scale as f32) * l.factor;
            let a = Tensor::<B, 2>::from_data(
                TensorData::new(l.a.clone(), [l.rank, l.in_features]),
                (device, DType::F32),
            );
            let b = Tensor::<B, 2>::from_data(
                TensorData::new(l.b.clone(), [l.out_features, l.rank]),
                (device, DType::F32),
            );
            // (B·A)ᵀ = Aᵀ·Bᵀ: [in, r]·[r, out] = [in, out], Burn's Linear layout.
            let delta = a.transpose().matmul(b.transpose()).mul_scalar(s);
            let key = remap(&format!("{}.weight", l.module));
            let sum = match weights.remove(&key) {
                Some(prev) => prev + delta,
                None => delta,
            };
            weights.insert(key, sum);
            if let Some(bias) = &l.bias {
                let db = Tensor::<B, 1>::from_data(
                    TensorData::new(bias.clone(), [l.out_features]),
                    (device, DType::F32),
                )
                .mul_scalar(s);
                let key = remap(&format!("{}.bias", l.module));
                let sum = match biases.remove(&key) {
                    Some(prev) => prev + db,
                    None => db,
                };
                biases.insert(key, sum);
            }
        }
    }
    struct Merge<B: Backend> {
        path: Vec<String>,
        weights: HashMap<String, Tensor<B, 2>>,
        biases: HashMap<String, Tensor<B, 1>>,
        originals: HashMap<String, TensorPrimitive<B>>,
    }
    impl<B: Backend> ModuleMapper<B> for Merge<B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let key = self.path.join(".");
            let delta = match D {
                2 => self.weights.remove(&key).map(Tensor::into_primitive),
                1 => self.biases.remove(&key).map(Tensor::into_primitive),
                _ => None,
            };
            let Some(delta) = delta else {
                return param;
            };
            let delta = Tensor::<B, D>::from_primitive(delta);
            let originals = &mut self.originals;
            param.map(|w| {
                let dtype = w.dtype();
                originals.insert(key, w.clone().into_primitive());
                (w.cast(DType::F32) + delta).cast(dtype)
            })
        }
    }
    let mut m = Merge {
        path: Vec::new(),
        weights,
        biases,
        originals: HashMap::new(),
    };
    let module = module.map(&mut m);
    if let Some(key) = m.weights.keys().chain(m.biases.keys()).next() {
        // A Linear without a bias got a `lora_B.bias`: put everything back and refuse.
        let key = key.clone();
        let _ = MergedWeights {
            originals: m.originals,
        }
        .restore(module);
        return Err(LoraError::Key {
            adapter: adapters
                .iter()
                .map(|(a, _)| a.name.clone())
                .collect::<Vec<_>>()
                .join("+"),
            key,
            message: "the model has no such parameter (a bias for a Linear without one?)".into(),
        });
    }
    Ok((
        module,
        MergedWeights {
            originals: m.originals,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lora_field_takes_objects_lists_and_json_text_with_aliases() {
        let one: Loras =
            serde_json::from_str(r#"{"lora_name":"a","local_path":"/x/a.safetensors","lora_scale":"0.5","lora_int_id":3}"#)
                .unwrap();
        assert_eq!(
            one.0,
            vec![LoraSpec {
                name: Some("a".into()),
                path: Some("/x/a.safetensors".into()),
                scale: Some(0.5),
                int_id: Some(3),
                load_into_transformer_2: false,
            }]
        );
        let text: Loras = serde_json::from_value(serde_json::json!(
            r#"[{"adapter":"a"},{"path":"b","scale":2}]"#
        ))
        .unwrap();
        assert_eq!(text.0.len(), 2);
        assert_eq!(text.0[1].scale(), 2.0);
        let two: Loras =
            serde_json::from_str(r#"{"name":"lo","load_into_transformer_2":true}"#).unwrap();
        assert!(two.0[0].load_into_transformer_2);
        assert!(
            !serde_json::to_string(&one)
                .unwrap()
                .contains("transformer_2")
        );
        assert!(serde_json::from_str::<Loras>(r#"{"nme":"a"}"#).is_err());
        assert!(serde_json::from_str::<Loras>("3").is_err());
        assert!(serde_json::from_str::<Loras>(r#"{"scale":1,"lora_scale":2,"name":"a"}"#).is_err());
    }

    #[test]
    fn cli_lora_splits_an_optional_scale() {
        let s = LoraSpec::from_cli("dir/a.safetensors:0.8").unwrap();
        assert_eq!(
            (s.path.as_deref(), s.scale),
            (Some("dir/a.safetensors"), Some(0.8))
        );
        let s = LoraSpec::from_cli("C:/x/a.safetensors").unwrap();
        assert_eq!(
            (s.path.as_deref(), s.scale),
            (Some("C:/x/a.safetensors"), None)
        );
        assert!(LoraSpec::from_cli(":1").is_err());
    }

    #[test]
    fn wan_module_names_map_like_diffusers() {
        let m = |s: &str| {
            map_wan_module(
                s,
                &[("self_attn.o", "attn1.to_out.0")],
                &[("head.head", "proj_out")],
            )
        };
        assert_eq!(
            m("blocks.3.self_attn.o").as_deref(),
            Some("blocks.3.attn1.to_out.0")
        );
        assert_eq!(m("head.head").as_deref(), Some("proj_out"));
        assert_eq!(m("blocks.x.self_attn.o"), None);
        assert_eq!(m("blocks.1.modulation"), None);
    }
}
