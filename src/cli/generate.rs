//! `omni generate`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::media::{VideoReadOptions, load_image, read_video, to_video_tensor_data};
use omni::pipeline::backend::DefaultBackend;
use omni::pipeline::noise::{FileNoise, NoiseSource, SeededNoise};
use omni::pipeline::pipelines::pipeline_helios_pyramid::{
    FrameSink, HeliosPyramidPipeline, PromptEncoder, RunContext, TextEncoderResidency, VideoFrames,
    checkpoint_defaults,
};
use omni::pipeline::precision::{Precision, parse_dtype};
use omni::pipeline::progress::CancelToken;
use omni::pipeline::request::{
    Conditioning, ConditioningPixels, GenerationRequest, ModelDefaults, Preset, RequestPatch,
    resolve,
};

use super::progress::BarProgress;

/// Arguments of `omni generate`. Unset options take the `--preset`'s values, then the
/// checkpoint's defaults (Base, Mid or Distilled, read from `model_index.json` and the scheduler
/// config: 640x384 pixels, 24 frames/s, 132 frames; Base 50 steps CFG 5; Mid steps 20,20,20
/// CFG-Zero* 5; Distilled steps 2,2,2 without CFG).
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
    /// Classifier-free guidance scale; 1 disables CFG [default: 1.0 Distilled, 5.0 Base and Mid].
    #[arg(long, value_name = "SCALE")]
    pub guidance_scale: Option<f64>,
    /// Denoising steps per pyramid stage, comma-separated (Mid, Distilled) [default: 2,2,2 for
    /// Distilled, 20,20,20 for Mid].
    #[arg(long, value_name = "N,N,N", value_delimiter = ',')]
    pub pyramid_steps: Option<Vec<usize>>,
    /// Denoising steps of the one-stage Base sampler [default: 50].
    #[arg(long, value_name = "N")]
    pub num_inference_steps: Option<usize>,
    /// Request defaults from a preset: a built-in name (helios-base, helios-mid,
    /// helios-distilled) or a TOML file. Flags beat the preset; the preset beats the checkpoint.
    #[arg(long, value_name = "NAME|FILE.toml")]
    pub preset: Option<String>,
    /// Model-specific knobs as a JSON object (vLLM-Omni `extra_params`), e.g.
    /// '{"zero_steps": 0, "use_zero_init": false}'. Flags beat these; these beat the preset.
    #[arg(long, value_name = "JSON")]
    pub extra_params: Option<String>,
    /// Safetensors file with the pipeline's random draws (standard-normal tensors named
    /// `chunk{k}.latents`, `chunk{k}.stage{s}.block_noise`, and for --image / --video the
    /// `image.*`, `fake_image.*`, `video.*` draws; see the README).
    #[arg(long, value_name = "FILE")]
    pub noise_file: Option<PathBuf>,
    /// Image-to-video: condition on this picture (PNG, JPEG or WebP), stretched to the output
    /// size; it becomes the first latent frame of the history.
    #[arg(long, value_name = "FILE", conflicts_with = "video")]
    pub image: Option<PathBuf>,
    /// Video-to-video: continue this H.264 MP4 (frames stretched to the output size; at least
    /// 33 frames, cut into 33-frame windows from the end). The output holds only the new frames.
    #[arg(long, value_name = "FILE.mp4")]
    pub video: Option<PathBuf>,
    /// Output MP4 path (written to a temporary file and renamed when complete).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// VAE compute dtype: f32 (as diffusers' Helios examples load it) or bf16 (faster on a GPU,
    /// slightly different pixels). The transformer and text encoder use the device's dtype
    /// (bf16 with --features cuda, f32 on the CPU).
    #[arg(long, value_name = "DTYPE", default_value = "f32", value_parser = parse_dtype)]
    pub vae_dtype: burn::tensor::DType,
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
            num_inference_steps: self.num_inference_steps,
            ..Default::default()
        }
    }

    /// The request layers, highest precedence first: flags, `--extra-params`, `--preset`.
    fn layers(&self, defaults: &ModelDefaults) -> anyhow::Result<Vec<RequestPatch>> {
        let mut layers = vec![self.patch()];
        if let Some(text) = &self.extra_params {
            layers.push(RequestPatch::from_extra_params(text)?);
        }
        if let Some(name) = &self.preset {
            let preset = load_preset(name)?;
            if let Some(pipeline) = &preset.pipeline {
                let ckpt = match defaults.is_enable_stage2 {
                    true => "HeliosPyramidPipeline",
                    false => "HeliosPipeline",
                };
                if pipeline != ckpt {
                    anyhow::bail!(
                        "preset `{name}` is for {pipeline} checkpoints, but {} holds a {ckpt}",
                        self.model.display()
                    );
                }
            }
            layers.push(preset.patch);
        }
        Ok(layers)
    }
}

