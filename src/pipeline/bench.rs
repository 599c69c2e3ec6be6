//! Benchmarks behind `omni bench`: the DiT forward, the VAE decode of one chunk, the text
//! encoder, and the whole Distilled pipeline, with random weights at the real Helios shapes
//! ([`ModelScale::Helios14B`], for GPUs), at a 1.3B-like width ([`ModelScale::Medium`], the CPU
//! at realistic sizes) or at the tiny test shapes ([`ModelScale::Tiny`], for CPUs). Speed does
//! not depend on weight values, so no checkpoint is needed.
//!
//! Timings synchronise the device ([`Backend::sync`]) around each measured call. FLOPs follow the
//! model of `shared/reference/helios.md` §10.2 ([`dit_forward_flops`]).

use std::time::Instant;

use burn::nn::{LinearConfig, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};

use crate::pipeline::backend::{DeviceMemory, device_memory};
use crate::pipeline::models::activations::gelu_tanh;
use crate::pipeline::models::attention_dispatch::dispatch_attention;
use crate::pipeline::models::autoencoder_kl_wan::{AutoencoderKLWan, AutoencoderKLWanConfig};
use crate::pipeline::models::linear_dispatch::dispatch_linear;
use crate::pipeline::models::transformer_helios::{
    HeliosTransformer3DModel, HeliosTransformer3DModelConfig, HistoryInputs, RotaryEmbedding,
    apply_rotary_emb_transposed, fp32_layer_norm,
};
use crate::pipeline::models::transformer_wan::WanTransformer3DModelConfig;
use crate::pipeline::models::umt5::{UMT5Config, UMT5EncoderModel};
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::pipelines::pipeline_helios_pyramid::{
    DenoiseParts, FrameSink, PipelineError, PipelineScheduler, RunContext, Variant, VideoFrames,
};
use crate::pipeline::precision::{Precision, PrecisionMapper};
use crate::pipeline::progress::{CancelToken, Progress, ProgressSink};
use crate::pipeline::request::{GenerationRequest, ModelDefaults, RequestPatch, resolve};
use crate::pipeline::schedulers::scheduling_helios_dmd::{
    HeliosDMDScheduler, HeliosDMDSchedulerConfig,
};

/// Dense bf16 peak of an H100 SXM / H200 in FLOP/s, the MFU denominator.
pub const H100_BF16_PEAK_FLOPS: f64 = 989e12;

/// Which model shapes to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelScale {
    /// The real Helios shapes: 14B DiT (40 layers, 5120 wide), Wan2.1 VAE, UMT5-XXL.
    Helios14B,
    /// A 1.3B-like DiT at realistic width (Wan2.1-1.3B's 1536 wide: 12 heads of 128, FFN 8960)
    /// with 2 layers (`tests/fixtures/configs/medium/`), the real Wan2.1 VAE, and the tiny text
    /// encoder and scheduler: the CPU row at realistic matmul and attention sizes. Its
    /// `text_dim` is the tiny encoder's 32 so the pipeline benchmark runs; that only sizes the
    /// text projection, which runs once per prompt.
    Medium,
    /// The tiny test shapes of `tests/fixtures/tiny-helios-distilled`.
    Tiny,
}

/// A model's configs, embedded from the committed fixtures (one source of truth with the tests).
struct Configs {
    transformer: &'static str,
    vae: &'static str,
    text_encoder: &'static str,
    scheduler: &'static str,
}

/// [`Configs`] from the four config files of one fixture folder, embedded at compile time:
/// `fixture_configs!("dir/": "transformer file", "vae file", "text encoder file", "scheduler file")`.
macro_rules! fixture_configs {
    ($dir:literal: $transformer:literal, $vae:literal, $text_encoder:literal, $scheduler:literal) => {
        Configs {
            transformer: include_str!(concat!("../../tests/fixtures/", $dir, $transformer)),
            vae: include_str!(concat!("../../tests/fixtures/", $dir, $vae)),
            text_encoder: include_str!(concat!("../../tests/fixtures/", $dir, $text_encoder)),
            scheduler: include_str!(concat!("../../tests/fixtures/", $dir, $scheduler)),
        }
    };
}

impl ModelScale {
    fn configs(self) -> Configs {
        match self {
            ModelScale::Helios14B => fixture_configs!("configs/helios-distilled/":
                "transformer_config.json",
                "vae_config.json",
                "text_encoder_config.json",
                "scheduler_config.json"
            ),
            ModelScale::Medium => Configs {
                transformer: include_str!(
                    "../../tests/fixtures/configs/medium/transformer_config.json"
                ),
                ..ModelScale::Helios14B.configs_with_tiny_text()
            },
            ModelScale::Tiny => fixture_configs!("tiny-helios-distilled/":
                "transformer/config.json",
                "vae/config.json",
                "text_encoder/config.json",
                "scheduler/scheduler_config.json"
            ),
        }
    }

    /// The real configs with the tiny text encoder and scheduler (UMT5-XXL would not fit a CPU
    /// box beside the rest).
    fn configs_with_tiny_text(self) -> Configs {
        let tiny = ModelScale::Tiny.configs();
        Configs {
            text_encoder: tiny.text_encoder,
            scheduler: tiny.scheduler,
            ..self.configs()
        }
    }

