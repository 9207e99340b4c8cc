"""Records and answers of the results service.

SN-Net (Pan et al., CVPR 2023) scores every *config* (an anchor, or a stitch that joins two
anchors at a block position) on the full validation set. Evaluation is split over workers by
validation *shard*; each worker sends one `EvalRecord` of partial counts per
(run, checkpoint, config, shard). That key is the identity of a record: sending it again replaces
it, so a retried shard never counts twice. Exact accuracies are sums of counts over shards.

The same pydantic models are the HTTP payloads, the store's inputs and every query's answer, so a
caller gets the same objects from `LocalResults` and from `ResultsClient`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CheckpointInfo",
    "ComparedConfig",
    "Comparison",
    "ConfigInfo",
    "ConfigResult",
    "EvalRecord",
    "FrontierSummary",
    "LatencyRecord",
    "NetworkRecord",
    "ResultsAuthError",
    "ResultsNotFound",
    "ResultsTable",
    "RunInfo",
    "RunSummary",
    "checkpoint_step",
]

# Names end up in URL paths (/runs/{run}) and file names: no slashes, no control characters.
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,200}$")
_STEP_RE = re.compile(r"(\d+)(?!.*\d)")

Name = Annotated[str, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=0)]


class ResultsNotFound(ValueError):
    """A run, checkpoint or config that the service does not hold (HTTP 404)."""


class ResultsAuthError(ValueError):
    """A write without the service's bearer token (HTTP 401/403)."""


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-200 printable characters without '/' or '\\'"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EvalRecord(_Model):
    """Partial counts of one config on one validation shard of one checkpoint."""

    run: Name
    checkpoint: Name = Field(description='"step-000200", "final", ...')
    config_id: Count
    shard: Name = Field(description="validation shard name, e.g. val-000003.tar")
    samples: Count
    top1_correct: Count
    top5_correct: Count
    loss_sum: float | None = Field(default=None, description="sum of per-sample losses; null if not finite")
    worker: str | None = Field(default=None, max_length=200)
    time: float | None = Field(default=None, description="when the worker measured it (epoch seconds)")

    @field_validator("run", "checkpoint", "shard")
    @classmethod
    def _names(cls, value: str, info: Any) -> str:
        return _check_name(value, info.field_name)

    @field_validator("loss_sum")
    @classmethod
    def _finite_loss(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"loss_sum must be finite (got {value}); send null when the loss diverged")
        return value

    @model_validator(mode="after")
    def _counts_consistent(self) -> EvalRecord:
        if not self.top1_correct <= self.top5_correct <= self.samples:
            raise ValueError(
                f"counts must satisfy top1_correct <= top5_correct <= samples, got "
                f"{self.top1_correct} <= {self.top5_correct} <= {self.samples}"
            )
        return self

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.run, self.checkpoint, self.config_id, self.shard)


class ConfigInfo(_Model):
    """What a config is and what it costs (per run: runs may use different anchor families)."""

    config_id: Count
    name: str = Field(default="", max_length=200, description='e.g. "0-1:3,4" or "deit_small"')
    kind: Literal["anchor", "stitch"] = "stitch"
    anchors: list[int | str] = Field(default_factory=list, description="anchor indices or names it runs")
    gmacs: float | None = Field(default=None, ge=0, description="multiply-adds (G) at the input size")
    params: int | None = Field(default=None, ge=0)


class LatencyRecord(_Model):
    """Measured latency of one config on one device."""

    run: Name
    config_id: Count
    device: Name = Field(description='e.g. "h200-bf16-b128" or "cpu"')
    latency_ms: float = Field(gt=0, allow_inf_nan=False)


class NetworkRecord(_Model):
    """What one training worker measured of the network at start (train/network_check.py).

    Gradient sync is an all-reduce per step: a run whose NCCL fell back to TCP sockets between nodes
    trains several times slower, and this record is where that shows up next to the run.
    """

    run: Name
    worker: Name = Field(description='"rank3"')
    host: str = Field(default="", max_length=200)
    backend: str = Field(max_length=32, description="nccl, gloo, ...")
    nccl_version: str | None = Field(default=None, max_length=32)
    driver: str | None = Field(default=None, max_length=32, description="NVIDIA driver of the node (GPU workers)")
    transport: str = Field(
        max_length=64, description="between nodes: EFA, IB, Socket, ... as NCCL reported it; 'local' on one node"
    )
    transports: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=32, description="every transport NCCL logged (P2P/IPC, SHM, NET/...)"
    )
    world_size: int = Field(ge=1, le=1_000_000)
    nodes: int = Field(ge=1, le=1_000_000)
    message_bytes: int = Field(ge=0, le=1 << 40, description="all-reduce probe size")
    seconds: float = Field(ge=0, le=1e6, allow_inf_nan=False, description="per all-reduce, mean over the probe")
    bus_bw_gbps: float = Field(ge=0, le=1e6, allow_inf_nan=False, description="nccl-tests' bus bandwidth, GB/s")
    warnings: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list, max_length=20)
    time: float | None = Field(default=None, ge=0, le=1e11, allow_inf_nan=False)

    @field_validator("run", "worker")
    @classmethod
    def _names(cls, value: str, info: Any) -> str:
        return _check_name(value, info.field_name)


