#!/usr/bin/env bash
# Run `ifmdm-data filter` on a Ray cluster.
#
# Prerequisites: every node has this project installed the same way (bash scripts/setup.sh, or
# your own image built from requirements.txt + the --no-deps line in scripts/setup.sh), and the
# inputs and the output folder are on storage every node sees at the same path (NFS, Lustre, a
# FUSE-mounted bucket). Workers write tracks/ and _work/parts/ directly; the driver only
# collects kilobytes per clip.
#
#   # on the head node
#   ray start --head --num-cpus "$(nproc)"
#   # on each worker node
#   ray start --address HEAD_IP:6379 --num-cpus "$(nproc)"
#   # then, from the head node (or any node of the cluster):
#   pipelines/filter_on_cluster.sh /mnt/data/raw_clips /mnt/data/manifests
#
# With the SyncNet sync check on GPU nodes (4 analysis actors share each GPU; syncnet_v2.model
# on the shared storage):
#   pipelines/filter_on_cluster.sh /mnt/data/raw_clips /mnt/data/manifests \
#       --syncnet /mnt/models/syncnet_v2.model --syncnet-gpus 0.25
#
# Re-running the same command after a failure resumes: finished work units are skipped.
# To submit as a Ray job instead: see pipelines/submit_filter_job.sh.
set -euo pipefail
IN=${1:?usage: filter_on_cluster.sh INPUTS OUT [extra filter args]}
OUT=${2:?usage: filter_on_cluster.sh INPUTS OUT [extra filter args]}
shift 2
export RAY_ADDRESS=${RAY_ADDRESS:-auto}
exec ifmdm-data filter "$IN" -o "$OUT" --ray-address "$RAY_ADDRESS" "$@"
