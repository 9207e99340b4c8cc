"""Published per-config results of released SN-Nets, as packaged reference data.

Each release is one JSON file in `snnet_ray/reference/published/` (format
`snnet-ray/published/1`): the anchors' timm names, the stitch space it was trained with, where
the numbers come from, and one entry per config in the release's id order: kind, anchors, stage,
positions, the official stitching-layer key, top-1 (and top-5 where published), GMACs and
params. Adding a family (e.g. SN-Netv2's releases) is adding a file; nothing here changes.

    pub = load_published("deit")          # 71 configs of the official DeiT-Ti/S/B SN-Net
    pub.configs[40].acc1, pub.frontier()  # per config, and its accuracy/GMACs Pareto frontier
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PUBLISHED_DIR", "PublishedConfig", "PublishedResults", "list_published", "load_published"]

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
FORMAT = "snnet-ray/published/1"
_MAX_CONFIGS = 100_000


@dataclass(frozen=True)
class PublishedConfig:
    """One published config: its layout in the release's numbering and its published figures."""

    id: int
    kind: str
    anchors: tuple[int, ...]
    stage: int | None
    """Stage of the stitch; None for anchors and for single-stage anchors (DeiT)."""
    positions: tuple[tuple[int, int], ...]
    acc1: float
    gmacs: float
    acc5: float | None = None
    params: int | None = None
    layer_key: str | None = None
    final_norm: bool | None = None
    variant: str = ""
    """Route kind of a multi-direction space (SN-Netv2: SL, LS, LSL, SLS); empty otherwise."""
    official_id: int | None = None
    """The config's id in the official code where it differs from `id` (SN-Netv2)."""


@dataclass(frozen=True)
class PublishedResults:
    """A release's published results (see the module docstring for the file format)."""

    name: str
    title: str
    anchors: tuple[str, ...]
    configs: tuple[PublishedConfig, ...]
    space: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    gmacs_note: str = ""

    def frontier(self) -> list[PublishedConfig]:
        """Configs on the accuracy-vs-GMACs Pareto frontier, cheapest first."""
        best, out = -math.inf, []
        for c in sorted(self.configs, key=lambda c: (c.gmacs, -c.acc1)):
            if c.acc1 > best:
                out.append(c)
                best = c.acc1
        return out

    def by_id(self) -> dict[int, PublishedConfig]:
        return {c.id: c for c in self.configs}


def list_published() -> list[str]:
    """Names of the packaged releases (e.g. 'deit', 'swin', 'resnet', 'resnet_swin')."""
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.json"))


def load_published(name: str) -> PublishedResults:
    """The packaged published results called `name`, validated."""
    names = list_published()
    if name not in names:
        raise ValueError(f"no published results called {name!r}; available: {', '.join(names)}")
    return parse_published(json.loads((PUBLISHED_DIR / f"{name}.json").read_text()), name)


def parse_published(data: Any, where: str = "published results") -> PublishedResults:
    """Validate a published-results mapping (bounded, finite numbers, ids 0..n-1 in order)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{where}: not a {FORMAT} file")
    raw = data.get("configs")
    if not isinstance(raw, list) or not 0 < len(raw) <= _MAX_CONFIGS:
        raise ValueError(f"{where}: 'configs' must be a non-empty list")
    configs = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or c.get("id") != i:
            raise ValueError(f"{where}: config {i} is missing or out of order")
        acc1, gmacs = _finite(c.get("acc1"), 0, 100, where), _finite(c.get("gmacs"), 0, 1e6, where)
        acc5 = None if c.get("acc5") is None else _finite(c["acc5"], 0, 100, where)
        configs.append(
            PublishedConfig(
                id=i,
                kind=str(c.get("kind")),
                anchors=tuple(int(a) for a in c.get("anchors", ())),
                stage=None if c.get("stage") is None else int(c["stage"]),
                positions=tuple((int(j), int(l)) for j, l in c.get("positions", ())),
                acc1=acc1,
                gmacs=gmacs,
                acc5=acc5,
                params=None if c.get("params") is None else int(c["params"]),
                layer_key=c.get("layer_key"),
                final_norm=c.get("final_norm"),
                variant=str(c.get("variant") or ""),
                official_id=None if c.get("official_id") is None else int(c["official_id"]),
            )
        )
    return PublishedResults(
        name=str(data.get("name", where)),
        title=str(data.get("title", "")),
        anchors=tuple(str(a) for a in data.get("anchors", ())),
        configs=tuple(configs),
        space=dict(data.get("space") or {}),
        source=dict(data.get("source") or {}),
        dataset=str(data.get("dataset", "")),
        gmacs_note=str(data.get("gmacs_note", "")),
    )


def _finite(value: Any, low: float, high: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {value} lies outside {low}..{high}")
    return float(value)