    /// The transformer config of this scale.
    pub fn transformer_config(self) -> HeliosTransformer3DModelConfig {
        serde_json::from_str(self.configs().transformer).expect("embedded config is valid")
    }
    fn vae_config(self) -> AutoencoderKLWanConfig {
        serde_json::from_str(self.configs().vae).expect("embedded config is valid")
    }
    fn text_encoder_config(self) -> UMT5Config {
        serde_json::from_str(self.configs().text_encoder).expect("embedded config is valid")
    }
    fn scheduler(self) -> HeliosDMDScheduler {
        let cfg: HeliosDMDSchedulerConfig =
            serde_json::from_str(self.configs().scheduler).expect("embedded config is valid");
        HeliosDMDScheduler::new(cfg).expect("embedded config is valid")
    }
}

/// FLOPs of one DiT forward (2 FLOP per multiply-add), as in helios.md §10.2: self-attention
/// QKVO projections and FFN on all `total_tokens`, self-attention core `4·S²·d`, cross-attention
/// Q/O projections and core on the `noisy_tokens` only (guidance cross-attention), text K/V on
/// `text_len` tokens. Embeddings and norms are left out (< 0.1 %).
pub fn dit_forward_flops(
    cfg: &HeliosTransformer3DModelConfig,
    noisy_tokens: usize,
    total_tokens: usize,
    text_len: usize,
) -> f64 {
    let d = (cfg.num_attention_heads * cfg.attention_head_dim) as f64;
    let (s, n, l, f) = (
        total_tokens as f64,
        noisy_tokens as f64,
        text_len as f64,
        cfg.ffn_dim as f64,
    );
    let per_layer = 2.0 * s * 4.0 * d * d
        + 4.0 * s * s * d
        + 2.0 * n * 2.0 * d * d
        + 2.0 * l * 2.0 * d * d
        + 4.0 * n * l * d
        + 2.0 * s * 2.0 * d * f;
    per_layer * cfg.num_layers as f64
}

/// What every component benchmark takes: model shapes and dtypes, video size, repetitions.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub scale: ModelScale,
    pub precision: Precision,
    /// Video height in pixels.
    pub height: usize,
    /// Video width in pixels.
    pub width: usize,
    /// Untimed runs first (JIT compilation, autotune).
    pub warmup: usize,
    /// Timed runs.
    pub iters: usize,
}

/// Result of [`bench_dit`].
#[derive(Debug, Clone)]
pub struct DitBench {
    /// Latent size of the noisy chunk `[T, H, W]` (latent pixels).
    pub latent: [usize; 3],
    pub noisy_tokens: usize,
    pub history_tokens: usize,
    /// FLOPs of one forward ([`dit_forward_flops`]).
    pub flops: f64,
    /// Milliseconds of each timed forward.
    pub ms: Vec<f64>,
    /// Process CPU milliseconds (all threads, user + system) of each timed forward.
    pub cpu_ms: Vec<f64>,
}

/// Time the DiT forward at `height`×`width` pixels for pyramid stage `stage` (2 = full
/// resolution, 1 = half, 0 = quarter; history always at full resolution), `warmup` untimed then
/// `iters` timed forwards, with random weights (in `precision.transformer`, f32 for the modules
/// diffusers keeps in f32) and inputs and 512 text tokens.
pub fn bench_dit<B: Backend>(opts: BenchOptions, stage: usize, device: &B::Device) -> DitBench {
    let cfg = opts.scale.transformer_config();
    let model: HeliosTransformer3DModel<B> =
        cfg.init_with_dtype(device, opts.precision.transformer);
    let (lh, lw) = (opts.height / 8, opts.width / 8);
    let down = 1usize << (2 - stage.min(2));
    let (h, w) = (lh / down, lw / down);
    let c = cfg.in_channels;
    let rand =
        |shape: [usize; 5]| Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let hidden = rand([1, c, 9, h, w]);
    let history = HistoryInputs {
        latents_history_short: rand([1, c, 2, lh, lw]),
        latents_history_mid: rand([1, c, 2, lh, lw]),
        latents_history_long: rand([1, c, 16, lh, lw]),
        indices_latents_history_short: vec![0, 19],
        indices_latents_history_mid: vec![17, 18],
        indices_latents_history_long: (1..17).collect(),
    };
    // As the pipeline: the prompt's projection and cross-attention K/V once, outside the timing.
    let text = model.text_context(model.project_text(Tensor::random(
        [1, 512, cfg.text_dim],
        Distribution::Normal(0.0, 1.0),
        device,
    )));
    let indices: Vec<i64> = (20..29).collect();
    let (p_h, p_w) = (cfg.patch_size[1], cfg.patch_size[2]);
    let noisy_tokens = 9 * (h / p_h) * (w / p_w);
    // short: 2 frames at patch 2x2; mid: 2 frames at 2x4x4 (1 token frame); long: 16 at 4x8x8.
    let history_tokens = 2 * (lh / 2) * (lw / 2)
        + lh.div_ceil(4) * lw.div_ceil(4)
        + 4 * lh.div_ceil(8) * lw.div_ceil(8);
    let t = time_calls::<B, _>(&opts, device, || {
        drop(model.forward_with_context(hidden.clone(), &[500.0], &text, &indices, Some(&history)))
    });
    DitBench {
        latent: [9, h, w],
        noisy_tokens,
        history_tokens,
        flops: dit_forward_flops(&cfg, noisy_tokens, noisy_tokens + history_tokens, 512),
        ms: t.ms,
        cpu_ms: t.cpu_ms,
    }
}

