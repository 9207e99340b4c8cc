"""Distributed evaluation of a saved SN-Net: Ray tasks split the validation shards exactly.

The driver asks the results service which shards of (run, checkpoint) are already recorded for
every requested config, and hands only the rest to `num_workers` Ray tasks (one GPU each when
`use_gpu`). Task r evaluates shards r, r+W, ... of that list with the one-pass evaluator and
ingests each shard's records as soon as the shard is complete, so a crash loses at most the
shards in flight; a retried task (or a rerun) skips what is recorded, and a shard recorded
twice replaces itself (the service's key is (run, checkpoint, config, shard)).
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalRequest", "evaluate_distributed", "measure_latency_on_worker", "pending_shards", "register_configs"]

log = logging.getLogger(__name__)


@dataclass
class EvalRequest:
    """What to evaluate, where the data is, and where the counts go."""

    model_dir: str
    """A saved SN-Net (`snnet.json` + `model.safetensors`), e.g. a training checkpoint's `model/`."""
    data_root: str
    """Validation shards root (holds `_info.json`): local path or URL."""
    run: str
    checkpoint: str = "final"
    results: str | None = None
    """Results service URL or database URL; None: $SNNET_RESULTS_URL or the Ray Serve app."""
    config_ids: list[int] | None = None
    """Configs to evaluate; None: all."""
    max_shards: int | None = None
    """Evaluate only the first N validation shards (a quick periodic check); None: all."""
    num_workers: int = 2
    use_gpu: bool = False
    batch_size: int = 128
    loader_workers: int = 2
    cpus_per_worker: float = 1.0
    data_overrides: dict[str, Any] = field(default_factory=dict)


def register_configs(results: Any, run: str, model: Any) -> None:
    """Send a run's per-config metadata (name, kind, anchors, GMACs, params) to the results service."""
    from snnet_ray.results import ConfigInfo

    results.put_configs(
        run,
        [
            ConfigInfo(
                config_id=c.id,
                name=c.name,
                kind=c.kind,
                anchors=[model.anchor_names[a] for a in c.anchors],
                gmacs=model.cost(c.id).gmacs,
                params=model.cost(c.id).params,
            )
            for c in model.configs
        ],
    )


def pending_shards(results: Any, run: str, checkpoint: str, shards: list[str], num_configs: int) -> list[str]:
    """Shards not yet recorded for every requested config, in `shards` order."""
    done = results.done_shards(run, checkpoint)
    return [s for s in shards if done.get(s, 0) < num_configs]


def evaluate_distributed(request: EvalRequest, progress: bool = True) -> Any:
    """Evaluate every requested config of a saved SN-Net on the validation split; returns the table.

    Uses the Ray cluster this process is connected to (`ray.init()` first).
    """
    import ray

    from snnet_ray.data import read_info
    from snnet_ray.results import connect
    from snnet_ray.stitching.saving import load_snnet

    if not ray.is_initialized():
        raise ValueError("evaluate_distributed needs a Ray cluster: call ray.init() (or ray.init(address='auto'))")
    model = load_snnet(request.model_dir, device="meta")
    config_ids = request.config_ids if request.config_ids is not None else [c.id for c in model.configs]
    bad = [i for i in config_ids if not 0 <= i < len(model.configs)]
    if bad:
        raise ValueError(f"config ids {bad} do not exist; this SN-Net has configs 0..{len(model.configs) - 1}")
    split = read_info(request.data_root).split("val")
    shards = list(split.filenames)[: request.max_shards]
    if not shards:
        raise ValueError(f"no validation shards under {request.data_root}; write them with `snnet-ray shards`")

    results = connect(request.results)
    try:
        results.get_run(request.run)
    except ValueError:
        results.register_run(request.run, experiment={"model_dir": request.model_dir, "data": request.data_root})
    register_configs(results, request.run, model)
    todo = pending_shards(results, request.run, request.checkpoint, shards, len(config_ids))
    log.info(
        "evaluating %d configs of %s on %d of %d validation shards (%d already recorded) with %d workers",
        len(config_ids),
        request.run,
        len(todo),
        len(shards),
        len(shards) - len(todo),
        request.num_workers,
    )
    if todo:
        workers = max(1, min(request.num_workers, len(todo)))
        task = _evaluate_part.options(
            num_cpus=request.cpus_per_worker,
            num_gpus=1 if request.use_gpu else 0,
            max_retries=2,
        )
        refs = [task.remote(request, config_ids, todo, rank, workers) for rank in range(workers)]
        _wait_with_progress(ray, refs, results, request, shards, len(config_ids), progress)
    return results.table(request.run, request.checkpoint)


