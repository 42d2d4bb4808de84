#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine of this kind:
#   - Debian packages: ffmpeg (ffprobe, libx264), espeak-ng (speech for the sample set), sox,
#     libchromaprint1 (audio fingerprints)
#   - a virtual environment at .venv/ with the pinned Python packages (requirements.txt; with
#     the test tools: pytest, moto[server] and gcp-storage-emulator, the S3 and GCS API servers
#     the object-storage tests start)
#   - packages that must go in with --no-deps (mediapipe 0.10.21, face-alignment, facexlib)
#   - this project, editable
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox)
# Chromaprint (audio fingerprints; a dependency of Debian's ffmpeg, named here for other setups)
ldconfig -p 2>/dev/null | grep -q libchromaprint.so.1 || need_apt+=(libchromaprint1)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: apt packages ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip prints a warning per package for the machine's local index folders: drop those lines.
pipq() { .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
stamp=.venv/.ifmdm-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)${IFMDM_JOBS:+-jobs}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: pinned Python packages into .venv/ (first run: 2-9 minutes, ~7.5 GB of disk)" >&2
  pipq -r requirements.txt
  # optional: the Ray jobs CLI / SDK for pipelines/ (requirements-jobs.txt)
  if [ -n "${IFMDM_JOBS:-}" ]; then pipq -r requirements.txt -r requirements-jobs.txt; fi
  # --no-deps: mediapipe's declared deps pull jax and two more OpenCV builds into cv2/;
  # face-alignment and facexlib would pull opencv-python beside the headless build.
  pipq --no-deps mediapipe==0.10.21 face-alignment==1.5.0 facexlib==0.3.0
  pipq --no-deps -e .
  echo "$want" > "$stamp"
  echo "setup: done" >&2
fi