/// Time the VAE decode of one chunk (9 latent frames → 33 video frames) at `height`×`width`.
/// Returns wall and CPU milliseconds per timed decode; the VAE computes in `precision.vae`.
pub fn bench_vae<B: Backend>(opts: BenchOptions, device: &B::Device) -> Timings {
    let cfg = opts.scale.vae_config();
    let z_dim = cfg.z_dim;
    let vae = AutoencoderKLWan::<B>::new(cfg, device).expect("embedded config is valid");
    let vae = PrecisionMapper::apply(vae, opts.precision.vae, &[]);
    let z = Tensor::<B, 5>::random(
        [1, z_dim, 9, opts.height / 8, opts.width / 8],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    time_calls::<B, _>(&opts, device, || drop(vae.decode(z.clone())))
}

/// Time the text encoder on one prompt of `tokens` tokens (512 as the pipeline pads).
/// Returns wall and CPU milliseconds per timed forward; the encoder computes in
/// `precision.text_encoder`.
pub fn bench_text_encoder<B: Backend>(
    opts: BenchOptions,
    tokens: usize,
    device: &B::Device,
) -> Timings {
    let cfg = opts.scale.text_encoder_config();
    let encoder = UMT5EncoderModel::<B>::new(&cfg, device).expect("embedded config is valid");
    let encoder = PrecisionMapper::apply(encoder, opts.precision.text_encoder, &[]);
    let ids: Vec<i64> = (0..tokens as i64).map(|i| 3 + i % 400).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, tokens]), device);
    let mask = Tensor::<B, 2, Int>::ones([1, tokens], device);
    time_calls::<B, _>(&opts, device, || {
        drop(encoder.forward(ids.clone(), mask.clone()))
    })
}

/// CPU time this process has used so far, all threads, user + system
/// (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`), in seconds; 0 where the clock is missing.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall and process CPU time of a stretch of work ([`process_cpu_seconds`]); `cpu / wall` is
/// the number of cores it kept busy on average (2.0 = both threads of a 2-thread pool).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    /// `(wall, cpu)` seconds since [`Stopwatch::start`].
    pub fn elapsed(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            process_cpu_seconds() - self.cpu,
        )
    }
}

/// Wall and process CPU milliseconds of each timed call ([`time_calls`]).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Wall milliseconds of each timed call.
    pub ms: Vec<f64>,
    /// Process CPU milliseconds (all threads, user + system) of each timed call.
    pub cpu_ms: Vec<f64>,
}

impl Timings {
    /// Total CPU time over total wall time of the timed calls (cores busy on average).
    pub fn cpu_per_wall(&self) -> f64 {
        cpu_per_wall(&self.ms, &self.cpu_ms)
    }
}

/// `Σ cpu / Σ wall` (0 for no time).
pub fn cpu_per_wall(wall: &[f64], cpu: &[f64]) -> f64 {
    let wall: f64 = wall.iter().sum();
    let cpu: f64 = cpu.iter().sum();
    if wall > 0.0 { cpu / wall } else { 0.0 }
}

/// `opts.warmup` untimed then `opts.iters` timed calls of `f`, the device synced around each;
/// wall and CPU milliseconds per timed call.
fn time_calls<B: Backend, F: FnMut()>(
    opts: &BenchOptions,
    device: &B::Device,
    mut f: F,
) -> Timings {
    let (warmup, iters) = (opts.warmup, opts.iters);
    let mut t = Timings::default();
    for i in 0..warmup + iters {
        let _ = B::sync(device);
        let watch = Stopwatch::start();
        f();
        let _ = B::sync(device);
        let (wall, cpu) = watch.elapsed();
        if i >= warmup {
            t.ms.push(wall * 1e3);
            t.cpu_ms.push(cpu * 1e3);
        }
    }
    t
}

/// One building block of the DiT / VAE timed alone by [`bench_ops`].
#[derive(Debug, Clone)]
pub struct OpBench {
    /// The op, named as `benches/reference/time_diffusers.py --ops` names it.
    pub name: String,
    /// How many times one DiT forward runs it (per block × blocks; 0 for the VAE ops).
    pub per_forward: usize,
    /// Wall and CPU milliseconds of each timed call.
    pub t: Timings,
}

