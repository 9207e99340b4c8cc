"""The SN-Net trainer end to end on a real local Ray cluster, DeepSpeed on CPU, digits shards.

What a user relies on: bad configs are refused before workers start; a `tiny_digits` run lifts
accuracy over the least-squares-initialised start and records every config's evaluation; a worker
killed mid-run is replaced and the run finishes from its checkpoint without counting a step twice;
a finished run extended with more steps continues where it stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from snnet_ray.data import write_digits_shards
from snnet_ray.results import LocalResults
from snnet_ray.train.checkpoint import read_train_state
from snnet_ray.train.config import load_experiment
from snnet_ray.train.launch import run_experiment, validate_experiment

pytestmark = pytest.mark.slow

# Short runs: 2 workers x 32 images, few steps, evaluation of the anchors on one shard.
QUICK = [
    "schedule.max_steps=8",
    "run.checkpoint_every_steps=3",
    "run.log_every_steps=2",
    "eval.every_steps=0",
    "failure.max_failures=2",
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits_shards(root)
    return root


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _cfg(digits: Path, tmp_path: Path, *overrides: str):
    return load_experiment(
        "tiny_digits",
        [
            f"data.root={digits}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"results.url=sqlite:///{tmp_path / 'results.db'}",
            *overrides,
        ],
    )


def test_bad_configs_are_refused_before_workers_start(digits, tmp_path, cluster):
    with pytest.raises(ValueError, match="deepspeed.zero_stage=3 requires sampler.name='synchronized'"):
        _cfg(digits, tmp_path, "deepspeed.zero_stage=3", "sampler.name=uniform")
    with pytest.raises(ValueError, match="global_batch_size=100 is not a multiple"):
        _cfg(digits, tmp_path, "deepspeed.global_batch_size=100")
    with pytest.raises(ValueError, match="unknown sampler 'fastest'"):
        _cfg(digits, tmp_path, "sampler.name=fastest")
    with pytest.raises(ValueError, match="unknown config field 'optim.learning_rate'"):
        _cfg(digits, tmp_path, "optim.learning_rate=1")
    with pytest.raises(FileNotFoundError, match="data.root="):
        validate_experiment(_cfg(tmp_path / "nowhere", tmp_path))
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="weights file for anchor 'swin_tiny_patch4_window7_224' not found"):
        validate_experiment(_cfg(digits, tmp_path, f"model.pretrained=[{missing}, false, false]"))
    with pytest.raises(ValueError, match="set model.timm_kwargs.num_classes=10"):
        validate_experiment(_cfg(digits, tmp_path, "model.timm_kwargs.num_classes=100"))
    with pytest.raises(FileNotFoundError, match="loss.teacher_weights not found"):
        validate_experiment(_cfg(digits, tmp_path, "loss.teacher=resnet18", f"loss.teacher_weights={missing}"))
    with pytest.raises(ValueError, match="needs 4 CPUs but the cluster has 2"):
        validate_experiment(_cfg(digits, tmp_path, "scaling.num_workers=4"))


def test_training_lifts_accuracy_over_the_least_squares_start(digits, tmp_path, cluster):
    cfg = _cfg(
        digits,
        tmp_path,
        "schedule.max_steps=30",
        "eval.at_start=true",
        "eval.configs=all",
        "eval.max_shards=null",
        "optim.lr=2e-3",
        "optim.anchor_lr_scale=1.0",
    )
    outcome = run_experiment(cfg, run="lift")
    results = LocalResults(tmp_path / "results.db")
    init = results.table("lift", "init")
    final = outcome.table

    def mean_top1(table) -> float:
        rows = [r for r in table.rows if r.samples]
        assert len(rows) == 33 and all(r.samples == 360 for r in rows)
        return sum(r.top1 for r in rows) / len(rows)

    assert mean_top1(final) > mean_top1(init) + 10
    # the checkpoint holds the whole SN-Net, ready for `snnet-ray eval` and export
    assert (Path(outcome.checkpoint) / "model" / "snnet.json").is_file()
    assert results.get_run("lift").status == "finished"
    # every worker checked the network at start and recorded gloo's figures with the run
    network = results.network("lift")
    assert [r.worker for r in network] == ["rank0", "rank1"]
    assert all(r.backend == "gloo" and r.world_size == 2 and r.bus_bw_gbps > 0 for r in network)


def _kill_a_worker_after_first_checkpoint(run_dir: Path, done: threading.Event, killed: list) -> None:
    while not done.is_set() and not any(run_dir.glob("step_*")):
        time.sleep(0.5)
    time.sleep(3)  # let Ray's controller register the checkpoint before the crash
    # Ray names a worker process after its actor: "ray::RayTrainWorker..."
    workers = [
        p for p in psutil.process_iter(["cmdline"]) if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])
    ]
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed.append(workers[-1].pid)


def test_killed_worker_resumes_from_checkpoint_and_a_rerun_continues(digits, tmp_path, cluster):
    cfg = _cfg(digits, tmp_path, *QUICK, "eval.configs=anchors")
    done, killed = threading.Event(), []
    killer = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint, args=(tmp_path / "runs" / "fault", done, killed), daemon=True
    )
    killer.start()
    outcome = run_experiment(cfg, run="fault")
    done.set()
    killer.join()
    assert killed, "no training worker was killed"

    steps = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "runs" / "fault").glob("step_*"))
    assert steps[-1] == 8
    state = read_train_state(outcome.checkpoint)["states"]
    progress = state["progress"]
    global_batch = cfg.global_batch_size
    # every step counted once: samples and per-config draws match exactly 8 steps
    assert progress == {"step": 8, "micro_step": 8, "epoch": 0, "samples": 8 * global_batch}
    results = LocalResults(tmp_path / "results.db")
    records = results.records("fault", "final")
    assert len(records) == 33 * 3 and sum(r.samples for r in records if r.config_id == 0) == 360

    # a rerun of the same run with more steps restores step 8 and trains only the rest
    longer = _cfg(digits, tmp_path, *QUICK, "schedule.max_steps=10", "eval.configs=anchors")
    outcome = run_experiment(longer, run="fault")
    state = read_train_state(outcome.checkpoint)["states"]
    assert state["progress"]["step"] == 10 and state["progress"]["samples"] == 10 * global_batch
    final = results.records("fault", "final")
    assert len(final) == 33 * 3  # re-evaluated after more training: replaced, not added
    assert min(r.time for r in final) > max(r.time for r in records)

    # the local launcher (no Ray) continues the Ray run from its checkpoint, on one worker
    from snnet_ray.train.local import run_local

    local = _cfg(digits, tmp_path, *QUICK, "schedule.max_steps=11", "eval.final=false", "eval.configs=anchors")
    run_local(local, 1, run="fault")
    state = read_train_state(tmp_path / "runs" / "fault" / "step_00000011")["states"]
    assert state["progress"]["step"] == 11 and state["progress"]["samples"] == 10 * global_batch + 32

    # and Ray continues the local launcher's step 11 (which Ray's checkpoint manager never saw), on 2 workers
    again = _cfg(digits, tmp_path, *QUICK, "schedule.max_steps=12", "eval.final=false", "eval.configs=anchors")
    outcome = run_experiment(again, run="fault")
    state = read_train_state(outcome.checkpoint)
    assert state["world_size"] == 2
    assert state["states"]["progress"]["step"] == 12
    # from step 11, not from Ray's own step 10 (which would count 12 global batches)
    assert state["states"]["progress"]["samples"] == 10 * global_batch + 32 + global_batch
