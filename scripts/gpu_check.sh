#!/usr/bin/env bash
# One-command GPU check (issue 9): synthetic shards, a DeiT-Ti/S/B SN-Net trained through the local
# launcher on one GPU (bf16, ZeRO-2) past a metrics log, a checkpoint, a periodic evaluation and a
# resume, then train/eval throughput and peak memory as RESULT lines; JSON in bench/out/gpu_check.json.
# Needs torch, torchvision, timm, deepspeed, webdataset and SQLAlchemy (the results database; no Ray,
# no FastAPI). Exit status 0 only when all passed.
#
#   scripts/gpu_check.sh               # on a GPU machine, < 8 minutes on one H100/H200
#   scripts/gpu_check.sh --cpu-smoke   # tiny anchors on the CPU (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! command -v "$PYTHON" >/dev/null 2>&1 && [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
