#!/usr/bin/env bash
# Set up (idempotent), make the labelled sample set, filter it on a local Ray with the
# bundled models, and print what was kept and why next to the sample set's labels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ifmdm-data sample "$OUT/sample"
.venv/bin/ifmdm-data filter "$OUT/sample" -o "$OUT/manifests" --no-progress
.venv/bin/ifmdm-data inspect "$OUT/manifests" --labels "$OUT/sample/labels.csv"
