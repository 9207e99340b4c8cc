"""Per-device latency table of the served frontier: ms per (config, batch size), measured on the replica.

A replica measures every frontier config at a few batch sizes on its own device when it starts
(median of a few timed forwards, as `snnet-ray eval --latency` does), predicts the batch sizes in
between by linear interpolation (beyond the largest, linearly in images), and corrects the
predictions online: a running ratio of observed to predicted service time per config soaks up what
the start-up measurement could not see (a shared CPU, other replicas, thermal limits).

    table = measure_latency_table(model, [0, 7, 12], batch_sizes=(1, 2, 4, 8, 16))
    table.predict(7, 5)                  # ms for 5 images with config 7
    table.observe(7, 5, 3.1)             # after the batch ran
    store_latency_table(results, "my-run", table)   # devices "cpu-b1", "cpu-b2", ... like eval --latency
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_BATCH_SIZES", "LatencyTable", "device_name", "measure_latency_table", "store_latency_table"]

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
# How fast the observed/predicted ratio follows new batches, and how far it may drift: a replica
# that is 4x slower than measured should be re-measured (restarted), not extrapolated.
_EWMA = 0.2
_RATIO_BOUNDS = (0.5, 4.0)


class LatencyTable:
    """Measured service time in ms per config and batch size on one device, with online correction."""

    def __init__(self, device: str, ms: Mapping[int, Mapping[int, float]]):
        if not ms:
            raise ValueError("a latency table needs at least one config")
        self.device = device
        self._ms: dict[int, list[tuple[int, float]]] = {}
        for cfg_id, by_batch in ms.items():
            points = sorted((int(b), float(t)) for b, t in by_batch.items())
            if not points or any(b < 1 or not (math.isfinite(t) and t > 0) for b, t in points):
                raise ValueError(f"config {cfg_id}: latencies must be > 0 ms at batch sizes >= 1, got {points}")
            self._ms[int(cfg_id)] = points
        self._ratio: dict[int, float] = {c: 1.0 for c in self._ms}

    @property
    def config_ids(self) -> list[int]:
        return sorted(self._ms)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({b for points in self._ms.values() for b, _ in points})

    def measured(self, cfg_id: int, batch: int) -> float | None:
        """The start-up measurement at exactly `batch`, if there is one."""
        return dict(self._ms[cfg_id]).get(batch)

    def __contains__(self, cfg_id: object) -> bool:
        """Whether `cfg_id` was measured (only measured configs can be predicted)."""
        return cfg_id in self._ms

    def predict(self, cfg_id: int, batch: int) -> float:
        """Expected ms to run `batch` images with config `cfg_id` (measured, interpolated, corrected)."""
        return self._base(cfg_id, batch) * self._ratio[cfg_id]

    def observe(self, cfg_id: int, batch: int, ms: float) -> None:
        """Fold one observed service time into the config's correction ratio."""
        if cfg_id not in self._ms or not (math.isfinite(ms) and ms > 0) or batch < 1:
            return
        ratio = (1 - _EWMA) * self._ratio[cfg_id] + _EWMA * ms / self._base(cfg_id, batch)
        self._ratio[cfg_id] = min(max(ratio, _RATIO_BOUNDS[0]), _RATIO_BOUNDS[1])

    def ratio(self, cfg_id: int) -> float:
        return self._ratio[cfg_id]

    def to_dict(self) -> dict[str, Any]:
        """JSON view: device, and per config the measured ms per batch size and the live ratio."""
        return {
            "device": self.device,
            "configs": {
                str(c): {"ms": {str(b): round(t, 4) for b, t in pts}, "ratio": round(self._ratio[c], 4)}
                for c, pts in sorted(self._ms.items())
            },
        }

    def _base(self, cfg_id: int, batch: int) -> float:
        points = self._ms[cfg_id]
        sizes = [b for b, _ in points]
        batch = max(int(batch), 1)
        i = bisect.bisect_left(sizes, batch)
        if i < len(points) and sizes[i] == batch:
            return points[i][1]
        if i == 0:  # below the smallest measured batch: no cheaper than it
            return points[0][1]
        if i == len(points):  # beyond the largest: extend the last segment's slope (per image at least)
            (b0, t0), (b1, t1) = points[-2] if len(points) > 1 else (0, 0.0), points[-1]
            slope = max((t1 - t0) / (b1 - b0), t1 / b1 / 2)
            return t1 + slope * (batch - b1)
        (b0, t0), (b1, t1) = points[i - 1], points[i]
        return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)


def measure_latency_table(
    model: Any,
    config_ids: Iterable[int],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    iters: int = 5,
) -> LatencyTable:
    """Time every config at every batch size on the model's own device (median of `iters`)."""
    from snnet_ray.stitching.cost import measure_latency

    ids = list(config_ids)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    ms: dict[int, dict[int, float]] = {c: {} for c in ids}
    for b in sorted({int(b) for b in batch_sizes}):
        for c, t in measure_latency(model, ids, batch_size=b, warmup=warmup, iters=iters).items():
            # A timer's resolution can round a tiny forward to 0: keep it positive.
            ms[c][b] = max(t, 1e-3)
    return LatencyTable(device_name(next(model.parameters()).device), ms)


def store_latency_table(results: Any, run: str, table: LatencyTable) -> int:
    """Record the table in the results service, one device name per batch size ("cpu-b8"), the
    naming `snnet-ray eval --latency` uses, so `select --max-latency-ms T --device cpu-b8` finds it."""
    stored = 0
    for b in table.batch_sizes:
        row = {c: table.measured(c, b) for c in table.config_ids}
        stored += results.put_latency(run, f"{table.device}-b{b}", {c: t for c, t in row.items() if t is not None})
    return stored


def device_name(device: Any) -> str:
    """'cpu', or the GPU's name in lower case with dashes (the names eval --latency records)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).lower().replace(" ", "-")
    return device.type
