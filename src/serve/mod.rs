//! `omni serve`: the HTTP API (vLLM-Omni / OpenAI Videos / FastVideo flavours of `/v1/videos`).
//!
//! Shape (shared/reference/style.md §5, §7 rules 9–12): [`serve`] takes a resolved
//! [`ServeConfig`], a bound listener and a shutdown future. One routing function
//! ([`routes`]) parses requests into typed values before touching state; every failure is an
//! [`ApiError`] rendered by one table as the OpenAI envelope. The pipeline never runs on the
//! async runtime: [`worker`] threads (`--workers N`, or one per GPU with `--devices`) each own
//! a copy and take jobs from one channel, or claim them from PostgreSQL (full queue → 429).
//! Job records live in [`jobs`]: one JSON file per job by default, or rows of the shared
//! [`postgres`] store that `--role api` and `--role worker` processes share ([`store`]); finished
//! files are published to [`outputs`] (the storage folder, another folder or S3). Either way
//! finished jobs survive a restart and unfinished ones run again.

pub mod body;
pub mod config;
pub mod create;
pub mod error;
pub mod jobs;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod outputs;
pub mod postgres;
pub mod postprocess;
pub mod previews;
pub mod reference;
pub mod remix;
pub mod remote;
pub mod routes;
pub mod store;
pub mod stream;
pub mod web;
pub mod webhooks;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use config::{ServeConfig, ServeFile, ServeOverrides};
pub use error::ApiError;

use crate::pipeline::generator::{Generator, GeneratorOptions, LoadPolicy};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The checkpoint's config files could not be read.
    #[error("reading checkpoint {path}: {message}")]
    Model { path: String, message: String },
    /// The storage folder is unusable.
    #[error("storage folder {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    /// The preset does not fit the checkpoint.
    #[error("{0}")]
    Preset(String),
    /// The worker could not load the model.
    #[error("{0}")]
    Load(String),
    /// `[webhooks]` or `[remote_media]` cannot be used.
    #[error("{0}")]
    Config(String),
}

