"""The stitch space: which stitches (configs) an SN-Net holds and which stitching layer each uses.

Positions (SN-Net §3.2, "sliding window"): inside one stage of depth D, a window of
`kernel_size` k consecutive block indices slides with `stride` s over 0..D-1 (windows start at
0, s, 2s, ... < D; the last ones may be cut short by the end of the stage). Every window adds
each ordered pair (j, l) of its indices that no earlier window produced; j may equal or
exceed l. Stitch (j, l) runs the front anchor's embedding and blocks 0..j, a stitching layer,
then the back anchor's blocks l..D-1, later stages, final norm and head. All positions a window
adds share that window's stitching layer; a window that adds nothing adds no layer.
For D=12, k=2, s=1 a pair has 34 positions and 11 layers: DeiT-Ti/S/B -> 3 + 34 + 34 = 71.

Unequal depths: positions are built over the shallower anchor's indices and the deeper
anchor's side is mapped by nearest interpolation of relative depth. A front cut after shallow
block j (relative depth (j+1)/D_s) cuts the deeper front after block round((j+1) D_d/D_s) - 1;
a back start at shallow block l (relative depth l/D_s) starts the deeper back at block
round(l D_d/D_s). Swin-Ti's third stage (6 blocks) against Swin-S's (18): back l -> 3l.

A back half may only start where the stage's width and resolution hold
(`AnchorAdapter.first_back_block`: 1 for a ResNet stage whose first block downsamples);
positions before it are dropped.

Pairs: `nearest=True` joins neighbours in size order only (Ti->S, S->B); `nearest=False` every
ordered pair small->large. The front always comes from the smaller anchor (fast-to-slow).

Config ids are stable: anchors first (0..A-1, smallest first), then for each pair in order
(front, back ascending), each stitched stage in order, the positions in window order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AnchorLayout",
    "StitchConfig",
    "StitchLayerSpec",
    "StitchSpace",
    "anchor_pairs",
    "build_stitch_space",
    "window_positions",
]

Position = tuple[int, int]


@dataclass(frozen=True)
class StitchConfig:
    """One runnable network of the SN-Net: an anchor, or a front->back stitch.

    `positions` holds (j, l) in the anchors' own block indices of `stage`: the front runs up to
    and including block j, the back starts at block l. Anchors have no positions.
    """

    id: int
    name: str
    anchors: tuple[int, ...]
    stage: int | None = None
    positions: tuple[Position, ...] = ()
    layer: int | None = None

    @property
    def is_anchor(self) -> bool:
        return len(self.anchors) == 1

    @property
    def kind(self) -> str:
        return "anchor" if self.is_anchor else "stitch"

    def describe(self, anchor_names: Sequence[str], stage_depths: Sequence[Sequence[int]] | None = None) -> str:
        """Human-readable path, e.g. 'deit_tiny[0..3] -> L2 -> deit_small[4..11]'."""
        if self.is_anchor:
            return anchor_names[self.anchors[0]]
        (front, back), (j, l) = self.anchors, self.positions[0]
        stage = f"s{self.stage}:" if stage_depths and len(stage_depths[back]) > 1 else ""
        end = f"{stage_depths[back][self.stage] - 1}" if stage_depths else "end"
        return f"{anchor_names[front]}[{stage}0..{j}] -> L{self.layer} -> {anchor_names[back]}[{stage}{l}..{end}]"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "anchors": list(self.anchors),
            "stage": self.stage,
            "positions": [list(p) for p in self.positions],
            "layer": self.layer,
        }


@dataclass(frozen=True)
class StitchLayerSpec:
    """One stitching layer: front -> back anchor, in `stage`, shared by `positions`."""

    index: int
    front: int
    back: int
    stage: int
    window: int
    in_width: int
    out_width: int
    positions: tuple[Position, ...]


@dataclass(frozen=True)
class AnchorLayout:
    """What the stitch space needs to know of an anchor: its stages' depths and widths."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stitch_stages: tuple[int, ...]
    first_back_blocks: tuple[int, ...]


