//! `omni bench`: DiT, VAE, text-encoder and whole-pipeline timings with random weights at the
//! real Helios shapes (GPU builds) or the tiny test shapes (CPU). Prints figures; asserts nothing.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::pipeline::backend::DefaultBackend;
use omni::pipeline::bench::{
    H100_BF16_PEAK_FLOPS, ModelScale, bench_dit, bench_pipeline, bench_request, bench_text_encoder,
    bench_vae, peak_rss_bytes,
};
use omni::pipeline::pipelines::pipeline_helios_pyramid::{FrameSink, VideoFrames};

/// Model shapes to benchmark.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchConfig {
    /// The real 14B Helios shapes (needs a GPU with ~45 GB).
    #[value(name = "helios-14b")]
    Helios14b,
    /// The tiny test shapes (CPU).
    Tiny,
}

/// Arguments shared by the benchmarks.
#[derive(Debug, Args)]
pub struct Common {
    /// Model shapes [default: helios-14b with --features cuda, else tiny].
    #[arg(long, value_enum)]
    pub config: Option<BenchConfig>,
    /// Video height in pixels.
    #[arg(long, default_value_t = 384)]
    pub height: usize,
    /// Video width in pixels.
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    /// Untimed warm-up runs (JIT, autotune).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Print one JSON line (`ms_mean`, `ms_min`, ...) instead of the table; with `dit`, one
    /// stage only (`--stage`).
    #[arg(long)]
    pub json: bool,
}

impl Common {
    fn scale(&self) -> ModelScale {
        match self.config {
            Some(BenchConfig::Helios14b) => ModelScale::Helios14B,
            Some(BenchConfig::Tiny) => ModelScale::Tiny,
            None if cfg!(feature = "cuda") => ModelScale::Helios14B,
            None => ModelScale::Tiny,
        }
    }
}

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One DiT forward per pyramid stage: ms, TFLOP/s and MFU against 989 TFLOP/s.
    Dit {
        #[command(flatten)]
        common: Common,
        /// Pyramid stage to time (0 = quarter, 1 = half, 2 = full resolution) [default: all].
        #[arg(long)]
        stage: Option<usize>,
    },
    /// VAE decode of one 33-frame chunk.
    Vae {
        #[command(flatten)]
        common: Common,
    },
    /// UMT5 text encoder on 512 tokens.
    TextEncoder {
        #[command(flatten)]
        common: Common,
    },
    /// Whole Distilled text-to-video run: frames/s end to end, time per phase, peak memory.
    Pipeline {
        #[command(flatten)]
        common: Common,
        /// Preset to run (only helios-distilled so far).
        #[arg(long, default_value = "helios-distilled")]
        preset: String,
        /// Frames to generate.
        #[arg(long, default_value_t = 99)]
        num_frames: u32,
        /// Also encode the video to this MP4 (H.264 time included in the figures).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

/// `omni bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

fn stats(ms: &[f64]) -> (f64, f64) {
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    (mean, min)
}

fn device_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda:0 (bf16)"
    } else {
        "cpu / flex (f32)"
    }
}

struct Mp4Sink(Mp4Writer);

