"""The `paper` stitch rule: the spaces of the official SN-Net code (ziplab/SN-Net), exactly.

Same configs, same ids, same layer sharing as the released checkpoints, so that they load and
their published per-config results line up (`snnet_ray/reference/`):

- **Single-stage anchors (DeiT)**: a window of `kernel_size` blocks slides with `stride`; each
  window adds every new ordered pair (j, l) of its indices, (i, i) and (i + 1, i) included, and
  the positions it adds share its stitching layer. D=12, k=2, s=1: 34 positions, 11 layers per
  pair; DeiT-Ti/S/B 3 + 34 + 34 = 71. With `nearest=False` every small->large pair is stitched
  ((0,1), (0,2), (1,2), in that order) and then every chain of three or more anchors in size
  order (Ti->S->B): a chain takes one position per hop from its pairs' lists, hop h + 1 cutting
  no earlier than hop h entered (j_{h+1} >= l_h), and reuses the pairs' layers. DeiT: 732.
- **Hierarchical anchors (Swin, ResNet)**: only the stages the official code stitches (Swin:
  all but the last; ResNet: layer2 and layer3), stage by stage. Equal stage depths: the same
  window, forward jumps (j < l) only: (i, i + 1) with layer i. Unequal depths d < D (Swin-Ti ->
  Swin-S stage 2, 6 -> 18): m(i) = nearest interpolation of 0..d-1 to D entries (torch's, as
  the official code), positions (m(i), i) for every back block i with m(i) < i, and the k-th
  position uses layer m(k) (the official code zips the position list with m): 17 positions
  sharing 6 layers. Swin-Ti/S/B 3 + 2 + 2 + 17 + 17 = 41; ResNet-18/50 2 + 3 + 5 = 10.
- **Cross-family** (ResNet-18 -> Swin-Ti): the front family decides the stages (1 and 2) and
  the window rule; 2 + 1 + 5 = 8.

Ids: anchors first, then (single stage) pairs in order and chains after them, or (hierarchical)
stage by stage, pairs in order inside a stage, positions in the official order inside a pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

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

__all__ = ["official_pair_positions", "paper_rule", "unpaired_positions"]


def unpaired_positions(front_depth: int, back_depth: int) -> list[tuple[Position, int]]:
    """(position, layer) of a shallower front stage stitched into a deeper back one."""
    ids = torch.arange(front_depth, dtype=torch.float32)[None, None, :]
    mapping = torch.nn.functional.interpolate(ids, back_depth).squeeze().long().tolist()  # nearest
    positions = [(idx, i) for idx in range(front_depth) for i, m in enumerate(mapping) if m == idx and idx < i]
    return [(p, mapping[k]) for k, p in enumerate(positions)]


def official_pair_positions(
    f: AnchorLayout, b: AnchorLayout, stage: int, opts: RuleOptions, where: tuple[int, int, bool]
) -> list[tuple[Position, int]]:
    """(position, layer window) of one pair in one stage, in the official order."""
    front, back, single_stage = where
    d_front, d_back = f.depths[stage], b.depths[stage]
    if d_front == d_back:
        check_kernel(opts.kernel_size, d_front, front, back, stage, single_stage, d_front, d_back)
        windows = window_positions(d_front, opts.kernel_size, opts.stride, backward=f.paper_backward_jumps)
        out, layer = [], 0
        for positions in windows:
            if not positions:
                continue  # the official code numbers only windows that add positions
            out += [(p, layer) for p in positions]
            layer += 1
    elif d_front < d_back:
        out = unpaired_positions(d_front, d_back)
    else:
        raise ValueError(
            f"rule='paper' (the official SN-Net code) stitches a shallower front into a deeper back only; "
            f"anchors {front}/{back} have {d_front}/{d_back} blocks in stage {stage}: use rule='dense'"
        )
    first = b.first_back_blocks[stage]
    return [(p, w) for p, w in out if p[1] >= first]


def _add_pair(space: SpaceBuilder, front: int, back: int, stage: int, items: list[tuple[Position, int]]) -> list:
    """Layers (one per official window) and configs of one pair; returns [(position, layer index)]."""
    by_window: dict[int, list[Position]] = {}
    for p, w in items:
        by_window.setdefault(w, []).append(p)
    layer_of = {w: space.add_layer(front, back, stage, w, ps) for w, ps in sorted(by_window.items())}
    placed = [(p, layer_of[w]) for p, w in items]
    for p, layer in placed:
        space.add_config((front, back), stage, (p,), (layer,))
    return placed


@register_rule("paper")
def paper_rule(layouts: Sequence[AnchorLayout], opts: RuleOptions) -> StitchSpace:
    """The official SN-Net space over anchors in size order."""
    space = SpaceBuilder(layouts)
    n = len(layouts)
    if space.single_stage:
        pairs = anchor_pairs(n, opts.nearest)
        placed = {}
        for front, back in pairs:
            items = official_pair_positions(layouts[front], layouts[back], 0, opts, (front, back, True))
            placed[(front, back)] = _add_pair(space, front, back, 0, items)
        if not opts.nearest:
            for length in range(3, n + 1):
                for chain in itertools.combinations(range(n), length):
                    _add_chains(space, chain, placed)
        return space.build()

    stages = sorted({s for a in layouts for s in a.paper_stages})
    pairs = anchor_pairs(n, opts.nearest)
    for stage in stages:
        for front, back in pairs:
            f, b = layouts[front], layouts[back]
            if stage not in f.paper_stages or stage not in f.stitch_stages:
                continue
            items = official_pair_positions(f, b, stage, opts, (front, back, False))
            _add_pair(space, front, back, stage, items)
    return space.build()


def _add_chains(space: SpaceBuilder, chain: tuple[int, ...], placed: dict) -> None:
    """Configs through every anchor of `chain`: one (position, layer) per hop, j_{h+1} >= l_h."""

    def extend(hop: int, positions: list[Position], layers: list[int]) -> None:
        if hop == len(chain) - 1:
            space.add_config(chain, 0, positions, layers)
            return
        for p, layer in placed[(chain[hop], chain[hop + 1])]:
            if positions and p[0] < positions[-1][1]:
                continue
            extend(hop + 1, [*positions, p], [*layers, layer])

    extend(0, [], [])
