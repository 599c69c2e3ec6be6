//! `omni bench`: DiT, VAE, text-encoder and whole-pipeline timings with random weights at the
//! real Helios shapes (GPU builds) or the tiny test shapes (CPU). Prints figures; asserts nothing.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::pipeline::backend::num_threads;
use omni::pipeline::bench::on_default_device as bench;
use omni::pipeline::bench::{
    BenchOptions, H100_BF16_PEAK_FLOPS, ModelScale, PipelineBench, Timings, bench_request,
    cpu_per_wall, peak_rss_bytes,
};
use omni::pipeline::bench::{WanDitOptions, WanDitScale, bench_wan_dit_on_default_device};
use omni::pipeline::generator::{FrameSink, Generator};
use omni::pipeline::precision::{Dtype, Precision};

/// Model shapes to benchmark.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchConfig {
    /// The real 14B Helios shapes (needs a GPU with ~45 GB).
    #[value(name = "helios-14b")]
    Helios14b,
    /// A 1.3B-like DiT (1536 wide, 12 heads, FFN 8960, 2 layers) with the real Wan2.1 VAE and
    /// the tiny text encoder: the CPU at realistic widths.
    Medium,
    /// The tiny test shapes (CPU).
    Tiny,
    /// `dit` only: the Wan2.1-T2V-14B DiT (5120 wide, 40 layers; also each Wan2.2-A14B expert)
    /// at the model card's 1280x720, 81 frames.
    #[value(name = "wan2.1-14b")]
    Wan21_14b,
    /// `dit` only: the Wan2.2-TI2V-5B DiT (3072 wide, 30 layers, per-token timesteps) at the
    /// model card's 1280x704, 121 frames (16x VAE).
    #[value(name = "wan2.2-5b")]
    Wan22_5b,
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
    /// Compute dtype of the transformer and text encoder: f32, bf16 or f16 [default: the
    /// device's, bf16 with --features cuda, f32 on the CPU]. The modules diffusers keeps in f32
    /// stay f32.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Compute dtype of the VAE (diffusers' Helios examples load it in float32).
    #[arg(long, default_value = "f32")]
    pub vae_dtype: Dtype,
}

impl Common {
    fn scale(&self) -> ModelScale {
        match self.config {
            Some(BenchConfig::Helios14b) => ModelScale::Helios14B,
            Some(BenchConfig::Medium) => ModelScale::Medium,
            Some(BenchConfig::Tiny) => ModelScale::Tiny,
            // Refused by `run` for every benchmark but `dit`, which takes the Wan path.
            Some(BenchConfig::Wan21_14b | BenchConfig::Wan22_5b) => ModelScale::Tiny,
            None if cfg!(feature = "cuda") => ModelScale::Helios14B,
            None => ModelScale::Tiny,
        }
    }

    /// Shapes, dtypes, size and repetitions for the component benchmarks.
    fn options(&self) -> BenchOptions {
        BenchOptions {
            scale: self.scale(),
            precision: self.precision(),
            height: self.height,
            width: self.width,
            warmup: self.warmup,
            iters: self.iters,
        }
    }

