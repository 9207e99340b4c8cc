"""The adaptive policy of elastic serving: which frontier config runs the next batch.

SN-Net's promise is one network that "instantly adapts to dynamic resource constraints by switching
the stitching positions". Serving keeps that promise per batch: the replica runs the most accurate
config of the served frontier whose predicted service time, added to the time its requests have
already waited, meets the latency SLO and every request's own budget; requests still queued behind
the batch are planned with the same config, so rising load steps the choice down the frontier
before the queue blows the SLO. It steps back up only after `up_after` batches in a row had room
for a better config with extra headroom (hysteresis: no flapping), then to the best such config.

    decision = choose_config(frontier, predict_ms, batch, queued, now, state, PolicyConfig(slo_ms=50))
    decision.config, decision.state     # run this config; keep the state for the next batch

Everything here is a pure function of its arguments (the clock is `now`, in seconds), so the policy
is tested with a simulated clock and a latency table, no Ray and no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

__all__ = ["Decision", "FrontierConfig", "Pending", "PolicyConfig", "PolicyState", "choose_config"]

# predict_ms(config id, images in the batch) -> expected service time in ms on this replica.
LatencyModel = Callable[[int, int], float]


@dataclass(frozen=True)
class FrontierConfig:
    """One config of the served frontier: more accurate means more GMACs."""

    id: int
    name: str
    gmacs: float
    top1: float


@dataclass(frozen=True)
class Pending:
    """A request waiting on the replica: when it arrived (s, policy clock), its images, its budgets."""

    arrival: float
    images: int = 1
    max_gmacs: float | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the policy; the defaults suit a CPU or GPU replica behind Serve's HTTP proxy."""

    slo_ms: float = 50.0
    """Latency objective per request, from its arrival on the replica to its answer."""
    max_batch_images: int = 16
    """Images per batch when planning the queue behind the current batch."""
    headroom: float = 0.2
    """Plan to finish within (1 - headroom) of each deadline: proxy time, decoding, noise."""
    up_headroom: float = 0.4
    """Stepping up needs the next config to fit within (1 - up_headroom) of the deadlines."""
    up_after: int = 4
    """Batches in a row with room for the next config before stepping up to it."""

    def __post_init__(self) -> None:
        if not self.slo_ms > 0:
            raise ValueError(f"slo_ms must be > 0, got {self.slo_ms}")
        if self.max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {self.max_batch_images}")
        if not 0 <= self.headroom <= self.up_headroom < 1:
            raise ValueError(
                f"need 0 <= headroom <= up_headroom < 1, got headroom={self.headroom}, up_headroom={self.up_headroom}"
            )
        if self.up_after < 1:
            raise ValueError(f"up_after must be >= 1, got {self.up_after}")


@dataclass(frozen=True)
class PolicyState:
    """What the policy carries from batch to batch: the frontier level load allows, and the streak."""

    level: int
    """Index into the frontier (least accurate first) of the config the load allows."""
    up_streak: int = 0
    """Batches in a row that had room for level + 1."""

    @classmethod
    def start(cls, frontier: Sequence[FrontierConfig]) -> PolicyState:
        """An idle replica starts at the most accurate config."""
        return cls(level=len(frontier) - 1)


@dataclass(frozen=True)
class Decision:
    config: FrontierConfig
    state: PolicyState
    predicted_ms: float
    """Predicted service time of the batch with `config`."""
    reason: str
    """'slo' (the load level's config), 'budget' (a request's own budget capped it), or 'overload'
    (no config meets every deadline: the fastest one that respects the budgets runs)."""


