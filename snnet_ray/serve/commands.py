"""`snnet-ray serve`: deploy one SN-Net on Ray Serve, switching configs per batch to hold a latency SLO.

    snnet-ray serve (--model DIR | --results URL --run RUN) [--slo-ms 50]
                    [--num-replicas N | --autoscaling [--min-replicas A --max-replicas B --target-ongoing T]]

On a running cluster (`--address` or $RAY_ADDRESS) it deploys and returns; redeploying with another
`--model` rolls the new checkpoint out without dropping requests. Without one it starts a local Ray,
serves until Ctrl-C or SIGTERM, then shuts Serve and that Ray down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve an SN-Net on Ray Serve, choosing the config per batch to meet a latency SLO",
        description=(
            "Deploy a saved SN-Net or training checkpoint on Ray Serve (FastAPI ingress). Each replica holds "
            "every config, measures the frontier's latency on its device, and runs each batch with the most "
            "accurate config whose predicted latency plus queueing meets the SLO and every request's budget. "
            "API: POST /v1/classify, GET /v1/configs, GET /healthz (OpenAPI at /docs)."
        ),
    )
    p.add_argument("--model", default=None, metavar="DIR",
                   help="saved SN-Net dir, training checkpoint dir (its model/) or s3:// URI "
                        "(default: the one --run stores in the results service)")
    p.add_argument("--results", default=None, metavar="URL",
                   help="results service or database URL holding the run's per-config top-1 "
                        "(default: the model's own metadata, extra.top1)")
    p.add_argument("--run", default=None, metavar="RUN", help="run name in the results service (with --results)")
    p.add_argument("--results-checkpoint", default=None, metavar="NAME",
                   help="evaluated checkpoint whose top-1 to use (default: the run's latest)")
    p.add_argument("--slo-ms", type=float, default=50.0, metavar="T", help="latency objective per request (ms)")
    p.add_argument("--headroom", type=float, default=0.2, metavar="F",
                   help="share of the SLO the replica leaves to Serve's proxy, the network and noise (default 0.2)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--num-replicas", type=int, default=None, metavar="N", help="fixed replica count (default 1)")
    scale.add_argument("--autoscaling", action="store_true",
                       help="let Serve scale replicas on ongoing requests per replica")
    p.add_argument("--min-replicas", type=int, default=1, metavar="N", help="with --autoscaling (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, metavar="N", help="with --autoscaling (default 4)")
    p.add_argument("--target-ongoing", type=float, default=None, metavar="R",
                   help="with --autoscaling: target ongoing requests per replica (default: --max-batch-size)")
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="T", help="longest wait to fill a batch")
    p.add_argument("--max-images", type=int, default=8, metavar="N", help="images per request (default 8)")
    p.add_argument("--fixed-config", type=int, default=None, metavar="ID",
                   help="serve this one config only (a baseline; no adaptive policy)")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--gpus", type=float, default=None, help="GPUs per replica (default: 1 when the cluster has GPUs)")
    p.add_argument("--host", default="127.0.0.1", help="Serve HTTP proxy host (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP proxy port (when Serve is not running yet)")
    p.add_argument("--route-prefix", default="/", help="URL prefix of the application (default /)")
    p.add_argument("--name", default=None, help="Serve application name (default snnet-serve)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", action="store_true", help="print the deployment (URL, frontier) as JSON")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    if (args.results is None) != (args.run is None):
        raise ValueError("give --results URL and --run RUN together (or neither: the model's own top-1)")
    if args.model is None and args.run is None:
        raise ValueError("say what to serve: --model DIR, or --results URL --run RUN (the run's checkpoint)")
    if not args.route_prefix.startswith("/"):
        raise ValueError(f"--route-prefix must start with '/', got {args.route_prefix!r}")
    scaling = _scaling(args)

    import httpx
    import ray
    from ray import serve

    from snnet_ray.serve.app import APP_NAME, ServeOptions, build_app
    from snnet_ray.stitching.saving import resolve_model_dir

    results = args.results
    if results is not None and "://" not in results:
        results = f"sqlite:///{os.path.abspath(results)}"  # a file path: the replica runs elsewhere
    model = args.model if args.model is not None else _run_checkpoint(results, args.run)
    model = model if "://" in model else os.path.abspath(resolve_model_dir(model))
    options = ServeOptions(
        model=model, results=results, run=args.run, checkpoint=args.results_checkpoint, slo_ms=args.slo_ms,
        headroom=args.headroom, up_headroom=max(0.4, args.headroom), fixed_config=args.fixed_config,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
        max_images=min(args.max_images, args.max_batch_size),
    )
    attached = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        # A local Ray of our own takes no dashboard port (another Ray on this machine may hold it).
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                 **({} if attached else {"include_dashboard": False}))
    gpus = args.gpus if args.gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(options, num_cpus=args.cpus, num_gpus=gpus, **scaling)
    name = args.name or APP_NAME
    serve.run(app, name=name, route_prefix=args.route_prefix)
    from snnet_ray.results.serve import find_results_service

    url = find_results_service(name) or f"http://{args.host}:{args.port}{args.route_prefix.rstrip('/')}"
    configs = httpx.get(f"{url}/v1/configs", timeout=30).json()
    _report(args, url, configs, scaling)
    if attached:
        return 0
    # A local Ray lives as long as this process: serve until Ctrl-C (SIGINT) or SIGTERM.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    print("stopping: Serve and the local Ray shut down", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0


def _run_checkpoint(results: str, run: str) -> str:
    from snnet_ray.deploy.select import checkpoint_path
    from snnet_ray.results import connect

    with connect(results) as client:
        return checkpoint_path(client, run)


def _scaling(args: argparse.Namespace) -> dict[str, Any]:
    if not args.autoscaling:
        n = args.num_replicas if args.num_replicas is not None else 1
        if n < 1:
            raise ValueError(f"--num-replicas must be >= 1, got {n}")
        return {"num_replicas": n}
    if not 0 <= args.min_replicas <= args.max_replicas or args.max_replicas < 1:
        raise ValueError(f"need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, "
                         f"got {args.min_replicas} and {args.max_replicas}")
    target = args.target_ongoing if args.target_ongoing is not None else float(args.max_batch_size)
    if not target > 0:
        raise ValueError(f"--target-ongoing must be > 0, got {target}")
    return {"num_replicas": None, "autoscaling": autoscaling_config(args.min_replicas, args.max_replicas, target)}


def autoscaling_config(min_replicas: int, max_replicas: int, target_ongoing: float) -> dict[str, Any]:
    """Serve's autoscaling_config: scale on ongoing requests per replica, up fast, down slowly
    (a replica measures its latency table on start, so churn costs a few seconds each time)."""
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 120.0,
    }


def _report(args: argparse.Namespace, url: str, configs: dict[str, Any], scaling: dict[str, Any]) -> None:
    if args.json:
        json.dump({"url": url, "scaling": scaling, **configs}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    print(f"serving {configs['model']} (version {configs['version']}) at {url}")
    print(f"  SLO {configs['slo_ms']:g} ms; top-1 from {configs['top1_source']}; latency on {configs['device']}")
    print("  frontier (least accurate first):")
    for row in configs["configs"]:
        top1 = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        lat = ", ".join(f"b{b} {ms:.3g}" for b, ms in row["measured_ms"].items())
        print(f"    config {row['id']:>3} {row['name']:<16} {row['gmacs']:.4g} GMACs  top-1 {top1}  ms: {lat}")
    print(f"  try: curl -s --data-binary @image.png -H 'Content-Type: image/png' {url}/v1/classify")
    sys.stdout.flush()
