"""The results service of snnet-ray: every SN-Net config's exact accuracy, cost and frontier.

Evaluation workers send partial counts per (run, checkpoint, config, shard) (`EvalRecord`); the
store sums them into exact top-1/top-5 per config and keeps GMACs, params and latency per
config, and each run's experiment config, Tune trial and hyperparameters. Queries: the per-config
table, the Pareto frontier, the best config under a GMACs or latency budget, run-vs-run
comparison, Parquet/CSV export, and an HTML page per run with the accuracy-vs-GMACs chart.

    results = connect()                     # $SNNET_RESULTS_URL, or the Ray Serve app, or a URL
    results.ingest(records)                 # idempotent: a key sent again replaces its record
    results.best("deit-snnet", max_gmacs=5.0)

`ensure_results_service`, `find_results_service` and `shutdown_results_service` (Ray Serve) and
the web app (`create_app`, FastAPI) are imported on first use, so a training worker that writes
evaluations to a database needs neither Ray nor FastAPI (the GPU check runs without both).
"""

from __future__ import annotations

from typing import Any

from snnet_ray.results.client import ENV_TOKEN, ENV_URL, ResultsClient, connect
from snnet_ray.results.compare import compare_tables
from snnet_ray.results.local import LocalResults
from snnet_ray.results.pareto import best_under_budget, frontier_auc, pareto_front
from snnet_ray.results.schema import (
    Comparison,
    ConfigInfo,
    ConfigResult,
    EvalRecord,
    FrontierSummary,
    LatencyRecord,
    NetworkRecord,
    ResultsAuthError,
    ResultsNotFound,
    ResultsTable,
    RunInfo,
    RunSummary,
)
from snnet_ray.results.store import DEFAULT_DB_URL, ResultsStore

__all__ = [
    "DEFAULT_DB_URL",
    "ENV_TOKEN",
    "ENV_URL",
    "SERVICE_NAME",
    "Comparison",
    "ConfigInfo",
    "ConfigResult",
    "EvalRecord",
    "FrontierSummary",
    "LatencyRecord",
    "LocalResults",
    "NetworkRecord",
    "ResultsAuthError",
    "ResultsClient",
    "ResultsNotFound",
    "ResultsStore",
    "ResultsTable",
    "RunInfo",
    "RunSummary",
    "best_under_budget",
    "compare_tables",
    "connect",
    "connect_for_job",
    "create_app",
    "ensure_results_service",
    "find_results_service",
    "frontier_auc",
    "pareto_front",
    "plot_pareto",
    "shutdown_results_service",
]

_LAZY = {
    "SERVICE_NAME": "snnet_ray.results.app",
    "create_app": "snnet_ray.results.app",
    "connect_for_job": "snnet_ray.results.serve",
    "ensure_results_service": "snnet_ray.results.serve",
    "find_results_service": "snnet_ray.results.serve",
    "shutdown_results_service": "snnet_ray.results.serve",
    "plot_pareto": "snnet_ray.results.plot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'snnet_ray.results' has no attribute {name!r}")
