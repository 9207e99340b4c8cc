"""Launching a training run from the driver: validate, connect the results, fit a TorchTrainer.

    cfg = load_experiment("tiny_digits", ["data.root=/abs/data/digits"])
    outcome = run_experiment(cfg)        # needs Ray: ray.init() or a `ray job submit` driver
    print(outcome.checkpoint, outcome.results_url)

`validate_experiment` catches what would otherwise fail on the workers after the cluster spent
time starting them: anchors, weight files, window size, shards, teacher weights, classes and
input size, ZeRO-3 without a synchronized sampler, batch sizes, and workers the cluster cannot place.
"""

from __future__ import annotations

import hashlib
import logging
import os
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


def local_weights(pretrained: Any, cache_dir: str | Path = "~/.cache/snnet-ray/weights") -> Any:
    """`model.pretrained` with object-store URLs (s3://, gs://, https://) downloaded to a local cache."""
    if not isinstance(pretrained, list):
        return pretrained
    from snnet_ray.data.storage import open_url

    out = []
    for item in pretrained:
        if isinstance(item, str) and "://" in item and not item.startswith("file://"):
            target = Path(cache_dir).expanduser() / hashlib.sha256(item.encode()).hexdigest()[:16] / Path(item).name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".part")
                with open_url(item) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
                tmp.rename(target)
            item = str(target)
        out.append(item)
    return out


def validate_experiment(cfg: ExperimentConfig, check_cluster: bool = True) -> Any:
    """Check everything checkable before workers start; returns the SNNet built on meta (no weights)."""
    from snnet_ray.data import read_info
    from snnet_ray.data.storage import url_exists
    from snnet_ray.stitching import SNNet

    m = cfg.model
    model = SNNet.from_timm(
        m.anchors, kernel_size=m.kernel_size, stride=m.stride, nearest=m.nearest,
        rule=m.rule, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
        pretrained=_check_weights(m.pretrained), device="meta", **m.timm_kwargs,
    )  # fmt: skip
    try:
        info = read_info(cfg.data.root)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"data.root={cfg.data.root}: {err}; write shards with `snnet-ray shards` and point data.root at them"
        ) from None
    for split in (cfg.data.train_split, cfg.data.val_split):
        try:
            urls = info.urls(split)
        except (KeyError, ValueError):
            raise ValueError(f"data.root={cfg.data.root} has no '{split}' split in its _info.json") from None
        if not urls:
            raise ValueError(f"split '{split}' of data.root={cfg.data.root} lists no shards")
        missing = [u for u in urls if not url_exists(u)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {split} shards are missing, e.g. {missing[0]}; rewrite the shards")
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"the shards hold {info.num_classes} classes but the model has {model.num_classes}; "
            f"set model.timm_kwargs.num_classes={info.num_classes}"
        )
    if cfg.data.input_size != model.input_size[-1]:
        raise ValueError(
            f"data.input_size={cfg.data.input_size} but the anchors take {model.input_size[-1]} px; "
            "make them agree (model.timm_kwargs.img_size or data.input_size)"
        )
    cfg.loss.check_files()
    if check_cluster:
        _check_cluster(cfg)
    return model


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

    s = cfg.scaling
    experiment = cfg.to_dict()
    experiment["model"]["pretrained"] = local_weights(cfg.model.pretrained)
    storage = storage_path or cfg.run.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": experiment, "results_url": results_url, "run": run},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
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


def fit_recorded(trainer: Any, results: Any, run: str, experiment: dict[str, Any]) -> tuple[Any, str | None]:
    """`trainer.fit()`, marking the run failed in the results service if it raises.

    Returns (Ray's Result, the last checkpoint's path) and records the checkpoint's SNNet as
    `experiment["model_dir"]`, which `snnet-ray export --run` finds."""
    try:
        result = trainer.fit()
    except Exception:
        results.register_run(run, status="failed")
        raise
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    if checkpoint is not None:
        experiment["model_dir"] = f"{checkpoint}/model"
    return result, checkpoint


def _check_weights(pretrained: Any) -> Any:
    """Local weight files are checked by `from_timm`; remote ones are only checked for a scheme."""
    if isinstance(pretrained, list):
        return [False if isinstance(p, str) and "://" in p and not p.startswith("file://") else p for p in pretrained]
    return pretrained


def _check_cluster(cfg: ExperimentConfig) -> None:
    import ray

    s = cfg.scaling
    if not ray.is_initialized() or not s.check_resources:
        return
    available = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    if available.get("CPU", 0) < need_cpu:
        raise ValueError(
            f"scaling.num_workers={s.num_workers} x scaling.cpus_per_worker={s.cpus_per_worker} needs {need_cpu:g} "
            f"CPUs but the cluster has {available.get('CPU', 0):g}; lower scaling.num_workers or cpus_per_worker"
        )
    if s.use_gpu and available.get("GPU", 0) < s.num_workers:
        raise ValueError(
            f"scaling.num_workers={s.num_workers} with scaling.use_gpu=true needs {s.num_workers} GPUs but the "
            f"cluster has {available.get('GPU', 0):g}; lower scaling.num_workers or add GPU nodes"
        )
