"""Stitch samplers: which config (stitch or anchor) each rank trains at each step.

SN-Net (Pan et al., CVPR 2023) trains all configs of the network jointly: every iteration samples
one config and runs only its path. The paper samples uniformly over all configs, anchors included,
independently on every rank. Under synchronous data parallelism a step waits for the slowest
rank, and configs differ ~3x in cost (DeiT-Ti/S/B: 18-52 ms per step on an H200), so independent
sampling makes a step cost ~1.45x the mean compute at 8 ranks and ~1.60x at 64 (DESIGN §2).

    sampler = build_sampler("balanced", costs, world_size=8, rank=3, seed=0)
    cfg_id = sampler.sample(step)      # same answer for (seed, step, rank) in every run

Samplers (`list_samplers()`):

- `uniform`: the paper; each rank draws independently and uniformly over all configs.
- `flops_bucket`: choose a cost bucket (equal-width intervals of the cost range) uniformly, then
  a config inside it; independent per rank.
- `resource_constrained`: SN-Netv2's own sampling (arXiv 2307.00154): configs sorted by GMACs are
  grouped greedily, a group holding every config within `flops_gap` (1 GMAC officially) of its
  cheapest; a group is drawn uniformly, then a config in it; independent per rank.
- `balanced`: all ranks train configs of one cost bucket per step (configs sorted by cost,
  grouped so a bucket's costs lie within `max_spread` of each other), so a step waits at most
  `1 + max_spread` times its mean compute; a schedule of rounds gives every config exactly
  `world_size` samples per round of `num_configs` steps, so every config is trained evenly.
- `synchronized`: one config per step on all ranks (a shuffled round of all configs); the
  only sampler ZeRO-3 accepts, since ZeRO-3 gathers parameters module by module.

Every draw derives from (seed, step, rank) alone: ranks never communicate, and a resumed run
continues the same sequence from its step. `step` counts micro-batches (forward/backward
passes), so with gradient accumulation every micro-step draws anew. Each sampler counts the
configs it returned (`counts`); `all_reduce_counts` sums them over ranks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "OFFICIAL_FLOPS_GAP",
    "BalancedSampler",
    "FlopsBucketSampler",
    "ResourceConstrainedSampler",
    "SamplerConfig",
    "StitchSampler",
    "SynchronizedSampler",
    "UniformSampler",
    "all_reduce_counts",
    "build_sampler",
    "cost_buckets",
    "flops_gap_groups",
    "is_synchronized",
    "list_samplers",
    "register_sampler",
]

_SAMPLERS: dict[str, type[StitchSampler]] = {}


def register_sampler(name: str) -> Callable[[type[StitchSampler]], type[StitchSampler]]:
    """Class decorator: make a sampler available by `name` (`build_sampler`, configs)."""

    def wrap(cls: type[StitchSampler]) -> type[StitchSampler]:
        cls.name = name
        _SAMPLERS[name] = cls
        return cls

    return wrap


def list_samplers() -> list[str]:
    """Names of the registered samplers."""
    return sorted(_SAMPLERS)


def is_synchronized(name: str) -> bool:
    """Whether sampler `name` gives every rank the same config at each step (ZeRO-3 needs it)."""
    return _sampler_class(name).synchronized


def build_sampler(
    name: str,
    costs: Sequence[float] | Mapping[Hashable, float],
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    **kwargs: Any,
) -> StitchSampler:
    """Build the sampler registered as `name`; `kwargs` go to its constructor (e.g. `max_spread`)."""
    return _sampler_class(name)(costs, world_size=world_size, rank=rank, seed=seed, **kwargs)


@dataclass
class SamplerConfig:
    """Which sampler trains the configs, and its options."""

    name: str = "uniform"
    """One of `list_samplers()`: uniform (paper), flops_bucket (SN-Netv2), balanced, synchronized."""
    seed: int = 0
    """Shared by all ranks; with the step it fixes every draw."""
    max_spread: float = 0.05
    """balanced: a bucket's most expensive config costs at most (1 + max_spread) x its cheapest."""
    num_buckets: int = 10
    """flops_bucket: equal-width cost intervals."""
    flops_gap: float = 1.0
    """resource_constrained: a group holds the configs within this many GMACs of its cheapest."""

    def __post_init__(self) -> None:
        _sampler_class(self.name)
        if self.max_spread < 0:
            raise ValueError(f"sampler.max_spread must be >= 0, got {self.max_spread}")
        if self.num_buckets < 1:
            raise ValueError(f"sampler.num_buckets must be >= 1, got {self.num_buckets}")
        if not (math.isfinite(self.flops_gap) and self.flops_gap >= 0):
            raise ValueError(f"sampler.flops_gap must be a finite number of GMACs >= 0, got {self.flops_gap}")

    def build(
        self, costs: Sequence[float] | Mapping[Hashable, float], world_size: int = 1, rank: int = 0
    ) -> StitchSampler:
        kwargs: dict[str, Any] = {}
        if self.name == "balanced":
            kwargs["max_spread"] = self.max_spread
        elif self.name == "flops_bucket":
            kwargs["num_buckets"] = self.num_buckets
        elif self.name == "resource_constrained":
            kwargs["flops_gap"] = self.flops_gap
        return build_sampler(self.name, costs, world_size=world_size, rank=rank, seed=self.seed, **kwargs)


