"""`snnet-ray select` and `snnet-ray export`: pick a config by budget, export it as a standalone model.

    snnet-ray select --run RUN (--max-gmacs G | --max-latency-ms T [--device D]) [--results URL] [--json]
    snnet-ray export (--checkpoint PATH | --run RUN) (--config ID | --max-gmacs G | --max-latency-ms T)
                     --out DIR [--results URL] [--formats safetensors,torch_export,onnx] [--json]

`--results` is a results service URL (http://...) or a database URL / SQLite file; without it
$SNNET_RESULTS_URL. `export --run RUN` without `--checkpoint` exports the saved SN-Net that the run
stores in the results service (runs evaluated with `snnet-ray eval` store it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help="pick the most accurate config of a run under a GMACs or latency budget",
        description="Ask the results service for the most accurate evaluated config within the budget(s).",
    )
    p.add_argument("--run", required=True, metavar="RUN", help="run name in the results service")
    _add_budget(p)
    _add_results(p)
    p.add_argument("--json", action="store_true", help="print the chosen config as JSON")
    p.set_defaults(handler=_select)

    p = subparsers.add_parser(
        "export",
        help="export one config as a standalone model (safetensors, torch.export, ONNX)",
        description=(
            "Export one config of a saved SN-Net or training checkpoint: only the blocks its path runs, as "
            "model.safetensors + config.json, a torch.export program (model.pt2) and ONNX when installed. "
            "Give the config by id (--config) or by budget (--run with --max-gmacs / --max-latency-ms)."
        ),
    )
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="saved SN-Net dir, training checkpoint dir or s3:// URI (default: the one --run stores)")
    p.add_argument("--run", default=None, metavar="RUN",
                   help="run name in the results service (for a budget, or its checkpoint)")
    p.add_argument("--config", type=int, default=None, metavar="ID", help="config id to export")
    _add_budget(p)
    _add_results(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the exported model into")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="comma-separated: safetensors, torch_export, onnx (default: all available)")
    p.add_argument("--example-batch", type=int, default=2, metavar="N",
                   help="batch size the programs are traced at (>= 2)")
    p.add_argument("--static-batch", action="store_true", help="fix the programs' batch size at --example-batch")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=_export)


# ---- handlers ------------------------------------------------------------------------------


def _select(args: argparse.Namespace) -> int:
    from snnet_ray.deploy.select import select_config

    _check_budget(args)
    with _connect(args.results) as results:
        row = select_config(results, args.run, **_budget(args), checkpoint=args.results_checkpoint)
    if args.json:
        _print_json({"run": args.run, "checkpoint": args.results_checkpoint, "budget": _budget(args),
                     "config": row.model_dump(mode="json")})
        return 0
    print(f"best config of {args.run} under {_describe_budget(args)}:")
    print(_format_row(row))
    return 0


def _export(args: argparse.Namespace) -> int:
    from snnet_ray.deploy.export import export_config
    from snnet_ray.deploy.select import checkpoint_path, select_config
    from snnet_ray.stitching.saving import load_snnet, resolve_model_dir

    by_budget = args.max_gmacs is not None or args.max_latency_ms is not None
    if (args.config is not None) == by_budget:
        raise ValueError("say which config to export: --config ID, or a budget (--max-gmacs / --max-latency-ms)")
    if by_budget:
        _check_budget(args)
    if args.run is None and (by_budget or args.checkpoint is None):
        raise ValueError("--run RUN is needed to select by budget or to find the checkpoint; "
                         "or give --checkpoint PATH and --config ID")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None

    row, checkpoint = None, args.checkpoint
    if args.run is not None and (by_budget or checkpoint is None):
        with _connect(args.results) as results:
            if checkpoint is None:
                checkpoint = checkpoint_path(results, args.run)
            if by_budget:
                row = select_config(results, args.run, **_budget(args), checkpoint=args.results_checkpoint)
    cfg_id = row.config_id if row is not None else args.config
    model_dir = resolve_model_dir(checkpoint)
    meta = load_snnet(model_dir, device="meta")  # checks the config against the model before any weight is read
    if not 0 <= cfg_id < len(meta.configs):
        raise ValueError(f"config id {cfg_id} out of range; {model_dir} has configs 0..{len(meta.configs) - 1}")
    if row is not None and row.name and row.name != meta.configs[cfg_id].name:
        raise ValueError(
            f"run {args.run!r} calls config {cfg_id} {row.name!r} but {model_dir} calls it "
            f"{meta.configs[cfg_id].name!r}: this checkpoint is not the run's model; give the run's --checkpoint"
        )
    summary = export_config(model_dir, cfg_id, args.out, formats=formats, example_batch=args.example_batch,
                            dynamic_batch=not args.static_batch)
    if args.json:
        _print_json({**summary.to_dict(), "checkpoint": model_dir,
                     "selected": row.model_dump(mode="json") if row is not None else None})
        return 0
    if row is not None:
        print(f"best config of {args.run} under {_describe_budget(args)}:")
        print(_format_row(row))
    print(f"exported config {summary.config_id} ({summary.name}: {summary.path}) of {model_dir}")
    print(f"  {summary.gmacs:.4g} GMACs, {summary.params / 1e6:.3f} M params")
    for fmt, path in summary.files.items():
        print(f"  {fmt:<13} {path.resolve()}  ({_human_bytes(path.stat().st_size)})")
    for fmt, why in summary.skipped.items():
        print(f"  {fmt:<13} skipped: {why}")
    return 0


# ---- helpers -------------------------------------------------------------------------------


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-gmacs", type=float, default=None, metavar="G",
                   help="GMACs budget (one image at the input size)")
    p.add_argument("--max-latency-ms", type=float, default=None, metavar="T", help="latency budget in ms")
    p.add_argument("--device", default=None, metavar="D", help="latency device, as recorded (with --max-latency-ms)")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=None, metavar="URL",
                   help="results service URL or database URL / SQLite file (default: $SNNET_RESULTS_URL)")
    p.add_argument("--results-checkpoint", default=None, metavar="NAME",
                   help="evaluated checkpoint to choose from, e.g. final (default: the run's latest)")


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_gmacs": args.max_gmacs, "max_latency_ms": args.max_latency_ms, "device": args.device}


def _check_budget(args: argparse.Namespace) -> None:
    if args.max_gmacs is None and args.max_latency_ms is None:
        raise ValueError("give a budget: --max-gmacs G and/or --max-latency-ms T [--device D]")
    if args.device is not None and args.max_latency_ms is None:
        raise ValueError("--device applies to a latency budget: give --max-latency-ms too")


def _describe_budget(args: argparse.Namespace) -> str:
    parts = []
    if args.max_gmacs is not None:
        parts.append(f"{args.max_gmacs:g} GMACs")
    if args.max_latency_ms is not None:
        parts.append(f"{args.max_latency_ms:g} ms{f' on {args.device}' if args.device else ''}")
    return " and ".join(parts)


def _format_row(row: Any) -> str:
    top1 = f"{row.top1:.2f}" if row.top1 is not None else "-"
    top5 = f"{row.top5:.2f}" if row.top5 is not None else "-"
    gmacs = f"{row.gmacs:.4g}" if row.gmacs is not None else "-"
    params = f"{row.params / 1e6:.3f} M" if row.params is not None else "-"
    latency = ", ".join(f"{ms:.3g} ms on {dev}" for dev, ms in sorted(row.latency_ms.items())) or "-"
    anchors = ", ".join(str(a) for a in row.anchors)
    return (
        f"  config {row.config_id} {row.label} ({row.kind}{f': {anchors}' if anchors else ''})\n"
        f"  top-1 {top1}  top-5 {top5}  GMACs {gmacs}  params {params}  latency {latency}"
    )


def _connect(url: str | None) -> Any:
    from snnet_ray.results import connect

    if url is not None and not url.startswith(("http://", "https://")):
        _check_db_exists(url)
    return connect(url)


def _check_db_exists(db: str) -> None:
    # Opening a SQLite file that is not there would silently create an empty one.
    from sqlalchemy.engine import make_url

    from snnet_ray.results.store import normalize_db_url

    url = make_url(normalize_db_url(db))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not os.path.exists(url.database):
        raise FileNotFoundError(f"no results database at {url.database}: check --results")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
