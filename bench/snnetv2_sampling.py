"""SN-Netv2 resource-constrained sampling: how close each sampler's per-config shares are to the official ones.

SN-Netv2 (arXiv 2307.00154) groups configs greedily by FLOPs (a group holds every config within
1 GFLOP of its cheapest) and draws a group uniformly, then a config in it. The official shares
come from the official FLOPs of DeiT3-S/L's 134 configs (the published results file in
`snnet_ray/results/published/`) grouped the official way; each sampler's shares come from our
own GMACs (`SNNet.cost`, built on the meta device). The figure is the total-variation distance
between the two per-config distributions: 0 means the same training mix as the official code.

    python bench/snnetv2_sampling.py
"""

from __future__ import annotations

import json
from pathlib import Path

from snnet_ray import SNNet
from snnet_ray.results.published_v2 import PUBLISHED_V2, load_published_v2
from snnet_ray.train.samplers import OFFICIAL_FLOPS_GAP, build_sampler, flops_gap_groups

OUT = Path(__file__).parent / "out" / "snnetv2_sampling.json"


def shares(groups: list[list[int]], n: int) -> list[float]:
    """Per-config probability when a group is drawn uniformly, then a config in it."""
    p = [0.0] * n
    for g in groups:
        for i in g:
            p[i] = 1 / len(groups) / len(g)
    return p


def main() -> None:
    spec = PUBLISHED_V2["deit3_s_l"]
    model = SNNet.from_timm(spec["anchors"], rule=spec["rule"], lora_r=spec["lora_r"], device="meta")
    published = load_published_v2("deit3_s_l")
    n = len(published)
    official = shares(flops_gap_groups([r.gmacs for r in published], OFFICIAL_FLOPS_GAP), n)
    costs = [model.cost(c.id).gmacs for c in model.configs]
    rows = []
    for name, kwargs in (
        ("resource_constrained", {"flops_gap": OFFICIAL_FLOPS_GAP}),
        ("flops_bucket", {"num_buckets": 10}),
        ("flops_bucket", {"num_buckets": 13}),
        ("uniform", {}),
    ):
        sampler = build_sampler(name, costs, **kwargs)
        groups = getattr(sampler, "groups", None) or getattr(sampler, "buckets", None) or [list(range(n))]
        p = shares(groups, n) if name != "uniform" else [1 / n] * n
        tv = 0.5 * sum(abs(a - b) for a, b in zip(p, official))
        rows.append({"sampler": name, **kwargs, "groups": len(groups), "tv_distance": tv})
    print(f"{'sampler':<22} {'option':<16} {'groups':>6} {'TV distance to official':>24}")
    for r in rows:
        option = ", ".join(f"{k}={r[k]}" for k in ("flops_gap", "num_buckets") if k in r)
        print(f"{r['sampler']:<22} {option:<16} {r['groups']:>6} {r['tv_distance']:>24.4f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"space": "DeiT3-S/L SN-Netv2, 134 configs", "rows": rows}, indent=1))
    print(f"RESULT snnetv2_sampling_tv_distance {rows[0]['tv_distance']:.4f} target <= 0.01")


if __name__ == "__main__":
    main()
