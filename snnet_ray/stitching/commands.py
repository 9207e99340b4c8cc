"""`snnet-ray stitches`: list the configs of an SN-Net (built on the meta device, no weights).

`snnet-ray import-official --family deit|swin|resnet|resnet_swin --checkpoint F --out DIR`: an
official SN-Net release becomes a saved SNNet (rule 'paper', final norm 'v1').
"""

from __future__ import annotations

import argparse
import json
import sys

from snnet_ray.stitching.space import list_rules

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
        default="paper",
        # the registry's rules (paper, dense, snnetv2, ...); an unknown one is refused by `get_rule`,
        # whose error names the known rules
        metavar="{" + ",".join(list_rules()) + "}",
        help="stitch-space rule: paper (the official SN-Net spaces, default), dense (every window), "
        "snnetv2 (SN-Netv2: two-way stitching and round trips), or any registered",
    )
    p.add_argument("--final-norm", default="always", choices=["always", "v1"], help="final norm on stitched paths")
    p.add_argument("--lora-r", type=int, default=0, help="rank of SN-Netv2's LoRA stitching layers (0: plain)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the anchors')")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the anchors')")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=_stitches)

    p = subparsers.add_parser(
        "import-official",
        help="turn an official SN-Net checkpoint (ziplab/SN-Net releases) into a saved SNNet",
        description="Load an official SN-Net checkpoint (weights only) into the release's SNNet and save it.",
    )
    p.add_argument("--family", required=True, choices=["deit", "swin", "resnet", "resnet_swin"])
    p.add_argument("--checkpoint", required=True, help="the release file, e.g. snnet_deit.pth (or .safetensors)")
    p.add_argument("--out", required=True, help="directory for the saved SNNet (snnet.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=_import_official)


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
        rule=args.rule,
        final_norm=args.final_norm,
        lora_r=args.lora_r,
        device="meta",
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
            "final_norm": model.final_norm,
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


def _import_official(args: argparse.Namespace) -> int:
    from snnet_ray.stitching.official import import_official

    out, report = import_official(args.family, args.checkpoint, args.out)
    summary = {
        "out": str(out),
        "family": args.family,
        "loaded": report.loaded,
        "rebuilt_buffers": len(report.rebuilt_buffers),
        "split_bn_aux": len(report.split_bn_aux),
    }
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(
            f"imported {args.checkpoint}: {report.loaded} tensors loaded, {len(report.rebuilt_buffers)} buffers "
            f"rebuilt by timm, {len(report.split_bn_aux)} split-BN auxiliary tensors unused -> {out}"
        )
    return 0
