#!/usr/bin/env bash
# Install everything the tests need (virtualenv, Python packages, GNU screen) and run them.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v screen >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing GNU screen with apt-get..."
    (apt-get install -y -qq screen >/dev/null 2>&1) || { apt-get update -qq && apt-get install -y -qq screen; }
  else
    echo "GNU screen is missing. Install it first:  sudo apt-get install -y screen" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

exec .venv/bin/python -m pytest "$@"
