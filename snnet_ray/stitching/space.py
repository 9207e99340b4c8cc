"""The stitch space: which stitches (configs) an SN-Net holds and which stitching layer each uses.

A *rule* turns the anchors' layouts into a space. Rules live in a small registry, one rule per
file (`space_paper.py`, `space_dense.py`, SN-Netv2's `space_v2.py`), as timm registers models:

    @register_rule("paper")
    def paper_rule(layouts: Sequence[AnchorLayout], opts: RuleOptions) -> StitchSpace:
        space = SpaceBuilder(layouts)             # anchors become configs 0..A-1
        layer = space.add_layer(front, back, stage, window, positions)
        space.add_config((front, back), stage, positions=((j, l),), layers=(layer,))
        return space.build()

The interface a rule implements:
- input: `layouts`, one `AnchorLayout` per anchor in size order (depths, widths, layout and
  family per stage, what the official code stitches), and `RuleOptions` (kernel_size, stride,
  nearest, and `extra`: rule-specific options passed through from `SNNet.from_timm(rule_options=)`).
- output: a `StitchSpace`: configs with ids 0..n-1 (anchors first), and stitching-layer specs
  (front -> back anchor, stage, widths, the positions whose least-squares solutions it averages).
- a config is a path through anchors `a_0 -> a_1 -> ... -> a_k` inside one stage: hop h cuts
  anchor a_h after block `positions[h][0]` and enters a_{h+1} at block `positions[h][1]`
  through stitching layer `layers[h]`; a middle anchor runs its blocks from the previous hop's
  entry to its own cut. One hop (two anchors) is the SN-Net stitch; SNNet runs any number.
- `SpaceBuilder` assigns ids and layer indices, so every rule numbers things the same way.
A rule module only has to sit in this package with a name starting `space_`: `get_rule` imports
every such module once, so adding a rule never edits this file.

Built-in rules:
- `paper` (default): the official SN-Net code's spaces, ids and layer sharing included
  (space_paper.py): DeiT-Ti/S/B 71, Swin-Ti/S/B 41, ResNet-18/50 10, ResNet-18 -> Swin-Ti 8,
  and with `nearest=False` the official two-hop Ti->S->B configs (DeiT: 732).
- `dense`: the sliding-window rule applied to every stitched stage, backward jumps included,
  unequal depths mapped by relative depth (space_dense.py): Swin-Ti/S/B 87 over the same GMACs.
- `snnetv2`: SN-Netv2's two-way stitching and round trips over plain ViTs (space_v2.py): every
  block boundary, SL/LS one-way and LSL/SLS two-hop routes (`variant`); DeiT3-S/L 134 configs.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AnchorLayout",
    "RuleOptions",
    "SpaceBuilder",
    "StitchConfig",
    "StitchLayerSpec",
    "StitchRule",
    "StitchSpace",
    "anchor_pairs",
    "build_stitch_space",
    "get_rule",
    "list_rules",
    "register_rule",
    "window_positions",
]

Position = tuple[int, int]
DEFAULT_RULE = "paper"


@dataclass(frozen=True)
class StitchConfig:
    """One runnable network of the SN-Net: an anchor, or a path of stitched anchors.

    `positions[h]` is (j, l) of hop h in the anchors' own block indices of `stage`: anchor
    `anchors[h]` runs up to and including block j, `anchors[h + 1]` starts at block l, joined by
    stitching layer `layers[h]`. `layer` is the first hop's layer (all that one-hop code needs).
    Anchors have no positions. `variant` names the route kind where a rule has several (SN-Netv2:
    SL, LS, LSL, SLS); empty otherwise.
    """

    id: int
    name: str
    anchors: tuple[int, ...]
    stage: int | None = None
    positions: tuple[Position, ...] = ()
    layer: int | None = None
    layers: tuple[int, ...] = ()
    variant: str = ""

    def __post_init__(self) -> None:
        # Either field may be given: one-hop callers pass `layer`, multi-hop ones `layers`.
        if not self.layers and self.layer is not None:
            object.__setattr__(self, "layers", (self.layer,))
        if self.layer is None and self.layers:
            object.__setattr__(self, "layer", self.layers[0])

    @property
    def is_anchor(self) -> bool:
        return len(self.anchors) == 1

    @property
    def num_hops(self) -> int:
        return len(self.anchors) - 1

    @property
    def kind(self) -> str:
        return "anchor" if self.is_anchor else "stitch"

    def describe(self, anchor_names: Sequence[str], stage_depths: Sequence[Sequence[int]] | None = None) -> str:
        """Human-readable path, e.g. 'deit_tiny[0..3] -> L2 -> deit_small[4..11]'."""
        if self.is_anchor:
            return anchor_names[self.anchors[0]]
        back = self.anchors[-1]
        stage = f"s{self.stage}:" if stage_depths and len(stage_depths[back]) > 1 else ""
        end = f"{stage_depths[back][self.stage] - 1}" if stage_depths else "end"
        parts, start = [], 0
        for h, (j, l) in enumerate(self.positions):
            parts.append(f"{anchor_names[self.anchors[h]]}[{stage}{start}..{j}] -> L{self.layers[h]}")
            start = l
        parts.append(f"{anchor_names[back]}[{stage}{start}..{end}]")
        return " -> ".join(parts)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "anchors": list(self.anchors),
            "stage": self.stage,
            "positions": [list(p) for p in self.positions],
            "layer": self.layer,
            "layers": list(self.layers),
            **({"variant": self.variant} if self.variant else {}),
        }


@dataclass(frozen=True)
class StitchLayerSpec:
    """One stitching layer: front -> back anchor, in `stage`, least-squares init over `positions`.

    `window` is the layer's index among the layers of its (stage, front, back): the official
    code's `stitch_layers[stage][pair][window]`.
    """

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
    """What a rule needs to know of an anchor: its stages' depths and widths, and its family.

    `official_stages` are the stages the official SN-Net code stitches for this family (ResNet:
    only layer2 and layer3); `backward_jumps` whether its official window rule keeps positions
    with j >= l (DeiT does, Swin and ResNet keep only j < l). None/False: the defaults below.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stitch_stages: tuple[int, ...]
    first_back_blocks: tuple[int, ...]
    family: str = ""
    layout: str = "tokens"
    official_stages: tuple[int, ...] | None = None
    backward_jumps: bool | None = None

    @property
    def paper_stages(self) -> tuple[int, ...]:
        return self.stitch_stages if self.official_stages is None else self.official_stages

    @property
    def paper_backward_jumps(self) -> bool:
        # The official single-stage (DeiT) rule keeps (i, i) and (i + 1, i); hierarchical ones do not.
        return len(self.depths) == 1 if self.backward_jumps is None else self.backward_jumps


