"""SNNet: one network holding every stitch of a family of anchors (SN-Net, Pan et al. 2023).

    model = SNNet.from_timm(["deit_tiny_patch16_224", "deit_small_patch16_224",
                             "deit_base_patch16_224"], pretrained=[ti, s, b])
    model.configs          # 71 StitchConfig: 3 anchors, then 34 Ti->S and 34 S->B stitches
    model.select(40)       # cheap: only an index changes
    logits = model(x)      # runs the selected path only
    model.cost(40)         # ConfigCost(gmacs=..., params=...)

    model.forward_features(x, 40)  # timm's convention, per config: the backbone's features

`rule="snnetv2"` builds SN-Netv2's space instead (two-way stitching and round trips, see
`space_v2`), and `lora_r > 0` gives its low-rank stitching layers.

The module is single-device and knows nothing of Ray or DeepSpeed; the train package wraps it.
Anchors are kept in size order (MACs); anchors given out of order are sorted and the new order
is logged, because config ids and pairs (Ti->S, S->B) are defined over that order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from snnet_ray.anchors import AnchorAdapter, create_anchors, resolve_anchor_specs
from snnet_ray.anchors.factory import AnchorLike, PretrainedArg
from snnet_ray.stitching.cost import AnchorProfile, ConfigCost, path_pieces, profile_anchor, profile_layer
from snnet_ray.stitching.layers import LoRAStitch, make_stitching_layer
from snnet_ray.stitching.space import AnchorLayout, StitchConfig, StitchLayerSpec, StitchSpace, build_stitch_space
from snnet_ray.stitching.space_v2 import RULE as SNNETV2_RULE
from snnet_ray.stitching.space_v2 import build_snnetv2_space, route_segments

__all__ = ["SNNet"]

log = logging.getLogger(__name__)


class SNNet(nn.Module):
    """Anchors of one family joined by stitching layers; `select` picks the config `forward` runs.

    Args:
        anchors: adapted anchors of one family (any order; kept sorted by MACs).
        kernel_size: sliding-window size over block indices (stitch granularity).
        stride: window stride.
        nearest: pair neighbours in size order only (Ti->S, S->B), else every small->large pair.
        rule: which stitch space: 'paper' (v1 sliding windows) or 'snnetv2' (two-way and round trips).
        lora_r: rank of SN-Netv2's LoRA stitching layers; 0 for plain (fully trained) layers.
        lora_alpha: LoRA scale numerator (update = lora_alpha / lora_r x B A).
    """

    def __init__(
        self,
        anchors: Sequence[AnchorAdapter],
        kernel_size: int = 2,
        stride: int = 1,
        nearest: bool = True,
        rule: str = "paper",
        lora_r: int = 0,
        lora_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        if len({type(a) for a in anchors}) > 1:
            found = ", ".join(f"{a.name} ({a.family})" for a in anchors)
            raise ValueError(f"anchors must be of one family, got {found}")
        input_size = anchors[0].input_size
        profiles = [profile_anchor(a, input_size) for a in anchors]
        order = sorted(range(len(anchors)), key=lambda i: profiles[i].total_macs)
        if order != list(range(len(anchors))):
            log.warning(
                "anchors sorted by size (GMACs): %s",
                ", ".join(f"{anchors[i].name} {profiles[i].total_macs / 1e9:.2f}" for i in order),
            )
        anchors = [anchors[i] for i in order]
        self.anchor_order = order
        """Position in the caller's list of each anchor, in size order."""
        self._profiles: list[AnchorProfile] = [profiles[i] for i in order]
        _check_compatible(anchors, self._profiles)

        self.anchors = nn.ModuleList(anchors)
        self.kernel_size, self.stride, self.nearest = kernel_size, stride, nearest
        self.rule, self.lora_r, self.lora_alpha = rule, int(lora_r), float(lora_alpha)
        self.input_size = input_size
        space = _build_space(
            rule,
            [
                AnchorLayout(
                    depths=tuple(a.stage_depths),
                    widths=tuple(a.stage_widths),
                    stitch_stages=tuple(a.stitch_stages),
                    first_back_blocks=tuple(a.first_back_block(s) for s in range(a.num_stages)),
                )
                for a in anchors
            ],
            kernel_size=kernel_size,
            stride=stride,
            nearest=nearest,
        )
        self.configs: list[StitchConfig] = space.configs
        self.layer_specs: list[StitchLayerSpec] = space.layers
        device = next(anchors[0].parameters()).device
        with torch.device(device):
            self.stitch_layers = nn.ModuleList(
                make_stitching_layer(anchors[s.front].layout, s.in_width, s.out_width, lora_r, lora_alpha)
                for s in space.layers
            )
        self._layer_costs = self._profile_layers()
        # What each layer costs once folded (LoRA merged into a plain layer): export and serving.
        self._folded_layer_costs = self._profile_layers(folded=True) if lora_r else self._layer_costs
        self._selected = 0
        self.build_spec: dict[str, Any] | None = None
        """How `from_timm` built this model (anchors in size order, kwargs): enough to rebuild it."""

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_timm(
        cls,
        anchors: Sequence[AnchorLike] | str,
        kernel_size: int = 2,
        stride: int = 1,
        nearest: bool = True,
        pretrained: PretrainedArg | Sequence[PretrainedArg] | Mapping[str, PretrainedArg] = False,
        device: torch.device | str = "cpu",
        rule: str = "paper",
        lora_r: int = 0,
        lora_alpha: float = 1.0,
        **timm_kwargs: Any,
    ) -> SNNet:
        """Build an SN-Net from timm model names.

        Args:
            anchors: timm names, or (name, kwargs) pairs for custom sizes, or a comma-separated string.
            pretrained: False, True (timm's default source), or weight files: a list with one path
                per anchor or a mapping from anchor name to path (safetensors or torch files).
            device: where to build; 'meta' builds instantly without weights (listing, costs).
            rule, lora_r, lora_alpha: the stitch space and stitching layers (see `SNNet`).
            timm_kwargs: applied to every anchor, e.g. `img_size=32, num_classes=10`.

        Every check (names, family, weight files, window size) runs on the meta device before
        any real model is built or any weight file is read.
        """
        specs = resolve_anchor_specs(anchors, pretrained)
        stitching = dict(rule=rule, lora_r=lora_r, lora_alpha=lora_alpha)
        meta = cls(create_anchors(specs, "meta", **timm_kwargs), kernel_size, stride, nearest, **stitching)
        if str(device) == "meta":
            return meta
        # Build in the size order found on meta, so the real build neither re-sorts nor re-logs.
        sorted_specs = [specs[i] for i in meta.anchor_order]
        model = cls(create_anchors(sorted_specs, device, **timm_kwargs), kernel_size, stride, nearest, **stitching)
        model.anchor_order = meta.anchor_order
        model.build_spec = {
            "anchors": [[s.name, dict(s.kwargs)] for s in sorted_specs],
            "kernel_size": kernel_size,
            "stride": stride,
            "nearest": nearest,
            **stitching,
            "timm_kwargs": dict(timm_kwargs),
        }
        return model

    # -- selecting and running ----------------------------------------------------------------------
    @property
    def selected(self) -> int:
        """Id of the config `forward` runs."""
        return self._selected

    @property
    def selected_config(self) -> StitchConfig:
        return self.configs[self._selected]

    def select(self, cfg_id: int) -> StitchConfig:
        """Make `forward` run config `cfg_id`. Cheap: nothing is allocated or moved."""
        if not 0 <= cfg_id < len(self.configs):
            raise ValueError(f"config id {cfg_id} out of range; this SN-Net has configs 0..{len(self.configs) - 1}")
        self._selected = int(cfg_id)
        return self.configs[cfg_id]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_config(x, self._selected)

    def forward_config(self, x: torch.Tensor, cfg_id: int) -> torch.Tensor:
        """Run config `cfg_id` on `x` (does not change the selection)."""
        cfg = self.configs[cfg_id]
        if cfg.is_anchor:
            return self.anchors[cfg.anchors[0]](x)
        if len(cfg.anchors) > 2:  # SN-Netv2 round trip
            return self.anchors[cfg.anchors[-1]].finish(self._run_route(x, cfg))
        (front, back), (j, l) = cfg.anchors, cfg.positions[0]
        h = self.anchors[front].forward_until(x, cfg.stage, j)
        h = self.stitch_layers[cfg.layer](h)
        return self.anchors[back].forward_from(h, cfg.stage, l)

    def _run_route(self, x: torch.Tensor, cfg: StitchConfig) -> torch.Tensor:
        """A path through any number of anchor segments (single-stage anchors), without `finish`."""
        anchor, _, stop = route_segments(cfg)[0]
        h = self.anchors[anchor].forward_until(x, 0, stop - 1)
        return self.continue_route(self.stitch_layers[cfg.layers[0]](h), cfg.id, finish=False)

    def continue_route(self, h: torch.Tensor, cfg_id: int, finish: bool = True) -> torch.Tensor:
        """Run config `cfg_id` on from the output `h` of its first stitching layer (to logits, or
        to the last stage's output with `finish=False`); one-pass evaluation shares that prefix."""
        cfg = self.configs[cfg_id]
        segments = route_segments(cfg)[1:]
        for i, (anchor, start, stop) in enumerate(segments):
            if i:
                h = self.stitch_layers[cfg.layers[i]](h)
            h = self.anchors[anchor].run_stage(cfg.stage or 0, h, start, stop)
        return self.anchors[cfg.anchors[-1]].finish(h) if finish else h

    # -- the SN-Net as a backbone (timm's forward_features, per config) ------------------------------
    def forward_features(self, x: torch.Tensor, cfg_id: int | None = None) -> torch.Tensor:
        """Features of config `cfg_id` (default: the selected one) before pooling and head.

        timm's convention, of the anchor the path ends in: ViT (B, N, C) tokens after the final norm,
        Swin (B, H, W, C) after the final norm, ResNet (B, C, H, W). Their width is
        `feature_width(cfg_id)`; `forward_feature_map` gives (B, C, H, W) for dense heads.
        """
        cfg = self.configs[self._selected if cfg_id is None else cfg_id]
        last = self.anchors[cfg.anchors[-1]]
        if cfg.is_anchor:
            return last.features(last.run_trunk(x))
        if len(cfg.anchors) > 2:
            return last.features(self._run_route(x, cfg))
        (front, _), (j, l) = cfg.anchors, cfg.positions[0]
        h = self.stitch_layers[cfg.layer](self.anchors[front].forward_until(x, cfg.stage, j))
        return last.features(last.run_from(h, cfg.stage, l))

    def forward_feature_map(self, x: torch.Tensor, cfg_id: int | None = None) -> torch.Tensor:
        """`forward_features` as a dense (B, C, H, W) map (ViT: patch tokens on the patch grid)."""
        cfg = self.configs[self._selected if cfg_id is None else cfg_id]
        return self.anchors[cfg.anchors[-1]].feature_map(self.forward_features(x, cfg.id))

    def feature_width(self, cfg_id: int | None = None) -> int:
        """Channels of config `cfg_id`'s features: the last stage width of the anchor it ends in."""
        cfg = self.configs[self._selected if cfg_id is None else cfg_id]
        return self.anchors[cfg.anchors[-1]].stage_widths[-1]

    # -- description and cost ---------------------------------------------------------------------
    @property
    def anchor_names(self) -> list[str]:
        return [a.name for a in self.anchors]

    @property
    def family(self) -> str:
        return self.anchors[0].family

    @property
    def num_classes(self) -> int:
        return self.anchors[0].num_classes

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config of the anchors (mean, std, interpolation, crop_pct) at their input size."""
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(self.anchors[0].model)
        cfg["input_size"] = tuple(self.input_size)
        return cfg

    def describe(self, cfg_id: int) -> str:
        """The path of a config, e.g. 'deit_tiny[0..3] -> L2 -> deit_small[4..11]'."""
        return self.configs[cfg_id].describe(self.anchor_names, [a.stage_depths for a in self.anchors])

    def _profile_layers(self, folded: bool = False) -> list[tuple[int, int]]:
        """(MACs, params) of every stitching layer, as built or (`folded`) as plain layers."""
        out = []
        for layer, s in zip(self.stitch_layers, self.layer_specs):
            if folded:
                with torch.device("meta"):
                    layer = make_stitching_layer(self.anchors[s.front].layout, s.in_width, s.out_width)
            shape = _with_channels(self._profiles[s.front].stage_shapes[s.stage], s.in_width, self.anchors[0])
            out.append(profile_layer(layer, shape))
        return out

    def cost(self, cfg_id: int, folded: bool = False) -> ConfigCost:
        """GMACs (one image at the anchors' input size) and parameters of the path of `cfg_id`.

        LoRA stitching layers count with their low-rank branch (as trained), or with `folded`
        as the plain layers `export` and `fold_lora` make of them.
        """
        layer_costs = self._folded_layer_costs if folded else self._layer_costs
        cfg = self.configs[cfg_id]
        if cfg.is_anchor:
            p = self._profiles[cfg.anchors[0]]
            return ConfigCost(gmacs=p.total_macs / 1e9, params=p.total_params)
        if len(cfg.anchors) > 2:
            return self._route_cost(cfg, layer_costs)
        (front, back), (j, l) = cfg.anchors, cfg.positions[0]
        pf, pb = self._profiles[front], self._profiles[back]
        keys_f = list(path_pieces(self.anchors[front], cfg.stage, j, "front"))
        keys_b = list(path_pieces(self.anchors[back], cfg.stage, l, "back"))
        layer_macs, layer_params = layer_costs[cfg.layer]
        macs = sum(pf.macs[k] for k in keys_f) + layer_macs + sum(pb.macs[k] for k in keys_b)
        params = sum(pf.params[k] for k in keys_f) + layer_params + sum(pb.params[k] for k in keys_b)
        return ConfigCost(gmacs=macs / 1e9, params=params)

    def _route_cost(self, cfg: StitchConfig, layer_costs: Sequence[tuple[int, int]]) -> ConfigCost:
        """Cost of a multi-segment route: embedding of the first anchor, every segment's blocks,
        every stitching layer, and the last anchor's final norm and head."""
        segments = route_segments(cfg, [a.stage_depths[0] for a in self.anchors])
        keys = [(segments[0][0], "embed"), (segments[-1][0], "finish")]
        keys += [(a, f"block.0.{i}") for a, start, stop in segments for i in range(start, stop)]
        macs = sum(self._profiles[a].macs[k] for a, k in keys) + sum(layer_costs[i][0] for i in cfg.layers)
        params = sum(self._profiles[a].params[k] for a, k in keys) + sum(layer_costs[i][1] for i in cfg.layers)
        return ConfigCost(gmacs=macs / 1e9, params=params)

    def config_modules(self, cfg_id: int) -> list[nn.Module]:
        """The blocks and stitching layer(s) a config runs (for hooks and tests)."""
        cfg = self.configs[cfg_id]
        if cfg.is_anchor:
            return [blk for _, _, blk in self.anchors[cfg.anchors[0]].blocks()]
        if len(cfg.anchors) > 2:
            mods: list[nn.Module] = []
            segments = route_segments(cfg, [a.stage_depths[0] for a in self.anchors])
            for i, (a, start, stop) in enumerate(segments):
                if i:
                    mods.append(self.stitch_layers[cfg.layers[i - 1]])
                mods += list(self.anchors[a].stage_blocks(0)[start:stop])
            return mods
        (front, back), (j, l) = cfg.anchors, cfg.positions[0]
        mods = [blk for s, i, blk in self.anchors[front].blocks() if s < cfg.stage or (s == cfg.stage and i <= j)]
        mods.append(self.stitch_layers[cfg.layer])
        mods += [blk for s, i, blk in self.anchors[back].blocks() if s > cfg.stage or (s == cfg.stage and i >= l)]
        return mods

    # -- parameter groups -------------------------------------------------------------------------
    def anchor_parameters(self) -> Iterator[nn.Parameter]:
        return self.anchors.parameters()

    def stitch_parameters(self) -> Iterator[nn.Parameter]:
        return self.stitch_layers.parameters()

    def fold_lora(self) -> int:
        """Fold every LoRA stitching layer into a plain one in place (serving); returns how many.

        Outputs are unchanged; costs drop to the plain layers' and the build spec says lora_r=0,
        so a model saved afterwards reloads as folded.
        """
        folded = 0
        for i, layer in enumerate(self.stitch_layers):
            if isinstance(layer, LoRAStitch):
                self.stitch_layers[i] = layer.fold()
                folded += 1
        if folded:
            self._layer_costs = self._folded_layer_costs
            self.lora_r = 0
            if self.build_spec is not None:
                self.build_spec["lora_r"] = 0
        return folded

    def extra_repr(self) -> str:
        return (
            f"family={self.family}, anchors={self.anchor_names}, configs={len(self.configs)}, "
            f"stitch_layers={len(self.stitch_layers)}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"nearest={self.nearest}, rule={self.rule}, lora_r={self.lora_r}"
        )


def _build_space(
    rule: str, layouts: Sequence[AnchorLayout], kernel_size: int, stride: int, nearest: bool
) -> StitchSpace:
    """The stitch space of `rule`: SN-Netv2's ('snnetv2') or v1's sliding windows (anything else).

    The v2 space has no window: it switches at every block boundary of the shallower anchor.
    """
    if rule == SNNETV2_RULE:
        if (kernel_size, stride) != (2, 1):
            raise ValueError(
                f"rule='snnetv2' switches anchors at every block boundary and takes no window "
                f"(got kernel_size={kernel_size}, stride={stride}); leave them at 2 and 1"
            )
        return build_snnetv2_space(layouts, nearest=nearest)
    if rule not in ("paper", "dense"):
        raise ValueError(f"unknown stitch rule {rule!r}; choose 'paper', 'dense' or '{SNNETV2_RULE}'")
    return build_stitch_space(layouts, kernel_size=kernel_size, stride=stride, nearest=nearest)


def _with_channels(shape: Sequence[int], channels: int, anchor: AnchorAdapter) -> tuple[int, ...]:
    """An activation shape with its channel dimension set (channels last unless NCHW)."""
    shape = list(shape)
    shape[1 if anchor.layout == "nchw" else -1] = channels
    return tuple(shape)


def _check_compatible(anchors: Sequence[AnchorAdapter], profiles: Sequence[AnchorProfile]) -> None:
    """Anchors must agree on classes and on the spatial shape of every stitched stage."""
    classes = {a.num_classes for a in anchors}
    if len(classes) > 1:
        found = ", ".join(f"{a.name}: {a.num_classes}" for a in anchors)
        raise ValueError(f"anchors disagree on num_classes ({found}); pass num_classes=N for all of them")
    sizes = {a.input_size for a in anchors}
    if len(sizes) > 1:
        found = ", ".join(f"{a.name}: {a.input_size}" for a in anchors)
        raise ValueError(f"anchors disagree on input size ({found}); pass img_size=N for all of them")
    for stage in anchors[0].stitch_stages:
        spatial = {_spatial(p.stage_shapes[stage], a.layout) for a, p in zip(anchors, profiles)}
        if len(spatial) > 1:
            found = ", ".join(
                f"{a.name}: {_spatial(p.stage_shapes[stage], a.layout)}" for a, p in zip(anchors, profiles)
            )
            raise ValueError(
                f"anchors have different token/spatial shapes in stage {stage} ({found}); stitching needs "
                "the same patch size and resolution in every stitched stage"
            )


def _spatial(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    return tuple(shape[2:]) if layout == "nchw" else tuple(shape[1:-1])