impl FrameSink for Mp4Sink {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.0
            .push_frames_f32(&frames.data)
            .map_err(|e| e.to_string())
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device = Default::default();
    match args.command {
        BenchCommand::Dit { common, stage } => {
            let scale = common.scale();
            if !common.json {
                println!(
                    "DiT forward, {scale:?}, {}x{} pixels, device {}, {} warm-up + {} timed",
                    common.width,
                    common.height,
                    device_name(),
                    common.warmup,
                    common.iters
                );
                println!(
                    "stage  latent(TxHxW)  tokens(noisy+history)  ms(mean)  ms(min)  TFLOP  TFLOP/s  MFU"
                );
            }
            let stages: Vec<usize> = match stage {
                Some(s) => vec![s.min(2)],
                None => vec![2, 1, 0],
            };
            for s in stages {
                let r = bench_dit::<DefaultBackend>(
                    scale,
                    common.height,
                    common.width,
                    s,
                    common.warmup,
                    common.iters,
                    &device,
                );
                let (mean, min) = stats(&r.ms);
                let tflops = r.flops / (mean / 1e3) / 1e12;
                if common.json {
                    println!(
                        "{}",
                        serde_json::json!({"stage": s, "tokens": r.noisy_tokens + r.history_tokens,
                            "noisy_tokens": r.noisy_tokens, "ms_mean": mean, "ms_min": min,
                            "tflop": r.flops / 1e12, "tflops": tflops,
                            "mfu": tflops * 1e12 / H100_BF16_PEAK_FLOPS})
                    );
                    continue;
                }
                println!(
                    "{s:>5}  {:>3}x{}x{:<7}  {:>6} ({}+{})  {mean:>9.1}  {min:>7.1}  {:>5.1}  {tflops:>7.2}  {:>5.1}%",
                    r.latent[0],
                    r.latent[1],
                    r.latent[2],
                    r.noisy_tokens + r.history_tokens,
                    r.noisy_tokens,
                    r.history_tokens,
                    r.flops / 1e12,
                    100.0 * tflops * 1e12 / H100_BF16_PEAK_FLOPS
                );
            }
        }
        BenchCommand::Vae { common } => {
            let scale = common.scale();
            let ms = bench_vae::<DefaultBackend>(
                scale,
                common.height,
                common.width,
                common.warmup,
                common.iters,
                &device,
            );
            let (mean, min) = stats(&ms);
            if common.json {
                println!("{}", serde_json::json!({"ms_mean": mean, "ms_min": min}));
                return Ok(());
            }
            println!(
                "VAE decode of one chunk (9 latent -> 33 video frames), {scale:?}, {}x{}, device {}: mean {mean:.1} ms, min {min:.1} ms ({:.1} frames/s)",
                common.width,
                common.height,
                device_name(),
                33.0 / (mean / 1e3)
            );
        }
        BenchCommand::TextEncoder { common } => {
            let scale = common.scale();
            let ms = bench_text_encoder::<DefaultBackend>(
                scale,
                512,
                common.warmup,
                common.iters,
                &device,
            );
            let (mean, min) = stats(&ms);
            if common.json {
                println!("{}", serde_json::json!({"ms_mean": mean, "ms_min": min}));
                return Ok(());
            }
            println!(
                "text encoder on 512 tokens, {scale:?}, device {}: mean {mean:.1} ms, min {min:.1} ms",
                device_name()
            );
        }
        BenchCommand::Pipeline {
            common,
            preset,
            num_frames,
            output,
        } => {
            anyhow::ensure!(
                preset == "helios-distilled",
                "unknown preset `{preset}`: only helios-distilled can be benchmarked so far"
            );
            let scale = common.scale();
            let req = bench_request(common.height as u32, common.width as u32, num_frames);
            let mut writer = match &output {
                Some(path) => Some(Mp4Sink(Mp4Writer::create(
                    path,
                    req.width,
                    req.height,
                    req.fps,
                    EncodeOptions::default(),
                )?)),
                None => None,
            };
            let r = bench_pipeline::<DefaultBackend>(
                scale,
                &req,
                writer.as_mut().map(|w| w as &mut dyn FrameSink),
                &device,
            )?;
            if let Some(Mp4Sink(w)) = writer {
                w.finish()?;
            }
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            println!(
                "Distilled T2V, {scale:?}, {}x{}, {} frames requested -> {} frames in {} chunks, device {}",
                req.width,
                req.height,
                num_frames,
                r.frames,
                r.denoise_s.len(),
                device_name()
            );
            println!(
                "end to end {:.2} s = {:.2} frames/s (text encoder {:.2} s, denoise {:.2} s, VAE decode {:.2} s, output {:.2} s)",
                r.total_s,
                r.frames as f64 / r.total_s,
                r.text_encoder_s,
                sum(&r.denoise_s),
                sum(&r.decode_s),
                sum(&r.output_s)
            );
            for (k, (d, v)) in r.denoise_s.iter().zip(&r.decode_s).enumerate() {
                println!("  chunk {k}: denoise {d:.2} s, decode {v:.2} s");
            }
            if let Some(rss) = peak_rss_bytes() {
                println!("peak RSS {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
            }
        }
    }
    Ok(())
}
