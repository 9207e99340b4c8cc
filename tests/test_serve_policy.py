"""The adaptive serving policy and the latency table, on a simulated clock (no Ray, no model).

A discrete-event replica takes up to `max_batch_images` queued images whenever it is free, asks the
policy for a config at the simulated time, and is busy for the latency table's prediction. What a
user checks: the most accurate config at low load, down the frontier as load rises while the SLO
holds, back to the top after the load falls, no flapping, and every request's own budget respected.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from snnet_ray.serve.latency import LatencyTable
from snnet_ray.serve.policy import FrontierConfig, Pending, PolicyConfig, PolicyState, choose_config

# Three anchors and two stitches: per-image cost grows with accuracy, as on a real frontier.
FRONTIER = [
    FrontierConfig(0, "anchor0", 1.0, 70.0),
    FrontierConfig(5, "0-1:1,1", 2.0, 74.0),
    FrontierConfig(1, "anchor1", 4.0, 78.0),
    FrontierConfig(9, "1-2:1,1", 8.0, 80.0),
    FrontierConfig(2, "anchor2", 16.0, 82.0),
]
# ms = fixed overhead + per image; config i is ~2x config i-1 per image.
TABLE = LatencyTable(
    "sim",
    {c.id: {b: 0.5 + 0.25 * (2**k) * b for b in (1, 2, 4, 8, 16)} for k, c in enumerate(FRONTIER)},
)
SLO_MS = 50.0
RATE_WINDOW_S = 0.5


@dataclass
class Served:
    arrival: float
    finish: float
    config: int


def simulate(arrivals: list[float], policy: PolicyConfig, table: LatencyTable = TABLE) -> tuple[list[Served], list]:
    """Serve `arrivals` (seconds) one batch at a time; returns what each request got, and the levels."""
    queue: list[Pending] = []
    served: list[Served] = []
    levels: list[tuple[float, int]] = []
    state = PolicyState.start(FRONTIER)
    now, i = 0.0, 0
    while i < len(arrivals) or queue:
        if not queue:
            now = max(now, arrivals[i])
        while i < len(arrivals) and arrivals[i] <= now:
            queue.append(Pending(arrival=arrivals[i]))
            i += 1
        batch, queue = queue[: policy.max_batch_images], queue[policy.max_batch_images :]
        recent = sum(1 for t in arrivals[:i] if t > now - RATE_WINDOW_S)
        decision = choose_config(FRONTIER, table.predict, batch, queue, now, state, policy, recent / RATE_WINDOW_S)
        state = decision.state
        levels.append((now, state.level))
        now += table.predict(decision.config.id, len(batch)) / 1e3
        served += [Served(p.arrival, now, decision.config.id) for p in batch]
    return served, levels


def poisson(rate: float, start: float, end: float, rng: random.Random) -> list[float]:
    out, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def attainment(served: list[Served], slo_ms: float = SLO_MS) -> float:
    return sum((s.finish - s.arrival) * 1e3 <= slo_ms for s in served) / len(served)


def test_low_load_serves_the_most_accurate_config():
    served, _ = simulate(poisson(20, 0, 5, random.Random(0)), PolicyConfig(slo_ms=SLO_MS))
    assert {s.config for s in served} == {FRONTIER[-1].id}
    assert attainment(served) == 1.0


def test_steps_down_under_load_holds_the_slo_and_comes_back_after():
    rng = random.Random(1)
    # low, then a load the top config cannot carry (it needs ~4 ms per image), then low again.
    arrivals = poisson(20, 0, 4, rng) + poisson(600, 4, 8, rng) + poisson(20, 8, 14, rng)
    served, _ = simulate(arrivals, PolicyConfig(slo_ms=SLO_MS))
    by_phase = [[s for s in served if lo <= s.arrival < hi] for lo, hi in ((0, 4), (4.5, 8), (10, 14))]
    top = FRONTIER[-1].id
    assert all(s.config == top for s in by_phase[0])
    assert not any(s.config == top for s in by_phase[1]), "the top config ran under a load it cannot carry"
    assert by_phase[2][-1].config == top, "the policy did not step back up after the load fell"
    assert attainment(served) >= 0.99
    # Accuracy served under load beats the cheapest config: it stepped down only as far as needed.
    high = {s.config for s in by_phase[1]}
    assert high - {FRONTIER[0].id}, f"stepped to the bottom under a load the middle configs carry: {high}"


def test_hysteresis_keeps_the_level_from_flapping():
    rng = random.Random(2)
    arrivals = poisson(200, 0, 10, rng)  # steady, near where the top config stops keeping up
    damped, damped_levels = simulate(arrivals, PolicyConfig(slo_ms=SLO_MS))
    _, eager_levels = simulate(arrivals, PolicyConfig(slo_ms=SLO_MS, up_headroom=0.2, up_after=1))

    def changes(levels):
        return sum(a[1] != b[1] for a, b in itertools.pairwise(levels))

    assert changes(damped_levels) * 5 < changes(eager_levels)
    assert changes(damped_levels) <= 10
    assert attainment(damped) >= 0.99


def test_requests_own_budgets_cap_their_batch_but_not_the_level():
    state = PolicyState.start(FRONTIER)
    policy = PolicyConfig(slo_ms=SLO_MS)
    tight = choose_config(FRONTIER, TABLE.predict, [Pending(0.0, max_gmacs=3.0)], [], 0.0, state, policy)
    assert tight.config.id == 5 and tight.reason == "budget"  # the best within 3 GMACs
    assert tight.state.level == len(FRONTIER) - 1, "one request's budget must not lower the load level"
    fast = choose_config(FRONTIER, TABLE.predict, [Pending(0.0, images=8, max_latency_ms=6.0)], [], 0.0, state,
                         policy)
    assert TABLE.predict(fast.config.id, 8) <= 6.0 * (1 - policy.headroom)
    assert fast.config.id == 5  # 8 images: anchor1 needs 8.5 ms, the stitch below it 4.5 ms
    # A request that has already waited most of its budget gets a faster config.
    late = choose_config(FRONTIER, TABLE.predict, [Pending(0.0)], [], 0.035, state, policy)
    assert TABLE.predict(late.config.id, 1) <= (SLO_MS * 0.8 - 35)


def test_overload_runs_the_fastest_config_within_the_budgets():
    queued = [Pending(0.0) for _ in range(400)]
    decision = choose_config(FRONTIER, TABLE.predict, [Pending(0.0)] * 16, queued, 0.0,
                             PolicyState.start(FRONTIER), PolicyConfig(slo_ms=SLO_MS))
    assert decision.reason == "overload" and decision.config.id == FRONTIER[0].id
    assert decision.state.level == 0


def test_policy_rejects_bad_settings_and_empty_inputs():
    with pytest.raises(ValueError, match="slo_ms"):
        PolicyConfig(slo_ms=0)
    with pytest.raises(ValueError, match="headroom"):
        PolicyConfig(headroom=0.5, up_headroom=0.2)
    with pytest.raises(ValueError, match="empty"):
        choose_config([], TABLE.predict, [Pending(0.0)], [], 0.0, PolicyState(0), PolicyConfig())
    with pytest.raises(ValueError, match="at least one"):
        choose_config(FRONTIER, TABLE.predict, [], [], 0.0, PolicyState(0), PolicyConfig())


def test_latency_table_interpolates_extrapolates_and_corrects_online():
    table = LatencyTable("cpu", {3: {1: 2.0, 4: 5.0, 8: 9.0}})
    assert table.predict(3, 4) == 5.0
    assert table.predict(3, 2) == pytest.approx(3.0)
    assert table.predict(3, 16) == pytest.approx(17.0)  # the last segment's slope, 1 ms per image
    assert table.predict(3, 1) == 2.0
    for _ in range(50):  # the replica turns out 2x slower than measured at start-up
        table.observe(3, 4, 10.0)
    assert table.predict(3, 4) == pytest.approx(10.0, rel=0.01)
    for _ in range(50):
        table.observe(3, 4, 1000.0)
    assert table.ratio(3) == 4.0, "the correction is bounded"
    assert table.to_dict()["configs"]["3"]["ms"] == {"1": 2.0, "4": 5.0, "8": 9.0}
    with pytest.raises(ValueError, match="> 0 ms"):
        LatencyTable("cpu", {0: {1: float("nan")}})
    with pytest.raises(ValueError, match="at least one"):
        LatencyTable("cpu", {})
