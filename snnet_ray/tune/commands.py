"""`snnet-ray sweep`: a Ray Tune sweep of SN-Net training runs from a sweep preset or YAML file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snnet_ray.tune.config import SweepConfig

__all__ = ["register", "sweep_command", "validate_sweep"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="sweep stitch granularity, anchor sets, learning rates and samplers with Ray Tune",
        description=(
            "Run a Ray Tune sweep: one Ray Train run per trial, ranked by the normalised area under the "
            "accuracy-vs-GMACs Pareto frontier; ASHA stops weak trials on their periodic evaluations."
        ),
    )
    p.add_argument("--config", required=True, help="sweep preset (snnet_ray/presets/sweeps) or YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sweep field (num_samples=8, scheduler.grace_period=500, space.optim.lr={loguniform: [1e-4, 1e-2]}) "
        "or base-experiment field (data.root=DIR, scaling.num_workers=8); repeatable",
    )
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue the sweep of the same name where it stopped")
    p.add_argument("--print-config", action="store_true", help="print the resolved sweep config and exit")
    p.add_argument(
        "--validate",
        action="store_true",
        help="check the sweep and every validation point of its space (anchors, weight files, shards, and the "
        "cluster's capacity when --address or $RAY_ADDRESS names one) without starting trials; exit 1 on problems",
    )
    p.add_argument("--json", action="store_true", help="print the trials and the best one as JSON")
    p.set_defaults(handler=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    import os

    import yaml

    from snnet_ray.tune.config import load_sweep

    try:
        sweep = load_sweep(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        if not args.validate:
            raise
        print(f"preflight: 1 problem(s); nothing was started\n  - sweep config: {err}")
        return 1
    if args.print_config:
        print(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        return 0
    if args.validate:
        return validate_sweep(sweep, args.address)
    from snnet_ray.tune.sweep import check_sweep

    check_sweep(sweep)  # typos and bad values fail here, before Ray starts
    import ray

    from snnet_ray.tune.sweep import run_sweep
    from snnet_ray.tune.text import format_sweep

    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"))
    outcome = run_sweep(sweep, resume=args.resume)
    if args.json:
        json.dump(dataclasses.asdict(outcome), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_sweep(outcome))
    return 0 if outcome.best is not None else 1


def validate_sweep(sweep: SweepConfig, address: str | None) -> int:
    """`sweep --validate`: the sweep's own checks, then every preflight check of each validation point."""
    from snnet_ray.train.commands import connect_if_given
    from snnet_ray.train.preflight import preflight
    from snnet_ray.tune.space import validation_points
    from snnet_ray.tune.sweep import check_sweep

    problems: list[str] = []
    skipped: list[str] = []
    try:
        cfgs = check_sweep(sweep)
    except (ValueError, FileNotFoundError) as err:
        problems.append(f"sweep: {err}")
        cfgs = []
    cluster = connect_if_given(address)
    if cluster is not None:
        skipped.append(f"cluster: {cluster}")
    # Points that differ only in optimizer or sampler settings share every preflight check.
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for point, cfg in zip(validation_points(sweep), cfgs):
        plain = cfg.to_dict()
        key = json.dumps([plain[k] for k in ("model", "data", "eval", "loss", "scaling")], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        where = ", ".join(f"{k}={v}" for k, v in point.items()) or "base"
        report = preflight(cfg, check_cluster=cluster is None)
        for p in report.problems:
            found.setdefault(str(p), []).append(where)
    for message, points in found.items():
        more = f" and {len(points) - 1} more" if len(points) > 1 else ""
        problems.append(f"{message} (sweep point {points[0]}{more})")
    if cfgs and cluster is None:
        import ray

        from snnet_ray.tune.concurrency import derive_max_concurrent_trials

        try:
            derive_max_concurrent_trials(ray.cluster_resources(), [c.scaling for c in cfgs],
                                         trial_cpus=sweep.trial_cpus, num_trials=sweep.num_trials,
                                         given=sweep.max_concurrent_trials)
        except ValueError as err:
            problems.append(f"cluster: {err}")
    if problems:
        print(f"preflight: {len(problems)} problem(s); nothing was started")
        print("\n".join(f"  - {p}" for p in problems))
    else:
        print(f"preflight: every check passed for {len(seen)} distinct sweep point(s)")
    for s in skipped:
        print(f"  (skipped: {s})")
    return 1 if problems else 0
