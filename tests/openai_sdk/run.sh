#!/usr/bin/env bash
# The openai-SDK test: `tests/openai_sdk/run.sh [VENV_DIR]`.
# Needs target/release/omni (built by `cargo test --release`); creates VENV_DIR (default
# target/openai-sdk-venv) with `python3 -m venv`, installs `openai` and `pytest` there, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-target/openai-sdk-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check openai pytest
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/openai_sdk "${@:2}"
