"""Preflight: every check of a run that can be made before a worker starts, in one place.

    report = preflight(cfg)                      # all checks; report.problems lists what is wrong
    model = preflight(cfg, raise_first=True).model   # what `validate_experiment` does

Checks, in order (a later one is skipped when what it needs failed earlier):
1. `model`: anchors (timm names, one family), weight files, window size; the SNNet is built on the
   meta device, so nothing is allocated and no weight is read.
2. `data`: `_info.json`, both splits, every shard file that can be checked without a command or a
   network round trip.
3. `classes`: the shards' classes and the anchors' input size agree with the model.
4. `eval.configs`: every listed config id exists in the stitch space.
5. `loss`: the teacher's weights file.
6. `cluster`: when Ray is connected, workers x CPUs (and GPUs) fit the cluster's resources.

`snnet-ray train --validate` and `snnet-ray sweep --validate` print every problem and exit
non-zero; `run_experiment` raises the first (with its own type) before it deploys anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snnet_ray.train.config import ExperimentConfig

__all__ = ["CHECKS", "Preflight", "Problem", "preflight"]


@dataclass
class Problem:
    """One thing that would make the run fail: the check that found it and why."""

    check: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.check}: {self.error}"


@dataclass
class Preflight:
    """What the checks found: the meta-device SNNet (None when it cannot be built) and the problems."""

    cfg: ExperimentConfig
    check_cluster: bool = True
    model: Any = None
    info: Any = None
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        if self.ok:
            lines = ["preflight: every check passed"]
        else:
            lines = [f"preflight: {len(self.problems)} problem(s); nothing was started"]
            lines += [f"  - {p}" for p in self.problems]
        lines += [f"  (skipped: {s})" for s in self.skipped]
        return "\n".join(lines)


def preflight(cfg: ExperimentConfig, *, check_cluster: bool = True, raise_first: bool = False) -> Preflight:
    """Run every check on `cfg`; with `raise_first`, raise the first problem's own exception."""
    report = Preflight(cfg, check_cluster=check_cluster)
    for name, needs, check in CHECKS:
        missing = [n for n in needs if getattr(report, n) is None]
        if missing:
            report.skipped.append(f"{name}, which needs the {' and '.join(missing)} that failed above")
            continue
        try:
            check(report)
        except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
            if raise_first:
                raise
            report.problems.append(Problem(name, err))
    return report


# ---- the checks ----------------------------------------------------------------------------


def _model(report: Preflight) -> None:
    from snnet_ray.stitching import SNNet

    m = report.cfg.model
    report.model = SNNet.from_timm(
        m.anchors, kernel_size=m.kernel_size, stride=m.stride, nearest=m.nearest, rule=m.rule,
        final_norm=m.final_norm, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
        pretrained=_check_weights(m.pretrained), device="meta", **m.timm_kwargs,
    )  # fmt: skip


def _data(report: Preflight) -> None:
    from snnet_ray.data import read_info
    from snnet_ray.data.storage import url_exists

    data = report.cfg.data
    try:
        info = read_info(data.root)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"data.root={data.root}: {err}; write shards with `snnet-ray shards` and point data.root at them"
        ) from None
    for split in (data.train_split, data.val_split):
        try:
            urls = info.urls(split)
        except (KeyError, ValueError):
            raise ValueError(f"data.root={data.root} has no '{split}' split in its _info.json") from None
        if not urls:
            raise ValueError(f"split '{split}' of data.root={data.root} lists no shards")
        missing = [u for u in urls if url_exists(u) is False]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {split} shards are missing, e.g. {missing[0]}; rewrite the shards")
    report.info = info


def _classes(report: Preflight) -> None:
    info, model, data = report.info, report.model, report.cfg.data
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"the shards hold {info.num_classes} classes but the model has {model.num_classes}; "
            f"set model.timm_kwargs.num_classes={info.num_classes}"
        )
    if data.input_size != model.input_size[-1]:
        raise ValueError(
            f"data.input_size={data.input_size} but the anchors take {model.input_size[-1]} px; "
            "make them agree (model.timm_kwargs.img_size or data.input_size)"
        )


def _eval_configs(report: Preflight) -> None:
    ids = report.cfg.eval.configs
    if not isinstance(ids, list):
        return
    count = len(report.model.configs)
    outside = [i for i in ids if not 0 <= i < count]
    if outside:
        raise ValueError(
            f"eval.configs lists {outside[:5]}, outside this model's stitch space of {count} configs "
            f"(ids 0..{count - 1}); list `snnet-ray stitches` ids, or use 'all' or 'anchors'"
        )


def _loss(report: Preflight) -> None:
    report.cfg.loss.check_files()


def _cluster(report: Preflight) -> None:
    if report.check_cluster:
        _check_cluster(report.cfg)


# (name, what it needs from earlier checks, the check)
CHECKS: list[tuple[str, tuple[str, ...], Callable[[Preflight], None]]] = [
    ("model", (), _model),
    ("data", (), _data),
    ("classes", ("model", "info"), _classes),
    ("eval.configs", ("model",), _eval_configs),
    ("loss", (), _loss),
    ("cluster", (), _cluster),
]


def _check_weights(pretrained: Any) -> Any:
    """Local weight files are checked by `from_timm`; remote ones are only checked for a scheme."""
    if isinstance(pretrained, list):
        return [False if isinstance(p, str) and "://" in p and not p.startswith("file://") else p for p in pretrained]
    return pretrained


def _check_cluster(cfg: ExperimentConfig) -> None:
    import ray

    s = cfg.scaling
    if not ray.is_initialized() or not s.check_resources:
        return
    available = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    if available.get("CPU", 0) < need_cpu:
        raise ValueError(
            f"scaling.num_workers={s.num_workers} x scaling.cpus_per_worker={s.cpus_per_worker} needs {need_cpu:g} "
            f"CPUs but the cluster has {available.get('CPU', 0):g}; lower scaling.num_workers or cpus_per_worker"
        )
    if s.use_gpu and available.get("GPU", 0) < s.num_workers:
        raise ValueError(
            f"scaling.num_workers={s.num_workers} with scaling.use_gpu=true needs {s.num_workers} GPUs but the "
            f"cluster has {available.get('GPU', 0):g}; lower scaling.num_workers or add GPU nodes"
        )
