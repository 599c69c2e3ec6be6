#!/usr/bin/env python3
"""Time diffusers 0.42.1 `HeliosTransformer3DModel` (bf16, SDPA) and `AutoencoderKLWan.decode` with
the same configs, shapes and random weights as `omni bench`, on the same device, then run
`omni bench --json` and print the ratio omni / diffusers.

One command (GPU box, from the repository root, with the release binary built --features cuda):

    python3 benches/reference/time_diffusers.py --omni target/release/omni --config helios-14b

On a CPU (smoke test of the script itself): `--config tiny --device cpu --dtype float32`.
Needs torch and diffusers==0.42.1 (the diffusers wheel is pure Python:
`pip install --no-deps diffusers-0.42.1-py3-none-any.whl`).

Shapes (B=1, 9 latent frames, history [16, 2, 1] at full resolution, 512 text tokens):
  stage 2 (full resolution) 11,040 tokens, stage 1 4,560, stage 0 2,940 at 384x640.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

diffusers_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "helios-14b": {
        "transformer": ROOT / "tests/fixtures/configs/helios-distilled/transformer_config.json",
        "vae": ROOT / "tests/fixtures/configs/helios-distilled/vae_config.json",
    },
    "tiny": {
        "transformer": ROOT / "tests/fixtures/tiny-helios-distilled/transformer/config.json",
        "vae": ROOT / "tests/fixtures/tiny-helios-distilled/vae/config.json",
    },
}


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


@torch.no_grad()
def time_dit(cfg_path, height, width, stage, device, dtype, warmup, iters):
    from diffusers import HeliosTransformer3DModel

    model = HeliosTransformer3DModel(**load_config(cfg_path)).to(device=device, dtype=dtype).eval()
    # As `from_pretrained(torch_dtype=bf16)` does: keep `_keep_in_fp32_modules` in float32.
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.float()
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    c = model.config.in_channels
    lh, lw = height // 8, width // 8
    down = 2 ** (2 - stage)
    h, w = lh // down, lw // down

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    kwargs = dict(
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
    return timed(lambda: model(**kwargs), device, warmup, iters)


@torch.no_grad()
def time_vae(cfg_path, height, width, device, warmup, iters):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**load_config(cfg_path)).to(device=device, dtype=torch.float32).eval()
    z = torch.randn(1, vae.config.z_dim, 9, height // 8, width // 8, device=device)
    return timed(lambda: vae.decode(z, return_dict=False), device, warmup, iters)


def omni_json(omni: str, args: list[str]) -> dict:
    out = subprocess.run([omni, "bench", *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--omni", default=str(ROOT / "target/release/omni"), help="omni binary")
    p.add_argument("--config", choices=sorted(CONFIGS), default="helios-14b")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--skip-omni", action="store_true", help="time diffusers only")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    cfg = CONFIGS[a.config]
    common = ["--config", a.config, "--height", str(a.height), "--width", str(a.width),
              "--warmup", str(a.warmup), "--iters", str(a.iters)]
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}, {a.config}, {a.width}x{a.height}, diffusers dtype {a.dtype}")
    print(f"{'what':<26} {'diffusers ms':>13} {'omni ms':>10} {'omni/diffusers':>15}")
    for stage in (2, 1, 0):
        ref = min(time_dit(cfg["transformer"], a.height, a.width, stage, a.device, dtype, a.warmup, a.iters))
        ours = None if a.skip_omni else omni_json(a.omni, ["dit", "--stage", str(stage), *common])["ms_min"]
        ratio = f"{ours / ref:>15.2f}" if ours else f"{'-':>15}"
        print(f"{'DiT forward stage ' + str(stage):<26} {ref:>13.1f} {ours or float('nan'):>10.1f} {ratio}")
    ref = min(time_vae(cfg["vae"], a.height, a.width, a.device, a.warmup, a.iters))
    ours = None if a.skip_omni else omni_json(a.omni, ["vae", *common])["ms_min"]
    ratio = f"{ours / ref:>15.2f}" if ours else f"{'-':>15}"
    print(f"{'VAE decode 33 frames':<26} {ref:>13.1f} {ours or float('nan'):>10.1f} {ratio}")
    if a.device.startswith("cuda"):
        print(f"diffusers peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
