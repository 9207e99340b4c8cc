"""One trial of a sweep: the Tune driver function that builds, registers and fits a Train run.

The Ray Train V2 pattern: Tune runs `run_trial` once per trial (a light driver process); it builds
the trial's `ExperimentConfig`, registers the run with its hyperparameters in the results service,
and fits a `TorchTrainer` whose workers do the training elsewhere on the cluster. The Train run is
named `<sweep>-<trial id>` and stored under the sweep's storage path, so a trial that Tune restarts
(its driver died) finds the run's own checkpoints and resumes them. `ObjectiveReportCallback`
forwards the periodic evaluations to Tune (ASHA stops weak trials on them); when the run finishes,
the trial reads its final evaluation from the results service and reports the final objective.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snnet_ray.train.config import ExperimentConfig

__all__ = ["run_trial", "trial_run_name"]


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """The Train run and results-service run of a trial: stable across restarts of the trial."""
    from snnet_ray.names import check_name

    return check_name(f"{sweep_name}-{trial_id}", "trial run name")


def run_trial(
    params: dict[str, Any],
    *,
    sweep: dict[str, Any],
    gmacs_range: tuple[float, float],
    results_url: str,
    token: str | None,
    storage_path: str,
) -> None:
    """Tune trainable (wrap with `tune.with_parameters`): train one point of the search space."""
    from ray import tune

    from snnet_ray.eval.distributed import register_configs
    from snnet_ray.results import connect
    from snnet_ray.train.launch import build_trainer, fit_recorded, validate_experiment
    from snnet_ray.tune.config import load_sweep
    from snnet_ray.tune.objective import family_summary
    from snnet_ray.tune.report import ObjectiveReportCallback
    from snnet_ray.tune.space import trial_experiment

    # Tune starts trials in their own folder; relative paths in the config mean the driver's folder.
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    trial_id = tune.get_context().get_trial_id()
    stop_requested = _tune_stop_requested()
    sweep_cfg = load_sweep(sweep)
    run = trial_run_name(sweep_cfg.name, trial_id)
    cfg = _for_trial(trial_experiment(sweep_cfg, params), run, storage_path, results_url)
    shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    print(f"[snnet-ray] trial {trial_id}: run {run} with {shown}", flush=True)

    model = validate_experiment(cfg, check_cluster=False)
    results = connect(results_url, token=token)
    experiment = cfg.to_dict()
    results.register_run(run, experiment=experiment, trial_id=trial_id, hyperparameters=params, status="running")
    register_configs(results, run, model)

    bridge = ObjectiveReportCallback(run, results_url, gmacs_range, token=token)
    trainer = build_trainer(cfg, run=run, results_url=results_url, callbacks=[bridge])
    result, checkpoint = fit_recorded(trainer, results, run, experiment, stop_requested=stop_requested)
    rows = results.table(run, "final").rows
    summary = family_summary(rows, gmacs_range)
    if summary["objective"] is None:
        raise RuntimeError(f"run {run} finished but its final evaluation recorded no config in {results_url}")
    results.register_run(run, experiment=experiment, status="finished")
    step = (result.metrics or {}).get("step")
    tune.report({"step": step, **summary, "final": True, "run": run, "checkpoint_path": checkpoint})


# -- helpers ------------------------------------------------------------------------------------


def _tune_stop_requested() -> Callable[[], bool]:
    """Whether Tune has asked this trial to stop (ASHA), read when `fit()` raises.

    Tune's stop sets the trial session's stop event and then shuts the session down, which takes
    the Train run's report queue with it: `fit()` raises a teardown error that is no failure of
    the run. The session is captured now because Tune clears the global one while stopping."""
    from ray.train._internal.session import get_session

    session = get_session()
    event = getattr(session, "stop_event", None)
    if event is None:
        return lambda: False
    return event.is_set


def _for_trial(cfg: ExperimentConfig, run: str, storage_path: str, results_url: str) -> ExperimentConfig:
    """The trial's run name, storage and results service; local relative paths made absolute."""
    data = cfg.data
    if "://" not in data.root:
        data = data.replace(root=str(Path(data.root).expanduser().resolve()))
    model = cfg.model
    if isinstance(model.pretrained, list):
        files = [_absolute(p) for p in model.pretrained]
        model = dataclasses.replace(model, pretrained=files)
    return dataclasses.replace(
        cfg,
        data=data,
        model=model,
        run=dataclasses.replace(cfg.run, name=run, storage_path=storage_path),
        results=dataclasses.replace(cfg.results, url=results_url),
    )


def _absolute(item: Any) -> Any:
    if isinstance(item, str) and "://" not in item and not os.path.isabs(item) and os.path.exists(item):
        return str(Path(item).resolve())
    return item


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
