#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (offline, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when no test was collected (for example with a -k that matches nothing): not a failure.
if [ "$status" = 5 ]; then
  echo "no tests collected"
  exit 0
fi
exit "$status"
