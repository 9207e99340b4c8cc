"""`snnet-ray train`: train an SN-Net on Ray from a preset or YAML file with overrides."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snnet_ray.train.config import ExperimentConfig

__all__ = ["add_train_arguments", "connect_if_given", "register", "train_command", "validate_command"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an SN-Net with Ray Train + DeepSpeed",
        description="Train an SN-Net from a preset (snnet_ray/presets) or a YAML file, with KEY=VALUE overrides.",
    )
    add_train_arguments(p)
    p.set_defaults(handler=train_command)

    p = subparsers.add_parser(
        "pretrain-anchors",
        help="train a config's anchors from scratch (the demo's stand-in for pretrained weights)",
        description=(
            "Train each anchor of a config on its shards (plain AdamW, cosine) and save safetensors files; "
            "files from an earlier run with the same anchors, data and recipe are reused. Prints the files "
            "as a YAML list for --set model.pretrained=..."
        ),
    )
    p.add_argument("--config", required=True, help="preset name or YAML file (its model and data sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="directory for the weight files")
    p.add_argument("--epochs", type=int, default=6)
    p.set_defaults(handler=_pretrain_anchors)


def add_train_arguments(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """The flags of `snnet-ray train` (shared by jobs/train_*.py)."""
    p.add_argument(
        "--config",
        default=default_config,
        required=default_config is None,
        help="preset name (tiny_digits, deit_ti_s_b_imagenet, swin_ti_s_b_imagenet) or YAML file",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-4 --set scaling.num_workers=8 (repeatable)",
    )
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--local",
        action="store_true",
        help="run without Ray: --nproc workers on this machine under torch.distributed (env:// rendezvous)",
    )
    p.add_argument("--nproc", type=int, default=None, help="workers of --local (default: scaling.num_workers)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--validate",
        action="store_true",
        help="run every check (config, anchors, weight files, shards, teacher, and the cluster's capacity when "
        "--address or $RAY_ADDRESS names one) without starting workers; exit 1 listing the problems",
    )
    p.add_argument("--json", action="store_true", help="print where things went as JSON")


def validate_command(cfg: ExperimentConfig, address: str | None, as_json: bool) -> int:
    """`--validate`: every preflight check, no worker; 0 when all pass, 1 listing the problems."""
    from snnet_ray.train.preflight import preflight

    cluster = connect_if_given(address)
    report = preflight(cfg, check_cluster=cluster is None)
    if cluster is not None:
        report.skipped.append(f"cluster: {cluster}")
    if as_json:
        json.dump({"ok": report.ok, "problems": [str(p) for p in report.problems], "skipped": report.skipped},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(report.format())
    return 0 if report.ok else 1


def connect_if_given(address: str | None) -> str | None:
    """Join the cluster named by `address` or $RAY_ADDRESS (or use the one this process is connected to);
    None when connected, else why the capacity is not checked."""
    import os

    ray_module = sys.modules.get("ray")
    if ray_module is not None and ray_module.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return "capacity not checked: no --address or $RAY_ADDRESS (a local Ray would be started for the run)"
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as err:
            return f"capacity not checked: cannot reach the Ray cluster at {address} ({err})"
    return None


def train_command(args: argparse.Namespace) -> int:
    import os

    import yaml

    from snnet_ray.train.config import load_experiment

    try:
        cfg = load_experiment(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        if not getattr(args, "validate", False):
            raise
        print(f"preflight: 1 problem(s); nothing was started\n  - config: {err}")
        return 1
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if getattr(args, "validate", False):
        return validate_command(cfg, args.address, args.json)
    if getattr(args, "local", False):
        from snnet_ray.train.local import run_local

        outcome = run_local(cfg, args.nproc or cfg.scaling.num_workers)
        return _print_outcome(args, outcome, page_url=None)
    if getattr(args, "nproc", None):
        raise SystemExit("--nproc applies to --local runs; on Ray set scaling.num_workers")
    import ray

    from snnet_ray.train.launch import run_experiment

    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"))
    outcome = run_experiment(cfg)
    return _print_outcome(args, outcome, page_url=outcome.page_url)


def _print_outcome(args: argparse.Namespace, outcome, page_url: str | None) -> int:
    where = {
        "run": outcome.run,
        "checkpoint": outcome.checkpoint,
        "results": outcome.results_url,
        "page": page_url,
    }
    if args.json:
        json.dump(where, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if outcome.table is not None:
        from snnet_ray.results.text import format_table

        print(format_table(outcome.table))
    print(f"\nrun:         {outcome.run}")
    print(f"checkpoint:  {outcome.checkpoint}")
    print(f"results:     {outcome.results_url}")
    if page_url:
        print(f"results page: {page_url}")
    return 0


def _pretrain_anchors(args: argparse.Namespace) -> int:
    from snnet_ray.train.anchor_pretrain import AnchorRecipe, ensure_anchor_weights
    from snnet_ray.train.config import load_experiment

    cfg = load_experiment(args.config, args.overrides)
    anchors = [(a, {}) if isinstance(a, str) else a for a in cfg.model.anchors]
    paths = ensure_anchor_weights(anchors, cfg.model.timm_kwargs, cfg.data, args.out, AnchorRecipe(epochs=args.epochs))
    print("[" + ",".join(str(p) for p in paths) + "]")
    return 0
