#!/usr/bin/env bash
# Set up (idempotent), make the labelled sample set, filter it on a local Ray with the
# bundled models, and print what was kept and why next to the sample set's labels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SAMPLE=${1:-out/sample}
MANIFESTS=${2:-manifests}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ifmdm-data sample "$SAMPLE"
.venv/bin/ifmdm-data filter "$SAMPLE" -o "$MANIFESTS" --overwrite
.venv/bin/ifmdm-data inspect "$MANIFESTS" --labels "$SAMPLE/labels.csv"
.venv/bin/ifmdm-data report "$MANIFESTS" -o "${3:-out/report}"
echo "open ${3:-out/report}/index.html in a browser to see what was kept and why"
