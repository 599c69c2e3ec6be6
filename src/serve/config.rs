//! `serve.toml`: what the operator wrote, then the resolved [`ServeConfig`].
//!
//! Precedence for every key: command-line flag > environment (storage path only) > file >
//! built-in default. See `configs/serve.example.toml` for each key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::remote::RemoteMediaConfig;
use super::webhooks::WebhooksConfig;
use crate::hub::Located;
use crate::pipeline::generator::ExpertResidency;
use crate::pipeline::request::{Preset, RequestPatch, WorkBudget};

/// The storage folder used when nothing else names one.
pub const DEFAULT_STORAGE: &str = "/tmp/omni-storage";
/// Storage environment variable (vLLM-Omni's name).
pub const ENV_STORAGE: &str = "VLLM_OMNI_SERVER_STORAGE__PATH";
/// Deprecated storage environment variable, honoured when [`ENV_STORAGE`] is unset.
pub const ENV_STORAGE_DEPRECATED: &str = "VLLM_OMNI_STORAGE_PATH";
/// File TTL environment variable (vLLM-Omni's name), seconds.
pub const ENV_FILE_TTL: &str = "VLLM_OMNI_SERVER_STORAGE__FILE_TTL";

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "no model: pass MODEL (a folder or a Hugging Face repo id) or set `model` in the config file"
    )]
    NoModel,
    /// The model name leads nowhere (see [`crate::hub`]).
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Preset(String),
    #[error("`workers = {0}` is not a worker count: give 1 to 64")]
    Workers(usize),
    /// `offload_experts` that is not `auto`, `on` or `off`.
    #[error("`offload_experts = \"{0}\"`: use auto, on or off")]
    OffloadExperts(String),
    /// `[store]` or `role` cannot be used.
    #[error("{0}")]
    Store(String),
    /// `devices` / `--devices` that cannot be used (see [`ServeConfig::devices`]).
    #[error("{0}")]
    Devices(String),
    /// `[outputs]` that cannot be used (see [`super::outputs::Outputs::open`]).
    #[error("{0}")]
    Outputs(String),
}

/// The file as written; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A checkpoint folder or a Hugging Face repo id (`org/name[@revision]`).
    pub model: Option<String>,
    /// A preset name (`helios-base`, `helios-mid`, `helios-distilled`) or preset TOML file: a
    /// request layer below `[default_request]`.
    pub preset: Option<String>,
    pub served_model_name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Keep the text encoder loaded between requests (default true).
    pub keep_text_encoder: Option<bool>,
    /// Wan2.2 A14B: `auto`, `on` (one expert on the device at a time) or `off` (default auto).
    pub offload_experts: Option<String>,
    /// Worker threads, each with its own copy of the model (default 1).
    pub workers: Option<usize>,
    #[serde(default)]
    pub storage: StorageFile,
    #[serde(default)]
    pub limits: Limits,
    /// A request layer between the HTTP request and the checkpoint defaults.
    #[serde(default)]
    pub default_request: RequestPatch,
    /// `[webhooks]`: signed `video.*` events (see [`super::webhooks`]).
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// `[remote_media]`: reference files by http(s) URL (see [`super::remote`]).
    #[serde(default)]
    pub remote_media: RemoteMediaConfig,
    /// Folders whose LoRA files requests may name by `path` (anything else is a 400 naming
    /// `lora`); empty = requests may only name `[lora] preload` adapters.
    #[serde(default)]
    pub lora_dirs: Vec<PathBuf>,
    /// `[lora]`: adapters loaded at start-up.
    #[serde(default)]
    pub lora: super::lora::LoraSection,
    /// `[postprocess]`: the RIFE and Real-ESRGAN models.
    #[serde(default)]
    pub postprocess: super::postprocess::PostprocessSection,
    /// `all` (default), `api` or `worker` (see [`super::store::Role`]).
    pub role: Option<super::store::Role>,
    /// `[store]`: where job records live (see [`super::store`]).
    #[serde(default)]
    pub store: super::store::StoreSection,
    /// `[outputs]`: where finished videos and previews go (see [`super::outputs`]).
    #[serde(default)]
    pub outputs: super::outputs::OutputsConfig,
    /// GPU indices, one worker each (cuda build only); the worker count is their number.
    pub devices: Option<Vec<usize>>,
}

