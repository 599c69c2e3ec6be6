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
    /// CPU threads for the tensor work (matmuls, convolutions, attention, norms) [default: the
    /// OMNI_NUM_THREADS environment variable, else one per logical CPU]. A count of threads,
    /// at least 1; it applies to every subcommand.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Log lines on stderr as human-readable text, or as one JSON object per line (for log
    /// collectors; fields `timestamp`, `level`, `fields.message`, `span`). What is logged is set
    /// by `RUST_LOG` (default: warnings and errors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Environment variable that caps the CPU threads when `--threads` is not given.
pub const THREADS_ENV: &str = "OMNI_NUM_THREADS";

/// Subcommands.
// Parsed once per process: the size of the `generate` variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    init_tracing(cli.log_format);
    let threads = threads(cli.threads, std::env::var(THREADS_ENV).ok().as_deref())?;
    omni::pipeline::backend::init_threads(threads).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// The CPU thread cap: `--threads`, else [`THREADS_ENV`] (unset or empty: `None`, one per CPU).
fn threads(flag: Option<usize>, env: Option<&str>) -> anyhow::Result<Option<usize>> {
    let n = match (flag, env.map(str::trim)) {
        (Some(n), _) => Some(n),
        (None, None | Some("")) => None,
        (None, Some(v)) => Some(v.parse::<usize>().map_err(|_| {
            anyhow::anyhow!("{THREADS_ENV}={v:?} is not a thread count (a whole number >= 1)")
        })?),
    };
    anyhow::ensure!(n != Some(0), "the thread count must be at least 1");
    Ok(n)
}

/// Log to stderr when `RUST_LOG` is set (progress bars are then hidden); warnings otherwise.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // cubecl_common logs a device-thread panic as "Task failed: Any" at warn level; omni
        // reports the cause itself (`backend::probe_device`).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cubecl_common=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_flag_beats_the_environment() {
        assert_eq!(threads(Some(3), Some("5")).unwrap(), Some(3));
        assert_eq!(threads(None, Some(" 5 ")).unwrap(), Some(5));
        assert_eq!(threads(None, Some("")).unwrap(), None);
        assert_eq!(threads(None, None).unwrap(), None);
        assert!(threads(None, Some("four")).is_err());
        assert!(threads(Some(0), None).is_err());
        assert!(threads(None, Some("0")).is_err());
    }

    #[test]
    fn threads_is_a_global_flag() {
        let cli =
            <Cli as Parser>::try_parse_from(["omni", "bench", "dit", "--threads", "2"]).unwrap();
        assert_eq!(cli.threads, Some(2));
        let cli = <Cli as Parser>::try_parse_from(["omni", "--threads", "1", "serve"]).unwrap();
        assert_eq!(cli.threads, Some(1));
    }
}
