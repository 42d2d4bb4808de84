#!/usr/bin/env bash
# Submit `ifmdm-data filter` as a Ray job (the driver then runs on the cluster, so a laptop
# disconnecting does not stop the run). The cluster nodes must already have the project
# installed at the same path; the working directory is not uploaded.
#
#   pipelines/submit_filter_job.sh http://HEAD_IP:8265 /mnt/data/raw_clips /mnt/data/manifests
set -euo pipefail
DASH=${1:?usage: submit_filter_job.sh DASHBOARD_URL INPUTS OUT [extra filter args]}
IN=${2:?}; OUT=${3:?}; shift 3
exec ray job submit --address "$DASH" --no-wait -- \
  ifmdm-data filter "$IN" -o "$OUT" --ray-address auto --no-progress "$@"