/// Time the building blocks of one DiT block at the full-resolution (stage 2) shapes of
/// `height`×`width` — the projections and FFN matmuls, self- and cross-attention, the f32 layer
/// norm with modulation, the q/k RMS norms and RoPE, each exactly as the model calls it — and the
/// VAE decoder's 3×3×3 conv3d at each of its resolutions (f32). Multiplying by
/// [`OpBench::per_forward`] and summing gives where a DiT forward's time goes.
///
/// `vae_convs: false` leaves the conv3d rows out (at the real VAE widths they take minutes).
pub fn bench_ops<B: Backend>(
    opts: BenchOptions,
    vae_convs: bool,
    device: &B::Device,
) -> Vec<OpBench> {
    let block = BlockBench::<B> {
        opts: &opts,
        s: BlockShapes::new(&opts),
        dtype: opts.precision.transformer,
        device,
    };
    let mut out = block.matmuls();
    out.extend(block.attention());
    out.extend(block.norms());
    out.extend(block.sgemms());
    if vae_convs {
        out.extend(bench_vae_convs::<B>(&opts, device));
    }
    out
}

/// The full-resolution (stage 2) shapes of one DiT block, as [`bench_ops`] times it.
struct BlockShapes {
    dim: usize,
    heads: usize,
    head_dim: usize,
    ffn: usize,
    layers: usize,
    /// Noisy tokens: 9 latent frames at patch 2×2.
    noisy: usize,
    /// Noisy plus history tokens (short 2 frames at 2×2, mid 2 at 2×4×4, long 16 at 4×8×8).
    seq: usize,
    eps: f64,
}

impl BlockShapes {
    fn new(opts: &BenchOptions) -> Self {
        let cfg = opts.scale.transformer_config();
        let (lh, lw) = (opts.height / 8, opts.width / 8);
        let noisy = 9 * (lh / 2) * (lw / 2);
        Self {
            dim: cfg.inner_dim(),
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
            ffn: cfg.ffn_dim,
            layers: cfg.num_layers,
            noisy,
            seq: noisy
                + 2 * (lh / 2) * (lw / 2)
                + lh.div_ceil(4) * lw.div_ceil(4)
                + 4 * lh.div_ceil(8) * lw.div_ceil(8),
            eps: cfg.eps,
        }
    }
}

/// A standard-normal tensor of `shape` in `dtype`.
fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::<B, 1>::random(
        [shape.iter().product::<usize>()],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .cast(dtype)
    .reshape(shape)
}

/// One [`OpBench`]: `f` timed by [`time_calls`].
fn time_op<B: Backend>(
    opts: &BenchOptions,
    device: &B::Device,
    name: &str,
    per_forward: usize,
    f: impl FnMut(),
) -> OpBench {
    OpBench {
        name: name.to_string(),
        per_forward,
        t: time_calls::<B, _>(opts, device, f),
    }
}

/// What the DiT block op benchmarks share: the options, the block shapes, the compute dtype.
struct BlockBench<'a, B: Backend> {
    opts: &'a BenchOptions,
    s: BlockShapes,
    dtype: DType,
    device: &'a B::Device,
}

