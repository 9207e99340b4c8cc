"""`snnet-ray train --local --nproc N`: the Ray Train worker code under plain torch.distributed.

What a user relies on: a 2-process run on this machine with Ray not even importable trains, logs one
line per log step, writes checkpoints that every rank shares the writing of, evaluates into the
configured results database, and marks the run finished; the same run resumes on 1 and on 3
workers (a cluster that came back smaller or larger) from that checkpoint, continuing the loss and
the counts without training a step twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from ray_head import free_port

from snnet_ray.data import write_digits_shards
from snnet_ray.results import LocalResults
from snnet_ray.train.checkpoint import read_tensors, read_train_state

pytestmark = pytest.mark.slow

BATCH = 32  # tiny_digits' micro-batch
COMMON = [
    "run.checkpoint_every_steps=2",
    "run.log_every_steps=1",
    "eval.configs=anchors",
    "optim.lr=3e-3",
    "optim.anchor_lr_scale=1.0",
    "schedule.warmup_epochs=0",
    "model.ls_init_images=32",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local")
    write_digits_shards(root / "digits")
    blocker = root / "noray" / "ray"  # `import ray` fails on this path
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("the local launcher must not import ray")\n')
    return root


def _train(root: Path, run: str, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "snnet_ray.cli", "train", "--config", "tiny_digits", "--local", "--nproc", str(nproc),
        "--json",
    ]  # fmt: skip
    for item in [
        f"data.root={root / 'digits'}",
        f"run.storage_path={root / 'runs'}",
        f"results.url=sqlite:///{root / 'results.db'}",
        f"run.name={run}",
        *COMMON,
        *overrides,
    ]:
        args += ["--set", item]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root / 'noray'}{os.pathsep}{repo}", OMP_NUM_THREADS="1")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _metrics(root: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (root / "runs" / run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(workspace):
    done = _train(workspace, "two", 2, "schedule.max_steps=4", "eval.every_steps=2")
    return workspace, done


def test_two_processes_train_log_checkpoint_and_evaluate_without_ray(first_run):
    root, done = first_run
    where = json.loads(done.stdout[done.stdout.index("{") :])
    checkpoint = Path(where["checkpoint"])
    assert checkpoint == root / "runs" / "two" / "step_00000004"

    # one log line per log step, from rank 0 only
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("[snnet-ray]")]
    steps = [line for line in lines if line.startswith("[snnet-ray] step ")]
    assert [s.split()[2] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert max(Counter(lines).values()) == 1, "a line was logged twice"
    assert [m["step"] for m in _metrics(root, "two") if "loss" in m] == [1, 2, 3, 4]

    # both ranks wrote a share of the checkpoint; rank 0 alone wrote the whole SNNet
    shards = sorted(p.name for p in (checkpoint / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    assert all((checkpoint / "dcp" / s).stat().st_size > 100_000 for s in shards)
    assert (checkpoint / "model" / "snnet.json").is_file()
    state = read_train_state(checkpoint)
    assert state["world_size"] == 2
    assert state["states"]["progress"] == {"step": 4, "micro_step": 4, "epoch": 0, "samples": 4 * 2 * BATCH}

    results = LocalResults(root / "results.db")
    assert results.get_run("two").status == "finished"
    assert {r.config_id for r in results.records("two", "step-000002")} == {0, 1, 2}  # the periodic evaluation
    assert len({r.config_id for r in results.records("two", "final")}) == 33


@pytest.mark.parametrize("nproc", [1, 3])
def test_resumes_on_another_number_of_workers(first_run, nproc):
    root, _ = first_run
    run = f"resume{nproc}"
    shutil.rmtree(root / "runs" / run, ignore_errors=True)
    (root / "runs" / run).mkdir(parents=True)
    shutil.copytree(root / "runs" / "two" / "step_00000004", root / "runs" / run / "step_00000004")
    done = _train(root, run, nproc, "schedule.max_steps=6", "eval.final=false", "eval.every_steps=0")

    trained = [m for m in _metrics(root, run) if "loss" in m]
    assert [m["step"] for m in trained] == [5, 6]  # steps 1-4 are not trained again
    # the global batch changed with the workers: the log says so, and how to keep the schedule
    assert f"resumed with a global batch of {nproc * BATCH} images" in done.stdout + done.stderr
    assert f"deepspeed.global_batch_size={2 * BATCH}" in done.stdout + done.stderr
    state = read_train_state(root / "runs" / run / "step_00000006")
    assert state["world_size"] == nproc
    # the global batch (and an lr scaled to it) follow the workers started, not scaling.num_workers
    assert LocalResults(root / "results.db").get_run(run).experiment["scaling"]["num_workers"] == nproc
    progress, counts = state["states"]["progress"], state["states"]["sampler"]["counts"]
    assert progress["step"] == 6
    assert progress["samples"] == 4 * 2 * BATCH + 2 * nproc * BATCH  # every image counted once
    assert sum(counts) == 4 * 2 + 2 * nproc  # one draw per rank and micro-step, none lost or doubled

    # the loss continues from the 2-worker run's instead of starting over
    first = [m["loss"] for m in _metrics(root, "two") if "loss" in m]
    assert trained[0]["loss"] < first[0] - 0.05
    # and the weights moved on from step 4's
    before = read_tensors(root / "runs" / run / "step_00000004")
    after = read_tensors(root / "runs" / run / "step_00000006")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)


def test_torchrun_entry_registers_the_run_and_marks_it_finished(workspace):
    # what `torchrun --nproc-per-node 1 -m snnet_ray.train.local --config ...` starts: no driver before it
    root = workspace
    args = [sys.executable, "-m", "snnet_ray.train.local", "--config", "tiny_digits"]
    for item in [f"data.root={root / 'digits'}", f"run.storage_path={root / 'runs'}",
                 f"results.url=sqlite:///{root / 'results.db'}", "run.name=torchrun", *COMMON,
                 "schedule.max_steps=2", "eval.every_steps=0", "eval.final=false"]:  # fmt: skip
        args += ["--set", item]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root / 'noray'}{os.pathsep}{repo}", OMP_NUM_THREADS="1",
               RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    run = LocalResults(root / "results.db").get_run("torchrun")
    assert run.status == "finished"
    assert run.experiment["scaling"]["num_workers"] == 1  # the preset says 2; torchrun started 1
    assert run.experiment["model_dir"] == str(root / "runs" / "torchrun" / "step_00000002" / "model")