@dataclass(frozen=True)
class RuleOptions:
    """Options every rule receives; `extra` carries rule-specific ones (e.g. SN-Netv2's directions)."""

    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StitchSpace:
    configs: list[StitchConfig]
    layers: list[StitchLayerSpec]


StitchRule = Callable[[Sequence[AnchorLayout], RuleOptions], StitchSpace]
_RULES: dict[str, StitchRule] = {}
_DISCOVERED = False


def register_rule(name: str) -> Callable[[StitchRule], StitchRule]:
    """Decorator: make `fn(layouts, options) -> StitchSpace` the rule called `name`."""

    def wrap(fn: StitchRule) -> StitchRule:
        if name in _RULES and _RULES[name] is not fn:
            raise ValueError(f"stitch rule '{name}' is registered twice")
        _RULES[name] = fn
        return fn

    return wrap


def _discover() -> None:
    """Import every `space_*` module of this package once, so each registers its rules."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("space_"):
            importlib.import_module(f"{package}.{info.name}")


def list_rules() -> list[str]:
    """Names of the registered stitch rules."""
    _discover()
    return sorted(_RULES)


def get_rule(name: str) -> StitchRule:
    """The rule registered as `name` (clear error naming the known rules otherwise)."""
    _discover()
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(f"unknown stitch rule '{name}'; known rules: {', '.join(sorted(_RULES))}") from None


def build_stitch_space(
    layouts: Sequence[AnchorLayout],
    kernel_size: int = 2,
    stride: int = 1,
    nearest: bool = True,
    rule: str = DEFAULT_RULE,
    rule_options: Mapping[str, Any] | None = None,
) -> StitchSpace:
    """All configs and stitching layers of an SN-Net over anchors sorted by size, by `rule`."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if len(layouts) < 2:
        raise ValueError(f"SN-Net needs at least two anchors, got {len(layouts)}")
    for a, b in itertools.pairwise(layouts):
        if len(a.depths) != len(b.depths):
            raise ValueError(f"anchors have {len(a.depths)} and {len(b.depths)} stages; stitching needs equal stages")
    fn = get_rule(rule)
    return fn(layouts, RuleOptions(kernel_size, stride, nearest, dict(rule_options or {})))


