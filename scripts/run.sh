#!/usr/bin/env bash
# Install the scheduler into a local virtualenv and run it in the foreground on the shipped config.
# Usage: scripts/run.sh [gpu-scheduler start args...]   (Ctrl-C stops it; running jobs keep running)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v screen >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing GNU screen with apt-get..."
    (apt-get install -y -qq screen >/dev/null 2>&1) || { apt-get update -qq && apt-get install -y -qq screen; }
  else
    echo "GNU screen is missing: install it (sudo apt-get install -y screen) or run with --mode direct" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

exec .venv/bin/gpu-scheduler start --config configs/config.json "$@"
