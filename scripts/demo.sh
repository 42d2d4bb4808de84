#!/usr/bin/env bash
# The main job on the embedded defaults: set up (idempotent), make the labelled sample set,
# filter it on a local Ray with mediapipe's bundled models, write the HTML report and the
# WebDataset shards, and finally print each segment's outcome beside its label (exit 1 if
# any segment is not where its label says).
#   bash scripts/demo.sh [SAMPLE_DIR] [MANIFEST_DIR] [REPORT_DIR] [SHARD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SAMPLE=${1:-out/sample}
MANIFESTS=${2:-manifests}
REPORT=${3:-out/report}
SHARDS=${4:-out/shards}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ifmdm-data sample "$SAMPLE"
.venv/bin/ifmdm-data filter "$SAMPLE" -o "$MANIFESTS" --overwrite
.venv/bin/ifmdm-data report "$MANIFESTS" -o "$REPORT"
.venv/bin/ifmdm-data shard "$MANIFESTS" -o "$SHARDS" --size 256 --overwrite --no-progress
.venv/bin/ifmdm-data inspect "$MANIFESTS" --labels "$SAMPLE/labels.csv"
echo "demo: done. Next, training on these shards (README \"ifmdm-train\"); a 3-step smoke run (~2 min on 2 CPU cores: stage 1 ~16 s a step at 256 px, motion extraction, stage 2):"
echo "  .venv/bin/ifmdm-train --curriculum $MANIFESTS --shards $SHARDS -o runs/demo --batch-size 4 --max-steps 3"
