"""The results API over a store in this process: the queries behind the HTTP service.

`LocalResults` answers the same calls, with the same types, as `ResultsClient` does over HTTP:
the service itself uses it, and so can tests, offline tools and single-machine jobs that write
straight into a SQLite file (`connect("sqlite:///results.db")`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snnet_ray.results.compare import compare_tables
from snnet_ray.results.export import export_bytes, format_from_path
from snnet_ray.results.pareto import best_under_budget, pareto_front
from snnet_ray.results.schema import (
    Comparison,
    ConfigInfo,
    ConfigResult,
    EvalRecord,
    LatencyRecord,
    NetworkRecord,
    ResultsTable,
    RunInfo,
    RunSummary,
)
from snnet_ray.results.store import DEFAULT_DB_URL, ResultsStore

__all__ = ["LocalResults"]


class LocalResults:
    """Results calls on a `ResultsStore` (given, or opened from `db_url`)."""

    def __init__(self, db_url: str | os.PathLike[str] | ResultsStore = DEFAULT_DB_URL):
        self._owned = not isinstance(db_url, ResultsStore)
        self.store = db_url if isinstance(db_url, ResultsStore) else ResultsStore(db_url)
        self.url = self.store.url

    def __repr__(self) -> str:
        return f"LocalResults({self.store!r})"

    def __enter__(self) -> LocalResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.store.close()

    # ---- writes ----------------------------------------------------------------------------

    def register_run(
        self,
        run: str,
        *,
        experiment: Mapping[str, Any] | None = None,
        trial_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> None:
        """Create or update a run; fields left None keep their stored value."""
        self.store.register_run(_run_info(run, experiment, trial_id, hyperparameters, status))

    def put_configs(self, run: str, configs: Iterable[ConfigInfo | Mapping[str, Any]]) -> int:
        """Describe configs (name, kind, anchors, GMACs, params)."""
        return self.store.put_configs(run, [ConfigInfo.model_validate(c) for c in configs])

    def ingest(self, records: Iterable[EvalRecord | Mapping[str, Any]]) -> int:
        """Upsert eval records; a key sent again replaces its record."""
        return self.store.ingest([EvalRecord.model_validate(r) for r in records])

    def put_latency(self, run: str, device: str, latency_ms: Mapping[int, float]) -> int:
        """Record measured latency (ms) per config id on one device."""
        return self.store.put_latency(_latency(run, device, latency_ms))

    def put_network(self, records: Iterable[NetworkRecord | Mapping[str, Any]]) -> int:
        """Record what workers measured of the network (transport, bus bandwidth) at start."""
        return self.store.put_network([NetworkRecord.model_validate(r) for r in records])

    # ---- reads -----------------------------------------------------------------------------

    def network(self, run: str) -> list[NetworkRecord]:
        """The run's network checks, one per worker."""
        return self.store.network(run)

    def runs(self) -> list[RunSummary]:
        return self.store.runs()

    def get_run(self, run: str) -> RunSummary:
        return self.store.get_run(run)

    def checkpoints(self, run: str) -> list[str]:
        return self.store.checkpoints(run)

    def done_shards(self, run: str, checkpoint: str) -> dict[str, int]:
        """Per shard, how many configs it has results for (resume: skip complete shards)."""
        return self.store.done_shards(run, checkpoint)

    def records(self, run: str, checkpoint: str | None = None) -> list[EvalRecord]:
        return self.store.records(run, checkpoint)

    def table(self, run: str, checkpoint: str | None = None) -> ResultsTable:
        """Per-config table at `checkpoint` (default: the latest)."""
        return self.store.table(run, checkpoint)

    def pareto(
        self, run: str, checkpoint: str | None = None, by: str = "gmacs", device: str | None = None
    ) -> list[ConfigResult]:
        """The frontier of max top-1 vs min GMACs (or latency on `device`), cheapest first."""
        return pareto_front(self.store.table(run, checkpoint).rows, by, device)

    def best(
        self,
        run: str,
        max_gmacs: float | None = None,
        max_latency_ms: float | None = None,
        device: str | None = None,
        checkpoint: str | None = None,
    ) -> ConfigResult:
        """The most accurate config within the budget(s); ResultsNotFound when none fits."""
        if max_gmacs is None and max_latency_ms is None:
            raise ValueError("give a budget: max_gmacs and/or max_latency_ms")
        return best_under_budget(self.store.table(run, checkpoint).rows, max_gmacs, max_latency_ms, device)

    def compare(
        self, run_a: str, run_b: str, checkpoint_a: str | None = None, checkpoint_b: str | None = None
    ) -> Comparison:
        """Run b against run a: per-config deltas and frontier summaries."""
        return compare_tables(self.store.table(run_a, checkpoint_a), self.store.table(run_b, checkpoint_b))

    def export_bytes(self, run: str, fmt: str = "parquet", checkpoint: str | None = None) -> bytes:
        return export_bytes(self.store.table(run, checkpoint), fmt)

    def export(self, run: str, out: str | os.PathLike[str], checkpoint: str | None = None) -> Path:
        """Write the table to `out` (.parquet or .csv) and return its path."""
        path = Path(out)
        data = self.export_bytes(run, format_from_path(path), checkpoint)
        return _write(path, data)


def _run_info(
    run: str,
    experiment: Mapping[str, Any] | None,
    trial_id: str | None,
    hyperparameters: Mapping[str, Any] | None,
    status: str | None,
) -> RunInfo:
    return RunInfo(
        run=run,
        experiment=jsonable(experiment),
        trial_id=trial_id,
        hyperparameters=jsonable(hyperparameters),
        status=status,
    )


def jsonable(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-safe copy (Tune search spaces and numpy scalars become numbers or strings)."""
    if value is None:
        return None
    return json.loads(json.dumps(dict(value), default=_to_json))


def _to_json(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value) if not isinstance(value, str) else value


def _latency(run: str, device: str, latency_ms: Mapping[int, float]) -> list[LatencyRecord]:
    return [
        LatencyRecord(run=run, config_id=int(c), device=device, latency_ms=ms) for c, ms in latency_ms.items()
    ]


def _write(path: Path, data: bytes) -> Path:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist: create it or pick another --out")
    path.write_bytes(data)
    return path
