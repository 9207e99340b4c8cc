"""SNNet: one network holding every stitch of a family of anchors (SN-Net, Pan et al. 2023).

    model = SNNet.from_timm(["deit_tiny_patch16_224", "deit_small_patch16_224",
                             "deit_base_patch16_224"], pretrained=[ti, s, b])
    model.configs          # 71 StitchConfig: 3 anchors, then 34 Ti->S and 34 S->B stitches
                           # (rule="paper", the official spaces; rule="dense": every window)
    model.select(40)       # cheap: only an index changes
    logits = model(x)      # runs the selected path only
    model.cost(40)         # ConfigCost(gmacs=..., params=...)
    model.compile_blocks() # regional torch.compile: every block once, no recompile per config

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
from snnet_ray.anchors.factory import AnchorLike, PretrainedArg, check_families
from snnet_ray.stitching.cost import AnchorProfile, ConfigCost, path_pieces, profile_anchor, profile_layer
from snnet_ray.stitching.layers import LoRAStitch, make_stitching_layer
from snnet_ray.stitching.space import DEFAULT_RULE, AnchorLayout, StitchConfig, StitchLayerSpec, build_stitch_space

__all__ = ["FINAL_NORM_MODES", "SNNet"]

FINAL_NORM_MODES = ("always", "v1")
"""`always`: every path ends with the back anchor's final norm (SN-Netv2, this project's default);
`v1`: as the official SN-Net v1 code, whose DeiT stitched paths skip it (anchors run it)."""

log = logging.getLogger(__name__)


class SNNet(nn.Module):
    """Anchors of one family joined by stitching layers; `select` picks the config `forward` runs.

    Args:
        anchors: adapted anchors of one family (any order; kept sorted by MACs).
        kernel_size: sliding-window size over block indices (stitch granularity).
        stride: window stride.
        nearest: pair neighbours in size order only (Ti->S, S->B), else every small->large pair
            (with rule='paper' on single-stage anchors also the official Ti->S->B two-hop configs).
        rule: the stitch-space rule ('paper': the official code's spaces, 'dense': every window,
            'snnetv2': SN-Netv2's two-way stitching and round trips; see
            `snnet_ray.stitching.space.list_rules()`).
        final_norm: 'always' (every path runs the back anchor's final norm) or 'v1' (official v1:
            DeiT stitched paths skip it; needed to reproduce official v1 checkpoints).
        rule_options: rule-specific options, passed to the rule untouched.
        lora_r: rank of SN-Netv2's LoRA stitching layers; 0 for plain (fully trained) layers.
        lora_alpha: LoRA scale numerator (update = lora_alpha / lora_r x B A).
    """

    def __init__(
        self,
        anchors: Sequence[AnchorAdapter],
        kernel_size: int = 2,
        stride: int = 1,
        nearest: bool = True,
        rule: str = DEFAULT_RULE,
        final_norm: str = "always",
        rule_options: Mapping[str, Any] | None = None,
        lora_r: int = 0,
        lora_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        if final_norm not in FINAL_NORM_MODES:
            raise ValueError(f"final_norm must be one of {', '.join(FINAL_NORM_MODES)}, got {final_norm!r}")
        check_families([a.name for a in anchors], [type(a) for a in anchors])
        # A CNN takes any size; a patch-embedding anchor fixes it (ResNet -> Swin runs at Swin's size).
        fixed = [a.input_size for a in anchors if a.fixed_input_size]
        input_size = fixed[0] if fixed else anchors[0].input_size
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
        self.rule, self.final_norm = rule, final_norm
        self.rule_options = dict(rule_options or {})
        self.lora_r, self.lora_alpha = int(lora_r), float(lora_alpha)
        self.input_size = input_size
        space = build_stitch_space(
            [
                AnchorLayout(
                    depths=tuple(a.stage_depths),
                    widths=tuple(a.stage_widths),
                    stitch_stages=tuple(a.stitch_stages),
                    first_back_blocks=tuple(a.first_back_block(s) for s in range(a.num_stages)),
                    family=a.family,
                    layout=a.layout,
                    official_stages=tuple(a.official_stitch_stages),
                )
                for a in anchors
            ],
            kernel_size=kernel_size,
            stride=stride,
            nearest=nearest,
            rule=rule,
            rule_options=self.rule_options,
        )
        self.configs: list[StitchConfig] = space.configs
        self.layer_specs: list[StitchLayerSpec] = space.layers
        device = next(anchors[0].parameters()).device
        with torch.device(device):
            self.stitch_layers = nn.ModuleList(
                make_stitching_layer(
                    anchors[s.front].layout, s.in_width, s.out_width, anchors[s.back].layout, lora_r, lora_alpha
                )
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
        rule: str = DEFAULT_RULE,
        final_norm: str = "always",
        rule_options: Mapping[str, Any] | None = None,
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
        space_kwargs = dict(
            rule=rule, final_norm=final_norm, rule_options=rule_options, lora_r=lora_r, lora_alpha=lora_alpha
        )
        meta = cls(create_anchors(specs, "meta", **timm_kwargs), kernel_size, stride, nearest, **space_kwargs)
        sorted_specs = [specs[i] for i in meta.anchor_order]
        build_spec = {
            "anchors": [[s.name, dict(s.kwargs)] for s in sorted_specs],
            "kernel_size": kernel_size,
            "stride": stride,
            "nearest": nearest,
            "rule": rule,
            "final_norm": final_norm,
            "rule_options": dict(rule_options or {}),
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "timm_kwargs": dict(timm_kwargs),
        }
        if str(device) == "meta":
            meta.build_spec = build_spec
            return meta
        # Build in the size order found on meta, so the real build neither re-sorts nor re-logs.
        model = cls(create_anchors(sorted_specs, device, **timm_kwargs), kernel_size, stride, nearest, **space_kwargs)
        model.anchor_order = meta.anchor_order
        model.build_spec = build_spec
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
        h = self.anchors[cfg.anchors[0]].forward_until(x, cfg.stage, cfg.positions[0][0])
        return self.forward_stitched(h, cfg)

    def forward_stitched(self, h: torch.Tensor, cfg: StitchConfig, finish: bool = True) -> torch.Tensor:
        """A stitched config from the front anchor's output after its first cut to the logits
        (`finish=False`: to the back anchor's last stage output, before final norm and head).

        The one forward path of every stitched config: v1 one-hop, the official two-hop Ti->S->B
        and SN-Netv2's routes (SL, LS, LSL, SLS) are all paths a_0 -> ... -> a_k.
        """
        for hop in range(1, cfg.num_hops):  # middle anchors of a multi-hop path
            h = self.stitch_layers[cfg.layers[hop - 1]](h)
            start, stop = cfg.positions[hop - 1][1], cfg.positions[hop][0] + 1
            h = self.anchors[cfg.anchors[hop]].run_stage(cfg.stage, h, start, stop)
        h = self.stitch_layers[cfg.layers[-1]](h)
        back = self.anchors[cfg.anchors[-1]]
        if not finish:
            return back.run_from(h, cfg.stage, cfg.positions[-1][1])
        return back.forward_from(h, cfg.stage, cfg.positions[-1][1], norm=self.stitch_final_norm(cfg))

    def stitch_final_norm(self, cfg: StitchConfig) -> bool:
        """Whether stitched config `cfg` runs its back anchor's final norm (see `final_norm`)."""
        return self.final_norm == "always" or self.anchors[cfg.anchors[-1]].v1_stitch_final_norm

    # -- regional compilation -----------------------------------------------------------------------
    def compile_blocks(self, backend: str = "inductor", mode: str | None = None, **options: Any) -> int:
        """Compile every block's `forward` with `torch.compile`, once; returns the number of blocks.

        A whole-model compile specialises on the selected config and recompiles for each one
        (and gives up after dynamo's recompile limit, 8 by default). Per block, a config is just
        another order of calling the same compiled blocks. Dynamo caches graphs per code object
        (`Block.forward`, shared by every block of a family) and, inlining `nn.Module`s, reads the
        block's parameters as inputs, so blocks of one shape share one graph. Two per-instance
        Python values would still split that cache per block (and recompile as configs switch):

        - stochastic depth: timm's `DropPath` keeps its rate, which grows with depth, as a float
          that dynamo guards on - one graph per block. The rates become 0-d buffers here (same
          maths, a tensor input instead of a constant);
        - Swin's shift size (and its attention mask): a real difference in the computation (shifted
          windows or not), so one graph per (stage shape, shift) - two per Swin stage and width.

        The blocks' `forward` is compiled rather than the module (`nn.Module.compile` would trace
        forward hooks too), with static shapes (`dynamic=False`: no dynamic-shape recompile when a
        second width shows up), and dynamo's recompile limit is raised to cover the distinct graphs
        (train and eval modes, with and without gradients). `backend`/`mode`/`options` go to
        `torch.compile` ("eager" or "aot_eager" trace without generating code, for tests).
        """
        import torch._dynamo

        blocks = [blk for anchor in self.anchors for _, _, blk in anchor.blocks()]
        for blk in blocks:
            _tensor_drop_path(blk)
        # per code object: every distinct block shape x shift x (train/eval, grad/no grad), with room
        # for the few batch sizes evaluation adds
        limit = 8 * len({_block_signature(blk) for blk in blocks}) + 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 4 * limit
        )
        for blk in blocks:
            if not getattr(blk, "_snnet_compiled", False):
                blk.forward = torch.compile(blk.forward, backend=backend, mode=mode, dynamic=False, **options)
                blk._snnet_compiled = True
        return len(blocks)

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
        h = self.anchors[cfg.anchors[0]].forward_until(x, cfg.stage, cfg.positions[0][0])
        return last.features(self.forward_stitched(h, cfg, finish=False))

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
        """The anchors' family ('vit', 'swin', ...); cross-family SN-Nets join theirs, e.g. 'resnet+swin'."""
        return "+".join(dict.fromkeys(a.family for a in self.anchors))

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
                    layer = make_stitching_layer(
                        self.anchors[s.front].layout, s.in_width, s.out_width, self.anchors[s.back].layout
                    )
            shape = _with_channels(self._profiles[s.front].stage_shapes[s.stage], s.in_width, self.anchors[s.front])
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
        macs = params = 0
        for a, keys in self._path_pieces(cfg):
            macs += sum(self._profiles[a].macs[k] for k in keys)
            params += sum(self._profiles[a].params[k] for k in keys)
        for layer in cfg.layers:
            macs += layer_costs[layer][0]
            params += layer_costs[layer][1]
        return ConfigCost(gmacs=macs / 1e9, params=params)

    def _path_pieces(self, cfg: StitchConfig) -> list[tuple[int, list[str]]]:
        """(anchor, piece keys) of every anchor a stitched config runs, front to back."""
        front = cfg.anchors[0]
        out = [(front, list(path_pieces(self.anchors[front], cfg.stage, cfg.positions[0][0], "front")))]
        for hop in range(1, cfg.num_hops):
            start, stop = cfg.positions[hop - 1][1], cfg.positions[hop][0]
            out.append((cfg.anchors[hop], [f"block.{cfg.stage}.{i}" for i in range(start, stop + 1)]))
        back = cfg.anchors[-1]
        out.append((back, list(path_pieces(self.anchors[back], cfg.stage, cfg.positions[-1][1], "back"))))
        return out

    def config_modules(self, cfg_id: int) -> list[nn.Module]:
        """The blocks and stitching layer(s) a config runs (for hooks and tests)."""
        cfg = self.configs[cfg_id]
        if cfg.is_anchor:
            return [blk for _, _, blk in self.anchors[cfg.anchors[0]].blocks()]
        mods: list[nn.Module] = []
        for hop, (a, keys) in enumerate(self._path_pieces(cfg)):
            wanted = set(keys)
            mods += [blk for s, i, blk in self.anchors[a].blocks() if f"block.{s}.{i}" in wanted]
            if hop < cfg.num_hops:
                mods.append(self.stitch_layers[cfg.layers[hop]])
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
            f"stitch_layers={len(self.stitch_layers)}, rule={self.rule}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, nearest={self.nearest}, final_norm={self.final_norm}, lora_r={self.lora_r}"
        )


