#!/usr/bin/env bash
# The issue-5 measurement in one go on a lent GPU box (the `device` tool: CUDA + PyTorch, no Rust, no
# package registry). Run from the repository root of the carried working tree:
#
#   benches/reference/run_device.sh STEP OUT_DIR
#
# STEP is one of (each fits in one 600 s device call):
#   parity    the bf16 parity tests on the GPU (tests/bf16_parity.rs built --features cuda)
#   omni      omni bench dit and ops at the real 14B shapes (OUT_DIR/omni.txt)
#   omni-rest omni bench vae, text-encoder and the 99-frame Distilled pipeline (OUT_DIR/omni-rest.txt)
#   compare   benches/reference/time_diffusers.py: DiT, VAE and per-op rows, diffusers and omni side
#             by side, same GPU, same run (OUT_DIR/table.md)
#   compare-pipeline  the same for the Distilled pipeline end to end and its peak GPU memory
#             (OUT_DIR/table_pipeline.md)
#
# Carried files (build them here first, see README "GPU measurement"), gzipped because the CUDA
# build is ~75 MB stripped and a call carries 64 MiB at most (gzip -9: ~18 MB):
#   dist/omni.gz          `cargo build --release --features cuda` (stripped by the release profile)
#   dist/bf16_parity.gz   `cargo test --release --features cuda --test bf16_parity --no-run` binary
#   dist/wheels/       `pip download --no-deps -d dist/wheels diffusers==0.42.1` (+ transformers and its
#                      pure-Python deps when the box lacks them; `compare` installs from here offline)
# Every step writes its console output to OUT_DIR/<step>*.txt; `compare` also writes OUT_DIR/table.md.
set -euo pipefail

usage="usage: run_device.sh parity|omni|omni-rest|compare|compare-pipeline OUT_DIR"
step=${1:?$usage}
out=${2:?$usage}
mkdir -p "$out"
for f in dist/omni dist/bf16_parity; do
    if [ -f "$f.gz" ] && [ ! -x "$f" ]; then
        gunzip -c "$f.gz" >"$f" && chmod +x "$f"
    fi
done
omni=${OMNI:-dist/omni}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true

case "$step" in
parity)
    # Fixtures are found under ./tests/fixtures (the binary was built on another machine).
    ${BF16_PARITY:-dist/bf16_parity} --nocapture --test-threads 1 2>&1 | tee "$out/parity.txt"
    ;;
omni)
    {
        "$omni" bench dit --config helios-14b --warmup 2 --iters 5
        "$omni" bench ops --config helios-14b --warmup 2 --iters 5
    } 2>&1 | tee "$out/omni.txt"
    ;;
omni-rest)
    {
        "$omni" bench vae --config helios-14b --warmup 1 --iters 3
        "$omni" bench text-encoder --config helios-14b --warmup 1 --iters 3
        "$omni" bench pipeline --config helios-14b --preset helios-distilled --num-frames 99
    } 2>&1 | tee "$out/omni-rest.txt"
    ;;
compare | compare-pipeline)
    venv=/tmp/omni-bench-venv
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv --system-site-packages "$venv"
        "$venv/bin/pip" install --no-index --no-deps --find-links dist/wheels dist/wheels/*.whl
    fi
    if ! "$venv/bin/python" -c "import diffusers, transformers" 2>"$out/import-error.txt"; then
        echo "diffusers/transformers do not import on this box (see $out/import-error.txt): add the" \
            "missing packages' wheels to dist/wheels here (pip download --no-deps -d dist/wheels PKG)" >&2
        exit 1
    fi
    if [ "$step" = compare ]; then
        what=(--ops --markdown "$out/table.md")
    else
        what=(--skip-core --pipeline --markdown "$out/table_pipeline.md")
    fi
    "$venv/bin/python" benches/reference/time_diffusers.py --omni "$omni" --config helios-14b \
        "${what[@]}" 2>&1 | tee "$out/$step.txt"
    ;;
*)
    echo "unknown step $step: use parity, omni, omni-rest, compare or compare-pipeline" >&2
    exit 2
    ;;
esac
