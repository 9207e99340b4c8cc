"""The model a replica serves: one SNNet (every config's weights), its frontier and its preprocessing.

The weights come from a saved SN-Net (`save_snnet`) or a training checkpoint's `model/` (local or
s3://). Choosing among configs needs each one's accuracy: the per-config top-1 comes from the results
service (`results` + `run`, what `snnet-ray eval` recorded) or, without one, from the saved model's
metadata (`save_snnet(..., extra={"top1": {config_id: top1}})`). The served frontier is the Pareto
frontier of top-1 against GMACs: a config off it is never the best choice under any budget.
Preprocessing is the run's validation transform: the saved model's `extra["data"]`, else the run's
experiment config in the results service, else timm's defaults for the anchors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snnet_ray.serve.policy import FrontierConfig

__all__ = ["ServedModel", "load_served_model", "read_top1"]


@dataclass
class ServedModel:
    """An SNNet ready to serve: the model, its frontier (least accurate first) and its transform."""

    snnet: Any
    frontier: list[FrontierConfig]
    transform: Callable
    """PIL image -> uint8 tensor (C, H, W)."""
    normalize: Callable
    """uint8 batch -> normalised float batch, on the batch's device."""
    model_dir: str
    version: str
    """Short hash of the weights and spec: which checkpoint answered (changes on a rollout)."""
    gmacs: dict[int, float] = field(default_factory=dict)
    """GMACs per config as counted on the meta device, as `snnet-ray eval` records them; for SN-Netv2,
    those of the folded LoRA stitching layers the replica runs."""
    top1: dict[int, float] = field(default_factory=dict)
    top1_source: str = ""

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.snnet.input_size)

    def config_info(self, cfg_id: int) -> dict[str, Any]:
        cfg = self.snnet.configs[cfg_id]
        return {"id": cfg_id, "name": cfg.name, "gmacs": self.gmacs[cfg_id], "top1": self.top1.get(cfg_id)}


def load_served_model(
    model: str,
    *,
    results: str | None = None,
    run: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
) -> ServedModel:
    """Load the SNNet at `model` with the per-config top-1 that ranks its configs."""
    from snnet_ray.stitching.saving import SPEC_FILE, WEIGHTS_FILE, load_snnet, resolve_model_dir

    model_dir = resolve_model_dir(str(model))
    spec = _read_spec(Path(model_dir) / SPEC_FILE)
    meta = load_snnet(model_dir, device="meta")  # names and costs, before any weight is read
    names = {c.id: c.name for c in meta.configs}
    experiment: Mapping[str, Any] = {}
    if results is not None or run is not None:
        if results is None or run is None:
            raise ValueError("give both --results URL and --run RUN to rank configs by the results service")
        top1, experiment = _top1_from_results(results, run, checkpoint, names)
        source = f"results service run {run!r}"
    else:
        top1 = read_top1(spec.get("extra", {}), names)
        source = f"{SPEC_FILE} extra.top1"
    # GMACs counted on the meta device, as the results service has them: on a CPU build torch's FLOP
    # counter misses the fused attention kernel, so the same config would count fewer GMACs there.
    # Served SN-Netv2 LoRA stitching layers are folded (below), so configs rank by the folded costs.
    gmacs = {c.id: meta.cost(c.id, folded=True).gmacs for c in meta.configs}
    frontier = _frontier(meta, gmacs, top1)
    snnet = load_snnet(model_dir, device=device).eval()
    # Fold W + (alpha / r) B A into one weight: the same outputs without the low-rank product per stitch.
    snnet.fold_lora()
    # Frozen rather than a process-wide `torch.set_grad_enabled(False)`, which leaked into whatever
    # else ran in the process; every forward of the replica runs under inference_mode anyway.
    snnet.requires_grad_(False)
    data = spec.get("extra", {}).get("data") or experiment.get("data") or {}
    if not data:
        data = {k: v for k, v in snnet.data_config.items() if k in ("mean", "std", "interpolation", "crop_pct")}
    from snnet_ray.serve.images import build_transform

    transform, normalize = build_transform(data, tuple(snnet.input_size))
    digest = hashlib.sha256((Path(model_dir) / SPEC_FILE).read_bytes())
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return ServedModel(snnet, frontier, transform, normalize, model_dir, digest.hexdigest()[:12], gmacs, top1, source)


def read_top1(extra: Mapping[str, Any], names: Mapping[int, str]) -> dict[int, float]:
    """Per-config top-1 from a saved model's `extra["top1"]` ({config id: top-1 in %})."""
    raw = extra.get("top1")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(
            "no per-config top-1 to choose configs by: give --results URL --run RUN (a run evaluated with "
            "`snnet-ray eval`), or save the model with save_snnet(..., extra={'top1': {config_id: top1}})"
        )
    out: dict[int, float] = {}
    for key, value in raw.items():
        try:
            cfg_id, acc = int(key), float(value)
        except (TypeError, ValueError):
            raise ValueError(f"extra.top1 must map config ids to numbers, got {key!r}: {value!r}") from None
        if cfg_id not in names or not (math.isfinite(acc) and 0 <= acc <= 100):
            raise ValueError(f"extra.top1[{key!r}] = {value!r}: need a config id of this model and 0 <= top-1 <= 100")
        out[cfg_id] = acc
    return out


def _top1_from_results(
    url: str, run: str, checkpoint: str | None, names: Mapping[int, str]
) -> tuple[dict[int, float], Mapping[str, Any]]:
    from snnet_ray.results import connect

    with connect(url) as results:
        table = results.table(run, checkpoint)
        experiment = results.get_run(run).experiment or {}
    top1: dict[int, float] = {}
    for row in table.rows:
        if row.top1 is None:
            continue
        if row.config_id not in names or (row.name and row.name != names[row.config_id]):
            raise ValueError(
                f"run {run!r} has config {row.config_id} {row.name!r}, which this model calls "
                f"{names.get(row.config_id)!r}: the model is not the run's; give the run's checkpoint"
            )
        top1[row.config_id] = row.top1
    if not top1:
        raise ValueError(f"run {run!r} has no evaluated config at checkpoint {table.checkpoint!r}: "
                         "run `snnet-ray eval` first")
    return top1, experiment


def _frontier(model: Any, gmacs: Mapping[int, float], top1: Mapping[int, float]) -> list[FrontierConfig]:
    from snnet_ray.results.pareto import pareto_front
    from snnet_ray.results.schema import ConfigResult

    rows = [
        ConfigResult(config_id=c, name=model.configs[c].name, gmacs=gmacs[c], top1=acc)
        for c, acc in top1.items()
    ]
    return [FrontierConfig(r.config_id, r.name, r.gmacs, r.top1) for r in pareto_front(rows, "gmacs")]


def _read_spec(path: Path) -> dict[str, Any]:
    import json

    try:
        spec = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return spec