impl<B: Backend> BlockBench<'_, B> {
    /// A standard-normal tensor of `shape` in the compute dtype.
    fn random<const D: usize>(&self, shape: [usize; D]) -> Tensor<B, D> {
        random::<B, D>(shape, self.dtype, self.device)
    }

    /// An op each block of a forward runs `per_block` times.
    fn time(&self, name: &str, per_block: usize, f: impl FnMut()) -> OpBench {
        time_op::<B>(self.opts, self.device, name, per_block * self.s.layers, f)
    }

    /// The block's linear layers: attention projections and the FFN.
    fn matmuls(&self) -> Vec<OpBench> {
        let (s, dtype, device) = (&self.s, self.dtype, self.device);
        let linear = |i: usize, o: usize| {
            PrecisionMapper::apply(LinearConfig::new(i, o).init::<B>(device), dtype, &[])
        };
        let x = self.random([1, s.seq, s.dim]);
        let xn = self.random([1, s.noisy, s.dim]);
        let h_ffn = self.random([1, s.seq, s.ffn]);
        let (proj, up, down) = (
            linear(s.dim, s.dim),
            linear(s.dim, s.ffn),
            linear(s.ffn, s.dim),
        );
        vec![
            self.time("linear dim->dim (self-attn q/k/v/out)", 4, || {
                drop(dispatch_linear(&proj, x.clone()))
            }),
            self.time("linear dim->dim (cross-attn q/out)", 2, || {
                drop(dispatch_linear(&proj, xn.clone()))
            }),
            self.time("ffn up dim->ffn + gelu", 1, || {
                drop(gelu_tanh(dispatch_linear(&up, x.clone())))
            }),
            self.time("ffn down ffn->dim", 1, || {
                drop(dispatch_linear(&down, h_ffn.clone()))
            }),
        ]
    }

    /// The plain products of the linear layers, no bias (`matmul MxKxN (no bias)`, not part of
    /// the forward's sum): `x [1, M, K] · w [1, K, N]`, the layout burn's `Linear` hands
    /// burn-flex (which runs gemm with `Parallelism::Rayon`), against torch's `x @ w.T` and
    /// numpy's matmul in `time_diffusers.py --ops`.
    fn sgemms(&self) -> Vec<OpBench> {
        let s = &self.s;
        [
            (s.seq, s.dim, s.dim),
            (s.seq, s.dim, s.ffn),
            (s.seq, s.ffn, s.dim),
        ]
        .into_iter()
        .map(|(m, k, n)| {
            let (a, w) = (self.random([1, m, k]), self.random([1, k, n]));
            let name = format!("matmul {m}x{k}x{n} (no bias)");
            time_op::<B>(self.opts, self.device, &name, 0, || {
                drop(a.clone().matmul(w.clone()))
            })
        })
        .collect()
    }

    /// The block's attention cores: self-attention over all tokens, cross-attention from the
    /// noisy tokens to 512 text tokens.
    fn attention(&self) -> Vec<OpBench> {
        let s = &self.s;
        let heads = |len: usize| self.random([1, s.heads, len, s.head_dim]);
        let (q, k, v) = (heads(s.seq), heads(s.seq), heads(s.seq));
        let (qc, kc, vc) = (heads(s.noisy), heads(512), heads(512));
        let attend = |q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>| {
            drop(dispatch_attention(q.clone(), k.clone(), v.clone()))
        };
        vec![
            self.time("self-attention (flash)", 1, || attend(&q, &k, &v)),
            self.time("cross-attention (512 keys)", 1, || attend(&qc, &kc, &vc)),
        ]
    }

    /// The block's normalisations and RoPE: the f32 layer norm with modulation, the q/k RMS
    /// norms, the rotary embedding of q/k.
    fn norms(&self) -> Vec<OpBench> {
        let (s, dtype, device) = (&self.s, self.dtype, self.device);
        let x = self.random([1, s.seq, s.dim]);
        let modulation = random::<B, 3>([1, 1, s.dim], DType::F32, device);
        let rms = PrecisionMapper::apply(RmsNormConfig::new(s.dim).init::<B>(device), dtype, &[]);
        let qh = self.random([1, s.seq, s.heads, s.head_dim]);
        let half = [1, s.seq, 1, s.head_dim / 2, 1];
        let rope = RotaryEmbedding {
            cos: random::<B, 5>(half, DType::F32, device),
            sin: random::<B, 5>(half, DType::F32, device),
        };
        vec![
            self.time("fp32 layer norm + modulate", 2, || {
                let normed = fp32_layer_norm(x.clone(), None, None, s.eps);
                drop((normed * (modulation.clone() + 1.0) + modulation.clone()).cast(dtype))
            }),
            self.time("rms norm q/k", 2, || drop(rms.forward(x.clone()))),
            self.time("rope q/k", 2, || {
                drop(apply_rotary_emb_transposed(qh.clone(), &rope))
            }),
        ]
    }
}

/// VAE decoder conv3d 3×3×3 with 2 causal frames in front, in `precision.vae` (Wan2.1: base_dim
/// 96, dim_mult [1, 2, 4, 4]): latent resolution 384 ch, then ×2, ×4, ×8 with 4 frames.
fn bench_vae_convs<B: Backend>(opts: &BenchOptions, device: &B::Device) -> Vec<OpBench> {
    let (lh, lw) = (opts.height / 8, opts.width / 8);
    let base = opts.scale.vae_config().base_dim;
    let dtype = opts.precision.vae;
    let levels = [
        (base * 4, 1, 1),
        (base * 4, 2, 4),
        (base * 2, 4, 4),
        (base, 8, 4),
    ];
    levels
        .into_iter()
        .map(|(ch, up, t)| {
            let (h, w) = (lh * up, lw * up);
            let xv = random::<B, 5>([1, ch, t + 2, h, w], dtype, device);
            let wv = random::<B, 5>([ch, ch, 3, 3, 3], dtype, device);
            let conv = ConvOptions::new([1, 1, 1], [0, 1, 1], [1, 1, 1], 1);
            let name = format!("vae conv3d {ch}ch {t}f {h}x{w}");
            time_op::<B>(opts, device, &name, 0, || {
                drop(conv3d(xv.clone(), wv.clone(), None, conv.clone()))
            })
        })
        .collect()
}

/// Result of [`bench_pipeline`]: wall times and process CPU times (all threads, user + system)
/// in seconds; a phase's CPU over its wall time is how many cores it kept busy.
#[derive(Debug, Clone, Default)]
pub struct PipelineBench {
    pub frames: usize,
    pub text_encoder_s: f64,
    pub text_encoder_cpu_s: f64,
    /// Denoising time per chunk (all stages and steps).
    pub denoise_s: Vec<f64>,
    pub denoise_cpu_s: Vec<f64>,
    /// VAE decode time per chunk.
    pub decode_s: Vec<f64>,
    pub decode_cpu_s: Vec<f64>,
    /// Frame hand-off (post-processing to host + the sink) per chunk.
    pub output_s: Vec<f64>,
    pub output_cpu_s: Vec<f64>,
    pub total_s: f64,
    pub total_cpu_s: f64,
    /// Largest device memory seen by the allocator at the phase boundaries (text encoder done,
    /// each chunk's denoise, decode and hand-off); `None` on the CPU backend.
    pub peak_device_memory: Option<DeviceMemory>,
}

/// Times the phases from the pipeline's progress events, syncing the device at each boundary.
struct PhaseTimer<'a, B: Backend> {
    device: &'a B::Device,
    last: Stopwatch,
    result: PipelineBench,
}

