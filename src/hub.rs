//! Models by name, as vLLM-Omni users start theirs (`vllm serve BestWishYsh/Helios-Distilled`):
//! a local diffusers-format folder, or a Hugging Face repo id `org/name` with an optional
//! `@revision` (branch, tag or commit; default `main`).
//!
//! A repo id is looked up in the Hugging Face cache layout that `huggingface-cli download` and
//! every `huggingface_hub` client share: `<cache>/models--org--name/refs/<revision>` holds a
//! commit hash, `snapshots/<commit>/` the files (symlinks into `blobs/`). The cache is
//! `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub` (huggingface_hub's order). A repo that is not cached is
//! downloaded with the `hf-hub` crate, with progress bars, unless `HF_HUB_OFFLINE` is set
//! (`HF_TOKEN` for gated or private repos, `HF_ENDPOINT` for a mirror); with no network the
//! error says so in one line.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

/// Where a model name led.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The checkpoint folder (a snapshot folder for a repo id).
    pub dir: PathBuf,
    /// The name to serve it under: the repo id (without `@revision`), or the folder's name.
    pub name: String,
}

/// A model name that leads nowhere.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Neither a folder nor a repo id.
    #[error(
        "model `{0}` is not a folder and not a Hugging Face repo id (org/name[@revision]); pass a \
         diffusers-format checkpoint folder or a repo id"
    )]
    NotAModel(String),
    /// Not cached, and downloading is off (`HF_HUB_OFFLINE`).
    #[error(
        "model `{id}` (revision {revision}) is not in the Hugging Face cache at {cache} and \
         HF_HUB_OFFLINE is set; download it first (`huggingface-cli download {id}`) or pass a \
         checkpoint folder"
    )]
    NotCached {
        id: String,
        revision: String,
        cache: String,
    },
    /// Not cached, and the download failed.
    #[error(
        "model `{id}` is not in the Hugging Face cache at {cache} and downloading it failed: \
         {message}"
    )]
    Download {
        id: String,
        cache: String,
        message: String,
    },
}

/// The Hugging Face hub cache folder, read through `env` (huggingface_hub's order).
pub fn cache_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(dir) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(dir);
    }
    if let Some(home) = set("HF_HOME") {
        return Path::new(&home).join("hub");
    }
    let home = set("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/huggingface/hub")
}

/// `org/name` or `org/name@revision` → (id, revision); `None` when `spec` is not shaped like
/// a repo id.
pub fn parse_repo_id(spec: &str) -> Option<(String, String)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match id.split_once('/') {
        Some((org, name)) if ok(org) && ok(name) => Some((id.to_string(), revision.to_string())),
        _ => None,
    }
}

/// Resolve a model name with the process environment (see the module docs).
///
/// # Errors
/// [`HubError`], one line saying what to do.
pub fn locate(spec: &str) -> Result<Located, HubError> {
    locate_with(spec, |k| std::env::var(k).ok())
}

/// [`locate`] with the environment read through `env`.
///
/// # Errors
/// As [`locate`].
pub fn locate_with(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<Located, HubError> {
    let path = Path::new(spec);
    if path.is_dir() {
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| spec.to_string());
        return Ok(Located {
            dir: path.to_path_buf(),
            name,
        });
    }
    let Some((id, revision)) = parse_repo_id(spec) else {
        return Err(HubError::NotAModel(spec.to_string()));
    };
    let cache = cache_dir(&env);
    let located = |dir: PathBuf| Located {
        dir,
        name: id.clone(),
    };
    if let Some(dir) = cached_snapshot(&cache, &id, &revision) {
        return Ok(located(dir));
    }
    let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
        ["1", "on", "yes", "true"].contains(&v.trim().to_ascii_lowercase().as_str())
    });
    if offline {
        return Err(HubError::NotCached {
            id,
            revision,
            cache: cache.display().to_string(),
        });
    }
    let hub = Hub {
        endpoint: env("HF_ENDPOINT").filter(|v| !v.trim().is_empty()),
        token: env("HF_TOKEN").filter(|v| !v.trim().is_empty()),
    };
    download(&cache, &id, &revision, hub).map(located)
}

/// The snapshot folder of `id` at `revision` when the cache holds its `model_index.json`.
fn cached_snapshot(cache: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    if let Some(index) = Cache::new(cache.to_path_buf())
        .repo(repo.clone())
        .get("model_index.json")
    {
        return index.parent().map(Path::to_path_buf);
    }
    // A commit hash has no `refs/` entry: its snapshot folder is named after it.
    let snapshot = cache
        .join(repo.folder_name())
        .join("snapshots")
        .join(revision);
    snapshot
        .join("model_index.json")
        .is_file()
        .then_some(snapshot)
}

/// Where to download from, as huggingface_hub reads it: `HF_ENDPOINT` (a mirror) and
/// `HF_TOKEN` (gated or private repos).
struct Hub {
    endpoint: Option<String>,
    token: Option<String>,
}

/// Download every file of the repo into the cache (progress bars on stderr).
fn download(cache: &Path, id: &str, revision: &str, hub: Hub) -> Result<PathBuf, HubError> {
    let err = |e: hf_hub::api::sync::ApiError| HubError::Download {
        id: id.to_string(),
        cache: cache.display().to_string(),
        message: e.to_string(),
    };
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_progress(true);
    if let Some(endpoint) = hub.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if hub.token.is_some() {
        builder = builder.with_token(hub.token);
    }
    let api = builder.build().map_err(err)?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo.info().map_err(err)?;
    let mut index = None;
    for file in &info.siblings {
        let path = repo.get(&file.rfilename).map_err(err)?;
        if file.rfilename == "model_index.json" {
            index = path.parent().map(Path::to_path_buf);
        }
    }
    index.ok_or_else(|| HubError::Download {
        id: id.to_string(),
        cache: cache.display().to_string(),
        message: "the repo has no model_index.json (not a diffusers pipeline)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_revisions_parse() {
        assert_eq!(
            parse_repo_id("BestWishYsh/Helios-Distilled"),
            Some(("BestWishYsh/Helios-Distilled".into(), "main".into()))
        );
        assert_eq!(
            parse_repo_id("org/name@v1.0"),
            Some(("org/name".into(), "v1.0".into()))
        );
        for bad in ["name", "/abs/path", "a/b/c", "../x", "org/", "org/name@"] {
            assert_eq!(parse_repo_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_dir(env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir(env(&[("HF_HOME", "/h")])),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            cache_dir(env(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
    }
}
