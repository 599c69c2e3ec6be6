#!/usr/bin/env python3
"""The issue-18 CPU table in one command: omni against diffusers 0.42.1 on this machine, both sides
on the same thread count, f32, 640x384, whole processes alternated round after round, medians.

Each round runs, in this order (every group is one `time_diffusers.py --json` process, which runs
`omni bench ... --json` as a child for the omni side of each row, so the two sides alternate row by
row):

  1. tiny: DiT forward at the three pyramid stages, VAE decode of one chunk, UMT5 on 512 tokens and
     the per-op rows (`--ops`: linears, the plain sgemm shapes, attention, norms, conv3d);
  2. tiny: the Distilled pipeline end to end, 33 frames (`--pipeline`);
  3. medium (1536 wide, 12 heads, FFN 8960, 2 layers): DiT forward at the three stages;
  4. with `--medium-vae` only: the real Wan2.1 VAE's decode of one chunk (~14 min a round);
  5. the README's first command, `omni generate` on the tiny checkpoint (omni only: wall, CPU,
     cpu/wall, against the < 30 s target).

and the summary prints one markdown row per measurement: omni and diffusers medians over the rounds,
their ratio, omni's cpu/wall (process CPU time over wall time of the timed calls, from `omni bench`)
and the load average seen around the row. Usage (repository root, release build done):

    benches/reference/measure_cpu.sh                   # 3 rounds, 2 threads, medium VAE off
    benches/reference/measure_cpu.sh --rounds 1 --medium-vae --out /tmp/issue18.md

Run time on the 2-vCPU Xeon of the README (quiet): see README "CPU measurement".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIME_DIFFUSERS = ROOT / "benches/reference/time_diffusers.py"
PROMPT = "A serene lakeside sunrise with mist over the water."


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def group(name: str, args: list[str], a) -> tuple[dict, str]:
    """One `time_diffusers.py` process; its rows as {row: {diffusers_ms, omni_ms, omni}}."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [a.python, str(TIME_DIFFUSERS), "--omni", a.omni, "--device", "cpu", "--dtype", "float32",
           "--threads", str(a.threads), "--height", str(a.height), "--width", str(a.width),
           "--json", str(out), *args]
    before = load()
    print(f"# {name}: {' '.join(cmd[1:])} (load {before})", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if a.quiet else None)
    rows = json.loads(out.read_text())
    out.unlink()
    return rows, f"{before} -> {load()}"


def readme_generate(a, workdir: Path) -> dict:
    """The README's first command on the tiny checkpoint: wall, CPU (user + sys) of the process."""
    cmd = [a.omni, "--threads", str(a.threads), "generate", "--model",
           str(ROOT / "tests/fixtures/tiny-helios-distilled"), "--prompt", PROMPT, "--num-frames", "33",
           "--height", str(a.height), "--width", str(a.width),
           "--quiet", "-o", str(workdir / "lakeside.mp4")]
    before = load()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": f"{before} -> {load()}"}


def cpu_wall(omni: dict | None) -> str:
    if not omni:
        return "-"
    if "denoise_cpu_per_wall" in omni:
        return (f"{omni['total_cpu_per_wall']:.2f} (denoise {omni['denoise_cpu_per_wall']:.2f}, "
                f"decode {omni['decode_cpu_per_wall']:.2f})")
    return f"{omni['cpu_per_wall']:.2f}" if "cpu_per_wall" in omni else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--omni", default=str(ROOT / "target/release/omni"))
    p.add_argument("--python", default=sys.executable, help="Python with torch and diffusers 0.42.1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--height", type=int, default=384, help="pixels (the issue's table: 384)")
    p.add_argument("--width", type=int, default=640, help="pixels (the issue's table: 640)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--medium-vae", action="store_true", help="also the real VAE's decode (~14 min a round)")
    p.add_argument("--no-ops", action="store_true", help="leave out the per-op rows")
    p.add_argument("--skip-medium", action="store_true", help="leave out the medium DiT rows (a quick run)")
    p.add_argument("--out", type=Path, help="also write the summary table to this file")
    p.add_argument("--quiet", action="store_true", help="hide the per-round tables")
    a = p.parse_args()

    groups = [
        ("tiny DiT, VAE, UMT5" + ("" if a.no_ops else ", ops"),
         ["--config", "tiny", "--warmup", "1", "--iters", "2", "--text-encoder",
          *([] if a.no_ops else ["--ops"])]),
        ("tiny pipeline, 33 frames",
         ["--config", "tiny", "--pipeline", "--num-frames", "33", "--skip-core", "--warmup", "0", "--iters", "1"]),
    ]
    if not a.skip_medium:
        groups.append(("medium DiT", ["--config", "medium", "--skip-vae", "--warmup", "0", "--iters", "1"]))
    if a.medium_vae:
        groups.append(("medium VAE", ["--config", "medium", "--skip-dit", "--warmup", "0", "--iters", "1"]))

    missing = subprocess.run([a.python, "-c", "import torch, diffusers, transformers, ftfy"],
                             capture_output=True, text=True)
    if missing.returncode != 0:
        sys.exit(f"measure_cpu: {a.python} lacks a package the reference needs (torch, diffusers==0.42.1, "
                 f"transformers, ftfy for the pipeline's prompt cleaning): "
                 f"{missing.stderr.strip().splitlines()[-1]}")
    started = time.perf_counter()
    seen: dict[str, dict] = {}  # row -> {"omni": [...], "diffusers": [...], "cpu_wall": [...], "load": [...]}
    generate = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for name, args in groups:
                rows, ld = group(f"round {rnd + 1}/{a.rounds}, {name}", args, a)
                prefix = "medium " if "--config" in args and args[args.index("--config") + 1] == "medium" else "tiny "
                for what, r in rows.items():
                    s = seen.setdefault(prefix + what, {"omni": [], "diffusers": [], "cpu_wall": [], "load": []})
                    s["diffusers"].append(r["diffusers_ms"])
                    if r["omni_ms"] is not None:
                        s["omni"].append(r["omni_ms"])
                    s["cpu_wall"].append(cpu_wall(r.get("omni")))
                    s["load"].append(ld)
            generate.append(readme_generate(a, Path(tmp)))
            print(f"# round {rnd + 1}: README command {generate[-1]}", file=sys.stderr, flush=True)

    lines = [
        f"omni {a.omni} vs diffusers (torch, {a.threads} threads both sides), f32, {a.width}x{a.height}, "
        f"{a.rounds} rounds, medians; {time.perf_counter() - started:.0f} s in all",
        "",
        "| what | omni (ms) | diffusers (ms) | omni / diffusers | omni cpu/wall | load (1/5/15 min, before -> after) |",
        "|---|---|---|---|---|---|",
    ]
    for what, s in seen.items():
        om = statistics.median(s["omni"]) if s["omni"] else None
        dm = statistics.median(s["diffusers"])
        ratio = f"{om / dm:.2f}" if om is not None and dm > 0 else "-"
        lines.append(f"| {what} | {om:.1f} | {dm:.1f} | {ratio} | {s['cpu_wall'][-1]} | {s['load'][-1]} |"
                     if om is not None else f"| {what} | - | {dm:.1f} | - | - | {s['load'][-1]} |")
    wall = statistics.median(g["wall_s"] for g in generate)
    cpu = statistics.median(g["cpu_s"] for g in generate)
    lines.append(f"| README's first command, `omni generate` (s; target < 30) | {wall:.1f} | - | - | "
                 f"{cpu / wall:.2f} (whole process) | {generate[-1]['load']} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