impl<B: Backend> PhaseTimer<'_, B> {
    /// `(wall, cpu)` seconds since the last lap.
    fn lap(&mut self) -> (f64, f64) {
        let _ = B::sync(self.device);
        let dt = self.last.elapsed();
        self.sample_memory();
        self.last = Stopwatch::start();
        dt
    }

    fn sample_memory(&mut self) {
        if let Some(now) = device_memory::<B>(self.device) {
            let peak = self.result.peak_device_memory.get_or_insert(now);
            *peak = peak.max(now);
        }
    }
}

impl<B: Backend> ProgressSink for PhaseTimer<'_, B> {
    fn event(&mut self, event: Progress) {
        match event {
            Progress::ChunkStarted { .. } => {
                self.lap();
            }
            Progress::Decoding { done: false, .. } => {
                let (wall, cpu) = self.lap();
                self.result.denoise_s.push(wall);
                self.result.denoise_cpu_s.push(cpu);
            }
            Progress::Decoding { done: true, .. } => {
                let (wall, cpu) = self.lap();
                self.result.decode_s.push(wall);
                self.result.decode_cpu_s.push(cpu);
            }
            Progress::FramesReady { .. } => {
                let (wall, cpu) = self.lap();
                self.result.output_s.push(wall);
                self.result.output_cpu_s.push(cpu);
            }
            _ => {}
        }
    }
}

/// Counts the frames and hands them to an optional inner sink (e.g. the MP4 writer).
struct CountingSink<'a> {
    frames: usize,
    inner: Option<&'a mut dyn FrameSink>,
}

impl FrameSink for CountingSink<'_> {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.frames += frames.frames;
        match self.inner.as_mut() {
            Some(sink) => sink.push_frames(frames),
            None => Ok(()),
        }
    }
}

/// The Distilled request a pipeline benchmark runs: `num_frames` at `height`×`width`, the
/// checkpoint defaults otherwise (pyramid 2,2,2, amplified first chunk, no CFG).
pub fn bench_request(height: u32, width: u32, num_frames: u32) -> GenerationRequest {
    let patch = RequestPatch {
        prompt: Some("A serene lakeside sunrise with mist over the water.".into()),
        height: Some(height),
        width: Some(width),
        num_frames: Some(num_frames),
        ..Default::default()
    };
    resolve(&[patch], &ModelDefaults::helios_distilled()).expect("valid benchmark request")
}

/// Run the whole Distilled text-to-video pipeline on random weights: text encoder once, then the
/// chunk loop with decoding, frames to `sink` (pass an MP4 writer to include H.264 encoding).
/// Each model computes in its `precision` dtype, as [`Precision::for_device`] loads them.
///
/// # Errors
/// [`PipelineError`] from the run (a sink failure, say).
pub fn bench_pipeline<B: Backend>(
    scale: ModelScale,
    precision: Precision,
    req: &GenerationRequest,
    sink: Option<&mut dyn FrameSink>,
    device: &B::Device,
) -> Result<PipelineBench, PipelineError> {
    let transformer: HeliosTransformer3DModel<B> = scale
        .transformer_config()
        .init_with_dtype(device, precision.transformer);
    let vae = AutoencoderKLWan::<B>::new(scale.vae_config(), device).expect("valid config");
    let vae = PrecisionMapper::apply(vae, precision.vae, &[]);
    let scheduler = scale.scheduler();
    let te_cfg = scale.text_encoder_config();
    let encoder = UMT5EncoderModel::<B>::new(&te_cfg, device).expect("valid config");
    let encoder = PrecisionMapper::apply(encoder, precision.text_encoder, &[]);

    let started = Stopwatch::start();
    let text_len = req.max_sequence_length;
    let ids: Vec<i64> = (0..text_len as i64).map(|i| 3 + i % 400).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, text_len]), device);
    let mask = Tensor::<B, 2, Int>::ones([1, text_len], device);
    let prompt_embeds = encoder.forward(ids, mask);
    let _ = B::sync(device);
    let (text_encoder_s, text_encoder_cpu_s) = started.elapsed();
    // The text encoder's weights and activations are still allocated here.
    let text_encoder_memory = device_memory::<B>(device);
    drop(encoder);

    let mut timer = PhaseTimer::<B> {
        device,
        last: Stopwatch::start(),
        result: PipelineBench::default(),
    };
    timer.result.peak_device_memory = text_encoder_memory;
    let mut noise = SeededNoise::new(req.seed);
    let mut counting = CountingSink {
        frames: 0,
        inner: sink,
    };
    let scheduler = PipelineScheduler::Dmd(scheduler);
    let parts = DenoiseParts {
        transformer: &transformer,
        vae: &vae,
        scheduler: &scheduler,
        variant: Variant::Distilled,
        device,
    };
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut timer,
        cancel: CancelToken::new(),
    };
    parts.denoise(req, prompt_embeds, None, &mut ctx, &mut counting)?;
    timer.sample_memory();
    let mut result = timer.result;
    result.frames = counting.frames;
    result.text_encoder_s = text_encoder_s;
    result.text_encoder_cpu_s = text_encoder_cpu_s;
    (result.total_s, result.total_cpu_s) = started.elapsed();
    Ok(result)
}

