"""Synchronous step cost of each stitch sampler: how long ranks wait for the slowest one.

Under synchronous data parallelism a step lasts as long as its most expensive rank. From a
per-config cost table this simulates every sampler of `snnet_ray.train.samplers` on 8 and 64
ranks and reports, over many steps:

- step cost / mean compute: sum over steps of the max rank cost / sum of the mean rank cost
  (1.0 = no waiting). The paper's `uniform` sampling: ~1.45x at 8 ranks, ~1.60x at 64 on the
  H200 DeiT-Ti/S/B table (DESIGN §2). Target for `balanced`: <= 1.05.
- share deviation: the largest relative gap between a config's share of all samples and the
  uniform share 1/N (target for `balanced`: <= 10%; `flops_bucket` deviates by design).
- distinct configs per step (how many configs one step's gradient averages over); `balanced`
  trades it against waiting through `max_spread` (default 0.05; a row with 0.1 shows the trade).

Two cost tables: the H200 train-step times of the 71 DeiT-Ti/S/B configs (bench/data/, measured
for DESIGN §2), and train-step times measured here on this machine's CPU for a tiny DeiT-like
SNNet (embed 32/48/64, depth 4, 32x32 images), every config timed round-robin so noise hits all
alike.

    python bench/sampler_balance.py [--rounds 100] [--measure-steps 7] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from snnet_ray import SNNet
from snnet_ray.train.samplers import build_sampler, list_samplers

H200_TABLE = Path(__file__).parent / "data" / "deit_ti_s_b_h200_step_ms.json"
TINY_ANCHORS = [
    ("vit_tiny_patch16_224", dict(embed_dim=32, depth=4, num_heads=2)),
    ("vit_tiny_patch16_224", dict(embed_dim=48, depth=4, num_heads=3)),
    ("vit_tiny_patch16_224", dict(embed_dim=64, depth=4, num_heads=4)),
]
TINY_KWARGS = dict(img_size=32, patch_size=8, num_classes=10)


def simulate(name: str, costs: list[float], world_size: int, steps: int, **kwargs) -> dict:
    """Run sampler `name` for `steps` steps on `world_size` ranks (seed 0) and measure the waiting."""
    sampler = build_sampler(name, costs, world_size=world_size, seed=0, **kwargs)
    waited = computed = worst = 0.0
    distinct = 0
    counts = [0] * len(costs)
    for step in range(steps):
        ids = sampler.assignment(step)
        step_costs = [costs[i] for i in ids]
        slowest, mean = max(step_costs), sum(step_costs) / world_size
        waited += slowest
        computed += mean
        worst = max(worst, slowest / mean)
        distinct += len(set(ids))
        for i in ids:
            counts[i] += 1
    expected = steps * world_size / len(costs)
    label = name + "".join(f"({v})" for v in kwargs.values())
    return {
        "sampler": label,
        "world_size": world_size,
        "steps": steps,
        "step_cost_ratio": waited / computed,
        "worst_step_ratio": worst,
        "share_deviation": max(abs(c / expected - 1) for c in counts),
        "distinct_per_step": distinct / steps,
    }


def measure_tiny_costs(steps: int, batch: int) -> tuple[list[float], list[str]]:
    """Median train-step ms (forward, backward, AdamW) of every config of a tiny SNNet on this CPU."""
    torch.manual_seed(0)
    model = SNNet.from_timm(TINY_ANCHORS, **TINY_KWARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times: list[list[float]] = [[] for _ in model.configs]
    for rep in range(steps + 1):  # round-robin over configs; the first round warms up
        for cfg in model.configs:
            model.select(cfg.id)
            start = time.perf_counter()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep:
                times[cfg.id].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times], [c.name for c in model.configs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="simulated steps = rounds x number of configs")
    parser.add_argument("--measure-steps", type=int, default=7, help="timed train steps per tiny config")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "sampler_balance.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one rank per core: what a data-parallel worker gets

    h200 = json.loads(H200_TABLE.read_text())["configs"]
    tiny_ms, tiny_names = measure_tiny_costs(args.measure_steps, args.batch)
    tables = {
        "deit_ti_s_b_h200": ([c["step_ms"] for c in h200], [c["config"] for c in h200]),
        "tiny_deit_cpu": (tiny_ms, tiny_names),
    }

    rows = []
    for table, (costs, _) in tables.items():
        steps = args.rounds * len(costs)
        for name, kwargs in [(n, {}) for n in list_samplers()] + [("balanced", {"max_spread": 0.1})]:
            for world_size in (8, 64):
                rows.append({"table": table, **simulate(name, costs, world_size, steps, **kwargs)})

    header = (
        f"{'table':<18} {'sampler':<15} {'ranks':>5} {'step/mean':>9} {'worst':>7} {'share dev':>9} {'distinct':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['table']:<18} {r['sampler']:<15} {r['world_size']:>5} {r['step_cost_ratio']:>9.3f} "
            f"{r['worst_step_ratio']:>7.3f} {r['share_deviation']:>9.1%} {r['distinct_per_step']:>8.1f}"
        )
    for table, (costs, _) in tables.items():
        print(f"{table}: {len(costs)} configs, {min(costs):.2f}-{max(costs):.2f} ms per step")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "cost_tables": {t: dict(zip(names, costs)) for t, (costs, names) in tables.items()},
                "tiny_cost_source": "SNNet train step (forward, backward, AdamW), 1 CPU thread",
                "args": vars(args),
            },
            indent=1,
            default=str,
        )
    )
    (target,) = [
        r for r in rows if (r["table"], r["sampler"], r["world_size"]) == ("deit_ti_s_b_h200", "balanced", 64)
    ]
    print(f"RESULT sync_step_cost_balanced_64 {target['step_cost_ratio']:.3f} target <= 1.05")


if __name__ == "__main__":
    main()
