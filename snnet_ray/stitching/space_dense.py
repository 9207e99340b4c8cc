"""The `dense` stitch rule: the sliding window over every stitched stage, backward jumps included.

Positions (SN-Net §3.2, "sliding window"): inside one stage of depth D, a window of
`kernel_size` k consecutive block indices slides with `stride` s over 0..D-1 (windows start at
0, s, 2s, ... < D; the last ones may be cut short by the end of the stage). Every window adds
each ordered pair (j, l) of its indices that no earlier window produced; j may equal or exceed
l. All positions a window adds share that window's stitching layer; a window that adds nothing
adds no layer. For D=12, k=2, s=1 a pair has 34 positions and 11 layers: DeiT-Ti/S/B -> 71, the
same space as the `paper` rule; Swin-Ti/S/B -> 87 (the official code keeps 41 of them).

Unequal depths: positions are built over the shallower anchor's indices and the deeper anchor's
side is mapped by nearest interpolation of relative depth. A front cut after shallow block j
(relative depth (j+1)/D_s) cuts the deeper front after block round((j+1) D_d/D_s) - 1; a back
start at shallow block l (relative depth l/D_s) starts the deeper back at block round(l D_d/D_s).
Swin-Ti's third stage (6 blocks) against Swin-S's (18): back l -> 3l.

A back half may only start where the stage's width and resolution hold (`first_back_blocks`:
1 for a ResNet stage whose first block downsamples); positions before it are dropped.

Pairs: `nearest=True` joins neighbours in size order only (Ti->S, S->B); `nearest=False` every
ordered pair small->large, one hop each. Ids: anchors, then per pair, per stage, window order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from snnet_ray.stitching.space import (
    AnchorLayout,
    Position,
    RuleOptions,
    SpaceBuilder,
    StitchSpace,
    anchor_pairs,
    check_kernel,
    register_rule,
    window_positions,
)

__all__ = ["dense_rule"]


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


@register_rule("dense")
def dense_rule(layouts: Sequence[AnchorLayout], opts: RuleOptions) -> StitchSpace:
    """Every window position of every stitched stage of every pair (one hop each)."""
    space = SpaceBuilder(layouts)
    for front, back in anchor_pairs(len(layouts), opts.nearest):
        f, b = layouts[front], layouts[back]
        for stage in f.stitch_stages:
            d_front, d_back = f.depths[stage], b.depths[stage]
            shallow = min(d_front, d_back)
            check_kernel(opts.kernel_size, shallow, front, back, stage, space.single_stage, d_front, d_back)
            for window, shallow_positions in enumerate(window_positions(shallow, opts.kernel_size, opts.stride)):
                positions = tuple(
                    p
                    for p in (_map_pair(j, l, d_front, d_back) for j, l in shallow_positions)
                    if p[1] >= b.first_back_blocks[stage]
                )
                if not positions:
                    continue
                layer = space.add_layer(front, back, stage, window, positions)
                for p in positions:
                    space.add_config((front, back), stage, (p,), (layer,))
    return space.build()