def _wait_with_progress(ray: Any, refs: list, results: Any, request: EvalRequest, shards, n_configs, progress):
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(shards), desc=f"eval {request.run}/{request.checkpoint}", unit="shard")
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, timeout=2.0)
        ray.get(ready)  # re-raises a task's error
        if bar is not None:
            bar.n = len(shards) - len(pending_shards(results, request.run, request.checkpoint, shards, n_configs))
            bar.refresh()
    if bar is not None:
        bar.close()


def _remote(fn):
    import ray

    return ray.remote(fn)


def _evaluate_part_impl(request: EvalRequest, config_ids: list[int], todo: list[str], rank: int, world: int) -> int:
    """One Ray task: evaluate shards rank, rank+world, ... of `todo`; returns samples counted."""
    import torch

    from snnet_ray.data import DataConfig, build_val_loader
    from snnet_ray.eval.evaluator import evaluate_shards, to_records
    from snnet_ray.precision import PrecisionPolicy
    from snnet_ray.results import connect
    from snnet_ray.stitching.saving import load_snnet

    if request.use_gpu:  # a GPU task on a node whose driver cannot run torch's CUDA fails here, with the fix
        from snnet_ray.cuda_check import check_cuda

        check_cuda()
    device = torch.device("cuda" if request.use_gpu and torch.cuda.is_available() else "cpu")
    results = connect(request.results)
    # A retried task skips what an earlier attempt already recorded.
    mine = pending_shards(results, request.run, request.checkpoint, todo[rank::world], len(config_ids))
    if not mine:
        return 0
    model = load_snnet(request.model_dir, device=device).eval()
    data_cfg = DataConfig.from_timm(
        request.data_root,
        model.data_config,
        val_batch_size=request.batch_size,
        num_workers=request.loader_workers,
        **request.data_overrides,
    )
    loader = build_val_loader(data_cfg, rank=0, world_size=1, shards=mine)
    worker = f"{socket.gethostname()}:{rank}"
    precision = PrecisionPolicy.for_device(device)  # what training runs: bf16 weights on GPUs
    samples = 0
    for shard in evaluate_shards(model, loader, config_ids=config_ids, device=device, precision=precision):
        results.ingest(to_records(request.run, request.checkpoint, shard, worker=worker))
        samples += shard.samples
    return samples


def measure_latency_on_worker(request: EvalRequest, batch_size: int = 64) -> tuple[str, dict[int, float]]:
    """Measure every requested config's forward latency on one Ray worker (a GPU with
    `use_gpu`) and record it in the results service; returns (device name, ms per config)."""
    import ray

    task = _measure_latency.options(num_cpus=request.cpus_per_worker, num_gpus=1 if request.use_gpu else 0)
    device, latency = ray.get(task.remote(request, batch_size))
    from snnet_ray.results import connect

    connect(request.results).put_latency(request.run, device, latency)
    return device, latency


def _measure_latency_impl(request: EvalRequest, batch_size: int) -> tuple[str, dict[int, float]]:
    import torch

    from snnet_ray.stitching import measure_latency
    from snnet_ray.stitching.saving import load_snnet

    if request.use_gpu:
        from snnet_ray.cuda_check import check_cuda

        check_cuda()
    on_gpu = request.use_gpu and torch.cuda.is_available()
    model = load_snnet(request.model_dir, device="cuda" if on_gpu else "cpu").eval()
    ids = request.config_ids if request.config_ids is not None else [c.id for c in model.configs]
    # A device name follows snnet_ray.names: "NVIDIA GeForce RTX 4090 (24GB)" -> "nvidia-geforce-rtx-4090-24gb".
    name = re.sub(r"[^a-z0-9_.]+", "-", torch.cuda.get_device_name().lower()).strip("-") if on_gpu else "cpu"
    # The batch is part of the device name: latency at batch 1 and at batch 128 answer different questions.
    return f"{name}-b{batch_size}", measure_latency(model, ids, batch_size=batch_size)


class _LazyRemote:
    """`ray.remote` applied on first use, so importing this module does not import Ray."""

    def __init__(self, fn):
        self._fn, self._remote = fn, None

    def options(self, **kwargs):
        if self._remote is None:
            self._remote = _remote(self._fn)
        return self._remote.options(**kwargs)


_evaluate_part = _LazyRemote(_evaluate_part_impl)
_measure_latency = _LazyRemote(_measure_latency_impl)
