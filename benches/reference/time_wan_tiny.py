"""Alternating wall times of the tiny Wan pipelines: diffusers WanPipeline __call__ (in-process, load excluded)
vs `omni generate` (the whole process: start, load, run, MP4 encode), on the tiny Wan2.1 T2V, Wan2.2 A14B
two-expert and Wan2.2 TI2V checkpoints with the fixtures' requests and injected latents, 3 rounds on the same
machine, with the load average after each pair. Prints figures; asserts nothing.

    /tmp/torch-venv18/bin/python benches/reference/time_wan_tiny.py [--omni target/release/omni] [--threads 2]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import torch
import make_fixtures as mf
import make_wan as mw
import make_wan_ti2v as mt
from safetensors.torch import load_file
ap = argparse.ArgumentParser()
ap.add_argument("--omni", default=str(ROOT / "target" / "release" / "omni"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=3)
cli = ap.parse_args()
mf.T0 = time.perf_counter()
torch.set_num_threads(cli.threads)
FX = ROOT / "tests" / "fixtures"
OMNI = cli.omni
OUT = Path(tempfile.mkdtemp())
a14b = Path(tempfile.mkdtemp()) / "ckpt"
shutil.copytree(FX / "tiny-wan2.1-t2v", a14b)
shutil.copy(FX / "tiny-wan2.2-a14b/model_index.json", a14b / "model_index.json")
shutil.copytree(FX / "tiny-wan2.2-a14b/transformer_2", a14b / "transformer_2")
cases = [
    ("t2v", FX / "tiny-wan2.1-t2v", mw.load_pipeline(FX / "tiny-wan2.1-t2v"), "pipeline_wan_t2v.safetensors", dict(mw.PIPE_ARGS), {}),
    ("a14b", a14b, mw.load_pipeline(a14b), "pipeline_wan_a14b.safetensors", dict(mw.PIPE_ARGS), {"guidance_scale_2": 2.0}),
    ("ti2v", FX / "tiny-wan2.2-ti2v", mt.load_pipeline(), "pipeline_wan_ti2v.safetensors", dict(mt.PIPE_ARGS), {}),
]
rows = {}
for rnd in range(cli.rounds):
    for name, folder, pipe, ref, args, extra in cases:
        lat = load_file(str(FX / "reference" / ref))["latents"]
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(prompt=mw.PROMPT, negative_prompt=mw.NEGATIVE_PROMPT, latents=lat.clone(), output_type="pt", **args, **extra)
        d = time.perf_counter() - t0
        cmd = [OMNI, "generate", "--model", str(folder), "--prompt", mw.PROMPT, "--negative-prompt", mw.NEGATIVE_PROMPT,
               "--width", str(args["width"]), "--height", str(args["height"]), "--num-frames", str(args["num_frames"]),
               "--num-inference-steps", str(args["num_inference_steps"]), "--guidance-scale", str(args["guidance_scale"]),
               "--noise-file", str(FX / "reference" / ref), "--quiet", "--threads", str(cli.threads), "-o", str(OUT / "out.mp4")]
        if extra:
            cmd += ["--guidance-scale-2", "2.0"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        o = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        rows.setdefault(name, []).append((d, o, os.getloadavg()[0]))
        print(f"round {rnd} {name}: diffusers {d:.3f} s, omni generate {o:.3f} s, load avg {os.getloadavg()[0]:.2f}", flush=True)
for name, v in rows.items():
    print(f"{name}: diffusers min {min(x[0] for x in v):.3f} s; omni min {min(x[1] for x in v):.3f} s; load {[round(x[2],1) for x in v]}")