class StitchSampler:
    """Base class: maps (seed, step, rank) to a config id, counts what it returned.

    Args:
        costs: cost of each config (GMACs or measured ms): a sequence (ids 0..N-1) or a mapping
            from config id to cost (ids in the mapping's order).
        world_size: number of data-parallel ranks.
        rank: this rank.
        seed: shared by all ranks.

    Subclasses implement `_assign(step)`: the config index of every rank at `step`.
    """

    name: ClassVar[str] = ""
    synchronized: ClassVar[bool] = False
    """True when every rank runs the same config at each step."""

    def __init__(
        self,
        costs: Sequence[float] | Mapping[Hashable, float],
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if isinstance(costs, Mapping):
            self.config_ids: list[Hashable] = list(costs)
            values = [float(costs[k]) for k in self.config_ids]
        else:
            values = [float(c) for c in costs]
            self.config_ids = list(range(len(values)))
        if not values:
            raise ValueError("costs is empty: the sampler needs the cost of every config")
        bad = [(i, c) for i, c in zip(self.config_ids, values) if not (math.isfinite(c) and c > 0)]
        if bad:
            raise ValueError(f"config costs must be positive and finite; got {bad[:5]}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.costs = values
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self._counts = [0] * len(values)

    @property
    def num_configs(self) -> int:
        return len(self.costs)

    def sample(self, step: int) -> Hashable:
        """Config id this rank trains at `step` (counted in `counts`)."""
        index = self._assign(step)[self.rank]
        self._counts[index] += 1
        return self.config_ids[index]

    def assignment(self, step: int) -> list[Hashable]:
        """Config id of every rank at `step` (nothing counted; for simulation and tests)."""
        return [self.config_ids[i] for i in self._assign(step)]

    @property
    def counts(self) -> list[int]:
        """Samples this rank returned per config, in `config_ids` order."""
        return list(self._counts)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state, independent of the world size: counts summed over all ranks.

        Call on every rank at once (the sum is a collective, see `all_reduce_counts`)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "num_configs": self.num_configs,
            "counts": all_reduce_counts(self._counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counts of the whole job (rank 0 holds them, so a sum over ranks gives them back
        on any world size); refuse a state whose sequence would differ from this sampler's."""
        for key in ("name", "seed", "num_configs"):
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this run has {key}={mine!r}; "
                    "resume with the same sampler, seed and SN-Net as the checkpoint"
                )
        counts = [int(c) for c in state["counts"]]
        if len(counts) != self.num_configs or min(counts, default=0) < 0:
            raise ValueError(f"sampler state has {len(counts)} counts for {self.num_configs} configs")
        self._counts = counts if self.rank == 0 else [0] * self.num_configs

    def _assign(self, step: int) -> Sequence[int]:
        raise NotImplementedError


@register_sampler("uniform")
class UniformSampler(StitchSampler):
    """The paper: every rank draws uniformly over all configs, independently of the others."""

    def _assign(self, step: int) -> list[int]:
        n = self.num_configs
        return [_hash(self.seed, step, r) % n for r in range(self.world_size)]


@register_sampler("flops_bucket")
class FlopsBucketSampler(StitchSampler):
    """A cost bucket uniformly (equal-width GMACs intervals), then a config in it; per rank. An
    equal-width variant of SN-Netv2's idea; `resource_constrained` is SN-Netv2's own grouping.

    Configs in sparse buckets are sampled more often than in `uniform`: that is the method's point
    (every cost range gets equal training), not an imbalance to fix.
    """

    def __init__(self, costs, world_size=1, rank=0, seed=0, num_buckets: int = 10) -> None:
        super().__init__(costs, world_size, rank, seed)
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        lo, hi = min(self.costs), max(self.costs)
        width = (hi - lo) / num_buckets or 1.0
        buckets: dict[int, list[int]] = {}
        for i, c in enumerate(self.costs):
            buckets.setdefault(min(int((c - lo) / width), num_buckets - 1), []).append(i)
        self.buckets = [buckets[b] for b in sorted(buckets)]

    def _assign(self, step: int) -> list[int]:
        out = []
        for r in range(self.world_size):
            bucket = self.buckets[_hash(self.seed, step, r, 1) % len(self.buckets)]
            out.append(bucket[_hash(self.seed, step, r, 2) % len(bucket)])
        return out


OFFICIAL_FLOPS_GAP = 1.0
"""GMACs: SN-Netv2's default `flops_gap` (its configs' FLOPs are fvcore counts, one per multiply-add)."""


@register_sampler("resource_constrained")
class ResourceConstrainedSampler(StitchSampler):
    """SN-Netv2's resource-constrained sampling: a FLOPs group uniformly, then a config in it; per rank.

    Groups come from `flops_gap_groups(costs, flops_gap)`, so `costs` must be GMACs for the
    official gap to mean what it does there. Every compute budget (group) gets the same share of
    training, however many configs crowd into it: SN-Netv2's round trips add ~100 configs near the
    anchors' costs, which uniform sampling would over-train at the expense of the sparse middle.
    """

    def __init__(self, costs, world_size=1, rank=0, seed=0, flops_gap: float = OFFICIAL_FLOPS_GAP) -> None:
        super().__init__(costs, world_size, rank, seed)
        self.flops_gap = float(flops_gap)
        self.groups = flops_gap_groups(self.costs, self.flops_gap)

    def group_ids(self) -> list[list[Hashable]]:
        """The groups as config ids (each sorted by id), cheapest group first."""
        return [sorted(self.config_ids[i] for i in g) for g in self.groups]

    def _assign(self, step: int) -> list[int]:
        out = []
        for r in range(self.world_size):
            group = self.groups[_hash(self.seed, step, r, 3) % len(self.groups)]
            out.append(group[_hash(self.seed, step, r, 4) % len(group)])
        return out


@register_sampler("balanced")
class BalancedSampler(StitchSampler):
    """All ranks train configs of one cost bucket per step; every config gets an even share.

    Configs are sorted by cost and grouped greedily into the fewest buckets whose costs lie within
    `max_spread` of the bucket's cheapest, so a step costs at most `1 + max_spread` times its mean
    compute. Training runs in rounds of `num_configs` steps drawn from (seed, round): a shuffled
    order in which bucket b occupies as many steps as it has configs, and a shuffled order of each
    bucket's configs. The k-th step of bucket b gives rank r the config at position
    (k * world_size + r) mod size(b), so ranks spread evenly over the bucket within a step and every
    config gets exactly `world_size` samples per round.
    """

    def __init__(self, costs, world_size=1, rank=0, seed=0, max_spread: float = 0.05) -> None:
        super().__init__(costs, world_size, rank, seed)
        self.max_spread = float(max_spread)
        self.buckets = cost_buckets(self.costs, self.max_spread)
        self._round: tuple[int, list[tuple[int, int]], list[list[int]]] | None = None

    def _assign(self, step: int) -> list[int]:
        n, w = self.num_configs, self.world_size
        slots, orders = self._round_schedule(step // n)
        bucket, k = slots[step % n]
        order = orders[bucket]
        return [order[(k * w + r) % len(order)] for r in range(w)]

    def _round_schedule(self, round_index: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
        """(bucket, occurrence) per step of the round, and each bucket's config order."""
        if self._round is None or self._round[0] != round_index:
            rng = random.Random(_hash(self.seed, round_index, 7))
            steps = [b for b, members in enumerate(self.buckets) for _ in members]
            rng.shuffle(steps)
            seen = [0] * len(self.buckets)
            slots = []
            for b in steps:
                slots.append((b, seen[b]))
                seen[b] += 1
            orders = [rng.sample(members, len(members)) for members in self.buckets]
            self._round = (round_index, slots, orders)
        return self._round[1], self._round[2]


@register_sampler("synchronized")
class SynchronizedSampler(StitchSampler):
    """One config per step on every rank: rounds of all configs in a shuffled order (seed, round)."""

    synchronized = True

    def __init__(self, costs, world_size=1, rank=0, seed=0) -> None:
        super().__init__(costs, world_size, rank, seed)
        self._round: tuple[int, list[int]] | None = None

    def _assign(self, step: int) -> list[int]:
        n = self.num_configs
        round_index = step // n
        if self._round is None or self._round[0] != round_index:
            self._round = (round_index, random.Random(_hash(self.seed, round_index, 11)).sample(range(n), n))
        return [self._round[1][step % n]] * self.world_size


def cost_buckets(costs: Sequence[float], max_spread: float) -> list[list[int]]:
    """Indices of `costs` grouped into the fewest runs of sorted costs within `max_spread`.

    Greedy from the cheapest config: a bucket takes every following config that costs at most
    (1 + max_spread) x its first; optimal in the number of buckets for points on a line.
    """
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and costs[i] <= costs[buckets[-1][0]] * (1 + max_spread):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def flops_gap_groups(costs: Sequence[float], flops_gap: float) -> list[list[int]]:
    """Indices of `costs` grouped as SN-Netv2 groups its configs by FLOPs.

    Sorted by cost, a group starts at its cheapest config and takes every following config whose
    cost exceeds that first one by at most `flops_gap`; the next config opens a new group. Ties
    keep index order. Unlike `cost_buckets` the gap is absolute (GMACs), not relative.
    """
    if not (math.isfinite(flops_gap) and flops_gap >= 0):
        raise ValueError(f"flops_gap must be a finite number of GMACs >= 0, got {flops_gap}")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and costs[i] - costs[groups[-1][0]] <= flops_gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def all_reduce_counts(counts: Sequence[int], device: Any = None) -> list[int]:
    """Sum per-config counts over all ranks on the worker's device (`collectives.default_device()`
    unless given); the local counts outside a process group."""
    import torch

    from snnet_ray import collectives

    if not collectives.is_distributed():
        return list(counts)
    t = torch.tensor(list(counts), dtype=torch.int64)
    return collectives.all_reduce(t, device=device or collectives.default_device()).tolist()


def _sampler_class(name: str) -> type[StitchSampler]:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(list_samplers())}")
    return _SAMPLERS[name]


_MASK = (1 << 64) - 1


def _hash(*keys: int) -> int:
    """A 64-bit hash of integers (splitmix64 chain): cheap, stateless, identical on every rank."""
    h = 0
    for key in keys:
        z = (h + (key & _MASK) + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        h = z ^ (z >> 31)
    return h
