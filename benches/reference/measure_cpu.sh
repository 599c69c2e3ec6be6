#!/bin/sh
# The issue-18 CPU table (omni vs diffusers, alternated, medians, ratios): see measure_cpu.py.
# Python: $OMNI_PYTHON, else /tmp/torch-venv/bin/python when present, else python3 (needs torch,
# diffusers==0.42.1, transformers and ftfy, which HeliosPyramidPipeline's prompt cleaning imports). Arguments go to measure_cpu.py (--rounds N, --medium-vae, --out FILE).
set -eu
here=$(dirname "$0")
py=${OMNI_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x /tmp/torch-venv/bin/python ]; then py=/tmp/torch-venv/bin/python; else py=python3; fi
fi
exec "$py" "$here/measure_cpu.py" --python "$py" "$@"