/// Run the server on `listener` until `shutdown` completes; then stop accepting, let open
/// connections finish (at most 10 s) and return. Jobs left unfinished run again on the next start.
///
/// # Errors
/// [`ServeError`] when the checkpoint, the storage folder or the model load fails.
pub async fn serve(
    cfg: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let defaults = Generator::defaults_of(&cfg.model).map_err(|e| ServeError::Model {
        path: cfg.model.display().to_string(),
        message: e.to_string(),
    })?;
    crate::pipeline::generator::check_expert_residency(&defaults, cfg.offload_experts).map_err(
        |why| {
            ServeError::Config(format!(
                "offload_experts = \"{}\": {why}",
                cfg.offload_experts
            ))
        },
    )?;
    // request > [default_request] > preset > checkpoint.
    let mut lower_layers = vec![cfg.default_request.clone()];
    if let Some(preset) = &cfg.preset {
        preset
            .check(&defaults)
            .map_err(|e| ServeError::Preset(e.message))?;
        lower_layers.push(preset.patch.clone());
    }
    let lora =
        lora::LoraPolicy::new(&cfg.lora_dirs, &cfg.lora, &cfg.model).map_err(ServeError::Load)?;
    let storage_err = |source| ServeError::Storage {
        path: cfg.storage.display().to_string(),
        source,
    };
    let outputs =
        Arc::new(outputs::Outputs::open(&cfg.outputs, &cfg.storage).map_err(ServeError::Config)?);
    tracing::info!("outputs: {}", outputs.describe);
    let (jobs, resume) = match &cfg.store.url {
        store::StoreUrl::File(records) => {
            jobs::Jobs::open_file(&cfg.storage, records, cfg.limits.max_attempts, outputs)
                .map_err(storage_err)?
        }
        store::StoreUrl::Postgres(url) => {
            let pg = postgres::PgStore::connect(
                url,
                postgres::PgOptions {
                    lease: cfg.store.lease,
                    poll: cfg.store.poll,
                    max_attempts: cfg.limits.max_attempts,
                    // One per worker, the request handlers', the LISTEN and the renewals'.
                    max_connections: cfg.workers as u32 + 6,
                },
            )
            .await
            .map_err(ServeError::Config)?;
            let jobs = jobs::Jobs::open_shared(&cfg.storage, pg, outputs).map_err(storage_err)?;
            (jobs, Vec::new())
        }
    };
    if !resume.is_empty() {
        tracing::info!("re-running {} unfinished job(s)", resume.len());
    }
    let jobs = Arc::new(jobs);
    // Webhooks: the outbox is read now (events a previous run left undelivered go out first)
    // and every job that becomes terminal queues its event.
    let hooks =
        webhooks::Webhooks::open(&cfg.webhooks, &cfg.storage).map_err(ServeError::Config)?;
    if hooks.is_some() && jobs.shared().is_some() {
        return Err(ServeError::Config(
            "[webhooks] cannot be used with [store] url = \"postgres://…\" yet (the outbox is one process's); remove one of them".into(),
        ));
    }
    if let Some(h) = &hooks {
        let h2 = h.clone();
        jobs.on_terminal(Box::new(move |rec| h2.emit_terminal(rec)));
        tokio::spawn(h.clone().run());
    }
    let remote = remote::RemoteMedia::new(&cfg.remote_media, cfg.limits.max_upload_bytes)
        .map_err(ServeError::Config)?;
    let model = worker::WorkerModel {
        dir: cfg.model.clone(),
        options: GeneratorOptions {
            load: match cfg.keep_text_encoder {
                true => LoadPolicy::KeepAll,
                false => LoadPolicy::TextEncoderPerRequest,
            },
            vae_dtype: None,
            offload_experts: cfg.offload_experts,
        },
        devices: cfg.devices.clone(),
    };
    let streams = Arc::new(stream::LiveStreams::default());
    let workers = if cfg.role.runs_jobs() { cfg.workers } else { 0 };
    tracing::info!("role {}: {workers} worker(s)", cfg.role.name());
    let (worker, loaded) =
        worker::Worker::spawn(model, workers, jobs.clone(), streams.clone(), resume);
    // The periodic sweep: expired jobs (with a TTL) and orphaned files (always).
    {
        let jobs = jobs.clone();
        let ttl = cfg.file_ttl_s;
        let every = Duration::from_secs(ttl.map_or(60, |t| (t / 2).clamp(1, 60)));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let jobs = jobs.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(ttl) = ttl {
                        let n = jobs.sweep(ttl);
                        if n > 0 {
                            tracing::info!("removed {n} expired job(s)");
                        }
                    }
                    jobs.sweep_orphaned_files();
                })
                .await;
            }
        });
    }
    let decodes = Arc::new(tokio::sync::Semaphore::new(
        cfg.limits.max_concurrent_decodes,
    ));
    let state = Arc::new(routes::State {
        cfg,
        defaults,
        lower_layers,
        jobs,
        worker,
        decodes,
        webhooks: hooks,
        remote,
        streams,
        lora,
    });
    let graceful = GracefulShutdown::new();
    let max_connections = state.cfg.limits.max_connections;
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let header_timeout = Duration::from_secs_f64(state.cfg.limits.header_read_timeout_s);
    tokio::pin!(shutdown);
    let mut loaded = Some(loaded);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past `max_connections` the connection is closed at once (the client may retry);
                // the header-read timeout closes connections that never finish their headers
                // (slowloris) or sit idle between keep-alive requests.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!("{max_connections} connections open; refusing one");
                    drop(stream);
                    continue;
                };
                let st = state.clone();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| routes::handle(st.clone(), req)),
                    );
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                    drop(permit);
                });
            }
            r = async { loaded.as_mut().expect("guarded").await }, if loaded.is_some() => {
                loaded = None;
                match r {
                    Ok(Ok(())) => tracing::info!("ready"),
                    Ok(Err(msg)) => return Err(ServeError::Load(msg)),
                    Err(_) => return Err(ServeError::Load("the worker thread stopped".into())),
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; stopping anyway");
        }
    }
    Ok(())
}