class _TensorDropPath(nn.Module):
    """timm's `DropPath` (stochastic depth per sample) with its rate as a 0-d buffer: the same
    maths, but a compiled block reads the rate as an input instead of guarding on its value."""

    def __init__(self, drop_prob: float, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.register_buffer("drop_prob", torch.tensor(float(drop_prob)), persistent=False)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (torch.rand(shape, device=x.device, dtype=torch.float32) < keep).to(x.dtype)
        if self.scale_by_keep:
            mask = mask / keep.clamp_min(1e-12).to(x.dtype)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={float(self.drop_prob):.3f}"


def _tensor_drop_path(block: nn.Module) -> None:
    """Replace timm `DropPath` modules inside `block` by `_TensorDropPath` (same rate)."""
    from timm.layers import DropPath

    for name, child in list(block.named_children()):
        if isinstance(child, DropPath):
            new = _TensorDropPath(child.drop_prob, getattr(child, "scale_by_keep", True))
            param = next(block.parameters(), None)
            setattr(block, name, new.to(param.device) if param is not None else new)
        else:
            _tensor_drop_path(child)


def _block_signature(block: nn.Module) -> tuple[Any, ...]:
    """What separates compiled graphs of blocks: class, parameter shapes, Swin's shift."""
    shapes = tuple(tuple(p.shape) for p in block.parameters())
    return type(block), shapes, str(getattr(block, "shift_size", None))


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
    sized = [a for a in anchors if a.fixed_input_size] or list(anchors)
    sizes = {a.input_size for a in sized}
    if len(sizes) > 1:
        found = ", ".join(f"{a.name}: {a.input_size}" for a in sized)
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
