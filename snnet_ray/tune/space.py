"""The search space of a sweep: what Tune samples, and the experiment config of each trial.

A trial's `ExperimentConfig` is built in one order, on the driver (to validate) and in the trial:

    base experiment (preset or YAML)  ->  the sweep's `experiment:` section  ->  the trial's values

where a trial's values are parameter paths (`optim.lr`, `model.stride`, ...) and `anchor_set`, which
sets `model.anchors` and `model.pretrained` together. `check_space` finds parameter paths that do not
exist in the experiment config before anything is built; `validation_points` lists points that cover
every discrete value and both ends of every range, so each can be built (and its SNNet checked)
before any trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snnet_ray.train.config import PRESETS_DIR, ExperimentConfig, find_config, load_experiment, read_yaml
from snnet_ray.tune.config import ANCHOR_SET, SweepConfig

__all__ = ["base_experiment", "check_space", "param_space", "read_base", "trial_experiment", "validation_points"]

# Above this many combinations, each parameter's values are validated one at a time instead.
MAX_VALIDATION_POINTS = 256


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's `param_space`: parameter path -> Tune domain (grid_search, choice, uniform, loguniform)."""
    return {key: spec.tune_domain() for key, spec in sweep.space.items()}


def trial_experiment(sweep: SweepConfig, params: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment config of one trial: base + the sweep's `experiment:` + the trial's values."""
    data = base_experiment(sweep)
    for key, value in params.items():
        if key == ANCHOR_SET:
            _set_anchor_set(data, sweep, value)
        else:
            _set_path(data, key, value)
    try:
        return load_experiment(data)
    except ValueError as err:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        raise ValueError(f"sweep point ({shown}): {err}") from None


def base_experiment(sweep: SweepConfig) -> dict[str, Any]:
    """The base experiment as a plain dict with the sweep's `experiment:` section merged over it."""
    return _merge(read_base(sweep), sweep.experiment)


def check_space(sweep: SweepConfig) -> None:
    """Raise ValueError naming the first parameter path the experiment config does not have."""
    for key in sweep.space:
        if key != ANCHOR_SET:
            _check_path(key)


def validation_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Points covering every discrete value and both ends of every range (all combinations when few)."""
    keys = list(sweep.space)
    values = [sweep.space[k].validation_values() for k in keys]
    count = 1
    for v in values:
        count *= len(v)
    if count <= MAX_VALIDATION_POINTS:
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    first = {k: v[0] for k, v in zip(keys, values)}
    points = [first]
    for k, v in zip(keys, values):
        points += [{**first, k: value} for value in v[1:]]
    return points


def read_base(sweep: SweepConfig) -> dict[str, Any]:
    """The base experiment as a plain dict, as its file says (without the sweep's `experiment:`)."""
    if isinstance(sweep.base, Mapping):
        return copy.deepcopy(dict(sweep.base))
    path = Path(sweep.base).expanduser()
    if not path.is_absolute() and sweep.source_dir and (Path(sweep.source_dir) / path).is_file():
        path = Path(sweep.source_dir) / path
    return read_yaml(find_config(path if path.is_file() else sweep.base, PRESETS_DIR, "experiment preset"))


# -- helpers ------------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = _merge(out[k], v) if both else copy.deepcopy(v)
    return out


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parents[: i + 1])
            raise ValueError(f"sweep parameter '{key}': '{section}' is a value, not a section")
        node = child
    node[leaf] = value


def _set_anchor_set(data: dict[str, Any], sweep: SweepConfig, name: str) -> None:
    model = data.setdefault("model", {})
    anchors, pretrained = sweep.anchor_sets[name].resolve(model.get("anchors") or [], model.get("pretrained"), name)
    model["anchors"], model["pretrained"] = anchors, pretrained


def _check_path(key: str) -> None:
    cls: Any = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean '{_join(where, close[0])}'?" if close else "fields: " + ", ".join(names)
            raise ValueError(
                f"unknown sweep parameter '{key}': {where or 'the experiment config'} has no field '{part}'; {hint}"
            )
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            cls = tp
            continue
        if i < len(parts) - 1 and not _is_mapping_type(tp):
            raise ValueError(f"unknown sweep parameter '{key}': '{_join(where, part)}' is a value, not a section")
        return
    raise ValueError(f"sweep parameter '{key}' names a whole section: name one of its fields")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _is_mapping_type(tp: Any) -> bool:
    return tp is Any or typing.get_origin(tp) in (dict, Mapping) or tp is dict
