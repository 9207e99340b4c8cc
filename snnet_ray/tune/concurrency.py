"""How many trials run at once: as many Train runs as the cluster can place side by side.

A Ray Train run starts only when it can place all its workers at once, so trials beyond what the
cluster holds would only wait (and log that they wait). The limiting resource is GPUs when the
trials train on GPUs, CPUs otherwise; each trial needs its workers' share plus its driver's CPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from snnet_ray.train.config import ScalingConfig

__all__ = ["Concurrency", "derive_max_concurrent_trials"]


@dataclass
class Concurrency:
    max_concurrent_trials: int
    reason: str
    """One line for the log: what was derived from what."""


def derive_max_concurrent_trials(
    cluster: Mapping[str, float],
    scalings: Iterable[ScalingConfig],
    *,
    trial_cpus: float = 0.0,
    num_trials: int | None = None,
    given: int | None = None,
) -> Concurrency:
    """Trials that fit side by side on `cluster` (ray.cluster_resources()), for the largest trial."""
    scalings = list(scalings)
    if not scalings:
        raise ValueError("no trial to schedule")
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if given is not None:
        return Concurrency(given, f"max_concurrent_trials={given} (given in the sweep config)")
    gpu_workers = max((s.num_workers for s in scalings if s.use_gpu), default=0)
    cpu_need = max(s.num_workers * s.cpus_per_worker for s in scalings) + trial_cpus
    largest = max(scalings, key=lambda s: (s.use_gpu * s.num_workers, s.num_workers * s.cpus_per_worker))
    driver = f" + {trial_cpus:g} CPU for its driver" if trial_cpus else ""
    if gpu_workers:
        fit = int(gpus // gpu_workers)
        reason = (
            f"the cluster has {gpus:g} GPUs and each trial takes {_workers(gpu_workers)} with a GPU "
            f"(scaling.num_workers={largest.num_workers}, use_gpu)"
        )
    else:
        fit = int(cpus // cpu_need) if cpu_need > 0 else 1
        reason = (
            f"the cluster has {cpus:g} CPUs and no GPU in use; each trial takes {_workers(largest.num_workers)} x "
            f"{largest.cpus_per_worker:g} CPU{driver}"
        )
    n = max(fit, 1)
    if num_trials is not None:
        n = min(n, max(num_trials, 1))
    if fit < 1:
        reason += "; not one trial fits now, so 1 (an autoscaling cluster adds nodes; else lower scaling.num_workers)"
    return Concurrency(n, f"max_concurrent_trials={n}: {reason}")


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"
