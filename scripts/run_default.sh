#!/usr/bin/env bash
# Set up .venv if needed, then run the flagship source-free job on the embedded default domains (digits -> digits-m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}  # keep a user's accelerate config from changing the launch
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  recipes/source_free.py "$@"
