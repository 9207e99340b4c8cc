"""One config of an SN-Net as a standalone network that holds only the modules its path runs.

SN-Net (Pan et al., CVPR 2023) keeps every anchor and stitching layer in one module so that a
config can be switched at run time. A deployed model needs one config: for a stitch (j, l) in a
stage, the front anchor's embedding, earlier stages and blocks 0..j, the stitching layer, then the
back anchor's blocks l.., later stages, final norm and head; for an anchor config, that anchor.

`extract_config` deep-copies only those pieces (the pieces of `stitching.cost.path_pieces`, so the
parameter count equals `SNNet.cost(cfg_id).params`). Modules off the path become parameter-free
`nn.Identity` placeholders and parameters off the path become None, so block indices and timm's
state-dict key names stay the anchors' own, and the anchors' own adapter code runs the path.

SN-Netv2's LoRA stitching layers are folded into plain linear layers on extraction, and its
round trips (S -> L -> S, L -> S -> L), like v1's official two-hop Ti -> S -> B paths, become a
`RouteNetwork` of pruned anchor segments.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from snnet_ray.anchors.base import AnchorAdapter
from snnet_ray.stitching.cost import path_pieces
from snnet_ray.stitching.layers import fold_stitching_layer
from snnet_ray.stitching.snnet import SNNet
from snnet_ray.stitching.space import StitchConfig
from snnet_ray.stitching.space_v2 import route_segments

__all__ = ["RouteNetwork", "StitchedNetwork", "extract_config", "prune_anchor", "route_pieces"]


class StitchedNetwork(nn.Module):
    """A single SN-Net config: `front` [-> `stitch` -> `back`], nothing else.

    For an anchor config `front` is that whole anchor and `stitch`, `back` are None. For a stitch,
    `front` runs up to and including block `position[0]` of `stage` and `back` starts at block
    `position[1]`; both are adapters of pruned anchor copies (see `prune_anchor`).
    `forward(x)` equals `SNNet.forward_config(x, cfg_id)` exactly.

    Args:
        front: the front anchor (or the anchor of an anchor config).
        stitch: the stitching layer (None for an anchor config).
        back: the back anchor (None for an anchor config).
        stage: stage of the cut.
        position: (j, l) block indices of the cut in the anchors' own numbering.
        spec: what the network is and how to rebuild it (written to config.json on export).
    """

    def __init__(
        self,
        front: AnchorAdapter,
        stitch: nn.Module | None = None,
        back: AnchorAdapter | None = None,
        *,
        stage: int | None = None,
        position: tuple[int, int] | None = None,
        spec: dict[str, Any] | None = None,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if (stitch is None) != (back is None) or (back is not None and (stage is None or position is None)):
            raise ValueError("a stitched network needs front, stitch, back, stage and position; an anchor only front")
        self.front, self.stitch, self.back = front, stitch, back
        self.stage = stage
        self.position = tuple(position) if position is not None else None
        self.final_norm = final_norm
        """Whether the back half runs its final norm (False: official v1 DeiT stitches)."""
        self.spec: dict[str, Any] = dict(spec or {})

    @property
    def is_anchor(self) -> bool:
        return self.back is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.back is None:
            return self.front(x)
        j, l = self.position
        h = self.stitch(self.front.forward_until(x, self.stage, j))
        return self.back.forward_from(h, self.stage, l, norm=self.final_norm)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        if not self.spec:
            return ""
        return f"config={self.spec.get('config_id')} ({self.spec.get('path', '')})"


class RouteNetwork(nn.Module):
    """A single multi-hop config (SN-Netv2 round trip, official v1 Ti->S->B): anchor segments
    joined by stitching layers, nothing else.

    `segments[i]` is a pruned copy of the anchor that runs blocks `bounds[i]` = (start, stop) of
    its single stage; the first also runs the embedding, the last the final norm (unless
    `final_norm=False`, official v1 DeiT) and head, and `stitches[i]` joins segment i to segment
    i + 1. `forward(x)` equals `SNNet.forward_config`.
    """

    def __init__(
        self,
        segments: list[AnchorAdapter],
        stitches: list[nn.Module],
        bounds: list[tuple[int, int]],
        spec: dict[str, Any] | None = None,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.final_norm = final_norm
        if not (len(segments) == len(bounds) == len(stitches) + 1 >= 2):
            raise ValueError("a route needs n >= 2 segments, n bounds and n - 1 stitching layers")
        self.segments, self.stitches = nn.ModuleList(segments), nn.ModuleList(stitches)
        self.bounds = [tuple(b) for b in bounds]
        self.spec: dict[str, Any] = dict(spec or {})

    is_anchor = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.segments[0].forward_until(x, 0, self.bounds[0][1] - 1)
        for stitch, segment, (start, stop) in zip(self.stitches, self.segments[1:], self.bounds[1:]):
            h = segment.run_stage(0, stitch(h), start, stop)
        return self.segments[-1].finish(h, self.final_norm)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def route_pieces(adapter: AnchorAdapter, index: int, count: int, start: int, stop: int) -> set[str]:
    """Pieces segment `index` of `count` runs: its blocks, plus the embedding first and `finish` last."""
    keys = {f"block.0.{i}" for i in range(start, stop)}
    if index == 0:
        keys |= {"embed", "enter.0"}
    if index == count - 1:
        keys.add("finish")
    return keys


def extract_config(model: SNNet, cfg_id: int) -> StitchedNetwork | RouteNetwork:
    """Copy config `cfg_id` of `model` out as a `StitchedNetwork` (the SNNet can be freed after)."""
    if not 0 <= cfg_id < len(model.configs):
        raise ValueError(f"config id {cfg_id} out of range; this SN-Net has configs 0..{len(model.configs) - 1}")
    cfg = model.configs[cfg_id]
    if cfg.num_hops > 1 and any(len(model.anchors[a].stage_depths) != 1 for a in cfg.anchors):
        raise ValueError(
            f"config {cfg_id} ({cfg.name}) runs {cfg.num_hops} stitches over multi-stage anchors; export takes "
            "multi-hop paths of single-stage (plain ViT) anchors only"
        )
    spec = _network_spec(model, cfg)
    if cfg.is_anchor:
        net = StitchedNetwork(copy.deepcopy(model.anchors[cfg.anchors[0]]), spec=spec)
    elif cfg.num_hops > 1:  # official v1 Ti->S->B, SN-Netv2 round trips
        segments = route_segments(cfg, [a.stage_depths[0] for a in model.anchors])
        net = RouteNetwork(
            [
                prune_anchor(model.anchors[a], route_pieces(model.anchors[a], i, len(segments), start, stop))
                for i, (a, start, stop) in enumerate(segments)
            ],
            [fold_stitching_layer(model.stitch_layers[i]) for i in cfg.layers],
            [(start, stop) for _, start, stop in segments],
            spec=spec,
            final_norm=model.stitch_final_norm(cfg),
        )
    else:
        (front, back), (j, l) = cfg.anchors, cfg.positions[0]
        front_adapter, back_adapter = model.anchors[front], model.anchors[back]
        net = StitchedNetwork(
            prune_anchor(front_adapter, set(path_pieces(front_adapter, cfg.stage, j, "front"))),
            fold_stitching_layer(model.stitch_layers[cfg.layer]),
            prune_anchor(back_adapter, set(path_pieces(back_adapter, cfg.stage, l, "back"))),
            stage=cfg.stage,
            position=(j, l),
            spec=spec,
            final_norm=model.stitch_final_norm(cfg),
        )
    return net.train(model.training)


def prune_anchor(adapter: AnchorAdapter, keep: set[str]) -> AnchorAdapter:
    """A deep copy of `adapter` holding only the pieces in `keep` ('embed', 'enter.s', 'block.s.i', 'finish').

    Nothing off the path is copied: a module of a dropped piece is replaced by `nn.Identity` (its
    index in a stage is kept), and when 'embed' is dropped every other stateful module and loose
    parameter outside the kept pieces (patch embedding, class token, position embedding) goes too.
    Stateless modules (dropout, activations, pooling) are kept: they cost nothing and the anchor's
    code may use them.
    """
    piece_of = _piece_modules(adapter)
    holders = {id(m) for m in adapter.model.modules() if any(id(d) in piece_of for d in m.modules())}
    drop_embed = "embed" not in keep
    # Prefilled deepcopy memo: what it maps an original to is used in place of a copy of it.
    memo: dict[int, Any] = {}

    def visit(module: nn.Module) -> None:
        for child in module.children():
            piece = piece_of.get(id(child))
            if piece is not None:
                if piece not in keep:
                    memo[id(child)] = nn.Identity()
            elif id(child) in holders:
                visit(child)
            elif drop_embed and _has_state(child):
                memo[id(child)] = nn.Identity()
        if drop_embed:
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None:
                    memo[id(tensor)] = None

    visit(adapter.model)
    return copy.deepcopy(adapter, memo)


def _network_spec(model: SNNet, cfg: StitchConfig) -> dict[str, Any]:
    """What config.json says of an extracted config: identity, cost, data config and how to rebuild it."""
    cost = model.cost(cfg.id, folded=True)  # LoRA stitching layers are exported folded
    data = model.data_config
    anchors = [model.anchors[a] for a in cfg.anchors]
    spec: dict[str, Any] = {
        "config_id": cfg.id,
        "config_name": cfg.name,
        "kind": cfg.kind,
        "path": model.describe(cfg.id),
        "family": model.family,
        "anchor_names": [a.name for a in anchors],
        "gmacs": cost.gmacs,
        "params": cost.params,
        "num_classes": model.num_classes,
        "input_size": list(model.input_size),
        "mean": list(data.get("mean", ())),
        "std": list(data.get("std", ())),
        "interpolation": data.get("interpolation"),
        "crop_pct": data.get("crop_pct"),
        "crop_mode": data.get("crop_mode"),
        "stage": cfg.stage,
        "position": list(cfg.positions[0]) if cfg.positions else None,
        "final_norm": True if cfg.is_anchor else model.stitch_final_norm(cfg),
        "num_stages": anchors[0].num_stages,
    }
    if not cfg.is_anchor:
        layers = [
            {
                "index": s.index,
                "layout": model.anchors[s.front].layout,
                "out_layout": model.anchors[s.back].layout,
                "in_width": s.in_width,
                "out_width": s.out_width,
            }
            for s in (model.layer_specs[i] for i in cfg.layers)
        ]
        spec["stitch_layer"] = layers[0]
        if cfg.num_hops > 1:  # a multi-hop path: its segments, switches and every stitching layer
            depths = [a.stage_depths[cfg.stage] for a in model.anchors]
            spec["route"] = [[start, stop] for _, start, stop in route_segments(cfg, depths)]
            spec["positions"] = [list(p) for p in cfg.positions]
            spec["stitch_layers"] = layers
    if model.build_spec is not None:
        build = model.build_spec
        spec["anchors"] = [list(build["anchors"][a]) for a in cfg.anchors]
        spec["timm_kwargs"] = dict(build["timm_kwargs"])
        spec["snnet"] = {
            "anchors": [list(a) for a in build["anchors"]],
            "kernel_size": build["kernel_size"],
            "stride": build["stride"],
            "nearest": build["nearest"],
            "rule": build.get("rule", "paper"),
            "lora_r": build.get("lora_r", 0),
            "configs": len(model.configs),
        }
    return spec


def _piece_modules(adapter: AnchorAdapter) -> dict[int, str]:
    """id of every module that is a piece (stage entry, block, final norm/head) -> its piece key."""
    pieces: dict[int, str] = {}
    for s in range(adapter.num_stages):
        for m in adapter.enter_modules(s):
            pieces[id(m)] = f"enter.{s}"
        for i, blk in enumerate(adapter.stage_blocks(s)):
            pieces[id(blk)] = f"block.{s}.{i}"
    for m in adapter.finish_modules():
        pieces[id(m)] = "finish"
    return pieces


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())
