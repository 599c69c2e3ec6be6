//! Which LoRA adapters a request may use: files inside `lora_dirs` of serve.toml, or the
//! adapters of `[lora] preload` by name. Admission rewrites each adapter of the resolved request
//! to its canonical file (so the stored job runs exactly that file), reads it and checks it
//! against the checkpoint's Linear modules; any failure is a 400 naming `lora`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ApiError;
use crate::pipeline::generator::Generator;
use crate::pipeline::lora::{CheckpointTargets, LoraAdapter, LoraSpec, Loras};

/// `[lora]` of serve.toml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Adapters read and checked at start-up, addressable by `name` in requests (`{"name": …}`);
    /// each needs a `name` and a `path` (inside `lora_dirs` or not: the operator wrote it), and
    /// may set a default `scale`.
    #[serde(default)]
    pub preload: Vec<LoraSpec>,
}

/// The resolved rules (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct LoraPolicy {
    /// Canonical `lora_dirs`.
    pub dirs: Vec<PathBuf>,
    /// `[lora] preload` with canonical paths.
    pub preload: Vec<LoraSpec>,
    /// The checkpoint's Linear modules (`transformer`, and `transformer_2` of a two-expert one).
    pub targets: CheckpointTargets,
}

impl LoraPolicy {
    /// Canonicalize `dirs`, read and check every preloaded adapter against the checkpoint `model`.
    ///
    /// # Errors
    /// A message naming the folder or adapter that cannot be used.
    pub fn new(dirs: &[PathBuf], section: &LoraSection, model: &Path) -> Result<Self, String> {
        let dirs = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| format!("lora_dirs: {}: {e}", d.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let targets = match section.preload.is_empty() && dirs.is_empty() {
            true => CheckpointTargets::default(),
            false => Generator::lora_targets_of(model).map_err(|e| e.to_string())?,
        };
        let mut preload = Vec::new();
        for spec in &section.preload {
            let (Some(name), Some(path)) = (&spec.name, &spec.path) else {
                return Err(format!(
                    "[lora] preload: each adapter needs a `name` and a `path` ({spec:?})"
                ));
            };
            let canonical = std::fs::canonicalize(path)
                .map_err(|e| format!("[lora] preload `{name}`: {path}: {e}"))?;
            LoraAdapter::read(&canonical, name)
                .and_then(|a| targets.check(&a, spec))
                .map_err(|e| format!("[lora] preload: {e}"))?;
            preload.push(LoraSpec {
                path: Some(canonical.display().to_string()),
                ..spec.clone()
            });
        }
        Ok(Self {
            dirs,
            preload,
            targets,
        })
    }

    /// Resolve every adapter of `loras` to a canonical, allowed, valid file (in place).
    ///
    /// # Errors
    /// 400 naming `lora`: an unknown name, a path outside `lora_dirs` (or no `lora_dirs`), a
    /// missing file, a scale that is not finite, or an adapter that does not fit the model (the
    /// message names the adapter and the key).
    pub fn resolve(&self, loras: &mut Loras) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::invalid("lora", m);
        for spec in &mut loras.0 {
            if spec.scale.is_some_and(|s| !s.is_finite()) {
                return Err(bad(format!(
                    "adapter `{}`: scale must be finite",
                    spec.label()
                )));
            }
            match (&spec.path, &spec.name) {
                (Some(path), _) => {
                    let canonical = self.allowed(path).map_err(bad)?;
                    spec.path = Some(canonical.display().to_string());
                }
                (None, Some(name)) => {
                    let known = self
                        .preload
                        .iter()
                        .find(|p| p.name.as_deref() == Some(name.as_str()))
                        .ok_or_else(|| {
                            let names: Vec<&str> = self
                                .preload
                                .iter()
                                .filter_map(|p| p.name.as_deref())
                                .collect();
                            bad(format!(
                                "adapter `{name}` is not preloaded on this server (preloaded: {}); send its `path` inside lora_dirs instead",
                                if names.is_empty() { "none".to_string() } else { names.join(", ") }
                            ))
                        })?;
                    spec.path = known.path.clone();
                    spec.scale = spec.scale.or(known.scale);
                    spec.load_into_transformer_2 |= known.load_into_transformer_2;
                }
                (None, None) => {
                    return Err(bad(
                        "each adapter needs a `name` (preloaded) or a `path`".into()
                    ));
                }
            }
            let path = PathBuf::from(spec.path.as_deref().expect("set above"));
            LoraAdapter::read(&path, &spec.label())
                .and_then(|a| self.targets.check(&a, spec))
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    /// `path` (absolute, or relative to one of `lora_dirs`) as a canonical file inside
    /// `lora_dirs`.
    fn allowed(&self, path: &str) -> Result<PathBuf, String> {
        if self.dirs.is_empty() {
            return Err(format!(
                "`{path}`: this server takes no adapter paths (no `lora_dirs` in its config); name a preloaded adapter instead"
            ));
        }
        let p = Path::new(path);
        let candidates: Vec<PathBuf> = match p.is_absolute() {
            true => vec![p.to_path_buf()],
            false => self.dirs.iter().map(|d| d.join(p)).collect(),
        };
        for c in candidates {
            let Ok(canonical) = std::fs::canonicalize(&c) else {
                continue;
            };
            if self.dirs.iter().any(|d| canonical.starts_with(d)) {
                return Ok(canonical);
            }
            return Err(format!(
                "`{path}` is outside this server's lora_dirs ({})",
                self.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(format!("`{path}`: no such adapter file in lora_dirs"))
    }
}