/// `[storage]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    pub path: Option<PathBuf>,
    pub file_ttl_s: Option<u64>,
}

impl ServeFile {
    /// Read and parse `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// `[limits]`, each key defaulting to [`Limits::default`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body (bytes); larger → 413.
    pub max_body_bytes: usize,
    /// Largest accepted reference file (`input_reference` upload or a decoded data URL /
    /// base64 image), bytes; larger → 413.
    pub max_upload_bytes: usize,
    /// Largest reference image or video frame, pixels (width × height from the file's header,
    /// checked before any pixel is decoded); larger → 400 naming the field.
    pub max_reference_pixels: u64,
    /// Reference files decoded at once at admission; more wait for a slot (a client that goes
    /// away while waiting costs nothing).
    pub max_concurrent_decodes: usize,
    /// Jobs waiting behind the running one; more → 429.
    pub max_queued_jobs: usize,
    /// `POST /v1/videos/sync` gives up (504) after this many seconds.
    pub sync_timeout_s: u64,
    /// The `openai-poll-after-ms` hint on unfinished jobs.
    pub poll_after_ms: u64,
    /// Seconds a connection may take to send a request's headers, and may sit idle between
    /// keep-alive requests, before it is closed (slowloris).
    pub header_read_timeout_s: f64,
    /// Connections served at once; more are closed at accept (each costs a file descriptor).
    pub max_connections: usize,
    /// Times the worker may start one job before it is failed with `worker_crashed` (a job
    /// the process died under, every time, is not retried forever).
    pub max_attempts: u32,
    /// `[limits.budget]`: the most work one request may ask for (frames, frame size, history,
    /// chunk length); over it → 400 naming the field.
    pub budget: WorkBudget,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_upload_bytes: 16 << 20,
            // 6144x4096: a 25-megapixel photo; decoding it takes a few seconds on one core.
            max_reference_pixels: 6144 * 4096,
            max_concurrent_decodes: 2,
            max_queued_jobs: 16,
            sync_timeout_s: 600,
            poll_after_ms: 1000,
            max_attempts: 2,
            header_read_timeout_s: 10.0,
            max_connections: 512,
            budget: WorkBudget::default(),
        }
    }
}

/// The resolved server configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Diffusers-format checkpoint folder (a Hugging Face cache snapshot for a repo id).
    pub model: PathBuf,
    /// The name `/v1/models` lists and requests' `model` must match (or an alias); defaults to
    /// the repo id, or the folder's name.
    pub served_model_name: String,
    pub aliases: Vec<String>,
    /// Bearer keys; empty = no authentication.
    pub api_keys: Vec<String>,
    /// Keep UMT5 loaded between requests; `false` loads it for each request and drops it after
    /// encoding (frees ~11 GB of GPU memory in bf16 at the cost of a reload per request).
    pub keep_text_encoder: bool,
    /// Wan2.2 A14B (two experts): `on` keeps one expert on the device at a time (the other is
    /// loaded from the checkpoint when the schedule crosses `boundary_ratio`), `off` both,
    /// `auto` both when the device's free memory holds the second expert plus 20 %. Not `auto`
    /// on a checkpoint that cannot honour it: the server does not start.
    pub offload_experts: ExpertResidency,
    /// Worker threads (at least 1), each with its own copy of the model; the first free one
    /// takes the next job.
    pub workers: usize,
    /// Where job records and videos live.
    pub storage: PathBuf,
    /// Finished jobs (record and video) are removed this many seconds after completion.
    pub file_ttl_s: Option<u64>,
    pub limits: Limits,
    pub default_request: RequestPatch,
    /// The preset layer (below `[default_request]`); checked against the checkpoint's pipeline
    /// class at start-up.
    pub preset: Option<Preset>,
    pub webhooks: WebhooksConfig,
    pub remote_media: RemoteMediaConfig,
    /// See [`ServeFile::lora_dirs`].
    pub lora_dirs: Vec<PathBuf>,
    /// See [`ServeFile::lora`].
    pub lora: super::lora::LoraSection,
    /// See [`ServeFile::postprocess`] (`--rife-model` / `--upscale-model` beat its
    /// `rife_model` / `upscale_model`).
    pub postprocess: super::postprocess::PostprocessSection,
    /// Which part of the server this process runs (`--role` beats `role`).
    pub role: super::store::Role,
    /// The resolved `[store]`.
    pub store: super::store::StoreConfig,
    /// See [`ServeFile::outputs`].
    pub outputs: super::outputs::OutputsConfig,
    /// The GPU index of each worker (`--devices` > `devices`), `None` = the default device
    /// for every worker. When set, `workers` is its length. Only the cuda build accepts it.
    pub devices: Option<Vec<usize>>,
}

