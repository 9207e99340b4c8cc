"""Running a sweep from the driver: validate every point, derive concurrency, run Tune, rank the trials.

    sweep = load_sweep("tiny_digits", ["data.root=/abs/data/digits"])
    outcome = run_sweep(sweep)          # needs Ray: ray.init() or a `ray job submit` driver
    print(format_sweep(outcome))

`plan_sweep` does everything that can fail before a trial starts: unknown parameter paths (named),
each validation point's `ExperimentConfig` and SNNet (on the meta device), the data, ASHA's need
for periodic evaluations, the objective's GMACs range (over every anchor set), and how many trials
fit on the cluster at once. `run_sweep` then runs `tune.Tuner(run_trial, ...)` with ASHA on the
objective (time = training step), and marks trials ASHA stopped or that failed in the results service.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snnet_ray.train.config import ExperimentConfig
from snnet_ray.tune.concurrency import Concurrency, derive_max_concurrent_trials
from snnet_ray.tune.config import SweepConfig
from snnet_ray.tune.objective import OBJECTIVE
from snnet_ray.tune.space import check_space, read_base, trial_experiment, validation_points

__all__ = ["SweepOutcome", "SweepPlan", "TrialOutcome", "check_sweep", "plan_sweep", "run_sweep", "total_steps"]

log = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """What the driver worked out before starting any trial."""

    sweep: SweepConfig
    base: ExperimentConfig
    """The experiment of the first validation point (results service, storage)."""
    points_checked: int
    gmacs_range: tuple[float, float]
    """The objective's budget range: smallest to largest anchor GMACs over every anchor set."""
    max_steps: int
    """The longest trial's optimizer steps (ASHA's last rung)."""
    eval_every_steps: int
    """The most frequent periodic evaluation (ASHA's first rung)."""
    concurrency: Concurrency | None = None


@dataclass
class TrialOutcome:
    """One trial as a user reads it: what it tried, how good the family got, how it ended."""

    trial_id: str
    run: str
    hyperparameters: dict[str, Any]
    status: str
    """finished, stopped (by ASHA, at `step`) or failed."""
    objective: float | None = None
    top1_min: float | None = None
    top1_mean: float | None = None
    top1_max: float | None = None
    step: int | None = None
    checkpoint: str | None = None
    error: str | None = None


@dataclass
class SweepOutcome:
    name: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    """The finished trial with the highest objective (any trial when none finished)."""
    results_url: str
    storage_path: str
    """The Tune experiment folder (trial runs under `runs/`)."""
    gmacs_range: tuple[float, float]
    max_concurrent_trials: int
    params: list[str] = field(default_factory=list)


def check_sweep(sweep: SweepConfig) -> list[ExperimentConfig]:
    """The quick checks (no Ray, no model): parameter paths, and each validation point's experiment config."""
    check_space(sweep)
    points = validation_points(sweep)
    cfgs = [trial_experiment(sweep, p) for p in points]
    for point, cfg in zip(points, cfgs):
        _check_for_sweep(sweep, point, cfg)
    return cfgs


