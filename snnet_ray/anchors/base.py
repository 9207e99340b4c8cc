"""The anchor view: one interface over every timm family that SN-Net stitches.

SN-Net (Pan et al., CVPR 2023) cuts pretrained *anchors* at block boundaries. Every family is seen
the same way, so the stitcher never asks which family it holds:

    embed(x) -> for each stage s: enter(s) -> blocks[s][0..D_s-1] -> finish(x) -> logits

`enter(s)` is whatever changes resolution or width at the start of stage s (Swin's
`PatchMerging`, a ResNet stage's first, strided block); inside a stage every block keeps the
stage's shape, which is what makes a cut between any two of them stitchable. Adapters register
themselves for a timm model class (`@register_family(VisionTransformer)`), as timm registers models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn

__all__ = ["AnchorAdapter", "adapter_for", "list_families", "register_family"]

_FAMILIES: dict[type[nn.Module], type[AnchorAdapter]] = {}


def register_family(*model_classes: type[nn.Module]) -> Callable[[type[AnchorAdapter]], type[AnchorAdapter]]:
    """Class decorator: make `adapter_cls` the view of these timm model classes (and subclasses)."""

    def wrap(adapter_cls: type[AnchorAdapter]) -> type[AnchorAdapter]:
        for model_cls in model_classes:
            _FAMILIES[model_cls] = adapter_cls
        return adapter_cls

    return wrap


def list_families() -> list[str]:
    """Names of the registered families (e.g. 'vit', 'swin', 'resnet')."""
    return sorted({cls.family for cls in _FAMILIES.values()})


def adapter_for(model: nn.Module) -> type[AnchorAdapter]:
    """The adapter class registered for this model's class (nearest base class wins)."""
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    supported = ", ".join(f"{c.__module__}.{c.__name__}" for c in _FAMILIES)
    raise ValueError(
        f"no stitching adapter for {type(model).__name__}; supported timm classes: {supported}. "
        "Add one with @register_family in snnet_ray/anchors/."
    )


