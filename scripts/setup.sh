#!/usr/bin/env bash
# Create .venv (if missing) and install map-plugin with its test tools. Safe to run again: a second
# run only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.map-plugin-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import map_plugin, torch" 2>/dev/null; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
echo "installing map-plugin into .venv (first run: several minutes, mostly PyTorch)..."
log=.venv/install.log
{
  .venv/bin/python -m pip install --upgrade pip
  # torch pinned to the 2.14.1 build that pairs with torchvision 0.29.1 (a CUDA build; it also runs on CPU).
  .venv/bin/python -m pip install "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -e ".[dev]"
} >"$log" 2>&1 || { tail -n 30 "$log"; echo "installation failed; full log in $log"; exit 1; }
echo "$want" >"$stamp"
