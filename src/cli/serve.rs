//! `omni serve`: flags + `--config` file → [`ServeConfig`] → bind → [`omni::serve::serve`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use omni::pipeline::generator::Generator;
use omni::serve::{ServeConfig, ServeFile, ServeOverrides};

/// Arguments of `omni serve`. Flags beat the config file; see `configs/serve.example.toml`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Diffusers-format checkpoint folder (Helios Base, Mid or Distilled), or a Hugging Face repo
    /// id `org/name[@revision]` (looked up in the Hugging Face cache, downloaded when missing
    /// unless HF_HUB_OFFLINE=1) [default: `model` in the config].
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// Preset name (helios-base, helios-mid, helios-distilled) or preset TOML file: request
    /// defaults below the config's [default_request] [default: the checkpoint's own].
    #[arg(long, value_name = "NAME|FILE")]
    pub preset: Option<String>,
    /// TOML config file (keys documented in configs/serve.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        model,
        preset,
        config,
        host,
        port,
        storage,
        served_model_name,
        aliases,
    } = args;
    let file = match &config {
        Some(path) => ServeFile::read(path)?,
        None => ServeFile::default(),
    };
    let flags = ServeOverrides {
        model,
        preset,
        host,
        port,
        storage,
        served_model_name,
        aliases,
    };
    let cfg = ServeConfig::resolve(
        flags,
        file,
        |k| std::env::var(k).ok(),
        |spec| omni::hub::locate(spec).map_err(|e| e.to_string()),
    )?;
    Generator::probe_device().map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        let addr = listener.local_addr()?;
        println!("omni serve listening on http://{addr}");
        std::io::stdout().flush()?;
        omni::serve::serve(cfg, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
