"""The sweep config: a base experiment, what varies between trials, and how trials are scheduled.

    sweep = load_sweep("tiny_digits", ["data.root=/abs/data/digits", "num_samples=2"])

A sweep file (`snnet_ray/presets/sweeps/<name>.yaml`, or any YAML file) names a base experiment
(a preset or an experiment YAML), changes it for every trial (`experiment:`, a partial experiment
config merged over the base), and gives the search space: parameter paths of the experiment config
(`optim.lr`, `model.kernel_size`, `sampler.name`, ...) or `anchor_set`, each with one of

    {grid: [a, b]}          every value, in every combination with the other grids
    {choice: [a, b]}        one value drawn per trial
    {uniform: [low, high]}  drawn uniformly
    {loguniform: [low, high]}

Tune runs `num_samples` x (product of the grid sizes) trials. An *anchor set* is a named list of
anchors with their weights: entries are indices into the base experiment's `model.anchors` (their
`model.pretrained` files follow them) or timm names / [name, kwargs] pairs with explicit
`pretrained`, so a trial never pairs anchors with another set's weight files.

`--set KEY=VALUE` overrides change the sweep when KEY starts with a sweep field (`num_samples`,
`scheduler.grace_period`, `space.optim.lr={loguniform: [1e-4, 1e-2]}`, ...) and the base experiment
otherwise (`data.root=...`, `scaling.num_workers=2`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from snnet_ray.names import check_name

__all__ = [
    "ANCHOR_SET",
    "PARAM_KINDS",
    "SWEEPS_DIR",
    "AnchorSet",
    "ParamSpec",
    "SchedulerConfig",
    "SweepConfig",
    "list_sweep_presets",
    "load_sweep",
]

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "presets" / "sweeps"
ANCHOR_SET = "anchor_set"
"""The search-space key that picks one of the sweep's `anchor_sets` by name."""
PARAM_KINDS = ("grid", "choice", "uniform", "loguniform")

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass
class ParamSpec:
    """How one parameter varies: a grid or a choice of values, or a (log-)uniform range."""

    kind: str
    values: list[Any]
    """grid/choice: the values; uniform/loguniform: [low, high]."""

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"unknown search-space kind {self.kind!r}: use one of {', '.join(PARAM_KINDS)}")
        if not isinstance(self.values, list) or not self.values:
            raise ValueError(f"{self.kind} needs a non-empty list, got {self.values!r}")
        if self.kind in ("uniform", "loguniform"):
            if len(self.values) != 2:
                raise ValueError(f"{self.kind} needs [low, high], got {self.values!r}")
            low, high = (_number(v, self.kind) for v in self.values)
            if not low < high or (self.kind == "loguniform" and low <= 0):
                raise ValueError(f"{self.kind} needs 0 < low < high (low < high for uniform), got {self.values!r}")
            self.values = [low, high]

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice")

    def tune_domain(self) -> Any:
        """The Ray Tune search-space object."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)

    def validation_values(self) -> list[Any]:
        """Values that cover what a trial can get: every discrete value, or both ends of a range."""
        return list(self.values)

    @classmethod
    def parse(cls, key: str, spec: Any) -> ParamSpec:
        if isinstance(spec, ParamSpec):
            return spec
        if not (isinstance(spec, Mapping) and len(spec) == 1):
            raise ValueError(
                f"space.{key} must be one of {{grid: [...]}}, {{choice: [...]}}, {{uniform: [low, high]}} or "
                f"{{loguniform: [low, high]}}, got {spec!r}; fixed values go under `experiment:`"
            )
        (kind, values), = spec.items()
        try:
            return cls(kind=kind, values=values)
        except ValueError as err:
            raise ValueError(f"space.{key}: {err}") from None


@dataclass
class AnchorSet:
    """A named list of anchors (smallest first) with the weights that belong to them."""

    anchors: list[Any]
    """Indices into the base experiment's model.anchors, or timm names / [name, {kwargs}] pairs."""
    pretrained: Any = None
    """None: follow the base (its weight files picked by index); else model.pretrained for this set."""

    def __post_init__(self) -> None:
        if not isinstance(self.anchors, list) or len(self.anchors) < 2:
            raise ValueError(f"an anchor set needs at least two anchors, got {self.anchors!r}")
        indices = [a for a in self.anchors if isinstance(a, int) and not isinstance(a, bool)]
        if indices and len(indices) != len(self.anchors):
            raise ValueError(f"anchor set {self.anchors!r} mixes indices and names: use one or the other")

    @property
    def by_index(self) -> bool:
        return isinstance(self.anchors[0], int)

    def resolve(self, base_anchors: Sequence[Any], base_pretrained: Any, name: str) -> tuple[list[Any], Any]:
        """(model.anchors, model.pretrained) of this set over a base experiment's model."""
        if self.by_index:
            bad = [i for i in self.anchors if not 0 <= i < len(base_anchors)]
            if bad:
                raise ValueError(
                    f"anchor_sets.{name}: index {bad[0]} is outside the base experiment's "
                    f"{len(base_anchors)} anchors (0..{len(base_anchors) - 1})"
                )
            anchors = [base_anchors[i] for i in self.anchors]
            if self.pretrained is not None:
                return anchors, self.pretrained
            if isinstance(base_pretrained, list):
                return anchors, [base_pretrained[i] for i in self.anchors]
            return anchors, base_pretrained
        pretrained = self.pretrained
        if pretrained is None:
            if isinstance(base_pretrained, list):
                raise ValueError(
                    f"anchor_sets.{name} names its anchors but gives no `pretrained`, and the base experiment's "
                    "weight files belong to other anchors: give pretrained (one file per anchor, or true/false)"
                )
            pretrained = base_pretrained
        if isinstance(pretrained, list) and len(pretrained) != len(self.anchors):
            raise ValueError(
                f"anchor_sets.{name}: {len(self.anchors)} anchors but {len(pretrained)} pretrained entries"
            )
        return list(self.anchors), pretrained


