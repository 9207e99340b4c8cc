"""`snnet-ray results ...`: serve the results, and read them from a terminal.

    snnet-ray results serve   --db URL [--host H --port P --token T]   standalone service (uvicorn)
    snnet-ray results runs    [--db URL | --url URL] [--json]
    snnet-ray results show    --run R [--checkpoint C] [--sort gmacs|top1|id] [--json]
    snnet-ray results pareto  --run R [--by gmacs|latency --device D] [--png FILE] [--json]
    snnet-ray results compare --run A --against B [--json]
    snnet-ray results compare --run A --published deit|swin|resnet|resnet_swin|snnetv2_deit3_s_l [--json]
    snnet-ray results export  --run R --out FILE.parquet|FILE.csv

Reading commands take `--db URL` (a database, opened directly) or `--url URL` (a running service);
with neither they use $SNNET_RESULTS_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("results", help="the results service: serve, show, pareto, export")
    sub = parser.add_subparsers(dest="results_command", metavar="ACTION", required=True)

    p = sub.add_parser("serve", help="run the results service standalone (uvicorn)")
    p.add_argument("--db", default=None, help="database URL or SQLite file (default: ./snnet-results.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", default=None, help="bearer token required on writes (or $SNNET_RESULTS_TOKEN)")
    p.add_argument("--log-level", default="warning", choices=["error", "warning", "info", "debug"])
    p.set_defaults(handler=_serve)

    p = sub.add_parser("runs", help="list runs with their latest checkpoint and best top-1")
    _add_source(p)
    p.set_defaults(handler=_runs)

    p = sub.add_parser("show", help="print the per-config table of a run")
    _add_source(p)
    _add_run(p)
    p.add_argument("--sort", default="gmacs", choices=["gmacs", "top1", "id"])
    p.set_defaults(handler=_show)

    p = sub.add_parser("pareto", help="print the Pareto frontier of a run; --png draws the figure")
    _add_source(p)
    _add_run(p)
    p.add_argument("--by", default="gmacs", choices=["gmacs", "latency"])
    p.add_argument("--device", default=None, help="latency device (with --by latency)")
    p.add_argument("--png", default=None, help="write the accuracy-vs-GMACs figure here")
    p.set_defaults(handler=_pareto)

    p = sub.add_parser("compare", help="compare two runs config by config and by frontier")
    _add_source(p)
    p.add_argument("--run", required=True, help="the baseline run (a)")
    p.add_argument("--against", default=None, help="the run compared with it (b)")
    p.add_argument(
        "--published",
        default=None,
        help="put --run beside a release's published results (deit, swin, resnet, resnet_swin, snnetv2_deit3_s_l)",
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint of --run (default latest)")
    p.add_argument("--against-checkpoint", default=None, help="checkpoint of --against (default latest)")
    p.add_argument("--png", default=None, help="draw both runs into this figure")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("export", help="export the per-config table as Parquet or CSV")
    _add_source(p)
    _add_run(p)
    p.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    p.set_defaults(handler=_export)


# ---- handlers ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from snnet_ray.results.app import create_app
    from snnet_ray.results.store import DEFAULT_DB_URL, ResultsStore

    store = ResultsStore(args.db or os.environ.get("SNNET_RESULTS_DB") or DEFAULT_DB_URL)
    token = args.token or os.environ.get("SNNET_RESULTS_TOKEN") or None
    app = create_app(store, token=token)
    print(f"snnet-ray results: serving {store!r} at http://{args.host}:{args.port}/"
          f"{' (writes need the bearer token)' if token else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    store.close()
    return 0


def _runs(args: argparse.Namespace) -> int:
    from snnet_ray.results.text import format_runs

    with _open(args) as results:
        runs = results.runs()
    if args.json:
        _print_json([r.model_dump(mode="json") for r in runs])
    else:
        print(format_runs(runs))
    return 0


def _show(args: argparse.Namespace) -> int:
    from snnet_ray.results.text import format_table

    with _open(args) as results:
        table = results.table(args.run, args.checkpoint)
    if args.json:
        _print_json(table.model_dump(mode="json"))
    else:
        print(format_table(table, sort=args.sort))
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from snnet_ray.results.text import format_rows

    with _open(args) as results:
        front = results.pareto(args.run, args.checkpoint, args.by, args.device)
        table = results.table(args.run, args.checkpoint) if args.png else None
    png = None
    if table is not None:
        from snnet_ray.results.plot import plot_pareto

        png = plot_pareto(table, args.png)
    if args.json:
        _print_json({"run": args.run, "frontier": [r.model_dump(mode="json") for r in front],
                     "png": str(png) if png else None})
        return 0
    axis = "GMACs" if args.by == "gmacs" else f"latency{f' on {args.device}' if args.device else ''}"
    print(f"Pareto frontier of {args.run} (max top-1, min {axis}): {len(front)} configs\n")
    devices = [args.device] if args.device else sorted({d for r in front for d in r.latency_ms})
    print(format_rows(front, devices if args.by == "latency" else ()))
    if png:
        print(f"\nfigure: {png.resolve()}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    if (args.against is None) == (args.published is None):
        raise ValueError("give exactly one of --against RUN (another run) and --published NAME (a release's results)")
    if args.published:
        return _compare_published(args)
    with _open(args) as results:
        cmp = results.compare(args.run, args.against, args.checkpoint, args.against_checkpoint)
        tables = []
        if args.png:
            tables = [results.table(args.run, args.checkpoint),
                      results.table(args.against, args.against_checkpoint)]
    return _show_comparison(args, cmp, tables)


def _compare_published(args: argparse.Namespace) -> int:
    from snnet_ray.results.published import compare_published, published_table

    published = published_table(args.published)  # an unknown name fails before any query
    with _open(args) as results:
        table = results.table(args.run, args.checkpoint)
    return _show_comparison(args, compare_published(table, args.published), [published, table] if args.png else [])


def _show_comparison(args: argparse.Namespace, cmp: Any, tables: list[Any]) -> int:
    """Print a comparison (table or --json) and draw `tables` into --png when given."""
    from snnet_ray.results.text import format_comparison

    png = None
    if tables:
        from snnet_ray.results.plot import plot_pareto

        png = plot_pareto(tables, args.png)
    if args.json:
        _print_json({**cmp.model_dump(mode="json"), "png": str(png) if png else None})
        return 0
    print(format_comparison(cmp))
    if png:
        print(f"\nfigure: {png.resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from snnet_ray.results.export import format_from_path

    format_from_path(args.out)  # a bad suffix fails before any query
    with _open(args) as results:
        path = results.export(args.run, args.out, args.checkpoint)
    if args.json:
        _print_json({"run": args.run, "out": str(path.resolve())})
    else:
        print(f"wrote {path.resolve()}")
    return 0


# ---- helpers -------------------------------------------------------------------------------


def _add_source(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--db", default=None, help="database URL or SQLite file to read directly")
    group.add_argument("--url", default=None, help="URL of a running results service")
    p.add_argument("--token", default=None, help="bearer token of the service (or $SNNET_RESULTS_TOKEN)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run name")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the latest evaluated)")


def _open(args: argparse.Namespace) -> Any:
    from snnet_ray.results.client import ENV_URL, ResultsClient, connect
    from snnet_ray.results.local import LocalResults

    if args.url:
        return ResultsClient(args.url, token=args.token)
    if args.db:
        _check_db_exists(args.db)
        return LocalResults(args.db)
    if os.environ.get(ENV_URL):
        return connect(token=args.token)
    raise ValueError(f"say where the results are: --db URL|FILE, --url http://HOST:PORT, or set ${ENV_URL}")


def _check_db_exists(db: str) -> None:
    # Reading a SQLite file that is not there would silently create an empty one.
    from sqlalchemy.engine import make_url

    from snnet_ray.results.store import normalize_db_url

    url = make_url(normalize_db_url(db))
    local_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if local_file and not os.path.exists(url.database):
        raise FileNotFoundError(f"no results database at {url.database}: check --db")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
