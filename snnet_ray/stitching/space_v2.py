"""The SN-Netv2 stitch space: two-way stitching and round trips (Pan et al., arXiv 2307.00154).

SN-Net v1 only stitches small -> large (fast-to-slow). SN-Netv2 ("Stitched ViTs are Flexible
Vision Backbones") lets a path switch anchors at any interior block boundary, in either direction,
once or twice. For a pair of plain ViTs (S smaller, L larger, one stage each) with depths D_s and
D_l, boundary k (k = 1..D_s-1: after k blocks of the shallower anchor) sits at relative depth
k/D_s; on the deeper anchor it is boundary K(k) = round(k * D_deep / D_shallow). A route is:

    SL   S[0..k)                     -> L[K(k)..D_l)           (v1's direction)
    LS   L[0..K(k))                  -> S[k..D_s)
    LSL  L[0..K(a)) -> S[a..b)       -> L[K(b)..D_l)            a < b
    SLS  S[0..a)    -> L[K(a)..K(b)) -> S[b..D_s)               a < b

then the last anchor's final norm and head. In (j, l) terms (front's last block j, back's first
block l) an SL switch at k is (k-1, K(k)) and an LS switch is (K(k)-1, k); a round trip holds
two such positions. With D_s-1 boundaries a pair has 2 anchors + 2 (D_s-1) one-way configs +
2 C(D_s-1, 2) round trips: DeiT3-S/B (12/12) and DeiT3-S/L, B/L (12/24) all have
2 + 22 + 110 = 134, the official enumeration (which also builds an SL switch after the last
small block, k = D_s, that it never trains or evaluates; it is left out here).

Stitching layers: one per (direction, boundary), shared by every route that switches there in
that direction (an SLS route at (a, b) uses SL layer a and LS layer b). A pair has 2 (D_s-1)
layers, each least-squares initialised from its one-way position.

Several anchors (DeiT3-S/B/L): every pair of `anchor_pairs(nearest)` gets its own space (S/B and
B/L with `nearest=True`, also S/L otherwise), anchors first, then pair by pair in the order
SL, LS, LSL, SLS. Config ids are stable and equal the official ids for one pair, less one above
the skipped config (official id 13 for D_s = 12): `official_v2_id` maps them.

Registered as the stitch rule 'snnetv2' (`SNNet(rule="snnetv2")`, `rule_options={"variants":
("SL", "LS")}` for a subset); its configs are multi-hop `StitchConfig`s (`variant` set), built with
`SpaceBuilder` and run by `SNNet.forward_stitched` like v1's official two-hop configs.

Only single-stage (plain ViT) anchors: the official method stitches DeiT III; Swin and ResNet
change resolution between stages, where a round trip would have to cross it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations, pairwise

from snnet_ray.stitching.space import (
    AnchorLayout,
    RuleOptions,
    SpaceBuilder,
    StitchConfig,
    StitchSpace,
    anchor_pairs,
    register_rule,
)

__all__ = [
    "RULE",
    "V2_VARIANTS",
    "RouteConfig",
    "build_snnetv2_space",
    "official_v2_id",
    "route_segments",
    "snnetv2_rule",
]

RULE = "snnetv2"
"""The rule name under which SNNet and `snnet-ray stitches` build this space."""

V2_VARIANTS = ("SL", "LS", "LSL", "SLS")
"""Route kinds in id order: S = the smaller anchor of the pair, L = the larger."""

Segment = tuple[int, int, int]
"""(anchor, first block, stop block): blocks first..stop-1 of the anchor's single stage."""


RouteConfig = StitchConfig
"""A v2 route is a multi-hop `StitchConfig` (anchors in route order, S, L, S for SLS; one (j, l)
position and one stitching layer per switch) whose `variant` is one of `V2_VARIANTS`."""


def route_segments(cfg: StitchConfig, depths: Sequence[int] | None = None) -> list[Segment]:
    """The (anchor, first block, stop block) segments a config runs, in order (single-stage anchors).

    `depths[a]` is anchor a's block count (the last segment's stop); without it the last stop is None.
    """
    if cfg.is_anchor:
        a = cfg.anchors[0]
        return [(a, 0, depths[a] if depths else None)]
    starts = [0] + [l for _, l in cfg.positions]
    stops = [j + 1 for j, _ in cfg.positions] + [depths[cfg.anchors[-1]] if depths else None]
    return list(zip(cfg.anchors, starts, stops))


