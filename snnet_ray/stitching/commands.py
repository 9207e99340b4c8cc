"""`snnet-ray stitches`: list the configs of an SN-Net (built on the meta device, no weights)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stitches",
        help="list the configs (stitches) of an SN-Net with their GMACs and params",
        description="List every config of an SN-Net over the given anchors, built without weights.",
    )
    p.add_argument("--anchors", required=True, help="comma-separated timm model names, smallest first")
    p.add_argument("--kernel-size", type=int, default=2, help="sliding-window size over blocks (default 2)")
    p.add_argument("--stride", type=int, default=1, help="window stride (default 1)")
    p.add_argument("--all-pairs", action="store_true", help="stitch every small->large pair, not only neighbours")
    p.add_argument(
        "--rule",
        choices=("paper", "dense", "snnetv2"),
        default="paper",
        help="stitch space: paper (SN-Net v1, default), dense, or snnetv2 (two-way stitching and round trips)",
    )
    p.add_argument("--lora-r", type=int, default=0, help="rank of SN-Netv2's LoRA stitching layers (0: plain)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the anchors')")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the anchors')")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=_stitches)


def _stitches(args: argparse.Namespace) -> int:
    from snnet_ray.stitching.snnet import SNNet

    timm_kwargs = {}
    if args.img_size:
        timm_kwargs["img_size"] = args.img_size
    if args.num_classes is not None:
        timm_kwargs["num_classes"] = args.num_classes
    model = SNNet.from_timm(
        args.anchors,
        kernel_size=args.kernel_size,
        stride=args.stride,
        nearest=not args.all_pairs,
        device="meta",
        rule=args.rule,
        lora_r=args.lora_r,
        **timm_kwargs,
    )
    rows = []
    for cfg in model.configs:
        cost = model.cost(cfg.id)
        rows.append({**cfg.to_dict(), "path": model.describe(cfg.id), **cost.to_dict()})
    if args.json:
        summary = {
            "anchors": model.anchor_names,
            "family": model.family,
            "kernel_size": model.kernel_size,
            "stride": model.stride,
            "nearest": model.nearest,
            "rule": model.rule,
            "lora_r": model.lora_r,
            "num_configs": len(rows),
            "num_stitch_layers": len(model.stitch_layers),
            "configs": rows,
        }
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    width = max(14, *(len(r["name"]) for r in rows))  # round-trip names are longer
    print(f"{'id':>4}  {'name':<{width}} {'GMACs':>7} {'Mparams':>8}  path")
    for r in rows:
        print(f"{r['id']:>4}  {r['name']:<{width}} {r['gmacs']:>7.2f} {r['params'] / 1e6:>8.2f}  {r['path']}")
    gmacs = [r["gmacs"] for r in rows]
    print(
        f"\n{len(rows)} configs ({len(model.anchors)} anchors + {len(rows) - len(model.anchors)} stitches), "
        f"{len(model.stitch_layers)} stitching layers, {min(gmacs):.2f}-{max(gmacs):.2f} GMACs"
    )
    return 0
