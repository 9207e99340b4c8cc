"""HTTP API and pages of the results service (FastAPI).

The same app runs under uvicorn (`snnet-ray results serve`) and as a Ray Serve ingress (serve.py).
Writes (runs, configs, eval records, latency) need `Authorization: Bearer <token>` when the app
has a token; reads are open. Payloads are validated before anything is stored, and a malformed
one is answered with 422 and a message naming each bad field.

    POST /api/runs                       RunInfo                  register or update a run
    PUT  /api/runs/{run}/configs         [ConfigInfo]             names, kinds, GMACs, params
    POST /api/evals                      [EvalRecord]             partial counts per shard (upsert)
    PUT  /api/latency                    [LatencyRecord]          latency per config and device
    GET  /api/runs                       [RunSummary]
    GET  /api/runs/{run}                 RunSummary
    GET  /api/runs/{run}/checkpoints     [str]
    GET  /api/runs/{run}/shards          {shard: configs}         ?checkpoint=
    GET  /api/runs/{run}/records         [EvalRecord]             ?checkpoint=
    GET  /api/runs/{run}/table           ResultsTable             ?checkpoint=
    GET  /api/runs/{run}/pareto          [ConfigResult]           ?checkpoint=&by=gmacs|latency&device=
    GET  /api/runs/{run}/best            ConfigResult             ?max_gmacs=&max_latency_ms=&device=
    GET  /api/runs/{run}/export          file                     ?format=parquet|csv&checkpoint=
    GET  /api/compare                    Comparison               ?a=&b=&checkpoint_a=&checkpoint_b=
    GET  /  /runs/{run}  /compare        HTML pages (chart inline, no network needed)
    GET  /published/{name}[?run=R]       a release's published results, or run R beside them
    GET  /api/published/{name}[?run=R]   the same as ResultsTable / Comparison
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from snnet_ray.results.export import EXPORT_FORMATS
from snnet_ray.results.local import LocalResults
from snnet_ray.results.page import compare_page, index_page, run_page
from snnet_ray.results.schema import (
    Comparison,
    ConfigInfo,
    ConfigResult,
    EvalRecord,
    LatencyRecord,
    ResultsAuthError,
    ResultsNotFound,
    ResultsTable,
    RunInfo,
    RunSummary,
)
from snnet_ray.results.store import ResultsStore

__all__ = ["MAX_BATCH", "SERVICE_NAME", "create_app"]

SERVICE_NAME = "snnet-results"
MAX_BATCH = 100_000
STATIC_DIR = Path(__file__).parent / "static"
# Module level: annotations are strings here, resolved against this module's globals.
_BEARER = HTTPBearer(auto_error=False)


def create_app(store: ResultsStore | LocalResults, token: str | None = None) -> FastAPI:
    """The results service over `store`; writes need `token` as a bearer token when one is given."""
    results = store if isinstance(store, LocalResults) else LocalResults(store)
    app = FastAPI(
        title="snnet-ray results",
        description="Per-config SN-Net evaluation results: exact accuracies, Pareto frontiers, budgets.",
        version="1",
    )
    app.state.results = results
    app.state.instance = uuid.uuid4().hex
    _add_error_handlers(app)
    writer = [Depends(_bearer_check(token))]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": SERVICE_NAME, "backend": results.store.backend,
                "instance": app.state.instance, "auth": token is not None}

    # ---- writes ----------------------------------------------------------------------------

    @app.post("/api/runs", dependencies=writer)
    def register_run(info: RunInfo) -> dict[str, str]:
        results.store.register_run(info)
        return {"run": info.run}

    @app.put("/api/runs/{run}/configs", dependencies=writer)
    def put_configs(run: str, configs: Annotated[list[ConfigInfo], Body()]) -> dict[str, int]:
        _check_batch(configs)
        return {"configs": results.store.put_configs(run, configs)}

    @app.post("/api/evals", dependencies=writer)
    def ingest(records: Annotated[list[EvalRecord], Body()]) -> dict[str, int]:
        _check_batch(records)
        return {"ingested": results.store.ingest(records)}

    @app.put("/api/latency", dependencies=writer)
    def put_latency(records: Annotated[list[LatencyRecord], Body()]) -> dict[str, int]:
        _check_batch(records)
        return {"latencies": results.store.put_latency(records)}

    # ---- reads -----------------------------------------------------------------------------

    @app.get("/api/runs")
    def runs() -> list[RunSummary]:
        return results.runs()

    @app.get("/api/runs/{run}")
    def get_run(run: str) -> RunSummary:
        return results.get_run(run)

    @app.get("/api/runs/{run}/checkpoints")
    def checkpoints(run: str) -> list[str]:
        return results.checkpoints(run)

    @app.get("/api/runs/{run}/shards")
    def done_shards(run: str, checkpoint: str) -> dict[str, int]:
        return results.done_shards(run, checkpoint)

    @app.get("/api/runs/{run}/records")
    def records(run: str, checkpoint: str | None = None) -> list[EvalRecord]:
        return results.records(run, checkpoint)

    @app.get("/api/runs/{run}/table")
    def table(run: str, checkpoint: str | None = None) -> ResultsTable:
        return results.table(run, checkpoint)

    @app.get("/api/runs/{run}/pareto")
    def pareto(
        run: str, checkpoint: str | None = None, by: str = "gmacs", device: str | None = None
    ) -> list[ConfigResult]:
        return results.pareto(run, checkpoint, by, device)

    @app.get("/api/runs/{run}/best")
    def best(
        run: str,
        max_gmacs: Annotated[float | None, Query(gt=0)] = None,
        max_latency_ms: Annotated[float | None, Query(gt=0)] = None,
        device: str | None = None,
        checkpoint: str | None = None,
    ) -> ConfigResult:
        return results.best(run, max_gmacs, max_latency_ms, device, checkpoint)

    @app.get("/api/runs/{run}/export")
    def export(run: str, format: str = "parquet", checkpoint: str | None = None) -> Response:
        fmt = format.lower()
        data = results.export_bytes(run, fmt, checkpoint)
        table_ck = checkpoint or results.table(run).checkpoint or "none"
        filename = f"{_safe_filename(run)}-{_safe_filename(table_ck)}.{fmt}"
        return Response(data, media_type=EXPORT_FORMATS[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/compare")
    def compare(
        a: str, b: str, checkpoint_a: str | None = None, checkpoint_b: str | None = None
    ) -> Comparison:
        return results.compare(a, b, checkpoint_a, checkpoint_b)

    # ---- pages -----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> str:
        return index_page(results.runs(), base=_base(request))

    @app.get("/runs/{run}", response_class=HTMLResponse)
    def run_view(request: Request, run: str, checkpoint: str | None = None) -> str:
        table = results.table(run, checkpoint)
        return run_page(table, results.get_run(run), base=_base(request))

    @app.get("/compare", response_class=HTMLResponse)
    def compare_view(
        request: Request, a: str, b: str, checkpoint_a: str | None = None, checkpoint_b: str | None = None
    ) -> str:
        ta, tb = results.table(a, checkpoint_a), results.table(b, checkpoint_b)
        return compare_page(results.compare(a, b, checkpoint_a, checkpoint_b), ta, tb, base=_base(request))

    @app.get("/api/published/{name}")
    def published_api(name: str, run: str | None = None, checkpoint: str | None = None) -> Any:
        from snnet_ray.results.published import compare_published, published_table

        if run is None:
            return published_table(name)
        return compare_published(results.table(run, checkpoint), name)

    @app.get("/published/{name}", response_class=HTMLResponse)
    def published_view(request: Request, name: str, run: str | None = None, checkpoint: str | None = None) -> str:
        from snnet_ray.results.published import compare_published, published_table

        published = published_table(name)
        if run is None:
            return run_page(published, None, base=_base(request))
        table = results.table(run, checkpoint)
        return compare_page(compare_published(table, name), published, table, base=_base(request))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _bearer_check(token: str | None) -> Any:
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if token is None:
            return
        if credentials is None:
            raise ResultsAuthError("this results service requires 'Authorization: Bearer <token>' on writes")
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise PermissionError("the bearer token is not this results service's token")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(err) for err in exc.errors()]
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {shown}",
                                                      "errors": problems})

    @app.exception_handler(ResultsAuthError)
    def unauthenticated(_: Request, exc: ResultsAuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"detail": str(exc)},
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PermissionError)
    def forbidden(_: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    @app.exception_handler(ResultsNotFound)
    def not_found(_: Request, exc: ResultsNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ValueError)
    def bad_request(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})


def _describe(err: dict[str, Any]) -> str:
    # ("body", 3, "samples") -> "[3].samples"; the message says what was wrong with it.
    loc = [p for p in err.get("loc", ()) if p != "body"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {msg}"


def _check_batch(items: list[Any]) -> None:
    if len(items) > MAX_BATCH:
        raise ValueError(f"batch of {len(items)} records is over the limit of {MAX_BATCH}: send it in parts")


def _base(request: Request) -> str:
    # Behind Ray Serve the app is mounted under a route prefix, which arrives as the root path.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
