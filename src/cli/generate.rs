//! `omni generate`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use omni::hub;
use omni::media::fmp4_out::Fmp4Writer;
use omni::media::frames_out::{NpyWriter, PngDirWriter};
use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::pipeline::continuation::HeliosState;
use omni::pipeline::generator::FrameSink;
use omni::pipeline::generator::RunContext;
use omni::pipeline::generator::{
    ExpertResidency, Generator, GeneratorOptions, LoadPolicy, check_expert_residency,
};
use omni::pipeline::noise::{FileNoise, NoiseSource, SeededNoise};
use omni::pipeline::precision::Dtype;
use omni::pipeline::progress::CancelToken;
use omni::pipeline::request::{
    Conditioning, GenerationRequest, LoraSpec, Loras, MediaSource, ModelDefaults, Preset,
    RequestPatch, WorkBudget, resolve,
};

use super::progress::BarProgress;

/// Arguments of `omni generate`. Unset options take the `--preset`'s values, then the
/// checkpoint's defaults (Base, Mid or Distilled, read from `model_index.json` and the scheduler
/// config: 640x384 pixels, 24 frames/s, 132 frames; Base 50 steps CFG 5; Mid steps 20,20,20
/// CFG-Zero* 5; Distilled steps 2,2,2 without CFG).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Diffusers-format checkpoint folder (model_index.json, transformer/, vae/, text_encoder/,
    /// tokenizer/, scheduler/), or a Hugging Face repo id `org/name[@revision]` looked up in the
    /// Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub) and downloaded
    /// when missing (HF_TOKEN for gated repos, HF_ENDPOINT for a mirror; not with HF_HUB_OFFLINE=1).
    #[arg(long, value_name = "DIR|ORG/NAME")]
    pub model: String,
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
    /// Denoising steps of the one-stage Base sampler and of Wan [default: 50].
    #[arg(long, value_name = "N")]
    pub num_inference_steps: Option<usize>,
    /// Wan2.2 two-expert checkpoints: guidance scale of the low-noise expert (transformer_2);
    /// --guidance-scale is the high-noise one's [default: --guidance-scale].
    #[arg(long, value_name = "SCALE")]
    pub guidance_scale_2: Option<f64>,
    /// Wan2.2 two-expert checkpoints: switch experts where the timestep falls below
    /// RATIO · 1000, in (0, 1) [default: the checkpoint's boundary_ratio].
    #[arg(long, value_name = "RATIO")]
    pub boundary_ratio: Option<f64>,
    /// Wan: the scheduler's flow shift [default: the checkpoint's scheduler config].
    #[arg(long, value_name = "SHIFT")]
    pub flow_shift: Option<f64>,
    /// Wan video-to-video (with --video on a WanVideoToVideoPipeline checkpoint): how far the
    /// input video is re-noised, in (0, 1]; the last floor(steps·strength) steps run
    /// [default: 0.8].
    #[arg(long, value_name = "STRENGTH")]
    pub strength: Option<f64>,
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
    /// First-last-frame-to-video (a Wan2.1 FLF2V checkpoint, diffusers `last_image`): the last
    /// frame (PNG, JPEG or WebP), stretched to the output size like --image; needs --image.
    #[arg(long, value_name = "FILE", requires = "image")]
    pub last_image: Option<PathBuf>,
    /// Video-to-video: continue this H.264 MP4 (frames stretched to the output size; at least
    /// 33 frames, cut into 33-frame windows from the end). The output holds only the new frames.
    /// On a Wan video-to-video checkpoint: restyle its first --num-frames frames (see --strength).
    #[arg(long, value_name = "FILE.mp4")]
    pub video: Option<PathBuf>,
    /// Output: an MP4 path (written to a temporary file and renamed when complete); `-` for a
    /// fragmented MP4 on stdout, one fragment per 33-frame chunk as soon as it is decoded (for
    /// `| ffmpeg -i - …`; progress stays on stderr); a folder (`DIR/`, or an existing folder) for
    /// one PNG per frame; a `.npy` path for the uint8 array [frames, height, width, 3].
    #[arg(short = 'o', long, value_name = "FILE|DIR/|-")]
    pub output: PathBuf,
    /// Continue the video whose continuation state this file holds (written by
    /// --return-state): the history, anchor and chunk index it left off at. Same checkpoint,
    /// size and --seed as the first part give the frames one longer run would have made.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Also write the continuation state after the last chunk to this file (safetensors,
    /// kind helios.v1), for a later --state.
    #[arg(long, value_name = "FILE")]
    pub return_state: Option<PathBuf>,
    /// Output format; by default taken from -o (see there).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    /// VAE compute dtype: f32 (as diffusers' Helios examples load it) or bf16 (faster on a GPU,
    /// slightly different pixels). The transformer and text encoder use the device's dtype
    /// (bf16 with --features cuda, f32 on the CPU).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub vae_dtype: Dtype,
    /// Wan2.2 A14B (two experts, transformer and transformer_2): `on` keeps one expert on the
    /// device at a time, loading the other from the checkpoint when the schedule crosses
    /// --boundary-ratio (saves one expert's memory, 26.6 GiB for A14B in bf16, for one reload
    /// per request); `off` keeps both resident; `auto` keeps both when the device's free memory
    /// holds the second expert plus a 20 % reserve (always on the CPU). The frames are the same
    /// either way. `on`/`off` on a one-expert checkpoint is an error [default: auto].
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub offload_experts: ExpertResidency,
    /// LoRA adapter merged into the transformer for this run: a diffusers/PEFT or original
    /// Wan/ComfyUI `.safetensors` file (or a folder with `pytorch_lora_weights.safetensors`),
    /// with an optional strength `:SCALE` [default: 1]. Repeat to combine adapters.
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = LoraSpec::from_cli)]
    pub lora: Vec<LoraSpec>,
    /// Frame interpolation: insert 2^N − 1 RIFE frames between each pair of frames (N in 1..=4;
    /// the fps is multiplied by 2^N unless --fps is given). Needs --rife-model.
    #[arg(long, value_name = "N")]
    pub frame_interpolation_exp: Option<u32>,
    /// RIFE's inference scale for the flow: 0.25, 0.5, 1, 2 or 4 [default: 1].
    #[arg(long, value_name = "SCALE")]
    pub frame_interpolation_scale: Option<f64>,
    /// The RIFE 4.22 lite, 4.22, 4.25 or 4.26 `flownet.pkl` (Practical-RIFE's download) for frame interpolation.
    #[arg(long, value_name = "FILE")]
    pub rife_model: Option<PathBuf>,
    /// Upscale every frame with Real-ESRGAN (after interpolation) by FACTOR, 2 or 4: the
    /// model's own scale, or 2 from a x4 model (its output averaged over 2x2 pixels)
    /// [default without FACTOR: the model's own scale]. Needs --upscale-model.
    #[arg(long, value_name = "FACTOR", num_args = 0..=1, default_missing_value = "0")]
    pub upscale: Option<u32>,
    /// The Real-ESRGAN `.pth` for --upscale: RRDBNet (`RealESRGAN_x4plus.pth`,
    /// `RealESRGAN_x2plus.pth`) or SRVGGNetCompact (`realesr-general-x4v3.pth`,
    /// `realesr-animevideov3.pth`), told apart by its keys.
    #[arg(long, value_name = "FILE")]
    pub upscale_model: Option<PathBuf>,
    /// Print the resolved request as JSON and exit without generating.
    #[arg(long)]
    pub print_request: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What `omni generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// H.264 in MP4: a fast-start file, or a fragmented MP4 when -o is `-` (stdout).
    Mp4,
    /// One PNG per frame (`frame_00000.png`, …) in the -o folder.
    Png,
    /// The uint8 array [frames, height, width, 3] as one NumPy `.npy` file.
    Npy,
}

/// The writer `-o` and `--format` chose.
enum Output {
    Mp4(Mp4Writer),
    Stream(Fmp4Writer<std::io::StdoutLock<'static>>),
    Png(PngDirWriter),
    Npy(NpyWriter),
}

impl Output {
    /// Opens the output before anything is loaded, so a bad `-o` fails in a second.
    fn open(args: &GenerateArgs, req: &GenerationRequest) -> anyhow::Result<Self> {
        let path = &args.output;
        let stdout = path.as_os_str() == "-";
        let is_dir = path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/');
        let format = args.format.unwrap_or_else(|| {
            if is_dir {
                OutputFormat::Png
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
            {
                OutputFormat::Npy
            } else {
                OutputFormat::Mp4
            }
        });
        let ((w, h), fps) = (req.video_size(), req.fps);
        Ok(match format {
            OutputFormat::Mp4 if stdout => Self::Stream(
                Fmp4Writer::new(
                    std::io::stdout().lock(),
                    w,
                    h,
                    fps,
                    EncodeOptions::default(),
                )
                .map_err(anyhow::Error::msg)?,
            ),
            _ if stdout => anyhow::bail!(
                "-o - writes a fragmented MP4 to stdout; --format {format:?} needs a path \
                 (a folder for png, a .npy file for npy)"
            ),
            OutputFormat::Mp4 => Self::Mp4(
                Mp4Writer::create(path, w, h, fps, EncodeOptions::default()).map_err(|e| {
                    anyhow::anyhow!("{e}; choose an existing, writable folder for -o")
                })?,
            ),
            OutputFormat::Png => Self::Png(PngDirWriter::create(path)?),
            OutputFormat::Npy if is_dir => {
                anyhow::bail!(
                    "-o {} is a folder; --format npy needs a file path",
                    path.display()
                )
            }
            OutputFormat::Npy => {
                // Fails now if the folder is missing, rather than after generating.
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => std::path::Path::new("."),
                };
                anyhow::ensure!(
                    dir.is_dir(),
                    "-o {}: folder {} does not exist",
                    path.display(),
                    dir.display()
                );
                Self::Npy(NpyWriter::new(path))
            }
        })
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        match self {
            Self::Mp4(w) => w,
            Self::Stream(w) => w,
            Self::Png(w) => w,
            Self::Npy(w) => w,
        }
    }

    /// Completes the output; a one-line description of what was written.
    fn finish(self, path: &std::path::Path) -> anyhow::Result<String> {
        let with_path = || format!("writing {}", path.display());
        Ok(match self {
            Self::Mp4(w) => {
                let s = w.finish().with_context(with_path)?;
                format!(
                    "wrote {} ({} frames, {}x{} at {} fps, {:.2} s of video, {} bytes)",
                    path.display(),
                    s.frames,
                    s.width,
                    s.height,
                    s.fps,
                    s.duration_s,
                    s.bytes
                )
            }
            Self::Stream(w) => {
                let (_, s) = w.finish().context("writing the video stream to stdout")?;
                format!(
                    "streamed {} frames ({} fragments, {:.2} s of video, {} bytes) to stdout",
                    s.frames, s.fragments, s.duration_s, s.bytes
                )
            }
            Self::Png(w) => format!("wrote {} PNG frames to {}", w.frames(), path.display()),
            Self::Npy(w) => {
                let frames = w.finish().with_context(with_path)?;
                format!(
                    "wrote {} ({frames} frames, uint8 [F, H, W, 3])",
                    path.display()
                )
            }
        })
    }
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
            guidance_scale_2: self.guidance_scale_2,
            boundary_ratio: self.boundary_ratio,
            flow_shift: self.flow_shift,
            strength: self.strength,
            lora: (!self.lora.is_empty()).then(|| Loras(self.lora.clone())),
            enable_frame_interpolation: self.frame_interpolation_exp.map(|_| true),
            frame_interpolation_exp: self.frame_interpolation_exp,
            frame_interpolation_scale: self.frame_interpolation_scale,
            frame_interpolation_model_path: self
                .rife_model
                .as_ref()
                .map(|p| p.display().to_string()),
            enable_upscale: self.upscale.map(|_| true),
            upscale_factor: self.upscale.filter(|f| *f != 0),
            upscale_model_path: self.upscale_model.as_ref().map(|p| p.display().to_string()),
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
            let preset = Preset::load(name)?;
            preset.check(defaults)?;
            layers.push(preset.patch);
        }
        Ok(layers)
    }

    /// Decode `--image` / `--video` to pixels at the output size (before any output file exists).
    fn conditioning(&self, req: &GenerationRequest) -> anyhow::Result<Conditioning> {
        let with_path = |p: &PathBuf| format!("reading {}", p.display());
        if let (Some(first), Some(last)) = (&self.image, &self.last_image) {
            return Conditioning::from_first_last(
                MediaSource::File(first),
                MediaSource::File(last),
                req,
            )
            .with_context(|| format!("reading {} and {}", first.display(), last.display()));
        }
        if let Some(path) = &self.image {
            return Conditioning::from_image(MediaSource::File(path), req)
                .with_context(|| with_path(path));
        }
        if let Some(path) = &self.video {
            return Conditioning::from_video(MediaSource::File(path), req)
                .with_context(|| with_path(path));
        }
        Ok(Conditioning::None)
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let model = hub::locate(&args.model)?.dir;
    let defaults = Generator::defaults_of(&model)
        .with_context(|| format!("reading checkpoint {}", model.display()))?;
    check_expert_residency(&defaults, args.offload_experts)
        .map_err(|why| anyhow::anyhow!("--offload-experts {}: {why}", args.offload_experts))?;
    let mut req = resolve(&args.layers(&defaults)?, &defaults)?;
    WorkBudget::default().check(&req)?;
    for spec in &mut req.lora.0 {
        // Absolute paths in the printed / run request; a missing file fails here.
        if let Some(p) = &spec.path {
            let abs = std::fs::canonicalize(p).with_context(|| format!("--lora {p}"))?;
            spec.path = Some(abs.display().to_string());
        }
    }
    Generator::check_loras(&model, &req)?;
    if req.enable_frame_interpolation {
        if req.frame_interpolation_model_path.is_empty() {
            anyhow::bail!(
                "invalid `enable_frame_interpolation`: frame interpolation needs a RIFE model; pass --rife-model FILE (a RIFE 4.22 lite, 4.22, 4.25 or 4.26 flownet.pkl)"
            );
        }
        let p = &req.frame_interpolation_model_path;
        let abs = std::fs::canonicalize(p).with_context(|| format!("--rife-model {p}"))?;
        req.frame_interpolation_model_path = abs.display().to_string();
    }
    if req.enable_upscale {
        if req.upscale_model_path.is_empty() {
            anyhow::bail!(
                "invalid `enable_upscale`: upscaling needs a Real-ESRGAN model; pass --upscale-model FILE (e.g. RealESRGAN_x4plus.pth)"
            );
        }
        let p = &req.upscale_model_path;
        let abs = std::fs::canonicalize(p).with_context(|| format!("--upscale-model {p}"))?;
        req.upscale_model_path = abs.display().to_string();
        let native = omni::postprocess::realesrgan::native_scale(&abs)?;
        if req.upscale_factor == 0 {
            req.upscale_factor = native as u32;
        }
        omni::postprocess::realesrgan::check_factor(native, req.upscale_factor as usize)
            .map_err(|m| anyhow::anyhow!("invalid `upscale_factor` (--upscale): {m}"))?;
    }
    if args.print_request {
        println!("{}", serde_json::to_string_pretty(&req)?);
        return Ok(());
    }
    req.conditioning = args.conditioning(&req)?;
    let mut noise: Box<dyn NoiseSource> = match &args.noise_file {
        Some(path) => Box::new(FileNoise::open(path)?),
        None => Box::new(SeededNoise::new(req.seed)),
    };
    let state = match &args.state {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --state {}", path.display()))?;
            Some(
                HeliosState::from_bytes(&bytes)
                    .with_context(|| format!("reading --state {}", path.display()))?,
            )
        }
        None => None,
    };
    // Fails now, before minutes of loading, if the output cannot be written.
    let mut output = Output::open(&args, &req)?;

    Generator::probe_device().map_err(anyhow::Error::msg)?;
    let mut bars = BarProgress::new(args.quiet);
    // One prompt: the generator encodes it first and drops the text encoder (UMT5-XXL is 11 GB
    // in bf16) before the transformer is loaded, so the two are never in memory together.
    let options = GeneratorOptions {
        load: LoadPolicy::EncodeThenLoad,
        vae_dtype: Some(args.vae_dtype),
        offload_experts: args.offload_experts,
    };
    let mut generator = Generator::open(&model, options, &mut bars)
        .with_context(|| format!("loading {}", model.display()))?;
    let mut ctx = RunContext {
        noise: noise.as_mut(),
        progress: &mut bars,
        cancel: CancelToken::new(),
    };
    let (_, state_out) = generator.generate_continued(
        &req,
        &mut ctx,
        output.sink(),
        state.as_ref(),
        args.return_state.is_some(),
    )?;
    if let (Some(path), Some(st)) = (&args.return_state, state_out) {
        std::fs::write(path, st.to_bytes())
            .with_context(|| format!("writing --return-state {}", path.display()))?;
    }
    bars.finish();
    let wrote = output.finish(&args.output)?;
    if !args.quiet {
        eprintln!("{wrote} in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
