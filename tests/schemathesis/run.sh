#!/usr/bin/env bash
# Schemathesis (PyPI, pinned) against a running `omni serve` on the tiny checkpoint:
# `tests/schemathesis/run.sh [VENV_DIR]` (one worker: hypothesis is not thread-safe on Python 3.11). Needs target/release/omni (built by
# `cargo test --release`). Two bounded runs with every check (`--checks all`, fixed seed):
#   1. api_keys set: auth is exercised (bad or missing keys must get 401);
#   2. no api_keys: the document must then not ask for auth.
# Fails on any failure. Settings: tests/schemathesis/schemathesis.toml. Time per run:
# OMNI_ST_MAX_TIME seconds (default 60).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
VENV="${1:-target/schemathesis-venv}"
MAX_TIME="${OMNI_ST_MAX_TIME:-60}"
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check schemathesis==4.32.5
fi
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

run() { # $1: name, $2: api_keys TOML value, $3...: extra st arguments
  local name="$1" keys="$2"; shift 2
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/serve.toml" <<TOML
model = "$ROOT/tests/fixtures/tiny-helios-distilled"
port = $port
api_keys = $keys
[storage]
path = "$WORK/$name/storage"
[default_request]
width = 128
height = 64
num_frames = 33
[limits]
max_queued_jobs = 4
sync_timeout_s = 60
[limits.budget]
max_num_frames = 66
max_long_side = 256
max_short_side = 128
TOML
  target/release/omni serve --config "$WORK/$name/serve.toml" > "$WORK/$name/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 120); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/readyz', timeout=2)" \
      >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/$name/server.log"; exit 1; }
    sleep 0.5
  done
  echo "schemathesis ($name): omni serve on port $port, $MAX_TIME s"
  local rc=0
  "$VENV/bin/st" --config-file tests/schemathesis/schemathesis.toml run \
    "http://127.0.0.1:$port/openapi.json" --checks all --seed 1 --workers 1 \
    --max-time "$MAX_TIME" --request-timeout 120 --no-color "$@" || rc=$?
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "omni serve exited during the run:"; tail -20 "$WORK/$name/server.log"; rc=1
  fi
  kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""
  echo "schemathesis ($name): exit status $rc"
  return "$rc"
}

status=0
run with-keys '["st-key"]' -H "Authorization: Bearer st-key" || status=1
run without-keys '[]' || status=1
exit "$status"
