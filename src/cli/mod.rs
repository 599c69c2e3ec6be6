//! Command-line interface: clap arguments → [`RequestPatch`] → one resolve → the pipeline.

mod bench;
mod generate;
mod progress;
mod serve;

use clap::{Parser, Subcommand};

pub use generate::GenerateArgs;
pub use serve::ServeArgs;

/// Helios text-to-video in one binary.
#[derive(Debug, Parser)]
#[command(name = "omni", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate one video from a prompt and write it as an H.264 MP4.
    Generate(GenerateArgs),
    /// Time the DiT, VAE, text encoder or whole pipeline with random weights (prints figures).
    Bench(bench::BenchArgs),
    /// Serve the OpenAI-style video API (`/v1/videos`) over HTTP.
    Serve(ServeArgs),
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing();
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Log to stderr when `RUST_LOG` is set (progress bars are then hidden); warnings otherwise.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // cubecl_common logs a device-thread panic as "Task failed: Any" at warn level; omni
        // reports the cause itself (`backend::probe_device`).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cubecl_common=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