/// What the command line sets (each `None` = not given); the flags of `omni serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeOverrides {
    /// Diffusers-format checkpoint folder (Helios Base, Mid or Distilled), or a Hugging Face repo
    /// id `org/name[@revision]` (looked up in the Hugging Face cache, downloaded when missing
    /// unless HF_HUB_OFFLINE=1; HF_TOKEN for gated repos) [default: `model` in the config].
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// Preset name (helios-base, helios-mid, helios-distilled) or preset TOML file: request
    /// defaults below the config's [default_request] [default: the checkpoint's own].
    #[arg(long, value_name = "NAME|FILE")]
    pub preset: Option<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port; 0 picks a free one (the bound address is printed on stdout) [default: 8000].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Folder for job records and videos [default: env VLLM_OMNI_SERVER_STORAGE__PATH, then
    /// VLLM_OMNI_STORAGE_PATH, then the config, then /tmp/omni-storage].
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Model id shown by /v1/models and accepted in requests [default: the repo id, or the
    /// model folder's name].
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Another accepted model name (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Worker threads, each loading its own copy of the model (N times the model's memory);
    /// the first free worker takes the next queued job. On the CPU build they share the
    /// machine's cores (--threads) [default: `workers` in the config, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: Option<u64>,
    /// RIFE (4.22 lite, 4.22, 4.25 or 4.26) `flownet.pkl` for requests with `enable_frame_interpolation`
    /// [default: `[postprocess] rife_model` in the config].
    #[arg(long, value_name = "FILE")]
    pub rife_model: Option<PathBuf>,
    /// Real-ESRGAN `.pth` (RRDBNet `RealESRGAN_x4plus`/`x2plus` or SRVGGNetCompact
    /// `realesr-general-x4v3`/`realesr-animevideov3`) for requests with `enable_upscale`
    /// [default: `[postprocess] upscale_model` in the config].
    #[arg(long, value_name = "FILE")]
    pub upscale_model: Option<PathBuf>,
    /// all: API and workers; api: HTTP API only, no model loaded; worker: runs jobs, serves
    /// only /health, /readyz and /metrics. api and worker need `[store] url = "postgres://…"`
    /// in the config [default: `role` in the config, else all].
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: Option<super::store::Role>,
    /// GPU indices, comma-separated (`0,1,2,3`): one worker per GPU, each with its own copy of
    /// the model; the worker count is their number. cuda build only: on the CPU build use
    /// --workers N [default: `devices` in the config, else one worker on GPU 0].
    #[arg(long, value_name = "I,J,…", value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
}

impl ServeConfig {
    /// Merge flags > environment (`env` looks a variable up) > file > defaults; `locate` turns
    /// the model name into a folder ([`crate::hub::locate`] in the binary).
    ///
    /// # Errors
    /// [`ConfigError::NoModel`] when neither flags nor file name a model,
    /// [`ConfigError::Model`] when `locate` fails, [`ConfigError::Preset`] for an unknown preset.
    pub fn resolve(
        flags: ServeOverrides,
        file: ServeFile,
        env: impl Fn(&str) -> Option<String>,
        locate: impl FnOnce(&str) -> Result<Located, String>,
    ) -> Result<Self, ConfigError> {
        let ServeOverrides {
            model,
            preset,
            host,
            port,
            storage,
            served_model_name,
            aliases,
            workers,
            rife_model,
            upscale_model,
            role,
            devices,
        } = flags;
        let ServeFile {
            host: f_host,
            port: f_port,
            model: f_model,
            preset: f_preset,
            served_model_name: f_name,
            aliases: f_aliases,
            api_keys,
            keep_text_encoder,
            offload_experts,
            workers: f_workers,
            storage:
                StorageFile {
                    path: f_storage,
                    file_ttl_s,
                },
            limits,
            default_request,
            webhooks,
            remote_media,
            lora_dirs,
            lora,
            mut postprocess,
            role: f_role,
            store,
            outputs,
            devices: f_devices,
        } = file;
        if rife_model.is_some() {
            postprocess.rife_model = rife_model;
        }
        if upscale_model.is_some() {
            postprocess.upscale_model = upscale_model;
        }
        let model = model.or(f_model).ok_or(ConfigError::NoModel)?;
        let Located { dir: model, name } = locate(&model).map_err(ConfigError::Model)?;
        let preset = preset
            .or(f_preset)
            .map(|name| Preset::load(&name).map_err(|e| ConfigError::Preset(e.message)))
            .transpose()?;
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let storage = storage
            .or_else(|| non_empty(env(ENV_STORAGE)).map(PathBuf::from))
            .or_else(|| non_empty(env(ENV_STORAGE_DEPRECATED)).map(PathBuf::from))
            .or(f_storage)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE));
        let served_model_name = served_model_name.or(f_name).unwrap_or(name);
        let workers = match workers.map(|w| w as usize).or(f_workers) {
            None => 1,
            Some(w @ 1..=64) => w,
            Some(w) => return Err(ConfigError::Workers(w)),
        };
        let role = role.or(f_role).unwrap_or_default();
        let store = store.resolve(&storage, role).map_err(ConfigError::Store)?;
        let devices = devices.or(f_devices);
        let workers = match &devices {
            None => workers,
            Some(d) => check_devices(d, workers, cfg!(feature = "cuda"))?,
        };
        Ok(Self {
            host: host.or(f_host).unwrap_or_else(|| "127.0.0.1".to_string()),
            port: port.or(f_port).unwrap_or(8000),
            model,
            served_model_name,
            aliases: if aliases.is_empty() {
                f_aliases
            } else {
                aliases
            },
            api_keys,
            keep_text_encoder: keep_text_encoder.unwrap_or(true),
            offload_experts: match offload_experts {
                None => ExpertResidency::Auto,
                Some(v) => v.parse().map_err(|_| ConfigError::OffloadExperts(v))?,
            },
            workers,
            storage,
            file_ttl_s: non_empty(env(ENV_FILE_TTL))
                .and_then(|v| v.trim().parse().ok())
                .or(file_ttl_s)
                .filter(|t| *t > 0),
            limits: Limits {
                max_queued_jobs: limits.max_queued_jobs.max(1),
                max_attempts: limits.max_attempts.max(1),
                max_connections: limits.max_connections.max(1),
                max_concurrent_decodes: limits.max_concurrent_decodes.max(1),
                header_read_timeout_s: match limits.header_read_timeout_s {
                    t if t.is_finite() => t.clamp(0.1, 3600.0),
                    _ => Limits::default().header_read_timeout_s,
                },
                ..limits
            },
            default_request,
            preset,
            webhooks,
            remote_media,
            lora_dirs,
            lora,
            postprocess,
            role,
            store,
            outputs,
            devices,
        })
    }

    /// Whether `name` is the served model or one of its aliases.
    pub fn serves(&self, name: &str) -> bool {
        name == self.served_model_name || self.aliases.iter().any(|a| a == name)
    }
}

/// The worker count `devices` gives: one per listed GPU. `workers` (already resolved, 1 when
/// not given) must then be 1 or the same number; `cuda` is whether this build has a GPU backend.
///
/// # Errors
/// [`ConfigError::Devices`]: any list on the CPU build (use `--workers N`), an empty list, a
/// repeated index, more than 64, or a different `workers` count.
fn check_devices(devices: &[usize], workers: usize, cuda: bool) -> Result<usize, ConfigError> {
    let list = devices
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if !cuda {
        return Err(ConfigError::Devices(format!(
            "--devices {list}: GPU workers need the cuda build (cargo build --release --features cuda); this CPU build runs N CPU workers with --workers N"
        )));
    }
    let mut seen = devices.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if devices.is_empty() || seen.len() != devices.len() || devices.len() > 64 {
        return Err(ConfigError::Devices(format!(
            "--devices {list}: give 1 to 64 distinct GPU indices, e.g. --devices 0,1"
        )));
    }
    if workers != 1 && workers != devices.len() {
        return Err(ConfigError::Devices(format!(
            "--devices {list} starts {} workers (one per GPU) but workers = {workers}; drop one of them",
            devices.len()
        )));
    }
    Ok(devices.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ServeFile {
        toml::from_str(text).unwrap()
    }

    /// A model name taken as a folder, named after its last component.
    fn folder(spec: &str) -> Result<Located, String> {
        Ok(Located {
            dir: spec.into(),
            name: spec.rsplit('/').next().unwrap_or(spec).to_string(),
        })
    }

    #[test]
    fn storage_flag_beats_env_beats_deprecated_env_beats_file() {
        let f = || file("model = \"m\"\n[storage]\npath = \"/file\"\n");
        let both = |k: &str| match k {
            ENV_STORAGE => Some("/new".to_string()),
            ENV_STORAGE_DEPRECATED => Some("/old".to_string()),
            _ => None,
        };
        let old = |k: &str| (k == ENV_STORAGE_DEPRECATED).then(|| "/old".to_string());
        let none = |_: &str| None;
        let flags = ServeOverrides {
            storage: Some("/flag".into()),
            ..Default::default()
        };
        let r = |fl, e: &dyn Fn(&str) -> Option<String>| {
            ServeConfig::resolve(fl, f(), e, folder).unwrap().storage
        };
        assert_eq!(r(flags, &both), PathBuf::from("/flag"));
        assert_eq!(r(Default::default(), &both), PathBuf::from("/new"));
        assert_eq!(r(Default::default(), &old), PathBuf::from("/old"));
        assert_eq!(r(Default::default(), &none), PathBuf::from("/file"));
        let bare =
            ServeConfig::resolve(Default::default(), file("model = \"m\""), none, folder).unwrap();
        assert_eq!(bare.storage, PathBuf::from(DEFAULT_STORAGE));
    }

    #[test]
    fn preset_is_its_own_layer_and_unknown_presets_are_errors() {
        let with_preset = |name: &str, text: &str| {
            let flags = ServeOverrides {
                preset: Some(name.into()),
                ..Default::default()
            };
            ServeConfig::resolve(flags, file(text), |_| None, folder)
        };
        let c = with_preset("helios-mid", "model = \"m\"\n[default_request]\nfps = 12\n").unwrap();
        let preset = c.preset.as_ref().unwrap();
        assert_eq!(preset.name, "helios-mid");
        assert_eq!(
            preset.model.pipeline.as_deref(),
            Some("HeliosPyramidPipeline")
        );
        assert_eq!(c.default_request.fps, Some(12));
        assert_eq!(
            c.default_request.pyramid_num_inference_steps_list, None,
            "the preset is not folded into [default_request]"
        );
        let err = with_preset("no-such-preset", "model = \"m\"").unwrap_err();
        assert!(err.to_string().contains("helios-distilled"), "{err}");
    }

    #[test]
    fn workers_flag_beats_file_and_zero_is_an_error() {
        let r = |flag: Option<u64>, text: &str| {
            let flags = ServeOverrides {
                workers: flag,
                ..Default::default()
            };
            ServeConfig::resolve(flags, file(text), |_| None, folder)
        };
        assert_eq!(r(None, "model = \"m\"").unwrap().workers, 1);
        assert_eq!(r(None, "model = \"m\"\nworkers = 3").unwrap().workers, 3);
        assert_eq!(r(Some(2), "model = \"m\"\nworkers = 3").unwrap().workers, 2);
        let err = r(None, "model = \"m\"\nworkers = 0").unwrap_err();
        assert!(err.to_string().contains("workers = 0"), "{err}");
    }

    #[test]
    fn default_request_and_limits_parse() {
        let c = ServeConfig::resolve(
            Default::default(),
            file(
                "model = \"/m/tiny\"\naliases = [\"a\"]\n[limits]\nmax_queued_jobs = 2\n\
                 [default_request]\nwidth = 128\nseed = 7\n",
            ),
            |_| None,
            folder,
        )
        .unwrap();
        assert_eq!(c.served_model_name, "tiny");
        assert!(c.serves("tiny") && c.serves("a") && !c.serves("b"));
        assert_eq!(c.limits.max_queued_jobs, 2);
        assert_eq!(c.default_request.width, Some(128));
        assert_eq!(c.default_request.seed, Some(7));
        assert!(
            c.keep_text_encoder,
            "the text encoder stays loaded by default"
        );
        let c = ServeConfig::resolve(
            Default::default(),
            file("model = \"m\"\nkeep_text_encoder = false\n"),
            |_| None,
            folder,
        )
        .unwrap();
        assert!(!c.keep_text_encoder);
        assert_eq!(c.offload_experts, ExpertResidency::Auto);
        let c = ServeConfig::resolve(
            Default::default(),
            file("model = \"m\"\noffload_experts = \"on\"\n"),
            |_| None,
            folder,
        )
        .unwrap();
        assert_eq!(c.offload_experts, ExpertResidency::On);
        let e = ServeConfig::resolve(
            Default::default(),
            file("model = \"m\"\noffload_experts = \"maybe\"\n"),
            |_| None,
            folder,
        )
        .unwrap_err();
        assert!(e.to_string().contains("offload_experts"), "{e}");
    }

    #[test]
    fn devices_need_the_cuda_build_and_distinct_indices() {
        let flags = ServeOverrides {
            devices: Some(vec![0, 1]),
            ..Default::default()
        };
        let r = ServeConfig::resolve(flags, file("model = \"m\""), |_| None, folder);
        if cfg!(feature = "cuda") {
            assert_eq!(r.unwrap().workers, 2);
        } else {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("--workers N") && err.contains("0,1"), "{err}");
        }
        let from_file = ServeConfig::resolve(
            Default::default(),
            file("model = \"m\"\ndevices = [3]"),
            |_| None,
            folder,
        );
        assert_eq!(from_file.is_ok(), cfg!(feature = "cuda"));
        assert_eq!(check_devices(&[2, 0, 1], 1, true).unwrap(), 3);
        assert_eq!(check_devices(&[2, 0], 2, true).unwrap(), 2);
        for (d, w) in [(&[][..], 1), (&[1, 1][..], 1), (&[0, 1][..], 3)] {
            let err = check_devices(d, w, true).unwrap_err().to_string();
            assert!(err.starts_with("--devices"), "{err}");
        }
    }

    #[test]
    fn outputs_section_parses() {
        let c = ServeConfig::resolve(
            Default::default(),
            file(
                "model = \"m\"\n[outputs]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9\"\n\
                 allow_http = true\nredirect = true\npresign_expiry_s = 60\n",
            ),
            |_| None,
            folder,
        )
        .unwrap();
        assert_eq!(c.outputs.url.as_deref(), Some("s3://b/p"));
        assert_eq!(c.outputs.allow_http, Some(true));
        assert!(c.outputs.redirect);
        assert_eq!(c.outputs.presign_expiry_s, 60);
        assert!(toml::from_str::<ServeFile>("[outputs]\nbucket = \"x\"").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ServeFile>("hots = \"x\"").is_err());
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/serve.example.toml");
        ServeFile::read(&path).unwrap();
    }
}
