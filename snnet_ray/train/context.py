"""Where a training worker runs: under Ray Train, or under plain `torch.distributed` (torchrun, `--local`).

The trainer asks its context for its rank, world size and device, for the checkpoint to resume
from, and hands it metrics and checkpoints to report. Everything else is the same worker code.

- `RayContext`: `ray.train.get_context()`, `ray.train.torch.get_device()`, `ray.train.report`
  (Ray gathers every rank's checkpoint files into `<storage>/<run>/<name>/`).
- `LocalContext`: the `RANK`/`WORLD_SIZE`/`LOCAL_RANK` variables of an env:// rendezvous (what
  torchrun sets); checkpoints go straight to `<storage>/<run>/<name>/` in the same layout, so a
  run started on one launcher resumes on the other; metrics go to `<storage>/<run>/metrics.jsonl`.

    ctx = RayContext(use_gpu=True)                       # in train_loop_per_worker
    ctx = LocalContext(use_gpu=True, run_dir=...)        # under torchrun or `--local`
    ctx.rank, ctx.world_size, ctx.device
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from snnet_ray import collectives

__all__ = ["LocalContext", "RayContext", "WorkerContext", "check_device", "latest_checkpoint"]

COMPLETE_MARKER = "train_state/state.json"
RAY_RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of a run's checkpoints
_MAX_SNAPSHOT_BYTES = 16 << 20


def check_device(use_gpu: bool) -> None:
    """`scaling.use_gpu: true` needs CUDA: say so before anything trains (no silent CPU fallback)."""
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError(
            "scaling.use_gpu=true but CUDA is not available on this machine "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); run on GPU nodes or set "
            "scaling.use_gpu=false"
        )


class WorkerContext:
    """Rank, world size, device, resume point and reporting of one training worker."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @contextlib.contextmanager
    def resume_directory(self) -> Iterator[Path | None]:
        """The checkpoint to resume from (a local directory), or None for a fresh run."""
        raise NotImplementedError

    def report(self, metrics: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def report_checkpoint(self, metrics: Mapping[str, Any], name: str, write: Callable[[Path], None]) -> None:
        """`write(directory)` on every rank, then record the checkpoint `name` with `metrics`."""
        raise NotImplementedError


class RayContext(WorkerContext):
    """A Ray Train worker. `run_dir`: the run's local (or shared) directory, where a run started by the
    local launcher left its checkpoints; used when Ray has none of its own to resume from."""

    def __init__(self, use_gpu: bool, run_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        import ray.train
        import ray.train.torch

        check_device(use_gpu)
        _quiet_ray_reports()
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        # The GPU Ray assigned to this worker (CUDA_VISIBLE_DEVICES may hold several per node).
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        if use_gpu and self.device.type != "cuda":
            raise RuntimeError(f"scaling.use_gpu=true but Ray gave this worker {self.device}; request GPU workers")

    @contextlib.contextmanager
    def resume_directory(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        # The local launcher writes the same `step_<8 digits>` layout into the same run directory, and
        # Ray's checkpoint manager does not know of its checkpoints: a Ray run continued locally and
        # then on Ray again must resume from the newer of the two, not from Ray's last one.
        local = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        if checkpoint is None or (local is not None and local.name > Path(checkpoint.path).name):
            yield local
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: Mapping[str, Any]) -> None:
        import ray.train

        ray.train.report(dict(metrics))

    def report_checkpoint(self, metrics: Mapping[str, Any], name: str, write: Callable[[Path], None]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="snnet_ckpt_") as tmp:
            write(Path(tmp))
            ray.train.report(
                dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
            )


class LocalContext(WorkerContext):
    """A worker of an env:// rendezvous; initialises the process group if the launcher did not."""

    def __init__(self, use_gpu: bool, run_dir: str | Path, keep_checkpoints: int | None = None) -> None:
        import torch.distributed as dist

        check_device(use_gpu)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", self.local_rank) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            # Both backends: NCCL for CUDA tensors, gloo for CPU ones (DCP's plans, object broadcasts).
            backend = "cpu:gloo,cuda:nccl" if use_gpu else "gloo"
            # No device_id: NCCL then sets up at the first collective, which is the start-up network
            # check's, where its "Using network ..." line is read (as under Ray, which does the same).
            dist.init_process_group(backend=backend, init_method="env://")
        self.run_dir = Path(run_dir)
        self.keep = keep_checkpoints
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def resume_directory(self) -> Iterator[Path | None]:
        yield latest_checkpoint(self.run_dir)

    def report(self, metrics: Mapping[str, Any]) -> None:
        if self.rank == 0:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(dict(metrics), default=float) + "\n")

    def report_checkpoint(self, metrics: Mapping[str, Any], name: str, write: Callable[[Path], None]) -> None:
        final = self.run_dir / name
        partial = self.run_dir / f".{name}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        collectives.barrier(self.device)
        partial.mkdir(parents=True, exist_ok=True)
        write(partial)
        collectives.barrier(self.device)  # every rank's shard is on disk before the checkpoint counts
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            self._prune()
        self.report(dict(metrics, checkpoint=str(final)))
        collectives.barrier(self.device)

    def _prune(self) -> None:
        if not self.keep:
            return
        # Checkpoints Ray's checkpoint manager recorded are Ray's to prune: Ray refuses to resume a
        # run whose snapshot names a checkpoint that is gone (a Ray run continued here, then on Ray).
        held = _held_by_ray(self.run_dir)
        for old in _checkpoints(self.run_dir)[: -self.keep]:
            if old.name not in held:
                shutil.rmtree(old, ignore_errors=True)


def _quiet_ray_reports() -> None:
    """Ray Train 2.60 logs every report's whole metrics dict (per-config counts included) at INFO from
    every rank into the job's log; the trainer's own line per log step says what matters."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (`step_*` with its train state) under a run's directory."""
    found = _checkpoints(Path(run_dir))
    return found[-1] if found else None


def _held_by_ray(run_dir: Path) -> set[str]:
    """The `step_*` checkpoint names Ray Train's run snapshot in `run_dir` refers to.

    Read as text, not parsed as Ray's schema (internal to Ray), and bounded in size."""
    snapshot = run_dir / RAY_RUN_SNAPSHOT
    try:
        with snapshot.open("rb") as f:
            text = f.read(_MAX_SNAPSHOT_BYTES + 1)
    except FileNotFoundError:
        return set()
    if len(text) > _MAX_SNAPSHOT_BYTES:
        raise ValueError(f"{snapshot} is over {_MAX_SNAPSHOT_BYTES} bytes; not Ray's run snapshot, or corrupt")
    return set(re.findall(r"step_[0-9]{8}", text.decode("utf-8", errors="replace")))


def _checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("step_*") if (p / COMPLETE_MARKER).is_file())