/// Peak resident set size of this process in bytes (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_flops_match_the_reference_model_at_full_resolution() {
        // helios.md §10.2: 359.5 TFLOP at 11,040 tokens (8,640 noisy) for the 14B DiT.
        let cfg = ModelScale::Helios14B.transformer_config();
        let f = dit_forward_flops(&cfg, 8640, 11040, 512);
        assert!((f / 1e12 - 359.5).abs() < 0.5, "{}", f / 1e12);
        let f1 = dit_forward_flops(&cfg, 2160, 4560, 512);
        assert!((f1 / 1e12 - 119.0).abs() < 0.5, "{}", f1 / 1e12);
        let f0 = dit_forward_flops(&cfg, 540, 2940, 512);
        assert!((f0 / 1e12 - 69.7).abs() < 0.5, "{}", f0 / 1e12);
    }

    #[test]
    fn embedded_configs_parse() {
        for scale in [ModelScale::Helios14B, ModelScale::Medium, ModelScale::Tiny] {
            scale.transformer_config().validate().unwrap();
            scale.vae_config();
            scale.text_encoder_config();
            scale.scheduler();
        }
        assert_eq!(ModelScale::Helios14B.transformer_config().num_layers, 40);
        let medium = ModelScale::Medium.transformer_config();
        assert_eq!((medium.inner_dim(), medium.ffn_dim), (1536, 8960));
    }
}

/// The benchmarks on the build's backend ([`crate::pipeline::backend::DefaultBackend`]) and its
/// default device: what `omni bench` runs, so the CLI names no Burn type.
pub mod on_default_device {
    use super::*;
    use crate::pipeline::backend::DefaultBackend;
    use crate::pipeline::precision::Dtype;

    /// diffusers' recipe on the default device, with the transformer and text encoder in
    /// `dtype` when given, and the VAE in `vae`.
    pub fn precision(dtype: Option<Dtype>, vae: Dtype) -> Precision {
        let mut p = Precision::for_device::<DefaultBackend>(&Default::default());
        if let Some(dtype) = dtype {
            p.transformer = dtype.into();
            p.text_encoder = dtype.into();
        }
        p.vae = vae.into();
        p
    }

    /// [`bench_dit`] on the default device.
    pub fn dit(opts: BenchOptions, stage: usize) -> DitBench {
        bench_dit::<DefaultBackend>(opts, stage, &Default::default())
    }

    /// [`bench_vae`] on the default device.
    pub fn vae(opts: BenchOptions) -> Timings {
        bench_vae::<DefaultBackend>(opts, &Default::default())
    }

    /// [`bench_ops`] on the default device.
    pub fn ops(opts: BenchOptions, vae_convs: bool) -> Vec<OpBench> {
        bench_ops::<DefaultBackend>(opts, vae_convs, &Default::default())
    }

    /// [`bench_text_encoder`] on the default device.
    pub fn text_encoder(opts: BenchOptions, tokens: usize) -> Timings {
        bench_text_encoder::<DefaultBackend>(opts, tokens, &Default::default())
    }

    /// [`bench_pipeline`] on the default device.
    ///
    /// # Errors
    /// As [`bench_pipeline`].
    pub fn pipeline(
        scale: ModelScale,
        precision: Precision,
        req: &GenerationRequest,
        sink: Option<&mut dyn FrameSink>,
    ) -> Result<PipelineBench, PipelineError> {
        bench_pipeline::<DefaultBackend>(scale, precision, req, sink, &Default::default())
    }
}

// ---------------------------------------------------------------------------------------------
// Wan DiT (`omni bench dit --config wan2.1-14b|wan2.2-5b`)
// ---------------------------------------------------------------------------------------------

/// The Wan transformers `omni bench dit` times, at their published shapes
/// (`shared/reference/wan.md` §2.1, diffusers `scripts/convert_wan_to_diffusers.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanDitScale {
    /// Wan2.1-T2V-14B (also each Wan2.2-A14B expert): 40 heads × 128 = 5120 wide, FFN 13824,
    /// 40 layers, 16 latent channels, Wan2.1 VAE (8× spatial). Model card size 1280×720, 81 frames.
    Wan21_14B,
    /// Wan2.2-TI2V-5B: 24 heads × 128 = 3072 wide, FFN 14336, 30 layers, 48 latent channels,
    /// Wan2.2 VAE (16× spatial). Model card size 1280×704, 121 frames.
    Wan22_5B,
}

impl WanDitScale {
    /// The transformer config (`transformer/config.json` of the Diffusers repo).
    pub fn transformer_config(self) -> WanTransformer3DModelConfig {
        let base = WanTransformer3DModelConfig::default(); // the 14B values
        match self {
            WanDitScale::Wan21_14B => base,
            WanDitScale::Wan22_5B => WanTransformer3DModelConfig {
                num_attention_heads: 24,
                ffn_dim: 14336,
                num_layers: 30,
                in_channels: 48,
                out_channels: Some(48),
                ..base
            },
        }
    }