@dataclass
class SchedulerConfig:
    """Early stopping of trials on their periodic evaluations (ASHA), or none (fifo)."""

    name: str = "asha"
    """asha: AsyncHyperBand on the objective with time = training step; fifo: every trial runs to the end."""
    grace_period: int | None = None
    """Steps a trial runs before it can be stopped; None: the first periodic evaluation (eval.every_steps)."""
    reduction_factor: float = 2
    """At each rung, trials below the top 1/reduction_factor of the objective are stopped."""
    max_t: int | None = None
    """The step of the last rung; None: the trials' total steps."""

    def __post_init__(self) -> None:
        if self.name not in ("asha", "fifo"):
            raise ValueError(f"scheduler.name must be asha or fifo, got {self.name!r}")
        if self.grace_period is not None and self.grace_period < 1:
            raise ValueError(f"scheduler.grace_period must be >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ValueError(f"scheduler.reduction_factor must be > 1, got {self.reduction_factor}")
        if self.max_t is not None and self.max_t < 1:
            raise ValueError(f"scheduler.max_t must be >= 1, got {self.max_t}")


@dataclass
class SweepConfig:
    """A Ray Tune sweep of SN-Net training runs."""

    base: str | dict[str, Any]
    """The base experiment: a preset name (snnet_ray/presets), an experiment YAML (relative to this file),
    or the experiment config itself (a mapping; what the driver hands to trials on other nodes)."""
    name: str = "snnet-sweep"
    """Names the Tune experiment folder; trial runs are `<name>-<trial id>`."""
    experiment: dict[str, Any] = field(default_factory=dict)
    """A partial experiment config merged over the base for every trial."""
    anchor_sets: dict[str, AnchorSet] = field(default_factory=dict)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    """Parameter path (or `anchor_set`) -> how it varies."""
    num_samples: int = 1
    """Samples of the space; each repeats the whole grid."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = None
    """None: derived from the cluster's GPUs (CPUs without GPUs) and each trial's workers."""
    trial_cpus: float = 0
    """CPUs reserved for each trial's driver process (it only waits on its Train run, so 0 is fine)."""
    trial_memory_mb: float = 256
    """Memory reserved for each trial's driver (Ray's logical `memory` resource); > 0 when trial_cpus is 0."""
    max_failures: int = 1
    """Restarts of a trial whose driver died; the restarted trial resumes its run's checkpoints."""
    storage_path: str | None = None
    """Where the Tune experiment and the trials' Train runs go; None: the base experiment's run.storage_path."""
    search_seed: int | None = 0
    """Seed of the random draws (choice, uniform, loguniform); None: a fresh draw every time."""
    source_dir: str | None = None
    """Folder of the sweep file (resolves a relative `base`); set by `load_sweep`."""

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("a sweep needs `base`: an experiment preset name or YAML file")
        check_name(self.name, "sweep name")  # it names folders and, with a trial id, every trial's run
        self.experiment = self.experiment or {}
        if not isinstance(self.experiment, Mapping):
            raise ValueError(f"experiment must be a mapping of config sections, got {self.experiment!r}")
        self.anchor_sets = {k: _anchor_set(k, v) for k, v in (self.anchor_sets or {}).items()}
        self.space = {k: ParamSpec.parse(k, v) for k, v in (self.space or {}).items()}
        if isinstance(self.scheduler, Mapping):
            self.scheduler = _typed(SchedulerConfig, self.scheduler, "scheduler")
        for key, spec in self.space.items():
            if key == ANCHOR_SET:
                _check_anchor_set_spec(spec, self.anchor_sets)
            elif not _PATH_RE.match(key):
                raise ValueError(f"space key {key!r} is not a config path like optim.lr or model.kernel_size")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"max_concurrent_trials must be >= 1 (or null: derived), got {self.max_concurrent_trials}")
        if self.trial_cpus < 0 or self.trial_memory_mb < 0:
            raise ValueError(f"trial_cpus, trial_memory_mb must be >= 0, got {self.trial_cpus}, {self.trial_memory_mb}")
        if not (self.trial_cpus or self.trial_memory_mb):
            raise ValueError("a trial's driver must reserve something (Ray needs a resource): set trial_memory_mb > 0")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1 (-1: unlimited), got {self.max_failures}")

    @property
    def grid_size(self) -> int:
        size = 1
        for spec in self.space.values():
            if spec.kind == "grid":
                size *= len(spec.values)
        return size

    @property
    def num_trials(self) -> int:
        return self.num_samples * self.grid_size

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["space"] = {k: {s.kind: list(s.values)} for k, s in self.space.items()}
        return out


