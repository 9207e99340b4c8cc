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

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from snnet_ray.names import MAX_LABEL, MAX_NAME, NAME_PATTERN, check_label, check_name
from snnet_ray.results.redact import redact

__all__ = [
    "LIMITS",
    "CheckpointInfo",
    "ComparedConfig",
    "Comparison",
    "ConfigInfo",
    "ConfigResult",
    "ErrorBody",
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

_STEP_RE = re.compile(r"(\d+)(?!.*\d)")

# Bounds of every stored number. Counts fit a 32-bit column on PostgreSQL, and a config's summed
# samples stay below 2**53 (exact as a float; the store refuses the record that would pass it), so
# no sum can overflow SQLite's 64-bit integers. Timestamps lie between 1970 and 2100, which every
# platform's `localtime` can format.
MAX_COUNT = 2**31 - 1
MAX_TOTAL_SAMPLES = 2**53
MAX_CONFIG_ID = 1_000_000
MAX_GMACS = 1e9
MAX_PARAMS = 10**13
MAX_LATENCY_MS = 1e9
MAX_LOSS_SUM = 1e15
MAX_TIME = 4_102_444_800.0  # 2100-01-01
MAX_JSON_BYTES = 64 * 1024  # experiment config or hyperparameters of one run
MAX_JSON_DEPTH = 16
MAX_JSON_INT = 2**53
LIMITS = {
    "count": MAX_COUNT,
    "total_samples_per_config": MAX_TOTAL_SAMPLES,
    "config_id": MAX_CONFIG_ID,
    "gmacs": MAX_GMACS,
    "params": MAX_PARAMS,
    "latency_ms": MAX_LATENCY_MS,
    "loss_sum": MAX_LOSS_SUM,
    "time": MAX_TIME,
    "json_bytes": MAX_JSON_BYTES,
    "json_depth": MAX_JSON_DEPTH,
    "name": MAX_NAME,
}


def _no_bool(value: Any) -> Any:
    # JSON true is not the number 1: `"config_id": true` is a mistake, not config 1.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


def _named(what: str) -> Any:
    return AfterValidator(lambda v: check_name(v, what))


def _labelled(what: str, max_length: int = MAX_LABEL) -> Any:
    return AfterValidator(lambda v: check_label(v, what, max_length))


_NAME_DOC = {"pattern": NAME_PATTERN}
RunName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, json_schema_extra=_NAME_DOC), _named("run")]
CheckpointName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME, json_schema_extra=_NAME_DOC), _named("checkpoint")
]
ShardName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, json_schema_extra=_NAME_DOC), _named("shard")]
DeviceName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, json_schema_extra=_NAME_DOC), _named("device")]
ConfigId = Annotated[int, Field(ge=0, le=MAX_CONFIG_ID), BeforeValidator(_no_bool)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT), BeforeValidator(_no_bool)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIME, allow_inf_nan=False, description="epoch seconds")]
Status = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z_-]{0,31}$", description="running, finished, failed, ...")]


class ResultsNotFound(ValueError):
    """A run, checkpoint or config that the service does not hold (HTTP 404)."""


class ResultsAuthError(ValueError):
    """A write without the service's bearer token (HTTP 401/403)."""


def _check_json(value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """A bounded JSON object: finite numbers, integers within 2**53, limited depth and size."""
    if value is None:
        return None

    def walk(node: Any, depth: int, where: str) -> None:
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels at {where or 'the top'}")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValueError(f"{what} has a non-string key {k!r} at {where or 'the top'}")
                walk(v, depth + 1, f"{where}.{k}" if where else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, depth + 1, f"{where}[{i}]")
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            return
        elif isinstance(node, int):
            if abs(node) > MAX_JSON_INT:
                raise ValueError(f"{what}.{where} = {node} is beyond +-2**53; send it as a string")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{what}.{where} is {node}; numbers must be finite (send null or a string)")
        else:
            raise ValueError(f"{what}.{where} is a {type(node).__name__}, not a JSON value")

    walk(value, 0, "")
    size = len(json.dumps(value, allow_nan=False))
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{what} is {size} bytes of JSON; at most {MAX_JSON_BYTES} are stored per run")
    return redact(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EvalRecord(_Model):
    """Partial counts of one config on one validation shard of one checkpoint."""

    run: RunName
    checkpoint: CheckpointName = Field(description='"step-000200", "final", ...')
    config_id: ConfigId
    shard: ShardName = Field(description="validation shard name, e.g. val-000003.tar")
    samples: Count
    top1_correct: Count
    top5_correct: Count
    loss_sum: float | None = Field(
        default=None, ge=-MAX_LOSS_SUM, le=MAX_LOSS_SUM, description="sum of per-sample losses; null if not finite"
    )
    worker: Annotated[str, Field(max_length=MAX_LABEL), _labelled("worker")] | None = None
    time: Timestamp | None = Field(default=None, description="when the worker measured it (epoch seconds)")

    @field_validator("loss_sum", mode="before")
    @classmethod
    def _finite_loss(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
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

    config_id: ConfigId
    name: Annotated[str, Field(max_length=MAX_LABEL), _labelled("config name")] = Field(
        default="", description='e.g. "0-1:3,4" or "deit_small"'
    )
    kind: Literal["anchor", "stitch"] = "stitch"
    anchors: list[
        Annotated[int, Field(ge=0, le=1000), BeforeValidator(_no_bool)]
        | Annotated[str, Field(max_length=MAX_LABEL), _labelled("anchor")]
    ] = Field(default_factory=list, max_length=16, description="anchor indices or names it runs")
    gmacs: float | None = Field(
        default=None, ge=0, le=MAX_GMACS, allow_inf_nan=False, description="multiply-adds (G) at the input size"
    )
    params: Annotated[int, Field(ge=0, le=MAX_PARAMS), BeforeValidator(_no_bool)] | None = None


class LatencyRecord(_Model):
    """Measured latency of one config on one device."""

    run: RunName
    config_id: ConfigId
    device: DeviceName = Field(description='e.g. "h200-bf16-b128" or "cpu"')
    latency_ms: float = Field(gt=0, le=MAX_LATENCY_MS, allow_inf_nan=False)


class NetworkRecord(_Model):
    """What one training worker measured of the network at start (train/network_check.py).

    Gradient sync is an all-reduce per step: a run whose NCCL fell back to TCP sockets between nodes
    trains several times slower, and this record is where that shows up next to the run.
    """

    run: RunName
    worker: Annotated[str, Field(max_length=MAX_LABEL), _labelled("worker")] = Field(description='"rank3"')
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
    time: Timestamp | None = None


class RunInfo(_Model):
    """A training run or Tune trial: its experiment config and hyperparameters."""

    run: RunName
    experiment: dict[str, Any] | None = Field(
        default=None, description="the experiment config; secrets are redacted before it is stored"
    )
    trial_id: Annotated[str, Field(max_length=MAX_LABEL), _labelled("trial_id")] | None = None
    hyperparameters: dict[str, Any] | None = None
    status: Status | None = None
    created: Timestamp | None = None

    @field_validator("experiment", "hyperparameters")
    @classmethod
    def _bounded_json(cls, value: dict[str, Any] | None, info: Any) -> dict[str, Any] | None:
        return _check_json(value, info.field_name)


class ErrorBody(_Model):
    """Every 4xx/5xx answer of the service: a message, and for 422 one line per bad field."""

    detail: str
    errors: list[str] | None = None


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
