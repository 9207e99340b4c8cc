"""Launching a training run from the driver: validate, connect the results, fit a TorchTrainer.

    cfg = load_experiment("tiny_digits", ["data.root=/abs/data/digits"])
    outcome = run_experiment(cfg)        # needs Ray: ray.init() or a `ray job submit` driver
    print(outcome.checkpoint, outcome.results_url)

`validate_experiment` catches what would otherwise fail on the workers after the cluster spent
time starting them: anchors, weight files, window size, shards, teacher weights, classes and
input size, ZeRO-3 without a synchronized sampler, batch sizes, and workers the cluster cannot place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snnet_ray.train.config import ExperimentConfig

__all__ = [
    "ExperimentOutcome",
    "build_trainer",
    "fit_recorded",
    "local_weights",
    "run_experiment",
    "validate_experiment",
]

log = logging.getLogger(__name__)


@dataclass
class ExperimentOutcome:
    """Where a finished run's things are."""

    run: str
    checkpoint: str | None
    """The last checkpoint (DeepSpeed state, train state, and the whole SNNet in `model/`)."""
    results_url: str
    table: Any
    """The final per-config table (`snnet_ray.results.ResultsTable`), or None without final evaluation."""

    @property
    def page_url(self) -> str | None:
        return f"{self.results_url}/runs/{self.run}" if self.results_url.startswith("http") else None


def local_weights(pretrained: Any, cache_dir: str | Path | None = None) -> Any:
    """`model.pretrained` with object-store URLs (s3://, gs://, https://) replaced by this node's copy.

    Call it where the weights are read (every worker): each node downloads each file once
    (`snnet_ray.data.node_cache.fetch_to_node`); the driver passes the URLs on untouched."""
    if not isinstance(pretrained, list):
        return pretrained
    from snnet_ray.data.node_cache import fetch_to_node, is_remote

    return [str(fetch_to_node(item, cache_dir)) if is_remote(item) else item for item in pretrained]


def validate_experiment(cfg: ExperimentConfig, check_cluster: bool = True) -> Any:
    """Check everything checkable before workers start; returns the SNNet built on meta (no weights).

    Raises the first problem found (see `preflight.py` for the checks; `preflight()` lists them all)."""
    from snnet_ray.train.preflight import preflight

    return preflight(cfg, check_cluster=check_cluster, raise_first=True).model


def build_trainer(
    cfg: ExperimentConfig,
    *,
    run: str,
    results_url: str | None,
    storage_path: str | None = None,
    callbacks: list | None = None,
):
    """The Ray Train `TorchTrainer` of a run (`run` names its folder under the storage path).

    `callbacks` are Ray Train callbacks (e.g. the Tune bridge of `snnet_ray.tune`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from snnet_ray.train.trainer import train_loop_per_worker

    # Ray Train's dashboard (/api/train/v2/runs) lists runs only with state tracking on; a
    # runtime env or the caller's environment may still turn it off explicitly.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    s = cfg.scaling
    experiment = cfg.to_dict()  # weight URLs stay URLs: each worker's node fetches its own copy
    storage = storage_path or cfg.run.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": experiment, "results_url": results_url, "run": run},
        # NCCL for CUDA tensors and gloo for CPU ones (checkpoint plans, small control messages).
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})},
            placement_strategy=s.placement_strategy,
        ),
        run_config=RunConfig(
            name=run,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
            callbacks=callbacks,
        ),
    )


def run_experiment(cfg: ExperimentConfig, *, run: str | None = None, trial: dict[str, Any] | None = None):
    """Validate, register the run and its configs with the results service, train, and return where
    everything went. Uses the Ray cluster this process is connected to (starts a local one if none)."""
    import ray

    from snnet_ray.eval.distributed import register_configs
    from snnet_ray.results import connect_for_job

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    run = run or cfg.run.name
    model = validate_experiment(cfg)
    results = connect_for_job(cfg.results.url, db_url=cfg.results.db, token=cfg.results.token, port=cfg.results.port)
    experiment = cfg.to_dict()
    results.register_run(
        run,
        experiment=experiment,
        trial_id=(trial or {}).get("trial_id"),
        hyperparameters=(trial or {}).get("hyperparameters"),
        status="running",
    )
    register_configs(results, run, model)
    log.info("run %s: %d configs, results at %s", run, len(model.configs), results.url)
    trainer = build_trainer(cfg, run=run, results_url=results.url)
    _, checkpoint = fit_recorded(trainer, results, run, experiment)
    results.register_run(run, experiment=experiment, status="finished")
    table = results.table(run, "final") if cfg.eval.final else None
    return ExperimentOutcome(run=run, checkpoint=checkpoint, results_url=results.url, table=table)


def fit_recorded(
    trainer: Any,
    results: Any,
    run: str,
    experiment: dict[str, Any],
    *,
    stop_requested: Callable[[], bool] | None = None,
) -> tuple[Any, str | None]:
    """`trainer.fit()`, marking the run failed in the results service if it raises, stopped on SIGTERM.

    Returns (Ray's Result, the last checkpoint's path) and records the checkpoint's SNNet as
    `experiment["model_dir"]`, which `snnet-ray export --run` finds."""
    from snnet_ray.train.status import recorded_status

    # failed, or stopped by `ray job stop` (SIGTERM) or by the caller's scheduler (`stop_requested`)
    with recorded_status(results, run, stop_requested=stop_requested):
        result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    if checkpoint is not None:
        experiment["model_dir"] = f"{checkpoint}/model"
    return result, checkpoint