def official_v2_id(cfg_id: int, shallow_depth: int = 12) -> int:
    """Official SNNetv2 config id of config `cfg_id` of a single-pair v2 space.

    The official enumeration holds one more SL config (a switch after the last small block, id
    2 + shallow_depth - 1) that it never trains or evaluates; ids above it are one higher there.
    """
    skipped = 2 + shallow_depth - 1
    return cfg_id if cfg_id < skipped else cfg_id + 1


@register_rule(RULE)
def snnetv2_rule(layouts: Sequence[AnchorLayout], opts: RuleOptions) -> StitchSpace:
    """The registry entry: `SNNet(rule='snnetv2', rule_options={'variants': ('SL', 'LS')})`.

    The v2 space has no sliding window: it switches anchors at every block boundary of the
    shallower anchor, so kernel_size/stride must stay at their defaults 2/1.
    """
    if (opts.kernel_size, opts.stride) != (2, 1):
        raise ValueError(
            f"rule='snnetv2' switches anchors at every block boundary and takes no window "
            f"(got kernel_size={opts.kernel_size}, stride={opts.stride}); leave them at 2 and 1"
        )
    unknown = sorted(set(opts.extra) - {"variants"})
    if unknown:
        raise ValueError(f"rule='snnetv2' takes only the rule option 'variants', got {unknown}")
    return build_snnetv2_space(layouts, opts.nearest, tuple(opts.extra.get("variants", V2_VARIANTS)))


def build_snnetv2_space(
    layouts: Sequence[AnchorLayout],
    nearest: bool = True,
    variants: Sequence[str] = V2_VARIANTS,
) -> StitchSpace:
    """All configs and stitching layers of an SN-Netv2 over anchors sorted by size."""
    if len(layouts) < 2:
        raise ValueError(f"SN-Netv2 needs at least two anchors, got {len(layouts)}")
    staged = [i for i, a in enumerate(layouts) if len(a.depths) != 1]
    if staged:
        raise ValueError(
            f"rule='snnetv2' stitches plain ViTs (one stage of blocks), but anchor {staged[0]} has "
            f"{len(layouts[staged[0]].depths)} stages; use rule='paper' for hierarchical families"
        )
    unknown = sorted(set(variants) - set(V2_VARIANTS))
    if unknown or not variants:
        raise ValueError(f"unknown SN-Netv2 route variants {unknown or variants}; choose from {V2_VARIANTS}")

    space = SpaceBuilder(layouts)
    for small, large in anchor_pairs(len(layouts), nearest):
        _add_pair(space, small, large, variants)
    return space.build()


def _add_pair(space: SpaceBuilder, small: int, large: int, variants: Sequence[str]) -> None:
    """Append the stitching layers and the stitched configs of one anchor pair."""
    layouts = space.layouts
    depth = {small: layouts[small].depths[0], large: layouts[large].depths[0]}
    shallow, deep = min(depth.values()), max(depth.values())
    if shallow < 2:
        raise ValueError(
            f"anchors {small}/{large} need at least 2 blocks each to stitch, got {depth[small]}/{depth[large]}"
        )
    boundaries = range(1, shallow)

    def cut(anchor: int, k: int) -> int:
        """Blocks of `anchor` before shallow boundary k (nearest relative depth on the deeper one)."""
        return k if depth[anchor] == shallow else int(k * deep / shallow + 0.5)

    def position(front: int, back: int, k: int) -> tuple[int, int]:
        return cut(front, k) - 1, cut(back, k)

    routes = {
        "SL": ((small, large), [(k,) for k in boundaries]),
        "LS": ((large, small), [(k,) for k in boundaries]),
        "LSL": ((large, small, large), list(combinations(boundaries, 2))),
        "SLS": ((small, large, small), list(combinations(boundaries, 2))),
    }
    wanted = [v for v in V2_VARIANTS if v in variants]
    directions = {hop for v in wanted for hop in pairwise(routes[v][0])}
    layer_of: dict[tuple[int, int, int], int] = {}
    for front, back in ((small, large), (large, small)):
        if (front, back) not in directions:
            continue
        for k in boundaries:
            layer_of[(front, back, k)] = space.add_layer(front, back, 0, k - 1, [position(front, back, k)])
    for variant in wanted:
        route, switch_sets = routes[variant]
        hops = list(pairwise(route))
        for switches in switch_sets:
            positions = tuple(position(f, b, k) for (f, b), k in zip(hops, switches))
            used = tuple(layer_of[(f, b, k)] for (f, b), k in zip(hops, switches))
            space.add_config(route, 0, positions, used, variant=variant)