/// A built-in preset by name (embedded in the binary), else a TOML file at that path (or
/// `presets/NAME.toml` under the working directory).
fn load_preset(name: &str) -> anyhow::Result<Preset> {
    if let Some(p) = Preset::builtin(name) {
        return Ok(p);
    }
    let candidates = [
        PathBuf::from(name),
        Path::new("presets").join(format!("{name}.toml")),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        anyhow::bail!(
            "unknown preset `{name}`: not a built-in preset ({}) and no such TOML file",
            Preset::builtin_names().join(", ")
        );
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading preset {}", path.display()))?;
    Preset::parse(&text).with_context(|| format!("reading preset {}", path.display()))
}

/// Decode `--image` / `--video` to pixels at the output size (before any output file exists).
fn load_conditioning(args: &GenerateArgs, req: &GenerationRequest) -> anyhow::Result<Conditioning> {
    let (width, height) = (req.width, req.height);
    if let Some(path) = &args.image {
        let img = load_image(path)?;
        let data = to_video_tensor_data(&img, width, height)?;
        return Ok(Conditioning::Image(ConditioningPixels {
            data,
            frames: 1,
            height: height as usize,
            width: width as usize,
        }));
    }
    if let Some(path) = &args.video {
        let video = read_video(path, &VideoReadOptions::resized(width, height))?;
        let window = req.window_num_frames();
        if video.frames.len() < window {
            anyhow::bail!(
                "{}: {} frame(s); video-to-video needs at least {window}",
                path.display(),
                video.frames.len()
            );
        }
        return Ok(Conditioning::Video(ConditioningPixels::from_rgb8_frames(
            &video.frames,
            width as usize,
            height as usize,
        )));
    }
    Ok(Conditioning::None)
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
    let req = resolve(&args.layers(&defaults)?, &defaults)?;
    if args.print_request {
        println!("{}", serde_json::to_string_pretty(&req)?);
        return Ok(());
    }
    let mut req = req;
    req.conditioning = load_conditioning(&args, &req)?;
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

    omni::pipeline::backend::probe_device().map_err(anyhow::Error::msg)?;
    let mut bars = BarProgress::new(args.quiet);
    let device = Default::default();
    let precision = Precision {
        vae: args.vae_dtype,
        ..Precision::for_device::<DefaultBackend>(&device)
    };
    // One prompt: encode it first and drop the text encoder (UMT5-XXL is 11 GB in bf16) before
    // the transformer is loaded, so the two are never in memory together.
    let embeds = {
        let encoder = PromptEncoder::<DefaultBackend>::load(
            &args.model,
            &device,
            precision.text_encoder,
            &mut bars,
        )
        .with_context(|| format!("loading {}", args.model.display()))?;
        encoder.encode_request(&req, &mut bars)?
    };
    let pipe = HeliosPyramidPipeline::<DefaultBackend>::load_with(
        &args.model,
        &device,
        precision,
        TextEncoderResidency::OnDemand,
        &mut bars,
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let mut sink = Mp4Sink { writer };
    let mut ctx = RunContext {
        noise: noise.as_mut(),
        progress: &mut bars,
        cancel: CancelToken::new(),
    };
    pipe.call_with_embeds(&req, embeds, &mut ctx, &mut sink)?;
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