def choose_config(
    frontier: Sequence[FrontierConfig],
    predict_ms: LatencyModel,
    batch: Sequence[Pending],
    queued: Sequence[Pending],
    now: float,
    state: PolicyState,
    config: PolicyConfig,
    arrival_rate: float = 0.0,
) -> Decision:
    """The config to run `batch` with at time `now`, and the state for the next batch.

    `frontier` is ordered least accurate first; `queued` holds the requests waiting behind the batch
    (any order); `arrival_rate` is the recent arrival rate in images per second. A config fits the
    load when it serves this batch and the queue in time and, at that rate, keeps up in steady state
    (a batch of n images served before n more arrive, and a request that waits one batch and then
    runs in the next still within the SLO). The load level is decided on the SLO alone, so one
    request's tight budget caps its own batch without dragging the level down for later batches.
    """
    if not frontier:
        raise ValueError("the served frontier is empty")
    if not batch:
        raise ValueError("a batch needs at least one request")
    top = len(frontier) - 1
    level = min(max(state.level, 0), top)
    backlog = sorted(queued, key=lambda p: p.arrival)
    slo_only = [replace(p, max_latency_ms=None) for p in batch]
    slo_backlog = [replace(p, max_latency_ms=None) for p in backlog]

    def fits(k: int, requests: Sequence[Pending], slack: float) -> bool:
        # The load level looks at the SLO alone; the batch's own config also at each request's budget.
        behind = slo_backlog if requests is slo_only else backlog
        return _fits(frontier[k].id, predict_ms, requests, behind, now, config, 1.0 - slack) and _keeps_up(
            frontier[k].id, predict_ms, arrival_rate, config, 1.0 - slack
        )

    # 1. The load level, with hysteresis: down at once to the best config that fits; up only once a
    #    better config has fitted with extra room (up_headroom) for `up_after` batches in a row, and
    #    then to the best config that fits with that room now.
    if not fits(level, slo_only, config.headroom):
        below = [k for k in range(level - 1, -1, -1) if fits(k, slo_only, config.headroom)]
        state = PolicyState(level=below[0] if below else 0)
    else:
        up = next((k for k in range(top, level, -1) if fits(k, slo_only, config.up_headroom)), None)
        if up is None:
            state = PolicyState(level=level)
        elif state.up_streak + 1 >= config.up_after:
            state = PolicyState(level=up)
        else:
            state = PolicyState(level=level, up_streak=state.up_streak + 1)

    # 2. This batch: the best config at or below the level that meets every request's own budgets.
    max_gmacs = min((p.max_gmacs for p in batch if p.max_gmacs is not None), default=None)
    allowed = [k for k in range(top + 1) if max_gmacs is None or frontier[k].gmacs <= max_gmacs]
    if not allowed:  # the ingress rejects such budgets; run the cheapest rather than fail the batch
        allowed = [0]
    images = sum(p.images for p in batch)
    for k in sorted((k for k in allowed if k <= state.level), reverse=True):
        if fits(k, batch, config.headroom):
            capped = k < state.level
            reason = "budget" if capped else "slo"
            return Decision(frontier[k], state, predict_ms(frontier[k].id, images), reason)
    # Nothing meets every deadline: serve the fastest allowed config to drain the queue soonest.
    fastest = min(allowed, key=lambda k: (predict_ms(frontier[k].id, images), k))
    return Decision(frontier[fastest], state, predict_ms(frontier[fastest].id, images), "overload")


def _fits(
    cfg_id: int,
    predict_ms: LatencyModel,
    batch: Sequence[Pending],
    backlog: Sequence[Pending],
    now: float,
    config: PolicyConfig,
    factor: float,
) -> bool:
    """Would every request of the batch, and of the queue behind it run with the same config, finish
    within `factor` of its deadline?"""
    done = now + predict_ms(cfg_id, sum(p.images for p in batch)) / 1e3
    if any(done > _deadline(p, config, factor) for p in batch):
        return False
    # The queue in arrival order, in batches of up to max_batch_images images.
    chunk: list[Pending] = []
    for p in [*backlog, None]:
        if p is not None and (not chunk or sum(q.images for q in chunk) + p.images <= config.max_batch_images):
            chunk.append(p)
            continue
        if chunk:
            done += predict_ms(cfg_id, sum(q.images for q in chunk)) / 1e3
            if any(done > _deadline(q, config, factor) for q in chunk):
                return False
        chunk = [p] if p is not None else []
    return True


def _keeps_up(cfg_id: int, predict_ms: LatencyModel, rate: float, config: PolicyConfig, factor: float) -> bool:
    """At `rate` images/s, is there a batch size n whose service time lets n images arrive at most
    (utilisation <= factor) and whose worst steady wait, one batch then its own, meets the SLO?"""
    if rate <= 0:
        return True
    for n in range(1, config.max_batch_images + 1):
        ms = predict_ms(cfg_id, n)
        if rate * ms / 1e3 <= factor * n and 2 * ms <= factor * config.slo_ms:
            return True
    return False


def _deadline(p: Pending, config: PolicyConfig, factor: float) -> float:
    budget = config.slo_ms if p.max_latency_ms is None else min(config.slo_ms, p.max_latency_ms)
    return p.arrival + factor * budget / 1e3
