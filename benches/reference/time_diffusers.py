#!/usr/bin/env python3
"""Time diffusers 0.42.1 with the same configs, shapes and random weights as `omni bench`, on the same
device and in the same run, then run `omni bench --json` and print omni / diffusers:

  * `HeliosTransformer3DModel` forward (bf16, SDPA, `_keep_in_fp32_modules` in float32) at the three
    pyramid stages (11,040 / 4,560 / 2,940 tokens at 384x640, history [16, 2, 1], 512 text tokens);
  * `AutoencoderKLWan.decode` of one chunk (9 latent -> 33 video frames, float32 as the Helios
    examples load the VAE);
  * with `--pipeline`: `HeliosPyramidPipeline` end to end, Helios-Distilled settings (pyramid steps
    [2, 2, 2], amplified first chunk, guidance 1.0), `--num-frames` frames, UMT5 in bf16, the VAE in
    float32, frames/s and peak GPU memory (`torch.cuda.max_memory_allocated`);
  * with `--ops`: the DiT's building blocks one by one at the full-resolution shapes (the
    projections and FFN matmuls, self- and cross-attention, the f32 norms with modulation, RoPE,
    and the VAE's conv3d), next to `omni bench ops`: where the time goes and which kernel lags.

One command (GPU box, from the repository root, with the release binary built --features cuda):

    python3 benches/reference/time_diffusers.py --omni target/release/omni --config helios-14b --pipeline --ops

On a CPU (smoke test of the script itself):
`--config tiny --device cpu --dtype float32 --height 128 --width 128 --pipeline --ops`.
Needs torch and diffusers==0.42.1 (the diffusers wheel is pure Python:
`pip install --no-deps diffusers-0.42.1-py3-none-any.whl`) and transformers for the pipeline's UMT5.
Prints a markdown table; `--markdown FILE` also writes it to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging

diffusers_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny-helios-distilled"
REAL = ROOT / "tests/fixtures/configs/helios-distilled"
CONFIGS = {
    "helios-14b": {
        "transformer": REAL / "transformer_config.json",
        "vae": REAL / "vae_config.json",
        "text_encoder": REAL / "text_encoder_config.json",
        "scheduler": REAL / "scheduler_config.json",
    },
    # A 1.3B-like DiT (1536 wide, 12 heads, FFN 8960, 2 layers), the real Wan2.1 VAE, the tiny
    # text encoder and scheduler: `omni bench --config medium`, the CPU at realistic widths.
    "medium": {
        "transformer": ROOT / "tests/fixtures/configs/medium/transformer_config.json",
        "vae": REAL / "vae_config.json",
        "text_encoder": TINY / "text_encoder/config.json",
        "scheduler": TINY / "scheduler/scheduler_config.json",
    },
    "tiny": {
        "transformer": TINY / "transformer/config.json",
        "vae": TINY / "vae/config.json",
        "text_encoder": TINY / "text_encoder/config.json",
        "scheduler": TINY / "scheduler/scheduler_config.json",
    },
}
OMNI_DTYPE = {"bfloat16": "bf16", "float32": "f32"}
PEAK_BF16_FLOPS = 989e12  # H100 SXM / H200 dense bf16, as `omni bench`


def load_config(path: Path) -> dict:
    cfg = json.loads(path.read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, warmup: int, iters: int) -> list[float]:
    out = []
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype` (a 14B model built in float32 first would not fit beside
    its bf16 copy on an 80 GB GPU)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build(cls, cfg_path: Path, device: str, dtype: torch.dtype):
    """A randomly initialised model on `device` in `dtype`, with `_keep_in_fp32_modules` in float32 as
    `from_pretrained(torch_dtype=dtype)` leaves them (diffusers rule: the name is a component of the
    parameter path)."""
    with default_dtype(dtype), torch.device(device):
        model = cls(**load_config(cfg_path))
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model.eval()


def dit_inputs(model, height: int, width: int, stage: int, device: str, dtype: torch.dtype) -> dict:
    c = model.config.in_channels
    lh, lw = height // 8, width // 8
    down = 2 ** (2 - stage)
    h, w = lh // down, lw // down

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    return dict(
        hidden_states=rnd(1, c, 9, h, w),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=rnd(1, 512, model.config.text_dim),
        indices_hidden_states=torch.arange(20, 29, device=device)[None],
        indices_latents_history_short=torch.tensor([[0, 19]], device=device),
        indices_latents_history_mid=torch.tensor([[17, 18]], device=device),
        indices_latents_history_long=torch.arange(1, 17, device=device)[None],
        latents_history_short=rnd(1, c, 2, lh, lw),
        latents_history_mid=rnd(1, c, 2, lh, lw),
        latents_history_long=rnd(1, c, 16, lh, lw),
        return_dict=False,
    )


@torch.no_grad()
def time_vae(cfg_path, height, width, device, warmup, iters):
    from diffusers import AutoencoderKLWan

    vae = build(AutoencoderKLWan, cfg_path, device, torch.float32)
    z = torch.randn(1, vae.config.z_dim, 9, height // 8, width // 8, device=device)
    return timed(lambda: vae.decode(z, return_dict=False), device, warmup, iters)


@torch.no_grad()
def time_text_encoder(cfg_path, device, dtype, warmup, iters):
    """transformers `UMT5EncoderModel` on one prompt of 512 tokens (as `omni bench text-encoder`)."""
    from transformers import UMT5Config, UMT5EncoderModel

    with default_dtype(dtype), torch.device(device):
        model = UMT5EncoderModel(UMT5Config(**load_config(cfg_path))).eval()
    ids = (3 + torch.arange(512, device=device) % 400)[None]
    mask = torch.ones_like(ids)
    return timed(lambda: model(input_ids=ids, attention_mask=mask), device, warmup, iters)


@torch.no_grad()
def time_pipeline(cfg, height, width, num_frames, device, dtype) -> dict:
    """HeliosPyramidPipeline end to end (Distilled settings), random weights, the tiny tokenizer (its
    ids are valid for any UMT5 vocabulary)."""
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline, HeliosTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    te_cfg = UMT5Config(**load_config(cfg["text_encoder"]))
    with default_dtype(dtype), torch.device(device):
        text_encoder = UMT5EncoderModel(te_cfg).eval()
    pipe = HeliosPyramidPipeline(
        tokenizer=AutoTokenizer.from_pretrained(str(TINY / "tokenizer")),
        text_encoder=text_encoder,
        vae=build(AutoencoderKLWan, cfg["vae"], device, torch.float32),
        transformer=build(HeliosTransformer3DModel, cfg["transformer"], device, dtype),
        scheduler=HeliosDMDScheduler.from_config(load_config(cfg["scheduler"])),
        is_distilled=True,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt="A serene lakeside sunrise with mist over the water.",
        height=height,
        width=width,
        num_frames=num_frames,
        guidance_scale=1.0,
        pyramid_num_inference_steps_list=[2, 2, 2],
        is_amplify_first_chunk=True,
        output_type="np",
        generator=torch.Generator(device).manual_seed(0),
    )
    sync(device)
    t0 = time.perf_counter()
    frames = pipe(**kwargs).frames
    sync(device)
    total = time.perf_counter() - t0
    n = frames.shape[1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    del pipe, text_encoder
    return {"frames": n, "total_s": total, "fps": n / total, "peak_gib": peak}


@torch.no_grad()
def time_ops(model_cfg: dict, vae_cfg: dict, height, width, device, dtype, warmup, iters,
             vae_convs: bool = True) -> dict[str, float]:
    """Each building block of one DiT block at the full-resolution shapes, as diffusers runs it, and the
    VAE decoder's conv3d at each resolution. Names and shapes match `omni bench ops`."""
    dim = model_cfg["num_attention_heads"] * model_cfg["attention_head_dim"]
    heads, hd, ffn = model_cfg["num_attention_heads"], model_cfg["attention_head_dim"], model_cfg["ffn_dim"]
    lh, lw = height // 8, width // 8
    noisy = 9 * (lh // 2) * (lw // 2)
    seq = noisy + 2 * (lh // 2) * (lw // 2) + -(-lh // 4) * -(-lw // 4) + 4 * -(-lh // 8) * -(-lw // 8)
    r = lambda *s, dt=dtype: torch.randn(*s, device=device, dtype=dt)  # noqa: E731
    x, xn = r(1, seq, dim), r(1, noisy, dim)
    w_dd, b_d = r(dim, dim), r(dim)
    w_up, b_up, w_down = r(ffn, dim), r(ffn), r(dim, ffn)
    q, k, v = r(1, heads, seq, hd), r(1, heads, seq, hd), r(1, heads, seq, hd)
    qc, kc, vc = r(1, heads, noisy, hd), r(1, heads, 512, hd), r(1, heads, 512, hd)
    mod = r(1, 1, dim, dt=torch.float32)
    cos, sin = r(seq, 1, hd, dt=torch.float32), r(seq, 1, hd, dt=torch.float32)
    qh = r(1, seq, heads, hd)
    rms_w = r(dim)
    r_ffn = r(1, seq, ffn)

    def rope(t):
        x1, x2 = t.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.empty_like(t)
        out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
        out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
        return out.type_as(t)

    ops = {
        "linear dim->dim (self-attn q/k/v/out)": lambda: F.linear(x, w_dd, b_d),
        "linear dim->dim (cross-attn q/out)": lambda: F.linear(xn, w_dd, b_d),
        "ffn up dim->ffn + gelu": lambda: F.gelu(F.linear(x, w_up, b_up), approximate="tanh"),
        "ffn down ffn->dim": lambda: F.linear(r_ffn, w_down, b_d),
        "self-attention (flash)": lambda: F.scaled_dot_product_attention(q, k, v),
        "cross-attention (512 keys)": lambda: F.scaled_dot_product_attention(qc, kc, vc),
        "fp32 layer norm + modulate": lambda: (
            F.layer_norm(x.float(), (dim,), eps=1e-6) * (1 + mod) + mod
        ).type_as(x),
        "rms norm q/k": lambda: F.rms_norm(x, (dim,), rms_w, eps=1e-6),
        "rope q/k": lambda: rope(qh),
    }
    # The plain products of the linear layers (no bias), torch's layout (weight [out, in], x @ w.T)
    # next to numpy's matmul (OpenBLAS) in `sgemm_numpy`: which BLAS is faster at these shapes.
    for m, k_, n in sgemm_shapes(seq, dim, ffn):
        a, w = r(1, m, k_), r(n, k_)
        ops[f"matmul {m}x{k_}x{n} (no bias)"] = lambda a=a, w=w: torch.matmul(a, w.t())
    out = {name: min(timed(fn, device, warmup, iters)) for name, fn in ops.items()}
    del x, xn, q, k, v, r_ffn
    # VAE decoder conv3d 3x3x3 (causal padding in front), float32, one latent frame's worth of work at
    # each decoder resolution: the channel widths of Wan2.1 (base_dim 96, dim_mult [1, 2, 4, 4]).
    base = vae_cfg.get("base_dim", 96)
    levels = [(base * 4, 1, 1), (base * 4, 2, 4), (base * 2, 4, 4), (base, 8, 4)] if vae_convs else []
    for ch, scale, t in levels:
        xv = torch.randn(1, ch, t + 2, lh * scale, lw * scale, device=device)
        wv = torch.randn(ch, ch, 3, 3, 3, device=device)
        out[f"vae conv3d {ch}ch {t}f {lh * scale}x{lw * scale}"] = min(
            timed(lambda: F.conv3d(xv, wv, padding=(0, 1, 1)), device, warmup, iters)
        )
        del xv, wv
    return out


def sgemm_shapes(seq: int, dim: int, ffn: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the DiT's linear layers at full resolution, as `omni bench ops` names them."""
    return [(seq, dim, dim), (seq, dim, ffn), (seq, ffn, dim)]


def sgemm_numpy(model_cfg: dict, height: int, width: int, warmup: int, iters: int) -> dict[str, float]:
    """numpy's float32 matmul (the BLAS numpy was built with, OpenBLAS for the PyPI wheels) at the
    shapes of `sgemm_shapes`, ms per call (min); threads from OPENBLAS_NUM_THREADS / the pool."""
    import numpy as np

    dim = model_cfg["num_attention_heads"] * model_cfg["attention_head_dim"]
    lh, lw = height // 8, width // 8
    noisy = 9 * (lh // 2) * (lw // 2)
    seq = noisy + 2 * (lh // 2) * (lw // 2) + -(-lh // 4) * -(-lw // 4) + 4 * -(-lh // 8) * -(-lw // 8)
    rng = np.random.default_rng(0)
    out = {}
    for m, k, n in sgemm_shapes(seq, dim, model_cfg["ffn_dim"]):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out[f"matmul {m}x{k}x{n} (no bias)"] = min(timed(lambda: a @ b, "cpu", warmup, iters))
    return out


def omni_json(omni: str, args: list[str]) -> list[dict]:
    out = subprocess.run([omni, "bench", *args, "--json"], check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--omni", default=str(ROOT / "target/release/omni"), help="omni binary")
    p.add_argument("--config", choices=sorted(CONFIGS), default="helios-14b")
    p.add_argument("--height", type=int, default=384, help="pixels")
    p.add_argument("--width", type=int, default=640, help="pixels")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(OMNI_DTYPE), help="DiT and UMT5 dtype")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--pipeline", action="store_true", help="also time the Distilled pipeline end to end")
    p.add_argument("--num-frames", type=int, default=99, help="frames for --pipeline")
    p.add_argument("--ops", action="store_true", help="also time the DiT / VAE building blocks")
    p.add_argument("--skip-vae-ops", action="store_true",
                   help="with --ops: leave out the VAE conv3d rows (minutes at the real VAE's widths)")
    p.add_argument("--skip-omni", action="store_true", help="time diffusers only")
    p.add_argument("--skip-core", action="store_true",
                   help="skip the DiT and VAE rows (e.g. to run --pipeline in its own time slot)")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.add_argument("--json", type=Path,
                   help="also write the rows as JSON ({row: {diffusers_ms, omni_ms}}) to this file")
    p.add_argument("--skip-dit", action="store_true", help="skip the DiT forward rows")
    p.add_argument("--skip-vae", action="store_true", help="skip the VAE decode row")
    p.add_argument("--text-encoder", action="store_true", help="also time UMT5 on 512 tokens")
    p.add_argument("--threads", type=int,
                   help="CPU threads for both sides (torch.set_num_threads, omni --threads) [default: each one's own]")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from diffusers import HeliosTransformer3DModel

    dtype = getattr(torch, a.dtype)
    cfg = CONFIGS[a.config]
    size = ["--height", str(a.height), "--width", str(a.width)]
    common = ["--config", a.config, *size, "--warmup", str(a.warmup), "--iters", str(a.iters),
              "--dtype", OMNI_DTYPE[a.dtype], *(["--threads", str(a.threads)] if a.threads else [])]
    if a.markdown:
        a.markdown.write_text("")

    def emit(line: str = "") -> None:
        # Written as it goes: a run cut short by a time limit keeps the rows it has.
        print(line, flush=True)
        if a.markdown:
            with a.markdown.open("a") as f:
                f.write(line + "\n")

    def ms(v: float) -> str:
        return f"{v:.1f} ms" if v >= 10 else f"{v:.3f} ms"

    results: dict[str, dict] = {}

    def row(what: str, ref: float, ours: float | None, extra: str = "", omni: dict | None = None) -> None:
        ratio = f"{ours / ref:.2f}" if ours is not None and ref > 0 else "-"
        emit(f"| {what} | {ms(ref)} | {ms(ours) if ours is not None else '-'} | {ratio} | {extra} |")
        results[what] = {"diffusers_ms": ref, "omni_ms": ours, "omni": omni}
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))

    gpu = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    emit(f"device {a.device} ({gpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), {a.config}, "
         f"{a.width}x{a.height}, DiT/UMT5 {a.dtype}, VAE float32")
    emit()
    emit("| what | diffusers | omni | omni / diffusers | notes |")
    emit("|---|---|---|---|---|")
    # One omni process for the three stages (each start builds the 14B model and JIT-compiles).
    core = not a.skip_core and not a.skip_dit
    omni_dit = {} if a.skip_omni or not core else {o["stage"]: o for o in omni_json(a.omni, ["dit", *common])}
    with torch.no_grad():
        model = build(HeliosTransformer3DModel, cfg["transformer"], a.device, dtype) if core else None
        for stage in (2, 1, 0) if core else ():
            kwargs = dit_inputs(model, a.height, a.width, stage, a.device, dtype)
            ref = min(timed(lambda: model(**kwargs), a.device, a.warmup, a.iters))
            ours = None
            extra = ""
            if not a.skip_omni:
                o = omni_dit[stage]
                ours = o["ms_min"]
                ref_mfu = o["tflop"] * 1e12 / (ref / 1e3) / PEAK_BF16_FLOPS
                extra = f"{o['tokens']} tokens, {o['tflop']:.1f} TFLOP; MFU omni {100 * o['mfu']:.1f}% (from ms_mean), diffusers {100 * ref_mfu:.1f}%"
            row(f"DiT forward, stage {stage}", ref, ours, extra=extra,
                omni=None if a.skip_omni else omni_dit[stage])
        del model
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if not a.skip_core and not a.skip_vae:
        ref = min(time_vae(cfg["vae"], a.height, a.width, a.device, a.warmup, a.iters))
        o = None if a.skip_omni else omni_json(a.omni, ["vae", *common, "--vae-dtype", "f32"])[-1]
        row("VAE decode, one chunk (33 frames)", ref, o["ms_min"] if o else None,
            extra="float32 on both sides", omni=o)
    if a.ops:
        ref_ops = time_ops(load_config(cfg["transformer"]), load_config(cfg["vae"]), a.height, a.width,
                           a.device, dtype, a.warmup, a.iters, vae_convs=not a.skip_vae_ops)
        numpy_ops = sgemm_numpy(load_config(cfg["transformer"]), a.height, a.width, a.warmup, a.iters) \
            if a.device == "cpu" else {}
        ours_ops = {} if a.skip_omni else {o["op"]: o for o in omni_json(
            a.omni, ["ops", *common, *(["--skip-vae"] if a.skip_vae_ops else [])])}
        for name, ref in ref_ops.items():
            o = ours_ops.get(name)
            extra = "one call, full-resolution shapes"
            if o is not None and "cpu_per_wall" in o:
                extra += f"; omni cpu/wall {o['cpu_per_wall']:.2f}"
            if name in numpy_ops:
                extra += f"; numpy (OpenBLAS) {ms(numpy_ops[name])}"
            row(f"op: {name}", ref, o["ms_min"] if o else None, extra=extra, omni=o)
    if a.text_encoder:
        ref = min(time_text_encoder(cfg["text_encoder"], a.device, dtype, a.warmup, a.iters))
        o = None if a.skip_omni else omni_json(a.omni, ["text-encoder", *common])[-1]
        row("UMT5 encoder, 512 tokens", ref, o["ms_min"] if o else None, omni=o)
    if a.pipeline:
        ref = time_pipeline(cfg, a.height, a.width, a.num_frames, a.device, dtype)
        ours = None
        if not a.skip_omni:
            ours = omni_json(a.omni, ["pipeline", *common, "--num-frames", str(a.num_frames)])[-1]
        results[f"Distilled T2V {a.num_frames} frames, end to end"] = {
            "diffusers_ms": ref["total_s"] * 1e3, "omni_ms": ours["total_s"] * 1e3 if ours else None,
            "omni": ours}
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
        emit(f"| Distilled T2V {a.num_frames} frames, end to end | {ref['fps']:.2f} frames/s "
             f"({ref['total_s']:.1f} s, {ref['frames']} frames) | "
             + (f"{ours['fps']:.2f} frames/s ({ours['total_s']:.1f} s, {ours['frames']} frames)" if ours else "-")
             + " | " + (f"{ref['fps'] / ours['fps']:.2f} (time)" if ours else "-") + " | published: 19.5 frames/s on one H100 |")
        ours_mem = ours.get("peak_gpu_gib") if ours else None
        emit(f"| peak GPU memory, pipeline | {ref['peak_gib']:.1f} GiB (max_memory_allocated) | "
             + (f"{ours_mem:.1f} GiB (allocator in use)" if ours_mem is not None else "-") + " | - | target <= 45 GB |")


if __name__ == "__main__":
    main()
