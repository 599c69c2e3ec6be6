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
    #[command(flatten)]
    pub flags: ServeOverrides,
    /// TOML config file (keys documented in configs/serve.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs { flags, config } = args;
    let file = match &config {
        Some(path) => ServeFile::read(path)?,
        None => ServeFile::default(),
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
