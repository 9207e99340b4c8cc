"""`ray job submit --working-dir . -- python jobs/train_swin.py --config tiny_digits` against a local
`ray start --head`: the job trains, evaluates every config, and says where things went; its log has
one line per log step (rank 0, no duplicates); Ray Train's dashboard lists the run; a job stopped with
`ray job stop` is marked stopped in the results."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
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
                "--set", "run.log_every_steps=2",
                "--set", "eval.every_steps=0",
            ],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        runs = _dashboard_runs(address, env)
        stopped = _submit_and_stop(address, env, digits, tmp_path)
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert "succeeded" in out
    # the job says where its checkpoints and results went
    assert f"checkpoint:  {tmp_path / 'runs' / 'tiny-digits'}" in out
    assert f"results:     sqlite:///{db}" in out
    table = LocalResults(f"sqlite:///{db}").table("tiny-digits", "final")
    assert len(table.rows) == 33 and all(r.samples == 360 for r in table.rows)
    assert (tmp_path / "runs" / "tiny-digits" / "step_00000006" / "model" / "snnet.json").is_file()

    # what a user reads in the job's log: one line per log step, each line once
    lines = [line.strip() for line in out.splitlines() if "[snnet-ray]" in line]
    steps = [re.search(r"step (\d+)/6 ", line).group(1) for line in lines if re.search(r"step \d+/6 ", line)]
    assert steps == ["2", "4", "6"], lines
    assert max(Counter(lines).values()) == 1, "a [snnet-ray] line appears twice in the job's log"
    assert not [line for line in out.splitlines() if "config_counts" in line], "a metrics dict was printed"
    # Ray Train's dashboard tracks the run (state tracking on through the runtime env)
    assert runs, "Ray Train's dashboard lists no run"
    # `ray job stop` -> the results service says stopped, not running
    assert stopped == "stopped"


def _dashboard_runs(address: str, env: dict[str, str]) -> list:
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{address}/api/train/v2/runs/v1", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read()).get("train_runs", [])
    except urllib.error.HTTPError as err:
        raise AssertionError(f"Ray Train's dashboard API answered {err.code}: {err.read().decode()[:2000]}") from None


def _submit_and_stop(address: str, env: dict[str, str], digits: Path, tmp_path: Path) -> str | None:
    """A long job, stopped with `ray job stop` once training runs; returns the run's final status."""
    db = tmp_path / "stop.db"
    submit = subprocess.run(
        [
            "ray", "job", "submit", f"--address={address}", "--working-dir=.", "--no-wait",
            "--runtime-env=cluster/runtime_env.yaml", "--",
            "python", "jobs/train_swin.py", "--config", "tiny_digits",
            "--set", f"data.root={digits}", "--set", f"run.storage_path={tmp_path / 'runs'}",
            "--set", f"results.url=sqlite:///{db}", "--set", "run.name=stop-me", "--set", "schedule.max_steps=100000",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr).group(0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until training started (the run is registered)
        with contextlib.suppress(Exception):  # no database or no run yet
            if LocalResults(f"sqlite:///{db}").get_run("stop-me").status == "running":
                break
        time.sleep(2)
    time.sleep(5)
    subprocess.run(["ray", "job", "stop", f"--address={address}", job_id], env=env, check=True, timeout=120)
    run = LocalResults(f"sqlite:///{db}").get_run("stop-me")
    return run.status if run is not None else None
