#!/usr/bin/env bash
# Submit `filter` then `shard` as one Ray job that reads the videos from a bucket and writes the
# manifests and the shards back to it (s3://, or gs:// with GOOGLE_APPLICATION_CREDENTIALS):
# the nodes need no shared folder, only the project installed (see filter_on_cluster.sh).
#
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_DEFAULT_REGION=...
#   export AWS_ENDPOINT_URL=https://minio.example:9000      # S3-compatible stores only
#   pipelines/s3_filter_shard_job.sh http://HEAD_IP:8265 s3://bucket/raw s3://bucket/curated [filter args]
#
# writes s3://bucket/curated/manifests/ (clips.parquet, subsets, tracks, summary.json) and
# s3://bucket/curated/shards/ ({coarse,lip,hard}/*.tar, index.parquet). The standard credential
# variables that are set in this shell travel to the job in its runtime_env (visible in the
# dashboard's job details): on a real cluster prefer node credentials (an instance profile /
# IAM role, or a Kubernetes secret as in rayjob.yaml) and leave them unset here.
# Prints the job id; follow it with `ray job logs --address DASH --follow JOB_ID`.
# Re-submitting the same command resumes: finished work units and shards are skipped.
set -euo pipefail
DASH=${1:?usage: s3_filter_shard_job.sh DASHBOARD_URL s3://IN s3://OUT [extra filter args]}
IN=${2:?}; OUT=${3:?}; shift 3
OUT=${OUT%/}
PY=${PYTHON:-python3}
runtime_env=$("$PY" -c 'import json, os, sys
keys = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST")
print(json.dumps({"env_vars": {k: os.environ[k] for k in keys if os.environ.get(k)}}))')
# $0 = input, $1 = output root, the rest: extra filter arguments
exec ray job submit --address "$DASH" --no-wait --runtime-env-json "$runtime_env" -- \
  bash -c 'set -e
ifmdm-data filter "$0" -o "$1/manifests" --ray-address auto --no-progress "${@:2}"
ifmdm-data shard "$1/manifests" -o "$1/shards" --ray-address auto --no-progress' \
  "$IN" "$OUT" "$@"
