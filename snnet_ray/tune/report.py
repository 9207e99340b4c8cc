"""The bridge from a trial's Ray Train run to Ray Tune: periodic evaluations become objective values.

Ray Train V2 runs the workers under a controller; Ray Tune only sees what the trial's driver
function reports. `TuneReportCallback` (ray.tune.integration.ray_train) forwards every report of
the Train run to Tune. `ObjectiveReportCallback` forwards only the reports of periodic evaluations
(those carry `eval_checkpoint`, the results-service checkpoint the workers just evaluated), adding
the sweep objective computed from that checkpoint's per-config table in the results service, so
every result Tune sees has the metric ASHA compares (Tune refuses results without it). The final
value is reported by the trial's driver function itself, after the run has finished.
"""

from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from snnet_ray.tune.objective import OBJECTIVE, family_summary

__all__ = ["ObjectiveReportCallback"]


class ObjectiveReportCallback(TuneReportCallback):
    """Forward a Train run's periodic evaluations to Tune with the sweep objective (build it in the trial)."""

    def __init__(self, run: str, results_url: str, gmacs_range: tuple[float, float], token: str | None = None):
        super().__init__()
        self.run, self.results_url, self.token = run, results_url, token
        self.gmacs_range = tuple(gmacs_range)
        self._results: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the Train controller: a connection does not travel, the URL does.
        return {**self.__dict__, "_results": None}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        reported = dict(metrics[0])
        name = reported.get("eval_checkpoint")
        if not name or reported.get("final"):
            return
        reported.update(self.objective(name))
        if reported.get(OBJECTIVE) is None:
            return
        super().after_report(run_context, [reported], checkpoint)

    def objective(self, checkpoint: str) -> dict[str, Any]:
        """The objective and top-1 summary of one evaluated checkpoint of this run."""
        if self._results is None:
            from snnet_ray.results import connect

            self._results = connect(self.results_url, token=self.token)
        return family_summary(self._results.table(self.run, checkpoint).rows, self.gmacs_range)
