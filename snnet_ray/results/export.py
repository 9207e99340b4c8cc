"""Export of a run's per-config table as Parquet or CSV (pyarrow).

One row per config: identity (run, checkpoint, config_id, name, kind, anchors), costs (gmacs,
params, one `latency_ms_<device>` column per measured device), summed counts (samples, shards) and
exact accuracies (top1, top5 in %, mean loss), and whether the config is on the GMACs frontier.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from snnet_ray.results.schema import ResultsTable

__all__ = ["EXPORT_FORMATS", "export_bytes", "format_from_path", "to_arrow"]

EXPORT_FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


def to_arrow(table: ResultsTable) -> pa.Table:
    """The table as an Arrow table with typed columns."""
    devices = table.devices
    rows = table.rows
    columns: dict[str, pa.Array] = {
        "run": pa.array([table.run] * len(rows), pa.string()),
        "checkpoint": pa.array([table.checkpoint] * len(rows), pa.string()),
        "config_id": pa.array([r.config_id for r in rows], pa.int32()),
        "name": pa.array([r.name for r in rows], pa.string()),
        "kind": pa.array([r.kind for r in rows], pa.string()),
        "anchors": pa.array([",".join(str(a) for a in r.anchors) for r in rows], pa.string()),
        "gmacs": pa.array([r.gmacs for r in rows], pa.float64()),
        "params": pa.array([r.params for r in rows], pa.int64()),
        "samples": pa.array([r.samples for r in rows], pa.int64()),
        "shards": pa.array([r.shards for r in rows], pa.int32()),
        "top1": pa.array([r.top1 for r in rows], pa.float64()),
        "top5": pa.array([r.top5 for r in rows], pa.float64()),
        "loss": pa.array([r.loss for r in rows], pa.float64()),
        "frontier": pa.array([r.frontier for r in rows], pa.bool_()),
    }
    for device in devices:
        columns[f"latency_ms_{device}"] = pa.array([r.latency_ms.get(device) for r in rows], pa.float64())
    return pa.table(columns)


def export_bytes(table: ResultsTable, fmt: str) -> bytes:
    """Parquet or CSV bytes of the table."""
    fmt = _check_format(fmt)
    arrow = to_arrow(table)
    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(arrow, sink)
    else:
        pa_csv.write_csv(arrow, sink)
    return sink.getvalue()


def format_from_path(path: str | os.PathLike[str]) -> str:
    """"parquet" or "csv" from a file name's suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix == "pq":
        suffix = "parquet"
    return _check_format(suffix, f"the file name {os.fspath(path)!r}")


def _check_format(fmt: str, where: str = "format") -> str:
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"cannot export to {where}: use .parquet or .csv")
    return fmt