class RunInfo(_Model):
    """A training run or Tune trial: its experiment config and hyperparameters."""

    run: Name
    experiment: dict[str, Any] | None = None
    trial_id: str | None = Field(default=None, max_length=200)
    hyperparameters: dict[str, Any] | None = None
    status: str | None = Field(default=None, max_length=64, description="running, finished, failed, ...")
    created: float | None = None

    @field_validator("run")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "run")


class CheckpointInfo(_Model):
    checkpoint: str
    configs: int
    shards: int
    updated: float


class RunSummary(_Model):
    """One line of the run list: the run and its latest evaluation."""

    run: str
    status: str | None = None
    trial_id: str | None = None
    created: float | None = None
    hyperparameters: dict[str, Any] | None = None
    experiment: dict[str, Any] | None = None
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    latest: str | None = None
    configs: int = 0
    best_top1: float | None = None


class ConfigResult(_Model):
    """One row of the per-config table: summed counts, exact accuracies and costs."""

    config_id: int
    name: str = ""
    kind: str = "stitch"
    anchors: list[int | str] = Field(default_factory=list)
    gmacs: float | None = None
    params: int | None = None
    samples: int = 0
    shards: int = 0
    top1: float | None = Field(default=None, description="100 * sum top1_correct / sum samples")
    top5: float | None = None
    loss: float | None = Field(default=None, description="mean loss; null unless every shard sent one")
    latency_ms: dict[str, float] = Field(default_factory=dict)
    frontier: bool = Field(default=False, description="on the accuracy-vs-GMACs Pareto frontier")

    @property
    def label(self) -> str:
        return self.name or f"config {self.config_id}"

    def cost(self, by: str = "gmacs", device: str | None = None) -> float | None:
        """GMACs, or latency on `device` (the only device when None and there is one)."""
        if by == "gmacs":
            return self.gmacs
        if device is None:
            if len(self.latency_ms) != 1:
                return None
            return next(iter(self.latency_ms.values()))
        return self.latency_ms.get(device)


class ResultsTable(_Model):
    """The per-config table of one checkpoint of one run."""

    run: str
    checkpoint: str | None
    checkpoints: list[str] = Field(default_factory=list, description="all of the run's, oldest first")
    rows: list[ConfigResult] = Field(default_factory=list)

    def row(self, config_id: int) -> ConfigResult:
        for row in self.rows:
            if row.config_id == config_id:
                return row
        raise ResultsNotFound(f"config {config_id} has no result in run {self.run!r} at {self.checkpoint!r}")

    @property
    def devices(self) -> list[str]:
        return sorted({d for row in self.rows for d in row.latency_ms})


class ComparedConfig(_Model):
    config_id: int
    name: str = ""
    kind: str = "stitch"
    gmacs: float | None = None
    top1_a: float | None = None
    top1_b: float | None = None
    delta: float | None = Field(default=None, description="top1_b - top1_a, in points")


class FrontierSummary(_Model):
    """How good one run's family is as a whole."""

    run: str
    checkpoint: str | None
    configs: int
    min_top1: float | None
    mean_top1: float | None
    max_top1: float | None
    frontier_size: int
    frontier_auc: float | None = Field(
        default=None,
        description="mean over GMACs budgets in the common range of the best top-1 within the budget",
    )


class Comparison(_Model):
    """Run-vs-run: per config, and per run a frontier summary over a common GMACs range."""

    run_a: str
    run_b: str
    gmacs_range: tuple[float, float] | None
    summaries: list[FrontierSummary]
    rows: list[ComparedConfig]


def checkpoint_step(name: str) -> float:
    """Order of a checkpoint name: "final" last, else its last number ("step-000200" -> 200)."""
    if name == "final":
        return math.inf
    match = _STEP_RE.search(name)
    return float(match.group(1)) if match else -1.0
