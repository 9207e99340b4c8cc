"""The experiment config: typed dataclasses loaded from YAML presets, with `--set` overrides.

    cfg = load_experiment("swin_ti_s_b_imagenet", ["data.root=/data/imagenet-wds", "scaling.num_workers=16"])

A preset (`snnet_ray/presets/<name>.yaml`, or any YAML file) is complete data: every section maps
onto one dataclass below and unknown keys are errors that name the field. Components own their
configs (`DataConfig`, `OptimConfig`, `SamplerConfig`, `DeepSpeedConfig`, `LossConfig`); this
module composes them and adds what a run needs around them. Every value is checked at load and
a bad one is refused naming its field: unknown keys, wrong types, booleans where numbers belong,
non-finite floats anywhere (`optim.lr=nan`, `schedule.epochs=inf`, inside `timm_kwargs` too),
integers beyond 2**53, and names that break `snnet_ray.names` (`run.name=../../etc`).
`snnet_ray.train.preflight` then checks anchors, files, the stitch space and the cluster before any
worker starts (`snnet-ray train --validate` runs only that).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from snnet_ray.data.config import DataConfig
from snnet_ray.names import check_name
from snnet_ray.train.deepspeed_config import DeepSpeedConfig
from snnet_ray.train.loss import LossConfig
from snnet_ray.train.optim import OptimConfig
from snnet_ray.train.samplers import SamplerConfig

__all__ = [
    "PRESETS_DIR",
    "EvalConfig",
    "ExperimentConfig",
    "FailureConfig",
    "ModelConfig",
    "OutputConfig",
    "ResultsConfig",
    "ScalingConfig",
    "ScheduleConfig",
    "apply_overrides",
    "find_config",
    "list_presets",
    "load_experiment",
    "read_yaml",
]

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


@dataclass
class ModelConfig:
    """The anchors and the stitch space (`SNNet.from_timm` arguments)."""

    anchors: list[Any] = field(default_factory=list)
    """timm names or [name, {kwargs}] pairs, smallest first."""
    pretrained: Any = False
    """False, True (timm's default source, e.g. the hub), or one weights file per anchor (a list)."""
    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True
    rule: str = "paper"
    """Stitch-space rule: 'paper' (the official SN-Net spaces), 'dense' (every window, every stage) or
    'snnetv2' (SN-Netv2: two-way stitching and round trips)."""
    final_norm: str = "always"
    """'always' (every path runs the back anchor's final norm) or 'v1' (official v1 DeiT: stitches skip it)."""
    lora_r: int = 0
    """Rank of SN-Netv2's LoRA stitching layers (official configs: 64); 0 trains plain layers."""
    lora_alpha: float = 1.0
    """LoRA scale numerator: the update is lora_alpha / lora_r x B A (official: 1)."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Applied to every anchor, e.g. num_classes, img_size, drop_path_rate."""
    drop_path_schedule: str = "linear"
    """Stochastic depth over an anchor's blocks: 'linear' (timm: 0 at the first block, the anchor's
    drop_path_rate at the last) or 'uniform' (the rate at every block: official DeiT III / SN-Netv2)."""
    ls_init_images: int = 100
    """Training images in the least-squares init batch; 0 keeps random stitching layers."""
    compile: bool = False
    """Regional compilation: `SNNet.compile_blocks()` compiles each block once, and switching
    configs never recompiles (a whole-model compile would, per config)."""

    def __post_init__(self) -> None:
        if len(self.anchors) < 2:
            raise ValueError(f"model.anchors needs at least two timm models of one family, got {self.anchors}")
        self.anchors = [a if isinstance(a, str) else (a[0], dict(a[1])) for a in self.anchors]
        if self.lora_r < 0:
            raise ValueError(f"model.lora_r must be >= 0 (0: plain stitching layers), got {self.lora_r}")
        if self.ls_init_images < 0:
            raise ValueError(f"model.ls_init_images must be >= 0, got {self.ls_init_images}")
        if self.drop_path_schedule not in ("linear", "uniform"):
            raise ValueError(
                f"model.drop_path_schedule must be 'linear' or 'uniform', got {self.drop_path_schedule!r}"
            )
        if self.final_norm not in ("always", "v1"):
            raise ValueError(f"model.final_norm must be 'always' or 'v1', got {self.final_norm!r}")


@dataclass
class ScheduleConfig:
    """How long to train and how the learning rate scales."""

    epochs: float = 50
    warmup_epochs: float = 5
    max_steps: int | None = None
    """Stop after this many optimizer steps (quick runs, sweeps); None: all epochs."""
    lr_reference_batch: int | None = 512
    """optim.lr is given for this global batch and scaled linearly to the real one; None: as given."""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"schedule.epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"schedule.warmup_epochs must lie in 0..epochs, got {self.warmup_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"schedule.max_steps must be >= 1, got {self.max_steps}")


@dataclass
class ScalingConfig:
    """Ray Train workers: one per GPU on clusters, CPU processes on a laptop."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1
    placement_strategy: str = "PACK"
    """PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (Ray placement group)."""
    check_resources: bool = True
    """Refuse a run the cluster's current CPUs/GPUs cannot place; false on autoscaling clusters,
    which start nodes on demand."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers must be >= 1, got {self.num_workers}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError("scaling.placement_strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")


@dataclass
class OutputConfig:
    """Where the run's checkpoints go and how often they are taken."""

    name: str = "snnet"
    storage_path: str = "~/ray_results"
    """Ray Train storage: a local path or s3:// / gs:// URI."""
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 2
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        # The run names a Ray Train folder, a results-service URL path and terminal lines.
        check_name(self.name, "run.name")
        if self.checkpoint_every_steps < 1 or self.log_every_steps < 1:
            raise ValueError("run.checkpoint_every_steps and run.log_every_steps must be >= 1")
        if self.keep_checkpoints < 1:
            raise ValueError(f"run.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclass
class FailureConfig:
    """Fault tolerance (Ray Train `FailureConfig`)."""

    max_failures: int = 3
    """Worker-group failures the run recovers from, restarting from the last checkpoint; -1: unlimited."""

    def __post_init__(self) -> None:
        if self.max_failures < -1:
            raise ValueError(f"failure.max_failures must be >= -1 (-1: unlimited), got {self.max_failures}")


@dataclass
class EvalConfig:
    """Periodic and final evaluation (one pass over the validation shards evaluates every config)."""

    every_steps: int = 0
    """Evaluate every N optimizer steps (0: only at the end)."""
    configs: Any = "all"
    """'all', 'anchors', 'span[:N]' (anchors + N stitches across the GMACs range: what a sweep's ASHA
    needs to see stitch hyperparameters), or a list of config ids, for periodic evaluations."""
    max_shards: int | None = None
    """Periodic evaluations use only the first N validation shards; None: all."""
    final: bool = True
    """Evaluate every config on the full validation set at the end."""
    at_start: bool = False
    """Also evaluate right after the least-squares init (checkpoint name 'init'): the baseline."""
    batch_size: int | None = None
    """Validation batch size per worker; None: data.val_batch_size or data.batch_size."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"eval.every_steps must be >= 0, got {self.every_steps}")
        from snnet_ray.eval.select import check_eval_configs

        check_eval_configs(self.configs)


@dataclass
class ResultsConfig:
    """Where evaluations go: a results service URL, or the database of a service the job deploys."""

    url: str | None = None
    """http(s) URL of a running service, or a database URL used directly; None: $SNNET_RESULTS_URL, else
    the cluster's Serve app (deployed over `db` when not running)."""
    db: str = "sqlite:///snnet-results.db"
    token: str | None = None
    port: int = 8000
    """HTTP port of Ray Serve's proxy when the job has to start Serve for the results service."""


@dataclass
class ExperimentConfig:
    """A whole SN-Net training run."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: OutputConfig = field(default_factory=OutputConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        # data.batch_size is the per-rank micro-batch; DeepSpeed must agree with it.
        if self.deepspeed.micro_batch_size != self.data.batch_size:
            self.deepspeed = dataclasses.replace(self.deepspeed, micro_batch_size=self.data.batch_size)
        if self.data.num_workers is None:
            # One CPU of the Ray worker runs the training process; the rest decode and augment.
            self.data = self.data.replace(num_workers=max(int(self.scaling.cpus_per_worker) - 1, 1))
        self.deepspeed.check_sampler(self.sampler.name)
        self.deepspeed.accumulation_steps(self.scaling.num_workers)  # raises when batches do not divide

    @property
    def global_batch_size(self) -> int:
        return self.deepspeed.global_batch(self.scaling.num_workers)

    @property
    def peak_lr(self) -> float:
        """optim.lr scaled linearly from schedule.lr_reference_batch to the global batch."""
        ref = self.schedule.lr_reference_batch
        return self.optim.lr if ref is None else self.optim.lr * self.global_batch_size / ref

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_experiment(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a preset name, a YAML file or a dict, apply `key.path=value` overrides, and type it."""
    data = dict(config) if isinstance(config, Mapping) else read_yaml(find_config(config, PRESETS_DIR, "preset"))
    return _build(ExperimentConfig, apply_overrides(data, overrides), "")


def find_config(config: str | Path, presets_dir: Path, kind: str = "preset") -> Path:
    """The YAML file a `--config` names: a path, else a preset of `presets_dir` by name."""
    path = Path(config).expanduser()
    if not path.suffix and not path.exists():
        path = presets_dir / f"{config}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in presets_dir.glob("*.yaml")))
        raise FileNotFoundError(f"config {str(config)!r} is neither a {kind} ({names}) nor a YAML file")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping of config sections."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return dict(data)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each 'a.b.c=value' set (value parsed as YAML: 1e-4, true, [a, b])."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=1e-4)")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return out


# -- typed construction -------------------------------------------------------------------------


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean '{_join(where, close[0])}'?" if close else f"; fields: {', '.join(sorted(names))}"
        raise ValueError(f"unknown config field '{_join(where, key)}'{hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(where, name))
        _check_numbers(kwargs[name], _join(where, name))
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required field
        raise ValueError(f"{where or 'config'}: {err}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, where) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return tp(value)
        except ValueError:
            pass
    if tp in (int, float, bool, str) and not isinstance(value, tp):
        raise ValueError(f"config field '{where}' must be {tp.__name__}, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ValueError(f"config field '{where}' must be {tp.__name__}, got the boolean {value!r}")
    return value


def _check_numbers(value: Any, where: str) -> None:
    """Refuse non-finite floats and huge integers anywhere in a field's value (lists, dicts too)."""
    if dataclasses.is_dataclass(value):
        return  # built by _build, which checked its own fields
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config field '{where}' must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ValueError(f"config field '{where}' = {value} is beyond +-2**53")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
