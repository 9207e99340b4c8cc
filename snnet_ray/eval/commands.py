"""`snnet-ray eval`: evaluate every config of a checkpoint on the validation shards, over Ray."""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate every config of a checkpoint (one pass per batch, distributed over Ray)",
        description=(
            "Evaluate a saved SN-Net or a training checkpoint on the validation shards. Counts per "
            "(config, shard) go to the results service; shards already recorded are skipped."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="saved SN-Net dir, training checkpoint dir, or s3:// URI")
    p.add_argument("--data", required=True, help="shards root holding _info.json (path or URL)")
    p.add_argument("--run", default=None, help="run name in the results service (default: from the checkpoint)")
    p.add_argument("--name", default="final", help="checkpoint name in the results service (default: final)")
    p.add_argument("--results", default=None, help="results service URL or database URL (default: see README)")
    p.add_argument("--db", default="sqlite:///snnet-results.db", help="database when the service must be deployed")
    p.add_argument("--configs", default=None, help="comma-separated config ids (default: all)")
    p.add_argument("--workers", type=int, default=2, help="Ray evaluation workers (default 2)")
    p.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one GPU per worker (default: when the cluster has GPUs)",
    )
    p.add_argument(
        "--latency",
        type=int,
        default=None,
        metavar="BATCH",
        help="also measure every config's forward latency at this batch size on one worker and record it",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader processes per worker")
    p.add_argument("--max-shards", type=int, default=None, help="only the first N validation shards")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--json", action="store_true", help="print the per-config table as JSON")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import ray

    from snnet_ray.eval.distributed import EvalRequest, evaluate_distributed
    from snnet_ray.names import check_name
    from snnet_ray.results import connect_for_job
    from snnet_ray.results.text import format_table
    from snnet_ray.stitching.saving import resolve_model_dir

    model_dir = resolve_model_dir(args.checkpoint)
    run = args.run or _run_name(args.checkpoint)
    # Refused now, not after the evaluation: both name the records in the results service.
    check_name(run, "--run (default: the checkpoint's run folder)")
    check_name(args.name, "--name")
    configs = [int(c) for c in args.configs.split(",")] if args.configs else None
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    results = connect_for_job(args.results, db_url=args.db)
    url = results.url
    use_gpu = args.gpu if args.gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    request = EvalRequest(
        model_dir=model_dir,
        data_root=args.data,
        run=run,
        checkpoint=args.name,
        results=str(url) if url else None,
        config_ids=configs,
        max_shards=args.max_shards,
        num_workers=args.workers,
        use_gpu=use_gpu,
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
    )
    table = evaluate_distributed(request, progress=not args.json)
    if args.latency:
        from snnet_ray.eval.distributed import measure_latency_on_worker

        device, _ = measure_latency_on_worker(request, batch_size=args.latency)
        table = results.table(run, args.name)
        if not args.json:
            print(f"latency recorded on {device}")
    if args.json:
        json.dump(table.model_dump(mode="json"), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(table))
        print(f"\nresults: run '{run}', checkpoint '{args.name}' in {url}")
    return 0


def _run_name(checkpoint: str) -> str:
    """A run name from a checkpoint path: the trial/run folder above `checkpoint_*`, else its name."""
    parts = [p for p in checkpoint.rstrip("/").split("/") if p]
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].startswith("checkpoint_"):
            return parts[i - 1]
    name = parts[-1] if parts else "eval"
    return parts[-2] if name == "model" and len(parts) > 1 else name
