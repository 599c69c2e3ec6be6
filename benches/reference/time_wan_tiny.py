"""Alternating wall times of the tiny Wan pipelines: diffusers WanPipeline __call__ (in-process, load excluded)
vs `omni generate` (the whole process: start, load, run, MP4 encode), on the tiny Wan2.1 T2V, Wan2.2 A14B
two-expert and Wan2.2 TI2V checkpoints (text-to-video, and image-to-video with the fixture's image), the
tiny Wan2.1 I2V, FLF2V, Wan2.2 I2V A14B (WanImageToVideoPipeline) and V2V (WanVideoToVideoPipeline,
strength 0.7, 10 steps) with the fixtures' requests, images and injected latents (V2V: seeded, not injected), 3 rounds on the same machine, with the load average after each pair.
Prints figures (min and median per case); asserts nothing.

    /tmp/torch-venv18/bin/python benches/reference/time_wan_tiny.py [--omni target/release/omni] [--threads 2]
        [--rounds 3] [--only t2v a14b ti2v ti2v-i2v i2v flf2v i2v-a14b v2v]
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
import make_wan_i2v as mi
from safetensors.torch import load_file
ap = argparse.ArgumentParser()
ap.add_argument("--omni", default=str(ROOT / "target" / "release" / "omni"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--only", nargs="*", help="case names (t2v a14b ti2v ti2v-i2v i2v flf2v i2v-a14b v2v); default: all")
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
# TI2V image-to-video: diffusers' WanImageToVideoPipeline on the TI2V folder (expand_timesteps) with the
# reference's image; omni generate --image with the same image as a PNG (the same size: no resize).
from diffusers import WanImageToVideoPipeline
from PIL import Image
ti2v = mt.load_pipeline()
ti2v_i2v = WanImageToVideoPipeline(tokenizer=ti2v.tokenizer, text_encoder=ti2v.text_encoder, vae=ti2v.vae,
                                   scheduler=ti2v.scheduler, transformer=ti2v.transformer, expand_timesteps=True)
image = Image.fromarray(load_file(str(FX / "reference" / "pipeline_wan_ti2v_i2v.safetensors"))["image"].numpy())
image.save(OUT / "image.png")
cases = [
    ("t2v", FX / "tiny-wan2.1-t2v", mw.load_pipeline(FX / "tiny-wan2.1-t2v"), "pipeline_wan_t2v.safetensors", dict(mw.PIPE_ARGS), {}),
    ("a14b", a14b, mw.load_pipeline(a14b), "pipeline_wan_a14b.safetensors", dict(mw.PIPE_ARGS), {"guidance_scale_2": 2.0}),
    ("ti2v", FX / "tiny-wan2.2-ti2v", ti2v, "pipeline_wan_ti2v.safetensors", dict(mt.PIPE_ARGS), {}),
    ("ti2v-i2v", FX / "tiny-wan2.2-ti2v", ti2v_i2v, "pipeline_wan_ti2v_i2v.safetensors", dict(mt.PIPE_ARGS), {"image": image}),
]
# Wan2.1 I2V / FLF2V / Wan2.2 I2V A14B: the fixture's image (and last image), its latents.
i2v_ref = load_file(str(FX / "reference" / "pipeline_wan_i2v.safetensors"))
Image.fromarray(i2v_ref["image"].numpy()).save(OUT / "first.png")
Image.fromarray(i2v_ref["last_image"].numpy()).save(OUT / "last.png")
first, last = Image.open(OUT / "first.png"), Image.open(OUT / "last.png")
flf2v = mi.overlay(mi.I2V, mi.FLF2V)
i2v_a14b = mi.overlay(mi.I2V, mi.I2V_A14B)
cases += [
    ("i2v", mi.I2V, mi.load_i2v(mi.I2V), "pipeline_wan_i2v.safetensors", dict(mw.PIPE_ARGS), {"image": first}),
    ("flf2v", flf2v, mi.load_i2v(flf2v), "pipeline_wan_i2v.safetensors", dict(mw.PIPE_ARGS),
     {"image": first, "last_image": last}),
    ("i2v-a14b", i2v_a14b, mi.load_i2v(i2v_a14b), "pipeline_wan_i2v.safetensors", dict(mw.PIPE_ARGS),
     {"image": first, "guidance_scale_2": 2.0}),
]
# V2V: the fixture's 9-frame video as frames for diffusers and as an H.264 MP4 (ffmpeg) for omni.
from diffusers import WanVideoToVideoPipeline
v2v_ref = load_file(str(FX / "reference" / "pipeline_wan_v2v.safetensors"))
video = [Image.fromarray(f.numpy()) for f in v2v_ref["video"]]
for i, f in enumerate(video):
    f.save(OUT / f"v{i:02d}.png")
subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-framerate", "16", "-i", str(OUT / "v%02d.png"), "-c:v", "libx264",
                "-pix_fmt", "yuv420p", str(OUT / "video.mp4")], check=True)
t2v = mw.load_pipeline(FX / "tiny-wan2.1-t2v")
v2v = WanVideoToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                              scheduler=t2v.scheduler, transformer=t2v.transformer)
cases.append(("v2v", mi.overlay(FX / "tiny-wan2.1-t2v", mi.V2V), v2v, None,
              dict(height=32, width=48, num_frames=9, num_inference_steps=10, guidance_scale=5.0),
              {"video": video, "strength": 0.7}))
cases = [c for c in cases if not cli.only or c[0] in cli.only]
rows = {}
for rnd in range(cli.rounds):
    for name, folder, pipe, ref, args, extra in cases:
        call_args = dict(args, **extra)
        if ref is not None:
            call_args["latents"] = load_file(str(FX / "reference" / ref))["latents"].clone()
        else:
            call_args.pop("num_frames")  # the video sets it
            call_args["generator"] = torch.Generator().manual_seed(0)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(prompt=mw.PROMPT, negative_prompt=mw.NEGATIVE_PROMPT, output_type="pt", **call_args)
        d = time.perf_counter() - t0
        cmd = [OMNI, "generate", "--model", str(folder), "--prompt", mw.PROMPT, "--negative-prompt", mw.NEGATIVE_PROMPT,
               "--width", str(args["width"]), "--height", str(args["height"]), "--num-frames", str(args["num_frames"]),
               "--num-inference-steps", str(args["num_inference_steps"]), "--guidance-scale", str(args["guidance_scale"]),
               "--quiet", "--threads", str(cli.threads), "-o", str(OUT / "out.mp4")]
        cmd += ["--noise-file", str(FX / "reference" / ref)] if ref is not None else ["--seed", "0"]
        if "guidance_scale_2" in extra:
            cmd += ["--guidance-scale-2", "2.0"]
        if name == "ti2v-i2v":
            cmd += ["--image", str(OUT / "image.png")]
        elif "image" in extra:
            cmd += ["--image", str(OUT / "first.png")]
        if "last_image" in extra:
            cmd += ["--last-image", str(OUT / "last.png")]
        if "video" in extra:
            cmd += ["--video", str(OUT / "video.mp4"), "--strength", "0.7"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        o = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        rows.setdefault(name, []).append((d, o, os.getloadavg()[0]))
        print(f"round {rnd} {name}: diffusers {d:.3f} s, omni generate {o:.3f} s, load avg {os.getloadavg()[0]:.2f}", flush=True)
for name, v in rows.items():
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"{name}: diffusers min {min(x[0] for x in v):.3f} s median {med([x[0] for x in v]):.3f} s; "
          f"omni min {min(x[1] for x in v):.3f} s median {med([x[1] for x in v]):.3f} s; load {[round(x[2],1) for x in v]}")