def plan_sweep(sweep: SweepConfig, cluster: dict[str, float] | None = None) -> SweepPlan:
    """Validate every point of the space before any trial starts; `cluster`: ray.cluster_resources()."""
    from snnet_ray.train.launch import validate_experiment

    cfgs = check_sweep(sweep)
    anchor_gmacs: list[float] = []
    seen: set[str] = set()
    for cfg in cfgs:
        key = json.dumps([cfg.to_dict()[k] for k in ("model", "data")], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        model = validate_experiment(cfg, check_cluster=cluster is not None)
        anchor_gmacs += [model.cost(c.id).gmacs for c in model.configs if c.is_anchor]
    concurrency = None
    if cluster is not None:
        concurrency = derive_max_concurrent_trials(
            cluster, [c.scaling for c in cfgs], trial_cpus=sweep.trial_cpus, num_trials=sweep.num_trials,
            given=sweep.max_concurrent_trials,
        )  # fmt: skip
    return SweepPlan(
        sweep=sweep,
        base=cfgs[0],
        points_checked=len(cfgs),
        gmacs_range=(min(anchor_gmacs), max(anchor_gmacs)),
        max_steps=max(total_steps(c) for c in cfgs),
        eval_every_steps=min((c.eval.every_steps for c in cfgs if c.eval.every_steps), default=0),
        concurrency=concurrency,
    )


def run_sweep(sweep: SweepConfig, *, resume: bool = False) -> SweepOutcome:
    """Run the sweep on the Ray cluster this process is connected to (starts a local one if none)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from snnet_ray.results import connect_for_job
    from snnet_ray.tune.space import param_space
    from snnet_ray.tune.trial import run_trial

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    plan = plan_sweep(sweep, cluster=ray.cluster_resources())
    assert plan.concurrency is not None
    base = plan.base
    results = connect_for_job(base.results.url, db_url=base.results.db, token=base.results.token)
    storage = _local_or_uri(sweep.storage_path or base.run.storage_path)
    experiment_path = f"{storage.rstrip('/')}/{sweep.name}"
    log.info(
        "sweep %s: %d trials (%d points validated), objective over %.4g-%.4g GMACs, %s",
        sweep.name, sweep.num_trials, plan.points_checked, *plan.gmacs_range, plan.concurrency.reason,
    )  # fmt: skip
    print(f"[snnet-ray] sweep {sweep.name}: {plan.concurrency.reason}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            # The base experiment travels as data: trials on other nodes need not find its file.
            sweep={**sweep.to_dict(), "base": read_base(sweep), "source_dir": None},
            gmacs_range=plan.gmacs_range,
            results_url=results.url,
            token=base.results.token,
            storage_path=f"{experiment_path}/runs",
        ),
        {"CPU": sweep.trial_cpus, "memory": sweep.trial_memory_mb * 2**20},
    )
    space = param_space(sweep)
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable, param_space=space, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE,
                mode="max",
                num_samples=sweep.num_samples,
                scheduler=_scheduler(sweep, plan, ASHAScheduler, FIFOScheduler),
                search_alg=BasicVariantGenerator(
                    max_concurrent=plan.concurrency.max_concurrent_trials, random_state=sweep.search_seed
                ),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    trials = [_trial_outcome(sweep.name, r) for r in grid]
    _record_statuses(results, trials)
    return SweepOutcome(
        name=sweep.name,
        trials=trials,
        best=_best(trials),
        results_url=results.url,
        storage_path=experiment_path,
        gmacs_range=plan.gmacs_range,
        max_concurrent_trials=plan.concurrency.max_concurrent_trials,
        params=list(sweep.space),
    )


def total_steps(cfg: ExperimentConfig) -> int:
    """Optimizer steps of a run, as its trainer computes them (from the shards' `_info.json`)."""
    from snnet_ray.data import read_info
    from snnet_ray.data.pipeline import steps_per_epoch

    split = read_info(cfg.data.root).split(cfg.data.train_split)
    workers = cfg.scaling.num_workers
    per_epoch = steps_per_epoch(cfg.data.samples_per_epoch or split.num_samples, cfg.data.batch_size, workers)
    per_epoch = max(1, per_epoch // cfg.deepspeed.accumulation_steps(workers))
    total = math.ceil(cfg.schedule.epochs * per_epoch)
    return min(total, cfg.schedule.max_steps or total)


# -- helpers ------------------------------------------------------------------------------------


def _check_for_sweep(sweep: SweepConfig, point: dict[str, Any], cfg: ExperimentConfig) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in point.items()) or "the base experiment"
    if not cfg.eval.final:
        raise ValueError(f"sweep point ({shown}): the objective needs the final evaluation; set eval.final=true")
    if sweep.scheduler.name == "asha" and not cfg.eval.every_steps:
        raise ValueError(
            f"sweep point ({shown}): ASHA stops trials on periodic evaluations but eval.every_steps=0; "
            "set eval.every_steps (e.g. --set eval.every_steps=500) or --set scheduler.name=fifo"
        )


def _scheduler(sweep: SweepConfig, plan: SweepPlan, asha: type, fifo: type) -> Any:
    s = sweep.scheduler
    if s.name == "fifo":
        return fifo()
    max_t = s.max_t or plan.max_steps
    grace = min(s.grace_period or plan.eval_every_steps, max_t)
    return asha(time_attr="step", max_t=max_t, grace_period=grace, reduction_factor=s.reduction_factor)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _local_or_uri(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _trial_outcome(sweep_name: str, result: Any) -> TrialOutcome:
    from snnet_ray.tune.trial import trial_run_name

    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    if result.error is not None:
        status = "failed"
    elif metrics.get("final"):
        status = "finished"
    else:
        status = "stopped"
    step = metrics.get("step")
    return TrialOutcome(
        trial_id=trial_id,
        run=metrics.get("run") or trial_run_name(sweep_name, trial_id),
        hyperparameters=dict(result.config or {}),
        status=status,
        objective=metrics.get(OBJECTIVE),
        top1_min=metrics.get("top1_min"),
        top1_mean=metrics.get("top1_mean"),
        top1_max=metrics.get("top1_max"),
        step=int(step) if step is not None else None,
        checkpoint=metrics.get("checkpoint_path"),
        error=_first_line(result.error) if result.error is not None else None,
    )


def _record_statuses(results: Any, trials: list[TrialOutcome]) -> None:
    """Trials ASHA stopped (or whose driver died) never said so themselves."""
    known = {r.run for r in results.runs()}
    for t in trials:
        if t.status != "finished" and t.run in known:
            results.register_run(t.run, status=t.status)


def _best(trials: list[TrialOutcome]) -> TrialOutcome | None:
    scored = [t for t in trials if t.objective is not None]
    finished = [t for t in scored if t.status == "finished"]
    return max(finished or scored, key=lambda t: t.objective, default=None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
