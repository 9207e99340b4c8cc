"""`ray job submit --working-dir . -- python jobs/train_swin.py --config tiny_digits` against a local
`ray start --head`: the job trains, evaluates every config, and says where things went."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ray_head import ray_head

from snnet_ray.data import write_digits_shards
from snnet_ray.results import LocalResults

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_trains_tiny_digits(tmp_path):
    digits = tmp_path / "digits"
    write_digits_shards(digits)
    db = tmp_path / "results.db"
    with ray_head(tmp_path) as (address, env):
        job = subprocess.run(
            [
                "ray", "job", "submit", f"--address={address}", "--working-dir=.",
                "--runtime-env=cluster/runtime_env.yaml", "--",
                "python", "jobs/train_swin.py", "--config", "tiny_digits",
                "--set", f"data.root={digits}",
                "--set", f"run.storage_path={tmp_path / 'runs'}",
                "--set", f"results.url=sqlite:///{db}",
                "--set", "schedule.max_steps=6",
                "--set", "eval.every_steps=0",
            ],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert "succeeded" in out
    # the job says where its checkpoints and results went
    assert f"checkpoint:  {tmp_path / 'runs' / 'tiny-digits'}" in out
    assert f"results:     sqlite:///{db}" in out
    table = LocalResults(f"sqlite:///{db}").table("tiny-digits", "final")
    assert len(table.rows) == 33 and all(r.samples == 360 for r in table.rows)
    assert (tmp_path / "runs" / "tiny-digits" / "step_00000006" / "model" / "snnet.json").is_file()