class SpaceBuilder:
    """Accumulates configs and stitching layers with consecutive ids; anchors come first."""

    def __init__(self, layouts: Sequence[AnchorLayout]) -> None:
        self.layouts = list(layouts)
        self.single_stage = all(len(a.depths) == 1 for a in layouts)
        self.configs = [StitchConfig(id=i, name=f"anchor{i}", anchors=(i,)) for i in range(len(layouts))]
        self.layers: list[StitchLayerSpec] = []

    def add_layer(self, front: int, back: int, stage: int, window: int, positions: Sequence[Position]) -> int:
        """A new stitching layer front -> back in `stage`; returns its index."""
        f, b = self.layouts[front], self.layouts[back]
        spec = StitchLayerSpec(
            index=len(self.layers),
            front=front,
            back=back,
            stage=stage,
            window=window,
            in_width=f.widths[stage],
            out_width=b.widths[stage],
            positions=tuple(positions),
        )
        self.layers.append(spec)
        return spec.index

    def add_config(
        self,
        anchors: Sequence[int],
        stage: int,
        positions: Sequence[Position],
        layers: Sequence[int],
        variant: str = "",
    ) -> int:
        """A new stitched config (one hop per position); returns its id."""
        if len(positions) != len(anchors) - 1 or len(layers) != len(positions):
            raise ValueError("a stitched config needs one position and one layer per hop")
        chain = "-".join(str(a) for a in anchors)
        where = "" if self.single_stage else f"s{stage}:"
        name = f"{chain}:{where}" + ";".join(f"{j},{l}" for j, l in positions)
        cfg = StitchConfig(
            id=len(self.configs),
            name=name,
            anchors=tuple(anchors),
            stage=stage,
            positions=tuple(tuple(p) for p in positions),
            layers=tuple(layers),
            variant=variant,
        )
        self.configs.append(cfg)
        return cfg.id

    def build(self) -> StitchSpace:
        return StitchSpace(configs=self.configs, layers=self.layers)


def window_positions(depth: int, kernel_size: int, stride: int, backward: bool = True) -> list[list[Position]]:
    """New positions added by each sliding window over block indices 0..depth-1.

    Every window adds each ordered pair (j, l) of its indices not produced before; with
    `backward=False` only forward jumps j < l are kept (the official Swin/ResNet rule).
    """
    seen: set[Position] = set()
    windows = []
    for start in range(0, depth, stride):
        ids = range(start, min(start + kernel_size, depth))
        new = [(j, l) for j in ids for l in ids if (j, l) not in seen and (backward or j < l)]
        seen.update(new)
        windows.append(new)
    return windows


def anchor_pairs(num_anchors: int, nearest: bool = True) -> list[tuple[int, int]]:
    """(front, back) anchor pairs, smaller anchor in front."""
    if nearest:
        return [(a, a + 1) for a in range(num_anchors - 1)]
    return [(a, b) for a in range(num_anchors) for b in range(a + 1, num_anchors)]


def check_kernel(kernel_size: int, shallow: int, front: int, back: int, stage: int, single_stage: bool,
                 d_front: int, d_back: int) -> None:  # fmt: skip
    """A window larger than the shallower stage is a user error, named with the fix."""
    if kernel_size > shallow:
        where = f"stage {stage}" if not single_stage else "the blocks"
        raise ValueError(
            f"kernel_size={kernel_size} is larger than the depth of {where} "
            f"(anchors {front}/{back}: {d_front}/{d_back} blocks); use kernel_size <= {shallow}"
        )
