"""Build anchors from timm names: validation first, then models, then weights.

Everything a user can get wrong (an unknown name, anchors of different families, a missing
weight file) is checked before any real model is built; families are checked on the meta
device, which builds a timm model instantly without allocating weights.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

import snnet_ray.anchors.resnet
import snnet_ray.anchors.swin
import snnet_ray.anchors.vit  # noqa: F401
from snnet_ray.anchors.base import AnchorAdapter, adapter_for
from snnet_ray.anchors.weights import checkpoint_num_classes

__all__ = [
    "SPATIAL_LAYOUTS",
    "AnchorLike",
    "AnchorSpec",
    "PretrainedArg",
    "check_families",
    "create_anchors",
    "resolve_anchor_specs",
]

log = logging.getLogger(__name__)

PretrainedArg = bool | str | Path | None


@dataclass
class AnchorSpec:
    """One anchor: a timm model name, its own timm kwargs, and where its weights come from.

    `pretrained` is False (random init), True (timm's default source, e.g. the hub) or a path
    to a safetensors / torch weights file.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: PretrainedArg = False

    @property
    def weights_file(self) -> Path | None:
        if isinstance(self.pretrained, (str, Path)) and not isinstance(self.pretrained, bool):
            return Path(self.pretrained).expanduser()
        return None


AnchorLike = str | tuple[str, Mapping[str, Any]] | AnchorSpec


def resolve_anchor_specs(
    anchors: Sequence[AnchorLike],
    pretrained: PretrainedArg | Sequence[PretrainedArg] | Mapping[str, PretrainedArg] = False,
) -> list[AnchorSpec]:
    """Normalise the user's anchors and weight sources into `AnchorSpec`s and validate them.

    `pretrained` may be one value for every anchor, a list (one per anchor) or a mapping from
    anchor name to value. A single file path only makes sense per anchor, so it is refused
    for several anchors.
    """
    if isinstance(anchors, str):
        anchors = [a for a in anchors.split(",") if a]
    specs: list[AnchorSpec] = []
    for a in anchors:
        if isinstance(a, AnchorSpec):
            specs.append(AnchorSpec(a.name, dict(a.kwargs), a.pretrained))
        elif isinstance(a, str):
            specs.append(AnchorSpec(a))
        else:
            name, kwargs = a
            specs.append(AnchorSpec(name, dict(kwargs)))
    if len(specs) < 2:
        raise ValueError(
            f"SN-Net needs at least two anchors of one family, got {len(specs)} ({[s.name for s in specs]}); "
            "pass e.g. deit_tiny_patch16_224,deit_small_patch16_224,deit_base_patch16_224"
        )

    if isinstance(pretrained, Mapping):
        for s in specs:
            s.pretrained = pretrained.get(s.name, s.pretrained)
    elif isinstance(pretrained, (list, tuple)):
        if len(pretrained) != len(specs):
            raise ValueError(f"pretrained has {len(pretrained)} entries for {len(specs)} anchors; give one per anchor")
        for s, p in zip(specs, pretrained):
            s.pretrained = p
    elif pretrained not in (False, None):
        if not isinstance(pretrained, bool):
            raise ValueError(
                f"pretrained={pretrained!r} is one file for {len(specs)} anchors; pass one path per anchor "
                "(a list, or a mapping from anchor name to file)"
            )
        for s in specs:
            if s.pretrained is False:
                s.pretrained = True

    for s in specs:
        if not timm.is_model(s.name):
            close = difflib.get_close_matches(s.name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise ValueError(f"unknown timm model '{s.name}'{hint}")
        path = s.weights_file
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"weights file for anchor '{s.name}' not found: {path}; check the path, or pass "
                "pretrained=False to start from random weights"
            )
    return specs


SPATIAL_LAYOUTS = ("nchw", "nhwc")
"""Layouts whose activations are a grid of pixels: families with these stitch across (ResNet -> Swin)."""


def check_families(names: Sequence[str], families: Sequence[type[AnchorAdapter]]) -> None:
    """One family, or families whose cuts are all pixel grids (the official ResNet-18 -> Swin-Ti)."""
    if len(set(families)) > 1 and not all(f.layout in SPATIAL_LAYOUTS for f in families):
        found = ", ".join(f"{n} ({f.family})" for n, f in zip(names, families))
        raise ValueError(
            f"anchors must be of one family, got {found}; SN-Net stitches models of one kind "
            "and several sizes (e.g. DeiT-Ti/S/B or Swin-Ti/S/B); across families only between "
            "pixel-grid activations (CNN and Swin, e.g. resnet18 -> swin_tiny_patch4_window7_224)"
        )


def _build(spec: AnchorSpec, timm_kwargs: Mapping[str, Any], pretrained: bool, **extra: Any) -> torch.nn.Module:
    kwargs = {**timm_kwargs, **spec.kwargs, **extra}
    return timm.create_model(spec.name, pretrained=pretrained, **kwargs)


def _families_without_kwargs(specs: Sequence[AnchorSpec]) -> list[type[AnchorAdapter]]:
    with torch.device("meta"):
        return [adapter_for(_build(s, {}, pretrained=False)) for s in specs]


def create_anchors(
    specs: Sequence[AnchorSpec],
    device: torch.device | str = "cpu",
    **timm_kwargs: Any,
) -> list[AnchorAdapter]:
    """Build every anchor (after checking they share one family) and wrap it in its adapter.

    `timm_kwargs` apply to every anchor (e.g. `img_size=32, num_classes=10, drop_path_rate=0.1`);
    an anchor's own kwargs win. On `device='meta'` nothing is allocated and no weights load,
    which is all that stitch listing and cost counting need.
    """
    try:
        with torch.device("meta"):
            probes = [_build(s, timm_kwargs, pretrained=False) for s in specs]
    except TypeError as err:
        # Keyword arguments of one family (a ViT's `class_token`) break another family's constructor:
        # find the families without them, so mixed anchors are reported as such.
        try:
            families = _families_without_kwargs(specs)
        except TypeError:
            families = []  # the anchors' own kwargs need the shared ones: report the first error
        if families:
            check_families([s.name for s in specs], families)
        raise TypeError(f"timm could not build the anchors with timm_kwargs {dict(timm_kwargs)}: {err}") from err
    families = [adapter_for(m) for m in probes]
    check_families([s.name for s in specs], families)

    adapters = []
    for spec, adapter_cls in zip(specs, families):
        load = spec.pretrained is not False and spec.pretrained is not None and str(device) != "meta"
        extra: dict[str, Any] = {}
        if load and spec.weights_file is not None:
            overlay: dict[str, Any] = {"file": str(spec.weights_file)}
            classes = checkpoint_num_classes(spec.weights_file, probes[families.index(adapter_cls)])
            if classes is not None:
                overlay["num_classes"] = classes
            extra["pretrained_cfg_overlay"] = overlay
            log.info("anchor %s: weights from %s", spec.name, spec.weights_file)
        with torch.device(device):
            model = _build(spec, timm_kwargs, pretrained=load, **extra)
        adapters.append(adapter_cls(model, spec.name))
    return adapters