@dataclass(frozen=True)
class StitchSpace:
    configs: list[StitchConfig]
    layers: list[StitchLayerSpec]


def window_positions(depth: int, kernel_size: int, stride: int) -> list[list[Position]]:
    """New positions added by each sliding window over block indices 0..depth-1."""
    seen: set[Position] = set()
    windows = []
    for start in range(0, depth, stride):
        ids = range(start, min(start + kernel_size, depth))
        new = [(j, l) for j in ids for l in ids if (j, l) not in seen]
        seen.update(new)
        windows.append(new)
    return windows


def anchor_pairs(num_anchors: int, nearest: bool = True) -> list[tuple[int, int]]:
    """(front, back) anchor pairs, smaller anchor in front."""
    if nearest:
        return [(a, a + 1) for a in range(num_anchors - 1)]
    return [(a, b) for a in range(num_anchors) for b in range(a + 1, num_anchors)]


def _nearest(x: float) -> int:
    return math.floor(x + 0.5)


def _map_pair(j: int, l: int, front_depth: int, back_depth: int) -> Position:
    """Map a position built over the shallower depth to both anchors' own indices."""
    shallow = min(front_depth, back_depth)
    if front_depth > shallow:
        j = _nearest((j + 1) * front_depth / shallow) - 1
    if back_depth > shallow:
        l = _nearest(l * back_depth / shallow)
    return j, l


def build_stitch_space(
    layouts: Sequence[AnchorLayout],
    kernel_size: int = 2,
    stride: int = 1,
    nearest: bool = True,
) -> StitchSpace:
    """All configs and stitching layers of an SN-Net over anchors sorted by size."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if len(layouts) < 2:
        raise ValueError(f"SN-Net needs at least two anchors, got {len(layouts)}")
    single_stage = all(len(a.depths) == 1 for a in layouts)

    configs = [StitchConfig(id=i, name=f"anchor{i}", anchors=(i,)) for i in range(len(layouts))]
    layers: list[StitchLayerSpec] = []
    for front, back in anchor_pairs(len(layouts), nearest):
        f, b = layouts[front], layouts[back]
        if len(f.depths) != len(b.depths):
            raise ValueError(f"anchors {front} and {back} have {len(f.depths)} and {len(b.depths)} stages")
        for stage in f.stitch_stages:
            d_front, d_back = f.depths[stage], b.depths[stage]
            shallow = min(d_front, d_back)
            if kernel_size > shallow:
                where = f"stage {stage}" if not single_stage else "the blocks"
                raise ValueError(
                    f"kernel_size={kernel_size} is larger than the depth of {where} "
                    f"(anchors {front}/{back}: {d_front}/{d_back} blocks); use kernel_size <= {shallow}"
                )
            for window, shallow_positions in enumerate(window_positions(shallow, kernel_size, stride)):
                positions = tuple(
                    p
                    for p in (_map_pair(j, l, d_front, d_back) for j, l in shallow_positions)
                    if p[1] >= b.first_back_blocks[stage]
                )
                if not positions:
                    continue
                layer = StitchLayerSpec(
                    index=len(layers),
                    front=front,
                    back=back,
                    stage=stage,
                    window=window,
                    in_width=f.widths[stage],
                    out_width=b.widths[stage],
                    positions=positions,
                )
                layers.append(layer)
                for j, l in positions:
                    prefix = f"{front}-{back}:" if single_stage else f"{front}-{back}:s{stage}:"
                    configs.append(
                        StitchConfig(
                            id=len(configs),
                            name=f"{prefix}{j},{l}",
                            anchors=(front, back),
                            stage=stage,
                            positions=((j, l),),
                            layer=layer.index,
                        )
                    )
    return StitchSpace(configs=configs, layers=layers)