    /// The models' dtypes on the default device, with `--dtype` / `--vae-dtype` applied.
    fn precision(&self) -> Precision {
        bench::precision(self.dtype, self.vae_dtype)
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
        #[command(flatten)]
        wan: WanDitArgs,
    },
    /// VAE decode of one 33-frame chunk.
    Vae {
        #[command(flatten)]
        common: Common,
    },
    /// The DiT block's building blocks one by one at the full-resolution shapes (matmuls,
    /// attention, norms, RoPE) and the VAE decoder's conv3d: where a forward's time goes.
    Ops {
        #[command(flatten)]
        common: Common,
        /// Leave out the VAE conv3d rows (minutes at the real VAE's widths).
        #[arg(long)]
        skip_vae: bool,
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

fn device_name(p: &Precision) -> String {
    let dev = if cfg!(feature = "cuda") {
        "cuda:0".to_string()
    } else {
        format!("cpu / flex, {} threads", num_threads())
    };
    format!(
        "{dev} (transformer {:?}, text encoder {:?}, VAE {:?})",
        p.transformer, p.text_encoder, p.vae
    )
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// `omni bench dit --config wan2.1-14b|wan2.2-5b` options.
#[derive(Debug, Args)]
pub struct WanDitArgs {
    /// Wan configs: video size WIDTHxHEIGHT in pixels [default: the model card's, 1280x720 for
    /// wan2.1-14b, 1280x704 for wan2.2-5b] (--width / --height are the Helios sizes).
    #[arg(long)]
    pub size: Option<String>,
    /// Wan configs: video frames [default: the model card's, 81 / 121].
    #[arg(long)]
    pub num_frames: Option<usize>,
    /// Wan configs: transformer layers built and timed [default: all (40 / 30) with --features
    /// cuda, 1 on the CPU]; FLOPs count the layers run, so TFLOP/s stays comparable.
    #[arg(long)]
    pub layers: Option<usize>,
}

fn wan_scale(common: &Common) -> Option<WanDitScale> {
    match common.config {
        Some(BenchConfig::Wan21_14b) => Some(WanDitScale::Wan21_14B),
        Some(BenchConfig::Wan22_5b) => Some(WanDitScale::Wan22_5B),
        _ => None,
    }
}

/// `omni bench dit --config wan…`: one row (or JSON line) for one conditional forward.
fn wan_dit(common: &Common, scale: WanDitScale, wan: &WanDitArgs) -> anyhow::Result<()> {
    let (mut width, mut height, frames) = scale.default_size();
    if let Some(size) = &wan.size {
        let parsed = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
        let Some((w, h)) = parsed else {
            anyhow::bail!("--size {size:?} is not WIDTHxHEIGHT (e.g. 1280x704)");
        };
        (width, height) = (w, h);
    }
    let multiple = scale.vae_scale_spatial() * 2;
    if width == 0 || height == 0 || width % multiple != 0 || height % multiple != 0 {
        anyhow::bail!(
            "--size {width}x{height}: width and height must be positive multiples of {multiple} pixels for this model"
        );
    }
    let opts = WanDitOptions {
        scale,
        dtype: common.precision().transformer,
        width,
        height,
        num_frames: wan.num_frames.unwrap_or(frames),
        layers: wan.layers.or(if cfg!(feature = "cuda") {
            None
        } else {
            Some(1)
        }),
        warmup: common.warmup,
        iters: common.iters,
    };
    let r = bench_wan_dit_on_default_device(opts);
    let (mean, min) = stats(&r.ms);
    let tflops = r.flops / (mean / 1e3) / 1e12;
    let [c, t, h, w] = r.latent;
    if common.json {
        println!(
            "{}",
            serde_json::json!({"config": format!("{scale:?}"), "width": width, "height": height,
                "num_frames": opts.num_frames, "latent": [c, t, h, w], "tokens": r.tokens,
                "layers": r.layers, "model_layers": r.model_layers, "dtype": format!("{:?}", opts.dtype),
                "ms_mean": mean, "ms_min": min, "tflop": r.flops / 1e12, "tflops": tflops,
                "mfu": tflops * 1e12 / H100_BF16_PEAK_FLOPS,
                "ms_full_model_estimate": mean * r.model_layers as f64 / r.layers as f64})
        );
        return Ok(());
    }
    println!(
        "Wan DiT forward, {scale:?}, {width}x{height} pixels, {} frames, {:?}, device {}, {} warm-up + {} timed",
        opts.num_frames,
        opts.dtype,
        device_name(&common.precision()),
        common.warmup,
        common.iters
    );
    if r.layers != r.model_layers {
        println!(
            "(reduced: {} of the model's {} layers; FLOPs and times are for the layers run, the full-model estimate scales them)",
            r.layers, r.model_layers
        );
    }
    println!(
        "latent(CxTxHxW)  tokens  layers  ms(mean)  ms(min)  TFLOP  TFLOP/s  MFU  ms(full model est.)"
    );
    println!(
        "{c}x{t}x{h}x{w:<8}  {:>6}  {:>6}  {mean:>8.1}  {min:>7.1}  {:>5.2}  {tflops:>7.3}  {:>4.1}%  {:>10.1}",
        r.tokens,
        r.layers,
        r.flops / 1e12,
        100.0 * tflops * 1e12 / H100_BF16_PEAK_FLOPS,
        mean * r.model_layers as f64 / r.layers as f64
    );
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    Generator::probe_device().map_err(anyhow::Error::msg)?;
    let wan_only = match &args.command {
        BenchCommand::Dit { .. } => None,
        BenchCommand::Vae { common }
        | BenchCommand::Ops { common, .. }
        | BenchCommand::TextEncoder { common }
        | BenchCommand::Pipeline { common, .. } => wan_scale(common),
    };
    if wan_only.is_some() {
        anyhow::bail!("--config wan2.1-14b / wan2.2-5b is only for `omni bench dit`");
    }
    match args.command {
        BenchCommand::Dit { common, wan, .. } if wan_scale(&common).is_some() => {
            let scale = wan_scale(&common).expect("checked");
            wan_dit(&common, scale, &wan)?
        }
        BenchCommand::Dit { common, stage, .. } => dit(&common, stage),
        BenchCommand::Vae { common } => vae(&common),
        BenchCommand::Ops { common, skip_vae } => ops(&common, !skip_vae),
        BenchCommand::TextEncoder { common } => text_encoder(&common),
        BenchCommand::Pipeline {
            common,
            preset,
            num_frames,
            output,
        } => pipeline(&common, &preset, num_frames, output.as_deref())?,
    }
    Ok(())
}

/// `omni bench dit`: one table row (or JSON line) per pyramid stage.
fn dit(common: &Common, stage: Option<usize>) {
    if !common.json {
        print_header(common, "DiT forward");
        println!(
            "stage  latent(TxHxW)  tokens(noisy+history)  ms(mean)  ms(min)  TFLOP  TFLOP/s  MFU  cpu/wall"
        );
    }
    let stages: Vec<usize> = match stage {
        Some(s) => vec![s.min(2)],
        None => vec![2, 1, 0],
    };
    for s in stages {
        let r = bench::dit(common.options(), s);
        let (mean, min) = stats(&r.ms);
        let tflops = r.flops / (mean / 1e3) / 1e12;
        let cpu_wall = cpu_per_wall(&r.ms, &r.cpu_ms);
        if common.json {
            println!(
                "{}",
                serde_json::json!({"stage": s, "tokens": r.noisy_tokens + r.history_tokens,
                    "noisy_tokens": r.noisy_tokens, "ms_mean": mean, "ms_min": min,
                    "cpu_ms_mean": stats(&r.cpu_ms).0, "cpu_per_wall": cpu_wall,
                    "tflop": r.flops / 1e12, "tflops": tflops,
                    "mfu": tflops * 1e12 / H100_BF16_PEAK_FLOPS})
            );
            continue;
        }
        println!(
            "{s:>5}  {:>3}x{}x{:<7}  {:>6} ({}+{})  {mean:>9.1}  {min:>7.1}  {:>5.1}  {tflops:>7.2}  {:>5.1}%  {cpu_wall:>8.2}",
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

/// `{what}, {scale}, {W}x{H} pixels, device {..}, {warmup} warm-up + {iters} timed`.
fn print_header(common: &Common, what: &str) {
    println!(
        "{what}, {:?}, {}x{} pixels, device {}, {} warm-up + {} timed",
        common.scale(),
        common.width,
        common.height,
        device_name(&common.precision()),
        common.warmup,
        common.iters
    );
}

/// Mean and min of timed runs and their cpu/wall, as one JSON line (`--json`) or `None` to
/// print prose.
fn json_or_stats(common: &Common, t: &Timings) -> Option<(f64, f64, f64)> {
    let (mean, min) = stats(&t.ms);
    let cpu_wall = t.cpu_per_wall();
    if common.json {
        println!(
            "{}",
            serde_json::json!({"ms_mean": mean, "ms_min": min,
                "cpu_ms_mean": stats(&t.cpu_ms).0, "cpu_per_wall": cpu_wall})
        );
        return None;
    }
    Some((mean, min, cpu_wall))
}

/// `omni bench vae`: one chunk's decode.
fn vae(common: &Common) {
    let Some((mean, min, cpu_wall)) = json_or_stats(common, &bench::vae(common.options())) else {
        return;
    };
    println!(
        "VAE decode of one chunk (9 latent -> 33 video frames), {:?}, {}x{}, device {}: mean {mean:.1} ms, min {min:.1} ms ({:.1} frames/s), cpu/wall {cpu_wall:.2}",
        common.scale(),
        common.width,
        common.height,
        device_name(&common.precision()),
        33.0 / (mean / 1e3)
    );
}

/// `omni bench text-encoder`: UMT5 on 512 tokens.
fn text_encoder(common: &Common) {
    let t = bench::text_encoder(common.options(), 512);
    let Some((mean, min, cpu_wall)) = json_or_stats(common, &t) else {
        return;
    };
    println!(
        "text encoder on 512 tokens, {:?}, device {}: mean {mean:.1} ms, min {min:.1} ms, cpu/wall {cpu_wall:.2}",
        common.scale(),
        device_name(&common.precision())
    );
}

/// `omni bench ops`: where a forward's time goes, op by op.
fn ops(common: &Common, vae_convs: bool) {
    let ops = bench::ops(common.options(), vae_convs);
    if common.json {
        for op in &ops {
            let (mean, min) = stats(&op.t.ms);
            println!(
                "{}",
                serde_json::json!({"op": op.name, "ms_mean": mean, "ms_min": min,
                    "cpu_per_wall": op.t.cpu_per_wall(), "per_forward": op.per_forward})
            );
        }
        return;
    }
    print_header(common, "DiT / VAE ops at the full-resolution shapes");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>12} {:>14}",
        "op", "ms(mean)", "ms(min)", "cpu/wall", "per forward", "ms per forward"
    );
    let total: f64 = ops
        .iter()
        .map(|op| stats(&op.t.ms).1 * op.per_forward as f64)
        .sum();
    for op in &ops {
        let (mean, min) = stats(&op.t.ms);
        let share = min * op.per_forward as f64;
        println!(
            "{:<44} {mean:>9.2} {min:>9.2} {:>9.2} {:>12} {:>9.1} ({:>4.1}%)",
            op.name,
            op.t.cpu_per_wall(),
            op.per_forward,
            share,
            100.0 * share / total.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "sum over one DiT forward (stage 2): {total:.1} ms (compare `omni bench dit --stage 2`; the rest is glue: cat/narrow, residual adds, patch embedding)"
    );
}

/// `omni bench pipeline`: a whole Distilled run, optionally encoded to `output`.
fn pipeline(
    common: &Common,
    preset: &str,
    num_frames: u32,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        preset == "helios-distilled",
        "unknown preset `{preset}`: only helios-distilled can be benchmarked so far"
    );
    let precision = common.precision();
    let req = bench_request(common.height as u32, common.width as u32, num_frames);
    let mut writer = match output {
        Some(path) => Some(Mp4Writer::create(
            path,
            req.width,
            req.height,
            req.fps,
            EncodeOptions::default(),
        )?),
        None => None,
    };
    let r = bench::pipeline(
        common.scale(),
        precision,
        &req,
        writer.as_mut().map(|w| w as &mut dyn FrameSink),
    )?;
    if let Some(w) = writer {
        w.finish()?;
    }
    match common.json {
        true => print_pipeline_json(&r),
        false => print_pipeline(common, &r, num_frames, &precision),
    }
    Ok(())
}

fn print_pipeline_json(r: &PipelineBench) {
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "{}",
        serde_json::json!({"frames": r.frames, "total_s": r.total_s,
            "fps": r.frames as f64 / r.total_s, "text_encoder_s": r.text_encoder_s,
            "denoise_s": sum(&r.denoise_s), "decode_s": sum(&r.decode_s),
            "output_s": sum(&r.output_s),
            "total_cpu_per_wall": cpu_per_wall(&[r.total_s], &[r.total_cpu_s]),
            "denoise_cpu_per_wall": cpu_per_wall(&r.denoise_s, &r.denoise_cpu_s),
            "decode_cpu_per_wall": cpu_per_wall(&r.decode_s, &r.decode_cpu_s),
            "output_cpu_per_wall": cpu_per_wall(&r.output_s, &r.output_cpu_s),
            "peak_gpu_gib": r.peak_device_memory.map(|m| gib(m.bytes_in_use)),
            "peak_gpu_reserved_gib": r.peak_device_memory.map(|m| gib(m.bytes_reserved)),
            "peak_rss_mib": peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))})
    );
}

fn print_pipeline(common: &Common, r: &PipelineBench, num_frames: u32, precision: &Precision) {
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "Distilled T2V, {:?}, {}x{}, {} frames requested -> {} frames in {} chunks, device {}",
        common.scale(),
        common.width,
        common.height,
        num_frames,
        r.frames,
        r.denoise_s.len(),
        device_name(precision)
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
    println!(
        "cpu/wall (process CPU time over wall time, {} threads): end to end {:.2}, text encoder {:.2}, denoise {:.2}, VAE decode {:.2}, output {:.2}",
        num_threads(),
        cpu_per_wall(&[r.total_s], &[r.total_cpu_s]),
        cpu_per_wall(&[r.text_encoder_s], &[r.text_encoder_cpu_s]),
        cpu_per_wall(&r.denoise_s, &r.denoise_cpu_s),
        cpu_per_wall(&r.decode_s, &r.decode_cpu_s),
        cpu_per_wall(&r.output_s, &r.output_cpu_s)
    );
    for k in 0..r.denoise_s.len().min(r.decode_s.len()) {
        println!(
            "  chunk {k}: denoise {:.2} s (cpu/wall {:.2}), decode {:.2} s (cpu/wall {:.2})",
            r.denoise_s[k],
            cpu_per_wall(&r.denoise_s[k..=k], &r.denoise_cpu_s[k..=k]),
            r.decode_s[k],
            cpu_per_wall(&r.decode_s[k..=k], &r.decode_cpu_s[k..=k])
        );
    }
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
    }
    if let Some(m) = r.peak_device_memory {
        println!(
            "peak GPU memory (allocator, sampled at phase ends): {:.2} GiB in use, {:.2} GiB reserved",
            gib(m.bytes_in_use),
            gib(m.bytes_reserved)
        );
    }
}