class AnchorAdapter(nn.Module):
    """A timm model seen as embed -> stages (enter + blocks) -> finish.

    Subclasses set `family` and `layout` and implement the family-specific methods; the
    generic `forward_until` / `forward_from` give the front and back halves of a stitch.
    The wrapped timm model is `self.model`, so its state-dict keys keep timm's names.
    """

    family: ClassVar[str] = ""
    layout: ClassVar[str] = "tokens"
    """Activation layout at a cut: 'tokens' (B, N, C), 'nhwc' (B, H, W, C) or 'nchw' (B, C, H, W)."""
    v1_stitch_final_norm: ClassVar[bool] = True
    """Whether the official SN-Net (v1) code runs this family's final norm at the end of a stitched
    path (`final_norm='v1'`). Its DeiT code did not (it ends in `forward_head`); Swin's did."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    # -- family-specific view ------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Stem / patch embedding: image -> the input of stage 0."""
        raise NotImplementedError

    def stage_blocks(self, stage: int) -> Sequence[nn.Module]:
        """The shape-preserving blocks of a stage, in order."""
        raise NotImplementedError

    def enter(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """What runs before the blocks of `stage` (downsampling); identity by default."""
        return x

    def enter_modules(self, stage: int) -> list[nn.Module]:
        """The modules `enter(stage)` runs (for parameter counts)."""
        return []

    def finish(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Final norm (skipped with `norm=False`), pooling and classifier head: last stage output -> logits."""
        raise NotImplementedError

    def finish_modules(self) -> list[nn.Module]:
        """The modules `finish` runs (for parameter counts)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's `forward_features` from the last stage's output: final norm, no pooling or head."""
        return x

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """`features` as a dense (B, C, H, W) map, for dense-prediction heads."""
        if self.layout == "nhwc":
            return features.permute(0, 3, 1, 2)
        if self.layout == "nchw":
            return features
        raise NotImplementedError(f"{type(self).__name__} must say how its {self.layout} features form a map")

    @property
    def stage_widths(self) -> list[int]:
        """Channel width of each stage's blocks."""
        raise NotImplementedError

    def first_back_block(self, stage: int) -> int:
        """First block of `stage` whose input has the stage's width and resolution.

        A back half may start there or later. 0 unless the stage's first block itself
        downsamples (ResNet), in which case its input still has the previous stage's shape.
        """
        return 0

    @property
    def stitch_stages(self) -> list[int]:
        """Stages in which a cut may be placed (Swin/ResNet: all but the last)."""
        return list(range(max(self.num_stages - 1, 1)))

    @property
    def official_stitch_stages(self) -> list[int]:
        """Stages the official SN-Net code stitches for this family (`rule='paper'`)."""
        return self.stitch_stages

    # -- generic --------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of stages, from the model's structure (valid on pruned copies too)."""
        raise NotImplementedError

    @property
    def stage_depths(self) -> list[int]:
        return [len(self.stage_blocks(s)) for s in range(self.num_stages)]

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) the anchor was built for: the patch embedding's image size, else timm's cfg."""
        channels, height, width = (getattr(self.model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            height, width = img_size
        return int(channels), int(height), int(width)

    @property
    def fixed_input_size(self) -> bool:
        """Whether the model only takes `input_size` (a patch embedding with an image size); CNNs take any."""
        return getattr(getattr(self.model, "patch_embed", None), "img_size", None) is not None

    def run_stage(self, stage: int, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks start..stop-1 of a stage (no `enter`)."""
        for block in self.stage_blocks(stage)[start:stop]:
            x = block(x)
        return x

    def forward_until(self, x: torch.Tensor, stage: int, block: int) -> torch.Tensor:
        """Front half of a stitch: embedding and everything up to and including `block` of `stage`."""
        x = self.embed(x)
        for s in range(stage):
            x = self.run_stage(s, self.enter(s, x))
        return self.run_stage(stage, self.enter(stage, x), 0, block + 1)

    def forward_from(self, x: torch.Tensor, stage: int, block: int, norm: bool = True) -> torch.Tensor:
        """Back half of a stitch: `block` of `stage` onwards, later stages, final norm and head."""
        return self.finish(self.run_from(x, stage, block), norm)

    def run_from(self, x: torch.Tensor, stage: int, block: int) -> torch.Tensor:
        """`block` of `stage` onwards and the later stages, without `finish`: the last stage's output."""
        x = self.run_stage(stage, x, block)
        for s in range(stage + 1, self.num_stages):
            x = self.run_stage(s, self.enter(s, x))
        return x

    def run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The whole anchor without `finish`: image -> the last stage's output."""
        return self.run_from(self.enter(0, self.embed(x)), 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole anchor; equals the timm model's own forward."""
        x = self.embed(x)
        for s in range(self.num_stages):
            x = self.run_stage(s, self.enter(s, x))
        return self.finish(x)

    def stage_features(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(input of block 0, outputs of every block) of one stage, for least-squares init.

        The input of block l > 0 is the output of block l - 1.
        """
        x = self.embed(x)
        for s in range(stage):
            x = self.run_stage(s, self.enter(s, x))
        x = self.enter(stage, x)
        entry, outputs = x, []
        for blk in self.stage_blocks(stage):
            x = blk(x)
            outputs.append(x)
        return entry, outputs

    # -- pieces, for costs ---------------------------------------------------------------------
    def piece_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by piece: 'embed', 'enter.s', 'block.s.i', 'finish'.

        'embed' is everything not claimed by another piece (patch embedding, tokens, position
        embeddings), so every parameter of the model belongs to exactly one piece.
        """
        pieces: dict[str, list[nn.Parameter]] = {}
        claimed: set[int] = set()

        def take(key: str, modules: Sequence[nn.Module]) -> None:
            params = [p for m in modules for p in m.parameters() if id(p) not in claimed]
            claimed.update(id(p) for p in params)
            pieces[key] = params

        for s in range(self.num_stages):
            take(f"enter.{s}", self.enter_modules(s))
            for i, blk in enumerate(self.stage_blocks(s)):
                take(f"block.{s}.{i}", [blk])
        take("finish", self.finish_modules())
        pieces["embed"] = [p for p in self.model.parameters() if id(p) not in claimed]
        return pieces

    def blocks(self) -> Iterator[tuple[int, int, nn.Module]]:
        """Every (stage, index, block) in execution order."""
        for s in range(self.num_stages):
            for i, blk in enumerate(self.stage_blocks(s)):
                yield s, i, blk
