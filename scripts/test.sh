#!/usr/bin/env bash
# Install everything the tests need (virtualenv, Python packages, GNU screen, tmux) and run them.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests drive for real: GNU screen (job sessions) and tmux (status --watch in a terminal).
# iproute2 (`ip netns`) lets the Ray tests run a two-node cluster on this one machine.
missing=()
command -v screen >/dev/null 2>&1 || missing+=(screen)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ "$(id -u)" = "0" ] && ! command -v ip >/dev/null 2>&1; then missing+=(iproute2); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} with apt-get..."
    (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1) \
      || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
  else
    echo "Missing: ${missing[*]}. Install them first:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
# The optional Ray extra, for the Ray cluster tests; where it cannot be installed they skip.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "ray[default]>=2.60,<2.61" \
  || echo "Ray could not be installed here: the Ray cluster tests will be skipped" >&2

exec .venv/bin/python -m pytest "$@"