def list_sweep_presets() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def load_sweep(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> SweepConfig:
    """Load a sweep preset name, YAML file or dict, apply `KEY=VALUE` overrides, and type it."""
    from snnet_ray.train.config import find_config, read_yaml

    source_dir = None
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        path = find_config(config, SWEEPS_DIR, "sweep preset")
        data = read_yaml(path)
        source_dir = str(path.resolve().parent)
    data = _apply_overrides(data, overrides)
    data.setdefault("source_dir", source_dir)
    return _typed(SweepConfig, data, "")


# -- helpers ------------------------------------------------------------------------------------


def _apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Sweep fields go to the sweep, everything else to its `experiment:` section."""
    from snnet_ray.train.config import apply_overrides

    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    sweep_fields = {f.name for f in dataclasses.fields(SweepConfig)}
    experiment, sweep = [], []
    for item in overrides:
        key, sep, raw = item.partition("=")
        head, _, rest = key.strip().partition(".")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. num_samples=4 or optim.lr=1e-4)")
        if head == "space" and rest:
            out.setdefault("space", {})[rest] = yaml.safe_load(raw)
        elif head in sweep_fields and head != "experiment":
            sweep.append(item)
        else:
            experiment.append(item[len("experiment."):] if head == "experiment" else item)
    out = apply_overrides(out, sweep)
    out["experiment"] = apply_overrides(out.get("experiment") or {}, experiment)
    return out


def _typed(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'sweep config'} must be a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; fields: {', '.join(sorted(names))}"
            raise ValueError(f"unknown {where or 'sweep'} field '{key}'{hint}")
    from snnet_ray.train.config import _check_numbers

    for key, value in data.items():
        if key != "experiment":  # the experiment is checked when each trial's config is loaded
            _check_numbers(value, f"{where}.{key}" if where else key)
    try:
        return cls(**data)
    except TypeError as err:
        raise ValueError(f"{where or 'sweep config'}: {err}") from None


def _anchor_set(name: str, data: Any) -> AnchorSet:
    if isinstance(data, AnchorSet):
        return data
    if isinstance(data, list):
        data = {"anchors": data}
    try:
        return _typed(AnchorSet, data, f"anchor_sets.{name}")
    except ValueError as err:
        raise ValueError(f"anchor_sets.{name}: {err}") from None


def _check_anchor_set_spec(spec: ParamSpec, anchor_sets: Mapping[str, AnchorSet]) -> None:
    if not spec.discrete:
        raise ValueError(f"space.{ANCHOR_SET} must be a grid or choice of anchor set names, got {spec.kind}")
    unknown = [v for v in spec.values if v not in anchor_sets]
    if unknown:
        known = ", ".join(anchor_sets) or "none: define them under anchor_sets"
        raise ValueError(f"space.{ANCHOR_SET}: unknown anchor set {unknown[0]!r} (defined: {known})")


def _number(value: Any, kind: str) -> float:
    try:
        number = float(value)  # YAML 1.1 reads "1e-4" as a string
    except (TypeError, ValueError):
        raise ValueError(f"{kind} bounds must be numbers, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{kind} bounds must be finite numbers, got {value!r}")
    return number
