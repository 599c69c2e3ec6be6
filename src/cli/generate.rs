//! `omni generate`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::pipeline::backend::DefaultBackend;
use omni::pipeline::noise::{FileNoise, NoiseSource, SeededNoise};
use omni::pipeline::pipelines::pipeline_helios_pyramid::{
    FrameSink, HeliosPyramidPipeline, RunContext, VideoFrames, checkpoint_defaults,
};
use omni::pipeline::progress::CancelToken;
use omni::pipeline::request::{RequestPatch, resolve};

use super::progress::BarProgress;

/// Arguments of `omni generate`. Unset options take the checkpoint's defaults
/// (Helios-Distilled: 640x384 pixels, 24 frames/s, 132 frames, pyramid steps 2,2,2).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Diffusers-format Helios checkpoint folder (model_index.json, transformer/, vae/,
    /// text_encoder/, tokenizer/, scheduler/), as `huggingface-cli download` leaves it.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// What to generate.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// What to avoid; used only when --guidance-scale > 1 [default: empty].
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// Output width in pixels, a multiple of 64 [default: 640].
    #[arg(long, value_name = "PIXELS")]
    pub width: Option<u32>,
    /// Output height in pixels, a multiple of 64 [default: 384].
    #[arg(long, value_name = "PIXELS")]
    pub height: Option<u32>,
    /// Frames to generate; made in chunks of 33 and trimmed to 4k+1 as diffusers does
    /// (66 → 65, 99 → 97) [default: 132].
    #[arg(long, value_name = "FRAMES")]
    pub num_frames: Option<u32>,
    /// Frame rate of the MP4 in frames per second [default: 24].
    #[arg(long, value_name = "FPS")]
    pub fps: Option<u32>,
    /// Seed of the random draws (ignored for the draws a --noise-file supplies) [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Classifier-free guidance scale; 1 disables CFG (the Distilled default) [default: 1.0].
    #[arg(long, value_name = "SCALE")]
    pub guidance_scale: Option<f64>,
    /// Denoising steps per pyramid stage, comma-separated [default: 2,2,2].
    #[arg(long, value_name = "N,N,N", value_delimiter = ',')]
    pub pyramid_steps: Option<Vec<usize>>,
    /// Safetensors file with the pipeline's random draws (standard-normal tensors named
    /// `chunk{k}.latents`, `chunk{k}.stage{s}.block_noise`; see the README).
    #[arg(long, value_name = "FILE")]
    pub noise_file: Option<PathBuf>,
    /// Output MP4 path (written to a temporary file and renamed when complete).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print the resolved request as JSON and exit without generating.
    #[arg(long)]
    pub print_request: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

impl GenerateArgs {
    /// The CLI layer of the request.
    fn patch(&self) -> RequestPatch {
        RequestPatch {
            prompt: Some(self.prompt.clone()),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width,
            height: self.height,
            num_frames: self.num_frames,
            fps: self.fps,
            seed: self.seed,
            guidance_scale: self.guidance_scale,
            pyramid_num_inference_steps_list: self.pyramid_steps.clone(),
            ..Default::default()
        }
    }
}

/// Feeds decoded chunks to the MP4 writer (float → u8 as diffusers' `export_to_video`).
struct Mp4Sink {
    writer: Mp4Writer,
}

impl FrameSink for Mp4Sink {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.writer
            .push_frames_f32(&frames.data)
            .map_err(|e| e.to_string())
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let defaults = checkpoint_defaults(&args.model)
        .with_context(|| format!("reading checkpoint {}", args.model.display()))?;
    let req = resolve(&[args.patch()], &defaults)?;
    if args.print_request {
        println!("{}", serde_json::to_string_pretty(&req)?);
        return Ok(());
    }
    let mut noise: Box<dyn NoiseSource> = match &args.noise_file {
        Some(path) => Box::new(FileNoise::open(path)?),
        None => Box::new(SeededNoise::new(req.seed)),
    };
    // Fails now, before minutes of loading, if the output cannot be written.
    let writer = Mp4Writer::create(
        &args.output,
        req.width,
        req.height,
        req.fps,
        EncodeOptions::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}; choose an existing, writable folder for -o"))?;

    let mut bars = BarProgress::new(args.quiet);
    let device = Default::default();
    let pipe = HeliosPyramidPipeline::<DefaultBackend>::load(&args.model, &device, &mut bars)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut sink = Mp4Sink { writer };
    let mut ctx = RunContext {
        noise: noise.as_mut(),
        progress: &mut bars,
        cancel: CancelToken::new(),
    };
    pipe.call(&req, &mut ctx, &mut sink)?;
    bars.finish();
    let summary = sink
        .writer
        .finish()
        .with_context(|| format!("writing {}", args.output.display()))?;
    if !args.quiet {
        eprintln!(
            "wrote {} ({} frames, {}x{} at {} fps, {:.2} s of video, {} bytes) in {:.1} s",
            args.output.display(),
            summary.frames,
            summary.width,
            summary.height,
            summary.fps,
            summary.duration_s,
            summary.bytes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
