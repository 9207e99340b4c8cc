"""Where a worker runs: device choice, the env:// context of the local launcher, complete checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from snnet_ray.train.config import load_experiment
from snnet_ray.train.context import LocalContext, check_device, latest_checkpoint
from snnet_ray.train.local import run_local


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_use_gpu_without_cuda_is_an_error_before_training(tmp_path):
    with pytest.raises(RuntimeError, match=r"scaling.use_gpu=true but CUDA is not available.*use_gpu=false"):
        check_device(True)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        LocalContext(use_gpu=True, run_dir=tmp_path)
    cfg = load_experiment("tiny_digits", ["scaling.use_gpu=true", f"run.storage_path={tmp_path}"])
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_local(cfg, 2)  # refused before any worker process starts
    assert not (tmp_path / cfg.run.name).exists()


def test_local_context_reads_the_rendezvous_variables_and_records_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = LocalContext(use_gpu=False, run_dir=tmp_path / "run", keep_checkpoints=1)
    assert (ctx.rank, ctx.world_size, ctx.device) == (0, 1, torch.device("cpu"))
    for step in (2, 4):
        ctx.report_checkpoint(
            {"step": step},
            f"step_{step:08d}",
            lambda d: (d / "train_state").mkdir() or (d / "train_state" / "state.json").write_text("{}"),
        )
    (tmp_path / "run" / "step_00000006").mkdir()  # a checkpoint whose writing never finished
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "step_00000004"
    assert not (tmp_path / "run" / "step_00000002").exists()  # keep_checkpoints=1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