    /// Video pixels per latent pixel of the checkpoint's VAE.
    pub fn vae_scale_spatial(self) -> usize {
        match self {
            WanDitScale::Wan21_14B => 8,
            WanDitScale::Wan22_5B => 16,
        }
    }

    /// The model card's `(width, height, frames)`.
    pub fn default_size(self) -> (usize, usize, usize) {
        match self {
            WanDitScale::Wan21_14B => (1280, 720, 81),
            WanDitScale::Wan22_5B => (1280, 704, 121),
        }
    }
}

/// FLOPs of one Wan DiT forward (2 FLOP per multiply-add), `shared/reference/wan.md` §5: per
/// layer `2L·4d² + 4L²d + 2L·2d² + 2T·2d² + 4LTd + 2L·2df` with `L` video tokens, `T` text
/// tokens, `d` the width and `f` the FFN width (the Helios model of [`dit_forward_flops`] with
/// every token noisy and cross-attending); embeddings, modulation and norms left out.
pub fn wan_dit_forward_flops(
    cfg: &WanTransformer3DModelConfig,
    tokens: usize,
    text_len: usize,
) -> f64 {
    let d = cfg.inner_dim() as f64;
    let (l, t, f) = (tokens as f64, text_len as f64, cfg.ffn_dim as f64);
    let per_layer = 2.0 * l * 4.0 * d * d
        + 4.0 * l * l * d
        + 2.0 * l * 2.0 * d * d
        + 2.0 * t * 2.0 * d * d
        + 4.0 * l * t * d
        + 2.0 * l * 2.0 * d * f;
    per_layer * cfg.num_layers as f64
}

/// What [`bench_wan_dit`] runs.
#[derive(Debug, Clone, Copy)]
pub struct WanDitOptions {
    pub scale: WanDitScale,
    /// Transformer compute dtype (f32 kept where diffusers keeps it).
    pub dtype: DType,
    /// Video size in pixels and frames.
    pub width: usize,
    pub height: usize,
    pub num_frames: usize,
    /// Layers built and run (`None`: all of the model's). The FLOPs count these layers only.
    pub layers: Option<usize>,
    pub warmup: usize,
    pub iters: usize,
}

/// Result of [`bench_wan_dit`].
#[derive(Debug, Clone)]
pub struct WanDitBench {
    /// Latent size `[C, T, H, W]`.
    pub latent: [usize; 4],
    /// Video tokens `T·(H/2)·(W/2)`.
    pub tokens: usize,
    /// Layers run.
    pub layers: usize,
    /// Layers of the real model.
    pub model_layers: usize,
    /// FLOPs of one forward of the layers run ([`wan_dit_forward_flops`]).
    pub flops: f64,
    /// Milliseconds of each timed forward.
    pub ms: Vec<f64>,
}

/// Time one conditional Wan DiT forward (batch 1, 512 text tokens, the text projection and
/// cross-attention K/V computed once outside the timing, as the pipeline does) at the real
/// widths with random weights, `warmup` untimed then `iters` timed calls. Wan2.2 TI2V runs with
/// per-token timesteps, as its pipeline does.
pub fn bench_wan_dit<B: Backend>(opts: WanDitOptions, device: &B::Device) -> WanDitBench {
    let mut cfg = opts.scale.transformer_config();
    let model_layers = cfg.num_layers;
    cfg.num_layers = opts.layers.unwrap_or(model_layers).max(1);
    let model = cfg.init_with_dtype::<B>(device, opts.dtype);
    let s = opts.scale.vae_scale_spatial();
    let (t, h, w) = (
        (opts.num_frames.max(1) - 1) / 4 + 1,
        opts.height / s,
        opts.width / s,
    );
    let c = cfg.in_channels;
    let hidden = Tensor::<B, 5>::random([1, c, t, h, w], Distribution::Normal(0.0, 1.0), device);
    let ctx = model.context(
        Tensor::random(
            [1, 512, cfg.text_dim],
            Distribution::Normal(0.0, 1.0),
            device,
        ),
        None,
    );
    let tokens = t * (h / 2) * (w / 2);
    let ts = match opts.scale {
        WanDitScale::Wan22_5B => vec![500.0; tokens],
        WanDitScale::Wan21_14B => vec![500.0],
    };
    let timing = BenchOptions {
        scale: ModelScale::Tiny,
        precision: Precision::for_device::<B>(device),
        height: opts.height,
        width: opts.width,
        warmup: opts.warmup,
        iters: opts.iters,
    };
    let ms = time_calls::<B, _>(&timing, device, || {
        drop(model.forward_stoppable(hidden.clone(), &ts, &ctx, &|| false))
    })
    .ms;
    WanDitBench {
        latent: [c, t, h, w],
        tokens,
        layers: cfg.num_layers,
        model_layers,
        flops: wan_dit_forward_flops(&cfg, tokens, 512),
        ms,
    }
}

/// [`bench_wan_dit`] on the build's default device.
pub fn bench_wan_dit_on_default_device(opts: WanDitOptions) -> WanDitBench {
    use crate::pipeline::backend::DefaultBackend;
    bench_wan_dit::<DefaultBackend>(opts, &Default::default())
}
