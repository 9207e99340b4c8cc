"""Ray Tune sweeps of SN-Net training: search spaces, the family objective, a driver function per trial.

`load_sweep` reads a sweep config (base experiment, search space, anchor sets, ASHA), `plan_sweep`
validates every point before a trial starts, `run_sweep` runs `tune.Tuner(run_trial, ...)` where each
trial fits its own Ray Train run, and `frontier_objective` is the number trials are ranked by: the
normalised area under the accuracy-vs-GMACs Pareto frontier. Names are imported on first use.
"""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "Concurrency": ".concurrency",
        "derive_max_concurrent_trials": ".concurrency",
        "ANCHOR_SET": ".config",
        "AnchorSet": ".config",
        "ParamSpec": ".config",
        "SchedulerConfig": ".config",
        "SweepConfig": ".config",
        "list_sweep_presets": ".config",
        "load_sweep": ".config",
        "OBJECTIVE": ".objective",
        "family_summary": ".objective",
        "frontier_objective": ".objective",
        "ObjectiveReportCallback": ".report",
        "check_space": ".space",
        "param_space": ".space",
        "trial_experiment": ".space",
        "validation_points": ".space",
        "SweepOutcome": ".sweep",
        "SweepPlan": ".sweep",
        "TrialOutcome": ".sweep",
        "check_sweep": ".sweep",
        "plan_sweep": ".sweep",
        "run_sweep": ".sweep",
        "total_steps": ".sweep",
        "format_sweep": ".text",
        "run_trial": ".trial",
        "trial_run_name": ".trial",
    },
)
