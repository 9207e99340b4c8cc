"""`scripts/gpu_check.sh --cpu-smoke`: the one-command GPU check, run on the CPU so it cannot rot.

The same figure functions as on a GPU (shards, launcher train + checkpoint + evaluation + resume,
train and eval throughput, memory) with tiny anchors, with Ray and FastAPI made unimportable: the
check needs only torch, torchvision, timm, deepspeed, webdataset and SQLAlchemy (the results database).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_passes_without_ray(tmp_path):
    # Ray, and the results web app's FastAPI stack: none of them is on a bare GPU box
    for package in ("ray", "fastapi", "starlette", "uvicorn"):
        blocker = tmp_path / "noray" / package
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text(f'raise ImportError("the GPU check must not need {package}")\n')
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "noray"), OMP_NUM_THREADS="1", PYTHON=os.sys.executable)
    done = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--work", str(tmp_path / "work"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert any(r.startswith("RESULT snnet_vs_hand_train_speed ") for r in results)
    assert any(r.startswith("RESULT eval_all_configs_images_per_s ") for r in results)
    report = json.loads(out.read_text())
    assert report["failed"] == []
    assert report["train_and_resume"]["logged_steps"][-1] == 6  # 4 steps, then 2 more after the resume
    assert report["eval_throughput"]["configs"] == 23  # every config of the tiny 3-anchor, depth-4 family
