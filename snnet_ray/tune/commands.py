"""`snnet-ray sweep`: a Ray Tune sweep of SN-Net training runs from a sweep preset or YAML file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

__all__ = ["register", "sweep_command"]


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
    p.add_argument("--json", action="store_true", help="print the trials and the best one as JSON")
    p.set_defaults(handler=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    import os

    import yaml

    from snnet_ray.tune.config import load_sweep

    sweep = load_sweep(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        return 0
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
